//! What the operator's admin lets zones' authors ask of the nodes. A zone's author picks its
//! Static host ports, tolerations and node selectors, and the operator makes the pods: without
//! these checks, anyone who may write a GameZone could put a pod on the kubelet's port or on a
//! control-plane node. Pure: checked before anything of the zone is made.

use k8s_openapi::api::core::v1::Toleration;

use crate::api::{GameZone, PortPolicy};
use crate::ports::PortRanges;
use crate::{Error, Result};

/// Taints (and node labels) that mark control-plane nodes.
pub const CONTROL_PLANE_KEYS: [&str; 2] = ["node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master"];

/// Static host ports a zone may ask for when the admin says nothing: no well-known port (below
/// 1024: sshd, DNS …), none of the node daemons' (10250-10259: kubelet, kube-proxy, the
/// controller manager and scheduler), none of the NodePort range (30000-32767).
pub const DEFAULT_STATIC_PORTS: &str = "1024-10249,10260-29999,32768-65535";

/// The admin's limits on what a zone asks of the nodes.
#[derive(Clone, Debug)]
pub struct Tenancy {
    /// Host ports a Static port may take (`--static-ports`).
    pub static_ports: PortRanges,
    /// Whether pods may tolerate control-plane taints or select control-plane nodes
    /// (`--allow-control-plane`).
    pub control_plane: bool,
}

impl Default for Tenancy {
    fn default() -> Self {
        Tenancy { static_ports: DEFAULT_STATIC_PORTS.parse().expect("valid ranges"), control_plane: false }
    }
}

/// Fails with the field that asks for what `tenancy` does not allow.
pub fn check(zone: &GameZone, tenancy: &Tenancy) -> Result<()> {
    for (i, service) in zone.spec.services.iter().enumerate() {
        for (j, port) in service.ports.iter().enumerate() {
            let Some(host) = port.host_port.filter(|_| port.policy == PortPolicy::Static) else { continue };
            let allowed =
                u16::try_from(host).is_ok_and(|p| tenancy.static_ports.ranges().iter().any(|r| r.contains(p)));
            if !allowed {
                return Err(Error::invalid(
                    format!("spec.services[{i}].ports[{j}].hostPort"),
                    format!(
                        "host port {host} is not one a zone may take (the operator allows {}, --static-ports): \
                         pick one of those, or use policy Dynamic",
                        tenancy.static_ports
                    ),
                ));
            }
        }
        if !tenancy.control_plane {
            check_placement(&format!("spec.services[{i}]"), &service.tolerations, service.node_selector.keys())?;
        }
    }
    if let Some(m) = zone.spec.migration.as_ref().filter(|_| !tenancy.control_plane) {
        check_placement("spec.migration", &m.tolerations, m.node_selector.keys())?;
    }
    Ok(())
}

/// Refuses a toleration of control-plane taints (or of every taint) and a selector of
/// control-plane nodes.
fn check_placement<'a>(
    field: &str,
    tolerations: &[Toleration],
    selector: impl Iterator<Item = &'a String>,
) -> Result<()> {
    let advice =
        "game pods do not run on control-plane nodes; drop it, or ask the operator's admin (--allow-control-plane)";
    for (k, t) in tolerations.iter().enumerate() {
        let key = t.key.as_deref().unwrap_or_default();
        if CONTROL_PLANE_KEYS.contains(&key) {
            return Err(Error::invalid(format!("{field}.tolerations[{k}]"), format!("tolerates {key}: {advice}")));
        }
        if key.is_empty() && t.operator.as_deref() == Some("Exists") {
            return Err(Error::invalid(
                format!("{field}.tolerations[{k}]"),
                format!("an empty key with operator Exists tolerates every taint, the control plane's too: {advice}"),
            ));
        }
    }
    if let Some(key) = selector.map(String::as_str).find(|k| CONTROL_PLANE_KEYS.contains(k)) {
        return Err(Error::invalid(format!("{field}.nodeSelector"), format!("selects {key}: {advice}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zone(service: serde_json::Value) -> GameZone {
        gamezone_api::fixture::zone("z").services(serde_json::json!([service])).build()
    }

    fn static_port(port: i32) -> GameZone {
        zone(serde_json::json!({"type": "game", "id": 1,
            "ports": [{"name": "p", "containerPort": 7000, "hostPort": port, "policy": "Static"}]}))
    }

    #[test]
    fn static_ports_of_node_daemons_well_known_services_and_node_ports_are_refused() {
        let t = Tenancy::default();
        for port in [22, 53, 443, 10250, 10256, 30080, 32767] {
            let e = check(&static_port(port), &t).unwrap_err().to_string();
            assert!(e.starts_with("spec.services[0].ports[0].hostPort: host port"), "{port}: {e}");
        }
        for port in [1024, 7777, 10249, 10260, 29999, 40000] {
            assert!(check(&static_port(port), &t).is_ok(), "{port}");
        }
        let wide = Tenancy { static_ports: "1-65535".parse().unwrap(), ..Tenancy::default() };
        assert!(check(&static_port(22), &wide).is_ok(), "the admin may allow any");
    }

    #[test]
    fn the_control_plane_is_off_limits_unless_allowed() {
        let tolerates = zone(serde_json::json!({"type": "game", "id": 1,
            "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]}));
        let everything = zone(serde_json::json!({"type": "game", "id": 1, "tolerations": [{"operator": "Exists"}]}));
        let selects = zone(serde_json::json!({"type": "game", "id": 1,
            "nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}));
        let t = Tenancy::default();
        assert!(check(&tolerates, &t).unwrap_err().to_string().starts_with("spec.services[0].tolerations[0]"));
        assert!(check(&everything, &t).unwrap_err().to_string().contains("tolerates every taint"));
        assert!(check(&selects, &t).unwrap_err().to_string().starts_with("spec.services[0].nodeSelector"));
        let allowed = Tenancy { control_plane: true, ..Tenancy::default() };
        for z in [&tolerates, &everything, &selects] {
            assert!(check(z, &allowed).is_ok());
        }
        let spot = zone(serde_json::json!({"type": "game", "id": 1,
            "tolerations": [{"key": "cloud.example/spot", "operator": "Exists"}]}));
        assert!(check(&spot, &t).is_ok(), "other taints are the team's business");
    }
}
