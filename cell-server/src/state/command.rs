//! What goes into the log (a [`Command`] per proposal) and what `apply` answers ([`Outcome`]).
//! Encoded with postcard; every replica decodes the same bytes the same way.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::StateError;

/// A session's id, assigned by the state machine when the session is created.
pub type SessionId = u64;
/// Who holds a lock within a session: chosen by the client (the FUSE daemon uses the kernel's
/// `lock_owner`), so two processes of one host conflict as on a local file system.
pub type Owner = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockMode {
    Exclusive,
    Shared,
}

impl LockMode {
    pub fn letter(self) -> char {
        match self {
            LockMode::Exclusive => 'x',
            LockMode::Shared => 's',
        }
    }
}

/// Read, write and change-ACL name lists of a node (Chubby §2.4). A name is a principal or `*`
/// for everyone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acl {
    pub readers: Vec<String>,
    pub writers: Vec<String>,
    pub change_acl: Vec<String>,
}

impl Acl {
    /// The cell root's ACL: everyone may do everything until an operator narrows it.
    pub fn open() -> Acl {
        let all = vec!["*".to_string()];
        Acl { readers: all.clone(), writers: all.clone(), change_acl: all }
    }

    /// Whether every principal is on one of the lists ("*"), so may open the node.
    pub fn open_to_all(&self) -> bool {
        [&self.readers, &self.writers, &self.change_acl].iter().any(|l| l.iter().any(|n| n == "*"))
    }

    pub fn rights_of(&self, principal: &str) -> Rights {
        let has = |names: &[String]| names.iter().any(|n| n == "*" || n == principal);
        let mut r = Rights::NONE;
        if has(&self.readers) {
            r = r.with(Rights::READ);
        }
        if has(&self.writers) {
            r = r.with(Rights::WRITE);
        }
        if has(&self.change_acl) {
            r = r.with(Rights::CHANGE_ACL);
        }
        r
    }
}

/// What a handle lets its session do, fixed when the node is opened (Chubby checks ACLs at open).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rights(pub u8);

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const READ: Rights = Rights(1);
    pub const WRITE: Rights = Rights(2);
    pub const CHANGE_ACL: Rights = Rights(4);

    pub fn with(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub fn allows(self, wanted: Rights) -> bool {
        self.0 & wanted.0 == wanted.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Rights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flag = |r: Rights, c: char| if self.allows(r) { c } else { '-' };
        write!(f, "{}{}{}", flag(Rights::READ, 'r'), flag(Rights::WRITE, 'w'), flag(Rights::CHANGE_ACL, 'a'))
    }
}

/// Limits that must be the same on every replica, so they travel in the log ([`Op::InitCell`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_nodes: u64,
    pub max_depth: u32,
    pub max_sessions: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_nodes: 1_000_000, max_depth: 64, max_sessions: 1_000_000 }
    }
}

/// Identifies a mutating call so a retry is applied once: the session, the call's sequence
/// number, and the lowest sequence number the client has not yet seen answered (everything
/// below it can be forgotten).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestId {
    pub session: SessionId,
    pub sequence: u64,
    pub first_incomplete: u64,
}

/// How to create a node that does not exist yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Create {
    pub directory: bool,
    pub ephemeral: bool,
    /// Fail with `Exists` if the node is already there.
    pub exclusive: bool,
    pub contents: Bytes,
}

/// One command of the cell, as its log entry carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// The leader's clock when it proposed the entry, in ms since the Unix epoch. The log carries
    /// the clock: lock-delay is measured with these stamps, never with a replica's own clock.
    pub now_ms: u64,
    /// Present on every call a session makes; absent on the master's own entries.
    pub request: Option<RequestId>,
    pub op: Op,
}

/// A change to the cell. Node operations name the node by path and by the instance number
/// their handle was opened on, so a handle to a deleted and re-created node is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The first entry of a cell's first master: the key that signs handles, and the limits.
    InitCell {
        key: Bytes,
        limits: Limits,
    },
    /// Only moves the clock (the master proposes one when a lock-delay ends).
    Tick,
    CreateSession {
        principal: String,
        /// Picked at random by the client for one session it opens (0: none). An open retried
        /// after its answer was lost carries the same id and gets the session the first one
        /// created, so no orphan session is left to expire.
        open_id: u64,
    },
    /// The master saw the session's lease run out: like a close, but locks it held get lock-delay.
    ExpireSession {
        session: SessionId,
    },
    /// The session closes itself (request's session).
    CloseSession,
    Open {
        path: String,
        create: Option<Create>,
    },
    /// Close of a handle from before handles to ephemeral nodes had ids: closes one of the
    /// session's handles to the node. (Logs written before [`Op::CloseHandle`] hold these.)
    Close {
        path: String,
        instance: u64,
    },
    SetContents {
        path: String,
        instance: u64,
        contents: Bytes,
        if_generation: Option<u64>,
        sequencer: Option<String>,
    },
    Delete {
        path: String,
        instance: u64,
        if_generation: Option<u64>,
        sequencer: Option<String>,
    },
    /// `try_only`: fail with `LockBusy` instead of queueing.
    Acquire {
        path: String,
        instance: u64,
        mode: LockMode,
        owner: Owner,
        lock_delay_ms: Option<u64>,
        try_only: bool,
    },
    Release {
        path: String,
        instance: u64,
        owner: Owner,
    },
    /// Withdraw a queued Acquire.
    Cancel {
        path: String,
        instance: u64,
        owner: Owner,
    },
    SetAcl {
        path: String,
        instance: u64,
        acl: Acl,
    },
    /// The operator's write (`chubby.cell.Cell/Put`): create or replace a file, with any missing
    /// parent directories, without a session or ACL check.
    AdminPut {
        path: String,
        contents: Bytes,
    },
    /// SetAcl only if the node's ACL generation is still `if_acl_generation` (a client that
    /// changes one list keeps the two it read, so it must not overwrite a change made since).
    /// A variant of its own, last, so logs written before it still decode.
    SetAclIf {
        path: String,
        instance: u64,
        acl: Acl,
        if_acl_generation: u64,
    },
    /// Close of the handle to an ephemeral node that the Open answered with id `handle`
    /// ([`Reply::OpenedEphemeral`]); a second Close of it does nothing.
    CloseHandle {
        path: String,
        instance: u64,
        handle: u64,
    },
    /// Adds `data` at the end of a file's contents: appends from many writers all land, in
    /// log order, with no read-modify-write race (`>>` from many hosts). Last, so logs
    /// written before it still decode.
    Append {
        path: String,
        instance: u64,
        data: Bytes,
        sequencer: Option<String>,
    },
    /// Gives the file at `path` the name `to` in one step (`mv`, `sed -i`, an editor's save).
    /// Over an existing file, that node stays (its instance, ACL, lock, watchers) and takes
    /// the contents, as one write; else the node itself moves. `replace` false: an existing
    /// `to` is refused (`RENAME_NOREPLACE`).
    Rename {
        path: String,
        instance: u64,
        to: String,
        replace: bool,
    },
    /// A lock its owner holds, made one in `mode` with no moment of holding nothing (fcntl's
    /// upgrade and downgrade); refused if the owner holds nothing. Last, so logs written
    /// before it still decode.
    Convert {
        path: String,
        instance: u64,
        mode: LockMode,
        owner: Owner,
        try_only: bool,
    },
}

impl Op {
    pub fn needs_session(&self) -> bool {
        !matches!(
            self,
            Op::InitCell { .. } | Op::Tick | Op::CreateSession { .. } | Op::ExpireSession { .. } | Op::AdminPut { .. }
        )
    }
}

/// A node's metadata (Chubby §2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub instance: u64,
    pub content_generation: u64,
    pub lock_generation: u64,
    pub acl_generation: u64,
    /// xxh3-64 of the contents.
    pub checksum: u64,
    pub length: u64,
    pub directory: bool,
    pub ephemeral: bool,
    pub ctime_ms: u64,
    pub mtime_ms: u64,
    /// Log index of the last change to contents or ACL (like etcd's mod_revision): orders
    /// writes across the whole cell.
    pub modified_index: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Session {
        id: SessionId,
    },
    Opened {
        stat: Stat,
        rights: Rights,
        created: bool,
    },
    Stat(Stat),
    /// The lock is held; the sequencer proves it (fencing token).
    Granted {
        sequencer: String,
    },
    /// The Acquire waits in the lock's FIFO queue; the grant comes later as an effect.
    Queued,
    /// An Open of an ephemeral node: as `Opened`, with the id of the handle, which keeps the
    /// node alive until it is closed (by that id) or the session ends.
    OpenedEphemeral {
        stat: Stat,
        rights: Rights,
        created: bool,
        handle: u64,
    },
}

/// What `apply` answers the proposer.
pub type Outcome = Result<Reply, StateError>;

pub fn encode<T: Serialize>(value: &T) -> Bytes {
    // Serializing these plain types into a Vec cannot fail.
    Bytes::from(postcard::to_allocvec(value).expect("postcard encodes plain data"))
}

pub fn decode<'a, T: Deserialize<'a>>(data: &'a [u8]) -> Result<T, StateError> {
    postcard::from_bytes(data).map_err(|e| StateError::InvalidArgument(format!("undecodable entry: {e}")))
}
