//! Helpers for integration tests that run against the local control plane
//! (`tests/controlplane/cp.sh`: real kube-apiserver, etcd, controller manager
//! and scheduler, with KWOK simulating nodes and pods).
//!
//! - [`namespace`] gives a test a client and a fresh namespace on the control
//!   plane shared by the whole run: the one named by `GAMEZONE_KUBECONFIG`, or
//!   else one started lazily for this test binary.
//! - [`start_private`] starts a cluster of its own for tests that need a
//!   particular node count; it stops when dropped.
//! - [`wait_for`] polls until something is true and says what it last saw.
//!
//! Each `#[tokio::test]` has its own runtime, so clients are built per test
//! from a kubeconfig path and never shared between tests.
#![allow(dead_code)] // every test binary uses a different subset

pub mod audit;

use std::fmt::Debug;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Kubeconfig of a control plane started outside the test binary (by the
/// project's test script); when unset, each test binary starts its own.
pub const KUBECONFIG_ENV: &str = "GAMEZONE_KUBECONFIG";

/// Set to keep test namespaces after the test, for looking around.
pub const KEEP_NAMESPACES_ENV: &str = "GAMEZONE_KEEP_NAMESPACES";

/// Label on every namespace made by [`namespace`], for bulk cleanup:
/// `kubectl delete namespace -l test.gamezone.dev/namespace`.
pub const TEST_NAMESPACE_LABEL: &str = "test.gamezone.dev/namespace";

/// Nodes in the shared control plane when this binary starts it.
pub const SHARED_NODES: usize = 3;

/// The script that builds, starts and stops control planes.
pub fn cp_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/cp.sh")
}

/// Kubeconfig of the control plane shared by this test run, starting one on
/// first use when `GAMEZONE_KUBECONFIG` is unset. Nothing stops it explicitly:
/// its watchdog tears it down when this process exits.
pub fn shared_kubeconfig() -> &'static Path {
    static SHARED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        if let Some(path) = std::env::var_os(KUBECONFIG_ENV) {
            return Ok(PathBuf::from(path));
        }
        let dir = tempfile::Builder::new()
            .prefix("gamezone-cp-")
            .tempdir()
            .map_err(|e| format!("cannot create a directory for the control plane: {e}"))?
            // `cp.sh down`, run by the watchdog, removes it.
            .keep();
        cp_up(&dir, SHARED_NODES)
    });
    match shared {
        Ok(path) => path,
        // Every test sharing it fails with the same cause; only the first start was tried.
        Err(e) => panic!("shared control plane unavailable: {e}"),
    }
}

/// Runs `cp.sh up DIR`, watched by this process, and returns the kubeconfig path.
fn cp_up(dir: &Path, nodes: usize) -> Result<PathBuf, String> {
    let output = Command::new(cp_script())
        .arg("up")
        .arg(dir)
        .args(["--nodes", &nodes.to_string()])
        .args(["--watch-pid", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        // Progress (and a cold build's progress) shows up on the terminal.
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cp_script().display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "`cp.sh up {} --nodes {nodes}` failed with {}; its messages are above, component logs in {}/logs",
            dir.display(),
            output.status,
            dir.display()
        ));
    }
    // The last line is the kubeconfig path.
    let kubeconfig = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| PathBuf::from(l.trim()))
        .ok_or_else(|| format!("`cp.sh up` printed no kubeconfig path: {stdout:?}"))?;
    if !kubeconfig.is_file() {
        return Err(format!("`cp.sh up` named {} but it is not a file", kubeconfig.display()));
    }
    Ok(kubeconfig)
}

/// `program` with only the environment a build outside cargo would have. A test or bench runs
/// with what cargo sets for it (CARGO_*, LD_LIBRARY_PATH ...), and build scripts that watch such
/// variables would rebuild the workspace on every run.
pub fn outside_cargo(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    for var in ["PATH", "HOME", "USER", "TMPDIR", "GAMEZONE_CACHE", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN"] {
        if let Some(v) = std::env::var_os(var) {
            cmd.env(var, v);
        }
    }
    cmd
}

/// The cargo target dir this test or bench binary was built in (`<target>/<profile>/deps/…`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the binary's path");
    exe.ancestors().nth(3).expect("the binary lives in <target>/<profile>/deps").to_path_buf()
}

/// A new client for the cluster behind `kubeconfig`, bound to the current runtime.
pub async fn client_for(kubeconfig: &Path) -> Client {
    Client::try_from(config_for(kubeconfig).await).expect("cannot build a kube client")
}

/// As [`client_for`], without the client's own retries of 429, 503 and 504 answers: for a
/// test that asks the Eviction API, whose 429 is a refusal to read, not a load to wait out
/// (the default retries back off exponentially, 15 times: minutes per refusal).
pub async fn client_taking_429(kubeconfig: &Path) -> Client {
    let mut config = config_for(kubeconfig).await;
    config.default_retry = false;
    Client::try_from(config).expect("cannot build a kube client")
}

async fn config_for(kubeconfig: &Path) -> Config {
    let kc = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", kubeconfig.display()));
    Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid kubeconfig {}: {e}", kubeconfig.display()))
}

/// A client for the shared control plane.
pub async fn shared_client() -> Client {
    client_for(shared_kubeconfig()).await
}

/// A fresh namespace on the shared control plane, deleted on drop.
pub struct TestNs {
    /// Client bound to the runtime of the test that made it.
    pub client: Client,
    /// The namespace's name.
    pub name: String,
    kubeconfig: PathBuf,
    deleted: bool,
}

/// Creates a namespace named `<prefix>-<unique suffix>` on the shared control
/// plane and waits until pods can be created in it (its `default`
/// ServiceAccount exists).
pub async fn namespace(prefix: &str) -> TestNs {
    namespace_in(shared_kubeconfig(), prefix).await
}

/// As [`namespace`], on the cluster of `kubeconfig` (a [`PrivateCluster`]'s).
pub async fn namespace_in(kubeconfig: &Path, prefix: &str) -> TestNs {
    let kubeconfig = kubeconfig.to_path_buf();
    let client = client_for(&kubeconfig).await;
    let name = unique_name(prefix);
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    wait_for(
        &format!("ServiceAccount {name}/default (made by the controller manager)"),
        Duration::from_secs(30),
        || async {
            match accounts.get_opt("default").await {
                Ok(Some(account)) => Ok(account),
                Ok(None) => Err("not found".to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    TestNs { client, name, kubeconfig, deleted: false }
}

impl TestNs {
    /// An API for namespaced objects in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Kubeconfig of the cluster holding this namespace, e.g. to start the operator against it.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Deletes the namespace now (without waiting for it to be gone).
    pub async fn cleanup(mut self) {
        self.deleted = true;
        if std::env::var_os(KEEP_NAMESPACES_ENV).is_some() {
            return;
        }
        delete_namespace(&self.client, &self.name).await;
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        if self.deleted || std::env::var_os(KEEP_NAMESPACES_ENV).is_some() {
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down:
        // delete from a thread with a runtime of its own.
        let (kubeconfig, name) = (self.kubeconfig.clone(), self.name.clone());
        let deleting = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(runtime) = runtime {
                runtime.block_on(async {
                    let client = client_for(&kubeconfig).await;
                    delete_namespace(&client, &name).await;
                });
            }
        });
        let _ = deleting.join();
    }
}

async fn delete_namespace(client: &Client, name: &str) {
    // Best effort: a control plane already gone takes the namespace with it.
    let _ = Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::background()).await;
}

/// `<prefix>-<suffix>`, unique across tests, test binaries and runs, valid as a DNS label.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let prefix: String =
        prefix.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(40).collect();
    let prefix = prefix.trim_matches('-');
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("{:x}{:x}{n}", std::process::id() % 0xfff, nanos % 0xfffff);
    if prefix.is_empty() { format!("t-{suffix}") } else { format!("{prefix}-{suffix}") }
}

/// A control plane of its own for one test; stopped (nothing left running) on drop.
pub struct PrivateCluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
}

/// Starts a private control plane with `nodes` simulated nodes (`node-1..N`).
/// Takes a few seconds; use it only where the shared one cannot do.
pub fn start_private(nodes: usize) -> PrivateCluster {
    let dir = tempfile::Builder::new()
        .prefix("gamezone-private-cp-")
        .tempdir()
        .expect("cannot create a directory for a private control plane")
        // `cp.sh down` removes it, on drop or from the watchdog.
        .keep();
    match cp_up(&dir, nodes) {
        Ok(kubeconfig) => PrivateCluster { dir, kubeconfig },
        Err(e) => panic!("cannot start a private control plane: {e}"),
    }
}

impl PrivateCluster {
    /// Kubeconfig of this cluster.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A new client for this cluster, bound to the current runtime.
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }

    /// The cluster's processes (etcd, kube-apiserver, ..., kwok) by name, with their pids.
    pub fn processes(&self) -> Vec<(String, u32)> {
        std::fs::read_to_string(self.dir.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (name, pid) = l.split_once(' ')?;
                Some((name.to_string(), pid.trim().parse().ok()?))
            })
            .collect()
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let status = Command::new(cp_script())
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("warning: `cp.sh down {}` failed: {status:?}", self.dir.display());
        }
    }
}

/// What one poll of [`wait_for`] found: a value when done, else what was seen.
pub trait Attempt<T> {
    /// `Ok` ends the wait; `Err` describes what was seen instead.
    fn into_outcome(self) -> Result<T, String>;
}

impl<T> Attempt<T> for Option<T> {
    fn into_outcome(self) -> Result<T, String> {
        self.ok_or_else(|| "nothing yet".to_string())
    }
}

impl<T, E: Debug> Attempt<T> for Result<T, E> {
    fn into_outcome(self) -> Result<T, String> {
        self.map_err(|e| format!("{e:?}"))
    }
}

/// A wait at least this long is reported on stderr.
const SLOW_WAIT: Duration = Duration::from_secs(10);

/// Polls `attempt` every 100 ms until it yields a value (`Some`/`Ok`), and
/// returns it. Panics after `timeout`, naming `what` it waited for and what
/// the last attempt saw (the `Err` value, or `None`). Note that a
/// `Result<Option<T>, E>` counts as done on `Ok(None)`: map it to a plain
/// `Option` or `Result` first.
pub async fn wait_for<T, A, F, Fut>(what: &str, timeout: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = A>,
    A: Attempt<T>,
{
    let started = Instant::now();
    loop {
        let last_seen = match attempt().await.into_outcome() {
            Ok(value) => {
                // Shown with --nocapture or on a failure: where a slow test spent its time.
                if started.elapsed() >= SLOW_WAIT {
                    eprintln!("[wait] {what}: {:.1} s", started.elapsed().as_secs_f64());
                }
                return value;
            }
            Err(seen) => seen,
        };
        if started.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last_seen}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A kubeconfig for `token` alone (no client certificate), beside `admin`, in `dir`: what a
/// pod-bound ServiceAccount token sees of the control plane.
pub fn token_kubeconfig(admin: &Path, token: &str, dir: &Path) -> PathBuf {
    let doc: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    let cluster = &doc["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": cluster["server"].as_str().unwrap(),
            "certificate-authority-data": cluster["certificate-authority-data"].as_str().unwrap()
        }}],
        "users": [{"name": "sdk", "user": {"token": token}}],
        "contexts": [{"name": "sdk", "context": {"cluster": "c", "user": "sdk"}}],
        "current-context": "sdk"
    });
    let path = dir.join("sdk-kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

/// When a Job's work ended: the latest `finishedAt` of `container` among its pods where that
/// container exited 0. A zone takes a migration as done then, a second or more before the Job
/// controller writes the Job's `completionTime`.
pub async fn job_finished(
    pods: &Api<k8s_openapi::api::core::v1::Pod>,
    job: &str,
    container: &str,
) -> k8s_openapi::jiff::Timestamp {
    let params = kube::api::ListParams::default().labels(&format!("job-name={job}"));
    let listed = pods.list(&params).await.expect("list the Job's pods").items;
    listed
        .iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter(|c| c.name == container)
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref())
        .filter(|t| t.exit_code == 0)
        .filter_map(|t| t.finished_at.as_ref().map(|f| f.0))
        .max()
        .unwrap_or_else(|| panic!("no pod of Job {job} whose {container} container ended with exit code 0"))
}
