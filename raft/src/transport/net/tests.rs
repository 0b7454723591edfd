//! Peer links over real loopback sockets.

use std::io::Write as _;
use std::net::TcpListener;

use super::*;
use crate::types::MessageBody;

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
        net.add_inbound(s);
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
    let (mut n1, _w1) = PeerNet::new(1, &peers).unwrap();
    let (mut n2, _w2) = PeerNet::new(2, &peers).unwrap();
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
    let (mut n1, _w1) = PeerNet::new(1, &peers).unwrap();
    let (mut n2, _w2) = PeerNet::new(2, &peers).unwrap();
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
    let (n2, waker) = PeerNet::new(2, &peers).unwrap();
    (n2, waker, TcpListener::bind("127.0.0.1:0").unwrap())
}

#[test]
fn a_newer_link_from_a_peer_replaces_the_older_one() {
    let (mut n2, _w, listener) = replica_two_listening();
    let mut clients = Vec::new();
    for commit in [1, 2] {
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut wire = Vec::new();
        frame::Hello { from: 1, to: 2 }.encode(&mut wire);
        frame::encode(&codec::to_pb(&heartbeat(1, 2, commit)).unwrap(), &mut wire);
        client.write_all(&wire).unwrap();
        clients.push(client);
        n2.add_inbound(listener.accept().unwrap().0);
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
fn a_connection_for_another_replica_or_from_a_stranger_is_closed() {
    let (mut n2, _w, listener) = replica_two_listening();
    let cases = [
        (frame::Hello { from: 1, to: 3 }, None),
        (frame::Hello { from: 9, to: 2 }, None),
        (frame::Hello { from: 1, to: 2 }, Some(heartbeat(9, 2, 1))),
    ];
    for (hello, message) in cases {
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let mut wire = Vec::new();
        hello.encode(&mut wire);
        if let Some(m) = &message {
            frame::encode(&codec::to_pb(m).unwrap(), &mut wire);
        }
        client.write_all(&wire).unwrap();
        n2.add_inbound(listener.accept().unwrap().0);
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
