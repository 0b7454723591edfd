//! Figures for membership changes under load; prints tables, asserts nothing.
//!
//! `cargo bench -p cell-server --bench resize`, on a loopback cell of `cell-server` processes
//! (fsync `always`, a snapshot every `BENCH_SNAPSHOT_ENTRIES` entries, the server's 100,000 by
//! default):
//! 1. fills the cell with `BENCH_STATE_MB` (100) MB of 64 KiB files, then writes one small
//!    file past the snapshot interval, so that every replica snapshots and drops its log: a new
//!    member catches up from a snapshot of about that size;
//! 2. `BENCH_WRITERS` (32) clients write 100-byte values in a loop, each waiting for its
//!    answer, while the cell goes 3 → 5 → 3: replica 4 is added, started with `--join` and
//!    promoted once caught up, then replica 5; then the leader is removed (it hands off
//!    first) and one other original replica.
//!
//! It prints the writes per second of each second with what was happening, each phase's
//! median, and how long each new member took from its start until it had the log up to the
//! commit index of that moment (snapshot transfer, install and the log after it).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{leader_of, put_many, start_cell_with};
use e2e_tests::TestCell;
use fuse_mount::client::CellClient;
use proto::cell::{MemberAddRequest, MemberIdRequest, MembersRequest, MembersResponse};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the cell is doing, for the timeline: set by the main task, read by the sampler.
type Phase = Arc<Mutex<String>>;

fn set(phase: &Phase, what: &str) {
    *phase.lock().unwrap() = what.to_string();
}

async fn members(client: &mut CellClient) -> MembersResponse {
    client.leader_call(|mut c| async move { c.members(MembersRequest { from_leader: true }).await }).await.unwrap()
}

/// How long each step of adding a member took.
struct Grown {
    id: u64,
    add: Duration,
    catch_up: Duration,
    promote: Duration,
    /// Whether it restored the leader's snapshot (else the log reached back far enough).
    from_snapshot: bool,
}

/// Adds the next replica, starts it and waits until it has the log up to the commit index of
/// its start; promotes it.
async fn grow(cell: &mut TestCell, client: &mut CellClient) -> Grown {
    let began = Instant::now();
    let (id, address) = cell.add_replica();
    let req = MemberAddRequest { id, address };
    client
        .leader_call(|mut c| {
            let req = req.clone();
            async move { c.member_add(req).await }
        })
        .await
        .expect("member add");
    let target = members(client).await.commit_index;
    let started = Instant::now();
    cell.start_replica(id);
    loop {
        let m = members(client).await;
        if m.members.iter().any(|r| r.id == id && r.match_index >= target) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(600), "replica {id} never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catch_up = started.elapsed();
    let promoting = Instant::now();
    client.leader_call(|mut c| async move { c.member_promote(MemberIdRequest { id }).await }).await.expect("promote");
    let from_snapshot = cell.log(id).contains("state restored from the leader's snapshot");
    Grown { id, add: started - began, catch_up, promote: promoting.elapsed(), from_snapshot }
}

async fn remove(cell: &mut TestCell, client: &mut CellClient, id: u64) {
    client.leader_call(|mut c| async move { c.member_remove(MemberIdRequest { id }).await }).await.expect("remove");
    cell.terminate(id);
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let state_mb = env_u64("BENCH_STATE_MB", 100);
    let writers = env_u64("BENCH_WRITERS", 32);
    let snapshot_entries = env_u64("BENCH_SNAPSHOT_ENTRIES", 100_000);
    let dir = tempfile::tempdir().unwrap();
    let entries = snapshot_entries.to_string();
    let mut cell = start_cell_with(dir.path(), "always", &["--snapshot-entries", &entries], false);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut admin = cell.client(Duration::from_secs(120));

    let files = state_mb * 16;
    let t = Instant::now();
    rt.block_on(async {
        let leader = leader_of(&cell).await;
        put_many(&leader, files, |i| format!("resize/fill/f{i}"), Bytes::from(vec![b'x'; 64 << 10])).await;
        // Past the snapshot interval, so that every replica snapshots the filled state and
        // drops the log before it: a new member then needs the snapshot.
        put_many(&leader, snapshot_entries + 1000, |_| "resize/pad".into(), Bytes::from_static(b"p")).await;
        let client = cell.client(Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(120);
        while !client.status_all().await.iter().all(|(_, s)| s.as_ref().is_ok_and(|s| s.snapshot_index > 0)) {
            assert!(Instant::now() < deadline, "no snapshot after {snapshot_entries} entries");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    println!(
        "filled the cell with {files} files of 64 KiB ({state_mb} MB) and snapshotted it in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let phase: Phase = Arc::new(Mutex::new("3 replicas".into()));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = cell.client(Duration::from_secs(30));
        let (done, stop) = (done.clone(), stop.clone());
        tasks.push(rt.spawn(async move {
            let value = Bytes::from(vec![b'v'; 100]);
            while !stop.load(Ordering::Relaxed) {
                if client.put(&format!("resize/load/w{w}"), value.clone()).await.is_ok() {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let samples: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let sampler = {
        let (phase, done, stop, samples) = (phase.clone(), done.clone(), stop.clone(), samples.clone());
        rt.spawn(async move {
            let mut last = done.load(Ordering::Relaxed);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let now = done.load(Ordering::Relaxed);
                let what = phase.lock().unwrap().clone();
                samples.lock().unwrap().push((what, now - last));
                last = now;
            }
        })
    };

    let settle = Duration::from_secs(env_u64("BENCH_SETTLE_S", 5));
    let mut caught_up = Vec::new();
    rt.block_on(async {
        tokio::time::sleep(settle).await;
        for _ in 0..2 {
            set(&phase, "growing");
            caught_up.push(grow(&mut cell, &mut admin).await);
        }
        set(&phase, "5 replicas");
        tokio::time::sleep(settle).await;
        set(&phase, "shrinking");
        let leader = cell.id_of(&leader_of(&cell).await);
        remove(&mut cell, &mut admin, leader).await;
        let other = (1..=3).find(|&id| id != leader).unwrap();
        remove(&mut cell, &mut admin, other).await;
        set(&phase, "3 replicas again");
        tokio::time::sleep(settle).await;
    });
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
        let _ = sampler.await;
    });

    let snap_bytes: u64 = std::fs::read_dir(cell.data_dir(1).join("snap"))
        .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).max().unwrap_or(0))
        .unwrap_or(0);
    println!("snapshot file at replica 1: {:.1} MB", snap_bytes as f64 / 1e6);
    for g in &caught_up {
        println!(
            "replica {}: added in {:.2} s; caught up ({}) {:.2} s after its start; promoted in {:.2} s",
            g.id,
            g.add.as_secs_f64(),
            if g.from_snapshot { "the leader's snapshot, then the log" } else { "from the log alone" },
            g.catch_up.as_secs_f64(),
            g.promote.as_secs_f64()
        );
    }
    println!("\n{writers} writers, writes/s each second:");
    let samples = samples.lock().unwrap().clone();
    for (i, (what, n)) in samples.iter().enumerate() {
        println!("  {:>3} s  {:>7}  {what}", i + 1, n);
    }
    println!("\nmedian writes/s by phase:");
    let mut order: Vec<String> = Vec::new();
    for (what, _) in &samples {
        if !order.contains(what) {
            order.push(what.clone());
        }
    }
    for what in order {
        let of: Vec<u64> = samples.iter().filter(|(w, _)| *w == what).map(|(_, n)| *n).collect();
        println!("  {what:<18} {:>7}  ({} s)", median(of.clone()), of.len());
    }
    let ids: Vec<u64> = (1..=5).collect();
    for id in ids {
        if cell.pid(id).is_some() {
            cell.terminate(id);
        }
    }
}
