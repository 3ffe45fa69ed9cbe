//! Field ownership of children the operator creates with a POST and changes later with a
//! server-side apply.
//!
//! A create records its fields as the operator's *update* (`operation: Update`); an apply by
//! the same field manager is a different owner (`operation: Apply`). Left so, a later apply that
//! drops a field would not remove it: the update still owns it. Before its first apply to such
//! an object the operator hands the update's fields to its apply, as `kubectl` does when it
//! moves an object from client-side to server-side apply.
//!
//! The operator creates by POST because the API server parses every apply body as YAML and
//! reads the object from etcd before it creates it. On the local control plane a GameServer
//! created by apply cost 2.65-2.76 ms of API server CPU and 0.38-0.43 ms of etcd's, by POST
//! 2.40 and 0.31-0.33.
//!
//! Whoever may create a GameZone picks its children's names, so an object of that name may
//! already exist and belong to someone else: [`held_by_other`] says when the operator must
//! leave it alone (never apply over it, adopt it or delete it).

use json_patch::{Patch, PatchOperation, ReplaceOperation, TestOperation};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use serde_json::Value;

use crate::api::MANAGER;

/// The JSON patch that gives the fields of the operator's update (its create) to its apply;
/// `None` when its update owns nothing on the object itself (subresources are other owners).
/// The patch holds only if the object is still at the version read.
pub fn upgrade(meta: &ObjectMeta) -> Option<Patch> {
    let entries = meta.managed_fields.as_ref()?;
    let ours = |e: &ManagedFieldsEntry, operation: &str| {
        e.manager.as_deref() == Some(MANAGER)
            && e.operation.as_deref() == Some(operation)
            && e.subresource.as_deref().unwrap_or_default().is_empty()
    };
    let at = entries.iter().position(|e| ours(e, "Update"))?;
    let mut upgraded = entries.clone();
    let update = upgraded.remove(at);
    match upgraded.iter_mut().find(|e| ours(e, "Apply")) {
        Some(apply) => {
            let mut fields = apply.fields_v1.take().map_or(Value::Object(Default::default()), |f| f.0);
            union(&mut fields, update.fields_v1.map(|f| f.0).unwrap_or_default());
            apply.fields_v1 = Some(FieldsV1(fields));
        }
        None => upgraded.push(ManagedFieldsEntry { operation: Some("Apply".into()), ..update }),
    }
    let version = meta.resource_version.clone().unwrap_or_default();
    Some(Patch(vec![
        PatchOperation::Test(TestOperation {
            path: "/metadata/resourceVersion".parse().expect("a JSON pointer"),
            value: Value::String(version),
        }),
        PatchOperation::Replace(ReplaceOperation {
            path: "/metadata/managedFields".parse().expect("a JSON pointer"),
            value: serde_json::to_value(upgraded).expect("managed fields serialize"),
        }),
    ]))
}

/// Why an existing object is not the one the operator would write as `wanted`, or `None` when
/// it is: its controller owner reference has the uid of `wanted`'s controller. A child meant to
/// have no controller (an edits claim kept past its zone) matches an object with no controller
/// that carries the same zone label, which is what such a claim is once kept.
pub fn held_by_other(existing: &ObjectMeta, wanted: &ObjectMeta) -> Option<String> {
    let controller = |m: &ObjectMeta| m.owner_references.iter().flatten().find(|o| o.controller == Some(true)).cloned();
    match (controller(existing), controller(wanted)) {
        (Some(have), Some(want)) if have.uid == want.uid => None,
        (Some(have), _) => Some(format!("it is controlled by {} {}", have.kind, have.name)),
        (None, None) if zone_of(existing).is_some() && zone_of(existing) == zone_of(wanted) => None,
        (None, _) => Some("it has no controller".into()),
    }
}

fn zone_of(meta: &ObjectMeta) -> Option<&String> {
    meta.labels.as_ref()?.get(crate::api::ZONE_LABEL)
}

/// Whether `meta` is controlled by `owner` (its controller owner reference has `owner`'s uid).
pub fn controlled_by(meta: &ObjectMeta, owner: &ObjectMeta) -> bool {
    let Some(uid) = owner.uid.as_deref() else { return false };
    meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}

/// Adds the field set `more` to `set` (both in the `FieldsV1` format: nested objects).
fn union(set: &mut Value, more: Value) {
    match (set, more) {
        (Value::Object(set), Value::Object(more)) => {
            for (k, v) in more {
                match set.get_mut(&k) {
                    Some(mine) => union(mine, v),
                    None => {
                        set.insert(k, v);
                    }
                }
            }
        }
        (set, more) if set.is_null() => *set = more,
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(entries: Value) -> ObjectMeta {
        serde_json::from_value(json!({"name": "s", "resourceVersion": "7", "managedFields": entries})).unwrap()
    }

    fn replaced(patch: &Patch) -> Value {
        let ops = serde_json::to_value(patch).unwrap();
        assert_eq!(ops[0], json!({"op": "test", "path": "/metadata/resourceVersion", "value": "7"}));
        assert_eq!(ops[1]["path"], "/metadata/managedFields");
        ops[1]["value"].clone()
    }

    #[test]
    fn a_created_object_becomes_the_operator_s_apply() {
        let m = meta(json!([
            {"manager": "gamezone", "operation": "Update", "apiVersion": "gamezone.dev/v1alpha1",
             "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {"f:a": {}}}},
            {"manager": "gamezone", "operation": "Apply", "subresource": "status",
             "apiVersion": "gamezone.dev/v1alpha1", "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {}}},
        ]));
        let entries = replaced(&upgrade(&m).unwrap());
        assert_eq!(entries.as_array().unwrap().len(), 2);
        assert_eq!(entries[0]["subresource"], "status", "the status owner is left as it is");
        assert_eq!(entries[1]["operation"], "Apply");
        assert_eq!(entries[1]["fieldsV1"], json!({"f:spec": {"f:a": {}}}));
    }

    #[test]
    fn an_update_and_an_apply_of_the_operator_merge_into_its_apply() {
        let m = meta(json!([
            {"manager": "gamezone", "operation": "Apply", "apiVersion": "v1", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:a": {}, "f:list": {"k:{\"name\":\"x\"}": {".": {}}}}}},
            {"manager": "gamezone-sdk", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:metadata": {"f:labels": {}}}},
            {"manager": "gamezone", "operation": "Update", "apiVersion": "v1", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:b": {}, "f:list": {"k:{\"name\":\"y\"}": {".": {}}}}}},
        ]));
        let entries = replaced(&upgrade(&m).unwrap());
        assert_eq!(entries.as_array().unwrap().len(), 2);
        assert_eq!(
            entries[0]["fieldsV1"],
            json!({"f:spec": {"f:a": {}, "f:b": {}, "f:list": {"k:{\"name\":\"x\"}": {".": {}}, "k:{\"name\":\"y\"}": {".": {}}}}})
        );
        assert_eq!(entries[1]["manager"], "gamezone-sdk", "others' entries are kept");
    }

    fn owned(uid: &str) -> ObjectMeta {
        serde_json::from_value(json!({"name": "z-game", "ownerReferences": [
            {"apiVersion": "gamezone.dev/v1alpha1", "kind": "GameZone", "name": "z", "uid": uid, "controller": true}
        ]}))
        .unwrap()
    }

    #[test]
    fn only_an_object_controlled_by_the_same_owner_is_the_operator_s() {
        assert_eq!(held_by_other(&owned("u1"), &owned("u1")), None);
        // Another zone of the same name (deleted and made again) is another owner.
        assert_eq!(held_by_other(&owned("u0"), &owned("u1")).unwrap(), "it is controlled by GameZone z");
        let foreign = ObjectMeta { name: Some("z-game".into()), ..Default::default() };
        assert_eq!(held_by_other(&foreign, &owned("u1")).unwrap(), "it has no controller");
        // An owner reference that is not the controller does not make it ours.
        let mut shared = owned("u1");
        shared.owner_references.as_mut().unwrap()[0].controller = Some(false);
        assert!(held_by_other(&shared, &owned("u1")).is_some());
    }

    #[test]
    fn a_kept_child_without_controller_matches_only_its_zone_s_label() {
        let kept = |zone: Option<&str>| ObjectMeta {
            labels: zone.map(|z| [(crate::api::ZONE_LABEL.to_string(), z.to_string())].into()),
            ..Default::default()
        };
        assert_eq!(held_by_other(&kept(Some("z")), &kept(Some("z"))), None);
        assert!(held_by_other(&kept(Some("other")), &kept(Some("z"))).is_some());
        assert!(held_by_other(&kept(None), &kept(None)).is_some(), "an unlabelled object is someone else's");
        assert!(held_by_other(&owned("u1"), &kept(Some("z"))).is_some());
    }

    #[test]
    fn nothing_to_do_without_an_update_of_the_operator_on_the_object_itself() {
        assert!(upgrade(&meta(json!([{"manager": "gamezone", "operation": "Apply", "fieldsV1": {}}]))).is_none());
        assert!(
            upgrade(&meta(json!([{"manager": "gamezone", "operation": "Update", "subresource": "status"}]))).is_none()
        );
        assert!(upgrade(&meta(json!([{"manager": "someone", "operation": "Update"}]))).is_none());
        assert!(upgrade(&ObjectMeta::default()).is_none());
    }
}
