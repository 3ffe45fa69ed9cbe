//! The SDK sidecar can write only its own GameServer, and only the SDK's fields: refused by the
//! API server itself (deploy/sdk-policy.yaml), for a token bound to the server's pod, as the
//! kubelet mounts it into the sidecar.

use std::path::Path;
use std::process::Command;

use gamezone::api::*;
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::{common, support};
use support::{Operator, install_crds, kubectl, wait_ready};

/// `kubectl` as the sidecar: Ok(stdout) or Err(stderr).
fn as_sidecar(admin: &Path, kubeconfig: &Path, args: &[&str]) -> Result<String, String> {
    let kubectl = admin.parent().unwrap();
    let out = Command::new(common::cp_script())
        .arg("kubectl")
        .arg(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[tokio::test]
async fn the_sidecar_writes_only_its_own_server_and_only_the_sdk_s_fields() {
    let ns = common::namespace("sdk-policy").await;
    install_crds(&ns.client).await;
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/sdk-policy.yaml");
    kubectl(ns.kubeconfig(), &["apply", "--server-side", "-f", policy]);
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let zone = gamezone_api::fixture::zone("zone1").servers(2).game("deletableGates", json!(["NoPlayers"])).build();
    zones.create(&PostParams::default(), &zone).await.unwrap();
    wait_ready(&zones, "zone1").await;

    // The token the kubelet would project into zone1-game-1's sidecar: bound to that pod.
    let n = &ns.name;
    let uid = kubectl(ns.kubeconfig(), &["get", "pod", "zone1-game-1", "-n", n, "-o", "jsonpath={.metadata.uid}"]);
    let token = kubectl(
        ns.kubeconfig(),
        &[
            "create",
            "token",
            "gamezone-sdk-zone1",
            "-n",
            n,
            "--bound-object-kind",
            "Pod",
            "--bound-object-name",
            "zone1-game-1",
            "--bound-object-uid",
            &uid,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let sidecar = common::token_kubeconfig(ns.kubeconfig(), token.trim(), dir.path());
    let admin = ns.kubeconfig();
    let gate = r#"[{"op":"add","path":"/status/conditions/-","value":{"type":"NoPlayers","status":"True","reason":"Game","message":"m","lastTransitionTime":"2026-01-01T00:00:00Z"}}]"#;

    // Its own server: a gate condition and an SDK label.
    let own = ["patch", "gs", "zone1-game-1", "-n", n];
    as_sidecar(admin, &sidecar, &[&own[..], &["--subresource=status", "--type=json", "-p", gate]].concat())
        .expect("its own gate");
    as_sidecar(
        admin,
        &sidecar,
        &[&own[..], &["--type=merge", "-p", r#"{"metadata":{"labels":{"gamezone.dev/sdk-mode":"ranked"}}}"#]].concat(),
    )
    .expect("its own SDK label");

    // Another server, the spec, another label, the operator's conditions: refused.
    let other = as_sidecar(
        admin,
        &sidecar,
        &["patch", "gs", "zone1-game-2", "-n", n, "--subresource=status", "--type=json", "-p", gate],
    )
    .unwrap_err();
    assert!(other.contains("may write only its own GameServer, not zone1-game-2"), "{other}");
    let spec =
        as_sidecar(admin, &sidecar, &[&own[..], &["--type=merge", "-p", r#"{"spec":{"id":9}}"#]].concat()).unwrap_err();
    assert!(spec.contains("may not change a GameServer's spec"), "{spec}");
    let label = as_sidecar(
        admin,
        &sidecar,
        &[&own[..], &["--type=merge", "-p", r#"{"metadata":{"labels":{"team":"x"}}}"#]].concat(),
    )
    .unwrap_err();
    assert!(label.contains("only labels under gamezone.dev/sdk-"), "{label}");
    let ready = r#"{"status":{"conditions":[{"type":"Ready","status":"True","reason":"Forged","message":"m","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    let forged =
        as_sidecar(admin, &sidecar, &[&own[..], &["--subresource=status", "--type=merge", "-p", ready]].concat())
            .unwrap_err();
    assert!(forged.contains("may not change the operator's conditions"), "{forged}");
    let other_gate = gate.replace("NoPlayers", "NotAGate");
    let not_a_gate =
        as_sidecar(admin, &sidecar, &[&own[..], &["--subresource=status", "--type=json", "-p", &other_gate]].concat())
            .unwrap_err();
    assert!(not_a_gate.contains("may set only its server's gate conditions"), "{not_a_gate}");
    // It speaks for its own pod only: status.sdk naming another pod is refused, its own admitted.
    let speak = |pod: &str| format!(r#"{{"status":{{"sdk":{{"podUid":"{pod}","state":"Allocated"}}}}}}"#);
    let impostor = as_sidecar(
        admin,
        &sidecar,
        &[&own[..], &["--subresource=status", "--type=merge", "-p", &speak("another-pod")]].concat(),
    )
    .unwrap_err();
    assert!(impostor.contains("may speak only for its own pod"), "{impostor}");
    // Without a pod's uid it speaks for no one: a server marked Allocated so blocked its zone's
    // deletion for ever.
    let nameless = r#"{"status":{"sdk":{"state":"Allocated"}}}"#;
    let nameless =
        as_sidecar(admin, &sidecar, &[&own[..], &["--subresource=status", "--type=merge", "-p", nameless]].concat())
            .unwrap_err();
    assert!(nameless.contains("status.sdk needs podUid"), "{nameless}");
    as_sidecar(
        admin,
        &sidecar,
        &[&own[..], &["--subresource=status", "--type=merge", "-p", &speak(uid.trim())]].concat(),
    )
    .expect("status.sdk for its own pod");
    // What the operator reports is the operator's: the state, the address, the ports.
    for (field, forged) in [
        ("state", r#"{"status":{"state":"Shutdown"}}"#),
        ("address", r#"{"status":{"address":"203.0.113.9"}}"#),
        (
            "ports",
            r#"{"status":{"ports":[{"name":"game","port":22,"containerPort":22,"protocol":"TCP","container":"server","policy":"Static"}]}}"#,
        ),
    ] {
        let refused =
            as_sidecar(admin, &sidecar, &[&own[..], &["--subresource=status", "--type=merge", "-p", forged]].concat())
                .unwrap_err();
        assert!(refused.contains("may not change what the operator reports"), "{field}: {refused}");
    }
    let delete = as_sidecar(admin, &sidecar, &["delete", "gs", "zone1-game-1", "-n", n]).unwrap_err();
    assert!(delete.contains("forbidden") || delete.contains("may not create or delete"), "{delete}");

    let servers: Api<GameServer> = ns.api();
    let gs = servers.get("zone1-game-1").await.unwrap();
    assert_eq!(gs.labels().get("gamezone.dev/sdk-mode").map(String::as_str), Some("ranked"));
    let conditions = gs.status.unwrap().conditions;
    assert!(conditions.iter().any(|c| c.type_ == "NoPlayers" && c.status == "True"));
    assert!(!conditions.iter().any(|c| c.type_ == "NotAGate"));
    let other = servers.get("zone1-game-2").await.unwrap();
    assert!(!other.status.unwrap().conditions.iter().any(|c| c.type_ == "NoPlayers"));
    ns.cleanup().await;
}
