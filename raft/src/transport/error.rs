//! Why a peer link was closed or refused, and why a snapshot transfer failed. Neither stops
//! the replica: a link is dialled again, a snapshot sent again; the reasons go to the log.

use std::io;
use std::time::Duration;

use crate::types::{Index, ReplicaId, Term};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("not a Raft peer connection (bad magic)")]
    BadMagic,
    #[error("peer speaks version {theirs}, this replica {ours}")]
    Version { theirs: u8, ours: u8 },
    #[error("peer {from} dialled replica {to} but reached replica {me}")]
    WrongReplica { from: ReplicaId, to: ReplicaId, me: ReplicaId },
    #[error("peer belongs to cell {theirs:016x}, this replica to cell {ours:016x}")]
    OtherCell { theirs: u64, ours: u64 },
    #[error("replica {0} is not a peer of this cell")]
    NotAPeer(ReplicaId),
    #[error("hello says replica {hello} but the certificate is replica {certified}'s")]
    NotCertified { hello: ReplicaId, certified: ReplicaId },
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    FrameTooLarge { len: usize, max: usize },
    #[error("frame does not decode: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("message without a body")]
    NoBody,
    #[error("unknown entry kind {0}")]
    UnknownEntryKind(i32),
    /// Entries must follow `prev` one by one with terms that never go down: the core trusts
    /// that, so a peer that says otherwise is refused before it reaches the log.
    #[error("AppendEntries entry {index} (term {term}) does not follow {prev} (term {prev_term})")]
    EntriesOutOfOrder { index: Index, term: Term, prev: Index, prev_term: Term },
    #[error("prev_log_index overflows")]
    PrevIndexOverflow,
    #[error("entry index overflows")]
    EntryIndexOverflow,
    #[error("message from {from} to {to} on the link from {link}")]
    Misaddressed { from: ReplicaId, to: ReplicaId, link: ReplicaId },
    #[error("closed by the peer")]
    ClosedByPeer,
    #[error("no hello in time")]
    NoHello,
    #[error("replaced by a newer link from the same peer")]
    Replaced,
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotSendError {
    #[error(transparent)]
    Connect(#[from] tonic::transport::Error),
    /// Boxed: a status is large, and this error travels through every transfer's result.
    #[error("{0}")]
    Refused(Box<tonic::Status>),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl From<tonic::Status> for SnapshotSendError {
    fn from(s: tonic::Status) -> Self {
        SnapshotSendError::Refused(Box::new(s))
    }
}
