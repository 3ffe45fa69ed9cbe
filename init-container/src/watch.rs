//! Watch mode: re-resolve on an interval and apply when a revision moved; local sources are
//! watched with inotify so edits show up at once (debounced). With an edits directory, its
//! changes are applied as soon as it is quiet, on the pinned layers last resolved (no fetch),
//! and the swap hooks run after each swap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use notify::Watcher as _;
use tokio::sync::mpsc;

use crate::apply::{ApplyOptions, apply};
use crate::edits_layer::{Debounce, Decision};
use crate::hook::SwapHook;
use crate::plan::SourceRef;
use crate::resolve::{Options, resolve_opts};
use crate::summary::Summary;
use crate::{Error, Result};

/// Quiet time after a local change before re-resolving.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// A file inotify saw written but not closed is taken as closed after this long without writes
/// (a missed event must not hold the edits back forever).
const WRITER_HOLD: Duration = Duration::from_secs(120);

/// How `watch` runs.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// Time between resolves of the pinned layers.
    pub interval: Duration,
    /// How long the edits directory must stay unchanged before its edits are applied.
    pub quiet: Duration,
    /// How often the edits directory is scanned (inotify only sees local writers; a network
    /// mount is seen by scanning).
    pub poll: Duration,
    /// What to run after each swap.
    pub hook: SwapHook,
    /// Pins to keep instead of resolving (the operator's, in a zone's pod): a new pin replaces
    /// the pod, so this watch only applies edits on top of them.
    pub pinned: Option<Vec<String>>,
    /// Where to copy the edits status after each round, so the edits share's server can report
    /// every pod's (a file on the edits volume, outside the shared folder).
    pub report: Option<PathBuf>,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            interval: Duration::from_secs(30),
            quiet: Duration::from_secs(2),
            poll: Duration::from_secs(1),
            hook: SwapHook::default(),
            pinned: None,
            report: None,
        }
    }
}

enum Wake {
    Stop,
    Resolve,
    Edits,
}

/// Resolves and applies `opts.layers` every `w.interval` (and on local changes) until `stop`
/// completes, with `opts.edits` on top when set. `opts.revisions` is ignored: every round
/// resolves afresh, unless `w.pinned` gives the pins to keep. Failed rounds are logged and retried on the next round; `current` keeps
/// the last good tree.
pub async fn watch(opts: ApplyOptions, w: WatchOptions, stop: impl std::future::Future<Output = ()>) -> Result<()> {
    crate::plan::validate(&opts.layers)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let _watcher = watch_local_dirs(&opts, tx)?;
    let (etx, mut erx) = mpsc::unbounded_channel::<notify::Event>();
    let _edits_watcher = match &opts.edits {
        Some(d) => watch_edits_dir(d, etx),
        None => None,
    };
    let mut writers: HashMap<PathBuf, Instant> = HashMap::new();
    let mut debounce = Debounce::new(w.quiet);
    let mut revisions: Option<Vec<String>> = w.pinned.clone();
    let mut next_resolve = tokio::time::Instant::now();
    let mut edits_wait = w.poll;
    tokio::pin!(stop);
    loop {
        let wake = tokio::select! {
            _ = &mut stop => Wake::Stop,
            _ = tokio::time::sleep_until(next_resolve) => Wake::Resolve,
            Some(()) = rx.recv() => {
                // Let a burst of writes settle before resolving.
                while tokio::time::timeout(DEBOUNCE, rx.recv()).await.is_ok_and(|m| m.is_some()) {}
                tracing::info!("local source changed");
                Wake::Resolve
            }
            Some(ev) = erx.recv(), if opts.edits.is_some() => {
                track_writer(&mut writers, &ev);
                while let Ok(ev) = erx.try_recv() {
                    track_writer(&mut writers, &ev);
                }
                Wake::Edits
            }
            _ = tokio::time::sleep(edits_wait), if opts.edits.is_some() => Wake::Edits,
        };
        match wake {
            Wake::Stop => return Ok(()),
            Wake::Resolve if w.pinned.is_some() => {
                // Pinned: never resolve again; apply once now (the edits as they are at start).
                next_resolve = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
                if let Some(revs) = &revisions {
                    round(&opts, &w, revs.clone(), &mut debounce).await;
                }
            }
            Wake::Resolve => {
                next_resolve = tokio::time::Instant::now() + w.interval;
                let o =
                    Options { retry: opts.retry.clone(), egress: opts.egress.clone(), deadline: opts.resolve_deadline };
                match resolve_opts(&opts.layers, opts.credentials.as_ref(), &o).await {
                    Ok(revs) => revisions = Some(revs.into_iter().map(|r| r.revision).collect()),
                    Err(e) => {
                        tracing::error!(error = %e, transient = e.is_transient(), "resolve failed; keeping the current tree");
                        continue;
                    }
                }
                if let Some(revs) = &revisions {
                    round(&opts, &w, revs.clone(), &mut debounce).await;
                }
            }
            Wake::Edits => {
                let Some(dir) = &opts.edits else { continue };
                let now = Instant::now();
                writers.retain(|_, t| now.duration_since(*t) < WRITER_HOLD);
                let d = dir.clone();
                let snap = match tokio::task::spawn_blocking(move || crate::edits_layer::scan(&d)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(edits = %dir.display(), error = %e, "cannot scan the edits directory");
                        edits_wait = w.poll;
                        continue;
                    }
                    Err(e) => return Err(Error::Plan(format!("edits scan task failed: {e}"))),
                };
                edits_wait = match debounce.observe(now, &snap.digest, writers.len()) {
                    Decision::Wait(d) => d.min(w.poll),
                    Decision::Idle => w.poll,
                    Decision::Apply => {
                        // Pins from the last resolve; resolve now only when there were none yet.
                        if revisions.is_none() {
                            next_resolve = tokio::time::Instant::now();
                            continue;
                        }
                        if let Some(revs) = &revisions {
                            round(&opts, &w, revs.clone(), &mut debounce).await;
                        }
                        w.poll
                    }
                };
            }
        }
    }
}

/// One apply with the given pins (and the edits); logs the outcome and runs the hooks.
async fn round(opts: &ApplyOptions, w: &WatchOptions, revisions: Vec<String>, debounce: &mut Debounce) {
    let r = ApplyOptions { revisions, ..opts.clone() };
    let outcome = apply(r).await;
    if let Some(report) = &w.report {
        copy_report(&opts.root, report);
    }
    match outcome {
        Ok(s) => {
            done(debounce, &s);
            if s.unchanged {
                tracing::debug!("no change");
                return;
            }
            tracing::info!(
                files = s.files,
                bytes = s.bytes,
                written_bytes = s.written_bytes,
                linked_files = s.linked_files,
                elapsed_ms = s.elapsed_ms,
                tree_digest = %s.tree_digest,
                edits_revision = s.edits_revision.as_deref().unwrap_or(""),
                "swapped in a new tree"
            );
            w.hook.run(&opts.root, &s).await;
        }
        // The edits changed while they were copied: take them again once quiet.
        Err(e @ Error::RevisionChanged { .. }) if e.layer() == Some(opts.layers.len()) => {
            tracing::info!(error = %e, "edits changed while being applied; waiting until they are quiet");
            debounce.restart();
        }
        Err(e) => {
            tracing::error!(error = %e, transient = e.is_transient(), "apply failed; keeping the current tree")
        }
    }
}

/// Copies the edits status to `report` (temp file, rename), when it differs from what is there.
fn copy_report(root: &Path, report: &Path) {
    let Ok(text) = std::fs::read(root.join(crate::edits_layer::STATUS_FILE)) else { return };
    if std::fs::read(report).is_ok_and(|old| old == text) {
        return;
    }
    let tmp = report.with_extension("json.tmp");
    let written = report
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(&tmp, &text))
        .and_then(|_| std::fs::rename(&tmp, report));
    if let Err(e) = written {
        tracing::warn!(report = %report.display(), error = %e, "cannot copy the edits status");
    }
}

fn done(debounce: &mut Debounce, s: &Summary) {
    // A refused snapshot is done with too: it is reported, not retried until it changes.
    if let Some(d) = &s.edits_scanned {
        debounce.done(d);
    }
}

/// Keeps the set of files inotify saw written and not yet closed.
fn track_writer(writers: &mut HashMap<PathBuf, Instant>, ev: &notify::Event) {
    use notify::EventKind as K;
    use notify::event::{AccessKind, AccessMode, ModifyKind};
    if ev.need_rescan() {
        writers.clear();
        return;
    }
    for p in &ev.paths {
        match ev.kind {
            K::Modify(ModifyKind::Data(_)) | K::Modify(ModifyKind::Any) => {
                writers.insert(p.clone(), Instant::now());
            }
            K::Access(AccessKind::Close(AccessMode::Write)) | K::Remove(_) | K::Modify(ModifyKind::Name(_)) => {
                writers.retain(|w, _| !w.starts_with(p));
            }
            _ => {}
        }
    }
}

fn watch_edits_dir(dir: &Path, tx: mpsc::UnboundedSender<notify::Event>) -> Option<notify::RecommendedWatcher> {
    let mut w = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(e) = ev {
            let _ = tx.send(e);
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the edits directory; scanning it instead");
            return None;
        }
    };
    if let Err(e) = w.watch(dir, notify::RecursiveMode::Recursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the edits directory; scanning it instead");
        return None;
    }
    Some(w)
}

fn watch_local_dirs(opts: &ApplyOptions, tx: mpsc::UnboundedSender<()>) -> Result<Option<notify::RecommendedWatcher>> {
    let dirs: Vec<PathBuf> = opts
        .layers
        .iter()
        .filter_map(|l| match l.source() {
            Some(SourceRef::Local(s)) => {
                Some(crate::source::local::source_dir(&s.path, l.sub_path.as_deref().unwrap_or("")))
            }
            _ => None,
        })
        .collect();
    if dirs.is_empty() {
        return Ok(None);
    }
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })
    .map_err(|e| Error::Plan(format!("cannot watch local sources: {e}")))?;
    for d in dirs {
        if let Err(e) = w.watch(&d, notify::RecursiveMode::Recursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch local source; relying on the interval");
        }
    }
    Ok(Some(w))
}
