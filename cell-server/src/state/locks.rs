//! Reader/writer locks with a replicated FIFO queue of waiters and lock-delay (Chubby §2.4).
//!
//! Granting happens only in `apply`: an Acquire is granted at once or queued; a Release, a
//! Cancel, a session's end or the end of a lock-delay grants to the head of the queue. Readers
//! at the head are granted together; a writer at the head blocks the readers behind it (and a
//! reader arriving while others wait queues too), so writers are never starved and a release
//! wakes exactly who it lets in.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::command::{LockMode, Outcome, Owner, Reply, SessionId};
use super::error::StateError;
use super::{CellState, Effect};

/// Lock-delay when the Acquire that creates a lock's first hold does not set one (Chubby's).
pub const DEFAULT_LOCK_DELAY_MS: u64 = 60_000;
/// The longest lock-delay a lock may ask for.
pub const MAX_LOCK_DELAY_MS: u64 = 600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Holder {
    pub session: SessionId,
    pub owner: Owner,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub holder: Holder,
    pub mode: LockMode,
    /// The lock-delay this waiter asked for, applied when it is granted.
    pub lock_delay_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Lock {
    /// One exclusive holder or any number of shared ones, each with the number of its grant
    /// (so a reader that releases and re-acquires while others hold gets a new sequencer).
    pub holders: BTreeMap<Holder, u64>,
    /// Grants of this lock so far.
    pub grants: u64,
    /// Meaningful while `holders` is not empty.
    pub mode: LockMode,
    pub waiters: VecDeque<Waiter>,
    /// How long the lock stays unavailable after a holder's session expires without releasing;
    /// set by the Acquire that was last granted with a lock-delay.
    pub delay_ms: u64,
    /// The clock (log time) before which nobody is granted the lock; 0 when no delay runs.
    pub delay_until_ms: u64,
}

/// How an Acquire asks for its lock: the mode, the lock-delay its holder's loss will impose
/// (none: the default), and whether it fails at once rather than queue.
pub(super) struct Ask {
    pub mode: LockMode,
    pub lock_delay_ms: Option<u64>,
    pub try_only: bool,
}

impl Default for Lock {
    fn default() -> Lock {
        Lock {
            holders: BTreeMap::new(),
            grants: 0,
            mode: LockMode::Exclusive,
            waiters: VecDeque::new(),
            delay_ms: DEFAULT_LOCK_DELAY_MS,
            delay_until_ms: 0,
        }
    }
}

impl Lock {
    pub(super) fn compatible(&self, mode: LockMode) -> bool {
        self.holders.is_empty() || (mode == LockMode::Shared && self.mode == LockMode::Shared)
    }
}

/// A sequencer names a hold: node instance, lock generation, grant number, mode, holder and
/// path. It is opaque to clients; it is valid while that grant still holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequencer {
    pub path: String,
    pub instance: u64,
    pub lock_generation: u64,
    pub grant: u64,
    pub mode: LockMode,
    pub holder: Holder,
}

impl Sequencer {
    pub fn format(&self) -> String {
        format!(
            "seq1:{}:{}:{}:{}:{}:{}:{}",
            self.instance,
            self.lock_generation,
            self.grant,
            self.mode.letter(),
            self.holder.session,
            self.holder.owner,
            self.path
        )
    }

    pub fn parse(s: &str) -> Option<Sequencer> {
        let mut it = s.splitn(8, ':');
        if it.next()? != "seq1" {
            return None;
        }
        let instance = it.next()?.parse().ok()?;
        let lock_generation = it.next()?.parse().ok()?;
        let grant = it.next()?.parse().ok()?;
        let mode = match it.next()? {
            "x" => LockMode::Exclusive,
            "s" => LockMode::Shared,
            _ => return None,
        };
        let session = it.next()?.parse().ok()?;
        let owner = it.next()?.parse().ok()?;
        let path = it.next()?.to_string();
        Some(Sequencer { path, instance, lock_generation, grant, mode, holder: Holder { session, owner } })
    }
}

impl CellState {
    fn lock_node(&self, path: &str, instance: u64) -> Result<(), StateError> {
        if path == "/" {
            return Err(StateError::InvalidArgument("the cell root cannot be locked".into()));
        }
        self.node_at(path, instance).map(|_| ())
    }

    pub(super) fn acquire(&mut self, holder: Holder, path: String, instance: u64, ask: Ask) -> Outcome {
        let (Holder { session, owner }, Ask { mode, lock_delay_ms, try_only }) = (holder, ask);
        self.lock_node(&path, instance)?;
        if lock_delay_ms.is_some_and(|d| d > MAX_LOCK_DELAY_MS) {
            return Err(StateError::InvalidArgument(format!("lock-delay is at most {MAX_LOCK_DELAY_MS} ms")));
        }
        let lock = &self.nodes[path.as_str()].lock;
        if lock.holders.contains_key(&holder) {
            if lock.mode != mode {
                return Err(StateError::InvalidArgument(format!(
                    "{path}: already held by this owner in the other mode; release it first"
                )));
            }
            return Ok(Reply::Granted { sequencer: self.sequencer_of(&path, holder).unwrap_or_default() });
        }
        if let Some(w) = lock.waiters.iter().find(|w| w.holder == holder) {
            if try_only {
                return Err(StateError::LockBusy(path));
            }
            if w.mode != mode {
                return Err(StateError::InvalidArgument(format!(
                    "{path}: already queued by this owner in the other mode; cancel it first"
                )));
            }
            return Ok(Reply::Queued);
        }
        if self.clock_ms >= lock.delay_until_ms && lock.waiters.is_empty() && lock.compatible(mode) {
            let sequencer = self.grant(&path, holder, mode, lock_delay_ms);
            return Ok(Reply::Granted { sequencer });
        }
        if try_only {
            return Err(StateError::LockBusy(path));
        }
        let holders: BTreeSet<SessionId> = lock.holders.keys().map(|h| h.session).collect();
        let node = self.nodes.get_mut(path.as_str()).map(Arc::make_mut).expect("checked above");
        node.lock.waiters.push_back(Waiter { holder, mode, lock_delay_ms });
        if let Some(s) = self.sessions.get_mut(&session) {
            s.waiting.insert((path.clone(), owner));
        }
        self.effects.push(Effect::LockConflict { path, holders: holders.into_iter().collect() });
        Ok(Reply::Queued)
    }

    /// Makes `holder`'s hold of the lock one in `mode` without letting go ([`super::Op::Convert`]).
    /// A downgrade is immediate, and lets in the readers queued at the head. An upgrade is
    /// immediate when the holder holds alone (and no lock-delay runs); otherwise it waits at
    /// the head of the queue, still holding its shared lock, so the writers queued behind it
    /// cannot deadlock with it. Two holders cannot both wait to upgrade: the second is refused
    /// (`Deadlock`) and keeps its shared lock. An owner that holds nothing is refused
    /// (`NotHeld`): its lock went (a release raced the conversion), and a fresh grant here
    /// would be one its client does not know it holds.
    pub(super) fn convert(
        &mut self,
        holder: Holder,
        path: String,
        instance: u64,
        mode: LockMode,
        try_only: bool,
    ) -> Outcome {
        self.lock_node(&path, instance)?;
        let lock = &self.nodes[path.as_str()].lock;
        if !lock.holders.contains_key(&holder) {
            return Err(StateError::NotHeld(path));
        }
        if lock.mode == mode {
            let sequencer = self.sequencer_of(&path, holder).unwrap_or_default();
            // Back to shared while its upgrade waits: the latest request stands.
            if self.remove_waiter(&path, holder, "converted back to shared") {
                self.grant_from_head(&path);
            }
            return Ok(Reply::Granted { sequencer });
        }
        if lock.waiters.iter().any(|w| w.holder == holder) {
            // Its upgrade waits already (this is a retry of it).
            return if try_only { Err(StateError::LockBusy(path)) } else { Ok(Reply::Queued) };
        }
        if mode == LockMode::Shared {
            let sequencer = self.regrant(&path, holder, mode);
            self.grant_from_head(&path);
            return Ok(Reply::Granted { sequencer });
        }
        if lock.holders.len() == 1 && self.clock_ms >= lock.delay_until_ms {
            return Ok(Reply::Granted { sequencer: self.regrant(&path, holder, mode) });
        }
        if try_only {
            return Err(StateError::LockBusy(path));
        }
        if lock.waiters.iter().any(|w| lock.holders.contains_key(&w.holder)) {
            return Err(StateError::Deadlock(path));
        }
        let others: Vec<SessionId> = lock
            .holders
            .keys()
            .filter(|h| **h != holder)
            .map(|h| h.session)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let node = self.nodes.get_mut(path.as_str()).map(Arc::make_mut).expect("checked above");
        node.lock.waiters.push_front(Waiter { holder, mode, lock_delay_ms: None });
        if let Some(s) = self.sessions.get_mut(&holder.session) {
            s.waiting.insert((path.clone(), holder.owner));
        }
        if !others.is_empty() {
            self.effects.push(Effect::LockConflict { path, holders: others });
        }
        Ok(Reply::Queued)
    }

    /// A holder's hold becomes one in `mode`, under a new grant number (so its old sequencer
    /// is stale, as the mode changed) and the same lock generation (the lock was never free).
    fn regrant(&mut self, path: &str, holder: Holder, mode: LockMode) -> String {
        let node = self.nodes.get_mut(path).map(Arc::make_mut).expect("converting on an existing node");
        let lock = &mut node.lock;
        lock.mode = mode;
        lock.grants += 1;
        lock.holders.insert(holder, lock.grants);
        self.announce_grant(path, holder)
    }

    pub(super) fn release(&mut self, session: SessionId, path: String, instance: u64, owner: Owner) -> Outcome {
        self.lock_node(&path, instance)?;
        let holder = Holder { session, owner };
        if !self.nodes[path.as_str()].lock.holders.contains_key(&holder) {
            return Err(StateError::NotHeld(path));
        }
        // An upgrade it waits for ends with the lock it was to convert.
        self.remove_waiter(&path, holder, "released while waiting to convert it");
        self.drop_hold(&path, holder, false);
        self.grant_from_head(&path);
        self.maybe_reap(path);
        Ok(Reply::Done)
    }

    /// Withdraws a queued Acquire (or upgrade, which leaves the shared lock held). If the lock
    /// was granted in the meantime the caller learns it (and should release it, or, for an
    /// upgrade, keep it).
    pub(super) fn cancel(&mut self, session: SessionId, path: String, instance: u64, owner: Owner) -> Outcome {
        self.lock_node(&path, instance)?;
        let holder = Holder { session, owner };
        if self.remove_waiter(&path, holder, "cancelled") {
            self.grant_from_head(&path);
            self.maybe_reap(path);
            return Ok(Reply::Done);
        }
        if let Some(sequencer) = self.sequencer_of(&path, holder) {
            return Ok(Reply::Granted { sequencer });
        }
        Ok(Reply::Done)
    }

    /// Removes a waiter and tells the master its Acquire is over; false if it was not waiting.
    pub(super) fn remove_waiter(&mut self, path: &str, holder: Holder, reason: &str) -> bool {
        let Some(node) = self.nodes.get_mut(path).map(Arc::make_mut) else { return false };
        let before = node.lock.waiters.len();
        node.lock.waiters.retain(|w| w.holder != holder);
        if node.lock.waiters.len() == before {
            return false;
        }
        if let Some(s) = self.sessions.get_mut(&holder.session) {
            s.waiting.remove(&(path.to_string(), holder.owner));
        }
        self.effects.push(Effect::WaitEnded {
            session: holder.session,
            owner: holder.owner,
            path: path.to_string(),
            reason: reason.to_string(),
        });
        true
    }

    /// Removes a hold. `expired`: the holder's session died holding it, so the lock becomes
    /// unavailable for its lock-delay (Chubby §2.4: lets delayed messages of the dead holder
    /// drain before anyone else acts under the lock).
    pub(super) fn drop_hold(&mut self, path: &str, holder: Holder, expired: bool) {
        let clock = self.clock_ms;
        let Some(node) = self.nodes.get_mut(path).map(Arc::make_mut) else { return };
        if node.lock.holders.remove(&holder).is_none() {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&holder.session) {
            s.held.remove(&(path.to_string(), holder.owner));
        }
        let lock = &mut node.lock;
        if expired && lock.delay_ms > 0 {
            // The clock is clamped to MAX_CLOCK_MS, so this cannot overflow.
            let until = clock + lock.delay_ms;
            if until > lock.delay_until_ms {
                self.delays.remove(&(lock.delay_until_ms, path.to_string()));
                lock.delay_until_ms = until;
                self.delays.insert((until, path.to_string()));
                self.effects.push(Effect::LockDelay { path: path.to_string(), until_ms: until });
            }
        }
    }

    /// Grants the lock to the waiters at the head of the queue that it can take now.
    pub(super) fn grant_from_head(&mut self, path: &str) {
        loop {
            let Some(node) = self.nodes.get_mut(path).map(Arc::make_mut) else { return };
            let lock = &mut node.lock;
            if self.clock_ms < lock.delay_until_ms {
                return;
            }
            let Some(w) = lock.waiters.front() else { return };
            // A waiter that holds the lock already waits to upgrade it: it may once it holds alone.
            let upgrade = lock.holders.contains_key(&w.holder);
            if !(if upgrade { lock.holders.len() == 1 } else { lock.compatible(w.mode) }) {
                return;
            }
            let w = lock.waiters.pop_front().expect("front exists");
            if let Some(s) = self.sessions.get_mut(&w.holder.session) {
                s.waiting.remove(&(path.to_string(), w.holder.owner));
            }
            if upgrade {
                self.regrant(path, w.holder, w.mode);
            } else {
                self.grant(path, w.holder, w.mode, w.lock_delay_ms);
            }
        }
    }

    fn grant(&mut self, path: &str, holder: Holder, mode: LockMode, lock_delay_ms: Option<u64>) -> String {
        let node = self.nodes.get_mut(path).map(Arc::make_mut).expect("granting on an existing node");
        let lock = &mut node.lock;
        let was_free = lock.holders.is_empty();
        if was_free {
            // Chubby's lock generation: rises each time the lock goes from free to held.
            node.stat.lock_generation += 1;
            lock.mode = mode;
        }
        // A shared holder that joins may lengthen the lock-delay but never shorten it: the
        // holders already in count on theirs (their clients stop their work by it).
        match lock_delay_ms {
            Some(d) if was_free => lock.delay_ms = d,
            Some(d) => lock.delay_ms = lock.delay_ms.max(d),
            None => {}
        }
        lock.grants += 1;
        lock.holders.insert(holder, lock.grants);
        if let Some(s) = self.sessions.get_mut(&holder.session) {
            s.held.insert((path.to_string(), holder.owner));
        }
        self.announce_grant(path, holder)
    }

    /// The sequencer of `holder`'s new grant, told to the master (it wakes a blocked Acquire).
    fn announce_grant(&mut self, path: &str, holder: Holder) -> String {
        let sequencer = self.sequencer_of(path, holder).expect("just granted");
        self.effects.push(Effect::LockGranted {
            session: holder.session,
            owner: holder.owner,
            path: path.to_string(),
            sequencer: sequencer.clone(),
        });
        sequencer
    }

    /// Ends every lock-delay whose time has come (by the log's clock) and grants waiters.
    pub(super) fn end_lock_delays(&mut self) {
        while let Some((until, _)) = self.delays.get_min() {
            if *until > self.clock_ms {
                return;
            }
            let (until, path) = self.delays.remove_min().expect("first exists");
            match self.nodes.get_mut(path.as_str()).map(Arc::make_mut) {
                Some(n) => n.lock.delay_until_ms = 0,
                None => {
                    if self.name_delays.get(path.as_str()) == Some(&until) {
                        self.name_delays.remove(path.as_str());
                    }
                }
            }
            self.grant_from_head(&path);
        }
    }

    /// The sequencer of a current hold.
    pub fn sequencer_of(&self, path: &str, holder: Holder) -> Option<String> {
        let node = self.nodes.get(path)?;
        let grant = *node.lock.holders.get(&holder)?;
        let seq = Sequencer {
            path: path.to_string(),
            instance: node.stat.instance,
            lock_generation: node.stat.lock_generation,
            grant,
            mode: node.lock.mode,
            holder,
        };
        Some(seq.format())
    }

    /// The sequencer of a current hold in `mode` (not of a shared hold that waits to upgrade).
    pub fn sequencer_in_mode(&self, path: &str, holder: Holder, mode: LockMode) -> Option<String> {
        self.nodes.get(path).filter(|n| n.lock.mode == mode).and_then(|_| self.sequencer_of(path, holder))
    }

    /// The sequencers of everyone holding the lock on `path` now (none if it is free).
    pub fn holder_sequencers(&self, path: &str) -> Vec<String> {
        let Some(node) = self.nodes.get(path) else { return Vec::new() };
        node.lock.holders.keys().filter_map(|&h| self.sequencer_of(path, h)).collect()
    }

    /// Whether `holder` waits in the lock's queue.
    pub fn is_waiting(&self, path: &str, holder: Holder) -> bool {
        self.nodes.get(path).is_some_and(|n| n.lock.waiters.iter().any(|w| w.holder == holder))
    }

    /// Whether a sequencer still names a current hold (Chubby's CheckSequencer).
    pub fn check_sequencer(&self, sequencer: &str) -> bool {
        let Some(seq) = Sequencer::parse(sequencer) else { return false };
        self.nodes.get(seq.path.as_str()).is_some_and(|n| {
            n.stat.instance == seq.instance
                && n.stat.lock_generation == seq.lock_generation
                && n.lock.mode == seq.mode
                && n.lock.holders.get(&seq.holder) == Some(&seq.grant)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequencer_round_trips_paths_with_colons() {
        let s = Sequencer {
            path: "/a:b/c".into(),
            instance: 7,
            lock_generation: 3,
            grant: 5,
            mode: LockMode::Shared,
            holder: Holder { session: 4, owner: 99 },
        };
        assert_eq!(Sequencer::parse(&s.format()), Some(s));
        for bad in
            ["", "seq1", "seq2:1:1:1:x:1:1:/a", "seq1:1:1:1:q:1:1:/a", "seq1:a:1:1:x:1:1:/a", "seq1:1:1:x:1:1:/a"]
        {
            assert_eq!(Sequencer::parse(bad), None, "{bad}");
        }
    }
}
