//! Every write, sync, rename and removal in a replica's data directory goes through here, so that
//! tests can break the disk under a real log: a write or a sync that fails with an errno of
//! their choice at a chosen call, `ENOSPC` once a byte budget is spent, and a simulated power
//! loss ([`DiskFaults::power_loss`]).
//!
//! The power-loss model is that of Linux write-back on a file system that keeps data and
//! directory entries apart (ext4, XFS):
//! - a file's content is durable as of its last successful `fsync`/`fdatasync`; of what was
//!   written since, a power loss keeps any subset of the 4 KiB pages, not only a prefix;
//! - a file created, renamed or removed since its directory's last sync may or may not be
//!   there afterwards (with its content as of its last sync).
//!
//! With no [`DiskFaults`] installed, each call costs one relaxed atomic load.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The unit in which write-back reaches the device (and a power loss loses it).
pub const PAGE: usize = 4096;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static INSTALLED: Mutex<Vec<Arc<DiskFaults>>> = Mutex::new(Vec::new());

/// Faults for the files under one directory (a test's data directory). Dropping the last
/// handle does not uninstall it: call [`DiskFaults::uninstall`].
pub struct DiskFaults {
    dir: PathBuf,
    state: Mutex<FaultState>,
}

#[derive(Default)]
struct FaultState {
    writes: u64,
    syncs: u64,
    fail_write_at: Option<(u64, i32)>,
    fail_sync_at: Option<(u64, i32)>,
    space_left: Option<u64>,
    /// Each file's content as of its last successful sync (`None`: created since and never
    /// synced, so nothing of it is durable).
    durable: BTreeMap<PathBuf, Option<Vec<u8>>>,
    /// Each directory's entries as of its last sync (or of installation).
    listed: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
    /// Files some of whose pages a failed sync lost for good.
    lost: BTreeSet<PathBuf>,
}

fn lock(m: &Mutex<FaultState>) -> MutexGuard<'_, FaultState> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DiskFaults {
    /// Starts watching every file under `dir` (which must exist): what is there now counts as
    /// durable.
    pub fn install(dir: &Path) -> Arc<DiskFaults> {
        let faults = Arc::new(DiskFaults { dir: dir.to_path_buf(), state: Mutex::new(FaultState::default()) });
        lock(&faults.state).take_as_durable(dir);
        INSTALLED.lock().unwrap_or_else(|p| p.into_inner()).push(faults.clone());
        ACTIVE.store(true, Ordering::Relaxed);
        faults
    }

    /// Stops injecting faults and tracking under this directory.
    pub fn uninstall(&self) {
        let mut all = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|f| !std::ptr::eq(&**f, self));
        if all.is_empty() {
            ACTIVE.store(false, Ordering::Relaxed);
        }
    }

    /// The `n`-th write from now (1: the next) fails with `errno`, writing nothing.
    pub fn fail_write(&self, n: u64, errno: i32) {
        let mut st = lock(&self.state);
        st.fail_write_at = Some((st.writes + n, errno));
    }

    /// The `n`-th sync from now (1: the next; of a file or a directory) fails with `errno`.
    /// As on Linux since 4.13, the pages it was to write are then lost to the disk although
    /// reads still see them, and the error is not reported again: a later sync of the same
    /// file succeeds.
    pub fn fail_sync(&self, n: u64, errno: i32) {
        let mut st = lock(&self.state);
        st.fail_sync_at = Some((st.syncs + n, errno));
    }

    /// Writes fail with `ENOSPC` once `bytes` more have been written.
    pub fn space_left(&self, bytes: u64) {
        lock(&self.state).space_left = Some(bytes);
    }

    /// Injects nothing more: pending failures and the byte budget are dropped.
    pub fn heal(&self) {
        let mut st = lock(&self.state);
        st.fail_write_at = None;
        st.fail_sync_at = None;
        st.space_left = None;
    }

    /// Writes and syncs seen so far.
    pub fn calls(&self) -> (u64, u64) {
        let st = lock(&self.state);
        (st.writes, st.syncs)
    }

    /// Rewrites the directory as a power loss at this moment could leave it (see the module
    /// documentation), each choice drawn from `seed`. Whoever wrote the files must be gone
    /// (dropped) first. Afterwards what is on disk counts as durable.
    pub fn power_loss(&self, seed: u64) {
        let mut rng = SplitMix(seed);
        let mut st = lock(&self.state);
        let mut paths: BTreeSet<PathBuf> = st.durable.keys().cloned().collect();
        for d in walk_dirs(&self.dir) {
            for item in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if item.path().is_file() {
                    paths.insert(item.path());
                }
            }
        }
        for path in paths {
            let listed = path.parent().is_some_and(|d| st.listed.get(d).is_some_and(|l| l.contains(&path)));
            let durable = st.durable.get(&path).cloned().flatten();
            let current = std::fs::read(&path).ok();
            // A directory entry not synced since it changed may go either way.
            let present = match current.is_some() == listed {
                true => listed,
                false => rng.coin(),
            };
            if !present {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let old = durable.unwrap_or_default();
            let mut out = current.unwrap_or_else(|| old.clone());
            for (i, page) in out.chunks_mut(PAGE).enumerate() {
                let at = i * PAGE;
                if at < old.len() && old[at..].starts_with(page) || rng.coin() {
                    continue;
                }
                // This page's write never reached the disk: what the disk held before shows.
                for (j, b) in page.iter_mut().enumerate() {
                    *b = old.get(at + j).copied().unwrap_or(0);
                }
            }
            let _ = std::fs::write(&path, &out);
        }
        // What survived is what the disk holds now.
        st.lost.clear();
        st.take_as_durable(&self.dir);
    }

    fn before_write(&self, len: usize) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.writes += 1;
        if st.fail_write_at.is_some_and(|(n, _)| n == st.writes) {
            let (_, errno) = st.fail_write_at.take().expect("checked above");
            return Err(io::Error::from_raw_os_error(errno));
        }
        if let Some(left) = st.space_left {
            if left < len as u64 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            st.space_left = Some(left - len as u64);
        }
        Ok(())
    }

    /// Counts a sync of `path`, which is about to be made; an injected failure is returned
    /// (after the lost pages are accounted for).
    fn before_sync(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.state);
        st.syncs += 1;
        if st.fail_sync_at.is_some_and(|(n, _)| n == st.syncs) {
            let (_, errno) = st.fail_sync_at.take().expect("checked above");
            // The pages are clean now but not on disk: a later sync will not write them. The
            // durable copy keeps what the disk had before, and sizes the file as it is now.
            if path.is_file() {
                let now = std::fs::read(path).unwrap_or_default();
                let mut old = st.durable.get(path).cloned().flatten().unwrap_or_default();
                old.resize(now.len(), 0);
                st.durable.insert(path.to_path_buf(), Some(old));
                st.lost.insert(path.to_path_buf());
            }
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }

    fn after_sync(&self, path: &Path) {
        let mut st = lock(&self.state);
        if path.is_dir() {
            let names = std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| e.path()).collect();
            st.listed.insert(path.to_path_buf(), names);
        } else if let Ok(now) = std::fs::read(path) {
            let merged = match st.durable.get(path).cloned().flatten() {
                // Pages lost by an earlier failed sync stay lost: this sync writes only pages
                // dirtied since, which the model cannot tell apart, so it keeps the disk's old
                // copy wherever a failed sync dropped pages.
                Some(old) if st.lost.contains(path) => {
                    let mut m = old;
                    m.resize(now.len(), 0);
                    m
                }
                _ => now,
            };
            st.durable.insert(path.to_path_buf(), Some(merged));
        }
    }

    fn renamed(&self, from: &Path, to: &Path) {
        let mut st = lock(&self.state);
        let data = st.durable.get(from).cloned().flatten();
        st.durable.insert(to.to_path_buf(), data);
    }

    /// The page cache of `path` was dropped: reads now show what the disk holds, which for a
    /// file whose pages a failed sync lost is its durable copy.
    fn cache_dropped(&self, path: &Path) {
        let mut st = lock(&self.state);
        if st.lost.remove(path) {
            if let Some(disk) = st.durable.get(path).cloned().flatten() {
                let _ = std::fs::write(path, disk);
            }
        }
    }

    /// A new file at `path` (created, or truncated to nothing): none of it is durable yet.
    fn created(&self, path: &Path) {
        let mut st = lock(&self.state);
        st.durable.insert(path.to_path_buf(), None);
        st.lost.remove(path);
    }
}

impl FaultState {
    /// Takes what is under `dir` now as durable.
    fn take_as_durable(&mut self, dir: &Path) {
        self.durable.clear();
        self.listed.clear();
        for d in walk_dirs(dir) {
            let mut names = BTreeSet::new();
            for item in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let path = item.path();
                if path.is_file() {
                    self.durable.insert(path.clone(), std::fs::read(&path).ok());
                }
                names.insert(path);
            }
            self.listed.insert(d, names);
        }
    }
}

/// `dir` and every directory under it.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let d = out[i].clone();
        for item in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if item.path().is_dir() {
                out.push(item.path());
            }
        }
        i += 1;
    }
    out
}

/// A small deterministic generator for the power-loss choices (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn coin(&mut self) -> bool {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) & 1 == 1
    }
}

/// The faults installed for `path`, if any.
fn faults_for(path: &Path) -> Option<Arc<DiskFaults>> {
    if !ACTIVE.load(Ordering::Relaxed) {
        return None;
    }
    let all = INSTALLED.lock().unwrap_or_else(|p| p.into_inner());
    all.iter().find(|f| path.starts_with(&f.dir)).cloned()
}

/// `file.write_all(buf)`, where `file` is `path`.
pub(crate) fn write_all(mut file: &File, path: &Path, buf: &[u8]) -> io::Result<()> {
    if let Some(f) = faults_for(path) {
        f.before_write(buf.len())?;
    }
    file.write_all(buf)
}

/// `file.write_all_at(buf, offset)`, where `file` is `path`.
pub(crate) fn write_all_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if let Some(f) = faults_for(path) {
        f.before_write(buf.len())?;
    }
    file.write_all_at(buf, offset)
}

/// Runs `sync`, a sync of `path`, between the fault layer's hooks: an injected failure instead
/// of it, and after it the note of what is now durable.
fn hooked_sync(path: &Path, sync: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let faults = faults_for(path);
    if let Some(f) = &faults {
        f.before_sync(path)?;
    }
    sync()?;
    if let Some(f) = &faults {
        f.after_sync(path);
    }
    Ok(())
}

/// `file.sync_data()`, where `file` is `path`.
pub(crate) fn sync_data(file: &File, path: &Path) -> io::Result<()> {
    hooked_sync(path, || file.sync_data())
}

/// `file.sync_all()`, where `file` is `path`.
pub(crate) fn sync_all(file: &File, path: &Path) -> io::Result<()> {
    hooked_sync(path, || file.sync_all())
}

/// Syncs directory `dir`, so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    hooked_sync(dir, || File::open(dir)?.sync_all())
}

/// Makes what a killed process left of `path` durable, then drops the file's pages from the
/// page cache, so that what is read next comes from the device. After a failed sync the kernel
/// marks the pages it could not write clean while keeping them in the cache: a later read, by
/// a restarted replica too, sees data the disk does not hold, and a later sync does not write
/// it. Dropping the clean pages makes the replay see what the disk has.
pub(crate) fn sync_and_drop_cache(file: &File, path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    sync_data(file, path)?;
    // SAFETY: `posix_fadvise` only reads its integer arguments; the descriptor is owned by
    // `file`, which outlives the call.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    if let Some(f) = faults_for(path) {
        f.cache_dropped(path);
    }
    Ok(())
}

/// Opens `path` for writing, creating it (`create_new`: it must not exist; otherwise `truncate`
/// an existing file).
pub(crate) fn create(path: &Path, create_new: bool) -> io::Result<File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    let file = opts.open(path)?;
    if let Some(f) = faults_for(path) {
        f.created(path);
    }
    Ok(file)
}

/// `std::fs::rename(from, to)`.
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::rename(from, to)?;
    if let Some(f) = faults_for(to) {
        f.renamed(from, to);
    }
    Ok(())
}
