//! A zone's author is untrusted: whoever may create a GameZone picks its children's names and
//! its layers' URLs. Each test acts as such a tenant (a user bound to a Role with rights on
//! `gamezones` only, through impersonation) and checks that the attack fails, the zone says
//! why, and nothing foreign changed.

mod common;
mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gamezone::api::*;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::{Operator, install_crds};

const TENANT: &str = "tenant-of-zones";

/// A client acting as a user who may do anything with `gamezones` in `ns`, and create pods
/// there (which deploy/tenant-policy.yaml asks of a zone's author), and nothing else.
async fn tenant(ns: &common::TestNs) -> Client {
    as_user(
        ns,
        TENANT,
        json!([
            {"apiGroups": ["gamezone.dev"], "resources": ["gamezones"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}
        ]),
    )
    .await
}

/// A client acting as `user`, bound in `ns` to a Role of `rules`.
async fn as_user(ns: &common::TestNs, user: &str, rules: serde_json::Value) -> Client {
    let role: Role = serde_json::from_value(json!({"metadata": {"name": user}, "rules": rules})).unwrap();
    ns.api::<Role>().create(&PostParams::default(), &role).await.unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]
    }))
    .unwrap();
    ns.api::<RoleBinding>().create(&PostParams::default(), &binding).await.unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(ns.kubeconfig()).unwrap();
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default()).await.unwrap();
    config.auth_info.impersonate = Some(user.into());
    let client = Client::try_from(config).unwrap();
    // The API server's authorizer hears of a new RoleBinding through a watch: wait until the
    // user's rights are in force (every user here may at least list GameZones).
    let zones: Api<GameZone> = Api::namespaced(client.clone(), &ns.name);
    common::wait_for(&format!("{user}'s RoleBinding in force"), Duration::from_secs(30), || async {
        zones.list(&Default::default()).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    // The tenant is who the test says: it may not read a ConfigMap.
    let denied = Api::<ConfigMap>::namespaced(client.clone(), &ns.name).list(&Default::default()).await;
    assert!(matches!(denied, Err(kube::Error::Api(e)) if e.code == 403), "the tenant must not read ConfigMaps");
    client
}

/// A fresh namespace with the CRDs and the operator (run with `extra`), and the tenant's zones there.
async fn as_tenant(prefix: &str, extra: &[&str]) -> (common::TestNs, Operator, Api<GameZone>) {
    let ns = common::namespace(prefix).await;
    install_crds(&ns.client).await;
    let op = Operator::start_with(ns.kubeconfig(), &ns.name, extra);
    let zones = Api::namespaced(tenant(&ns).await, &ns.name);
    (ns, op, zones)
}

fn zone(name: &str, spec: serde_json::Value) -> GameZone {
    gamezone_api::fixture::zone(name).with_spec(spec).build()
}

/// The condition `type_` of the zone, as `(status, reason, message)`, once `pred` holds for it.
async fn condition_when(
    zones: &Api<GameZone>,
    name: &str,
    type_: &str,
    wait: Duration,
    pred: impl Fn(&str, &str, &str) -> bool,
) -> (String, String, String) {
    common::wait_for(&format!("GameZone {name}'s {type_}"), wait, || async {
        let z = zones.get(name).await.map_err(|e| e.to_string())?;
        let c = z.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == type_);
        match c {
            Some(c) if pred(&c.status, &c.reason, &c.message) => Ok((c.status, c.reason, c.message)),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The message of the server's `Ready` condition, once its reason is `reason`.
async fn server_ready_reason(servers: &Api<GameServer>, name: &str, reason: &str) -> String {
    common::wait_for(&format!("{name}'s Ready condition says {reason}"), Duration::from_secs(60), || async {
        let gs = servers.get(name).await.map_err(|e| e.to_string())?;
        let ready = gs.status.unwrap_or_default().conditions.into_iter().find(|c| c.type_ == "Ready");
        match ready {
            Some(c) if c.reason == reason => Ok(c.message),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// An object's identity and content, to compare before and after.
fn fingerprint<K: kube::Resource + serde::Serialize>(obj: &K) -> (String, String, serde_json::Value) {
    let mut body = serde_json::to_value(obj).unwrap();
    body["metadata"] = json!(null);
    body["status"] = json!(null);
    (obj.uid().unwrap(), obj.resource_version().unwrap(), body)
}

#[tokio::test]
async fn names_held_by_others_are_never_taken_over_adopted_or_deleted() {
    let (ns, _op, zones) = as_tenant("tenant-names", &[]).await;

    // What others made before the tenant came: a payments Service, a Role, a pod.
    let services: Api<Service> = ns.api();
    let payments: Service = serde_json::from_value(json!({
        "metadata": {"name": "pay-game"},
        "spec": {"selector": {"app": "payments"}, "ports": [{"port": 443, "targetPort": 8443}]}
    }))
    .unwrap();
    let payments = services.create(&PostParams::default(), &payments).await.unwrap();
    let roles: Api<Role> = ns.api();
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "gamezone-sdk-ops"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]
    }))
    .unwrap();
    let role = roles.create(&PostParams::default(), &role).await.unwrap();
    let pods: Api<Pod> = ns.api();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "pay-game-1", "labels": {"app": "payments"}},
        "spec": {"containers": [{"name": "payments", "image": "payments:1"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();

    // Zones named so their children collide: `ops` wants the Role (its service uses the SDK),
    // `pay` the Service (per type) and the pod (its instance game-1).
    let ops = zone(
        "ops",
        json!({"zoneId": 1, "defaultImage": "svc:1", "services": [{"type": "game", "id": 1, "deletableGates": ["NoPlayers"]}]}),
    );
    zones.create(&PostParams::default(), &ops).await.unwrap();
    let pay = zone(
        "pay",
        json!({"zoneId": 2, "defaultImage": "svc:1",
               "services": [{"type": "game", "id": 1, "expose": {"perType": {"type": "ClusterIP"}},
                             "ports": [{"name": "client", "containerPort": 7777, "policy": "None"}]}]}),
    );
    zones.create(&PostParams::default(), &pay).await.unwrap();

    let wait = Duration::from_secs(60);
    let (_, reason, message) = condition_when(&zones, "ops", "Ready", wait, |_, r, _| r == "NameConflict").await;
    assert_eq!(reason, "NameConflict");
    assert!(message.contains(r#"Role "gamezone-sdk-ops" already exists and is not this zone's"#), "{message}");
    let (_, _, message) = condition_when(&zones, "pay", "ServersReady", wait, |_, r, _| r == "NameConflict").await;
    assert!(message.contains(r#"Service "pay-game" already exists"#), "{message}");
    let zone_now = zones.get("pay").await.unwrap();
    assert_eq!(zone_now.status.unwrap().phase, Some(ZonePhase::Degraded));
    // The server whose pod name is taken says so in its own status.
    let said = server_ready_reason(&ns.api(), "pay-game-1", "NameConflict").await;
    assert!(said.contains(r#"Pod "pay-game-1" already exists"#), "{said}");

    // Nothing foreign changed, and deleting the zones takes none of it.
    for name in ["ops", "pay"] {
        zones.delete(name, &DeleteParams::default()).await.unwrap();
    }
    common::wait_for("both zones gone", wait, || async {
        let left = zones.list(&Default::default()).await.map_err(|e| e.to_string())?.items.len();
        if left == 0 { Ok(()) } else { Err(format!("{left} left")) }
    })
    .await;
    assert_eq!(fingerprint(&services.get("pay-game").await.unwrap()), fingerprint(&payments));
    assert_eq!(fingerprint(&roles.get("gamezone-sdk-ops").await.unwrap()), fingerprint(&role));
    let pod_now = pods.get("pay-game-1").await.unwrap();
    assert_eq!((pod_now.uid(), pod_now.metadata.owner_references.clone()), (pod.uid(), None));
    // (The scheduler gave it a node meanwhile; what it runs and its labels are as they were.)
    assert_eq!(pod_now.spec.unwrap().containers, pod.spec.unwrap().containers);
    assert_eq!(pod_now.metadata.labels, pod.metadata.labels);
    ns.cleanup().await;
}

/// A loopback HTTP server that answers every request with `status` and `body`, and records the
/// request lines it got.
fn leaky_server(status: u16, body: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string();
            log.lock().unwrap().push(head);
            let _ = write!(
                conn,
                "HTTP/1.1 {status} X\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

const IMDS_BODY: &str = r#"{"Code":"Success","AccessKeyId":"ASIA-SECRET-KEY-ID","SecretAccessKey":"SECRET-VALUE"}"#;

fn s3_zone(name: &str, endpoint: &str) -> GameZone {
    zone(
        name,
        json!({"zoneId": 3, "defaultImage": "svc:1", "services": [{"type": "game", "id": 1}],
               "artifacts": [{"path": "/app/artifacts", "s3": {"endpoint": endpoint, "bucket": "latest"}}]}),
    )
}

#[tokio::test]
async fn the_operator_fetches_nothing_from_loopback_or_metadata_addresses_by_default() {
    // An operator that allows only a documentation range: loopback stays refused.
    let (ns, _op, zones) = as_tenant("tenant-egress", &["--allow-egress", "192.0.2.0/24"]).await;
    let (port, seen) = leaky_server(200, IMDS_BODY);
    for (name, endpoint) in [
        ("imds", format!("http://127.0.0.1:{port}/meta-data/iam/security-credentials")),
        ("decimal", format!("http://2130706433:{port}/")),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/")),
        ("linklocal", "http://169.254.169.254/latest".to_string()),
    ] {
        zones.create(&PostParams::default(), &s3_zone(name, &endpoint)).await.unwrap();
    }
    for name in ["imds", "decimal", "mapped", "linklocal"] {
        let (_, _, message) = condition_when(&zones, name, "ArtifactsReady", Duration::from_secs(60), |s, r, _| {
            s == "False" && r != "Resolving"
        })
        .await;
        assert!(message.contains("--allow-egress"), "{name}: {message}");
        assert!(!message.contains("SECRET"), "{name}: {message}");
    }
    assert!(seen.lock().unwrap().is_empty(), "the server was asked: {:?}", seen.lock().unwrap());
    ns.cleanup().await;
}

#[tokio::test]
async fn what_a_server_answers_is_never_reflected_and_the_message_settles() {
    // Loopback allowed, as the tests' servers are there: the answer still must not show.
    let (ns, _op, zones) = as_tenant("tenant-reflect", &[]).await;
    let (port, seen) = leaky_server(403, IMDS_BODY);
    zones.create(&PostParams::default(), &s3_zone("leak", &format!("http://127.0.0.1:{port}/"))).await.unwrap();
    let wait = Duration::from_secs(60);
    let (_, _, first) =
        condition_when(&zones, "leak", "ArtifactsReady", wait, |s, r, _| s == "False" && r != "Resolving").await;
    assert!(!first.contains("SECRET") && !first.contains("AccessKeyId"), "{first}");
    assert!(first.len() <= 1024, "{} bytes", first.len());
    assert!(!seen.lock().unwrap().is_empty(), "the allowed server was asked");
    // A failure a person must fix is not fetched again at once, and its message does not move.
    let asked = seen.lock().unwrap().len();
    tokio::time::sleep(Duration::from_secs(12)).await;
    let z = zones.get("leak").await.unwrap();
    let again = z.status.unwrap().conditions.into_iter().find(|c| c.type_ == "ArtifactsReady").unwrap();
    assert_eq!(again.message, first);
    let now = seen.lock().unwrap().len();
    assert!(now - asked <= 2, "asked {} more times in 12 s", now - asked);
    ns.cleanup().await;
}

/// Zones `slow0` to `slow15` in `zones`, each with a layer from a git daemon that accepts
/// connections and never says a word.
async fn sixteen_hanging_zones(zones: &Api<GameZone>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    for i in 0..16 {
        let z = zone(
            &format!("slow{i}"),
            json!({"zoneId": i, "defaultImage": "svc:1", "services": [{"type": "game", "id": 1}],
                   "artifacts": [{"path": "/app/artifacts",
                                  "git": {"url": format!("git://127.0.0.1:{port}/r.git"), "branch": "main"}}]}),
        );
        zones.create(&PostParams::default(), &z).await.unwrap();
    }
}

#[tokio::test]
async fn sources_that_never_answer_hold_no_worker_and_their_zones_can_be_deleted() {
    let flags = ["--allow-egress", "127.0.0.0/8", "--resolve-timeout", "5", "--concurrency", "4"];
    let (ns, _op, zones) = as_tenant("tenant-slow", &flags).await;
    // Four times the workers, all hanging.
    sixteen_hanging_zones(&zones).await;
    // A healthy zone beside them comes up as it would alone.
    let started = Instant::now();
    zones
        .create(
            &PostParams::default(),
            &zone("healthy", json!({"zoneId": 99, "defaultImage": "svc:1", "services": [{"type": "game", "id": 1}]})),
        )
        .await
        .unwrap();
    support::wait_ready(&zones, "healthy").await;
    assert!(started.elapsed() < Duration::from_secs(30), "healthy took {:?}", started.elapsed());
    // A hanging zone says it is resolving, then that its source did not answer, and when it tries again.
    let (_, reason, message) =
        condition_when(&zones, "slow0", "ArtifactsReady", Duration::from_secs(40), |_, r, _| r != "Resolving").await;
    assert_eq!(reason, "FetchFailed", "{message}");
    assert!(message.contains("within") && message.contains("retrying in"), "{message}");
    // And every one of them can be deleted.
    let deleting = Instant::now();
    for i in 0..16 {
        zones.delete(&format!("slow{i}"), &DeleteParams::default()).await.unwrap();
    }
    common::wait_for("the slow zones gone", Duration::from_secs(60), || async {
        let left = zones.list(&Default::default()).await.map_err(|e| e.to_string())?;
        let slow = left.items.iter().filter(|z| z.name_any().starts_with("slow")).count();
        if slow == 0 { Ok(()) } else { Err(format!("{slow} left")) }
    })
    .await;
    assert!(deleting.elapsed() < Duration::from_secs(60));
    ns.cleanup().await;
}

/// Why the API server refused `zone` from `zones`' user, or `None` when it admitted it
/// (a dry run: nothing is made).
async fn refusal(zones: &Api<GameZone>, zone: &GameZone) -> Option<String> {
    let dry = PostParams { dry_run: true, ..Default::default() };
    match zones.create(&dry, zone).await {
        Ok(_) => None,
        Err(kube::Error::Api(e)) => Some(format!("{} {}", e.code, e.message)),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn a_zone_names_only_secrets_its_author_may_read_and_needs_an_author_who_may_make_pods() {
    let ns = common::namespace("tenant-secrets").await;
    install_crds(&ns.client).await;
    support::kubectl(
        ns.kubeconfig(),
        &["apply", "--server-side", "-f", concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tenant-policy.yaml")],
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = ns.api();
    for name in ["db-admin", "team-git"] {
        let s = serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"password": "p"}})).unwrap();
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    // The tenant may read team-git, not db-admin.
    let client = as_user(
        &ns,
        "tenant-with-git",
        json!([
            {"apiGroups": ["gamezone.dev"], "resources": ["gamezones"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["team-git"], "verbs": ["get"]}
        ]),
    )
    .await;
    let zones: Api<GameZone> = Api::namespaced(client, &ns.name);
    let layer = |secret: &str| {
        zone(
            "z",
            json!({"zoneId": 1, "defaultImage": "svc:1", "services": [{"type": "game", "id": 1}],
                   "artifacts": [{"path": "/app/a", "git": {"url": "https://git.example/r.git", "secretRef": {"name": secret}}}]}),
        )
    };
    // The policy takes a moment to be in force after it is made.
    let refused = common::wait_for("the tenant policy in force", Duration::from_secs(30), || async {
        refusal(&zones, &layer("db-admin")).await.ok_or("admitted")
    })
    .await;
    assert!(
        refused.starts_with("403") && refused.contains("spec.artifacts") && refused.contains("may not read"),
        "{refused}"
    );
    assert_eq!(refusal(&zones, &layer("team-git")).await, None, "a Secret the author may read is fine");
    let env = zone(
        "z",
        json!({"zoneId": 1, "defaultImage": "svc:1",
               "services": [{"type": "game", "id": 1,
                             "env": [{"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db-admin", "key": "password"}}}]}]}),
    );
    let refused = refusal(&zones, &env).await.expect("env from a Secret the author may not read");
    assert!(refused.contains("spec.services[].env"), "{refused}");
    let mysql = zone(
        "z",
        json!({"zoneId": 1, "defaultImage": "svc:1", "services": [{"type": "game", "id": 1}],
               "mysql": {"host": "m", "user": "u", "database": "d", "passwordSecretRef": {"name": "db-admin", "key": "password"}}}),
    );
    assert!(refusal(&zones, &mysql).await.expect("mysql").contains("spec.mysql"));

    // Someone who may write zones but not make pods gets none made for them.
    let client = as_user(
        &ns,
        "zones-only",
        json!([
            {"apiGroups": ["gamezone.dev"], "resources": ["gamezones"], "verbs": ["*"]}
        ]),
    )
    .await;
    let zones: Api<GameZone> = Api::namespaced(client, &ns.name);
    let plain = zone("z", json!({"zoneId": 1, "defaultImage": "svc:1", "services": [{"type": "game", "id": 1}]}));
    let refused = refusal(&zones, &plain).await.expect("a zone from someone who may not make pods");
    assert!(refused.contains("must be allowed to create pods"), "{refused}");
    ns.cleanup().await;
}

#[tokio::test]
async fn a_gate_no_one_opens_holds_a_deleted_zone_only_until_the_drain_limit() {
    let (ns, _op, zones) = as_tenant("tenant-drain", &["--deletion-drain-limit", "20"]).await;
    // Deletable gates, no drainTimeout, and no game to open them.
    let z = zone(
        "stuck",
        json!({"zoneId": 1, "defaultImage": "svc:1", "services": [{"type": "game", "id": 1, "deletableGates": ["NoPlayers"]}]}),
    );
    zones.create(&PostParams::default(), &z).await.unwrap();
    support::wait_ready(&zones, "stuck").await;
    let deleted = Instant::now();
    zones.delete("stuck", &DeleteParams::default()).await.unwrap();
    let (_, reason, message) = condition_when(&zones, "stuck", "Ready", Duration::from_secs(30), |_, _, m| {
        m.contains("waiting for deletable gates NoPlayers")
    })
    .await;
    assert_eq!(reason, "Terminating");
    assert!(
        message.contains("stuck-game-1") && message.contains("go then anyway (--deletion-drain-limit 20s)"),
        "{message}"
    );
    common::wait_for("the zone gone after its drain limit", Duration::from_secs(60), || async {
        match zones.get_opt("stuck").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_string()),
        }
    })
    .await;
    assert!(deleted.elapsed() >= Duration::from_secs(20), "gone after {:?}, before the limit", deleted.elapsed());
    ns.cleanup().await;
}

#[tokio::test]
async fn pods_pass_pod_security_restricted_with_a_security_context_and_a_refusal_shows() {
    let (ns, _op, zones) = as_tenant("tenant-pss", &["--allow-local-sources"]).await;
    let layer = tempfile::tempdir().unwrap();
    std::fs::write(layer.path().join("motd"), "hello").unwrap();
    support::kubectl(
        ns.kubeconfig(),
        &["label", "namespace", &ns.name, "pod-security.kubernetes.io/enforce=restricted"],
    );
    let restricted = json!({"runAsNonRoot": true, "runAsUser": 1000, "allowPrivilegeEscalation": false,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}});
    // With the SDK sidecar (a deletable gate) and, where a context is set, a migration whose
    // Job layers artifacts first, so the operator's own containers are checked too.
    let service = |sc: Option<serde_json::Value>| {
        let mut s = json!({"type": "game", "id": 1, "deletableGates": ["NoPlayers"]});
        let mut z = json!({"zoneId": 1, "defaultImage": "svc:1", "services": [s.clone()]});
        if let Some(sc) = sc {
            s["securityContext"] = sc.clone();
            z["services"] = json!([s]);
            z["migration"] = json!({"image": "migrater:1", "securityContext": sc});
            z["artifacts"] = json!([{"path": "/app/config", "local": {"path": layer.path()}}]);
        }
        z
    };
    zones.create(&PostParams::default(), &zone("locked", service(Some(restricted)))).await.unwrap();
    zones.create(&PostParams::default(), &zone("open", service(None))).await.unwrap();
    support::wait_ready(&zones, "locked").await;
    let said = server_ready_reason(&ns.api(), "open-game-1", "PodRefused").await;
    assert!(said.contains("violates PodSecurity") && said.len() <= 1024, "{said}");
    let (_, _, message) =
        condition_when(&zones, "open", "ServersReady", Duration::from_secs(30), |_, _, m| m.contains("PodSecurity"))
            .await;
    assert!(message.contains("open-game-1"), "{message}");
    ns.cleanup().await;
}

#[tokio::test]
async fn node_daemons_ports_and_the_control_plane_are_not_a_zone_s_to_take() {
    let (ns, _op, zones) = as_tenant("tenant-nodes", &[]).await;
    let kubelet = json!({"type": "game", "id": 1,
                         "ports": [{"name": "p", "containerPort": 7000, "hostPort": 10250, "policy": "Static"}]});
    let control_plane = json!({"type": "game", "id": 1,
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]});
    for (name, service) in [("kubelet", kubelet), ("cp", control_plane)] {
        let z = zone(name, json!({"zoneId": 1, "defaultImage": "svc:1", "services": [service]}));
        zones.create(&PostParams::default(), &z).await.unwrap();
    }
    let wait = Duration::from_secs(30);
    let (_, _, message) = condition_when(&zones, "kubelet", "Ready", wait, |_, r, _| r == "InvalidSpec").await;
    assert!(message.starts_with("spec.services[0].ports[0].hostPort: host port 10250"), "{message}");
    let (_, _, message) = condition_when(&zones, "cp", "Ready", wait, |_, r, _| r == "InvalidSpec").await;
    assert!(message.starts_with("spec.services[0].tolerations[0]"), "{message}");
    // Nothing was made for either.
    let servers: Api<GameServer> = ns.api();
    assert!(servers.list(&Default::default()).await.unwrap().items.is_empty());
    let pods: Api<Pod> = ns.api();
    assert!(pods.list(&Default::default()).await.unwrap().items.is_empty());
    ns.cleanup().await;
}

/// When a zone of `zones` is Ready: how long after `since`.
async fn ready_after(zones: &Api<GameZone>, name: &str, since: Instant) -> Duration {
    support::wait_ready(zones, name).await;
    since.elapsed()
}

/// The operator as deploy/ installs it watches every namespace, so this test has a control
/// plane of its own: on the shared one it would take every other test's zones.
#[tokio::test]
async fn one_tenant_s_hanging_sources_and_refused_servers_slow_no_zone_of_another_namespace() {
    let cluster = common::start_private(3);
    let team = common::namespace_in(cluster.kubeconfig(), "team").await;
    let other = common::namespace_in(cluster.kubeconfig(), "other").await;
    install_crds(&team.client).await;
    // 10 ports on 3 nodes: 30 host port slots in the whole cluster.
    let metrics = support::free_port();
    let addr = format!("127.0.0.1:{metrics}");
    let flags =
        ["--resolve-timeout", "5", "--concurrency", "4", "--port-range", "7000-7009", "--http-addr", addr.as_str()];
    let _op = Operator::start_with(cluster.kubeconfig(), "", &flags);
    let theirs: Api<GameZone> = other.api();
    let three = |id| {
        json!({"zoneId": id, "defaultImage": "svc:1",
               "services": [{"type": "game", "id": 1, "endId": 3, "ports": [{"name": "client", "containerPort": 7777, "policy": "Dynamic"}]}]})
    };

    // How long the other team's zone takes with the operator to itself.
    let started = Instant::now();
    theirs.create(&PostParams::default(), &zone("alone", three(1))).await.unwrap();
    let alone = ready_after(&theirs, "alone", started).await;
    theirs.delete("alone", &DeleteParams::default()).await.unwrap();
    common::wait_for("zone alone gone", Duration::from_secs(60), || async {
        match theirs.get_opt("alone").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|z| z.map(|z| z.name_any())))),
        }
    })
    .await;

    // The tenant: sixteen zones whose git server never answers, and one that asks for every
    // host port slot in a namespace whose quota allows no GameServer.
    let quota: k8s_openapi::api::core::v1::ResourceQuota = serde_json::from_value(json!({
        "metadata": {"name": "no-servers"}, "spec": {"hard": {"count/gameservers.gamezone.dev": "0"}}
    }))
    .unwrap();
    team.api().create(&PostParams::default(), &quota).await.unwrap();
    let zones = Api::namespaced(tenant(&team).await, &team.name);
    sixteen_hanging_zones(&zones).await;
    let mut hog = three(50);
    hog["services"][0]["endId"] = json!(30);
    zones.create(&PostParams::default(), &zone("hog", hog)).await.unwrap();
    let (_, _, refused) =
        condition_when(&zones, "hog", "Ready", Duration::from_secs(60), |_, _, m| m.contains("quota")).await;
    assert!(refused.len() <= 1024, "{refused}");

    // The other team's zone comes up as it did alone, its servers' ports and all.
    let started = Instant::now();
    theirs.create(&PostParams::default(), &zone("beside", three(2))).await.unwrap();
    let beside = ready_after(&theirs, "beside", started).await;
    assert!(beside <= alone + Duration::from_secs(15), "alone in {alone:?}, beside the tenant's zones in {beside:?}");
    let servers: Api<GameServer> = other.api();
    for gs in servers.list(&support::selector("beside")).await.unwrap() {
        let held = gs.status.unwrap_or_default().ports;
        assert!(held.iter().all(|p| p.host_port.is_some_and(|h| (7000..7010).contains(&h))), "{held:?}");
    }
    assert_eq!(
        Api::<GameServer>::namespaced(team.client.clone(), &team.name)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .len(),
        0
    );
    // The refused zone holds no slot: the three used are the other team's.
    let (_, text) = support::http_get(metrics, "/metrics").expect("operator metrics");
    assert!(text.contains(r#"gamezone_port_slots{range="7000-7009",state="used"} 3"#), "{text}");
    eprintln!("alone: {alone:?}; beside 16 hanging zones and a refused one: {beside:?}");
}
