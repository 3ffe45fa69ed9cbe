//! What each step of a zone's reconcile decides, as pure functions of the zone, what it wants
//! and what the watches show: unit-tested without a server.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::artifacts::TreeImage;
use crate::api::*;
use crate::conditions::{self, types};
use crate::zone::{self as build, hash_of};
use crate::{Error, Result};

/// A Secret (and maybe one key of it) the zone refers to, with the field that names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretUse {
    /// JSON path of the referring field, e.g. `spec.mysql.passwordSecretRef`.
    pub field: String,
    /// The Secret's name.
    pub name: String,
    /// The key that must be in it, when the field names one.
    pub key: Option<String>,
}

/// Every Secret the zone refers to, and the artifact registry's credentials its pods use.
pub fn secrets_used(zone: &GameZone, cfg: &build::BuildConfig) -> Vec<SecretUse> {
    let mut out = Vec::new();
    let mut add = |field: String, name: &str, key: Option<&str>| {
        out.push(SecretUse { field, name: name.to_string(), key: key.map(str::to_string) })
    };
    if let Some(m) = &zone.spec.mysql {
        add("spec.mysql.passwordSecretRef".into(), &m.password_secret_ref.name, Some(&m.password_secret_ref.key));
    }
    if let Some(r) = zone.spec.redis.as_ref().and_then(|r| r.password_secret_ref.as_ref()) {
        add("spec.redis.passwordSecretRef".into(), &r.name, Some(&r.key));
    }
    for (i, layer) in zone.spec.artifacts.iter().enumerate() {
        for (field, r) in build::layer_secret_refs(layer) {
            add(format!("spec.artifacts[{i}].{field}"), &r.name, None);
        }
    }
    if let Some(edits) = &zone.spec.edits {
        for key in build::SECRET_KEYS {
            add("spec.edits.secretRef".into(), &edits.secret_ref.name, Some(key));
        }
    }
    if let Some(secret) =
        cfg.registry.as_ref().and_then(|r| r.secret.as_deref()).filter(|_| !zone.spec.artifacts.is_empty())
    {
        add("--artifact-registry-secret (the operator's)".into(), secret, Some(build::DOCKER_CONFIG_KEY));
    }
    out
}

/// What is wrong with the Secret `found` for `using`: `None` when it is there with its key.
pub fn secret_problem(using: &SecretUse, found: Option<&k8s_openapi::api::core::v1::Secret>) -> Option<String> {
    let Some(secret) = found else { return Some("does not exist".into()) };
    let key = using.key.as_deref()?;
    let has = secret.data.as_ref().is_some_and(|d| d.contains_key(key))
        || secret.string_data.as_ref().is_some_and(|d| d.contains_key(key));
    (!has).then(|| format!("has no key {key:?}"))
}

/// Whether the pins must be resolved now: the artifacts changed since they were resolved, or
/// `interval` passed.
pub fn resolve_due(status: &GameZoneStatus, spec_hash: &str, interval: Option<Duration>, now: Timestamp) -> bool {
    if status.artifacts_hash.as_deref() != Some(spec_hash) {
        return true;
    }
    match (&status.artifacts_resolved_at, interval) {
        (Some(at), Some(every)) => at.0 + every < now,
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// `spec.artifactsInterval` when it is not given.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// How often moving references are resolved again; `None` when only spec changes do it. Never
/// more often than `min`: each resolve is requests to the layers' servers, at the zone author's
/// word (32 layers every second were 7.5 requests a second at one server).
pub fn interval(zone: &GameZone, min: Duration) -> Option<Duration> {
    let every = zone.spec.artifacts_interval.map_or(DEFAULT_INTERVAL, Interval::duration);
    (!every.is_zero()).then_some(every.max(min))
}

/// The pinned revisions in layer order.
pub fn pins_of(status: &GameZoneStatus) -> Vec<String> {
    status.artifacts.iter().map(|a| a.revision.clone()).collect()
}

/// A revision as `kubectl get gz` shows it.
pub fn short(revision: &str) -> String {
    let r = revision.strip_prefix("sha256:").unwrap_or(revision);
    r.chars().take(12).collect()
}

/// The one short revision over all pins.
pub fn artifact_revision(pins: &[String]) -> String {
    if pins.len() == 1 { short(&pins[0]) } else { hash_of(&pins)[..12].to_string() }
}

/// Where the migration Job of the current inputs is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// Still running (or not started), with why its pod is stuck if it is (`server::pod_stuck`).
    Running(Option<String>),
    /// Completed.
    Succeeded,
    /// Failed, with the Job's reason and message.
    Failed(String),
}

/// What the migration Job's conditions say.
pub fn job_outcome(job: &Job) -> JobOutcome {
    let conds = job.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let has = |t: &str| conds.iter().find(|c| c.type_ == t && c.status == "True");
    if has("Complete").is_some() {
        return JobOutcome::Succeeded;
    }
    match has("Failed") {
        Some(f) => JobOutcome::Failed(format!(
            "{}: {}",
            f.reason.clone().unwrap_or_default(),
            f.message.clone().unwrap_or_default()
        )),
        None => JobOutcome::Running(None),
    }
}

/// What `gamezone-init pack --report` says: each layer's blob in layer order, and the tree
/// image listing them.
#[derive(serde::Deserialize)]
struct PackReport {
    layers: Vec<PackedLayer>,
    tree: TreeImage,
}

/// Records in `status` each layer as packed and the tree image, from the termination message of
/// the pack Job's pod that succeeded. A message that does not list exactly one layer per
/// artifact records nothing.
pub fn record_packed(status: &mut GameZoneStatus, pods: &[k8s_openapi::api::core::v1::Pod]) {
    let said = pods.iter().find_map(|p| {
        let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
        let c = statuses.iter().find(|c| c.name == build::PACK_CONTAINER)?;
        let t = c.state.as_ref()?.terminated.as_ref()?;
        (t.exit_code == 0).then(|| t.message.clone()).flatten()
    });
    let Some(report) = said.and_then(|m| serde_json::from_str::<PackReport>(&m).ok()) else { return };
    let layers_ok = report.layers.len() == status.artifacts.len()
        && report.layers.iter().all(|l| l.digest.starts_with("sha256:") && l.size >= 0);
    let tree = &report.tree;
    let tree_ok = tree.image.contains("@sha256:")
        && tree.tree_digest.starts_with("sha256:")
        && tree.tree_shape.as_deref().is_none_or(|s| s.starts_with("sha256:"));
    if !layers_ok || !tree_ok {
        return;
    }
    for (a, l) in status.artifacts.iter_mut().zip(report.layers) {
        a.packed = Some(l);
    }
    status.tree_image = Some(report.tree);
}

/// What a version Job said when it failed last: the termination message of the newest failed
/// pod's `container`, trimmed to its last lines.
pub fn job_said(pods: &[k8s_openapi::api::core::v1::Pod], container: &str) -> Option<String> {
    let mut failed: Vec<(&k8s_openapi::api::core::v1::Pod, String)> = pods
        .iter()
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            let c = statuses.iter().find(|c| c.name == container)?;
            let t = c.state.as_ref()?.terminated.as_ref()?;
            (t.exit_code != 0).then(|| (p, t.message.clone().unwrap_or_default()))
        })
        .filter(|(_, m)| !m.trim().is_empty())
        .collect();
    failed.sort_by_key(|(p, _)| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let (_, message) = failed.pop()?;
    let lines: Vec<&str> = message.trim().lines().collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" / ");
    Some(tail.chars().rev().take(500).collect::<Vec<_>>().into_iter().rev().collect())
}

/// Where a Job whose conditions say it runs stands, by its pods: done once a pod's `container`
/// has ended with exit code 0 (the Job controller says `Complete` a second or more later, once
/// it has counted the pod), else running, with why its newest pod is stuck if it is
/// (`server::pod_stuck`).
pub fn running_job(pods: &[k8s_openapi::api::core::v1::Pod], container: &str) -> JobOutcome {
    if pods.iter().any(|p| ended_ok(p, container)) {
        return JobOutcome::Succeeded;
    }
    let newest = pods.iter().max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    JobOutcome::Running(newest.and_then(crate::server::pod_stuck))
}

/// Whether `pod`'s `container` has ended with exit code 0: the pod's work is done, though its
/// phase may say so only at the kubelet's next look.
fn ended_ok(pod: &k8s_openapi::api::core::v1::Pod, container: &str) -> bool {
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
    statuses
        .iter()
        .filter(|c| c.name == container)
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .any(|t| t.exit_code == 0)
}

/// The Jobs a version of the zone waits for, and how their conditions read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionJob {
    /// The pack of its artifacts into the artifact registry.
    Pack,
    /// Its database migration.
    Migration,
}

impl VersionJob {
    fn condition(self) -> &'static str {
        match self {
            VersionJob::Pack => types::ARTIFACTS_PACKED,
            VersionJob::Migration => types::MIGRATED,
        }
    }

    fn status(self, status: &mut GameZoneStatus) -> &mut Option<VersionJobStatus> {
        match self {
            VersionJob::Pack => &mut status.pack,
            VersionJob::Migration => &mut status.migration,
        }
    }

    /// The inputs hash the zone's last such Job succeeded for.
    pub fn succeeded_hash(self, status: &GameZoneStatus) -> Option<&str> {
        let job = match self {
            VersionJob::Pack => &status.pack,
            VersionJob::Migration => &status.migration,
        };
        job.as_ref().and_then(|j| j.succeeded_hash.as_deref())
    }

    /// The label its Jobs carry, valued with their inputs hash.
    pub fn label(self) -> String {
        let kind = match self {
            VersionJob::Pack => "pack",
            VersionJob::Migration => "migration",
        };
        format!("{LABEL_PREFIX}{kind}")
    }

    /// Its Job's container, and who speaks in it (for the words of a failed run).
    pub fn container(self) -> (&'static str, &'static str) {
        match self {
            VersionJob::Pack => (build::PACK_CONTAINER, "gamezone-init pack"),
            VersionJob::Migration => (build::MIGRATE_CONTAINER, "the migrater"),
        }
    }
}

/// Records a version Job's outcome in status; true when servers may move to this version.
pub fn report_job(
    kind: VersionJob,
    status: &mut GameZoneStatus,
    job_name: &str,
    hash: &str,
    outcome: &JobOutcome,
) -> bool {
    let generation = status.observed_generation;
    let previous = kind.status(status).as_ref().and_then(|m| m.succeeded_hash.clone());
    let mut m = VersionJobStatus {
        inputs_hash: hash.to_string(),
        job_name: job_name.to_string(),
        state: JobState::Running,
        succeeded_hash: previous,
    };
    let condition = kind.condition();
    let go_on = match outcome {
        JobOutcome::Succeeded => {
            m.state = JobState::Succeeded;
            m.succeeded_hash = Some(hash.to_string());
            let msg = match kind {
                VersionJob::Migration => format!("migration {job_name} succeeded"),
                VersionJob::Pack => format!("pack {job_name} put every layer pin in the artifact registry"),
            };
            conditions::set(&mut status.conditions, condition, true, "Succeeded", msg, generation);
            true
        }
        JobOutcome::Failed(why) => {
            m.state = JobState::Failed;
            let (reason, msg) = match kind {
                VersionJob::Migration => (
                    "MigrationFailed",
                    format!(
                        "migration Job {job_name} failed ({why}); running servers are left on the previous version. Fix spec.migration or the database, then edit the zone to retry"
                    ),
                ),
                VersionJob::Pack => (
                    "PackFailed",
                    format!(
                        "pack Job {job_name} failed ({why}); running servers are left on the previous version. Fix the layer or its origin, or the artifact registry, then edit the zone to retry"
                    ),
                ),
            };
            conditions::set(&mut status.conditions, condition, false, reason, msg.clone(), generation);
            conditions::set(&mut status.conditions, types::READY, false, reason, msg, generation);
            status.phase = Some(ZonePhase::Degraded);
            false
        }
        JobOutcome::Running(stuck) => {
            let (reason, mut msg) = match kind {
                VersionJob::Migration => {
                    ("Migrating", format!("migration Job {job_name} is running; servers wait for it"))
                }
                VersionJob::Pack => (
                    "Packing",
                    format!("pack Job {job_name} is putting the layers in the artifact registry; servers wait for it"),
                ),
            };
            if let Some(stuck) = stuck {
                msg.push_str(&format!("; its pod is stuck: {stuck}"));
            }
            conditions::set(&mut status.conditions, condition, false, reason, msg.clone(), generation);
            conditions::set(&mut status.conditions, types::READY, false, reason, msg, generation);
            status.phase = Some(match kind {
                VersionJob::Migration => ZonePhase::Migrating,
                VersionJob::Pack => ZonePhase::Packing,
            });
            false
        }
    };
    *kind.status(status) = Some(m);
    go_on
}

/// What the zone does with its servers in one reconcile.
#[derive(Debug, Default)]
pub struct ServerPlan {
    /// Servers to apply (new, changed, drained, or moved to a new template), each with the hash
    /// of what is applied.
    pub apply: Vec<(GameServer, String)>,
    /// Of `apply`, the servers whose drain starts now.
    pub drains: Vec<String>,
    /// Servers to delete: no longer wanted, and deletable.
    pub delete: Vec<String>,
    /// Servers being drained, each with what it waits for.
    pub draining: Vec<String>,
    /// Servers wait for their turn to update: the next server back in service (see
    /// [`back_in_service`]) lets the next one go.
    pub waiting_turns: bool,
}

/// Why `live` may not be deleted (or have its pod replaced) yet: `None` when it may. A server
/// that serves no one (its pod is not Ready) may go at once; one the game allocated or
/// reserved through the SDK stays until it returns to Ready or shuts down, whatever its gates
/// and `drainTimeout` say; any other that may hold players goes when its deletable gates are
/// all True, or its drain timed out.
pub fn not_deletable(live: &GameServer, now: Timestamp) -> Option<String> {
    kept_by_players(&live.spec, live.status.as_ref()?, now)
}

/// What keeps a server of `spec` whose status is `status` from going (see [`not_deletable`]):
/// the one rule for the operator's own deletions and the cluster's evictions.
pub fn kept_by_players(spec: &GameServerSpec, status: &GameServerStatus, now: Timestamp) -> Option<String> {
    if !serving_in(status.state) {
        return None;
    }
    if let Some(players) = status.holds_players(now) {
        return Some(format!("waiting for the game to end its match ({players})"));
    }
    let open: Vec<&str> = spec
        .lifecycle
        .deletable_gates
        .iter()
        .filter(|g| !conditions::is_true(&status.conditions, g))
        .map(String::as_str)
        .collect();
    if open.is_empty() {
        return None;
    }
    let since = spec.not_in_service().and_then(|c| c.time_added.as_ref()).map(|t| t.0);
    if let (Some(timeout), Some(since)) = (spec.lifecycle.drain_timeout, since)
        && since + timeout.duration() <= now
    {
        return None;
    }
    let timeout = spec.lifecycle.drain_timeout.map(|t| format!(" (drainTimeout {t})")).unwrap_or_default();
    Some(format!("waiting for deletable gates {}{timeout}", open.join(", ")))
}

/// What a server on a leaving node does now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Move {
    /// Its pod may go now: a new one runs elsewhere.
    Now,
    /// It may hold players and no one told it yet: mark it `NotInService`.
    Drain,
    /// Drained, and waiting for this.
    Wait(String),
}

/// What a server of `spec` in `status` whose node is leaving does now, by the rules of a
/// scale-down: one that serves no one, or whose type may always be evicted, or that nothing
/// will say players left from (no deletable gates, not allocated) moves at once; any other is
/// drained first and moves once it is deletable.
pub fn move_off(spec: &GameServerSpec, status: Option<&GameServerStatus>, now: Timestamp) -> Move {
    let Some(status) = status else { return Move::Now };
    let watched = status.holds_players(now).is_some() || !spec.lifecycle.deletable_gates.is_empty();
    if spec.lifecycle.eviction == Eviction::Always || !serving_in(status.state) || !watched {
        return Move::Now;
    }
    if spec.not_in_service().is_none() {
        return Move::Drain;
    }
    match kept_by_players(spec, status, now) {
        None => Move::Now,
        Some(why) => Move::Wait(why),
    }
}

/// How long servers of a zone deleted at `deleted_at` may still drain before they go anyway;
/// `None` once the `limit` passed.
pub fn drain_limit_left(deleted_at: Timestamp, limit: Duration, now: Timestamp) -> Option<Duration> {
    let ends = deleted_at + limit;
    (now < ends).then(|| Duration::try_from(ends.duration_since(now)).unwrap_or_default())
}

/// `live`'s spec with an effective `NotInService` constraint, as the apply that starts its drain.
fn drained(live: &GameServer, metadata_from: &GameServer, why: &str, now: Timestamp) -> GameServer {
    let mut gs = GameServer::new(&live.name_any(), live.spec.clone());
    // Only what the operator applies: a live object's version, uid and managed fields are not.
    let from = &metadata_from.metadata;
    gs.metadata.namespace = from.namespace.clone();
    gs.metadata.labels = from.labels.clone();
    // The version it runs is its live spec's, not the one it will be updated to.
    let labels = gs.metadata.labels.get_or_insert_with(Default::default);
    for key in VERSION_LABELS {
        match live.labels().get(key) {
            Some(v) => labels.insert(key.to_string(), v.clone()),
            None => labels.remove(key),
        };
    }
    gs.metadata.owner_references = from.owner_references.clone();
    gs.spec.constraints.retain(|c| c.type_ != NOT_IN_SERVICE);
    gs.spec.constraints.push(Constraint {
        type_: NOT_IN_SERVICE.into(),
        effective: Some(true),
        message: Some(why.into()),
        time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now)),
    });
    gs
}

/// Whether `live`'s pod may hold players: it is Ready, or was when its drain began.
fn serving(live: &GameServer) -> bool {
    serving_in(live.status.as_ref().and_then(|s| s.state))
}

/// Whether a server in `state` may hold players.
fn serving_in(state: Option<ServerState>) -> bool {
    matches!(state, Some(ServerState::Ready | ServerState::Draining | ServerState::RequestReady))
}

/// Whether replacing or deleting `live` needs a drain first: its pod may hold players and
/// something will say when they left (deletable gates, or the game's SDK state while it is
/// allocated or reserved). Without either it goes at once.
fn needs_drain(live: &GameServer, now: Timestamp) -> bool {
    let allocated = live.status.as_ref().and_then(|s| s.holds_players(now)).is_some();
    serving(live) && (allocated || !live.spec.lifecycle.deletable_gates.is_empty())
}

/// Whether `live` serves players now: Ready, not drained, and its status speaks of the spec it
/// has (`observedGeneration`). A server just given a new template still shows its old pod's
/// Ready until the server controller reports on the new one; counted available then, a second
/// server would be taken out beside it.
fn available(live: Option<&&GameServer>) -> bool {
    live.is_some_and(|l| back_in_service(l))
}

/// Whether `gs` is in service and Ready on the spec it has: no longer out for a rolling update,
/// so a server waiting for its turn may go. A zone whose rollout waits for a turn takes this
/// change of one of its servers at once rather than with a burst's routine changes.
pub fn back_in_service(gs: &GameServer) -> bool {
    let status = gs.status.as_ref();
    gs.spec.not_in_service().is_none()
        && status.and_then(|s| s.state) == Some(ServerState::Ready)
        && status.and_then(|s| s.observed_generation) == gs.metadata.generation
}

/// The apply of `gs`, unless this process applied the same moments ago (the watch may lag its
/// own writes).
fn apply_of(gs: GameServer, applied_recently: &impl Fn(&GameServer, &str) -> bool) -> Option<(GameServer, String)> {
    let hash = hash_of(&(&gs.spec, &gs.metadata.labels));
    (!applied_recently(&gs, &hash)).then_some((gs, hash))
}

/// Plans the zone's servers: new and changed ones are applied; one whose template changed is
/// drained first, at most `maxUnavailable` of a service type out at once (`strategies` by
/// type); one no longer wanted is drained, then deleted once deletable. A server without
/// deletable gates, or serving no one, needs no drain. Players are never kicked. A server whose
/// node is `leaving` (node → why) is drained whatever the budget, and its pod moves once it may
/// (see [`move_off`]); the server controller moves it.
pub fn plan_servers(
    wanted: &[GameServer],
    live: &BTreeMap<String, &GameServer>,
    strategies: &BTreeMap<String, UpdateStrategy>,
    leaving: &BTreeMap<String, String>,
    now: Timestamp,
    applied_recently: impl Fn(&GameServer, &str) -> bool,
) -> ServerPlan {
    let mut plan = ServerPlan::default();
    let wanted_names: BTreeSet<String> = wanted.iter().map(|g| g.name_any()).collect();
    // Out of service per type, and what each type may still take out.
    let mut budget: BTreeMap<&str, isize> = BTreeMap::new();
    for type_ in wanted.iter().map(|g| g.spec.type_.as_str()).collect::<BTreeSet<_>>() {
        let of_type: Vec<&GameServer> = wanted.iter().filter(|g| g.spec.type_ == type_).collect();
        let out = of_type.iter().filter(|g| !available(live.get(&g.name_any()))).count();
        let max = strategies.get(type_).cloned().unwrap_or_default().max_unavailable(of_type.len()).unwrap_or(1);
        budget.insert(type_, max as isize - out as isize);
    }
    for want in wanted {
        let name = want.name_any();
        let Some(l) = live.get(&name) else {
            plan.apply.extend(apply_of(want.clone(), &applied_recently));
            continue;
        };
        if l.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let node = l.status.as_ref().and_then(|s| s.node_name.as_ref());
        if let Some(why) = node.and_then(|n| leaving.get(n)) {
            match move_off(&l.spec, l.status.as_ref(), now) {
                Move::Now => plan.draining.push(format!("{name}: moving off {why}")),
                Move::Drain => {
                    plan.drains.push(name.clone());
                    let gs = drained(l, want, &format!("its node is leaving ({why})"), now);
                    plan.apply.extend(apply_of(gs, &applied_recently));
                }
                Move::Wait(kept) => plan.draining.push(format!("{name}: on {why}: {kept}")),
            }
            continue;
        }
        let same_template = build::same_template(&l.spec, &want.spec);
        let drained_and_deletable = l.spec.not_in_service().is_some() && not_deletable(l, now).is_none();
        if same_template || drained_and_deletable {
            // In place, or drained and deletable: the new template may replace its pod.
            if l.spec != want.spec || l.metadata.labels != want.metadata.labels {
                plan.apply.extend(apply_of(want.clone(), &applied_recently));
            }
            continue;
        }
        if let Some(why) = l.spec.not_in_service().and(not_deletable(l, now)) {
            plan.draining.push(format!("{name}: {why}"));
            continue;
        }
        // A new template for a server that has not been drained.
        let left = budget.get_mut(want.spec.type_.as_str()).expect("every wanted type has a budget");
        let takes_one = available(Some(l));
        if takes_one && *left <= 0 {
            plan.waiting_turns = true;
            plan.draining.push(format!("{name}: waiting for its turn to update (maxUnavailable)"));
            continue;
        }
        if takes_one {
            *left -= 1;
        }
        if needs_drain(l, now) {
            // Marked first, even when its gates are True now: the game hears of it, and the
            // gates count from then on.
            plan.drains.push(name.clone());
            plan.apply.extend(apply_of(drained(l, want, "updating to a new template", now), &applied_recently));
        } else {
            plan.apply.extend(apply_of(want.clone(), &applied_recently));
        }
    }
    for (name, l) in live {
        if wanted_names.contains(name) || l.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match (l.spec.not_in_service().is_some(), not_deletable(l, now)) {
            (false, _) if !needs_drain(l, now) => plan.delete.push(name.clone()),
            (true, None) => plan.delete.push(name.clone()),
            (true, Some(why)) => plan.draining.push(format!("{name}: {why}")),
            (false, _) => {
                plan.drains.push(name.clone());
                let gs = drained(l, l, "no longer in spec.services", now);
                plan.apply.extend(apply_of(gs, &applied_recently));
            }
        }
    }
    plan
}

/// The live objects no longer wanted and not yet being deleted.
pub fn to_delete<'a, K: kube::Resource>(wanted: &BTreeSet<String>, live: &'a [Arc<K>]) -> Vec<&'a K> {
    live.iter()
        .filter(|o| !wanted.contains(&o.name_any()) && o.meta().deletion_timestamp.is_none())
        .map(|o| o.as_ref())
        .collect()
}

/// How many wanted servers are Ready on their current template, and what the others wait for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Servers wanted.
    pub desired: usize,
    /// Of those, Ready on the current template.
    pub ready: usize,
    /// The first few not Ready, as `name State: why`.
    pub waiting: Vec<String>,
}

/// How many of the first waiting servers a zone's status names.
const WAITING_SHOWN: usize = 5;

/// The zone's readiness: a server counts once it is Ready on the current template.
pub fn readiness(wanted: &[GameServer], live: &BTreeMap<String, &GameServer>) -> Readiness {
    let mut waiting = Vec::new();
    let mut ready = 0;
    for want in wanted {
        let status = live.get(&want.name_any()).and_then(|l| l.status.as_ref());
        let current = status.is_some_and(|s| {
            s.state == Some(ServerState::Ready)
                && s.template_hash.as_deref() == Some(build::server_template_hash(&want.spec).as_str())
        });
        if current {
            ready += 1;
        } else if waiting.len() < WAITING_SHOWN {
            let state = status.and_then(|s| s.state).map(|s| format!("{s:?}")).unwrap_or_else(|| "Pending".into());
            let why = status.and_then(|s| s.message.clone()).map(|m| format!(": {m}")).unwrap_or_default();
            waiting.push(format!("{} {state}{why}", want.name_any()));
        }
    }
    Readiness { desired: wanted.len(), ready, waiting }
}

/// The nodes to pre-warm with `tree` before servers move to it: those of running servers whose
/// pods do not mount it yet (servers that copy the tree are not waited for).
pub fn nodes_to_warm(live: &BTreeMap<String, &GameServer>, tree: &TreeImage) -> BTreeSet<String> {
    let mounts = |gs: &GameServer| {
        let volumes = gs.spec.template.spec.as_ref().and_then(|s| s.volumes.as_ref());
        volumes
            .into_iter()
            .flatten()
            .any(|v| v.image.as_ref().and_then(|i| i.reference.as_deref()) == Some(&tree.image))
    };
    live.values()
        .filter(|gs| gs.metadata.deletion_timestamp.is_none() && !mounts(gs))
        .filter_map(|gs| {
            let status = gs.status.as_ref()?;
            if status.tree_copied.is_some() { None } else { status.node_name.clone() }
        })
        .collect()
}

/// How a pre-warm stands: which nodes need a warm pod made, which hold the tree, which could
/// not (with why), and whether the rollout may go on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Prewarm {
    /// Nodes without a warm pod yet.
    pub create: Vec<String>,
    /// Nodes whose warm pod succeeded: they hold the tree.
    pub warm: Vec<String>,
    /// Nodes whose warm pod failed, with what it said.
    pub failed: Vec<(String, String)>,
    /// Nodes whose warm pod still runs (pulling).
    pub pulling: Vec<String>,
    /// The rollout may go on: every node is warm or failed, or the pre-warm took `limit`.
    pub done: bool,
}

/// The pre-warm of `nodes` given the zone's warm pods of this tree (`pods`, by node).
pub fn prewarm(
    nodes: &BTreeSet<String>,
    pods: &[k8s_openapi::api::core::v1::Pod],
    now: Timestamp,
    limit: Duration,
) -> Prewarm {
    let mut p = Prewarm::default();
    let mut oldest: Option<Timestamp> = None;
    for node in nodes {
        let pod = pods.iter().find(|pod| pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node));
        let Some(pod) = pod else {
            p.create.push(node.clone());
            continue;
        };
        if let Some(t) = &pod.metadata.creation_timestamp {
            oldest = Some(oldest.map_or(t.0, |o| o.min(t.0)));
        }
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref());
        match phase {
            _ if phase == Some("Succeeded") || ended_ok(pod, build::WARM_CONTAINER) => p.warm.push(node.clone()),
            Some("Failed") => {
                let said = status
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|c| c.first()?.state.as_ref()?.terminated.as_ref()?.message.clone())
                    .or_else(|| status.and_then(|s| s.message.clone()))
                    .unwrap_or_else(|| "the warm pod failed".into());
                p.failed.push((node.clone(), crate::api::conditions::bounded(said.trim())));
            }
            _ => p.pulling.push(node.clone()),
        }
    }
    let timed_out = oldest.is_some_and(|o| o + limit < now);
    p.done = (p.create.is_empty() && p.pulling.is_empty()) || timed_out;
    p
}

/// While a pre-warm holds the rollout: `Ready` and `ServersReady` say which nodes pull.
pub fn report_prewarm(status: &mut GameZoneStatus, p: &Prewarm) {
    if p.done {
        return;
    }
    let generation = status.observed_generation;
    let waiting: Vec<&str> = p.create.iter().chain(&p.pulling).map(String::as_str).collect();
    let msg = format!(
        "pre-warming the tree image before the rollout: {} of {} node(s) hold it; pulling on {}",
        p.warm.len(),
        p.warm.len() + p.failed.len() + waiting.len(),
        waiting.join(", ")
    );
    conditions::set(&mut status.conditions, types::SERVERS_READY, false, "PreWarming", msg.clone(), generation);
    conditions::set(&mut status.conditions, types::READY, false, "PreWarming", msg, generation);
    status.phase = Some(ZonePhase::Deploying);
}

/// `ArtifactsMounted`, while servers mount the zone's tree image (`in_use`): True when every one
/// does, False (`CopyFallback`) naming those whose node mounted it wrong (`copied`: name, why),
/// which copy the tree from the registry instead. Absent otherwise.
pub fn report_tree_mounts(status: &mut GameZoneStatus, in_use: bool, copied: &[(String, String)]) {
    let generation = status.observed_generation;
    if !in_use {
        status.conditions.retain(|c| c.type_ != types::ARTIFACTS_MOUNTED);
        return;
    }
    match copied {
        [] => {
            let msg = "every server mounts the tree image";
            conditions::set(&mut status.conditions, types::ARTIFACTS_MOUNTED, true, "ImageVolume", msg, generation);
        }
        [(first, why), rest @ ..] => {
            let others = if rest.is_empty() { String::new() } else { format!(" (and {} more)", rest.len()) };
            let msg = format!(
                "{first}{others} copy the tree from the registry: {why}; check that node's container runtime \
                 implements image volumes (containerd 2.1+, CRI-O 1.31+)"
            );
            conditions::set(&mut status.conditions, types::ARTIFACTS_MOUNTED, false, "CopyFallback", msg, generation);
        }
    }
}

/// Reports the servers' readiness and drains: counts, `ServersReady`, `Ready` and the phase.
pub fn report_servers(status: &mut GameZoneStatus, r: &Readiness, draining: &[String]) {
    let generation = status.observed_generation;
    status.desired_servers = r.desired as i32;
    status.ready_servers = r.ready as i32;
    status.ready_text = Some(format!("{}/{}", r.ready, r.desired));
    let drains = if draining.is_empty() {
        String::new()
    } else {
        let mut shown: Vec<&str> = draining.iter().take(WAITING_SHOWN).map(String::as_str).collect();
        if draining.len() > WAITING_SHOWN {
            shown.push("…");
        }
        format!("; draining {}", shown.join("; "))
    };
    if r.ready == r.desired && draining.is_empty() {
        let msg = format!("{} of {} servers Ready", r.ready, r.desired);
        conditions::set(&mut status.conditions, types::SERVERS_READY, true, "AllReady", msg, generation);
        conditions::set(&mut status.conditions, types::READY, true, "Ready", "the zone is up", generation);
        status.phase = Some(ZonePhase::Running);
    } else {
        let waiting =
            if r.waiting.is_empty() { String::new() } else { format!("; waiting for {}", r.waiting.join(", ")) };
        let msg = format!("{} of {} servers Ready{waiting}{drains}", r.ready, r.desired);
        conditions::set(&mut status.conditions, types::SERVERS_READY, false, "Deploying", msg.clone(), generation);
        conditions::set(&mut status.conditions, types::READY, false, "Deploying", msg, generation);
        status.phase = Some(ZonePhase::Deploying);
    }
}

/// The step of a zone's reconcile that failed, which names the condition that reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Checking the spec and the Secrets it names.
    Check,
    /// Pinning the artifacts.
    Pin,
    /// Packing the pinned layers into the artifact registry.
    Pack,
    /// Running the migration.
    Migrate,
    /// Applying servers, holding their ports, writing the topology, applying Services.
    Serve,
}

impl Step {
    /// The condition a failure of this step shows in, besides `Ready`.
    fn condition(self) -> Option<&'static str> {
        match self {
            Step::Check => None,
            Step::Pin => Some(types::ARTIFACTS_READY),
            Step::Pack => Some(types::ARTIFACTS_PACKED),
            Step::Migrate => Some(types::MIGRATED),
            Step::Serve => Some(types::SERVERS_READY),
        }
    }
}

/// Records a failed step in status: its condition and `Ready` say `message` with `reason`. A
/// failure a person must fix marks the zone Degraded; a transient one leaves the phase as it was.
pub fn report_step_failure(
    status: &mut GameZoneStatus,
    step: Step,
    reason: &str,
    message: String,
    needs_a_person: bool,
) {
    let generation = status.observed_generation;
    if let Some(condition) = step.condition() {
        conditions::set(&mut status.conditions, condition, false, reason, message.clone(), generation);
    }
    conditions::set(&mut status.conditions, types::READY, false, reason, message, generation);
    if needs_a_person {
        status.phase = Some(ZonePhase::Degraded);
    }
}

/// Reports a deletion under way: phase Terminating and what it still waits for.
pub fn report_terminating(status: &mut GameZoneStatus, waiting_for: &str) {
    let generation = status.observed_generation;
    status.phase = Some(ZonePhase::Terminating);
    let msg = format!("the zone is being deleted; waiting for {waiting_for}");
    conditions::set(&mut status.conditions, types::READY, false, "Terminating", msg, generation);
}

/// The first few `servers` by name, for a message.
pub fn some_names(servers: &[Arc<GameServer>]) -> String {
    let mut names: Vec<String> = servers.iter().map(|s| s.name_any()).collect();
    names.sort();
    let more = names.len().saturating_sub(WAITING_SHOWN);
    names.truncate(WAITING_SHOWN);
    let mut text = names.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// The conditions that changed between `before` and `after` (status or reason), `Ready` first:
/// what one Event per transition tells. `None` when nothing changed; else whether it is a
/// warning, the reason and the note.
pub fn transition(before: &GameZoneStatus, after: &GameZoneStatus) -> Option<(bool, String, String)> {
    let changed: Vec<_> = after
        .conditions
        .iter()
        .filter(|c| {
            let old = before.conditions.iter().find(|o| o.type_ == c.type_);
            old.map(|o| (&o.status, &o.reason)) != Some((&c.status, &c.reason))
        })
        .collect();
    // The Ready condition's reason says where the zone is; otherwise the first change's.
    let lead = changed.iter().find(|c| c.type_ == types::READY).or(changed.first())?;
    let warning = changed.iter().any(|c| {
        c.status == "False" && !matches!(c.reason.as_str(), "Migrating" | "Deploying" | "Resolving" | "Terminating")
    });
    let note: Vec<String> = changed.iter().map(|c| format!("{}: {}", c.type_, c.message)).collect();
    Some((warning, lead.reason.clone(), note.join("; ")))
}

/// Exposed Services' external addresses, for status.
pub fn endpoints(services: &[Arc<Service>]) -> Vec<Endpoint> {
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

/// Whether `zone` names the Secret `secret` (the trigger of a Secret watch).
pub fn names_secret(zone: &GameZone, cfg: &build::BuildConfig, secret: &str) -> bool {
    secrets_used(zone, cfg).iter().any(|u| u.name == secret)
}

/// Fails on the first Secret that is missing or lacks its key.
pub fn check_secrets<'a>(
    namespace: &str,
    uses: &[SecretUse],
    found: impl Fn(&str) -> Option<&'a k8s_openapi::api::core::v1::Secret>,
) -> Result<()> {
    for using in uses {
        if let Some(problem) = secret_problem(using, found(&using.name)) {
            return Err(Error::MissingSecret {
                field: using.field.clone(),
                secret: using.name.clone(),
                problem,
                namespace: namespace.to_string(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
