//! Opening the log: replay of every segment on top of the snapshot, the torn tail cut off, the
//! newest segment and the directory synced before anything is appended (see the module
//! documentation, "Recovery" and "Opening").

use super::*;

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
}
