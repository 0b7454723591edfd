//! Wire formats of the cell, generated from `proto/*.proto`.
//!
//! - [`raft`]: messages between replicas (the transport converts to and from the core's types).
//! - [`chubby`]: the client service the master serves (Chubby §2.6).
//! - [`cell`]: cell status and administration, served by every replica.
//! - [`Refusal`]: why the cell refused a call, by the name both sides use.
//! - [`backup`]: the backup file format.

pub mod backup;
mod refusal;
pub mod tls;

pub use refusal::Refusal;

/// Peer-to-peer Raft messages and the `RaftPeer` service.
pub mod raft {
    tonic::include_proto!("chubby.raft");
}

/// The Chubby client service.
pub mod chubby {
    tonic::include_proto!("chubby.v1");
}

/// Cell status and administration (and the key-value map of the first replica binary).
pub mod cell {
    tonic::include_proto!("chubby.cell");
}

/// The metadata key that carries the cell's reason for a refusal (`LockBusy`, `NoSession`, …).
pub const ERROR_METADATA: &str = "chubby-error";

/// The metadata key that carries the leader's address in a not-the-leader answer.
pub const LEADER_METADATA: &str = "chubby-leader";

/// The metadata key on a session's calls that carries the master epoch its latest lease came
/// from. A master refuses a call from another epoch: after a failover a client must resume its
/// session (and drop its cache) before the new master serves it (Chubby §2.9).
pub const EPOCH_METADATA: &str = "chubby-epoch";
