//! Building the tree: layers in order into a staging directory, then an atomic swap of the
//! `current` symlink and the state file. A failed run leaves `current` and the state untouched.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::creds::Credentials;
use crate::edits_layer::{BaseIndex, EditEntry, EditKind, EditsStatus, RefusedEdit, Snapshot};
use crate::egress::Egress;
use crate::error::{Ctx, Error};
use crate::oci::Registry;
use crate::plan::Layer;
use crate::progress::{NoProgress, Progress};
use crate::resolve::{Kind, Prepared, prepare, resolve_one};
use crate::retry::RetryPolicy;
use crate::source::{git, local};
use crate::state::{self, EditsState, LayerSummary, State};
pub use crate::summary::Summary;
use crate::tree::{Entry, Limits, TreeStats, TreeWriter};
use crate::{Result, lock, paths};

pub use gamezone_api::artifacts::{CURRENT, TREES};
/// Directory in the destination root for caches (git objects).
pub const CACHE: &str = ".cache";

/// What to apply where.
#[derive(Clone)]
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
    /// Copy every layer from its packed copy in this registry (`gamezone-init pack`), never
    /// from its origin.
    pub registry: Option<Registry>,
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
            registry: None,
        }
    }

    /// These options for layer `i` alone, at its pin, with no edits.
    pub(crate) fn one_layer(&self, i: usize) -> ApplyOptions {
        ApplyOptions {
            layers: vec![self.layers[i].clone()],
            revisions: vec![self.revisions[i].clone()],
            edits: None,
            ..self.clone()
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

pub(crate) fn now_rfc3339() -> String {
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
    let tree = publish(root, staging, &id)?;
    state::write(root, &tree_state(opts, summaries, &id, &stats, None, None))?;
    // Edits are off now: their status would describe a tree that is gone.
    for stale in [crate::edits_layer::BASE_INDEX, crate::edits_layer::STATUS_FILE] {
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

/// The state file of a tree just swapped in.
fn tree_state(
    opts: &ApplyOptions,
    layers: Vec<LayerSummary>,
    id: &str,
    stats: &TreeStats,
    base_tree: Option<String>,
    edits: Option<EditsState>,
) -> State {
    State {
        layers,
        revisions: opts.revisions.clone(),
        tree: id.to_owned(),
        tree_digest: stats.digest.clone(),
        files: stats.files,
        bytes: stats.bytes,
        applied_at: now_rfc3339(),
        base_tree,
        edits,
    }
}

/// Applies every layer of the plan into a new staging directory under `.trees/`.
pub(crate) async fn build_layers(
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
        if let Some(registry) = &opts.registry {
            copy_packed(opts, registry, i, &trees, &writer).await?;
            let after = writer.written();
            opts.progress.layer_finished(i, after.0 - before.0, after.1 - before.1, layer_started.elapsed());
            continue;
        }
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

/// Layer `i` from its packed copy in the registry: the origin is not asked.
async fn copy_packed(
    opts: &ApplyOptions,
    registry: &Registry,
    i: usize,
    trees: &Path,
    w: &Arc<TreeWriter>,
) -> Result<()> {
    let (layer, pin) = (&opts.layers[i], &opts.revisions[i]);
    let ctx = Ctx::new(i, format!("{} packed in {}", layer.describe(), registry.repository()));
    opts.progress.layer_started(i, &ctx.src);
    let key = crate::oci::layer_key(layer, pin);
    let copy = async {
        let Some(packed) = registry.find(&ctx, &key).await? else {
            return Err(ctx.not_found(format!(
                "{}:{key} does not exist: the layer at {pin} was never packed; run `gamezone-init pack` with this plan and these revisions (the operator does before servers start)",
                registry.repository()
            )));
        };
        let blob = tempfile::Builder::new()
            .prefix(".packed-")
            .tempfile_in(trees)
            .map_err(dest_err(trees, "create a file for the packed layer"))?;
        registry.download(&ctx, &packed, blob.path()).await?;
        let (c, w) = (ctx.clone(), w.clone());
        tokio::task::spawn_blocking(move || crate::oci::unpack(&c, blob.path(), &w))
            .await
            .map_err(|e| Error::Plan(format!("unpack task failed: {e}")))?
    };
    crate::retry::within(&ctx, opts.fetch_deadline, copy).await
}

fn new_staging(trees: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(".staging-").tempdir_in(trees).map_err(dest_err(trees, "create staging directory"))
}

/// `<prefix><12 hex of the digest>-<random>`: unique, so a rebuilt tree never reuses a live name.
fn tree_id(prefix: &str, digest: &str) -> String {
    let hex = digest.trim_start_matches("sha256:");
    format!("{prefix}{}-{:08x}", &hex[..12], fastrand::u32(..))
}

/// Moves a finished staging tree to `.trees/<id>` and points `current` at it; on failure the
/// tree is removed and `current` is left as it was.
fn publish(root: &Path, staging: tempfile::TempDir, id: &str) -> Result<PathBuf> {
    let tree = move_into_place(staging, &root.join(TREES), id)?;
    if let Err(e) = swap_current(root, id) {
        let _ = fs::remove_dir_all(&tree);
        return Err(e);
    }
    Ok(tree)
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

/// The base tree of the pinned layers: its directory name under `.trees/` and its entries.
type Base = (String, BTreeMap<String, Entry>);

/// The pinned layers as a base tree (reused while the pins stay), with the edits directory
/// layered on top in a tree of hard links to the base's files; see the crate README.
async fn apply_with_edits(
    opts: &ApplyOptions,
    prepared: Vec<Option<Prepared>>,
    st: Option<State>,
    dir: &Path,
    started: Instant,
) -> Result<Summary> {
    let run = EditsRun::scan(opts, dir, started).await?;
    // The base is found by its index, not the state file: a run that built it and then failed
    // (edits changed while copied) leaves it for the next run.
    let base = BaseIndex::read(&opts.root, &run.summaries, &opts.revisions);
    if let (Some((base_id, _)), Some(st)) = (&base, &st)
        && run.in_place(st, base_id)
    {
        return run.keep_current(st);
    }
    let (base, base_bytes) = match base {
        Some(base) => (base, 0),
        None => build_base(opts, prepared, &run.summaries).await?,
    };
    let layered = run.layer_over(&base).await?;
    let digest = layered.writer.stats().digest;
    match st.filter(|st| run.same_tree(st, &digest, &base.0)) {
        // Edits that change nothing in the tree (a file saved again, a new mtime): no swap.
        Some(st) => run.keep_tree(&st, layered, base_bytes),
        None => run.swap_in(layered, &base, base_bytes),
    }
}

/// Builds the pinned layers as the base tree and writes its index; returns it and the bytes written.
async fn build_base(
    opts: &ApplyOptions,
    prepared: Vec<Option<Prepared>>,
    summaries: &[LayerSummary],
) -> Result<(Base, u64)> {
    let (staging, writer) = build_layers(opts, prepared).await?;
    let stats = writer.stats();
    let id = tree_id("base-", &stats.digest);
    let entries = writer.entries();
    move_into_place(staging, &opts.root.join(TREES), &id)?;
    let index = BaseIndex::new(&id, &stats.digest, summaries, &opts.revisions, &entries);
    state::write_json(&opts.root, crate::edits_layer::BASE_INDEX, &index)?;
    tracing::info!(tree = %id, files = stats.files, bytes = stats.bytes, "pinned layers built as the base tree");
    Ok(((id, entries), writer.written().1))
}

/// One run of the edits layer: the edits directory as scanned, and what recording it needs.
struct EditsRun<'a> {
    opts: &'a ApplyOptions,
    /// The edits layer's error context (its index is one past the pinned layers').
    ctx: Ctx,
    dir: &'a Path,
    dir_text: String,
    snap: Snapshot,
    summaries: Vec<LayerSummary>,
    trees: PathBuf,
    started: Instant,
}

/// The edits laid over the base in a staging tree.
struct Layered {
    staging: tempfile::TempDir,
    writer: Arc<TreeWriter>,
    /// Files hard-linked from the base.
    linked: u64,
    /// The edits revision the tree holds: the scanned digest, or empty when the batch was refused.
    applied: String,
}

impl<'a> EditsRun<'a> {
    async fn scan(opts: &'a ApplyOptions, dir: &'a Path, started: Instant) -> Result<Self> {
        let ctx = Ctx::new(opts.layers.len(), format!("edits {}", dir.display()));
        let dir_text = dir.display().to_string();
        let snap = scan_edits(&ctx, dir).await?;
        if let Some(r) = &snap.refusal {
            tracing::warn!(path = %r.path, reason = %r.reason, edits = %dir_text, "edit refused; keeping the last good tree");
        }
        let summaries = LayerSummary::of(&opts.layers);
        Ok(EditsRun { opts, ctx, dir, dir_text, snap, summaries, trees: opts.root.join(TREES), started })
    }

    /// Same pins and the same edits, or edits refused: `current` is the last good tree.
    fn in_place(&self, st: &State, base_id: &str) -> bool {
        st.base_tree.as_deref() == Some(base_id)
            && st.edits.as_ref().is_some_and(|e| {
                e.dir == self.dir_text && (self.snap.refusal.is_some() || e.revision == self.snap.digest)
            })
            && is_current(&self.opts.root, &st.tree)
    }

    /// Leaves `current` as it is, recording a refused batch if this one is.
    fn keep_current(self, st: &State) -> Result<Summary> {
        if let Some(r) = &self.snap.refusal {
            status_refused(&self.opts.root, &self.dir_text, st, &self.snap.digest, r)?;
        } else {
            tracing::info!(tree = %st.tree, "pinned revisions and edits already in place; nothing to do");
        }
        let revision = st.edits.as_ref().map(|e| e.revision.clone());
        let s = Summary {
            edits_revision: revision,
            edits_scanned: Some(self.snap.digest.clone()),
            refused: self.snap.refusal.clone(),
            ..Summary::unchanged(st, &self.trees, self.opts.layers.len(), self.started)
        };
        self.opts.progress.finished(&s);
        Ok(s)
    }

    /// A staging tree of hard links to the base's files with the edits copied over them; a
    /// refused batch is not copied. Edits that change while copied fail the run.
    async fn layer_over(&self, (base_id, base_entries): &Base) -> Result<Layered> {
        let (ctx, opts) = (&self.ctx, self.opts);
        remove_stale_staging(&self.trees);
        let staging = new_staging(&self.trees)?;
        let writer = Arc::new(TreeWriter::new(staging.path().to_owned(), opts.limits, opts.progress.clone()));
        let linked = writer.link_from(ctx, &self.trees.join(base_id), base_entries)?;
        if self.snap.refusal.is_some() {
            return Ok(Layered { staging, writer, linked, applied: String::new() });
        }
        opts.progress.layer_started(ctx.layer, &ctx.src);
        let layer_started = Instant::now();
        let (w, c, d, entries) = (writer.clone(), ctx.clone(), self.dir.to_owned(), self.snap.entries.clone());
        tokio::task::spawn_blocking(move || overlay(&c, &d, &entries, &w))
            .await
            .map_err(|e| Error::Plan(format!("edits copy task failed: {e}")))??;
        // Whatever changed while copying (a file still being saved) is not served: the batch
        // is dropped and taken again once the directory is quiet.
        let now = scan_edits(ctx, self.dir).await?;
        if now.digest != self.snap.digest {
            return Err(ctx.changed(&self.snap.digest, &now.digest));
        }
        let (files, bytes) = writer.written();
        opts.progress.layer_finished(ctx.layer, files, bytes, layer_started.elapsed());
        Ok(Layered { staging, writer, linked, applied: self.snap.digest.clone() })
    }

    /// Whether the layered tree is the one `current` shows already.
    fn same_tree(&self, st: &State, digest: &str, base_id: &str) -> bool {
        self.snap.refusal.is_none()
            && st.tree_digest == digest
            && st.base_tree.as_deref() == Some(base_id)
            && is_current(&self.opts.root, &st.tree)
    }

    /// Keeps `current` and records the new edits revision it holds.
    fn keep_tree(self, st: &State, layered: Layered, base_bytes: u64) -> Result<Summary> {
        let root = &self.opts.root;
        let Layered { staging, linked, applied, .. } = layered;
        drop(staging);
        let edits = Some(EditsState { dir: self.dir_text.clone(), revision: applied.clone() });
        state::write(root, &State { edits, ..st.clone() })?;
        if let Some(mut status) = crate::edits_layer::read_status(root).filter(|s| s.edits_dir == self.dir_text) {
            status.edits_revision = applied.clone();
            status.state = "applied".into();
            state::write_json(root, crate::edits_layer::STATUS_FILE, &status)?;
        }
        tracing::info!(tree = %st.tree, "edits leave the tree as it is; nothing to swap");
        let s = Summary {
            written_bytes: base_bytes,
            linked_files: linked,
            edits_revision: Some(applied),
            edits_scanned: Some(self.snap.digest.clone()),
            ..Summary::unchanged(st, &self.trees, self.opts.layers.len(), self.started)
        };
        self.opts.progress.finished(&s);
        Ok(s)
    }

    /// Moves the layered tree into place, swaps `current` to it, and records state and status.
    fn swap_in(self, layered: Layered, (base_id, base_entries): &Base, base_bytes: u64) -> Result<Summary> {
        let (opts, root) = (self.opts, &self.opts.root);
        let Layered { staging, writer, linked, applied } = layered;
        let stats = writer.stats();
        let id = tree_id("", &stats.digest);
        let tree = publish(root, staging, &id)?;
        let edits = EditsState { dir: self.dir_text.clone(), revision: applied.clone() };
        let new_state = tree_state(opts, self.summaries.clone(), &id, &stats, Some(base_id.clone()), Some(edits));
        state::write(root, &new_state)?;
        let copied = writer.written().1;
        let prev = crate::edits_layer::read_status(root).filter(|s| s.edits_dir == self.dir_text).unwrap_or_default();
        let refused = self.snap.refusal.as_ref().map(|r| RefusedEdit {
            path: r.path.clone(),
            reason: r.reason.clone(),
            at: now_rfc3339(),
            edits_revision: self.snap.digest.clone(),
        });
        let status = EditsStatus {
            edits_dir: self.dir_text.clone(),
            state: if refused.is_some() { "refused" } else { "applied" }.into(),
            edits_revision: applied.clone(),
            tree: id.clone(),
            tree_digest: stats.digest.clone(),
            base_tree: base_id.clone(),
            base_digest: crate::tree::digest_entries(base_entries),
            changes: crate::edits_layer::diff(base_entries, &writer.entries()),
            applied_at: if refused.is_some() { prev.applied_at } else { Some(new_state.applied_at.clone()) },
            batches: prev.batches + u64::from(refused.is_none()),
            refused_batches: prev.refused_batches + u64::from(refused.is_some()),
            last_refused: refused.or(prev.last_refused),
            copied_bytes: copied,
            linked_files: linked,
        };
        state::write_json(root, crate::edits_layer::STATUS_FILE, &status)?;
        remove_old_trees(&self.trees, &[&id, base_id]);
        let s = Summary {
            written_bytes: base_bytes + copied,
            linked_files: linked,
            edits_revision: Some(applied),
            edits_scanned: Some(self.snap.digest.clone()),
            refused: self.snap.refusal,
            ..Summary::built(opts.layers.len(), tree, stats.digest, (stats.files, stats.bytes), self.started)
        };
        opts.progress.finished(&s);
        Ok(s)
    }
}

async fn scan_edits(ctx: &Ctx, dir: &Path) -> Result<Snapshot> {
    let d = dir.to_owned();
    tokio::task::spawn_blocking(move || crate::edits_layer::scan(&d))
        .await
        .map_err(|e| Error::Plan(format!("edits scan task failed: {e}")))?
        .map_err(|e| ctx.io(format!("scan the edits directory {}", dir.display()), e))
}

/// Records a refused batch while `current` keeps the last good tree.
fn status_refused(root: &Path, dir: &str, st: &State, digest: &str, r: &crate::edits_layer::Refusal) -> Result<()> {
    let mut status =
        crate::edits_layer::read_status(root).filter(|s| s.edits_dir == dir).unwrap_or_else(|| EditsStatus {
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
    state::write_json(root, crate::edits_layer::STATUS_FILE, &status)
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
pub(crate) fn swap_current(root: &Path, id: &str) -> Result<()> {
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
