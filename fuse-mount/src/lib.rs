//! Client side of the cell. Today: [`client`], the library the `chubby` CLI is built on
//! (finding the leader through any replica, redirects, deadlines). The session, KeepAlive,
//! cache and the FUSE daemon grow here in later issues.

pub mod client;

pub use proto;
