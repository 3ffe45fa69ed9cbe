//! Kubernetes-style conditions: set one, keeping its transition time when its status is unchanged.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types a GameZone reports.
pub mod types {
    /// The zone is fully up at its current generation.
    pub const READY: &str = "Ready";
    /// Every artifact layer is pinned.
    pub const ARTIFACTS_READY: &str = "ArtifactsReady";
    /// The migration of the current version succeeded.
    pub const MIGRATED: &str = "Migrated";
    /// Every service instance runs the current version and is Ready.
    pub const SERVERS_READY: &str = "ServersReady";
}

/// Condition types a GameServer reports.
pub mod server_types {
    /// The server's pod is Ready on its current template.
    pub const READY: &str = "Ready";
    /// Every port of the server has its host port (or needs none).
    pub const PORTS_ALLOCATED: &str = "PortsAllocated";
    /// The conditions the operator writes; the others (gates) are the game's.
    pub const OPERATOR_OWNED: [&str; 2] = [READY, PORTS_ALLOCATED];
}

/// Sets (or adds) the condition `type_`, keeping `lastTransitionTime` when `status` did not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" }.to_string();
    let message = message.into();
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: now,
        }),
    }
}

/// Whether condition `type_` is True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}
