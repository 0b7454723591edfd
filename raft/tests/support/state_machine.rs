//! The replicated state machine of the tests: the list of applied proposal ids and a hash
//! chain over every applied entry, so two replicas agree iff their chains agree.

use bytes::{Bytes, BytesMut};
use raft::{Entry, EntryKind, Index};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateMachine {
    pub applied: Index,
    pub chain: u64,
    pub payloads: Vec<u64>,
}

pub fn entry_hash(e: &Entry) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let kind = match e.kind {
        EntryKind::Normal => 1u8,
        EntryKind::ConfChange => 2u8,
    };
    for b in std::iter::once(kind).chain(e.data.iter().copied()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A proposal's payload: its id, padded to `size` bytes.
pub fn payload(id: u64, size: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(size.max(8));
    b.extend_from_slice(&id.to_le_bytes());
    b.resize(size.max(8), 0);
    b.freeze()
}

pub fn payload_id(e: &Entry) -> Option<u64> {
    if e.kind != EntryKind::Normal || e.data.len() < 8 {
        return None;
    }
    Some(u64::from_le_bytes(e.data[..8].try_into().ok()?))
}

impl StateMachine {
    pub fn apply(&mut self, e: &Entry) {
        self.applied = e.index;
        self.chain = (self.chain ^ entry_hash(e)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
        if let Some(id) = payload_id(e) {
            self.payloads.push(id);
        }
    }

    pub fn snapshot(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.extend_from_slice(&self.applied.to_le_bytes());
        b.extend_from_slice(&self.chain.to_le_bytes());
        for p in &self.payloads {
            b.extend_from_slice(&p.to_le_bytes());
        }
        b.freeze()
    }

    pub fn restore(data: &[u8]) -> StateMachine {
        if data.len() < 16 {
            return StateMachine::default();
        }
        let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().unwrap());
        let n = data.len() / 8;
        StateMachine { applied: word(0), chain: word(1), payloads: (2..n).map(word).collect() }
    }
}
