//! Bad input on the peer port, past the handshake: framed messages that a replica must refuse or
//! ignore, sent as a peer would send them (a hello naming a known peer and the receiver, then
//! length-prefixed `RaftMessage`s).
//!
//! - **Malformed** (bodies that do not decode, ids that contradict the hello, a hello naming the
//!   wrong receiver or an unknown peer, a length over the limit): the connection is dropped;
//!   every replica runs on, with the same data.
//! - **Stale** (well-formed messages of every kind, with absurd indexes, commits and entries,
//!   at a term below the current one, as a peer's delayed packets arrive): ignored; the same.
//!   (A hello naming a peer replaces that peer's older link, as it must when the peer restarts;
//!   so on a plaintext cell a forger can cut a link for as long as the redial takes, and
//!   cost an election; on TLS only the peer's own certificate can say its hello.)
//! - **Forged at the current or a later term**, of the kinds any member sends (votes,
//!   pre-votes, TimeoutNow, answers with absurd indexes): on a plaintext cell a peer is
//!   trusted at its word (TLS makes it prove it), so such a message may cost an election; but no replica may
//!   crash, and the cell must take writes again afterwards. (It found that a leader took an
//!   acknowledgement past its own log as a follower's match, and stopped replicating to it.)
//!
//! `CHUBBY_PEER_FUZZ_SEED` replays a run; `CHUBBY_LONG=1` sends 20× as many messages.

use std::time::Duration;

use bytes::Bytes;
use e2e_tests::{wait_converged, CellOptions, Rng, TestCell};
use prost::Message as _;
use proto::raft::raft_message::Body;
use proto::raft::{self as pb};
use tokio::io::AsyncWriteExt;

const MAGIC: &[u8] = b"CHUBRAFT";
const VERSION: u8 = 1;

fn rounds() -> u64 {
    if std::env::var("CHUBBY_LONG").is_ok_and(|v| v == "1") {
        2000
    } else {
        100
    }
}

fn hello(from: u64, to: u64) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.push(VERSION);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&to.to_le_bytes());
    out
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A number that is often at an edge: 0, 1, near the cell's indexes, or near `u64::MAX`.
fn number(rng: &mut Rng, near: u64) -> u64 {
    match rng.below(6) {
        0 => 0,
        1 => u64::MAX - rng.below(3),
        2 => near.saturating_add(rng.below(5)),
        3 => near.saturating_sub(rng.below(5)),
        4 => rng.below(1 << 20),
        _ => rng.next_u64(),
    }
}

fn bytes(rng: &mut Rng) -> Bytes {
    (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect::<Vec<u8>>().into()
}

/// A message body of any kind, or (`followers_only`) of the kinds any member may send. A forged
/// leader's message at the current term (an append, a heartbeat, a read index) is a Byzantine
/// peer's, which Raft does not claim to survive: its commit index alone can commit a deposed
/// leader's entries on a follower.
fn body(rng: &mut Rng, index: u64, followers_only: bool) -> Body {
    let kind = loop {
        let k = rng.below(9);
        if !(followers_only && [2, 4, 8].contains(&k)) {
            break k;
        }
    };
    match kind {
        0 => Body::RequestVote(pb::RequestVote {
            pre_vote: rng.below(2) == 0,
            last_log_index: number(rng, index),
            last_log_term: number(rng, 3),
            leader_transfer: rng.below(2) == 0,
        }),
        1 => Body::RequestVoteResponse(pb::RequestVoteResponse {
            pre_vote: rng.below(2) == 0,
            reject: rng.below(2) == 0,
        }),
        2 => {
            let entries = (0..rng.below(4))
                .map(|_| pb::Entry {
                    term: number(rng, 3),
                    index: number(rng, index),
                    kind: rng.below(3) as i32,
                    data: bytes(rng),
                })
                .collect();
            Body::AppendEntries(pb::AppendEntries {
                prev_log_index: number(rng, index),
                prev_log_term: number(rng, 3),
                entries,
                commit: number(rng, index),
            })
        }
        3 => Body::AppendEntriesResponse(pb::AppendEntriesResponse {
            reject: rng.below(2) == 0,
            index: number(rng, index),
            reject_hint: number(rng, index),
            hint_term: number(rng, 3),
        }),
        4 => Body::Heartbeat(pb::Heartbeat { commit: number(rng, index), read_context: bytes(rng) }),
        5 => Body::HeartbeatResponse(pb::HeartbeatResponse { read_context: bytes(rng) }),
        6 => Body::TimeoutNow(pb::TimeoutNow {}),
        7 => Body::ReadIndexRequest(pb::ReadIndexRequest { context: bytes(rng) }),
        _ => Body::ReadIndexResponse(pb::ReadIndexResponse { context: bytes(rng), index: number(rng, index) }),
    }
}

/// Term, leader, applied index and data of every replica (all must answer).
async fn view(cell: &TestCell) -> Vec<(u64, u64, Vec<(String, Bytes)>)> {
    let mut out = Vec::new();
    for addr in &cell.addrs {
        let mut c = cell.client(Duration::from_secs(5));
        let status = c.at(addr, |mut rpc| async move { rpc.status(proto::cell::StatusRequest {}).await }).await;
        let status = status.unwrap_or_else(|e| panic!("replica {addr} answers its status: {e}"));
        let list = c
            .at(addr, |mut rpc| async move {
                rpc.list(proto::cell::ListRequest { prefix: "fuzz".into(), stale: true }).await
            })
            .await
            .unwrap();
        out.push((status.term, status.leader_id, list.items.into_iter().map(|kv| (kv.key, kv.value)).collect()));
    }
    out
}

/// Sends `frames` to `addr` on one connection after `hello`, then closes it.
async fn send(addr: &str, hello: &[u8], frames: &[Vec<u8>]) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return };
    let _ = s.write_all(hello).await;
    for f in frames {
        if s.write_all(f).await.is_err() {
            break;
        }
    }
    let _ = s.flush().await;
    // Give the replica a moment to read it all before the connection closes.
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[test]
fn malformed_stale_and_forged_peer_frames_crash_no_replica() {
    let (seed, mut rng) = Rng::from_env("CHUBBY_PEER_FUZZ_SEED");
    eprintln!("peer fuzz seed {seed} (replay with CHUBBY_PEER_FUZZ_SEED={seed})");
    // Long election timeouts: an idle cell keeps its leader, so a changed term is the fuzz's.
    let mut cell = TestCell::start(CellOptions { election_ticks: 100, ..CellOptions::default() });
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut client = cell.client(Duration::from_secs(10));
    rt.block_on(async {
        wait_converged(&client, 0, Duration::from_secs(30)).await.unwrap();
        let rev = client.put("fuzz/a", Bytes::from_static(b"1")).await.unwrap();
        wait_converged(&client, rev, Duration::from_secs(30)).await.unwrap();
    });
    let before = rt.block_on(view(&cell));
    let term = before[0].0;
    let all_running = |cell: &mut TestCell, what: &str| {
        for id in 1..=3 {
            assert!(cell.is_running(id), "replica {id} stopped after {what} (seed {seed}):\n{}", cell.log(id));
        }
    };

    // Malformed, and stale: nothing changes.
    rt.block_on(async {
        for _ in 0..rounds() {
            let to = 1 + rng.below(3);
            let from = 1 + (to + rng.below(2)) % 3;
            let addr = &cell.addrs[(to - 1) as usize];
            let index = 10;
            let mut frames = Vec::new();
            let mut good_hello = true;
            match rng.below(6) {
                // Bodies that are not RaftMessages.
                0 => frames.extend((0..1 + rng.below(4)).map(|_| frame(&bytes(&mut rng)))),
                // A well-formed message whose ids contradict the hello.
                1 => {
                    let m = pb::RaftMessage {
                        from: number(&mut rng, from),
                        to: number(&mut rng, to),
                        term: term + 1 + rng.below(1000),
                        body: Some(body(&mut rng, index, false)),
                    };
                    if m.from != from || m.to != to {
                        frames.push(frame(&m.encode_to_vec()));
                    }
                }
                // A length over the limit, or a truncated frame.
                2 => {
                    let mut f = (u32::MAX - rng.below(1 << 20) as u32).to_le_bytes().to_vec();
                    f.extend(bytes(&mut rng));
                    frames.push(f);
                }
                // A hello naming another receiver, or an unknown peer.
                3 => {
                    good_hello = false;
                    let m = pb::RaftMessage { from, to, term: term + 5, body: Some(body(&mut rng, index, false)) };
                    frames.push(frame(&m.encode_to_vec()));
                }
                // Stale: every kind, absurd fields, a term below the current one.
                _ => {
                    for _ in 0..1 + rng.below(8) {
                        let m = pb::RaftMessage {
                            from,
                            to,
                            term: rng.below(term),
                            body: Some(body(&mut rng, index, false)),
                        };
                        frames.push(frame(&m.encode_to_vec()));
                    }
                }
            }
            let h = if good_hello {
                hello(from, to)
            } else if rng.below(2) == 0 {
                hello(from, 1 + to % 3)
            } else {
                hello(4 + rng.below(1000), to)
            };
            send(addr, &h, &frames).await;
        }
    });
    all_running(&mut cell, "malformed and stale frames");
    // A hello naming a peer replaces that peer's older link (as it must when the peer
    // restarts), so forged hellos cut real links until their peer redials: followers may miss
    // heartbeats and elect a new master. What the frames themselves must not do is change any
    // replica's data.
    let after = rt.block_on(view(&cell));
    for (i, v) in after.iter().enumerate() {
        assert_eq!(
            v.2,
            before[i].2,
            "replica {} changed its data after malformed and stale frames (seed {seed})",
            i + 1
        );
    }

    // Forged at the current or a later term: elections at worst.
    rt.block_on(async {
        for _ in 0..rounds() {
            let to = 1 + rng.below(3);
            let from = 1 + (to + rng.below(2)) % 3;
            let now = view(&cell).await.iter().map(|v| v.0).max().unwrap_or(term);
            let frames: Vec<Vec<u8>> = (0..1 + rng.below(4))
                .map(|_| {
                    let m =
                        pb::RaftMessage { from, to, term: now + rng.below(3), body: Some(body(&mut rng, 10, true)) };
                    frame(&m.encode_to_vec())
                })
                .collect();
            send(&cell.addrs[(to - 1) as usize], &hello(from, to), &frames).await;
        }
    });
    all_running(&mut cell, "forged frames");
    rt.block_on(async {
        let rev = client.put("fuzz/b", Bytes::from_static(b"2")).await.expect("the cell takes writes again");
        wait_converged(&client, rev, Duration::from_secs(60)).await.expect("the replicas agree again");
    });
    all_running(&mut cell, "the write after");
}
