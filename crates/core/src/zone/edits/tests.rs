use gamezone_api::fixture::zone as fixture;
use serde_json::json;

use super::*;
use crate::zone::{DEFAULT_SAMBA_IMAGE, INIT_CONTAINER, game_servers, validate as validate_zone};

fn zone(edits: Option<serde_json::Value>) -> GameZone {
    fixture("zone1")
        .namespace("team")
        .uid("u-1")
        .spec("zoneId", json!(7))
        .services(json!([{"type": "game", "id": 1, "endId": 2, "nodeSelector": {"pool": "test"}}, {"type": "db", "id": 1}]))
        .spec(
            "artifacts",
            json!([{"path": "/app/artifacts", "git": {"url": "https://g/x.git", "branch": "main", "secretRef": {"name": "gitcred"}}}]),
        )
        .spec("edits", edits.unwrap_or_default())
        .build()
}

fn with_edits() -> GameZone {
    zone(Some(serde_json::json!({
        "secretRef": {"name": "share"}, "storageClassName": "nfs", "size": "2Gi",
        "expose": {"type": "LoadBalancer", "annotations": {"metallb.universe.tf/address-pool": "test"},
                   "hostname": "{zone}-edits.example.com"},
        "onSwap": [{"type": "game", "signal": "HUP", "pidFile": "/run/gamezone/game.pid"}]
    })))
}

fn pods(z: &GameZone) -> Vec<PodSpec> {
    game_servers(z, &["c0ffee".into()], None, &BuildConfig::default())
        .unwrap()
        .into_iter()
        .map(|g| g.spec.template.spec.unwrap())
        .collect()
}

fn init<'a>(pod: &'a PodSpec, name: &str) -> Option<&'a Container> {
    pod.init_containers.iter().flatten().find(|c| c.name == name)
}

#[test]
fn a_zone_with_edits_gets_a_claim_a_samba_deployment_and_its_services() {
    let z = with_edits();
    let claim = edits_claim(&z).unwrap();
    let spec = claim.spec.as_ref().unwrap();
    assert_eq!(claim.metadata.name.as_deref(), Some("zone1-edits"));
    assert_eq!(spec.access_modes.as_deref(), Some(&["ReadWriteMany".to_string()][..]));
    assert_eq!(spec.storage_class_name.as_deref(), Some("nfs"));
    assert!(claim.metadata.owner_references.is_some(), "the claim goes with the zone");

    let d = edits_deployment(&z, &BuildConfig::default()).unwrap();
    assert_eq!(d.metadata.name.as_deref(), Some("zone1-edits"));
    let pod = d.spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(DEFAULT_SAMBA_IMAGE));
    assert_eq!(c.command.as_deref().unwrap(), ["gamezone", "edits", "serve"]);
    let secret = pod.volumes.iter().flatten().find_map(|v| v.secret.as_ref()).unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("share"));
    assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "test", "placed where the servers run");
    let labels = d.spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
    assert!(!labels.contains_key(ZONE_LABEL), "no zone Service selects the Samba pod: {labels:?}");

    let svcs = edits_services(&z);
    let names: Vec<_> = svcs.iter().map(|s| s.name_any()).collect();
    assert_eq!(names, ["zone1-edits", "zone1-edits-api"]);
    let smb = svcs[0].spec.as_ref().unwrap();
    assert_eq!(smb.type_.as_deref(), Some("LoadBalancer"));
    assert_eq!(smb.ports.as_ref().unwrap()[0].port, 445);
    let ann = svcs[0].metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["external-dns.alpha.kubernetes.io/hostname"], "zone1-edits.example.com");
    assert_eq!(ann["metallb.universe.tf/address-pool"], "test");
    assert_eq!(svcs[1].spec.as_ref().unwrap().type_.as_deref(), Some("ClusterIP"), "the API is never exposed");
    assert_eq!(share_path(&z).unwrap(), r"\\zone1-edits.example.com\edits");
}

#[test]
fn a_zone_without_edits_has_no_share_no_claim_and_no_sidecar() {
    let z = zone(None);
    assert!(edits_claim(&z).is_none());
    assert!(edits_deployment(&z, &BuildConfig::default()).is_none());
    assert!(edits_services(&z).is_empty());
    for pod in pods(&z) {
        assert!(init(&pod, EDITS_SIDECAR).is_none());
        assert!(pod.volumes.iter().flatten().all(|v| v.name != EDITS_VOLUME));
        let args = init(&pod, INIT_CONTAINER).unwrap().args.clone().unwrap();
        assert!(!args.contains(&"--edits".to_string()), "{args:?}");
        assert_eq!(pod.share_process_namespace, None);
    }
}

#[test]
fn every_server_pod_gets_the_edits_mount_apply_with_edits_and_the_watch_sidecar_on_the_same_pins() {
    let z = with_edits();
    let all = pods(&z);
    assert_eq!(all.len(), 3);
    for pod in &all {
        let names: Vec<_> = pod.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
        assert_eq!(names, [INIT_CONTAINER, EDITS_SIDECAR], "apply first, then the sidecar");
        let apply = init(pod, INIT_CONTAINER).unwrap();
        let args = apply.args.clone().unwrap();
        assert_eq!(args[0], "apply");
        assert!(args.windows(2).any(|w| w == ["--edits", EDITS_MOUNT]), "{args:?}");
        let side = init(pod, EDITS_SIDECAR).unwrap();
        assert_eq!(side.restart_policy.as_deref(), Some("Always"), "a native sidecar");
        let sargs = side.args.clone().unwrap();
        assert_eq!(sargs[0], "watch");
        assert!(sargs.windows(2).any(|w| w == ["--edits", EDITS_MOUNT]), "{sargs:?}");
        let env = |c: &Container, n: &str| c.env.iter().flatten().find(|e| e.name == n).and_then(|e| e.value.clone());
        assert_eq!(env(side, "GAMEZONE_REVISIONS"), Some(r#"["c0ffee"]"#.into()), "the sidecar keeps the pins");
        assert_eq!(env(side, "GAMEZONE_REVISIONS"), env(apply, "GAMEZONE_REVISIONS"));
        let share = side.volume_mounts.iter().flatten().find(|m| m.mount_path == EDITS_MOUNT).unwrap();
        assert_eq!((share.sub_path.as_deref(), share.read_only), (Some(SHARE_DIR), Some(true)), "edits read-only");
        assert!(side.volume_mounts.iter().flatten().any(|m| m.name.starts_with("artifacts-secret")), "layer Secrets");
        let claim = pod.volumes.iter().flatten().find(|v| v.name == EDITS_VOLUME).unwrap();
        assert_eq!(claim.persistent_volume_claim.as_ref().unwrap().claim_name, "zone1-edits");
    }
    // The game type asked for SIGHUP: a shared process namespace and the pid file's folder.
    let game = &all[0];
    assert_eq!(game.share_process_namespace, Some(true));
    let sargs = init(game, EDITS_SIDECAR).unwrap().args.clone().unwrap();
    assert!(sargs.windows(2).any(|w| w == ["--on-swap-signal", "HUP"]), "{sargs:?}");
    assert!(game.containers[0].volume_mounts.iter().flatten().any(|m| m.mount_path == "/run/gamezone"));
    let db = &all[2];
    assert_eq!(db.share_process_namespace, None, "db asked for nothing");
}

#[test]
fn under_a_security_context_the_edits_sidecar_runs_as_the_game_it_signals() {
    let mut z = with_edits();
    z.spec.services[0].security_context =
        serde_json::from_value(serde_json::json!({"runAsUser": 1000, "runAsGroup": 1000})).unwrap();
    let game = &pods(&z)[0];
    let sc = init(game, EDITS_SIDECAR).unwrap().security_context.clone().unwrap();
    // A signal needs the sender's uid to be the receiver's.
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1000), Some(1000)));
    assert_eq!((sc.run_as_non_root, sc.allow_privilege_escalation), (Some(true), Some(false)));
}

#[test]
fn a_kept_claim_is_not_owned_by_the_zone() {
    let mut z = with_edits();
    z.spec.edits.as_mut().unwrap().keep_claim = true;
    let claim = edits_claim(&z).unwrap();
    assert!(claim.metadata.owner_references.is_none());
    assert!(!claim.metadata.labels.unwrap().contains_key(MANAGED_BY_LABEL), "cleanup by label spares it");
}

#[test]
fn edits_without_artifacts_or_with_an_unknown_type_name_the_field() {
    let mut z = with_edits();
    z.spec.artifacts.clear();
    assert!(validate_zone(&z).unwrap_err().to_string().starts_with("spec.edits: "));
    let mut z = with_edits();
    z.spec.edits.as_mut().unwrap().on_swap[0].type_ = "gaem".into();
    assert!(validate_zone(&z).unwrap_err().to_string().starts_with("spec.edits.onSwap[0].type: "));
}
