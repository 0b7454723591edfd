//! Client caches (Chubby §2.5): a write waits for every cacher's ack or the end of its lease, and cached reads stay linearizable.

use super::*;

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
