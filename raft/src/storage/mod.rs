//! The log as the application keeps it: the [`Storage`] trait the core reads from, and its
//! implementations. The core never writes to storage. It hands out entries, hard state and
//! snapshots in a [`crate::Ready`]; the application writes them and calls
//! [`crate::RawNode::advance`].
//!
//! - [`memory`]: [`MemStorage`], in memory, for tests and simulation.
//! - [`disk`]: [`DiskStorage`](disk::DiskStorage), a replica's data directory: the write-ahead
//!   log ([`wal`]) and snapshot files ([`snapshot_store`]), written through [`diskio`] (which
//!   tests can make fail).

pub mod disk;
pub mod diskio;
mod memory;
pub mod snapshot_store;
pub mod wal;

pub use memory::MemStorage;

use crate::error::StorageError;
use crate::types::{ConfChange, ConfState, Entry, EntryKind, HardState, Index, ReplicaId, Snapshot, Term};

/// Read access to the persisted log. Indexes below `first_index()` are compacted into the
/// latest snapshot; `term(first_index() - 1)` is that snapshot's term.
pub trait Storage {
    /// The persisted hard state and the membership as of the latest snapshot. Membership
    /// changes in the log after the snapshot are found by the core itself.
    fn initial_state(&self) -> Result<(HardState, ConfState), StorageError>;
    /// Entries in `[lo, hi)`, stopping once `max_size` bytes are reached but always at least one.
    fn entries(&self, lo: Index, hi: Index, max_size: usize) -> Result<Vec<Entry>, StorageError>;
    /// The term of the entry at `index`, for `index` in `[first_index() - 1, last_index()]`.
    fn term(&self, index: Index) -> Result<Term, StorageError>;
    /// The first index still in the log (the latest snapshot's index + 1).
    fn first_index(&self) -> Index;
    /// The last index in the log, or the snapshot's index when the log after it is empty.
    fn last_index(&self) -> Index;
    /// The latest snapshot, for sending to a follower that is too far behind.
    fn snapshot(&self) -> Result<Snapshot, StorageError>;
}

/// The log every initial member of a new group starts with: one `AddVoter` entry per voter
/// (in id order) at term 1, all committed. Keeping the initial membership in the log, rather
/// than only in each node's local state, lets a node that joins later learn it by ordinary
/// replication, with or without a snapshot.
pub fn bootstrap_log(voters: &[ReplicaId]) -> (Vec<Entry>, HardState) {
    let members: std::collections::BTreeMap<ReplicaId, Option<String>> = voters.iter().map(|&id| (id, None)).collect();
    bootstrap_log_with_addrs(&members)
}

/// [`bootstrap_log`] with each voter's address, if known, in its entry.
pub fn bootstrap_log_with_addrs(
    voters: &std::collections::BTreeMap<ReplicaId, Option<String>>,
) -> (Vec<Entry>, HardState) {
    let entries: Vec<Entry> = voters
        .iter()
        .enumerate()
        .map(|(i, (&id, addr))| Entry {
            term: 1,
            index: i as u64 + 1,
            kind: EntryKind::ConfChange,
            data: ConfChange::AddVoter(id).encode_with_addr(addr.as_deref()),
        })
        .collect();
    let hard_state = HardState { term: 1, vote: 0, commit: entries.len() as u64 };
    (entries, hard_state)
}

/// The longest prefix of `entries` within `max_size` bytes, but at least one entry.
pub(crate) fn limit_size(entries: &[Entry], max_size: usize) -> &[Entry] {
    let mut size = 0;
    for (i, e) in entries.iter().enumerate() {
        size += e.size();
        if size > max_size && i > 0 {
            return &entries[..i];
        }
    }
    entries
}
