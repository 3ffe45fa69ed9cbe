//! `gamezone sdk` against the local control plane, run on the host with a kubeconfig and
//! driven by Agones' Rust client: what it writes lands on its GameServer with the prefix and
//! its own field manager, and the API server's audit log shows how few writes it makes; its
//! gate webhooks, served by the test on loopback, set the gates through the admission policy.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use gamezone::api::*;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::webhook_server::webhook_server;
use crate::{common, support};
use support::{WAIT, install_crds};

struct Sidecar(Child);

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The SDK's writes to `ns` since `since`, from the audit log.
fn sdk_writes(ns: &common::TestNs, since: SystemTime) -> Vec<common::audit::Write> {
    common::audit::writes_by(ns.kubeconfig(), &ns.name, "gamezone-sdk/")
        .into_iter()
        .filter(|w| w.received_since(since))
        .collect()
}

#[tokio::test]
async fn sdk_writes_land_prefixed_under_its_field_manager_and_are_spared() {
    let ns = common::namespace("sdk").await;
    install_crds(&ns.client).await;
    let api = ns.api::<GameServer>();
    let name = "z1-game-1";
    let mut gs =
        GameServer::new(name, GameServerSpec { zone: "z1".into(), type_: "game".into(), id: 1, ..Default::default() });
    gs.metadata.labels = Some([(ZONE_LABEL.to_string(), "z1".to_string())].into());
    // Quick health timing so the test sees a miss within seconds, with room for a loaded machine
    // to connect the client and send its first ping.
    gs.spec.lifecycle.health =
        Some(Health { disabled: false, period_seconds: 1, failure_threshold: 5, initial_delay_seconds: 0 });
    api.create(&PostParams::default(), &gs).await.unwrap();
    // What the server controller would have written.
    // ... and what the previous pod's process said before it went.
    let status = json!({"status": {"state": "Ready", "address": "10.244.0.9", "nodeAddress": "10.0.0.3",
                                    "ports": [{"name": "game", "port": 7100, "containerPort": 7777, "protocol": "UDP"}],
                                    "sdk": {"podUid": "previous-pod", "state": "Shutdown"}}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await.unwrap();

    let grpc = free_port();
    let _sidecar = Sidecar(
        Command::new(env!("CARGO_BIN_EXE_gamezone"))
            .arg("sdk")
            .arg("--kubeconfig")
            .arg(ns.kubeconfig())
            .args(["--server", name, "--namespace", &ns.name])
            .args(["--grpc-port", &grpc.to_string(), "--http-port", &free_port().to_string()])
            .env("GAMEZONE_LOG_FORMAT", "text")
            .env("GAMEZONE_POD_UID", "this-pod")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // The sidecar speaks for its pod at once, clearing the previous pod's words.
    common::wait_for("status.sdk of this pod", WAIT, || async {
        let gs = api.get(name).await.map_err(|e| e.to_string())?;
        let sdk = gs.status.and_then(|s| s.sdk).unwrap_or_default();
        if sdk == (SdkStatus { pod_uid: Some("this-pod".into()), ..Default::default() }) {
            Ok(())
        } else {
            Err(format!("{sdk:?}"))
        }
    })
    .await;
    let mut sdk = agones::Sdk::new(Some(grpc), None).await.expect("the client connects");
    let pinging = Arc::new(AtomicBool::new(true));
    let health = sdk.health_check();
    let pings = pinging.clone();
    tokio::spawn(async move {
        while pings.load(Ordering::SeqCst) {
            let _ = health.send(()).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let seen = sdk.get_gameserver().await.unwrap();
    let status = seen.status.unwrap();
    assert_eq!((status.state.as_str(), status.address.as_str(), status.ports[0].port), ("Scheduled", "10.0.0.3", 7100));

    // SetLabel and Ready land on the object, prefixed, under the sidecar's field manager.
    sdk.set_label("mode", "ctf").await.unwrap();
    sdk.ready().await.unwrap();
    let live = common::wait_for("the label and status.sdk", WAIT, || async {
        let gs = api.get(name).await.map_err(|e| e.to_string())?;
        let labelled = gs.metadata.labels.as_ref().and_then(|l| l.get("gamezone.dev/sdk-mode")).map(String::as_str);
        let state = gs.status.as_ref().and_then(|s| s.sdk.as_ref()).and_then(|s| s.state);
        if labelled == Some("ctf") && state == Some(SdkState::RequestReady) {
            Ok(gs)
        } else {
            Err(format!("{labelled:?} {state:?}"))
        }
    })
    .await;
    assert_eq!(live.metadata.labels.as_ref().unwrap()[ZONE_LABEL], "z1", "other labels stay");
    assert_eq!(live.status.as_ref().unwrap().state, Some(ServerState::Ready), "the controller's status stays");
    let managers: Vec<_> = live
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some("gamezone-sdk"))
        .map(|m| {
            (
                m.subresource.clone().unwrap_or_default(),
                m.fields_v1.as_ref().map(|f| f.0.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.iter().any(|(sub, f)| sub.is_empty() && f.contains("gamezone.dev/sdk-mode") && !f.contains("zone\"")),
        "{managers:?}"
    );
    assert!(
        managers.iter().any(|(sub, f)| sub == "status" && f.contains("f:sdk") && !f.contains("f:ports")),
        "{managers:?}"
    );
    assert_eq!(sdk.get_gameserver().await.unwrap().status.unwrap().state, "Ready");

    // 100 rapid SetLabel calls: a few writes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burst = SystemTime::now();
    for i in 0..100 {
        sdk.set_label("round", i.to_string()).await.unwrap();
    }
    common::wait_for("the last round's label", WAIT, || async {
        let gs = api.get(name).await.map_err(|e| e.to_string())?;
        let round = gs.metadata.labels.unwrap_or_default().get("gamezone.dev/sdk-round").cloned();
        if round.as_deref() == Some("99") { Ok(()) } else { Err(format!("{round:?}")) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = sdk_writes(&ns, burst);
    let described: Vec<_> = writes.iter().map(|w| w.describe()).collect();
    assert!((1..=4).contains(&writes.len()), "100 SetLabel calls made {} writes: {described:#?}", writes.len());
    assert!(writes.iter().all(|w| w.verb == "patch" && w.object_ref.name == name), "{described:#?}");

    // Health pings while healthy: no writes.
    let healthy = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes = sdk_writes(&ns, healthy);
    assert!(
        writes.is_empty(),
        "pings while healthy wrote: {:#?}",
        writes.iter().map(|w| w.describe()).collect::<Vec<_>>()
    );

    // Pings stop: Unhealthy is written once.
    let missed = SystemTime::now();
    pinging.store(false, Ordering::SeqCst);
    common::wait_for("status.sdk.health Unhealthy", WAIT, || async {
        let gs = api.get(name).await.map_err(|e| e.to_string())?;
        let health = gs.status.and_then(|s| s.sdk).and_then(|s| s.health);
        if health == Some(SdkHealth::Unhealthy) { Ok(()) } else { Err(format!("{health:?}")) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes = sdk_writes(&ns, missed);
    assert_eq!(writes.len(), 1, "{:#?}", writes.iter().map(|w| w.describe()).collect::<Vec<_>>());
    assert_eq!(writes[0].object_ref.subresource, "status");
    assert_eq!(sdk.get_gameserver().await.unwrap().status.unwrap().state, "Unhealthy");

    sdk.shutdown().await.unwrap();
    common::wait_for("status.sdk.state Shutdown", WAIT, || async {
        let gs = api.get(name).await.map_err(|e| e.to_string())?;
        let state = gs.status.and_then(|s| s.sdk).and_then(|s| s.state);
        if state == Some(SdkState::Shutdown) { Ok(()) } else { Err(format!("{state:?}")) }
    })
    .await;
    ns.cleanup().await;
}

/// One request a test webhook received: when, on which path, with which review.
fn condition(gs: &GameServer, type_: &str) -> Option<String> {
    gs.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_).map(|c| c.status.clone())
}

#[tokio::test]
async fn gate_webhooks_set_their_gates_and_deletable_polls_only_once_drained_and_told() {
    let ns = common::namespace("sdk-webhooks").await;
    install_crds(&ns.client).await;
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sdk-policy.yaml");
    support::kubectl(ns.kubeconfig(), &["apply", "--server-side", "-f", policy]);
    let n = ns.name.clone();

    // The zone's sidecar identity as the operator makes it, and the pod its token is bound to.
    let zone = gamezone_api::fixture::zone("zone1").namespace(&n).build();
    let (sa, role, binding) = gamezone::zone::sidecar_identity(&zone);
    let pp = PostParams::default();
    ns.api::<k8s_openapi::api::core::v1::ServiceAccount>().create(&pp, &sa).await.unwrap();
    ns.api::<k8s_openapi::api::rbac::v1::Role>().create(&pp, &role).await.unwrap();
    ns.api::<k8s_openapi::api::rbac::v1::RoleBinding>().create(&pp, &binding).await.unwrap();
    let name = "zone1-game-1";
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"serviceAccountName": "gamezone-sdk-zone1", "automountServiceAccountToken": false,
                 "containers": [{"name": "server", "image": "game:1"}]}
    }))
    .unwrap();
    let pod = ns.api::<k8s_openapi::api::core::v1::Pod>().create(&pp, &pod).await.unwrap();
    let uid = pod.metadata.uid.unwrap();
    let token = support::kubectl(
        ns.kubeconfig(),
        &[
            "create",
            "token",
            "gamezone-sdk-zone1",
            "-n",
            &n,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            name,
            "--bound-object-uid",
            &uid,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = common::token_kubeconfig(ns.kubeconfig(), token.trim(), dir.path());

    let (port, heard) = webhook_server(3).await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let config: WebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "gamezone.dev/v1alpha1", "kind": "WebhookConfiguration", "metadata": {"name": "hooks"},
        "spec": {"webhooks": [
            {"name": "server-ready", "type": "ReadinessWebhook", "clientConfig": {"url": url("/ready")},
             "periodSeconds": 1, "requestPolicy": "Once"},
            {"name": "told", "type": "ConstraintWebhook", "clientConfig": {"url": url("/constraint")}},
            {"name": "has-no-player", "type": "DeletableWebhook", "clientConfig": {"url": url("/deletable")},
             "periodSeconds": 1}
        ]}
    }))
    .unwrap();
    ns.api::<WebhookConfiguration>().create(&pp, &config).await.unwrap();
    let api = ns.api::<GameServer>();
    let mut gs = GameServer::new(
        name,
        GameServerSpec { zone: "zone1".into(), type_: "game".into(), id: 1, ..Default::default() },
    );
    gs.spec.lifecycle.readiness_gates = vec!["server-ready".into()];
    gs.spec.lifecycle.deletable_gates = vec!["has-no-player".into()];
    gs.spec.lifecycle.webhook_config = Some("hooks".into());
    gs.spec.lifecycle.health = Some(Health { disabled: true, ..Default::default() });
    api.create(&pp, &gs).await.unwrap();

    let started = std::time::Instant::now();
    let _sidecar = Sidecar(
        Command::new(env!("CARGO_BIN_EXE_gamezone"))
            .arg("sdk")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--server", name, "--namespace", &n])
            .args(["--grpc-port", &free_port().to_string(), "--http-port", &free_port().to_string()])
            .env("GAMEZONE_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    // The readiness gate: False while the webhook says no, True once it says yes.
    let seen = std::sync::Mutex::new(Vec::new());
    common::wait_for("the readiness gate True", WAIT, || async {
        let gs = api.get(name).await.map_err(|e| e.to_string())?;
        let status = condition(&gs, "server-ready");
        let mut seen = seen.lock().unwrap();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status.as_deref() == Some("True") { Ok(()) } else { Err(format!("{seen:?}")) }
    })
    .await;
    let seen = seen.into_inner().unwrap();
    let ready_after = started.elapsed();
    assert_eq!(
        seen.iter().flatten().map(String::as_str).collect::<Vec<_>>(),
        ["False", "True"],
        "the gate goes False then True: {seen:?}"
    );
    let live = api.get(name).await.unwrap();
    let c = live.status.unwrap().conditions.into_iter().find(|c| c.type_ == "server-ready").unwrap();
    assert_eq!((c.reason.as_str(), c.message.as_str()), ("Webhook", "webhook server-ready: allowed: call 4"));
    // Once: no more calls after the first yes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = |path: &str| heard.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect::<Vec<_>>();
    assert_eq!(calls("/ready").len(), 4, "Once stops after the first yes");
    assert!(calls("/constraint").is_empty() && calls("/deletable").is_empty(), "nothing drained yet, nothing told");
    assert_eq!(calls("/ready")[0].review.request.as_ref().unwrap().name, name);

    // Drained: the constraint webhook hears the NotInService constraint, then deletable polls.
    let drained = std::time::Instant::now();
    let patch =
        json!({"spec": {"constraints": [{"type": "NotInService", "effective": true, "message": "scale down"}]}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    common::wait_for("the deletable gate True", WAIT, || async {
        let gs = api.get(name).await.map_err(|e| e.to_string())?;
        let status = condition(&gs, "has-no-player");
        if status.as_deref() == Some("True") { Ok(()) } else { Err(format!("{status:?}")) }
    })
    .await;
    let deletable_after = drained.elapsed();
    let told = calls("/constraint");
    assert_eq!(told.len(), 1, "told once per change: {told:?}");
    let constraints = &told[0].review.request.as_ref().unwrap().constraints;
    assert_eq!((constraints.len(), constraints[0].type_.as_str()), (1, "NotInService"));
    let asked = calls("/deletable");
    assert!(!asked.is_empty() && asked[0].at >= told[0].at, "deletable polls only after the telling: {asked:?}");
    eprintln!(
        "gate webhooks: readiness True {:.1} s after the sidecar started (4 polls, 1 s apart); deletable True {:.1} s after NotInService",
        ready_after.as_secs_f64(),
        deletable_after.as_secs_f64()
    );
    ns.cleanup().await;
}
