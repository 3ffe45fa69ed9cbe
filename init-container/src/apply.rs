//! Building the tree: layers in order into a staging directory, then an atomic swap of the
//! `current` symlink and the state file. A failed run leaves `current` and the state untouched.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::creds::Credentials;
use crate::error::Error;
use crate::plan::Layer;
use crate::progress::{NoProgress, Progress};
use crate::resolve::{Kind, Prepared, prepare, resolve_one};
use crate::retry::RetryPolicy;
use crate::source::{git, local};
use crate::state::{self, LayerSummary, State};
use crate::tree::{Limits, TreeWriter};
use crate::{Result, lock, paths};

/// The symlink in the destination root that points at the live tree.
pub const CURRENT: &str = "current";
/// Directory in the destination root that holds built trees and staging directories.
pub const TREES: &str = ".trees";
/// Directory in the destination root for caches (git objects).
pub const CACHE: &str = ".cache";

/// What to apply where.
pub struct ApplyOptions {
    /// The layer plan.
    pub layers: Vec<Layer>,
    /// One pinned revision per layer (from [`crate::resolve::resolve`]).
    pub revisions: Vec<String>,
    /// The destination root.
    pub root: PathBuf,
    /// Where Secrets come from.
    pub credentials: Arc<dyn Credentials>,
    /// Where progress goes.
    pub progress: Arc<dyn Progress>,
    /// Caps against archive bombs.
    pub limits: Limits,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
}

impl ApplyOptions {
    /// Options with default limits and retries and no progress output.
    pub fn new(
        layers: Vec<Layer>,
        revisions: Vec<String>,
        root: impl Into<PathBuf>,
        credentials: Arc<dyn Credentials>,
    ) -> Self {
        ApplyOptions {
            layers,
            revisions,
            root: root.into(),
            credentials,
            progress: Arc::new(NoProgress),
            limits: Limits::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// True when the pinned revisions were already in place and nothing was done.
    pub unchanged: bool,
    /// Layers in the plan.
    pub layers: usize,
    /// Regular files in the tree.
    pub files: u64,
    /// Bytes of regular files in the tree.
    pub bytes: u64,
    /// Wall time of the run in milliseconds.
    pub elapsed_ms: u64,
    /// sha256 over sorted `path mode size sha256` lines of the tree.
    pub tree_digest: String,
    /// The tree's directory.
    pub tree: PathBuf,
}

fn dest_err(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    let what = what.to_owned();
    move |e| Error::destination(path, what, e)
}

/// Applies the pinned revisions of a plan to `root` (see the crate README for the layout).
/// An empty revision means "not pinned": such layers (for example local folders, which the
/// operator cannot see) are resolved here, just before applying.
pub async fn apply(mut opts: ApplyOptions) -> Result<Summary> {
    let started = Instant::now();
    crate::plan::validate(&opts.layers)?;
    if opts.revisions.len() != opts.layers.len() {
        return Err(Error::Revisions(format!(
            "{} revisions for {} layers; resolve again with the same plan",
            opts.revisions.len(),
            opts.layers.len()
        )));
    }
    // Unpinned layers are prepared once, resolved, and applied from the same preparation, so an
    // S3 layer lists its prefix once per run. Pinned layers are prepared when their turn comes.
    let mut prepared: Vec<Option<Prepared>> = Vec::with_capacity(opts.layers.len());
    for (i, layer) in opts.layers.iter().enumerate() {
        let unpinned = opts.revisions[i].is_empty();
        prepared.push(if unpinned { Some(prepare(i, layer, opts.credentials.as_ref(), &opts.retry)?) } else { None });
    }
    let resolving = prepared.iter().flatten().map(|p| resolve_one(p, &opts.retry));
    let resolved = futures::future::try_join_all(resolving).await?;
    let unpinned = (0..opts.layers.len()).filter(|&i| prepared[i].is_some()).collect::<Vec<_>>();
    for (i, revision) in unpinned.into_iter().zip(resolved) {
        opts.revisions[i] = revision;
    }
    let root = &opts.root;
    fs::create_dir_all(root).map_err(dest_err(root, "create destination root"))?;
    let _lock = lock::acquire(root).await?;

    let summaries = LayerSummary::of(&opts.layers);
    let current = root.join(CURRENT);
    if let Some(st) = state::read(root)
        && st.layers == summaries
        && st.revisions == opts.revisions
        && fs::read_link(&current).is_ok_and(|t| t == Path::new(TREES).join(&st.tree))
        && root.join(TREES).join(&st.tree).is_dir()
    {
        tracing::info!(tree = %st.tree, "pinned revisions already in place; nothing to do");
        let s = Summary {
            unchanged: true,
            layers: opts.layers.len(),
            files: st.files,
            bytes: st.bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
            tree_digest: st.tree_digest,
            tree: root.join(TREES).join(&st.tree),
        };
        opts.progress.finished(&s);
        return Ok(s);
    }

    let trees = root.join(TREES);
    fs::create_dir_all(&trees).map_err(dest_err(&trees, "create trees directory"))?;
    remove_stale_staging(&trees);
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&trees)
        .map_err(dest_err(&trees, "create staging directory"))?;
    let writer = Arc::new(TreeWriter::new(staging.path().to_owned(), opts.limits, opts.progress.clone()));

    for (i, (layer, p)) in opts.layers.iter().zip(prepared).enumerate() {
        let layer_started = Instant::now();
        let before = writer.written();
        let p = match p {
            Some(p) => p,
            None => prepare(i, layer, opts.credentials.as_ref(), &opts.retry)?,
        };
        opts.progress.layer_started(i, &p.ctx.src);
        let dest = paths::join(&paths::components(&layer.path).map_err(|m| p.ctx.invalid(m))?);
        let sub =
            paths::join(&paths::components(layer.sub_path.as_deref().unwrap_or("")).map_err(|m| p.ctx.invalid(m))?);
        let pinned = opts.revisions[i].clone();
        writer.ensure_dir(&p.ctx, &dest)?;
        match p.kind {
            Kind::Git(b) => {
                let (auth, source) = *b;
                git::apply(git::GitJob {
                    ctx: p.ctx.clone(),
                    source,
                    auth,
                    commit: pinned,
                    sub_path: sub,
                    dest,
                    cache: root.join(CACHE).join("git"),
                    policy: opts.retry.clone(),
                    writer: writer.clone(),
                })
                .await?
            }
            Kind::S3(s) => s.apply(&pinned, &dest, writer.clone()).await?,
            Kind::P4(x) => x.apply(&pinned, &sub, &dest, writer.clone()).await?,
            Kind::Local(dir) => local::apply(p.ctx.clone(), dir, pinned, dest, writer.clone()).await?,
        }
        let after = writer.written();
        opts.progress.layer_finished(i, after.0 - before.0, after.1 - before.1, layer_started.elapsed());
    }

    let stats = writer.stats();
    let hex = stats.digest.trim_start_matches("sha256:");
    let id = format!("{}-{:08x}", &hex[..12], fastrand::u32(..));
    let tree = trees.join(&id);
    let staging_path = staging.keep();
    if let Err(e) = fs::rename(&staging_path, &tree) {
        let _ = fs::remove_dir_all(&staging_path);
        return Err(Error::destination(&tree, "move staging tree into place", e));
    }
    if let Err(e) = swap_current(root, &id) {
        let _ = fs::remove_dir_all(&tree);
        return Err(e);
    }
    state::write(
        root,
        &State {
            layers: summaries,
            revisions: opts.revisions.clone(),
            tree: id.clone(),
            tree_digest: stats.digest.clone(),
            files: stats.files,
            bytes: stats.bytes,
            applied_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        },
    )?;
    remove_old_trees(&trees, &id);
    let s = Summary {
        unchanged: false,
        layers: opts.layers.len(),
        files: stats.files,
        bytes: stats.bytes,
        elapsed_ms: started.elapsed().as_millis() as u64,
        tree_digest: stats.digest,
        tree,
    };
    opts.progress.finished(&s);
    Ok(s)
}

/// Points `current` at `.trees/<id>`: a new symlink under a temporary name renamed over it.
fn swap_current(root: &Path, id: &str) -> Result<()> {
    let current = root.join(CURRENT);
    if let Ok(m) = fs::symlink_metadata(&current)
        && !m.file_type().is_symlink()
    {
        return Err(Error::destination(
            &current,
            "`current` exists and is not a symlink; remove it so the tree can be swapped in",
            std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        ));
    }
    let tmp = root.join(format!(".current-{:08x}", fastrand::u32(..)));
    std::os::unix::fs::symlink(Path::new(TREES).join(id), &tmp).map_err(dest_err(&tmp, "create symlink"))?;
    if let Err(e) = fs::rename(&tmp, &current) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::destination(&current, "swap symlink", e));
    }
    fs::File::open(root).and_then(|d| d.sync_all()).map_err(dest_err(root, "sync destination root"))
}

fn remove_old_trees(trees: &Path, keep: &str) {
    let Ok(rd) = fs::read_dir(trees) else { return };
    for de in rd.flatten() {
        if de.file_name() != keep
            && let Err(e) = fs::remove_dir_all(de.path())
        {
            tracing::warn!(path = %de.path().display(), error = %e, "cannot remove old tree");
        }
    }
}

/// Staging directories left by a run that crashed (runs hold the lock, so none is live).
fn remove_stale_staging(trees: &Path) {
    let Ok(rd) = fs::read_dir(trees) else { return };
    for de in rd.flatten() {
        if de.file_name().to_string_lossy().starts_with(".staging-") {
            let _ = fs::remove_dir_all(de.path());
        }
    }
}

/// How long a run took, for logs.
pub fn elapsed(s: &Summary) -> Duration {
    Duration::from_millis(s.elapsed_ms)
}
