//! Host port policies on the local control plane: Dynamic, Static, Passthrough and None, exhaustion
//! and recovery, nodes joining live, and the rebuild after an operator restart. Each test uses a
//! port range of its own, since the shared cluster's scheduler sees every test's host ports.

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};

use gamezone::api::*;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::{Operator, WAIT, free_port, http_get, install_crds, wait_ready};

fn zone(name: &str, servers: i64, ports: serde_json::Value) -> GameZone {
    gamezone_api::fixture::zone(name).servers(servers).game("ports", ports).build()
}

/// (node, host port, protocol) of every hostPort of every pod in the namespace.
async fn host_ports(pods: &Api<Pod>) -> Vec<(String, i32, String)> {
    let mut out = Vec::new();
    for p in pods.list(&ListParams::default()).await.unwrap() {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        for c in &p.spec.as_ref().unwrap().containers {
            for port in c.ports.clone().unwrap_or_default() {
                if let Some(h) = port.host_port {
                    out.push((node.clone(), h, port.protocol.clone().unwrap_or_default()));
                }
            }
        }
    }
    out
}

fn assert_no_duplicates_per_node(ports: &[(String, i32, String)]) {
    let mut seen = BTreeSet::new();
    for p in ports {
        assert!(seen.insert(p.clone()), "host port {p:?} used twice on one node: {ports:?}");
    }
}

async fn states(servers: &Api<GameServer>) -> BTreeMap<String, (Option<ServerState>, String)> {
    servers
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|g| {
            let s = g.status.clone().unwrap_or_default();
            (g.name_any(), (s.state, s.message.unwrap_or_default()))
        })
        .collect()
}

#[tokio::test]
async fn dynamic_ports_spread_over_nodes_and_survive_a_restart() {
    let ns = common::namespace("ports-dynamic").await;
    install_crds(&ns.client).await;
    let mut op = Operator::start_with(ns.kubeconfig(), &ns.name, &["--port-range", "7100-7101"]);
    let zones: Api<GameZone> = ns.api();
    let pods: Api<Pod> = ns.api();
    let servers: Api<GameServer> = ns.api();
    // Two ports in the range, three nodes: six slots; four servers asking for a TCPUDP port each.
    let ports = json!([{"name": "game", "containerPort": 7777, "protocol": "TCPUDP", "policy": "Dynamic"}]);
    zones.create(&PostParams::default(), &zone("zone1", 4, ports.clone())).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let used = host_ports(&pods).await;
    assert_eq!(used.len(), 8, "a TCP and a UDP entry per server: {used:?}");
    assert_no_duplicates_per_node(&used);
    for g in servers.list(&ListParams::default()).await.unwrap() {
        let st = g.status.unwrap();
        let p = &st.ports[0];
        assert!(matches!(p.host_port, Some(7100 | 7101)), "{p:?}");
        assert_eq!((p.container_port, p.port), (7777, p.host_port.unwrap()));
        let pod = pods.get(&g.metadata.name.clone().unwrap()).await.unwrap();
        let env = pod.spec.unwrap().containers[0].env.clone().unwrap();
        let told = env.iter().find(|e| e.name == "GAMEZONE_PORT_GAME").and_then(|e| e.value.clone());
        assert_eq!(told, Some(p.host_port.unwrap().to_string()), "the process is told its public port");
    }
    // The topology lists every server's allocated ports; the pod was made only once it did.
    let topology: Api<ConfigMap> = ns.api();
    let doc: serde_json::Value =
        serde_json::from_str(&topology.get("zone1-topology").await.unwrap().data.unwrap()["topology.json"]).unwrap();
    for g in servers.list(&ListParams::default()).await.unwrap() {
        let entry = doc["instances"].as_array().unwrap().iter().find(|i| i["name"] == g.name_any()).unwrap().clone();
        let listed: Vec<PortStatus> = serde_json::from_value(entry["ports"].clone()).unwrap();
        assert_eq!(listed, g.status.clone().unwrap().ports, "topology of {}", g.name_any());
    }

    // A deleted pod comes back with the same host port.
    let held = servers.get("zone1-game-1").await.unwrap().status.unwrap().ports[0].host_port;
    let old_uid = pods.get("zone1-game-1").await.unwrap().metadata.uid;
    pods.delete("zone1-game-1", &DeleteParams::default()).await.unwrap();
    let again = common::wait_for("zone1-game-1's pod re-created and Ready", WAIT, || async {
        let p = pods.get_opt("zone1-game-1").await.map_err(|e| e.to_string())?.ok_or("no pod")?;
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if p.metadata.uid != old_uid && ready { Ok(p) } else { Err("old or not ready".to_string()) }
    })
    .await;
    let port = again.spec.unwrap().containers[0].ports.clone().unwrap()[0].host_port;
    assert_eq!(port, held, "the server kept its host port");

    // Restart: allocations are rebuilt, so the two new servers take the last free slots only.
    op.kill();
    let _op = Operator::start_with(ns.kubeconfig(), &ns.name, &["--port-range", "7100-7101"]);
    zones
        .patch(
            "zone1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"services": [{"type": "game", "id": 1, "endId": 6, "ports": ports}]}})),
        )
        .await
        .unwrap();
    wait_ready(&zones, "zone1").await;
    let used = host_ports(&pods).await;
    assert_eq!(used.len(), 12);
    assert_no_duplicates_per_node(&used);
    ns.cleanup().await;
}

#[tokio::test]
async fn exhausted_range_is_reported_and_recovers_when_ports_free() {
    let ns = common::namespace("ports-exhaust").await;
    install_crds(&ns.client).await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _op = Operator::start_with(ns.kubeconfig(), &ns.name, &["--port-range", "7200-7200", "--http-addr", &addr]);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let ports = json!([{"name": "game", "containerPort": 7777, "policy": "Dynamic"}]);
    // One port, three nodes: three slots for five servers.
    zones.create(&PostParams::default(), &zone("big", 3, ports.clone())).await.unwrap();
    wait_ready(&zones, "big").await;
    zones.create(&PostParams::default(), &zone("late", 2, ports)).await.unwrap();
    let waiting = common::wait_for("the late zone's servers waiting for ports", WAIT, || async {
        let s = states(&servers).await;
        let late: Vec<_> = s.iter().filter(|(n, _)| n.starts_with("late-")).map(|(_, v)| v.clone()).collect();
        if late.len() == 2 && late.iter().all(|(st, _)| *st == Some(ServerState::PortAllocation)) {
            Ok(late)
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    assert!(waiting[0].1.contains("7200"), "the message names the range: {}", waiting[0].1);
    common::wait_for("the late zone to say its servers wait for ports", WAIT, || async {
        let st = zones.get("late").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        let msg =
            st.conditions.iter().find(|c| c.type_ == "ServersReady").map(|c| c.message.clone()).unwrap_or_default();
        if st.phase == Some(ZonePhase::Deploying) && msg.contains("PortAllocation") && msg.contains("7200") {
            Ok(())
        } else {
            Err(format!("{:?}: {msg}", st.phase))
        }
    })
    .await;

    // The exhausted range shows in the metrics: no free slot of 7200 on any of the 3 nodes.
    let (_, metrics) = http_get(port, "/metrics").expect("operator metrics");
    assert!(metrics.contains(r#"gamezone_port_slots{range="7200",state="free"} 0"#), "{metrics}");
    assert!(metrics.contains(r#"gamezone_port_slots{range="7200",state="used"} 3"#), "{metrics}");

    // Freeing ports lets them start, without anyone restarting anything.
    zones.delete("big", &DeleteParams::default()).await.unwrap();
    wait_ready(&zones, "late").await;
    // The servers gauge follows deletions: the big zone's three are gone.
    common::wait_for("the GameServer gauge at the late zone's two", WAIT, || async {
        let (_, metrics) = http_get(port, "/metrics").ok_or("no metrics")?;
        let line = metrics.lines().find(|l| l.starts_with(r#"gamezone_managed_objects{kind="GameServer"}"#));
        if line.is_some_and(|l| l.ends_with(" 2")) { Ok(()) } else { Err(format!("{line:?}")) }
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn passthrough_static_and_none_ports() {
    let ns = common::namespace("ports-policies").await;
    install_crds(&ns.client).await;
    let _op = Operator::start_with(ns.kubeconfig(), &ns.name, &["--port-range", "7300-7309"]);
    let zones: Api<GameZone> = ns.api();
    let ports = json!([
        {"name": "pass", "protocol": "UDP", "policy": "Passthrough"},
        {"name": "fixed", "containerPort": 9000, "hostPort": 7399, "policy": "Static"},
        {"name": "direct", "containerPort": 8080}
    ]);
    zones.create(&PostParams::default(), &zone("zone1", 2, ports)).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let pods: Api<Pod> = ns.api();
    let servers: Api<GameServer> = ns.api();
    for g in servers.list(&ListParams::default()).await.unwrap() {
        let st = g.status.unwrap();
        let by: BTreeMap<_, _> = st.ports.iter().map(|p| (p.name.as_str(), p)).collect();
        let pod = pods.get(&g.metadata.name.clone().unwrap()).await.unwrap();
        let cports = pod.spec.as_ref().unwrap().containers[0].ports.clone().unwrap();
        // Passthrough: container port = host port = allocated, in the pod and in status.
        let pass = by["pass"];
        assert_eq!(Some(pass.container_port), pass.host_port);
        assert!((7300..=7309).contains(&pass.container_port));
        assert!(cports.iter().any(|c| c.container_port == pass.container_port
            && c.host_port == Some(pass.container_port)
            && c.protocol.as_deref() == Some("UDP")));
        // Static: the user's host port.
        assert_eq!((by["fixed"].host_port, by["fixed"].container_port), (Some(7399), 9000));
        // None: no host port; reached at the pod IP and container port.
        assert_eq!((by["direct"].host_port, by["direct"].port), (None, 8080));
        assert!(cports.iter().any(|c| c.container_port == 8080 && c.host_port.is_none()));
        assert_eq!(st.address, pod.status.unwrap().pod_ip);
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn a_joining_node_adds_capacity_live() {
    let cluster = common::start_private(1);
    let client: Client = cluster.client().await;
    install_crds(&client).await;
    let _op = Operator::start_with(cluster.kubeconfig(), "default", &["--port-range", "7400-7400"]);
    let zones: Api<GameZone> = Api::namespaced(client.clone(), "default");
    let servers: Api<GameServer> = Api::namespaced(client.clone(), "default");
    zones
        .create(
            &PostParams::default(),
            &zone("zone1", 2, json!([{"name": "game", "containerPort": 7777, "policy": "Dynamic"}])),
        )
        .await
        .unwrap();
    common::wait_for("one server Ready, one waiting for a port", WAIT, || async {
        let s = states(&servers).await;
        let ready = s.values().filter(|v| v.0 == Some(ServerState::Ready)).count();
        let waiting = s.values().filter(|v| v.0 == Some(ServerState::PortAllocation)).count();
        if (ready, waiting) == (1, 1) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-2", "annotations": {"kwok.x-k8s.io/node": "fake"},
                     "labels": {"kubernetes.io/hostname": "node-2", "kubernetes.io/os": "linux", "type": "kwok"}},
        "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.1.2"}],
                   "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"}}
    }))
    .unwrap();
    Api::<Node>::all(client.clone()).create(&PostParams::default(), &node).await.unwrap();
    let z = wait_ready(&zones, "zone1").await;
    assert_eq!(z.status.unwrap().ready_servers, 2);
    let nodes: BTreeSet<String> = servers
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|g| g.status?.node_name)
        .collect();
    assert_eq!(nodes.len(), 2, "the same host port, on two nodes");
}

#[tokio::test]
async fn ports_are_held_no_more_often_than_there_are_nodes_a_server_can_run_on() {
    let ns = common::namespace("ports-reach").await;
    install_crds(&ns.client).await;
    let _op = Operator::start_with(ns.kubeconfig(), &ns.name, &["--port-range", "7750-7750"]);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    // Two servers only node-1 can run, and one port: three nodes have a slot of it, but the
    // second server would never be scheduled with it, so it waits for the port instead.
    let mut pinned = zone("pinned", 2, json!([{"name": "game", "containerPort": 7777, "policy": "Dynamic"}]));
    pinned.spec.services[0].node_selector = BTreeMap::from([("kubernetes.io/hostname".into(), "node-1".into())]);
    zones.create(&PostParams::default(), &pinned).await.unwrap();
    let seen = common::wait_for("one pinned server Ready, the other waiting for a port", WAIT, || async {
        let s = states(&servers).await;
        let mut got: Vec<_> = s.values().map(|(st, _)| *st).collect();
        got.sort_by_key(|st| format!("{st:?}"));
        if got == [Some(ServerState::PortAllocation), Some(ServerState::Ready)] { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    let (_, why) = seen.values().find(|(st, _)| *st == Some(ServerState::PortAllocation)).unwrap();
    assert!(why.contains("every one of the 1 node(s) it can run on"), "{why}");
    let pods: Api<Pod> = ns.api();
    let held = host_ports(&pods).await;
    assert_eq!(held, [("node-1".to_string(), 7750, "TCP".to_string())], "{held:?}");
    ns.cleanup().await;
}
