//! The `chubby.v1.Chubby` gRPC service (Chubby §2.6), served by the master. Each call is
//! checked here (the master's epoch, the handle signed with the cell key and its rights, the
//! request id) and handed to the [`Master`] as one typed request; its errors become statuses in
//! one place (`service::status`). The calls live by subject:
//!
//! - [`session`]: the session stream (open, resume, KeepAlive, invalidation acks);
//! - [`files`]: Open, Close, CloseSession, reads, SetContents, Delete, SetAcl;
//! - [`locks`]: Acquire, TryAcquire, Release, Cancel, sequencers;
//! - [`calls`]: every unary call above on one stream.

// gRPC's Status is the error of every call here; boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod calls;
mod files;
mod locks;
mod session;

use std::sync::Arc;

use proto::chubby::chubby_server::Chubby;
use proto::chubby::*;
use tonic::{Request, Response, Status, Streaming};

use crate::master::{Master, MasterError};
use crate::service::status::{status_of, status_of_state, Caller};
use crate::state::handle::{sign, verify, HandleBody};
use crate::state::{self, Reply, Rights, StateError};

#[derive(Clone)]
pub struct ChubbyService {
    master: Arc<Master>,
    cell_name: String,
    /// Whether clients are on mutual TLS, so that a session's principal comes from the
    /// certificate of the connection that opens it.
    certified: bool,
}

type Answer<T> = Result<Response<T>, Status>;

impl ChubbyService {
    pub fn new(master: Arc<Master>, cell_name: String, certified: bool) -> ChubbyService {
        ChubbyService { master, cell_name, certified }
    }

    /// The status a client acts on for the master's error.
    fn fail(&self, e: MasterError) -> Status {
        status_of(&self.master, Caller::Chubby, e)
    }

    /// Waits for this replica to serve as master and refuses a call made under another
    /// master's epoch (see [`Master::check_epoch`]).
    async fn check_epoch<T>(&self, req: &Request<T>) -> Result<u64, Status> {
        let theirs = req.metadata().get(proto::EPOCH_METADATA).map(|v| v.as_bytes());
        self.master.check_epoch(theirs).await.map_err(|e| self.fail(e))
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
        crate::master::full_path(&self.cell_name, path)
    }

    /// Verifies a handle and that it grants `needed`.
    fn handle(&self, h: Option<&Handle>, needed: Rights) -> Result<HandleBody, Status> {
        self.master.serving().map_err(|e| self.fail(e))?;
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
    async fn call(&self, request: state::RequestId, op: state::Op) -> Result<Reply, Status> {
        self.master.propose_call(request, op).await.map_err(|e| self.fail(e))
    }

    /// A linearizable read of the state (ReadIndex at the master).
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&state::CellState) -> Result<R, StateError> + Send + 'static,
    ) -> Result<R, Status> {
        self.master.read(f).await.map_err(|e| self.fail(e))
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
        // Said only where the answer has the node's ACL at hand.
        open_to_all: false,
    }
}

fn unexpected(r: Reply) -> Status {
    Status::internal(format!("unexpected answer from the state machine: {r:?}"))
}

/// Every call: the epoch is checked first, then the call's own handler runs.
#[tonic::async_trait]
impl Chubby for ChubbyService {
    type SessionStream = session::SessionStream;

    async fn session(&self, req: Request<Streaming<SessionRequest>>) -> Answer<Self::SessionStream> {
        let who = match self.certified {
            false => None,
            true => match proto::tls::peer_principal(req.peer_certs().as_deref().map(|c| c.as_slice())) {
                Ok(p) => Some(p),
                Err(why) => return Err(Status::unauthenticated(why)),
            },
        };
        self.serve_session(req.into_inner(), who).await.map(Response::new)
    }

    async fn open(&self, req: Request<OpenRequest>) -> Answer<OpenResponse> {
        self.check_epoch(&req).await?;
        self.open_node(req.into_inner()).await.map(Response::new)
    }

    async fn close(&self, req: Request<CloseRequest>) -> Answer<CloseResponse> {
        self.check_epoch(&req).await?;
        self.close_handle(req.into_inner()).await.map(Response::new)
    }

    async fn close_session(&self, req: Request<CloseSessionRequest>) -> Answer<CloseSessionResponse> {
        self.check_epoch(&req).await?;
        self.end_session(req.into_inner()).await.map(Response::new)
    }

    async fn get_contents_and_stat(&self, req: Request<GetContentsRequest>) -> Answer<GetContentsResponse> {
        // A stale read is answered by any replica, under any epoch.
        if !req.get_ref().stale_ok {
            self.check_epoch(&req).await?;
        }
        self.contents(req.into_inner()).await.map(Response::new)
    }

    async fn get_stat(&self, req: Request<GetStatRequest>) -> Answer<GetStatResponse> {
        self.check_epoch(&req).await?;
        self.node_stat(req.into_inner()).await.map(Response::new)
    }

    async fn read_dir(&self, req: Request<ReadDirRequest>) -> Answer<ReadDirResponse> {
        self.check_epoch(&req).await?;
        self.children(req.into_inner()).await.map(Response::new)
    }

    async fn set_contents(&self, req: Request<SetContentsRequest>) -> Answer<SetContentsResponse> {
        self.check_epoch(&req).await?;
        self.write_contents(req.into_inner()).await.map(Response::new)
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Answer<DeleteResponse> {
        self.check_epoch(&req).await?;
        self.delete_node(req.into_inner()).await.map(Response::new)
    }

    async fn set_acl(&self, req: Request<SetAclRequest>) -> Answer<SetAclResponse> {
        self.check_epoch(&req).await?;
        self.change_acl(req.into_inner()).await.map(Response::new)
    }

    async fn append(&self, req: Request<AppendRequest>) -> Answer<AppendResponse> {
        self.check_epoch(&req).await?;
        self.append_contents(req.into_inner()).await.map(Response::new)
    }

    async fn rename(&self, req: Request<RenameRequest>) -> Answer<RenameResponse> {
        self.check_epoch(&req).await?;
        self.rename_node(req.into_inner()).await.map(Response::new)
    }

    async fn acquire(&self, req: Request<AcquireRequest>) -> Answer<AcquireResponse> {
        self.check_epoch(&req).await?;
        self.acquire_lock(req.into_inner(), false).await.map(Response::new)
    }

    async fn try_acquire(&self, req: Request<AcquireRequest>) -> Answer<AcquireResponse> {
        self.check_epoch(&req).await?;
        self.acquire_lock(req.into_inner(), true).await.map(Response::new)
    }

    async fn release(&self, req: Request<ReleaseRequest>) -> Answer<ReleaseResponse> {
        self.check_epoch(&req).await?;
        self.release_lock(req.into_inner()).await.map(Response::new)
    }

    async fn cancel(&self, req: Request<CancelRequest>) -> Answer<CancelResponse> {
        self.check_epoch(&req).await?;
        self.cancel_wait(req.into_inner()).await.map(Response::new)
    }

    async fn get_sequencer(&self, req: Request<GetSequencerRequest>) -> Answer<GetSequencerResponse> {
        self.check_epoch(&req).await?;
        self.sequencers(req.into_inner()).await.map(Response::new)
    }

    async fn check_sequencer(&self, req: Request<CheckSequencerRequest>) -> Answer<CheckSequencerResponse> {
        self.check_epoch(&req).await?;
        self.validate_sequencer(req.into_inner()).await.map(Response::new)
    }

    type CallsStream = calls::CallAnswers;

    async fn calls(&self, req: Request<Streaming<Call>>) -> Answer<Self::CallsStream> {
        Ok(Response::new(calls::serve(self.clone(), req.into_inner())))
    }
}
