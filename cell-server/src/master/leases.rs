//! Session lease deadlines, kept by the master in memory only (Chubby §2.8): extended by
//! KeepAlive, rebuilt with a full fresh lease for every session when a new master takes
//! office (§2.9), and scanned for expiry in deadline order.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::state::SessionId;

#[derive(Default)]
pub struct LeaseTable {
    deadline: HashMap<SessionId, Instant>,
    order: BTreeSet<(Instant, SessionId)>,
}

impl LeaseTable {
    /// Sets the session's deadline (later or earlier than before).
    pub fn extend(&mut self, id: SessionId, until: Instant) {
        if let Some(old) = self.deadline.insert(id, until) {
            self.order.remove(&(old, id));
        }
        self.order.insert((until, id));
    }

    pub fn remove(&mut self, id: SessionId) {
        if let Some(old) = self.deadline.remove(&id) {
            self.order.remove(&(old, id));
        }
    }

    pub fn deadline(&self, id: SessionId) -> Option<Instant> {
        self.deadline.get(&id).copied()
    }

    /// Removes and returns the sessions whose lease ran out by `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<SessionId> {
        let mut out = Vec::new();
        while let Some(&(until, id)) = self.order.first() {
            if until > now {
                break;
            }
            self.order.pop_first();
            self.deadline.remove(&id);
            out.push(id);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.deadline.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadline.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keepalive_moves_a_deadline_and_expiry_comes_in_order() {
        let t0 = Instant::now();
        let s = |ms| t0 + Duration::from_millis(ms);
        let mut l = LeaseTable::default();
        l.extend(1, s(100));
        l.extend(2, s(50));
        l.extend(3, s(300));
        l.extend(1, s(200));
        assert_eq!(l.take_expired(s(49)), Vec::<SessionId>::new());
        assert_eq!(l.take_expired(s(150)), vec![2], "1 was kept alive past 150");
        assert_eq!(l.take_expired(s(1000)), vec![1, 3]);
        assert!(l.is_empty());
        l.extend(4, s(10));
        l.remove(4);
        assert_eq!(l.take_expired(s(1000)), Vec::<SessionId>::new());
    }
}
