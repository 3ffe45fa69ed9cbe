//! The objects of each zone in a shared store, so a zone's reconcile reads its own servers and
//! Services instead of scanning those of every zone: with hundreds of zones coming up at once,
//! each reconcile scanning all of them made the operator's CPU grow with zones × servers.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};

use super::key::ObjectKey;
use crate::api::ZONE_LABEL;

/// Names of the objects carrying a zone label, by `namespace/zone`, as the watch feeding the
/// store delivered them. A name is added when the watch shows it and dropped on the next
/// lookup that finds it gone from the store or moved to another zone, so the index needs no
/// deletion events and is never behind the store for a lookup.
#[derive(Default)]
pub struct ByZone(Mutex<HashMap<ObjectKey, BTreeSet<String>>>);

impl ByZone {
    /// Records `obj` under its zone; objects without a zone label are not indexed.
    pub fn saw<K: Resource>(&self, obj: &K) {
        let Some(zone) = obj.labels().get(ZONE_LABEL) else { return };
        let key = ObjectKey::new(obj.meta().namespace.as_deref().unwrap_or_default(), zone);
        let mut map = self.0.lock().expect("zone index lock");
        let names = map.entry(key).or_default();
        if !names.contains(obj.meta().name.as_deref().unwrap_or_default()) {
            names.insert(obj.name_any());
        }
    }

    /// The objects of the zone `zone` that `store` holds now.
    pub fn of<K>(&self, store: &Store<K>, zone: &ObjectKey) -> Vec<Arc<K>>
    where
        K: Resource<DynamicType = ()> + Clone,
    {
        let (namespace, zone_name) = (zone.namespace(), zone.name());
        let mut map = self.0.lock().expect("zone index lock");
        let Some(names) = map.get_mut(zone) else { return Vec::new() };
        let mut found = Vec::with_capacity(names.len());
        names.retain(|name| {
            let obj = store.get(&ObjectRef::new(name).within(namespace));
            match obj {
                Some(o) if o.labels().get(ZONE_LABEL).map(String::as_str) == Some(zone_name) => {
                    found.push(o);
                    true
                }
                _ => false,
            }
        });
        if names.is_empty() {
            map.remove(zone);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn svc(ns: &str, name: &str, zone: Option<&str>) -> Service {
        let mut s = Service::default();
        s.metadata.namespace = Some(ns.into());
        s.metadata.name = Some(name.into());
        if let Some(z) = zone {
            s.metadata.labels = Some([(ZONE_LABEL.to_string(), z.to_string())].into());
        }
        s
    }

    fn names(found: Vec<Arc<Service>>) -> Vec<String> {
        let mut n: Vec<String> = found.iter().map(|s| s.name_any()).collect();
        n.sort();
        n
    }

    #[test]
    fn a_zone_finds_only_its_own_objects_and_forgets_those_gone_or_moved() {
        let (reader, mut writer) = store::<Service>();
        let index = ByZone::default();
        let objects = [
            svc("a", "z1-x", Some("z1")),
            svc("a", "z1-y", Some("z1")),
            svc("a", "z2-x", Some("z2")),
            svc("b", "z1-x", Some("z1")),
            svc("a", "loose", None),
        ];
        for o in &objects {
            writer.apply_watcher_event(&Event::Apply(o.clone()));
            index.saw(o);
        }
        assert_eq!(names(index.of(&reader, &ObjectKey::new("a", "z1"))), ["z1-x", "z1-y"]);
        assert_eq!(names(index.of(&reader, &ObjectKey::new("b", "z1"))), ["z1-x"]);
        assert_eq!(names(index.of(&reader, &ObjectKey::new("a", "z3"))), Vec::<String>::new());

        // Deleted from the store: gone from the zone. Relabelled: found under its new zone only.
        writer.apply_watcher_event(&Event::Delete(objects[0].clone()));
        let moved = svc("a", "z1-y", Some("z2"));
        writer.apply_watcher_event(&Event::Apply(moved.clone()));
        index.saw(&moved);
        assert_eq!(names(index.of(&reader, &ObjectKey::new("a", "z1"))), Vec::<String>::new());
        assert_eq!(names(index.of(&reader, &ObjectKey::new("a", "z2"))), ["z1-y", "z2-x"]);
        assert!(
            !index.0.lock().unwrap().contains_key(&ObjectKey::new("a", "z1")),
            "an empty zone is dropped from the index"
        );
    }
}
