//! What this process wrote, so a reconcile that reads a watch lagging behind its own writes
//! does not write the same thing again. Every write is an API request, and the API server's
//! work per request is what bounds how fast zones come up.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a write may take to show in the shared watches.
pub const WATCH_LAG: Duration = Duration::from_secs(10);

/// Content hashes of the child objects this process applied, by `kind/namespace/name`, with
/// when. A zone is reconciled on every change of its servers' status; writing unchanged
/// children each time would multiply the API calls for nothing.
#[derive(Default)]
pub struct Applied(Mutex<HashMap<String, (String, Instant)>>);

impl Applied {
    /// Whether `hash` is what was applied to `key` less than `within` ago.
    pub fn recent(&self, key: &str, hash: &str, within: Duration) -> bool {
        let map = self.0.lock().expect("applied cache lock");
        map.get(key).is_some_and(|(h, at)| h == hash && at.elapsed() < within)
    }

    /// Records that `hash` was applied to `key` now.
    pub fn record(&self, key: String, hash: String) {
        self.0.lock().expect("applied cache lock").insert(key, (hash, Instant::now()));
    }

    /// Forgets `key`.
    pub fn forget(&self, key: &str) {
        self.0.lock().expect("applied cache lock").remove(key);
    }
}

/// The status this process last wrote per object, with the resourceVersion the write returned,
/// until the watch shows it.
pub struct Statuses<S>(Mutex<HashMap<String, Written<S>>>);

struct Written<S> {
    resource_version: Option<String>,
    /// Dropped once the watch showed the write.
    status: Option<S>,
    at: Instant,
}

impl<S> Default for Statuses<S> {
    fn default() -> Self {
        Statuses(Mutex::new(HashMap::new()))
    }
}

impl<S: Clone> Statuses<S> {
    /// The status to build on: `live` (the watch's copy at `live_version`), unless this process
    /// wrote a status less than [`WATCH_LAG`] ago that the watch has not shown yet.
    pub fn base(&self, key: &str, live_version: Option<&str>, live: Option<&S>) -> Option<S> {
        let mut map = self.0.lock().expect("status memo lock");
        let Some(w) = map.get_mut(key) else { return live.cloned() };
        if w.resource_version.as_deref() == live_version {
            // The watch has caught up: from here on it is the truth. The time of the write is
            // kept for throttling.
            w.status = None;
        } else if w.at.elapsed() >= WATCH_LAG {
            map.remove(key);
        } else if let Some(s) = &w.status {
            return Some(s.clone());
        }
        live.cloned()
    }

    /// Whether this process wrote `key`'s status less than `within` ago.
    pub fn written_within(&self, key: &str, within: Duration) -> bool {
        self.0.lock().expect("status memo lock").get(key).is_some_and(|w| w.at.elapsed() < within)
    }

    /// Records that `status` was written to `key` now, giving the object `resource_version`.
    pub fn record(&self, key: String, resource_version: Option<String>, status: S) {
        let written = Written { resource_version, status: Some(status), at: Instant::now() };
        self.0.lock().expect("status memo lock").insert(key, written);
    }

    /// Forgets `key`.
    pub fn forget(&self, key: &str) {
        self.0.lock().expect("status memo lock").remove(key);
    }
}

/// An allowance of routine writes per second shared by many objects (a token bucket), so
/// that how often they are written together does not grow with how many there are.
pub struct Budget {
    per_second: f64,
    left: Mutex<(f64, Instant)>,
}

impl Budget {
    /// An allowance of `per_second` writes, at most one second's worth saved up.
    pub fn new(per_second: f64) -> Self {
        Budget { per_second, left: Mutex::new((per_second, Instant::now())) }
    }

    /// Takes one write from the allowance; false when it is spent for now.
    pub fn take(&self) -> bool {
        let mut left = self.left.lock().expect("budget lock");
        let (tokens, at) = &mut *left;
        *tokens = (*tokens + at.elapsed().as_secs_f64() * self.per_second).min(self.per_second);
        *at = Instant::now();
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_allows_a_second_s_worth_then_refills() {
        let budget = Budget::new(5.0);
        assert_eq!((0..20).filter(|_| budget.take()).count(), 5);
        std::thread::sleep(Duration::from_millis(450));
        let refilled = (0..20).filter(|_| budget.take()).count();
        assert!((2..=3).contains(&refilled), "{refilled} writes after 0.45 s at 5/s");
    }

    #[test]
    fn a_lagging_watch_yields_the_status_written_and_a_current_one_its_own() {
        let memo = Statuses::default();
        assert_eq!(memo.base("a", Some("1"), Some(&"old")), Some("old"));
        memo.record("a".into(), Some("2".into()), "new");
        // The watch still shows version 1: build on what was written.
        assert_eq!(memo.base("a", Some("1"), Some(&"old")), Some("new"));
        // The watch shows the write: it is the truth, and the write's time is still known.
        assert_eq!(memo.base("a", Some("2"), Some(&"new")), Some("new"));
        assert!(memo.written_within("a", Duration::from_secs(60)));
        // Later changes by others show as they are.
        assert_eq!(memo.base("a", Some("3"), Some(&"edited")), Some("edited"));
        memo.forget("a");
        assert!(!memo.written_within("a", Duration::from_secs(60)));
    }
}
