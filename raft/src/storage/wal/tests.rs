//! WAL recovery under torn writes, bit flips, overwrites, resets, rollover and compaction.

use std::fs;

use bytes::Bytes;

use super::*;
use crate::storage::diskio::PAGE;
use crate::types::EntryKind;

fn ent(index: Index, term: Term) -> Entry {
    Entry { index, term, kind: EntryKind::Normal, data: Bytes::from(format!("value-{index}-{term}")) }
}

/// Writes a log; returns the length of its records (the segment is preallocated beyond).
fn write_log(dir: &Path, entries: &[Entry], hs: HardState) -> usize {
    let (mut wal, _) = Wal::open(dir, DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    for e in entries {
        wal.append(std::slice::from_ref(e), Some(HardState { commit: e.index.saturating_sub(1), ..hs }));
        wal.sync().unwrap();
    }
    wal.append(&[], Some(hs));
    wal.sync().unwrap();
    wal.file_len as usize
}

/// The written records of a segment, without its preallocated zero tail.
fn records(path: &Path, len: usize) -> Vec<u8> {
    let mut bytes = fs::read(path).unwrap();
    assert!(bytes[len..].iter().all(|&b| b == 0), "nothing but zeros after the records");
    bytes.truncate(len);
    bytes
}

fn only_segment(dir: &Path) -> PathBuf {
    let mut files: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 1);
    files.pop().unwrap()
}

#[test]
fn reopen_returns_entries_and_hard_state() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=5).map(|i| ent(i, 1 + i / 3)).collect();
    let hs = HardState { term: 2, vote: 3, commit: 4 };
    write_log(dir.path(), &entries, hs);
    let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries, entries);
    assert_eq!(rec.hard_state, hs);
    assert!(rec.warnings.is_empty());
}

#[test]
fn later_write_replaces_conflicting_suffix() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    wal.append(&[ent(1, 1), ent(2, 1), ent(3, 1), ent(4, 1)], None);
    wal.append(&[ent(3, 2)], Some(HardState { term: 2, vote: 0, commit: 1 }));
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries, vec![ent(1, 1), ent(2, 1), ent(3, 2)]);
}

/// The last record written, cut at every length: the log comes back as it was before that
/// record, with a warning, and new writes continue cleanly after it.
#[test]
fn torn_last_record_is_truncated_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HardState { term: 1, vote: 1, commit: 2 };
    let len = write_log(dir.path(), &[ent(1, 1), ent(2, 1)], hs);
    let path = only_segment(dir.path());
    let good = records(&path, len);
    // Append one more entry record, then tear it.
    let mut extra = BytesMut::new();
    record::encode(&mut extra, &Record::Entry(ent(3, 1)));
    for cut in 1..extra.len() {
        let mut torn = good.clone();
        torn.extend_from_slice(&extra[..cut]);
        fs::write(&path, &torn).unwrap();
        let (mut wal, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
        assert_eq!(rec.entries, vec![ent(1, 1), ent(2, 1)], "cut at {cut}");
        assert_eq!(rec.hard_state, hs);
        assert_eq!(rec.warnings.len(), 1, "cut at {cut}: a warning is logged");
        assert_eq!(records(&path, good.len()), good, "the torn bytes are erased");
        // Writing after recovery lands right after the last valid record.
        wal.append(&[ent(3, 2)], None);
        wal.sync().unwrap();
        drop(wal);
        let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
        assert_eq!(rec.entries, vec![ent(1, 1), ent(2, 1), ent(3, 2)], "cut at {cut}");
        assert!(rec.warnings.is_empty());
    }
}

/// Every single-bit flip anywhere in the last record: that record is dropped with a warning,
/// everything before it survives.
#[test]
fn bit_flip_in_last_record_drops_only_that_record() {
    let dir = tempfile::tempdir().unwrap();
    let len = write_log(dir.path(), &[ent(1, 1), ent(2, 1)], HardState { term: 1, vote: 1, commit: 1 });
    let path = only_segment(dir.path());
    let good = records(&path, len);
    let mut last = BytesMut::new();
    record::encode(&mut last, &Record::Entry(ent(3, 1)));
    let start = good.len();
    let mut full = good.clone();
    full.extend_from_slice(&last);
    for byte in start..full.len() {
        for bit in 0..8 {
            let mut flipped = full.clone();
            flipped[byte] ^= 1 << bit;
            fs::write(&path, &flipped).unwrap();
            let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0)
                .unwrap_or_else(|e| panic!("flip at byte {byte} bit {bit}: {e}"));
            assert_eq!(rec.entries, vec![ent(1, 1), ent(2, 1)], "flip at byte {byte} bit {bit}");
            assert_eq!(rec.warnings.len(), 1);
        }
    }
}

/// A bad record with a valid one after it is not a torn write: the replica refuses to start
/// instead of silently dropping the records that follow.
#[test]
fn corruption_in_the_middle_stops_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let len = write_log(
        dir.path(),
        &(1..=6).map(|i| ent(i, 1)).collect::<Vec<_>>(),
        HardState { term: 1, vote: 1, commit: 6 },
    );
    let path = only_segment(dir.path());
    let good = records(&path, len);
    // Flip bits inside the second record: payload, checksum and length bytes.
    let mut first = BytesMut::new();
    record::encode(&mut first, &Record::Entry(ent(1, 1)));
    let second = first.len();
    for byte in [second, second + 2, second + 5, second + 12, second + 20] {
        let mut bad = good.clone();
        bad[byte] ^= 0x10;
        fs::write(&path, &bad).unwrap();
        match Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0) {
            Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, second as u64),
            Err(e) => panic!("byte {byte}: unexpected error {e}"),
            Ok((_, rec)) => panic!("byte {byte}: corruption accepted, {} entries", rec.entries.len()),
        }
    }
}

#[test]
fn corruption_in_an_older_segment_stops_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 200, 0, 0).unwrap();
    for i in 1..=20 {
        wal.append(&[ent(i, 1)], None);
        wal.sync().unwrap();
    }
    assert!(wal.segment_count() > 2);
    drop(wal);
    let first = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&first).unwrap();
    let n = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[n] ^= 1; // the end of an older segment's records is synced data, not a torn tail
    fs::write(&first, &bytes).unwrap();
    assert!(matches!(Wal::open(dir.path(), 200, 0, 0), Err(WalError::Corrupt { .. })));
}

#[test]
fn segments_roll_over_and_compaction_drops_covered_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 256, 0, 0).unwrap();
    let hs = HardState { term: 3, vote: 2, commit: 40 };
    for i in 1..=40 {
        wal.append(&[ent(i, 3)], Some(HardState { commit: i, ..hs }));
        wal.sync().unwrap();
    }
    let before = wal.segment_count();
    assert!(before >= 5, "{before} segments");
    let dropped = wal.compact(30).unwrap();
    assert!(dropped > 0);
    assert_eq!(wal.segment_count(), before - dropped);
    drop(wal);
    // Reopened on top of a snapshot at 30: the hard state survived and the tail is intact.
    let (_, rec) = Wal::open(dir.path(), 256, 30, 3).unwrap();
    assert_eq!(rec.hard_state, hs);
    assert_eq!(rec.entries, (31..=40).map(|i| ent(i, 3)).collect::<Vec<_>>());
}

/// Compaction off the replica's loop drops the same segments as in it, its files are gone
/// once the deletion is done, and compactions that overlap delete in order; appends go on
/// meanwhile, and the log reopens whole.
#[test]
fn compaction_in_the_background_deletes_the_covered_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 256, 0, 0).unwrap();
    let hs = HardState { term: 3, vote: 2, commit: 40 };
    // The files on disk other than the next segment, which may be being made ready.
    let files = |wal: &Wal| {
        let next = wal.next.as_ref().map(|n| n.path.clone());
        fs::read_dir(dir.path()).unwrap().filter(|e| Some(e.as_ref().unwrap().path()) != next).count()
    };
    for i in 1..=40 {
        wal.append(&[ent(i, 3)], Some(HardState { commit: i, ..hs }));
        wal.sync().unwrap();
    }
    let before = wal.segment_count();
    let first = wal.compact(20).unwrap();
    assert!(first > 0);
    assert_eq!(wal.segment_count(), before - first, "dropped from the log at once");
    for i in 41..=50 {
        wal.append(&[ent(i, 3)], Some(HardState { commit: i, ..hs }));
        wal.sync().unwrap();
    }
    let second = wal.compact(30).unwrap();
    assert!(second > 0);
    wal.finish_deletions();
    assert_eq!(files(&wal), wal.segment_count(), "every dropped segment's file is deleted");
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), 256, 30, 3).unwrap();
    assert_eq!(rec.hard_state, HardState { commit: 50, ..hs });
    assert_eq!(rec.entries, (31..=50).map(|i| ent(i, 3)).collect::<Vec<_>>());
}

#[test]
fn compaction_keeps_a_segment_whose_truncation_later_ones_rely_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), 1, 0, 0).unwrap(); // one write per segment
    wal.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>(), None);
    wal.sync().unwrap();
    wal.append(&[ent(5, 2)], None); // replaces 5..=10
    wal.sync().unwrap();
    wal.append(&[ent(6, 2)], None);
    wal.sync().unwrap();
    // A snapshot at 6 covers the second segment but not the first (which reaches 10): nothing
    // may be dropped, or replay would resurrect 7..=10 from term 1.
    assert_eq!(wal.compact(6).unwrap(), 0);
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), 1, 6, 2).unwrap();
    assert!(rec.entries.is_empty(), "{:?}", rec.entries);
}

#[test]
fn reset_marker_discards_the_old_log() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    wal.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>(), None);
    wal.append_reset(7, 2);
    wal.append(&[ent(8, 2)], Some(HardState { term: 2, vote: 0, commit: 7 }));
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 7, 2).unwrap();
    assert_eq!(rec.entries, vec![ent(8, 2)]);
    // Without the snapshot file the marker refers to, recovery must not make up a log.
    assert!(matches!(Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0), Err(WalError::Corrupt { .. })));
}

#[test]
fn commit_is_at_least_the_snapshot_index() {
    let dir = tempfile::tempdir().unwrap();
    let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 12, 1).unwrap();
    assert_eq!(rec.hard_state.commit, 12);
}

/// The leader's snapshot file was saved but the crash came before the WAL's reset marker: the
/// old, conflicting suffix must not come back after the snapshot.
#[test]
fn suffix_of_another_history_is_dropped_after_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    wal.append(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>(), Some(HardState { term: 1, vote: 1, commit: 4 }));
    wal.sync().unwrap();
    drop(wal);
    // Snapshot at 6 of our own history: the suffix stays.
    let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 6, 1).unwrap();
    assert_eq!(rec.entries, (7..=10).map(|i| ent(i, 1)).collect::<Vec<_>>());
    // Snapshot at 6 from a term-2 leader: entry 6 of term 1 is not its history.
    let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 6, 2).unwrap();
    assert!(rec.entries.is_empty(), "{:?}", rec.entries);
}

/// The hard state of the tests below: a vote that compaction must never lose.
const VOTED: HardState = HardState { term: 5, vote: 3, commit: 3 };

/// A log of entries 1..=3 and [`VOTED`], synced.
fn voted_log(dir: &Path) -> Wal {
    let (mut wal, _) = Wal::open(dir, DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    wal.append(&[ent(1, 5), ent(2, 5), ent(3, 5)], Some(VOTED));
    wal.sync().unwrap();
    wal
}

/// Reopened on top of a snapshot at 3 (the compacted entries), the log still holds the vote.
fn assert_vote_survives(dir: &Path) {
    let (_, rec) = Wal::open(dir, DEFAULT_SEGMENT_SIZE, 3, 5).unwrap();
    assert_eq!(rec.hard_state, VOTED, "the vote survived");
}

/// A crash right after a new segment was created leaves it empty. It holds nothing, so recovery
/// removes it and the log goes on in the segment before; the hard state (the vote) survives
/// that and a later compaction.
#[test]
fn hard_state_survives_an_empty_newest_segment_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    drop(voted_log(dir.path()));
    fs::File::create(segment_path(dir.path(), 2)).unwrap(); // the headless segment
    let (mut wal, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    assert_eq!(rec.hard_state, VOTED);
    assert!(!segment_path(dir.path(), 2).exists());
    assert_eq!(wal.compact(3).unwrap(), 0, "the only segment is the active one");
    wal.roll().unwrap();
    wal.sync().unwrap();
    assert_eq!(wal.compact(3).unwrap(), 1);
    drop(wal);
    assert_vote_survives(dir.path());
}

/// The first write to a new segment torn by a crash leaves it with no valid record. Recovery
/// gives it the hard state again, so compaction of the segments before it keeps the vote.
#[test]
fn hard_state_survives_a_torn_first_write_in_the_newest_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut wal = voted_log(dir.path());
    wal.roll().unwrap();
    wal.sync().unwrap();
    drop(wal);
    let second = segment_path(dir.path(), 2);
    let mut bytes = fs::read(&second).unwrap();
    bytes[..8].fill(0xa5); // the opening hard state record, torn
    fs::write(&second, &bytes).unwrap();
    let (mut wal, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    assert_eq!(rec.hard_state, VOTED);
    assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
    assert_eq!(wal.compact(3).unwrap(), 1);
    drop(wal);
    assert_vote_survives(dir.path());
}

#[test]
fn commit_beyond_the_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    wal.append(&[ent(1, 1)], Some(HardState { term: 1, vote: 1, commit: 5 }));
    wal.sync().unwrap();
    drop(wal);
    assert!(matches!(Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0), Err(WalError::Corrupt { .. })));
}

/// A new segment has its full size from the start; reopening it finds the records and takes
/// the zeros after them as the end of the log, and writes continue right after the records.
#[test]
fn preallocated_segment_reopens_cleanly_and_appends_after_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HardState { term: 2, vote: 1, commit: 2 };
    let len = write_log(dir.path(), &[ent(1, 2), ent(2, 2)], hs);
    let path = only_segment(dir.path());
    if fs::metadata(&path).unwrap().len() != DEFAULT_SEGMENT_SIZE {
        eprintln!("this file system does not preallocate; nothing to check");
        return;
    }
    let (mut wal, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries, vec![ent(1, 2), ent(2, 2)]);
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    assert_eq!(wal.file_len as usize, len);
    wal.append(&[ent(3, 2)], None);
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries, vec![ent(1, 2), ent(2, 2), ent(3, 2)]);
    assert!(rec.warnings.is_empty());
}

/// Where the file system reports a hole at or after `offset` (`SEEK_HOLE`).
fn next_hole(file: &File, offset: u64) -> u64 {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek reads integer arguments only; the descriptor is owned by `file`.
    let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, libc::SEEK_HOLE) };
    assert!(at >= 0, "SEEK_HOLE: {}", io::Error::last_os_error());
    at as u64
}

/// Group commits of a few kilobytes fill a preallocated segment with written zeros a
/// megabyte ahead of the records (so a sync seldom converts unwritten blocks), never write
/// over a record, and never grow the segment.
#[test]
fn zeros_are_written_ahead_of_the_records_within_the_segment() {
    const SEGMENT: u64 = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SEGMENT, 0, 0).unwrap();
    let path = only_segment(dir.path());
    let file = File::open(&path).unwrap();
    // Only where the file system keeps preallocated space as unwritten holes is there anything
    // to see; elsewhere the records must still come back whole.
    let shows_unwritten = fs::metadata(&path).unwrap().len() == SEGMENT && next_hole(&file, 0) == 0;
    let big =
        |index: Index| Entry { index, term: 1, kind: EntryKind::Normal, data: Bytes::from(vec![index as u8; 900]) };
    let mut index = 0;
    // Where the written blocks end after each sync: they move a megabyte at a time, not a
    // block at a time with the records.
    let mut ends = std::collections::BTreeSet::new();
    while wal.file_len < SEGMENT - 300_000 {
        let group: Vec<Entry> = (index + 1..=index + 5).map(big).collect();
        index += 5;
        wal.append(&group, Some(HardState { term: 1, vote: 1, commit: index - 5 }));
        wal.sync().unwrap();
        if shows_unwritten {
            let end = next_hole(&file, 0);
            assert!(end >= wal.file_len, "written blocks end at {end}, before the records at {}", wal.file_len);
            ends.insert(end);
        }
        assert_eq!(fs::metadata(&path).unwrap().len(), SEGMENT, "the segment keeps its size");
    }
    if shows_unwritten {
        assert!(ends.len() as u64 <= SEGMENT / ZERO_AHEAD + 1, "written blocks ended at {ends:?}");
    }
    let len = wal.file_len as usize;
    drop(wal);
    records(&path, len);
    let (_, rec) = Wal::open(dir.path(), SEGMENT, 0, 0).unwrap();
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    assert_eq!(rec.entries.len() as u64, index);
    assert!(rec.entries.iter().zip(1..).all(|(e, i)| *e == big(i)));
    if !shows_unwritten {
        eprintln!("this file system shows no unwritten space; only the records were checked");
    }
}

/// Waits (bounded) until the segment made ready in the background is created and durable.
fn wait_for_ready_segment(wal: &Wal) -> PathBuf {
    let next = wal.next.as_ref().expect("the next segment is being made ready");
    for _ in 0..1000 {
        if next.is_ready() {
            assert!(next.path.exists(), "created");
            return next.path.clone();
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} was not created", next.path.display());
}

/// The next segment is created while the active one fills its second half, and the log rolls
/// over into that very file; one made ready but never used is removed on close, and the whole
/// log reads back.
#[test]
fn the_log_rolls_over_into_a_segment_made_ready_beforehand() {
    const SIZE: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    let big = |i: Index| Entry { index: i, term: 1, kind: EntryKind::Normal, data: Bytes::from(vec![7u8; 1000]) };
    let mut i = 1;
    while wal.file_len < SIZE / 2 {
        assert!(wal.next.is_none(), "nothing is prepared before the segment is half full");
        wal.append(&[big(i)], None);
        wal.sync().unwrap();
        i += 1;
    }
    let ready = wait_for_ready_segment(&wal);
    assert_eq!(ready, segment_path(dir.path(), 2));
    // Rolling over must create no file: it goes on even with the directory moved away.
    let moved = dir.path().with_extension("moved");
    fs::rename(dir.path(), &moved).unwrap();
    while wal.segment_count() < 2 {
        wal.append(&[big(i)], None);
        wal.sync().unwrap_or_else(|e| panic!("rolling over tried the file system: {e}"));
        i += 1;
    }
    fs::rename(&moved, dir.path()).unwrap();
    while wal.file_len < SIZE / 2 {
        wal.append(&[big(i)], None);
        wal.sync().unwrap();
        i += 1;
    }
    assert_eq!(wait_for_ready_segment(&wal), segment_path(dir.path(), 3));
    drop(wal);
    assert!(!segment_path(dir.path(), 3).exists(), "an unused prepared segment is removed on close");
    let (_, rec) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries, (1..i).map(big).collect::<Vec<_>>());
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
}

/// A crash while the next segment is ready but unused leaves it on disk, all zeros, after the
/// segment the log was writing, whose last write may be torn. Recovery removes the empty one
/// and cuts the torn tail of the one before, which is then the newest (a torn record in an
/// older segment would be corruption).
#[test]
fn a_crash_with_the_next_segment_ready_recovers_the_segment_before_it() {
    const SIZE: u64 = 64 << 10;
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    let hs = HardState { term: 2, vote: 1, commit: 0 };
    let mut entries = Vec::new();
    let mut i = 1;
    while wal.file_len < SIZE / 2 {
        let e = Entry { index: i, term: 2, kind: EntryKind::Normal, data: Bytes::from(vec![9u8; 500]) };
        wal.append(std::slice::from_ref(&e), Some(HardState { commit: i - 1, ..hs }));
        wal.sync().unwrap();
        entries.push(e);
        i += 1;
    }
    let ready = wait_for_ready_segment(&wal);
    let synced_len = wal.file_len;
    // One more write that the crash tears: its record is cut short on disk.
    wal.append(&[ent(i, 2)], None);
    wal.write().unwrap();
    let torn_end = wal.file_len;
    std::mem::forget(wal); // the crash: no orderly close
    let active = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&active).unwrap();
    bytes[(synced_len + (torn_end - synced_len) / 2) as usize..torn_end as usize].fill(0);
    fs::write(&active, &bytes).unwrap();
    assert!(ready.exists());

    let (mut wal, rec) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries, entries, "every synced entry, and not the torn one");
    assert_eq!(rec.hard_state, HardState { commit: i - 2, ..hs });
    assert_eq!(rec.warnings.len(), 1, "the torn tail is reported: {:?}", rec.warnings);
    assert!(!ready.exists(), "the empty segment is removed");
    assert_eq!(wal.segment_count(), 1);
    wal.append(&[ent(i, 3)], Some(HardState { term: 3, vote: 1, commit: i - 1 }));
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries.len(), entries.len() + 1);
    assert_eq!(rec.entries.last(), Some(&ent(i, 3)));
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
}

/// After a power loss the kernel may have written some unsynced pages and not an earlier one:
/// a page of zeros (the preallocated file's never-written bytes) with valid records after it.
/// Nothing from that page on was covered by a sync, so it is a torn tail, not corruption; less
/// than a page of zeros is still corruption.
#[test]
fn a_lost_unsynced_page_before_valid_records_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let entries: Vec<_> = (1..=400).map(|i| ent(i, 1)).collect();
    let len = write_log(dir.path(), &entries, HardState { term: 1, vote: 1, commit: 400 });
    assert!(len > 3 * PAGE, "the log spans several pages ({len} bytes)");
    let path = only_segment(dir.path());
    let good = records(&path, len);

    // Less than a page of zeros in the middle, valid records after: corruption.
    let mut bad = good.clone();
    bad[PAGE + 100..PAGE + 300].fill(0);
    fs::write(&path, &bad).unwrap();
    assert!(matches!(Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0), Err(WalError::Corrupt { .. })));

    // The whole second page lost: the log ends before it, with a warning.
    let mut lost = good.clone();
    lost[PAGE..2 * PAGE].fill(0);
    fs::write(&path, &lost).unwrap();
    let (mut wal, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    let kept = rec.entries.len();
    assert!(kept > 0 && kept < entries.len(), "a prefix is kept: {kept} entries");
    assert_eq!(rec.entries, entries[..kept], "exactly the entries before the lost page");
    assert!(rec.warnings.iter().any(|w| w.contains("power failure")), "{:?}", rec.warnings);
    let end_of_kept = wal.file_len as usize;
    assert!(end_of_kept <= PAGE, "nothing after the lost page is kept (log ends at {end_of_kept})");

    // New writes continue right after the kept prefix, and the log reopens cleanly.
    let next = ent(kept as u64 + 1, 2);
    wal.append(std::slice::from_ref(&next), Some(HardState { term: 2, vote: 1, commit: kept as u64 }));
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    assert_eq!(rec.entries.len(), kept + 1);
    assert_eq!(rec.entries.last(), Some(&next));
}

/// Pages of `file` in `[from, to)` that are dirty in the page cache (neither written to the
/// device nor on their way), by `cachestat(2)` (Linux 6.5); `None` where the kernel lacks it.
fn dirty_pages(file: &File, from: u64, to: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let range = Range { off: from, len: to - from };
    let mut stat = Stat::default();
    // SAFETY: both pointers are to live, properly laid out structs for the call's duration; the
    // descriptor is owned by `file`.
    let rc = unsafe { libc::syscall(SYS_CACHESTAT, file.as_raw_fd(), &range, &mut stat, 0) };
    (rc == 0).then_some(stat.nr_dirty)
}

/// A follower starts its records' write-back as soon as it has handed the sync to the sync
/// thread: afterwards none of their pages is left dirty, so that sync finds them on their way
/// to the device and mostly waits for the cache flush.
#[test]
fn starting_write_back_leaves_no_record_page_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    wal.append(&(1..=200).map(|i| ent(i, 1)).collect::<Vec<_>>(), None);
    wal.write().unwrap();
    let end = wal.file_len;
    let Some(before) = dirty_pages(&wal.file, 0, end) else {
        eprintln!("this kernel has no cachestat(2): write-back was not observed");
        return;
    };
    if before == 0 {
        eprintln!("this file system keeps no dirty pages for write-back (tmpfs?): nothing to observe");
        return;
    }
    wal.start_writeback();
    assert_eq!(dirty_pages(&wal.file, 0, end), Some(0), "{before} dirty pages before");
    // After that sync, records written later (into the same last page) are handed on too. (A
    // page still on its way to the device is skipped: the sync that follows writes it.)
    wal.sync().unwrap();
    wal.append(&[ent(201, 1)], None);
    wal.write().unwrap();
    assert!(dirty_pages(&wal.file, 0, wal.file_len).unwrap() > 0);
    wal.start_writeback();
    assert_eq!(dirty_pages(&wal.file, 0, wal.file_len), Some(0));
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), DEFAULT_SEGMENT_SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries.len(), 201);
}
