//! How replicas talk.
//!
//! - Raft messages travel on **peer links** (`net.rs`): one long-lived TCP connection per
//!   (sender, receiver) pair, on the replica's one port, carrying length-prefixed protobuf
//!   messages (`frame.rs`) so AppendEntries are pipelined. The Raft loop's thread reads and writes
//!   them itself. Sends never block: a peer that is down or slow has its messages dropped and is
//!   reported unreachable (Raft tolerates loss); other peers are not affected. Lost links are
//!   redialled with backoff, so replicas may start in any order.
//! - **Snapshots** go over gRPC (`RaftPeer.InstallSnapshot`) in 1 MiB chunks, on a task of
//!   their own ([`server`] puts them back together and hands the core one message).
//! - The listener tells the two apart by a connection's first bytes ([`accept`]).

pub mod accept;
mod codec;
mod frame;
pub(crate) mod net;
pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proto::raft as pb;
use proto::raft::raft_peer_client::RaftPeerClient;
use tonic::transport::{Channel, Endpoint};

use crate::types::{Message, MessageBody, NodeId, Snapshot};
use net::PeerNet;

const SNAPSHOT_CHUNK: usize = 1 << 20;
/// Largest gRPC message either side accepts.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// What the transport tells the node about delivery.
#[derive(Debug)]
pub enum TransportEvent {
    /// Messages to this peer were dropped.
    Unreachable(NodeId),
    /// A snapshot transfer to this peer finished.
    SnapshotDone { to: NodeId, ok: bool },
}

pub type EventSink = Arc<dyn Fn(TransportEvent) + Send + Sync>;

/// The Raft loop's side of the transport: the peer links (polled, read and flushed by the loop
/// through `net`), and snapshot transfers started on `runtime` that report back through `events`.
pub(crate) struct Transport {
    pub(crate) net: PeerNet,
    peers: BTreeMap<NodeId, String>,
    events: EventSink,
    runtime: tokio::runtime::Handle,
}

impl Transport {
    pub(crate) fn new(
        net: PeerNet,
        peers: BTreeMap<NodeId, String>,
        events: EventSink,
        runtime: tokio::runtime::Handle,
    ) -> Transport {
        Transport { net, peers, events, runtime }
    }

    /// Queues `m` for its destination without blocking; [`PeerNet::flush`] writes it out.
    pub(crate) fn send(&mut self, m: Message) {
        let MessageBody::InstallSnapshot { snapshot } = m.body else {
            self.net.send(&m);
            return;
        };
        let Some(addr) = self.peers.get(&m.to).cloned() else { return };
        let events = self.events.clone();
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
    }
}

async fn connect(addr: &str) -> Result<RaftPeerClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(RaftPeerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE))
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
