//! The time a master stamps on the entries it proposes (DESIGN.md: the log carries the clock).
//! Lock-delays end by it, so it must never run faster than real time: not when a new master's
//! wall clock is ahead of its predecessor's, nor when NTP steps a clock. So it is not the wall
//! clock: a master takes office at the log's time (the last applied stamp) and adds the
//! monotonic time elapsed since. A master never sets it back either (apply keeps the stamps
//! monotonic anyway).
//!
//! It catches up with the wall clock only where nothing depends on it: when a master takes
//! office with no lock-delay running (a new cell starts at the wall clock's time, and after a
//! long outage node times do not lag for good). While a delay runs, a master whose clock is an
//! hour ahead still ends it on time.

use std::time::Instant;

/// A master's log clock; see the module documentation.
#[derive(Clone, Copy, Debug)]
pub struct LogClock {
    base_ms: u64,
    since: Instant,
}

impl LogClock {
    /// The clock of a master taking office at `now`: the log's time is `log_ms` (the last stamp
    /// applied), the wall clock reads `wall_ms`, and `delays_running` says whether some
    /// lock-delay has yet to end.
    pub fn take_office(log_ms: u64, wall_ms: u64, delays_running: bool, now: Instant) -> LogClock {
        let base_ms = if delays_running { log_ms } else { log_ms.max(wall_ms) };
        LogClock { base_ms, since: now }
    }

    /// The log time at `now`.
    pub fn at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.since).as_millis();
        self.base_ms.saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
    }

    pub fn now_ms(&self) -> u64 {
        self.at(Instant::now())
    }
}

/// The leader's wall clock in milliseconds, stamped on each entry it proposes (the log carries
/// the clock).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const HOUR: u64 = 3_600_000;

    /// A master whose wall clock is an hour ahead takes office while a lock-delay (60 s from
    /// log time 10,000) runs: the delay ends after 60 s of real time have passed, not at once.
    #[test]
    fn a_master_whose_clock_is_ahead_ends_a_running_lock_delay_on_time() {
        let t0 = Instant::now();
        let clock = LogClock::take_office(10_000, 10_000 + HOUR, true, t0);
        let delay_end = 70_000;
        assert!(clock.at(t0) < delay_end);
        assert!(clock.at(t0 + Duration::from_secs(59)) < delay_end);
        assert!(clock.at(t0 + Duration::from_secs(60)) >= delay_end);
    }

    /// A wall clock stepped back or forward later changes nothing: the log clock is elapsed
    /// monotonic time from taking office.
    #[test]
    fn the_log_clock_runs_at_the_rate_of_real_time_from_the_log_time() {
        let t0 = Instant::now();
        let clock = LogClock::take_office(5_000, 1_000, true, t0);
        assert_eq!(clock.at(t0), 5_000, "never behind the log");
        assert_eq!(clock.at(t0 + Duration::from_millis(1_234)), 6_234);
    }

    /// With no lock-delay running it catches up with the wall clock (a new cell, or one back
    /// from a long outage), and never goes behind the log.
    #[test]
    fn with_no_lock_delay_running_it_starts_from_the_wall_clock_or_the_log() {
        let t0 = Instant::now();
        assert_eq!(LogClock::take_office(0, 1_700_000_000_000, false, t0).at(t0), 1_700_000_000_000);
        assert_eq!(LogClock::take_office(9_000, 1_000, false, t0).at(t0), 9_000);
    }
}
