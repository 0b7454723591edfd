//! Why a replica could not start, or stopped on its own. Each names what the replica was doing
//! and then the error underneath in its own words ("No space left on device"). The message
//! says it all: the error underneath is not also given as a source, or a report that walks
//! the chain would say it twice.

use std::io;
use std::sync::Arc;

use crate::error::{Error, StorageError};
use crate::storage::wal::WalError;
use crate::types::Index;

#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The log (or a snapshot file) could not be opened, written or synced.
    #[error("{doing}: {error}")]
    Log { doing: &'static str, error: WalError },
    /// An earlier write or sync of the log failed, on this thread or another: nothing more
    /// may be acknowledged (see [`WalError::Failed`]).
    #[error("the log failed: {0}")]
    LogFailed(String),
    /// The log could not be read where the replica needed it.
    #[error("{doing}: {error}")]
    Storage { doing: String, error: StorageError },
    /// The core refused to start from what the log holds.
    #[error("starting the Raft core: {0}")]
    Core(Error),
    /// The application's state machine could not restore a snapshot.
    #[error("restoring snapshot {index}: {reason}")]
    Restore { index: Index, reason: String },
    /// The application's state machine cannot apply a committed entry.
    #[error("applying entry {index}: {reason}")]
    Apply { index: Index, reason: String },
    /// An operating-system call of the shell failed (a thread, the peer links' poll).
    #[error("{doing}: {error}")]
    Os { doing: &'static str, error: io::Error },
    /// The sync thread is gone (it stops after a failed sync, which is reported first).
    #[error("the sync thread stopped")]
    SyncThreadStopped,
    /// The application's snapshot encoder panicked.
    #[error("the state machine's snapshot encoder panicked")]
    EncoderPanicked,
    /// The loop died of this, reported through [`super::Replica::died`] as it happened.
    #[error(transparent)]
    Died(Arc<Fault>),
    /// The Raft loop panicked.
    #[error("the Raft loop panicked: {0}")]
    Panicked(String),
}

impl Fault {
    /// A step's failure of the log, named by the step.
    pub(super) fn log(doing: &'static str) -> impl FnOnce(WalError) -> Fault {
        move |error| Fault::Log { doing, error }
    }

    /// A step's failed operating-system call, named by the step.
    pub(super) fn os(doing: &'static str) -> impl FnOnce(io::Error) -> Fault {
        move |error| Fault::Os { doing, error }
    }
}

impl From<Error> for Fault {
    fn from(e: Error) -> Fault {
        Fault::Core(e)
    }
}
