//! The receiving side of snapshot transfers: a `RaftPeer` gRPC service that puts the chunks back
//! together and hands the node one InstallSnapshot message. A malformed transfer ends with
//! `InvalidArgument`; it never reaches the core.

use std::sync::Arc;

use bytes::BytesMut;
use proto::raft as pb;
use proto::raft::raft_peer_server::{RaftPeer, RaftPeerServer};
use tonic::{Request, Response, Status, Streaming};

use super::{codec, MAX_MESSAGE_SIZE};
use crate::types::{Message, MessageBody, ReplicaId, Snapshot};

/// How long the receiver waits for the next chunk of a transfer before giving it up.
const CHUNK_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest snapshot a follower accepts.
const MAX_SNAPSHOT: u64 = 16 << 30;

pub type Deliver = Arc<dyn Fn(Message) + Send + Sync>;
pub type IsMember = Arc<dyn Fn(ReplicaId) -> bool + Send + Sync>;

/// The `RaftPeer` service of node `id`.
pub struct PeerService {
    id: ReplicaId,
    /// This replica's cell: a snapshot from another cell's replica is refused.
    cell: u64,
    /// Whether a replica is a member of the cell now: a snapshot from anyone else is refused.
    is_member: IsMember,
    /// With TLS, this replica's identity: a sender must prove, by a certificate from the
    /// cell's CA, that it is the replica it says.
    certified: Option<proto::tls::Identity>,
    deliver: Deliver,
}

impl PeerService {
    pub fn new(
        id: ReplicaId,
        cell: u64,
        is_member: IsMember,
        certified: Option<proto::tls::Identity>,
        deliver: Deliver,
    ) -> PeerService {
        PeerService { id, cell, is_member, certified, deliver }
    }

    /// The tonic service, ready to add to a server.
    pub fn into_server(self) -> RaftPeerServer<PeerService> {
        RaftPeerServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_SIZE)
            .max_encoding_message_size(MAX_MESSAGE_SIZE)
    }
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::InstallSnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotAck>, Status> {
        let certs = request.peer_certs();
        let chain = certs.as_deref().map(|c| c.as_slice());
        let certified = match &self.certified {
            None => None,
            Some(me) => match proto::tls::peer_principal(chain) {
                Ok(proto::tls::Principal::Replica(id)) if me.from_cell_ca(chain.unwrap_or_default()) => Some(id),
                other => {
                    tracing::warn!(replica = self.id, "snapshot refused: the sender ({other:?}) is not a replica");
                    return Err(Status::permission_denied("only a replica may send snapshots"));
                }
            },
        };
        let mut stream = request.into_inner();
        let mut head: Option<(ReplicaId, u64, pb::SnapshotMeta)> = None;
        let mut data = BytesMut::new();
        loop {
            // A sender that stops mid-transfer (it died, or lost the network without a reset)
            // must not pin a half-received snapshot here for good.
            let next = tokio::time::timeout(CHUNK_IDLE_LIMIT, stream.message())
                .await
                .map_err(|_| Status::deadline_exceeded(format!("no chunk for {CHUNK_IDLE_LIMIT:?}")))?;
            let Some(chunk) = next? else { break };
            if chunk.to != self.id {
                return Err(Status::invalid_argument("snapshot for another replica"));
            }
            if chunk.offset != data.len() as u64 {
                return Err(Status::invalid_argument(format!(
                    "chunk at {} but {} bytes received",
                    chunk.offset,
                    data.len()
                )));
            }
            if chunk.cell != self.cell {
                tracing::warn!(
                    replica = self.id,
                    from = chunk.from,
                    "snapshot refused: the sender belongs to cell {:016x}, not {:016x}",
                    chunk.cell,
                    self.cell
                );
                return Err(Status::permission_denied("the sender belongs to another cell"));
            }
            if chunk.from == self.id || !(self.is_member)(chunk.from) {
                tracing::warn!(
                    replica = self.id,
                    from = chunk.from,
                    "snapshot refused: the sender is not a peer of this cell"
                );
                return Err(Status::permission_denied(format!("replica {} is not a peer of this cell", chunk.from)));
            }
            if certified.is_some_and(|id| id != chunk.from) {
                tracing::warn!(
                    replica = self.id,
                    from = chunk.from,
                    ?certified,
                    "snapshot refused: sender is not the replica it says"
                );
                return Err(Status::permission_denied("the certificate is another replica's"));
            }
            if head.is_none() {
                let meta =
                    chunk.meta.clone().ok_or_else(|| Status::invalid_argument("first chunk without metadata"))?;
                head = Some((chunk.from, chunk.term, meta));
            }
            if data.len() as u64 + chunk.data.len() as u64 > MAX_SNAPSHOT {
                return Err(Status::resource_exhausted("snapshot too large"));
            }
            data.extend_from_slice(&chunk.data);
            if chunk.done {
                let (from, term, meta) = head.take().expect("set by the first chunk");
                let snapshot = Snapshot { meta: codec::meta_from_pb(meta), data: data.split().freeze() };
                (self.deliver)(Message { from, to: self.id, term, body: MessageBody::InstallSnapshot { snapshot } });
                return Ok(Response::new(pb::InstallSnapshotAck { term, accepted: true }));
            }
        }
        Err(Status::invalid_argument("snapshot stream ended before the last chunk"))
    }
}
