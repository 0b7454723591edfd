//! Session leases (Chubby §2.8): a paused master, KeepAlives on the wrong stream, and a session that owes an invalidation ack.

use super::*;

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
