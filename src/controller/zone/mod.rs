//! The zone controller: GameZone → pinned artifacts → migration Job → GameServers, Services,
//! topology ConfigMap → status.
//!
//! A reconcile is a list of named steps ([`converge`]); each step's decisions are pure
//! functions in [`decide`], its requests in [`steps`].

mod decide;
pub mod pinning;
mod steps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::ready;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use self::decide::Step;
use self::steps::{At, Live, StepResult};
use super::key::ObjectKey;
use super::ownership::controlled_by;
use super::queue::{Change, Requeue};
use super::slim::StoredServer;
use super::writer::StatusWrite;
use super::{Context, Triggers, ZONE_FINALIZER, controller_of, requeue_after, scoped};
use crate::api::*;
use crate::zone as build;
use crate::{Error, Result};

const CONTROLLER: &str = "zone";

/// How often a zone with edits reads its share's state for `status.edits`.
const EDITS_REFRESH: Duration = Duration::from_secs(10);

/// Runs the zone controller until shutdown, hearing of its zones from a watch of its own, of
/// their servers and Services from the shared watches (and of the pods a zone controls itself,
/// its pre-warm pods, from the shared pod watch), of their Jobs from a watch of those, and of
/// the Secrets zones name from a watch of their metadata, so a missing Secret's creation moves
/// its zone on at once. Zones are taken in the order they came due, as servers are (see
/// [`queue`](super::queue)).
pub async fn run(
    ctx: Arc<Context>,
    servers: Triggers<StoredServer>,
    services: Triggers<Service>,
    pods: Triggers<Pod>,
    moves: super::Moves,
) {
    let ns = &ctx.config.namespace;
    let client = &ctx.client;
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let (zones, writer) = reflector::store();
    ctx.metrics.count_zones_from(zones.clone());
    let zone_changes = watcher(scoped::<GameZone>(client, ns), watcher::Config::default())
        .default_backoff()
        .modify(crate::controller::slim::object)
        .reflect(writer)
        .touched_objects()
        .filter_map(|zone| ready(zone.ok().map(|z| ObjectRef::from_obj(&z))));
    let jobs = watcher(scoped::<Job>(client, ns), owned).default_backoff().touched_objects();
    // Metadata only: Secrets' data never reaches this watch, and their managedFields are dropped.
    let secrets = watcher(scoped::<PartialObjectMeta<Secret>>(client, ns), watcher::Config::default())
        .modify(crate::controller::slim::object)
        .default_backoff()
        .touched_objects();
    let naming = zones.clone();
    let build = ctx.config.build.clone();
    let users = secrets.flat_map(move |secret| {
        let named = secret.ok().map(|secret| {
            let (ns, name) = (secret.namespace().unwrap_or_default(), secret.name_any());
            naming
                .state()
                .into_iter()
                .filter(|z| z.namespace().as_deref() == Some(ns.as_str()) && decide::names_secret(z, &build, &name))
                .map(|z| ObjectRef::from_obj(z.as_ref()))
                .collect::<Vec<_>>()
        });
        futures::stream::iter(named.unwrap_or_default())
    });
    // Zones whose resolve ended (see [`pinning`]).
    let pinned = ctx.pinning.woken().map(|rx| {
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|key: ObjectKey| ObjectRef::new(key.name()).within(key.namespace()))
    });
    // Its pods: the warm pods it controls, and its Jobs' pods, whose end comes before the Job
    // controller calls the Job complete.
    let stored_pods = ctx.cache.pods.clone();
    let zone_of_pod = move |pod: Pod| controller_of(&pod).or_else(|| zone_of_job_pod(&stored_pods, &pod));
    // A server back in service is awaited by its zone when the zone's rollout waits for a turn.
    let turns = ctx.clone();
    let server_changes = servers.filter_map(move |c| {
        let change = c.ok().and_then(|gs| {
            let zone: ObjectRef<GameZone> = controller_of(&gs)?;
            // The cheap test first: most server changes are not a return to service.
            let awaited = decide::back_in_service(gs.without_template())
                && turns.turns.waits(&ObjectKey::new(zone.namespace.as_deref().unwrap_or_default(), &zone.name));
            Some(Change { obj: zone, awaited })
        });
        ready(change)
    });
    let routine = futures::stream::select_all([
        futures::stream::iter(pinned).flatten().boxed(),
        zone_changes.boxed(),
        services.filter_map(|c| ready(c.ok().and_then(|svc| controller_of(&svc)))).boxed(),
        jobs.filter_map(|c| ready(c.ok().and_then(|job| controller_of(&job)))).boxed(),
        pods.filter_map(move |c| ready(c.ok().and_then(&zone_of_pod))).boxed(),
        users.boxed(),
        // Zones with servers on a node that started or stopped leaving: drains to plan.
        moves.map(|key| ObjectRef::new(key.name()).within(key.namespace())).boxed(),
    ])
    .map(Change::from);
    let changes = futures::stream::select(server_changes, routine);
    // A zone hears of every status change of each of its servers; bursts of them are coalesced.
    super::queue::run(zones, changes, super::queue_settings(&ctx, CONTROLLER), |zone| reconcile(zone, ctx.clone()))
        .await;
}

/// The zones whose rolling update waits for a server's turn (`maxUnavailable` taken), as
/// their last reconcile planned it: a server of theirs back in service lets the next one go,
/// so that change runs the zone at once.
#[derive(Default)]
pub struct Turns(std::sync::Mutex<std::collections::HashSet<ObjectKey>>);

impl Turns {
    /// Records whether `zone`'s rollout waits for a turn.
    pub fn set(&self, zone: ObjectKey, waiting: bool) {
        let mut waits = self.0.lock().expect("turns lock");
        if waiting {
            waits.insert(zone);
        } else {
            waits.remove(&zone);
        }
    }

    /// Whether `zone`'s rollout waits for a turn.
    pub fn waits(&self, zone: &ObjectKey) -> bool {
        self.0.lock().expect("turns lock").contains(zone)
    }
}

/// The zone of a pod one of its Jobs made (the Job's pod template carries the zone's labels),
/// as the shared pod watch holds it.
fn zone_of_job_pod(stored: &reflector::Store<Pod>, pod: &Pod) -> Option<ObjectRef<GameZone>> {
    let _job: ObjectRef<Job> = controller_of(pod)?;
    let stored = stored.get(&ObjectRef::from_obj(pod))?;
    let zone = stored.labels().get(ZONE_LABEL)?;
    Some(ObjectRef::new(zone).within(pod.metadata.namespace.as_deref().unwrap_or_default()))
}

async fn reconcile(zone: Arc<GameZone>, ctx: Arc<Context>) -> Result<Requeue> {
    let ctx = ctx.as_ref();
    let _timer = ctx.metrics.start(CONTROLLER);
    let api: Api<GameZone> = Api::namespaced(ctx.client.clone(), &zone.namespace().unwrap_or_default());
    super::finalized(&api, ZONE_FINALIZER, zone, |event| async move {
        match event {
            Finalizer::Apply(zone) => apply(&zone, ctx).await,
            Finalizer::Cleanup(zone) => cleanup(&zone, ctx).await,
        }
    })
    .await
}

/// Converges the zone and writes its status. Every outcome shows in status: a step that fails
/// sets its condition (and `Ready`) with why and, when it is transient, when it is retried.
async fn apply(zone: &GameZone, ctx: &Context) -> Result<Requeue> {
    let before = ctx.writer.zone_base(zone);
    let mut status = before.clone();
    status.observed_generation = zone.metadata.generation;
    status.phase.get_or_insert(ZonePhase::Pending);
    let outcome = converge(zone, ctx, &mut status).await;
    if let Err((step, e)) = &outcome {
        // A failed resolve is tried again after its backoff, not at the next reconcile.
        let pinned_again = (*step == Step::Pin).then(|| ctx.pinning.retry_in(&ObjectKey::of(zone))).flatten();
        decide::report_failure(&mut status, *step, e, pinned_again.unwrap_or_else(|| requeue_after(e)));
    }
    ctx.metrics.zone_changed(zone, &before, &status);
    if let Some((warning, reason, note)) = decide::transition(&before, &status) {
        ctx.event(zone, warning, &reason, note).await;
    }
    let written = ctx.writer.zone_status(zone, &before, &status).await?;
    let requeue = match outcome {
        Ok(requeue) => requeue,
        // A person must act; the Secret watch or an edit of the zone brings it back sooner.
        Err((_, e)) if e.is_user_error() => Some(requeue_after(&e)),
        Err((_, e)) => return Err(e),
    };
    // A status held back comes out at the next reconcile, due by then.
    Ok(match written {
        StatusWrite::Deferred(within) => Some(within),
        _ => requeue,
    })
}

/// The steps of a zone, in order. Servers move to a new version only once its layers are in
/// the artifact registry (when the operator has one) and its migration succeeded; a server's host ports are held once it exists, and listed in the topology before
/// its pod is made.
async fn converge(zone: &GameZone, ctx: &Context, status: &mut GameZoneStatus) -> StepResult<Requeue> {
    build::validate(zone).at(Step::Check)?;
    build::tenancy::check(zone, &ctx.config.tenancy).at(Step::Check)?;
    steps::check_secrets(zone, ctx).await.at(Step::Check)?;
    let interval = decide::interval(zone, ctx.config.min_artifacts_interval);

    let Some(pins) = steps::pin(zone, ctx, status, interval).await.at(Step::Pin)? else {
        // A resolve wakes the zone when it ends; this is only in case it never does.
        return Ok(Some(ctx.pinning.retry_in(&ObjectKey::of(zone)).unwrap_or(ctx.pinning.deadline)));
    };

    if !steps::pack(zone, ctx, status, &pins).await.at(Step::Pack)? {
        let wait = if status.phase == Some(ZonePhase::Degraded) { 120 } else { 10 };
        return Ok(Some(Duration::from_secs(wait)));
    }
    if !steps::migrate(zone, ctx, status, &pins).await.at(Step::Migrate)? {
        let wait = if status.phase == Some(ZonePhase::Degraded) { 120 } else { 10 };
        return Ok(Some(Duration::from_secs(wait)));
    }

    let live = Live::of(zone, ctx);
    let by_name = live.servers_by_name();
    let tree = status.tree_image.clone();
    let mut wanted = build::game_servers(zone, &pins, tree.as_ref(), &ctx.config.build).at(Step::Serve)?;
    // Servers whose node mounted the tree image wrong copy it instead.
    let copied: Vec<(String, String)> = by_name
        .iter()
        .filter_map(|(name, gs)| Some((name.clone(), gs.status.as_ref()?.tree_copied.clone()?)))
        .collect();
    let copies = |name: &str| copied.iter().any(|(n, _)| n == name);
    build::copy_tree_for(zone, &pins, &ctx.config.build, &mut wanted, copies).at(Step::Serve)?;
    decide::report_tree_mounts(status, build::mounts_tree_image(zone, tree.as_ref(), &ctx.config.build), &copied);
    if !steps::prewarm(zone, ctx, status, &pins, &by_name).await.at(Step::Serve)? {
        return Ok(Some(Duration::from_secs(5)));
    }
    steps::apply_sidecar_identity(zone, ctx).await.at(Step::Serve)?;
    steps::apply_disruption_budget(zone, ctx).await.at(Step::Serve)?;
    let (made, applied) = steps::apply_servers(zone, ctx, &wanted, &live).await;
    let ports = steps::hold_ports(ctx, &wanted, &by_name, &made);
    steps::publish_topology(zone, ctx, ports).await.at(Step::Serve)?;
    let draining = applied.at(Step::Serve)?;
    steps::apply_services(zone, ctx, &live).await.at(Step::Serve)?;
    steps::apply_edits(zone, ctx, status, &live).await.at(Step::Serve)?;

    let readiness = decide::readiness(&wanted, &by_name);
    decide::report_servers(status, &readiness, &draining);
    status.endpoints = decide::endpoints(&live.services);
    let all_ready = readiness.ready == readiness.desired && draining.is_empty();
    let next = match (all_ready, draining.is_empty()) {
        (true, _) => interval.unwrap_or(Duration::from_secs(600)),
        // A drain's timeout passes without any event.
        (false, false) => Duration::from_secs(5),
        (false, true) => Duration::from_secs(30),
    };
    // The edits share's state is read, not watched.
    let next = if zone.spec.edits.is_some() { next.min(EDITS_REFRESH) } else { next };
    Ok(Some(next))
}

/// Removes everything the zone made, even objects whose owner reference was lost. While it
/// waits, the zone's phase is Terminating and `Ready` says for what.
async fn cleanup(zone: &GameZone, ctx: &Context) -> Result<Requeue> {
    ctx.turns.set(ObjectKey::of(zone), false);
    let before = ctx.writer.zone_base(zone);
    let mut status = before.clone();
    let result = remove_children(zone, ctx).await;
    if let Err(Error::Waiting(what)) = &result {
        decide::report_terminating(&mut status, what);
        if let Some((warning, reason, note)) = decide::transition(&before, &status) {
            ctx.event(zone, warning, &reason, note).await;
        }
        ctx.writer.zone_status(zone, &before, &status).await?;
    }
    result
}

/// The work of [`cleanup`]: `Err(Error::Waiting)` while servers are still terminating. Only what
/// the zone controls goes: an object that merely carries its labels is left alone.
async fn remove_children(zone: &GameZone, ctx: &Context) -> Result<Requeue> {
    let ns = zone.namespace().unwrap_or_default();
    let lp = ListParams::default().labels(&build::zone_selector(&zone.name_any()));
    let client = ctx.client.clone();
    let zones = |m: &ObjectMeta| controlled_by(m, &zone.metadata);
    // A pod is controlled by its GameServer, and that by the zone.
    let servers_pod = |m: &ObjectMeta| {
        m.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.kind == GameServer::kind(&()))
    };
    // Once every server the watch shows is terminating, their finalizers finish the work, and
    // each server's deletion wakes the zone again: wait without asking the API server. With
    // hundreds of zones deleted at once, redoing every deletion and list on each wake was most
    // of the teardown's load. The last pass below still checks.
    let servers = steps::Live::of(zone, ctx).servers;
    // Players are not kicked by deleting the zone: every server is drained first, for at most
    // the deletion's drain limit, so a gate no one opens cannot keep the zone for ever.
    let draining = drain_all(zone, ctx, &servers).await?;
    if !draining.is_empty() {
        let limit = ctx.config.deletion_drain_limit;
        let deleted_at = zone.metadata.deletion_timestamp.as_ref().map_or_else(Timestamp::now, |t| t.0);
        match decide::drain_limit_left(deleted_at, limit, Timestamp::now()) {
            Some(left) => {
                return Err(Error::Waiting(format!(
                    "{} GameServer(s) to drain: {}; any still draining in {}s go then anyway (--deletion-drain-limit {}s)",
                    draining.len(),
                    draining.join("; "),
                    left.as_secs(),
                    limit.as_secs()
                )));
            }
            None => {
                for gs in servers.iter().filter(|g| g.metadata.deletion_timestamp.is_none()) {
                    ctx.writer.delete::<GameServer>(&ns, &gs.name_any()).await?;
                }
                let note = format!(
                    "deleted {} server(s) still draining {}s after the zone's deletion (--deletion-drain-limit)",
                    draining.len(),
                    limit.as_secs()
                );
                ctx.event(zone, true, "DrainLimitReached", note).await;
            }
        }
    }
    if !servers.is_empty() && servers.iter().all(|g| g.metadata.deletion_timestamp.is_some()) {
        // Their pods go now, in one request, not one by one behind the garbage collector (a
        // controller manager's default client limit, 20 requests/s, held 2000 pods for two
        // minutes). No server is left to make a new one: all are terminating.
        let running = |g: &Arc<GameServer>| {
            let pod = ctx.cache.pods.get(&ObjectRef::new(&g.name_any()).within(&ns));
            pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none())
        };
        if servers.iter().any(running) {
            ctx.writer.delete_all_owned::<Pod>(&ns, &lp, servers_pod).await?;
        }
        return Err(Error::Waiting(terminating(&servers)));
    }
    let writer = &ctx.writer;
    writer.delete_all_owned::<GameServer>(&ns, &lp, zones).await?;
    writer.delete_all_owned::<Job>(&ns, &lp, zones).await?;
    writer.delete_all_owned::<ConfigMap>(&ns, &lp, zones).await?;
    writer.delete_all_owned::<PersistentVolumeClaim>(&ns, &lp, zones).await?;
    writer.delete_all_owned::<PodDisruptionBudget>(&ns, &lp, zones).await?;
    if zone.spec.edits.is_some() || zone.status.as_ref().is_some_and(|s| s.edits.is_some()) {
        writer.delete_all_owned::<k8s_openapi::api::apps::v1::Deployment>(&ns, &lp, zones).await?;
    }
    if build::sidecar_identity_if_needed(zone).is_some() {
        writer.delete_all_owned::<ServiceAccount>(&ns, &lp, zones).await?;
        writer.delete_all_owned::<Role>(&ns, &lp, zones).await?;
        writer.delete_all_owned::<RoleBinding>(&ns, &lp, zones).await?;
    }
    // Services have no delete-collection endpoint.
    let svc: Api<Service> = Api::namespaced(client.clone(), &ns);
    for s in svc.list_metadata(&lp).await?.items.into_iter().filter(|s| zones(&s.metadata)) {
        writer.delete::<Service>(&ns, &s.name_any()).await?;
    }
    let gs: Api<GameServer> = Api::namespaced(client.clone(), &ns);
    let left: Vec<Arc<GameServer>> =
        gs.list(&lp).await?.items.into_iter().filter(|g| zones(&g.metadata)).map(Arc::new).collect();
    if !left.is_empty() {
        tracing::info!(zone = %ObjectKey::of(zone), left = left.len(), "waiting for servers to go before releasing the zone");
        return Err(Error::Waiting(terminating(&left)));
    }
    // Pods whose servers went before their deletion was seen here, and warm pods.
    writer.delete_all_owned::<Pod>(&ns, &lp, servers_pod).await?;
    writer.delete_all_owned::<Pod>(&ns, &lp, zones).await?;
    forget(zone, ctx);
    ctx.event(zone, false, "Deleted", "every object of the zone was removed".into()).await;
    Ok(None)
}

/// Drains every server of a deleted zone as a scale-down would, deleting those that may go;
/// returns what the others wait for.
async fn drain_all(zone: &GameZone, ctx: &Context, servers: &[Arc<GameServer>]) -> Result<Vec<String>> {
    let live: BTreeMap<String, &GameServer> = servers.iter().map(|g| (g.name_any(), g.as_ref())).collect();
    let plan = decide::plan_servers(&[], &live, &BTreeMap::new(), &BTreeMap::new(), Timestamp::now(), |gs, hash| {
        ctx.writer.applied_recently(gs, hash, super::writer::WATCH_LAG)
    });
    for (gs, hash) in plan.apply {
        ctx.writer.apply_as(&gs, hash).await?;
    }
    let ns = zone.namespace().unwrap_or_default();
    // Only while others still drain: otherwise the collection delete below takes them all at once.
    if !plan.draining.is_empty() || !plan.drains.is_empty() {
        for name in &plan.delete {
            ctx.writer.delete::<GameServer>(&ns, name).await?;
        }
    }
    let mut waiting = plan.draining;
    waiting.extend(plan.drains.into_iter().map(|n| format!("{n}: drain started")));
    Ok(waiting)
}

/// Forgets what was applied and listed for the zone, and hands back ports held for servers that
/// never came to be, or this process's memory would grow with every zone ever deleted.
fn forget(zone: &GameZone, ctx: &Context) {
    ctx.writer.forget_zone(zone);
    ctx.pinning.forget(&ObjectKey::of(zone));
    // The names do not depend on the revisions.
    let Ok(children) = build::children(zone, &[], None, &ctx.config.build) else { return };
    for svc in &children.services {
        ctx.writer.forget_child(svc);
    }
    ctx.writer.forget_child(&children.topology);
    ctx.writer.forget_child(&children.disruption_budget);
    // Whether or not a type still runs the sidecar: an earlier version of the zone may have.
    let (sa, role, binding) = build::sidecar_identity(zone);
    ctx.writer.forget_child(&sa);
    ctx.writer.forget_child(&role);
    ctx.writer.forget_child(&binding);
    if let Some(claim) = &children.artifacts_claim {
        ctx.writer.forget_child(claim);
    }
    for gs in &children.servers {
        ctx.writer.forget_child(gs);
        ctx.ports.forget(&ObjectKey::of(gs), &ctx.metrics);
    }
}

/// What a deletion waits for.
fn terminating(servers: &[Arc<GameServer>]) -> String {
    format!("{} GameServer(s) to terminate: {}", servers.len(), decide::some_names(servers))
}
