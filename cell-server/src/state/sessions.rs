//! Sessions in the replicated state (Chubby §2.8): created and ended by log entries. Their
//! lease deadlines are not here: the master keeps them in memory and proposes an
//! [`Op::ExpireSession`](super::Op::ExpireSession) when one runs out.
//!
//! Each session also remembers its recent answers by request sequence number, so a call retried
//! after a lost reply or a failover is applied once and answered the same way. An answer is
//! kept until the client says it has it (`first_incomplete` passes it), or for
//! [`ANSWER_KEEP_MS`] of log time, the longest a client goes on retrying a call. A session's
//! answers are also bounded by bytes ([`MAX_ANSWER_BYTES`]), far above what the calls a client
//! may have in flight at once are answered with. Answers are forgotten oldest first, as a
//! prefix: every sequence number below `low_water` is forgotten, every one above it that has
//! no answer was never applied.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::command::{Op, Outcome, Owner, Reply, SessionId};
use super::error::StateError;
use super::locks::Holder;
use super::{CellState, Effect};

/// How long (in log time) an answer is kept for a retry: longer than any client goes on
/// retrying a call, which is its deadline for a change: the session lease (at most 10 minutes,
/// see `config.rs`) and a margin, or its call timeout if longer. A client in jeopardy retries
/// within that deadline too.
pub const ANSWER_KEEP_MS: u64 = 15 * 60 * 1000;

/// The most bytes of answers one session keeps. The calls a client may have in flight at once
/// (1,024 on one stream) are answered with a few hundred bytes each; only answers naming
/// very long paths come near this.
pub const MAX_ANSWER_BYTES: u64 = 4 << 20;

/// An answer kept for a retry, with the log time it was given at.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Answer {
    pub at_ms: u64,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub principal: String,
    /// The client's id for the open that created it (0: none).
    pub open_id: u64,
    pub created_ms: u64,
    /// Sequence numbers below this were answered and forgotten.
    pub low_water: u64,
    pub replies: BTreeMap<u64, Answer>,
    /// What `replies` take, by [`answer_bytes`].
    pub reply_bytes: u64,
    /// Locks held: (path, owner).
    pub held: BTreeSet<(String, Owner)>,
    /// Acquires queued: (path, owner).
    pub waiting: BTreeSet<(String, Owner)>,
    /// The handles this session has open on ephemeral nodes (they keep the node alive), by
    /// id, with the node's path.
    pub ephemeral_handles: BTreeMap<u64, String>,
}

impl Session {
    /// A session just opened: nothing answered, held or waited for yet.
    pub fn new(principal: String, open_id: u64, created_ms: u64) -> Session {
        Session {
            principal,
            open_id,
            created_ms,
            low_water: 0,
            replies: BTreeMap::new(),
            reply_bytes: 0,
            held: BTreeSet::new(),
            waiting: BTreeSet::new(),
            ephemeral_handles: BTreeMap::new(),
        }
    }
}

/// About the memory an answer takes: its strings and a fixed part.
pub(super) fn answer_bytes(o: &Outcome) -> u64 {
    let text = match o {
        Ok(Reply::Granted { sequencer }) => sequencer.len(),
        Ok(_) => 0,
        Err(e) => e.to_string().len(),
    };
    (text + 96) as u64
}

impl Session {
    pub(super) fn forget_below(&mut self, first_incomplete: u64) {
        if first_incomplete > self.low_water {
            self.low_water = first_incomplete;
            let kept = self.replies.split_off(&first_incomplete);
            for gone in std::mem::replace(&mut self.replies, kept).values() {
                self.reply_bytes -= answer_bytes(&gone.outcome);
            }
        }
    }

    /// Keeps the answer to `sequence`, given at log time `now_ms`, and forgets the oldest
    /// answers past their time or beyond the byte bound.
    pub(super) fn remember(&mut self, sequence: u64, outcome: Outcome, now_ms: u64) {
        self.reply_bytes += answer_bytes(&outcome);
        if let Some(old) = self.replies.insert(sequence, Answer { at_ms: now_ms, outcome }) {
            self.reply_bytes -= answer_bytes(&old.outcome);
        }
        while let Some(mut oldest) = self.replies.first_entry() {
            let expired = oldest.get().at_ms.saturating_add(ANSWER_KEEP_MS) < now_ms;
            if !expired && self.reply_bytes <= MAX_ANSWER_BYTES {
                break;
            }
            self.low_water = self.low_water.max(*oldest.key() + 1);
            self.reply_bytes -= answer_bytes(&oldest.get_mut().outcome);
            oldest.remove();
        }
    }

    /// The distinct nodes this session has ephemeral handles on.
    pub(super) fn ephemeral_paths(&self) -> BTreeSet<String> {
        self.ephemeral_handles.values().cloned().collect()
    }
}

/// Whether `reply` is an answer `op` gives.
fn answers(op: &Op, reply: &Reply) -> bool {
    match op {
        Op::Open { .. } => matches!(reply, Reply::Opened { .. } | Reply::OpenedEphemeral { .. }),
        Op::SetContents { .. }
        | Op::Append { .. }
        | Op::Rename { .. }
        | Op::SetAcl { .. }
        | Op::SetAclIf { .. }
        | Op::AdminPut { .. } => {
            matches!(reply, Reply::Stat(_))
        }
        Op::Acquire { .. } | Op::Convert { .. } => matches!(reply, Reply::Granted { .. } | Reply::Queued),
        Op::Cancel { .. } => matches!(reply, Reply::Granted { .. } | Reply::Done),
        Op::CreateSession { .. } => matches!(reply, Reply::Session { .. }),
        Op::InitCell { .. }
        | Op::Tick
        | Op::ExpireSession { .. }
        | Op::CloseSession
        | Op::Close { .. }
        | Op::CloseHandle { .. }
        | Op::Delete { .. }
        | Op::Release { .. } => matches!(reply, Reply::Done),
    }
}

impl CellState {
    pub(super) fn create_session(&mut self, principal: String, open_id: u64) -> Outcome {
        // The same open again (its first answer was lost): the session it created.
        if let Some(&id) = self.opened.get(&open_id) {
            if self.sessions.get(&id).is_some_and(|s| s.principal == principal) {
                return Ok(Reply::Session { id });
            }
        }
        if principal.is_empty() || principal.len() > 255 || principal.chars().any(char::is_control) {
            return Err(StateError::InvalidArgument(format!("{principal:?} is not a principal name")));
        }
        if self.sessions.len() as u64 >= self.limits.max_sessions {
            return Err(StateError::LimitExceeded(format!(
                "the cell holds its limit of {} sessions",
                self.limits.max_sessions
            )));
        }
        self.next_session += 1;
        let id = self.next_session;
        let session = Session::new(principal, open_id, self.clock_ms);
        self.sessions.insert(id, session);
        if open_id != 0 {
            self.opened.insert(open_id, id);
        }
        Ok(Reply::Session { id })
    }

    /// Ends a session: its queued Acquires end, its locks are released (with lock-delay if it
    /// `expired` rather than closed), its ephemeral nodes are closed and reaped.
    pub(super) fn end_session(&mut self, id: SessionId, expired: bool) -> Outcome {
        let Some(session) = self.sessions.get(&id) else {
            return Err(StateError::NoSession(id));
        };
        let waiting: Vec<_> = session.waiting.iter().cloned().collect();
        let held: Vec<_> = session.held.iter().cloned().collect();
        let ephemerals = session.ephemeral_paths();
        let reason = if expired { "session expired" } else { "session closed" };
        // Waiters first, so the releases below cannot grant to this session.
        for (path, owner) in &waiting {
            self.remove_waiter(path, Holder { session: id, owner: *owner }, reason);
        }
        for (path, owner) in &held {
            self.drop_hold(path, Holder { session: id, owner: *owner }, expired);
        }
        // Reap before granting, so nobody is granted a node that goes in this same entry.
        for path in ephemerals {
            if let Some(n) = self.nodes.get_mut(path.as_str()).map(Arc::make_mut) {
                n.openers.remove(&id);
            }
            self.maybe_reap(path);
        }
        // A queued writer leaving the head may let the readers behind it in, as a release may.
        for (path, _) in waiting.iter().chain(&held) {
            self.grant_from_head(path);
            self.maybe_reap(path.clone());
        }
        if let Some(s) = self.sessions.remove(&id) {
            if self.opened.get(&s.open_id) == Some(&id) {
                self.opened.remove(&s.open_id);
            }
        }
        self.effects.push(Effect::SessionEnded { session: id, expired });
        Ok(Reply::Done)
    }

    /// The answer to a retried call. An Acquire that was granted or queued is answered with
    /// the lock's state now (granted since, released since, its wait ended); everything else
    /// as the first time.
    pub(super) fn replay(&self, session: SessionId, sequence: u64, op: &Op, first: Outcome) -> Outcome {
        // A sequence number names one call; a client that sends another call under it gets
        // an error, not the first call's answer, which its kind of call does not give.
        if let Ok(reply) = &first {
            if !answers(op, reply) {
                return Err(StateError::InvalidArgument(format!(
                    "request {sequence} of session {session} was another kind of call; a sequence number is used \
                     for one call only"
                )));
            }
        }
        let (path, owner, granted) = match (op, &first) {
            (Op::Acquire { path, owner, .. }, Ok(_)) => {
                (path, *owner, self.sequencer_of(path, Holder { session, owner: *owner }))
            }
            // A shared hold waiting to upgrade is not the exclusive lock asked for.
            (Op::Convert { path, owner, mode, .. }, Ok(_)) => {
                (path, *owner, self.sequencer_in_mode(path, Holder { session, owner: *owner }, *mode))
            }
            _ => return first,
        };
        let holder = Holder { session, owner };
        if let Some(sequencer) = granted {
            return Ok(Reply::Granted { sequencer });
        }
        if self.is_waiting(path, holder) {
            return Ok(Reply::Queued);
        }
        Err(StateError::WaitEnded { path: path.clone(), reason: "no longer held or queued".into() })
    }

    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    pub fn sessions(&self) -> impl Iterator<Item = (&SessionId, &Session)> {
        self.sessions.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session::new("p".into(), 0, 0)
    }

    /// A window of calls in flight keeps every answer, however many; answers beyond the byte
    /// bound go oldest first, as a prefix (the low-water mark moves past them).
    #[test]
    fn answers_are_bounded_by_bytes_oldest_first() {
        let mut s = session();
        let granted = || Ok(Reply::Granted { sequencer: format!("seq1:1:1:1:x:1:1:/{}", "n".repeat(200)) });
        for seq in 1..=4096 {
            s.remember(seq, granted(), 0);
        }
        assert_eq!((s.replies.len(), s.low_water), (4096, 0), "4,096 answers of long paths are all kept");
        let big = || Err(StateError::InvalidArgument("x".repeat(64 << 10)));
        let mut seq = 4096;
        while s.low_water == 0 {
            seq += 1;
            s.remember(seq, big(), 0);
            assert!(seq < 10_000, "the byte bound never applies");
        }
        assert!(s.reply_bytes <= MAX_ANSWER_BYTES && s.reply_bytes > MAX_ANSWER_BYTES - (65 << 10));
        assert_eq!(s.replies.keys().next(), Some(&s.low_water), "what is kept starts at the low-water mark");
        assert_eq!(s.reply_bytes, s.replies.values().map(|a| answer_bytes(&a.outcome)).sum::<u64>());
        s.forget_below(seq + 1);
        assert_eq!((s.replies.len(), s.reply_bytes), (0, 0));
    }
}
