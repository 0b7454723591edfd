//! Refusals and errors as the gRPC statuses clients act on (DESIGN.md, Errors), in one place:
//! the code, a message, the reason in the `chubby-error` metadata key, and for a redirect the
//! master's address in `chubby-leader`.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::master::{Master, MasterError};
use crate::state::StateError;
use proto::{Refusal, ERROR_METADATA};
use raft::{ReplicaError, ReplicaId};

/// Which service's call failed: they differ only in a replica error whose outcome is unknown.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A Chubby session call carries a request id, so a retry with it is safe: `UNAVAILABLE`.
    Chubby,
    /// An operator put carries none: a retry could apply it twice, so the client is told the
    /// outcome is `UNKNOWN`.
    Cell,
}

/// Maps a state-machine refusal to a gRPC status.
pub fn status_of_state(e: StateError) -> Status {
    let code = match &e {
        StateError::InvalidArgument(_) => Code::InvalidArgument,
        StateError::NotFound(_) | StateError::NoSession(_) => Code::NotFound,
        StateError::Exists(_) => Code::AlreadyExists,
        StateError::TooLarge(_) | StateError::LimitExceeded(_) => Code::ResourceExhausted,
        StateError::PermissionDenied(_) | StateError::StaleSequencer | StateError::StaleHandle(_) => {
            Code::PermissionDenied
        }
        StateError::NotEmpty(_)
        | StateError::NotADirectory(_)
        | StateError::IsADirectory(_)
        | StateError::GenerationMismatch { .. }
        | StateError::LockBusy(_)
        | StateError::NotHeld(_)
        | StateError::LockHeld(_)
        | StateError::NotMovable(_)
        | StateError::Deadlock(_)
        | StateError::Forgotten(_) => Code::FailedPrecondition,
        StateError::WaitEnded { .. } => Code::Aborted,
    };
    with_reason(Status::new(code, e.to_string()), e.reason())
}

/// Maps a master's error to the status a client of `caller`'s service acts on.
pub fn status_of(master: &Master, caller: Caller, e: MasterError) -> Status {
    let message = e.to_string();
    match e {
        MasterError::Refused(e) => status_of_state(e),
        MasterError::Replica(e) => status_of_replica(master, caller, e),
        MasterError::NotMaster { leader } => redirect(master, leader, "master"),
        MasterError::TakingOffice
        | MasterError::OfficeEnded(_)
        | MasterError::NewerEpoch { .. }
        | MasterError::NotAttached => Status::unavailable(message),
        MasterError::BadEpoch => Status::invalid_argument(message),
        MasterError::StaleEpoch { master: me, .. } => {
            let redirect = redirect(master, me, "master");
            with_reason(
                Status::with_metadata(Code::FailedPrecondition, message, redirect.metadata().clone()),
                Refusal::StaleEpoch,
            )
        }
        MasterError::SessionLost(_) => with_reason(Status::not_found(message), Refusal::NoSession),
        MasterError::SessionEnded { .. } => Status::not_found(message),
        MasterError::NotOpenedHere(_) => Status::permission_denied(message),
        MasterError::TaskFailed(_) | MasterError::Unexpected(_) => Status::internal(message),
    }
}

/// Maps a Raft node's error: the master's words for a Chubby call, the leader's for the
/// operator's.
pub fn status_of_replica(master: &Master, caller: Caller, e: ReplicaError) -> Status {
    let (chubby, word) = (caller == Caller::Chubby, if caller == Caller::Chubby { "master" } else { "leader" });
    match e {
        ReplicaError::NotLeader { leader } => redirect(master, leader, word),
        ReplicaError::Dropped if chubby => Status::aborted("lost to a master change and not applied; retry"),
        ReplicaError::Dropped => Status::aborted("write lost to a leader change and not applied; retry"),
        ReplicaError::Unknown if chubby => Status::unavailable(
            "master changed; the call may or may not have been applied; retry it with the same request id",
        ),
        ReplicaError::Unknown => Status::unknown("leader changed; the write may or may not have been applied"),
        ReplicaError::Stopped => Status::unavailable("replica is shutting down"),
        ReplicaError::Raft(e) => Status::unavailable(e.to_string()),
    }
}

/// The status that sends a client to `leader`'s address (`chubby-leader`), or asks it to
/// retry while none is known.
fn redirect(master: &Master, leader: ReplicaId, word: &str) -> Status {
    match master.address_of(leader) {
        Some(addr) => {
            let mut s =
                Status::failed_precondition(format!("not the {word}; the {word} is replica {leader} at {addr}"));
            if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                s.metadata_mut().insert(proto::LEADER_METADATA, v);
            }
            s
        }
        None => Status::unavailable(format!("no {word} elected yet; retry shortly")),
    }
}

pub(crate) fn with_reason(mut s: Status, reason: Refusal) -> Status {
    s.metadata_mut().insert(ERROR_METADATA, reason.metadata_value());
    s
}
