//! The write-ahead log: entries, hard state and snapshot-install markers in segment files
//! `DIR/NNNNNNNNNNNNNNNNNNNN.wal`, each record framed with its length and a CRC32C
//! (`record.rs`).
//!
//! - **Group commit.** [`Wal::append`] only buffers; [`Wal::write`] hands the whole buffer to
//!   the kernel in one `write`, and [`Wal::sync`] makes everything written so far durable with
//!   one `fdatasync`. The replica's loop appends everything one Ready holds (all proposals that
//!   arrived while the previous sync ran) and syncs once.
//! - **Recovery.** Records are replayed in order. A log write at index `i` always replaces the
//!   log from `i` on (a follower's conflicting suffix, §5.3), so replay truncates the same way.
//!   The end of the newest segment may be torn by a crash: an invalid record there with nothing
//!   valid after it is cut off with a warning. So is one followed by valid records when a whole
//!   page between them reads as zeros, or when it is itself zeros up to the end of its sector:
//!   after a power loss, unsynced pages of the preallocated file can be lost out of order (the
//!   page where the last sync ended keeps its synced version, zeros after the synced records),
//!   and since a sync covers the whole file, nothing from such a page on was ever durable. An
//!   invalid record anywhere else, or followed by a valid one with neither sign of lost pages
//!   between, is corruption of synced data: [`WalError::Corrupt`] stops the replica, never a
//!   silent loss.
//! - **Opening** syncs the newest segment and the directory before anything is appended: after
//!   a crash of the process the replayed records may be in the page cache only, and the
//!   replica may acknowledge them as soon as it runs. A newest segment without a hard-state
//!   record (its opening write torn) is given one.
//! - **Failure.** A failed write or sync, on any thread, fails the log for good
//!   ([`WalError::Failed`]); the replica's loop stops on it.
//! - **Preallocation.** A new segment is given its full size up front (`fallocate`), so a sync
//!   does not also have to commit the file's growth: on ext4 that makes each `fdatasync`
//!   markedly cheaper. The segment's unwritten rest reads as zeros, which replay takes as the
//!   clean end of a segment (of an older one too: segments keep their zero tail when the log
//!   rolls over).
//! - **Roll-over.** The next segment is created, preallocated and made durable on another
//!   thread while the active one fills its second half (`segment.rs`); rolling over then only
//!   syncs the segment being left. A crash may leave that ready segment behind holding nothing:
//!   replay deletes trailing segments that hold only zeros.
//! - **Zeros written ahead.** `fallocate` leaves the space *unwritten*: the first write to each
//!   block converts it, and a sync after a conversion must also write the file's changed
//!   extent metadata (a journal commit, or on ext4 without a journal the inode itself: a
//!   second write, and its wait). A sync of a few kilobytes, the usual group commit under load,
//!   enters a new block nearly every time, so [`Wal::write`] writes zeros [`ZERO_AHEAD`] bytes
//!   ahead of the records in one go: one conversion per megabyte instead of one per sync. Those zeros are the same clean end replay already expects. Only on ext4
//!   and XFS, whose unwritten extents this is about: on a copy-on-write file system (btrfs)
//!   records written over zeros would each be copied elsewhere instead.
//!   Records are then written over written zeros rather than into unwritten space, so the
//!   torn-tail rule relies on what a device loses of unsynced writes showing as zeros: whole
//!   pages, or the sectors from where the last sync ended (see Recovery). A lost sector in the
//!   middle of a record with valid records after it and no such sign makes replay stop with
//!   [`WalError::Corrupt`] naming the spot (a clear refusal, never a silent truncation); the
//!   operator then replaces that replica with a new member.
//! - **Compaction.** Once a snapshot covers index `s`, the oldest segments whose entries are all
//!   at or below `s` are deleted (only a prefix: a later segment may depend on an earlier one's
//!   truncation). Every new segment starts with the current hard state, so deleting old
//!   segments never loses it.

#[cfg(test)]
mod fault_tests;
mod open;
pub(crate) mod record;
mod replay;
mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::BytesMut;

use crate::storage::diskio;
use crate::types::{Entry, HardState, Index, Term};
use record::Record;
use replay::{Replay, Replayed};
use segment::{create_segment, has_unwritten_extents, holds_nothing, preallocate, segment_path, NextSegment};

/// Segments roll over at this size unless configured otherwise.
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;

/// How far past the last record [`Wal::write`] fills a preallocated segment with written
/// zeros once the records reach what was filled before (see the module documentation).
pub const ZERO_AHEAD: u64 = 1 << 20;

/// Why the log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// An earlier write or sync of the log failed. After a failed sync the kernel may have
    /// dropped the pages it was to write while reads still show them, and it reports the error
    /// to one sync only, so no later sync can vouch for anything written before: the log takes
    /// nothing more (as etcd and PostgreSQL treat it), and the replica must restart and replay.
    #[error("the log failed earlier and takes no more writes: {0}")]
    Failed(String),
    /// Synced data does not check out. The replica stops: an operator must decide. Wiping the
    /// data directory is not the cure: a replica that comes back with no log and no vote may
    /// vote a second time in a term it already voted in, and help elect a leader that lacks
    /// entries it had acknowledged. The replica is replaced instead, as a new member.
    #[error("WAL corrupt in {path} at byte {offset}: {why}; refusing to start. Do not wipe this data directory and restart (a replica that forgets its vote can vote twice in a term): replace the replica with a new member, as the README's \"Replacing a damaged replica\" says")]
    Corrupt { path: PathBuf, offset: u64, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// What the log held on start-up, relative to the snapshot it was opened with.
#[derive(Debug, Default)]
pub struct Recovered {
    pub hard_state: HardState,
    /// The entries after `base_index`, contiguous.
    pub entries: Vec<Entry>,
    /// Torn-tail truncations, for the log (each also reported with `tracing::warn!`).
    pub warnings: Vec<String>,
}

#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// The largest entry index written to this segment (0 if none).
    max_index: Index,
}

/// A segmented write-ahead log. See the module documentation.
pub struct Wal {
    dir: PathBuf,
    segment_size: u64,
    /// Oldest first; the last one is the one being written.
    segments: Vec<Segment>,
    /// Shared with a thread that syncs it in the background (see [`Wal::sync_target`]).
    file: Arc<File>,
    file_len: u64,
    /// The active segment's bytes below this offset were written (records, or zeros ahead of
    /// them), so the file system holds them as written blocks.
    filled: u64,
    /// The active segment's size on disk: zeros are written ahead only within it, never
    /// growing the file (where preallocation failed, this is just what was written).
    allocated: u64,
    /// Whether the file system is one whose preallocated space zeros ahead help (ext4, XFS).
    fills_ahead: bool,
    buf: BytesMut,
    /// Bytes written to the kernel but not yet synced.
    unsynced: bool,
    hard_state: HardState,
    /// The thread deleting the segments of the last [`Wal::compact`].
    deleting: Option<std::thread::JoinHandle<()>>,
    /// The segment to roll over to, made ready on another thread once the active one is half
    /// full (see [`NextSegment`]).
    next: Option<NextSegment>,
    /// The active segment's records below this offset were handed to write-back early
    /// ([`Wal::start_writeback`]).
    written_back: u64,
    /// Set by the first failed write or sync, on any thread (see [`WalError::Failed`]).
    failure: Arc<OnceLock<String>>,
    /// Held by each sync of the log, whatever its thread (see [`SyncTarget::sync`]).
    syncing: Arc<Mutex<()>>,
}

/// The active segment's file, to be synced on another thread ([`Wal::sync_target`]).
#[derive(Clone)]
pub struct SyncTarget {
    file: Arc<File>,
    path: Arc<Path>,
    failure: Arc<OnceLock<String>>,
    syncing: Arc<Mutex<()>>,
}

impl SyncTarget {
    /// Makes everything written to the file so far durable. A failure is the whole log's, for
    /// good (see [`WalError::Failed`]).
    ///
    /// Syncs of the log never overlap: two syncs of one open file share its error state, so
    /// when a write-back error comes during both, the kernel reports it to one of them and the
    /// other succeeds. The lock makes the one that comes second see the failure the first
    /// recorded, rather than vouch for pages the disk never got.
    pub fn sync(&self) -> Result<(), WalError> {
        let _one_at_a_time = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(why) = self.failure.get() {
            return Err(WalError::Failed(why.clone()));
        }
        diskio::sync_data(&self.file, &self.path).map_err(|e| record_failure(&self.failure, io_err(&self.path)(e)))
    }
}

/// Records `e` as the log's failure (the first one stays) and returns it.
fn record_failure(failure: &OnceLock<String>, e: WalError) -> WalError {
    let _ = failure.set(e.to_string());
    e
}

impl Drop for Wal {
    /// Waits for a background deletion, so that whoever opens the directory next (a restart
    /// in the same process) finds it settled.
    fn drop(&mut self) {
        self.finish_deletions();
        // A segment made ready but never used holds nothing: it goes (replay would remove it).
        if let Some(next) = self.next.take() {
            let path = next.path.clone();
            if next.take().is_ok() {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// Fsyncs a directory, so a file created or renamed in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WalError> {
    diskio::sync_dir(dir).map_err(io_err(dir))
}
