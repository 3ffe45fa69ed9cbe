//! The edits layer: `apply --edits` and `watch --edits` over a local base layer, the edits
//! directory shared by Debian's smbd on loopback and changed with smbclient, as testers do.

mod common;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use gamezone_init::apply::{Summary, apply};
use gamezone_init::creds::NoCredentials;
use gamezone_init::plan::{Layer, LocalSource};

fn write(p: PathBuf, content: impl AsRef<[u8]>) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn local(dir: &Path) -> Layer {
    Layer { path: String::new(), local: Some(LocalSource { path: dir.display().to_string() }), ..Default::default() }
}

async fn apply_edits(base: &Path, edits: &Path, root: &Path) -> Summary {
    let mut o = apply_options(vec![local(base)], vec![String::new()], root, Arc::new(NoCredentials));
    o.edits = Some(edits.to_owned());
    apply(o).await.unwrap()
}

fn status(root: &Path) -> serde_json::Value {
    serde_json::from_str(&read(root.join(".gamezone-edits.json"))).unwrap()
}

fn state(root: &Path) -> serde_json::Value {
    serde_json::from_str(&read(root.join(".gamezone-state.json"))).unwrap()
}

fn base_tree(root: &Path) -> PathBuf {
    root.join(".trees").join(state(root)["baseTree"].as_str().unwrap())
}

fn ino(p: impl AsRef<Path>) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

#[tokio::test]
async fn edits_are_layered_on_hard_links_and_never_written_through() {
    let t = tempfile::tempdir().unwrap();
    let (base, edits, root) = (t.path().join("base"), t.path().join("edits"), t.path().join("root"));
    write(base.join("cfg/game.ini"), "pinned");
    write(base.join("maps/a.map"), "map a");
    std::fs::create_dir_all(&edits).unwrap();
    let first = apply_edits(&base, &edits, &root).await;
    assert_eq!(read(root.join("current/cfg/game.ini")), "pinned");
    assert_eq!(first.linked_files, 2);
    let b = base_tree(&root);
    assert_eq!(ino(root.join("current/maps/a.map")), ino(b.join("maps/a.map")), "unchanged files are hard links");
    assert!(apply_edits(&base, &edits, &root).await.unchanged, "same pins and edits: nothing to do");

    write(edits.join("cfg/game.ini"), "edited");
    write(edits.join("new/extra.txt"), "extra");
    let s = apply_edits(&base, &edits, &root).await;
    assert!(!s.unchanged);
    assert_eq!(read(root.join("current/cfg/game.ini")), "edited");
    assert_eq!(read(root.join("current/new/extra.txt")), "extra");
    assert_eq!(read(b.join("cfg/game.ini")), "pinned", "the base's inode was not written through");
    assert_ne!(ino(root.join("current/cfg/game.ini")), ino(b.join("cfg/game.ini")));
    assert_eq!(ino(root.join("current/maps/a.map")), ino(b.join("maps/a.map")));
    assert_eq!(s.written_bytes, "edited".len() as u64 + "extra".len() as u64, "only the edits were copied");
    assert_eq!(gamezone_init::digest_dir(&root.join("current")).unwrap(), s.tree_digest);
    let st = status(&root);
    assert_eq!(st["state"], "applied");
    assert_eq!(st["batches"], 2);
    let changes: Vec<(String, String)> = st["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["path"].as_str().unwrap().to_owned(), c["change"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        changes,
        [
            ("cfg/game.ini".into(), "modified".into()),
            ("new".into(), "added".into()),
            ("new/extra.txt".into(), "added".into())
        ]
    );
    use sha2::Digest as _;
    assert_eq!(st["changes"][0]["sha256"], hex::encode(sha2::Sha256::digest(b"edited")).as_str());
    // Two trees only: the base and the current one.
    assert_eq!(std::fs::read_dir(root.join(".trees")).unwrap().count(), 2);

    // The same content saved again (a new mtime) swaps nothing.
    let target = std::fs::read_link(root.join("current")).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    write(edits.join("cfg/game.ini"), "edited");
    let again = apply_edits(&base, &edits, &root).await;
    assert!(again.unchanged && again.tree_digest == s.tree_digest);
    assert_eq!(std::fs::read_link(root.join("current")).unwrap(), target);
    assert!(apply_edits(&base, &edits, &root).await.unchanged, "the new edits revision is recorded");

    // A new pin rebuilds the base and keeps the edits on top; the old base goes.
    std::thread::sleep(Duration::from_millis(10));
    write(base.join("maps/a.map"), "map a v2");
    apply_edits(&base, &edits, &root).await;
    assert_ne!(base_tree(&root), b);
    assert!(!b.exists(), "the old base tree is removed");
    assert_eq!(read(root.join("current/maps/a.map")), "map a v2");
    assert_eq!(read(root.join("current/cfg/game.ini")), "edited");

    // Deleting an edit brings the pinned file back.
    std::fs::remove_file(edits.join("cfg/game.ini")).unwrap();
    apply_edits(&base, &edits, &root).await;
    assert_eq!(read(root.join("current/cfg/game.ini")), "pinned");

    // Without edits the tree is the pinned layers alone, and the edits status is gone.
    let o = apply_options(vec![local(&base)], vec![String::new()], &root, Arc::new(NoCredentials));
    let s = apply(o).await.unwrap();
    assert!(!s.unchanged);
    assert!(!root.join("current/new").exists());
    assert!(!root.join(".gamezone-edits.json").exists());
}

#[tokio::test]
async fn hostile_edits_are_refused_and_named() {
    let t = tempfile::tempdir().unwrap();
    let (base, edits, root) = (t.path().join("base"), t.path().join("edits"), t.path().join("root"));
    write(base.join("cfg/game.ini"), "pinned");
    write(edits.join("cfg/game.ini"), "good edit");
    let good = apply_edits(&base, &edits, &root).await;
    let target = std::fs::read_link(root.join("current")).unwrap();

    std::os::unix::fs::symlink("../../etc/passwd", edits.join("cfg/evil")).unwrap();
    write(edits.join("cfg/more.ini"), "would be applied with the link");
    let s = apply_edits(&base, &edits, &root).await;
    assert!(s.unchanged, "the last good tree stays");
    assert_eq!(s.refused.as_ref().unwrap().path, "cfg/evil");
    assert_eq!(std::fs::read_link(root.join("current")).unwrap(), target);
    assert_eq!(s.tree_digest, good.tree_digest);
    assert!(!root.join("current/cfg/more.ini").exists());
    let st = status(&root);
    assert_eq!(st["state"], "refused");
    assert_eq!(st["lastRefused"]["path"], "cfg/evil");
    assert!(st["lastRefused"]["reason"].as_str().unwrap().contains("outside the tree"), "{st}");
    assert_eq!(st["refusedBatches"], 1);
    apply_edits(&base, &edits, &root).await;
    assert_eq!(status(&root)["refusedBatches"], 1, "the same refused edits count once");

    // A new pin while the edits are hostile: the pinned layers alone, never the hostile batch.
    std::thread::sleep(Duration::from_millis(10));
    write(base.join("cfg/game.ini"), "pinned v2");
    let s = apply_edits(&base, &edits, &root).await;
    assert!(!s.unchanged && s.refused.is_some());
    assert_eq!(read(root.join("current/cfg/game.ini")), "pinned v2");
    assert!(std::fs::symlink_metadata(root.join("current/cfg/evil")).is_err());

    std::fs::remove_file(edits.join("cfg/evil")).unwrap();
    apply_edits(&base, &edits, &root).await;
    assert_eq!(read(root.join("current/cfg/more.ini")), "would be applied with the link");
    assert_eq!(read(root.join("current/cfg/game.ini")), "good edit");
    assert_eq!(status(&root)["state"], "applied");
    assert_eq!(status(&root)["lastRefused"]["path"], "cfg/evil", "the last refusal stays on record");
}

/// Every version each watched path may show; a read must give one of them in full.
#[derive(Default)]
struct Expect {
    versions: Mutex<HashMap<String, HashSet<Vec<u8>>>>,
    /// Paths of the pinned layers: never missing.
    pinned: Vec<String>,
}

impl Expect {
    fn allow(&self, path: &str, content: impl AsRef<[u8]>) {
        self.versions.lock().unwrap().entry(path.to_owned()).or_default().insert(content.as_ref().to_vec());
    }
}

/// Reads the watched paths through `current` over and over, as the game would.
fn reader(
    root: PathBuf,
    expect: Arc<Expect>,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<Vec<String>>, Arc<AtomicU64>) {
    let rounds = Arc::new(AtomicU64::new(0));
    let r = rounds.clone();
    let h = std::thread::spawn(move || {
        let mut bad = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let paths: Vec<String> = expect.versions.lock().unwrap().keys().cloned().collect();
            for p in paths {
                match std::fs::read(root.join("current").join(&p)) {
                    Ok(data) => {
                        if !expect.versions.lock().unwrap()[&p].contains(&data) {
                            bad.push(format!("{p}: {} bytes that are no version of it", data.len()));
                        }
                    }
                    Err(e) if expect.pinned.contains(&p) => bad.push(format!("{p}: {e}")),
                    Err(_) => {}
                }
            }
            r.fetch_add(1, Ordering::SeqCst);
            if bad.len() > 20 {
                break;
            }
        }
        bad
    });
    (h, rounds)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn swaps(log: &Path) -> usize {
    std::fs::read_to_string(log).map(|s| s.lines().count()).unwrap_or(0)
}

fn file(root: &Path, p: &str) -> Option<String> {
    std::fs::read_to_string(root.join("current").join(p)).ok()
}

struct Watch(Child);
impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn samba_edits_are_applied_atomically_by_watch() {
    let t = tempfile::tempdir().unwrap();
    let (base, edits, root) = (t.path().join("base"), t.path().join("edits"), t.path().join("root"));
    let big_v1: Vec<u8> = (0..8u32 << 20).map(|i| (i % 251) as u8).collect();
    write(base.join("cfg/game.ini"), "pinned");
    write(base.join("data/big.bin"), &big_v1);
    for i in 0..200 {
        write(base.join(format!("maps/m{i}.map")), format!("map {i}"));
    }
    std::fs::create_dir_all(&edits).unwrap();
    std::fs::create_dir_all(t.path().join("smb")).unwrap();
    let smb = smbd(&edits, &t.path().join("smb"));
    let plan = format!(r#"[{{"path":"","local":{{"path":"{}"}}}}]"#, base.display());
    let swap_log = t.path().join("swaps.log");
    let log = t.path().join("watch.log");
    let watch = Watch(
        init_cmd()
            .args(["watch", "--interval", "1h", "--edits-quiet", "1s", "--edits-poll", "200ms", "--root"])
            .arg(&root)
            .arg("--edits")
            .arg(&edits)
            .arg("--on-swap-exec")
            .arg(format!("echo \"$GAMEZONE_TREE_DIGEST\" >> {}", swap_log.display()))
            .env("GAMEZONE_LAYERS", &plan)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the first tree", Duration::from_secs(30), || file(&root, "cfg/game.ini").is_some());
    wait_for("the first swap hook", Duration::from_secs(10), || swaps(&swap_log) == 1);

    let pinned: Vec<String> =
        ["cfg/game.ini", "data/big.bin", "maps/m0.map", "maps/m199.map"].iter().map(|s| s.to_string()).collect();
    let expect = Arc::new(Expect { pinned: pinned.clone(), ..Default::default() });
    expect.allow("cfg/game.ini", "pinned");
    expect.allow("data/big.bin", &big_v1);
    expect.allow("maps/m0.map", "map 0");
    expect.allow("maps/m199.map", "map 199");
    let stop = Arc::new(AtomicBool::new(false));
    let (reader, rounds) = reader(root.clone(), expect.clone(), stop.clone());
    let local = t.path().join("local");

    // Replace a pinned file and add one, through the share.
    write(local.join("game.ini"), "edited over smb");
    write(local.join("added.txt"), "added over smb");
    expect.allow("cfg/game.ini", "edited over smb");
    expect.allow("new/added.txt", "added over smb");
    smb.client(&format!(
        "mkdir cfg; mkdir new; put {} cfg/game.ini; put {} new/added.txt",
        local.join("game.ini").display(),
        local.join("added.txt").display()
    ));
    wait_for("the first edits", Duration::from_secs(20), || {
        file(&root, "cfg/game.ini").as_deref() == Some("edited over smb")
            && file(&root, "new/added.txt").as_deref() == Some("added over smb")
    });
    wait_for("its swap hook", Duration::from_secs(10), || swaps(&swap_log) == 2);
    let st = status(&root);
    assert_eq!(st["state"], "applied");
    let changed: Vec<&str> = st["changes"].as_array().unwrap().iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert!(changed.contains(&"cfg/game.ini") && changed.contains(&"new/added.txt"), "{st}");

    // A burst of puts (separate sessions, less than the quiet time apart) is one swap.
    let before = swaps(&swap_log);
    for i in 0..5 {
        write(local.join(format!("p{i}.txt")), format!("burst {i}"));
        expect.allow(&format!("burst/p{i}.txt"), format!("burst {i}"));
        let mk = if i == 0 { "mkdir burst; " } else { "" };
        smb.client(&format!("{mk}put {} burst/p{i}.txt", local.join(format!("p{i}.txt")).display()));
        std::thread::sleep(Duration::from_millis(150));
    }
    wait_for("the burst", Duration::from_secs(20), || file(&root, "burst/p4.txt").is_some());
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(swaps(&swap_log), before + 1, "a burst of writes gives one swap");
    for i in 0..5 {
        assert_eq!(file(&root, &format!("burst/p{i}.txt")).unwrap(), format!("burst {i}"));
    }

    // A big file saved in pieces (pauses shorter than the quiet time) is served whole or not at all.
    let big_v2: Vec<u8> = (0..8u32 << 20).map(|i| (i % 241) as u8 ^ 0x5a).collect();
    expect.allow("data/big.bin", &big_v2);
    {
        use std::io::Write;
        std::fs::create_dir_all(edits.join("data")).unwrap();
        let mut f = std::fs::File::create(edits.join("data/big.bin")).unwrap();
        for chunk in big_v2.chunks(2 << 20) {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            std::thread::sleep(Duration::from_millis(400));
        }
    }
    // And the same content over the share (smbd writes it in its own pieces).
    write(local.join("big.bin"), &big_v2);
    smb.client(&format!("put {} data/big2.bin", local.join("big.bin").display()));
    expect.allow("data/big2.bin", &big_v2);
    wait_for("the big files", Duration::from_secs(30), || {
        std::fs::read(root.join("current/data/big.bin")).is_ok_and(|d| d == big_v2)
            && std::fs::read(root.join("current/data/big2.bin")).is_ok_and(|d| d == big_v2)
    });

    // Delete through the share: the added file goes, the pinned one comes back.
    smb.client("del new/added.txt; del cfg/game.ini");
    wait_for("the deletes", Duration::from_secs(20), || {
        file(&root, "new/added.txt").is_none() && file(&root, "cfg/game.ini").as_deref() == Some("pinned")
    });

    // A hostile link (Samba cannot make one; made on the host) is refused with the good edit beside it.
    wait_for("the state file of the swap", Duration::from_secs(5), || {
        std::fs::read_link(root.join("current")).unwrap().file_name().unwrap().to_str() == state(&root)["tree"].as_str()
    });
    let good_digest = state(&root)["treeDigest"].as_str().unwrap().to_owned();
    wait_for("the swap hook of the last swap", Duration::from_secs(5), || {
        read(&swap_log).lines().last() == Some(good_digest.as_str())
    });
    let swaps_before = swaps(&swap_log);
    std::os::unix::fs::symlink("/etc/passwd", edits.join("cfg-evil")).unwrap();
    write(local.join("later.txt"), "after the refusal");
    smb.client(&format!("put {} later.txt", local.join("later.txt").display()));
    expect.allow("later.txt", "after the refusal");
    wait_for("the refusal", Duration::from_secs(20), || status(&root)["state"] == "refused");
    let st = status(&root);
    assert_eq!(st["lastRefused"]["path"], "cfg-evil", "{st}");
    assert!(st["lastRefused"]["reason"].as_str().unwrap().contains("absolute"), "{st}");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state(&root)["treeDigest"], good_digest.as_str(), "the last good tree stays");
    assert_eq!(swaps(&swap_log), swaps_before, "no swap for a refused batch");
    assert!(file(&root, "later.txt").is_none());
    let logged = read(&log);
    let line = logged.lines().find(|l| l.contains("edit refused")).expect("a log line for the refusal");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["path"], "cfg-evil");
    std::fs::remove_file(edits.join("cfg-evil")).unwrap();
    wait_for("the edits after the refusal", Duration::from_secs(20), || file(&root, "later.txt").is_some());

    stop.store(true, Ordering::SeqCst);
    let bad = reader.join().unwrap();
    assert!(bad.is_empty(), "the reader saw: {bad:?}");
    assert!(rounds.load(Ordering::SeqCst) > 50, "the reader read {} rounds", rounds.load(Ordering::SeqCst));
    drop(watch);

    // A restarted pod applies the edits in its init container: the same tree, on a fresh root too.
    let digest = state(&root)["treeDigest"].as_str().unwrap().to_owned();
    for r in [root.clone(), t.path().join("fresh-root")] {
        let out = init_cmd()
            .args(["apply", "--root"])
            .arg(&r)
            .arg("--edits")
            .arg(&edits)
            .env("GAMEZONE_LAYERS", &plan)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(gamezone_init::digest_dir(&r.join("current")).unwrap(), digest);
    }
    assert_eq!(std::fs::read(t.path().join("fresh-root/current/data/big.bin")).unwrap(), big_v2);
    drop(smb);
}

#[test]
fn watch_signals_the_game_after_each_swap() {
    let t = tempfile::tempdir().unwrap();
    let (base, edits, root) = (t.path().join("base"), t.path().join("edits"), t.path().join("root"));
    write(base.join("cfg/game.ini"), "pinned");
    std::fs::create_dir_all(&edits).unwrap();
    let (pid_file, got) = (t.path().join("game.pid"), t.path().join("got"));
    let game = Watch(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "trap 'echo usr1 >> {}' USR1; echo $$ > {}; while :; do sleep 0.05; done",
                got.display(),
                pid_file.display()
            ))
            .spawn()
            .unwrap(),
    );
    wait_for("the game's pid file", Duration::from_secs(5), || pid_file.exists());
    let plan = format!(r#"[{{"path":"","local":{{"path":"{}"}}}}]"#, base.display());
    let log = t.path().join("watch.log");
    let _watch = Watch(
        init_cmd()
            .args(["watch", "--interval", "1h", "--edits-quiet", "300ms", "--edits-poll", "100ms"])
            // Not HUP: a shell cannot trap a signal ignored when it started, and a run under
            // nohup (as scripts/cold-ci.sh may be) ignores HUP.
            .args(["--on-swap-signal", "USR1", "--on-swap-pid-file"])
            .arg(&pid_file)
            .arg("--root")
            .arg(&root)
            .arg("--edits")
            .arg(&edits)
            .env("GAMEZONE_LAYERS", &plan)
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let signals = || std::fs::read_to_string(&got).map(|s| s.lines().count()).unwrap_or(0);
    // A failure shows what the watch did: its log and the signals the game got.
    let watched = |what: &str, timeout: Duration, ok: &dyn Fn() -> bool| {
        let start = Instant::now();
        while !ok() {
            let shown = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; {} signal(s); the watch's log:\n{shown}",
                signals()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    watched("the signal after the first swap", Duration::from_secs(20), &|| signals() >= 1);
    assert_eq!(signals(), 1, "one swap, one signal");
    write(edits.join("cfg/game.ini"), "edited");
    watched("the edit", Duration::from_secs(20), &|| file(&root, "cfg/game.ini").as_deref() == Some("edited"));
    watched("the signal after the edit", Duration::from_secs(5), &|| signals() == 2);
    drop(game);
}
