//! Players are never kicked: readiness and deletable gates, drains on scale-down and zone
//! deletion, rolling updates within maxUnavailable. Gates are set here as a game sets them,
//! through its own field manager on the GameServer's status.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use gamezone::api::*;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::{common, support};
use support::{Operator, WAIT, install_crds, names, set_gate, wait_ready};

/// A zone of `game` servers 1..=`end` with the given lifecycle fields on the type.
fn zone(servers: i64, lifecycle: serde_json::Value) -> GameZone {
    let fields = lifecycle.as_object().unwrap();
    fields.iter().fold(gamezone_api::fixture::zone("zone1").servers(servers), |z, (k, v)| z.game(k, v.clone())).build()
}

async fn state(servers: &Api<GameServer>, name: &str) -> Result<(Option<ServerState>, String), String> {
    let gs = servers.get_opt(name).await.map_err(|e| e.to_string())?.ok_or_else(|| format!("{name} is gone"))?;
    let status = gs.status.unwrap_or_default();
    Ok((status.state, status.message.unwrap_or_default()))
}

#[tokio::test]
async fn a_readiness_gate_holds_a_server_until_the_game_sets_it() {
    let ns = common::namespace("lifecycle-ready").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    zones.create(&PostParams::default(), &zone(1, json!({"readinessGates": ["Loaded"]}))).await.unwrap();
    common::wait_for("zone1-game-1 RequestReady for its gate", WAIT, || async {
        match state(&servers, "zone1-game-1").await? {
            (Some(ServerState::RequestReady), m) if m.contains("Loaded") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Not Ready while the gate is open, and the zone says what it waits for. Waited for, not read
    // once: the zone's status comes with its next reconcile, which may follow the server's.
    common::wait_for("zone1 waiting for zone1-game-1's gate", WAIT, || async {
        let status = zones.get("zone1").await.map_err(|e| e.to_string())?.status.ok_or("no status yet")?;
        let said = status.conditions.iter().find(|c| c.type_ == "ServersReady").map(|c| c.message.clone());
        let said = said.unwrap_or_default();
        match status.ready_servers {
            0 if said.contains("zone1-game-1 RequestReady") && said.contains("Loaded") => Ok(()),
            ready => Err(format!("{ready} Ready: {said}")),
        }
    })
    .await;
    set_gate(&servers, "zone1-game-1", "Loaded", true).await;
    wait_ready(&zones, "zone1").await;
    // The operator's later writes leave the game's condition alone.
    let gs = servers.get("zone1-game-1").await.unwrap();
    let conditions = gs.status.unwrap().conditions;
    assert!(conditions.iter().any(|c| c.type_ == "Loaded" && c.status == "True"), "{conditions:?}");
    ns.cleanup().await;
}

#[tokio::test]
async fn shrinking_a_range_drains_the_server_until_its_players_left() {
    let ns = common::namespace("lifecycle-drain").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    zones.create(&PostParams::default(), &zone(3, json!({"deletableGates": ["NoPlayers"]}))).await.unwrap();
    wait_ready(&zones, "zone1").await;

    let shrink =
        json!({"spec": {"services": [{"type": "game", "id": 1, "endId": 2, "deletableGates": ["NoPlayers"]}]}});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(shrink)).await.unwrap();
    common::wait_for("zone1-game-3 Draining", WAIT, || async {
        match state(&servers, "zone1-game-3").await? {
            (Some(ServerState::Draining), m) if m.contains("NotInService") && m.contains("NoPlayers") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let gs = servers.get("zone1-game-3").await.unwrap();
    assert!(gs.spec.not_in_service().is_some(), "the game sees NotInService on its GameServer");
    // Players are still there: it stays, and the zone says so.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(servers.get_opt("zone1-game-3").await.unwrap().is_some(), "deleted with players on it");
    let z = zones.get("zone1").await.unwrap();
    let msg = z.status.unwrap().conditions.into_iter().find(|c| c.type_ == "ServersReady").unwrap().message;
    assert!(msg.contains("draining zone1-game-3: waiting for deletable gates NoPlayers"), "{msg}");

    set_gate(&servers, "zone1-game-3", "NoPlayers", true).await;
    common::wait_for("zone1-game-3 gone once its players left", WAIT, || async {
        let left = names(&servers, "zone1").await;
        if left == ["zone1-game-1", "zone1-game-2"] { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await;
    wait_ready(&zones, "zone1").await;
    ns.cleanup().await;
}

#[tokio::test]
async fn a_drain_timeout_ends_a_drain_and_a_deleted_zone_drains_first() {
    let ns = common::namespace("lifecycle-timeout").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let gates = json!({"deletableGates": ["NoPlayers"], "drainTimeout": "6s"});
    zones.create(&PostParams::default(), &zone(2, gates.clone())).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let mut shrink = json!({"type": "game", "id": 1});
    shrink["deletableGates"] = gates["deletableGates"].clone();
    shrink["drainTimeout"] = gates["drainTimeout"].clone();
    zones
        .patch("zone1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"services": [shrink]}})))
        .await
        .unwrap();
    let started = Instant::now();
    common::wait_for("zone1-game-2 gone after its drain timed out", WAIT, || async {
        let left = names(&servers, "zone1").await;
        if left == ["zone1-game-1"] { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(5), "went before its drainTimeout: {:?}", started.elapsed());

    // Deleting the zone drains too: the last server stays while it has players.
    set_gate(&servers, "zone1-game-1", "NoPlayers", false).await;
    let no_timeout = json!({"spec": {"services": [{"type": "game", "id": 1, "deletableGates": ["NoPlayers"]}]}});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(no_timeout)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    zones.delete("zone1", &DeleteParams::default()).await.unwrap();
    common::wait_for("zone1 Terminating, draining zone1-game-1", WAIT, || async {
        let z = zones.get("zone1").await.map_err(|e| e.to_string())?;
        let status = z.status.unwrap_or_default();
        let ready =
            status.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.message.clone()).unwrap_or_default();
        if status.phase == Some(ZonePhase::Terminating) && ready.contains("zone1-game-1: waiting for deletable gates") {
            Ok(())
        } else {
            Err(format!("{:?}: {ready}", status.phase))
        }
    })
    .await;
    assert_eq!(state(&servers, "zone1-game-1").await.unwrap().0, Some(ServerState::Draining));
    set_gate(&servers, "zone1-game-1", "NoPlayers", true).await;
    common::wait_for("zone1 gone", WAIT, || async {
        match zones.get_opt("zone1").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|z| z.map(|z| z.status)))),
        }
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn an_image_bump_never_has_more_than_max_unavailable_out_and_drains_each_first() {
    let ns = common::namespace("lifecycle-rolling").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let lifecycle = json!({"deletableGates": ["NoPlayers"], "updateStrategy": {"maxUnavailable": 1}});
    zones.create(&PostParams::default(), &zone(4, lifecycle.clone())).await.unwrap();
    wait_ready(&zones, "zone1").await;
    for i in 1..=4 {
        set_gate(&servers, &format!("zone1-game-{i}"), "NoPlayers", true).await;
    }

    // Every change of every server, from a watch: how many are out at each moment, and whether
    // each was drained before its pod moved to the new template.
    let watch = {
        let servers = servers.clone();
        tokio::spawn(async move {
            let mut out_max = 0usize;
            let mut drained_before_update = BTreeMap::<String, bool>::new();
            let mut last = BTreeMap::<String, GameServer>::new();
            let stream = watcher(servers, watcher::Config::default()).applied_objects();
            futures::pin_mut!(stream);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            while let Ok(Some(Ok(gs))) = tokio::time::timeout_at(deadline, stream.next()).await {
                let name = gs.name_any();
                let image = gs.spec.template.spec.as_ref().and_then(|s| s.containers[0].image.clone());
                if image.as_deref() == Some("svc:2") && !drained_before_update.contains_key(&name) {
                    let was_drained = last.get(&name).is_some_and(|old| {
                        old.spec.not_in_service().is_some()
                            || old.status.as_ref().and_then(|s| s.state) == Some(ServerState::Draining)
                    });
                    drained_before_update.insert(name.clone(), was_drained);
                }
                last.insert(name, gs);
                let out = last
                    .values()
                    .filter(|g| {
                        g.spec.not_in_service().is_some()
                            || g.status.as_ref().and_then(|s| s.state) != Some(ServerState::Ready)
                    })
                    .count();
                out_max = out_max.max(out);
                let done = last.len() == 4
                    && last.values().all(|g| {
                        g.spec.template.spec.as_ref().and_then(|s| s.containers[0].image.as_deref()) == Some("svc:2")
                            && g.status.as_ref().and_then(|s| s.state) == Some(ServerState::Ready)
                            && g.status.as_ref().and_then(|s| s.template_hash.clone())
                                == Some(gamezone::zone::server_template_hash(&g.spec))
                    });
                if done {
                    break;
                }
            }
            (out_max, drained_before_update)
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut bumped = lifecycle.clone();
    bumped["type"] = json!("game");
    bumped["id"] = json!(1);
    bumped["endId"] = json!(4);
    bumped["image"] = json!("svc:2");
    zones
        .patch("zone1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"services": [bumped]}})))
        .await
        .unwrap();
    let (out_max, drained) = watch.await.unwrap();
    assert_eq!(drained.len(), 4, "every server moved to the new image: {drained:?}");
    assert!(drained.values().all(|d| *d), "a server was updated before its drain: {drained:?}");
    assert_eq!(out_max, 1, "more than maxUnavailable out at once");
    wait_ready(&zones, "zone1").await;
    ns.cleanup().await;
}

/// The uid of `name`'s pod, when it has one that is not being deleted.
async fn current_pod(pods: &Api<Pod>, name: &str) -> Option<String> {
    let pod = pods.get_opt(name).await.ok()??;
    pod.metadata.deletion_timestamp.is_none().then(|| pod.uid()).flatten()
}

/// Writes `status.sdk` as the SDK sidecar of pod `pod_uid` would (its field manager, a merge
/// patch of the status).
async fn sdk_says(servers: &Api<GameServer>, name: &str, pod_uid: &str, said: serde_json::Value) {
    let mut sdk = json!({"podUid": pod_uid, "stateTime": "2026-01-01T00:00:00Z"});
    for (k, v) in said.as_object().unwrap() {
        sdk[k] = v.clone();
    }
    servers
        .patch_status(name, &PatchParams::apply("gamezone-sdk"), &Patch::Merge(json!({"status": {"sdk": sdk}})))
        .await
        .unwrap_or_else(|e| panic!("status.sdk of {name}: {e}"));
}

async fn wait_state(servers: &Api<GameServer>, name: &str, want: ServerState, says: &str) {
    common::wait_for(&format!("{name} {want:?} ({says})"), WAIT, || async {
        match state(servers, name).await? {
            (Some(s), m) if s == want && m.contains(says) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// Waits until `name` has a pod other than `old`; its uid.
async fn replaced(pods: &Api<Pod>, name: &str, old: &str) -> String {
    common::wait_for(&format!("a new pod for {name}"), WAIT, || async {
        match current_pod(pods, name).await {
            Some(uid) if uid != old => Ok(uid),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test]
async fn the_game_s_sdk_calls_make_its_server_ready_and_end_its_pod_and_only_its_own_pod_s_count() {
    let ns = common::namespace("lifecycle-sdk").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();
    let health = json!({"initialDelaySeconds": 0, "periodSeconds": 1, "failureThreshold": 1});
    zones.create(&PostParams::default(), &zone(2, json!({"ready": "Sdk", "health": health}))).await.unwrap();

    // A Ready pod is not enough: the game must call Ready.
    wait_state(&servers, "zone1-game-1", ServerState::RequestReady, "call Ready through the SDK").await;
    // Both pods, before their sidecars speak: game-2's may come a moment after game-1's.
    wait_state(&servers, "zone1-game-2", ServerState::RequestReady, "call Ready through the SDK").await;
    let pod1 = current_pod(&pods, "zone1-game-1").await.expect("a pod");
    let pod2 = current_pod(&pods, "zone1-game-2").await.expect("a pod");
    sdk_says(&servers, "zone1-game-1", &pod1, json!({"state": "RequestReady"})).await;
    sdk_says(&servers, "zone1-game-2", &pod2, json!({"state": "RequestReady"})).await;
    wait_ready(&zones, "zone1").await;
    // The operator's own status writes leave the sidecar's field to the sidecar.
    let gs = servers.get("zone1-game-1").await.unwrap();
    assert_eq!(gs.status.as_ref().and_then(|s| s.sdk.as_ref()).and_then(|s| s.state), Some(SdkState::RequestReady));
    for entry in gs.managed_fields().iter().filter(|m| m.manager.as_deref() == Some(MANAGER)) {
        let fields = serde_json::to_string(&entry.fields_v1).unwrap();
        assert!(!fields.contains("f:sdk"), "the operator claims status.sdk: {fields}");
    }

    // A replaced pod's last words do not end its successor.
    sdk_says(&servers, "zone1-game-1", "a-pod-long-gone", json!({"state": "Shutdown"})).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        current_pod(&pods, "zone1-game-1").await.as_deref(),
        Some(pod1.as_str()),
        "replaced for another pod's call"
    );

    // Shutdown from the game: a new pod, which must call Ready in its turn.
    sdk_says(&servers, "zone1-game-1", &pod1, json!({"state": "Shutdown"})).await;
    let new1 = replaced(&pods, "zone1-game-1", &pod1).await;
    wait_state(&servers, "zone1-game-1", ServerState::RequestReady, "call Ready through the SDK").await;
    assert_eq!(servers.get("zone1-game-1").await.unwrap().status.unwrap().pod_uid.as_deref(), Some(new1.as_str()));

    // Missed health pings: a new pod too.
    sdk_says(&servers, "zone1-game-2", &pod2, json!({"state": "RequestReady", "health": "Unhealthy"})).await;
    replaced(&pods, "zone1-game-2", &pod2).await;
    let events = kube::Api::<k8s_openapi::api::core::v1::Event>::namespaced(ns.client.clone(), &ns.name);
    common::wait_for("an Event names the missed pings", WAIT, || async {
        let list = events.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let notes: Vec<String> = list.items.into_iter().filter_map(|e| e.message).collect();
        if notes.iter().any(|m| m.contains("no health ping")) { Ok(()) } else { Err(format!("{notes:?}")) }
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn an_allocated_server_stays_on_scale_down_until_the_game_returns_it_to_ready() {
    let ns = common::namespace("lifecycle-allocated").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();
    // No deletable gates: only the game's Allocate keeps it.
    zones.create(&PostParams::default(), &zone(2, json!({}))).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let pod2 = current_pod(&pods, "zone1-game-2").await.expect("a pod");
    sdk_says(&servers, "zone1-game-2", &pod2, json!({"state": "Allocated"})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let shrink = json!({"spec": {"services": [{"type": "game", "id": 1}]}});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(shrink)).await.unwrap();
    wait_state(&servers, "zone1-game-2", ServerState::Draining, "Allocated").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(current_pod(&pods, "zone1-game-2").await.as_deref(), Some(pod2.as_str()), "kicked its players");
    let z = zones.get("zone1").await.unwrap();
    let msg = z.status.unwrap().conditions.into_iter().find(|c| c.type_ == "ServersReady").unwrap().message;
    assert!(msg.contains("zone1-game-2: waiting for the game to end its match"), "{msg}");

    sdk_says(&servers, "zone1-game-2", &pod2, json!({"state": "RequestReady"})).await;
    common::wait_for("zone1-game-2 gone once its match ended", WAIT, || async {
        let left = names(&servers, "zone1").await;
        if left == ["zone1-game-1"] { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn an_operator_killed_mid_drain_and_mid_rollout_deletes_nothing_early() {
    let ns = common::namespace("lifecycle-killed").await;
    install_crds(&ns.client).await;
    let mut op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();
    let lifecycle = json!({"deletableGates": ["NoPlayers"], "updateStrategy": {"maxUnavailable": 1}});
    zones.create(&PostParams::default(), &zone(3, lifecycle.clone())).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let before = support::pod_uids(&pods, "zone1").await;
    for i in 1..=3 {
        set_gate(&servers, &format!("zone1-game-{i}"), "NoPlayers", false).await;
    }

    // Mid-drain: game-3 leaves the spec, the operator dies, another takes over.
    let mut shrunk = lifecycle.clone();
    (shrunk["type"], shrunk["id"], shrunk["endId"]) = (json!("game"), json!(1), json!(2));
    zones
        .patch("zone1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"services": [shrunk]}})))
        .await
        .unwrap();
    wait_state(&servers, "zone1-game-3", ServerState::Draining, "NoPlayers").await;
    op.kill();
    op = Operator::start(ns.kubeconfig(), &ns.name);

    // Mid-rollout: a new image; the first to update is drained, the operator dies again.
    let mut bumped = shrunk.clone();
    bumped["image"] = json!("svc:2");
    zones
        .patch("zone1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"services": [bumped]}})))
        .await
        .unwrap();
    common::wait_for("one server drained for the update", WAIT, || async {
        let drained: Vec<String> = servers
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .into_iter()
            .filter(|g| g.spec.id <= 2 && g.spec.not_in_service().is_some())
            .map(|g| g.name_any())
            .collect();
        if drained.len() == 1 { Ok(()) } else { Err(format!("{drained:?}")) }
    })
    .await;
    op.kill();
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(support::pod_uids(&pods, "zone1").await, before, "a pod with players went while they played");
    let drained = servers
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|g| g.spec.not_in_service().is_some())
        .count();
    assert_eq!(drained, 2, "game-3 and one server updating: no more taken out than maxUnavailable");

    // The players leave: everything converges.
    for i in 1..=3 {
        set_gate(&servers, &format!("zone1-game-{i}"), "NoPlayers", true).await;
    }
    common::wait_for("two servers on svc:2, game-3 gone", Duration::from_secs(90), || async {
        let list = servers.list(&Default::default()).await.map_err(|e| e.to_string())?.items;
        let shown: Vec<(String, Option<String>, Option<ServerState>)> = list
            .iter()
            .map(|g| {
                let image = g.spec.template.spec.as_ref().and_then(|s| s.containers[0].image.clone());
                (g.name_any(), image, g.status.as_ref().and_then(|s| s.state))
            })
            .collect();
        let done = shown.len() == 2
            && shown
                .iter()
                .all(|(_, image, state)| image.as_deref() == Some("svc:2") && *state == Some(ServerState::Ready));
        if done { Ok(()) } else { Err(format!("{shown:?}")) }
    })
    .await;
    wait_ready(&zones, "zone1").await;
    ns.cleanup().await;
}

/// The eviction marks of `name`'s pod: its [`EVICTABLE_LABEL`] and the autoscaler's annotation.
async fn eviction_marks(pods: &Api<Pod>, name: &str) -> (Option<String>, Option<String>) {
    let pod = pods.get(name).await.unwrap();
    (pod.labels().get(EVICTABLE_LABEL).cloned(), pod.annotations().get(SAFE_TO_EVICT_ANNOTATION).cloned())
}

async fn wait_marked(pods: &Api<Pod>, name: &str, evictable: bool) {
    let want = if evictable { "true" } else { "false" };
    common::wait_for(&format!("{name}'s pod marked evictable={want}"), WAIT, || async {
        match eviction_marks(pods, name).await {
            (Some(l), Some(a)) if l == want && a == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// Asks the Eviction API to evict `name`'s pod, as `kubectl drain` and the cluster autoscaler
/// do; the API server's refusal, if it refused. `pods` is of a [`common::client_taking_429`].
async fn evict(pods: &Api<Pod>, name: &str) -> Result<(), String> {
    match pods.evict(name, &kube::api::EvictParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) => Err(format!("{} {}", e.code, e.message)),
        Err(e) => panic!("evict {name}: {e}"),
    }
}

#[tokio::test]
async fn the_cluster_may_evict_a_server_s_pod_exactly_when_the_operator_would_delete_it() {
    let ns = common::namespace("lifecycle-evict").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();
    let evictions: Api<Pod> = Api::namespaced(common::client_taking_429(ns.kubeconfig()).await, &ns.name);
    zones.create(&PostParams::default(), &zone(3, json!({"deletableGates": ["NoPlayers"]}))).await.unwrap();
    wait_ready(&zones, "zone1").await;
    // 1: its players left; 2: players on it; 3: its gate says none, but the game Allocated it.
    set_gate(&servers, "zone1-game-1", "NoPlayers", true).await;
    set_gate(&servers, "zone1-game-2", "NoPlayers", false).await;
    set_gate(&servers, "zone1-game-3", "NoPlayers", true).await;
    let pod3 = current_pod(&pods, "zone1-game-3").await.expect("a pod");
    sdk_says(&servers, "zone1-game-3", &pod3, json!({"state": "Allocated"})).await;
    wait_marked(&pods, "zone1-game-1", true).await;
    wait_marked(&pods, "zone1-game-2", false).await;
    wait_marked(&pods, "zone1-game-3", false).await;

    // The zone's budget, as the disruption controller reads it: nothing it selects may go.
    let budgets: Api<k8s_openapi::api::policy::v1::PodDisruptionBudget> = ns.api();
    // (Its counts may lag: the disruption controller does not recount a budget a pod's label
    // change took the pod out of. The Eviction API matches the pod's labels at each request.)
    common::wait_for("the zone's PodDisruptionBudget observed, allowing no disruption", WAIT, || async {
        let pdb = budgets.get("zone1-players").await.map_err(|e| e.to_string())?;
        let status = pdb.status.clone().unwrap_or_default();
        if status.observed_generation == pdb.metadata.generation && status.disruptions_allowed == Some(0) {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;

    for name in ["zone1-game-2", "zone1-game-3"] {
        let refused = evict(&evictions, name).await.expect_err("evicted a server that may hold players");
        assert!(refused.starts_with("429") && refused.contains("disruption budget"), "{name}: {refused}");
    }
    let pod1 = current_pod(&pods, "zone1-game-1").await.expect("a pod");
    evict(&evictions, "zone1-game-1").await.expect("a deletable server's pod may be evicted");
    // Its server stays and gets a new pod.
    replaced(&pods, "zone1-game-1", &pod1).await;
    wait_ready(&zones, "zone1").await;

    // Its players leave: now it may go, as the operator would delete it.
    set_gate(&servers, "zone1-game-2", "NoPlayers", true).await;
    wait_marked(&pods, "zone1-game-2", true).await;
    evict(&evictions, "zone1-game-2").await.expect("evicted once deletable");
    // A type whose servers may always be evicted (stateless bots): the Allocated one too.
    let always = json!({"spec": {"services": [
        {"type": "game", "id": 1, "endId": 3, "deletableGates": ["NoPlayers"], "eviction": "Always"}
    ]}});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(always)).await.unwrap();
    wait_marked(&pods, "zone1-game-3", true).await;
    assert_eq!(current_pod(&pods, "zone1-game-3").await.as_deref(), Some(pod3.as_str()), "marking restarted the pod");
    evict(&evictions, "zone1-game-3").await.expect("evictable always");
    ns.cleanup().await;
}
