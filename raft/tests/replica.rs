//! The replica shell ([`raft::Replica`]) on its own: a one-replica group on a real disk.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use raft::{DiskOptions, FsyncPolicy, Replica, ReplicaError, ReplicaOptions, Role, StateMachine};

/// Counts applied entries and answers each with its index.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    fn apply(&mut self, index: u64, _data: &[u8], _answer: bool) -> Result<Bytes, String> {
        self.0 += 1;
        Ok(Bytes::from(index.to_string()))
    }
    fn snapshot(&self) -> raft::SnapshotEncoder {
        let n = self.0;
        Box::new(move || Bytes::from(n.to_string()))
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.0 = std::str::from_utf8(data).map_err(|e| e.to_string())?.parse().map_err(|e| format!("{e}"))?;
        Ok(())
    }
}

/// A one-replica group's settings, on a free loopback port, its data in `dir`.
fn lone_replica(dir: &std::path::Path, snapshot_entries: u64) -> ReplicaOptions {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    ReplicaOptions {
        id: 1,
        cell: 1,
        join: false,
        peers: BTreeMap::from([(1, format!("127.0.0.1:{port}"))]),
        data_dir: dir.to_path_buf(),
        disk: DiskOptions { fsync: FsyncPolicy::No, ..DiskOptions::default() },
        tick: Duration::from_millis(10),
        election_tick: 10,
        heartbeat_tick: 2,
        snapshot_entries,
        slow_disk: Duration::ZERO,
        tls: None,
        dial_via: BTreeMap::new(),
    }
}

#[test]
fn a_proposal_bound_to_a_term_lands_only_in_that_term() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let node = Replica::start(lone_replica(dir.path(), 1000), Counter::default(), rt.handle().clone()).unwrap();
    let handle = node.handle();
    rt.block_on(async {
        let mut watch = handle.leadership();
        let term = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let l = *watch.borrow_and_update();
                if l.role == Some(Role::Leader) {
                    return l.term;
                }
                watch.changed().await.unwrap();
            }
        })
        .await
        .expect("a lone replica elects itself");
        handle.propose_in_term(Bytes::from_static(b"now"), term).await.expect("proposed in its own term");
        assert_eq!(
            handle.propose_in_term(Bytes::from_static(b"old"), term - 1).await,
            Err(ReplicaError::Dropped),
            "an entry bound to an earlier term is refused"
        );
        assert_eq!(handle.propose_in_term(Bytes::from_static(b"later"), term + 1).await, Err(ReplicaError::Dropped));
        handle.propose(Bytes::from_static(b"any")).await.expect("an unbound proposal lands");
    });
    node.stop().unwrap();
}

#[test]
fn a_leader_that_steps_down_tells_its_waiting_proposers_the_outcome_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Half a second without a quorum before the leader steps down: the proposal below reaches
    // it well before that.
    let (nodes, incoming) = three_replicas(dir.path(), &rt, FsyncPolicy::No, 50, Duration::ZERO);
    let mut nodes: Vec<Option<Replica<Counter>>> = nodes.into_iter().map(Some).collect();
    let handles: Vec<_> = nodes.iter().map(|n| n.as_ref().unwrap().handle()).collect();
    let leader = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                for h in &handles {
                    if h.leadership().borrow().role == Some(Role::Leader) {
                        // A first write commits: the group works.
                        if h.propose(Bytes::from_static(b"first")).await.is_ok() {
                            return h.id();
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the group elects a leader that commits")
    });
    // Both followers stop: the leader's next entry cannot commit, and check-quorum makes it
    // step down. Without an answer, its proposer would wait until some later leader's log
    // reached that index, which, with nobody writing, is never.
    for (i, n) in nodes.iter_mut().enumerate() {
        if i as u64 + 1 != leader {
            n.take().unwrap().stop().unwrap();
        }
    }
    let h = handles[leader as usize - 1].clone();
    let answer = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), h.propose(Bytes::from_static(b"stranded"))).await
    });
    assert_eq!(answer, Ok(Err(ReplicaError::Unknown)), "the stranded proposal is answered once the leader steps down");
    assert_ne!(h.leadership().borrow().role, Some(Role::Leader));
    for n in nodes.into_iter().flatten() {
        n.stop().unwrap();
    }
    drop(incoming);
}

/// A three-replica group on loopback, each replica's data in `dir/<id>`, every sync of its
/// log on the sync thread taking `slow_disk` longer. With the listeners'
/// accept streams, which must live as long as the nodes.
#[allow(clippy::type_complexity)]
fn three_replicas(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    fsync: FsyncPolicy,
    election_tick: u64,
    slow_disk: Duration,
) -> (Vec<Replica<Counter>>, Vec<impl Send>) {
    let listeners: Vec<std::net::TcpListener> =
        (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let peers: BTreeMap<u64, String> =
        listeners.iter().enumerate().map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string())).collect();
    let mut nodes = Vec::new();
    let mut incoming = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let opts = ReplicaOptions {
            id,
            cell: 1,
            join: false,
            peers: peers.clone(),
            data_dir: dir.join(id.to_string()),
            disk: DiskOptions { fsync, ..DiskOptions::default() },
            tick: Duration::from_millis(10),
            election_tick,
            heartbeat_tick: 2,
            snapshot_entries: 1000,
            slow_disk,
            tls: None,
            dial_via: BTreeMap::new(),
        };
        let node = Replica::start(opts, Counter::default(), rt.handle().clone()).unwrap();
        l.set_nonblocking(true).unwrap();
        let _guard = rt.enter();
        incoming.push(node.handle().split_listener(tokio::net::TcpListener::from_std(l).unwrap()));
        nodes.push(node);
    }
    (nodes, incoming)
}

#[test]
fn a_disk_slower_than_an_election_timeout_delays_commits_but_keeps_the_leader() {
    // Every background sync takes 400 ms more, four times the minimum election timeout
    // (10 ticks of 10 ms), on all three replicas at once, as a shared disk's stall does.
    let stall = Duration::from_millis(400);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (nodes, incoming) = three_replicas(dir.path(), &rt, FsyncPolicy::Always, 10, stall);
    let handles: Vec<_> = nodes.iter().map(|n| n.handle()).collect();
    let (leader, term) = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                for h in &handles {
                    let l = *h.leadership().borrow();
                    if l.role == Some(Role::Leader) && h.propose(Bytes::from_static(b"first")).await.is_ok() {
                        return (h.id(), l.term);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the group elects a leader that commits")
    });
    let h = handles[leader as usize - 1].clone();
    for i in 0..5 {
        let began = std::time::Instant::now();
        let write = h.propose(Bytes::from(format!("w{i}")));
        let answer = rt.block_on(async { tokio::time::timeout(Duration::from_secs(30), write).await });
        assert!(matches!(answer, Ok(Ok(_))), "write {i}: {answer:?}");
        // Nothing commits before a majority's syncs are done: the followers' acknowledgements
        // wait for theirs (the leader's own is slow too).
        assert!(
            began.elapsed() >= stall,
            "write {i} committed {:?} after it was proposed, before any sync",
            began.elapsed()
        );
    }
    // Two seconds of syncs slower than an election timeout, yet the followers' loops kept
    // answering heartbeats: the same leader in the same term.
    for other in &handles {
        let l = *other.leadership().borrow();
        assert_eq!((l.leader_id, l.term), (leader, term), "replica {} saw leadership change", other.id());
    }
    for n in nodes {
        n.stop().unwrap();
    }
    drop(incoming);
}

/// A [`Counter`] whose first snapshot encoder panics (a state machine bug); later ones work.
struct FlakyEncoder {
    counter: Counter,
    panics_left: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl StateMachine for FlakyEncoder {
    fn apply(&mut self, index: u64, data: &[u8], answer: bool) -> Result<Bytes, String> {
        self.counter.apply(index, data, answer)
    }
    fn snapshot(&self) -> raft::SnapshotEncoder {
        let (encode, panics_left) = (self.counter.snapshot(), self.panics_left.clone());
        Box::new(move || {
            if panics_left.fetch_update(SeqCst, SeqCst, |left| left.checked_sub(1)).is_ok() {
                panic!("encoder bug (on purpose, in a test)");
            }
            encode()
        })
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.counter.restore(data)
    }
}

use std::sync::atomic::Ordering::SeqCst;

#[test]
fn a_snapshot_encoder_that_panics_does_not_stop_later_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let panics_left = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(1));
    let sm = FlakyEncoder { counter: Counter::default(), panics_left: panics_left.clone() };
    let node = Replica::start(lone_replica(dir.path(), 20), sm, rt.handle().clone()).unwrap();
    let handle = node.handle();
    let snapshot_index = rt.block_on(async {
        // Proposals at 10 ms intervals for up to 20 s (the panic hook's backtrace may take a
        // while on the snapshot thread); a snapshot is due every 20 entries.
        for _ in 0..2000 {
            match handle.propose(Bytes::from_static(b"x")).await {
                Ok(_) | Err(ReplicaError::NotLeader { .. }) => {}
                Err(e) => panic!("{e:?}"),
            }
            let index = handle.status().await.unwrap().snapshot_index;
            if index > 0 {
                return index;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        0
    });
    assert_eq!(panics_left.load(SeqCst), 0, "the first encoder ran (and panicked)");
    let st = rt.block_on(handle.status()).unwrap();
    assert!(
        snapshot_index > 0,
        "a later snapshot was saved after the encoder's panic: {:?}",
        (st.raft.applied, st.first_index, st.snapshot_index)
    );
    node.stop().unwrap();
}

/// Panics on the entry `boom`, as a state machine with a bug would; refuses the entry
/// `newer`, as one that does not know a newer version's format does.
struct Fragile;

impl StateMachine for Fragile {
    fn apply(&mut self, _index: u64, data: &[u8], _answer: bool) -> Result<Bytes, String> {
        assert_ne!(data, b"boom", "the state machine cannot apply this");
        if data == b"newer" {
            return Err("an entry of a newer format".into());
        }
        Ok(Bytes::new())
    }
    fn snapshot(&self) -> raft::SnapshotEncoder {
        Box::new(Bytes::new)
    }
    fn restore(&mut self, _data: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// A loop that dies, of an error or a panic, says so through `died` (the replica's process
/// then exits with the cause, rather than stay up answering nothing).
#[test]
fn a_loop_that_panics_reports_its_death() {
    let why = die_of(b"boom");
    assert!(why.contains("panicked") && why.contains("cannot apply"), "{why}");
}

/// An entry the state machine cannot apply stops the replica (with the entry's index), rather
/// than leave it serving a state its peers do not have.
#[test]
fn an_entry_the_state_machine_cannot_apply_stops_the_replica() {
    let why = die_of(b"newer");
    assert!(why.contains("applying entry") && why.contains("newer format"), "{why}");
}

/// Starts a lone replica of [`Fragile`], proposes `last` after an entry it applies, and
/// returns why the replica died.
fn die_of(last: &'static [u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let node = Replica::start(lone_replica(dir.path(), 1000), Fragile, rt.handle().clone()).unwrap();
    let handle = node.handle();
    let died = node.died();
    let why = rt.block_on(async {
        // Once the lone replica has elected itself.
        let mut applied = Err(ReplicaError::Stopped);
        for _ in 0..500 {
            applied = handle.propose(Bytes::from_static(b"fine")).await;
            if applied.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        applied.expect("applied");
        let _ = handle.propose(Bytes::from_static(last)).await;
        tokio::time::timeout(Duration::from_secs(30), died).await.expect("died resolves")
    });
    assert!(node.stop().is_err());
    why.to_string()
}

/// Replica `id` of cell 1 listening on `listener` (peer links, and snapshots over gRPC),
/// starting from `peers`, data in `dir/<id>`, a snapshot every 50 entries. With the task
/// serving gRPC, to abort once the replica stopped.
fn member(
    id: u64,
    listener: std::net::TcpListener,
    peers: &BTreeMap<u64, String>,
    dir: &std::path::Path,
    join: bool,
    rt: &tokio::runtime::Runtime,
) -> (Replica<Counter>, impl Send) {
    let opts = ReplicaOptions {
        id,
        cell: 1,
        join,
        peers: peers.clone(),
        data_dir: dir.join(id.to_string()),
        disk: DiskOptions { fsync: FsyncPolicy::No, ..DiskOptions::default() },
        tick: Duration::from_millis(10),
        election_tick: 10,
        heartbeat_tick: 2,
        snapshot_entries: 50,
        slow_disk: Duration::ZERO,
        tls: None,
        dial_via: BTreeMap::new(),
    };
    let node = Replica::start(opts, Counter::default(), rt.handle().clone()).unwrap();
    listener.set_nonblocking(true).unwrap();
    let _guard = rt.enter();
    let incoming = node.handle().split_listener(tokio::net::TcpListener::from_std(listener).unwrap());
    let server = tonic::transport::Server::builder()
        .add_service(node.handle().peer_service(None).into_server())
        .serve_with_incoming(incoming);
    (node, AbortOnDrop(rt.spawn(server)))
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs `f` against each handle until one answers `Ok` (the leader, for leader-only calls),
/// for up to 30 s.
fn on_leader<T>(
    rt: &tokio::runtime::Runtime,
    handles: &[raft::ReplicaHandle<Counter>],
    f: impl Fn(
        raft::ReplicaHandle<Counter>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, ReplicaError>>>>,
) -> T {
    rt.block_on(async {
        let mut last = None;
        for _ in 0..1500 {
            for h in handles {
                if h.leadership().borrow().role != Some(Role::Leader) {
                    continue;
                }
                match f(h.clone()).await {
                    Ok(t) => return t,
                    Err(e) => last = Some(e),
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no leader carried it out in 30 s; last error: {last:?}")
    })
}

/// A fourth replica joins a running group with an empty data directory: it is added as a
/// learner with its address, catches up by snapshot and log, and is promoted; every member
/// learns its address from the log. Then a follower and the leader itself are removed, and
/// the rest go on committing.
#[test]
fn a_replica_joins_is_promoted_and_members_are_removed_while_the_group_commits() {
    use raft::ConfChange;
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listeners: Vec<_> = (0..4).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: BTreeMap<u64, String> =
        listeners.iter().enumerate().map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap().to_string())).collect();
    let first: BTreeMap<u64, String> = addrs.iter().filter(|(&id, _)| id <= 3).map(|(&i, a)| (i, a.clone())).collect();
    let mut listeners = listeners.into_iter();
    let mut nodes = BTreeMap::new();
    let mut incoming = Vec::new();
    for id in 1..=3 {
        let (node, inc) = member(id, listeners.next().unwrap(), &first, dir.path(), false, &rt);
        nodes.insert(id, node);
        incoming.push(inc);
    }
    let handles = |nodes: &BTreeMap<u64, Replica<Counter>>| nodes.values().map(|n| n.handle()).collect::<Vec<_>>();
    // Enough entries that the log is compacted: the newcomer needs a snapshot.
    for i in 0..120 {
        on_leader(&rt, &handles(&nodes), |h| Box::pin(async move { h.propose(Bytes::from(format!("{i}"))).await }));
    }
    let addr4 = addrs[&4].clone();
    on_leader(&rt, &handles(&nodes), |h| {
        let a = addr4.clone();
        Box::pin(async move { h.change_membership(ConfChange::AddLearner(4), Some(a)).await })
    });
    let (node4, inc) = member(4, listeners.next().unwrap(), &addrs, dir.path(), true, &rt);
    nodes.insert(4, node4);
    incoming.push(inc);
    // Refused until the learner has caught up; then it is a voter.
    on_leader(&rt, &handles(&nodes), |h| {
        Box::pin(async move { h.change_membership(ConfChange::AddVoter(4), None).await })
    });
    for h in handles(&nodes) {
        let m = rt.block_on(async {
            let mut rx = h.members();
            let seen = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|m| m.voters == [1, 2, 3, 4])).await;
            match seen {
                Ok(Ok(m)) => m.clone(),
                _ => panic!("replica {} never saw 4 voters", h.id()),
            }
        });
        assert_eq!(m.addrs, addrs, "replica {}", h.id());
    }
    let count = |h: &raft::ReplicaHandle<Counter>| rt.block_on(h.stale_read(|c| c.0)).unwrap();
    // A follower goes; the leader goes.
    let leader = on_leader(&rt, &handles(&nodes), |h| Box::pin(async move { Ok::<_, ReplicaError>(h.id()) }));
    let follower = *nodes.keys().find(|&&id| id != leader && id != 4).unwrap();
    on_leader(&rt, &handles(&nodes), |h| {
        Box::pin(async move { h.change_membership(ConfChange::RemoveNode(follower), None).await })
    });
    nodes.remove(&follower).unwrap().stop().unwrap();
    // A leader that removes itself keeps replicating until the change commits (its
    // followers still answer it), then steps down and hands off.
    let removal = rt.block_on(nodes[&leader].handle().change_membership(ConfChange::RemoveNode(leader), None));
    assert_eq!(removal, Ok(()), "the leader's removal of itself did not commit");
    let rest: Vec<_> = handles(&nodes).into_iter().filter(|h| h.id() != leader).collect();
    for i in 0..20 {
        on_leader(&rt, &rest, |h| Box::pin(async move { h.propose(Bytes::from(format!("after {i}"))).await }));
    }
    let new_leader = on_leader(&rt, &rest, |h| Box::pin(async move { Ok::<_, ReplicaError>(h.id()) }));
    assert_ne!(
        nodes[&leader].handle().leadership().borrow().role,
        Some(Role::Leader),
        "the removed leader still leads"
    );
    let want = count(&rest.iter().find(|h| h.id() == new_leader).unwrap().clone());
    for h in &rest {
        let caught_up = rt.block_on(async {
            for _ in 0..1500 {
                if h.stale_read(|c| c.0).await.unwrap() >= want {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        });
        assert!(caught_up, "replica {} did not apply the writes after the removals", h.id());
        let m = h.members().borrow().clone();
        assert_eq!(m.voters.len(), 2, "replica {}: {m:?}", h.id());
        assert!(!m.contains(leader) && !m.contains(follower) && !m.addrs.contains_key(&follower), "{m:?}");
    }
    for (_, n) in nodes {
        n.stop().unwrap();
    }
    drop(incoming);
}
