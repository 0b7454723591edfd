//! Replay of the segments on opening: records in order, truncation where a later write
//! replaced a suffix, and the line between a torn tail (writes no sync covered, cut off with a
//! warning) and corruption of synced data (refused). See the module documentation of `wal`.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;

use super::record::{self, Bad, Record};
use super::{io_err, Recovered, WalError};
use crate::storage::diskio;
use crate::types::{Index, Term};

/// Replays segments in order into a log that starts after `base`.
pub(super) struct Replay {
    pub(super) base: Index,
    /// Term of the last entry written at exactly `base`, if the log still has one.
    pub(super) base_entry_term: Option<Term>,
    pub(super) out: Recovered,
}

/// What replay found in one segment.
#[derive(Default)]
pub(super) struct Replayed {
    /// Its largest entry index (0 if none).
    pub(super) max_index: Index,
    /// The length of its valid prefix.
    pub(super) valid_len: u64,
    /// Whether a torn record follows that prefix (rather than the end or preallocated zeros).
    pub(super) torn: bool,
    /// Whether it holds a hard-state record.
    pub(super) has_hard_state: bool,
}

impl Replay {
    /// Replays one segment.
    pub(super) fn segment(&mut self, path: &Path, last: bool) -> Result<Replayed, WalError> {
        let mut raw = Vec::new();
        let mut file = File::options().read(true).write(true).open(path).map_err(io_err(path))?;
        // Read what the disk holds, not what the page cache may hold without it (see
        // `diskio::sync_and_drop_cache`): after `kill -9` the newest segment's unsynced
        // records are made durable first, after a failed sync its lost pages are read as lost.
        diskio::sync_and_drop_cache(&file, path).map_err(io_err(path))?;
        file.read_to_end(&mut raw).map_err(io_err(path))?;
        let data = Bytes::from(raw);
        let mut offset = 0usize;
        let mut max_index = 0;
        let mut torn = false;
        let mut has_hard_state = false;
        while offset < data.len() {
            match record::decode(&data.slice(offset..)) {
                Ok((rec, n)) => {
                    match &rec {
                        Record::Entry(e) => max_index = max_index.max(e.index),
                        Record::HardState(_) => has_hard_state = true,
                        Record::Reset { .. } => {}
                    }
                    self.apply(rec, path, offset)?;
                    offset += n;
                }
                Err(bad) => {
                    if data[offset..].iter().all(|&b| b == 0) {
                        // The preallocated, never written rest of a segment, older ones too
                        // (they keep it when the log rolls over). Synced records lost to zeros
                        // in an older segment would show as a gap in the next one.
                        break;
                    }
                    let why = match bad {
                        Bad::Short => "record cut short".to_string(),
                        Bad::Corrupt(why) => why.to_string(),
                    };
                    if !last {
                        return Err(corrupt(path, offset, format!("{why} in a segment that is not the newest")));
                    }
                    // Only up to the last non-zero byte: a preallocated zero tail holds no record.
                    let end = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
                    let next = next_valid_record(&data.slice(..end), offset + 1);
                    // Valid records after the bad one mean corruption of synced data, unless what
                    // lies between them shows writes that never reached the disk: a whole page
                    // of zeros (one of the preallocated file's), or zeros from the bad record's
                    // own start to the end of its sector (the sector where the last sync ended
                    // kept its synced version, in which zeros followed the synced records, and
                    // the later pages of the same unsynced write reached the disk). Write-back
                    // after a power loss can lose pages out of order, but only of writes no sync
                    // covered; and a sync covers the whole file, so nothing from there on was
                    // ever durable or acknowledged.
                    let lost_here = |n: usize| lost_first_sector(&data[offset..n], offset);
                    if let Some(next) = next.filter(|&n| !lost_here(n) && !has_zero_page(&data[offset..n], offset)) {
                        return Err(corrupt(path, offset, format!("{why}, followed by a valid record at byte {next}")));
                    }
                    let lost =
                        if next.is_some() { ", with a page of zeros: writes lost in a power failure" } else { "" };
                    let msg = format!(
                        "WAL {}: torn tail at byte {offset} ({why}{lost}); dropping {} unsynced bytes",
                        path.display(),
                        data.len() - offset
                    );
                    tracing::warn!("{msg}");
                    self.out.warnings.push(msg);
                    torn = true;
                    break;
                }
            }
        }
        Ok(Replayed { max_index, valid_len: offset as u64, torn, has_hard_state })
    }

    fn apply(&mut self, rec: Record, path: &Path, offset: usize) -> Result<(), WalError> {
        let entries = &mut self.out.entries;
        match rec {
            Record::HardState(hs) => self.out.hard_state = hs,
            Record::Reset { index, term } => {
                if index > self.base {
                    return Err(corrupt(
                        path,
                        offset,
                        format!(
                            "the log was reset to a snapshot at {index}, but the newest valid snapshot is at {}",
                            self.base
                        ),
                    ));
                }
                entries.clear();
                if index == self.base {
                    self.base_entry_term = Some(term);
                }
            }
            Record::Entry(e) => {
                if e.index <= self.base {
                    // A write this far back replaced everything after it; the snapshot holds
                    // what was there.
                    entries.clear();
                    self.base_entry_term = (e.index == self.base).then_some(e.term);
                    return Ok(());
                }
                let last = self.base + entries.len() as u64;
                if e.index > last + 1 {
                    return Err(corrupt(path, offset, format!("entry {} follows {last}: a gap in the log", e.index)));
                }
                entries.truncate((e.index - self.base - 1) as usize);
                entries.push(e);
            }
        }
        Ok(())
    }
}

fn corrupt(path: &Path, offset: usize, why: String) -> WalError {
    WalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, why }
}

/// The page size of write-back: a power loss loses unsynced writes in whole pages.
const PAGE: usize = diskio::PAGE;

/// The unit a device writes atomically: a power loss keeps or loses each whole.
const SECTOR: usize = 512;

/// Whether the bad record at byte `start`, with the next valid record right after `region`
/// (which runs from `start` to it), shows the loss of the sector it begins in: that sector kept
/// its synced version, zeros from the end of the synced records, while the later sectors of the
/// same unsynced write reached the disk. So: zeros from `start` to at least the sector's end, and
/// either they cover the record's whole length field (no written record has a length of 0), or,
/// where they stop inside it (the next sector kept), the record is whole but for those zeros:
/// its true length reaches exactly the next valid record, and its checksum holds.
fn lost_first_sector(region: &[u8], start: usize) -> bool {
    let to_sector_end = (start / SECTOR + 1) * SECTOR - start;
    let zeros = region.iter().take_while(|&&b| b == 0).count();
    if zeros < to_sector_end || region.len() < record::HEADER_LEN {
        return false;
    }
    // The zeros run on to or past the sector's end (a whole lost page runs past it). If they
    // cover the length field, that alone tells: no written record has a length of 0.
    if zeros >= 4 {
        return true;
    }
    let Some(len) = region.len().checked_sub(record::HEADER_LEN).and_then(|l| u32::try_from(l).ok()) else {
        return false;
    };
    let len_bytes = len.to_le_bytes();
    if region[to_sector_end..4] != len_bytes[to_sector_end..] {
        return false;
    }
    let crc = u32::from_le_bytes(region[4..8].try_into().expect("4 bytes"));
    crc32c::crc32c_append(crc32c::crc32c(&len_bytes), &region[record::HEADER_LEN..]) == crc
}

/// Whether `region`, which starts at byte `start` of its file, holds a whole page-aligned page
/// of zeros.
fn has_zero_page(region: &[u8], start: usize) -> bool {
    let first = start.div_ceil(PAGE) * PAGE - start;
    region.get(first..).is_some_and(|r| r.chunks_exact(PAGE).any(|page| page.iter().all(|&b| b == 0)))
}

/// The first offset at or after `from` where a valid record starts, if any. Used to tell a torn
/// tail (nothing valid after the bad record) from corruption in the middle of synced data.
fn next_valid_record(data: &Bytes, from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(record::HEADER_LEN)).find(|&p| record::decode(&data.slice(p..)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(len: usize) -> Vec<u8> {
        let mut buf = bytes::BytesMut::new();
        let e = crate::types::Entry {
            index: 7,
            term: 3,
            kind: crate::types::EntryKind::Normal,
            data: bytes::Bytes::from(vec![5u8; len]),
        };
        record::encode(&mut buf, &Record::Entry(e));
        buf.to_vec()
    }

    /// Zeros from a bad record's start to its sector's end mark a lost sector when they cover
    /// its length field, or when the rest of the record checks out with its true length.
    #[test]
    fn a_lost_first_sector_is_told_from_corruption() {
        // The whole length field zero, up to the sector's end.
        let mut r = record(600);
        r[..12].fill(0);
        assert!(lost_first_sector(&r, 500), "12 zero bytes to the end of the sector");
        assert!(!lost_first_sector(&r, 490), "zeros short of the sector's end");
        // A whole page lost from a record starting a byte before a sector's end: the zeros run
        // past the sector's end, over the length field.
        let mut r = record(5000);
        r[..3000].fill(0);
        assert!(lost_first_sector(&r, 511), "a lost page from the record's start on");
        // The header straddles the sector's end: 1..=3 bytes lost, the rest intact.
        let synced = record(1024 - 18); // a length of 1024: bytes 00 04 00 00
        for lost in 1..4 {
            let mut r = synced.clone();
            r[..lost].fill(0);
            assert!(lost_first_sector(&r, 512 - lost), "{lost} bytes lost, the record intact");
            // A synced record with a bit flip later, starting as near the sector's end: its
            // own zero low byte is no lost sector.
            let mut flipped = synced.clone();
            flipped[700] ^= 4;
            assert!(!lost_first_sector(&flipped, 512 - lost), "a bit flip, {lost} bytes before a sector's end");
        }
        // Only the length's low byte is zero, lost or not: the rest must check out.
        let mut flipped = synced.clone();
        flipped[700] ^= 4;
        assert!(!lost_first_sector(&flipped, 511));
        assert!(!lost_first_sector(&synced[..synced.len() - 1], 511), "not reaching the next record");
    }
}
