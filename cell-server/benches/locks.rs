//! Figures for the cell issue; prints tables, asserts nothing.
//!
//! `cargo bench -p cell-server --bench locks` measures, on a 3-replica loopback cell with
//! `--fsync always`:
//! 1. lock acquire+release cycles per second through the master: one client alone on a lock,
//!    and 8 and 16 clients contending for one lock (each cycle is two committed log entries);
//!    then, for one client, the median of each call taken in turn: Acquire, Release, a
//!    SetContents on the same session and an operator's Put (one commit each);
//! 2. leader `kill -9` → first successful write, median of 5: the operator's Put and a
//!    session's SetContents (the session resumes at the new master first);
//! 3. idle sessions held by the master with KeepAlive: CPU of the leader process and resident
//!    memory per session.
//!
//! Environment: `BENCH_SECS` (seconds per lock level, default 4), `BENCH_SESSIONS` (default
//! 100000), `BENCH_IDLE_SECS` (CPU window, default 20), `BENCH_DIR` (default a temp dir),
//! `BENCH_SKIP=locks,failover,sessions` to leave parts out.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cpu_time, find_leader, percentile, rss_of, start_cell_with, us};
use fuse_mount::client::CellClient;
use fuse_mount::client::{OpenOptions, Session, SessionOptions};
use proto::chubby::chubby_client::ChubbyClient;
use proto::chubby::{session_request, session_response, KeepAlive, LockMode, OpenSession, SessionRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn skip(part: &str) -> bool {
    std::env::var("BENCH_SKIP").is_ok_and(|v| v.split(',').any(|p| p == part))
}

fn opts() -> SessionOptions {
    SessionOptions {
        principal: "bench".into(),
        timeout: Duration::from_secs(20),
        grace: Duration::from_secs(30),
        cache: true,
        tls: None,
    }
}

/// `clients` sessions taking and releasing one exclusive lock in turn for `secs`, counted
/// once every session is open. The sessions run on at most two threads, each a single-threaded
/// runtime as in a client process (the `chubby` CLI's), so the figure is the cell's, not the
/// hand-offs of a multi-threaded client runtime.
fn lock_cycles(addrs: &[String], clients: usize, secs: f64) -> (f64, Duration, Duration) {
    let ready = Arc::new(AtomicUsize::new(0));
    let begin: Arc<OnceLock<Instant>> = Arc::new(OnceLock::new());
    let threads: Vec<_> = (0..clients.min(2))
        .map(|t| {
            let mine = (0..clients).filter(|i| i % 2 == t).count();
            let (addrs, ready, begin) = (addrs.to_vec(), ready.clone(), begin.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let mut tasks = Vec::new();
                    for _ in 0..mine {
                        let (addrs, ready, begin) = (addrs.clone(), ready.clone(), begin.clone());
                        tasks.push(tokio::spawn(async move {
                            let s = Session::open(addrs, opts()).await.unwrap();
                            let create = OpenOptions { create: true, ..Default::default() };
                            let (h, _) = s.open_node("/ls/local/bench-lock", create).await.unwrap();
                            ready.fetch_add(1, Ordering::SeqCst);
                            for _ in 0..10_000 {
                                if ready.load(Ordering::SeqCst) == clients {
                                    break;
                                }
                                tokio::time::sleep(Duration::from_millis(1)).await;
                            }
                            let stop = *begin.get_or_init(Instant::now) + Duration::from_secs_f64(secs);
                            let mut times = Vec::new();
                            while Instant::now() < stop {
                                let t = Instant::now();
                                s.acquire(&h, LockMode::LockExclusive, 1, None).await.unwrap();
                                s.release(&h, 1).await.unwrap();
                                times.push(t.elapsed());
                            }
                            s.close().await.unwrap();
                            times
                        }));
                    }
                    let mut all = Vec::new();
                    for t in tasks {
                        all.extend(t.await.unwrap());
                    }
                    all
                })
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    all.sort();
    (all.len() as f64 / secs, percentile(&all, 0.5), percentile(&all, 0.99))
}

async fn failover(dir: &std::path::Path) {
    let mut cell = start_cell_with(dir, "always", &[], false);
    let mut put_times = Vec::new();
    let mut set_times = Vec::new();
    for round in 0..5 {
        let leader = find_leader(&cell.addrs).await;
        let s = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let (h, _) =
            s.open_node("/ls/local/failover", OpenOptions { create: true, ..Default::default() }).await.unwrap();
        let mut admin = CellClient::new(cell.addrs.clone(), Duration::from_millis(300)).unwrap();
        admin.put("warm", Bytes::from_static(b"x")).await.unwrap();
        let id = cell.id_of(&leader);
        cell.kill(id);
        let killed = Instant::now();
        let addrs = cell.addrs.clone();
        let put = tokio::spawn(async move {
            let mut admin = CellClient::new(addrs, Duration::from_millis(300)).unwrap();
            loop {
                if admin.put("after-kill", Bytes::from_static(b"x")).await.is_ok() {
                    return killed.elapsed();
                }
            }
        });
        let set = async {
            s.set(&h, Bytes::from(format!("round {round}")), None, "").await.unwrap();
            killed.elapsed()
        };
        let set_time = set.await;
        let put_time = put.await.unwrap();
        put_times.push(put_time);
        set_times.push(set_time);
        let _ = s.close().await;
        cell.start_replica(id);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    put_times.sort();
    set_times.sort();
    let fmt = |v: &[Duration]| v.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1e3)).collect::<Vec<_>>().join(", ");
    println!("| operator Put | {:.0} ms | {} |", percentile(&put_times, 0.5).as_secs_f64() * 1e3, fmt(&put_times));
    println!(
        "| session SetContents | {:.0} ms | {} |",
        percentile(&set_times, 0.5).as_secs_f64() * 1e3,
        fmt(&set_times)
    );
}

/// Opens `n` sessions over `streams` streams and keeps them alive (one KeepAlive per stream
/// per third of the lease, naming all its sessions); measures the leader's CPU and memory.
async fn idle_sessions(dir: &std::path::Path, n: usize, idle_secs: u64) {
    let cell = start_cell_with(dir, "always", &[], false);
    let leader = find_leader(&cell.addrs).await;
    let pid = cell.pid(cell.id_of(&leader)).expect("the leader runs");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss0, cpu0, t0) = (rss_of(pid), cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle_secs.min(10))).await;
    let base_cpu = (cpu_time(pid) - cpu0).as_secs_f64() / t0.elapsed().as_secs_f64();

    let streams = 100.max(n / 1000).min(n.max(1));
    let per = n.div_ceil(streams);
    let opened = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..streams {
        let addr = leader.clone();
        let count = per.min(n.saturating_sub(k * per));
        tasks.push(tokio::spawn(async move {
            let mut c = ChubbyClient::connect(format!("http://{addr}")).await.unwrap();
            let (tx, rx) = mpsc::channel(count + 16);
            for _ in 0..count {
                let open = OpenSession { principal: "idle".into(), ..Default::default() };
                tx.send(SessionRequest { kind: Some(session_request::Kind::Open(open)) }).await.unwrap();
            }
            let mut inbound = c.session(ReceiverStream::new(rx)).await.unwrap().into_inner();
            let mut ids = Vec::with_capacity(count);
            let mut lease_ms = 12_000;
            while ids.len() < count {
                if let Some(session_response::Kind::Lease(g)) = inbound.message().await.unwrap().unwrap().kind {
                    ids.push(g.session);
                    lease_ms = g.lease_ms;
                }
            }
            (tx, inbound, ids, lease_ms)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    let open_secs = opened.elapsed().as_secs_f64();
    let mut keepers = Vec::new();
    for (tx, mut inbound, ids, lease_ms) in held {
        keepers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(lease_ms / 3));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let ka = KeepAlive { session: ids[0], more_sessions: ids[1..].to_vec() };
                        if tx.send(SessionRequest { kind: Some(session_request::Kind::KeepAlive(ka)) }).await.is_err() {
                            return;
                        }
                    }
                    m = inbound.message() => match m {
                        Ok(Some(r)) => {
                            if let Some(session_response::Kind::Lease(g)) = r.kind {
                                assert!(g.lost_sessions.is_empty(), "sessions lost: {:?}", g.lost_sessions);
                            }
                        }
                        _ => return,
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss1 = rss_of(pid);
    let (cpu1, t1) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(idle_secs)).await;
    let cpu = (cpu_time(pid) - cpu1).as_secs_f64() / t1.elapsed().as_secs_f64();
    let per_session = (rss1 - rss0) * 1024.0 * 1024.0 / n as f64;
    println!("| sessions | streams | opened in | leader CPU (idle cell) | leader CPU with sessions | leader RSS | per session |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {n} | {streams} | {open_secs:.1} s | {:.2}% | {:.2}% | {rss0:.0} → {rss1:.0} MiB | {per_session:.0} B |",
        base_cpu * 100.0,
        cpu * 100.0
    );
    for k in keepers {
        k.abort();
    }
}

/// One client alone: the median of each call of a cycle, next to a write of the node's
/// contents on the same session and an operator's put (each one commit), taken in turn.
async fn one_client_calls(addrs: &[String], secs: f64) {
    let mut admin = CellClient::new(addrs.to_vec(), Duration::from_secs(5)).unwrap();
    let s = Session::open(addrs.to_vec(), opts()).await.unwrap();
    let create = OpenOptions { create: true, ..Default::default() };
    let (h, _) = s.open_node("/ls/local/bench-calls", create).await.unwrap();
    let (mut acquire, mut release, mut write, mut put) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let stop = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < stop {
        let t = Instant::now();
        s.acquire(&h, LockMode::LockExclusive, 1, None).await.unwrap();
        acquire.push(t.elapsed());
        let t = Instant::now();
        s.release(&h, 1).await.unwrap();
        release.push(t.elapsed());
        let t = Instant::now();
        s.set(&h, Bytes::from_static(b"x"), None, "").await.unwrap();
        write.push(t.elapsed());
        let t = Instant::now();
        admin.put("bench-put", Bytes::from_static(b"x")).await.unwrap();
        put.push(t.elapsed());
    }
    s.close().await.unwrap();
    for v in [&mut acquire, &mut release, &mut write, &mut put] {
        v.sort();
    }
    println!("\n| one client, median per call | Acquire | Release | SetContents | operator Put (unary) |");
    println!("|---|---|---|---|---|");
    println!(
        "| in turn | {} | {} | {} | {} |",
        us(percentile(&acquire, 0.5)),
        us(percentile(&release, 0.5)),
        us(percentile(&write, 0.5)),
        us(percentile(&put, 0.5))
    );
}

fn main() {
    let secs = env_u64("BENCH_SECS", 4) as f64;
    let n = env_u64("BENCH_SESSIONS", 100_000) as usize;
    let idle = env_u64("BENCH_IDLE_SECS", 20);
    let tmp = tempfile::tempdir().unwrap();
    let dir = std::env::var("BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| tmp.path().to_path_buf());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if !skip("locks") {
        let cell = start_cell_with(&dir.join("locks"), "always", &[], false);
        rt.block_on(find_leader(&cell.addrs));
        println!("| clients on one lock | acquire+release cycles/s | cycle median | cycle p99 |");
        println!("|---|---|---|---|");
        for clients in [1, 8, 16] {
            let (rate, p50, p99) = lock_cycles(&cell.addrs, clients, secs);
            println!("| {clients} | {rate:.0} | {} | {} |", us(p50), us(p99));
        }
        // On a single-threaded runtime of its own, as a client process's: a multi-threaded one
        // adds its thread hand-offs to every call.
        let addrs = cell.addrs.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(one_client_calls(&addrs, secs));
        })
        .join()
        .unwrap();
    }
    if !skip("failover") {
        println!("\n| leader kill -9 → first successful write | median | runs (ms) |");
        println!("|---|---|---|");
        rt.block_on(failover(&dir.join("failover")));
    }
    if !skip("sessions") {
        println!();
        rt.block_on(idle_sessions(&dir.join("sessions"), n, idle));
    }
}
