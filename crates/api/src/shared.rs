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
    #[schemars(length(min = 1, max = 253), regex(pattern = crate::layer::SECRET_NAME_PATTERN))]
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

/// A whole number of seconds, minutes or hours written as `30s`, `5m`, `1h`: parsed once, when the
/// object is read; the CRD's pattern makes the API server refuse anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Interval(std::time::Duration);

impl Interval {
    /// The CRD pattern; seven digits at most, so every value the API server admits fits a duration.
    pub const PATTERN: &str = r"^[0-9]{1,7}(s|m|h)$";

    /// The interval as a duration.
    pub fn duration(self) -> std::time::Duration {
        self.0
    }

    /// An interval of whole seconds (shown as `Ns`).
    pub fn from_secs(secs: u64) -> Self {
        Interval(std::time::Duration::from_secs(secs))
    }
}

impl std::str::FromStr for Interval {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a duration such as 30s, 5m or 1h");
        let (num, unit) = text.split_at(text.len().saturating_sub(1));
        if num.is_empty() || num.len() > 7 || !num.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let n: u64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "s" => n,
            "m" => n * 60,
            "h" => n * 3600,
            _ => return Err(bad()),
        };
        Ok(Interval(std::time::Duration::from_secs(secs)))
    }
}

impl std::fmt::Display for Interval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        match secs {
            s if s > 0 && s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s > 0 && s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Interval {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Interval {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Interval {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Interval".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "pattern": Interval::PATTERN})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_is_parsed_once_and_written_back_as_given() {
        for (text, secs) in [("30s", 30), ("5m", 300), ("1h", 3600), ("0s", 0), ("9999999h", 9_999_999 * 3600)] {
            let i: Interval = text.parse().unwrap();
            assert_eq!(i.duration().as_secs(), secs, "{text}");
            assert_eq!(i.to_string(), text);
            assert_eq!(serde_json::to_value(i).unwrap(), serde_json::json!(text));
        }
        for bad in ["", "5", "m", "5d", "1.5h", "-1s", "12345678s", " 5m"] {
            let err = bad.parse::<Interval>().unwrap_err();
            assert!(err.contains("30s, 5m or 1h"), "{bad:?}: {err}");
        }
        let err = serde_json::from_value::<Interval>(serde_json::json!("5 minutes")).unwrap_err();
        assert!(err.to_string().contains("\"5 minutes\" is not a duration"), "{err}");
    }

    #[test]
    fn the_schema_pattern_admits_exactly_what_parses() {
        let schema = serde_json::to_value(schemars::schema_for!(Interval)).unwrap();
        assert_eq!(schema["pattern"], Interval::PATTERN);
        assert_eq!(schema["type"], "string");
    }
}
