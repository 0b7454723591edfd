//! Starting and stopping a mount: unmounted and its session ended when stopped (by SIGTERM or
//! SIGHUP, with files open or not), no mount left by a killed daemon; `cell-server local --mount`.

use super::*;

#[test]
fn stopping_the_mount_unmounts_it_and_ends_its_session() {
    if !fuse_available("stopping_the_mount_unmounts_it_and_ends_its_session") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let sessions = || cell_sessions(&cell);
    let before = sessions();
    let mut m = Mount::start(&cell, &[]);
    assert!(m.is_mounted());
    assert_eq!(sessions(), before + 1, "one session per mounted cell");
    fs::write(m.path("note"), "kept").expect("write");
    let st = m.stop().expect("chubby-mount exits on SIGTERM");
    assert!(st.success(), "{st:?}");
    assert!(!m.is_mounted(), "SIGTERM unmounts");
    assert_eq!(sessions(), before, "the session is closed, not left to expire");
    assert_eq!(String::from_utf8_lossy(&chubby(&cell, &["get", "/ls/local/note"]).stdout).trim(), "kept");
}

/// A terminal's hang-up stops the daemon as SIGTERM does, rather than killing it with its
/// mount and session left behind.
#[test]
fn sighup_unmounts_and_ends_the_session() {
    if !fuse_available("sighup_unmounts_and_ends_the_session") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let before = cell_sessions(&cell);
    let mut m = Mount::start(&cell, &[]);
    fs::write(m.path("note"), "kept").expect("write");
    let st = m.stop_with(libc::SIGHUP).expect("chubby-mount exits on SIGHUP");
    assert!(st.success(), "{st:?}");
    assert!(!m.is_mounted(), "SIGHUP unmounts");
    assert_eq!(cell_sessions(&cell), before, "the session is closed, not left to expire");

    // Under `nohup` a hang-up is not a stop.
    let m = Mount::start_nohup(&cell, &[]);
    // SAFETY: kill(2) of the daemon this test started.
    unsafe { libc::kill(m.pid() as libc::pid_t, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fs::read_to_string(m.path("note")).expect("still served after SIGHUP"), "kept");
}

/// SIGTERM while a process has a file open there (and holds its lock): the mount is detached
/// at once instead of staying behind the daemon, dead; the lock is released at the cell, so
/// another host has it at once; the open descriptor fails; and the exit status (3) says the
/// stop cut a process off.
#[test]
fn stopping_with_a_file_open_detaches_the_mount_releases_its_lock_and_says_so() {
    if !fuse_available("stopping_with_a_file_open_detaches_the_mount_releases_its_lock_and_says_so") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let (mut a, b) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    fs::write(a.path("job"), "v1").expect("write");
    let mut groups = Groups::default();
    let mut holder = flock(&["-x"], &a.path("job"), "sleep 60", &mut groups);
    await_held(&cell, "/ls/local/job");
    let open = fs::File::open(a.path("job")).expect("open");

    let st = a.stop().expect("chubby-mount exits on SIGTERM with a file open");
    assert_eq!(st.code(), Some(3), "the exit status says files were still open: {st:?}");
    assert!(!a.is_mounted(), "the mount is detached, not left dead");
    assert!(fs::read_dir(a.dir.path()).is_ok(), "the mount point is a plain directory again");
    let got = flock(&["-n"], &b.path("job"), "true", &mut groups).wait().expect("flock -n");
    assert!(got.success(), "the stopped host's lock was released at the cell");
    let mut buf = [0u8; 8];
    assert!(std::io::Read::read(&mut &open, &mut buf).is_err(), "the cut-off descriptor fails");
    groups.kill(holder.id());
    let _ = holder.wait();
}

/// `kill -9` of the daemon (or a crash): its watcher detaches the mount, so the directory does
/// not stay a dead mount ("Transport endpoint is not connected"), even with a file open there.
#[test]
fn a_killed_daemon_leaves_no_mount_behind() {
    if !fuse_available("a_killed_daemon_leaves_no_mount_behind") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let mut m = Mount::start(&cell, &[]);
    fs::write(m.path("note"), "kept").expect("write");
    let open = fs::File::open(m.path("note")).expect("open");
    m.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.is_mounted() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!m.is_mounted(), "the killed daemon's mount is gone");
    assert!(fs::read_dir(m.dir.path()).is_ok(), "the mount point is a plain directory again");
    drop(open);
}

/// The README's main job with the mount: `cell-server local --mount DIR` serves the cell at
/// DIR/local, and SIGTERM unmounts it before the cell stops.
#[test]
fn cell_server_local_mounts_the_cell_and_unmounts_it_when_stopped() {
    if !fuse_available("cell_server_local_mounts_the_cell_and_unmounts_it_when_stopped") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let at = dir.path().join("ls");
    let mount_arg = at.to_string_lossy().to_string();
    let LocalCell { child: mut local, lines, cell, output: _output, env } =
        LocalCell::start(&dir.path().join("cell"), &["--mount", &mount_arg]);
    struct Detach<'a>(&'a Path);
    impl Drop for Detach<'_> {
        fn drop(&mut self) {
            detach(self.0);
        }
    }
    let _detach = Detach(&at);
    assert!(lines.iter().any(|l| l.starts_with("mounted at")), "{lines:?}");
    fs::write(at.join("local/greeting"), "hello\n").expect("write through the mount");
    let got =
        Command::new(bin("chubby")).env("CHUBBY_CELL", &cell).envs(env).args(["get", "/ls/local/greeting"]).output();
    assert_eq!(String::from_utf8_lossy(&got.expect("chubby get").stdout), "hello\n");

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(local.id() as libc::pid_t, libc::SIGTERM) };
    let st = exit_within(&mut local, Duration::from_secs(20));
    if st.is_none() {
        let _ = local.kill();
        let _ = local.wait();
    }
    assert!(st.is_some_and(|s| s.success()), "cell-server local stops on SIGTERM: {st:?}");
    assert!(!is_mount_point(&at), "the mount is gone once the cell stopped");
}

/// "I am alive" files from the shell: in a directory given `user.chubby.ephemeral_children`,
/// the files the mount creates are ephemeral nodes of its session. Each outlives the process
/// that wrote it, and goes when the mount's session does; files elsewhere stay.
#[test]
fn files_made_in_an_ephemeral_children_directory_go_with_the_mounts_session() {
    if !fuse_available("files_made_in_an_ephemeral_children_directory_go_with_the_mounts_session") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let mut m = Mount::start(&cell, &["--idle-sessions", "300ms"]);
    fs::create_dir(m.path("alive")).expect("mkdir");
    let alive = m.path("alive");
    let set = sh(&format!("setfattr -n user.chubby.ephemeral_children -v 1 {}", alive.display()));
    assert!(set.status.success(), "{set:?}");
    assert_eq!(xattr(&alive, "user.chubby.ephemeral_children").as_deref(), Some("1"));
    let made = sh(&format!("echo host-a > {}/host-a && echo kept > {}", alive.display(), m.path("config").display()));
    assert!(made.status.success(), "{made:?}");
    let ephemeral = |path: &str| {
        let out = chubby(&cell, &["stat", "--json", path]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map(|v| v["stat"]["ephemeral"].clone())
            .unwrap_or_default()
    };
    assert_eq!(ephemeral("/ls/local/alive/host-a"), serde_json::json!(true), "made ephemeral");
    assert_eq!(ephemeral("/ls/local/config"), serde_json::json!(false), "only in that directory");
    let got = chubby(&cell, &["get", "/ls/local/alive/host-a"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "host-a\n", "it outlives the shell that wrote it");

    // Another user's session is closed when idle, but not while it keeps ephemeral files.
    let as_nobody = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c"])
        .arg(format!("echo nobody > {}/nobody", alive.display()))
        .output()
        .expect("setpriv");
    assert!(as_nobody.status.success(), "{as_nobody:?}");
    std::thread::sleep(Duration::from_millis(1500)); // idle sessions close after 300 ms here
    assert!(chubby(&cell, &["get", "/ls/local/alive/nobody"]).status.success(), "kept past the idle time");

    let st = m.stop().expect("chubby-mount exits on SIGTERM");
    assert!(st.success(), "{st:?}");
    assert!(!chubby(&cell, &["get", "/ls/local/alive/host-a"]).status.success(), "gone with the session");
    assert!(!chubby(&cell, &["get", "/ls/local/alive/nobody"]).status.success(), "gone with its session");
    assert!(chubby(&cell, &["get", "/ls/local/config"]).status.success(), "a plain file stays");
}
