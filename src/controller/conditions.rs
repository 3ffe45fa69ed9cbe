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

/// The most of a message a condition keeps, as much as an Event's note: what a user's input
/// brings back (an error from a server they named, a refusal quoting their spec) is never
/// reflected whole, and a status stays small enough to be written.
pub const MESSAGE_MAX: usize = 1024;

/// `message` cut to at most [`MESSAGE_MAX`] bytes, at a character boundary, marked when cut.
pub fn bounded(message: &str) -> String {
    if message.len() <= MESSAGE_MAX {
        return message.to_string();
    }
    const MARK: &str = " …(cut)";
    let mut end = MESSAGE_MAX - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &message[..end])
}

/// Sets (or adds) the condition `type_`, keeping `lastTransitionTime` when `status` did not
/// change; the message is [`bounded`].
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if ok { "True" } else { "False" }.to_string();
    let message = bounded(&message.into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        assert_eq!(bounded("short"), "short");
        let long = "é".repeat(2000);
        let cut = bounded(&long);
        assert!(cut.len() <= MESSAGE_MAX && cut.ends_with("…(cut)"), "{} bytes", cut.len());
        let mut conditions = Vec::new();
        set(&mut conditions, "Ready", false, "R", "x".repeat(300_000), None);
        assert!(conditions[0].message.len() <= MESSAGE_MAX);
    }
}
