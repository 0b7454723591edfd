//! Why the state machine refused an operation. Refusals change nothing. They are data (cached
//! for retried calls, sent to the proposer); the gRPC service maps them to statuses in one place.

use proto::Refusal;
use serde::{Deserialize, Serialize};

use super::command::SessionId;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StateError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}: no such node")]
    NotFound(String),
    #[error("{0}: node exists")]
    Exists(String),
    #[error("contents are {0} bytes; the limit is 262144")]
    TooLarge(u64),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}: directory not empty")]
    NotEmpty(String),
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("generation mismatch: expected {expected}, node is at {actual}")]
    GenerationMismatch { expected: u64, actual: u64 },
    #[error("stale sequencer: the lock it names is no longer held by it")]
    StaleSequencer,
    #[error("stale handle: {0} was deleted or re-created since it was opened")]
    StaleHandle(String),
    #[error("session {0} does not exist (expired or closed)")]
    NoSession(SessionId),
    #[error("{0}: lock is busy")]
    LockBusy(String),
    #[error("{0}: lock not held by this owner")]
    NotHeld(String),
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{path}: lock wait ended: {reason}")]
    WaitEnded { path: String, reason: String },
    #[error("request {0} was already answered and forgotten")]
    Forgotten(u64),
    /// A node whose lock is held or waited for is not deleted: its holders would lose the lock
    /// without being told, and a new node at its name would hand a second holder the lock.
    #[error("{0}: its lock is held or waited for; release it (or cancel the wait) before the node goes from its name")]
    LockHeld(String),
    /// A rename the cell cannot make as one atomic change: of a directory (its whole subtree
    /// would move) or of an ephemeral node (its openers' handles name its path).
    #[error("{0}")]
    NotMovable(String),
    /// A blocking upgrade while another holder of the shared lock waits to upgrade: each
    /// would wait for the other to let go. Last, so remembered answers still decode.
    #[error("{0}: another holder of the shared lock waits to make it exclusive; waiting too would never end")]
    Deadlock(String),
}

impl StateError {
    /// The refusal's name, as clients see it in the `chubby-error` metadata key.
    pub fn reason(&self) -> Refusal {
        match self {
            StateError::InvalidArgument(_) => Refusal::InvalidArgument,
            StateError::NotFound(_) => Refusal::NotFound,
            StateError::Exists(_) => Refusal::Exists,
            StateError::TooLarge(_) => Refusal::TooLarge,
            StateError::PermissionDenied(_) => Refusal::PermissionDenied,
            StateError::NotEmpty(_) => Refusal::NotEmpty,
            StateError::NotADirectory(_) => Refusal::NotADirectory,
            StateError::IsADirectory(_) => Refusal::IsADirectory,
            StateError::GenerationMismatch { .. } => Refusal::GenerationMismatch,
            StateError::StaleSequencer => Refusal::StaleSequencer,
            StateError::StaleHandle(_) => Refusal::StaleHandle,
            StateError::NoSession(_) => Refusal::NoSession,
            StateError::LockBusy(_) => Refusal::LockBusy,
            StateError::NotHeld(_) => Refusal::NotHeld,
            StateError::LimitExceeded(_) => Refusal::LimitExceeded,
            StateError::WaitEnded { .. } => Refusal::WaitEnded,
            StateError::Forgotten(_) => Refusal::Forgotten,
            StateError::LockHeld(_) => Refusal::LockHeld,
            StateError::NotMovable(_) => Refusal::NotMovable,
            StateError::Deadlock(_) => Refusal::Deadlock,
        }
    }
}
