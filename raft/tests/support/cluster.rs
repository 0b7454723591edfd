//! A Raft group in one process: nodes over [`MemStorage`] "disks", a network of in-flight
//! messages with faults, and the application loop each node runs on its [`Ready`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use raft::{
    ConfChange, Config, Entry, EntryKind, Index, MemStorage, Message, MessageBody, RawNode, Ready, ReplicaId, Role,
    SoftState, Storage, Term,
};

use super::checker::{Checker, Violation};
use super::ready::{handle_ready, ReadyApp};
use super::rng::SimRng;
use super::state_machine::{payload, payload_id, StateMachine};

/// Timing and batching of every node.
#[derive(Clone, Debug)]
pub struct NodeCfg {
    pub election_tick: u64,
    pub heartbeat_tick: u64,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub max_size_per_msg: usize,
    pub max_inflight: usize,
}

impl Default for NodeCfg {
    fn default() -> NodeCfg {
        NodeCfg {
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            max_size_per_msg: 1 << 20,
            max_inflight: 256,
        }
    }
}

/// What the network does to messages. All zero: a perfect FIFO network.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    /// Messages are delivered after 0..=max_delay steps (and in random order by the simulator).
    pub max_delay: u64,
    /// Chance that a node crashes in the middle of handling a Ready, after sending its
    /// leader messages and persisting only a prefix of its entries.
    pub crash_mid_ready: f64,
}

pub struct SimNode {
    pub id: ReplicaId,
    /// `None` while crashed.
    pub raw: Option<RawNode<MemStorage>>,
    /// What survives a crash (valid while crashed).
    pub disk: MemStorage,
    pub sm: StateMachine,
}

pub struct Envelope {
    pub msg: Message,
    pub deliver_at: u64,
}

pub struct Cluster {
    pub nodes: BTreeMap<ReplicaId, SimNode>,
    pub net: Vec<Envelope>,
    /// Directed links that drop everything.
    pub blocked: BTreeSet<(ReplicaId, ReplicaId)>,
    pub checker: Checker,
    pub now: u64,
    pub rng: SimRng,
    pub faults: Faults,
    pub cfg: NodeCfg,
    pub seed: u64,
    /// Proposals not yet acknowledged: payload id -> (proposer, index, term).
    pub pending: HashMap<u64, (ReplicaId, Index, Term)>,
    /// Proposals the proposer applied, i.e. a client got a success reply: payload id -> index.
    pub acked: BTreeMap<u64, Index>,
    pub next_payload: u64,
    pub payload_size: usize,
    /// Outstanding reads: context -> (node, the highest index applied anywhere when asked).
    pub reads: HashMap<Bytes, (ReplicaId, Index)>,
    pub reads_done: u64,
    /// Human-readable events, collected when `record` is set.
    pub record: bool,
    pub events: Vec<String>,
    pub delivered: u64,
    pub dropped: u64,
}

impl Cluster {
    pub fn new(voters: &[ReplicaId], cfg: NodeCfg, seed: u64) -> Cluster {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            net: Vec::new(),
            blocked: BTreeSet::new(),
            checker: Checker::default(),
            now: 0,
            rng: SimRng::new(seed),
            faults: Faults::default(),
            cfg,
            seed,
            pending: HashMap::new(),
            acked: BTreeMap::new(),
            next_payload: 1,
            payload_size: 8,
            reads: HashMap::new(),
            reads_done: 0,
            record: false,
            events: Vec::new(),
            delivered: 0,
            dropped: 0,
        };
        for &id in voters {
            c.start_node(id, MemStorage::new_with_voters(voters));
        }
        c
    }

    fn config(&self, id: ReplicaId, applied: Index) -> Config {
        Config {
            id,
            election_tick: self.cfg.election_tick,
            heartbeat_tick: self.cfg.heartbeat_tick,
            max_size_per_msg: self.cfg.max_size_per_msg,
            max_inflight_msgs: self.cfg.max_inflight,
            pre_vote: self.cfg.pre_vote,
            check_quorum: self.cfg.check_quorum,
            applied,
            seed: self.seed.wrapping_mul(31).wrapping_add(id),
        }
    }

    fn start_node(&mut self, id: ReplicaId, disk: MemStorage) {
        let raw = RawNode::new(&self.config(id, 0), disk.clone()).expect("valid config");
        self.nodes.insert(id, SimNode { id, raw: Some(raw), disk, sm: StateMachine::default() });
    }

    /// Starts a new, empty node that will learn the log once the leader adds it.
    pub fn add_node(&mut self, id: ReplicaId) {
        self.start_node(id, MemStorage::default());
    }

    pub fn note(&mut self, event: impl FnOnce() -> String) {
        if self.record {
            self.events.push(event());
        }
    }

    pub fn is_up(&self, id: ReplicaId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.raw.is_some())
    }

    pub fn raw(&mut self, id: ReplicaId) -> Option<&mut RawNode<MemStorage>> {
        self.nodes.get_mut(&id).and_then(|n| n.raw.as_mut())
    }

    pub fn up_ids(&self) -> Vec<ReplicaId> {
        self.nodes.values().filter(|n| n.raw.is_some()).map(|n| n.id).collect()
    }

    /// The live leader with the highest term, if any.
    pub fn leader(&self) -> Option<ReplicaId> {
        self.nodes
            .values()
            .filter_map(|n| n.raw.as_ref().map(|r| (n.id, r)))
            .filter(|(_, r)| r.role() == Role::Leader)
            .max_by_key(|(_, r)| r.term())
            .map(|(id, _)| id)
    }

    // ---- network -------------------------------------------------------------------------

    fn route(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            if self.faults.drop > 0.0 && self.rng.chance(self.faults.drop) {
                self.dropped += 1;
                self.note(|| format!("lost {}", describe(&m)));
                self.report_if_snapshot(&m, false);
                continue;
            }
            let copies = if self.faults.duplicate > 0.0 && self.rng.chance(self.faults.duplicate) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = if self.faults.max_delay > 0 { self.rng.below(self.faults.max_delay + 1) } else { 0 };
                self.net.push(Envelope { msg: m.clone(), deliver_at: self.now + delay });
            }
        }
    }

    fn report_if_snapshot(&mut self, m: &Message, success: bool) {
        if let MessageBody::InstallSnapshot { .. } = m.body {
            if let Some(r) = self.raw(m.from) {
                r.report_snapshot(m.to, success);
            }
        }
    }

    /// Delivers (or drops, if the link is cut or the receiver is down) the message at `i`.
    pub fn deliver(&mut self, i: usize) {
        let env = self.net.remove(i);
        let m = env.msg;
        let (from, to) = (m.from, m.to);
        if self.blocked.contains(&(from, to)) || !self.is_up(to) {
            self.dropped += 1;
            self.note(|| format!("dropped {}", describe(&m)));
            self.report_if_snapshot(&m, false);
            return;
        }
        self.delivered += 1;
        self.note(|| describe(&m));
        let snap = matches!(m.body, MessageBody::InstallSnapshot { .. });
        let probe = snap.then(|| m.clone());
        if let Some(r) = self.raw(to) {
            r.step(m);
        }
        if let Some(p) = probe {
            self.report_if_snapshot(&p, true);
        }
    }

    pub fn cut(&mut self, from: ReplicaId, to: ReplicaId) {
        self.blocked.insert((from, to));
    }

    pub fn isolate(&mut self, id: ReplicaId) {
        let ids: Vec<ReplicaId> = self.nodes.keys().copied().collect();
        for other in ids.into_iter().filter(|&o| o != id) {
            self.cut(id, other);
            self.cut(other, id);
        }
    }

    pub fn partition(&mut self, groups: &[Vec<ReplicaId>]) {
        self.blocked.clear();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i != j {
                    for &x in a {
                        for &y in b {
                            self.cut(x, y);
                        }
                    }
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }

    // ---- the application loop ------------------------------------------------------------

    /// Runs one Ready of node `id` the way a replica does: send the leader's messages, persist,
    /// send the rest, apply, advance. With probability `faults.crash_mid_ready` the node
    /// crashes part-way through persisting instead.
    pub fn process_ready(&mut self, id: ReplicaId) -> Result<(), Violation> {
        self.process_ready_crashing(id, None)
    }

    /// As [`Cluster::process_ready`]; `crash_after: Some(w)` crashes the node once the first
    /// `w` writes of its Ready are on disk (the snapshot, if any, is the first write, then one
    /// per entry), `None` lets `faults.crash_mid_ready` decide.
    pub fn process_ready_crashing(&mut self, id: ReplicaId, crash_after: Option<usize>) -> Result<(), Violation> {
        if !self.has_ready(id) {
            return Ok(());
        }
        handle_ready(&mut SimReady { cluster: self, crash_after }, id).map(|_| ())
    }

    /// Election safety and leader completeness for every node that is leader now.
    pub fn check_leaders(&mut self) -> Result<(), Violation> {
        for node in self.nodes.values() {
            let Some(raw) = node.raw.as_ref() else { continue };
            if raw.role() != Role::Leader {
                continue;
            }
            let first = raw.storage().first_index();
            let has = |i: Index, t: Term| i < first || raw.term_at(i) == Some(t);
            self.checker.on_leader(node.id, raw.term(), has)?;
        }
        Ok(())
    }

    // ---- client and operator actions ------------------------------------------------------

    /// Proposes a fresh payload at `id`; returns its id if the node accepted it.
    pub fn propose(&mut self, id: ReplicaId) -> Option<u64> {
        let pid = self.next_payload;
        let data = payload(pid, self.payload_size);
        let raw = self.raw(id)?;
        let term = raw.term();
        let index = raw.propose(data).ok()?;
        self.next_payload += 1;
        self.pending.insert(pid, (id, index, term));
        Some(pid)
    }

    pub fn propose_data(&mut self, id: ReplicaId, data: Bytes) -> Result<Index, raft::Error> {
        match self.raw(id) {
            Some(r) => r.propose(data),
            None => Err(raft::Error::NotLeader { leader: 0 }),
        }
    }

    pub fn propose_conf_change(&mut self, id: ReplicaId, cc: ConfChange) -> Result<Index, raft::Error> {
        match self.raw(id) {
            Some(r) => r.propose_conf_change(cc),
            None => Err(raft::Error::NotLeader { leader: 0 }),
        }
    }

    pub fn read_index(&mut self, id: ReplicaId) -> bool {
        let ctx = Bytes::from(format!("read-{}-{}", id, self.next_payload));
        self.next_payload += 1;
        let floor = self.checker.max_applied();
        let Some(raw) = self.raw(id) else { return false };
        if raw.read_index(ctx.clone()).is_ok() {
            self.reads.insert(ctx, (id, floor));
            return true;
        }
        false
    }

    pub fn tick(&mut self, id: ReplicaId) {
        if let Some(r) = self.raw(id) {
            r.tick();
        }
    }

    /// The node stops; everything not on its disk is lost.
    pub fn crash(&mut self, id: ReplicaId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if let Some(raw) = node.raw.take() {
            node.disk = raw.storage().clone();
            node.sm = StateMachine::default();
        }
        self.reads.retain(|_, (asker, _)| *asker != id);
    }

    /// The node starts again from its disk: latest snapshot plus the log after it.
    pub fn restart(&mut self, id: ReplicaId) -> Result<(), Violation> {
        let cfg_applied;
        {
            let Some(node) = self.nodes.get(&id) else { return Ok(()) };
            if node.raw.is_some() {
                return Ok(());
            }
            cfg_applied = node.disk.first_index() - 1;
        }
        let cfg = self.config(id, cfg_applied);
        let node = self.nodes.get_mut(&id).expect("present");
        let snap = node.disk.snapshot().map_err(|e| e.to_string())?;
        node.sm = if snap.is_empty() { StateMachine::default() } else { StateMachine::restore(&snap.data) };
        if !snap.is_empty() {
            self.checker.on_snapshot_restore(id, snap.meta.index, node.sm.chain)?;
        }
        let raw = RawNode::new(&cfg, node.disk.clone()).map_err(|e| format!("restart {id}: {e}"))?;
        node.raw = Some(raw);
        self.note(|| format!("{id} restarted"));
        Ok(())
    }

    /// The node snapshots its state machine and drops the log it covers.
    pub fn compact(&mut self, id: ReplicaId) -> Result<bool, Violation> {
        let Some(node) = self.nodes.get_mut(&id) else { return Ok(false) };
        let Some(raw) = node.raw.as_mut() else { return Ok(false) };
        let index = node.sm.applied;
        if index < raw.storage().first_index() {
            return Ok(false);
        }
        let Some(conf) = raw.conf_state_at(index) else { return Ok(false) };
        let data = node.sm.snapshot();
        raw.storage_mut().compact(index, conf, data).map_err(|e| format!("compact {id}: {e}"))?;
        Ok(true)
    }

    pub fn has_ready(&self, id: ReplicaId) -> bool {
        self.nodes.get(&id).and_then(|n| n.raw.as_ref()).is_some_and(|r| r.has_ready())
    }

    /// Delivers everything and runs every Ready until nothing moves (bounded).
    pub fn stabilize(&mut self) -> Result<(), Violation> {
        for _ in 0..100_000 {
            let ids: Vec<ReplicaId> = self.nodes.keys().copied().collect();
            let mut moved = false;
            for id in ids {
                if self.has_ready(id) {
                    self.process_ready(id)?;
                    moved = true;
                }
            }
            self.check_leaders()?;
            if self.net.is_empty() && !moved {
                return Ok(());
            }
            let n = self.net.len();
            for _ in 0..n {
                self.deliver(0);
            }
        }
        Err("stabilize: the cluster did not quiesce".into())
    }
}

/// The simulator's way through a Ready: messages into the faulty network, writes that a crash
/// may cut short, and the checker told of every write and every applied entry.
struct SimReady<'a> {
    cluster: &'a mut Cluster,
    crash_after: Option<usize>,
}

impl ReadyApp for SimReady<'_> {
    fn raw(&mut self, id: ReplicaId) -> &mut RawNode<MemStorage> {
        self.cluster.nodes.get_mut(&id).and_then(|n| n.raw.as_mut()).expect("up")
    }

    fn role_changed(&mut self, id: ReplicaId, ss: SoftState, term: Term) {
        self.cluster.note(|| format!("{id} is {:?} (term {term}, leader {})", ss.role, ss.leader_id));
    }

    fn send(&mut self, _id: ReplicaId, msgs: Vec<Message>) {
        self.cluster.route(msgs);
    }

    fn persist(&mut self, id: ReplicaId, rd: &Ready) -> Result<bool, Violation> {
        let c = &mut *self.cluster;
        // The writes happen in Ready order, the snapshot before the entries that follow it; a
        // crash keeps a prefix of them, never entries without the snapshot they extend.
        let snap_writes = usize::from(rd.snapshot.is_some());
        let writes = snap_writes + rd.entries.len();
        let crash_after = self.crash_after.map(|w| w.min(writes)).or_else(|| {
            let crash = c.faults.crash_mid_ready > 0.0 && c.rng.chance(c.faults.crash_mid_ready);
            crash.then(|| c.rng.below(writes as u64 + 1) as usize)
        });
        let crash = crash_after.is_some();
        let done = crash_after.unwrap_or(writes);
        let keep = done - snap_writes.min(done);
        let node = c.nodes.get_mut(&id).expect("present");
        let raw = node.raw.as_mut().expect("up");
        if let Some(snap) = rd.snapshot.as_ref().filter(|_| done > 0) {
            raw.storage_mut().apply_snapshot(snap.clone()).map_err(|e| format!("node {id}: {e}"))?;
            node.sm = StateMachine::restore(&snap.data);
            c.checker.on_snapshot_restore(id, snap.meta.index, node.sm.chain)?;
        }
        let entries = &rd.entries[..keep];
        if let Some(first) = entries.first() {
            let prev_term = raw.storage().term(first.index - 1).unwrap_or(Term::MAX);
            raw.storage_mut().append(entries).map_err(|e| format!("node {id}: {e}"))?;
            c.checker.on_persist(id, entries, prev_term)?;
        }
        if crash {
            let snap = if done > 0 && snap_writes == 1 { "snapshot and " } else { "" };
            c.note(|| format!("{id} crashed while persisting ({snap}{keep} of {} entries written)", rd.entries.len()));
            c.crash(id);
            return Ok(false);
        }
        if let Some(hs) = rd.hard_state {
            raw.storage_mut().set_hard_state(hs);
            c.checker.on_hard_state(id, &hs)?;
        }
        Ok(true)
    }

    fn apply(&mut self, id: ReplicaId, rd: &Ready) -> Result<(), Violation> {
        let c = &mut *self.cluster;
        let node = c.nodes.get_mut(&id).expect("present");
        let term = node.raw.as_ref().expect("up").term();
        for e in &rd.committed_entries {
            let prev = node.sm.applied;
            node.sm.apply(e);
            c.checker.on_apply(id, term, prev, e, node.sm.chain)?;
            if let Some(pid) = payload_id(e) {
                if c.pending.get(&pid) == Some(&(id, e.index, e.term)) {
                    c.pending.remove(&pid);
                    c.acked.insert(pid, e.index);
                }
            }
        }
        for rs in &rd.read_states {
            c.note(|| format!("{id} serves read{} at index {}", ctx(&rs.context), rs.index));
            if let Some((asker, floor)) = c.reads.remove(&rs.context) {
                if asker != id {
                    return Err(format!("read index: node {id} got node {asker}'s read state"));
                }
                if rs.index < floor {
                    return Err(format!(
                        "linearizability: read index {} at node {id} is below index {floor} applied before the read",
                        rs.index
                    ));
                }
                c.reads_done += 1;
            }
        }
        Ok(())
    }
}

/// One line per message, as transcripts show them.
pub fn describe(m: &Message) -> String {
    let head = format!("{}->{} {} t{}", m.from, m.to, m.kind_name(), m.term);
    match &m.body {
        MessageBody::RequestVote { last_log_index, last_log_term, leader_transfer, .. } => {
            let t = if *leader_transfer { " transfer" } else { "" };
            format!("{head} last={last_log_index}/{last_log_term}{t}")
        }
        MessageBody::RequestVoteResponse { reject, .. } => {
            format!("{head} {}", if *reject { "rejected" } else { "granted" })
        }
        MessageBody::AppendEntries { prev_log_index, prev_log_term, entries, commit } => {
            let ents: Vec<String> = entries.iter().map(describe_entry).collect();
            format!("{head} prev={prev_log_index}/{prev_log_term} commit={commit} [{}]", ents.join(" "))
        }
        MessageBody::AppendEntriesResponse { reject: false, index, .. } => format!("{head} index={index}"),
        MessageBody::AppendEntriesResponse { index, reject_hint, hint_term, .. } => {
            format!("{head} rejected={index} hint={reject_hint}/{hint_term}")
        }
        MessageBody::Heartbeat { commit, read_context } => {
            format!("{head} commit={commit}{}", ctx(read_context))
        }
        MessageBody::HeartbeatResponse { read_context } => format!("{head}{}", ctx(read_context)),
        MessageBody::InstallSnapshot { snapshot } => {
            let meta = &snapshot.meta;
            format!("{head} index={}/{} voters={:?}", meta.index, meta.term, meta.conf_state.voters)
        }
        MessageBody::TimeoutNow => head,
        MessageBody::ReadIndexRequest { context } => format!("{head}{}", ctx(context)),
        MessageBody::ReadIndexResponse { context, index } => format!("{head} index={index}{}", ctx(context)),
    }
}

fn ctx(c: &Bytes) -> String {
    if c.is_empty() {
        String::new()
    } else {
        format!(" ctx={}", String::from_utf8_lossy(c))
    }
}

pub fn describe_entry(e: &Entry) -> String {
    let id = format!("{}/{}", e.index, e.term);
    match e.kind {
        EntryKind::ConfChange => match ConfChange::decode(&e.data) {
            Some(cc) => format!("{id}:{cc:?}"),
            None => format!("{id}:conf?"),
        },
        EntryKind::Normal if e.data.is_empty() => id,
        EntryKind::Normal => match std::str::from_utf8(&e.data) {
            Ok(s) if s.len() <= 16 && s.chars().all(|c| c.is_ascii_graphic()) => format!("{id}:{s}"),
            _ => format!("{id}:#{}", payload_id(e).unwrap_or(0)),
        },
    }
}
