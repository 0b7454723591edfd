//! The membership in force and, on the leader, every member's [`Progress`]; votes while
//! campaigning.

use std::collections::{BTreeMap, BTreeSet};

use crate::progress::Progress;
use crate::quorum::{self, VoteResult};
use crate::types::{ConfState, Index, ReplicaId};

pub(crate) struct ProgressTracker {
    pub(crate) voters: BTreeSet<ReplicaId>,
    pub(crate) learners: BTreeSet<ReplicaId>,
    /// One entry per member (voters and learners), including this node.
    pub(crate) progress: BTreeMap<ReplicaId, Progress>,
    votes: BTreeMap<ReplicaId, bool>,
    max_inflight: usize,
}

impl ProgressTracker {
    pub(crate) fn new(max_inflight: usize) -> ProgressTracker {
        ProgressTracker {
            voters: BTreeSet::new(),
            learners: BTreeSet::new(),
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            max_inflight,
        }
    }

    /// Switches to `conf`; new members start probing at `next_idx`, removed ones are forgotten.
    pub(crate) fn set_conf(&mut self, conf: &ConfState, next_idx: Index) {
        self.voters = conf.voters.iter().copied().collect();
        self.learners = conf.learners.iter().copied().filter(|id| !self.voters.contains(id)).collect();
        let (voters, learners) = (&self.voters, &self.learners);
        self.progress.retain(|id, _| voters.contains(id) || learners.contains(id));
        let members: Vec<(ReplicaId, bool)> =
            voters.iter().map(|&id| (id, false)).chain(learners.iter().map(|&id| (id, true))).collect();
        for (id, learner) in members {
            let cap = self.max_inflight;
            let pr = self.progress.entry(id).or_insert_with(|| Progress::new(next_idx, cap, learner));
            pr.is_learner = learner;
        }
    }

    pub(crate) fn is_voter(&self, id: ReplicaId) -> bool {
        self.voters.contains(&id)
    }

    pub(crate) fn is_member(&self, id: ReplicaId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Resets every member's progress (a new term): nothing is known about followers' logs.
    pub(crate) fn reset_progress(&mut self, self_id: ReplicaId, last_index: Index, persisted: Index) {
        let cap = self.max_inflight;
        for (&id, pr) in self.progress.iter_mut() {
            *pr = Progress::new(last_index + 1, cap, pr.is_learner);
            if id == self_id {
                pr.matched = persisted;
                pr.recent_active = true;
            }
        }
    }

    /// The highest index a majority of voters has persisted.
    pub(crate) fn committed_index(&self) -> Index {
        let matched = self.voters.iter().map(|id| self.progress.get(id).map_or(0, |p| p.matched)).collect();
        quorum::committed_index(matched)
    }

    pub(crate) fn reset_votes(&mut self) {
        self.votes.clear();
    }

    /// Records `id`'s answer; a voter's first answer in a campaign is the one that counts.
    pub(crate) fn record_vote(&mut self, id: ReplicaId, granted: bool) {
        self.votes.entry(id).or_insert(granted);
    }

    pub(crate) fn vote_result(&self) -> VoteResult {
        let (mut granted, mut rejected) = (0, 0);
        for id in &self.voters {
            match self.votes.get(id) {
                Some(true) => granted += 1,
                Some(false) => rejected += 1,
                None => {}
            }
        }
        quorum::vote_result(self.voters.len(), granted, rejected)
    }

    /// Check-quorum: has a majority of voters (this node counts) been heard from lately?
    pub(crate) fn quorum_active(&self, self_id: ReplicaId) -> bool {
        let active = self
            .voters
            .iter()
            .filter(|&&id| id == self_id || self.progress.get(&id).is_some_and(|p| p.recent_active))
            .count();
        active >= quorum::majority(self.voters.len())
    }

    pub(crate) fn reset_recent_active(&mut self, self_id: ReplicaId) {
        for (&id, pr) in self.progress.iter_mut() {
            pr.recent_active = id == self_id;
        }
    }

    /// Whether the voters other than `self_id` that take entries as they come (Replicate)
    /// are a majority on their own: then entries commit without this node's copy.
    pub(crate) fn followers_form_quorum(&self, self_id: ReplicaId) -> bool {
        let streaming = self
            .voters
            .iter()
            .filter(|&&id| {
                id != self_id
                    && self.progress.get(&id).is_some_and(|p| p.state == crate::progress::ProgressState::Replicate)
            })
            .count();
        streaming >= quorum::majority(self.voters.len())
    }

    /// Whether the voters in `acks` form a majority.
    pub(crate) fn has_quorum(&self, acks: &BTreeSet<ReplicaId>) -> bool {
        let n = self.voters.iter().filter(|id| acks.contains(id)).count();
        n >= quorum::majority(self.voters.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker(voters: &[ReplicaId], learners: &[ReplicaId], replicating: &[ReplicaId]) -> ProgressTracker {
        let mut t = ProgressTracker::new(16);
        t.set_conf(&ConfState::new(voters.to_vec(), learners.to_vec()), 1);
        for id in replicating {
            t.progress.get_mut(id).expect("a member").become_replicate();
        }
        t
    }

    #[test]
    fn followers_form_a_quorum_only_if_enough_voters_other_than_the_leader_replicate() {
        // Three voters: both followers must be in step for the leader's copy to be optional.
        assert!(tracker(&[1, 2, 3], &[], &[2, 3]).followers_form_quorum(1));
        assert!(!tracker(&[1, 2, 3], &[], &[2]).followers_form_quorum(1));
        // The leader's own progress does not count, whatever its state.
        assert!(!tracker(&[1, 2, 3], &[], &[1, 2]).followers_form_quorum(1));
        // Five voters: three followers in step are a majority.
        assert!(tracker(&[1, 2, 3, 4, 5], &[], &[2, 3, 4]).followers_form_quorum(1));
        assert!(!tracker(&[1, 2, 3, 4, 5], &[], &[2, 3]).followers_form_quorum(1));
        // Learners never count.
        assert!(!tracker(&[1, 2, 3], &[4, 5], &[2, 4, 5]).followers_form_quorum(1));
        // A lone voter, or two, always needs its own copy.
        assert!(!tracker(&[1], &[], &[]).followers_form_quorum(1));
        assert!(!tracker(&[1, 2], &[], &[2]).followers_form_quorum(1));
    }
}
