use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use super::*;
use crate::api::*;

use gamezone_api::fixture::{ZoneFixture, zone as fixture};
use serde_json::json;

/// `zone1` in namespace `team`: what the zone's children name as their owner.
fn zone() -> ZoneFixture {
    fixture("zone1").namespace("team").uid("u-1")
}

fn basic() -> GameZone {
    zone()
        .spec("zoneId", json!(7))
        .services(json!([
            {"type": "game", "id": 1, "endId": 3, "ports": [{"name": "client", "containerPort": 7777, "protocol": "TCPUDP"}],
             "expose": {"perInstance": {"type": "LoadBalancer", "hostname": "{instance}.z{zoneId}.example.com"}}},
            {"type": "db", "id": 1, "image": "svc:2"}
        ]))
        .spec("mysql", json!({"host": "m", "user": "u", "database": "d", "passwordSecretRef": {"name": "s", "key": "k"}}))
        .spec("migration", json!({"image": "mig:1"}))
        .spec("artifacts", json!([
            {"path": "/app/artifacts", "s3": {"endpoint": "http://s3", "bucket": "b", "secretRef": {"name": "s3cred"}}},
            {"path": "/app/artifacts/config/", "subPath": "config", "git": {"url": "https://g/x.git", "branch": "main"}}
        ]))
        .build()
}

#[test]
fn one_server_per_instance_with_type_and_id_arguments() {
    let servers = game_servers(&basic(), &["a".into(), "b".into()], None, &BuildConfig::default()).unwrap();
    let names: Vec<_> = servers.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["zone1-game-1", "zone1-game-2", "zone1-game-3", "zone1-db-1"]);
    let pod = servers[1].spec.template.spec.as_ref().unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.args.as_ref().unwrap(), &["game", "2"]);
    assert_eq!(c.image.as_deref(), Some("svc:1"));
    assert_eq!(servers[3].spec.template.spec.as_ref().unwrap().containers[0].image.as_deref(), Some("svc:2"));
    let env: BTreeMap<_, _> = c.env.as_ref().unwrap().iter().map(|e| (e.name.clone(), e.clone())).collect();
    assert_eq!(env["GAMEZONE_ZONE_ID"].value.as_deref(), Some("7"));
    assert_eq!(env["GAMEZONE_INSTANCE"].value.as_deref(), Some("zone1-game-2"));
    let pw = env["MYSQL_PASSWORD"].value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
    assert_eq!((pw.name.as_str(), pw.key.as_str()), ("s", "k"));
    assert!(env["MYSQL_PASSWORD"].value.is_none(), "passwords never inline");
    assert_eq!(pod.hostname.as_deref(), Some("zone1-game-2"));
    assert_eq!(pod.subdomain.as_deref(), Some("zone1"));
    let owner = &servers[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.controller), ("GameZone", Some(true)));
    // Each server says which version it runs: its image's and its artifacts'.
    let version = |i: usize, key: &str| servers[i].labels().get(key).cloned();
    assert_eq!((version(1, VERSION_LABEL), version(3, VERSION_LABEL)), (Some("1".into()), Some("2".into())));
    assert_eq!(version(0, ARTIFACTS_LABEL), Some(decide::artifact_revision(&["a".into(), "b".into()])));
    let bare = game_servers(&basic(), &[], None, &BuildConfig::default()).unwrap();
    assert_eq!(bare[0].labels().get(ARTIFACTS_LABEL), None, "no pins, no artifacts version");
}

#[test]
fn a_game_s_metrics_port_is_published_and_marked_for_scraping() {
    let metrics = |m: serde_json::Value| {
        zone()
            .services(json!([{"type": "game", "id": 1, "image": "g:1", "metrics": m,
                "ports": [{"name": "client", "containerPort": 7777}]}]))
            .build()
    };
    let z = metrics(json!({"port": 9100}));
    validate(&z).unwrap();
    let servers = game_servers(&z, &[], None, &BuildConfig::default()).unwrap();
    let template = &servers[0].spec.template;
    let annotations = template.metadata.as_ref().unwrap().annotations.clone().unwrap();
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        (annotations["prometheus.io/port"].as_str(), annotations["prometheus.io/path"].as_str()),
        ("9100", "/metrics")
    );
    let ports = template.spec.as_ref().unwrap().containers[0].ports.clone().unwrap();
    assert_eq!((ports[0].name.as_deref(), ports[0].container_port, ports[0].host_port), (Some("metrics"), 9100, None));
    let env = template.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
    assert!(env.iter().any(|e| e.name == METRICS_PORT_ENV && e.value.as_deref() == Some("9100")), "{env:?}");
    let clash = validate(&metrics(json!({"port": 7777}))).unwrap_err().to_string();
    assert!(clash.contains("spec.services[0].metrics") && clash.contains("\"client\""), "{clash}");
    let relative = validate(&metrics(json!({"port": 9100, "path": "metrics"}))).unwrap_err().to_string();
    assert!(relative.contains("must start with /"), "{relative}");
}

#[test]
fn an_image_s_version_is_its_tag_or_its_digest_as_a_label_value() {
    assert_eq!(image_version("registry.local:5000/game/server:1.4.2"), "1.4.2");
    assert_eq!(image_version("registry.local:5000/game/server"), "latest", "the port is no tag");
    assert_eq!(image_version("server@sha256:0123456789abcdef0123"), "0123456789ab");
    assert_eq!(image_version("server:v2@sha256:0123456789abcdef"), "v2", "the tag when both are given");
    assert_eq!(image_version("server:_build-7_"), "build-7", "a label value ends alphanumeric");
    assert_eq!(image_version(&format!("server:{}", "a".repeat(100))).len(), 63);
    assert_eq!(image_version("server:..."), "unknown");
}

#[test]
fn artifacts_mount_at_the_common_folder_with_relative_layers() {
    let m = artifacts_mount(&basic()).unwrap().unwrap();
    assert_eq!(m.root, "/app/artifacts");
    assert_eq!(m.layers[0].path, "");
    assert_eq!(m.layers[1].path, "config");
    let single = zone().spec("artifacts", json!([{"path": "/srv/res", "local": {"path": "/data"}}])).build();
    assert_eq!(artifacts_mount(&single).unwrap().unwrap().root, "/srv/res");
}

#[test]
fn bad_artifact_paths_name_the_field() {
    for (path, needle) in [("relative/x", "absolute"), ("/app/../etc", ".."), ("/", "cannot be mounted at /")] {
        let z = zone().spec("artifacts", json!([{"path": path, "local": {"path": "/data"}}])).build();
        let e = validate(&z).unwrap_err().to_string();
        assert!(e.starts_with("spec.artifacts[0].path") && e.contains(needle), "{e}");
    }
    let disjoint = zone()
        .spec("artifacts", json!([{"path": "/a", "local": {"path": "/d"}}, {"path": "/b", "local": {"path": "/d"}}]))
        .build();
    assert!(validate(&disjoint).unwrap_err().to_string().contains("share no folder"));
}

#[test]
fn too_long_instance_names_are_refused_with_the_service() {
    let z = fixture("a-zone-name-that-is-rather-long-too")
        .services(
            json!([{"type": "a", "id": 1}, {"type": "averyveryveryveryverylongtypename", "id": 1, "endId": 99999}]),
        )
        .build();
    let e = validate(&z).unwrap_err().to_string();
    assert!(e.starts_with("spec.services[1]") && e.contains("63"), "{e}");
}

#[test]
fn init_container_gets_the_plan_pins_and_secrets() {
    let servers =
        game_servers(&basic(), &["sha256:aa".into(), "c0ffee".into()], None, &BuildConfig::default()).unwrap();
    let pod = servers[0].spec.template.spec.as_ref().unwrap();
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let env: BTreeMap<_, _> =
        init.env.as_ref().unwrap().iter().map(|e| (e.name.clone(), e.value.clone().unwrap())).collect();
    let layers: Vec<crate::api::layer::Layer> = serde_json::from_str(&env["GAMEZONE_LAYERS"]).unwrap();
    assert_eq!(layers[1].path, "config");
    assert_eq!(env["GAMEZONE_REVISIONS"], r#"["sha256:aa","c0ffee"]"#);
    let mounts = init.volume_mounts.as_ref().unwrap();
    assert!(mounts.iter().any(|m| m.mount_path == "/var/run/secrets/gamezone/s3cred"));
    let server_mount =
        pod.containers[0].volume_mounts.as_ref().unwrap().iter().find(|m| m.name == ARTIFACTS_VOLUME).unwrap();
    assert_eq!(
        (server_mount.mount_path.as_str(), server_mount.sub_path.as_deref()),
        ("/app/artifacts", Some("current"))
    );
}

#[test]
fn template_hash_changes_only_for_the_changed_service() {
    let z = basic();
    let pins = ["a".to_string(), "b".to_string()];
    let before = game_servers(&z, &pins, None, &BuildConfig::default()).unwrap();
    let mut bumped = z.clone();
    bumped.spec.services[1].image = Some("svc:3".into());
    let after = game_servers(&bumped, &pins, None, &BuildConfig::default()).unwrap();
    for (b, a) in before.iter().zip(&after) {
        let changed = server_template_hash(&b.spec) != server_template_hash(&a.spec);
        assert_eq!(changed, a.spec.type_ == "db", "{}", a.metadata.name.clone().unwrap());
        assert_eq!(same_template(&b.spec, &a.spec), !changed, "the comparison tells apart what the hash does");
    }
    let repinned = game_servers(&z, &["a".into(), "c".into()], None, &BuildConfig::default()).unwrap();
    assert!(before.iter().zip(&repinned).all(|(b, a)| server_template_hash(&b.spec) != server_template_hash(&a.spec)));
    assert!(before.iter().zip(&repinned).all(|(b, a)| !same_template(&b.spec, &a.spec)));
    let mut ports = before[0].spec.clone();
    ports.ports[0].container_port = Some(ports.ports[0].container_port.unwrap_or_default() + 1);
    assert!(
        !same_template(&before[0].spec, &ports)
            && server_template_hash(&before[0].spec) != server_template_hash(&ports)
    );
}

#[test]
fn migration_reruns_when_its_inputs_change() {
    let z = basic();
    let pins = ["a".to_string(), "b".to_string()];
    let h = migration_inputs_hash(&z, &pins).unwrap();
    let mut other_db = z.clone();
    other_db.spec.mysql.as_mut().unwrap().host = "m2".into();
    assert_ne!(migration_inputs_hash(&other_db, &pins).unwrap(), h);
    assert_ne!(migration_inputs_hash(&z, &["a".into(), "x".into()]).unwrap(), h);
    let mut image_only = z.clone();
    image_only.spec.default_image = Some("svc:9".into());
    assert_eq!(migration_inputs_hash(&image_only, &pins).unwrap(), h, "a server image bump needs no migration");
    let job = migration_job(&z, &pins, None, &BuildConfig::default()).unwrap().unwrap();
    assert_eq!(job.metadata.name.unwrap(), migration_job_name("zone1", &h));
    let spec = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert!(spec.init_containers.is_some(), "migration scripts in artifacts are layered first");
}

#[test]
fn services_expose_instances_with_external_dns_names() {
    let svcs = services(&basic());
    let names: Vec<_> = svcs.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
    assert_eq!(names, ["zone1", "zone1-game-1", "zone1-game-2", "zone1-game-3"]);
    assert_eq!(svcs[0].spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"));
    let lb = &svcs[2];
    assert_eq!(
        lb.metadata.annotations.as_ref().unwrap()["external-dns.alpha.kubernetes.io/hostname"],
        "zone1-game-2.z7.example.com"
    );
    let ports = lb.spec.as_ref().unwrap().ports.as_ref().unwrap();
    let protos: Vec<_> = ports.iter().map(|p| (p.name.clone().unwrap(), p.protocol.clone().unwrap())).collect();
    assert_eq!(protos, [("client-tcp".to_string(), "TCP".to_string()), ("client-udp".to_string(), "UDP".to_string())]);
}

#[test]
fn topology_lists_every_instance_with_dns_and_ports() {
    let ports = BTreeMap::from([(
        "zone1-game-2".to_string(),
        vec![PortStatus {
            name: "client".into(),
            port: 7005,
            container_port: 7777,
            host_port: Some(7005),
            ..Default::default()
        }],
    )]);
    let cm = topology(&basic(), &ports);
    let doc: serde_json::Value = serde_json::from_str(&cm.data.unwrap()[TOPOLOGY_KEY]).unwrap();
    let list = doc["instances"].as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[1]["dns"], "zone1-game-2.zone1.team.svc");
    assert_eq!(list[1]["ports"][0]["port"], 7005);
    assert_eq!(doc["zoneId"], 7);
    // What a topology lists reads back, for the port tables' rebuild after a restart.
    let listed = topology_ports(&topology(&basic(), &ports));
    assert_eq!(listed.len(), 4);
    assert_eq!(listed["zone1-game-2"], ports["zone1-game-2"]);
    assert!(listed["zone1-game-1"].is_empty());
    assert!(topology_ports(&ConfigMap::default()).is_empty());
}

#[test]
fn hashes_keep_their_form_so_an_upgrade_rolls_no_pods() {
    // Template hashes are stored on pods: the first 8 bytes of sha256 over the JSON, in hex.
    assert_eq!(hash_of(&serde_json::json!({"a": 1})), "015abd7f5cc57a2d");
}

#[test]
fn a_type_with_gates_runs_the_sdk_sidecar_first_and_only_it_gets_a_token() {
    let mut z = basic();
    z.spec.services[0].lifecycle.deletable_gates = vec!["NoPlayers".into()];
    let servers = game_servers(
        &z,
        &["a".into(), "b".into()],
        None,
        &BuildConfig { init_image: "op:1".into(), ..Default::default() },
    )
    .unwrap();
    let pod = servers[0].spec.template.spec.as_ref().unwrap();
    let sidecar = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(sidecar.name, SDK_CONTAINER);
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"), "a native sidecar");
    assert_eq!(sidecar.command.as_ref().unwrap(), &["gamezone-sdk"]);
    assert_eq!(sidecar.image.as_deref(), Some("op:1"));
    let sc = sidecar.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_non_root, sc.read_only_root_filesystem), (Some(true), Some(true)));
    assert_eq!(pod.automount_service_account_token, Some(false), "the game container gets no token");
    assert_eq!(pod.service_account_name.as_deref(), Some("gamezone-sdk-zone1"));
    let token_mounts = |c: &k8s_openapi::api::core::v1::Container| {
        c.volume_mounts.iter().flatten().filter(|m| m.name == "gamezone-sdk-token").count()
    };
    assert_eq!(token_mounts(sidecar), 1);
    assert_eq!(token_mounts(&pod.containers[0]), 0);
    let env: Vec<(String, Option<String>)> =
        pod.containers[0].env.iter().flatten().map(|e| (e.name.clone(), e.value.clone())).collect();
    for name in ["GAMEZONE_SDK_GRPC_PORT", "AGONES_SDK_GRPC_PORT", "CARRIER_SDK_GRPC_PORT"] {
        assert!(env.contains(&(name.into(), Some("9357".into()))), "{name}: {env:?}");
    }
    assert!(env.contains(&("AGONES_SDK_HTTP_PORT".into(), Some("9358".into()))));
    // The db type has no gates: no sidecar, and its pods stay as they were.
    let db = servers[3].spec.template.spec.as_ref().unwrap();
    assert!(db.init_containers.iter().flatten().all(|c| c.name != SDK_CONTAINER));
    assert_eq!(db.service_account_name, None);

    let (sa, role, binding) = sidecar_identity(&z);
    assert_eq!(sa.metadata.name.as_deref(), Some("gamezone-sdk-zone1"));
    assert_eq!(binding.subjects.unwrap()[0].name, "gamezone-sdk-zone1");
    let verbs: Vec<_> = role.rules.unwrap().into_iter().flat_map(|r| r.verbs).collect();
    assert!(!verbs.iter().any(|v| v == "delete" || v == "create"), "{verbs:?}");
}

#[test]
fn a_game_port_on_the_sdk_s_port_is_refused_by_field() {
    let mut z = basic();
    z.spec.services[0].lifecycle.readiness_gates = vec!["Loaded".into()];
    z.spec.services[0].ports[0].container_port = Some(9358);
    let err = validate(&z).unwrap_err().to_string();
    assert!(err.starts_with("spec.services[0].ports[0]: port 9358 is the SDK sidecar's"), "{err}");
}

#[test]
fn every_bounded_child_name_is_checked_before_anything_is_made() {
    // 44 characters: `<zone>-migrate-<10>` is 63, the longest a Job's pods can be labelled with.
    let mut z = basic();
    z.spec.services.truncate(1);
    z.spec.services[0].expose = None;
    z.metadata.name = Some("z".repeat(44));
    assert!(validate(&z).is_ok());
    // 48, as a tenant tried: the servers fit, the migration Job would not.
    z.metadata.name = Some("z".repeat(48));
    z.spec.services[0].type_ = "g".into();
    z.spec.services[0].end_id = None;
    let e = validate(&z).unwrap_err().to_string();
    assert!(e.starts_with("spec.migration: the migration Job would be named"), "{e}");
    z.spec.migration = None;
    assert!(validate(&z).is_ok());
    // A per-type Service is a DNS label too.
    z.spec.services[0].type_ = "g".repeat(15);
    z.spec.services[0].expose = serde_json::from_value(serde_json::json!({"perType": {"type": "ClusterIP"}})).unwrap();
    let e = validate(&z).unwrap_err().to_string();
    assert!(e.starts_with("spec.services[0].expose: the per-type Service"), "{e}");
}

#[test]
fn a_service_with_a_security_context_gets_every_container_of_its_pods_restricted() {
    let mut z = basic();
    z.spec.services[0].ports.clear();
    z.spec.services[0].expose = None;
    z.spec.services[0].lifecycle.deletable_gates = vec!["NoPlayers".into()];
    // Untouched without one: no template changes under running zones.
    let before = game_servers(&z, &["a".into(), "b".into()], None, &BuildConfig::default()).unwrap();
    let pod = before[0].spec.template.spec.as_ref().unwrap();
    assert!(pod.init_containers.iter().flatten().any(|c| c.name == INIT_CONTAINER && c.security_context.is_none()));
    z.spec.services[0].security_context =
        serde_json::from_value(serde_json::json!({"runAsNonRoot": true, "runAsUser": 1000})).unwrap();
    let servers = game_servers(&z, &["a".into(), "b".into()], None, &BuildConfig::default()).unwrap();
    let pod = servers[0].spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.containers[0].security_context.as_ref().unwrap().run_as_user, Some(1000));
    let inits = pod.init_containers.as_ref().unwrap();
    assert_eq!(inits.len(), 2, "the SDK sidecar and the artifacts init container");
    for c in inits {
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!((sc.run_as_non_root, sc.allow_privilege_escalation), (Some(true), Some(false)), "{}", c.name);
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_deref(), Some(&["ALL".to_string()][..]), "{}", c.name);
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault", "{}", c.name);
        // The files it layers are the game's; the SDK sidecar keeps a user of its own.
        let user = if c.name == INIT_CONTAINER { 1000 } else { 65532 };
        assert_eq!(sc.run_as_user, Some(user), "{}", c.name);
    }
    // A game that runs as root leaves the operator's containers to a user of their own.
    z.spec.services[0].security_context = serde_json::from_value(serde_json::json!({"runAsUser": 0})).unwrap();
    let servers = game_servers(&z, &["a".into(), "b".into()], None, &BuildConfig::default()).unwrap();
    let pod = servers[0].spec.template.spec.as_ref().unwrap();
    for c in pod.init_containers.iter().flatten() {
        assert_eq!(c.security_context.as_ref().unwrap().run_as_user, Some(65532), "{}", c.name);
    }
}

#[test]
fn a_migration_with_a_security_context_gets_its_pod_restricted_and_runs_again() {
    let mut z = basic();
    let pins = ["a".to_string(), "b".to_string()];
    let before = migration_inputs_hash(&z, &pins).unwrap();
    let migration = z.spec.migration.as_mut().unwrap();
    migration.security_context =
        serde_json::from_value(serde_json::json!({"runAsNonRoot": true, "runAsUser": 1000})).unwrap();
    // A Job PodSecurity refused is replaced by one with the new context.
    assert_ne!(migration_inputs_hash(&z, &pins).unwrap(), before);
    let job = migration_job(&z, &pins, None, &BuildConfig::default()).unwrap().unwrap();
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.containers[0].security_context.as_ref().unwrap().run_as_user, Some(1000));
    let init = &pod.init_containers.as_ref().unwrap()[0];
    let sc = init.security_context.as_ref().expect("the artifacts init container is restricted");
    assert_eq!((sc.run_as_non_root, sc.allow_privilege_escalation), (Some(true), Some(false)));
    assert_eq!(sc.run_as_user, Some(1000), "the layered files are the migrater's, as a game's are its own");
}

#[test]
fn with_an_artifact_registry_a_pack_job_fetches_with_the_secrets_and_servers_copy_without_them() {
    let cfg = registry_config(true);
    let pins = ["sha256:aa".to_string(), "c0ffee".to_string()];
    let z = basic();

    let job = pack_job(&z, &pins, &cfg).unwrap().expect("a pack Job");
    let hash = pack_inputs_hash(&z, &pins, &cfg).unwrap().unwrap();
    assert_eq!(job.metadata.name.as_deref(), Some(pack_job_name("zone1", &hash).as_str()));
    let pod = job.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    assert_eq!(args[0], "pack");
    assert!(args.windows(2).any(|w| w == ["--registry", "registry.games:5000/gamezone/layers"]), "{args:?}");
    assert!(args.contains(&"--registry-plain-http".to_string()));
    let env: BTreeMap<_, _> = c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap())).collect();
    assert_eq!(env["GAMEZONE_REVISIONS"], r#"["sha256:aa","c0ffee"]"#);
    let secrets: Vec<_> = pod.volumes.iter().flatten().filter_map(|v| v.secret.as_ref()?.secret_name.clone()).collect();
    assert_eq!(secrets, ["s3cred"], "the pack fetches from the origins, with their Secrets");
    assert_eq!(c.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true));
    let mut pooled = z.clone();
    pooled.spec.services[0].node_selector = BTreeMap::from([("pool".to_string(), "game".to_string())]);
    let on = pack_job(&pooled, &pins, &cfg).unwrap().unwrap().spec.unwrap().template.spec.unwrap().node_selector;
    assert_eq!(
        on,
        Some(BTreeMap::from([("pool".to_string(), "game".to_string())])),
        "where the first type's servers run"
    );

    // Until the pins are packed, servers copy from the registry: its flags, and none of the
    // origins' Secrets.
    let servers = game_servers(&z, &pins, None, &cfg).unwrap();
    let spec = servers[0].spec.template.spec.as_ref().unwrap();
    let init = spec.init_containers.iter().flatten().find(|c| c.name == INIT_CONTAINER).unwrap();
    assert!(init.args.iter().flatten().any(|a| a == "--registry"));
    assert!(!spec.volumes.iter().flatten().any(|v| v.secret.is_some()), "no layer Secret in a server pod");

    // A new pin is a new pack; without a registry there is none, and servers keep the Secrets.
    let repinned = ["sha256:aa".to_string(), "d00d".to_string()];
    assert_ne!(pack_inputs_hash(&z, &repinned, &cfg).unwrap().unwrap(), hash);
    assert!(pack_job(&z, &pins, &BuildConfig::default()).unwrap().is_none());
    let plain = game_servers(&z, &pins, None, &BuildConfig::default()).unwrap();
    assert!(plain[0].spec.template.spec.as_ref().unwrap().volumes.iter().flatten().any(|v| v.secret.is_some()));
}

fn tree_image(image: &str, tree_digest: &str) -> crate::api::artifacts::TreeImage {
    crate::api::artifacts::TreeImage { image: image.into(), tree_digest: tree_digest.into(), ..Default::default() }
}

fn registry_config(image_volumes: bool) -> BuildConfig {
    let registry = ArtifactRegistry {
        repository: "registry.games:5000/gamezone/layers".into(),
        plain_http: true,
        image_volumes,
        secret: None,
    };
    BuildConfig { init_image: "op:1".into(), registry: Some(registry), ..Default::default() }
}

#[test]
fn a_packed_tree_is_mounted_as_an_image_volume_and_checked_unless_the_zone_needs_it_writable() {
    let pins = ["sha256:aa".to_string(), "c0ffee".to_string()];
    let tree = tree_image("registry.games:5000/gamezone/layers@sha256:1234", "sha256:5678");
    let z = basic();
    let cfg = registry_config(true);
    let servers = game_servers(&z, &pins, Some(&tree), &cfg).unwrap();
    let spec = servers[0].spec.template.spec.as_ref().unwrap();
    let image = spec.volumes.iter().flatten().find(|v| v.name == TREE_IMAGE_VOLUME).expect("an image volume");
    let source = image.image.as_ref().unwrap();
    assert_eq!(source.reference.as_deref(), Some(tree.image.as_str()), "pinned by digest");
    assert_eq!(source.pull_policy.as_deref(), Some("IfNotPresent"));
    let root = artifacts_mount(&z).unwrap().unwrap().root;
    let game = &spec.containers.iter().find(|c| c.name == SERVER_CONTAINER).unwrap();
    let at = |c: &k8s_openapi::api::core::v1::Container, volume: &str| {
        c.volume_mounts.iter().flatten().find(|m| m.name == volume).map(|m| (m.mount_path.clone(), m.read_only))
    };
    assert_eq!(at(game, TREE_IMAGE_VOLUME), Some((root.clone(), Some(true))), "the game reads the mount");
    assert_eq!(at(game, ARTIFACTS_VOLUME), Some((INIT_ROOT.to_string(), Some(true))), "and the state beside it");
    let init = spec.init_containers.iter().flatten().find(|c| c.name == INIT_CONTAINER).unwrap();
    let args = init.args.clone().unwrap();
    assert_eq!(args[0], "mount");
    assert!(args.windows(2).any(|w| w == ["--tree-digest", "sha256:5678"]), "{args:?}");
    assert!(!args.contains(&"--tree-shape".to_string()), "a tree packed without a shape is read in full: {args:?}");
    let shaped = crate::api::artifacts::TreeImage { tree_shape: Some("sha256:9abc".into()), ..tree.clone() };
    let servers = game_servers(&z, &pins, Some(&shaped), &cfg).unwrap();
    let init = servers[0].spec.template.spec.as_ref().unwrap().init_containers.iter().flatten().next().unwrap();
    let shaped_args = init.args.clone().unwrap();
    assert!(shaped_args.windows(2).any(|w| w == ["--tree-shape", "sha256:9abc"]), "{shaped_args:?}");
    assert!(args.windows(2).any(|w| w == ["--image", root.as_str()]), "{args:?}");
    assert!(!args.contains(&"--registry".to_string()), "nothing copied");
    assert!(!spec.volumes.iter().flatten().any(|v| v.secret.is_some()), "no layer Secret");
    let job = migration_job(&z, &pins, Some(&tree), &cfg).unwrap().expect("the zone migrates");
    let pod = job.spec.unwrap().template.spec.unwrap();
    assert!(pod.volumes.iter().flatten().any(|v| v.image.is_some()), "the migration mounts it too");

    // Copied instead: the operator does not mount images, the zone edits its tree live, or it
    // shares one claim.
    let copies = |z: &GameZone, cfg: &BuildConfig| {
        let servers = game_servers(z, &pins, Some(&tree), cfg).unwrap();
        let spec = servers[0].spec.template.spec.clone().unwrap();
        let init = spec.init_containers.iter().flatten().find(|c| c.name == INIT_CONTAINER).unwrap().clone();
        !spec.volumes.iter().flatten().any(|v| v.image.is_some()) && init.args.unwrap()[0] == "apply"
    };
    assert!(copies(&z, &registry_config(false)));
    let mut edited = z.clone();
    edited.spec.edits = Some(serde_json::from_value(json!({"secretRef": {"name": "smb"}})).unwrap());
    assert!(copies(&edited, &cfg));
    let mut shared = z.clone();
    shared.spec.shared_artifacts = Some(serde_json::from_value(json!({"size": "1Gi"})).unwrap());
    assert!(copies(&shared, &cfg));
    assert!(!copies(&z, &cfg));
    assert!(mounts_tree_image(&z, Some(&tree), &cfg) && !mounts_tree_image(&edited, Some(&tree), &cfg));

    // A server whose node mounted the image wrong copies; the others still mount.
    let mut servers = game_servers(&z, &pins, Some(&tree), &cfg).unwrap();
    copy_tree_for(&z, &pins, &cfg, &mut servers, |n| n == "zone1-game-2").unwrap();
    let mounts =
        |gs: &GameServer| gs.spec.template.spec.as_ref().unwrap().volumes.iter().flatten().any(|v| v.image.is_some());
    let by: Vec<(String, bool)> = servers.iter().map(|g| (kube::ResourceExt::name_any(g), mounts(g))).collect();
    assert!(by.contains(&("zone1-game-1".into(), true)) && by.contains(&("zone1-game-2".into(), false)), "{by:?}");
}

#[test]
fn the_registry_s_credentials_go_to_the_pack_the_copying_init_containers_and_the_pods_pull_secrets() {
    let pins = ["sha256:aa".to_string(), "c0ffee".to_string()];
    let tree = tree_image("r:5000/l@sha256:12", "sha256:34");
    let mut z = basic();
    z.spec.image_pull_secrets = vec!["zone-pull".into()];
    let mut cfg = registry_config(true);
    cfg.registry.as_mut().unwrap().secret = Some("registry-creds".into());
    let auth = "/var/run/secrets/gamezone-registry/.dockerconfigjson";
    let secrets = |pod: &k8s_openapi::api::core::v1::PodSpec| -> Vec<String> {
        pod.volumes.iter().flatten().filter_map(|v| v.secret.as_ref()?.secret_name.clone()).collect()
    };
    let uses_auth = |c: &k8s_openapi::api::core::v1::Container| {
        let args = c.args.clone().unwrap_or_default();
        args.windows(2).any(|w| w == ["--registry-auth", auth])
            && c.volume_mounts.iter().flatten().any(|m| auth.starts_with(&m.mount_path))
    };

    let pack = pack_job(&z, &pins, &cfg).unwrap().unwrap().spec.unwrap().template.spec.unwrap();
    assert!(uses_auth(&pack.containers[0]));
    assert_eq!(secrets(&pack), ["s3cred", "registry-creds"], "the origin's to fetch, the registry's to push");

    let copying = game_servers(&z, &pins, None, &cfg).unwrap();
    let pod = copying[0].spec.template.spec.clone().unwrap();
    assert!(uses_auth(&pod.init_containers.as_ref().unwrap()[0]));
    assert_eq!(secrets(&pod), ["registry-creds"]);

    let mounting = game_servers(&z, &pins, Some(&tree), &cfg).unwrap();
    let pod = mounting[0].spec.template.spec.clone().unwrap();
    let pulls: Vec<_> = pod.image_pull_secrets.iter().flatten().map(|s| s.name.as_str()).collect();
    assert_eq!(pulls, ["zone-pull", "registry-creds"], "the kubelet pulls the tree image with it");
    assert!(secrets(&pod).is_empty(), "the mount needs no Secret inside the pod");

    let uses = crate::zone::decide::secrets_used(&z, &cfg);
    let registry = uses.iter().find(|u| u.name == "registry-creds").expect("checked like the zone's own");
    assert_eq!(registry.key.as_deref(), Some(".dockerconfigjson"));
    assert!(registry.field.contains("--artifact-registry-secret"));
}

#[test]
fn a_warm_pod_is_pinned_to_its_node_mounts_the_tree_and_checks_it() {
    let pins = ["sha256:aa".to_string(), "c0ffee".to_string()];
    let tree = tree_image("r:5000/l@sha256:12", "sha256:34");
    let z = basic();
    let cfg = registry_config(true);
    let pod = warm_pod(&z, &pins, &tree, &cfg, "node-a").unwrap().expect("a warm pod");
    let other = warm_pod(&z, &pins, &tree, &cfg, "node-b").unwrap().unwrap();
    assert_ne!(pod.metadata.name, other.metadata.name, "one per node");
    assert!(pod.metadata.name.as_deref().unwrap().starts_with("zone1-warm-"));
    let labels = pod.metadata.labels.clone().unwrap();
    assert_eq!(labels.get(WARM_LABEL), Some(&hash_of(&tree.image)));
    let spec = pod.spec.unwrap();
    assert_eq!((spec.node_name.as_deref(), spec.restart_policy.as_deref()), (Some("node-a"), Some("Never")));
    let c = &spec.containers[0];
    assert_eq!(c.args.as_ref().unwrap()[0], "mount");
    assert_eq!(c.security_context.as_ref().and_then(|s| s.run_as_non_root), Some(true));
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .any(|v| v.image.as_ref().and_then(|i| i.reference.as_deref()) == Some("r:5000/l@sha256:12"))
    );
    // None where pods copy.
    assert!(warm_pod(&z, &pins, &tree, &registry_config(false), "node-a").unwrap().is_none());
}

#[test]
fn a_zone_s_disruption_budget_selects_only_its_pods_marked_not_evictable_and_lets_none_go() {
    let z = basic();
    let pdb = disruption_budget(&z);
    assert_eq!(pdb.metadata.name.as_deref(), Some("zone1-players"));
    assert_eq!(pdb.metadata.namespace.as_deref(), Some("team"));
    assert_eq!(pdb.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
    let spec = pdb.spec.unwrap();
    assert_eq!(spec.min_available, Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::MAX)));
    assert_eq!(spec.max_unavailable, None, "maxUnavailable needs a scale a GameServer does not have");
    let selected = spec.selector.unwrap().match_labels.unwrap();
    assert_eq!(selected.get(EVICTABLE_LABEL).map(String::as_str), Some("false"));
    // Every server pod of the zone carries the rest of the selector.
    let servers = game_servers(&z, &["", ""].map(String::from), None, &Default::default()).unwrap();
    for gs in &servers {
        let labels = gs.spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        for (k, v) in selected.iter().filter(|(k, _)| k.as_str() != EVICTABLE_LABEL) {
            assert_eq!(labels.get(k), Some(v), "{}", kube::ResourceExt::name_any(gs));
        }
    }
    assert_eq!(
        children(&z, &[], None, &Default::default()).unwrap().disruption_budget.metadata.name,
        pdb.metadata.name
    );
}
