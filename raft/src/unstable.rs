//! The tail of the log the core holds in memory until the application reports it persisted.

use crate::types::{Entry, Index, Snapshot, Term};

#[derive(Debug, Default)]
pub(crate) struct Unstable {
    /// A snapshot received from the leader and not yet installed by the application.
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) entries: Vec<Entry>,
    /// Index of `entries[0]` (or of the next entry to come when empty).
    pub(crate) offset: Index,
}

impl Unstable {
    pub(crate) fn new(offset: Index) -> Unstable {
        Unstable { snapshot: None, entries: Vec::new(), offset }
    }

    pub(crate) fn maybe_first_index(&self) -> Option<Index> {
        self.snapshot.as_ref().map(|s| s.meta.index + 1)
    }

    pub(crate) fn maybe_last_index(&self) -> Option<Index> {
        if !self.entries.is_empty() {
            return Some(self.offset + self.entries.len() as u64 - 1);
        }
        self.snapshot.as_ref().map(|s| s.meta.index)
    }

    pub(crate) fn maybe_term(&self, index: Index) -> Option<Term> {
        if index < self.offset {
            return match &self.snapshot {
                Some(s) if s.meta.index == index => Some(s.meta.term),
                _ => None,
            };
        }
        self.entries.get((index - self.offset) as usize).map(|e| e.term)
    }

    /// The application persisted entries up to `index`; drop them unless the tail was replaced
    /// in the meantime (then `term` no longer matches and they stay).
    pub(crate) fn stable_to(&mut self, index: Index, term: Term) {
        if index < self.offset || self.maybe_term(index) != Some(term) {
            return;
        }
        let n = (index + 1 - self.offset) as usize;
        self.entries.drain(..n);
        self.offset = index + 1;
    }

    pub(crate) fn stable_snap_to(&mut self, index: Index) {
        if self.snapshot.as_ref().is_some_and(|s| s.meta.index == index) {
            self.snapshot = None;
        }
    }

    pub(crate) fn restore(&mut self, snapshot: Snapshot) {
        self.offset = snapshot.meta.index + 1;
        self.entries.clear();
        self.snapshot = Some(snapshot);
    }

    /// Appends `entries`, which start at most one past the current last index; anything from
    /// their first index on is replaced.
    pub(crate) fn truncate_and_append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let after = first.index;
        if after == self.offset + self.entries.len() as u64 {
            self.entries.extend_from_slice(entries);
        } else if after <= self.offset {
            // Replaces everything unstable (and, once persisted, the stored suffix from `after`).
            self.offset = after;
            self.entries.clear();
            self.entries.extend_from_slice(entries);
        } else {
            self.entries.truncate((after - self.offset) as usize);
            self.entries.extend_from_slice(entries);
        }
    }

    /// Entries in `[lo, hi)`; the caller checked the bounds.
    pub(crate) fn slice(&self, lo: Index, hi: Index) -> &[Entry] {
        &self.entries[(lo - self.offset) as usize..(hi - self.offset) as usize]
    }
}
