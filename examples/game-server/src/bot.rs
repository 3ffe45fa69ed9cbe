//! `game-server bot <id> [flags]`: a load-test bot, the way a game team writes one. It finds the
//! zone's gateways in the topology document (or takes addresses), holds sessions with them,
//! sends requests at a set rate and reports requests, errors and latency percentiles as JSON log
//! lines and as Prometheus metrics. It listens on no game port: a zone runs bots as a service
//! type without ports, scaled by `endId`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;

use crate::settings::{Identity, Settings};
use crate::tally::{Tally, Window};
use crate::topology::Topology;

/// The service type that runs the bot instead of a server.
pub const BOT_TYPE: &str = "bot";
/// Where the metrics are served unless `--metrics` says otherwise.
pub const DEFAULT_METRICS: &str = "0.0.0.0:9464";
/// Longest answer read from a server.
const MAX_ANSWER: u64 = 2 << 20;
/// How often a session that has not yet had a good answer tries again, and how often the
/// topology is read again.
const RETRY: Duration = Duration::from_secs(1);

const FLAGS: &str = "--target TYPE, --port NAME, --addr HOST:PORT, --protocol tcp|udp, --connect-per-request, \
    --sessions N, --rate R, --request TEXT, --duration D, --timeout D, --report-every D, --metrics ADDR|off, --exit";

/// Transport the bot's requests go over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// One line per request on a TCP connection.
    Tcp,
    /// One datagram per request.
    Udp,
}

/// What the bot does, from the flags after `bot <id>` (the service's `args`).
#[derive(Clone, Debug, PartialEq)]
pub struct BotConfig {
    /// Service type whose instances the sessions go to (`--target`, default `gateway`).
    pub target: String,
    /// Port name on the target; the first TCP (or UDP) port when empty (`--port`).
    pub port: Option<String>,
    /// Fixed addresses instead of the topology (`--addr`, repeatable).
    pub addrs: Vec<String>,
    /// TCP or UDP (`--protocol`).
    pub transport: Transport,
    /// A new TCP connection for every request (`--connect-per-request`).
    pub connect_per_request: bool,
    /// Sessions held at once (`--sessions`, default 1).
    pub sessions: usize,
    /// Requests per second over all sessions; 0 sends each as soon as the last was answered (`--rate`).
    pub rate: f64,
    /// The request line; `{TYPE}` is replaced by the instances of TYPE in turn (`--request`).
    pub request: String,
    /// How long to send once the first session counts; until stopped when empty (`--duration`).
    pub duration: Option<Duration>,
    /// How long to wait for an answer (`--timeout`, default 3 s).
    pub timeout: Duration,
    /// How often to log a report (`--report-every`, default 10 s).
    pub report_every: Duration,
    /// Where to serve `/metrics` and `/report`; none with `--metrics off`.
    pub metrics: Option<SocketAddr>,
    /// Exit once the run has ended (`--exit`); else stay, serving the final figures.
    pub exit: bool,
}

impl BotConfig {
    /// Parses the bot's flags; an unknown flag or a bad value is named in the error.
    pub fn parse(args: &[String]) -> Result<BotConfig> {
        let mut c = BotConfig {
            target: "gateway".into(),
            port: None,
            addrs: Vec::new(),
            transport: Transport::Tcp,
            connect_per_request: false,
            sessions: 1,
            rate: 10.0,
            request: "hello".into(),
            duration: None,
            timeout: Duration::from_secs(3),
            report_every: Duration::from_secs(10),
            metrics: Some(DEFAULT_METRICS.parse().expect("a socket address")),
            exit: false,
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
                _ => (arg.as_str(), None),
            };
            let mut value = || -> Result<String> {
                match &inline {
                    Some(v) => Ok(v.clone()),
                    None => it.next().cloned().with_context(|| format!("bot flag {flag} needs a value")),
                }
            };
            match flag {
                "--target" => c.target = value()?,
                "--port" => c.port = Some(value()?),
                "--addr" => {
                    let v = value()?;
                    if !v.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0))
                    {
                        bail!("bot flag --addr {v:?} is not HOST:PORT");
                    }
                    c.addrs.push(v);
                }
                "--protocol" => {
                    c.transport = match value()?.to_ascii_lowercase().as_str() {
                        "tcp" => Transport::Tcp,
                        "udp" => Transport::Udp,
                        other => bail!("bot flag --protocol {other:?}: use tcp or udp"),
                    }
                }
                "--connect-per-request" => c.connect_per_request = true,
                "--exit" => c.exit = true,
                "--sessions" => {
                    let v = value()?;
                    c.sessions = v
                        .parse()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n))
                        .with_context(|| format!("bot flag --sessions {v:?} is not a number from 1 to 10000"))?;
                }
                "--rate" => {
                    let v = value()?;
                    c.rate = v.parse().ok().filter(|r: &f64| r.is_finite() && *r >= 0.0).with_context(|| {
                        format!("bot flag --rate {v:?} is not a number of requests per second (0: as fast as answered)")
                    })?;
                }
                "--request" => c.request = value()?,
                "--duration" => c.duration = Some(duration("--duration", &value()?)?).filter(|d| !d.is_zero()),
                "--timeout" => c.timeout = duration("--timeout", &value()?)?,
                "--report-every" => c.report_every = duration("--report-every", &value()?)?,
                "--metrics" => {
                    let v = value()?;
                    c.metrics = if v == "off" {
                        None
                    } else {
                        Some(v.parse().with_context(|| format!("bot flag --metrics {v:?} is not IP:PORT or off"))?)
                    };
                }
                other => bail!("unknown bot argument {other:?}; the bot takes {FLAGS}"),
            }
        }
        if c.connect_per_request && c.transport == Transport::Udp {
            bail!("bot flags --connect-per-request and --protocol udp do not go together: UDP has no connection");
        }
        if c.timeout.is_zero() || c.report_every.is_zero() {
            bail!("bot flags --timeout and --report-every must be above 0");
        }
        if c.request.trim().is_empty() || c.request.contains('\n') {
            bail!("bot flag --request {:?} must be one non-empty line", c.request);
        }
        Ok(c)
    }

    /// Service types named by `{TYPE}` in the request.
    fn placeholders(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut rest = self.request.as_str();
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else { break };
            out.push(rest[open + 1..open + close].to_owned());
            rest = &rest[open + close + 1..];
        }
        out
    }
}

/// `30s`, `500ms`, `2m` or a number of seconds.
fn duration(flag: &str, v: &str) -> Result<Duration> {
    let (number, unit) = match v.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .with_context(|| format!("bot flag {flag} {v:?} is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => bail!("bot flag {flag} {v:?}: the unit must be ms, s or m"),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Where the sessions go and what they send, from the flags and the topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// `(name, host:port)` of each target, in id order.
    pub targets: Vec<(String, String)>,
    /// Instance names for each `{TYPE}` of the request.
    pub fills: BTreeMap<String, Vec<String>>,
}

impl Plan {
    /// The plan for `c` from the topology (fixed addresses when `--addr` was given); the error
    /// says what is missing, e.g. while the zone is still coming up.
    pub fn make(c: &BotConfig, topology: Option<&Topology>) -> Result<Plan, String> {
        let mut fills = BTreeMap::new();
        let wanted = c.placeholders();
        let targets = if c.addrs.is_empty() {
            let t = topology.ok_or("no topology to find targets in, and no --addr")?;
            let mut instances: Vec<_> = t.instances.iter().filter(|i| i.type_ == c.target).collect();
            instances.sort_by_key(|i| i.id);
            if instances.is_empty() {
                return Err(format!("the topology lists no instance of type {:?} (--target)", c.target));
            }
            let mut targets = Vec::new();
            for i in instances {
                let port = match (&c.port, c.transport) {
                    (Some(name), _) => i.ports.iter().find(|p| &p.name == name),
                    (None, Transport::Tcp) => i.ports.iter().find(|p| p.protocol.tcp()),
                    (None, Transport::Udp) => i.ports.iter().find(|p| p.protocol.udp()),
                }
                .ok_or_else(|| {
                    format!("{} has no {} port (--port)", i.name, c.port.as_deref().unwrap_or("matching"))
                })?;
                if i.dns.is_empty() {
                    return Err(format!("{} has no DNS name in the topology yet", i.name));
                }
                // The DNS name resolves to the pod IP, where the container port listens.
                let number = if port.container_port != 0 { port.container_port } else { port.port };
                targets.push((i.name.clone(), format!("{}:{number}", i.dns)));
            }
            targets
        } else {
            c.addrs.iter().map(|a| (a.clone(), a.clone())).collect()
        };
        for ty in wanted {
            let t = topology.ok_or_else(|| format!("the request names {{{ty}}} but there is no topology"))?;
            let mut names: Vec<_> = t.instances.iter().filter(|i| i.type_ == ty).collect();
            names.sort_by_key(|i| i.id);
            if names.is_empty() {
                return Err(format!("the request names {{{ty}}} but the topology lists no instance of type {ty:?}"));
            }
            fills.insert(ty, names.into_iter().map(|i| i.name.clone()).collect());
        }
        Ok(Plan { targets, fills })
    }

    /// The target of session `k` of bot `id` holding `sessions`: spread evenly over the bots.
    pub fn target(&self, id: i64, sessions: usize, k: usize) -> &(String, String) {
        let i = (id.unsigned_abs() as usize).wrapping_mul(sessions).wrapping_add(k) % self.targets.len();
        &self.targets[i]
    }

    /// The `n`th request line, each `{TYPE}` replaced by the `n`th instance of TYPE (cycling).
    pub fn request(&self, template: &str, n: u64) -> String {
        let mut out = template.to_owned();
        for (ty, names) in &self.fills {
            out = out.replace(&format!("{{{ty}}}"), &names[(n % names.len() as u64) as usize]);
        }
        out
    }
}

/// Whether an answer line counts as an error: not JSON, or an object with an `error` field.
pub fn answer_error(line: &str) -> Option<String> {
    match serde_json::from_str::<Value>(line) {
        Ok(v) => v.get("error").map(|e| e.as_str().map(str::to_owned).unwrap_or_else(|| e.to_string())),
        Err(_) if line.is_empty() => Some("the connection was closed without an answer".into()),
        Err(e) => Some(format!("the answer is not JSON: {e}")),
    }
}

struct Bot {
    config: BotConfig,
    identity: Identity,
    topology: PathBuf,
    plan: RwLock<Option<Arc<Plan>>>,
    /// When the first session counted its first request.
    started: OnceLock<Instant>,
    tally: Mutex<Tally>,
    sessions: AtomicU64,
    done: AtomicBool,
}

impl Bot {
    fn deadline(&self) -> Option<Instant> {
        Some(*self.started.get()? + self.config.duration?)
    }

    fn over(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    fn labels(&self) -> String {
        format!("bot=\"{}\",target=\"{}\"", self.identity.instance, self.config.target)
    }

    fn report(&self) -> Value {
        let tally = self.tally.lock().expect("tally lock");
        let mut v = tally.total.json();
        v["bot"] = json!(self.identity.instance);
        v["target"] = json!(self.config.target);
        v["sessions"] = json!(self.sessions.load(Ordering::Relaxed));
        v["done"] = json!(self.done.load(Ordering::Relaxed));
        v
    }

    /// Reads the topology again and swaps in a changed plan.
    fn refresh(&self) -> Result<(), String> {
        let topology = if self.config.addrs.is_empty() || !self.config.placeholders().is_empty() {
            Some(Topology::read(&self.topology)?)
        } else {
            None
        };
        let plan = Plan::make(&self.config, topology.as_ref())?;
        let mut current = self.plan.write().expect("plan lock");
        if current.as_deref() != Some(&plan) {
            tracing::info!(targets = ?plan.targets.iter().map(|t| &t.1).collect::<Vec<_>>(),
                fills = ?plan.fills, "bot targets");
            *current = Some(Arc::new(plan));
        }
        Ok(())
    }
}

/// Logs a window, or the totals, as one JSON line.
fn log_window(message: &str, w: &Window, sessions: u64) {
    tracing::info!(
        requests = w.requests,
        errors = w.errors,
        elapsed = w.elapsed(),
        rate = w.rate(),
        p50_ms = w.latency.quantile_ms(0.5),
        p90_ms = w.latency.quantile_ms(0.9),
        p99_ms = w.latency.quantile_ms(0.99),
        max_ms = w.latency.quantile_ms(1.0),
        sessions,
        last_error = w.last_error.as_deref().unwrap_or(""),
        "{message}"
    );
}

/// Runs the bot until its `--duration` ends (then exits with `--exit`, else waits) or SIGTERM.
pub async fn run(settings: Settings, config: BotConfig) -> Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    tracing::info!(instance = %settings.identity.instance, target_type = %config.target, sessions = config.sessions,
        rate = config.rate, request = %config.request, duration = ?config.duration, "bot starting");
    let bot = Arc::new(Bot {
        config,
        identity: settings.identity,
        topology: settings.topology,
        plan: RwLock::new(None),
        started: OnceLock::new(),
        tally: Mutex::new(Tally::default()),
        sessions: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });

    let mut helpers = JoinSet::new();
    if let Some(addr) = bot.config.metrics {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("bot metrics: listen on {addr}"))?;
        helpers.spawn(serve_metrics(bot.clone(), listener));
    }
    helpers.spawn(watch_topology(bot.clone()));
    let mut sessions = JoinSet::new();
    for k in 0..bot.config.sessions {
        sessions.spawn(session(bot.clone(), k));
    }

    let mut tick = tokio::time::interval(bot.config.report_every);
    tick.tick().await;
    let signal = loop {
        tokio::select! {
            _ = sigterm.recv() => break Some("SIGTERM"),
            _ = sigint.recv() => break Some("SIGINT"),
            _ = tick.tick() => {
                let w = bot.tally.lock().expect("tally lock").take_window();
                log_window("bot report", &w, bot.sessions.load(Ordering::Relaxed));
            }
            Some(_) = sessions.join_next() => {
                if sessions.is_empty() {
                    break None;
                }
            }
        }
    };
    sessions.shutdown().await;
    bot.done.store(true, Ordering::Relaxed);
    let total = bot.tally.lock().expect("tally lock").total.clone();
    log_window("bot done", &total, bot.sessions.load(Ordering::Relaxed));
    if signal.is_some() || bot.config.exit {
        helpers.shutdown().await;
        return Ok(());
    }
    // The run is over; the metrics stay up for whoever collects them, until the pod goes.
    let signal = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    tracing::info!(signal, "bot exiting");
    helpers.shutdown().await;
    Ok(())
}

async fn watch_topology(bot: Arc<Bot>) {
    let mut said = String::new();
    loop {
        match bot.refresh() {
            Ok(()) => said.clear(),
            Err(e) if e != said => {
                tracing::warn!(error = %e, "bot cannot plan its sessions yet; trying again every second");
                said = e;
            }
            Err(_) => {}
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// An open session.
enum Conn {
    Tcp(BufReader<OwnedReadHalf>, OwnedWriteHalf),
    Udp(UdpSocket),
}

async fn connect(c: &BotConfig, addr: &str) -> Result<Conn, String> {
    match c.transport {
        Transport::Tcp => {
            let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            let _ = stream.set_nodelay(true);
            if c.connect_per_request {
                // Closed with a reset, not a FIN: thousands of connections a second would
                // otherwise fill the ephemeral port range with TIME_WAIT sockets.
                let _ = stream.set_zero_linger();
            }
            let (read, write) = stream.into_split();
            Ok(Conn::Tcp(BufReader::new(read), write))
        }
        Transport::Udp => {
            let socket = UdpSocket::bind("0.0.0.0:0").await.map_err(|e| format!("cannot open a UDP socket: {e}"))?;
            socket.connect(addr).await.map_err(|e| format!("cannot address {addr}: {e}"))?;
            Ok(Conn::Udp(socket))
        }
    }
}

/// One request and its answer line.
async fn exchange(conn: &mut Conn, addr: &str, request: &str) -> Result<String, String> {
    match conn {
        Conn::Tcp(read, write) => {
            let line = format!("{request}\n");
            write.write_all(line.as_bytes()).await.map_err(|e| format!("cannot send to {addr}: {e}"))?;
            let mut answer = String::new();
            (&mut *read)
                .take(MAX_ANSWER)
                .read_line(&mut answer)
                .await
                .map_err(|e| format!("cannot read from {addr}: {e}"))?;
            if answer.is_empty() {
                return Err(format!("{addr} closed the connection"));
            }
            Ok(answer)
        }
        Conn::Udp(socket) => {
            socket.send(request.as_bytes()).await.map_err(|e| format!("cannot send to {addr}: {e}"))?;
            let mut buf = vec![0u8; 65_536];
            let n = socket.recv(&mut buf).await.map_err(|e| format!("cannot receive from {addr}: {e}"))?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        }
    }
}

/// One session: waits for a first good answer (the zone may still be coming up), then counts
/// every request until the run ends.
async fn session(bot: Arc<Bot>, k: usize) {
    let c = &bot.config;
    let mut pace = (c.rate > 0.0).then(|| {
        let mut i = tokio::time::interval(Duration::from_secs_f64(c.sessions as f64 / c.rate));
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        i
    });
    let mut conn: Option<Conn> = None;
    let mut counting = false;
    let mut last_said = String::new();
    let mut n = k as u64;
    loop {
        if let Some(p) = &mut pace {
            p.tick().await;
        }
        if bot.over() {
            break;
        }
        let Some(plan) = bot.plan.read().expect("plan lock").clone() else {
            tokio::time::sleep(RETRY / 10).await;
            continue;
        };
        let (_, addr) = plan.target(bot.identity.id, c.sessions, k);
        let request = plan.request(&c.request, n);
        n += c.sessions as u64;
        let start = Instant::now();
        let outcome = tokio::time::timeout(c.timeout, async {
            if conn.is_none() {
                conn = Some(connect(c, addr).await?);
            }
            let answer = exchange(conn.as_mut().expect("connected"), addr, &request).await;
            if c.connect_per_request || answer.is_err() {
                conn = None;
            }
            answer
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer from {addr} within {:?}", c.timeout)));
        let took = start.elapsed();
        let error = match &outcome {
            Ok(line) => answer_error(line.trim_end()),
            Err(e) => {
                conn = None;
                Some(e.clone())
            }
        };
        if !counting {
            match error {
                None => {
                    counting = true;
                    bot.started.get_or_init(|| start);
                    bot.sessions.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(session = k, %addr, "bot session counting");
                }
                Some(e) => {
                    if e != last_said {
                        tracing::info!(session = k, %addr, error = %e, "bot session waiting for a good answer");
                        last_said = e;
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        bot.tally.lock().expect("tally lock").record(start, took, error.as_deref());
    }
}

async fn serve_metrics(bot: Arc<Bot>, listener: TcpListener) {
    let page = move |path: &str| match path {
        "/metrics" => {
            let t = bot.tally.lock().expect("tally lock").clone();
            let body =
                t.prometheus(&bot.labels(), bot.sessions.load(Ordering::Relaxed), bot.done.load(Ordering::Relaxed));
            Some((crate::http::PROMETHEUS_TEXT, body))
        }
        "/report" => Some(("application/json", format!("{}\n", bot.report()))),
        _ => None,
    };
    crate::http::serve(listener, "/metrics or /report", page).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_and_flags() {
        let c = BotConfig::parse(&[]).unwrap();
        assert_eq!((c.target.as_str(), c.sessions, c.rate, c.request.as_str()), ("gateway", 1, 10.0, "hello"));
        assert_eq!(c.metrics, Some(DEFAULT_METRICS.parse().unwrap()));
        let c = BotConfig::parse(&args(&[
            "--target=game",
            "--sessions",
            "4",
            "--rate",
            "0",
            "--request",
            "ping {game}",
            "--duration",
            "30s",
            "--timeout=500ms",
            "--metrics",
            "off",
            "--protocol",
            "UDP",
            "--exit",
        ]))
        .unwrap();
        assert_eq!(c.target, "game");
        assert_eq!((c.sessions, c.rate, c.transport, c.exit), (4, 0.0, Transport::Udp, true));
        assert_eq!(c.duration, Some(Duration::from_secs(30)));
        assert_eq!(c.timeout, Duration::from_millis(500));
        assert_eq!(c.metrics, None);
        assert_eq!(c.placeholders(), ["game"]);
        assert_eq!(BotConfig::parse(&args(&["--duration", "2m"])).unwrap().duration, Some(Duration::from_secs(120)));
        assert_eq!(BotConfig::parse(&args(&["--duration", "0"])).unwrap().duration, None);
    }

    #[test]
    fn bad_flags_are_named() {
        for (a, says) in [
            (&["--rate", "fast"][..], "--rate \"fast\""),
            (&["--sessions", "0"], "--sessions \"0\""),
            (&["--duration", "3h"], "unit must be ms, s or m"),
            (&["--addr", "nohost"], "--addr \"nohost\" is not HOST:PORT"),
            (&["--protocol", "sctp"], "use tcp or udp"),
            (&["--frobnicate"], "unknown bot argument \"--frobnicate\""),
            (&["--target"], "--target needs a value"),
            (&["--protocol", "udp", "--connect-per-request"], "do not go together"),
            (&["--metrics", "9464"], "--metrics \"9464\""),
        ] {
            let err = format!("{:#}", BotConfig::parse(&args(a)).unwrap_err());
            assert!(err.contains(says), "{a:?}: {err}");
        }
    }

    const DOC: &str = r#"{"zone": "z", "zoneId": 1, "instances": [
      {"name": "z-gateway-2", "type": "gateway", "id": 2, "dns": "z-gateway-2.z.ns.svc",
       "ports": [{"name": "client", "port": 7002, "containerPort": 7000, "protocol": "TCPUDP"}]},
      {"name": "z-gateway-1", "type": "gateway", "id": 1, "dns": "z-gateway-1.z.ns.svc",
       "ports": [{"name": "client", "port": 7001, "containerPort": 7000, "protocol": "TCPUDP"}]},
      {"name": "z-game-1", "type": "game", "id": 1, "dns": "z-game-1.z.ns.svc", "ports": []},
      {"name": "z-game-2", "type": "game", "id": 2, "dns": "z-game-2.z.ns.svc", "ports": []},
      {"name": "z-bot-1", "type": "bot", "id": 1, "dns": "z-bot-1.z.ns.svc", "ports": []}]}"#;

    #[test]
    fn the_plan_spreads_sessions_over_the_gateways_and_cycles_the_named_type() {
        let t: Topology = serde_json::from_str(DOC).unwrap();
        let c = BotConfig::parse(&args(&["--request", "ping {game}", "--sessions", "2"])).unwrap();
        let plan = Plan::make(&c, Some(&t)).unwrap();
        assert_eq!(
            plan.targets,
            [
                ("z-gateway-1".to_string(), "z-gateway-1.z.ns.svc:7000".to_string()),
                ("z-gateway-2".to_string(), "z-gateway-2.z.ns.svc:7000".to_string())
            ]
        );
        // Bot 1's two sessions go to different gateways; so do bots 1 and 2 with one each.
        assert_ne!(plan.target(1, 2, 0), plan.target(1, 2, 1));
        assert_ne!(plan.target(1, 1, 0), plan.target(2, 1, 0));
        assert_eq!(plan.request(&c.request, 0), "ping z-game-1");
        assert_eq!(plan.request(&c.request, 3), "ping z-game-2");
    }

    #[test]
    fn a_plan_that_cannot_be_made_says_why() {
        let t: Topology = serde_json::from_str(DOC).unwrap();
        let c = BotConfig::parse(&args(&["--target", "auth"])).unwrap();
        assert!(Plan::make(&c, Some(&t)).unwrap_err().contains("no instance of type \"auth\""));
        let c = BotConfig::parse(&args(&["--target", "game"])).unwrap();
        assert!(Plan::make(&c, Some(&t)).unwrap_err().contains("z-game-1 has no matching port"));
        let c = BotConfig::parse(&args(&["--request", "ping {db}"])).unwrap();
        assert!(Plan::make(&c, Some(&t)).unwrap_err().contains("no instance of type \"db\""));
        let c = BotConfig::parse(&args(&["--addr", "10.0.0.1:7000"])).unwrap();
        assert_eq!(Plan::make(&c, None).unwrap().targets[0].1, "10.0.0.1:7000");
    }

    #[test]
    fn answers_with_an_error_field_count_as_errors() {
        assert_eq!(answer_error(r#"{"zone":"z"}"#), None);
        assert_eq!(answer_error(r#"{"ping":"x","error":"no answer"}"#).as_deref(), Some("no answer"));
        assert!(answer_error("garbage").unwrap().contains("not JSON"));
    }
}
