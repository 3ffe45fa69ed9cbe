//! The GameServer resource: one per server of a zone, owned by its GameZone.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Constraint, GamePort, Lifecycle, PortPolicy, PortProtocol};

/// One server (`<zone>-<type>-<id>`): its ports and the pod that runs it.
/// Made and updated by the zone controller; the server controller runs its Pod.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gamezone.dev",
    version = "v1alpha1",
    kind = "GameServer",
    plural = "gameservers",
    shortname = "gs",
    namespaced,
    status = "GameServerStatus",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state"}"#,
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".status.address"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".status.ports[0].port"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Waiting","type":"string","jsonPath":".status.message","priority":0}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct GameServerSpec {
    /// Name of the GameZone this server belongs to.
    pub zone: String,
    /// Service type.
    #[serde(rename = "type")]
    pub type_: String,
    /// Server id.
    pub id: i64,
    /// Ports of the server and how each gets its host port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<GamePort>,
    /// The pod to run; allocated ports are added to it by the server controller.
    #[schemars(schema_with = "preserve_unknown_fields")]
    pub template: PodTemplateSpec,
    /// Gates, health and readiness, from the zone's service type.
    #[serde(flatten)]
    pub lifecycle: Lifecycle,
    /// Constraints the operator sets: `NotInService` while the server is drained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<Constraint>,
}

impl GameServerStatus {
    /// What the SDK says, when the current pod's process said it (or no pod is named).
    pub fn sdk_of_current_pod(&self) -> Option<&SdkStatus> {
        self.sdk.as_ref().filter(|s| s.said_by(self.pod_uid.as_deref()))
    }

    /// Whether the game says players are on the server: it called Allocate, or Reserve with a
    /// time not yet passed (or none). Such a server is not deleted or replaced, whatever its
    /// gates say, until it returns to Ready or shuts down.
    pub fn holds_players(&self, now: k8s_openapi::jiff::Timestamp) -> Option<String> {
        let sdk = self.sdk_of_current_pod()?;
        match sdk.state? {
            SdkState::Allocated => Some("Allocated through the SDK: players are on it".into()),
            SdkState::Reserved => match &sdk.reserved_until {
                Some(until) if until.0 <= now => None,
                Some(until) => Some(format!("Reserved through the SDK until {}", until.0)),
                None => Some("Reserved through the SDK".into()),
            },
            SdkState::RequestReady | SdkState::Shutdown => None,
        }
    }
}

impl SdkStatus {
    /// Whether the process of pod `uid` said this: a replaced pod's last words are not its
    /// successor's, and words without a pod's uid are no one's (the admission policy refuses
    /// them from a sidecar; counted, a token without a pod could hold a server Allocated).
    pub fn said_by(&self, uid: Option<&str>) -> bool {
        matches!((self.pod_uid.as_deref(), uid), (Some(said_by), Some(uid)) if said_by == uid)
    }
}

impl GameServerSpec {
    /// The effective `NotInService` constraint, while the server is drained.
    pub fn not_in_service(&self) -> Option<&Constraint> {
        self.constraints.iter().find(|c| c.not_in_service())
    }
}

/// Pod templates are validated by the API server when the Pod is created; storing them
/// schemaless keeps the CRD small, as Agones does.
fn preserve_unknown_fields(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Pod template (metadata and spec) of the server's Pod.",
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Observed state of a GameServer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GameServerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where the server is in its life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ServerState>,
    /// Why the server is in that state, when it needs explaining.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Pod IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// IP of the node the pod runs on (reach host ports here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_address: Option<String>,
    /// Node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The server's ports as allocated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortStatus>,
    /// Hash of the pod template the running pod was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_hash: Option<String>,
    /// Name of the current pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// UID of the current pod: what the SDK status is checked against, so a replaced pod's
    /// last words (Shutdown, Unhealthy, Allocated) are not taken for its successor's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Why this server copies the artifacts tree from the registry instead of mounting the
    /// zone's tree image: the node that mounted the image wrong and what its pod found. Set by
    /// the server controller, read by the zone controller, kept for the server's life.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_copied: Option<String>,
    /// Conditions: Ready, PortsAllocated (the operator's), and gate conditions (the game's, set
    /// through the SDK, with reason `SetCondition`, or by webhooks). Each entry is owned by whoever
    /// set it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// What the process asked for through its SDK sidecar, and its health. Written only by the
    /// sidecar (field manager `gamezone-sdk`); the server controller reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<SdkStatus>,
}

/// What a server's process asked for through the SDK, and how its health pings go.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SdkStatus {
    /// UID of the pod whose process this is: the sidecar writes it when it starts, which also
    /// clears what the previous pod's process said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The state the process asked for last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<SdkState>,
    /// When `state` is Reserved: until when (RFC 3339); absent means until changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_until: Option<Time>,
    /// When the process asked for `state`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_time: Option<Time>,
    /// Health judged from the process's pings; absent until the first ping or missed check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<SdkHealth>,
    /// When `health` last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_time: Option<Time>,
}

/// A state a process asks for through the SDK (Agones' names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SdkState {
    /// Ready: the process can take players (Agones `Ready()`).
    RequestReady,
    /// The process took a match by itself (Agones `Allocate()`).
    Allocated,
    /// Keep the server out of allocation and scale-down until `reservedUntil` (Agones `Reserve()`).
    Reserved,
    /// The process is done; the pod may go (Agones `Shutdown()`).
    Shutdown,
}

/// Health of a process as its pings show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SdkHealth {
    /// Pings arrive within the period.
    Healthy,
    /// `failureThreshold` checks in a row saw no ping; final, as in Agones.
    Unhealthy,
}

/// Life of a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServerState {
    /// Waiting for host ports (see `message`).
    PortAllocation,
    /// The pod is being created.
    Creating,
    /// The pod waits for a node.
    Scheduling,
    /// The pod is on a node, its containers are starting.
    Starting,
    /// The process is running and ready.
    Ready,
    /// The pod failed; it will be replaced.
    Unhealthy,
    /// The pod is being replaced by one from a newer template.
    Updating,
    /// The pod is Ready and the game must still call Ready through the SDK (`ready: Sdk`), or a
    /// readiness gate is not True yet.
    RequestReady,
    /// Marked `NotInService`: no new players; deleted once its deletable gates are True.
    Draining,
    /// The game asked to shut down; the pod is replaced while the server is wanted.
    Shutdown,
}

/// One allocated port of a server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortStatus {
    /// Port name.
    pub name: String,
    /// The port to connect to: the host port when there is one, else the container port.
    pub port: i32,
    /// Port inside the pod.
    pub container_port: i32,
    /// Port on the node, when the policy gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<i32>,
    /// Protocol.
    pub protocol: PortProtocol,
    /// Container listening on the port.
    #[serde(default)]
    pub container: String,
    /// Policy the port was allocated under.
    #[serde(default)]
    pub policy: PortPolicy,
}
