//! A lock's holder dies or its master fails over: the lock passes on only after its lease and lock-delay, and sessions, locks and waiters survive a failover.

use super::*;

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
