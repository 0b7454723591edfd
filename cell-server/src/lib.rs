//! A Chubby cell replica (see `../shared/DESIGN.md`).
//!
//! - [`config`]: the replica's settings, from flags and/or a TOML file.
//! - [`machine`]: the state machine as the Raft node's, with effects for the master.
//! - [`master`]: the leader's in-memory duties: leases, blocked Acquires, events, invalidation.
//! - [`state`]: the cell's replicated state machine: namespace, sessions, locks, sequencers.
//! - [`service`]: the gRPC services: `chubby.v1.Chubby` (the master's client service) and
//!   `chubby.cell.Cell` (status; membership; operator put, get, list), with one mapping of refusals to statuses.
//! - [`replica`]: one replica process: Raft node, gRPC server, clean shutdown on SIGTERM.
//! - [`datadir`]: a data directory's cell and replica identity, and its lock.
//! - [`local`]: `cell-server local`, a whole cell of replica processes on loopback.
//! - [`certs`]: a cell's certificate authority in a directory, and the certificates it issues.

pub mod certs;
pub mod config;
pub mod datadir;
pub mod local;
pub mod machine;
pub mod master;
pub mod replica;
pub mod restore;
pub mod service;
pub mod state;

pub use proto;
pub use raft;
