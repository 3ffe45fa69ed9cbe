//! End-to-end behaviour of the operator on the local control plane: a zone is provisioned,
//! converges on edits, survives operator restarts, rejects bad input and is torn down.
//! Each test runs its own operator process, scoped to its own namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gamezone::api::*;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{common, support};
use support::{Operator, WAIT, install_crds, kubectl, names, pod_uids, selector, wait_ready};

async fn mysql_secret(api: &Api<Secret>) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "zone1-mysql"},
        "stringData": {"password": "s3cret-password"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &secret).await.expect("create the MySQL Secret");
}

/// The zone of seed 003, without artifacts.
fn zone(name: &str) -> GameZone {
    gamezone_api::fixture::zone(name)
        .spec("zoneId", json!(101))
        .spec("defaultImage", json!("registry.example.com/project1/service:0.1.0"))
        .spec("migration", json!({"image": "registry.example.com/project1/dbmigrater:0.1.0"}))
        .services(json!([
            {"type": "game", "id": 1, "image": "registry.example.com/project1/service:0.2.0",
             "ports": [{"name": "client", "containerPort": 7777}],
             "expose": {"perInstance": {"type": "ClusterIP"}}},
            {"type": "db", "id": 1},
            {"type": "gateway", "id": 1, "endId": 2,
             "ports": [{"name": "client", "containerPort": 8000}],
             "expose": {"perType": {"type": "LoadBalancer", "annotations": {"metallb.universe.tf/address-pool": "game"}},
                        "perInstance": {"type": "ClusterIP"}}},
            {"type": "auth", "id": 2}
        ]))
        .spec("redis", json!({"host": "redis", "port": 6379}))
        .spec("mysql", json!({"host": "192.168.1.100", "user": "username1", "database": "project1",
                              "passwordSecretRef": {"name": "zone1-mysql", "key": "password"}}))
        .build()
}

#[tokio::test]
async fn zone_is_provisioned_then_deleted_without_leftovers() {
    let ns = common::namespace("zone-create").await;
    install_crds(&ns.client).await;
    mysql_secret(&ns.api()).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &zone("zone1")).await.unwrap();

    let z = wait_ready(&zones, "zone1").await;
    let status = z.status.unwrap();
    assert_eq!((status.ready_servers, status.desired_servers), (5, 5));
    assert_eq!(status.phase, Some(ZonePhase::Running));
    for t in ["Ready", "ArtifactsReady", "Migrated", "ServersReady"] {
        assert!(
            status.conditions.iter().any(|c| c.type_ == t && c.status == "True"),
            "condition {t} not True: {:?}",
            status.conditions
        );
    }
    // The migration ran before the servers.
    let jobs: Api<Job> = ns.api();
    let job_list = jobs.list(&selector("zone1")).await.unwrap().items;
    assert_eq!(job_list.len(), 1, "one migration Job");
    let job = &job_list[0];
    let pods: Api<Pod> = ns.api();
    let finished = common::job_finished(&pods, &job.name_any(), gamezone::zone::MIGRATE_CONTAINER).await;
    // The zone went on when the migration's container ended; the Job controller counts it too.
    common::wait_for("the migration Job counted as succeeded", WAIT, || async {
        let j = jobs.get(&job.name_any()).await.ok()?;
        (j.status.as_ref()?.succeeded == Some(1) && j.status.as_ref()?.completion_time.is_some()).then_some(())
    })
    .await;
    for pod in pods.list(&ListParams::default().labels(SERVER_LABEL)).await.unwrap() {
        let created = pod.metadata.creation_timestamp.clone().unwrap().0;
        assert!(
            created >= finished - Duration::from_secs(1),
            "{} created before the migration finished",
            pod.name_any()
        );
        assert_eq!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Running"));
    }
    // One GameServer per server, each with its pod's address and node.
    let servers: Api<GameServer> = ns.api();
    assert_eq!(
        names(&servers, "zone1").await,
        ["zone1-auth-2", "zone1-db-1", "zone1-game-1", "zone1-gateway-1", "zone1-gateway-2"]
    );
    let game = servers.get("zone1-game-1").await.unwrap().status.unwrap();
    assert_eq!(game.state, Some(ServerState::Ready));
    assert!(game.address.is_some() && game.node_name.is_some(), "{game:?}");
    assert_eq!(game.ports[0].port, 7777);
    // Services and the topology every process reads.
    let services: Api<Service> = ns.api();
    assert_eq!(
        names(&services, "zone1").await,
        ["zone1", "zone1-game-1", "zone1-gateway", "zone1-gateway-1", "zone1-gateway-2"]
    );
    let lb = services.get("zone1-gateway").await.unwrap();
    assert_eq!(lb.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(lb.metadata.annotations.unwrap()["metallb.universe.tf/address-pool"], "game");
    let topology: Api<ConfigMap> = ns.api();
    let doc: serde_json::Value =
        serde_json::from_str(&topology.get("zone1-topology").await.unwrap().data.unwrap()["topology.json"]).unwrap();
    let listed = doc["instances"].as_array().unwrap();
    assert_eq!(listed.len(), 5);
    let game1 = listed.iter().find(|i| i["name"] == "zone1-game-1").unwrap();
    assert_eq!(game1["dns"], format!("zone1-game-1.zone1.{}.svc", ns.name));
    assert_eq!(game1["ports"][0]["port"], 7777);

    // What a person sees.
    let table = kubectl(ns.kubeconfig(), &["get", "gz,gs", "-n", &ns.name]);
    assert!(table.contains("Running") && table.contains("5/5"), "kubectl get gz,gs:\n{table}");
    assert!(table.contains("zone1-gateway-2") && table.contains("Ready"), "kubectl get gz,gs:\n{table}");

    // Delete: every object the zone made goes away.
    zones.delete("zone1", &DeleteParams::default()).await.unwrap();
    common::wait_for("zone1 gone", WAIT, || async {
        match zones.get_opt("zone1").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|z| z.map(|z| z.status)))),
        }
    })
    .await;
    common::wait_for("every object of zone1 gone", WAIT, || async {
        let left = [
            names(&servers, "zone1").await,
            names(&services, "zone1").await,
            names(&topology, "zone1").await,
            names(&jobs, "zone1").await,
            names(&pods, "zone1").await,
        ]
        .concat();
        if left.is_empty() { Ok(()) } else { Err(format!("left: {left:?}")) }
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn edits_converge() {
    let ns = common::namespace("zone-edit").await;
    install_crds(&ns.client).await;
    mysql_secret(&ns.api()).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let services: Api<Service> = ns.api();
    let pods: Api<Pod> = ns.api();
    let jobs: Api<Job> = ns.api();
    let mut z = zone("zone1");
    zones.create(&PostParams::default(), &z).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let merge = |patch: serde_json::Value| {
        let zones = zones.clone();
        async move { zones.patch("zone1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap() }
    };

    // Add a server: game endId 1 → 2.
    z.spec.services[0].end_id = Some(2);
    merge(json!({"spec": {"services": z.spec.services}})).await;
    wait_ready(&zones, "zone1").await;
    assert!(names(&servers, "zone1").await.contains(&"zone1-game-2".to_string()));
    assert!(names(&services, "zone1").await.contains(&"zone1-game-2".to_string()));

    // Bump one service's image: only its servers are replaced.
    let before = pod_uids(&pods, "zone1").await;
    z.spec.services[2].image = Some("registry.example.com/project1/service:0.2.1-hotfix".into());
    merge(json!({"spec": {"services": z.spec.services}})).await;
    wait_ready(&zones, "zone1").await;
    let after = pod_uids(&pods, "zone1").await;
    for (pod, uid) in &before {
        let replaced = after.get(pod) != Some(uid);
        assert_eq!(replaced, pod.starts_with("zone1-gateway-"), "{pod} replaced={replaced}");
    }
    let gw = pods.get("zone1-gateway-1").await.unwrap();
    assert_eq!(
        gw.spec.unwrap().containers[0].image.as_deref(),
        Some("registry.example.com/project1/service:0.2.1-hotfix")
    );

    // Change the MySQL config: the migration runs again, then every server rolls.
    let before = pod_uids(&pods, "zone1").await;
    merge(json!({"spec": {"mysql": {"host": "mysql.db.svc", "database": "project1_v2"}}})).await;
    let z2 = wait_ready(&zones, "zone1").await;
    let job_name = z2.status.unwrap().migration.unwrap().job_name;
    let job = jobs.get(&job_name).await.unwrap();
    let env = job.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == "MYSQL_HOST" && e.value.as_deref() == Some("mysql.db.svc")));
    let finished = common::job_finished(&pods, &job_name, gamezone::zone::MIGRATE_CONTAINER).await;
    let after = pod_uids(&pods, "zone1").await;
    for (pod, uid) in &before {
        assert_ne!(after.get(pod), Some(uid), "{pod} was not rolled after the MySQL change");
        let p = pods.get(pod).await.unwrap();
        assert!(
            p.metadata.creation_timestamp.unwrap().0 >= finished - Duration::from_secs(1),
            "{pod} rolled before the migration finished"
        );
    }
    assert_eq!(names(&jobs, "zone1").await, [job_name], "older migration Jobs are removed");

    // Shrink a range: the extra server and its Service go.
    z.spec.services[2].end_id = None;
    z.spec.services[2].image = Some("registry.example.com/project1/service:0.2.1-hotfix".into());
    merge(json!({"spec": {"services": z.spec.services}})).await;
    wait_ready(&zones, "zone1").await;
    common::wait_for("zone1-gateway-2 and its Service removed", WAIT, || async {
        let s = names(&servers, "zone1").await;
        let v = names(&services, "zone1").await;
        let p = names(&pods, "zone1").await;
        let gone = |l: &[String]| !l.contains(&"zone1-gateway-2".to_string());
        if gone(&s) && gone(&v) && gone(&p) { Ok(()) } else { Err(format!("servers {s:?} services {v:?} pods {p:?}")) }
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn operator_restarts_mid_way_converge_without_duplicates() {
    let ns = common::namespace("zone-restart").await;
    install_crds(&ns.client).await;
    mysql_secret(&ns.api()).await;
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let jobs: Api<Job> = ns.api();
    let pods: Api<Pod> = ns.api();

    // Killed right after it started creating.
    let mut op = Operator::start(ns.kubeconfig(), &ns.name);
    zones.create(&PostParams::default(), &zone("zone1")).await.unwrap();
    common::wait_for("the migration Job to exist", WAIT, || async {
        if names(&jobs, "zone1").await.is_empty() { Err("no job yet") } else { Ok(()) }
    })
    .await;
    op.kill();
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    wait_ready(&zones, "zone1").await;
    assert_eq!(names(&jobs, "zone1").await.len(), 1);
    assert_eq!(names(&servers, "zone1").await.len(), 5);
    assert_eq!(pods.list(&ListParams::default().labels(SERVER_LABEL)).await.unwrap().items.len(), 5);
    drop(_op);

    // Killed in the middle of an edit that adds servers and rolls the others.
    let mut op = Operator::start(ns.kubeconfig(), &ns.name);
    let patch = json!({"spec": {"defaultImage": "registry.example.com/project1/service:0.3.0"}});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    op.kill();
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    wait_ready(&zones, "zone1").await;
    let list = pods.list(&ListParams::default().labels(SERVER_LABEL)).await.unwrap().items;
    assert_eq!(list.len(), 5, "no duplicate pods: {:?}", list.iter().map(|p| p.name_any()).collect::<Vec<_>>());
    for p in list.iter().filter(|p| p.name_any().starts_with("zone1-db") || p.name_any().starts_with("zone1-auth")) {
        assert_eq!(
            p.spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some("registry.example.com/project1/service:0.3.0")
        );
    }
    ns.cleanup().await;
}

#[tokio::test]
async fn bad_input_is_refused_or_reported_by_field() {
    let ns = common::namespace("zone-bad").await;
    install_crds(&ns.client).await;
    let zones: Api<GameZone> = ns.api();

    // What CEL can tell, the API server refuses with the rule's message.
    let cases = [
        (json!({"services": [{"type": "game", "id": 3, "endId": 1}]}), "endId must be >= id"),
        (
            json!({"services": [{"type": "game", "id": 1}, {"type": "game", "id": 2}]}),
            "each service type may appear once",
        ),
        (json!({"services": [{"type": "game", "id": 1}], "defaultImage": null}), "every service needs an image"),
        (
            json!({"services": [{"type": "game", "id": 1}], "artifacts": [{"path": "/app/a", "local": {"path": "/x"}, "git": {"url": "https://example.com/x.git"}}]}),
            "exactly one source",
        ),
        (
            json!({"services": [{"type": "game", "id": 1, "ports": [{"name": "p", "policy": "Static", "containerPort": 1}]}]}),
            "a Static port needs hostPort",
        ),
    ];
    for (spec, message) in cases {
        let fields = spec.as_object().unwrap();
        let z = fields.iter().fold(gamezone_api::fixture::zone("bad"), |z, (k, v)| z.spec(k, v.clone())).build();
        let err = zones
            .create(&PostParams::default(), &z)
            .await
            .expect_err(&format!("accepted a zone that should fail with {message:?}"));
        assert!(err.to_string().contains(message), "error {err} does not say {message:?}");
    }

    // What only the operator can tell becomes a condition naming the field, and nothing is made.
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    zones.create(&PostParams::default(), &zone("zone1")).await.unwrap();
    let z = common::wait_for("zone1 Degraded for the missing Secret", WAIT, || async {
        let z = zones.get("zone1").await.map_err(|e| e.to_string())?;
        let degraded = z.status.as_ref().is_some_and(|s| s.phase == Some(ZonePhase::Degraded));
        if degraded { Ok(z) } else { Err(format!("{:?}", z.status)) }
    })
    .await;
    let ready = z.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(ready.reason, "SecretNotFound");
    assert!(
        ready.message.contains("spec.mysql.passwordSecretRef") && ready.message.contains("zone1-mysql"),
        "{}",
        ready.message
    );
    let servers: Api<GameServer> = ns.api();
    let jobs: Api<Job> = ns.api();
    assert!(names(&servers, "zone1").await.is_empty() && names(&jobs, "zone1").await.is_empty(), "a half-made zone");

    // A Secret without the key is named as such; adding the key heals the zone.
    let secrets: Api<Secret> = ns.api();
    let wrong: Secret = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "zone1-mysql"}, "stringData": {"pwd": "x"}}),
    )
    .unwrap();
    secrets.create(&PostParams::default(), &wrong).await.unwrap();
    zones
        .patch("zone1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"touch": "1"}}})))
        .await
        .unwrap();
    common::wait_for("the missing key named", WAIT, || async {
        let z = zones.get("zone1").await.map_err(|e| e.to_string())?;
        let msg = z
            .status
            .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.message)
            .unwrap_or_default();
        if msg.contains("has no key \"password\"") { Ok(()) } else { Err(msg) }
    })
    .await;
    secrets
        .patch("zone1-mysql", &PatchParams::default(), &Patch::Merge(json!({"stringData": {"password": "s3cret"}})))
        .await
        .unwrap();
    zones
        .patch("zone1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": {"touch": "2"}}})))
        .await
        .unwrap();
    wait_ready(&zones, "zone1").await;

    // A Job no node takes leaves the zone waiting, saying why in the scheduler's words.
    let mut nowhere = serde_json::to_value(zone("zone2")).unwrap();
    nowhere["spec"]["zoneId"] = json!(102);
    nowhere["spec"]["migration"]["nodeSelector"] = json!({"gamezone.dev/no-such-pool": "x"});
    let nowhere: GameZone = serde_json::from_value(nowhere).unwrap();
    zones.create(&PostParams::default(), &nowhere).await.unwrap();
    common::wait_for("zone2's stuck migration named", WAIT, || async {
        let z = zones.get("zone2").await.map_err(|e| e.to_string())?;
        let ready = z.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
        let (reason, msg) = ready.map(|c| (c.reason, c.message)).unwrap_or_default();
        let says = msg.contains("its pod is stuck: not scheduled: 0/") && msg.contains("node affinity/selector");
        if reason == "Migrating" && says { Ok(()) } else { Err(format!("{reason}: {msg}")) }
    })
    .await;
    assert!(names(&servers, "zone2").await.is_empty(), "servers wait for the migration");

    // The operator never writes a user's spec.
    let z = zones.get("zone1").await.unwrap();
    for mf in z.metadata.managed_fields.unwrap_or_default() {
        if mf.manager.as_deref() == Some(MANAGER) {
            let fields = serde_json::to_string(&mf.fields_v1).unwrap();
            assert!(!fields.contains("f:spec"), "the operator owns spec fields: {fields}");
        }
    }
    ns.cleanup().await;
}

/// A git repository served by `git daemon` on loopback, killed on drop.
struct GitServer {
    daemon: Child,
    work: PathBuf,
    url: String,
    _dir: tempfile::TempDir,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("run git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitServer {
    fn start() -> GitServer {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("srv/config.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare"]);
        git(&bare, &["config", "uploadpack.allowReachableSHA1InWant", "true"]);
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let daemon = Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", dir.path().join("srv").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let server = GitServer { daemon, work, url: format!("git://127.0.0.1:{port}/config.git"), _dir: dir };
        // Wait until it accepts connections.
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// Commits `content` as config/server.yaml and pushes; returns the commit.
    fn commit(&self, content: &str) -> String {
        std::fs::create_dir_all(self.work.join("config")).unwrap();
        std::fs::write(self.work.join("config/server.yaml"), content).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", content]);
        let bare = self.work.parent().unwrap().join("srv/config.git");
        git(&self.work, &["push", "-q", bare.to_str().unwrap(), "main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

impl Drop for GitServer {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

#[tokio::test]
async fn with_an_artifact_registry_a_pack_job_runs_before_servers_which_copy_from_the_registry() {
    let git = GitServer::start();
    let first = git.commit("max_players: 100");
    let ns = common::namespace("zone-pack").await;
    install_crds(&ns.client).await;
    let registry = "127.0.0.1:5000/gamezone/layers";
    let _op = Operator::start_with(
        ns.kubeconfig(),
        &ns.name,
        &["--artifact-registry", registry, "--artifact-registry-plain-http"],
    );
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gitcred"},
        "stringData": {"username": "u", "password": "p"}
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let layer = |url: &str| json!([{"path": "/app/artifacts", "git": {"url": url, "branch": "main", "secretRef": {"name": "gitcred"}}}]);
    let z = gamezone_api::fixture::zone("zone1").servers(2).spec("artifacts", layer(&git.url)).build();
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &z).await.unwrap();
    let st = wait_ready(&zones, "zone1").await.status.unwrap();
    let pack = st.pack.expect("status.pack");
    assert_eq!(pack.state, JobState::Succeeded);
    assert!(st.conditions.iter().any(|c| c.type_ == "ArtifactsPacked" && c.status == "True"), "{:?}", st.conditions);

    // The pack Job fetches from the origin with the layer's Secret and pushes to the registry.
    let jobs: Api<Job> = ns.api();
    let job = jobs.get(&pack.job_name).await.unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    assert!(args.windows(2).any(|w| w == ["--registry", registry]), "{args:?}");
    assert!(
        pod.volumes
            .iter()
            .flatten()
            .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("gitcred"))
    );
    let revisions = pod.containers[0].env.iter().flatten().find(|e| e.name == "GAMEZONE_REVISIONS").unwrap();
    assert!(revisions.value.as_deref().unwrap().contains(&first));

    // Servers copy from the registry: its flags, no origin Secret.
    let pods: Api<Pod> = ns.api();
    let server = pods.get("zone1-game-1").await.unwrap().spec.unwrap();
    let init = server.init_containers.iter().flatten().find(|c| c.name == "artifacts").unwrap();
    assert!(init.args.iter().flatten().any(|a| a == "--registry"), "{:?}", init.args);
    assert!(!server.volumes.iter().flatten().any(|v| v.secret.is_some()), "no layer Secret in a server pod");

    // A new pin is packed by a new Job before the servers move; the old Job goes.
    let second = git.commit("max_players: 200");
    let mut z = zones.get("zone1").await.unwrap();
    z.spec.artifacts_interval = Some(Interval::from_secs(2));
    zones.replace("zone1", &PostParams::default(), &z).await.unwrap();
    common::wait_for("the new pin packed and the old pack Job gone", WAIT, || async {
        let st = zones.get("zone1").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        let p = st.pack.clone().unwrap_or_default();
        let names: Vec<String> = jobs
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .map(|j| j.name_any())
            .collect();
        let packed = p.state == JobState::Succeeded && p.job_name != pack.job_name;
        let pinned = st.artifacts.first().is_some_and(|a| a.revision == second);
        if packed && pinned && !names.contains(&pack.job_name) { Ok(()) } else { Err(format!("{p:?}, jobs {names:?}")) }
    })
    .await;
    ns.cleanup().await;
}

#[tokio::test]
async fn artifact_revision_change_rolls_servers_with_the_new_pin() {
    let git = GitServer::start();
    let first = git.commit("max_players: 100");
    let ns = common::namespace("zone-artifacts").await;
    install_crds(&ns.client).await;
    mysql_secret(&ns.api()).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let pods: Api<Pod> = ns.api();
    let mut z = zone("zone1");
    z.spec.services.truncate(2);
    z.spec.artifacts_interval = Some(Interval::from_secs(2));
    z.spec.artifacts = vec![
        serde_json::from_value(json!({
            "path": "/app/artifacts/config", "subPath": "config", "git": {"url": git.url, "branch": "main"}
        }))
        .unwrap(),
    ];
    zones.create(&PostParams::default(), &z).await.unwrap();
    let ready = wait_ready(&zones, "zone1").await.status.unwrap();
    assert_eq!(ready.artifacts[0].revision, first);
    assert!(!ready.artifacts[0].source.is_empty());
    let revisions_env = |pod: &Pod| {
        let init = &pod.spec.as_ref().unwrap().init_containers.as_ref().expect("an artifacts init-container")[0];
        init.env.as_ref().unwrap().iter().find(|e| e.name == "GAMEZONE_REVISIONS").unwrap().value.clone().unwrap()
    };
    assert!(revisions_env(&pods.get("zone1-game-1").await.unwrap()).contains(&first));
    let before = pod_uids(&pods, "zone1").await;

    // A push to the branch is picked up on the next resolve; every server rolls to the new pin.
    let second = git.commit("max_players: 200");
    common::wait_for("the new commit pinned and every server on it", WAIT, || async {
        let z = zones.get("zone1").await.map_err(|e| e.to_string())?;
        let st = z.status.unwrap_or_default();
        let pinned = st.artifacts.first().map(|a| a.revision.clone()).unwrap_or_default();
        let ready = st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        if pinned != second || !ready {
            return Err(format!("pinned {pinned}, ready {ready}"));
        }
        for name in before.keys() {
            let p = pods.get(name).await.map_err(|e| e.to_string())?;
            if !revisions_env(&p).contains(&second) {
                return Err(format!("{name} still on the old pin"));
            }
        }
        Ok(())
    })
    .await;
    let after = pod_uids(&pods, "zone1").await;
    assert!(before.iter().all(|(n, uid)| after.get(n) != Some(uid)), "every server rolled");
    ns.cleanup().await;
}

#[tokio::test]
async fn failed_migration_degrades_the_zone_and_leaves_servers_alone() {
    let ns = common::namespace("zone-migfail").await;
    install_crds(&ns.client).await;
    mysql_secret(&ns.api()).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let pods: Api<Pod> = ns.api();
    zones.create(&PostParams::default(), &zone("zone1")).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let before = pod_uids(&pods, "zone1").await;

    // A new server version whose migration fails (the simulated migrater exits 1).
    let patch = json!({"spec": {"defaultImage": "registry.example.com/project1/service:0.9.0",
                                "migration": {"image": "gamezone.test/fail", "backoffLimit": 0}}});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let z = common::wait_for("zone1 Degraded by the failed migration", WAIT, || async {
        let z = zones.get("zone1").await.map_err(|e| e.to_string())?;
        let st = z.status.clone().unwrap_or_default();
        if st.phase == Some(ZonePhase::Degraded) && st.observed_generation == z.metadata.generation {
            Ok(z)
        } else {
            Err(format!("{:?}", st.phase))
        }
    })
    .await;
    let st = z.status.unwrap();
    let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "MigrationFailed"));
    let job = st.migration.as_ref().unwrap().job_name.clone();
    assert!(ready.message.contains(&job) && ready.message.contains("BackoffLimitExceeded"), "{}", ready.message);
    assert_eq!(st.migration.unwrap().state, JobState::Failed);
    // Running servers are untouched: same pods, old image.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pod_uids(&pods, "zone1").await, before, "servers were touched");
    let game = pods.get("zone1-db-1").await.unwrap();
    assert_eq!(game.spec.unwrap().containers[0].image.as_deref(), Some("registry.example.com/project1/service:0.1.0"));

    // Fixing the migrater lets the version through.
    let fix = json!({"spec": {"migration": {"image": "registry.example.com/project1/dbmigrater:0.1.1"}}});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(&fix)).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let db = pods.get("zone1-db-1").await.unwrap();
    assert_eq!(db.spec.unwrap().containers[0].image.as_deref(), Some("registry.example.com/project1/service:0.9.0"));
    ns.cleanup().await;
}

#[tokio::test]
async fn operator_killed_during_each_edit_and_the_delete_converges() {
    let ns = common::namespace("zone-killedits").await;
    install_crds(&ns.client).await;
    mysql_secret(&ns.api()).await;
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let services: Api<Service> = ns.api();
    let jobs: Api<Job> = ns.api();
    let pods: Api<Pod> = ns.api();
    let mut op = Operator::start(ns.kubeconfig(), &ns.name);
    zones.create(&PostParams::default(), &zone("zone1")).await.unwrap();
    wait_ready(&zones, "zone1").await;

    let mut z = zone("zone1");
    z.spec.services[2].end_id = None; // shrink gateway 1..2 -> 1
    let edits = [
        ("MySQL change", json!({"spec": {"mysql": {"host": "mysql-2.db.svc"}}})),
        ("shrink", json!({"spec": {"services": z.spec.services}})),
    ];
    for (what, patch) in edits {
        zones.patch("zone1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        op.kill();
        op = Operator::start(ns.kubeconfig(), &ns.name);
        let z = wait_ready(&zones, "zone1").await;
        let desired = z.status.unwrap().desired_servers as usize;
        common::wait_for(&format!("exactly one pod per server after the {what}"), WAIT, || async {
            let p = names(&pods, "zone1").await.into_iter().filter(|n| !n.contains("-migrate-")).count();
            let s = names(&servers, "zone1").await.len();
            if (p, s) == (desired, desired) { Ok(()) } else { Err(format!("{p} pods, {s} servers, want {desired}")) }
        })
        .await;
        assert_eq!(names(&jobs, "zone1").await.len(), 1, "one migration Job after the {what}");
    }
    assert!(!names(&services, "zone1").await.contains(&"zone1-gateway-2".to_string()));

    // Killed right after the delete: the restarted operator finishes the cleanup.
    zones.delete("zone1", &DeleteParams::default()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    op.kill();
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    common::wait_for("zone1 and everything it made gone", WAIT, || async {
        let zone_left = zones.get_opt("zone1").await.map_err(|e| e.to_string())?.is_some();
        let left =
            [names(&servers, "zone1").await, names(&services, "zone1").await, names(&jobs, "zone1").await].concat();
        if !zone_left && left.is_empty() { Ok(()) } else { Err(format!("zone left {zone_left}, objects {left:?}")) }
    })
    .await;
    ns.cleanup().await;
}

/// The Ready condition's reason and message.
fn ready_condition(z: &GameZone) -> (String, String) {
    let c = z.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    c.map(|c| (c.reason.clone(), c.message.clone())).unwrap_or_default()
}

#[tokio::test]
async fn a_created_secret_moves_the_zone_at_once_and_status_shows_the_failure_of_now() {
    let ns = common::namespace("zone-truth").await;
    install_crds(&ns.client).await;
    let op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    // A git source nothing listens on: every pin fails, transiently.
    let closed = support::free_port();
    let mut z = zone("zone1");
    z.spec.artifacts = vec![
        serde_json::from_value(json!({"path": "/app/config", "git": {"url": format!("git://127.0.0.1:{closed}/config.git"), "branch": "main"}}))
            .unwrap(),
    ];
    zones.create(&PostParams::default(), &z).await.unwrap();
    common::wait_for("SecretNotFound", WAIT, || async {
        let (reason, msg) = ready_condition(&zones.get("zone1").await.map_err(|e| e.to_string())?);
        if reason == "SecretNotFound" { Ok(()) } else { Err(format!("{reason}: {msg}")) }
    })
    .await;

    // The fix, and nothing else: no touch of the zone. The zone hears of the Secret at once, well
    // before its two-minute requeue, and says what fails now.
    let created = std::time::Instant::now();
    mysql_secret(&ns.api()).await;
    let z = common::wait_for("the failure of now in status", Duration::from_secs(40), || async {
        let z = zones.get("zone1").await.map_err(|e| e.to_string())?;
        let (reason, msg) = ready_condition(&z);
        if reason == "FetchFailed" { Ok(z) } else { Err(format!("{reason}: {msg}")) }
    })
    .await;
    assert!(created.elapsed() < Duration::from_secs(40), "took {:?}", created.elapsed());
    let status = z.status.unwrap();
    let artifacts = status.conditions.iter().find(|c| c.type_ == "ArtifactsReady").unwrap();
    assert_eq!((artifacts.status.as_str(), artifacts.reason.as_str()), ("False", "FetchFailed"));
    assert!(
        artifacts.message.contains(&format!("127.0.0.1:{closed}")) && artifacts.message.contains("retrying in"),
        "{}",
        artifacts.message
    );
    assert_ne!(status.phase, Some(ZonePhase::Running));
    let servers: Api<GameServer> = ns.api();
    assert!(names(&servers, "zone1").await.is_empty(), "no server runs unpinned artifacts");
    drop(op);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_deleting_zone_is_terminating_says_what_it_waits_for_and_waiting_is_no_failure() {
    let ns = common::namespace("zone-terminating").await;
    install_crds(&ns.client).await;
    mysql_secret(&ns.api()).await;
    let op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &zone("zone1")).await.unwrap();
    wait_ready(&zones, "zone1").await;

    // Something else holds one server (as a drain will): the zone waits for it.
    let servers: Api<GameServer> = ns.api();
    let hold = json!({"metadata": {"finalizers": ["gamezone.dev/ports", "test.gamezone.dev/hold"]}});
    servers.patch("zone1-db-1", &PatchParams::default(), &Patch::Merge(hold)).await.unwrap();
    zones.delete("zone1", &DeleteParams::default()).await.unwrap();
    common::wait_for("zone1 Terminating, naming the server it waits for", WAIT, || async {
        let z = zones.get("zone1").await.map_err(|e| e.to_string())?;
        let (reason, msg) = ready_condition(&z);
        let phase = z.status.as_ref().and_then(|s| s.phase);
        if phase == Some(ZonePhase::Terminating) && reason == "Terminating" && msg.contains("zone1-db-1") {
            Ok(())
        } else {
            Err(format!("{phase:?} {reason}: {msg}"))
        }
    })
    .await;
    let table = kubectl(ns.kubeconfig(), &["get", "gz", "-n", &ns.name]);
    assert!(table.contains("Terminating"), "kubectl get gz:\n{table}");

    servers
        .patch("zone1-db-1", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    common::wait_for("zone1 gone", WAIT, || async {
        match zones.get_opt("zone1").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|z| z.map(|z| z.status)))),
        }
    })
    .await;
    let log = op.log();
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("reconcile failed")).collect();
    assert!(failed.is_empty(), "waiting logged as failing: {failed:?}");
    ns.cleanup().await;
}

/// Whether `obj` shows the operator's own update (a create's fields) on the object itself.
fn owned_by_an_update<K: kube::Resource>(obj: &K) -> bool {
    obj.meta().managed_fields.iter().flatten().any(|e| {
        e.manager.as_deref() == Some(MANAGER) && e.operation.as_deref() == Some("Update") && e.subresource.is_none()
    })
}

#[tokio::test]
async fn what_an_edit_drops_goes_from_servers_and_services_the_operator_created() {
    let ns = common::namespace("zone-drop").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let services: Api<Service> = ns.api();
    // No node has these labels: the servers need not run, only exist.
    let spec = |selector: serde_json::Value, annotations: serde_json::Value| {
        json!({"zoneId": 7, "defaultImage": "svc:1", "services": [{
            "type": "game", "id": 1, "nodeSelector": selector,
            "ports": [{"name": "client", "containerPort": 7777}],
            "expose": {"perType": {"type": "ClusterIP", "annotations": annotations}}}]})
    };
    let z = gamezone_api::fixture::zone("zone1")
        .with_spec(spec(json!({"test.gamezone.dev/a": "1", "test.gamezone.dev/b": "2"}), json!({"p": "1", "q": "2"})))
        .build();
    zones.create(&PostParams::default(), &z).await.unwrap();
    let (gs, svc) = common::wait_for("the server and its Service", WAIT, || async {
        match (servers.get_opt("zone1-game-1").await, services.get_opt("zone1-game").await) {
            (Ok(Some(gs)), Ok(Some(svc))) => Ok((gs, svc)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(owned_by_an_update(&gs) && owned_by_an_update(&svc), "created by POST: {:?}", gs.metadata.managed_fields);

    let edit = json!({"spec": spec(json!({"test.gamezone.dev/a": "1"}), json!({"p": "1"}))});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    common::wait_for("the dropped node label and annotation gone", WAIT, || async {
        let gs = servers.get("zone1-game-1").await.map_err(|e| e.to_string())?;
        let svc = services.get("zone1-game").await.map_err(|e| e.to_string())?;
        let selector = gs.spec.template.spec.as_ref().and_then(|s| s.node_selector.clone()).unwrap_or_default();
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        let dropped = !selector.contains_key("test.gamezone.dev/b") && !annotations.contains_key("q");
        let kept = selector.contains_key("test.gamezone.dev/a") && annotations.contains_key("p");
        match (dropped, kept, owned_by_an_update(&gs), owned_by_an_update(&svc)) {
            (true, true, false, false) => Ok(()),
            _ => Err(format!(
                "selector {selector:?}, annotations {annotations:?}, fields {:?}",
                gs.metadata.managed_fields
            )),
        }
    })
    .await;
    ns.cleanup().await;
}
