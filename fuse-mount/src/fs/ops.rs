//! The file-system operations, as async calls on the cells: the shared state ([`FsInner`]),
//! the kernel's cache kept in step, and the namespace (lookup, attributes, mkdir, remove,
//! directories). Open files are in `file_ops.rs`, locks in `lock_ops.rs`. The FUSE callbacks
//! in [`super`] only translate arguments and replies; everything that talks to a cell is in
//! these files.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use fuser::{Errno, FileAttr, FileType};
use proto::chubby::{Handle, NodeStat};

use super::errno::errno_of;
use super::files::{OpenDir, OpenEntry, PendingSize, MAX_CONTENTS};
use super::inodes::{dir_attr, node_attr, Inodes, NodeRef, Owner, ROOT};
use super::kernel::{Before, KernelCache};
use super::locks::{dying, from_proc, HeldLocks};
use super::user_sessions::MountedCell;
use crate::client::ClientError;
use crate::client::{Invalidated, OpenOptions, Session};

/// When a file call that waits on the cell first looks whether its caller is dying, and how
/// often after that: a call answered from the cache never looks.
const FIRST_LOOK: Duration = Duration::from_millis(100);
const LOOK_EVERY: Duration = Duration::from_millis(50);

pub(super) fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn errno(e: ClientError) -> Errno {
    errno_of(&e)
}

/// The rights of a handle (`Handle::rights`), as the master granted them at open.
pub(super) const READ: u32 = 1;
pub(super) const WRITE: u32 = 2;

pub struct FsInner {
    pub(super) cells: Vec<Arc<MountedCell>>,
    pub(super) inodes: Mutex<Inodes>,
    pub(super) files: Mutex<HashMap<u64, OpenEntry>>,
    pub(super) dirs: Mutex<HashMap<u64, OpenDir>>,
    pub(super) next_fh: AtomicU64,
    /// Sizes of files this host has written and not yet stored (getattr reports them).
    /// (Per inode: the open file that wrote last, and the size of its copy.)
    pub(super) pending: Mutex<HashMap<u64, (u64, PendingSize)>>,
    /// Inodes of files this host created and still has open from that create, with the
    /// number of such opens: their mode may be set (see [`FsInner::may_set_mode`]).
    pub(super) fresh: Mutex<HashMap<u64, u32>>,
    pub(super) locks: Mutex<HeldLocks>,
    /// Directories whose new files this mount creates as ephemeral nodes of the creating
    /// user's session (`user.chubby.ephemeral_children`): "I am alive" files from the shell.
    pub(super) ephemeral_dirs: Mutex<std::collections::HashSet<NodeRef>>,
    /// The ephemeral files created here, each with its session, which is kept open for them
    /// (not closed for being idle): closing it would delete them.
    pub(super) ephemeral_files: Mutex<HashMap<NodeRef, Session>>,
    pub(super) owner: Owner,
    /// Lock-delay of the locks taken here (`None`: the cell's default, 60 s).
    pub(super) lock_delay: Option<Duration>,
    /// What the kernel caches, and the means to make it forget.
    pub kernel: KernelCache,
    /// The requests the kernel sent, by kind.
    pub requests: super::requests::Requests,
    pub(super) me: std::sync::OnceLock<Weak<FsInner>>,
}

/// What mounted cells hold, and may hold (see [`FsInner::statfs`]).
#[derive(Default)]
pub struct Usage {
    pub nodes: u64,
    pub max_nodes: u64,
    pub bytes: u64,
}

impl Usage {
    pub const BLOCK: u64 = 4096;

    /// (blocks, free blocks, inodes, free inodes).
    pub fn figures(&self) -> (u64, u64, u64, u64) {
        let blocks = self.max_nodes.saturating_mul(MAX_CONTENTS) / Self::BLOCK;
        let used = self.bytes.div_ceil(Self::BLOCK);
        (blocks, blocks.saturating_sub(used), self.max_nodes, self.max_nodes.saturating_sub(self.nodes))
    }
}

/// An answer about a node, with what decides at the reply whether the kernel may keep it
/// (see [`super::kernel`]).
pub struct Answer {
    pub attr: FileAttr,
    before: Before,
    cacheable: bool,
    /// Every principal may open the node: the name the kernel keeps may serve every user of
    /// the host (the kernel's entries are not per user; others' lookups would skip their ACL
    /// check).
    open_to_all: bool,
    lease_end: Instant,
}

impl FsInner {
    /// Runs `op` for thread `tid`, but answers `EINTR` as soon as that thread is dying (see
    /// [`dying`]): the kernel holds a process in a file call until the daemon answers, even
    /// through `kill -9`, and a call waiting on a cell out of reach would hold it for the
    /// whole `--rpc-timeout`. The operation itself goes on to its end in the background (a
    /// store at close still stores, a lock let go is still released), its answer unheard.
    /// Only for operations whose late end cannot undo a later one's (not `unlink`, `rename`,
    /// an ACL change or a truncate by path, which the kernel's directory lock no longer
    /// orders once answered), and that leave nothing the kernel would have to release.
    pub(super) async fn killable<T, F, Fut>(self: &Arc<Self>, tid: u32, op: F) -> Result<T, Errno>
    where
        F: FnOnce(Arc<FsInner>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Errno>> + Send + 'static,
        T: Send + 'static,
    {
        self.killable_undone(tid, op, |_, _| async {}).await
    }

    /// [`FsInner::killable`] for an operation that leaves the kernel something to release or
    /// forget (an inode looked up, an open handle): if it ends well after its caller was
    /// answered `EINTR`, `undo` drops what the kernel will never release.
    pub(super) async fn killable_undone<T, F, Fut, U, UFut>(
        self: &Arc<Self>,
        tid: u32,
        op: F,
        undo: U,
    ) -> Result<T, Errno>
    where
        F: FnOnce(Arc<FsInner>) -> Fut,
        Fut: std::future::Future<Output = Result<T, Errno>> + Send + 'static,
        T: Send + 'static,
        U: FnOnce(Arc<FsInner>, T) -> UFut + Send + 'static,
        UFut: std::future::Future<Output = ()> + Send,
    {
        let mut work = Box::pin(op(self.clone()));
        let mut look = FIRST_LOOK;
        loop {
            tokio::select! {
                biased;
                r = &mut work => return r,
                _ = tokio::time::sleep(look) => {}
            }
            // Raced with the work: the look may wait on the caller (see `from_proc`).
            let look_at = from_proc(Duration::from_secs(1), false, move || dying(tid));
            let is_dying = tokio::select! {
                biased;
                r = &mut work => return r,
                d = look_at => d,
            };
            if is_dying {
                let fs = self.clone();
                tokio::spawn(async move {
                    if let Ok(v) = work.await {
                        undo(fs, v).await;
                    }
                });
                return Err(Errno::EINTR);
            }
            look = LOOK_EVERY;
        }
    }

    pub fn new(cells: Vec<Arc<MountedCell>>, owner: Owner, lock_delay: Option<Duration>) -> FsInner {
        FsInner {
            cells,
            inodes: Mutex::new(Inodes::new()),
            files: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
            pending: Mutex::default(),
            fresh: Mutex::default(),
            ephemeral_dirs: Mutex::default(),
            ephemeral_files: Mutex::default(),
            locks: Mutex::default(),
            owner,
            lock_delay,
            kernel: KernelCache::default(),
            requests: Default::default(),
            me: std::sync::OnceLock::new(),
        }
    }

    /// Starts keeping the kernel's caches in step with the sessions' (once mounted).
    pub fn attach_kernel(self: &Arc<Self>, notifier: fuser::Notifier, device: Option<std::os::fd::OwnedFd>) {
        let _ = self.me.set(Arc::downgrade(self));
        self.kernel.attach(notifier, device);
        for (i, cell) in self.cells.iter().enumerate() {
            let fs: Weak<FsInner> = Arc::downgrade(self);
            cell.set_invalidation_hook(Arc::new(move |what: &Invalidated| {
                if let Some(fs) = fs.upgrade() {
                    fs.invalidate_kernel(i, what);
                }
            }));
        }
    }

    /// The session of `cell` dropped `what` from its cache: the kernel drops the same.
    fn invalidate_kernel(&self, cell: usize, what: &Invalidated) {
        let inos: Vec<u64> = match what {
            Invalidated::All => guard(&self.inodes).of_cell(cell).into_iter().map(|(ino, _)| ino).collect(),
            Invalidated::Nodes(paths) => {
                let inodes = guard(&self.inodes);
                paths
                    .iter()
                    .map(|p| NodeRef { cell, path: p.trim_end_matches('/').to_string() })
                    .filter_map(|n| inodes.find(&n))
                    .collect()
            }
        };
        self.kernel.invalidate(&inos);
    }

    /// Makes the kernel forget `ino`'s attributes, off this thread (which may be the kernel's
    /// request thread): after a write this host failed to store.
    pub(super) fn forget_kernel(&self, ino: u64) {
        let inodes = guard(&self.inodes);
        let Some(node) = inodes.node(ino) else { return };
        drop(inodes);
        let what = Invalidated::Nodes(vec![node.path]);
        let cell = node.cell;
        let Some(this) = self.me.get().cloned() else { return };
        tokio::task::spawn_blocking(move || {
            if let Some(fs) = this.upgrade() {
                fs.invalidate_kernel(cell, &what);
            }
        });
    }

    /// Runs `reply` with the times the kernel may keep `answer`'s attributes and its entry
    /// (zero unless allowed).
    pub fn reply_ttl<T>(&self, answer: &Answer, reply: impl FnOnce(Duration, Duration) -> T) -> T {
        self.kernel.reply(answer.before, answer.cacheable, answer.open_to_all, answer.lease_end, reply)
    }

    /// What a call about `node` sees when it begins.
    pub(super) fn before(&self, node: Option<&NodeRef>) -> Before {
        let known = match node {
            Some(n) => {
                let inodes = guard(&self.inodes);
                inodes.find(n).is_some_and(|ino| inodes.is_known(ino))
            }
            None => true,
        };
        self.kernel.before(known)
    }

    /// The answer for `ino` at `node` with the session's `stat`.
    pub(super) fn answer(
        &self,
        ino: u64,
        node: &NodeRef,
        stat: &NodeStat,
        session: &Session,
        before: Before,
    ) -> Answer {
        let pending = guard(&self.pending).contains_key(&ino);
        Answer {
            attr: self.attr(ino, stat),
            before,
            cacheable: !pending && !stat.is_ephemeral && session.caches(&node.path, stat),
            open_to_all: stat.open_to_all,
            lease_end: session.lease_end(),
        }
    }

    pub fn cells(&self) -> &[Arc<MountedCell>] {
        &self.cells
    }

    /// The node the kernel names `ino` (which shows the kernel has made that inode).
    pub(super) fn node(&self, ino: u64) -> Result<NodeRef, Errno> {
        let mut inodes = guard(&self.inodes);
        inodes.mark_known(ino);
        inodes.node(ino).ok_or(Errno::ENOENT)
    }

    pub(super) fn child(&self, parent: u64, name: &OsStr) -> Result<NodeRef, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        if parent == ROOT {
            let cell = self.cells.iter().position(|c| c.name == name).ok_or(Errno::ENOENT)?;
            return Ok(NodeRef { cell, path: format!("/ls/{name}") });
        }
        self.node(parent)?.child(name).ok_or(Errno::EINVAL)
    }

    /// Opens `node` in user `uid`'s session (from its cache if it has the node: no RPC).
    pub(super) async fn open_node(
        &self,
        uid: u32,
        node: &NodeRef,
        o: OpenOptions,
    ) -> Result<(Session, Handle, NodeStat), Errno> {
        let session = self.cells[node.cell].session(uid).await.map_err(errno)?;
        let (handle, stat) = session.open_node(&node.path, o).await.map_err(errno)?;
        Ok((session, handle, stat))
    }

    fn attr(&self, ino: u64, stat: &NodeStat) -> FileAttr {
        node_attr(ino, stat, guard(&self.pending).get(&ino).map(|(_, size)| size.of(stat.length)), self.owner)
    }

    /// `statfs(2)` (`df`): of the cell `ino` is in (all mounted cells at the mount's root),
    /// as its leader reports it. Inodes are the cell's node limit, and its nodes in use;
    /// blocks (4 KiB) are what that limit allows at most (every node a full file of
    /// [`MAX_CONTENTS`]: the cell has no byte quota beyond it), and the files' contents in use.
    pub async fn statfs(&self, ino: u64) -> Result<Usage, Errno> {
        let cells: Vec<&Arc<MountedCell>> =
            if ino == ROOT { self.cells.iter().collect() } else { vec![&self.cells[self.node(ino)?.cell]] };
        let mut total = Usage::default();
        for cell in cells {
            let client = crate::client::CellClient::new(cell.addrs().to_vec(), Duration::from_secs(5))
                .map_err(errno)?
                .with_tls(cell.tls());
            let statuses = client.status_all().await;
            let leader = statuses.iter().filter_map(|(_, r)| r.as_ref().ok()).find(|s| s.role == "leader");
            let Some(s) = leader else { return Err(Errno::from_i32(libc::ETIMEDOUT)) };
            total.max_nodes += s.max_nodes;
            total.nodes += s.nodes;
            total.bytes += s.content_bytes;
        }
        Ok(total)
    }

    /// `access(2)`: the caller's rights on the node, as its session's handle carries them
    /// (directories may always be searched; files are never executable).
    pub async fn access(&self, uid: u32, ino: u64, mask: i32) -> Result<(), Errno> {
        if ino == ROOT {
            return Ok(());
        }
        let node = self.node(ino)?;
        let (_, handle, stat) = self.open_node(uid, &node, OpenOptions::default()).await?;
        let told = handle.rights != 0; // 0: not reported, the calls will tell
        let denied = (told && mask & libc::R_OK != 0 && handle.rights & READ == 0)
            || (told && mask & libc::W_OK != 0 && handle.rights & WRITE == 0)
            || (mask & libc::X_OK != 0 && !stat.is_directory);
        if denied {
            Err(Errno::EACCES)
        } else {
            Ok(())
        }
    }

    pub fn forget(&self, ino: u64, n: u64) {
        guard(&self.inodes).forget(ino, n);
    }

    pub async fn lookup(&self, uid: u32, parent: u64, name: &OsStr) -> Result<Answer, Errno> {
        let node = self.child(parent, name)?;
        let before = self.before(Some(&node));
        let (session, _, stat) = self.open_node(uid, &node, OpenOptions::default()).await?;
        let ino = guard(&self.inodes).lookup(&node);
        Ok(self.answer(ino, &node, &stat, &session, before))
    }

    /// Attributes, asked in the session of open file `fh` if given (`fstat` of a descriptor
    /// keeps working for whoever holds it, as locally), else in the caller's.
    pub async fn getattr(&self, uid: u32, ino: u64, fh: Option<u64>) -> Result<Answer, Errno> {
        if ino == ROOT {
            // The mount point never changes.
            let lease_end = Instant::now() + Duration::from_secs(3600);
            return Ok(Answer {
                attr: dir_attr(ROOT, self.owner),
                before: self.before(None),
                cacheable: true,
                open_to_all: true,
                lease_end,
            });
        }
        let node = self.node(ino)?;
        let before = self.before(Some(&node));
        let opened = match fh.and_then(|fh| self.file(fh).ok()) {
            Some(file) => Some(file.lock().await.session.clone()),
            None => None,
        };
        let session = match opened {
            Some(s) => s,
            None => self.cells[node.cell].session(uid).await.map_err(errno)?,
        };
        let (_, stat) = session.open_node(&node.path, OpenOptions::default()).await.map_err(errno)?;
        Ok(self.answer(ino, &node, &stat, &session, before))
    }

    pub async fn mkdir(&self, uid: u32, parent: u64, name: &OsStr) -> Result<Answer, Errno> {
        let node = self.child(parent, name)?;
        let before = self.before(Some(&node));
        let o = OpenOptions { create: true, directory: true, exclusive: true, ..Default::default() };
        let (session, _, stat) = self.open_node(uid, &node, o).await?;
        let ino = guard(&self.inodes).lookup(&node);
        Ok(self.answer(ino, &node, &stat, &session, before))
    }

    /// `unlink` (`directory` false) or `rmdir`.
    pub async fn remove(&self, uid: u32, parent: u64, name: &OsStr, directory: bool) -> Result<(), Errno> {
        let node = self.child(parent, name)?;
        let (session, handle, stat) = self.open_node(uid, &node, OpenOptions::default()).await?;
        match (directory, stat.is_directory) {
            (false, true) => return Err(Errno::from_i32(libc::EISDIR)),
            (true, false) => return Err(Errno::from_i32(libc::ENOTDIR)),
            _ => {}
        }
        session.delete(&handle, None, "").await.map_err(errno)?;
        guard(&self.ephemeral_files).remove(&node);
        Ok(())
    }

    /// `rename(2)` of a file within a cell: the cell's Rename, one atomic change (`mv`, `sed
    /// -i` and editors' saves rename a temporary file over the target). A directory, or a
    /// name in another cell, is `EXDEV`, so `mv` copies and deletes; `RENAME_EXCHANGE` is
    /// not a Chubby operation (`EINVAL`); a mounted cell's root is `EBUSY`, as a mount
    /// point's is.
    pub async fn rename(
        &self,
        uid: u32,
        (parent, name): (u64, &OsStr),
        (new_parent, new_name): (u64, &OsStr),
        flags: u32,
    ) -> Result<(), Errno> {
        if flags & !libc::RENAME_NOREPLACE != 0 {
            return Err(Errno::EINVAL);
        }
        if parent == ROOT || new_parent == ROOT {
            return Err(Errno::from_i32(libc::EBUSY));
        }
        let (from, to) = (self.child(parent, name)?, self.child(new_parent, new_name)?);
        if from.cell != to.cell {
            return Err(Errno::from_i32(libc::EXDEV));
        }
        self.rename_file(uid, &from, &to, flags & libc::RENAME_NOREPLACE != 0).await
    }

    pub async fn opendir(&self, uid: u32, ino: u64) -> Result<u64, Errno> {
        let node = if ino == ROOT {
            None
        } else {
            let node = self.node(ino)?;
            let (_, _, stat) = self.open_node(uid, &node, OpenOptions::default()).await?;
            if !stat.is_directory {
                return Err(Errno::from_i32(libc::ENOTDIR));
            }
            Some(node)
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        guard(&self.dirs).insert(fh, OpenDir { node, entries: Vec::new() });
        Ok(fh)
    }

    pub fn releasedir(&self, fh: u64) {
        guard(&self.dirs).remove(&fh);
    }

    /// Entries from `offset` on, each with the offset of the one after it. Offset 0 reads
    /// the directory afresh (ReadDir at the master).
    pub async fn readdir(
        &self,
        uid: u32,
        ino: u64,
        fh: u64,
        offset: u64,
    ) -> Result<Vec<(u64, u64, FileType, String)>, Errno> {
        let node = guard(&self.dirs).get(&fh).map(|d| d.node.clone()).ok_or(Errno::EBADF)?;
        if offset == 0 {
            let entries = self.list(uid, ino, node).await?;
            if let Some(d) = guard(&self.dirs).get_mut(&fh) {
                d.entries = entries;
            }
        }
        let dirs = guard(&self.dirs);
        let d = dirs.get(&fh).ok_or(Errno::EBADF)?;
        Ok(d.entries
            .iter()
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (ino, kind, name))| (*ino, i as u64 + 1, *kind, name.clone()))
            .collect())
    }

    async fn list(&self, uid: u32, ino: u64, node: Option<NodeRef>) -> Result<Vec<(u64, FileType, String)>, Errno> {
        let Some(node) = node else {
            let mut entries = vec![(ROOT, FileType::Directory, ".".into()), (ROOT, FileType::Directory, "..".into())];
            let inodes = guard(&self.inodes);
            for (cell, c) in self.cells.iter().enumerate() {
                let ino = inodes.number_of(&NodeRef { cell, path: format!("/ls/{}", c.name) });
                entries.push((ino, FileType::Directory, c.name.clone()));
            }
            return Ok(entries);
        };
        let (session, handle, _) = self.open_node(uid, &node, OpenOptions::default()).await?;
        let children = session.read_dir(&handle).await.map_err(errno)?;
        let inodes = guard(&self.inodes);
        let parent = node.parent().map_or(ROOT, |p| inodes.number_of(&p));
        let mut entries = vec![(ino, FileType::Directory, ".".into()), (parent, FileType::Directory, "..".into())];
        for c in children {
            let Some(child) = node.child(&c.name) else { continue };
            let kind = if c.stat.is_some_and(|s| s.is_directory) { FileType::Directory } else { FileType::RegularFile };
            entries.push((inodes.number_of(&child), kind, c.name));
        }
        Ok(entries)
    }
}
