//! How replicas talk.
//!
//! - Raft messages travel on **peer links** (`net.rs`): one long-lived TCP connection per
//!   (sender, receiver) pair, on the replica's one port, carrying length-prefixed protobuf
//!   messages (`frame.rs`) so AppendEntries are pipelined. The Raft loop's thread reads and writes
//!   them itself. Sends never block: a peer that is down or slow has its messages dropped and is
//!   reported unreachable (Raft tolerates loss); other peers are not affected. Lost links are
//!   redialled with backoff, so replicas may start in any order.
//! - **Snapshots** go over gRPC (`RaftPeer.InstallSnapshot`) in 1 MiB chunks, on a task of
//!   their own ([`server`] puts them back together and hands the core one message). A transfer
//!   has a deadline that grows with its size, and its connection sends HTTP/2 keepalive pings:
//!   the leader sends the follower nothing else until the transfer reports back, so a peer that
//!   dies or is cut off mid-transfer must end it as failed (the leader then probes and sends
//!   again), not stall that follower for good. The receiver likewise gives up on a transfer
//!   whose next chunk does not come in time.
//! - The listener tells the two apart by a connection's first bytes ([`accept`]).

pub mod accept;
mod codec;
mod error;
mod frame;
pub(crate) mod net;
pub mod server;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use proto::raft as pb;
use proto::raft::raft_peer_client::RaftPeerClient;
use tonic::transport::{Channel, Endpoint};

use crate::types::{Message, MessageBody, ReplicaId, Snapshot};
pub use error::{LinkError, SnapshotSendError};
use net::PeerNet;

const SNAPSHOT_CHUNK: usize = 1 << 20;

/// A snapshot transfer may take this long, plus the time its bytes take at
/// [`SNAPSHOT_MIN_RATE`]: the slowest link a cell is expected to run on.
const SNAPSHOT_BASE_DEADLINE: Duration = Duration::from_secs(10);
const SNAPSHOT_MIN_RATE: u64 = 2 << 20;

/// How long a transfer of `len` bytes may take before it is given up as failed.
fn snapshot_deadline(len: usize) -> Duration {
    SNAPSHOT_BASE_DEADLINE + Duration::from_secs_f64(len as f64 / SNAPSHOT_MIN_RATE as f64)
}
/// Largest gRPC message either side accepts.
pub const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// What the transport tells the node about delivery.
#[derive(Debug)]
pub enum TransportEvent {
    /// Messages to this peer were dropped.
    Unreachable(ReplicaId),
    /// A snapshot transfer to this peer finished.
    SnapshotDone { to: ReplicaId, ok: bool },
}

pub type EventSink = Arc<dyn Fn(TransportEvent) + Send + Sync>;

/// The Raft loop's side of the transport: the peer links (polled, read and flushed by the loop
/// through `net`), and snapshot transfers started on `runtime` that report back through `events`.
pub(crate) struct Transport {
    pub(crate) net: PeerNet,
    /// This replica's cell, sent with snapshots.
    cell: u64,
    peers: BTreeMap<ReplicaId, String>,
    events: EventSink,
    runtime: tokio::runtime::Handle,
    /// With certificates: the identity snapshot transfers present, and the address each
    /// peer's certificate names.
    tls: Option<(proto::tls::Identity, BTreeMap<ReplicaId, String>)>,
}

impl Transport {
    pub(crate) fn new(
        net: PeerNet,
        cell: u64,
        peers: BTreeMap<ReplicaId, String>,
        events: EventSink,
        runtime: tokio::runtime::Handle,
        tls: Option<(proto::tls::Identity, BTreeMap<ReplicaId, String>)>,
    ) -> Transport {
        Transport { net, cell, peers, events, runtime, tls }
    }

    /// The members changed: `peers` are where they are now, `names` what their certificates name.
    pub(crate) fn set_peers(&mut self, peers: BTreeMap<ReplicaId, String>, names: BTreeMap<ReplicaId, String>) {
        self.net.set_peers(&peers, &names);
        if let Some((_, n)) = &mut self.tls {
            *n = names;
        }
        self.peers = peers;
    }

    /// Queues `m` for its destination without blocking; [`PeerNet::flush`] writes it out.
    pub(crate) fn send(&mut self, m: Message) {
        let MessageBody::InstallSnapshot { snapshot } = m.body else {
            self.net.send(&m);
            return;
        };
        let Some(addr) = self.peers.get(&m.to).cloned() else { return };
        let events = self.events.clone();
        let (from, to, term, cell) = (m.from, m.to, m.term, self.cell);
        let tls = self.tls.as_ref().map(|(id, names)| (id.clone(), names.get(&to).cloned().unwrap_or(addr.clone())));
        self.runtime.spawn(async move {
            let deadline = snapshot_deadline(snapshot.data.len());
            let tls = tls.as_ref().map(|(id, name)| (id, name.as_str()));
            let ok = match send_snapshot(&addr, tls, (from, cell), to, term, snapshot, deadline).await {
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

/// `tls`: the identity to present, and the address the peer's certificate names.
async fn connect(
    addr: &str,
    tls: Option<(&proto::tls::Identity, &str)>,
) -> Result<RaftPeerClient<Channel>, tonic::transport::Error> {
    let endpoint = match tls {
        None => Endpoint::from_shared(format!("http://{addr}"))?,
        Some((id, name)) => {
            let host = proto::tls::host_of(name);
            Endpoint::from_shared(format!("https://{addr}"))?.tls_config(id.tonic_config().domain_name(host))?
        }
    };
    let channel = endpoint
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        // A peer that vanishes without closing the connection (power off, a partition) is
        // found out in seconds, not at the transfer's deadline. The answer to a ping may
        // queue behind the data in flight on a slow link, hence the long wait for it.
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    Ok(RaftPeerClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE))
}

/// Streams `snap` to `addr` in chunks; returns whether the follower accepted it, or an error
/// if it failed or did not finish within `deadline`.
async fn send_snapshot(
    addr: &str,
    tls: Option<(&proto::tls::Identity, &str)>,
    from: (ReplicaId, u64),
    to: ReplicaId,
    term: u64,
    snap: Snapshot,
    deadline: Duration,
) -> Result<bool, SnapshotSendError> {
    let transfer = transfer_snapshot(addr, tls, from, to, term, snap);
    match tokio::time::timeout(deadline, transfer).await {
        Ok(result) => result,
        Err(_) => Err(SnapshotSendError::Timeout(deadline)),
    }
}

async fn transfer_snapshot(
    addr: &str,
    tls: Option<(&proto::tls::Identity, &str)>,
    (from, cell): (ReplicaId, u64),
    to: ReplicaId,
    term: u64,
    snap: Snapshot,
) -> Result<bool, SnapshotSendError> {
    let mut client = connect(addr, tls).await?;
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
            cell,
        });
        if end == data.len() {
            break;
        }
        offset = end;
    }
    let ack = client.install_snapshot(tokio_stream::iter(chunks)).await?;
    Ok(ack.into_inner().accepted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::SnapshotMeta;

    /// A peer that takes the connection and then never reads or answers (a process stopped
    /// mid-transfer, a host gone behind a partition that drops packets): the transfer ends as
    /// failed at its deadline, so the leader sends again instead of waiting for good.
    #[test]
    fn a_transfer_to_a_peer_that_never_answers_fails_at_its_deadline() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Bound, never accepted: the kernel completes connections into the backlog.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let snap = Snapshot { meta: SnapshotMeta::default(), data: bytes::Bytes::from(vec![7u8; 3 << 20]) };
        let began = std::time::Instant::now();
        let result = rt.block_on(async {
            // The outer bound only keeps a broken build from hanging the test run.
            tokio::time::timeout(
                Duration::from_secs(60),
                send_snapshot(&addr, None, (1, 9), 2, 3, snap, Duration::from_millis(500)),
            )
            .await
        });
        let result = result.unwrap_or_else(|_| panic!("the transfer still ran after {:?}", began.elapsed()));
        assert!(matches!(result, Err(SnapshotSendError::Timeout(_))), "{result:?}");
        drop(silent);
    }

    #[test]
    fn the_deadline_grows_with_the_snapshot() {
        assert_eq!(snapshot_deadline(0), SNAPSHOT_BASE_DEADLINE);
        assert_eq!(snapshot_deadline(1 << 30), SNAPSHOT_BASE_DEADLINE + Duration::from_secs(512));
    }
}
