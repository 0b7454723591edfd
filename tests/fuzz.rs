//! Bad input at every door of a replica: random and adversarial messages for every method of
//! the Chubby service (unary, on the multiplexed `Calls` stream, and on the session stream) and
//! of the operator's Cell service, and garbage on the port (peer frames and HTTP/2). A replica
//! must never fail: every bad call gets an error that says what is wrong, and
//! - with forged credentials (a random or altered handle, session token or session id) nothing
//!   changes at all: the namespace and the sessions are as before;
//! - with the credentials of a real session and random everything else, whatever the calls
//!   changed, the replicas still agree on one state and the cell goes on serving.
//!
//! `CHUBBY_FUZZ_CALLS` sets the calls per phase (1,500 by default, as in CI; `CHUBBY_LONG=1`:
//! 50,000); `CHUBBY_FUZZ_SEED` replays a run.

// tonic's calls and streams answer with `Status` by value.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use e2e_tests::{wait_converged, CellOptions, Rng, TestCell};
use fuse_mount::proto::chubby::chubby_client::ChubbyClient;
use fuse_mount::proto::chubby::{
    call, session_request, session_response, AcquireRequest, AppendRequest, Call, CancelRequest, CheckSequencerRequest,
    CloseRequest, CloseSessionRequest, DeleteRequest, GetContentsRequest, GetSequencerRequest, GetStatRequest, Handle,
    InvalidationAck, KeepAlive, OpenRequest, OpenSession, ReadDirRequest, ReleaseRequest, RenameRequest, RequestId,
    SessionRequest, SetAclRequest, SetContentsRequest,
};
use proto::cell::ListRequest;
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;
use tonic::Code;

fn calls() -> usize {
    if let Ok(n) = std::env::var("CHUBBY_FUZZ_CALLS") {
        return n.parse().expect("CHUBBY_FUZZ_CALLS is a number");
    }
    if std::env::var("CHUBBY_LONG").is_ok_and(|v| v == "1") {
        50_000
    } else {
        1_500
    }
}

/// Makes random calls. With `forged`, every credential is random or an altered real one.
struct Gen {
    rng: Rng,
    forged: bool,
    session: u64,
    session_token: Bytes,
    handles: Vec<Handle>,
    sequencers: Vec<String>,
}

impl Gen {
    fn pick<T: Clone>(&mut self, from: &[T]) -> T {
        from[self.rng.below(from.len() as u64) as usize].clone()
    }

    fn string(&mut self) -> String {
        match self.rng.below(8) {
            0 => self
                .pick(&[
                    "",
                    "/",
                    "/ls",
                    "/ls/local",
                    "/ls/local/",
                    "/ls/local/fz/a",
                    "/ls/local/fz",
                    "/ls/local/fz/../fz/a",
                    "/ls/local/./x",
                    "/ls/local//x",
                    "/ls/other/x",
                    "ls/local/x",
                    "/ls/local/x\0y",
                    "/ls/local/\u{202e}gnp.exe",
                    "*",
                    "seq1:1:1:1:x:1:1:/fz/a",
                    "seq1:",
                    "seq1:99999999999999999999999:1:1:x:1:1:/a",
                ])
                .to_string(),
            1 => format!("/ls/local/{}", "n".repeat(self.rng.below(400) as usize)),
            2 => format!("/ls/local{}", "/d".repeat(1 + self.rng.below(80) as usize)),
            3 => {
                let real = self.sequencers.first().cloned().unwrap_or_default();
                self.alter_str(&real)
            }
            4 => (0..self.rng.below(40))
                .map(|_| char::from_u32(self.rng.below(0x11_0000) as u32).unwrap_or('?'))
                .collect(),
            5 => format!("/ls/local/fz/{}", self.rng.below(1000)),
            _ => (0..self.rng.below(30)).map(|_| (b' ' + self.rng.below(95) as u8) as char).collect(),
        }
    }

    /// `s` with one byte replaced by a different digit.
    fn alter_str(&mut self, s: &str) -> String {
        let mut b = s.as_bytes().to_vec();
        if !b.is_empty() {
            let i = self.rng.below(b.len() as u64) as usize;
            let d = b'0' + self.rng.below(10) as u8;
            b[i] = if d == b[i] { b'0' + (d - b'0' + 1) % 10 } else { d };
        }
        String::from_utf8_lossy(&b).into_owned()
    }

    fn bytes(&mut self) -> Bytes {
        let len = match self.rng.below(6) {
            0 => 0,
            1 => (256 << 10) + 1,
            2 => self.rng.below(1 << 16) as usize,
            _ => self.rng.below(64) as usize,
        };
        Bytes::from((0..len).map(|_| self.rng.next_u64() as u8).collect::<Vec<u8>>())
    }

    fn number(&mut self) -> u64 {
        match self.rng.below(5) {
            0 => 0,
            1 => u64::MAX,
            2 => self.rng.below(10),
            3 => 1 << 62,
            _ => self.rng.next_u64(),
        }
    }

    /// Bytes altered in one place (never equal to what they were).
    fn alter(&mut self, b: &Bytes) -> Bytes {
        let mut v = b.to_vec();
        if v.is_empty() {
            return Bytes::from_static(b"x");
        }
        match self.rng.below(3) {
            0 => {
                let i = self.rng.below(v.len() as u64) as usize;
                v[i] ^= 1 << self.rng.below(8);
            }
            1 => v.truncate(self.rng.below(v.len() as u64) as usize),
            _ => v.push(self.rng.next_u64() as u8),
        }
        Bytes::from(v)
    }

    fn handle(&mut self) -> Option<Handle> {
        if self.rng.below(10) == 0 {
            return None;
        }
        let real = self.pick(&self.handles.clone());
        let token = match (self.forged, self.rng.below(2)) {
            (true, 0) => self.alter(&real.token),
            (true, _) => self.bytes(),
            (false, _) => real.token,
        };
        Some(Handle { token, rights: self.rng.below(8) as u32 })
    }

    fn session_token(&mut self) -> Bytes {
        if self.forged {
            let real = self.session_token.clone();
            if self.rng.below(2) == 0 {
                self.alter(&real)
            } else {
                self.bytes()
            }
        } else {
            self.session_token.clone()
        }
    }

    fn request(&mut self) -> Option<RequestId> {
        if self.rng.below(10) == 0 {
            return None;
        }
        let session = if self.forged || self.rng.below(4) == 0 { self.number() } else { self.session };
        Some(RequestId { session, sequence: self.number(), first_incomplete: self.number() })
    }

    fn optional(&mut self) -> Option<u64> {
        (self.rng.below(2) == 0).then(|| self.number())
    }

    fn names(&mut self) -> Vec<String> {
        (0..self.rng.below(4)).map(|_| self.string()).collect()
    }

    fn kind(&mut self) -> call::Kind {
        use call::Kind;
        match self.rng.below(17) {
            0 => Kind::Open(OpenRequest {
                request: self.request(),
                path: self.string(),
                create: self.rng.below(2) == 0,
                directory: self.rng.below(2) == 0,
                ephemeral: self.rng.below(2) == 0,
                exclusive: self.rng.below(2) == 0,
                initial_contents: self.bytes(),
                event_mask: self.number() as u32,
                session_token: self.session_token(),
            }),
            1 => Kind::Close(CloseRequest { request: self.request(), handle: self.handle() }),
            2 => Kind::CloseSession(CloseSessionRequest {
                request: self.request(),
                session_token: if self.forged { self.session_token() } else { self.bytes() },
            }),
            3 => {
                Kind::GetContentsAndStat(GetContentsRequest { handle: self.handle(), stale_ok: self.rng.below(2) == 0 })
            }
            4 => Kind::GetStat(GetStatRequest { handle: self.handle() }),
            5 => Kind::ReadDir(ReadDirRequest { handle: self.handle() }),
            6 => Kind::SetContents(SetContentsRequest {
                request: self.request(),
                handle: self.handle(),
                contents: self.bytes(),
                if_generation: self.optional(),
                sequencer: self.string(),
                write_through: self.rng.below(2) == 0,
            }),
            7 => Kind::Delete(DeleteRequest {
                request: self.request(),
                handle: self.handle(),
                if_generation: self.optional(),
                sequencer: self.string(),
            }),
            8 | 9 => {
                let r = AcquireRequest {
                    request: self.request(),
                    handle: self.handle(),
                    mode: self.rng.below(4) as i32,
                    owner: self.number(),
                    lock_delay_ms: self.optional(),
                    convert: self.rng.below(2) == 0,
                };
                if self.rng.below(2) == 0 {
                    Kind::Acquire(r)
                } else {
                    Kind::TryAcquire(r)
                }
            }
            10 => {
                Kind::Release(ReleaseRequest { request: self.request(), handle: self.handle(), owner: self.number() })
            }
            11 => Kind::Cancel(CancelRequest { request: self.request(), handle: self.handle(), owner: self.number() }),
            12 => Kind::GetSequencer(GetSequencerRequest {
                handle: self.handle(),
                owner: self.number(),
                holders: self.rng.below(2) == 0,
            }),
            13 => Kind::CheckSequencer(CheckSequencerRequest { sequencer: self.string() }),
            15 => Kind::Append(AppendRequest {
                request: self.request(),
                handle: self.handle(),
                data: self.bytes(),
                sequencer: self.string(),
                write_through: self.rng.below(2) == 0,
            }),
            14 => Kind::Rename(RenameRequest {
                request: self.request(),
                handle: self.handle(),
                to: self.string(),
                no_replace: self.rng.below(2) == 0,
            }),
            _ => Kind::SetAcl(SetAclRequest {
                request: self.request(),
                handle: self.handle(),
                readers: self.names(),
                writers: self.names(),
                change_acl: self.names(),
                if_acl_generation: self.optional(),
            }),
        }
    }
}

/// Sends `kind` as its unary call: `Ok(Some(()))` if it succeeded, `Ok(None)` for a blocked
/// Acquire still waiting after a second. With `forged` credentials, a sequencer checked must
/// be found invalid.
async fn unary(c: &mut ChubbyClient<Channel>, kind: call::Kind, forged: bool) -> Result<Option<()>, tonic::Status> {
    use call::Kind;
    let done = async {
        match kind {
            Kind::Open(r) => c.open(r).await.map(|_| ()),
            Kind::Close(r) => c.close(r).await.map(|_| ()),
            Kind::CloseSession(r) => c.close_session(r).await.map(|_| ()),
            Kind::GetContentsAndStat(r) => c.get_contents_and_stat(r).await.map(|_| ()),
            Kind::GetStat(r) => c.get_stat(r).await.map(|_| ()),
            Kind::ReadDir(r) => c.read_dir(r).await.map(|_| ()),
            Kind::SetContents(r) => c.set_contents(r).await.map(|_| ()),
            Kind::Delete(r) => c.delete(r).await.map(|_| ()),
            Kind::Acquire(r) => c.acquire(r).await.map(|_| ()),
            Kind::TryAcquire(r) => c.try_acquire(r).await.map(|_| ()),
            Kind::Release(r) => c.release(r).await.map(|_| ()),
            Kind::Cancel(r) => c.cancel(r).await.map(|_| ()),
            Kind::GetSequencer(r) => c.get_sequencer(r).await.map(|_| ()),
            // Answers whether a sequencer is valid: never an error.
            Kind::CheckSequencer(r) => c.check_sequencer(r).await.map(|r| assert!(!(forged && r.into_inner().valid))),
            Kind::SetAcl(r) => c.set_acl(r).await.map(|_| ()),
            Kind::Rename(r) => c.rename(r).await.map(|_| ()),
            Kind::Append(r) => c.append(r).await.map(|_| ()),
        }
    };
    match tokio::time::timeout(Duration::from_secs(1), done).await {
        Ok(r) => r.map(Some),
        Err(_) => Ok(None),
    }
}

/// A call's description, short enough to print.
fn short(what: String) -> String {
    what.chars().take(400).collect()
}

/// A refusal must say what is wrong, and never be a server fault.
fn assert_clear(s: &tonic::Status, what: &str) {
    assert!(!matches!(s.code(), Code::Internal | Code::Unknown | Code::DataLoss), "{what}: {s:?}");
    assert!(!s.message().is_empty(), "{what}: an error without a message: {s:?}");
}

/// The namespace (every node and its contents) and the session count, as replica `addr` has
/// them.
async fn state_at(cell: &TestCell, addr: &str) -> (BTreeMap<String, Bytes>, u64) {
    let mut c = cell.client(Duration::from_secs(5));
    let list = c
        .at(addr, |rpc| async move {
            rpc.max_decoding_message_size(64 << 20).list(ListRequest { prefix: String::new(), stale: true }).await
        })
        .await
        .unwrap();
    let status = c.at(addr, |mut rpc| async move { rpc.status(proto::cell::StatusRequest {}).await }).await.unwrap();
    (list.items.into_iter().map(|kv| (kv.key, kv.value)).collect(), status.sessions)
}

#[test]
fn bad_input_gets_clear_errors_and_forged_credentials_change_nothing() {
    let (seed, rng) = Rng::from_env("CHUBBY_FUZZ_SEED");
    eprintln!("fuzz test seed {seed} (replay with CHUBBY_FUZZ_SEED={seed})");
    let mut cell = TestCell::start(CellOptions::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let n = calls();
    rt.block_on(async {
        let leader = wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30)).await.unwrap();
        let master = cell.addrs[(leader - 1) as usize].clone();
        let mut c = ChubbyClient::connect(format!("http://{master}")).await.unwrap();
        // A real session, kept alive on its stream, with handles to a directory, a file and
        // an ephemeral file, and the lock of the file.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let open = OpenSession { principal: "fuzzer".into(), ..Default::default() };
        tx.send(SessionRequest { kind: Some(session_request::Kind::Open(open)) }).await.unwrap();
        let mut inbound = c.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
        let grant = loop {
            if let Some(session_response::Kind::Lease(g)) = inbound.message().await.unwrap().unwrap().kind {
                break g;
            }
        };
        let keep = tokio::spawn({
            let tx = tx.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let k = KeepAlive { session: grant.session, more_sessions: Vec::new() };
                    if tx.send(SessionRequest { kind: Some(session_request::Kind::KeepAlive(k)) }).await.is_err() {
                        return;
                    }
                }
            }
        });
        let drain = tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let mut seq = 0;
        let mut open = |path: &str, directory: bool, ephemeral: bool| {
            seq += 1;
            OpenRequest {
                request: Some(RequestId { session: grant.session, sequence: seq, first_incomplete: seq }),
                path: path.into(),
                create: true,
                directory,
                ephemeral,
                session_token: grant.session_token.clone(),
                ..OpenRequest::default()
            }
        };
        let mut handles = Vec::new();
        for (path, dir, eph) in
            [("/ls/local/fz", true, false), ("/ls/local/fz/a", false, false), ("/ls/local/fz/e", false, true)]
        {
            handles.push(c.open(open(path, dir, eph)).await.unwrap().into_inner().handle.unwrap());
        }
        let acquire = AcquireRequest {
            request: Some(RequestId { session: grant.session, sequence: 10, first_incomplete: 10 }),
            handle: Some(handles[1].clone()),
            mode: 0,
            owner: 1,
            lock_delay_ms: None,
            convert: false,
        };
        let sequencer = c.try_acquire(acquire).await.unwrap().into_inner().sequencer;
        let mut g = Gen {
            rng,
            forged: true,
            session: grant.session,
            session_token: grant.session_token.clone(),
            handles,
            sequencers: vec![sequencer],
        };

        // Forged credentials: every call refused, clearly, and nothing changes.
        let before = state_at(&cell, &master).await;
        let (call_tx, call_rx) = tokio::sync::mpsc::channel(64);
        let mut results = c.calls(tokio_stream::wrappers::ReceiverStream::new(call_rx)).await.unwrap().into_inner();
        for i in 0..n {
            let kind = g.kind();
            let what = &short(format!("forged call {i} (seed {seed}): {kind:?}"));
            if i % 2 == 0 {
                match unary(&mut c, kind, true).await {
                    Err(s) => assert_clear(&s, what),
                    Ok(Some(_)) => assert!(what.contains("CheckSequencer"), "{what}: accepted"),
                    Ok(None) => panic!("{what}: still waiting after a second"),
                }
            } else {
                let epoch = (g.rng.below(2) == 0).then(|| g.number());
                call_tx.send(Call { id: i as u64, epoch, kind: Some(kind), abandon: false }).await.unwrap();
                let r = tokio::time::timeout(Duration::from_secs(5), results.message()).await;
                let r = r.unwrap_or_else(|_| panic!("{what}: no answer on the stream")).unwrap().unwrap();
                if r.code == 0 {
                    assert!(what.contains("CheckSequencer"), "{what}: accepted on the stream");
                } else {
                    assert_clear(&tonic::Status::new(Code::from_i32(r.code), r.message), what);
                }
            }
        }
        // The session stream: resuming, keeping alive and acking for sessions not proven.
        let mut s = ChubbyClient::connect(format!("http://{master}")).await.unwrap();
        let (stx, srx) = tokio::sync::mpsc::channel(64);
        let mut sin = s.session(tokio_stream::wrappers::ReceiverStream::new(srx)).await.unwrap().into_inner();
        for i in 0..n / 10 {
            let kind = match g.rng.below(3) {
                0 => session_request::Kind::Open(OpenSession {
                    resume_session: g.number().max(1),
                    principal: g.string(),
                    session_token: g.session_token(),
                    open_id: g.number(),
                    resubscribe: Vec::new(),
                }),
                1 => {
                    session_request::Kind::KeepAlive(KeepAlive { session: g.number(), more_sessions: vec![g.number()] })
                }
                _ => session_request::Kind::InvalidationAck(InvalidationAck { invalidation_id: g.number() }),
            };
            let answered = !matches!(kind, session_request::Kind::InvalidationAck(_));
            stx.send(SessionRequest { kind: Some(kind) }).await.unwrap();
            if answered {
                let r = tokio::time::timeout(Duration::from_secs(5), sin.message()).await;
                match r.unwrap_or_else(|_| panic!("session request {i}: no answer")) {
                    Ok(Some(m)) => panic!("session request {i} (seed {seed}) accepted: {m:?}"),
                    Ok(None) => break,
                    Err(s) => {
                        assert_clear(&s, "session stream");
                        break;
                    }
                }
            }
        }
        assert_eq!(state_at(&cell, &master).await, before, "forged calls changed the cell (seed {seed})");

        // Real credentials and random everything else: clear errors, and one state everywhere.
        g.forged = false;
        for i in 0..n {
            let kind = g.kind();
            let what = short(format!("call {i} with real credentials (seed {seed}): {kind:?}"));
            if let Err(s) = unary(&mut c, kind, false).await {
                assert_clear(&s, &what);
            }
        }
        // The operator's Cell service, which needs no credentials: random keys and values.
        let mut admin = proto::cell::cell_client::CellClient::connect(format!("http://{master}")).await.unwrap();
        for i in 0..n / 10 {
            let key = g.string();
            let what = short(format!("cell call {i} (seed {seed}) on key {key:?}"));
            let answer = match g.rng.below(3) {
                0 => admin.put(proto::cell::PutRequest { key, value: g.bytes() }).await.map(|_| ()),
                1 => admin.get(proto::cell::GetRequest { key, stale: g.rng.below(2) == 0 }).await.map(|_| ()),
                _ => admin.list(ListRequest { prefix: key, stale: g.rng.below(2) == 0 }).await.map(|_| ()),
            };
            if let Err(s) = answer {
                assert_clear(&s, &what);
            }
        }
        keep.abort();
        drain.abort();
        drop((tx, call_tx, stx));
    });

    // Garbage on the port: random bytes, a peer's magic then garbage, an HTTP/2 preface then
    // garbage; every replica goes on running.
    rt.block_on(async {
        let mut rng = Rng::from_seed(seed);
        for addr in &cell.addrs {
            for prefix in [
                &b""[..],
                b"CHUBRAFT\x01",
                b"CHUBRAFT\x01\x02\x00\x00\x00\x00\x00\x00\x00",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            ] {
                for _ in 0..20 {
                    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { continue };
                    let junk: Vec<u8> = (0..rng.below(4096)).map(|_| rng.next_u64() as u8).collect();
                    let _ = s.write_all(prefix).await;
                    let _ = s.write_all(&junk).await;
                    let _ = s.flush().await;
                }
            }
        }
    });
    for id in 1..=3 {
        assert!(cell.is_running(id), "replica {id} stopped (seed {seed}):\n{}", cell.log(id));
    }
    rt.block_on(async {
        let client = cell.client(Duration::from_secs(5));
        let mut c = cell.client(Duration::from_secs(5));
        // The operator's Put refuses a bad key naming it as it was, '%' and all.
        let bad = "50%off/../%zz%25";
        let refusal = c.put(bad, Bytes::from_static(b"x")).await.expect_err("a key with .. is refused");
        assert!(refusal.to_string().contains(bad), "the refusal names the key: {refusal}");
        let rev = c.put("after-fuzz", Bytes::from_static(b"ok")).await.expect("the cell still takes writes");
        wait_converged(&client, rev, Duration::from_secs(30)).await.unwrap();
        let first = state_at(&cell, &cell.addrs[0]).await;
        for addr in &cell.addrs[1..] {
            assert!(
                state_at(&cell, addr).await == first,
                "replica {addr} differs from {} (seed {seed})",
                cell.addrs[0]
            );
        }
    });
}
