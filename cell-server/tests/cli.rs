//! The replica binary's command line: bad settings are refused with a clear message and exit
//! code 2, before anything is started.

use std::process::Command;

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cell-server")).args(args).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_flags_are_clear_errors() {
    let (code, err) = run(&["--id", "4", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2", "--data-dir", "/tmp/none"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--id 4 is not one of the ids in --peers"), "{err}");
    let (code, err) = run(&["--id", "1", "--peers", "1=127.0.0.1:1", "--data-dir", "/tmp/x", "--fsync", "maybe"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("always, everysec or no"), "{err}");
    let (code, err) = run(&["--id", "1", "--peers", "1=127.0.0.1:1"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("--data-dir is required"), "{err}");
    let (code, err) = run(&["local", "--replicas", "0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("between 1 and 9"), "{err}");
}

#[test]
fn address_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let peers = format!("1={addr}");
    let (code, err) = run(&["--id", "1", "--peers", &peers, "--data-dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("cannot listen on"), "{err}");
}

#[test]
fn local_refuses_ports_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let (code, err) =
        run(&["local", "--replicas", "1", "--base-port", &port.to_string(), "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("is another cell running?"), "{err}");
}
