//! A mount through faults: a master failover keeps its files and flocks; cut off past its grace period, they fail with EIO.

use super::*;

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

/// A lock let go while its Release cannot reach the cell (the master paused, then killed with
/// the Release unread) is released once a master serves again, not kept for as long as the
/// mount's session lives.
#[test]
fn a_release_that_fails_at_close_is_retried_until_the_cell_has_it() {
    if !fuse_available("a_release_that_fails_at_close_is_retried_until_the_cell_has_it") {
        return;
    }
    let mut cell = TestCell::start(CellOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).expect("leader");
    let m = Mount::start(&cell, &["--rpc-timeout", "1s"]);
    fs::write(m.path("job"), "v1").expect("write");
    let file = fs::File::open(m.path("job")).expect("open");
    // SAFETY: flock(2) on an open descriptor.
    assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0, "lock taken");
    await_held(&cell, "/ls/local/job");

    // The master stops reading; the holder closes; its Release times out unanswered; the
    // master dies with it unread. The session lives on at the next master.
    let master = cell.leader(&rt);
    let pid = cell.pid(master).expect("master's pid");
    // SAFETY: kill(2) of a replica this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    drop(file);
    std::thread::sleep(Duration::from_secs(2));
    cell.kill(master);
    let got = chubby(&cell, &["lock", "--timeout", "40s", "/ls/local/job", "--", "true"]);
    assert!(got.status.success(), "the lock was released once a master served: {got:?}");
}

/// Calls waiting on a cell out of reach (a lookup of a file this host never read, a create,
/// and the store at a close) do not hold their process past a `kill -9` for the whole
/// `--rpc-timeout`: the daemon answers a dying caller at once.
#[test]
fn a_process_killed_while_its_call_waits_on_an_unreachable_cell_exits_at_once() {
    if !fuse_available("a_process_killed_while_its_call_waits_on_an_unreachable_cell_exits_at_once") {
        return;
    }
    let ns = Netns::create(2).unwrap_or_else(|e| panic!("this test needs root and iproute2: {e}"));
    // The default lease: the session outlives the cut however slow the machine, so the
    // killed writer's store can go through once the network is back.
    let cell = TestCell::start(CellOptions { host: ns.host_ip.clone(), ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).expect("leader");
    let mut m = Mount::start_in(&cell, &["--rpc-timeout", "120s", "--grace", "120s"], Some(&ns));
    assert!(chubby(&cell, &["put", "/ls/local/other", "x"]).status.success());
    let job = m.path("job");
    // A writer with its file open, which writes and closes when told (a line on stdin). The
    // write changes the open's copy alone; the close of the shell's copy of the descriptor
    // (the redirection's) stores it.
    let mut closer = Command::new("sh")
        .arg("-c")
        .arg(format!("exec 3>{}; read go; echo data >&3", job.display()))
        .stdin(Stdio::piped())
        .spawn()
        .expect("sh");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::metadata(&job).is_err() {
        assert!(Instant::now() < deadline, "the writer never created its file");
        std::thread::sleep(Duration::from_millis(20));
    }

    ns.cut().expect("cut");
    let mut pids = Pids::default();
    let mut reader = Command::new("cat").arg(m.path("other")).stdout(Stdio::null()).spawn().expect("cat");
    pids.0.push(reader.id());
    let mut creator =
        Command::new("sh").arg("-c").arg(format!("echo new > {}", m.path("new").display())).spawn().expect("sh");
    pids.0.push(creator.id());
    closer.stdin.take().expect("stdin").write_all(b"go\n").expect("tell the writer to write and close");
    // Each waits on the cell now (checked: none has exited); the kill must free them. (All
    // are killed first: a lookup in a directory waits, in the kernel, for a create there.)
    std::thread::sleep(Duration::from_millis(500));
    let mut children = [("cat", &mut reader), ("create", &mut creator), ("close", &mut closer)];
    for (name, child) in children.iter_mut() {
        let early = child.try_wait().expect("try_wait");
        assert!(early.is_none(), "{name} returned without the cell: {early:?}");
        let _ = child.kill();
    }
    for (name, child) in children {
        let st = exit_within(child, Duration::from_secs(10));
        assert!(st.is_some(), "{name} killed while its call waits on the cell stays stuck");
    }

    // The calls go on once the cell is back: the killed writer's store at close is made, and
    // nothing is left open (a stop with a file open exits 3).
    ns.heal().expect("heal");
    let deadline = Instant::now() + Duration::from_secs(60);
    while String::from_utf8_lossy(&chubby(&cell, &["get", "/ls/local/job"]).stdout) != "data\n" {
        assert!(Instant::now() < deadline, "the killed writer's store never went through");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(200));
    let st = m.stop().expect("chubby-mount exits on SIGTERM");
    assert!(st.success(), "no open left behind by the killed calls: {st:?}");
}

/// An upgrade interrupted while the cell is out of reach cannot be withdrawn then (the mount
/// cut off; the master it sent the withdrawal to dies meanwhile): the mount keeps trying, and
/// once the network is back the next master drops the queued upgrade, and the holder still
/// holds the shared lock it was told it kept.
#[test]
fn an_upgrade_interrupted_while_the_cell_is_out_of_reach_is_withdrawn_once_it_is_back() {
    if !fuse_available("an_upgrade_interrupted_while_the_cell_is_out_of_reach_is_withdrawn_once_it_is_back") {
        return;
    }
    let ns = Netns::create(4).unwrap_or_else(|e| panic!("this test needs root and iproute2: {e}"));
    let mut cell = TestCell::start(CellOptions { host: ns.host_ip.clone(), ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).expect("leader");
    let m = Mount::start_in(&cell, &["--rpc-timeout", "1s", "--grace", "60s"], Some(&ns));
    let b = Mount::start(&cell, &[]);
    let job = m.path("job");
    fs::write(&job, "").expect("create");
    let mut groups = Groups::default();
    let mut reader = flock(&["-s"], &b.path("job"), "sleep 60", &mut groups);
    await_held(&cell, "/ls/local/job");
    // A shell on the host to be cut off shares the lock, then tries to upgrade for 5 s.
    let script = format!(
        "exec 9<>{}; flock -s 9 && echo shared; read go; flock -x -w 5 9; echo upgrade=$?; read again; \
         flock -s -n 9; echo shared=$?; read go; flock -x -w 5 9; echo upgrade=$?; read again; \
         flock -x 9; echo upgraded=$?; exec sleep 60",
        job.display()
    );
    let (mut shell, said) = shell(&script, &mut groups);
    let line = || said.recv_timeout(Duration::from_secs(30)).expect("the shell's next line");
    assert_eq!(line(), "shared");
    writeln!(shell.stdin.as_ref().expect("stdin"), "go").expect("tell the shell to upgrade");
    await_queued_locks(&cell, 1);

    // Cut off, the upgrade times out and its withdrawal goes unanswered; the master it went
    // to dies. The mount's session lives on at the next master.
    ns.cut().expect("cut");
    assert_eq!(line(), "upgrade=1", "flock -x -w 5 while the other host shares the lock");
    let master = cell.leader(&rt);
    cell.kill(master);
    // (The next master's count, once one serves.)
    assert_eq!(leader_status(&cell, "queued_locks"), 1, "the cell has not heard of the withdrawal");

    // Back: the withdrawal reaches the next master; both readers still hold the lock.
    ns.heal().expect("heal");
    await_queued_locks(&cell, 0);
    let holders = xattr(&b.path("job"), "user.chubby.sequencer").unwrap_or_default();
    assert!(holders.lines().count() == 2 && !holders.contains(":x:"), "two readers: {holders}");
    writeln!(shell.stdin.as_ref().expect("stdin"), "again").expect("tell the shell to ask again");
    assert_eq!(line(), "shared=0", "the shell still holds its shared lock");

    // Again cut off, an upgrade times out; once the network is back the shell asks again at
    // once, and its new upgrade waits for the other reader. The withdrawal of the first,
    // still retried in the background, must not withdraw the second.
    writeln!(shell.stdin.as_ref().expect("stdin"), "go").expect("tell the shell to upgrade");
    await_queued_locks(&cell, 1);
    ns.cut().expect("cut");
    assert_eq!(line(), "upgrade=1", "flock -x -w 5 while the other host shares the lock");
    ns.heal().expect("heal");
    writeln!(shell.stdin.as_ref().expect("stdin"), "again").expect("tell the shell to upgrade, waiting");
    await_queued_locks(&cell, 1);
    std::thread::sleep(Duration::from_secs(6));
    if let Ok(early) = said.try_recv() {
        panic!("the upgrade still waits for the other reader, but the shell said {early:?}");
    }
    assert_eq!(leader_status(&cell, "queued_locks"), 1, "the upgrade is still queued");
    groups.kill(reader.id());
    let _ = reader.wait();
    assert_eq!(line(), "upgraded=0", "the upgrade once the other reader is gone");
    for child in [&mut reader, &mut shell] {
        groups.kill(child.id());
        let _ = child.wait();
    }
}
