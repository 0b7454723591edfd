//! The application's handle on the core: inputs (tick, step, propose, …) and the
//! [`Ready`]/[`RawNode::advance`] loop that hands out what must be persisted, sent and applied.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::config::Config;
use crate::error::Error;
use crate::progress::Progress;
use crate::raft::{Raft, Role, SoftState};
use crate::read_only::ReadState;
use crate::storage::Storage;
use crate::types::{ConfChange, ConfState, Entry, HardState, Index, Message, ReplicaId, Snapshot, Term};

/// Everything the application must do after the core changed. In this order:
///
/// 1. send `messages` (allowed before persisting: they are a leader's, see below);
/// 2. install `snapshot` if any, append `entries` to the log (replacing any suffix they
///    overlap) and store `hard_state` if any — durably when `must_sync`;
/// 3. send `persisted_messages` (votes, acknowledgements: they promise what step 2 stored);
/// 4. apply `committed_entries` in order and serve `read_states` once applied that far;
/// 5. call [`RawNode::advance`] with this Ready.
#[derive(Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub hard_state: Option<HardState>,
    pub read_states: Vec<ReadState>,
    pub entries: Vec<Entry>,
    pub snapshot: Option<Snapshot>,
    pub committed_entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    /// Entries or term/vote changed: they must be on stable storage before step 3.
    pub must_sync: bool,
}

/// A snapshot of the node's state for `status` commands and tests.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: ReplicaId,
    pub term: Term,
    pub vote: ReplicaId,
    pub role: Role,
    pub leader_id: ReplicaId,
    pub commit: Index,
    pub applied: Index,
    pub last_index: Index,
    pub persisted: Index,
    pub conf_state: ConfState,
    /// The leader's view of every member; empty on other nodes.
    pub progress: BTreeMap<ReplicaId, Progress>,
    pub lead_transferee: ReplicaId,
}

/// A Raft node driven by the application. See the crate documentation.
pub struct RawNode<S: Storage> {
    raft: Raft<S>,
    prev_soft: SoftState,
    prev_hard: HardState,
}

impl<S: Storage> RawNode<S> {
    /// Starts a node from what `storage` holds (empty for a new member, whose membership
    /// arrives with the leader's log or snapshot).
    pub fn new(config: &Config, storage: S) -> Result<RawNode<S>, Error> {
        let raft = Raft::new(config, storage)?;
        let prev_hard = HardState { term: raft.term, vote: raft.vote, commit: raft.log.committed };
        let prev_soft = SoftState { leader_id: raft.leader_id, role: raft.role };
        Ok(RawNode { raft, prev_soft, prev_hard })
    }

    /// Advances the logical clock by one tick.
    pub fn tick(&mut self) {
        self.raft.tick();
    }

    /// Feeds a message from a peer. Messages for another node, or from an older term, are
    /// dropped (answered where the protocol needs it).
    pub fn step(&mut self, m: Message) {
        self.raft.step(m);
    }

    /// Campaigns now instead of waiting for the election timeout (tests, operator commands).
    pub fn campaign(&mut self) {
        self.raft.hup(false);
    }

    /// Appends `data` to the leader's log; returns its index. The entry is committed once it
    /// shows up in [`Ready::committed_entries`], and may be lost if leadership changes first.
    pub fn propose(&mut self, data: Bytes) -> Result<Index, Error> {
        self.raft.propose(data)
    }

    /// Proposes a single-server membership change; returns its entry's index.
    pub fn propose_conf_change(&mut self, cc: ConfChange) -> Result<Index, Error> {
        self.raft.propose_conf_change(cc, None)
    }

    /// As [`RawNode::propose_conf_change`], with the address of the member added (kept in
    /// [`ConfState::addrs`]).
    pub fn propose_conf_change_with_addr(&mut self, cc: ConfChange, addr: Option<&str>) -> Result<Index, Error> {
        self.raft.propose_conf_change(cc, addr)
    }

    /// The membership in force: the latest configuration in the log, committed or not
    /// (changes take effect when appended).
    pub fn latest_conf(&self) -> &ConfState {
        self.raft.confs.latest()
    }

    /// Index of the entry that introduced [`RawNode::latest_conf`].
    pub fn latest_conf_index(&self) -> Index {
        self.raft.confs.latest_index()
    }

    /// Asks for a linearizable read point; the answer is a [`ReadState`] with this `context`.
    pub fn read_index(&mut self, context: Bytes) -> Result<(), Error> {
        self.raft.read_index(context)
    }

    /// Hands leadership to `to` (the leader only).
    pub fn transfer_leader(&mut self, to: ReplicaId) -> Result<(), Error> {
        self.raft.transfer_leader(to)
    }

    /// The transport reports the outcome of sending a snapshot to `to`.
    pub fn report_snapshot(&mut self, to: ReplicaId, success: bool) {
        self.raft.report_snapshot(to, success);
    }

    /// The transport could not deliver to `to`.
    pub fn report_unreachable(&mut self, to: ReplicaId) {
        self.raft.report_unreachable(to);
    }

    fn flush_pending(&mut self) {
        if self.raft.pending_bcast {
            self.raft.pending_bcast = false;
            if self.raft.role == Role::Leader {
                self.raft.bcast_append();
            }
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState { leader_id: self.raft.leader_id, role: self.raft.role }
    }

    fn hard_state(&self) -> HardState {
        HardState { term: self.raft.term, vote: self.raft.vote, commit: self.raft.log.committed }
    }

    pub fn has_ready(&self) -> bool {
        let r = &self.raft;
        r.pending_bcast
            || self.soft_state() != self.prev_soft
            || self.hard_state() != self.prev_hard
            || !r.log.unstable.entries.is_empty()
            || r.log.unstable.snapshot.is_some()
            || r.log.has_next_committed()
            || !r.msgs.is_empty()
            || !r.msgs_after_persist.is_empty()
            || !r.read_states.is_empty()
    }

    /// What to persist, send and apply now. Call [`RawNode::advance`] before the next `ready`.
    pub fn ready(&mut self) -> Ready {
        self.flush_pending();
        let soft = self.soft_state();
        let hard = self.hard_state();
        let r = &mut self.raft;
        let rd = Ready {
            soft_state: (soft != self.prev_soft).then_some(soft),
            hard_state: (hard != self.prev_hard).then_some(hard),
            read_states: std::mem::take(&mut r.read_states),
            entries: r.log.unstable.entries.clone(),
            snapshot: r.log.unstable.snapshot.clone(),
            committed_entries: r.next_committed_entries(),
            messages: std::mem::take(&mut r.msgs),
            persisted_messages: std::mem::take(&mut r.msgs_after_persist),
            must_sync: false,
        };
        let must_sync = !rd.entries.is_empty()
            || rd.snapshot.is_some()
            || hard.term != self.prev_hard.term
            || hard.vote != self.prev_hard.vote;
        self.prev_soft = soft;
        self.prev_hard = hard;
        Ready { must_sync, ..rd }
    }

    /// The application persisted, sent and applied `rd` as [`Ready`] describes.
    pub fn advance(&mut self, rd: &Ready) {
        let r = &mut self.raft;
        if let Some(s) = &rd.snapshot {
            r.log.stable_snap_to(s.meta.index);
        }
        if let Some(e) = rd.entries.last() {
            r.log.stable_to(e.index, e.term);
            r.on_persisted(e.index, e.term);
        }
        if let Some(e) = rd.committed_entries.last() {
            r.log.applied_to(e.index);
        }
        r.confs.fold_to(r.log.applied);
    }

    /// As [`RawNode::advance`], for entries in `rd` that were written but are still being
    /// synced: a leader does not count itself for them until [`RawNode::on_synced`] (a
    /// follower's acknowledgements wait for the sync in the application).
    pub fn advance_unsynced(&mut self, rd: &Ready) {
        let r = &mut self.raft;
        if let Some(e) = rd.entries.last() {
            r.log.stable_to(e.index, e.term);
        }
        if let Some(e) = rd.committed_entries.last() {
            r.log.applied_to(e.index);
        }
        r.confs.fold_to(r.log.applied);
    }

    /// The log up to `index` (of `term`) is durable: a leader may now count itself for it.
    pub fn on_synced(&mut self, index: Index, term: Term) {
        self.raft.on_persisted(index, term);
    }

    /// Whether this leader's followers that are in step form a majority without it, so its
    /// own copy of new entries need not be synced for them to commit.
    pub fn followers_form_quorum(&self) -> bool {
        self.raft.role == Role::Leader && self.raft.prs.followers_form_quorum(self.raft.id)
    }

    /// The membership in force after applying the entry at `index`, for the metadata of a
    /// snapshot taken there (`None` if `index` is below the last one applied).
    pub fn conf_state_at(&self, index: Index) -> Option<ConfState> {
        self.raft.confs.at(index)
    }

    pub fn role(&self) -> Role {
        self.raft.role
    }

    pub fn term(&self) -> Term {
        self.raft.term
    }

    /// The index of the last entry handed out for applying (and advanced past).
    pub fn applied(&self) -> Index {
        self.raft.log.applied
    }

    /// The highest index this replica knows to be committed.
    pub fn committed(&self) -> Index {
        self.raft.log.committed
    }

    pub fn leader_id(&self) -> ReplicaId {
        self.raft.leader_id
    }

    pub fn status(&self) -> Status {
        let r = &self.raft;
        Status {
            id: r.id,
            term: r.term,
            vote: r.vote,
            role: r.role,
            leader_id: r.leader_id,
            commit: r.log.committed,
            applied: r.log.applied,
            last_index: r.log.last_index(),
            persisted: r.log.persisted(),
            conf_state: r.confs.latest().clone(),
            progress: if r.role == Role::Leader { r.prs.progress.clone() } else { BTreeMap::new() },
            lead_transferee: r.lead_transferee,
        }
    }

    pub fn storage(&self) -> &S {
        &self.raft.log.store
    }

    /// The application writes what a [`Ready`] hands out through this.
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.raft.log.store
    }

    /// The term of the entry at `index`, if the log still has it.
    pub fn term_at(&self, index: Index) -> Option<Term> {
        self.raft.log.term(index).ok()
    }
}
