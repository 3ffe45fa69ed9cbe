//! Layers packed into a real OCI registry (CNCF Distribution, Debian's `docker-registry`) and
//! copied back from it: each pin is fetched from its origin once, a tree copied from the
//! registry is the tree the origins give, and no origin is asked while copying.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use gamezone_init::apply::apply;
use gamezone_init::creds::NoCredentials;
use gamezone_init::oci::{Registry, RegistryOptions, pack};
use gamezone_init::plan::{GitSource, Layer, LocalSource};

fn git_layer(port: u16, path: &str, sub: Option<&str>) -> Layer {
    Layer {
        path: path.into(),
        sub_path: sub.map(str::to_owned),
        git: Some(GitSource {
            url: format!("git://127.0.0.1:{port}/game"),
            branch: Some("main".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn local_layer(dir: &Path, path: &str) -> Layer {
    Layer { path: path.into(), local: Some(LocalSource { path: dir.display().to_string() }), ..Default::default() }
}

/// For the binary: the plan JSON of one local layer of `dir`, its pins as `gamezone-init
/// resolve` prints them, and the repository of the registry on `port`.
fn cli_plan(dir: &Path, port: u16) -> (String, String, String) {
    let plan = serde_json::to_string(&vec![local_layer(dir, "")]).unwrap();
    let pins = run(init_cmd().args(["resolve", "--plan-json", &plan]));
    (plan, pins, format!("127.0.0.1:{port}/gamezone/layers"))
}

fn registry(port: u16) -> Registry {
    let o = RegistryOptions { repository: format!("127.0.0.1:{port}/gamezone/layers"), plain_http: true, basic: None };
    Registry::new(&o).unwrap()
}

/// Upload-pack requests the git daemon served, from its log.
fn fetches(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().lines().filter(|l| l.contains("Request upload-pack")).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn each_pin_is_fetched_once_and_a_tree_copied_from_the_registry_is_the_origins_tree() {
    let t = tempfile::tempdir().unwrap();
    let reg = docker_registry(&t.path().join("registry"));
    let repo = Repo::init(&t.path().join("git"), "game");
    repo.write("config/server.json", "{\"motd\": \"hi\"}").write("maps/a.map", "map a").write("README", "top");
    repo.commit("one");
    let log = t.path().join("daemon.log");
    let mut daemon = logged_git_daemon(&t.path().join("git"), &log);
    let local = t.path().join("local");
    std::fs::create_dir_all(local.join("config")).unwrap();
    std::fs::write(local.join("config/server.json"), "{\"motd\": \"local wins\"}").unwrap();
    std::os::unix::fs::symlink("server.json", local.join("config/latest.json")).unwrap();

    let layers =
        vec![git_layer(daemon.port, "", None), git_layer(daemon.port, "cfg", Some("config")), local_layer(&local, "")];
    let pins: Vec<String> = resolve(&layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();

    // The origins' tree, as every pod makes it today.
    let direct = apply(apply_options(layers.clone(), pins.clone(), t.path().join("direct"), Arc::new(NoCredentials)))
        .await
        .unwrap();
    let before = fetches(&log);

    // Pack: one fetch of the repository's pin (its two layers share the fetch); a second pack
    // fetches nothing.
    let packing = apply_options(layers.clone(), pins.clone(), t.path().join("work"), Arc::new(NoCredentials));
    let first = pack(&packing, &registry(reg.port)).await.unwrap();
    assert!(first.layers.iter().all(|p| p.fetched), "{first:?}");
    assert_eq!(fetches(&log) - before, 1, "one upload-pack for the pin");
    let again = pack(&packing, &registry(reg.port)).await.unwrap();
    assert!(again.layers.iter().all(|p| !p.fetched), "{again:?}");
    assert_eq!(fetches(&log) - before, 1, "the second pack asked no origin");
    assert_eq!(
        first.layers.iter().map(|p| &p.digest).collect::<Vec<_>>(),
        again.layers.iter().map(|p| &p.digest).collect::<Vec<_>>()
    );
    // The tree image: the layers merged (the local config over the repository's) make the
    // origins' tree; the second pack found it.
    assert_eq!(first.tree.tree_digest, direct.tree_digest);
    assert_eq!(again.tree, first.tree);
    let direct_shape = gamezone_init::shape_of_dir(&t.path().join("direct/current")).unwrap();
    assert_eq!(first.tree.tree_shape.as_deref(), Some(direct_shape.as_str()), "the shape a mount is checked against");
    let tree = skopeo_manifest(&first.tree.image);
    assert_eq!(tree["annotations"][gamezone_init::oci::TREE_SHAPE_ANNOTATION], direct_shape.as_str());
    let listed: Vec<&str> = tree["layers"].as_array().unwrap().iter().map(|l| l["digest"].as_str().unwrap()).collect();
    assert_eq!(listed, first.layers.iter().map(|p| p.digest.as_str()).collect::<Vec<_>>());

    // skopeo, a client no one here wrote, sees one OCI image per layer.
    let manifest = skopeo_manifest(&format!("127.0.0.1:{}/gamezone/layers:{}", reg.port, first.layers[0].key));
    assert_eq!(manifest["layers"][0]["digest"], first.layers[0].digest.as_str());
    assert_eq!(manifest["layers"][0]["mediaType"], "application/vnd.oci.image.layer.v1.tar");

    // A new pin of the local layer: only it is fetched and pushed; the new tree image lists
    // the repository's layers as they were, and its digest (from their entries, read back
    // from the registry) is the new origins' tree.
    std::fs::write(local.join("config/server.json"), "{\"motd\": \"local, again\"}").unwrap();
    let repinned: Vec<String> =
        resolve(&layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();
    assert_eq!((repinned[0] == pins[0], repinned[2] == pins[2]), (true, false));
    let direct2 =
        apply(apply_options(layers.clone(), repinned.clone(), t.path().join("direct2"), Arc::new(NoCredentials)))
            .await
            .unwrap();
    let before = fetches(&log);
    let second = pack(
        &apply_options(layers.clone(), repinned, t.path().join("work2"), Arc::new(NoCredentials)),
        &registry(reg.port),
    )
    .await
    .unwrap();
    assert_eq!(second.layers.iter().map(|p| p.fetched).collect::<Vec<_>>(), [false, false, true]);
    assert_eq!(fetches(&log), before, "the held layers asked no origin");
    assert_eq!(second.tree.tree_digest, direct2.tree_digest);
    let direct2_shape = gamezone_init::shape_of_dir(&t.path().join("direct2/current")).unwrap();
    assert_eq!(second.tree.tree_shape, Some(direct2_shape), "from the held layers' listings");
    assert_ne!(second.tree.image, first.tree.image);
    let tree2 = skopeo_manifest(&second.tree.image);
    assert_eq!(tree2["layers"][0], tree["layers"][0]);
    assert_eq!(tree2["layers"][1], tree["layers"][1]);
    assert_ne!(tree2["layers"][2], tree["layers"][2]);
    std::fs::write(local.join("config/server.json"), "{\"motd\": \"local wins\"}").unwrap();

    // Origins gone (the git daemon stopped, the local folder removed): a copy from the registry
    // is the origins' tree, byte for byte.
    daemon.kill();
    std::fs::remove_dir_all(&local).unwrap();
    let mut o = apply_options(layers.clone(), pins.clone(), t.path().join("copied"), Arc::new(NoCredentials));
    o.registry = Some(registry(reg.port));
    let copied = apply(o).await.unwrap();
    assert_eq!(copied.tree_digest, direct.tree_digest);
    assert_eq!(read(t.path().join("copied/current/config/server.json")), "{\"motd\": \"local wins\"}");
    assert_eq!(read(t.path().join("copied/current/cfg/server.json")), "{\"motd\": \"hi\"}");

    // A pin never packed is named, with what to do.
    let mut unpacked = pins.clone();
    unpacked[0] = "0".repeat(40);
    let mut o = apply_options(layers, unpacked, t.path().join("missing"), Arc::new(NoCredentials));
    o.registry = Some(registry(reg.port));
    let e = apply(o).await.unwrap_err().to_string();
    assert!(e.contains("was never packed") && e.contains("gamezone-init pack"), "{e}");
    assert!(!t.path().join("missing/current").exists(), "nothing half-made");
}

/// The manifest of `image` (`host:port/path:tag` or `…@sha256:…`), as skopeo reads it.
fn skopeo_manifest(image: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--raw", &format!("docker://{image}")])
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(out.status.success(), "skopeo inspect {image}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn the_binary_packs_and_applies_from_the_registry_and_says_what_is_missing() {
    let t = tempfile::tempdir().unwrap();
    let reg = docker_registry(&t.path().join("registry"));
    let local = t.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("a.txt"), "a").unwrap();
    let (plan, pins, repository) = cli_plan(&local, reg.port);
    let packed = run(init_cmd()
        .args(["pack", "--plan-json", &plan, "--revisions", &pins, "--registry", &repository])
        .arg("--registry-plain-http")
        .arg("--root")
        .arg(t.path().join("work")));
    let packed: serde_json::Value = serde_json::from_str(&packed).unwrap();
    assert_eq!(packed["layers"][0]["fetched"], true);
    std::fs::remove_dir_all(&local).unwrap();
    run(init_cmd()
        .args(["apply", "--plan-json", &plan, "--revisions", &pins, "--registry", &repository, "--registry-plain-http"])
        .arg("--root")
        .arg(t.path().join("root")));
    assert_eq!(read(t.path().join("root/current/a.txt")), "a");

    // No registry at that address: the message names it and the command fails.
    let out = init_cmd()
        .args(["apply", "--plan-json", &plan, "--revisions", &pins, "--registry-plain-http", "--retries", "1"])
        .args(["--registry", &format!("127.0.0.1:{}/gamezone/layers", free_port())])
        .arg("--root")
        .arg(t.path().join("none"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("gamezone/layers"), "{err}");
}

#[test]
fn live_edits_are_laid_over_layers_copied_from_the_registry() {
    let t = tempfile::tempdir().unwrap();
    let reg = docker_registry(&t.path().join("registry"));
    let local = t.path().join("local");
    std::fs::create_dir_all(local.join("config")).unwrap();
    std::fs::write(local.join("config/server.json"), "pinned").unwrap();
    std::fs::write(local.join("map.txt"), "map").unwrap();
    let (plan, pins, repository) = cli_plan(&local, reg.port);
    run(init_cmd()
        .args(["pack", "--plan-json", &plan, "--revisions", &pins, "--registry", &repository, "--registry-plain-http"])
        .arg("--root")
        .arg(t.path().join("work")));
    std::fs::remove_dir_all(&local).unwrap();

    // The edits sidecar's command: pinned, the base from the registry, edits on top.
    let edits = t.path().join("edits");
    std::fs::create_dir_all(edits.join("config")).unwrap();
    std::fs::write(edits.join("config/server.json"), "edited").unwrap();
    let root = t.path().join("root");
    let mut watch = init_cmd()
        .args(["watch", "--plan-json", &plan, "--revisions", &pins, "--registry", &repository, "--registry-plain-http"])
        .args(["--edits-quiet", "100ms", "--edits-poll", "100ms"])
        .arg("--edits")
        .arg(&edits)
        .arg("--root")
        .arg(&root)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let ok = loop {
        let edited = std::fs::read_to_string(root.join("current/config/server.json")).ok();
        let base = std::fs::read_to_string(root.join("current/map.txt")).ok();
        if edited.as_deref() == Some("edited") && base.as_deref() == Some("map") {
            break true;
        }
        if start.elapsed() > std::time::Duration::from_secs(20) || watch.try_wait().unwrap().is_some() {
            break false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    assert!(ok, "the edit over the packed base never showed: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_layer_is_refused_before_anything_is_pushed() {
    let t = tempfile::tempdir().unwrap();
    let reg = docker_registry(&t.path().join("registry"));
    let local = t.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("ok.txt"), "fine").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", local.join("passwd")).unwrap();
    let layers = vec![local_layer(&local, "")];
    let pins: Vec<String> = resolve(&layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();
    let packing = apply_options(layers, pins, t.path().join("work"), Arc::new(NoCredentials));
    let e = pack(&packing, &registry(reg.port)).await.unwrap_err();
    assert!(matches!(e, gamezone_init::Error::Hostile { .. }), "{e}");
    // The registry holds no tag at all: skopeo finds no repository, or an empty one.
    let out = Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false", &format!("docker://127.0.0.1:{}/gamezone/layers", reg.port)])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() || !listed.contains("l-"), "{listed}");
    let log = std::fs::read_to_string(t.path().join("registry/registry.log")).unwrap_or_default();
    assert!(!log.contains("PUT /v2/") && !log.contains("PATCH /v2/"), "something was pushed: {log}");
}

#[test]
fn a_registry_with_credentials_takes_them_from_a_docker_config_and_refuses_without() {
    let t = tempfile::tempdir().unwrap();
    let reg = docker_registry_for(&t.path().join("registry"), &[("packer", "s3cret-pw")]);
    let local = t.path().join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("a.txt"), "a").unwrap();
    let (plan, pins, repository) = cli_plan(&local, reg.port);
    let pack = |auth: Option<&Path>, root: &str| {
        let mut cmd = init_cmd();
        cmd.args(["pack", "--plan-json", &plan, "--revisions", &pins, "--registry", &repository])
            .args(["--registry-plain-http", "--retries", "1"])
            .arg("--root")
            .arg(t.path().join(root));
        if let Some(a) = auth {
            cmd.arg("--registry-auth").arg(a);
        }
        cmd.output().unwrap()
    };

    // Anonymous: refused, and the message says what to check.
    let out = pack(None, "anon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("check the registry credentials"), "{err}");

    // A dockerconfigjson Secret's file for another host: named, with what to add.
    let other = t.path().join("other.json");
    std::fs::write(&other, r#"{"auths": {"elsewhere:5000": {"auth": "eDp5"}}}"#).unwrap();
    let err = String::from_utf8_lossy(&pack(Some(&other), "other").stderr).into_owned();
    assert!(err.contains(&format!("no credentials for 127.0.0.1:{}", reg.port)), "{err}");

    // The right one: packed, then copied back with it.
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("packer:s3cret-pw");
    let auth = t.path().join("config.json");
    std::fs::write(&auth, format!(r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{basic}"}}}}}}"#, reg.port)).unwrap();
    let out = pack(Some(&auth), "work");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    run(init_cmd()
        .args(["apply", "--plan-json", &plan, "--revisions", &pins, "--registry", &repository, "--registry-plain-http"])
        .arg("--registry-auth")
        .arg(&auth)
        .arg("--root")
        .arg(t.path().join("root")));
    assert_eq!(read(t.path().join("root/current/a.txt")), "a");
}

#[tokio::test(flavor = "multi_thread")]
async fn pruning_keeps_the_trees_in_use_and_their_layers_and_the_registry_s_gc_frees_the_rest() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("registry");
    let reg = docker_registry(&dir);
    let (base, config) = (t.path().join("base"), t.path().join("config"));
    std::fs::create_dir_all(&base).unwrap();
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(base.join("map.bin"), "m".repeat(64 << 10)).unwrap();
    std::fs::write(config.join("server.json"), "one").unwrap();
    let layers = vec![local_layer(&base, ""), local_layer(&config, "config")];
    let pin = |layers: Vec<Layer>| async move {
        let pins: Vec<String> =
            resolve(&layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();
        pins
    };
    let pins1 = pin(layers.clone()).await;
    let v1 =
        pack(&apply_options(layers.clone(), pins1, t.path().join("w1"), Arc::new(NoCredentials)), &registry(reg.port))
            .await
            .unwrap();
    std::fs::write(config.join("server.json"), "two").unwrap();
    let pins2 = pin(layers.clone()).await;
    let v2 = pack(
        &apply_options(layers.clone(), pins2.clone(), t.path().join("w2"), Arc::new(NoCredentials)),
        &registry(reg.port),
    )
    .await
    .unwrap();
    let digest_of = |image: &str| image.split_once('@').unwrap().1.to_owned();
    let keep = gamezone_init::prune::Keep { trees: [digest_of(&v2.tree.image)].into(), ..Default::default() };

    // A dry run deletes nothing; then the old tree and the old config layer go, nothing else.
    let dry = gamezone_init::prune::prune(&registry(reg.port), &keep, true).await.unwrap();
    let names = |p: &gamezone_init::prune::Pruned| {
        let mut v: Vec<String> = p.deleted.iter().map(|t| t.tag.clone()).collect();
        v.sort();
        v
    };
    let old_tree = gamezone_init::oci::tree_key(v1.layers.iter().map(|l| l.key.as_str()));
    let mut expected = vec![old_tree, v1.layers[1].key.clone()];
    expected.sort();
    assert_eq!(names(&dry), expected);
    assert_eq!(registry(reg.port).tagged().await.unwrap().len(), 5, "two trees, three layers, all still there");
    let done = gamezone_init::prune::prune(&registry(reg.port), &keep, false).await.unwrap();
    assert_eq!(names(&done), expected);
    let left: Vec<String> = registry(reg.port).tagged().await.unwrap().into_iter().map(|t| t.tag).collect();
    assert_eq!(left.len(), 3, "{left:?}");

    // The registry's garbage collection frees the old config layer's blob, not the shared one.
    let blob = |d: &str| dir.join("data/docker/registry/v2/blobs/sha256").join(&d[7..9]).join(&d[7..]);
    assert!(blob(&v1.layers[1].digest).exists());
    let out = Command::new("/usr/bin/docker-registry")
        .args(["garbage-collect"])
        .arg(dir.join("config.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!blob(&v1.layers[1].digest).exists(), "the pruned layer's blob is freed");
    assert!(blob(&v2.layers[0].digest).exists() && blob(&v2.layers[1].digest).exists());

    // What is in use still copies.
    let mut o = apply_options(layers, pins2, t.path().join("copied"), Arc::new(NoCredentials));
    o.registry = Some(registry(reg.port));
    assert_eq!(apply(o).await.unwrap().tree_digest, v2.tree.tree_digest);
}
