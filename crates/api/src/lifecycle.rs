//! How a service type's servers live and leave, player-safely: readiness and deletable gates
//! (Carrier), health and SDK readiness (Agones), drains and rolling updates.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Interval;

/// The constraint the operator sets on a server it wants gone: players must leave it.
pub const NOT_IN_SERVICE: &str = "NotInService";

/// Gates, health and readiness of a service type, copied into each of its GameServers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    /// Condition types that must all be True (set by the game through the SDK, or by a
    /// ReadinessWebhook) before a server counts as Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub readiness_gates: Vec<String>,
    /// Condition types that must all be True before a server that is being drained
    /// (`NotInService`) is deleted: the game says its players have left.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub deletable_gates: Vec<String>,
    /// Name of a WebhookConfiguration in the zone's namespace whose webhooks set the gates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_config: Option<String>,
    /// Health pings the game sends through the SDK.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// What makes a server Ready: its pod (`Pod`, no game code change) or the game's SDK call
    /// (`Sdk`). `Pod` when empty.
    #[serde(default, skip_serializing_if = "is_default")]
    pub ready: ReadyMode,
    /// How long a drained server waits for its deletable gates before it is deleted anyway,
    /// e.g. `30m`; without it, as long as it takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout: Option<Interval>,
    /// When the cluster may evict a server's pod (a node drain, the cluster autoscaler, a
    /// descheduler): `Gates` (default) exactly when the operator would delete the server
    /// itself; `Always` at any time (stateless servers, load-test bots).
    #[serde(default, skip_serializing_if = "is_default")]
    pub eviction: Eviction,
}

/// When the cluster may evict a server's pod. The operator marks each pod (label
/// `gamezone.dev/evictable`, the cluster autoscaler's `safe-to-evict` annotation) and each
/// zone's PodDisruptionBudget refuses evictions of the pods marked `false`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Eviction {
    /// Not while the server may hold players: Allocated or Reserved through the SDK, or serving
    /// with a deletable gate that is not True (unless its drain timed out). Once it is
    /// deletable by the rules the operator itself follows, it may be evicted.
    #[default]
    Gates,
    /// At any time, whatever the gates say.
    Always,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// SDK health checking, as Agones does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Turns health checking off.
    #[serde(default)]
    pub disabled: bool,
    /// Seconds after the process starts before pings are expected; 5 when empty.
    #[serde(default = "five")]
    #[schemars(range(min = 0, max = 3600))]
    pub initial_delay_seconds: i32,
    /// Seconds between expected pings; 5 when empty.
    #[serde(default = "five")]
    #[schemars(range(min = 1, max = 3600))]
    pub period_seconds: i32,
    /// Missed periods in a row before the server is Unhealthy; 3 when empty.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
}

impl Default for Health {
    fn default() -> Self {
        Health { disabled: false, initial_delay_seconds: 5, period_seconds: 5, failure_threshold: 3 }
    }
}

fn five() -> i32 {
    5
}

fn three() -> i32 {
    3
}

/// What makes a server Ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ReadyMode {
    /// The pod's readiness (and the readiness gates).
    #[default]
    Pod,
    /// The game calls Ready through the SDK (and the readiness gates).
    Sdk,
}

/// How the servers of a service type move to a new template (image, args, env, pins).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpdateStrategy {
    /// `RollingUpdate` (default): a few at a time, each drained first; `Recreate`: drain all,
    /// then replace all.
    #[serde(default, rename = "type")]
    pub type_: UpdateType,
    /// For `RollingUpdate`: how many servers may be out at once, a number or a percentage of
    /// the type's servers (rounded down, at least 1); 1 when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Kind of update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UpdateType {
    /// A few servers at a time, each drained before its pod is replaced.
    #[default]
    RollingUpdate,
    /// Every server drained, then all replaced.
    Recreate,
}

impl UpdateStrategy {
    /// How many of `servers` may be out at once.
    pub fn max_unavailable(&self, servers: usize) -> Result<usize, String> {
        if self.type_ == UpdateType::Recreate {
            return Ok(servers.max(1));
        }
        let n = match &self.max_unavailable {
            None => 1,
            Some(IntOrString::Int(n)) if *n >= 1 => *n as usize,
            Some(IntOrString::Int(n)) => return Err(format!("{n} must be at least 1")),
            Some(IntOrString::String(s)) => {
                let pct: usize = s
                    .strip_suffix('%')
                    .and_then(|p| p.parse().ok())
                    .filter(|p| (1..=100).contains(p))
                    .ok_or_else(|| format!("{s:?} is neither a number nor a percentage such as 25%"))?;
                (servers * pct / 100).max(1)
            }
        };
        Ok(n)
    }
}

/// A constraint on a server (Carrier's): `NotInService` marks one the operator wants gone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Constraint {
    /// Constraint type, e.g. `NotInService`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether it is in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<bool>,
    /// Why it was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_added: Option<Time>,
}

impl Constraint {
    /// Whether this is an effective `NotInService`.
    pub fn not_in_service(&self) -> bool {
        self.type_ == NOT_IN_SERVICE && self.effective != Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unavailable_is_a_number_or_a_share_of_the_servers() {
        let s = |v: Option<IntOrString>| UpdateStrategy { type_: UpdateType::RollingUpdate, max_unavailable: v };
        assert_eq!(s(None).max_unavailable(10), Ok(1));
        assert_eq!(s(Some(IntOrString::Int(3))).max_unavailable(10), Ok(3));
        assert_eq!(s(Some(IntOrString::String("25%".into()))).max_unavailable(10), Ok(2));
        assert_eq!(s(Some(IntOrString::String("10%".into()))).max_unavailable(3), Ok(1), "at least one");
        assert!(s(Some(IntOrString::String("x".into()))).max_unavailable(3).unwrap_err().contains("25%"));
        assert!(s(Some(IntOrString::Int(0))).max_unavailable(3).is_err());
        let recreate = UpdateStrategy { type_: UpdateType::Recreate, max_unavailable: None };
        assert_eq!(recreate.max_unavailable(7), Ok(7));
    }
}
