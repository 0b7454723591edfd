//! A plain group on a perfect in-memory network: no faults and no checks, only the core and
//! [`MemStorage`], as the core bench times it. A replica may sync its entries in the
//! background while it leads (`defer_sync`), as a real leader does (Raft thesis §10.2.1).

use raft::{Config, Index, MemStorage, Message, RawNode, Ready, ReplicaId, Role, Term};

use super::checker::Violation;
use super::ready::{handle_ready, ReadyApp};

pub struct Group {
    pub nodes: Vec<RawNode<MemStorage>>,
    /// Messages in flight.
    wire: Vec<Message>,
    /// Entries the first replica applied.
    pub applied: u64,
    /// The replica that leaves its sync to the background while it leads, if any.
    pub defer_sync: Option<ReplicaId>,
    /// That replica's entries written but not yet synced, as (index, term) of the last one.
    pub unsynced: Option<(Index, Term)>,
}

impl Group {
    /// Replicas 1..=n, every one a voter, with the default configuration.
    pub fn new(n: u64) -> Group {
        let voters: Vec<ReplicaId> = (1..=n).collect();
        let nodes = voters
            .iter()
            .map(|&id| RawNode::new(&Config::new(id), MemStorage::new_with_voters(&voters)).expect("valid config"))
            .collect();
        Group { nodes, wire: Vec::new(), applied: 0, defer_sync: None, unsynced: None }
    }

    pub fn node(&mut self, id: ReplicaId) -> &mut RawNode<MemStorage> {
        &mut self.nodes[id as usize - 1]
    }

    /// Handles Readies and delivers messages (except to or from `cut`) until all is quiet.
    pub fn settle(&mut self, cut: Option<ReplicaId>) {
        for _ in 0..100_000 {
            let mut busy = false;
            for id in 1..=self.nodes.len() as ReplicaId {
                busy |= handle_ready(self, id).expect("a plain group checks nothing");
            }
            for m in std::mem::take(&mut self.wire) {
                if cut.is_some_and(|c| m.to == c || m.from == c) {
                    continue;
                }
                busy = true;
                let to = m.to;
                self.node(to).step(m);
            }
            if !busy {
                return;
            }
        }
        panic!("the group did not settle");
    }
}

impl ReadyApp for Group {
    fn raw(&mut self, id: ReplicaId) -> &mut RawNode<MemStorage> {
        self.node(id)
    }

    fn send(&mut self, _id: ReplicaId, msgs: Vec<Message>) {
        self.wire.extend(msgs);
    }

    fn persist(&mut self, id: ReplicaId, rd: &Ready) -> Result<bool, Violation> {
        let raw = self.node(id);
        raw.storage_mut().append(&rd.entries).map_err(|e| e.to_string())?;
        if let Some(hs) = rd.hard_state {
            raw.storage_mut().set_hard_state(hs);
        }
        Ok(true)
    }

    fn apply(&mut self, id: ReplicaId, rd: &Ready) -> Result<(), Violation> {
        if id == 1 {
            self.applied += rd.committed_entries.len() as u64;
        }
        Ok(())
    }

    fn sync_deferred(&mut self, id: ReplicaId, rd: &Ready) -> bool {
        let deferred = self.defer_sync == Some(id) && self.node(id).role() == Role::Leader && !rd.entries.is_empty();
        if deferred {
            let last = rd.entries.last().expect("not empty");
            self.unsynced = Some((last.index, last.term));
        }
        deferred
    }
}
