//! Users of one host: each acts as its own principal; an unused session of another user is closed after the idle time.

use super::*;

/// `setxattr` as user `uid`, from a forked child that takes that user's ids first: 0 or the
/// call's errno.
fn setxattr_as(uid: u32, path: &Path, name: &str, value: &str) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: the child calls only async-signal-safe functions (setgroups, setresgid,
    // setresuid, setxattr, _exit) on memory prepared before the fork; the parent waits for it.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork");
        if pid == 0 {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(uid, uid, uid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                libc::_exit(255);
            }
            let rc = libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0);
            libc::_exit(if rc == 0 { 0 } else { *libc::__errno_location() });
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        libc::WEXITSTATUS(status)
    }
}

#[test]
fn each_user_of_a_host_acts_through_the_mount_as_its_own_principal() {
    if !fuse_available("each_user_of_a_host_acts_through_the_mount_as_its_own_principal") {
        return;
    }
    const NOBODY: u32 = 65534;
    let cell = TestCell::start(CellOptions::default());
    let m = Mount::start(&cell, &[]);
    let host = fs::read_to_string("/etc/hostname").expect("hostname").trim().to_string();
    let root = format!("root@{host}");
    let as_nobody = |script: &str| {
        let out = Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", script])
            .output()
            .expect("setpriv");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let team = m.path("team");
    let conf = m.path("team/conf");

    // Open ACLs: nobody writes like anyone else.
    fs::create_dir(&team).expect("mkdir");
    let (ok, err) = as_nobody(&format!("echo hi > {}/notes", team.display()));
    assert!(ok, "{err}");

    // root narrows the directory's writers and ACL changers with setfattr, through the mount;
    // a file created there takes them.
    assert_eq!(setxattr_as(0, &team, "user.chubby.acl.writers", &root), 0);
    assert_eq!(setxattr_as(0, &team, "user.chubby.acl.change_acl", &root), 0);
    assert_eq!(xattr(&team, "user.chubby.acl.writers"), Some(root.clone()));
    assert_eq!(xattr(&team, "user.chubby.acl.readers").as_deref(), Some("*"));
    fs::write(&conf, "v1").expect("root writes");
    assert_eq!(xattr(&conf, "user.chubby.acl.writers"), Some(root.clone()));

    // nobody reads, but may not write, create, remove, lock or change the ACL: EACCES, and
    // nothing changes. (Locking a node takes the write right, as in Chubby.)
    let (ok, err) = as_nobody(&format!("test \"$(cat {})\" = v1", conf.display()));
    assert!(ok, "{err}");
    let (ok, _) =
        as_nobody(&format!("test -r {c} && ! test -w {c} && test -w {}/notes", team.display(), c = conf.display()));
    assert!(ok, "access(2) tells nobody's rights");
    for script in [
        format!("echo v2 > {}", conf.display()),
        format!("mkdir {}/sub", team.display()),
        format!("rm {}", conf.display()),
        format!("flock -n {} true", conf.display()),
    ] {
        let (ok, err) = as_nobody(&script);
        assert!(!ok && err.contains("Permission denied"), "{script}: {err}");
    }
    assert_eq!(setxattr_as(NOBODY, &conf, "user.chubby.acl.readers", "nobody"), libc::EACCES);
    assert_eq!(setxattr_as(0, &conf, "user.chubby.acl.change_acl", ""), libc::EINVAL, "would lock the ACL for good");
    assert_eq!(setxattr_as(0, &conf, "user.chubby.checksum", "0"), libc::ENOTSUP, "the cell's to keep");
    assert_eq!(fs::read_to_string(&conf).expect("read"), "v1");
    assert_eq!(xattr(&conf, "user.chubby.acl.readers").as_deref(), Some("*"));
    assert!(!m.path("team/sub").exists());

    // root's calls are its own: it still writes, and the cell saw both users' writes as theirs.
    fs::write(&conf, "v2").expect("root writes");
    assert_eq!(fs::read_to_string(&conf).expect("read"), "v2");
    let got = chubby(&cell, &["get", "/ls/local/team/notes"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "hi\n");

    // Readers narrowed: nobody cannot even read.
    assert_eq!(setxattr_as(0, &conf, "user.chubby.acl.readers", &root), 0);
    let (ok, err) = as_nobody(&format!("cat {}", conf.display()));
    assert!(!ok && err.contains("Permission denied"), "{err}");
}

/// Waits (at most `secs`) until the cell holds `n` sessions.
fn await_sessions(cell: &TestCell, n: u64, secs: u64, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let now = cell_sessions(cell);
        if now == n {
            return;
        }
        assert!(Instant::now() < deadline, "{why}: {now} sessions, not {n}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn another_users_unused_session_is_closed_after_the_idle_time_and_opened_again_when_needed() {
    if !fuse_available("another_users_unused_session_is_closed_after_the_idle_time_and_opened_again_when_needed") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let before = cell_sessions(&cell);
    let m = Mount::start(&cell, &["--idle-sessions", "1s"]);
    let file = m.path("shared");
    fs::write(&file, "v1").expect("root writes");
    let as_nobody = |script: &str| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "sh", "-c", script]);
        c
    };
    let read_as_nobody = || {
        let out = as_nobody(&format!("cat {}", file.display())).output().expect("setpriv");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // nobody's first call opens its session; a file it holds open keeps it past the idle
    // time; unused for the idle time, it is closed.
    assert_eq!(read_as_nobody(), "v1");
    let mut holder =
        as_nobody(&format!("exec sleep 60 3< {}", file.display())).stdin(Stdio::null()).spawn().expect("hold open");
    await_sessions(&cell, before + 2, 15, "the daemon's session and nobody's");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cell_sessions(&cell), before + 2, "a session with an open file is in use, not idle");
    holder.kill().expect("kill the holder");
    let _ = holder.wait();
    await_sessions(&cell, before + 1, 15, "closed once its last file is closed and the idle time passed");

    // Its next call opens a new one.
    assert_eq!(read_as_nobody(), "v1");

    // The daemon's own user's session is never closed for being idle.
    fs::write(&file, "v2").expect("root writes");
    assert_eq!(read_as_nobody(), "v2");
    await_sessions(&cell, before + 1, 15, "nobody's closed again");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(cell_sessions(&cell), before + 1, "the daemon's own session stays");
}
