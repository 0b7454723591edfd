//! Crash test with real processes: a client writes with acknowledgements while replicas —
//! the leader included — are killed with SIGKILL and restarted, cycle after cycle. After each
//! restart every acknowledged write must be present, with its value and in acknowledgement
//! order, on every replica.
//!
//! `CHUBBY_CRASH_CYCLES` sets the number of cycles (20 by default, as in CI; `CHUBBY_LONG=1`
//! makes it 1,000, with the writer paced). `CHUBBY_CRASH_SEED` replays a run's choice of victims and pauses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use e2e_tests::{wait_converged, CellOptions, Rng, TestCell};
use proto::cell::ListRequest;

fn cycles() -> usize {
    if let Ok(n) = std::env::var("CHUBBY_CRASH_CYCLES") {
        return n.parse().expect("CHUBBY_CRASH_CYCLES is a number");
    }
    if std::env::var("CHUBBY_LONG").is_ok_and(|v| v == "1") {
        1000
    } else {
        20
    }
}

#[test]
fn acknowledged_writes_survive_kill9_of_any_replica() {
    let (seed, mut rng) = Rng::from_env("CHUBBY_CRASH_SEED");
    eprintln!("crash test seed {seed} (replay with CHUBBY_CRASH_SEED={seed})");
    // Small snapshots and log segments, so crashes also hit compaction, snapshot files,
    // InstallSnapshot and the log's roll-over to a new segment (with the next one made ready).
    let mut cell =
        TestCell::start(CellOptions { snapshot_entries: 300, wal_segment_kib: 16, ..CellOptions::default() });
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The writer: sequential puts, each recorded once acknowledged, with its revision.
    let acked: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // A long run paces its writer, so the writes checked after every cycle stay a few hundred
    // thousand rather than grow to millions.
    let n = cycles();
    let pause = if n > 100 { Duration::from_millis(5) } else { Duration::ZERO };
    let writer = {
        let (acked, stop, addrs) = (acked.clone(), stop.clone(), cell.addrs.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let mut client = fuse_mount::client::CellClient::new(addrs, Duration::from_secs(5)).unwrap();
            let mut seq = 0u64;
            let mut failures = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let value = Bytes::from(format!("value-{seq}"));
                match rt.block_on(client.put(&format!("w/{seq:08}"), value)) {
                    Ok(rev) => acked.lock().unwrap().push((seq, rev)),
                    Err(_) => failures += 1, // outcome unknown: not acknowledged, not checked
                }
                std::thread::sleep(pause);
            }
            failures
        })
    };

    let mut leader_kills = 0;
    for cycle in 0..n {
        std::thread::sleep(Duration::from_millis(150 + rng.below(250)));
        let client = cell.client(Duration::from_secs(2));
        let all = rt.block_on(client.status_all());
        let leader = all.iter().filter_map(|(_, r)| r.as_ref().ok()).map(|s| s.leader_id).find(|&l| l != 0);
        // Every other cycle the leader, otherwise a random replica.
        let victim = match leader {
            Some(l) if cycle % 2 == 0 => l,
            _ => 1 + rng.below(cell.addrs.len() as u64),
        };
        if Some(victim) == leader {
            leader_kills += 1;
        }
        cell.kill(victim);
        std::thread::sleep(Duration::from_millis(rng.below(400)));
        cell.start_replica(victim);

        let snapshot: Vec<(u64, u64)> = acked.lock().unwrap().clone();
        let max_rev = snapshot.iter().map(|&(_, r)| r).max().unwrap_or(0);
        let checker = cell.client(Duration::from_secs(5));
        if let Err(e) = rt.block_on(wait_converged(&checker, max_rev, Duration::from_secs(30))) {
            panic!("cycle {cycle} (seed {seed}), after killing replica {victim}: {e}");
        }
        for addr in cell.addrs.clone() {
            let mut c = cell.client(Duration::from_secs(5));
            let list = rt
                .block_on(c.at(&addr, |rpc| async move {
                    // Every acknowledged write, in one answer: past tonic's 4 MiB default in long runs.
                    rpc.max_decoding_message_size(256 << 20)
                        .list(ListRequest { prefix: "w/".into(), stale: true })
                        .await
                }))
                .unwrap_or_else(|e| panic!("cycle {cycle}: listing {addr}: {e}"));
            let have: std::collections::HashMap<String, (Bytes, u64)> =
                list.items.into_iter().map(|kv| (kv.key, (kv.value, kv.revision))).collect();
            let mut prev_rev = 0;
            for &(seq, rev) in &snapshot {
                let key = format!("w/{seq:08}");
                let Some((value, got_rev)) = have.get(&key) else {
                    panic!("cycle {cycle} (seed {seed}): acknowledged write {key} (revision {rev}) missing on {addr}");
                };
                assert_eq!(value, &Bytes::from(format!("value-{seq}")), "cycle {cycle}: {key} on {addr}");
                assert_eq!(*got_rev, rev, "cycle {cycle}: {key} on {addr} has another revision than acknowledged");
                assert!(rev > prev_rev, "cycle {cycle}: {key} acknowledged out of order on {addr}");
                prev_rev = rev;
            }
        }
        eprintln!(
            "cycle {cycle}: killed replica {victim}; {} acknowledged writes checked on every replica",
            snapshot.len()
        );
    }
    stop.store(true, Ordering::Relaxed);
    let failures = writer.join().unwrap();
    let total = acked.lock().unwrap().len();
    eprintln!(
        "{n} cycles, {leader_kills} leader kills, {total} acknowledged writes, {failures} unacknowledged attempts"
    );
    assert!(leader_kills >= n / 3, "the leader was killed only {leader_kills} times");
    assert!(total >= n, "only {total} writes were acknowledged in {n} cycles: the cell made too little progress");
    // The crashes hit a log that rolls over: each replica moved on to later segment files.
    for id in 1..=cell.addrs.len() as u64 {
        let newest = std::fs::read_dir(cell.data_dir(id).join("wal"))
            .expect("the replica's log directory")
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".wal")?.parse::<u64>().ok())
            .max();
        assert!(newest.is_some_and(|s| s > 2), "replica {id}'s log never rolled over past its second segment");
    }
}
