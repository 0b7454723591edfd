//! Time in the cell: lock-delays end by the log's clock, which runs at the rate of real time
//! whatever the replicas' wall clocks do. The replicas run under libfaketime (Debian's
//! `libfaketime`), whose offset a test steps by rewriting a file.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{bin, faketime_env, lines_of, wait_converged, CellOptions, Pids, TestCell};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// A holder dies holding a lock with a 20 s lock-delay; while the delay runs every replica's
/// wall clock steps two hours ahead (an NTP step, or a new master whose clock is ahead) and
/// the cell goes on taking writes. The lock stays unavailable until 20 s of real time have
/// passed: stamped with the wall clock, the next entry would have ended the delay at once.
#[test]
fn a_wall_clock_step_does_not_end_a_lock_delay_early() {
    let dir = tempfile::tempdir().unwrap();
    let offset: PathBuf = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let cell =
        TestCell::start(CellOptions { session_lease_ms: 1000, env: faketime_env(&offset), ..CellOptions::default() });
    let rt = runtime();
    let mut client = cell.client(Duration::from_secs(5));
    rt.block_on(wait_converged(&client, 0, Duration::from_secs(30))).unwrap();
    let chubby = |args: &[&str]| {
        let out = Command::new(bin("chubby")).args(["--cell", &cell.cell_arg()]).args(args).output().unwrap();
        out.status.code().unwrap_or(-1)
    };
    let mut pids = Pids::default();
    let mut holder = Command::new(bin("chubby"))
        .args(["--cell", &cell.cell_arg(), "lock", "--lock-delay", "20s", "/ls/local/job", "--"])
        .args(["sh", "-c", "echo $$; exec sleep 600"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    pids.0.push(holder.id());
    let shell: u32 =
        lines_of(holder.stdout.take().unwrap()).recv_timeout(Duration::from_secs(30)).unwrap().parse().unwrap();
    pids.0.push(shell);
    // The holder dies without closing its session: it expires after its lease, and the
    // lock-delay starts.
    pids.kill(holder.id());
    let _ = holder.wait();
    let died = Instant::now();
    let mut free = false;
    for _ in 0..100 {
        // No holder any more (exit 1: free), yet busy (exit 4): the lock-delay runs.
        if chubby(&["sequencer", "/ls/local/job"]) == 1 {
            free = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(free, "the holder's session expired");
    let delay_began = Instant::now();
    assert_eq!(chubby(&["lock", "--timeout", "0", "/ls/local/job", "--", "true"]), 4, "in lock-delay");

    std::fs::write(&offset, "+2h\n").unwrap();
    for i in 0..5u32 {
        rt.block_on(client.put(&format!("after-step-{i}"), bytes::Bytes::from_static(b"x"))).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    if delay_began.elapsed() < Duration::from_secs(15) {
        assert_eq!(
            chubby(&["lock", "--timeout", "0", "/ls/local/job", "--", "true"]),
            4,
            "still in lock-delay {:?} after the holder died, the clocks stepped 2 h ahead",
            died.elapsed()
        );
    }
    // It ends in real time: the lock is granted within the delay and a margin.
    let mut granted = false;
    while delay_began.elapsed() < Duration::from_secs(40) {
        if chubby(&["lock", "--timeout", "0", "/ls/local/job", "--", "true"]) == 0 {
            granted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(granted, "the lock-delay ended");
    assert!(died.elapsed() >= Duration::from_secs(19), "not before 20 s from the holder's death: {:?}", died.elapsed());
}
