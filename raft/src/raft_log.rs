//! The log as the core sees it: persisted entries in [`Storage`] followed by the in-memory
//! [`Unstable`] tail, with the commit and apply watermarks.

use crate::error::StorageError;
use crate::storage::Storage;
use crate::types::{Entry, Index, Snapshot, Term};
use crate::unstable::Unstable;

pub(crate) struct RaftLog<S> {
    pub(crate) store: S,
    pub(crate) unstable: Unstable,
    /// Highest index known to be committed (§5.3).
    pub(crate) committed: Index,
    /// Highest index the application has applied (reported through `advance`).
    pub(crate) applied: Index,
}

impl<S: Storage> RaftLog<S> {
    pub(crate) fn new(store: S, committed: Index, applied: Index) -> RaftLog<S> {
        let first = store.first_index();
        let last = store.last_index();
        // A hard state's commit can never be below the snapshot nor above the log.
        let committed = committed.clamp(first - 1, last);
        let applied = applied.clamp(first - 1, committed);
        RaftLog { store, unstable: Unstable::new(last + 1), committed, applied }
    }

    pub(crate) fn first_index(&self) -> Index {
        self.unstable.maybe_first_index().unwrap_or_else(|| self.store.first_index())
    }

    pub(crate) fn last_index(&self) -> Index {
        self.unstable.maybe_last_index().unwrap_or_else(|| self.store.last_index())
    }

    /// Highest index on stable storage (0 while a received snapshot is not yet installed).
    pub(crate) fn persisted(&self) -> Index {
        if self.unstable.snapshot.is_some() {
            return 0;
        }
        self.unstable.offset - 1
    }

    pub(crate) fn term(&self, index: Index) -> Result<Term, StorageError> {
        let dummy = self.first_index() - 1;
        if index < dummy {
            return Err(StorageError::Compacted);
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        if let Some(t) = self.unstable.maybe_term(index) {
            return Ok(t);
        }
        self.store.term(index)
    }

    pub(crate) fn last_term(&self) -> Term {
        // The last index is always within [first - 1, last], so this cannot fail for a sane store.
        self.term(self.last_index()).unwrap_or(0)
    }

    pub(crate) fn match_term(&self, index: Index, term: Term) -> bool {
        self.term(index) == Ok(term)
    }

    /// §5.4.1: a candidate's log is at least as up to date as ours.
    pub(crate) fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        let my_term = self.last_term();
        last_term > my_term || (last_term == my_term && last_index >= self.last_index())
    }

    /// The index of the first entry in `entries` that is not already in the log with the same
    /// term, or 0 when all are.
    fn find_conflict(&self, entries: &[Entry]) -> Index {
        entries.iter().find(|e| !self.match_term(e.index, e.term)).map_or(0, |e| e.index)
    }

    /// The largest index `<= index` whose term is `<= term`, with that term (0 if unknown).
    /// A follower uses it to tell the leader where its log may match; the leader uses it to
    /// skip a whole term of conflicting entries at once.
    pub(crate) fn find_conflict_by_term(&self, index: Index, term: Term) -> (Index, Term) {
        let mut i = index;
        loop {
            match self.term(i) {
                Ok(t) if t <= term => return (i, t),
                Ok(_) if i > 0 => i -= 1,
                _ => return (i, 0),
            }
        }
    }

    /// AppendEntries consistency check and append (§5.3). Returns the index of the last new
    /// entry when `prev` matches, `None` otherwise. Entries at or below `committed` never
    /// conflict in a correct group; if one does, the append is refused rather than overwriting
    /// a committed entry.
    pub(crate) fn maybe_append(
        &mut self,
        prev_index: Index,
        prev_term: Term,
        leader_commit: Index,
        entries: &[Entry],
    ) -> Result<Option<(Index, Index)>, String> {
        if !self.match_term(prev_index, prev_term) {
            return Ok(None);
        }
        let last_new = prev_index + entries.len() as u64;
        let conflict = self.find_conflict(entries);
        let mut appended_from = 0;
        if conflict != 0 {
            if conflict <= self.committed {
                return Err(format!("entry {conflict} conflicts with the committed log (commit {})", self.committed));
            }
            let start = (conflict - (prev_index + 1)) as usize;
            self.append(&entries[start..]);
            appended_from = conflict;
        }
        self.commit_to(leader_commit.min(last_new));
        Ok(Some((last_new, appended_from)))
    }

    pub(crate) fn append(&mut self, entries: &[Entry]) -> Index {
        self.unstable.truncate_and_append(entries);
        self.last_index()
    }

    pub(crate) fn commit_to(&mut self, index: Index) {
        if index > self.committed && index <= self.last_index() {
            self.committed = index;
        }
    }

    /// The leader commits `max_index` only if it is from its own term (§5.4.2).
    pub(crate) fn maybe_commit(&mut self, max_index: Index, term: Term) -> bool {
        if max_index > self.committed && self.match_term(max_index, term) {
            self.commit_to(max_index);
            return true;
        }
        false
    }

    pub(crate) fn applied_to(&mut self, index: Index) {
        if index > self.applied && index <= self.committed {
            self.applied = index;
        }
    }

    pub(crate) fn stable_to(&mut self, index: Index, term: Term) {
        self.unstable.stable_to(index, term);
    }

    pub(crate) fn stable_snap_to(&mut self, index: Index) {
        self.unstable.stable_snap_to(index);
        if index > self.applied {
            self.applied = index;
        }
    }

    pub(crate) fn has_next_committed(&self) -> bool {
        let lo = (self.applied + 1).max(self.first_index());
        self.committed >= lo
    }

    /// Committed entries not yet applied, at most `max_size` bytes but at least one.
    pub(crate) fn next_committed_entries(&self, max_size: usize) -> Vec<Entry> {
        let lo = (self.applied + 1).max(self.first_index());
        if self.committed < lo {
            return Vec::new();
        }
        self.slice(lo, self.committed + 1, max_size).unwrap_or_default()
    }

    /// Entries from `index` to the end, at most `max_size` bytes but at least one.
    pub(crate) fn entries(&self, index: Index, max_size: usize) -> Result<Vec<Entry>, StorageError> {
        let last = self.last_index();
        if index > last {
            return Ok(Vec::new());
        }
        self.slice(index, last + 1, max_size)
    }

    /// Entries in `[lo, hi)`, from storage and then from the unstable tail.
    pub(crate) fn slice(&self, lo: Index, hi: Index, max_size: usize) -> Result<Vec<Entry>, StorageError> {
        if lo < self.first_index() {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 || lo > hi {
            return Err(StorageError::Unavailable);
        }
        if lo == hi {
            return Ok(Vec::new());
        }
        let offset = self.unstable.offset;
        let mut out = Vec::new();
        if lo < offset {
            let stored = self.store.entries(lo, hi.min(offset), max_size)?;
            let short = (stored.len() as u64) < hi.min(offset) - lo;
            out = stored;
            if short || hi <= offset {
                return Ok(out);
            }
        }
        // Continue into the unstable tail within the same size budget (at least one entry).
        let mut used: usize = out.iter().map(Entry::size).sum();
        for e in self.unstable.slice(lo.max(offset), hi) {
            used += e.size();
            if used > max_size && !out.is_empty() {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    pub(crate) fn snapshot(&self) -> Result<Snapshot, StorageError> {
        match &self.unstable.snapshot {
            Some(s) => Ok(s.clone()),
            None => self.store.snapshot(),
        }
    }

    /// Installs a leader's snapshot: everything the log held is superseded.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        self.committed = snapshot.meta.index;
        self.unstable.restore(snapshot);
    }
}
