//! An operator upgrade restarts no game pod: the previous commit's operator and CRDs run a zone
//! (`scripts/previous-operator.sh` builds them once per commit), then this build's take over, on
//! a control plane of their own (the shared one keeps this build's CRDs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gamezone::api::*;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::{common, support};
use support::{Operator, WAIT, free_port, http_get, install_crds, kubectl, pod_uids, wait_ready};

/// The previous commit's operator binary and manifests folder.
fn previous_operator() -> (PathBuf, PathBuf) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/previous-operator.sh");
    let out = std::process::Command::new(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(out.status.success(), "{} failed ({}): its messages are above", script.display(), out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    match (lines.next(), lines.next()) {
        (Some(bin), Some(deploy)) => (bin.into(), deploy.into()),
        _ => panic!("{} printed {text:?}, not a binary and a folder", script.display()),
    }
}

/// Reconciles `controller` finished, from the operator's metrics at `port`.
fn reconciles_done(port: u16, controller: &str) -> Result<u64, String> {
    let (_, text) = http_get(port, "/metrics").ok_or("no answer from /metrics")?;
    let line = format!("gamezone_reconcile_duration_seconds_count{{controller=\"{controller}\"}} ");
    let count = text.lines().find_map(|l| l.strip_prefix(&line)).ok_or_else(|| format!("no {line:?} yet"))?;
    count.trim().parse().map_err(|e| format!("{count:?}: {e}"))
}

/// Each server's template hash, as this build computes it from the GameServer's spec.
async fn template_hashes(servers: &Api<GameServer>) -> BTreeMap<String, String> {
    let list = servers.list(&support::selector("zone1")).await.unwrap().items;
    list.iter().map(|gs| (gs.name_any(), gamezone::zone::server_template_hash(&gs.spec))).collect()
}

#[tokio::test]
async fn an_operator_upgrade_with_a_zone_running_restarts_no_pod() {
    let (previous, manifests) = previous_operator();
    let cluster = common::start_private(1);
    let kubeconfig = cluster.kubeconfig();
    let crds = manifests.join("crds.yaml");
    let crds = crds.to_str().unwrap();
    kubectl(kubeconfig, &["apply", "--server-side", "--force-conflicts", "--field-manager=gamezone-tests", "-f", crds]);
    kubectl(kubeconfig, &["wait", "--for=condition=Established", "--timeout=60s", "-f", crds]);
    let ns = common::namespace_in(kubeconfig, "upgrade").await;
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();

    // The previous release runs a zone: two types, host ports, the SDK sidecar on one (its gate).
    let mut old = Operator::start_program(&previous, kubeconfig, &ns.name, &[]);
    let zone = gamezone_api::fixture::zone("zone1")
        .servers(3)
        .game("ports", json!([{"name": "game", "containerPort": 7777, "protocol": "TCPUDP"}]))
        .spec(
            "services",
            json!([
                {"type": "game", "id": 1, "endId": 3,
                 "ports": [{"name": "game", "containerPort": 7777, "protocol": "TCPUDP"}]},
                {"type": "gate", "id": 1, "deletableGates": ["NoPlayers"], "ports": [{"name": "client", "containerPort": 8000}]}
            ]),
        )
        .build();
    zones.create(&PostParams::default(), &zone).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let pods_before = pod_uids(&pods, "zone1").await;
    let hashes_before = template_hashes(&servers).await;
    assert_eq!(pods_before.len(), 4, "{pods_before:?}");
    old.kill();

    // This build's CRDs and operator take over; it reconciles the zone and each server.
    install_crds(&ns.client).await;
    let metrics = free_port();
    let http = format!("127.0.0.1:{metrics}");
    let _new = Operator::start_with(kubeconfig, &ns.name, &["--http-addr", &http]);
    common::wait_for("the new operator's reconciles of the zone and its 4 servers", WAIT, || async {
        match (reconciles_done(metrics, "zone")?, reconciles_done(metrics, "server")?) {
            (z, s) if z >= 1 && s >= 4 => Ok(()),
            counts => Err(format!("(zone, server) {counts:?}")),
        }
    })
    .await;
    // Anything it would change, it has changed by now.
    tokio::time::sleep(Duration::from_secs(5)).await;
    wait_ready(&zones, "zone1").await;
    assert_eq!(template_hashes(&servers).await, hashes_before, "the upgrade changed servers' pod templates");
    assert_eq!(pod_uids(&pods, "zone1").await, pods_before, "the upgrade restarted pods");
    let going: Vec<String> = pods
        .list(&support::selector("zone1"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_some())
        .map(|p| p.name_any())
        .collect();
    assert!(going.is_empty(), "pods being deleted: {going:?}");
    ns.cleanup().await;
}
