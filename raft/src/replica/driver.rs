//! The replica's loop: it waits for input, peer messages or the next tick, steps what came
//! into the core, and handles one [`Ready`] (see the module documentation of `node`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use super::fault::Fault;
use super::sync::{start_syncer, HeldAck, SyncJob, LEADER_SYNC_DELAY};
use super::{Inbox, Input, Leadership, Membership, ReadFn, ReplicaError, ReplicaOptions, ReplicaStatus, StateMachine};
use crate::error::Error;
use crate::raft::Role;
use crate::raw_node::{RawNode, Ready};
use crate::storage::disk::DiskStorage;
use crate::storage::Storage;
use crate::transport::{Transport, TransportEvent};
use crate::types::{ConfState, EntryKind, Index, ReplicaId, Snapshot, Term};

/// The loop's state, owned by its thread.
pub(super) struct Driver<SM> {
    pub(super) raw: RawNode<DiskStorage>,
    pub(super) sm: SM,
    pub(super) transport: Transport,
    pub(super) opts: ReplicaOptions,
    /// Proposals waiting for their entry to be applied: index -> (term, reply).
    pub(super) pending: HashMap<Index, (Term, oneshot::Sender<Result<Bytes, ReplicaError>>)>,
    /// ReadIndex requests waiting for leadership to be confirmed, by context.
    pub(super) pending_reads: HashMap<u64, ReadFn<SM>>,
    /// Confirmed reads waiting for the state machine to reach their index.
    pub(super) confirmed_reads: Vec<(Index, ReadFn<SM>)>,
    pub(super) next_read: u64,
    pub(super) was_leader: bool,
    pub(super) leadership: watch::Sender<Leadership>,
    /// The membership last published (and whether a change of it was not yet committed
    /// then), and where it is published.
    pub(super) conf: ConfState,
    pub(super) conf_pending: bool,
    pub(super) members: watch::Sender<Membership>,
    /// For background work to report back to the loop.
    pub(super) self_tx: Inbox<SM>,
    pub(super) saving_snapshot: bool,
    /// The thread that syncs the log in the background.
    pub(super) syncer: mpsc::Sender<SyncJob>,
    /// Writes of the log left to the sync thread are numbered: the last one's number, and the
    /// last one known durable (a sync on this thread makes every write durable).
    pub(super) sync_seq: u64,
    pub(super) synced_seq: u64,
    /// A follower's acknowledgements waiting for the sync of the writes before them, oldest first.
    pub(super) held_acks: VecDeque<HeldAck>,
    /// A leader's written but unsynced entries that its followers can commit alone, held back
    /// from the sync thread for up to [`LEADER_SYNC_DELAY`]: the newest job, and when the
    /// oldest entry it covers was written.
    pub(super) held_sync: Option<(SyncJob, Instant)>,
    /// Set when background work failed in a way that must stop the replica.
    pub(super) failed: Option<Fault>,
}

/// A step of the loop that took this long is logged: the loop answers no peer meanwhile, and
/// a stall of a minimum election timeout (150 ms by default) on both followers deposes the
/// leader (it no longer hears from a quorum).
const SLOW: Duration = Duration::from_millis(100);

pub(super) fn warn_if_slow(id: ReplicaId, what: &str, began: Instant) {
    let took = began.elapsed();
    if took >= SLOW {
        tracing::warn!(replica = id, ms = took.as_millis() as u64, "slow disk: {what} took {took:?}");
    }
}

/// The membership `conf` makes, with every member's address: the one its change gave, else
/// the one in `peers` (the options'). Before the log names any voter (a replica waiting to
/// join), the members are `peers`.
pub(super) fn membership(conf: &ConfState, peers: &BTreeMap<ReplicaId, String>) -> Membership {
    if conf.voters.is_empty() {
        return Membership { voters: peers.keys().copied().collect(), learners: Vec::new(), addrs: peers.clone() };
    }
    let addrs = conf
        .voters
        .iter()
        .chain(&conf.learners)
        .filter_map(|id| conf.addrs.get(id).or_else(|| peers.get(id)).map(|a| (*id, a.clone())))
        .filter(|(_, a)| !a.is_empty())
        .collect();
    Membership { voters: conf.voters.clone(), learners: conf.learners.clone(), addrs }
}

/// Where to dial each member: through `dial_via` where given, else at its address.
pub(super) fn dial_addrs(
    addrs: &BTreeMap<ReplicaId, String>,
    dial_via: &BTreeMap<ReplicaId, String>,
) -> BTreeMap<ReplicaId, String> {
    addrs.iter().map(|(id, a)| (*id, dial_via.get(id).unwrap_or(a).clone())).collect()
}

/// Inputs taken per loop turn at most, so a flood cannot starve ticks.
const MAX_BATCH: usize = 4096;

impl<SM: StateMachine> Driver<SM> {
    pub(super) fn new(
        raw: RawNode<DiskStorage>,
        sm: SM,
        transport: Transport,
        opts: ReplicaOptions,
        self_tx: Inbox<SM>,
        leadership: watch::Sender<Leadership>,
        members: watch::Sender<Membership>,
    ) -> Result<Driver<SM>, Fault> {
        let syncer =
            start_syncer(opts.id, self_tx.clone(), opts.slow_disk).map_err(Fault::os("starting the sync thread"))?;
        Ok(Driver {
            // Nothing published yet: the first turn links the members before an uncommitted
            // change too (a restart may find one in the log).
            conf: ConfState::default(),
            conf_pending: false,
            raw,
            sm,
            transport,
            opts,
            pending: HashMap::new(),
            pending_reads: HashMap::new(),
            confirmed_reads: Vec::new(),
            next_read: 0,
            was_leader: false,
            leadership,
            members,
            self_tx,
            saving_snapshot: false,
            syncer,
            held_sync: None,
            sync_seq: 0,
            synced_seq: 0,
            held_acks: VecDeque::new(),
            failed: None,
        })
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Input<SM>>) -> Result<(), Fault> {
        let mut next_tick = Instant::now() + self.opts.tick;
        self.transport.net.maintain(Instant::now());
        // Work left over from the last turn (a full batch, a connection not read to the end):
        // look again without sleeping.
        let mut more = false;
        loop {
            let wake_at = match &self.held_sync {
                Some((_, since)) => next_tick.min(*since + LEADER_SYNC_DELAY),
                None => next_tick,
            };
            let mut wait = if more { Duration::ZERO } else { wake_at.saturating_duration_since(Instant::now()) };
            let mut first = None;
            if !wait.is_zero() {
                first = self.self_tx.going_to_sleep(&rx);
                if first.is_some() {
                    wait = Duration::ZERO;
                }
            }
            self.transport.net.poll(wait).map_err(Fault::os("polling peer links"))?;
            self.self_tx.awake();
            let mut stop = false;
            more = true;
            for _ in 0..MAX_BATCH {
                match first.take().map_or_else(|| rx.try_recv(), Ok) {
                    Ok(input) => stop |= self.handle(input),
                    Err(_) => {
                        more = false;
                        break;
                    }
                }
            }
            if stop {
                return self.shutdown();
            }
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            // A write or sync of the log failed, on this thread or another (the sync thread, or
            // compaction's): the kernel reports such an error to one sync only, so a later sync
            // here could succeed without the lost pages. Nothing more is acknowledged.
            if let Some(why) = self.raw.storage().log_failure() {
                return Err(Fault::LogFailed(why.to_string()));
            }
            let raw = &mut self.raw;
            self.transport.net.process(&mut |m| raw.step(m));
            // Before anything is sent: a member just added must have its link.
            self.sync_members();
            more |= self.transport.net.has_unfinished();
            for to in self.transport.net.take_unreachable() {
                self.raw.report_unreachable(to);
            }
            if Instant::now() >= next_tick {
                self.raw.tick();
                next_tick += self.opts.tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + self.opts.tick; // fell behind: do not burst ticks
                }
                self.transport.net.maintain(Instant::now());
                self.raw.storage_mut().sync_if_due().map_err(Fault::log("syncing the log"))?;
            }
            if self.raw.has_ready() {
                self.handle_ready()?;
                // More committed entries than one Ready hands out: go on without sleeping.
                more |= self.raw.has_ready();
            }
            self.release_held_sync()?;
            self.transport.net.flush();
        }
    }

    /// Follows a change of membership (by an entry appended or cut, or a snapshot): links to
    /// the members as they are now, and publishes them.
    fn sync_members(&mut self) {
        let pending = self.raw.latest_conf_index() > self.raw.committed();
        if self.raw.latest_conf() == &self.conf && pending == self.conf_pending {
            return;
        }
        self.conf = self.raw.latest_conf().clone();
        self.conf_pending = pending;
        let members = membership(&self.conf, &self.opts.peers);
        // Until a change commits, the members before it stay linked too: a leader that
        // removes itself must still hear the acknowledgements that commit its removal.
        let mut linked = members.addrs.clone();
        if pending {
            if let Some(before) = self.raw.conf_state_at(self.raw.committed()) {
                for (id, addr) in membership(&before, &self.opts.peers).addrs {
                    linked.entry(id).or_insert(addr);
                }
            }
        }
        tracing::info!(
            replica = self.opts.id,
            voters = ?members.voters,
            learners = ?members.learners,
            addrs = ?members.addrs,
            "membership changed"
        );
        let dial = dial_addrs(&linked, &self.opts.dial_via);
        self.transport.set_peers(dial, linked);
        self.members.send_replace(members);
    }

    fn shutdown(mut self) -> Result<(), Fault> {
        self.raw.storage_mut().sync().map_err(Fault::log("syncing the log at shutdown"))?;
        for (_, (_, reply)) in self.pending.drain() {
            let _ = reply.send(Err(ReplicaError::Stopped));
        }
        Ok(())
    }

    /// Answers a proposal's caller when its entry commits (kept under its index), or now if
    /// the core refused it.
    fn await_commit(&mut self, proposed: Result<Index, Error>, reply: oneshot::Sender<Result<Bytes, ReplicaError>>) {
        match proposed {
            Ok(index) => {
                // An older proposal at this index was cut from the log when this node lost
                // and regained leadership: it can no longer commit.
                if let Some((_, old)) = self.pending.insert(index, (self.raw.term(), reply)) {
                    let _ = old.send(Err(ReplicaError::Dropped));
                }
            }
            Err(e) => {
                let _ = reply.send(Err(match e {
                    Error::NotLeader { leader } => ReplicaError::NotLeader { leader },
                    e => ReplicaError::Raft(e),
                }));
            }
        }
    }

    /// Steps one input into the core; returns true on Stop.
    fn handle(&mut self, input: Input<SM>) -> bool {
        match input {
            Input::Step(m) => self.raw.step(m),
            Input::Propose { term: Some(t), reply, .. } if t != self.raw.term() => {
                let _ = reply.send(Err(ReplicaError::Dropped));
            }
            Input::Propose { data, reply, .. } => {
                let proposed = self.raw.propose(data);
                self.await_commit(proposed, reply);
            }
            Input::Read { run } => {
                if self.raw.role() != Role::Leader {
                    run(Err(ReplicaError::NotLeader { leader: self.raw.leader_id() }));
                } else {
                    self.next_read += 1;
                    let ctx = self.next_read;
                    match self.raw.read_index(Bytes::copy_from_slice(&ctx.to_le_bytes())) {
                        Ok(()) => {
                            self.pending_reads.insert(ctx, run);
                        }
                        Err(e) => run(Err(ReplicaError::Raft(e))),
                    }
                }
            }
            Input::StaleRead { run } => run(Ok(&self.sm)),
            Input::Status { reply } => {
                let s = self.raw.storage();
                let _ = reply.send(ReplicaStatus {
                    raft: self.raw.status(),
                    conf_index: self.raw.latest_conf_index(),
                    snapshot_index: s.snapshot_meta().index,
                    first_index: s.first_index(),
                    wal_segments: s.wal_segments(),
                });
            }
            Input::ConfChange { cc, addr, reply } => {
                let proposed = self.raw.propose_conf_change_with_addr(cc, addr.as_deref());
                self.await_commit(proposed, reply);
            }
            Input::TransferLeader { to } => {
                if let Err(e) = self.raw.transfer_leader(to) {
                    tracing::info!(replica = self.opts.id, to, "leader transfer refused: {e}");
                }
            }
            Input::Transport(TransportEvent::Unreachable(to)) => self.raw.report_unreachable(to),
            Input::Transport(TransportEvent::SnapshotDone { to, ok }) => self.raw.report_snapshot(to, ok),
            Input::PeerConn(stream, tls, identity) => self.transport.net.add_inbound(stream, tls, identity),
            Input::Synced { index, term, seq, result } => match result {
                Ok(()) => {
                    self.synced_seq = self.synced_seq.max(seq);
                    self.raw.on_synced(index, term);
                    self.release_acks();
                }
                Err(e) => self.failed = Some(e),
            },
            Input::SnapshotSaved(result) => {
                self.saving_snapshot = false;
                match result {
                    Ok(snap) => {
                        let index = snap.meta.index;
                        let began = Instant::now();
                        let compacted = self.raw.storage_mut().compact_saved(snap);
                        warn_if_slow(self.opts.id, "compacting the log", began);
                        if let Err(e) = compacted {
                            // Not fatal: the snapshot file is durable, the log is only longer.
                            tracing::error!(replica = self.opts.id, index, "compacting the log: {e}");
                        } else {
                            tracing::info!(replica = self.opts.id, index, "snapshot saved, log compacted");
                        }
                    }
                    Err(e) => tracing::error!(replica = self.opts.id, "{e}"),
                }
            }
            Input::Stop => return true,
        }
        false
    }

    fn handle_ready(&mut self) -> Result<(), Fault> {
        let mut rd: Ready = self.raw.ready();
        if let Some(ss) = &rd.soft_state {
            tracing::info!(replica = self.opts.id, role = ?ss.role, leader = ss.leader_id, term = self.raw.term(), "role changed");
            let leader = ss.role == Role::Leader;
            // Published first: whoever hears below that it lost its answer sees the new role.
            self.leadership.send_replace(Leadership {
                role: Some(ss.role),
                leader_id: ss.leader_id,
                term: self.raw.term(),
            });
            if self.was_leader && !leader {
                for (_, run) in self.pending_reads.drain() {
                    run(Err(ReplicaError::NotLeader { leader: ss.leader_id }));
                }
                // A proposal not known to be committed may still commit through the next
                // leader, or be overwritten by it; which, this replica may learn only when (if
                // ever) its log reaches that index, so its proposer is told now that the
                // outcome is unknown, rather than left waiting.
                let committed = self.raw.committed();
                let undecided: Vec<Index> = self.pending.keys().copied().filter(|&i| i > committed).collect();
                for i in undecided {
                    if let Some((_, reply)) = self.pending.remove(&i) {
                        let _ = reply.send(Err(ReplicaError::Unknown));
                    }
                }
            }
            self.was_leader = leader;
        }
        for m in std::mem::take(&mut rd.messages) {
            self.transport.send(m);
        }
        // Out before the sync, so followers write their copies while this one does.
        self.transport.net.flush();
        let deferred = self.defer_sync(&rd);
        if deferred {
            let target = self
                .raw
                .storage_mut()
                .persist_deferred(&rd.entries, rd.hard_state)
                .map_err(Fault::log("persisting"))?;
            let last = rd.entries.last().expect("deferred only with entries");
            self.sync_seq += 1;
            let job = SyncJob { target, index: last.index, term: last.term, seq: self.sync_seq };
            if self.raw.role() == Role::Leader {
                let since = self.held_sync.take().map_or_else(Instant::now, |(_, since)| since);
                self.held_sync = Some((job, since));
            } else {
                self.syncer.send(job).map_err(|_| Fault::SyncThreadStopped)?;
                // While the sync thread wakes up, the device already gets the data; the sync
                // then mostly waits for the cache flush.
                // Not on a leader, which holds its sync back to cover several writes at once.
                let began = Instant::now();
                self.raw.storage_mut().start_writeback();
                warn_if_slow(self.opts.id, "starting the log's write-back", began);
            }
        } else {
            // A former leader's log may hold entries it wrote but never synced. It acknowledges
            // nothing before that is fixed: the first message it answers from any other leader
            // or candidate has a higher term, and a term change syncs (`must_sync`), which
            // covers everything written before.
            let began = Instant::now();
            self.raw
                .storage_mut()
                .persist(rd.snapshot.as_ref(), &rd.entries, rd.hard_state, rd.must_sync)
                .map_err(Fault::log("persisting"))?;
            warn_if_slow(self.opts.id, "writing the log", began);
            if self.raw.storage().can_defer_sync() && (rd.must_sync || rd.snapshot.is_some()) {
                // That was a sync here: every write so far is durable.
                self.synced_seq = self.sync_seq;
            }
        }
        if let Some(why) = self.raw.storage().log_failure() {
            return Err(Fault::LogFailed(why.to_string()));
        }
        self.release_acks();
        for m in std::mem::take(&mut rd.persisted_messages) {
            self.send_persisted(m);
        }
        self.transport.net.flush();
        if let Some(snap) = &rd.snapshot {
            self.sm.restore(&snap.data).map_err(|reason| Fault::Restore { index: snap.meta.index, reason })?;
            tracing::info!(
                replica = self.opts.id,
                index = snap.meta.index,
                "state restored from the leader's snapshot"
            );
            let covered: Vec<Index> = self.pending.keys().copied().filter(|&i| i <= snap.meta.index).collect();
            for i in covered {
                if let Some((_, reply)) = self.pending.remove(&i) {
                    let _ = reply.send(Err(ReplicaError::Unknown));
                }
            }
        }
        let mut applied = None;
        for e in &rd.committed_entries {
            let waiting = self.pending.remove(&e.index);
            let answer = waiting.as_ref().is_some_and(|(term, _)| *term == e.term);
            let result = match e.kind {
                EntryKind::Normal if !e.data.is_empty() => {
                    self.sm.apply(e.index, &e.data, answer).map_err(|reason| Fault::Apply { index: e.index, reason })?
                }
                _ => Bytes::new(),
            };
            if let Some((term, reply)) = waiting {
                let _ = reply.send(if term == e.term { Ok(result) } else { Err(ReplicaError::Dropped) });
            }
            applied = Some(e.index);
        }
        if applied.is_some() {
            self.sm.after_applying();
        }
        for rs in std::mem::take(&mut rd.read_states) {
            let ctx = rs.context.as_ref().try_into().map(u64::from_le_bytes).unwrap_or(0);
            if let Some(run) = self.pending_reads.remove(&ctx) {
                self.confirmed_reads.push((rs.index, run));
            }
        }
        if deferred {
            self.raw.advance_unsynced(&rd);
        } else {
            self.raw.advance(&rd);
        }
        let applied_now = self.raw.applied();
        if !self.confirmed_reads.is_empty() {
            let (ready, waiting): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.confirmed_reads).into_iter().partition(|(i, _)| *i <= applied_now);
            self.confirmed_reads = waiting;
            for (_, run) in ready {
                run(Ok(&self.sm));
            }
        }
        if let Some(index) = applied {
            self.maybe_snapshot(index)?;
        }
        Ok(())
    }

    /// Every `snapshot_entries` applied entries: takes the state machine's copy here (it must
    /// be consistent with `applied`), and encodes and writes it on a background thread, so a
    /// large state's encoding, write and fsync never stall heartbeats (a stall of an election
    /// timeout would depose the leader); the log is compacted when the file is durable.
    fn maybe_snapshot(&mut self, applied: Index) -> Result<(), Fault> {
        let snap_index = self.raw.storage().snapshot_meta().index;
        if self.saving_snapshot || applied < snap_index + self.opts.snapshot_entries {
            return Ok(());
        }
        let Some(conf) = self.raw.conf_state_at(applied) else { return Ok(()) };
        let meta = self
            .raw
            .storage()
            .snapshot_meta_at(applied, conf)
            .map_err(|error| Fault::Storage { doing: format!("snapshot at {applied}"), error })?;
        let encode = self.sm.snapshot();
        let files = self.raw.storage().snapshot_files();
        let tx = self.self_tx.clone();
        self.saving_snapshot = true;
        std::thread::Builder::new()
            .name(format!("snapshot-{}", self.opts.id))
            .spawn(move || {
                // The answer is sent even if the encoder panics, or snapshots would stop for good
                // (`saving_snapshot` stays set) and the log would grow without end.
                let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let snap = Snapshot { meta, data: encode() };
                    files.save(&snap).map(|()| snap).map_err(Fault::log("saving a snapshot"))
                }));
                let result = saved.unwrap_or_else(|_| Err(Fault::EncoderPanicked));
                let _ = tx.send(Input::SnapshotSaved(result));
            })
            .map_err(Fault::os("starting the snapshot thread"))?;
        Ok(())
    }
}
