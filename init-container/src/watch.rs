//! Watch mode: re-resolve on an interval and apply when a revision moved; local sources are
//! watched with inotify so edits show up at once (debounced).

use std::path::PathBuf;
use std::time::Duration;

use notify::Watcher as _;
use tokio::sync::mpsc;

use crate::apply::{ApplyOptions, apply};
use crate::plan::SourceRef;
use crate::resolve::resolve_with;
use crate::{Error, Result};

/// Quiet time after a local change before re-resolving.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Resolves and applies `opts.layers` every `interval` (and on local changes) until `stop` completes.
/// `opts.revisions` is ignored: every round resolves afresh. Failed rounds are logged and retried
/// on the next round; `current` keeps the last good tree.
pub async fn watch(
    mut opts: ApplyOptions,
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
) -> Result<()> {
    crate::plan::validate(&opts.layers)?;
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let _watcher = watch_local_dirs(&opts, tx)?;
    tokio::pin!(stop);
    loop {
        match resolve_with(&opts.layers, opts.credentials.as_ref(), &opts.retry).await {
            Ok(revs) => {
                let layers = opts.layers.clone();
                opts.revisions = revs.into_iter().map(|r| r.revision).collect();
                let round = ApplyOptions {
                    layers,
                    revisions: std::mem::take(&mut opts.revisions),
                    root: opts.root.clone(),
                    credentials: opts.credentials.clone(),
                    progress: opts.progress.clone(),
                    limits: opts.limits,
                    retry: opts.retry.clone(),
                };
                match apply(round).await {
                    Ok(s) if s.unchanged => tracing::debug!("no change"),
                    Ok(s) => tracing::info!(
                        files = s.files,
                        bytes = s.bytes,
                        elapsed_ms = s.elapsed_ms,
                        tree_digest = %s.tree_digest,
                        "applied new revisions"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, transient = e.is_transient(), "apply failed; keeping the current tree")
                    }
                }
            }
            Err(e) => {
                tracing::error!(error = %e, transient = e.is_transient(), "resolve failed; keeping the current tree")
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
            Some(()) = rx.recv() => {
                // Let a burst of writes settle before resolving.
                while tokio::time::timeout(DEBOUNCE, rx.recv()).await.is_ok_and(|m| m.is_some()) {}
                tracing::info!("local source changed");
            }
        }
    }
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
