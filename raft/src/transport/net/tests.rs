//! Peer links over real loopback sockets.

use std::io::Write as _;
use std::net::TcpListener;

use super::*;
use crate::types::MessageBody;

const CELL: u64 = 0x5eed;

fn heartbeat(from: ReplicaId, to: ReplicaId, commit: u64) -> Message {
    Message { from, to, term: 1, body: MessageBody::Heartbeat { commit, read_context: bytes::Bytes::new() } }
}

/// Runs `net`'s loop for a while (bounded), collecting what arrives.
fn turn(net: &mut PeerNet, got: &mut Vec<Message>) {
    net.maintain(Instant::now());
    net.poll(Duration::from_millis(10)).unwrap();
    net.process(&mut |m| got.push(m));
    net.flush();
}

/// Accepts what `listener` has and hands it to `net`, as the replica's listener would.
fn accept_into(listener: &TcpListener, net: &mut PeerNet) {
    while let Ok((s, _)) = listener.accept() {
        net.add_inbound(s, None, InboundIdentity::Unchecked);
    }
}

#[test]
fn messages_flow_and_a_dead_peer_does_not_hold_up_the_others() {
    let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
    l2.set_nonblocking(true).unwrap();
    // Peer 3's address has nothing listening.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let peers: BTreeMap<ReplicaId, String> =
        [(1, "127.0.0.1:1".to_string()), (2, l2.local_addr().unwrap().to_string()), (3, dead.to_string())]
            .into_iter()
            .collect();
    let (mut n1, _w1) = PeerNet::new(1, CELL, &peers, &BTreeMap::new(), None).unwrap();
    let (mut n2, _w2) = PeerNet::new(2, CELL, &peers, &BTreeMap::new(), None).unwrap();
    let (mut got1, mut got2) = (Vec::new(), Vec::new());
    let mut dropped_to_3 = false;
    for sent in 0..500 {
        turn(&mut n1, &mut got1);
        accept_into(&l2, &mut n2);
        turn(&mut n2, &mut got2);
        n1.send(&heartbeat(1, 2, sent));
        n1.send(&heartbeat(1, 3, sent));
        dropped_to_3 |= n1.take_unreachable().contains(&3);
        if got2.len() >= 20 {
            break;
        }
    }
    assert!(dropped_to_3, "messages to the dead peer are reported unreachable");
    assert!(got2.len() >= 20, "peer 2 got {} messages", got2.len());
    // In order, none duplicated, all from 1 to 2.
    let commits: Vec<u64> = got2
        .iter()
        .map(|m| match m.body {
            MessageBody::Heartbeat { commit, .. } => commit,
            _ => panic!("unexpected {m:?}"),
        })
        .collect();
    assert!(commits.windows(2).all(|w| w[0] < w[1]), "{commits:?}");
    assert!(got2.iter().all(|m| m.from == 1 && m.to == 2));
    assert!(got1.is_empty());
}

#[test]
fn a_host_name_is_looked_up_and_dialled() {
    let ip = ("localhost", 0).to_socket_addrs().unwrap().next().unwrap().ip();
    let l2 = TcpListener::bind((ip, 0)).unwrap();
    l2.set_nonblocking(true).unwrap();
    let name = format!("localhost:{}", l2.local_addr().unwrap().port());
    let peers: BTreeMap<ReplicaId, String> = [(1, "127.0.0.1:1".to_string()), (2, name)].into_iter().collect();
    let (mut n1, _w1) = PeerNet::new(1, CELL, &peers, &BTreeMap::new(), None).unwrap();
    let (mut n2, _w2) = PeerNet::new(2, CELL, &peers, &BTreeMap::new(), None).unwrap();
    let mut got = Vec::new();
    for i in 0..500 {
        turn(&mut n1, &mut Vec::new());
        accept_into(&l2, &mut n2);
        turn(&mut n2, &mut got);
        n1.send(&heartbeat(1, 2, i));
        if !got.is_empty() {
            break;
        }
    }
    assert!(!got.is_empty(), "nothing arrived through a link dialled by name");
}

/// Replica 2 of a two-replica group, with a listener whose connections a test hands it.
fn replica_two_listening() -> (PeerNet, impl Sized, TcpListener) {
    let peers: BTreeMap<ReplicaId, String> =
        [(1, "127.0.0.1:1".to_string()), (2, "127.0.0.1:2".to_string())].into_iter().collect();
    let (n2, waker) = PeerNet::new(2, CELL, &peers, &BTreeMap::new(), None).unwrap();
    (n2, waker, TcpListener::bind("127.0.0.1:0").unwrap())
}

#[test]
fn a_newer_link_from_a_peer_replaces_the_older_one() {
    let (mut n2, _w, listener) = replica_two_listening();
    let mut clients = Vec::new();
    for commit in [1, 2] {
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut wire = Vec::new();
        frame::Hello { from: 1, to: 2, cell: CELL }.encode(&mut wire);
        frame::encode(&codec::to_pb(&heartbeat(1, 2, commit)).unwrap(), &mut wire);
        client.write_all(&wire).unwrap();
        clients.push(client);
        n2.add_inbound(listener.accept().unwrap().0, None, InboundIdentity::Unchecked);
    }
    let mut got = Vec::new();
    for _ in 0..100 {
        turn(&mut n2, &mut got);
        if got.len() == 2 && n2.inbound.len() == 1 {
            break;
        }
    }
    assert_eq!(got.len(), 2, "both links delivered: {got:?}");
    assert_eq!(n2.inbound.len(), 1, "the older link from replica 1 was closed");
}

#[test]
fn a_connection_for_another_replica_or_cell_or_from_a_stranger_is_closed() {
    let (mut n2, _w, listener) = replica_two_listening();
    let cases = [
        (frame::Hello { from: 1, to: 3, cell: CELL }, None),
        (frame::Hello { from: 9, to: 2, cell: CELL }, None),
        (frame::Hello { from: 1, to: 2, cell: CELL + 1 }, Some(heartbeat(1, 2, 1))),
        (frame::Hello { from: 1, to: 2, cell: CELL }, Some(heartbeat(9, 2, 1))),
    ];
    for (hello, message) in cases {
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut wire = Vec::new();
        hello.encode(&mut wire);
        if let Some(m) = &message {
            frame::encode(&codec::to_pb(m).unwrap(), &mut wire);
        }
        client.write_all(&wire).unwrap();
        n2.add_inbound(listener.accept().unwrap().0, None, InboundIdentity::Unchecked);
        let mut got = Vec::new();
        for _ in 0..100 {
            turn(&mut n2, &mut got);
            if n2.inbound.is_empty() {
                break;
            }
        }
        assert!(n2.inbound.is_empty(), "{hello:?} was not refused");
        assert!(got.is_empty(), "{hello:?} delivered {got:?}");
    }
}

/// A link whose TLS certificate is replica 3's but whose hello says replica 1 is closed
/// before anything it carries is delivered; the same hello on replica 1's certificate is let in.
#[test]
fn a_hello_must_name_the_replica_its_certificate_names() {
    let peers: BTreeMap<ReplicaId, String> = (1..=3).map(|id| (id, format!("127.0.0.1:{id}"))).collect();
    let (mut n2, _w) = PeerNet::new(2, CELL, &peers, &BTreeMap::new(), None).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    for (certified, refused) in [(3, true), (1, false)] {
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut wire = Vec::new();
        frame::Hello { from: 1, to: 2, cell: CELL }.encode(&mut wire);
        frame::encode(&codec::to_pb(&heartbeat(1, 2, 7)).unwrap(), &mut wire);
        client.write_all(&wire).unwrap();
        n2.add_inbound(listener.accept().unwrap().0, None, InboundIdentity::Replica(certified));
        let mut got = Vec::new();
        for _ in 0..100 {
            turn(&mut n2, &mut got);
            if n2.inbound.is_empty() || !got.is_empty() {
                break;
            }
        }
        assert_eq!(got.is_empty(), refused, "certified as {certified}: delivered {got:?}");
        assert_eq!(n2.inbound.is_empty(), refused, "certified as {certified}");
    }
}

/// Replicas `ids` with certificates from one throwaway CA (in `dir`), as loaded identities.
fn identities(dir: &std::path::Path, ids: &[ReplicaId]) -> Vec<proto::tls::Identity> {
    use std::os::unix::fs::PermissionsExt;
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    ids.iter()
        .map(|id| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
            p.distinguished_name.push(rcgen::DnType::CommonName, format!("replica/{id}"));
            let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
            let (cert_path, key_path) = (dir.join(format!("{id}.pem")), dir.join(format!("{id}.key")));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let files = proto::tls::TlsFiles { cert: cert_path, key: key_path, ca: dir.join("ca.pem") };
            proto::tls::Identity::load(&files).unwrap()
        })
        .collect()
}

/// A TLS link carries many large messages, in order and intact, through every state of
/// rustls's and the socket's buffers: the handshake while messages queue, records the socket
/// does not take at once, reads that stop at the per-turn limit.
#[test]
fn a_tls_link_carries_large_messages_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let ids = identities(dir.path(), &[1, 2]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peers: BTreeMap<ReplicaId, String> =
        [(1, "127.0.0.1:1".to_string()), (2, listener.local_addr().unwrap().to_string())].into_iter().collect();
    let client = ids[0].client_config(&[proto::tls::ALPN_PEER]).unwrap();
    let server = ids[1].server_config(&[proto::tls::ALPN_PEER]).unwrap();
    let (mut n1, _w1) = PeerNet::new(1, CELL, &peers, &BTreeMap::new(), Some(client)).unwrap();
    let (mut n2, _w2) = PeerNet::new(2, CELL, &peers, &BTreeMap::new(), None).unwrap();
    // The listener's part: the server side of the handshake, on a thread, as the replica's
    // listener does it on a task.
    let handshake = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut conn = rustls::ServerConnection::new(server).unwrap();
        while conn.is_handshaking() {
            conn.complete_io(&mut sock).unwrap();
        }
        (sock, conn)
    });
    let payload = |i: u64| bytes::Bytes::from(vec![(i % 251) as u8; 200 << 10]);
    let big = |i: u64| Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Heartbeat { commit: i, read_context: payload(i) },
    };
    let mut sent = 0u64;
    for _ in 0..2000 {
        if handshake.is_finished() {
            break;
        }
        // Queued once the connection is up but maybe before the handshake is done: they
        // wait in rustls, then go.
        if sent < 3 && matches!(n1.links[&2].state, LinkState::Up { .. }) {
            n1.send(&big(sent));
            sent += 1;
        }
        turn(&mut n1, &mut Vec::new());
    }
    assert!(n1.take_unreachable().is_empty(), "nothing was dropped");
    let (sock, conn) = handshake.join().unwrap();
    sock.set_read_timeout(None).unwrap();
    n2.add_inbound(sock, Some(Box::new(conn)), InboundIdentity::Replica(1));
    let mut got = Vec::new();
    for _ in 0..20_000 {
        if got.len() as u64 == 100 {
            break;
        }
        while sent < 100 && (sent as usize) < got.len() + 20 {
            n1.send(&big(sent));
            sent += 1;
        }
        turn(&mut n1, &mut Vec::new());
        turn(&mut n2, &mut got);
        assert!(n1.take_unreachable().is_empty(), "nothing is dropped on a link that is up");
    }
    assert_eq!(got.len(), 100, "all 100 messages of 200 KiB arrived");
    for (i, m) in got.iter().enumerate() {
        let MessageBody::Heartbeat { commit, read_context } = &m.body else { panic!("{m:?}") };
        assert_eq!(*commit, i as u64, "in order");
        assert_eq!(read_context, &payload(i as u64), "intact");
    }
}
