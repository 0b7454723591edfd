//! Session streams (Chubby §2.8, §2.9): opening or resuming a session on a stream, KeepAlives,
//! subscriptions to events, and the stream's end.

use std::collections::HashSet;
use std::time::Instant;

use proto::chubby::{session_response, LeaseGrant, OpenSession, SessionResponse};

use super::events::{event, events_lost};
use super::{Inner, Master, MasterError, StreamTx};
use crate::machine::CellMachine;
use crate::state::handle::{session_token, verify, verify_session_token};
use crate::state::{Op, Reply, SessionId, StateError};

impl Master {
    /// OpenSession on a stream: a new session (logged) or the resumption of a live one.
    /// `certified`: `o.principal` is what the stream's certificate proves, and a session may
    /// only be resumed as the principal it was opened as (its token alone is not enough).
    pub async fn open_session(
        &self,
        o: OpenSession,
        certified: bool,
        tx: &StreamTx,
    ) -> Result<LeaseGrant, MasterError> {
        self.serving()?;
        if o.resume_session == 0 {
            let op = Op::CreateSession { principal: o.principal, open_id: o.open_id };
            let id = match self.propose_op(None, op).await?? {
                Reply::Session { id } => id,
                other => return Err(MasterError::Unexpected(format!("{other:?}"))),
            };
            return self.attach(id, tx, false);
        }
        let id = o.resume_session;
        verify_session_token(&self.key(), id, &o.session_token)?;
        let owner =
            self.replica.read(move |m: &CellMachine| m.state().session(id).map(|s| s.principal.clone())).await?;
        let Some(owner) = owner else {
            return Err(MasterError::SessionLost(id));
        };
        if certified && owner != o.principal {
            return Err(MasterError::Refused(StateError::PermissionDenied(format!(
                "session {id} is {owner}'s, not {}'s",
                o.principal
            ))));
        }
        // The session's subscriptions, by the handles it opened them with: only what a valid
        // handle of this very session names (a forged or foreign one is ignored).
        let key = self.key();
        for sub in &o.resubscribe {
            let token = sub.handle.as_ref().map(|h| h.token.as_ref()).unwrap_or_default();
            match verify(&key, token) {
                Ok(body) if body.session == id => self.subscribe(id, &body.path, sub.event_mask, token),
                _ => tracing::warn!(session = id, "a resumed session named a subscription by a handle not its own"),
            }
        }
        self.attach(id, tx, true)
    }

    /// Registers a stream for a session just opened or resumed and grants it a full lease.
    /// A session resumed for the first time since this master took office also gets the
    /// master-failover event, right after its grant (Chubby §2.9: it must flush its cache).
    fn attach(&self, session: SessionId, tx: &StreamTx, resumed: bool) -> Result<LeaseGrant, MasterError> {
        let mut g = self.lock();
        let epoch = g.epoch.ok_or(MasterError::OfficeEnded("master stopped serving; retry"))?;
        // A session whose lease ran out here is being expired (its ExpireSession may not have
        // committed yet, so the state still lists it): it must not come back to life with a
        // fresh lease only to be ended a moment later, its client believing in its locks.
        if resumed && g.leases.deadline(session).is_none() {
            return Err(MasterError::SessionLost(session));
        }
        g.streams.insert(session, tx.clone());
        // A resumed session's client reports the gap of its stream's break itself.
        g.events_lost.remove(&session);
        let now = Instant::now();
        g.leases.extend(session, now + self.cfg.lease);
        let lease = self.lease_to_grant(&g, now);
        let failover = g.unflushed.remove(&session) && resumed;
        if resumed {
            g.cache.flushed(session);
        }
        let session_token = session_token(&g.key, session);
        let grant = LeaseGrant {
            session,
            lease_ms: lease.as_millis() as u64,
            epoch,
            session_token,
            lost_sessions: Vec::new(),
            full_lease_ms: self.cfg.lease.as_millis() as u64,
        };
        // Queued on the stream under the lock, so nothing can come between the two.
        let _ = tx.try_send(Ok(SessionResponse { kind: Some(session_response::Kind::Lease(grant.clone())) }));
        if failover {
            let _ = tx.try_send(Ok(event(String::new(), proto::chubby::event::Kind::MasterFailover(true))));
        }
        Ok(grant)
    }

    /// KeepAlive on stream `tx`: a fresh full lease for `session` (and `more` sessions of the
    /// same stream), if still alive at this master and attached to this stream. A stream from
    /// before this master's term (it lost and regained leadership meanwhile) is refused, so its
    /// client resumes and is attached again. A session that owes an invalidation ack gets no
    /// extension: the grant names what is left of its lease.
    pub fn keep_alive(&self, session: SessionId, more: &[SessionId], tx: &StreamTx) -> Result<LeaseGrant, MasterError> {
        let mut g = self.lock();
        let epoch = g.epoch.ok_or(MasterError::OfficeEnded("master stopped serving; retry"))?;
        if g.leases.deadline(session).is_none() {
            return Err(MasterError::SessionLost(session));
        }
        let attached = |g: &Inner, s: SessionId| g.streams.get(&s).is_some_and(|t| t.same_channel(tx));
        if !attached(&g, session) {
            return Err(MasterError::NotAttached);
        }
        let now = Instant::now();
        let until = now + self.cfg.lease;
        // What the client is told is capped by this master's confirmed leadership; its own
        // deadlines (when it would expire a session) stay a full lease away.
        let mut shortest = self.lease_to_grant(&g, now);
        let mut lost_sessions = Vec::new();
        for &s in std::iter::once(&session).chain(more) {
            match g.leases.deadline(s) {
                Some(_) if !attached(&g, s) => lost_sessions.push(s),
                Some(d) if g.cache.owes(s) => shortest = shortest.min(d.saturating_duration_since(now)),
                Some(_) => g.leases.extend(s, until),
                None => lost_sessions.push(s),
            }
        }
        if g.events_lost.contains(&session) && tx.try_send(Ok(events_lost())).is_ok() {
            g.events_lost.remove(&session);
        }
        let session_token = session_token(&g.key, session);
        Ok(LeaseGrant {
            session,
            lease_ms: shortest.as_millis() as u64,
            epoch,
            session_token,
            lost_sessions,
            full_lease_ms: self.cfg.lease.as_millis() as u64,
        })
    }

    /// A stream ended: forget it for the sessions it carried (their leases keep running).
    pub fn detach(&self, sessions: &HashSet<SessionId>, tx: &StreamTx) {
        let mut g = self.lock();
        for s in sessions {
            if g.streams.get(s).is_some_and(|t| t.same_channel(tx)) {
                g.streams.remove(s);
            }
        }
    }

    /// Subscribes `session` to events of `mask` on `path`, for as long as the handle `token`
    /// is open (see [`events::Subscriptions`]).
    pub fn subscribe(&self, session: SessionId, path: &str, mask: u32, token: &[u8]) {
        self.lock().subs.subscribe(session, path, mask, token);
    }

    /// The handle `token` of `session` on `path` was closed.
    pub fn handle_closed(&self, session: SessionId, path: &str, token: &[u8]) {
        self.lock().subs.closed(session, path, token);
    }

    pub fn ack_invalidation(&self, id: u64, sessions: &HashSet<SessionId>) {
        self.lock().cache.ack(id, sessions);
    }
}
