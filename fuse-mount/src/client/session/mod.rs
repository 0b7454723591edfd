//! A Chubby session (Chubby §2.8): found through any replica, kept alive on one stream to the
//! master, resumed at a new master after a failover with its handles and locks intact.
//!
//! - Discovery: any subset of the replicas' addresses; a replica that is not the master
//!   answers with the master's address and the session follows it.
//! - KeepAlive every third of the lease. The local lease starts when the KeepAlive that won it
//!   was *sent*, so it never outlives the master's view of it.
//! - When the stream breaks the session is in **jeopardy**: it tries the replicas until one
//!   is the master and resumes there; if the local lease plus the grace period (default 45 s)
//!   runs out first, or the master says the session is gone, it is **lost** and every call
//!   fails with [`ClientError::SessionLost`].
//! - Every change carries a request id (session, sequence number, first unanswered one), so
//!   retrying it at a new master is applied once.
//! - Contents, metadata and handles of nodes are cached ([`cache`]) and dropped on the
//!   master's invalidations before they are acked, so cached reads stay linearizable; a
//!   re-open of a cached node costs no RPC. The session's own writes are written through:
//!   it drops its copy before sending and caches what it wrote if the master says it may.
//! - ACL names ([`acl`]) and the principal a client presents ([`principal`]).
//! - Events arrive on a broadcast channel.

// gRPC's Status is the error of every call here; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::chubby::*;
use tokio::sync::{broadcast, watch};

use super::ClientError;

/// A call of the `Call` kind `variant` with a fresh copy of `req` on whichever replica's call
/// stream the retry loop picks; its answer if of the same kind.
macro_rules! rpc {
    ($variant:ident, $req:expr) => {
        |link: std::sync::Arc<crate::client::session::CallStream>, epoch: u64| {
            let kind = proto::chubby::call::Kind::$variant($req.clone());
            async move {
                match crate::client::session::call_on(&link, epoch, kind).await? {
                    proto::chubby::call_result::Kind::$variant(r) => Ok(r),
                    other => Err(tonic::Status::internal(format!("the answer of another call: {other:?}"))),
                }
            }
        }
    };
}

// After `rpc!`, which they use.
mod acl;
mod api;
mod cache;
mod keepalive;
mod links;
mod principal;
mod retry;

use cache::Cache;
use keepalive::{connect_stream, keep_session};
use links::Link;
use retry::RequestNumbers;

pub(crate) use links::{call_on, CallStream};
pub use principal::{principal_for, principal_list, principal_of};

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub principal: String,
    /// Bounds each call, retries across a failover included (blocking Acquire excepted).
    pub timeout: Duration,
    /// How long past its lease a session in jeopardy keeps trying to reach a master.
    pub grace: Duration,
    /// Whether to cache node contents, metadata and handles (see [`cache`]).
    pub cache: bool,
    /// Mutual TLS with this identity, or plaintext.
    pub tls: Option<Arc<crate::client::tls::Identity>>,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        SessionOptions {
            principal: principal_of(uid),
            timeout: Duration::from_secs(10),
            grace: Duration::from_secs(45),
            cache: true,
            tls: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    Alive,
    /// Lost contact with the master; calls wait while the session tries to resume.
    Jeopardy,
    /// Expired at the master or unreachable past the grace period; its locks are gone.
    Lost,
}

/// Options of [`Session::open_node`].
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    pub create: bool,
    pub directory: bool,
    pub ephemeral: bool,
    pub exclusive: bool,
    pub contents: Bytes,
    /// `EVENT_*` bits of the events wanted for this node.
    pub events: u32,
}

/// What the session's cache dropped. A cache kept on top of this one (the FUSE daemon's, in
/// the kernel) must drop the same before the master hears the ack: see
/// [`Session::set_invalidation_hook`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidated {
    /// These nodes (`/ls/<cell>/…` paths) are changing: a write waits for the ack.
    Nodes(Vec<String>),
    /// Anything may have changed unseen: the stream broke, the local lease ran out, the
    /// session resumed or was lost.
    All,
}

/// Called with what the cache dropped, off the runtime's threads (it may block).
pub type InvalidationHook = Arc<dyn Fn(&Invalidated) + Send + Sync>;

struct Inner {
    /// The cell as given (names resolved again whenever the session is in jeopardy).
    given: Vec<String>,
    /// The replicas' addresses as last resolved.
    addrs: Mutex<Vec<String>>,
    opts: SessionOptions,
    id: u64,
    token: Bytes,
    master: Mutex<Option<String>>,
    /// The epoch of the master that granted the latest lease; calls carry it.
    epoch: AtomicU64,
    /// Connections to replicas by address, each with the session's call stream on it.
    channels: Mutex<HashMap<String, Arc<Link>>>,
    cache: Mutex<Cache>,
    /// The end of the local lease (conservative: before the master's).
    lease_end: Mutex<Instant>,
    /// The cell's session lease (not the first grant's, which may be capped): how long the
    /// master may hold a write back while it waits for a cacher's acknowledgement (see
    /// [`Session::change_deadline`]).
    lease: Duration,
    /// Event subscriptions, by path: the handle they were opened with and the event mask, sent
    /// again when the session resumes (a new master does not know them).
    subscriptions: Mutex<HashMap<String, (Handle, u32)>>,
    seq: Mutex<RequestNumbers>,
    events: broadcast::Sender<Event>,
    state: watch::Sender<SessionState>,
    closed: watch::Sender<bool>,
    /// A CloseSession is on its way: the master ending the session is expected, not news.
    closing: std::sync::atomic::AtomicBool,
    hook: Mutex<Option<InvalidationHook>>,
}

/// An open session; cloning shares it.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    /// One count per `Session` value (the session's own tasks hold `inner` alone), so
    /// [`Session::holders`] says who still uses it.
    holders: Arc<()>,
}

impl Inner {
    fn state(&self) -> SessionState {
        *self.state.borrow()
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().expect("cache")
    }

    /// The session is gone: calls fail from now on and the cache answers nothing.
    fn lose(&self) {
        self.cache().flush();
        self.state.send_replace(SessionState::Lost);
        // Nobody waits for an ack any more; the hook runs as soon as it can.
        if let (Some(hook), Ok(rt)) = (self.hook(), tokio::runtime::Handle::try_current()) {
            rt.spawn_blocking(move || hook(&Invalidated::All));
        }
    }

    fn hook(&self) -> Option<InvalidationHook> {
        self.hook.lock().expect("hook").clone()
    }

    /// Tells the invalidation hook what the cache dropped, and waits until it is done.
    async fn invalidated(&self, what: Invalidated) {
        if let Some(hook) = self.hook() {
            if let Err(e) = tokio::task::spawn_blocking(move || hook(&what)).await {
                tracing::error!(session = self.id, "the invalidation hook failed: {e}");
            }
        }
    }

    /// Drops the whole cache (and whatever is kept on top of it).
    async fn flush_cache(&self) {
        self.cache().flush();
        self.invalidated(Invalidated::All).await;
    }

    /// The session's subscriptions, to register again where it resumes.
    fn subscriptions(&self) -> Vec<Subscription> {
        let subs = self.subscriptions.lock().expect("subscriptions");
        subs.values().map(|(h, mask)| Subscription { handle: Some(h.clone()), event_mask: *mask }).collect()
    }

    /// A lease was granted; locally it lasts until `until`.
    fn granted(&self, until: Instant) {
        *self.lease_end.lock().expect("lease") = until;
        self.cache().lease_until(until);
    }
}

impl Session {
    /// Opens a new session with the cell at `addrs` (any subset of its replicas).
    pub async fn open(addrs: Vec<String>, opts: SessionOptions) -> Result<Session, ClientError> {
        if addrs.is_empty() {
            return Err(ClientError::NoAddress);
        }
        let given = addrs;
        let addrs = crate::client::resolve(&given).await;
        let channels = Mutex::new(HashMap::new());
        let sent = Instant::now();
        let deadline = sent + opts.timeout;
        // Every attempt of this open carries the same id: one whose answer was lost and is
        // retried gets the session it created, not a second one.
        let open =
            OpenSession { principal: opts.principal.clone(), open_id: random_open_id(), ..OpenSession::default() };
        let tls = opts.tls.as_deref();
        let (addr, stream) = connect_stream(&addrs, &channels, tls, None, &open, deadline, links::ATTEMPT_TIMEOUT)
            .await
            .map_err(|e| match e {
                ClientError::Timeout { last, .. } => ClientError::Timeout { timeout: opts.timeout, last },
                e => e,
            })?;
        let id = stream.2.session;
        let token = stream.2.session_token.clone();
        let lease = Duration::from_millis(stream.2.full_lease_ms.max(stream.2.lease_ms));
        let cache = Mutex::new(Cache::new(opts.cache));
        let inner = Arc::new(Inner {
            given,
            addrs: Mutex::new(addrs),
            opts,
            id,
            token,
            master: Mutex::new(Some(addr)),
            epoch: AtomicU64::new(stream.2.epoch),
            channels,
            cache,
            lease_end: Mutex::new(sent),
            lease,
            subscriptions: Mutex::new(HashMap::new()),
            seq: Mutex::new(RequestNumbers { next: 1, outstanding: BTreeSet::new() }),
            events: broadcast::channel(1024).0,
            state: watch::channel(SessionState::Alive).0,
            closed: watch::channel(false).0,
            closing: std::sync::atomic::AtomicBool::new(false),
            hook: Mutex::new(None),
        });
        inner.granted(keepalive::local_lease_end(sent, Duration::from_millis(stream.2.lease_ms)));
        tokio::spawn(keep_session(inner.clone(), stream, sent));
        Ok(Session { inner, holders: Arc::new(()) })
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// How many `Session` values share this session now (this one included).
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.holders)
    }

    /// When the local lease ends unless a KeepAlive extends it. Past it, in jeopardy, the
    /// master may already have expired the session (and, after the lock-delay, handed its
    /// locks to others).
    pub fn lease_end(&self) -> Instant {
        *self.inner.lease_end.lock().expect("lease")
    }

    /// Calls `hook` with what the cache drops from now on: each invalidation from the master
    /// before it is acked (the write waits), and every flush (stream broken, local lease run
    /// out, resumption, loss). A cache kept on top of this one (the kernel's, for the FUSE
    /// daemon) stays linearizable by dropping the same in the hook.
    pub fn set_invalidation_hook(&self, hook: InvalidationHook) {
        *self.inner.hook.lock().expect("hook") = Some(hook);
    }

    /// Whether the cache holds `path` now, with metadata `stat`: the master counts this
    /// session among the node's cachers, so it invalidates the node here (and calls the hook)
    /// before any write to it, and `stat` is the node's current metadata (an answer that
    /// arrived after a newer one was cached is not).
    pub fn caches(&self, path: &str, stat: &NodeStat) -> bool {
        self.inner.cache().holds(path, stat)
    }

    /// How many answers (reads, stats, re-opens) the cache has served.
    pub fn cache_hits(&self) -> u64 {
        self.inner.cache().hits
    }

    /// The epoch of the master that granted the session's latest lease.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch.load(Ordering::Acquire)
    }

    /// Whether the session is lost (its handles and locks are gone for good).
    pub fn is_lost(&self) -> bool {
        self.inner.state() == SessionState::Lost
    }

    /// Alive / jeopardy / lost, as it changes.
    pub fn state(&self) -> watch::Receiver<SessionState> {
        self.inner.state.subscribe()
    }

    /// Events of the nodes opened with an event mask, and master failovers.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }
}

/// A random, non-zero id for one session open: the standard library's randomly keyed hasher
/// (seeded from the OS) over the time and process id.
fn random_open_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    h.write_u32(std::process::id());
    h.finish().max(1)
}
