//! The Chubby client library: what a program needs to use a cell, without FUSE.
//!
//! - [`session`]: a Chubby session (Chubby §2.8): KeepAlive, jeopardy, resumption after a
//!   failover, exactly-once calls, the cache kept coherent by the master's invalidations.
//! - [`cell_client`]: the operator API (`chubby.cell.Cell`): status, put, get, list, finding
//!   the leader through any replica.
//! - [`discovery`]: the cell argument and DNS names with an address per replica.
//! - [`call_mux`]: many calls in flight on one gRPC stream, each answered by id.
//! - [`error`]: why a call failed.
//! - [`tls`]: plaintext or mutual TLS, and the identity a client presents.

pub mod call_mux;
pub mod cell_client;
pub mod discovery;
pub mod error;
pub mod session;
pub mod tls;

pub use cell_client::{CellClient, PutPipeline};
pub use discovery::{parse_cell, resolve};
pub use error::ClientError;
pub use session::{
    principal_for, principal_list, principal_of, Invalidated, InvalidationHook, OpenOptions, Session, SessionOptions,
    SessionState,
};
