//! The running server: sockets, answers, the artifacts watch and shutdown on SIGTERM/SIGINT.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::artifacts::{Artifacts, Snapshot};
use crate::ports;
use crate::protocol::{self, Request};
use crate::settings::{Identity, Settings};
use crate::topology::Topology;

/// How often the artifacts are read again to notice a swapped tree or an edited config.
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// Longest request line accepted over TCP.
const MAX_REQUEST: u64 = 4096;
/// Longest answer relayed from a peer (a hello carries the peer's whole config).
const MAX_PEER_ANSWER: u64 = 2 << 20;
/// How long a `ping` waits for a peer to connect and answer.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest UDP payload; bigger answers are replaced by an error pointing at TCP.
const MAX_DATAGRAM: usize = 65_507;

/// Which socket a request arrived on; echoed in the hello.
#[derive(Clone, Debug)]
struct Via {
    name: String,
    protocol: &'static str,
    port: u16,
}

/// State shared by every socket.
struct Ctx {
    identity: Identity,
    extra_args: Vec<String>,
    topology: PathBuf,
    snapshot: RwLock<Snapshot>,
    served: Served,
}

/// What this server has answered since it started, by request: the `stats` answer, and the
/// count a load test checks its bots' figures against.
#[derive(Default)]
struct Served {
    hello: AtomicU64,
    peers: AtomicU64,
    ping: AtomicU64,
    /// Requests answered with an error because they could not be parsed.
    bad: AtomicU64,
    /// TCP connections accepted.
    connections: AtomicU64,
    /// TCP sessions open now: the players on this server.
    open: AtomicU64,
    /// Game loop ticks.
    ticks: AtomicU64,
}

impl Served {
    fn json(&self) -> Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        json!({"hello": n(&self.hello), "peers": n(&self.peers), "ping": n(&self.ping), "bad": n(&self.bad),
            "connections": n(&self.connections)})
    }

    /// The Prometheus text of what was served.
    fn prometheus(&self) -> String {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::from(
            "# HELP game_requests_total Requests answered, by request.\n# TYPE game_requests_total counter\n",
        );
        for (request, c) in [("hello", &self.hello), ("peers", &self.peers), ("ping", &self.ping), ("bad", &self.bad)] {
            out.push_str(&format!("game_requests_total{{request=\"{request}\"}} {}\n", n(c)));
        }
        out.push_str(&format!(
            "# HELP game_connections_total TCP connections accepted.\n# TYPE game_connections_total counter\ngame_connections_total {}\n",
            n(&self.connections)
        ));
        out.push_str(&format!(
            "# HELP game_players Players connected now (open TCP sessions).\n# TYPE game_players gauge\ngame_players {}\n",
            n(&self.open)
        ));
        out.push_str(&format!(
            "# HELP game_ticks_total Game loop ticks (10 a second).\n# TYPE game_ticks_total counter\ngame_ticks_total {}\n",
            n(&self.ticks)
        ));
        out
    }
}

/// One open session, counted while it lives.
struct Player<'a>(&'a AtomicU64);

impl<'a> Player<'a> {
    fn joins(open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Player(open)
    }
}

impl Drop for Player<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The game loop: here it only counts its ticks.
async fn tick(ctx: Arc<Ctx>) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        every.tick().await;
        ctx.served.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs until SIGTERM or SIGINT, then closes every socket and returns.
pub async fn run(settings: Settings) -> Result<()> {
    // Before anything can take time: a SIGTERM from now on ends the server cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;

    let id = &settings.identity;
    tracing::info!(zone = %id.zone, zone_id = id.zone_id, r#type = %id.type_, id = id.id,
        instance = %id.instance, args = ?settings.extra_args, "starting");

    let topology = Topology::read(&settings.topology);
    let own = match &topology {
        Ok(t) => {
            let own = t.instance(&id.instance);
            if own.is_none() {
                tracing::warn!(topology = %settings.topology.display(), instance = %id.instance,
                    "this instance is not in the topology; listening on the announced ports");
            }
            own
        }
        Err(e) => {
            tracing::warn!(error = %e, "no topology; listening on the announced ports, peers unknown");
            None
        }
    };
    let (plan, notes) = ports::plan(&settings.ports, own);
    for note in notes {
        tracing::info!(note = %note, "port");
    }

    let artifacts = Artifacts::new(settings.artifacts.clone(), settings.state.clone(), settings.config.clone());
    let snapshot = artifacts.read();
    log_snapshot(&snapshot);

    let ctx = Arc::new(Ctx {
        identity: settings.identity.clone(),
        extra_args: settings.extra_args.clone(),
        topology: settings.topology.clone(),
        snapshot: RwLock::new(snapshot),
        served: Served::default(),
    });

    let mut tasks = JoinSet::new();
    let mut listening = Vec::new();
    for l in &plan {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, l.port));
        if l.tcp {
            let listener =
                TcpListener::bind(addr).await.with_context(|| format!("listen on TCP {addr} ({})", l.name))?;
            let via = Via { name: l.name.clone(), protocol: "tcp", port: l.port };
            tasks.spawn(serve_tcp(ctx.clone(), via, listener));
            listening.push(format!("{}/tcp:{}", l.name, l.port));
        }
        if l.udp {
            let socket = UdpSocket::bind(addr).await.with_context(|| format!("bind UDP {addr} ({})", l.name))?;
            let via = Via { name: l.name.clone(), protocol: "udp", port: l.port };
            tasks.spawn(serve_udp(ctx.clone(), via, Arc::new(socket)));
            listening.push(format!("{}/udp:{}", l.name, l.port));
        }
    }
    if listening.is_empty() {
        tracing::warn!("no GAMEZONE_PORT_* ports to listen on; serving nothing until stopped");
    }
    tracing::info!(ports = ?listening, "listening");
    tasks.spawn(watch(ctx.clone(), artifacts));
    tasks.spawn(tick(ctx.clone()));
    if let Some(addr) = settings.metrics {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("metrics: listen on {addr}"))?;
        let served = ctx.clone();
        let page =
            move |path: &str| (path == "/metrics").then(|| (crate::http::PROMETHEUS_TEXT, served.served.prometheus()));
        tasks.spawn(crate::http::serve(listener, "/metrics", page));
        tracing::info!(%addr, "metrics at /metrics");
    }
    if let Some(port) = settings.sdk_http_port {
        // After the listeners: Ready means players can connect.
        tasks.spawn(crate::sdk::run(port, crate::sdk::HEALTH_EVERY));
    }

    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal, "shutting down");
    // Aborting the tasks drops their sockets and their connections' tasks.
    tasks.shutdown().await;
    tracing::info!(ports = ?listening, served = %ctx.served.json(), "listeners closed; exiting");
    Ok(())
}

fn log_snapshot(s: &Snapshot) {
    match &s.state {
        Ok(state) => tracing::info!(dir = %s.dir.display(), tree = %s.tree_label(), revisions = ?state.revisions,
            "artifacts"),
        Err(e) => tracing::warn!(dir = %s.dir.display(), reason = %e, "artifacts without gamezone-init state"),
    }
    match &s.config {
        Ok(v) => tracing::info!(path = %s.config_path, value = %v, "config loaded"),
        Err(e) => tracing::warn!(path = %s.config_path, error = %e, "config unreadable; answering with the error"),
    }
}

/// Reads the artifacts every second and swaps in what changed, logging it.
async fn watch(ctx: Arc<Ctx>, artifacts: Artifacts) {
    let mut tick = tokio::time::interval(RELOAD_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let a = artifacts.clone();
        let Ok(new) = tokio::task::spawn_blocking(move || a.read()).await else { continue };
        let old = ctx.snapshot.read().expect("snapshot lock").clone();
        if new == old {
            continue;
        }
        if new.current != old.current || new.state != old.state {
            match &new.state {
                Ok(s) => tracing::info!(from = %old.tree_label(), to = %new.tree_label(), revisions = ?s.revisions,
                    "artifacts tree swapped"),
                Err(e) => tracing::info!(from = %old.tree_label(), to = %new.tree_label(), reason = %e,
                    "artifacts tree changed"),
            }
        }
        if new.config != old.config {
            match &new.config {
                Ok(v) => tracing::info!(path = %new.config_path, value = %v, "config reloaded"),
                Err(e) => tracing::warn!(path = %new.config_path, error = %e,
                    "config unreadable; answering with the error"),
            }
        }
        *ctx.snapshot.write().expect("snapshot lock") = new;
    }
}

async fn serve_tcp(ctx: Arc<Ctx>, via: Via, listener: TcpListener) {
    // Connections live in this set, so aborting the listener's task closes them too.
    let mut conns = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                tracing::debug!(%from, port = %via.name, "connection");
                ctx.served.connections.fetch_add(1, Ordering::Relaxed);
                conns.spawn(serve_conn(ctx.clone(), via.clone(), stream));
            }
            Err(e) => {
                tracing::warn!(port = %via.name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        while conns.try_join_next().is_some() {}
    }
}

async fn serve_conn(ctx: Arc<Ctx>, via: Via, stream: TcpStream) {
    let _player = Player::joins(&ctx.served.open);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        match (&mut read).take(MAX_REQUEST).read_line(&mut line).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "connection read failed");
                return;
            }
        }
        let too_long = !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST;
        let reply = if too_long {
            line_of(&json!({"error": format!("request longer than {MAX_REQUEST} bytes")}))
        } else {
            answer(&ctx, &line, &via).await
        };
        if write.write_all(reply.as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

async fn serve_udp(ctx: Arc<Ctx>, via: Via, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 2048];
    // A `ping` waits on a peer; answer off the receive loop so other datagrams are not held up.
    let mut answers = JoinSet::new();
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(port = %via.name, error = %e, "udp receive failed");
                continue;
            }
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let (ctx, via, socket) = (ctx.clone(), via.clone(), socket.clone());
        answers.spawn(async move {
            let mut reply = answer(&ctx, &text, &via).await;
            if reply.len() > MAX_DATAGRAM {
                reply = line_of(&json!({"error": "the answer does not fit in a datagram; ask over TCP"}));
            }
            if let Err(e) = socket.send_to(reply.as_bytes(), from).await {
                tracing::debug!(%from, error = %e, "udp send failed");
            }
        });
        while answers.try_join_next().is_some() {}
    }
}

fn line_of(v: &Value) -> String {
    let mut s = v.to_string();
    s.push('\n');
    s
}

/// The JSON line answering one request.
async fn answer(ctx: &Ctx, text: &str, via: &Via) -> String {
    let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
    let v = match protocol::parse(text) {
        Ok(Request::Hello) => {
            count(&ctx.served.hello);
            ctx.hello(via)
        }
        Ok(Request::Peers) => {
            count(&ctx.served.peers);
            ctx.peers()
        }
        Ok(Request::Ping { peer, port }) => {
            count(&ctx.served.ping);
            ctx.ping(&peer, port.as_deref()).await
        }
        Ok(Request::Stats) => json!({"instance": ctx.identity.instance, "served": ctx.served.json()}),
        Err(e) => {
            count(&ctx.served.bad);
            json!({"error": e})
        }
    };
    line_of(&v)
}

impl Ctx {
    fn hello(&self, via: &Via) -> Value {
        let snapshot = self.snapshot.read().expect("snapshot lock");
        let mut v = serde_json::to_value(&self.identity).expect("identity serializes");
        v["args"] = json!(self.extra_args);
        v["listener"] = json!({"name": via.name, "protocol": via.protocol, "port": via.port});
        v["artifacts"] = snapshot.artifacts_json();
        v["config"] = snapshot.config_json();
        v
    }

    /// Read on every request: the ConfigMap volume is updated in place as the zone changes.
    fn topology(&self) -> Result<Topology, String> {
        Topology::read(&self.topology)
    }

    fn peers(&self) -> Value {
        match self.topology() {
            Ok(t) => json!({
                "zone": t.zone,
                "instance": self.identity.instance,
                "peers": t.peers(&self.identity.instance).collect::<Vec<_>>(),
            }),
            Err(e) => json!({"error": e}),
        }
    }

    async fn ping(&self, peer: &str, port: Option<&str>) -> Value {
        match self.try_ping(peer, port).await {
            Ok(v) => v,
            Err(e) => json!({"ping": peer, "error": e}),
        }
    }

    async fn try_ping(&self, peer: &str, port: Option<&str>) -> Result<Value, String> {
        let topology = self.topology()?;
        let instance = topology.instance(peer).ok_or_else(|| {
            let names: Vec<&str> = topology.instances.iter().map(|i| i.name.as_str()).collect();
            format!("{peer} is not in the topology (instances: {})", names.join(", "))
        })?;
        let p = instance.tcp_port(port)?;
        if instance.dns.is_empty() {
            return Err(format!("{peer} has no DNS name in the topology"));
        }
        // The DNS name resolves to the pod IP, where the container port listens; the host port
        // (`port`) is for clients coming through the node.
        let number = if p.container_port != 0 { p.container_port } else { p.port };
        let address = format!("{}:{number}", instance.dns);
        let exchange = async {
            let stream = TcpStream::connect((instance.dns.as_str(), number))
                .await
                .map_err(|e| format!("cannot connect to {address}: {e}"))?;
            let (read, mut write) = stream.into_split();
            write.write_all(b"hello\n").await.map_err(|e| format!("cannot send to {address}: {e}"))?;
            let mut line = String::new();
            BufReader::new(read.take(MAX_PEER_ANSWER))
                .read_line(&mut line)
                .await
                .map_err(|e| format!("cannot read from {address}: {e}"))?;
            serde_json::from_str::<Value>(&line).map_err(|e| format!("{address} did not answer with JSON: {e}"))
        };
        let hello = tokio::time::timeout(PING_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer from {address} within {} s", PING_TIMEOUT.as_secs()))??;
        Ok(json!({"ping": peer, "port": p.name, "address": address, "hello": hello}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_count_requests_by_kind_and_players_while_their_sessions_last() {
        let served = Served::default();
        served.hello.fetch_add(3, Ordering::Relaxed);
        let text = {
            let _one = Player::joins(&served.open);
            let _two = Player::joins(&served.open);
            served.prometheus()
        };
        assert!(text.contains("game_requests_total{request=\"hello\"} 3\n"), "{text}");
        assert!(text.contains("game_requests_total{request=\"bad\"} 0\n"), "{text}");
        assert!(text.contains("# TYPE game_players gauge\ngame_players 2\n"), "{text}");
        assert!(served.prometheus().contains("game_players 0\n"), "the sessions ended");
    }
}
