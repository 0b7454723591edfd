//! ReadIndex (thesis §6.4): linearizable reads without writing to the log. The leader records
//! its commit index, confirms it is still leader with a round of heartbeats acknowledged by a
//! majority, and then the read may be served once the state machine has applied that index.

use std::collections::{BTreeSet, VecDeque};

use bytes::Bytes;

use crate::error::Error;
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::{Index, MessageBody, ReplicaId};

/// A read that may be served once the state machine has applied `index`. `context` is the
/// caller's request id, echoed back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub index: Index,
    pub context: Bytes,
}

#[derive(Debug)]
pub(crate) struct ReadRequest {
    context: Bytes,
    from: ReplicaId,
    index: Index,
    acks: BTreeSet<ReplicaId>,
}

/// Reads waiting for their heartbeat round, oldest first. An acknowledgement for a later round
/// confirms leadership for every earlier one too.
#[derive(Debug, Default)]
pub(crate) struct ReadOnly {
    queue: VecDeque<ReadRequest>,
}

impl ReadOnly {
    /// False when a request with that context is already waiting.
    fn add(&mut self, index: Index, from: ReplicaId, context: Bytes, self_id: ReplicaId) -> bool {
        if self.queue.iter().any(|r| r.context == context) {
            return false;
        }
        self.queue.push_back(ReadRequest { context, from, index, acks: BTreeSet::from([self_id]) });
        true
    }

    fn recv_ack(&mut self, from: ReplicaId, context: &Bytes) -> Option<&BTreeSet<ReplicaId>> {
        let req = self.queue.iter_mut().find(|r| r.context == context)?;
        req.acks.insert(from);
        Some(&req.acks)
    }

    /// Removes and returns every request up to and including `context`.
    fn advance(&mut self, context: &Bytes) -> Vec<ReadRequest> {
        let Some(pos) = self.queue.iter().position(|r| r.context == context) else { return Vec::new() };
        self.queue.drain(..=pos).collect()
    }

    pub(crate) fn last_pending_context(&self) -> Option<Bytes> {
        self.queue.back().map(|r| r.context.clone())
    }
}

impl<S: Storage> Raft<S> {
    /// Asks for a read index for `context` (non-empty, unique per outstanding read). The answer
    /// comes as a [`ReadState`] in a later Ready; if leadership changes first, none comes and the
    /// caller retries.
    pub(crate) fn read_index(&mut self, context: Bytes) -> Result<(), Error> {
        if context.is_empty() {
            return Err(Error::InvalidConfig("read_index context must not be empty".into()));
        }
        if self.role == Role::Leader {
            self.leader_read_index(self.id, context);
            return Ok(());
        }
        if self.leader_id == 0 {
            return Err(Error::NotLeader { leader: 0 });
        }
        self.send(self.leader_id, self.term, MessageBody::ReadIndexRequest { context });
        Ok(())
    }

    pub(crate) fn leader_read_index(&mut self, from: ReplicaId, context: Bytes) {
        if from != self.id && !self.prs.is_member(from) {
            return;
        }
        // Until the leader has committed an entry of its own term, its commit index may be
        // behind the previous leader's (thesis §6.4 step 1).
        if !self.committed_entry_in_current_term() {
            self.pending_read_index.push((from, context));
            return;
        }
        let index = self.log.committed;
        if self.prs.voters.len() == 1 && self.prs.is_voter(self.id) {
            self.respond_read(from, context, index);
            return;
        }
        if self.read_only.add(index, from, context.clone(), self.id) {
            self.bcast_heartbeat_with_context(context);
        }
    }

    pub(crate) fn handle_read_ack(&mut self, from: ReplicaId, context: Bytes) {
        let Some(acks) = self.read_only.recv_ack(from, &context) else { return };
        if !self.prs.has_quorum(acks) {
            return;
        }
        for req in self.read_only.advance(&context) {
            self.respond_read(req.from, req.context, req.index);
        }
    }

    fn respond_read(&mut self, from: ReplicaId, context: Bytes, index: Index) {
        if from == self.id {
            self.read_states.push(ReadState { index, context });
        } else {
            self.send(from, self.term, MessageBody::ReadIndexResponse { context, index });
        }
    }

    pub(crate) fn release_pending_read_index(&mut self) {
        for (from, context) in std::mem::take(&mut self.pending_read_index) {
            self.leader_read_index(from, context);
        }
    }
}
