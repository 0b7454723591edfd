//! A Chubby cell replica (see `../shared/DESIGN.md`).
//!
//! - [`config`]: the replica's settings, from flags and/or a TOML file.
//! - [`kv`]: the replicated state machine of this stage, a key-value map (the Chubby namespace,
//!   locks and sessions replace it).
//! - [`state`]: the cell's replicated state machine: namespace, sessions, locks, sequencers.
//! - [`service`]: the `chubby.cell.Cell` gRPC service (status, put, get, list) with redirects.
//! - [`replica`]: one replica process: Raft node, gRPC server, clean shutdown on SIGTERM.
//! - [`local`]: `cell-server local`, a whole cell of replica processes on loopback.

pub mod config;
pub mod kv;
pub mod local;
pub mod replica;
pub mod service;
pub mod state;

pub use proto;
pub use raft;
