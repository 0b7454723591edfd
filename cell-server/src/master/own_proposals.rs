//! Entries the master proposes on its own, not for a client: a session's expiry when its lease
//! runs out, and the Tick that ends a lock-delay. No client retries them, so a proposal that
//! fails (dropped by a leader transfer, its outcome unknown after a blip) is retried here until
//! it is done, for as long as this master is in office: a lost expiry would leave the dead
//! session's locks held, without a lease, until the next failover; a lost Tick would leave
//! waiters queued behind a lock-delay long over on an idle cell. A master that leaves office
//! stops: its successor rebuilds leases and re-arms lock-delays from the replicated state.

use std::future::Future;
use std::time::Duration;

/// The first wait after a failed proposal; each later one doubles, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// Attempts at most (some minutes of retrying), so a task never outlives its purpose for good.
const MAX_ATTEMPTS: usize = 1000;

/// Proposes until `propose` succeeds; `in_office` is asked before each attempt. Returns whether
/// the proposal was made.
pub(super) async fn until_done<P, Fut, E>(mut propose: P, mut in_office: impl FnMut() -> bool, what: &str) -> bool
where
    P: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=MAX_ATTEMPTS {
        if !in_office() {
            return false;
        }
        match propose().await {
            Ok(()) => return true,
            Err(e) => {
                tracing::info!(attempt, error = %e, "{what}: the proposal failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    tracing::error!("{what}: gave up after {MAX_ATTEMPTS} failed proposals");
    false
}

/// Ends the lock-delays due by `until_ms` (log time): waits until then on the master's clock,
/// proposes a Tick (which carries the master's clock into the log), and repeats while a delay
/// due by then still runs (the log's clock, a former leader's, may be ahead of this one's) or
/// the proposal failed. `pending` tells whether such a delay still runs.
pub(super) async fn end_lock_delay<P, PF, Q, QF>(
    until_ms: u64,
    mut now_ms: impl FnMut() -> u64,
    mut propose_tick: P,
    mut pending: Q,
    mut in_office: impl FnMut() -> bool,
) where
    P: FnMut() -> PF,
    PF: Future<Output = bool>,
    Q: FnMut() -> QF,
    QF: Future<Output = bool>,
{
    let mut backoff = FIRST_BACKOFF;
    for _ in 0..MAX_ATTEMPTS {
        let wait = until_ms.saturating_sub(now_ms());
        tokio::time::sleep(Duration::from_millis(wait + 1)).await;
        if !in_office() {
            return;
        }
        if propose_tick().await {
            backoff = FIRST_BACKOFF;
            if !pending().await {
                return;
            }
            // The log's clock is behind this one's still: look again shortly.
            tokio::time::sleep(FIRST_BACKOFF).await;
        } else {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    /// An expiry dropped by a leader transfer is proposed again until it is done.
    #[test]
    fn a_failed_proposal_is_retried_until_done() {
        let calls = Cell::new(0);
        let done = rt().block_on(until_done(
            || {
                calls.set(calls.get() + 1);
                let n = calls.get();
                async move {
                    if n < 4 {
                        Err("proposal dropped by a leader change")
                    } else {
                        Ok(())
                    }
                }
            },
            || true,
            "expiring session 7",
        ));
        assert!(done);
        assert_eq!(calls.get(), 4);
    }

    /// A master that left office stops: its successor takes the work over.
    #[test]
    fn retrying_stops_when_the_master_leaves_office() {
        let calls = Cell::new(0);
        let done = rt().block_on(until_done(
            || {
                calls.set(calls.get() + 1);
                async { Err("not the leader") }
            },
            || calls.get() < 3,
            "expiring session 7",
        ));
        assert!(!done);
        assert_eq!(calls.get(), 3);
    }

    /// A Tick that fails is proposed again, and the lock-delay is over only when the state says
    /// so.
    #[test]
    fn a_lock_delay_tick_that_fails_is_proposed_again() {
        let ticks = Cell::new(0);
        let ended = Cell::new(false);
        rt().block_on(end_lock_delay(
            5_000,
            || 5_000,
            || {
                ticks.set(ticks.get() + 1);
                // The first two fail (a leader transfer); the third is applied and ends it.
                let ok = ticks.get() >= 3;
                if ok {
                    ended.set(true);
                }
                async move { ok }
            },
            || {
                let running = !ended.get();
                async move { running }
            },
            || true,
        ));
        assert_eq!(ticks.get(), 3);
        assert!(ended.get());
    }
}
