//! Reads, writes and compare-and-sets of a few nodes by several clients of the session library
//! (their caches on), half of them in a network namespace the nemesis cuts off from the cell,
//! under every fault of [`e2e_tests::nemesis`]; the recorded history of each node must be
//! linearizable (see `e2e_tests::linearizability`): every read returns the value and
//! generation of the latest write ordered before it, a compare-and-set succeeds exactly when
//! its generation is current.
//!
//! `CHUBBY_REGISTER_SECS` sets how long clients run (15 s by default, as in CI;
//! `CHUBBY_LONG=1`: 300 s); `CHUBBY_REGISTER_SEED` replays a run's choice of faults and
//! `CHUBBY_FAULTS` narrows them. A failure prints the seed, the fault schedule and the path of
//! the history it kept.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::linearizability::{check, Op, Register, RegisterInput, RegisterOutput};
use e2e_tests::nemesis::{Fault, Nemesis};
use e2e_tests::{bin, wait_converged, CellOptions, Rng};
use fuse_mount::client::{OpenOptions, Session, SessionOptions};

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
        tls: None,
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
                        Err(e) if e.reason() == Some(fuse_mount::proto::Refusal::GenerationMismatch) => {
                            Some(RegisterOutput::Mismatch)
                        }
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
    let mut nemesis = Nemesis::new("CHUBBY_REGISTER_SEED", Fault::ALL);
    let seed = nemesis.seed;
    let mut cell = nemesis.start_cell(CellOptions { session_lease_ms: 2000, ..CellOptions::default() });
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
    // Half the clients run on this host's network, half in a namespace the nemesis cuts off.
    let ns = nemesis.client_netns().expect("the client namespace");
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let (addrs, stop, history) = (cell.addrs.clone(), stop.clone(), history.clone());
            if id < CLIENTS / 2 {
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                    rt.block_on(client(id, seed, addrs, keys, stop, history))
                })
            } else {
                ns.run_inside(move || client(id, seed, addrs, keys, stop, history))
            }
        })
        .collect();

    let start = Instant::now();
    while start.elapsed() < run {
        let line = nemesis.step(&mut cell, &rt);
        eprintln!("{line}");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
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
            std::fs::write(&kept, format!("{}\n{text}", nemesis.schedule())).unwrap();
            panic!(
                "(seed {seed}) key {k}: not linearizable ({} of {} operations ordered, stuck at operation {}); \
                 history and fault schedule in {}; replay the faults with \
                 CHUBBY_REGISTER_SEED={seed} cargo test --release -p e2e-tests --test register\n{}",
                v.linearized,
                ops.len(),
                v.stuck_at,
                kept.display(),
                nemesis.schedule()
            );
        }
    }
    eprintln!(
        "{:?} of operations (seed {seed}), faults {:?}: {total} operations ({known} with a known outcome) \
         on {keys} keys ({KEYS} at a time) by {CLIENTS} clients, linearizable",
        run,
        nemesis.counts()
    );
    assert!(known > 100, "too few operations completed to say anything: {known}");
}
