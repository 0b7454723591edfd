//! Segment files: their names, their creation (preallocated and durable), and the next one made
//! ready on another thread while the log fills the current one.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::{io_err, sync_dir, WalError};

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Creates segment `path` with its full `size` allocated, durably: the file's size and its
/// directory entry are synced, so a later `fdatasync` of records need not commit either. A file
/// already there is replaced only if it holds nothing (one whose creation failed midway);
/// one holding records is an error, never overwritten.
pub(super) fn create_segment(dir: &Path, path: &Path, size: u64) -> Result<File, WalError> {
    if path.exists() {
        if !holds_nothing(path)? {
            let e = io::Error::new(io::ErrorKind::AlreadyExists, "a segment holding records is in the way");
            return Err(WalError::Io { path: path.to_path_buf(), source: e });
        }
        std::fs::remove_file(path).map_err(io_err(path))?;
    }
    let file = crate::storage::diskio::create(path, true).map_err(io_err(path))?;
    preallocate(&file, size);
    crate::storage::diskio::sync_all(&file, path).map_err(io_err(path))?;
    sync_dir(dir)?;
    Ok(file)
}

/// The next segment, created on its own thread: creating one costs a preallocation and two
/// syncs (the file and its directory), each of which can wait long behind a busy disk, and the
/// replica's loop, which rolls the log over, sends no heartbeats while it waits. All three
/// replicas roll over at nearly the same index, so a stall there could depose the leader.
///
/// The file exists under its final name before the log rolls over to it. It holds nothing (all
/// zeros) until then; replay removes such a trailing segment ([`holds_nothing`]).
pub(super) struct NextSegment {
    pub(super) seq: u64,
    pub(super) path: PathBuf,
    creating: JoinHandle<Result<File, WalError>>,
}

impl NextSegment {
    pub(super) fn start(dir: &Path, seq: u64, size: u64) -> Result<NextSegment, WalError> {
        let path = segment_path(dir, seq);
        let (d, p) = (dir.to_path_buf(), path.clone());
        let creating = std::thread::Builder::new()
            .name("wal-next-segment".into())
            .spawn(move || create_segment(&d, &p, size))
            .map_err(io_err(dir))?;
        Ok(NextSegment { seq, path, creating })
    }

    /// Whether the file is created and durable (or its creation failed).
    #[cfg(test)]
    pub(super) fn is_ready(&self) -> bool {
        self.creating.is_finished()
    }

    /// Waits for the file (at once, unless the disk is slower than filling half a segment).
    pub(super) fn take(self) -> Result<File, WalError> {
        self.creating.join().unwrap_or_else(|_| {
            Err(WalError::Io { path: self.path, source: io::Error::other("the thread creating it panicked") })
        })
    }
}

/// Whether the segment at `path` holds no record at all: only zeros, as a segment created ahead
/// of need and never rolled over to (or one whose every write was lost in a crash, none of them
/// synced). It can be deleted: nothing in it was ever written durably.
pub(super) fn holds_nothing(path: &Path) -> Result<bool, WalError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            return Ok(true);
        }
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
    }
}

/// Whether `file` is on ext4 or XFS, which keep preallocated space as unwritten extents
/// converted on first write (see "Zeros written ahead" in the module documentation).
pub(super) fn has_unwritten_extents(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fs` is a valid, writable statfs; the descriptor is owned by `file`.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return false;
    }
    matches!(fs.f_type as i64, EXT4 | XFS)
}

/// Gives `file` its full `size` now (its unwritten part reads as zeros), so later syncs need
/// not commit its growth. Where the file system cannot, the file just grows as it is written.
pub(super) fn preallocate(file: &File, size: u64) {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(size) else { return };
    // SAFETY: `fallocate` only reads its integer arguments; the descriptor is open for writing
    // and owned by `file`, which outlives the call.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc != 0 {
        tracing::debug!("WAL segments are not preallocated: {}", io::Error::last_os_error());
    }
}
