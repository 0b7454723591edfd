//! A multi-process cell on loopback: start-up in any order, a replica catching up by snapshot,
//! clean shutdown, and `cell-server local` as a user runs it.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::{bin, wait_converged, CellOptions, LocalCell, TestCell};
use fuse_mount::client::{ClientError, PutPipeline};
use proto::cell::{GetRequest, ListRequest, PipelinedPut, PutRequest};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Replicas may start in any order and at different times; a majority is enough to write and
/// a late replica catches up. A dead peer does not block the others.
#[test]
fn replicas_start_in_any_order_and_a_majority_serves() {
    let rt = rt();
    let mut cell = TestCell::new(CellOptions::default());
    cell.start_replica(3);
    let mut client = cell.client(Duration::from_millis(800));
    assert!(rt.block_on(client.put("k", Bytes::from_static(b"v"))).is_err(), "one replica of three cannot commit");
    std::thread::sleep(Duration::from_millis(500));
    cell.start_replica(1);
    let mut client = cell.client(Duration::from_secs(10));
    let rev = rt.block_on(client.put("k", Bytes::from_static(b"v1"))).expect("a majority commits");
    for i in 0..50 {
        rt.block_on(client.put(&format!("k{i}"), Bytes::from(format!("{i}")))).unwrap();
    }
    cell.start_replica(2);
    rt.block_on(wait_converged(&client, rev + 50, Duration::from_secs(20))).unwrap();
    let got = rt.block_on(client.get("k", false)).unwrap();
    assert_eq!(got.value, Bytes::from_static(b"v1"));
}

/// A replica that was down while the leader compacted its log is brought up to date with a
/// snapshot streamed over InstallSnapshot, and survives a restart from that snapshot.
#[test]
fn lagging_replica_catches_up_by_snapshot() {
    let rt = rt();
    let mut cell = TestCell::start(CellOptions { snapshot_entries: 50, ..CellOptions::default() });
    let mut client = cell.client(Duration::from_secs(10));
    rt.block_on(client.put("first", Bytes::from_static(b"1"))).unwrap();
    let leader = rt.block_on(wait_converged(&client, 0, Duration::from_secs(10))).unwrap();
    let lagger = if leader == 3 { 2 } else { 3 };
    cell.kill(lagger);
    let mut last = 0;
    for i in 0..400u32 {
        last = rt.block_on(client.put(&format!("k{i:04}"), Bytes::from(vec![b'x'; 200]))).unwrap();
    }
    cell.start_replica(lagger);
    rt.block_on(wait_converged(&client, last, Duration::from_secs(20))).unwrap();
    let addr = cell.addrs[(lagger - 1) as usize].clone();
    let status = rt.block_on(client.status_all());
    let s = status.iter().find(|(a, _)| *a == addr).unwrap().1.as_ref().unwrap();
    assert!(s.snapshot_index > 0, "the lagging replica should hold a snapshot: {s:?}");
    let list = |client: &mut fuse_mount::client::CellClient| {
        rt.block_on(
            client.at(&addr, |mut c| async move { c.list(ListRequest { prefix: "k".into(), stale: true }).await }),
        )
        .unwrap()
    };
    assert_eq!(list(&mut client).items.len(), 400);
    // Restart it from its own snapshot + log.
    cell.kill(lagger);
    cell.start_replica(lagger);
    rt.block_on(wait_converged(&client, last, Duration::from_secs(20))).unwrap();
    assert_eq!(list(&mut client).items.len(), 400);
}

/// SIGTERM on the leader hands leadership over before exiting, and the cell keeps serving.
#[test]
fn sigterm_on_leader_hands_over_and_exits_cleanly() {
    let rt = rt();
    let mut cell = TestCell::start(CellOptions::default());
    let mut client = cell.client(Duration::from_secs(10));
    rt.block_on(client.put("a", Bytes::from_static(b"1"))).unwrap();
    let leader = rt.block_on(wait_converged(&client, 0, Duration::from_secs(10))).unwrap();
    let status = cell.terminate(leader).expect("replica exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    assert!(cell.log(leader).contains("leadership handed over"), "{}", cell.log(leader));
    rt.block_on(client.put("b", Bytes::from_static(b"2"))).expect("the other two keep serving");
    let got = rt.block_on(client.get("a", false)).unwrap();
    assert_eq!(got.value, Bytes::from_static(b"1"));
}

/// Followers redirect: a client that knows only one follower still reaches the leader.
#[test]
fn any_one_replica_is_enough() {
    let rt = rt();
    let cell = TestCell::start(CellOptions::default());
    let probe = cell.client(Duration::from_secs(10));
    let leader = rt.block_on(wait_converged(&probe, 0, Duration::from_secs(10))).unwrap();
    let follower = if leader == 1 { 2 } else { 1 };
    let mut client =
        fuse_mount::client::CellClient::new(vec![cell.addrs[(follower - 1) as usize].clone()], Duration::from_secs(10))
            .unwrap();
    rt.block_on(client.put("x", Bytes::from_static(b"y"))).unwrap();
    let follower_addr = cell.addrs[(follower - 1) as usize].clone();
    // A linearizable read on a follower is refused with a redirect, not served stale.
    let err = rt
        .block_on(
            client.at(&follower_addr, |mut c| async move { c.get(GetRequest { key: "x".into(), stale: false }).await }),
        )
        .unwrap_err();
    assert!(err.to_string().contains("not the leader"), "{err}");
}

/// Many writes in flight on one `PutPipeline` stream are each applied and answered with their
/// own revision; a broken message gets its own refusal and the stream goes on; a follower
/// refuses with the leader's address, as for a unary call.
#[test]
fn pipelined_puts_are_each_applied_and_answered() {
    let rt = rt();
    let cell = TestCell::start(CellOptions::default());
    let mut client = cell.client(Duration::from_secs(10));
    let leader = rt.block_on(wait_converged(&client, 0, Duration::from_secs(10))).unwrap();
    let leader_addr = cell.addrs[(leader - 1) as usize].clone();
    let connect = |addr: &str| {
        let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
        rt.block_on(ep.connect()).unwrap()
    };
    let pipe = std::sync::Arc::new(rt.block_on(PutPipeline::open(connect(&leader_addr))).unwrap());
    let revisions: Vec<u64> = rt.block_on(async {
        let puts: Vec<_> = (0..200)
            .map(|i| {
                let pipe = pipe.clone();
                tokio::spawn(async move { pipe.put(&format!("p/{i}"), Bytes::from(format!("value {i}"))).await })
            })
            .collect();
        let mut out = Vec::new();
        for p in puts {
            out.push(p.await.unwrap().expect("a pipelined put is applied"));
        }
        out
    });
    let distinct: std::collections::BTreeSet<u64> = revisions.iter().copied().collect();
    assert_eq!(distinct.len(), 200, "each write has its own log index");
    for i in [0, 57, 199] {
        let got = rt.block_on(client.get(&format!("p/{i}"), false)).unwrap();
        assert_eq!(got.value, Bytes::from(format!("value {i}")));
        assert_eq!(got.revision, revisions[i], "the answer names the write's own revision");
    }

    // A message without its put is refused on its own; the next one on the stream is applied.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut raw = proto::cell::cell_client::CellClient::new(connect(&leader_addr));
    let mut answers =
        rt.block_on(raw.put_pipeline(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))).unwrap().into_inner();
    tx.send(PipelinedPut { id: 7, put: None }).unwrap();
    let refused = rt.block_on(answers.message()).unwrap().unwrap();
    assert_eq!((refused.id, refused.code), (7, tonic::Code::InvalidArgument as i32), "{refused:?}");
    let put = PutRequest { key: "after".into(), value: Bytes::from_static(b"ok") };
    tx.send(PipelinedPut { id: 8, put: Some(put) }).unwrap();
    let applied = rt.block_on(answers.message()).unwrap().unwrap();
    assert_eq!((applied.id, applied.code), (8, 0), "{applied:?}");
    assert!(applied.revision > 0);
    drop(tx);
    assert!(rt.block_on(answers.message()).unwrap().is_none(), "the stream ends when the client closes its side");

    // A value over the contents limit and a path that is not one are refused at once, each
    // with its reason, as a unary put's would be; the stream goes on.
    let big = rt.block_on(pipe.put("big", Bytes::from(vec![0u8; (256 << 10) + 1]))).unwrap_err();
    assert_eq!(big.reason(), Some(fuse_mount::proto::Refusal::TooLarge), "{big}");
    let bad = rt.block_on(pipe.put("a//b", Bytes::from_static(b"x"))).unwrap_err();
    assert_eq!(bad.reason(), Some(fuse_mount::proto::Refusal::InvalidArgument), "{bad}");
    assert!(!rt.block_on(client.get("big", false)).unwrap().found, "nothing was written");
    rt.block_on(pipe.put("p/0", Bytes::from_static(b"again"))).expect("the pipeline still serves");

    // A follower's pipeline refuses with a redirect to the leader.
    let follower = if leader == 1 { 2 } else { 1 };
    let at_follower = rt.block_on(PutPipeline::open(connect(&cell.addrs[(follower - 1) as usize]))).unwrap();
    let err = rt.block_on(at_follower.put("nope", Bytes::from_static(b"x"))).unwrap_err();
    let ClientError::Rpc(status) = &err else { panic!("{err}") };
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{err}");
    assert_eq!(status.metadata().get(proto::LEADER_METADATA).unwrap().to_str().unwrap(), leader_addr);
}

/// The README's main job: `cell-server local` starts a cell, prints its addresses, serves the
/// `chubby` CLI, and stops every replica on SIGTERM.
#[test]
fn cell_server_local_starts_serves_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let LocalCell { child: mut local, lines, cell, output: _output, env } = LocalCell::start(dir.path(), &[]);
    assert_eq!(env.len(), 3, "it prints the certificate lines a client needs: {lines:?}");
    assert!(lines[0].contains("is up"), "{lines:?}");
    let pids: Vec<i32> = lines
        .iter()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "pid").nth(1))
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "{lines:?}");

    let chubby = |args: &[&str]| {
        Command::new(bin("chubby")).env("CHUBBY_CELL", &cell).envs(env.clone()).args(args).output().unwrap()
    };
    let put = chubby(&["put", "/ls/local/greeting", "hello"]);
    assert!(put.status.success(), "{put:?}");
    let get = chubby(&["get", "/ls/local/greeting"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout), "hello\n");
    let missing = chubby(&["get", "/ls/local/nothing-here"]);
    assert_eq!(missing.status.code(), Some(3), "not found has its own exit code");
    let status = chubby(&["status"]);
    let table = String::from_utf8_lossy(&status.stdout);
    assert_eq!(table.lines().filter(|l| l.contains("leader ")).count(), 1, "{table}");

    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(local.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut exited = None;
    while exited.is_none() && Instant::now() < deadline {
        exited = local.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    if exited.is_none() {
        let _ = local.kill();
        let _ = local.wait();
        panic!("cell-server local did not stop on SIGTERM");
    }
    for pid in pids {
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "replica pid {pid} still running after the cell stopped");
    }
}
