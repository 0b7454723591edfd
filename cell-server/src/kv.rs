//! The replicated state machine of this stage: a map from keys to values, each remembering the
//! log index of the write that set it (its revision). Deterministic: it depends only on the
//! entries applied.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use raft::{Index, StateMachine};

/// Longest key accepted, in bytes.
pub const MAX_KEY: usize = 1024;
/// Largest value accepted (Chubby's file size limit).
pub const MAX_VALUE: usize = 256 << 10;

const OP_PUT: u8 = 1;

/// A value and the log index that wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub value: Bytes,
    pub revision: Index,
}

#[derive(Default, Debug)]
pub struct KvStore {
    map: BTreeMap<String, Versioned>,
    applied: Index,
}

/// Why a request is refused before it is proposed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvError {
    #[error("key must be 1 to {MAX_KEY} bytes")]
    BadKey,
    #[error("value is {0} bytes; the limit is {MAX_VALUE}")]
    TooLarge(usize),
}

/// Encodes a put for the log, checking it first.
pub fn encode_put(key: &str, value: &[u8]) -> Result<Bytes, KvError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(KvError::BadKey);
    }
    if value.len() > MAX_VALUE {
        return Err(KvError::TooLarge(value.len()));
    }
    let mut b = BytesMut::with_capacity(5 + key.len() + value.len());
    b.extend_from_slice(&[OP_PUT]);
    b.extend_from_slice(&(key.len() as u32).to_le_bytes());
    b.extend_from_slice(key.as_bytes());
    b.extend_from_slice(value);
    Ok(b.freeze())
}

impl KvStore {
    pub fn get(&self, key: &str) -> Option<&Versioned> {
        self.map.get(key)
    }

    pub fn list<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a String, &'a Versioned)> + 'a {
        self.map.range(prefix.to_string()..).take_while(move |(k, _)| k.starts_with(prefix))
    }

    pub fn applied(&self) -> Index {
        self.applied
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

fn decode_put(data: &[u8]) -> Option<(String, Bytes)> {
    let (&op, rest) = data.split_first()?;
    if op != OP_PUT || rest.len() < 4 {
        return None;
    }
    let klen = u32::from_le_bytes(rest[..4].try_into().ok()?) as usize;
    let key = std::str::from_utf8(rest.get(4..4 + klen)?).ok()?.to_string();
    Some((key, Bytes::copy_from_slice(&rest[4 + klen..])))
}

impl StateMachine for KvStore {
    /// Returns the revision (8 bytes LE), or nothing for an entry it cannot decode (which only
    /// a buggy proposer could have written; every replica skips it alike).
    fn apply(&mut self, index: Index, data: &[u8]) -> Bytes {
        self.applied = index;
        match decode_put(data) {
            Some((key, value)) => {
                self.map.insert(key, Versioned { value, revision: index });
                Bytes::copy_from_slice(&index.to_le_bytes())
            }
            None => {
                tracing::warn!(index, "undecodable entry skipped");
                Bytes::new()
            }
        }
    }

    fn snapshot(&self) -> Bytes {
        let mut b = BytesMut::new();
        b.extend_from_slice(&self.applied.to_le_bytes());
        b.extend_from_slice(&(self.map.len() as u64).to_le_bytes());
        for (k, v) in &self.map {
            b.extend_from_slice(&(k.len() as u32).to_le_bytes());
            b.extend_from_slice(k.as_bytes());
            b.extend_from_slice(&v.revision.to_le_bytes());
            b.extend_from_slice(&(v.value.len() as u32).to_le_bytes());
            b.extend_from_slice(&v.value);
        }
        b.freeze()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let mut r = data;
        let mut take = |n: usize| -> Result<&[u8], String> {
            if r.len() < n {
                return Err("snapshot cut short".into());
            }
            let (a, b) = r.split_at(n);
            r = b;
            Ok(a)
        };
        let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
        let applied = u64_of(take(8)?);
        let n = u64_of(take(8)?);
        let mut map = BTreeMap::new();
        for _ in 0..n {
            let klen = u32_of(take(4)?);
            let key = std::str::from_utf8(take(klen)?).map_err(|_| "key is not UTF-8")?.to_string();
            let revision = u64_of(take(8)?);
            let vlen = u32_of(take(4)?);
            let value = Bytes::copy_from_slice(take(vlen)?);
            map.insert(key, Versioned { value, revision });
        }
        self.map = map;
        self.applied = applied;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_snapshot_round_trip() {
        let mut kv = KvStore::default();
        kv.apply(5, &encode_put("a", b"1").unwrap());
        kv.apply(6, &encode_put("b/x", b"2").unwrap());
        kv.apply(7, &encode_put("a", b"3").unwrap());
        assert_eq!(kv.get("a"), Some(&Versioned { value: Bytes::from_static(b"3"), revision: 7 }));
        let snap = kv.snapshot();
        let mut other = KvStore::default();
        other.restore(&snap).unwrap();
        assert_eq!(other.applied(), 7);
        assert_eq!(other.list("").count(), 2);
        assert_eq!(other.list("b/").map(|(k, _)| k.as_str()).collect::<Vec<_>>(), vec!["b/x"]);
        assert!(other.restore(&snap[..snap.len() - 1]).is_err(), "a cut snapshot is refused");
    }

    #[test]
    fn bad_input_is_refused_before_proposing() {
        assert_eq!(encode_put("", b"x"), Err(KvError::BadKey));
        assert_eq!(encode_put(&"k".repeat(MAX_KEY + 1), b"x"), Err(KvError::BadKey));
        assert_eq!(encode_put("k", &vec![0; MAX_VALUE + 1]), Err(KvError::TooLarge(MAX_VALUE + 1)));
        let mut kv = KvStore::default();
        assert!(kv.apply(1, b"\x09garbage").is_empty());
        assert!(kv.is_empty());
    }
}
