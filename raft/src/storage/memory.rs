//! [`MemStorage`]: the log in memory, what a "disk" is in the simulator.

use bytes::Bytes;

use super::{bootstrap_log, limit_size, Storage};
use crate::error::StorageError;
use crate::types::{ConfState, Entry, HardState, Index, Snapshot, SnapshotMeta, Term};

/// An in-memory [`Storage`]: what a "disk" is in the simulator. Everything in it counts as
/// persisted; what the core holds outside it is lost in a simulated crash.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    hard_state: HardState,
    snapshot: Snapshot,
    /// `entries[0].index == snapshot.meta.index + 1` when non-empty.
    entries: Vec<Entry>,
}

impl MemStorage {
    /// The log of a freshly bootstrapped group whose members are `voters` (see [`bootstrap_log`]).
    pub fn new_with_voters(voters: &[u64]) -> MemStorage {
        let (entries, hard_state) = bootstrap_log(voters);
        MemStorage { hard_state, entries, ..MemStorage::default() }
    }

    /// A log rebuilt from disk: the latest snapshot, the entries after it and the hard state.
    pub fn from_parts(hard_state: HardState, snapshot: Snapshot, entries: Vec<Entry>) -> MemStorage {
        debug_assert!(entries.first().is_none_or(|e| e.index == snapshot.meta.index + 1));
        MemStorage { hard_state, snapshot, entries }
    }

    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        &self.snapshot.meta
    }

    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// Every entry after the snapshot.
    pub fn all_entries(&self) -> &[Entry] {
        &self.entries
    }

    fn offset(&self) -> Index {
        self.snapshot.meta.index + 1
    }

    /// Appends `entries`, replacing any existing suffix they overlap (a follower's log is
    /// overwritten by the leader's from the first conflict on, §5.3).
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StorageError> {
        let Some(first) = entries.first() else { return Ok(()) };
        let offset = self.offset();
        if first.index + entries.len() as u64 <= offset {
            return Ok(()); // entirely below the snapshot: already covered
        }
        let skip = offset.saturating_sub(first.index) as usize;
        let entries = &entries[skip..];
        let start = entries[0].index;
        if start > self.last_index() + 1 {
            return Err(StorageError::Other(format!("append at {start} leaves a gap after {}", self.last_index())));
        }
        self.entries.truncate((start - offset) as usize);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// Replaces the whole log with `snapshot` (a follower installing the leader's snapshot).
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StorageError> {
        if snapshot.meta.index < self.snapshot.meta.index {
            return Err(StorageError::Other("snapshot older than the current one".into()));
        }
        self.hard_state.commit = self.hard_state.commit.max(snapshot.meta.index);
        self.hard_state.term = self.hard_state.term.max(snapshot.meta.term);
        self.entries.clear();
        self.snapshot = snapshot;
        Ok(())
    }

    /// Takes a snapshot at `index` (already applied by the caller, whose state is `data`) and
    /// drops the entries it covers.
    pub fn compact(&mut self, index: Index, conf_state: ConfState, data: Bytes) -> Result<(), StorageError> {
        if index <= self.snapshot.meta.index {
            return Ok(());
        }
        if index > self.last_index() {
            return Err(StorageError::Unavailable);
        }
        let term = self.term(index)?;
        let drop = (index - self.snapshot.meta.index) as usize;
        self.entries.drain(..drop);
        self.snapshot = Snapshot { meta: SnapshotMeta { index, term, conf_state }, data };
        Ok(())
    }
}

impl Storage for MemStorage {
    fn initial_state(&self) -> Result<(HardState, ConfState), StorageError> {
        Ok((self.hard_state, self.snapshot.meta.conf_state.clone()))
    }

    fn entries(&self, lo: Index, hi: Index, max_size: usize) -> Result<Vec<Entry>, StorageError> {
        let offset = self.offset();
        if lo < offset {
            return Err(StorageError::Compacted);
        }
        if hi > self.last_index() + 1 || lo > hi {
            return Err(StorageError::Unavailable);
        }
        let slice = &self.entries[(lo - offset) as usize..(hi - offset) as usize];
        Ok(limit_size(slice, max_size).to_vec())
    }

    fn term(&self, index: Index) -> Result<Term, StorageError> {
        let snap = &self.snapshot.meta;
        if index == snap.index {
            return Ok(snap.term);
        }
        if index < snap.index {
            return Err(StorageError::Compacted);
        }
        match self.entries.get((index - snap.index - 1) as usize) {
            Some(e) => Ok(e.term),
            None => Err(StorageError::Unavailable),
        }
    }

    fn first_index(&self) -> Index {
        self.offset()
    }

    fn last_index(&self) -> Index {
        self.snapshot.meta.index + self.entries.len() as u64
    }

    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        Ok(self.snapshot.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ent(index: Index, term: Term) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    #[test]
    fn append_overwrites_conflicting_suffix() {
        let mut s = MemStorage::default();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        s.append(&[ent(2, 2)]).unwrap();
        assert_eq!(s.last_index(), 2);
        assert_eq!(s.term(2), Ok(2));
        assert!(s.append(&[ent(5, 2)]).is_err(), "a gap is refused");
    }

    #[test]
    fn compact_keeps_terms_and_refuses_compacted_reads() {
        let mut s = MemStorage::default();
        s.append(&[ent(1, 1), ent(2, 2), ent(3, 3)]).unwrap();
        s.compact(2, ConfState::default(), Bytes::new()).unwrap();
        assert_eq!(s.first_index(), 3);
        assert_eq!(s.term(2), Ok(2));
        assert_eq!(s.term(1), Err(StorageError::Compacted));
        assert_eq!(s.entries(1, 3, usize::MAX), Err(StorageError::Compacted));
        assert_eq!(s.entries(3, 4, usize::MAX).unwrap(), vec![ent(3, 3)]);
    }

    #[test]
    fn entries_respect_max_size_but_return_one() {
        let mut s = MemStorage::default();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 1)]).unwrap();
        assert_eq!(s.entries(1, 4, 0).unwrap().len(), 1);
        assert_eq!(s.entries(1, 4, 50).unwrap().len(), 2);
    }
}
