//! When the sidecar asks each gate webhook of its WebhookConfiguration, and what an answer
//! sets (seed 002's rules). Pure, with time passed in: [`super::webhooks`] makes the calls.
//!
//! - A ReadinessWebhook is asked every period; with `requestPolicy: Once` it stops after the
//!   first allowed answer.
//! - A ConstraintWebhook is told the server's constraints once per change of them.
//! - A DeletableWebhook is asked only while the server is drained (`NotInService`), and only
//!   after every ConstraintWebhook was called with the constraints in force.
//! - A failed call (no answer in time, not 2xx, not a review) changes no gate and is tried
//!   again later and later.

use std::time::{Duration, Instant};

use crate::api::{Constraint, GateWebhook, GateWebhookType, RequestPolicy, WebhookConfigurationSpec};

/// Seconds to wait for an answer when `timeoutSeconds` is empty (Carrier's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
/// Seconds between polls when `periodSeconds` is empty (Carrier's default).
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(5);
/// Longest wait between tries of a failing webhook.
pub const MAX_BACKOFF: Duration = Duration::from_secs(120);

/// A call to make: which webhook, with which constraints.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// Index of the webhook in the configuration.
    pub index: usize,
    /// The constraints sent (and, for a ConstraintWebhook, then delivered).
    pub constraints: Vec<Constraint>,
}

/// What came back from a call.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A review came back (for a ConstraintWebhook: any 2xx answer).
    Answered {
        /// Whether the gate is open.
        allowed: bool,
        /// The webhook's reason, if it gave one.
        reason: Option<String>,
    },
    /// No usable answer; the error is logged by the caller.
    Failed,
}

/// A gate condition an answer sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateChange {
    /// The condition type: the webhook's name.
    pub gate: String,
    /// Whether it is True.
    pub allowed: bool,
    /// For the condition's message.
    pub message: String,
}

#[derive(Debug)]
struct Hook {
    webhook: GateWebhook,
    /// When it is next due; `None`: as soon as it may be called.
    next: Option<Instant>,
    failures: u32,
    in_flight: bool,
    /// `Once` and an allowed answer came.
    done: bool,
    /// ConstraintWebhook: constraints of the last call that was answered.
    delivered: Vec<Constraint>,
    /// ConstraintWebhook: constraints of the last call made, answered or not.
    attempted: Option<Vec<Constraint>>,
}

/// The state of every webhook of one configuration, for one server.
#[derive(Debug)]
pub struct Schedule {
    hooks: Vec<Hook>,
}

/// How long to wait for `webhook`'s answer.
pub fn timeout(webhook: &GateWebhook) -> Duration {
    webhook.timeout_seconds.map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(s.max(1) as u64))
}

fn period(webhook: &GateWebhook) -> Duration {
    webhook.period_seconds.map_or(DEFAULT_PERIOD, |s| Duration::from_secs(s.max(1) as u64))
}

fn draining(constraints: &[Constraint]) -> bool {
    constraints.iter().any(Constraint::not_in_service)
}

impl Schedule {
    /// A fresh schedule: nothing asked yet, no constraints delivered.
    pub fn new(config: &WebhookConfigurationSpec) -> Self {
        let hooks = config
            .webhooks
            .iter()
            .map(|w| Hook {
                webhook: w.clone(),
                next: None,
                failures: 0,
                in_flight: false,
                done: false,
                delivered: Vec::new(),
                attempted: None,
            })
            .collect();
        Schedule { hooks }
    }

    /// The webhook of a call.
    pub fn webhook(&self, index: usize) -> &GateWebhook {
        &self.hooks[index].webhook
    }

    /// Whether every ConstraintWebhook was called with `constraints` and that call is over.
    fn constraints_told(&self, constraints: &[Constraint]) -> bool {
        self.hooks
            .iter()
            .filter(|h| h.webhook.type_ == GateWebhookType::ConstraintWebhook)
            .all(|h| h.delivered == constraints || (!h.in_flight && h.attempted.as_deref() == Some(constraints)))
    }

    /// Whether hook `i` is to be called at `now` for a server with `constraints`.
    fn is_due(&self, i: usize, constraints: &[Constraint], now: Instant) -> bool {
        let h = &self.hooks[i];
        if h.in_flight {
            return false;
        }
        let time = h.next.is_none_or(|t| t <= now);
        match h.webhook.type_ {
            GateWebhookType::ReadinessWebhook => !h.done && time,
            GateWebhookType::ConstraintWebhook => {
                // A change is told at once; a failed telling is retried on its backoff.
                h.delivered != constraints && (h.attempted.as_deref() != Some(constraints) || time)
            }
            GateWebhookType::DeletableWebhook => {
                !h.done && time && draining(constraints) && self.constraints_told(constraints)
            }
        }
    }

    /// The calls to make at `now` for a server with `constraints`; they are in flight until
    /// [`Schedule::answered`].
    pub fn due(&mut self, constraints: &[Constraint], now: Instant) -> Vec<Call> {
        let due: Vec<usize> = (0..self.hooks.len()).filter(|&i| self.is_due(i, constraints, now)).collect();
        // ConstraintWebhooks go first: a DeletableWebhook may become due once they are called.
        let mut calls = Vec::new();
        for i in due {
            let h = &mut self.hooks[i];
            h.in_flight = true;
            if h.webhook.type_ == GateWebhookType::ConstraintWebhook {
                h.attempted = Some(constraints.to_vec());
            }
            calls.push(Call { index: i, constraints: constraints.to_vec() });
        }
        calls
    }

    /// When something may next be due for a server with `constraints` (none: only a change of
    /// the server or an answer can make anything due).
    pub fn next_wake(&self, constraints: &[Constraint]) -> Option<Instant> {
        self.hooks
            .iter()
            .filter(|h| !h.in_flight && !h.done)
            .filter(|h| match h.webhook.type_ {
                GateWebhookType::ReadinessWebhook => true,
                GateWebhookType::ConstraintWebhook => h.delivered != constraints,
                GateWebhookType::DeletableWebhook => draining(constraints),
            })
            .filter_map(|h| h.next)
            .min()
    }

    /// Records the outcome of `call` at `now`; `jitter` (a small random duration) spreads the
    /// retries of a failing webhook. Returns the gate to set, if the answer sets one.
    pub fn answered(&mut self, call: &Call, outcome: &Outcome, now: Instant, jitter: Duration) -> Option<GateChange> {
        let h = &mut self.hooks[call.index];
        h.in_flight = false;
        let period = period(&h.webhook);
        match outcome {
            Outcome::Failed => {
                h.failures = h.failures.saturating_add(1);
                let backoff = period.saturating_mul(1 << h.failures.min(6)).min(MAX_BACKOFF).max(period);
                h.next = Some(now + backoff + jitter);
                None
            }
            Outcome::Answered { allowed, reason } => {
                h.failures = 0;
                h.next = Some(now + period);
                match h.webhook.type_ {
                    GateWebhookType::ConstraintWebhook => {
                        h.delivered = call.constraints.clone();
                        None
                    }
                    GateWebhookType::ReadinessWebhook | GateWebhookType::DeletableWebhook => {
                        if *allowed && h.webhook.request_policy == Some(RequestPolicy::Once) {
                            h.done = true;
                        }
                        let verdict = if *allowed { "allowed" } else { "not allowed" };
                        let message = match reason {
                            Some(r) if !r.is_empty() => format!("webhook {}: {verdict}: {r}", h.webhook.name),
                            _ => format!("webhook {}: {verdict}", h.webhook.name),
                        };
                        Some(GateChange { gate: h.webhook.name.clone(), allowed: *allowed, message })
                    }
                }
            }
        }
    }

    /// A drain that ends lets a `Once` DeletableWebhook be asked again at the next drain.
    pub fn constraints_changed(&mut self, constraints: &[Constraint]) {
        if !draining(constraints) {
            for h in &mut self.hooks {
                if h.webhook.type_ == GateWebhookType::DeletableWebhook {
                    h.done = false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GateWebhookClient, NOT_IN_SERVICE};

    fn hook(name: &str, type_: GateWebhookType, policy: Option<RequestPolicy>) -> GateWebhook {
        GateWebhook {
            name: name.into(),
            type_,
            client_config: GateWebhookClient { url: Some(format!("http://127.0.0.1/{name}")), ..Default::default() },
            timeout_seconds: None,
            period_seconds: Some(5),
            request_policy: policy,
        }
    }

    fn schedule(hooks: Vec<GateWebhook>) -> Schedule {
        Schedule::new(&WebhookConfigurationSpec { webhooks: hooks })
    }

    fn drained() -> Vec<Constraint> {
        vec![Constraint { type_: NOT_IN_SERVICE.into(), effective: Some(true), ..Default::default() }]
    }

    fn yes() -> Outcome {
        Outcome::Answered { allowed: true, reason: None }
    }

    fn names(s: &Schedule, calls: &[Call]) -> Vec<String> {
        calls.iter().map(|c| s.webhook(c.index).name.clone()).collect()
    }

    #[test]
    fn readiness_polls_every_period_and_once_stops_after_the_first_yes() {
        let mut s = schedule(vec![
            hook("once", GateWebhookType::ReadinessWebhook, Some(RequestPolicy::Once)),
            hook("always", GateWebhookType::ReadinessWebhook, None),
        ]);
        let t0 = Instant::now();
        let calls = s.due(&[], t0);
        assert_eq!(names(&s, &calls), ["once", "always"]);
        assert!(s.due(&[], t0).is_empty(), "in flight");
        let no = Outcome::Answered { allowed: false, reason: Some("loading map".into()) };
        let change = s.answered(&calls[0], &no, t0, Duration::ZERO).unwrap();
        assert_eq!(
            change,
            GateChange {
                gate: "once".into(),
                allowed: false,
                message: "webhook once: not allowed: loading map".into()
            }
        );
        s.answered(&calls[1], &yes(), t0, Duration::ZERO);
        assert_eq!(s.next_wake(&[]), Some(t0 + Duration::from_secs(5)));
        assert!(s.due(&[], t0 + Duration::from_secs(4)).is_empty());
        let t1 = t0 + Duration::from_secs(5);
        let calls = s.due(&[], t1);
        assert_eq!(names(&s, &calls), ["once", "always"]);
        assert!(s.answered(&calls[0], &yes(), t1, Duration::ZERO).unwrap().allowed);
        s.answered(&calls[1], &yes(), t1, Duration::ZERO);
        let calls = s.due(&[], t1 + Duration::from_secs(5));
        assert_eq!(names(&s, &calls), ["always"], "Once stops after its first yes");
    }

    #[test]
    fn deletable_waits_for_the_drain_and_for_the_constraint_webhook() {
        let mut s = schedule(vec![
            hook("has-no-player", GateWebhookType::DeletableWebhook, None),
            hook("told", GateWebhookType::ConstraintWebhook, None),
        ]);
        let t0 = Instant::now();
        assert!(s.due(&[], t0).is_empty(), "not drained: nothing to ask, nothing to tell");
        assert_eq!(s.next_wake(&[]), None);
        let drained = drained();
        let calls = s.due(&drained, t0);
        assert_eq!(names(&s, &calls), ["told"], "the constraint is told before deletable polls");
        assert_eq!(calls[0].constraints, drained);
        assert!(s.due(&drained, t0).is_empty());
        assert_eq!(s.answered(&calls[0], &yes(), t0, Duration::ZERO), None);
        let calls = s.due(&drained, t0);
        assert_eq!(names(&s, &calls), ["has-no-player"]);
        assert!(s.answered(&calls[0], &yes(), t0, Duration::ZERO).unwrap().allowed);
        // Told once per change: later polls ask only the deletable webhook.
        let calls = s.due(&drained, t0 + Duration::from_secs(5));
        assert_eq!(names(&s, &calls), ["has-no-player"]);
        s.answered(&calls[0], &yes(), t0, Duration::ZERO);
        // The drain is lifted: the constraint webhook hears of it, deletable stops.
        let calls = s.due(&[], t0 + Duration::from_secs(10));
        assert_eq!(names(&s, &calls), ["told"]);
        assert!(calls[0].constraints.is_empty());
    }

    #[test]
    fn a_failing_webhook_changes_no_gate_and_backs_off() {
        let mut s = schedule(vec![
            hook("ready", GateWebhookType::ReadinessWebhook, None),
            hook("told", GateWebhookType::ConstraintWebhook, None),
            hook("gone", GateWebhookType::DeletableWebhook, None),
        ]);
        let t0 = Instant::now();
        let drained = drained();
        let mut at = t0;
        let mut waits = Vec::new();
        for _ in 0..7 {
            let calls = s.due(&[], at);
            assert_eq!(names(&s, &calls), ["ready"]);
            assert_eq!(s.answered(&calls[0], &Outcome::Failed, at, Duration::ZERO), None);
            let next = s.next_wake(&[]).unwrap();
            waits.push((next - at).as_secs());
            at = next;
        }
        assert_eq!(waits, [10, 20, 40, 80, 120, 120, 120]);
        // A failed telling still lets the deletable webhook poll; the telling is retried.
        let calls = s.due(&drained, at);
        assert_eq!(names(&s, &calls), ["ready", "told"]);
        s.answered(&calls[0], &yes(), at, Duration::ZERO);
        s.answered(&calls[1], &Outcome::Failed, at, Duration::ZERO);
        let calls = s.due(&drained, at);
        assert_eq!(names(&s, &calls), ["gone"]);
        s.answered(&calls[0], &yes(), at, Duration::ZERO);
        let calls = s.due(&drained, at + Duration::from_secs(10));
        assert_eq!(names(&s, &calls), ["ready", "told", "gone"]);
    }
}
