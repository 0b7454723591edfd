//! Throughput of the Raft core without I/O, and speed of the simulator. Prints a table.
//!
//! `cargo bench -p raft --bench core`

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::{Config, MemStorage, Message, RawNode, Role, Storage};

/// A 3-node group on a perfect in-memory network, with no checker and no hashing: only the
/// core and MemStorage.
struct Group {
    nodes: Vec<RawNode<MemStorage>>,
    net: Vec<Message>,
    applied: u64,
}

impl Group {
    fn new() -> Group {
        let nodes = (1..=3u64)
            .map(|id| RawNode::new(&Config::new(id), MemStorage::new_with_voters(&[1, 2, 3])).unwrap())
            .collect();
        let mut g = Group { nodes, net: Vec::new(), applied: 0 };
        g.nodes[0].campaign();
        g.settle();
        assert_eq!(g.nodes[0].role(), Role::Leader);
        g
    }

    fn settle(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                let node = &mut self.nodes[i];
                if !node.has_ready() {
                    continue;
                }
                moved = true;
                let rd = node.ready();
                self.net.extend(rd.messages.iter().cloned());
                if let Some(hs) = rd.hard_state {
                    node.storage_mut().set_hard_state(hs);
                }
                node.storage_mut().append(&rd.entries).unwrap();
                self.net.extend(rd.persisted_messages.iter().cloned());
                if i == 0 {
                    self.applied += rd.committed_entries.len() as u64;
                }
                node.advance(&rd);
            }
            if self.net.is_empty() && !moved {
                return;
            }
            for m in std::mem::take(&mut self.net) {
                let to = (m.to - 1) as usize;
                self.nodes[to].step(m);
            }
        }
    }

    fn compact(&mut self) {
        for node in &mut self.nodes {
            let applied = node.status().applied;
            if applied > node.storage().first_index() + 100_000 {
                let conf = node.conf_state_at(applied).unwrap();
                node.storage_mut().compact(applied, conf, Bytes::new()).unwrap();
            }
        }
    }
}

fn core_throughput(batch: usize, batches_per_round: usize, payload: usize) -> f64 {
    let mut g = Group::new();
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
        g.settle();
        rounds += 1;
        if rounds.is_multiple_of(64) {
            g.compact();
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
