//! Judging a process's health pings, as Agones does: a check every period fails when no ping
//! came since the period began; enough failures in a row make the process Unhealthy, for good.
//! Pure, with time passed in, so the rules are tested without waiting.

use std::time::{Duration, Instant};

use crate::api::{Health, SdkHealth};

/// The health timing in force, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Time between checks.
    pub period: Duration,
    /// Failed checks in a row that make the process Unhealthy.
    pub failure_threshold: u32,
    /// Time from start to the first check.
    pub initial_delay: Duration,
}

impl Timing {
    /// The timing of the GameServer's `health` (Agones' defaults when absent), or `None` when disabled.
    pub fn of(health: Option<&Health>) -> Option<Timing> {
        let h = health.cloned().unwrap_or_default();
        if h.disabled {
            return None;
        }
        Some(Timing {
            period: Duration::from_secs(h.period_seconds.max(1) as u64),
            failure_threshold: h.failure_threshold.max(1) as u32,
            initial_delay: Duration::from_secs(h.initial_delay_seconds.max(0) as u64),
        })
    }
}

/// The health of one process, from its pings and the checks so far.
#[derive(Debug)]
pub struct Tracker {
    timing: Timing,
    /// When the last ping came, or (before any) when checks may start counting from.
    last_ping: Instant,
    failures: u32,
    health: Option<SdkHealth>,
}

impl Tracker {
    /// A tracker for a sidecar started at `start`.
    pub fn new(timing: Timing, start: Instant) -> Self {
        Tracker { timing, last_ping: start + timing.initial_delay, failures: 0, health: None }
    }

    /// The timing in force.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// When the first check is due.
    pub fn first_check(&self) -> Instant {
        self.last_ping + self.timing.period
    }

    /// A ping at `now`. Returns the new health when this ping changed it (the first ping
    /// makes the process Healthy); an Unhealthy process stays Unhealthy.
    pub fn ping(&mut self, now: Instant) -> Option<SdkHealth> {
        self.last_ping = self.last_ping.max(now);
        self.failures = 0;
        self.set(SdkHealth::Healthy)
    }

    /// The periodic check at `now`. Returns the new health when it changed.
    pub fn check(&mut self, now: Instant) -> Option<SdkHealth> {
        if now < self.last_ping + self.timing.period {
            // A ping within the period, or still in the initial delay.
            return None;
        }
        self.failures += 1;
        if self.failures >= self.timing.failure_threshold { self.set(SdkHealth::Unhealthy) } else { None }
    }

    /// The health now; `None` before the first ping or failure.
    pub fn health(&self) -> Option<SdkHealth> {
        self.health
    }

    fn set(&mut self, health: SdkHealth) -> Option<SdkHealth> {
        if self.health == Some(SdkHealth::Unhealthy) || self.health == Some(health) {
            return None;
        }
        self.health = Some(health);
        Some(health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing::of(None).unwrap()
    }

    #[test]
    fn defaults_are_agones_and_disabled_means_no_tracking() {
        assert_eq!(
            timing(),
            Timing { period: Duration::from_secs(5), failure_threshold: 3, initial_delay: Duration::from_secs(5) }
        );
        assert_eq!(Timing::of(Some(&Health { disabled: true, ..Default::default() })), None);
    }

    #[test]
    fn steady_pings_stay_healthy_and_only_the_first_one_is_news() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(timing(), t0);
        assert_eq!(tracker.ping(t0 + Duration::from_secs(1)), Some(SdkHealth::Healthy));
        for s in 2..60 {
            let now = t0 + Duration::from_secs(s);
            assert_eq!(tracker.ping(now), None, "ping at {s} s");
            if s % 5 == 0 {
                assert_eq!(tracker.check(now), None, "check at {s} s");
            }
        }
        assert_eq!(tracker.health(), Some(SdkHealth::Healthy));
    }

    #[test]
    fn threshold_missed_checks_make_it_unhealthy_once_and_for_good() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(timing(), t0);
        tracker.ping(t0);
        let at = |s| t0 + Duration::from_secs(s);
        // The initial delay counts as pinged: checks at 10 and 15 s see a ping "at" 5 s.
        assert_eq!(tracker.check(at(9)), None);
        assert_eq!(tracker.check(at(10)), None, "first failure");
        assert_eq!(tracker.check(at(15)), None, "second failure");
        assert_eq!(tracker.check(at(20)), Some(SdkHealth::Unhealthy), "third failure");
        assert_eq!(tracker.check(at(25)), None, "already Unhealthy");
        assert_eq!(tracker.ping(at(26)), None, "Unhealthy is final");
        assert_eq!(tracker.health(), Some(SdkHealth::Unhealthy));
    }

    #[test]
    fn a_ping_between_failures_starts_the_count_again() {
        let t0 = Instant::now();
        let mut tracker = Tracker::new(Timing { initial_delay: Duration::ZERO, ..timing() }, t0);
        let at = |s| t0 + Duration::from_secs(s);
        assert_eq!(tracker.check(at(5)), None);
        assert_eq!(tracker.check(at(10)), None);
        tracker.ping(at(11));
        assert_eq!(tracker.check(at(15)), None);
        assert_eq!(tracker.check(at(20)), None);
        assert_eq!(tracker.check(at(25)), None);
        assert_eq!(tracker.check(at(30)), Some(SdkHealth::Unhealthy));
    }
}
