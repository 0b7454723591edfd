//! `SnapshotSave` of the `Cell` service: a consistent copy of the cell's state for a backup.
//!
//! The leader reads its state at a linearizable read point (every write acknowledged before
//! the call is applied there), takes a copy-on-write copy of it, and encodes that on a
//! blocking thread while the cell goes on. The data is streamed in chunks after a header that
//! says what it holds and carries its SHA-256.

// gRPC's Status is the error of every call here; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use proto::cell::{SnapshotChunk, SnapshotHeader};
use tokio::sync::Semaphore;
use tonic::Status;

use super::cell::CellService;
use crate::machine::CellMachine;

pub type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

/// The data is sent in chunks of this size, well under gRPC's 4 MiB message limit.
const CHUNK: usize = 1 << 20;

/// How long a client has to take the whole snapshot.
const SEND_DEADLINE: std::time::Duration = std::time::Duration::from_secs(600);

/// Saves one at a time per replica: each holds a whole encoded state in memory until its
/// stream is sent.
pub fn save_slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(1))
}

impl CellService {
    pub(super) async fn snapshot_save(&self) -> Result<SnapshotStream, Status> {
        let slot = self
            .save_slots()
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the replica is stopping"))?;
        // At the leader only: a redirect otherwise.
        let members = self.members_now(true).await?;
        let copy = self.replica().read(|m: &CellMachine| m.state().copy()).await.map_err(|e| self.status_of(e))?;
        let (summary, index, data, sha256) = tokio::task::spawn_blocking(move || {
            let data = copy.snapshot();
            let sha256 = proto::backup::sha256(&data);
            (copy.summary(), copy.applied(), data, sha256)
        })
        .await
        .map_err(|e| Status::internal(format!("encoding the snapshot failed: {e}")))?;
        let header = SnapshotHeader {
            cell_id: members.cell_id.clone(),
            cell_name: members.cell_name.clone(),
            index,
            taken_at_ms: crate::master::now_ms(),
            leader_id: members.leader_id,
            members: members.members,
            server_version: env!("CARGO_PKG_VERSION").to_string(),
            nodes: summary.nodes,
            directories: summary.directories,
            ephemeral_nodes: summary.ephemeral_nodes,
            content_bytes: summary.content_bytes,
            locks_held: summary.locks_held,
            sessions: summary.sessions,
            data_length: data.len() as u64,
            data_sha256: sha256.to_vec().into(),
        };
        let first = SnapshotChunk { header: Some(header), data: Default::default() };
        let chunks = (0..data.len())
            .step_by(CHUNK)
            .map(move |at| SnapshotChunk { header: None, data: data.slice(at..(at + CHUNK).min(data.len())) });
        // Sent by a task of its own that holds the slot and the data until all is sent, the
        // client is gone, or the deadline passes (a client that stops reading does not keep
        // them for good).
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tokio::spawn(async move {
            let _slot = slot;
            let deadline = tokio::time::Instant::now() + SEND_DEADLINE;
            for chunk in std::iter::once(first).chain(chunks) {
                match tokio::time::timeout_at(deadline, tx.send(Ok(chunk))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        let late =
                            Status::deadline_exceeded(format!("the snapshot was not taken in {SEND_DEADLINE:?}"));
                        let _ = tx.try_send(Err(late));
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}
