//! The mount: a cell used through `chubby-mount` with ordinary tools (`sh`, `cat`-like reads,
//! `mkdir`, `rm`, `flock`), as DESIGN.md's FUSE mapping promises. Each test runs a 3-replica
//! cell and one or two mounts ("hosts"); they need root and /dev/fuse (see
//! [`fuse_available`]).

use std::fs;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{
    bin, detach, exit_within, fuse_available, is_mount_point, wait_converged, CellOptions, LocalCell, Mount, Netns,
    TestCell,
};

fn chubby(cell: &TestCell, args: &[&str]) -> Output {
    Command::new(bin("chubby")).arg("--cell").arg(cell.cell_arg()).args(args).output().expect("run chubby")
}

fn sh(script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).output().expect("run sh")
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

fn xattr(path: &Path, name: &str) -> Option<String> {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the length given.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (len >= 0).then(|| String::from_utf8_lossy(&buf[..len as usize]).into_owned())
}

/// Process groups a test started, killed (the whole group) when dropped.
#[derive(Default)]
struct Groups(Vec<u32>);

impl Groups {
    /// `kill -9` of the group led by `pid` (flock and the command it runs).
    fn kill(&mut self, pid: u32) {
        // SAFETY: kill(2) of a process group this test started.
        unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        self.0.retain(|p| *p != pid);
    }
}

impl Drop for Groups {
    fn drop(&mut self) {
        for pid in std::mem::take(&mut self.0) {
            // SAFETY: as above.
            unsafe { libc::kill(-(pid as libc::pid_t), libc::SIGKILL) };
        }
    }
}

/// `flock OPTIONS FILE -c SCRIPT` in a process group of its own (its command inherits the
/// locked file), killed with its group at the end of the test.
fn flock(opts: &[&str], file: &Path, script: &str, groups: &mut Groups) -> Child {
    let child = Command::new("flock")
        .args(opts)
        .arg(file)
        .arg("-c")
        .arg(script)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("flock");
    groups.0.push(child.id());
    child
}

/// Waits (at most 10 s) until the cell says someone holds the node's lock.
fn await_held(cell: &TestCell, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !chubby(cell, &["sequencer", path]).status.success() {
        assert!(Instant::now() < deadline, "{path} never became held");
        std::thread::sleep(Duration::from_millis(20));
    }
}

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
    assert_eq!(errno_of(fs::rename(&master, m.path("svc/web/moved"))), libc::EXDEV);

    fs::remove_file(&master).expect("rm");
    assert_eq!(chubby(&cell, &["get", "/ls/local/svc/web/master"]).status.code(), Some(3), "gone from the cell");
    fs::remove_dir(m.path("svc/web")).expect("rmdir");
    assert_eq!(names(&m.path("svc")), Vec::<String>::new());
}

#[test]
fn flock_on_two_hosts_excludes_queues_and_is_released_by_death_or_signal() {
    if !fuse_available("flock_on_two_hosts_excludes_queues_and_is_released_by_death_or_signal") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let (a, b) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    let mut groups = Groups::default();
    fs::write(a.path("job"), "").expect("create");
    let (on_a, on_b) = (a.path("job"), b.path("job"));

    let mut holder = flock(&["-x"], &on_a, "sleep 60", &mut groups);
    await_held(&cell, "/ls/local/job");
    assert_eq!(xattr(&on_b, "user.chubby.sequencer").map(|s| s.starts_with("seq1:")), Some(true));
    // Removing a file another host holds a lock on is refused: a file re-created at its name
    // would hand a second holder the lock.
    assert_eq!(errno_of(fs::remove_file(&on_b)), libc::EBUSY, "rm of a held lock's file");
    assert!(on_a.exists() && on_b.exists());

    // Busy for the other host: at once with -n, after its timeout with -w.
    let busy = flock(&["-n"], &on_b, "true", &mut groups).wait().expect("flock -n");
    assert_eq!(busy.code(), Some(1), "flock -n while another host holds the lock");
    let started = Instant::now();
    let mut timed = flock(&["-w", "0.3"], &on_b, "true", &mut groups);
    let st = exit_within(&mut timed, Duration::from_secs(10)).expect("flock -w returns after its timeout");
    assert_eq!(st.code(), Some(1), "flock -w timed out");
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A byte range is no Chubby lock; the whole file conflicts with the other host's flock.
    let file = fs::OpenOptions::new().read(true).write(true).open(&on_b).expect("open");
    let mut range: libc::flock = unsafe { std::mem::zeroed() };
    range.l_type = libc::F_WRLCK as i16;
    range.l_whence = libc::SEEK_SET as i16;
    range.l_len = 10;
    // SAFETY: fcntl on an open descriptor with a valid struct flock.
    assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &range) }, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EINVAL));
    range.l_len = 0;
    range.l_type = libc::F_RDLCK as i16;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &range) }, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN));
    drop(file);

    // Two waiters queue on host B; the second is killed while it waits.
    let mut first = flock(&["-x"], &on_b, "true", &mut groups);
    std::thread::sleep(Duration::from_millis(300));
    let mut second = flock(&["-x"], &on_b, "sleep 60", &mut groups);
    std::thread::sleep(Duration::from_millis(300));
    assert!(first.try_wait().expect("wait").is_none(), "the first waiter waits while A holds the lock");
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(second.id() as libc::pid_t, libc::SIGTERM) };
    assert!(exit_within(&mut second, Duration::from_secs(5)).is_some(), "a signal ends a blocked flock");

    // The holder dies: the kernel closes its file and the lock goes to the first waiter.
    groups.kill(holder.id());
    let _ = holder.wait();
    let st = exit_within(&mut first, Duration::from_secs(10)).expect("the waiter gets the lock when the holder dies");
    assert!(st.success());

    // Nobody holds it now: neither the killed waiter nor the timed-out one was left queued.
    let free = flock(&["-n"], &on_a, "true", &mut groups).wait().expect("flock -n");
    assert!(free.success(), "the lock is free once every holder and waiter is gone");

    // Shared locks on both hosts at once.
    let mut reader = flock(&["-s"], &on_a, "sleep 60", &mut groups);
    await_held(&cell, "/ls/local/job");
    let shared = flock(&["-s", "-n"], &on_b, "true", &mut groups).wait().expect("flock -s -n");
    assert!(shared.success(), "readers share the lock across hosts");
    let excl = flock(&["-x", "-n"], &on_b, "true", &mut groups).wait().expect("flock -x -n");
    assert_eq!(excl.code(), Some(1), "a writer waits for the reader");
    groups.kill(reader.id());
    let _ = reader.wait();
    // No holder left (a closed file releases its lock at once): the file can go.
    let mut removed = fs::remove_file(&on_b);
    for _ in 0..100 {
        match &removed {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(100)),
            _ => break,
        }
        removed = fs::remove_file(&on_b);
    }
    removed.expect("rm once the lock is free");
}

/// The sessions in the cell's state, as its master reports them.
fn cell_sessions(cell: &TestCell) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = chubby(cell, &["status", "--json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
        let replicas = status["replicas"].as_array().cloned().unwrap_or_default();
        if let Some(leader) = replicas.iter().find(|r| r["role"] == "leader") {
            return leader["sessions"].as_u64().expect("sessions");
        }
        assert!(Instant::now() < deadline, "no leader: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
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

/// A master `kill -9` is invisible to scripts on the mounts: each daemon's session resumes at
/// the new master, a held `flock` stays held (its sequencer still current), reads and writes
/// go on, and the holder's death still hands the lock over at once (no lock-delay: the
/// session survived).
#[test]
fn a_master_failover_keeps_the_mounts_files_and_flocks() {
    if !fuse_available("a_master_failover_keeps_the_mounts_files_and_flocks") {
        return;
    }
    let mut cell = TestCell::start(CellOptions { session_lease_ms: 3000, ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let leader = rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)));
    let leader = leader.expect("a leader");
    let (a, b) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    let mut groups = Groups::default();
    fs::write(a.path("svc"), "one").expect("write");
    let mut holder = flock(&["-x"], &a.path("svc"), "sleep 60", &mut groups);
    await_held(&cell, "/ls/local/svc");
    let sequencer = xattr(&b.path("svc"), "user.chubby.sequencer").expect("sequencer");

    cell.kill(leader);
    fs::write(b.path("other"), "after").expect("a write through the mount after the master died");
    assert_eq!(fs::read_to_string(a.path("other")).expect("read"), "after");
    assert_eq!(fs::read_to_string(b.path("svc")).expect("read"), "one");
    let check = chubby(&cell, &["check-sequencer", &sequencer]);
    assert!(check.status.success(), "the holder's sequencer is still current: {check:?}");
    let busy = flock(&["-n"], &b.path("svc"), "true", &mut groups).wait().expect("flock -n");
    assert_eq!(busy.code(), Some(1), "the other host still cannot take the lock");

    groups.kill(holder.id());
    let _ = holder.wait();
    let mut taker = flock(&["-x"], &b.path("svc"), "true", &mut groups);
    let st = exit_within(&mut taker, Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "the lock passes at once when its holder dies: {st:?}");
}

/// A mount cut off from its cell (network namespace, blackhole route) past its grace period
/// loses its session: files opened and locks taken under it fail with EIO, never silently
/// succeed, while another host can take the lock once lease and lock-delay have run out.
/// Once the network is back the daemon serves new calls under a new session.
#[test]
fn a_mount_cut_off_past_its_grace_period_fails_its_files_and_locks_with_eio() {
    if !fuse_available("a_mount_cut_off_past_its_grace_period_fails_its_files_and_locks_with_eio") {
        return;
    }
    let ns = Netns::create(1).unwrap_or_else(|e| panic!("this test needs root and iproute2: {e}"));
    let cell =
        TestCell::start(CellOptions { session_lease_ms: 1000, host: ns.host_ip.clone(), ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).expect("leader");
    let m = Mount::start_in(&cell, &["--grace", "2s", "--lock-delay", "1s"], Some(&ns));
    fs::write(m.path("job"), "v1").expect("write");
    let mut file = fs::OpenOptions::new().read(true).write(true).open(m.path("job")).expect("open");
    // SAFETY: flock(2) on an open descriptor.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0, "lock taken");
    await_held(&cell, "/ls/local/job");

    let mut seen = String::new();
    std::io::Read::read_to_string(&mut file, &mut seen).expect("read");
    assert_eq!(seen, "v1");

    // (Cutting runs `ip`: a fork and exec, whose close of the inherited descriptor flushes
    // it. So the write comes after: it only changes this open's copy, and fsync stores it.)
    ns.cut().expect("cut");
    let cut = Instant::now();
    file.write_all(b"v2").expect("a write of a loaded copy needs no call to the cell");
    let stored = file.sync_all();
    assert_eq!(errno_of(stored), libc::EIO, "fsync under a lost session fails with EIO");
    assert!(cut.elapsed() >= Duration::from_secs(2), "the call waited through jeopardy: {:?}", cut.elapsed());
    // SAFETY: as above.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) }, -1, "the lost lock cannot be released");
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EIO));
    let got = chubby(&cell, &["lock", "--timeout", "30s", "/ls/local/job", "--", "true"]);
    assert!(got.status.success(), "another client gets the lock after lease and lock-delay: {got:?}");
    assert_eq!(String::from_utf8_lossy(&chubby(&cell, &["get", "/ls/local/job"]).stdout).trim(), "v1");

    ns.heal().expect("heal");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match fs::read_to_string(m.path("job")) {
            Ok(v) => {
                assert_eq!(v, "v1");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no new session after the network came back: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut buf = String::new();
    assert_eq!(errno_of(std::io::Read::read_to_string(&mut file, &mut buf)), libc::EIO, "the old open stays lost");
    assert_eq!(errno_of(file.write_all(b"v3")), libc::EIO);
}

/// Reads through the mount are linearizable although the kernel caches attributes, entries and
/// pages: while another client writes a node 100 times, every read on the mount (`stat` and a
/// whole read) sees a value at least as new as the last write completed before it began,
/// whole (never cut to an older size), and stat's size matches a value of that age too.
#[test]
fn reads_through_the_kernel_cache_stay_linearizable_across_another_clients_writes() {
    if !fuse_available("reads_through_the_kernel_cache_stay_linearizable_across_another_clients_writes") {
        return;
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let cell = TestCell::start(CellOptions::default());
    let m = Mount::start(&cell, &[]);
    let value = |i: u64| format!("{i}:{}", "#".repeat((i % 13) as usize));

    // First in lockstep: the kernel keeps the node's attributes (fstat of an open file is
    // answered without the daemon; a stat by path asks the daemon for the name, which answers
    // from the session's cache), another client writes, and the very next fstat and stat
    // already have the new size.
    fs::write(m.path("counter"), value(0)).expect("write");
    let open = fs::File::open(m.path("counter")).expect("open");
    for i in 1..=12u64 {
        assert_eq!(fs::read_to_string(m.path("counter")).expect("read"), value(i - 1));
        for _ in 0..3 {
            assert_eq!(open.metadata().expect("fstat").len(), value(i - 1).len() as u64);
        }
        let put = chubby(&cell, &["put", "/ls/local/counter", &value(i)]);
        assert!(put.status.success(), "{put:?}");
        assert_eq!(open.metadata().expect("fstat").len(), value(i).len() as u64, "fstat after write {i}");
        assert_eq!(fs::metadata(m.path("counter")).expect("stat").len(), value(i).len() as u64, "stat after write {i}");
    }
    drop(open);

    // Then a writer that does not wait for the readers.
    fs::write(m.path("counter"), value(0)).expect("write");
    let completed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addrs, completed, done) = (cell.addrs.clone(), completed.clone(), done.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let opts = fuse_mount::client::SessionOptions { cache: false, ..Default::default() };
                let s = fuse_mount::client::Session::open(addrs, opts).await.expect("session");
                let (h, _) = s.open_node("/ls/local/counter", Default::default()).await.expect("open");
                // Paced so that the mount's session caches the node between writes (a read while
                // a write is pending is not cacheable) and the kernel gets to keep attributes.
                for i in 1..=100u64 {
                    s.set(&h, value(i).into(), None, "").await.expect("set");
                    completed.store(i, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                let _ = s.close().await;
            });
            done.store(true, Ordering::SeqCst);
        })
    };
    let parse = |text: &str| -> u64 {
        let (n, hashes) = text.split_once(':').unwrap_or_else(|| panic!("a torn read: {text:?}"));
        let n: u64 = n.parse().unwrap_or_else(|_| panic!("a torn read: {text:?}"));
        assert_eq!(hashes.len() as u64, n % 13, "a read cut to another size: {text:?}");
        n
    };
    let (mut reads, mut stale_free) = (0u64, true);
    while !done.load(Ordering::SeqCst) {
        let floor = completed.load(Ordering::SeqCst);
        // stat (answered by the kernel's attribute cache when it may) gives the size of a value
        // written no earlier than the floor and no later than the write in flight after it.
        // (A read makes the kernel ask for the atime again, so the first stat after one
        // reaches the daemon; the next ones are the kernel's own answers while it may keep
        // them. Most rounds only stat.)
        for _ in 0..2 {
            let size = fs::metadata(m.path("counter")).expect("stat").len();
            let ceiling = completed.load(Ordering::SeqCst) + 1;
            assert!(
                (floor..=ceiling.min(100)).any(|i| value(i).len() as u64 == size),
                "stat size {size} is none of writes {floor}..={ceiling}"
            );
        }
        reads += 1;
        if reads % 8 == 0 {
            let got = parse(&fs::read_to_string(m.path("counter")).expect("read"));
            stale_free &= got >= floor;
            assert!(got >= floor, "read {got} after write {floor} had completed");
        }
    }
    writer.join().expect("writer");
    assert!(stale_free && reads > 100, "{reads} rounds checked");
    assert_eq!(parse(&fs::read_to_string(m.path("counter")).expect("read")), 100);
}

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
    assert_eq!(setxattr_as(0, &conf, "user.chubby.checksum", "0"), libc::EPERM, "the cell's to keep");
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
