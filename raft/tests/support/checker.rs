//! Raft's safety properties (Figure 3 of the paper), checked as the cluster runs:
//!
//! - election safety: at most one leader per term;
//! - one vote per term: a node's persisted vote never changes within a term;
//! - log matching: an (index, term) pair names one entry, whose predecessor has one term;
//! - leader completeness: a new leader of term T holds every entry committed in a term < T
//!   (a stale leader of an older term may lack entries committed in later terms);
//! - state machine safety: no two nodes apply different entries at one index, each node
//!   applies every index once and in order, and a snapshot matches what was applied.

use std::collections::{BTreeMap, HashMap};

use raft::{Entry, HardState, Index, ReplicaId, Term};

use super::state_machine::entry_hash;

#[derive(Default)]
pub struct Checker {
    leaders: BTreeMap<Term, ReplicaId>,
    votes: HashMap<(ReplicaId, Term), ReplicaId>,
    /// (index, term) -> (entry hash, previous entry's term)
    entries: HashMap<(Index, Term), (u64, Term)>,
    /// index -> (term, entry hash, state machine chain after it)
    pub applied: BTreeMap<Index, (Term, u64, u64)>,
    /// index -> lowest term any node was in when it applied the entry: an upper bound on the
    /// term in which the entry was committed (a node applies only after learning the commit).
    commit_terms: BTreeMap<Index, Term>,
}

pub type Violation = String;

impl Checker {
    pub fn on_leader(
        &mut self,
        id: ReplicaId,
        term: Term,
        has_entry: impl Fn(Index, Term) -> bool,
    ) -> Result<(), Violation> {
        if let Some(&other) = self.leaders.get(&term) {
            if other != id {
                return Err(format!("election safety: {other} and {id} both leader in term {term}"));
            }
            return Ok(());
        }
        self.leaders.insert(term, id);
        for (&index, &(t, _, _)) in &self.applied {
            // Raft only promises entries committed in earlier terms to this leader.
            if self.commit_terms[&index] >= term {
                continue;
            }
            if !has_entry(index, t) {
                return Err(format!(
                    "leader completeness: leader {id} of term {term} lacks applied entry {index} (term {t})"
                ));
            }
        }
        Ok(())
    }

    pub fn on_hard_state(&mut self, id: ReplicaId, hs: &HardState) -> Result<(), Violation> {
        if hs.vote == 0 {
            return Ok(());
        }
        match self.votes.insert((id, hs.term), hs.vote) {
            Some(prev) if prev != hs.vote => {
                Err(format!("one vote per term: {id} voted for {prev} and then {} in term {}", hs.vote, hs.term))
            }
            _ => Ok(()),
        }
    }

    /// `entries` were persisted by `id` right after an entry of term `prev_term`.
    pub fn on_persist(&mut self, id: ReplicaId, entries: &[Entry], mut prev_term: Term) -> Result<(), Violation> {
        for e in entries {
            let seen = (entry_hash(e), prev_term);
            match self.entries.get(&(e.index, e.term)) {
                Some(&known) if known != seen => {
                    return Err(format!(
                        "log matching: node {id} persisted a different entry {} of term {} (hash/prev {:?} vs {:?})",
                        e.index, e.term, seen, known
                    ))
                }
                Some(_) => {}
                None => {
                    self.entries.insert((e.index, e.term), seen);
                }
            }
            prev_term = e.term;
        }
        Ok(())
    }

    /// `id`, now in term `term`, applied `e`.
    pub fn on_apply(
        &mut self,
        id: ReplicaId,
        term: Term,
        prev_applied: Index,
        e: &Entry,
        chain: u64,
    ) -> Result<(), Violation> {
        if e.index != prev_applied + 1 {
            return Err(format!("apply order: node {id} applied {} after {prev_applied}", e.index));
        }
        let commit_term = self.commit_terms.entry(e.index).or_insert(term);
        *commit_term = (*commit_term).min(term);
        let seen = (e.term, entry_hash(e), chain);
        match self.applied.get(&e.index) {
            Some(&known) if known != seen => Err(format!(
                "state machine safety: node {id} applied {:?} at {} where another applied {:?}",
                seen, e.index, known
            )),
            Some(_) => Ok(()),
            None => {
                self.applied.insert(e.index, seen);
                Ok(())
            }
        }
    }

    pub fn on_snapshot_restore(&mut self, id: ReplicaId, index: Index, chain: u64) -> Result<(), Violation> {
        match self.applied.get(&index) {
            Some(&(_, _, known)) if known != chain => Err(format!(
                "state machine safety: node {id} restored a snapshot at {index} that differs from the applied state"
            )),
            _ => Ok(()),
        }
    }

    pub fn max_applied(&self) -> Index {
        self.applied.keys().next_back().copied().unwrap_or(0)
    }
}
