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
/// it and written, the old holder's store is refused (`EPERM` at its close) and the next
/// holder's contents stay.
#[test]
fn a_write_made_under_a_lock_since_lost_is_refused_and_the_next_holders_stays() {
    if !fuse_available("a_write_made_under_a_lock_since_lost_is_refused_and_the_next_holders_stays") {
        return;
    }
    let cell = TestCell::start(CellOptions::default());
    let (a, b) = (Mount::start(&cell, &[]), Mount::start(&cell, &[]));
    fs::write(a.path("job"), "v0").expect("write");
    let mine = fs::OpenOptions::new().read(true).write(true).open(a.path("job")).expect("open");
    // SAFETY: a zeroed flock is a valid whole-file request once its type is set.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl(2) on an open descriptor with a valid flock.
    assert_eq!(unsafe { libc::fcntl(mine.as_raw_fd(), libc::F_SETLK, &lock) }, 0, "lock taken");
    await_held(&cell, "/ls/local/job");
    (&mine).write_all(b"stale holder").expect("write, kept until close");
    drop(fs::File::open(a.path("job")).expect("a second open")); // its close drops the lock

    let mut groups = Groups::default();
    let mut next =
        flock(&["-x", "-w", "10"], &b.path("job"), &format!("echo next > {}", b.path("job").display()), &mut groups);
    let st = exit_within(&mut next, Duration::from_secs(20)).expect("the next holder is done");
    assert!(st.success(), "another host takes the lock and writes: {st:?}");

    // SAFETY: close(2) of a descriptor this test owns (taken out of its File).
    let closed = unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(mine)) };
    let err = std::io::Error::last_os_error().raw_os_error();
    assert_eq!((closed, err), (-1, Some(libc::EPERM)), "the store made under the lost lock is refused");
    assert_eq!(fs::read_to_string(b.path("job")).expect("read"), "next\n", "the next holder's write stays");
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
