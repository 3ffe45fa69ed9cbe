//! p4-export layers: local, HTTP (with a connection cut mid-body) and S3 archives, verification
//! against pin and manifest, and hostile tarballs.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gamezone_init::apply::apply;
use gamezone_init::creds::{DirCredentials, NoCredentials};
use gamezone_init::p4export::{Manifest, ManifestFile, manifest_path, sha256_file, write_export};
use gamezone_init::plan::{Layer, P4ExportSource, S3Object, SecretRef};

use gamezone_init::retry::RetryPolicy;
use gamezone_init::{Error, Limits};
use sha2::{Digest, Sha256};

fn p4_layer(url: &str, path: &str, sub: Option<&str>) -> Layer {
    Layer {
        path: path.into(),
        sub_path: sub.map(Into::into),
        p4_export: Some(P4ExportSource { url: Some(url.into()), ..Default::default() }),
        ..Default::default()
    }
}

fn quick() -> RetryPolicy {
    RetryPolicy { attempts: 3, base: Duration::from_millis(50), max: Duration::from_millis(100) }
}

fn depot(dir: &Path) {
    for (p, c) in [
        ("game/config/a.ini", "a"),
        ("game/config/deep/b.ini", "b"),
        ("game/bin/run.sh", "#!/bin/sh"),
        ("other/x", "x"),
    ] {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, c).unwrap();
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("game/bin/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("config/a.ini", dir.join("game/link")).unwrap();
}

async fn pin(layers: &[Layer]) -> Vec<String> {
    resolve(layers, &NoCredentials).await.unwrap().into_iter().map(|r| r.revision).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn p4_export_local_gz_and_zst_with_subpath() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("depot");
    depot(&src);
    for name in ["cl.tar.gz", "cl.tar.zst", "cl.tar"] {
        let archive = t.path().join(name);
        let m = write_export(&src, &archive, 4242, "//depot", 3).unwrap();
        assert_eq!(m.files.len(), 4);
        let layers = vec![p4_layer(&format!("file://{}", archive.display()), "g", Some("game"))];
        let revs = resolve(&layers, &NoCredentials).await.unwrap();
        assert_eq!(revs[0].revision, format!("4242@sha256:{}", m.archive_sha256));
        let root = t.path().join(format!("root-{name}"));
        let s =
            apply(apply_options(layers, vec![revs[0].revision.clone()], &root, Arc::new(NoCredentials))).await.unwrap();
        assert_eq!(read(root.join("current/g/config/deep/b.ini")), "b", "{name}");
        assert_eq!(read(root.join("current/g/link")), "a");
        assert!(!root.join("current/g/other").exists() && !root.join("current/other").exists());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(root.join("current/g/bin/run.sh")).unwrap().permissions().mode() & 0o777, 0o755);
        assert_eq!(s.files, 3);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn p4_export_tampering_is_rejected_and_the_old_tree_kept() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("depot");
    depot(&src);
    let archive = t.path().join("cl.tar");
    write_export(&src, &archive, 1, "//depot", 1).unwrap();
    let layers = vec![p4_layer(archive.to_str().unwrap(), "", None)];
    let root = t.path().join("root");
    let pinned = pin(&layers).await;
    apply(apply_options(layers.clone(), pinned.clone(), &root, Arc::new(NoCredentials))).await.unwrap();
    let state = read(root.join(".gamezone-state.json"));

    // 1. The archive is swapped for one with a changed file; the manifest is left alone.
    std::fs::write(src.join("game/config/a.ini"), "EVIL").unwrap();
    let evil = t.path().join("evil.tar");
    write_export(&src, &evil, 1, "//depot", 1).unwrap();
    std::fs::copy(&evil, &archive).unwrap();
    let mut other = layers.clone();
    other[0].path = "again".into();
    let e = apply(apply_options(other.clone(), pinned.clone(), &root, Arc::new(NoCredentials))).await.unwrap_err();
    assert!(matches!(e, Error::Verification { layer: 0, .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("does not match the manifest") || msg.contains("archive sha256"), "{msg}");

    // 2. The attacker also fixes archiveSha256 in the manifest: the per-file digest still catches it.
    let mpath = manifest_path(&archive);
    let mut m: Manifest = serde_json::from_str(&read(&mpath)).unwrap();
    m.archive_sha256 = sha256_file(&archive).unwrap();
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let repinned = pin(&other).await;
    let e = apply(apply_options(other, repinned, &root, Arc::new(NoCredentials))).await.unwrap_err();
    assert!(matches!(e, Error::Verification { .. }), "{e}");
    assert!(
        e.to_string().contains("`game/config/a.ini` (//depot/game/config/a.ini #1) does not match the manifest"),
        "{e}"
    );

    // 3. p4Export.sha256 set and different from the manifest: resolve refuses.
    let mut l = layers[0].clone();
    l.p4_export.as_mut().unwrap().sha256 = Some("0".repeat(64));
    let e = resolve(&[l], &NoCredentials).await.unwrap_err();
    assert!(matches!(e, Error::Verification { .. }), "{e}");

    assert_eq!(read(root.join(".gamezone-state.json")), state);
    assert_eq!(read(root.join("current/game/config/a.ini")), "a");
    assert_eq!(std::fs::read_dir(root.join(".trees")).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn p4_export_over_http_resumes_after_a_cut_connection() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("depot");
    depot(&src);
    // Enough incompressible data that the cut lands mid-archive.
    let mut big = Vec::with_capacity(4 << 20);
    let mut h = Sha256::new();
    for i in 0..(4u32 << 20) / 32 {
        h.update(i.to_le_bytes());
        big.extend_from_slice(&h.clone().finalize());
    }
    std::fs::write(src.join("game/big.bin"), &big).unwrap();
    let www = t.path().join("www");
    std::fs::create_dir_all(&www).unwrap();
    write_export(&src, &www.join("cl.tar.gz"), 7, "//depot", 1).unwrap();
    let (server, served) = file_server(&www, Some(1 << 20));
    let url = format!("http://127.0.0.1:{}/cl.tar.gz", server.port);
    let layers = vec![p4_layer(&url, "", Some("game"))];
    let pinned = pin(&layers).await;
    assert!(pinned[0].starts_with("7@sha256:"));
    let root = t.path().join("root");
    let mut o = apply_options(layers, pinned, &root, Arc::new(NoCredentials));
    o.retry = quick();
    apply(o).await.unwrap();
    assert_eq!(std::fs::read(root.join("current/big.bin")).unwrap(), big);
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 3, "manifest x2 + archive + resumed range");

    let e = resolve(&[p4_layer(&format!("http://127.0.0.1:{}/missing.tar", server.port), "", None)], &NoCredentials)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn p4_export_from_s3() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("depot");
    depot(&src);
    let store = t.path().join("store");
    std::fs::create_dir_all(store.join("exports/p4")).unwrap();
    write_export(&src, &store.join("exports/p4/cl-9.tar.gz"), 9, "//depot", 1).unwrap();
    let server = s3_server(&store);
    let secrets = t.path().join("secrets");
    secret(&secrets, "s3", &[("accesskey", AK), ("secretkey", SK)]);
    let layer = Layer {
        path: "p4".into(),
        p4_export: Some(P4ExportSource {
            s3: Some(S3Object {
                endpoint: format!("http://127.0.0.1:{}", server.port),
                bucket: "exports".into(),
                key: "p4/cl-9.tar.gz".into(),
                secret_ref: Some(SecretRef { name: "s3".into() }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let creds = Arc::new(DirCredentials::new(&secrets));
    let revs = resolve(std::slice::from_ref(&layer), creds.as_ref()).await.unwrap();
    assert!(revs[0].revision.starts_with("9@sha256:"));
    let root = t.path().join("root");
    apply(apply_options(vec![layer], vec![revs[0].revision.clone()], &root, creds)).await.unwrap();
    assert_eq!(read(root.join("current/p4/game/config/a.ini")), "a");
}

/// A raw tar entry: path, type flag, link target, data.
type RawEntry<'a> = (&'a str, u8, &'a str, &'a [u8]);

/// Writes a raw tar entry, bypassing the tar crate's own path checks.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", data.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn hostile_export(dir: &Path, name: &str, entries: &[RawEntry]) -> PathBuf {
    let mut tar = Vec::new();
    let mut files = Vec::new();
    for (path, kind, link, data) in entries {
        raw_entry(&mut tar, path, *kind, link, data);
        if *kind == b'0' {
            files.push(ManifestFile {
                depot_path: format!("//depot/{path}"),
                rev: 1,
                path: path.to_string(),
                size: data.len() as u64,
                sha256: hex::encode(Sha256::digest(data)),
            });
        }
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let archive = dir.join(name);
    std::fs::File::create(&archive).unwrap().write_all(&tar).unwrap();
    let m = Manifest { changelist: 1, archive_sha256: hex::encode(Sha256::digest(&tar)), files };
    std::fs::write(manifest_path(&archive), serde_json::to_vec(&m).unwrap()).unwrap();
    archive
}

#[tokio::test(flavor = "multi_thread")]
async fn p4_export_hostile_tars_are_rejected() {
    let t = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<RawEntry>, &str)> = vec![
        ("dotdot", vec![("ok", b'0', "", b"1"), ("../escape", b'0', "", b"x")], "contains `..`"),
        ("dotdot-deep", vec![("a/../../escape", b'0', "", b"x")], "contains `..`"),
        ("absolute", vec![("/tmp/escape", b'0', "", b"x")], "absolute"),
        ("symlink-out", vec![("link", b'2', "../../etc", b"")], "points outside the tree"),
        ("symlink-abs", vec![("link", b'2', "/etc/passwd", b"")], "absolute"),
        ("hardlink-out", vec![("hl", b'1', "../../etc/passwd", b"")], "contains `..`"),
        ("hardlink-abs", vec![("hl", b'1', "/etc/passwd", b"")], "absolute"),
        ("fifo", vec![("pipe", b'6', "", b"")], "special file"),
        ("chardev", vec![("dev", b'3', "", b"")], "special file"),
        ("blockdev", vec![("blk", b'4', "", b"")], "special file"),
        ("link-then-write", vec![("d", b'2', ".", b""), ("d/../../x", b'0', "", b"x")], "contains `..`"),
    ];
    let root = t.path().join("root");
    for (name, entries, expect) in cases {
        let archive = hostile_export(t.path(), &format!("{name}.tar"), &entries);
        let layers = vec![p4_layer(archive.to_str().unwrap(), "sub/dir", None)];
        let pinned = pin(&layers).await;
        let e = apply(apply_options(layers, pinned, &root, Arc::new(NoCredentials))).await.unwrap_err();
        assert!(matches!(e, Error::Hostile { .. }), "{name}: {e}");
        assert!(e.to_string().contains(expect), "{name}: {e}");
        assert!(
            !t.path().join("escape").exists() && !root.join("escape").exists() && !Path::new("/tmp/escape").exists()
        );
        assert!(!root.join("current").exists(), "{name}");
    }

    // A bomb: many bytes or many files beyond the caps.
    let zeros = vec![0u8; 1 << 20];
    let archive = hostile_export(t.path(), "bomb.tar", &[("big", b'0', "", &zeros)]);
    let layers = vec![p4_layer(archive.to_str().unwrap(), "", None)];
    let mut o = apply_options(layers.clone(), pin(&layers).await, &root, Arc::new(NoCredentials));
    o.limits = Limits { max_bytes: 64 << 10, max_files: 100 };
    let e = apply(o).await.unwrap_err();
    assert!(matches!(e, Error::Limit { .. }) && e.to_string().contains("--max-bytes"), "{e}");
    let many: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<RawEntry> = many.iter().map(|n| (n.as_str(), b'0', "", &b""[..])).collect();
    let archive = hostile_export(t.path(), "many.tar", &entries);
    let layers = vec![p4_layer(archive.to_str().unwrap(), "", None)];
    let mut o = apply_options(layers.clone(), pin(&layers).await, &root, Arc::new(NoCredentials));
    o.limits = Limits { max_bytes: 1 << 30, max_files: 10 };
    let e = apply(o).await.unwrap_err();
    assert!(matches!(e, Error::Limit { .. }) && e.to_string().contains("--max-files"), "{e}");

    // A gzip bomb: small archive, big content.
    let src = t.path().join("zeros");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("z"), vec![0u8; 8 << 20]).unwrap();
    let gz = t.path().join("bomb.tar.gz");
    write_export(&src, &gz, 1, "//depot", 1).unwrap();
    assert!(std::fs::metadata(&gz).unwrap().len() < 100 << 10);
    let layers = vec![p4_layer(gz.to_str().unwrap(), "", None)];
    let mut o = apply_options(layers.clone(), pin(&layers).await, &root, Arc::new(NoCredentials));
    o.limits = Limits { max_bytes: 1 << 20, max_files: 100 };
    assert!(matches!(apply(o).await.unwrap_err(), Error::Limit { .. }));
    assert!(!root.join("current").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn p4_export_naming_a_path_twice_is_refused_and_every_listed_file_lands() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let apply_archive = |archive: PathBuf| {
        let root = root.clone();
        async move {
            let layers = vec![p4_layer(archive.to_str().unwrap(), "", None)];
            let pinned = pin(&layers).await;
            apply(apply_options(layers, pinned, &root, Arc::new(NoCredentials))).await
        }
    };

    // `x` as a file, then `x/y`: unpacked, the file `x` the manifest lists would vanish.
    let archive = hostile_export(t.path(), "below-a-file.tar", &[("x", b'0', "", b"1"), ("x/y", b'0', "", b"2")]);
    let e = apply_archive(archive).await.unwrap_err();
    assert!(matches!(e, Error::Hostile { layer: 0, .. }), "{e}");
    assert!(e.to_string().contains("`x` as a file and then `x/y` as a file"), "{e}");
    assert!(!root.join("current").exists());

    // The same path twice, listed once in the manifest.
    let archive = hostile_export(t.path(), "twice.tar", &[("a/x", b'0', "", b"1"), ("a/x", b'0', "", b"1")]);
    let mpath = manifest_path(&archive);
    let mut m: Manifest = serde_json::from_str(&read(&mpath)).unwrap();
    m.files.truncate(1);
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    let e = apply_archive(archive).await.unwrap_err();
    assert!(matches!(e, Error::Hostile { .. }), "{e}");
    assert!(e.to_string().contains("`a/x` as a file and then `a/x` as a file"), "{e}");

    // A directory after a file of that name, and a manifest listing a path twice.
    let archive = hostile_export(t.path(), "dir-over-file.tar", &[("d", b'0', "", b"1"), ("d", b'5', "", b"")]);
    let e = apply_archive(archive).await.unwrap_err();
    assert!(e.to_string().contains("`d` as a file and then `d` as a directory"), "{e}");
    let archive = hostile_export(t.path(), "listed-twice.tar", &[("m", b'0', "", b"1"), ("m", b'0', "", b"1")]);
    let e = apply_archive(archive).await.unwrap_err();
    assert!(matches!(e, Error::Hostile { .. }) && e.to_string().contains("the manifest lists `m` twice"), "{e}");
    assert!(!root.join("current").exists());

    // Directories named after their files (as some exporters write them) are fine, and every
    // file the manifest lists is in the tree, with its content.
    let archive = hostile_export(
        t.path(),
        "fine.tar",
        &[("a/b/x", b'0', "", b"x"), ("a/b", b'5', "", b""), ("a", b'5', "", b""), ("a/y", b'0', "", b"y")],
    );
    let m: Manifest = serde_json::from_str(&read(manifest_path(&archive))).unwrap();
    apply_archive(archive).await.unwrap();
    for f in &m.files {
        let got = std::fs::read(root.join("current").join(&f.path)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&got)), f.sha256, "{}", f.path);
    }
}
