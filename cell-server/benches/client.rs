//! Figures for the client issue; prints tables, asserts nothing.
//!
//! `cargo bench -p cell-server --bench client` measures, on a 3-replica loopback cell with
//! `--fsync always`, through the client library (`fuse_mount::client`):
//! 1. `get` of a node the session has cached against one it must ask the master for
//!    (a linearizable read: ReadIndex at the master);
//! 2. cache invalidation: the latency of a write to a node cached by 0, 1, 100 and 1,000 other
//!    sessions (the master invalidates each and waits for its ack before it commits);
//! 3. session resume after the master's `kill -9`, median of 5: from the kill until the
//!    session is alive at the new master, next to the election timeout (15–30 ticks of 10 ms).
//!
//! Environment: `BENCH_READS` (gets per kind, default 20000), `BENCH_CACHERS` (largest cacher
//! count, default 1000), `BENCH_SKIP=get,invalidation,resume`, `BENCH_DIR`.

mod common;

use std::time::{Duration, Instant};

use common::{find_leader, percentile, start_cell_with, us};
use fuse_mount::client::{OpenOptions, Session, SessionOptions, SessionState};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn skip(part: &str) -> bool {
    std::env::var("BENCH_SKIP").is_ok_and(|v| v.split(',').any(|p| p == part))
}

fn opts(cache: bool) -> SessionOptions {
    SessionOptions {
        principal: "bench".into(),
        timeout: Duration::from_secs(20),
        grace: Duration::from_secs(30),
        cache,
        tls: None,
    }
}

/// `reads` gets of one node by a session with or without its cache, on a single-threaded
/// runtime as in a client process.
fn gets(addrs: &[String], cache: bool, reads: usize) -> (Duration, Duration, u64) {
    let addrs = addrs.to_vec();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let s = Session::open(addrs, opts(cache)).await.unwrap();
            let (h, _) = s.open_node("/ls/local/bench-get", OpenOptions::default()).await.unwrap();
            s.get(&h).await.unwrap();
            let mut times = Vec::with_capacity(reads);
            for _ in 0..reads {
                let t = Instant::now();
                let (c, _) = s.get(&h).await.unwrap();
                times.push(t.elapsed());
                assert_eq!(c.len(), 100);
            }
            let hits = s.cache_hits();
            s.close().await.unwrap();
            times.sort();
            (percentile(&times, 0.5), percentile(&times, 0.99), hits)
        })
    })
    .join()
    .unwrap()
}

/// Median write latency to a node cached by `n` sessions (each re-reads it before every write,
/// so every write invalidates all of them).
async fn invalidation(cachers: &[Session], writer: &Session, rounds: usize) -> (Duration, Duration) {
    let path = "/ls/local/bench-cached";
    let (hw, _) = writer.open_node(path, OpenOptions::default()).await.unwrap();
    let mut handles = Vec::new();
    for c in cachers {
        handles.push(c.open_node(path, OpenOptions::default()).await.unwrap().0);
    }
    let mut times = Vec::new();
    for round in 0..rounds {
        let reads: Vec<_> = cachers
            .iter()
            .zip(&handles)
            .map(|(c, h)| {
                let (c, h) = (c.clone(), h.clone());
                tokio::spawn(async move { c.get(&h).await.unwrap() })
            })
            .collect();
        for r in reads {
            r.await.unwrap();
        }
        let t = Instant::now();
        writer.set(&hw, format!("round {round}").into(), None, "").await.unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

async fn resume(dir: &std::path::Path) {
    let mut cell = start_cell_with(dir, "always", &[], false);
    let mut times = Vec::new();
    for _ in 0..5 {
        let leader = find_leader(&cell.addrs).await;
        let s = Session::open(cell.addrs.clone(), opts(true)).await.unwrap();
        let mut state = s.state();
        let id = cell.id_of(&leader);
        cell.kill(id);
        let killed = Instant::now();
        let mut left_alive = false;
        let resumed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                state.changed().await.unwrap();
                match *state.borrow() {
                    SessionState::Jeopardy => left_alive = true,
                    SessionState::Alive if left_alive => return killed.elapsed(),
                    SessionState::Lost => panic!("session lost in a failover"),
                    SessionState::Alive => {}
                }
            }
        })
        .await
        .expect("the session resumes");
        times.push(resumed);
        let _ = s.close().await;
        cell.start_replica(id);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    times.sort();
    let runs = times.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1e3)).collect::<Vec<_>>().join(", ");
    println!("| {:.0} ms | {runs} | 150–300 ms |", percentile(&times, 0.5).as_secs_f64() * 1e3);
}

fn main() {
    let reads = env_u64("BENCH_READS", 20_000) as usize;
    let most = env_u64("BENCH_CACHERS", 1000) as usize;
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| tmp.path().to_path_buf());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if !skip("get") || !skip("invalidation") {
        let cell = start_cell_with(&dir.join("cell"), "always", &[], false);
        let addrs = cell.addrs.clone();
        rt.block_on(async {
            find_leader(&addrs).await;
            let s = Session::open(addrs.clone(), opts(true)).await.unwrap();
            for path in ["/ls/local/bench-get", "/ls/local/bench-cached"] {
                let create = OpenOptions { create: true, contents: vec![b'x'; 100].into(), ..Default::default() };
                s.open_node(path, create).await.unwrap();
            }
            s.close().await.unwrap();
        });
        if !skip("get") {
            println!("| get of a 100 B node | median | p99 | served by the cache |");
            println!("|---|---|---|---|");
            for (name, cache) in [("uncached (master, ReadIndex)", false), ("cached", true)] {
                let (p50, p99, hits) = gets(&addrs, cache, reads);
                let fine = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
                println!("| {name} | {} | {} | {hits} of {reads} |", fine(p50), fine(p99));
            }
        }
        if !skip("invalidation") {
            println!("\n| sessions caching the node | write median | write p99 |");
            println!("|---|---|---|");
            rt.block_on(async {
                let writer = Session::open(addrs.clone(), opts(true)).await.unwrap();
                let mut cachers: Vec<Session> = Vec::new();
                for n in [0usize, 1, 100, 1000].into_iter().filter(|n| *n <= most) {
                    while cachers.len() < n {
                        cachers.push(Session::open(addrs.clone(), opts(true)).await.unwrap());
                    }
                    let rounds = if n >= 1000 { 10 } else { 30 };
                    let (p50, p99) = invalidation(&cachers, &writer, rounds).await;
                    println!("| {n} | {} | {} |", us(p50), us(p99));
                }
                for c in cachers {
                    let _ = c.close().await;
                }
            });
        }
    }
    if !skip("resume") {
        println!("\n| master kill -9 → session alive at the new master | median | runs (ms) | election timeout |");
        println!("|---|---|---|---|");
        rt.block_on(resume(&dir.join("resume")));
    }
}
