//! Events (Chubby §2.5): watchers see contents, children and locks change, and `chubby watch` reports a gap rather than silence across a failover or a cut stream.

use super::*;

/// The status of the replica that is the master.
async fn master_status(client: &fuse_mount::client::CellClient) -> fuse_mount::proto::cell::StatusResponse {
    let all = e2e_tests::statuses(client).await;
    all.into_iter().filter_map(|(_, r)| r.ok()).find(|s| s.role == "leader").expect("a master")
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
    let (mut watch, lines) = watch_watched(&cell.cell_arg());
    let mut pids = Pids(vec![watch.id()]);
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
    assert!(prints_a_change(&chubby, &lines), "chubby watch printed a change before the failover");

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
    let (mut watch, lines) = watch_watched(&proxy.addr);
    let mut pids = Pids(vec![watch.id()]);
    assert!(prints_a_change(&chubby, &lines), "chubby watch printed a change before the cut");
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

/// Writes `/ls/local/watched` again and again (at most 50 times) until `chubby watch` prints
/// a change: whether it did, which also says its watch is registered.
fn prints_a_change(chubby: &impl Fn(&[&str]) -> i32, lines: &std::sync::mpsc::Receiver<String>) -> bool {
    for i in 0..50 {
        assert_eq!(chubby(&["put", "/ls/local/watched", &format!("before-{i}")]), 0);
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(300)) {
            assert!(line.starts_with("modified /ls/local/watched"), "{line}");
            return true;
        }
    }
    false
}

/// `chubby watch /ls/local/watched` at the cell `addrs`, and its output lines.
fn watch_watched(addrs: &str) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut watch = Command::new(bin("chubby"))
        .env("CHUBBY_CELL", addrs)
        .args(["watch", "/ls/local/watched"])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(watch.stdout.take().unwrap());
    (watch, lines)
}
