//! Between a GameServer's ports and the allocator's: requests from the spec, status from
//! allocations and back, the Passthrough ports left to the platform, and a topology's listing.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use super::{Allocation, PortPolicy, PortRequest};
use crate::api::{GamePort, PortStatus};
use crate::key::ObjectKey;
use crate::zone::SERVER_CONTAINER;

/// The port allocator's name for a server's holdings: its key, as `namespace/name`.
pub fn holder(server: &ObjectKey) -> String {
    server.to_string()
}

/// The ports a zone's topology ConfigMap lists, by server.
pub fn listed_in(topology: &ConfigMap) -> impl Iterator<Item = (ObjectKey, Vec<PortStatus>)> {
    let ns = topology.namespace().unwrap_or_default();
    crate::zone::topology_ports(topology).into_iter().map(move |(name, ports)| (ObjectKey::new(&ns, name), ports))
}

/// Splits requests into those the allocator serves and the Passthrough ports left to the
/// platform (when `passthrough_deferred`), each of the latter with its placeholder allocation.
pub fn defer_passthrough(
    wanted: Vec<PortRequest>,
    passthrough_deferred: bool,
) -> (Vec<PortRequest>, Vec<(Allocation, super::passthrough::Deferred)>) {
    if !passthrough_deferred {
        return (wanted, Vec::new());
    }
    let (deferred, kept): (Vec<_>, Vec<_>) = wanted.into_iter().partition(|r| r.policy == PortPolicy::Passthrough);
    let placeholders = deferred
        .into_iter()
        .zip(super::passthrough::PLACEHOLDER_BASE..)
        .map(|(r, placeholder)| {
            let alloc = Allocation {
                name: r.name.clone(),
                container: r.container.clone(),
                container_port: placeholder,
                host_port: Some(placeholder),
                protocol: r.protocol,
                policy: r.policy,
            };
            (alloc, super::passthrough::Deferred { name: r.name, container: r.container, placeholder })
        })
        .collect();
    (kept, placeholders)
}

/// The allocator's requests for a GameServer's ports.
pub fn requests(ports: &[GamePort]) -> Vec<PortRequest> {
    ports
        .iter()
        .map(|p| PortRequest {
            name: p.name.clone(),
            container: p.container.clone().unwrap_or_else(|| SERVER_CONTAINER.to_string()),
            // The API documents containerPort as ignored for Passthrough: the allocated port is used.
            container_port: match p.policy {
                PortPolicy::Passthrough => None,
                _ => p.container_port.and_then(|c| u16::try_from(c).ok()),
            },
            // Only Static takes the user's host port; the others are given one or none.
            host_port: match p.policy {
                PortPolicy::Static => p.host_port.and_then(|h| u16::try_from(h).ok()),
                _ => None,
            },
            protocol: p.protocol,
            policy: p.policy,
        })
        .collect()
}

/// Status entries of allocations.
pub fn status_of(allocations: &[Allocation]) -> Vec<PortStatus> {
    allocations
        .iter()
        .map(|a| PortStatus {
            name: a.name.clone(),
            port: i32::from(a.host_port.unwrap_or(a.container_port)),
            container_port: i32::from(a.container_port),
            host_port: a.host_port.map(i32::from),
            protocol: a.protocol,
            container: a.container.clone(),
            policy: a.policy,
        })
        .collect()
}

/// Allocations recorded in a status (for the rebuild at start).
pub fn allocations_of(status: &[PortStatus]) -> Vec<Allocation> {
    status
        .iter()
        .map(|p| Allocation {
            name: p.name.clone(),
            container: p.container.clone(),
            container_port: p.container_port as u16,
            host_port: p.host_port.map(|h| h as u16),
            protocol: p.protocol,
            policy: p.policy,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{PortAllocator, PortRanges};

    #[test]
    fn fields_a_policy_ignores_do_not_fail_the_allocation() {
        let spec: Vec<GamePort> = serde_json::from_value(serde_json::json!([
            {"name": "pass", "containerPort": 7777, "hostPort": 1, "policy": "Passthrough"},
            {"name": "dyn", "containerPort": 8000, "hostPort": 2, "policy": "Dynamic"},
            {"name": "fixed", "containerPort": 9000, "hostPort": 7500, "policy": "Static"}
        ]))
        .unwrap();
        let mut alloc = PortAllocator::new("7000-7099".parse::<PortRanges>().unwrap());
        alloc.node_added("n1");
        let got = alloc.allocate("ns/a", &requests(&spec)).expect("allocates");
        let status = status_of(&got);
        assert_eq!(Some(status[0].container_port), status[0].host_port, "passthrough uses the allocated port");
        assert!((7000..7100).contains(&status[1].host_port.unwrap()));
        assert_eq!(status[1].container_port, 8000);
        assert_eq!(status[2].host_port, Some(7500));
        assert_eq!(allocations_of(&status), got, "status round-trips for the rebuild");
    }
}
