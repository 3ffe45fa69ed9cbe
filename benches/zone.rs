//! Operator throughput on the local control plane, beside a plain client in the same run.
//!
//! 1. Apply → Ready for one zone of 50 servers.
//! 2. 200 zones × 10 servers on 50 simulated nodes: servers made Ready per second by the
//!    operator, and by a plain client creating the same objects (GameServers, Pods, Services,
//!    ConfigMaps) as fast as it can against the same control plane, ending where the operator
//!    does: each GameServer's status says Ready once its pod is. Optionally the same client
//!    creating the objects only (no GameServer ever shows a state). Each side runs once per
//!    round, in turns (operator, plain; plain, operator; ...); a short unmeasured turn of each
//!    side comes first, and each phase's objects are deleted before the next starts. The host's
//!    speed swings between phases (every process's CPU per server at once, up to 1.8×), so
//!    each phase's time is also taken at one machine speed, by a gauge of processes that do the
//!    same work per server on both sides (see [`Gauge`]); that ratio is the verdict. Rounds run
//!    until its 95% interval is within ±0.05 (4 to 10 rounds), so two runs agree on it; every
//!    round, the pooled ratios as timed and at one speed, and their spread, are printed.
//! 3. Per side and per server: CPU seconds of each process, the API server's requests by verb
//!    and resource, bytes received and sent, watch events and their bytes, etcd operations (from
//!    its /metrics), writes by who made them (its audit log); the operator's RSS with all its
//!    servers Ready. The load average goes with every figure: the machine may be shared.
//!
//! 4. A real peer, OpenKruise Kruise-Game (with OpenKruise's manager, whose Advanced
//!    StatefulSets hold its pods), built by `tests/controlplane/peers.sh build` and run out of the
//!    cluster on the same control plane: one GameServerSet per zone in a namespace of its own,
//!    host ports from its HostPort network, its GameServers counted Ready (`currentState`) by a
//!    watch. Twice: with its shipped client rate limits (`kruise-game`) and with them raised to
//!    what our operator has (`kruise-fast`), so "throttled" and "more work" are told apart. Its
//!    managers run only in its own phases. Skipped, saying so, when its binaries are missing.
//! 5. With GAMEZONE_BENCH_SCALE=10000, a scale step: each side makes that many servers at once
//!    (within GAMEZONE_BENCH_SCALE_SECS, 1800), with its controllers' RSS; the operator goes last.
//!
//! `cargo bench -p gamezone --bench zone`; sizes via GAMEZONE_BENCH_ZONES / _INSTANCES / _NODES
//! / _BIG_ZONE; GAMEZONE_BENCH_ROUNDS fixes the rounds (GAMEZONE_BENCH_MIN_ROUNDS 4 and
//! _MAX_ROUNDS 10 bound them otherwise); GAMEZONE_BENCH_SIDES (default
//! `operator,plain,kruise-game,kruise-fast`) picks the sides, `create-only` may be added; the
//! operator's log goes to the file GAMEZONE_BENCH_LOG at GAMEZONE_BENCH_LOG_LEVEL (`warn`).

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/host.rs"]
mod host;
#[path = "support/peers.rs"]
mod peers;
#[path = "support/stats.rs"]
mod stats;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use gamezone::api::*;
use host::{cpu_secs, env_or, load_average, rss_mib};
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

fn zone(name: &str, servers: usize) -> GameZone {
    let ports = json!([{"name": "client", "containerPort": 7777}]);
    gamezone_api::fixture::zone(name).servers(servers as i64).game("ports", ports).build()
}

/// Makes the namespace `name`. Ours carry a `control-plane` label, which Kruise's install makes
/// its pod webhooks (failurePolicy Fail) pass by: with the peers in the run, our sides' pods are
/// not sent to a peer's webhook, as in a cluster without it.
async fn namespace(client: &Client, name: &str) {
    let labels = if name.starts_with("bench-kruise") { json!({}) } else { json!({"control-plane": "gamezone-bench"}) };
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
    )
    .unwrap();
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

/// Waits until the garbage collector watches `resources` (group, resource), as it does in any
/// cluster whose CRDs were installed before its zones. It finds new kinds only at its next
/// discovery, up to 30 s after the CRDs; until then it GETs the owner of every object it meets
/// (each GameServer's zone, each pod's server), work that would load the run and no real one.
async fn until_collector_watches(client: &Client, resources: &[(&str, &str)]) {
    let names: Vec<&str> = resources.iter().map(|(_, r)| *r).collect();
    eprintln!("waiting for the garbage collector to watch {} (up to 30 s after the CRDs)", names.join(", "));
    let start = Instant::now();
    loop {
        let req = axum::http::Request::get("/metrics").body(Vec::new()).unwrap();
        let metrics = client.request_text(req).await.unwrap();
        // Controllers in this run watch one namespace; the collector watches the whole cluster.
        let watched = |(g, r): &(&str, &str)| {
            metrics.lines().any(|l| {
                l.starts_with("apiserver_longrunning_requests{")
                    && l.contains(&format!("group=\"{g}\""))
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

/// CPU seconds used so far by each process of `procs`.
fn cpu_of(procs: &[(String, u32)]) -> Vec<f64> {
    procs.iter().map(|(_, pid)| cpu_secs(*pid)).collect()
}

/// The plain client: the objects the operator would make for the zones, created as fast as it
/// can, ending as the operator leaves them. Each pod is the one the operator makes for its server
/// (ports, env, owner reference), so it follows its GameServer's creation. With `report`, once
/// the pod is Ready the GameServer's status says so, as the operator's does, and servers count
/// as Ready as the operator's do: by their GameServer's state. Without, by their pods.
async fn plain_client(client: &Client, ns: &str, zones: usize, per_zone: usize, report: bool) -> Duration {
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
        let mut gz = zone(&format!("p{z}"), per_zone);
        gz.metadata.namespace = Some(ns.to_string());
        work.extend(
            gamezone::zone::game_servers(&gz, &[], None, &cfg)
                .unwrap()
                .into_iter()
                .map(|gs| Plain::Server(Box::new(gs))),
        );
        work.extend(gamezone::zone::services(&gz).into_iter().map(|s| Plain::Service(Box::new(s))));
        work.push(Plain::Map(Box::new(gamezone::zone::topology(&gz, &Default::default()))));
    }
    let n = zones * per_zone;
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
                        let pod = gamezone::server::pod_without_host_ports(&gs).expect("a pod for the server");
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
                gs.status = Some(gamezone::server::ready_status(&gs, &pod).expect("a status for the server"));
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
/// already on its nodes. Returns how long until it was gone.
async fn clear(client: &Client, side: Side, ns: &str, zones: &[String]) -> Duration {
    let start = Instant::now();
    let gone = || async {
        match side {
            Side::Operator => {
                // The big zone stays; everything else in the namespace was this phase's.
                let lp = ListParams::default().labels("gamezone.dev/zone!=big");
                let servers = Api::<GameServer>::namespaced(client.clone(), ns).list_metadata(&lp).await.unwrap();
                let pods = Api::<Pod>::namespaced(client.clone(), ns).list_metadata(&lp).await.unwrap();
                servers.items.is_empty() && pods.items.is_empty() && !endpoints_left(client, ns).await
            }
            Side::Plain | Side::Bare => Api::<Namespace>::all(client.clone()).get_opt(ns).await.unwrap().is_none(),
            Side::Kruise(_) => peers::gone(client, ns).await,
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
        Side::Kruise(_) => peers::delete_sets(client, ns, zones).await,
    }
    while !gone().await {
        assert!(start.elapsed() < Duration::from_secs(600), "{ns}: the phase's objects were not gone in 10 min");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let deleted = start.elapsed();
    // The garbage collector, endpoint controllers and kwok finish behind the deletions.
    tokio::time::sleep(SETTLE).await;
    eprintln!("  gone in {:.0} s", deleted.as_secs_f64());
    deleted
}

/// Whether `ns` still holds endpoints of Services that are gone. The controller manager deletes
/// them behind their Services, at its own pace: 200 zones' EndpointSlices took 9 s more than
/// their servers and pods, and went on into the next phase.
async fn endpoints_left(client: &Client, ns: &str) -> bool {
    let lp = ListParams::default();
    let services: Vec<String> = Api::<Service>::namespaced(client.clone(), ns)
        .list_metadata(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| s.name_any())
        .collect();
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), ns).list_metadata(&lp).await.unwrap();
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns).list_metadata(&lp).await.unwrap();
    let of_slices = slices.items.iter().filter_map(|s| s.labels().get("kubernetes.io/service-name").cloned());
    endpoints.items.iter().map(|e| e.name_any()).chain(of_slices).any(|service| !services.contains(&service))
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
    let ns = match side {
        Side::Operator => "bench-op".to_string(),
        Side::Kruise(_) => format!("bench-{}", side.name()),
        Side::Plain | Side::Bare => format!("bench-plain-{phase}"),
    };
    (ns, (0..zones).map(|z| format!("z{phase}-{z}")).collect())
}

/// One phase: `side` makes the zones `names` in `ns`; returns how long until all their servers
/// were Ready (the operator's namespace also holds the big zone's `big`).
async fn make(client: &Client, side: Side, ns: &str, names: &[String], servers: usize, big: usize) -> Duration {
    let start = Instant::now();
    match side {
        Side::Operator => {
            let zapi: Api<GameZone> = Api::namespaced(client.clone(), ns);
            each_zone(names, |name| {
                let (zapi, gz) = (zapi.clone(), zone(name, servers));
                async move { zapi.create(&PostParams::default(), &gz).await.map(|_| ()) }
            })
            .await;
            until_ready(client, ns, names.len() * servers + big, start, server_ready).await
        }
        Side::Plain | Side::Bare => {
            namespace(client, ns).await;
            plain_client(client, ns, names.len(), servers, side == Side::Plain).await
        }
        Side::Kruise(_) => {
            peers::create_sets(client, ns, names, servers).await;
            peers::until_ready(client, ns, names.len() * servers, start).await
        }
    }
}

/// [`make`], stopped with a clear message if a peer's manager dies in it (it would never end).
async fn make_watched(
    client: &Client,
    peers: &peers::Peers,
    side: Side,
    ns: &str,
    names: &[String],
    servers: usize,
    big: usize,
) -> Duration {
    tokio::select! {
        time = make(client, side, ns, names, servers, big) => time,
        why = peers.exited(), if matches!(side, Side::Kruise(_)) => panic!("{} in {ns}: {why}", side.name()),
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
    /// servers count as Ready by their pods.
    Bare,
    /// OpenKruise Kruise-Game (with OpenKruise's manager for its Advanced StatefulSets), from
    /// GameServerSets: with its shipped client rate limits (`Limits::Shipped`) or with them
    /// raised to our operator's (`Limits::Raised`), to tell throttled from more work.
    Kruise(Limits),
}

/// A peer's client rate limits in a run.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Limits {
    Shipped,
    Raised,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Operator => "operator",
            Side::Plain => "plain",
            Side::Bare => "create-only",
            Side::Kruise(Limits::Shipped) => "kruise-game",
            Side::Kruise(Limits::Raised) => "kruise-fast",
        }
    }

    /// The processes that do this side's work besides the control plane: its controller (for
    /// the plain client, this bench's own process).
    fn controllers(self) -> &'static [&'static str] {
        match self {
            Side::Operator => &["gamezone"],
            Side::Plain | Side::Bare => &["bench"],
            Side::Kruise(_) => &peers::MANAGERS,
        }
    }
}

/// One timed phase of the many-zones run.
struct Phase {
    side: Side,
    /// The round it belongs to, from 0.
    round: usize,
    time: Duration,
    /// CPU seconds each process used in the phase, in the order of the process list.
    cpu: Vec<f64>,
    /// What the API server counted while it ran.
    api: apiserver::Counters,
    /// The one-minute load average at its end.
    load: f64,
    /// The machine's speed gauge in it: see [`Gauge`].
    gauge: f64,
    /// How long its objects took to be gone once deleted (none for the run's last phase).
    deleted: Option<Duration>,
    /// Resident memory of the side's controllers at its end, all its servers Ready, MiB.
    rss: f64,
}

/// The sides of round `r`: `sides` as given in even rounds, reversed in odd ones. Over every two
/// rounds each side runs as often early as late, so none gains from an emptier cluster, and a
/// drift of the machine's speed over the run falls on all alike.
fn round_order(sides: &[Side], r: usize) -> Vec<Side> {
    let mut s = sides.to_vec();
    if r % 2 == 1 {
        s.reverse();
    }
    s
}

/// The sides to run, from GAMEZONE_BENCH_SIDES (`operator,plain,kruise-game,kruise-fast` when
/// unset, the Kruise-Game sides only if its binaries are built; `create-only` may be added).
/// The operator and the plain client are always among them.
fn sides_from_env() -> Vec<Side> {
    let given = std::env::var("GAMEZONE_BENCH_SIDES").ok();
    let asked = given.clone().unwrap_or_else(|| "operator,plain,kruise-game,kruise-fast".into());
    let mut sides = vec![Side::Operator, Side::Plain];
    for name in asked.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match name {
            "operator" | "plain" => {}
            "create-only" => sides.push(Side::Bare),
            "kruise-game" => sides.push(Side::Kruise(Limits::Shipped)),
            "kruise-fast" => sides.push(Side::Kruise(Limits::Raised)),
            other => panic!(
                "GAMEZONE_BENCH_SIDES: unknown side {other:?}; use operator, plain, create-only, kruise-game, kruise-fast"
            ),
        }
    }
    if sides.iter().any(|s| matches!(s, Side::Kruise(_)))
        && let Err(why) = peers::built()
    {
        // Asked for by name, they are wanted: say so and stop. By default, run without them.
        assert!(given.is_none(), "GAMEZONE_BENCH_SIDES asks for Kruise-Game, but {why}");
        eprintln!("skipping the Kruise-Game sides: {why}");
        sides.retain(|s| !matches!(s, Side::Kruise(_)));
    }
    sides
}

/// Who made a write, from its user agent: the operator, this bench's plain client, or a
/// control plane component (the controller manager's by controller).
fn writer_of(agent: &str) -> String {
    if agent.starts_with("gamezone/") {
        return "operator".into();
    }
    let program = agent.split('/').next().unwrap_or_default();
    match program {
        p if p.starts_with("kruise-game-manager") => "kruise-game".into(),
        p if p.starts_with("kruise-manager") => "kruise".into(),
        "kube-controller-manager" => {
            let controller = agent.rsplit_once("system:serviceaccount:kube-system:").map(|(_, c)| c);
            format!("kcm:{}", controller.unwrap_or("?"))
        }
        p if p.starts_with("kube-") || p.starts_with("kwok") || p.starts_with("coredns") => p.to_string(),
        _ => "bench".into(),
    }
}

/// Writes in the API server's audit log from byte `from` on, by who made them (see
/// [`writer_of`]) and by verb and resource.
fn writes_since(log: &std::path::Path, from: u64) -> BTreeMap<String, usize> {
    use std::io::{BufRead, Seek};
    let mut counts = BTreeMap::new();
    let Ok(mut file) = std::fs::File::open(log) else { return counts };
    if file.seek(std::io::SeekFrom::Start(from)).is_err() {
        return counts;
    }
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
        let who = writer_of(e["userAgent"].as_str().unwrap_or_default());
        let o = &e["objectRef"];
        let resource = match o["subresource"].as_str() {
            Some(sub) => format!("{}/{sub}", o["resource"].as_str().unwrap_or_default()),
            None => o["resource"].as_str().unwrap_or_default().to_string(),
        };
        let what = format!("{who}: {} {resource}", e["verb"].as_str().unwrap_or_default());
        *counts.entry(what).or_default() += 1;
    }
    counts
}

/// Size of the audit log now, after a moment for its last entries to land.
async fn audit_offset(log: &std::path::Path) -> u64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    std::fs::metadata(log).map(|m| m.len()).unwrap_or(0)
}

/// How a phase's time is taken: as it was, or at one machine speed.
#[derive(Clone, Copy)]
enum Clock {
    /// The phase's time.
    Wall,
    /// Its time over its gauge: what it would have taken on a machine of one fixed speed (the
    /// run's mean gauge, so rates stay in servers per second).
    Steady(Gauge),
}

impl Clock {
    fn time(self, p: &Phase) -> f64 {
        match self {
            Clock::Wall => p.time.as_secs_f64(),
            Clock::Steady(g) => p.time.as_secs_f64() * g.mean / p.gauge,
        }
    }
}

/// The machine's speed in a phase, from the CPU seconds per server of processes whose work per
/// server is the same whichever side made the objects: the scheduler binds each pod and
/// records one Event for it, the simulated kubelets report each pod's status. On this shared
/// host two phases of one side on one control plane used up to 1.8× the CPU per server in
/// every process at once (API server, etcd, the operator itself), so a phase's rate carries the
/// machine's swing as well as its side's cost; the gauge carries the swing alone. What these
/// processes spend with nothing to do (heartbeats, leases), measured before the rounds, is taken
/// off, or a slower phase would read as a slower machine.
#[derive(Clone, Copy)]
struct Gauge {
    /// The mean gauge over the run's phases, CPU seconds per server.
    mean: f64,
}

/// The processes the gauge reads.
const GAUGE: [&str; 2] = ["kube-scheduler", "kwok"];

/// The gauge of a phase that took `time` s for `n` servers: the CPU seconds per server the
/// [`GAUGE`] processes of `procs` used in it (`cpu`), less what they use idle (`idle`, CPU s/s)
/// over as long.
fn gauge_of(procs: &[(String, u32)], cpu: &[f64], idle: &[f64], time: f64, n: usize) -> f64 {
    let busy = procs.iter().zip(cpu.iter().zip(idle)).filter(|((name, _), _)| GAUGE.contains(&name.as_str()));
    busy.map(|(_, (c, i))| (c - i * time).max(0.0)).sum::<f64>() / n as f64
}

/// CPU seconds per second each process of `procs` uses over `window` with nothing to do.
async fn idle_rates(procs: &[(String, u32)], window: Duration) -> Vec<f64> {
    let before = cpu_of(procs);
    tokio::time::sleep(window).await;
    cpu_of(procs).iter().zip(&before).map(|(a, b)| (a - b) / window.as_secs_f64()).collect()
}

/// Servers made Ready per second over `phases` of `side`, their times taken by `clock`.
fn rate<'a>(phases: impl IntoIterator<Item = &'a Phase>, side: Side, per_phase: usize, clock: Clock) -> f64 {
    let mine: Vec<_> = phases.into_iter().filter(|p| p.side == side).collect();
    (mine.len() * per_phase) as f64 / mine.iter().map(|p| clock.time(p)).sum::<f64>()
}

/// Operator over plain client: servers Ready per second over `phases` by `clock`.
fn ratio<'a>(phases: impl IntoIterator<Item = &'a Phase> + Clone, per_phase: usize, clock: Clock) -> f64 {
    rate(phases.clone(), Side::Operator, per_phase, clock) / rate(phases, Side::Plain, per_phase, clock)
}

/// The mean gauge over `phases`.
fn mean_gauge<'a>(phases: impl IntoIterator<Item = &'a Phase>) -> Gauge {
    let (sum, count) = phases.into_iter().fold((0.0, 0usize), |(s, c), p| (s + p.gauge, c + 1));
    Gauge { mean: sum / count.max(1) as f64 }
}

/// Operator over plain client, servers Ready per second by `clock`, in each round that ran both.
fn round_ratios(phases: &[Phase], n: usize, clock: Clock) -> Vec<f64> {
    let rounds = phases.iter().map(|p| p.round + 1).max().unwrap_or(0);
    (0..rounds)
        .filter_map(|r| {
            let round: Vec<&Phase> = phases.iter().filter(|p| p.round == r).collect();
            let has = |s: Side| round.iter().any(|p| p.side == s);
            (has(Side::Operator) && has(Side::Plain)).then(|| ratio(round.iter().copied(), n, clock))
        })
        .collect()
}

/// The one-minute load average.
/// Starts the operator on the cluster of `kubeconfig`, scoped to the namespace `bench-op`, serving
/// `/readyz` on `http` (port 0: any); its log goes to `GAMEZONE_BENCH_LOG` (appended) when set.
fn start_operator(kubeconfig: &std::path::Path, http: std::net::SocketAddr) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_gamezone"))
        .args([
            "run",
            "--namespace",
            "bench-op",
            "--http-addr",
            &http.to_string(),
            "--log-format",
            "json",
            "--concurrency",
            "32",
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .env("RUST_LOG", std::env::var("GAMEZONE_BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(match std::env::var_os("GAMEZONE_BENCH_LOG") {
            Some(path) => {
                let log = std::fs::File::options().create(true).append(true).open(path);
                Stdio::from(log.expect("open GAMEZONE_BENCH_LOG"))
            }
            None => Stdio::null(),
        })
        .spawn()
        .expect("start the operator")
}

/// The (RSS, peak RSS) of `pid`, serving `/readyz` on `http`, once it is ready (it has listed
/// every object) and then idle: its CPU time grew by under 50 ms in the last two seconds (it
/// reconciles each object once after a restart). Idle alone came before the lists, now and then.
async fn settled_rss(pid: u32, http: std::net::SocketAddr) -> (f64, f64) {
    while !ready(http).await {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut cpu = cpu_secs(pid);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = cpu_secs(pid);
        if now - cpu < 0.05 {
            return rss_mib(pid);
        }
        cpu = now;
    }
}

/// Whether the operator serving on `http` answers `/readyz` with 200.
async fn ready(http: std::net::SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = tokio::net::TcpStream::connect(http).await else { return false };
    let asked = conn.write_all(b"GET /readyz HTTP/1.0\r\nHost: operator\r\n\r\n").await;
    let mut head = [0u8; 12];
    asked.is_ok() && conn.read_exact(&mut head).await.is_ok() && head.ends_with(b" 200")
}

/// A loopback address with a port free now, for a process to serve on.
fn free_loopback() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("its address")
}

/// How close two runs' pooled ratios should be: the default rounds are enough when the 95%
/// interval of the mean round ratio is within this.
const STABLE_TO: f64 = 0.05;

/// How long the processes' idle use is measured, for the gauge.
const IDLE_WINDOW: Duration = Duration::from_secs(20);

#[tokio::main]
async fn main() {
    let zones = env_or("GAMEZONE_BENCH_ZONES", 200);
    let servers = env_or("GAMEZONE_BENCH_INSTANCES", 10);
    let big = env_or("GAMEZONE_BENCH_BIG_ZONE", 50);
    // The scale step's pods need room: a simulated node takes 110.
    let nodes = env_or("GAMEZONE_BENCH_NODES", 50).max((env_or("GAMEZONE_BENCH_SCALE", 0) + big).div_ceil(100));
    // Rounds as asked, or as many as it takes (from 4 up to 10) for the ratio to be known to
    // within STABLE_TO.
    let (min_rounds, max_rounds) =
        match std::env::var("GAMEZONE_BENCH_ROUNDS").ok().and_then(|r| r.parse::<usize>().ok()) {
            Some(r) => (r.max(1), r.max(1)),
            None => (env_or("GAMEZONE_BENCH_MIN_ROUNDS", 4).max(2), env_or("GAMEZONE_BENCH_MAX_ROUNDS", 10).max(2)),
        };
    let sides = sides_from_env();
    let n = zones * servers;
    eprintln!("starting a control plane with {nodes} simulated nodes (load average {:.1})", load_average());
    let cluster = common::start_private(nodes);
    let client = cluster.client().await;
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds() {
        crd_api.patch(&crd.name_any(), &PatchParams::apply("bench").force(), &Patch::Apply(&crd)).await.unwrap();
    }
    let mut watched = vec![("gamezone.dev", "gamezones"), ("gamezone.dev", "gameservers")];
    let mut peers = peers::Peers::new(cluster.kubeconfig());
    if sides.iter().any(|s| matches!(s, Side::Kruise(_))) {
        // Started once before the rounds: their first start installs their CRDs and webhooks.
        eprintln!("starting Kruise's and Kruise-Game's managers, which install their CRDs");
        peers.ensure(None);
        watched.extend([
            ("game.kruise.io", "gameserversets"),
            ("game.kruise.io", "gameservers"),
            ("apps.kruise.io", "statefulsets"),
        ]);
        for &side in sides.iter().filter(|s| matches!(s, Side::Kruise(_))) {
            namespace(&client, &place(side, "", 0).0).await;
        }
    }
    until_collector_watches(&client, &watched).await;
    namespace(&client, "bench-op").await;

    let mut op = start_operator(cluster.kubeconfig(), "127.0.0.1:0".parse().unwrap());
    let pid = op.id();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Where the CPU goes in each phase: the control plane's processes, the operator, this process
    // (the plain client and the Ready counting).
    // (The peers' managers are in the cluster's process list, but no part of the control plane.)
    let mut procs: Vec<_> =
        cluster.processes().into_iter().filter(|(name, _)| !peers::MANAGERS.contains(&name.as_str())).collect();
    let control_plane = procs.len();
    procs.push(("gamezone".into(), pid));
    procs.push(("bench".into(), std::process::id()));
    if sides.iter().any(|s| matches!(s, Side::Kruise(_))) {
        procs.extend(peers::MANAGERS.map(|m| (m.to_string(), 0)));
    }

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
    let big_load = load_average();

    // 2. Many zones, by each side in turn, on the same control plane, each phase's objects
    // deleted before the next. The operator stays up between its phases; it has nothing to do in
    // the plain client's, whose objects are in other namespaces.
    let mut phases: Vec<Phase> = Vec::new();
    // The operator's memory at the end of each of its phases, with all their servers Ready.
    let mut op_rss = Vec::new();
    // First a short turn of each side, not measured: whichever side runs the first phase of a
    // run is a quarter slower than in its later ones, while caches, heaps and connections grow.
    let warm = (zones / 10).max(1);
    eprintln!("warming up: each side makes {warm} zones");
    for &side in &sides {
        peers_for(&mut peers, side, &mut procs).await;
        let (ns, names) = place(side, "w", warm);
        make_watched(&client, &peers, side, &ns, &names, servers, big).await;
        clear(&client, side, &ns, &names).await;
    }
    peers_for(&mut peers, Side::Operator, &mut procs).await;
    // What each process spends with nothing to do, for the gauge.
    let idle = idle_rates(&procs, IDLE_WINDOW).await;
    let audit = cluster.kubeconfig().with_file_name("audit.log");
    let mut writes: HashMap<Side, BTreeMap<String, usize>> = HashMap::new();
    // The verdict is the ratio at one machine speed: the wall-clock one carries the host's swing.
    let stable = |phases: &[Phase]| {
        let ratios = round_ratios(phases, n, Clock::Steady(mean_gauge(phases)));
        stats::mean_ci95(&ratios).is_some_and(|(_, hw)| hw <= STABLE_TO)
    };
    let mut i = 0;
    // The last phase's objects, which stay: (side, namespace, zones).
    let mut left = None;
    'rounds: for round in 0..max_rounds {
        let order = round_order(&sides, round);
        for (k, &side) in order.iter().enumerate() {
            peers_for(&mut peers, side, &mut procs).await;
            eprintln!("phase {}: {} makes {zones} zones of {servers} servers", i + 1, side.name());
            let (ns, names) = place(side, &i.to_string(), zones);
            let from = audit_offset(&audit).await;
            let api_before = apiserver::scrape(&client).await;
            let before = cpu_of(&procs);
            let time = make_watched(&client, &peers, side, &ns, &names, servers, big).await;
            let after = cpu_of(&procs);
            let api = apiserver::scrape(&client).await.since(&api_before);
            for (what, count) in writes_since(&audit, from) {
                *writes.entry(side).or_default().entry(what).or_default() += count;
            }
            if side == Side::Operator {
                op_rss.push(rss_mib(pid));
            }
            let load = load_average();
            eprintln!("  {:.1} servers Ready/s (load average {load:.1})", n as f64 / time.as_secs_f64());
            let cpu: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            let gauge = gauge_of(&procs, &cpu, &idle, time.as_secs_f64(), n);
            let rss = controllers_rss(&procs, side);
            phases.push(Phase { side, round, time, cpu, api, load, gauge, deleted: None, rss });
            i += 1;
            let stop = k + 1 == order.len() && (round + 1 == max_rounds || round + 1 >= min_rounds && stable(&phases));
            if stop {
                left = Some((side, ns, names));
                break 'rounds;
            }
            let deleted = clear(&client, side, &ns, &names).await;
            phases.last_mut().expect("the phase just run").deleted = Some(deleted);
        }
    }
    peers_for(&mut peers, Side::Operator, &mut procs).await;
    let (_, final_peak) = rss_mib(pid);
    // 3. The operator restarted with a phase's servers Ready: it lists them all at once.
    let mut remade = None;
    if phases.last().is_some_and(|p| p.side != Side::Operator) {
        eprintln!("the operator makes {zones} zones again, for its restart (not measured)");
        let (ns, names) = place(Side::Operator, "r", zones);
        make(&client, Side::Operator, &ns, &names, servers, big).await;
        remade = Some((Side::Operator, ns, names));
    }
    let _ = op.kill();
    let _ = op.wait();
    eprintln!("restarting the operator");
    let http = free_loopback();
    let mut op = start_operator(cluster.kubeconfig(), http);
    let restart_rss = settled_rss(op.id(), http).await;
    // 4. The scale step, when asked for: every side's servers at once, with its memory.
    let scale = match env_or("GAMEZONE_BENCH_SCALE", 0) {
        0 => Vec::new(),
        want => {
            // What the last phase and the restart left goes first: the step starts from an empty
            // cluster (the big zone aside), and a side's leftovers would count as its servers.
            for (side, ns, names) in left.into_iter().chain(remade) {
                peers_for(&mut peers, side, &mut procs).await;
                clear(&client, side, &ns, &names).await;
            }
            procs.iter_mut().filter(|(name, _)| name == "gamezone").for_each(|(_, p)| *p = op.id());
            let mut steps = Vec::new();
            let mut stepping: Vec<Side> = sides.iter().copied().filter(|&s| s != Side::Bare).collect();
            // The operator last: its servers take the longest to delete (a finalizer per zone and
            // the collector's cascade), and the last side's go with the cluster, since deleting
            // them would measure nothing.
            stepping.sort_by_key(|&s| s == Side::Operator);
            for (i, &side) in stepping.iter().enumerate() {
                let clear_after = i + 1 < stepping.len();
                steps.push(scale_step(&client, &mut peers, &mut procs, side, want, servers, big, clear_after).await);
            }
            peers_for(&mut peers, Side::Operator, &mut procs).await;
            steps
        }
    };
    let _ = op.kill();
    let _ = op.wait();
    report(&Report {
        zones,
        servers,
        nodes,
        big,
        big_time,
        big_load,
        sides: &sides,
        phases: &phases,
        op_rss: &op_rss,
        final_peak,
        restart_rss,
        procs: &procs,
        control_plane,
        writes: &writes,
        idle: &idle,
        scale: &scale,
    });
}

/// Starts, restarts or stops the peers' managers for a phase of `side` (running only in their
/// own phases: their watches and webhooks are no part of the others'), and puts their pids in
/// `procs`. A start waits until they are idle: their first lists are not the phase's work.
async fn peers_for(peers: &mut peers::Peers, side: Side, procs: &mut [(String, u32)]) {
    let started = match side {
        Side::Kruise(Limits::Shipped) => peers.ensure(None),
        Side::Kruise(Limits::Raised) => peers.ensure(Some(peers::RAISED)),
        _ => {
            peers.stop();
            false
        }
    };
    let pids = peers.pids();
    for (name, pid) in procs.iter_mut().filter(|(name, _)| peers::MANAGERS.contains(&name.as_str())) {
        *pid = pids.iter().find(|(n, _)| n == name).map_or(0, |(_, p)| *p);
    }
    if started {
        let cpu = || pids.iter().map(|(_, p)| cpu_secs(*p)).sum::<f64>();
        let since = Instant::now();
        let mut was = cpu();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = cpu();
            if now - was < 0.05 || since.elapsed() > Duration::from_secs(60) {
                break;
            }
            was = now;
        }
    }
}

/// Resident memory of `side`'s controllers now, MiB.
fn controllers_rss(procs: &[(String, u32)], side: Side) -> f64 {
    let mine = procs.iter().filter(|(name, pid)| *pid != 0 && side.controllers().contains(&name.as_str()));
    mine.map(|(_, pid)| rss_mib(*pid).0).sum()
}

/// What the scale step measured for one side.
struct Scale {
    side: Side,
    servers: usize,
    /// Time until all were Ready; `None` when they were not within the step's time.
    time: Option<Duration>,
    /// How many were Ready at the end of the step (all of them, or those at its time out).
    ready: usize,
    /// The step's time bound.
    limit: Duration,
    /// Resident memory of the side's controllers with them all Ready (or at the time out), MiB.
    rss: f64,
    load: f64,
}

/// One side makes `want` servers (in zones of `per_zone`) at once, within GAMEZONE_BENCH_SCALE_SECS
/// (1800); then, if `clear_after`, they are deleted until gone.
#[allow(clippy::too_many_arguments)]
async fn scale_step(
    client: &Client,
    peers: &mut peers::Peers,
    procs: &mut [(String, u32)],
    side: Side,
    want: usize,
    per_zone: usize,
    big: usize,
    clear_after: bool,
) -> Scale {
    let limit = Duration::from_secs(env_or("GAMEZONE_BENCH_SCALE_SECS", 1800) as u64);
    peers_for(peers, side, procs).await;
    let zones = want.div_ceil(per_zone);
    eprintln!("scale step: {} makes {zones} zones of {per_zone} servers", side.name());
    let (ns, names) = place(side, "s", zones);
    let big = if side == Side::Operator { big } else { 0 };
    let time = tokio::time::timeout(limit, make_watched(client, peers, side, &ns, &names, per_zone, big)).await.ok();
    let rss = controllers_rss(procs, side);
    let load = load_average();
    let servers = zones * per_zone;
    let ready = match time {
        Some(t) => {
            eprintln!("  {:.1} servers Ready/s, controllers' RSS {rss:.0} MiB", servers as f64 / t.as_secs_f64());
            servers
        }
        None => {
            let ready = ready_now(client, side, &ns).await;
            eprintln!("  {ready} of {servers} Ready within {} s, controllers' RSS {rss:.0} MiB", limit.as_secs());
            ready
        }
    };
    if clear_after {
        clear(client, side, &ns, &names).await;
    }
    Scale { side, servers, time, ready, limit, rss, load }
}

/// How many of `side`'s servers in `ns` say Ready now (the big zone's aside).
async fn ready_now(client: &Client, side: Side, ns: &str) -> usize {
    match side {
        Side::Kruise(_) => peers::ready_now(client, ns).await,
        _ => {
            let lp = ListParams::default().labels("gamezone.dev/zone!=big");
            let list = Api::<GameServer>::namespaced(client.clone(), ns).list(&lp).await;
            list.unwrap_or_else(|e| panic!("listing GameServers in {ns}: {e}"))
                .items
                .iter()
                .filter(|g| server_ready(g))
                .count()
        }
    }
}

/// What a run measured.
struct Report<'a> {
    zones: usize,
    servers: usize,
    nodes: usize,
    big: usize,
    big_time: Duration,
    big_load: f64,
    sides: &'a [Side],
    phases: &'a [Phase],
    /// The operator's (RSS, peak RSS) at the end of each of its phases.
    op_rss: &'a [(f64, f64)],
    /// The operator's (RSS, peak RSS) once restarted and idle, with a phase's servers Ready.
    restart_rss: (f64, f64),
    final_peak: f64,
    procs: &'a [(String, u32)],
    /// How many of `procs`, from the first, are the control plane's.
    control_plane: usize,
    writes: &'a HashMap<Side, BTreeMap<String, usize>>,
    /// CPU s/s each of `procs` used idle.
    idle: &'a [f64],
    scale: &'a [Scale],
}

/// Each phase's rate and CPU per 1000 servers by process, so a slow phase shows which process
/// spent more in it (or whether it only waited).
fn print_phases(r: &Report) {
    let n = (r.zones * r.servers) as f64;
    let names: String = r.procs.iter().map(|(name, _)| format!("{:>9}", short(name))).collect();
    println!("each phase, CPU seconds per 1000 servers:");
    println!("  {:<18}{:>7}{:>7}{names}", "phase", "rate", "gauge");
    for (i, p) in r.phases.iter().enumerate() {
        let cpu: String = p.cpu.iter().map(|c| format!("{:>9.1}", c * 1000.0 / n)).collect();
        let label = format!("{} {}", i + 1, p.side.name());
        println!("  {label:<18}{:>7.1}{:>7.2}{cpu}", n / p.time.as_secs_f64(), p.gauge * 1000.0);
    }
}

/// What the gauge read on each side, and what its processes wrote per server there: the same
/// writes on both sides are what make it neutral, so a side that made them work more would show.
fn print_gauge(r: &Report) {
    let n = (r.zones * r.servers) as f64;
    let idle: Vec<String> = r
        .procs
        .iter()
        .zip(r.idle)
        .filter(|((name, _), _)| GAUGE.contains(&name.as_str()))
        .map(|((name, _), rate)| format!("{} {:.1}", short(name), rate * 1000.0))
        .collect();
    println!(
        "  the gauge: CPU ms per server of {} with their idle use ({} CPU ms/s) taken off:",
        GAUGE.join(" + "),
        idle.join(", ")
    );
    for &side in r.sides {
        let each: Vec<f64> = r.phases.iter().filter(|p| p.side == side).map(|p| p.gauge * 1000.0).collect();
        let writes: usize =
            r.writes.get(&side).map_or(0, |w| w.iter().filter(|(what, _)| gauge_write(what)).map(|(_, c)| c).sum());
        let per = writes as f64 / (each.len().max(1) as f64 * n);
        let spread = stats::Summary::of(&each).map(|s| s.show(2)).unwrap_or_default();
        println!("    {:<13} phases {spread}; their writes for pods per server {per:.2}", format!("{}:", side.name()));
    }
}

/// Whether `what` (as [`writes_since`] names it) is a write by a gauge process for a pod: its
/// binding, its Event, its status. Their node heartbeats and leases go by time, not servers.
fn gauge_write(what: &str) -> bool {
    let Some((who, write)) = what.split_once(": ") else { return false };
    GAUGE.contains(&who)
        && (write.ends_with(" pods/binding") || write.ends_with(" pods/status") || write.ends_with(" events"))
}

/// A process's name cut to a table column.
fn short(name: &str) -> &str {
    let name = name.strip_prefix("kube-").unwrap_or(name);
    &name[..name.len().min(8)]
}

fn report(r: &Report) {
    let (n, phases, sides) = (r.zones * r.servers, r.phases, r.sides);
    let rounds = phases.iter().map(|p| p.round + 1).max().unwrap_or(0);
    let loads = stats::Summary::of(&phases.iter().map(|p| p.load).collect::<Vec<_>>());
    let load = loads.map(|l| format!("load average {:.1}..{:.1}", l.min, l.max)).unwrap_or_default();
    println!(
        "one zone of {} servers, apply -> Running: {:.2} s (load average {:.1})",
        r.big,
        r.big_time.as_secs_f64(),
        r.big_load
    );
    println!("{} zones x {} servers on {} nodes, {rounds} rounds ({load}):", r.zones, r.servers, r.nodes);
    // The gauge is the same work per server on our sides only: kwok writes more per Kruise pod.
    let steady = Clock::Steady(mean_gauge(phases.iter().filter(|p| !matches!(p.side, Side::Kruise(_)))));
    for round in 0..rounds {
        let mine: Vec<&Phase> = phases.iter().filter(|p| p.round == round).collect();
        let shown: Vec<String> = mine
            .iter()
            .map(|p| format!("{} {:.1}/s (load {:.1})", p.side.name(), n as f64 / p.time.as_secs_f64(), p.load))
            .collect();
        let of_round = |clock| ratio(mine.iter().copied(), n, clock);
        println!(
            "  round {}: {}; operator/plain {:.2}, at one machine speed {:.2}",
            round + 1,
            shown.join(", "),
            of_round(Clock::Wall),
            of_round(steady)
        );
    }
    for (clock, label) in [(Clock::Wall, "as timed"), (steady, "at one machine speed")] {
        println!("  {label}:");
        let at_one_speed = matches!(clock, Clock::Steady(_));
        for &side in sides.iter().filter(|s| !(at_one_speed && matches!(s, Side::Kruise(_)))) {
            let pooled = rate(phases, side, n, clock);
            let each: Vec<f64> = phases.iter().filter(|p| p.side == side).map(|p| n as f64 / clock.time(p)).collect();
            let spread = stats::Summary::of(&each).map(|s| s.show(1)).unwrap_or_default();
            println!("    {:<13} {pooled:>7.1} servers Ready/s pooled; phases {spread}", format!("{}:", side.name()));
        }
        let ratios = round_ratios(phases, n, clock);
        let pooled = ratio(phases, n, clock);
        let spread = stats::Summary::of(&ratios).map(|s| s.show(2)).unwrap_or_default();
        println!("    ratio operator/plain: {pooled:.2} pooled; rounds {spread}");
        if let Some((mean, hw)) = stats::mean_ci95(&ratios) {
            println!("    the mean round ratio is {mean:.2} +- {hw:.2} (95%)");
        }
        if sides.contains(&Side::Bare) {
            println!(
                "    ratio operator/create-only: {:.2} (GameServers without a state)",
                rate(phases, Side::Operator, n, clock) / rate(phases, Side::Bare, n, clock)
            );
        }
    }
    // The verdict, at one machine speed.
    let ratios = round_ratios(phases, n, steady);
    match stats::mean_ci95(&ratios) {
        Some((mean, hw)) if hw <= STABLE_TO => println!(
            "  verdict: operator/plain {mean:.2} +- {hw:.2} (95%) at one machine speed (goal >= 0.9, aim 1.0); stable to +-{STABLE_TO} between runs"
        ),
        Some((mean, hw)) => println!(
            "  verdict: operator/plain {mean:.2} +- {hw:.2} (95%) at one machine speed (goal >= 0.9, aim 1.0); NOT stable to +-{STABLE_TO}: with this spread it takes about {} rounds (GAMEZONE_BENCH_ROUNDS)",
            stats::needed_for(&ratios, STABLE_TO).unwrap_or(0)
        ),
        None => println!("  one round: no spread to judge; run at least two (GAMEZONE_BENCH_ROUNDS)"),
    }
    print_gauge(r);
    let now: Vec<f64> = r.op_rss.iter().map(|(now, _)| *now).collect();
    println!(
        "operator RSS with {} servers Ready, at the end of its phases: {} MiB; peak {:.1} MiB over the run (goal <= 100 at 2000)",
        n + r.big,
        stats::Summary::of(&now).map(|s| s.show(1)).unwrap_or_default(),
        r.final_peak,
    );
    println!(
        "operator RSS after a restart with {} servers Ready, once idle: {:.1} MiB; peak {:.1} MiB while it loaded them",
        n + r.big,
        r.restart_rss.0,
        r.restart_rss.1,
    );

    // CPU per 1000 servers, by process, over each side's phases; the control plane's total per
    // phase too, for its spread.
    let head: String = sides.iter().map(|s| format!("{:>12}", s.name())).collect();
    println!("CPU seconds per 1000 servers: {head}");
    let of_side = |side: Side| phases.iter().filter(move |p| p.side == side);
    let count = |side: Side| of_side(side).count().max(1) as f64;
    let per_k = |side: Side| 1000.0 / (count(side) * n as f64);
    let mut totals = vec![0.0; sides.len()];
    for (i, (name, _)) in r.procs.iter().enumerate() {
        let used: Vec<f64> = sides
            .iter()
            .map(|&side| {
                // The operator idles through the plain client's phases; that is not the plain client's.
                if name == "gamezone" && side != Side::Operator {
                    return 0.0;
                }
                of_side(side).map(|p| p.cpu[i]).sum::<f64>() * per_k(side)
            })
            .collect();
        for (t, u) in totals.iter_mut().zip(&used) {
            *t += u;
        }
        println!("  {name:<30}{}", used.iter().map(|u| format!("{u:>12.1}")).collect::<String>());
    }
    let cp: Vec<Vec<f64>> = sides
        .iter()
        .map(|&side| of_side(side).map(|p| p.cpu[..r.control_plane].iter().sum::<f64>() * 1000.0 / n as f64).collect())
        .collect();
    let cp_median: Vec<f64> = cp.iter().map(|v| stats::Summary::of(v).map_or(0.0, |s| s.median)).collect();
    println!("  {:<30}{}", "total", totals.iter().map(|u| format!("{u:>12.1}")).collect::<String>());
    println!(
        "  {:<30}{}",
        "control plane, median phase",
        cp_median.iter().map(|u| format!("{u:>12.1}")).collect::<String>()
    );
    for (side, v) in sides.iter().zip(&cp) {
        println!("    {:<12} phases {}", side.name(), stats::Summary::of(v).map(|s| s.show(1)).unwrap_or_default());
    }
    let cp_pooled: Vec<f64> = sides
        .iter()
        .map(|&side| of_side(side).map(|p| p.cpu[..r.control_plane].iter().sum::<f64>()).sum::<f64>() * per_k(side))
        .collect();
    let gauge = |side: Side| mean_gauge(of_side(side)).mean;
    println!(
        "  control plane CPU operator/plain: {:.2} pooled, {:.2} at one machine speed (goal <= 1.10)",
        cp_pooled[0] / cp_pooled[1],
        cp_pooled[0] / gauge(sides[0]) / (cp_pooled[1] / gauge(sides[1]))
    );
    print_phases(r);

    // What the API server did for each side, per server.
    let counters: Vec<apiserver::Counters> = sides
        .iter()
        .map(|&side| {
            let mut c = apiserver::Counters::default();
            for p in of_side(side) {
                c.add(&p.api);
            }
            c
        })
        .collect();
    let columns: Vec<(&str, &apiserver::Counters, f64)> =
        sides.iter().zip(&counters).map(|(s, c)| (s.name(), c, count(*s) * n as f64)).collect();
    apiserver::print_per_instance(&columns, 0.005);

    // Writes from the audit log, by who made them.
    println!("writes per server by who (audit log): {head}");
    let kinds: std::collections::BTreeSet<&String> = r.writes.values().flat_map(|w| w.keys()).collect();
    let mut sums = vec![0.0; sides.len()];
    for what in kinds {
        let row: Vec<f64> = sides
            .iter()
            .map(|s| r.writes.get(s).and_then(|w| w.get(what)).copied().unwrap_or(0) as f64 / (count(*s) * n as f64))
            .collect();
        if row.iter().all(|x| *x < 0.005) {
            continue;
        }
        for (s, x) in sums.iter_mut().zip(&row) {
            *s += x;
        }
        println!("  {what:<44}{}", row.iter().map(|x| format!("{x:>12.2}")).collect::<String>());
    }
    println!("  {:<44}{}", "total", sums.iter().map(|x| format!("{x:>12.2}")).collect::<String>());
    print_sides(r);
    print_scale(r);
}

/// Each side's figures in one table, as timed (the rate at one machine speed is not for the
/// peers: kwok writes more per Kruise pod, so the gauge is not the same work on both sides),
/// and the operator against each peer side.
fn print_sides(r: &Report) {
    let n = r.zones * r.servers;
    println!("per side, as timed ({n} servers a phase; median of phases, min..max):");
    println!(
        "  {:<13}{:>9}{:>22}{:>22}{:>11}{:>11}{:>10}{:>9}{:>9}",
        "side", "Ready/s", "time to Ready s", "deletion s", "cp ms/i", "ctl ms/i", "ctl MiB", "req/i", "etcd/i"
    );
    let spread = |v: &[f64]| {
        stats::Summary::of(v).map(|s| format!("{:.1} ({:.1}..{:.1})", s.median, s.min, s.max)).unwrap_or("-".into())
    };
    for &side in r.sides {
        let mine: Vec<&Phase> = r.phases.iter().filter(|p| p.side == side).collect();
        let count = (mine.len() * n).max(1) as f64;
        let times: Vec<f64> = mine.iter().map(|p| p.time.as_secs_f64()).collect();
        let deleted: Vec<f64> = mine.iter().filter_map(|p| p.deleted).map(|d| d.as_secs_f64()).collect();
        let cp: f64 = mine.iter().map(|p| p.cpu[..r.control_plane].iter().sum::<f64>()).sum();
        let of_controllers = |p: &Phase| -> f64 {
            r.procs
                .iter()
                .zip(&p.cpu)
                .filter(|((name, _), _)| side.controllers().contains(&name.as_str()))
                .map(|(_, c)| c)
                .sum()
        };
        let ctl: f64 = mine.iter().map(|p| of_controllers(p)).sum();
        let rss: Vec<f64> = mine.iter().map(|p| p.rss).collect();
        let mut api = apiserver::Counters::default();
        mine.iter().for_each(|p| api.add(&p.api));
        println!(
            "  {:<13}{:>9.1}{:>22}{:>22}{:>11.1}{:>11.1}{:>10.0}{:>9.1}{:>9.1}",
            side.name(),
            rate(r.phases, side, n, Clock::Wall),
            spread(&times),
            spread(&deleted),
            cp * 1000.0 / count,
            ctl * 1000.0 / count,
            stats::Summary::of(&rss).map_or(0.0, |s| s.median),
            api.total("requests") / count,
            api.total("etcd operations") / count,
        );
    }
    println!("  (cp: control-plane CPU; ctl: the side's controllers, the bench's own process for the plain client)");
    for &peer in r.sides.iter().filter(|s| matches!(s, Side::Kruise(_))) {
        let ratios: Vec<f64> = (0..r.phases.iter().map(|p| p.round + 1).max().unwrap_or(0))
            .filter_map(|round| {
                let of = |side| r.phases.iter().find(|p| p.round == round && p.side == side);
                Some(of(peer)?.time.as_secs_f64() / of(Side::Operator)?.time.as_secs_f64())
            })
            .collect();
        let cp = |side: Side| {
            let mine: Vec<&Phase> = r.phases.iter().filter(|p| p.side == side).collect();
            mine.iter().map(|p| p.cpu[..r.control_plane].iter().sum::<f64>()).sum::<f64>()
                / (mine.len() * n).max(1) as f64
        };
        println!(
            "  operator/{}: Ready/s {:.2} pooled, rounds {} (goal >= 2); control-plane CPU per instance {:.2} (goal <= 0.5)",
            peer.name(),
            rate(r.phases, Side::Operator, n, Clock::Wall) / rate(r.phases, peer, n, Clock::Wall),
            stats::Summary::of(&ratios).map(|s| s.show(2)).unwrap_or("-".into()),
            cp(Side::Operator) / cp(peer),
        );
    }
}

/// The scale step: each side's servers all at once, with its controllers' memory.
fn print_scale(r: &Report) {
    if r.scale.is_empty() {
        return;
    }
    println!("scale step (GAMEZONE_BENCH_SCALE), each side alone on the cluster:");
    for s in r.scale {
        let time = match s.time {
            Some(t) => format!("all Ready in {:.0} s, {:.1}/s", t.as_secs_f64(), s.servers as f64 / t.as_secs_f64()),
            None => format!(
                "NOT all Ready within {} s (GAMEZONE_BENCH_SCALE_SECS): {} Ready then, {:.1}/s",
                s.limit.as_secs(),
                s.ready,
                s.ready as f64 / s.limit.as_secs_f64()
            ),
        };
        println!(
            "  {:<13} {} servers: {time}; controllers' RSS {:.0} MiB{} (load average {:.1})",
            s.side.name(),
            s.servers,
            s.rss,
            if s.side == Side::Operator { " (goal <= 150 at 10,000)" } else { "" },
            s.load
        );
    }
}
