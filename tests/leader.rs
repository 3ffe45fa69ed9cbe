//! Two operator replicas on one Lease never act at once, as the API server sees it: its audit
//! log (`tests/common/audit.rs`) records every write with the replica's user agent
//! `gamezone/<version> (<identity>)`. And `/readyz` of a leader, a follower and a replica that
//! has not started.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::audit;
use gamezone::api::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::{WAIT, free_port, http_get, install_crds, wait_ready};

const LEASE: &str = "gamezone-operator";
/// Short terms, so a takeover takes seconds: lease 6 s, renew deadline 4 s, retry 1 s.
const TIMING: [&str; 6] = ["--lease-duration", "6", "--lease-renew-deadline", "4", "--lease-retry-period", "1"];
const RENEW_DEADLINE: Duration = Duration::from_secs(4);

/// One operator replica with `--leader-elect`, its own identity and HTTP port; killed on drop.
struct Replica {
    child: Child,
    identity: String,
    port: u16,
    log: PathBuf,
}

impl Replica {
    fn start(kubeconfig: &Path, namespace: &str, name: &str) -> Replica {
        // Unique across runs sharing one control plane, so audit entries are this test's own.
        let identity = format!("{name}-{namespace}");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("gamezone-{identity}-{}.log", std::process::id()));
        let out = std::fs::File::create(&log).expect("replica log file");
        let child = Command::new(env!("CARGO_BIN_EXE_gamezone"))
            .args(["run", "--namespace", namespace, "--log-format", "json", "--leader-elect"])
            .args(["--lease-namespace", namespace, "--identity", &identity])
            .args(TIMING)
            .args(["--http-addr", &format!("127.0.0.1:{port}")])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .env_remove("POD_NAME")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start the gamezone operator");
        Replica { child, identity, port, log }
    }

    /// What its user agent carries.
    fn agent(&self) -> String {
        format!("({})", self.identity)
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {signal} {} failed", self.child.id());
    }

    fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.port, "/readyz")
    }

    async fn wait_ready(&self) {
        common::wait_for(&format!("{} /readyz 200", self.identity), WAIT, || async {
            match self.readyz() {
                Some((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(started.elapsed() < within, "{} still runs after {within:?}\n{}", self.identity, self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- {} log tail ({}) ---", self.identity, self.log.display());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases.get_opt(LEASE).await.ok().flatten()?.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn wait_holder(leases: &Api<Lease>, who: &str) {
    common::wait_for(&format!("the Lease held by {who}"), WAIT, || async {
        match holder(leases).await {
            Some(h) if h == who => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

fn zone(servers: i64) -> GameZone {
    gamezone_api::fixture::zone("zone1").servers(servers).build()
}

/// Successful writes of `agent` received at or after `since`, one line each.
fn writes_since(kubeconfig: &Path, agent: &str, since: SystemTime) -> Vec<String> {
    audit::writes(kubeconfig)
        .into_iter()
        .filter(|w| w.by_agent(agent) && w.succeeded() && w.received_since(since))
        .map(|w| w.describe())
        .collect()
}

#[tokio::test]
async fn a_frozen_leader_is_replaced_and_makes_no_write_after_its_renew_deadline() {
    let ns = common::namespace("leader-freeze").await;
    install_crds(&ns.client).await;
    let leases: Api<Lease> = ns.api();
    let zones: Api<GameZone> = ns.api();
    let a = Replica::start(ns.kubeconfig(), &ns.name, "replica-a");
    wait_holder(&leases, &a.identity).await;
    let b = Replica::start(ns.kubeconfig(), &ns.name, "replica-b");
    zones.create(&PostParams::default(), &zone(2)).await.unwrap();
    wait_ready(&zones, "zone1").await;
    // Both serve: the leader has loaded its caches, the follower has seen the Lease held.
    a.wait_ready().await;
    b.wait_ready().await;
    // The audit log does tell them apart: A wrote the zone's objects, B nothing but Lease reads.
    let a_before = audit::writes_by(ns.kubeconfig(), &ns.name, &a.agent());
    assert!(
        a_before.iter().any(|w| w.object_ref.resource == "gameservers" && w.succeeded()),
        "no GameServer write by A in the audit log: {:?}",
        a_before.iter().map(|w| w.describe()).collect::<Vec<_>>()
    );
    assert!(writes_since(ns.kubeconfig(), &b.agent(), SystemTime::UNIX_EPOCH).is_empty(), "the follower wrote");

    // Freeze A past its lease. Its tasks, its renewer included, stop mid-term.
    let frozen = SystemTime::now();
    a.signal("-STOP");
    wait_holder(&leases, &b.identity).await;
    let took_over = SystemTime::now();
    // B's first write is its takeover, and it comes only after A's term ended.
    let b_writes: Vec<audit::Write> =
        audit::writes(ns.kubeconfig()).into_iter().filter(|w| w.by_agent(&b.agent()) && w.succeeded()).collect();
    let first = b_writes.first().expect("B's takeover is in the audit log");
    assert_eq!(first.object_ref.resource, "leases", "B wrote before taking the Lease: {}", first.describe());
    assert!(
        first.received_since(frozen + RENEW_DEADLINE),
        "B took the Lease at {} while A could still write (frozen at {:?})",
        first.request_received_timestamp,
        frozen
    );

    // B reconciles: a change converges while A is still frozen, which leaves A work to do.
    let patch = json!({"spec": {"services": [{"type": "game", "id": 1, "endId": 3}]}});
    zones.patch("zone1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let z = wait_ready(&zones, "zone1").await;
    assert_eq!(z.status.unwrap().desired_servers, 3);
    assert!(
        writes_since(ns.kubeconfig(), &b.agent(), took_over).iter().any(|w| w.contains("gameservers")),
        "B reconciled without writing a GameServer?"
    );

    // A wakes with a stale term and pending work: it exits and sends nothing.
    let mut a = a;
    a.signal("-CONT");
    let status = a.wait_exit(Duration::from_secs(20)).await;
    assert!(!status.success(), "A exited with {status} after losing its term");
    assert!(a.log().contains("no longer leading"), "A exited for another reason:\n{}", a.log());
    // Any request still on the wire has completed (or been dropped) by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = writes_since(ns.kubeconfig(), &a.agent(), frozen + RENEW_DEADLINE);
    assert!(late.is_empty(), "A wrote after its term ended:\n{}", late.join("\n"));
    let late_attempts: Vec<String> = audit::writes(ns.kubeconfig())
        .into_iter()
        .filter(|w| w.by_agent(&a.agent()) && w.received_since(frozen + RENEW_DEADLINE))
        .map(|w| w.describe())
        .collect();
    assert!(late_attempts.is_empty(), "A sent writes after its term ended:\n{}", late_attempts.join("\n"));
    assert_eq!(holder(&leases).await.as_deref(), Some(b.identity.as_str()));
    assert_eq!(b.readyz().map(|r| r.0), Some(200));
    drop(b);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_leader_whose_lease_is_deleted_or_taken_exits_without_writing_it_back() {
    let ns = common::namespace("leader-lost").await;
    install_crds(&ns.client).await;
    let leases: Api<Lease> = ns.api();

    // Deleted: the leader does not create it again.
    let mut a = Replica::start(ns.kubeconfig(), &ns.name, "replica-a");
    wait_holder(&leases, &a.identity).await;
    a.wait_ready().await;
    let deleted = SystemTime::now();
    leases.delete(LEASE, &DeleteParams::default()).await.unwrap();
    let status = a.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "A exited with {status}");
    assert!(a.log().contains("the Lease was deleted"), "{}", a.log());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = writes_since(ns.kubeconfig(), &a.agent(), deleted);
    assert!(late.is_empty(), "A wrote after its Lease was deleted:\n{}", late.join("\n"));
    assert!(leases.get_opt(LEASE).await.unwrap().is_none(), "the deleted Lease came back");

    // Taken by someone else: the leader does not take it back.
    let mut c = Replica::start(ns.kubeconfig(), &ns.name, "replica-c");
    wait_holder(&leases, &c.identity).await;
    let taken = SystemTime::now();
    let take = json!({"spec": {"holderIdentity": "someone-else"}});
    leases.patch(LEASE, &PatchParams::default(), &Patch::Merge(&take)).await.unwrap();
    let status = c.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "C exited with {status}");
    assert!(c.log().contains("someone-else"), "{}", c.log());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = writes_since(ns.kubeconfig(), &c.agent(), taken);
    assert!(late.is_empty(), "C wrote after its Lease was taken:\n{}", late.join("\n"));
    assert_eq!(holder(&leases).await.as_deref(), Some("someone-else"));
    ns.cleanup().await;
}

#[tokio::test]
async fn a_replica_that_cannot_reach_the_api_server_is_alive_but_not_ready() {
    let ns = common::namespace("leader-unready").await;
    // Same credentials, but a loopback port where nothing listens.
    let mut kubeconfig: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(ns.kubeconfig()).unwrap()).unwrap();
    kubeconfig["clusters"][0]["cluster"]["server"] = format!("https://127.0.0.1:{}", free_port()).into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    let r = Replica::start(&path, &ns.name, "replica-unreachable");
    let health = common::wait_for("/healthz", WAIT, || async { http_get(r.port, "/healthz").ok_or("no answer") }).await;
    assert_eq!(health.0, 200);
    // A few retry periods: it keeps trying the Lease and stays unready.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, why) = r.readyz().expect("/readyz answers");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("waiting for the Lease"), "{why}");
    drop(r);
    ns.cleanup().await;
}

#[tokio::test]
async fn a_leader_stopped_by_sigterm_hands_the_lease_over_at_once() {
    let ns = common::namespace("leader-handover").await;
    install_crds(&ns.client).await;
    let leases: Api<Lease> = ns.api();
    let mut a = Replica::start(ns.kubeconfig(), &ns.name, "replica-a");
    wait_holder(&leases, &a.identity).await;
    a.wait_ready().await;
    let b = Replica::start(ns.kubeconfig(), &ns.name, "replica-b");
    b.wait_ready().await;
    let stopped = Instant::now();
    a.signal("-TERM");
    let status = a.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "A exited with {status} on SIGTERM\n{}", a.log());
    wait_holder(&leases, &b.identity).await;
    // Without the Lease given back, B would wait a whole lease duration (6 s) of silence.
    assert!(stopped.elapsed() < Duration::from_secs(5), "B took over after {:?}", stopped.elapsed());
    ns.cleanup().await;
}
