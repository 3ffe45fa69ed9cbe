//! `gamezone status` as a person uses it: at a real terminal (a tmux pane, 120×40), following a
//! zone that rolls to a new image, then stopped with Ctrl-C; and without a terminal, on a zone
//! that is deleted and on one that does not exist.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use gamezone::api::*;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::{common, support};
use support::{Operator, WAIT, install_crds, set_gate, wait_ready};

const BIN: &str = env!("CARGO_BIN_EXE_gamezone");

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// A detached 120×40 session running an interactive bash with the prompt `$ `.
    fn start(name: &str) -> Tmux {
        let tmux = Tmux { socket: format!("gamezone-{name}-{}", std::process::id()) };
        let out = tmux.run(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "120",
            "-y",
            "40",
            // What a person's shell would have: no NO_COLOR, no fixed COLUMNS.
            "env",
            "-u",
            "NO_COLOR",
            "-u",
            "COLUMNS",
            "-u",
            "LINES",
            "PS1=$ ",
            "bash",
            "--norc",
            "--noprofile",
            "-i",
        ]);
        assert!(out.status.success(), "tmux new-session: {}", String::from_utf8_lossy(&out.stderr));
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run tmux")
    }

    /// Types `line` and Enter.
    fn type_line(&self, line: &str) {
        assert!(self.run(&["send-keys", "-t", "t", "-l", line]).status.success());
        assert!(self.run(&["send-keys", "-t", "t", "Enter"]).status.success());
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    fn format(&self, format: &str) -> String {
        String::from_utf8_lossy(&self.run(&["display-message", "-p", "-t", "t", format]).stdout).trim().to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- the tmux pane ---\n{}", self.screen());
        }
        let _ = self.run(&["kill-server"]);
    }
}

/// The `game` rows of the Services section: (version, counts), e.g. `("2*", "1 ready, 1 starting")`.
fn game_rows(screen: &str) -> Vec<(String, String)> {
    screen
        .lines()
        .filter(|l| l.starts_with("  game  ") && l.contains(['█', '▓', '▒', '░']))
        .map(|l| {
            let mut words = l.split_whitespace().skip(1);
            let version = words.next().unwrap_or_default().to_string();
            let counts = l.rsplit_once(['█', '▓', '▒', '░']).map_or("", |(_, c)| c).trim().to_string();
            (version, counts)
        })
        .collect()
}

/// Waits until the pane's screen satisfies `check` (which says what it saw otherwise).
async fn wait_screen<T>(tmux: &Tmux, what: &str, check: impl Fn(&str) -> Result<T, String>) -> T {
    common::wait_for(what, WAIT, || async { check(&tmux.screen()) }).await
}

#[tokio::test]
async fn status_w_follows_a_rollout_at_a_terminal_and_ctrl_c_ends_it_cleanly() {
    let ns = common::namespace("status-tty").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    let servers: Api<GameServer> = ns.api();
    let lifecycle = json!({"deletableGates": ["NoPlayers"], "updateStrategy": {"maxUnavailable": 1}});
    let zone = gamezone_api::fixture::zone("zone1")
        .servers(4)
        .game("deletableGates", lifecycle["deletableGates"].clone())
        .game("updateStrategy", lifecycle["updateStrategy"].clone())
        .build();
    zones.create(&PostParams::default(), &zone).await.unwrap();
    wait_ready(&zones, "zone1").await;

    let dir = tempfile::tempdir().unwrap();
    let rc = dir.path().join("rc");
    let tmux = Tmux::start("status");
    tmux.type_line(&format!(
        "{BIN} status zone1 -n {} --kubeconfig {} -w; echo $? > {}",
        ns.name,
        ns.kubeconfig().display(),
        rc.display()
    ));
    let header = format!("zone1 (namespace {})  Running  4/4 servers ready", ns.name);
    wait_screen(&tmux, "the zone Running on version 1", |s| {
        let rows = game_rows(s);
        if s.contains(&header) && rows == [("1".into(), "4 ready".into())] { Ok(()) } else { Err(s.into()) }
    })
    .await;

    // New image; players hold the first drained server: the screen says what it waits for.
    let mut bumped = lifecycle.clone();
    bumped["type"] = json!("game");
    bumped["id"] = json!(1);
    bumped["endId"] = json!(4);
    bumped["image"] = json!("svc:2");
    zones
        .patch("zone1", &PatchParams::default(), &Patch::Merge(json!({"spec": {"services": [bumped]}})))
        .await
        .unwrap();
    wait_screen(&tmux, "a server draining, waiting for its players", |s| {
        let waits = s.lines().any(|l| l.contains("Draining") && l.contains("NoPlayers"));
        let rows = game_rows(s);
        if waits && rows.iter().any(|(v, c)| v == "1" && c.contains("1 draining")) { Ok(()) } else { Err(s.into()) }
    })
    .await;

    // Players leave each drained server in turn: both versions show, then only the new one.
    // The second server's players wait until the screen showed both, however fast the rollout.
    let mut both = None;
    let mut opened = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        for gs in servers.list(&Default::default()).await.unwrap() {
            let name = kube::ResourceExt::name_any(&gs);
            let draining = gs.status.as_ref().and_then(|s| s.state) == Some(ServerState::Draining);
            if draining && (opened.is_empty() || both.is_some()) && opened.insert(name.clone()) {
                set_gate(&servers, &name, "NoPlayers", true).await;
            }
        }
        let screen = tmux.screen();
        let rows = game_rows(&screen);
        let versions: Vec<&str> = rows.iter().map(|(v, _)| v.as_str()).collect();
        if versions == ["1", "2*"] && both.is_none() {
            both = Some(screen.clone());
        }
        if let [(v, c)] = rows.as_slice()
            && v == "2"
            && c == "4 ready"
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout to version 2 never showed; last screen:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let both = both.expect("a frame with version 1 and version 2 side by side");
    assert!(both.contains("* the version the spec asks for"), "{both}");
    let done = tmux.screen();
    assert!(done.contains("Events") && done.contains("GameZone/zone1"), "recent Events of the zone:\n{done}");
    assert!(done.lines().all(|l| l.chars().count() <= 120), "wider than the pane:\n{done}");

    // Ctrl-C: the shell runs on (the exit status is written), the prompt is back, the cursor shows.
    assert!(tmux.run(&["send-keys", "-t", "t", "C-c"]).status.success());
    let status = common::wait_for("the exit status of gamezone status -w", Duration::from_secs(10), || async {
        std::fs::read_to_string(&rc).map_err(|e| format!("{}: {e}", rc.display()))
    })
    .await;
    assert_eq!(status.trim(), "0", "gamezone status -w exits 0 on Ctrl-C");
    wait_screen(&tmux, "the shell's prompt after the last frame", |s| {
        let last = s.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        if last.trim_end() == "$" { Ok(()) } else { Err(s.into()) }
    })
    .await;
    assert_eq!(tmux.format("#{pane_current_command}"), "bash", "gamezone is gone from the pane");
    assert_eq!(tmux.format("#{cursor_flag}"), "1", "the cursor is shown again");
    ns.cleanup().await;
}

fn status(kubeconfig: &Path, ns: &str, zone: &str, watch: bool) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["status", zone, "-n", ns, "--kubeconfig"]).arg(kubeconfig);
    if watch {
        cmd.arg("-w");
    }
    cmd.env_remove("RUST_BACKTRACE").env("RUST_BACKTRACE", "0");
    cmd
}

#[tokio::test]
async fn status_prints_once_ends_when_its_zone_is_deleted_and_names_a_missing_one() {
    let ns = common::namespace("status-pipe").await;
    install_crds(&ns.client).await;
    let _op = Operator::start(ns.kubeconfig(), &ns.name);
    let zones: Api<GameZone> = ns.api();
    zones.create(&PostParams::default(), &gamezone_api::fixture::zone("zone1").servers(2).build()).await.unwrap();
    wait_ready(&zones, "zone1").await;

    // Once, off a terminal: no escape codes, the default width.
    let out = status(ns.kubeconfig(), &ns.name, "zone1", false).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains('\x1b'), "{text:?}");
    assert_eq!(game_rows(&text), [("1".to_string(), "2 ready".to_string())], "{text}");
    assert!(text.lines().all(|l| l.chars().count() <= 100), "{text}");

    // Following, until the zone is deleted: the last line says so, the exit status is 0.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("status-w.out");
    let follower = status(ns.kubeconfig(), &ns.name, "zone1", true)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for("a first frame", WAIT, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("zone1 (namespace") { Ok(()) } else { Err(text) }
    })
    .await;
    zones.delete("zone1", &DeleteParams::default()).await.unwrap();
    let follower = std::sync::Mutex::new(follower);
    let exit = common::wait_for("gamezone status -w to end with its zone", WAIT, || async {
        follower.lock().unwrap().try_wait().map_err(|e| e.to_string())?.ok_or_else(|| "running".to_string())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(exit.success(), "{exit}: {text}");
    let last = text.lines().rev().find(|l| !l.is_empty()).unwrap_or_default();
    assert_eq!(last, format!("GameZone {}/zone1 was deleted.", ns.name), "{text}");

    // A zone that does not exist: an error naming it and the namespace.
    let out = status(ns.kubeconfig(), &ns.name, "nosuch", false).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&format!("GameZone \"nosuch\" not found in namespace \"{}\"", ns.name)), "{err}");
    ns.cleanup().await;
}
