//! The master: what the leader keeps in memory on top of the replicated state (DESIGN.md,
//! "The master"). Session leases and their expiry, blocked Acquires waiting for a grant,
//! session streams for events and cache invalidations, and the failover steps of Chubby §2.9.
//!
//! The master starts when its replica becomes Raft leader: it commits an entry of its own
//! (so its state has everything committed before), gives every session a fresh full lease,
//! re-arms running lock-delays, and only then serves. It stops at once when leadership is lost:
//! streams close, blocked calls are told to retry at the new master.
//!
//! - [`office`]: taking office and leaving it; whether this replica serves a call.
//! - [`streams`]: session streams: open, resume, KeepAlive, subscriptions.
//! - [`writes`]: a write's protocol (invalidate, propose, re-register the writer) and reads
//!   that may be cached; [`cache`]: who may cache what.
//! - [`acquire`]: an Acquire that waits for its grant.
//! - [`effects`]: applied entries' effects become grants, events and timers.
//! - [`timers`]: lease expiry and the end of lock-delays; [`leases`], [`lease_cap`]: leases.
//! - [`events`]: subscriptions and events; [`log_clock`]: the time stamped on entries.
//! - [`error`]: why the master refused, for the services to map to statuses.

mod acquire;
mod cache;
mod effects;
mod error;
mod events;
mod lease_cap;
mod leases;
mod log_clock;
mod office;
mod own_proposals;
mod streams;
mod timers;
mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::chubby::SessionResponse;
use raft::{ReplicaError, ReplicaHandle};
use tokio::sync::{mpsc, oneshot};

use crate::machine::{CellMachine, EffectSource};
use crate::state::{decode, encode, CellState, Command, Op, Outcome, Owner, Reply, RequestId, SessionId, StateError};

pub use cache::CacheTable;
pub use error::MasterError;
pub use leases::LeaseTable;
pub use log_clock::{now_ms, LogClock};

/// Event kinds a handle may ask for (`OpenRequest.event_mask`).
pub const EVENT_CONTENTS: u32 = 1;
pub const EVENT_CHILDREN: u32 = 2;
pub const EVENT_LOCK_ACQUIRED: u32 = 4;
pub const EVENT_CONFLICTING_LOCK: u32 = 8;

/// How often lease deadlines are checked.
const EXPIRY_SCAN: Duration = Duration::from_millis(50);

/// A session stream's queue: what is sent to its client, and the error that ends it.
pub type StreamTx = mpsc::Sender<Result<SessionResponse, MasterError>>;
type GrantTx = oneshot::Sender<Result<String, StateError>>;

#[derive(Clone, Debug)]
pub struct MasterConfig {
    pub lease: Duration,
    /// Events and invalidations name nodes as clients do: `/ls/<cell>/…`.
    pub cell_name: String,
}

/// `/a/b` → `/ls/<cell>/a/b` (the cell root `/` → `/ls/<cell>`).
pub fn full_path(cell: &str, path: &str) -> String {
    if path == "/" {
        format!("/ls/{cell}")
    } else if path.is_empty() {
        String::new()
    } else {
        format!("/ls/{cell}{path}")
    }
}

#[derive(Default)]
struct Inner {
    /// The epoch (Raft term) this master serves in; `None` while not (yet) serving.
    epoch: Option<u64>,
    key: bytes::Bytes,
    leases: LeaseTable,
    streams: HashMap<SessionId, StreamTx>,
    waiters: HashMap<(SessionId, Owner, String), Vec<GrantTx>>,
    subs: events::Subscriptions,
    cache: CacheTable,
    cell_name: String,
    /// Sessions that have not resumed since this master took office: they may hold cached
    /// data the old master would have invalidated.
    unflushed: HashSet<SessionId>,
    /// The time this master stamps on entries, set when it takes office.
    clock: Option<LogClock>,
    /// When the latest round that confirmed this master's leadership began (see `lease_cap`).
    confirmed: Option<Instant>,
    /// Sessions an event could not be sent to (their stream's queue was full): they are told
    /// so, with an `events_lost` event, as soon as their stream takes one.
    events_lost: HashSet<SessionId>,
}

pub struct Master {
    replica: ReplicaHandle<CellMachine>,
    cfg: MasterConfig,
    inner: Mutex<Inner>,
    /// The epoch while serving, `None` otherwise: wakes calls waiting for a master.
    office: tokio::sync::watch::Sender<Option<u64>>,
    /// Whether the state machine sends this master its effects (see [`EffectSource`]).
    effects_wanted: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a call waits at a replica for a master to be elected (or to finish taking
/// office) before it is told to retry: a little over the longest election on a LAN, so a
/// client is redirected the moment the election ends instead of polling through it.
const AWAIT_MASTER: Duration = Duration::from_secs(1);

impl Master {
    /// Starts the master's tasks; `effects` is the state machine's effect channel.
    pub fn start(replica: ReplicaHandle<CellMachine>, cfg: MasterConfig, effects: EffectSource) -> Arc<Master> {
        let EffectSource { rx: mut effects, wanted: effects_wanted } = effects;
        let master = Arc::new(Master {
            replica,
            cfg,
            inner: Mutex::new(Inner::default()),
            office: tokio::sync::watch::channel(None).0,
            effects_wanted,
        });
        let m = master.clone();
        tokio::spawn(async move {
            while let Some(batch) = effects.recv().await {
                m.on_effects(batch);
            }
        });
        let m = master.clone();
        tokio::spawn(async move { m.follow_leadership().await });
        let m = master.clone();
        tokio::spawn(async move { m.expire_leases().await });
        master
    }

    /// The log time to stamp on an entry now (see [`LogClock`]) and the term this master
    /// serves in; none while it does not serve (an entry it stamped could otherwise commit in
    /// a later term of its own, before that term's clock is set).
    fn stamp(&self) -> Option<(u64, u64)> {
        let g = self.lock();
        Some((g.clock?.now_ms(), g.epoch?))
    }

    /// Proposes `op` (of the session call `request`, if any) stamped with this master's log
    /// clock, in the term it serves in: if that term is over, it is dropped, never applied in a
    /// later one (whose master may have decided otherwise: given a fresh lease, say).
    async fn propose_op(&self, request: Option<RequestId>, op: Op) -> Result<Outcome, ReplicaError> {
        let (now_ms, epoch) = self.stamp().ok_or(ReplicaError::NotLeader { leader: 0 })?;
        self.propose_at(Command { now_ms, request, op }, epoch).await
    }

    /// As [`Master::propose_op`], only in term `epoch`.
    async fn propose_at(&self, entry: Command, epoch: u64) -> Result<Outcome, ReplicaError> {
        self.decode_outcome(self.replica.propose_in_term(encode(&entry), epoch).await?)
    }

    /// Proposes the session call `request`'s `op` and returns the state machine's answer.
    pub(crate) async fn propose_call(&self, request: RequestId, op: Op) -> Result<Reply, MasterError> {
        Ok(self.propose_op(Some(request), op).await??)
    }

    /// A linearizable read of the state (ReadIndex at the master).
    pub(crate) async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&CellState) -> Result<R, StateError> + Send + 'static,
    ) -> Result<R, MasterError> {
        Ok(self.replica.read(move |m: &CellMachine| f(m.state())).await??)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("master state lock")
    }

    pub fn lease(&self) -> Duration {
        self.cfg.lease
    }

    pub fn replica(&self) -> &ReplicaHandle<CellMachine> {
        &self.replica
    }

    pub fn key(&self) -> bytes::Bytes {
        self.lock().key.clone()
    }

    fn decode_outcome(&self, out: bytes::Bytes) -> Result<Outcome, ReplicaError> {
        Ok(decode::<Outcome>(&out).unwrap_or_else(|e| Err(StateError::InvalidArgument(e.to_string()))))
    }

    /// Sessions with a lease at this master (for status).
    pub fn session_count(&self) -> usize {
        self.lock().leases.len()
    }

    /// The sizes of the master's per-session tables: subscriptions, cache registrations and
    /// blocked Acquire calls.
    pub fn table_sizes(&self) -> (usize, usize, usize) {
        let g = self.lock();
        (g.subs.count(), g.cache.count(), g.waiters.values().map(Vec::len).sum())
    }
}

impl Inner {
    /// Registers a blocked Acquire's answer channel. Those of earlier attempts whose caller has
    /// gone (a retried Acquire: its first attempt timed out) are dropped, so retries while a
    /// lock stays held do not pile up.
    fn add_waiter(&mut self, key: (SessionId, Owner, String), tx: GrantTx) {
        let txs = self.waiters.entry(key).or_default();
        txs.retain(|t| !t.is_closed());
        txs.push(tx);
    }

    fn forget_session(&mut self, session: SessionId, expired: bool) {
        self.leases.remove(session);
        self.unflushed.remove(&session);
        self.events_lost.remove(&session);
        if let Some(tx) = self.streams.remove(&session) {
            let _ = tx.try_send(Err(MasterError::SessionEnded { session, expired }));
        }
        self.waiters.retain(|(s, _, _), _| *s != session);
        self.subs.session_ended(session);
        self.cache.forget_session(session);
    }
}

fn random_key() -> Vec<u8> {
    use std::io::Read;
    let mut key = vec![0u8; 32];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut key)) {
        Ok(()) => key,
        Err(e) => {
            // Never a fixed key: fall back to the clock and process id, hashed.
            tracing::warn!(error = %e, "no /dev/urandom; deriving the cell key from the clock");
            let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            (0..4u64).flat_map(|i| xxhash_rust::xxh3::xxh3_64_with_seed(seed.as_bytes(), i).to_le_bytes()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocked Acquire retried again and again while the lock stays held keeps one entry per
    /// caller still waiting, not one per attempt.
    #[test]
    fn retried_blocked_acquires_do_not_pile_up() {
        let mut g = Inner::default();
        let key = (3, 1, "/lock".to_string());
        for _ in 0..100 {
            let (tx, rx) = oneshot::channel();
            g.add_waiter(key.clone(), tx);
            drop(rx); // this attempt's caller gave up
        }
        let (tx, _waiting) = oneshot::channel();
        g.add_waiter(key.clone(), tx);
        assert_eq!(g.waiters[&key].len(), 1, "only the caller still waiting");
    }
}
