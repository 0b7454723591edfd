//! End-to-end tests of the cell (real processes, real mounts, faults) and the helpers they
//! share. The Raft core's own proof (simulation and scenario transcripts) lives in `raft/tests/`.
//!
//! The binaries under test (`cell-server`, `chubby`) are the ones `cargo test --workspace`
//! builds next to this test binary (target/<profile>/). Every process a test starts is killed
//! by PID when its [`TestCell`] is dropped, also when the test fails.
//!
//! The harness, one file per tool: [`harness::cell`] (a [`TestCell`] of replica processes, also
//! what the benchmarks start), [`harness::load`] (clients writing and passing a lock, checked
//! afterwards), [`harness::link`] (links between replicas a test blocks),
//! [`harness::netns`] and [`harness::proxy`] (clients whose network is cut or whose answers are
//! lost), [`harness::tmpfs`] (a disk that fills), [`harness::clock`] (clocks that step),
//! [`harness::mount`] (FUSE mounts, `cell-server local`), [`harness::process`] and
//! [`harness::rng`]. Checkers: [`linearizability`], and the fault schedules of [`nemesis`].

pub mod harness;
pub mod linearizability;
pub mod nemesis;

pub use harness::cell::{client_principal, issue_cert, issue_paths, statuses, wait_converged, CellOptions, TestCell};
pub use harness::clock::{faketime_env, LIBFAKETIME};
pub use harness::link::Link;
pub use harness::mount::{detach, fuse_available, is_mount_point, LocalCell, Mount};
pub use harness::netns::Netns;
pub use harness::process::{bin, exit_within, free_ports, lines_of, terminate, Pids};
pub use harness::proxy::Proxy;
pub use harness::rng::Rng;
pub use harness::tmpfs::Tmpfs;
