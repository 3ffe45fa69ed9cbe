//! Players' sessions through what the cluster and the operator do to their servers: a node
//! drain (`kubectl drain`, through the Eviction API), a scale-down and a rolling update. A client
//! holds a TCP connection and a UDP flow with the example game server, and the test asserts on
//! that session, not only on the API's word: it lasts until the game's deletable gate is True.

use std::time::{Duration, Instant};

use gamezone::api::*;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::cluster::{Cluster, Ns, OPERATOR_IMAGE, RealNode};
use crate::common::wait_for;
use crate::servers::Session;
use crate::support::{Operator, install_crds};
use crate::zones::{TIMEOUT, operator, reachable_at, service, wait_running, zone};
use crate::{ONE_AT_A_TIME, support};

/// Sets the deletable gate `NoPlayers` as the game does.
async fn players_left(servers: &Api<GameServer>, name: &str, left: bool) {
    support::set_gate(servers, name, "NoPlayers", left).await;
}

/// Waits until `name`'s pod is marked as the cluster may (or may not) evict it.
async fn marked(pods: &Api<Pod>, name: &str, evictable: bool) {
    let want = if evictable { "true" } else { "false" };
    wait_for(&format!("{name}'s pod marked {EVICTABLE_LABEL}={want}"), TIMEOUT, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let label = pod.labels().get(EVICTABLE_LABEL).cloned();
        if label.as_deref() == Some(want) { Ok(()) } else { Err(format!("{label:?}")) }
    })
    .await;
}

/// Opens a session with `name`'s `game` port where its status says it is, and checks it answers.
async fn session_with(servers: &Api<GameServer>, name: &str) -> (Session, GameServer) {
    let gs = servers.get(name).await.unwrap();
    let (addr, port) = reachable_at(&gs, "game");
    let mut session =
        wait_for(&format!("a session with {name} at {addr}:{port}"), TIMEOUT, || async { Session::open(&addr, port) })
            .await;
    session.hello().expect("the session answers");
    (session, gs)
}

/// Asks over `session` for `secs` seconds, once a second: it must answer each time.
async fn holds(session: &mut Session, secs: u64, during: &str) {
    for i in 0..secs {
        if let Err(e) = session.hello() {
            panic!("the player's session ended {during} ({i} s in): {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the server's state is `want` with a message containing `says`.
async fn state(servers: &Api<GameServer>, name: &str, want: ServerState, says: &str) -> GameServer {
    wait_for(&format!("{name} {want:?} ({says})"), TIMEOUT, || async {
        let gs = servers.get(name).await.map_err(|e| e.to_string())?;
        let status = gs.status.clone().unwrap_or_default();
        match (status.state, status.message.as_deref()) {
            (Some(s), Some(m)) if s == want && m.contains(says) => Ok(gs),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The zone's `ServersReady` message.
async fn servers_ready(ns: &Ns, zone: &str) -> String {
    let z = ns.api::<GameZone>().get(zone).await.unwrap();
    let status = z.status.unwrap_or_default();
    status.conditions.into_iter().find(|c| c.type_ == "ServersReady").map(|c| c.message).unwrap_or_default()
}

/// Uncordons the node when the test ends, however it ends: the other tests need it.
struct Uncordon<'a>(&'a Cluster, String);

impl Drop for Uncordon<'_> {
    fn drop(&mut self) {
        self.0.kubectl(&["uncordon", &self.1]);
    }
}

/// The `game` type of `servers` servers on the real nodes, whose game says through a deletable
/// gate whether players are on it.
fn gated_service(servers: i64, cpu: &str) -> serde_json::Value {
    let mut game = service(
        "game",
        1,
        Some(servers),
        json!([{"name": "game", "containerPort": 7777, "protocol": "TCPUDP", "policy": "Dynamic"}]),
    );
    game["deletableGates"] = json!(["NoPlayers"]);
    game["resources"] = json!({"requests": {"cpu": cpu}});
    game
}

fn gated_zone(name: &str, zone_id: i64, servers: i64, cpu: &str) -> GameZone {
    zone(name, zone_id, vec![gated_service(servers, cpu)], json!([]))
}

/// The `held` zone's spec with `servers` gated servers of a new revision (a new env var).
fn revised(servers: i64) -> serde_json::Value {
    let mut game = gated_service(servers, "10m");
    game["env"] = json!([{"name": "REV", "value": "2"}]);
    json!({"spec": {"services": [game]}})
}

#[tokio::test]
async fn a_node_drain_waits_for_each_server_s_players_then_moves_it_to_another_node() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::two_nodes();
    let ns = Ns::new(cluster, "e2e-drain").await;
    install_crds(&ns.client).await;
    let _op = operator(cluster, &ns, "7800-7899");
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();
    zones.create(&PostParams::default(), &gated_zone("drain", 309, 2, "100m")).await.unwrap();
    wait_running(&ns, "drain").await;
    // Players on game-1; none on game-2.
    players_left(&servers, "drain-game-1", false).await;
    players_left(&servers, "drain-game-2", true).await;
    marked(&pods, "drain-game-1", false).await;
    marked(&pods, "drain-game-2", true).await;
    let (mut session, before) = session_with(&servers, "drain-game-1").await;
    let node = before.status.as_ref().and_then(|s| s.node_name.clone()).expect("on a node");
    let host_port = before.status.as_ref().unwrap().ports[0].host_port;

    // `kubectl drain` evicts through the Eviction API: refused for game-1 while it holds players.
    let _uncordon = Uncordon(cluster, node.clone());
    let mut drain =
        cluster.kubectl_spawn(&["drain", &node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=300s"]);
    state(&servers, "drain-game-1", ServerState::Draining, "NotInService").await;
    holds(&mut session, 8, "while its node drained").await;
    assert!(drain.try_wait().unwrap().is_none(), "kubectl drain finished while a player was on the node");
    let says = servers_ready(&ns, "drain").await;
    assert!(
        says.contains(&format!("drain-game-1: on {node} is cordoned: waiting for deletable gates NoPlayers")),
        "{says}"
    );

    // The players leave: the drain ends, and the server runs on the other node, with its id and
    // host port, and answers at its new address.
    players_left(&servers, "drain-game-1", true).await;
    let drained = tokio::task::spawn_blocking(move || drain.wait()).await.unwrap().unwrap();
    assert!(drained.success(), "kubectl drain {node}: {drained}");
    let moved = wait_for("drain-game-1 Ready on the other node", TIMEOUT, || async {
        let gs = servers.get("drain-game-1").await.map_err(|e| e.to_string())?;
        let status = gs.status.clone().unwrap_or_default();
        match (status.state, status.node_name.as_deref()) {
            (Some(ServerState::Ready), Some(n)) if n != node => Ok(gs),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let status = moved.status.as_ref().unwrap();
    assert_eq!(status.ports[0].host_port, host_port, "the host port moves with it");
    assert!(moved.spec.not_in_service().is_none(), "back in service on its new node");
    let (mut again, _) = session_with(&servers, "drain-game-1").await;
    let answer = again.hello().unwrap();
    assert_eq!(answer["instance"], "drain-game-1", "{answer}");
    // An Event says it moved.
    let events: Api<Event> = ns.api();
    let notes: Vec<String> =
        events.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|e| e.message).collect();
    assert!(notes.iter().any(|n| n.contains("moving off") && n.contains(&node)), "{notes:?}");
    drop(_uncordon);
    ns.finish().await;
}

#[tokio::test]
async fn a_player_s_session_lasts_through_a_rolling_update_and_a_scale_down_until_the_gate_is_true() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let ns = Ns::new(cluster, "e2e-session").await;
    install_crds(&ns.client).await;
    let _op = operator(cluster, &ns, "7900-7999");
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    zones.create(&PostParams::default(), &gated_zone("held", 310, 2, "10m")).await.unwrap();
    wait_running(&ns, "held").await;
    players_left(&servers, "held-game-1", true).await;
    players_left(&servers, "held-game-2", false).await;
    let (mut session, before) = session_with(&servers, "held-game-2").await;

    // A rolling update (maxUnavailable 1, the default): game-1 is replaced, game-2 is drained
    // and keeps its player until the gate says they left.
    let update = revised(2);
    zones.patch("held", &PatchParams::default(), &Patch::Merge(update)).await.unwrap();
    state(&servers, "held-game-2", ServerState::Draining, "NotInService").await;
    holds(&mut session, 8, "during the rolling update").await;
    assert_eq!(
        servers.get("held-game-2").await.unwrap().status.unwrap().pod_uid,
        before.status.as_ref().unwrap().pod_uid,
        "replaced with a player on it"
    );
    players_left(&servers, "held-game-2", true).await;
    wait_running(&ns, "held").await;

    // A scale-down: game-2 leaves the spec with a player on its new pod.
    players_left(&servers, "held-game-2", false).await;
    let (mut session, _) = session_with(&servers, "held-game-2").await;
    let shrink = revised(1);
    zones.patch("held", &PatchParams::default(), &Patch::Merge(shrink)).await.unwrap();
    state(&servers, "held-game-2", ServerState::Draining, "NotInService").await;
    holds(&mut session, 8, "during the scale-down").await;
    players_left(&servers, "held-game-2", true).await;
    wait_for("held-game-2 gone once its player left", TIMEOUT, || async {
        let left = servers.list(&support::selector("held")).await.map_err(|e| e.to_string())?.items;
        let names: Vec<String> = left.iter().map(|g| g.name_any()).collect();
        if names == ["held-game-1"] { Ok(()) } else { Err(format!("{names:?}")) }
    })
    .await;
    ns.finish().await;
}

/// Starts the node's daemons again when the test ends, however it ends: the other tests need it.
struct Revive<'a>(&'a Cluster, &'a RealNode);

impl Drop for Revive<'_> {
    fn drop(&mut self) {
        self.0.restart_node_daemons(self.1);
    }
}

#[tokio::test]
async fn a_node_not_ready_past_its_grace_is_drained_and_its_server_moves_once_its_players_left() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::two_nodes();
    let ns = Ns::new(cluster, "e2e-lost").await;
    install_crds(&ns.client).await;
    let grace = 5;
    let _op = Operator::start_with(
        &cluster.kubeconfig,
        &ns.name,
        &["--init-image", OPERATOR_IMAGE, "--port-range", "6800-6899", "--node-not-ready-grace", &grace.to_string()],
    );
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    zones.create(&PostParams::default(), &gated_zone("lost", 311, 1, "100m")).await.unwrap();
    wait_running(&ns, "lost").await;
    players_left(&servers, "lost-game-1", false).await;
    let (mut session, before) = session_with(&servers, "lost-game-1").await;
    let status = before.status.as_ref().unwrap();
    let name = status.node_name.clone().expect("on a node");
    let node = cluster.info.nodes.iter().find(|n| n.name == name).expect("a real node");

    // The node's kubelet and containerd die; its game keeps serving. The node lifecycle
    // controller marks the node and its pods not Ready after its own grace, the operator drains
    // the server after `--node-not-ready-grace`, and the player's session goes on meanwhile.
    cluster.kill_node_daemons(node);
    let _revive = Revive(cluster, node);
    let deadline = Instant::now() + Duration::from_secs(150);
    let drained = loop {
        if let Err(e) = session.hello() {
            panic!("the player's session ended while its node was unheard: {e}");
        }
        let says = servers_ready(&ns, "lost").await;
        if says.contains(&format!("{name} has not been Ready since")) {
            break says;
        }
        assert!(Instant::now() < deadline, "lost-game-1 not drained off {name} in time: {says}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(drained.contains("waiting for deletable gates NoPlayers"), "{drained}");
    state(&servers, "lost-game-1", ServerState::Draining, "NotInService").await;
    holds(&mut session, 5, "while its node was unheard").await;
    let still = servers.get("lost-game-1").await.unwrap();
    assert_eq!(still.status.unwrap().pod_uid, status.pod_uid, "its pod went with a player on it");

    // The players leave: the pod goes at once (no kubelet would confirm a graceful deletion), and
    // the server runs on the other node with its id and host port.
    players_left(&servers, "lost-game-1", true).await;
    let moved = wait_for("lost-game-1 Ready on the other node", TIMEOUT, || async {
        let gs = servers.get("lost-game-1").await.map_err(|e| e.to_string())?;
        let status = gs.status.clone().unwrap_or_default();
        match (status.state, status.node_name.as_deref()) {
            (Some(ServerState::Ready), Some(n)) if n != name => Ok(gs),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let now = moved.status.as_ref().unwrap();
    assert_eq!(now.ports[0].host_port, status.ports[0].host_port, "the host port moves with it");
    let (mut again, _) = session_with(&servers, "lost-game-1").await;
    assert_eq!(again.hello().unwrap()["instance"], "lost-game-1");

    // The node's daemons come back: its kubelet stops the pod the API no longer has, so the
    // server runs once.
    drop(_revive);
    let deadline = Instant::now() + TIMEOUT;
    while let Ok(answer) = session.hello() {
        assert!(Instant::now() < deadline, "the old pod on {name} still answers: {answer}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(again.hello().unwrap()["instance"], "lost-game-1", "the moved server serves on");
    ns.finish().await;
}
