//! Leader election (§5.2) with pre-vote (thesis §9.6) and leader transfer (thesis §3.10).

use crate::error::Error;
use crate::quorum::VoteResult;
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::{Message, MessageBody, ReplicaId};

impl<S: Storage> Raft<S> {
    /// Starts an election now. `transfer` skips pre-vote and overrides the voters' leader
    /// lease: the current leader asked for it.
    pub(crate) fn hup(&mut self, transfer: bool) {
        if self.role == Role::Leader || !self.promotable() {
            return;
        }
        self.campaign(self.pre_vote && !transfer, transfer);
    }

    fn campaign(&mut self, pre_vote: bool, transfer: bool) {
        let term = if pre_vote {
            self.become_pre_candidate();
            // Probe with the term we would take, without taking it.
            self.term + 1
        } else {
            self.become_candidate();
            self.term
        };
        self.prs.record_vote(self.id, true);
        if self.prs.vote_result() == VoteResult::Won {
            // A single voter wins at once.
            if pre_vote {
                self.campaign(false, transfer);
            } else {
                self.become_leader();
            }
            return;
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<ReplicaId> = self.prs.voters.iter().copied().filter(|&id| id != self.id).collect();
        tracing::debug!(replica = self.id, term, pre_vote, "campaigning");
        for to in voters {
            let body = MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, leader_transfer: transfer };
            self.send(to, term, body);
        }
    }

    /// Counts an answer to our (pre-)vote request.
    pub(crate) fn poll(&mut self, from: ReplicaId, granted: bool) {
        self.prs.record_vote(from, granted);
        match self.prs.vote_result() {
            VoteResult::Won => {
                if self.role == Role::PreCandidate {
                    self.campaign(false, false);
                } else {
                    self.become_leader();
                }
            }
            VoteResult::Lost => self.become_follower(self.term, 0),
            VoteResult::Pending => {}
        }
    }

    /// §5.2 and §5.4.1: grant if we have not voted for someone else this term (or, for a
    /// pre-vote, the candidate's term is ahead of ours) and its log is at least as up to date.
    pub(crate) fn handle_vote_request(&mut self, m: Message) {
        let MessageBody::RequestVote { pre_vote, last_log_index, last_log_term, .. } = m.body else {
            return;
        };
        let can_vote =
            self.vote == m.from || (self.vote == 0 && self.leader_id == 0) || (pre_vote && m.term > self.term);
        if can_vote && self.log.is_up_to_date(last_log_index, last_log_term) {
            // A granted pre-vote answers in the candidate's prospective term, so the candidate
            // can tell it from an answer to an older round.
            let term = if pre_vote { m.term } else { self.term };
            self.send(m.from, term, MessageBody::RequestVoteResponse { pre_vote, reject: false });
            if !pre_vote {
                self.election_elapsed = 0;
                self.vote = m.from;
            }
        } else {
            self.send(m.from, self.term, MessageBody::RequestVoteResponse { pre_vote, reject: true });
        }
    }

    /// Hands leadership to `to`: bring it up to date, then tell it to campaign at once.
    /// Proposals are refused until the transfer ends (it is abandoned after an election timeout).
    pub(crate) fn transfer_leader(&mut self, to: ReplicaId) -> Result<(), Error> {
        if self.role != Role::Leader {
            return Err(Error::NotLeader { leader: self.leader_id });
        }
        if to == self.id {
            return Ok(());
        }
        if !self.prs.is_voter(to) {
            return Err(Error::InvalidConfChange(format!("cannot transfer leadership to {to}: not a voter")));
        }
        if self.lead_transferee == to {
            return Ok(());
        }
        tracing::info!(replica = self.id, term = self.term, to, "transferring leadership");
        self.lead_transferee = to;
        self.election_elapsed = 0;
        let caught_up = self.prs.progress.get(&to).is_some_and(|p| p.matched == self.log.last_index());
        if caught_up {
            self.send(to, self.term, MessageBody::TimeoutNow);
        } else {
            self.send_append(to, true);
        }
        Ok(())
    }
}
