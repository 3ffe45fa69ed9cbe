//! Leader election on a coordination.k8s.io Lease, so two replicas never act at once.
//!
//! The protocol is client-go's. A candidate takes the Lease when nobody holds it, or when the
//! holder's record has stayed unchanged for a whole lease duration as measured on the
//! candidate's own monotonic clock (so clock skew between nodes does not matter). The holder
//! renews every retry period. A holder that has not renewed within the renew deadline, which is
//! shorter than the lease duration, stops writing before anyone else may take the Lease, and
//! exits: its pod restarts as a follower, with no reconcile of the old term still in flight.
//!
//! Stopping "the controllers" is not enough: a process frozen (SIGSTOP, a paused VM, a long GC
//! of the node) wakes with every task due at once, and a reconcile may send its write before
//! the renewer notices anything. So every write of the process is fenced: the client carries a
//! [`FenceLayer`] that lets a non-read request go only while `now < last successful renewal +
//! renew deadline` on the monotonic clock (`Instant` keeps counting while the process is
//! stopped), and otherwise exits the process without sending it. The Lease's own renewal goes
//! through the same rule, and so does every attempt of kube's retry on 429/503/504, which runs
//! above the fence ([`client`]). What no client can rule out is a freeze in the microseconds
//! between the last check and the kernel taking the bytes; the margin between renew deadline
//! and lease duration covers the request's flight, not such a freeze.
//!
//! Crates of the kube-rs ecosystem, looked at for this (2026-12):
//! - `kube-leader-election` (0.32, built on kube 0.9x): a `try_acquire_or_renew` to call in a
//!   loop; its own docs say it has no fencing, and it has no renew deadline.
//! - `kube-lease-manager` (0.12): a well-made lease loop with a grace period, but built on kube
//!   4 / k8s-openapi 0.28 (we are on kube 5 / 0.29: two copies of kube, its client not ours),
//!   and, like the others, it reports leadership through a channel that tasks must check: the
//!   race above stays.
//! - `kube-coordinate` (0.2) and kubert's `lease` module: client-go's loop with a state channel;
//!   same race, and kubert brings a whole runtime.
//!
//! None fences the writes themselves, which is the part that matters here, and the Lease loop
//! around the fence is small; so it stays here.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::client::retry::RetryPolicy;

/// Which Lease to hold, as whom, with what timing; and the fence of this process's client.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal; what followers wait before taking over.
    pub duration: Duration,
    /// How long the holder may go without a successful renewal before it stops writing.
    pub renew_deadline: Duration,
    /// Pause between attempts to take or renew the Lease.
    pub retry_period: Duration,
    /// Guards every write of the client this replica uses.
    pub fence: Fence,
}

/// Why a lease timing is refused: each field names the flag to change.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TimingError {
    /// The renew deadline is not shorter than the lease duration.
    #[error(
        "the renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({duration:?}): a leader must stop writing before a follower may take the Lease"
    )]
    RenewDeadline {
        /// Lease duration.
        duration: Duration,
        /// Renew deadline.
        renew_deadline: Duration,
    },
    /// The retry period is not shorter than the renew deadline.
    #[error(
        "the retry period ({retry_period:?}) must be shorter than the renew deadline ({renew_deadline:?}), or a single failed renewal ends the leadership"
    )]
    RetryPeriod {
        /// Renew deadline.
        renew_deadline: Duration,
        /// Retry period.
        retry_period: Duration,
    },
    /// A zero retry period would renew in a busy loop.
    #[error("the retry period must be more than zero")]
    ZeroRetry,
}

/// Checks `retry_period < renew_deadline < duration`.
pub fn check_timing(duration: Duration, renew_deadline: Duration, retry_period: Duration) -> Result<(), TimingError> {
    if retry_period.is_zero() {
        return Err(TimingError::ZeroRetry);
    }
    if renew_deadline >= duration {
        return Err(TimingError::RenewDeadline { duration, renew_deadline });
    }
    if retry_period >= renew_deadline {
        return Err(TimingError::RetryPeriod { renew_deadline, retry_period });
    }
    Ok(())
}

/// Where this replica stands with the Lease, as far as its writes go.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Term {
    /// Not holding it (yet): only the Lease itself may be written, to take it.
    Candidate,
    /// Holding it: writes may go until this instant.
    Holding(Instant),
    /// Given back on shutdown: nothing more may be written.
    Released,
}

/// What to do with one request.
#[derive(Debug, PartialEq)]
enum Verdict {
    Send,
    /// Refuse it; the process goes on (a follower's stray write, or shutting down).
    Refuse(&'static str),
    /// The term is over: refuse it and end the process.
    Exit,
}

/// Guards every write of one process by its Lease term. Cheap to clone; clones share state.
#[derive(Clone, Debug)]
pub struct Fence(Arc<FenceState>);

#[derive(Debug)]
struct FenceState {
    /// `POST` here creates the Lease.
    collection: String,
    /// `PUT` here takes or renews it.
    object: String,
    renew_deadline: Duration,
    term: Mutex<Term>,
}

impl Fence {
    /// A fence for the Lease `namespace/name`, with nothing held yet.
    pub fn new(namespace: &str, name: &str, renew_deadline: Duration) -> Fence {
        let collection = format!("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases");
        Fence(Arc::new(FenceState {
            object: format!("{collection}/{name}"),
            collection,
            renew_deadline,
            term: Mutex::new(Term::Candidate),
        }))
    }

    /// The layer to put on the client.
    pub fn layer(&self) -> FenceLayer {
        FenceLayer(self.clone())
    }

    fn term(&self) -> Term {
        *self.0.term.lock().expect("fence lock")
    }

    /// A write of the Lease sent at `sent` succeeded: writes may go on until `sent` + the renew
    /// deadline. Counting from the send, not the answer, keeps the leader on the safe side.
    fn renewed(&self, sent: Instant) {
        let mut term = self.0.term.lock().expect("fence lock");
        let until = sent + self.0.renew_deadline;
        *term = match *term {
            Term::Holding(old) => Term::Holding(old.max(until)),
            Term::Candidate => Term::Holding(until),
            Term::Released => Term::Released,
        };
    }

    /// Whether a term was held and its deadline has passed.
    fn expired(&self, now: Instant) -> bool {
        matches!(self.term(), Term::Holding(until) if now >= until)
    }

    fn release(&self) {
        *self.0.term.lock().expect("fence lock") = Term::Released;
    }

    fn verdict(&self, method: &Method, path: &str, now: Instant) -> Verdict {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Verdict::Send;
        }
        match self.term() {
            Term::Holding(until) if now < until => Verdict::Send,
            Term::Holding(_) => Verdict::Exit,
            // Taking the Lease is safe without a term: the API server's resourceVersion check
            // lets only one candidate win.
            Term::Candidate
                if (*method == Method::POST && path == self.0.collection)
                    || (*method == Method::PUT && path == self.0.object) =>
            {
                Verdict::Send
            }
            Term::Candidate => Verdict::Refuse("this replica does not hold the Lease"),
            Term::Released => Verdict::Refuse("this replica gave the Lease back and is shutting down"),
        }
    }

    /// Decides on a request about to be sent; ends the process when the term is over.
    fn admit(&self, method: &Method, path: &str) -> Result<(), Refused> {
        match self.verdict(method, path, Instant::now()) {
            Verdict::Send => Ok(()),
            Verdict::Refuse(why) => {
                tracing::error!(%method, path, why, "refused a write");
                Err(Refused(why))
            }
            Verdict::Exit => term_over(&format!("refused {method} {path}: the Lease was not renewed in time")),
        }
    }
}

/// Ends the process: the only way to be sure nothing of this term is still in flight.
fn term_over(why: &str) -> ! {
    tracing::error!(reason = why, "no longer leading; exiting so this pod restarts as a follower");
    std::process::exit(1)
}

/// A write the fence did not send.
#[derive(Debug, thiserror::Error)]
#[error("write not sent: {0}")]
pub struct Refused(&'static str);

/// A tower layer that passes every request through a [`Fence`].
#[derive(Clone, Debug)]
pub struct FenceLayer(Fence);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = Fenced<S>;

    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced { inner, fence: self.0.clone() }
    }
}

/// A client service behind a [`Fence`].
#[derive(Clone, Debug)]
pub struct Fenced<S> {
    inner: S,
    fence: Fence,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<Request<B>> for Fenced<S>
where
    S: tower::Service<Request<B>> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        if let Err(e) = self.fence.admit(&method, &path) {
            return Box::pin(std::future::ready(Err(e.into())));
        }
        // The request is handed on only when the future is first polled, after a second look:
        // the task may have been frozen since `call` (a buffer below sends as soon as it is
        // called). The service made ready goes along; its clone waits for the next request.
        let fence = self.fence.clone();
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            fence.admit(&method, &path)?;
            ready.call(req).await.map_err(Into::into)
        })
    }
}

/// A client for `config` whose writes go through `fence` (none when `None`). Must be called
/// within the tokio runtime.
pub fn client(mut config: kube::Config, fence: Option<&Fence>) -> kube::Result<Client> {
    let Some(fence) = fence else { return Client::try_from(config) };
    // kube's retry (429/503/504 with backoff, e.g. while a new CRD's storage initializes) sits
    // below any layer added to its builder: a write retried after a freeze would pass the fence
    // unchecked. So its own retry is off and the same policy runs above the fence, where every
    // attempt is checked; the buffer makes the stack below cloneable, as retrying needs.
    let retry = config.default_retry.then(|| tower::retry::RetryLayer::new(RetryPolicy::server_retry()));
    config.default_retry = false;
    let builder = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&fence.layer());
    Ok(match retry {
        Some(retry) => builder.with_layer(&retry).build(),
        None => builder.build(),
    })
}

/// A held Lease; renewed in the background until the process ends or [`Leadership::release`].
pub struct Leadership {
    api: Api<Lease>,
    cfg: LeaseConfig,
    renewer: tokio::task::JoinHandle<()>,
}

/// The holder's record as a candidate last saw it change, by the candidate's clock.
struct Observed {
    spec: LeaseSpec,
    at: Instant,
}

fn record(cfg: &LeaseConfig, now: Timestamp, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.duration.as_secs().max(1) as i32),
        renew_time: Some(MicroTime(now)),
        acquire_time: acquired.or(Some(MicroTime(now))),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

fn holder(spec: &LeaseSpec) -> Option<&str> {
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())
}

/// Whether a candidate may take a Lease held by someone else: its record has not changed for
/// a lease duration (the longer of ours and the one it states) since this candidate saw it.
fn may_take(seen: &mut Option<Observed>, spec: &LeaseSpec, ours: Duration, now: Instant) -> bool {
    if seen.as_ref().is_none_or(|o| o.spec != *spec) {
        *seen = Some(Observed { spec: spec.clone(), at: now });
    }
    let stated = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    let at = seen.as_ref().map_or(now, |o| o.at);
    now.duration_since(at) >= ours.max(stated)
}

/// One attempt to take the Lease; true when this replica holds it afterwards.
async fn try_take(api: &Api<Lease>, cfg: &LeaseConfig, seen: &mut Option<Observed>) -> kube::Result<bool> {
    let written = match api.get_opt(&cfg.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(cfg.name.clone()), ..Default::default() },
                spec: Some(record(cfg, Timestamp::now(), 0, None)),
            };
            let sent = Instant::now();
            api.create(&PostParams::default(), &lease).await.map(|_| sent)
        }
        Some(mut lease) => {
            let old = lease.spec.clone().unwrap_or_default();
            let ours = holder(&old) == Some(cfg.identity.as_str());
            // A restarted container keeps its pod name: a Lease held as us is ours to renew.
            if !ours && holder(&old).is_some() && !may_take(seen, &old, cfg.duration, Instant::now()) {
                return Ok(false);
            }
            let transitions = old.lease_transitions.unwrap_or(0) + i32::from(!ours);
            lease.spec = Some(record(cfg, Timestamp::now(), transitions, if ours { old.acquire_time } else { None }));
            let sent = Instant::now();
            // replace carries the resourceVersion: of racing candidates, one wins, the others get 409.
            api.replace(&cfg.name, &PostParams::default(), &lease).await.map(|_| sent)
        }
    };
    match written {
        Ok(sent) => {
            cfg.fence.renewed(sent);
            Ok(true)
        }
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// How a renewal went wrong.
enum Renewal {
    /// Someone else holds the Lease, or it is gone: the term is over.
    Lost(String),
    /// The request failed; try again while the deadline allows.
    Failed(kube::Error),
}

/// Renews a Lease this replica holds, never taking it back once it is gone or someone else's.
async fn renew(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<(), Renewal> {
    let Some(mut lease) = api.get_opt(&cfg.name).await.map_err(Renewal::Failed)? else {
        return Err(Renewal::Lost("the Lease was deleted".into()));
    };
    let mut spec = lease.spec.clone().unwrap_or_default();
    if holder(&spec) != Some(cfg.identity.as_str()) {
        return Err(Renewal::Lost(format!("the Lease is held by {:?} now", holder(&spec).unwrap_or(""))));
    }
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(cfg.duration.as_secs().max(1) as i32);
    lease.spec = Some(spec);
    let sent = Instant::now();
    match api.replace(&cfg.name, &PostParams::default(), &lease).await {
        Ok(_) => {
            cfg.fence.renewed(sent);
            Ok(())
        }
        Err(e) => Err(Renewal::Failed(e)),
    }
}

/// Waits until this replica holds the Lease, then keeps renewing it in the background.
/// `standby` runs once, when the first look at the Lease found it held by another replica.
pub async fn acquire(client: Client, cfg: LeaseConfig, standby: impl FnOnce()) -> Leadership {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut seen = None;
    let mut standby = Some(standby);
    loop {
        match try_take(&api, &cfg, &mut seen).await {
            Ok(true) => break,
            Ok(false) => {
                if let Some(standby) = standby.take() {
                    tracing::info!(lease = %cfg.name, namespace = %cfg.namespace, "another replica leads; waiting");
                    standby();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %cfg.name, "could not read or take the Lease; retrying")
            }
        }
        tokio::time::sleep(cfg.retry_period).await;
    }
    tracing::info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
    let renewer = tokio::spawn(keep_renewing(api.clone(), cfg.clone()));
    Leadership { api, cfg, renewer }
}

async fn keep_renewing(api: Api<Lease>, cfg: LeaseConfig) {
    loop {
        tokio::time::sleep(cfg.retry_period).await;
        // Never wait on a hung request past the point where the term ends anyway.
        let left = match cfg.fence.term() {
            Term::Holding(until) => until.saturating_duration_since(Instant::now()),
            _ => return,
        };
        match tokio::time::timeout(left, renew(&api, &cfg)).await {
            Ok(Ok(())) => {}
            Ok(Err(Renewal::Lost(why))) => term_over(&why),
            Ok(Err(Renewal::Failed(e))) if !cfg.fence.expired(Instant::now()) => {
                tracing::warn!(error = %e, lease = %cfg.name, "Lease renewal failed; retrying")
            }
            Ok(Err(Renewal::Failed(e))) => term_over(&format!("could not renew the Lease in time: {e}")),
            Err(_) => term_over("could not renew the Lease within the renew deadline"),
        }
    }
}

impl Leadership {
    /// Gives the Lease back (on shutdown), so a follower takes over at once instead of after a
    /// lease duration; from then on the fence refuses every write.
    pub async fn release(self) {
        self.renewer.abort();
        let _ = self.renewer.await;
        let result = async {
            let mut lease = self.api.get(&self.cfg.name).await?;
            let mut spec = lease.spec.clone().unwrap_or_default();
            if holder(&spec) != Some(self.cfg.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(MicroTime(Timestamp::now()));
            lease.spec = Some(spec);
            self.api.replace(&self.cfg.name, &PostParams::default(), &lease).await.map(|_| ())
        }
        .await;
        self.cfg.fence.release();
        match result {
            Ok(()) => tracing::info!(lease = %self.cfg.name, "gave the Lease back"),
            Err(e) => tracing::warn!(error = %e, lease = %self.cfg.name, "could not give the Lease back"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ops/leases/gz";

    #[test]
    fn timing_must_leave_the_leader_time_to_stop_first() {
        let s = Duration::from_secs;
        assert_eq!(check_timing(s(15), s(10), s(2)), Ok(()));
        assert!(matches!(check_timing(s(15), s(15), s(2)), Err(TimingError::RenewDeadline { .. })));
        assert!(matches!(check_timing(s(15), s(10), s(10)), Err(TimingError::RetryPeriod { .. })));
        assert_eq!(check_timing(s(15), s(10), s(0)), Err(TimingError::ZeroRetry));
    }

    #[test]
    fn a_candidate_may_write_only_the_lease() {
        let fence = Fence::new("ops", "gz", Duration::from_secs(4));
        let now = Instant::now();
        assert_eq!(fence.verdict(&Method::GET, "/api/v1/pods", now), Verdict::Send);
        assert_eq!(fence.verdict(&Method::PUT, LEASE, now), Verdict::Send);
        assert_eq!(
            fence.verdict(&Method::POST, "/apis/coordination.k8s.io/v1/namespaces/ops/leases", now),
            Verdict::Send
        );
        assert!(matches!(fence.verdict(&Method::PATCH, "/api/v1/namespaces/a/pods/p", now), Verdict::Refuse(_)));
        // Another Lease, or ours by another verb, is not the Lease it may take.
        assert!(matches!(fence.verdict(&Method::PUT, &format!("{LEASE}x"), now), Verdict::Refuse(_)));
        assert!(matches!(fence.verdict(&Method::DELETE, LEASE, now), Verdict::Refuse(_)));
    }

    #[test]
    fn a_holder_writes_until_the_renew_deadline_then_exits() {
        let fence = Fence::new("ops", "gz", Duration::from_secs(4));
        let sent = Instant::now();
        fence.renewed(sent);
        let patch = |at| fence.verdict(&Method::PATCH, "/api/v1/namespaces/a/pods/p", at);
        assert_eq!(patch(sent + Duration::from_millis(3999)), Verdict::Send);
        assert_eq!(patch(sent + Duration::from_secs(4)), Verdict::Exit);
        // Past the deadline even the Lease's own renewal is not sent; reads still are.
        assert_eq!(fence.verdict(&Method::PUT, LEASE, sent + Duration::from_secs(5)), Verdict::Exit);
        assert_eq!(fence.verdict(&Method::GET, LEASE, sent + Duration::from_secs(5)), Verdict::Send);
        // A renewal answered late never shortens the term.
        fence.renewed(sent + Duration::from_secs(1));
        fence.renewed(sent);
        assert_eq!(patch(sent + Duration::from_millis(4999)), Verdict::Send);
        assert!(fence.expired(sent + Duration::from_secs(5)));
    }

    /// Counts the requests that reach it.
    #[derive(Clone, Default)]
    struct Server(Arc<std::sync::atomic::AtomicUsize>);

    impl tower::Service<Request<()>> for Server {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_refused_write_never_reaches_the_server() {
        use tower::{Layer, Service};
        let fence = Fence::new("ops", "gz", Duration::from_secs(4));
        let server = Server::default();
        let mut client = fence.layer().layer(server.clone());
        let req = |method: Method, path: &str| Request::builder().method(method).uri(path).body(()).unwrap();
        client.call(req(Method::GET, "/api/v1/namespaces/a/pods")).await.unwrap();
        let refused = client.call(req(Method::POST, "/api/v1/namespaces/a/pods")).await.unwrap_err();
        assert!(refused.to_string().contains("does not hold the Lease"), "{refused}");
        assert_eq!(server.0.load(std::sync::atomic::Ordering::SeqCst), 1, "only the read was sent");
        client.call(req(Method::PUT, LEASE)).await.unwrap();
        fence.renewed(Instant::now());
        client.call(req(Method::POST, "/api/v1/namespaces/a/pods")).await.unwrap();
        // Admitted at `call`, but the term ended before the request was first polled: not sent.
        let pending = client.call(req(Method::POST, "/api/v1/namespaces/a/pods"));
        fence.release();
        assert!(pending.await.is_err());
        assert_eq!(server.0.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn after_release_nothing_is_written() {
        let fence = Fence::new("ops", "gz", Duration::from_secs(4));
        let now = Instant::now();
        fence.renewed(now);
        fence.release();
        fence.renewed(now);
        assert!(matches!(fence.verdict(&Method::PATCH, "/api/v1/namespaces/a/pods/p", now), Verdict::Refuse(_)));
        assert!(matches!(fence.verdict(&Method::PUT, LEASE, now), Verdict::Refuse(_)));
    }

    #[test]
    fn a_held_lease_is_taken_only_after_a_full_duration_without_change() {
        let spec = |renewed: i64| LeaseSpec {
            holder_identity: Some("other".into()),
            lease_duration_seconds: Some(6),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            ..Default::default()
        };
        let (mut seen, t0) = (None, Instant::now());
        let s = Duration::from_secs;
        assert!(!may_take(&mut seen, &spec(100), s(6), t0));
        assert!(!may_take(&mut seen, &spec(100), s(6), t0 + s(5)));
        // Renewed: the wait starts again, whatever the record's clock says.
        assert!(!may_take(&mut seen, &spec(101), s(6), t0 + s(5)));
        assert!(!may_take(&mut seen, &spec(101), s(6), t0 + s(10)));
        assert!(may_take(&mut seen, &spec(101), s(6), t0 + s(11)));
        // The longer of our duration and the holder's stated one counts.
        let mut seen = None;
        assert!(!may_take(&mut seen, &spec(1), s(3), t0));
        assert!(!may_take(&mut seen, &spec(1), s(3), t0 + s(4)));
        assert!(may_take(&mut seen, &spec(1), s(3), t0 + s(6)));
    }
}
