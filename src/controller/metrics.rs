//! Prometheus metrics of the controllers and of the zones they run, served at `/metrics`.
//!
//! Zone series are counted from the watches' stores at each scrape, not on the reconciles'
//! path, and have no per-server label: their number grows with namespaces × zones × service
//! types × states × versions, never with servers.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};

use crate::api::{ARTIFACTS_LABEL, GameZoneStatus, JobState, VERSION_LABEL};

use super::slim::StoredServer;

/// Labels of per-controller series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    /// `zone` or `server`.
    pub controller: &'static str,
}

/// Labels of error series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `zone` or `server`.
    pub controller: &'static str,
    /// The error's reason.
    pub reason: &'static str,
}

/// Labels of managed-object gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Object kind.
    pub kind: &'static str,
}

/// Labels of host port usage series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabels {
    /// The range, e.g. `7000-7999`.
    pub range: String,
    /// `used` or `free` slots (a slot is one port on one node).
    pub state: &'static str,
}

/// Labels of the series of one service type of a zone.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct TypeLabels {
    /// The zone's namespace.
    pub namespace: String,
    /// The zone.
    pub zone: String,
    /// The service type.
    pub r#type: String,
}

/// Labels of the servers gauge: a service type's servers in one state, of one version.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct ServerLabels {
    /// The zone's namespace.
    pub namespace: String,
    /// The zone.
    pub zone: String,
    /// The service type.
    pub r#type: String,
    /// The server's state (`Ready`, `Draining`, ...; `Pending` before the first report).
    pub state: String,
    /// The game image's version ([`VERSION_LABEL`](crate::api::VERSION_LABEL)).
    pub version: String,
    /// The artifacts' version ([`ARTIFACTS_LABEL`](crate::api::ARTIFACTS_LABEL)), empty without.
    pub artifacts: String,
}

/// Labels of one zone's series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabels {
    /// The zone's namespace.
    pub namespace: String,
    /// The zone.
    pub zone: String,
}

/// Labels of a zone's state sets: one series per value, 1 for the current one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneStateLabels {
    /// The zone's namespace.
    pub namespace: String,
    /// The zone.
    pub zone: String,
    /// The value (a phase, a migration's state).
    pub state: String,
}

/// Labels of the restarts counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabels {
    /// The zone's namespace.
    pub namespace: String,
    /// The zone.
    pub zone: String,
    /// The service type.
    pub r#type: String,
    /// The state the server shows meanwhile.
    pub state: String,
}

/// Labels of the migrations counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The zone's namespace.
    pub namespace: String,
    /// The zone.
    pub zone: String,
    /// `Succeeded` or `Failed`.
    pub outcome: String,
}

/// Zone series counted from the stores at each scrape.
#[derive(Default)]
struct ZoneGauges {
    servers: Family<ServerLabels, Gauge>,
    desired: Family<TypeLabels, Gauge>,
    drain_oldest: Family<TypeLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    drains_overdue: Family<TypeLabels, Gauge>,
    phase: Family<ZoneStateLabels, Gauge>,
    migration: Family<ZoneStateLabels, Gauge>,
}

/// Every metric the operator exports.
pub struct Metrics {
    /// Reconciles run.
    pub reconciles: Family<ControllerLabels, Counter>,
    /// Reconciles that failed, by reason.
    pub errors: Family<ErrorLabels, Counter>,
    /// Reconcile durations in seconds.
    pub durations: Family<ControllerLabels, Histogram>,
    /// Objects the operator currently manages, by kind: counted from the watch's store at each
    /// scrape ([`Metrics::count_servers_from`]), not on the reconciles' path.
    pub managed: Family<KindLabels, Gauge>,
    /// The GameServers the shared watch holds, once it exists.
    servers: OnceLock<Store<StoredServer>>,
    /// Host port slots per range, used and free.
    pub port_slots: Family<PortLabels, Gauge>,
    /// Objects due for a reconcile and waiting for a free one, per controller.
    pub queue_depth: Family<ControllerLabels, Gauge>,
    /// Seconds from a server's pod creation to its first Ready, per service type.
    pub ready_durations: Family<TypeLabels, Histogram>,
    /// Migrations that ended, by outcome.
    pub migrations: Family<OutcomeLabels, Counter>,
    /// Times a zone's artifacts were pinned to new revisions.
    pub repins: Family<ZoneLabels, Counter>,
    /// Pods the operator made again because their process ended, failed its health checks or
    /// asked to shut down, per service type and state (`Unhealthy`, `Shutdown`).
    pub restarts: Family<RestartLabels, Counter>,
    /// The zones the zone controller's watch holds, once it exists.
    zones: OnceLock<Store<crate::api::GameZone>>,
    /// Whether the zone series are counted and served.
    zone_metrics: bool,
    gauges: ZoneGauges,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Metrics {
    /// The controller's metrics, and the zone metrics when `zones` (`--zone-metrics`).
    pub fn new(zones: bool) -> Self {
        let mut registry = Registry::with_prefix("gamezone");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let durations = Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let managed = Family::<KindLabels, Gauge>::default();
        let port_slots = Family::<PortLabels, Gauge>::default();
        let queue_depth = Family::<ControllerLabels, Gauge>::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed", errors.clone());
        registry.register("reconcile_duration_seconds", "Reconcile durations", durations.clone());
        registry.register("managed_objects", "Objects managed, by kind", managed.clone());
        registry.register("port_slots", "Host port slots (port x node) per range, used and free", port_slots.clone());
        registry.register("queue_depth", "Objects due for a reconcile, waiting for a free one", queue_depth.clone());
        let ready_durations = Family::<TypeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0])
        });
        let (migrations, repins, restarts) = (Family::default(), Family::default(), Family::default());
        let gauges = ZoneGauges::default();
        if zones {
            registry.register(
                "server_ready_duration_seconds",
                "Seconds from a server's pod creation to its first Ready",
                ready_durations.clone(),
            );
            registry.register("zone_migrations", "Migrations that ended, by outcome", migrations.clone());
            registry.register("zone_artifact_repins", "Times a zone's artifacts were pinned anew", repins.clone());
            registry.register("servers", "Servers by zone, service type, state and version", gauges.servers.clone());
            registry.register(
                "servers_desired",
                "Servers a zone's spec asks for, by service type",
                gauges.desired.clone(),
            );
            registry.register(
                "drain_oldest_seconds",
                "Seconds the longest drain of a service type has waited",
                gauges.drain_oldest.clone(),
            );
            registry.register(
                "drains_overdue",
                "Servers still draining past their drainTimeout (the operator should have deleted them)",
                gauges.drains_overdue.clone(),
            );
            registry.register(
                "server_restarts",
                "Pods made again because their game ended or failed",
                restarts.clone(),
            );
            registry.register("zone_phase", "A zone's phase (1 for the current one)", gauges.phase.clone());
            registry.register(
                "zone_migration",
                "The state of a zone's current migration (1 for the current one)",
                gauges.migration.clone(),
            );
        }
        let (servers, zone_store) = (OnceLock::new(), OnceLock::new());
        Self {
            reconciles,
            errors,
            durations,
            managed,
            port_slots,
            queue_depth,
            ready_durations,
            migrations,
            repins,
            restarts,
            servers,
            zones: zone_store,
            zone_metrics: zones,
            gauges,
            registry,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and returns a guard that records its duration when dropped.
    pub fn start(&self, controller: &'static str) -> Timer<'_> {
        self.reconciles.get_or_create(&ControllerLabels { controller }).inc();
        Timer { metrics: self, controller, start: std::time::Instant::now() }
    }

    /// Counts a failed reconcile.
    pub fn error(&self, controller: &'static str, reason: &'static str) {
        self.errors.get_or_create(&ErrorLabels { controller, reason }).inc();
    }

    /// Records the allocator's per-range usage.
    pub fn ports(&self, usage: &crate::ports::Usage) {
        for r in &usage.ranges {
            let range = r.range.to_string();
            self.port_slots.get_or_create(&PortLabels { range: range.clone(), state: "used" }).set(r.slots.used as i64);
            self.port_slots.get_or_create(&PortLabels { range, state: "free" }).set(r.slots.free as i64);
        }
    }

    /// The registry to extend with more metrics (e.g. port usage) before serving.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Counts `gamezone_managed_objects{kind="GameServer"}` from `servers` at each scrape: the
    /// servers not being deleted, so the gauge follows deletions too.
    pub fn count_servers_from(&self, servers: Store<StoredServer>) {
        let _ = self.servers.set(servers);
    }

    /// Counts the zone series from `zones` at each scrape.
    pub fn count_zones_from(&self, zones: Store<crate::api::GameZone>) {
        let _ = self.zones.set(zones);
    }

    /// Counts what a zone's status change says happened: a migration that ended, new pins.
    pub fn zone_changed(&self, zone: &crate::api::GameZone, before: &GameZoneStatus, after: &GameZoneStatus) {
        if !self.zone_metrics {
            return;
        }
        let (namespace, name) = (zone.namespace().unwrap_or_default(), zone.name_any());
        let ended = |s: &GameZoneStatus| {
            s.migration.as_ref().filter(|m| m.state != JobState::Running).map(|m| (m.inputs_hash.clone(), m.state))
        };
        if let Some((inputs, state)) = ended(after)
            && ended(before).is_none_or(|(was, _)| was != inputs)
        {
            let outcome = format!("{state:?}");
            self.migrations
                .get_or_create(&OutcomeLabels { namespace: namespace.clone(), zone: name.clone(), outcome })
                .inc();
        }
        if before.artifact_revision.is_some()
            && after.artifact_revision.is_some()
            && before.artifact_revision != after.artifact_revision
        {
            self.repins.get_or_create(&ZoneLabels { namespace, zone: name }).inc();
        }
    }

    /// Counts a pod made again, its server showing `state` meanwhile.
    pub fn server_restarted(&self, gs: &crate::api::GameServer, state: crate::api::ServerState) {
        if !self.zone_metrics {
            return;
        }
        let labels = RestartLabels {
            namespace: gs.namespace().unwrap_or_default(),
            zone: gs.spec.zone.clone(),
            r#type: gs.spec.type_.clone(),
            state: format!("{state:?}"),
        };
        self.restarts.get_or_create(&labels).inc();
    }

    /// Records a server's first Ready, `seconds` after its pod was created.
    pub fn server_ready(&self, gs: &crate::api::GameServer, seconds: f64) {
        if !self.zone_metrics {
            return;
        }
        let labels = TypeLabels {
            namespace: gs.namespace().unwrap_or_default(),
            zone: gs.spec.zone.clone(),
            r#type: gs.spec.type_.clone(),
        };
        self.ready_durations.get_or_create(&labels).observe(seconds);
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let now = Timestamp::now();
        if let Some(servers) = self.servers.get() {
            let state = servers.state();
            let live = state.iter().filter(|s| s.meta().deletion_timestamp.is_none()).count();
            self.managed.get_or_create(&KindLabels { kind: "GameServer" }).set(live as i64);
        }
        if let Some(servers) = self.servers.get().filter(|_| self.zone_metrics) {
            let state = servers.state();
            let counted = count_servers(state.iter().map(|s| s.without_template()), now);
            set_all(&self.gauges.servers, counted.servers);
            set_all(&self.gauges.drains_overdue, counted.overdue);
            self.gauges.drain_oldest.clear();
            for (labels, seconds) in counted.oldest_drains {
                self.gauges.drain_oldest.get_or_create(&labels).set(seconds);
            }
        }
        if let Some(zones) = self.zones.get().filter(|_| self.zone_metrics) {
            let zones = zones.state();
            let (desired, phases, migrations) = count_zones(zones.iter().map(|z| z.as_ref()));
            set_all(&self.gauges.desired, desired);
            set_all(&self.gauges.phase, phases.into_iter().map(|l| (l, 1)).collect());
            set_all(&self.gauges.migration, migrations.into_iter().map(|l| (l, 1)).collect());
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode to a String");
        out
    }
}

/// Sets `family` to `values` alone: series no longer counted go.
fn set_all<L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static>(
    family: &Family<L, Gauge>,
    values: Vec<(L, i64)>,
) {
    family.clear();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
}

/// What the servers store says at a scrape.
#[derive(Debug, Default)]
struct Counted {
    /// Servers by zone, type, state and version (those being deleted as `Terminating`).
    servers: Vec<(ServerLabels, i64)>,
    /// The age in seconds of each type's oldest drain (its `NotInService` constraint).
    oldest_drains: Vec<(TypeLabels, f64)>,
    /// Per type, the servers draining longer than their `drainTimeout`.
    overdue: Vec<(TypeLabels, i64)>,
}

/// Counts `servers` at `now`.
fn count_servers<'a>(servers: impl Iterator<Item = &'a crate::api::GameServer>, now: Timestamp) -> Counted {
    let (mut counts, mut drains) = (BTreeMap::<ServerLabels, i64>::new(), BTreeMap::<TypeLabels, f64>::new());
    let mut overdue = BTreeMap::<TypeLabels, i64>::new();
    for gs in servers {
        let label = |key: &str| gs.labels().get(key).cloned().unwrap_or_default();
        let (namespace, zone, r#type) =
            (gs.namespace().unwrap_or_default(), gs.spec.zone.clone(), gs.spec.type_.clone());
        let state = match (gs.metadata.deletion_timestamp.is_some(), gs.status.as_ref().and_then(|s| s.state)) {
            (true, _) => "Terminating".to_string(),
            (false, Some(s)) => format!("{s:?}"),
            (false, None) => "Pending".to_string(),
        };
        let version = label(VERSION_LABEL);
        let artifacts = label(ARTIFACTS_LABEL);
        let key = ServerLabels {
            namespace: namespace.clone(),
            zone: zone.clone(),
            r#type: r#type.clone(),
            state,
            version,
            artifacts,
        };
        *counts.entry(key).or_default() += 1;
        // Every type with servers has both drain series, 0 without drains: a panel or a rule
        // over them has data, and "no drain" is told from "no such type".
        let labels = TypeLabels { namespace, zone, r#type };
        let oldest = drains.entry(labels.clone()).or_default();
        let late = overdue.entry(labels).or_default();
        if let Some(since) = gs.spec.not_in_service().and_then(|c| c.time_added.as_ref()) {
            let age = now.duration_since(since.0).as_secs_f64().max(0.0);
            if gs.spec.lifecycle.drain_timeout.is_some_and(|t| age > t.duration().as_secs_f64()) {
                *late += 1;
            }
            *oldest = oldest.max(age);
        }
    }
    let collect = |m: BTreeMap<_, _>| m.into_iter().collect();
    Counted {
        servers: collect(counts),
        oldest_drains: drains.into_iter().collect(),
        overdue: overdue.into_iter().collect(),
    }
}

/// Per zone: the servers each service type asks for, the phase, and the current migration's state.
fn count_zones<'a>(
    zones: impl Iterator<Item = &'a crate::api::GameZone>,
) -> (Vec<(TypeLabels, i64)>, Vec<ZoneStateLabels>, Vec<ZoneStateLabels>) {
    let (mut desired, mut phases, mut migrations) = (Vec::new(), Vec::new(), Vec::new());
    for zone in zones {
        let (namespace, name) = (zone.namespace().unwrap_or_default(), zone.name_any());
        for service in &zone.spec.services {
            let ids = service.ids();
            let count = (ids.end() - ids.start() + 1).max(0);
            let labels = TypeLabels { namespace: namespace.clone(), zone: name.clone(), r#type: service.type_.clone() };
            desired.push((labels, count));
        }
        let status = zone.status.as_ref();
        let state = |state: String| ZoneStateLabels { namespace: namespace.clone(), zone: name.clone(), state };
        if let Some(phase) = status.and_then(|s| s.phase) {
            phases.push(state(format!("{phase:?}")));
        }
        if let Some(m) = status.and_then(|s| s.migration.as_ref()) {
            migrations.push(state(format!("{:?}", m.state)));
        }
    }
    (desired, phases, migrations)
}

/// Records a reconcile's duration on drop.
pub struct Timer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: std::time::Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.metrics
            .durations
            .get_or_create(&ControllerLabels { controller: self.controller })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GameServer, GameServerSpec, GameServerStatus, ServerState};
    use kube::runtime::{reflector, watcher};

    fn server(name: &str, deleting: bool) -> StoredServer {
        let mut gs = GameServer::new(name, Default::default());
        gs.metadata.namespace = Some("ns".into());
        if deleting {
            gs.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        }
        gs.into()
    }

    #[test]
    fn the_server_gauge_counts_the_store_at_each_scrape_without_the_terminating() {
        let metrics = Metrics::default();
        let (store, mut writer) = reflector::store();
        metrics.count_servers_from(store);
        for (name, deleting) in [("a", false), ("b", false), ("c", true)] {
            writer.apply_watcher_event(&watcher::Event::Apply(server(name, deleting)));
        }
        assert!(metrics.render().contains("gamezone_managed_objects{kind=\"GameServer\"} 2"));
        writer.apply_watcher_event(&watcher::Event::Delete(server("a", false)));
        assert!(metrics.render().contains("gamezone_managed_objects{kind=\"GameServer\"} 1"));
    }

    fn versioned(name: &str, type_: &str, state: Option<ServerState>, version: &str) -> GameServer {
        let mut gs =
            GameServer::new(name, GameServerSpec { zone: "z".into(), type_: type_.into(), ..Default::default() });
        gs.metadata.namespace = Some("ns".into());
        gs.labels_mut().insert(VERSION_LABEL.into(), version.into());
        gs.status = state.map(|state| GameServerStatus { state: Some(state), ..Default::default() });
        gs
    }

    #[test]
    fn zone_series_count_servers_by_type_state_and_version_and_age_the_oldest_drain() {
        let now: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let mut drained = versioned("z-game-3", "game", Some(ServerState::Draining), "1");
        drained.spec.constraints.push(crate::api::Constraint {
            type_: crate::api::NOT_IN_SERVICE.into(),
            time_added: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-07T09:58:20Z".parse().unwrap(),
            )),
            ..Default::default()
        });
        let servers = [
            versioned("z-game-1", "game", Some(ServerState::Ready), "2"),
            versioned("z-game-2", "game", Some(ServerState::Ready), "2"),
            drained,
            versioned("z-gate-1", "gate", None, "2"),
        ];
        let Counted { servers: counts, oldest_drains: drains, overdue } = count_servers(servers.iter(), now);
        assert!(overdue.iter().all(|(_, n)| *n == 0), "no drainTimeout, never overdue: {overdue:?}");
        let seen: Vec<_> =
            counts.iter().map(|(l, n)| (l.r#type.as_str(), l.state.as_str(), l.version.as_str(), *n)).collect();
        assert_eq!(seen, [("game", "Draining", "1", 1), ("game", "Ready", "2", 2), ("gate", "Pending", "2", 1)]);
        let ages: Vec<_> = drains.iter().map(|(l, age)| (l.r#type.as_str(), *age)).collect();
        assert_eq!(ages, [("game", 100.0), ("gate", 0.0)], "a type without drains shows 0");
        // With a drainTimeout shorter than its drain, the server is overdue.
        let mut late = servers.clone();
        late[2].spec.lifecycle.drain_timeout = Some(serde_json::from_value(serde_json::json!("60s")).unwrap());
        let overdue = count_servers(late.iter(), now).overdue;
        assert_eq!(
            overdue.iter().map(|(l, n)| (l.r#type.as_str(), *n)).collect::<Vec<_>>(),
            [("game", 1), ("gate", 0)]
        );
    }

    #[test]
    fn ended_migrations_and_new_pins_are_counted_once() {
        let metrics = Metrics::default();
        let zone = gamezone_api::fixture::zone("z").namespace("ns").build();
        let migration = |inputs: &str, state| {
            Some(crate::api::VersionJobStatus {
                inputs_hash: inputs.into(),
                job_name: "j".into(),
                state,
                succeeded_hash: None,
            })
        };
        let running = GameZoneStatus {
            migration: migration("a", JobState::Running),
            artifact_revision: Some("r1".into()),
            ..Default::default()
        };
        let done = GameZoneStatus { migration: migration("a", JobState::Succeeded), ..running.clone() };
        metrics.zone_changed(&zone, &running, &done);
        metrics.zone_changed(&zone, &done, &done);
        let failed = GameZoneStatus {
            migration: migration("b", JobState::Failed),
            artifact_revision: Some("r2".into()),
            ..Default::default()
        };
        metrics.zone_changed(&zone, &done, &failed);
        let text = metrics.render();
        assert!(
            text.contains(r#"gamezone_zone_migrations_total{namespace="ns",zone="z",outcome="Succeeded"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"gamezone_zone_migrations_total{namespace="ns",zone="z",outcome="Failed"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"gamezone_zone_artifact_repins_total{namespace="ns",zone="z"} 1"#), "{text}");
    }
}
