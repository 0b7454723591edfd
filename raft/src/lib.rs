//! Raft consensus as a library: a pure, deterministic core in the style of etcd's raft.
//!
//! There is no I/O, clock or thread inside. The application drives a [`RawNode`]:
//!
//! - [`RawNode::tick`] once per logical clock tick (election and heartbeat timeouts are counted
//!   in ticks);
//! - [`RawNode::step`] for every message received from a peer;
//! - [`RawNode::propose`], [`RawNode::propose_conf_change`], [`RawNode::read_index`],
//!   [`RawNode::transfer_leader`] for what clients ask;
//! - [`RawNode::ready`] hands out a [`Ready`]: hard state, entries and a snapshot to persist,
//!   messages to send, committed entries to apply and read states; after persisting them the
//!   application calls [`RawNode::advance`].
//!
//! The core is the files at this level: `raft.rs` steps messages, `election.rs`,
//! `replication.rs`, `read_only.rs` (ReadIndex) and `confchange.rs` hold its rules,
//! `raft_log.rs`/`unstable.rs` its log, `tracker.rs`/`progress.rs`/`inflights.rs` its view of
//! each peer, `quorum.rs` majorities, `raw_node.rs` the [`Ready`] interface.
//!
//! The I/O shell around it, in folders:
//! - [`storage`]: the [`Storage`] trait the core reads the log from, [`MemStorage`] for tests
//!   and simulation, and [`DiskStorage`]: a segmented write-ahead log plus snapshot files;
//! - [`transport`]: messages between replicas over TCP, and snapshot transfers;
//! - [`replica`]: [`Replica`] runs one replica (core + disk + transport + the application's
//!   [`StateMachine`]) on its own thread, with group commit.
//!
//! [`transcript`] runs text transcripts (command, `----`, expected output) for scenario tests.
//!
//! Membership changes are one server at a time (Ongaro's thesis §4.1), proposed with
//! [`RawNode::propose_conf_change`]: a change takes effect as soon as its entry is in a node's
//! log (committed or not), only one change may be pending at a time, and a new leader proposes
//! one only after committing an entry of its own term; together these keep any two successive
//! configurations' majorities overlapping (the reasoning is in `confchange.rs`).

mod confchange;
mod config;
mod election;
mod error;
mod inflights;
mod progress;
mod quorum;
mod raft;
mod raft_log;
mod raw_node;
mod read_only;
pub mod replica;
mod replication;
mod rng;
pub mod storage;
mod tracker;
pub mod transcript;
pub mod transport;
mod types;
mod unstable;

pub use config::Config;
pub use error::{Error, StorageError};
pub use progress::{Progress, ProgressState};
pub use raft::{Role, SoftState};
pub use raw_node::{RawNode, Ready, Status};
pub use read_only::ReadState;
pub use replica::{
    Fault, Leadership, Membership, Replica, ReplicaError, ReplicaHandle, ReplicaOptions, ReplicaStatus,
    SnapshotEncoder, StateMachine,
};
pub use storage::disk::{DiskOptions, DiskStorage, FsyncPolicy};
pub use storage::{bootstrap_log, MemStorage, Storage};
pub use types::{
    ConfChange, ConfState, Entry, EntryKind, HardState, Index, Message, MessageBody, ReplicaId, Snapshot, SnapshotMeta,
    Term, MAX_ADDR_LEN,
};
