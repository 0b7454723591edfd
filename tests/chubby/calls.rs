//! `Chubby.Calls`: many calls on one stream, each answered by id exactly as its unary form.

use super::*;

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
            convert: false,
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
