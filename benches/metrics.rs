//! What the zone metrics cost the operator, on a control plane of its own (KWOK nodes): ZONES
//! zones of SERVERS servers each (default 200 × 10) made Ready by the operator with the zone
//! metrics (`--zone-metrics=true`, the default) and without them (`false`), in turns. Per side:
//! the series `/metrics` serves and the time a scrape takes (the median of SCRAPES scrapes, once
//! every server is Ready), the operator's CPU seconds from its start until every server is Ready
//! and through the scrapes, and its RSS then. The zone series must grow with zones × types ×
//! states, not with servers: a second, smaller size shows how they scale.
//!
//! `cargo bench -p gamezone --bench metrics`; GAMEZONE_BENCH_ZONES (200), _INSTANCES (10),
//! _ROUNDS (2) rounds per side, _SCRAPES (20).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/host.rs"]
mod host;
#[path = "support/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gamezone::api::*;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use host::{cpu_secs, env_or, load_average, rss_mib};
use support::{Operator, POOL, free_port, http_get, pool_node};

const TIMEOUT: Duration = Duration::from_secs(900);

/// One side's figures.
struct Measured {
    series: usize,
    zone_series: usize,
    scrape_ms: f64,
    cpu: f64,
    rss: f64,
    ready_s: f64,
}

fn zone(name: &str, servers: usize) -> GameZone {
    let game = json!({"type": "game", "id": 1, "endId": servers, "nodeSelector": {POOL.0: POOL.1},
                      "ports": [{"name": "client", "containerPort": 7777}]});
    gamezone_api::fixture::zone(name).spec("services", json!([game])).build()
}

/// The samples `/metrics` serves (lines that are not comments), and those of the zone series:
/// every zone series is labelled with its namespace, no controller series is.
fn count_series(text: &str) -> (usize, usize) {
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).collect();
    let zone = samples.iter().filter(|l| l.contains("namespace=\"")).count();
    (samples.len(), zone)
}

async fn run_once(
    cluster: &common::PrivateCluster,
    metrics: bool,
    zones: usize,
    servers: usize,
    scrapes: usize,
) -> Measured {
    let kubeconfig = cluster.kubeconfig();
    let ns = common::namespace_in(kubeconfig, if metrics { "metrics-on" } else { "metrics-off" }).await;
    let port = free_port();
    let http = format!("127.0.0.1:{port}");
    let flag = format!("--zone-metrics={metrics}");
    let op = Operator::start_with(kubeconfig, &ns.name, &["--http-addr", &http, &flag, "--port-range", "7000-7999"]);
    let pid = op.pid();
    let api: Api<GameZone> = ns.api();
    let gs: Api<GameServer> = ns.api();
    let start = Instant::now();
    for i in 0..zones {
        api.create(&PostParams::default(), &zone(&format!("z{i}"), servers)).await.unwrap();
    }
    let want = zones * servers;
    common::wait_for(&format!("{want} servers Ready"), TIMEOUT, || async {
        let list = gs.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items;
        let ready = list.iter().filter(|s| s.status.as_ref().and_then(|s| s.state) == Some(ServerState::Ready)).count();
        if ready == want { Ok(()) } else { Err(format!("{ready} of {want}")) }
    })
    .await;
    let ready_s = start.elapsed().as_secs_f64();
    let mut took = Vec::new();
    let mut text = String::new();
    for _ in 0..scrapes {
        let t = Instant::now();
        let (code, body) = http_get(port, "/metrics").expect("scrape");
        took.push(t.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(code, 200);
        text = body;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (series, zone_series) = count_series(&text);
    let measured = Measured {
        series,
        zone_series,
        scrape_ms: stats::Summary::of(&took).expect("scrapes").median,
        cpu: cpu_secs(pid),
        rss: rss_mib(pid).0,
        ready_s,
    };
    api.delete_collection(&DeleteParams::background(), &ListParams::default()).await.unwrap();
    common::wait_for("the zones gone", TIMEOUT, || async {
        let left = gs.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len()
            + api.list(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
        if left == 0 { Ok(()) } else { Err(format!("{left} objects")) }
    })
    .await;
    drop(op);
    ns.cleanup().await;
    measured
}

#[tokio::main]
async fn main() {
    let zones = env_or("GAMEZONE_BENCH_ZONES", 200).max(2);
    let servers = env_or("GAMEZONE_BENCH_INSTANCES", 10).max(1);
    let rounds = env_or("GAMEZONE_BENCH_ROUNDS", 2).max(1);
    let scrapes = env_or("GAMEZONE_BENCH_SCRAPES", 20).max(1);
    let nodes = (zones * servers).div_ceil(200).max(1) as u8;
    eprintln!("starting a control plane with {nodes} simulated nodes (load average {:.1})", load_average());
    let cluster = common::start_private(1);
    let client = cluster.client().await;
    for i in 1..=nodes {
        Api::<Node>::all(client.clone()).create(&PostParams::default(), &pool_node(i)).await.unwrap();
    }
    support::install_crds(&client).await;

    // A smaller size first, once per side: how the series scale with servers.
    let mut results: BTreeMap<bool, Vec<Measured>> = BTreeMap::new();
    let small = run_once(&cluster, true, zones, 1, 3).await;
    eprintln!("{zones} zones × 1 server: {} series ({} zone series)", small.series, small.zone_series);
    for r in 0..rounds {
        let order = if r % 2 == 0 { [true, false] } else { [false, true] };
        for metrics in order {
            let m = run_once(&cluster, metrics, zones, servers, scrapes).await;
            eprintln!(
                "round {}: zone metrics {:<5} series {} (zone {}), scrape {:.1} ms, CPU {:.1} s, RSS {:.1} MiB, Ready after {:.1} s (load {:.1})",
                r + 1,
                metrics,
                m.series,
                m.zone_series,
                m.scrape_ms,
                m.cpu,
                m.rss,
                m.ready_s,
                load_average()
            );
            results.entry(metrics).or_default().push(m);
        }
    }
    let summary = |side: bool, f: fn(&Measured) -> f64| {
        stats::Summary::of(&results[&side].iter().map(f).collect::<Vec<_>>()).expect("rounds ran")
    };
    println!("\nzone metrics' cost: {zones} zones × {servers} servers, {rounds} rounds per side");
    for (side, name) in [(true, "with zone metrics"), (false, "without")] {
        println!("  {name}:");
        println!("    series served:       {}", summary(side, |m| m.series as f64).show(0));
        println!("    of them zone series: {}", summary(side, |m| m.zone_series as f64).show(0));
        println!("    scrape, ms:          {}", summary(side, |m| m.scrape_ms).show(1));
        println!("    operator CPU, s:     {}", summary(side, |m| m.cpu).show(1));
        println!("    operator RSS, MiB:   {}", summary(side, |m| m.rss).show(1));
    }
    let ratio = |f: fn(&Measured) -> f64| summary(true, f).median / summary(false, f).median;
    println!("  with/without: CPU {:.3}, RSS {:.3} (goal ≤ 1.05 each)", ratio(|m| m.cpu), ratio(|m| m.rss));
    let big = summary(true, |m| m.zone_series as f64).median;
    println!(
        "  zone series: {} at {zones} × 1 server, {big} at {zones} × {servers} (linear in zones × types × states, not in servers)",
        small.zone_series
    );
}
