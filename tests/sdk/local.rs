//! `gamezone sdk --local`, driven as games drive Agones' and Carrier's sidecars: the official
//! Agones clients (the `agones` crate, `@google-cloud/agones-sdk` from npm) over gRPC, and
//! Carrier's HTTP API with curl. No cluster: the GameServer comes from a file that the tests
//! edit to see the edit pushed to watchers.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::webhook_server;

const SERVER_YAML: &str = r#"
apiVersion: gamezone.dev/v1alpha1
kind: GameServer
metadata:
  name: NAME
  namespace: zone1
  labels: {gamezone.dev/zone: z1}
spec:
  zone: z1
  type: game
  id: 1
  template: {}
  deletableGates: [carrier.ocgi.dev/has-no-player]
status:
  state: Ready
  address: 127.0.0.1
  nodeName: node-1
  ports: [{name: game, port: 7777, containerPort: 7777, protocol: UDP}]
"#;

/// A local sidecar on free ports, serving a GameServer file; killed when dropped.
struct Sidecar {
    child: Child,
    grpc: u16,
    http: u16,
    file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sidecar {
    fn start(name: &str) -> Sidecar {
        Self::start_with(&SERVER_YAML.replace("NAME", name), tempfile::tempdir().unwrap(), &[])
    }

    /// Serves `server` (written to `dir`), with more flags.
    fn start_with(server: &str, dir: tempfile::TempDir, args: &[&std::ffi::OsStr]) -> Sidecar {
        let file = dir.path().join("gameserver.yaml");
        std::fs::write(&file, server).unwrap();
        let (grpc, http) = (free_port(), free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_gamezone"))
            .args(["sdk", "--local", "-f"])
            .arg(&file)
            .args(["--grpc-port", &grpc.to_string(), "--http-port", &http.to_string()])
            .args(args)
            // Calls are logged at info level; warnings and errors show in a failing test's output.
            .env("RUST_LOG", "warn")
            .env("GAMEZONE_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("gamezone sdk starts");
        let sidecar = Sidecar { child, grpc, http, file, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", http)).is_err() {
            assert!(Instant::now() < deadline, "the sidecar did not listen on {http} within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        sidecar
    }

    fn curl(&self, method: &str, path: &str, body: Option<&str>) -> (u16, serde_json::Value) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}", "--max-time", "5"]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", b]);
        }
        let out = cmd.arg(format!("http://127.0.0.1:{}{path}", self.http)).output().expect("curl runs");
        let text = String::from_utf8(out.stdout).unwrap();
        let (json, code) = text.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), serde_json::from_str(json).unwrap_or(serde_json::Value::Null))
    }
}

async fn until<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn label<'a>(gs: &'a agones::GameServer, key: &str) -> Option<&'a str> {
    gs.object_meta.as_ref()?.labels.get(key).map(String::as_str)
}

fn state(gs: &agones::GameServer) -> &str {
    gs.status.as_ref().map(|s| s.state.as_str()).unwrap_or_default()
}

#[tokio::test]
async fn the_agones_rust_client_runs_unchanged_against_the_local_sidecar() {
    let sidecar = Sidecar::start("rust-server");
    let mut sdk = agones::Sdk::new(Some(sidecar.grpc), None).await.expect("the client connects");

    let mut watch = sdk.watch_gameserver().await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.object_meta.as_ref().unwrap().name, "rust-server", "the watch sends the current server first");
    assert_eq!(state(&first), "Scheduled", "running, but the process has not said Ready");
    let status = first.status.as_ref().unwrap();
    assert_eq!((status.ports[0].name.as_str(), status.ports[0].port), ("game", 7777));
    assert_eq!(first.spec.unwrap().health.unwrap().period_seconds, 5, "Agones' default health");

    sdk.ready().await.unwrap();
    let health = sdk.health_check();
    tokio::spawn(async move {
        // As a game does: a ping every second, so the server stays Healthy.
        while health.send(()).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    sdk.set_label("map", "dust").await.unwrap();
    sdk.set_annotation("build", "1.2.3 (debug)").await.unwrap();
    let e = format!("{:?}", sdk.set_label("bad/key", "x").await.unwrap_err());
    assert!(e.contains("bad/key"), "the error names the key: {e}");

    let gs = until("the label and Ready", async || {
        let gs = sdk.get_gameserver().await.unwrap();
        (label(&gs, "gamezone.dev/sdk-map") == Some("dust") && state(&gs) == "Ready").then_some(gs)
    })
    .await;
    let meta = gs.object_meta.unwrap();
    assert_eq!(meta.annotations["gamezone.dev/sdk-build"], "1.2.3 (debug)");
    assert_eq!(meta.labels["gamezone.dev/zone"], "z1", "the file's own labels stay");

    // An edit of the file reaches watchers, and what the process set stays on top.
    let edited = std::fs::read_to_string(&sidecar.file)
        .unwrap()
        .replace("{gamezone.dev/zone: z1}", "{gamezone.dev/zone: z1, edited: \"yes\"}");
    std::fs::write(&sidecar.file, edited).unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(gs) = watch.next().await {
            let gs = gs.unwrap();
            let sdk_kept = label(&gs, "gamezone.dev/sdk-map") == Some("dust") && state(&gs) == "Ready";
            if label(&gs, "edited") == Some("yes") && sdk_kept {
                return gs;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the watch shows the file's edit with the SDK's label and state within 10 s");
    assert_eq!(seen.object_meta.unwrap().annotations["gamezone.dev/sdk-build"], "1.2.3 (debug)");

    sdk.reserve(Duration::from_secs(1)).await.unwrap();
    until("Reserved", async || (state(&sdk.get_gameserver().await.unwrap()) == "Reserved").then_some(())).await;
    until("Ready after the reservation", async || {
        (state(&sdk.get_gameserver().await.unwrap()) == "Ready").then_some(())
    })
    .await;
    sdk.allocate().await.unwrap();
    until("Allocated", async || (state(&sdk.get_gameserver().await.unwrap()) == "Allocated").then_some(())).await;
    sdk.shutdown().await.unwrap();
    until("Shutdown", async || (state(&sdk.get_gameserver().await.unwrap()) == "Shutdown").then_some(())).await;
}

/// `npm ci` in tests/sdk-node once (from the registry), then `node test.js`.
fn node_client() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk-node");
    if !dir.join("node_modules/@google-cloud/agones-sdk").exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm runs (apt-get install npm)");
        assert!(status.success(), "npm ci in {} failed", dir.display());
    }
    dir
}

#[tokio::test]
async fn the_agones_node_client_runs_unchanged_against_the_local_sidecar() {
    let dir = node_client();
    let sidecar = Sidecar::start("node-server");
    let run = tokio::process::Command::new("node")
        .arg("test.js")
        .current_dir(&dir)
        .env("AGONES_SDK_GRPC_PORT", sidecar.grpc.to_string())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the Node client finishes within 60 s")
        .expect("node runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the Node client failed:\n{stdout}\n{stderr}");
    // What it did is on the server, as the REST gateway shows it.
    let (code, gs) = sidecar.curl("GET", "/gameserver", None);
    assert_eq!(code, 200);
    assert_eq!(gs["object_meta"]["labels"]["gamezone.dev/sdk-engine"], "node");
    assert_eq!(gs["status"]["state"], "Shutdown");
}

#[tokio::test]
async fn carrier_s_http_api_and_agones_rest_work_with_a_plain_http_client() {
    let sidecar = Sidecar::start("carrier-server");
    let (code, gs) = sidecar.curl("GET", "/gameserver", None);
    assert_eq!(code, 200);
    assert_eq!(gs["object_meta"]["name"], "carrier-server");
    assert_eq!(gs["status"]["nodeName"], "node-1");

    for (path, body) in [
        ("/metadata/label", r#"{"key": "room", "value": "r1"}"#),
        ("/metadata/annotation", r#"{"key": "motd", "value": "hello, world"}"#),
        ("/condition", r#"{"key": "carrier.ocgi.dev/has-no-player", "value": "True"}"#),
    ] {
        assert_eq!(sidecar.curl("PUT", path, Some(body)), (200, serde_json::json!({})), "PUT {path}");
    }
    let (code, e) = sidecar.curl("PUT", "/metadata/label", Some(r#"{"key": "-bad", "value": "x"}"#));
    assert_eq!(code, 400);
    assert!(e["message"].as_str().unwrap().contains("\"-bad\""), "the error names the key: {e}");
    let (code, e) = sidecar.curl("PUT", "/condition", Some(r#"{"key": "ready", "value": "yes"}"#));
    assert!(code == 400 && e["message"].as_str().unwrap().contains("True, False or Unknown"), "{e}");
    // Only the server's gates: the API server would refuse any other condition.
    let (code, e) = sidecar.curl("PUT", "/condition", Some(r#"{"key": "example.com/other", "value": "True"}"#));
    let message = e["message"].as_str().unwrap_or_default();
    assert!(code == 400 && message.contains("none of this server's gates (carrier.ocgi.dev/has-no-player)"), "{e}");

    // Agones' REST calls on the same port.
    assert_eq!(sidecar.curl("POST", "/ready", Some("{}")).0, 200);
    assert_eq!(sidecar.curl("POST", "/health", Some("{}")).0, 200);
    assert_eq!(sidecar.curl("POST", "/reserve", Some(r#"{"seconds": "-1"}"#)).0, 400);

    let gs = until("the writes", async || {
        let (_, gs) = sidecar.curl("GET", "/gameserver", None);
        (gs["status"]["state"] == "Ready" && gs["object_meta"]["labels"]["gamezone.dev/sdk-room"] == "r1").then_some(gs)
    })
    .await;
    assert_eq!(gs["object_meta"]["annotations"]["gamezone.dev/sdk-motd"], "hello, world");
    let condition = &gs["status"]["conditions"][0];
    assert_eq!((&condition["type"], &condition["status"]), (&"carrier.ocgi.dev/has-no-player".into(), &"True".into()));

    // The watch: one JSON line per change, the current server first.
    let out = Command::new("curl")
        .args(["-sSN", "--max-time", "2"])
        .arg(format!("http://127.0.0.1:{}/watch/gameserver", sidecar.http))
        .output()
        .unwrap();
    let first = String::from_utf8(out.stdout).unwrap();
    let first: serde_json::Value = serde_json::from_str(first.lines().next().expect("a first line")).unwrap();
    assert_eq!(first["result"]["object_meta"]["labels"]["gamezone.dev/sdk-room"], "r1");
}

/// A WebhookConfiguration file for local mode, its webhooks at `port` of the test's server.
fn webhooks_yaml(port: u16, webhooks: &str) -> String {
    format!(
        "apiVersion: gamezone.dev/v1alpha1\nkind: WebhookConfiguration\nmetadata: {{name: hooks}}\nspec:\n  webhooks:\n{}",
        webhooks.replace("URL", &format!("http://127.0.0.1:{port}"))
    )
}

#[tokio::test]
async fn local_mode_polls_the_webhooks_of_a_file_and_follows_its_edits() {
    let (port, heard) = webhook_server::webhook_server(2).await;
    let calls = |path: &str| heard.lock().unwrap().iter().filter(|h| h.path == path).count();
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("webhooks.yaml");
    let ready = "  - {name: server-ready, type: ReadinessWebhook, clientConfig: {url: URL/ready}, periodSeconds: 1, requestPolicy: Once}\n";
    std::fs::write(&hooks, webhooks_yaml(port, ready)).unwrap();
    let server = SERVER_YAML.replace("NAME", "hooked").replace(
        "  deletableGates: [carrier.ocgi.dev/has-no-player]",
        "  readinessGates: [server-ready]\n  deletableGates: [has-no-player]",
    );
    let sidecar = Sidecar::start_with(&server, dir, &["--webhooks".as_ref(), hooks.as_os_str()]);
    let gate = |gs: &serde_json::Value, type_: &str| {
        gs["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == type_).map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
    };

    // The readiness gate follows the webhook's answers: no, no, then yes; Once stops there.
    let (_, message) = until("the readiness gate True", async || {
        let (_, gs) = sidecar.curl("GET", "/gameserver", None);
        gate(&gs, "server-ready").filter(|(status, _)| status == "True")
    })
    .await;
    assert_eq!(message, "webhook server-ready: allowed: call 3");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(calls("/ready"), 3, "Once: no call after the first yes");
    let asked = heard.lock().unwrap()[0].review.request.clone().unwrap();
    assert_eq!((asked.name.as_str(), asked.namespace.as_str()), ("hooked", "zone1"), "the review names the server");

    // An edit of the file is followed: a deletable webhook, polled once the server is drained.
    let deletable =
        "  - {name: has-no-player, type: DeletableWebhook, clientConfig: {url: URL/deletable}, periodSeconds: 1}\n";
    std::fs::write(&hooks, webhooks_yaml(port, &format!("{ready}{deletable}"))).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(calls("/deletable"), 0, "deletable webhooks wait for NotInService");
    let drained = server.replace(
        "  template: {}",
        "  template: {}\n  constraints: [{type: NotInService, effective: true, message: scale down}]",
    );
    std::fs::write(&sidecar.file, drained).unwrap();
    until("the deletable gate True", async || {
        let (_, gs) = sidecar.curl("GET", "/gameserver", None);
        gate(&gs, "has-no-player").filter(|(status, _)| status == "True")
    })
    .await;
    assert!(calls("/deletable") >= 1);
}

#[test]
fn local_mode_refuses_a_webhook_without_a_url_naming_the_file_and_the_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let hooks = dir.path().join("webhooks.yaml");
    std::fs::write(
        &hooks,
        webhooks_yaml(
            1,
            "  - {name: by-service, type: ReadinessWebhook, clientConfig: {service: {namespace: a, name: b}}}\n",
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_gamezone"))
        .args(["sdk", "--local", "--webhooks"])
        .arg(&hooks)
        .args(["--grpc-port", &free_port().to_string(), "--http-port", &free_port().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&hooks.display().to_string())
            && err.contains("\"by-service\" names a service")
            && err.contains("clientConfig.url"),
        "{err}"
    );
}
