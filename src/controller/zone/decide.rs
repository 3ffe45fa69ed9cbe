//! What the zone controller decides is the core's ([`crate::zone::decide`]); here only what
//! reads the operator's errors: which reason and message a failed step shows.

use std::time::Duration;

pub use crate::zone::decide::*;

use crate::Error;
use crate::api::GameZoneStatus;

/// The reason a failure shows with: the error's own, except that a transient failure to reach
/// an artifact source is `FetchFailed`.
pub fn failure_reason(err: &Error) -> &'static str {
    match err {
        Error::Artifacts(e) if e.is_transient() => "FetchFailed",
        e => e.reason(),
    }
}

/// Records a failed step in status: its condition and `Ready` say what failed and, for a
/// transient failure, that it is retried and when. A failure a person must fix marks the zone
/// Degraded; a transient one leaves the phase as it was.
pub fn report_failure(status: &mut GameZoneStatus, step: Step, err: &Error, retry_in: Duration) {
    let message = if err.is_user_error() {
        err.to_string()
    } else {
        format!("{err}; retrying in {}s", retry_in.as_secs().max(1))
    };
    report_step_failure(status, step, failure_reason(err), message, err.is_user_error());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ZonePhase;
    use crate::conditions::{self, types};

    fn condition<'a>(status: &'a GameZoneStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
        let c = status.conditions.iter().find(|c| c.type_ == type_).expect("the condition");
        (&c.status, &c.reason, &c.message)
    }

    #[test]
    fn a_transient_failure_shows_in_its_condition_with_when_it_is_retried() {
        let mut status =
            GameZoneStatus { observed_generation: Some(3), phase: Some(ZonePhase::Running), ..Default::default() };
        // An older, fixed error must not linger.
        conditions::set(&mut status.conditions, types::READY, false, "SecretNotFound", "old", Some(2));
        let unreachable = Error::Artifacts(gamezone_init::Error::Transient {
            layer: 0,
            src: "git https://g/x.git".into(),
            message: "connection refused".into(),
            attempts: 5,
        });
        report_failure(&mut status, Step::Pin, &unreachable, Duration::from_secs(5));
        let (ok, reason, message) = condition(&status, types::ARTIFACTS_READY);
        assert_eq!((ok, reason), ("False", "FetchFailed"));
        assert!(message.contains("connection refused") && message.ends_with("retrying in 5s"), "{message}");
        assert_eq!(condition(&status, types::READY).1, "FetchFailed", "Ready says the current truth");
        assert_eq!(status.phase, Some(ZonePhase::Running), "a transient failure needs no person");

        let missing = Error::Spec(gamezone_core::Error::MissingSecret {
            field: "spec.mysql.passwordSecretRef".into(),
            secret: "db".into(),
            problem: "does not exist".into(),
            namespace: "ns".into(),
        });
        report_failure(&mut status, Step::Check, &missing, Duration::from_secs(120));
        let (_, reason, message) = condition(&status, types::READY);
        assert_eq!(reason, "SecretNotFound");
        assert!(!message.contains("retrying"), "a user error waits for a fix: {message}");
        assert_eq!(status.phase, Some(ZonePhase::Degraded));
    }
}
