//! The real binary on loopback: env, a topology file and an artifacts volume laid out the way
//! gamezone-init leaves it; requests over TCP and UDP; a swapped tree; SIGTERM and SIGINT.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_game-server");

/// A port free for both TCP and UDP on every address.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok() {
            return port;
        }
    }
}

/// An artifacts volume written as gamezone-init writes it (init-container/src/apply.rs, state.rs).
struct Volume {
    root: tempfile::TempDir,
    applied: u32,
}

impl Volume {
    fn new() -> Self {
        Volume { root: tempfile::tempdir().unwrap(), applied: 0 }
    }

    fn path(&self) -> &Path {
        self.root.path()
    }

    /// Builds a tree in a staging directory, renames it under `.trees/`, renames a fresh symlink
    /// over `current`, then writes the state file (temp + rename) and removes the old trees.
    fn apply(&mut self, files: &[(&str, &str)], revisions: &[&str]) -> String {
        self.applied += 1;
        let root = self.path().to_owned();
        let trees = root.join(".trees");
        let staging = trees.join(format!(".staging-{}", self.applied));
        std::fs::create_dir_all(&staging).unwrap();
        for (path, body) in files {
            let file = staging.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, body).unwrap();
        }
        let digest = format!("sha256:{:064x}", self.applied);
        let id = format!("{}-{:08x}", &digest[7..19], self.applied);
        std::fs::rename(&staging, trees.join(&id)).unwrap();
        let tmp = root.join(format!(".current-{:08x}", self.applied));
        std::os::unix::fs::symlink(Path::new(".trees").join(&id), &tmp).unwrap();
        std::fs::rename(&tmp, root.join("current")).unwrap();
        let state = json!({
            "layers": [{"path": "", "source": "local /src/base"}, {"path": "config", "subPath": "config",
                        "source": "git https://git.example/config.git", "reference": "main"}],
            "revisions": revisions,
            "tree": id,
            "treeDigest": digest,
            "files": files.len(),
            "bytes": 1,
            "appliedAt": "2026-12-01T00:00:00Z",
        });
        let state_tmp = root.join(".gamezone-state.json.tmp-1");
        std::fs::write(&state_tmp, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
        std::fs::rename(&state_tmp, root.join(".gamezone-state.json")).unwrap();
        for entry in std::fs::read_dir(&trees).unwrap().flatten() {
            if entry.file_name() != id.as_str() {
                std::fs::remove_dir_all(entry.path()).unwrap();
            }
        }
        id
    }
}

/// A topology entry as the operator writes it.
fn instance(name: &str, type_: &str, id: i64, ports: Value) -> Value {
    json!({"name": name, "type": type_, "id": id, "dns": "127.0.0.1", "ports": ports})
}

fn port(name: &str, port: u16, container_port: u16, protocol: &str, policy: &str) -> Value {
    let mut p = json!({"name": name, "port": port, "containerPort": container_port, "protocol": protocol,
                       "container": "server", "policy": policy});
    if port != container_port {
        p["hostPort"] = json!(port);
    }
    p
}

fn write_topology(dir: &Path, instances: Vec<Value>) -> PathBuf {
    let path = dir.join("topology.json");
    let doc = json!({"zone": "zone1", "zoneId": 101, "instances": instances});
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    path
}

/// The server process with its log lines collected.
struct Server {
    child: Child,
    logs: Arc<Mutex<Vec<Value>>>,
}

impl Server {
    fn start(env: &[(&str, String)], args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start game-server");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line).unwrap_or_else(|_| json!({"notJson": line}));
                sink.lock().unwrap().push(v);
            }
        });
        let s = Server { child, logs };
        s.wait_log("listening", Duration::from_secs(10));
        s
    }

    /// Waits for a log line with this message and returns it.
    fn wait_log(&self, message: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.logs.lock().unwrap().iter().find(|v| v["message"] == message) {
                return v.clone();
            }
            assert!(Instant::now() < deadline, "no log line {message:?} within {timeout:?}; logs: {:#?}", self.logs);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running {timeout:?} after the signal");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tcp(port: u16, request: &str) -> Value {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert!(line.ends_with('\n'), "answer is one line: {line:?}");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
}

/// Sends one datagram and returns the answer, or the error of a port nobody listens on.
fn udp(port: u16, request: &str) -> std::io::Result<Value> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.connect((Ipv4Addr::LOCALHOST, port)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send(request.as_bytes())?;
    let mut buf = vec![0u8; 65_536];
    let n = socket.recv(&mut buf)?;
    let text = std::str::from_utf8(&buf[..n]).unwrap();
    assert!(text.ends_with('\n'), "answer is one JSON line: {text:?}");
    Ok(serde_json::from_str(text).unwrap())
}

fn base_env(type_: &str, id: i64, topology: &Path, artifacts: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("GAMEZONE_ZONE", "zone1".into()),
        ("GAMEZONE_ZONE_ID", "101".into()),
        ("GAMEZONE_TYPE", type_.into()),
        ("GAMEZONE_ID", id.to_string()),
        ("GAMEZONE_INSTANCE", format!("zone1-{type_}-{id}")),
        ("GAMEZONE_TOPOLOGY", topology.display().to_string()),
        ("GAMEZONE_ARTIFACTS_DIR", artifacts.display().to_string()),
    ]
}

#[test]
fn hello_over_tcp_and_udp_reports_the_instance_its_artifacts_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = Volume::new();
    let tree = volume.apply(
        &[("config/server.json", r#"{"motd": "welcome to zone1", "maxPlayers": 64}"#), ("maps/a.map", "x")],
        &["sha256:aaaa", "0123456789abcdef0123456789abcdef01234567"],
    );
    // game: Dynamic, so clients use a host port and the process listens on the container port.
    let (host, game, admin, voice) = (free_port(), free_port(), free_port(), free_port());
    let topology = write_topology(
        dir.path(),
        vec![instance(
            "zone1-game-1",
            "game",
            1,
            json!([
                port("game", host, game, "TCPUDP", "Dynamic"),
                port("admin", admin, admin, "TCP", "None"),
                port("voice", voice, voice, "UDP", "None"),
            ]),
        )],
    );
    let mut env = base_env("game", 1, &topology, volume.path());
    env.extend([
        ("GAMEZONE_POD_IP", "127.0.0.1".to_string()),
        ("GAMEZONE_PORT_GAME", host.to_string()),
        ("GAMEZONE_PORT_ADMIN", admin.to_string()),
        ("GAMEZONE_PORT_VOICE", voice.to_string()),
    ]);
    let server = Server::start(&env, &["game", "1", "--difficulty", "hard"]);

    let expected = |protocol: &str, name: &str, port: u16| {
        json!({
            "zone": "zone1",
            "zoneId": 101,
            "type": "game",
            "id": 1,
            "instance": "zone1-game-1",
            "podIp": "127.0.0.1",
            "args": ["--difficulty", "hard"],
            "listener": {"name": name, "protocol": protocol, "port": port},
            "artifacts": {
                "dir": volume.path().display().to_string(),
                "current": format!(".trees/{tree}"),
                "tree": tree,
                "treeDigest": format!("sha256:{:064x}", 1),
                "revisions": ["sha256:aaaa", "0123456789abcdef0123456789abcdef01234567"],
                "appliedAt": "2026-12-01T00:00:00Z",
                "layers": [{"path": "", "source": "local /src/base"},
                           {"path": "config", "source": "git https://git.example/config.git"}],
            },
            "config": {"path": "config/server.json", "value": {"motd": "welcome to zone1", "maxPlayers": 64}},
        })
    };
    assert_eq!(tcp(game, "hello"), expected("tcp", "game", game));
    assert_eq!(udp(game, "hello").unwrap(), expected("udp", "game", game));
    assert_eq!(tcp(admin, "hello"), expected("tcp", "admin", admin));
    assert_eq!(udp(voice, "hello").unwrap(), expected("udp", "voice", voice));

    // Only the protocols the zone asked for, and not the host port, which is the node's.
    assert!(udp(admin, "hello").is_err(), "admin is TCP only");
    assert_eq!(TcpStream::connect((Ipv4Addr::LOCALHOST, voice)).unwrap_err().kind(), ErrorKind::ConnectionRefused);
    assert_eq!(TcpStream::connect((Ipv4Addr::LOCALHOST, host)).unwrap_err().kind(), ErrorKind::ConnectionRefused);

    // One connection carries several requests; a bad one is answered, not fatal.
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, game)).unwrap();
    stream.write_all(b"hullo\r\nhello\r\n").unwrap();
    let mut lines = BufReader::new(stream).lines();
    let bad: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert!(bad["error"].as_str().unwrap().contains("unknown request \"hullo\""), "{bad}");
    let good: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(good["instance"], "zone1-game-1");

    let port_note = server.wait_log("port", Duration::ZERO);
    assert_eq!(port_note["note"], format!("port game: clients connect to {host}, listening on container port {game}"));
}

#[test]
fn peers_are_listed_from_the_topology_and_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = Volume::new();
    volume.apply(&[("config/server.json", r#"{"motd": "m"}"#)], &["r1"]);
    let (a, b) = (free_port(), free_port());
    let gateway_port = free_port();
    let topology = write_topology(
        dir.path(),
        vec![
            instance("zone1-game-1", "game", 1, json!([port("game", a, a, "TCPUDP", "None")])),
            instance("zone1-game-2", "game", 2, json!([port("game", b, b, "TCPUDP", "None")])),
            instance(
                "zone1-gateway-1",
                "gateway",
                1,
                json!([port("client", gateway_port, gateway_port, "UDP", "None")]),
            ),
        ],
    );
    let mut env_a = base_env("game", 1, &topology, volume.path());
    env_a.push(("GAMEZONE_PORT_GAME", a.to_string()));
    let mut env_b = base_env("game", 2, &topology, volume.path());
    env_b.push(("GAMEZONE_PORT_GAME", b.to_string()));
    let _a = Server::start(&env_a, &["game", "1"]);
    let _b = Server::start(&env_b, &["game", "2"]);

    let peers = tcp(a, "peers");
    assert_eq!(peers["instance"], "zone1-game-1");
    let names: Vec<&str> = peers["peers"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["zone1-game-2", "zone1-gateway-1"]);
    assert_eq!(peers["peers"][0]["ports"][0]["containerPort"], b);
    assert_eq!(udp(b, "peers").unwrap()["peers"][0]["name"], "zone1-game-1");

    let ping = tcp(a, "ping zone1-game-2");
    assert_eq!(ping["address"], format!("127.0.0.1:{b}"));
    assert_eq!(ping["port"], "game");
    assert_eq!(ping["hello"]["instance"], "zone1-game-2");
    assert_eq!(ping["hello"]["listener"], json!({"name": "game", "protocol": "tcp", "port": b}));
    assert_eq!(udp(b, "ping zone1-game-1").unwrap()["hello"]["instance"], "zone1-game-1");

    let unknown = tcp(a, "ping zone1-db-1");
    assert!(unknown["error"].as_str().unwrap().contains("instances: zone1-game-1, zone1-game-2, zone1-gateway-1"));
    let udp_only = tcp(a, "ping zone1-gateway-1");
    assert!(udp_only["error"].as_str().unwrap().contains("lists no TCP port"), "{udp_only}");
}

#[test]
fn a_tree_swapped_like_gamezone_init_does_is_served_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = Volume::new();
    let first = volume.apply(&[("config/server.json", r#"{"motd": "v1"}"#)], &["rev-1"]);
    let game = free_port();
    let topology = write_topology(dir.path(), vec![]);
    let mut env = base_env("game", 1, &topology, volume.path());
    env.push(("GAMEZONE_PORT_GAME", game.to_string()));
    let server = Server::start(&env, &["game", "1"]);
    assert_eq!(tcp(game, "hello")["config"]["value"]["motd"], "v1");

    let swapped_at = Instant::now();
    let second = volume.apply(&[("config/server.json", r#"{"motd": "v2"}"#)], &["rev-2"]);
    assert_ne!(first, second);
    let hello = loop {
        let hello = tcp(game, "hello");
        if hello["config"]["value"]["motd"] == "v2" && hello["artifacts"]["revisions"] == json!(["rev-2"]) {
            break hello;
        }
        // Between the swap and the state file that follows it, the answer says so.
        if hello["config"]["value"]["motd"] == "v2" {
            let error = hello["artifacts"]["stateError"].as_str().unwrap_or_default();
            assert!(error.contains("a swap is in progress"), "new tree, old state, unexplained: {hello}");
        }
        assert!(swapped_at.elapsed() < Duration::from_secs(5), "still serving the old config: {hello}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(hello["artifacts"]["revisions"], json!(["rev-2"]));
    assert_eq!(hello["artifacts"]["current"], format!(".trees/{second}"));
    assert_eq!(hello["artifacts"]["tree"], second);

    let reloaded = server.wait_log("config reloaded", Duration::from_secs(2));
    assert_eq!(reloaded["value"], r#"{"motd":"v2"}"#);
    let swapped = server.wait_log("artifacts tree swapped", Duration::from_secs(2));
    assert!(swapped["to"].as_str().unwrap().starts_with(&format!(".trees/{second}")), "{swapped}");
}

#[test]
fn a_missing_config_is_answered_not_fatal_and_picked_up_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let mut volume = Volume::new();
    volume.apply(&[("maps/a.map", "x")], &["rev-1"]);
    let game = free_port();
    let topology = dir.path().join("no-topology.json");
    let mut env = base_env("game", 1, &topology, volume.path());
    env.push(("GAMEZONE_PORT_GAME", game.to_string()));
    let server = Server::start(&env, &["game", "1"]);
    let hello = tcp(game, "hello");
    let error = hello["config"]["error"].as_str().unwrap();
    assert!(error.contains("config/server.json not found in the artifacts"), "{hello}");
    assert_eq!(hello["artifacts"]["revisions"], json!(["rev-1"]));
    assert!(tcp(game, "peers")["error"].as_str().unwrap().contains("cannot read topology"));

    volume.apply(&[("config/server.json", r#"{"motd": "now"}"#)], &["rev-2"]);
    server.wait_log("config reloaded", Duration::from_secs(5));
    assert_eq!(tcp(game, "hello")["config"]["value"]["motd"], "now");
}

#[test]
fn a_tree_mounted_by_itself_serves_its_ini_config_and_says_where_the_state_is() {
    // The pod's view with `subPath: current`: the tree, no `current`, no state file.
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("artifacts");
    std::fs::create_dir_all(tree.join("config")).unwrap();
    std::fs::write(tree.join("config/game.ini"), "motd = hi\n[match]\nsize = 8\n").unwrap();
    let game = free_port();
    let mut env = base_env("game", 1, &dir.path().join("none.json"), &tree);
    env.extend([("GAMEZONE_PORT_GAME", game.to_string()), ("GAMEZONE_CONFIG", "config/game.ini".into())]);
    let _server = Server::start(&env, &["game", "1"]);
    let hello = tcp(game, "hello");
    assert_eq!(hello["config"], json!({"path": "config/game.ini", "value": {"motd": "hi", "match": {"size": "8"}}}));
    assert!(hello["artifacts"]["stateError"].as_str().unwrap().contains("GAMEZONE_ARTIFACTS_STATE"), "{hello}");

    // With the state file's path given, its revisions are reported.
    let mut volume = Volume::new();
    volume.apply(&[], &["rev-9"]);
    let game = free_port();
    let mut env = base_env("game", 1, &dir.path().join("none.json"), &tree);
    env.extend([
        ("GAMEZONE_PORT_GAME", game.to_string()),
        ("GAMEZONE_ARTIFACTS_STATE", volume.path().join(".gamezone-state.json").display().to_string()),
    ]);
    let _server = Server::start(&env, &["game", "1"]);
    assert_eq!(tcp(game, "hello")["artifacts"]["revisions"], json!(["rev-9"]));
}

#[test]
fn sigterm_and_sigint_close_the_listeners_and_exit_zero() {
    for signal in ["TERM", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let game = free_port();
        let mut env = base_env("game", 1, &dir.path().join("none.json"), dir.path());
        env.push(("GAMEZONE_PORT_GAME", game.to_string()));
        let mut server = Server::start(&env, &["game", "1"]);
        assert_eq!(tcp(game, "hello")["instance"], "zone1-game-1");
        let open = TcpStream::connect((Ipv4Addr::LOCALHOST, game)).unwrap();
        server.signal(signal);
        let status = server.wait_exit(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "SIG{signal}");
        // The process has exited; its last lines may still be on their way through the reader thread.
        assert_eq!(server.wait_log("shutting down", Duration::from_secs(1))["signal"], format!("SIG{signal}"));
        server.wait_log("listeners closed; exiting", Duration::from_secs(1));
        assert_eq!(TcpStream::connect((Ipv4Addr::LOCALHOST, game)).unwrap_err().kind(), ErrorKind::ConnectionRefused);
        // A connection that was open is closed too.
        let mut line = String::new();
        assert_eq!(BufReader::new(open).read_line(&mut line).unwrap_or(0), 0);
    }
}

#[test]
fn arguments_that_disagree_with_the_env_stop_the_server_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let env = base_env("game", 1, &dir.path().join("none.json"), dir.path());
    let out = Command::new(BIN).env_clear().envs(env).args(["gateway", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line: Value = serde_json::from_str(stderr.lines().last().unwrap()).unwrap();
    assert_eq!(line["message"], "cannot start");
    assert!(line["error"].as_str().unwrap().contains("GAMEZONE_TYPE=game but the first argument is gateway"), "{line}");
}

/// The `gamezone` binary of the same build (a workspace member, built beside this one by
/// `cargo test --workspace`).
fn gamezone_bin() -> PathBuf {
    let bin = Path::new(BIN).parent().unwrap().join("gamezone");
    assert!(bin.is_file(), "{} is missing: build it first (cargo build -p gamezone --bin gamezone)", bin.display());
    bin
}

/// `GET path` on loopback `port` with curl: the JSON body.
fn get_json(port: u16, path: &str) -> Option<Value> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs");
    serde_json::from_slice(&out.stdout).ok()
}

#[test]
fn with_an_sdk_sidecar_the_server_says_ready_once_listening_and_keeps_it_healthy() {
    let dir = tempfile::tempdir().unwrap();
    // A server whose health is checked every 3 s, Unhealthy after one missed period.
    let file = dir.path().join("gameserver.yaml");
    std::fs::write(
        &file,
        "apiVersion: gamezone.dev/v1alpha1\nkind: GameServer\nmetadata: {name: zone1-game-1}\n\
         spec: {zone: zone1, type: game, id: 1, template: {},\n\
         health: {periodSeconds: 3, failureThreshold: 1, initialDelaySeconds: 1}}\n\
         status: {state: Ready, address: 127.0.0.1}\n",
    )
    .unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut sidecar = Command::new(gamezone_bin())
        .args(["sdk", "--local", "-f"])
        .arg(&file)
        .args(["--grpc-port", &grpc.to_string(), "--http-port", &http.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _sidecar = Kill(&mut sidecar);
    let state = || get_json(http, "/gameserver").map(|v| v["status"]["state"].as_str().unwrap_or_default().to_string());
    let deadline = Instant::now() + Duration::from_secs(10);
    while state().is_none() {
        assert!(Instant::now() < deadline, "the sidecar did not serve within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(state().as_deref(), Some("Scheduled"), "not Ready before the game says so");

    let topology = write_topology(dir.path(), vec![]);
    let mut env = base_env("game", 1, &topology, dir.path());
    env.extend([("GAMEZONE_PORT_GAME", free_port().to_string()), ("GAMEZONE_SDK_HTTP_PORT", http.to_string())]);
    let mut server = Server::start(&env, &[]);
    let ready = server.wait_log("told the SDK sidecar Ready", Duration::from_secs(10));
    assert_eq!(ready["sdk_port"], http);
    server.wait_log("health pings reach the SDK sidecar", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while state().as_deref() != Some("Ready") {
        assert!(Instant::now() < deadline, "the sidecar does not show Ready: {:?}", state());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Three health periods: the pings keep it Ready.
    std::thread::sleep(Duration::from_secs(9));
    assert_eq!(state().as_deref(), Some("Ready"), "pinged every 2 s, the server stays healthy");
    // The pings were what kept it so: once the game stops, the sidecar finds it Unhealthy.
    server.signal("TERM");
    server.wait_exit(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while state().as_deref() != Some("Unhealthy") {
        assert!(Instant::now() < deadline, "no Unhealthy after the pings stopped: {:?}", state());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn metrics_on_the_declared_port_count_what_the_server_answered() {
    let dir = tempfile::tempdir().unwrap();
    let volume = Volume::new();
    let (game, metrics) = (free_port(), free_port());
    let topology = write_topology(
        dir.path(),
        vec![instance("zone1-game-1", "game", 1, json!([port("game", game, game, "TCP", "None")]))],
    );
    let mut env = base_env("game", 1, &topology, volume.path());
    env.extend([("GAMEZONE_PORT_GAME", game.to_string()), ("GAMEZONE_METRICS_PORT", metrics.to_string())]);
    let _server = Server::start(&env, &["game", "1"]);
    // A session held open while two hellos are answered: one player, two requests.
    let mut session = TcpStream::connect((Ipv4Addr::LOCALHOST, game)).unwrap();
    session.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = BufReader::new(session.try_clone().unwrap());
    for _ in 0..2 {
        session.write_all(b"hello\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
    }
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{metrics}/metrics"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("game_requests_total{request=\"hello\"} 2\n"), "{text}");
    assert!(text.contains("game_players 1\n"), "{text}");
    assert!(text.contains("game_ticks_total "), "{text}");
}
