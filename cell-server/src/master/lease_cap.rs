//! How much lease a master may still grant. A master deposed by a partition learns it only when
//! check-quorum steps it down, up to two election timeouts later, and meanwhile it would go on
//! granting KeepAlives to clients on its side; a new master, elected on the other side, gives
//! each session a fresh lease from when it takes office and may expire it when that runs out,
//! so a client holding a grant from later would believe in a lease that no longer exists.
//!
//! So a master grants only what its leadership justifies (Chubby §2.9, the new master's
//! conservative leases, read the other way round): it confirms its leadership regularly with a
//! ReadIndex round (a quorum answering a heartbeat sent after the round began), and a
//! follower that answered does not vote for anyone else for an election timeout (Raft's
//! check-quorum lease). Any new leader therefore takes office at least an election timeout
//! after the start of the last round this master saw confirmed, and a grant made before then,
//! of at most a full lease, ends before the new master's first lease does. Past that point the
//! lease granted shrinks, down to nothing.

use std::time::{Duration, Instant};

/// The least real time a follower that heard from the leader refuses to vote for another: an
/// election timeout of `election_ticks` ticks of `tick`, less the tick it may be into when it
/// hears (its count restarts then, its ticks do not), less a tenth for clocks running at
/// slightly different rates.
pub fn follower_lease(tick: Duration, election_ticks: u64) -> Duration {
    let ticks = u32::try_from(election_ticks.saturating_sub(1)).unwrap_or(u32::MAX);
    tick.saturating_mul(ticks) * 9 / 10
}

/// The lease a master may grant at `now`: the full `lease` until `follower_lease` after
/// `confirmed` (the start of its latest confirmed round), then shrinking with the time past
/// that point.
pub fn lease_cap(confirmed: Option<Instant>, now: Instant, follower_lease: Duration, lease: Duration) -> Duration {
    let Some(confirmed) = confirmed else { return Duration::ZERO };
    let late = now.saturating_duration_since(confirmed + follower_lease);
    lease.saturating_sub(late)
}

/// How often a master confirms its leadership: several times per follower lease, so an
/// ordinary master always grants full leases.
pub fn confirm_interval(follower_lease: Duration) -> Duration {
    follower_lease / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);
    const ET: Duration = Duration::from_millis(150);
    const LEASE: Duration = Duration::from_secs(12);

    fn fl() -> Duration {
        follower_lease(TICK, 15)
    }

    /// A follower that hears the leader just before a tick counts 15 ticks in a little over
    /// 140 ms: the window is less than the election timeout.
    #[test]
    fn the_follower_lease_is_shorter_than_an_election_timeout() {
        assert_eq!(fl(), Duration::from_millis(126));
        assert!(fl() < TICK * 14);
    }

    #[test]
    fn a_recently_confirmed_master_grants_full_leases() {
        let t0 = Instant::now();
        assert_eq!(lease_cap(Some(t0), t0, fl(), LEASE), LEASE);
        assert_eq!(lease_cap(Some(t0), t0 + Duration::from_millis(100), fl(), LEASE), LEASE);
    }

    /// Cut off from its quorum, a master's grants end no later than the first lease of any
    /// master elected after it: a new one takes office when the followers' refusal to vote
    /// ends at the earliest (14 ticks after they heard the round's heartbeat, sent after the
    /// round began), and gives a full lease from then.
    #[test]
    fn a_master_cut_off_from_its_quorum_grants_nothing_past_its_successors_first_lease() {
        let t0 = Instant::now();
        let earliest_successor = t0 + TICK * 14;
        let successors_first_lease_end = earliest_successor + LEASE;
        for ms in (0..20_000).step_by(7) {
            let now = t0 + Duration::from_millis(ms);
            let granted = lease_cap(Some(t0), now, fl(), LEASE);
            if !granted.is_zero() {
                assert!(
                    now + granted <= successors_first_lease_end,
                    "a grant at {ms} ms outlives the successor's lease"
                );
            }
        }
        assert_eq!(lease_cap(Some(t0), t0 + LEASE + ET, fl(), LEASE), Duration::ZERO);
    }

    #[test]
    fn an_unconfirmed_master_grants_nothing() {
        assert_eq!(lease_cap(None, Instant::now(), fl(), LEASE), Duration::ZERO);
    }
}
