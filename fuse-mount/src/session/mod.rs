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
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proto::chubby::chubby_client::ChubbyClient;
use proto::chubby::*;
use tokio::sync::{broadcast, watch};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::client::ClientError;
use crate::multiplex::{Lost, Multiplexer};

mod cache;
mod principal;
mod stream;

use cache::{Cache, Fill};
use stream::{connect_stream, keep_session};

pub use principal::{principal_list, principal_of};

/// A call of the `Call` kind `variant` with a fresh copy of `req` on whichever replica's call
/// stream the retry loop picks; its answer if of the same kind.
macro_rules! rpc {
    ($variant:ident, $req:expr) => {
        |link: std::sync::Arc<crate::session::CallStream>, epoch: u64| {
            let kind = proto::chubby::call::Kind::$variant($req.clone());
            async move {
                match crate::session::call_on(&link, epoch, kind).await? {
                    proto::chubby::call_result::Kind::$variant(r) => Ok(r),
                    other => Err(tonic::Status::internal(format!("the answer of another call: {other:?}"))),
                }
            }
        }
    };
}

// After `rpc!`, which it uses.
mod acl;

/// Longest pause between retries while the master is unknown: an election on a loopback or
/// LAN cell takes a few hundred ms, and a client should notice its end promptly. (Polling is
/// short-lived: once a replica knows no master is elected it holds a call until one is, and
/// then redirects it; the pauses only cover the moments before replicas notice a dead master.)
pub(crate) const MAX_BACKOFF: Duration = Duration::from_millis(25);

pub use proto::ERROR_METADATA;

#[derive(Clone, Debug)]
pub struct SessionOptions {
    pub principal: String,
    /// Bounds each call, retries across a failover included (blocking Acquire excepted).
    pub timeout: Duration,
    /// How long past its lease a session in jeopardy keeps trying to reach a master.
    pub grace: Duration,
    /// Whether to cache node contents, metadata and handles (see [`cache`]).
    pub cache: bool,
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

#[derive(Default)]
struct Sequence {
    next: u64,
    outstanding: BTreeSet<u64>,
}

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
    seq: Mutex<Sequence>,
    events: broadcast::Sender<Event>,
    state: watch::Sender<SessionState>,
    closed: watch::Sender<bool>,
    hook: Mutex<Option<InvalidationHook>>,
}

/// Time beyond the cell's lease a change is given (see [`Session::change_deadline`]).
const CHANGE_MARGIN: Duration = Duration::from_secs(2);

/// An open session; cloning shares it.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
    /// One count per `Session` value (the session's own tasks hold `inner` alone), so
    /// [`Session::holders`] says who still uses it.
    holders: Arc<()>,
}

/// One sequence number in flight; forgotten when dropped.
struct InFlight {
    inner: Arc<Inner>,
    request: RequestId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = self.inner.seq.lock() {
            s.outstanding.remove(&self.request.sequence);
        }
    }
}

/// A session's calls to one replica, multiplexed on one `Calls` stream.
pub(crate) type CallStream = Multiplexer<Call, CallResult>;

/// The largest call a replica reads (gRPC's default message limit).
const MAX_CALL_BYTES: usize = 4 << 20;

/// The largest answer read on a call stream: the cell's limit (4 MiB) and some slack.
const MAX_ANSWER_BYTES: usize = 5 << 20;

/// A connection to one replica, and the session's call stream on it (opened on first use).
pub(super) struct Link {
    channel: Channel,
    calls: tokio::sync::Mutex<Option<Arc<CallStream>>>,
}

impl Link {
    fn new(channel: Channel) -> Link {
        Link { channel, calls: tokio::sync::Mutex::new(None) }
    }
}

/// Makes a call on `link` with the session's `epoch`: its answer, or its refusal as the
/// status a unary call would have got. A stream that breaks fails the call as unavailable:
/// the retry carries the same request id, so a change is made once.
pub(crate) async fn call_on(link: &CallStream, epoch: u64, kind: call::Kind) -> Result<call_result::Kind, Status> {
    let call = Call { id: 0, epoch: Some(epoch), kind: Some(kind), abandon: false };
    let size = prost::Message::encoded_len(&call);
    if size > MAX_CALL_BYTES {
        // The cell would refuse it unread (and end the stream with it): refused here alone.
        let mut s = Status::resource_exhausted(format!("a call of {size} bytes is more than {MAX_CALL_BYTES}"));
        s.metadata_mut().insert(ERROR_METADATA, tonic::metadata::MetadataValue::from_static("TooLarge"));
        return Err(s);
    }
    let answer = link.call(|id| Call { id, ..call }).await.map_err(|lost| {
        let (Lost::NotSent(why) | Lost::Unanswered(why)) = lost;
        Status::unavailable(format!("the call stream to the replica broke: {why}"))
    })?;
    if answer.code != Code::Ok as i32 {
        let mut status = Status::new(Code::from_i32(answer.code), answer.message);
        for (key, value) in &answer.metadata {
            if let (Ok(k), Ok(v)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                tonic::metadata::MetadataValue::try_from(value.as_str()),
            ) {
                status.metadata_mut().insert(k, v);
            }
        }
        return Err(status);
    }
    answer.kind.ok_or_else(|| Status::internal("an answer without its result"))
}

fn reason(s: &Status) -> Option<&str> {
    s.metadata().get(ERROR_METADATA).and_then(|v| v.to_str().ok())
}

fn leader_hint(s: &Status) -> Option<String> {
    s.metadata().get(proto::LEADER_METADATA).and_then(|v| v.to_str().ok()).map(String::from)
}

/// Whether the call may simply be retried at the (possibly new) master with the same
/// request id.
fn retryable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        Code::Aborted => reason(s).is_none(),
        Code::FailedPrecondition => leader_hint(s).is_some(),
        _ => false,
    }
}

impl Inner {
    async fn link(&self, addr: &str) -> Result<Arc<Link>, String> {
        if let Some(link) = self.channels.lock().expect("channels").get(addr) {
            return Ok(link.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_millis(500))
            .tcp_nodelay(true);
        let ch = ep.connect().await.map_err(|e| format!("{addr}: {e}"))?;
        let link = Arc::new(Link::new(ch));
        self.channels.lock().expect("channels").insert(addr.to_string(), link.clone());
        Ok(link)
    }

    /// The call stream to `addr`, opened if there is none or it broke.
    async fn call_stream(&self, addr: &str) -> Result<Arc<CallStream>, String> {
        let link = self.link(addr).await?;
        let mut slot = link.calls.lock().await;
        if let Some(calls) = slot.as_ref().filter(|c| c.closed().is_none()) {
            return Ok(calls.clone());
        }
        let (requests, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut client = ChubbyClient::new(link.channel.clone()).max_decoding_message_size(MAX_ANSWER_BYTES);
        let open = client.calls(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        // A link cut without a reset must not hold the call forever; nor the callers queued
        // behind this one for the same link, which go to a new connection.
        let answers = match tokio::time::timeout(stream::ATTEMPT_TIMEOUT, open).await {
            Ok(Ok(answers)) => answers.into_inner(),
            failed => {
                self.drop_link(addr, &link);
                return Err(match failed {
                    Err(_) => format!("{addr}: no answer"),
                    Ok(Err(s)) => format!("{addr}: {}", s.message()),
                    Ok(Ok(_)) => unreachable!("matched above"),
                });
            }
        };
        let abandon = |id| Call { id, abandon: true, ..Call::default() };
        let calls = Arc::new(Multiplexer::new(requests, answers, Some(abandon)));
        *slot = Some(calls.clone());
        Ok(calls)
    }

    /// Forgets the connection `link` to `addr` (if it is still the one in use) and fails the
    /// calls waiting on its stream: they are retried elsewhere with their request ids, rather
    /// than left waiting on a connection that may never answer nor fail.
    fn drop_link(&self, addr: &str, link: &Arc<Link>) {
        let mut channels = self.channels.lock().expect("channels");
        if channels.get(addr).is_some_and(|l| Arc::ptr_eq(l, link)) {
            channels.remove(addr);
        }
        drop(channels);
        if let Ok(calls) = link.calls.try_lock() {
            if let Some(c) = calls.as_ref() {
                c.close("the connection was given up");
            }
        }
    }

    /// Forgets the connection to `addr`, failing the calls waiting on it (see `drop_link`).
    fn forget_link(&self, addr: &str) {
        let link = self.channels.lock().expect("channels").get(addr).cloned();
        if let Some(link) = link {
            self.drop_link(addr, &link);
        }
    }

    fn forget_channel(&self, addr: &str) {
        self.forget_link(addr);
        let mut m = self.master.lock().expect("master");
        if m.as_deref() == Some(addr) {
            *m = None;
        }
    }

    /// The master if known, else the replicas in turn.
    fn candidate(&self, turn: usize) -> String {
        self.master.lock().expect("master").clone().unwrap_or_else(|| {
            let addrs = self.addrs.lock().expect("addrs");
            addrs[turn % addrs.len()].clone()
        })
    }

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
        let (addr, stream) = connect_stream(&addrs, &channels, None, &open, deadline, stream::ATTEMPT_TIMEOUT)
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
            seq: Mutex::new(Sequence { next: 1, outstanding: BTreeSet::new() }),
            events: broadcast::channel(1024).0,
            state: watch::channel(SessionState::Alive).0,
            closed: watch::channel(false).0,
            hook: Mutex::new(None),
        });
        inner.granted(stream::local_lease_end(sent, Duration::from_millis(stream.2.lease_ms)));
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

    fn next_request(&self) -> InFlight {
        let mut s = self.inner.seq.lock().expect("sequence");
        let sequence = s.next;
        s.next += 1;
        s.outstanding.insert(sequence);
        let first_incomplete = *s.outstanding.first().expect("just inserted");
        InFlight {
            inner: self.inner.clone(),
            request: RequestId { session: self.inner.id, sequence, first_incomplete },
        }
    }

    /// Runs `call` at the master, following redirects and retrying (with the same request) across
    /// a failover, until the deadline (none: wait as long as the session lives).
    async fn call<T, F, Fut>(&self, deadline: Option<Instant>, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Arc<CallStream>, u64) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let inner = &self.inner;
        let mut turn = 0usize;
        let mut last = String::from("nothing tried");
        let mut backoff = Duration::from_millis(10);
        loop {
            if inner.state() == SessionState::Lost {
                return Err(ClientError::SessionLost(inner.id));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ClientError::Timeout { timeout: inner.opts.timeout, last });
            }
            let addr = inner.candidate(turn);
            turn += 1;
            let epoch = inner.epoch.load(Ordering::Acquire);
            let attempt = async {
                match inner.call_stream(&addr).await {
                    Err(e) => Err(Status::unavailable(e)),
                    Ok(link) => call(link, epoch).await,
                }
            };
            let result = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, attempt)
                        .await
                        .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline passed")))
                }
                None => attempt.await,
            };
            match result {
                Ok(r) => {
                    *inner.master.lock().expect("master") = Some(addr);
                    return Ok(r);
                }
                Err(s) if reason(&s) == Some("NoSession") => {
                    inner.lose();
                    return Err(ClientError::SessionLost(inner.id));
                }
                Err(s) if s.code() == Code::DeadlineExceeded && deadline.is_some() => {
                    last = s.message().to_string();
                }
                Err(s) if reason(&s) == Some("StaleEpoch") => {
                    // A new master, and the session has not resumed there yet: its stream
                    // will shortly; the call waits for that (bounded by its deadline).
                    last = format!("{addr}: {}", s.message());
                    *inner.master.lock().expect("master") = Some(addr);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(s) if !retryable(&s) => return Err(ClientError::Rpc(Box::new(s))),
                Err(s) => {
                    last = format!("{addr}: {}", s.message());
                    match leader_hint(&s).filter(|h| *h != addr) {
                        Some(h) => {
                            *inner.master.lock().expect("master") = Some(h);
                            continue;
                        }
                        None => inner.forget_channel(&addr),
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.inner.opts.timeout)
    }

    /// The deadline of a call that changes a node others may cache (SetContents, Delete,
    /// SetAcl). The master holds such a write back until every cacher has acknowledged its
    /// invalidation or lost its lease, up to a whole lease; a deadline shorter than that would
    /// report a failure for a write that then commits. So it is at least the lease and a
    /// margin for the commit after the wait.
    pub(crate) fn change_deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.inner.opts.timeout.max(self.inner.lease + CHANGE_MARGIN))
    }

    /// Opens a node. A plain open (no create, no events) of a node this session has cached
    /// is answered from the cache.
    pub async fn open_node(&self, path: &str, o: OpenOptions) -> Result<(Handle, NodeStat), ClientError> {
        let plain = !o.create && o.events == 0;
        if plain {
            let mut cache = self.inner.cache();
            if let Some((handle, stat)) = cache.handle(path) {
                cache.remember_handle(&handle, path, stat.instance_number);
                return Ok((handle, stat));
            }
        }
        let f = self.next_request();
        let req = OpenRequest {
            request: Some(f.request),
            path: path.to_string(),
            create: o.create,
            directory: o.directory,
            ephemeral: o.ephemeral,
            exclusive: o.exclusive,
            initial_contents: o.contents,
            event_mask: o.events,
            session_token: self.inner.token.clone(),
        };
        let ticket = self.inner.cache().begin_read(path);
        let r = self.call(self.deadline(), rpc!(Open, req)).await;
        let mut cache = self.inner.cache();
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                cache.end_read(ticket, None);
                return Err(e);
            }
        };
        let (handle, stat) = (r.handle.unwrap_or_default(), r.stat.unwrap_or_default());
        cache.remember_handle(&handle, path, stat.instance_number);
        if o.events != 0 {
            let mut subs = self.inner.subscriptions.lock().expect("subscriptions");
            let mask = subs.get(path).map_or(0, |(_, m)| *m) | o.events;
            subs.insert(path.to_string(), (handle.clone(), mask));
        }
        let fill = (plain && r.cacheable).then(|| Fill { stat, contents: None, handle: Some(handle.clone()) });
        cache.end_read(ticket, fill);
        Ok((handle, stat))
    }

    pub async fn close_node(&self, handle: &Handle) -> Result<(), ClientError> {
        let f = self.next_request();
        self.inner.cache().forget_handle(handle);
        self.inner.subscriptions.lock().expect("subscriptions").retain(|_, (h, _)| h != handle);
        let req = CloseRequest { request: Some(f.request), handle: Some(handle.clone()) };
        self.call(self.deadline(), rpc!(Close, req)).await.map(|_| ())
    }

    /// Contents and metadata, linearizable: from the cache if the node is cached, else from
    /// the master. (A cached stat's `lock_generation` may lag: lock changes do not invalidate
    /// caches; [`Session::holder_sequencers`] and [`Session::check_sequencer`] ask the master.)
    pub async fn get(&self, handle: &Handle) -> Result<(Bytes, NodeStat), ClientError> {
        let node = self.inner.cache().node_of(handle);
        let Some((path, instance)) = node else { return self.get_uncached(handle).await.map(|(c, s, _)| (c, s)) };
        let hit = self.inner.cache().contents(&path, instance);
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let ticket = self.inner.cache().begin_read(&path);
        let r = self.get_uncached(handle).await;
        let fill = match &r {
            Ok((contents, stat, true)) => Some(Fill { stat: *stat, contents: Some(contents.clone()), handle: None }),
            _ => None,
        };
        self.inner.cache().end_read(ticket, fill);
        r.map(|(c, s, _)| (c, s))
    }

    /// Contents and metadata from the master, and whether the answer may be cached.
    async fn get_uncached(&self, handle: &Handle) -> Result<(Bytes, NodeStat, bool), ClientError> {
        let req = GetContentsRequest { handle: Some(handle.clone()), stale_ok: false };
        let r = self.call(self.deadline(), rpc!(GetContentsAndStat, req)).await?;
        Ok((r.contents, r.stat.unwrap_or_default(), r.cacheable))
    }

    /// Contents as the first replica reached has them (may be behind the master).
    pub async fn get_stale(&self, handle: &Handle) -> Result<(Bytes, NodeStat), ClientError> {
        let req = GetContentsRequest { handle: Some(handle.clone()), stale_ok: true };
        let r = self.call(self.deadline(), rpc!(GetContentsAndStat, req)).await?;
        Ok((r.contents, r.stat.unwrap_or_default()))
    }

    /// Metadata, linearizable: from the cache if the node is cached (see [`Session::get`]).
    /// Metadata asked of the master, never of the cache: its lock generation is current (lock
    /// changes do not invalidate caches, so a cached stat's may lag).
    pub async fn stat_from_master(&self, handle: &Handle) -> Result<NodeStat, ClientError> {
        let node = self.inner.cache().node_of(handle);
        Ok(self.get_stat(handle, node).await?.stat.unwrap_or_default())
    }

    pub async fn stat(&self, handle: &Handle) -> Result<NodeStat, ClientError> {
        let node = self.inner.cache().node_of(handle);
        let hit = node.as_ref().and_then(|(p, i)| self.inner.cache().stat(p, *i));
        if let Some(hit) = hit {
            return Ok(hit);
        }
        Ok(self.get_stat(handle, node).await?.stat.unwrap_or_default())
    }

    /// GetStat at the master; a cacheable answer refills the cache.
    async fn get_stat(&self, handle: &Handle, node: Option<(String, u64)>) -> Result<GetStatResponse, ClientError> {
        let ticket = node.as_ref().map(|(p, _)| self.inner.cache().begin_read(p));
        let req = GetStatRequest { handle: Some(handle.clone()) };
        let r = self.call(self.deadline(), rpc!(GetStat, req)).await;
        if let Some(ticket) = ticket {
            let fill = match &r {
                Ok(r) if r.cacheable => Some(Fill { stat: r.stat.unwrap_or_default(), contents: None, handle: None }),
                _ => None,
            };
            self.inner.cache().end_read(ticket, fill);
        }
        r
    }

    pub async fn set(
        &self,
        handle: &Handle,
        contents: Bytes,
        if_generation: Option<u64>,
        sequencer: &str,
    ) -> Result<NodeStat, ClientError> {
        // Write-through when this session caches: it drops its copy itself (and tells its
        // hook, as for an invalidation) instead of waiting for the master's invalidation
        // round trip, and caches what it wrote if the master says it may.
        let node = self.inner.opts.cache.then(|| self.inner.cache().node_of(handle)).flatten();
        let ticket = match &node {
            Some((path, _)) => {
                let ticket = self.inner.cache().begin_own_write(path);
                self.inner.invalidated(Invalidated::Nodes(vec![path.clone()])).await;
                Some(ticket)
            }
            None => None,
        };
        let f = self.next_request();
        let req = SetContentsRequest {
            request: Some(f.request),
            handle: Some(handle.clone()),
            contents: contents.clone(),
            if_generation,
            sequencer: sequencer.to_string(),
            write_through: ticket.is_some(),
        };
        let r = self.call(self.change_deadline(), rpc!(SetContents, req)).await;
        if let Some(ticket) = ticket {
            let fill = match &r {
                Ok(r) if r.cacheable => Some(Fill {
                    stat: r.stat.unwrap_or_default(),
                    contents: Some(contents),
                    handle: Some(handle.clone()),
                }),
                _ => None,
            };
            self.inner.cache().end_read(ticket, fill);
        }
        Ok(r?.stat.unwrap_or_default())
    }

    pub async fn delete(
        &self,
        handle: &Handle,
        if_generation: Option<u64>,
        sequencer: &str,
    ) -> Result<(), ClientError> {
        let f = self.next_request();
        let req = DeleteRequest {
            request: Some(f.request),
            handle: Some(handle.clone()),
            if_generation,
            sequencer: sequencer.to_string(),
        };
        self.call(self.change_deadline(), rpc!(Delete, req)).await.map(|_| ())
    }

    pub async fn read_dir(&self, handle: &Handle) -> Result<Vec<DirEntry>, ClientError> {
        let req = ReadDirRequest { handle: Some(handle.clone()) };
        Ok(self.call(self.deadline(), rpc!(ReadDir, req)).await?.entries)
    }

    /// Waits for the lock (as long as the session lives, across failovers) and returns its
    /// sequencer.
    pub async fn acquire(
        &self,
        handle: &Handle,
        mode: LockMode,
        owner: u64,
        lock_delay: Option<Duration>,
    ) -> Result<String, ClientError> {
        let (_f, req) = self.acquire_request(handle, mode, owner, lock_delay);
        Ok(self.call(None, rpc!(Acquire, req)).await?.sequencer)
    }

    /// Takes the lock if it is free now; `LockBusy` otherwise.
    pub async fn try_acquire(
        &self,
        handle: &Handle,
        mode: LockMode,
        owner: u64,
        lock_delay: Option<Duration>,
    ) -> Result<String, ClientError> {
        let (_f, req) = self.acquire_request(handle, mode, owner, lock_delay);
        Ok(self.call(self.deadline(), rpc!(TryAcquire, req)).await?.sequencer)
    }

    fn acquire_request(
        &self,
        handle: &Handle,
        mode: LockMode,
        owner: u64,
        lock_delay: Option<Duration>,
    ) -> (InFlight, AcquireRequest) {
        let f = self.next_request();
        let req = AcquireRequest {
            request: Some(f.request),
            handle: Some(handle.clone()),
            mode: mode as i32,
            owner,
            lock_delay_ms: lock_delay.map(|d| d.as_millis() as u64),
        };
        (f, req)
    }

    pub async fn release(&self, handle: &Handle, owner: u64) -> Result<(), ClientError> {
        let f = self.next_request();
        let req = ReleaseRequest { request: Some(f.request), handle: Some(handle.clone()), owner };
        self.call(self.deadline(), rpc!(Release, req)).await.map(|_| ())
    }

    /// Withdraws a queued Acquire. If the lock was granted meanwhile it is released, so the
    /// caller never holds a lock it gave up on.
    pub async fn cancel(&self, handle: &Handle, owner: u64) -> Result<(), ClientError> {
        let f = self.next_request();
        let req = CancelRequest { request: Some(f.request), handle: Some(handle.clone()), owner };
        match self.call(self.deadline(), rpc!(Cancel, req)).await {
            Err(ClientError::Rpc(s)) if s.code() == Code::AlreadyExists => self.release(handle, owner).await,
            other => other.map(|_| ()),
        }
    }

    pub async fn sequencer(&self, handle: &Handle, owner: u64) -> Result<String, ClientError> {
        let req = GetSequencerRequest { handle: Some(handle.clone()), owner, holders: false };
        Ok(self.call(self.deadline(), rpc!(GetSequencer, req)).await?.sequencer)
    }

    /// The sequencers of whoever holds the node's lock now (empty if it is free): one for an
    /// exclusive holder, one per holder of a shared lock.
    pub async fn holder_sequencers(&self, handle: &Handle) -> Result<Vec<String>, ClientError> {
        let req = GetSequencerRequest { handle: Some(handle.clone()), owner: 0, holders: true };
        Ok(self.call(self.deadline(), rpc!(GetSequencer, req)).await?.holders)
    }

    pub async fn check_sequencer(&self, sequencer: &str) -> Result<bool, ClientError> {
        let req = CheckSequencerRequest { sequencer: sequencer.to_string() };
        Ok(self.call(self.deadline(), rpc!(CheckSequencer, req)).await?.valid)
    }

    /// Ends the session: locks released (no lock-delay), ephemeral nodes gone.
    pub async fn close(self) -> Result<(), ClientError> {
        // Nothing cached (nor kept by the kernel on top) may outlive the session at the master:
        // once it is closed there, writes no longer wait for this host's ack.
        self.inner.flush_cache().await;
        let f = self.next_request();
        let req = CloseSessionRequest { request: Some(f.request), session_token: self.inner.token.clone() };
        let r = self.call(self.deadline(), rpc!(CloseSession, req)).await.map(|_| ());
        self.inner.closed.send_replace(true);
        self.inner.lose();
        r
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
