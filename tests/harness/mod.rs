//! The tools end-to-end tests and benchmarks use; see the crate's documentation.

pub mod cell;
pub mod clock;
pub mod link;
pub mod load;
pub mod mount;
pub mod netns;
pub mod process;
pub mod proxy;
pub mod rng;
pub mod tmpfs;
