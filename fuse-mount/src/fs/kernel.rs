//! What the kernel may cache of the cells, and how it is made to forget: the kernel's
//! attribute, entry and page caches are a Chubby client cache (Chubby §2.5) kept on top of
//! the session's, and stay linearizable by these rules.
//!
//! - The kernel is given a time to live (attributes, entries) only for a node the session
//!   caches: the master then invalidates the node at the session before any write to it
//!   commits, and the session's hook calls [`KernelCache::invalidate`] before it acks. (File
//!   contents are not left in the kernel's page cache: see [`super`].)
//! - [`KernelCache::invalidate`] moves the epoch, then drops each inode's attributes (and any
//!   pages: `inval_inode`) before returning, so before the ack. Dentries (`inval_entry`) are dropped after the ack, by a thread of their own: the kernel
//!   takes the parent directory's lock for that, and the write waiting for the ack may be this
//!   host's own `unlink`, which holds it. A dentry that outlives the ack names an inode whose
//!   attributes are gone, so every use of it reaches the daemon, which answers by path.
//! - An answer gets a time to live only if the epoch did not move from the start of the call
//!   to the reply, checked under the gate the hook takes to move it (so no invalidation passes
//!   between the check and the reply), and only for an inode the kernel had already made
//!   before the call began: an invalidation finds nothing to drop in an inode the kernel has
//!   not made yet, while the kernel's attribute versions guard the attributes of one it has.
//! - A time to live never runs past the local lease; when the lease runs out without a grant
//!   the session flushes its cache and the hook drops everything.

use std::ffi::OsString;
use std::sync::{mpsc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};

/// Longest time to live given to the kernel (the lease bounds it too).
const MAX_TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct KernelCache {
    notifier: OnceLock<Notifier>,
    entries: Mutex<Option<mpsc::Sender<(u64, OsString)>>>,
    /// Moved by every invalidation; answers check it under the read side.
    epoch: RwLock<u64>,
}

/// What a call saw when it began: whether the kernel may cache its answer is decided at the
/// reply.
#[derive(Clone, Copy, Debug)]
pub struct Before {
    epoch: u64,
    pub known: bool,
}

impl KernelCache {
    /// Starts talking to the kernel (once the file system is mounted).
    pub fn attach(&self, notifier: Notifier) {
        let (tx, rx) = mpsc::channel::<(u64, OsString)>();
        let worker = notifier.clone();
        let spawned = std::thread::Builder::new().name("inval-entry".into()).spawn(move || {
            for (parent, name) in rx {
                if let Err(e) = worker.inval_entry(INodeNo(parent), &name) {
                    tracing::debug!("dropping the kernel's entry {name:?}: {e}");
                }
            }
        });
        match spawned {
            Ok(_) => *self.entries.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx),
            Err(e) => tracing::error!("no thread for entry invalidations: {e}"),
        }
        let _ = self.notifier.set(notifier);
    }

    /// Stops the entry thread (it ends once its queue is empty).
    pub fn detach(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    pub fn before(&self, known: bool) -> Before {
        Before { epoch: *self.epoch.read().unwrap_or_else(|p| p.into_inner()), known }
    }

    /// Runs `reply` with how long the kernel may keep the answer: `cacheable` (the session
    /// caches the node, nothing unsaved here), the inode known before the call, and no
    /// invalidation since; otherwise zero.
    pub fn reply<T>(
        &self,
        before: Before,
        cacheable: bool,
        lease_end: Instant,
        reply: impl FnOnce(Duration) -> T,
    ) -> T {
        let epoch = self.epoch.read().unwrap_or_else(|p| p.into_inner());
        let ok = self.notifier.get().is_some() && cacheable && before.known && *epoch == before.epoch;
        let ttl = if ok { lease_end.saturating_duration_since(Instant::now()).min(MAX_TTL) } else { Duration::ZERO };
        reply(ttl)
    }

    /// Drops what the kernel caches of `inodes` (attributes and pages now; entries, given as
    /// (parent, name), right after).
    pub fn invalidate(&self, inodes: &[u64], entries: Vec<(u64, OsString)>) {
        *self.epoch.write().unwrap_or_else(|p| p.into_inner()) += 1;
        let Some(n) = self.notifier.get() else { return };
        let started = Instant::now();
        for &ino in inodes {
            if let Err(e) = n.inval_inode(INodeNo(ino), 0, 0) {
                tracing::debug!(ino, "dropping the kernel's attributes and pages: {e}");
            }
        }
        if started.elapsed() > Duration::from_secs(1) {
            tracing::warn!("the kernel took {:?} to drop {} inodes", started.elapsed(), inodes.len());
        }
        if let Some(tx) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            for e in entries {
                let _ = tx.send(e);
            }
        }
    }
}
