//! Membership changes, one server at a time (Ongaro's thesis §4.1).
//!
//! Why single-server changes, and why they take effect on *append*: any two configurations
//! that differ by one voter have overlapping majorities, so as long as every node uses the
//! latest configuration in its own log (committed or not) and a leader starts a new change only
//! when the previous one is committed, no two leaders can be elected in one term. Applying
//! changes on commit instead would let a lagging node count votes in a configuration two
//! changes old, whose majorities need not overlap the current one's. The bug Ongaro reported
//! in 2015 (a leader's change racing a previous term's uncommitted change) is avoided by the
//! rule that a leader proposes a change only after committing an entry of its own term.
//!
//! Learners receive the log but do not vote; a voter is added as a learner first and promoted
//! once it has caught up, so it never stalls commitment while copying the log. A leader that
//! removes itself keeps replicating (without counting itself) until the change commits, then
//! hands leadership to the most up-to-date voter and steps down.

use crate::error::Error;
use crate::raft::{Raft, Role};
use crate::storage::Storage;
use crate::types::{ConfChange, ConfState, Entry, EntryKind, Index, MessageBody};

/// The configurations introduced by the log, newest last, above a base configuration.
pub(crate) struct ConfigHistory {
    base_index: Index,
    base: ConfState,
    changes: Vec<(Index, ConfState)>,
}

impl ConfigHistory {
    pub(crate) fn new(base_index: Index, base: ConfState) -> ConfigHistory {
        ConfigHistory { base_index, base, changes: Vec::new() }
    }

    pub(crate) fn latest(&self) -> &ConfState {
        self.changes.last().map_or(&self.base, |(_, c)| c)
    }

    /// Index of the entry that introduced the latest configuration.
    pub(crate) fn latest_index(&self) -> Index {
        self.changes.last().map_or(self.base_index, |(i, _)| *i)
    }

    /// Forgets configurations from entries at `index` or later (they are being overwritten).
    /// Returns whether any was forgotten.
    pub(crate) fn truncate_from(&mut self, index: Index) -> bool {
        let before = self.changes.len();
        self.changes.retain(|(i, _)| *i < index);
        self.changes.len() != before
    }

    /// Records the configuration entries among `entries`. Returns whether there was any.
    pub(crate) fn append(&mut self, entries: &[Entry]) -> bool {
        let mut changed = false;
        for e in entries.iter().filter(|e| e.kind == EntryKind::ConfChange) {
            let next = match ConfChange::decode_with_addr(&e.data) {
                Some((cc, addr)) => apply(self.latest(), cc, addr),
                None => {
                    tracing::warn!(index = e.index, "undecodable membership change ignored");
                    self.latest().clone()
                }
            };
            self.changes.push((e.index, next));
            changed = true;
        }
        changed
    }

    /// The configuration in force after applying the entry at `index`, if still known.
    pub(crate) fn at(&self, index: Index) -> Option<ConfState> {
        if index < self.base_index {
            return None;
        }
        let found = self.changes.iter().rev().find(|(i, _)| *i <= index);
        Some(found.map_or(&self.base, |(_, c)| c).clone())
    }

    /// Folds configurations at or below `applied` into the base: they can no longer be
    /// truncated, and nobody asks for older ones.
    pub(crate) fn fold_to(&mut self, applied: Index) {
        let n = self.changes.iter().take_while(|(i, _)| *i <= applied).count();
        if n > 0 {
            let (index, conf) = self.changes.drain(..n).next_back().expect("n > 0");
            self.base_index = index;
            self.base = conf;
        }
    }

    pub(crate) fn restore(&mut self, index: Index, conf: ConfState) {
        self.base_index = index;
        self.base = conf;
        self.changes.clear();
    }
}

/// The configuration after `cc`. Deterministic and total: every node computes the same result
/// from the same log, and a change that makes no sense leaves the configuration as it was.
/// An address given with an addition becomes the member's address.
fn apply(conf: &ConfState, cc: ConfChange, addr: Option<String>) -> ConfState {
    let mut next = conf.clone();
    match cc {
        ConfChange::AddLearner(id) => {
            if id != 0 && !next.voters.contains(&id) && !next.learners.contains(&id) {
                next.learners.push(id);
                if let Some(a) = addr {
                    next.addrs.insert(id, a);
                }
            }
        }
        ConfChange::AddVoter(id) => {
            next.learners.retain(|&l| l != id);
            if id != 0 && !next.voters.contains(&id) {
                next.voters.push(id);
            }
            if let (Some(a), true) = (addr, id != 0) {
                next.addrs.insert(id, a);
            }
        }
        ConfChange::RemoveNode(id) => {
            next.learners.retain(|&l| l != id);
            if !(next.voters.len() == 1 && next.voters[0] == id) {
                next.voters.retain(|&v| v != id);
                next.addrs.remove(&id);
            }
        }
    }
    next.voters.sort_unstable();
    next.learners.sort_unstable();
    next
}

impl<S: Storage> Raft<S> {
    pub(crate) fn propose_conf_change(&mut self, cc: ConfChange, addr: Option<&str>) -> Result<Index, Error> {
        self.check_can_propose()?;
        if self.confs.latest_index() > self.log.committed {
            return Err(Error::ConfChangePending { pending: self.confs.latest_index() });
        }
        if !self.committed_entry_in_current_term() {
            // Thesis §4.1 (2015 erratum): not before an entry of this term is committed.
            return Err(Error::ConfChangePending { pending: self.log.last_index() });
        }
        let invalid = |why: String| Err(Error::InvalidConfChange(why));
        match cc {
            _ if addr.is_some_and(|a| a.is_empty() || a.len() > crate::types::MAX_ADDR_LEN) => {
                return invalid(format!("an address must have 1 to {} bytes", crate::types::MAX_ADDR_LEN));
            }
            ConfChange::RemoveNode(_) if addr.is_some() => return invalid("a removal takes no address".into()),
            ConfChange::AddLearner(id) => {
                if id == 0 {
                    return invalid("node id 0 is reserved".into());
                }
                if self.prs.is_member(id) {
                    return invalid(format!("{id} is already a member"));
                }
            }
            ConfChange::AddVoter(id) => {
                if self.prs.is_voter(id) {
                    return invalid(format!("{id} is already a voter"));
                }
                let Some(pr) = self.prs.progress.get(&id) else {
                    return invalid(format!("{id} must be added as a learner first"));
                };
                if pr.matched < self.log.committed {
                    return invalid(format!(
                        "learner {id} has not caught up (match {} < commit {})",
                        pr.matched, self.log.committed
                    ));
                }
            }
            ConfChange::RemoveNode(id) => {
                if !self.prs.is_member(id) {
                    return invalid(format!("{id} is not a member"));
                }
                if self.prs.is_voter(id) && self.prs.voters.len() == 1 {
                    return invalid("cannot remove the last voter".into());
                }
            }
        }
        tracing::info!(replica = self.id, term = self.term, ?cc, "proposing membership change");
        Ok(self.append_entry(EntryKind::ConfChange, cc.encode_with_addr(addr)))
    }

    /// Entries from `from_index` on were (re)written in the log: update the configuration.
    pub(crate) fn log_appended(&mut self, entries: &[Entry], from_index: Index) {
        let truncated = self.confs.truncate_from(from_index);
        let added = self.confs.append(entries);
        if !(truncated || added) {
            return;
        }
        let conf = self.confs.latest().clone();
        self.prs.set_conf(&conf, self.log.last_index() + 1);
        if self.role == Role::Leader {
            if self.lead_transferee != 0 && !self.prs.is_voter(self.lead_transferee) {
                self.lead_transferee = 0;
            }
            // The quorum changed: commitment may advance, and new members need the log.
            self.leader_commit();
            self.pending_bcast = true;
        }
    }

    /// A leader no longer among the voters steps down once that change is committed, after
    /// telling followers the commit index and asking the most up-to-date voter to campaign.
    pub(crate) fn maybe_step_down_removed(&mut self) {
        if self.role != Role::Leader || self.prs.is_voter(self.id) || self.log.committed < self.confs.latest_index() {
            return;
        }
        self.bcast_append();
        let last = self.log.last_index();
        let successor =
            self.prs.voters.iter().filter_map(|id| self.prs.progress.get(id).map(|p| (p.matched, *id))).max();
        if let Some((matched, id)) = successor {
            if matched == last {
                self.send(id, self.term, MessageBody::TimeoutNow);
            }
        }
        tracing::info!(replica = self.id, term = self.term, "removed from the group; stepping down");
        self.become_follower(self.term, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(voters: &[u64], learners: &[u64]) -> ConfState {
        ConfState::new(voters.to_vec(), learners.to_vec())
    }

    #[test]
    fn changes_are_total_and_deterministic() {
        let c = conf(&[1, 2, 3], &[]);
        assert_eq!(apply(&c, ConfChange::AddLearner(4), None), conf(&[1, 2, 3], &[4]));
        assert_eq!(apply(&c, ConfChange::AddLearner(2), None), c, "a voter is not demoted");
        assert_eq!(apply(&conf(&[1, 2, 3], &[4]), ConfChange::AddVoter(4), None), conf(&[1, 2, 3, 4], &[]));
        assert_eq!(apply(&c, ConfChange::RemoveNode(2), None), conf(&[1, 3], &[]));
        assert_eq!(apply(&c, ConfChange::RemoveNode(9), None), c);
        assert_eq!(apply(&conf(&[1], &[]), ConfChange::RemoveNode(1), None), conf(&[1], &[]), "never empty");
    }

    #[test]
    fn an_address_comes_with_an_addition_and_goes_with_the_removal() {
        let a = |s: &str| Some(s.to_string());
        let c = apply(&conf(&[1, 2, 3], &[]), ConfChange::AddLearner(4), a("h4:7004"));
        assert_eq!(c.addrs.get(&4).map(String::as_str), Some("h4:7004"));
        let c = apply(&c, ConfChange::AddVoter(4), None);
        assert_eq!(c.addrs.get(&4).map(String::as_str), Some("h4:7004"), "promotion keeps it");
        let c = apply(&c, ConfChange::AddLearner(4), a("elsewhere:1"));
        assert_eq!(c.addrs.get(&4).map(String::as_str), Some("h4:7004"), "a no-op change moves no one");
        let c = apply(&c, ConfChange::RemoveNode(4), None);
        assert_eq!((c.voters.clone(), c.addrs.get(&4)), (vec![1, 2, 3], None));
        let last = apply(&conf(&[1], &[]), ConfChange::AddVoter(1), a("h1:1"));
        assert_eq!(apply(&last, ConfChange::RemoveNode(1), None).addrs.len(), 1, "the last voter keeps its address");
    }

    #[test]
    fn history_truncates_and_folds() {
        let mut h = ConfigHistory::new(0, conf(&[1, 2, 3], &[]));
        let e = |index, cc: ConfChange| Entry { term: 1, index, kind: EntryKind::ConfChange, data: cc.encode() };
        h.append(&[e(5, ConfChange::AddLearner(4))]);
        h.append(&[e(8, ConfChange::AddVoter(4))]);
        assert_eq!(h.latest(), &conf(&[1, 2, 3, 4], &[]));
        assert_eq!(h.at(6), Some(conf(&[1, 2, 3], &[4])));
        assert!(h.truncate_from(8));
        assert_eq!(h.latest(), &conf(&[1, 2, 3], &[4]));
        h.fold_to(7);
        assert_eq!(h.latest_index(), 5);
        assert_eq!(h.at(4), None);
    }
}
