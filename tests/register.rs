//! Reads, writes and compare-and-sets of a few nodes by several clients of the session library
//! (their caches on), while replicas are killed, paused, partitioned and have their clocks
//! stepped, and the master hands leadership over on SIGTERM; the recorded history of each node
//! must be linearizable (see `e2e_tests::linearizability`): every read returns the value and
//! generation of the latest write ordered before it, a compare-and-set succeeds exactly when
//! its generation is current.
//!
//! `CHUBBY_REGISTER_SECS` sets how long clients run (15 s by default, as in CI;
//! `CHUBBY_LONG=1`: 300 s); `CHUBBY_REGISTER_SEED` replays a run's choice of faults. A failure
//! prints the seed and the path of the history it kept.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::linearizability::{check, Op, Register, RegisterInput, RegisterOutput};
use e2e_tests::{bin, faketime_env, wait_converged, CellOptions, Rng, TestCell};
use fuse_mount::session::{OpenOptions, Session, SessionOptions};

/// Keys in use at a time.
const KEYS: u64 = 3;
/// Clients move on to fresh keys every window, so that no key's history grows past what the
/// checker handles quickly (its memory grows with the operations of one key).
const WINDOW: Duration = Duration::from_secs(15);
const CLIENTS: u64 = 4;

fn duration() -> Duration {
    if let Ok(s) = std::env::var("CHUBBY_REGISTER_SECS") {
        return Duration::from_secs(s.parse().expect("CHUBBY_REGISTER_SECS is a number"));
    }
    Duration::from_secs(if std::env::var("CHUBBY_LONG").is_ok_and(|v| v == "1") { 300 } else { 15 })
}

type History = Arc<Mutex<Vec<(u64, Op<RegisterInput, RegisterOutput>)>>>;

/// Keys of all windows of a run of `run`: window `w` uses keys `w * KEYS ..`.
fn key_count(run: Duration) -> u64 {
    KEYS * (run.as_secs() / WINDOW.as_secs() + 1)
}

fn key_path(k: u64) -> String {
    format!("/ls/local/reg/k{k}")
}

/// One client: a session (opened again if lost), random operations on random keys until
/// `stop`, each recorded with its call and return times.
async fn client(id: u64, seed: u64, addrs: Vec<String>, keys: u64, stop: Arc<AtomicBool>, history: History) {
    let start = Instant::now();
    let mut rng = Rng::from_seed(seed ^ (id + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let opts = SessionOptions {
        principal: "register".into(),
        timeout: Duration::from_secs(5),
        grace: Duration::from_secs(30),
        cache: true,
    };
    let mut generation_seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Ok(session) = Session::open(addrs.clone(), opts.clone()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut handles = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) && !session.is_lost() {
            let window = (start.elapsed().as_secs() / WINDOW.as_secs()).min(keys / KEYS - 1);
            let k = window * KEYS + rng.below(KEYS);
            let h = match handles.get(&k) {
                Some(h) => h,
                None => match session.open_node(&key_path(k), OpenOptions::default()).await {
                    Ok((h, _)) => handles.entry(k).or_insert(h),
                    Err(_) => continue,
                },
            };
            n += 1;
            let value = id * 1_000_000_000 + n;
            let input = match rng.below(4) {
                0 | 1 => RegisterInput::Read,
                2 => RegisterInput::Write(value),
                _ => RegisterInput::Cas { if_generation: generation_seen.get(&k).copied().unwrap_or(1), value },
            };
            let call = Instant::now();
            let output = match &input {
                RegisterInput::Read => match session.get(h).await {
                    Ok((contents, stat)) => {
                        let value = std::str::from_utf8(&contents).unwrap().parse().unwrap();
                        generation_seen.insert(k, stat.content_generation);
                        Some(RegisterOutput::Value { value, generation: stat.content_generation })
                    }
                    // A read that failed constrains nothing.
                    Err(_) => continue,
                },
                RegisterInput::Write(v) | RegisterInput::Cas { value: v, .. } => {
                    let if_generation = match input {
                        RegisterInput::Cas { if_generation, .. } => Some(if_generation),
                        _ => None,
                    };
                    match session.set(h, Bytes::from(v.to_string()), if_generation, "").await {
                        Ok(stat) => {
                            generation_seen.insert(k, stat.content_generation);
                            Some(RegisterOutput::Written { generation: stat.content_generation })
                        }
                        Err(e) if e.reason() == Some("GenerationMismatch") => Some(RegisterOutput::Mismatch),
                        // Timed out, session lost, master gone: applied or not, unknown.
                        Err(_) => None,
                    }
                }
            };
            let ret = output.map(|o| (Instant::now(), o));
            history.lock().unwrap().push((k, Op { client: id as usize, call, ret, input }));
        }
        let _ = session.close().await;
    }
}

#[test]
fn register_operations_stay_linearizable_under_faults() {
    let (seed, mut rng) = Rng::from_env("CHUBBY_REGISTER_SEED");
    eprintln!("register test seed {seed} (replay with CHUBBY_REGISTER_SEED={seed})");
    let clock_dir = tempfile::tempdir().unwrap();
    let offset = clock_dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let mut cell = TestCell::start(CellOptions {
        session_lease_ms: 2000,
        peer_links: true,
        env: faketime_env(&offset),
        ..CellOptions::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let chubby = |args: &[&str]| Command::new(bin("chubby")).args(["--cell", &cell.cell_arg()]).args(args).status();
    assert!(chubby(&["mkdir", "/ls/local/reg"]).unwrap().success());
    let run = duration();
    let keys = key_count(run);
    for k in 0..keys {
        assert!(chubby(&["put", &key_path(k), "0"]).unwrap().success(), "creating {}", key_path(k));
    }

    // Where each key's history starts.
    let initial: Vec<(u64, u64)> = rt.block_on(async {
        let s = Session::open(cell.addrs.clone(), SessionOptions::default()).await.unwrap();
        let mut initial = Vec::new();
        for k in 0..keys {
            let (h, _) = s.open_node(&key_path(k), OpenOptions::default()).await.unwrap();
            let (contents, stat) = s.get(&h).await.unwrap();
            initial.push((std::str::from_utf8(&contents).unwrap().parse().unwrap(), stat.content_generation));
        }
        s.close().await.unwrap();
        initial
    });
    let stop = Arc::new(AtomicBool::new(false));
    let history: History = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| rt.spawn(client(id, seed, cell.addrs.clone(), keys, stop.clone(), history.clone())))
        .collect();

    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    let start = Instant::now();
    while start.elapsed() < run {
        std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
        let l = cell.leader(&rt);
        let other = 1 + (l + rng.below(2)) % 3;
        let fault = match rng.below(6) {
            0 => {
                cell.kill(l);
                std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
                cell.start_replica(l);
                "kill master"
            }
            1 => {
                let victim = if rng.below(2) == 0 { l } else { other };
                let pid = cell.pid(victim).expect("a running replica");
                // SAFETY: SIGSTOP and SIGCONT of a replica this test started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
                std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGCONT) };
                if victim == l {
                    "pause master"
                } else {
                    "pause follower"
                }
            }
            2 => {
                cell.partition(l);
                std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
                cell.heal();
                "partition master"
            }
            3 => {
                cell.kill(other);
                std::thread::sleep(Duration::from_millis(200 + rng.below(800)));
                cell.start_replica(other);
                "kill follower"
            }
            4 => {
                let step = ["+0", "+2h", "-10m", "+1d", "-1h"][rng.below(5) as usize];
                std::fs::write(&offset, format!("{step}\n")).unwrap();
                "clock step"
            }
            _ => {
                // SIGTERM: the master hands leadership over, then exits; it comes back.
                let status = cell.terminate(l);
                assert!(status.is_some_and(|s| s.success()), "replica {l} exited after SIGTERM: {status:?}");
                cell.start_replica(l);
                "hand over and restart the master"
            }
        };
        *faults.entry(fault).or_default() += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        rt.block_on(c).unwrap();
    }

    let history = std::mem::take(&mut *history.lock().unwrap());
    let total = history.len();
    let known = history.iter().filter(|(_, o)| o.ret.is_some()).count();
    let mut by_key: BTreeMap<u64, Vec<Op<RegisterInput, RegisterOutput>>> = BTreeMap::new();
    for (k, op) in history {
        by_key.entry(k).or_default().push(op);
    }
    for (k, ops) in &by_key {
        if let Err(v) = check(&Register { initial: initial[*k as usize] }, ops) {
            let kept = std::env::temp_dir().join(format!("register-history-{seed}-k{k}.txt"));
            let t0 = ops.iter().map(|o| o.call).min().unwrap();
            let text: String = ops
                .iter()
                .map(|o| {
                    let ret = o.ret.as_ref().map(|(t, out)| format!("{:?} {out:?}", t.duration_since(t0)));
                    format!("client {} call {:?} {:?} -> {}\n", o.client, o.call.duration_since(t0), o.input, {
                        ret.unwrap_or_else(|| "unknown".into())
                    })
                })
                .collect();
            std::fs::write(&kept, text).unwrap();
            panic!(
                "(seed {seed}) key {k}: not linearizable ({} of {} operations ordered, stuck at operation {}); \
                 history in {}",
                v.linearized,
                ops.len(),
                v.stuck_at,
                kept.display()
            );
        }
    }
    eprintln!(
        "{:?} of operations (seed {seed}), faults {faults:?}: {total} operations ({known} with a known outcome) \
         on {keys} keys ({KEYS} at a time) by {CLIENTS} clients, linearizable",
        run
    );
    assert!(known > 100, "too few operations completed to say anything: {known}");
}
