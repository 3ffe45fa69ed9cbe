//! Types shared by GameZone and GameServer.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a port gets its host port (Agones-style port policies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum PortPolicy {
    /// The operator picks a host port from its configured ranges; the container port is as given.
    Dynamic,
    /// The host port given in `hostPort`.
    Static,
    /// The operator picks a port and uses it as both host and container port.
    Passthrough,
    /// No host port: reach the process at the pod IP and container port.
    #[default]
    None,
}

impl PortPolicy {
    /// Whether the operator picks the host port from the configured ranges.
    pub fn picks_from_range(self) -> bool {
        matches!(self, PortPolicy::Dynamic | PortPolicy::Passthrough)
    }
}

impl std::fmt::Display for PortPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Transport protocol of a port. A host port slot covers both protocols, so `TcpUdp` costs one slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum PortProtocol {
    /// TCP.
    #[default]
    Tcp,
    /// UDP.
    Udp,
    /// TCP and UDP on the same port number.
    #[serde(rename = "TCPUDP")]
    TcpUdp,
}

impl PortProtocol {
    /// Whether two protocols share a transport, i.e. could clash on one port number.
    pub fn overlaps(self, other: PortProtocol) -> bool {
        self == other || self == PortProtocol::TcpUdp || other == PortProtocol::TcpUdp
    }

    /// The spelling Kubernetes and the API use: `TCP`, `UDP`, `TCPUDP`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "TCP",
            PortProtocol::Udp => "UDP",
            PortProtocol::TcpUdp => "TCPUDP",
        }
    }
}

impl std::fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A port a game process listens on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.policy != 'Static' || has(self.hostPort)", "message": "a Static port needs hostPort"},
    {"rule": "self.policy == 'Passthrough' || has(self.containerPort)", "message": "containerPort is required unless policy is Passthrough"}
]))]
pub struct GamePort {
    /// Name of the port (a DNS label, unique within the service); also names its env var
    /// `GAMEZONE_PORT_<NAME>`.
    #[schemars(length(min = 1, max = 15), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// Port the process listens on inside the pod (ignored for Passthrough, which uses the host port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub container_port: Option<i32>,
    /// Host port, for the Static policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub host_port: Option<i32>,
    /// Protocol; TCP when empty.
    #[serde(default)]
    pub protocol: PortProtocol,
    /// Port policy; None (pod IP and container port only) when empty.
    #[serde(default)]
    pub policy: PortPolicy,
    /// Container that listens on the port; the service container when empty (name a sidecar here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// Names one key of a Secret in the zone's namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    pub name: String,
    /// Key inside the Secret.
    pub key: String,
}

/// Database coordinates for the zone's MySQL.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MysqlSpec {
    /// Host name or IP of the MySQL server.
    #[schemars(length(min = 1))]
    pub host: String,
    /// Port; 3306 when empty.
    #[serde(default = "default_mysql_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// User name.
    #[schemars(length(min = 1))]
    pub user: String,
    /// Secret key holding the user's password.
    pub password_secret_ref: SecretKeyRef,
    /// Database (schema) name.
    #[schemars(length(min = 1))]
    pub database: String,
}

fn default_mysql_port() -> i32 {
    3306
}

/// Coordinates of the zone's Redis.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Host name or IP of the Redis server.
    #[schemars(length(min = 1))]
    pub host: String,
    /// Port; 6379 when empty.
    #[serde(default = "default_redis_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Secret key holding the Redis password, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
}

fn default_redis_port() -> i32 {
    6379
}
