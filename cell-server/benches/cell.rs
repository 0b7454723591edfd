//! Figures for the durability-and-transport issue; prints tables, asserts nothing.
//!
//! `cargo bench -p cell-server --bench cell` measures, on this machine:
//! 1. the disk's fdatasync latency (appending, and into a preallocated file filled with zeros
//!    ahead, as the WAL writes on ext4/XFS)
//!    and a loopback TCP round trip (the physical limits);
//! 2. a 3-replica loopback cell with `--fsync always`: 1-client commit latency, and
//!    throughput at 1, 16, 64 and 256 concurrent proposers (100-byte values), with unary calls and
//!    pipelined on a stream;
//! 3. recovery time of a replica with a 1 GiB log, and with a 100 MB snapshot.
//!
//! Environment: `BENCH_SECS` (seconds per load level, default 4), `BENCH_DIR` (where data goes,
//! default a temp dir), `BENCH_SKIP_RECOVERY=1`, `BENCH_LEVELS=1,16,64,256`, `BENCH_FSYNC=always`,
//! `BENCH_API=unary|pipeline` (default both), `BENCH_TLS=off|on|both` (default off; both: a
//! plaintext and a mutual-TLS cell measured in turn), `BENCH_ROUNDS` (default 3), `BENCH_RUST_LOG` (the
//! replicas' log filter, written to files in the data directory; it keeps
//! `cell_server::replica=info`, by which the launcher sees a replica serve), `BENCH_REPLICA_ARGS` (more flags for the replicas).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use bytes::Bytes;
use cell_server::machine::CellMachine;
use cell_server::state::{self, Op};
use common::{leader_of, percentile, start_cell_with, us};
use fuse_mount::client::tls::{endpoint, Identity};
use fuse_mount::client::PutPipeline;
use proto::cell::cell_client::CellClient;
use proto::cell::PutRequest;
use raft::{DiskOptions, DiskStorage, Entry, EntryKind, FsyncPolicy, HardState, StateMachine, Storage};

/// fdatasync after each 100-byte write: appended to a growing file (`preallocated` false), or
/// written into a file given its size up front with `fallocate` and then written with zeros,
/// as the WAL's segments are ahead of their records (no block converted at a timed sync).
fn fsync_latency(dir: &Path, preallocated: bool) -> (Duration, Duration) {
    use std::os::unix::io::AsRawFd;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new().create(true).truncate(true).write(true).open(&path).unwrap();
    if preallocated {
        // SAFETY: fallocate on a descriptor we own, with plain integer arguments.
        let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, 1 << 20) };
        assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
        // 2000 writes of 100 bytes stay within the first megabyte, all of it written now.
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![0u8; 1 << 20], 0).unwrap();
        f.sync_all().unwrap();
    }
    let mut times = Vec::new();
    for _ in 0..2000 {
        let start = Instant::now();
        f.write_all(&[7u8; 100]).unwrap();
        f.sync_data().unwrap();
        times.push(start.elapsed());
    }
    std::fs::remove_file(path).unwrap();
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn loopback_rtt() -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).is_ok() {
            s.write_all(&buf).unwrap();
        }
    });
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_nodelay(true).unwrap();
    let mut times = Vec::new();
    let mut buf = [1u8; 64];
    for _ in 0..5000 {
        let start = Instant::now();
        c.write_all(&buf).unwrap();
        c.read_exact(&mut buf).unwrap();
        times.push(start.elapsed());
    }
    drop(c);
    server.join().unwrap();
    times.sort();
    percentile(&times, 0.5)
}

/// `clients` concurrent proposers, each writing 100-byte values back to back for `secs`, with
/// unary `Put` calls or (`pipelined`) on a `PutPipeline` stream per connection.
///
/// The load comes from at most two threads, each running a single-threaded runtime with two
/// connections of its own, as a client process (the `chubby` CLI, say) does: a multi-threaded
/// runtime would add its own thread hand-offs to every call and measure the client, not the cell.
/// Returns writes/s, the median and p99 latency, and the CPU time `cpu` counted per write.
fn load(
    leader: &str,
    tls: Option<Arc<Identity>>,
    clients: usize,
    secs: f64,
    pipelined: bool,
    cpu: &dyn Fn() -> Duration,
) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    // Writes refused, and the first refusal (a run with failures says so, not just a low rate).
    let failed: Arc<Mutex<(u64, Option<String>)>> = Arc::new(Mutex::new((0, None)));
    let threads: Vec<_> = (0..clients.min(2))
        .map(|t| {
            let mine: Vec<usize> = (0..clients).filter(|i| i % 2 == t).collect();
            let (stop, count, lat, leader) = (stop.clone(), count.clone(), lat.clone(), leader.to_string());
            let tls = tls.clone();
            let failed = failed.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let mut channels = Vec::new();
                    for _ in 0..2 {
                        channels.push(endpoint(&leader, tls.as_deref()).unwrap().connect().await.unwrap());
                    }
                    let mut pipes = Vec::new();
                    if pipelined {
                        for c in &channels {
                            pipes.push(Arc::new(PutPipeline::open(c.clone()).await.expect("PutPipeline")));
                        }
                    }
                    let mut tasks = Vec::new();
                    for i in mine {
                        let mut client = CellClient::new(channels[i % channels.len()].clone());
                        let pipe = pipes.get(i % channels.len()).cloned();
                        let (stop, count, failed) = (stop.clone(), count.clone(), failed.clone());
                        tasks.push(tokio::spawn(async move {
                            let value = Bytes::from(vec![b'v'; 100]);
                            let mut times = Vec::new();
                            let mut n = 0u64;
                            while !stop.load(Ordering::Relaxed) {
                                let start = Instant::now();
                                let key = format!("bench/{i}/{}", n % 1000);
                                let result = match &pipe {
                                    Some(p) => p.put(&key, value.clone()).await.map(|_| ()).map_err(|e| e.to_string()),
                                    None => client
                                        .put(PutRequest { key, value: value.clone() })
                                        .await
                                        .map(|_| ())
                                        .map_err(|s| s.message().to_string()),
                                };
                                if let Err(e) = &result {
                                    let mut first = failed.lock().unwrap();
                                    first.0 += 1;
                                    first.1.get_or_insert_with(|| e.clone());
                                }
                                if result.is_ok() {
                                    times.push((start, start.elapsed()));
                                    count.fetch_add(1, Ordering::Relaxed);
                                }
                                n += 1;
                            }
                            times
                        }));
                    }
                    for t in tasks {
                        let times = t.await.unwrap();
                        lat.lock().unwrap().push(times);
                    }
                });
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs * 0.2)); // warm-up
    let c0 = count.load(Ordering::Relaxed);
    let cpu0 = cpu();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let done = count.load(Ordering::Relaxed) - c0;
    let elapsed = t0.elapsed();
    let cpu_per_write = (cpu() - cpu0).checked_div(done.max(1) as u32).unwrap_or_default();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    // Latencies of the calls that started in the measured window.
    let end = t0 + elapsed;
    let mut l: Vec<Duration> = lat
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .filter(|(start, _)| *start >= t0 && *start < end)
        .map(|(_, d)| *d)
        .collect();
    l.sort();
    if let (n @ 1.., Some(first)) = &*failed.lock().unwrap() {
        eprintln!("{clients} proposers: {n} writes refused; the first: {first}");
    }
    (done as f64 / elapsed.as_secs_f64(), percentile(&l, 0.5), percentile(&l, 0.99), cpu_per_write)
}

/// One measurement of a load level: writes/s, median and p99 latency, CPU per write.
type Round = (f64, Duration, Duration, Duration);

/// Each level is measured `BENCH_ROUNDS` times (default 3), the levels taking turns, and the
/// median round is printed: a ratio then compares rates measured through the same stretch of
/// the VM's ups and downs, not a fast minute against a slow one.
fn throughput(dir: &Path, secs: f64, levels: &[usize]) {
    let fsync = std::env::var("BENCH_FSYNC").unwrap_or_else(|_| "always".into());
    let rounds: usize = std::env::var("BENCH_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3).max(1);
    // `unary`, `pipeline` or (default) both.
    let apis: Vec<bool> = match std::env::var("BENCH_API").as_deref() {
        Ok("unary") => vec![false],
        Ok("pipeline") => vec![true],
        _ => vec![false, true],
    };
    // More replica flags, to explore (`--snapshot-entries 1000000`, say); the default is none.
    let extra = std::env::var("BENCH_REPLICA_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    // `BENCH_TLS`: off (default), on, or both (two cells, measured in turn).
    let modes: Vec<bool> = match std::env::var("BENCH_TLS").as_deref() {
        Ok("on") => vec![true],
        Ok("both") => vec![false, true],
        _ => vec![false],
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cells: Vec<(bool, e2e_tests::TestCell, String)> = modes
        .iter()
        .map(|&tls| {
            let cell = start_cell_with(&dir.join(if tls { "tls" } else { "plain" }), &fsync, &extra, tls);
            let leader = rt.block_on(leader_of(&cell));
            (tls, cell, leader)
        })
        .collect();
    // (tls, clients, pipelined) -> its rounds.
    let mut runs: BTreeMap<(bool, usize, bool), Vec<Round>> = BTreeMap::new();
    for _ in 0..rounds {
        for (tls, cell, leader) in &cells {
            let pids: Vec<u32> = cell.pids().into_iter().chain([std::process::id()]).collect();
            let cpu = || pids.iter().map(|&p| common::cpu_time(p)).sum::<Duration>();
            for &clients in levels {
                for &pipelined in &apis {
                    let round = load(leader, cell.client_identity(), clients, secs, pipelined, &cpu);
                    runs.entry((*tls, clients, pipelined)).or_default().push(round);
                }
            }
        }
    }
    drop(cells);
    println!(
        "\n3 replicas on loopback, --fsync {fsync}, 100-byte values, {secs} s per level, median of {rounds} rounds"
    );
    println!("(unary: a `Put` call per write; pipelined: the writes of a connection's proposers multiplexed");
    println!("on one `PutPipeline` stream, each answered on its own)");
    println!("(CPU per write: of the 3 replicas and of the bench's client together; all rounds' writes/s in brackets)");
    println!("(TLS: mutual TLS on every connection, clients' and peers', or plaintext with --insecure)");
    println!("| TLS | concurrent proposers | API | writes/s | median latency | p99 latency | CPU per write |");
    println!("|---|---:|---|---:|---:|---:|---:|");
    let median = |v: &[Round]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v[v.len() / 2]
    };
    for ((tls, clients, pipelined), all) in &runs {
        let (tls, clients, pipelined) = (*tls, *clients, *pipelined);
        {
            let (rate, p50, p99, cpu) = median(all);
            let ratio = match runs.get(&(tls, 1, pipelined)) {
                Some(one) if clients > 1 => format!(" ({:.1}x)", rate / median(one).0),
                _ => String::new(),
            };
            let each = if rounds > 1 {
                format!(" [{}]", all.iter().map(|r| format!("{:.0}", r.0)).collect::<Vec<_>>().join(", "))
            } else {
                String::new()
            };
            let api = if pipelined { "pipelined" } else { "unary" };
            let mode = if tls { "on" } else { "off" };
            println!(
                "| {mode} | {clients} | {api} | {rate:.0}{ratio}{each} | {} | {} | {:.1} µs |",
                us(p50),
                us(p99),
                cpu.as_secs_f64() * 1e6
            );
        }
    }
}

fn rss_mib() -> f64 {
    common::rss_of(std::process::id())
}

fn recovery(dir: &Path) {
    println!("\nrecovery of one replica's storage (open = verify + replay the WAL, load the snapshot)");
    println!("| data | open | apply to the state machine | total |");
    println!("|---|---:|---:|---:|");
    // 1 GiB of log: 1 KiB values, written with fsync=no (what is measured is reading it back).
    let log_dir = dir.join("log-1g");
    let opts = DiskOptions { fsync: FsyncPolicy::No, ..DiskOptions::default() };
    {
        let mut s = DiskStorage::open(&log_dir, &opts).unwrap();
        s.bootstrap(&[1, 2, 3]).unwrap();
        let value = vec![b'x'; 1000];
        let mut index = s.last_index();
        let target = 1u64 << 30;
        let mut written = 0u64;
        while written < target {
            let batch: Vec<Entry> = (0..256)
                .map(|k| Entry {
                    term: 2,
                    index: index + 1 + k,
                    kind: EntryKind::Normal,
                    data: admin_put(&format!("/key/{}", (index + k) % 100_000), &value),
                })
                .collect();
            written += batch.iter().map(|e| e.data.len() as u64 + 26).sum::<u64>();
            index += batch.len() as u64;
            s.persist(None, &batch, Some(HardState { term: 2, vote: 1, commit: index }), false).unwrap();
        }
        s.sync().unwrap();
    }
    drop_caches();
    let rss0 = rss_mib();
    let t = Instant::now();
    let s = DiskStorage::open(&log_dir, &opts).unwrap();
    let open = t.elapsed();
    let rss = rss_mib() - rss0;
    let t = Instant::now();
    let mut kv = CellMachine::new(None);
    let last = s.last_index();
    let mut lo = s.first_index();
    while lo <= last {
        let batch = s.entries(lo, last + 1, 64 << 20).unwrap();
        for e in &batch {
            if e.kind == EntryKind::Normal {
                kv.apply(e.index, &e.data, false).expect("an entry this build wrote");
            }
        }
        lo += batch.len() as u64;
    }
    let apply = t.elapsed();
    println!(
        "| 1 GiB log ({} entries, {} segments; +{rss:.0} MiB resident) | {:.2} s | {:.2} s | {:.2} s |",
        last,
        s.wal_segments(),
        open.as_secs_f64(),
        apply.as_secs_f64(),
        (open + apply).as_secs_f64()
    );
    drop(s);
    drop(kv);
    std::fs::remove_dir_all(&log_dir).unwrap();

    // 100 MB snapshot: 100,000 keys of 1 KB.
    let snap_dir = dir.join("snap-100m");
    {
        let mut s = DiskStorage::open(&snap_dir, &opts).unwrap();
        s.bootstrap(&[1, 2, 3]).unwrap();
        let mut kv = CellMachine::new(None);
        let value = vec![b's'; 1000];
        let entries: Vec<Entry> = (0..100_000u64)
            .map(|k| Entry {
                term: 2,
                index: 4 + k,
                kind: EntryKind::Normal,
                data: admin_put(&format!("/key/{k:06}"), &value),
            })
            .collect();
        s.persist(None, &entries, Some(HardState { term: 2, vote: 1, commit: 100_003 }), true).unwrap();
        for e in &entries {
            kv.apply(e.index, &e.data, false).expect("an entry this build wrote");
        }
        let conf = raft::ConfState::new(vec![1, 2, 3], vec![]);
        s.compact(100_003, conf, kv.snapshot()()).unwrap();
    }
    drop_caches();
    let t = Instant::now();
    let s = DiskStorage::open(&snap_dir, &opts).unwrap();
    let open = t.elapsed();
    let snap = s.snapshot().unwrap();
    let t = Instant::now();
    let mut kv = CellMachine::new(None);
    kv.restore(&snap.data).unwrap();
    let apply = t.elapsed();
    println!(
        "| {:.0} MB snapshot ({} keys) | {:.2} s | {:.2} s | {:.2} s |",
        snap.data.len() as f64 / 1e6,
        kv.state().node_count(),
        open.as_secs_f64(),
        apply.as_secs_f64(),
        (open + apply).as_secs_f64()
    );
    std::fs::remove_dir_all(&snap_dir).unwrap();
}

/// CPU per applied write on one replica's Raft thread: 100-byte overwrites spread over 80,000
/// files (as the 64-writer load leaves them), with no snapshot copy alive and while one is.
fn apply_cost() {
    const FILES: u64 = 80_000;
    const WRITES: u64 = 400_000;
    let value = [b'v'; 100];
    let entries: Vec<Bytes> =
        (0..WRITES).map(|k| admin_put(&format!("/bench/{}/{}", k % 80, (k / 80) % 1000), &value)).collect();
    let mut kv = CellMachine::new(None);
    let mut index = 0;
    for e in &entries[..FILES as usize] {
        index += 1;
        kv.apply(index, e, true).expect("an entry this build wrote");
    }
    println!("\napplying 100-byte writes to {FILES} files, one thread");
    println!("| while | per write |");
    println!("|---|---:|");
    for copy_alive in [false, true] {
        let t = Instant::now();
        for chunk in entries.chunks(FILES as usize) {
            // The snapshot thread holds its copy while it encodes: here a fresh one for every
            // 80,000 writes, so each write may be the first to change its part of the tree.
            let copy = copy_alive.then(|| kv.snapshot());
            for e in chunk {
                index += 1;
                kv.apply(index, e, true).expect("an entry this build wrote");
            }
            drop(copy);
        }
        let per = t.elapsed().as_secs_f64() * 1e6 / WRITES as f64;
        let label = if copy_alive { "a snapshot copy is alive" } else { "no snapshot copy is alive" };
        println!("| {label} | {per:.2} µs |");
    }
}

/// Drops the page cache (as root) so recovery reads come from the disk; harmless if refused.
fn drop_caches() {
    let _ = Command::new("sync").status();
    if std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
        println!("(could not drop the page cache: reads may come from memory)");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes with --list
    }
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(4.0);
    let levels: Vec<usize> = std::env::var("BENCH_LEVELS")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16, 64, 256]);
    let tmp =
        tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().display().to_string()))
            .unwrap();
    let (f50, f99) = fsync_latency(tmp.path(), false);
    let (p50, p99) = fsync_latency(tmp.path(), true);
    let rtt = loopback_rtt();
    println!("| physical limit | median | p99 |");
    println!("|---|---:|---:|");
    println!("| fdatasync of a 100-byte append | {} | {} |", us(f50), us(f99));
    println!(
        "| fdatasync of a 100-byte write into a preallocated, zero-filled file (as the WAL) | {} | {} |",
        us(p50),
        us(p99)
    );
    println!("| loopback TCP round trip (64 B) | {} | |", us(rtt));
    apply_cost();
    throughput(tmp.path(), secs, &levels);
    if std::env::var("BENCH_SKIP_RECOVERY").is_err() {
        recovery(tmp.path());
    }
}

/// A log entry of the operator's write, as `chubby.cell.Cell/Put` proposes it.
fn admin_put(path: &str, value: &[u8]) -> Bytes {
    state::encode(&state::Command {
        now_ms: 0,
        request: None,
        op: Op::AdminPut { path: path.to_string(), contents: Bytes::copy_from_slice(value) },
    })
}
