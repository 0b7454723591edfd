//! The `chubby.cell.Cell` gRPC service. Every replica answers `Status` and stale reads itself;
//! writes and linearizable reads need the leader, so other replicas answer
//! `FAILED_PRECONDITION` with the leader's address in the [`proto::LEADER_METADATA`] key (or
//! `UNAVAILABLE` while no leader is known), as `service::status` maps them.

// gRPC's Status is the error of every call here; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use proto::cell::cell_server::{Cell, CellServer};
use proto::cell::*;
use raft::{ProgressState, ReplicaError, ReplicaHandle, ReplicaId, Role};
use tonic::{Request, Response, Status, Streaming};

use super::answer_stream::{AnswerStream, Rules};
use super::status::{status_of, status_of_replica, status_of_state, Caller};
use super::wire::header_safe;
use crate::machine::CellMachine;
use crate::master::{Master, MasterError};
use crate::state::{validate_path, Op, Reply, StateError};

/// The service of one replica.
#[derive(Clone)]
pub struct CellService {
    replica: ReplicaHandle<CellMachine>,
    master: Arc<Master>,
    cell_name: Arc<str>,
    fsync: Arc<str>,
    /// With TLS: the principals allowed the key-value calls (Put, Get, List), which bypass
    /// the nodes' ACLs. `None` without TLS, where no caller is known.
    admins: Option<Arc<[String]>>,
    /// See [`super::backup::save_slots`].
    save_slots: Arc<tokio::sync::Semaphore>,
}

/// Puts of one pipelined stream in flight at once, at most; beyond this the stream is not read
/// until some are answered, so HTTP/2 flow control holds the client back.
const PIPELINE_DEPTH: usize = 1024;

impl CellService {
    pub fn new(
        replica: ReplicaHandle<CellMachine>,
        master: Arc<Master>,
        cell_name: String,
        fsync: String,
        admins: Option<Vec<String>>,
    ) -> Self {
        CellService {
            replica,
            master,
            cell_name: cell_name.into(),
            fsync: fsync.into(),
            admins: admins.map(Into::into),
            save_slots: super::backup::save_slots(),
        }
    }

    /// Refuses an operator call (key-value, membership) from anyone but an admin (when callers are known).
    #[allow(clippy::result_large_err)]
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(admins) = &self.admins else { return Ok(()) };
        let certs = req.peer_certs();
        let Some(leaf) = certs.as_deref().and_then(|c| c.first()) else {
            return Err(Status::unauthenticated("no client certificate"));
        };
        let name = proto::tls::principal_of_cert(leaf).map_err(Status::unauthenticated)?;
        if admins.contains(&name) {
            return Ok(());
        }
        Err(header_safe(status_of_state(StateError::PermissionDenied(format!(
            "{name} may not use the operator calls (key-value, membership, backup): not in the cell's admins"
        )))))
    }

    pub fn into_server(self) -> CellServer<CellService> {
        CellServer::new(self)
    }

    /// The status an operator's client acts on for a master's error.
    fn fail(&self, e: MasterError) -> Status {
        status_of(&self.master, Caller::Cell, e)
    }

    pub(super) fn replica(&self) -> &ReplicaHandle<CellMachine> {
        &self.replica
    }

    pub(super) fn save_slots(&self) -> &Arc<tokio::sync::Semaphore> {
        &self.save_slots
    }

    pub(super) fn cell_name(&self) -> &str {
        &self.cell_name
    }

    /// The status for a Raft replica's error on a read.
    pub(super) fn status_of(&self, e: ReplicaError) -> Status {
        status_of_replica(&self.master, Caller::Cell, e)
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
    }
}

impl CellService {
    /// A put: its revision (log index) once applied. Refused before anything is invalidated
    /// or replicated: a value the state machine would refuse at apply, and a path that is not
    /// one. The caller runs it to its end (its path stays uncacheable until the entry is
    /// applied or known lost, whatever happens to the call or stream that asked).
    async fn put_one(&self, req: PutRequest) -> Result<u64, Status> {
        let path = key_path(&req.key);
        if req.value.len() > crate::state::MAX_CONTENTS {
            return Err(status_of_state(StateError::TooLarge(req.value.len() as u64)));
        }
        validate_path(&path, u32::MAX).map_err(status_of_state)?;
        self.put_applied(path, req.value).await
    }

    async fn put_applied(&self, path: String, value: bytes::Bytes) -> Result<u64, Status> {
        // Cached copies are invalidated first, as for a session's write; so only a serving
        // master takes the write (see `Master::write`).
        let op = Op::AdminPut { path: path.clone(), contents: value };
        match self.master.write(None, &[&path], op, None).await.map_err(|e| self.fail(e))? {
            (Reply::Stat(stat), _) => Ok(stat.modified_index),
            (other, _) => Err(Status::internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// A pipelined put and its answer, failures included (the stream goes on after one).
    async fn pipelined(self, req: PipelinedPut) -> PipelinedPutResult {
        let id = req.id;
        let Some(put) = req.put else {
            return PipelinedPutResult {
                id,
                code: tonic::Code::InvalidArgument as i32,
                message: "a pipelined put without its put".into(),
                ..Default::default()
            };
        };
        match self.put_one(put).await {
            Ok(revision) => PipelinedPutResult { id, revision, ..Default::default() },
            Err(s) => PipelinedPutResult {
                id,
                code: s.code() as i32,
                message: s.message().to_string(),
                reason: s
                    .metadata()
                    .get(proto::ERROR_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                leader: s
                    .metadata()
                    .get(proto::LEADER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                ..Default::default()
            },
        }
    }
}

#[tonic::async_trait]
impl Cell for CellService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let st = self.replica.status().await.map_err(|e| self.status_of(e))?;
        let (sessions, remembered_answers, nodes, max_nodes, content_bytes, queued_locks) = self
            .replica
            .stale_read(|m: &CellMachine| {
                let st = m.state();
                (
                    st.sessions().count() as u64,
                    st.sessions().map(|(_, s)| s.replies.len() as u64).sum(),
                    st.node_count() as u64,
                    st.limits().max_nodes,
                    st.content_bytes(),
                    st.sessions().map(|(_, s)| s.waiting.len() as u64).sum(),
                )
            })
            .await
            .unwrap_or_default();
        let (subscriptions, cache_registrations, lock_waiters) = self.master.table_sizes();
        let r = &st.raft;
        let members = self.replica.members().borrow().clone();
        let addr = |id: ReplicaId| members.addrs.get(&id).cloned().unwrap_or_default();
        Ok(Response::new(StatusResponse {
            id: r.id,
            address: addr(r.id),
            cell_name: self.cell_name.to_string(),
            role: role_name(r.role).to_string(),
            leader_id: r.leader_id,
            leader_address: addr(r.leader_id),
            term: r.term,
            commit_index: r.commit,
            applied_index: r.applied,
            last_index: r.last_index,
            snapshot_index: st.snapshot_index,
            voters: r.conf_state.voters.clone(),
            learners: r.conf_state.learners.clone(),
            progress: r
                .progress
                .iter()
                .map(|(&id, p)| PeerProgress {
                    id,
                    match_index: p.matched,
                    next_index: p.next_idx,
                    state: match p.state {
                        ProgressState::Probe => "probe",
                        ProgressState::Replicate => "replicate",
                        ProgressState::Snapshot => "snapshot",
                    }
                    .to_string(),
                })
                .collect(),
            wal_segments: st.wal_segments as u64,
            fsync: self.fsync.to_string(),
            members: members.addrs.iter().map(|(&id, a)| Member { id, address: a.clone() }).collect(),
            cell_id: format!("{:016x}", self.replica.cell()),
            sessions,
            leased_sessions: self.master.session_count() as u64,
            subscriptions: subscriptions as u64,
            cache_registrations: cache_registrations as u64,
            lock_waiters: lock_waiters as u64,
            remembered_answers,
            nodes,
            max_nodes,
            content_bytes,
            queued_locks,
        }))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.admit(&req)?;
        let put = self.put_one(req.into_inner()).await;
        // The refusal may name the key, which may hold '%' (see `wire::header_safe`).
        put.map(|revision| Response::new(PutResponse { revision })).map_err(header_safe)
    }

    type PutPipelineStream = AnswerStream<PipelinedPut, PipelinedPutResult>;

    async fn put_pipeline(
        &self,
        req: Request<Streaming<PipelinedPut>>,
    ) -> Result<Response<Self::PutPipelineStream>, Status> {
        self.admit(&req)?;
        let service = self.clone();
        let start = move |put| -> Pin<Box<dyn Future<Output = PipelinedPutResult> + Send>> {
            Box::pin(service.clone().pipelined(put))
        };
        let failed = |id| PipelinedPutResult {
            id,
            code: tonic::Code::Internal as i32,
            message: "the put's task failed; it may or may not have been applied".into(),
            ..Default::default()
        };
        Ok(Response::new(AnswerStream::new(
            req.into_inner(),
            start,
            Rules { id_of: |p: &PipelinedPut| p.id, abandons: None, waits: |_| false, max_busy: PIPELINE_DEPTH },
            failed,
        )))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.admit(&req)?;
        let req = req.into_inner();
        let path = key_path(&req.key);
        let read = move |m: &CellMachine| {
            let st = m.state();
            let applied = st.applied();
            match st.node(&path).filter(|n| !n.stat.directory) {
                Some(n) => GetResponse {
                    found: true,
                    value: n.contents.clone(),
                    revision: n.stat.modified_index,
                    applied_index: applied,
                },
                None => GetResponse { applied_index: applied, ..GetResponse::default() },
            }
        };
        let resp = if req.stale { self.replica.stale_read(read).await } else { self.replica.read(read).await };
        resp.map(Response::new).map_err(|e| self.status_of(e))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.admit(&req)?;
        let req = req.into_inner();
        let prefix = key_path(&req.prefix);
        let read = move |m: &CellMachine| {
            let st = m.state();
            ListResponse {
                items: st
                    .nodes_with_prefix(&prefix)
                    .filter(|(_, n)| !n.stat.directory)
                    .map(|(p, n)| KeyValue {
                        key: p.trim_start_matches('/').to_string(),
                        value: n.contents.clone(),
                        revision: n.stat.modified_index,
                    })
                    .collect(),
                applied_index: st.applied(),
            }
        };
        let resp = if req.stale { self.replica.stale_read(read).await } else { self.replica.read(read).await };
        resp.map(Response::new).map_err(|e| self.status_of(e))
    }

    async fn members(&self, req: Request<MembersRequest>) -> Result<Response<MembersResponse>, Status> {
        self.members_now(req.into_inner().from_leader).await.map(Response::new)
    }

    async fn member_add(&self, req: Request<MemberAddRequest>) -> Result<Response<MembersResponse>, Status> {
        self.admit(&req)?;
        let r = req.into_inner();
        CellService::member_add(self, r.id, r.address).await.map(Response::new).map_err(header_safe)
    }

    async fn member_promote(&self, req: Request<MemberIdRequest>) -> Result<Response<MembersResponse>, Status> {
        self.admit(&req)?;
        CellService::member_promote(self, req.into_inner().id).await.map(Response::new)
    }

    async fn member_remove(&self, req: Request<MemberIdRequest>) -> Result<Response<MembersResponse>, Status> {
        self.admit(&req)?;
        CellService::member_remove(self, req.into_inner().id).await.map(Response::new)
    }

    type SnapshotSaveStream = super::backup::SnapshotStream;

    async fn snapshot_save(
        &self,
        req: Request<SnapshotSaveRequest>,
    ) -> Result<Response<Self::SnapshotSaveStream>, Status> {
        // A backup holds every node whatever its ACL: admins only.
        self.admit(&req)?;
        CellService::snapshot_save(self).await.map(Response::new)
    }
}

/// The admin API names files by key: `a/b` is the node `/a/b`.
fn key_path(key: &str) -> String {
    if key.starts_with('/') {
        key.to_string()
    } else {
        format!("/{key}")
    }
}
