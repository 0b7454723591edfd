//! Helpers shared by the benchmark programs: a 3-replica cell of `cell-server` processes on
//! loopback, leader lookup, percentiles.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

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

/// Replica processes, killed when dropped.
pub struct Cell {
    pub children: Vec<Option<Child>>,
    pub addrs: Vec<String>,
    peers: String,
    dir: std::path::PathBuf,
    fsync: String,
    extra: Vec<String>,
}

impl Drop for Cell {
    fn drop(&mut self) {
        for c in self.children.iter_mut().filter_map(Option::take) {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Cell {
    /// Starts replica `id` (1-based) on its data directory. `BENCH_SERVER` names another
    /// `cell-server` binary to run (to compare two builds on the same bench client).
    pub fn start(&mut self, id: usize) {
        let server = std::env::var("BENCH_SERVER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_cell-server").to_string());
        let child = Command::new(server)
            .args(["--id", &id.to_string(), "--listen", &self.addrs[id - 1], "--peers", &self.peers])
            .args(["--fsync", &self.fsync])
            .args(&self.extra)
            .arg("--data-dir")
            .arg(self.dir.join(format!("r{id}")))
            .env("RUST_LOG", std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        self.children[id - 1] = Some(child);
    }

    /// `kill -9` of replica `id`.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut c) = self.children[id - 1].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self, id: usize) -> u32 {
        self.children[id - 1].as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The replica id serving `addr`.
    pub fn id_of(&self, addr: &str) -> usize {
        self.addrs.iter().position(|a| a == addr).unwrap() + 1
    }
}

pub fn start_cell(dir: &Path, fsync: &str) -> Cell {
    start_cell_with(dir, fsync, &[])
}

pub fn start_cell_with(dir: &Path, fsync: &str, extra: &[&str]) -> Cell {
    let ports: Vec<u16> = (0..3)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect::<Vec<_>>()
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let peers = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let mut cell = Cell {
        children: vec![None, None, None],
        addrs,
        peers,
        dir: dir.to_path_buf(),
        fsync: fsync.to_string(),
        extra: extra.iter().map(|s| s.to_string()).collect(),
    };
    for id in 1..=3 {
        cell.start(id);
    }
    cell
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
