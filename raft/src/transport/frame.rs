//! The peer link's wire format.
//!
//! A connection starts with a [`Hello`]: the magic `CHUBRAFT`, a version byte, the sender's
//! and receiver's ids (so a replica that dials the wrong address finds out at once) and the
//! sender's cell id (so a replica of another cell never mixes in). Then come
//! frames: a 4-byte little-endian length and a protobuf `RaftMessage` of that length. TCP already
//! checksums every segment; the length is checked against [`MAX_FRAME`] before anything is
//! buffered, so a peer cannot make a replica allocate without bound.

use bytes::{Buf, BufMut, BytesMut};
use prost::Message as _;
use proto::raft as pb;

use super::LinkError;
use crate::types::ReplicaId;

/// The first bytes of every peer connection; the listener uses them to tell peer links from
/// gRPC connections (whose HTTP/2 preface starts with `PRI`).
pub const MAGIC: &[u8; 8] = b"CHUBRAFT";
const VERSION: u8 = 2;
pub const HELLO_LEN: usize = MAGIC.len() + 1 + 8 + 8 + 8;
/// Largest frame either side accepts (AppendEntries are capped well below).
pub const MAX_FRAME: usize = 64 << 20;

/// Who is on the other end of a peer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub from: ReplicaId,
    pub to: ReplicaId,
    pub cell: u64,
}

impl Hello {
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.put_u64_le(self.from);
        out.put_u64_le(self.to);
        out.put_u64_le(self.cell);
    }

    /// Takes a hello off the front of `buf`: `Ok(None)` if more bytes are needed.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Hello>, LinkError> {
        let have = buf.len().min(MAGIC.len());
        if buf[..have] != MAGIC[..have] {
            return Err(LinkError::BadMagic);
        }
        if buf.len() < HELLO_LEN {
            return Ok(None);
        }
        if buf[MAGIC.len()] != VERSION {
            return Err(LinkError::Version { theirs: buf[MAGIC.len()], ours: VERSION });
        }
        buf.advance(MAGIC.len() + 1);
        Ok(Some(Hello { from: buf.get_u64_le(), to: buf.get_u64_le(), cell: buf.get_u64_le() }))
    }
}

/// Appends one framed message to `out`.
pub fn encode(m: &pb::RaftMessage, out: &mut Vec<u8>) {
    let len = m.encoded_len();
    out.reserve(4 + len);
    out.put_u32_le(len as u32);
    m.encode(out).expect("a Vec grows as needed");
}

/// Takes one framed message off the front of `buf`: `Ok(None)` if it has not all arrived.
/// A frame over [`MAX_FRAME`] or one that does not decode is an error: the connection is
/// dropped, since nothing after it can be trusted to be aligned.
pub fn decode(buf: &mut BytesMut) -> Result<Option<pb::RaftMessage>, LinkError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(LinkError::FrameTooLarge { len, max: MAX_FRAME });
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len).freeze();
    Ok(Some(pb::RaftMessage::decode(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::raft::raft_message::Body;

    fn sample() -> pb::RaftMessage {
        pb::RaftMessage {
            from: 1,
            to: 2,
            term: 7,
            body: Some(Body::AppendEntries(pb::AppendEntries {
                prev_log_index: 3,
                prev_log_term: 2,
                entries: vec![pb::Entry { term: 7, index: 4, kind: 0, data: bytes::Bytes::from_static(b"value") }],
                commit: 3,
            })),
        }
    }

    #[test]
    fn frames_arriving_a_byte_at_a_time_decode_whole() {
        let mut wire = Vec::new();
        Hello { from: 1, to: 2, cell: 7 }.encode(&mut wire);
        encode(&sample(), &mut wire);
        encode(
            &pb::RaftMessage { from: 1, to: 2, term: 8, body: Some(Body::TimeoutNow(pb::TimeoutNow {})) },
            &mut wire,
        );
        let mut buf = BytesMut::new();
        let mut hello = None;
        let mut got = Vec::new();
        for &b in &wire {
            buf.put_u8(b);
            if hello.is_none() {
                hello = Hello::decode(&mut buf).unwrap();
                continue;
            }
            while let Some(m) = decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(hello, Some(Hello { from: 1, to: 2, cell: 7 }));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], sample());
        assert_eq!(got[1].term, 8);
        assert!(buf.is_empty());
    }

    #[test]
    fn wrong_magic_or_version_is_refused_early() {
        let mut http2 = BytesMut::from(&b"PRI * HTTP/2.0\r\n"[..]);
        assert!(Hello::decode(&mut http2).is_err());
        let mut one_wrong_byte = BytesMut::from(&b"CHX"[..]);
        assert!(Hello::decode(&mut one_wrong_byte).is_err());
        let mut wire = Vec::new();
        Hello { from: 3, to: 1, cell: 7 }.encode(&mut wire);
        wire[MAGIC.len()] = 9;
        assert!(matches!(Hello::decode(&mut BytesMut::from(&wire[..])), Err(LinkError::Version { theirs: 9, .. })));
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors_not_panics() {
        let mut huge = BytesMut::new();
        huge.put_u32_le((MAX_FRAME + 1) as u32);
        assert!(decode(&mut huge).is_err());
        let mut wire = Vec::new();
        encode(&sample(), &mut wire);
        // Every single-byte corruption of the body either decodes to something or is an error.
        for i in 4..wire.len() {
            let mut bad = wire.clone();
            bad[i] ^= 0xff;
            let _ = decode(&mut BytesMut::from(&bad[..]));
        }
        let mut garbage = BytesMut::new();
        garbage.put_u32_le(3);
        garbage.put_slice(&[0xff, 0xff, 0xff]);
        assert!(decode(&mut garbage).is_err());
    }
}
