//! The pipelining window: the last index of each AppendEntries in flight to one follower.

use std::collections::VecDeque;

use crate::types::Index;

#[derive(Clone, Debug)]
pub struct Inflights {
    cap: usize,
    ends: VecDeque<Index>,
}

impl Inflights {
    pub(crate) fn new(cap: usize) -> Inflights {
        Inflights { cap, ends: VecDeque::with_capacity(cap.min(64)) }
    }

    pub(crate) fn full(&self) -> bool {
        self.ends.len() >= self.cap
    }

    pub fn count(&self) -> usize {
        self.ends.len()
    }

    pub(crate) fn add(&mut self, last: Index) {
        self.ends.push_back(last);
    }

    /// The follower acknowledged everything up to `index`.
    pub(crate) fn free_le(&mut self, index: Index) {
        while self.ends.front().is_some_and(|&e| e <= index) {
            self.ends.pop_front();
        }
    }

    /// Makes room for one more message when acknowledgements were lost (a heartbeat answered
    /// while the window was full), so a lossy link cannot stall replication forever.
    pub(crate) fn free_first_one(&mut self) {
        self.ends.pop_front();
    }

    pub(crate) fn reset(&mut self) {
        self.ends.clear();
    }
}
