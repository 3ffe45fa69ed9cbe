//! Live edits on the shared KWOK control plane: turning `spec.edits` on gives the zone its
//! edits claim, Samba Deployment and Services and every server pod the edits sidecar; turning
//! it off removes them all; a missing Secret key shows in a condition naming the field.

use std::time::Duration;

use gamezone::api::*;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{common, support};
use support::{Operator, WAIT, install_crds};

fn zone(name: &str, edits: serde_json::Value) -> GameZone {
    gamezone_api::fixture::zone(name)
        .spec("zoneId", json!(5))
        .servers(2)
        .spec("artifacts", json!([{"path": "/app/artifacts", "local": {"path": "/srv/config"}}]))
        .spec("edits", edits)
        .build()
}

fn sidecars(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"))
        .map(|c| c.name.clone())
        .collect()
}

async fn exists<K>(api: &Api<K>, name: &str) -> bool
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.unwrap().is_some()
}

#[tokio::test]
async fn edits_on_make_the_share_and_sidecars_and_edits_off_remove_them_all() {
    let ns = common::namespace("zone-edits").await;
    install_crds(&ns.client).await;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "share"},
        "stringData": {"username": "tester", "password": "pw"}
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let edits = json!({"secretRef": {"name": "share"}, "expose": {"type": "NodePort"}});
    zones.create(&PostParams::default(), &zone("ez", edits)).await.unwrap();

    let (deployments, services, claims, pods) =
        (ns.api::<Deployment>(), ns.api::<Service>(), ns.api::<PersistentVolumeClaim>(), ns.api::<Pod>());
    common::wait_for("the edits claim, Deployment and Services", WAIT, || async {
        let all = [
            exists(&deployments, "ez-edits").await,
            exists(&services, "ez-edits").await,
            exists(&services, "ez-edits-api").await,
            exists(&claims, "ez-edits").await,
        ];
        if all.iter().all(|e| *e) { Ok(()) } else { Err(format!("{all:?}")) }
    })
    .await;
    let smb = services.get("ez-edits").await.unwrap().spec.unwrap();
    assert_eq!(smb.type_.as_deref(), Some("NodePort"));
    assert_eq!(smb.ports.unwrap()[0].port, 445);
    for name in ["ez-game-1", "ez-game-2"] {
        let pod =
            common::wait_for(&format!("pod {name}"), WAIT, || async { pods.get_opt(name).await.ok().flatten() }).await;
        assert_eq!(sidecars(&pod), ["artifacts-edits"], "{name}");
    }
    let want = format!(r"\\ez-edits.{}.svc\edits", ns.name);
    let edits = common::wait_for("status.edits naming the share", WAIT, || async {
        let e = zones.get("ez").await.ok()?.status?.edits?;
        (e.share.as_deref() == Some(want.as_str())).then_some(e)
    })
    .await;
    // No pod runs here, so the share cannot be asked; status says so.
    assert!(edits.message.is_some_and(|m| m.contains("cannot read the edits share")), "status.edits tells why");

    // Off: the share, its claim and every sidecar go.
    zones.patch("ez", &PatchParams::default(), &Patch::Merge(json!({"spec": {"edits": null}}))).await.unwrap();
    common::wait_for("the edits objects removed", WAIT, || async {
        let left = [
            exists(&deployments, "ez-edits").await,
            exists(&services, "ez-edits").await,
            exists(&services, "ez-edits-api").await,
            claims.get_opt("ez-edits").await.unwrap().is_some_and(|c| c.metadata.deletion_timestamp.is_none()),
        ];
        if left.iter().all(|e| !*e) { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await;
    common::wait_for("pods without the edits sidecar", Duration::from_secs(90), || async {
        let mut out = Vec::new();
        for name in ["ez-game-1", "ez-game-2"] {
            let pod = pods.get_opt(name).await.map_err(|e| e.to_string())?.ok_or("no pod")?;
            out.push(sidecars(&pod));
        }
        if out.iter().all(|s| s.is_empty()) { Ok(()) } else { Err(format!("{out:?}")) }
    })
    .await;
    let z = zones.get("ez").await.unwrap();
    assert!(z.status.unwrap().edits.is_none(), "no edits status once off");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_missing_share_secret_key_names_the_field() {
    let ns = common::namespace("zone-edits-secret").await;
    install_crds(&ns.client).await;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "share"}, "stringData": {"username": "tester"}
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &zone("es", json!({"secretRef": {"name": "share"}}))).await.unwrap();
    let msg = common::wait_for("Ready=False naming spec.edits.secretRef", WAIT, || async {
        let z = zones.get("es").await.ok()?;
        let ready = z.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
        (ready.status == "False" && ready.message.contains("spec.edits.secretRef")).then_some(ready.message)
    })
    .await;
    assert!(msg.contains("password"), "{msg}");
    assert!(ns.api::<Deployment>().get_opt("es-edits").await.unwrap().is_none(), "no share without its login");
    ns.cleanup().await;
}
