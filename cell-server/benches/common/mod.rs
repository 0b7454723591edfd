//! Helpers shared by the benchmark programs: a 3-replica cell on loopback (started by the
//! end-to-end tests' launcher), leader lookup, percentiles.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fuse_mount::client::PutPipeline;

use e2e_tests::{CellOptions, TestCell};

use proto::cell::cell_client::CellClient;
use proto::cell::StatusRequest;

/// The bench client allocates as our own client processes (`chubby-mount`) do.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// A 3-replica cell of `cell-server` processes with the server's own defaults, their data
/// under `dir`. `BENCH_SERVER` names another `cell-server` binary to run (to compare two
/// builds on the same bench client).
pub fn start_cell_with(dir: &Path, fsync: &str, extra: &[&str], tls: bool) -> TestCell {
    TestCell::start(CellOptions {
        tls,
        fsync: fsync.into(),
        server: std::env::var_os("BENCH_SERVER").map(PathBuf::from),
        server_defaults: true,
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        data_root: Some(dir.to_path_buf()),
        log_filter: std::env::var("BENCH_RUST_LOG")
            .unwrap_or_else(|_| "warn,cell_server::replica=info,raft::replica=info".into()),
        ..CellOptions::default()
    })
}

pub fn start_cell(dir: &Path, fsync: &str) -> TestCell {
    start_cell_with(dir, fsync, &[], false)
}

/// The leader's address, asked with the cell's own client (on TLS if the cell runs it).
pub async fn leader_of(cell: &TestCell) -> String {
    let client = cell.client(Duration::from_secs(2));
    for _ in 0..400 {
        let all = client.status_all().await;
        if let Some((addr, _)) = all.iter().find(|(_, s)| s.as_ref().is_ok_and(|s| s.role == "leader")) {
            return addr.clone();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader");
}

pub async fn find_leader(addrs: &[String]) -> String {
    for _ in 0..400 {
        for a in addrs {
            if let Ok(mut c) = CellClient::connect(format!("http://{a}")).await {
                if let Ok(s) = c.status(StatusRequest {}).await {
                    let s = s.into_inner();
                    if s.role == "leader" {
                        return a.clone();
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no leader");
}

/// Puts `value` at the keys `key(0..n)` with pipelined Puts on two connections to `leader`
/// (plaintext), 256 in flight.
pub async fn put_many(leader: &str, n: u64, key: fn(u64) -> String, value: Bytes) {
    let mut pipes = Vec::new();
    for _ in 0..2 {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{leader}"))
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .unwrap();
        pipes.push(Arc::new(PutPipeline::open(channel).await.expect("PutPipeline")));
    }
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..256)
        .map(|t| {
            let (pipe, next, value) = (pipes[t % 2].clone(), next.clone(), value.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    pipe.put(&key(i), value.clone()).await.expect("put");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// CPU time (user + system) of a process so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

/// Resident memory of a process, MiB.
pub fn rss_of(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
