//! Client side of the cell: [`client`] (the operator API: finding the leader through any
//! replica, redirects, deadlines) and [`session`] (a Chubby session: KeepAlive, jeopardy,
//! resumption after failover, exactly-once calls). The cache and the FUSE daemon grow here.

pub mod client;
pub mod fs;
pub mod multiplex;
pub mod session;

pub use proto;
