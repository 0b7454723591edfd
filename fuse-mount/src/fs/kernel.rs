//! What the kernel may cache of the cells, and how it is made to forget: the kernel's
//! attribute, entry and page caches are a Chubby client cache (Chubby §2.5) kept on top of
//! the session's, and stay linearizable by these rules.
//!
//! - The kernel is given a time to live for attributes only for a node the session caches:
//!   the master then invalidates the node at the session before any write to it commits, and
//!   the session's hook calls [`KernelCache::invalidate`] before it acks. (File contents are
//!   not left in the kernel's page cache, see [`super`]; directory entries get no time to live,
//!   see below.)
//! - [`KernelCache::invalidate`] moves the epoch, then drops each inode's attributes
//!   (`inval_inode` without pages: a page locked by a read waiting on this daemon must not
//!   hold up an ack) before returning, so before the ack.
//! - An answer gets a time to live only if the epoch did not move from the start of the call
//!   to the reply, checked under the gate the hook takes to move it (so no invalidation passes
//!   between the check and the reply), and only for an inode the kernel had already made
//!   before the call began: an invalidation finds nothing to drop in an inode the kernel has
//!   not made yet, while the kernel's attribute versions guard the attributes of one it has.
//! - Entries (name → inode) have no such guard: a dentry the kernel hashes just after an
//!   invalidation looked for it would outlive the node, and an `open(O_CREAT)` of a deleted
//!   name would then fail. So every path lookup reaches the daemon, which answers it from the
//!   session's cache.
//! - A time to live never runs past the local lease; when the lease runs out without a grant
//!   the session flushes its cache and the hook drops everything.

use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};

/// Longest time to live given to the kernel (the lease bounds it too).
const MAX_TTL: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct KernelCache {
    notifier: OnceLock<Notifier>,
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
        let _ = self.notifier.set(notifier);
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

    /// Drops the kernel's attributes of `inodes`.
    pub fn invalidate(&self, inodes: &[u64]) {
        *self.epoch.write().unwrap_or_else(|p| p.into_inner()) += 1;
        let Some(n) = self.notifier.get() else { return };
        let started = Instant::now();
        for &ino in inodes {
            // Offset -1: attributes only, no pages.
            if let Err(e) = n.inval_inode(INodeNo(ino), -1, 0) {
                tracing::debug!(ino, "dropping the kernel's attributes: {e}");
            }
        }
        if started.elapsed() > Duration::from_secs(1) {
            tracing::warn!("the kernel took {:?} to drop {} inodes' attributes", started.elapsed(), inodes.len());
        }
    }
}
