//! OpenKruise Kruise-Game as a benchmark peer: its managers started and stopped by
//! `tests/controlplane/peers.sh` on a bench's control plane, its GameServerSets made, its
//! GameServers counted Ready by a watch (`status.currentState`, which follows pod Ready), and its
//! objects deleted until gone.
#![allow(dead_code)] // each bench uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

/// The managers' names in the control plane's process list.
pub const MANAGERS: [&str; 2] = ["kruise-manager", "kruise-game-manager"];

/// Client rate limits the raised runs give both managers: what our operator has (its client
/// sets none), taken as the scheduler's in `cp.sh`.
pub const RAISED: (u32, u32) = (5000, 10000);

/// The peers' script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/peers.sh")
}

/// Whether the peers are built; `Err` says how to build them.
pub fn built() -> Result<(), String> {
    let out = Command::new(script()).arg("bin").stderr(Stdio::inherit()).output();
    let bin = match out {
        Ok(o) if o.status.success() => PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()),
        other => return Err(format!("`{} bin` failed: {other:?}", script().display())),
    };
    let missing: Vec<&str> = MANAGERS.iter().copied().filter(|m| !bin.join(m).is_file()).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} not built in {} (build them, about 11 minutes cold: {} build)",
            missing.join(" and "),
            bin.display(),
            script().display()
        ))
    }
}

/// Runs `peers.sh ARGS`, panicking with its exit status on failure (its log is on stderr).
fn run(args: &[&str]) {
    let status = Command::new(script()).args(args).stdin(Stdio::null()).stdout(Stdio::null()).status();
    assert!(matches!(status, Ok(s) if s.success()), "`peers.sh {}` failed: {status:?}", args.join(" "));
}

/// The peers' managers on one control plane, running with one set of client limits at a time.
pub struct Peers {
    /// The control plane's directory (`cp.sh up DIR`).
    dir: PathBuf,
    /// The limits the running managers have: `None` when stopped, `Some(None)` for their
    /// shipped defaults.
    running: Option<Option<(u32, u32)>>,
}

impl Peers {
    /// The peers of the control plane whose kubeconfig is `kubeconfig` (in its directory).
    pub fn new(kubeconfig: &Path) -> Peers {
        Peers { dir: kubeconfig.parent().expect("a kubeconfig in a control plane's directory").into(), running: None }
    }

    /// Makes sure the managers run with `limits` (`None`: their defaults), restarting them if
    /// they run with others; returns whether it (re)started them.
    pub fn ensure(&mut self, limits: Option<(u32, u32)>) -> bool {
        if self.running == Some(limits) {
            return false;
        }
        self.stop();
        let dir = self.dir.to_string_lossy().into_owned();
        match limits {
            None => run(&["up", &dir]),
            Some((qps, burst)) => run(&["up", &dir, "--qps", &qps.to_string(), "--burst", &burst.to_string()]),
        }
        self.running = Some(limits);
        true
    }

    /// Stops the managers, if they run.
    pub fn stop(&mut self) {
        if self.running.take().is_some() {
            run(&["down", &self.dir.to_string_lossy()]);
        }
    }

    /// Resolves when a running manager has exited, with what to tell the user: with a webhook of
    /// failurePolicy Fail gone, the peer's pods are refused and its phase would never end.
    pub async fn exited(&self) -> String {
        let pids = self.pids();
        loop {
            for (name, pid) in &pids {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
                if matches!(state, None | Some("Z")) {
                    let log = self.dir.join("logs").join(format!("{name}.log"));
                    return format!("{name} (pid {pid}) exited; its log is {}", log.display());
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// The managers' pids, as the control plane's process list has them now.
    pub fn pids(&self) -> Vec<(String, u32)> {
        std::fs::read_to_string(self.dir.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (name, pid) = l.split_once(' ')?;
                if !MANAGERS.contains(&name) {
                    return None;
                }
                Some((name.to_string(), pid.trim().parse().ok()?))
            })
            .collect()
    }
}

fn gvk(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("game.kruise.io", "v1alpha1", kind))
}

/// Kruise-Game's GameServerSets in `ns`.
fn sets(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &gvk("GameServerSet"))
}

/// Kruise-Game's GameServers in `ns`.
fn servers(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &gvk("GameServer"))
}

/// A GameServerSet of `replicas` servers of one container, its port `7777` given a host port
/// from Kruise-Game's HostPort network (the counterpart of GameZone's Dynamic policy).
pub fn game_server_set(name: &str, replicas: usize) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "game.kruise.io/v1alpha1",
        "kind": "GameServerSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "network": {
                "networkType": "Kubernetes-HostPort",
                "networkConf": [{"name": "ContainerPorts", "value": "game:7777/TCP"}]
            },
            "gameServerTemplate": {
                "spec": {"containers": [{"name": "game", "image": "svc:1", "ports": [{"name": "client", "containerPort": 7777}]}]}
            }
        }
    }))
    .expect("a GameServerSet")
}

/// Creates the GameServerSets `names` of `replicas` servers each in `ns`, 32 at a time.
pub async fn create_sets(client: &Client, ns: &str, names: &[String], replicas: usize) {
    let api = sets(client, ns);
    futures::stream::iter(names)
        .map(|name| {
            let (api, set) = (api.clone(), game_server_set(name, replicas));
            async move { api.create(&PostParams::default(), &set).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_or_else(|e| panic!("creating Kruise-Game GameServerSets in {ns}: {e}"));
}

/// Whether a Kruise-Game GameServer says Ready: its controller sets `currentState` once the pod
/// is Ready.
fn server_ready(gs: &DynamicObject) -> bool {
    gs.data.pointer("/status/currentState").and_then(|s| s.as_str()) == Some("Ready")
}

/// How many Kruise-Game GameServers in `ns` say Ready now.
pub async fn ready_now(client: &Client, ns: &str) -> usize {
    let list = servers(client, ns).list(&ListParams::default()).await;
    list.unwrap_or_else(|e| panic!("listing Kruise-Game GameServers in {ns}: {e}"))
        .items
        .iter()
        .filter(|g| server_ready(g))
        .count()
}

/// Waits, by a watch, until `want` Kruise-Game GameServers in `ns` are Ready; returns the time
/// from `start`.
pub async fn until_ready(client: &Client, ns: &str, want: usize, start: Instant) -> Duration {
    let mut seen = std::collections::HashSet::new();
    let mut events = std::pin::pin!(watcher(servers(client, ns), watcher::Config::default()).default_backoff());
    while let Some(event) = events.try_next().await.unwrap() {
        if let watcher::Event::Apply(gs) | watcher::Event::InitApply(gs) = event
            && server_ready(&gs)
        {
            seen.insert(gs.name_any());
            if seen.len() >= want {
                break;
            }
        }
    }
    start.elapsed()
}

/// Deletes the GameServerSets `names` in `ns` (32 at a time; the garbage collector takes their
/// Advanced StatefulSets and pods, and the pods' GameServers).
pub async fn delete_sets(client: &Client, ns: &str, names: &[String]) {
    let api = sets(client, ns);
    futures::stream::iter(names)
        .map(|name| {
            let api = api.clone();
            async move { api.delete(name, &DeleteParams::default()).await.map(|_| ()) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<_>>()
        .await
        .unwrap_or_else(|e| panic!("deleting Kruise-Game GameServerSets in {ns}: {e}"));
}

/// Whether `ns` holds no Kruise-Game GameServers and no pods.
pub async fn gone(client: &Client, ns: &str) -> bool {
    let lp = ListParams::default();
    let left = servers(client, ns).list_metadata(&lp).await.map(|l| l.items.len()).unwrap_or(1);
    let pods = Api::<Pod>::namespaced(client.clone(), ns).list_metadata(&lp).await.unwrap();
    left == 0 && pods.items.is_empty()
}
