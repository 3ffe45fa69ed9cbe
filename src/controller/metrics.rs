//! Prometheus metrics of the controllers, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::OnceLock;

use kube::Resource;
use kube::runtime::reflector::Store;

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
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
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
        let servers = OnceLock::new();
        Self { reconciles, errors, durations, managed, port_slots, queue_depth, servers, registry }
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

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        if let Some(servers) = self.servers.get() {
            let live = servers.state().iter().filter(|s| s.meta().deletion_timestamp.is_none()).count();
            self.managed.get_or_create(&KindLabels { kind: "GameServer" }).set(live as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("metrics encode to a String");
        out
    }
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
    use crate::api::GameServer;
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
}
