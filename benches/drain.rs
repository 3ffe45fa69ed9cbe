//! The price of safety in a node drain, on a control plane of its own (KWOK nodes): a zone of 50
//! servers on one node, half of them with no players (deletable gate True) and the rest turning
//! deletable 10 s after `kubectl drain` of the node starts. Two sides, in turns:
//!
//! - **gates**: the operator's protection (`eviction: Gates`, the default): the drain waits for
//!   each server's players, and the operator moves each server once it may go;
//! - **plain**: the same drain with no protection (`eviction: Always`, as with no
//!   PodDisruptionBudget): the Eviction API lets every pod go at once, players or not.
//!
//! Per side: the time from the drain's start until every server runs Ready on the other node,
//! the drain's own time, the API writes in the zone's namespace (all, and the operator's), and
//! the servers whose pod went while their gate still said players were on it (killed).
//!
//! `cargo bench -p gamezone --bench drain`; GAMEZONE_BENCH_ROUNDS (default 3) rounds per side,
//! GAMEZONE_BENCH_INSTANCES (50) servers.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/host.rs"]
mod host;
#[path = "support/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use gamezone::api::*;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use host::{env_or, load_average};
use support::{Operator, POOL, kubectl, pool_node, set_gates, wait_ready_within};

/// How long the held servers' players stay after the drain starts.
const PLAYERS_STAY: Duration = Duration::from_secs(10);
const TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Gates,
    Plain,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Gates => "gates",
            Side::Plain => "plain",
        }
    }

    fn eviction(self) -> &'static str {
        match self {
            Side::Gates => "Gates",
            Side::Plain => "Always",
        }
    }
}

/// One drain's figures.
struct Drained {
    /// Drain start → every server Ready on the other node.
    moved: f64,
    /// Drain start → `kubectl drain` done.
    drain: f64,
    writes: usize,
    operator_writes: usize,
    killed: usize,
}

fn zone(servers: usize, side: Side) -> GameZone {
    let game = json!({"type": "game", "id": 1, "endId": servers, "deletableGates": ["NoPlayers"],
                      "eviction": side.eviction(), "nodeSelector": {POOL.0: POOL.1}});
    gamezone_api::fixture::zone("drain").spec("services", json!([game])).build()
}

/// Servers Ready on `node`.
async fn ready_on(servers: &Api<GameServer>, node: &str) -> usize {
    let list = servers.list(&support::selector("drain")).await.map(|l| l.items).unwrap_or_default();
    list.iter()
        .filter_map(|gs| gs.status.as_ref())
        .filter(|s| s.state == Some(ServerState::Ready) && s.node_name.as_deref() == Some(node))
        .count()
}

/// When each pod of `pods` began to go (a deletion timestamp, or gone), as a watch sees it.
fn watch_deletions(pods: Api<Pod>) -> Arc<Mutex<BTreeMap<String, Instant>>> {
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let events = watcher(pods, watcher::Config::default()).default_backoff();
        futures::pin_mut!(events);
        while let Some(event) = events.next().await {
            let (pod, gone) = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => (p, false),
                Ok(watcher::Event::Delete(p)) => (p, true),
                _ => continue,
            };
            if (gone || pod.metadata.deletion_timestamp.is_some())
                && let Some(uid) = pod.uid()
            {
                record.lock().unwrap().entry(uid).or_insert_with(Instant::now);
            }
        }
    });
    seen
}

async fn drain_once(cluster: &common::PrivateCluster, side: Side, n: usize) -> Drained {
    let kubeconfig = cluster.kubeconfig();
    let ns = common::namespace_in(kubeconfig, &format!("drain-{}", side.name())).await;
    let _op = Operator::start(kubeconfig, &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();

    // Every server on big-1 (big-2 cordoned while they start); the upper half holds players.
    kubectl(kubeconfig, &["cordon", "big-2"]);
    zones.create(&PostParams::default(), &zone(n, side)).await.unwrap();
    wait_ready_within(&zones, "drain", TIMEOUT).await;
    kubectl(kubeconfig, &["uncordon", "big-2"]);
    let held: BTreeSet<String> = (n / 2 + 1..=n).map(|i| format!("drain-game-{i}")).collect();
    set_gates(&servers, (1..=n).map(|i| format!("drain-game-{i}")).map(|s| (s.clone(), !held.contains(&s))).collect())
        .await;
    // Each pod marked as the gate says, before the drain asks.
    let want = |name: &str| if side == Side::Gates && held.contains(name) { "false" } else { "true" };
    common::wait_for("every pod's eviction mark", TIMEOUT, || async {
        let list = pods.list(&support::selector("drain")).await.map_err(|e| e.to_string())?.items;
        let wrong =
            list.iter().filter(|p| p.labels().get(EVICTABLE_LABEL).map(String::as_str) != Some(want(&p.name_any())));
        match wrong.count() {
            0 if list.len() == n => Ok(()),
            w => Err(format!("{w} of {} not yet", list.len())),
        }
    })
    .await;
    let held_pods: BTreeSet<String> = pods
        .list(&support::selector("drain"))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| held.contains(&p.name_any()))
        .filter_map(|p| p.uid())
        .collect();
    let deletions = watch_deletions(pods.clone());

    let since = SystemTime::now();
    let start = Instant::now();
    let mut drain = common::outside_cargo(common::cp_script())
        .args(["kubectl"])
        .arg(kubeconfig.parent().unwrap())
        .args(["drain", "big-1", "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=600s"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start kubectl drain");
    // The players leave after a while, whatever the drain did meanwhile.
    let leaving = {
        let (servers, held) = (servers.clone(), held.clone());
        tokio::spawn(async move {
            tokio::time::sleep(PLAYERS_STAY).await;
            let left = Instant::now();
            set_gates(&servers, held.iter().map(|s| (s.clone(), true)).collect()).await;
            left
        })
    };
    common::wait_for(&format!("{n} servers Ready on big-2"), TIMEOUT, || async {
        match ready_on(&servers, "big-2").await {
            r if r == n => Ok(()),
            r => Err(format!("{r} of {n}")),
        }
    })
    .await;
    let moved = start.elapsed().as_secs_f64();
    let status = tokio::task::spawn_blocking(move || drain.wait()).await.unwrap().unwrap();
    assert!(status.success(), "kubectl drain big-1: {status}");
    let drain = start.elapsed().as_secs_f64();
    let players_left = leaving.await.unwrap();
    let killed =
        deletions.lock().unwrap().iter().filter(|(uid, at)| held_pods.contains(*uid) && **at < players_left).count();

    // The audit log's last entries land a moment after their requests complete.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes: Vec<_> = common::audit::writes(kubeconfig)
        .into_iter()
        .filter(|w| w.received_since(since) && w.object_ref.namespace == ns.name && w.object_ref.resource != "leases")
        .collect();
    let operator_writes = writes.iter().filter(|w| w.by_agent("gamezone/")).count();

    kubectl(kubeconfig, &["uncordon", "big-1"]);
    zones.delete("drain", &Default::default()).await.unwrap();
    common::wait_for("the zone gone", TIMEOUT, || async {
        let left = support::names(&servers, "drain").await;
        if left.is_empty() { Ok(()) } else { Err(format!("{} servers", left.len())) }
    })
    .await;
    ns.cleanup().await;
    Drained { moved, drain, writes: writes.len(), operator_writes, killed }
}

#[tokio::main]
async fn main() {
    let rounds = env_or("GAMEZONE_BENCH_ROUNDS", 3).max(1);
    let n = env_or("GAMEZONE_BENCH_INSTANCES", 50).max(2);
    eprintln!("starting a control plane with two simulated nodes of 256 pods (load average {:.1})", load_average());
    let cluster = common::start_private(1);
    let client = cluster.client().await;
    for i in [1, 2] {
        Api::<Node>::all(client.clone()).create(&PostParams::default(), &pool_node(i)).await.unwrap();
    }
    support::install_crds(&client).await;

    let mut results: BTreeMap<Side, Vec<Drained>> = BTreeMap::new();
    for r in 0..rounds {
        let order = if r % 2 == 0 { [Side::Gates, Side::Plain] } else { [Side::Plain, Side::Gates] };
        for side in order {
            let d = drain_once(&cluster, side, n).await;
            eprintln!(
                "round {}: {:<5} moved {:5.1} s, drain {:5.1} s, writes {} (operator {}), killed {} (load {:.1})",
                r + 1,
                side.name(),
                d.moved,
                d.drain,
                d.writes,
                d.operator_writes,
                d.killed,
                load_average()
            );
            results.entry(side).or_default().push(d);
        }
    }

    println!(
        "\ndrain of a node with {n} servers, half of them holding players for {} s; {rounds} rounds per side",
        PLAYERS_STAY.as_secs()
    );
    let summary = |side: Side, f: fn(&Drained) -> f64| {
        stats::Summary::of(&results[&side].iter().map(f).collect::<Vec<_>>()).expect("rounds ran")
    };
    for side in [Side::Gates, Side::Plain] {
        println!("  {}:", side.name());
        println!("    every server Ready elsewhere, s: {}", summary(side, |d| d.moved).show(1));
        println!("    kubectl drain done, s:           {}", summary(side, |d| d.drain).show(1));
        println!("    API writes:                      {}", summary(side, |d| d.writes as f64).show(0));
        println!("    of them the operator's:          {}", summary(side, |d| d.operator_writes as f64).show(0));
        println!("    servers killed with players:     {}", summary(side, |d| d.killed as f64).show(0));
    }
    let ratio = |f: fn(&Drained) -> f64| summary(Side::Gates, f).median / summary(Side::Plain, f).median;
    println!(
        "  gates/plain: time {:.2}, writes {:.2}; killed {} vs {}",
        ratio(|d| d.moved),
        ratio(|d| d.writes as f64),
        summary(Side::Gates, |d| d.killed as f64).max,
        summary(Side::Plain, |d| d.killed as f64).median
    );
}
