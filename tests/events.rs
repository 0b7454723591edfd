//! Events under faults: watchers subscribed to a node (one of them in a network namespace the
//! nemesis cuts off) while a writer changes it and the master is killed, paused, partitioned
//! (both ways and one way, or by a flapping link), restarted with a skewed clock, and hands
//! leadership over. An event may be lost only as an explicit gap (`events_lost` or
//! `master_failover`, after which the client reads again), never silently: once the faults
//! stop, every watcher must get one event per change, or a gap. Nor may a watcher get more
//! events than there were changes.
//!
//! `CHUBBY_EVENTS_SECS` sets how long the faults go on (12 s by default, as in CI;
//! `CHUBBY_LONG=1`: 300 s); `CHUBBY_EVENTS_SEED` replays a run's choice of faults and
//! `CHUBBY_FAULTS` narrows them. A failure keeps a history file: the fault schedule, every
//! change with its times, and what each watcher got when.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::nemesis::{Fault, Nemesis};
use e2e_tests::{wait_converged, CellOptions};
use fuse_mount::client::{OpenOptions, Session, SessionOptions, SessionState};
use fuse_mount::proto::chubby::event::Kind;

const PATH: &str = "/ls/local/watched";
const WATCHERS: usize = 3;
/// The event mask of contents changes.
const CONTENTS: u32 = 1;
/// Changes made once the faults stop.
const QUIET_WRITES: u64 = 20;

fn duration() -> Duration {
    if let Ok(s) = std::env::var("CHUBBY_EVENTS_SECS") {
        return Duration::from_secs(s.parse().expect("CHUBBY_EVENTS_SECS is a number"));
    }
    Duration::from_secs(if std::env::var("CHUBBY_LONG").is_ok_and(|v| v == "1") { 300 } else { 12 })
}

fn opts() -> SessionOptions {
    SessionOptions {
        principal: "events".into(),
        timeout: Duration::from_secs(10),
        grace: Duration::from_secs(60),
        cache: true,
        tls: None,
    }
}

/// What a watcher has seen: change events of the node, and gaps; and whether its session is
/// alive.
#[derive(Default)]
struct Seen {
    changes: AtomicU64,
    gaps: AtomicU64,
    alive: AtomicBool,
    /// Every change event and gap, with the time it came (for the history of a failure).
    log: std::sync::Mutex<Vec<(Instant, &'static str)>>,
}

/// A change the writer made: its value, when it began, when it was acknowledged (if it was).
type Change = (u64, Instant, Option<Instant>);

/// One watcher: a session subscribed to the node's changes, counting what it gets until `stop`.
/// Says on `ready` once first subscribed. A session lost (cut off past its lease) is a gap, as
/// for any client: it opens a new one and subscribes again.
async fn watcher(addrs: Vec<String>, seen: Arc<Seen>, ready: std::sync::mpsc::Sender<()>, stop: Arc<AtomicBool>) {
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let Ok(s) = Session::open(addrs.clone(), opts()).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let mut events = s.events();
        let watch = OpenOptions { events: CONTENTS, ..OpenOptions::default() };
        if s.open_node(PATH, watch).await.is_err() {
            let _ = s.close().await;
            continue;
        }
        if first {
            ready.send(()).unwrap();
            first = false;
        } else {
            // Whatever changed while no session watched is unknown: a gap.
            seen.gaps.fetch_add(1, Ordering::SeqCst);
            seen.log.lock().unwrap().push((Instant::now(), "gap (new session)"));
        }
        let mut state = s.state();
        while !stop.load(Ordering::Relaxed) {
            let now = *state.borrow_and_update();
            seen.alive.store(now == SessionState::Alive, Ordering::SeqCst);
            if now == SessionState::Lost {
                break;
            }
            tokio::select! {
                e = events.recv() => match e {
                    Ok(e) => match e.kind {
                        Some(Kind::ContentsModified(_)) if e.path == PATH => {
                            seen.changes.fetch_add(1, Ordering::SeqCst);
                            seen.log.lock().unwrap().push((Instant::now(), "change"));
                        }
                        Some(Kind::EventsLost(_) | Kind::MasterFailover(_)) => {
                            seen.gaps.fetch_add(1, Ordering::SeqCst);
                            seen.log.lock().unwrap().push((Instant::now(), "gap"));
                        }
                        _ => {}
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        seen.gaps.fetch_add(1, Ordering::SeqCst);
                        seen.log.lock().unwrap().push((Instant::now(), "gap (lagged)"));
                    }
                    Err(_) => break,
                },
                _ = state.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        let _ = s.close().await;
    }
}

#[test]
fn every_change_is_delivered_or_reported_as_a_gap() {
    let faults = [
        Fault::KillMaster,
        Fault::PauseMaster,
        Fault::PartitionMaster,
        Fault::OneWayFromMaster,
        Fault::OneWayToMaster,
        Fault::FlappingLink,
        Fault::HandOver,
        Fault::SkewedClock,
        Fault::CutClients,
    ];
    let mut nemesis = Nemesis::new("CHUBBY_EVENTS_SEED", &faults);
    let seed = nemesis.seed;
    let mut cell = nemesis.start_cell(CellOptions { session_lease_ms: 2000, ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let client = cell.client(Duration::from_secs(5));
    rt.block_on(wait_converged(&client, 0, Duration::from_secs(30))).unwrap();

    let (writer, handle) = rt.block_on(async {
        let writer = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let create = OpenOptions { create: true, contents: "0".into(), ..OpenOptions::default() };
        let (handle, _) = writer.open_node(PATH, create).await.unwrap();
        (writer, handle)
    });
    // The last watcher runs in the namespace the nemesis cuts off from the cell.
    let stop_watching = Arc::new(AtomicBool::new(false));
    let (ready, subscribed) = std::sync::mpsc::channel();
    let ns = nemesis.client_netns().expect("the client namespace");
    let watchers: Vec<(Arc<Seen>, std::thread::JoinHandle<()>)> = (0..WATCHERS)
        .map(|i| {
            let seen = Arc::new(Seen::default());
            let (addrs, counts, ready, stop) = (cell.addrs.clone(), seen.clone(), ready.clone(), stop_watching.clone());
            let thread = if i + 1 < WATCHERS {
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
                    rt.block_on(watcher(addrs, counts, ready, stop))
                })
            } else {
                ns.run_inside(move || watcher(addrs, counts, ready, stop))
            };
            (seen, thread)
        })
        .collect();
    for _ in 0..WATCHERS {
        subscribed.recv_timeout(Duration::from_secs(30)).expect("every watcher subscribed");
    }

    // The writer changes the node without pause; each change's outcome is known or not.
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, unknown) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let changes: Arc<std::sync::Mutex<Vec<Change>>> = Arc::default();
    let writing = rt.spawn({
        let (writer, handle, stop) = (writer.clone(), handle.clone(), stop.clone());
        let (acked, unknown, changes) = (acked.clone(), unknown.clone(), changes.clone());
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let began = Instant::now();
                let ok = writer.set(&handle, Bytes::from(n.to_string()), None, "").await.is_ok();
                changes.lock().unwrap().push((n, began, ok.then(Instant::now)));
                match ok {
                    true => acked.fetch_add(1, Ordering::SeqCst),
                    false => unknown.fetch_add(1, Ordering::SeqCst),
                };
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    let start = Instant::now();
    while start.elapsed() < duration() {
        let line = nemesis.step(&mut cell, &rt);
        eprintln!("{line}");
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writing).unwrap();

    // Quiet: every session alive at the master, events of the faulty period delivered.
    rt.block_on(async {
        wait_converged(&client, 0, Duration::from_secs(30)).await.unwrap();
        for (i, (seen, _)) in watchers.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !seen.alive.load(Ordering::SeqCst) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(seen.alive.load(Ordering::SeqCst), "watcher {i}'s session is alive again (seed {seed})");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let keep = || {
        let path = std::env::temp_dir().join(format!("events-history-{seed}.txt"));
        let t0 = nemesis.started();
        let at = |t: Instant| format!("{:.3}", t.duration_since(t0).as_secs_f64());
        let mut text = format!("{}\nchanges (value, began, acknowledged):\n", nemesis.schedule());
        for (n, began, acked) in changes.lock().unwrap().iter() {
            text.push_str(&format!("{n} {} {:?}\n", at(*began), acked.map(at)));
        }
        for (i, (seen, _)) in watchers.iter().enumerate() {
            text.push_str(&format!("watcher {i}:\n"));
            for (t, what) in seen.log.lock().unwrap().iter() {
                text.push_str(&format!("{} {what}\n", at(*t)));
            }
        }
        std::fs::write(&path, text).unwrap();
        format!(
            "history in {}; replay the faults with CHUBBY_EVENTS_SEED={seed} cargo test --release -p e2e-tests --test events",
            path.display()
        )
    };
    let committed_most = acked.load(Ordering::SeqCst) + unknown.load(Ordering::SeqCst);
    for (i, (seen, _)) in watchers.iter().enumerate() {
        let changes = seen.changes.load(Ordering::SeqCst);
        if changes > committed_most {
            panic!("(seed {seed}) watcher {i} got {changes} events for at most {committed_most} changes; {}", keep());
        }
    }
    let marks: Vec<(u64, u64)> =
        watchers.iter().map(|(s, _)| (s.changes.load(Ordering::SeqCst), s.gaps.load(Ordering::SeqCst))).collect();
    rt.block_on(async {
        for n in 0..QUIET_WRITES {
            writer.set(&handle, Bytes::from(format!("quiet-{n}")), None, "").await.expect("a write with no fault");
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for (i, (seen, _)) in watchers.iter().enumerate() {
            let (c0, g0) = marks[i];
            while Instant::now() < deadline
                && seen.changes.load(Ordering::SeqCst) < c0 + QUIET_WRITES
                && seen.gaps.load(Ordering::SeqCst) == g0
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let (changes, gaps) = (seen.changes.load(Ordering::SeqCst) - c0, seen.gaps.load(Ordering::SeqCst) - g0);
            if gaps == 0 && changes != QUIET_WRITES {
                panic!(
                    "watcher {i} (seed {seed}) got {changes} events for {QUIET_WRITES} changes, and no gap; {}\n{}",
                    keep(),
                    nemesis.schedule()
                );
            }
        }
    });
    eprintln!(
        "{:?} of faults (seed {seed}): {:?}; {} changes acknowledged, {} of unknown outcome; \
         events and gaps per watcher: {:?}",
        duration(),
        nemesis.counts(),
        acked.load(Ordering::SeqCst),
        unknown.load(Ordering::SeqCst),
        watchers
            .iter()
            .map(|(s, _)| (s.changes.load(Ordering::SeqCst), s.gaps.load(Ordering::SeqCst)))
            .collect::<Vec<_>>()
    );
    stop_watching.store(true, Ordering::Relaxed);
    for (_, thread) in watchers {
        thread.join().unwrap();
    }
}
