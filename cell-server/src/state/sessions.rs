//! Sessions in the replicated state (Chubby §2.8): created and ended by log entries. Their
//! lease deadlines are not here: the master keeps them in memory and proposes an
//! [`Op::ExpireSession`](super::Op::ExpireSession) when one runs out.
//!
//! Each session also remembers its recent answers by request sequence number, so a call retried
//! after a lost reply or a failover is applied once and answered the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::command::{Op, Outcome, Owner, Reply, SessionId};
use super::error::StateError;
use super::locks::Holder;
use super::{CellState, Effect};

/// Answers remembered per session beyond the client's `first_incomplete` mark; a client with
/// more calls in flight than this may see an older retry refused as `Forgotten`.
pub const MAX_REMEMBERED: usize = 128;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub principal: String,
    /// The client's id for the open that created it (0: none).
    pub open_id: u64,
    pub created_ms: u64,
    /// Sequence numbers below this were answered and forgotten.
    pub low_water: u64,
    pub replies: BTreeMap<u64, Outcome>,
    /// Locks held: (path, owner).
    pub held: BTreeSet<(String, Owner)>,
    /// Acquires queued: (path, owner).
    pub waiting: BTreeSet<(String, Owner)>,
    /// Ephemeral nodes this session has open.
    pub open_ephemerals: BTreeSet<String>,
}

impl Session {
    pub(super) fn forget_below(&mut self, first_incomplete: u64) {
        if first_incomplete > self.low_water {
            self.low_water = first_incomplete;
            self.replies = self.replies.split_off(&first_incomplete);
        }
    }

    pub(super) fn remember(&mut self, sequence: u64, outcome: Outcome) {
        self.replies.insert(sequence, outcome);
        while self.replies.len() > MAX_REMEMBERED {
            let (oldest, _) = self.replies.pop_first().expect("not empty");
            self.low_water = self.low_water.max(oldest + 1);
        }
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
        let session = Session {
            principal,
            open_id,
            created_ms: self.clock_ms,
            low_water: 0,
            replies: BTreeMap::new(),
            held: BTreeSet::new(),
            waiting: BTreeSet::new(),
            open_ephemerals: BTreeSet::new(),
        };
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
        let ephemerals: Vec<_> = session.open_ephemerals.iter().cloned().collect();
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
    pub(super) fn replay(&self, session: SessionId, op: &Op, first: Outcome) -> Outcome {
        let (Op::Acquire { path, owner, .. }, Ok(_)) = (op, &first) else { return first };
        let holder = Holder { session, owner: *owner };
        if let Some(sequencer) = self.sequencer_of(path, holder) {
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
