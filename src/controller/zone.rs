//! The zone controller: GameZone → pinned artifacts → migration Job → GameServers, Services,
//! topology ConfigMap → status.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use gamezone_init::creds::MapCredentials;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;

use super::conditions::{self, types};
use super::ports::{key_of, server_key, status_of};
use super::server::SERVER_FINALIZER;
use super::written::WATCH_LAG;
use super::{
    Context, Triggers, ZONE_FINALIZER, applied_key, apply, apply_status, delete_if_present, key, requeue_after, scoped,
};
use crate::api::*;
use crate::zone::{self as build, hash_of};
use crate::{Error, Result};

const CONTROLLER: &str = "zone";

/// Runs the zone controller until shutdown, hearing of its servers and Services from the shared
/// watches.
pub async fn run(ctx: Arc<Context>, servers: Triggers<GameServer>, services: Triggers<Service>) {
    let ns = &ctx.config.namespace;
    let client = &ctx.client;
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    Controller::new(scoped::<GameZone>(client, ns), watcher::Config::default())
        .owns_stream(servers)
        .owns_stream(services)
        .owns(scoped::<Job>(client, ns), owned)
        // A zone hears of every status change of each of its servers; coalesce bursts of them.
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(ctx.config.concurrency)
                .debounce(std::time::Duration::from_millis(500)),
        )
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "zone reconcile did not complete");
            }
        })
        .await;
}

fn error_policy(zone: Arc<GameZone>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(CONTROLLER, err.reason());
    tracing::warn!(zone = %key(zone.as_ref()), error = %err, "zone reconcile failed");
    Action::requeue(requeue_after(err))
}

async fn reconcile(zone: Arc<GameZone>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let ns = zone.namespace().unwrap_or_default();
    let api: Api<GameZone> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, ZONE_FINALIZER, zone, |event| async {
        match event {
            Finalizer::Apply(zone) => reconcile_apply(&zone, &ctx).await,
            Finalizer::Cleanup(zone) => cleanup(&zone, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    })
}

/// Applies the zone and writes its status, turning user errors into a Degraded status.
async fn reconcile_apply(zone: &GameZone, ctx: &Context) -> Result<Action> {
    let memo_key = key(zone);
    let version = zone.metadata.resource_version.as_deref();
    let before = ctx.zone_status.base(&memo_key, version, zone.status.as_ref()).unwrap_or_default();
    let mut status = before.clone();
    let generation = zone.metadata.generation;
    status.observed_generation = generation;
    let result = converge(zone, ctx, &mut status).await;
    let action = match result {
        Ok(action) => action,
        Err(e) if e.is_user_error() => {
            conditions::set(&mut status.conditions, types::READY, false, e.reason(), e.to_string(), generation);
            status.phase = Some(ZonePhase::Degraded);
            Action::requeue(requeue_after(&e))
        }
        Err(e) => return Err(e),
    };
    publish_changes(zone, ctx, &before, &status).await;
    if status != before {
        // While servers come up one by one, a zone's counts are written at most every
        // COUNTS_EVERY, within the routine write budget; any other change (phase, a
        // condition's status or reason) at once.
        if only_counts_changed(&before, &status)
            && (ctx.zone_status.written_within(&memo_key, COUNTS_EVERY) || !ctx.routine_writes.take())
        {
            return Ok(Action::requeue(COUNTS_EVERY));
        }
        tracing::debug!(zone = %memo_key, phase = ?status.phase, ready = status.ready_servers, "writing status");
        let api: Api<GameZone> = Api::namespaced(ctx.client.clone(), &zone.namespace().unwrap_or_default());
        let version = apply_status(&api, &zone.name_any(), serde_json::to_value(&status)?).await?;
        ctx.zone_status.record(memo_key, version, status);
    }
    Ok(action)
}

/// How often a zone's status is written when only its counts and messages move.
const COUNTS_EVERY: Duration = Duration::from_secs(5);

/// Whether `after` differs from `before` only in counts and messages.
fn only_counts_changed(before: &GameZoneStatus, after: &GameZoneStatus) -> bool {
    fn shape(s: &GameZoneStatus) -> impl PartialEq + '_ {
        let conditions: Vec<_> = s.conditions.iter().map(|c| (&c.type_, &c.status, &c.reason)).collect();
        (s.phase, s.observed_generation, conditions, &s.artifacts, &s.migration, s.desired_servers)
    }
    shape(before) == shape(after)
}

/// One Event per change of the zone's conditions, naming each condition that changed, so
/// `kubectl describe gz` tells the story.
async fn publish_changes(zone: &GameZone, ctx: &Context, before: &GameZoneStatus, after: &GameZoneStatus) {
    let changed: Vec<_> = after
        .conditions
        .iter()
        .filter(|c| {
            let old = before.conditions.iter().find(|o| o.type_ == c.type_);
            old.map(|o| (&o.status, &o.reason)) != Some((&c.status, &c.reason))
        })
        .collect();
    // The Ready condition's reason says where the zone is; otherwise the first change's.
    let Some(lead) = changed.iter().find(|c| c.type_ == types::READY).or(changed.first()) else { return };
    let warning = changed
        .iter()
        .any(|c| c.status == "False" && !matches!(c.reason.as_str(), "Migrating" | "Deploying" | "Resolving"));
    let note: Vec<String> = changed.iter().map(|c| format!("{}: {}", c.type_, c.message)).collect();
    ctx.event(zone, warning, &lead.reason, note.join("; ")).await;
}

fn interval(zone: &GameZone) -> Result<Option<Duration>> {
    let text = zone.spec.artifacts_interval.as_deref().unwrap_or("5m");
    let (num, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = num.parse().map_err(|_| {
        Error::invalid("spec.artifactsInterval", format!("{text:?} is not a duration such as 30s, 5m or 1h"))
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => {
            return Err(Error::invalid(
                "spec.artifactsInterval",
                format!("{text:?} is not a duration such as 30s, 5m or 1h"),
            ));
        }
    };
    Ok((secs > 0).then(|| Duration::from_secs(secs)))
}

async fn converge(zone: &GameZone, ctx: &Context, status: &mut GameZoneStatus) -> Result<Action> {
    let generation = zone.metadata.generation;
    let ns = zone.namespace().unwrap_or_default();
    let name = zone.name_any();
    let cfg = &ctx.config.build;
    build::validate(zone)?;
    let interval = interval(zone)?;
    check_secrets(zone, ctx).await?;
    status.phase.get_or_insert(ZonePhase::Pending);

    // 1. Pin artifact revisions.
    let pins = pin_artifacts(zone, ctx, status, interval).await?;

    // 2. Migrate; servers move only once this version's migration succeeded.
    if let Some(action) = migrate(zone, ctx, status, &pins).await? {
        return Ok(action);
    }

    // 3. Host ports, the topology that lists them, then the servers, so that each server's
    // ports are listed before its pod exists; then Services.
    let servers = build::game_servers(zone, &pins, cfg)?;
    let desired: BTreeSet<String> = servers.iter().map(|s| s.name_any()).collect();
    let existing = ctx.servers_by_zone.of(&ctx.servers, &ns, &name);
    let by_name: BTreeMap<String, &GameServer> = existing.iter().map(|g| (g.name_any(), g.as_ref())).collect();
    let mut ports: BTreeMap<String, Vec<PortStatus>> = BTreeMap::new();
    for gs in &servers {
        match super::server::ensure_ports(ctx, gs) {
            // Ports the platform assigns are known once the pod exists: take them from status.
            Ok((_, deferred)) if !deferred.is_empty() => {
                let reported = by_name.get(&gs.name_any()).and_then(|g| g.status.as_ref()).map(|s| s.ports.clone());
                ports.insert(gs.name_any(), reported.unwrap_or_default());
            }
            Ok((allocations, _)) => {
                ports.insert(gs.name_any(), status_of(&allocations));
            }
            // The server reports why; the topology lists it without ports until it has them.
            Err(_) => {}
        }
    }
    let topology = build::topology(zone, &ports);
    let cm_api = Api::<ConfigMap>::namespaced(ctx.client.clone(), &ns);
    // Nothing watches ConfigMaps here; one deleted by hand comes back within TOPOLOGY_REFRESH.
    apply_changed(ctx, &cm_api, &topology, TOPOLOGY_REFRESH).await?;
    {
        let mut listed = ctx.listed.lock().expect("listed lock");
        for (server, p) in ports {
            listed.insert(key_of(&ns, &server), p);
        }
    }

    let gs_api: Api<GameServer> = Api::namespaced(ctx.client.clone(), &ns);
    // GameServer specs are stored as given (no defaulting), so a plain comparison finds drift.
    // The watch may not show this process's last writes yet: what was applied moments ago is
    // not applied again.
    let stale: Vec<(GameServer, String)> = servers
        .iter()
        .filter_map(|want| {
            let live = by_name.get(&want.name_any());
            if live.is_some_and(|l| l.metadata.deletion_timestamp.is_some()) {
                return None;
            }
            if live.is_some_and(|l| l.spec == want.spec && l.metadata.labels == want.metadata.labels) {
                return None;
            }
            let hash = hash_of(&(&want.spec, &want.metadata.labels));
            (!ctx.applied.recent(&applied_key(want), &hash, WATCH_LAG)).then(|| (want.clone(), hash))
        })
        .collect();
    futures::stream::iter(stale)
        .map(|(mut gs, wanted)| {
            let api = gs_api.clone();
            // The server controller's finalizer comes with the object: one write, not two.
            gs.metadata.finalizers = Some(vec![SERVER_FINALIZER.to_string()]);
            async move {
                apply(&api, &gs).await?;
                ctx.applied.record(applied_key(&gs), wanted);
                Ok::<_, Error>(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    for gs in &existing {
        if !desired.contains(&gs.name_any()) && gs.metadata.deletion_timestamp.is_none() {
            gs_api.delete(&gs.name_any(), &DeleteParams::default()).await?;
            ctx.event(zone, false, "ServerRemoved", format!("removed {} (no longer in spec.services)", gs.name_any()))
                .await;
        }
    }

    let svc_api: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    let services = build::services(zone);
    let wanted: BTreeSet<String> = services.iter().map(|s| s.name_any()).collect();
    let live_services = ctx.services_by_zone.of(&ctx.services, &ns, &name);
    let live: BTreeSet<String> = live_services.iter().map(|s| s.name_any()).collect();
    for svc in &services {
        let fresh_for = if live.contains(&svc.name_any()) { Duration::MAX } else { WATCH_LAG };
        apply_changed(ctx, &svc_api, svc, fresh_for).await?;
    }
    for svc in &live_services {
        if !wanted.contains(&svc.name_any()) && svc.metadata.deletion_timestamp.is_none() {
            delete_if_present(&svc_api, &svc.name_any()).await?;
        }
    }
    if let Some(claim) = build::artifacts_claim(zone) {
        apply(&Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), &ns), &claim).await?;
    }

    // 4. Status. An instance counts once it is Ready on the current template.
    let mut waiting = Vec::new();
    for want in &servers {
        let live = by_name.get(&want.name_any()).and_then(|l| l.status.as_ref());
        let current = live.is_some_and(|s| {
            s.state == Some(ServerState::Ready)
                && s.template_hash.as_deref() == Some(build::server_template_hash(&want.spec).as_str())
        });
        if !current {
            let state = live.and_then(|s| s.state).map(|s| format!("{s:?}")).unwrap_or_else(|| "Pending".into());
            let why = live.and_then(|s| s.message.clone()).map(|m| format!(": {m}")).unwrap_or_default();
            waiting.push(format!("{} {state}{why}", want.name_any()));
        }
    }
    let ready = (servers.len() - waiting.len()) as i32;
    status.desired_servers = servers.len() as i32;
    status.ready_servers = ready;
    status.ready_text = Some(format!("{ready}/{}", servers.len()));
    status.endpoints = endpoints(&live_services);
    let all_ready = waiting.is_empty();
    waiting.truncate(5);
    if all_ready {
        conditions::set(
            &mut status.conditions,
            types::SERVERS_READY,
            true,
            "AllReady",
            format!("{ready} of {ready} instances Ready"),
            generation,
        );
        conditions::set(&mut status.conditions, types::READY, true, "Ready", "the zone is up", generation);
        status.phase = Some(ZonePhase::Running);
    } else {
        let msg = format!("{ready} of {} instances Ready; waiting for {}", servers.len(), waiting.join(", "));
        conditions::set(&mut status.conditions, types::SERVERS_READY, false, "Deploying", msg.clone(), generation);
        conditions::set(&mut status.conditions, types::READY, false, "Deploying", msg, generation);
        status.phase = Some(ZonePhase::Deploying);
    }
    ctx.metrics.managed.get_or_create(&super::metrics::KindLabels { kind: "GameServer" }).set(ctx.servers.len() as i64);
    let requeue = if all_ready { interval.unwrap_or(Duration::from_secs(600)) } else { Duration::from_secs(30) };
    Ok(Action::requeue(requeue))
}

/// How long a written topology ConfigMap is trusted to still be there.
const TOPOLOGY_REFRESH: Duration = Duration::from_secs(300);

/// Applies `obj` unless this process applied the same content less than `fresh_for` ago.
/// A zone is reconciled on every change of its servers' status; re-applying unchanged children
/// each time would multiply the API calls for nothing.
async fn apply_changed<K>(ctx: &Context, api: &Api<K>, obj: &K, fresh_for: Duration) -> Result<()>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let key = applied_key(obj);
    let hash = hash_of(obj);
    if ctx.applied.recent(&key, &hash, fresh_for) {
        return Ok(());
    }
    apply(api, obj).await?;
    ctx.applied.record(key, hash);
    Ok(())
}

/// Fails with the field naming any Secret or key the zone refers to that does not exist.
async fn check_secrets(zone: &GameZone, ctx: &Context) -> Result<()> {
    let ns = zone.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut wanted: Vec<(String, &str, Option<&str>)> = Vec::new();
    if let Some(m) = &zone.spec.mysql {
        wanted.push((
            "spec.mysql.passwordSecretRef".into(),
            &m.password_secret_ref.name,
            Some(&m.password_secret_ref.key),
        ));
    }
    if let Some(r) = zone.spec.redis.as_ref().and_then(|r| r.password_secret_ref.as_ref()) {
        wanted.push(("spec.redis.passwordSecretRef".into(), &r.name, Some(&r.key)));
    }
    for (i, layer) in zone.spec.artifacts.iter().enumerate() {
        for (field, r) in build::layer_secret_refs(layer) {
            wanted.push((format!("spec.artifacts[{i}].{field}"), &r.name, None));
        }
    }
    for (field, name, key) in wanted {
        let secret = api.get_opt(name).await?;
        let problem = match (&secret, key) {
            (None, _) => Some("does not exist".to_string()),
            (Some(s), Some(k)) => {
                let has = s.data.as_ref().is_some_and(|d| d.contains_key(k))
                    || s.string_data.as_ref().is_some_and(|d| d.contains_key(k));
                (!has).then(|| format!("has no key {k:?}"))
            }
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(Error::MissingSecret { field, secret: name.to_string(), problem, namespace: ns });
        }
    }
    Ok(())
}

/// Resolves moving references when the artifacts changed or the interval passed; returns the pins.
async fn pin_artifacts(
    zone: &GameZone,
    ctx: &Context,
    status: &mut GameZoneStatus,
    interval: Option<Duration>,
) -> Result<Vec<String>> {
    let generation = zone.metadata.generation;
    let Some(mount) = build::artifacts_mount(zone)? else {
        status.artifacts.clear();
        status.artifacts_hash = None;
        status.artifact_revision = None;
        status.artifacts_resolved_at = None;
        conditions::set(
            &mut status.conditions,
            types::ARTIFACTS_READY,
            true,
            "NoArtifacts",
            "the zone has no artifacts",
            generation,
        );
        return Ok(Vec::new());
    };
    let spec_hash = hash_of(&zone.spec.artifacts);
    let same_spec = status.artifacts_hash.as_deref() == Some(spec_hash.as_str());
    let due = match (&status.artifacts_resolved_at, interval) {
        (Some(at), Some(every)) => at.parse::<Timestamp>().map(|t| t + every < Timestamp::now()).unwrap_or(true),
        (None, _) => true,
        (Some(_), None) => false,
    };
    if !same_spec || due {
        if !same_spec {
            status.phase = Some(ZonePhase::Resolving);
        }
        match resolve(zone, ctx, &mount.layers).await {
            Ok(revisions) => {
                let changed = !same_spec
                    || status.artifacts.iter().map(|a| &a.revision).ne(revisions.iter().map(|r| &r.revision));
                status.artifacts = revisions
                    .into_iter()
                    .map(|r| ArtifactStatus { layer: r.layer as i32, source: r.source, revision: r.revision })
                    .collect();
                status.artifacts_hash = Some(spec_hash);
                status.artifacts_resolved_at = Some(Timestamp::now().to_string());
                if changed {
                    let list: Vec<String> =
                        status.artifacts.iter().map(|a| format!("{} @ {}", a.source, short(&a.revision))).collect();
                    ctx.event(zone, false, "ArtifactsPinned", list.join("; ")).await;
                }
            }
            Err(e) if !same_spec => return Err(e),
            Err(e) => {
                // Keep serving the last good pins; say why they are not fresh.
                conditions::set(
                    &mut status.conditions,
                    types::ARTIFACTS_READY,
                    false,
                    e.reason(),
                    format!("{e}; keeping the revisions pinned before"),
                    generation,
                );
                return Ok(pins_of(status));
            }
        }
    }
    let pins = pins_of(status);
    status.artifact_revision = Some(if pins.len() == 1 { short(&pins[0]) } else { hash_of(&pins)[..12].to_string() });
    conditions::set(
        &mut status.conditions,
        types::ARTIFACTS_READY,
        true,
        "Pinned",
        format!("{} layer(s) pinned", pins.len()),
        generation,
    );
    Ok(pins)
}

fn pins_of(status: &GameZoneStatus) -> Vec<String> {
    status.artifacts.iter().map(|a| a.revision.clone()).collect()
}

fn short(revision: &str) -> String {
    let r = revision.strip_prefix("sha256:").unwrap_or(revision);
    r.chars().take(12).collect()
}

/// Pins every layer the operator can reach. Local folders live on the nodes, so they are left
/// for the init-container to resolve (an empty pin).
async fn resolve(
    zone: &GameZone,
    ctx: &Context,
    layers: &[gamezone_init::plan::Layer],
) -> Result<Vec<gamezone_init::resolve::Revision>> {
    let ns = zone.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut creds = MapCredentials::new();
    let names = build::secret_names(layers);
    for name in names {
        if let Some(secret) = secrets.get_opt(&name).await? {
            for (k, v) in secret.data.unwrap_or_default() {
                creds.insert(&name, &k, v.0);
            }
        }
    }
    let remote: Vec<(usize, gamezone_init::plan::Layer)> =
        layers.iter().enumerate().filter(|(_, l)| l.local.is_none()).map(|(i, l)| (i, l.clone())).collect();
    let only: Vec<gamezone_init::plan::Layer> = remote.iter().map(|(_, l)| l.clone()).collect();
    let resolved = gamezone_init::resolve::resolve(&only, &creds).await?;
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
}

/// Runs the migration for the current inputs. `Some(action)` while servers must wait.
async fn migrate(
    zone: &GameZone,
    ctx: &Context,
    status: &mut GameZoneStatus,
    pins: &[String],
) -> Result<Option<Action>> {
    let generation = zone.metadata.generation;
    let Some(job) = build::migration_job(zone, pins, &ctx.config.build)? else {
        status.migration = None;
        conditions::set(
            &mut status.conditions,
            types::MIGRATED,
            true,
            "NoMigration",
            "the zone has no migration",
            generation,
        );
        return Ok(None);
    };
    let hash = build::migration_inputs_hash(zone, pins).unwrap_or_default();
    let job_name = job.name_any();
    let previous = status.migration.as_ref().and_then(|m| m.succeeded_hash.clone());
    let succeeded = |status: &mut GameZoneStatus| {
        let msg = format!("migration {job_name} succeeded");
        conditions::set(&mut status.conditions, types::MIGRATED, true, "Succeeded", msg, generation);
    };
    if previous.as_deref() == Some(hash.as_str()) {
        succeeded(status);
        return Ok(None);
    }
    let ns = zone.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let live = match jobs.get_opt(&job_name).await? {
        Some(j) => j,
        None => apply(&jobs, &job).await?,
    };
    let conds = live.status.as_ref().and_then(|s| s.conditions.clone()).unwrap_or_default();
    let has = |t: &str| conds.iter().find(|c| c.type_ == t && c.status == "True");
    let mut m = MigrationStatus {
        inputs_hash: hash.clone(),
        job_name: job_name.clone(),
        state: "Running".into(),
        succeeded_hash: previous,
    };
    if has("Complete").is_some() {
        m.state = "Succeeded".into();
        m.succeeded_hash = Some(hash.clone());
        status.migration = Some(m);
        succeeded(status);
        // Older migration Jobs have served their purpose.
        let old = ListParams::default()
            .labels(&format!("{},{LABEL_PREFIX}migration!={hash}", build::zone_selector(&zone.name_any())));
        let bg = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
        jobs.delete_collection(&bg, &old).await?;
        return Ok(None);
    }
    if let Some(failed) = has("Failed") {
        m.state = "Failed".into();
        status.migration = Some(m);
        let why = format!(
            "migration Job {job_name} failed ({}: {}); running servers are left on the previous version. Fix spec.migration or the database, then edit the zone to retry",
            failed.reason.clone().unwrap_or_default(),
            failed.message.clone().unwrap_or_default()
        );
        conditions::set(&mut status.conditions, types::MIGRATED, false, "MigrationFailed", why.clone(), generation);
        conditions::set(&mut status.conditions, types::READY, false, "MigrationFailed", why, generation);
        status.phase = Some(ZonePhase::Degraded);
        return Ok(Some(Action::requeue(Duration::from_secs(120))));
    }
    status.migration = Some(m);
    let msg = format!("migration Job {job_name} is running; servers wait for it");
    conditions::set(&mut status.conditions, types::MIGRATED, false, "Migrating", msg.clone(), generation);
    conditions::set(&mut status.conditions, types::READY, false, "Migrating", msg, generation);
    status.phase = Some(ZonePhase::Migrating);
    Ok(Some(Action::requeue(Duration::from_secs(10))))
}

fn endpoints(services: &[Arc<Service>]) -> Vec<Endpoint> {
    services
        .iter()
        .filter(|s| s.spec.as_ref().and_then(|sp| sp.type_.as_deref()).is_some_and(|t| t != "ClusterIP"))
        .map(|s| {
            let ingress = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .and_then(|i| i.first().cloned());
            let ports = s.spec.as_ref().and_then(|sp| sp.ports.clone()).unwrap_or_default();
            Endpoint {
                service: s.name_any(),
                address: ingress.and_then(|i| i.ip.or(i.hostname)),
                hostname: s.annotations().get("external-dns.alpha.kubernetes.io/hostname").cloned(),
                ports: ports
                    .iter()
                    .map(|p| {
                        format!(
                            "{}:{}/{}",
                            p.name.clone().unwrap_or_default(),
                            p.node_port.unwrap_or(p.port),
                            p.protocol.clone().unwrap_or_else(|| "TCP".into())
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Removes everything the zone made, even objects whose owner reference was lost.
async fn cleanup(zone: &GameZone, ctx: &Context) -> Result<Action> {
    let ns = zone.namespace().unwrap_or_default();
    let lp = ListParams::default().labels(&build::zone_selector(&zone.name_any()));
    let bg = DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..Default::default() };
    let client = ctx.client.clone();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Once every server the watch shows is terminating, their finalizers finish the work, and
    // each server's deletion wakes the zone again: wait without asking the API server. With
    // hundreds of zones deleted at once, redoing every deletion and list on each wake was most
    // of the teardown's load. The last pass below still checks.
    let servers = ctx.servers_by_zone.of(&ctx.servers, &ns, &zone.name_any());
    if !servers.is_empty() && servers.iter().all(|g| g.metadata.deletion_timestamp.is_some()) {
        // Their pods go now, in one request, not one by one behind the garbage collector (a
        // controller manager's default client limit, 20 requests/s, held 2000 pods for two
        // minutes). No server is left to make a new one: all are terminating.
        let running = |g: &Arc<GameServer>| {
            let pod = ctx.pods.get(&ObjectRef::new(&g.name_any()).within(&ns));
            pod.is_some_and(|p| p.metadata.deletion_timestamp.is_none())
        };
        if servers.iter().any(running) {
            pods.delete_collection(&bg, &lp).await?;
        }
        return Err(Error::Waiting(terminating(servers.len(), zone)));
    }
    let gs: Api<GameServer> = Api::namespaced(client.clone(), &ns);
    gs.delete_collection(&bg, &lp).await?;
    Api::<Job>::namespaced(client.clone(), &ns).delete_collection(&bg, &lp).await?;
    Api::<ConfigMap>::namespaced(client.clone(), &ns).delete_collection(&bg, &lp).await?;
    Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns).delete_collection(&bg, &lp).await?;
    // Services have no delete-collection endpoint.
    let svc: Api<Service> = Api::namespaced(client.clone(), &ns);
    for s in svc.list(&lp).await?.items {
        svc.delete(&s.name_any(), &bg).await?;
    }
    let left = gs.list(&lp).await?.items.len();
    if left > 0 {
        tracing::info!(zone = %key(zone), left, "waiting for servers to go before releasing the zone");
        return Err(Error::Waiting(terminating(left, zone)));
    }
    // Pods whose servers went before their deletion was seen here.
    pods.delete_collection(&bg, &lp).await?;
    // Forget what was applied and listed for this zone, and hand back ports held for servers that
    // never came to be, or this process's memory would grow with every zone ever deleted.
    for svc in build::services(zone) {
        ctx.applied.forget(&applied_key(&svc));
    }
    ctx.applied.forget(&applied_key(&build::topology(zone, &BTreeMap::new())));
    ctx.zone_status.forget(&key(zone));
    if let Ok(servers) = build::game_servers(zone, &[], &ctx.config.build) {
        let mut listed = ctx.listed.lock().expect("listed lock");
        let mut alloc = ctx.ports.lock().expect("allocator lock");
        for gs in &servers {
            ctx.applied.forget(&applied_key(gs));
            let key = server_key(gs);
            listed.remove(&key);
            alloc.release(&key);
        }
        ctx.metrics.ports(&alloc.usage());
    }
    ctx.event(zone, false, "Deleted", "every object of the zone was removed".into()).await;
    Ok(Action::await_change())
}

/// Why a zone's deletion waits.
fn terminating(servers: usize, zone: &GameZone) -> String {
    format!("{servers} GameServers of zone {} still terminating", zone.name_any())
}
