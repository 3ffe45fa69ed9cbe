//! The screen of `gamezone status`: pure functions from a [`Snapshot`] to lines of text that fit
//! a terminal's width, coloured or not.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;

use super::model::{Group, Server, Snapshot};

/// How to draw one frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// Columns of the terminal.
    pub width: usize,
    /// The time ages are measured from.
    pub now: Timestamp,
    /// Non-ready servers listed one per line before "… and K more".
    pub waiting_max: usize,
    /// Following live (`-w`): a footer says how to stop.
    pub watching: bool,
    /// A line about the last refresh, e.g. an API error being retried.
    pub notice: Option<String>,
}

/// A colour of a span (SGR codes when colours are on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Paint {
    /// Headings and the zone's name.
    Bold,
    /// Secondary text.
    Dim,
    /// Ready, True.
    Green,
    /// Starting.
    Yellow,
    /// Draining.
    Cyan,
    /// Unhealthy, False, Warning.
    Red,
}

impl Paint {
    fn sgr(self) -> &'static str {
        match self {
            Paint::Bold => "1",
            Paint::Dim => "2",
            Paint::Green => "32",
            Paint::Yellow => "33",
            Paint::Cyan => "36",
            Paint::Red => "31",
        }
    }
}

/// One line: spans of text, each maybe coloured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Line(pub Vec<(Option<Paint>, String)>);

impl Line {
    fn plain(text: impl Into<String>) -> Line {
        Line(vec![(None, text.into())])
    }

    fn push(mut self, paint: Option<Paint>, text: impl Into<String>) -> Line {
        self.0.push((paint, text.into()));
        self
    }

    /// The text without colours.
    pub fn text(&self) -> String {
        self.0.iter().map(|(_, t)| t.as_str()).collect()
    }
}

/// The character each group's bar cells are drawn with.
fn cell(group: Group) -> char {
    match group {
        Group::Ready => '█',
        Group::Starting => '▓',
        Group::Draining => '▒',
        Group::Unhealthy => '░',
    }
}

fn paint(group: Group) -> Paint {
    match group {
        Group::Ready => Paint::Green,
        Group::Starting => Paint::Yellow,
        Group::Draining => Paint::Cyan,
        Group::Unhealthy => Paint::Red,
    }
}

/// Every line of one frame.
pub fn draw(snap: &Snapshot, frame: &Frame) -> Vec<Line> {
    let mut lines = Vec::new();
    lines.push(header(snap));
    lines.extend(conditions(snap));
    lines.push(Line::default());
    lines.extend(services(snap, frame.width));
    lines.extend(waiting(snap, frame.waiting_max));
    lines.extend(artifacts(snap));
    lines.extend(events(snap, frame.now));
    if let Some(notice) = &frame.notice {
        lines.push(Line::default());
        lines.push(Line::default().push(Some(Paint::Red), notice.clone()));
    }
    if frame.watching {
        lines.push(Line::default());
        lines.push(Line::default().push(Some(Paint::Dim), "following live; Ctrl-C to quit"));
    }
    lines
}

fn header(snap: &Snapshot) -> Line {
    let mut line = Line::default()
        .push(Some(Paint::Bold), snap.zone.clone())
        .push(Some(Paint::Dim), format!(" (namespace {})", snap.namespace));
    let phase = snap.phase.clone().unwrap_or_else(|| "no status yet".into());
    let phase_paint = match phase.as_str() {
        "Running" => Paint::Green,
        "Degraded" | "Terminating" => Paint::Red,
        _ => Paint::Yellow,
    };
    line = line.push(None, "  ").push(Some(phase_paint), phase);
    line = line.push(None, format!("  {}/{} servers ready", snap.ready, snap.desired));
    if snap.deleting {
        line = line.push(Some(Paint::Red), "  being deleted");
    }
    if let (Some(generation), Some(observed)) = (snap.generation, snap.observed_generation)
        && observed < generation
    {
        line = line.push(Some(Paint::Yellow), format!("  (status of generation {observed}; spec is at {generation})"));
    }
    line
}

fn conditions(snap: &Snapshot) -> Vec<Line> {
    let type_width = snap.conditions.iter().map(|c| c.type_.chars().count()).max().unwrap_or(0);
    snap.conditions
        .iter()
        .map(|c| {
            let paint = match c.status.as_str() {
                "True" => Paint::Green,
                "False" => Paint::Red,
                _ => Paint::Yellow,
            };
            let mut line =
                Line::plain(format!("  {:type_width$}  ", c.type_)).push(Some(paint), format!("{:7}", c.status));
            let said = match (c.reason.is_empty(), c.message.is_empty()) {
                (false, false) => format!("{}: {}", c.reason, c.message),
                (false, true) => c.reason.clone(),
                (true, _) => c.message.clone(),
            };
            line = line.push(None, format!(" {}", said.replace('\n', " ")));
            line
        })
        .collect()
}

/// The rows of one service type: its servers by version, the spec's version last.
fn versions<'a>(servers: &[&'a Server], wanted: Option<&String>) -> Vec<(String, Vec<&'a Server>)> {
    let mut by_version = BTreeMap::<&str, Vec<&Server>>::new();
    for s in servers {
        by_version.entry(s.version.as_str()).or_default().push(s);
    }
    let mut rows: Vec<(String, Vec<&Server>)> = by_version.into_iter().map(|(v, s)| (v.to_string(), s)).collect();
    rows.sort_by_key(|(v, _)| Some(v) == wanted);
    rows
}

fn services(snap: &Snapshot, width: usize) -> Vec<Line> {
    let mut lines = vec![legend(Line::default().push(Some(Paint::Bold), "Services").push(None, "   "))];
    if snap.servers.is_empty() {
        lines.push(Line::default().push(Some(Paint::Dim), "  no servers yet"));
        lines.push(Line::default());
        return lines;
    }
    let mut by_type = BTreeMap::<&str, Vec<&Server>>::new();
    for s in &snap.servers {
        by_type.entry(s.type_.as_str()).or_default().push(s);
    }
    // Per row: the type, its server count, the version, whether it is the one a rollout of
    // this type moves to (marked), the servers.
    let rows: Vec<(&str, usize, String, bool, Vec<&Server>)> = by_type
        .iter()
        .flat_map(|(type_, servers)| {
            let wanted = snap.wanted_versions.get(*type_);
            let rows = versions(servers, wanted);
            let type_rolling = rows.iter().any(|(version, _)| Some(version) != wanted);
            rows.into_iter().map(move |(version, members)| {
                let marked = type_rolling && wanted == Some(&version);
                (*type_, servers.len(), version, marked, members)
            })
        })
        .collect();
    let rolling = rows.iter().any(|(_, _, _, marked, _)| *marked);
    let type_width = rows.iter().map(|r| r.0.chars().count()).max().unwrap_or(0);
    let version_width = rows.iter().map(|r| r.2.chars().count().min(24) + usize::from(rolling)).max().unwrap_or(0);
    let counts: Vec<String> = rows.iter().map(|r| count_text(&r.4)).collect();
    let counts_width = counts.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    // What is left of the width after the names and counts, within reason.
    let bar_width = width.saturating_sub(2 + type_width + 2 + version_width + 2 + 2 + counts_width).clamp(10, 60);
    for ((type_, type_total, version, marked, members), counts) in rows.iter().zip(counts) {
        let mut by_group = [0usize; 4];
        for s in members {
            by_group[Group::ALL.iter().position(|g| *g == s.group()).expect("every group is in ALL")] += 1;
        }
        // A type's versions share the bar width: a rollout shows as one giving way to the next.
        let row_cells = (members.len() * bar_width).div_ceil((*type_total).max(1)).min(bar_width);
        let cells = split_cells(&by_group, row_cells);
        let mut version_text: String = version.chars().take(24).collect();
        if *marked {
            version_text.push('*');
        }
        let mut line = Line::plain(format!("  {type_:type_width$}  {version_text:version_width$}  "));
        for (group, n) in Group::ALL.iter().zip(cells) {
            if n > 0 {
                line = line.push(Some(paint(*group)), cell(*group).to_string().repeat(n));
            }
        }
        line = line.push(None, " ".repeat(bar_width - row_cells + 2)).push(None, counts);
        lines.push(line);
    }
    if rolling {
        lines.push(Line::default().push(Some(Paint::Dim), "  * the version the spec asks for"));
    }
    lines.push(Line::default());
    lines
}

/// "Services" and the key to the bars' cells.
fn legend(heading: Line) -> Line {
    Group::ALL.iter().fold(heading, |line, g| {
        line.push(Some(paint(*g)), cell(*g).to_string()).push(Some(Paint::Dim), format!(" {}  ", g.word()))
    })
}

/// `3 ready, 1 draining`.
fn count_text(members: &[&Server]) -> String {
    let parts: Vec<String> = Group::ALL
        .iter()
        .filter_map(|g| {
            let n = members.iter().filter(|s| s.group() == *g).count();
            (n > 0).then(|| format!("{n} {}", g.word()))
        })
        .collect();
    parts.join(", ")
}

/// `cells` split among `counts` in proportion (largest remainder), each non-zero count getting
/// at least one cell while there are cells enough.
pub fn split_cells(counts: &[usize], cells: usize) -> Vec<usize> {
    let total: usize = counts.iter().sum();
    if total == 0 || cells == 0 {
        return vec![0; counts.len()];
    }
    let nonzero = counts.iter().filter(|n| **n > 0).count();
    let floor_one = cells >= nonzero;
    let mut out: Vec<usize> = counts
        .iter()
        .map(|n| {
            let share = n * cells / total;
            if floor_one && *n > 0 { share.max(1) } else { share }
        })
        .collect();
    // Hand out what is left by remainder, or take back what the floor of one overdrew from the
    // largest.
    let mut order: Vec<usize> = (0..counts.len()).filter(|i| counts[*i] > 0).collect();
    order.sort_by_key(|i| std::cmp::Reverse((counts[*i] * cells) % total));
    let mut i = 0;
    while out.iter().sum::<usize>() < cells {
        out[order[i % order.len()]] += 1;
        i += 1;
    }
    while out.iter().sum::<usize>() > cells {
        let largest = (0..out.len()).max_by_key(|i| out[*i]).expect("counts are not empty");
        out[largest] -= 1;
    }
    out
}

fn waiting(snap: &Snapshot, max: usize) -> Vec<Line> {
    let mut waiting: Vec<&Server> = snap.servers.iter().filter(|s| s.group() != Group::Ready).collect();
    if waiting.is_empty() {
        return Vec::new();
    }
    // The ones a person must look at first: failed, then coming up, then leaving.
    waiting.sort_by_key(|s| match s.group() {
        Group::Unhealthy => 0,
        Group::Starting => 1,
        Group::Draining => 2,
        Group::Ready => 3,
    });
    let mut lines = vec![
        Line::default()
            .push(Some(Paint::Bold), "Waiting")
            .push(Some(Paint::Dim), format!("  {} of {} servers not ready", waiting.len(), snap.servers.len())),
    ];
    let shown = &waiting[..waiting.len().min(max)];
    let name_width = shown.iter().map(|s| s.name.chars().count()).max().unwrap_or(0);
    let version_width = shown.iter().map(|s| s.version.chars().count().min(24)).max().unwrap_or(0);
    let state_width = shown.iter().map(|s| s.state_word().len()).max().unwrap_or(0);
    for s in shown {
        let version: String = s.version.chars().take(24).collect();
        let message = s.message.clone().unwrap_or_else(|| "-".into()).replace('\n', " ");
        lines.push(
            Line::plain(format!("  {:name_width$}  {version:version_width$}  ", s.name))
                .push(Some(paint(s.group())), format!("{:state_width$}", s.state_word()))
                .push(None, format!("  {message}")),
        );
    }
    if waiting.len() > shown.len() {
        lines.push(Line::default().push(Some(Paint::Dim), format!("  … and {} more", waiting.len() - shown.len())));
    }
    lines.push(Line::default());
    lines
}

/// Long hex runs (commits, digests) cut to 12 digits, enough to tell revisions apart.
pub fn short_hex(revision: &str) -> String {
    let mut out = String::new();
    let mut run = 0;
    for c in revision.chars() {
        if c.is_ascii_hexdigit() {
            run += 1;
            if run <= 12 {
                out.push(c);
            }
        } else {
            run = 0;
            out.push(c);
        }
    }
    out
}

fn artifacts(snap: &Snapshot) -> Vec<Line> {
    if snap.pins.is_empty() && snap.tree_image.is_none() {
        return Vec::new();
    }
    let mut heading = Line::default().push(Some(Paint::Bold), "Artifacts");
    if let Some(revision) = &snap.artifact_revision {
        heading = heading.push(None, format!("  revision {revision}"));
    }
    let mut lines = vec![heading];
    let revision_width = snap.pins.iter().map(|p| short_hex(&p.revision).chars().count()).max().unwrap_or(0);
    for pin in &snap.pins {
        let mut line = Line::plain(format!("  layer {}  {:revision_width$}  ", pin.layer, short_hex(&pin.revision)))
            .push(Some(Paint::Dim), pin.source.clone());
        if pin.packed {
            line = line.push(Some(Paint::Dim), " (packed)");
        }
        lines.push(line);
    }
    if let Some(tree) = &snap.tree_image {
        lines.push(Line::plain(format!("  tree image  {tree}")));
    }
    lines.push(Line::default());
    lines
}

/// `42s`, `5m`, `3h`, `2d`, as kubectl prints ages.
pub fn age(from: Timestamp, now: Timestamp) -> String {
    let secs = now.as_second().saturating_sub(from.as_second()).max(0);
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn events(snap: &Snapshot, now: Timestamp) -> Vec<Line> {
    let mut lines = vec![Line::default().push(Some(Paint::Bold), "Events")];
    if snap.events.is_empty() {
        lines.push(Line::default().push(Some(Paint::Dim), "  none"));
        return lines;
    }
    let ages: Vec<String> = snap.events.iter().map(|e| e.time.map_or_else(|| "?".into(), |t| age(t, now))).collect();
    let age_width = ages.iter().map(String::len).max().unwrap_or(0);
    let reason_width = snap.events.iter().map(|e| e.reason.chars().count()).max().unwrap_or(0);
    let object_width = snap.events.iter().map(|e| e.object.chars().count()).max().unwrap_or(0);
    for (e, age) in snap.events.iter().zip(ages) {
        let warning = e.type_ == "Warning";
        let times = if e.count > 1 { format!(" (×{})", e.count) } else { String::new() };
        lines.push(
            Line::plain(format!("  {age:>age_width$}  "))
                .push(warning.then_some(Paint::Red), format!("{:reason_width$}", e.reason))
                .push(Some(Paint::Dim), format!("  {:object_width$}", e.object))
                .push(None, format!("  {}{times}", e.message)),
        );
    }
    lines
}

/// The lines as text, each cut to `width` columns (an ellipsis marks the cut), trailing spaces
/// dropped, with SGR colour codes when `color`.
pub fn render(lines: &[Line], width: usize, color: bool) -> String {
    let mut out = String::new();
    for line in lines {
        let mut left = width;
        let cut = line.text().trim_end().chars().count() > width;
        let mut spans: Vec<(Option<Paint>, String)> = Vec::new();
        for (paint, text) in &line.0 {
            if left == 0 {
                break;
            }
            let taken: String = text.chars().take(left).collect();
            left -= taken.chars().count();
            spans.push((*paint, taken));
        }
        if cut {
            // The last column becomes the ellipsis.
            if let Some((_, last)) = spans.iter_mut().rev().find(|(_, t)| !t.is_empty()) {
                last.pop();
                last.push('…');
            }
        }
        // Trailing blanks go, so a narrower terminal never wraps a padded line.
        while let Some((_, last)) = spans.last_mut() {
            let trimmed = last.trim_end().len();
            last.truncate(trimmed);
            if last.is_empty() {
                spans.pop();
            } else {
                break;
            }
        }
        for (paint, text) in spans {
            match paint {
                Some(p) if color => out.push_str(&format!("\x1b[{}m{text}\x1b[0m", p.sgr())),
                _ => out.push_str(&text),
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ServerState;
    use crate::status_view::model::{ConditionLine, EventLine, Pin};

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn server(id: i64, version: &str, state: ServerState, message: Option<&str>) -> Server {
        Server {
            name: format!("zone1-game-{id}"),
            type_: "game".into(),
            id,
            version: version.into(),
            state: Some(state),
            message: message.map(Into::into),
            deleting: false,
        }
    }

    /// A zone halfway through a rollout from image `svc:1` to `svc:2`.
    fn rolling() -> Snapshot {
        Snapshot {
            namespace: "team-a".into(),
            zone: "zone1".into(),
            phase: Some("Deploying".into()),
            generation: Some(3),
            observed_generation: Some(3),
            ready: 2,
            desired: 4,
            conditions: vec![
                ConditionLine {
                    type_: "Ready".into(),
                    status: "False".into(),
                    reason: "Deploying".into(),
                    message: "2 of 4 servers ready".into(),
                },
                ConditionLine {
                    type_: "ServersReady".into(),
                    status: "False".into(),
                    reason: "Updating".into(),
                    message: "draining zone1-game-3: waiting for deletable gates NoPlayers".into(),
                },
            ],
            servers: vec![
                server(1, "2", ServerState::Ready, None),
                server(2, "2", ServerState::RequestReady, Some("waiting for readiness gates Loaded")),
                server(3, "1", ServerState::Draining, Some("NotInService; waiting for deletable gates NoPlayers")),
                server(4, "1", ServerState::Ready, None),
                Server {
                    name: "zone1-db-1".into(),
                    type_: "db".into(),
                    id: 1,
                    version: "2".into(),
                    state: Some(ServerState::Ready),
                    ..Default::default()
                },
            ],
            wanted_versions: [("game".to_string(), "2".to_string()), ("db".to_string(), "2".to_string())].into(),
            artifact_revision: Some("3f9c2a1b7d0e".into()),
            pins: vec![Pin {
                layer: 0,
                source: "https://git.example.com/team/config.git#main".into(),
                revision: "0123456789abcdef0123456789abcdef01234567".into(),
                packed: true,
            }],
            tree_image: Some("registry.local:5000/gz@sha256:abcdef".into()),
            events: vec![
                EventLine {
                    time: Some(at("2026-01-01T00:00:00Z")),
                    type_: "Normal".into(),
                    reason: "Updating".into(),
                    object: "GameZone/zone1".into(),
                    message: "rolling 4 servers to a new template".into(),
                    count: 1,
                },
                EventLine {
                    time: Some(at("2026-01-01T00:09:30Z")),
                    type_: "Warning".into(),
                    reason: "DrainWaiting".into(),
                    object: "GameServer/zone1-game-3".into(),
                    message: "waiting for deletable gates NoPlayers".into(),
                    count: 3,
                },
            ],
            deleting: false,
        }
    }

    fn frame(width: usize) -> Frame {
        Frame { width, now: at("2026-01-01T00:10:00Z"), waiting_max: 10, watching: false, notice: None }
    }

    fn text(snap: &Snapshot, frame: &Frame) -> String {
        render(&draw(snap, frame), frame.width, false)
    }

    #[test]
    fn a_rollout_shows_both_versions_of_a_type_what_each_server_waits_for_the_pins_and_events() {
        let got = text(&rolling(), &frame(100));
        println!("{got}");
        let want = "\
zone1 (namespace team-a)  Deploying  2/4 servers ready
  Ready         False   Deploying: 2 of 4 servers ready
  ServersReady  False   Updating: draining zone1-game-3: waiting for deletable gates NoPlayers

Services   █ ready  ▓ starting  ▒ draining  ░ unhealthy
  db    2   ████████████████████████████████████████████████████████████  1 ready
  game  1   ███████████████▒▒▒▒▒▒▒▒▒▒▒▒▒▒▒                                1 ready, 1 draining
  game  2*  ███████████████▓▓▓▓▓▓▓▓▓▓▓▓▓▓▓                                1 ready, 1 starting
  * the version the spec asks for

Waiting  2 of 5 servers not ready
  zone1-game-2  2  RequestReady  waiting for readiness gates Loaded
  zone1-game-3  1  Draining      NotInService; waiting for deletable gates NoPlayers

Artifacts  revision 3f9c2a1b7d0e
  layer 0  0123456789ab  https://git.example.com/team/config.git#main (packed)
  tree image  registry.local:5000/gz@sha256:abcdef

Events
  10m  Updating      GameZone/zone1           rolling 4 servers to a new template
  30s  DrainWaiting  GameServer/zone1-game-3  waiting for deletable gates NoPlayers (×3)
";
        assert_eq!(got, want);
    }

    #[test]
    fn every_line_fits_the_terminal_at_any_width() {
        let mut snap = rolling();
        snap.conditions[1].message = "x".repeat(500);
        for width in [20, 40, 60, 80, 100, 160, 300] {
            let mut f = frame(width);
            f.watching = true;
            f.notice = Some("cannot read the zone (timed out); retrying every 1s".into());
            for line in text(&snap, &f).lines() {
                assert!(line.chars().count() <= width, "{width} columns: {line:?}");
            }
        }
        let narrow = text(&snap, &frame(40));
        assert!(narrow.lines().any(|l| l.ends_with('…')), "a cut line ends with an ellipsis:\n{narrow}");
    }

    #[test]
    fn many_waiting_servers_show_the_first_few_and_how_many_more() {
        let mut snap = rolling();
        snap.servers =
            (1..=30).map(|id| server(id, "2", ServerState::Scheduling, Some("0/3 nodes are available"))).collect();
        let got = text(&snap, &frame(100));
        let listed = got.lines().filter(|l| l.contains("0/3 nodes are available")).count();
        assert_eq!(listed, 10, "{got}");
        assert!(got.contains("Waiting  30 of 30 servers not ready"), "{got}");
        assert!(got.contains("  … and 20 more"), "{got}");
    }

    #[test]
    fn the_ones_that_failed_are_listed_before_those_coming_up_and_leaving() {
        let mut snap = rolling();
        snap.servers.push(server(5, "2", ServerState::Unhealthy, Some("pod failed: OOMKilled")));
        snap.servers.push(Server { deleting: true, ..server(6, "1", ServerState::Ready, None) });
        let got = text(&snap, &frame(100));
        let waiting: Vec<&str> = got
            .lines()
            .skip_while(|l| !l.starts_with("Waiting"))
            .skip(1)
            .take_while(|l| !l.is_empty())
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(waiting, ["zone1-game-5", "zone1-game-2", "zone1-game-3", "zone1-game-6"]);
        assert!(got.contains("zone1-game-6  1  Deleting"), "{got}");
        assert!(got.contains("  1 ready, 2 draining\n"), "{got}");
        assert!(got.contains("  1 ready, 1 starting, 1 unhealthy\n"), "{got}");
    }

    #[test]
    fn a_zone_not_rolling_has_no_version_mark_and_a_new_zone_says_so() {
        let mut snap = rolling();
        snap.servers.retain(|s| s.version == "2" && s.state == Some(ServerState::Ready));
        let got = text(&snap, &frame(100));
        assert!(!got.contains('*'), "{got}");
        assert!(!got.contains("\nWaiting"), "{got}");
        let empty = Snapshot { zone: "z".into(), namespace: "ns".into(), ..Default::default() };
        let got = text(&empty, &frame(100));
        assert!(got.starts_with("z (namespace ns)  no status yet  0/0 servers ready\n"), "{got}");
        assert!(got.contains("no servers yet"), "{got}");
    }

    #[test]
    fn colours_only_when_asked() {
        let lines = draw(&rolling(), &frame(100));
        assert!(!render(&lines, 100, false).contains('\x1b'));
        let coloured = render(&lines, 100, true);
        assert!(coloured.contains("\x1b[32m█"), "ready cells are green");
        assert!(coloured.contains("\x1b[31mDrainWaiting"), "warnings are red");
        // Colours never change what is shown.
        let stripped: String = coloured.split("\x1b[").enumerate().fold(String::new(), |mut s, (i, part)| {
            s.push_str(if i == 0 { part } else { part.split_once('m').map_or(part, |(_, rest)| rest) });
            s
        });
        assert_eq!(stripped, render(&lines, 100, false));
    }

    #[test]
    fn bar_cells_are_shared_in_proportion_and_no_state_present_vanishes() {
        assert_eq!(split_cells(&[3, 1, 0, 0], 40), [30, 10, 0, 0]);
        assert_eq!(split_cells(&[198, 1, 1, 0], 20), [18, 1, 1, 0]);
        assert_eq!(split_cells(&[1, 1, 1], 10).iter().sum::<usize>(), 10);
        assert_eq!(split_cells(&[0, 0], 10), [0, 0]);
        assert_eq!(split_cells(&[5, 5, 5], 2).iter().sum::<usize>(), 2);
    }

    #[test]
    fn ages_read_like_kubectl_and_revisions_are_cut_to_twelve_digits() {
        let now = at("2026-01-03T00:00:00Z");
        let ages: Vec<String> =
            ["2026-01-02T23:59:18Z", "2026-01-02T23:30:00Z", "2026-01-02T12:00:00Z", "2025-12-30T00:00:00Z"]
                .iter()
                .map(|t| age(at(t), now))
                .collect();
        assert_eq!(ages, ["42s", "30m", "12h", "4d"]);
        assert_eq!(short_hex("sha256:0123456789abcdef0123"), "sha256:0123456789ab");
        assert_eq!(short_hex("42@sha256:0123456789abcdef0123"), "42@sha256:0123456789ab");
    }
}
