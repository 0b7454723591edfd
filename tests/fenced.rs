//! Lock safety under faults, checked as a user of the lock relies on it: holders append lines
//! to a file, each write fenced with the sequencer of their lock, while the test pauses a
//! holder past its lease (SIGSTOP, its command running on) and tries to delete the held lock
//! file, and the nemesis (`e2e_tests::nemesis`) injects every fault but a full disk: one holder
//! runs in the network namespace it cuts off from the cell.
//!
//! What must hold: no lock generation is granted twice (never two holders); the file's lines
//! come generation after generation, each generation's lines in order with none missing in
//! between (no write from a stale sequencer was accepted, or an older holder's line would
//! follow a newer one's, or a read-modify-write would have lost lines); every acknowledged
//! write is in the file; and a paused holder's writes after its lock passed on are refused as
//! stale.
//!
//! `CHUBBY_FENCE_CYCLES` sets the number of fault cycles (8 by default, as in CI;
//! `CHUBBY_LONG=1` makes it 300); `CHUBBY_FENCE_SEED` replays a run's choice of faults and
//! `CHUBBY_FAULTS` narrows the cell's. A failure keeps a history file: the fault schedule,
//! what the holders printed, and the log.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e_tests::nemesis::{Fault, Nemesis};
use e2e_tests::{bin, lines_of, CellOptions, Pids, Rng};

const LOCK: &str = "/ls/local/fence/lock";
const LOG: &str = "/ls/local/fence/log";
const LEASE_MS: u64 = 1500;
const LOCK_DELAY: &str = "1s";
/// Holders competing for the lock at any time.
const HOLDERS: usize = 3;

/// What each holder runs under `chubby lock`: it names its shell and the lock generation it
/// holds, then appends lines `GEN K` to the log, each by a read and a write fenced with its
/// sequencer, and says which writes were acknowledged; a refused write ends it.
const SCRIPT: &str = r#"
g=$(echo "$CHUBBY_SEQUENCER" | cut -d: -f3)
echo "holder $$ $g"
k=1
while [ $k -le 12 ]; do
  cur=$(chubby get /ls/local/fence/log) || { echo "unread $g $k"; exit 0; }
  if chubby put /ls/local/fence/log "$cur
$g $k" --sequencer "$CHUBBY_SEQUENCER" >/dev/null 2>&1; then
    echo "acked $g $k"
  else
    echo "refused $g $k $?"
    exit 0
  fi
  k=$((k+1))
  sleep 0.3
done
"#;

fn cycles() -> usize {
    if let Ok(n) = std::env::var("CHUBBY_FENCE_CYCLES") {
        return n.parse().expect("CHUBBY_FENCE_CYCLES is a number");
    }
    if std::env::var("CHUBBY_LONG").is_ok_and(|v| v == "1") {
        300
    } else {
        8
    }
}

/// A holder's `chubby lock` process, and its command's shell once it holds the lock.
#[derive(Default, Clone, Copy)]
struct Slot {
    lock_pid: u32,
    shell: u32,
}

/// What every holder printed, in order, with the time of each line.
type Printed = Arc<Mutex<Vec<(Instant, String)>>>;

/// The lines `GEN K` of the log, checked: generations never go back, and each generation's
/// lines are 1, 2, 3… with none missing.
fn check_log(log: &str) -> Result<Vec<(u64, u64)>, String> {
    let mut lines = Vec::new();
    for l in log.lines().filter(|l| !l.trim().is_empty()) {
        let (g, k) = l.split_once(' ').ok_or_else(|| format!("not a log line: {l:?}"))?;
        let parse = |s: &str| s.trim().parse::<u64>().map_err(|_| format!("not a log line: {l:?}"));
        lines.push((parse(g)?, parse(k)?));
    }
    for w in lines.windows(2) {
        let ((g0, k0), (g1, k1)) = (w[0], w[1]);
        let ok = if g1 == g0 { k1 == k0 + 1 } else { g1 > g0 && k1 == 1 };
        if !ok {
            return Err(format!("line {g1} {k1} follows {g0} {k0}: two holders, or a stale write accepted"));
        }
    }
    if lines.first().is_some_and(|&(_, k)| k != 1) {
        return Err(format!("the log starts with {:?}", lines[0]));
    }
    Ok(lines)
}

#[test]
fn fenced_appends_stay_ordered_under_pauses_kills_partitions_and_clock_steps() {
    let faults: Vec<Fault> = Fault::ALL.iter().copied().filter(|f| *f != Fault::DiskFull).collect();
    let mut nemesis = Nemesis::new("CHUBBY_FENCE_SEED", &faults);
    let seed = nemesis.seed;
    // The holders' own faults (pauses, deletions) are chosen apart from the cell's.
    let mut rng = Rng::from_seed(seed ^ 0x5eed);
    let mut cell = nemesis.start_cell(CellOptions { session_lease_ms: LEASE_MS, ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    rt.block_on(e2e_tests::wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let cell_arg = cell.cell_arg();
    let chubby = |args: &[&str]| -> (i32, String) {
        let out = Command::new(bin("chubby")).env("CHUBBY_CELL", &cell_arg).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(chubby(&["mkdir", "/ls/local/fence"]).0, 0);
    assert_eq!(chubby(&["put", LOG, ""]).0, 0);

    // The holders' script runs `chubby` from the build being tested.
    let bin_dir = bin("chubby").parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let stop = Arc::new(AtomicBool::new(false));
    let printed: Printed = Arc::default();
    let slots: Arc<Mutex<[Slot; HOLDERS]>> = Arc::default();
    let holders: Vec<_> = (0..HOLDERS)
        .map(|i| {
            let (stop, printed, slots) = (stop.clone(), printed.clone(), slots.clone());
            let (cell_arg, path) = (cell_arg.clone(), path.clone());
            let netns = nemesis.client_netns().map(|ns| ns.name.clone());
            std::thread::spawn(move || {
                let mut pids = Pids::default();
                while !stop.load(Ordering::Relaxed) {
                    // Holder 0 runs in the namespace the nemesis cuts off from the cell.
                    let mut command = match &netns {
                        Some(ns) if i == 0 => {
                            let mut c = Command::new("nsenter");
                            c.arg(format!("--net=/run/netns/{ns}")).arg(bin("chubby"));
                            c
                        }
                        _ => Command::new(bin("chubby")),
                    };
                    let mut child = command
                        .env("CHUBBY_CELL", &cell_arg)
                        .env("PATH", &path)
                        .args(["lock", "--lock-delay", LOCK_DELAY, LOCK, "--", "sh", "-c", SCRIPT])
                        .stdout(Stdio::piped())
                        .stdin(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap();
                    pids.0.push(child.id());
                    slots.lock().unwrap()[i] = Slot { lock_pid: child.id(), shell: 0 };
                    let lines = lines_of(child.stdout.take().unwrap());
                    loop {
                        match lines.recv_timeout(Duration::from_millis(100)) {
                            Ok(line) => {
                                if let Some(shell) = line.strip_prefix("holder ").and_then(|r| r.split(' ').next()) {
                                    let shell = shell.parse().unwrap();
                                    pids.0.push(shell);
                                    slots.lock().unwrap()[i].shell = shell;
                                }
                                printed.lock().unwrap().push((Instant::now(), line));
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                                // SAFETY: SIGTERM to a process this thread started: `chubby lock`
                                // passes it on to its command and exits.
                                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGCONT) };
                                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                            }
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    let _ = child.wait();
                    let shell = slots.lock().unwrap()[i].shell;
                    for pid in [child.id(), shell].into_iter().filter(|&p| p != 0) {
                        pids.kill(pid);
                    }
                    slots.lock().unwrap()[i] = Slot::default();
                }
            })
        })
        .collect();

    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let mut rm_codes = BTreeSet::new();
    let n = cycles();
    for cycle in 0..n {
        // The first cycle pauses a holder, so even a short run sees a stale sequencer.
        let fault = if cycle == 0 { 0 } else { rng.below(4) };
        match fault {
            0 => {
                std::thread::sleep(Duration::from_millis(800 + rng.below(1200)));
                // Pause the `chubby lock` of a holder that has just been granted the lock, for
                // longer than its lease and lock-delay: its command goes on writing with a
                // sequencer that goes stale when the next holder is granted the lock.
                let since = Instant::now();
                let deadline = since + Duration::from_secs(30);
                let mut paused = None;
                while paused.is_none() && Instant::now() < deadline {
                    let fresh = printed.lock().unwrap().iter().any(|(t, l)| *t >= since && l.starts_with("holder "));
                    if fresh {
                        let s = slots.lock().unwrap();
                        paused = s.iter().find(|s| s.shell != 0).map(|s| s.lock_pid);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Some(pid) = paused {
                    // SAFETY: SIGSTOP and SIGCONT of a `chubby lock` this test started.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
                    std::thread::sleep(Duration::from_millis(2 * LEASE_MS + 4000));
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
                    *faults.entry("pause holder").or_default() += 1;
                }
            }
            1 => {
                std::thread::sleep(Duration::from_millis(800 + rng.below(1200)));
                // Refused while the lock is held or waited for (9); gone or free otherwise.
                let (code, _) = chubby(&["rm", LOCK]);
                assert!([0, 1, 3, 9].contains(&code), "chubby rm of the lock file exited {code}");
                rm_codes.insert(code);
                *faults.entry("rm lock file").or_default() += 1;
            }
            _ => {
                let line = nemesis.step(&mut cell, &rt);
                eprintln!("cycle {cycle}: {line}");
            }
        }
        let (code, log) = chubby(&["get", LOG]);
        if code == 0 {
            let lines = check_log(&log).unwrap_or_else(|e| {
                let kept = keep_history(seed, &printed.lock().unwrap(), &nemesis, &log);
                panic!("cycle {cycle} (seed {seed}): {e}; {kept}")
            });
            eprintln!("cycle {cycle}: fault {fault}; {} lines from {} holders", lines.len(), {
                lines.iter().map(|l| l.0).collect::<BTreeSet<_>>().len()
            });
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in holders {
        h.join().unwrap();
    }
    cell.heal();

    let mut log = None;
    for _ in 0..100 {
        match chubby(&["get", LOG]) {
            (0, l) => {
                log = Some(l);
                break;
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let log = log.expect("the log reads back");
    let printed = printed.lock().unwrap();
    let kept = || keep_history(seed, &printed, &nemesis, &log);
    let lines: BTreeSet<(u64, u64)> =
        check_log(&log).unwrap_or_else(|e| panic!("(seed {seed}): {e}; {}", kept())).into_iter().collect();
    let mut granted = BTreeMap::new();
    let (mut acked, mut stale) = (0, 0);
    for (_, line) in printed.iter() {
        let w: Vec<&str> = line.split(' ').collect();
        let num = |i: usize| w.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or_else(|| panic!("{line:?}"));
        match w[0] {
            "holder" => {
                if let Some(other) = granted.insert(num(2), num(1)) {
                    panic!(
                        "(seed {seed}) lock generation {} granted to two holders: shells {other} and {}; {}",
                        w[2],
                        w[1],
                        kept()
                    );
                }
            }
            "acked" => {
                acked += 1;
                assert!(
                    lines.contains(&(num(1), num(2))),
                    "(seed {seed}) acknowledged write {line:?} is not in the log; {}",
                    kept()
                );
            }
            "refused" if num(3) == 7 => stale += 1,
            _ => {}
        }
    }
    eprintln!(
        "{n} cycles (seed {seed}), holder faults {faults:?}, cell faults {:?}, rm exit codes {rm_codes:?}: {} grants, {acked} acknowledged \
         writes, {stale} refused as stale, {} lines",
        nemesis.counts(),
        granted.len(),
        lines.len()
    );
    if faults.contains_key("pause holder") {
        assert!(stale > 0, "a paused holder's writes after its lock passed on were refused as stale");
    }
}

/// Keeps what the holders printed (with times), the cell's fault schedule and the log in a
/// file; says where, and how to replay the faults.
fn keep_history(seed: u64, printed: &[(Instant, String)], nemesis: &Nemesis, log: &str) -> String {
    let path = std::env::temp_dir().join(format!("fenced-history-{seed}.txt"));
    let t0 = nemesis.started();
    let mut text = format!("{}\nwhat the holders printed (seconds on the schedule's clock):\n", nemesis.schedule());
    for (t, line) in printed {
        text.push_str(&format!("{:>9.3} {line}\n", t.duration_since(t0).as_secs_f64()));
    }
    text.push_str(&format!("\nthe log:\n{log}\n"));
    std::fs::write(&path, text).expect("history file");
    format!(
        "history in {}; replay the faults with CHUBBY_FENCE_SEED={seed} cargo test --release -p e2e-tests --test fenced",
        path.display()
    )
}
