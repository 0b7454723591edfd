//! Framing of one WAL record: `len: u32 LE | crc: u32 LE | payload[len]`, where `crc` is the
//! CRC32C of the four length bytes followed by the payload. Covering the length too means a bit
//! flip in a length field is caught like one in the payload, instead of sending the reader off
//! to a wrong record boundary.
//!
//! Payloads (all integers little-endian):
//! - `1 | term u64 | index u64 | kind u8 | data…` — a log entry;
//! - `2 | term u64 | vote u64 | commit u64` — the hard state (the last one read wins);
//! - `3 | index u64 | term u64` — a snapshot from the leader was installed: the log before this
//!   record is discarded and starts again after `index`.

use bytes::{Bytes, BytesMut};

use crate::types::{Entry, EntryKind, HardState, Index, Term};

pub(crate) const HEADER_LEN: usize = 8;
/// No record is larger: a bigger length field is corruption, not a record.
pub(crate) const MAX_PAYLOAD: usize = 64 << 20;

const TAG_ENTRY: u8 = 1;
const TAG_HARD_STATE: u8 = 2;
const TAG_RESET: u8 = 3;

/// One decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    Entry(Entry),
    HardState(HardState),
    /// A snapshot at (`index`, `term`) replaced the whole log.
    Reset {
        index: Index,
        term: Term,
    },
}

/// Why bytes at some offset are not a record.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bad {
    /// Fewer bytes than the header or the length announces: the end of a torn write.
    Short,
    /// The bytes are all there but do not check out.
    Corrupt(&'static str),
}

fn put_u64(buf: &mut BytesMut, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

/// Appends the framed record to `buf`.
pub(crate) fn encode(buf: &mut BytesMut, record: &Record) {
    match record {
        Record::Entry(e) => encode_entry(buf, e),
        Record::HardState(hs) => frame(buf, |buf| {
            buf.extend_from_slice(&[TAG_HARD_STATE]);
            put_u64(buf, hs.term);
            put_u64(buf, hs.vote);
            put_u64(buf, hs.commit);
        }),
        Record::Reset { index, term } => frame(buf, |buf| {
            buf.extend_from_slice(&[TAG_RESET]);
            put_u64(buf, *index);
            put_u64(buf, *term);
        }),
    }
}

/// Appends an entry record without wrapping the entry in a [`Record`] (the hot path).
pub(crate) fn encode_entry(buf: &mut BytesMut, e: &Entry) {
    frame(buf, |buf| {
        buf.extend_from_slice(&[TAG_ENTRY]);
        put_u64(buf, e.term);
        put_u64(buf, e.index);
        buf.extend_from_slice(&[match e.kind {
            EntryKind::Normal => 0,
            EntryKind::ConfChange => 1,
        }]);
        buf.extend_from_slice(&e.data);
    });
}

/// Writes the header around the payload `body` appends.
fn frame(buf: &mut BytesMut, body: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    body(buf);
    let len = (buf.len() - start - HEADER_LEN) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), &buf[start + HEADER_LEN..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn u64_at(p: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(p[at..at + 8].try_into().expect("8 bytes"))
}

/// Decodes the record at the start of `buf` (a slice of a whole segment kept as [`Bytes`], so
/// entry data is shared, not copied). Returns the record and its framed length.
pub(crate) fn decode(buf: &Bytes) -> Result<(Record, usize), Bad> {
    if buf.len() < HEADER_LEN {
        return Err(Bad::Short);
    }
    let len_bytes: [u8; 4] = buf[0..4].try_into().expect("4 bytes");
    let len = u32::from_le_bytes(len_bytes) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_PAYLOAD {
        return Err(Bad::Corrupt("impossible record length"));
    }
    if buf.len() < HEADER_LEN + len {
        return Err(Bad::Short);
    }
    let payload = buf.slice(HEADER_LEN..HEADER_LEN + len);
    if crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &payload) != crc {
        return Err(Bad::Corrupt("checksum mismatch"));
    }
    let record = match payload[0] {
        TAG_ENTRY if len >= 18 => {
            let kind = match payload[17] {
                0 => EntryKind::Normal,
                1 => EntryKind::ConfChange,
                _ => return Err(Bad::Corrupt("unknown entry kind")),
            };
            Record::Entry(Entry {
                term: u64_at(&payload, 1),
                index: u64_at(&payload, 9),
                kind,
                data: payload.slice(18..),
            })
        }
        TAG_HARD_STATE if len == 25 => Record::HardState(HardState {
            term: u64_at(&payload, 1),
            vote: u64_at(&payload, 9),
            commit: u64_at(&payload, 17),
        }),
        TAG_RESET if len == 17 => Record::Reset { index: u64_at(&payload, 1), term: u64_at(&payload, 9) },
        _ => return Err(Bad::Corrupt("unknown record type or size")),
    };
    Ok((record, HEADER_LEN + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let records = [
            Record::Entry(Entry { term: 3, index: 9, kind: EntryKind::Normal, data: Bytes::from_static(b"hello") }),
            Record::Entry(Entry { term: 1, index: 1, kind: EntryKind::ConfChange, data: Bytes::new() }),
            Record::HardState(HardState { term: 4, vote: 2, commit: 8 }),
            Record::Reset { index: 100, term: 7 },
        ];
        let mut buf = BytesMut::new();
        for r in &records {
            encode(&mut buf, r);
        }
        let mut rest = buf.freeze();
        for r in &records {
            let (got, n) = decode(&rest).unwrap();
            assert_eq!(&got, r);
            rest = rest.slice(n..);
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn any_single_bit_flip_is_detected() {
        let mut buf = BytesMut::new();
        encode(
            &mut buf,
            &Record::Entry(Entry { term: 2, index: 5, kind: EntryKind::Normal, data: Bytes::from_static(b"value") }),
        );
        let good = buf.freeze();
        for byte in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.to_vec();
                bad[byte] ^= 1 << bit;
                let bad = Bytes::from(bad);
                assert!(decode(&bad).is_err(), "flip of bit {bit} in byte {byte} went unnoticed");
            }
        }
    }
}
