//! A real Prometheus (built from its Go module by `tests/prometheus/prometheus.sh`) scrapes the
//! operator and, on the real node, the example game servers of a zone through the sample repo's
//! configuration (`examples/gamezone-repo/monitoring`): the operator's zone series and the
//! games' own carry the version labels, every dashboard query and rule evaluates, and a rollout
//! to a new image shows the old version's series giving way to the new one's.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gamezone::api::*;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::ONE_AT_A_TIME;
use crate::cluster::{Cluster, GAME_SERVER_IMAGE, Ns, OPERATOR_IMAGE};
use crate::common::wait_for;
use crate::servers::Session;
use crate::support::{Operator, free_port, install_crds};
use crate::zones::{TIMEOUT, reachable_at, service, wait_running, zone};

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gamezone-repo/monitoring")
}

/// A Prometheus on loopback with the sample repo's configuration, made to fit this test: the
/// operator runs on the host (a static target, not a pod of gamezone-system), discovery reads
/// the cluster through its kubeconfig and only `namespace`, and everything runs every second.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(cluster: &Cluster, namespace: &str, operator_port: u16) -> Prometheus {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/prometheus/prometheus.sh");
        let out = Command::new(&script).arg("bin").output().expect("run prometheus.sh");
        assert!(out.status.success(), "{}: {}", script.display(), String::from_utf8_lossy(&out.stderr));
        let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("prometheus");
        let shipped = std::fs::read_to_string(monitoring_dir().join("prometheus.yml")).unwrap();
        let mut config: serde_yaml::Value = serde_yaml::from_str(&shipped).unwrap();
        config["global"]["scrape_interval"] = "1s".into();
        config["global"]["evaluation_interval"] = "1s".into();
        config["rule_files"] = vec![monitoring_dir().join("rules.yml").to_string_lossy().into_owned()].into();
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
        let dir = tempfile::tempdir().unwrap();
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

#[tokio::test]
async fn prometheus_sees_the_zone_and_its_games_by_version_through_a_rollout() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let ns = Ns::new(cluster, "e2e-metrics").await;
    install_crds(&ns.client).await;
    let metrics_port = free_port();
    let http = format!("127.0.0.1:{metrics_port}");
    let _op = Operator::start_with(
        &cluster.kubeconfig,
        &ns.name,
        &["--init-image", OPERATOR_IMAGE, "--port-range", "7150-7199", "--http-addr", &http],
    );
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
    let prom = Prometheus::start(cluster, &ns.name, metrics_port);
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
    let image = GAME_SERVER_IMAGE.replace(old, new);
    cluster.ctr(cluster.node(), &["images", "tag", "--force", GAME_SERVER_IMAGE, &image]);
    zones
        .patch("watched", &PatchParams::default(), &Patch::Merge(json!({"spec": {"defaultImage": image}})))
        .await
        .unwrap();
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
