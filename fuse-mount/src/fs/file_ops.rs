//! Open files: open and create, reads and writes of the whole contents kept in memory, and
//! their commit to the cell at flush, fsync or release (Chubby §2.6: whole-file reads and
//! writes); truncate.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fuser::Errno;
use proto::chubby::{Handle, NodeStat};
use tokio::sync::Mutex as AsyncMutex;

use super::files::{OpenEntry, OpenFile, MAX_CONTENTS};
use super::inodes::NodeRef;
use super::locks::{lineage_of, LockKey};
use super::ops::{errno, guard, Answer, FsInner, READ, WRITE};
use crate::client::{OpenOptions, Session};

/// Whether the caller's handle allows an `open` with `flags`: reading needs the read right,
/// writing or truncating the write right, as a local file's mode would decide at open (so
/// `echo > file` fails there, not at a close whose error the shell ignores). `check_read`
/// is false for a create, which may make a file its creator cannot read (as a local create
/// may): its reads are refused by the cell then. A handle whose rights are not given (0: its
/// master does not report them) leaves the decision to the cell, at each call.
fn allows(handle: &Handle, flags: i32, check_read: bool) -> Result<(), Errno> {
    if handle.rights == 0 {
        return Ok(());
    }
    let mode = flags & libc::O_ACCMODE;
    let read = check_read && mode != libc::O_WRONLY;
    let write = mode != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
    let missing = (read && handle.rights & READ == 0) || (write && handle.rights & WRITE == 0);
    if missing {
        Err(Errno::EACCES)
    } else {
        Ok(())
    }
}

impl FsInner {
    fn add_file(&self, mut f: OpenFile) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        f.fh = fh;
        if f.changed() {
            self.set_pending(&f);
        }
        let (node, instance) = (f.node.clone(), f.instance);
        guard(&self.files).insert(fh, OpenEntry { node, instance, file: Arc::new(AsyncMutex::new(f)) });
        fh
    }

    /// `f` has unsaved changes: getattr reports its size.
    fn set_pending(&self, f: &OpenFile) {
        guard(&self.pending).insert(f.ino, (f.fh, f.pending_size()));
    }

    /// `f` has no unsaved changes any more (another open's stay).
    fn clear_pending(&self, f: &OpenFile) {
        let mut pending = guard(&self.pending);
        if pending.get(&f.ino).is_some_and(|(fh, _)| *fh == f.fh) {
            pending.remove(&f.ino);
        }
    }

    /// `f` is no longer open: its unsaved size and its create's mode window go.
    fn closed(&self, f: &OpenFile) {
        self.clear_pending(f);
        if f.created {
            let mut fresh = guard(&self.fresh);
            if let Some(n) = fresh.get_mut(&f.ino) {
                *n -= 1;
                if *n == 0 {
                    fresh.remove(&f.ino);
                }
            }
        }
    }

    /// Drops open `fh` without storing anything or releasing its locks: the kernel was told
    /// the open failed (its caller died first), so it holds no descriptor of it.
    pub(super) async fn abandon_open(&self, fh: u64) {
        let Some(OpenEntry { file, .. }) = guard(&self.files).remove(&fh) else { return };
        let f = file.lock().await;
        self.closed(&f);
    }

    /// How many files are open, and how many files have writes not yet stored.
    pub(super) fn open_files(&self) -> (usize, usize) {
        (guard(&self.files).len(), guard(&self.pending).len())
    }

    pub(super) fn file(&self, fh: u64) -> Result<Arc<AsyncMutex<OpenFile>>, Errno> {
        guard(&self.files).get(&fh).map(|e| e.file.clone()).ok_or(Errno::EBADF)
    }

    fn new_file(
        &self,
        ino: u64,
        node: NodeRef,
        session: Session,
        handle: Handle,
        stat: &NodeStat,
        flags: i32,
    ) -> OpenFile {
        OpenFile {
            fh: 0,
            ino,
            node,
            session,
            handle,
            instance: stat.instance_number,
            append: flags & libc::O_APPEND != 0,
            created: false,
            contents: None,
            dirty: false,
            appended: Vec::new(),
            failed: false,
            own_lock: None,
            fence: None,
        }
    }

    /// An open for writing with `O_TRUNC` by thread `tid` empties the open's copy.
    async fn truncate_at_open(&self, f: &mut OpenFile, flags: i32, tid: u32) {
        if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
            let lineage = if guard(&self.locks).holds_on(&f.node) { lineage_of(tid).await } else { Vec::new() };
            self.begin_change(f, &lineage);
            f.truncate(0);
        }
    }

    /// An open by thread `tid`.
    pub async fn open(&self, uid: u32, ino: u64, flags: i32, tid: u32) -> Result<u64, Errno> {
        let node = self.node(ino)?;
        let (session, handle, stat) = self.open_node(uid, &node, OpenOptions::default()).await?;
        if stat.is_directory {
            return Err(Errno::from_i32(libc::EISDIR));
        }
        allows(&handle, flags, true)?;
        let mut f = self.new_file(ino, node, session, handle, &stat, flags);
        self.truncate_at_open(&mut f, flags, tid).await;
        Ok(self.add_file(f))
    }

    /// A create by thread `tid`.
    pub async fn create(
        &self,
        uid: u32,
        parent: u64,
        name: &OsStr,
        flags: i32,
        tid: u32,
    ) -> Result<(Answer, u64), Errno> {
        let node = self.child(parent, name)?;
        let before = self.before(Some(&node));
        let ephemeral = self.node(parent).is_ok_and(|dir| guard(&self.ephemeral_dirs).contains(&dir));
        let o = OpenOptions { create: true, exclusive: flags & libc::O_EXCL != 0, ephemeral, ..Default::default() };
        let (session, handle, stat) = self.open_node(uid, &node, o).await?;
        if ephemeral && stat.is_ephemeral {
            guard(&self.ephemeral_files).insert(node.clone(), session.clone());
        }
        if stat.is_directory {
            return Err(Errno::from_i32(libc::EISDIR));
        }
        allows(&handle, flags, false)?;
        let ino = guard(&self.inodes).lookup(&node);
        let answer = self.answer(ino, &node, &stat, &session, before);
        let mut f = self.new_file(ino, node, session, handle, &stat, flags);
        self.truncate_at_open(&mut f, flags, tid).await;
        f.created = true;
        *guard(&self.fresh).entry(ino).or_default() += 1;
        let fh = self.add_file(f);
        Ok((answer, fh))
    }

    pub async fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, Errno> {
        let file = self.file(fh)?;
        let mut f = file.lock().await;
        f.usable()?;
        // A read from the start takes the contents afresh (linearizable: the session's cache
        // is kept by the master's invalidations); later offsets continue that copy, so one
        // read loop sees one version, whole. A read at or past the copy's end looks again,
        // for a file that grew since (`tail -f` reads on from where it stopped).
        let at_end = f.contents.as_ref().is_some_and(|c| offset >= c.len() as u64);
        if offset == 0 && !f.changed() {
            f.contents = None;
        } else if at_end && !f.changed() {
            f.take_growth().await.map_err(errno)?;
        }
        f.load().await.map_err(errno)?;
        let contents = f.contents.as_deref().unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(contents.len());
        let end = start.saturating_add(size as usize).min(contents.len());
        Ok(contents[start..end].to_vec())
    }

    /// A write by thread `tid`; `append`: the open's flags have `O_APPEND` now (`fcntl` may
    /// set it).
    pub async fn write(&self, fh: u64, offset: u64, data: &[u8], append: bool, tid: u32) -> Result<u32, Errno> {
        // The writer's lineage is read before waiting for the open: by then it may be gone.
        let lineage = self.lineage_if_locked(fh, tid).await;
        let file = self.file(fh)?;
        let mut f = file.lock().await;
        f.usable()?;
        self.begin_change(&mut f, &lineage);
        if f.write_needs_copy(append) {
            f.load().await.map_err(errno)?;
        }
        f.write(offset, data, append).ok_or(Errno::from_i32(libc::EFBIG))?;
        self.set_pending(&f);
        Ok(data.len() as u32)
    }

    /// A change of `f` by thread `tid` is about to be made. The first since its last store
    /// fixes the lock the changes are made under (see `OpenFile::fence`).
    fn begin_change(&self, f: &mut OpenFile, lineage: &[u32]) {
        if f.changed() {
            return;
        }
        let own = f.own_lock.clone().filter(|(owner, sequencer)| {
            guard(&self.locks)
                .get(&f.lock_key(*owner))
                .is_some_and(|h| !h.releasing && h.session == f.session.id() && h.sequencer == *sequencer)
        });
        f.fence = own.or_else(|| guard(&self.locks).held_for(&f.node, f.instance, f.session.id(), lineage));
    }

    /// The lineage of thread `tid` (see [`lineage`]) if this host holds a lock of open `fh`'s
    /// node (else nothing: no /proc walk for a file nobody here locks).
    async fn lineage_if_locked(&self, fh: u64, tid: u32) -> Vec<u32> {
        let node = guard(&self.files).get(&fh).map(|e| e.node.clone());
        match node {
            Some(node) if guard(&self.locks).holds_on(&node) => lineage_of(tid).await,
            _ => Vec::new(),
        }
    }

    /// The lock held on `node` (`instance`) in `session` by the process of thread `tid` or
    /// one of its ancestors, if any: its owner and sequencer.
    pub(super) async fn lock_of_process(
        &self,
        node: &NodeRef,
        instance: u64,
        session: u64,
        tid: u32,
    ) -> Option<(u64, String)> {
        if !guard(&self.locks).holds_any(node, instance, session) {
            return None; // no /proc walk for a file this session holds no lock of
        }
        let lineage = lineage_of(tid).await;
        guard(&self.locks).held_for(node, instance, session, &lineage)
    }

    /// Stores `f`'s changes, carrying the sequencer of the lock they were made under: the
    /// open's own (see `OpenFile::fence`), else the lock `owner` (the closing process's)
    /// holds now.
    async fn commit(&self, f: &mut OpenFile, owner: Option<u64>) -> Result<(), Errno> {
        if f.failed {
            self.clear_pending(f);
            // The kernel may have taken the refused write's size.
            self.forget_kernel(f.ino);
            return Err(Errno::from_i32(libc::EFBIG));
        }
        let sequencer = match (&f.fence, owner) {
            (Some((_, s)), _) => s.clone(),
            (None, Some(o)) => guard(&self.locks)
                .get(&f.lock_key(o))
                .filter(|h| h.session == f.session.id() && !h.releasing)
                .map(|h| h.sequencer)
                .unwrap_or_default(),
            (None, None) => String::new(),
        };
        let r = f.commit(&sequencer).await.map_err(errno);
        if !f.changed() {
            self.clear_pending(f);
        }
        if r.is_err() {
            self.forget_kernel(f.ino);
        }
        r
    }

    /// `close` of one descriptor: stores the contents and drops the process's `fcntl` lock
    /// (POSIX: any close by a process releases its locks on the file).
    pub async fn flush(&self, fh: u64, lock_owner: u64) -> Result<(), Errno> {
        // The lock this close lets go of is the one held as it begins, before anything waits:
        // a close that goes on after its process is gone (killed while it stored) must not
        // release a lock that a later process, given the same owner id, has taken over since
        // (a take-over gives the entry a new gate; see `FsInner::setlk`).
        let (key, file) = {
            let files = guard(&self.files);
            let e = files.get(&fh).ok_or(Errno::EBADF)?;
            (LockKey { node: e.node.clone(), instance: e.instance, owner: lock_owner }, e.file.clone())
        };
        let gate = guard(&self.locks).get(&key).map(|h| h.gate);
        let mut f = file.lock().await;
        let stored = self.commit(&mut f, Some(lock_owner)).await;
        let session = f.session.clone();
        drop(f);
        if let Some(gate) = gate {
            self.unlock_on_close(&key, &session, &|h| Arc::ptr_eq(&h.gate, &gate)).await;
        }
        stored
    }

    pub async fn fsync(&self, fh: u64) -> Result<(), Errno> {
        let file = self.file(fh)?;
        let mut f = file.lock().await;
        self.commit(&mut f, None).await
    }

    /// The last close of an open file; `flock_owner` if the kernel says a `flock` lock of
    /// this file must go.
    pub async fn release(&self, fh: u64, flock_owner: Option<u64>) {
        let Some(OpenEntry { file, .. }) = guard(&self.files).remove(&fh) else { return };
        let mut f = file.lock().await;
        // The flock lock of this open, if it still has it: the owner's id may be a later
        // open's by now, which took the lock over (see `FsInner::setlk`): this close must
        // neither store under it nor take it away.
        let flock_owner = flock_owner.filter(|&o| guard(&self.locks).get(&f.lock_key(o)).is_some_and(|h| h.fh == fh));
        if let Err(e) = self.commit(&mut f, flock_owner).await {
            tracing::warn!(path = %f.node.path, "storing the contents at the last close: {e:?}");
        }
        self.closed(&f);
        if let Some(owner) = flock_owner {
            self.unlock_on_close(&f.lock_key(owner), &f.session, &|h| h.fh == fh).await;
        }
    }

    /// Whether a `chmod` of `ino` may succeed though it changes nothing (modes are not the
    /// cell's: its ACLs decide access): only while this host has the file open from its
    /// create. Tools that make a file give it a private mode until it is complete
    /// (`mkstemp` and `fchmod(0600)` in `install` and `rsync -a`, then `chmod` to the mode
    /// `stat` shows); a `chmod` of an existing file is refused, so nobody believes a file
    /// protected by a mode it does not have.
    pub(super) fn may_set_mode(&self, ino: u64) -> bool {
        guard(&self.fresh).contains_key(&ino)
    }

    /// The open files of `node`, in the order of their kernel handles.
    pub(super) fn files_of(&self, node: &NodeRef) -> Vec<(u64, Arc<AsyncMutex<OpenFile>>)> {
        let mut files: Vec<_> =
            guard(&self.files).iter().filter(|(_, e)| e.node == *node).map(|(fh, e)| (*fh, e.file.clone())).collect();
        files.sort_by_key(|(fh, _)| *fh);
        files
    }

    /// Renames the file `from` to `to` in the cell. This host's opens of it are held through
    /// the rename (taken in handle order; nothing else holds two): what they wrote and have
    /// not stored goes first, so the rename carries it (a program may rename a temporary file
    /// before it closes it), and then they go on at the new name, as a local file's
    /// descriptors follow it, none acting on the old name in between. An open whose handle at
    /// the new name cannot be had keeps the old one, whose calls then fail with `ESTALE`.
    pub(super) async fn rename_file(
        &self,
        uid: u32,
        from: &NodeRef,
        to: &NodeRef,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let files = self.files_of(from);
        let mut opens = Vec::with_capacity(files.len());
        for (fh, file) in &files {
            opens.push((*fh, file.lock().await));
        }
        // Another rename may have moved some while this one waited for them.
        opens.retain(|(_, f)| f.node == *from);
        for (_, f) in opens.iter_mut() {
            // A refused write's open stores nothing (see `commit`).
            if f.changed() && !f.failed {
                self.commit(f, None).await?;
            }
        }
        let (session, handle, stat) = self.open_node(uid, from, OpenOptions::default()).await?;
        if stat.is_directory {
            return Err(Errno::from_i32(libc::EXDEV));
        }
        session.rename(&handle, &to.path, no_replace).await.map_err(errno)?;
        guard(&self.inodes).moved(from, to);
        for (fh, f) in opens.iter_mut() {
            match f.session.open_node(&to.path, OpenOptions::default()).await {
                Ok((handle, stat)) => {
                    f.node = to.clone();
                    f.handle = handle;
                    f.instance = stat.instance_number;
                    if let Some(e) = guard(&self.files).get_mut(fh) {
                        e.node = to.clone();
                        e.instance = stat.instance_number;
                    }
                }
                Err(e) => {
                    tracing::warn!(from = %from.path, to = %to.path, "an open file's handle after a rename: {e}")
                }
            }
        }
        Ok(())
    }

    /// A truncate by thread `tid`.
    pub async fn truncate(&self, uid: u32, ino: u64, size: u64, fh: Option<u64>, tid: u32) -> Result<Answer, Errno> {
        if size > MAX_CONTENTS {
            return Err(Errno::from_i32(libc::EFBIG));
        }
        if let Some(file) = fh.and_then(|fh| self.file(fh).ok()) {
            let lineage = match fh {
                Some(fh) => self.lineage_if_locked(fh, tid).await,
                None => Vec::new(),
            };
            let mut f = file.lock().await;
            f.load().await.map_err(errno)?;
            self.begin_change(&mut f, &lineage);
            f.truncate(size);
            self.set_pending(&f);
        } else {
            // `truncate(1)` on a path: read, cut and store at once, under the caller's lock.
            let node = self.node(ino)?;
            let (session, handle, stat) = self.open_node(uid, &node, OpenOptions::default()).await?;
            let (contents, _) = session.get(&handle).await.map_err(errno)?;
            let mut contents = contents.to_vec();
            contents.resize(size as usize, 0);
            let fence = self.lock_of_process(&node, stat.instance_number, session.id(), tid).await;
            let sequencer = fence.map(|(_, s)| s).unwrap_or_default();
            session.set(&handle, contents.into(), None, &sequencer).await.map_err(errno)?;
        }
        self.getattr(uid, ino, fh).await
    }
}
