//! Figures for the master's memory under churn; prints tables, asserts nothing.
//!
//! `cargo bench -p cell-server --bench churn`, on a 3-replica loopback cell:
//! 1. creates `BENCH_NODES` small files (998,000 by default: with their 1,000 directories, as
//!    many nodes as a cell holds) with pipelined `Put`s;
//! 2. `BENCH_SESSIONS` sessions (100) open, read and close every one of those nodes once
//!    between them, each its own share, as a day of a cell's clients reading and moving on;
//! 3. the same with `BENCH_FEW_SESSIONS` sessions (10), each reading far more nodes than a
//!    client caches.
//!
//! After each step, and after each step's sessions close, it prints the master's resident
//! memory and the sizes of its per-session tables (`chubby status --json` shows the same).
//! `BENCH_SERVER` runs another build's `cell-server`, to compare two in turn.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{find_leader, put_many, rss_of, start_cell_with};
use fuse_mount::client::{OpenOptions, Session, SessionOptions};
use proto::cell::cell_client::CellClient;
use proto::cell::StatusRequest;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn path_of(i: u64) -> String {
    format!("churn/d{}/n{i}", i % 1000)
}

/// `sessions` sessions open, read and close every node of `0..n` once between them; the
/// sessions are left open and returned.
async fn churn(addrs: &[String], sessions: u64, n: u64) -> Vec<Session> {
    let opts = SessionOptions {
        principal: "churn".into(),
        timeout: Duration::from_secs(30),
        grace: Duration::from_secs(30),
        cache: true,
        tls: None,
    };
    let mut open = Vec::new();
    for _ in 0..sessions {
        open.push(Session::open(addrs.to_vec(), opts.clone()).await.expect("session"));
    }
    let tasks: Vec<_> = open
        .iter()
        .enumerate()
        .map(|(k, s)| {
            let s = s.clone();
            tokio::spawn(async move {
                let mut i = k as u64;
                while i < n {
                    let path = format!("/ls/local/{}", path_of(i));
                    let (h, _) = s.open_node(&path, OpenOptions::default()).await.expect("open");
                    s.get(&h).await.expect("get");
                    s.close_node(&h).await.expect("close");
                    i += sessions;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    open
}

async fn report(what: &str, leader: &str, pid: u32) {
    let mut c = CellClient::connect(format!("http://{leader}")).await.unwrap();
    let s = c.status(StatusRequest {}).await.unwrap().into_inner();
    println!(
        "{what:<44} {:>9.0} {:>9} {:>11} {:>13} {:>8} {:>9}",
        rss_of(pid),
        s.sessions,
        s.cache_registrations,
        s.subscriptions,
        s.lock_waiters,
        s.remembered_answers
    );
}

fn main() {
    let nodes = env_u64("BENCH_NODES", 998_000);
    let many = env_u64("BENCH_SESSIONS", 100);
    let few = env_u64("BENCH_FEW_SESSIONS", 10);
    let dir = tempfile::tempdir().unwrap();
    let cell = start_cell_with(dir.path(), "no", &[], false);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let leader = find_leader(&cell.addrs).await;
        let pid = cell.pid(cell.id_of(&leader)).expect("the leader runs");
        println!("master memory under churn: {nodes} nodes; RSS in MiB; tables at the master");
        println!(
            "{:<44} {:>9} {:>9} {:>11} {:>13} {:>8} {:>9}",
            "", "RSS MiB", "sessions", "cache regs", "subscriptions", "waiters", "answers"
        );
        report("empty cell", &leader, pid).await;
        let t = Instant::now();
        put_many(&leader, nodes, path_of, Bytes::from_static(b"10.0.0.1:8080")).await;
        report(&format!("{nodes} nodes created ({:.0} s)", t.elapsed().as_secs_f64()), &leader, pid).await;
        for sessions in [many, few] {
            let t = Instant::now();
            let open = churn(&cell.addrs, sessions, nodes).await;
            let took = t.elapsed().as_secs_f64();
            report(&format!("{sessions} sessions read every node ({took:.0} s)"), &leader, pid).await;
            for s in open {
                s.close().await.expect("close session");
            }
            report(&format!("{sessions} sessions closed"), &leader, pid).await;
        }
    });
}
