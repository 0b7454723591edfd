//! What a leader does with answers no correct follower sends: an acknowledgement of entries
//! beyond the leader's own log. Found by fuzzing the peer port: the leader took it as the
//! follower's match, its next entry to send lay past its log, and replication to that follower
//! stopped for good ("cannot read log to replicate").

use bytes::Bytes;
use raft::{Config, MemStorage, Message, MessageBody, RawNode, ReplicaId, Role};

struct Group {
    nodes: Vec<RawNode<MemStorage>>,
}

impl Group {
    fn new() -> Group {
        let nodes = (1..=3)
            .map(|id| RawNode::new(&Config::new(id), MemStorage::new_with_voters(&[1, 2, 3])).unwrap())
            .collect();
        Group { nodes }
    }

    fn node(&mut self, id: ReplicaId) -> &mut RawNode<MemStorage> {
        &mut self.nodes[id as usize - 1]
    }

    /// Handles Readies and delivers every message until all is quiet (bounded).
    fn settle(&mut self) {
        for _ in 0..100 {
            let mut wire: Vec<Message> = Vec::new();
            for raw in &mut self.nodes {
                if !raw.has_ready() {
                    continue;
                }
                let rd = raw.ready();
                wire.extend(rd.messages.iter().cloned());
                raw.storage_mut().append(&rd.entries).unwrap();
                if let Some(hs) = rd.hard_state {
                    raw.storage_mut().set_hard_state(hs);
                }
                wire.extend(rd.persisted_messages.iter().cloned());
                raw.advance(&rd);
            }
            if wire.is_empty() {
                return;
            }
            for m in wire {
                let to = m.to;
                self.node(to).step(m);
            }
        }
        panic!("the group did not settle");
    }
}

#[test]
fn an_acknowledgement_beyond_the_leaders_log_is_ignored() {
    for beyond in [1, 100, u64::MAX - 1, u64::MAX] {
        let mut g = Group::new();
        g.node(1).campaign();
        g.settle();
        assert_eq!(g.node(1).role(), Role::Leader);
        let status = g.node(1).status();
        let last = status.last_index;
        let index = last.saturating_add(beyond);
        let forged = MessageBody::AppendEntriesResponse { reject: false, index, reject_hint: 0, hint_term: 0 };
        g.node(1).step(Message { from: 2, to: 1, term: status.term, body: forged });
        g.settle();
        let matched = g.node(1).status().progress[&2].matched;
        assert!(
            matched <= last,
            "an answer for index {index} made follower 2's match {matched}, past the log's {last}"
        );
        // Replication to follower 2 goes on.
        let proposed = g.node(1).propose(Bytes::from_static(b"after")).unwrap();
        g.settle();
        assert_eq!(g.node(2).status().last_index, proposed, "follower 2 gets the next entry (forged index {index})");
        assert_eq!(g.node(1).status().commit, proposed);
    }
}
