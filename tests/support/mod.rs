//! Helpers for tests that run the operator: the operator process, CRDs, waiting on zones.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gamezone::api::*;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};

use crate::common;

pub const WAIT: Duration = Duration::from_secs(60);

/// The operator binary, running against one namespace; killed on drop.
pub struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    pub fn start(kubeconfig: &Path, namespace: &str) -> Operator {
        Self::start_with(kubeconfig, namespace, &[])
    }

    /// Starts the operator with extra `run` flags.
    pub fn start_with(kubeconfig: &Path, namespace: &str, extra: &[&str]) -> Operator {
        Self::start_program(Path::new(env!("CARGO_BIN_EXE_gamezone")), kubeconfig, namespace, extra)
    }

    /// Starts `program`, an operator binary (this build's, or an earlier commit's), with extra
    /// `run` flags.
    pub fn start_program(program: &Path, kubeconfig: &Path, namespace: &str, extra: &[&str]) -> Operator {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let log = std::env::temp_dir().join(format!("gamezone-operator-{namespace}-{}-{n}.log", std::process::id()));
        let out = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("operator log file");
        let child = Command::new(program)
            .args(["run", "--namespace", namespace, "--log-format", "json"])
            .args(if extra.contains(&"--http-addr") { &[][..] } else { &["--http-addr", "127.0.0.1:0"][..] })
            // The tests' git and S3 servers are on loopback, which the operator refuses by
            // default; a test of that refusal gives its own --allow-egress.
            .args(if extra.contains(&"--allow-egress") { &[][..] } else { &["--allow-egress", "127.0.0.0/8"][..] })
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the gamezone operator");
        Operator { child, log }
    }

    /// What the operator logged so far (JSON lines).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crashed or evicted operator would go.
    /// The operator's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- operator log tail ({}) ---", self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds() {
        api.patch(&crd.name_any(), &PatchParams::apply("gamezone-tests").force(), &Patch::Apply(&crd))
            .await
            .expect("apply CRD");
    }
    for crd in crds() {
        common::wait_for(&format!("CRD {} established", crd.name_any()), WAIT, || async {
            let live = api.get(&crd.name_any()).await.map_err(|e| e.to_string())?;
            let ok = live
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
            if ok { Ok(()) } else { Err("not established".to_string()) }
        })
        .await;
    }
}

pub async fn wait_ready(api: &Api<GameZone>, name: &str) -> GameZone {
    wait_ready_within(api, name, WAIT).await
}

/// As [`wait_ready`], for a zone that may take longer than [`WAIT`] (hundreds of servers).
pub async fn wait_ready_within(api: &Api<GameZone>, name: &str, timeout: Duration) -> GameZone {
    common::wait_for(&format!("GameZone {name} Ready at its current generation"), timeout, || async {
        let z = api.get(name).await.map_err(|e| e.to_string())?;
        let status = z.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        if ready && status.observed_generation == z.metadata.generation {
            Ok(z)
        } else {
            Err(format!(
                "phase {:?}, conditions {:?}",
                status.phase,
                status
                    .conditions
                    .iter()
                    .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                    .collect::<Vec<_>>()
            ))
        }
    })
    .await
}

/// Sets a gate condition as the game would (its own field manager on the status).
pub async fn set_gate(servers: &Api<GameServer>, name: &str, gate: &str, ok: bool) {
    let body = serde_json::json!({
        "apiVersion": "gamezone.dev/v1alpha1", "kind": "GameServer",
        "status": {"conditions": [{
            "type": gate, "status": if ok { "True" } else { "False" }, "reason": "Game",
            "message": "set by the game", "lastTransitionTime": "2026-01-01T00:00:00Z"
        }]}
    });
    servers
        .patch_status(name, &PatchParams::apply("test-game").force(), &Patch::Apply(body))
        .await
        .unwrap_or_else(|e| panic!("set {gate} on {name}: {e}"));
}

/// Sets the deletable gate `NoPlayers` of each server `(name, players left)` as its game would,
/// a few at a time.
pub async fn set_gates(servers: &Api<GameServer>, gates: Vec<(String, bool)>) {
    use futures::StreamExt;
    futures::stream::iter(gates)
        .for_each_concurrent(16, |(name, left)| async move { set_gate(servers, &name, "NoPlayers", left).await })
        .await;
}

/// The label of the big simulated nodes ([`pool_node`]) a test's or bench's zones run on.
pub const POOL: (&str, &str) = ("test.gamezone.dev/pool", "big");

/// A simulated node `big-<i>` of the [`POOL`], with room for hundreds of servers (a KWOK node
/// of `cp.sh` has 110); KWOK runs its pods.
pub fn pool_node(i: u8) -> k8s_openapi::api::core::v1::Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": format!("big-{i}"),
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"kubernetes.io/hostname": format!("big-{i}"), "type": "kwok", POOL.0: POOL.1}
        },
        "status": {
            "addresses": [{"type": "InternalIP", "address": format!("10.0.2.{i}")}],
            "capacity": {"cpu": "512", "memory": "2Ti", "pods": "256"},
            "allocatable": {"cpu": "512", "memory": "2Ti", "pods": "256"}
        }
    }))
    .expect("a Node")
}

pub fn selector(zone: &str) -> ListParams {
    ListParams::default().labels(&format!("{ZONE_LABEL}={zone}"))
}

pub async fn names<K>(api: &Api<K>, zone: &str) -> Vec<String>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut n: Vec<String> = api.list(&selector(zone)).await.unwrap().items.iter().map(|o| o.name_any()).collect();
    n.sort();
    n
}

pub async fn pod_uids(pods: &Api<Pod>, zone: &str) -> BTreeMap<String, String> {
    pods.list(&selector(zone).labels(&format!("{ZONE_LABEL}={zone},{SERVER_LABEL}")))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| (p.name_any(), p.uid().unwrap()))
        .collect()
}

pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let dir = kubeconfig.parent().expect("kubeconfig has a folder");
    let out = Command::new(common::cp_script()).arg("kubectl").arg(dir).args(args).output().expect("run kubectl");
    assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()))
}
