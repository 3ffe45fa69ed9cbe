//! The passthrough webhook (`--feature-gates AutopilotPassthroughPort=true`) on a private control
//! plane: the real kube-apiserver calls a fixture webhook standing in for GKE Autopilot's host
//! port assignment (named to sort first) and then the operator's own. Webhook configurations are
//! cluster-wide, so these tests never run on the shared control plane.

mod common;
mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::Json;
use axum::routing::post;
use base64::Engine as _;
use gamezone::api::*;
use gamezone::ports::passthrough::{
    AUTOPILOT_PASSTHROUGH, HOST_PORT_ASSIGNMENT_ANNOTATION, PASSTHROUGH_PORTS_ANNOTATION, PORT_LABEL,
};
use gamezone::webhook::{CONFIG_NAME, PATH, server, tls};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use support::{Operator, WAIT, install_crds, wait_ready};

const FIXTURE_NAME: &str = "aaa-platform-ports.test";
const SECRET: &str = "gamezone-webhook-tls";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Stands in for GKE Autopilot: pods asking for a host port range get each hostPort replaced by
/// the next port of the range.
struct Platform {
    _server: tokio::task::JoinHandle<()>,
}

impl Platform {
    async fn start(client: &Client) -> Platform {
        let port = free_port();
        let bundle = tls::generate(&["127.0.0.1".to_string()], Duration::from_secs(3600), None).unwrap();
        let slot = Arc::new(tls::CertSlot::default());
        slot.load(&bundle).unwrap();
        let next = Arc::new(AtomicU16::new(0));
        let app = axum::Router::new()
            .route("/assign", post(move |Json(review): Json<Value>| async move { Json(assign(&review, &next)) }));
        let server = server::serve_router(([127, 0, 0, 1], port).into(), slot, app).await.unwrap();
        let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": FIXTURE_NAME},
            "webhooks": [{
                "name": "ports.platform.test",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/assign"),
                                 "caBundle": base64::engine::general_purpose::STANDARD.encode(&bundle.ca_pem)},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 5
            }]
        }))
        .unwrap();
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        api.patch(FIXTURE_NAME, &PatchParams::apply("platform-fixture").force(), &Patch::Apply(&config)).await.unwrap();
        Platform { _server: server }
    }
}

fn assign(review: &Value, next: &AtomicU16) -> Value {
    let request = &review["request"];
    let mut ops = Vec::new();
    let wanted = request["object"]["metadata"]["annotations"][HOST_PORT_ASSIGNMENT_ANNOTATION].as_str();
    if let Some(range) = wanted.and_then(|w| serde_json::from_str::<Value>(w).ok()) {
        let (min, max) = (range["min"].as_u64().unwrap() as u16, range["max"].as_u64().unwrap() as u16);
        for (ci, c) in request["object"]["spec"]["containers"].as_array().unwrap().iter().enumerate() {
            for (pi, p) in c["ports"].as_array().into_iter().flatten().enumerate() {
                if p.get("hostPort").is_some() {
                    let port = min + next.fetch_add(1, Ordering::SeqCst) % (max - min + 1);
                    ops.push(json!({"op": "replace", "path": format!("/spec/containers/{ci}/ports/{pi}/hostPort"), "value": port}));
                }
            }
        }
    }
    let mut response = json!({"uid": request["uid"], "allowed": true});
    if !ops.is_empty() {
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(Value::Array(ops).to_string()));
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

fn zone(name: &str, servers: i64) -> GameZone {
    let ports =
        json!([{"name": "game", "protocol": "UDP", "policy": "Passthrough"}, {"name": "admin", "containerPort": 8080}]);
    gamezone_api::fixture::zone(name).servers(servers).game("ports", ports).build()
}

/// A pod marked the way the server controller marks one, or a plain one.
fn pod(name: &str, labelled: bool) -> Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "server", "image": "svc:1",
                                 "ports": [{"containerPort": 1, "hostPort": 1, "protocol": "UDP"}],
                                 "env": [{"name": "GAMEZONE_PORT_GAME", "value": "1"}]}]}
    });
    if labelled {
        p["metadata"]["labels"] = json!({PORT_LABEL: AUTOPILOT_PASSTHROUGH});
        p["metadata"]["annotations"] = json!({
            PASSTHROUGH_PORTS_ANNOTATION: r#"[{"name":"game","container":"server","index":0}]"#,
            HOST_PORT_ASSIGNMENT_ANNOTATION: r#"{"min":7600,"max":7699}"#,
        });
    }
    serde_json::from_value(p).unwrap()
}

/// (containerPort, hostPort, GAMEZONE_PORT_GAME) of a pod's first container's first port.
fn pod_port(p: &Pod) -> (i32, Option<i32>, Option<String>) {
    let c = &p.spec.as_ref().unwrap().containers[0];
    let port = &c.ports.as_ref().unwrap()[0];
    let env = c.env.iter().flatten().find(|e| e.name == "GAMEZONE_PORT_GAME").and_then(|e| e.value.clone());
    (port.container_port, port.host_port, env)
}

fn operator(cluster: &common::PrivateCluster, port: u16, extra: &[&str]) -> Operator {
    let addr = format!("127.0.0.1:{port}");
    let url = format!("https://127.0.0.1:{port}{PATH}");
    let mut args = vec![
        "--feature-gates",
        "AutopilotPassthroughPort=true",
        "--port-range",
        "7500-7599",
        "--webhook-addr",
        &addr,
        "--webhook-url",
        &url,
        "--webhook-secret-namespace",
        "default",
        "--webhook-check-interval",
        "1",
    ];
    args.extend_from_slice(extra);
    Operator::start_with(cluster.kubeconfig(), "default", &args)
}

async fn ca_bundle(client: &Client) -> Option<String> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let c = api.get_opt(CONFIG_NAME).await.ok()??;
    let ca = c.webhooks?.first()?.client_config.ca_bundle.clone()?;
    Some(String::from_utf8(ca.0).unwrap())
}

async fn secret_ca(client: &Client) -> Option<String> {
    let s = Api::<Secret>::namespaced(client.clone(), "default").get_opt(SECRET).await.ok()??;
    Some(String::from_utf8(s.data?.get("ca.crt")?.0.clone()).unwrap())
}

/// Waits until the configuration's caBundle is the Secret's CA bundle and differs from `old`.
async fn wait_ca_in_sync(client: &Client, old: Option<&str>) -> String {
    common::wait_for("the webhook caBundle to equal the Secret's ca.crt", WAIT, || async {
        match (ca_bundle(client).await, secret_ca(client).await) {
            (Some(a), Some(b)) if a == b && Some(a.as_str()) != old => Ok(a),
            other => Err(format!("{:?}", (other.0.map(|s| s.len()), other.1.map(|s| s.len())))),
        }
    })
    .await
}

/// Creates a pod, retrying while the operator's server is still starting (a refused call).
async fn create_admitted(pods: &Api<Pod>, p: &Pod) -> Pod {
    common::wait_for(&format!("pod {} admitted", p.name_any()), WAIT, || async {
        pods.create(&PostParams::default(), p).await.map_err(|e| e.to_string())
    })
    .await
}

#[tokio::test]
async fn platform_assigned_ports_reach_pods_and_status_and_outages_fail_closed() {
    let cluster = common::start_private(2);
    let client = cluster.client().await;
    install_crds(&client).await;
    let port = free_port();
    let mut op = operator(&cluster, port, &[]);
    let first_ca = wait_ca_in_sync(&client, None).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Without the platform: our webhook has nothing to copy, so the pod is admitted unchanged.
    let plain = create_admitted(&pods, &pod("no-platform", true)).await;
    assert_eq!(pod_port(&plain), (1, Some(1), Some("1".into())), "placeholders stay");
    pods.delete("no-platform", &DeleteParams::default()).await.unwrap();

    // With the platform's webhook before ours: container port = host port = the assigned one.
    let _platform = Platform::start(&client).await;
    let zones: Api<GameZone> = Api::namespaced(client.clone(), "default");
    zones.create(&PostParams::default(), &zone("zone1", 2)).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let servers: Api<GameServer> = Api::namespaced(client.clone(), "default");
    let mut seen = BTreeSet::new();
    for g in servers.list(&ListParams::default()).await.unwrap() {
        let p = pods.get(&g.name_any()).await.unwrap();
        let labels = p.labels();
        assert_eq!(labels.get(PORT_LABEL).map(String::as_str), Some(AUTOPILOT_PASSTHROUGH));
        assert_eq!(p.annotations()[HOST_PORT_ASSIGNMENT_ANNOTATION], r#"{"max":7599,"min":7500}"#);
        let cports = p.spec.as_ref().unwrap().containers[0].ports.clone().unwrap();
        let pass = cports.iter().find(|c| c.protocol.as_deref() == Some("UDP")).unwrap();
        let assigned = pass.host_port.unwrap();
        assert!((7500..=7599).contains(&assigned), "{cports:?}");
        assert_eq!(pass.container_port, assigned, "the container listens on the platform's port");
        let env = p.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        let told = env.iter().find(|e| e.name == "GAMEZONE_PORT_GAME").and_then(|e| e.value.clone());
        assert_eq!(told, Some(assigned.to_string()));
        let st = g.status.unwrap();
        let game = st.ports.iter().find(|p| p.name == "game").unwrap();
        assert_eq!((game.port, game.container_port, game.host_port), (assigned, assigned, Some(assigned)));
        assert!(cports.iter().any(|c| c.container_port == 8080 && c.host_port.is_none()), "other ports unchanged");
        seen.insert(assigned);
    }
    assert_eq!(seen.len(), 2, "distinct platform ports: {seen:?}");

    // An outage fails closed for labelled pods only.
    op.kill();
    let err = pods.create(&PostParams::default(), &pod("labelled", true)).await.unwrap_err().to_string();
    assert!(err.contains(CONFIG_NAME), "{err}");
    pods.create(&PostParams::default(), &pod("unlabelled", false)).await.expect("an unlabelled pod is not sent to us");

    // Rotation: a new operator with short-lived certificates; deleting the Secret forces a new
    // one at once, and expiry makes the next. Admission works throughout.
    let _op = operator(&cluster, port, &["--webhook-cert-validity", "12", "--webhook-cert-renew-before", "8"]);
    Api::<Secret>::namespaced(client.clone(), "default").delete(SECRET, &DeleteParams::default()).await.unwrap();
    let second_ca = wait_ca_in_sync(&client, Some(&first_ca)).await;
    let third_ca = wait_ca_in_sync(&client, Some(&second_ca)).await;
    assert_eq!(third_ca.matches("BEGIN CERTIFICATE").count(), 2, "the previous CA stays trusted during a switch");
    let rotated = create_admitted(&pods, &pod("after-rotation", true)).await;
    let (container_port, host_port, env) = pod_port(&rotated);
    assert!((7600..=7699).contains(&container_port), "{container_port}");
    assert_eq!((Some(container_port), env), (host_port, Some(container_port.to_string())));
}

#[tokio::test]
async fn with_the_gate_off_nothing_is_registered_or_marked() {
    // An unknown gate stops the operator with a message naming the known ones.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gamezone"))
        .args(["run", "--feature-gates", "PortMagic=true", "--kubeconfig", "/nonexistent"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("known gates: AutopilotPassthroughPort"), "{err}");

    let cluster = common::start_private(1);
    let client = cluster.client().await;
    install_crds(&client).await;
    let _op = Operator::start_with(cluster.kubeconfig(), "default", &["--port-range", "7700-7709"]);
    let zones: Api<GameZone> = Api::namespaced(client.clone(), "default");
    zones.create(&PostParams::default(), &zone("zone1", 1)).await.unwrap();
    wait_ready(&zones, "zone1").await;
    let pods = Api::<Pod>::namespaced(client.clone(), "default").list(&support::selector("zone1")).await.unwrap();
    let p = pods.items.iter().find(|p| p.labels().contains_key(SERVER_LABEL)).expect("a server pod");
    assert!(!p.labels().contains_key(PORT_LABEL));
    let cports = p.spec.as_ref().unwrap().containers[0].ports.clone().unwrap();
    let pass = cports.iter().find(|c| c.protocol.as_deref() == Some("UDP")).unwrap();
    assert!((7700..=7709).contains(&pass.container_port), "{cports:?}");
    assert_eq!(pass.host_port, Some(pass.container_port), "the operator's own Passthrough");
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    assert!(configs.get_opt(CONFIG_NAME).await.unwrap().is_none());
}
