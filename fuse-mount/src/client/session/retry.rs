//! The retry loop every call of a session goes through: at the master if known, else the
//! replicas in turn; following redirects; across a failover, again with the same request id
//! (session, sequence number, first unanswered one), so a change is applied once; until the
//! call's deadline or the session's loss.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proto::chubby::RequestId;
use tonic::{Code, Status};

use super::{CallStream, ClientError, Inner, Session, SessionState};
use crate::client::discovery::MAX_BACKOFF;
use proto::{Refusal, ERROR_METADATA};

/// The session's request sequence numbers: the next one, and those still unanswered.
#[derive(Default)]
pub(super) struct RequestNumbers {
    pub(super) next: u64,
    pub(super) outstanding: BTreeSet<u64>,
}

/// Time beyond the cell's lease a change is given (see [`Session::change_deadline`]).
const CHANGE_MARGIN: Duration = Duration::from_secs(2);

/// One sequence number in flight; forgotten when dropped.
pub(super) struct InFlight {
    inner: Arc<Inner>,
    pub(super) request: RequestId,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut s) = self.inner.seq.lock() {
            s.outstanding.remove(&self.request.sequence);
        }
    }
}

/// The cell's reason for refusing, if it gave one.
pub(super) fn reason(s: &Status) -> Option<Refusal> {
    Refusal::of_metadata(s.metadata())
}

pub(super) fn leader_hint(s: &Status) -> Option<String> {
    s.metadata().get(proto::LEADER_METADATA).and_then(|v| v.to_str().ok()).map(String::from)
}

/// Whether the call may simply be retried at the (possibly new) master with the same
/// request id.
pub(super) fn retryable(s: &Status) -> bool {
    match s.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => true,
        // Aborted by a refusal (WaitEnded, even one this build does not know) is an answer;
        // aborted by a master change is not.
        Code::Aborted => s.metadata().get(ERROR_METADATA).is_none(),
        Code::FailedPrecondition => leader_hint(s).is_some(),
        _ => false,
    }
}

impl Session {
    pub(super) fn next_request(&self) -> InFlight {
        let mut s = self.inner.seq.lock().expect("request numbers");
        let sequence = s.next;
        s.next += 1;
        s.outstanding.insert(sequence);
        let first_incomplete = *s.outstanding.first().expect("just inserted");
        InFlight {
            inner: self.inner.clone(),
            request: RequestId { session: self.inner.id, sequence, first_incomplete },
        }
    }

    /// Runs `call` at the master, following redirects and retrying (with the same request) across
    /// a failover, until the deadline (none: wait as long as the session lives).
    pub(super) async fn call<T, F, Fut>(&self, deadline: Option<Instant>, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut(Arc<CallStream>, u64) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let inner = &self.inner;
        let mut turn = 0usize;
        let mut last = String::from("nothing tried");
        let mut backoff = Duration::from_millis(10);
        loop {
            if inner.state() == SessionState::Lost {
                return Err(ClientError::SessionLost(inner.id));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(ClientError::Timeout { timeout: inner.opts.timeout, last });
            }
            let addr = inner.candidate(turn);
            turn += 1;
            let epoch = inner.epoch.load(Ordering::Acquire);
            let attempt = async {
                match inner.call_stream(&addr).await {
                    Err(e) => Err(Status::unavailable(e)),
                    Ok(link) => call(link, epoch).await,
                }
            };
            let result = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    tokio::time::timeout(left, attempt)
                        .await
                        .unwrap_or_else(|_| Err(Status::deadline_exceeded("deadline passed")))
                }
                None => attempt.await,
            };
            match result {
                Ok(r) => {
                    *inner.master.lock().expect("master") = Some(addr);
                    return Ok(r);
                }
                Err(s) if reason(&s) == Some(Refusal::NoSession) => {
                    inner.lose();
                    return Err(ClientError::SessionLost(inner.id));
                }
                Err(s) if s.code() == Code::DeadlineExceeded && deadline.is_some() => {
                    last = s.message().to_string();
                }
                Err(s) if reason(&s) == Some(Refusal::StaleEpoch) => {
                    // A new master, and the session has not resumed there yet: its stream
                    // will shortly; the call waits for that (bounded by its deadline).
                    last = format!("{addr}: {}", s.message());
                    *inner.master.lock().expect("master") = Some(addr);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(s) if !retryable(&s) => return Err(ClientError::Rpc(Box::new(s))),
                Err(s) => {
                    last = format!("{addr}: {}", s.message());
                    match leader_hint(&s).filter(|h| *h != addr) {
                        Some(h) => {
                            *inner.master.lock().expect("master") = Some(h);
                            continue;
                        }
                        None => inner.forget_channel(&addr),
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.inner.opts.timeout)
    }

    /// The deadline of a call that changes a node others may cache (SetContents, Delete,
    /// SetAcl). The master holds such a write back until every cacher has acknowledged its
    /// invalidation or lost its lease, up to a whole lease; a deadline shorter than that would
    /// report a failure for a write that then commits. So it is at least the lease and a
    /// margin for the commit after the wait.
    pub(crate) fn change_deadline(&self) -> Option<Instant> {
        Some(Instant::now() + self.inner.opts.timeout.max(self.inner.lease + CHANGE_MARGIN))
    }
}
