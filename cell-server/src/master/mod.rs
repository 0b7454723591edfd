//! The master: what the leader keeps in memory on top of the replicated state (DESIGN.md,
//! "The master"). Session leases and their expiry, blocked Acquires waiting for a grant,
//! session streams for events and cache invalidations, and the failover steps of Chubby §2.9.
//!
//! The master starts when its replica becomes Raft leader: it commits an entry of its own
//! (so its state has everything committed before), gives every session a fresh full lease,
//! re-arms running lock-delays, and only then serves. It stops at once when leadership is lost:
//! streams close, blocked calls are told to retry at the new master.

// gRPC's Status is the error of every call here; boxing it would only add noise.
#![allow(clippy::result_large_err)]

mod cache;
mod events;
mod lease_cap;
mod leases;
mod log_clock;
mod own_proposals;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use proto::chubby::{session_response, LeaseGrant, SessionResponse};
use raft::{NodeError, NodeHandle, Role};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::machine::{CellMachine, EffectSource};
use crate::state::{
    decode, encode, split_parent, Change, Effect, Entry, Op, Outcome, Owner, RequestId, SessionId, StateError,
};
use log_clock::now_ms;
use proto::ERROR_METADATA;

pub use cache::CacheTable;
use events::{event, events_lost};
pub use leases::LeaseTable;
pub use log_clock::LogClock;

/// Event kinds a handle may ask for (`OpenRequest.event_mask`).
pub const EVENT_CONTENTS: u32 = 1;
pub const EVENT_CHILDREN: u32 = 2;
pub const EVENT_LOCK_ACQUIRED: u32 = 4;
pub const EVENT_CONFLICTING_LOCK: u32 = 8;

/// How often lease deadlines are checked.
const EXPIRY_SCAN: Duration = Duration::from_millis(50);

pub type StreamTx = mpsc::Sender<Result<SessionResponse, Status>>;
type GrantTx = oneshot::Sender<Result<String, StateError>>;

#[derive(Clone, Debug)]
pub struct MasterConfig {
    pub lease: Duration,
    /// Every replica's address, for redirects.
    pub peers: std::collections::BTreeMap<raft::NodeId, String>,
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
    node: NodeHandle<CellMachine>,
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
    pub fn start(node: NodeHandle<CellMachine>, cfg: MasterConfig, effects: EffectSource) -> Arc<Master> {
        let EffectSource { rx: mut effects, wanted: effects_wanted } = effects;
        let master = Arc::new(Master {
            node,
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
    pub async fn propose_op(&self, request: Option<RequestId>, op: Op) -> Result<Outcome, NodeError> {
        let (now_ms, epoch) = self.stamp().ok_or(NodeError::NotLeader { leader: 0 })?;
        self.propose_at(Entry { now_ms, request, op }, epoch).await
    }

    /// As [`Master::propose_op`], only in term `epoch`.
    async fn propose_at(&self, entry: Entry, epoch: u64) -> Result<Outcome, NodeError> {
        self.decode_outcome(self.node.propose_in_term(encode(&entry), epoch).await?)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("master state lock")
    }

    pub fn lease(&self) -> Duration {
        self.cfg.lease
    }

    pub fn node(&self) -> &NodeHandle<CellMachine> {
        &self.node
    }

    /// The epoch if this replica is the serving master, else the status that sends the
    /// client to the leader (or asks it to retry while the master is starting).
    pub fn serving(&self) -> Result<u64, Status> {
        if let Some(epoch) = self.lock().epoch {
            return Ok(epoch);
        }
        let l = *self.node.leadership().borrow();
        Err(match l.role {
            Some(Role::Leader) => Status::unavailable("master is taking office; retry shortly"),
            _ => self.redirect(l.leader_id),
        })
    }

    /// Refuses a call made under another master's epoch (the `chubby-epoch` metadata; a call
    /// without it, from a raw gRPC tool, is not checked). An older epoch means the client has
    /// not yet resumed its session here since the failover: it is told to, with this master's
    /// address. A newer one means this replica is a deposed master that has not noticed yet.
    pub async fn check_epoch(&self, metadata: &tonic::metadata::MetadataMap) -> Result<u64, Status> {
        let epoch = self.await_serving().await?;
        let Some(v) = metadata.get(proto::EPOCH_METADATA) else { return Ok(epoch) };
        let theirs: u64 = v
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Status::invalid_argument(format!("{}: not an epoch number", proto::EPOCH_METADATA)))?;
        if theirs == epoch {
            return Ok(epoch);
        }
        if theirs > epoch {
            return Err(Status::unavailable(format!(
                "this master's epoch {epoch} is older than the session's {theirs}: a newer master was elected"
            )));
        }
        let mut s = Status::with_metadata(
            tonic::Code::FailedPrecondition,
            format!("stale epoch {theirs}: the master changed (epoch {epoch}); resume the session here before calling"),
            self.redirect(self.node.id()).metadata().clone(),
        );
        s.metadata_mut().insert(ERROR_METADATA, tonic::metadata::MetadataValue::from_static("StaleEpoch"));
        Err(s)
    }

    /// As [`Master::serving`], but while no master is known (an election) or this replica is
    /// taking office, waits for that to end (at most [`AWAIT_MASTER`]) and then serves or
    /// redirects.
    pub async fn await_serving(&self) -> Result<u64, Status> {
        // Every call passes here: the common case sets up no waiting.
        if let Ok(epoch) = self.serving() {
            return Ok(epoch);
        }
        let deadline = tokio::time::Instant::now() + AWAIT_MASTER;
        let mut leadership = self.node.leadership();
        let mut office = self.office.subscribe();
        loop {
            match self.serving() {
                Ok(epoch) => return Ok(epoch),
                // A redirect to a known master goes out at once.
                Err(s) if s.code() != tonic::Code::Unavailable => return Err(s),
                Err(s) => {
                    tokio::select! {
                        r = leadership.changed() => if r.is_err() { return Err(s) },
                        r = office.changed() => if r.is_err() { return Err(s) },
                        _ = tokio::time::sleep_until(deadline) => return Err(s),
                    }
                }
            }
        }
    }

    /// The status that sends a client to `leader` (or asks it to retry while none is known).
    pub fn redirect(&self, leader: raft::NodeId) -> Status {
        match self.cfg.peers.get(&leader) {
            Some(addr) if leader != 0 => {
                let mut s =
                    Status::failed_precondition(format!("not the master; the master is replica {leader} at {addr}"));
                if let Ok(v) = tonic::metadata::MetadataValue::try_from(addr.as_str()) {
                    s.metadata_mut().insert(proto::LEADER_METADATA, v);
                }
                s
            }
            _ => Status::unavailable("no master elected yet; retry shortly"),
        }
    }

    /// Maps a Raft node error to the status a client acts on.
    pub fn node_error(&self, e: NodeError) -> Status {
        match e {
            NodeError::NotLeader { leader } => self.redirect(leader),
            NodeError::Dropped => Status::aborted("lost to a master change and not applied; retry"),
            NodeError::Unknown => Status::unavailable(
                "master changed; the call may or may not have been applied; retry it with the same request id",
            ),
            NodeError::Stopped => Status::unavailable("replica is shutting down"),
            NodeError::Raft(e) => Status::unavailable(e.to_string()),
        }
    }

    pub fn key(&self) -> bytes::Bytes {
        self.lock().key.clone()
    }

    async fn follow_leadership(self: Arc<Self>) {
        let mut watch = self.node.leadership();
        loop {
            let l = *watch.borrow_and_update();
            if l.role == Some(Role::Leader) {
                let m = self.clone();
                tokio::spawn(async move { m.take_office(l.term).await });
            } else {
                self.leave_office();
            }
            if watch.changed().await.is_err() {
                return;
            }
        }
    }

    /// Chubby §2.9 on Raft: commit an entry of this term (the cell key on a new cell), then
    /// rebuild leases from the sessions in the state, re-arm lock-delays, and serve.
    async fn take_office(self: Arc<Self>, term: u64) {
        // Effects of every entry from this term's first on reach `on_effects`, which acts on
        // them once the epoch is set below. (Set before the proposal goes to the Raft loop, so
        // the loop sees it for that entry and all later ones.)
        self.effects_wanted.store(true, std::sync::atomic::Ordering::SeqCst);
        let read_clock = |m: &CellMachine| {
            let st = m.state();
            (st.clock_ms(), st.lock_delays().next().is_some())
        };
        let Ok((has_key, (log_ms, delays))) =
            self.node.stale_read(move |m| (!m.state().key().is_empty(), read_clock(m))).await
        else {
            return;
        };
        let op = if has_key { Op::Tick } else { Op::InitCell { key: random_key().into(), limits: Default::default() } };
        // Stamped with the log's time as far as this replica has applied it, never the wall
        // clock: entries committed but not yet applied here may start a lock-delay this read
        // cannot see. The clock is set for good below, once everything before is applied.
        let _ = delays;
        let entry = Entry { now_ms: log_ms, request: None, op };
        if let Err(e) = self.node.propose_in_term(encode(&entry), term).await {
            tracing::info!(term, error = %e, "could not take office");
            return;
        }
        let snapshot = self
            .node
            .stale_read(|m| {
                let st = m.state();
                let sessions: Vec<SessionId> = st.sessions().map(|(id, _)| *id).collect();
                let delays: Vec<u64> = st.lock_delays().map(|(t, _)| t).collect();
                (bytes::Bytes::copy_from_slice(st.key()), sessions, delays, st.clock_ms())
            })
            .await;
        let Ok((key, sessions, delays, log_ms)) = snapshot else { return };
        // A round that confirms this leadership, begun now: the leases granted from here on are
        // capped by it (see `lease_cap`).
        let issued = Instant::now();
        if self.node.read(|_| ()).await.is_err() {
            return;
        }
        {
            let mut g = self.lock();
            // Checked under the lock `leave_office` takes: either it ran before (and this gives
            // up) or it runs after and undoes what follows.
            let l = *self.node.leadership().borrow();
            if l.term != term || l.role != Some(Role::Leader) {
                return;
            }
            // Every lease a former master granted ends within the grant window past the start
            // of its last confirmed round, which came before this term began: a full lease
            // from now and the window cover them all; the allowance gives the clients time to
            // find this master once their leases have ended (see `lease_cap`).
            let lease = self.cfg.lease;
            let until = Instant::now() + lease + lease_cap::GRANT_WINDOW + lease_cap::resume_allowance(lease);
            g.leases = LeaseTable::default();
            for &s in &sessions {
                g.leases.extend(s, until);
            }
            g.unflushed = sessions.iter().copied().collect();
            g.key = key;
            g.cell_name = self.cfg.cell_name.clone();
            g.clock = Some(LogClock::take_office(log_ms, now_ms(), !delays.is_empty(), Instant::now()));
            g.confirmed = Some(issued);
            g.epoch = Some(term);
            self.office.send_replace(Some(term));
        }
        let m = self.clone();
        tokio::spawn(async move { m.confirm_leadership(term).await });
        for until in delays {
            self.arm_lock_delay(until);
        }
        tracing::info!(term, sessions = sessions.len(), "master serving");
    }

    /// Confirms this master's leadership with a ReadIndex round every few ticks while it is in
    /// office: the grants it makes are capped by the latest confirmation (see `lease_cap`).
    async fn confirm_leadership(self: Arc<Self>, term: u64) {
        loop {
            tokio::time::sleep(lease_cap::CONFIRM_EVERY).await;
            if self.lock().epoch != Some(term) {
                return;
            }
            let issued = Instant::now();
            if self.node.read(|_| ()).await.is_ok() {
                let mut g = self.lock();
                if g.epoch == Some(term) {
                    g.confirmed = g.confirmed.max(Some(issued));
                }
            }
        }
    }

    /// The lease this master may grant now (see `lease_cap`).
    fn lease_to_grant(&self, g: &Inner, now: Instant) -> Duration {
        lease_cap::lease_cap(g.confirmed, now, self.cfg.lease)
    }

    fn leave_office(&self) {
        self.effects_wanted.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut g = self.lock();
        if g.epoch.take().is_some() {
            tracing::info!("master stopped serving");
        }
        self.office.send_replace(None);
        // Each stream is ended with an error so its client resumes at once at the new master
        // (dropping our sender alone would not end it: its reader task holds another). Dropping
        // the waiters tells blocked calls to retry.
        for tx in g.streams.values() {
            let _ = tx.try_send(Err(Status::unavailable("the master stepped down; resume at the new master")));
        }
        *g = Inner::default();
    }

    async fn expire_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(EXPIRY_SCAN);
        loop {
            tick.tick().await;
            let (expired, epoch) = {
                let mut g = self.lock();
                let Some(epoch) = g.epoch else { continue };
                (g.leases.take_expired(Instant::now()), epoch)
            };
            for session in expired {
                tracing::info!(session, "session lease expired");
                let m = self.clone();
                tokio::spawn(async move { m.propose_expiry(session, epoch).await });
            }
        }
    }

    /// Proposes the session's expiry, decided in term `epoch` by that term's leases, again
    /// until it is done while this master is in that term (see `own_proposals`); never in a
    /// later term, whose master gives every session a fresh lease.
    pub async fn propose_expiry(&self, session: SessionId, epoch: u64) {
        let propose = || async {
            match self.stamp() {
                Some((now_ms, e)) if e == epoch => {
                    let entry = Entry { now_ms, request: None, op: Op::ExpireSession { session } };
                    self.propose_at(entry, epoch).await.map(|_| ())
                }
                _ => Err(NodeError::Dropped),
            }
        };
        let in_office = || self.lock().epoch == Some(epoch);
        own_proposals::until_done(propose, in_office, &format!("expiring session {session}")).await;
    }

    /// Proposes a Tick when a lock-delay ends, so the waiters it holds back are granted. The
    /// log's clock is the leader's: if this clock is behind it, the Tick is repeated.
    fn arm_lock_delay(self: &Arc<Self>, until_ms: u64) {
        let m = self.clone();
        tokio::spawn(async move {
            let epoch = m.lock().epoch;
            let tick = || async { m.propose_op(None, Op::Tick).await.is_ok() };
            let pending = || async {
                let running = m.node.stale_read(move |s| s.state().lock_delays().any(|(t, _)| t <= until_ms)).await;
                !matches!(running, Ok(false))
            };
            let in_office = || epoch.is_some() && m.lock().epoch == epoch;
            let log_now = || m.stamp().map_or(0, |(now, _)| now);
            own_proposals::end_lock_delay(until_ms, log_now, tick, pending, in_office).await;
        });
    }

    fn on_effects(self: &Arc<Self>, batch: Vec<Effect>) {
        let mut delays = Vec::new();
        {
            let mut g = self.lock();
            if g.epoch.is_none() {
                return;
            }
            for e in batch {
                match e {
                    Effect::LockGranted { session, owner, path, sequencer } => {
                        for tx in g.waiters.remove(&(session, owner, path.clone())).unwrap_or_default() {
                            let _ = tx.send(Ok(sequencer.clone()));
                        }
                        g.notify(&path, EVENT_LOCK_ACQUIRED, None, proto::chubby::event::Kind::LockAcquired(true));
                    }
                    Effect::WaitEnded { session, owner, path, reason } => {
                        for tx in g.waiters.remove(&(session, owner, path.clone())).unwrap_or_default() {
                            let _ = tx.send(Err(StateError::WaitEnded { path: path.clone(), reason: reason.clone() }));
                        }
                    }
                    Effect::LockConflict { path, holders } => {
                        let only: HashSet<SessionId> = holders.into_iter().collect();
                        g.notify(
                            &path,
                            EVENT_CONFLICTING_LOCK,
                            Some(&only),
                            proto::chubby::event::Kind::ConflictingLock(true),
                        );
                    }
                    Effect::LockDelay { until_ms, .. } => delays.push(until_ms),
                    Effect::NodeChanged { path, change } => {
                        use proto::chubby::event::Kind;
                        let (parent, name) = split_parent(&path);
                        match change {
                            Change::ContentsModified | Change::AclChanged => {
                                g.notify(&path, EVENT_CONTENTS, None, Kind::ContentsModified(true))
                            }
                            Change::Created => {
                                g.notify(parent, EVENT_CHILDREN, None, Kind::ChildAdded(name.to_string()))
                            }
                            Change::Deleted => {
                                g.notify(&path, EVENT_CONTENTS, None, Kind::ContentsModified(true));
                                g.notify(parent, EVENT_CHILDREN, None, Kind::ChildRemoved(name.to_string()));
                                g.subs.node_deleted(&path);
                            }
                        }
                    }
                    Effect::SessionEnded { session, expired } => g.forget_session(session, expired),
                }
            }
        }
        for until in delays {
            self.arm_lock_delay(until);
        }
    }

    /// Registers a stream for a session just opened or resumed and grants it a full lease.
    /// A session resumed for the first time since this master took office also gets the
    /// master-failover event, right after its grant (Chubby §2.9: it must flush its cache).
    pub fn attach(&self, session: SessionId, tx: &StreamTx, resumed: bool) -> Result<LeaseGrant, Status> {
        let mut g = self.lock();
        let epoch = g.epoch.ok_or_else(|| Status::unavailable("master stopped serving; retry"))?;
        // A session whose lease ran out here is being expired (its ExpireSession may not have
        // committed yet, so the state still lists it): it must not come back to life with a
        // fresh lease only to be ended a moment later, its client believing in its locks.
        if resumed && g.leases.deadline(session).is_none() {
            return Err(session_lost(session));
        }
        g.streams.insert(session, tx.clone());
        // A resumed session's client reports the gap of its stream's break itself.
        g.events_lost.remove(&session);
        let now = Instant::now();
        g.leases.extend(session, now + self.cfg.lease);
        let lease = self.lease_to_grant(&g, now);
        let failover = g.unflushed.remove(&session) && resumed;
        if resumed {
            g.cache.flushed(session);
        }
        let session_token = crate::state::handle::session_token(&g.key, session);
        let grant = LeaseGrant {
            session,
            lease_ms: lease.as_millis() as u64,
            epoch,
            session_token,
            lost_sessions: Vec::new(),
            full_lease_ms: self.cfg.lease.as_millis() as u64,
        };
        // Queued on the stream under the lock, so nothing can come between the two.
        let _ = tx.try_send(Ok(SessionResponse { kind: Some(session_response::Kind::Lease(grant.clone())) }));
        if failover {
            let _ = tx.try_send(Ok(event(String::new(), proto::chubby::event::Kind::MasterFailover(true))));
        }
        Ok(grant)
    }

    /// KeepAlive on stream `tx`: a fresh full lease for `session` (and `more` sessions of the
    /// same stream), if still alive at this master and attached to this stream. A stream from
    /// before this master's term (it lost and regained leadership meanwhile) is refused, so its
    /// client resumes and is attached again. A session that owes an invalidation ack gets no
    /// extension: the grant names what is left of its lease.
    pub fn keep_alive(&self, session: SessionId, more: &[SessionId], tx: &StreamTx) -> Result<LeaseGrant, Status> {
        let mut g = self.lock();
        let epoch = g.epoch.ok_or_else(|| Status::unavailable("master stopped serving; retry"))?;
        if g.leases.deadline(session).is_none() {
            return Err(session_lost(session));
        }
        let attached = |g: &Inner, s: SessionId| g.streams.get(&s).is_some_and(|t| t.same_channel(tx));
        if !attached(&g, session) {
            return Err(Status::unavailable("this stream is not the session's at this master; resume the session"));
        }
        let now = Instant::now();
        let until = now + self.cfg.lease;
        // What the client is told is capped by this master's confirmed leadership; its own
        // deadlines (when it would expire a session) stay a full lease away.
        let mut shortest = self.lease_to_grant(&g, now);
        let mut lost_sessions = Vec::new();
        for &s in std::iter::once(&session).chain(more) {
            match g.leases.deadline(s) {
                Some(_) if !attached(&g, s) => lost_sessions.push(s),
                Some(d) if g.cache.owes(s) => shortest = shortest.min(d.saturating_duration_since(now)),
                Some(_) => g.leases.extend(s, until),
                None => lost_sessions.push(s),
            }
        }
        if g.events_lost.contains(&session) && tx.try_send(Ok(events_lost())).is_ok() {
            g.events_lost.remove(&session);
        }
        let session_token = crate::state::handle::session_token(&g.key, session);
        Ok(LeaseGrant {
            session,
            lease_ms: shortest.as_millis() as u64,
            epoch,
            session_token,
            lost_sessions,
            full_lease_ms: self.cfg.lease.as_millis() as u64,
        })
    }

    /// A stream ended: forget it for the sessions it carried (their leases keep running).
    pub fn detach(&self, sessions: &HashSet<SessionId>, tx: &StreamTx) {
        let mut g = self.lock();
        for s in sessions {
            if g.streams.get(s).is_some_and(|t| t.same_channel(tx)) {
                g.streams.remove(s);
            }
        }
    }

    /// Subscribes `session` to events of `mask` on `path`, for as long as the handle `token`
    /// is open (see [`events::Subscriptions`]).
    pub fn subscribe(&self, session: SessionId, path: &str, mask: u32, token: &[u8]) {
        self.lock().subs.subscribe(session, path, mask, token);
    }

    /// The handle `token` of `session` on `path` was closed.
    pub fn handle_closed(&self, session: SessionId, path: &str, token: &[u8]) {
        self.lock().subs.closed(session, path, token);
    }

    /// Registers a call that waits for a queued Acquire to be granted.
    pub fn wait_for_grant(
        &self,
        session: SessionId,
        owner: Owner,
        path: &str,
    ) -> oneshot::Receiver<Result<String, StateError>> {
        let (tx, rx) = oneshot::channel();
        self.lock().add_waiter((session, owner, path.to_string()), tx);
        rx
    }

    pub fn ack_invalidation(&self, id: u64, sessions: &HashSet<SessionId>) {
        self.lock().cache.ack(id, sessions);
    }

    /// Called before a read that may be cached; `None` while a write to the node is pending.
    pub fn register_cacher(&self, session: SessionId, path: &str) -> Option<u64> {
        let mut g = self.lock();
        let g = &mut *g;
        let cell = &g.cell_name;
        g.cache.register(session, path, |p| full_path(cell, p), g.streams.get(&session))
    }

    /// After a read registered with `token`: whether its answer may be cached (the read
    /// succeeded, `cacheable` says its node may be cached at all, and no write took the
    /// registration away while it ran). A successful read of a node that may not be cached
    /// (an ephemeral one) withdraws the registration, so writes to it do not wait on this
    /// session. A failed read keeps it: the session may still cache the node from before.
    pub fn settle_cacher<T>(
        &self,
        session: SessionId,
        path: &str,
        token: Option<u64>,
        read: &Result<T, Status>,
        cacheable: impl FnOnce(&T) -> bool,
    ) -> bool {
        let (Some(token), Ok(answer)) = (token, read) else { return false };
        let mut g = self.lock();
        if cacheable(answer) {
            g.cache.still(session, path, token)
        } else {
            g.cache.unregister(session, path, token);
            false
        }
    }

    /// Chubby's cache invalidation before a write to `path` commits: every session that may
    /// cache it is sent an invalidation and the write waits for its ack or the end of its
    /// lease (a session that lets its lease run out without acking is expired, so a cache
    /// that missed the invalidation can no longer be trusted by its client). The node is
    /// uncacheable until the returned guard drops.
    pub async fn begin_write(self: &Arc<Self>, path: &str) -> Result<WriteGuard, Status> {
        self.begin_write_by(path, None).await
    }

    /// [`Master::begin_write`], for a `writer` session that dropped its own copy of the node
    /// (write-through), which needs no invalidation.
    pub async fn begin_write_by(self: &Arc<Self>, path: &str, writer: Option<SessionId>) -> Result<WriteGuard, Status> {
        let (epoch, waits) = {
            let mut g = self.lock();
            let epoch = g.epoch.ok_or_else(|| Status::unavailable("master stopped serving; retry"))?;
            let Inner { cache, streams, leases, unflushed, cell_name, .. } = &mut *g;
            (epoch, cache.begin_write(path, &full_path(cell_name, path), writer, unflushed, streams, leases))
        };
        let guard = WriteGuard { master: self.clone(), path: path.to_string(), epoch };
        for (session, id, deadline, rx) in waits {
            let deadline = tokio::time::Instant::from_std(deadline);
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(())) => {}
                // The channel closed: the session ended (it needs no ack), or this master left
                // office (its invalidations are void; the write must start over).
                Ok(Err(_)) => {
                    if self.lock().epoch != Some(epoch) {
                        return Err(Status::unavailable("the master changed while invalidating caches; retry"));
                    }
                }
                Err(_) => {
                    tracing::warn!(session, path, "no invalidation ack within the session's lease: expiring it");
                    self.lock().cache.give_up(id);
                    self.propose_expiry(session, epoch).await;
                }
            }
        }
        if self.lock().epoch != Some(epoch) {
            return Err(Status::unavailable("the master changed while invalidating caches; retry"));
        }
        Ok(guard)
    }

    /// Proposes `op` for a session call and decodes the answer.
    /// Proposes a write whose caches `guard` invalidated: only in the term that did so (a new
    /// term's master has sessions of its own to invalidate first).
    pub async fn propose_guarded(
        &self,
        request: Option<RequestId>,
        op: Op,
        guard: &WriteGuard,
    ) -> Result<Outcome, NodeError> {
        match self.stamp() {
            Some((now_ms, epoch)) if epoch == guard.epoch => {
                self.propose_at(Entry { now_ms, request, op }, epoch).await
            }
            _ => Err(NodeError::Dropped),
        }
    }

    fn decode_outcome(&self, out: bytes::Bytes) -> Result<Outcome, NodeError> {
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

/// Ends a pending write's "uncacheable" mark (if the master is still in the term that set it).
pub struct WriteGuard {
    master: Arc<Master>,
    path: String,
    epoch: u64,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let mut g = self.master.lock();
        if g.epoch == Some(self.epoch) {
            g.cache.end_write(&self.path);
        }
    }
}

pub fn session_lost(session: SessionId) -> Status {
    let mut s = Status::not_found(format!("session {session} expired or was closed"));
    s.metadata_mut().insert(ERROR_METADATA, tonic::metadata::MetadataValue::from_static("NoSession"));
    s
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
            let why = if expired { "expired" } else { "closed" };
            let _ = tx.try_send(Err(Status::not_found(format!("session {session} {why}"))));
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
