//! [`DiskStorage`]: the replica's durable [`Storage`] — the latest snapshot file plus the WAL
//! after it, mirrored in memory for the core's reads.
//!
//! Layout of a data directory: `wal/` (segments, see [`crate::storage::wal`]) and `snap/` (see
//! [`crate::storage::snapshot_store`]).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::error::StorageError;
use crate::storage::snapshot_store::SnapshotStore;
use crate::storage::wal::{Recovered, SyncTarget, Wal, WalError};
use crate::storage::{MemStorage, Storage};
use crate::types::{ConfState, Entry, HardState, Index, ReplicaId, Snapshot, SnapshotMeta, Term};

/// When the log is made durable. Raft's promises (a vote is never forgotten, an acknowledged
/// entry is on a majority) hold across power loss only with `Always`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// Nothing is acknowledged (no vote, no AppendEntries reply, no client answer from a
    /// leader) before it is on disk. Survives power loss of any minority. The default.
    #[default]
    Always,
    /// Written to the kernel at once, fsynced once a second. A crash of the process loses
    /// nothing; a power loss of a majority within the same second can lose acknowledged
    /// writes, and a replica that forgets its vote can break election safety.
    EverySec,
    /// Never fsynced by us (the kernel writes back when it likes, ~30 s). Process crashes are
    /// safe; machine crashes can lose acknowledged writes. For tests and throwaway cells.
    No,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<FsyncPolicy, String> {
        match s {
            "always" => Ok(FsyncPolicy::Always),
            "everysec" => Ok(FsyncPolicy::EverySec),
            "no" => Ok(FsyncPolicy::No),
            _ => Err(format!("fsync policy must be always, everysec or no, not {s:?}")),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FsyncPolicy::Always => "always",
            FsyncPolicy::EverySec => "everysec",
            FsyncPolicy::No => "no",
        })
    }
}

/// Settings of [`DiskStorage`].
#[derive(Clone, Debug)]
pub struct DiskOptions {
    pub fsync: FsyncPolicy,
    pub segment_size: u64,
}

impl Default for DiskOptions {
    fn default() -> DiskOptions {
        DiskOptions { fsync: FsyncPolicy::Always, segment_size: crate::storage::wal::DEFAULT_SEGMENT_SIZE }
    }
}

/// The durable log of one replica. See the module documentation.
pub struct DiskStorage {
    mem: MemStorage,
    wal: Wal,
    snaps: SnapshotStore,
    fsync: FsyncPolicy,
    last_sync: Instant,
    /// Torn-tail truncations found when opening.
    pub recovery_warnings: Vec<String>,
}

impl DiskStorage {
    /// Opens the data directory `dir`: the newest valid snapshot, then the WAL replayed on top.
    pub fn open(dir: &Path, opts: &DiskOptions) -> Result<DiskStorage, WalError> {
        let snaps = SnapshotStore::open(&dir.join("snap"))?;
        let snapshot = snaps.load_latest()?.unwrap_or_default();
        let (wal, Recovered { hard_state, entries, warnings }) =
            Wal::open(&dir.join("wal"), opts.segment_size, snapshot.meta.index, snapshot.meta.term)?;
        // The directory's own entries (`wal/`, `snap/`), created on the first start, before
        // anything is written into them.
        crate::storage::wal::sync_dir(dir)?;
        let mut hard_state = hard_state;
        hard_state.term = hard_state.term.max(snapshot.meta.term);
        Ok(DiskStorage {
            mem: MemStorage::from_parts(hard_state, snapshot, entries),
            wal,
            snaps,
            fsync: opts.fsync,
            last_sync: Instant::now(),
            recovery_warnings: warnings,
        })
    }

    /// Whether nothing was ever stored here (a brand-new replica).
    pub fn is_empty(&self) -> bool {
        self.mem.last_index() == 0 && self.mem.hard_state() == HardState::default()
    }

    /// Writes the initial membership of a new group (see [`bootstrap_log`]) into an empty log.
    pub fn bootstrap(&mut self, voters: &[ReplicaId]) -> Result<(), WalError> {
        self.bootstrap_with_addrs(&voters.iter().map(|&id| (id, None)).collect())
    }

    /// [`DiskStorage::bootstrap`], with the voters' addresses.
    pub fn bootstrap_with_addrs(
        &mut self,
        voters: &std::collections::BTreeMap<ReplicaId, Option<String>>,
    ) -> Result<(), WalError> {
        let (entries, hs) = crate::storage::bootstrap_log_with_addrs(voters);
        self.wal.append(&entries, Some(hs));
        self.wal.sync()?;
        self.last_sync = Instant::now();
        self.mem.append(&entries).expect("bootstrap entries start at 1");
        self.mem.set_hard_state(hs);
        Ok(())
    }

    /// Persists what a [`crate::Ready`] hands out: an installed snapshot, new entries (replacing
    /// any suffix they overlap) and the hard state. Durable on return when `must_sync` and the
    /// policy is [`FsyncPolicy::Always`].
    pub fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<HardState>,
        must_sync: bool,
    ) -> Result<(), WalError> {
        if let Some(snap) = snapshot {
            self.snaps.save(snap)?; // durable before the WAL points at it
            self.wal.append_reset(snap.meta.index, snap.meta.term);
            self.mem.apply_snapshot(snap.clone()).map_err(|e| other(&self.snaps, e))?;
        }
        self.stage(entries, hard_state)?;
        let sync = match self.fsync {
            FsyncPolicy::Always => must_sync || snapshot.is_some(),
            FsyncPolicy::EverySec => self.last_sync.elapsed() >= Duration::from_secs(1),
            FsyncPolicy::No => false,
        };
        if sync {
            self.wal.sync()?;
            self.last_sync = Instant::now();
        } else {
            self.wal.write()?;
        }
        if let Some(snap) = snapshot {
            self.wal.compact(snap.meta.index)?;
        }
        Ok(())
    }

    /// Whether entries may be written now and synced on another thread (policy `always`; the
    /// others never wait for a sync anyway).
    pub fn can_defer_sync(&self) -> bool {
        self.fsync == FsyncPolicy::Always
    }

    /// Writes `entries` (and a hard state whose term and vote are already durable) to the
    /// kernel without syncing; returns the file whose sync makes them durable. For a leader,
    /// which may commit on its followers' copies while its own is being synced (Raft thesis
    /// §10.2.1) and counts itself only once the sync is done, and for a follower, which holds
    /// back its acknowledgements until then.
    pub fn persist_deferred(
        &mut self,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<SyncTarget, WalError> {
        debug_assert!(hard_state.is_none_or(|hs| {
            let old = self.mem.hard_state();
            hs.term == old.term && hs.vote == old.vote
        }));
        self.stage(entries, hard_state)?;
        self.wal.write()?;
        Ok(self.wal.sync_target())
    }

    /// Starts writing what [`DiskStorage::persist_deferred`] wrote to the device without waiting
    /// (see [`Wal::start_writeback`]): for a replica that has just handed its sync to another
    /// thread.
    pub fn start_writeback(&mut self) {
        self.wal.start_writeback();
    }

    /// Buffers entries and the hard state in the WAL and makes them readable from memory.
    fn stage(&mut self, entries: &[Entry], hard_state: Option<HardState>) -> Result<(), WalError> {
        self.wal.append(entries, hard_state);
        self.mem.append(entries).map_err(|e| other(&self.snaps, e))?;
        if let Some(hs) = hard_state {
            self.mem.set_hard_state(hs);
        }
        Ok(())
    }

    /// For `everysec`: called on every tick, syncs when a second has passed since the last sync.
    pub fn sync_if_due(&mut self) -> Result<(), WalError> {
        if self.fsync == FsyncPolicy::EverySec
            && self.wal.has_unsynced()
            && self.last_sync.elapsed() >= Duration::from_secs(1)
        {
            self.wal.sync()?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }

    /// Syncs whatever was written, whatever the policy (clean shutdown).
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.wal.sync()?;
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Saves the application's state at `index` (already applied) as a snapshot, then drops the
    /// log and the WAL segments it covers.
    pub fn compact(&mut self, index: Index, conf_state: ConfState, data: Bytes) -> Result<(), WalError> {
        if index <= self.mem.snapshot_meta().index {
            return Ok(());
        }
        let meta = self.snapshot_meta_at(index, conf_state).map_err(|e| other(&self.snaps, e))?;
        let snap = Snapshot { meta, data };
        self.snaps.save(&snap)?;
        self.compact_saved(snap)
    }

    /// Metadata for a snapshot of the application's state at `index` (already applied), to be
    /// saved with [`DiskStorage::snapshot_files`] off the replica's loop and then handed to
    /// [`DiskStorage::compact_saved`].
    pub fn snapshot_meta_at(&self, index: Index, conf_state: ConfState) -> Result<SnapshotMeta, StorageError> {
        Ok(SnapshotMeta { index, term: self.mem.term(index)?, conf_state })
    }

    /// A handle on the snapshot directory for saving snapshots on another thread.
    pub fn snapshot_files(&self) -> SnapshotStore {
        self.snaps.clone()
    }

    /// Drops the log and WAL segments covered by `snap`, whose file is already durable (the
    /// segments' files are deleted on another thread). Does nothing if a newer snapshot
    /// arrived meanwhile.
    pub fn compact_saved(&mut self, snap: Snapshot) -> Result<(), WalError> {
        if snap.meta.index <= self.mem.snapshot_meta().index {
            return Ok(());
        }
        let index = snap.meta.index;
        self.mem.compact(index, snap.meta.conf_state, snap.data).map_err(|e| other(&self.snaps, e))?;
        self.wal.compact(index)?;
        Ok(())
    }

    pub fn snapshot_meta(&self) -> &SnapshotMeta {
        self.mem.snapshot_meta()
    }

    pub fn hard_state(&self) -> HardState {
        self.mem.hard_state()
    }

    /// Why the log takes no more writes, if a write or sync of it failed on any thread.
    pub fn log_failure(&self) -> Option<&str> {
        self.wal.failure()
    }

    pub fn wal_segments(&self) -> usize {
        self.wal.segment_count()
    }
}

fn other(snaps: &SnapshotStore, e: StorageError) -> WalError {
    WalError::Io { path: snaps.dir().to_path_buf(), source: std::io::Error::other(e.to_string()) }
}

impl Storage for DiskStorage {
    fn initial_state(&self) -> Result<(HardState, ConfState), StorageError> {
        self.mem.initial_state()
    }
    fn entries(&self, lo: Index, hi: Index, max_size: usize) -> Result<Vec<Entry>, StorageError> {
        self.mem.entries(lo, hi, max_size)
    }
    fn term(&self, index: Index) -> Result<Term, StorageError> {
        self.mem.term(index)
    }
    fn first_index(&self) -> Index {
        self.mem.first_index()
    }
    fn last_index(&self) -> Index {
        self.mem.last_index()
    }
    fn snapshot(&self) -> Result<Snapshot, StorageError> {
        self.mem.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::EntryKind;

    fn ent(index: Index, term: Term) -> Entry {
        Entry { index, term, kind: EntryKind::Normal, data: Bytes::from(vec![index as u8; 10]) }
    }

    fn opts() -> DiskOptions {
        DiskOptions { fsync: FsyncPolicy::Always, segment_size: 512 }
    }

    #[test]
    fn restart_returns_snapshot_plus_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::open(dir.path(), &opts()).unwrap();
        assert!(s.is_empty());
        s.bootstrap(&[1, 2, 3]).unwrap();
        let entries: Vec<_> = (4..=40).map(|i| ent(i, 2)).collect();
        let hs = HardState { term: 2, vote: 1, commit: 30 };
        s.persist(None, &entries, Some(hs), true).unwrap();
        let conf = ConfState::new(vec![1, 2, 3], vec![]);
        s.compact(25, conf.clone(), Bytes::from_static(b"state@25")).unwrap();
        drop(s);

        let s = DiskStorage::open(dir.path(), &opts()).unwrap();
        assert_eq!(s.snapshot().unwrap().data, Bytes::from_static(b"state@25"));
        assert_eq!(s.snapshot_meta().conf_state, conf);
        assert_eq!(s.first_index(), 26);
        assert_eq!(s.last_index(), 40);
        assert_eq!(s.entries(26, 41, usize::MAX).unwrap(), entries[22..].to_vec());
        assert_eq!(s.hard_state(), hs);
        assert_eq!(s.term(25), Ok(2));
    }

    #[test]
    fn installed_snapshot_replaces_the_log_across_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = DiskStorage::open(dir.path(), &opts()).unwrap();
        s.bootstrap(&[1, 2, 3]).unwrap();
        s.persist(None, &(4..=20).map(|i| ent(i, 2)).collect::<Vec<_>>(), None, true).unwrap();
        let snap = Snapshot {
            meta: SnapshotMeta { index: 50, term: 4, conf_state: ConfState::new(vec![1, 2, 3], vec![]) },
            data: Bytes::from_static(b"leader state"),
        };
        s.persist(Some(&snap), &[ent(51, 4)], Some(HardState { term: 4, vote: 0, commit: 50 }), true).unwrap();
        drop(s);
        let s = DiskStorage::open(dir.path(), &opts()).unwrap();
        assert_eq!(s.first_index(), 51);
        assert_eq!(s.last_index(), 51);
        assert_eq!(s.term(50), Ok(4));
        assert_eq!(s.snapshot().unwrap(), snap);
    }
}
