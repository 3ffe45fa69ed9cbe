//! A real Argo CD syncs a fork of `examples/gamezone-repo`, step by step as its README tells a team:
//! fork, point the Application (or ApplicationSet) at the fork, sync on a fresh cluster, no drift
//! while the operator works, commits that bump the image or break and fix the migration, and one
//! zone per folder of `zones/`.
//!
//! Argo CD (application controller, repo server, ApplicationSet controller, built from its Go
//! module) runs on the host by `tests/argocd/argocd.sh` against a private control plane; the fork
//! is a bare repository served over smart HTTP by git's own `git-http-backend`. The health checks
//! come from the repository's `argocd/argocd-cm-patch.yaml`, so Argo CD's own Lua runs them.
//! KWOK plays the pods; the test plays the platform: the operator on the host (one per zone
//! namespace, `GAMEZONE_OPERATOR_BIN` or this package's binary), a PersistentVolume for MySQL, and
//! MetalLB (it gives LoadBalancer Services an address). Artifacts come from s3s-fs and the same
//! git server. Each step's time and Argo CD's memory are printed (`--nocapture`).
//!
//! Needs `tests/argocd/argocd.sh build` (done on first use), redis-server, git, python3 and s3s-fs
//! (`init-container/tests/install-test-tools.sh`).

mod common;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gamezone::api::{GameServer, GameZone, ZONE_LABEL};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

/// How long one step may take; Argo CD looks at git every 5 s (argocd.sh's reconciliation).
const STEP: Duration = Duration::from_secs(180);
/// Sync periods the no-drift check watches.
const DRIFT_PERIODS: u32 = 6;
const RECONCILIATION: Duration = Duration::from_secs(5);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn argocd_script() -> PathBuf {
    root().join("tests/argocd/argocd.sh")
}

// ------------------------------------------------------------------ processes

/// Argo CD on the host against one cluster; `argocd.sh down` on drop (its watchdog also stops it
/// when this test process dies).
struct ArgoCd {
    dir: PathBuf,
}

impl ArgoCd {
    fn start(kubeconfig: &Path) -> ArgoCd {
        let dir = tempfile::Builder::new().prefix("gamezone-argocd-").tempdir().unwrap().keep();
        let status = Command::new(argocd_script())
            .arg("up")
            .arg(&dir)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--watch-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .status()
            .expect("run tests/argocd/argocd.sh");
        assert!(
            status.success(),
            "`argocd.sh up` failed ({status}); its messages are above, logs in {}/logs",
            dir.display()
        );
        ArgoCd { dir }
    }

    /// Serves the bare repositories under `git_root`; returns the base URL.
    fn serve_git(&self, git_root: &Path) -> String {
        let out = Command::new(argocd_script()).arg("git-serve").arg(&self.dir).arg(git_root).output().unwrap();
        assert!(out.status.success(), "argocd.sh git-serve: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `argocd.sh status`: each component's resident memory.
    fn memory(&self) -> String {
        let out = Command::new(argocd_script()).arg("status").arg(&self.dir).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log_tail(&self, component: &str, lines: usize) -> String {
        let log = std::fs::read_to_string(self.dir.join("logs").join(format!("{component}.log"))).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ArgoCd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in ["application-controller", "repo-server", "applicationset-controller"] {
                eprintln!("--- {c} log tail ---\n{}", self.log_tail(c, 30));
            }
        }
        let _ = Command::new(argocd_script()).arg("down").arg(&self.dir).stdin(Stdio::null()).status();
    }
}

/// The operator on the host, watching one namespace; killed on drop.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(kubeconfig: &Path, namespace: &str) -> Operator {
        // A copy of the binary can be named, so a concurrent build elsewhere cannot swap it mid-run.
        let bin = std::env::var_os("GAMEZONE_OPERATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_gamezone")));
        let log = std::env::temp_dir().join(format!("gamezone-argocd-operator-{namespace}-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(&bin)
            .args(["run", "--namespace", namespace, "--log-format", "json", "--http-addr", "127.0.0.1:0"])
            // The fork's S3 layer is served on loopback, which the operator refuses by default.
            .args(["--allow-egress", "127.0.0.0/8"])
            // The re-pin test sets artifactsInterval 5s, shorter than the default floor.
            .args(["--min-artifacts-interval", "5"])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start the operator {}: {e}", bin.display()));
        Operator { child, log }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- operator log tail ({}) ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
    }
}

/// s3s-fs serving the artifact bucket; killed on drop.
struct S3 {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl S3 {
    /// A bucket `bucket` with one file under `prefix`, and the credentials of base/secrets.yaml.
    fn start(bucket: &str, prefix: &str, access_key: &str, secret_key: &str) -> S3 {
        let cache = std::env::var_os("GAMEZONE_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/gamezone"));
        let bin = cache.join("tools/s3s-fs-0.14.1/bin/s3s-fs");
        assert!(bin.is_file(), "{} is missing: run init-container/tests/install-test-tools.sh", bin.display());
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join(bucket).join(prefix);
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("world.map"), "zone map v1\n").unwrap();
        let port = support::free_port();
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", access_key, "--secret-key", secret_key])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start s3s-fs");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        S3 { child, port, _dir: dir }
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------ git

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(["-c", "user.name=Zhu Lei", "-c", "user.email=zhulei@example.com", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run git");
    assert!(out.status.success(), "git {args:?} in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A team's fork: a bare repository under the git server's root and the team's working copy.
struct Fork {
    work: PathBuf,
}

impl Fork {
    /// "Fork": the sample repository copied into a new repository `owner/name.git` under `git_root`.
    fn create(git_root: &Path, owner: &str, work: &Path) -> Fork {
        let bare = git_root.join(owner).join("gamezone-repo.git");
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "--bare", "-q", "-b", "main"]);
        copy_dir(&root().join("examples/gamezone-repo"), work);
        git(work, &["init", "-q", "-b", "main"]);
        git(work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let fork = Fork { work: work.to_path_buf() };
        fork.commit("Fork of gamezone-repo");
        fork
    }

    fn path(&self, file: &str) -> PathBuf {
        self.work.join(file)
    }

    /// Replaces `from` with `to` in `file`; the sample must still contain `from`.
    fn replace(&self, file: &str, from: &str, to: &str) {
        let path = self.path(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} no longer contains {from:?}: the README's steps changed");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    }

    /// Commits everything and pushes to the fork; returns the commit.
    fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "HEAD:main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A bare repository `project1/config.git` with a `config/` folder: the zone's git artifact layer.
fn config_repo(git_root: &Path, scratch: &Path) {
    let bare = git_root.join("project1/config.git");
    std::fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "--bare", "-q", "-b", "main"]);
    let work = scratch.join("config");
    std::fs::create_dir_all(work.join("config")).unwrap();
    std::fs::write(work.join("config/server.toml"), "max_players = 500\n").unwrap();
    git(&work, &["init", "-q", "-b", "main"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "config"]);
    git(&work, &["push", "-q", bare.to_str().unwrap(), "HEAD:main"]);
}

/// README step 2, "replace the names that are someone else's": the artifact locations become the
/// team's (here the test's servers), moving references are re-pinned every 5 s, and the Argo CD
/// manifests point at the fork.
fn make_it_ours(fork: &Fork, repo_url: &str, git_url: &str, s3_port: u16) {
    let zone = "base/gamezone.yaml";
    fork.replace(
        zone,
        "endpoint: https://cos.ap-beijing.myqcloud.com",
        &format!("endpoint: http://127.0.0.1:{s3_port}"),
    );
    fork.replace(zone, "pathStyle: false", "pathStyle: true");
    fork.replace(
        zone,
        "url: https://gitlab.example.com/project1/config.git",
        &format!("url: {git_url}/project1/config.git"),
    );
    fork.replace(zone, "  artifacts:\n", "  artifactsInterval: 5s\n  artifacts:\n");
    fork.replace("argocd/application.yaml", "https://gitlab.example.com/zhulei/gamezone-repo.git", repo_url);
    for _ in 0..2 {
        fork.replace("argocd/applicationset.yaml", "https://gitlab.example.com/project1/gamezone-repo.git", repo_url);
    }
}

// ------------------------------------------------------------------ cluster side

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    support::kubectl(kubeconfig, args)
}

/// What the platform provides: the GameZone CRDs (the operator's install comes before any zone,
/// as the README orders it) and volumes for MySQL's claims (no provisioner on this cluster).
async fn platform(client: &Client, volumes: usize) {
    support::install_crds(client).await;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    for i in 0..volumes {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": format!("data-{i}")},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain", "hostPath": {"path": format!("/srv/data-{i}")}}
        }))
        .unwrap();
        pvs.create(&PostParams::default(), &pv).await.unwrap();
    }
}

/// The cluster's load balancer (MetalLB on-prem): every LoadBalancer Service gets an address.
fn load_balancer(client: Client) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let services: Api<Service> = Api::all(client.clone());
        let mut next = 1u32;
        loop {
            if let Ok(list) = services.list(&ListParams::default()).await {
                for s in list.items {
                    let spec = s.spec.clone().unwrap_or_default();
                    let has_ip = s
                        .status
                        .as_ref()
                        .and_then(|st| st.load_balancer.as_ref())
                        .and_then(|lb| lb.ingress.as_ref())
                        .is_some_and(|i| !i.is_empty());
                    if spec.type_.as_deref() != Some("LoadBalancer") || has_ip {
                        continue;
                    }
                    let api: Api<Service> = Api::namespaced(client.clone(), &s.namespace().unwrap());
                    let ip = format!("10.0.2.{}", next % 250 + 1);
                    next += 1;
                    let patch = json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
                    let _ = api.patch_status(&s.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// README "Argo CD health": `kubectl -n argocd patch configmap argocd-cm --patch-file argocd/argocd-cm-patch.yaml`.
fn install_health_checks(kubeconfig: &Path, fork: &Fork) {
    let patch = fork.path("argocd/argocd-cm-patch.yaml");
    kubectl(kubeconfig, &["-n", "argocd", "patch", "configmap", "argocd-cm", "--patch-file", patch.to_str().unwrap()]);
}

// ------------------------------------------------------------------ Applications

fn app_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("argoproj.io", "v1alpha1", kind))
}

fn apps(client: &Client) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), "argocd", &app_resource("Application"))
}

/// What a person reads off `kubectl get application -o yaml`.
#[derive(Clone, Debug, Default, PartialEq)]
struct AppState {
    sync: String,
    health: String,
    revision: String,
    /// The GameZone's line in status.resources: its health and message (from our Lua).
    zone: Option<(String, String)>,
    /// (kind, name) of every resource the Application owns.
    resources: BTreeSet<(String, String)>,
    /// (kind, name) → health of every resource with one.
    healths: BTreeMap<(String, String), String>,
    /// (kind, name) of every resource that differs from git.
    out_of_sync: Vec<(String, String)>,
    syncs: usize,
    conditions: Vec<String>,
}

impl AppState {
    fn of(app: &DynamicObject) -> AppState {
        let st = &app.data["status"];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let mut state = AppState {
            sync: s(&st["sync"]["status"]),
            health: s(&st["health"]["status"]),
            revision: s(&st["sync"]["revision"]),
            syncs: st["history"].as_array().map_or(0, |h| h.len()),
            conditions: st["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| format!("{}: {}", s(&c["type"]), s(&c["message"])))
                .collect(),
            ..Default::default()
        };
        for r in st["resources"].as_array().into_iter().flatten() {
            let key = (s(&r["kind"]), s(&r["name"]));
            if let Some(h) = r["health"]["status"].as_str() {
                state.healths.insert(key.clone(), h.to_string());
            }
            if r["status"] == "OutOfSync" {
                state.out_of_sync.push(key.clone());
            }
            if r["kind"] == "GameZone" {
                state.zone = Some((s(&r["health"]["status"]), s(&r["health"]["message"])));
            }
            state.resources.insert(key);
        }
        state
    }

    fn zone_health(&self) -> &str {
        self.zone.as_ref().map_or("", |z| z.0.as_str())
    }

    fn synced_healthy_at(&self, revision: &str) -> bool {
        self.sync == "Synced"
            && self.health == "Healthy"
            && self.revision == revision
            && self.zone_health() == "Healthy"
    }
}

/// Polls one Application every 200 ms and keeps every state it shows, so a step can ask what
/// the Application went through (Progressing before Healthy), not only where it ended.
#[derive(Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// When the Application was in a state (`None`: it did not exist).
type Seen = (Instant, Option<AppState>);

impl Recorder {
    fn start(client: Client, name: &str) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (api, name, out) = (apps(&client), name.to_string(), seen.clone());
        tokio::spawn(async move {
            loop {
                let state = match api.get_opt(&name).await {
                    Ok(app) => app.as_ref().map(AppState::of),
                    Err(_) => None,
                };
                {
                    let mut seen = out.lock().unwrap();
                    if seen.last().map(|(_, s)| s) != Some(&state) {
                        seen.push((Instant::now(), state));
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        Recorder { seen }
    }

    fn latest(&self) -> Option<AppState> {
        self.seen.lock().unwrap().last().and_then(|(_, s)| s.clone())
    }

    /// Every state since `mark`.
    fn since(&self, mark: Instant) -> Vec<AppState> {
        self.seen.lock().unwrap().iter().filter(|(t, _)| *t >= mark).filter_map(|(_, s)| s.clone()).collect()
    }

    /// The distinct (Application health, GameZone health) pairs since `mark`, in order.
    fn health_path(&self, mark: Instant) -> Vec<String> {
        let mut path: Vec<String> = Vec::new();
        for s in self.since(mark) {
            let h = format!("{}/{}", s.health, s.zone_health());
            if path.last() != Some(&h) {
                path.push(h);
            }
        }
        path
    }

    async fn wait(&self, what: &str, done: impl Fn(&AppState) -> bool) -> AppState {
        common::wait_for(what, STEP, || async {
            match self.latest() {
                Some(s) if done(&s) => Ok(s),
                Some(s) => Err(format!("{s:?}")),
                None => Err("no Application yet".to_string()),
            }
        })
        .await
    }
}

/// Times of the flow's steps, printed as a table at the end.
struct Steps(Vec<(String, Duration)>, Instant);

impl Steps {
    fn new() -> Steps {
        Steps(Vec::new(), Instant::now())
    }

    /// Ends the current step, named `what`.
    fn done(&mut self, what: &str) {
        let took = self.1.elapsed();
        eprintln!("[argocd-flow] {what}: {:.1}s", took.as_secs_f64());
        self.0.push((what.to_string(), took));
        self.1 = Instant::now();
    }

    fn report(&self, memory: &str) {
        eprintln!("\n[argocd-flow] step times:");
        for (what, took) in &self.0 {
            eprintln!("  {:>6.1}s  {what}", took.as_secs_f64());
        }
        eprintln!("[argocd-flow] Argo CD memory:\n{memory}");
    }
}

// ------------------------------------------------------------------ zones

/// uid of every object the operator made for zone `zone` in `ns` (GameServers, Pods, Services,
/// ConfigMaps, Jobs), by kind/name.
async fn operator_objects(client: &Client, ns: &str, zone: &str) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels(&format!("{ZONE_LABEL}={zone}"));
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($k:ty, $kind:literal) => {
            for o in Api::<$k>::namespaced(client.clone(), ns).list(&lp).await.unwrap().items {
                assert!(
                    !o.annotations().contains_key("argocd.argoproj.io/tracking-id"),
                    "{} {} carries Argo CD's tracking id: Argo CD would take it for part of the app",
                    $kind,
                    o.name_any()
                );
                out.insert(format!("{}/{}", $kind, o.name_any()), o.uid().unwrap());
            }
        };
    }
    collect!(GameServer, "GameServer");
    collect!(Pod, "Pod");
    collect!(Service, "Service");
    collect!(ConfigMap, "ConfigMap");
    collect!(Job, "Job");
    out
}

async fn zone_status(client: &Client, ns: &str) -> Option<GameZone> {
    Api::<GameZone>::namespaced(client.clone(), ns).get_opt("zone1").await.ok().flatten()
}

/// The image of server pod `name`.
async fn pod_image(client: &Client, ns: &str, name: &str) -> Option<String> {
    let pod = Api::<Pod>::namespaced(client.clone(), ns).get_opt(name).await.ok().flatten()?;
    pod.spec?.containers.first()?.image.clone()
}

/// What the repository declares for an environment: (kind, name) of every object of
/// overlays/on-prem, which is all an Application of it may own.
fn declared(kubeconfig: &Path, fork: &Fork, path: &str) -> BTreeSet<(String, String)> {
    let yaml = kubectl(kubeconfig, &["kustomize", fork.path(path).to_str().unwrap()]);
    serde_yaml::Deserializer::from_str(&yaml)
        .filter_map(|d| serde::Deserialize::deserialize(d).ok())
        .map(|v: Value| (v["kind"].as_str().unwrap().to_string(), v["metadata"]["name"].as_str().unwrap().to_string()))
        .collect()
}

// ------------------------------------------------------------------ the flow

/// One fork = one environment: the README's Application syncs the fork on a fresh cluster in one
/// pass, stays Synced while the operator works, follows an image bump, and shows a broken
/// migration as Degraded with the zone's own message until a fix is pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_repo_synced_by_argo_cd_runs_the_zone_and_follows_every_commit() {
    let mut steps = Steps::new();
    let cluster = common::start_private(1);
    let kc = cluster.kubeconfig().to_path_buf();
    let client = cluster.client().await;
    platform(&client, 1).await;
    let argocd = ArgoCd::start(&kc);
    let _lb = load_balancer(client.clone());
    steps.done("fresh cluster, platform (CRDs, a volume) and Argo CD up");

    // 1. Fork.
    let scratch = tempfile::tempdir().unwrap();
    let git_root = scratch.path().join("git");
    let fork = Fork::create(&git_root, "zhulei", &scratch.path().join("work"));
    config_repo(&git_root, scratch.path());
    let git_url = argocd.serve_git(&git_root);
    let s3 = S3::start("example-1234567890", "project1/0.1.0/resources", "AKIDEXAMPLE", "change-me");
    let repo_url = format!("{git_url}/zhulei/gamezone-repo.git");
    make_it_ours(&fork, &repo_url, &git_url, s3.port);
    let first = fork.commit("Our zone: our artifact locations, Argo CD pointed at our fork");
    steps.done("1. fork served over smart HTTP, names replaced (README step 2)");

    // 2. The health checks and the Application, as the README says.
    install_health_checks(&kc, &fork);
    let _op = Operator::start(&kc, "zhulei");
    let recorder = Recorder::start(client.clone(), "zone1-zhulei");
    let mark = Instant::now();
    kubectl(&kc, &["apply", "-n", "argocd", "-f", fork.path("argocd/application.yaml").to_str().unwrap()]);
    steps.done("2. health checks installed, Application applied");

    // 3. One pass on a fresh cluster: namespace, Secrets, Redis, MariaDB, the zone; Healthy
    // through our health check.
    let state =
        recorder.wait("the Application Synced and Healthy at the fork's commit", |s| s.synced_healthy_at(&first)).await;
    steps.done("3. synced in one pass; zone Running, Application Healthy");
    let path = recorder.health_path(mark);
    assert!(path.iter().any(|h| h.ends_with("/Progressing")), "the zone never showed Progressing: {path:?}");
    let zone = zone_status(&client, "zhulei").await.expect("Argo CD created the GameZone");
    let zst = zone.status.clone().unwrap();
    assert_eq!(zst.phase.map(|p| format!("{p:?}")).as_deref(), Some("Running"));
    let (_, message) = state.zone.clone().unwrap();
    assert!(
        message.starts_with(&format!("{} servers Ready", zst.ready_text.clone().unwrap())),
        "zone health message: {message}"
    );
    assert!(message.contains("artifacts "), "the Lua names the pinned artifacts: {message}");
    for part in [("Deployment", "redis"), ("StatefulSet", "mysql"), ("Service", "redis"), ("Service", "mysql")] {
        let key = (part.0.to_string(), part.1.to_string());
        assert_eq!(state.healths.get(&key).map(String::as_str), Some("Healthy"), "{part:?} in {:?}", state.healths);
    }
    assert_eq!(state.syncs, 1, "one sync made the environment: {state:?}");
    let want = declared(&kc, &fork, "overlays/on-prem");
    assert_eq!(state.resources, want, "the Application owns exactly what the repository declares");

    // 4. No drift: several sync periods of re-pins, status writes and reconciles by the operator.
    let before = operator_objects(&client, "zhulei", "zone1").await;
    for kind in ["GameServer/", "Pod/", "Service/", "ConfigMap/", "Job/"] {
        assert!(before.keys().any(|k| k.starts_with(kind)), "the operator made no {kind} for zone1: {before:?}");
    }
    let resolved_before = zst.artifacts_resolved_at.clone();
    let mark = Instant::now();
    tokio::time::sleep(RECONCILIATION * DRIFT_PERIODS).await;
    let drift: Vec<AppState> = recorder.since(mark).into_iter().filter(|s| !s.synced_healthy_at(&first)).collect();
    assert!(drift.is_empty(), "the Application left Synced/Healthy while nothing was committed: {drift:?}");
    let latest = recorder.latest().unwrap();
    assert_eq!(latest.syncs, 1, "Argo CD synced again without a commit (self-heal of a drift)");
    assert_eq!(latest.resources, want, "the operator's objects are not part of the app");
    assert_eq!(
        operator_objects(&client, "zhulei", "zone1").await,
        before,
        "Argo CD pruned or replaced the operator's objects"
    );
    let resolved_after = zone_status(&client, "zhulei").await.unwrap().status.unwrap().artifacts_resolved_at;
    assert_ne!(resolved_after, resolved_before, "the operator did not re-pin during the window (artifactsInterval 5s)");
    steps.done("4. no drift over 6 sync periods of operator re-pins");

    // 5. A commit that bumps the service image.
    fork.replace(
        "base/gamezone.yaml",
        "defaultImage: registry.example.com/project1/service:0.1.0",
        "defaultImage: registry.example.com/project1/service:0.1.1",
    );
    let mark = Instant::now();
    let bump = fork.commit("Service 0.1.1");
    recorder.wait("the image bump synced and Healthy", |s| s.synced_healthy_at(&bump)).await;
    common::wait_for("zone1-db-1 on 0.1.1", STEP, || async {
        let image = pod_image(&client, "zhulei", "zone1-db-1").await;
        if image.as_deref() == Some("registry.example.com/project1/service:0.1.1") { Ok(()) } else { Err(image) }
    })
    .await;
    let path = recorder.health_path(mark);
    assert!(path.iter().any(|h| h.contains("Progressing")), "no Progressing between the bump and Healthy: {path:?}");
    steps.done("5. image bump: synced, Progressing, Healthy");

    // 6. A commit with a broken migration, then a fix.
    fork.replace(
        "base/gamezone.yaml",
        "defaultImage: registry.example.com/project1/service:0.1.1",
        "defaultImage: registry.example.com/project1/service:0.2.0",
    );
    fork.replace(
        "base/gamezone.yaml",
        "image: registry.example.com/project1/dbmigrater:0.1.0",
        "image: gamezone.test/fail\n    backoffLimit: 0",
    );
    let broken = fork.commit("Service 0.2.0 with its migration");
    let state = recorder
        .wait("the Application Degraded by the failed migration", |s| {
            s.revision == broken && s.sync == "Synced" && s.health == "Degraded" && s.zone_health() == "Degraded"
        })
        .await;
    let (_, message) = state.zone.unwrap();
    let zone = zone_status(&client, "zhulei").await.unwrap();
    let ready = zone.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!(message, ready.message, "Argo CD shows the zone's own message");
    assert!(message.contains("BackoffLimitExceeded"), "{message}");
    steps.done("6a. broken migration: Degraded with the zone's message");
    fork.replace(
        "base/gamezone.yaml",
        "image: gamezone.test/fail",
        "image: registry.example.com/project1/dbmigrater:0.2.0",
    );
    let fixed = fork.commit("Fix the migration");
    recorder.wait("the fix synced and Healthy", |s| s.synced_healthy_at(&fixed)).await;
    assert_eq!(
        pod_image(&client, "zhulei", "zone1-db-1").await.as_deref(),
        Some("registry.example.com/project1/service:0.2.0")
    );
    steps.done("6b. fixing commit: Healthy on 0.2.0");

    steps.report(&argocd.memory());
}

/// One zone per folder of `zones/` (the README's ApplicationSet): a pushed folder brings a zone
/// in its own namespace, a deleted folder removes the zone and everything the operator made for
/// it, and the other zone is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applicationset_makes_a_zone_per_folder_and_removes_it_with_the_folder() {
    let mut steps = Steps::new();
    let cluster = common::start_private(1);
    let kc = cluster.kubeconfig().to_path_buf();
    let client = cluster.client().await;
    platform(&client, 2).await;
    let argocd = ArgoCd::start(&kc);
    let _lb = load_balancer(client.clone());
    let scratch = tempfile::tempdir().unwrap();
    let git_root = scratch.path().join("git");
    let fork = Fork::create(&git_root, "project1", &scratch.path().join("work"));
    config_repo(&git_root, scratch.path());
    let git_url = argocd.serve_git(&git_root);
    let s3 = S3::start("example-1234567890", "project1/0.1.0/resources", "AKIDEXAMPLE", "change-me");
    make_it_ours(&fork, &format!("{git_url}/project1/gamezone-repo.git"), &git_url, s3.port);
    let first = fork.commit("Our zones");
    install_health_checks(&kc, &fork);
    let _op1 = Operator::start(&kc, "zone1");
    let _op2 = Operator::start(&kc, "zone2");
    steps.done("cluster, Argo CD, fork");

    let zone1 = Recorder::start(client.clone(), "gamezone-zone1");
    let zone2 = Recorder::start(client.clone(), "gamezone-zone2");
    kubectl(&kc, &["apply", "-n", "argocd", "-f", fork.path("argocd/applicationset.yaml").to_str().unwrap()]);
    zone1.wait("gamezone-zone1 Synced and Healthy", |s| s.synced_healthy_at(&first)).await;
    steps.done("7a. ApplicationSet applied: zone1 Healthy");
    let zone1_objects = operator_objects(&client, "zone1", "zone1").await;

    // A new folder: zone 2 (its own zoneId) in namespace zone2.
    copy_dir(&fork.path("zones/zone1"), &fork.path("zones/zone2"));
    std::fs::write(
        fork.path("zones/zone2/kustomization.yaml"),
        "# Zone 2: zone1's overlay with its own zoneId.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n  - ../../overlays/on-prem\npatches:\n  - target: {group: gamezone.dev, kind: GameZone, name: zone1}\n    \
         patch: |-\n      - op: replace\n        path: /spec/zoneId\n        value: 102\n",
    )
    .unwrap();
    let added = fork.commit("Zone 2");
    zone2.wait("gamezone-zone2 Synced and Healthy", |s| s.synced_healthy_at(&added)).await;
    let z2 = zone_status(&client, "zone2").await.unwrap();
    assert_eq!(z2.spec.zone_id, 102);
    let zone2_objects = operator_objects(&client, "zone2", "zone1").await;
    assert!(zone2_objects.keys().any(|k| k.starts_with("GameServer/")), "{zone2_objects:?}");
    steps.done("7b. pushed zones/zone2: a second zone in namespace zone2, Healthy");

    // Delete the folder: the Application goes, and with it the zone and all it made.
    std::fs::remove_dir_all(fork.path("zones/zone2")).unwrap();
    fork.commit("Remove zone 2");
    common::wait_for("gamezone-zone2 gone", STEP, || async {
        match apps(&client).get_opt("gamezone-zone2").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|a| a.map(|a| AppState::of(&a))))),
        }
    })
    .await;
    common::wait_for("zone2's zone, Redis, MySQL and everything the operator made gone", STEP, || async {
        let left = operator_objects(&client, "zone2", "zone1").await;
        let zone = zone_status(&client, "zone2").await;
        let deployments = kubectl(&kc, &["get", "deployments,statefulsets,secrets", "-n", "zone2", "-o", "name"]);
        if left.is_empty() && zone.is_none() && deployments.trim().is_empty() {
            Ok(())
        } else {
            Err(format!("zone {:?}, operator objects {left:?}, {deployments}", zone.map(|z| z.name_any())))
        }
    })
    .await;
    assert_eq!(operator_objects(&client, "zone1", "zone1").await, zone1_objects, "removing zone2 touched zone1");
    let z1 = zone1.latest().unwrap();
    assert_eq!((z1.sync.as_str(), z1.health.as_str()), ("Synced", "Healthy"), "zone1 after zone2 went: {z1:?}");
    steps.done("7c. deleted zones/zone2: its Application, zone and objects gone; zone1 untouched");

    steps.report(&argocd.memory());
}
