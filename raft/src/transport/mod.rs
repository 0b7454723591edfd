//! The gRPC transport between replicas (`proto::raft::RaftPeer`).
//!
//! - One long-lived client stream per peer carries every message to it, in order, so
//!   AppendEntries are pipelined rather than one request-response at a time.
//! - Each peer has its own task and a bounded queue. [`Transport::send`] never blocks: when a
//!   peer is down or slow its queue fills, further messages to it are dropped and the core is
//!   told the peer is unreachable (Raft tolerates loss). Other peers are not affected.
//! - A task that loses its stream reconnects with exponential backoff (50 ms to 1 s), so
//!   replicas may start in any order.
//! - Snapshots go over a separate `InstallSnapshot` stream in 1 MiB chunks ([`server`] puts
//!   them back together and hands the core one message).

mod codec;
pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proto::raft as pb;
use proto::raft::raft_peer_client::RaftPeerClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::types::{Message, MessageBody, NodeId, Snapshot};

/// Messages queued per peer before further ones are dropped.
const PEER_QUEUE: usize = 4096;
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Largest gRPC message either side accepts (AppendEntries are capped well below).
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// What the transport tells the node about delivery.
#[derive(Debug)]
pub enum TransportEvent {
    /// A message to this peer was dropped.
    Unreachable(NodeId),
    /// A snapshot transfer to this peer finished.
    SnapshotDone { to: NodeId, ok: bool },
}

pub type EventSink = Arc<dyn Fn(TransportEvent) + Send + Sync>;

/// Outgoing side of the transport. Dropping it stops every peer task.
pub struct Transport {
    id: NodeId,
    peers: BTreeMap<NodeId, Peer>,
    events: EventSink,
    runtime: tokio::runtime::Handle,
}

struct Peer {
    addr: String,
    queue: mpsc::Sender<pb::RaftMessage>,
}

impl Transport {
    /// Starts one task per peer on `runtime`. `peers` maps ids to `host:port`; this node's own
    /// entry, if present, is ignored.
    pub fn start(
        id: NodeId,
        peers: &BTreeMap<NodeId, String>,
        events: EventSink,
        runtime: tokio::runtime::Handle,
    ) -> Transport {
        let mut out = BTreeMap::new();
        for (&peer, addr) in peers {
            if peer == id {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            runtime.spawn(peer_loop(peer, addr.clone(), rx, events.clone()));
            out.insert(peer, Peer { addr: addr.clone(), queue: tx });
        }
        Transport { id, peers: out, events, runtime }
    }

    /// Queues `m` for its destination without blocking.
    pub fn send(&self, m: Message) {
        let Some(peer) = self.peers.get(&m.to) else {
            tracing::warn!(replica = self.id, to = m.to, "message to an unknown peer dropped");
            return;
        };
        if let MessageBody::InstallSnapshot { snapshot } = m.body {
            let events = self.events.clone();
            let addr = peer.addr.clone();
            let (from, to, term) = (m.from, m.to, m.term);
            self.runtime.spawn(async move {
                let ok = match send_snapshot(&addr, from, to, term, snapshot).await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(replica = from, to, "snapshot transfer failed: {e}");
                        false
                    }
                };
                events(TransportEvent::SnapshotDone { to, ok });
            });
            return;
        }
        let Some(wire) = codec::to_pb(&m) else { return };
        if peer.queue.try_send(wire).is_err() {
            (self.events)(TransportEvent::Unreachable(m.to));
        }
    }
}

fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

async fn connect(addr: &str) -> Result<RaftPeerClient<Channel>, tonic::transport::Error> {
    let channel = endpoint(addr)?.connect().await?;
    Ok(RaftPeerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE))
}

/// Keeps one stream open to `to` and forwards its queue into it, reconnecting with backoff.
/// Ends when the [`Transport`] is dropped.
async fn peer_loop(to: NodeId, addr: String, mut queue: mpsc::Receiver<pb::RaftMessage>, events: EventSink) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut client = match connect(&addr).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(to, %addr, "connect failed: {e}");
                // Whatever queued up meanwhile is stale; the core will retry what matters.
                let mut dropped = false;
                loop {
                    match queue.try_recv() {
                        Ok(_) => dropped = true,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                if dropped {
                    events(TransportEvent::Unreachable(to));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        tracing::debug!(to, %addr, "stream open");
        let (tx, rx) = mpsc::channel(256);
        let call = client.messages(ReceiverStream::new(rx));
        tokio::pin!(call);
        loop {
            tokio::select! {
                res = &mut call => {
                    tracing::debug!(to, %addr, "stream closed: {:?}", res.err());
                    events(TransportEvent::Unreachable(to));
                    break;
                }
                m = queue.recv() => match m {
                    None => return,
                    Some(m) => if tx.send(m).await.is_err() { break },
                },
            }
        }
    }
}

/// Streams `snap` to `addr` in chunks; returns whether the follower accepted it.
async fn send_snapshot(addr: &str, from: NodeId, to: NodeId, term: u64, snap: Snapshot) -> Result<bool, String> {
    let mut client = connect(addr).await.map_err(|e| e.to_string())?;
    let meta = codec::meta_to_pb(&snap.meta);
    let data = snap.data;
    let mut chunks = Vec::new();
    let mut offset = 0;
    loop {
        let end = (offset + SNAPSHOT_CHUNK).min(data.len());
        chunks.push(pb::InstallSnapshotChunk {
            from,
            to,
            term,
            meta: (offset == 0).then(|| meta.clone()),
            offset: offset as u64,
            data: data.slice(offset..end),
            done: end == data.len(),
        });
        if end == data.len() {
            break;
        }
        offset = end;
    }
    let ack = client.install_snapshot(tokio_stream::iter(chunks)).await.map_err(|e| e.to_string())?;
    Ok(ack.into_inner().accepted)
}
