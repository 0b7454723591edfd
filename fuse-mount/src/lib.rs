//! Client side of the cell: the client library (session, KeepAlive, master discovery, cache),
//! the FUSE daemon and the `chubby` CLI. Built up by the client and mount issues; for now it
//! only links the wire formats so the workspace builds as one.

pub use proto;
