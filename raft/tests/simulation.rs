//! Randomized, deterministic simulation of whole Raft groups (3 and 5 nodes) under message
//! loss, duplication, delay and reordering, partitions (symmetric, asymmetric, leader-isolating),
//! crashes that lose unpersisted state, log compaction, membership changes and leader transfers.
//!
//! `RAFT_SIM_SEEDS` (default 250 per group size) and `RAFT_SIM_STEPS` (default 2000) raise the
//! effort for long hunts; `RAFT_SIM_SEED` (+ `RAFT_SIM_NODES`, `RAFT_SIM_TRACE=1`) replays one.

mod support;

use support::sim::{run, SimOptions, SimStats};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn run_many(nodes: u64) {
    let steps = env("RAFT_SIM_STEPS", 2000);
    if let Ok(seed) = std::env::var("RAFT_SIM_SEED") {
        let seed: u64 = seed.parse().expect("RAFT_SIM_SEED is a number");
        let nodes = env("RAFT_SIM_NODES", nodes);
        let trace = std::env::var("RAFT_SIM_TRACE").is_ok_and(|v| v == "1");
        let stats = run(&SimOptions { seed, nodes, steps, trace }).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("seed {seed}: {stats:?}");
        return;
    }
    let seeds = env("RAFT_SIM_SEEDS", 250);
    let mut total = SimStats::default();
    let mut failures = Vec::new();
    for i in 0..seeds {
        let seed = nodes * 1_000_000 + i;
        match run(&SimOptions { seed, nodes, steps, trace: false }) {
            Ok(s) => {
                total.acked += s.acked;
                total.applied += s.applied;
                total.reads += s.reads;
                total.compactions += s.compactions;
                total.conf_changes += s.conf_changes;
                total.crashes += s.crashes;
                total.delivered += s.delivered;
                total.dropped += s.dropped;
            }
            Err(e) => failures.push(e),
        }
    }
    eprintln!("{nodes} nodes, {seeds} seeds x {steps} steps: {total:?}");
    assert!(failures.is_empty(), "{} of {seeds} seeds failed; first:\n{}", failures.len(), failures[0]);
    // The runs must have exercised the protocol, not idled.
    assert!(total.acked > seeds * 10, "too few acknowledged proposals: {total:?}");
    assert!(total.compactions > 0 && total.conf_changes > 0 && total.crashes > 0, "{total:?}");
}

#[test]
fn three_node_groups_stay_safe_and_live_under_faults() {
    run_many(3);
}

#[test]
fn five_node_groups_stay_safe_and_live_under_faults() {
    run_many(5);
}
