//! The lock operations of the file system (`flock`, `fcntl`; see [`super::locks`] for the
//! rules), as calls on the cells.

use std::sync::Arc;
use std::time::Duration;

use fuser::Errno;
use proto::chubby::{Handle, LockMode};
use proto::Refusal;

use super::inodes::NodeRef;
use super::locks::{holder_of, is_interrupted, Held, LockKey, Renewed, Taker, Unsettled, OFFSET_MAX};
use super::ops::{errno, guard, FsInner};
use crate::client::ClientError;
use crate::client::Session;

/// How often a blocked lock call looks at its caller's pending signals.
const SIGNAL_POLL: Duration = Duration::from_millis(20);

impl FsInner {
    /// Whether `owner`'s lock of `typ` would conflict with a holder: that holder's lock and
    /// process. A process of this host is named by its pid; a holder elsewhere has no pid
    /// here, and the kernel reports 0 for it.
    pub async fn getlk(&self, fh: u64, owner: u64, typ: i32) -> Result<(u64, u64, i32, u32), Errno> {
        let (node, session, handle, instance) = self.open_file_parts(fh).await?;
        let holders = session.holder_sequencers(&handle).await.map_err(errno)?;
        for s in holders {
            let Some((mode, sid, o)) = holder_of(&s) else { continue };
            if sid == session.id() && o == owner {
                continue;
            }
            if typ == libc::F_WRLCK || mode == LockMode::LockExclusive {
                let held = if mode == LockMode::LockExclusive { libc::F_WRLCK } else { libc::F_RDLCK };
                let pid = guard(&self.locks).pid_of(&node, instance, sid, o).unwrap_or(0);
                return Ok((0, OFFSET_MAX, held, pid));
            }
        }
        Ok((0, OFFSET_MAX, libc::F_UNLCK, 0))
    }

    /// The node, session, handle and node instance of an open file.
    pub(super) async fn open_file_parts(&self, fh: u64) -> Result<(NodeRef, Session, Handle, u64), Errno> {
        let file = self.file(fh)?;
        let f = file.lock().await;
        Ok((f.node.clone(), f.session.clone(), f.handle.clone(), f.instance))
    }

    /// Takes (`F_RDLCK`/`F_WRLCK`) or drops (`F_UNLCK`) `owner`'s whole-file lock for process
    /// `pid`; `wait` queues in the cell until granted or until thread `tid` takes a signal
    /// (`EINTR`).
    pub async fn setlk(&self, fh: u64, owner: u64, typ: i32, wait: bool, tid: u32, pid: u32) -> Result<(), Errno> {
        self.setlk_from(fh, owner, typ, wait, tid, pid, None).await
    }

    /// [`FsInner::setlk`], the owner's lock taken over `from` another process and open first
    /// (given back if the request fails).
    #[allow(clippy::too_many_arguments)]
    async fn setlk_from(
        &self,
        fh: u64,
        owner: u64,
        typ: i32,
        wait: bool,
        tid: u32,
        pid: u32,
        from: Option<(Taker, Gate)>,
    ) -> Result<(), Errno> {
        // The lock goes with the session the file was opened in: if that one was lost, so
        // are this open's locks (EIO), as DESIGN.md's FUSE mapping promises.
        let (node, session, handle, instance) = self.open_file_parts(fh).await?;
        let key = LockKey { node: node.clone(), instance, owner };
        let mode = match typ {
            libc::F_UNLCK => {
                self.unlock(&key, &session).await?;
                // Let go on purpose: later writes of its opens are no longer under it.
                self.clear_fences(&node, owner).await;
                return Ok(());
            }
            libc::F_RDLCK => LockMode::LockShared,
            libc::F_WRLCK => LockMode::LockExclusive,
            _ => return Err(Errno::EINVAL),
        };
        if session.is_lost() {
            return Err(Errno::EIO);
        }
        let held = guard(&self.locks).get(&key);
        if let Some(held) = held {
            if held.releasing {
                // Let go at a close, its Release not through yet: it must be, before this
                // owner asks again (the cell would count the request as the lock it still
                // holds, and the late Release would then take the new lock away).
                self.await_release(&key, &held, wait, tid).await?;
            } else if held.unsettled != Unsettled::No {
                // A conversion whose outcome is not known here: the cell says what is held
                // before the owner asks again, so the request starts from the truth.
                self.await_settled(&key, &held, wait, tid).await?;
                return Box::pin(self.setlk_from(fh, owner, typ, wait, tid, pid, from)).await;
            } else if held.fh != fh {
                // Taken through another open: taken over (see `take_over`), then asked again
                // as this open's; or, let go meanwhile, asked again from the start.
                let old = Taker { pid: held.pid, fh: held.fh };
                let from = match self.take_over(&key, &held, Taker { pid, fh }).await {
                    Some(gate) => Some((old, gate)),
                    None => from,
                };
                return Box::pin(self.setlk_from(fh, owner, typ, wait, tid, pid, from)).await;
            } else if held.session != session.id() {
                // Taken through an open of another session (the process changed user): that
                // session's lock goes first, so this conversion is not atomic.
                self.unlock(&key, &session).await?;
            } else if held.mode == mode {
                if from.is_some() {
                    // Writes through this open are under it from now on, as for a new lock.
                    self.fence_open(fh, owner, &held.sequencer).await;
                }
                return Ok(());
            } else {
                let converted = self.convert(fh, &key, &held, &session, mode, wait, tid).await;
                if let (Err(_), Some((from, gate))) = (&converted, from) {
                    self.give_back(&key, fh, from, gate, &session).await;
                }
                return converted;
            }
        }
        let sequencer = if !wait {
            match session.try_acquire(&handle, mode, owner, self.lock_delay).await {
                Ok(sequencer) => sequencer,
                Err(e @ ClientError::Timeout { .. }) => {
                    // Granted or not, unknown: the caller is told it failed, so a grant that
                    // came through must not stay (the call was dropped before the cancel).
                    self.withdraw(&key, &session, &handle, mode, Taker { pid, fh }).await;
                    return Err(errno(e));
                }
                Err(e) => return Err(errno(e)),
            }
        } else {
            let acquire = session.acquire(&handle, mode, owner, self.lock_delay);
            let Some(granted) = until_interrupted(acquire, tid).await else {
                // The Acquire was dropped above, before the cancel is sent: its call is abandoned
                // on the session's stream ahead of the cancel (the master stops it if it was not
                // yet proposed), and its request id no longer holds back the cancel's
                // first-incomplete mark, which then makes a late copy of it refused.
                self.withdraw(&key, &session, &handle, mode, Taker { pid, fh }).await;
                return Err(Errno::EINTR);
            };
            granted.map_err(errno)?
        };
        // Writes through this open are under the lock from now on, whichever process makes
        // them. (The open is held while the lock is entered, so an unlock that follows finds
        // the fence to clear.)
        let file = self.file(fh).ok();
        let mut this = match &file {
            Some(file) => Some(file.lock().await),
            None => None,
        };
        guard(&self.locks).insert(key, session.id(), mode, handle, Taker { pid, fh }, sequencer.clone());
        if let Some(f) = this.as_mut() {
            f.own_lock = Some((owner, sequencer.clone()));
            // Changes already made and not stored are stored under it too.
            f.fence = Some((owner, sequencer));
        }
        Ok(())
    }

    /// Makes `held` (the owner's lock, taken through another open) the lock of open `fh`, the
    /// one the owner asks through now; false if it was let go meanwhile.
    ///
    /// The owner is the same, so the lock is: a process's `fcntl` locks are the process's,
    /// whichever of its descriptors asks. A `flock` owner is an open file description, and
    /// another open with its id means that description was closed: the kernel sends its
    /// last close in the background and may give its address, which is the owner's id, to
    /// the next open at once, so the next open's request can come before that close. The new
    /// open takes the lock over, and the close, when it comes, finds it no longer its own
    /// (see `FsInner::release`). Done under the lock's gate, so a Release of the old open
    /// already on its way ends first, and one that starts later sees the change.
    async fn take_over(&self, key: &LockKey, held: &Held, to: Taker) -> Option<Gate> {
        let _sending = held.gate.lock().await;
        guard(&self.locks).take_over(key, &held.gate, to)
    }

    /// A request that took the owner's lock over (through open `fh`, the entry given `gate`)
    /// failed: the lock goes back to the open it was taken from, if that one is still open;
    /// if it was closed (its last close found the lock no longer its own), nobody holds it
    /// any more. Only that entry: another request may have let it go and taken a new one.
    async fn give_back(&self, key: &LockKey, fh: u64, from: Taker, gate: Gate, session: &Session) {
        {
            let _sending = gate.lock().await;
            // The open table held while the entry goes back: a last close removes its open
            // from the table before it looks at the entry.
            let files = guard(&self.files);
            if files.contains_key(&from.fh) {
                guard(&self.locks).hand_back(key, &gate, fh, from);
                return;
            }
        }
        let mine = move |h: &Held| Arc::ptr_eq(&h.gate, &gate) && h.fh == fh && h.unsettled == Unsettled::No;
        if let Err(e) = self.unlock_if(key, session, &mine, true).await {
            tracing::warn!(path = %key.node.path, "releasing a lock whose holder closed it: {e:?}");
        }
    }

    /// Open `fh`'s writes are under the owner's lock `sequencer` from now on.
    async fn fence_open(&self, fh: u64, owner: u64, sequencer: &str) {
        if let Ok(file) = self.file(fh) {
            let mut f = file.lock().await;
            f.own_lock = Some((owner, sequencer.to_string()));
            f.fence = Some((owner, sequencer.to_string()));
        }
    }

    /// Makes the lock `held` (of `key`, taken in `session`) one in `mode` in one step, as
    /// fcntl does: a downgrade at once; an upgrade when the other holders have let go, the
    /// shared lock held meanwhile. An upgrade that fails (busy, `EDEADLK`, interrupted)
    /// leaves the shared lock held. A conversion whose outcome is unknown (timed out, or
    /// interrupted while it waited) is settled with the cell before this owner's next request.
    #[allow(clippy::too_many_arguments)]
    async fn convert(
        &self,
        fh: u64,
        key: &LockKey,
        held: &Held,
        session: &Session,
        mode: LockMode,
        wait: bool,
        tid: u32,
    ) -> Result<(), Errno> {
        let outcome = match wait {
            false => Some(session.convert(&held.handle, mode, key.owner, false).await),
            true => until_interrupted(session.convert(&held.handle, mode, key.owner, true), tid).await,
        };
        let sequencer = match outcome {
            Some(Ok(sequencer)) => sequencer,
            Some(Err(e)) if e.reason() == Some(Refusal::NotHeld) => {
                // The cell holds nothing for this owner (an unlock raced this call): neither
                // does the entry.
                let _sending = held.gate.lock().await;
                guard(&self.locks).remove_if(key, &held.gate);
                return Err(errno(e));
            }
            // The cell's answer (busy, deadlock) or a lost session: nothing changed.
            Some(Err(e)) if e.reason().is_some() || matches!(e, ClientError::SessionLost(_)) => return Err(errno(e)),
            // The owner is told the conversion failed: an upgrade that went through after
            // all goes back to the shared lock it keeps.
            Some(Err(e)) => {
                self.settle(key, held, how_failed(mode)).await;
                return Err(errno(e));
            }
            None => {
                // The wait is withdrawn: the owner keeps the shared lock it had.
                self.settle(key, held, how_failed(mode)).await;
                return Err(Errno::EINTR);
            }
        };
        let renewed = {
            // Not while a Release of this lock is in flight: an unlock (another thread's close)
            // that took the entry away released what this conversion made, and it stays gone.
            let _sending = held.gate.lock().await;
            guard(&self.locks).renew(key, held, mode, sequencer.clone())
        };
        if renewed == Renewed::Changed {
            // Another request of this owner (another thread) changed its lock meanwhile; which
            // the cell applied last is unknown here: the entry takes what the cell holds.
            let now = guard(&self.locks).get(key);
            if let Some(now) = now {
                self.settle(key, &now, Unsettled::AsHeld).await;
            }
        }
        if renewed == Renewed::Done {
            self.renew_fences(key, &held.sequencer, &sequencer).await;
            // As for a new lock: writes through this open are under it from now on.
            if let Ok(file) = self.file(fh) {
                let mut f = file.lock().await;
                f.own_lock = Some((key.owner, sequencer.clone()));
                f.fence = Some((key.owner, sequencer));
            }
        }
        Ok(())
    }

    /// The owner's lock went from sequencer `old` to `new` without being let go: what its
    /// opens wrote under the old grant is under the new one.
    async fn renew_fences(&self, key: &LockKey, old: &str, new: &str) {
        for (_, file) in self.files_of(&key.node) {
            let mut f = file.lock().await;
            let renewed = Some((key.owner, new.to_string()));
            if f.fence.as_ref().is_some_and(|(o, s)| *o == key.owner && s == old) {
                f.fence = renewed.clone();
            }
            if f.own_lock.as_ref().is_some_and(|(o, s)| *o == key.owner && s == old) {
                f.own_lock = renewed;
            }
        }
    }

    /// Marks the entry `held` unsettled (`how`), so the owner's requests wait, and settles it
    /// now, or else in the background until the cell answers.
    async fn settle(&self, key: &LockKey, held: &Held, how: Unsettled) {
        guard(&self.locks).mark_unsettled(key, &held.gate, how);
        if let Err(e) = self.settle_once(key, &held.gate).await {
            tracing::warn!(path = %key.node.path, "settling a lock conversion: {e}; retrying in the background");
            self.settle_until_done(key.clone(), held.gate.clone());
        }
    }

    /// Settles the unsettled entry of `key` whose gate is `gate` (nothing if it is gone,
    /// replaced or settled already): withdraws a waiting upgrade, and makes the entry what the
    /// cell holds (an upgrade its owner was told failed going back to shared first); a lock
    /// gone leaves no entry. Holds the gate, so no Release or other settling of this lock runs
    /// meanwhile.
    async fn settle_once(&self, key: &LockKey, gate: &Arc<tokio::sync::Mutex<()>>) -> Result<(), ClientError> {
        if let Some((old, new)) = self.settle_entry(key, gate).await? {
            self.renew_fences(key, &old, &new).await;
        }
        Ok(())
    }

    /// [`FsInner::settle_once`] but for the fences: the sequencers the owner's lock went from
    /// and to, if it changed.
    async fn settle_entry(
        &self,
        key: &LockKey,
        gate: &Arc<tokio::sync::Mutex<()>>,
    ) -> Result<Option<(String, String)>, ClientError> {
        let _sending = gate.lock().await;
        let held = guard(&self.locks).is(key, gate).filter(|h| h.unsettled != Unsettled::No).cloned();
        let Some(held) = held else { return Ok(None) };
        let session = self.cells[key.node.cell].session_with_id(held.session).filter(|s| !s.is_lost());
        let Some(session) = session.filter(|_| !held.releasing) else {
            // Let go at a close (its Release ends any wait too), or its session is gone.
            guard(&self.locks).mark_unsettled(key, gate, Unsettled::No);
            return Ok(None);
        };
        let r = async {
            session.cancel_conversion(&held.handle, key.owner).await?;
            let now = match session.sequencer(&held.handle, key.owner).await {
                Ok(sequencer) => sequencer,
                Err(e) if no_lock_left(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            let exclusive = holder_of(&now).is_some_and(|(m, _, _)| m == LockMode::LockExclusive);
            if exclusive && held.unsettled == Unsettled::KeepShared {
                return session.convert(&held.handle, LockMode::LockShared, key.owner, false).await.map(Some);
            }
            Ok(Some(now))
        }
        .await;
        let mut locks = guard(&self.locks);
        match r {
            Ok(None) => locks.remove_if(key, gate),
            Ok(Some(sequencer)) => {
                let mode = holder_of(&sequencer).map_or(held.mode, |(m, _, _)| m);
                locks.settle(key, gate, mode, sequencer.clone());
                return Ok(Some((held.sequencer, sequencer)));
            }
            // The node or the session is gone, or the lock is not held: nothing is left.
            Err(e) if no_lock_left(&e) => locks.remove_if(key, gate),
            Err(e @ ClientError::Rpc(_)) => {
                // The cell's refusal: asking again changes nothing; the entry stays as it is.
                tracing::warn!(path = %key.node.path, "settling a lock conversion: {e}; giving up");
                locks.mark_unsettled(key, gate, Unsettled::No);
            }
            Err(e) => return Err(e),
        }
        Ok(None)
    }

    /// Retries settling the entry of `key` with gate `gate` in the background until done.
    fn settle_until_done(&self, key: LockKey, gate: Arc<tokio::sync::Mutex<()>>) {
        let Some(me) = self.me.get().cloned() else { return };
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::time::sleep(pause).await;
                let Some(fs) = me.upgrade() else { return };
                match fs.settle_once(&key, &gate).await {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(path = %key.node.path, "settling a lock conversion: {e}; retrying"),
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Before the owner of an unsettled entry asks again: it is settled. A blocking request
    /// waits for that as it would for the lock (until thread `tid` takes a signal: `EINTR`);
    /// a non-blocking one fails with this try's error.
    async fn await_settled(&self, key: &LockKey, held: &Held, wait: bool, tid: u32) -> Result<(), Errno> {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.settle_once(key, &held.gate).await {
                Ok(()) => return Ok(()),
                Err(e) if !wait => return Err(errno(e)),
                Err(_) => {}
            }
            if sleep_unless_interrupted(pause, tid).await {
                return Err(Errno::EINTR);
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// `owner` let go of its lock of `node` on purpose: no open of the node writes under it
    /// any more, changes already made included.
    async fn clear_fences(&self, node: &NodeRef, owner: u64) {
        for (_, file) in self.files_of(node) {
            let mut f = file.lock().await;
            if f.fence.as_ref().is_some_and(|(o, _)| *o == owner) {
                f.fence = None;
            }
            if f.own_lock.as_ref().is_some_and(|(o, _)| *o == owner) {
                f.own_lock = None;
            }
        }
    }

    /// Withdraws an Acquire of `key` that was interrupted or timed out (releasing the lock
    /// if it was granted meanwhile). If the cell cannot be reached now, the withdrawal is
    /// entered as a lock being let go, retried in the background until the cell has it, and
    /// the owner's next request for the lock waits for it: so it cannot take away a lock the
    /// owner is granted later.
    async fn withdraw(&self, key: &LockKey, session: &Session, handle: &Handle, mode: LockMode, at: Taker) {
        // Entered before the first try, so the owner's other threads wait for it too. An entry
        // there already is another request's of this owner, which the cell counts as this one.
        let gate = guard(&self.locks).insert_withdrawal(key.clone(), session.id(), mode, handle.clone(), at);
        let Some(gate) = gate else { return };
        let placeholder = guard(&self.locks).is(key, &gate).cloned();
        let Some(placeholder) = placeholder else { return };
        if let Err(e) = self.finish_release(key, &placeholder).await {
            tracing::warn!(path = %key.node.path, "withdrawing a lock request: {e:?}; retrying in the background");
            self.release_until_done(key.clone(), gate);
        }
    }

    /// Releases the lock `key` if this mount holds it, with the handle that took it. The
    /// entry goes only once the cell has no lock left to release (released, not held, its
    /// node or its session gone): after any other failure (a timeout in jeopardy) a later
    /// unlock or close tries again.
    async fn unlock(&self, key: &LockKey, session: &Session) -> Result<(), Errno> {
        self.unlock_if(key, session, &|_| true, false).await
    }

    /// [`FsInner::unlock`], if the entry is one `which` names when its Release is sent. With
    /// `at_close`, a Release that fails is retried in the background until it goes through
    /// (the entry marked as let go before the gate opens, so no request takes it over).
    async fn unlock_if(
        &self,
        key: &LockKey,
        session: &Session,
        which: &Which<'_>,
        at_close: bool,
    ) -> Result<(), Errno> {
        let Some(held) = guard(&self.locks).get(key) else { return Ok(()) };
        if held.releasing || !which(&held) {
            // Its holder let go already; the task that retries the Release finishes it.
            return Ok(());
        }
        if held.session != session.id() {
            // Taken in another session: through an open of that session (see unlock_on_close).
            return self.unlock_in_its_session(key, held.session, which, at_close).await;
        }
        let _sending = held.gate.lock().await;
        if guard(&self.locks).is(key, &held.gate).is_none_or(|h| h.releasing || !which(h)) {
            // Released (or let go, or taken over) by another call meanwhile.
            return Ok(());
        }
        let r = session.release(&held.handle, key.owner).await;
        if r.as_ref().err().is_none_or(no_lock_left) {
            guard(&self.locks).remove_if(key, &held.gate);
        }
        if let (Err(e), true) = (&r, at_close) {
            if !no_lock_left(e) && guard(&self.locks).mark_releasing(key, &held.gate, which) {
                tracing::warn!(path = %key.node.path, "releasing a lock at close: {e}; retrying in the background");
                self.release_until_done(key.clone(), held.gate.clone());
            }
            return Ok(());
        }
        match r {
            Err(e @ ClientError::SessionLost(_)) => Err(errno(e)),
            Err(e) if !no_lock_left(&e) => Err(errno(e)),
            _ => Ok(()),
        }
    }

    /// Sends the Release of a lock let go at a close (`held`), unless it is done already.
    /// `Ok` once the cell has no such lock (or cannot be asked again); else the error of
    /// this try.
    async fn finish_release(&self, key: &LockKey, held: &Held) -> Result<(), Errno> {
        let _sending = held.gate.lock().await;
        if !guard(&self.locks).is(key, &held.gate).is_some_and(|h| h.releasing) {
            return Ok(());
        }
        let session = self.cells[key.node.cell].session_with_id(held.session).filter(|s| !s.is_lost());
        let Some(session) = session else {
            // A session lost or closed here: the cell released its locks with it.
            guard(&self.locks).remove_if(key, &held.gate);
            return Ok(());
        };
        let done = match held.withdraw {
            true => session.cancel(&held.handle, key.owner).await,
            false => session.release(&held.handle, key.owner).await,
        };
        match done {
            Err(e) if !no_lock_left(&e) => {
                if matches!(e, ClientError::Rpc(_)) {
                    // The cell's answer, not a lost call: asking again changes nothing.
                    tracing::warn!(path = %key.node.path, "releasing a lock (or withdrawing a request for it): {e}; giving up");
                    guard(&self.locks).remove_if(key, &held.gate);
                    return Ok(());
                }
                Err(errno(e))
            }
            _ => {
                guard(&self.locks).remove_if(key, &held.gate);
                Ok(())
            }
        }
    }

    /// Before the same owner takes the lock again: the pending Release of `held` is done. A
    /// blocking request waits for it as it would wait for the lock (until thread `tid` takes
    /// a signal: `EINTR`); a non-blocking one fails with this try's error.
    async fn await_release(&self, key: &LockKey, held: &Held, wait: bool, tid: u32) -> Result<(), Errno> {
        let mut pause = Duration::from_millis(100);
        loop {
            match self.finish_release(key, held).await {
                Ok(()) => return Ok(()),
                Err(e) if !wait => return Err(e),
                Err(_) => {}
            }
            if sleep_unless_interrupted(pause, tid).await {
                return Err(Errno::EINTR);
            }
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// Retries, in the background, the Release of a lock let go at a close, until the cell has
    /// no such lock (or the session is gone): otherwise the cell would keep it for as long as
    /// the session lives, which for a user of the mount is until the mount stops.
    fn release_until_done(&self, key: LockKey, gate: Arc<tokio::sync::Mutex<()>>) {
        let Some(me) = self.me.get().cloned() else {
            tracing::warn!(path = %key.node.path, "no file system to retry a lock's Release in");
            return;
        };
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(100);
            loop {
                tokio::time::sleep(pause).await;
                let Some(fs) = me.upgrade() else { return };
                let held = guard(&fs.locks).is(&key, &gate).filter(|h| h.releasing).cloned();
                let Some(held) = held else { return };
                match fs.finish_release(&key, &held).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(path = %key.node.path, "releasing a lock (or withdrawing a request for it): {e:?}; retrying")
                    }
                }
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Releases a lock taken in session `sid`, which is not the one at hand: if `sid` is one
    /// of the cell's current sessions, through the handle that took it; if it was lost, the
    /// cell released the lock already (EIO: the holder must know it lost it). A session closed
    /// here for being idle released it too, with nobody to tell: a stale entry (its release
    /// at close had failed) is dropped quietly.
    async fn unlock_in_its_session(
        &self,
        key: &LockKey,
        sid: u64,
        which: &Which<'_>,
        at_close: bool,
    ) -> Result<(), Errno> {
        let session = self.cells[key.node.cell].session_with_id(sid).filter(|s| !s.is_lost());
        let Some(session) = session else {
            guard(&self.locks).remove(key);
            if self.cells[key.node.cell].closed_for_idleness(sid) {
                return Ok(());
            }
            return Err(Errno::EIO);
        };
        Box::pin(self.unlock_if(key, &session, which, at_close)).await
    }

    /// The holder let go (closed the file or died): the cell must hear it, if the entry is
    /// still the one `closing` names (a close may come after the owner's id went to a later
    /// open or process, whose lock it must not take away). A Release that fails (the cell
    /// out of reach) is retried in the background until it goes through.
    pub(super) async fn unlock_on_close(&self, key: &LockKey, session: &Session, closing: &Which<'_>) {
        let Some(held) = guard(&self.locks).get(key) else { return };
        if held.releasing || !closing(&held) {
            return;
        }
        if let Err(e) = self.unlock_if(key, session, closing, true).await {
            // The session lost (the cell released the lock with it), or the node gone.
            tracing::info!(path = %key.node.path, "releasing a lock at close: {e:?}");
        }
    }
}

/// A lock entry's gate (see [`Held::gate`]).
type Gate = Arc<tokio::sync::Mutex<()>>;

/// Which lock entry a close lets go of (see [`FsInner::unlock_on_close`]).
pub(super) type Which<'a> = dyn Fn(&Held) -> bool + Send + Sync + 'a;

/// How an entry is settled after a conversion to `mode` failed with no known outcome: an
/// upgrade the owner was told failed goes back to shared; after a downgrade, whatever the
/// cell holds (an exclusive lock cannot be taken back atomically).
fn how_failed(mode: LockMode) -> Unsettled {
    match mode {
        LockMode::LockExclusive => Unsettled::KeepShared,
        LockMode::LockShared => Unsettled::AsHeld,
    }
}

/// Sleeps for `pause`; true if thread `tid` took a signal meanwhile (the sleep then ends).
async fn sleep_unless_interrupted(pause: Duration, tid: u32) -> bool {
    let until = tokio::time::Instant::now() + pause;
    while tokio::time::Instant::now() < until {
        if is_interrupted(tid).await {
            return true;
        }
        tokio::time::sleep(SIGNAL_POLL).await;
    }
    false
}

/// Runs a lock wait until it ends or thread `tid` takes a signal (`None`).
async fn until_interrupted<T>(wait: impl std::future::Future<Output = T>, tid: u32) -> Option<T> {
    tokio::pin!(wait);
    let mut poll = tokio::time::interval(SIGNAL_POLL);
    loop {
        tokio::select! {
            r = &mut wait => return Some(r),
            _ = poll.tick() => {
                if is_interrupted(tid).await {
                    return None;
                }
            }
        }
    }
}

/// Whether a Release's failure still means the cell holds no such lock: not held, its node
/// gone, or its session lost.
fn no_lock_left(e: &ClientError) -> bool {
    matches!(e, ClientError::SessionLost(_))
        || matches!(e.reason(), Some(Refusal::NotHeld | Refusal::StaleHandle | Refusal::NotFound | Refusal::NoSession))
}
