//! Why a client call failed.

use std::time::Duration;

use proto::Refusal;
use tonic::Status;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no replica address given (use --cell ADDR[,ADDR…] or CHUBBY_CELL)")]
    NoAddress,
    #[error("bad replica address {0:?}")]
    BadAddress(String),
    #[error("cell file {0}")]
    CellFile(String),
    /// The deadline passed without any replica answering definitively.
    #[error("no answer from the cell within {timeout:?} (last problem: {last})")]
    Timeout { timeout: Duration, last: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The session expired at the master or could not reach one within its grace period.
    #[error("session {0} lost: its locks and handles are gone")]
    SessionLost(u64),
    /// The cell answered with an error that retrying will not fix.
    #[error("{}", .0.message())]
    Rpc(Box<Status>),
}

impl ClientError {
    /// The cell's reason for a refusal (its `chubby-error` metadata), if it gave one.
    pub fn reason(&self) -> Option<Refusal> {
        match self {
            ClientError::Rpc(s) => Refusal::of_metadata(s.metadata()),
            _ => None,
        }
    }
}
