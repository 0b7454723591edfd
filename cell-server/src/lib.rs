//! A Chubby cell replica (see `../shared/DESIGN.md`).
//!
//! - [`config`]: the replica's settings, from flags and/or a TOML file.
//! - [`machine`]: the state machine as the Raft node's, with effects for the master.
//! - [`master`]: the leader's in-memory duties: leases, blocked Acquires, events, invalidation.
//! - [`chubby_service`]: the `chubby.v1.Chubby` client service; [`calls`]: its calls on one stream.
//! - [`multiplex`]: many calls in flight on one gRPC stream, each answered under its id.
//! - [`state`]: the cell's replicated state machine: namespace, sessions, locks, sequencers.
//! - [`service`]: the `chubby.cell.Cell` gRPC service (status; operator put, get, list) with redirects.
//! - [`replica`]: one replica process: Raft node, gRPC server, clean shutdown on SIGTERM.
//! - [`local`]: `cell-server local`, a whole cell of replica processes on loopback.
//! - [`wire`]: the Chubby service as served over gRPC, refusals made safe for their header.

pub mod calls;
pub mod chubby_service;
pub mod config;
pub mod local;
pub mod machine;
pub mod master;
pub mod multiplex;
pub mod replica;
pub mod service;
pub mod state;
pub mod wire;

pub use proto;
pub use raft;
