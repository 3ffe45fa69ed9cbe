//! Operator throughput on the local control plane, beside a plain client in the same run.
//!
//! 1. Apply → Ready for one zone of 50 instances.
//! 2. 200 zones × 10 instances on 50 simulated nodes: instances made Ready per second by the
//!    operator, and by a plain client creating the same objects (GameServers, Pods, Services,
//!    ConfigMaps) as fast as it can against the same control plane, ending where the operator
//!    does: each GameServer's status says Ready once its pod is. Beside them, the same client
//!    creating the objects only (no GameServer ever shows a state). Each side runs once per
//!    round, in turns (operator, plain, create-only; create-only, plain, operator; ...), and the
//!    rates are taken over all of a side's phases: one phase swings by up to a quarter with the
//!    machine. A short unmeasured turn of each side comes first, and each phase's objects are
//!    deleted before the next starts.
//! 3. The operator's peak memory.
//!
//! `cargo bench -p gamezone --bench zone`; sizes via GAMEZONE_BENCH_ZONES / _INSTANCES / _NODES,
//! rounds via GAMEZONE_BENCH_ROUNDS (2); the operator's log goes to the file GAMEZONE_BENCH_LOG
//! at GAMEZONE_BENCH_LOG_LEVEL (`warn`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use gamezone::api::*;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
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
/// can, ending as the operator leaves them. Each pod is the one the operator makes for its server
/// (ports, env, owner reference), so it follows its GameServer's creation. With `report`, once
/// the pod is Ready the GameServer's status says so, as the operator's does, and instances count
/// as Ready as the operator's do: by their GameServer's state. Without, by their pods.
async fn plain_client(client: &Client, ns: &str, zones: usize, instances: usize, report: bool) -> Duration {
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
    let n = zones * instances;
    // Each GameServer as created (its resourceVersion with it), for its status.
    let created: Mutex<HashMap<String, GameServer>> = Mutex::default();
    let pp = PostParams::default();
    let create = futures::stream::iter(work)
        .map(|obj| {
            let (servers, pods, services, maps, pp, created) = (&servers, &pods, &services, &maps, &pp, &created);
            async move {
                match obj {
                    Plain::Server(gs) => {
                        let gs = servers.create(pp, &gs).await?;
                        let pod = gamezone::controller::pod_without_host_ports(&gs).expect("a pod for the server");
                        created.lock().unwrap().insert(gs.name_any(), gs);
                        pods.create(pp, &pod).await.map(|_| ())
                    }
                    Plain::Service(s) => services.create(pp, &s).await.map(|_| ()),
                    Plain::Map(m) => maps.create(pp, &m).await.map(|_| ()),
                }
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>();
    if !report {
        let (made, time) = tokio::join!(create, until_ready(client, ns, n, start, pod_ready));
        made.unwrap();
        return time;
    }
    let report = watcher(pods.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .try_filter_map(|pod| {
            let gs = if pod_ready(&pod) { created.lock().unwrap().remove(&pod.name_any()) } else { None };
            futures::future::ok(gs.map(|gs| (gs, pod)))
        })
        .map_err(|e| e.to_string())
        .map_ok(|(mut gs, pod)| {
            let servers = &servers;
            async move {
                gs.status = Some(gamezone::controller::ready_status(&gs, &pod).expect("a status for the server"));
                servers
                    .replace_status(&gs.name_any(), &PostParams::default(), &gs)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .try_buffer_unordered(64)
        .take(n)
        .try_collect::<Vec<_>>();
    let (made, reported, time) = tokio::join!(create, report, until_ready(client, ns, n, start, server_ready));
    made.unwrap();
    reported.unwrap();
    time
}

/// What the plain client creates.
enum Plain {
    Server(Box<GameServer>),
    Service(Box<Service>),
    Map(Box<ConfigMap>),
}

/// Deletes what a phase made and waits until it is gone and the cluster has settled, so every
/// phase starts from the same cluster: the simulated kubelet's cost per pod grows with the pods
/// already on its nodes.
async fn clear(client: &Client, side: Side, ns: &str, zones: &[String]) {
    let start = Instant::now();
    let gone = || async {
        match side {
            Side::Operator => {
                // The big zone stays; everything else in the namespace was this phase's.
                let lp = ListParams::default().labels("gamezone.dev/zone!=big");
                let servers = Api::<GameServer>::namespaced(client.clone(), ns).list_metadata(&lp).await.unwrap();
                let pods = Api::<Pod>::namespaced(client.clone(), ns).list_metadata(&lp).await.unwrap();
                servers.items.is_empty() && pods.items.is_empty()
            }
            Side::Plain | Side::Bare => Api::<Namespace>::all(client.clone()).get_opt(ns).await.unwrap().is_none(),
        }
    };
    match side {
        Side::Operator => {
            let zapi: Api<GameZone> = Api::namespaced(client.clone(), ns);
            each_zone(zones, |z| {
                let zapi = zapi.clone();
                async move { zapi.delete(z, &DeleteParams::default()).await.map(|_| ()) }
            })
            .await;
        }
        Side::Plain | Side::Bare => {
            Api::<Namespace>::all(client.clone()).delete(ns, &DeleteParams::default()).await.unwrap();
        }
    }
    while !gone().await {
        assert!(start.elapsed() < Duration::from_secs(600), "{ns}: the phase's objects were not gone in 10 min");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The garbage collector, endpoint controllers and kwok finish behind the deletions.
    tokio::time::sleep(SETTLE).await;
    eprintln!("  cleared in {:.0} s", start.elapsed().as_secs_f64());
}

/// Quiet time after a phase's objects are gone.
const SETTLE: Duration = Duration::from_secs(5);

/// Runs `call` for each of the zones `names`, 32 at a time, as a client creating or deleting
/// many zones would.
async fn each_zone<'a, F, Fut>(names: &'a [String], call: F)
where
    F: FnMut(&'a String) -> Fut,
    Fut: std::future::Future<Output = kube::Result<()>>,
{
    futures::stream::iter(names).map(call).buffer_unordered(32).try_collect::<Vec<_>>().await.unwrap();
}

/// Where a phase of `side` puts its objects, and the names of its `zones` zones.
fn place(side: Side, phase: &str, zones: usize) -> (String, Vec<String>) {
    let ns = if side == Side::Operator { "bench-op".to_string() } else { format!("bench-plain-{phase}") };
    (ns, (0..zones).map(|z| format!("z{phase}-{z}")).collect())
}

/// One phase: `side` makes the zones `names` in `ns`; returns how long until all their instances
/// were Ready (the operator's namespace also holds the big zone's `big`).
async fn make(client: &Client, side: Side, ns: &str, names: &[String], instances: usize, big: usize) -> Duration {
    let start = Instant::now();
    match side {
        Side::Operator => {
            let zapi: Api<GameZone> = Api::namespaced(client.clone(), ns);
            each_zone(names, |name| {
                let (zapi, gz) = (zapi.clone(), zone(name, instances));
                async move { zapi.create(&PostParams::default(), &gz).await.map(|_| ()) }
            })
            .await;
            until_ready(client, ns, names.len() * instances + big, start, server_ready).await
        }
        Side::Plain | Side::Bare => {
            namespace(client, ns).await;
            plain_client(client, ns, names.len(), instances, side == Side::Plain).await
        }
    }
}

/// Who makes the objects in a phase.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Side {
    /// The operator, from GameZones.
    Operator,
    /// The plain client, ending where the operator does: each GameServer's status says Ready.
    Plain,
    /// The plain client creating the objects only: its GameServers never show a state, so its
    /// instances count as Ready by their pods.
    Bare,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Operator => "operator",
            Side::Plain => "plain",
            Side::Bare => "create-only",
        }
    }
}

/// One timed phase of the many-zones run.
struct Phase {
    side: Side,
    time: Duration,
    /// CPU seconds each process used in the phase, in the order of the process list.
    cpu: Vec<f64>,
}

/// The sides in the order they run: operator, plain, create-only; create-only, plain, operator;
/// ... Over every two rounds each side runs as often early as late, so none gains from an
/// emptier cluster, and a drift of the machine's speed over the run falls on all alike.
fn order(rounds: usize) -> Vec<Side> {
    let forth = [Side::Operator, Side::Plain, Side::Bare];
    (0..rounds)
        .flat_map(|r| {
            let mut sides = forth;
            if r % 2 == 1 {
                sides.reverse();
            }
            sides
        })
        .collect()
}

/// Writes the API server's audit log recorded from byte `from` on, by who made them (the
/// operator, or the bench's plain client; the control plane's own components are left out) and
/// by verb and resource.
fn writes_since(log: &std::path::Path, from: u64) -> std::collections::BTreeMap<(String, String), usize> {
    use std::io::{BufRead, Seek};
    let mut counts = std::collections::BTreeMap::new();
    let Ok(mut file) = std::fs::File::open(log) else { return counts };
    if file.seek(std::io::SeekFrom::Start(from)).is_err() {
        return counts;
    }
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let agent = e["userAgent"].as_str().unwrap_or_default();
        let who = if agent.starts_with("gamezone/") {
            "operator"
        } else if ["kube-", "kwok", "coredns"].iter().any(|c| agent.starts_with(c)) {
            continue;
        } else {
            "client"
        };
        let o = &e["objectRef"];
        let resource = match o["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", o["resource"].as_str().unwrap_or_default()),
            None => o["resource"].as_str().unwrap_or_default().to_string(),
        };
        let what = format!("{} {resource}", e["verb"].as_str().unwrap_or_default());
        *counts.entry((who.to_string(), what)).or_default() += 1;
    }
    counts
}

/// Size of the audit log now, after a moment for its last entries to land.
async fn audit_offset(log: &std::path::Path) -> u64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// Instances made Ready per second over the phases of `side`.
fn rate(phases: &[Phase], side: Side, per_phase: usize) -> f64 {
    let mine: Vec<_> = phases.iter().filter(|p| p.side == side).collect();
    (mine.len() * per_phase) as f64 / mine.iter().map(|p| p.time.as_secs_f64()).sum::<f64>()
}

#[tokio::main]
async fn main() {
    let zones = env_or("GAMEZONE_BENCH_ZONES", 200);
    let instances = env_or("GAMEZONE_BENCH_INSTANCES", 10);
    let nodes = env_or("GAMEZONE_BENCH_NODES", 50);
    let big = env_or("GAMEZONE_BENCH_BIG_ZONE", 50);
    let rounds = env_or("GAMEZONE_BENCH_ROUNDS", 2).max(1);
    let n = zones * instances;
    let sides = order(rounds);
    eprintln!("starting a control plane with {nodes} simulated nodes");
    let cluster = common::start_private(nodes);
    let client = cluster.client().await;
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds() {
        crd_api.patch(&crd.name_any(), &PatchParams::apply("bench").force(), &Patch::Apply(&crd)).await.unwrap();
    }
    until_collector_watches(&client, &["gamezones", "gameservers"]).await;
    namespace(&client, "bench-op").await;

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

    // 2. Many zones, by each side in turn, on the same control plane, each phase's objects
    // deleted before the next. The operator stays up between its phases; it has nothing to do in
    // the plain client's, whose objects are in other namespaces.
    let mut phases = Vec::new();
    let mut op_rss = None;
    // First a short turn of each side, not measured: whichever side runs the first phase of a
    // run is a quarter slower than in its later ones, while caches, heaps and connections grow.
    let warm = (zones / 10).max(1);
    eprintln!("warming up: each side makes {warm} zones");
    for side in [Side::Operator, Side::Plain, Side::Bare] {
        let (ns, names) = place(side, "w", warm);
        make(&client, side, &ns, &names, instances, big).await;
        clear(&client, side, &ns, &names).await;
    }
    let last = sides.len() - 1;
    let audit = cluster.kubeconfig().with_file_name("audit.log");
    let mut writes: HashMap<Side, std::collections::BTreeMap<String, usize>> = HashMap::new();
    for (i, side) in sides.into_iter().enumerate() {
        eprintln!("phase {}: {} makes {zones} zones of {instances} instances", i + 1, side.name());
        let (ns, names) = place(side, &i.to_string(), zones);
        let before = cpu_of(&procs);
        let from = audit_offset(&audit).await;
        let time = make(&client, side, &ns, &names, instances, big).await;
        let who = if side == Side::Operator { "operator" } else { "client" };
        for ((by, what), count) in writes_since(&audit, from) {
            if by == who {
                *writes.entry(side).or_default().entry(what).or_default() += count;
            }
        }
        if side == Side::Operator {
            // At the scale asked about: one phase's zones (and the big one).
            op_rss.get_or_insert_with(|| peak_rss_mib(pid));
        }
        let after = cpu_of(&procs);
        eprintln!("  {:.1} instances Ready/s", n as f64 / time.as_secs_f64());
        phases.push(Phase { side, time, cpu: after.iter().zip(&before).map(|(a, b)| a - b).collect() });
        if i < last {
            clear(&client, side, &ns, &names).await;
        }
    }
    let final_rss = peak_rss_mib(pid);
    let _ = op.kill();
    let _ = op.wait();

    let all = [Side::Operator, Side::Plain, Side::Bare];
    let rates = all.map(|side| rate(&phases, side, n));
    println!("one zone of {big} instances, apply -> Running: {:.2} s", big_time.as_secs_f64());
    println!("{zones} zones x {instances} instances on {nodes} nodes, {rounds} rounds:");
    for (r, round) in phases.chunks(all.len()).enumerate() {
        let shown: Vec<String> =
            round.iter().map(|p| format!("{} {:.1}/s", p.side.name(), n as f64 / p.time.as_secs_f64())).collect();
        let ratio = rate(round, Side::Operator, n) / rate(round, Side::Plain, n);
        println!("  round {}: {}; operator/plain {ratio:.2}", r + 1, shown.join(", "));
    }
    for (side, rate) in all.iter().zip(rates) {
        println!("  {:<13} {rate:>8.1} instances Ready/s over its {rounds} phases", format!("{}:", side.name()));
    }
    println!("  ratio operator/plain: {:.2} (goal >= 0.70)", rates[0] / rates[1]);
    println!("  ratio operator/create-only: {:.2} (GameServers without a state)", rates[0] / rates[2]);
    println!(
        "operator peak RSS: {:.1} MiB at the first phase's end; {final_rss:.1} MiB over the run",
        op_rss.unwrap_or(final_rss),
    );
    println!("CPU seconds per 1000 instances:  {:>11} {:>11} {:>11}", all[0].name(), all[1].name(), all[2].name());
    let per_k = 1000.0 / (rounds * n) as f64;
    let mut totals = [0.0; 3];
    for (i, (name, _)) in procs.iter().enumerate() {
        let used = all.map(|side| {
            // The operator idles through the plain client's phases; that is not the plain client's.
            if name == "gamezone" && side != Side::Operator {
                return 0.0;
            }
            phases.iter().filter(|p| p.side == side).map(|p| p.cpu[i]).sum::<f64>() * per_k
        });
        for (t, u) in totals.iter_mut().zip(used) {
            *t += u;
        }
        println!("  {name:<28} {:>11.1} {:>11.1} {:>11.1}", used[0], used[1], used[2]);
    }
    println!("  {:<28} {:>11.1} {:>11.1} {:>11.1}", "total", totals[0], totals[1], totals[2]);
    // From the API server's audit log, while each side's zones came up.
    println!("writes per instance (audit log): {:>11} {:>11} {:>11}", all[0].name(), all[1].name(), all[2].name());
    let kinds: std::collections::BTreeSet<&String> = writes.values().flat_map(|w| w.keys()).collect();
    let per = 1.0 / (rounds * n) as f64;
    let mut sums = [0.0; 3];
    for what in kinds {
        let row = all.map(|side| writes.get(&side).and_then(|w| w.get(what)).copied().unwrap_or(0) as f64 * per);
        for (s, r) in sums.iter_mut().zip(row) {
            *s += r;
        }
        println!("  {what:<30} {:>11.2} {:>11.2} {:>11.2}", row[0], row[1], row[2]);
    }
    println!("  {:<30} {:>11.2} {:>11.2} {:>11.2}", "total", sums[0], sums[1], sums[2]);
}
