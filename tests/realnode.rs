//! Real nodes beside the KWOK ones: `cp.sh up DIR --real-nodes N` starts a
//! kubelet and containerd per node, each in network and mount namespaces of
//! its own (see tests/controlplane/README.md). These tests start their own
//! control plane with one KWOK node and one real node, and check what a user
//! of such a node sees: real containers, real host ports, pod IPs reachable
//! from the host, peers found by their DNS names, and nothing left on the
//! machine afterwards.
//!
//! Run with `cargo test --test realnode` as root; the first run builds the
//! node binaries (kubelet, containerd, runc, CNI plugins) into the cache.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::json;

use common::{client_for, cp_script, wait_for};

/// Pod start on a real node includes image unpacking and the sandbox: more than KWOK needs.
const TIMEOUT: Duration = Duration::from_secs(90);
const IMAGE: &str = "gamezone.local/serve-file:1";
/// serve-file and the `resolve` test program (getaddrinfo, as any program in a pod).
const DNS_IMAGE: &str = "gamezone.local/dns-peer:1";
const REAL_TAINT: &str = "gamezone.dev/node-kind";

/// Each test starts a control plane with a real node; two at once would double
/// the load on a small machine and slow both.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `DIR/real-nodes.json`, written by `cp.sh up`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RealNodes {
    /// Where pods and node daemons reach the host's loopback services.
    host_address: String,
    slot: u32,
    bin_dir: PathBuf,
    /// The cluster DNS address in every pod's resolv.conf.
    #[serde(rename = "clusterDNS")]
    cluster_dns: String,
    /// Where the `resolve` test program is.
    dns_bin_dir: PathBuf,
    nodes: Vec<RealNode>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RealNode {
    name: String,
    #[serde(rename = "nodeIP")]
    node_ip: String,
    #[serde(rename = "podCIDR")]
    pod_cidr: String,
    netns: String,
    cgroup: String,
}

/// A control plane with one KWOK node (`node-1`) and one real node (`real-1`), stopped on drop.
struct RealCluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    info: RealNodes,
    stopped: bool,
}

impl RealCluster {
    fn start(dir: &Path) -> RealCluster {
        Self::start_with(dir, Stdio::inherit()).0
    }

    /// As [`RealCluster::start`], with `up`'s messages returned (and shown) instead of streamed.
    fn start_telling(dir: &Path) -> (RealCluster, String) {
        let (cluster, said) = Self::start_with(dir, Stdio::piped());
        eprint!("{said}");
        (cluster, said)
    }

    fn start_with(dir: &Path, stderr: Stdio) -> (RealCluster, String) {
        let output = Command::new(cp_script())
            .arg("up")
            .arg(dir)
            .args(["--nodes", "1", "--real-nodes", "1"])
            .args(["--watch-pid", &std::process::id().to_string()])
            .stdin(Stdio::null())
            .stderr(stderr)
            .output()
            .expect("cannot run cp.sh");
        let said = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "`cp.sh up {} --nodes 1 --real-nodes 1` failed ({}); logs in {}/logs; its messages (when not above):\n{said}",
            dir.display(),
            output.status,
            dir.display()
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let kubeconfig = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        let json = std::fs::read_to_string(dir.join("real-nodes.json")).unwrap_or_default();
        match serde_json::from_str::<RealNodes>(&json) {
            Ok(info) if info.nodes.len() == 1 => {
                (RealCluster { dir: dir.to_path_buf(), kubeconfig, info, stopped: false }, said)
            }
            other => {
                let _ = Command::new(cp_script()).arg("down").arg(dir).stdin(Stdio::null()).status();
                panic!("{}/real-nodes.json should describe one node: {other:?}: {json}", dir.display())
            }
        }
    }

    fn node(&self) -> &RealNode {
        &self.info.nodes[0]
    }

    async fn client(&self) -> Client {
        client_for(&self.kubeconfig).await
    }

    /// Builds the test image (cached by its inputs) and imports it into the real node.
    fn import_test_image(&self) {
        self.import_image(IMAGE, &[self.info.bin_dir.join("serve-file")]);
    }

    /// Builds image `name` of the binaries `bins` (in /usr/local/bin, the first
    /// one the entrypoint) and imports it into the real node.
    fn import_image(&self, name: &str, bins: &[PathBuf]) {
        let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/controlplane/images.sh");
        let mut build = Command::new(&images);
        build.args(["build", name]);
        for bin in bins {
            build.arg("--bin").arg(bin);
        }
        let entrypoint = Path::new("/usr/local/bin").join(bins[0].file_name().expect("binary name"));
        let built = build
            .arg("--entrypoint")
            .arg(entrypoint)
            .args(["--user", "65532"])
            .stderr(Stdio::inherit())
            .output()
            .expect("cannot run images.sh build");
        assert!(built.status.success(), "images.sh build failed: {built:?}");
        let archive = String::from_utf8_lossy(&built.stdout).trim().to_string();
        let imported = Command::new(&images).arg("import").arg(&self.dir).arg(&archive).status().expect("images.sh");
        assert!(imported.success(), "images.sh import {} {archive} failed", self.dir.display());
    }

    /// `cp.sh SUB DIR ARGS…`, asserting success.
    fn cp(&self, args: &[&str]) {
        let (sub, rest) = args.split_first().expect("a subcommand");
        let status = Command::new(cp_script()).arg(sub).arg(&self.dir).args(rest).stdin(Stdio::null()).status();
        assert!(matches!(status, Ok(s) if s.success()), "cp.sh {args:?} failed: {status:?}");
    }

    fn down(&mut self) {
        self.stopped = true;
        let status = Command::new(cp_script()).arg("down").arg(&self.dir).stdin(Stdio::null()).status();
        assert!(matches!(status, Ok(s) if s.success()), "cp.sh down {} failed: {status:?}", self.dir.display());
    }

    /// What `cp.sh up` started (name, pid), and the watchdog.
    fn processes(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = std::fs::read_to_string(self.dir.join("pids"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ')?.1.trim().parse().ok())
            .collect();
        if let Ok(w) = std::fs::read_to_string(self.dir.join("watchdog.pid")) {
            pids.extend(w.trim().parse::<u32>().ok());
        }
        pids
    }
}

impl Drop for RealCluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = Command::new(cp_script()).arg("down").arg(&self.dir).stdin(Stdio::null()).status();
        }
    }
}

fn new_dir(prefix: &str) -> PathBuf {
    // Short: the node's containerd socket lives under it.
    tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").expect("temp dir").keep()
}

/// A pod for real-1: an init container writes into an emptyDir (`serve-file
/// write /content/index TEXT`, or `fetch IP PORT /content/index`), the main
/// container serves that file on TCP port 8080, published on `host_port`.
fn serving_pod(name: &str, init_args: &[&str], host_port: i32) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "nodeSelector": { REAL_TAINT: "real" },
            "tolerations": [{ "key": REAL_TAINT, "operator": "Equal", "value": "real", "effect": "NoSchedule" }],
            "terminationGracePeriodSeconds": 2,
            "volumes": [{ "name": "content", "emptyDir": {} }],
            "initContainers": [{
                "name": "write",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "args": init_args,
                "volumeMounts": [{ "name": "content", "mountPath": "/content" }],
            }],
            "containers": [{
                "name": "serve",
                "image": IMAGE,
                "imagePullPolicy": "Never",
                "args": ["serve", "8080", "/content/index"],
                "ports": [{ "containerPort": 8080, "hostPort": host_port, "protocol": "TCP" }],
                "volumeMounts": [{ "name": "content", "mountPath": "/content", "readOnly": true }],
            }],
        },
    }))
    .expect("valid pod")
}

fn phase(pod: &Pod) -> String {
    pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default()
}

async fn wait_running(pods: &Api<Pod>, name: &str) -> Pod {
    wait_for(&format!("pod {name} to be Running"), TIMEOUT, || async {
        let pod = pods.get(name).await.map_err(|e| e.to_string())?;
        let status = pod.status.as_ref();
        let conditions = status.and_then(|s| s.conditions.as_ref()).into_iter().flatten();
        let conditions: Vec<_> = conditions.map(|c| (&c.type_, &c.status, &c.reason, &c.message)).collect();
        let statuses = status.map(|s| (&s.init_container_statuses, &s.container_statuses));
        if phase(&pod) == "Running" {
            Ok(pod)
        } else {
            Err(format!(
                "{} on {:?}: {conditions:?} {statuses:?}",
                phase(&pod),
                pod.spec.as_ref().and_then(|s| s.node_name.as_ref())
            ))
        }
    })
    .await
}

/// What a TCP server at `addr` sends before closing, retried while the port is not yet open.
async fn fetch(addr: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("socket address");
    wait_for(&format!("a TCP answer from {addr}"), Duration::from_secs(20), || async move {
        let read = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .await
        .expect("reader thread");
        read.map_err(|e| e.to_string())
    })
    .await
}

/// A test server on the host's loopback, as the project's tests start them
/// (git, S3, databases): sends `text` to every connection.
fn serve_on_loopback(text: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let port = listener.local_addr().expect("local address").port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(text.as_bytes());
        }
    });
    port
}

#[tokio::test]
async fn pod_on_the_real_node_serves_its_init_containers_file_on_a_host_port() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = RealCluster::start(&new_dir("gz-rn-"));
    cluster.import_test_image();
    let client = cluster.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // The init container fetches its text from a server on the host's loopback,
    // at the address every real node has for the host.
    let text = format!("fetched by the init container of {}", common::unique_name("web"));
    let port = serve_on_loopback(text.clone()).to_string();
    let host = cluster.info.host_address.as_str();
    let mut pod = serving_pod("web", &["fetch", host, &port, "/content/index"], 18080);
    // The `kubernetes` Service answers on its ClusterIP, as in-cluster clients expect.
    let spec = pod.spec.as_mut().expect("spec");
    let mut api_check = spec.init_containers.as_ref().expect("init containers")[0].clone();
    api_check.name = "reach-api-server".into();
    api_check.args = Some(["connect", "10.0.0.1", "443"].map(String::from).to_vec());
    api_check.volume_mounts = None;
    spec.init_containers.as_mut().expect("init containers").push(api_check);
    pods.create(&PostParams::default(), &pod).await.expect("create pod web");
    let pod = wait_running(&pods, "web").await;
    let node = cluster.node();
    assert_eq!(node.name, "real-1");
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), Some("real-1"));

    // The host port is real: the host reaches the pod at the node's address.
    assert_eq!(fetch(&format!("{}:18080", node.node_ip)).await, text);
    // And the pod IP directly, through the host's route to the node's pod CIDR.
    let pod_ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).expect("pod IP");
    let prefix = node.pod_cidr.trim_end_matches("0/24");
    assert!(pod_ip.starts_with(prefix), "pod IP {pod_ip} outside {}", node.pod_cidr);
    assert_eq!(fetch(&format!("{pod_ip}:8080")).await, text);

    // Nothing leaves the node's namespace but towards the host: it has no default route.
    let default_route = lines_of("ip", &["-n", &node.netns, "route", "show", "default"]);
    assert!(default_route.is_empty(), "{} has a default route: {default_route:?}", node.netns);

    // Without the toleration a pod cannot land on real-1, even when it asks for it ...
    let mut untolerated = serving_pod("untolerated", &["write", "/content/index", "never written"], 18081);
    let spec = untolerated.spec.as_mut().expect("spec");
    spec.tolerations = None;
    spec.node_selector = Some([("kubernetes.io/hostname".to_string(), "real-1".to_string())].into());
    pods.create(&PostParams::default(), &untolerated).await.expect("create pod untolerated");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let message = wait_for("a FailedScheduling event for pod untolerated", TIMEOUT, || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=untolerated,reason=FailedScheduling"))
            .await
            .map_err(|e| e.to_string())?;
        list.items.into_iter().find_map(|e| e.message).ok_or("no event yet".to_string())
    })
    .await;
    assert!(message.contains("untolerated taint"), "unexpected scheduler message: {message}");
    let untolerated = pods.get("untolerated").await.expect("get untolerated");
    assert_eq!(untolerated.spec.and_then(|s| s.node_name), None, "untolerated pod must not be bound");
    // ... and an ordinary pod goes to the KWOK node.
    let mut ordinary = serving_pod("ordinary", &["write", "/content/index", "kwok only pretends"], 18082);
    let spec = ordinary.spec.as_mut().expect("spec");
    spec.tolerations = None;
    spec.node_selector = None;
    pods.create(&PostParams::default(), &ordinary).await.expect("create pod ordinary");
    let ordinary = wait_running(&pods, "ordinary").await;
    assert_eq!(ordinary.spec.and_then(|s| s.node_name).as_deref(), Some("node-1"));

    // real-1's status comes from its kubelet and containerd, not from KWOK.
    let real = Api::<Node>::all(client).get("real-1").await.expect("get node real-1");
    let status = real.status.expect("node status");
    let info = status.node_info.expect("nodeInfo");
    assert_eq!(info.kubelet_version, "v1.37.2");
    assert!(info.container_runtime_version.starts_with("containerd://2.4."), "{}", info.container_runtime_version);
    let ready = status.conditions.unwrap_or_default().into_iter().find(|c| c.type_ == "Ready").expect("Ready");
    assert_eq!((ready.status.as_str(), ready.reason.as_deref()), ("True", Some("KubeletReady")), "{ready:?}");
    let addresses: Vec<_> = status.addresses.unwrap_or_default().into_iter().map(|a| (a.type_, a.address)).collect();
    assert!(addresses.contains(&("InternalIP".to_string(), node.node_ip.clone())), "{addresses:?}");
    let taints = real.spec.and_then(|s| s.taints).unwrap_or_default();
    assert!(taints.iter().any(|t| t.key == REAL_TAINT && t.effect == "NoSchedule"), "{taints:?}");
}

/// A game server pod of zone `zone` on real-1, as the operator makes them:
/// hostname = its instance name, subdomain = the zone's headless Service. It
/// serves the text "I am NAME" on TCP port 8080.
fn peer_pod(name: &str, zone: &str) -> Pod {
    let mut pod = serving_pod(name, &["write", "/content/index", &format!("I am {name}")], 0);
    pod.metadata.labels = Some([("zone".to_string(), zone.to_string())].into());
    let spec = pod.spec.as_mut().expect("spec");
    spec.hostname = Some(name.to_string());
    spec.subdomain = Some(zone.to_string());
    for container in spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()) {
        container.image = Some(DNS_IMAGE.to_string());
        // No host port: two peers on one node, each reached at its pod IP.
        for port in container.ports.iter_mut().flatten() {
            port.host_port = None;
        }
    }
    pod
}

/// What `resolve ARGS` prints in pod `pod`'s main container (exit 0), or its
/// exit code and messages: 2 means the name does not exist.
async fn resolve_in(cluster: &RealCluster, namespace: &str, pod: &str, args: &[&str]) -> Result<String, (i32, String)> {
    let output = tokio::process::Command::new(cp_script())
        .arg("kubectl")
        .arg(&cluster.dir)
        .args(["exec", "-n", namespace, pod, "-c", "serve", "--", "/usr/local/bin/resolve"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("cannot run cp.sh kubectl exec");
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err((output.status.code().unwrap_or(-1), format!("{stdout}{stderr}")))
    }
}

/// The addresses `resolve NAME` prints, sorted.
fn addresses(printed: &str) -> Vec<String> {
    let mut found: Vec<String> = printed.lines().take_while(|l| *l != "--").map(str::to_string).collect();
    found.sort();
    found
}

#[tokio::test]
async fn pods_on_the_real_node_find_their_peers_by_stable_dns_names_until_a_peer_is_gone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = RealCluster::start(&new_dir("gz-rn-"));
    assert_eq!(cluster.info.cluster_dns, "10.0.0.10");
    cluster
        .import_image(DNS_IMAGE, &[cluster.info.bin_dir.join("serve-file"), cluster.info.dns_bin_dir.join("resolve")]);
    let client = cluster.client().await;
    let ns = "games";
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("namespace");
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await.expect("create namespace");

    // Zone `zone-a`: a headless Service selecting its game servers, and a
    // ClusterIP Service beside it (as a Redis would have).
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    for service in [
        json!({ "metadata": { "name": "zone-a" },
                "spec": { "clusterIP": "None", "selector": { "zone": "zone-a" }, "ports": [{ "port": 8080 }] } }),
        json!({ "metadata": { "name": "redis" }, "spec": { "ports": [{ "port": 6379 }] } }),
    ] {
        let service: Service = serde_json::from_value(service).expect("service");
        services.create(&PostParams::default(), &service).await.expect("create service");
    }
    let redis_ip = services.get("redis").await.expect("get redis").spec.and_then(|s| s.cluster_ip).expect("ClusterIP");

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let (first, second) = ("zone-a-server-0", "zone-a-server-1");
    let mut tcp_only = peer_pod(first, "zone-a");
    // This one asks over TCP only: large answers (many peers) come that way.
    tcp_only.spec.as_mut().expect("spec").dns_config =
        Some(serde_json::from_value(json!({ "options": [{ "name": "use-vc" }] })).expect("dnsConfig"));
    pods.create(&PostParams::default(), &tcp_only).await.expect("create first peer");
    pods.create(&PostParams::default(), &peer_pod(second, "zone-a")).await.expect("create second peer");
    let pod_ip = |pod: Pod| pod.status.and_then(|s| s.pod_ip).expect("pod IP");
    let first_ip = pod_ip(wait_running(&pods, first).await);
    let second_ip = pod_ip(wait_running(&pods, second).await);

    // Each peer resolves the other's stable name (the short form, through the
    // pod's search domains) and connects to it, over UDP and over TCP.
    let first_name = format!("{first}.zone-a.{ns}.svc");
    let second_name = format!("{second}.zone-a.{ns}.svc");
    let seen = wait_for(&format!("{second} to reach {first_name}"), TIMEOUT, || async {
        resolve_in(&cluster, ns, second, &[&first_name, "8080"]).await
    })
    .await;
    assert_eq!(seen, format!("{first_ip}\n--\nI am {first}"));
    let seen = wait_for(&format!("{first} to reach {second_name} over TCP"), TIMEOUT, || async {
        resolve_in(&cluster, ns, first, &[&second_name, "8080"]).await
    })
    .await;
    assert_eq!(seen, format!("{second_ip}\n--\nI am {second}"));

    // The headless Service's own name gives every ready peer; a ClusterIP
    // Service's name its ClusterIP; the `kubernetes` Service's name its
    // ClusterIP, which answers (the node's DNAT to the API server).
    let zone_name = format!("zone-a.{ns}.svc");
    let mut both = vec![first_ip.clone(), second_ip.clone()];
    both.sort();
    let all = wait_for("both peers behind the headless Service", TIMEOUT, || async {
        let printed = resolve_in(&cluster, ns, second, &[&zone_name]).await?;
        if addresses(&printed) == both { Ok(printed) } else { Err((0, printed)) }
    })
    .await;
    assert_eq!(addresses(&all), both);
    let redis = resolve_in(&cluster, ns, second, &[&format!("redis.{ns}.svc")]).await.expect("resolve redis");
    assert_eq!(addresses(&redis), [redis_ip]);
    let api = resolve_in(&cluster, ns, second, &["kubernetes.default.svc", "443"]).await.expect("reach the API");
    assert_eq!(addresses(&api), ["10.0.0.1"]);
    // No upstream: a name outside the cluster does not exist (and says so at once).
    let outside = resolve_in(&cluster, ns, second, &["gamezone.invalid"]).await;
    assert!(matches!(outside, Err((2, _))), "a name outside the cluster: {outside:?}");

    // A peer that is gone stops resolving; the zone's name then gives the rest.
    pods.delete(first, &Default::default()).await.expect("delete first peer");
    let gone = wait_for(&format!("{first_name} to stop resolving"), TIMEOUT, || async {
        match resolve_in(&cluster, ns, second, &[&first_name]).await {
            Err((2, message)) => Ok(message),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(gone.contains("Name or service not known"), "{gone}");
    let rest = resolve_in(&cluster, ns, second, &[&zone_name]).await.expect("resolve the zone");
    assert_eq!(addresses(&rest), [second_ip]);
}

/// What a real node of slot `slot` (or a control plane in `dir`) can leave on the machine.
#[derive(Debug, Default, PartialEq)]
struct Leftovers {
    processes: BTreeSet<String>,
    /// The control plane's CoreDNS, on the host (not in a node's cgroups).
    dns_servers: BTreeSet<String>,
    mounts: BTreeSet<String>,
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
    routes: BTreeSet<String>,
    iptables: BTreeSet<String>,
    cgroups: BTreeSet<String>,
}

fn lines_of(program: &str, args: &[&str]) -> Vec<String> {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(output.status.success(), "{program} {args:?} failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).lines().map(str::to_string).collect()
}

/// Pids of the live processes in a cgroup whose path starts with `prefix` (in
/// any hierarchy). Zombies do not count: they wait for the machine's init to
/// reap them, and still name the cgroup they died in.
fn processes_in_cgroups(prefix: &str) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        // The state follows the command name in parentheses.
        if stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z')) {
            continue;
        }
        let cgroups = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if cgroups.lines().any(|l| l.splitn(3, ':').nth(2).is_some_and(|p| p.starts_with(prefix))) {
            found.insert(pid);
        }
    }
    found
}

impl Leftovers {
    fn of(slot: u32, dir: &Path) -> Leftovers {
        let netns_prefix = format!("gz{slot}-real-");
        let link_prefix = format!("gz{slot}r");
        let dir = dir.display().to_string();
        let mut found = Leftovers::default();
        for pid in processes_in_cgroups(&format!("/{netns_prefix}")) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            found.processes.insert(format!("{pid} {}", String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
        let corefile = format!("{dir}/dns/Corefile");
        for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
            if entry.file_name().to_str().is_none_or(|n| n.parse::<u32>().is_err()) {
                continue;
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if stat.rsplit_once(") ").is_none_or(|(_, rest)| rest.starts_with('Z')) {
                continue;
            }
            let cmdline = String::from_utf8_lossy(&std::fs::read(entry.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
            if cmdline.contains(&corefile) {
                found.dns_servers.insert(format!("{} {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        found.mounts =
            mounts.lines().filter(|l| l.contains(&dir) || l.contains(&netns_prefix)).map(String::from).collect();
        found.netns = lines_of("ip", &["netns", "list"]).into_iter().filter(|l| l.starts_with(&netns_prefix)).collect();
        found.links = lines_of("ip", &["-o", "link", "show"])
            .into_iter()
            .filter_map(|l| l.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n).to_string()))
            .filter(|n| n.starts_with(&link_prefix))
            .collect();
        found.routes = lines_of("ip", &["route", "show"]).into_iter().filter(|l| l.contains(&link_prefix)).collect();
        found.iptables = lines_of("iptables-save", &[])
            .into_iter()
            .filter(|l| l.contains(&format!("gamezone:{netns_prefix}")))
            .collect();
        for mount in mounts.lines().filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            matches!(fields.get(2), Some(&"cgroup") | Some(&"cgroup2")).then(|| fields[1].to_string())
        }) {
            for entry in std::fs::read_dir(&mount).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                if entry.path().is_dir() && (name.starts_with(&netns_prefix) || name.starts_with("kubepods")) {
                    found.cgroups.insert(format!("{mount}/{name}"));
                }
            }
        }
        found
    }
}

#[tokio::test]
async fn down_leaves_nothing_behind_and_up_cleans_after_a_killed_run() {
    let _one = ONE_AT_A_TIME.lock().await;

    // A node with a running pod, then `down`.
    let dir = new_dir("gz-rn-");
    let mut cluster = RealCluster::start(&dir);
    let slot = cluster.info.slot;
    cluster.import_test_image();
    let pods: Api<Pod> = Api::namespaced(cluster.client().await, "default");
    pods.create(&PostParams::default(), &serving_pod("web", &["write", "/content/index", "first run"], 18080))
        .await
        .expect("create pod");
    wait_running(&pods, "web").await;
    let running = Leftovers::of(slot, &dir);
    // The check sees what a node has: otherwise an empty result below would prove nothing.
    for (what, set) in [
        ("processes", &running.processes),
        ("dns_servers", &running.dns_servers),
        ("netns", &running.netns),
        ("links", &running.links),
        ("routes", &running.routes),
        ("iptables", &running.iptables),
        ("cgroups", &running.cgroups),
    ] {
        assert!(!set.is_empty(), "a running node should show {what}: {running:#?}");
    }
    assert!(running.processes.iter().any(|p| p.contains("containerd-shim-runc-v2")), "{:#?}", running.processes);
    // The node's daemons SIGKILLed and started again: the pod's container lives through it and still
    // serves on its host port; killed again and left stopped, `down` still cleans everything.
    let web = format!("{}:18080", cluster.node().node_ip);
    let container = |p: &Pod| {
        p.status.as_ref().and_then(|s| s.container_statuses.as_ref()?[0].container_id.clone()).expect("container id")
    };
    let before = container(&pods.get("web").await.expect("get web"));
    cluster.cp(&["node-stop", "real-1", "--kill"]);
    assert!(
        processes_in_cgroups(&format!("{}/", cluster.node().cgroup)).len() > 1,
        "the shims outlive their containerd"
    );
    assert_eq!(fetch(&web).await, "first run", "the pod serves while its node's daemons are down");
    cluster.cp(&["node-start", "real-1"]);
    // The restarted daemons run new pods ...
    pods.create(&PostParams::default(), &serving_pod("web2", &["write", "/content/index", "after restart"], 18083))
        .await
        .expect("create pod web2");
    wait_running(&pods, "web2").await;
    assert_eq!(fetch(&format!("{}:18083", cluster.node().node_ip)).await, "after restart");
    // ... and kept the old one's container.
    let after = wait_running(&pods, "web").await;
    assert_eq!(container(&after), before, "the same container, recovered by the restarted containerd");
    assert_eq!(fetch(&web).await, "first run");
    cluster.cp(&["node-stop", "real-1", "--kill"]);
    cluster.down();
    assert_eq!(Leftovers::of(slot, &dir), Leftovers::default(), "left behind by `cp.sh down`");
    assert!(!dir.exists(), "`cp.sh down` removes {}", dir.display());

    // A node with a running pod, then kill -9 of what `up` started (the watchdog
    // included): the shims and containers live on, orphaned, with the namespace,
    // the NAT rule and the cgroups.
    let dir = new_dir("gz-rn-");
    let mut cluster = RealCluster::start(&dir);
    let slot = cluster.info.slot;
    let netns = cluster.node().netns.clone();
    cluster.import_test_image();
    let pods: Api<Pod> = Api::namespaced(cluster.client().await, "default");
    pods.create(&PostParams::default(), &serving_pod("web", &["write", "/content/index", "killed run"], 18080))
        .await
        .expect("create pod");
    let pod = wait_running(&pods, "web").await;
    let pod_uid = pod.metadata.uid.expect("pod uid");
    for pid in cluster.processes() {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
    }
    let cgroup_prefix = format!("{}/", cluster.node().cgroup);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let orphans = processes_in_cgroups(&cgroup_prefix);
    assert!(!orphans.is_empty(), "the shims and containers outlive a kill -9 of the daemons");
    let killed = Leftovers::of(slot, &dir);
    assert!(!killed.netns.is_empty() && !killed.iptables.is_empty() && !killed.cgroups.is_empty(), "{killed:#?}");
    // The node's rule for the cluster DNS address goes with its namespace.
    let dns_rules = lines_of("ip", &["netns", "exec", &netns, "iptables-save", "-t", "nat"]);
    assert!(
        dns_rules.iter().any(|r| r.contains("10.0.0.10/32")),
        "{netns} has no DNAT for the cluster DNS: {dns_rules:?}"
    );

    // The next `up` in the same directory cleans all of it first, then starts afresh.
    cluster.stopped = true;
    let mut cluster = RealCluster::start(&dir);
    let alive: Vec<_> = orphans.iter().filter(|pid| Path::new(&format!("/proc/{pid}")).exists()).collect();
    assert!(alive.is_empty(), "processes of the killed run still alive: {alive:?}");
    let pod_cgroups = lines_of("find", &["/sys/fs/cgroup/", "-type", "d", "-name", &format!("pod{pod_uid}")]);
    assert!(pod_cgroups.is_empty(), "cgroups of the killed run's pod remain: {pod_cgroups:?}");
    let rules = Leftovers::of(cluster.info.slot, &dir).iptables;
    // Per real node: one for its traffic to the host address, one for the host's own.
    let chains: BTreeSet<&str> = rules.iter().filter_map(|r| r.split_whitespace().nth(1)).collect();
    assert_eq!(
        (rules.len(), chains),
        (2, BTreeSet::from(["OUTPUT", "PREROUTING"])),
        "two NAT rules per real node, none left from the killed run: {rules:?}"
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client().await, "default");
    assert!(pods.get_opt("web").await.expect("get pod").is_none(), "the new control plane starts empty");
    if cluster.info.slot != slot {
        assert_eq!(Leftovers::of(slot, &dir), Leftovers::default(), "slot {slot} of the killed run ({netns})");
    }
    let slot = cluster.info.slot;
    cluster.down();
    assert_eq!(Leftovers::of(slot, &dir), Leftovers::default(), "left behind by `cp.sh down` after a cleanup");
}

#[tokio::test]
async fn an_up_during_another_control_plane_s_down_leaves_that_slot_to_its_down() {
    let _one = ONE_AT_A_TIME.lock().await;
    let first_dir = new_dir("gz-rn-");
    let mut first = RealCluster::start(&first_dir);
    let first_slot = first.info.slot;
    // Its `down` as a test binary's watchdog runs it once the binary exited: on its own, while
    // the next binary's `up` looks for a slot. The `up` starts once the `down` has begun.
    first.stopped = true;
    let mut down =
        Command::new(cp_script()).arg("down").arg(&first_dir).stdin(Stdio::null()).spawn().expect("cp.sh down");
    wait_for("the first control plane's down under way", Duration::from_secs(20), || async {
        if first_dir.join("pids.stopping").exists() || !first_dir.exists() {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;
    let second_dir = new_dir("gz-rn-");
    let (mut second, said) = RealCluster::start_telling(&second_dir);
    assert!(
        !said.contains("left by a control plane that was killed"),
        "a control plane going down was taken for a killed one, its slot cleaned under it: {said}"
    );
    assert!(down.wait().expect("wait for down").success(), "the first control plane's down failed");
    if second.info.slot != first_slot {
        assert_eq!(Leftovers::of(first_slot, &first_dir), Leftovers::default(), "left by the first control plane");
    }
    let second_slot = second.info.slot;
    second.down();
    assert_eq!(Leftovers::of(second_slot, &second_dir), Leftovers::default(), "left by the second control plane");
}
