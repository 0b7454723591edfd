//! Shell tools on the mount: reads, writes, listings, `mkdir -p`, `rm`, and the errors a file system gives.

use super::*;

#[test]
fn shell_tools_read_write_list_and_remove_nodes_of_the_cell() {
    if !fuse_available("shell_tools_read_write_list_and_remove_nodes_of_the_cell") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let m = Mount::start(&cell, &[]);
    let master = m.path("svc/web/master");

    fs::create_dir_all(m.path("svc/web")).expect("mkdir -p");
    let out = sh(&format!("echo 10.0.0.1:80 > {}", master.display()));
    assert!(out.status.success(), "echo >: {out:?}");
    assert_eq!(fs::read_to_string(&master).expect("read"), "10.0.0.1:80\n");
    let got = chubby(&cell, &["get", "/ls/local/svc/web/master"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "10.0.0.1:80", "the write is the cell's: {got:?}");

    // Another client's write is seen by the next read here (the mount's cache was invalidated).
    let generation = xattr(&master, "user.chubby.content_generation").expect("generation xattr");
    assert!(chubby(&cell, &["put", "/ls/local/svc/web/master", "10.0.0.2:80"]).status.success());
    assert_eq!(fs::read_to_string(&master).expect("read"), "10.0.0.2:80");
    let newer = xattr(&master, "user.chubby.content_generation").expect("generation xattr");
    assert!(newer.parse::<u64>().unwrap() > generation.parse::<u64>().unwrap(), "{generation} → {newer}");
    assert_eq!(xattr(&master, "user.chubby.sequencer").as_deref(), Some(""), "nobody holds the lock");
    // A lock taken and released moves the lock generation, though the node stays cached here.
    let locks_before = xattr(&master, "user.chubby.lock_generation").expect("lock generation xattr");
    assert!(sh(&format!("flock {} true", master.display())).status.success());
    let locks_after = xattr(&master, "user.chubby.lock_generation").expect("lock generation xattr");
    assert!(
        locks_after.parse::<u64>().unwrap() > locks_before.parse::<u64>().unwrap(),
        "{locks_before} → {locks_after}"
    );

    let mut f = fs::OpenOptions::new().append(true).open(&master).expect("open for append");
    f.write_all(b" backup").expect("append");
    // Until the close stores it, the write is this open's: another open reads the stored
    // contents, and its close does not hide the size this host has written.
    assert_eq!(fs::read_to_string(&master).expect("read"), "10.0.0.2:80");
    assert_eq!(fs::metadata(&master).expect("stat").len(), 18);
    drop(f);
    assert_eq!(fs::read_to_string(&master).expect("read"), "10.0.0.2:80 backup");
    assert_eq!(fs::metadata(&master).expect("stat").len(), 18);

    let names = |dir: &Path| {
        let mut n: Vec<String> =
            fs::read_dir(dir).expect("ls").map(|e| e.expect("entry").file_name().into_string().unwrap()).collect();
        n.sort();
        n
    };
    assert_eq!(names(m.dir.path()), ["local"]);
    assert_eq!(names(&m.path("svc")), ["web"]);
    assert!(fs::metadata(m.path("svc/web")).expect("stat").is_dir());

    // `ls -i` and `stat` agree on inode numbers, also for nodes this mount had not looked up
    // when it listed them (made by another client).
    for i in 0..3 {
        assert!(chubby(&cell, &["put", &format!("/ls/local/svc/n{i}"), "x"]).status.success());
    }
    for e in fs::read_dir(m.path("svc")).expect("ls") {
        let e = e.expect("entry");
        let listed = std::os::unix::fs::DirEntryExt::ino(&e);
        let stat = std::os::unix::fs::MetadataExt::ino(&fs::metadata(e.path()).expect("stat"));
        assert_eq!(listed, stat, "{:?}", e.file_name());
    }
    for i in 0..3 {
        fs::remove_file(m.path(&format!("svc/n{i}"))).expect("rm");
    }

    // Errors as a file system gives them, and nothing changes.
    assert_eq!(errno_of(fs::read(m.path("missing"))), libc::ENOENT);
    assert_eq!(errno_of(fs::create_dir(m.path("svc"))), libc::EEXIST);
    assert_eq!(errno_of(fs::remove_dir(m.path("svc"))), libc::ENOTEMPTY);
    assert_eq!(errno_of(fs::write(&master, vec![b'x'; 300 * 1024])), libc::EFBIG);
    assert_eq!(fs::read_to_string(&master).expect("read"), "10.0.0.2:80 backup");
    assert_eq!(errno_of(fs::rename(m.path("svc/web"), m.path("svc/moved"))), libc::EXDEV, "a directory");

    fs::remove_file(&master).expect("rm");
    assert_eq!(chubby(&cell, &["get", "/ls/local/svc/web/master"]).status.code(), Some(3), "gone from the cell");
    fs::remove_dir(m.path("svc/web")).expect("rmdir");
    assert_eq!(names(&m.path("svc")), Vec::<String>::new());
}

/// `tail -f` on the mount shows what is added to the file, by another host or by an append
/// through the mount: a read at the end of an open's copy takes the file's growth.
#[test]
fn tail_f_shows_what_is_added_to_a_file() {
    if !fuse_available("tail_f_shows_what_is_added_to_a_file") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let m = Mount::start(&cell, &[]);
    let log = m.path("log");
    fs::write(&log, "one\n").expect("write");
    let mut tail = Command::new("tail")
        .args(["-f", "-s", "0.2"])
        .arg(&log)
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("tail");
    let mut pids = Pids(vec![tail.id()]);
    let lines = lines_of(tail.stdout.take().expect("stdout"));
    let next = || lines.recv_timeout(Duration::from_secs(20)).ok();
    assert_eq!(next().as_deref(), Some("one"));
    assert!(chubby(&cell, &["put", "/ls/local/log", "one\ntwo\n"]).status.success());
    assert_eq!(next().as_deref(), Some("two"), "another host's addition");
    assert!(sh(&format!("echo three >> {}", log.display())).status.success());
    assert_eq!(next().as_deref(), Some("three"), "an append through the mount");
    pids.kill(tail.id());
    let _ = tail.wait();
}

/// Appends from two hosts at once all land (`echo line >> f` in a loop on each), each host's
/// in its order; so do two `O_APPEND` opens of one host that both write before either closes.
#[test]
fn appends_from_two_hosts_and_two_opens_all_land() {
    if !fuse_available("appends_from_two_hosts_and_two_opens_all_land") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let hosts = [Mount::start(&cell, &[]), Mount::start(&cell, &[])];
    fs::write(hosts[0].path("log"), "").expect("create");
    let mut pids = Pids(Vec::new());
    let mut shells: Vec<Child> = ["a", "b"]
        .iter()
        .zip(&hosts)
        .map(|(tag, host)| {
            let script = format!("for i in $(seq 1 40); do echo {tag}$i >> {}; done", host.path("log").display());
            let child = Command::new("sh").arg("-c").arg(script).spawn().expect("sh");
            pids.0.push(child.id());
            child
        })
        .collect();
    for shell in &mut shells {
        let status = exit_within(shell, Duration::from_secs(60));
        assert!(status.is_some_and(|s| s.success()), "a shell's appends: {status:?}");
        pids.0.retain(|p| *p != shell.id());
    }
    let contents = fs::read_to_string(hosts[1].path("log")).expect("read");
    for tag in ["a", "b"] {
        let own: Vec<&str> = contents.lines().filter(|l| l.starts_with(tag)).collect();
        let expected: Vec<String> = (1..=40).map(|i| format!("{tag}{i}")).collect();
        assert_eq!(own, expected, "host {tag}'s appends, all and in order, in:\n{contents}");
    }
    assert_eq!(contents.lines().count(), 80);

    let open = || fs::OpenOptions::new().append(true).open(hosts[0].path("log")).expect("open for append");
    let (mut one, mut two) = (open(), open());
    one.write_all(b"one\n").expect("append");
    two.write_all(b"two\n").expect("append");
    drop(one);
    drop(two);
    let contents = fs::read_to_string(hosts[1].path("log")).expect("read");
    assert!(contents.ends_with("one\ntwo\n"), "both opens' appends: {contents:?}");
    assert_eq!(contents.lines().count(), 82);
}

/// `df` shows the cell rather than zeros: inodes are its node limit and the nodes in use,
/// blocks what that limit allows and the contents in use.
#[test]
fn statfs_reports_the_cells_nodes_and_bytes() {
    if !fuse_available("statfs_reports_the_cells_nodes_and_bytes") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let m = Mount::start(&cell, &[]);
    let statvfs = || {
        let path = std::ffi::CString::new(m.dir.path().join("local").as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: statvfs(3) with a valid path and a zeroed struct it fills.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0, "statvfs");
        st
    };
    let before = statvfs();
    assert_eq!(before.f_files, 1_000_000, "the cell's node limit");
    assert!(before.f_ffree < before.f_files, "some nodes in use (/, /ls, /ls/local)");
    assert_eq!(before.f_blocks * before.f_frsize, 1_000_000 * 256 * 1024, "the most that limit allows");
    fs::write(m.path("big"), vec![b'x'; 10_000]).expect("write");
    let after = statvfs();
    assert_eq!(before.f_ffree - after.f_ffree, 1, "one node more");
    let used = |s: &libc::statvfs| (s.f_blocks - s.f_bfree) * s.f_frsize;
    assert!(used(&after) >= used(&before) + 8192 && used(&after) >= 10_000, "{} then {}", used(&before), used(&after));
    let df = Command::new("df").arg("-i").arg(m.dir.path().join("local")).output().expect("df");
    assert!(df.status.success(), "{df:?}");
}
