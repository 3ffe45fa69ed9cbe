//! A cordoned node at scale, on a control plane of its own (KWOK nodes): 200 servers on one
//! node, half of them holding players. The cordon moves every server whose players left to the
//! other node, and none that holds players, for a number of API writes within a small multiple
//! of a plain scale-down's; once the players leave, the rest move too, and away again from a node
//! the cluster autoscaler taints for removal.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use gamezone::api::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{common, support};
use support::{Operator, POOL, install_crds, kubectl, pool_node, set_gates, wait_ready_within};

/// Servers on the cordoned node.
const SERVERS: usize = 200;
/// Servers a plain scale-down removes, for the writes it costs.
const SCALED_DOWN: usize = SERVERS / 2;
/// Hundreds of servers made, moved or drained on two cores.
const TIMEOUT: Duration = Duration::from_secs(300);
/// The most API writes the cordon may cost per server on the node, as a multiple of what a
/// plain scale-down costs per server it removes. A moved server is drained, its pod deleted and
/// made again, its status told each step; a server that holds players is drained only.
const WRITES_MULTIPLE: f64 = 4.0;
/// The `game` type of a zone of `servers` on the pool's nodes, with a deletable gate.
fn game(servers: usize) -> serde_json::Value {
    json!({"type": "game", "id": 1, "endId": servers, "deletableGates": ["NoPlayers"],
           "nodeSelector": {POOL.0: POOL.1}})
}

fn gated_zone(name: &str, servers: usize) -> GameZone {
    let game = game(servers);
    let fields = game.as_object().unwrap().iter().filter(|(k, _)| !["type", "id", "endId"].contains(&k.as_str()));
    fields.fold(gamezone_api::fixture::zone(name).servers(servers as i64), |z, (k, v)| z.game(k, v.clone())).build()
}

/// The operator's writes in `ns` since `since` (its lease renewals aside).
async fn operator_writes(ns: &common::TestNs, since: SystemTime) -> usize {
    // The audit log's last entries land a moment after their requests complete.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = common::audit::writes_by(ns.kubeconfig(), &ns.name, "gamezone/");
    writes.iter().filter(|w| w.received_since(since) && w.object_ref.resource != "leases").count()
}

/// Each server of `zone` with its pod's uid (none while it has no pod, or one going) and node.
async fn placed(servers: &Api<GameServer>, pods: &Api<Pod>, zone: &str) -> BTreeMap<String, (GameServer, Pod)> {
    let pods: BTreeMap<String, Pod> = pods
        .list(&support::selector(zone))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.name_any(), p))
        .collect();
    let servers = servers.list(&support::selector(zone)).await.unwrap().items;
    servers
        .into_iter()
        .filter_map(|gs| Some((gs.name_any(), (gs.clone(), pods.get(&gs.name_any())?.clone()))))
        .collect()
}

fn node_of(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or_default()
}

fn state_of(gs: &GameServer) -> Option<ServerState> {
    gs.status.as_ref().and_then(|s| s.state)
}

#[tokio::test]
async fn a_cordoned_node_moves_each_server_whose_players_left_and_keeps_each_that_holds_players() {
    let cluster = common::start_private(1);
    let kubeconfig = cluster.kubeconfig();
    let client = cluster.client().await;
    for i in [1, 2] {
        Api::<Node>::all(client.clone()).create(&PostParams::default(), &pool_node(i)).await.unwrap();
    }
    install_crds(&client).await;
    let ns = common::namespace_in(kubeconfig, "cordon").await;
    let _op = Operator::start(kubeconfig, &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();

    // A plain scale-down of servers whose players left: the writes it costs per server.
    zones.create(&PostParams::default(), &gated_zone("base", SCALED_DOWN + 1)).await.unwrap();
    wait_ready_within(&zones, "base", TIMEOUT).await;
    set_gates(&servers, (1..=SCALED_DOWN + 1).map(|i| (format!("base-game-{i}"), true)).collect()).await;
    let since = SystemTime::now();
    let shrink = json!({"spec": {"services": [game(1)]}});
    zones.patch("base", &PatchParams::default(), &Patch::Merge(shrink)).await.unwrap();
    common::wait_for("base scaled down to 1 server", TIMEOUT, || async {
        let left = support::names(&servers, "base").await;
        if left.len() == 1 { Ok(()) } else { Err(format!("{} servers", left.len())) }
    })
    .await;
    wait_ready_within(&zones, "base", TIMEOUT).await;
    let scale_down = operator_writes(&ns, since).await;
    zones.delete("base", &Default::default()).await.unwrap();
    common::wait_for("base gone", TIMEOUT, || async {
        let left = support::names(&servers, "base").await;
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await;

    // 200 servers on big-1 (big-2 cordoned while they start); the odd ones hold players.
    kubectl(kubeconfig, &["cordon", "big-2"]);
    zones.create(&PostParams::default(), &gated_zone("zone1", SERVERS)).await.unwrap();
    wait_ready_within(&zones, "zone1", TIMEOUT).await;
    kubectl(kubeconfig, &["uncordon", "big-2"]);
    let holds = |name: &str| name.rsplit('-').next().and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i % 2 == 1);
    set_gates(&servers, (1..=SERVERS).map(|i| format!("zone1-game-{i}")).map(|n| (n.clone(), !holds(&n))).collect())
        .await;
    let before: BTreeMap<String, String> =
        placed(&servers, &pods, "zone1").await.into_iter().map(|(n, (_, p))| (n, p.uid().unwrap())).collect();
    assert_eq!(before.len(), SERVERS);

    // The cordon: each server whose players left runs on big-2 with a new pod; each that holds
    // players is drained and keeps its pod on big-1.
    let since = SystemTime::now();
    kubectl(kubeconfig, &["cordon", "big-1"]);
    let settled = || async {
        let now = placed(&servers, &pods, "zone1").await;
        let mut wrong = Vec::new();
        for (name, uid) in &before {
            let Some((gs, pod)) = now.get(name) else {
                wrong.push(format!("{name}: no pod"));
                continue;
            };
            let ok = if holds(name) {
                pod.uid().as_ref() == Some(uid) && gs.spec.not_in_service().is_some()
            } else {
                pod.uid().as_ref() != Some(uid) && node_of(pod) == "big-2" && state_of(gs) == Some(ServerState::Ready)
            };
            if !ok {
                wrong.push(format!(
                    "{name}: {:?} on {} ({})",
                    state_of(gs),
                    node_of(pod),
                    pod.uid().unwrap_or_default()
                ));
            }
        }
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("{} not yet, e.g. {:?}", wrong.len(), &wrong[..3.min(wrong.len())]))
        }
    };
    common::wait_for("every free server on big-2, every held one drained on big-1", TIMEOUT, settled).await;
    let cordon = operator_writes(&ns, since).await;
    // Nothing that holds players goes later either.
    tokio::time::sleep(Duration::from_secs(3)).await;
    common::wait_for("the held servers still on big-1", Duration::from_secs(1), settled).await;
    let z = zones.get("zone1").await.unwrap();
    let says = z.status.unwrap().conditions.into_iter().find(|c| c.type_ == "ServersReady").unwrap().message;
    assert!(says.contains("zone1-game-1: on big-1 is cordoned: waiting for deletable gates NoPlayers"), "{says}");

    let per_moved = cordon as f64 / SERVERS as f64;
    let per_removed = scale_down as f64 / SCALED_DOWN as f64;
    eprintln!(
        "[cordon] operator writes: {cordon} for {SERVERS} servers on the node ({per_moved:.2} each); \
         a scale-down: {scale_down} for {SCALED_DOWN} ({per_removed:.2} each); ratio {:.2}",
        per_moved / per_removed
    );
    assert!(
        per_moved <= WRITES_MULTIPLE * per_removed,
        "the cordon cost {per_moved:.2} writes per server, a scale-down {per_removed:.2}"
    );

    // The players leave: the rest move, and the node is empty of the zone's pods.
    set_gates(&servers, before.keys().filter(|n| holds(n)).map(|n| (n.clone(), true)).collect()).await;
    let all_on = |node: &'static str| {
        let (servers, pods) = (servers.clone(), pods.clone());
        move || {
            let (servers, pods) = (servers.clone(), pods.clone());
            async move {
                let now = placed(&servers, &pods, "zone1").await;
                let off = now.values().filter(|(gs, p)| node_of(p) != node || state_of(gs) != Some(ServerState::Ready));
                let off = off.count() + SERVERS - now.len();
                if off == 0 { Ok(()) } else { Err(format!("{off} not yet")) }
            }
        }
    };
    common::wait_for("every server Ready on big-2", TIMEOUT, all_on("big-2")).await;

    // The cluster autoscaler takes big-2 away (its taint, no cordon): every server, free now,
    // moves back to big-1.
    kubectl(kubeconfig, &["uncordon", "big-1"]);
    kubectl(kubeconfig, &["taint", "node", "big-2", "ToBeDeletedByClusterAutoscaler=1:NoSchedule"]);
    common::wait_for("every server Ready on big-1, away from the autoscaler's node", TIMEOUT, all_on("big-1")).await;
    ns.cleanup().await;
}
