//! GameZones for tests (feature `fixture`): the one builder every crate's tests, benches and
//! integration tests make their zones with, so a field added to the API is added here once.
//!
//! ```
//! use gamezone_api::fixture::zone;
//! use serde_json::json;
//! let z = zone("zone1").servers(3).game("ports", json!([{"name": "client", "containerPort": 7777}])).build();
//! assert_eq!(z.spec.services[0].end_id, Some(3));
//! ```

use serde_json::{Value, json};

use crate::GameZone;

/// A zone named `name` with zone id 1, default image `svc:1` and one service type, `game`, of
/// one server (id 1). Each method changes one part; [`ZoneFixture::build`] decodes the result
/// as the API server's clients would, so a fixture the schema refuses fails at once.
pub fn zone(name: &str) -> ZoneFixture {
    ZoneFixture {
        metadata: json!({"name": name}),
        spec: json!({"zoneId": 1, "defaultImage": "svc:1", "services": [{"type": "game", "id": 1}]}),
    }
}

/// A GameZone being built; see [`zone`].
#[derive(Clone, Debug)]
#[must_use = "build() makes the GameZone"]
pub struct ZoneFixture {
    metadata: Value,
    spec: Value,
}

impl ZoneFixture {
    /// `metadata.namespace`.
    pub fn namespace(self, namespace: &str) -> Self {
        self.meta("namespace", json!(namespace))
    }

    /// `metadata.uid`, which owner references of the zone's children carry.
    pub fn uid(self, uid: &str) -> Self {
        self.meta("uid", json!(uid))
    }

    /// `metadata.generation`, which conditions' `observedGeneration` follows.
    pub fn generation(self, generation: i64) -> Self {
        self.meta("generation", json!(generation))
    }

    /// The first service type runs servers 1 to `n` (`endId`).
    pub fn servers(self, n: i64) -> Self {
        self.game("endId", json!(n))
    }

    /// Sets one field of the first service type (`ports`, `ready`, `deletableGates`, ...).
    pub fn game(mut self, field: &str, value: Value) -> Self {
        self.spec["services"][0][field] = value;
        self
    }

    /// Replaces the list of service types.
    pub fn services(self, services: Value) -> Self {
        self.spec("services", services)
    }

    /// Sets one field of the spec (`zoneId`, `artifacts`, `mysql`, `edits`, ...); `null` removes it.
    pub fn spec(mut self, field: &str, value: Value) -> Self {
        let spec = self.spec.as_object_mut().expect("the spec is an object");
        if value.is_null() {
            spec.remove(field);
        } else {
            spec.insert(field.into(), value);
        }
        self
    }

    /// Replaces the whole spec, for tests whose point is the spec itself (hostile or invalid ones).
    pub fn with_spec(mut self, spec: Value) -> Self {
        self.spec = spec;
        self
    }

    /// The zone as JSON, for tests that send it through `kubectl` or change it further.
    pub fn json(&self) -> Value {
        json!({"apiVersion": "gamezone.dev/v1alpha1", "kind": "GameZone", "metadata": self.metadata, "spec": self.spec})
    }

    /// The GameZone. Panics with the decode error when the fixture is not a valid zone.
    pub fn build(&self) -> GameZone {
        serde_json::from_value(self.json()).unwrap_or_else(|e| panic!("the fixture is not a GameZone: {e}"))
    }

    fn meta(mut self, field: &str, value: Value) -> Self {
        self.metadata[field] = value;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixture_is_one_game_server_until_told_otherwise() {
        let z = zone("z").build();
        assert_eq!((z.spec.zone_id, z.spec.services.len(), z.spec.services[0].end_id), (1, 1, None));
        let z = zone("z").namespace("ns").uid("u").generation(3).servers(7).spec("zoneId", json!(9)).build();
        assert_eq!(z.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!((z.metadata.uid.as_deref(), z.metadata.generation), (Some("u"), Some(3)));
        assert_eq!((z.spec.zone_id, z.spec.services[0].end_id), (9, Some(7)));
        assert!(zone("z").spec("defaultImage", Value::Null).build().spec.default_image.is_none());
    }

    #[test]
    #[should_panic(expected = "the fixture is not a GameZone")]
    fn a_fixture_the_types_refuse_fails_at_once() {
        let _ = zone("z").spec("zoneId", json!("one")).build();
    }
}
