//! Operator throughput on the local control plane, beside a plain client in the same run.
//!
//! 1. Apply → Ready for one zone of 50 instances.
//! 2. 200 zones × 10 instances on 50 simulated nodes: instances made Ready per second by the
//!    operator, and by a plain client creating the same objects (GameServers, Pods, Services,
//!    ConfigMaps) as fast as it can against the same control plane.
//! 3. The operator's peak memory.
//!
//! `cargo bench -p gamezone --bench zone`; sizes via GAMEZONE_BENCH_ZONES / _INSTANCES / _NODES;
//! the operator's log goes to the file GAMEZONE_BENCH_LOG at GAMEZONE_BENCH_LOG_LEVEL (`warn`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use gamezone::api::*;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn zone(name: &str, instances: usize) -> GameZone {
    serde_json::from_value(json!({
        "apiVersion": "gamezone.dev/v1alpha1", "kind": "GameZone", "metadata": {"name": name},
        "spec": {"zoneId": 1, "defaultImage": "svc:1",
                 "services": [{"type": "game", "id": 1, "endId": instances, "ports": [{"name": "client", "containerPort": 7777}]}]}
    }))
    .unwrap()
}

async fn namespace(client: &Client, name: &str) {
    let ns: Namespace =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.unwrap();
}

/// Waits until `want` objects in `ns` pass `ready`, watching (not polling lists, which would load
/// the API server the run measures); returns the time it took from `start`.
async fn until_ready<K>(client: &Client, ns: &str, want: usize, start: Instant, ready: fn(&K) -> bool) -> Duration
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + 'static,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut seen = std::collections::HashSet::new();
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.try_next().await.unwrap() {
        if let watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) = event
            && ready(&obj)
        {
            seen.insert(obj.name_any());
            if seen.len() >= want {
                break;
            }
        }
    }
    start.elapsed()
}

/// Waits until the garbage collector watches `resources` (of gamezone.dev), as it does in any
/// cluster whose CRDs were installed before its zones. It finds new kinds only at its next
/// discovery, up to 30 s after the CRDs; until then it GETs the owner of every object it meets
/// (each GameServer's zone, each pod's server), work that would load the run and no real one.
async fn until_collector_watches(client: &Client, resources: &[&str]) {
    eprintln!("waiting for the garbage collector to watch {} (up to 30 s after the CRDs)", resources.join(", "));
    let start = Instant::now();
    loop {
        let req = axum::http::Request::get("/metrics").body(Vec::new()).unwrap();
        let metrics = client.request_text(req).await.unwrap();
        // Controllers in this run watch one namespace; the collector watches the whole cluster.
        let watched = |r: &&str| {
            metrics.lines().any(|l| {
                l.starts_with("apiserver_longrunning_requests{")
                    && l.contains("group=\"gamezone.dev\"")
                    && l.contains(&format!("resource=\"{r}\""))
                    && l.contains("scope=\"cluster\"")
                    && l.contains("verb=\"WATCH\"")
                    && !l.ends_with(" 0")
            })
        };
        if resources.iter().all(watched) {
            eprintln!("  after {:.0} s", start.elapsed().as_secs_f64());
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the garbage collector never watched {resources:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn server_ready(g: &GameServer) -> bool {
    g.status.as_ref().and_then(|s| s.state) == Some(ServerState::Ready)
}

/// CPU seconds (user + system) `pid` has used so far; 0 once it is gone.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; 100 ticks/s.
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// CPU seconds used so far by each process of `procs`.
fn cpu_of(procs: &[(String, u32)]) -> Vec<f64> {
    procs.iter().map(|(_, pid)| cpu_secs(*pid)).collect()
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The plain client: the objects the operator would make for the zones, created as fast as it
/// can. Each pod is the one the operator makes for its server (ports, env, owner reference), so
/// it follows its GameServer's creation.
async fn plain_client(client: &Client, ns: &str, zones: usize, instances: usize) -> Duration {
    let start = Instant::now();
    let cfg = gamezone::zone::BuildConfig::default();
    let (servers, pods, services, maps): (Api<GameServer>, Api<Pod>, Api<Service>, Api<ConfigMap>) = (
        Api::namespaced(client.clone(), ns),
        Api::namespaced(client.clone(), ns),
        Api::namespaced(client.clone(), ns),
        Api::namespaced(client.clone(), ns),
    );
    let mut work = Vec::new();
    for z in 0..zones {
        let mut gz = zone(&format!("p{z}"), instances);
        gz.metadata.namespace = Some(ns.to_string());
        work.extend(
            gamezone::zone::game_servers(&gz, &[], &cfg).unwrap().into_iter().map(|gs| Plain::Server(Box::new(gs))),
        );
        work.extend(gamezone::zone::services(&gz).into_iter().map(|s| Plain::Service(Box::new(s))));
        work.push(Plain::Map(Box::new(gamezone::zone::topology(&gz, &Default::default()))));
    }
    let pp = PostParams::default();
    futures::stream::iter(work)
        .map(|obj| {
            let (servers, pods, services, maps, pp) = (&servers, &pods, &services, &maps, &pp);
            async move {
                match obj {
                    Plain::Server(gs) => {
                        let gs = servers.create(pp, &gs).await?;
                        let pod = gamezone::controller::pod_without_host_ports(&gs).expect("a pod for the server");
                        pods.create(pp, &pod).await.map(|_| ())
                    }
                    Plain::Service(s) => services.create(pp, &s).await.map(|_| ()),
                    Plain::Map(m) => maps.create(pp, &m).await.map(|_| ()),
                }
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    until_ready(client, ns, zones * instances, start, pod_ready).await
}

/// What the plain client creates.
enum Plain {
    Server(Box<GameServer>),
    Service(Box<Service>),
    Map(Box<ConfigMap>),
}

#[tokio::main]
async fn main() {
    let zones = env_or("GAMEZONE_BENCH_ZONES", 200);
    let instances = env_or("GAMEZONE_BENCH_INSTANCES", 10);
    let nodes = env_or("GAMEZONE_BENCH_NODES", 50);
    let big = env_or("GAMEZONE_BENCH_BIG_ZONE", 50);
    eprintln!("starting a control plane with {nodes} simulated nodes");
    let cluster = common::start_private(nodes);
    let client = cluster.client().await;
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds() {
        crd_api.patch(&crd.name_any(), &PatchParams::apply("bench").force(), &Patch::Apply(&crd)).await.unwrap();
    }
    until_collector_watches(&client, &["gamezones", "gameservers"]).await;
    namespace(&client, "bench-op").await;
    namespace(&client, "bench-plain").await;

    let mut op = Command::new(env!("CARGO_BIN_EXE_gamezone"))
        .args([
            "run",
            "--namespace",
            "bench-op",
            "--http-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--concurrency",
            "32",
        ])
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .env("RUST_LOG", std::env::var("GAMEZONE_BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("GAMEZONE_BENCH_LOG") {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("create GAMEZONE_BENCH_LOG")),
            None => Stdio::null(),
        })
        .spawn()
        .expect("start the operator");
    let pid = op.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Where the CPU goes in each phase: the control plane's processes, the operator, this process
    // (the plain client and the Ready counting).
    let mut procs = cluster.processes();
    procs.push(("gamezone".into(), pid));
    procs.push(("bench".into(), std::process::id()));

    // 1. One big zone.
    let zapi: Api<GameZone> = Api::namespaced(client.clone(), "bench-op");
    let start = Instant::now();
    zapi.create(&PostParams::default(), &zone("big", big)).await.unwrap();
    loop {
        let z = zapi.get("big").await.unwrap();
        if z.status.as_ref().is_some_and(|s| s.phase == Some(ZonePhase::Running)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let big_time = start.elapsed();

    // 2. Many zones, operator then plain client, on the same control plane.
    let cpu_start = cpu_of(&procs);
    eprintln!("operator: creating {zones} zones of {instances} instances");
    let start = Instant::now();
    futures::stream::iter(0..zones)
        .map(|z| {
            let zapi = zapi.clone();
            async move { zapi.create(&PostParams::default(), &zone(&format!("z{z}"), instances)).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let op_time = until_ready(&client, "bench-op", zones * instances + big, start, server_ready).await;
    let op_rss = peak_rss_mib(pid);
    let cpu_op = cpu_of(&procs);
    let _ = op.kill();
    let _ = op.wait();
    let cpu_plain_start = cpu_of(&procs);
    eprintln!("operator: done in {:.1} s; plain client: creating the same objects", op_time.as_secs_f64());
    let plain_time = plain_client(&client, "bench-plain", zones, instances).await;
    let cpu_plain = cpu_of(&procs);

    let n = (zones * instances) as f64;
    let op_rate = n / op_time.as_secs_f64();
    let plain_rate = n / plain_time.as_secs_f64();
    println!("one zone of {big} instances, apply -> Running: {:.2} s", big_time.as_secs_f64());
    println!("{zones} zones x {instances} instances on {nodes} nodes:");
    println!("  operator:     {:>8.1} instances Ready/s ({:.1} s)", op_rate, op_time.as_secs_f64());
    println!("  plain client: {:>8.1} instances Ready/s ({:.1} s)", plain_rate, plain_time.as_secs_f64());
    println!("  ratio operator/plain: {:.2} (goal >= 0.70)", op_rate / plain_rate);
    println!("operator peak RSS: {op_rss:.1} MiB");
    println!("CPU seconds per 1000 instances:  {:>8} {:>8}", "operator", "plain");
    let per_k = 1000.0 / n;
    let (mut total_op, mut total_plain) = (0.0, 0.0);
    for (i, (name, _)) in procs.iter().enumerate() {
        let o = (cpu_op[i] - cpu_start[i]) * per_k;
        let p = if name == "gamezone" { 0.0 } else { (cpu_plain[i] - cpu_plain_start[i]) * per_k };
        (total_op, total_plain) = (total_op + o, total_plain + p);
        println!("  {name:<28} {o:>8.1} {p:>8.1}");
    }
    println!("  {:<28} {total_op:>8.1} {total_plain:>8.1}", "total");
}
