//! An Acquire at the master (Chubby §2.4): proposed like any session call; one queued behind
//! the holders waits here for the grant, or for the end of its wait, as the log applies them.

use tokio::sync::oneshot;

use super::{Master, MasterError};
use crate::machine::CellMachine;
use crate::state::{Holder, Op, Owner, Reply, RequestId, SessionId, StateError};

impl Master {
    /// Proposes the Acquire `op` (of `holder` on `path`) and returns the lock's sequencer once
    /// granted, waiting as long as it stays queued and this master stays in office.
    pub async fn acquire(&self, request: RequestId, op: Op, holder: Holder, path: &str) -> Result<String, MasterError> {
        let mode = match &op {
            Op::Acquire { mode, .. } | Op::Convert { mode, .. } => *mode,
            other => return Err(MasterError::Unexpected(format!("not a lock request: {other:?}"))),
        };
        match self.propose_call(request, op).await? {
            Reply::Granted { sequencer } => Ok(sequencer),
            Reply::Queued => {
                // Register first, then look: a grant applied before the registration is seen
                // by the read, one applied after it wakes the registration.
                let rx = self.wait_for_grant(holder.session, holder.owner, path);
                let p = path.to_string();
                let now = self
                    .replica
                    .stale_read(move |m: &CellMachine| {
                        // In the mode asked for: a shared hold that waits to upgrade is not
                        // the grant.
                        (m.state().sequencer_in_mode(&p, holder, mode), m.state().is_waiting(&p, holder))
                    })
                    .await?;
                match now {
                    (Some(sequencer), _) => return Ok(sequencer),
                    (None, false) => {
                        let reason = "no longer queued".into();
                        return Err(StateError::WaitEnded { path: path.to_string(), reason }.into());
                    }
                    (None, true) => {}
                }
                match rx.await {
                    Ok(granted) => Ok(granted?),
                    Err(_) => Err(MasterError::OfficeEnded(
                        "the master changed while the Acquire waited; retry it with the same request id",
                    )),
                }
            }
            other => Err(MasterError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Registers a call that waits for a queued Acquire to be granted.
    fn wait_for_grant(
        &self,
        session: SessionId,
        owner: Owner,
        path: &str,
    ) -> oneshot::Receiver<Result<String, StateError>> {
        let (tx, rx) = oneshot::channel();
        self.lock().add_waiter((session, owner, path.to_string()), tx);
        rx
    }
}
