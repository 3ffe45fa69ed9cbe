//! The GameZone resource: one object describing a whole game zone.

use std::collections::BTreeMap;

use crate::layer::Layer;
use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements, SecurityContext, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{EditsSpec, GamePort, Interval, Lifecycle, MysqlSpec, RedisSpec, UpdateStrategy};

/// A game zone (大区): which servers run, from which image, against which Redis and MySQL,
/// with which artifacts layered into their file system.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gamezone.dev",
    version = "v1alpha1",
    kind = "GameZone",
    plural = "gamezones",
    shortname = "gz",
    namespaced,
    status = "GameZoneStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Zone","type":"integer","jsonPath":".spec.zoneId"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.readyText"}"#,
    printcolumn = r#"{"name":"Artifacts","type":"string","jsonPath":".status.artifactRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.services.all(s, has(s.image) || has(self.defaultImage))",
     "message": "every service needs an image: set spec.defaultImage or services[].image"},
    {"rule": "self.services.all(a, self.services.exists_one(b, b.type == a.type))",
     "message": "each service type may appear once in spec.services; use id..endId for several servers"},
    {"rule": "!has(self.edits) || (has(self.artifacts) && size(self.artifacts) > 0)",
     "message": "spec.edits needs spec.artifacts: the edits are laid over the artifacts' folder"}
]))]
pub struct GameZoneSpec {
    /// The zone's number, given to every process as `GAMEZONE_ZONE_ID`.
    #[schemars(range(min = 0))]
    pub zone_id: i64,
    /// Image of the service binary, used by every service without its own `image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_image: Option<String>,
    /// The processes of the zone: each a service type with one server (`id`) or a range (`id..endId`).
    #[schemars(length(min = 1, max = 64))]
    pub services: Vec<ServiceType>,
    /// Database migration run (the dbmigrater image) before servers move to a new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationSpec>,
    /// The zone's Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisSpec>,
    /// The zone's MySQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mysql: Option<MysqlSpec>,
    /// Artifact layers (resources, configs) placed into every process's file system, top to bottom;
    /// later layers override earlier ones. Paths are absolute paths inside the containers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub artifacts: Vec<Layer>,
    /// How often moving artifact references (branches, prefixes) are resolved again, e.g. `5m`.
    /// Default `5m`; `0s` resolves only when the spec changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_interval: Option<Interval>,
    /// Put the artifacts on one zone-wide ReadWriteMany volume instead of a per-pod emptyDir, so
    /// testers can edit files every process sees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_artifacts: Option<SharedArtifacts>,
    /// Image pull secrets for every pod of the zone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<String>,
    /// Live edits for a test zone: an SMB share laid over the artifacts of every server. Off
    /// when empty; turning it off removes the share, its claim (unless `keepClaim`) and the
    /// servers' edits sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edits: Option<EditsSpec>,
}

/// One service type of the zone and its servers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.endId) || self.id <= self.endId", "message": "endId must be >= id"},
    {"rule": "!has(self.endId) || self.endId - self.id < 1000", "message": "a range may hold at most 1000 servers"},
    {"rule": "!has(self.ports) || self.ports.all(a, self.ports.exists_one(b, b.name == a.name))", "message": "port names must be unique within a service"}
]))]
pub struct ServiceType {
    /// Service type (game, db, gateway, auth ...): a DNS label passed to the image as its first argument.
    #[serde(rename = "type")]
    #[schemars(length(min = 1, max = 20), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub type_: String,
    /// First (or only) server id.
    #[schemars(range(min = 0, max = 99999))]
    pub id: i64,
    /// Last server id of a range (inclusive); one server when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 99999))]
    pub end_id: Option<i64>,
    /// Image for this service only (a hot fix); overrides `defaultImage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Extra arguments after the type and id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// CPU and memory requests and limits of the service container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the servers must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the servers' pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Security context of the service container. When set, the operator's own containers in
    /// the pod (the artifacts init container, the SDK sidecar) run as PodSecurity `restricted`
    /// asks (non-root, no privilege escalation, every capability dropped, the runtime's default
    /// seccomp profile), so a pod whose service container does too is admitted in a namespace
    /// that enforces `restricted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// Ports the process listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ports: Vec<GamePort>,
    /// Kubernetes Services in front of the servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Expose>,
    /// Gates, health, readiness and drains of the servers (copied into each GameServer).
    #[serde(flatten)]
    pub lifecycle: Lifecycle,
    /// How servers move to a new template; `RollingUpdate` of one at a time when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<UpdateStrategy>,
    /// Where the game serves its own Prometheus metrics, if it does: the operator publishes the
    /// port on the game container as `metrics` (no host port) and marks the pod for scraping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<GameMetrics>,
}

/// Where a game serves its Prometheus metrics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GameMetrics {
    /// The container port of the metrics endpoint.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Its HTTP path.
    #[serde(default = "default_metrics_path")]
    pub path: String,
}

fn default_metrics_path() -> String {
    "/metrics".into()
}

/// The container port name of a game's metrics endpoint ([`ServiceType::metrics`]), which a
/// PodMonitor's `podMetricsEndpoints` names.
pub const METRICS_PORT_NAME: &str = "metrics";

impl ServiceType {
    /// The server ids of this service, `id..=endId`.
    pub fn ids(&self) -> std::ops::RangeInclusive<i64> {
        self.id..=self.end_id.unwrap_or(self.id).max(self.id)
    }
}

/// Which Services expose a service type.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Expose {
    /// One Service per server, named like the server (`<zone>-<type>-<id>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_instance: Option<Exposure>,
    /// One Service for all servers of the type, named `<zone>-<type>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_type: Option<Exposure>,
}

/// Shape of an exposing Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Exposure {
    /// Service type; ClusterIP when empty.
    #[serde(default, rename = "type")]
    pub type_: ExposureType,
    /// Annotations for the Service (MetalLB address pools, cloud load-balancer settings ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Load balancer class, for clusters with several load-balancer implementations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer_class: Option<String>,
    /// DNS name for external-dns, with `{instance}`, `{type}`, `{id}`, `{zone}` and `{zoneId}` replaced,
    /// e.g. `{instance}.zone.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Kubernetes Service type of an exposure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ExposureType {
    /// Reachable inside the cluster.
    #[default]
    ClusterIP,
    /// Reachable on every node's port.
    NodePort,
    /// Reachable through a load balancer (MetalLB on-prem, the cloud's elsewhere).
    LoadBalancer,
}

/// The database migration Job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationSpec {
    /// The dbmigrater image.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Arguments of the migrater.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Retries before the migration counts as failed; 2 when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: Option<i32>,
    /// Node labels the migration's pod must run on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the migration's pod.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Security context of the migrater's container. When set, the artifacts init container
    /// of its pod runs as PodSecurity `restricted` asks, as a service type's does, so the Job's
    /// pod is admitted in a namespace that enforces `restricted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

/// A zone-wide ReadWriteMany volume for artifacts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedArtifacts {
    /// Storage class of the claim (one that supports ReadWriteMany: NFS, CephFS, SMB ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Requested size, e.g. `20Gi`.
    #[schemars(regex(pattern = r"^[0-9]+(Mi|Gi|Ti)$"))]
    pub size: String,
}

/// Observed state of a GameZone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GameZoneStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One word for where the zone is: Pending, Resolving, Migrating, Deploying, Running, Degraded, Terminating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<ZonePhase>,
    /// Conditions: Ready, ArtifactsReady, Migrated, ServersReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The pinned revision of each artifact layer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<ArtifactStatus>,
    /// Short digest over all pinned revisions, shown by `kubectl get gz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_revision: Option<String>,
    /// Hash of the `spec.artifacts` the pins were resolved from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_hash: Option<String>,
    /// When the artifacts were last resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts_resolved_at: Option<Time>,
    /// The migration of the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<VersionJobStatus>,
    /// The pack of the current version's artifacts into the operator's artifact registry
    /// (`--artifact-registry`): each layer pin fetched from its origin once; servers and the
    /// migration copy from the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<VersionJobStatus>,
    /// The current pins' tree as one image in the artifact registry, once packed: servers
    /// mount it as an `image` volume (or copy its layers where they cannot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_image: Option<crate::artifacts::TreeImage>,
    /// Servers wanted.
    #[serde(default)]
    pub desired_servers: i32,
    /// Servers Ready.
    #[serde(default)]
    pub ready_servers: i32,
    /// `ready/desired`, for `kubectl get gz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_text: Option<String>,
    /// How to reach exposed services from outside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// The live edits share, when `spec.edits` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edits: Option<super::ZoneEditsStatus>,
}

/// Where a zone is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ZonePhase {
    /// Accepted, nothing done yet.
    Pending,
    /// Pinning artifact revisions.
    Resolving,
    /// The pack Job of the current version is putting its layers in the artifact registry.
    Packing,
    /// The migration Job of the current version is running.
    Migrating,
    /// Servers are being created or replaced.
    Deploying,
    /// Every server is Ready.
    Running,
    /// Something needs a person: see the conditions.
    Degraded,
    /// Being deleted.
    Terminating,
}

/// The pinned revision of one artifact layer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactStatus {
    /// Index of the layer in `spec.artifacts`.
    pub layer: i32,
    /// The source, without credentials.
    pub source: String,
    /// The exact revision: a git commit, `sha256:` digest of an S3 listing, or `<changelist>@sha256:` of a p4 export.
    pub revision: String,
    /// The layer at that revision as packed in the operator's artifact registry, once packed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<PackedLayer>,
}

/// One layer pin in the artifact registry: what the pods copy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PackedLayer {
    /// The OCI layer's digest (`sha256:…`).
    pub digest: String,
    /// Its size in bytes (an uncompressed tar of the layer's files).
    pub size: i64,
}

/// A Job one version of the zone waits for: its migration, or the pack of its artifacts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionJobStatus {
    /// Hash of the Job's inputs (for a migration: image, database coordinates, artifact
    /// revisions; for a pack: the layers and their pins).
    pub inputs_hash: String,
    /// The Job running it.
    pub job_name: String,
    /// Running, Succeeded or Failed.
    pub state: JobState,
    /// Inputs hash of the last such Job that succeeded; servers run the version it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub succeeded_hash: Option<String>,
}

/// Where the Job of one version is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JobState {
    /// Its Job is running; servers wait.
    #[default]
    Running,
    /// Its Job completed; servers may move to this version.
    Succeeded,
    /// Its Job failed; servers stay on the previous version.
    Failed,
}

/// An externally reachable address of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The Service name.
    pub service: String,
    /// Load balancer IP or host name, when assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// DNS name requested for external-dns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Ports as `name:port/PROTOCOL`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}
