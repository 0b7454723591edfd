//! Events to subscribed sessions (Chubby §2.5), sent on their session streams. An event that
//! cannot be queued (the stream's queue is full) is not dropped silently: the session is told
//! that events were lost, before any later event of its, so it reads again what it watches.
//!
//! A subscription is made by an Open with an event mask and belongs to that handle: Close of
//! the handle ends it, as the end of the session or of the node does. As in the client
//! library, a session has one subscription per node; a later Open with events adds its mask
//! and becomes the handle it belongs to.

use std::collections::{HashMap, HashSet};

use proto::chubby::{session_response, Event, SessionResponse};

use super::{full_path, Inner};
use crate::state::SessionId;

pub(super) fn event(path: String, kind: proto::chubby::event::Kind) -> SessionResponse {
    SessionResponse { kind: Some(session_response::Kind::Event(Event { path, kind: Some(kind) })) }
}

/// The event that tells a session some of its events were lost.
pub(super) fn events_lost() -> SessionResponse {
    event(String::new(), proto::chubby::event::Kind::EventsLost(true))
}

/// The subscriptions of all sessions, by node and by session.
#[derive(Default)]
pub(super) struct Subscriptions {
    /// node → session → (event mask, hash of the token of the handle it belongs to)
    by_node: HashMap<String, HashMap<SessionId, (u32, u64)>>,
    by_session: HashMap<SessionId, HashSet<String>>,
}

fn handle_key(token: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(token)
}

impl Subscriptions {
    pub fn subscribe(&mut self, session: SessionId, path: &str, mask: u32, token: &[u8]) {
        if mask == 0 {
            return;
        }
        let sub = self.by_node.entry(path.to_string()).or_default().entry(session).or_insert((0, 0));
        *sub = (sub.0 | mask, handle_key(token));
        self.by_session.entry(session).or_default().insert(path.to_string());
    }

    /// The handle `token` was closed: the subscription it holds ends.
    pub fn closed(&mut self, session: SessionId, path: &str, token: &[u8]) {
        let Some(subs) = self.by_node.get_mut(path) else { return };
        if subs.get(&session).is_some_and(|(_, h)| *h == handle_key(token)) {
            subs.remove(&session);
            if subs.is_empty() {
                self.by_node.remove(path);
            }
            self.forget_path_of(session, path);
        }
    }

    /// The node was deleted: nobody's subscription to it lives on.
    pub fn node_deleted(&mut self, path: &str) {
        for session in self.by_node.remove(path).map(|m| m.into_keys().collect::<Vec<_>>()).unwrap_or_default() {
            self.forget_path_of(session, path);
        }
    }

    pub fn session_ended(&mut self, session: SessionId) {
        for path in self.by_session.remove(&session).unwrap_or_default() {
            if let Some(subs) = self.by_node.get_mut(&path) {
                subs.remove(&session);
                if subs.is_empty() {
                    self.by_node.remove(&path);
                }
            }
        }
    }

    fn forget_path_of(&mut self, session: SessionId, path: &str) {
        if let Some(set) = self.by_session.get_mut(&session) {
            set.remove(path);
            if set.is_empty() {
                self.by_session.remove(&session);
            }
        }
    }

    /// Subscriptions held, for the status report.
    pub fn count(&self) -> usize {
        self.by_node.values().map(HashMap::len).sum()
    }
}

impl Inner {
    /// Sends an event about `path` to the sessions subscribed to `kind_mask` (restricted to
    /// `only` if given).
    pub(super) fn notify(
        &mut self,
        path: &str,
        mask: u32,
        only: Option<&HashSet<SessionId>>,
        kind: proto::chubby::event::Kind,
    ) {
        let Some(subs) = self.subs.by_node.get(path) else { return };
        let targets: Vec<SessionId> = subs
            .iter()
            .filter(|(session, (m, _))| *m & mask != 0 && only.is_none_or(|o| o.contains(session)))
            .map(|(session, _)| *session)
            .collect();
        for session in &targets {
            let Some(tx) = self.streams.get(session) else { continue };
            // An event that cannot go out is never dropped silently: its session learns of the
            // gap, before any later event (see `events_lost`).
            if self.events_lost.contains(session) && tx.try_send(Ok(events_lost())).is_ok() {
                self.events_lost.remove(session);
            }
            if self.events_lost.contains(session)
                || tx.try_send(Ok(event(full_path(&self.cell_name, path), kind.clone()))).is_err()
            {
                self.events_lost.insert(*session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::chubby::event::Kind;

    fn kind(r: Result<SessionResponse, crate::master::MasterError>) -> Option<Kind> {
        match r.ok()?.kind? {
            session_response::Kind::Event(e) => e.kind,
            _ => None,
        }
    }

    /// A session whose stream cannot take an event is told of the gap before its next event.
    #[test]
    fn an_event_that_cannot_be_queued_becomes_an_events_lost_marker() {
        let mut g = Inner { cell_name: "local".into(), ..Inner::default() };
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        g.streams.insert(7, tx);
        g.subs.subscribe(7, "/f", 1, b"handle");
        g.notify("/f", 1, None, Kind::ContentsModified(true));
        g.notify("/f", 1, None, Kind::ContentsModified(true)); // the queue is full: lost
        assert!(g.events_lost.contains(&7));
        assert_eq!(kind(rx.try_recv().unwrap()), Some(Kind::ContentsModified(true)));
        g.notify("/f", 1, None, Kind::ContentsModified(true)); // room for the marker only
        assert_eq!(kind(rx.try_recv().unwrap()), Some(Kind::EventsLost(true)), "the gap, first");
        assert!(g.events_lost.contains(&7), "that event was lost too");
        g.notify("/f", 1, None, Kind::ContentsModified(true));
        assert_eq!(kind(rx.try_recv().unwrap()), Some(Kind::EventsLost(true)));
        assert!(rx.try_recv().is_err());
    }

    /// A subscription lives as long as the handle that made it: Close of another handle of the
    /// session leaves it, Close of its own ends it, and nothing of it is left behind.
    #[test]
    fn closing_the_subscribing_handle_ends_the_subscription() {
        let mut s = Subscriptions::default();
        s.subscribe(7, "/f", 1, b"first");
        s.subscribe(7, "/f", 2, b"second");
        s.subscribe(8, "/f", 1, b"other session");
        s.closed(7, "/f", b"first");
        assert_eq!(s.by_node["/f"][&7].0, 3, "another handle's Close leaves the subscription");
        s.closed(7, "/f", b"second");
        assert!(!s.by_node["/f"].contains_key(&7));
        assert!(!s.by_session.contains_key(&7), "nothing is kept for the session");
        s.node_deleted("/f");
        assert_eq!(s.count(), 0);
        assert!(s.by_node.is_empty() && s.by_session.is_empty());
    }
}
