//! Glue between GameServers and the pure port allocator: requests from the spec, status from
//! allocations, the rebuild at start, and nodes joining and leaving.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use tokio::sync::mpsc;

use crate::api::{GameServer, PortPolicy, PortStatus};
use crate::ports::spec::{allocations_of, holder};
use crate::ports::{AllocError, Allocation, PortAllocator, PortRequest};

use super::Metrics;
use super::key::ObjectKey;

/// The operator's one allocator, and the ports each zone's topology ConfigMap lists per server
/// as this process last wrote them: a server's pod starts only once its ports are listed.
pub struct PortTable {
    allocator: Mutex<PortAllocator>,
    listed: Mutex<HashMap<ObjectKey, Vec<PortStatus>>>,
    /// Host ports held per namespace (`--host-ports-per-namespace`).
    by_namespace: Mutex<HashMap<String, usize>>,
    /// Servers whose listing changed, for the server controller: a new server's pod is made
    /// once its ports are listed, and the listing wakes it.
    wake: mpsc::UnboundedSender<ObjectKey>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<ObjectKey>>>,
}

impl PortTable {
    /// Port tables rebuilt at start, and the topologies' listings read then.
    pub fn new(allocator: PortAllocator, listed: HashMap<ObjectKey, Vec<PortStatus>>) -> Self {
        let mut by_namespace = HashMap::<String, usize>::new();
        for (server, held) in allocator.holdings() {
            *by_namespace.entry(namespace_of(server).to_string()).or_default() += held;
        }
        let (wake, woken) = mpsc::unbounded_channel();
        PortTable {
            allocator: Mutex::new(allocator),
            listed: Mutex::new(listed),
            by_namespace: Mutex::new(by_namespace),
            wake,
            woken: Mutex::new(Some(woken)),
        }
    }

    /// The servers whose listing changed, as they change; for the one caller that takes it.
    pub fn listings(&self) -> Option<mpsc::UnboundedReceiver<ObjectKey>> {
        self.woken.lock().expect("woken lock").take()
    }

    /// Holds `wanted` for `server` (new ports when its port list changed), within its
    /// namespace's share: a server not holding ports yet gets none past `limit` for the
    /// namespace. New ports are held no more often than `reach` says the server's pod can find
    /// nodes (asked only then). Returns the allocations and whether they are new.
    pub fn hold(
        &self,
        server: &ObjectKey,
        wanted: &[PortRequest],
        limit: Option<usize>,
        reach: impl FnOnce() -> Option<u32>,
    ) -> Result<(Vec<Allocation>, bool), AllocError> {
        let key = holder(server);
        let mut alloc = self.allocator();
        let mut counts = self.by_namespace.lock().expect("namespace counts lock");
        let held = counts.entry(server.namespace().to_string()).or_default();
        let before = alloc.allocation(&key).map(|_| alloc.host_ports_held(&key));
        if before.is_none()
            && let Some(limit) = limit
            && *held + wanted.len() > limit
        {
            return Err(AllocError::NamespaceShare {
                server: key,
                namespace: server.namespace().to_string(),
                requested: wanted.len(),
                held: *held,
                limit,
            });
        }
        // Nodes are counted only for a server about to hold host ports: most need none.
        let reach_if_hosts = || if wanted.iter().any(|r| r.policy != PortPolicy::None) { reach() } else { None };
        let result = match before {
            Some(_) => match alloc.allocate(&key, wanted) {
                Err(AllocError::AlreadyAllocated { .. }) => {
                    // The spec's ports changed: hand back the old ones and take new ones.
                    alloc.release(&key);
                    alloc.allocate_within(&key, wanted, reach_if_hosts())
                }
                same => same,
            },
            None => alloc.allocate_within(&key, wanted, reach_if_hosts()),
        };
        let after = alloc.host_ports_held(&key);
        *held = (*held + after).saturating_sub(before.unwrap_or(0));
        result.map(|a| (a, before.is_none()))
    }

    /// The allocator, locked.
    pub fn allocator(&self) -> MutexGuard<'_, PortAllocator> {
        self.allocator.lock().expect("allocator lock")
    }

    /// Records what a topology now lists, and tells of the servers whose listing changed.
    pub fn list(&self, entries: impl IntoIterator<Item = (ObjectKey, Vec<PortStatus>)>) {
        let mut listed = self.listed.lock().expect("listed lock");
        for (server, ports) in entries {
            if listed.get(&server) != Some(&ports) {
                listed.insert(server.clone(), ports);
                // No one listening (a test, the shutdown) is no one to wake.
                let _ = self.wake.send(server);
            }
        }
    }

    /// Whether the topology lists exactly `ports` for `server`.
    pub fn lists(&self, server: &ObjectKey, ports: &[PortStatus]) -> bool {
        self.listed.lock().expect("listed lock").get(server).map(Vec::as_slice) == Some(ports)
    }

    /// Forgets `server`'s listing and hands back its ports.
    pub fn forget(&self, server: &ObjectKey, metrics: &Metrics) {
        self.listed.lock().expect("listed lock").remove(server);
        self.release(server, metrics);
    }

    /// Hands back `server`'s ports.
    pub fn release(&self, server: &ObjectKey, metrics: &Metrics) {
        let mut alloc = self.allocator();
        let key = holder(server);
        let had = alloc.host_ports_held(&key);
        alloc.release(&key);
        if had > 0
            && let Some(held) = self.by_namespace.lock().expect("namespace counts lock").get_mut(server.namespace())
        {
            *held = held.saturating_sub(had);
        }
        metrics.ports(&alloc.usage());
    }
}

/// The namespace part of a holder's key (`namespace/name`).
fn namespace_of(holder: &str) -> &str {
    holder.split_once('/').map_or("", |(ns, _)| ns)
}

/// Rebuilds the allocator from the nodes and the GameServers that exist, so no port is handed
/// out twice after a restart, nor more often than the nodes its holders can run on. A server's
/// ports come from its status, or else from what its zone's topology lists (`listed`, by server
/// key): ports are listed there before its pod is made, and may not have reached its status yet. With `passthrough_deferred` (the platform
/// assigns Passthrough host ports), Passthrough ports are not the allocator's and are left out.
pub fn rebuild(
    alloc: &mut PortAllocator,
    nodes: &[Node],
    servers: &[GameServer],
    listed: &HashMap<ObjectKey, Vec<PortStatus>>,
    passthrough_deferred: bool,
) {
    for node in nodes.iter().filter(|n| crate::placement::node_usable(n)) {
        alloc.node_added(&node.name_any());
    }
    let mut restored = 0;
    for gs in servers {
        let status = gs.status.as_ref();
        let ports = match status.map(|s| &s.ports) {
            Some(p) if !p.is_empty() => p,
            _ => match listed.get(&ObjectKey::of(gs)) {
                Some(p) if !p.is_empty() => p,
                _ => continue,
            },
        };
        let node = status.and_then(|s| s.node_name.as_deref());
        let mut held = allocations_of(ports);
        if passthrough_deferred {
            held.retain(|a| a.policy != PortPolicy::Passthrough);
        }
        // Nodes are counted only for a server that holds host ports.
        let holds_hosts = held.iter().any(|a| a.host_port.is_some());
        let reach =
            gs.spec.template.spec.as_ref().filter(|_| holds_hosts).and_then(|pod| crate::placement::reach(pod, nodes));
        match alloc.restore_within(&holder(&ObjectKey::of(gs)), held, node, reach) {
            Ok(report) if !report.over_committed_ports.is_empty() => {
                tracing::warn!(server = %ObjectKey::of(gs), ports = ?report.over_committed_ports, "restored ports are over-committed");
                restored += 1;
            }
            Ok(_) => restored += 1,
            Err(e) => {
                tracing::warn!(server = %ObjectKey::of(gs), error = %e, "could not restore ports; the server will get new ones")
            }
        }
    }
    tracing::info!(nodes = alloc.node_count(), servers = restored, "port allocations rebuilt");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::GamePort;
    use crate::ports::spec::{requests, status_of};
    use crate::ports::{PortAllocator, PortRanges};

    #[test]
    fn one_namespace_holds_no_more_host_ports_than_its_share() {
        let spec: Vec<GamePort> = serde_json::from_value(serde_json::json!([
            {"name": "a", "containerPort": 7777, "policy": "Dynamic"},
            {"name": "b", "containerPort": 7778, "policy": "Dynamic"}
        ]))
        .unwrap();
        let wanted = requests(&spec);
        let mut alloc = PortAllocator::new("7000-7099".parse::<PortRanges>().unwrap());
        alloc.node_added("n1");
        let ports = PortTable::new(alloc, HashMap::new());
        let server = |ns: &str, name: &str| ObjectKey::new(ns, name);
        let all = || None;
        assert!(ports.hold(&server("team", "s1"), &wanted, Some(5), all).unwrap().1, "new");
        assert!(ports.hold(&server("team", "s2"), &wanted, Some(5), all).is_ok());
        // A server already holding its ports keeps them, at the share or not.
        assert!(!ports.hold(&server("team", "s2"), &wanted, Some(4), || unreachable!("held")).unwrap().1);
        let refused = ports.hold(&server("team", "s3"), &wanted, Some(5), all).unwrap_err();
        assert!(matches!(refused, AllocError::NamespaceShare { held: 4, limit: 5, requested: 2, .. }), "{refused}");
        assert!(refused.to_string().contains("--host-ports-per-namespace"));
        // Another namespace has a share of its own, and a release gives the namespace room again.
        assert!(ports.hold(&server("other", "s1"), &wanted, Some(5), all).is_ok());
        ports.release(&server("team", "s1"), &Metrics::default());
        assert!(ports.hold(&server("team", "s3"), &wanted, Some(5), all).is_ok());
        assert!(ports.hold(&server("team", "s4"), &wanted, None, all).is_ok(), "no limit");
    }

    #[test]
    fn rebuild_takes_ports_from_status_or_else_from_the_topology() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let spec: Vec<GamePort> =
            serde_json::from_value(serde_json::json!([{"name": "game", "containerPort": 7777, "policy": "Dynamic"}]))
                .unwrap();
        // The status entries of the one Dynamic port held at `port`.
        let held_at = |port: u16| {
            let mut a = PortAllocator::new("7000-7009".parse::<PortRanges>().unwrap());
            a.node_added("n1");
            let mut held = a.allocate("x", &requests(&spec)).unwrap();
            held[0].host_port = Some(port);
            status_of(&held)
        };
        let server = |name: &str, reported: Option<u16>| {
            let mut gs: GameServer = serde_json::from_value(serde_json::json!({
                "apiVersion": "gamezone.dev/v1alpha1", "kind": "GameServer",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"zone": "z", "type": "game", "id": 1, "ports": spec, "template": {}}
            }))
            .unwrap();
            gs.status = reported.map(|p| crate::api::GameServerStatus { ports: held_at(p), ..Default::default() });
            gs
        };
        // a: in status; b: only in the topology (its status not written yet); c: nowhere.
        let servers = [server("a", Some(7003)), server("b", None), server("c", None)];
        let listed =
            HashMap::from([(ObjectKey::new("ns", "b"), held_at(7005)), (ObjectKey::new("ns", "a"), held_at(7009))]);
        let mut alloc = PortAllocator::new("7000-7009".parse::<PortRanges>().unwrap());
        rebuild(&mut alloc, &[node], &servers, &listed, false);
        let port_of = |key: &str| alloc.allocation(key).map(|a| a[0].host_port);
        assert_eq!(port_of("ns/a"), Some(Some(7003)), "status wins over the topology");
        assert_eq!(port_of("ns/b"), Some(Some(7005)), "the topology stands in for a status not yet written");
        assert_eq!(port_of("ns/c"), None);
        // What was restored is not handed out again.
        let next = alloc.allocate("ns/d", &requests(&spec)).unwrap();
        assert!(![7003, 7005].contains(&next[0].host_port.unwrap()));
    }
}
