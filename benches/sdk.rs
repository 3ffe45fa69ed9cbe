//! SDK sidecar writes under load: 1000 simulated servers, each calling SetLabel 10 times a
//! second and Health once a second, through the sidecar's real coalescing and rate-limited
//! writer, against an in-memory API server that counts writes; beside, in the same run, a
//! sidecar that writes every call. Prints API writes per second of both and their ratio.
//!
//! `GAMEZONE_BENCH_SERVERS` (1000) and `GAMEZONE_BENCH_SECONDS` (10) resize it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gamezone::api::{GameServer, GameServerSpec};
use gamezone::sdk::writer::{Backend, Memory, Part, Sdk, WRITE_EVERY};
use serde_json::json;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The calls of one server for `run`: SetLabel every 100 ms, Health every second.
async fn calls(run: Duration, offset: Duration, mut label: impl FnMut(u64), mut health: impl FnMut()) {
    tokio::time::sleep(offset).await;
    let start = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u64;
    while start.elapsed() < run {
        ticks.tick().await;
        label(n);
        if n.is_multiple_of(10) {
            health();
        }
        n += 1;
    }
}

fn main() {
    let servers = env("GAMEZONE_BENCH_SERVERS", 1000);
    let seconds = env("GAMEZONE_BENCH_SECONDS", 10);
    let run = Duration::from_secs(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let calls_made = Arc::new(AtomicU64::new(0));
    let (spared, every_call) = rt.block_on(async {
        let mut spared = Vec::new();
        let mut every_call = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..servers {
            let offset = Duration::from_micros(i * 100_000 / servers.max(1));
            let gs = GameServer::new(&format!("server-{i}"), GameServerSpec::default());

            // The sidecar as it runs: calls change what is wanted, one writer per server.
            let memory = Arc::new(Memory::new(&gs));
            let sdk = Sdk::new(memory.get().await.unwrap());
            let writer = tokio::spawn(sdk.clone().write_loop(memory.clone(), WRITE_EVERY));
            let counted = calls_made.clone();
            let (a, b) = (sdk.clone(), sdk.clone());
            tasks.push(tokio::spawn(async move {
                calls(
                    run,
                    offset,
                    |n| {
                        counted.fetch_add(1, Ordering::Relaxed);
                        a.set_label("round", &n.to_string()).unwrap();
                    },
                    || b.ping(),
                )
                .await;
                // Let the last call be written.
                tokio::time::sleep(WRITE_EVERY * 2).await;
                writer.abort();
            }));
            spared.push(memory);

            // A sidecar that writes every call (Health included) as it comes.
            let naive = Arc::new(Memory::new(&gs));
            let n2 = naive.clone();
            tasks.push(tokio::spawn(async move {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
                let writer = tokio::spawn(async move {
                    while let Some(body) = rx.recv().await {
                        let version = n2.get().await.unwrap().metadata.resource_version.unwrap();
                        n2.patch(&version, Part::Metadata, body).await.unwrap();
                    }
                });
                let tx2 = tx.clone();
                calls(
                    run,
                    offset,
                    |n| {
                        let _ = tx.send(json!({"metadata": {"labels": {"gamezone.dev/sdk-round": n.to_string()}}}));
                    },
                    || {
                        let _ = tx2.send(json!({"metadata": {"annotations": {"gamezone.dev/sdk-health": "ping"}}}));
                    },
                )
                .await;
                drop((tx, tx2));
                let _ = writer.await;
            }));
            every_call.push(naive);
        }
        let started = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        eprintln!("ran {servers} servers for {seconds} s in {:.1} s", started.elapsed().as_secs_f64());
        let total = |v: &[Arc<Memory>]| v.iter().map(|m| m.writes()).sum::<u64>();
        (total(&spared), total(&every_call))
    });
    let calls = calls_made.load(Ordering::Relaxed);
    let per_s = |w: u64| w as f64 / seconds as f64;
    println!("sdk: {servers} servers, {seconds} s, {calls} SetLabel calls + {} Health pings", calls / 10);
    println!("sdk: gamezone sidecar  {:>10.0} API writes/s ({spared} writes)", per_s(spared));
    println!("sdk: writes every call {:>10.0} API writes/s ({every_call} writes)", per_s(every_call));
    println!("sdk: ratio             {:>10.1}x fewer writes", every_call as f64 / spared.max(1) as f64);
    // One write per half second per server over the run and the last second's drain, plus the
    // first write, which goes out at once.
    let most = servers * (2 * (seconds + 1) + 1);
    assert!(spared <= most, "the sidecar wrote {spared} times, more than once per 500 ms per server ({most})");
}
