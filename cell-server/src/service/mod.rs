//! The gRPC services a replica serves, and how their calls travel.
//!
//! - [`chubby`]: `chubby.v1.Chubby`, the client service the master serves (Chubby §2.6), one
//!   file per group of calls, and [`chubby::calls`], the same calls on one stream.
//! - [`cell`]: `chubby.cell.Cell`, served by every replica: status, operator put, get, list.
//! - [`answer_stream`]: many requests in flight on one gRPC stream, each answered under its id.
//! - [`status`]: refusals and replica errors as gRPC statuses, in one place.
//! - [`wire`]: the Chubby service with every refusal's message made safe for its header.

pub mod answer_stream;
mod backup;
pub mod cell;
pub mod chubby;
mod members;
pub mod status;

pub mod wire;

pub use cell::CellService;
pub use chubby::ChubbyService;
pub use wire::WireChubby;
