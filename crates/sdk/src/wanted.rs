//! What the process asked for through the SDK, and the patches that make its GameServer show
//! it. Pure: the writer ([`super::writer`]) decides when to send them.
//!
//! The sidecar writes only these fields: labels and annotations under
//! [`super::keys::PREFIX`], `status.sdk`, and the conditions the process set. Comparing what
//! is wanted with what the object shows (rather than replaying calls) is what lets many calls
//! become one write, and lets a write that was lost or overwritten be made again.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::{Value, json};

use crate::api::{GameServer, SdkHealth, SdkState, SdkStatus};

/// Reason of every condition set through the SDK.
pub const CONDITION_REASON: &str = "SetCondition";
/// Reason of every condition set by a gate webhook's answer.
pub const WEBHOOK_REASON: &str = "Webhook";

/// A condition as the sidecar wants it: its status and who set it why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WantedCondition {
    /// "True", "False" or "Unknown".
    pub status: String,
    /// [`CONDITION_REASON`] or [`WEBHOOK_REASON`].
    pub reason: String,
    /// For a person reading the object.
    pub message: String,
}

impl WantedCondition {
    /// Set by the game process (Carrier's SetCondition).
    pub fn by_process(status: &str) -> Self {
        WantedCondition {
            status: status.into(),
            reason: CONDITION_REASON.into(),
            message: "set by the game process through the SDK".into(),
        }
    }
}

/// Everything the process has asked for so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wanted {
    /// Labels, keys already prefixed.
    pub labels: BTreeMap<String, String>,
    /// Annotations, keys already prefixed.
    pub annotations: BTreeMap<String, String>,
    /// `status.sdk` as it should read.
    pub sdk: SdkStatus,
    /// Conditions by type.
    pub conditions: BTreeMap<String, WantedCondition>,
}

/// The writes that make an object show what is wanted: a merge patch of `metadata` and one of
/// `status` (a separate request: the status subresource).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Patches {
    /// Labels and annotations to set, as `{"labels": {...}, "annotations": {...}}`.
    pub metadata: Option<Value>,
    /// `status.sdk` and `status.conditions` to set.
    pub status: Option<Value>,
}

impl Patches {
    /// Whether nothing needs writing.
    pub fn is_empty(&self) -> bool {
        self.metadata.is_none() && self.status.is_none()
    }
}

impl Wanted {
    /// Asks for `state` at `now`; `reserved_until` only with Reserved.
    pub fn request(&mut self, state: SdkState, reserved_until: Option<Time>, now: Time) {
        self.sdk.state = Some(state);
        self.sdk.reserved_until = reserved_until;
        self.sdk.state_time = Some(now);
    }

    /// Records a change of health at `now`.
    pub fn health(&mut self, health: SdkHealth, now: Time) {
        self.sdk.health = Some(health);
        self.sdk.health_time = Some(now);
    }

    /// The patches `observed` needs to show what is wanted, at `now` (for condition
    /// transition times). A field the object already shows is left out.
    pub fn patches(&self, observed: &GameServer, now: &Time) -> Patches {
        let meta = &observed.metadata;
        let labels = missing(&self.labels, meta.labels.as_ref());
        let annotations = missing(&self.annotations, meta.annotations.as_ref());
        let metadata = (!labels.is_empty() || !annotations.is_empty()).then(|| {
            let mut m = serde_json::Map::new();
            if !labels.is_empty() {
                m.insert("labels".into(), json!(labels));
            }
            if !annotations.is_empty() {
                m.insert("annotations".into(), json!(annotations));
            }
            Value::Object(m)
        });

        let status = observed.status.as_ref();
        let mut patch = serde_json::Map::new();
        let wanted_sdk = (self.sdk != SdkStatus::default()).then_some(&self.sdk);
        if wanted_sdk.is_some() && status.and_then(|s| s.sdk.as_ref()) != wanted_sdk {
            // Every field, absent ones as null: a merge patch would leave a stale one behind.
            let mut sdk = json!({"podUid": null, "state": null, "reservedUntil": null, "stateTime": null, "health": null, "healthTime": null});
            if let Value::Object(set) = serde_json::to_value(&self.sdk).expect("SdkStatus serializes") {
                for (k, v) in set {
                    sdk[k] = v;
                }
            }
            patch.insert("sdk".into(), sdk);
        }
        let conditions = status.map(|s| s.conditions.as_slice()).unwrap_or_default();
        if let Some(merged) = self.merged_conditions(conditions, now) {
            // A merge patch replaces the list whole, so the write carries the others as
            // observed; the resourceVersion precondition keeps it from undoing a change.
            patch.insert("conditions".into(), serde_json::to_value(merged).expect("conditions serialize"));
        }
        Patches { metadata, status: (!patch.is_empty()).then_some(Value::Object(patch)) }
    }

    /// `observed` with the wanted conditions in it, or `None` when it already shows them.
    fn merged_conditions(&self, observed: &[Condition], now: &Time) -> Option<Vec<Condition>> {
        let mut merged = observed.to_vec();
        let mut changed = false;
        for (type_, want) in &self.conditions {
            match merged.iter_mut().find(|c| &c.type_ == type_) {
                Some(c) if c.status == want.status && c.reason == want.reason && c.message == want.message => {}
                Some(c) => {
                    if c.status != want.status {
                        c.last_transition_time = now.clone();
                    }
                    c.status = want.status.clone();
                    c.reason = want.reason.clone();
                    c.message = want.message.clone();
                    changed = true;
                }
                None => {
                    merged.push(Condition {
                        type_: type_.clone(),
                        status: want.status.clone(),
                        reason: want.reason.clone(),
                        message: want.message.clone(),
                        observed_generation: None,
                        last_transition_time: now.clone(),
                    });
                    changed = true;
                }
            }
        }
        changed.then_some(merged)
    }
}

/// The entries of `wanted` that `have` lacks or holds with another value.
fn missing<'a>(
    wanted: &'a BTreeMap<String, String>,
    have: Option<&BTreeMap<String, String>>,
) -> BTreeMap<&'a str, &'a str> {
    wanted
        .iter()
        .filter(|(k, v)| have.and_then(|h| h.get(*k)) != Some(*v))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// `patch` merged into `target` as a JSON merge patch (RFC 7386) does it: what the local
/// mode's in-memory API server does with the sidecar's writes.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GameServerSpec, GameServerStatus};

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    fn server() -> GameServer {
        let mut gs = GameServer::new("z1-game-1", GameServerSpec::default());
        gs.metadata.labels = Some([("gamezone.dev/zone".to_string(), "z1".to_string())].into());
        gs.status = Some(GameServerStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "PodReady".into(),
                message: "ready".into(),
                observed_generation: Some(1),
                last_transition_time: now(),
            }],
            ..Default::default()
        });
        gs
    }

    /// `gs` as the API server would show it after `patches`.
    fn applied(gs: &GameServer, patches: &Patches) -> GameServer {
        let mut v = serde_json::to_value(gs).unwrap();
        if let Some(m) = &patches.metadata {
            merge(&mut v, &json!({ "metadata": m }));
        }
        if let Some(s) = &patches.status {
            merge(&mut v, &json!({ "status": s }));
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn nothing_wanted_writes_nothing() {
        assert!(Wanted::default().patches(&server(), &now()).is_empty());
    }

    #[test]
    fn many_calls_become_one_patch_and_none_once_the_object_shows_them() {
        let mut w = Wanted::default();
        for i in 0..100 {
            w.labels.insert("gamezone.dev/sdk-players".into(), i.to_string());
        }
        w.annotations.insert("gamezone.dev/sdk-map".into(), "de_dust".into());
        w.request(SdkState::RequestReady, None, now());
        let p = w.patches(&server(), &now());
        assert_eq!(
            p.metadata,
            Some(
                json!({"labels": {"gamezone.dev/sdk-players": "99"}, "annotations": {"gamezone.dev/sdk-map": "de_dust"}})
            )
        );
        assert_eq!(
            p.status,
            Some(json!({"sdk": {"podUid": null, "state": "RequestReady", "stateTime": "2023-11-14T22:13:20Z",
                                "reservedUntil": null, "health": null, "healthTime": null}}))
        );
        let after = applied(&server(), &p);
        assert_eq!(after.metadata.labels.as_ref().unwrap()["gamezone.dev/zone"], "z1", "other labels stay");
        assert!(w.patches(&after, &now()).is_empty());
    }

    #[test]
    fn a_new_pod_s_sidecar_clears_what_the_previous_pod_s_process_said() {
        let mut observed = server();
        observed.status.as_mut().unwrap().sdk = Some(SdkStatus {
            pod_uid: Some("old-pod".into()),
            state: Some(SdkState::Shutdown),
            state_time: Some(now()),
            ..Default::default()
        });
        let w =
            Wanted { sdk: SdkStatus { pod_uid: Some("new-pod".into()), ..Default::default() }, ..Default::default() };
        let p = w.patches(&observed, &now());
        assert_eq!(
            p.status,
            Some(json!({"sdk": {"podUid": "new-pod", "state": null, "stateTime": null,
                                "reservedUntil": null, "health": null, "healthTime": null}}))
        );
        assert!(w.patches(&applied(&observed, &p), &now()).is_empty());
    }

    #[test]
    fn a_reservation_ending_leaves_no_stale_time_behind() {
        let mut w = Wanted::default();
        let until = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_010).unwrap());
        w.request(SdkState::Reserved, Some(until), now());
        let reserved = applied(&server(), &w.patches(&server(), &now()));
        w.request(SdkState::RequestReady, None, now());
        let ready = applied(&reserved, &w.patches(&reserved, &now()));
        assert_eq!(ready.status.unwrap().sdk.unwrap(), w.sdk);
    }

    #[test]
    fn conditions_keep_the_controller_s_and_change_only_on_a_new_status() {
        let mut w = Wanted::default();
        w.conditions.insert("carrier.ocgi.dev/has-no-player".into(), WantedCondition::by_process("True"));
        let gs = server();
        let once = applied(&gs, &w.patches(&gs, &now()));
        let types: Vec<_> = once.status.as_ref().unwrap().conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "carrier.ocgi.dev/has-no-player"]);
        assert!(w.patches(&once, &now()).is_empty());
        w.conditions.insert("carrier.ocgi.dev/has-no-player".into(), WantedCondition::by_process("False"));
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_100).unwrap());
        let twice = applied(&once, &w.patches(&once, &later));
        let c = &twice.status.unwrap().conditions[1];
        assert_eq!((c.status.as_str(), &c.last_transition_time), ("False", &later));
    }

    #[test]
    fn merge_follows_rfc_7386() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut v, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }
}
