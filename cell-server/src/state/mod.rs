//! The cell's replicated state machine (DESIGN.md, "The replicated state machine"): namespace,
//! sessions, locks with FIFO waiters, lock-delay, sequencers, the cell key that signs handles,
//! and per-session answers for exactly-once retries.
//!
//! Pure and deterministic: [`CellState::apply`] depends only on the entries applied, the clock
//! included (it comes with each entry, see [`Command::now_ms`]). What the master must act on
//! (grants to blocked Acquires, events, lock-delays to end) comes out as [`Effect`]s.
//!
//! - [`command`]: log entries and answers; [`error`]: refusals.
//! - `namespace`: nodes, paths, ACLs; `locks`: lock queue, lock-delay, sequencers;
//!   `sessions`: sessions and retried calls; [`handle`]: signed handles.

pub mod command;
pub mod error;
pub mod handle;
mod invariants;
mod legacy;
mod locks;
mod namespace;
mod sessions;

use std::sync::Arc;

use bytes::Bytes;
use compact_str::CompactString;
use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

pub use command::{
    decode, encode, Acl, Command, Create, Limits, LockMode, Op, Outcome, Owner, Reply, RequestId, Rights, SessionId,
    Stat,
};
pub use error::StateError;
pub use locks::{Holder, Sequencer, DEFAULT_LOCK_DELAY_MS, MAX_LOCK_DELAY_MS};
use namespace::Write;
pub use namespace::{split_parent, validate_path, Node, MAX_CONTENTS, MAX_NAME};
pub use sessions::{Answer, Session, ANSWER_KEEP_MS, MAX_ANSWER_BYTES};

/// A snapshot starts with this and the format's number. Snapshots of format 1 (before
/// handles to ephemeral nodes had ids and answers their time) have neither, and are read
/// by [`legacy`].
const SNAPSHOT_MAGIC: &[u8; 8] = b"CHUBCELL";
const SNAPSHOT_FORMAT: u8 = 2;

/// The latest log time accepted (the year 3000): stamps beyond it are taken as this.
pub const MAX_CLOCK_MS: u64 = 32_503_680_000_000;

/// What happened to a node, for events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    Created,
    ContentsModified,
    AclChanged,
    Deleted,
}

/// Something the master must act on, produced by `apply` on every replica (only the master
/// acts).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A hold began (at once or from the queue): answer a blocked Acquire, send lock events.
    LockGranted {
        session: SessionId,
        owner: Owner,
        path: String,
        sequencer: String,
    },
    /// A queued Acquire ended without the lock (cancelled, node deleted, session ended).
    WaitEnded {
        session: SessionId,
        owner: Owner,
        path: String,
        reason: String,
    },
    /// Someone queued behind these holders' sessions (Chubby's "conflicting lock request").
    LockConflict {
        path: String,
        holders: Vec<SessionId>,
    },
    /// The lock is unavailable until this log time; the master proposes a Tick then.
    LockDelay {
        path: String,
        until_ms: u64,
    },
    NodeChanged {
        path: String,
        change: Change,
    },
    SessionEnded {
        session: SessionId,
        expired: bool,
    },
}

/// A path as a key of the node map: paths of up to 24 bytes are kept inline, so the map's
/// lookups compare them where the tree holds them instead of following a pointer per
/// comparison to a string elsewhere in memory (apply's lookups were cache misses).
/// Serialized as a string, as `String` is.
type PathKey = CompactString;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellState {
    /// Log time: the greatest `now_ms` applied so far (never moves backwards).
    clock_ms: u64,
    applied: u64,
    /// Signs handles; empty until the first master's [`Op::InitCell`].
    key: Bytes,
    limits: Limits,
    next_instance: u64,
    next_session: SessionId,
    /// The id of the last handle opened on an ephemeral node.
    next_handle: u64,
    // Persistent (copy-on-write) collections: a snapshot is a cheap clone, encoded while
    // apply goes on (see `CellState::snapshot_later`). Nodes sit behind an `Arc` (serialized
    // as the node itself): the tree's leaves stay small, so lookups touch less memory, and a
    // write while a snapshot shares a leaf copies pointers and the one node, not every node.
    nodes: OrdMap<PathKey, Arc<Node>>,
    sessions: OrdMap<SessionId, Session>,
    /// Live sessions by the `open_id` that created them (see [`Op::CreateSession`]).
    opened: OrdMap<u64, SessionId>,
    /// Running lock-delays: (end, path). The path's node may be gone: the delay then belongs
    /// to the name (see `name_delays`).
    delays: OrdSet<(u64, String)>,
    /// The running lock-delays of names whose node was deleted (or reaped) during its delay,
    /// by path: a node created there inherits it. Derived from `delays` and `nodes` (the
    /// entries of `delays` with no node), so it is not in snapshots but rebuilt on restore.
    #[serde(skip)]
    name_delays: OrdMap<PathKey, u64>,
    #[serde(skip)]
    effects: Vec<Effect>,
}

impl Default for CellState {
    fn default() -> CellState {
        let mut nodes = OrdMap::new();
        nodes.insert(PathKey::from("/"), Arc::new(CellState::root_node()));
        CellState {
            clock_ms: 0,
            applied: 0,
            key: Bytes::new(),
            limits: Limits::default(),
            next_instance: 0,
            next_session: 0,
            next_handle: 0,
            nodes,
            sessions: OrdMap::new(),
            opened: OrdMap::new(),
            delays: OrdSet::new(),
            name_delays: OrdMap::new(),
            effects: Vec::new(),
        }
    }
}

impl CellState {
    /// Applies the entry at `index`; undecodable bytes change nothing but the applied index
    /// (the replica does not go on past them: see `CellMachine::apply`).
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Outcome {
        self.applied = index;
        let entry: Command = decode(data)?;
        self.apply_entry(entry)
    }

    /// Applies the decoded entry at `index`.
    pub fn apply_command(&mut self, index: u64, entry: Command) -> Outcome {
        self.applied = index;
        self.apply_entry(entry)
    }

    pub fn apply_entry(&mut self, entry: Command) -> Outcome {
        // A wild stamp cannot push log time past MAX_CLOCK_MS (so deadlines never overflow).
        self.clock_ms = self.clock_ms.max(entry.now_ms.min(MAX_CLOCK_MS));
        self.end_lock_delays();
        if !entry.op.needs_session() {
            return self.apply_op(0, entry.op);
        }
        let Some(req) = entry.request else {
            return Err(StateError::InvalidArgument("this call needs a session".into()));
        };
        let Some(s) = self.sessions.get_mut(&req.session) else {
            // A retried close of a session already closed has done its job.
            if entry.op == Op::CloseSession {
                return Ok(Reply::Done);
            }
            return Err(StateError::NoSession(req.session));
        };
        s.forget_below(req.first_incomplete);
        if let Some(first) = s.replies.get(&req.sequence) {
            let first = first.outcome.clone();
            return self.replay(req.session, req.sequence, &entry.op, first);
        }
        if req.sequence < s.low_water {
            return Err(StateError::Forgotten(req.sequence));
        }
        let outcome = self.apply_op(req.session, entry.op);
        if let Some(s) = self.sessions.get_mut(&req.session) {
            s.remember(req.sequence, outcome.clone(), self.clock_ms);
        }
        outcome
    }

    fn apply_op(&mut self, session: SessionId, op: Op) -> Outcome {
        match op {
            Op::InitCell { key, limits } => {
                // The first one wins; a second master racing to initialise changes nothing.
                if self.key.is_empty() && !key.is_empty() {
                    self.key = key;
                    self.limits = limits;
                }
                Ok(Reply::Done)
            }
            Op::Tick => Ok(Reply::Done),
            Op::CreateSession { principal, open_id } => self.create_session(principal, open_id),
            Op::ExpireSession { session } => self.end_session(session, true),
            Op::CloseSession => self.end_session(session, false),
            Op::Open { path, create } => self.open(session, path, create),
            Op::Close { path, instance } => self.close(session, path, instance, None),
            Op::CloseHandle { path, instance, handle } => self.close(session, path, instance, Some(handle)),
            Op::SetContents { path, instance, contents, if_generation, sequencer } => {
                self.set_contents(path, instance, Write::Replace(contents), if_generation, sequencer)
            }
            Op::Append { path, instance, data, sequencer } => {
                self.set_contents(path, instance, Write::Append(data), None, sequencer)
            }
            Op::Rename { path, instance, to, replace } => self.rename(session, path, instance, to, replace),
            Op::Delete { path, instance, if_generation, sequencer } => {
                self.delete(path, instance, if_generation, sequencer)
            }
            Op::Acquire { path, instance, mode, owner, lock_delay_ms, try_only } => {
                self.acquire(Holder { session, owner }, path, instance, locks::Ask { mode, lock_delay_ms, try_only })
            }
            Op::Convert { path, instance, mode, owner, try_only } => {
                self.convert(Holder { session, owner }, path, instance, mode, try_only)
            }
            Op::Release { path, instance, owner } => self.release(session, path, instance, owner),
            Op::Cancel { path, instance, owner } => self.cancel(session, path, instance, owner),
            Op::SetAcl { path, instance, acl } => self.set_acl(path, instance, acl, None),
            Op::SetAclIf { path, instance, acl, if_acl_generation } => {
                self.set_acl(path, instance, acl, Some(if_acl_generation))
            }
            Op::AdminPut { path, contents } => self.admin_put(path, contents),
        }
    }

    /// The effects of the entries applied since the last call.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn applied(&self) -> u64 {
        self.applied
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The bytes of every file's contents (one pass over the namespace).
    pub fn content_bytes(&self) -> u64 {
        self.nodes.values().map(|n| n.stat.length).sum()
    }

    /// Lock-delays still running, by end time.
    pub fn lock_delays(&self) -> impl Iterator<Item = (u64, &str)> {
        self.delays.iter().map(|(t, p)| (*t, p.as_str()))
    }

    /// The whole state, for a Raft snapshot.
    pub fn snapshot(&self) -> Bytes {
        self.snapshot_with_capacity(0)
    }

    /// The snapshot, encoded into a buffer of `capacity` bytes at first: given about the
    /// encoding's size (say, the last snapshot's), a large state is written once, not copied
    /// at every doubling of a growing buffer.
    pub fn snapshot_with_capacity(&self, capacity: usize) -> Bytes {
        let mut out = Vec::with_capacity(capacity.max(SNAPSHOT_MAGIC.len() + 1));
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.push(SNAPSHOT_FORMAT);
        // Serializing plain data into a Vec cannot fail.
        Bytes::from(postcard::to_extend(self, out).expect("postcard encodes plain data"))
    }

    /// A snapshot's encoding, to run later (on another thread) while this state goes on
    /// changing: what it encodes is a copy taken now, cheap because the collections share
    /// their unchanged parts with this state (copy on write). The function takes the
    /// capacity to start with (see [`CellState::snapshot_with_capacity`]).
    pub fn snapshot_later(&self) -> impl FnOnce(usize) -> Bytes + Send + 'static {
        let copy = self.copy();
        move |capacity| copy.snapshot_with_capacity(capacity)
    }

    /// A copy of the state as it is now, to read on another thread while this one goes on
    /// changing: cheap, as the collections share their unchanged parts (copy on write).
    pub fn copy(&self) -> CellState {
        CellState { effects: Vec::new(), ..self.clone() }
    }

    /// What the state holds, in counts (one pass over the namespace).
    pub fn summary(&self) -> Summary {
        let mut s = Summary { sessions: self.sessions.len() as u64, ..Summary::default() };
        for node in self.nodes.values() {
            s.nodes += 1;
            s.directories += u64::from(node.stat.directory);
            s.ephemeral_nodes += u64::from(node.stat.ephemeral);
            s.content_bytes += node.stat.length;
            s.locks_held += u64::from(!node.lock.holders.is_empty());
        }
        s
    }

    /// This state as the first state of a new cell restored from a backup. Its sessions are
    /// closed, as if each had closed itself: their locks are released, their queued acquires
    /// end and their ephemeral nodes go. Lock-delays end: they keep a lock from a new holder
    /// while a lost one may still act, and no holder of the old cell can act in the new one.
    /// The handle key is dropped, so the new cell's first master makes its own and no handle
    /// or session token of the old cell is valid in the new one. Session ids go on from far
    /// past the old cell's, which went on numbering sessions after the backup: a sequencer
    /// names its holder's session, so none the old cell gave out matches one of the new
    /// cell's. Nodes, contents, ACLs and every generation and instance number are kept.
    pub fn into_new_cell(mut self) -> CellState {
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let _ = self.end_session(id, false);
        }
        for (_, path) in std::mem::take(&mut self.delays) {
            if let Some(n) = self.nodes.get_mut(path.as_str()).map(Arc::make_mut) {
                n.lock.delay_until_ms = 0;
            }
        }
        self.name_delays = OrdMap::new();
        self.next_session = self.next_session.saturating_add(RESTORED_SESSION_GAP);
        self.key = Bytes::new();
        self.effects.clear();
        self
    }

    pub fn restore(data: &[u8]) -> Result<CellState, String> {
        let mut state = match data.strip_prefix(SNAPSHOT_MAGIC) {
            Some([SNAPSHOT_FORMAT, body @ ..]) => {
                postcard::from_bytes(body).map_err(|e| format!("cell snapshot does not decode: {e}"))?
            }
            Some([format, ..]) => {
                return Err(format!(
                    "cell snapshot of format {format}: this cell-server reads formats 1 to {SNAPSHOT_FORMAT} \
                     (a newer cell-server wrote it)"
                ))
            }
            Some([]) => return Err("cell snapshot cut short after its header".into()),
            None => legacy::restore_format_1(data)?,
        };
        state.name_delays = state
            .delays
            .iter()
            .filter(|(_, path)| !state.nodes.contains_key(path.as_str()))
            .map(|(until, path)| (PathKey::from(path.as_str()), *until))
            .collect();
        Ok(state)
    }
}

/// How far a restored cell's session ids start past the backup's (see
/// [`CellState::into_new_cell`]): more sessions than a cell opens in its life.
const RESTORED_SESSION_GAP: u64 = 1 << 40;

/// Counts of what a [`CellState`] holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files and directories, the root included.
    pub nodes: u64,
    pub directories: u64,
    pub ephemeral_nodes: u64,
    pub content_bytes: u64,
    /// Nodes whose lock someone holds.
    pub locks_held: u64,
    pub sessions: u64,
}

#[cfg(test)]
mod tests;
