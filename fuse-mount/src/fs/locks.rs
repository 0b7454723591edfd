//! `flock(2)` and whole-file `fcntl(2)` locks as the cell's locks (DESIGN.md, FUSE mapping).
//!
//! The holder is (this mount's session, the kernel's lock owner): for `flock` the open file,
//! for `fcntl` the process, so processes on one host conflict as on a local file system.
//! The kernel releases a `flock` lock on the last close of its file and a `fcntl` lock on
//! any close by its process; both arrive here (release with the flock owner, flush with the
//! process's), and this table says which closes must tell the cell.
//!
//! A blocked `F_SETLKW`/`flock` waits in the cell's FIFO queue. fuser does not pass on the
//! kernel's FUSE_INTERRUPT, so the waiting thread's pending signals are watched instead: a
//! signal it would take (Ctrl-C, `flock -w`'s alarm, a kill) cancels the queued Acquire and
//! the call fails with `EINTR`, as it would locally.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proto::chubby::{Handle, LockMode};

use super::inodes::NodeRef;

/// The kernel's "to the end of the file" (`OFFSET_MAX`): whole-file locks end here.
pub const OFFSET_MAX: u64 = i64::MAX as u64;

/// Whether a lock request covers the whole file: byte ranges are not Chubby locks.
pub fn whole_file(start: u64, end: u64) -> bool {
    start == 0 && end == OFFSET_MAX
}

/// Which lock: of the node instance at a path (a node made since at the same path is another
/// node, with a lock of its own), held by a lock owner.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockKey {
    pub node: NodeRef,
    pub instance: u64,
    pub owner: u64,
}

/// A lock this mount holds in the cell.
#[derive(Clone)]
pub struct Held {
    /// The session that holds it.
    pub session: u64,
    pub mode: LockMode,
    /// The handle that took it, which releases it (even if its user may no longer open the
    /// node, or another descriptor of the owner is of another node at the path).
    pub handle: Handle,
    /// Its holder let go (closed the file) and the cell's Release has not succeeded yet: a
    /// task retries it until it does (see `FsInner::release_until_done`).
    pub releasing: bool,
    /// Held by whoever sends this lock's Release, so two are never in flight at once from
    /// here (a late one would release a lock taken again meanwhile).
    pub gate: Arc<tokio::sync::Mutex<()>>,
    /// The process that took it (in this daemon's pid namespace), which `F_GETLK` names.
    pub pid: u32,
    /// The open file it was taken through (its `fh`), or last asked for through: the last
    /// close of that open lets a `flock` lock go, and only that open's.
    pub fh: u64,
    /// Its sequencer, which the stores of files written under it carry.
    pub sequencer: String,
    /// Whether the cell is known to hold what this entry says; when not, the owner's next
    /// request waits until the cell has said (see `FsInner::settle`).
    pub unsettled: Unsettled,
    /// Not a lock taken but a request to withdraw, `releasing` until the cell has it: an
    /// Acquire that timed out or was interrupted, which may have been granted.
    pub withdraw: bool,
}

/// Who takes a lock: the process, and the open file it goes through.
#[derive(Clone, Copy, Debug)]
pub struct Taker {
    pub pid: u32,
    pub fh: u64,
}

/// What a lock entry's owner was told, when the cell may hold something else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsettled {
    /// The entry says what the cell holds.
    No,
    /// A conversion's outcome is unknown here: the entry takes the mode the cell holds.
    AsHeld,
    /// An upgrade its owner was told failed may have been granted: it goes back to shared.
    KeepShared,
}

/// What [`HeldLocks::renew`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Renewed {
    /// The entry was the one converted, and says the new grant now.
    Done,
    /// No entry: released meanwhile.
    Gone,
    /// Another entry, or this one converted again meanwhile: what the cell holds is unknown.
    Changed,
}

/// Locks this mount holds in the cell.
#[derive(Default)]
pub struct HeldLocks {
    held: HashMap<LockKey, Held>,
}

impl HeldLocks {
    pub fn get(&self, key: &LockKey) -> Option<Held> {
        self.held.get(key).cloned()
    }

    pub fn insert(&mut self, key: LockKey, session: u64, mode: LockMode, handle: Handle, at: Taker, sequencer: String) {
        let gate = Arc::default();
        let unsettled = Unsettled::No;
        let Taker { pid, fh } = at;
        self.held.insert(
            key,
            Held { session, mode, handle, releasing: false, gate, pid, fh, sequencer, unsettled, withdraw: false },
        );
    }

    /// Enters the withdrawal of an Acquire of `key` that may have been granted (see
    /// [`Held::withdraw`]), unless an entry exists (then the cell's grant is that entry's).
    /// Its gate, if entered.
    pub fn insert_withdrawal(
        &mut self,
        key: LockKey,
        session: u64,
        mode: LockMode,
        handle: Handle,
        at: Taker,
    ) -> Option<Arc<tokio::sync::Mutex<()>>> {
        if self.held.contains_key(&key) {
            return None;
        }
        let gate: Arc<tokio::sync::Mutex<()>> = Arc::default();
        let held = Held {
            session,
            mode,
            handle,
            releasing: true,
            gate: gate.clone(),
            pid: at.pid,
            fh: at.fh,
            sequencer: String::new(),
            unsettled: Unsettled::No,
            withdraw: true,
        };
        self.held.insert(key, held);
        Some(gate)
    }

    /// The entry of `converted` (by its gate), if it still says that grant (its sequencer),
    /// says the lock is held in `mode` under `sequencer` now.
    pub fn renew(&mut self, key: &LockKey, converted: &Held, mode: LockMode, sequencer: String) -> Renewed {
        match self.held.get_mut(key) {
            None => Renewed::Gone,
            Some(h) if Arc::ptr_eq(&h.gate, &converted.gate) && h.sequencer == converted.sequencer => {
                h.mode = mode;
                h.sequencer = sequencer;
                Renewed::Done
            }
            Some(_) => Renewed::Changed,
        }
    }

    /// Marks the entry whose gate is `gate` as unsettled, `how`.
    pub fn mark_unsettled(&mut self, key: &LockKey, gate: &Arc<tokio::sync::Mutex<()>>, how: Unsettled) {
        if let Some(h) = self.held.get_mut(key).filter(|h| Arc::ptr_eq(&h.gate, gate)) {
            h.unsettled = how;
        }
    }

    /// The entry whose gate is `gate` says what the cell holds: `mode` under `sequencer`.
    pub fn settle(&mut self, key: &LockKey, gate: &Arc<tokio::sync::Mutex<()>>, mode: LockMode, sequencer: String) {
        if let Some(h) = self.held.get_mut(key).filter(|h| Arc::ptr_eq(&h.gate, gate)) {
            h.mode = mode;
            h.sequencer = sequencer;
            h.unsettled = Unsettled::No;
        }
    }

    /// Whether any lock of `node` is held here.
    pub fn holds_on(&self, node: &NodeRef) -> bool {
        self.held.keys().any(|k| k.node == *node)
    }

    /// Whether session `session` holds a lock of `node` (`instance`) for anyone.
    pub fn holds_any(&self, node: &NodeRef, instance: u64, session: u64) -> bool {
        self.held.iter().any(|(k, h)| k.node == *node && k.instance == instance && h.session == session && !h.releasing)
    }

    /// The lock of `node` (`instance`) that session `session` holds for the nearest of
    /// `lineage` (a process, then its parent, and so on): its owner and sequencer.
    pub fn held_for(&self, node: &NodeRef, instance: u64, session: u64, lineage: &[u32]) -> Option<(u64, String)> {
        lineage.iter().find_map(|pid| {
            self.held
                .iter()
                .find(|(k, h)| {
                    k.node == *node && k.instance == instance && h.session == session && h.pid == *pid && !h.releasing
                })
                .map(|(k, h)| (k.owner, h.sequencer.clone()))
        })
    }

    /// The process on this host that holds the lock of `node` (`instance`) as (`session`,
    /// `owner`), if one does.
    pub fn pid_of(&self, node: &NodeRef, instance: u64, session: u64, owner: u64) -> Option<u32> {
        let key = LockKey { node: node.clone(), instance, owner };
        self.held.get(&key).filter(|h| h.session == session && !h.releasing).map(|h| h.pid)
    }

    pub fn remove(&mut self, key: &LockKey) {
        self.held.remove(key);
    }

    /// Whether the entry is still the one whose gate is `gate` (not one taken since).
    pub fn is(&self, key: &LockKey, gate: &Arc<tokio::sync::Mutex<()>>) -> Option<&Held> {
        self.held.get(key).filter(|h| Arc::ptr_eq(&h.gate, gate))
    }

    /// The entry whose gate is `gate`, if it is not being let go, is from now on the lock of
    /// process `at.pid` through open `at.fh` (see `FsInner::setlk`), under a new gate: a close
    /// that began before, waiting on the old gate or holding it, finds it no longer its own.
    pub fn take_over(
        &mut self,
        key: &LockKey,
        gate: &Arc<tokio::sync::Mutex<()>>,
        at: Taker,
    ) -> Option<Arc<tokio::sync::Mutex<()>>> {
        let h = self.held.get_mut(key).filter(|h| Arc::ptr_eq(&h.gate, gate) && !h.releasing)?;
        h.fh = at.fh;
        h.pid = at.pid;
        h.gate = Arc::default();
        Some(h.gate.clone())
    }

    /// Gives the entry whose gate is `gate`, if it is still open `fh`'s and settled, back to
    /// `to`, the process and open it was taken over from.
    pub fn hand_back(&mut self, key: &LockKey, gate: &Arc<tokio::sync::Mutex<()>>, fh: u64, to: Taker) -> bool {
        let mine =
            |h: &&mut Held| Arc::ptr_eq(&h.gate, gate) && h.fh == fh && !h.releasing && h.unsettled == Unsettled::No;
        match self.held.get_mut(key).filter(mine) {
            Some(h) => {
                h.fh = to.fh;
                h.pid = to.pid;
                true
            }
            None => false,
        }
    }

    /// Removes the entry if it is still the one whose gate is `gate`.
    pub fn remove_if(&mut self, key: &LockKey, gate: &Arc<tokio::sync::Mutex<()>>) {
        if self.is(key, gate).is_some() {
            self.held.remove(key);
        }
    }

    /// Marks the entry whose gate is `gate` as let go, its Release still to be done.
    pub fn mark_releasing(
        &mut self,
        key: &LockKey,
        gate: &Arc<tokio::sync::Mutex<()>>,
        closing: impl Fn(&Held) -> bool,
    ) -> bool {
        match self.held.get_mut(key).filter(|h| Arc::ptr_eq(&h.gate, gate) && closing(h)) {
            Some(h) => {
                h.releasing = true;
                true
            }
            None => false,
        }
    }
}

/// What a holder's sequencer says of it: its mode, session and owner. (Sequencers are
/// opaque to users; this daemon and the cell are built together. Format:
/// `seq1:instance:lock_generation:grant:x|s:session:owner:path`.)
pub fn holder_of(sequencer: &str) -> Option<(LockMode, u64, u64)> {
    let mut it = sequencer.splitn(8, ':');
    if it.next()? != "seq1" {
        return None;
    }
    let mode = match it.nth(3)? {
        "x" => LockMode::LockExclusive,
        "s" => LockMode::LockShared,
        _ => return None,
    };
    let session = it.next()?.parse().ok()?;
    let owner = it.next()?.parse().ok()?;
    Some((mode, session, owner))
}

/// The process of thread `tid` and its ancestors, nearest first (at most 64; none for tid 0,
/// a caller from another pid namespace). A command run by `flock FILE -c CMD` works under
/// the lock its ancestor `flock` holds.
pub fn lineage(tid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    let field = |status: &str, key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u32>().ok())
    };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else { return pids };
    let mut next = if tid == 0 { None } else { field(&status, "Tgid:") };
    while let Some(pid) = next.filter(|p| *p > 1 && pids.len() < 64) {
        pids.push(pid);
        next = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| field(&s, "PPid:"));
    }
    pids
}

/// Whether thread `tid` has a signal it will take pending: its blocked lock call should end
/// with `EINTR`. (A thread blocked in a FUSE call cannot exit, so its status stays readable; a
/// caller outside this daemon's pid namespace comes as tid 0 and is never interrupted, rather
/// than being answered EINTR, restarted by the kernel and answered again, forever.)
pub fn interrupted(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => takes_a_signal(&status),
        Err(_) => false,
    }
}

/// Reads what `read` reads of /proc off the runtime's threads, and gives `default` if it takes
/// longer than `limit`: a process's /proc files block while it is in an exec, and the exec
/// may be waiting for this very daemon (its close-on-exec flush of a file of the mount).
pub async fn from_proc<T: Send + 'static>(limit: Duration, default: T, read: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::time::timeout(limit, tokio::task::spawn_blocking(read)).await {
        Ok(Ok(v)) => v,
        _ => default,
    }
}

/// [`lineage`], read off the runtime's threads (none if /proc does not answer in time).
pub async fn lineage_of(tid: u32) -> Vec<u32> {
    from_proc(Duration::from_millis(500), Vec::new(), move || lineage(tid)).await
}

/// [`interrupted`], read off the runtime's threads (no, if /proc does not answer in time).
pub async fn is_interrupted(tid: u32) -> bool {
    from_proc(Duration::from_millis(100), false, move || interrupted(tid)).await
}

/// Whether thread `tid` is of the `flock(1)` tool. (Its name is read without waiting on the
/// process, unlike most of /proc.)
pub fn is_flock_tool(tid: u32) -> bool {
    tid != 0 && std::fs::read_to_string(format!("/proc/{tid}/comm")).is_ok_and(|c| c.trim_end() == "flock")
}

/// Whether thread `tid` has a fatal signal pending (`kill -9`, or Ctrl-C, SIGTERM and the
/// like where the process does not handle them): it is dying, and a call it waits in should
/// not hold it. Other signals are not taken to interrupt a file call (a program that handles
/// one does not expect a read of a file to fail with `EINTR`), as NFS does.
pub fn dying(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let fatal = std::fs::read_to_string(format!("/proc/{tid}/status")).is_ok_and(|s| fatal_pending(&s));
    // A thread closing its files on the way out (its fatal signal already taken, so no longer
    // pending) is dying too.
    fatal || std::fs::read_to_string(format!("/proc/{tid}/stat")).is_ok_and(|s| exiting(&s))
}

/// From `/proc/TID/stat`: the thread is exiting (PF_EXITING in its flags, the ninth field).
fn exiting(stat: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    // The command name, second, is in parentheses and may hold spaces or parentheses.
    let Some((_, after)) = stat.rsplit_once(')') else { return false };
    after.split_whitespace().nth(6).and_then(|f| f.parse::<u64>().ok()).is_some_and(|f| f & PF_EXITING != 0)
}

/// A `/proc/TID/status` field holding a signal mask.
fn signal_mask(status: &str, key: &str) -> u64 {
    status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).unwrap_or(0)
}

/// From `/proc/TID/status`: a signal pending for the thread or its process and not blocked
/// by the thread. (A fatal signal also shows as SIGKILL pending.)
fn takes_a_signal(status: &str) -> bool {
    (signal_mask(status, "SigPnd:") | signal_mask(status, "ShdPnd:")) & !signal_mask(status, "SigBlk:") != 0
}

/// From `/proc/TID/status`: a fatal signal on its way. The kernel marks every thread of a
/// process a fatal signal is delivered to with SIGKILL pending.
fn fatal_pending(status: &str) -> bool {
    const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);
    (signal_mask(status, "SigPnd:") | signal_mask(status, "ShdPnd:")) & SIGKILL_BIT != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_unblocked_signal_interrupts_and_a_blocked_one_does_not() {
        let status = |pnd: &str, shd: &str, blk: &str| {
            format!("Name:\tflock\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t0\n")
        };
        assert!(!takes_a_signal(&status("0000000000000000", "0000000000000000", "0000000000000000")));
        // SIGALRM (14) for the process, as `flock -w` arms it.
        assert!(takes_a_signal(&status("0000000000000000", "0000000000002000", "0000000000000000")));
        assert!(!takes_a_signal(&status("0000000000000000", "0000000000002000", "0000000000002000")));
        // SIGKILL (9) for the thread, as a fatal signal leaves it.
        assert!(takes_a_signal(&status("0000000000000100", "0000000000000000", "0000000000000000")));
    }

    #[test]
    fn only_a_fatal_signal_marks_a_thread_dying() {
        let status = |pnd: &str, shd: &str| format!("SigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t0000000000000000\n");
        assert!(fatal_pending(&status("0000000000000100", "0000000000000000")), "SIGKILL for the thread");
        assert!(fatal_pending(&status("0000000000000000", "0000000000000100")), "SIGKILL for the process");
        assert!(!fatal_pending(&status("0000000000000000", "0000000000002002")), "SIGALRM and SIGINT, handled");
        assert!(!dying(0));
        let stat = |flags: u32| format!("42 (a (b) c) S 1 42 42 0 -1 {flags} 0 0 0 0");
        assert!(exiting(&stat(0x404044)), "PF_EXITING set");
        assert!(!exiting(&stat(0x400040)));
        // SAFETY: gettid has no preconditions.
        assert!(!dying(unsafe { libc::gettid() } as u32));
    }

    #[test]
    fn only_a_thread_with_a_signal_to_take_is_interrupted() {
        assert!(!interrupted(0), "a caller from another pid namespace");
        assert!(!interrupted(u32::MAX - 1), "no such thread");
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        assert!(!interrupted(tid));
    }

    #[test]
    fn a_threads_lineage_is_its_process_then_its_ancestors() {
        // SAFETY: gettid, getpid and getppid have no preconditions.
        let (tid, pid, ppid) = unsafe { (libc::gettid() as u32, libc::getpid() as u32, libc::getppid() as u32) };
        let l = lineage(tid);
        assert_eq!(&l[..1], &[pid]);
        if ppid > 1 {
            assert_eq!(l.get(1), Some(&ppid));
        }
        assert!(lineage(0).is_empty());
    }

    #[test]
    fn sequencers_name_their_holder() {
        assert_eq!(holder_of("seq1:3:7:9:x:42:1234:/a/b"), Some((LockMode::LockExclusive, 42, 1234)));
        assert_eq!(holder_of("seq1:3:7:9:s:42:5:/a:b"), Some((LockMode::LockShared, 42, 5)));
        assert_eq!(holder_of("nonsense"), None);
        assert!(whole_file(0, OFFSET_MAX) && !whole_file(0, 10) && !whole_file(1, OFFSET_MAX));
    }
}
