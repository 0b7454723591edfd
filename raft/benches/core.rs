//! Throughput of the Raft core without I/O, and speed of the simulator. Prints a table.
//!
//! `cargo bench -p raft --bench core`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::{Role, Storage};
use support::group::Group;

/// A 3-node group on a perfect in-memory network, with no checker and no hashing: only the
/// core and MemStorage; replica 1 leads.
fn group() -> Group {
    let mut g = Group::new(3);
    g.node(1).campaign();
    g.settle(None);
    assert_eq!(g.node(1).role(), Role::Leader);
    g
}

/// Compacts every replica's log once it holds more than 100,000 applied entries.
fn compact(g: &mut Group) {
    for node in &mut g.nodes {
        let applied = node.status().applied;
        if applied > node.storage().first_index() + 100_000 {
            let conf = node.conf_state_at(applied).unwrap();
            node.storage_mut().compact(applied, conf, Bytes::new()).unwrap();
        }
    }
}

fn core_throughput(batch: usize, batches_per_round: usize, payload: usize) -> f64 {
    let mut g = group();
    let data = Bytes::from(vec![7u8; payload]);
    let start = Instant::now();
    let before = g.applied;
    let mut rounds = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        for _ in 0..batches_per_round {
            for _ in 0..batch {
                g.nodes[0].propose(data.clone()).unwrap();
            }
        }
        g.settle(None);
        rounds += 1;
        if rounds.is_multiple_of(64) {
            compact(&mut g);
        }
    }
    (g.applied - before) as f64 / start.elapsed().as_secs_f64()
}

fn sim_speed(nodes: u64, steps: u64) -> (f64, u64) {
    let start = Instant::now();
    let mut seeds = 0;
    while start.elapsed() < Duration::from_secs(5) {
        let opts = support::sim::SimOptions { seed: 9_000_000 + seeds, nodes, steps, trace: false };
        support::sim::run(&opts).unwrap_or_else(|e| panic!("{e}"));
        seeds += 1;
    }
    (seeds as f64 * 60.0 / start.elapsed().as_secs_f64(), seeds)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("Raft core, 3 nodes, in-memory, one thread (committed entries/s at the leader)");
    println!("| batch | batches per round | payload | entries/s |");
    println!("|---:|---:|---:|---:|");
    for (batch, per_round, payload) in [(1, 1, 100), (64, 1, 100), (64, 16, 100), (64, 16, 8)] {
        let rate = core_throughput(batch, per_round, payload);
        println!("| {batch} | {per_round} | {payload} B | {rate:.0} |");
    }
    println!();
    println!("Simulator (faults, checks after every step)");
    println!("| nodes | steps per seed | seeds/minute |");
    println!("|---:|---:|---:|");
    for nodes in [3, 5] {
        let (per_min, _) = sim_speed(nodes, 2000);
        println!("| {nodes} | 2000 | {per_min:.0} |");
    }
}
