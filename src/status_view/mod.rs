//! `gamezone status ZONE [-w]`: the zone drawn for a person at a terminal, from what `kubectl`
//! could read (the GameZone, its GameServers, the Events about them). [`model`] turns the objects
//! into plain data, [`draw`] that data into lines; this module reads the cluster and follows it.

pub mod draw;
pub mod model;

use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ListParams};

use crate::api::{GameServer, GameZone, ZONE_LABEL};
use draw::Frame;
use model::Snapshot;

/// Events shown: enough to see the last steps of a rollout.
const EVENTS: usize = 8;
/// Non-ready servers listed before "… and K more".
const WAITING: usize = 10;
/// Columns when the terminal does not say.
const DEFAULT_WIDTH: usize = 100;
/// How often `-w` reads the zone again.
const REFRESH: Duration = Duration::from_secs(1);

/// What to show.
#[derive(Clone, Debug)]
pub struct Target {
    /// The zone's namespace.
    pub namespace: String,
    /// The zone's name.
    pub zone: String,
}

/// Reads the zone, its servers and their Events; `None` when the zone does not exist.
pub async fn snapshot(client: &Client, target: &Target) -> crate::Result<Option<Snapshot>> {
    let ns = &target.namespace;
    let Some(zone) = Api::<GameZone>::namespaced(client.clone(), ns).get_opt(&target.zone).await? else {
        return Ok(None);
    };
    let servers = Api::<GameServer>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{ZONE_LABEL}={}", target.zone)))
        .await?
        .items;
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut about = events
        .list(
            &ListParams::default().fields(&format!("involvedObject.kind=GameZone,involvedObject.name={}", target.zone)),
        )
        .await?
        .items;
    // A server's name starts with its zone's; servers already gone keep their Events (a drain
    // that ended, a scale-down).
    let prefix = format!("{}-", target.zone);
    about.extend(
        events
            .list(&ListParams::default().fields("involvedObject.kind=GameServer"))
            .await?
            .items
            .into_iter()
            .filter(|e| e.involved_object.name.as_deref().is_some_and(|n| n.starts_with(&prefix))),
    );
    Ok(Some(Snapshot::new(&zone, &servers, &about, EVENTS)))
}

/// The terminal's columns: `$COLUMNS`, else what the terminal on stdout says, else 100.
fn terminal_size() -> (usize, Option<usize>) {
    let from_env = |var: &str| std::env::var(var).ok().and_then(|c| c.trim().parse::<usize>().ok()).filter(|c| *c > 0);
    #[cfg(target_os = "linux")]
    let asked = rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .filter(|w| w.ws_col > 0)
        .map(|w| (usize::from(w.ws_col), usize::from(w.ws_row)));
    #[cfg(not(target_os = "linux"))]
    let asked: Option<(usize, usize)> = None;
    let width = from_env("COLUMNS").or(asked.map(|a| a.0)).unwrap_or(DEFAULT_WIDTH);
    let rows = from_env("LINES").or(asked.map(|a| a.1)).filter(|r| *r > 0);
    (width, rows)
}

/// Colours when stdout is a terminal and `NO_COLOR` is unset or empty (no-color.org).
fn colors() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn not_found(target: &Target) -> anyhow::Error {
    anyhow::anyhow!(
        "GameZone {:?} not found in namespace {:?}: check the name (`kubectl get gz -n {}`) or pass -n NAMESPACE",
        target.zone,
        target.namespace,
        target.namespace
    )
}

/// Prints the zone once.
pub async fn print_once(client: &Client, target: &Target) -> anyhow::Result<()> {
    let snap = snapshot(client, target)
        .await
        .with_context(|| format!("reading GameZone {}/{}", target.namespace, target.zone))?
        .ok_or_else(|| not_found(target))?;
    let (width, _) = terminal_size();
    let frame = Frame { width, now: Timestamp::now(), waiting_max: WAITING, watching: false, notice: None };
    print!("{}", draw::render(&draw::draw(&snap, &frame), width, colors()));
    Ok(())
}

/// Shows the cursor again however the watch ends (on a terminal, it is hidden while drawing).
struct CursorShown(bool);

impl Drop for CursorShown {
    fn drop(&mut self) {
        if self.0 {
            print!("\x1b[?25h");
            let _ = std::io::stdout().flush();
        }
    }
}

/// Follows the zone, redrawing every second, until Ctrl-C (or SIGTERM) or the zone is deleted.
pub async fn follow(client: &Client, target: &Target) -> anyhow::Result<()> {
    let mut snap = snapshot(client, target)
        .await
        .with_context(|| format!("reading GameZone {}/{}", target.namespace, target.zone))?
        .ok_or_else(|| not_found(target))?;
    let tty = std::io::stdout().is_terminal();
    let color = colors();
    let mut interrupted = std::pin::pin!(interrupted());
    let _cursor = CursorShown(tty);
    if tty {
        // Hide the cursor, clear the screen once; later frames overwrite in place.
        print!("\x1b[?25l\x1b[2J\x1b[H");
    }
    let mut notice = None;
    // Off a terminal a frame is printed when the zone changed, not every second for its ages.
    let mut printed: Option<(Snapshot, Option<String>)> = None;
    loop {
        let (width, rows) = terminal_size();
        let frame =
            Frame { width, now: Timestamp::now(), waiting_max: WAITING, watching: true, notice: notice.clone() };
        let mut lines = draw::draw(&snap, &frame);
        if tty && let Some(rows) = rows {
            fit_height(&mut lines, rows);
        }
        let text = draw::render(&lines, width, color);
        if tty {
            // Home, each line then clear to its end, then clear below: no flicker.
            print!("\x1b[H{}\x1b[J", text.replace('\n', "\x1b[K\n"));
        } else if printed.as_ref() != Some(&(snap.clone(), notice.clone())) {
            println!("{text}");
            printed = Some((snap.clone(), notice.clone()));
        }
        std::io::stdout().flush()?;

        tokio::select! {
            _ = &mut interrupted => return stopped(tty),
            _ = tokio::time::sleep(REFRESH) => {}
        }
        let read = tokio::select! {
            _ = &mut interrupted => return stopped(tty),
            read = snapshot(client, target) => read,
        };
        match read {
            Ok(Some(next)) => {
                snap = next;
                notice = None;
            }
            Ok(None) => {
                println!("GameZone {}/{} was deleted.", target.namespace, target.zone);
                return Ok(());
            }
            // The last good frame stays; a person sees why it is not moving.
            Err(e) => notice = Some(format!("cannot read the zone ({e}); retrying every {}s", REFRESH.as_secs())),
        }
    }
}

/// Ctrl-C ends the watch without a word: the terminal's `^C` echo below the last frame is
/// erased, so the shell's prompt comes back right under it.
fn stopped(tty: bool) -> anyhow::Result<()> {
    if tty {
        print!("\r\x1b[K");
        std::io::stdout().flush()?;
    }
    Ok(())
}

/// Keeps a frame within the terminal's rows, so drawing from the top never scrolls it.
fn fit_height(lines: &mut Vec<draw::Line>, rows: usize) {
    let room = rows.saturating_sub(1).max(1);
    if lines.len() > room {
        let hidden = lines.len() - room + 1;
        lines.truncate(room - 1);
        lines.push(draw::Line(vec![(
            Some(draw::Paint::Dim),
            format!("… {hidden} more lines; a taller terminal shows them"),
        )]));
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
