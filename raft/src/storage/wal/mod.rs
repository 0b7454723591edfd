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
pub(crate) mod record;
mod replay;
mod segment;
#[cfg(test)]
mod tests;

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

impl Wal {
    /// Opens (or creates) the log in `dir` and replays it on top of a snapshot at
    /// (`base_index`, `base_term`) — (0, 0) when there is none.
    pub fn open(
        dir: &Path,
        segment_size: u64,
        base_index: Index,
        base_term: Term,
    ) -> Result<(Wal, Recovered), WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut seqs = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let name = item.file_name();
            let Some(seq) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".wal"))
                .filter(|n| n.len() == 20)
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            seqs.push(seq);
        }
        seqs.sort_unstable();
        // A segment made ready ahead of need that the log never rolled over to holds nothing,
        // and neither does one whose every write a crash lost: the log goes on in the segment
        // before it, which is then the newest (so its torn tail, if any, is cut as one).
        while seqs.len() > 1 {
            let path = segment_path(dir, *seqs.last().expect("more than one"));
            if !holds_nothing(&path)? {
                break;
            }
            // Not synced: if the deletion is lost, the file is still all zeros next time.
            fs::remove_file(&path).map_err(io_err(&path))?;
            seqs.pop();
        }

        let mut replay = Replay { base: base_index, base_entry_term: None, out: Recovered::default() };
        let mut segments = Vec::new();
        let mut newest = Replayed::default();
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let last = i + 1 == seqs.len();
            newest = replay.segment(&path, last)?;
            segments.push(Segment { seq, path, max_index: newest.max_index });
        }
        let (valid_len, torn) = (newest.valid_len, newest.torn);
        // Entries after the snapshot belong to it only if the log's entry at the snapshot's
        // index is the snapshot's own. Otherwise a snapshot from the leader was saved but the
        // crash came before its reset marker: the old suffix was being discarded. The marker
        // is written now (below), or the next replay would discard again, together with the
        // old suffix, every entry appended after the snapshot from here on.
        let missing_reset = replay.base_entry_term.is_some_and(|t| t != base_term);
        if missing_reset {
            replay.out.entries.clear();
        }
        let hard_state = replay.out.hard_state;
        let mut recovered = replay.out;
        recovered.hard_state.commit = recovered.hard_state.commit.max(base_index);
        let last = base_index + recovered.entries.len() as u64;
        if recovered.hard_state.commit > last {
            return Err(WalError::Corrupt {
                path: dir.to_path_buf(),
                offset: 0,
                why: format!(
                    "commit index {} is beyond the last entry {last}: synced entries are missing",
                    recovered.hard_state.commit
                ),
            });
        }

        let mut wal = match segments.last() {
            Some(seg) => {
                let file = OpenOptions::new().write(true).open(&seg.path).map_err(io_err(&seg.path))?;
                if torn {
                    // Erase the torn tail for good (new records follow the last valid one, and
                    // no stale bytes may outlive a shorter rewrite), then preallocate again.
                    file.set_len(valid_len).map_err(io_err(&seg.path))?;
                    preallocate(&file, segment_size);
                }
                // After a crash of the process (not of the machine) the newest segment may hold
                // records only the page cache has: replayed, they are this replica's log, and it
                // may acknowledge them from now on, so they must be durable first. Its directory
                // entry too (the crash may have come between its creation and the sync of it).
                diskio::sync_all(&file, &seg.path).map_err(io_err(&seg.path))?;
                sync_dir(dir)?;
                let allocated = file.metadata().map_err(io_err(&seg.path))?.len();
                let fills_ahead = has_unwritten_extents(&file);
                Wal {
                    dir: dir.to_path_buf(),
                    segment_size,
                    file: Arc::new(file),
                    file_len: valid_len,
                    filled: valid_len,
                    allocated,
                    fills_ahead,
                    segments,
                    buf: BytesMut::new(),
                    unsynced: false,
                    hard_state,
                    deleting: None,
                    next: None,
                    written_back: valid_len,
                    failure: Arc::default(),
                    syncing: Arc::default(),
                }
            }
            None => {
                let path = segment_path(dir, 1);
                let file = create_segment(dir, &path, segment_size)?;
                let allocated = file.metadata().map_err(io_err(&path))?.len();
                let fills_ahead = has_unwritten_extents(&file);
                Wal {
                    dir: dir.to_path_buf(),
                    segment_size,
                    file: Arc::new(file),
                    file_len: 0,
                    filled: 0,
                    allocated,
                    fills_ahead,
                    segments: vec![Segment { seq: 1, path, max_index: 0 }],
                    buf: BytesMut::new(),
                    unsynced: false,
                    hard_state,
                    deleting: None,
                    next: None,
                    written_back: 0,
                    failure: Arc::default(),
                    syncing: Arc::default(),
                }
            }
        };
        use std::io::Seek;
        (&*wal.file).seek(io::SeekFrom::Start(wal.file_len)).map_err(io_err(dir))?;
        if missing_reset {
            record::encode(&mut wal.buf, &Record::Reset { index: base_index, term: base_term });
            wal.sync()?;
        }
        if !newest.has_hard_state && hard_state != HardState::default() {
            // The write that opened the newest segment was torn before its hard state (which
            // follows the records buffered with it), or the segment's first write was lost
            // altogether: give the segment its hard state now, so that compaction, which may
            // delete every older segment, can never delete the last record of it.
            record::encode(&mut wal.buf, &Record::HardState(hard_state));
            wal.sync()?;
        }
        wal.prepare_next_if_due();
        Ok((wal, recovered))
    }

    /// Buffers entries (replacing the log from the first one's index on) and the hard state.
    pub fn append(&mut self, entries: &[Entry], hard_state: Option<HardState>) {
        for e in entries {
            record::encode_entry(&mut self.buf, e);
            let seg = self.segments.last_mut().expect("an active segment");
            seg.max_index = seg.max_index.max(e.index);
        }
        if let Some(hs) = hard_state {
            record::encode(&mut self.buf, &Record::HardState(hs));
            self.hard_state = hs;
        }
    }

    /// Buffers a marker: a snapshot at (`index`, `term`) from the leader replaced the whole log.
    /// The snapshot file must be durable before this marker is written.
    pub fn append_reset(&mut self, index: Index, term: Term) {
        record::encode(&mut self.buf, &Record::Reset { index, term });
    }

    /// Hands the buffered records to the kernel in one write (not yet durable), rolling over to
    /// a new segment first when the current one is full.
    pub fn write(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.file_len >= self.segment_size {
            self.roll()?;
        }
        self.check()?;
        let path = &self.segments.last().expect("an active segment").path;
        diskio::write_all(&self.file, path, &self.buf).map_err(|e| record_failure(&self.failure, io_err(path)(e)))?;
        self.file_len += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
        if self.fills_ahead && self.file_len >= self.filled {
            self.fill_ahead()?;
        }
        self.prepare_next_if_due();
        Ok(())
    }

    /// Asks the kernel to start writing the records written so far to the device now
    /// (`sync_file_range`, which does not wait). A sync already handed to another thread then
    /// finds them written or on their way while that thread is still waking up, and mostly
    /// waits for the device's cache flush. Only a head start: the sync writes whatever this
    /// did not.
    pub fn start_writeback(&mut self) {
        self.written_back = self.written_back.min(self.file_len);
        if self.file_len <= self.written_back {
            return;
        }
        use std::os::fd::AsRawFd;
        let (Ok(from), Ok(len)) =
            (libc::off64_t::try_from(self.written_back), libc::off64_t::try_from(self.file_len - self.written_back))
        else {
            return;
        };
        // SAFETY: `sync_file_range` only reads its integer arguments; the descriptor is owned by
        // `self.file`, which outlives the call.
        let rc = unsafe { libc::sync_file_range(self.file.as_raw_fd(), from, len, libc::SYNC_FILE_RANGE_WRITE) };
        if rc != 0 {
            tracing::debug!("starting write-back of the log: {}", io::Error::last_os_error());
        }
        self.written_back = self.file_len;
    }

    /// Starts making the next segment ready once the active one is half full. If no thread
    /// can be started for it, the roll-over creates it instead.
    fn prepare_next_if_due(&mut self) {
        if self.next.is_none() && self.file_len >= self.segment_size / 2 {
            let seq = self.segments.last().expect("an active segment").seq + 1;
            match NextSegment::start(&self.dir, seq, self.segment_size) {
                Ok(next) => self.next = Some(next),
                Err(e) => tracing::warn!("cannot make the next WAL segment ready in the background: {e}"),
            }
        }
    }

    /// Writes zeros from the end of the records up to [`ZERO_AHEAD`] bytes on (within the
    /// segment's allocated size), to the kernel only: the next sync makes them durable together
    /// with the records, converting their blocks in one metadata update.
    fn fill_ahead(&mut self) -> Result<(), WalError> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let end = (self.file_len + ZERO_AHEAD).min(self.allocated);
        let path = &self.segments.last().expect("an active segment").path;
        let mut at = self.file_len;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            diskio::write_all_at(&self.file, path, &ZEROS[..n], at)
                .map_err(|e| record_failure(&self.failure, io_err(path)(e)))?;
            at += n as u64;
        }
        self.filled = end.max(self.file_len);
        Ok(())
    }

    /// Makes everything written so far durable (one `fdatasync` for all of it).
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.write()?;
        self.check()?;
        if self.unsynced {
            self.sync_target().sync()?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// The file that holds everything written so far (after [`Wal::write`]): syncing it makes
    /// that durable, as [`Wal::sync`] would, but on whatever thread the caller likes. Older
    /// segments are synced when the log rolls over, so this one file is enough.
    pub fn sync_target(&self) -> SyncTarget {
        let path = &self.segments.last().expect("an active segment").path;
        SyncTarget {
            file: self.file.clone(),
            path: Arc::from(path.as_path()),
            failure: self.failure.clone(),
            syncing: self.syncing.clone(),
        }
    }

    /// Why the log takes no more writes, if a write or sync failed (see [`WalError::Failed`]).
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    fn check(&self) -> Result<(), WalError> {
        match self.failure.get() {
            Some(why) => Err(WalError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    /// Whether some written records are not yet durable.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced || !self.buf.is_empty()
    }

    /// Moves on to the next segment. The only wait here is a sync of the one being left: a sync
    /// covers one file, so every record in it must be durable before any in the next is synced
    /// (replay takes a bad record in a segment that is not the newest for corruption). The new
    /// file was made ready on another thread; the old one keeps its zero tail, which replay
    /// reads as its clean end.
    fn roll(&mut self) -> Result<(), WalError> {
        self.sync_target().sync()?;
        self.unsynced = false;
        let seq = self.segments.last().map_or(1, |s| s.seq + 1);
        let path = segment_path(&self.dir, seq);
        // The next segment is made ready for the active one's successor, and segments are only
        // ever added here, so it is this one.
        let next = self.next.take().inspect(|n| debug_assert_eq!(n.seq, seq));
        let file = match next.map(NextSegment::take) {
            Some(Ok(file)) => file,
            Some(Err(e)) => {
                tracing::warn!("making the next WAL segment ready failed ({e}); creating it now");
                create_segment(&self.dir, &path, self.segment_size)?
            }
            None => create_segment(&self.dir, &path, self.segment_size)?,
        };
        let allocated = file.metadata().map_err(io_err(&path))?.len();
        self.file = Arc::new(file);
        self.allocated = allocated;
        self.file_len = 0;
        self.filled = 0;
        self.written_back = 0;
        self.segments.push(Segment { seq, path, max_index: 0 });
        // Every segment holds the hard state of its creation, so older segments can be deleted.
        // It goes after the records already buffered (whose hard state it already includes),
        // so a torn write cannot leave a commit index ahead of the entries.
        record::encode(&mut self.buf, &Record::HardState(self.hard_state));
        Ok(())
    }

    /// Drops the oldest segments whose entries a snapshot at `index` covers entirely, and
    /// deletes their files on another thread: the sync that must come first (what survives
    /// must be durable before what it replaces goes, the newest segment's hard state above
    /// all), the deletions and the directory's sync can each wait long behind a busy disk (a
    /// snapshot being written, say), and a leader's loop that waits sends no heartbeats, so its
    /// followers would depose it. Segments are deleted in the order they were dropped; a crash
    /// meanwhile leaves some on disk, which replay reads as it would a log never compacted.
    /// Returns how many segments were dropped.
    pub fn compact(&mut self, index: Index) -> Result<usize, WalError> {
        // The newest segment's records (its opening hard state above all) reach the kernel
        // here; the thread makes them durable before deleting what they replace.
        self.write()?;
        let count = self.segments[..self.segments.len() - 1].iter().take_while(|s| s.max_index <= index).count();
        if count == 0 {
            return Ok(0);
        }
        let paths: Vec<PathBuf> = self.segments.drain(..count).map(|s| s.path).collect();
        let target = self.sync_target();
        let dir = self.dir.clone();
        self.finish_deletions();
        let job = move || {
            // A failure here is the log's (the replica's loop sees it and stops): the error is
            // reported to this sync alone, and the loop's next sync of the same file would
            // succeed without the lost pages.
            if let Err(e) = target.sync() {
                tracing::error!(dir = %dir.display(), "syncing the log before deleting compacted segments: {e}");
                return;
            }
            for path in &paths {
                if let Err(e) = fs::remove_file(path) {
                    tracing::warn!(path = %path.display(), "deleting a compacted WAL segment: {e}");
                }
            }
            if let Err(e) = sync_dir(&dir) {
                tracing::warn!("after deleting compacted WAL segments: {e}");
            }
        };
        let handle = std::thread::Builder::new().name("wal-compact".into()).spawn(job).map_err(io_err(&self.dir))?;
        self.deleting = Some(handle);
        Ok(count)
    }

    /// Waits until the segments of the last [`Wal::compact`] are deleted.
    pub fn finish_deletions(&mut self) {
        if let Some(handle) = self.deleting.take() {
            let _ = handle.join();
        }
    }

    /// Number of segment files (for tests and status).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}
