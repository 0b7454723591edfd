//! Scenario transcripts: a script of commands run against a [`Cluster`] on a perfect network,
//! each followed by what happened, compared with the expected text (`testdata/*.txt`).
//! `REWRITE=1` regenerates the expected text; review the diff before committing it.
//!
//! ```text
//! # comment
//! command args
//! ----
//! output
//! ```

use raft::{ConfChange, Role};

use super::cluster::{describe_entry, Cluster, NodeCfg};

/// Runs the script at `path`; panics with a diff-like message on the first mismatch.
pub fn run_file(path: &str) {
    let mut cluster: Option<Cluster> = None;
    raft::transcript::run_file(path, |command| run_command(&mut cluster, command));
}

fn ids(args: &[&str]) -> Vec<u64> {
    args.iter().filter_map(|a| a.parse().ok()).collect()
}

fn run_command(cluster: &mut Option<Cluster>, command: &str) -> String {
    let words: Vec<&str> = command.split_whitespace().collect();
    let (cmd, args) = (words[0], &words[1..]);
    if cmd == "cluster" {
        let cfg = NodeCfg {
            pre_vote: !args.contains(&"prevote=off"),
            check_quorum: !args.contains(&"checkquorum=off"),
            // `maxsize=1`: one entry per AppendEntries, to show replication step by step.
            max_size_per_msg: if args.contains(&"maxsize=1") { 1 } else { 1 << 20 },
            ..NodeCfg::default()
        };
        let mut c = Cluster::new(&ids(args), cfg, 1);
        c.record = true;
        let out = status(&c) + "\n";
        *cluster = Some(c);
        return out;
    }
    let c = cluster.as_mut().expect("a `cluster` command comes first");
    let n = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok()).expect("node id");
    let count = |i: usize| args.get(i).and_then(|a| a.parse::<u64>().ok()).unwrap_or(1);
    let mut out: Vec<String> = Vec::new();
    let verbose = args.contains(&"verbose");
    match cmd {
        "campaign" => c.raw(n(0)).expect("up").campaign(),
        "tick" => {
            for _ in 0..count(1) {
                c.tick(n(0));
            }
        }
        "tick-all" => {
            for _ in 0..count(0) {
                for id in c.up_ids() {
                    c.tick(id);
                }
            }
        }
        "propose" => match c.propose_data(n(0), bytes::Bytes::from(args[1].to_string())) {
            Ok(i) => out.push(format!("proposed at index {i}")),
            Err(e) => out.push(format!("error: {e}")),
        },
        "conf" => {
            let target = n(2);
            let cc = match args[1] {
                "add-learner" => ConfChange::AddLearner(target),
                "add-voter" => ConfChange::AddVoter(target),
                "remove" => ConfChange::RemoveNode(target),
                other => panic!("unknown conf change {other}"),
            };
            match c.propose_conf_change(n(0), cc) {
                Ok(i) => out.push(format!("proposed {cc:?} at index {i}")),
                Err(e) => out.push(format!("error: {e}")),
            }
        }
        "add-node" => c.add_node(n(0)),
        "transfer" => match c.raw(n(0)).expect("up").transfer_leader(n(1)) {
            Ok(()) => {}
            Err(e) => out.push(format!("error: {e}")),
        },
        "read-index" => {
            if !c.read_index(n(0)) {
                out.push("error: refused".into());
            }
        }
        // `run N`: N rounds of one tick on every live node followed by stabilize.
        "run" => {
            for _ in 0..count(0) {
                for id in c.up_ids() {
                    c.tick(id);
                }
                if let Err(v) = c.stabilize() {
                    out.push(format!("VIOLATION: {v}"));
                    break;
                }
            }
        }
        // `process N…`: run the listed nodes' Ready once (persist, send, apply).
        "process" => {
            for id in ids(args) {
                if let Err(v) = c.process_ready(id) {
                    out.push(format!("VIOLATION: {v}"));
                }
            }
        }
        // `deliver`: deliver every message now in flight, once, without running Readies.
        "deliver" => {
            let n = c.net.len();
            for _ in 0..n {
                c.deliver(0);
            }
            if let Err(v) = c.check_leaders() {
                out.push(format!("VIOLATION: {v}"));
            }
        }
        "stabilize" => {
            if let Err(v) = c.stabilize() {
                out.push(format!("VIOLATION: {v}"));
            }
        }
        // `crash-in-ready N W`: run node N's Ready, but crash once the first W of its writes
        // are on disk (a snapshot is the first write, then one per entry).
        "crash-in-ready" => {
            if let Err(v) = c.process_ready_crashing(n(0), Some(count(1) as usize)) {
                out.push(format!("VIOLATION: {v}"));
            }
        }
        "isolate" => c.isolate(n(0)),
        "heal" => c.heal(),
        "partition" => {
            let groups: Vec<Vec<u64>> = command["partition".len()..]
                .split('/')
                .map(|g| ids(&g.split_whitespace().collect::<Vec<_>>()))
                .collect();
            c.partition(&groups);
        }
        "crash" => c.crash(n(0)),
        "restart" => {
            if let Err(v) = c.restart(n(0)) {
                out.push(format!("VIOLATION: {v}"));
            }
        }
        "compact" => match c.compact(n(0)) {
            Ok(true) => {
                let first = c.raw(n(0)).map(|r| raft::Storage::first_index(r.storage())).unwrap_or(0);
                out.push(format!("log now starts at {first}"));
            }
            Ok(false) => out.push("nothing to compact".into()),
            Err(v) => out.push(format!("VIOLATION: {v}")),
        },
        "status" => {}
        "log" => {
            let raw = c.raw(n(0)).expect("up");
            let ents: Vec<String> = raft::MemStorage::all_entries(raw.storage()).iter().map(describe_entry).collect();
            let first = raft::Storage::first_index(raw.storage());
            out.push(format!("{}: first={first} [{}]", n(0), ents.join(" ")));
            return out.join("\n") + "\n";
        }
        other => panic!("unknown command {other}"),
    }
    let events: Vec<String> = std::mem::take(&mut c.events)
        .into_iter()
        .filter(|e| {
            verbose
                || e.contains(" is ")
                || e.starts_with("dropped")
                || e.contains("restarted")
                || e.contains("crashed")
                || e.contains("serves read")
        })
        .collect();
    out.splice(0..0, events);
    if ["stabilize", "status", "restart", "run"].contains(&cmd) {
        out.push(status(c));
    }
    let mut s = out.join("\n");
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    if s.is_empty() {
        s = "ok\n".into();
    }
    s
}

fn status(c: &Cluster) -> String {
    let mut lines = Vec::new();
    for node in c.nodes.values() {
        let Some(raw) = node.raw.as_ref() else {
            lines.push(format!("{}: down", node.id));
            continue;
        };
        let s = raw.status();
        let role = match s.role {
            Role::Leader => "Leader",
            Role::Follower => "Follower",
            Role::Candidate => "Candidate",
            Role::PreCandidate => "PreCandidate",
        };
        let learners = if s.conf_state.learners.is_empty() {
            String::new()
        } else {
            format!(" learners={:?}", s.conf_state.learners)
        };
        lines.push(format!(
            "{}: {role} term={} commit={} applied={} last={} voters={:?}{learners}",
            node.id, s.term, s.commit, node.sm.applied, s.last_index, s.conf_state.voters
        ));
    }
    lines.join("\n")
}
