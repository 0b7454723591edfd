//! Mutual TLS end to end, with real processes: who a client is comes from its certificate, and
//! nothing gets past the cell's CA, the ACLs or the admin list.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e_tests::{bin, client_principal, issue_cert, issue_paths, wait_converged, CellOptions, TestCell};
use fuse_mount::client::tls::{Identity, TlsFiles};
use fuse_mount::client::{CellClient, Session, SessionOptions};
use proto::Refusal;

fn tls_cell(extra: impl FnOnce(&mut CellOptions)) -> TestCell {
    let mut opts = CellOptions { tls: true, ..CellOptions::default() };
    extra(&mut opts);
    let cell = TestCell::start(opts);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(wait_converged(&cell.client(Duration::from_secs(5)), 0, Duration::from_secs(30))).unwrap();
    cell
}

/// The `CHUBBY_*` variables of `principal`'s certificate in `dir`, issued there if missing.
fn identity_env(dir: &Path, principal: &str, extra: &[&str]) -> Vec<(String, PathBuf)> {
    let (cert, key) = issue_cert(dir, principal, extra);
    vec![("CHUBBY_CERT".into(), cert), ("CHUBBY_KEY".into(), key), ("CHUBBY_CA".into(), dir.join("ca.pem"))]
}

fn identity(env: &[(String, PathBuf)]) -> Arc<Identity> {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).unwrap().1.clone();
    let files = TlsFiles { cert: get("CHUBBY_CERT"), key: get("CHUBBY_KEY"), ca: get("CHUBBY_CA") };
    Arc::new(Identity::load(&files).unwrap())
}

/// `chubby ARGS` against `cell` with exactly the TLS variables `env`: exit code and output.
fn chubby(cell: &TestCell, env: &[(String, PathBuf)], args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("chubby"))
        .env("CHUBBY_CELL", cell.cell_arg())
        .env_remove("CHUBBY_CERT")
        .env_remove("CHUBBY_KEY")
        .env_remove("CHUBBY_CA")
        .envs(env.iter().cloned())
        .args(["--rpc-timeout", "3s"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn only_a_client_with_a_valid_certificate_from_the_cells_ca_gets_in() {
    let cell = tls_cell(|_| {});
    let tls = cell.tls_dir().unwrap().to_path_buf();
    let me = cell.client_env();
    assert_eq!(chubby(&cell, &me, &["put", "/ls/local/x", "v"]).0, 0);
    assert_eq!(chubby(&cell, &me, &["get", "/ls/local/x"]), (0, "v\n".into()));

    // No certificate: plaintext is not spoken.
    let (code, out) = chubby(&cell, &[], &["get", "/ls/local/x"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("v\n"), "{out}");
    // A certificate from another CA, for the very same principal.
    let stranger = tempfile::tempdir().unwrap();
    let (code, out) = chubby(&cell, &identity_env(stranger.path(), &client_principal(), &[]), &["get", "/ls/local/x"]);
    assert_ne!(code, 0, "{out}");
    // The cell's own CA, but expired.
    let expired = identity_env(&tls, "late@somewhere", &["--expired"]);
    let (code, out) = chubby(&cell, &expired, &["get", "/ls/local/x"]);
    assert_ne!(code, 0, "{out}");
    // A key others may read is refused by the client before it connects.
    let careless = identity_env(&tls, "careless@somewhere", &[]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&careless[1].1, std::fs::Permissions::from_mode(0o640)).unwrap();
    let (code, out) = chubby(&cell, &careless, &["get", "/ls/local/x"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("readable by its owner only"), "{out}");
    // The replicas said why they closed the door.
    let logs: String = (1..=3).map(|id| cell.log(id)).collect();
    assert!(logs.contains("TLS handshake failed"), "no refusal logged");
    // And the cell was not changed by any of them.
    assert_eq!(chubby(&cell, &me, &["get", "/ls/local/x"]), (0, "v\n".into()));
}

#[test]
fn a_certificate_is_one_principal_and_acls_hold_it_to_that() {
    let cell = tls_cell(|_| {});
    let tls = cell.tls_dir().unwrap().to_path_buf();
    let (alice, bob) = (identity_env(&tls, "alice@build7", &[]), identity_env(&tls, "bob@build7", &[]));
    let me = cell.client_env();
    assert_eq!(chubby(&cell, &me, &["put", "/ls/local/bobs", "v1"]).0, 0);
    let (code, out) =
        chubby(&cell, &me, &["acl", "/ls/local/bobs", "--writers", "bob@build7", "--change-acl", "bob@build7"]);
    assert_eq!(code, 0, "{out}");

    let (code, out) = chubby(&cell, &alice, &["put", "/ls/local/bobs", "by alice"]);
    assert_ne!(code, 0, "alice may not write bob's file: {out}");
    assert!(out.contains("lacks -w-"), "{out}");
    let (code, out) = chubby(&cell, &bob, &["put", "/ls/local/bobs", "by bob"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(chubby(&cell, &alice, &["get", "/ls/local/bobs"]), (0, "by bob\n".into()));

    // Alice's certificate with bob's name on the session: the cell refuses the session.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let open = |principal: &str, env: &[(String, PathBuf)]| {
        let opts = SessionOptions {
            principal: principal.into(),
            tls: Some(identity(env)),
            timeout: Duration::from_secs(3),
            ..SessionOptions::default()
        };
        rt.block_on(Session::open(cell.addrs.clone(), opts))
    };
    let err = open("bob@build7", &alice).err().expect("alice cannot open a session as bob");
    assert_eq!(err.reason(), Some(Refusal::PermissionDenied), "{err}");
    assert!(open("alice@build7", &alice).is_ok());
    // A session that names nobody is the certificate's.
    let s = open("", &alice).unwrap();
    rt.block_on(s.close()).unwrap();

    // A host names its own users, and no one else.
    let host = identity_env(&tls, "host/build7", &[]);
    let s = open("bob@build7", &host).expect("host build7 speaks for its user bob");
    let (f, _) = rt
        .block_on(s.open_node("/ls/local/bobs", fuse_mount::client::OpenOptions::default()))
        .expect("bob's session opens bob's file");
    rt.block_on(s.set(&f, Bytes::from_static(b"by bob via build7"), None, "")).expect("bob may write");
    rt.block_on(s.close()).unwrap();
    // (A name of another host is made this host's: "bob@build8" is "bob@build8@build7".)
    for other in ["*", "", "a,b"] {
        let err = open(other, &host).err().unwrap_or_else(|| panic!("host build7 may not open a session as {other}"));
        assert_eq!(err.reason(), Some(Refusal::PermissionDenied), "{other}: {err}");
    }
    // A replica's certificate is for replicas.
    let err = open("", &identity_env(&tls, "replica/1", &[])).err().expect("no client session for a replica");
    assert_eq!(err.reason(), Some(Refusal::PermissionDenied), "{err}");
}

#[test]
fn the_operator_calls_are_for_admins_only() {
    let cell = tls_cell(|o| o.admins = vec!["ops@build7".into()]);
    let tls = cell.tls_dir().unwrap().to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client =
        |principal: &str| {
            CellClient::new(cell.addrs.clone(), Duration::from_secs(5))
                .unwrap()
                .with_tls(Some(identity(&identity_env(&tls, principal, &[]))))
        };
    // A file only its owner may read or write.
    let me = cell.client_env();
    assert_eq!(chubby(&cell, &me, &["put", "/ls/local/secret", "s3"]).0, 0);
    let me_name = client_principal();
    let (code, out) = chubby(&cell, &me, &["acl", "/ls/local/secret", "--readers", &me_name, "--writers", &me_name]);
    assert_eq!(code, 0, "{out}");

    let mut alice = client("alice@build7");
    for (what, result) in [
        ("put", rt.block_on(alice.put("secret", Bytes::from_static(b"mine"))).map(|_| ())),
        ("get", rt.block_on(alice.get("secret", false)).map(|_| ())),
    ] {
        let err = result.err().unwrap_or_else(|| panic!("a non-admin's {what} went through"));
        assert_eq!(err.reason(), Some(Refusal::PermissionDenied), "{what}: {err}");
    }
    // Status stays open to every client.
    let statuses = rt.block_on(alice.status_all());
    assert!(statuses.iter().all(|(_, s)| s.is_ok()), "{statuses:?}");
    assert_eq!(chubby(&cell, &me, &["get", "/ls/local/secret"]), (0, "s3\n".into()), "nothing changed");

    let mut ops = client("ops@build7");
    rt.block_on(ops.put("ops-note", Bytes::from_static(b"ok"))).expect("an admin may");
    assert_eq!(rt.block_on(ops.get("ops-note", false)).unwrap().value.as_ref(), b"ok");

    // A backup holds every node whatever its ACL: admins only.
    let file = cell.dir.path().join("backup.chubby");
    let save = ["snapshot", "save", file.to_str().unwrap()];
    let (code, out) = chubby(&cell, &identity_env(&tls, "alice@build7", &[]), &save);
    assert!(code == 1 && out.contains("not in the cell's admins") && !file.exists(), "{code}: {out}");
    let (code, out) = chubby(&cell, &identity_env(&tls, "ops@build7", &[]), &save);
    assert_eq!(code, 0, "{out}");
    let (code, out) = chubby(&cell, &[], &["snapshot", "status", file.to_str().unwrap()]);
    assert!(code == 0 && out.contains("checksums ok"), "{out}");
}

/// A replica whose certificate comes from another CA is a stranger: it gets no Raft message
/// in and learns nothing. A client certificate (the cell's CA, but no replica's) that asks
/// for a peer link is refused too. With its own certificate back, the replica catches up,
/// through a snapshot over TLS.
#[test]
fn a_replica_with_a_certificate_from_another_ca_cannot_join_or_send_raft_messages() {
    let mut cell = tls_cell(|o| o.snapshot_entries = 20);
    let tls = cell.tls_dir().unwrap().to_path_buf();
    let me = cell.client_env();
    cell.kill(3);
    let real = (tls.join("replica-3.pem"), tls.join("replica-3.key"));
    let keep = tempfile::tempdir().unwrap();
    std::fs::copy(&real.0, keep.path().join("c")).unwrap();
    std::fs::copy(&real.1, keep.path().join("k")).unwrap();
    // Replica 3, as another CA says: it trusts that CA and presents its certificate.
    let rogue = tempfile::tempdir().unwrap();
    let san = "127.0.0.1,localhost";
    issue_cert(rogue.path(), "replica/3", &["--san", san]);
    std::fs::copy(rogue.path().join("replica-3.pem"), &real.0).unwrap();
    std::fs::copy(rogue.path().join("replica-3.key"), &real.1).unwrap();
    std::fs::copy(tls.join("ca.pem"), keep.path().join("ca")).unwrap();
    // The rogue's own replica reads its CA from the cell's path: point that at the rogue CA
    // only for its start.
    cell.set_replica_ca(3, Some(rogue.path().join("ca.pem")));
    cell.start_replica(3);
    cell.await_listening(Duration::from_secs(20)).unwrap();

    // Big writes, so the links carry more than a TLS buffer at a time.
    let big = "x".repeat(100 << 10);
    for i in 0..30 {
        let (code, out) = chubby(&cell, &me, &["put", &format!("/ls/local/k{i}"), &big]);
        assert_eq!(code, 0, "the two good replicas commit without the third: {out}");
    }
    // A client's certificate asking for a peer link.
    let (user_cert, user_key) = issue_cert(&tls, "mallory@build7", &[]);
    let refused = raw_peer_link(&cell.addrs[0], &user_cert, &user_key, &tls.join("ca.pem"));
    assert!(refused, "the replica kept a peer link from a non-replica certificate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cell.log(1).contains("peer link refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cell.log(1).contains("peer link refused"), "the refusal is logged");

    // Snapshots: only from a replica, and only as itself.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (principal, from) in [("mallory@build7", 2), ("replica/2", 3), ("replica/7", 7)] {
        let (cert, key) = issue_cert(&tls, principal, &[]);
        let id = Identity::load(&TlsFiles { cert, key, ca: tls.join("ca.pem") }).unwrap();
        let refused = rt.block_on(send_snapshot(&cell.addrs[0], &id, from, 0));
        let status = refused.err().unwrap_or_else(|| panic!("{principal}'s snapshot as replica {from} was taken"));
        // (replica/7 is a replica's certificate from the cell's CA, but no member of this cell.)
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{principal}: {status}");
    }
    // Replica 2's own certificate, as itself, but for another cell (a replica of a cell
    // restored from this one's backup, say).
    let (cert, key) = issue_paths(&tls, "replica/2");
    let id = Identity::load(&TlsFiles { cert, key, ca: tls.join("ca.pem") }).unwrap();
    let status = rt.block_on(send_snapshot(&cell.addrs[0], &id, 2, 1)).expect_err("another cell's snapshot was taken");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(cell.log(1).contains("snapshot refused: the sender belongs to cell"), "the refusal is logged");

    let rogue_log = cell.log_since_start(3);
    assert!(
        !rogue_log.contains("leader=1") && !rogue_log.contains("leader=2"),
        "the rogue learned of a leader:\n{rogue_log}"
    );
    let good_logs = cell.log(1) + &cell.log(2);
    assert!(good_logs.contains("TLS handshake failed"), "the good replicas refused the stranger");

    // Replica 3 with its own certificate again catches up (the log was compacted meanwhile:
    // a snapshot, over TLS, with its sender's certificate checked).
    cell.kill(3);
    std::fs::copy(keep.path().join("c"), &real.0).unwrap();
    std::fs::copy(keep.path().join("k"), &real.1).unwrap();
    cell.set_replica_ca(3, None);
    cell.start_replica(3);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = cell.client(Duration::from_secs(5));
    let applied =
        rt.block_on(client.status_all()).iter().filter_map(|(_, s)| s.as_ref().ok()).map(|s| s.applied_index).max();
    rt.block_on(wait_converged(&client, applied.unwrap(), Duration::from_secs(30))).unwrap();
    let caught_up = cell.log_since_start(3);
    assert!(
        caught_up.contains("restored from the leader's snapshot"),
        "replica 3 caught up by a snapshot:\n{caught_up}"
    );
}

/// Sends replica 1 at `addr` an empty snapshot said to be from replica `from`, as `id`, in the
/// cell's id XOR `other_cell`.
async fn send_snapshot(
    addr: &str,
    id: &Identity,
    from: u64,
    other_cell: u64,
) -> Result<tonic::Response<proto::raft::InstallSnapshotAck>, tonic::Status> {
    let endpoint = fuse_mount::client::tls::endpoint(addr, Some(id)).unwrap();
    let channel = endpoint.connect().await.unwrap();
    // The cell's own id: these snapshots must be refused for who sends them, not for the cell.
    let status = proto::cell::cell_client::CellClient::new(channel.clone())
        .status(proto::cell::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let cell = u64::from_str_radix(&status.cell_id, 16).unwrap() ^ other_cell;
    let mut peer = proto::raft::raft_peer_client::RaftPeerClient::new(channel);
    let chunk = proto::raft::InstallSnapshotChunk {
        cell,
        from,
        to: 1,
        term: 99,
        meta: Some(proto::raft::SnapshotMeta::default()),
        offset: 0,
        data: Bytes::new(),
        done: true,
    };
    peer.install_snapshot(tokio_stream::iter(vec![chunk])).await
}

/// Dials `addr` with a TLS client certificate asking for the peer link's protocol, sends a
/// hello as replica 2, and says whether the replica closed the connection (within 10 s).
fn raw_peer_link(addr: &str, cert: &Path, key: &Path, ca: &Path) -> bool {
    let id = Identity::load(&TlsFiles { cert: cert.into(), key: key.into(), ca: ca.into() }).unwrap();
    let config = id.client_config(&[proto::tls::ALPN_PEER]).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let Ok(mut tls) = connector.connect(name, tcp).await else { return true };
        // Whatever the peer link's hello looks like, the replica must not wait for it.
        let _ = tls.write_all(b"CHBY").await;
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    })
}

/// A session's token does not make its holder the session's principal: a session is resumed
/// only over a connection whose certificate is the principal that opened it.
#[test]
fn a_session_is_resumed_only_by_the_principal_that_opened_it() {
    use proto::chubby::{chubby_client::ChubbyClient, session_request, session_response, OpenSession, SessionRequest};
    let cell = tls_cell(|_| {});
    let tls = cell.tls_dir().unwrap().to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let master = cell.addrs[(cell.leader(&rt) - 1) as usize].clone();
    let (alice, bob) =
        (identity(&identity_env(&tls, "alice@build7", &[])), identity(&identity_env(&tls, "bob@build7", &[])));
    // Opens (resume 0) or resumes a session on a new stream as `who`: the grant, or the refusal.
    #[allow(clippy::result_large_err)]
    let open = |who: &Identity, resume: u64, token: Vec<u8>| {
        rt.block_on(async {
            let channel = fuse_mount::client::tls::endpoint(&master, Some(who)).unwrap().connect().await.unwrap();
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let open = OpenSession {
                resume_session: resume,
                session_token: token.into(),
                open_id: 7 + resume,
                ..OpenSession::default()
            };
            tx.send(SessionRequest { kind: Some(session_request::Kind::Open(open)) }).await.unwrap();
            let mut answers =
                ChubbyClient::new(channel).session(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
            loop {
                match answers.message().await? {
                    Some(proto::chubby::SessionResponse { kind: Some(session_response::Kind::Lease(g)) }) => {
                        return Ok((g, tx))
                    }
                    Some(_) => continue,
                    None => return Err(tonic::Status::unavailable("stream ended")),
                }
            }
        })
    };
    let (grant, _alice_stream) = open(&alice, 0, Vec::new()).expect("alice opens a session");
    let stolen = grant.session_token.to_vec();
    let refused = open(&bob, grant.session, stolen.clone())
        .map(|(g, _)| g)
        .expect_err("bob resumed alice's session with her token");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    let (again, _) = open(&alice, grant.session, stolen).expect("alice resumes her own session");
    assert_eq!(again.session, grant.session);
}

/// Replicas that reach each other through other addresses (`--peer-via`: a tunnel, a proxy)
/// still check each other's certificates against the addresses in `--peers`, which the
/// certificates name: the cell elects, commits, and heals after a partition.
#[test]
fn replicas_dialled_through_another_address_still_know_each_other() {
    // Certificates name `localhost` only; the links dial 127.0.0.1.
    let cell = tls_cell(|o| {
        o.host = "localhost".into();
        o.peer_links = true;
    });
    let me = cell.client_env();
    assert_eq!(chubby(&cell, &me, &["put", "/ls/local/a", "1"]).0, 0);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let leader = cell.leader(&rt);
    cell.partition(leader);
    let deadline = Instant::now() + Duration::from_secs(30);
    while chubby(&cell, &me, &["put", "/ls/local/b", "2"]).0 != 0 {
        assert!(Instant::now() < deadline, "the other two did not take over");
    }
    cell.heal();
    let client = cell.client(Duration::from_secs(5));
    let applied =
        rt.block_on(client.status_all()).iter().filter_map(|(_, s)| s.as_ref().ok()).map(|s| s.applied_index).max();
    rt.block_on(wait_converged(&client, applied.unwrap(), Duration::from_secs(30))).unwrap();
}

/// Users' and hosts' certificates may come from a CA of their own (`--client-ca`): clients with
/// them get in, but a replica's name in one is no replica's (no peer link, no snapshot).
#[test]
fn clients_may_come_from_another_ca_but_replicas_only_from_the_cells() {
    let users = tempfile::tempdir().unwrap();
    let (cert, key) = issue_cert(users.path(), "carol@build7", &[]);
    let users_ca = users.path().join("ca.pem");
    let cell = tls_cell(|o| o.extra_args = vec!["--client-ca".into(), users_ca.display().to_string()]);
    let tls = cell.tls_dir().unwrap().to_path_buf();
    // Carol's own certificate, and the cell's CA to know the replicas by.
    let carol = vec![
        ("CHUBBY_CERT".to_string(), cert),
        ("CHUBBY_KEY".to_string(), key),
        ("CHUBBY_CA".to_string(), tls.join("ca.pem")),
    ];
    let (code, out) = chubby(&cell, &carol, &["put", "/ls/local/carols", "hi"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(chubby(&cell, &carol, &["get", "/ls/local/carols"]), (0, "hi\n".into()));
    assert_eq!(chubby(&cell, &cell.client_env(), &["get", "/ls/local/carols"]), (0, "hi\n".into()));

    // replica/2, as the users' CA says.
    let (cert, key) = issue_cert(users.path(), "replica/2", &[]);
    let files = TlsFiles { cert: cert.clone(), key: key.clone(), ca: tls.join("ca.pem") };
    let forged = Identity::load(&files).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let refused = rt.block_on(send_snapshot(&cell.addrs[0], &forged, 2, 0));
    let status = refused.expect_err("a snapshot under the users' CA's replica/2 was taken");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status}");
    assert!(raw_peer_link(&cell.addrs[0], &cert, &key, &tls.join("ca.pem")), "a peer link was kept");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cell.log(1).contains("peer link refused") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cell.log(1).contains("peer link refused"), "the refusal is logged");
}
