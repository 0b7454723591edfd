//! A replica's data directory: which cell and which replica its log belongs to (`IDENTITY`),
//! and one process at a time (`LOCK`).
//!
//! Raft's safety rests on a replica never forgetting what it acknowledged. A directory started
//! under another `--id`, or in another cell, would answer for a log it does not hold, and two
//! processes on one directory would each write a log the other does not see: both are refused
//! before anything is read or written.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use raft::ReplicaId;
use serde::{Deserialize, Serialize};

const IDENTITY: &str = "IDENTITY";
const LOCK: &str = "LOCK";
/// Present while `cell-server restore` writes the directory: a replica refuses to start on
/// it, and the restore, run again, starts over.
const RESTORING: &str = "RESTORING";

/// What a data directory records about itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cell_name: String,
    /// Hex, as TOML integers are signed.
    cell_id: String,
    pub replica: ReplicaId,
    /// Whether this replica joined a running cell (rather than being one of its first
    /// members): it then never bootstraps a group of its own.
    #[serde(default)]
    pub joined: bool,
    /// For a replica that joined, the members as the cell listed them then (`ID=ADDR,…`):
    /// whom to accept the log from if it restarts before it has any.
    #[serde(default)]
    pub members: String,
}

impl Identity {
    /// One of a new cell's first members.
    pub fn first_member(cell_name: &str, cell_id: u64, replica: ReplicaId) -> Identity {
        Identity {
            cell_name: cell_name.to_string(),
            cell_id: format!("{cell_id:016x}"),
            replica,
            joined: false,
            members: String::new(),
        }
    }

    /// A replica joining a running cell whose members are `members`.
    pub fn joined(
        cell_name: &str,
        cell_id: u64,
        replica: ReplicaId,
        members: &BTreeMap<ReplicaId, String>,
    ) -> Identity {
        let members = members.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(",");
        Identity { joined: true, members, ..Identity::first_member(cell_name, cell_id, replica) }
    }

    pub fn cell_id(&self) -> u64 {
        u64::from_str_radix(&self.cell_id, 16).unwrap_or(0)
    }
}

/// The id of a new cell named `name` whose first members are `peers`: the same on every
/// replica started with the same flags, and different for a cell of other members or name.
pub fn new_cell_id(name: &str, peers: &BTreeMap<ReplicaId, String>) -> u64 {
    let mut text = format!("new cell\n{name}\n");
    for (id, addr) in peers {
        text.push_str(&format!("{id}={addr}\n"));
    }
    nonzero(xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// The id of a cell restored from the backup whose file checksum is `sha256`, with first
/// members `peers`: the same on every replica restored alike, and another than that of the
/// cell the backup came from, of a cell made from flags, or of one restored from another
/// backup or onto other members.
pub fn restored_cell_id(name: &str, peers: &BTreeMap<ReplicaId, String>, sha256: &[u8]) -> u64 {
    let mut text = format!("restored cell\n{name}\n");
    for b in sha256 {
        text.push_str(&format!("{b:02x}"));
    }
    for (id, addr) in peers {
        text.push_str(&format!("\n{id}={addr}"));
    }
    nonzero(xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

/// The id of a cell whose data directories predate their `IDENTITY`: from the cell's name and
/// its first members' ids only, which its replicas agree on even where their `--peers` name
/// the same replica differently (`localhost` here, an address there).
pub fn adopted_cell_id(name: &str, ids: impl Iterator<Item = ReplicaId>) -> u64 {
    let mut text = format!("adopted cell\n{name}\n");
    for id in ids {
        text.push_str(&format!("{id}\n"));
    }
    nonzero(xxhash_rust::xxh3::xxh3_64(text.as_bytes()))
}

fn nonzero(id: u64) -> u64 {
    id.max(1)
}

/// A data directory held by this process (until dropped).
pub struct DataDir {
    path: PathBuf,
    /// Holds the lock: closing it releases it.
    _lock: File,
    identity: Option<Identity>,
}

impl DataDir {
    /// Creates `path` if missing and takes its lock; reads its identity if it has one, and
    /// refuses one that is another replica's or another cell's.
    pub fn open(path: &Path, replica: ReplicaId, cell_name: &str) -> Result<DataDir, String> {
        let lock = take_lock(path)?;
        if path.join(RESTORING).exists() {
            return Err(format!(
                "{} was left half written by an interrupted `cell-server restore`: run the restore again \
                 (it starts over) or use another --data-dir",
                path.display()
            ));
        }
        let identity = read_identity(path)?;
        if let Some(id) = &identity {
            if id.replica != replica {
                return Err(format!(
                    "{} holds replica {}'s log, not replica {replica}'s: start it with --id {} or use another --data-dir",
                    path.display(),
                    id.replica,
                    id.replica
                ));
            }
            if id.cell_name != cell_name {
                return Err(format!(
                    "{} belongs to cell {:?}, not {cell_name:?}: start it with --cell-name {} or use another --data-dir",
                    path.display(),
                    id.cell_name,
                    id.cell_name
                ));
            }
        }
        Ok(DataDir { path: path.to_path_buf(), _lock: lock, identity })
    }

    /// Takes `path` (created if missing) for `cell-server restore` to write: it must be
    /// empty, or left by an interrupted restore (whose files are deleted). Marked
    /// [`RESTORING`] until [`DataDir::restored`].
    pub fn open_to_restore(path: &Path) -> Result<DataDir, String> {
        let lock = take_lock(path)?;
        let fail = |e: std::io::Error| format!("clearing {}: {e}", path.display());
        let interrupted = path.join(RESTORING).exists();
        for item in std::fs::read_dir(path).map_err(fail)? {
            let item = item.map_err(fail)?;
            let name = item.file_name();
            if name == LOCK || name == RESTORING {
                continue;
            }
            if !interrupted {
                return Err(format!(
                    "{} is not empty (it holds {}): restore into an empty or new directory",
                    path.display(),
                    name.to_string_lossy()
                ));
            }
            let p = item.path();
            let removed = if item.file_type().map_err(fail)?.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            removed.map_err(fail)?;
        }
        write_synced(path, RESTORING, b"cell-server restore is writing this directory\n")?;
        Ok(DataDir { path: path.to_path_buf(), _lock: lock, identity: None })
    }

    /// Ends a restore: the directory is a replica's from now on.
    pub fn restored(&mut self) -> Result<(), String> {
        let marker = self.path.join(RESTORING);
        std::fs::remove_file(&marker).map_err(|e| format!("removing {}: {e}", marker.display()))?;
        File::open(&self.path).and_then(|d| d.sync_all()).map_err(|e| format!("syncing {}: {e}", self.path.display()))
    }
}

/// Creates `path` if missing and takes its lock, or says which process holds it.
fn take_lock(path: &Path) -> Result<File, String> {
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let lock_path = path.join(LOCK);
    let mut lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| format!("opening {}: {e}", lock_path.display()))?;
    // SAFETY: flock on a descriptor this function owns.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        let mut holder = String::new();
        let _ = lock.read_to_string(&mut holder);
        return Err(match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => format!(
                "{} is in use by another cell-server process (pid {}): one replica per data directory",
                path.display(),
                holder.trim()
            ),
            _ => format!("locking {}: {e}", lock_path.display()),
        });
    }
    let _ = lock.set_len(0);
    let _ = write!(lock, "{}", std::process::id());
    Ok(lock)
}

/// Writes `dir/name` durably: a temporary file, synced, renamed, and the directory synced.
fn write_synced(dir: &Path, name: &str, contents: &[u8]) -> Result<(), String> {
    let tmp = dir.join(format!("{name}.tmp"));
    let fail = |e: std::io::Error| format!("writing {}: {e}", tmp.display());
    let mut f = File::create(&tmp).map_err(fail)?;
    f.write_all(contents).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(fail)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
}

impl DataDir {
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_ref()
    }

    /// Whether a log was ever written here (by a replica that predates `IDENTITY` files, if it
    /// has none).
    pub fn has_log(&self) -> bool {
        ["wal", "snap"].iter().any(|d| std::fs::read_dir(self.path.join(d)).is_ok_and(|mut e| e.next().is_some()))
    }

    /// Records the identity, durably, before any log is written.
    pub fn record(&mut self, identity: Identity) -> Result<(), String> {
        let text = format!(
            "# This data directory's cell and replica, written by cell-server. Do not edit: a\n\
             # replica refuses to start on a directory of another replica or cell.\n{}",
            toml::to_string(&identity).map_err(|e| e.to_string())?
        );
        write_synced(&self.path, IDENTITY, text.as_bytes())?;
        self.identity = Some(identity);
        Ok(())
    }
}

fn read_identity(dir: &Path) -> Result<Option<Identity>, String> {
    let path = dir.join(IDENTITY);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let id: Identity = toml::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display()))?;
    if id.cell_id() == 0 {
        return Err(format!("{} is damaged: no cell id", path.display()));
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restored cell's id is its own: not that of a cell made from flags with the same
    /// members, nor of one restored from another backup; and the same on every replica
    /// restored alike.
    #[test]
    fn a_restored_cells_id_depends_on_the_backup_and_the_members() {
        let peers: BTreeMap<ReplicaId, String> = [(1, "a:1".to_string()), (2, "b:1".to_string())].into();
        let id = restored_cell_id("local", &peers, &[1; 32]);
        assert_eq!(id, restored_cell_id("local", &peers, &[1; 32]));
        assert_ne!(id, new_cell_id("local", &peers));
        assert_ne!(id, restored_cell_id("local", &peers, &[2; 32]));
        let mut other = peers.clone();
        other.insert(3, "c:1".into());
        assert_ne!(id, restored_cell_id("local", &other, &[1; 32]));
        assert_ne!(id, restored_cell_id("other", &peers, &[1; 32]));
    }

    #[test]
    fn a_directory_is_one_replicas_of_one_cell_and_one_processs() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = DataDir::open(dir.path(), 2, "local").unwrap();
        assert!(d.identity().is_none() && !d.has_log());
        d.record(Identity::first_member("local", 0xfeed, 2)).unwrap();
        let busy = DataDir::open(dir.path(), 2, "local").err().unwrap();
        assert!(busy.contains("in use by another cell-server process"), "{busy}");
        drop(d);
        let d = DataDir::open(dir.path(), 2, "local").unwrap();
        assert_eq!(d.identity().map(|i| (i.replica, i.cell_id(), i.joined)), Some((2, 0xfeed, false)));
        drop(d);
        let mut d = DataDir::open(dir.path(), 2, "local").unwrap();
        let members = BTreeMap::from([(1, "h1:7001".to_string()), (2, "h2:7001".to_string())]);
        d.record(Identity::joined("local", 0xfeed, 2, &members)).unwrap();
        drop(d);
        let d = DataDir::open(dir.path(), 2, "local").unwrap();
        let id = d.identity().unwrap();
        assert!(id.joined);
        assert_eq!(crate::config::parse_peers(&id.members).unwrap(), members);
        drop(d);
        let other = DataDir::open(dir.path(), 3, "local").err().unwrap();
        assert!(other.contains("holds replica 2's log, not replica 3's"), "{other}");
        let cell = DataDir::open(dir.path(), 2, "prod").err().unwrap();
        assert!(cell.contains("belongs to cell \"local\""), "{cell}");
    }

    #[test]
    fn cell_ids_differ_by_name_and_members() {
        let peers: BTreeMap<ReplicaId, String> = (1..=3).map(|i| (i, format!("h{i}:7001"))).collect();
        let a = new_cell_id("local", &peers);
        assert_eq!(a, new_cell_id("local", &peers));
        assert_ne!(a, new_cell_id("prod", &peers));
        let mut moved = peers.clone();
        moved.insert(3, "h9:7001".into());
        assert_ne!(a, new_cell_id("local", &moved));
        let adopted = adopted_cell_id("local", peers.keys().copied());
        assert_eq!(adopted, adopted_cell_id("local", [1, 2, 3].into_iter()), "addresses do not matter");
        assert_ne!(adopted, adopted_cell_id("local", [1, 2].into_iter()));
        assert_ne!(adopted, a);
    }
}
