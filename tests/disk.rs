//! Disk faults on a real replica: its data directory on a small tmpfs that fills up. Needs
//! root (`mount -t tmpfs`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::{wait_converged, CellOptions, TestCell, Tmpfs};

/// A replica whose disk fills up stops acknowledging and exits non-zero, saying why (the path
/// and the errno), rather than stay up as a silent member its cell counts on in vain; the other
/// two keep serving writes; once space is freed and it is restarted, it catches up.
#[test]
fn a_replica_whose_disk_fills_exits_with_the_cause_and_rejoins_after_space_is_freed() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut cell = TestCell::new(CellOptions { wal_segment_kib: 1024, ..CellOptions::default() });
    let tmpfs = Tmpfs::mount(&cell.data_dir(3), "4m");
    for id in 1..=3 {
        cell.start_replica(id);
    }
    cell.await_listening(Duration::from_secs(20)).unwrap();
    let mut client = cell.client(Duration::from_secs(10));
    let value = Bytes::from(vec![b'v'; 60_000]);

    // 4 MiB holds about 70 such writes: well before 300, replica 3 runs out of space.
    let mut last = 0;
    let mut writes = 0;
    let mut exited = None;
    for i in 0..300 {
        let put = rt.block_on(client.put(&format!("k{i}"), value.clone()));
        // A write in flight at replica 3 when it exits (it may lead) fails with its connection,
        // its fate unknown: that is the exit, not the cell refusing writes.
        if put.is_err() {
            exited = cell.exit_within(3, Duration::from_secs(10));
            if exited.is_some() {
                break;
            }
        }
        last = put.expect("the cell keeps taking writes");
        writes += 1;
        if let Some(st) = cell.exit_within(3, Duration::ZERO) {
            exited = Some(st);
            break;
        }
    }
    let status = exited
        .or_else(|| cell.exit_within(3, Duration::from_secs(10)))
        .unwrap_or_else(|| panic!("replica 3 still runs after {writes} writes of 60 KB onto a 4 MiB disk"));
    assert!(!status.success(), "replica 3 exits non-zero: {status}");
    let log = cell.log(3);
    assert!(log.contains("No space left on device"), "the log names the errno:\n{log}");
    assert!(log.contains(&cell.data_dir(3).display().to_string()), "the log names the path:\n{log}");

    // The other two go on.
    for i in 0..20 {
        last = rt.block_on(client.put(&format!("after{i}"), value.clone())).expect("two replicas serve");
    }

    // Space freed, replica 3 restarted: it catches up with every write.
    tmpfs.resize("64m").unwrap();
    cell.start_replica(3);
    let began = Instant::now();
    rt.block_on(wait_converged(&client, last, Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("replica 3 did not catch up in {:?}: {e}", began.elapsed()));
    assert!(cell.is_running(3));
    drop(cell);
}
