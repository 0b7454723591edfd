//! Sessions and ephemeral nodes under faults: an ephemeral node exists exactly while its
//! session lives. Owners run `chubby put --ephemeral` (one owner in the network namespace the
//! nemesis cuts off from the cell), each node under a name of its own, hold it for a while and
//! stop it with SIGTERM; the test also pauses an owner (SIGSTOP) past its lease. An observer
//! lists the directory all along.
//!
//! What must hold:
//! - an owner untouched by a client fault keeps its session through every cell fault: its node
//!   is in every listing made between its creation and the owner's stop;
//! - an owner whose session is lost says so (exit 6), and its node is in no listing made after
//!   that;
//! - an owner paused past its lease finds its session lost once resumed (exit 6), never holds on;
//! - a node that left a listing never comes back; every node is gone soon after its owner.
//! - an owner stopped with SIGTERM after its session was lost (paused past its lease, the
//!   signal waiting) says so too, rather than claim it held its node to the end; so does one
//!   resumed while the master's expiry of its session is still being committed (a slow disk).
//!
//! `CHUBBY_EPHEMERAL_SECS` sets how long the faults go on (12 s by default, as in CI;
//! `CHUBBY_LONG=1`: 300 s); `CHUBBY_EPHEMERAL_SEED` replays a run's choice of faults and
//! `CHUBBY_FAULTS` narrows the cell's. A failure prints the seed and keeps a history file.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::nemesis::{Fault, Nemesis};
use e2e_tests::{bin, exit_within, lines_of, wait_converged, CellOptions, Pids, Rng, TestCell};
use fuse_mount::client::{OpenOptions, Session, SessionOptions};

const DIR: &str = "/ls/local/eph";
const LEASE_MS: u64 = 2000;
const OWNERS: usize = 4;
/// How long a paused owner stays stopped: well past its lease, and the half lease a new master
/// adds.
const PAUSE: Duration = Duration::from_millis(3 * LEASE_MS + 2000);
/// An owner stopped with SIGTERM closes its session; if that call fails, its node goes when
/// the lease runs out at the master, which may be a new master adding half a lease.
const REAP_BOUND: Duration = Duration::from_millis(3 * LEASE_MS + 3000);

fn duration() -> Duration {
    if let Ok(s) = std::env::var("CHUBBY_EPHEMERAL_SECS") {
        return Duration::from_secs(s.parse().expect("CHUBBY_EPHEMERAL_SECS is a number"));
    }
    Duration::from_secs(if std::env::var("CHUBBY_LONG").is_ok_and(|v| v == "1") { 300 } else { 12 })
}

/// The life of one owner's node.
#[derive(Clone, Debug, Default)]
struct Life {
    owner: usize,
    /// When the owner said the node was created.
    created: Option<Instant>,
    /// When the test paused the owner (SIGSTOP), if it did.
    paused: Option<Instant>,
    /// When the test sent SIGTERM, if it did.
    terminated: Option<Instant>,
    /// When the owner exited, and its exit code.
    exited: Option<(Instant, i32)>,
}

/// The owner currently running in each slot: its process and its node's name.
#[derive(Clone, Default)]
struct Slot {
    pid: u32,
    name: String,
    /// The owner holds its node now and may be paused.
    holding: bool,
    /// The test pauses this owner now: its thread leaves it be.
    paused: bool,
}

type Lives = Arc<Mutex<BTreeMap<String, Life>>>;

/// Runs owners one after another in slot `i` until `stop`.
#[allow(clippy::too_many_arguments)]
fn owner_loop(
    i: usize,
    seed: u64,
    cell_arg: String,
    netns: Option<String>,
    lives: Lives,
    slots: Arc<Mutex<Vec<Slot>>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng::from_seed(seed ^ (i as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut pids = Pids::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("o{i}-{n}");
        let mut command = match &netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(bin("chubby"));
                c
            }
            None => Command::new(bin("chubby")),
        };
        let mut child = command
            .env("CHUBBY_CELL", &cell_arg)
            .args(["put", "--ephemeral", &format!("{DIR}/{name}"), "up"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        pids.0.push(child.id());
        lives.lock().unwrap().insert(name.clone(), Life { owner: i, ..Life::default() });
        slots.lock().unwrap()[i] = Slot { pid: child.id(), name: name.clone(), ..Slot::default() };
        let lines = lines_of(child.stdout.take().unwrap());
        let created = lines.recv_timeout(Duration::from_secs(30)).ok().filter(|l| l.starts_with("OK"));
        if created.is_some() {
            lives.lock().unwrap().get_mut(&name).unwrap().created = Some(Instant::now());
            slots.lock().unwrap()[i].holding = true;
        }
        // Hold the node a while, unless the owner ends on its own first; a pause (decided
        // under the slots' lock while holding) is waited out.
        let hold = Instant::now() + Duration::from_millis(500 + rng.below(2500));
        let mut status;
        loop {
            status = child.try_wait().unwrap();
            let mut s = slots.lock().unwrap();
            if status.is_some() || (Instant::now() >= hold && !s[i].paused) {
                s[i].holding = false;
                break;
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(10));
        }
        let was_paused = lives.lock().unwrap()[&name].paused.is_some();
        if status.is_none() && !was_paused {
            lives.lock().unwrap().get_mut(&name).unwrap().terminated = Some(Instant::now());
            // SAFETY: SIGTERM to the owner this thread started.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        // Bounded: an owner stopped with SIGTERM closes its session within its call timeout;
        // a paused one finds its session lost once its resumption is refused.
        let deadline = Instant::now() + Duration::from_secs(40);
        while status.is_none() && Instant::now() < deadline {
            status = child.try_wait().unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        let code = status.map_or(-1, |s| s.code().unwrap_or(-1));
        lives.lock().unwrap().get_mut(&name).unwrap().exited = Some((Instant::now(), code));
        pids.kill(child.id());
        let _ = child.wait();
    }
}

/// One listing of the directory: when it was asked for, when it was answered, what it held.
type Listing = (Instant, Instant, BTreeSet<String>);

#[test]
fn an_ephemeral_node_exists_exactly_while_its_session_lives() {
    let faults: Vec<Fault> = Fault::ALL.iter().copied().filter(|f| *f != Fault::DiskFull).collect();
    let mut nemesis = Nemesis::new("CHUBBY_EPHEMERAL_SEED", &faults);
    let seed = nemesis.seed;
    let mut rng = Rng::from_seed(seed ^ 0xe9e3);
    let mut cell = nemesis.start_cell(CellOptions { session_lease_ms: LEASE_MS, ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let cell_arg = cell.cell_arg();
    let st = Command::new(bin("chubby")).env("CHUBBY_CELL", &cell_arg).args(["mkdir", DIR]).status().unwrap();
    assert!(st.success(), "mkdir {DIR}");

    // The observer lists the directory without pause.
    let stop_listing = Arc::new(AtomicBool::new(false));
    let listings: Arc<Mutex<Vec<Listing>>> = Arc::default();
    // A listing that gets no answer for 8 s is reported as a stall, and the observer opens a
    // new session, as a monitoring tool would: the property checked here is the nodes', and a
    // stall must not leave the run without the listings it needs.
    let stalls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let observer = rt.spawn({
        let (addrs, stop, listings, stalls) =
            (cell.addrs.clone(), stop_listing.clone(), listings.clone(), stalls.clone());
        async move {
            let opts = SessionOptions {
                principal: "observer".into(),
                timeout: Duration::from_secs(5),
                grace: Duration::from_secs(60),
                cache: true,
                tls: None,
            };
            while !stop.load(Ordering::Relaxed) {
                let Ok(s) = Session::open(addrs.clone(), opts.clone()).await else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let Ok((dir, _)) = s.open_node(DIR, OpenOptions::default()).await else {
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.close()).await;
                    continue;
                };
                let mut last_answer = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let asked = Instant::now();
                    match tokio::time::timeout(Duration::from_secs(8), s.read_dir(&dir)).await {
                        Ok(Ok(entries)) => {
                            let names = entries.into_iter().map(|e| e.name).collect();
                            listings.lock().unwrap().push((asked, Instant::now(), names));
                            last_answer = Instant::now();
                        }
                        Ok(Err(e)) => eprintln!("observer: listing failed: {e} (session {:?})", *s.state().borrow()),
                        Err(_) => {
                            eprintln!("observer: a listing got no answer in 8 s (session {:?})", *s.state().borrow())
                        }
                    }
                    if last_answer.elapsed() > Duration::from_secs(8) {
                        eprintln!("observer: STALL: no listing for 8 s (session {:?}); opening a new session", {
                            *s.state().borrow()
                        });
                        stalls.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = tokio::time::timeout(Duration::from_secs(2), s.close()).await;
            }
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let lives: Lives = Arc::default();
    let slots = Arc::new(Mutex::new(vec![Slot::default(); OWNERS]));
    let netns = nemesis.client_netns().map(|ns| ns.name.clone());
    let owners: Vec<_> = (0..OWNERS)
        .map(|i| {
            let (cell_arg, lives, slots, stop) = (cell_arg.clone(), lives.clone(), slots.clone(), stop.clone());
            let netns = if i == 0 { netns.clone() } else { None };
            std::thread::spawn(move || owner_loop(i, seed, cell_arg, netns, lives, slots, stop))
        })
        .collect();

    let mut pauses = 0;
    let start = Instant::now();
    while start.elapsed() < duration() {
        // The first fault pauses an owner, so even a short run checks that it hears of it.
        if pauses == 0 || rng.below(3) == 0 {
            std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
            // Pause an owner whose node exists (slot 1 and up: slot 0 is in the namespace).
            let i = 1 + rng.below(OWNERS as u64 - 1) as usize;
            let slot = {
                let mut s = slots.lock().unwrap();
                if !s[i].holding {
                    continue;
                }
                s[i].paused = true;
                lives.lock().unwrap().get_mut(&s[i].name).unwrap().paused = Some(Instant::now());
                s[i].clone()
            };
            // SAFETY: SIGSTOP and SIGCONT of an owner this test started.
            unsafe { libc::kill(slot.pid as libc::pid_t, libc::SIGSTOP) };
            std::thread::sleep(PAUSE);
            unsafe { libc::kill(slot.pid as libc::pid_t, libc::SIGCONT) };
            slots.lock().unwrap()[i].paused = false;
            pauses += 1;
            eprintln!("{:>8.3}s SIGSTOP owner {i} ({}) for {PAUSE:?}", start.elapsed().as_secs_f64(), slot.name);
        } else {
            let line = nemesis.step(&mut cell, &rt);
            eprintln!("{line}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for o in owners {
        o.join().unwrap();
    }
    // Every node goes once its owner has.
    std::thread::sleep(REAP_BOUND + Duration::from_secs(1));
    stop_listing.store(true, Ordering::Relaxed);
    rt.block_on(observer).unwrap();

    let lives = lives.lock().unwrap();
    let listings = listings.lock().unwrap();
    let fail = |why: String| -> ! {
        let path = std::env::temp_dir().join(format!("ephemeral-history-{seed}.txt"));
        let t0 = nemesis.started();
        let at = |t: Instant| format!("{:.3}", t.duration_since(t0).as_secs_f64());
        let mut text = format!("{}\nnodes:\n", nemesis.schedule());
        for (name, l) in lives.iter() {
            text.push_str(&format!(
                "{name} owner {} created {:?} paused {:?} terminated {:?} exited {:?}\n",
                l.owner,
                l.created.map(at),
                l.paused.map(at),
                l.terminated.map(at),
                l.exited.map(|(t, c)| (at(t), c))
            ));
        }
        text.push_str("listings (asked, answered, names):\n");
        for (a, b, names) in listings.iter() {
            text.push_str(&format!("{} {} {names:?}\n", at(*a), at(*b)));
        }
        std::fs::write(&path, text).unwrap();
        panic!(
            "(seed {seed}) {why}; history in {}; replay the faults with CHUBBY_EPHEMERAL_SEED={seed} \
             cargo test --release -p e2e-tests --test ephemeral",
            path.display()
        );
    };
    let last = listings.last().unwrap_or_else(|| fail("no listing at all".into()));
    let all_gone = lives.values().filter_map(|l| l.exited).map(|(t, _)| t).max().map(|t| t + REAP_BOUND);
    if all_gone.is_some_and(|t| last.0 < t) {
        fail(format!("no listing made {REAP_BOUND:?} after the last owner exited"));
    }
    if !last.2.is_empty() {
        fail(format!("nodes left {REAP_BOUND:?} after their owners: {:?}", last.2));
    }
    let mut checked = 0;
    for (name, life) in lives.iter() {
        let in_netns = life.owner == 0 && netns.is_some();
        let Some((exit_at, code)) = life.exited else { fail(format!("{name}: owner never exited")) };
        if life.paused.is_some() && code != 6 {
            fail(format!("{name}: an owner paused past its lease exited {code}, not 6 (session lost)"));
        }
        if code == 6 && life.paused.is_none() && !in_netns {
            fail(format!("{name}: its owner lost its session with no client fault"));
        }
        if life.terminated.is_some() && ![0, 6].contains(&code) {
            fail(format!("{name}: its owner exited {code} on SIGTERM"));
        }
        let mut seen_gone = false;
        for (asked, answered, names) in listings.iter() {
            let present = names.contains(name);
            if present && seen_gone {
                fail(format!("{name}: back in a listing at {asked:?} after it had gone"));
            }
            if !present && life.created.is_some_and(|c| *asked > c) {
                seen_gone = true;
            }
            if present && code == 6 && *asked > exit_at {
                fail(format!("{name}: listed after its owner said its session was lost"));
            }
            if present && *asked > exit_at + REAP_BOUND {
                fail(format!("{name}: still listed {REAP_BOUND:?} after its owner exited"));
            }
            // Its owner untouched by client faults: the node is there from its creation on.
            let risky = in_netns || life.paused.is_some();
            let until = life.terminated.unwrap_or(exit_at);
            if !present && !risky && life.created.is_some_and(|c| *asked > c) && *answered < until {
                fail(format!("{name}: missing from a listing while its owner held it"));
            }
            checked += usize::from(present);
        }
    }
    let created = lives.values().filter(|l| l.created.is_some()).count();
    let lost = lives.values().filter(|l| l.exited.is_some_and(|(_, c)| c == 6)).count();
    eprintln!(
        "{:?} (seed {seed}), faults {:?}, {pauses} owner pauses: {created} ephemeral nodes created, {lost} owners \
         told their session was lost, {} listings ({checked} sightings) consistent; observer stalls: {}",
        duration(),
        nemesis.counts(),
        listings.len(),
        stalls.load(Ordering::SeqCst)
    );
    assert!(created > 10, "too few nodes created to say anything: {created}");
}

/// Starts `chubby put --ephemeral PATH` and waits until it says it holds the node.
fn hold(cell: &TestCell, path: &str) -> (std::process::Child, Pids) {
    let mut owner = Command::new(bin("chubby"))
        .env("CHUBBY_CELL", cell.cell_arg())
        .args(["put", "--ephemeral", path, "up"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Pids::default();
    pids.0.push(owner.id());
    let lines = lines_of(owner.stdout.take().unwrap());
    let said = lines.recv_timeout(Duration::from_secs(30)).expect("the owner says it created the node");
    assert!(said.starts_with("OK"), "{said}");
    (owner, pids)
}

/// Stops the owner (SIGSTOP) and checks `done` every `every` until it holds, for at most 30 s
/// (the master expires a session a lease after its last KeepAlive); whether it came to hold.
fn pause_until(owner: &std::process::Child, every: Duration, done: impl Fn() -> bool) -> bool {
    // SAFETY: a signal to the owner this test started.
    unsafe { libc::kill(owner.id() as libc::pid_t, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(every);
    }
    done()
}

/// Sends SIGTERM to a stopped owner and resumes it; its exit status (bounded wait).
fn terminate_stopped(owner: &mut std::process::Child, pids: &mut Pids) -> Option<std::process::ExitStatus> {
    let pid = owner.id() as libc::pid_t;
    // SAFETY: signals to the owner this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        libc::kill(pid, libc::SIGCONT);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = None;
    while status.is_none() && Instant::now() < deadline {
        status = owner.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    pids.kill(owner.id());
    let _ = owner.wait();
    status
}

/// An owner paused past its lease has lost its node; a SIGTERM waiting when it resumes must
/// not turn that into a clean exit: the close finds the session gone, and the owner exits 6.
#[test]
fn an_owner_stopped_after_its_session_was_lost_says_so() {
    let cell = TestCell::start(CellOptions { session_lease_ms: LEASE_MS, ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let chubby =
        |args: &[&str]| Command::new(bin("chubby")).env("CHUBBY_CELL", cell.cell_arg()).args(args).output().unwrap();
    assert!(chubby(&["mkdir", "/ls/local/held"]).status.success());
    let (mut owner, mut pids) = hold(&cell, "/ls/local/held/n");
    // A listing that failed says nothing about the node.
    let listing = || {
        let out = chubby(&["ls", "/ls/local/held"]);
        out.status.success().then(|| String::from_utf8(out.stdout).unwrap())
    };
    assert_eq!(listing().expect("ls").trim(), "n");

    let was_gone = pause_until(&owner, Duration::from_millis(100), || listing().is_some_and(|l| !l.contains('n')));
    let status = terminate_stopped(&mut owner, &mut pids);
    assert!(was_gone, "the node of an owner paused past its lease was still listed after 30 s");
    let status = status.expect("the owner exits after SIGTERM");
    assert_eq!(status.code(), Some(6), "exit 6: the session (and its node) was lost");
}

/// The master expires a session whose lease ran out there by a log entry, which takes a
/// moment to commit (here 1.5 s: a slow disk). A client that gets back to the master in that
/// moment must be told its session is lost, not granted a new lease just before its session,
/// locks and nodes end: here the owner of an ephemeral node, resumed with SIGTERM waiting,
/// would then exit 0 as though it had held its node to the end.
#[test]
fn a_session_the_master_is_expiring_is_not_resumed() {
    let cell =
        TestCell::start(CellOptions { session_lease_ms: LEASE_MS, slow_sync_ms: 1500, ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let leader =
        rt.block_on(wait_converged(&cell.client(Duration::from_secs(30)), 0, Duration::from_secs(60))).unwrap();
    let mkdir =
        Command::new(bin("chubby")).env("CHUBBY_CELL", cell.cell_arg()).args(["mkdir", "/ls/local/held"]).output();
    let mkdir = mkdir.unwrap();
    assert!(mkdir.status.success(), "{}", String::from_utf8_lossy(&mkdir.stderr));
    let (mut owner, mut pids) = hold(&cell, "/ls/local/held/n");

    let was_expiring =
        pause_until(&owner, Duration::from_millis(10), || cell.log(leader).contains("session lease expired"));
    let status = terminate_stopped(&mut owner, &mut pids);
    assert!(was_expiring, "the master did not expire the paused owner's session within 30 s");
    let status = status.expect("the owner exits after SIGTERM");
    assert_eq!(status.code(), Some(6), "exit 6: the session (and its node) was lost");
}

/// A script may stop an ephemeral node's holder as soon as it has read its "OK": the holder
/// answers SIGTERM from then on, removes its node and exits 0 (killed by the signal instead,
/// it would leave its node until its session expired). 20 holders, each sent SIGTERM the
/// moment its OK arrives.
#[test]
fn an_ephemeral_holder_stopped_as_soon_as_it_says_ok_removes_its_node() {
    let cell = TestCell::start(CellOptions::default());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let chubby =
        |args: &[&str]| Command::new(bin("chubby")).env("CHUBBY_CELL", cell.cell_arg()).args(args).output().unwrap();
    assert!(chubby(&["mkdir", "/ls/local/held"]).status.success());
    for i in 0..20 {
        let path = format!("/ls/local/held/n{i}");
        let (mut owner, mut pids) = hold(&cell, &path);
        // SAFETY: a signal to the owner this test started.
        unsafe { libc::kill(owner.id() as libc::pid_t, libc::SIGTERM) };
        let status = exit_within(&mut owner, Duration::from_secs(30));
        pids.kill(owner.id());
        let status = status.expect("the owner exits after SIGTERM");
        assert_eq!(status.code(), Some(0), "holder {i}: {status:?}");
        let get = chubby(&["get", &path]);
        assert!(!get.status.success(), "holder {i}'s node outlived it: {get:?}");
    }
}
