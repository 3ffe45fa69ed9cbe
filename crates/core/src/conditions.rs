//! Kubernetes-style conditions: set one, keeping its transition time when its status is
//! unchanged. Their names and the longest message are the API's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub use crate::api::conditions::*;

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
    fn a_condition_s_message_is_bounded() {
        let mut conditions = Vec::new();
        set(&mut conditions, "Ready", false, "R", "x".repeat(300_000), None);
        assert!(conditions[0].message.len() <= MESSAGE_MAX);
    }
}
