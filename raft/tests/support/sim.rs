//! The randomized simulation: a seeded sequence of deliveries, ticks, proposals, reads,
//! crashes, partitions, compactions, membership changes and leader transfers, with every
//! safety property checked after every step, then a healing phase that must apply every
//! acknowledged proposal on every member.

use std::collections::HashSet;

use raft::{ConfChange, ReplicaId, Role};

use super::cluster::{Cluster, Faults, NodeCfg};
use super::rng::SimRng;

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub nodes: u64,
    pub steps: u64,
    /// Print every event (for replaying one seed).
    pub trace: bool,
}

#[derive(Clone, Debug, Default)]
pub struct SimStats {
    pub acked: u64,
    pub applied: u64,
    pub leaders: u64,
    pub crashes: u64,
    pub conf_changes: u64,
    pub compactions: u64,
    pub reads: u64,
    pub delivered: u64,
    pub dropped: u64,
}

/// Weighted choice of the next action.
#[derive(Clone, Copy, Debug)]
enum Action {
    Deliver,
    Ready,
    TickAll,
    TickOne,
    Propose,
    Read,
    Crash,
    Restart,
    Partition,
    Heal,
    Compact,
    ConfChange,
    Transfer,
}

const ACTIONS: &[(Action, u64)] = &[
    (Action::Deliver, 500),
    (Action::Ready, 250),
    (Action::TickAll, 60),
    (Action::TickOne, 30),
    (Action::Propose, 80),
    (Action::Read, 15),
    (Action::Crash, 3),
    (Action::Restart, 15),
    (Action::Partition, 4),
    (Action::Heal, 6),
    (Action::Compact, 8),
    (Action::ConfChange, 5),
    (Action::Transfer, 2),
];

fn pick_action(rng: &mut SimRng) -> Action {
    let total: u64 = ACTIONS.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(total);
    for &(a, w) in ACTIONS {
        if x < w {
            return a;
        }
        x -= w;
    }
    Action::Deliver
}

/// Runs one seed. `Err` carries the violated property and the seed.
pub fn run(opts: &SimOptions) -> Result<SimStats, String> {
    run_inner(opts).map_err(|e| {
        format!(
            "{e}\n  seed {seed}, {nodes} nodes, {steps} steps\n  replay: RAFT_SIM_SEED={seed} RAFT_SIM_NODES={nodes} \
             RAFT_SIM_STEPS={steps} RAFT_SIM_TRACE=1 cargo test --release -p raft --test simulation -- --nocapture",
            seed = opts.seed,
            nodes = opts.nodes,
            steps = opts.steps
        )
    })
}

fn run_inner(opts: &SimOptions) -> Result<SimStats, String> {
    let mut rng = SimRng::new(opts.seed);
    let voters: Vec<ReplicaId> = (1..=opts.nodes).collect();
    // Vary batching and the pipelining window by seed, so flow control is exercised too.
    let cfg = NodeCfg {
        max_size_per_msg: [64, 256, 4096][rng.below(3) as usize],
        max_inflight: [1, 4, 64][rng.below(3) as usize],
        ..NodeCfg::default()
    };
    let mut c = Cluster::new(&voters, cfg, rng.next_u64());
    c.record = opts.trace;
    c.payload_size = 8 + rng.below(64) as usize;
    c.faults = Faults {
        drop: [0.0, 0.02, 0.1][rng.below(3) as usize],
        duplicate: [0.0, 0.02][rng.below(2) as usize],
        max_delay: rng.below(4),
        crash_mid_ready: 0.002,
    };
    let mut next_id = opts.nodes + 1;
    let mut stats = SimStats::default();

    for step in 0..opts.steps {
        c.now += 1;
        let action = pick_action(&mut rng);
        let outcome = act(&mut c, &mut rng, action, &mut next_id, &mut stats).and_then(|_| c.check_leaders());
        if opts.trace {
            for e in c.events.drain(..) {
                eprintln!("[{step:5}] {e}");
            }
        }
        outcome?;
    }

    // Heal: no more faults, every node back up; the group must converge.
    c.faults = Faults::default();
    c.heal();
    for id in c.nodes.keys().copied().collect::<Vec<_>>() {
        c.restart(id)?;
    }
    let mut converged = false;
    for round in 0..2_000 {
        for id in c.up_ids() {
            c.tick(id);
        }
        let outcome = c.stabilize();
        if opts.trace {
            for e in c.events.drain(..) {
                eprintln!("[heal {round:4}] {e}");
            }
        }
        outcome?;
        if is_converged(&c) {
            converged = true;
            break;
        }
    }
    if !converged {
        let state: Vec<String> = c
            .nodes
            .values()
            .filter_map(|n| n.raw.as_ref().map(|r| (n, r.status())))
            .map(|(n, s)| {
                format!(
                    "{}: {:?} term {} commit {} applied {} last {} voters {:?} learners {:?}",
                    n.id,
                    s.role,
                    s.term,
                    s.commit,
                    n.sm.applied,
                    s.last_index,
                    s.conf_state.voters,
                    s.conf_state.learners
                )
            })
            .collect();
        return Err(format!("liveness: no convergence after healing\n    {}", state.join("\n    ")));
    }
    stats.acked = c.acked.len() as u64;
    stats.applied = c.checker.max_applied();
    stats.reads = c.reads_done;
    stats.delivered = c.delivered;
    stats.dropped = c.dropped;
    Ok(stats)
}

/// A leader has committed an entry of its term and every member applied everything committed,
/// including every acknowledged proposal.
fn is_converged(c: &Cluster) -> bool {
    let Some(lid) = c.leader() else { return false };
    let leader = c.nodes[&lid].raw.as_ref().expect("leader is up");
    let status = leader.status();
    if leader.term_at(status.commit) != Some(status.term) {
        return false;
    }
    let members = status.conf_state.voters.iter().chain(status.conf_state.learners.iter());
    for id in members {
        let Some(node) = c.nodes.get(id) else { return false };
        if node.sm.applied != status.commit {
            return false;
        }
        let have: HashSet<u64> = node.sm.payloads.iter().copied().collect();
        if !c.acked.keys().all(|p| have.contains(p)) {
            return false;
        }
    }
    true
}

fn act(
    c: &mut Cluster,
    rng: &mut SimRng,
    action: Action,
    next_id: &mut ReplicaId,
    stats: &mut SimStats,
) -> Result<(), String> {
    let ids: Vec<ReplicaId> = c.nodes.keys().copied().collect();
    let up = c.up_ids();
    match action {
        Action::Deliver => {
            let due: Vec<usize> = (0..c.net.len()).filter(|&i| c.net[i].deliver_at <= c.now).collect();
            if let Some(&i) = rng.pick(&due) {
                let to = c.net[i].msg.to;
                c.deliver(i);
                if rng.chance(0.8) {
                    c.process_ready(to)?;
                }
            }
        }
        Action::Ready => {
            let ready: Vec<ReplicaId> = up.iter().copied().filter(|&id| c.has_ready(id)).collect();
            if let Some(&id) = rng.pick(&ready) {
                c.process_ready(id)?;
            }
        }
        Action::TickAll => {
            for id in up {
                c.tick(id);
            }
        }
        Action::TickOne => {
            if let Some(&id) = rng.pick(&up) {
                c.tick(id);
            }
        }
        Action::Propose => {
            // Mostly at the leader; sometimes anywhere, which must be refused politely.
            let target = if rng.chance(0.9) { c.leader() } else { rng.pick(&up).copied() };
            if let Some(id) = target {
                for _ in 0..=rng.below(4) {
                    c.propose(id);
                }
            }
        }
        Action::Read => {
            if let Some(&id) = rng.pick(&up) {
                c.read_index(id);
            }
        }
        Action::Crash => {
            if let Some(&id) = rng.pick(&up) {
                c.note(|| format!("{id} crashed"));
                c.crash(id);
                stats.crashes += 1;
            }
        }
        Action::Restart => {
            let down: Vec<ReplicaId> = ids.iter().copied().filter(|&id| !c.is_up(id)).collect();
            if let Some(&id) = rng.pick(&down) {
                c.restart(id)?;
            }
        }
        Action::Partition => {
            match rng.below(3) {
                0 => {
                    // Isolate the leader (or anyone).
                    if let Some(id) = c.leader().or_else(|| rng.pick(&ids).copied()) {
                        c.note(|| format!("isolate {id}"));
                        c.isolate(id);
                    }
                }
                1 => {
                    let (a, b): (Vec<ReplicaId>, Vec<ReplicaId>) = ids.iter().partition(|_| rng.chance(0.5));
                    c.note(|| format!("partition {a:?} / {b:?}"));
                    c.partition(&[a, b]);
                }
                _ => {
                    // Asymmetric: one direction of one link.
                    if let (Some(&x), Some(&y)) = (rng.pick(&ids), rng.pick(&ids)) {
                        if x != y {
                            c.note(|| format!("cut {x} -> {y}"));
                            c.cut(x, y);
                        }
                    }
                }
            }
        }
        Action::Heal => {
            c.note(|| "heal".into());
            c.heal();
        }
        Action::Compact => {
            if let Some(&id) = rng.pick(&up) {
                if c.compact(id)? {
                    stats.compactions += 1;
                }
            }
        }
        Action::ConfChange => {
            let Some(lid) = c.leader() else { return Ok(()) };
            let status = c.raw(lid).expect("up").status();
            let (voters, learners) = (status.conf_state.voters, status.conf_state.learners);
            let cc = if let Some(&l) = learners.first() {
                ConfChange::AddVoter(l)
            } else if voters.len() > 3 && rng.chance(0.7) || voters.len() >= 5 {
                ConfChange::RemoveNode(*rng.pick(&voters).expect("voters"))
            } else {
                ConfChange::AddLearner(*next_id)
            };
            if c.propose_conf_change(lid, cc).is_ok() {
                c.note(|| format!("{lid} proposed {cc:?}"));
                stats.conf_changes += 1;
                if let ConfChange::AddLearner(id) = cc {
                    c.add_node(id);
                    *next_id += 1;
                }
            }
        }
        Action::Transfer => {
            let Some(lid) = c.leader() else { return Ok(()) };
            let status = c.raw(lid).expect("up").status();
            if let Some(&to) = rng.pick(&status.conf_state.voters) {
                let raw = c.raw(lid).expect("up");
                if raw.role() == Role::Leader && raw.transfer_leader(to).is_ok() {
                    c.note(|| format!("{lid} transfers leadership to {to}"));
                }
            }
        }
    }
    Ok(())
}
