//! The `chubby.v1.Chubby` gRPC service (Chubby §2.6), served by the master. Handles are
//! verified here with the cell key; every change goes through the log as a session call with
//! its request id; state-machine refusals become gRPC statuses in [`status_of_state`], in one
//! place, with the reason in the `chubby-error` metadata key.

// gRPC's Status is the error of every call here; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::pin::Pin;
use std::sync::Arc;

use proto::chubby::chubby_server::Chubby;
use proto::chubby::*;
use raft::NodeError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::machine::CellMachine;
use crate::master::{session_lost, Master, WriteGuard};
use crate::state::handle::{sign, verify, verify_session_token, HandleBody};
use crate::state::{self, Create, Holder, Op, Reply, Rights, StateError};

use proto::ERROR_METADATA;

#[derive(Clone)]
pub struct ChubbyService {
    master: Arc<Master>,
    cell_name: String,
}

/// Runs a write (SetContents, Delete, SetAcl) to its end even if its client goes away, which
/// makes hyper drop the handler: the write's pending mark must last until its entry's fate is
/// known, or a read in between could be cached and then outlive the write uninvalidated.
pub(crate) async fn to_the_end<T: Send + 'static>(
    write: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Result<T, Status> {
    tokio::spawn(write).await.unwrap_or_else(|e| Err(Status::internal(format!("the write's task failed: {e}"))))
}

/// Maps a state-machine refusal to a gRPC status (DESIGN.md, Errors).
pub fn status_of_state(e: StateError) -> Status {
    let code = match &e {
        StateError::InvalidArgument(_) => Code::InvalidArgument,
        StateError::NotFound(_) | StateError::NoSession(_) => Code::NotFound,
        StateError::Exists(_) => Code::AlreadyExists,
        StateError::TooLarge(_) | StateError::LimitExceeded(_) => Code::ResourceExhausted,
        StateError::PermissionDenied(_) | StateError::StaleSequencer | StateError::StaleHandle(_) => {
            Code::PermissionDenied
        }
        StateError::NotEmpty(_)
        | StateError::NotADirectory(_)
        | StateError::IsADirectory(_)
        | StateError::GenerationMismatch { .. }
        | StateError::LockBusy(_)
        | StateError::NotHeld(_)
        | StateError::LockHeld(_)
        | StateError::Forgotten(_) => Code::FailedPrecondition,
        StateError::WaitEnded { .. } => Code::Aborted,
    };
    let mut s = Status::new(code, e.to_string());
    s.metadata_mut().insert(ERROR_METADATA, MetadataValue::from_static(e.reason()));
    s
}

fn stat(s: &state::Stat) -> NodeStat {
    NodeStat {
        instance_number: s.instance,
        content_generation: s.content_generation,
        lock_generation: s.lock_generation,
        acl_generation: s.acl_generation,
        checksum: s.checksum,
        length: s.length,
        is_directory: s.directory,
        is_ephemeral: s.ephemeral,
        ctime_ms: s.ctime_ms,
        mtime_ms: s.mtime_ms,
        modified_index: s.modified_index,
    }
}

fn mode_of(m: i32) -> Result<state::LockMode, Status> {
    match LockMode::try_from(m) {
        Ok(LockMode::LockExclusive) => Ok(state::LockMode::Exclusive),
        Ok(LockMode::LockShared) => Ok(state::LockMode::Shared),
        Err(_) => Err(Status::invalid_argument(format!("unknown lock mode {m}"))),
    }
}

fn unexpected(r: Reply) -> Status {
    Status::internal(format!("unexpected answer from the state machine: {r:?}"))
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<SessionResponse, Status>> + Send>>;

impl ChubbyService {
    pub fn new(master: Arc<Master>, cell_name: String) -> ChubbyService {
        ChubbyService { master, cell_name }
    }

    fn node_error(&self, e: NodeError) -> Status {
        self.master.node_error(e)
    }

    /// `/ls/<cell>/a/b` → `/a/b`.
    fn cell_path(&self, path: &str) -> Result<String, Status> {
        let prefix = format!("/ls/{}", self.cell_name);
        match path.strip_prefix(&prefix) {
            Some("") => Ok("/".into()),
            Some(rest) if rest.starts_with('/') => Ok(rest.to_string()),
            _ => Err(Status::invalid_argument(format!("{path:?}: this cell's paths start with {prefix}/"))),
        }
    }

    fn full_path(&self, path: &str) -> String {
        if path == "/" {
            format!("/ls/{}", self.cell_name)
        } else {
            format!("/ls/{}{path}", self.cell_name)
        }
    }

    /// Verifies a handle and that it grants `needed`.
    fn handle(&self, h: Option<&Handle>, needed: Rights) -> Result<HandleBody, Status> {
        self.master.serving()?;
        let token = h.map(|h| h.token.as_ref()).unwrap_or_default();
        let body = verify(&self.master.key(), token).map_err(status_of_state)?;
        if !body.rights.allows(needed) {
            return Err(status_of_state(StateError::PermissionDenied(format!(
                "{}: handle opened with rights {} lacks {needed}",
                self.full_path(&body.path),
                body.rights
            ))));
        }
        Ok(body)
    }

    fn request_id(&self, r: Option<&RequestId>, session: u64) -> Result<state::RequestId, Status> {
        let r = r.ok_or_else(|| Status::invalid_argument("a request id is required on every change"))?;
        if r.session != session {
            return Err(Status::permission_denied("request id names another session than the handle"));
        }
        if r.sequence == 0 {
            return Err(Status::invalid_argument("request sequence numbers start at 1"));
        }
        Ok(state::RequestId { session: r.session, sequence: r.sequence, first_incomplete: r.first_incomplete })
    }

    /// Proposes a session call and returns its answer (or its refusal as a status).
    async fn call(&self, request: state::RequestId, op: Op) -> Result<Reply, Status> {
        self.call_with(request, op, None).await
    }

    /// A session call that changes a node whose caches `guard` invalidated.
    async fn call_guarded(&self, request: state::RequestId, op: Op, guard: &WriteGuard) -> Result<Reply, Status> {
        self.call_with(request, op, Some(guard)).await
    }

    async fn call_with(&self, request: state::RequestId, op: Op, guard: Option<&WriteGuard>) -> Result<Reply, Status> {
        let proposed = match guard {
            Some(g) => self.master.propose_guarded(Some(request), op, g).await,
            None => self.master.propose_op(Some(request), op).await,
        };
        match proposed {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(status_of_state(e)),
            Err(e) => Err(self.node_error(e)),
        }
    }

    /// A linearizable read of the state (ReadIndex at the master).
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&state::CellState) -> Result<R, StateError> + Send + 'static,
    ) -> Result<R, Status> {
        match self.master.node().read(move |m: &CellMachine| f(m.state())).await {
            Ok(r) => r.map_err(status_of_state),
            Err(e) => Err(self.node_error(e)),
        }
    }

    fn make_handle(&self, session: u64, path: &str, s: &state::Stat, rights: Rights, handle: u64) -> Handle {
        let body = HandleBody {
            session,
            path: path.to_string(),
            instance: s.instance,
            rights,
            ephemeral: s.ephemeral,
            handle,
        };
        Handle { token: sign(&self.master.key(), &body), rights: u32::from(rights.0) }
    }

    async fn write_contents(&self, req: SetContentsRequest) -> Result<SetContentsResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::WRITE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let (session, path) = (h.session, h.path.clone());
        let pending = self.master.begin_write_by(&h.path, req.write_through.then_some(session)).await?;
        let sequencer = Some(req.sequencer).filter(|s| !s.is_empty());
        let op = Op::SetContents {
            path: h.path,
            instance: h.instance,
            contents: req.contents,
            if_generation: req.if_generation,
            sequencer,
        };
        let s = match self.call_guarded(request, op, &pending).await? {
            Reply::Stat(s) => s,
            other => return Err(unexpected(other)),
        };
        drop(pending);
        let cacheable = req.write_through && !s.ephemeral && self.cache_written(session, &path, &s).await;
        Ok(SetContentsResponse { stat: Some(stat(&s)), cacheable })
    }

    /// After a write-through write (its pending mark gone): counts the writer among the
    /// node's cachers if the node still holds what it wrote. Registering first and then
    /// looking at the state (this master's applied state holds every write answered before)
    /// covers both sides: a write that began before the registration is still pending (no
    /// registration) or already visible in the state (a later modified index); one that begins
    /// after it invalidates the writer like any cacher.
    async fn cache_written(&self, session: u64, path: &str, written: &state::Stat) -> bool {
        let token = self.master.register_cacher(session, path);
        let p = path.to_string();
        let now = self
            .master
            .node()
            .stale_read(move |m: &CellMachine| m.state().node(&p).map(|n| (n.stat.instance, n.stat.modified_index)))
            .await
            .map_err(|e| self.node_error(e));
        // The last change to contents or ACL is still this write (a SetAcl moves the index on
        // but not the content generation).
        let same = |n: &Option<(u64, u64)>| *n == Some((written.instance, written.modified_index));
        self.master.settle_cacher(session, path, token, &now, same)
    }

    async fn acquire(&self, req: AcquireRequest, try_only: bool) -> Result<AcquireResponse, Status> {
        let mode = mode_of(req.mode)?;
        // Either mode needs write permission (Chubby §2.4): a reader must not be able to
        // block writers by holding a shared lock.
        let h = self.handle(req.handle.as_ref(), Rights::WRITE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let (session, owner, path) = (h.session, req.owner, h.path.clone());
        let op =
            Op::Acquire { path: h.path, instance: h.instance, mode, owner, lock_delay_ms: req.lock_delay_ms, try_only };
        match self.call(request, op).await? {
            Reply::Granted { sequencer } => Ok(AcquireResponse { granted: true, queued: false, sequencer }),
            Reply::Queued => {
                // Register first, then look: a grant applied before the registration is seen
                // by the read, one applied after it wakes the registration.
                let rx = self.master.wait_for_grant(session, owner, &path);
                let p = path.clone();
                let holder = Holder { session, owner };
                let now = self
                    .master
                    .node()
                    .stale_read(move |m: &CellMachine| {
                        (m.state().sequencer_of(&p, holder), m.state().is_waiting(&p, holder))
                    })
                    .await
                    .map_err(|e| self.node_error(e))?;
                match now {
                    (Some(sequencer), _) => return Ok(AcquireResponse { granted: true, queued: false, sequencer }),
                    (None, false) => {
                        return Err(status_of_state(StateError::WaitEnded { path, reason: "no longer queued".into() }))
                    }
                    (None, true) => {}
                }
                match rx.await {
                    Ok(Ok(sequencer)) => Ok(AcquireResponse { granted: true, queued: false, sequencer }),
                    Ok(Err(e)) => Err(status_of_state(e)),
                    Err(_) => Err(Status::unavailable(
                        "the master changed while the Acquire waited; retry it with the same request id",
                    )),
                }
            }
            other => Err(unexpected(other)),
        }
    }
}

#[tonic::async_trait]
impl Chubby for ChubbyService {
    type SessionStream = SessionStream;

    async fn session(&self, req: Request<Streaming<SessionRequest>>) -> Result<Response<SessionStream>, Status> {
        self.master.await_serving().await?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let master = self.master.clone();
        tokio::spawn(async move {
            let mut mine = std::collections::HashSet::new();
            while let Ok(Some(msg)) = inbound.message().await {
                let reply = match msg.kind {
                    // attach() sends the grant itself (and a failover event after it).
                    Some(session_request::Kind::Open(o)) => match master.open_session(o, &tx).await {
                        Ok(grant) => {
                            mine.insert(grant.session);
                            continue;
                        }
                        Err(e) => Err(e),
                    },
                    Some(session_request::Kind::KeepAlive(k))
                        if mine.contains(&k.session) && k.more_sessions.iter().all(|s| mine.contains(s)) =>
                    {
                        master.keep_alive(k.session, &k.more_sessions, &tx)
                    }
                    Some(session_request::Kind::KeepAlive(k)) => {
                        Err(Status::permission_denied(format!("session {} was not opened on this stream", k.session)))
                    }
                    Some(session_request::Kind::InvalidationAck(a)) => {
                        master.ack_invalidation(a.invalidation_id, &mine);
                        continue;
                    }
                    None => continue,
                };
                let msg = reply.map(|g| SessionResponse { kind: Some(session_response::Kind::Lease(g)) });
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
            master.detach(&mine, &tx);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn open(&self, req: Request<OpenRequest>) -> Result<Response<OpenResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let req = req.into_inner();
        let r = req.request.as_ref().ok_or_else(|| Status::invalid_argument("a request id is required"))?;
        let session = r.session;
        let request = self.request_id(Some(r), session)?;
        verify_session_token(&self.master.key(), session, &req.session_token).map_err(status_of_state)?;
        let path = self.cell_path(&req.path)?;
        let create = req.create.then(|| Create {
            directory: req.directory,
            ephemeral: req.ephemeral,
            exclusive: req.exclusive,
            contents: req.initial_contents.clone(),
        });
        // Opening an existing permanent node needs no log entry: a linearizable read checks
        // it and the ACL; the handle is a signed capability.
        // Registered as a cacher before the read, as in GetContentsAndStat.
        let cache_token = create.is_none().then(|| self.master.register_cacher(session, &path)).flatten();
        let existing = if create.is_none() {
            let p = path.clone();
            let r = self.read(move |st| st.open_existing(session, &p)).await;
            let cacheable = self.master.settle_cacher(session, &path, cache_token, &r, |(s, _)| !s.ephemeral);
            Some((r?, cacheable))
        } else {
            None
        };
        let (s, rights, cacheable, id) = match existing {
            Some(((s, rights), cacheable)) if !s.ephemeral => (s, rights, cacheable, 0),
            _ => match self.call(request, Op::Open { path: path.clone(), create }).await? {
                Reply::Opened { stat, rights, .. } => (stat, rights, false, 0),
                Reply::OpenedEphemeral { stat, rights, handle, .. } => (stat, rights, false, handle),
                other => return Err(unexpected(other)),
            },
        };
        let handle = self.make_handle(session, &path, &s, rights, id);
        self.master.subscribe(session, &path, req.event_mask, &handle.token);
        Ok(Response::new(OpenResponse { handle: Some(handle), stat: Some(stat(&s)), cacheable }))
    }

    async fn close(&self, req: Request<CloseRequest>) -> Result<Response<CloseResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let req = req.into_inner();
        let h = self.handle(req.handle.as_ref(), Rights::NONE)?;
        let token = req.handle.as_ref().map(|h| h.token.as_ref()).unwrap_or_default();
        self.master.handle_closed(h.session, &h.path, token);
        if h.ephemeral {
            let request = self.request_id(req.request.as_ref(), h.session)?;
            // A handle signed before handles had ids (0) closes one of the session's handles.
            let op = match h.handle {
                0 => Op::Close { path: h.path, instance: h.instance },
                id => Op::CloseHandle { path: h.path, instance: h.instance, handle: id },
            };
            self.call(request, op).await?;
        }
        Ok(Response::new(CloseResponse {}))
    }

    async fn close_session(&self, req: Request<CloseSessionRequest>) -> Result<Response<CloseSessionResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let req = req.into_inner();
        let session = req.request.as_ref().map(|r| r.session).unwrap_or_default();
        let request = self.request_id(req.request.as_ref(), session)?;
        verify_session_token(&self.master.key(), session, &req.session_token).map_err(status_of_state)?;
        self.call(request, Op::CloseSession).await?;
        Ok(Response::new(CloseSessionResponse {}))
    }

    async fn get_contents_and_stat(
        &self,
        req: Request<GetContentsRequest>,
    ) -> Result<Response<GetContentsResponse>, Status> {
        if !req.get_ref().stale_ok {
            self.master.check_epoch(req.metadata()).await?;
        }
        let req = req.into_inner();
        let h = if req.stale_ok {
            // Any replica answers a stale read from its own state: the cell key that verifies
            // handles is replicated with everything else.
            let key = self.master.node().stale_read(|m: &CellMachine| m.state().key().to_vec()).await;
            let key = key.map_err(|e| self.node_error(e))?;
            let token = req.handle.as_ref().map(|h| h.token.as_ref()).unwrap_or_default();
            let body = verify(&key, token).map_err(status_of_state)?;
            if !body.rights.allows(Rights::READ) {
                return Err(status_of_state(StateError::PermissionDenied("handle lacks the read right".into())));
            }
            body
        } else {
            self.handle(req.handle.as_ref(), Rights::READ)?
        };
        let (session, path, instance) = (h.session, h.path.clone(), h.instance);
        let look = move |st: &state::CellState| {
            st.node_of_handle(session, &path, instance).map(|n| (n.contents.clone(), n.stat.clone()))
        };
        if req.stale_ok {
            let (contents, s) = self
                .master
                .node()
                .stale_read(move |m: &CellMachine| look(m.state()))
                .await
                .map_err(|e| self.node_error(e))?
                .map_err(status_of_state)?;
            return Ok(Response::new(GetContentsResponse {
                contents,
                stat: Some(stat(&s)),
                stale: true,
                cacheable: false,
            }));
        }
        // Ephemeral nodes are never cacheable: they can vanish with a session's expiry, which
        // invalidates nothing.
        let token = self.master.register_cacher(session, &h.path);
        let r = self.read(look).await;
        let cacheable = self.master.settle_cacher(session, &h.path, token, &r, |(_, s)| !s.ephemeral);
        let (contents, s) = r?;
        Ok(Response::new(GetContentsResponse { contents, stat: Some(stat(&s)), stale: false, cacheable }))
    }

    async fn get_stat(&self, req: Request<GetStatRequest>) -> Result<Response<GetStatResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let req = req.into_inner();
        let h = self.handle(req.handle.as_ref(), Rights::NONE)?;
        let (session, path, instance) = (h.session, h.path.clone(), h.instance);
        let token = self.master.register_cacher(session, &h.path);
        let r = self
            .read(move |st| st.node_of_handle(session, &path, instance).map(|n| (n.stat.clone(), n.acl.clone())))
            .await;
        let cacheable = self.master.settle_cacher(session, &h.path, token, &r, |(s, _)| !s.ephemeral);
        let (s, acl) = r?;
        let acl = NodeAcl { readers: acl.readers, writers: acl.writers, change_acl: acl.change_acl };
        Ok(Response::new(GetStatResponse { stat: Some(stat(&s)), cacheable, acl: Some(acl) }))
    }

    async fn read_dir(&self, req: Request<ReadDirRequest>) -> Result<Response<ReadDirResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let req = req.into_inner();
        let h = self.handle(req.handle.as_ref(), Rights::READ)?;
        let entries = self
            .read(move |st| {
                st.node_of_handle(h.session, &h.path, h.instance)?;
                st.read_dir(&h.path)
            })
            .await?;
        Ok(Response::new(ReadDirResponse {
            entries: entries.into_iter().map(|(name, s)| DirEntry { name, stat: Some(stat(&s)) }).collect(),
        }))
    }

    async fn set_contents(&self, req: Request<SetContentsRequest>) -> Result<Response<SetContentsResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let this = self.clone();
        to_the_end(async move { this.write_contents(req.into_inner()).await }).await.map(Response::new)
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let this = self.clone();
        to_the_end(async move { this.delete_node(req.into_inner()).await }).await.map(Response::new)
    }

    async fn acquire(&self, req: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        ChubbyService::acquire(self, req.into_inner(), false).await.map(Response::new)
    }

    async fn try_acquire(&self, req: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        ChubbyService::acquire(self, req.into_inner(), true).await.map(Response::new)
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let req = req.into_inner();
        let h = self.handle(req.handle.as_ref(), Rights::NONE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        self.call(request, Op::Release { path: h.path, instance: h.instance, owner: req.owner }).await?;
        Ok(Response::new(ReleaseResponse {}))
    }

    async fn cancel(&self, req: Request<CancelRequest>) -> Result<Response<CancelResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let req = req.into_inner();
        let h = self.handle(req.handle.as_ref(), Rights::NONE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        match self.call(request, Op::Cancel { path: h.path.clone(), instance: h.instance, owner: req.owner }).await? {
            Reply::Done => Ok(Response::new(CancelResponse {})),
            // Granted before the cancel arrived: say so, so the caller releases it.
            Reply::Granted { sequencer } => Err(Status::already_exists(format!(
                "{}: the lock was granted before the cancel (sequencer {sequencer}); release it",
                self.full_path(&h.path)
            ))),
            other => Err(unexpected(other)),
        }
    }

    async fn get_sequencer(&self, req: Request<GetSequencerRequest>) -> Result<Response<GetSequencerResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let req = req.into_inner();
        if req.holders {
            let h = self.handle(req.handle.as_ref(), Rights::READ)?;
            let holders = self
                .read(move |st| {
                    st.node_of_handle(h.session, &h.path, h.instance)?;
                    Ok(st.holder_sequencers(&h.path))
                })
                .await?;
            return Ok(Response::new(GetSequencerResponse { sequencer: String::new(), holders }));
        }
        let h = self.handle(req.handle.as_ref(), Rights::NONE)?;
        let holder = Holder { session: h.session, owner: req.owner };
        let sequencer = self
            .read(move |st| {
                st.node_of_handle(h.session, &h.path, h.instance)?;
                st.sequencer_of(&h.path, holder).ok_or(StateError::NotHeld(h.path))
            })
            .await?;
        Ok(Response::new(GetSequencerResponse { sequencer, holders: Vec::new() }))
    }

    async fn check_sequencer(
        &self,
        req: Request<CheckSequencerRequest>,
    ) -> Result<Response<CheckSequencerResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let seq = req.into_inner().sequencer;
        let valid = self.read(move |st| Ok(st.check_sequencer(&seq))).await?;
        Ok(Response::new(CheckSequencerResponse { valid }))
    }

    async fn set_acl(&self, req: Request<SetAclRequest>) -> Result<Response<SetAclResponse>, Status> {
        self.master.check_epoch(req.metadata()).await?;
        let this = self.clone();
        to_the_end(async move { this.change_acl(req.into_inner()).await }).await.map(Response::new)
    }

    type CallsStream = crate::calls::CallAnswers;

    async fn calls(&self, req: Request<Streaming<Call>>) -> Result<Response<Self::CallsStream>, Status> {
        Ok(Response::new(crate::calls::serve(self.clone(), req.into_inner())))
    }
}

impl ChubbyService {
    async fn delete_node(&self, req: DeleteRequest) -> Result<DeleteResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::WRITE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let pending = self.master.begin_write(&h.path).await?;
        let sequencer = Some(req.sequencer).filter(|s| !s.is_empty());
        let op = Op::Delete { path: h.path, instance: h.instance, if_generation: req.if_generation, sequencer };
        self.call_guarded(request, op, &pending).await?;
        Ok(DeleteResponse {})
    }

    async fn change_acl(&self, req: SetAclRequest) -> Result<SetAclResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::CHANGE_ACL)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let pending = self.master.begin_write(&h.path).await?;
        let acl = state::Acl { readers: req.readers, writers: req.writers, change_acl: req.change_acl };
        let (path, instance) = (h.path, h.instance);
        let op = match req.if_acl_generation {
            Some(if_acl_generation) => Op::SetAclIf { path, instance, acl, if_acl_generation },
            None => Op::SetAcl { path, instance, acl },
        };
        match self.call_guarded(request, op, &pending).await? {
            Reply::Stat(s) => Ok(SetAclResponse { stat: Some(stat(&s)) }),
            other => Err(unexpected(other)),
        }
    }
}

impl Master {
    /// OpenSession on a stream: a new session (logged) or the resumption of a live one.
    pub async fn open_session(&self, o: OpenSession, tx: &crate::master::StreamTx) -> Result<LeaseGrant, Status> {
        self.serving()?;
        if o.resume_session == 0 {
            let op = Op::CreateSession { principal: o.principal, open_id: o.open_id };
            let id = match self.propose_op(None, op).await.map_err(|e| self.node_error(e))? {
                Ok(Reply::Session { id }) => id,
                Ok(other) => return Err(unexpected(other)),
                Err(e) => return Err(status_of_state(e)),
            };
            return self.attach(id, tx, false);
        }
        let id = o.resume_session;
        verify_session_token(&self.key(), id, &o.session_token).map_err(status_of_state)?;
        let alive = self
            .node()
            .read(move |m: &CellMachine| m.state().session(id).is_some())
            .await
            .map_err(|e| self.node_error(e))?;
        if !alive {
            return Err(session_lost(id));
        }
        // The session's subscriptions, by the handles it opened them with: only what a valid
        // handle of this very session names (a forged or foreign one is ignored).
        let key = self.key();
        for sub in &o.resubscribe {
            let token = sub.handle.as_ref().map(|h| h.token.as_ref()).unwrap_or_default();
            match crate::state::handle::verify(&key, token) {
                Ok(body) if body.session == id => self.subscribe(id, &body.path, sub.event_mask, token),
                _ => tracing::warn!(session = id, "a resumed session named a subscription by a handle not its own"),
            }
        }
        self.attach(id, tx, true)
    }
}
