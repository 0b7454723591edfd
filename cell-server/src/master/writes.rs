//! A write's protocol at the master (Chubby §2.5): every session that may cache the node is
//! sent an invalidation and acks it (or loses its lease) before the write is proposed; the node
//! stays uncacheable until the write's entry is applied or known lost; then a write-through
//! writer is counted among the node's cachers. A read whose answer may be cached registers its
//! session as a cacher before it reads, so a write that begins meanwhile invalidates it.

use std::sync::Arc;

use raft::ReplicaError;

use super::{full_path, Inner, Master, MasterError};
use crate::machine::CellMachine;
use crate::state::{CellState, Command, Op, Outcome, Reply, RequestId, SessionId, Stat, StateError};

const CHANGED_WHILE_INVALIDATING: &str = "the master changed while invalidating caches; retry";

impl Master {
    /// Runs a write that changes the nodes at `paths` (a rename's two; the first is the one a
    /// write-through writer wrote) to its end, even if its caller goes away (a dropped handler would
    /// end the node's uncacheable mark before the entry's fate is known, and a read in between
    /// could be cached and outlive the write uninvalidated). Only a serving master takes it: at
    /// a follower it is redirected; during an election, or while this replica takes office,
    /// it waits for that (and is still made once a master serves). Returns the state machine's answer
    /// and whether the writer may cache what it wrote: only a `write_through` writer, of a
    /// permanent node that still holds its write (then with whether the node is open to all,
    /// see [`Master::cache_written`]).
    pub async fn write(
        self: &Arc<Self>,
        request: Option<RequestId>,
        paths: &[&str],
        op: Op,
        write_through: Option<SessionId>,
    ) -> Result<(Reply, Option<bool>), MasterError> {
        let (m, paths) = (self.clone(), paths.iter().map(|p| p.to_string()).collect::<Vec<_>>());
        let write = async move {
            m.await_serving().await?;
            let guard = m.begin_write(&paths, write_through).await?;
            let reply = m.propose_guarded(request, op, &guard).await??;
            drop(guard);
            let cacheable = match (&reply, write_through, paths.first()) {
                (Reply::Stat(s), Some(writer), Some(path)) if !s.ephemeral => m.cache_written(writer, path, s).await,
                _ => None,
            };
            Ok((reply, cacheable))
        };
        tokio::spawn(write).await.unwrap_or_else(|e| Err(MasterError::TaskFailed(e.to_string())))
    }

    /// A linearizable read whose answer `session` may cache if `cacheable` says its node may be
    /// cached at all and no write began while it ran.
    pub async fn cached_read<R: Send + 'static>(
        &self,
        session: SessionId,
        path: &str,
        read: impl FnOnce(&CellState) -> Result<R, StateError> + Send + 'static,
        cacheable: impl FnOnce(&R) -> bool,
    ) -> Result<(R, bool), MasterError> {
        let token = self.register_cacher(session, path);
        let r = self.read(read).await;
        let cacheable = self.settle_cacher(session, path, token, &r, cacheable);
        Ok((r?, cacheable))
    }

    /// After a write-through write (its pending mark gone): counts the writer among the
    /// node's cachers if the node still holds what it wrote. Registering first and then
    /// looking at the state (this master's applied state holds every write answered before)
    /// covers both sides: a write that began before the registration is still pending (no
    /// registration) or already visible in the state (a later modified index); one that begins
    /// after it invalidates the writer like any cacher. If it may: whether every principal
    /// may open the node (its ACL then is the written stat's, the last change being this
    /// write's).
    async fn cache_written(&self, session: SessionId, path: &str, written: &Stat) -> Option<bool> {
        let token = self.register_cacher(session, path);
        let p = path.to_string();
        let now = self
            .replica
            .stale_read(move |m: &CellMachine| {
                m.state().node(&p).map(|n| (n.stat.instance, n.stat.modified_index, n.acl.open_to_all()))
            })
            .await
            .map_err(MasterError::from);
        // The last change to contents or ACL is still this write (a SetAcl moves the index on
        // but not the content generation).
        let same = |n: &Option<(u64, u64, bool)>| {
            n.is_some_and(|(i, m, _)| (i, m) == (written.instance, written.modified_index))
        };
        let open_to_all = matches!(now, Ok(Some((_, _, true))));
        self.settle_cacher(session, path, token, &now, same).then_some(open_to_all)
    }

    fn register_cacher(&self, session: SessionId, path: &str) -> Option<u64> {
        let mut g = self.lock();
        let g = &mut *g;
        let cell = &g.cell_name;
        g.cache.register(session, path, |p| full_path(cell, p), g.streams.get(&session))
    }

    /// After a read registered with `token`: whether its answer may be cached (the read
    /// succeeded, `cacheable` says its node may be cached at all, and no write took the
    /// registration away while it ran). A successful read of a node that may not be cached
    /// (an ephemeral one) withdraws the registration, so writes to it do not wait on this
    /// session. A failed read keeps it: the session may still cache the node from before.
    fn settle_cacher<T>(
        &self,
        session: SessionId,
        path: &str,
        token: Option<u64>,
        read: &Result<T, MasterError>,
        cacheable: impl FnOnce(&T) -> bool,
    ) -> bool {
        let (Some(token), Ok(answer)) = (token, read) else { return false };
        let mut g = self.lock();
        if cacheable(answer) {
            g.cache.still(session, path, token)
        } else {
            g.cache.unregister(session, path, token);
            false
        }
    }

    /// Chubby's cache invalidation before a write to `paths` commits: every session that may
    /// cache one of them is sent an invalidation and the write waits for its ack or the end
    /// of its lease (a session that lets its lease run out without acking is expired, so a
    /// cache that missed the invalidation can no longer be trusted by its client). The nodes
    /// are uncacheable until the returned guard drops.
    /// A `writer` session that dropped its own copy of the node (write-through) needs no
    /// invalidation.
    async fn begin_write(
        self: &Arc<Self>,
        paths: &[String],
        writer: Option<SessionId>,
    ) -> Result<WriteGuard, MasterError> {
        let (epoch, waits) = {
            let mut g = self.lock();
            let epoch = g.epoch.ok_or(MasterError::OfficeEnded("master stopped serving; retry"))?;
            let Inner { cache, streams, leases, unflushed, cell_name, .. } = &mut *g;
            let mut waits = Vec::new();
            for path in paths {
                waits.extend(cache.begin_write(path, &full_path(cell_name, path), writer, unflushed, streams, leases));
            }
            (epoch, waits)
        };
        let guard = WriteGuard { master: self.clone(), paths: paths.to_vec(), epoch };
        for (session, id, deadline, rx) in waits {
            let deadline = tokio::time::Instant::from_std(deadline);
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(())) => {}
                // The channel closed: the session ended (it needs no ack), or this master left
                // office (its invalidations are void; the write must start over).
                Ok(Err(_)) => {
                    if self.lock().epoch != Some(epoch) {
                        return Err(MasterError::OfficeEnded(CHANGED_WHILE_INVALIDATING));
                    }
                }
                Err(_) => {
                    tracing::warn!(session, ?paths, "no invalidation ack within the session's lease: expiring it");
                    self.lock().cache.give_up(id);
                    self.propose_expiry(session, epoch).await;
                }
            }
        }
        if self.lock().epoch != Some(epoch) {
            return Err(MasterError::OfficeEnded(CHANGED_WHILE_INVALIDATING));
        }
        Ok(guard)
    }

    /// Proposes a write whose caches `guard` invalidated: only in the term that did so (a new
    /// term's master has sessions of its own to invalidate first).
    async fn propose_guarded(
        &self,
        request: Option<RequestId>,
        op: Op,
        guard: &WriteGuard,
    ) -> Result<Outcome, ReplicaError> {
        match self.stamp() {
            Some((now_ms, epoch)) if epoch == guard.epoch => {
                self.propose_at(Command { now_ms, request, op }, epoch).await
            }
            _ => Err(ReplicaError::Dropped),
        }
    }
}

/// Ends a pending write's "uncacheable" marks (if the master is still in the term that set
/// them).
struct WriteGuard {
    master: Arc<Master>,
    paths: Vec<String>,
    epoch: u64,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        let mut g = self.master.lock();
        if g.epoch == Some(self.epoch) {
            for path in &self.paths {
                g.cache.end_write(path);
            }
        }
    }
}
