//! The FUSE daemon's file system: `MOUNTPOINT/<cell>/…` is `/ls/<cell>/…` of each mounted
//! cell (DESIGN.md, FUSE mapping).
//!
//! - [`inodes`]: kernel inode numbers ⇄ cell paths.
//! - [`files`]: open files (whole-file reads and writes, stored at close) and directories.
//! - [`locks`]: `flock`/`fcntl` locks as the cell's locks; blocked waits end on a signal;
//!   [`lock_ops`]: those operations on the cells.
//! - [`errno`]: the cell's refusals as errno values, in one place.
//! - [`cell`]: a mounted cell and its sessions, one per user of the host (each its own
//!   principal, so the cell's ACLs apply per user), replaced when lost.
//! - [`kernel`]: what the kernel may cache, and how it is made to forget.
//! - [`ops`]: the operations themselves, async on the cells, in the caller's session.
//! - [`xattr`]: the `user.chubby.*` metadata, and the ACL names `setfattr` changes.
//! - [`requests`]: the requests the kernel sent, counted by kind.
//!
//! Every callback here hands its reply to a future that answers at once when the session's
//! cache can, and otherwise goes on as a task on the daemon's runtime, so no call to a cell
//! (a lock wait least of all) holds up the kernel's request loop. The kernel's attribute
//! and entry caches keep what the session caches, for as long as the master's invalidations
//! allow ([`kernel`]). Files are opened with direct I/O: reads reach this daemon, which
//! answers from the session's cache when it can (no RPC), each read loop from one whole
//! version. (The kernel's page cache is not used: it pairs a file's pages with a size it may
//! have fetched at another moment, so a read could come out cut or padded to the size of
//! another version.)

mod errno;
mod file_ops;
mod files;
mod inodes;
mod kernel;
mod lock_ops;
mod locks;
mod ops;
mod requests;
mod user_sessions;
mod xattr;

use std::ffi::OsStr;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

pub use errno::errno_of;
pub use inodes::Owner;
use locks::whole_file;
use ops::FsInner;
use requests::Kind;
pub use user_sessions::MountedCell;

pub struct ChubbyFs {
    inner: Arc<FsInner>,
    rt: tokio::runtime::Handle,
}

/// The daemon's hold on the file system once the kernel's session has it: the kernel's
/// caches are attached through it, and at a stop it tells what is still open.
pub struct FsLink(Arc<FsInner>);

impl FsLink {
    /// The daemon's side of the kernel's caches: attach the mounted session's notifier, and
    /// its FUSE device (see `kernel`).
    pub fn attach(&self, notifier: fuser::Notifier, device: Option<std::os::fd::OwnedFd>) {
        self.0.attach_kernel(notifier, device);
    }

    /// How many files are open now, and how many of them have writes not yet stored.
    pub fn open_files(&self) -> (usize, usize) {
        self.0.open_files()
    }
}

impl ChubbyFs {
    /// The link to attach once mounted (before, the kernel is given nothing to keep).
    pub fn link(&self) -> FsLink {
        FsLink(self.inner.clone())
    }

    /// `lock_delay`: of the locks taken through the mount (`None`: the cell's default).
    pub fn new(
        cells: Vec<Arc<MountedCell>>,
        owner: Owner,
        lock_delay: Option<Duration>,
        rt: tokio::runtime::Handle,
    ) -> ChubbyFs {
        ChubbyFs { inner: Arc::new(FsInner::new(cells, owner, lock_delay)), rt }
    }

    /// Runs `work`, which replies when done. It is polled once here, on the kernel's request
    /// thread: what the session's cache answers (most lookups, stats, opens and reads) is
    /// answered at once, without waking another thread. Whatever must wait (a call to the
    /// cell, a lock) goes on on the daemon's runtime, so the request loop never blocks.
    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<FsInner>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let _runtime = self.rt.enter();
        let mut work = Box::pin(work(self.inner.clone()));
        // A future polled with a no-op waker and then moved to the runtime is polled again
        // there with the task's waker (the Future contract: the latest waker counts).
        let mut cx = Context::from_waker(Waker::noop());
        if work.as_mut().poll(&mut cx).is_pending() {
            self.inner.requests.deferred();
            self.rt.spawn(work);
        }
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for ChubbyFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let wanted = InitFlags::FUSE_FLOCK_LOCKS | InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_ATOMIC_O_TRUNC;
        if let Err(missing) = config.add_capabilities(wanted) {
            tracing::warn!("the kernel lacks FUSE capabilities {missing:?}: locks may stay local to this host");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.inner.requests.count(Kind::Lookup);
        let (uid, tid, name) = (req.uid(), req.pid(), name.to_owned());
        self.spawn(move |fs| async move {
            let undo = |fs: Arc<FsInner>, a: ops::Answer| async move { fs.forget(a.attr.ino.0, 1) };
            match fs.killable_undone(tid, move |fs| async move { fs.lookup(uid, parent.0, &name).await }, undo).await {
                // What the kernel may keep of each: see `kernel`.
                Ok(a) => fs.reply_ttl(&a, |attr, entry| reply.entry_with_ttls(&attr, &entry, &a.attr, Generation(0))),
                Err(e) => reply.error(e),
            }
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inner.requests.count(Kind::Forget);
        self.inner.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.inner.requests.count(Kind::Getattr);
        let (uid, tid) = (req.uid(), req.pid());
        self.spawn(move |fs| async move {
            match fs.killable(tid, move |fs| async move { fs.getattr(uid, ino.0, fh.map(|f| f.0)).await }).await {
                Ok(a) => fs.reply_ttl(&a, |ttl, _| reply.attr(&ttl, &a.attr)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.inner.requests.count(Kind::Setattr);
        // Access is the cell's ACLs, not mode bits or owners: a change of either is refused
        // (setting what they already are, as `cp -p` and `mv` do, succeeds; so does a mode
        // set on a file still open from its create, see `may_set_mode`). Times are the log's
        // clock: `touch` succeeds and changes nothing.
        let (caller, tid) = (req.uid(), req.pid());
        self.spawn(move |fs| async move {
            let r = match (size, fh) {
                // `truncate(1)` of a path reads, cuts and stores: not killable (see
                // `FsInner::killable`).
                (Some(size), None) => fs.truncate(caller, ino.0, size, None, tid).await,
                (Some(size), Some(fh)) => {
                    fs.killable(tid, move |fs| async move { fs.truncate(caller, ino.0, size, Some(fh.0), tid).await })
                        .await
                }
                (None, fh) => {
                    fs.killable(tid, move |fs| async move { fs.getattr(caller, ino.0, fh.map(|f| f.0)).await }).await
                }
            };
            let r = r.and_then(|a| {
                let same = mode.is_none_or(|m| m & 0o7777 == u32::from(a.attr.perm) || fs.may_set_mode(ino.0))
                    && uid.is_none_or(|u| u == a.attr.uid)
                    && gid.is_none_or(|g| g == a.attr.gid);
                if same {
                    Ok(a)
                } else {
                    Err(Errno::EPERM)
                }
            });
            match r {
                Ok(a) => fs.reply_ttl(&a, |ttl, _| reply.attr(&ttl, &a.attr)),
                Err(e) => reply.error(e),
            }
        });
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, _mode: u32, _umask: u32, reply: ReplyEntry) {
        self.inner.requests.count(Kind::Mkdir);
        let (uid, tid, name) = (req.uid(), req.pid(), name.to_owned());
        self.spawn(move |fs| async move {
            let undo = |fs: Arc<FsInner>, a: ops::Answer| async move { fs.forget(a.attr.ino.0, 1) };
            match fs.killable_undone(tid, move |fs| async move { fs.mkdir(uid, parent.0, &name).await }, undo).await {
                Ok(a) => {
                    fs.reply_ttl(&a, |ttl, _| reply.entry_with_ttls(&ttl, &Duration::ZERO, &a.attr, Generation(0)))
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.inner.requests.count(Kind::Unlink);
        let (uid, name) = (req.uid(), name.to_owned());
        // Not killable (see `FsInner::killable`), nor is rmdir, rename or setfattr.
        self.spawn(move |fs| async move {
            let r = fs.remove(uid, parent.0, &name, false).await;
            reply_empty(reply, r)
        });
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.inner.requests.count(Kind::Rmdir);
        let (uid, name) = (req.uid(), name.to_owned());
        // Not killable (see `FsInner::killable`), nor is rmdir, rename or setfattr.
        self.spawn(move |fs| async move {
            let r = fs.remove(uid, parent.0, &name, true).await;
            reply_empty(reply, r)
        });
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.inner.requests.count(Kind::Rename);
        let (uid, name, newname) = (req.uid(), name.to_owned(), newname.to_owned());
        self.spawn(move |fs| async move {
            let r = fs.rename(uid, (parent.0, &name), (newparent.0, &newname), flags.bits()).await;
            reply_empty(reply, r)
        });
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.inner.requests.count(Kind::Open);
        let (uid, tid) = (req.uid(), req.pid());
        self.spawn(move |fs| async move {
            let undo = |fs: Arc<FsInner>, fh: u64| async move { fs.abandon_open(fh).await };
            match fs.killable_undone(tid, move |fs| async move { fs.open(uid, ino.0, flags.0, tid).await }, undo).await
            {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
                Err(e) => reply.error(e),
            }
        });
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        self.inner.requests.count(Kind::Create);
        let (uid, tid, name) = (req.uid(), req.pid(), name.to_owned());
        self.spawn(move |fs| async move {
            let undo = |fs: Arc<FsInner>, (a, fh): (ops::Answer, u64)| async move {
                fs.abandon_open(fh).await;
                fs.forget(a.attr.ino.0, 1);
            };
            let create = move |fs: Arc<FsInner>| async move { fs.create(uid, parent.0, &name, flags, tid).await };
            match fs.killable_undone(tid, create, undo).await {
                // A new inode: nothing for the kernel to keep yet (see `kernel`).
                Ok((a, fh)) => {
                    reply.created(&Duration::ZERO, &a.attr, Generation(0), FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO)
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.inner.requests.count(Kind::Read);
        let tid = req.pid();
        self.spawn(move |fs| async move {
            match fs.killable(tid, move |fs| async move { fs.read(fh.0, offset, size).await }).await {
                Ok(data) => reply.data(&data),
                Err(e) => reply.error(e),
            }
        });
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.inner.requests.count(Kind::Write);
        let data = data.to_vec();
        let (append, tid) = (flags.0 & libc::O_APPEND != 0, req.pid());
        self.spawn(move |fs| async move {
            match fs.killable(tid, move |fs| async move { fs.write(fh.0, offset, &data, append, tid).await }).await {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e),
            }
        });
    }

    fn flush(&self, req: &Request, _ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        self.inner.requests.count(Kind::Flush);
        let tid = req.pid();
        self.spawn(move |fs| async move {
            reply_empty(reply, fs.killable(tid, move |fs| async move { fs.flush(fh.0, lock_owner.0).await }).await)
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.inner.requests.count(Kind::Release);
        self.spawn(move |fs| async move {
            fs.release(fh.0, lock_owner.map(|o| o.0)).await;
            reply.ok();
        });
    }

    fn fsync(&self, req: &Request, _ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        self.inner.requests.count(Kind::Fsync);
        let tid = req.pid();
        self.spawn(move |fs| async move {
            reply_empty(reply, fs.killable(tid, move |fs| async move { fs.fsync(fh.0).await }).await)
        });
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.inner.requests.count(Kind::Opendir);
        let (uid, tid) = (req.uid(), req.pid());
        // The kernel keeps a lock on a directory to itself (it never reaches this daemon), so
        // `flock DIR` would exclude nothing across hosts: the tool is refused the directory,
        // and says so, rather than relied on in silence. (Lock a file instead.)
        if locks::is_flock_tool(tid) {
            tracing::warn!("flock(1) on a directory is refused: directory locks stay local to a host");
            reply.error(Errno::from_i32(libc::EISDIR));
            return;
        }
        self.spawn(move |fs| async move {
            let undo = |fs: Arc<FsInner>, fh: u64| async move { fs.releasedir(fh) };
            match fs.killable_undone(tid, move |fs| async move { fs.opendir(uid, ino.0).await }, undo).await {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            }
        });
    }

    fn readdir(&self, req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        self.inner.requests.count(Kind::Readdir);
        let (uid, tid) = (req.uid(), req.pid());
        self.spawn(move |fs| async move {
            match fs.killable(tid, move |fs| async move { fs.readdir(uid, ino.0, fh.0, offset).await }).await {
                Ok(entries) => {
                    for (ino, next, kind, name) in entries {
                        if reply.add(INodeNo(ino), next, kind, name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.inner.requests.count(Kind::Releasedir);
        self.inner.releasedir(fh.0);
        reply.ok();
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        self.inner.requests.count(Kind::Getxattr);
        let (uid, tid, name) = (req.uid(), req.pid(), name.to_owned());
        self.spawn(move |fs| async move {
            match fs.killable(tid, move |fs| async move { fs.getxattr(uid, tid, ino.0, &name).await }).await {
                Ok(value) => reply_xattr(reply, size, &value),
                Err(e) => reply.error(e),
            }
        });
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.inner.requests.count(Kind::Listxattr);
        reply_xattr(reply, size, &self.inner.listxattr(ino.0));
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.inner.requests.count(Kind::Setxattr);
        let (uid, name, value) = (req.uid(), name.to_owned(), value.to_vec());
        self.spawn(move |fs| async move {
            match fs.setxattr(uid, ino.0, &name, &value, flags).await {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
        });
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.inner.requests.count(Kind::Removexattr);
        reply.error(self.inner.removexattr(name));
    }

    /// The cell's ACLs, as the caller's handle of the node carries them.
    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        self.inner.requests.count(Kind::Access);
        let (uid, tid, mask) = (req.uid(), req.pid(), mask.bits());
        self.spawn(move |fs| async move {
            reply_empty(reply, fs.killable(tid, move |fs| async move { fs.access(uid, ino.0, mask).await }).await)
        });
    }

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.inner.requests.count(Kind::Statfs);
        let tid = req.pid();
        self.spawn(move |fs| async move {
            match fs.killable(tid, move |fs| async move { fs.statfs(ino.0).await }).await {
                Ok(usage) => {
                    let (blocks, free, files, free_files) = usage.figures();
                    let bsize = ops::Usage::BLOCK as u32;
                    reply.statfs(blocks, free, free, files, free_files, bsize, 255, bsize);
                }
                Err(e) => reply.error(e),
            }
        });
    }

    fn getlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        reply: ReplyLock,
    ) {
        self.inner.requests.count(Kind::Getlk);
        if !whole_file(start, end) {
            reply.error(Errno::EINVAL);
            return;
        }
        let tid = req.pid();
        self.spawn(move |fs| async move {
            match fs.killable(tid, move |fs| async move { fs.getlk(fh.0, lock_owner.0, typ).await }).await {
                Ok((start, end, typ, pid)) => reply.locked(start, end, typ, pid),
                Err(e) => reply.error(e),
            }
        });
    }

    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        self.inner.requests.count(Kind::Setlk);
        // Chubby locks are whole-node locks: byte ranges are refused, not faked.
        if !whole_file(start, end) {
            reply.error(Errno::EINVAL);
            return;
        }
        let tid = req.pid();
        self.spawn(
            move |fs| async move { reply_empty(reply, fs.setlk(fh.0, lock_owner.0, typ, sleep, tid, pid).await) },
        );
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::from_i32(libc::ERANGE));
    } else {
        reply.data(value);
    }
}

impl ChubbyFs {
    /// The mounted cells (to close their sessions at unmount).
    pub fn cells(&self) -> Vec<Arc<MountedCell>> {
        self.inner.cells().to_vec()
    }
}
