//! The Raft state machine: roles, terms, the term rules every message passes through, and the
//! dispatch to the per-role handlers in `election.rs`, `replication.rs`, `read_only.rs` and
//! `confchange.rs`.

use bytes::Bytes;

use crate::confchange::ConfigHistory;
use crate::config::Config;
use crate::error::Error;
use crate::raft_log::RaftLog;
use crate::read_only::{ReadOnly, ReadState};
use crate::rng::Rng;
use crate::storage::Storage;
use crate::tracker::ProgressTracker;
use crate::types::{Entry, EntryKind, Index, Message, MessageBody, ReplicaId, Term};

/// A node's role (§5.1, plus the pre-vote phase of thesis §9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state worth reporting to the application when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader_id: ReplicaId,
    pub role: Role,
}

/// Bytes of committed entries handed out per [`crate::Ready`].
const MAX_COMMITTED_SIZE_PER_READY: usize = 64 << 20;

pub(crate) struct Raft<S> {
    pub(crate) id: ReplicaId,
    pub(crate) term: Term,
    pub(crate) vote: ReplicaId,
    pub(crate) role: Role,
    pub(crate) leader_id: ReplicaId,
    pub(crate) log: RaftLog<S>,
    pub(crate) prs: ProgressTracker,
    pub(crate) confs: ConfigHistory,
    /// Messages that may leave before this node persists its Ready (the leader's).
    pub(crate) msgs: Vec<Message>,
    /// Messages that must wait until the Ready's entries and hard state are persisted: votes,
    /// acknowledgements, and every request a non-leader makes.
    pub(crate) msgs_after_persist: Vec<Message>,
    pub(crate) read_states: Vec<ReadState>,
    pub(crate) read_only: ReadOnly,
    /// ReadIndex requests that arrived before the leader committed an entry of its term.
    pub(crate) pending_read_index: Vec<(ReplicaId, Bytes)>,
    pub(crate) election_elapsed: u64,
    pub(crate) heartbeat_elapsed: u64,
    pub(crate) randomized_election_timeout: u64,
    pub(crate) election_tick: u64,
    pub(crate) heartbeat_tick: u64,
    pub(crate) max_size_per_msg: usize,
    pub(crate) pre_vote: bool,
    pub(crate) check_quorum: bool,
    /// The node leadership is being handed to, or 0.
    pub(crate) lead_transferee: ReplicaId,
    /// The leader appended entries (or learned of a commit) and owes followers an
    /// AppendEntries; sent once per Ready so many proposals share one message.
    pub(crate) pending_bcast: bool,
    rng: Rng,
}

impl<S: Storage> Raft<S> {
    pub(crate) fn new(cfg: &Config, store: S) -> Result<Raft<S>, Error> {
        cfg.validate()?;
        let (hs, base_conf) = store.initial_state()?;
        let snapshot_index = store.first_index() - 1;
        let log = RaftLog::new(store, hs.commit, cfg.applied);
        // Membership is whatever the latest configuration entry in the log says (thesis §4.1),
        // so scan the log after the snapshot for configuration entries.
        let mut confs = ConfigHistory::new(snapshot_index, base_conf);
        let (mut next, last) = (log.first_index(), log.last_index());
        while next <= last {
            let chunk = log.slice(next, last + 1, 8 << 20)?;
            let Some(tail) = chunk.last() else { break };
            next = tail.index + 1;
            confs.append(&chunk);
        }
        let mut raft = Raft {
            id: cfg.id,
            term: hs.term,
            vote: hs.vote,
            role: Role::Follower,
            leader_id: 0,
            log,
            prs: ProgressTracker::new(cfg.max_inflight_msgs),
            confs,
            msgs: Vec::new(),
            msgs_after_persist: Vec::new(),
            read_states: Vec::new(),
            read_only: ReadOnly::default(),
            pending_read_index: Vec::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_election_timeout: cfg.election_tick,
            election_tick: cfg.election_tick,
            heartbeat_tick: cfg.heartbeat_tick,
            max_size_per_msg: cfg.max_size_per_msg,
            pre_vote: cfg.pre_vote,
            check_quorum: cfg.check_quorum,
            lead_transferee: 0,
            pending_bcast: false,
            rng: Rng::new(cfg.seed ^ cfg.id.rotate_left(32)),
        };
        let conf = raft.confs.latest().clone();
        raft.prs.set_conf(&conf, raft.log.last_index() + 1);
        raft.become_follower(hs.term, 0);
        Ok(raft)
    }

    // ---- sending -------------------------------------------------------------------------

    /// Queues a message. A leader's messages may go out before its own Ready is persisted (its
    /// term is already on disk and it counts itself for commitment only once persisted); all
    /// others wait until the Ready is persisted.
    pub(crate) fn send(&mut self, to: ReplicaId, term: Term, body: MessageBody) {
        let m = Message { from: self.id, to, term, body };
        if self.role == Role::Leader {
            self.msgs.push(m);
        } else {
            self.msgs_after_persist.push(m);
        }
    }

    // ---- role changes ----------------------------------------------------------------------

    fn reset(&mut self, term: Term) {
        if self.term != term {
            self.term = term;
            self.vote = 0;
        }
        self.leader_id = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.randomized_election_timeout = self.rng.range(self.election_tick, 2 * self.election_tick);
        self.lead_transferee = 0;
        self.prs.reset_votes();
        self.prs.reset_progress(self.id, self.log.last_index(), self.log.persisted());
        self.read_only = ReadOnly::default();
        self.pending_read_index.clear();
        self.pending_bcast = false;
    }

    pub(crate) fn become_follower(&mut self, term: Term, leader_id: ReplicaId) {
        self.reset(term);
        self.leader_id = leader_id;
        self.role = Role::Follower;
    }

    /// A pre-candidate changes neither its term nor its vote (thesis §9.6).
    pub(crate) fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.prs.reset_votes();
        self.leader_id = 0;
    }

    pub(crate) fn become_candidate(&mut self) {
        self.reset(self.term + 1);
        self.vote = self.id;
        self.role = Role::Candidate;
    }

    pub(crate) fn become_leader(&mut self) {
        self.reset(self.term);
        self.leader_id = self.id;
        self.role = Role::Leader;
        if let Some(pr) = self.prs.progress.get_mut(&self.id) {
            pr.become_replicate();
        }
        tracing::info!(replica = self.id, term = self.term, "became leader");
        // A no-op of the new term lets the leader commit what earlier terms left (§5.4.2, §8).
        self.append_entry(EntryKind::Normal, Bytes::new());
    }

    // ---- clock ---------------------------------------------------------------------------

    pub(crate) fn tick(&mut self) {
        if self.role == Role::Leader {
            self.tick_heartbeat();
        } else {
            self.tick_election();
        }
    }

    fn tick_election(&mut self) {
        self.election_elapsed += 1;
        if self.promotable() && self.election_elapsed >= self.randomized_election_timeout {
            self.election_elapsed = 0;
            self.hup(false);
        }
    }

    fn tick_heartbeat(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.election_tick {
            self.election_elapsed = 0;
            if self.check_quorum {
                if !self.prs.quorum_active(self.id) {
                    tracing::info!(replica = self.id, term = self.term, "lost contact with a quorum; stepping down");
                    self.become_follower(self.term, 0);
                    return;
                }
                self.prs.reset_recent_active(self.id);
            }
            // A transfer that did not finish within an election timeout is abandoned.
            self.lead_transferee = 0;
        }
        if self.heartbeat_elapsed >= self.heartbeat_tick {
            self.heartbeat_elapsed = 0;
            self.bcast_heartbeat();
        }
    }

    /// A voter with no snapshot waiting to be installed may campaign.
    pub(crate) fn promotable(&self) -> bool {
        self.prs.is_voter(self.id) && self.log.unstable.snapshot.is_none()
    }

    // ---- messages ------------------------------------------------------------------------

    pub(crate) fn step(&mut self, m: Message) {
        if m.to != self.id {
            return;
        }
        if m.term > self.term {
            if let MessageBody::RequestVote { leader_transfer, .. } = m.body {
                // Thesis §4.2.3 / §9.6: a node that heard from a live leader within the minimum
                // election timeout ignores vote requests, so a rejoining or removed node cannot
                // disrupt a healthy leader. A transfer (TimeoutNow) is exempt.
                let in_lease = self.check_quorum && self.leader_id != 0 && self.election_elapsed < self.election_tick;
                if in_lease && !leader_transfer {
                    return;
                }
            }
            match &m.body {
                // Pre-votes never change terms: neither the request nor a granting answer.
                MessageBody::RequestVote { pre_vote: true, .. } => {}
                MessageBody::RequestVoteResponse { pre_vote: true, reject: false } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => self.become_follower(m.term, m.from),
                _ => self.become_follower(m.term, 0),
            }
        } else if m.term < self.term {
            match &m.body {
                // A stale leader (say, back from a partition) would otherwise never learn the
                // new term when its followers ignore its messages under check-quorum/pre-vote.
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. }
                    if self.check_quorum || self.pre_vote =>
                {
                    let body =
                        MessageBody::AppendEntriesResponse { reject: true, index: 0, reject_hint: 0, hint_term: 0 };
                    self.send(m.from, self.term, body);
                }
                // Tell a pre-candidate that it is behind, so it stops probing.
                MessageBody::RequestVote { pre_vote: true, .. } => {
                    self.send(m.from, self.term, MessageBody::RequestVoteResponse { pre_vote: true, reject: true });
                }
                _ => {}
            }
            return;
        }

        if let MessageBody::RequestVote { .. } = m.body {
            self.handle_vote_request(m);
            return;
        }
        match self.role {
            Role::Leader => self.step_leader(m),
            Role::PreCandidate | Role::Candidate => self.step_candidate(m),
            Role::Follower => self.step_follower(m),
        }
    }

    fn step_leader(&mut self, m: Message) {
        match m.body {
            MessageBody::AppendEntriesResponse { .. } => self.handle_append_response(m),
            MessageBody::HeartbeatResponse { read_context } => self.handle_heartbeat_response(m.from, read_context),
            MessageBody::ReadIndexRequest { context } => self.leader_read_index(m.from, context),
            _ => {}
        }
    }

    fn step_candidate(&mut self, m: Message) {
        match m.body {
            MessageBody::AppendEntries { .. } => {
                self.become_follower(self.term, m.from);
                self.handle_append_entries(m);
            }
            MessageBody::Heartbeat { .. } => {
                self.become_follower(self.term, m.from);
                self.handle_heartbeat(m);
            }
            MessageBody::InstallSnapshot { .. } => {
                self.become_follower(self.term, m.from);
                self.handle_snapshot(m);
            }
            MessageBody::RequestVoteResponse { pre_vote, reject } if pre_vote == (self.role == Role::PreCandidate) => {
                self.poll(m.from, !reject);
            }
            _ => {}
        }
    }

    fn step_follower(&mut self, m: Message) {
        match m.body {
            MessageBody::AppendEntries { .. } => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_append_entries(m);
            }
            MessageBody::Heartbeat { .. } => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_heartbeat(m);
            }
            MessageBody::InstallSnapshot { .. } => {
                self.election_elapsed = 0;
                self.leader_id = m.from;
                self.handle_snapshot(m);
            }
            MessageBody::TimeoutNow => {
                tracing::info!(replica = self.id, term = self.term, from = m.from, "TimeoutNow: campaigning");
                self.hup(true);
            }
            MessageBody::ReadIndexResponse { context, index } => {
                self.read_states.push(ReadState { index, context });
            }
            _ => {}
        }
    }

    // ---- proposals -----------------------------------------------------------------------

    pub(crate) fn propose(&mut self, data: Bytes) -> Result<Index, Error> {
        self.check_can_propose()?;
        Ok(self.append_entry(EntryKind::Normal, data))
    }

    pub(crate) fn check_can_propose(&self) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { leader: self.leader_id });
        }
        if self.lead_transferee != 0 {
            return Err(Error::TransferInProgress { to: self.lead_transferee });
        }
        Ok(())
    }

    /// Appends one entry of the current term to the leader's log.
    pub(crate) fn append_entry(&mut self, kind: EntryKind, data: Bytes) -> Index {
        let index = self.log.last_index() + 1;
        let entry = Entry { term: self.term, index, kind, data };
        self.log.append(std::slice::from_ref(&entry));
        if kind == EntryKind::ConfChange {
            self.log_appended(std::slice::from_ref(&entry), index);
        }
        self.pending_bcast = true;
        index
    }

    /// The application persisted the log up to `index` (of `term`): the leader may now count
    /// itself for that index.
    pub(crate) fn on_persisted(&mut self, index: Index, term: Term) {
        if self.role != Role::Leader || !self.log.match_term(index, term) {
            return;
        }
        if let Some(pr) = self.prs.progress.get_mut(&self.id) {
            pr.maybe_update(index);
        }
        self.leader_commit();
    }

    pub(crate) fn committed_entry_in_current_term(&self) -> bool {
        self.log.term(self.log.committed) == Ok(self.term)
    }

    pub(crate) fn next_committed_entries(&self) -> Vec<Entry> {
        self.log.next_committed_entries(MAX_COMMITTED_SIZE_PER_READY)
    }
}
