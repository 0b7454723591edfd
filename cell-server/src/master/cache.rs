//! Which sessions may cache which nodes, and the invalidations in flight (Chubby §2.5).
//!
//! A read that may be cached registers its session *before* it reads; a write takes all
//! registrations of its node and invalidates those sessions before it commits. So a read
//! either registered in time to be invalidated, or saw the write pending and was answered
//! uncacheable. (The client also discards a read's answer if an invalidation for that node
//! arrived while the read was in flight.)
//!
//! A session is registered for at most [`MAX_CACHED_PER_SESSION`] nodes. Past it, its oldest
//! registration is withdrawn and the session is sent an invalidation of that node, as for a
//! write but with no writer waiting: the table follows what a client caches, not everything it
//! ever read, and a write to the node still waits for that ack (see `begin_write`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use proto::chubby::{session_response, Invalidation, SessionResponse};
use tokio::sync::oneshot;

use super::{LeaseTable, StreamTx};
use crate::state::SessionId;

/// The most nodes one session is registered for: what the client library's cache holds.
pub const MAX_CACHED_PER_SESSION: usize = 16_384;

#[derive(Default)]
struct SessionCachers {
    nodes: HashSet<String>,
    /// Registrations oldest first, as (node, token); an entry whose token is no longer the
    /// node's registration is stale and skipped (compacted away when they outnumber the live).
    order: VecDeque<(String, u64)>,
}

#[derive(Default)]
pub struct CacheTable {
    next: u64,
    /// node → session → registration token
    cachers: HashMap<String, HashMap<SessionId, u64>>,
    by_session: HashMap<SessionId, SessionCachers>,
    /// Writes in progress per node: while any, reads are not cacheable.
    pending: HashMap<String, u32>,
    /// Invalidations awaiting an ack: id → (session, node, writer to wake).
    awaiting: HashMap<u64, (SessionId, String, oneshot::Sender<()>)>,
    /// How many acks each session owes.
    owed: HashMap<SessionId, u32>,
}

impl CacheTable {
    /// Registers `session` as a cacher of `path` for a read about to run; `None` while a write
    /// to it is pending (the read's answer may not be cached). Past the session's limit, its
    /// oldest registration goes (see [`CacheTable::evict_over_limit`]).
    pub fn register(
        &mut self,
        session: SessionId,
        path: &str,
        full_path: impl Fn(&str) -> String,
        stream: Option<&StreamTx>,
    ) -> Option<u64> {
        if self.pending.get(path).is_some_and(|n| *n > 0) {
            return None;
        }
        self.next += 1;
        self.cachers.entry(path.to_string()).or_default().insert(session, self.next);
        let mine = self.by_session.entry(session).or_default();
        mine.nodes.insert(path.to_string());
        mine.order.push_back((path.to_string(), self.next));
        let token = self.next;
        self.evict_over_limit(session, full_path, stream);
        Some(token)
    }

    /// If `session` is registered for more than [`MAX_CACHED_PER_SESSION`] nodes: withdraws
    /// its oldest registration and sends it an invalidation of that node (on `stream`, if it
    /// has one; a session without one drops its whole cache when it resumes).
    fn evict_over_limit(&mut self, session: SessionId, full_path: impl Fn(&str) -> String, stream: Option<&StreamTx>) {
        let Some(mine) = self.by_session.get_mut(&session) else { return };
        let cachers = &self.cachers;
        let live = |(path, token): &(String, u64)| cachers.get(path).and_then(|m| m.get(&session)) == Some(token);
        if mine.order.len() > 2 * mine.nodes.len() + 64 {
            mine.order.retain(live);
        }
        if mine.nodes.len() <= MAX_CACHED_PER_SESSION {
            return;
        }
        let Some(oldest) = std::iter::from_fn(|| mine.order.pop_front()).find(live) else { return };
        let path = oldest.0;
        self.unregister(session, &path, oldest.1);
        // Nobody waits for this ack; the receiver is dropped. A write to the node meanwhile
        // waits for it, as for any invalidation in flight.
        let (tx, _) = oneshot::channel();
        self.next += 1;
        let id = self.next;
        let full = full_path(&path);
        self.awaiting.insert(id, (session, path, tx));
        *self.owed.entry(session).or_default() += 1;
        if let Some(stream) = stream {
            let inv = Invalidation { invalidation_id: id, paths: vec![full] };
            let _ = stream.try_send(Ok(SessionResponse { kind: Some(session_response::Kind::Invalidation(inv)) }));
        }
    }

    /// Registrations held, for the status report.
    pub fn count(&self) -> usize {
        self.cachers.values().map(HashMap::len).sum()
    }

    pub fn still(&self, session: SessionId, path: &str, token: u64) -> bool {
        self.cachers.get(path).and_then(|m| m.get(&session)) == Some(&token)
    }

    /// Withdraws the registration `token` (if a later one replaced it, that one stays).
    pub fn unregister(&mut self, session: SessionId, path: &str, token: u64) {
        if !self.still(session, path, token) {
            return;
        }
        if let Some(m) = self.cachers.get_mut(path) {
            m.remove(&session);
            if m.is_empty() {
                self.cachers.remove(path);
            }
        }
        if let Some(mine) = self.by_session.get_mut(&session) {
            mine.nodes.remove(path);
        }
    }

    /// Marks a write pending and sends its invalidations; returns what to wait for: each
    /// session, the end of its lease, and the ack.
    ///
    /// `writer`: a session that dropped its own copy before sending the write
    /// (write-through), which needs no invalidation.
    pub fn begin_write(
        &mut self,
        path: &str,
        full_path: &str,
        writer: Option<SessionId>,
        unflushed: &HashSet<SessionId>,
        streams: &HashMap<SessionId, StreamTx>,
        leases: &LeaseTable,
    ) -> Vec<(SessionId, u64, Instant, oneshot::Receiver<()>)> {
        *self.pending.entry(path.to_string()).or_default() += 1;
        let mut sessions: HashSet<SessionId> = self.cachers.remove(path).unwrap_or_default().into_keys().collect();
        for s in &sessions {
            if let Some(mine) = self.by_session.get_mut(s) {
                mine.nodes.remove(path);
            }
        }
        // After a failover, a session that has not resumed may cache anything.
        sessions.extend(unflushed.iter().copied());
        // A session that has not yet acked an earlier write's invalidation of this node may
        // still answer from its old copy: this write must not complete before it acks either.
        sessions.extend(self.awaiting.values().filter(|(_, p, _)| p == path).map(|(s, _, _)| *s));
        if let Some(w) = writer {
            sessions.remove(&w);
        }
        let mut waits = Vec::new();
        for session in sessions {
            let Some(deadline) = leases.deadline(session) else { continue };
            self.next += 1;
            let id = self.next;
            let (tx, rx) = oneshot::channel();
            self.awaiting.insert(id, (session, path.to_string(), tx));
            *self.owed.entry(session).or_default() += 1;
            if let Some(stream) = streams.get(&session) {
                let inv = Invalidation { invalidation_id: id, paths: vec![full_path.to_string()] };
                let _ = stream.try_send(Ok(SessionResponse { kind: Some(session_response::Kind::Invalidation(inv)) }));
            }
            waits.push((session, id, deadline, rx));
        }
        waits
    }

    pub fn end_write(&mut self, path: &str) {
        if let Some(n) = self.pending.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(path);
            }
        }
    }

    /// Whether `session` owes an invalidation ack. Its lease is not extended meanwhile: the
    /// writer waits at most until the lease's current end, and the client must not believe
    /// its cache valid past the moment the writer may go ahead.
    pub fn owes(&self, session: SessionId) -> bool {
        self.owed.contains_key(&session)
    }

    fn settled(&mut self, id: u64) -> Option<oneshot::Sender<()>> {
        let (session, _, tx) = self.awaiting.remove(&id)?;
        if let Some(n) = self.owed.get_mut(&session) {
            *n -= 1;
            if *n == 0 {
                self.owed.remove(&session);
            }
        }
        Some(tx)
    }

    /// An ack from a stream carrying `sessions`.
    pub fn ack(&mut self, id: u64, sessions: &HashSet<SessionId>) {
        if self.awaiting.get(&id).is_some_and(|(s, _, _)| sessions.contains(s)) {
            if let Some(tx) = self.settled(id) {
                let _ = tx.send(());
            }
        }
    }

    /// The writer stopped waiting for `id` (its session's lease ran out).
    pub fn give_up(&mut self, id: u64) {
        self.settled(id);
    }

    /// A session (re)attached a stream. Clients drop their whole cache when their stream
    /// breaks, so a resumption acknowledges every invalidation the session still owes.
    pub fn flushed(&mut self, session: SessionId) {
        let ids: Vec<u64> = self.awaiting.iter().filter(|(_, (s, _, _))| *s == session).map(|(id, _)| *id).collect();
        for id in ids {
            if let Some(tx) = self.settled(id) {
                let _ = tx.send(());
            }
        }
    }

    /// A session ended: it caches nothing any more and owes no acks.
    pub fn forget_session(&mut self, session: SessionId) {
        for path in self.by_session.remove(&session).unwrap_or_default().nodes {
            if let Some(m) = self.cachers.get_mut(&path) {
                m.remove(&session);
                if m.is_empty() {
                    self.cachers.remove(&path);
                }
            }
        }
        // The writers waiting on this session see their channel closed: it needs no ack.
        self.awaiting.retain(|_, (s, _, _)| *s != session);
        self.owed.remove(&session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session that reads more nodes than a client caches is registered for only the newest
    /// `MAX_CACHED_PER_SESSION`; the oldest is invalidated at the client, and a write to it
    /// still waits for that ack (until then the client may answer from its old copy).
    #[test]
    fn registrations_past_the_limit_evict_the_oldest_with_an_invalidation() {
        let mut t = CacheTable::default();
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let path = |i: usize| format!("/n{i}");
        for i in 0..=MAX_CACHED_PER_SESSION {
            // Reading a node again moves it to the back: /n0 is read again, so /n1 goes first.
            for p in if i == 2 { vec![path(0), path(2)] } else { vec![path(i)] } {
                t.register(7, &p, |p| format!("/ls/c{p}"), Some(&tx));
            }
        }
        assert_eq!(t.count(), MAX_CACHED_PER_SESSION);
        let Some(session_response::Kind::Invalidation(inv)) = rx.try_recv().unwrap().unwrap().kind else {
            panic!("an invalidation")
        };
        assert_eq!(inv.paths, vec!["/ls/c/n1".to_string()]);
        assert!(rx.try_recv().is_err(), "one node evicted");
        assert!(!t.cachers.contains_key("/n1") && t.cachers.contains_key("/n0"));
        assert!(t.owes(7));
        let mut leases = LeaseTable::default();
        leases.extend(7, Instant::now() + std::time::Duration::from_secs(10));
        let waits = t.begin_write("/n1", "/ls/c/n1", None, &HashSet::new(), &HashMap::new(), &leases);
        assert_eq!(waits.len(), 1, "the write waits for the eviction's ack");
        t.end_write("/n1");
        t.ack(inv.invalidation_id, &HashSet::from([7]));
        t.forget_session(7);
        assert_eq!(t.count(), 0);
        assert!(t.cachers.is_empty() && t.by_session.is_empty());
    }
}
