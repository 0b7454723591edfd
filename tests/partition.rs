//! A master cut off from the other replicas but not from its clients (peer links the test
//! blocks: nothing passes between the replicas, nothing is reset).

use std::time::{Duration, Instant};

use e2e_tests::{wait_converged, CellOptions, TestCell};
use fuse_mount::client::{OpenOptions, Session, SessionOptions};
use fuse_mount::proto::chubby::chubby_client::ChubbyClient;
use fuse_mount::proto::chubby::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

/// Makes replica 1 the leader: while another leads, its fellow follower is stopped and the
/// leader handed over (SIGTERM hands leadership to its most caught-up follower: replica 1,
/// the only one left), then both start again.
fn lead_with_replica_1(cell: &mut TestCell, rt: &tokio::runtime::Runtime) {
    for _ in 0..3 {
        let leader =
            rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
        eprintln!("leader: replica {leader}");
        if leader == 1 {
            return;
        }
        let other = if leader == 2 { 3 } else { 2 };
        cell.kill(other);
        // A write the stopped one misses, so replica 1 is the most caught-up follower.
        let mut client = cell.client(Duration::from_secs(5));
        rt.block_on(client.put("ahead", bytes::Bytes::from_static(b"1"))).unwrap();
        cell.terminate(leader);
        cell.start_replica(other);
        cell.start_replica(leader);
    }
    panic!("replica 1 did not become the leader");
}

/// A client keeps its session alive at a master that is cut off from the other replicas. The
/// others elect a new master, which expires the session once its lease ends and grants the
/// session's lock (lock-delay 0) to a client on its side. No lease the old master granted may
/// still run then: the client would act under a lock someone else holds. The old master's
/// check-quorum is slow here (a 1 s election timeout against 150 ms on the others), so it
/// serves for a second or two after the new master took office.
#[test]
fn a_master_cut_off_from_the_cell_grants_no_lease_past_its_successors_expiry() {
    let mut cell = TestCell::start(CellOptions {
        session_lease_ms: 4000,
        election_ticks_of: vec![100, 15, 15],
        peer_links: true,
        ..CellOptions::default()
    });
    let rt = runtime();
    lead_with_replica_1(&mut cell, &rt);
    let old_master = cell.addrs[0].clone();
    let others = vec![cell.addrs[1].clone(), cell.addrs[2].clone()];

    let (believed_until, granted_at) = rt.block_on(async {
        // The holder: a raw session at the old master, with a lock of lock-delay 0.
        let mut c = ChubbyClient::connect(format!("http://{old_master}")).await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let open = OpenSession { principal: "holder".into(), ..Default::default() };
        tx.send(SessionRequest { kind: Some(session_request::Kind::Open(open)) }).await.unwrap();
        let mut inbound = c.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let grant = loop {
            if let Some(session_response::Kind::Lease(g)) = inbound.message().await.unwrap().unwrap().kind {
                break g;
            }
        };
        let s = grant.session;
        let req = |seq| Some(RequestId { session: s, sequence: seq, first_incomplete: seq });
        let open = OpenRequest {
            request: req(1),
            path: "/ls/local/p".into(),
            create: true,
            session_token: grant.session_token.clone(),
            ..OpenRequest::default()
        };
        let h = c.open(open).await.unwrap().into_inner().handle;
        let acquire = AcquireRequest {
            request: req(2),
            handle: h,
            mode: LockMode::LockExclusive as i32,
            owner: 1,
            lock_delay_ms: Some(0),
            convert: false,
        };
        assert!(c.acquire(acquire).await.unwrap().into_inner().granted);

        // KeepAlives every 20 ms; each grant is believed for its lease from when it arrived
        // (later than the master's start of it: a belief no client can exceed).
        let keeper = tokio::spawn(async move {
            let mut believed_until = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let ka = KeepAlive { session: s, more_sessions: Vec::new() };
                        if tx.send(SessionRequest { kind: Some(session_request::Kind::KeepAlive(ka)) }).await.is_err() {
                            return believed_until;
                        }
                    }
                    m = inbound.message() => match m {
                        Ok(Some(SessionResponse { kind: Some(session_response::Kind::Lease(g)) })) => {
                            believed_until = believed_until.max(Instant::now() + Duration::from_millis(g.lease_ms));
                        }
                        Ok(Some(_)) => {}
                        // The old master stepped down (or the stream broke): no more grants.
                        Ok(None) | Err(_) => return believed_until,
                    },
                    _ = tokio::time::sleep(Duration::from_secs(30)) => return believed_until,
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        cell.partition(1);

        // The taker, on the other side: a session at the other two, blocked on the lock.
        let opts = SessionOptions {
            principal: "taker".into(),
            timeout: Duration::from_secs(20),
            grace: Duration::from_secs(20),
            cache: false,
            tls: None,
        };
        let taker = Session::open(others, opts).await.unwrap();
        let (ht, _) = taker.open_node("/ls/local/p", OpenOptions::default()).await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), taker.acquire(&ht, LockMode::LockExclusive, 7, None))
            .await
            .expect("the taker is granted the lock within 30 s")
            .expect("granted");
        let granted_at = Instant::now();
        let believed_until = tokio::time::timeout(Duration::from_secs(30), keeper).await.unwrap().unwrap();
        (believed_until, granted_at)
    });
    cell.heal();
    assert!(
        believed_until <= granted_at,
        "the holder believed in its lease {:?} after the lock went to another client",
        believed_until - granted_at
    );
}

/// A client that knows only a follower is sent to the master's own address (`--peers`), not
/// to the route the follower takes to it (`--peer-via`, here the test's link). So a partition
/// between that follower and the master, which leaves the master a majority, does not touch
/// the client: its session lives on through a cut of more than twice its lease.
#[test]
fn a_client_sent_on_by_a_follower_is_not_cut_off_by_a_partition_between_replicas() {
    let cell = TestCell::start(CellOptions { session_lease_ms: 2000, peer_links: true, ..CellOptions::default() });
    let rt = runtime();
    let leader = rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let follower = if leader == 1 { 2 } else { 1 };
    let opts =
        SessionOptions { principal: "client".into(), timeout: Duration::from_secs(5), ..SessionOptions::default() };
    let s = rt.block_on(Session::open(vec![cell.addrs[(follower - 1) as usize].clone()], opts)).unwrap();
    let dir = OpenOptions { create: true, directory: true, ..OpenOptions::default() };
    let (h, _) = rt.block_on(s.open_node("/ls/local/d", dir)).unwrap();

    cell.set_link(follower, leader, true);
    cell.set_link(leader, follower, true);
    std::thread::sleep(Duration::from_secs(5));
    let state = *s.state().borrow();
    let listed = rt.block_on(s.read_dir(&h));
    cell.heal();
    assert_eq!(state, fuse_mount::client::SessionState::Alive, "the client's session through the cut");
    assert!(listed.is_ok(), "a read after the cut: {listed:?}");
    rt.block_on(s.close()).unwrap();
}
