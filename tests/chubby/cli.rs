//! The `chubby` CLI: namespace commands and their exit codes, `elect`, `barrier`, and finding the cell.

use super::*;

#[test]
fn the_cli_reads_and_writes_the_namespace_with_documented_exit_codes() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let chubby = |args: &[&str]| {
        let out = Command::new(bin("chubby"))
            .env("CHUBBY_CELL", cell.cell_arg())
            .envs(cell.client_env())
            .args(args)
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(chubby(&["mkdir", "-p", "/ls/local/svc/web"]).0, 0);
    assert_eq!(chubby(&["mkdir", "/ls/local/svc"]).0, 1, "mkdir of an existing directory fails without -p");
    assert_eq!(chubby(&["put", "/ls/local/svc/web/master", "10.0.0.1:80"]).0, 0);
    assert_eq!(chubby(&["get", "/ls/local/svc/web/master"]), (0, "10.0.0.1:80\n".into()));
    assert_eq!(chubby(&["get", "--stale", "/ls/local/svc/web/master"]).1, "10.0.0.1:80\n");
    assert_eq!(chubby(&["ls", "/ls/local/svc"]), (0, "web/\n".into()));
    let (code, json) = chubby(&["--json", "stat", "/ls/local/svc/web/master"]);
    assert_eq!(code, 0);
    assert!(json.contains("\"content_generation\":2"), "{json}");

    // CAS: --if-generation N writes only at generation N; 0 only creates.
    assert_eq!(chubby(&["put", "--if-generation", "1", "/ls/local/svc/web/master", "x"]).0, 8);
    assert_eq!(chubby(&["put", "--if-generation", "2", "/ls/local/svc/web/master", "10.0.0.2:80"]).0, 0);
    assert_eq!(chubby(&["put", "--if-generation", "0", "/ls/local/svc/web/master", "x"]).0, 1, "exists");
    assert_eq!(chubby(&["put", "--if-generation", "0", "/ls/local/svc/web/new", "first"]).0, 0);
    assert_eq!(chubby(&["get", "/ls/local/svc/web/new"]).1, "first\n");

    // Fencing from a script: the sequencer of a lock held by `chubby lock` fences a write while
    // it is held, and is stale (exit 7) once the command ended.
    let (code, seq) = chubby(&["lock", "/ls/local/svc/web/lock", "--", "sh", "-c", "echo $CHUBBY_SEQUENCER"]);
    assert_eq!(code, 0);
    let seq = seq.trim();
    assert_eq!(chubby(&["check-sequencer", seq]), (7, "stale\n".into()));
    assert_eq!(chubby(&["put", "--sequencer", seq, "/ls/local/svc/web/master", "x"]).0, 7);
    let script = format!(
        "{} check-sequencer $CHUBBY_SEQUENCER && {} put --sequencer $CHUBBY_SEQUENCER /ls/local/svc/web/master fenced",
        bin("chubby").display(),
        bin("chubby").display()
    );
    assert_eq!(chubby(&["lock", "/ls/local/svc/web/lock", "--", "sh", "-c", &script]).0, 0);
    assert_eq!(chubby(&["get", "/ls/local/svc/web/master"]).1, "fenced\n");
    // `chubby sequencer PATH` names the current holder's sequencer to any script; a free lock
    // has none (exit 1).
    let script = format!(
        "test \"$({} sequencer /ls/local/svc/web/lock)\" = \"$CHUBBY_SEQUENCER\" && echo same",
        bin("chubby").display()
    );
    assert_eq!(chubby(&["lock", "/ls/local/svc/web/lock", "--", "sh", "-c", &script]), (0, "same\n".into()));
    assert_eq!(chubby(&["sequencer", "/ls/local/svc/web/lock"]), (1, String::new()));

    // Not found, not empty, removal.
    assert_eq!(chubby(&["get", "/ls/local/nothing"]).0, 3);
    assert_eq!(chubby(&["rm", "/ls/local/svc"]).0, 1, "a directory must be empty");
    assert_eq!(chubby(&["rm", "/ls/local/svc/web/new"]).0, 0);
    assert_eq!(chubby(&["get", "/ls/local/svc/web/new"]).0, 3);
    assert_eq!(chubby(&["get", "relative/path"]).0, 2, "bad usage");

    // status: every replica with its lag behind the master and the cell's sessions (an
    // `elect`-style holder keeps one open while this runs).
    let mut holder = Command::new(bin("chubby"))
        .env("CHUBBY_CELL", cell.cell_arg())
        .envs(cell.client_env())
        .args(["lock", "/ls/local/svc/web/lock", "--", "sh", "-c", "echo $$; exec sleep 600"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pids = Pids(vec![holder.id()]);
    let shell: u32 =
        lines_of(holder.stdout.take().unwrap()).recv_timeout(Duration::from_secs(30)).unwrap().parse().unwrap();
    pids.0.push(shell);
    // A node whose lock is held is not removed (exit 9), so no second holder gets in.
    assert_eq!(chubby(&["rm", "/ls/local/svc/web/lock"]).0, 9, "rm of a held lock's node");
    assert_eq!(chubby(&["lock", "--timeout", "0", "/ls/local/svc/web/lock", "--", "true"]).0, 4, "still held");
    let (code, json) = chubby(&["--json", "status"]);
    assert_eq!(code, 0);
    assert_eq!(json.matches("\"lag\":").count(), 3, "{json}");
    assert!(json.contains("\"leased_sessions\":1"), "the master leases the holder's session: {json}");
    // Its command ended, `chubby lock` releases the lock and exits (its session closed: no
    // lock-delay); then the node can go.
    pids.kill(shell);
    assert!(exit_within(&mut holder, Duration::from_secs(10)).is_some(), "chubby lock exits after its command");
    let mut removed = 9;
    for _ in 0..100 {
        removed = chubby(&["rm", "/ls/local/svc/web/lock"]).0;
        if removed != 9 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(removed, 0);
}

#[test]
fn elect_publishes_the_leader_and_the_next_one_takes_over() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let mut pids = Pids::default();
    let elect = |value: &str| {
        let mut c = Command::new(bin("chubby"))
            .env("CHUBBY_CELL", cell.cell_arg())
            .envs(cell.client_env())
            .args([
                "elect",
                "/ls/local/leader",
                value,
                "--",
                "sh",
                "-c",
                &format!("echo {value} leads $$; exec sleep 600"),
            ])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start chubby elect");
        let out = lines_of(c.stdout.take().unwrap());
        (c, out)
    };
    let get = || {
        let out = Command::new(bin("chubby"))
            .env("CHUBBY_CELL", cell.cell_arg())
            .envs(cell.client_env())
            .args(["get", "/ls/local/leader"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Each command prints its pid (the shell execs sleep), so the test can stop it by PID.
    let leads = |line: String, pids: &mut Pids| {
        let (what, pid) = line.rsplit_once(' ').expect("`NAME leads PID`");
        pids.0.push(pid.parse().expect("pid"));
        what.to_string()
    };
    let (mut a, a_out) = elect("alpha");
    pids.0.push(a.id());
    assert_eq!(leads(a_out.recv_timeout(Duration::from_secs(30)).unwrap(), &mut pids), "alpha leads");
    assert_eq!(get(), "alpha");
    let (b, b_out) = elect("beta");
    pids.0.push(b.id());
    assert!(b_out.recv_timeout(Duration::from_millis(1000)).is_err(), "one leader at a time");
    // The leader steps down (SIGTERM reaches its command; the lock is released on exit).
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(a.id() as libc::pid_t, libc::SIGTERM) };
    let _ = a.wait();
    assert_eq!(leads(b_out.recv_timeout(Duration::from_secs(30)).unwrap(), &mut pids), "beta leads");
    assert_eq!(get(), "beta");
}

#[test]
fn barrier_releases_all_n_together_and_stays_open() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let mut pids = Pids::default();
    let mut arrive = |name: &str| {
        let mut c = Command::new(bin("chubby"))
            .env("CHUBBY_CELL", cell.cell_arg())
            .envs(cell.client_env())
            .args(["barrier", "/ls/local/start", "3", "--", "echo", name])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start chubby barrier");
        pids.0.push(c.id());
        let out = lines_of(c.stdout.take().unwrap());
        (c, out)
    };
    let (mut a, a_out) = arrive("a");
    let (mut b, b_out) = arrive("b");
    assert!(a_out.recv_timeout(Duration::from_millis(1500)).is_err(), "2 of 3 at the barrier: nobody starts");
    assert!(b_out.try_recv().is_err());
    let (mut c, c_out) = arrive("c");
    for (out, name) in [(&a_out, "a"), (&b_out, "b"), (&c_out, "c")] {
        assert_eq!(out.recv_timeout(Duration::from_secs(30)).expect("released"), name);
    }
    // A late arrival finds the latch open.
    let (mut d, d_out) = arrive("d");
    assert_eq!(d_out.recv_timeout(Duration::from_secs(30)).expect("the barrier stays open"), "d");
    for p in [&mut a, &mut b, &mut c, &mut d] {
        assert!(p.wait().unwrap().success());
    }
}

#[test]
fn the_cell_is_found_from_a_cell_file_or_a_host_name_through_any_replica() {
    let cell = TestCell::start(CellOptions::default());
    let leader =
        runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    // Only a follower is named: discovery follows its redirect to the master.
    let follower = &cell.addrs[(leader % cell.addrs.len() as u64) as usize];
    let port = follower.rsplit_once(':').unwrap().1;
    let file = cell.dir.path().join("cell");
    std::fs::write(&file, format!("# one replica is enough\n{follower}\n")).unwrap();
    let chubby = |cell_arg: &str, args: &[&str]| {
        let out =
            Command::new(bin("chubby")).envs(cell.client_env()).args(["--cell", cell_arg]).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(chubby(&format!("@{}", file.display()), &["put", "/ls/local/found", "yes"]).0, 0);
    // `localhost` resolves to 127.0.0.1 (and perhaps ::1, where nothing listens).
    assert_eq!(chubby(&format!("localhost:{port}"), &["get", "/ls/local/found"]), (0, "yes\n".into()));
    let missing = cell.dir.path().join("no-such-file");
    assert_eq!(chubby(&format!("@{}", missing.display()), &["get", "/ls/local/found"]).0, 2, "a usage error");
}
