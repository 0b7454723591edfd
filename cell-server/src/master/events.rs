//! Events to subscribed sessions (Chubby §2.5), sent on their session streams. An event that
//! cannot be queued (the stream's queue is full) is not dropped silently: the session is told
//! that events were lost, before any later event of its, so it reads again what it watches.

use std::collections::HashSet;

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
        let Some(subs) = self.subscriptions.get(path) else { return };
        let targets: Vec<SessionId> = subs
            .iter()
            .filter(|(session, m)| *m & mask != 0 && only.is_none_or(|o| o.contains(session)))
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

    fn kind(r: Result<SessionResponse, tonic::Status>) -> Option<Kind> {
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
        g.subscriptions.entry("/f".into()).or_default().insert(7, 1);
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
}
