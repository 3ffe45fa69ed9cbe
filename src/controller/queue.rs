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
use futures::{FutureExt, Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::time::Instant;

use super::key::ObjectKey;
use super::metrics::ControllerLabels;
use super::{Metrics, next_run};

/// When an object is taken again without a change to it: after the delay, or only on a change.
pub type Requeue = Option<Duration>;

/// A change to an object: one of a burst, gathered for the debounce (a new pod's quick steps, a
/// zone's servers reporting), or one its reconcile waits on to take the next step (its old pod
/// gone, its new pod Ready), which runs it as soon as it is not running.
pub struct Change<K: Resource<DynamicType = ()>> {
    pub obj: ObjectRef<K>,
    pub awaited: bool,
}

impl<K: Resource<DynamicType = ()>> From<ObjectRef<K>> for Change<K> {
    fn from(obj: ObjectRef<K>) -> Self {
        Change { obj, awaited: false }
    }
}

/// Which objects are due when, in order. Each object is in at most one place: waiting for its
/// time, due (in line), or being reconciled (`active`, with the time a change asked for while
/// it ran, if one did). An object starts at most once per `debounce`: a change to one that has
/// been quiet runs it at once, and the changes that follow within the debounce (a new pod's
/// quick steps, a zone's servers reporting) come to one more reconcile when it ends.
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
    /// Objects being reconciled for which an awaited change came meanwhile.
    awaited: HashSet<T>,
    /// When each object last started, while that is within the debounce (oldest first in
    /// `starts`; an object's latest start in `started`).
    started: HashMap<T, Instant>,
    starts: VecDeque<(Instant, T)>,
}

impl<T: Clone + Eq + Hash> Queue<T> {
    /// An empty queue, whose objects start at most once per `debounce`.
    pub fn new(debounce: Duration) -> Self {
        Queue {
            debounce,
            waiting: BTreeMap::new(),
            times: HashMap::new(),
            arrivals: 0,
            due: VecDeque::new(),
            in_line: HashSet::new(),
            active: HashMap::new(),
            awaited: HashSet::new(),
            started: HashMap::new(),
            starts: VecDeque::new(),
        }
    }

    /// Asks for `obj` to be reconciled at `at`, or a debounce after it last started if that is
    /// later. An object already in line stays where it is; one being reconciled runs again
    /// once it is done; one waiting keeps the earlier of its time and this one.
    pub fn add(&mut self, obj: T, at: Instant) {
        self.add_at(obj, at, false);
    }

    /// Asks for `obj` to be reconciled at `at` whatever the debounce: a change its reconcile
    /// waits on. One being reconciled runs again as soon as it is done.
    pub fn add_awaited(&mut self, obj: T, at: Instant) {
        self.add_at(obj, at, true);
    }

    fn add_at(&mut self, obj: T, at: Instant, awaited: bool) {
        if self.in_line.contains(&obj) {
            return;
        }
        if let Some(again) = self.active.get_mut(&obj) {
            *again = Some(again.map_or(at, |t| t.min(at)));
            if awaited {
                self.awaited.insert(obj);
            }
            return;
        }
        let debounced = self.started.get(&obj).filter(|_| !awaited).map(|&t| t + self.debounce);
        let when = debounced.map_or(at, |t| at.max(t));
        if let Some(&(old, arrival)) = self.times.get(&obj) {
            if old <= when {
                return;
            }
            self.waiting.remove(&(old, arrival));
        }
        self.arrivals += 1;
        let slot = (when, self.arrivals);
        self.waiting.insert(slot, obj.clone());
        self.times.insert(obj, slot);
    }

    /// Puts every object whose time has come by `now` in line, earliest first, and forgets
    /// starts older than the debounce.
    pub fn promote(&mut self, now: Instant) {
        while let Some((t, _)) = self.starts.front()
            && *t + self.debounce <= now
        {
            let (t, obj) = self.starts.pop_front().expect("a front entry");
            if self.started.get(&obj) == Some(&t) {
                self.started.remove(&obj);
            }
        }
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

    /// The first object in line, now (`now`) being reconciled.
    pub fn take(&mut self, now: Instant) -> Option<T> {
        let obj = self.due.pop_front()?;
        self.in_line.remove(&obj);
        self.active.insert(obj.clone(), None);
        self.started.insert(obj.clone(), now);
        self.starts.push_back((now, obj.clone()));
        Some(obj)
    }

    /// `obj`'s reconcile is over: it runs again at `requeue` or when a change asked while it ran,
    /// whichever is first.
    pub fn done(&mut self, obj: T, requeue: Option<Instant>) {
        let again = self.active.remove(&obj).flatten();
        let awaited = self.awaited.remove(&obj);
        if let Some(at) = [again, requeue].into_iter().flatten().min() {
            self.add_at(obj, at, awaited);
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
    changes: impl Stream<Item = Change<K>>,
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
    // A watch's list fills its store at the end, after it has told of each object (the watch
    // runs as `changes` is polled, in this loop). An object missing from the store is looked for
    // again a debounce later: until the first list is in, and once more after (a relist), before
    // it counts as deleted.
    let mut listed = false;
    let mut missing: HashSet<ObjectRef<K>> = HashSet::new();
    let mut stopping = false;
    loop {
        let now = Instant::now();
        queue.promote(now);
        while !stopping && queue.active() < concurrency.max(1) {
            let Some(obj) = queue.take(now) else { break };
            let live = store.get(&obj);
            if live.is_none() && !listed {
                listed = store.wait_until_ready().now_or_never().is_some();
            }
            match live {
                Some(live) => {
                    missing.remove(&obj);
                    tracing::trace!(controller, object = %obj.name, "reconcile starts");
                    let (run, metrics) = (reconcile(live), metrics.clone());
                    running.push(async move {
                        let key = ObjectKey::new(obj.namespace.clone().unwrap_or_default(), &obj.name);
                        let requeue = next_run(controller, &key, run.await, &metrics);
                        (obj, requeue)
                    });
                }
                // Not in the store yet, or deleted since: nothing to do until it comes back.
                None if !listed || missing.insert(obj.clone()) => queue.done(obj, Some(now + debounce)),
                None => {
                    missing.remove(&obj);
                    queue.done(obj, None);
                }
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
                Some(Change { obj, awaited: false }) => queue.add(obj, Instant::now()),
                Some(Change { obj, awaited: true }) => {
                    tracing::trace!(controller, object = %obj.name, "awaited change");
                    queue.add_awaited(obj, Instant::now())
                }
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
        std::iter::from_fn(|| q.take(now)).collect()
    }

    #[test]
    fn objects_come_in_the_order_they_came_due() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        for (i, name) in ["a", "b", "c", "d", "e", "f", "g", "h"].into_iter().enumerate() {
            q.add(name, t0 + ms(10 * i as u64));
        }
        assert_eq!(drain(&mut q, t0 + ms(25)), vec!["a", "b", "c"], "a quiet object runs at once");
        q.promote(t0 + ms(70));
        assert_eq!(q.due(), 5);
        assert_eq!(drain(&mut q, t0 + ms(70)), vec!["d", "e", "f", "g", "h"]);
    }

    #[test]
    fn equal_times_keep_their_arrival_order() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        for name in ["z", "y", "x", "w"] {
            q.add(name, t0);
        }
        assert_eq!(drain(&mut q, t0), vec!["z", "y", "x", "w"]);
    }

    #[test]
    fn a_burst_of_changes_is_one_reconcile_at_once_and_one_a_debounce_later() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0);
        assert_eq!(drain(&mut q, t0), vec!["a"], "the first change runs it at once");
        q.done("a", None);
        // Its next changes (a new pod's quick steps) come to one reconcile, a debounce after the
        // first started.
        for t in [50, 120, 300, 450] {
            q.add("a", t0 + ms(t));
        }
        assert_eq!(q.next_time(), Some(t0 + DEBOUNCE));
        assert_eq!(drain(&mut q, t0 + ms(499)), Vec::<&str>::new());
        assert_eq!(drain(&mut q, t0 + DEBOUNCE), vec!["a"]);
        q.done("a", None);
        assert_eq!(q.next_time(), None, "one reconcile for the four changes");
        // Quiet for a debounce: the next change runs it at once again.
        q.add("a", t0 + ms(1200));
        assert_eq!(drain(&mut q, t0 + ms(1200)), vec!["a"]);
    }

    #[test]
    fn starts_are_forgotten_after_the_debounce() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        for name in ["a", "b"] {
            q.add(name, t0);
        }
        assert_eq!(drain(&mut q, t0), vec!["a", "b"]);
        q.done("a", None);
        q.done("b", None);
        assert_eq!(q.started.len(), 2);
        q.promote(t0 + DEBOUNCE);
        assert!(q.started.is_empty() && q.starts.is_empty(), "{:?}", q.started);
    }

    #[test]
    fn an_earlier_time_wins_and_a_later_one_is_ignored() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0 + Duration::from_secs(15));
        q.add("a", t0);
        assert_eq!(q.next_time(), Some(t0));
        q.add("a", t0 + Duration::from_secs(20));
        assert_eq!(q.next_time(), Some(t0));
    }

    #[test]
    fn an_object_in_line_keeps_its_place() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0);
        q.add("b", t0);
        q.promote(t0);
        q.add("a", t0 + ms(10));
        assert_eq!(q.next_time(), None, "not queued twice");
        assert_eq!(drain(&mut q, t0 + ms(10)), vec!["a", "b"]);
    }

    #[test]
    fn a_change_during_a_reconcile_runs_it_again_after_it() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0);
        assert_eq!(drain(&mut q, t0), vec!["a"]);
        q.add("a", t0 + ms(600));
        assert_eq!(drain(&mut q, t0 + ms(2000)), Vec::<&str>::new(), "never two reconciles of one object at once");
        q.done("a", Some(t0 + Duration::from_secs(15)));
        assert_eq!(q.next_time(), Some(t0 + ms(600)), "the change's time, not the later requeue");
        assert_eq!(drain(&mut q, t0 + ms(2000)), vec!["a"]);
        // A change during a short reconcile waits for the debounce from its start.
        q.add("a", t0 + ms(2100));
        q.done("a", None);
        assert_eq!(q.next_time(), Some(t0 + ms(2000) + DEBOUNCE));
    }

    #[test]
    fn an_awaited_change_runs_it_at_once_or_right_after_its_reconcile() {
        let t0 = Instant::now();
        let mut q = Queue::new(DEBOUNCE);
        q.add("a", t0);
        assert_eq!(drain(&mut q, t0), vec!["a"]);
        q.done("a", None);
        // A routine change waits out the debounce; the awaited one that follows does not.
        q.add("a", t0 + ms(100));
        assert_eq!(q.next_time(), Some(t0 + DEBOUNCE));
        q.add_awaited("a", t0 + ms(200));
        assert_eq!(drain(&mut q, t0 + ms(200)), vec!["a"], "the earlier time wins over the debounce");
        // Awaited while it runs: again as soon as it is done, not a debounce after it started.
        q.add_awaited("a", t0 + ms(250));
        q.done("a", None);
        assert_eq!(q.next_time(), Some(t0 + ms(250)));
        assert_eq!(drain(&mut q, t0 + ms(260)), vec!["a"]);
        // Then routine changes are gathered again.
        q.add("a", t0 + ms(300));
        q.done("a", None);
        assert_eq!(q.next_time(), Some(t0 + ms(260) + DEBOUNCE));
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
        assert_eq!(q.next_time(), Some(t0 + Duration::from_secs(1)), "at the time asked, no debounce added");
        assert_eq!(drain(&mut q, t0 + Duration::from_secs(2)), vec!["a"]);
    }
}
