//! S3 layers against s3s-fs (signature checking on), plus a fake listing server for hostile keys.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gamezone_init::Error;
use gamezone_init::apply::apply;
use gamezone_init::creds::{Credentials, DirCredentials, NoCredentials};
use gamezone_init::plan::{Layer, S3Source, SecretRef};

use gamezone_init::retry::RetryPolicy;

fn s3_layer(port: u16, prefix: &str, path: &str, sub: Option<&str>, secret: Option<&str>) -> Layer {
    Layer {
        path: path.into(),
        sub_path: sub.map(Into::into),
        s3: Some(S3Source {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "art".into(),
            prefix: Some(prefix.into()),
            secret_ref: secret.map(|s| SecretRef { name: s.into() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn put(store: &Path, key: &str, content: &[u8]) {
    let p = store.join("art").join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn quick() -> RetryPolicy {
    RetryPolicy { attempts: 2, base: Duration::from_millis(50), max: Duration::from_millis(100) }
}

async fn pins(layers: &[Layer], creds: &dyn Credentials) -> Vec<String> {
    resolve(layers, creds).await.unwrap().into_iter().map(|r| r.revision).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_prefix_subpath_and_pinning() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    put(&store, "builds/v1/a.txt", b"a1");
    put(&store, "builds/v1/dir/b.txt", b"b1");
    put(&store, "builds/v1/dir/deep/c.txt", b"c1");
    put(&store, "builds/v2/other.txt", b"other");
    let server = s3_server(&store);
    let secrets = t.path().join("secrets");
    secret(&secrets, "s3", &[("accesskey", AK), ("secretkey", SK)]);
    let creds = Arc::new(DirCredentials::new(&secrets));
    let layers = vec![
        s3_layer(server.port, "builds/v1/", "all", None, Some("s3")),
        s3_layer(server.port, "builds/v1", "sub", Some("dir"), Some("s3")),
    ];
    let revs = resolve(&layers, creds.as_ref()).await.unwrap();
    assert!(revs[0].revision.starts_with("sha256:") && revs[0].revision != revs[1].revision);
    assert_eq!(revs[0].source, format!("s3 http://127.0.0.1:{}/art/builds/v1/", server.port));
    let pinned: Vec<String> = revs.into_iter().map(|r| r.revision).collect();
    let root = t.path().join("root");
    let mut o = apply_options(layers.clone(), pinned.clone(), &root, creds.clone());
    o.retry = quick();
    let s = apply(o).await.unwrap();
    assert_eq!(read(root.join("current/all/a.txt")), "a1");
    assert_eq!(read(root.join("current/all/dir/deep/c.txt")), "c1");
    assert_eq!(read(root.join("current/sub/b.txt")), "b1");
    assert!(!root.join("current/all/other.txt").exists());
    assert_eq!(s.files, 5);
    assert!(!read(root.join(".gamezone-state.json")).contains(SK));

    // The prefix changes after pinning: apply refuses the old pin, resolve gives a new one.
    std::thread::sleep(Duration::from_millis(20));
    put(&store, "builds/v1/a.txt", b"a2-changed");
    let mut o = apply_options(layers.clone(), pinned.clone(), t.path().join("root2"), creds.clone());
    o.retry = quick();
    let e = apply(o).await.unwrap_err();
    assert!(matches!(e, Error::RevisionChanged { layer: 0, .. }), "{e}");
    assert!(e.to_string().contains("revision changed since it was pinned") && e.to_string().contains("resolve again"));
    let now = pins(&layers, creds.as_ref()).await;
    assert_ne!(now[0], pinned[0]);
    assert_eq!(now[1], pinned[1], "the other folder did not change");
    let mut o = apply_options(layers, now, &root, creds.clone());
    o.retry = quick();
    apply(o).await.unwrap();
    assert_eq!(read(root.join("current/all/a.txt")), "a2-changed");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_wrong_credentials_and_missing_bucket() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    put(&store, "p/a.txt", b"a");
    let server = s3_server(&store);
    let secrets = t.path().join("secrets");
    secret(&secrets, "bad", &[("accesskey", AK), ("secretkey", "totally-wrong-secret")]);
    secret(&secrets, "half", &[("accesskey", AK)]);
    let creds = DirCredentials::new(&secrets);
    let policy = quick();

    let e = resolve_with(&[s3_layer(server.port, "p", "", None, Some("bad"))], &creds, &policy).await.unwrap_err();
    assert!(matches!(e, Error::Auth { layer: 0, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("Secret `bad`") && msg.contains("`accesskey`/`secretkey`"), "{msg}");
    assert!(!msg.contains("totally-wrong-secret"));

    let e = resolve_with(&[s3_layer(server.port, "p", "", None, Some("half"))], &creds, &policy).await.unwrap_err();
    assert!(matches!(e, Error::Credentials { .. }), "{e}");

    let e = resolve_with(&[s3_layer(server.port, "p", "", None, None)], &NoCredentials, &policy).await.unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "anonymous: {e}");

    secret(&secrets, "good", &[("accesskey", AK), ("secretkey", SK)]);
    let mut l = s3_layer(server.port, "p", "", None, Some("good"));
    l.s3.as_mut().unwrap().bucket = "nope".into();
    let e = resolve_with(&[l], &creds, &policy).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let e =
        resolve_with(&[s3_layer(server.port, "empty/", "", None, Some("good"))], &creds, &policy).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }) && e.to_string().contains("no objects"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_server_killed_mid_download_keeps_the_old_tree() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    put(&store, "p/small.txt", b"old");
    let mut server = s3_server(&store);
    let secrets = t.path().join("secrets");
    secret(&secrets, "s3", &[("accesskey", AK), ("secretkey", SK)]);
    let creds = Arc::new(DirCredentials::new(&secrets));
    let layers = vec![s3_layer(server.port, "p", "", None, Some("s3"))];
    let root = t.path().join("root");
    apply(apply_options(layers.clone(), pins(&layers, creds.as_ref()).await, &root, creds.clone())).await.unwrap();
    let state = read(root.join(".gamezone-state.json"));

    let big: Vec<u8> = (0..96u32 * 1024 * 1024 / 4).flat_map(|i| i.to_le_bytes()).collect();
    put(&store, "p/big.bin", &big);
    drop(big);
    let pinned = pins(&layers, creds.as_ref()).await;
    let mut o = apply_options(layers, pinned, &root, creds.clone());
    o.retry = quick();
    let task = tokio::spawn(apply(o));
    // Kill the server once the big object is partly on disk.
    let started = Instant::now();
    'wait: loop {
        assert!(started.elapsed() < Duration::from_secs(60), "download never started");
        for d in std::fs::read_dir(root.join(".trees")).unwrap().flatten() {
            if d.file_name().to_string_lossy().starts_with(".staging-")
                && std::fs::metadata(d.path().join("big.bin")).is_ok_and(|m| m.len() > 0)
            {
                break 'wait;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill();
    let e = task.await.unwrap().unwrap_err();
    assert!(e.is_transient(), "{e}");
    assert!(e.to_string().contains("layer 0 (s3 "), "{e}");
    assert_eq!(read(root.join(".gamezone-state.json")), state);
    assert_eq!(read(root.join("current/small.txt")), "old");
    assert!(!root.join("current/big.bin").exists());
    assert_eq!(std::fs::read_dir(root.join(".trees")).unwrap().count(), 1, "staging removed");
}

/// A listing server that returns keys no real store should hand out.
fn hostile_listing(key: &'static str) -> Server {
    common::serve_fn(move |path_query| {
        if path_query.contains("list-type=2") {
            let body = format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>art</Name><Prefix></Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated><Contents><Key>ok.txt</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>"1"</ETag><Size>1</Size></Contents><Contents><Key>{key}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>"2"</ETag><Size>1</Size></Contents></ListBucketResult>"#
            );
            (200, body.into_bytes())
        } else {
            (200, b"x".to_vec())
        }
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_hostile_keys_are_rejected() {
    for key in ["../escape.txt", "a/../../escape.txt", "a//b", "./x"] {
        let t = tempfile::tempdir().unwrap();
        let server = hostile_listing(key);
        let layers = vec![s3_layer(server.port, "", "", None, None)];
        let root = t.path().join("root");
        let res = resolve_with(&layers, &NoCredentials, &quick()).await;
        let e = match res {
            Err(e) => e,
            Ok(revs) => {
                let mut o = apply_options(
                    layers,
                    revs.into_iter().map(|r| r.revision).collect(),
                    &root,
                    Arc::new(NoCredentials),
                );
                o.retry = quick();
                apply(o).await.unwrap_err()
            }
        };
        assert!(matches!(e, Error::Hostile { .. }), "{key}: {e}");
        assert!(!t.path().join("escape.txt").exists() && !root.join("current").exists());
    }
}

/// A store over fixed `(key, etag, body)` objects in bucket `art` that lists like S3 (prefix,
/// delimiter `/`, one page) and serves GETs; counts the listing requests. With `loop_at`, the
/// listing of that folder names the folder itself as its subfolder.
fn fake_store(
    objects: &'static [(&'static str, &'static str, &'static str)],
    loop_at: Option<&'static str>,
) -> (Server, Arc<AtomicUsize>) {
    let lists = Arc::new(AtomicUsize::new(0));
    let count = lists.clone();
    let server = common::serve_http(move |method, pq| {
        let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
        let param =
            |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).map(percent_decode);
        if method == "GET" && path == "/art" && query.contains("list-type=2") {
            count.fetch_add(1, Ordering::SeqCst);
            let prefix = param("prefix").unwrap_or_default();
            assert_eq!(param("delimiter").as_deref(), Some("/"), "listed without delimiter: {pq}");
            let mut contents = String::new();
            let mut folders = std::collections::BTreeSet::new();
            if loop_at == Some(prefix.as_str()) {
                folders.insert(prefix.clone());
            }
            for (key, etag, body) in objects {
                let Some(rest) = key.strip_prefix(&prefix) else { continue };
                match rest.split_once('/') {
                    Some((dir, _)) => {
                        folders.insert(format!("{prefix}{dir}/"));
                    }
                    None => contents.push_str(&format!(
                        "<Contents><Key>{key}</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>&quot;{etag}&quot;</ETag><Size>{}</Size></Contents>",
                        body.len()
                    )),
                }
            }
            let folders: String =
                folders.iter().map(|f| format!("<CommonPrefixes><Prefix>{f}</Prefix></CommonPrefixes>")).collect();
            let body = format!(
                r#"<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>art</Name><Prefix>{prefix}</Prefix><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{contents}{folders}</ListBucketResult>"#
            );
            return (200, vec![], body.into_bytes());
        }
        let key = percent_decode(path.strip_prefix("/art/").unwrap_or(""));
        match objects.iter().find(|(k, _, _)| *k == key) {
            Some((_, etag, body)) => (
                200,
                vec![
                    ("ETag".into(), format!("\"{etag}\"")),
                    ("Last-Modified".into(), "Mon, 01 Jan 2024 00:00:00 GMT".into()),
                ],
                body.as_bytes().to_vec(),
            ),
            None => (404, vec![], b"<Error><Code>NoSuchKey</Code></Error>".to_vec()),
        }
    });
    (server, lists)
}

const OBJECTS: &[(&str, &str, &str)] = &[
    ("p/a.txt", "1", "a"),
    ("p/d/b.txt", "2", "bb"),
    ("p/d/e/c.txt", "3", "ccc"),
    ("p/f/g.txt", "4", "g"),
    ("other/x.txt", "5", "x"),
];

#[tokio::test(flavor = "multi_thread")]
async fn s3_listing_by_folder_keeps_the_revision_and_runs_once_per_apply() {
    let (server, lists) = fake_store(OBJECTS, None);
    let layers = vec![s3_layer(server.port, "p/", "", None, None)];

    // The revision is still sha256 over sorted `key etag` lines of every object under the prefix.
    let revs = resolve_with(&layers, &NoCredentials, &quick()).await.unwrap();
    let lines = "p/a.txt \"1\"\np/d/b.txt \"2\"\np/d/e/c.txt \"3\"\np/f/g.txt \"4\"\n";
    use sha2::Digest as _;
    let expected = format!("sha256:{}", hex::encode(sha2::Sha256::digest(lines.as_bytes())));
    assert_eq!(revs[0].revision, expected);
    assert_eq!(lists.load(Ordering::SeqCst), 4, "p/, p/d/, p/d/e/ and p/f/");

    // Not pinned: apply resolves and downloads from that one listing.
    lists.store(0, Ordering::SeqCst);
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let mut o = apply_options(layers.clone(), vec![String::new()], &root, Arc::new(NoCredentials));
    o.retry = quick();
    let s = apply(o).await.unwrap();
    assert_eq!(lists.load(Ordering::SeqCst), 4, "listed once, not again to check the pin");
    assert_eq!(s.files, 4);
    assert_eq!(read(root.join("current/d/e/c.txt")), "ccc");
    assert!(!root.join("current/x.txt").exists());

    // Pinned elsewhere: apply lists itself and checks the pin against that listing.
    lists.store(0, Ordering::SeqCst);
    let mut o = apply_options(layers.clone(), vec![expected], t.path().join("root2"), Arc::new(NoCredentials));
    o.retry = quick();
    apply(o).await.unwrap();
    assert_eq!(lists.load(Ordering::SeqCst), 4);
    let mut o = apply_options(
        layers,
        vec![format!("sha256:{}", "0".repeat(64))],
        t.path().join("root3"),
        Arc::new(NoCredentials),
    );
    o.retry = quick();
    let e = apply(o).await.unwrap_err();
    assert!(matches!(e, Error::RevisionChanged { layer: 0, .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_listing_that_does_not_descend_is_rejected() {
    let (server, lists) = fake_store(OBJECTS, Some("p/d/"));
    let layers = vec![s3_layer(server.port, "p", "", None, None)];
    let e = tokio::time::timeout(Duration::from_secs(60), resolve_with(&layers, &NoCredentials, &quick()))
        .await
        .expect("the listing must end")
        .unwrap_err();
    assert!(matches!(e, Error::Hostile { layer: 0, .. }), "{e}");
    assert!(e.to_string().contains("`p/d/`"), "{e}");
    assert!(lists.load(Ordering::SeqCst) <= 4);
}
