//! The control plane with a real node the end-to-end tests share, the project's images in its
//! containerd, and a fresh namespace per test.
#![allow(dead_code)] // not every helper is used by every test

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use gamezone::api::GameZone;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::Deserialize;

use crate::common::{self, client_for, cp_script, target_dir, unique_name, wait_for};

/// Kubeconfig of a control plane with at least one real node, started outside the test binary
/// (`cp.sh up DIR --nodes 1 --real-nodes 1`); its directory must hold `real-nodes.json`. When
/// unset, this binary starts one and its watchdog stops it when the binary exits.
pub const REAL_KUBECONFIG_ENV: &str = "GAMEZONE_REAL_KUBECONFIG";

/// Set when the images are already in the real nodes (`scripts/images.sh import DIR` ran for
/// this build): the tests then skip it.
pub const IMAGES_IMPORTED_ENV: &str = "GAMEZONE_IMAGES_IMPORTED";

/// The operator's image, which also runs `gamezone-init` in every zone pod.
pub const OPERATOR_IMAGE: &str = "ghcr.io/gamezone-dev/gamezone:0.1.0";
/// The example game server (`examples/game-server`).
pub const GAME_SERVER_IMAGE: &str = "gamezone.dev/example/game-server:0.1.0";
/// The example migrater (`examples/migrater`).
pub const MIGRATER_IMAGE: &str = "gamezone.dev/example/migrater:0.1.0";

/// Label and taint key of the real nodes.
pub const NODE_KIND: &str = "gamezone.dev/node-kind";

/// `DIR/real-nodes.json`, written by `cp.sh up`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RealNodes {
    /// Where pods reach the host's loopback services (DNAT to 127.0.0.1).
    pub host_address: String,
    /// The node binaries (kubelet, containerd, ctr ...).
    pub bin_dir: PathBuf,
    /// The real nodes.
    pub nodes: Vec<RealNode>,
}

/// One real node.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RealNode {
    pub name: String,
    #[serde(rename = "nodeIP")]
    pub node_ip: String,
    pub netns: String,
    pub cgroup: String,
    pub containerd_socket: String,
    /// Where the node's kubelet writes pod logs (`/var/log/pods` inside the node).
    pub pod_logs: PathBuf,
}

impl RealNode {
    /// Runs `cmd args…` inside this node's network namespace, asserting success; its stdout.
    pub fn netns_exec(&self, cmd: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, cmd])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {cmd}: {e}", self.netns));
        assert!(
            out.status.success(),
            "{cmd} {args:?} in {} failed: {}",
            self.netns,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The shared control plane.
pub struct Cluster {
    /// Its `cp.sh` directory.
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub info: RealNodes,
}

impl Cluster {
    /// The control plane of this run, started on first use; the images are imported once.
    pub fn get() -> &'static Cluster {
        static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
        let cluster = CLUSTER.get_or_init(|| {
            let kubeconfig = match std::env::var_os(REAL_KUBECONFIG_ENV) {
                Some(path) => PathBuf::from(path),
                None => start(1)?,
            };
            Cluster::of(kubeconfig, 1)
        });
        match cluster {
            Ok(c) => c,
            Err(e) => panic!("control plane with a real node unavailable: {e}"),
        }
    }

    /// A second control plane, with two real nodes, for the tests that need a second node;
    /// started on first use (its own, whatever [`REAL_KUBECONFIG_ENV`] says).
    pub fn two_nodes() -> &'static Cluster {
        static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
        match CLUSTER.get_or_init(|| Cluster::of(start(2)?, 2)) {
            Ok(c) => c,
            Err(e) => panic!("control plane with two real nodes unavailable: {e}"),
        }
    }

    /// The cluster whose `cp.sh` directory holds `kubeconfig`, with at least `real` real nodes,
    /// its images imported unless [`IMAGES_IMPORTED_ENV`] says they are.
    fn of(kubeconfig: PathBuf, real: usize) -> Result<Cluster, String> {
        let dir = kubeconfig.parent().ok_or("the kubeconfig has no folder")?.to_path_buf();
        let json = std::fs::read_to_string(dir.join("real-nodes.json")).map_err(|e| {
            format!(
                "{}/real-nodes.json: {e}; {REAL_KUBECONFIG_ENV} must name the kubeconfig of `cp.sh up DIR --real-nodes 1`",
                dir.display()
            )
        })?;
        let info: RealNodes = serde_json::from_str(&json).map_err(|e| format!("real-nodes.json: {e}: {json}"))?;
        if info.nodes.len() < real {
            return Err(format!("{} has {} real node(s), not {real}", dir.display(), info.nodes.len()));
        }
        let cluster = Cluster { dir, kubeconfig, info };
        if std::env::var_os(IMAGES_IMPORTED_ENV).is_none() || real > 1 {
            cluster.import_images()?;
        }
        Ok(cluster)
    }

    /// The first real node, where the tests' pods run.
    pub fn node(&self) -> &RealNode {
        &self.info.nodes[0]
    }

    /// A new client, bound to the current runtime.
    pub async fn client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }

    /// `scripts/images.sh import DIR`: the images (cached by content) from the binaries of the
    /// profile this test was built in, imported into every real node. Under `cargo test` those
    /// are the dev binaries cargo has just built, so a test run compiles the workspace once.
    fn import_images(&self) -> Result<(), String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/images.sh");
        let out = common::outside_cargo(&script)
            .arg("import")
            .arg(&self.dir)
            .env("CARGO_TARGET_DIR", target_dir())
            .env("GAMEZONE_IMAGE_PROFILE", image_profile())
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "`scripts/images.sh import {}` failed ({}); see above",
                self.dir.display(),
                out.status
            ));
        }
        Ok(())
    }

    /// `cp.sh node-stop DIR NODE --kill`: SIGKILL to the node's containerd and kubelet; its
    /// pods' shims and containers keep running.
    pub fn kill_node_daemons(&self, node: &RealNode) {
        self.cp(&["node-stop", &self.dir.to_string_lossy(), &node.name, "--kill"]);
    }

    /// `cp.sh node-start DIR NODE`: the node's containerd and kubelet again, as they were.
    pub fn restart_node_daemons(&self, node: &RealNode) {
        self.cp(&["node-start", &self.dir.to_string_lossy(), &node.name]);
    }

    /// `ctr -n k8s.io ARGS…` against the node's containerd, asserting success; its stdout.
    pub fn ctr(&self, node: &RealNode, args: &[&str]) -> String {
        let out = Command::new(self.info.bin_dir.join("ctr"))
            .args(["--address", &node.containerd_socket, "--namespace", "k8s.io"])
            .args(args)
            .output()
            .expect("run ctr");
        assert!(out.status.success(), "ctr {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn cp(&self, args: &[&str]) {
        let out = Command::new(cp_script()).args(args).stdin(Stdio::null()).output().expect("run cp.sh");
        assert!(out.status.success(), "cp.sh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// `cp.sh kubectl DIR args…` started in the background (its output inherited).
    pub fn kubectl_spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(cp_script())
            .arg("kubectl")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("run kubectl")
    }

    /// `cp.sh kubectl DIR args…`, asserting success; its stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new(cp_script()).arg("kubectl").arg(&self.dir).args(args).output().expect("run kubectl");
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The cargo profile of the binaries the images hold: this test's own.
fn image_profile() -> &'static str {
    if cfg!(debug_assertions) { "dev" } else { "release" }
}

/// A binary of the workspace, as the images hold it (`scripts/images.sh`, `image_profile`).
pub fn image_bin(name: &str) -> PathBuf {
    let dir = if image_profile() == "dev" { "debug" } else { "release" };
    target_dir().join(dir).join(name)
}

fn start(real: usize) -> Result<PathBuf, String> {
    let dir = tempfile::Builder::new()
        .prefix("gamezone-e2e-cp-")
        .tempdir()
        .map_err(|e| format!("cannot create a directory for the control plane: {e}"))?
        // `cp.sh down`, run by the watchdog when this process exits, removes it.
        .keep();
    let out = Command::new(cp_script())
        .arg("up")
        .arg(&dir)
        .args(["--nodes", "1", "--real-nodes", &real.to_string()])
        .args(["--watch-pid", &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cp.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cp.sh up {} --nodes 1 --real-nodes {real}` failed ({}); messages above, logs in {}/logs",
            dir.display(),
            out.status,
            dir.display()
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(PathBuf::from(stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim()))
}

/// A fresh namespace. [`Ns::finish`] deletes its zones while the operator still runs (their
/// finalizers free the ports), then the namespace; dropped unfinished (a failed test), it strips
/// the zones' finalizers so the namespace still goes. `GAMEZONE_KEEP_NAMESPACES` keeps it.
pub struct Ns {
    pub client: Client,
    pub name: String,
    kubeconfig: PathBuf,
    finished: bool,
}

impl Ns {
    pub async fn new(cluster: &Cluster, prefix: &str) -> Ns {
        let client = cluster.client().await;
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(name.clone()), ..ObjectMeta::default() },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
        wait_for(&format!("ServiceAccount {name}/default"), Duration::from_secs(30), || async {
            accounts.get_opt("default").await.ok().flatten()
        })
        .await;
        Ns { client, name, kubeconfig: cluster.kubeconfig.clone(), finished: false }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Deletes the zones and waits until the operator has removed them, then the namespace.
    pub async fn finish(mut self) {
        self.finished = true;
        if keep() {
            return;
        }
        let zones: Api<GameZone> = self.api();
        let _ = zones.delete_collection(&DeleteParams::background(), &ListParams::default()).await;
        wait_for(&format!("the zones of {} deleted by the operator", self.name), Duration::from_secs(60), || async {
            zones.list(&ListParams::default()).await.ok().filter(|l| l.items.is_empty())
        })
        .await;
        let _ = Api::<Namespace>::all(self.client.clone()).delete(&self.name, &DeleteParams::background()).await;
    }
}

fn keep() -> bool {
    std::env::var_os(crate::common::KEEP_NAMESPACES_ENV).is_some()
}

impl Drop for Ns {
    fn drop(&mut self) {
        if self.finished || keep() {
            return;
        }
        // Drop cannot await, and the test's runtime may be shutting down.
        let (kubeconfig, name) = (self.kubeconfig.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async {
                let client = client_for(&kubeconfig).await;
                let zones: Api<GameZone> = Api::namespaced(client.clone(), &name);
                let unfinalize = Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}}));
                for z in zones.list(&ListParams::default()).await.map(|l| l.items).unwrap_or_default() {
                    let _ = zones.patch(&z.name_any(), &PatchParams::default(), &unfinalize).await;
                }
                let _ = Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()).await;
            });
        })
        .join();
    }
}

/// `nodeSelector` and `tolerations` that put a pod on a real node, as JSON for a service spec.
pub fn on_real_node() -> serde_json::Value {
    serde_json::json!({
        "nodeSelector": {NODE_KIND: "real"},
        "tolerations": [{"key": NODE_KIND, "operator": "Equal", "value": "real", "effect": "NoSchedule"}]
    })
}
