//! Whole zones on a real node, end to end: the operator pins artifacts from real git and S3
//! servers, `gamezone-init` layers them in every pod, the example game server answers clients
//! through the addresses and ports its status names.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use gamezone::api::*;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::{ONE_AT_A_TIME, cluster, common, servers, support};
use cluster::{Cluster, GAME_SERVER_IMAGE, Ns, OPERATOR_IMAGE, image_bin, on_real_node};
use common::wait_for;
use servers::{GitDaemon, Lfs, Registry, S3, S3_ACCESS_KEY, S3_SECRET_KEY, tcp_request, udp_request};
use support::{Operator, install_crds};

/// Pods on a real node unpack images and run an init container: more than KWOK needs.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(90);

/// The operator on the host, scoped to the test's namespace, with the image built here as the
/// init image. Each test gets Dynamic ports of its own (`ports`, e.g. `7100-7199`): the operators
/// of other namespaces, whose pods may still be terminating, do not share their port tables.
pub(crate) fn operator(cluster: &Cluster, ns: &Ns, ports: &str) -> Operator {
    Operator::start_with(&cluster.kubeconfig, &ns.name, &["--init-image", OPERATOR_IMAGE, "--port-range", ports])
}

async fn secret(api: &Api<Secret>, name: &str, data: &[(&str, &str)]) {
    let data: BTreeMap<&str, &str> = data.iter().copied().collect();
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": data
    }))
    .unwrap();
    api.create(&PostParams::default(), &secret).await.expect("create Secret");
}

/// A service of the example game server on the real node.
pub(crate) fn service(type_: &str, id: i64, end_id: Option<i64>, ports: Value) -> Value {
    let mut s = on_real_node();
    s["type"] = json!(type_);
    s["id"] = json!(id);
    if let Some(end) = end_id {
        s["endId"] = json!(end);
    }
    s["ports"] = ports;
    s
}

pub(crate) fn zone(name: &str, zone_id: i64, services: Vec<Value>, artifacts: Value) -> GameZone {
    gamezone_api::fixture::zone(name)
        .spec("zoneId", json!(zone_id))
        .spec("defaultImage", json!(GAME_SERVER_IMAGE))
        .services(json!(services))
        .spec("artifacts", artifacts)
        .build()
}

/// A git daemon under `work`, on the host end of the real node's veth, serving repository
/// `config` with one commit: `config/server.json` whose `motd` the example game server answers
/// with; and that commit.
pub(crate) fn config_repo(cluster: &Cluster, work: &std::path::Path, motd: &str) -> (GitDaemon, String) {
    let git = GitDaemon::start(&work.join("git"), &cluster.info.host_address);
    let repo = git.repo("config");
    repo.write("config/server.json", &format!("{{\"motd\": \"{motd}\"}}\n"));
    let commit = repo.commit("config");
    (git, commit)
}

/// Waits until the zone is Ready at its generation with every server Ready; its servers.
pub(crate) async fn wait_running(ns: &Ns, zone: &str) -> Vec<GameServer> {
    wait_running_within(ns, zone, TIMEOUT).await
}

/// [`wait_running`], for at most `timeout`.
pub(crate) async fn wait_running_within(ns: &Ns, zone: &str, timeout: Duration) -> Vec<GameServer> {
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();
    wait_for(&format!("zone {zone} Ready with every server Ready"), timeout, || async {
        let z = zones.get(zone).await.map_err(|e| e.to_string())?;
        let status = z.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            && status.observed_generation == z.metadata.generation;
        let list = servers.list(&support::selector(zone)).await.map_err(|e| e.to_string())?.items;
        if ready && list.iter().all(|s| s.status.as_ref().and_then(|s| s.state) == Some(ServerState::Ready)) {
            return Ok(list);
        }
        // What the pods say, for the failure message.
        let pod_states: Vec<String> = pods
            .list(&support::selector(zone))
            .await
            .map(|l| l.items)
            .unwrap_or_default()
            .iter()
            .map(|p| format!("{}: {}", p.name_any(), pod_summary(p)))
            .collect();
        Err(format!(
            "phase {:?}, conditions {:?}; pods {pod_states:?}",
            status.phase,
            status.conditions.iter().map(|c| format!("{}={} {}", c.type_, c.status, c.message)).collect::<Vec<_>>()
        ))
    })
    .await
}

fn pod_summary(p: &Pod) -> String {
    let Some(s) = &p.status else { return "no status".into() };
    let waiting: Vec<String> = s
        .init_container_statuses
        .iter()
        .flatten()
        .chain(s.container_statuses.iter().flatten())
        .filter_map(|c| {
            let st = c.state.as_ref()?;
            st.waiting.as_ref().map(|w| format!("{} waiting {:?} {:?}", c.name, w.reason, w.message)).or_else(|| {
                st.terminated.as_ref().map(|t| format!("{} exited {} {:?}", c.name, t.exit_code, t.message))
            })
        })
        .collect();
    format!("{:?} on {:?} {waiting:?}", s.phase, p.spec.as_ref().and_then(|s| s.node_name.clone()))
}

/// Asks each server `hello` where its status says it is reachable, until it answers.
pub(crate) async fn hello(server: &GameServer, port_name: &str) -> Value {
    let (addr, port) = reachable_at(server, port_name);
    wait_for(&format!("{} to answer hello on {addr}:{port}", server.name_any()), Duration::from_secs(20), || async {
        tcp_request(&addr, port, "hello")
    })
    .await
}

/// Where a client reaches a port of a server: the node and host port when the policy gives
/// one, else the pod IP and container port.
pub(crate) fn reachable_at(server: &GameServer, port_name: &str) -> (String, u16) {
    let status = server.status.as_ref().expect("server status");
    let port = status.ports.iter().find(|p| p.name == port_name).expect("port in status");
    let addr = match port.host_port {
        Some(_) => status.node_address.clone().expect("node address in status"),
        None => status.address.clone().expect("pod address in status"),
    };
    (addr, u16::try_from(port.port).unwrap())
}

/// Builds, on the host, with the `gamezone-init` the image holds, the tree for the layers
/// and pins a pod's init container was given; its state (`treeDigest`, `revisions` ...).
fn host_tree(pod: &Pod, secrets: &std::path::Path, root: &std::path::Path) -> Value {
    let init = &pod.spec.as_ref().unwrap().init_containers.as_ref().expect("an init container")[0];
    let env = |name: &str| {
        init.env.iter().flatten().find(|e| e.name == name).and_then(|e| e.value.clone()).expect("init env")
    };
    servers::run(
        Command::new(image_bin("gamezone-init"))
            .args(["apply", "--root"])
            .arg(root)
            .arg("--secrets-dir")
            .arg(secrets)
            .env("GAMEZONE_LAYERS", env("GAMEZONE_LAYERS"))
            .env("GAMEZONE_REVISIONS", env("GAMEZONE_REVISIONS"))
            .env("GAMEZONE_LOG_FORMAT", "json"),
    );
    serde_json::from_str(&std::fs::read_to_string(root.join(".gamezone-state.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn every_pod_sees_exactly_the_layered_tree_the_host_builds_for_the_same_pins() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let host = &cluster.info.host_address;
    let work = tempfile::tempdir().unwrap();

    // S3: the resources at the root; git: only its config/ folder, over the S3 config.
    let s3 = S3::start(&work.path().join("s3"), host);
    s3.put("res", "v1/maps/map1.txt", "map one\n");
    s3.put("res", "v1/config/server.json", "{\"motd\": \"from s3, overridden\"}\n");
    s3.put("res", "v1/config/s3-only.txt", "kept\n");
    s3.put("res", "v2/maps/map2.txt", "another version\n");
    let git = GitDaemon::start(&work.path().join("git"), host);
    let repo = git.repo("config");
    repo.write("config/server.json", "{\"motd\": \"welcome to e2e\", \"maxPlayers\": 8}\n")
        .write("config/rates.ini", "[xp]\nrate = 2\n")
        .write("README.md", "outside the subPath\n");
    let commit = repo.commit("config v1");

    let ns = Ns::new(cluster, "e2e-layers").await;
    install_crds(&ns.client).await;
    secret(&ns.api(), "s3-creds", &[("accesskey", S3_ACCESS_KEY), ("secretkey", S3_SECRET_KEY)]).await;
    let _op = operator(cluster, &ns, "7100-7199");
    let zones: Api<GameZone> = ns.api();
    let z = zone(
        "layers",
        301,
        vec![service("game", 1, Some(2), json!([{"name": "game", "containerPort": 7777}]))],
        json!([
            {"path": "/app/artifacts",
             "s3": {"endpoint": s3.endpoint(), "bucket": "res", "prefix": "v1/", "pathStyle": true,
                    "secretRef": {"name": "s3-creds"}}},
            {"path": "/app/artifacts/config", "subPath": "config",
             "git": {"url": git.url("config"), "branch": "main"}}
        ]),
    );
    zones.create(&PostParams::default(), &z).await.unwrap();
    let servers = wait_running(&ns, "layers").await;
    assert_eq!(servers.len(), 2);

    let status = zones.get("layers").await.unwrap().status.unwrap();
    let pins: Vec<String> = status.artifacts.iter().map(|a| a.revision.clone()).collect();
    assert_eq!(pins.len(), 2, "{:?}", status.artifacts);
    assert!(pins[0].starts_with("sha256:"), "S3 pin {pins:?}");
    assert_eq!(pins[1], commit, "git pin is the pushed commit");

    // The same layers and pins, built on the host by the same binary.
    let secrets = work.path().join("secrets/s3-creds");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("accesskey"), S3_ACCESS_KEY).unwrap();
    std::fs::write(secrets.join("secretkey"), S3_SECRET_KEY).unwrap();
    let pods: Api<Pod> = ns.api();
    let pod = pods.get("layers-game-1").await.unwrap();
    let host_root = work.path().join("host-tree");
    let state = host_tree(&pod, &work.path().join("secrets"), &host_root);
    let tree = host_root.join("current");
    // The layering rules: S3's v1/ at the root, git's config/ over it, nothing else.
    let mut files: Vec<String> = walk(&tree);
    files.sort();
    assert_eq!(files, ["config/rates.ini", "config/s3-only.txt", "config/server.json", "maps/map1.txt"]);
    assert!(std::fs::read_to_string(tree.join("config/server.json")).unwrap().contains("welcome to e2e"));
    assert_eq!(state["revisions"], json!(pins));

    for server in &servers {
        let name = server.name_any();
        let pod = pods.get(&name).await.unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(cluster.node().name.as_str()), "{name} runs on the real node");
        let init = &pod.status.as_ref().unwrap().init_container_statuses.as_ref().unwrap()[0];
        let exited = init.state.as_ref().and_then(|s| s.terminated.as_ref()).map(|t| t.exit_code);
        assert_eq!(exited, Some(0), "{name}'s init container ran and exited 0: {init:?}");

        let answer = hello(server, "game").await;
        let id: i64 = name.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(
            (answer["zone"].as_str(), answer["type"].as_str(), answer["id"].as_i64()),
            (Some("layers"), Some("game"), Some(id))
        );
        assert_eq!(answer["zoneId"], 301);
        assert_eq!(answer["artifacts"]["treeDigest"], state["treeDigest"], "{name}: {answer}");
        assert_eq!(answer["artifacts"]["revisions"], json!(pins), "{name}: {answer}");
        assert_eq!(answer["config"]["value"]["motd"], "welcome to e2e", "{name}: {answer}");
    }
    ns.finish().await;
}

#[tokio::test]
async fn with_an_artifact_registry_each_pin_is_fetched_once_mounted_once_per_node_pre_warmed_and_survives_the_origin() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let host = &cluster.info.host_address;
    let work = tempfile::tempdir().unwrap();
    // A registry with credentials: the pack Job pushes with them, the kubelet pulls the tree
    // image with them, copying pods pull with them.
    let mut registry = Registry::start_for(&work.path().join("registry"), host, Some(("gamezone", "s3cret-pw")));
    registry.trusted_by(&cluster.info.nodes);
    let (mut git, commit) = config_repo(cluster, work.path(), "packed once");
    // A bigger layer under the config: 2 MiB the config's re-pin must not move again.
    let assets = git.repo("assets");
    let noise: String = (0..(2 << 20) / 16).map(|i| format!("{:015x}\n", i * 7919)).collect();
    assets.write("maps/world.bin", &noise).commit("assets");

    let ns = Ns::new(cluster, "e2e-pack").await;
    install_crds(&ns.client).await;
    let creds: Secret = serde_json::from_value(json!({
        "metadata": {"name": "registry-creds"}, "type": "kubernetes.io/dockerconfigjson",
        "stringData": {".dockerconfigjson": registry.docker_config()}
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &creds).await.unwrap();
    let repository = registry.repository();
    // `--artifact-mount auto`: this API server (1.37) has image volumes.
    let _op = Operator::start_with(
        &cluster.kubeconfig,
        &ns.name,
        &[
            "--init-image",
            OPERATOR_IMAGE,
            "--port-range",
            "7600-7699",
            "--artifact-registry",
            &repository,
            "--artifact-registry-plain-http",
            "--artifact-registry-secret",
            "registry-creds",
            "--min-artifacts-interval",
            "1",
        ],
    );
    let zones: Api<GameZone> = ns.api();
    let z = zone(
        "packed",
        306,
        vec![service("game", 1, Some(3), json!([{"name": "game", "containerPort": 7777}]))],
        json!([
            {"path": "/app/artifacts", "git": {"url": git.url("assets"), "branch": "main"}},
            {"path": "/app/artifacts", "git": {"url": git.url("config"), "branch": "main"}}
        ]),
    );
    zones.create(&PostParams::default(), &z).await.unwrap();
    let servers = wait_running(&ns, "packed").await;
    assert_eq!(servers.len(), 3);
    let status = zones.get("packed").await.unwrap().status.unwrap();
    assert_eq!(status.pack.as_ref().map(|p| p.state), Some(JobState::Succeeded), "{:?}", status.pack);
    assert_eq!(status.artifacts[1].revision, commit);
    let packed: Vec<PackedLayer> =
        status.artifacts.iter().map(|a| a.packed.clone().expect("each layer's digest and size in status")).collect();
    assert!(packed.iter().all(|p| p.digest.starts_with("sha256:") && p.size > 0), "{packed:?}");
    assert!(packed[0].size > 2 << 20, "{packed:?}");
    let tree = status.tree_image.clone().expect("the tree image in status");
    assert!(tree.image.starts_with(&format!("{repository}@sha256:")), "{tree:?}");
    assert!(tree.warm_nodes.is_empty(), "nothing to pre-warm on a first rollout: {tree:?}");
    assert!(tree.tree_shape.as_deref().is_some_and(|s| s.starts_with("sha256:")), "{tree:?}");

    // Every pod mounts the tree image, checked against the shape the pack recorded: the game
    // sees that tree and its digest.
    let pods: Api<Pod> = ns.api();
    for server in &servers {
        let pod = pods.get(&server.name_any()).await.unwrap();
        let mounted = pod.spec.unwrap().volumes.unwrap_or_default().into_iter().find_map(|v| v.image);
        assert_eq!(mounted.and_then(|i| i.reference).as_deref(), Some(tree.image.as_str()));
        let answer = hello(server, "game").await;
        assert_eq!(answer["config"]["value"]["motd"], "packed once", "{}: {answer}", server.name_any());
        assert_eq!(answer["artifacts"]["treeDigest"], tree.tree_digest.as_str(), "{answer}");
        assert!(answer["artifacts"]["tree"].as_str().unwrap_or_default().starts_with("image-"), "{answer}");
    }
    // Per repository, the operator's ref listing and the pack Job's fetch, whatever the number
    // of pods (without a registry each of the 3 pods fetches too).
    let fetches = git.fetches();
    assert!(fetches <= 4, "the origins served {fetches} fetches for 2 layers and 3 pods");
    // The node's containerd pulled each layer once for its 3 pods.
    for p in &packed {
        assert_eq!(registry.node_downloads(&p.digest), 1, "downloads of {} for 3 pods on one node", p.digest);
    }

    // A second zone with the same pins fetches nothing from the origins (the operator lists
    // their refs). Its tree image is made to look wrong: the tag's recorded tree shape (what a
    // pod checks its mount against) is tampered with, so every pod finds another tree than the
    // pinned one, as on a node whose runtime mounts image volumes empty. Those servers copy the tree from the registry instead,
    // come up Ready with the real tree, and the zone says so.
    let tag = registry.tags().into_iter().find(|t| t.starts_with("t-")).expect("a tree tag");
    let wrong = format!("sha256:{}", "0".repeat(64));
    registry.annotate(&tag, gamezone_init::oci::TREE_SHAPE_ANNOTATION, &wrong);
    let before = git.fetches();
    let mut z2 = z.clone();
    z2.metadata.name = Some("packed-too".into());
    z2.spec.zone_id = 307;
    zones.create(&PostParams::default(), &z2).await.unwrap();
    let copying = wait_running(&ns, "packed-too").await;
    assert!(git.fetches() - before <= 2, "the second zone's pack fetched from the origins");
    let status = zones.get("packed-too").await.unwrap().status.unwrap();
    assert_eq!(status.tree_image.as_ref().and_then(|t| t.tree_shape.as_deref()), Some(wrong.as_str()));
    let mounted = status.conditions.iter().find(|c| c.type_ == "ArtifactsMounted").expect("ArtifactsMounted");
    assert_eq!((mounted.status.as_str(), mounted.reason.as_str()), ("False", "CopyFallback"), "{mounted:?}");
    assert!(mounted.message.contains("image volume mounted wrong"), "{}", mounted.message);
    for server in &copying {
        let why = server.status.as_ref().and_then(|s| s.tree_copied.clone());
        assert!(why.is_some_and(|w| w.contains(&wrong)), "{}: {:?}", server.name_any(), server.status);
        let answer = hello(server, "game").await;
        assert_eq!(answer["config"]["value"]["motd"], "packed once", "{answer}");
        assert_eq!(answer["artifacts"]["treeDigest"], tree.tree_digest.as_str(), "the real tree: {answer}");
        assert!(!answer["artifacts"]["tree"].as_str().unwrap_or_default().starts_with("image-"), "{answer}");
    }
    zones.delete("packed-too", &Default::default()).await.unwrap();

    // A new pin of the config: the node is pre-warmed with the new tree (a warm pod) before the
    // first server moves, and only the config's layer is pulled again.
    git.repo("config").write("config/server.json", "{\"motd\": \"packed twice\"}\n").commit("config 2");
    let assets_read = registry.all_downloads(&packed[0].digest);
    let patch = json!({"spec": {"artifactsInterval": "1s"}});
    zones.patch("packed", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let servers: Api<GameServer> = ns.api();
    let moved = wait_for("every server on the new pin", TIMEOUT, || async {
        let list = servers.list(&support::selector("packed")).await.map_err(|e| e.to_string())?.items;
        let mut answers = Vec::new();
        for s in &list {
            let (addr, port) = reachable_at(s, "game");
            answers.push(
                tcp_request(&addr, port, "hello").map(|a| a["config"]["value"]["motd"].clone()).unwrap_or_default(),
            );
        }
        if list.len() == 3 && answers.iter().all(|a| a == "packed twice") {
            Ok(list)
        } else {
            Err(format!("{answers:?}"))
        }
    })
    .await;
    let status = zones.get("packed").await.unwrap().status.unwrap();
    let tree2 = status.tree_image.clone().expect("the new tree image");
    assert_ne!(tree2.image, tree.image);
    assert_eq!(tree2.warm_nodes, [cluster.node().name.clone()], "{tree2:?}");
    let warm = pods.list(&support::selector("packed")).await.unwrap().items;
    let warm: Vec<&Pod> = warm.iter().filter(|p| p.labels().contains_key("gamezone.dev/warm-tree")).collect();
    assert_eq!(warm.len(), 1, "one warm pod for the one node");
    let finished = warm[0].status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .expect("the warm pod ended")
        .finished_at
        .clone()
        .unwrap();
    for s in &moved {
        let pod = pods.get(&s.name_any()).await.unwrap();
        assert!(
            pod.metadata.creation_timestamp.unwrap().0 >= finished.0,
            "{} started before the node was warm",
            s.name_any()
        );
    }
    let repinned = status.artifacts[1].packed.clone().unwrap();
    assert_eq!(status.artifacts[0].packed.as_ref(), Some(&packed[0]), "the assets' pin stays");
    assert_eq!(registry.node_downloads(&packed[0].digest), 1, "the 2 MiB layer was not pulled again");
    assert_eq!(registry.node_downloads(&repinned.digest), 1, "the new config layer, once for the node");
    // The pack Job states the new tree's digest from the assets' listing, not from their tar.
    assert_eq!(registry.all_downloads(&packed[0].digest), assets_read, "the re-pin read the 2 MiB layer");

    // Retention: `gamezone registry prune` deletes the first version's tree and config layer,
    // which no zone uses any more, and keeps what the zone runs.
    let auth = work.path().join("registry-auth.json");
    std::fs::write(&auth, registry.docker_config()).unwrap();
    let before: Vec<String> = registry.tags();
    let out = Command::new(env!("CARGO_BIN_EXE_gamezone"))
        .args(["registry", "prune", "--artifact-registry", &repository, "--artifact-registry-plain-http"])
        .arg("--registry-auth")
        .arg(&auth)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{said}");
    let after: Vec<String> = registry.tags();
    let gone: Vec<&String> = before.iter().filter(|t| !after.contains(t)).collect();
    assert_eq!(gone.len(), 2, "the old tree and the old config layer: {said}");
    assert!(gone.iter().any(|t| t.starts_with("t-")) && gone.iter().any(|t| t.starts_with("l-")), "{said}");
    assert!(said.contains("2 of 5 tag(s) deleted"), "{said}");
    let current = registry.tags();
    assert_eq!(current.len(), 3, "the current tree, the assets and the new config: {current:?}");

    // The origins and the registry gone, a deleted pod comes back with its tree: the node holds it.
    git.stop();
    registry.stop();
    let before = pods.get("packed-game-2").await.unwrap().metadata.uid;
    pods.delete("packed-game-2", &Default::default()).await.unwrap();
    let again = wait_for("packed-game-2 back, Ready, on a new pod its status names", TIMEOUT, || async {
        let pod = pods.get("packed-game-2").await.map_err(|e| e.to_string())?;
        let gs = servers.get("packed-game-2").await.map_err(|e| e.to_string())?;
        let st = gs.status.clone().unwrap_or_default();
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
        let current = pod.metadata.uid != before && ip.is_some() && st.address == ip;
        if current && st.state == Some(ServerState::Ready) { Ok(gs) } else { Err(format!("pod ip {ip:?}, {st:?}")) }
    })
    .await;
    let answer = hello(&again, "game").await;
    assert_eq!(answer["config"]["value"]["motd"], "packed twice", "{answer}");
    ns.finish().await;
}

#[tokio::test]
async fn across_two_nodes_each_layer_pin_is_fetched_once_held_once_per_node_and_every_pod_has_the_host_s_tree() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::two_nodes();
    let host = &cluster.info.host_address;
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start(&work.path().join("registry"), host);
    registry.trusted_by(&cluster.info.nodes);

    // S3: 2,000 files, 100 MB in all.
    let s3 = S3::start(&work.path().join("s3"), host);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    };
    for i in 0..2000 {
        s3.put_bytes("assets", &format!("maps/{:02}/{i}.bin", i % 40), &noise(50_000));
    }
    // git: the game's folder (a subPath) with its content in Git LFS on a real LFS server.
    let lfs = Lfs::start(&work.path().join("lfs"), host);
    let git = GitDaemon::start(&work.path().join("git"), host);
    let repo = git.repo("game");
    servers::git(&repo.dir, &["lfs", "install", "--local"]);
    servers::git(&repo.dir, &["lfs", "track", "*.pak"]);
    repo.write(".lfsconfig", &format!("[lfs]\n\turl = {}\n", lfs.url("gamezone/game")));
    repo.write("server/config/server.json", "{\"motd\": \"two nodes\"}\n").write("docs/README.md", "not mounted\n");
    let pak = noise(3 << 20);
    std::fs::create_dir_all(repo.dir.join("server/content")).unwrap();
    std::fs::write(repo.dir.join("server/content/world.pak"), &pak).unwrap();
    let commit = repo.commit("game");
    servers::git(&repo.dir, &["remote", "add", "origin", &repo.dir.display().to_string()]);
    servers::git(&repo.dir, &["lfs", "push", "--all", "origin"]);
    let pointer = servers::git(&repo.dir, &["show", "HEAD:server/content/world.pak"]);
    assert!(pointer.starts_with("version https://git-lfs"), "the repository holds a pointer: {pointer}");

    let ns = Ns::new(cluster, "e2e-two").await;
    install_crds(&ns.client).await;
    secret(&ns.api(), "s3-creds", &[("accesskey", S3_ACCESS_KEY), ("secretkey", S3_SECRET_KEY)]).await;
    let repository = registry.repository();
    let _op = Operator::start_with(
        &cluster.kubeconfig,
        &ns.name,
        &[
            "--init-image",
            OPERATOR_IMAGE,
            "--port-range",
            "7700-7799",
            "--artifact-registry",
            &repository,
            "--artifact-registry-plain-http",
        ],
    );
    // 600m of CPU each: a node (2 CPUs) takes 3 of the 6.
    let mut game = service("game", 1, Some(6), json!([{"name": "game", "containerPort": 7777}]));
    game["resources"] = json!({"requests": {"cpu": "600m"}});
    let z = zone(
        "two",
        308,
        vec![game],
        json!([
            {"path": "/app/artifacts/maps",
             "s3": {"endpoint": s3.endpoint(), "bucket": "assets", "prefix": "maps/", "pathStyle": true,
                    "secretRef": {"name": "s3-creds"}}},
            {"path": "/app/artifacts", "subPath": "server", "git": {"url": git.url("game"), "branch": "main"}}
        ]),
    );
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &z).await.unwrap();
    let servers = wait_running_within(&ns, "two", Duration::from_secs(400)).await;
    assert_eq!(servers.len(), 6);
    let status = zones.get("two").await.unwrap().status.unwrap();
    assert_eq!(status.artifacts[1].revision, commit);
    let tree = status.tree_image.clone().expect("the tree image");

    // The origins' own logs: each object once (the pack), the repository fetched once and its
    // LFS object downloaded once, for 6 pods on 2 nodes.
    let (s3_gets, git_fetches) = (s3.gets(), git.fetches());
    let lfs_log = lfs.log();
    let lfs_downloads = lfs_log.lines().filter(|l| l.contains("GET") && l.contains("/object/")).count();
    eprintln!("origins: {s3_gets} S3 GETs, {git_fetches} git fetches, {lfs_downloads} LFS downloads");
    assert_eq!(s3_gets, 2000, "each S3 object once; its log: {}", s3.log_tail());
    // The operator's ref listing, and the pack's one fetch of the pin: its commit and trees,
    // then the blobs below the subPath (two requests). Each pod fetching would add two each.
    assert!(git_fetches <= 3, "the operator's ref listing and the pack's fetch: {git_fetches}");
    assert_eq!(lfs_downloads, 1, "the LFS object once: {lfs_log}");

    // 3 pods per node; each node's containerd pulled each layer once, and holds it.
    let pods: Api<Pod> = ns.api();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for s in &servers {
        let node = pods.get(&s.name_any()).await.unwrap().spec.unwrap().node_name.unwrap();
        *per_node.entry(node).or_default() += 1;
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), [3, 3], "{per_node:?}");
    for a in &status.artifacts {
        let layer = a.packed.as_ref().unwrap();
        assert_eq!(registry.node_downloads(&layer.digest), 2, "{} pulled once per node", layer.digest);
        for node in &cluster.info.nodes {
            let held = cluster.ctr(node, &["content", "ls", "-q"]);
            assert_eq!(held.lines().filter(|l| *l == layer.digest).count(), 1, "{} on {}", layer.digest, node.name);
        }
    }
    assert!(status.artifacts[0].packed.as_ref().unwrap().size > 100_000_000, "{:?}", status.artifacts);

    // Every pod's tree is the one gamezone-init builds on the host for the same pins.
    let secrets = work.path().join("secrets/s3-creds");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(secrets.join("accesskey"), S3_ACCESS_KEY).unwrap();
    std::fs::write(secrets.join("secretkey"), S3_SECRET_KEY).unwrap();
    let state =
        host_tree(&pods.get("two-game-1").await.unwrap(), &work.path().join("secrets"), &work.path().join("host"));
    assert_eq!(state["treeDigest"], tree.tree_digest.as_str());
    assert_eq!(
        std::fs::read(work.path().join("host/current/content/world.pak")).unwrap(),
        pak,
        "the object, not its pointer"
    );
    assert!(!work.path().join("host/current/docs").exists(), "only the subPath");
    for s in &servers {
        let answer = hello(s, "game").await;
        assert_eq!(answer["artifacts"]["treeDigest"], tree.tree_digest.as_str(), "{}: {answer}", s.name_any());
        assert_eq!(answer["config"]["value"]["motd"], "two nodes", "{answer}");
    }
    ns.finish().await;
}

/// Relative paths of the regular files below `dir`.
fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out
}

#[tokio::test]
async fn every_instance_answers_at_the_address_and_port_its_status_names() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let work = tempfile::tempdir().unwrap();
    let (git, _) = config_repo(cluster, work.path(), "ports e2e");

    let ns = Ns::new(cluster, "e2e-ports").await;
    install_crds(&ns.client).await;
    let _op = operator(cluster, &ns, "7200-7299");
    let zones: Api<GameZone> = ns.api();
    // Outside the operators' Dynamic ranges.
    let static_port = 8100 + i32::try_from(std::process::id() % 50).unwrap();
    let z = zone(
        "ports",
        302,
        vec![
            service(
                "game",
                1,
                Some(2),
                json!([{"name": "game", "containerPort": 7777, "policy": "Dynamic", "protocol": "TCPUDP"}]),
            ),
            service(
                "gate",
                1,
                None,
                json!([{"name": "client", "containerPort": 8000, "hostPort": static_port, "policy": "Static"}]),
            ),
            service("chat", 1, None, json!([{"name": "chat", "policy": "Passthrough"}])),
            service("db", 1, None, json!([{"name": "sql", "containerPort": 7000}])),
        ],
        json!([{"path": "/app/artifacts", "git": {"url": git.url("config"), "branch": "main"}}]),
    );
    zones.create(&PostParams::default(), &z).await.unwrap();
    let servers = wait_running(&ns, "ports").await;
    assert_eq!(servers.len(), 5);

    for server in &servers {
        let name = server.name_any();
        let st = server.status.as_ref().unwrap();
        let port = &st.ports[0];
        match port.policy {
            PortPolicy::None => assert_eq!((port.host_port, port.port), (None, 7000), "{name}"),
            PortPolicy::Static => assert_eq!(port.host_port, Some(static_port), "{name}"),
            PortPolicy::Passthrough => assert_eq!(Some(port.container_port), port.host_port, "{name}"),
            PortPolicy::Dynamic => {
                assert_eq!(port.container_port, 7777, "{name}");
                assert!(port.host_port.is_some_and(|p| (7200..7300).contains(&p)), "{name}: {port:?}");
            }
        }
        let answer = hello(server, &port.name).await;
        let (type_, id) = (server.spec.type_.as_str(), server.spec.id);
        assert_eq!(
            (answer["zone"].as_str(), answer["type"].as_str(), answer["id"].as_i64()),
            (Some("ports"), Some(type_), Some(id)),
            "{name}: {answer}"
        );
        assert_eq!(answer["config"]["value"]["motd"], "ports e2e", "{name}: {answer}");
        if port.protocol == PortProtocol::TcpUdp {
            let (addr, p) = reachable_at(server, &port.name);
            let over_udp = udp_request(&addr, p, "hello").unwrap_or_else(|e| panic!("{name} over UDP: {e}"));
            assert_eq!(over_udp["instance"], name.as_str());
            assert_eq!(over_udp["listener"]["protocol"], "udp");
        }
    }

    // Peers: each server finds the others through the topology, and reaches them by DNS name
    // when the cluster's DNS serves the zone's names.
    let game1 = servers.iter().find(|s| s.name_any() == "ports-game-1").unwrap();
    let (addr, port) = reachable_at(game1, "game");
    let peers = tcp_request(&addr, port, "peers").unwrap();
    let mut names: Vec<&str> = peers["peers"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, ["ports-chat-1", "ports-db-1", "ports-game-2", "ports-gate-1"], "{peers}");
    let dns: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(ns.client.clone(), "kube-system");
    if dns.get_opt("kube-dns").await.unwrap().is_none() {
        eprintln!(
            "SKIPPED ping between peers: the cluster has no DNS (no Service kube-system/kube-dns), so pods cannot resolve <instance>.<zone>.<ns>.svc"
        );
    } else {
        let ping = tcp_request(&addr, port, "ping ports-gate-1").unwrap();
        assert_eq!(
            ping["hello"]["instance"], "ports-gate-1",
            "ports-game-1 pings ports-gate-1 by its DNS name: {ping}"
        );
    }
    ns.finish().await;
}

/// `version dirty` from golang-migrate's table.
fn schema_version(db: &servers::Mariadb) -> String {
    db.root_sql("SELECT version, dirty FROM project1.schema_migrations").unwrap_or_default().replace('\t', " ")
}

#[tokio::test]
async fn migrations_from_the_artifacts_run_before_servers_roll_and_a_broken_one_leaves_them_serving() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let host = &cluster.info.host_address;
    let work = tempfile::tempdir().unwrap();
    let password = "e2e+Pass%?w:rd";
    let db = servers::Mariadb::start("project1", "username1", password);
    let git = GitDaemon::start(&work.path().join("git"), host);
    let repo = git.repo("game");
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/migrater/migrations");
    let migration = |name: &str| std::fs::read_to_string(examples.join(name)).unwrap();
    repo.write("migrations/000001_create_players.up.sql", &migration("000001_create_players.up.sql"))
        .write("migrations/000001_create_players.down.sql", &migration("000001_create_players.down.sql"))
        .write("config/server.json", "{\"motd\": \"version 1\"}\n");
    let v1 = repo.commit("version 1");

    let ns = Ns::new(cluster, "e2e-migrate").await;
    install_crds(&ns.client).await;
    secret(&ns.api(), "zone-mysql", &[("password", password)]).await;
    let _op = operator(cluster, &ns, "7300-7399");
    let zones: Api<GameZone> = ns.api();
    let mut z = zone(
        "mig",
        303,
        vec![service("game", 1, None, json!([{"name": "game", "containerPort": 7777}]))],
        json!([{"path": "/app/artifacts", "git": {"url": git.url("game"), "branch": "main"}}]),
    );
    z.spec.artifacts_interval = Some("2s".parse().unwrap());
    // The migration Job's pod goes where the servers go: on the real node.
    let mut job = on_real_node();
    job["image"] = json!(cluster::MIGRATER_IMAGE);
    job["backoffLimit"] = json!(0);
    z.spec.migration = Some(serde_json::from_value(job).unwrap());
    z.spec.mysql = Some(
        serde_json::from_value(json!({"host": host, "port": db.port, "user": "username1", "database": "project1",
                                      "passwordSecretRef": {"name": "zone-mysql", "key": "password"}}))
        .unwrap(),
    );
    zones.create(&PostParams::default(), &z).await.unwrap();
    let servers = wait_running(&ns, "mig").await;
    assert_eq!(schema_version(&db), "1 0", "000001 applied by the migration Job");
    let tables = db.root_sql("SHOW TABLES FROM project1").unwrap();
    assert!(tables.contains("players"), "tables: {tables}");
    let first = hello(&servers[0], "game").await;
    assert_eq!(first["artifacts"]["revisions"], json!([v1]));
    let pods: Api<Pod> = ns.api();
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = ns.api();
    let job_pods =
        pods.list(&kube::api::ListParams::default().labels(&format!("{LABEL_PREFIX}migration"))).await.unwrap();
    assert!(
        job_pods
            .items
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some(cluster.node().name.as_str())),
        "migration pods ran on the real node"
    );

    // A second migration in a pushed commit: migrated first, then the server rolls onto it.
    repo.write("migrations/000002_add_inventory.up.sql", &migration("000002_add_inventory.up.sql"))
        .write("migrations/000002_add_inventory.down.sql", &migration("000002_add_inventory.down.sql"))
        .write("config/server.json", "{\"motd\": \"version 2\"}\n");
    let v2 = repo.commit("version 2");
    let rolled = wait_for("the server to roll onto version 2", TIMEOUT, || async {
        let s = Api::<GameServer>::namespaced(ns.client.clone(), &ns.name).get("mig-game-1").await.ok()?;
        let pod = pods.get_opt("mig-game-1").await.ok()??;
        let answer = hello_once(&s, "game")?;
        (answer["artifacts"]["revisions"] == json!([v2])).then_some((s, pod, answer))
    })
    .await;
    assert_eq!(schema_version(&db), "2 0", "000002 applied");
    assert_eq!(rolled.2["config"]["value"]["motd"], "version 2");
    let newest = jobs
        .list(&support::selector("mig"))
        .await
        .unwrap()
        .items
        .into_iter()
        .max_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0))
        .expect("a migration Job");
    let job_done = common::job_finished(&pods, &newest.name_any(), gamezone::zone::MIGRATE_CONTAINER).await;
    let created = rolled.1.metadata.creation_timestamp.clone().unwrap().0;
    assert!(created >= job_done, "the server's new pod ({created}) was made after the migration finished ({job_done})");

    // A broken migration: the zone is Degraded, the running server keeps answering on version 2.
    repo.write("migrations/000003_broken.up.sql", "CREATE TABLE broken (id INT PRIMARY KEY,, name TEXT);\n")
        .write("migrations/000003_broken.down.sql", "DROP TABLE IF EXISTS broken;\n")
        .write("config/server.json", "{\"motd\": \"version 3\"}\n");
    repo.commit("version 3, broken");
    let degraded = wait_for("the zone to be Degraded by the failed migration", TIMEOUT, || async {
        let z = zones.get("mig").await.ok()?;
        let status = z.status?;
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
        (status.phase == Some(ZonePhase::Degraded) && ready.reason == "MigrationFailed").then_some(ready)
    })
    .await;
    assert_eq!(schema_version(&db), "3 1", "migrate left version 3 dirty");
    let uid = rolled.1.uid();
    let still = hello(&rolled.0, "game").await;
    assert_eq!(still["artifacts"]["revisions"], json!([v2]), "the old server still answers: {still}");
    assert_eq!(pods.get("mig-game-1").await.unwrap().uid(), uid, "the server was left alone");
    // The migrater's own error, where a person looks: the failed pod's termination message (the
    // Job's container falls back to its log). The zone's condition names the failed Job.
    let failed: Vec<String> = pods
        .list(&kube::api::ListParams::default().labels(&format!("{LABEL_PREFIX}migration")))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| {
            p.status.as_ref()?.container_statuses.as_ref()?[0].state.as_ref()?.terminated.as_ref()?.message.clone()
        })
        .collect();
    assert!(
        failed.iter().any(|m| m.contains("Error 1064")),
        "a failed migration pod's message has the SQL error: {failed:?}"
    );
    let job = zones.get("mig").await.unwrap().status.unwrap().migration.unwrap().job_name;
    assert!(
        degraded.message.contains(&job),
        "the zone's Ready condition names the failed Job {job}: {}",
        degraded.message
    );
    // With the migrater's own error, as a person needs it.
    let z = wait_for("the migrater's own error in the zone's condition", TIMEOUT, || async {
        let z = zones.get("mig").await.ok()?;
        let ready = z.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        ready.message.contains("Error 1064").then_some(ready.message)
    })
    .await;
    assert!(z.contains("the migrater said:"), "{z}");
    ns.finish().await;
}

/// One `hello` to where the server's status says it is, without waiting.
fn hello_once(server: &GameServer, port_name: &str) -> Option<Value> {
    let status = server.status.as_ref()?;
    status.ports.iter().find(|p| p.name == port_name)?;
    let (addr, port) = reachable_at(server, port_name);
    tcp_request(&addr, port, "hello").ok()
}

#[tokio::test]
async fn the_operator_installed_from_deploy_runs_on_the_real_node_and_provisions_a_zone() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let work = tempfile::tempdir().unwrap();
    let (git, commit) = config_repo(cluster, work.path(), "from the in-cluster operator");
    let ns = Ns::new(cluster, "e2e-deploy").await;

    // deploy/ as a user installs it, plus what this cluster needs: the real node's toleration and
    // selector, one replica (the Lease is still taken), this test's namespace and Dynamic ports only.
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let overlay = work.path().join("overlay");
    std::fs::create_dir_all(&overlay).unwrap();
    let patch = json!([
        {"op": "replace", "path": "/spec/replicas", "value": 1},
        {"op": "add", "path": "/spec/template/spec/nodeSelector", "value": {cluster::NODE_KIND: "real"}},
        {"op": "add", "path": "/spec/template/spec/tolerations",
         "value": [{"key": cluster::NODE_KIND, "operator": "Equal", "value": "real", "effect": "NoSchedule"}]},
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "GAMEZONE_NAMESPACE", "value": ns.name}},
        {"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": {"name": "GAMEZONE_PORT_RANGE", "value": "7400-7499"}}
    ]);
    std::fs::write(
        overlay.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [{}]\n\
             patches:\n  - target: {{kind: Deployment, name: gamezone}}\n    patch: '{patch}'\n",
            relative_to(&overlay, &deploy)
        ),
    )
    .unwrap();
    cluster.kubectl(&["apply", "--server-side", "--force-conflicts", "-k", overlay.to_str().unwrap()]);
    let _uninstall = Uninstall(cluster);

    let system: Api<Pod> = Api::namespaced(ns.client.clone(), "gamezone-system");
    let operator_pod = wait_for("the operator pod Ready on the real node", TIMEOUT, || async {
        let pods = system
            .list(&kube::api::ListParams::default().labels("app.kubernetes.io/name=gamezone"))
            .await
            .map_err(|e| e.to_string())?;
        let pod = pods.items.first().ok_or("no operator pod")?;
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready { Ok(pod.clone()) } else { Err(pod_summary(pod)) }
    })
    .await;
    assert_eq!(operator_pod.spec.as_ref().unwrap().node_name.as_deref(), Some(cluster.node().name.as_str()));
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> = Api::namespaced(ns.client.clone(), "gamezone-system");
    let lease = leases.get("gamezone-operator").await.expect("the operator holds its Lease");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity).as_deref(), Some(operator_pod.name_any().as_str()));
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(ns.client.clone(), "gamezone-system");
    services.get("gamezone-webhook").await.expect("the webhook Service");

    let zones: Api<GameZone> = ns.api();
    let z = zone(
        "incluster",
        304,
        vec![service("game", 1, None, json!([{"name": "game", "containerPort": 7777, "policy": "Dynamic"}]))],
        json!([{"path": "/app/artifacts", "git": {"url": git.url("config"), "branch": "main"}}]),
    );
    zones.create(&PostParams::default(), &z).await.unwrap();
    let servers = wait_running(&ns, "incluster").await;
    let answer = hello(&servers[0], "game").await;
    assert_eq!(answer["instance"], "incluster-game-1");
    assert_eq!(answer["artifacts"]["revisions"], json!([commit]), "pinned by the operator in the cluster");
    assert_eq!(answer["config"]["value"]["motd"], "from the in-cluster operator");
    ns.finish().await;
}

/// Removes the operator's namespace (its Deployment, Lease, Services) on drop; the CRDs stay,
/// as other tests' zones use them.
struct Uninstall<'a>(&'a Cluster);

impl Drop for Uninstall<'_> {
    fn drop(&mut self) {
        let _ = Command::new(common::cp_script())
            .arg("kubectl")
            .arg(&self.0.dir)
            .args(["delete", "namespace", "gamezone-system", "--ignore-not-found", "--wait=false"])
            .output();
    }
}

/// `to` as a path relative to the directory `from` (kustomize refuses absolute resource paths).
fn relative_to(from: &std::path::Path, to: &std::path::Path) -> String {
    let up = from.components().count().saturating_sub(1);
    let to = to.to_string_lossy();
    format!("{}{}", "../".repeat(up), to.trim_start_matches('/'))
}

#[tokio::test]
async fn a_zone_converges_when_containerd_and_the_kubelet_are_killed_mid_rollout() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let node = cluster.node();
    let work = tempfile::tempdir().unwrap();
    let (git, _) = config_repo(cluster, work.path(), "restart e2e");

    let ns = Ns::new(cluster, "e2e-restart").await;
    install_crds(&ns.client).await;
    let _op = operator(cluster, &ns, "7500-7599");
    let zones: Api<GameZone> = ns.api();
    let pods: Api<Pod> = ns.api();
    let static_port = 8150 + i32::try_from(std::process::id() % 50).unwrap();
    // Half the game servers at once, so several pods are being replaced when the node's daemons die.
    let mut game = service("game", 1, Some(4), json!([{"name": "game", "containerPort": 7777, "policy": "Dynamic"}]));
    game["updateStrategy"] = json!({"type": "RollingUpdate", "maxUnavailable": 2});
    let gate = service(
        "gate",
        1,
        None,
        json!([{"name": "client", "containerPort": 8000, "hostPort": static_port, "policy": "Static"}]),
    );
    let z = zone(
        "restart",
        305,
        vec![game, gate],
        json!([{"path": "/app/artifacts", "git": {"url": git.url("config"), "branch": "main"}}]),
    );
    zones.create(&PostParams::default(), &z).await.unwrap();
    let mut before = BTreeMap::new();
    for s in wait_running(&ns, "restart").await {
        let name = s.name_any();
        before.insert(name.clone(), pod_uid_now(&pods, &name).await);
    }
    assert_eq!(before.len(), 5);

    // New args roll every server; the node's daemons die while pods are being replaced.
    let mut services = serde_json::to_value(&zones.get("restart").await.unwrap().spec.services).unwrap();
    for s in services.as_array_mut().unwrap() {
        s["args"] = json!(["--build", "2"]);
    }
    let patch = json!({"spec": {"services": services}});
    zones.patch("restart", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_for("pods of the zone being replaced", TIMEOUT, || async {
        let list = pods.list(&support::selector("restart")).await.map_err(|e| e.to_string())?.items;
        let replacing = list.iter().any(|p| {
            p.metadata.deletion_timestamp.is_some() || !before.values().any(|u| *u == p.uid().unwrap_or_default())
        });
        if replacing { Ok(()) } else { Err(format!("{} pods, none replaced yet", list.len())) }
    })
    .await;
    cluster.kill_node_daemons(node);
    // The operator and the API go on while the node is down: deletions and new pods pile up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.restart_node_daemons(node);

    let servers = wait_for("every server answering on the new args", Duration::from_secs(150), || async {
        let z = zones.get("restart").await.map_err(|e| e.to_string())?;
        let status = z.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
            && status.observed_generation == z.metadata.generation;
        if !ready {
            return Err(format!("zone not Ready at generation {:?}: {:?}", z.metadata.generation, status.conditions));
        }
        let list: Vec<GameServer> = Api::<GameServer>::namespaced(ns.client.clone(), &ns.name)
            .list(&support::selector("restart"))
            .await
            .map_err(|e| e.to_string())?
            .items;
        for s in &list {
            let port = &s.status.as_ref().ok_or("no status")?.ports.first().ok_or("no port")?.name;
            let answer = hello_once(s, port).ok_or_else(|| format!("{} does not answer", s.name_any()))?;
            if answer["args"] != json!(["--build", "2"]) {
                return Err(format!("{} answers with args {}", s.name_any(), answer["args"]));
            }
        }
        Ok(list)
    })
    .await;
    assert_eq!(servers.len(), 5);
    for s in &servers {
        let name = s.name_any();
        let uid = pod_uid_now(&pods, &name).await;
        assert_ne!(before.get(&name), Some(&uid), "{name} runs in a new pod");
        let port = &s.status.as_ref().unwrap().ports[0];
        if port.policy == PortPolicy::Static {
            assert_eq!(port.host_port, Some(static_port), "{name}");
        }
    }

    // The API: one live pod per server, each owned by its GameServer, none left terminating.
    wait_for("one pod per server, none terminating", TIMEOUT, || async {
        let list = pods.list(&support::selector("restart")).await.map_err(|e| e.to_string())?.items;
        let mut owners: Vec<String> = list
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.owner_references().iter().find(|o| o.kind == "GameServer").map(|o| o.name.clone()))
            .collect();
        owners.sort();
        let want: Vec<String> = servers.iter().map(|s| s.name_any()).collect();
        if list.len() == want.len() && owners == want {
            Ok(())
        } else {
            Err(format!(
                "pods {:?}",
                list.iter().map(|p| format!("{} {}", p.name_any(), pod_summary(p))).collect::<Vec<_>>()
            ))
        }
    })
    .await;

    // The node's data plane: each host port forwarded once, to the pod that holds it now.
    let live: Vec<Pod> = pods.list(&support::selector("restart")).await.unwrap().items;
    let rules = host_port_rules(node);
    let mut want = BTreeMap::new();
    for s in &servers {
        let st = s.status.as_ref().unwrap();
        let port = &st.ports[0];
        let pod = live.iter().find(|p| p.name_any() == s.name_any()).unwrap();
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
        let host_port = u16::try_from(port.host_port.expect("Static and Dynamic ports have host ports")).unwrap();
        want.insert(("tcp".to_string(), host_port), vec![format!("{ip}:{}", port.container_port)]);
    }
    let ours: BTreeMap<(String, u16), Vec<String>> =
        rules.iter().filter(|(k, _)| want.contains_key(k)).map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(ours, want, "host port DNAT rules in {} (all: {rules:?})", node.netns);
    let pod_ips = pod_ips_on(cluster, &node.name).await;
    for ((proto, port), to) in &rules {
        assert_eq!(to.len(), 1, "host port {port}/{proto} is forwarded {} times: {to:?}", to.len());
        let ip = to[0].split(':').next().unwrap();
        assert!(pod_ips.contains(ip), "host port {port}/{proto} goes to {ip}, which no pod on {} has", node.name);
    }
    let listeners = node.netns_exec("ss", &["-Htlnu"]);
    let mut seen = std::collections::BTreeSet::new();
    for l in listeners.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(
            seen.insert((f[0].to_string(), f[4].to_string())),
            "two sockets bind {} {} in {}",
            f[0],
            f[4],
            node.netns
        );
    }

    // containerd: after the kubelet's garbage collection, nothing that belongs to no pod.
    wait_for("containerd to hold no container or sandbox of a pod that is gone", Duration::from_secs(100), || async {
        let uids = pod_uids_on(cluster, &node.name).await;
        let orphans: Vec<String> = cri_containers(cluster, node)
            .into_iter()
            .filter(|(_, uid, _)| !uids.contains(uid))
            .map(|(id, uid, name)| format!("{name} ({id}, pod uid {uid})"))
            .collect();
        if orphans.is_empty() { Ok(()) } else { Err(format!("orphans: {orphans:?}")) }
    })
    .await;
    ns.finish().await;
}

async fn pod_uid_now(pods: &Api<Pod>, name: &str) -> String {
    pods.get(name).await.unwrap().uid().unwrap()
}

/// Every pod on `node`, of every namespace.
async fn pods_on(cluster: &Cluster, node: &str) -> Vec<Pod> {
    let all: Api<Pod> = Api::all(cluster.client().await);
    all.list(&kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"))).await.unwrap().items
}

async fn pod_uids_on(cluster: &Cluster, node: &str) -> std::collections::BTreeSet<String> {
    pods_on(cluster, node).await.iter().filter_map(|p| p.uid()).collect()
}

async fn pod_ips_on(cluster: &Cluster, node: &str) -> std::collections::BTreeSet<String> {
    pods_on(cluster, node).await.iter().filter_map(|p| p.status.as_ref()?.pod_ip.clone()).collect()
}

/// The portmap plugin's DNAT rules in the node's namespace: (protocol, host port) → destinations.
fn host_port_rules(node: &cluster::RealNode) -> BTreeMap<(String, u16), Vec<String>> {
    let mut rules: BTreeMap<(String, u16), Vec<String>> = BTreeMap::new();
    for line in node.netns_exec("iptables", &["-w", "-t", "nat", "-S"]).lines() {
        if !line.starts_with("-A CNI-DN-") || !line.contains("-j DNAT") {
            continue;
        }
        let after = |flag: &str| {
            let mut words = line.split_whitespace();
            words.by_ref().find(|w| *w == flag)?;
            words.next().map(str::to_owned)
        };
        let (Some(proto), Some(port), Some(to)) = (after("-p"), after("--dport"), after("--to-destination")) else {
            panic!("unexpected portmap rule: {line}");
        };
        rules.entry((proto, port.parse().unwrap())).or_default().push(to);
    }
    rules
}

/// Containers and sandboxes in the node's CRI namespace: (id, pod uid, pod/container name).
fn cri_containers(cluster: &Cluster, node: &cluster::RealNode) -> Vec<(String, String, String)> {
    let ids = cluster.ctr(node, &["containers", "ls", "-q"]);
    ids.lines()
        .filter(|id| !id.trim().is_empty())
        .filter_map(|id| {
            // Gone between the listing and now: removed by the GC, which is what we wait for.
            let out = Command::new(cluster.info.bin_dir.join("ctr"))
                .args(["--address", &node.containerd_socket, "--namespace", "k8s.io", "containers", "info", id])
                .output()
                .ok()
                .filter(|o| o.status.success())?;
            let info: Value = serde_json::from_slice(&out.stdout).ok()?;
            let labels = &info["Labels"];
            let label = |k: &str| labels[k].as_str().unwrap_or_default().to_owned();
            let kind = label("io.cri-containerd.kind");
            let name = match label("io.kubernetes.container.name").as_str() {
                "" => format!("{}/{} {kind}", label("io.kubernetes.pod.namespace"), label("io.kubernetes.pod.name")),
                c => format!("{}/{} {kind} {c}", label("io.kubernetes.pod.namespace"), label("io.kubernetes.pod.name")),
            };
            Some((id.to_owned(), label("io.kubernetes.pod.uid"), name))
        })
        .collect()
}

#[tokio::test]
async fn the_game_says_ready_through_its_sdk_sidecar_from_inside_its_pod() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let work = tempfile::tempdir().unwrap();
    let (git, _) = config_repo(cluster, work.path(), "sdk e2e");

    let ns = Ns::new(cluster, "e2e-sdk").await;
    install_crds(&ns.client).await;
    let _op = operator(cluster, &ns, "7600-7699");
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();
    // Ready only when the game says so, with health checked: the sidecar runs in the pod.
    let mut game = service("game", 1, None, json!([{"name": "game", "containerPort": 7777, "policy": "Dynamic"}]));
    game["ready"] = json!("Sdk");
    game["health"] = json!({"initialDelaySeconds": 5, "periodSeconds": 5, "failureThreshold": 3});
    let z = zone(
        "sdk",
        306,
        vec![game],
        json!([{"path": "/app/artifacts", "git": {"url": git.url("config"), "branch": "main"}}]),
    );
    zones.create(&PostParams::default(), &z).await.unwrap();
    let ready = wait_running(&ns, "sdk").await;
    let server = &ready[0];

    // Ready came from the game's own call, made by the process of the pod that runs now.
    let pod = pods.get(&server.name_any()).await.unwrap();
    let init = pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
    assert!(init.iter().any(|c| c.name == "gamezone-sdk"), "the sidecar runs in the pod");
    let sdk = server.status.as_ref().and_then(|s| s.sdk.clone()).expect("status.sdk written by the sidecar");
    assert_eq!(sdk.state, Some(SdkState::RequestReady), "{sdk:?}");
    assert_eq!(sdk.pod_uid, pod.metadata.uid, "said by the current pod's process");
    let answer = hello(server, "game").await;
    assert_eq!(answer["id"], 1, "{answer}");

    // Its health pings keep it Ready past the failure threshold.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let later = servers.get(&server.name_any()).await.unwrap();
    let status = later.status.unwrap();
    assert_eq!(status.state, Some(ServerState::Ready), "{:?}", status.message);
    assert_ne!(status.sdk.and_then(|s| s.health), Some(SdkHealth::Unhealthy));
    assert_eq!(pods.get(&server.name_any()).await.unwrap().metadata.uid, pod.metadata.uid, "not replaced");
    ns.finish().await;
}
