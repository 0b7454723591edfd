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
    let (code, err) = run(&["--id", "1", "--peers", &peers, "--data-dir", dir.path().to_str().unwrap(), "--insecure"]);
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

/// A replica serves mutual TLS or, only when told so, plaintext; the identity it is given
/// must be sound: all three files, a key nobody else can read, its own replica's certificate.
#[test]
fn a_replica_needs_its_own_certificate_or_an_explicit_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = ["--id", "1", "--peers", "1=127.0.0.1:1", "--data-dir", data.to_str().unwrap()];
    let (code, err) = run(&base);
    assert_eq!(code, Some(2));
    assert!(err.contains("give --cert, --key and --ca (mutual TLS), or --insecure"), "{err}");

    let tls = dir.path().join("tls");
    let issue = |principal: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_cell-server"))
            .args(["cert", "--dir", tls.to_str().unwrap(), principal, "--san", "127.0.0.1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    issue("replica/1");
    issue("replica/2");
    let file = |name: &str| tls.join(name).to_str().unwrap().to_string();
    let with = |cert: &str, key: &str, extra: &[&str]| {
        let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        args.extend(["--cert".into(), file(cert), "--key".into(), file(key), "--ca".into(), file("ca.pem")]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args)
    };
    let (code, err) = with("replica-2.pem", "replica-2.key", &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("not this replica (replica/1)"), "{err}");
    let (code, err) = with("replica-1.pem", "replica-1.key", &["--insecure"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("exclude each other"), "{err}");
    let (code, err) = run(&[&base[..], &["--cert", &file("replica-1.pem")]].concat());
    assert_eq!(code, Some(2));
    assert!(err.contains("needs all three"), "{err}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tls.join("replica-1.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, err) = with("replica-1.pem", "replica-1.key", &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("readable by its owner only"), "{err}");
    std::fs::set_permissions(tls.join("replica-1.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // A key owned by someone else (its owner could read it), and an expired certificate.
    std::os::unix::fs::chown(tls.join("replica-1.key"), Some(65534), None).unwrap();
    let (code, err) = with("replica-1.pem", "replica-1.key", &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("must be owned by this user"), "{err}");
    // Nor a certificate someone else could replace.
    std::os::unix::fs::chown(tls.join("replica-1.key"), Some(0), None).unwrap();
    std::os::unix::fs::chown(tls.join("replica-1.pem"), Some(65534), None).unwrap();
    let (code, err) = with("replica-1.pem", "replica-1.key", &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("replica-1.pem: must be owned by this user"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_cell-server"))
        .args(["cert", "--dir", tls.to_str().unwrap(), "replica/1", "--san", "127.0.0.1", "--expired"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let (code, err) = with("replica-1.pem", "replica-1.key", &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("the certificate expired on"), "{err}");
    assert!(!data.exists(), "nothing is started or written before the settings are sound");
}

/// A process this test started, stopped by its PID when the test ends, however it ends.
struct Stopped(std::process::Child);

impl Stopped {
    fn stop(&mut self) {
        // SAFETY: kill of the child this test started, by its PID.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// Runs cell-server with `args` for at most 30 s (one that starts after all is stopped, by
/// its PID): its exit code (`None` if it had to be stopped) and what it printed.
fn run_bounded(args: &[&str]) -> (Option<i32>, String) {
    let err_file = tempfile::NamedTempFile::new().unwrap();
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_cell-server")).args(args).stderr(err_file.reopen().unwrap()).spawn().unwrap();
    let mut code = None;
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            code = status.code();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if code.is_none() {
        // SAFETY: kill of the child this test started, by its PID.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
    }
    (code, std::fs::read_to_string(err_file.path()).unwrap())
}

/// A data directory holds one replica's log of one cell, and one process uses it at a time:
/// another process, another --id and another cell are refused before anything is read.
#[test]
fn a_data_directory_is_refused_to_another_process_replica_or_cell() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let peers = format!("1=127.0.0.1:{port}");
    let first = Command::new(env!("CARGO_BIN_EXE_cell-server"))
        .args(["--id", "1", "--peers", &peers, "--data-dir", data, "--insecure"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut first = Stopped(first);
    // The lock is taken before the identity is written.
    let identity = dir.path().join("data/IDENTITY");
    for _ in 0..500 {
        if identity.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(identity.exists(), "the first replica never recorded its identity");
    let other = "1=127.0.0.1:1";
    let (code, err) = run_bounded(&["--id", "1", "--peers", other, "--data-dir", data, "--insecure"]);
    let pid = first.0.id();
    first.stop();
    assert_eq!(code, Some(1));
    assert!(err.contains(&format!("in use by another cell-server process (pid {pid})")), "{err}");
    let (code, err) = run(&["--id", "2", "--peers", "1=127.0.0.1:1,2=127.0.0.1:2", "--data-dir", data, "--insecure"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("holds replica 1's log, not replica 2's"), "{err}");
    let (code, err) = run(&["--id", "1", "--peers", other, "--data-dir", data, "--insecure", "--cell-name", "prod"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("belongs to cell \"local\", not \"prod\""), "{err}");
    assert_eq!(std::fs::read_to_string(&identity).unwrap().matches("replica = 1").count(), 1);
}
