//! Turning allocations into what a Pod carries: container ports and env vars.

use serde::{Deserialize, Serialize};

use super::types::{Allocation, PortProtocol};

/// Prefix of the env vars that tell a container its ports.
pub const PORT_ENV_PREFIX: &str = "GAMEZONE_PORT_";

/// Env var name for port `name`: `GAMEZONE_PORT_` + the name upper-cased, with every
/// character that is not an ASCII letter or digit replaced by `_` (`game-udp` → `GAMEZONE_PORT_GAME_UDP`).
pub fn port_env_name(name: &str) -> String {
    let mut env = String::with_capacity(PORT_ENV_PREFIX.len() + name.len());
    env.push_str(PORT_ENV_PREFIX);
    env.extend(name.chars().map(env_char));
    env
}

fn env_char(c: char) -> char {
    if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }
}

/// Whether two port names map to the same env var, without building either.
pub(super) fn same_env_name(a: &str, b: &str) -> bool {
    a.chars().map(env_char).eq(b.chars().map(env_char))
}

/// Env vars (name, value) announcing each allocated port. The value is the port clients connect
/// to: the host port, or the container port for policy None (reached on the pod IP).
pub fn port_env(allocations: &[Allocation]) -> Vec<(String, String)> {
    allocations.iter().map(|a| (port_env_name(&a.name), a.host_port.unwrap_or(a.container_port).to_string())).collect()
}

/// A protocol as a Pod's `containerPort.protocol` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WireProtocol {
    /// `TCP`.
    Tcp,
    /// `UDP`.
    Udp,
}

impl WireProtocol {
    /// The Kubernetes spelling, `TCP` or `UDP`.
    pub fn as_str(self) -> &'static str {
        match self {
            WireProtocol::Tcp => "TCP",
            WireProtocol::Udp => "UDP",
        }
    }
}

/// The Pod protocols `protocol` needs: `TcpUdp` is two entries on the same numbers.
pub fn wire(protocol: PortProtocol) -> &'static [WireProtocol] {
    match protocol {
        PortProtocol::Tcp => &[WireProtocol::Tcp],
        PortProtocol::Udp => &[WireProtocol::Udp],
        PortProtocol::TcpUdp => &[WireProtocol::Tcp, WireProtocol::Udp],
    }
}

/// One `containerPort` entry for a Pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPort {
    /// Container the entry belongs in.
    pub container: String,
    /// `containerPort`.
    pub container_port: u16,
    /// `hostPort`, absent for policy None.
    pub host_port: Option<u16>,
    /// `protocol`.
    pub protocol: WireProtocol,
}

/// The `containerPort` entries a Pod needs for `allocations`, in allocation order.
pub fn pod_ports(allocations: &[Allocation]) -> Vec<PodPort> {
    allocations
        .iter()
        .flat_map(|a| {
            wire(a.protocol).iter().map(|&protocol| PodPort {
                container: a.container.clone(),
                container_port: a.container_port,
                host_port: a.host_port,
                protocol,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortPolicy;

    #[test]
    fn env_names_are_shell_safe() {
        assert_eq!(port_env_name("game"), "GAMEZONE_PORT_GAME");
        assert_eq!(port_env_name("game-udp.v2"), "GAMEZONE_PORT_GAME_UDP_V2");
        assert_eq!(port_env_name("über"), "GAMEZONE_PORT__BER");
    }

    #[test]
    fn tcpudp_expands_to_two_entries_with_the_same_numbers() {
        let allocs = vec![
            Allocation {
                name: "game".into(),
                container: "server".into(),
                container_port: 7777,
                host_port: Some(7042),
                protocol: PortProtocol::TcpUdp,
                policy: PortPolicy::Dynamic,
            },
            Allocation {
                name: "metrics".into(),
                container: "sidecar".into(),
                container_port: 9090,
                host_port: None,
                protocol: PortProtocol::Tcp,
                policy: PortPolicy::None,
            },
        ];
        let ports = pod_ports(&allocs);
        let tuples: Vec<_> =
            ports.iter().map(|p| (p.container.as_str(), p.container_port, p.host_port, p.protocol.as_str())).collect();
        assert_eq!(
            tuples,
            vec![
                ("server", 7777, Some(7042), "TCP"),
                ("server", 7777, Some(7042), "UDP"),
                ("sidecar", 9090, None, "TCP"),
            ]
        );
        assert_eq!(
            port_env(&allocs),
            vec![
                ("GAMEZONE_PORT_GAME".to_owned(), "7042".to_owned()),
                ("GAMEZONE_PORT_METRICS".to_owned(), "9090".to_owned())
            ]
        );
    }
}
