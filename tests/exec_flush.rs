//! A program started while this process has a file of a mount open, written and not yet
//! stored, flushes it in its exec. A binary of its own: while its cell is cut off, every
//! program any test of the same process starts would wait in its exec too, so another test's
//! timing would fail for this one's sake.

use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use e2e_tests::{exit_within, fuse_available, wait_converged, CellOptions, Mount, Netns, TestCell};

/// A program started while this process has a file of the mount open, written and not yet
/// stored, flushes it in its exec (close-on-exec), which waits on the cell. While a cell out
/// of reach keeps that flush waiting, the daemon must not hang on the exec'ing process (its
/// /proc files block until the exec is done): once the cell is back the flush goes through,
/// the program runs, and the daemon serves on.
#[test]
fn a_flush_in_an_exec_waiting_on_an_unreachable_cell_does_not_hang_the_daemon() {
    if !fuse_available("a_flush_in_an_exec_waiting_on_an_unreachable_cell_does_not_hang_the_daemon") {
        return;
    }
    let ns = Netns::create(3).unwrap_or_else(|e| panic!("this test needs root and iproute2: {e}"));
    let cell =
        TestCell::start(CellOptions { session_lease_ms: 5000, host: ns.host_ip.clone(), ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).expect("leader");
    let m = Mount::start_in(&cell, &["--rpc-timeout", "120s", "--grace", "120s"], Some(&ns));
    fs::write(m.path("job"), "v1").expect("write");
    let mut file = fs::OpenOptions::new().read(true).write(true).open(m.path("job")).expect("open");
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut file, &mut seen).expect("read");
    let healer = ns.healer(); // started before the write: its exec has nothing to flush
    ns.cut().expect("cut");
    file.write_all(b"v2").expect("a write of a loaded copy needs no call to the cell");

    let mut program = Command::new("true").spawn().expect("true");
    std::thread::sleep(Duration::from_millis(1000)); // its flush waits on the cell meanwhile
    healer.heal().expect("heal");
    let st = exit_within(&mut program, Duration::from_secs(60));
    if st.is_none() {
        let _ = program.kill();
    }
    assert!(st.is_some_and(|s| s.success()), "the program whose exec flushed the file ran: {st:?}");
    assert_eq!(fs::read_to_string(m.path("job")).expect("the daemon still serves"), "v1v2");
    drop(file);
}
