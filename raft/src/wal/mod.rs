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
//!   page between them reads as zeros: after a power loss, unsynced pages of the preallocated
//!   file can be lost out of order, and since a sync covers the whole file, nothing from such a
//!   page on was ever durable. An invalid record anywhere else, or followed by a valid one with
//!   no zero page between, is corruption of synced data: [`WalError::Corrupt`] stops the
//!   replica, never a silent loss.
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
//!   torn-tail rule below relies on the device losing unsynced writes in whole pages (4 KiB),
//!   as it did before for the page where each sync's records begin. A device that can tear a
//!   page at a smaller sector, so that a later page of the same unsynced write survives, makes
//!   replay stop with [`WalError::Corrupt`] naming the spot (a clear refusal, never a silent
//!   truncation); the operator then drops that replica's log and lets it catch up.
//! - **Compaction.** Once a snapshot covers index `s`, the oldest segments whose entries are all
//!   at or below `s` are deleted (only a prefix: a later segment may depend on an earlier one's
//!   truncation). Every new segment starts with the current hard state, so deleting old
//!   segments never loses it.

pub(crate) mod record;
mod segment;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::types::{Entry, HardState, Index, Term};
use record::{Bad, Record};
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
    /// Synced data does not check out. The replica stops: an operator must decide (restore
    /// this replica from a peer by wiping its data directory).
    #[error("WAL corrupt in {path} at byte {offset}: {why}; refusing to start (wipe this replica's data directory to resync it from its peers)")]
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
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
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
        let mut valid_len = 0;
        let mut torn = false;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let last = i + 1 == seqs.len();
            let (max_index, len, torn_here) = replay.segment(&path, last)?;
            valid_len = len;
            torn = torn_here;
            segments.push(Segment { seq, path, max_index });
        }
        // Entries after the snapshot belong to it only if the log's entry at the snapshot's
        // index is the snapshot's own. Otherwise a snapshot from the leader was saved but the
        // crash came before its reset marker: the old suffix was being discarded.
        if replay.base_entry_term.is_some_and(|t| t != base_term) {
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
                    file.sync_all().map_err(io_err(&seg.path))?;
                }
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
                }
            }
        };
        use std::io::Seek;
        (&*wal.file).seek(io::SeekFrom::Start(wal.file_len)).map_err(io_err(dir))?;
        if wal.file_len == 0 && hard_state != HardState::default() {
            // The newest segment's first write was torn: give it its hard state now, so
            // compaction can never delete the last record of it.
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
        let path = &self.segments.last().expect("an active segment").path;
        (&*self.file).write_all(&self.buf).map_err(io_err(path))?;
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
        use std::os::unix::fs::FileExt;
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let end = (self.file_len + ZERO_AHEAD).min(self.allocated);
        let path = &self.segments.last().expect("an active segment").path;
        let mut at = self.file_len;
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], at).map_err(io_err(path))?;
            at += n as u64;
        }
        self.filled = end.max(self.file_len);
        Ok(())
    }

    /// Makes everything written so far durable (one `fdatasync` for all of it).
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.write()?;
        if self.unsynced {
            let path = &self.segments.last().expect("an active segment").path;
            self.file.sync_data().map_err(io_err(path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// The file that holds everything written so far (after [`Wal::write`]): syncing it makes
    /// that durable, as [`Wal::sync`] would, but on whatever thread the caller likes. Older
    /// segments are synced when the log rolls over, so this one file is enough.
    pub fn sync_target(&self) -> Arc<File> {
        self.file.clone()
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
        let old = &self.segments.last().expect("an active segment").path;
        self.file.sync_data().map_err(io_err(old))?;
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
        let file = self.file.clone();
        let dir = self.dir.clone();
        self.finish_deletions();
        let job = move || {
            if let Err(e) = file.sync_data() {
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

/// Replays segments in order into a log that starts after `base`.
struct Replay {
    base: Index,
    /// Term of the last entry written at exactly `base`, if the log still has one.
    base_entry_term: Option<Term>,
    out: Recovered,
}

impl Replay {
    /// Replays one segment; returns its largest entry index, the length of its valid prefix, and
    /// whether a torn record follows that prefix (rather than the end or preallocated zeros).
    fn segment(&mut self, path: &Path, last: bool) -> Result<(Index, u64, bool), WalError> {
        let mut raw = Vec::new();
        File::open(path).and_then(|mut f| f.read_to_end(&mut raw)).map_err(io_err(path))?;
        let data = Bytes::from(raw);
        let mut offset = 0usize;
        let mut max_index = 0;
        let mut torn = false;
        while offset < data.len() {
            match record::decode(&data.slice(offset..)) {
                Ok((rec, n)) => {
                    if let Record::Entry(e) = &rec {
                        max_index = max_index.max(e.index);
                    }
                    self.apply(rec, path, offset)?;
                    offset += n;
                }
                Err(bad) => {
                    if data[offset..].iter().all(|&b| b == 0) {
                        // The preallocated, never written rest of a segment, older ones too
                        // (they keep it when the log rolls over). Synced records lost to zeros
                        // in an older segment would show as a gap in the next one.
                        break;
                    }
                    let why = match bad {
                        Bad::Short => "record cut short".to_string(),
                        Bad::Corrupt(why) => why.to_string(),
                    };
                    if !last {
                        return Err(corrupt(path, offset, format!("{why} in a segment that is not the newest")));
                    }
                    // Only up to the last non-zero byte: a preallocated zero tail holds no record.
                    let end = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                    let next = next_valid_record(&data.slice(..end), offset + 1);
                    // Valid records after the bad one mean corruption of synced data, unless a
                    // whole page between them reads as zeros: a page of the preallocated file
                    // that never reached the disk. Write-back after a power loss can lose pages
                    // out of order, but only of writes no sync covered; and a sync covers the
                    // whole file, so nothing from that page on was ever durable or acknowledged.
                    if let Some(next) = next.filter(|&n| !has_zero_page(&data[offset..n], offset)) {
                        return Err(corrupt(path, offset, format!("{why}, followed by a valid record at byte {next}")));
                    }
                    let lost =
                        if next.is_some() { ", with a page of zeros: writes lost in a power failure" } else { "" };
                    let msg = format!(
                        "WAL {}: torn tail at byte {offset} ({why}{lost}); dropping {} unsynced bytes",
                        path.display(),
                        data.len() - offset
                    );
                    tracing::warn!("{msg}");
                    self.out.warnings.push(msg);
                    torn = true;
                    break;
                }
            }
        }
        Ok((max_index, offset as u64, torn))
    }

    fn apply(&mut self, rec: Record, path: &Path, offset: usize) -> Result<(), WalError> {
        let entries = &mut self.out.entries;
        match rec {
            Record::HardState(hs) => self.out.hard_state = hs,
            Record::Reset { index, term } => {
                if index > self.base {
                    return Err(corrupt(
                        path,
                        offset,
                        format!(
                            "the log was reset to a snapshot at {index}, but the newest valid snapshot is at {}",
                            self.base
                        ),
                    ));
                }
                entries.clear();
                if index == self.base {
                    self.base_entry_term = Some(term);
                }
            }
            Record::Entry(e) => {
                if e.index <= self.base {
                    // A write this far back replaced everything after it; the snapshot holds
                    // what was there.
                    entries.clear();
                    self.base_entry_term = (e.index == self.base).then_some(e.term);
                    return Ok(());
                }
                let last = self.base + entries.len() as u64;
                if e.index > last + 1 {
                    return Err(corrupt(path, offset, format!("entry {} follows {last}: a gap in the log", e.index)));
                }
                entries.truncate((e.index - self.base - 1) as usize);
                entries.push(e);
            }
        }
        Ok(())
    }
}

fn corrupt(path: &Path, offset: usize, why: String) -> WalError {
    WalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, why }
}

/// The page size of write-back: a power loss loses unsynced writes in whole pages.
const PAGE: usize = 4096;

/// Whether `region`, which starts at byte `start` of its file, holds a whole page-aligned page
/// of zeros.
fn has_zero_page(region: &[u8], start: usize) -> bool {
    let first = start.div_ceil(PAGE) * PAGE - start;
    region.get(first..).is_some_and(|r| r.chunks_exact(PAGE).any(|page| page.iter().all(|&b| b == 0)))
}

/// The first offset at or after `from` where a valid record starts, if any. Used to tell a torn
/// tail (nothing valid after the bad record) from corruption in the middle of synced data.
fn next_valid_record(data: &Bytes, from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(record::HEADER_LEN)).find(|&p| record::decode(&data.slice(p..)).is_ok())
}
