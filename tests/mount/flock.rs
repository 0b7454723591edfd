//! `flock` on two hosts: exclusion, queueing, release by death or signal.

use super::*;

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

/// `flock` after `flock` on one host, as a script's steps take turns: each gets the lock it
/// asks for. The kernel names a `flock` owner by its open file description and sends the
/// last close of one in the background, so the next open may come with the same owner id
/// before the close: that request is a new lock, not a conversion of the closed one's (which
/// the cell no longer holds: ENOLCK), nor the same lock (which the late close would then take
/// away while its new holder runs). Both by separate `flock` processes and by one shell
/// opening the file again on one descriptor.
#[test]
fn flock_after_flock_on_one_host_always_gets_the_lock() {
    if !fuse_available("flock_after_flock_on_one_host_always_gets_the_lock") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let (m, other) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    let job = m.path("job");
    fs::write(&job, "").expect("create");
    let mut groups = Groups::default();
    // While a holder has the lock, after the close before it has had time to come in,
    // another host must find it busy.
    // (`-E 42`: busy, told apart from any other failure.)
    let busy = |path: &Path| {
        format!("flock -E 42 -s -n {} true; r=$?; [ $r = 0 ] && exit 3; [ $r = 42 ] || exit 4", path.display())
    };
    let check = format!("sleep 0.05; {}", busy(&other.path("job")));
    for round in 0..40 {
        for mode in ["-x", "-s", "-s", "-x"] {
            let st = flock(&[mode, "-n"], &job, "true", &mut groups).wait().expect("flock");
            assert!(st.success(), "round {round}: flock {mode} -n found the lock busy or broken: {st:?}");
        }
        let st = flock(&["-x", "-n"], &job, &check, &mut groups).wait().expect("flock");
        assert!(st.success(), "round {round}: flock -x -n broken, the lock held twice (exit 3) or the other host's flock broken (exit 4): {st:?}");
    }
    let script = format!(
        "for i in $(seq 40); do \
           exec 9<>{f}; flock -x -n 9 || exit 1; exec 9>&-; \
           exec 9<>{f}; flock -x -n 9 || exit 2; sleep 0.05; \
           {busy}; exec 9>&-; \
         done",
        f = job.display(),
        busy = busy(&other.path("job"))
    );
    let (mut sh, _) = shell(&script, &mut groups);
    let st = exit_within(&mut sh, Duration::from_secs(120)).expect("the shell's rounds end");
    assert!(st.success(), "a shell's flock of a file it opened again failed (exit 3: held twice): {st:?}");
    // Nothing is left held: each lock went with its close.
    let got = chubby(&cell, &["lock", "--timeout", "20s", "/ls/local/job", "--", "true"]);
    assert!(got.status.success(), "the lock is free once every flock ended: {got:?}");
}

/// A process's `fcntl` lock asked for again through another of its open descriptors of the
/// file is the lock it holds (POSIX: locks are the process's): it is kept throughout, and a
/// host waiting for it does not get it in between.
#[test]
fn an_fcntl_lock_asked_again_through_another_descriptor_is_kept() {
    if !fuse_available("an_fcntl_lock_asked_again_through_another_descriptor_is_kept") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let (m, other) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    let path = m.path("job");
    fs::write(&path, "").expect("create");
    let (a, b) = (
        fs::OpenOptions::new().read(true).write(true).open(&path).expect("open a"),
        fs::OpenOptions::new().read(true).write(true).open(&path).expect("open b"),
    );
    let set = |fd: &fs::File, typ: i32| {
        // SAFETY: a zeroed flock is a valid whole-file request once its type is set.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = typ as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: fcntl(2) on an open descriptor with a valid flock.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETLK, &lock) }
    };
    assert_eq!(set(&a, libc::F_WRLCK), 0, "lock taken through a");
    let mut groups = Groups::default();
    let mut waiter = flock(&["-x"], &other.path("job"), "true", &mut groups);
    await_queued_locks(&cell, 1);
    assert_eq!(set(&b, libc::F_WRLCK), 0, "the same lock asked again through b: {}", std::io::Error::last_os_error());
    assert_eq!(set(&b, libc::F_RDLCK), 0, "and converted through b");
    assert_eq!(set(&a, libc::F_WRLCK), 0, "and back through a");
    assert_eq!(set(&b, libc::F_WRLCK), 0, "and asked once more through b");
    std::thread::sleep(Duration::from_millis(500));
    assert!(waiter.try_wait().expect("wait").is_none(), "the other host got the lock while this process held it");
    // Any close of the process's descriptors of the file lets its lock go (POSIX), also of
    // one it did not last ask through.
    drop(a);
    let st = exit_within(&mut waiter, Duration::from_secs(20)).expect("the waiter gets the lock at the close");
    assert!(st.success());
    drop(b);
}

/// A process's `fcntl` lock of a file re-created at its path, while the process still has the
/// deleted file open too: closing both descriptors leaves the lock free in the cell (closing
/// the old one neither takes the new node's lock for its own nor loses track of it).
#[test]
fn closing_a_descriptor_of_a_deleted_file_does_not_lose_track_of_the_new_files_lock() {
    if !fuse_available("closing_a_descriptor_of_a_deleted_file_does_not_lose_track_of_the_new_files_lock") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let m = Mount::start(&cell, &[]);
    let path = m.path("job");
    fs::write(&path, "old").expect("write");
    let old = fs::File::open(&path).expect("open");
    fs::remove_file(&path).expect("rm");
    fs::write(&path, "new").expect("re-create");
    let new = fs::OpenOptions::new().read(true).write(true).open(&path).expect("open");
    // SAFETY: a zeroed flock is a valid whole-file request once its type is set.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl(2) on an open descriptor with a valid flock.
    assert_eq!(unsafe { libc::fcntl(new.as_raw_fd(), libc::F_SETLK, &lock) }, 0, "lock taken");
    await_held(&cell, "/ls/local/job");
    drop(old);
    drop(new);
    let got = chubby(&cell, &["lock", "--timeout", "20s", "/ls/local/job", "--", "true"]);
    assert!(got.status.success(), "the lock is free once its holder closed every descriptor: {got:?}");
}

/// `F_GETLK` names the holder: a process of this host by its pid (as on a local file system);
/// one on another host has no pid here, and reads as 0.
#[test]
fn getlk_names_a_holder_of_this_host_by_its_pid() {
    if !fuse_available("getlk_names_a_holder_of_this_host_by_its_pid") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let (a, b) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    fs::write(a.path("job"), "x").expect("write");
    let mut groups = Groups::default();
    // The cell grants the lock a moment before `flock` has it: wait until its command runs.
    let marks = tempfile::tempdir().expect("temp dir");
    let mark = marks.path().join("held");
    let mut holder = flock(&["-x"], &a.path("job"), &format!("touch {}; sleep 60", mark.display()), &mut groups);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mark.exists() {
        assert!(Instant::now() < deadline, "flock never got the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let getlk = |path: &Path| {
        let file = fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
        // SAFETY: a zeroed flock is a valid whole-file request once its type is set.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_WRLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: fcntl(2) on an open descriptor with a valid flock.
        assert_eq!(unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) }, 0, "F_GETLK");
        (i32::from(lock.l_type), lock.l_pid)
    };
    assert_eq!(getlk(&a.path("job")), (libc::F_WRLCK, holder.id() as i32), "the holder on this host");
    assert_eq!(getlk(&b.path("job")), (libc::F_WRLCK, 0), "a holder on another host");
    groups.kill(holder.id());
    let _ = holder.wait();
}

/// A write is stored under the lock it was made under. Once that lock is gone (here by the
/// POSIX rule that any close by a process drops its `fcntl` lock) and another host has taken
/// it and written, the old holder's stores are refused (`EPERM` at its closes: of an open it
/// wrote, and of one it truncated) and the next holder's contents stay.
#[test]
fn a_write_made_under_a_lock_since_lost_is_refused_and_the_next_holders_stays() {
    if !fuse_available("a_write_made_under_a_lock_since_lost_is_refused_and_the_next_holders_stays") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let (a, b) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    fs::write(a.path("job"), "v0").expect("write");
    // The holder is a process of its own: a descriptor of this (many-threaded) test process
    // would be flushed by the close-on-exec of any process another test starts meanwhile.
    let holder = StaleHolder::start(&a.path("job"));
    holder.wait_until_unlocked();

    let mut groups = Groups::default();
    let mut next =
        flock(&["-x", "-w", "10"], &b.path("job"), &format!("echo next > {}", b.path("job").display()), &mut groups);
    let st = exit_within(&mut next, Duration::from_secs(20)).expect("the next holder is done");
    assert!(st.success(), "another host takes the lock and writes: {st:?}");

    let (written, truncated) = holder.close();
    assert_eq!(written, libc::EPERM, "the written open's store under the lost lock is refused");
    assert_eq!(truncated, libc::EPERM, "the truncated open's store under the lost lock is refused");
    assert_eq!(fs::read_to_string(b.path("job")).expect("read"), "next\n", "the next holder's write stays");
}

/// A forked process that takes a file's `fcntl` lock, writes through that open, opens it again
/// with `O_TRUNC`, and loses the lock by closing a third descriptor; it closes the first two
/// when told, and reports their errors.
struct StaleHolder {
    pid: libc::pid_t,
    ready: std::os::fd::OwnedFd,
    go: std::os::fd::OwnedFd,
}

impl StaleHolder {
    fn start(path: &Path) -> StaleHolder {
        let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        let (mut ready, mut go) = ([0; 2], [0; 2]);
        // SAFETY: pipe(2) fills two descriptors each.
        assert!(unsafe { libc::pipe(ready.as_mut_ptr()) == 0 && libc::pipe(go.as_mut_ptr()) == 0 });
        // SAFETY: the child makes only async-signal-safe calls (open, fcntl, write, read,
        // close, _exit) on memory prepared before the fork, as a child of a threaded process must.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            unsafe {
                let fail = |step: u8| -> ! {
                    libc::write(ready[1], [step].as_ptr().cast(), 1);
                    libc::_exit(100 + i32::from(step))
                };
                let mine = libc::open(path.as_ptr(), libc::O_RDWR);
                let mut lock: libc::flock = std::mem::zeroed();
                lock.l_type = libc::F_WRLCK as libc::c_short;
                lock.l_whence = libc::SEEK_SET as libc::c_short;
                if mine < 0 || libc::fcntl(mine, libc::F_SETLK, &lock) != 0 {
                    fail(1);
                }
                let text = b"stale holder";
                if libc::write(mine, text.as_ptr().cast(), text.len()) != text.len() as isize {
                    fail(2);
                }
                let cut = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_TRUNC);
                let third = libc::open(path.as_ptr(), libc::O_RDONLY);
                if cut < 0 || third < 0 || libc::close(third) != 0 {
                    fail(3);
                }
                libc::write(ready[1], [0u8].as_ptr().cast(), 1);
                let mut byte = 0u8;
                libc::read(go[0], (&mut byte as *mut u8).cast(), 1);
                let errno_of_close = |fd: i32| {
                    if libc::close(fd) == 0 {
                        0
                    } else {
                        *libc::__errno_location()
                    }
                };
                let (w, t) = (errno_of_close(mine), errno_of_close(cut));
                let report = [w as u8, t as u8];
                libc::write(ready[1], report.as_ptr().cast(), 2);
                libc::_exit(0)
            }
        }
        assert!(pid > 0, "fork");
        // SAFETY: the parent's ends, owned from here; the child's ends closed here.
        unsafe {
            libc::close(ready[1]);
            libc::close(go[0]);
            StaleHolder {
                pid,
                ready: std::os::fd::FromRawFd::from_raw_fd(ready[0]),
                go: std::os::fd::FromRawFd::from_raw_fd(go[1]),
            }
        }
    }

    /// Waits until the holder wrote, truncated and lost its lock (at most 20 s).
    fn wait_until_unlocked(&self) {
        let got = self.read(1, Duration::from_secs(20));
        assert_eq!(got, vec![0], "the holder's steps (a failed step's number)");
    }

    /// Tells it to close; the errors of its two closes (0: none).
    fn close(self) -> (i32, i32) {
        // SAFETY: write(2) on our pipe end.
        unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(&self.go), [1u8].as_ptr().cast(), 1) };
        let got = self.read(2, Duration::from_secs(60));
        (i32::from(got[0]), i32::from(got[1]))
    }

    fn read(&self, n: usize, limit: Duration) -> Vec<u8> {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.ready);
        let mut out = Vec::new();
        let deadline = Instant::now() + limit;
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the holder process did not answer");
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            // SAFETY: poll(2) and read(2) on our pipe end with valid buffers.
            unsafe {
                if libc::poll(&mut pfd, 1, left.as_millis() as i32) > 0 {
                    let mut buf = [0u8; 2];
                    let r = libc::read(fd, buf.as_mut_ptr().cast(), n - out.len());
                    assert!(r > 0, "the holder process ended early");
                    out.extend_from_slice(&buf[..r as usize]);
                }
            }
        }
        out
    }
}

impl Drop for StaleHolder {
    fn drop(&mut self) {
        // SAFETY: kill(2) and waitpid(2) of the child this test forked.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::waitpid(self.pid, std::ptr::null_mut(), 0);
        }
    }
}

/// `user.chubby.my_sequencer` is the caller's own sequencer: a command run by
/// `flock FILE -c CMD` reads the sequencer of the lock `flock` holds for it (what it passes to
/// a server that fences its requests); a process that holds no lock reads it empty.
#[test]
fn my_sequencer_is_the_sequencer_of_the_lock_the_caller_works_under() {
    if !fuse_available("my_sequencer_is_the_sequencer_of_the_lock_the_caller_works_under") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let a = Mount::start(&cell, &[]);
    let job = a.path("job");
    fs::write(&job, "x").expect("write");
    let f = job.display();
    let out = sh(&format!(
        "flock {f} -c 'getfattr --only-values -n user.chubby.my_sequencer {f}; echo; \
         getfattr --only-values -n user.chubby.sequencer {f}'"
    ));
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let (mine, holders) = text.split_once('\n').expect("two values");
    assert!(mine.starts_with("seq1:"), "a sequencer: {mine:?}");
    assert_eq!(mine, holders.trim_end(), "the caller's sequencer is the holder's");
    assert_eq!(xattr(&job, "user.chubby.my_sequencer").as_deref(), Some(""), "no lock, no sequencer");
}

/// A write is fenced by the lock held when it was made, not by one its open saw before: a
/// shell appending to a file between rounds of `flock FILE -c CMD` (whose CMD appends too)
/// loses no line once a round's lock is gone.
#[test]
fn writes_between_lock_rounds_are_not_fenced_by_an_earlier_round() {
    if !fuse_available("writes_between_lock_rounds_are_not_fenced_by_an_earlier_round") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let a = Mount::start(&cell, &[]);
    let log = a.path("log");
    fs::write(&log, "").expect("create");
    let f = log.display();
    let out = sh(&format!("{{ flock {f} -c 'echo a'; echo b; flock {f} -c 'echo c'; echo d; }} >> {f}"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(fs::read_to_string(&log).expect("read"), "a\nb\nc\nd\n");
}

/// `flock DIR` is refused with a message: the kernel keeps directory locks to itself (they
/// never reach the daemon), so it would exclude nothing across hosts. Listing still works.
#[test]
fn flock_of_a_directory_is_refused_not_silently_local() {
    if !fuse_available("flock_of_a_directory_is_refused_not_silently_local") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let a = Mount::start(&cell, &[]);
    fs::create_dir(a.path("svc")).expect("mkdir");
    let out = Command::new("flock").arg("-n").arg(a.path("svc")).arg("true").output().expect("flock");
    assert!(!out.status.success(), "flock on a directory fails: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Is a directory"), "{out:?}");
    assert!(fs::read_dir(a.path("svc")).is_ok(), "other tools still open the directory");
}
