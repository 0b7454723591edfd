//! The master's timers: lease expiry (Chubby §2.8) and the end of lock-delays (§2.4), each
//! proposed to the log while the master is in the term that decided it.

use std::sync::Arc;
use std::time::Instant;

use raft::ReplicaError;

use super::{own_proposals, Master, EXPIRY_SCAN};
use crate::state::{Command, Op, SessionId};

impl Master {
    pub(super) async fn expire_leases(self: Arc<Self>) {
        let mut tick = tokio::time::interval(EXPIRY_SCAN);
        loop {
            tick.tick().await;
            let (expired, epoch) = {
                let mut g = self.lock();
                let Some(epoch) = g.epoch else { continue };
                (g.leases.take_expired(Instant::now()), epoch)
            };
            for session in expired {
                tracing::info!(session, "session lease expired");
                let m = self.clone();
                tokio::spawn(async move { m.propose_expiry(session, epoch).await });
            }
        }
    }

    /// Proposes the session's expiry, decided in term `epoch` by that term's leases, again
    /// until it is done while this master is in that term (see `own_proposals`); never in a
    /// later term, whose master gives every session a fresh lease.
    pub(super) async fn propose_expiry(&self, session: SessionId, epoch: u64) {
        let propose = || async {
            match self.stamp() {
                Some((now_ms, e)) if e == epoch => {
                    let entry = Command { now_ms, request: None, op: Op::ExpireSession { session } };
                    self.propose_at(entry, epoch).await.map(|_| ())
                }
                _ => Err(ReplicaError::Dropped),
            }
        };
        let in_office = || self.lock().epoch == Some(epoch);
        own_proposals::until_done(propose, in_office, &format!("expiring session {session}")).await;
    }

    /// Proposes a Tick when a lock-delay ends, so the waiters it holds back are granted. The
    /// log's clock is the leader's: if this clock is behind it, the Tick is repeated.
    pub(super) fn arm_lock_delay(self: &Arc<Self>, until_ms: u64) {
        let m = self.clone();
        tokio::spawn(async move {
            let epoch = m.lock().epoch;
            let tick = || async { m.propose_op(None, Op::Tick).await.is_ok() };
            let pending = || async {
                let running = m.replica.stale_read(move |s| s.state().lock_delays().any(|(t, _)| t <= until_ms)).await;
                !matches!(running, Ok(false))
            };
            let in_office = || epoch.is_some() && m.lock().epoch == epoch;
            let log_now = || m.stamp().map_or(0, |(now, _)| now);
            own_proposals::end_lock_delay(until_ms, log_now, tick, pending, in_office).await;
        });
    }
}
