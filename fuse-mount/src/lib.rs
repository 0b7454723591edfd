//! Client side of the cell: [`client`] (the operator API: finding the leader through any
//! replica, redirects, deadlines) and [`session`] (a Chubby session: KeepAlive, jeopardy,
//! resumption after failover, exactly-once calls), both sending many calls in flight on one
//! stream through [`multiplex`]; [`fs`] is the FUSE daemon's file system.

pub mod client;
pub mod fs;
pub mod multiplex;
pub mod session;

pub use proto;
