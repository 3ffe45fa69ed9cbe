//! The zone's topology document (`GAMEZONE_TOPOLOGY`): every instance with its DNS name and ports.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::settings::port_env_suffix;

/// The document the operator writes into the zone's topology ConfigMap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// Zone name.
    #[serde(default)]
    pub zone: String,
    /// Numeric zone id.
    #[serde(default)]
    pub zone_id: i64,
    /// Every service instance of the zone.
    #[serde(default)]
    pub instances: Vec<Instance>,
}

/// One service instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    /// Instance name, `<zone>-<type>-<id>`.
    pub name: String,
    /// Service type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Instance id.
    pub id: i64,
    /// Stable DNS name inside the cluster; resolves to the pod IP.
    #[serde(default)]
    pub dns: String,
    /// Allocated ports; empty until allocated.
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// One allocated port of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// Port name.
    pub name: String,
    /// The port clients connect to: the host port when there is one, else the container port.
    #[serde(default)]
    pub port: u16,
    /// The port the process listens on inside the pod.
    #[serde(default)]
    pub container_port: u16,
    /// Port on the node, when the policy gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// TCP, UDP or TCPUDP.
    #[serde(default)]
    pub protocol: Protocol,
    /// Container listening on the port; empty means the server container.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    /// Port policy the port was allocated under.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub policy: String,
}

/// Transport protocol of a port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    /// TCP only.
    #[default]
    Tcp,
    /// UDP only.
    Udp,
    /// Both on the same number.
    Tcpudp,
}

impl Protocol {
    /// Whether a TCP listener belongs on this port.
    pub fn tcp(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Tcpudp)
    }

    /// Whether a UDP socket belongs on this port.
    pub fn udp(self) -> bool {
        matches!(self, Protocol::Udp | Protocol::Tcpudp)
    }
}

impl Topology {
    /// Reads and parses the document; the error says which file and what is wrong.
    pub fn read(path: &Path) -> Result<Topology, String> {
        let text = std::fs::read(path).map_err(|e| format!("cannot read topology {}: {e}", path.display()))?;
        serde_json::from_slice(&text).map_err(|e| format!("topology {} is not valid: {e}", path.display()))
    }

    /// The instance named `name`.
    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.instances.iter().find(|i| i.name == name)
    }

    /// Every instance but `me`.
    pub fn peers<'a>(&'a self, me: &'a str) -> impl Iterator<Item = &'a Instance> + 'a {
        self.instances.iter().filter(move |i| i.name != me)
    }
}

impl Instance {
    /// The port whose `GAMEZONE_PORT_*` suffix is `suffix`.
    pub fn port_by_env_suffix(&self, suffix: &str) -> Option<&Port> {
        self.ports.iter().find(|p| port_env_suffix(&p.name) == suffix)
    }

    /// The TCP port to reach this instance on from another pod: `name` if given, else the first
    /// port with TCP.
    pub fn tcp_port(&self, name: Option<&str>) -> Result<&Port, String> {
        match name {
            Some(n) => {
                let p = self.ports.iter().find(|p| p.name == n).ok_or_else(|| {
                    format!("{} has no port named {n}; it has {}", self.name, self.port_names().join(", "))
                })?;
                if p.protocol.tcp() { Ok(p) } else { Err(format!("port {n} of {} is UDP only", self.name)) }
            }
            None => self
                .ports
                .iter()
                .find(|p| p.protocol.tcp())
                .ok_or_else(|| format!("{} lists no TCP port (ports: {})", self.name, self.port_names().join(", "))),
        }
    }

    fn port_names(&self) -> Vec<&str> {
        self.ports.iter().map(|p| p.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape the operator's topology ConfigMap builder writes.
    const DOC: &str = r#"{
      "zone": "zone1",
      "zoneId": 101,
      "instances": [
        {"name": "zone1-game-1", "type": "game", "id": 1, "dns": "zone1-game-1.zone1.ns.svc",
         "ports": [{"name": "game", "port": 7001, "containerPort": 7777, "hostPort": 7001,
                    "protocol": "TCPUDP", "container": "server", "policy": "Dynamic"},
                   {"name": "voice-udp", "port": 9000, "containerPort": 9000, "protocol": "UDP",
                    "container": "server", "policy": "None"}]},
        {"name": "zone1-gateway-1", "type": "gateway", "id": 1, "dns": "zone1-gateway-1.zone1.ns.svc", "ports": []}
      ]
    }"#;

    #[test]
    fn parses_the_operators_document() {
        let t: Topology = serde_json::from_str(DOC).unwrap();
        assert_eq!((t.zone.as_str(), t.zone_id, t.instances.len()), ("zone1", 101, 2));
        let game = t.instance("zone1-game-1").unwrap();
        assert_eq!(game.ports[0].container_port, 7777);
        assert_eq!(game.ports[0].host_port, Some(7001));
        assert_eq!(game.ports[0].protocol, Protocol::Tcpudp);
        assert_eq!(game.port_by_env_suffix("VOICE_UDP").map(|p| p.port), Some(9000));
        let peers: Vec<_> = t.peers("zone1-game-1").map(|i| i.name.as_str()).collect();
        assert_eq!(peers, ["zone1-gateway-1"]);
    }

    #[test]
    fn tcp_port_picks_the_first_tcp_port_or_explains() {
        let t: Topology = serde_json::from_str(DOC).unwrap();
        let game = t.instance("zone1-game-1").unwrap();
        assert_eq!(game.tcp_port(None).unwrap().name, "game");
        assert!(game.tcp_port(Some("voice-udp")).unwrap_err().contains("UDP only"));
        assert!(game.tcp_port(Some("nope")).unwrap_err().contains("has game, voice-udp"));
        let gw = t.instance("zone1-gateway-1").unwrap();
        assert!(gw.tcp_port(None).unwrap_err().contains("no TCP port"));
    }

    #[test]
    fn missing_protocol_means_tcp() {
        let p: Port = serde_json::from_str(r#"{"name":"a","port":1,"containerPort":1}"#).unwrap();
        assert!(p.protocol.tcp() && !p.protocol.udp());
    }
}
