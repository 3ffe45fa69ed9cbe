//! The zone and server controllers, and the runtime around them: leader election, HTTP
//! endpoints (`/metrics`, `/healthz`, `/readyz`), shutdown.

mod http;
mod index;
pub use crate::key;
pub mod leader;
pub mod metrics;
pub(crate) mod ownership;
pub mod port_table;
mod queue;
mod server;
mod slim;
pub mod writer;
mod zone;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::api::{GameServer, MANAGED_BY_LABEL, MANAGER, PortStatus, ZONE_LABEL};
use crate::zone::BuildConfig;
use crate::{Error, Result};
use slim::StoredServer;

pub use metrics::Metrics;

/// Finalizer the zone controller puts on every GameZone.
pub const ZONE_FINALIZER: &str = "gamezone.dev/cleanup";

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// What zones build (init-container image ...).
    pub build: BuildConfig,
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Reconciles run at once per controller.
    pub concurrency: u16,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub http_addr: SocketAddr,
    /// Host port ranges for the Dynamic and Passthrough policies.
    pub port_ranges: crate::ports::PortRanges,
    /// Take a Lease before acting, so only one replica reconciles.
    pub leader_election: Option<leader::LeaseConfig>,
    /// Feature gates.
    pub feature_gates: crate::webhook::FeatureGates,
    /// The passthrough webhook; served only with the `AutopilotPassthroughPort` gate on.
    pub webhook: Option<crate::webhook::Config>,
    /// Where artifact layers may be fetched from, and how long resolving may take.
    pub fetch: gamezone_init::resolve::Options,
    /// What zones may ask of the nodes (Static host ports, the control plane).
    pub tenancy: crate::zone::tenancy::Tenancy,
    /// The most host ports the servers of one namespace may hold; no limit when `None`.
    pub host_ports_per_namespace: Option<usize>,
    /// How long a deleted zone's servers may drain before they go anyway.
    pub deletion_drain_limit: Duration,
    /// The shortest `artifactsInterval` a zone gets.
    pub min_artifacts_interval: Duration,
    /// How long a node may be not Ready before its servers move off it.
    pub node_not_ready_grace: Duration,
    /// Serve the zone metrics (servers by state and version ...) beside the controller's own.
    pub zone_metrics: bool,
}

/// What a reconcile needs.
pub struct Context {
    /// API client, for reads and deletions; writes that are spared go through `writer`.
    pub client: Client,
    /// Operator settings.
    pub config: Config,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Applies children and writes statuses, remembering what it wrote.
    pub writer: writer::Writer,
    /// Host port tables and what each zone's topology lists.
    pub ports: port_table::PortTable,
    /// What the shared watches show.
    pub cache: Cache,
    /// Artifact resolves under way, off the reconciles.
    pub pinning: zone::pinning::Pinning,
    /// Zones whose rolling update waits for a server's turn.
    pub turns: zone::Turns,
}

/// The shared watches' stores. Reconciles read servers, pods, Services and nodes from memory
/// instead of asking the API server; zones read their own through the zone indexes.
pub struct Cache {
    /// Nodes, for node addresses in GameServer status.
    pub nodes: Store<Node>,
    /// GameServers, as the watch shared by both controllers last saw them; read them whole with
    /// [`Cache::servers_of`] or [`StoredServer::server`].
    pub servers: Store<StoredServer>,
    /// Pods the operator made, from the server controller's watch.
    pub pods: Store<Pod>,
    /// Services the operator made, from the zone controller's watch.
    pub services: Store<Service>,
    /// `servers` by zone.
    pub servers_by_zone: Arc<index::ByZone>,
    /// `services` by zone.
    pub services_by_zone: Arc<index::ByZone>,
}

impl Cache {
    /// The GameServers of `zone` that the store holds now, whole.
    pub fn servers_of(&self, zone: &key::ObjectKey) -> Vec<Arc<GameServer>> {
        self.servers_by_zone.of(&self.servers, zone).iter().map(|s| Arc::new(s.server())).collect()
    }
}

impl Context {
    /// Publishes an Event about `obj`; failures are logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, warning: bool, reason: &str, note: String) {
        let ev = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.into(),
            note: Some(crate::conditions::bounded(&note)),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish event");
        }
    }
}

/// Api for `K` in the configured scope.
pub fn scoped<K>(client: &Client, namespace: &Option<String>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the operator until a shutdown signal.
pub async fn run(client: Client, config: Config) -> anyhow::Result<()> {
    // Ready means the same for every replica (see `http`): a follower once it has seen the
    // Lease held, the leader once its caches are loaded; both with the webhook's certificate.
    let ready = Arc::new(http::Readiness::default());
    let metrics = Arc::new(Metrics::new(config.zone_metrics));
    let http = tokio::spawn(http::serve(config.http_addr, metrics.clone(), ready.clone()));

    // Every replica serves the webhook; only the leader writes its Secret and configuration.
    let leading = Arc::new(AtomicBool::new(config.leader_election.is_none()));
    let webhook = match (&config.webhook, config.feature_gates.autopilot_passthrough_port) {
        (Some(cfg), true) => {
            let slot = Arc::new(crate::webhook::tls::CertSlot::default());
            ready.webhook(slot.clone());
            Some(crate::webhook::start(client.clone(), cfg.clone(), leading.clone(), slot).await?)
        }
        _ => None,
    };
    let webhook_stopped = async move {
        match webhook {
            Some(handle) => handle.await,
            None => std::future::pending().await,
        }
    };

    let lease = match &config.leader_election {
        Some(lease) => Some(leader::acquire(client.clone(), lease.clone(), || ready.started()).await),
        None => None,
    };
    leading.store(true, Ordering::SeqCst);

    // Rebuild port tables from what exists before any reconcile can hand out a port.
    let node_api = Api::<Node>::all(client.clone());
    let (allocator, listed) = rebuild_ports(&client, &node_api, &config).await?;
    metrics.ports(&allocator.usage());

    let (nodes, writer) = reflector::store();
    // One watch per kind, shared: both controllers hear of GameServers from the same stream, and
    // reconciles read pods, servers and Services from memory instead of asking the API server.
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let (servers_by_zone, services_by_zone) = (Arc::new(index::ByZone::default()), Arc::new(index::ByZone::default()));
    let (servers, server_watch, mut server_triggers) = shared_watch(
        scoped::<StoredServer>(&client, &config.namespace),
        watcher::Config::default(),
        2,
        Some(servers_by_zone.clone()),
        Slim { keep: slim::object, trigger: StoredServer::trigger },
    );
    let (pods, pod_watch, mut pod_triggers) = shared_watch(
        scoped::<Pod>(&client, &config.namespace),
        owned.clone(),
        2,
        None,
        Slim { keep: slim::pod, trigger: |p| Pod { metadata: slim::trigger_meta(&p.metadata), ..Default::default() } },
    );
    let (services, service_watch, mut service_triggers) = shared_watch(
        scoped::<Service>(&client, &config.namespace),
        owned,
        1,
        Some(services_by_zone.clone()),
        Slim {
            keep: slim::object,
            trigger: |s| Service { metadata: slim::trigger_meta(&s.metadata), ..Default::default() },
        },
    );
    let shared_watches = futures::future::join3(server_watch, pod_watch, service_watch);
    let (servers_for_zones, servers_for_servers) =
        (server_triggers.pop().expect("two"), server_triggers.pop().expect("two"));
    let (pods_for_zones, pods_for_servers, services_for_zones) =
        (pod_triggers.pop().expect("two"), pod_triggers.pop().expect("two"), service_triggers.pop().expect("one"));
    let reporter = Reporter { controller: MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
    metrics.count_servers_from(servers.clone());
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        writer: writer::Writer::new(client.clone()),
        client,
        pinning: zone::pinning::Pinning::new(config.fetch.deadline),
        turns: zone::Turns::default(),
        config,
        metrics,
        ports: port_table::PortTable::new(allocator, listed),
        cache: Cache { nodes, servers, pods, services, servers_by_zone, services_by_zone },
    });
    let node_ctx = ctx.clone();
    let (moves, servers_moving) = futures::channel::mpsc::unbounded();
    let (zone_moves, zones_moving) = futures::channel::mpsc::unbounded();
    let mut leaving = HashMap::<String, bool>::new();
    let mut not_ready = HashMap::<String, Timestamp>::new();
    let grace = ctx.config.node_not_ready_grace;
    // Nodes joining and leaving change port capacity live; a node that starts or stops leaving
    // (cordoned, uncordoned, an autoscaler's taint, not Ready past the grace) has its servers and
    // their zones reconciled. A node not Ready gives no event when its grace ends: a timer does.
    let node_watch =
        watcher(node_api, watcher::Config::default()).default_backoff().modify(slim::node).reflect(writer).for_each(
            move |event| {
                if let Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) = &event {
                    let name = node.name_any();
                    let move_off = {
                        let (ctx, moves, zone_moves, name) =
                            (node_ctx.clone(), moves.clone(), zone_moves.clone(), name.clone());
                        move || {
                            let (servers, zones) = servers_on(&ctx.cache.servers, &name);
                            servers.into_iter().for_each(|s| drop(moves.unbounded_send(s)));
                            zones.into_iter().for_each(|z| drop(zone_moves.unbounded_send(z)));
                        }
                    };
                    let now = crate::placement::leaving(node, Timestamp::now(), grace).is_some();
                    if leaving.insert(name.clone(), now).is_some_and(|before| before != now) {
                        move_off();
                    }
                    match crate::placement::not_ready_since(node) {
                        Some(since) if !now && not_ready.insert(name.clone(), since) != Some(since) => {
                            let at = since + grace;
                            tokio::spawn(async move {
                                let left = Timestamp::now().duration_until(at);
                                tokio::time::sleep(Duration::try_from(left).unwrap_or_default()).await;
                                move_off();
                            });
                        }
                        Some(_) => {}
                        None => drop(not_ready.remove(&name)),
                    }
                }
                let mut alloc = node_ctx.ports.allocator();
                match event {
                    Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node)) => {
                        if crate::placement::node_usable(&node) {
                            alloc.node_added(&node.name_any());
                        } else if alloc.nodes().any(|n| n == node.name_any()) {
                            alloc.node_removed(&node.name_any());
                        }
                    }
                    Ok(watcher::Event::Delete(node)) => {
                        alloc.node_removed(&node.name_any());
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "node watch failed; retrying"),
                }
                node_ctx.metrics.ports(&alloc.usage());
                futures::future::ready(())
            },
        );
    let stores =
        (ctx.cache.nodes.clone(), ctx.cache.servers.clone(), ctx.cache.pods.clone(), ctx.cache.services.clone());
    let loaded = async {
        let _ = futures::join!(
            stores.0.wait_until_ready(),
            stores.1.wait_until_ready(),
            stores.2.wait_until_ready(),
            stores.3.wait_until_ready()
        );
        tracing::info!("caches loaded");
        ready.started();
        std::future::pending::<()>().await
    };
    tracing::info!("controllers starting");
    // On SIGTERM each controller lets its running reconciles finish; both are awaited, so the
    // first to be done does not drop the other's in flight.
    let controllers = futures::future::join(
        zone::run(ctx.clone(), servers_for_zones, services_for_zones, pods_for_zones, zones_moving),
        server::run(ctx.clone(), servers_for_servers, pods_for_servers, servers_moving),
    );
    tokio::select! {
        _ = controllers => {},
        _ = shared_watches => {},
        _ = node_watch => {},
        _ = loaded => {},
        r = http => { r??; }
        r = webhook_stopped => { r?; anyhow::bail!("the webhook server stopped"); }
    }
    ready.stopping();
    tracing::info!("controllers stopped");
    // Nothing of this term writes any more: hand over now rather than after a lease duration.
    leading.store(false, Ordering::SeqCst);
    if let Some(lease) = lease {
        lease.release().await;
    }
    Ok(())
}

/// The servers whose pods run on `node`, as the shared watch shows them, and their zones.
fn servers_on(servers: &Store<StoredServer>, node: &str) -> (Vec<key::ObjectKey>, BTreeSet<key::ObjectKey>) {
    let on: Vec<_> = servers.state().into_iter().filter(|s| s.node() == Some(node)).collect();
    let zones = on
        .iter()
        .filter_map(|s| Some(key::ObjectKey::new(s.namespace()?, s.labels().get(ZONE_LABEL)?.clone())))
        .collect();
    (on.iter().map(|s| key::ObjectKey::of(s.as_ref())).collect(), zones)
}

/// Servers (or zones) to reconcile because a node they run on started or stopped leaving.
pub type Moves = futures::channel::mpsc::UnboundedReceiver<key::ObjectKey>;

/// The port tables as the nodes, servers and topologies that exist hold them, and each server's
/// ports as its topology lists them. What was listed for it goes once the tables are built: held
/// in the body of [`run`], it stayed for the process's life (a restarted operator with 2,000
/// servers held 98-100 MiB with it there, 84-93 without).
async fn rebuild_ports(
    client: &Client,
    node_api: &Api<Node>,
    config: &Config,
) -> Result<(crate::ports::PortAllocator, HashMap<key::ObjectKey, Vec<PortStatus>>)> {
    let mut allocator = crate::ports::PortAllocator::new(config.port_ranges.clone());
    let known_nodes = node_api.list(&Default::default()).await?.items;
    let known_servers = servers_for_rebuild(&scoped::<GameServer>(client, &config.namespace)).await?;
    let topologies = scoped::<ConfigMap>(client, &config.namespace)
        .list(&ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}")))
        .await?
        .items;
    let listed: HashMap<key::ObjectKey, Vec<PortStatus>> =
        topologies.iter().flat_map(crate::ports::spec::listed_in).collect();
    let deferred = config.feature_gates.autopilot_passthrough_port;
    port_table::rebuild(&mut allocator, &known_nodes, &known_servers, &listed, deferred);
    Ok((allocator, listed))
}

/// The GameServers that exist, as the port rebuild reads them (metadata and status), listed in
/// pages: after a restart with thousands of servers, one list of them whole was the largest
/// allocation of the operator's life (over 30 MiB at 2,000 servers).
async fn servers_for_rebuild(api: &Api<GameServer>) -> Result<Vec<GameServer>> {
    let mut lp = ListParams::default().limit(LIST_PAGE);
    let mut servers = Vec::new();
    loop {
        let page = api.list(&lp).await?;
        servers.extend(page.items.into_iter().map(|mut gs| {
            gs.spec = Default::default();
            slim::object(&mut gs);
            gs
        }));
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => lp = lp.continue_token(&token),
            _ => return Ok(servers),
        }
    }
}

/// Objects per page of a start-up list. Each page is decoded whole before it is trimmed: at 500
/// (kube's default) the operator held 123 MiB after a restart with 2,000 servers (peak 149), at
/// 100 it held 116 (peak 129).
const LIST_PAGE: u32 = 100;

/// Changes of one kind, as a controller takes them: every object added, changed or deleted.
pub type Triggers<K> = futures::channel::mpsc::UnboundedReceiver<std::result::Result<K, watcher::Error>>;

/// What a shared watch keeps of each object, and what it tells the controllers of it.
struct Slim<K> {
    /// Trims an object for the store.
    keep: fn(&mut K),
    /// The copy a controller's trigger gets (see [`slim::trigger_meta`]).
    trigger: fn(&K) -> K,
}

/// One watch of `api` shared by `n` controllers: a store to read from (indexed by zone into
/// `by_zone` when given) of the objects as `slim` keeps them, the future that runs the watch,
/// and one stream of changed objects (deletions included, as `slim` tells them) per controller.
fn shared_watch<K>(
    api: Api<K>,
    cfg: watcher::Config,
    n: usize,
    by_zone: Option<Arc<index::ByZone>>,
    slim: Slim<K>,
) -> (Store<K>, impl std::future::Future<Output = ()>, Vec<Triggers<K>>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| futures::channel::mpsc::unbounded()).unzip();
    let stream = watcher(api, cfg.page_size(LIST_PAGE)).default_backoff().modify(slim.keep);
    let run = stream.reflect(writer).touched_objects().for_each(move |event| {
        match event {
            Ok(obj) => {
                if let Some(index) = &by_zone {
                    index.saw(&obj);
                }
                for tx in &senders {
                    // A controller that stopped is going down with the process.
                    let _ = tx.unbounded_send(Ok((slim.trigger)(&obj)));
                }
            }
            Err(e) => tracing::warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying"),
        }
        futures::future::ready(())
    });
    (store, run, receivers)
}

/// How a controller's queue runs: `--concurrency` reconciles at once, each object started at
/// most every half second (a change to a quiet object runs it at once; a burst of changes, a
/// new pod's quick steps or a zone's servers reporting, comes to one more reconcile half a
/// second after the first), and its depth exported as `gamezone_queue_depth`.
fn queue_settings(ctx: &Context, controller: &'static str) -> queue::Settings {
    queue::Settings {
        controller,
        metrics: ctx.metrics.clone(),
        concurrency: usize::from(ctx.config.concurrency),
        debounce: Duration::from_millis(500),
    }
}

/// Requeue delay after an error: user errors wait for a change (or a watched Secret), others
/// back off briefly.
fn requeue_after(err: &Error) -> Duration {
    if err.is_user_error() { Duration::from_secs(120) } else { Duration::from_secs(5) }
}

/// When a reconcile's object runs again, by its outcome: as it asked, or, after an error, as the
/// error policy says. A failure is logged and counted; waiting (for servers to terminate) is
/// neither, since nothing failed.
fn next_run(
    controller: &'static str,
    obj: &key::ObjectKey,
    outcome: Result<queue::Requeue>,
    metrics: &Metrics,
) -> queue::Requeue {
    match outcome {
        Ok(requeue) => requeue,
        Err(Error::Waiting(what)) => {
            tracing::debug!(controller, object = %obj, waiting = %what, "waiting");
            Some(Duration::from_secs(5))
        }
        Err(err) => {
            metrics.error(controller, err.reason());
            tracing::warn!(controller, object = %obj, error = %err, "reconcile failed");
            Some(requeue_after(&err))
        }
    }
}

/// Runs `step` behind the finalizer `name` of `obj` (kube's `finalizer`: added before the first
/// `Apply`, removed after a `Cleanup` succeeds) and returns when to reconcile again.
async fn finalized<K, F, Fut>(api: &Api<K>, name: &str, obj: Arc<K>, step: F) -> Result<queue::Requeue>
where
    K: Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
    F: FnOnce(kube::runtime::finalizer::Event<K>) -> Fut,
    Fut: std::future::Future<Output = Result<queue::Requeue>>,
{
    // kube's finalizer carries only its own `Action`, which does not tell its delay: the step's
    // is kept aside.
    let mut requeue = None;
    let next = &mut requeue;
    let result = kube::runtime::finalizer::finalizer(api, name, obj, |event| async move {
        *next = step(event).await?;
        Ok(Action::await_change())
    })
    .await;
    settled(result)?;
    Ok(requeue)
}

/// What a step behind a finalizer came to: its own error as it is, and a finalizer that could
/// not be taken off because its object is gone already counted as done. That happens when a
/// reconcile reads the object from a cache that has not yet heard of its deletion: the cleanup
/// ran again, idempotently, and the object went with the first removal.
fn settled(result: std::result::Result<Action, kube::runtime::finalizer::Error<Error>>) -> Result<()> {
    use kube::runtime::finalizer::Error as Step;
    match result {
        Ok(_) => Ok(()),
        Err(Step::ApplyFailed(e) | Step::CleanupFailed(e)) => Err(e),
        Err(Step::RemoveFinalizer(kube::Error::Api(e))) if e.code == 404 => Ok(()),
        Err(other) => Err(Error::Finalizer(Box::new(other))),
    }
}

/// The object of kind `P` that controls `obj` (its owner reference marked `controller`), if any.
fn controller_of<P: Resource<DynamicType = ()>>(obj: &impl Resource) -> Option<ObjectRef<P>> {
    let owner = obj.meta().owner_references.as_ref()?.iter().find(|o| o.controller == Some(true))?;
    let ours = owner.kind == P::kind(&()) && owner.api_version == P::api_version(&());
    ours.then(|| ObjectRef::new(&owner.name).within(obj.meta().namespace.as_deref().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::finalizer::Error as Step;

    fn api_error(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status { code, ..kube::core::Status::failure("", "") }))
    }

    #[test]
    fn a_finalizer_whose_object_is_gone_is_done() {
        assert!(settled(Err(Step::RemoveFinalizer(api_error(404)))).is_ok());
    }

    #[test]
    fn other_finalizer_failures_stay_errors() {
        for failed in [Step::RemoveFinalizer(api_error(422)), Step::AddFinalizer(api_error(404))] {
            assert!(matches!(settled(Err(failed)), Err(Error::Finalizer(_))));
        }
        let step = settled(Err(Step::CleanupFailed(Error::Waiting("servers to end".into()))));
        assert!(matches!(step, Err(Error::Waiting(_))));
    }
}
