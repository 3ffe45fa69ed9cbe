//! SDK sidecar writes under load: 1000 simulated servers, each calling SetLabel 10 times a
//! second and Health once a second, through the sidecar's real coalescing and rate-limited
//! writer, against an in-memory API server that counts writes; beside, in the same run, a
//! sidecar that writes every call. Runs `GAMEZONE_BENCH_ROUNDS` rounds (3) and prints each
//! round's API writes per second of both and their ratio, the pooled ratio and the spread.
//!
//! `GAMEZONE_BENCH_SERVERS` (1000) and `GAMEZONE_BENCH_SECONDS` (10, per round) resize it.
//!
//! Then the sidecar's footprint, as it runs in every game pod: `gamezone-sdk --local` idle
//! (resident memory, anonymous and file-backed, threads, CPU over `GAMEZONE_BENCH_SECONDS`), and
//! busy under a game calling SetLabel 20 times and Health twice a second over REST; beside it,
//! the same sidecar as a mode of the operator binary (`gamezone sdk`), whose pages it would map.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/stats.rs"]
mod stats;

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

/// Fields of `/proc/<pid>/status` in KiB (or a count), by name.
fn status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time used by `pid` so far (user + system), from `/proc/<pid>/stat` (USER_HZ = 100).
fn cpu(pid: u32) -> Duration {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    Duration::from_millis((f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 10)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One REST call with a fresh connection, as the example game server makes them.
fn call(port: u16, method: &str, path: &str, body: &str) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return };
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.read_to_end(&mut Vec::new());
}

/// The GameServer every measured sidecar serves.
const BENCH_SERVER: &str = "apiVersion: gamezone.dev/v1alpha1\nkind: GameServer\n\
    metadata: {name: bench-1, namespace: sdk-bench}\nspec: {zone: z, type: game, id: 1, template: {}}\n";

/// The footprint of the sidecar `program args…`; its idle RSS in KiB.
fn footprint(seconds: u64, label: &str, program: &str, args: &[&std::ffi::OsStr]) -> u64 {
    let port = |()| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (grpc, http) = (port(()), port(()));
    let mut child = std::process::Command::new(program)
        .args(args)
        .args(["--grpc-port", &grpc.to_string(), "--http-port", &http.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(Instant::now() < deadline, "the sidecar did not listen within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu(pid);
    std::thread::sleep(Duration::from_secs(seconds));
    let idle_cpu = cpu(pid) - before;
    let idle_rss = status(pid, "VmRSS");
    println!(
        "sdk footprint, {label}: idle  RSS {:.1} MiB (anonymous {:.1}, file-backed {:.1}), {} threads, CPU {} ms in {seconds} s",
        mib(idle_rss),
        mib(status(pid, "RssAnon")),
        mib(status(pid, "RssFile")),
        status(pid, "Threads"),
        idle_cpu.as_millis()
    );

    let before = cpu(pid);
    let started = Instant::now();
    let mut calls = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        for i in 0..10 {
            call(http, "PUT", "/metadata/label", &format!(r#"{{"key": "round", "value": "{calls}-{i}"}}"#));
            calls += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        call(http, "POST", "/health", "{}");
        calls += 1;
    }
    let busy_cpu = cpu(pid) - before;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "sdk footprint, {label}: busy  RSS {:.1} MiB (anonymous {:.1}), peak {:.1} MiB, CPU {:.1}% of a core at {:.0} calls/s",
        mib(status(pid, "VmRSS")),
        mib(status(pid, "RssAnon")),
        mib(status(pid, "VmHWM")),
        busy_cpu.as_secs_f64() / elapsed * 100.0,
        calls as f64 / elapsed
    );
    let _ = child.kill();
    let _ = child.wait();
    idle_rss
}

/// What one round counted.
struct Round {
    /// SetLabel calls made.
    calls: u64,
    /// API writes of the gamezone sidecar.
    spared: u64,
    /// API writes of a sidecar that writes every call.
    every_call: u64,
}

/// One round: `servers` servers making calls for `seconds`, through both sidecars.
fn round(rt: &tokio::runtime::Runtime, servers: u64, seconds: u64) -> Round {
    let run = Duration::from_secs(seconds);
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
    Round { calls: calls_made.load(Ordering::Relaxed), spared, every_call }
}

fn main() {
    let servers = env("GAMEZONE_BENCH_SERVERS", 1000);
    let seconds = env("GAMEZONE_BENCH_SECONDS", 10);
    let rounds = env("GAMEZONE_BENCH_ROUNDS", 3).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let per_s = |w: u64| w as f64 / seconds as f64;
    // One write per half second per server over the run and the last second's drain, plus the
    // first write, which goes out at once.
    let most = servers * (2 * (seconds + 1) + 1);
    let mut all = Vec::new();
    println!("sdk: {servers} servers, {seconds} s per round, {rounds} rounds");
    for r in 0..rounds {
        let got = round(&rt, servers, seconds);
        println!(
            "sdk: round {}: {} SetLabel calls + {} Health pings; gamezone sidecar {:.0} API writes/s, writes every call {:.0}/s; {:.1}x fewer (load average {:.1})",
            r + 1,
            got.calls,
            got.calls / 10,
            per_s(got.spared),
            per_s(got.every_call),
            got.every_call as f64 / got.spared.max(1) as f64,
            load_average(),
        );
        assert!(
            got.spared <= most,
            "round {}: the sidecar wrote {} times, more than once per 500 ms per server ({most})",
            r + 1,
            got.spared
        );
        all.push(got);
    }
    let sum = |f: fn(&Round) -> u64| all.iter().map(f).sum::<u64>();
    let (spared, every_call) = (sum(|r| r.spared), sum(|r| r.every_call));
    let secs = (seconds * rounds) as f64;
    println!("sdk: gamezone sidecar  {:>10.0} API writes/s pooled ({spared} writes)", spared as f64 / secs);
    println!("sdk: writes every call {:>10.0} API writes/s pooled ({every_call} writes)", every_call as f64 / secs);
    let ratios: Vec<f64> = all.iter().map(|r| r.every_call as f64 / r.spared.max(1) as f64).collect();
    println!(
        "sdk: ratio             {:>10.1}x fewer writes pooled; rounds {}",
        every_call as f64 / spared.max(1) as f64,
        stats::Summary::of(&ratios).map(|s| s.show(1)).unwrap_or_default()
    );
    let rates: Vec<f64> = all.iter().map(|r| per_s(r.spared)).collect();
    println!(
        "sdk: gamezone sidecar writes/s, rounds {}",
        stats::Summary::of(&rates).map(|s| s.show(0)).unwrap_or_default()
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gameserver.yaml");
    std::fs::write(&file, format!("{BENCH_SERVER}status: {{state: Ready}}\n")).unwrap();
    let local = ["--local".as_ref(), "-f".as_ref(), file.as_os_str()];
    let sdk_bin = sdk_binary("sidecar");
    let sdk_bin = sdk_bin.to_str().expect("a UTF-8 target dir");
    let release_bin = sdk_binary("release");
    let release =
        footprint(seconds, "local, gamezone-sdk, release profile", release_bin.to_str().expect("UTF-8"), &local);
    against_operator_mode(seconds, "local", sdk_bin, &local);
    println!("sdk footprint: local, {:.1} MiB idle for the release profile", mib(release));

    // As pods run it: a kube client with TLS, its GameServer read and watched by name.
    eprintln!("starting a control plane for the in-cluster footprint");
    let cluster = common::start_private(1);
    rt.block_on(bench_server(&cluster));
    let in_cluster = [
        "--kubeconfig".as_ref(),
        cluster.kubeconfig().as_os_str(),
        "--server".as_ref(),
        "bench-1".as_ref(),
        "--namespace".as_ref(),
        "sdk-bench".as_ref(),
    ];
    against_operator_mode(seconds, "in a cluster", sdk_bin, &in_cluster);
}

/// The footprint of the sidecar-profile `gamezone-sdk` and of the operator binary's
/// `gamezone sdk` mode (the peer), both run `place` with `args`, and how they compare.
fn against_operator_mode(seconds: u64, place: &str, sdk_bin: &str, args: &[&std::ffi::OsStr]) {
    let small = footprint(seconds, &format!("{place}, gamezone-sdk, sidecar profile (what pods run)"), sdk_bin, args);
    let with_sdk: Vec<&std::ffi::OsStr> = std::iter::once("sdk".as_ref()).chain(args.iter().copied()).collect();
    let mode = footprint(
        seconds,
        &format!("{place}, gamezone sdk (the operator binary)"),
        env!("CARGO_BIN_EXE_gamezone"),
        &with_sdk,
    );
    println!(
        "sdk footprint: {place}, idle RSS {:.1} MiB (aim: under 10) against {:.1} MiB for the operator binary's mode ({:.2}x)",
        mib(small),
        mib(mode),
        small as f64 / mode.max(1) as f64
    );
}

/// `gamezone-sdk` built with `profile`: `sidecar` (Cargo.toml) is what images hold. Built here
/// when stale (minutes the first time: every dependency in that profile).
fn sdk_binary(profile: &str) -> std::path::PathBuf {
    let target = common::target_dir();
    eprintln!("cargo build --profile {profile} -p gamezone-sdk");
    let built = common::outside_cargo(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--profile", profile, "--locked", "-q", "-p", "gamezone-sdk", "--bin", "gamezone-sdk"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo");
    assert!(built.success(), "cargo build --profile {profile} -p gamezone-sdk failed");
    target.join(profile).join("gamezone-sdk")
}

/// The CRDs, a namespace and the GameServer the in-cluster sidecar serves.
async fn bench_server(cluster: &common::PrivateCluster) {
    use k8s_openapi::api::core::v1::Namespace;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    let client = cluster.client().await;
    let apply = PatchParams::apply("bench").force();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in gamezone::api::crds() {
        crds.patch(crd.metadata.name.as_deref().unwrap(), &apply, &Patch::Apply(&crd)).await.unwrap();
    }
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "sdk-bench"}})).unwrap();
    Api::<Namespace>::all(client.clone()).patch("sdk-bench", &apply, &Patch::Apply(&ns)).await.unwrap();
    let gs: GameServer = serde_yaml::from_str(BENCH_SERVER).unwrap();
    let api: Api<GameServer> = Api::namespaced(client, "sdk-bench");
    // The CRD is served a moment after it is applied.
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = api.patch("bench-1", &apply, &Patch::Apply(&gs)).await {
        assert!(Instant::now() < deadline, "cannot create the bench GameServer: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The one-minute load average.
fn load_average() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|l| l.parse().ok()).unwrap_or(f64::NAN)
}
