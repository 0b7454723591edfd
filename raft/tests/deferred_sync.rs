//! A leader that syncs its log in the background (`advance_unsynced` / `on_synced`, Raft thesis
//! §10.2.1) commits on its followers' copies, and never counts its own unsynced copy.

mod support;

use bytes::Bytes;
use raft::{Index, ReplicaId, Role};
use support::group::Group;

/// Replica 1 leads and leaves its syncs to the background.
fn group() -> Group {
    let mut g = Group::new(3);
    g.defer_sync = Some(1);
    g.node(1).campaign();
    g.settle(None);
    assert_eq!(g.node(1).role(), Role::Leader);
    // The leader's first entry of its term: let its own sync land too.
    if let Some((i, t)) = g.unsynced.take() {
        g.node(1).on_synced(i, t);
    }
    g.settle(None);
    g
}

fn commit(g: &mut Group, id: ReplicaId) -> Index {
    g.node(id).status().commit
}

#[test]
fn a_leader_commits_on_its_followers_copies_before_its_own_sync() {
    let mut g = group();
    let index = g.node(1).propose(Bytes::from_static(b"x")).unwrap();
    g.settle(None);
    assert!(g.unsynced.is_some_and(|(i, _)| i == index), "the leader's copy is not synced");
    assert_eq!(commit(&mut g, 1), index, "both followers persisted it: committed without the leader's sync");
}

#[test]
fn a_leader_never_counts_its_unsynced_copy() {
    let mut g = group();
    let index = g.node(1).propose(Bytes::from_static(b"y")).unwrap();
    // Only follower 2 hears of it: the leader's copy would be the second one, but it is not
    // durable yet.
    g.settle(Some(3));
    assert!(commit(&mut g, 1) < index, "committed on one durable copy out of three");
    let (i, t) = g.unsynced.take().unwrap();
    g.node(1).on_synced(i, t);
    g.settle(Some(3));
    assert_eq!(commit(&mut g, 1), index, "the leader's sync makes the second copy");
}
