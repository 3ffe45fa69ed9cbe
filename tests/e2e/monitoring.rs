//! A real Prometheus (built from its Go module by `tests/prometheus/prometheus.sh`) scrapes the
//! operator and, on the real node, the example game servers of a zone through the sample repo's
//! configuration (`examples/gamezone-repo/monitoring`): the operator's zone series and the
//! games' own carry the version labels, every dashboard query and rule evaluates, and a rollout
//! to a new image shows the old version's series giving way to the new one's. A real
//! OpenTelemetry Collector (built from its Go modules by `tests/otelcol/otelcol.sh`) runs the
//! sample repo's log pipeline over the real node's pod logs: each game server's lines carry its
//! pod's zone, type, id, version and artifacts labels, through a rollout to a new image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gamezone::api::*;
use gamezone::zone::SERVER_CONTAINER;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::ONE_AT_A_TIME;
use crate::cluster::{Cluster, GAME_SERVER_IMAGE, Ns, OPERATOR_IMAGE, RealNode};
use crate::common::wait_for;
use crate::servers::Session;
use crate::support::{Operator, free_port, install_crds};
use crate::zones::{TIMEOUT, config_repo, operator, reachable_at, service, wait_running, zone};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gamezone-repo/monitoring")
}

/// A Prometheus on loopback with the sample repo's configuration, made to fit this test: the
/// operator runs on the host (a static target, not a pod of gamezone-system), discovery reads
/// the cluster through its kubeconfig and only `namespace`, and everything runs every second.
/// With `Alerts::Fast`, every alert's `for` is two seconds: how long a condition lasts before
/// it pages someone is policy; what a test checks is that the expressions see the condition.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The shipped rules as they are, or with every alert's `for` at two seconds.
#[derive(Clone, Copy, PartialEq)]
enum Alerts {
    Shipped,
    Fast,
}

impl Prometheus {
    fn start(cluster: &Cluster, namespace: &str, operator_port: u16, alerts: Alerts) -> Prometheus {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/prometheus/prometheus.sh");
        let out = Command::new(&script).arg("bin").output().expect("run prometheus.sh");
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("prometheus");
        let shipped = std::fs::read_to_string(monitoring_dir().join("prometheus.yml")).unwrap();
        let mut config: serde_yaml::Value = serde_yaml::from_str(&shipped).unwrap();
        config["global"]["scrape_interval"] = "1s".into();
        config["global"]["evaluation_interval"] = "1s".into();
        let dir = tempfile::tempdir().unwrap();
        let mut rules = monitoring_dir().join("rules.yml");
        if alerts == Alerts::Fast {
            let mut fast: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&rules).unwrap()).unwrap();
            for group in fast["groups"].as_sequence_mut().unwrap() {
                for rule in group["rules"].as_sequence_mut().unwrap().iter_mut().filter(|r| r["alert"].is_string()) {
                    rule["for"] = "2s".into();
                }
            }
            rules = dir.path().join("rules.yml");
            std::fs::write(&rules, serde_yaml::to_string(&fast).unwrap()).unwrap();
        }
        config["rule_files"] = vec![rules.to_string_lossy().into_owned()].into();
        let jobs = config["scrape_configs"].as_sequence_mut().unwrap();
        for job in jobs.iter_mut() {
            if job["job_name"] == "gamezone-operator" {
                let mut static_job = serde_yaml::Mapping::new();
                static_job.insert("job_name".into(), "gamezone-operator".into());
                let target = format!("127.0.0.1:{operator_port}");
                static_job.insert(
                    "static_configs".into(),
                    serde_yaml::from_str(&format!("[{{targets: ['{target}']}}]")).unwrap(),
                );
                *job = static_job.into();
                continue;
            }
            for sd in job["kubernetes_sd_configs"].as_sequence_mut().unwrap() {
                sd["kubeconfig_file"] = cluster.kubeconfig.to_string_lossy().into_owned().into();
                sd["namespaces"] = serde_yaml::from_str(&format!("{{names: ['{namespace}']}}")).unwrap();
            }
        }
        let file = dir.path().join("prometheus.yml");
        std::fs::write(&file, serde_yaml::to_string(&config).unwrap()).unwrap();
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let prom = Prometheus { child, port, log, _dir: dir };
        let ready = || crate::support::http_get(port, "/-/ready").is_some_and(|(code, _)| code == 200);
        for _ in 0..300 {
            if ready() {
                return prom;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus not ready in 30 s; its log:\n{}", std::fs::read_to_string(&prom.log).unwrap_or_default());
    }

    /// An instant query's result vector, or the error Prometheus gave.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-G"])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .output()
            .map_err(|e| e.to_string())?;
        let answer: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {:?}", out.stdout))?;
        if answer["status"] != "success" {
            return Err(format!("{expr}: {answer}"));
        }
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of a query that yields one sample, once it does.
    async fn value(&self, expr: &str) -> Result<f64, String> {
        let result = self.query(expr)?;
        let [one] = result.as_slice() else { return Err(format!("{expr}: {} samples", result.len())) };
        one["value"][1].as_str().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{expr}: {one}"))
    }

    /// The alerts firing now, as (alertname, zone, type) of each.
    fn firing(&self) -> Vec<(String, String, String)> {
        let body = crate::support::http_get(self.port, "/api/v1/alerts").expect("alerts").1;
        let answer: Value = serde_json::from_str(&body).unwrap();
        let label = |a: &Value, k: &str| a["labels"][k].as_str().unwrap_or_default().to_string();
        answer["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| (label(a, "alertname"), label(a, "zone"), label(a, "type")))
            .collect()
    }

    async fn wait_value(&self, expr: &str, want: f64) {
        wait_for(&format!("{expr} == {want}"), TIMEOUT, || async {
            match self.value(expr).await {
                Ok(v) if v == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression of the dashboard, its variables set to `namespace` and `zone`, with
/// its panel's title.
fn dashboard_queries(namespace: &str, zone: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring_dir().join("dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut queries = Vec::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr").replace("$namespace", namespace).replace("$zone", zone);
            queries.push((panel["title"].as_str().unwrap().to_string(), expr));
        }
    }
    queries
}

/// Moves `zone` to the example game server's image under version `new` (the node holds it,
/// tagged from version `old`): its servers roll to it one by one.
async fn roll_to_version(cluster: &Cluster, zones: &Api<GameZone>, zone: &str, old: &str, new: &str) {
    let image = GAME_SERVER_IMAGE.replace(old, new);
    cluster.ctr(cluster.node(), &["images", "tag", "--force", GAME_SERVER_IMAGE, &image]);
    let patch = json!({"spec": {"defaultImage": image}});
    zones.patch(zone, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// What a metrics test starts from: its turn on the shared cluster (held until the end: drop
/// it last), a namespace of `prefix` with the CRDs, and the operator serving `/metrics` on the
/// returned port, its host ports in `ports`.
async fn watched_operator(
    prefix: &str,
    ports: &str,
) -> (tokio::sync::MutexGuard<'static, ()>, &'static Cluster, Ns, Operator, u16) {
    let serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let ns = Ns::new(cluster, prefix).await;
    install_crds(&ns.client).await;
    let metrics_port = free_port();
    let http = format!("127.0.0.1:{metrics_port}");
    let op = Operator::start_with(
        &cluster.kubeconfig,
        &ns.name,
        &["--init-image", OPERATOR_IMAGE, "--port-range", ports, "--http-addr", &http],
    );
    (serial, cluster, ns, op, metrics_port)
}

#[tokio::test]
async fn prometheus_sees_the_zone_and_its_games_by_version_through_a_rollout() {
    let (_serial, cluster, ns, _op, metrics_port) = watched_operator("e2e-metrics", "7150-7199").await;
    let mut game = service(
        "game",
        1,
        Some(2),
        json!([{"name": "game", "containerPort": 7777, "protocol": "TCPUDP", "policy": "Dynamic"}]),
    );
    game["metrics"] = json!({"port": 9100});
    game["resources"] = json!({"requests": {"cpu": "10m"}});
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &zone("watched", 312, vec![game], json!([]))).await.unwrap();
    let servers = wait_running(&ns, "watched").await;
    let prom = Prometheus::start(cluster, &ns.name, metrics_port, Alerts::Shipped);
    // A player on each server, and a request each.
    let mut sessions = Vec::new();
    for gs in &servers {
        let (addr, port) = reachable_at(gs, "game");
        let mut s = wait_for("a session", TIMEOUT, || async { Session::open(&addr, port) }).await;
        s.hello().expect("hello");
        sessions.push(s);
    }

    let (n, z) = (ns.name.as_str(), "watched");
    let old = "0.1.0";
    prom.wait_value(
        &format!(r#"sum(gamezone_servers{{namespace="{n}",zone="{z}",state="Ready",version="{old}"}})"#),
        2.0,
    )
    .await;
    prom.wait_value(&format!(r#"sum(gamezone_servers_desired{{namespace="{n}",zone="{z}"}})"#), 2.0).await;
    // The game's own series, with the labels of the server that served them.
    prom.wait_value(&format!(r#"sum(game_players{{namespace="{n}",zone="{z}",type="game",version="{old}"}})"#), 2.0)
        .await;
    prom.wait_value(&format!(r#"count(game_requests_total{{zone="{z}",version="{old}",request="hello"}} >= 1)"#), 2.0)
        .await;
    let ids: Vec<String> = prom
        .query(&format!(r#"game_ticks_total{{namespace="{n}",zone="{z}"}}"#))
        .unwrap()
        .iter()
        .map(|s| s["metric"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");

    // Every dashboard query and every rule evaluates; those over series a running zone has return data.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A panel has data when one of its queries has (none drains here, say, but their age shows 0).
    let may_be_empty = ["Migrations and re-pins", "Restarts"];
    let mut with_data = std::collections::BTreeMap::<String, bool>::new();
    for (title, expr) in dashboard_queries(n, z) {
        let result = prom.query(&expr).unwrap_or_else(|e| panic!("panel {title:?}: {e}"));
        *with_data.entry(title).or_default() |= !result.is_empty();
    }
    let empty: Vec<_> = with_data.iter().filter(|(t, has)| !**has && !may_be_empty.contains(&t.as_str())).collect();
    assert!(empty.is_empty(), "panels without data: {empty:?}");
    let rules = crate::support::http_get(prom.port, "/api/v1/rules").expect("rules").1;
    let rules: Value = serde_json::from_str(&rules).unwrap();
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 2, "{rules}");
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        assert_eq!(rule["health"], "ok", "{rule}");
        prom.query(rule["query"].as_str().unwrap()).unwrap_or_else(|e| panic!("rule {}: {e}", rule["name"]));
    }

    // A new image version: the node holds it under a new tag. The servers move to it one by
    // one; the old version's series go to zero, the new one's rise.
    let new = "0.1.1";
    roll_to_version(cluster, &zones, "watched", old, new).await;
    prom.wait_value(
        &format!(r#"sum(gamezone_servers{{namespace="{n}",zone="{z}",state="Ready",version="{new}"}})"#),
        2.0,
    )
    .await;
    prom.wait_value(
        &format!(r#"sum(gamezone_servers{{namespace="{n}",zone="{z}",version="{old}"}}) or vector(0)"#),
        0.0,
    )
    .await;
    prom.wait_value(&format!(r#"count(game_ticks_total{{namespace="{n}",zone="{z}",version="{new}"}})"#), 2.0).await;
    prom.wait_value(
        &format!(r#"count(game_ticks_total{{namespace="{n}",zone="{z}",version="{old}"}}) or vector(0)"#),
        0.0,
    )
    .await;
    drop(sessions);
    ns.finish().await;
}

/// The shipped alerts fire on a live zone, through the shipped scrape configuration: a
/// migration that fails (`GameZoneMigrationFailed`) and a drain held past its `drainTimeout`
/// (`GameZoneDrainOverdue`: here a foreign finalizer keeps the deleted server), and each stops
/// firing once its cause is gone.
#[tokio::test]
async fn the_shipped_alerts_fire_for_a_failed_migration_and_a_drain_stuck_past_its_timeout() {
    let (_serial, cluster, ns, _op, metrics_port) = watched_operator("e2e-alerts", "7000-7049").await;
    let prom = Prometheus::start(cluster, &ns.name, metrics_port, Alerts::Fast);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();

    // A migrater that fails at once (the game server's image, refusing its argument).
    let mut broken = zone("broken", 401, vec![service("game", 1, None, json!([]))], json!([]));
    let mut migration = crate::cluster::on_real_node();
    migration["image"] = json!(GAME_SERVER_IMAGE);
    migration["args"] = json!(["--no-such-flag"]);
    migration["backoffLimit"] = json!(0);
    broken.spec.migration = Some(serde_json::from_value(migration).unwrap());
    zones.create(&PostParams::default(), &broken).await.unwrap();

    // A zone of two servers whose players never leave (a deletable gate no one opens) and
    // whose drains last a second: scaled down, the second is drained and deleted at its
    // timeout, and then kept by a finalizer no one removes.
    let game = |end: Option<i64>| {
        let mut game = service("game", 1, end, json!([]));
        game["deletableGates"] = json!(["NoPlayers"]);
        game["drainTimeout"] = json!("1s");
        game
    };
    zones.create(&PostParams::default(), &zone("held", 402, vec![game(Some(2))], json!([]))).await.unwrap();
    wait_running(&ns, "held").await;
    let hold = json!({"metadata": {"finalizers": ["e2e.gamezone.dev/hold"]}});
    servers.patch("held-game-2", &PatchParams::default(), &Patch::Merge(&hold)).await.unwrap();
    let shrink = json!({"spec": {"services": [game(None)]}});
    zones.patch("held", &PatchParams::default(), &Patch::Merge(&shrink)).await.unwrap();

    let fires = |name: &str, zone: &str| (name.to_string(), zone.to_string());
    let want = [fires("GameZoneMigrationFailed", "broken"), fires("GameZoneDrainOverdue", "held")];
    let firing = || prom.firing().into_iter().map(|(name, zone, _)| (name, zone)).collect::<Vec<_>>();
    wait_for("both alerts firing", TIMEOUT, || async {
        let now = firing();
        if want.iter().all(|w| now.contains(w)) {
            return Ok(());
        }
        let held = servers.get_opt("held-game-2").await.map_err(|e| e.to_string())?;
        let overdue = prom.query(&format!(r#"gamezone_drains_overdue{{namespace="{}"}}"#, ns.name));
        Err(format!("firing: {now:?}; held-game-2: {held:?}; overdue: {overdue:?}"))
    })
    .await;
    let now = prom.firing();
    assert!(now.contains(&("GameZoneDrainOverdue".into(), "held".into(), "game".into())), "{now:?}");
    // Nothing else is wrong with these zones: no other alert of the rules fires for them.
    let others: Vec<_> = now.iter().filter(|(name, _, _)| !want.iter().any(|w| &w.0 == name)).collect();
    assert!(others.iter().all(|(name, _, _)| name == "GameZoneNotReady"), "unexpected alerts: {others:?}");

    // The causes gone (the finalizer off; the migration taken out of the zone), each stops firing.
    let free = json!({"metadata": {"finalizers": null}});
    servers.patch("held-game-2", &PatchParams::default(), &Patch::Merge(&free)).await.unwrap();
    zones.patch("broken", &PatchParams::default(), &Patch::Merge(json!({"spec": {"migration": null}}))).await.unwrap();
    wait_for("both alerts resolved", TIMEOUT, || async {
        let now = firing();
        if want.iter().any(|w| now.contains(w)) { Err(format!("firing: {now:?}")) } else { Ok(()) }
    })
    .await;
    ns.finish().await;
}

// ------------------------------------------------------------------ logs

/// An OpenTelemetry Collector on the host (built from its Go modules by
/// `tests/otelcol/otelcol.sh`) running the sample repo's log pipeline, made to fit this test only
/// where it must (see [`collector_config`]).
struct Collector {
    child: Child,
    log: PathBuf,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Collector {
    /// Starts it on `node`'s pod logs, reading the cluster as `kubeconfig` allows; returns once
    /// its pipeline runs.
    fn start(node: &RealNode, kubeconfig: &Path) -> Collector {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/otelcol/otelcol.sh");
        let out = Command::new(&script).arg("bin").output().expect("run otelcol.sh");
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("otelcol");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("logs.jsonl");
        let file = dir.path().join("otel-collector.yaml");
        std::fs::write(&file, serde_yaml::to_string(&collector_config(&node.pod_logs, &out)).unwrap()).unwrap();
        let log = dir.path().join("otelcol.log");
        let child = Command::new(bin)
            .arg(format!("--config={}", file.display()))
            .env("KUBECONFIG", kubeconfig)
            .env("K8S_NODE_NAME", &node.name)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start otelcol");
        let mut collector = Collector { child, log, out, _dir: dir };
        for _ in 0..300 {
            if collector.log().contains("Everything is ready") {
                return collector;
            }
            if let Ok(Some(status)) = collector.child.try_wait() {
                panic!("otelcol exited ({status}) before it was ready; its log:\n{}", collector.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("otelcol not ready in 30 s; its log:\n{}", collector.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every log record the file exporter has written so far (whole lines only: it may be
    /// writing the last one).
    fn records(&self) -> Vec<Record> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut records = Vec::new();
        for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
            let batch: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("the file exporter wrote {line:?}: {e}"));
            for resource_logs in batch["resourceLogs"].as_array().into_iter().flatten() {
                let resource = attributes(&resource_logs["resource"]["attributes"]);
                for scope_logs in resource_logs["scopeLogs"].as_array().into_iter().flatten() {
                    for record in scope_logs["logRecords"].as_array().into_iter().flatten() {
                        let body = record["body"]["stringValue"].as_str().unwrap_or_default().to_string();
                        records.push(Record { resource: resource.clone(), body });
                    }
                }
            }
        }
        records
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failed test's reader needs what the collector said: its files go with it.
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("[otelcol] {} records exported; the end of its log:\n{}", self.records().len(), tail.join("\n"));
        }
    }
}

/// One log line as the collector exported it: its resource's attributes and the line.
#[derive(Debug)]
struct Record {
    resource: BTreeMap<String, String>,
    body: String,
}

impl Record {
    fn attr(&self, key: &str) -> Option<&str> {
        self.resource.get(key).map(String::as_str)
    }

    /// The line as the example game server's JSON log writes it.
    fn event(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

/// OTLP JSON attributes (`[{key, value: {stringValue | intValue | ...}}]`) as strings.
fn attributes(list: &Value) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for kv in list.as_array().into_iter().flatten() {
        let Some(key) = kv["key"].as_str() else { continue };
        let value = match kv["value"].as_object().and_then(|v| v.values().next()) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => continue,
        };
        map.insert(key.to_string(), value);
    }
    map
}

/// The sample repo's `otel-collector.yaml`, changed only where this host differs from a node
/// agent in a cluster: the pod logs of the real node (its kubelet's `/var/log/pods`, seen from
/// the host), the cluster reached through a kubeconfig (`KUBECONFIG`) instead of the pod's
/// ServiceAccount, the records written to `out` as JSON lines instead of an OTLP endpoint, and
/// no listener for the collector's own metrics (another one may hold its default port).
fn collector_config(pod_logs: &Path, out: &Path) -> serde_yaml::Value {
    let shipped = std::fs::read_to_string(monitoring_dir().join("otel-collector.yaml")).unwrap();
    let mut config: serde_yaml::Value = serde_yaml::from_str(&shipped).unwrap();
    let include = &mut config["receivers"]["filelog"]["include"];
    assert_eq!(*include, serde_yaml::from_str::<serde_yaml::Value>("[/var/log/pods/*/*/*.log]").unwrap());
    *include = vec![format!("{}/*/*/*.log", pod_logs.display())].into();
    config["processors"]["k8sattributes"]["auth_type"] = "kubeConfig".into();
    config["exporters"]["file"] = serde_yaml::from_str(&format!("{{path: '{}'}}", out.display())).unwrap();
    config["service"]["pipelines"]["logs"]["exporters"] = vec!["file"].into();
    config["service"]["telemetry"] = serde_yaml::from_str("{metrics: {level: none}}").unwrap();
    config
}

/// The shipped DaemonSet's documents.
fn daemonset_docs() -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(monitoring_dir().join("otel-collector-daemonset.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect()
}

/// The shipped DaemonSet's identity in this test: a ServiceAccount in `namespace` bound to the
/// shipped ClusterRole (under a name of this test's own); a kubeconfig with its token in `dir`.
/// Dropped, it deletes the cluster-wide objects (the namespace takes the ServiceAccount).
struct CollectorIdentity {
    cluster: &'static Cluster,
    name: String,
    kubeconfig: PathBuf,
}

impl CollectorIdentity {
    fn create(cluster: &'static Cluster, namespace: &str, dir: &Path) -> CollectorIdentity {
        let docs = daemonset_docs();
        let kind = |k: &str| {
            docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k} in the DaemonSet file")).clone()
        };
        let name = format!("{namespace}-otel-collector");
        let mut account = kind("ServiceAccount");
        account["metadata"]["namespace"] = namespace.into();
        let mut role = kind("ClusterRole");
        role["metadata"]["name"] = name.as_str().into();
        let mut binding = kind("ClusterRoleBinding");
        binding["metadata"]["name"] = name.as_str().into();
        binding["roleRef"]["name"] = name.as_str().into();
        binding["subjects"][0]["namespace"] = namespace.into();
        let file = dir.join("collector-rbac.yaml");
        let text: Vec<String> = [account, role, binding].iter().map(|d| serde_yaml::to_string(d).unwrap()).collect();
        std::fs::write(&file, text.join("---\n")).unwrap();
        cluster.kubectl(&["apply", "-f", &file.to_string_lossy()]);
        let mut identity = CollectorIdentity { cluster, name, kubeconfig: PathBuf::new() };
        let sa = kind("ServiceAccount")["metadata"]["name"].as_str().unwrap().to_string();
        let token = cluster.kubectl(&["create", "token", &sa, "-n", namespace, "--duration", "1h"]);
        identity.kubeconfig = crate::common::token_kubeconfig(&cluster.kubeconfig, token.trim(), dir);
        identity
    }
}

impl Drop for CollectorIdentity {
    fn drop(&mut self) {
        let _ = Command::new(crate::common::cp_script())
            .arg("kubectl")
            .arg(&self.cluster.dir)
            .args(["delete", "--ignore-not-found", "clusterrole,clusterrolebinding", &self.name])
            .output();
    }
}

/// The zone's pods.
async fn pods_of(ns: &Ns, zone: &str) -> Vec<Pod> {
    ns.api::<Pod>().list(&crate::support::selector(zone)).await.unwrap().items
}

/// Waits until each of `pods` has its `message` line from the game in the collector's output;
/// each such line must carry, as resource attributes, the labels of the pod that wrote it.
async fn wait_lines(collector: &Collector, ns: &str, pods: &[Pod], message: &str) {
    let names: Vec<String> = pods.iter().map(|p| p.name_any()).collect();
    wait_for(&format!("a {message:?} line from each of {names:?}"), TIMEOUT, || async {
        let records = collector.records();
        let mut missing = Vec::new();
        for pod in pods {
            let name = pod.name_any();
            let uid = pod.metadata.uid.as_deref();
            let Some(record) = records.iter().find(|r| {
                r.attr("k8s.pod.uid") == uid
                    && r.attr("k8s.container.name") == Some(SERVER_CONTAINER)
                    && r.event().is_some_and(|e| e["message"] == message)
            }) else {
                missing.push(name);
                continue;
            };
            for (attribute, label) in [
                ("zone", ZONE_LABEL),
                ("type", TYPE_LABEL),
                ("id", ID_LABEL),
                ("version", VERSION_LABEL),
                ("artifacts", ARTIFACTS_LABEL),
            ] {
                let want = pod.labels().get(label).unwrap_or_else(|| panic!("{name} has no label {label}"));
                assert_eq!(record.attr(attribute), Some(want.as_str()), "{attribute} of {name}'s line {record:?}");
            }
            assert_eq!(record.attr("k8s.namespace.name"), Some(ns), "{record:?}");
            assert_eq!(record.attr("k8s.pod.name"), Some(name.as_str()), "{record:?}");
            // Where the game's line names its server itself, it is the one the labels name.
            let event = record.event().unwrap_or_default();
            if let Some(zone) = event["zone"].as_str() {
                let id = event["id"].as_i64().map(|id| id.to_string());
                assert_eq!(
                    (Some(zone), event["type"].as_str(), id.as_deref()),
                    (record.attr("zone"), record.attr("type"), record.attr("id")),
                    "{record:?}"
                );
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("none yet from {missing:?} among {} records", records.len()))
        }
    })
    .await
}

#[tokio::test]
async fn the_collector_labels_each_game_log_line_with_its_server_and_version_through_a_rollout() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let work = tempfile::tempdir().unwrap();
    let (git, _) = config_repo(cluster, work.path(), "logs e2e");
    let ns = Ns::new(cluster, "e2e-logs").await;
    install_crds(&ns.client).await;
    // The DaemonSet's identity: the collector sees the cluster as the shipped RBAC lets it.
    let identity = CollectorIdentity::create(cluster, &ns.name, work.path());
    // Started before the zone, it reads each of the zone's pod logs from its first line.
    let collector = Collector::start(cluster.node(), &identity.kubeconfig);
    let _op = operator(cluster, &ns, "7050-7099");
    let mut game = service(
        "game",
        1,
        Some(2),
        json!([{"name": "game", "containerPort": 7777, "protocol": "TCPUDP", "policy": "Dynamic"}]),
    );
    game["resources"] = json!({"requests": {"cpu": "10m"}});
    let artifacts = json!([{"path": "/app/artifacts", "git": {"url": git.url("config"), "branch": "main"}}]);
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &zone("logged", 313, vec![game], artifacts)).await.unwrap();
    wait_running(&ns, "logged").await;

    // Each server's first line, with the labels of its pod (the version among them).
    let old = "0.1.0";
    let old_pods = pods_of(&ns, "logged").await;
    assert_eq!(old_pods.len(), 2);
    for pod in &old_pods {
        assert_eq!(pod.labels().get(VERSION_LABEL).map(String::as_str), Some(old), "{}", pod.name_any());
    }
    wait_lines(&collector, &ns.name, &old_pods, "starting").await;

    // A new image version: each new pod's lines carry the new version, and each old server's
    // last words (on SIGTERM) still the old one.
    let new = "0.1.1";
    roll_to_version(cluster, &zones, "logged", old, new).await;
    let new_pods = wait_for(&format!("two pods of version {new}"), TIMEOUT, || async {
        let pods = pods_of(&ns, "logged").await;
        let moved = pods.len() == 2
            && pods.iter().all(|p| {
                p.labels().get(VERSION_LABEL).map(String::as_str) == Some(new)
                    && p.metadata.deletion_timestamp.is_none()
            });
        if moved {
            Ok(pods)
        } else {
            Err(format!(
                "{:?}",
                pods.iter().map(|p| (p.name_any(), p.labels().get(VERSION_LABEL).cloned())).collect::<Vec<_>>()
            ))
        }
    })
    .await;
    wait_running(&ns, "logged").await;
    wait_lines(&collector, &ns.name, &new_pods, "starting").await;
    wait_lines(&collector, &ns.name, &old_pods, "shutting down").await;

    // The filter kept the game servers' lines only, and the shipped RBAC was enough.
    let records = collector.records();
    let unlabelled: Vec<&Record> = records.iter().filter(|r| r.attr("zone").is_none()).collect();
    assert!(unlabelled.is_empty(), "lines without a zone passed the filter: {unlabelled:?}");
    let log = collector.log();
    assert!(!log.to_lowercase().contains("forbidden"), "the shipped ClusterRole denied the collector:\n{log}");
    drop(collector);
    drop(identity);
    ns.finish().await;
}
