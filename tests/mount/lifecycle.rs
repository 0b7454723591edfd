//! Starting and stopping a mount: unmounted and its session ended when stopped; `cell-server local --mount`.

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
    let LocalCell { child: mut local, lines, cell, output: _output } =
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
    let got = Command::new(bin("chubby")).env("CHUBBY_CELL", &cell).args(["get", "/ls/local/greeting"]).output();
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
