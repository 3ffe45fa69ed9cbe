//! git layers against a real `git daemon` and git smart HTTP behind basic auth.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gamezone_init::Error;
use gamezone_init::apply::apply;
use gamezone_init::creds::{DirCredentials, NoCredentials};
use gamezone_init::plan::{GitSource, Layer, SecretRef};

use gamezone_init::retry::RetryPolicy;

fn git_layer(url: &str, path: &str, sub: Option<&str>) -> Layer {
    Layer {
        path: path.into(),
        sub_path: sub.map(Into::into),
        git: Some(GitSource { url: url.into(), branch: Some("main".into()), ..Default::default() }),
        ..Default::default()
    }
}

fn quick() -> RetryPolicy {
    RetryPolicy { attempts: 2, base: Duration::from_millis(50), max: Duration::from_millis(100) }
}

#[tokio::test(flavor = "multi_thread")]
async fn git_daemon_branch_subpath_and_pinned_commit() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = Repo::init(&base, "game");
    repo.write("config/a.ini", "v1").write("config/sub/b.ini", "b").write("assets/big.bin", "x").write("README", "r");
    let first = repo.commit("one");
    let server = git_daemon(&base);
    let url = format!("git://127.0.0.1:{}/game", server.port);

    let layers = vec![git_layer(&url, "etc/game", Some("config"))];
    let revs = resolve(&layers, &NoCredentials).await.unwrap();
    assert_eq!(revs[0].revision, first);
    assert_eq!(revs[0].source, format!("git {url}"));

    let root = t.path().join("root");
    let mut o = apply_options(layers.clone(), vec![first.clone()], &root, Arc::new(NoCredentials));
    o.retry = quick();
    let s = apply(o).await.unwrap();
    assert_eq!(read(root.join("current/etc/game/a.ini")), "v1");
    assert_eq!(read(root.join("current/etc/game/sub/b.ini")), "b");
    assert!(!root.join("current/etc/game/big.bin").exists(), "only subPath is written");
    assert!(!root.join("current/assets").exists());
    assert_eq!(s.files, 2);
    assert_eq!(gamezone_init::digest_dir(&root.join("current")).unwrap(), s.tree_digest);
    let cache = std::fs::read_dir(root.join(".cache/git")).unwrap().next().unwrap().unwrap().path();
    assert!(cache.join("shallow").is_file(), "fetched with depth 1");

    // The branch moves on; the pinned commit still applies, the new one after resolving.
    repo.write("config/a.ini", "v2");
    let second = repo.commit("two");
    let revs = resolve(&layers, &NoCredentials).await.unwrap();
    assert_eq!(revs[0].revision, second);
    let o = apply_options(layers.clone(), vec![second], &root, Arc::new(NoCredentials));
    apply(o).await.unwrap();
    assert_eq!(read(root.join("current/etc/game/a.ini")), "v2");
    let mut pinned = layers[0].clone();
    pinned.git.as_mut().unwrap().branch = None;
    pinned.git.as_mut().unwrap().commit = Some(first.clone());
    let revs = resolve(std::slice::from_ref(&pinned), &NoCredentials).await.unwrap();
    assert_eq!(revs[0].revision, first);
    let o = apply_options(vec![pinned], vec![first], &root, Arc::new(NoCredentials));
    apply(o).await.unwrap();
    assert_eq!(read(root.join("current/etc/game/a.ini")), "v1");
    assert_eq!(std::fs::read_dir(root.join(".trees")).unwrap().count(), 1, "old trees are removed");
}

#[tokio::test(flavor = "multi_thread")]
async fn git_tag_and_missing_branch() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = Repo::init(&base, "r");
    repo.write("f", "1");
    let c1 = repo.commit("one");
    git(&repo.dir, &["tag", "-a", "v1", "-m", "v1"]);
    repo.write("f", "2");
    repo.commit("two");
    let server = git_daemon(&base);
    let url = format!("git://127.0.0.1:{}/r", server.port);
    let mut l = git_layer(&url, "", None);
    l.git.as_mut().unwrap().branch = None;
    l.git.as_mut().unwrap().tag = Some("v1".into());
    let revs = resolve(std::slice::from_ref(&l), &NoCredentials).await.unwrap();
    assert_eq!(revs[0].revision, c1, "annotated tags resolve to the commit");
    let root = t.path().join("root");
    apply(apply_options(vec![l], vec![c1], &root, Arc::new(NoCredentials))).await.unwrap();
    assert_eq!(read(root.join("current/f")), "1");

    let mut l = git_layer(&url, "", None);
    l.git.as_mut().unwrap().branch = Some("nope".into());
    let e = resolve(&[l], &NoCredentials).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { layer: 0, .. }), "{e}");
    assert!(e.to_string().contains("branch `nope` not found"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn git_fetch_of_a_tip_without_allow_reachable_sha1_in_want() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = Repo::init(&base, "strict");
    git(&repo.dir, &["config", "uploadpack.allowReachableSHA1InWant", "false"]);
    repo.write("d/f", "tip");
    let tip = repo.commit("one");
    let server = git_daemon(&base);
    let url = format!("git://127.0.0.1:{}/strict", server.port);
    let layers = vec![git_layer(&url, "x", Some("d"))];
    let root = t.path().join("root");
    let mut o = apply_options(layers, vec![tip], &root, Arc::new(NoCredentials));
    o.retry = quick();
    apply(o).await.unwrap();
    assert_eq!(read(root.join("current/x/f")), "tip");
}

#[tokio::test(flavor = "multi_thread")]
async fn git_http_basic_auth_and_wrong_password() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = Repo::init(&base, "game.git");
    repo.write("cfg/x", "x").write("bin/run.sh", "#!/bin/sh\n").write("link", "");
    std::fs::remove_file(repo.dir.join("link")).unwrap();
    std::os::unix::fs::symlink("cfg/x", repo.dir.join("link")).unwrap();
    Command::new("chmod").arg("+x").arg(repo.dir.join("bin/run.sh")).status().unwrap();
    let head = repo.commit("one");
    let password = "hunter2-Very-Secret";
    let server = git_http(&base, "alice", password);
    let url = format!("http://127.0.0.1:{}/game.git", server.port);
    let secrets = t.path().join("secrets");
    secret(&secrets, "git-auth", &[("username", "alice\n"), ("password", &format!("{password}\n"))]);
    secret(&secrets, "bad-auth", &[("username", "alice"), ("password", "wrong-password-xyz")]);
    let mut layer = git_layer(&url, "app", None);
    layer.git.as_mut().unwrap().secret_ref = Some(SecretRef { name: "git-auth".into() });
    let creds = Arc::new(DirCredentials::new(&secrets));

    let revs = resolve(std::slice::from_ref(&layer), creds.as_ref()).await.unwrap();
    assert_eq!(revs[0].revision, head);
    let root = t.path().join("root");
    let mut o = apply_options(vec![layer.clone()], vec![head.clone()], &root, creds.clone());
    o.retry = quick();
    apply(o).await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("current/app/bin/run.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755, "exec bit kept");
    assert_eq!(std::fs::read_link(root.join("current/app/link")).unwrap().to_str(), Some("cfg/x"));
    let state_before = read(root.join(".gamezone-state.json"));
    assert!(!state_before.contains(password));

    // Wrong password: resolve and apply fail fast, naming layer, source and Secret keys.
    let mut bad = layer.clone();
    bad.git.as_mut().unwrap().secret_ref = Some(SecretRef { name: "bad-auth".into() });
    let e = resolve(std::slice::from_ref(&bad), creds.as_ref()).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Auth { layer: 0, .. }), "{msg}");
    assert!(
        msg.contains(&format!("layer 0 (git {url})"))
            && msg.contains("Secret `bad-auth`")
            && msg.contains("`username`/`password`"),
        "{msg}"
    );
    repo.write("cfg/x", "new");
    let newer = repo.commit("two");
    let mut o = apply_options(vec![bad.clone()], vec![newer], &root, creds.clone());
    o.retry = quick();
    let e = apply(o).await.unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e}");
    assert!(!e.to_string().contains("wrong-password-xyz"));
    assert_eq!(read(root.join(".gamezone-state.json")), state_before, "failed run keeps the state");
    assert_eq!(read(root.join("current/app/cfg/x")), "x");

    // Through the binary: logs carry neither password; exit code non-zero with the message.
    let plan = serde_json::to_string(&vec![bad]).unwrap();
    let out = init_cmd()
        .args(["apply", "--root"])
        .arg(&root)
        .arg("--secrets-dir")
        .arg(&secrets)
        .args(["--retries", "1"])
        .env("GAMEZONE_LAYERS", &plan)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(!stderr.contains("wrong-password-xyz") && !stderr.contains(password), "{stderr}");
    let plan = serde_json::to_string(&vec![layer]).unwrap();
    let out = init_cmd()
        .args(["apply", "--root"])
        .arg(&root)
        .arg("--secrets-dir")
        .arg(&secrets)
        .env("GAMEZONE_LAYERS", &plan)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains(password), "{stderr}");
    assert!(!read(root.join(".gamezone-state.json")).contains(password));
}

#[tokio::test(flavor = "multi_thread")]
async fn git_url_credentials_are_redacted() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = Repo::init(&base, "r.git");
    repo.write("f", "1");
    let head = repo.commit("one");
    let server = git_http(&base, "bob", "url-secret-123");
    let url = format!("http://bob:url-secret-123@127.0.0.1:{}/r.git", server.port);
    let layers = vec![git_layer(&url, "", None)];
    let revs = resolve(&layers, &NoCredentials).await.unwrap();
    assert_eq!(revs[0].revision, head);
    let json = serde_json::to_string(&revs).unwrap();
    assert!(!json.contains("url-secret-123"), "{json}");
    let root = t.path().join("root");
    apply(apply_options(layers, vec![head], &root, Arc::new(NoCredentials))).await.unwrap();
    assert!(!read(root.join(".gamezone-state.json")).contains("url-secret-123"));
}

/// True when the layer's cache repository under `root` holds the object `oid`.
fn cache_has(root: &std::path::Path, oid: &str) -> bool {
    let cache = std::fs::read_dir(root.join(".cache/git")).unwrap().next().unwrap().unwrap().path();
    Command::new("git").args(["cat-file", "-e", oid]).current_dir(&cache).status().unwrap().success()
}

/// A repository with an executable, a symlink and nested folders under `game/`, and a large
/// file outside it; partial fetches allowed as the caller says.
fn partial_repo(base: &std::path::Path, name: &str, allow_filter: bool) -> Repo {
    let repo = Repo::init(base, name);
    git(&repo.dir, &["config", "uploadpack.allowFilter", if allow_filter { "true" } else { "false" }]);
    repo.write("game/cfg/a.ini", "a")
        .write("game/bin/run.sh", "#!/bin/sh\necho run\n")
        .write("game/deep/er/x.txt", "x")
        .write("assets/big.bin", &"B".repeat(100_000))
        .write("README", "r");
    std::os::unix::fs::symlink("cfg/a.ini", repo.dir.join("game/link")).unwrap();
    std::os::unix::fs::symlink("../cfg/a.ini", repo.dir.join("game/deep/a")).unwrap();
    Command::new("chmod").arg("+x").arg(repo.dir.join("game/bin/run.sh")).status().unwrap();
    repo
}

fn assert_game_tree(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(read(dir.join("cfg/a.ini")), "a");
    assert_eq!(read(dir.join("deep/er/x.txt")), "x");
    assert_eq!(read(dir.join("bin/run.sh")), "#!/bin/sh\necho run\n");
    let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode("bin/run.sh"), 0o755, "exec bit kept");
    assert_eq!(mode("cfg/a.ini"), 0o644);
    assert_eq!(std::fs::read_link(dir.join("link")).unwrap().to_str(), Some("cfg/a.ini"));
    assert_eq!(std::fs::read_link(dir.join("deep/a")).unwrap().to_str(), Some("../cfg/a.ini"));
    assert_eq!(read(dir.join("deep/a")), read(dir.join("cfg/a.ini")));
}

/// Runs the binary's `apply` for `layers` and returns its (JSON) log.
fn apply_bin(root: &std::path::Path, secrets: Option<&std::path::Path>, layers: &[Layer]) -> (bool, String) {
    let mut cmd = init_cmd();
    cmd.args(["apply", "--root"]).arg(root).args(["--retries", "1"]);
    if let Some(s) = secrets {
        cmd.arg("--secrets-dir").arg(s);
    }
    let out = cmd.env("GAMEZONE_LAYERS", serde_json::to_string(layers).unwrap()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn git_daemon_partial_fetch_brings_only_subpath_blobs() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = partial_repo(&base, "game", true);
    // Protocol v2 lets the client want any commit: no allowReachableSHA1InWant needed.
    git(&repo.dir, &["config", "uploadpack.allowReachableSHA1InWant", "false"]);
    let first = repo.commit("one");
    let big = git(&repo.dir, &["rev-parse", "HEAD:assets/big.bin"]);
    let inside = git(&repo.dir, &["rev-parse", "HEAD:game/deep/er/x.txt"]);
    repo.write("game/cfg/a.ini", "a2");
    let second = repo.commit("two");
    let server = git_daemon(&base);
    let url = format!("git://127.0.0.1:{}/game", server.port);

    // The pinned commit is no longer the branch tip.
    let layers = vec![git_layer(&url, "srv", Some("game"))];
    let root = t.path().join("root");
    let (ok, log) = apply_bin(&root, None, &layers);
    assert!(ok, "{log}");
    assert!(log.contains(r#""via":"protocol v2""#) && log.contains(r#""filtered":true"#), "{log}");
    let mut o = apply_options(layers.clone(), vec![first.clone()], &root, Arc::new(NoCredentials));
    o.retry = quick();
    let s = apply(o).await.unwrap();
    assert_game_tree(&root.join("current/srv"));
    assert!(!root.join("current/srv/assets").exists() && !root.join("current/assets").exists());
    assert_eq!(s.files, 3, "regular files; the two symlinks are not counted");
    assert_eq!(gamezone_init::digest_dir(&root.join("current")).unwrap(), s.tree_digest);
    assert!(cache_has(&root, &first) && cache_has(&root, &inside), "commit and subPath blobs fetched");
    assert!(!cache_has(&root, &big), "blobs outside subPath are not fetched");
    let cache = std::fs::read_dir(root.join(".cache/git")).unwrap().next().unwrap().unwrap().path();
    assert!(read(cache.join("shallow")).contains(&first), "fetched with depth 1");

    // Another subPath of the same commit: the cache has its trees; only the missing blobs come.
    let mut assets = git_layer(&url, "art", Some("assets"));
    assets.git.as_mut().unwrap().branch = None;
    assets.git.as_mut().unwrap().commit = Some(first.clone());
    let o = apply_options(vec![layers[0].clone(), assets], vec![first.clone(), first], &root, Arc::new(NoCredentials));
    apply(o).await.unwrap();
    assert_eq!(read(root.join("current/art/big.bin")).len(), 100_000);
    assert_game_tree(&root.join("current/srv"));

    // The branch tip, through the binary.
    let (ok, log) = apply_bin(&root, None, &layers);
    assert!(ok, "{log}");
    assert_eq!(read(root.join("current/srv/cfg/a.ini")), "a2");
    assert!(cache_has(&root, &second));
}

#[tokio::test(flavor = "multi_thread")]
async fn git_http_partial_fetch_with_basic_auth_and_wrong_password() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = partial_repo(&base, "game.git", true);
    let head = repo.commit("one");
    let big = git(&repo.dir, &["rev-parse", "HEAD:assets/big.bin"]);
    let password = "v2-Very-Secret-pw";
    let server = git_http(&base, "alice", password);
    let url = format!("http://127.0.0.1:{}/game.git", server.port);
    let secrets = t.path().join("secrets");
    secret(&secrets, "git-auth", &[("username", "alice"), ("password", password)]);
    secret(&secrets, "bad-auth", &[("username", "alice"), ("password", "wrong-v2-password")]);
    let mut layer = git_layer(&url, "", Some("game"));
    layer.git.as_mut().unwrap().secret_ref = Some(SecretRef { name: "git-auth".into() });
    let creds = Arc::new(DirCredentials::new(&secrets));

    let root = t.path().join("root");
    let (ok, log) = apply_bin(&root, Some(&secrets), std::slice::from_ref(&layer));
    assert!(ok, "{log}");
    assert!(log.contains(r#""via":"protocol v2""#) && log.contains(r#""transport":"http""#), "{log}");
    assert!(!log.contains(password), "{log}");
    assert_game_tree(&root.join("current"));
    assert!(!cache_has(&root, &big), "blobs outside subPath are not fetched");
    let state = read(root.join(".gamezone-state.json"));
    assert!(state.contains(&head) && !state.contains(password));

    // Wrong password: the partial fetch fails at once with the layer, source and Secret keys.
    let mut bad = layer.clone();
    bad.git.as_mut().unwrap().secret_ref = Some(SecretRef { name: "bad-auth".into() });
    repo.write("game/cfg/a.ini", "new");
    let newer = repo.commit("two");
    let mut o = apply_options(vec![bad.clone()], vec![newer], &root, creds.clone());
    o.retry = quick();
    let e = apply(o).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Auth { layer: 0, .. }), "{msg}");
    assert!(
        msg.contains(&format!("layer 0 (git {url})")) && msg.contains("Secret `bad-auth` keys `username`/`password`"),
        "{msg}"
    );
    assert!(!msg.contains("wrong-v2-password"), "{msg}");
    assert_eq!(read(root.join(".gamezone-state.json")), state, "failed run keeps the state");
    let (ok, log) = apply_bin(&root, Some(&secrets), &[bad]);
    assert!(!ok && log.contains("authentication failed"), "{log}");
    assert!(!log.contains("wrong-v2-password") && !log.contains(password), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn git_without_allow_filter_falls_back_to_libgit2() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = partial_repo(&base, "game", true);
    let head = repo.commit("one");
    let big = git(&repo.dir, &["rev-parse", "HEAD:assets/big.bin"]);
    let server = git_daemon(&base);
    let url = format!("git://127.0.0.1:{}/game", server.port);
    let layers = vec![git_layer(&url, "", Some("game"))];
    let root = t.path().join("root");
    let mut o = apply_options(layers.clone(), vec![head.clone()], &root, Arc::new(NoCredentials));
    o.retry = quick();
    apply(o).await.unwrap();
    assert!(!cache_has(&root, &big), "partial while the server allows filters");

    // Blobs of a commit the cache holds come by id, with no filter: a second subPath still
    // works after the server turns filters off.
    git(&repo.dir, &["config", "uploadpack.allowFilter", "false"]);
    let mut assets = git_layer(&url, "art", Some("assets"));
    assets.git.as_mut().unwrap().branch = None;
    assets.git.as_mut().unwrap().commit = Some(head.clone());
    let (ok, log) = apply_bin(&root, None, &[assets]);
    assert!(ok && log.contains(r#""via":"protocol v2""#), "{log}");
    assert_eq!(read(root.join("current/art/big.bin")).len(), 100_000);

    // A new commit needs the filter: the fallback names why and fetches the whole commit into
    // the cache that holds partial packs.
    repo.write("assets/big.bin", "small now").write("game/cfg/a.ini", "a3");
    repo.commit("two");
    let newer_big = git(&repo.dir, &["rev-parse", "HEAD:assets/big.bin"]);
    let (ok, log) = apply_bin(&root, None, &layers);
    assert!(ok, "{log}");
    assert!(
        log.contains(r#""via":"libgit2""#) && log.contains("uploadpack.allowFilter is off"),
        "the log says which path and why: {log}"
    );
    assert_eq!(read(root.join("current/cfg/a.ini")), "a3");
    assert!(cache_has(&root, &newer_big), "libgit2 fetched the whole commit");

    // Same over smart HTTP, from an empty cache.
    let http = git_http(&base, "u", "p4ss-word");
    let mut layer = git_layer(&format!("http://u:p4ss-word@127.0.0.1:{}/game", http.port), "", Some("game"));
    layer.git.as_mut().unwrap().branch = None;
    layer.git.as_mut().unwrap().commit = Some(head.clone());
    let root = t.path().join("root-http");
    let (ok, log) = apply_bin(&root, None, &[layer]);
    assert!(ok, "{log}");
    assert!(log.contains(r#""via":"libgit2""#) && !log.contains("p4ss-word"), "{log}");
    assert_game_tree(&root.join("current"));
    assert!(cache_has(&root, &big), "libgit2 fetched the whole commit");
}

#[tokio::test(flavor = "multi_thread")]
async fn git_http_partial_fetch_of_many_blobs_over_parallel_connections() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let repo = Repo::init(&base, "many.git");
    git(&repo.dir, &["config", "uploadpack.allowFilter", "true"]);
    // Enough blobs for more than one connection; two files share content (one want).
    for i in 0..1200 {
        repo.write(&format!("game/d{}/f{i}", i % 7), &format!("content {i}\n"));
    }
    repo.write("game/same-a", "same").write("game/same-b", "same").write("other/x", "x");
    let head = repo.commit("many");
    let server = git_http(&base, "carol", "many-pw-123");
    let secrets = t.path().join("secrets");
    secret(&secrets, "auth", &[("username", "carol"), ("password", "many-pw-123")]);
    let mut layer = git_layer(&format!("http://127.0.0.1:{}/many.git", server.port), "", Some("game"));
    layer.git.as_mut().unwrap().secret_ref = Some(SecretRef { name: "auth".into() });
    let root = t.path().join("root");
    let (ok, log) = apply_bin(&root, Some(&secrets), &[layer]);
    assert!(ok, "{log}");
    assert!(log.contains(r#""via":"protocol v2""#) && log.contains(r#""blobs":1201"#), "{log}");
    for i in 0..1200 {
        assert_eq!(read(root.join(format!("current/d{}/f{i}", i % 7))), format!("content {i}\n"));
    }
    assert_eq!(read(root.join("current/same-b")), "same");
    assert!(!root.join("current/x").exists());
    assert!(read(root.join(".gamezone-state.json")).contains(&head));
}

/// A repository whose `*.bin` files live in Git LFS on a real LFS server (rudolfs), pushed with
/// Debian's git-lfs; returns the repository and the LFS server.
fn lfs_repo(base: &std::path::Path, lfs_dir: &std::path::Path) -> (Repo, Server) {
    let lfs = lfs_server(lfs_dir);
    let repo = Repo::init(base, "game");
    git(&repo.dir, &["lfs", "install", "--local"]);
    repo.write(".lfsconfig", &format!("[lfs]\n\turl = http://127.0.0.1:{}/api/gamezone/game\n", lfs.port));
    git(&repo.dir, &["lfs", "track", "*.bin"]);
    let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::create_dir_all(repo.dir.join("assets")).unwrap();
    std::fs::write(repo.dir.join("assets/big.bin"), &big).unwrap();
    std::fs::write(repo.dir.join("assets/same.bin"), &big).unwrap();
    std::fs::write(repo.dir.join("assets/small.bin"), b"small object").unwrap();
    repo.write("config/server.json", "{}");
    repo.commit("assets in LFS");
    git(&repo.dir, &["remote", "add", "origin", &repo.dir.display().to_string()]);
    git(&repo.dir, &["lfs", "push", "--all", "origin"]);
    (repo, lfs)
}

/// Batch requests the LFS server answered, from its log.
fn lfs_batches(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("lfs.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("objects/batch"))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn lfs_objects_are_fetched_checked_and_written_in_place_of_their_pointers() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    let (repo, _lfs) = lfs_repo(&base, &t.path().join("lfs"));
    let big = std::fs::read(repo.dir.join("assets/big.bin")).unwrap();
    let server = git_daemon(&base);
    let url = format!("git://127.0.0.1:{}/game", server.port);
    let layers = vec![git_layer(&url, "", None), git_layer(&url, "only-assets", Some("assets"))];
    let revs: Vec<String> = resolve(&layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();
    let root = t.path().join("root");
    apply(apply_options(layers, revs, &root, Arc::new(NoCredentials))).await.unwrap();
    let cur = root.join("current");
    assert_eq!(std::fs::read(cur.join("assets/big.bin")).unwrap(), big, "the object, not its pointer");
    assert_eq!(std::fs::read(cur.join("assets/same.bin")).unwrap(), big);
    assert_eq!(read(cur.join("assets/small.bin")), "small object");
    assert_eq!(std::fs::read(cur.join("only-assets/big.bin")).unwrap(), big, "a subPath's objects too");
    assert_eq!(read(cur.join("config/server.json")), "{}");
    assert!(lfs_batches(&t.path().join("lfs")) >= 1, "the LFS server was asked");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_lfs_object_that_is_not_its_oid_and_a_submodule_are_refused_and_the_old_tree_stays() {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("srv");
    // An LFS server that answers every object with other bytes.
    let port = Arc::new(std::sync::atomic::AtomicU16::new(0));
    let its_port = port.clone();
    let lfs = serve_http(move |method, path| {
        if method == "POST" && path.ends_with("/objects/batch") {
            let href = format!("http://127.0.0.1:{}/object", its_port.load(std::sync::atomic::Ordering::SeqCst));
            let body =
                format!(r#"{{"objects":[{{"oid":"{OID}","size":5,"actions":{{"download":{{"href":"{href}"}}}}}}]}}"#);
            (200, vec![("Content-Type".into(), "application/vnd.git-lfs+json".into())], body.into_bytes())
        } else {
            (200, vec![], b"EVIL!".to_vec())
        }
    });
    port.store(lfs.port, std::sync::atomic::Ordering::SeqCst);
    let repo = Repo::init(&base, "game");
    repo.write("config/a.ini", "v1");
    repo.commit("one");
    let server = git_daemon(&base);
    let url = format!("git://127.0.0.1:{}/game", server.port);
    let root = t.path().join("root");
    let apply_head = |root: std::path::PathBuf| {
        let layers = vec![git_layer(&url, "", None)];
        async move {
            let revs: Vec<String> =
                resolve(&layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();
            apply(apply_options(layers, revs, root, Arc::new(NoCredentials))).await
        }
    };
    let good = apply_head(root.clone()).await.unwrap();

    // A pointer to "hello" (5 bytes) whose server sends "EVIL!".
    let pointer = format!("version https://git-lfs.github.com/spec/v1\noid sha256:{OID}\nsize 5\n");
    repo.write("asset.bin", &pointer);
    repo.write(".lfsconfig", &format!("[lfs]\n\turl = http://127.0.0.1:{}/api/x/y\n", lfs.port));
    repo.commit("tampered");
    let e = apply_head(root.clone()).await.unwrap_err();
    assert!(matches!(e, Error::Verification { .. }), "{e}");
    assert!(e.to_string().contains("asset.bin") && e.to_string().contains("sent something else"), "{e}");
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap(),
        std::path::Path::new(".trees").join(good.tree.file_name().unwrap())
    );
    // Packed, the same object is refused before anything reaches the registry.
    let reg = docker_registry(&t.path().join("registry"));
    let layers = vec![git_layer(&url, "", None)];
    let revs: Vec<String> = resolve(&layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect();
    let registry = gamezone_init::oci::Registry::new(&gamezone_init::oci::RegistryOptions {
        repository: format!("127.0.0.1:{}/gamezone/layers", reg.port),
        plain_http: true,
        basic: None,
    })
    .unwrap();
    let packing = apply_options(layers, revs, t.path().join("pack"), Arc::new(NoCredentials));
    let e = gamezone_init::oci::pack(&packing, &registry).await.unwrap_err();
    assert!(matches!(e, Error::Verification { .. }), "{e}");
    let log = std::fs::read_to_string(t.path().join("registry/registry.log")).unwrap_or_default();
    assert!(!log.contains("PUT /v2/") && !log.contains("PATCH /v2/"), "something was pushed: {log}");

    // A submodule (a gitlink entry): refused, never an empty folder.
    git(&repo.dir, &["rm", "-q", "asset.bin"]);
    git(&repo.dir, &["update-index", "--add", "--cacheinfo", &format!("160000,{},vendor/engine", "1".repeat(40))]);
    git(&repo.dir, &["commit", "-q", "-m", "submodule"]);
    let e = apply_head(root.clone()).await.unwrap_err().to_string();
    assert!(e.contains("vendor/engine") && e.contains("submodule") && e.contains("layer of its own"), "{e}");
    assert!(!root.join("current/vendor").exists());
}

/// sha256 of "hello".
const OID: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
