//! The log under injected disk faults and simulated power loss ([`crate::storage::diskio::DiskFaults`]):
//! a failed sync anywhere fails the log, replay syncs what a killed process left in the page
//! cache, a torn write at a sector boundary is a torn tail, and the vote survives a torn roll.

use std::fs;
use std::sync::Arc;

use bytes::Bytes;

use super::*;
use crate::storage::diskio::DiskFaults;
use crate::storage::diskio::PAGE;
use crate::types::EntryKind;

/// Small segments: the power-loss model reads a file whole at every sync.
const SIZE: u64 = 16 << 10;

fn ent(index: Index, term: Term, len: usize) -> Entry {
    Entry { index, term, kind: EntryKind::Normal, data: Bytes::from(vec![(index % 251) as u8 | 1; len]) }
}

/// Faults for a fresh directory; uninstalled when the guard goes.
struct Faulty {
    dir: tempfile::TempDir,
    faults: Arc<DiskFaults>,
}

impl Faulty {
    fn new() -> Faulty {
        let dir = tempfile::tempdir().unwrap();
        let faults = DiskFaults::install(dir.path());
        Faulty { dir, faults }
    }

    fn wal(&self) -> PathBuf {
        self.dir.path().join("wal")
    }
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.faults.uninstall();
    }
}

/// Waits (bounded) until a segment being made ready in the background, if any, is done, so
/// that the syncs it makes are not the ones a test means to fail.
fn settle(wal: &Wal) {
    for _ in 0..1000 {
        if wal.next.as_ref().is_none_or(|n| n.is_ready()) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the next segment was not made ready");
}

/// Linux reports a write-back error to one sync only, and marks the pages clean: a sync that
/// fails on compaction's thread must fail the log, or the loop's next sync of the same file
/// would succeed and vouch for entries the disk never got.
#[test]
fn a_sync_that_fails_on_the_compaction_thread_fails_the_log() {
    let f = Faulty::new();
    let (mut wal, _) = Wal::open(&f.wal(), SIZE, 0, 0).unwrap();
    let mut i = 1;
    while wal.segment_count() < 3 {
        wal.append(&[ent(i, 1, 1000)], Some(HardState { term: 1, vote: 1, commit: i }));
        wal.sync().unwrap();
        i += 1;
    }
    settle(&wal);
    let covered = wal.segments[0].max_index;
    // Entries written but not yet synced: the compaction's sync is the one that fails.
    wal.append(&[ent(i, 1, 100)], None);
    wal.write().unwrap();
    f.faults.fail_sync(1, libc::EIO);
    assert_eq!(wal.compact(covered).unwrap(), 1);
    wal.finish_deletions();
    assert!(segment_path(&f.wal(), 1).exists(), "nothing is deleted after a failed sync");
    assert!(wal.failure().is_some_and(|w| w.contains("Input/output error")), "{:?}", wal.failure());
    wal.append(&[ent(i + 1, 1, 100)], None);
    assert!(matches!(wal.sync(), Err(WalError::Failed(_))), "no later sync vouches for the lost pages");
    assert!(matches!(wal.sync_target().sync(), Err(WalError::Failed(_))));
}

/// The same on the thread the replica syncs its log on, and on the loop: once one sync failed,
/// every later one fails, whichever thread calls it.
#[test]
fn a_failed_sync_fails_every_later_one() {
    let f = Faulty::new();
    let (mut wal, _) = Wal::open(&f.wal(), SIZE, 0, 0).unwrap();
    wal.append(&[ent(1, 1, 10)], None);
    wal.write().unwrap();
    let target = wal.sync_target();
    f.faults.fail_sync(1, libc::EIO);
    assert!(std::thread::spawn(move || target.sync()).join().unwrap().is_err());
    assert!(matches!(wal.sync(), Err(WalError::Failed(_))));
    wal.append(&[ent(2, 1, 10)], None);
    assert!(matches!(wal.write(), Err(WalError::Failed(_))), "nothing more is written");
}

/// A write that fails (the disk full, say) fails the log too, with the path and the errno.
#[test]
fn a_full_disk_fails_the_log_with_the_path_and_the_errno() {
    let f = Faulty::new();
    let (mut wal, _) = Wal::open(&f.wal(), SIZE, 0, 0).unwrap();
    f.faults.space_left(3000);
    let mut result = Ok(());
    for i in 1..=10 {
        wal.append(&[ent(i, 1, 1000)], None);
        result = wal.sync();
        if result.is_err() {
            break;
        }
    }
    let e = result.expect_err("the disk fills up").to_string();
    assert!(e.contains("No space left on device") && e.contains(".wal"), "{e}");
    assert!(matches!(wal.sync(), Err(WalError::Failed(_))));
}

/// After `kill -9` the replayed records may exist only in the page cache, and the replica
/// acknowledges them as its log once it runs: opening makes them durable, so a power loss
/// afterwards keeps them, whichever unsynced pages it would have dropped.
#[test]
fn records_replayed_after_a_process_crash_survive_a_later_power_loss() {
    for seed in 0..16 {
        let f = Faulty::new();
        let (mut wal, _) = Wal::open(&f.wal(), SIZE, 0, 0).unwrap();
        let hs = HardState { term: 2, vote: 1, commit: 0 };
        wal.append(&[ent(1, 2, 10)], Some(hs));
        wal.sync().unwrap();
        let unsynced: Vec<Entry> = (2..=9).map(|i| ent(i, 2, 900)).collect();
        wal.append(&unsynced, None);
        wal.write().unwrap();
        drop(wal); // kill -9: what was written stays in the page cache, unsynced

        let (wal, rec) = Wal::open(&f.wal(), SIZE, 0, 0).unwrap();
        assert_eq!(rec.entries.len(), 9, "the page cache had every record");
        drop(wal);
        f.faults.power_loss(seed);
        let (_, rec) = Wal::open(&f.wal(), SIZE, 0, 0).unwrap();
        assert_eq!(rec.entries.len(), 9, "seed {seed}: entries replayed before were lost: {:?}", rec.warnings);
        assert_eq!(rec.hard_state, hs);
    }
}

/// A power loss can keep the later pages of an unsynced write and lose the page where it began,
/// which keeps its synced version: zeros from the end of the synced records to the end of that
/// page, then the middle of a record, then valid records. That write was never acknowledged:
/// a torn tail, not corruption.
#[test]
fn a_lost_page_where_an_unsynced_write_began_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    let hs = HardState { term: 1, vote: 1, commit: 0 };
    let synced: Vec<Entry> = (1..=3).map(|i| ent(i, 1, 300)).collect();
    wal.append(&synced, Some(hs));
    wal.sync().unwrap();
    let synced_end = wal.file_len as usize;
    assert!(!synced_end.is_multiple_of(PAGE) && synced_end < PAGE, "the synced records end inside the first page");
    // One unsynced write: a record that runs from the first page into the fourth, then
    // small records after it.
    wal.append(&[ent(4, 1, 3 * PAGE)], None);
    wal.append(&(5..=20).map(|i| ent(i, 1, 20)).collect::<Vec<_>>(), None);
    wal.write().unwrap();
    let end = wal.file_len as usize;
    drop(wal);
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    bytes[synced_end..PAGE].fill(0); // the first page as last synced
    fs::write(&path, &bytes).unwrap();
    assert!(end > 3 * PAGE);

    let (mut wal, rec) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries, synced, "the synced entries, and nothing of the torn write");
    assert_eq!(rec.hard_state, hs);
    assert_eq!(rec.warnings.len(), 1, "{:?}", rec.warnings);
    wal.append(&[ent(4, 2, 10)], Some(HardState { term: 2, vote: 1, commit: 3 }));
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    assert_eq!(rec.entries.len(), 4);
}

/// A zero header that does not reach the end of its sector, with valid records after it, is
/// not a lost page: corruption, refused.
#[test]
fn zeros_short_of_a_sector_before_valid_records_are_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    wal.append(&(1..=40).map(|i| ent(i, 1, 60)).collect::<Vec<_>>(), Some(HardState { term: 1, vote: 1, commit: 0 }));
    wal.sync().unwrap();
    drop(wal);
    let path = segment_path(dir.path(), 1);
    let mut bytes = fs::read(&path).unwrap();
    // The records are 8 + 1 + 24 + 60 bytes or so; zero the header of one in the middle.
    let data = Bytes::from(bytes.clone());
    let mut at = 0;
    for _ in 0..20 {
        at += record::decode(&data.slice(at..)).unwrap().1;
    }
    bytes[at..at + record::HEADER_LEN].fill(0);
    fs::write(&path, &bytes).unwrap();
    assert!(matches!(Wal::open(dir.path(), SIZE, 0, 0), Err(WalError::Corrupt { .. })));
}

/// Rolling over writes the records buffered so far and then the hard state into the new
/// segment. A crash that keeps those records but tears the hard state leaves the newest
/// segment without one; opening appends it, so compaction of every older segment keeps the vote.
#[test]
fn the_vote_survives_a_roll_whose_hard_state_was_torn() {
    let dir = tempfile::tempdir().unwrap();
    let voted = HardState { term: 5, vote: 3, commit: 1 };
    let (mut wal, _) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    wal.append(&[ent(1, 5, 10)], Some(voted));
    let mut i = 2;
    while wal.segment_count() < 2 {
        wal.append(&[ent(i, 5, 1000)], None);
        wal.sync().unwrap();
        i += 1;
    }
    drop(wal);
    // Tear the newest segment's hard state: its last record.
    let newest = segment_path(dir.path(), 2);
    let mut bytes = fs::read(&newest).unwrap();
    let data = Bytes::from(bytes.clone());
    let (mut at, mut last) = (0, 0);
    while let Ok((rec, n)) = record::decode(&data.slice(at..)) {
        last = at;
        assert!(!matches!(rec, Record::HardState(_)) || at > 0, "records come before the hard state");
        at += n;
    }
    assert!(matches!(record::decode(&data.slice(last..)).unwrap().0, Record::HardState(_)));
    bytes[last..at].fill(0);
    fs::write(&newest, &bytes).unwrap();

    let (mut wal, rec) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    assert_eq!(rec.hard_state, voted);
    let last_entry = rec.entries.last().unwrap().index;
    assert!(wal.segments[1].max_index == last_entry, "the newest segment kept its entries");
    wal.append(&[ent(last_entry + 1, 5, 10)], None);
    wal.sync().unwrap();
    let covered = wal.segments[0].max_index;
    assert_eq!(wal.compact(covered).unwrap(), 1);
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), SIZE, covered, 5).unwrap();
    assert_eq!(rec.hard_state.vote, 3, "the vote survived");
    assert_eq!(rec.hard_state.term, 5);
}

/// After a failed sync the kernel keeps the pages it could not write in the page cache, clean:
/// a replica restarted after it (the loop stops on the failure) must replay what the disk holds,
/// not those pages, or it would acknowledge entries that a power loss then takes.
#[test]
fn a_restart_after_a_failed_sync_replays_what_the_disk_holds() {
    let f = Faulty::new();
    let (mut wal, _) = Wal::open(&f.wal(), SIZE, 0, 0).unwrap();
    let hs = HardState { term: 3, vote: 2, commit: 0 };
    let synced: Vec<Entry> = (1..=2).map(|i| ent(i, 3, 700)).collect();
    wal.append(&synced, Some(hs));
    wal.sync().unwrap();
    wal.append(&(3..=8).map(|i| ent(i, 3, 700)).collect::<Vec<_>>(), None);
    f.faults.fail_sync(1, libc::EIO);
    assert!(wal.sync().is_err());
    drop(wal); // the replica stops; its supervisor starts it again

    let (wal, rec) = Wal::open(&f.wal(), SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries, synced, "only what reached the disk is replayed");
    drop(wal);
    f.faults.power_loss(7);
    let (_, rec) = Wal::open(&f.wal(), SIZE, 0, 0).unwrap();
    assert_eq!(rec.entries, synced);
    assert_eq!(rec.hard_state, hs);
}

/// A leader's snapshot saved, and the crash before the log's reset marker was: replay drops
/// the old suffix the snapshot replaces, and records that, so the entries appended after the
/// snapshot survive the next restart rather than go with that suffix.
#[test]
fn entries_after_a_snapshot_whose_reset_marker_was_lost_survive_the_next_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(dir.path(), SIZE, 0, 0).unwrap();
    wal.append(&(1..=5).map(|i| ent(i, 1, 50)).collect::<Vec<_>>(), Some(HardState { term: 1, vote: 1, commit: 3 }));
    wal.sync().unwrap();
    drop(wal);
    // The snapshot at 4 of term 2 is durable; its reset marker never made it.
    let (mut wal, rec) = Wal::open(dir.path(), SIZE, 4, 2).unwrap();
    assert!(rec.entries.is_empty(), "the old suffix is not the snapshot's");
    let after = vec![ent(5, 2, 50), ent(6, 2, 50)];
    wal.append(&after, Some(HardState { term: 2, vote: 0, commit: 6 }));
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = Wal::open(dir.path(), SIZE, 4, 2).unwrap();
    assert_eq!(rec.entries, after);
    assert_eq!(rec.hard_state.commit, 6);
}
