//! Backup files, as `chubby snapshot save` writes them and `cell-server restore` reads them:
//!
//! `CHBBACK1 | header length (u32, little-endian) | SnapshotHeader (protobuf) | data | SHA-256`
//!
//! The data is the cell state's own snapshot encoding; the header says what it holds and
//! carries the data's SHA-256 as the leader computed it, so a copy damaged on the way is
//! refused as surely as one damaged on disk. The last 32 bytes are the SHA-256 of everything
//! before them: the file's checksum, which `snapshot status` prints.

use prost::Message;
use sha2::{Digest, Sha256};

use crate::cell::SnapshotHeader;

pub const MAGIC: &[u8; 8] = b"CHBBACK1";
/// A header is a few hundred bytes; this bounds what a damaged length makes a reader allocate.
const MAX_HEADER: usize = 1 << 20;
const SUM: usize = 32;

/// A backup file's contents, checked.
#[derive(Clone, Debug)]
pub struct Backup {
    pub header: SnapshotHeader,
    pub data: Vec<u8>,
    /// The file's checksum (SHA-256 of all before it).
    pub sha256: [u8; SUM],
}

pub fn sha256(data: &[u8]) -> [u8; SUM] {
    Sha256::digest(data).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks that `data` is what `header` describes: its length and its SHA-256.
pub fn check_data(header: &SnapshotHeader, data: &[u8]) -> Result<(), String> {
    if data.len() as u64 != header.data_length {
        return Err(format!("the data is {} bytes, the header says {}", data.len(), header.data_length));
    }
    if sha256(data)[..] != header.data_sha256[..] {
        return Err("the data's SHA-256 differs from the header's: it was damaged".into());
    }
    Ok(())
}

/// The file's bytes for `header` and its `data` (which must match it).
pub fn encode(header: &SnapshotHeader, data: &[u8]) -> Vec<u8> {
    let head = header.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + head.len() + data.len() + SUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(data);
    let sum = sha256(&out);
    out.extend_from_slice(&sum);
    out
}

/// Reads a backup file's bytes, checking its format, its checksum and its data's.
pub fn decode(file: &[u8]) -> Result<Backup, String> {
    let Some(rest) = file.strip_prefix(MAGIC) else {
        return Err(match file.get(..7) {
            Some(b"CHBBACK") => "a backup of a newer format: use a newer chubby or cell-server".into(),
            _ => "not a cell backup (it does not start with CHBBACK1)".into(),
        });
    };
    if rest.len() < 4 + SUM {
        return Err("cut short: no room for a header and a checksum".into());
    }
    let (body, sum) = file.split_at(file.len() - SUM);
    if sha256(body)[..] != sum[..] {
        return Err("the file's SHA-256 does not match its contents: it is damaged or cut short".into());
    }
    let head_len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
    let after_len = &body[MAGIC.len() + 4..];
    if head_len > MAX_HEADER || head_len > after_len.len() {
        return Err(format!("a header of {head_len} bytes does not fit the file"));
    }
    let (head, data) = after_len.split_at(head_len);
    let header = SnapshotHeader::decode(head).map_err(|e| format!("the header does not decode: {e}"))?;
    check_data(&header, data)?;
    Ok(Backup { header, data: data.to_vec(), sha256: sum.try_into().expect("32 bytes") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (SnapshotHeader, Vec<u8>) {
        let data = b"the state".to_vec();
        let header = SnapshotHeader {
            cell_id: "00000000000000ab".into(),
            index: 42,
            nodes: 3,
            data_length: data.len() as u64,
            data_sha256: sha256(&data).to_vec().into(),
            ..Default::default()
        };
        (header, data)
    }

    #[test]
    fn a_file_round_trips_and_any_damage_is_refused() {
        let (header, data) = sample();
        let file = encode(&header, &data);
        let back = decode(&file).unwrap();
        assert_eq!(back.header, header);
        assert_eq!(back.data, data);
        assert_eq!(back.sha256, sha256(&file[..file.len() - SUM]));
        // Every single-byte change and every cut is caught.
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "byte {i} changed");
            assert!(decode(&file[..i]).is_err(), "cut at {i}");
        }
        assert!(decode(b"CHBBACK2 and more than enough bytes to hold a checksum").unwrap_err().contains("newer"));
        assert!(decode(b"hello").unwrap_err().contains("not a cell backup"));
    }

    /// Lengths that do not fit the file are refused, not trusted, also under a valid checksum
    /// (anyone can compute one).
    #[test]
    fn a_header_length_past_the_file_is_refused_under_a_valid_checksum() {
        for len in [u32::MAX, (MAX_HEADER + 1) as u32, 100] {
            let mut body = MAGIC.to_vec();
            body.extend_from_slice(&len.to_le_bytes());
            body.extend_from_slice(b"short");
            let sum = sha256(&body);
            body.extend_from_slice(&sum);
            assert!(decode(&body).unwrap_err().contains("does not fit"), "{len}");
        }
    }

    /// A header that does not describe its data (a leader's bug, or data damaged before the
    /// file's checksum was taken) is refused, though the file's checksum matches.
    #[test]
    fn data_that_is_not_what_the_header_says_is_refused() {
        let (header, mut data) = sample();
        data[0] ^= 1;
        assert!(decode(&encode(&header, &data)).unwrap_err().contains("SHA-256"));
        data.push(0);
        assert!(decode(&encode(&header, &data)).unwrap_err().contains("bytes"));
    }
}
