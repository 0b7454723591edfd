//! Calls on nodes (Chubby §2.6): Open, Close, CloseSession, GetContentsAndStat, GetStat,
//! ReadDir, SetContents, Append, Delete, Rename, SetAcl. Opening an existing permanent node and reading need no
//! log entry: a linearizable read checks them, and the handle is a signed capability. A read
//! the client may cache and every write go through the master's cache protocol.

use proto::chubby::*;
use tonic::Status;

use super::{stat, unexpected, ChubbyService};
use crate::machine::CellMachine;
use crate::service::status::status_of_state;
use crate::state::handle::{verify, verify_session_token};
use crate::state::{self, Create, Op, Reply, Rights, StateError};

impl ChubbyService {
    pub(super) async fn open_node(&self, req: OpenRequest) -> Result<OpenResponse, Status> {
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
        let existing = match create {
            None => {
                let p = path.clone();
                let read = move |st: &state::CellState| {
                    st.open_existing(session, &p).map(|(s, r)| (s, r, st.node(&p).is_some_and(|n| n.acl.open_to_all())))
                };
                let cached = self.master.cached_read(session, &path, read, |(s, _, _)| !s.ephemeral).await;
                Some(cached.map_err(|e| self.fail(e))?)
            }
            Some(_) => None,
        };
        let (s, rights, cacheable, id, open_to_all) = match existing {
            Some(((s, rights, open_to_all), cacheable)) if !s.ephemeral => (s, rights, cacheable, 0, open_to_all),
            _ => match self.call(request, Op::Open { path: path.clone(), create }).await? {
                Reply::Opened { stat, rights, .. } => (stat, rights, false, 0, false),
                Reply::OpenedEphemeral { stat, rights, handle, .. } => (stat, rights, false, handle, false),
                other => return Err(unexpected(other)),
            },
        };
        let handle = self.make_handle(session, &path, &s, rights, id);
        self.master.subscribe(session, &path, req.event_mask, &handle.token);
        Ok(OpenResponse { handle: Some(handle), stat: Some(NodeStat { open_to_all, ..stat(&s) }), cacheable })
    }

    pub(super) async fn close_handle(&self, req: CloseRequest) -> Result<CloseResponse, Status> {
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
        Ok(CloseResponse {})
    }

    pub(super) async fn end_session(&self, req: CloseSessionRequest) -> Result<CloseSessionResponse, Status> {
        let session = req.request.as_ref().map(|r| r.session).unwrap_or_default();
        let request = self.request_id(req.request.as_ref(), session)?;
        verify_session_token(&self.master.key(), session, &req.session_token).map_err(status_of_state)?;
        self.call(request, Op::CloseSession).await?;
        Ok(CloseSessionResponse {})
    }

    pub(super) async fn contents(&self, req: GetContentsRequest) -> Result<GetContentsResponse, Status> {
        let h = if req.stale_ok {
            // Any replica answers a stale read from its own state: the cell key that verifies
            // handles is replicated with everything else.
            let key = self.master.replica().stale_read(|m: &CellMachine| m.state().key().to_vec()).await;
            let key = key.map_err(|e| self.fail(e.into()))?;
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
            st.node_of_handle(session, &path, instance)
                .map(|n| (n.contents.clone(), n.stat.clone(), n.acl.open_to_all()))
        };
        if req.stale_ok {
            let (contents, s, open_to_all) = self
                .master
                .replica()
                .stale_read(move |m: &CellMachine| look(m.state()))
                .await
                .map_err(|e| self.fail(e.into()))?
                .map_err(status_of_state)?;
            let stat = Some(NodeStat { open_to_all, ..stat(&s) });
            return Ok(GetContentsResponse { contents, stat, stale: true, cacheable: false });
        }
        // Ephemeral nodes are never cacheable: they can vanish with a session's expiry, which
        // invalidates nothing.
        let read = self.master.cached_read(session, &h.path, look, |(_, s, _)| !s.ephemeral).await;
        let ((contents, s, open_to_all), cacheable) = read.map_err(|e| self.fail(e))?;
        Ok(GetContentsResponse { contents, stat: Some(NodeStat { open_to_all, ..stat(&s) }), stale: false, cacheable })
    }

    pub(super) async fn node_stat(&self, req: GetStatRequest) -> Result<GetStatResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::NONE)?;
        let (session, path, instance) = (h.session, h.path.clone(), h.instance);
        let look = move |st: &state::CellState| {
            st.node_of_handle(session, &path, instance).map(|n| (n.stat.clone(), n.acl.clone()))
        };
        let read = self.master.cached_read(session, &h.path, look, |(s, _)| !s.ephemeral).await;
        let ((s, acl), cacheable) = read.map_err(|e| self.fail(e))?;
        let stat = NodeStat { open_to_all: acl.open_to_all(), ..stat(&s) };
        let acl = NodeAcl { readers: acl.readers, writers: acl.writers, change_acl: acl.change_acl };
        Ok(GetStatResponse { stat: Some(stat), cacheable, acl: Some(acl) })
    }

    pub(super) async fn children(&self, req: ReadDirRequest) -> Result<ReadDirResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::READ)?;
        let entries = self
            .read(move |st| {
                st.node_of_handle(h.session, &h.path, h.instance)?;
                st.read_dir(&h.path)
            })
            .await?;
        Ok(ReadDirResponse {
            entries: entries.into_iter().map(|(name, s)| DirEntry { name, stat: Some(stat(&s)) }).collect(),
        })
    }

    pub(super) async fn write_contents(&self, req: SetContentsRequest) -> Result<SetContentsResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::WRITE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let writer = req.write_through.then_some(h.session);
        let path = h.path.clone();
        let sequencer = Some(req.sequencer).filter(|s| !s.is_empty());
        let op = Op::SetContents {
            path: h.path,
            instance: h.instance,
            contents: req.contents,
            if_generation: req.if_generation,
            sequencer,
        };
        match self.master.write(Some(request), &[&path], op, writer).await.map_err(|e| self.fail(e))? {
            (Reply::Stat(s), cached) => {
                let stat = Some(NodeStat { open_to_all: cached == Some(true), ..stat(&s) });
                Ok(SetContentsResponse { stat, cacheable: cached.is_some() })
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    pub(super) async fn append_contents(&self, req: AppendRequest) -> Result<AppendResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::WRITE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let writer = req.write_through.then_some(h.session);
        let path = h.path.clone();
        let sequencer = Some(req.sequencer).filter(|s| !s.is_empty());
        let op = Op::Append { path: h.path, instance: h.instance, data: req.data, sequencer };
        match self.master.write(Some(request), &[&path], op, writer).await.map_err(|e| self.fail(e))? {
            (Reply::Stat(s), cached) => {
                let stat = Some(NodeStat { open_to_all: cached == Some(true), ..stat(&s) });
                Ok(AppendResponse { stat, cacheable: cached.is_some() })
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    pub(super) async fn delete_node(&self, req: DeleteRequest) -> Result<DeleteResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::WRITE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let path = h.path.clone();
        let sequencer = Some(req.sequencer).filter(|s| !s.is_empty());
        let op = Op::Delete { path: h.path, instance: h.instance, if_generation: req.if_generation, sequencer };
        self.master.write(Some(request), &[&path], op, None).await.map_err(|e| self.fail(e))?;
        Ok(DeleteResponse {})
    }

    pub(super) async fn rename_node(&self, req: RenameRequest) -> Result<RenameResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::WRITE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let to = self.cell_path(&req.to)?;
        let path = h.path.clone();
        let op = Op::Rename { path: h.path, instance: h.instance, to: to.clone(), replace: !req.no_replace };
        match self.master.write(Some(request), &[&to, &path], op, None).await.map_err(|e| self.fail(e))? {
            (Reply::Stat(s), _) => Ok(RenameResponse { stat: Some(stat(&s)) }),
            (other, _) => Err(unexpected(other)),
        }
    }

    pub(super) async fn change_acl(&self, req: SetAclRequest) -> Result<SetAclResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::CHANGE_ACL)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let acl = state::Acl { readers: req.readers, writers: req.writers, change_acl: req.change_acl };
        let (path, instance) = (h.path, h.instance);
        let op = match req.if_acl_generation {
            Some(if_acl_generation) => Op::SetAclIf { path: path.clone(), instance, acl, if_acl_generation },
            None => Op::SetAcl { path: path.clone(), instance, acl },
        };
        match self.master.write(Some(request), &[&path], op, None).await.map_err(|e| self.fail(e))? {
            (Reply::Stat(s), _) => Ok(SetAclResponse { stat: Some(stat(&s)) }),
            (other, _) => Err(unexpected(other)),
        }
    }
}
