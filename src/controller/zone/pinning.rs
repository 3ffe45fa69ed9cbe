//! Pinning off the reconcile path. Resolving a layer means talking to a server the zone's
//! author named, which may answer slowly or never: run inside a reconcile, sixteen such zones
//! held every worker and a healthy zone elsewhere had no status after a minute. A zone's
//! reconcile starts a resolve here and goes on; the resolve ends within its deadline, wakes the
//! zone, and the zone's next reconcile takes the outcome. A failed resolve of the same
//! artifacts is tried again only after a backoff, however often the zone is reconciled.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use gamezone_init::resolve::Revision;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::controller::key::ObjectKey;

/// What one resolve gives.
pub type Resolved = std::result::Result<Vec<Revision>, gamezone_init::Error>;

/// Resolves under way at once, across zones: each holds a connection to someone's server.
const SLOTS: usize = 16;

/// The first wait after a failure that may pass; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(10);
/// The longest wait between tries of the same artifacts.
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// The wait after a failure a person must fix (a wrong URL, a missing key): an edit of the
/// zone or of its Secret changes the artifacts' hash or wakes it sooner.
const BACKOFF_USER: Duration = Duration::from_secs(120);

/// What a zone's reconcile gets from [`Pinning::poll`].
pub enum Pin {
    /// A resolve of these artifacts ended: its outcome.
    Done(Resolved),
    /// One is under way; the zone is woken when it ends.
    Running,
    /// The last one of these artifacts failed; the next may start after this long.
    Backoff(Duration),
    /// None runs, none failed lately: start one.
    Start,
}

/// Resolves under way and failures remembered, by zone.
pub struct Pinning {
    flights: Mutex<HashMap<ObjectKey, Flight>>,
    failed: Mutex<HashMap<ObjectKey, Failed>>,
    slots: Arc<Semaphore>,
    wake: mpsc::UnboundedSender<ObjectKey>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<ObjectKey>>>,
    /// The longest a resolve may take, whatever its sources do.
    pub deadline: Duration,
}

struct Flight {
    spec_hash: String,
    task: JoinHandle<Resolved>,
}

struct Failed {
    spec_hash: String,
    at: Instant,
    wait: Duration,
}

impl Pinning {
    /// Nothing under way; a resolve gives up after `deadline`.
    pub fn new(deadline: Duration) -> Self {
        let (wake, woken) = mpsc::unbounded_channel();
        Pinning {
            flights: Mutex::default(),
            failed: Mutex::default(),
            slots: Arc::new(Semaphore::new(SLOTS)),
            wake,
            woken: Mutex::new(Some(woken)),
            deadline,
        }
    }

    /// The zones whose resolve ended, for the zone controller's queue (taken once).
    pub fn woken(&self) -> Option<mpsc::UnboundedReceiver<ObjectKey>> {
        self.woken.lock().expect("pinning lock").take()
    }

    /// Where the resolve of `zone`'s artifacts (hashed `spec_hash`) stands. A resolve of other
    /// artifacts (the spec changed meanwhile) is dropped.
    pub fn poll(&self, zone: &ObjectKey, spec_hash: &str) -> Pin {
        let mut flights = self.flights.lock().expect("pinning lock");
        if let Some(flight) = flights.get(zone) {
            if flight.spec_hash != spec_hash {
                flights.remove(zone).expect("present").task.abort();
            } else if !flight.task.is_finished() {
                return Pin::Running;
            } else {
                let task = flights.remove(zone).expect("present").task;
                // A finished task's output is there: this does not wait.
                let outcome = match task.now_or_never() {
                    Some(Ok(outcome)) => outcome,
                    Some(Err(e)) => Err(gamezone_init::Error::Plan(format!("the resolve task failed: {e}"))),
                    None => return Pin::Running,
                };
                self.remember(zone, spec_hash, &outcome);
                return Pin::Done(outcome);
            }
        }
        let failed = self.failed.lock().expect("pinning lock");
        match failed.get(zone) {
            Some(f) if f.spec_hash == spec_hash && f.at.elapsed() < f.wait => Pin::Backoff(f.wait - f.at.elapsed()),
            _ => Pin::Start,
        }
    }

    /// Starts `resolve` for `zone`; it gives up at the deadline, and wakes the zone when done.
    pub fn start<F>(&self, zone: &ObjectKey, spec_hash: &str, resolve: F)
    where
        F: Future<Output = Resolved> + Send + 'static,
    {
        let (slots, wake, key, deadline) = (self.slots.clone(), self.wake.clone(), zone.clone(), self.deadline);
        let task = tokio::spawn(async move {
            let outcome = match slots.acquire_owned().await {
                Ok(_slot) => match tokio::time::timeout(deadline, resolve).await {
                    Ok(outcome) => outcome,
                    Err(_) => Err(gamezone_init::Error::Transient {
                        layer: 0,
                        src: "spec.artifacts".into(),
                        message: format!("no answer from the layers' sources within {}s", deadline.as_secs()),
                        attempts: 1,
                    }),
                },
                Err(_) => Err(gamezone_init::Error::Plan("the operator is shutting down".into())),
            };
            let _ = wake.send(key);
            outcome
        });
        let flight = Flight { spec_hash: spec_hash.to_string(), task };
        if let Some(old) = self.flights.lock().expect("pinning lock").insert(zone.clone(), flight) {
            old.task.abort();
        }
    }

    /// How long until the artifacts of `zone` are tried again after their last failure.
    pub fn retry_in(&self, zone: &ObjectKey) -> Option<Duration> {
        self.failed.lock().expect("pinning lock").get(zone).map(|f| f.wait.saturating_sub(f.at.elapsed()))
    }

    /// Forgets `zone`, stopping its resolve: it was deleted.
    pub fn forget(&self, zone: &ObjectKey) {
        if let Some(flight) = self.flights.lock().expect("pinning lock").remove(zone) {
            flight.task.abort();
        }
        self.failed.lock().expect("pinning lock").remove(zone);
    }

    fn remember(&self, zone: &ObjectKey, spec_hash: &str, outcome: &Resolved) {
        let mut failed = self.failed.lock().expect("pinning lock");
        match outcome {
            Ok(_) => {
                failed.remove(zone);
            }
            Err(e) => {
                let before = failed.get(zone).filter(|f| f.spec_hash == spec_hash).map(|f| f.wait);
                let wait = backoff(before, e.is_transient());
                failed.insert(zone.clone(), Failed { spec_hash: spec_hash.to_string(), at: Instant::now(), wait });
            }
        }
    }
}

/// The wait after a failure, given the wait after the one before it (of the same artifacts).
fn backoff(before: Option<Duration>, transient: bool) -> Duration {
    match (transient, before) {
        (false, _) => BACKOFF_USER,
        (true, None) => BACKOFF_FIRST,
        (true, Some(w)) => (w * 2).clamp(BACKOFF_FIRST, BACKOFF_MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_that_may_pass_back_off_doubling_and_others_wait_for_a_person() {
        assert_eq!(backoff(None, true), BACKOFF_FIRST);
        assert_eq!(backoff(Some(BACKOFF_FIRST), true), BACKOFF_FIRST * 2);
        assert_eq!(backoff(Some(BACKOFF_MAX), true), BACKOFF_MAX);
        assert_eq!(backoff(Some(BACKOFF_FIRST), false), BACKOFF_USER);
    }

    #[tokio::test]
    async fn a_resolve_that_never_ends_gives_up_at_the_deadline_and_wakes_its_zone() {
        let pinning = Pinning::new(Duration::from_millis(200));
        let mut woken = pinning.woken().unwrap();
        let zone = ObjectKey::new("ns", "z");
        assert!(matches!(pinning.poll(&zone, "h"), Pin::Start));
        pinning.start(&zone, "h", std::future::pending());
        assert!(matches!(pinning.poll(&zone, "h"), Pin::Running));
        assert_eq!(woken.recv().await.unwrap(), zone);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let Pin::Done(Err(e)) = pinning.poll(&zone, "h") else { panic!("not done") };
        assert!(e.to_string().contains("no answer from the layers' sources within 0s"), "{e}");
        // The same artifacts wait; changed ones start at once.
        assert!(matches!(pinning.poll(&zone, "h"), Pin::Backoff(w) if w <= BACKOFF_FIRST));
        assert!(matches!(pinning.poll(&zone, "other"), Pin::Start));
    }

    #[tokio::test]
    async fn a_changed_spec_drops_the_resolve_of_the_old_one() {
        let pinning = Pinning::new(Duration::from_secs(60));
        let zone = ObjectKey::new("ns", "z");
        pinning.start(&zone, "old", std::future::pending());
        assert!(matches!(pinning.poll(&zone, "new"), Pin::Start));
        pinning.start(&zone, "new", async { Ok(Vec::new()) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(matches!(pinning.poll(&zone, "new"), Pin::Done(Ok(v)) if v.is_empty()));
        assert!(matches!(pinning.poll(&zone, "new"), Pin::Start));
    }
}
