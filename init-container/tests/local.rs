//! Layering semantics with local sources: order, conflicts, links, modes, empty dirs, no-op,
//! failures keeping the old tree, the lock, and the binary's watch mode.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gamezone_init::apply::{Summary, apply};
use gamezone_init::creds::NoCredentials;
use gamezone_init::plan::{Layer, LocalSource};

use gamezone_init::{Error, Limits};

fn local(dir: &Path, path: &str) -> Layer {
    Layer { path: path.into(), local: Some(LocalSource { path: dir.display().to_string() }), ..Default::default() }
}

fn write(p: PathBuf, content: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

async fn run(layers: Vec<Layer>, root: &Path) -> gamezone_init::Result<Summary> {
    let revs = resolve(&layers, &NoCredentials).await?;
    let revs = revs.into_iter().map(|r| r.revision).collect();
    apply(apply_options(layers, revs, root, Arc::new(NoCredentials))).await
}

#[tokio::test]
async fn override_order_conflicts_links_modes_and_empty_dirs() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    write(a.join("same.txt"), "from a");
    write(a.join("only-a.txt"), "a");
    write(a.join("dir-then-file/x"), "x");
    write(a.join("file-then-dir"), "file");
    write(a.join("deep/keep.txt"), "keep");
    std::fs::create_dir_all(a.join("empty/inner")).unwrap();
    write(a.join("run.sh"), "#!/bin/sh");
    std::fs::set_permissions(a.join("run.sh"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("deep/keep.txt", a.join("link")).unwrap();
    std::os::unix::fs::symlink("../only-a.txt", a.join("deep/up")).unwrap();
    write(b.join("same.txt"), "from b");
    write(b.join("dir-then-file"), "now a file");
    write(b.join("file-then-dir/y"), "y");
    write(b.join("deep/new.txt"), "new");

    let root = t.path().join("root");
    let s = run(vec![local(&a, ""), local(&b, ""), local(&b, "nested/copy")], &root).await.unwrap();
    let cur = root.join("current");
    assert_eq!(read(cur.join("same.txt")), "from b", "later layer wins");
    assert_eq!(read(cur.join("only-a.txt")), "a");
    assert_eq!(read(cur.join("dir-then-file")), "now a file", "a file replaces a directory");
    assert_eq!(read(cur.join("file-then-dir/y")), "y", "a directory replaces a file");
    assert_eq!(read(cur.join("deep/keep.txt")), "keep", "directories merge");
    assert_eq!(read(cur.join("deep/new.txt")), "new");
    assert_eq!(read(cur.join("nested/copy/same.txt")), "from b", "nested layer path");
    assert!(cur.join("empty/inner").is_dir(), "empty directories kept");
    assert_eq!(std::fs::metadata(cur.join("run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(std::fs::metadata(cur.join("same.txt")).unwrap().permissions().mode() & 0o777, 0o644);
    assert_eq!(read(cur.join("link")), "keep", "symlinks inside the tree kept");
    assert_eq!(read(cur.join("deep/up")), "a");
    assert_eq!(gamezone_init::digest_dir(&cur).unwrap(), s.tree_digest);
    let state: serde_json::Value = serde_json::from_str(&read(root.join(".gamezone-state.json"))).unwrap();
    assert_eq!(state["treeDigest"], s.tree_digest.as_str());
    assert_eq!(state["revisions"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn unchanged_run_is_a_fast_no_op() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for i in 0..500 {
        write(src.join(format!("d{}/f{i}", i % 10)), "content");
    }
    let root = t.path().join("root");
    let layers = vec![local(&src, "x")];
    let revs: Vec<String> = resolve(&layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();
    let first = apply(apply_options(layers.clone(), revs.clone(), &root, Arc::new(NoCredentials))).await.unwrap();
    let target = std::fs::read_link(root.join("current")).unwrap();
    let started = Instant::now();
    let again = apply(apply_options(layers, revs, &root, Arc::new(NoCredentials))).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    assert!(again.unchanged);
    assert_eq!(again.tree_digest, first.tree_digest);
    assert_eq!(std::fs::read_link(root.join("current")).unwrap(), target, "not rebuilt");
}

#[tokio::test]
async fn failures_keep_the_previous_tree() {
    let t = tempfile::tempdir().unwrap();
    let (good, evil) = (t.path().join("good"), t.path().join("evil"));
    write(good.join("f"), "good");
    let root = t.path().join("root");
    run(vec![local(&good, "")], &root).await.unwrap();
    let state = read(root.join(".gamezone-state.json"));
    let target = std::fs::read_link(root.join("current")).unwrap();

    std::fs::create_dir_all(&evil).unwrap();
    std::os::unix::fs::symlink("../../../etc/passwd", evil.join("escape")).unwrap();
    let e = run(vec![local(&good, ""), local(&evil, "a")], &root).await.unwrap_err();
    assert!(matches!(e, Error::Hostile { layer: 1, .. }), "{e}");
    assert!(e.to_string().contains("points outside the tree"), "{e}");

    std::fs::remove_file(evil.join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", evil.join("abs")).unwrap();
    let e = run(vec![local(&evil, "")], &root).await.unwrap_err();
    assert!(matches!(e, Error::Hostile { .. }), "{e}");

    let e = run(vec![local(&t.path().join("missing"), "")], &root).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { layer: 0, .. }), "{e}");

    let mut escape = local(&good, "");
    escape.sub_path = Some("../..".into());
    let e = run(vec![escape], &root).await.unwrap_err();
    assert!(e.to_string().contains("subPath"), "{e}");
    let e = run(vec![local(&good, "/abs")], &root).await.unwrap_err();
    assert!(e.to_string().contains("absolute"), "{e}");

    // Pinned revision no longer matches the directory.
    let layers = vec![local(&good, "other")];
    let revs: Vec<String> = resolve(&layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();
    std::thread::sleep(Duration::from_millis(10));
    write(good.join("f"), "changed");
    let e = apply(apply_options(layers, revs, &root, Arc::new(NoCredentials))).await.unwrap_err();
    assert!(matches!(e, Error::RevisionChanged { .. }) && e.to_string().contains("resolve again"), "{e}");

    // Caps.
    let mut o = apply_options(vec![local(&good, "capped")], vec![], &root, Arc::new(NoCredentials));
    o.revisions = resolve(&o.layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();
    o.limits = Limits { max_bytes: 3, max_files: 10 };
    let e = apply(o).await.unwrap_err();
    assert!(matches!(e, Error::Limit { .. }), "{e}");

    assert_eq!(read(root.join(".gamezone-state.json")), state);
    assert_eq!(std::fs::read_link(root.join("current")).unwrap(), target);
    assert_eq!(read(root.join("current/f")), "good");
    let leftovers: Vec<_> = std::fs::read_dir(root.join(".trees")).unwrap().flatten().map(|d| d.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "staging cleaned: {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_runs_take_turns() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    for i in 0..300 {
        write(a.join(format!("f{i}")), "a");
        write(b.join(format!("f{i}")), "b");
    }
    let root = t.path().join("root");
    let (ra, rb) = tokio::join!(run(vec![local(&a, "")], &root), run(vec![local(&b, "")], &root));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let cur = root.join("current");
    let digest = gamezone_init::digest_dir(&cur).unwrap();
    assert!(digest == ra.tree_digest || digest == rb.tree_digest);
    let state: serde_json::Value = serde_json::from_str(&read(root.join(".gamezone-state.json"))).unwrap();
    assert_eq!(state["treeDigest"], digest.as_str(), "state matches the tree");
    let content = read(cur.join("f0"));
    for i in 0..300 {
        assert_eq!(read(cur.join(format!("f{i}"))), content, "tree is from one run only");
    }
    assert_eq!(std::fs::read_dir(root.join(".trees")).unwrap().count(), 1);
}

#[test]
fn binary_resolve_apply_and_watch() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(src.join("cfg.ini"), "v1");
    let root = t.path().join("root");
    let plan = format!(r#"[{{"path":"cfg","local":{{"path":"{}"}}}}]"#, src.display());
    let out = run_cmd(init_cmd().args(["resolve", "--plan-json", &plan]));
    let revs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(revs[0]["layer"], 0);
    assert!(revs[0]["revision"].as_str().unwrap().starts_with("sha256:"));
    let out = init_cmd()
        .args(["apply", "--root"])
        .arg(&root)
        .env("GAMEZONE_LAYERS", &plan)
        .env("GAMEZONE_REVISIONS", &out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let summary = stderr.lines().find(|l| l.contains("\"summary\"")).expect("summary line");
    let v: serde_json::Value = serde_json::from_str(summary).unwrap();
    assert_eq!(v["files"], 1);
    assert!(v["tree_digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(read(root.join("current/cfg/cfg.ini")), "v1");

    let mut child = init_cmd()
        .args(["watch", "--interval", "1h", "--root"])
        .arg(&root)
        .env("GAMEZONE_LAYERS", &plan)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    write(src.join("cfg.ini"), "v2");
    let started = Instant::now();
    while read(root.join("current/cfg/cfg.ini")) != "v2" {
        assert!(started.elapsed() < Duration::from_secs(10), "watch did not pick up the local change");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn run_cmd(cmd: &mut std::process::Command) -> String {
    common::run(cmd)
}

#[tokio::test]
async fn empty_revisions_are_resolved_at_apply_time() {
    // The operator cannot see a node's folders, so it leaves local layers unpinned ("").
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(src.join("a.txt"), "one");
    let root = t.path().join("root");
    let opts = || apply_options(vec![local(&src, "")], vec![String::new()], &root, Arc::new(NoCredentials));
    let first = apply(opts()).await.unwrap();
    assert_eq!(read(root.join("current/a.txt")), "one");
    let state: serde_json::Value = serde_json::from_str(&read(root.join(".gamezone-state.json"))).unwrap();
    assert!(state["revisions"][0].as_str().unwrap().starts_with("sha256:"), "the resolved revision is recorded");
    assert!(apply(opts()).await.unwrap().unchanged, "same content: nothing to do");
    write(src.join("a.txt"), "two!");
    let third = apply(opts()).await.unwrap();
    assert!(!third.unchanged && third.tree_digest != first.tree_digest);
    assert_eq!(read(root.join("current/a.txt")), "two!");
}
