//! Wire formats of the cell, generated from `proto/*.proto`.
//!
//! - [`raft`]: messages between replicas (the transport converts to and from the core's types).
//! - [`chubby`]: the client service the master serves (Chubby §2.6).

/// Peer-to-peer Raft messages and the `RaftPeer` service.
pub mod raft {
    tonic::include_proto!("chubby.raft");
}

/// The Chubby client service.
pub mod chubby {
    tonic::include_proto!("chubby.v1");
}
