//! Virtual-hosted-style S3 (`http://<bucket>.<domain>:<port>/<key>`) end to end against s3s-fs
//! with `--domain`, without touching /etc/hosts: the binary runs with the standard proxy
//! environment (`ALL_PROXY`, `HTTP_PROXY`, honoured by the HTTP client under object_store), and
//! a forward proxy in the test sends every request to s3s-fs, keeping the Host header that the
//! request was signed for.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

const DOMAIN: &str = "s3.gamezone.test";

fn put(store: &Path, key: &str, content: &[u8]) {
    let p = store.join("art").join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// An S3 prefix layer and a p4 export layer from the same bucket, path-style or virtual-hosted.
fn plan(endpoint: &str, path_style: bool, secret: &str) -> String {
    serde_json::json!([
        {"path": "art", "s3": {"endpoint": endpoint, "bucket": "art", "prefix": "builds/v1",
            "pathStyle": path_style, "secretRef": {"name": secret}}},
        {"path": "p4", "p4Export": {"s3": {"endpoint": endpoint, "bucket": "art", "key": "exports/game.tar.gz",
            "pathStyle": path_style, "secretRef": {"name": secret}}}}
    ])
    .to_string()
}

/// Runs the binary with no proxy settings but `proxy_env`.
fn init(args: &[&str], proxy_env: &[(&str, String)]) -> Output {
    let mut cmd = init_cmd();
    cmd.args(args).env("RUST_LOG", "info");
    for k in
        ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"]
    {
        cmd.env_remove(k);
    }
    for (k, v) in proxy_env {
        cmd.env(k, v);
    }
    cmd.output().expect("run gamezone-init")
}

fn ok(out: Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn revisions(resolve_json: &str) -> Vec<String> {
    let v: Vec<serde_json::Value> = serde_json::from_str(resolve_json).unwrap();
    v.iter().map(|r| r["revision"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn s3_virtual_hosted_through_a_proxy_matches_path_style() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    put(&store, "builds/v1/a.txt", b"a1");
    put(&store, "builds/v1/dir/b.txt", b"b1");
    put(&store, "builds/v1/dir/deep/c.txt", b"c1");
    put(&store, "builds/v2/other.txt", b"other");
    let export_src = t.path().join("export-src");
    std::fs::create_dir_all(export_src.join("maps")).unwrap();
    std::fs::write(export_src.join("maps/m1.map"), "map").unwrap();
    std::fs::create_dir_all(store.join("art/exports")).unwrap();
    let archive = store.join("art/exports/game.tar.gz");
    ok(
        init(&["make-p4-export", "--from", export_src.to_str().unwrap(), "--out", archive.to_str().unwrap()], &[]),
        "make-p4-export",
    );
    assert!(store.join("art/exports/game.tar.gz.manifest.json").is_file());

    let port = free_port();
    let domain = format!("{DOMAIN}:{port}");
    let _server = s3_server_with(&store, port, &["--domain", &domain]);
    let secrets = t.path().join("secrets");
    secret(&secrets, "s3", &[("accesskey", AK), ("secretkey", SK)]);
    secret(&secrets, "bad", &[("accesskey", AK), ("secretkey", "totally-wrong-secret")]);
    let sd = secrets.to_str().unwrap();

    // Path-style straight to 127.0.0.1: the reference.
    let path_plan = plan(&format!("http://127.0.0.1:{port}"), true, "s3");
    let path_revs = revisions(&ok(init(&["resolve", "--plan-json", &path_plan, "--secrets-dir", sd], &[]), "path"));
    let path_root = t.path().join("root-path");
    let pr = path_root.to_str().unwrap();
    ok(init(&["apply", "--plan-json", &path_plan, "--secrets-dir", sd, "--root", pr], &[]), "path-style apply");

    // Virtual-hosted through the proxy: the bucket is in the host name only.
    let (proxy, seen) = forward_proxy(port);
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let vhost_plan = plan(&format!("http://{domain}"), false, "s3");
    let resolved = ok(
        init(&["resolve", "--plan-json", &vhost_plan, "--secrets-dir", sd], &[("ALL_PROXY", proxy_url.clone())]),
        "virtual-hosted resolve",
    );
    let vhost_revs = revisions(&resolved);
    assert_eq!(vhost_revs, path_revs, "the same objects give the same revisions");
    assert!(resolved.contains(&format!("s3 http://{domain}/art/builds/v1")), "{resolved}");

    let root = t.path().join("root-vhost");
    let r = root.to_str().unwrap();
    ok(
        init(
            &["apply", "--plan-json", &vhost_plan, "--secrets-dir", sd, "--root", r, "--revisions", &resolved],
            &[("HTTP_PROXY", proxy_url.clone())],
        ),
        "virtual-hosted apply",
    );
    assert_eq!(read(root.join("current/art/a.txt")), "a1");
    assert_eq!(read(root.join("current/art/dir/deep/c.txt")), "c1");
    assert_eq!(read(root.join("current/p4/maps/m1.map")), "map");
    assert!(!root.join("current/art/other.txt").exists());
    assert_eq!(
        gamezone_init::digest_dir(&root.join("current")).unwrap(),
        gamezone_init::digest_dir(&path_root.join("current")).unwrap(),
        "same tree as path-style"
    );

    // Every request went through the proxy, addressed to the bucket's host, never with the
    // bucket in the path.
    let seen = seen.lock().unwrap().clone();
    let host = format!("art.{domain}");
    assert!(seen.len() >= 8, "{seen:#?}");
    for p in &seen {
        assert_eq!(p.host, host, "{p:?}");
        let path = p.target.strip_prefix(&format!("http://{host}")).unwrap_or_else(|| panic!("{p:?}"));
        assert!(path.starts_with('/') && !path.starts_with("/art/") && !path.starts_with("/art?"), "{p:?}");
    }
    let has = |method: &str, needle: &str| seen.iter().any(|p| p.method == method && p.target.contains(needle));
    assert!(has("GET", "list-type=2"), "a listing: {seen:#?}");
    assert!(has("GET", "/builds/v1/dir/deep/c.txt"), "{seen:#?}");
    assert!(has("GET", "/exports/game.tar.gz.manifest.json") && has("GET", "/exports/game.tar.gz"), "{seen:#?}");

    // The signature covers the virtual host: a wrong secret key is refused there too.
    let bad = plan(&format!("http://{domain}"), false, "bad");
    let out = init(&["resolve", "--plan-json", &bad, "--secrets-dir", sd], &[("HTTP_PROXY", proxy_url)]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("s3 http://{domain}/art/")) && err.contains("): authentication failed"), "{err}");
    assert!(err.contains("Secret `bad`") && !err.contains("totally-wrong-secret"), "{err}");
}
