//! Writing the log: appends buffered and written in one go, syncs, zeros written ahead,
//! roll-over to the next segment, and compaction (see the module documentation).

use super::*;

impl Wal {
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
    pub(super) fn prepare_next_if_due(&mut self) {
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
    pub(super) fn fill_ahead(&mut self) -> Result<(), WalError> {
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

    pub(super) fn check(&self) -> Result<(), WalError> {
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
    pub(super) fn roll(&mut self) -> Result<(), WalError> {
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
