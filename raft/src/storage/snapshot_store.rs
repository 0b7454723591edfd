//! Snapshot files: `DIR/snap-<index>-<term>.snap`, each
//! `magic | index | term | voters | learners | data length | data | crc32c(everything before)`.
//!
//! A snapshot is written to a `.tmp` file, fsynced, renamed to its final name and the directory
//! fsynced: a crash at any point leaves either the old set of snapshots or the new one, never a
//! half-written file under a final name. Leftover `.tmp` files are deleted on open. A file that
//! fails its checksum is skipped with a warning and the next older one is used (the WAL then
//! tells whether the log still reaches back far enough).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::storage::diskio;
use crate::storage::wal::{sync_dir, WalError};
use crate::types::{ConfState, Index, ReplicaId, Snapshot, SnapshotMeta, Term};

/// The current format: the members' addresses follow the member lists.
const MAGIC: &[u8; 8] = b"CHBSNAP2";
/// The format before addresses were kept; still read.
const MAGIC_V1: &[u8; 8] = b"CHBSNAP1";
/// Snapshots kept after a new one is saved.
const KEEP: usize = 2;

/// The snapshot files of one replica. Cloning gives another handle on the same directory (the
/// replica saves its own snapshots on a background thread).
#[derive(Clone)]
pub struct SnapshotStore {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

fn file_name(index: Index, term: Term) -> String {
    format!("snap-{index:020}-{term:020}.snap")
}

fn parse_name(name: &str) -> Option<(Index, Term)> {
    let rest = name.strip_prefix("snap-")?.strip_suffix(".snap")?;
    let (index, term) = rest.split_once('-')?;
    Some((index.parse().ok()?, term.parse().ok()?))
}

impl SnapshotStore {
    /// Opens `dir`, creating it if needed and deleting temp files of interrupted saves.
    pub fn open(dir: &Path) -> Result<SnapshotStore, WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let path = item.map_err(io_err(dir))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                tracing::warn!("removing {} left by an interrupted snapshot save", path.display());
                fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        // A save interrupted between its rename and the directory's sync leaves a snapshot that
        // is visible but not durable; the replica is about to build on it (drop the log it
        // covers, append after it), so it is made durable first.
        sync_dir(dir)?;
        Ok(SnapshotStore { dir: dir.to_path_buf() })
    }

    /// Final snapshot files, newest first.
    fn list(&self) -> Result<Vec<(Index, Term, PathBuf)>, WalError> {
        let mut found = Vec::new();
        for item in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let item = item.map_err(io_err(&self.dir))?;
            if let Some((index, term)) = item.file_name().to_str().and_then(parse_name) {
                found.push((index, term, item.path()));
            }
        }
        found.sort_unstable_by(|a, b| b.cmp(a));
        Ok(found)
    }

    /// The newest snapshot whose file checks out, or `None`.
    pub fn load_latest(&self) -> Result<Option<Snapshot>, WalError> {
        for (index, term, path) in self.list()? {
            match read_file(&path) {
                Ok(snap) if snap.meta.index == index && snap.meta.term == term => return Ok(Some(snap)),
                Ok(_) => tracing::warn!("{}: contents do not match the file name; skipped", path.display()),
                Err(why) => tracing::warn!("{}: {why}; skipped", path.display()),
            }
        }
        Ok(None)
    }

    /// Saves `snap` atomically and durably, then prunes all but the newest few.
    pub fn save(&self, snap: &Snapshot) -> Result<(), WalError> {
        let name = file_name(snap.meta.index, snap.meta.term);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let path = self.dir.join(&name);
        {
            let f = diskio::create(&tmp, false).map_err(io_err(&tmp))?;
            let head = encode_head(&snap.meta, snap.data.len());
            let crc = crc32c::crc32c_append(crc32c::crc32c(&head), &snap.data);
            diskio::write_all(&f, &tmp, &head).map_err(io_err(&tmp))?;
            diskio::write_all(&f, &tmp, &snap.data).map_err(io_err(&tmp))?;
            diskio::write_all(&f, &tmp, &crc.to_le_bytes()).map_err(io_err(&tmp))?;
            diskio::sync_all(&f, &tmp).map_err(io_err(&tmp))?;
        }
        diskio::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        for (_, _, old) in self.list()?.into_iter().skip(KEEP) {
            match fs::remove_file(&old) {
                // Another handle pruned it first.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                r => r.map_err(io_err(&old))?,
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn encode_head(meta: &SnapshotMeta, data_len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&meta.index.to_le_bytes());
    h.extend_from_slice(&meta.term.to_le_bytes());
    for ids in [&meta.conf_state.voters, &meta.conf_state.learners] {
        h.extend_from_slice(&(ids.len() as u32).to_le_bytes());
        for id in ids {
            h.extend_from_slice(&id.to_le_bytes());
        }
    }
    h.extend_from_slice(&(meta.conf_state.addrs.len() as u32).to_le_bytes());
    for (id, addr) in &meta.conf_state.addrs {
        h.extend_from_slice(&id.to_le_bytes());
        h.extend_from_slice(&(addr.len() as u32).to_le_bytes());
        h.extend_from_slice(addr.as_bytes());
    }
    h.extend_from_slice(&(data_len as u64).to_le_bytes());
    h
}

/// Reads and verifies one snapshot file.
fn read_file(path: &Path) -> Result<Snapshot, String> {
    let mut raw = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut raw)).map_err(|e| e.to_string())?;
    let raw = Bytes::from(raw);
    let mut r = Reader { buf: &raw, at: 0 };
    let with_addrs = match r.take(8)? {
        m if m == MAGIC => true,
        m if m == MAGIC_V1 => false,
        _ => return Err("not a snapshot file (bad magic)".into()),
    };
    let index = r.u64()?;
    let term = r.u64()?;
    let mut lists: [Vec<ReplicaId>; 2] = Default::default();
    for list in &mut lists {
        let n = r.u32()? as usize;
        if n > 1024 {
            return Err("implausible member count".into());
        }
        for _ in 0..n {
            list.push(r.u64()?);
        }
    }
    let mut addrs = std::collections::BTreeMap::new();
    if with_addrs {
        let n = r.u32()? as usize;
        if n > 1024 {
            return Err("implausible address count".into());
        }
        for _ in 0..n {
            let id = r.u64()?;
            let len = r.u32()? as usize;
            let addr = std::str::from_utf8(r.take(len)?).map_err(|_| "an address is not UTF-8")?;
            addrs.insert(id, addr.to_string());
        }
    }
    let data_len = r.u64()? as usize;
    let data_at = r.at;
    if raw.len() != data_at + data_len + 4 {
        return Err(format!("length {} does not match the header", raw.len()));
    }
    let crc = u32::from_le_bytes(raw[raw.len() - 4..].try_into().expect("4 bytes"));
    if crc32c::crc32c(&raw[..raw.len() - 4]) != crc {
        return Err("checksum mismatch".into());
    }
    let [voters, learners] = lists;
    Ok(Snapshot {
        meta: SnapshotMeta { index, term, conf_state: ConfState { voters, learners, addrs } },
        data: raw.slice(data_at..data_at + data_len),
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or("file cut short")?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(index: Index, term: Term, data: &'static [u8]) -> Snapshot {
        let mut conf_state = ConfState::new(vec![1, 2, 3], vec![4]);
        conf_state.addrs = [(1, "h1:7001".to_string()), (4, "[::1]:7004".to_string())].into();
        Snapshot { meta: SnapshotMeta { index, term, conf_state }, data: Bytes::from_static(data) }
    }

    /// Files written before addresses were kept still load, with no addresses.
    #[test]
    fn a_file_of_the_first_format_loads_without_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = MAGIC_V1.to_vec();
        for n in [7u64, 2] {
            raw.extend_from_slice(&n.to_le_bytes());
        }
        for ids in [&[1u64, 2, 3][..], &[4]] {
            raw.extend_from_slice(&(ids.len() as u32).to_le_bytes());
            ids.iter().for_each(|id| raw.extend_from_slice(&id.to_le_bytes()));
        }
        raw.extend_from_slice(&3u64.to_le_bytes());
        raw.extend_from_slice(b"old");
        let crc = crc32c::crc32c(&raw);
        raw.extend_from_slice(&crc.to_le_bytes());
        fs::write(dir.path().join(file_name(7, 2)), raw).unwrap();
        let loaded = SnapshotStore::open(dir.path()).unwrap().load_latest().unwrap().unwrap();
        assert_eq!(loaded.meta.conf_state, ConfState::new(vec![1, 2, 3], vec![4]));
        assert_eq!(&loaded.data[..], b"old");
    }

    #[test]
    fn save_then_load_latest_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.load_latest().unwrap(), None);
        for (i, data) in [(10, &b"ten"[..]), (20, b"twenty"), (30, b"thirty")] {
            store.save(&Snapshot { data: Bytes::from_static(data), ..snap(i, 2, b"") }).unwrap();
        }
        let latest = store.load_latest().unwrap().unwrap();
        assert_eq!(latest, snap(30, 2, b"thirty"));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), KEEP, "older snapshots pruned");
    }

    /// A crash after the temp file was written but before the rename: the previous snapshot is
    /// what a restart sees, and the temp file is cleaned up.
    #[test]
    fn crash_before_rename_keeps_previous_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        store.save(&snap(10, 1, b"old")).unwrap();
        // What `save` leaves behind when it dies between write and rename.
        let tmp = dir.path().join(format!("{}.tmp", file_name(20, 1)));
        let full = dir.path().join(file_name(20, 1));
        store.save(&snap(20, 1, b"new")).unwrap();
        fs::rename(&full, &tmp).unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        assert_eq!(store.load_latest().unwrap(), Some(snap(10, 1, b"old")));
        assert!(!tmp.exists());
    }

    /// A half-written or bit-flipped file under a final name (e.g. a disk fault) is skipped.
    #[test]
    fn damaged_newest_snapshot_falls_back_to_older() {
        let dir = tempfile::tempdir().unwrap();
        let store = SnapshotStore::open(dir.path()).unwrap();
        store.save(&snap(10, 1, b"old")).unwrap();
        store.save(&snap(20, 1, b"newer-data")).unwrap();
        let newest = dir.path().join(file_name(20, 1));
        let good = fs::read(&newest).unwrap();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x04;
            fs::write(&newest, &bad).unwrap();
            assert_eq!(store.load_latest().unwrap(), Some(snap(10, 1, b"old")), "flip at {at}");
            fs::write(&newest, &good[..at]).unwrap();
            assert_eq!(store.load_latest().unwrap(), Some(snap(10, 1, b"old")), "cut at {at}");
        }
    }
}
