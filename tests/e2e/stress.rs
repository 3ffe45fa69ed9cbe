//! A stress zone on the real node: load-test bots (the example game server's `bot` mode) are a
//! service type without ports, scaled by `endId`. They find the gateways in the zone's topology,
//! hold sessions with them and ask each gateway to `ping` the game servers in turn; the test
//! holds the figures every bot reports against what the gateways and game servers say they
//! answered.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use gamezone::api::*;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::ONE_AT_A_TIME;
use crate::cluster::{Cluster, Ns};
use crate::common::wait_for;
use crate::servers::tcp_request;
use crate::support::{self, install_crds};
use crate::zones::{operator, reachable_at, service, wait_running_within, zone};

const GATEWAYS: i64 = 2;
const GAMES: i64 = 4;
/// Requests per second of each bot, and how long each sends.
const RATE: u64 = 2;
const RUN_SECS: u64 = 30;
/// Where every bot serves its figures (the bot's default).
const METRICS_PORT: u16 = 9464;

/// The zone's services: gateways (a Dynamic client port, as players would reach them), game
/// servers (pod network only) and `bots` bots, each asking its gateway to ping the game servers.
fn services(bots: i64) -> Vec<Value> {
    let small = json!({"requests": {"cpu": "5m", "memory": "16Mi"}});
    let mut gateway = service(
        "gateway",
        1,
        Some(GATEWAYS),
        json!([{"name": "client", "containerPort": 7000, "protocol": "TCPUDP", "policy": "Dynamic"}]),
    );
    gateway["resources"] = small.clone();
    let mut game = service("game", 1, Some(GAMES), json!([{"name": "game", "containerPort": 7777, "policy": "None"}]));
    game["resources"] = small.clone();
    let mut services = vec![gateway, game];
    if bots > 0 {
        let mut bot = service("bot", 1, Some(bots), json!([]));
        bot["args"] = json!([
            "--request",
            "ping {game}",
            "--rate",
            RATE.to_string(),
            "--duration",
            format!("{RUN_SECS}s"),
            "--report-every",
            "10s"
        ]);
        bot["resources"] = small;
        services.push(bot);
    }
    services
}

/// `GET path` from `addr:port` over plain HTTP/1.1: the body of a 200.
fn http_get(addr: &str, port: u16, path: &str) -> Result<String, String> {
    let target = format!("{addr}:{port}");
    let sock: std::net::SocketAddr = target.parse().map_err(|e| format!("{target}: {e}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(2)).map_err(|e| format!("{target}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| format!("{target}: {e}"))?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or_else(|| format!("{target}: no HTTP answer: {out:?}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("{target}{path}: {head}"));
    }
    Ok(body.to_owned())
}

/// One value of a Prometheus text exposition, by series name.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(&format!("{name}{{"))).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The bot servers of the zone, by name.
async fn bots(servers: &Api<GameServer>, zone: &str) -> Vec<GameServer> {
    let mut list: Vec<GameServer> = servers
        .list(&support::selector(zone))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.spec.type_ == "bot")
        .collect();
    list.sort_by_key(|s| s.spec.id);
    list
}

#[tokio::test]
async fn bots_scaled_by_end_id_load_the_gateways_and_the_servers_saw_every_request_they_report() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let ns = Ns::new(cluster, "e2e-stress").await;
    install_crds(&ns.client).await;
    let _op = operator(cluster, &ns, "6900-6999");
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let pods: Api<Pod> = ns.api();

    // The servers first, so every request a bot counts finds them up.
    zones.create(&PostParams::default(), &zone("stress", 320, services(0), json!([]))).await.unwrap();
    let set = |bots: i64| Patch::Merge(json!({"spec": {"services": services(bots)}}));
    wait_running_within(&ns, "stress", Duration::from_secs(120)).await;

    // 20 bots, as a service type without ports.
    zones.patch("stress", &PatchParams::default(), &set(20)).await.unwrap();
    let all = wait_running_within(&ns, "stress", Duration::from_secs(180)).await;
    assert_eq!(all.len(), (GATEWAYS + GAMES + 20) as usize);
    let bot_servers = bots(&servers, "stress").await;
    assert_eq!(bot_servers.len(), 20);
    for b in &bot_servers {
        assert!(b.status.as_ref().unwrap().ports.is_empty(), "{}: a bot has no ports", b.name_any());
    }

    // Every bot runs its 30 s and reports.
    let mut reports = Vec::new();
    for b in &bot_servers {
        let addr = b.status.as_ref().and_then(|s| s.address.clone()).expect("a bot's pod address");
        let name = b.name_any();
        let report: Value =
            wait_for(&format!("{name} done at {addr}:{METRICS_PORT}"), Duration::from_secs(RUN_SECS + 90), || async {
                let r: Value = serde_json::from_str(&http_get(&addr, METRICS_PORT, "/report")?)
                    .map_err(|e| format!("/report is not JSON: {e}"))?;
                if r["done"] == true { Ok(r) } else { Err(format!("not done: {r}")) }
            })
            .await;
        assert_eq!(report["bot"], name.as_str(), "{report}");
        assert_eq!(report["errors"], 0, "{name}: {report}");
        let requests = report["requests"].as_u64().unwrap();
        // RATE a second for RUN_SECS, less what a loaded node delays.
        assert!(requests >= RATE * RUN_SECS * 2 / 3, "{name} sent {requests}: {report}");
        assert!(report["latencyMs"]["p99"].as_f64().unwrap() > 0.0, "{report}");
        let text = http_get(&addr, METRICS_PORT, "/metrics").unwrap();
        assert_eq!(metric(&text, "gamezone_bot_requests_total"), Some(requests as f64), "{text}");
        assert_eq!(metric(&text, "gamezone_bot_done"), Some(1.0), "{text}");
        reports.push(report);
    }
    // And says so in its log, one JSON line.
    let log = cluster.kubectl(&["logs", "-n", &ns.name, "stress-bot-7"]);
    let done: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "bot done")
        .unwrap_or_else(|| panic!("no `bot done` line in stress-bot-7's log:\n{log}"));
    assert_eq!(done["requests"], reports[6]["requests"], "{done}");

    // The servers saw what the bots say they sent: every ping at a gateway, every relayed
    // hello at a game server.
    let sent: u64 = reports.iter().map(|r| r["requests"].as_u64().unwrap()).sum();
    let served = |type_: &str, what: &str| {
        let list: Vec<&GameServer> = all.iter().filter(|s| s.spec.type_ == type_).collect();
        list.iter()
            .map(|s| {
                let port = &s.status.as_ref().unwrap().ports[0].name;
                let (addr, p) = reachable_at(s, port);
                let stats = tcp_request(&addr, p, "stats").unwrap();
                stats["served"][what].as_u64().unwrap_or_else(|| panic!("{}: {stats}", s.name_any()))
            })
            .collect::<Vec<u64>>()
    };
    let pings = served("gateway", "ping");
    let hellos = served("game", "hello");
    assert_eq!(pings.iter().sum::<u64>(), sent, "gateways' pings {pings:?} against the bots' {sent}");
    assert_eq!(hellos.iter().sum::<u64>(), sent, "game servers' hellos {hellos:?} against the bots' {sent}");
    assert!(pings.iter().all(|p| *p > 0) && hellos.iter().all(|h| *h > 0), "{pings:?} {hellos:?}");

    // Scaled by endId: 40, then back to 20; the extra bots are drained like any server.
    zones.patch("stress", &PatchParams::default(), &set(40)).await.unwrap();
    wait_running_within(&ns, "stress", Duration::from_secs(240)).await;
    assert_eq!(bots(&servers, "stress").await.len(), 40);
    zones.patch("stress", &PatchParams::default(), &set(20)).await.unwrap();
    wait_running_within(&ns, "stress", Duration::from_secs(120)).await;
    let left = bots(&servers, "stress").await;
    assert_eq!(left.iter().map(|b| b.spec.id).collect::<Vec<_>>(), (1..=20).collect::<Vec<_>>());
    wait_for("the pods of bots 21..40 gone", Duration::from_secs(90), || async {
        let names: Vec<String> = pods
            .list(&support::selector("stress"))
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .map(|p| p.name_any())
            .filter(|n| n.strip_prefix("stress-bot-").and_then(|i| i.parse::<i64>().ok()).is_some_and(|i| i > 20))
            .collect();
        if names.is_empty() { Ok(()) } else { Err(format!("still there: {names:?}")) }
    })
    .await;
    ns.finish().await;
}

/// `scripts/bench-net.sh` in short (one round of 2 s per cell): every cell of seed 003's table
/// is measured, without errors, and each containerized row is printed as a share of bare.
#[tokio::test]
async fn the_network_benchmark_in_short_measures_every_cell_without_errors() {
    // Its own control plane, but the same two cores: not beside another test's load.
    let _serial = ONE_AT_A_TIME.lock().await;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-net.sh");
    let work = tempfile::tempdir().unwrap();
    let results = work.path().join("net.tsv");
    let out = crate::common::outside_cargo(&script)
        .env("CARGO_TARGET_DIR", crate::common::target_dir())
        .env("GAMEZONE_IMAGE_PROFILE", if cfg!(debug_assertions) { "dev" } else { "release" })
        .env("RUNS", "1")
        .env("SECS", "2")
        .env("NET_RESULTS", &results)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run scripts/bench-net.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench-net.sh failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("every cell measured, no errors"), "{stdout}");

    let tsv = std::fs::read_to_string(&results).unwrap();
    let mut cells = std::collections::BTreeSet::new();
    for line in tsv.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let (rate, errors): (f64, u64) = (f[3].parse().unwrap(), f[4].parse().unwrap());
        assert!(rate > 0.0 && errors == 0, "{line}");
        cells.insert((f[0].to_owned(), f[1].to_owned()));
    }
    assert_eq!(cells.len(), 12, "4 rows x 3 metrics: {cells:?}");
    // Each containerized row's line ends its three cells with a share of bare ("0.97x").
    for row in ["server pod, pod IP", "server pod, host port (DNAT)", "bot pod -> server pod"] {
        let line = stdout.lines().find(|l| l.starts_with(row)).unwrap_or_else(|| panic!("no row {row:?}:\n{stdout}"));
        let shares =
            line.split_whitespace().filter(|w| w.ends_with('x') && w.trim_end_matches('x').parse::<f64>().is_ok());
        assert_eq!(shares.count(), 3, "{line}");
    }
    assert!(stdout.contains("conntrack entries") && stdout.contains("softirq"), "the node's counters: {stdout}");
}
