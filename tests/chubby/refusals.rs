//! Bad requests: each gets a clear refusal with its reason, and nothing changes.

use super::*;

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
        // An append past the limit is refused whole.
        let long_append = a.append(&h, vec![0u8; (256 << 10) - 1].into(), "").await.unwrap_err();
        assert_eq!(reason(long_append), (Code::ResourceExhausted, "TooLarge".into()));
        assert_eq!(&a.get(&h).await.unwrap().0[..], b"v1");
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
