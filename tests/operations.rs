//! Operating the operator: leader election on a Lease, metrics and health endpoints, render.

mod common;
mod support;

use gamezone::api::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::json;
use support::{Operator, WAIT, free_port, http_get, install_crds, wait_ready};

fn small_zone() -> GameZone {
    gamezone_api::fixture::zone("zone1").servers(2).build()
}

#[tokio::test]
async fn only_the_lease_holder_acts_and_a_follower_takes_over() {
    let ns = common::namespace("leader").await;
    install_crds(&ns.client).await;
    let (pa, pb) = (free_port(), free_port());
    let flags = |port: u16| {
        vec![
            "--leader-elect".to_string(),
            "--lease-namespace".into(),
            ns.name.clone(),
            "--lease-duration".into(),
            "3".into(),
            "--http-addr".into(),
            format!("127.0.0.1:{port}"),
        ]
    };
    let fa = flags(pa);
    let mut a = Operator::start_with(ns.kubeconfig(), &ns.name, &fa.iter().map(String::as_str).collect::<Vec<_>>());
    let leases: Api<Lease> = ns.api();
    let holder = |l: Lease| l.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    let first = common::wait_for("a Lease holder", WAIT, || async {
        match leases.get_opt("gamezone-operator").await {
            Ok(Some(l)) if !holder(l.clone()).is_empty() => Ok(holder(l)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let fb = flags(pb);
    let _b = Operator::start_with(ns.kubeconfig(), &ns.name, &fb.iter().map(String::as_str).collect::<Vec<_>>());
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &small_zone()).await.unwrap();
    wait_ready(&zones, "zone1").await;

    // The follower is alive and ready (a healthy standby) but has reconciled nothing.
    let follower =
        common::wait_for("the follower's /healthz", WAIT, || async { http_get(pb, "/healthz").ok_or("no answer") })
            .await;
    assert_eq!(follower.0, 200);
    assert_eq!(http_get(pb, "/readyz").map(|r| r.0), Some(200));
    let (code, leader_metrics) = http_get(pa, "/metrics").expect("leader metrics");
    assert_eq!(code, 200);
    assert!(leader_metrics.contains(r#"gamezone_reconciles_total{controller="zone"}"#), "{leader_metrics}");
    assert!(leader_metrics.contains("gamezone_reconcile_duration_seconds"), "{leader_metrics}");
    assert!(!http_get(pb, "/metrics").unwrap().1.contains("gamezone_reconciles_total{"), "the follower reconciled");
    assert_eq!(http_get(pa, "/readyz").map(|r| r.0), Some(200));

    // The leader dies; the follower takes the Lease once it expires and carries on.
    a.kill();
    common::wait_for("the follower to take the Lease", WAIT, || async {
        let h = leases.get("gamezone-operator").await.map(holder).map_err(|e| e.to_string())?;
        if h != first && !h.is_empty() { Ok(()) } else { Err(h) }
    })
    .await;
    let patch = json!({"spec": {"services": [{"type": "game", "id": 1, "endId": 3}]}});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let z = wait_ready(&zones, "zone1").await;
    assert_eq!(z.status.unwrap().desired_servers, 3);
    assert_eq!(http_get(pb, "/readyz").map(|r| r.0), Some(200));
    ns.cleanup().await;
}

/// `gamezone render ARGS -f FILE`, run.
fn render(args: &[&str], file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gamezone"))
        .arg("render")
        .args(args)
        .arg("-f")
        .arg(file)
        .output()
        .unwrap()
}

/// `gamezone render ARGS` of the zone file `zone`: it succeeds; its documents.
fn render_docs(zone: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zone.yaml");
    std::fs::write(&file, zone).unwrap();
    let out = render(args, &file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_yaml::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| serde_json::Value::deserialize(d).unwrap())
        .collect()
}

#[test]
fn render_prints_the_identity_the_sdk_sidecar_runs_as() {
    let zone = "
apiVersion: gamezone.dev/v1alpha1
kind: GameZone
metadata: {name: zone1, namespace: team}
spec:
  zoneId: 101
  defaultImage: svc:1
  services:
    - {type: game, id: 1, deletableGates: [NoPlayers]}
";
    let docs = render_docs(zone, &[]);
    let kinds: Vec<String> = docs
        .iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds[..3],
        ["ServiceAccount/gamezone-sdk-zone1", "Role/gamezone-sdk-zone1", "RoleBinding/gamezone-sdk-zone1"],
        "{kinds:?}"
    );
    // The pod runs as the ServiceAccount printed beside it.
    let pod = docs.iter().find(|d| d["kind"] == "Pod").unwrap();
    assert_eq!(pod["spec"]["serviceAccountName"], "gamezone-sdk-zone1");
    let binding = &docs[2];
    assert_eq!(binding["subjects"][0]["name"], "gamezone-sdk-zone1");
    assert_eq!(binding["roleRef"]["name"], "gamezone-sdk-zone1");
}

#[test]
fn render_prints_the_pack_job_before_the_servers_and_refuses_a_registry_that_is_no_repository() {
    let zone = "
apiVersion: gamezone.dev/v1alpha1
kind: GameZone
metadata: {name: zone1, namespace: team}
spec:
  zoneId: 101
  defaultImage: svc:1
  services: [{type: game, id: 1}]
  artifacts: [{path: /app/artifacts, git: {url: 'https://g.example/x.git', branch: main}}]
";
    let docs =
        render_docs(zone, &["--revisions", r#"["c0ffee"]"#, "--artifact-registry", "reg.example:5000/gamezone/layers"]);
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    let job = kinds.iter().position(|k| *k == "Job").expect("the pack Job");
    assert!(job < kinds.iter().position(|k| *k == "GameServer").unwrap(), "{kinds:?}");
    assert_eq!(docs[job]["spec"]["template"]["spec"]["containers"][0]["args"][0], "pack");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zone.yaml");
    std::fs::write(&file, zone).unwrap();
    let out = render(&["--artifact-registry", "layers"], &file);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(r#"--artifact-registry "layers": name the host and the repository"#),
        "{err}"
    );
}

#[test]
fn render_prints_every_object_offline() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zone.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: gamezone.dev/v1alpha1
kind: GameZone
metadata: {name: zone1, namespace: team}
spec:
  zoneId: 101
  defaultImage: svc:1
  migration: {image: mig:1}
  mysql: {host: db, user: u, database: d, passwordSecretRef: {name: s, key: password}}
  services:
    - {type: game, id: 1, endId: 2, expose: {perType: {type: LoadBalancer}},
       ports: [{name: client, containerPort: 7777, policy: Dynamic}]}
  artifacts:
    - {path: /app/artifacts, git: {url: "https://example.com/x.git", branch: main}}
"#,
    )
    .unwrap();
    let pin = "0123456789abcdef0123456789abcdef01234567";
    let revisions = format!(r#"[{{"layer":0,"source":"git https://example.com/x.git","revision":"{pin}"}}]"#);
    let out = render(&["--port-range", "7100-7199", "--revisions", &revisions], &file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    // Migration Jobs are named by their inputs hash; keep only the stable part of the name.
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v = serde_yaml::Value::deserialize(d).unwrap();
            let name = v["metadata"]["name"].as_str().unwrap();
            let name = name.split_once("-migrate-").map_or(name, |(zone, _)| zone);
            format!("{}/{}", v["kind"].as_str().unwrap(), name)
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "Job/zone1",
            "GameServer/zone1-game-1",
            "GameServer/zone1-game-2",
            "Service/zone1",
            "Service/zone1-game",
            "PodDisruptionBudget/zone1-players",
            "ConfigMap/zone1-topology",
            "Pod/zone1-game-1",
            "Pod/zone1-game-2"
        ]
    );
    // The pods as an empty cluster would run them: ports from the range, in order, told to the
    // process and listed in the topology; the init container gets the pins.
    let docs: Vec<serde_json::Value> =
        serde_yaml::Deserializer::from_str(&text).map(|d| serde_json::Value::deserialize(d).unwrap()).collect();
    let pod = |name: &str| docs.iter().find(|d| d["kind"] == "Pod" && d["metadata"]["name"] == name).unwrap();
    let mut held = Vec::new();
    for name in ["zone1-game-1", "zone1-game-2"] {
        let server = &pod(name)["spec"]["containers"][0];
        let host_port = server["ports"][0]["hostPort"].as_i64().unwrap();
        assert!((7100..=7199).contains(&host_port), "{name}: {host_port}");
        held.push(host_port);
        assert_eq!(server["ports"][0]["containerPort"], 7777, "{name}");
        let env = server["env"].as_array().unwrap();
        assert!(
            env.iter()
                .any(|e| e["name"] == "GAMEZONE_PORT_CLIENT"
                    && e["value"].as_str() == Some(host_port.to_string().as_str())),
            "{env:?}"
        );
        let init_env = pod(name)["spec"]["initContainers"][0]["env"].to_string();
        assert!(init_env.contains(pin), "{init_env}");
    }
    assert_ne!(held[0], held[1], "one host port per server on the one node");
    let topology = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let listed: serde_json::Value = serde_json::from_str(topology["data"]["topology.json"].as_str().unwrap()).unwrap();
    let listed: Vec<i64> =
        listed["instances"].as_array().unwrap().iter().map(|i| i["ports"][0]["port"].as_i64().unwrap()).collect();
    assert_eq!(listed, held, "the topology lists the ports the pods get");

    // Revisions that do not fit the layers are refused, saying how many are needed.
    let out = render(&["--revisions", r#"["a","b"]"#], &file);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.artifacts has 1 layer(s)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A bad file names the field.
    std::fs::write(&file, "apiVersion: gamezone.dev/v1alpha1\nkind: GameZone\nmetadata: {name: z}\nspec: {zoneId: 1, services: [{type: game, id: 1}]}\n").unwrap();
    let out = render(&[], &file);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spec.services[0].image"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
