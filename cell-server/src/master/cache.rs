//! Which sessions may cache which nodes, and the invalidations in flight (Chubby §2.5).
//!
//! A read that may be cached registers its session *before* it reads; a write takes all
//! registrations of its node and invalidates those sessions before it commits. So a read
//! either registered in time to be invalidated, or saw the write pending and was answered
//! uncacheable. (The client also discards a read's answer if an invalidation for that node
//! arrived while the read was in flight.)

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use proto::chubby::{session_response, Invalidation, SessionResponse};
use tokio::sync::oneshot;

use super::{LeaseTable, StreamTx};
use crate::state::SessionId;

#[derive(Default)]
pub struct CacheTable {
    next: u64,
    /// node → session → registration token
    cachers: HashMap<String, HashMap<SessionId, u64>>,
    by_session: HashMap<SessionId, HashSet<String>>,
    /// Writes in progress per node: while any, reads are not cacheable.
    pending: HashMap<String, u32>,
    /// Invalidations awaiting an ack: id → (session, node, writer to wake).
    awaiting: HashMap<u64, (SessionId, String, oneshot::Sender<()>)>,
    /// How many acks each session owes.
    owed: HashMap<SessionId, u32>,
}

impl CacheTable {
    pub fn register(&mut self, session: SessionId, path: &str) -> Option<u64> {
        if self.pending.get(path).is_some_and(|n| *n > 0) {
            return None;
        }
        self.next += 1;
        self.cachers.entry(path.to_string()).or_default().insert(session, self.next);
        self.by_session.entry(session).or_default().insert(path.to_string());
        Some(self.next)
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
        if let Some(set) = self.by_session.get_mut(&session) {
            set.remove(path);
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
            if let Some(set) = self.by_session.get_mut(s) {
                set.remove(path);
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
        for path in self.by_session.remove(&session).unwrap_or_default() {
            if let Some(m) = self.cachers.get_mut(&path) {
                m.remove(&session);
            }
        }
        // The writers waiting on this session see their channel closed: it needs no ack.
        self.awaiting.retain(|_, (s, _, _)| *s != session);
        self.owed.remove(&session);
    }
}
