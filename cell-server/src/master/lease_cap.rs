//! How much lease a master may still grant. A master deposed by a partition learns it only when
//! check-quorum steps it down, up to two election timeouts later, and meanwhile it would go on
//! granting KeepAlives to clients on its side; a new master, elected on the other side, gives
//! each session a fresh lease from when it takes office and may expire it when that runs out,
//! so a client holding a later grant would believe in a lease that no longer exists.
//!
//! Two rules close that gap (Chubby §2.9's conservative leases, made exact):
//! - A master confirms its leadership regularly with a ReadIndex round (a quorum acknowledges
//!   a heartbeat sent after the round began), and grants full leases only for [`GRANT_WINDOW`]
//!   after the start of its latest confirmed round; later, less and less, down to nothing. So
//!   every lease it grants ends by `confirmed + GRANT_WINDOW + lease`.
//! - A new master gives every session a first lease of `lease + GRANT_WINDOW` from when it
//!   takes office. Its term began after every round its predecessor saw confirmed: the quorums
//!   of that round and of its election share a replica, which acknowledged the heartbeat before
//!   it voted in the new term (after voting it answers the old leader only with the new term).
//!   So its first deadlines come after every lease the old master granted has ended.
//!
//! A client learns that its master is gone only when its lease ends without a grant (a paused
//! or cut-off master sends nothing), then looks for the new master, possibly waiting on a
//! replica that hangs first. So a new master adds [`resume_allowance`] (half a lease) to its
//! first deadlines: a live client resumes before its session is expired. The client library
//! gives each replica a quarter of the lease in that search.
//!
//! Neither rule relies on followers refusing votes for a while (a restarted follower, or a
//! leader transfer, does not), nor on the replicas' timing settings agreeing: the window is the
//! same constant everywhere.

use std::time::{Duration, Instant};

/// How long after the start of a confirmed round a master grants full leases (and how much a
/// new master adds to its first leases). Longer than a confirmation takes on a loaded cell,
/// disk stalls of a few hundred milliseconds included, so an ordinary master always grants in
/// full; short against a lease (seconds).
pub const GRANT_WINDOW: Duration = Duration::from_millis(500);

/// What a new master adds to the first deadlines of a session whose lease is `lease`, past
/// `lease + GRANT_WINDOW`, for its client to find it (see the module's notes).
pub fn resume_allowance(lease: Duration) -> Duration {
    lease / 2
}

/// How often a master confirms its leadership.
pub const CONFIRM_EVERY: Duration = Duration::from_millis(100);

/// The lease a master may grant at `now`, its latest confirmed round having begun at
/// `confirmed`: the full `lease` within [`GRANT_WINDOW`] of it, then less by the time past that.
pub fn lease_cap(confirmed: Option<Instant>, now: Instant, lease: Duration) -> Duration {
    let Some(confirmed) = confirmed else { return Duration::ZERO };
    let late = now.saturating_duration_since(confirmed + GRANT_WINDOW);
    lease.saturating_sub(late)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(12);

    #[test]
    fn a_recently_confirmed_master_grants_full_leases() {
        let t0 = Instant::now();
        assert_eq!(lease_cap(Some(t0), t0, LEASE), LEASE);
        assert_eq!(lease_cap(Some(t0), t0 + GRANT_WINDOW, LEASE), LEASE);
        assert!(CONFIRM_EVERY * 3 < GRANT_WINDOW, "a missed confirmation or two cost nothing");
    }

    /// Cut off from its quorum, a master's grants end no later than the first lease of any
    /// master elected after its last confirmed round began, however soon after.
    #[test]
    fn a_master_cut_off_from_its_quorum_grants_nothing_past_its_successors_first_lease() {
        let t0 = Instant::now();
        let successors_first_lease_end = t0 + LEASE + GRANT_WINDOW;
        for ms in (0..20_000).step_by(7) {
            let now = t0 + Duration::from_millis(ms);
            let granted = lease_cap(Some(t0), now, LEASE);
            if !granted.is_zero() {
                assert!(
                    now + granted <= successors_first_lease_end,
                    "a grant at {ms} ms outlives the successor's lease"
                );
            }
        }
        assert_eq!(lease_cap(Some(t0), t0 + LEASE + GRANT_WINDOW, LEASE), Duration::ZERO);
    }

    #[test]
    fn an_unconfirmed_master_grants_nothing() {
        assert_eq!(lease_cap(None, Instant::now(), LEASE), Duration::ZERO);
    }
}
