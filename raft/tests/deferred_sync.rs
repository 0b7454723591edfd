//! A leader that syncs its log in the background (`advance_unsynced` / `on_synced`, Raft thesis
//! §10.2.1) commits on its followers' copies, and never counts its own unsynced copy.

use bytes::Bytes;
use raft::{Config, Index, MemStorage, Message, RawNode, ReplicaId, Role, Term};

struct Group {
    nodes: Vec<RawNode<MemStorage>>,
    /// Messages in flight.
    wire: Vec<Message>,
    /// Replica 1's entries written but not yet synced, as (index, term) of the last one.
    unsynced: Option<(Index, Term)>,
}

impl Group {
    fn new() -> Group {
        let nodes = (1..=3)
            .map(|id| RawNode::new(&Config::new(id), MemStorage::new_with_voters(&[1, 2, 3])).unwrap())
            .collect();
        Group { nodes, wire: Vec::new(), unsynced: None }
    }

    fn node(&mut self, id: ReplicaId) -> &mut RawNode<MemStorage> {
        &mut self.nodes[id as usize - 1]
    }

    /// Handles Readies and delivers messages (except to or from `cut`) until all is quiet.
    fn settle(&mut self, cut: Option<ReplicaId>) {
        for _ in 0..100 {
            let mut busy = false;
            for i in 0..self.nodes.len() {
                let id = i as ReplicaId + 1;
                let raw = &mut self.nodes[i];
                if !raw.has_ready() {
                    continue;
                }
                busy = true;
                let rd = raw.ready();
                self.wire.extend(rd.messages.iter().cloned());
                let deferred = id == 1 && raw.role() == Role::Leader && !rd.entries.is_empty();
                raw.storage_mut().append(&rd.entries).unwrap();
                if let Some(hs) = rd.hard_state {
                    raw.storage_mut().set_hard_state(hs);
                }
                self.wire.extend(rd.persisted_messages.iter().cloned());
                if deferred {
                    let last = rd.entries.last().unwrap();
                    self.unsynced = Some((last.index, last.term));
                    raw.advance_unsynced(&rd);
                } else {
                    raw.advance(&rd);
                }
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

    fn elect_1(&mut self) {
        self.node(1).campaign();
        self.settle(None);
        assert_eq!(self.node(1).role(), Role::Leader);
        // The leader's first entry of its term: let its own sync land too.
        if let Some((i, t)) = self.unsynced.take() {
            self.node(1).on_synced(i, t);
        }
        self.settle(None);
    }

    fn commit(&mut self, id: ReplicaId) -> Index {
        self.node(id).status().commit
    }
}

#[test]
fn a_leader_commits_on_its_followers_copies_before_its_own_sync() {
    let mut g = Group::new();
    g.elect_1();
    let index = g.node(1).propose(Bytes::from_static(b"x")).unwrap();
    g.settle(None);
    assert!(g.unsynced.is_some_and(|(i, _)| i == index), "the leader's copy is not synced");
    assert_eq!(g.commit(1), index, "both followers persisted it: committed without the leader's sync");
}

#[test]
fn a_leader_never_counts_its_unsynced_copy() {
    let mut g = Group::new();
    g.elect_1();
    let index = g.node(1).propose(Bytes::from_static(b"y")).unwrap();
    // Only follower 2 hears of it: the leader's copy would be the second one, but it is not
    // durable yet.
    g.settle(Some(3));
    assert!(g.commit(1) < index, "committed on one durable copy out of three");
    let (i, t) = g.unsynced.take().unwrap();
    g.node(1).on_synced(i, t);
    g.settle(Some(3));
    assert_eq!(g.commit(1), index, "the leader's sync makes the second copy");
}
