//! The Chubby service end to end: replica processes on loopback, clients as processes
//! (`chubby lock`) and as the session library, faults by `kill -9`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{bin, exit_within, lines_of, wait_converged, CellOptions, Netns, Pids, Proxy, TestCell};
use fuse_mount::client::ClientError;
use fuse_mount::proto::chubby::chubby_client::ChubbyClient;
use fuse_mount::proto::chubby::{
    event, session_request, session_response, GetContentsRequest, GetStatRequest, Handle, InvalidationAck, KeepAlive,
    LeaseGrant, LockMode, OpenRequest, OpenSession, RequestId, SessionRequest, SessionResponse,
};
use fuse_mount::session::{OpenOptions, Session, SessionOptions, ERROR_METADATA};
use tonic::Code;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

fn opts() -> SessionOptions {
    SessionOptions {
        principal: "tester".into(),
        timeout: Duration::from_secs(15),
        grace: Duration::from_secs(20),
        cache: true,
    }
}

/// The lock generation inside a sequencer (`seq1:instance:generation:grant:…`).
fn generation(seq: &str) -> u64 {
    seq.split(':').nth(2).and_then(|g| g.parse().ok()).unwrap_or_else(|| panic!("not a sequencer: {seq:?}"))
}

#[test]
fn killed_holder_loses_the_lock_only_after_lease_expiry_and_lock_delay() {
    let cell = TestCell::start(CellOptions { session_lease_ms: 1000, ..CellOptions::default() });
    runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let mut pids = Pids::default();
    let lock = |args: &[&str]| {
        Command::new(bin("chubby"))
            .args(["--cell", &cell.cell_arg(), "lock"])
            .args(args)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start chubby lock")
    };
    // The holder prints its shell's pid and its sequencer, then sleeps as the shell.
    let mut holder =
        lock(&["--lock-delay", "2s", "/ls/local/job", "--", "sh", "-c", "echo $$ $CHUBBY_SEQUENCER; exec sleep 600"]);
    pids.0.push(holder.id());
    let first =
        lines_of(holder.stdout.take().unwrap()).recv_timeout(Duration::from_secs(30)).expect("holder got the lock");
    let (shell, seq_a) = first.split_once(' ').expect("pid and sequencer");
    let shell: u32 = shell.parse().unwrap();
    pids.0.push(shell);

    let mut waiter = lock(&["/ls/local/job", "--", "sh", "-c", "echo $CHUBBY_SEQUENCER"]);
    pids.0.push(waiter.id());
    let waiter_out = lines_of(waiter.stdout.take().unwrap());
    assert!(
        waiter_out.recv_timeout(Duration::from_millis(1500)).is_err(),
        "the waiter must not get the lock while the holder lives"
    );

    // kill -9: the holder never releases.
    pids.kill(holder.id());
    pids.kill(shell);
    let _ = holder.wait();
    let killed = Instant::now();
    let seq_b = waiter_out.recv_timeout(Duration::from_secs(60)).expect("the waiter gets the lock in the end");
    let waited = killed.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "the lock passed on {waited:?} after the holder died: before its 2 s lock-delay ended"
    );
    assert!(generation(&seq_b) > generation(seq_a), "{seq_b} is not a later generation than {seq_a}");
    let st = waiter.wait().unwrap();
    assert!(st.success(), "chubby lock exits with its command's status: {st:?}");
}

#[test]
fn master_failover_keeps_sessions_locks_and_the_waiter_queue() {
    let mut cell = TestCell::start(CellOptions { session_lease_ms: 3000, ..CellOptions::default() });
    let rt = runtime();
    rt.block_on(async {
        let leader = wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let a = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let b = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let create = OpenOptions { create: true, ..OpenOptions::default() };
        let (ha, _) = a.open_node("/ls/local/leader", create.clone()).await.unwrap();
        let (hb, _) = b.open_node("/ls/local/leader", create).await.unwrap();
        let seq_a = a.acquire(&ha, LockMode::LockExclusive, 1, None).await.unwrap();
        let old_epoch = a.epoch();
        let mut a_events = a.events();
        let (b2, hb2) = (b.clone(), hb.clone());
        let waiter = tokio::spawn(async move { b2.acquire(&hb2, LockMode::LockExclusive, 1, None).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "b waits behind a");

        cell.kill(leader);
        let failover = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match a_events.recv().await {
                    Ok(e) if matches!(e.kind, Some(event::Kind::MasterFailover(true))) => return,
                    Ok(_) => {}
                    Err(e) => panic!("event stream ended: {e}"),
                }
            }
        })
        .await;
        assert!(failover.is_ok(), "a never saw the master-failover event");
        assert!(a.epoch() > old_epoch, "a's session resumed under the new master's epoch");

        // A call still under the old epoch is refused by the new master and sent back to it
        // (the session must resume there first); the other replica redirects as usual.
        let mut stale_refusals = 0;
        for (i, addr) in cell.addrs.iter().enumerate() {
            if i + 1 == leader as usize {
                continue;
            }
            let mut raw = ChubbyClient::connect(format!("http://{addr}")).await.unwrap();
            let mut req = tonic::Request::new(GetStatRequest { handle: Some(ha.clone()) });
            req.metadata_mut().insert(fuse_mount::proto::EPOCH_METADATA, old_epoch.into());
            let err = raw.get_stat(req).await.expect_err("a stale-epoch call is refused");
            assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
            let hint = err.metadata().get(fuse_mount::proto::LEADER_METADATA).map(|v| v.to_str().unwrap().to_string());
            if err.metadata().get(ERROR_METADATA).is_some_and(|v| v == "StaleEpoch") {
                stale_refusals += 1;
                assert_eq!(hint.as_deref(), Some(addr.as_str()), "the new master names itself");
            } else {
                assert!(hint.is_some(), "a follower redirects: {err:?}");
            }
        }
        assert_eq!(stale_refusals, 1, "exactly the new master refuses the old epoch");
        assert!(a.check_sequencer(&seq_a).await.unwrap(), "a still holds the lock at the new master");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiter.is_finished(), "b still waits: the queue survived the failover");

        a.release(&ha, 1).await.unwrap();
        let seq_b = tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .expect("b is granted once a releases")
            .unwrap()
            .unwrap();
        assert!(b.check_sequencer(&seq_b).await.unwrap());
        assert!(!a.check_sequencer(&seq_a).await.unwrap(), "a's sequencer is stale after its release");
        a.close().await.unwrap();
        b.close().await.unwrap();
    });
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let cell = TestCell::start(CellOptions::default());
    let rt = runtime();
    rt.block_on(async {
        wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let a = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let create = OpenOptions { create: true, contents: "v1".into(), ..OpenOptions::default() };
        let (h, stat) = a.open_node("/ls/local/f", create).await.unwrap();
        let reason = |e: ClientError| match e {
            ClientError::Rpc(s) => {
                (s.code(), s.metadata().get(ERROR_METADATA).and_then(|v| v.to_str().ok()).unwrap_or("").to_string())
            }
            other => panic!("expected a refusal, got {other}"),
        };

        let too_big = a.set(&h, vec![0u8; (256 << 10) + 1].into(), None, "").await.unwrap_err();
        assert_eq!(reason(too_big), (Code::ResourceExhausted, "TooLarge".into()));
        // Past what a replica reads at all: refused alone, the session's other calls go on.
        let far_too_big = a.set(&h, vec![0u8; 5 << 20].into(), None, "").await.unwrap_err();
        assert_eq!(reason(far_too_big), (Code::ResourceExhausted, "TooLarge".into()));
        assert_eq!(&a.get(&h).await.unwrap().0[..], b"v1");
        let cas = a.set(&h, "v2".into(), Some(stat.content_generation + 5), "").await.unwrap_err();
        assert_eq!(reason(cas), (Code::FailedPrecondition, "GenerationMismatch".into()));
        let fenced = a.set(&h, "v2".into(), None, "seq1:1:1:1:x:1:1:/nothing").await.unwrap_err();
        assert_eq!(reason(fenced), (Code::PermissionDenied, "StaleSequencer".into()));
        let bad_path = a.open_node("/ls/local/a//b", OpenOptions { create: true, ..OpenOptions::default() }).await;
        assert_eq!(reason(bad_path.unwrap_err()), (Code::InvalidArgument, "InvalidArgument".into()));
        let other_cell = a.open_node("/ls/elsewhere/x", OpenOptions::default()).await.unwrap_err();
        assert!(matches!(other_cell, ClientError::Rpc(s) if s.code() == Code::InvalidArgument));
        let missing = a.open_node("/ls/local/missing", OpenOptions::default()).await.unwrap_err();
        assert_eq!(reason(missing), (Code::NotFound, "NotFound".into()));

        // A forged handle, and an Open in another session's name without its token.
        let leader = cell.client(Duration::from_secs(5)).status_all().await;
        let master = leader
            .iter()
            .find_map(|(addr, r)| r.as_ref().ok().filter(|s| s.role == "leader").map(|_| addr.clone()))
            .unwrap();
        let mut raw = ChubbyClient::connect(format!("http://{master}")).await.unwrap();
        let mut forged = h.token.to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let r = raw
            .get_contents_and_stat(GetContentsRequest {
                handle: Some(Handle { token: forged.into(), ..Default::default() }),
                stale_ok: false,
            })
            .await
            .unwrap_err();
        assert_eq!(r.code(), Code::PermissionDenied, "{r:?}");
        let r = raw
            .open(OpenRequest {
                request: Some(RequestId { session: a.id(), sequence: 1000, first_incomplete: 1000 }),
                path: "/ls/local/f".into(),
                ..OpenRequest::default()
            })
            .await
            .unwrap_err();
        assert_eq!(r.code(), Code::PermissionDenied, "{r:?}");

        // A follower answers a stale read itself (no redirect), marked stale and uncacheable.
        let follower = leader
            .iter()
            .find_map(|(addr, r)| r.as_ref().ok().filter(|s| s.role == "follower").map(|_| addr.clone()))
            .unwrap();
        let mut f = ChubbyClient::connect(format!("http://{follower}")).await.unwrap();
        let stale = f
            .get_contents_and_stat(GetContentsRequest { handle: Some(h.clone()), stale_ok: true })
            .await
            .unwrap()
            .into_inner();
        assert!(stale.stale && !stale.cacheable, "{stale:?}");
        let linearizable =
            f.get_contents_and_stat(GetContentsRequest { handle: Some(h.clone()), stale_ok: false }).await;
        assert_eq!(linearizable.unwrap_err().code(), Code::FailedPrecondition, "a follower redirects other reads");

        // Nothing above changed the node.
        let (contents, after) = a.get(&h).await.unwrap();
        assert_eq!(&contents[..], b"v1");
        assert_eq!(after.content_generation, stat.content_generation);
        a.close().await.unwrap();
    });
}

#[test]
fn watchers_get_events_for_contents_children_and_locks() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(async {
        wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let a = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let b = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let dir = OpenOptions { create: true, directory: true, events: 2, ..OpenOptions::default() };
        a.open_node("/ls/local/svc", dir).await.unwrap();
        let file = OpenOptions { create: true, events: 1 | 4 | 8, ..OpenOptions::default() };
        let (ha, _) = a.open_node("/ls/local/svc/master", file).await.unwrap();
        let mut events = a.events();
        let (hb, _) = b.open_node("/ls/local/svc/master", OpenOptions::default()).await.unwrap();
        b.set(&hb, "10.0.0.1:80".into(), None, "").await.unwrap();
        let (hc, _) =
            b.open_node("/ls/local/svc/other", OpenOptions { create: true, ..OpenOptions::default() }).await.unwrap();
        b.delete(&hc, None, "").await.unwrap();
        a.acquire(&ha, LockMode::LockExclusive, 1, None).await.unwrap();
        let (b2, hb2) = (b.clone(), hb.clone());
        let waiter = tokio::spawn(async move { b2.acquire(&hb2, LockMode::LockExclusive, 7, None).await });
        let mut seen = Vec::new();
        let want = [
            "contents /ls/local/svc/master",
            "added other",
            "removed other",
            "lock /ls/local/svc/master",
            "conflict /ls/local/svc/master",
        ];
        let got = tokio::time::timeout(Duration::from_secs(20), async {
            while !want.iter().all(|w| seen.iter().any(|s: &String| s == w)) {
                let e = events.recv().await.expect("event stream");
                seen.push(match e.kind {
                    Some(event::Kind::ContentsModified(_)) => format!("contents {}", e.path),
                    Some(event::Kind::ChildAdded(n)) => format!("added {n}"),
                    Some(event::Kind::ChildRemoved(n)) => format!("removed {n}"),
                    Some(event::Kind::LockAcquired(_)) => format!("lock {}", e.path),
                    Some(event::Kind::ConflictingLock(_)) => format!("conflict {}", e.path),
                    other => format!("{other:?}"),
                });
            }
        })
        .await;
        assert!(got.is_ok(), "missing events; saw {seen:?}");
        a.release(&ha, 1).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), waiter).await.unwrap().unwrap().unwrap();

        // The master's per-session tables shrink as the sessions' use does: a Close ends the
        // handle's subscription, and an ended session leaves nothing behind.
        let client = cell.client(Duration::from_secs(5));
        assert_eq!(master_status(&client).await.subscriptions, 2, "a watches the directory and the file");
        a.close_node(&ha).await.unwrap();
        assert_eq!(master_status(&client).await.subscriptions, 1, "Close ends the file's subscription");
        a.close().await.unwrap();
        b.close().await.unwrap();
        let st = master_status(&client).await;
        let tables = (st.subscriptions, st.cache_registrations, st.lock_waiters, st.remembered_answers);
        assert_eq!(tables, (0, 0, 0, 0), "(subscriptions, cache registrations, lock waiters, answers) left");
    });
}

/// The status of the replica that is the master.
async fn master_status(client: &fuse_mount::client::CellClient) -> fuse_mount::proto::cell::StatusResponse {
    let all = e2e_tests::statuses(client).await;
    all.into_iter().filter_map(|(_, r)| r.ok()).find(|s| s.role == "leader").expect("a master")
}

/// `chubby watch` across a master failover: the failover shows as a gap (`master-failover`
/// or `events-lost`, read again), and every change after it is printed: the session's
/// subscriptions are registered again at the new master.
#[test]
fn chubby_watch_goes_on_printing_changes_after_a_master_failover() {
    let mut cell = TestCell::start(CellOptions::default());
    let leader =
        runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let addrs = cell.cell_arg();
    let chubby = |args: &[&str]| {
        let out = Command::new(bin("chubby")).env("CHUBBY_CELL", &addrs).args(args).output().unwrap();
        out.status.code().unwrap_or(-1)
    };
    assert_eq!(chubby(&["put", "/ls/local/watched", "v0"]), 0);
    let mut watch = Command::new(bin("chubby"))
        .env("CHUBBY_CELL", cell.cell_arg())
        .args(["watch", "/ls/local/watched"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Pids(vec![watch.id()]);
    let lines = lines_of(watch.stdout.take().unwrap());
    // Waits (bounded) for a line that starts with one of `kinds`; the lines seen on the way.
    let expect = |kinds: &[&str], what: &str| -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
                let hit = kinds.iter().any(|k| line.starts_with(k));
                seen.push(line);
                if hit {
                    return seen;
                }
            }
        }
        panic!("no {what} from chubby watch within 30 s; it printed {seen:?}");
    };
    // The watch is registered once a change shows.
    let mut printed = false;
    for i in 0..50 {
        assert_eq!(chubby(&["put", "/ls/local/watched", &format!("before-{i}")]), 0);
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
            assert!(line.starts_with("modified /ls/local/watched"), "{line}");
            printed = true;
            break;
        }
    }
    assert!(printed, "chubby watch printed a change before the failover");

    cell.kill(leader);
    cell.start_replica(leader);
    expect(&["master-failover", "events-lost"], "gap line after the failover");
    // Changes after the failover are printed.
    assert_eq!(chubby(&["put", "/ls/local/watched", "after"]), 0);
    expect(&["modified /ls/local/watched"], "change after the failover");
    pids.kill(watch.id());
    let _ = watch.wait();
}

/// `chubby watch` across a cut of its session stream with no failover (a network blip): an
/// event lost with the stream shows as a gap line (`events-lost`), never as silence, and every
/// change after it is printed.
#[test]
fn chubby_watch_reports_a_gap_when_its_stream_is_cut() {
    let cell = TestCell::start(CellOptions::default());
    let rt = runtime();
    let leader = rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    // The watch reaches the master through a proxy that can lose what it carries.
    let proxy = rt.block_on(Proxy::start(cell.addrs[(leader - 1) as usize].clone()));
    let chubby = |args: &[&str]| {
        let out = Command::new(bin("chubby")).env("CHUBBY_CELL", cell.cell_arg()).args(args).output().unwrap();
        out.status.code().unwrap_or(-1)
    };
    assert_eq!(chubby(&["put", "/ls/local/watched", "v0"]), 0);
    let mut watch = Command::new(bin("chubby"))
        .env("CHUBBY_CELL", &proxy.addr)
        .args(["watch", "/ls/local/watched"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut pids = Pids(vec![watch.id()]);
    let lines = lines_of(watch.stdout.take().unwrap());
    let mut printed = false;
    for i in 0..50 {
        assert_eq!(chubby(&["put", "/ls/local/watched", &format!("before-{i}")]), 0);
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
            assert!(line.starts_with("modified /ls/local/watched"), "{line}");
            printed = true;
            break;
        }
    }
    assert!(printed, "chubby watch printed a change before the cut");
    // Every earlier put's event printed (on a loaded machine they come late), so the next line
    // is about the cut.
    while lines.recv_timeout(Duration::from_millis(1500)).is_ok() {}

    // A change whose event is held in the proxy, then lost with the connection.
    proxy.hold_answers();
    assert_eq!(chubby(&["put", "/ls/local/watched", "during"]), 0);
    std::thread::sleep(Duration::from_millis(300));
    proxy.cut_and_release();
    let first = lines.recv_timeout(Duration::from_secs(30)).expect("a line after the cut");
    assert!(first.starts_with("events-lost"), "the lost event shows as a gap first, not as silence: {first:?}");
    // Changes after the gap are printed.
    let mut seen = Vec::new();
    for i in 0..50 {
        assert_eq!(chubby(&["put", "/ls/local/watched", &format!("after-{i}")]), 0);
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
            seen.push(line);
            break;
        }
    }
    assert!(
        seen.first().is_some_and(|l| l.starts_with("modified /ls/local/watched")),
        "a change after the cut is printed: {seen:?}"
    );
    pids.kill(watch.id());
    let _ = watch.wait();
}

/// A master paused (SIGSTOP) for longer than a lease sends its clients nothing and does not
/// break their streams: a client learns of it only when its lease ends, then must find the new
/// master before that one expires the session, though the paused replica, tried first, hangs.
#[test]
fn a_session_outlives_its_master_paused_past_the_lease() {
    let cell = TestCell::start(CellOptions { session_lease_ms: 2000, ..CellOptions::default() });
    runtime().block_on(async {
        let leader = wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let s = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let create = OpenOptions { create: true, ..OpenOptions::default() };
        let (h, _) = s.open_node("/ls/local/idle", create).await.unwrap();
        let pid = cell.pid(leader).expect("the master runs") as libc::pid_t;
        // SAFETY: SIGSTOP and SIGCONT of a replica this test started.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        tokio::time::sleep(Duration::from_secs(6)).await;
        unsafe { libc::kill(pid, libc::SIGCONT) };
        assert!(!s.is_lost(), "the session was expired while its client looked for the new master");
        s.set(&h, "still here".into(), None, "").await.expect("the session works at the new master");
        s.close().await.unwrap();
    });
}

/// A raw session stream that never acks invalidations, with the handle of one node it read.
async fn silent_cacher(
    master: &str,
    path: &str,
) -> (tokio::sync::mpsc::Sender<SessionRequest>, tonic::Streaming<SessionResponse>, u64) {
    let mut c = ChubbyClient::connect(format!("http://{master}")).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let open = OpenSession { principal: "cacher".into(), ..Default::default() };
    tx.send(SessionRequest { kind: Some(session_request::Kind::Open(open)) }).await.unwrap();
    let mut inbound = c.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let grant = loop {
        if let Some(session_response::Kind::Lease(g)) = inbound.message().await.unwrap().unwrap().kind {
            break g;
        }
    };
    let open = OpenRequest {
        request: Some(RequestId { session: grant.session, sequence: 1, first_incomplete: 1 }),
        path: path.into(),
        session_token: grant.session_token.clone(),
        ..OpenRequest::default()
    };
    let h = c.open(open).await.unwrap().into_inner().handle;
    let r = c.get_contents_and_stat(GetContentsRequest { handle: h, stale_ok: false }).await.unwrap().into_inner();
    assert!(r.cacheable, "a linearizable read with no write pending may be cached");
    (tx, inbound, grant.session)
}

#[test]
fn a_write_waits_for_cachers_to_ack_or_lose_their_session() {
    let cell = TestCell::start(CellOptions { session_lease_ms: 1500, ..CellOptions::default() });
    runtime().block_on(async {
        let leader = wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let master = cell.addrs[(leader - 1) as usize].clone();
        let w = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let (h, _) = w
            .open_node(
                "/ls/local/cached",
                OpenOptions { create: true, contents: "v1".into(), ..OpenOptions::default() },
            )
            .await
            .unwrap();

        // A cacher that acks: the write goes through, after the cacher was told.
        let reader = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let (hr, _) = reader.open_node("/ls/local/cached", OpenOptions::default()).await.unwrap();
        reader.get(&hr).await.unwrap();
        w.set(&h, "v2".into(), None, "").await.unwrap();
        assert_eq!(&reader.get(&hr).await.unwrap().0[..], b"v2");

        // A cacher that never acks (and sends no KeepAlive): the write waits until its lease
        // is over, and the session is expired so its client cannot trust its cache.
        let (_tx, mut inbound, silent) = silent_cacher(&master, "/ls/local/cached").await;
        let started = Instant::now();
        let first = {
            let (w, h) = (w.clone(), h.clone());
            tokio::spawn(async move { w.set(&h, "v3".into(), None, "").await })
        };
        let mut invalidated = false;
        while !invalidated {
            let next = tokio::time::timeout(Duration::from_secs(10), inbound.message()).await;
            match next.expect("an invalidation within 10 s").expect("the silent cacher's stream") {
                Some(SessionResponse { kind: Some(session_response::Kind::Invalidation(i)) }) => {
                    invalidated |= i.paths.iter().any(|p| p == "/ls/local/cached");
                }
                Some(_) => {}
                None => panic!("the silent cacher's stream ended before its invalidation"),
            }
        }
        // A second write, begun while the first waits: the silent cacher still holds its old
        // copy, so this one must not complete before that copy is gone either.
        let second_started = Instant::now();
        reader.set(&hr, "v4".into(), None, "").await.unwrap();
        let waited = second_started.elapsed();
        assert!(waited >= Duration::from_millis(500), "the second write did not wait for the cacher ({waited:?})");
        first.await.unwrap().unwrap();
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(500), "the write did not wait for the cacher ({waited:?})");
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match inbound.message().await {
                    Ok(Some(SessionResponse { kind: Some(session_response::Kind::Invalidation(i)) })) => {
                        invalidated |= i.paths.iter().any(|p| p == "/ls/local/cached");
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await;
        assert!(invalidated, "the silent cacher was sent an invalidation");
        assert!(ended.is_ok(), "the silent cacher's session was ended");
        let _ = silent;
    });
}

/// A write held back by a cacher that never acknowledges its invalidation waits up to a
/// lease: a client whose call deadline is shorter still gets the write's answer, never a
/// timeout for a write that then commits.
#[test]
fn a_write_held_back_for_a_lease_is_answered_past_a_shorter_call_deadline() {
    let cell = TestCell::start(CellOptions { session_lease_ms: 3000, ..CellOptions::default() });
    runtime().block_on(async {
        let leader = wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let master = cell.addrs[(leader - 1) as usize].clone();
        let short = SessionOptions { timeout: Duration::from_secs(1), ..opts() };
        let w = Session::open(cell.addrs.clone(), short).await.unwrap();
        let create = OpenOptions { create: true, contents: "v1".into(), ..OpenOptions::default() };
        let (h, _) = w.open_node("/ls/local/slow", create).await.unwrap();
        let (_tx, _inbound, _silent) = silent_cacher(&master, "/ls/local/slow").await;
        let started = Instant::now();
        let written = w.set(&h, "v2".into(), None, "").await;
        let took = started.elapsed();
        assert!(written.is_ok(), "the write is answered, not timed out after 1 s: {written:?} after {took:?}");
        assert_eq!(&w.get(&h).await.unwrap().0[..], b"v2");
        // Deleting waits for cachers too.
        let (_tx2, _inbound2, _silent2) = silent_cacher(&master, "/ls/local/slow").await;
        assert!(w.delete(&h, None, "").await.is_ok(), "the delete is answered, not timed out");
    });
}

#[test]
fn the_cli_reads_and_writes_the_namespace_with_documented_exit_codes() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let chubby = |args: &[&str]| {
        let out = Command::new(bin("chubby")).env("CHUBBY_CELL", cell.cell_arg()).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(chubby(&["mkdir", "-p", "/ls/local/svc/web"]).0, 0);
    assert_eq!(chubby(&["mkdir", "/ls/local/svc"]).0, 1, "mkdir of an existing directory fails without -p");
    assert_eq!(chubby(&["put", "/ls/local/svc/web/master", "10.0.0.1:80"]).0, 0);
    assert_eq!(chubby(&["get", "/ls/local/svc/web/master"]), (0, "10.0.0.1:80\n".into()));
    assert_eq!(chubby(&["get", "--stale", "/ls/local/svc/web/master"]).1, "10.0.0.1:80\n");
    assert_eq!(chubby(&["ls", "/ls/local/svc"]), (0, "web/\n".into()));
    let (code, json) = chubby(&["--json", "stat", "/ls/local/svc/web/master"]);
    assert_eq!(code, 0);
    assert!(json.contains("\"content_generation\":2"), "{json}");

    // CAS: --if-generation N writes only at generation N; 0 only creates.
    assert_eq!(chubby(&["put", "--if-generation", "1", "/ls/local/svc/web/master", "x"]).0, 8);
    assert_eq!(chubby(&["put", "--if-generation", "2", "/ls/local/svc/web/master", "10.0.0.2:80"]).0, 0);
    assert_eq!(chubby(&["put", "--if-generation", "0", "/ls/local/svc/web/master", "x"]).0, 1, "exists");
    assert_eq!(chubby(&["put", "--if-generation", "0", "/ls/local/svc/web/new", "first"]).0, 0);
    assert_eq!(chubby(&["get", "/ls/local/svc/web/new"]).1, "first\n");

    // Fencing from a script: the sequencer of a lock held by `chubby lock` fences a write while
    // it is held, and is stale (exit 7) once the command ended.
    let (code, seq) = chubby(&["lock", "/ls/local/svc/web/lock", "--", "sh", "-c", "echo $CHUBBY_SEQUENCER"]);
    assert_eq!(code, 0);
    let seq = seq.trim();
    assert_eq!(chubby(&["check-sequencer", seq]), (7, "stale\n".into()));
    assert_eq!(chubby(&["put", "--sequencer", seq, "/ls/local/svc/web/master", "x"]).0, 7);
    let script = format!(
        "{} check-sequencer $CHUBBY_SEQUENCER && {} put --sequencer $CHUBBY_SEQUENCER /ls/local/svc/web/master fenced",
        bin("chubby").display(),
        bin("chubby").display()
    );
    assert_eq!(chubby(&["lock", "/ls/local/svc/web/lock", "--", "sh", "-c", &script]).0, 0);
    assert_eq!(chubby(&["get", "/ls/local/svc/web/master"]).1, "fenced\n");
    // `chubby sequencer PATH` names the current holder's sequencer to any script; a free lock
    // has none (exit 1).
    let script = format!(
        "test \"$({} sequencer /ls/local/svc/web/lock)\" = \"$CHUBBY_SEQUENCER\" && echo same",
        bin("chubby").display()
    );
    assert_eq!(chubby(&["lock", "/ls/local/svc/web/lock", "--", "sh", "-c", &script]), (0, "same\n".into()));
    assert_eq!(chubby(&["sequencer", "/ls/local/svc/web/lock"]), (1, String::new()));

    // Not found, not empty, removal.
    assert_eq!(chubby(&["get", "/ls/local/nothing"]).0, 3);
    assert_eq!(chubby(&["rm", "/ls/local/svc"]).0, 1, "a directory must be empty");
    assert_eq!(chubby(&["rm", "/ls/local/svc/web/new"]).0, 0);
    assert_eq!(chubby(&["get", "/ls/local/svc/web/new"]).0, 3);
    assert_eq!(chubby(&["get", "relative/path"]).0, 2, "bad usage");

    // status: every replica with its lag behind the master and the cell's sessions (an
    // `elect`-style holder keeps one open while this runs).
    let mut holder = Command::new(bin("chubby"))
        .env("CHUBBY_CELL", cell.cell_arg())
        .args(["lock", "/ls/local/svc/web/lock", "--", "sh", "-c", "echo $$; exec sleep 600"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pids = Pids(vec![holder.id()]);
    let shell: u32 =
        lines_of(holder.stdout.take().unwrap()).recv_timeout(Duration::from_secs(30)).unwrap().parse().unwrap();
    pids.0.push(shell);
    // A node whose lock is held is not removed (exit 9), so no second holder gets in.
    assert_eq!(chubby(&["rm", "/ls/local/svc/web/lock"]).0, 9, "rm of a held lock's node");
    assert_eq!(chubby(&["lock", "--timeout", "0", "/ls/local/svc/web/lock", "--", "true"]).0, 4, "still held");
    let (code, json) = chubby(&["--json", "status"]);
    assert_eq!(code, 0);
    assert_eq!(json.matches("\"lag\":").count(), 3, "{json}");
    assert!(json.contains("\"leased_sessions\":1"), "the master leases the holder's session: {json}");
    // Its command ended, `chubby lock` releases the lock and exits (its session closed: no
    // lock-delay); then the node can go.
    pids.kill(shell);
    assert!(exit_within(&mut holder, Duration::from_secs(10)).is_some(), "chubby lock exits after its command");
    let mut removed = 9;
    for _ in 0..100 {
        removed = chubby(&["rm", "/ls/local/svc/web/lock"]).0;
        if removed != 9 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(removed, 0);
}

#[test]
fn elect_publishes_the_leader_and_the_next_one_takes_over() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let mut pids = Pids::default();
    let elect = |value: &str| {
        let mut c = Command::new(bin("chubby"))
            .env("CHUBBY_CELL", cell.cell_arg())
            .args([
                "elect",
                "/ls/local/leader",
                value,
                "--",
                "sh",
                "-c",
                &format!("echo {value} leads $$; exec sleep 600"),
            ])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start chubby elect");
        let out = lines_of(c.stdout.take().unwrap());
        (c, out)
    };
    let get = || {
        let out = Command::new(bin("chubby"))
            .env("CHUBBY_CELL", cell.cell_arg())
            .args(["get", "/ls/local/leader"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Each command prints its pid (the shell execs sleep), so the test can stop it by PID.
    let leads = |line: String, pids: &mut Pids| {
        let (what, pid) = line.rsplit_once(' ').expect("`NAME leads PID`");
        pids.0.push(pid.parse().expect("pid"));
        what.to_string()
    };
    let (mut a, a_out) = elect("alpha");
    pids.0.push(a.id());
    assert_eq!(leads(a_out.recv_timeout(Duration::from_secs(30)).unwrap(), &mut pids), "alpha leads");
    assert_eq!(get(), "alpha");
    let (b, b_out) = elect("beta");
    pids.0.push(b.id());
    assert!(b_out.recv_timeout(Duration::from_millis(1000)).is_err(), "one leader at a time");
    // The leader steps down (SIGTERM reaches its command; the lock is released on exit).
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(a.id() as libc::pid_t, libc::SIGTERM) };
    let _ = a.wait();
    assert_eq!(leads(b_out.recv_timeout(Duration::from_secs(30)).unwrap(), &mut pids), "beta leads");
    assert_eq!(get(), "beta");
}

#[test]
fn barrier_releases_all_n_together_and_stays_open() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let mut pids = Pids::default();
    let mut arrive = |name: &str| {
        let mut c = Command::new(bin("chubby"))
            .env("CHUBBY_CELL", cell.cell_arg())
            .args(["barrier", "/ls/local/start", "3", "--", "echo", name])
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start chubby barrier");
        pids.0.push(c.id());
        let out = lines_of(c.stdout.take().unwrap());
        (c, out)
    };
    let (mut a, a_out) = arrive("a");
    let (mut b, b_out) = arrive("b");
    assert!(a_out.recv_timeout(Duration::from_millis(1500)).is_err(), "2 of 3 at the barrier: nobody starts");
    assert!(b_out.try_recv().is_err());
    let (mut c, c_out) = arrive("c");
    for (out, name) in [(&a_out, "a"), (&b_out, "b"), (&c_out, "c")] {
        assert_eq!(out.recv_timeout(Duration::from_secs(30)).expect("released"), name);
    }
    // A late arrival finds the latch open.
    let (mut d, d_out) = arrive("d");
    assert_eq!(d_out.recv_timeout(Duration::from_secs(30)).expect("the barrier stays open"), "d");
    for p in [&mut a, &mut b, &mut c, &mut d] {
        assert!(p.wait().unwrap().success());
    }
}

#[test]
fn cached_reads_stay_linearizable_across_another_clients_writes() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(async {
        wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let path = "/ls/local/cached-config";
        let w = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let create = OpenOptions { create: true, contents: "v0".into(), ..OpenOptions::default() };
        let (hw, _) = w.open_node(path, create).await.unwrap();

        let r = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let (hr, first) = r.open_node(path, OpenOptions::default()).await.unwrap();
        let hits = r.cache_hits();
        let (again, _) = r.open_node(path, OpenOptions::default()).await.unwrap();
        assert_eq!(again, hr, "a re-open of a cached node gives the same handle");
        assert_eq!(r.cache_hits(), hits + 1, "and costs no RPC");
        assert_eq!(r.stat(&hr).await.unwrap().content_generation, first.content_generation);

        // The writer publishes, after each write returns, the generation it wrote. A read that
        // starts after that must see at least that generation, with the contents written there.
        let (done_tx, done_rx) = tokio::sync::watch::channel(0u64);
        let writer = tokio::spawn(async move {
            for i in 1..=100u64 {
                let st = w.set(&hw, format!("v{i}").into(), None, "").await.unwrap();
                done_tx.send_replace(st.content_generation);
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            w.close().await.unwrap();
        });
        let base = first.content_generation;
        let mut reads = 0u64;
        let mut last_seen = 0u64;
        while !writer.is_finished() {
            let floor = *done_rx.borrow();
            let (contents, st) = r.get(&hr).await.unwrap();
            reads += 1;
            assert!(
                st.content_generation >= floor,
                "read generation {} after write {floor} returned",
                st.content_generation
            );
            assert!(st.content_generation >= last_seen, "reads went back in time");
            last_seen = st.content_generation;
            assert_eq!(contents, format!("v{}", st.content_generation - base), "contents match their generation");
        }
        writer.await.unwrap();
        let (contents, _) = r.get(&hr).await.unwrap();
        assert_eq!(&contents[..], b"v100", "the last write is seen");
        let (_, _) = r.get(&hr).await.unwrap();
        assert!(r.cache_hits() > hits + 1, "reads were served from the cache ({reads} reads)");
        r.close().await.unwrap();
    });
}

#[test]
fn a_writer_caches_what_it_wrote_and_still_sees_every_later_write() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(async {
        wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let path = "/ls/local/write-through";
        let a = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let b = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let (ha, _) = a.open_node(path, OpenOptions { create: true, ..OpenOptions::default() }).await.unwrap();
        let (hb, _) = b.open_node(path, OpenOptions::default()).await.unwrap();
        for i in 0..20u64 {
            // Each writes in turn; each write is cached by its writer (its next read costs no
            // RPC) and invalidates the other, whose next read has it.
            let (writer, hw, reader, hr) = if i % 2 == 0 { (&a, &ha, &b, &hb) } else { (&b, &hb, &a, &ha) };
            let value = format!("v{i}");
            let st = writer.set(hw, value.clone().into(), None, "").await.unwrap();
            let hits = writer.cache_hits();
            let (own, own_st) = writer.get(hw).await.unwrap();
            assert_eq!((&own[..], own_st.content_generation), (value.as_bytes(), st.content_generation));
            assert_eq!(writer.cache_hits(), hits + 1, "write {i}: the writer's re-read is a cache hit");
            let (seen, _) = reader.get(hr).await.unwrap();
            assert_eq!(&seen[..], value.as_bytes(), "write {i}: the other session reads it");
            // A cached stat is refreshed too: the writer's own opens see the new generation.
            let (_, reopened) = writer.open_node(path, OpenOptions::default()).await.unwrap();
            assert_eq!(reopened.content_generation, st.content_generation);
        }
        a.close().await.unwrap();
        b.close().await.unwrap();
    });
}

#[test]
fn the_cell_is_found_from_a_cell_file_or_a_host_name_through_any_replica() {
    let cell = TestCell::start(CellOptions::default());
    let leader =
        runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    // Only a follower is named: discovery follows its redirect to the master.
    let follower = &cell.addrs[(leader % cell.addrs.len() as u64) as usize];
    let port = follower.rsplit_once(':').unwrap().1;
    let file = cell.dir.path().join("cell");
    std::fs::write(&file, format!("# one replica is enough\n{follower}\n")).unwrap();
    let chubby = |cell_arg: &str, args: &[&str]| {
        let out = Command::new(bin("chubby")).args(["--cell", cell_arg]).args(args).output().unwrap();
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(chubby(&format!("@{}", file.display()), &["put", "/ls/local/found", "yes"]).0, 0);
    // `localhost` resolves to 127.0.0.1 (and perhaps ::1, where nothing listens).
    assert_eq!(chubby(&format!("localhost:{port}"), &["get", "/ls/local/found"]), (0, "yes\n".into()));
    let missing = cell.dir.path().join("no-such-file");
    assert_eq!(chubby(&format!("@{}", missing.display()), &["get", "/ls/local/found"]).0, 2, "a usage error");
}

/// `chubby lock` run inside a network namespace whose link to the cell a test cuts.
fn lock_in(ns: &Netns, cell: &TestCell, args: &[&str]) -> std::process::Child {
    ns.command(&bin("chubby"))
        .args(["--cell", &cell.cell_arg()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chubby lock in the namespace")
}

fn netns(tag: u32) -> Netns {
    Netns::create(tag).unwrap_or_else(|e| panic!("this test needs root and iproute2 for a network namespace: {e}"))
}

/// What became of a `chubby lock` holder cut off from its cell, and of a client on the cell's
/// side that queued for the same lock right after the cut.
struct CutOff {
    /// The holder's exit status, if it exited within the limit.
    exit: Option<std::process::ExitStatus>,
    stderr: String,
    /// Whether the holder's command still runs once the holder exited.
    command_alive: bool,
    /// Since the cut: when the holder exited, and when the other client got the lock.
    stopped: Duration,
    granted: Duration,
    other_succeeded: bool,
}

/// Runs `chubby --grace GRACE lock --lock-delay DELAY PATH` in network namespace `tag` against
/// a cell with 1 s leases, cuts the namespace off once it holds the lock, and watches.
fn cut_off_holder(tag: u32, grace: &str, lock_delay: &str, path: &str, exit_limit: Duration) -> CutOff {
    let ns = netns(tag);
    let cell =
        TestCell::start(CellOptions { session_lease_ms: 1000, host: ns.host_ip.clone(), ..CellOptions::default() });
    runtime().block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let mut pids = Pids::default();
    let mut holder = lock_in(
        &ns,
        &cell,
        &["--grace", grace, "lock", "--lock-delay", lock_delay, path, "--", "sh", "-c", "echo $$; exec sleep 600"],
    );
    pids.0.push(holder.id());
    let shell: u32 = lines_of(holder.stdout.take().unwrap())
        .recv_timeout(Duration::from_secs(30))
        .expect("the holder got the lock")
        .parse()
        .unwrap();
    pids.0.push(shell);

    ns.cut().unwrap();
    let cut = Instant::now();
    // Another client, on the cell's side, queues for the lock.
    let mut other = Command::new(bin("chubby"))
        .args(["--cell", &cell.cell_arg(), "lock", path, "--", "echo", "granted"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    pids.0.push(other.id());
    let other_out = lines_of(other.stdout.take().unwrap());

    let exit = exit_within(&mut holder, exit_limit);
    let stopped = cut.elapsed();
    let mut stderr = String::new();
    if exit.is_some() {
        std::io::Read::read_to_string(&mut holder.stderr.take().unwrap(), &mut stderr).unwrap();
    }
    // SAFETY: kill(2) with signal 0 only checks whether the process exists.
    let command_alive = unsafe { libc::kill(shell as libc::pid_t, 0) } == 0;
    assert_eq!(other_out.recv_timeout(Duration::from_secs(30)).expect("the other client gets the lock"), "granted");
    let granted = cut.elapsed();
    let other_succeeded = exit_within(&mut other, Duration::from_secs(10)).is_some_and(|s| s.success());
    CutOff { exit, stderr, command_alive, stopped, granted, other_succeeded }
}

#[test]
fn a_client_cut_off_past_its_grace_period_loses_the_session_and_its_command_stops_first() {
    let r = cut_off_holder(1, "2s", "8s", "/ls/local/cut", Duration::from_secs(30));
    let st = r.exit.expect("chubby lock gives up on its session");
    assert_eq!(st.code(), Some(6), "exit code 6: session lost");
    assert!(r.stderr.contains("session lost"), "{}", r.stderr);
    assert!(!r.command_alive, "the command was stopped");
    assert!(
        r.stopped < r.granted,
        "the cut-off holder's command ran until {:?}, after the lock went to another client at {:?}",
        r.stopped,
        r.granted
    );
    assert!(r.other_succeeded);
}

#[test]
fn with_no_lock_delay_a_cut_off_holder_stops_its_command_when_its_lease_ends() {
    // A long grace period: the session is not given up, but with lock-delay 0 the lock may go
    // to another client as soon as the master's lease runs out, so the command must stop then.
    let r = cut_off_holder(2, "60s", "0", "/ls/local/cut0", Duration::from_secs(20));
    let st = r.exit.expect("chubby lock stops at the end of its lease");
    assert_eq!(st.code(), Some(6));
    assert!(r.stderr.contains("jeopardy"), "{}", r.stderr);
    assert!(r.stopped < r.granted);
}

#[test]
fn a_set_contents_whose_answer_is_lost_is_applied_exactly_once() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(async {
        let leader = wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let proxy = Proxy::start(cell.addrs[(leader - 1) as usize].clone()).await;
        // The client knows the cell only through the proxy (the master itself: no redirect).
        let s = Session::open(vec![proxy.addr.clone()], opts()).await.unwrap();
        let create = OpenOptions { create: true, contents: "v1".into(), ..OpenOptions::default() };
        let (h, first) = s.open_node("/ls/local/once", create).await.unwrap();

        let observer = Session::open(cell.addrs.clone(), SessionOptions { cache: false, ..opts() }).await.unwrap();
        let (ho, _) = observer.open_node("/ls/local/once", OpenOptions::default()).await.unwrap();

        proxy.hold_answers();
        let (s2, h2) = (s.clone(), h.clone());
        let write = tokio::spawn(async move { s2.set(&h2, "v2".into(), None, "").await });
        let applied = || async { observer.get(&ho).await.unwrap().1.content_generation > first.content_generation };
        let st = lose_the_answer(&proxy, write, applied, "write").await.expect("the retried write succeeds");
        assert_eq!(st.content_generation, first.content_generation + 1, "the retry got the first application's answer");
        let (contents, now) = observer.get(&ho).await.unwrap();
        assert_eq!(&contents[..], b"v2");
        assert_eq!(now.content_generation, first.content_generation + 1, "applied exactly once");
    });
}

/// Waits until `applied` says the cell applied the `what` call running in `call`, whose answer
/// `proxy` holds back; then drops the connection with that answer in it and returns what the
/// client's retry got.
async fn lose_the_answer<T, A, F>(proxy: &Proxy, call: tokio::task::JoinHandle<T>, applied: A, what: &str) -> T
where
    A: Fn() -> F,
    F: std::future::Future<Output = bool>,
{
    let reached = tokio::time::timeout(Duration::from_secs(20), async {
        while !applied().await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "the {what} reached the cell");
    assert!(!call.is_finished(), "its answer has not reached the client");
    proxy.cut_and_release();
    tokio::time::timeout(Duration::from_secs(30), call).await.expect("the client retries and gets an answer").unwrap()
}

/// The sessions in the cell's state, as its master reports them.
async fn cell_sessions(client: &fuse_mount::client::CellClient) -> Option<u64> {
    client.status_all().await.into_iter().filter_map(|(_, r)| r.ok()).find(|s| s.id == s.leader_id).map(|s| s.sessions)
}

/// A session open whose answer is lost (a TCP proxy holds it back, then drops the
/// connection) is retried with the same open id: the client gets the session the cell
/// created, and the cell holds that one session, not an orphan beside it.
#[test]
fn a_session_open_whose_answer_is_lost_creates_one_session() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(async {
        let admin = cell.client(Duration::from_secs(5));
        let leader = wait_converged(&admin, 0, Duration::from_secs(30)).await.unwrap();
        let before = cell_sessions(&admin).await.expect("the master answers");
        let proxy = Proxy::start(cell.addrs[(leader - 1) as usize].clone()).await;
        proxy.hold_answers();
        let addrs = vec![proxy.addr.clone()];
        let open = tokio::spawn(async move { Session::open(addrs, opts()).await });
        let created = || async { cell_sessions(&admin).await == Some(before + 1) };
        let s = lose_the_answer(&proxy, open, created, "open").await.expect("the retried open succeeds");
        assert_eq!(cell_sessions(&admin).await, Some(before + 1), "one session, no orphan");
        // And it is the session the client holds: it works.
        let create = OpenOptions { create: true, contents: "x".into(), ..OpenOptions::default() };
        s.open_node("/ls/local/opened-once", create).await.unwrap();
    });
}

/// A raw session stream at `master`: its client, sender, inbound stream and first grant.
async fn raw_session(
    master: &str,
    resume: Option<&LeaseGrant>,
) -> (
    ChubbyClient<tonic::transport::Channel>,
    tokio::sync::mpsc::Sender<SessionRequest>,
    tonic::Streaming<SessionResponse>,
    LeaseGrant,
) {
    let mut c = ChubbyClient::connect(format!("http://{master}")).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let open = OpenSession {
        resume_session: resume.map_or(0, |g| g.session),
        principal: "raw".into(),
        session_token: resume.map(|g| g.session_token.clone()).unwrap_or_default(),
        open_id: 0,
        resubscribe: Vec::new(),
    };
    tx.send(SessionRequest { kind: Some(session_request::Kind::Open(open)) }).await.unwrap();
    let mut inbound = c.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    let grant = loop {
        if let Some(session_response::Kind::Lease(g)) = inbound.message().await.unwrap().unwrap().kind {
            break g;
        }
    };
    (c, tx, inbound, grant)
}

async fn keep_alive(tx: &tokio::sync::mpsc::Sender<SessionRequest>, session: u64) {
    let ka = KeepAlive { session, more_sessions: Vec::new() };
    tx.send(SessionRequest { kind: Some(session_request::Kind::KeepAlive(ka)) }).await.unwrap();
}

/// The next lease grant (or the error that ended the stream), skipping events.
async fn next_grant(inbound: &mut tonic::Streaming<SessionResponse>) -> Result<LeaseGrant, tonic::Status> {
    loop {
        match inbound.message().await {
            Ok(Some(SessionResponse { kind: Some(session_response::Kind::Lease(g)) })) => return Ok(g),
            Ok(Some(_)) => {}
            Ok(None) => return Err(tonic::Status::cancelled("stream ended")),
            Err(s) => return Err(s),
        }
    }
}

#[test]
fn only_the_stream_a_session_is_attached_to_keeps_it_alive() {
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(async {
        let leader = wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let master = cell.addrs[(leader - 1) as usize].clone();
        let (_a, tx_a, mut in_a, grant) = raw_session(&master, None).await;
        // The session resumes on a second stream (as after a master's brief loss of office):
        // the first stream no longer speaks for it.
        let (_b, tx_b, mut in_b, _) = raw_session(&master, Some(&grant)).await;
        keep_alive(&tx_a, grant.session).await;
        let refused = tokio::time::timeout(Duration::from_secs(10), next_grant(&mut in_a)).await.unwrap();
        assert_eq!(refused.expect_err("the old stream is refused").code(), Code::Unavailable);
        keep_alive(&tx_b, grant.session).await;
        let g = tokio::time::timeout(Duration::from_secs(10), next_grant(&mut in_b)).await.unwrap();
        assert_eq!(g.expect("the attached stream is granted").session, grant.session);
    });
}

#[test]
fn a_session_that_owes_an_invalidation_ack_gets_no_lease_extension() {
    let cell = TestCell::start(CellOptions { session_lease_ms: 3000, ..CellOptions::default() });
    runtime().block_on(async {
        let leader = wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let master = cell.addrs[(leader - 1) as usize].clone();
        let w = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let create = OpenOptions { create: true, contents: "v1".into(), ..OpenOptions::default() };
        let (hw, _) = w.open_node("/ls/local/owed", create).await.unwrap();

        let (mut c, tx, mut inbound, grant) = raw_session(&master, None).await;
        let open = OpenRequest {
            request: Some(RequestId { session: grant.session, sequence: 1, first_incomplete: 1 }),
            path: "/ls/local/owed".into(),
            session_token: grant.session_token.clone(),
            ..OpenRequest::default()
        };
        let h = c.open(open).await.unwrap().into_inner().handle;
        let r = c.get_contents_and_stat(GetContentsRequest { handle: h, stale_ok: false }).await.unwrap().into_inner();
        assert!(r.cacheable);

        let (w2, hw2) = (w.clone(), hw.clone());
        let write = tokio::spawn(async move { w2.set(&hw2, "v2".into(), None, "").await });
        let id = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(session_response::Kind::Invalidation(i)) = inbound.message().await.unwrap().unwrap().kind {
                    return i.invalidation_id;
                }
            }
        })
        .await
        .expect("the cacher is sent an invalidation");
        keep_alive(&tx, grant.session).await;
        let g = next_grant(&mut inbound).await.unwrap();
        assert!(g.lease_ms < 3000, "a KeepAlive while owing an ack must not extend the lease ({} ms)", g.lease_ms);
        assert!(!write.is_finished(), "the write waits for the ack");

        let ack = InvalidationAck { invalidation_id: id };
        tx.send(SessionRequest { kind: Some(session_request::Kind::InvalidationAck(ack)) }).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), write).await.unwrap().unwrap().unwrap();
        keep_alive(&tx, grant.session).await;
        assert_eq!(next_grant(&mut inbound).await.unwrap().lease_ms, 3000, "acked: a full lease again");
    });
}

/// A mount keeps nothing for a user whose idle session it closed: a long-running mount that
/// many users pass through does not grow by one entry per user.
#[test]
fn a_mount_forgets_users_whose_idle_sessions_it_closed() {
    let cell = TestCell::start(CellOptions::default());
    let rt = runtime();
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    let mounted = rt
        .block_on(fuse_mount::fs::MountedCell::open(
            "local".into(),
            cell.addrs.clone(),
            opts(),
            Some(Duration::from_millis(300)),
        ))
        .expect("the mount's own session opens");
    for uid in 60_000..60_020 {
        rt.block_on(mounted.session(uid)).expect("a user's session opens");
    }
    assert_eq!(mounted.users_tracked().0, 21, "the mount's own user and 20 others");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tracked = mounted.users_tracked();
    while tracked.0 > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        tracked = mounted.users_tracked();
    }
    // The idle check runs every 100 ms; one more pass is enough for what goes with a session.
    std::thread::sleep(Duration::from_millis(300));
    let (sessions, used, gates) = mounted.users_tracked();
    assert_eq!(sessions, 1, "only the mount's own user keeps a session");
    assert!(used <= 1 && gates <= 1, "{used} use times and {gates} gates kept for users without a session");
    rt.block_on(mounted.close());
}

/// `Calls`: a session's calls multiplexed on one stream are each answered under their own id
/// exactly as their unary forms: the answer, or the refusal with its reason and redirect.
#[test]
fn calls_on_one_stream_are_answered_by_id_like_their_unary_forms() {
    use fuse_mount::proto::chubby::{call, call_result, Call, CallResult};
    let cell = TestCell::start(CellOptions::default());
    runtime().block_on(async {
        let leader = wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let master = cell.addrs[(leader - 1) as usize].clone();
        let (mut c, _tx, _inbound, grant) = raw_session(&master, None).await;
        let (calls, rx) = tokio::sync::mpsc::unbounded_channel::<Call>();
        let mut answers = c.calls(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut next = async || -> CallResult {
            tokio::time::timeout(Duration::from_secs(20), answers.message()).await.unwrap().unwrap().unwrap()
        };
        let epoch = Some(grant.epoch);
        let open = OpenRequest {
            request: Some(RequestId { session: grant.session, sequence: 1, first_incomplete: 1 }),
            path: "/ls/local/calls".into(),
            create: true,
            initial_contents: "hello".into(),
            session_token: grant.session_token.clone(),
            ..OpenRequest::default()
        };
        calls.send(Call { id: 1, epoch, kind: Some(call::Kind::Open(open)), abandon: false }).unwrap();
        let opened = next().await;
        assert_eq!((opened.id, opened.code), (1, 0), "{opened:?}");
        let Some(call_result::Kind::Open(o)) = opened.kind else { panic!("{opened:?}") };
        let handle = o.handle.unwrap();

        // Many reads in flight at once, each answered once under its id.
        for id in 100..150 {
            let read = GetContentsRequest { handle: Some(handle.clone()), stale_ok: false };
            calls.send(Call { id, epoch, kind: Some(call::Kind::GetContentsAndStat(read)), abandon: false }).unwrap();
        }
        let mut seen = std::collections::BTreeSet::new();
        for _ in 100..150 {
            let r = next().await;
            let Some(call_result::Kind::GetContentsAndStat(g)) = &r.kind else { panic!("{r:?}") };
            assert_eq!(&g.contents[..], b"hello");
            assert!(seen.insert(r.id), "answered twice: {}", r.id);
        }
        assert_eq!(seen, (100..150).collect(), "every call answered under its own id");

        // Refusals carry what a unary call's status would: code, message, reason, redirect.
        calls.send(Call { id: 2, epoch, kind: None, abandon: false }).unwrap();
        let r = next().await;
        assert_eq!((r.id, r.code), (2, Code::InvalidArgument as i32), "{r:?}");
        let mut forged = handle.token.to_vec();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let stat = GetStatRequest { handle: Some(Handle { token: forged.into(), ..Default::default() }) };
        calls.send(Call { id: 3, epoch, kind: Some(call::Kind::GetStat(stat)), abandon: false }).unwrap();
        let r = next().await;
        assert_eq!((r.id, r.code), (3, Code::PermissionDenied as i32), "{r:?}");
        assert!(r.metadata.contains_key(ERROR_METADATA), "{r:?}");
        let stat = GetStatRequest { handle: Some(handle.clone()) };
        calls
            .send(Call { id: 4, epoch: Some(grant.epoch - 1), kind: Some(call::Kind::GetStat(stat)), abandon: false })
            .unwrap();
        let r = next().await;
        assert_eq!((r.id, r.code), (4, Code::FailedPrecondition as i32), "{r:?}");
        assert_eq!(r.metadata.get(ERROR_METADATA).map(String::as_str), Some("StaleEpoch"), "{r:?}");

        // An Acquire waiting behind another session's lock, then abandoned by the client: its
        // wait is stopped (as a reset unary call's), so no answer ever comes for it.
        let holder = Session::open(cell.addrs.clone(), opts()).await.unwrap();
        let (hh, _) = holder.open_node("/ls/local/calls", OpenOptions::default()).await.unwrap();
        holder.acquire(&hh, LockMode::LockExclusive, 1, None).await.unwrap();
        let acquire = fuse_mount::proto::chubby::AcquireRequest {
            request: Some(RequestId { session: grant.session, sequence: 2, first_incomplete: 2 }),
            handle: Some(handle.clone()),
            mode: LockMode::LockExclusive as i32,
            owner: 7,
            lock_delay_ms: None,
        };
        calls.send(Call { id: 20, epoch, kind: Some(call::Kind::Acquire(acquire)), abandon: false }).unwrap();
        // Time to be queued in the cell (either way, once abandoned no answer may come).
        tokio::time::sleep(Duration::from_millis(300)).await;
        calls.send(Call { id: 20, abandon: true, ..Call::default() }).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        holder.release(&hh, 1).await.unwrap();
        let stat = GetStatRequest { handle: Some(handle.clone()) };
        calls.send(Call { id: 21, epoch, kind: Some(call::Kind::GetStat(stat)), abandon: false }).unwrap();
        let r = next().await;
        assert_eq!((r.id, r.code), (21, 0), "the abandoned Acquire got no answer: {r:?}");
    });
}
