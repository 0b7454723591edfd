//! The one place where the cell's refusals become errno values (DESIGN.md, Errors).

use fuser::Errno;
use proto::Refusal;
use tonic::Code;

use crate::client::ClientError;

/// The errno a file-system call returns for a failed cell call.
pub fn errno_of(e: &ClientError) -> Errno {
    match e {
        // A lost session's handles and locks are gone: fail loudly, never pretend.
        ClientError::SessionLost(_) => Errno::EIO,
        ClientError::Timeout { .. } => Errno::from_i32(libc::ETIMEDOUT),
        ClientError::NoAddress | ClientError::BadAddress(_) | ClientError::CellFile(_) => Errno::EIO,
        ClientError::Io(io) => io.raw_os_error().map(Errno::from_i32).unwrap_or(Errno::EIO),
        ClientError::Rpc(s) => match e.reason() {
            Some(reason) => errno_of_reason(reason),
            // A refusal this build does not know (from a newer cell): no guess from its code.
            None if s.metadata().contains_key(proto::ERROR_METADATA) => Errno::EIO,
            None => match s.code() {
                Code::InvalidArgument | Code::OutOfRange => Errno::EINVAL,
                Code::NotFound => Errno::ENOENT,
                Code::AlreadyExists => Errno::EEXIST,
                Code::PermissionDenied | Code::Unauthenticated => Errno::EACCES,
                Code::ResourceExhausted => Errno::from_i32(libc::ENOSPC),
                Code::DeadlineExceeded => Errno::from_i32(libc::ETIMEDOUT),
                _ => Errno::EIO,
            },
        },
    }
}

/// The cell's refusals as errno values.
fn errno_of_reason(reason: Refusal) -> Errno {
    let code = match reason {
        Refusal::NotFound => libc::ENOENT,
        Refusal::Exists => libc::EEXIST,
        Refusal::TooLarge => libc::EFBIG,
        Refusal::PermissionDenied => libc::EACCES,
        Refusal::NotEmpty => libc::ENOTEMPTY,
        Refusal::NotADirectory => libc::ENOTDIR,
        Refusal::IsADirectory => libc::EISDIR,
        Refusal::InvalidArgument => libc::EINVAL,
        Refusal::LockBusy => libc::EWOULDBLOCK,
        Refusal::NotHeld => libc::ENOLCK,
        // `rm` of a file whose lock another holds or waits for.
        Refusal::LockHeld => libc::EBUSY,
        // A rename that cannot be atomic (a directory): `mv` copies and deletes instead.
        Refusal::NotMovable => libc::EXDEV,
        Refusal::LimitExceeded => libc::ENOSPC,
        // The node was deleted or re-created since it was opened (NFS's "stale file handle").
        Refusal::StaleHandle => libc::ESTALE,
        // A fenced write whose sequencer is no longer current, or a CAS that lost its race.
        Refusal::StaleSequencer | Refusal::GenerationMismatch => libc::EPERM,
        // A queued Acquire ended without a grant (its node went). Never EINTR: the kernel
        // restarts a lock call that gets EINTR, and with no signal pending its caller gets
        // error 512 (ERESTARTSYS) instead.
        Refusal::WaitEnded => libc::ENOENT,
        Refusal::NoSession => libc::EIO,
        // fcntl's answer to a wait that would never end.
        Refusal::Deadlock => libc::EDEADLK,
        // Handled by the session (a retry, a resumption) before it reaches a file-system call.
        Refusal::Forgotten | Refusal::StaleEpoch => libc::EIO,
        // An operator's call; no file-system call makes one.
        Refusal::MembershipRefused => libc::EIO,
    };
    Errno::from_i32(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    fn refusal(code: Code, reason: &'static str) -> ClientError {
        let mut s = Status::new(code, "refused");
        s.metadata_mut().insert(proto::ERROR_METADATA, reason.parse().unwrap());
        ClientError::Rpc(Box::new(s))
    }

    #[test]
    fn the_cells_refusals_map_to_the_errno_a_file_system_gives() {
        assert_eq!(errno_of(&refusal(Code::NotFound, "NotFound")), Errno::ENOENT);
        assert_eq!(errno_of(&refusal(Code::FailedPrecondition, "NotEmpty")), Errno::from_i32(libc::ENOTEMPTY));
        assert_eq!(errno_of(&refusal(Code::InvalidArgument, "TooLarge")), Errno::from_i32(libc::EFBIG));
        assert_eq!(errno_of(&refusal(Code::PermissionDenied, "PermissionDenied")), Errno::EACCES);
        assert_eq!(errno_of(&refusal(Code::FailedPrecondition, "LockBusy")), Errno::from_i32(libc::EWOULDBLOCK));
        assert_eq!(errno_of(&ClientError::SessionLost(7)), Errno::EIO);
        assert_eq!(errno_of(&ClientError::Rpc(Box::new(Status::invalid_argument("bad")))), Errno::EINVAL);
        // A lock wait that ended without a grant: not EINTR, which a caller with no signal
        // pending would see as "Unknown error 512".
        assert_eq!(errno_of(&refusal(Code::Aborted, "WaitEnded")), Errno::ENOENT);
        assert_eq!(errno_of(&refusal(Code::FailedPrecondition, "Deadlock")), Errno::from_i32(libc::EDEADLK));
        // A refusal named by a newer cell is not guessed from its code.
        assert_eq!(errno_of(&refusal(Code::NotFound, "SomethingNew")), Errno::EIO);
    }
}
