//! What the master does with the effects of applied entries: grants wake blocked Acquires,
//! changes become events, lock-delays are armed, ended sessions are forgotten.

use std::collections::HashSet;
use std::sync::Arc;

use super::{Master, EVENT_CHILDREN, EVENT_CONFLICTING_LOCK, EVENT_CONTENTS, EVENT_LOCK_ACQUIRED};
use crate::state::{split_parent, Change, Effect, SessionId, StateError};

impl Master {
    pub(super) fn on_effects(self: &Arc<Self>, batch: Vec<Effect>) {
        let mut delays = Vec::new();
        {
            let mut g = self.lock();
            if g.epoch.is_none() {
                return;
            }
            for e in batch {
                match e {
                    Effect::LockGranted { session, owner, path, sequencer } => {
                        for tx in g.waiters.remove(&(session, owner, path.clone())).unwrap_or_default() {
                            let _ = tx.send(Ok(sequencer.clone()));
                        }
                        g.notify(&path, EVENT_LOCK_ACQUIRED, None, proto::chubby::event::Kind::LockAcquired(true));
                    }
                    Effect::WaitEnded { session, owner, path, reason } => {
                        for tx in g.waiters.remove(&(session, owner, path.clone())).unwrap_or_default() {
                            let _ = tx.send(Err(StateError::WaitEnded { path: path.clone(), reason: reason.clone() }));
                        }
                    }
                    Effect::LockConflict { path, holders } => {
                        let only: HashSet<SessionId> = holders.into_iter().collect();
                        g.notify(
                            &path,
                            EVENT_CONFLICTING_LOCK,
                            Some(&only),
                            proto::chubby::event::Kind::ConflictingLock(true),
                        );
                    }
                    Effect::LockDelay { until_ms, .. } => delays.push(until_ms),
                    Effect::NodeChanged { path, change } => {
                        use proto::chubby::event::Kind;
                        let (parent, name) = split_parent(&path);
                        match change {
                            Change::ContentsModified | Change::AclChanged => {
                                g.notify(&path, EVENT_CONTENTS, None, Kind::ContentsModified(true))
                            }
                            Change::Created => {
                                g.notify(parent, EVENT_CHILDREN, None, Kind::ChildAdded(name.to_string()))
                            }
                            Change::Deleted => {
                                g.notify(&path, EVENT_CONTENTS, None, Kind::ContentsModified(true));
                                g.notify(parent, EVENT_CHILDREN, None, Kind::ChildRemoved(name.to_string()));
                                g.subs.node_deleted(&path);
                            }
                        }
                    }
                    Effect::SessionEnded { session, expired } => g.forget_session(session, expired),
                }
            }
        }
        for until in delays {
            self.arm_lock_delay(until);
        }
    }
}
