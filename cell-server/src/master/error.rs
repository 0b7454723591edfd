//! Why the master did not do what it was asked. The services turn each into the gRPC status a
//! client acts on, in one place (`service::status`).

use raft::{ReplicaError, ReplicaId};

use crate::state::{SessionId, StateError};

#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// The state machine refused the call.
    #[error(transparent)]
    Refused(#[from] StateError),
    /// The Raft node could not settle a proposal or read (not the leader, lost to a leader
    /// change, fate unknown, stopping).
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    /// This replica is not the serving master; `leader` is the Raft leader (0: none known).
    #[error("not the master (leader: {leader})")]
    NotMaster { leader: ReplicaId },
    /// This replica leads but has not finished taking office.
    #[error("master is taking office; retry shortly")]
    TakingOffice,
    /// The master left office while the call needed it; the words say what was cut short.
    #[error("{0}")]
    OfficeEnded(&'static str),
    /// A call's `chubby-epoch` metadata is not a number.
    #[error("{}: not an epoch number", proto::EPOCH_METADATA)]
    BadEpoch,
    /// A call made under a newer master's epoch: this replica was deposed and has not noticed.
    #[error("this master's epoch {ours} is older than the session's {theirs}: a newer master was elected")]
    NewerEpoch { ours: u64, theirs: u64 },
    /// A call made under an older master's epoch: its session has not resumed at this master
    /// since the failover. `master` is this replica, where it should resume.
    #[error("stale epoch {theirs}: the master changed (epoch {ours}); resume the session here before calling")]
    StaleEpoch { ours: u64, theirs: u64, master: ReplicaId },
    /// The session expired or was closed (as a refusal: `NoSession`).
    #[error("session {0} expired or was closed")]
    SessionLost(SessionId),
    /// The session ended while its stream was open; the stream ends with this.
    #[error("session {session} {}", if *.expired { "expired" } else { "closed" })]
    SessionEnded { session: SessionId, expired: bool },
    /// A KeepAlive on a stream that is not the session's at this master.
    #[error("this stream is not the session's at this master; resume the session")]
    NotAttached,
    /// A KeepAlive naming a session that was not opened on its stream.
    #[error("session {0} was not opened on this stream")]
    NotOpenedHere(SessionId),
    /// A write's task failed (it may or may not have been applied).
    #[error("the write's task failed: {0}")]
    TaskFailed(String),
    /// The state machine answered with something the call does not expect.
    #[error("unexpected answer from the state machine: {0}")]
    Unexpected(String),
}
