//! Live edits on a real node, end to end: the zone's Samba pod serves its edits claim, a tester
//! changes a config file with `smbclient`, every server (the example game server) answers
//! with the new value within seconds, a restarted pod keeps it, `gamezone edits reset` brings the
//! pinned value back and `gamezone edits save` pushes a commit of exactly the edits.
//!
//! The edits claim is a hostPath PersistentVolume of a StorageClass the test makes (one node,
//! so ReadWriteMany holds). Needs Debian's `smbclient` on the host.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use gamezone::api::*;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use crate::{ONE_AT_A_TIME, cluster, common, servers, support};
use cluster::{Cluster, GAME_SERVER_IMAGE, Ns, OPERATOR_IMAGE, on_real_node};
use common::wait_for;
use servers::{GitDaemon, Registry, tcp_request};
use support::{Operator, install_crds};

/// The edits share's image (`scripts/images.sh`).
const SAMBA_IMAGE: &str = "ghcr.io/gamezone-dev/gamezone-samba:0.1.0";
const TIMEOUT: Duration = Duration::from_secs(90);
const USER: &str = "tester";
const PASSWORD: &str = "e2e-Share-pw1";

/// The motd every server answers with, once all of them answer.
async fn motds(ns: &Ns, zone: &str) -> Result<Vec<String>, String> {
    let servers: Api<GameServer> = ns.api();
    let list = servers.list(&support::selector(zone)).await.map_err(|e| e.to_string())?.items;
    let mut out = Vec::new();
    for s in &list {
        let st = s.status.as_ref().ok_or("no status")?;
        // Where a client reaches it: the node and host port when it has one, else the pod.
        let port = st.ports.iter().find(|p| p.name == "game").ok_or("no port in status")?;
        let addr = match port.host_port {
            Some(_) => st.node_address.clone(),
            None => st.address.clone(),
        }
        .ok_or("no address")?;
        let answer = tcp_request(&addr, u16::try_from(port.port).unwrap(), "hello")?;
        out.push(answer["config"]["value"]["motd"].as_str().unwrap_or("?").to_string());
    }
    if out.len() == 2 { Ok(out) } else { Err(format!("{} of 2 servers answer", out.len())) }
}

async fn wait_motd(ns: &Ns, zone: &str, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    wait_for(&format!("every server of {zone} to answer motd {want:?}"), within, || async {
        let got = motds(ns, zone).await?;
        if got.iter().all(|m| m == want) { Ok(()) } else { Err(format!("motds {got:?}")) }
    })
    .await;
    start.elapsed()
}

fn smbclient(ip: &str, commands: &str) -> String {
    let out = Command::new("smbclient")
        .arg(format!("//{ip}/edits"))
        .args(["-p", "445", "-U", &format!("{USER}%{PASSWORD}"), "-c", commands])
        .output()
        .expect("run smbclient (apt-get install smbclient)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && !text.contains("NT_STATUS_"), "smbclient {commands:?}: {text}");
    text
}

fn gamezone(cluster: &Cluster, ns: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_gamezone"))
        .arg("edits")
        .args(args)
        .args(["-n", ns, "--kubeconfig"])
        .arg(&cluster.kubeconfig)
        .output()
        .expect("run gamezone edits");
    assert!(out.status.success(), "gamezone edits {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A StorageClass without a provisioner and one hostPath volume of it for the zone's claim.
fn hostpath_volume(cluster: &Cluster, ns: &str, claim: &str, dir: &Path) -> String {
    let class = format!("e2e-edits-{ns}");
    let docs = json!([
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "metadata": {"name": class},
         "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "Immediate"},
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": class},
         "spec": {"storageClassName": class, "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                  "persistentVolumeReclaimPolicy": "Delete",
                  "claimRef": {"namespace": ns, "name": claim},
                  "hostPath": {"path": dir.to_str().unwrap(), "type": "DirectoryOrCreate"}}}
    ]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), format!("{}\n---\n{}\n", docs[0], docs[1])).unwrap();
    cluster.kubectl(&["apply", "-f", file.path().to_str().unwrap()]);
    class
}

#[tokio::test]
async fn an_edit_over_smb_reaches_every_server_survives_a_restart_and_is_reset_and_saved() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::get();
    let host = &cluster.info.host_address;
    let work = tempfile::tempdir().unwrap();
    let git = GitDaemon::start(&work.path().join("git"), host);
    let repo = git.repo("config");
    repo.write("config/server.json", "{\"motd\": \"pinned\"}\n").write("maps/a.txt", "map\n");
    repo.commit("config");
    // With an artifact registry: a zone with live edits copies its base layers from it.
    let registry = Registry::start(&work.path().join("registry"), host);
    let repository = registry.repository();

    let ns = Ns::new(cluster, "e2e-edits").await;
    install_crds(&ns.client).await;
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "share"},
        "stringData": {"username": USER, "password": PASSWORD}
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let volume_dir = work.path().join("edits-volume");
    let class = hostpath_volume(cluster, &ns.name, "ed-edits", &volume_dir);
    let _cleanup = ClusterObjects(cluster, class.clone());
    let _op = Operator::start_with(
        &cluster.kubeconfig,
        &ns.name,
        &[
            "--init-image",
            OPERATOR_IMAGE,
            "--samba-image",
            SAMBA_IMAGE,
            "--port-range",
            "7500-7599",
            "--artifact-registry",
            &repository,
            "--artifact-registry-plain-http",
        ],
    );

    let mut service = on_real_node();
    service["type"] = json!("game");
    service["id"] = json!(1);
    service["endId"] = json!(2);
    service["ports"] = json!([{"name": "game", "containerPort": 7777}]);
    let z = gamezone_api::fixture::zone("ed")
        .spec("zoneId", json!(401))
        .spec("defaultImage", json!(GAME_SERVER_IMAGE))
        .services(json!([service]))
        .spec("artifacts", json!([{"path": "/app/artifacts", "git": {"url": git.url("config"), "branch": "main"}}]))
        .spec(
            "edits",
            json!({"secretRef": {"name": "share"}, "storageClassName": class, "expose": {"type": "NodePort"}}),
        )
        .build();
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &z).await.unwrap();

    // The share: its pod Ready on the real node.
    let pods: Api<Pod> = ns.api();
    let share_pod = wait_for("the edits share's pod Ready", TIMEOUT, || async {
        let list =
            pods.list(&ListParams::default().labels("gamezone.dev/edits=ed")).await.map_err(|e| e.to_string())?;
        let p = list.items.into_iter().next().ok_or("no edits pod yet")?;
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready { Ok(p) } else { Err(format!("{:?}", p.status.map(|s| s.container_statuses))) }
    })
    .await;
    let share_ip = share_pod.status.as_ref().unwrap().pod_ip.clone().unwrap();
    wait_motd(&ns, "ed", "pinned", TIMEOUT).await;
    for name in ["ed-game-1", "ed-game-2"] {
        let pod = pods.get(name).await.unwrap();
        let spec = pod.spec.unwrap();
        let inits = spec.init_containers.unwrap_or_default();
        let names: Vec<&str> = inits.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["artifacts", "artifacts-edits"], "{name} runs the edits sidecar");
        // The copy path: the tree is written, so no image volume; the base from the registry.
        assert!(!spec.volumes.unwrap_or_default().iter().any(|v| v.image.is_some()), "{name} mounts no image");
        for c in &inits {
            assert!(c.args.iter().flatten().any(|a| a == "--registry"), "{name}'s {} copies from the registry", c.name);
        }
    }
    let fetches = git.fetches();
    assert!(fetches <= 2, "the operator's ref listing and the pack, not each pod: {fetches} fetches");

    // A tester edits the config through the share.
    let edited = work.path().join("server.json");
    std::fs::write(&edited, "{\"motd\": \"edited over smb\"}\n").unwrap();
    smbclient(&share_ip, &format!("mkdir config; put {} config/server.json", edited.display()));
    let took = wait_motd(&ns, "ed", "edited over smb", Duration::from_secs(20)).await;
    eprintln!("edit visible on every server after {:.1} s", took.as_secs_f64());

    // The zone's status and an Event tell it.
    let st = wait_for("status.edits with both servers on the share's edits", Duration::from_secs(30), || async {
        let z = zones.get("ed").await.map_err(|e| e.to_string())?;
        let e = z.status.and_then(|s| s.edits).ok_or("no status.edits")?;
        if e.applied_servers == 2 && e.files == 1 { Ok(e) } else { Err(format!("{e:?}")) }
    })
    .await;
    assert_eq!(st.changed, 1, "{st:?}");
    assert!(st.last_applied.is_some() && st.last_refused.is_none(), "{st:?}");
    assert!(st.share.as_deref().unwrap().ends_with(r"\edits"), "{st:?}");
    let events: Api<k8s_openapi::api::events::v1::Event> = ns.api();
    wait_for("an EditsApplied Event", Duration::from_secs(20), || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| e.reason.as_deref() == Some("EditsApplied"))
    })
    .await;
    let status = gamezone(cluster, &ns.name, &["status", "ed"]);
    assert!(status.contains("config/server.json"), "{status}");

    // A restarted pod gets the edits back from its init container.
    let uid = pods.get("ed-game-1").await.unwrap().uid();
    pods.delete("ed-game-1", &DeleteParams::default()).await.unwrap();
    wait_for("ed-game-1 back with a new pod", TIMEOUT, || async {
        let p = pods.get_opt("ed-game-1").await.ok()??;
        let ready = p.status.as_ref()?.conditions.as_ref()?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        (p.uid() != uid && ready).then_some(())
    })
    .await;
    wait_motd(&ns, "ed", "edited over smb", TIMEOUT).await;

    // Saved: one commit whose tree is exactly the edits.
    let saved = work.path().join("saved.git");
    servers::run(Command::new("git").args(["init", "-q", "--bare"]).arg(&saved));
    let out = gamezone(
        cluster,
        &ns.name,
        &["save", "ed", "--git-url", saved.to_str().unwrap(), "--branch", "tester-fix", "-m", "fix motd"],
    );
    let commit = out.trim().to_string();
    let files = servers::git(&saved, &["ls-tree", "-r", "--name-only", &commit]);
    assert_eq!(files.trim(), "config/server.json", "the commit holds the edits only");
    let blob = servers::git(&saved, &["show", &format!("{commit}:config/server.json")]);
    assert_eq!(blob.trim_end(), "{\"motd\": \"edited over smb\"}", "the edited file as the tester saved it");
    assert_eq!(servers::git(&saved, &["rev-parse", "refs/heads/tester-fix"]).trim(), commit);

    // Reset: the pinned value again, everywhere.
    gamezone(cluster, &ns.name, &["reset", "ed"]);
    let took = wait_motd(&ns, "ed", "pinned", Duration::from_secs(20)).await;
    eprintln!("reset visible on every server after {:.1} s", took.as_secs_f64());
    assert!(std::fs::read_dir(volume_dir.join("share")).unwrap().next().is_none(), "the share is empty");
    ns.finish().await;
}

/// Removes the test's StorageClass and PersistentVolume on drop.
struct ClusterObjects<'a>(&'a Cluster, String);

impl Drop for ClusterObjects<'_> {
    fn drop(&mut self) {
        for kind in ["persistentvolume", "storageclass"] {
            let _ = Command::new(common::cp_script())
                .arg("kubectl")
                .arg(&self.0.dir)
                .args(["delete", kind, &self.1, "--ignore-not-found", "--wait=false"])
                .output();
        }
    }
}
