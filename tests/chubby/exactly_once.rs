//! Calls whose answers are lost are retried with the same request id and applied once.

use super::*;

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
