//! The controllers' work queue: objects are reconciled in the order they came due, at
//! most `concurrency` at once, one reconcile per object at a time.
//!
//! kube's runner, at its bound, parks the reconciles that come due in a hash set and takes them
//! in hash order. With thousands of servers waiting, a zone's ten servers then got their pods up
//! to 30 s apart, and the zone's endpoints and status were written once per straggler. Left
//! unbounded instead, it polls every parked reconcile on each wake-up, which doubled the
//! operator's CPU. This queue keeps the order at the cost of a few maps.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::time::Instant;

use super::key::ObjectKey;
use super::metrics::ControllerLabels;
use super::{Metrics, next_run};

/// When an object is taken again without a change to it: after the delay, or only on a change.
pub type Requeue = Option<Duration>;

/// Which objects are due when, in order. Each object is in at most one place: waiting for its
/// time, due (in line), or being reconciled (`active`, with the time a change asked for while
/// it ran, if one did).
#[derive(Debug)]
pub struct Queue<T> {
    debounce: Duration,
    /// Objects waiting for their time, by (time, arrival), so equal times keep their order.
    waiting: BTreeMap<(Instant, u64), T>,
    times: HashMap<T, (Instant, u64)>,
    arrivals: u64,
    due: VecDeque<T>,
    in_line: HashSet<T>,
    active: HashMap<T, Option<Instant>>,
}

impl<T: Clone + Eq + Hash> Queue<T> {
    /// An empty queue. A request to run an object at a time runs it `debounce` later, so a burst
    /// of changes to one object (a new pod's quick steps) comes to one reconcile.
    pub fn new(debounce: Duration) -> Self {
        Queue {
            debounce,
            waiting: BTreeMap::new(),
            times: HashMap::new(),
            arrivals: 0,
            due: VecDeque::new(),
            in_line: HashSet::new(),
            active: HashMap::new(),
        }
    }

    /// Asks for `obj` to be reconciled at `at`. An object already in line stays where it is; one
    /// being reconciled runs again once it is done; one waiting for a later time moves up to
    /// this one, and one waiting for an earlier time keeps it.
    pub fn add(&mut self, obj: T, at: Instant) {
        if self.in_line.contains(&obj) {
            return;
        }
        if let Some(again) = self.active.get_mut(&obj) {
            *again = Some(again.map_or(at, |t| t.min(at)));
            return;
        }
        if let Some(&(old, arrival)) = self.times.get(&obj) {
            if old < at {
                return;
            }
            self.waiting.remove(&(old, arrival));
        }
        self.arrivals += 1;
        let slot = (at + self.debounce, self.arrivals);
        self.waiting.insert(slot, obj.clone());
        self.times.insert(obj, slot);
    }

    /// Puts every object whose time has come by `now` in line, earliest first.
    pub fn promote(&mut self, now: Instant) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let obj = entry.remove();
            self.times.remove(&obj);
            self.in_line.insert(obj.clone());
            self.due.push_back(obj);
        }
    }

    /// The first object in line, now being reconciled.
    pub fn take(&mut self) -> Option<T> {
        let obj = self.due.pop_front()?;
        self.in_line.remove(&obj);
        self.active.insert(obj.clone(), None);
        Some(obj)
    }

    /// `obj`'s reconcile is over: it runs again at `requeue` or when a change asked while it ran,
    /// whichever is first.
    pub fn done(&mut self, obj: T, requeue: Option<Instant>) {
        let again = self.active.remove(&obj).flatten();
        if let Some(at) = [again, requeue].into_iter().flatten().min() {
            self.add(obj, at);
        }
    }

    /// When the next waiting object comes due.
    pub fn next_time(&self) -> Option<Instant> {
        self.waiting.first_key_value().map(|(k, _)| k.0)
    }

    /// Objects being reconciled.
    pub fn active(&self) -> usize {
        self.active.len()
    }

    /// Objects in line, due and not yet taken.
    pub fn due(&self) -> usize {
        self.due.len()
    }
}

/// How a controller's queue runs: whose it is, where its failures and depth are counted,
/// reconciles at once, and the debounce.
pub struct Settings {
    /// `zone` or `server`, as logs and metrics name it.
    pub controller: &'static str,
    /// Where failures and the queue's depth are counted.
    pub metrics: Arc<Metrics>,
    /// Reconciles at once.
    pub concurrency: usize,
    /// How long changes to one object gather before it is reconciled.
    pub debounce: Duration,
}

/// Reconciles the objects of `store` that `changes` name, as `settings` say, each through
/// `reconcile` and then again as its outcome says ([`next_run`]), until SIGTERM or Ctrl-C; then
/// lets the running ones finish.
pub async fn run<K, F, Fut>(
    store: Store<K>,
    changes: impl Stream<Item = ObjectRef<K>>,
    settings: Settings,
    mut reconcile: F,
) where
    K: Resource<DynamicType = ()> + Clone + 'static,
    F: FnMut(Arc<K>) -> Fut,
    Fut: Future<Output = crate::Result<Requeue>>,
{
    let Settings { controller, metrics, concurrency, debounce } = settings;
    let depth = metrics.queue_depth.get_or_create(&ControllerLabels { controller }).clone();
    let mut queue = Queue::new(debounce);
    let mut running = FuturesUnordered::new();
    let mut changes = std::pin::pin!(changes);
    let mut stop = std::pin::pin!(shutdown_signal());
    let mut stopping = false;
    loop {
        let now = Instant::now();
        queue.promote(now);
        while !stopping && queue.active() < concurrency.max(1) {
            let Some(obj) = queue.take() else { break };
            match store.get(&obj) {
                Some(live) => {
                    let (run, metrics) = (reconcile(live), metrics.clone());
                    running.push(async move {
                        let key = ObjectKey::new(obj.namespace.clone().unwrap_or_default(), &obj.name);
                        let requeue = next_run(controller, &key, run.await, &metrics);
                        (obj, requeue)
                    });
                }
                // Deleted since: nothing to do until it comes back.
                None => queue.done(obj, None),
            }
        }
        depth.set(queue.due() as i64);
        if stopping && running.is_empty() {
            return;
        }
        let next = queue.next_time();
        tokio::select! {
            Some((obj, requeue)) = running.next(), if !running.is_empty() => {
                queue.done(obj, requeue.map(|after| Instant::now() + after));
            }
            change = changes.next(), if !stopping => match change {
                Some(obj) => queue.add(obj, Instant::now()),
                None => stopping = true,
            },
            () = tokio::time::sleep_until(next.unwrap_or(now)), if next.is_some() && !stopping => {}
            () = &mut stop, if !stopping => {
                tracing::info!(running = running.len(), "shutdown requested; letting running reconciles finish");
                stopping = true;
            }
        }
    }
}

/// SIGTERM (as the kubelet sends) or Ctrl-C.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        Some(()) = async { term.as_mut()?.recv().await } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBOUNCE: Duration = Duration::from_millis(500);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(q: &mut Queue<&'static str>, now: Instant) -> Vec<&'static str> {
        q.promote(now);
        std::iter::from_fn(|| q.take()).collect()
    }

    #[test]
    fn objects_come_in_the_order_they_came_due() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        for (i, name) in ["a", "b", "c", "d", "e", "f", "g", "h"].into_iter().enumerate() {
            q.add(name, t0 + ms(i as u64));
        }
        assert_eq!(drain(&mut q, t0 + ms(400)), Vec::<&str>::new(), "nothing before the debounce");
        q.promote(t0 + ms(600));
        assert_eq!(q.due(), 8);
        assert_eq!(drain(&mut q, t0 + ms(600)), vec!["a", "b", "c", "d", "e", "f", "g", "h"]);
    }

    #[test]
    fn equal_times_keep_their_arrival_order() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        for name in ["z", "y", "x", "w"] {
            q.add(name, t0);
        }
        assert_eq!(drain(&mut q, t0 + DEBOUNCE), vec!["z", "y", "x", "w"]);
    }

    #[test]
    fn a_burst_of_changes_is_one_reconcile_after_the_last() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0);
        q.add("a", t0 + ms(300));
        assert_eq!(drain(&mut q, t0 + ms(600)), Vec::<&str>::new(), "the second change moved it on");
        assert_eq!(drain(&mut q, t0 + ms(800)), vec!["a"]);
        assert_eq!(q.next_time(), None);
    }

    #[test]
    fn an_earlier_time_wins_and_a_later_one_is_ignored() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0 + Duration::from_secs(15));
        q.add("a", t0);
        assert_eq!(q.next_time(), Some(t0 + DEBOUNCE));
        q.add("a", t0 + Duration::from_secs(20));
        assert_eq!(q.next_time(), Some(t0 + DEBOUNCE));
    }

    #[test]
    fn an_object_in_line_keeps_its_place() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0);
        q.add("b", t0);
        q.promote(t0 + DEBOUNCE);
        q.add("a", t0 + DEBOUNCE);
        assert_eq!(q.next_time(), None, "not queued twice");
        assert_eq!(drain(&mut q, t0 + DEBOUNCE), vec!["a", "b"]);
    }

    #[test]
    fn a_change_during_a_reconcile_runs_it_again_after_it() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0);
        assert_eq!(drain(&mut q, t0 + DEBOUNCE), vec!["a"]);
        q.add("a", t0 + ms(600));
        assert_eq!(drain(&mut q, t0 + ms(2000)), Vec::<&str>::new(), "never two reconciles of one object at once");
        q.done("a", Some(t0 + Duration::from_secs(15)));
        assert_eq!(q.next_time(), Some(t0 + ms(600) + DEBOUNCE), "the change's time, not the later requeue");
        assert_eq!(drain(&mut q, t0 + ms(2000)), vec!["a"]);
    }

    #[test]
    fn a_requeue_brings_it_back_and_await_change_does_not() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0);
        q.add("b", t0);
        assert_eq!(drain(&mut q, t0 + DEBOUNCE), vec!["a", "b"]);
        q.done("a", Some(t0 + Duration::from_secs(1)));
        q.done("b", None);
        assert_eq!(q.active(), 0);
        assert_eq!(drain(&mut q, t0 + Duration::from_secs(2)), vec!["a"]);
    }
}
