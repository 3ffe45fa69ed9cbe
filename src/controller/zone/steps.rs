//! The steps of a zone's reconcile that talk to the API server or to artifact sources. What
//! each one decides is in [`super::decide`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gamezone_init::creds::MapCredentials;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::runtime::reflector::ObjectRef;

use super::decide::{self, JobOutcome, VersionJob};
use super::pinning::Pin;
use crate::api::*;
use crate::conditions::{self, types};
use crate::controller::Context;
use crate::controller::key::ObjectKey;
use crate::controller::ownership::controlled_by;
use crate::controller::server::{SERVER_FINALIZER, ensure_ports};
use crate::controller::writer::{WATCH_LAG, check_owner};
use crate::ports::spec::status_of;
use crate::zone::{self as build, hash_of};
use crate::{Error, Result};

/// How long a written topology ConfigMap is trusted to still be there: nothing watches
/// ConfigMaps here, so one deleted by hand comes back within this time.
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(300);
/// How long an applied child that follows the zone's spec only (the SDK identity, the
/// PodDisruptionBudget) is trusted: like the topology, nothing watches them, so one deleted by
/// hand comes back within this time.
const UNWATCHED_REFRESH: Duration = Duration::from_secs(300);

/// How long the edits share's status may take to answer.
const EDITS_ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// What the shared watches show of a zone's children.
pub struct Live {
    /// Its GameServers.
    pub servers: Vec<Arc<GameServer>>,
    /// Its Services.
    pub services: Vec<Arc<Service>>,
}

impl Live {
    /// The zone's servers and Services, read from the shared stores through the zone index:
    /// those it controls. An object that only carries its labels is someone else's, and is
    /// neither counted, changed nor deleted.
    pub fn of(zone: &GameZone, ctx: &Context) -> Self {
        let key = ObjectKey::of(zone);
        let cache = &ctx.cache;
        let mut servers = cache.servers_of(&key);
        servers.retain(|g| controlled_by(&g.metadata, &zone.metadata));
        let mut services = cache.services_by_zone.of(&cache.services, &key);
        services.retain(|s| controlled_by(&s.metadata, &zone.metadata));
        Live { servers, services }
    }

    /// The servers by name.
    pub fn servers_by_name(&self) -> BTreeMap<String, &GameServer> {
        self.servers.iter().map(|g| (g.name_any(), g.as_ref())).collect()
    }
}

/// Fails with the field naming any Secret or key the zone refers to that does not exist.
/// Secrets are read, not cached: their data would sit in this process's memory, and only their
/// metadata is watched, to hear of a fix at once.
pub async fn check_secrets(zone: &GameZone, ctx: &Context) -> Result<()> {
    let ns = zone.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let uses = decide::secrets_used(zone, &ctx.config.build);
    let mut found = BTreeMap::new();
    for name in uses.iter().map(|u| u.name.as_str()).collect::<BTreeSet<_>>() {
        if let Some(secret) = api.get_opt(name).await? {
            found.insert(name.to_string(), secret);
        }
    }
    Ok(decide::check_secrets(&ns, &uses, |name| found.get(name))?)
}

/// Resolves moving references when the artifacts changed or the interval passed; returns the
/// pins, or `None` while the zone has none yet (a resolve is under way, or waits to be tried
/// again). When a re-resolve of unchanged artifacts fails, the last good pins stay and
/// `ArtifactsReady` says why. Resolving runs off the reconcile (see [`super::pinning`]).
pub async fn pin(
    zone: &GameZone,
    ctx: &Context,
    status: &mut GameZoneStatus,
    interval: Option<Duration>,
) -> Result<Option<Vec<String>>> {
    let generation = status.observed_generation;
    let Some(mount) = build::artifacts_mount(zone)? else {
        status.artifacts.clear();
        status.artifacts_hash = None;
        status.artifact_revision = None;
        status.artifacts_resolved_at = None;
        let msg = "the zone has no artifacts";
        conditions::set(&mut status.conditions, types::ARTIFACTS_READY, true, "NoArtifacts", msg, generation);
        return Ok(Some(Vec::new()));
    };
    let spec_hash = hash_of(&zone.spec.artifacts);
    let same_spec = status.artifacts_hash.as_deref() == Some(spec_hash.as_str());
    let key = ObjectKey::of(zone);
    if decide::resolve_due(status, &spec_hash, interval, Timestamp::now()) {
        if !same_spec {
            status.phase = Some(ZonePhase::Resolving);
        }
        let pinning = &ctx.pinning;
        let outcome = match pinning.poll(&key, &spec_hash) {
            Pin::Done(outcome) => outcome,
            waiting => {
                if matches!(waiting, Pin::Start) {
                    pinning.start(&key, &spec_hash, resolver(zone, ctx, &mount.layers).await?);
                }
                if same_spec {
                    // The last good pins serve meanwhile.
                    return Ok(Some(decide::pins_of(status)));
                }
                // A failure waiting for its retry is in status already, from the reconcile that took it.
                if !matches!(waiting, Pin::Backoff(_)) {
                    let msg = format!(
                        "resolving {} layer(s) from their sources (giving up after {}s)",
                        mount.layers.len(),
                        pinning.deadline.as_secs()
                    );
                    conditions::set(
                        &mut status.conditions,
                        types::ARTIFACTS_READY,
                        false,
                        "Resolving",
                        msg,
                        generation,
                    );
                }
                return Ok(None);
            }
        };
        match outcome {
            Ok(revisions) => {
                let changed = !same_spec
                    || status.artifacts.iter().map(|a| &a.revision).ne(revisions.iter().map(|r| &r.revision));
                // A pin that stays keeps what its pack recorded.
                let packed = |r: &gamezone_init::resolve::Revision| {
                    let old = status.artifacts.iter().find(|a| a.layer == r.layer as i32 && a.revision == r.revision);
                    old.and_then(|a| a.packed.clone())
                };
                status.artifacts = revisions
                    .into_iter()
                    .map(|r| ArtifactStatus {
                        layer: r.layer as i32,
                        packed: packed(&r),
                        source: r.source,
                        revision: r.revision,
                    })
                    .collect();
                status.artifacts_hash = Some(spec_hash);
                status.artifacts_resolved_at = Some(Time(Timestamp::now()));
                if changed {
                    // The new pins' tree is another image; their pack records it.
                    status.tree_image = None;
                    let list: Vec<String> = status
                        .artifacts
                        .iter()
                        .map(|a| format!("{} @ {}", a.source, decide::short(&a.revision)))
                        .collect();
                    ctx.event(zone, false, "ArtifactsPinned", list.join("; ")).await;
                }
            }
            Err(e) if !same_spec => return Err(e.into()),
            Err(e) => {
                // Keep serving the last good pins; say why they are not fresh.
                let e = Error::from(e);
                let reason = decide::failure_reason(&e);
                let again = pinning.retry_in(&key).unwrap_or_default().as_secs().max(1);
                let msg = format!("{e}; keeping the revisions pinned before, and trying again in {again}s");
                conditions::set(&mut status.conditions, types::ARTIFACTS_READY, false, reason, msg, generation);
                return Ok(Some(decide::pins_of(status)));
            }
        }
    }
    let pins = decide::pins_of(status);
    status.artifact_revision = Some(decide::artifact_revision(&pins));
    let msg = format!("{} layer(s) pinned", pins.len());
    conditions::set(&mut status.conditions, types::ARTIFACTS_READY, true, "Pinned", msg, generation);
    Ok(Some(pins))
}

/// The resolve of every layer the operator can reach, to run off the reconcile: the layers'
/// Secrets are read now. Local folders live on the nodes, so they are left for the
/// init-container to resolve (an empty pin).
async fn resolver(
    zone: &GameZone,
    ctx: &Context,
    layers: &[crate::api::layer::Layer],
) -> Result<impl std::future::Future<Output = super::pinning::Resolved> + Send + 'static> {
    let ns = zone.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut creds = MapCredentials::new();
    for name in build::secret_names(layers) {
        if let Some(secret) = secrets.get_opt(&name).await? {
            for (k, v) in secret.data.unwrap_or_default() {
                creds.insert(&name, &k, v.0);
            }
        }
    }
    let layers = layers.to_vec();
    let options = ctx.config.fetch.clone();
    Ok(async move {
        let remote: Vec<(usize, crate::api::layer::Layer)> =
            layers.iter().enumerate().filter(|(_, l)| l.local.is_none()).map(|(i, l)| (i, l.clone())).collect();
        let only: Vec<crate::api::layer::Layer> = remote.iter().map(|(_, l)| l.clone()).collect();
        let resolved = gamezone_init::resolve::resolve_opts(&only, &creds, &options).await?;
        let mut out: Vec<gamezone_init::resolve::Revision> = layers
            .iter()
            .enumerate()
            .map(|(i, l)| gamezone_init::resolve::Revision { layer: i, source: l.describe(), revision: String::new() })
            .collect();
        for ((index, _), mut rev) in remote.into_iter().zip(resolved) {
            rev.layer = index;
            out[index] = rev;
        }
        Ok(out)
    })
}

/// Runs the migration for the current inputs; true when servers may move to this version.
/// The Job is read with a GET while it runs rather than from a store: it is one object per zone
/// version, read only until it ends, and its changes wake the zone through `owns`.
pub async fn migrate(zone: &GameZone, ctx: &Context, status: &mut GameZoneStatus, pins: &[String]) -> Result<bool> {
    let Some(job) = build::migration_job(zone, pins, status.tree_image.as_ref(), &ctx.config.build)? else {
        status.migration = None;
        let msg = "the zone has no migration";
        conditions::set(&mut status.conditions, types::MIGRATED, true, "NoMigration", msg, status.observed_generation);
        return Ok(true);
    };
    Ok(version_job(zone, ctx, status, VersionJob::Migration, job).await?.0)
}

/// With an artifact registry, packs the layers' pins into it (a Job, once per set of pins);
/// true once they are there, so pods copy them from the registry.
pub async fn pack(zone: &GameZone, ctx: &Context, status: &mut GameZoneStatus, pins: &[String]) -> Result<bool> {
    let Some(job) = build::pack_job(zone, pins, &ctx.config.build)? else {
        status.pack = None;
        status.conditions.retain(|c| c.type_ != types::ARTIFACTS_PACKED);
        return Ok(true);
    };
    let job_name = job.name_any();
    let (packed, listed) = version_job(zone, ctx, status, VersionJob::Pack, job).await?;
    if packed && (status.tree_image.is_none() || status.artifacts.iter().any(|a| a.packed.is_none())) {
        // What the pack recorded of each layer and of the tree: its termination message.
        let pods = match listed {
            Some(pods) => pods,
            None => job_pods(zone, ctx, &job_name).await?,
        };
        decide::record_packed(status, &pods);
    }
    Ok(packed)
}

/// How long a pre-warm may hold a rollout: a node that has not pulled the tree by then pulls it
/// when its servers' pods start.
const PREWARM_LIMIT: Duration = Duration::from_secs(300);

/// Before servers move to a new tree image, has each node that runs them pull it (a warm pod
/// per node) so the new pods start on a warm node; true once the rollout may go on. The warm
/// pods of older trees go when a new pre-warm starts; those of this one stay as its record.
pub async fn prewarm(
    zone: &GameZone,
    ctx: &Context,
    status: &mut GameZoneStatus,
    pins: &[String],
    live: &BTreeMap<String, &GameServer>,
) -> Result<bool> {
    let cfg = &ctx.config.build;
    let Some(tree) = status.tree_image.clone().filter(|t| build::mounts_tree_image(zone, Some(t), cfg)) else {
        return Ok(true);
    };
    let nodes = decide::nodes_to_warm(live, &tree);
    if nodes.iter().all(|n| tree.warm_nodes.contains(n)) {
        return Ok(true);
    }
    let ns = zone.namespace().unwrap_or_default();
    let selector = build::zone_selector(&zone.name_any());
    let this = format!("{selector},{}={}", build::WARM_LABEL, hash_of(&tree.image));
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let mine = |p: &Pod| controlled_by(&p.metadata, &zone.metadata);
    let warm_pods: Vec<Pod> =
        pods.list(&ListParams::default().labels(&this)).await?.items.into_iter().filter(mine).collect();
    let p = decide::prewarm(&nodes, &warm_pods, Timestamp::now(), PREWARM_LIMIT);
    if !p.create.is_empty() {
        let older = format!("{selector},{},{}!={}", build::WARM_LABEL, build::WARM_LABEL, hash_of(&tree.image));
        let zones = |m: &kube::api::ObjectMeta| controlled_by(m, &zone.metadata);
        ctx.writer.delete_all_owned::<Pod>(&ns, &ListParams::default().labels(&older), zones).await?;
    }
    for node in &p.create {
        if let Some(pod) = build::warm_pod(zone, pins, &tree, cfg, node)? {
            ctx.writer.create_once(&pod).await?;
        }
    }
    for (node, why) in &p.failed {
        tracing::warn!(zone = %ObjectKey::of(zone), node = %node, why = %why, "pre-warm failed on a node; its servers pull when they start");
    }
    if let Some(t) = status.tree_image.as_mut() {
        t.warm_nodes = p.warm.clone();
    }
    decide::report_prewarm(status, &p);
    Ok(p.done)
}

/// The pods of one of the zone's Jobs.
async fn job_pods(zone: &GameZone, ctx: &Context, job_name: &str) -> Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &zone.namespace().unwrap_or_default());
    Ok(pods.list(&ListParams::default().labels(&format!("job-name={job_name}"))).await?.items)
}

/// Runs a Job the version waits for (made once, never taken from another owner), reports its
/// outcome and, once it succeeded, deletes the zone's older Jobs of its kind. Returns whether
/// it succeeded, with the Job's pods when it listed them on the way.
async fn version_job(
    zone: &GameZone,
    ctx: &Context,
    status: &mut GameZoneStatus,
    kind: VersionJob,
    job: Job,
) -> Result<(bool, Option<Vec<Pod>>)> {
    let job_name = job.name_any();
    // The builders label the Job with its inputs hash.
    let hash = job.labels().get(&kind.label()).cloned().unwrap_or_default();
    let hash = hash.as_str();
    if kind.succeeded_hash(status) == Some(hash) {
        return Ok((decide::report_job(kind, status, &job_name, hash, &JobOutcome::Succeeded), None));
    }
    let ns = zone.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    // A Job of that name that is not this zone's is neither read as its own nor touched.
    let live = match jobs.get_opt(&job_name).await? {
        Some(j) => check_owner(&j.metadata, &job).map(|_| j)?,
        None => ctx.writer.create_once(&job).await?,
    };
    let mut outcome = decide::job_outcome(&live);
    let mut listed = None;
    match &mut outcome {
        JobOutcome::Failed(why) => {
            // The Job's own words, from its last failed pod (its termination message, or the
            // tail of its log: the Job's container falls back to it).
            let (container, who) = kind.container();
            if let Some(said) = decide::job_said(&job_pods(zone, ctx, &job_name).await?, container) {
                *why = format!("{why}; {who} said: {said}");
            }
        }
        // Done once its pod's container ended well; a pod no node takes, or whose image cannot
        // be pulled, would leave the zone waiting without a word: say what holds it.
        JobOutcome::Running(_) => {
            let pods = job_pods(zone, ctx, &job_name).await?;
            outcome = decide::running_job(&pods, kind.container().0);
            listed = Some(pods);
        }
        JobOutcome::Succeeded => {}
    }
    if outcome == JobOutcome::Succeeded {
        // Older Jobs of the kind have served their purpose.
        let old = ListParams::default().labels(&format!(
            "{},{}!={hash}",
            build::zone_selector(&zone.name_any()),
            kind.label()
        ));
        ctx.writer.delete_all_owned::<Job>(&ns, &old, |m| controlled_by(m, &zone.metadata)).await?;
    }
    Ok((decide::report_job(kind, status, &job_name, hash, &outcome), listed))
}

/// Holds the host ports of each wanted server that exists (in `live`, or `made` just now) and
/// returns them by server name. A server whose ports cannot be held is left out: it reports
/// why, and the topology lists it without ports until it has them. None are held for a server
/// the API server would not make (a quota, a refusal), so it keeps no one else from a port.
pub fn hold_ports(
    ctx: &Context,
    wanted: &[GameServer],
    live: &BTreeMap<String, &GameServer>,
    made: &BTreeSet<String>,
) -> BTreeMap<String, Vec<PortStatus>> {
    let mut ports = BTreeMap::new();
    for gs in wanted.iter().filter(|g| live.contains_key(&g.name_any()) || made.contains(&g.name_any())) {
        match ensure_ports(ctx, gs) {
            // Ports the platform assigns are known once the pod exists: take them from status.
            Ok((_, deferred)) if !deferred.is_empty() => {
                let reported = live.get(&gs.name_any()).and_then(|g| g.status.as_ref()).map(|s| s.ports.clone());
                ports.insert(gs.name_any(), reported.unwrap_or_default());
            }
            Ok((allocations, _)) => {
                ports.insert(gs.name_any(), status_of(&allocations));
            }
            Err(_) => {}
        }
    }
    ports
}

/// Writes the topology listing `ports`, and remembers what it lists: a server's pod starts only
/// once its ports are listed.
pub async fn publish_topology(zone: &GameZone, ctx: &Context, ports: BTreeMap<String, Vec<PortStatus>>) -> Result<()> {
    let topology = build::topology(zone, &ports);
    ctx.writer.create_child(&topology, TOPOLOGY_REFRESH).await?;
    let ns = zone.namespace().unwrap_or_default();
    ctx.ports.list(ports.into_iter().map(|(server, p)| (ObjectKey::new(&ns, server), p)));
    Ok(())
}

/// Applies the servers the plan says (new, changed, drained, updated), deletes the drained ones
/// that may go, and returns the names of those it made, with what the draining ones wait for
/// (or why a server could not be written: those it made then still need their ports listed).
pub async fn apply_servers(
    zone: &GameZone,
    ctx: &Context,
    wanted: &[GameServer],
    live: &Live,
) -> (BTreeSet<String>, Result<Vec<String>>) {
    let mut made = BTreeSet::new();
    let draining = apply_planned(zone, ctx, wanted, live, &mut made).await;
    (made, draining)
}

/// The nodes of `servers` that are leaving (cordoned, being removed by an autoscaler, or not
/// Ready past `--node-not-ready-grace`), with why, as the node watch shows them.
fn leaving_nodes(ctx: &Context, servers: &BTreeMap<String, &GameServer>) -> BTreeMap<String, String> {
    let on: BTreeSet<&String> = servers.values().filter_map(|gs| gs.status.as_ref()?.node_name.as_ref()).collect();
    let (now, grace) = (Timestamp::now(), ctx.config.node_not_ready_grace);
    on.into_iter()
        .filter_map(|n| {
            let node = ctx.cache.nodes.get(&ObjectRef::new(n))?;
            Some((n.clone(), crate::placement::leaving(&node, now, grace)?))
        })
        .collect()
}

async fn apply_planned(
    zone: &GameZone,
    ctx: &Context,
    wanted: &[GameServer],
    live: &Live,
    made: &mut BTreeSet<String>,
) -> Result<Vec<String>> {
    let by_name = live.servers_by_name();
    let strategies =
        zone.spec.services.iter().map(|s| (s.type_.clone(), s.update_strategy.clone().unwrap_or_default())).collect();
    let leaving = leaving_nodes(ctx, &by_name);
    let plan = decide::plan_servers(wanted, &by_name, &strategies, &leaving, Timestamp::now(), |gs, hash| {
        ctx.writer.applied_recently(gs, hash, WATCH_LAG)
    });
    ctx.turns.set(ObjectKey::of(zone), plan.waiting_turns);
    let results = futures::stream::iter(plan.apply)
        .map(|(mut gs, hash)| {
            // The server controller's finalizer comes with the object: one write, not two.
            gs.metadata.finalizers = Some(vec![SERVER_FINALIZER.to_string()]);
            let new = !by_name.contains_key(&gs.name_any());
            async move {
                let result = if new {
                    ctx.writer.create_as(&gs, hash).await
                } else {
                    ctx.writer.apply_as(&gs, hash).await.map(|_| ())
                };
                (gs.name_any(), new, result)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut first_error = None;
    for (name, new, result) in results {
        match result {
            Ok(()) if new => {
                made.insert(name);
            }
            Ok(()) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    for name in &plan.drains {
        let gates = by_name.get(name).map(|g| g.spec.lifecycle.deletable_gates.join(", ")).unwrap_or_default();
        ctx.event(
            zone,
            false,
            "Draining",
            format!("{name} is NotInService; it goes once its deletable gates ({gates}) are True"),
        )
        .await;
    }
    let ns = zone.namespace().unwrap_or_default();
    for name in &plan.delete {
        ctx.writer.delete::<GameServer>(&ns, name).await?;
        ctx.event(zone, false, "ServerRemoved", format!("removed {name} (no longer in spec.services)")).await;
    }
    Ok(plan.draining)
}

/// Applies the zone's Services and its shared artifacts claim, and deletes Services no longer
/// wanted.
pub async fn apply_services(zone: &GameZone, ctx: &Context, live: &Live) -> Result<()> {
    let services = build::services(zone);
    let live_names: BTreeSet<String> = live.services.iter().map(|s| s.name_any()).collect();
    for svc in &services {
        // A Service the watch shows controlled by the zone is re-applied only when its content changes.
        if live_names.contains(&svc.name_any()) {
            ctx.writer.apply_own_child(svc, Duration::MAX).await?;
        } else {
            ctx.writer.create_child(svc, WATCH_LAG).await?;
        }
    }
    let wanted: BTreeSet<String> = services.iter().map(|s| s.name_any()).collect();
    let ns = zone.namespace().unwrap_or_default();
    for svc in decide::to_delete(&wanted, &live.services) {
        ctx.writer.delete::<Service>(&ns, &svc.name_any()).await?;
    }
    if let Some(claim) = build::artifacts_claim(zone) {
        ctx.writer.apply_child(&claim, TOPOLOGY_REFRESH).await?;
    }
    Ok(())
}

/// The edits share: its claim and Samba Deployment while the zone has edits, and what the
/// share reports in `status.edits` (an Event per batch the servers applied, a warning per
/// refused edit); without edits, the Deployment and the claim (unless kept) go. Its Services
/// come and go with the zone's others.
pub async fn apply_edits(zone: &GameZone, ctx: &Context, status: &mut GameZoneStatus, live: &Live) -> Result<()> {
    let ns = zone.namespace().unwrap_or_default();
    let name = build::edits_name(&zone.name_any());
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let (Some(deployment), Some(claim)) = (build::edits_deployment(zone, &ctx.config.build), build::edits_claim(zone))
    else {
        // Only a zone that had edits has anything to remove: no requests for the others.
        if status.edits.take().is_none() {
            return Ok(());
        }
        ctx.writer.delete_if_owned::<k8s_openapi::api::apps::v1::Deployment>(&ns, &name, &zone.metadata).await?;
        // A kept claim has no controller: it is the user's.
        ctx.writer.delete_if_owned::<PersistentVolumeClaim>(&ns, &name, &zone.metadata).await?;
        return Ok(());
    };
    ctx.writer.apply_child(&claim, TOPOLOGY_REFRESH).await?;
    ctx.writer.apply_child(&deployment, TOPOLOGY_REFRESH).await?;
    let before = status.edits.clone().unwrap_or_default();
    let share = build::share_path(zone);
    let servers: BTreeSet<String> = live.servers.iter().map(|g| g.name_any()).collect();
    // Asked only once its pod is Ready: the client retries a 503 (no endpoint) with backoff,
    // which would hold the reconcile.
    let ready =
        deployments.get_opt(&name).await?.and_then(|d| d.status).and_then(|s| s.ready_replicas).is_some_and(|n| n > 0);
    let report = if ready {
        let ask = async { crate::edits_api::client::EditsApi::of(ctx.client.clone(), zone).await?.status().await };
        match tokio::time::timeout(EDITS_ASK_TIMEOUT, ask).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {}s", EDITS_ASK_TIMEOUT.as_secs())),
        }
    } else {
        Err(format!("its pod (Deployment {name}) is not Ready"))
    };
    let now = match report {
        Ok(r) => crate::edits_api::summarize(share, &r, &servers),
        // The share's pod may still be starting: keep the last figures and say why.
        Err(e) => ZoneEditsStatus {
            share,
            message: Some(format!("cannot read the edits share's status yet: {e}")),
            ..before.clone()
        },
    };
    if now.last_applied.is_some() && now.last_applied != before.last_applied {
        let note = format!(
            "{} path(s) differ from the pinned tree; {} of {} server(s) on the share's edits",
            now.changed,
            now.applied_servers,
            servers.len()
        );
        ctx.event(zone, false, "EditsApplied", note).await;
    }
    if let Some(r) = &now.last_refused
        && before.last_refused.as_ref() != Some(r)
    {
        ctx.event(
            zone,
            true,
            "EditRefused",
            format!("{}: {}; the servers keep their last good tree", r.path, r.reason),
        )
        .await;
    }
    status.edits = Some(now);
    Ok(())
}

/// The SDK sidecar's identity (ServiceAccount, Role, RoleBinding), before any pod that runs the
/// sidecar, when a service type of the zone uses it. Owned by the zone: they go with it.
pub async fn apply_sidecar_identity(zone: &GameZone, ctx: &Context) -> Result<()> {
    let Some((sa, role, binding)) = build::sidecar_identity_if_needed(zone) else { return Ok(()) };
    ctx.writer.apply_child(&sa, UNWATCHED_REFRESH).await?;
    ctx.writer.apply_child(&role, UNWATCHED_REFRESH).await?;
    ctx.writer.apply_child(&binding, UNWATCHED_REFRESH).await
}

/// The zone's PodDisruptionBudget, before any server's pod: the cluster's evictions of pods that
/// may hold players are refused from the first one.
pub async fn apply_disruption_budget(zone: &GameZone, ctx: &Context) -> Result<()> {
    ctx.writer.apply_child(&build::disruption_budget(zone), UNWATCHED_REFRESH).await
}

/// The result of a step, with the step that failed.
pub type StepResult<T> = std::result::Result<T, (decide::Step, Error)>;

/// Tags a step's error with the step.
pub trait At<T> {
    /// This result, its error tagged with `step`.
    fn at(self, step: decide::Step) -> StepResult<T>;
}

impl<T> At<T> for Result<T> {
    fn at(self, step: decide::Step) -> StepResult<T> {
        self.map_err(|e| (step, e))
    }
}

impl<T> At<T> for gamezone_core::Result<T> {
    fn at(self, step: decide::Step) -> StepResult<T> {
        self.map_err(|e| (step, e.into()))
    }
}
