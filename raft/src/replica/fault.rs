//! Why a replica could not start, or stopped on its own. Each names what the replica was doing
//! and keeps the error underneath as its source, so the operator reads the disk's own words
//! ("No space left on device") after the step that met them.

use std::io;
use std::sync::Arc;

use crate::error::{Error, StorageError};
use crate::storage::wal::WalError;
use crate::types::Index;

#[derive(Debug, thiserror::Error)]
pub enum Fault {
    /// The log (or a snapshot file) could not be opened, written or synced.
    #[error("{doing}: {source}")]
    Log { doing: &'static str, source: WalError },
    /// An earlier write or sync of the log failed, on this thread or another: nothing more
    /// may be acknowledged (see [`WalError::Failed`]).
    #[error("the log failed: {0}")]
    LogFailed(String),
    /// The log could not be read where the replica needed it.
    #[error("{doing}: {source}")]
    Storage { doing: String, source: StorageError },
    /// The core refused to start from what the log holds.
    #[error("starting the Raft core: {0}")]
    Core(#[from] Error),
    /// The application's state machine could not restore a snapshot.
    #[error("restoring snapshot {index}: {reason}")]
    Restore { index: Index, reason: String },
    /// An operating-system call of the shell failed (a thread, the peer links' poll).
    #[error("{doing}: {source}")]
    Os { doing: &'static str, source: io::Error },
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
        move |source| Fault::Log { doing, source }
    }

    /// A step's failed operating-system call, named by the step.
    pub(super) fn os(doing: &'static str) -> impl FnOnce(io::Error) -> Fault {
        move |source| Fault::Os { doing, source }
    }
}
