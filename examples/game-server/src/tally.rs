//! A bot's figures: requests, errors and a latency histogram, as a JSON report and as
//! Prometheus text.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Growth of the fine histogram's buckets: percentiles are within 10 % of the truth.
const STEP: f64 = 1.1;
/// Fine buckets: 1.1^200 µs is over three minutes, longer than any request may take.
const FINE: usize = 200;
/// The Prometheus histogram's upper bounds, in seconds.
pub const BUCKETS: [f64; 13] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Latencies in buckets of 10 % width; percentiles are read as a bucket's upper bound.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: Duration,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: vec![0; FINE + 1], total: 0, max: Duration::ZERO }
    }
}

impl Histogram {
    /// Adds one latency.
    pub fn record(&mut self, d: Duration) {
        let us = d.as_secs_f64() * 1e6;
        let i = if us <= 1.0 { 0 } else { ((us.ln() / STEP.ln()).floor() as usize + 1).min(FINE) };
        self.counts[i] += 1;
        self.total += 1;
        self.max = self.max.max(d);
    }

    /// The latency `q` (0..=1) of the recorded ones are at or below, in milliseconds; 0 when
    /// nothing was recorded.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // Bucket i holds (STEP^(i-1), STEP^i] µs; never above the largest seen.
                let upper_ms = STEP.powi(i as i32) / 1e3;
                return upper_ms.min(self.max.as_secs_f64() * 1e3);
            }
        }
        self.max.as_secs_f64() * 1e3
    }

    fn json(&self) -> Value {
        let r = |v: f64| (v * 1000.0).round() / 1000.0;
        json!({"p50": r(self.quantile_ms(0.5)), "p90": r(self.quantile_ms(0.9)), "p99": r(self.quantile_ms(0.99)),
            "max": r(self.max.as_secs_f64() * 1e3)})
    }
}

/// Figures since some start: requests that got an answer or failed, errors among them.
#[derive(Clone, Debug, Default)]
pub struct Window {
    /// Requests completed (answered or failed).
    pub requests: u64,
    /// Requests that failed: no answer, a broken connection, or an answer with an `error`.
    pub errors: u64,
    /// Latency of every completed request.
    pub latency: Histogram,
    /// When the first request of the window started.
    pub since: Option<Instant>,
    /// When the last one completed.
    pub until: Option<Instant>,
    /// The last error, for the report.
    pub last_error: Option<String>,
}

impl Window {
    /// One completed request that started at `start` and took `took`.
    pub fn record(&mut self, start: Instant, took: Duration, error: Option<&str>) {
        self.requests += 1;
        if let Some(e) = error {
            self.errors += 1;
            self.last_error = Some(e.to_owned());
        }
        self.latency.record(took);
        self.since = Some(self.since.map_or(start, |s| s.min(start)));
        let end = start + took;
        self.until = Some(self.until.map_or(end, |u| u.max(end)));
    }

    /// Seconds from the first request's start to the last one's end.
    pub fn elapsed(&self) -> f64 {
        match (self.since, self.until) {
            (Some(s), Some(u)) => u.saturating_duration_since(s).as_secs_f64(),
            _ => 0.0,
        }
    }

    /// Answered requests (errors excluded) per second over [`Window::elapsed`].
    pub fn rate(&self) -> f64 {
        let e = self.elapsed();
        if e > 0.0 { (self.requests - self.errors) as f64 / e } else { 0.0 }
    }

    /// The window as JSON: requests, errors, elapsed seconds, rate and latency percentiles (ms).
    pub fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "errors": self.errors,
            "elapsed": (self.elapsed() * 1000.0).round() / 1000.0,
            "rate": (self.rate() * 10.0).round() / 10.0,
            "latencyMs": self.latency.json(),
            "lastError": self.last_error,
        })
    }
}

/// Everything since the bot started, plus the Prometheus buckets.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Since the first counted request.
    pub total: Window,
    /// Since the last report.
    pub window: Window,
    buckets: [u64; BUCKETS.len()],
    sum_seconds: f64,
}

impl Tally {
    /// One completed request.
    pub fn record(&mut self, start: Instant, took: Duration, error: Option<&str>) {
        self.total.record(start, took, error);
        self.window.record(start, took, error);
        let s = took.as_secs_f64();
        self.sum_seconds += s;
        for (b, le) in self.buckets.iter_mut().zip(BUCKETS) {
            if s <= le {
                *b += 1;
            }
        }
    }

    /// The window since the last call, replaced by an empty one.
    pub fn take_window(&mut self) -> Window {
        std::mem::take(&mut self.window)
    }

    /// Prometheus text exposition (version 0.0.4) of the totals, each series labelled `labels`
    /// (e.g. `bot="zone1-bot-3",target="gateway"`).
    pub fn prometheus(&self, labels: &str, sessions: u64, done: bool) -> String {
        let mut out = String::new();
        let t = &self.total;
        let mut metric = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}");
        };
        metric(
            "gamezone_bot_requests_total",
            "counter",
            "Requests the bot completed (answered or failed).",
            t.requests.to_string(),
        );
        metric(
            "gamezone_bot_errors_total",
            "counter",
            "Requests that failed: no answer in time, a broken connection, or an answer with an error.",
            t.errors.to_string(),
        );
        metric(
            "gamezone_bot_sessions",
            "gauge",
            "Sessions that have connected and are counting.",
            sessions.to_string(),
        );
        metric(
            "gamezone_bot_done",
            "gauge",
            "1 once the bot's run has ended (--duration).",
            u8::from(done).to_string(),
        );
        let name = "gamezone_bot_request_seconds";
        let _ = writeln!(out, "# HELP {name} Latency of completed requests.\n# TYPE {name} histogram");
        for (b, le) in self.buckets.iter().zip(BUCKETS) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {b}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", t.requests);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_seconds);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", t.requests);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_ten_percent() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        for (q, want) in [(0.5, 50.0), (0.9, 90.0), (0.99, 99.0)] {
            let got = h.quantile_ms(q);
            assert!(got >= want && got <= want * 1.1, "q{q}: {got} for {want}");
        }
        assert_eq!(h.quantile_ms(1.0), 100.0, "never above the largest seen");
        assert_eq!(Histogram::default().quantile_ms(0.5), 0.0);
    }

    #[test]
    fn a_window_counts_errors_and_its_rate_excludes_them() {
        let mut t = Tally::default();
        let t0 = Instant::now();
        for i in 0..10 {
            let err = (i == 3).then_some("no answer");
            t.record(t0 + Duration::from_millis(100 * i), Duration::from_millis(100), err);
        }
        let w = t.take_window();
        assert_eq!((w.requests, w.errors), (10, 1));
        assert!((w.elapsed() - 1.0).abs() < 1e-9, "{}", w.elapsed());
        assert!((w.rate() - 9.0).abs() < 1e-6, "{}", w.rate());
        assert_eq!(w.json()["lastError"], "no answer");
        assert_eq!(t.window.requests, 0, "taken");
        assert_eq!(t.total.requests, 10, "totals stay");
    }

    #[test]
    fn prometheus_text_has_cumulative_buckets_and_the_totals() {
        let mut t = Tally::default();
        let t0 = Instant::now();
        t.record(t0, Duration::from_micros(300), None);
        t.record(t0, Duration::from_millis(20), Some("x"));
        let text = t.prometheus("bot=\"z-bot-1\"", 2, true);
        assert!(text.contains("gamezone_bot_requests_total{bot=\"z-bot-1\"} 2\n"), "{text}");
        assert!(text.contains("gamezone_bot_errors_total{bot=\"z-bot-1\"} 1\n"), "{text}");
        assert!(text.contains("gamezone_bot_request_seconds_bucket{bot=\"z-bot-1\",le=\"0.0005\"} 1\n"), "{text}");
        assert!(text.contains("gamezone_bot_request_seconds_bucket{bot=\"z-bot-1\",le=\"0.025\"} 2\n"), "{text}");
        assert!(text.contains("gamezone_bot_request_seconds_bucket{bot=\"z-bot-1\",le=\"+Inf\"} 2\n"), "{text}");
        assert!(text.contains("gamezone_bot_done{bot=\"z-bot-1\"} 1\n"), "{text}");
    }
}
