//! Building the tree: layers in order into a staging directory, then an atomic swap of the
//! `current` symlink and the state file. A failed run leaves `current` and the state untouched.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::creds::Credentials;
use crate::edits::{BaseIndex, EditEntry, EditKind, EditsStatus, RefusedEdit};
use crate::egress::Egress;
use crate::error::{Ctx, Error};
use crate::plan::Layer;
use crate::progress::{NoProgress, Progress};
use crate::resolve::{Kind, Prepared, prepare, resolve_one};
use crate::retry::RetryPolicy;
use crate::source::{git, local};
use crate::state::{self, EditsState, LayerSummary, State};
pub use crate::summary::Summary;
use crate::tree::{Limits, TreeWriter};
use crate::{Result, lock, paths};

pub use gamezone_api::artifacts::{CURRENT, TREES};
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
    /// A directory of live edits layered on top of the pinned layers (see the crate README).
    pub edits: Option<PathBuf>,
    /// Which servers layers may be fetched from (and whether local sources may be read).
    pub egress: Egress,
    /// Total time one unpinned layer may take to resolve.
    pub resolve_deadline: Duration,
    /// Total time one layer's fetch may take, retries included.
    pub fetch_deadline: Duration,
}

/// Default total time for one layer's fetch.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(30 * 60);

impl ApplyOptions {
    /// Options with default limits, retries and deadlines, the strict egress policy and no
    /// progress output.
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
            edits: None,
            egress: Egress::strict(),
            resolve_deadline: crate::resolve::RESOLVE_DEADLINE,
            fetch_deadline: FETCH_DEADLINE,
        }
    }
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
        prepared.push(if unpinned {
            Some(prepare(i, layer, opts.credentials.as_ref(), &opts.retry, &opts.egress)?)
        } else {
            None
        });
    }
    let resolving = prepared.iter().flatten().map(|p| resolve_one(p, &opts.retry, opts.resolve_deadline));
    let resolved = futures::future::try_join_all(resolving).await?;
    let unpinned = (0..opts.layers.len()).filter(|&i| prepared[i].is_some()).collect::<Vec<_>>();
    for (i, revision) in unpinned.into_iter().zip(resolved) {
        opts.revisions[i] = revision;
    }
    let root = opts.root.clone();
    fs::create_dir_all(&root).map_err(dest_err(&root, "create destination root"))?;
    let _lock = lock::acquire(&root).await?;
    let st = state::read(&root);
    match opts.edits.clone() {
        None => apply_pinned(&opts, prepared, st, started).await,
        Some(dir) => {
            let mut prepared = Some(prepared);
            let mut attempt = 1;
            loop {
                let p = prepared.take().unwrap_or_else(|| (0..opts.layers.len()).map(|_| None).collect());
                match apply_with_edits(&opts, p, st.clone(), &dir, started).await {
                    // A tester still saving: look again shortly (the base is kept for the retry).
                    Err(e @ Error::RevisionChanged { .. })
                        if e.layer() == Some(opts.layers.len()) && attempt < EDITS_ATTEMPTS =>
                    {
                        tracing::info!(error = %e, attempt, "edits changed while being applied; trying again");
                        attempt += 1;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    r => return r,
                }
            }
        }
    }
}

/// Tries of an edits batch that changes while it is copied, before giving up.
const EDITS_ATTEMPTS: u32 = 3;

/// Whether `current` points at `.trees/<tree>` and that tree exists.
fn is_current(root: &Path, tree: &str) -> bool {
    fs::read_link(root.join(CURRENT)).is_ok_and(|t| t == Path::new(TREES).join(tree))
        && root.join(TREES).join(tree).is_dir()
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// The pinned layers only: the tree `current` points at.
async fn apply_pinned(
    opts: &ApplyOptions,
    prepared: Vec<Option<Prepared>>,
    st: Option<State>,
    started: Instant,
) -> Result<Summary> {
    let root = &opts.root;
    let summaries = LayerSummary::of(&opts.layers);
    if let Some(st) = st
        && st.layers == summaries
        && st.revisions == opts.revisions
        && st.edits.is_none()
        && is_current(root, &st.tree)
    {
        tracing::info!(tree = %st.tree, "pinned revisions already in place; nothing to do");
        let s = Summary::unchanged(&st, &root.join(TREES), opts.layers.len(), started);
        opts.progress.finished(&s);
        return Ok(s);
    }
    let trees = root.join(TREES);
    let (staging, writer) = build_layers(opts, prepared).await?;
    let stats = writer.stats();
    let id = tree_id("", &stats.digest);
    let tree = move_into_place(staging, &trees, &id)?;
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
            applied_at: now_rfc3339(),
            base_tree: None,
            edits: None,
        },
    )?;
    // Edits are off now: their status would describe a tree that is gone.
    for stale in [crate::edits::BASE_INDEX, crate::edits::STATUS_FILE] {
        let _ = fs::remove_file(root.join(stale));
    }
    remove_old_trees(&trees, &[&id]);
    let s = Summary {
        written_bytes: writer.written().1,
        ..Summary::built(opts.layers.len(), tree, stats.digest, (stats.files, stats.bytes), started)
    };
    opts.progress.finished(&s);
    Ok(s)
}

/// Applies every layer of the plan into a new staging directory under `.trees/`.
async fn build_layers(
    opts: &ApplyOptions,
    prepared: Vec<Option<Prepared>>,
) -> Result<(tempfile::TempDir, Arc<TreeWriter>)> {
    let root = &opts.root;
    let trees = root.join(TREES);
    fs::create_dir_all(&trees).map_err(dest_err(&trees, "create trees directory"))?;
    remove_stale_staging(&trees);
    let staging = new_staging(&trees)?;
    let writer = Arc::new(TreeWriter::new(staging.path().to_owned(), opts.limits, opts.progress.clone()));

    for (i, (layer, p)) in opts.layers.iter().zip(prepared).enumerate() {
        let layer_started = Instant::now();
        let before = writer.written();
        let p = match p {
            Some(p) => p,
            None => prepare(i, layer, opts.credentials.as_ref(), &opts.retry, &opts.egress)?,
        };
        opts.progress.layer_started(i, &p.ctx.src);
        let dest = paths::join(&paths::components(&layer.path).map_err(|m| p.ctx.invalid(m))?);
        let sub =
            paths::join(&paths::components(layer.sub_path.as_deref().unwrap_or("")).map_err(|m| p.ctx.invalid(m))?);
        let pinned = opts.revisions[i].clone();
        writer.ensure_dir(&p.ctx, &dest)?;
        let ctx = p.ctx.clone();
        let fetch = async {
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
                        deadline: Instant::now() + opts.fetch_deadline,
                    })
                    .await
                }
                Kind::S3(s) => s.apply(&pinned, &dest, writer.clone()).await,
                Kind::P4(x) => x.apply(&pinned, &sub, &dest, writer.clone()).await,
                Kind::Local(dir) => local::apply(p.ctx.clone(), dir, pinned, dest, writer.clone()).await,
            }
        };
        crate::retry::within(&ctx, opts.fetch_deadline, fetch).await?;
        let after = writer.written();
        opts.progress.layer_finished(i, after.0 - before.0, after.1 - before.1, layer_started.elapsed());
    }
    Ok((staging, writer))
}

fn new_staging(trees: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(".staging-").tempdir_in(trees).map_err(dest_err(trees, "create staging directory"))
}

/// `<prefix><12 hex of the digest>-<random>`: unique, so a rebuilt tree never reuses a live name.
fn tree_id(prefix: &str, digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("{prefix}{}-{:08x}", &hex[..12], fastrand::u32(..))
}

/// Renames a finished staging directory to `.trees/<id>`.
fn move_into_place(staging: tempfile::TempDir, trees: &Path, id: &str) -> Result<PathBuf> {
    let tree = trees.join(id);
    let staging_path = staging.keep();
    if let Err(e) = fs::rename(&staging_path, &tree) {
        let _ = fs::remove_dir_all(&staging_path);
        return Err(Error::destination(&tree, "move staging tree into place", e));
    }
    Ok(tree)
}

/// The pinned layers as a base tree (reused while the pins stay), with the edits directory
/// layered on top in a tree of hard links to the base's files; see the crate README.
async fn apply_with_edits(
    opts: &ApplyOptions,
    prepared: Vec<Option<Prepared>>,
    st: Option<State>,
    dir: &Path,
    started: Instant,
) -> Result<Summary> {
    let root = &opts.root;
    let trees = root.join(TREES);
    let summaries = LayerSummary::of(&opts.layers);
    let ctx = Ctx::new(opts.layers.len(), format!("edits {}", dir.display()));
    let dir_text = dir.display().to_string();
    let snap = scan_edits(&ctx, dir).await?;
    if let Some(r) = &snap.refusal {
        tracing::warn!(path = %r.path, reason = %r.reason, edits = %dir_text, "edit refused; keeping the last good tree");
    }

    // The base is found by its index, not the state file: a run that built it and then failed
    // (edits changed while copied) leaves it for the next run.
    let base = BaseIndex::read(root, &summaries, &opts.revisions);
    if let (Some((b, _)), Some(st)) = (&base, &st)
        && st.base_tree.as_ref() == Some(b)
        && let Some(e) = &st.edits
        && e.dir == dir_text
        && is_current(root, &st.tree)
        && (snap.refusal.is_some() || e.revision == snap.digest)
    {
        // Same pins and the same edits, or edits refused: `current` is the last good tree.
        if let Some(r) = &snap.refusal {
            status_refused(root, &dir_text, st, &snap.digest, r)?;
        } else {
            tracing::info!(tree = %st.tree, "pinned revisions and edits already in place; nothing to do");
        }
        let s = Summary {
            edits_revision: Some(e.revision.clone()),
            edits_scanned: Some(snap.digest.clone()),
            refused: snap.refusal.clone(),
            ..Summary::unchanged(st, &trees, opts.layers.len(), started)
        };
        opts.progress.finished(&s);
        return Ok(s);
    }

    let mut written = 0;
    let (base_id, base_entries) = match base {
        Some(b) => b,
        None => {
            let (staging, writer) = build_layers(opts, prepared).await?;
            let stats = writer.stats();
            let id = tree_id("base-", &stats.digest);
            let entries = writer.entries();
            move_into_place(staging, &trees, &id)?;
            state::write_json(
                root,
                crate::edits::BASE_INDEX,
                &BaseIndex::new(&id, &stats.digest, &summaries, &opts.revisions, &entries),
            )?;
            written += writer.written().1;
            tracing::info!(tree = %id, files = stats.files, bytes = stats.bytes, "pinned layers built as the base tree");
            (id, entries)
        }
    };
    let base_digest = digest_of(&base_entries);

    remove_stale_staging(&trees);
    let staging = new_staging(&trees)?;
    let writer = Arc::new(TreeWriter::new(staging.path().to_owned(), opts.limits, opts.progress.clone()));
    let linked = writer.link_from(&ctx, &trees.join(&base_id), &base_entries)?;
    let applied = if snap.refusal.is_some() {
        String::new()
    } else {
        opts.progress.layer_started(ctx.layer, &ctx.src);
        let layer_started = Instant::now();
        let (w, c, d, entries) = (writer.clone(), ctx.clone(), dir.to_owned(), snap.entries.clone());
        tokio::task::spawn_blocking(move || overlay(&c, &d, &entries, &w))
            .await
            .map_err(|e| Error::Plan(format!("edits copy task failed: {e}")))??;
        // Whatever changed while copying (a file still being saved) is not served: the batch
        // is dropped and taken again once the directory is quiet.
        let now = scan_edits(&ctx, dir).await?;
        if now.digest != snap.digest {
            return Err(ctx.changed(&snap.digest, &now.digest));
        }
        let (files, bytes) = writer.written();
        opts.progress.layer_finished(ctx.layer, files, bytes, layer_started.elapsed());
        snap.digest.clone()
    };

    let stats = writer.stats();
    if let Some(st) = st.as_ref().filter(|st| {
        snap.refusal.is_none()
            && st.tree_digest == stats.digest
            && st.base_tree.as_deref() == Some(base_id.as_str())
            && is_current(root, &st.tree)
    }) {
        // Edits that change nothing in the tree (a file saved again, a new mtime): no swap.
        drop(staging);
        let edits = Some(EditsState { dir: dir_text.clone(), revision: applied.clone() });
        state::write(root, &State { edits, ..st.clone() })?;
        if let Some(mut status) = crate::edits::read_status(root).filter(|s| s.edits_dir == dir_text) {
            status.edits_revision = applied.clone();
            status.state = "applied".into();
            state::write_json(root, crate::edits::STATUS_FILE, &status)?;
        }
        tracing::info!(tree = %st.tree, "edits leave the tree as it is; nothing to swap");
        let s = Summary {
            written_bytes: written,
            linked_files: linked,
            edits_revision: Some(applied),
            edits_scanned: Some(snap.digest.clone()),
            ..Summary::unchanged(st, &trees, opts.layers.len(), started)
        };
        opts.progress.finished(&s);
        return Ok(s);
    }
    let id = tree_id("", &stats.digest);
    let tree = move_into_place(staging, &trees, &id)?;
    if let Err(e) = swap_current(root, &id) {
        let _ = fs::remove_dir_all(&tree);
        return Err(e);
    }
    let new_state = State {
        layers: summaries,
        revisions: opts.revisions.clone(),
        tree: id.clone(),
        tree_digest: stats.digest.clone(),
        files: stats.files,
        bytes: stats.bytes,
        applied_at: now_rfc3339(),
        base_tree: Some(base_id.clone()),
        edits: Some(EditsState { dir: dir_text.clone(), revision: applied.clone() }),
    };
    state::write(root, &new_state)?;
    written += writer.written().1;
    let prev = crate::edits::read_status(root).filter(|s| s.edits_dir == dir_text).unwrap_or_default();
    let refused = snap.refusal.as_ref().map(|r| RefusedEdit {
        path: r.path.clone(),
        reason: r.reason.clone(),
        at: now_rfc3339(),
        edits_revision: snap.digest.clone(),
    });
    let status = EditsStatus {
        edits_dir: dir_text,
        state: if refused.is_some() { "refused" } else { "applied" }.into(),
        edits_revision: applied.clone(),
        tree: id.clone(),
        tree_digest: stats.digest.clone(),
        base_tree: base_id.clone(),
        base_digest,
        changes: crate::edits::diff(&base_entries, &writer.entries()),
        applied_at: if refused.is_some() { prev.applied_at } else { Some(new_state.applied_at.clone()) },
        batches: prev.batches + u64::from(refused.is_none()),
        refused_batches: prev.refused_batches + u64::from(refused.is_some()),
        last_refused: refused.or(prev.last_refused),
        copied_bytes: writer.written().1,
        linked_files: linked,
    };
    state::write_json(root, crate::edits::STATUS_FILE, &status)?;
    remove_old_trees(&trees, &[&id, &base_id]);
    let s = Summary {
        written_bytes: written,
        linked_files: linked,
        edits_revision: Some(applied),
        edits_scanned: Some(snap.digest.clone()),
        refused: snap.refusal,
        ..Summary::built(opts.layers.len(), tree, stats.digest, (stats.files, stats.bytes), started)
    };
    opts.progress.finished(&s);
    Ok(s)
}

async fn scan_edits(ctx: &Ctx, dir: &Path) -> Result<crate::edits::Snapshot> {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || crate::edits::scan(&d))
        .await
        .map_err(|e| Error::Plan(format!("edits scan task failed: {e}")))?
        .map_err(|e| ctx.io(format!("scan the edits directory {}", dir.display()), e))
}

/// The digest a tree with these entries has.
fn digest_of(entries: &std::collections::BTreeMap<String, crate::tree::Entry>) -> String {
    crate::tree::digest_entries(entries)
}

/// Records a refused batch while `current` keeps the last good tree.
fn status_refused(root: &Path, dir: &str, st: &State, digest: &str, r: &crate::edits::Refusal) -> Result<()> {
    let mut status = crate::edits::read_status(root).filter(|s| s.edits_dir == dir).unwrap_or_else(|| EditsStatus {
        edits_dir: dir.to_owned(),
        edits_revision: st.edits.as_ref().map(|e| e.revision.clone()).unwrap_or_default(),
        tree: st.tree.clone(),
        tree_digest: st.tree_digest.clone(),
        base_tree: st.base_tree.clone().unwrap_or_default(),
        ..Default::default()
    });
    // The same refused content seen again (a restart, a poll) is one refused batch.
    let seen = status.state == "refused" && status.last_refused.as_ref().is_some_and(|l| l.edits_revision == digest);
    if !seen {
        status.refused_batches += 1;
        status.last_refused = Some(RefusedEdit {
            path: r.path.clone(),
            reason: r.reason.clone(),
            at: now_rfc3339(),
            edits_revision: digest.to_owned(),
        });
    }
    status.state = "refused".into();
    state::write_json(root, crate::edits::STATUS_FILE, &status)
}

/// Writes the scanned edits into the tree (blocking). Each file must still be the one scanned
/// (same inode, so a directory swapped for a link is not followed) and unchanged after the copy.
fn overlay(ctx: &Ctx, dir: &Path, entries: &[EditEntry], w: &TreeWriter) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for e in entries {
        match &e.kind {
            EditKind::Dir => w.ensure_dir(ctx, &e.path)?,
            EditKind::Symlink(t) => w.symlink(ctx, &e.path, t)?,
            EditKind::File { exec } => {
                let p = dir.join(&e.path);
                let changed = || ctx.changed(&format!("{} as scanned", e.path), "a file changed while it was copied");
                let mut f = match fs::File::open(&p) {
                    Ok(f) => f,
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err(changed()),
                    Err(err) => return Err(ctx.io(format!("open {}", p.display()), err)),
                };
                let same = |m: &fs::Metadata| {
                    m.is_file()
                        && m.ino() == e.ino
                        && m.dev() == e.dev
                        && m.len() == e.size
                        && m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128 == e.mtime_ns
                };
                let m = f.metadata().map_err(|err| ctx.io(format!("stat {}", p.display()), err))?;
                if !same(&m) {
                    return Err(changed());
                }
                w.write_reader(ctx, &e.path, *exec, &mut f)?;
                let m = f.metadata().map_err(|err| ctx.io(format!("stat {}", p.display()), err))?;
                if !same(&m) {
                    return Err(changed());
                }
            }
        }
    }
    Ok(())
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

fn remove_old_trees(trees: &Path, keep: &[&str]) {
    let Ok(rd) = fs::read_dir(trees) else { return };
    for de in rd.flatten() {
        if !keep.iter().any(|k| de.file_name() == *k)
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
