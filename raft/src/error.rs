//! Errors of the core and of [`crate::Storage`].

use crate::types::{Index, ReplicaId};

/// Why the core refused a request. None of these change any state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only the leader accepts proposals; `leader` is the last known leader, or 0.
    #[error("not the leader (leader hint: {leader})")]
    NotLeader { leader: ReplicaId },
    /// The leader is handing leadership over and takes no proposals meanwhile (thesis §3.10).
    #[error("leadership transfer to {to} in progress")]
    TransferInProgress { to: ReplicaId },
    /// A previous membership change has not been applied yet.
    #[error("a membership change is already pending (entry {pending})")]
    ConfChangePending { pending: Index },
    /// The membership change makes no sense in the current configuration.
    #[error("invalid membership change: {0}")]
    InvalidConfChange(String),
    /// The configuration given to [`crate::RawNode::new`] is unusable.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// What a [`crate::Storage`] implementation may answer instead of entries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// The requested index is below the first index kept (it was compacted into a snapshot).
    #[error("log compacted below the requested index")]
    Compacted,
    /// The requested index is beyond the last index.
    #[error("requested index is unavailable")]
    Unavailable,
    /// A snapshot is being produced; the leader tries again later.
    #[error("snapshot temporarily unavailable")]
    SnapshotTemporarilyUnavailable,
    /// Anything else (I/O, corruption): the replica cannot go on safely.
    #[error("storage failure: {0}")]
    Other(String),
}
