//! A Chubby cell replica (see `../shared/DESIGN.md`).
//!
//! This crate will hold the replicated state machine (namespace, locks, sessions), the master's
//! in-memory duties and the replica binary. It is built on the [`raft`] library; today it only
//! links the pieces together so the workspace builds as one.

pub use proto;
pub use raft;
