//! Our GameServer as Agones' and Carrier's clients see it: their messages, field for field
//! where the two correspond, and the JSON of their REST gateways (proto field names, 64-bit
//! integers as strings, as grpc-gateway writes them).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

use super::proto::{agones, carrier};
use crate::api::{GameServer, SdkHealth, SdkState, ServerState};

/// Agones' name for the server's state: what the process asked for, as far as the server
/// controller has got with it, else the pod's progress in Agones' words.
pub fn agones_state(gs: &GameServer) -> &'static str {
    let status = gs.status.as_ref();
    let sdk = status.and_then(|s| s.sdk.as_ref());
    let ours = status.and_then(|s| s.state);
    if sdk.and_then(|s| s.state) == Some(SdkState::Shutdown) {
        return "Shutdown";
    }
    if sdk.and_then(|s| s.health) == Some(SdkHealth::Unhealthy) || ours == Some(ServerState::Unhealthy) {
        return "Unhealthy";
    }
    match (sdk.and_then(|s| s.state), ours) {
        (Some(SdkState::Allocated), _) => "Allocated",
        (Some(SdkState::Reserved), _) => "Reserved",
        (Some(SdkState::RequestReady), Some(ServerState::Ready)) => "Ready",
        // Drained: Agones' nearest word for "no new players, about to go".
        (_, Some(ServerState::Draining | ServerState::Shutdown)) => "Shutdown",
        (Some(SdkState::RequestReady), _) => "RequestReady",
        (_, Some(ServerState::PortAllocation)) => "PortAllocation",
        (_, None | Some(ServerState::Creating)) => "Creating",
        (_, Some(ServerState::Scheduling)) => "Starting",
        // The pod runs; the process has not said Ready.
        (_, Some(ServerState::Starting | ServerState::Ready | ServerState::Updating | ServerState::RequestReady)) => {
            "Scheduled"
        }
        (_, Some(ServerState::Unhealthy)) => "Unhealthy",
    }
}

fn seconds(t: Option<&Time>) -> i64 {
    t.map(|t| t.0.as_second()).unwrap_or_default()
}

/// The server as Agones' `GameServer` message.
pub fn agones(gs: &GameServer) -> agones::GameServer {
    use agones::game_server::{ObjectMeta, Spec, Status, spec, status};
    let m = &gs.metadata;
    let st = gs.status.as_ref();
    let health = gs.spec.lifecycle.health.unwrap_or_default();
    let mut addresses = Vec::new();
    if let Some(a) = st.and_then(|s| s.node_address.clone()) {
        addresses.push(status::Address { r#type: "InternalIP".into(), address: a });
    }
    if let Some(a) = st.and_then(|s| s.address.clone()) {
        addresses.push(status::Address { r#type: "PodIP".into(), address: a });
    }
    agones::GameServer {
        object_meta: Some(ObjectMeta {
            name: m.name.clone().unwrap_or_default(),
            namespace: m.namespace.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            resource_version: m.resource_version.clone().unwrap_or_default(),
            generation: m.generation.unwrap_or_default(),
            creation_timestamp: seconds(m.creation_timestamp.as_ref()),
            deletion_timestamp: seconds(m.deletion_timestamp.as_ref()),
            annotations: m.annotations.clone().unwrap_or_default().into_iter().collect(),
            labels: m.labels.clone().unwrap_or_default().into_iter().collect(),
        }),
        spec: Some(Spec {
            health: Some(spec::Health {
                disabled: health.disabled,
                period_seconds: health.period_seconds,
                failure_threshold: health.failure_threshold,
                initial_delay_seconds: health.initial_delay_seconds,
            }),
        }),
        status: Some(Status {
            state: agones_state(gs).into(),
            // Agones' address is the node's: host ports are reached there.
            address: st.and_then(|s| s.node_address.clone().or_else(|| s.address.clone())).unwrap_or_default(),
            addresses,
            ports: st
                .map(|s| s.ports.iter().map(|p| status::Port { name: p.name.clone(), port: p.port }).collect())
                .unwrap_or_default(),
            players: None,
            counters: Default::default(),
            lists: Default::default(),
        }),
    }
}

/// The server as Carrier's `GameServer` message.
pub fn carrier(gs: &GameServer) -> carrier::GameServer {
    use carrier::game_server::{ObjectMeta, Spec, Status, status};
    let a = agones(gs);
    let m = a.object_meta.unwrap_or_default();
    let st = gs.status.as_ref();
    carrier::GameServer {
        object_meta: Some(ObjectMeta {
            name: m.name,
            namespace: m.namespace,
            uid: m.uid,
            resource_version: m.resource_version,
            generation: m.generation,
            creation_timestamp: m.creation_timestamp,
            deletion_timestamp: m.deletion_timestamp,
            annotations: m.annotations,
            labels: m.labels,
        }),
        spec: Some(Spec::default()),
        status: Some(Status {
            state: agones_state(gs).into(),
            address: st.and_then(|s| s.address.clone()).unwrap_or_default(),
            node_name: st.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            conditions: st
                .map(|s| {
                    s.conditions
                        .iter()
                        .map(|c| status::GameServerCondition {
                            r#type: c.type_.clone(),
                            status: c.status.clone(),
                            last_probe_time: 0,
                            last_transition_time: c.last_transition_time.0.as_second(),
                            message: c.message.clone(),
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }),
    }
}

/// The JSON both REST gateways answer `GET /gameserver` with: Agones' fields, with
/// Carrier's (`nodeName`, `conditions`) beside them, as each client reads only its own.
pub fn json(gs: &GameServer) -> Value {
    let a = agones(gs);
    let c = carrier(gs);
    let m = a.object_meta.unwrap_or_default();
    let h = a.spec.and_then(|s| s.health).unwrap_or_default();
    let s = a.status.unwrap_or_default();
    let cs = c.status.unwrap_or_default();
    json!({
        "object_meta": {
            "name": m.name,
            "namespace": m.namespace,
            "uid": m.uid,
            "resource_version": m.resource_version,
            "generation": m.generation.to_string(),
            "creation_timestamp": m.creation_timestamp.to_string(),
            "deletion_timestamp": m.deletion_timestamp.to_string(),
            "annotations": m.annotations,
            "labels": m.labels,
        },
        "spec": {
            "health": {
                "disabled": h.disabled,
                "period_seconds": h.period_seconds,
                "failure_threshold": h.failure_threshold,
                "initial_delay_seconds": h.initial_delay_seconds,
            }
        },
        "status": {
            "state": s.state,
            "address": s.address,
            "addresses": s.addresses.iter().map(|a| json!({"type": a.r#type, "address": a.address})).collect::<Vec<_>>(),
            "ports": s.ports.iter().map(|p| json!({"name": p.name, "port": p.port})).collect::<Vec<_>>(),
            "nodeName": cs.node_name,
            "conditions": cs.conditions.iter().map(|c| json!({
                "type": c.r#type,
                "status": c.status,
                "last_transition_time": c.last_transition_time.to_string(),
                "message": c.message,
            })).collect::<Vec<_>>(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GameServerSpec, GameServerStatus, PortStatus, SdkStatus};

    fn server(ours: Option<ServerState>, sdk: Option<SdkState>) -> GameServer {
        let mut gs = GameServer::new("z1-game-1", GameServerSpec::default());
        gs.status = Some(GameServerStatus {
            state: ours,
            address: Some("10.244.1.5".into()),
            node_address: Some("10.0.1.1".into()),
            node_name: Some("node-1".into()),
            ports: vec![PortStatus { name: "game".into(), port: 7001, container_port: 7777, ..Default::default() }],
            sdk: sdk.map(|s| SdkStatus { state: Some(s), ..Default::default() }),
            ..Default::default()
        });
        gs
    }

    #[test]
    fn states_read_as_agones_names() {
        let cases = [
            (None, None, "Creating"),
            (Some(ServerState::Scheduling), None, "Starting"),
            (Some(ServerState::Ready), None, "Scheduled"),
            (Some(ServerState::Starting), Some(SdkState::RequestReady), "RequestReady"),
            (Some(ServerState::Ready), Some(SdkState::RequestReady), "Ready"),
            (Some(ServerState::Ready), Some(SdkState::Allocated), "Allocated"),
            (Some(ServerState::Ready), Some(SdkState::Reserved), "Reserved"),
            (Some(ServerState::Unhealthy), Some(SdkState::Allocated), "Unhealthy"),
            (Some(ServerState::Unhealthy), Some(SdkState::Shutdown), "Shutdown"),
        ];
        for (ours, sdk, want) in cases {
            assert_eq!(agones_state(&server(ours, sdk)), want, "{ours:?} {sdk:?}");
        }
    }

    #[test]
    fn the_agones_message_carries_address_ports_and_default_health() {
        let a = agones(&server(Some(ServerState::Ready), None));
        let s = a.status.unwrap();
        assert_eq!((s.address.as_str(), s.ports[0].port, s.ports[0].name.as_str()), ("10.0.1.1", 7001, "game"));
        assert_eq!(s.addresses.len(), 2);
        let h = a.spec.unwrap().health.unwrap();
        assert_eq!((h.period_seconds, h.failure_threshold, h.initial_delay_seconds), (5, 3, 5));
        assert_eq!(a.object_meta.unwrap().name, "z1-game-1");
    }

    #[test]
    fn the_json_has_both_clients_fields() {
        let j = json(&server(Some(ServerState::Ready), Some(SdkState::RequestReady)));
        assert_eq!(j["status"]["state"], "Ready");
        assert_eq!(j["status"]["nodeName"], "node-1");
        assert_eq!(j["object_meta"]["generation"], "0");
        assert_eq!(j["status"]["ports"][0]["port"], 7001);
    }
}
