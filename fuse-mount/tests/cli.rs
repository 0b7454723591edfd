//! The `chubby` command line without a cell: usage errors and an unreachable cell are told
//! apart by exit code, and nothing hangs past `--rpc-timeout`.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn missing_cell_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_chubby")).env_remove("CHUBBY_CELL").args(["get", "k"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CHUBBY_CELL"));
}

#[test]
fn unreachable_cell_fails_within_the_timeout() {
    // A port nobody listens on: bind, note it, release it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_chubby"))
        .args(["--cell", &format!("127.0.0.1:{port}"), "--rpc-timeout", "700ms", "put", "k", "v"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no answer from the cell"), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "bounded by --timeout, not hanging");
}
