//! What the kernel may cache of the cells, and how it is made to forget: the kernel's
//! attribute, entry and page caches are a Chubby client cache (Chubby §2.5) kept on top of
//! the session's, and stay linearizable by these rules.
//!
//! - The kernel is given a time to live for attributes and entries only for a node the
//!   session caches: the master then invalidates the node at the session before any write to
//!   it commits (a delete or rename included), and the session's hook calls
//!   [`KernelCache::invalidate`] before it acks. (File contents are not left in the kernel's
//!   page cache, see [`super`].)
//! - [`KernelCache::invalidate`] moves the epochs, then drops each inode's attributes
//!   (`inval_inode` without pages: a page locked by a read waiting on this daemon must not
//!   hold up an ack) before returning, so before the ack.
//! - An answer's attributes get a time to live only if the epoch did not move from the start
//!   of the call to the reply, checked under the gate the hook takes to move it (so no
//!   invalidation passes between the check and the reply), and only for an inode the kernel
//!   had already made before the call began: an invalidation finds nothing to drop in an
//!   inode the kernel has not made yet, while the kernel's attribute versions guard the
//!   attributes of one it has.
//! - Entries (name → inode) are kept only where the kernel has entry epochs
//!   (`FUSE_NOTIFY_INC_EPOCH`, Linux 6.16): the kernel reads its epoch before it sends a
//!   lookup and stamps the entry with it, and an entry stamped before the current epoch is
//!   looked up again at its next use. [`KernelCache::invalidate`] moves the kernel's epoch,
//!   so no entry made from an answer older than the invalidation outlives it, even one whose
//!   reply the kernel had not yet hashed (dropping a single entry with `inval_entry` would
//!   miss that one, and takes the directory's lock, which this host's own `unlink` may hold
//!   while its write waits for this very ack). Every entry is looked up again once after any
//!   invalidation: cheap, since the session's cache answers. Without entry epochs every path
//!   lookup reaches the daemon, which answers it from the session's cache.
//! - A time to live never runs past the local lease; when the lease runs out without a grant
//!   the session flushes its cache and the hook drops everything.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{OnceLock, RwLock};
use std::time::{Duration, Instant};

use fuser::{INodeNo, Notifier};

/// Longest time to live given to the kernel (the lease bounds it too).
const MAX_TTL: Duration = Duration::from_secs(30);

/// The notification that moves the kernel's entry epoch (it carries nothing else).
const FUSE_NOTIFY_INC_EPOCH: i32 = 8;

/// Moves of the kernel's entry epoch after which no entry is kept any more: the kernel keeps
/// the epoch in 32 bits, and an entry stamped just before it wraps to 0 would compare newer
/// than every later epoch. (At a thousand invalidations a second, after some 50 days.)
const MAX_EPOCH_MOVES: u64 = u32::MAX as u64 - (1 << 20);

/// The FUSE device, to move the kernel's entry epoch (a notification fuser does not send).
struct EntryEpoch(File);

impl EntryEpoch {
    /// The device `fd`, if its kernel has entry epochs: the first move tells (an older
    /// kernel refuses the notification; a move the kernel makes nothing of is harmless).
    fn probe(fd: OwnedFd) -> Option<EntryEpoch> {
        let e = EntryEpoch(File::from(fd));
        match e.advance() {
            Ok(()) => Some(e),
            Err(err) => {
                tracing::info!("the kernel has no entry epochs ({err}): every path lookup reaches this daemon");
                None
            }
        }
    }

    fn advance(&self) -> std::io::Result<()> {
        // fuse_out_header: length, the notification's code in the error field, unique 0.
        let mut msg = [0u8; 16];
        msg[0..4].copy_from_slice(&16u32.to_ne_bytes());
        msg[4..8].copy_from_slice(&FUSE_NOTIFY_INC_EPOCH.to_ne_bytes());
        let written = (&self.0).write(&msg)?;
        if written != msg.len() {
            return Err(std::io::Error::other(format!("{written} of 16 bytes written")));
        }
        Ok(())
    }
}

#[derive(Default)]
pub struct KernelCache {
    notifier: OnceLock<Notifier>,
    /// Set once attached if the kernel has entry epochs: then entries may be kept.
    entries: OnceLock<EntryEpoch>,
    /// A move of the entry epoch failed: entries are kept no more.
    entries_broken: AtomicBool,
    /// Moves of the kernel's entry epoch so far (see [`MAX_EPOCH_MOVES`]).
    epoch_moves: AtomicU64,
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
    /// Starts talking to the kernel (once the file system is mounted); `device`: the FUSE
    /// device, through which entry epochs are moved if the kernel has them.
    pub fn attach(&self, notifier: Notifier, device: Option<OwnedFd>) {
        if let Some(e) = device.and_then(EntryEpoch::probe) {
            let _ = self.entries.set(e);
        }
        let _ = self.notifier.set(notifier);
    }

    pub fn before(&self, known: bool) -> Before {
        Before { epoch: *self.epoch.read().unwrap_or_else(|p| p.into_inner()), known }
    }

    /// Runs `reply` with how long the kernel may keep the answer's attributes and its entry
    /// (zero for either not allowed). Both need `cacheable` (the session caches the node,
    /// nothing unsaved here). Attributes also need the inode known before the call and no
    /// invalidation since; the entry needs the kernel's entry epochs, which guard it, and
    /// `open_to_all`: the kernel's entries serve every user of the host, whose own lookups
    /// would be refused a node whose ACLs do not name them.
    pub fn reply<T>(
        &self,
        before: Before,
        cacheable: bool,
        open_to_all: bool,
        lease_end: Instant,
        reply: impl FnOnce(Duration, Duration) -> T,
    ) -> T {
        let epoch = self.epoch.read().unwrap_or_else(|p| p.into_inner());
        let attached = self.notifier.get().is_some();
        let ttl = lease_end.saturating_duration_since(Instant::now()).min(MAX_TTL);
        let attr = attached && cacheable && before.known && *epoch == before.epoch;
        let entry = attached && cacheable && open_to_all && self.keeps_entries();
        let of = |ok: bool| if ok { ttl } else { Duration::ZERO };
        reply(of(attr), of(entry))
    }

    /// Whether the kernel may keep entries: it has entry epochs, and they can still be moved.
    fn keeps_entries(&self) -> bool {
        self.entries.get().is_some()
            && !self.entries_broken.load(Ordering::Relaxed)
            && self.epoch_moves.load(Ordering::Relaxed) < MAX_EPOCH_MOVES
    }

    /// Drops the kernel's attributes of `inodes`, and every entry it keeps. (Also for this
    /// session's own write of a node's contents, which changes no name: the write takes the
    /// session's registration as the node's cacher away at the master until the write is
    /// cached again, and a delete meanwhile would then reach no hook of this host.)
    pub fn invalidate(&self, inodes: &[u64]) {
        {
            // Under the gate: no answer is told entries are kept between a failed move and
            // the mark that stops it.
            let mut epoch = self.epoch.write().unwrap_or_else(|p| p.into_inner());
            *epoch += 1;
            if let Some(e) = self.entries.get() {
                self.epoch_moves.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = e.advance() {
                    // Entries kept until now may outlive the change: keep none from now on.
                    // (The notification cannot fail but on a connection gone, entries with it.)
                    self.entries_broken.store(true, Ordering::Relaxed);
                    tracing::warn!("moving the kernel's entry epoch: {err}; names are no longer kept");
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_kept_no_more_before_the_kernels_epoch_wraps() {
        let cache = KernelCache::default();
        assert!(!cache.keeps_entries(), "not without entry epochs");
        let sink = File::options().write(true).open("/dev/null").expect("/dev/null");
        let _ = cache.entries.set(EntryEpoch(sink));
        assert!(cache.keeps_entries());
        cache.epoch_moves.store(MAX_EPOCH_MOVES - 1, Ordering::Relaxed);
        cache.invalidate(&[]);
        assert!(!cache.keeps_entries(), "the last move allowed was made");
    }
}
