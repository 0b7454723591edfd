//! Client side of the cell.
//!
//! - [`client`]: the client library: a Chubby session, the operator API and how to find a
//!   cell. It needs no FUSE: `default-features = false` builds it alone.
//! - [`fs`]: the FUSE daemon's file system (the default `fuse` feature).

pub mod client;
#[cfg(feature = "fuse")]
pub mod fs;

pub use proto;
