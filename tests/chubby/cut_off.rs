//! A `chubby lock` holder cut off from its cell stops its command before anyone else can take the lock.

use super::*;

/// `chubby lock` run inside a network namespace whose link to the cell a test cuts.
fn lock_in(ns: &Netns, cell: &TestCell, args: &[&str]) -> std::process::Child {
    ns.command(&bin("chubby"))
        .args(["--cell", &cell.cell_arg()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chubby lock in the namespace")
}

fn netns(tag: u32) -> Netns {
    Netns::create(tag).unwrap_or_else(|e| panic!("this test needs root and iproute2 for a network namespace: {e}"))
}

/// What became of a `chubby lock` holder cut off from its cell, and of a client on the cell's
/// side that queued for the same lock right after the cut.
struct CutOff {
    /// The holder's exit status, if it exited within the limit.
    exit: Option<std::process::ExitStatus>,
    stderr: String,
    /// Whether the holder's command still runs once the holder exited.
    command_alive: bool,
    /// Since the cut: when the holder exited, and when the other client got the lock.
    stopped: Duration,
    granted: Duration,
    other_succeeded: bool,
}

/// Runs `chubby --grace GRACE lock --lock-delay DELAY PATH` in network namespace `tag` against
/// a cell with 1 s leases, cuts the namespace off once it holds the lock, and watches.
fn cut_off_holder(tag: u32, grace: &str, lock_delay: &str, path: &str, exit_limit: Duration) -> CutOff {
    let ns = netns(tag);
    let cell =
        TestCell::start(CellOptions { session_lease_ms: 1000, host: ns.host_ip.clone(), ..CellOptions::default() });
    runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let mut pids = Pids::default();
    let mut holder = lock_in(
        &ns,
        &cell,
        &["--grace", grace, "lock", "--lock-delay", lock_delay, path, "--", "sh", "-c", "echo $$; exec sleep 600"],
    );
    pids.0.push(holder.id());
    let shell: u32 = lines_of(holder.stdout.take().unwrap())
        .recv_timeout(Duration::from_secs(30))
        .expect("the holder got the lock")
        .parse()
        .unwrap();
    pids.0.push(shell);

    ns.cut().unwrap();
    let cut = Instant::now();
    // Another client, on the cell's side, queues for the lock.
    let mut other = Command::new(bin("chubby"))
        .args(["--cell", &cell.cell_arg(), "lock", path, "--", "echo", "granted"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    pids.0.push(other.id());
    let other_out = lines_of(other.stdout.take().unwrap());

    let exit = exit_within(&mut holder, exit_limit);
    let stopped = cut.elapsed();
    let mut stderr = String::new();
    if exit.is_some() {
        std::io::Read::read_to_string(&mut holder.stderr.take().unwrap(), &mut stderr).unwrap();
    }
    // SAFETY: kill(2) with signal 0 only checks whether the process exists.
    let command_alive = unsafe { libc::kill(shell as libc::pid_t, 0) } == 0;
    assert_eq!(other_out.recv_timeout(Duration::from_secs(30)).expect("the other client gets the lock"), "granted");
    let granted = cut.elapsed();
    let other_succeeded = exit_within(&mut other, Duration::from_secs(10)).is_some_and(|s| s.success());
    CutOff { exit, stderr, command_alive, stopped, granted, other_succeeded }
}

#[test]
fn a_client_cut_off_past_its_grace_period_loses_the_session_and_its_command_stops_first() {
    let r = cut_off_holder(1, "2s", "8s", "/ls/local/cut", Duration::from_secs(30));
    let st = r.exit.expect("chubby lock gives up on its session");
    assert_eq!(st.code(), Some(6), "exit code 6: session lost");
    assert!(r.stderr.contains("session lost"), "{}", r.stderr);
    assert!(!r.command_alive, "the command was stopped");
    assert!(
        r.stopped < r.granted,
        "the cut-off holder's command ran until {:?}, after the lock went to another client at {:?}",
        r.stopped,
        r.granted
    );
    assert!(r.other_succeeded);
}

#[test]
fn with_no_lock_delay_a_cut_off_holder_stops_its_command_when_its_lease_ends() {
    // A long grace period: the session is not given up, but with lock-delay 0 the lock may go
    // to another client as soon as the master's lease runs out, so the command must stop then.
    let r = cut_off_holder(2, "60s", "0", "/ls/local/cut0", Duration::from_secs(20));
    let st = r.exit.expect("chubby lock stops at the end of its lease");
    assert_eq!(st.code(), Some(6));
    assert!(r.stderr.contains("jeopardy"), "{}", r.stderr);
    assert!(r.stopped < r.granted);
}
