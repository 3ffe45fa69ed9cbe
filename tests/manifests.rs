//! The shipped manifests work: `deploy/` installs and its RBAC is enough to run the operator,
//! `examples/gamezone-repo` builds and passes the API server's validation (CEL rules included),
//! the Argo CD health checks give the right verdict for zones in every state, and the Argo CD
//! Application(Set) manifests have what Argo CD needs.
//!
//! Needs `lua5.4` (apt-get install lua5.4) and the local control plane (tests/controlplane/cp.sh).

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gamezone::api::{GameServer, GameZone};
use serde_json::{Value, json};

const LUA: &str = "lua5.4";
const CRD_ZONE: &str = "gamezones.gamezone.dev";
const CRD_SERVER: &str = "gameservers.gamezone.dev";
const WAIT: Duration = Duration::from_secs(90);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn example() -> PathBuf {
    root().join("examples/gamezone-repo")
}

/// Every kustomization the repository ships, relative to the workspace root.
const KUSTOMIZATIONS: &[&str] = &[
    "deploy",
    "deploy-namespaced",
    "examples/gamezone-repo/base",
    "examples/gamezone-repo/overlays/on-prem",
    "examples/gamezone-repo/overlays/cloud",
    "examples/gamezone-repo/zones/zone1",
    "examples/gamezone-repo/stress/base",
    "examples/gamezone-repo/stress/cloud",
];

// ------------------------------------------------------------------ kubectl

/// A directory `cp.sh kubectl` accepts (it wants `DIR/kubeconfig`) for `kubeconfig`.
struct KubectlDir {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl KubectlDir {
    fn for_kubeconfig(kubeconfig: &Path) -> Self {
        if kubeconfig.file_name().is_some_and(|n| n == "kubeconfig")
            && let Some(parent) = kubeconfig.parent()
        {
            return KubectlDir { dir: parent.to_path_buf(), _temp: None };
        }
        let temp = tempfile::tempdir().expect("temp dir for a kubeconfig");
        std::fs::copy(kubeconfig, temp.path().join("kubeconfig")).expect("copy the kubeconfig");
        KubectlDir { dir: temp.path().to_path_buf(), _temp: Some(temp) }
    }

    /// For commands that never talk to a cluster (`kustomize`): an empty kubeconfig.
    fn offline() -> Self {
        let temp = tempfile::tempdir().expect("temp dir for kubectl");
        std::fs::write(temp.path().join("kubeconfig"), "").expect("write an empty kubeconfig");
        KubectlDir { dir: temp.path().to_path_buf(), _temp: Some(temp) }
    }

    /// Runs the control plane's own kubectl (v1.37, with kustomize built in), not the host's.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut child = Command::new(common::cp_script())
            .arg("kubectl")
            .arg(&self.dir)
            .args(args)
            .current_dir(root())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", common::cp_script().display()));
        if let Some(input) = stdin {
            child.stdin.take().unwrap().write_all(input.as_bytes()).expect("write kubectl's stdin");
        }
        let out = child.wait_with_output().expect("wait for kubectl");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            ))
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        self.run(args, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ok_stdin(&self, args: &[&str], stdin: &str) -> String {
        self.run(args, Some(stdin)).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// `kubectl kustomize DIR` (relative to the workspace root) as parsed documents.
fn kustomize(dir: &str) -> Vec<Value> {
    // The built kubectl exists once a control plane was started (which builds it if needed).
    common::shared_kubeconfig();
    let yaml = KubectlDir::offline().ok(&["kustomize", dir]);
    documents(&yaml).unwrap_or_else(|e| panic!("`kubectl kustomize {dir}` printed invalid YAML: {e}"))
}

fn documents(yaml: &str) -> Result<Vec<Value>, serde_yaml::Error> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn read_yaml(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    documents(&text).unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} among {:?}", kinds(docs)))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap_or("?"), d["metadata"]["name"].as_str().unwrap_or("?")))
        .collect()
}

/// Objects as one JSON `List` for `kubectl -f -`. JSON, not YAML: serde_yaml writes YAML 1.2,
/// where `yes` is a string, while kubectl reads YAML 1.1, where it is a boolean.
fn to_list(docs: &[&Value]) -> String {
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}).to_string()
}

// ------------------------------------------------------------------ Argo CD health checks (Lua)

/// Fails with a message saying how to get Lua when it is missing.
fn require_lua() {
    match Command::new(LUA).arg("-v").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`{LUA} -v` failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!(
            "{LUA} is needed to test the Argo CD health checks but cannot be run ({e}): \
             install it with `apt-get install lua5.4` (the project's test setup does)"
        ),
    }
}

/// A Lua literal for a JSON value. Numbers become floats, as Argo CD hands them to its scripts
/// (its JSON decoding goes through float64); `null` fields are left out, as Lua tables cannot
/// hold nil.
fn lua_literal(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("nil"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let f = n.as_f64().expect("a JSON number");
            let _ = write!(out, "{f:?}");
        }
        Value::String(s) => {
            out.push('"');
            for b in s.bytes() {
                match b {
                    b'"' => out.push_str("\\\""),
                    b'\\' => out.push_str("\\\\"),
                    0x20..=0x7e => out.push(b as char),
                    // Escape everything else byte by byte: Lua strings are bytes.
                    _ => {
                        let _ = write!(out, "\\{b:03}");
                    }
                }
            }
            out.push('"');
        }
        Value::Array(items) => {
            out.push('{');
            for item in items.iter().filter(|v| !v.is_null()) {
                lua_literal(item, out);
                out.push_str(", ");
            }
            out.push('}');
        }
        Value::Object(map) => {
            out.push('{');
            for (k, v) in map.iter().filter(|(_, v)| !v.is_null()) {
                out.push('[');
                lua_literal(&Value::String(k.clone()), out);
                out.push_str("] = ");
                lua_literal(v, out);
                out.push_str(", ");
            }
            out.push('}');
        }
    }
}

/// Runs a health script the way Argo CD does: a global `obj`, the script's return value a table
/// with `status` and `message`. `io`, `os`, `require`, `string` and `math` are hidden: Argo CD's
/// sandbox has no `string.format` (a real Argo CD showed a script using it as Unknown), so a
/// script that leans on a library fails here first.
fn run_health(script: &Path, obj: &Value) -> Result<(String, String), String> {
    let mut driver = String::from("local write = io.write\nobj = ");
    lua_literal(obj, &mut driver);
    driver.push_str(
        r#"
local chunk = assert(loadfile(arg[1]))
io, os, require, dofile, loadfile, string, math = nil, nil, nil, nil, nil, nil, nil
getmetatable("").__index = nil
local hs = chunk()
if type(hs) ~= "table" then error("the script returned " .. type(hs) .. ", not a table") end
write(tostring(hs.status), "\0", tostring(hs.message))
"#,
    );
    let mut file = tempfile::NamedTempFile::new().expect("temp file for the Lua driver");
    file.write_all(driver.as_bytes()).expect("write the Lua driver");
    let out = Command::new(LUA).arg(file.path()).arg(script).output().map_err(|e| format!("cannot run {LUA}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{} failed: {}", script.display(), String::from_utf8_lossy(&out.stderr)));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| format!("output is not UTF-8: {e}"))?;
    let (status, message) = text.split_once('\0').ok_or_else(|| format!("unexpected output {text:?}"))?;
    Ok((status.to_owned(), message.to_owned()))
}

/// Runs `script` against every fixture in `dir` (`expect: {status, message}` and `object`),
/// checking each object first with `check` (that it is a valid object of our API).
fn check_health_fixtures(script: &Path, dir: &Path, check: impl Fn(&Path, &Value)) -> BTreeSet<String> {
    require_lua();
    let mut failures = Vec::new();
    let mut seen = BTreeSet::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no fixtures in {}", dir.display());
    for path in entries {
        let fixture = read_yaml(&path).remove(0);
        let object = &fixture["object"];
        check(&path, object);
        let want = (
            fixture["expect"]["status"].as_str().expect("expect.status").to_owned(),
            fixture["expect"]["message"].as_str().expect("expect.message").to_owned(),
        );
        match run_health(script, object) {
            Ok(got) if got == want => {
                seen.insert(got.0);
            }
            Ok(got) => failures.push(format!("{}: want {want:?}, got {got:?}", path.display())),
            Err(e) => failures.push(format!("{}: {e}", path.display())),
        }
    }
    assert!(failures.is_empty(), "health check {} disagrees with fixtures:\n{}", script.display(), failures.join("\n"));
    seen
}

/// The fixture's status survives a round trip through our API types: no misspelt fields.
fn assert_status_round_trips<K>(path: &Path, object: &Value, status_of: impl Fn(&K) -> Value)
where
    K: serde::de::DeserializeOwned,
{
    let parsed: K = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{} does not hold a valid object: {e}", path.display()));
    let status = status_of(&parsed);
    let want = object.get("status").cloned().unwrap_or(Value::Null);
    // Fields our types default (0 servers) may appear on one side only.
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.retain(|k, x| !(matches!(k.as_str(), "desiredServers" | "readyServers") && x == 0));
        }
        v
    };
    assert_eq!(strip(&status), strip(&want), "{}: status fields unknown to the API types", path.display());
}

#[test]
fn gamezone_health_check_gives_argo_cd_the_right_verdict() {
    let script = example().join("argocd/gamezone-health.lua");
    let seen = check_health_fixtures(&script, &root().join("tests/argocd/gamezone"), |path, obj| {
        assert_status_round_trips::<GameZone>(path, obj, |z| serde_json::to_value(&z.status).unwrap());
    });
    for status in ["Healthy", "Progressing", "Degraded"] {
        assert!(seen.contains(status), "no GameZone fixture expects {status}");
    }
}

#[test]
fn gameserver_health_check_gives_argo_cd_the_right_verdict() {
    let script = example().join("argocd/gameserver-health.lua");
    let seen = check_health_fixtures(&script, &root().join("tests/argocd/gameserver"), |path, obj| {
        assert_status_round_trips::<GameServer>(path, obj, |s| serde_json::to_value(&s.status).unwrap());
    });
    for status in ["Healthy", "Progressing", "Degraded"] {
        assert!(seen.contains(status), "no GameServer fixture expects {status}");
    }
}

#[test]
fn argocd_cm_patch_installs_both_health_checks_verbatim() {
    let patch = read_yaml(&example().join("argocd/argocd-cm-patch.yaml")).remove(0);
    assert_eq!(patch["kind"], "ConfigMap");
    assert_eq!(patch["metadata"]["name"], "argocd-cm");
    for (kind, file) in [("GameZone", "gamezone-health.lua"), ("GameServer", "gameserver-health.lua")] {
        let key = format!("resource.customizations.health.gamezone.dev_{kind}");
        let script = std::fs::read_to_string(example().join("argocd").join(file)).unwrap();
        assert_eq!(
            patch["data"][&key].as_str(),
            Some(script.as_str()),
            "argocd-cm-patch.yaml's {key} differs from argocd/{file}: copy the script into it"
        );
        // Argo CD's Lua (gopher-lua, 5.1) has no io/os in health checks and no 5.3+ operators.
        for forbidden in ["io.", "os.", "require", "//", "goto", "<const>", "math.tointeger"] {
            assert!(!script.contains(forbidden), "argocd/{file} uses `{forbidden}`, which Argo CD's Lua lacks");
        }
    }
}

// ------------------------------------------------------------------ Argo CD applications

#[test]
fn argocd_application_and_applicationset_have_what_argo_cd_needs() {
    let app = read_yaml(&example().join("argocd/application.yaml")).remove(0);
    assert_eq!(app["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(app["kind"], "Application");
    assert_eq!(app["metadata"]["namespace"], "argocd");
    check_application_spec("application.yaml", &app["spec"]);

    let set = read_yaml(&example().join("argocd/applicationset.yaml")).remove(0);
    assert_eq!(set["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(set["kind"], "ApplicationSet");
    let generators = set["spec"]["generators"].as_array().expect("spec.generators is a list");
    assert!(!generators.is_empty(), "applicationset.yaml has no generators");
    let template = &set["spec"]["template"];
    assert!(template["metadata"]["name"].is_string(), "applicationset.yaml: template.metadata.name");
    check_application_spec("applicationset.yaml", &template["spec"]);
    // The git directory generator's paths exist in the example repository.
    for g in generators {
        for d in g["git"]["directories"].as_array().into_iter().flatten() {
            let pattern = d["path"].as_str().expect("directories[].path");
            let parent = pattern.trim_end_matches("/*");
            assert!(example().join(parent).is_dir(), "applicationset.yaml generates from {pattern}, which is missing");
        }
    }
}

fn check_application_spec(file: &str, spec: &Value) {
    assert!(spec["project"].is_string(), "{file}: spec.project");
    let source = &spec["source"];
    for field in ["repoURL", "targetRevision", "path"] {
        assert!(source[field].is_string(), "{file}: spec.source.{field}");
    }
    let path = source["path"].as_str().unwrap();
    if !path.contains("{{") {
        assert!(
            example().join(path).join("kustomization.yaml").is_file(),
            "{file}: spec.source.path {path} is not a kustomization in the example repo"
        );
    }
    assert!(
        spec["destination"]["server"].is_string() || spec["destination"]["name"].is_string(),
        "{file}: spec.destination.server or name"
    );
    assert!(spec["destination"]["namespace"].is_string(), "{file}: spec.destination.namespace");
}

// ------------------------------------------------------------------ deploy/ without a cluster

#[test]
fn cluster_role_grants_no_wildcards_and_leases_only_in_the_operator_namespace() {
    let docs = read_yaml(&root().join("deploy/rbac.yaml"));
    let role = find(&docs, "ClusterRole", "gamezone");
    let rules = role["rules"].as_array().expect("rules");
    let mut grants = BTreeSet::new();
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            let items = rule[field].as_array().unwrap_or_else(|| panic!("rule {rule} has no {field}"));
            assert!(
                !items.iter().any(|v| v.as_str().is_some_and(|s| s.contains('*'))),
                "wildcard in {field} of {rule}"
            );
        }
        assert!(rule.get("nonResourceURLs").is_none(), "the operator needs no non-resource URLs: {rule}");
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    grants.insert(format!(
                        "{}/{}:{}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    for write in ["create", "update", "patch", "delete", "deletecollection"] {
        assert!(!grants.contains(&format!("/secrets:{write}")), "Secrets must stay read-only, found {write}");
    }
    assert!(!grants.iter().any(|g| g.starts_with("coordination.k8s.io/")), "Leases belong in the namespaced Role");
    for needed in [
        "gamezone.dev/gamezones:watch",
        "gamezone.dev/gamezones/status:patch",
        "gamezone.dev/gameservers:deletecollection",
        "/pods:create",
        "/pods:deletecollection",
        "batch/jobs:deletecollection",
        "events.k8s.io/events:create",
        "/nodes:list",
    ] {
        assert!(grants.contains(needed), "the ClusterRole lacks {needed}");
    }
    let lease_role = find(&docs, "Role", "gamezone-leader-election");
    assert_eq!(lease_role["metadata"]["namespace"], "gamezone-system");
    assert_eq!(lease_role["rules"][0]["resources"], serde_json::json!(["leases"]));
}

#[test]
fn deploy_builds_a_hardened_leader_elected_operator() {
    let docs = kustomize("deploy");
    let names: Vec<String> = kinds(&docs);
    for want in [
        "CustomResourceDefinition/gamezones.gamezone.dev",
        "CustomResourceDefinition/gameservers.gamezone.dev",
        "Namespace/gamezone-system",
        "ServiceAccount/gamezone",
        "Service/gamezone-metrics",
    ] {
        assert!(names.iter().any(|n| n == want), "deploy/ lacks {want}: {names:?}");
    }
    let deployment = find(&docs, "Deployment", "gamezone");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(spec["serviceAccountName"], "gamezone");
    let c = &spec["containers"][0];
    assert_eq!(c["image"], "ghcr.io/gamezone-dev/gamezone:0.1.0");
    assert_eq!(c["args"], serde_json::json!(["run", "--leader-elect"]));
    let env = |name: &str| c["env"].as_array().unwrap().iter().find(|e| e["name"] == name).cloned();
    assert_eq!(env("GAMEZONE_INIT_IMAGE").unwrap()["value"], c["image"], "init image follows the operator image");
    assert_eq!(env("POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env("POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0], serde_json::json!({"name": "metrics", "containerPort": 8080, "protocol": "TCP"}));
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"]["memory"].is_string());
}

#[test]
fn every_kustomization_builds_and_overlays_expose_the_zone() {
    for dir in KUSTOMIZATIONS {
        assert!(!kustomize(dir).is_empty(), "`kubectl kustomize {dir}` built nothing");
    }
    let on_prem = kustomize("examples/gamezone-repo/overlays/on-prem");
    let zone = find(&on_prem, "GameZone", "zone1");
    let gateway = &zone["spec"]["services"][2]["expose"]["perInstance"];
    assert_eq!(gateway["type"], "LoadBalancer");
    assert_eq!(gateway["annotations"]["metallb.universe.tf/address-pool"], "game");
    assert_eq!(gateway["hostname"], "{instance}.zhulei.rke2.example.com");
    let redis = find(&on_prem, "Service", "redis");
    assert_eq!(redis["spec"]["type"], "LoadBalancer");
    assert_eq!(
        redis["metadata"]["annotations"]["external-dns.alpha.kubernetes.io/hostname"],
        "redis.zhulei.rke2.example.com"
    );

    let cloud = kustomize("examples/gamezone-repo/overlays/cloud");
    let zone = find(&cloud, "GameZone", "zone1");
    let auth = &zone["spec"]["services"][3]["expose"]["perType"];
    assert!(auth["annotations"]["service.kubernetes.io/qcloud-loadbalancer-internal-subnetid"].is_string());
    for service in zone["spec"]["services"].as_array().unwrap() {
        assert_eq!(service["nodeSelector"]["gamezone.dev/node-pool"], "game", "{service}");
        assert_eq!(service["tolerations"][0]["effect"], "NoSchedule", "{service}");
    }

    // The stress zone: bots are a service without ports, on a node pool of their own in the cloud.
    let stress = kustomize("examples/gamezone-repo/stress/cloud");
    let zone = find(&stress, "GameZone", "stress");
    let services = zone["spec"]["services"].as_array().unwrap();
    let bot = services.iter().find(|s| s["type"] == "bot").expect("a bot service");
    assert!(bot.get("ports").is_none(), "bots have no ports: {bot}");
    assert!(bot["endId"].as_i64().unwrap() > bot["id"].as_i64().unwrap(), "bots are a range: {bot}");
    for service in services {
        let pool = if service["type"] == "bot" { "bots" } else { "game" };
        assert_eq!(service["nodeSelector"]["gamezone.dev/node-pool"], pool, "{service}");
        assert_eq!(service["tolerations"][0]["value"], pool, "{service}");
    }
}

#[test]
fn real_secrets_component_replaces_the_placeholders() {
    common::shared_kubeconfig();
    let repo = tempfile::tempdir().unwrap();
    let copy = Command::new("cp").arg("-r").arg(example()).arg(repo.path().join("repo")).status().unwrap();
    assert!(copy.success(), "copy the example repo");
    let base = repo.path().join("repo");
    let component = base.join("components/real-secrets");
    for entry in std::fs::read_dir(&component).unwrap() {
        let path = entry.unwrap().path();
        if let Some(name) = path.file_name().unwrap().to_str().unwrap().strip_suffix(".example") {
            let filled = std::fs::read_to_string(&path).unwrap().replace("=\n", "=from-env-file\n");
            std::fs::write(component.join(name), filled).unwrap();
        }
    }
    let overlay = base.join("overlays/on-prem/kustomization.yaml");
    let mut text = std::fs::read_to_string(&overlay).unwrap();
    text.push_str("components:\n  - ../../components/real-secrets\n");
    std::fs::write(&overlay, text).unwrap();
    let yaml = KubectlDir::offline().ok(&["kustomize", base.join("overlays/on-prem").to_str().unwrap()]);
    let docs = documents(&yaml).unwrap();
    let mysql = find(&docs, "Secret", "mysql");
    // base64("from-env-file")
    assert_eq!(mysql["data"]["password"], "ZnJvbS1lbnYtZmlsZQ==", "{mysql}");
    assert!(mysql.get("stringData").is_none(), "placeholder values left behind: {mysql}");
    // The env files themselves are git-ignored in the example repo.
    let ignore = std::fs::read_to_string(example().join(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "*.env"), "examples/gamezone-repo/.gitignore must ignore *.env");
}

// ------------------------------------------------------------------ against the API server

/// Applies the CRDs (idempotent, shared control plane) and waits until they serve.
fn install_crds(kubectl: &KubectlDir) {
    kubectl.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=gamezone-manifests-test",
        "-f",
        "deploy/crds.yaml",
    ]);
    kubectl.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{CRD_ZONE}"),
        &format!("crd/{CRD_SERVER}"),
    ]);
}

#[tokio::test]
async fn example_zones_pass_api_server_validation_and_bad_zones_do_not() {
    let ns = common::namespace("manifests-example").await;
    let kubectl = KubectlDir::for_kubeconfig(ns.kubeconfig());
    install_crds(&kubectl);
    // The example repo's (the install manifests are cluster-wide: see the tests on a private control plane).
    for dir in KUSTOMIZATIONS.iter().filter(|d| d.starts_with("examples/")) {
        let docs = kustomize(dir);
        let all: Vec<&Value> = docs.iter().collect();
        kubectl.ok_stdin(&["apply", "--server-side", "--dry-run=server", "-n", &ns.name, "-f", "-"], &to_list(&all));
    }
    // Real objects for the base, so the API server stores (and defaults) the zone.
    let base = kustomize("examples/gamezone-repo/base");
    let without_zone: Vec<&Value> = base.iter().filter(|d| d["kind"] != "GameZone").collect();
    kubectl.ok_stdin(&["apply", "--server-side", "-n", &ns.name, "-f", "-"], &to_list(&without_zone));
    let zone = find(&base, "GameZone", "zone1");
    kubectl.ok_stdin(&["apply", "--server-side", "--dry-run=server", "-n", &ns.name, "-f", "-"], &to_list(&[zone]));

    // The CEL rules are live: each of these edits is rejected with its rule's message.
    let bad: [(&str, Value); 3] = [
        ("each service type may appear once", {
            let mut z = zone.clone();
            let first = z["spec"]["services"][0].clone();
            z["spec"]["services"].as_array_mut().unwrap().push(first);
            z
        }),
        ("endId must be >= id", {
            let mut z = zone.clone();
            z["spec"]["services"][2]["endId"] = 0.into();
            z
        }),
        ("set exactly one source per artifact", {
            let mut z = zone.clone();
            z["spec"]["artifacts"][0]["git"] = serde_json::json!({"url": "https://example.com/x.git"});
            z
        }),
    ];
    for (message, z) in bad {
        match kubectl
            .run(&["apply", "--server-side", "--dry-run=server", "-n", &ns.name, "-f", "-"], Some(&to_list(&[&z])))
        {
            Ok(out) => panic!("the API server accepted a zone that should fail with {message:?}: {out}"),
            Err(e) => assert!(e.contains(message), "expected {message:?} in: {e}"),
        }
    }
    ns.cleanup().await;
}

/// The operator process, killed on drop.
struct Operator {
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `gamezone run --leader-elect` authenticated as deploy/'s ServiceAccount, so only
/// deploy/'s RBAC stands between it and the API.
fn operator_as_service_account(kubectl: &KubectlDir, admin_kubeconfig: &Path, extra: &[&str]) -> Operator {
    let token = kubectl.ok(&["create", "token", "gamezone", "-n", "gamezone-system", "--duration=1h"]);
    let admin: Value = serde_yaml::from_str(&std::fs::read_to_string(admin_kubeconfig).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "gamezone", "user": {"token": token.trim()}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "gamezone"}}],
        "current-context": "c"
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).unwrap()).unwrap();
    let log = dir.path().join("operator.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_gamezone"))
        .args(["run", "--leader-elect", "--http-addr", "127.0.0.1:0", "--log-format", "json", "--kubeconfig"])
        .arg(&path)
        .args(extra)
        .env("POD_NAME", "gamezone-manifests-test")
        .env("POD_NAMESPACE", "gamezone-system")
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("start the gamezone operator");
    Operator { child, log, _dir: dir }
}

/// Polls `kubectl get` output until `done` holds, failing with the operator's log.
async fn wait_kubectl(what: &str, kubectl: &KubectlDir, op: &Operator, args: &[&str], done: impl Fn(&str) -> bool) {
    let started = std::time::Instant::now();
    loop {
        let seen = kubectl.run(args, None).unwrap_or_else(|e| e);
        if done(&seen) {
            return;
        }
        if started.elapsed() > WAIT {
            panic!(
                "timed out waiting for {what}; last `kubectl {}`: {seen}\noperator log:\n{}",
                args.join(" "),
                op.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// deploy/ installs for real (a private control plane: it is cluster-wide), and the operator,
/// holding nothing but deploy/'s ServiceAccount, RBAC and Lease Role, takes a zone through
/// migration to Running and deletes it again without one forbidden request.
#[tokio::test]
async fn deploy_installs_and_its_rbac_runs_a_zone_from_create_to_delete() {
    let cluster = common::start_private(1);
    let kubectl = KubectlDir::for_kubeconfig(cluster.kubeconfig());
    kubectl.ok(&["apply", "--server-side", "-k", "deploy/"]);
    kubectl.ok(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        &format!("crd/{CRD_ZONE}"),
        &format!("crd/{CRD_SERVER}"),
    ]);
    // KWOK plays the operator's pods; the Deployment itself must be valid and roll out.
    kubectl.ok(&["rollout", "status", "-n", "gamezone-system", "deployment/gamezone", "--timeout=90s"]);
    // Client-side apply (`kubectl apply -k deploy/`) works as well.
    kubectl.ok(&["apply", "--dry-run=server", "-k", "deploy/"]);

    let op = operator_as_service_account(&kubectl, cluster.kubeconfig(), &[]);
    let ns = "zone-rbac";
    kubectl.ok(&["create", "namespace", ns]);
    zone_from_create_to_delete(&kubectl, &op, ns).await;
}

/// deploy-namespaced/ installs, and the operator, holding the ClusterRole's rights in `games`
/// only (a RoleBinding), takes a zone there from create to delete, and may read no Secret and
/// make no pod in any other namespace.
#[tokio::test]
async fn the_namespaced_install_runs_a_zone_in_its_namespace_and_reaches_no_other() {
    let cluster = common::start_private(1);
    let kubectl = KubectlDir::for_kubeconfig(cluster.kubeconfig());
    kubectl.ok(&["apply", "--server-side", "-k", "deploy-namespaced/"]);
    kubectl.ok(&["wait", "--for=condition=Established", "--timeout=60s", &format!("crd/{CRD_ZONE}")]);
    let sa = "system:serviceaccount:gamezone-system:gamezone";
    for (verb, what, ns, want) in [
        ("get", "secrets", "games", "yes"),
        ("create", "pods", "games", "yes"),
        ("get", "secrets", "default", "no"),
        ("create", "pods", "kube-system", "no"),
        ("list", "nodes", "default", "yes"),
    ] {
        // `can-i` answers on stdout and exits 1 for "no".
        let said = match kubectl.run(&["auth", "can-i", verb, what, "-n", ns, "--as", sa], None) {
            Ok(out) => out.trim().to_string(),
            Err(e) => e.lines().last().unwrap_or_default().trim().to_string(),
        };
        assert!(said.ends_with(want), "can the operator {verb} {what} in {ns}? it says {said:?}");
    }
    let op = operator_as_service_account(&kubectl, cluster.kubeconfig(), &["--namespace", "games"]);
    zone_from_create_to_delete(&kubectl, &op, "games").await;
}

/// A zone in `ns` reaches Running and goes again, with no request of the operator refused.
async fn zone_from_create_to_delete(kubectl: &KubectlDir, op: &Operator, ns: &str) {
    kubectl.ok(&["create", "secret", "generic", "mysql", "-n", ns, "--from-literal=password=s3cret"]);
    let zone = gamezone_api::fixture::zone("zone1")
        .namespace(ns)
        .spec("zoneId", json!(101))
        .spec("defaultImage", json!("registry.example.com/project1/service:0.1.0"))
        .spec("migration", json!({"image": "registry.example.com/project1/dbmigrater:0.1.0"}))
        .services(json!([
            {"type": "game", "id": 1, "ports": [{"name": "client", "containerPort": 7777, "policy": "Dynamic"}],
             "expose": {"perInstance": {"type": "ClusterIP"}}},
            {"type": "gateway", "id": 1, "endId": 2,
             "ports": [{"name": "client", "containerPort": 8000}],
             "expose": {"perType": {"type": "ClusterIP"}}}
        ]))
        .spec("redis", json!({"host": "redis"}))
        .spec(
            "mysql",
            json!({"host": "mysql", "user": "username1", "database": "project1",
                              "passwordSecretRef": {"name": "mysql", "key": "password"}}),
        )
        .json();
    kubectl.ok_stdin(&["apply", "--server-side", "-f", "-"], &to_list(&[&zone]));

    wait_kubectl(
        "the Lease held by the test operator",
        kubectl,
        op,
        &["get", "lease", "gamezone-operator", "-n", "gamezone-system", "-o", "jsonpath={.spec.holderIdentity}"],
        |s| s == "gamezone-manifests-test",
    )
    .await;
    wait_kubectl(
        "zone1 Running",
        kubectl,
        op,
        &["get", CRD_ZONE, "zone1", "-n", ns, "-o", "jsonpath={.status.phase} {.status.readyText}"],
        |s| s == "Running 3/3",
    )
    .await;
    for (kind, name) in [("configmap", "-l"), ("job", "-l"), ("service", "-l"), ("pod", "-l")] {
        let out = kubectl.ok(&["get", kind, "-n", ns, name, "gamezone.dev/zone=zone1", "-o", "name"]);
        assert!(!out.trim().is_empty(), "the operator made no {kind} for zone1");
    }
    let events = kubectl.ok(&["get", "events.events.k8s.io", "-n", ns, "-o", "jsonpath={.items[*].reason}"]);
    assert!(!events.trim().is_empty(), "the operator published no Events\noperator log:\n{}", op.log());

    kubectl.ok(&["delete", CRD_ZONE, "zone1", "-n", ns, "--wait=false"]);
    wait_kubectl(
        "zone1 and its GameServers gone",
        kubectl,
        op,
        &["get", &format!("{CRD_ZONE},{CRD_SERVER}"), "-n", ns, "-o", "name"],
        |s| s.trim().is_empty(),
    )
    .await;

    let log = op.log();
    let denied: Vec<&str> = log.lines().filter(|l| l.contains("forbidden") || l.contains("Forbidden")).collect();
    assert!(denied.is_empty(), "deploy/rbac.yaml denied the operator:\n{}", denied.join("\n"));
}

// ------------------------------------------------------------------ monitoring

/// `promtool` as `tests/prometheus/prometheus.sh` built it (Debian's cannot read the scrape
/// configuration: it is built without Kubernetes discovery).
fn promtool() -> PathBuf {
    let script = root().join("tests/prometheus/prometheus.sh");
    let out = Command::new(&script).arg("bin").output().expect("run prometheus.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("promtool")
}

#[test]
fn the_monitoring_files_pass_promtool_and_each_alert_fires_for_what_it_is_about() {
    let dir = example().join("monitoring");
    for args in [&["check", "config", "prometheus.yml"][..], &["test", "rules", "rules_test.yml"][..]] {
        let out = Command::new(promtool()).args(args).current_dir(&dir).output().expect("run promtool");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "promtool {args:?}:\n{said}");
    }
    // Every alert has a test.
    let rules = std::fs::read_to_string(dir.join("rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("rules_test.yml")).unwrap();
    for alert in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(tests.contains(&format!("alertname: {alert}")), "rules_test.yml does not test {alert}");
    }
    // The dashboard is Grafana JSON whose every panel has a query.
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("dashboard.json")).unwrap()).unwrap();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty() && targets.iter().all(|t| t["expr"].as_str().is_some_and(|e| !e.is_empty())),
            "{panel}"
        );
    }
}

/// The shipped log pipeline passes the collector's own validation, as shipped, with the
/// collector `tests/otelcol/otelcol.sh` builds (the end-to-end test runs it, adapted to the host);
/// the DaemonSet that runs it names the release that collector is built from, and gives the
/// collector the node name its configuration reads.
#[test]
fn the_log_pipeline_validates_and_its_daemonset_runs_the_tested_release() {
    let dir = example().join("monitoring");
    let script = root().join("tests/otelcol/otelcol.sh");
    let out = Command::new(&script).arg("bin").output().expect("run otelcol.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let otelcol = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("otelcol");
    let out = Command::new(otelcol)
        .args(["validate", "--config=otel-collector.yaml"])
        .env("K8S_NODE_NAME", "node-1")
        .current_dir(&dir)
        .output()
        .expect("run otelcol");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "otelcol validate otel-collector.yaml:\n{said}");

    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("otel-collector.yaml")).unwrap()).unwrap();
    let text = std::fs::read_to_string(dir.join("otel-collector-daemonset.yaml")).unwrap();
    let docs: Vec<serde_yaml::Value> =
        serde_yaml::Deserializer::from_str(&text).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let daemonset = docs.iter().find(|d| d["kind"] == "DaemonSet").expect("a DaemonSet");
    let container = &daemonset["spec"]["template"]["spec"]["containers"][0];
    let go_mod = std::fs::read_to_string(root().join("tests/otelcol/go/go.mod")).unwrap();
    let release = go_mod
        .lines()
        .find_map(|l| l.trim().strip_prefix("go.opentelemetry.io/collector/otelcol v"))
        .expect("go.mod requires the collector");
    let image = container["image"].as_str().unwrap();
    assert_eq!(image.rsplit_once(':').map(|(_, tag)| tag), Some(release), "{image}");
    let node_env = config["processors"]["k8sattributes"]["filter"]["node_from_env_var"].as_str().unwrap();
    let env = container["env"].as_sequence().unwrap();
    assert!(
        env.iter().any(|e| e["name"] == node_env && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "the DaemonSet does not set {node_env} to the pod's node: {env:?}"
    );
    let include = config["receivers"]["filelog"]["include"][0].as_str().unwrap();
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    assert!(
        mounts.iter().any(|m| m["mountPath"].as_str().is_some_and(|p| include.starts_with(&format!("{p}/")))),
        "the DaemonSet mounts nothing at {include}: {mounts:?}"
    );
}
