//! The Chubby calls of a session (Chubby §2.6): nodes, contents, locks and sequencers, each
//! answered from the session's cache where it may be, else through the retry loop.

use std::time::Duration;

use bytes::Bytes;
use proto::chubby::*;
use tonic::Code;

use super::cache::Fill;
use super::retry::InFlight;
use super::{ClientError, Invalidated, OpenOptions, Session};

/// A lock's sequencer, once granted.
type Locked = Result<String, ClientError>;

/// What a write does to a node's contents.
enum Write {
    Replace {
        contents: Bytes,
        if_generation: Option<u64>,
    },
    /// Adds to the end of what the cell has.
    Append(Bytes),
}

impl Session {
    /// Opens a node. A plain open (no create, no events) of a node this session has cached
    /// is answered from the cache.
    pub async fn open_node(&self, path: &str, o: OpenOptions) -> Result<(Handle, NodeStat), ClientError> {
        let plain = !o.create && o.events == 0;
        if plain {
            let mut cache = self.inner.cache();
            if let Some((handle, stat)) = cache.handle(path) {
                cache.remember_handle(&handle, path, stat.instance_number);
                return Ok((handle, stat));
            }
        }
        let f = self.next_request();
        let req = OpenRequest {
            request: Some(f.request),
            path: path.to_string(),
            create: o.create,
            directory: o.directory,
            ephemeral: o.ephemeral,
            exclusive: o.exclusive,
            initial_contents: o.contents,
            event_mask: o.events,
            session_token: self.inner.token.clone(),
        };
        let ticket = self.inner.cache().begin_read(path);
        let r = self.call(self.deadline(), rpc!(Open, req)).await;
        let mut cache = self.inner.cache();
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                cache.end_read(ticket, None);
                return Err(e);
            }
        };
        let (handle, stat) = (r.handle.unwrap_or_default(), r.stat.unwrap_or_default());
        cache.remember_handle(&handle, path, stat.instance_number);
        if o.events != 0 {
            let mut subs = self.inner.subscriptions.lock().expect("subscriptions");
            let mask = subs.get(path).map_or(0, |(_, m)| *m) | o.events;
            subs.insert(path.to_string(), (handle.clone(), mask));
        }
        let fill = (plain && r.cacheable).then(|| Fill { stat, contents: None, handle: Some(handle.clone()) });
        cache.end_read(ticket, fill);
        Ok((handle, stat))
    }

    pub async fn close_node(&self, handle: &Handle) -> Result<(), ClientError> {
        let f = self.next_request();
        self.inner.cache().forget_handle(handle);
        self.inner.subscriptions.lock().expect("subscriptions").retain(|_, (h, _)| h != handle);
        let req = CloseRequest { request: Some(f.request), handle: Some(handle.clone()) };
        self.call(self.deadline(), rpc!(Close, req)).await.map(|_| ())
    }

    /// Contents and metadata, linearizable: from the cache if the node is cached, else from
    /// the master. (A cached stat's `lock_generation` may lag: lock changes do not invalidate
    /// caches; [`Session::holder_sequencers`] and [`Session::check_sequencer`] ask the master.)
    pub async fn get(&self, handle: &Handle) -> Result<(Bytes, NodeStat), ClientError> {
        let node = self.inner.cache().node_of(handle);
        let Some((path, instance)) = node else { return self.get_uncached(handle).await.map(|(c, s, _)| (c, s)) };
        let hit = self.inner.cache().contents(&path, instance);
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let ticket = self.inner.cache().begin_read(&path);
        let r = self.get_uncached(handle).await;
        let fill = match &r {
            Ok((contents, stat, true)) => Some(Fill { stat: *stat, contents: Some(contents.clone()), handle: None }),
            _ => None,
        };
        self.inner.cache().end_read(ticket, fill);
        r.map(|(c, s, _)| (c, s))
    }

    /// Contents and metadata from the master, and whether the answer may be cached.
    async fn get_uncached(&self, handle: &Handle) -> Result<(Bytes, NodeStat, bool), ClientError> {
        let req = GetContentsRequest { handle: Some(handle.clone()), stale_ok: false };
        let r = self.call(self.deadline(), rpc!(GetContentsAndStat, req)).await?;
        Ok((r.contents, r.stat.unwrap_or_default(), r.cacheable))
    }

    /// Contents as the first replica reached has them (may be behind the master).
    pub async fn get_stale(&self, handle: &Handle) -> Result<(Bytes, NodeStat), ClientError> {
        let req = GetContentsRequest { handle: Some(handle.clone()), stale_ok: true };
        let r = self.call(self.deadline(), rpc!(GetContentsAndStat, req)).await?;
        Ok((r.contents, r.stat.unwrap_or_default()))
    }

    /// Metadata, linearizable: from the cache if the node is cached (see [`Session::get`]).
    /// Metadata asked of the master, never of the cache: its lock generation is current (lock
    /// changes do not invalidate caches, so a cached stat's may lag).
    pub async fn stat_from_master(&self, handle: &Handle) -> Result<NodeStat, ClientError> {
        let node = self.inner.cache().node_of(handle);
        Ok(self.get_stat(handle, node).await?.stat.unwrap_or_default())
    }

    pub async fn stat(&self, handle: &Handle) -> Result<NodeStat, ClientError> {
        let node = self.inner.cache().node_of(handle);
        let hit = node.as_ref().and_then(|(p, i)| self.inner.cache().stat(p, *i));
        if let Some(hit) = hit {
            return Ok(hit);
        }
        Ok(self.get_stat(handle, node).await?.stat.unwrap_or_default())
    }

    /// GetStat at the master; a cacheable answer refills the cache.
    pub(super) async fn get_stat(
        &self,
        handle: &Handle,
        node: Option<(String, u64)>,
    ) -> Result<GetStatResponse, ClientError> {
        let ticket = node.as_ref().map(|(p, _)| self.inner.cache().begin_read(p));
        let req = GetStatRequest { handle: Some(handle.clone()) };
        let r = self.call(self.deadline(), rpc!(GetStat, req)).await;
        if let Some(ticket) = ticket {
            let fill = match &r {
                Ok(r) if r.cacheable => Some(Fill { stat: r.stat.unwrap_or_default(), contents: None, handle: None }),
                _ => None,
            };
            self.inner.cache().end_read(ticket, fill);
        }
        r
    }

    pub async fn set(
        &self,
        handle: &Handle,
        contents: Bytes,
        if_generation: Option<u64>,
        sequencer: &str,
    ) -> Result<NodeStat, ClientError> {
        self.write(handle, Write::Replace { contents, if_generation }, sequencer).await
    }

    /// Adds `data` at the end of the node's contents as the cell has them: appends of many
    /// clients all land (none reads and rewrites the whole).
    pub async fn append(&self, handle: &Handle, data: Bytes, sequencer: &str) -> Result<NodeStat, ClientError> {
        self.write(handle, Write::Append(data), sequencer).await
    }

    async fn write(&self, handle: &Handle, write: Write, sequencer: &str) -> Result<NodeStat, ClientError> {
        // Write-through when this session caches: it drops its copy itself (and tells its
        // hook, as for an invalidation) instead of waiting for the master's invalidation
        // round trip, and caches what it wrote if the master says it may (the stat alone
        // after an append: the whole contents are the cell's).
        let node = self.inner.opts.cache.then(|| self.inner.cache().node_of(handle)).flatten();
        let ticket = match &node {
            Some((path, _)) => {
                let ticket = self.inner.cache().begin_own_write(path);
                self.inner.invalidated(Invalidated::Nodes(vec![path.clone()])).await;
                Some(ticket)
            }
            None => None,
        };
        let f = self.next_request();
        let (request, handle_of, sequencer, write_through) =
            (Some(f.request), Some(handle.clone()), sequencer.to_string(), ticket.is_some());
        let (r, written) = match write {
            Write::Append(data) => {
                let req = AppendRequest { request, handle: handle_of, data, sequencer, write_through };
                let r = self.call(self.change_deadline(), rpc!(Append, req)).await.map(|r| (r.stat, r.cacheable));
                (r, None)
            }
            Write::Replace { contents, if_generation } => {
                let req = SetContentsRequest {
                    request,
                    handle: handle_of,
                    contents: contents.clone(),
                    if_generation,
                    sequencer,
                    write_through,
                };
                let r = self.call(self.change_deadline(), rpc!(SetContents, req)).await.map(|r| (r.stat, r.cacheable));
                (r, Some(contents))
            }
        };
        if let Some(ticket) = ticket {
            let fill = match &r {
                Ok((stat, true)) => {
                    Some(Fill { stat: (*stat).unwrap_or_default(), contents: written, handle: Some(handle.clone()) })
                }
                _ => None,
            };
            self.inner.cache().end_read(ticket, fill);
        }
        Ok(r?.0.unwrap_or_default())
    }

    pub async fn delete(
        &self,
        handle: &Handle,
        if_generation: Option<u64>,
        sequencer: &str,
    ) -> Result<(), ClientError> {
        let f = self.next_request();
        let req = DeleteRequest {
            request: Some(f.request),
            handle: Some(handle.clone()),
            if_generation,
            sequencer: sequencer.to_string(),
        };
        self.call(self.change_deadline(), rpc!(Delete, req)).await.map(|_| ())
    }

    /// Gives the file `handle` names the path `to` (`/ls/<cell>/…`, this cell) in one change:
    /// over an existing file, that node takes the contents; else the node moves. `no_replace`:
    /// refuse an existing `to`. The stat of the node now at `to`.
    pub async fn rename(&self, handle: &Handle, to: &str, no_replace: bool) -> Result<NodeStat, ClientError> {
        let f = self.next_request();
        let req =
            RenameRequest { request: Some(f.request), handle: Some(handle.clone()), to: to.to_string(), no_replace };
        let r = self.call(self.change_deadline(), rpc!(Rename, req)).await?;
        Ok(r.stat.unwrap_or_default())
    }

    pub async fn read_dir(&self, handle: &Handle) -> Result<Vec<DirEntry>, ClientError> {
        let req = ReadDirRequest { handle: Some(handle.clone()) };
        Ok(self.call(self.deadline(), rpc!(ReadDir, req)).await?.entries)
    }

    /// Waits for the lock (as long as the session lives, across failovers) and returns its
    /// sequencer.
    pub async fn acquire(&self, h: &Handle, mode: LockMode, owner: u64, delay: Option<Duration>) -> Locked {
        self.lock(h, mode, owner, delay, false).await
    }

    /// Takes the lock if it is free now; `LockBusy` otherwise.
    pub async fn try_acquire(&self, h: &Handle, mode: LockMode, owner: u64, delay: Option<Duration>) -> Locked {
        self.lock(h, mode, owner, delay, true).await
    }

    /// Makes `owner`'s lock one in `mode` without letting go of it (fcntl's upgrade and
    /// downgrade): a downgrade at once; an upgrade when no other holder is left (`wait`), or
    /// `LockBusy` at once. Holding nothing, as [`Session::acquire`]. While an upgrade waits,
    /// the shared lock stays held; [`Session::cancel_conversion`] withdraws it.
    pub async fn convert(&self, h: &Handle, mode: LockMode, owner: u64, wait: bool) -> Locked {
        let (_f, mut req) = self.acquire_request(h, mode, owner, None);
        req.convert = true;
        self.send_acquire(req, !wait).await
    }

    /// Withdraws a waiting upgrade; the shared lock stays held. `true` if the upgrade was
    /// granted before the withdrawal: the lock is then held exclusively.
    pub async fn cancel_conversion(&self, handle: &Handle, owner: u64) -> Result<bool, ClientError> {
        let f = self.next_request();
        let req = CancelRequest { request: Some(f.request), handle: Some(handle.clone()), owner };
        match self.call(self.deadline(), rpc!(Cancel, req)).await {
            Err(ClientError::Rpc(s)) if s.code() == Code::AlreadyExists => Ok(true),
            other => other.map(|_| false),
        }
    }

    /// A blocking Acquire waits as long as the session lives; a TryAcquire has a deadline.
    async fn lock(&self, h: &Handle, mode: LockMode, owner: u64, delay: Option<Duration>, try_only: bool) -> Locked {
        let (_f, req) = self.acquire_request(h, mode, owner, delay);
        self.send_acquire(req, try_only).await
    }

    async fn send_acquire(&self, req: AcquireRequest, try_only: bool) -> Locked {
        let granted = match try_only {
            false => self.call(None, rpc!(Acquire, req)).await?,
            true => self.call(self.deadline(), rpc!(TryAcquire, req)).await?,
        };
        Ok(granted.sequencer)
    }

    fn acquire_request(
        &self,
        handle: &Handle,
        mode: LockMode,
        owner: u64,
        lock_delay: Option<Duration>,
    ) -> (InFlight, AcquireRequest) {
        let f = self.next_request();
        let req = AcquireRequest {
            request: Some(f.request),
            handle: Some(handle.clone()),
            mode: mode as i32,
            owner,
            lock_delay_ms: lock_delay.map(|d| d.as_millis() as u64),
            convert: false,
        };
        (f, req)
    }

    pub async fn release(&self, handle: &Handle, owner: u64) -> Result<(), ClientError> {
        let f = self.next_request();
        let req = ReleaseRequest { request: Some(f.request), handle: Some(handle.clone()), owner };
        self.call(self.deadline(), rpc!(Release, req)).await.map(|_| ())
    }

    /// Withdraws a queued Acquire. If the lock was granted meanwhile it is released, so the
    /// caller never holds a lock it gave up on.
    pub async fn cancel(&self, handle: &Handle, owner: u64) -> Result<(), ClientError> {
        let f = self.next_request();
        let req = CancelRequest { request: Some(f.request), handle: Some(handle.clone()), owner };
        match self.call(self.deadline(), rpc!(Cancel, req)).await {
            Err(ClientError::Rpc(s)) if s.code() == Code::AlreadyExists => self.release(handle, owner).await,
            other => other.map(|_| ()),
        }
    }

    pub async fn sequencer(&self, handle: &Handle, owner: u64) -> Result<String, ClientError> {
        let req = GetSequencerRequest { handle: Some(handle.clone()), owner, holders: false };
        Ok(self.call(self.deadline(), rpc!(GetSequencer, req)).await?.sequencer)
    }

    /// The sequencers of whoever holds the node's lock now (empty if it is free): one for an
    /// exclusive holder, one per holder of a shared lock.
    pub async fn holder_sequencers(&self, handle: &Handle) -> Result<Vec<String>, ClientError> {
        let req = GetSequencerRequest { handle: Some(handle.clone()), owner: 0, holders: true };
        Ok(self.call(self.deadline(), rpc!(GetSequencer, req)).await?.holders)
    }

    pub async fn check_sequencer(&self, sequencer: &str) -> Result<bool, ClientError> {
        let req = CheckSequencerRequest { sequencer: sequencer.to_string() };
        Ok(self.call(self.deadline(), rpc!(CheckSequencer, req)).await?.valid)
    }

    /// Ends the session: locks released (no lock-delay), ephemeral nodes gone.
    pub async fn close(self) -> Result<(), ClientError> {
        // Nothing cached (nor kept by the kernel on top) may outlive the session at the master:
        // once it is closed there, writes no longer wait for this host's ack.
        self.inner.flush_cache().await;
        self.inner.closing.store(true, std::sync::atomic::Ordering::Relaxed);
        let f = self.next_request();
        let req = CloseSessionRequest { request: Some(f.request), session_token: self.inner.token.clone() };
        let r = self.call(self.deadline(), rpc!(CloseSession, req)).await.map(|_| ());
        if r.is_err() {
            // Not closed at the master: its ending the session later is news again.
            self.inner.closing.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.closed.send_replace(true);
        self.inner.lose();
        r
    }
}
