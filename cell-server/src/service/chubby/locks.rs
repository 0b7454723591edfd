//! Calls on locks (Chubby §2.4): Acquire and TryAcquire, Release, Cancel of a queued Acquire,
//! and sequencers (GetSequencer, CheckSequencer).

use proto::chubby::*;
use tonic::Status;

use super::{unexpected, ChubbyService};
use crate::state::{self, Holder, Op, Reply, Rights, StateError};

fn mode_of(m: i32) -> Result<state::LockMode, Status> {
    match LockMode::try_from(m) {
        Ok(LockMode::LockExclusive) => Ok(state::LockMode::Exclusive),
        Ok(LockMode::LockShared) => Ok(state::LockMode::Shared),
        Err(_) => Err(Status::invalid_argument(format!("unknown lock mode {m}"))),
    }
}

impl ChubbyService {
    pub(super) async fn acquire_lock(&self, req: AcquireRequest, try_only: bool) -> Result<AcquireResponse, Status> {
        let mode = mode_of(req.mode)?;
        // Either mode needs write permission (Chubby §2.4): a reader must not be able to
        // block writers by holding a shared lock.
        let h = self.handle(req.handle.as_ref(), Rights::WRITE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        let (holder, path) = (Holder { session: h.session, owner: req.owner }, h.path.clone());
        let op = if req.convert {
            Op::Convert { path: h.path, instance: h.instance, mode, owner: req.owner, try_only }
        } else {
            Op::Acquire {
                path: h.path,
                instance: h.instance,
                mode,
                owner: req.owner,
                lock_delay_ms: req.lock_delay_ms,
                try_only,
            }
        };
        let sequencer = self.master.acquire(request, op, holder, &path).await.map_err(|e| self.fail(e))?;
        Ok(AcquireResponse { granted: true, queued: false, sequencer })
    }

    pub(super) async fn release_lock(&self, req: ReleaseRequest) -> Result<ReleaseResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::NONE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        self.call(request, Op::Release { path: h.path, instance: h.instance, owner: req.owner }).await?;
        Ok(ReleaseResponse {})
    }

    pub(super) async fn cancel_wait(&self, req: CancelRequest) -> Result<CancelResponse, Status> {
        let h = self.handle(req.handle.as_ref(), Rights::NONE)?;
        let request = self.request_id(req.request.as_ref(), h.session)?;
        match self.call(request, Op::Cancel { path: h.path.clone(), instance: h.instance, owner: req.owner }).await? {
            Reply::Done => Ok(CancelResponse {}),
            // Granted before the cancel arrived: say so, so the caller releases it.
            Reply::Granted { sequencer } => Err(Status::already_exists(format!(
                "{}: the lock was granted before the cancel (sequencer {sequencer}); release it",
                self.full_path(&h.path)
            ))),
            other => Err(unexpected(other)),
        }
    }

    pub(super) async fn sequencers(&self, req: GetSequencerRequest) -> Result<GetSequencerResponse, Status> {
        if req.holders {
            let h = self.handle(req.handle.as_ref(), Rights::READ)?;
            let holders = self
                .read(move |st| {
                    st.node_of_handle(h.session, &h.path, h.instance)?;
                    Ok(st.holder_sequencers(&h.path))
                })
                .await?;
            return Ok(GetSequencerResponse { sequencer: String::new(), holders });
        }
        let h = self.handle(req.handle.as_ref(), Rights::NONE)?;
        let holder = Holder { session: h.session, owner: req.owner };
        let sequencer = self
            .read(move |st| {
                st.node_of_handle(h.session, &h.path, h.instance)?;
                st.sequencer_of(&h.path, holder).ok_or(StateError::NotHeld(h.path))
            })
            .await?;
        Ok(GetSequencerResponse { sequencer, holders: Vec::new() })
    }

    pub(super) async fn validate_sequencer(
        &self,
        req: CheckSequencerRequest,
    ) -> Result<CheckSequencerResponse, Status> {
        let seq = req.sequencer;
        let valid = self.read(move |st| Ok(st.check_sequencer(&seq))).await?;
        Ok(CheckSequencerResponse { valid })
    }
}
