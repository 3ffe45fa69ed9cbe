//! Local directory layers: the revision is a digest of names, sizes, mtimes and modes, so any
//! edit shows up as a new revision without reading file contents.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::{Ctx, Error};
use crate::tree::TreeWriter;
use crate::{Result, paths};

/// The directory a local layer takes (its path plus subPath).
pub(crate) fn source_dir(path: &str, sub_path: &str) -> PathBuf {
    if sub_path.is_empty() { PathBuf::from(path) } else { Path::new(path).join(sub_path) }
}

fn open_dir(ctx: &Ctx, dir: &Path) -> Result<()> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ctx.invalid(format!("{} is not a directory; check local.path and subPath", dir.display()))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(ctx.not_found(format!("directory {} not found; check local.path and subPath", dir.display())))
        }
        Err(e) => Err(ctx.io(format!("read {}", dir.display()), e)),
    }
}

/// `sha256:` over sorted `relpath size mtime-nanos mode` lines.
pub(crate) fn resolve(ctx: &Ctx, dir: &Path) -> Result<String> {
    open_dir(ctx, dir)?;
    let mut lines = Vec::new();
    scan(ctx, dir, "", &mut lines)?;
    lines.sort();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

fn scan(ctx: &Ctx, dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    for de in fs::read_dir(dir).map_err(|e| ctx.io(format!("read {}", dir.display()), e))? {
        let de = de.map_err(|e| ctx.io(format!("read {}", dir.display()), e))?;
        let name = de
            .file_name()
            .into_string()
            .map_err(|n| ctx.invalid(format!("name {n:?} in {} is not UTF-8", dir.display())))?;
        let r = paths::join2(rel, &name);
        let m = fs::symlink_metadata(de.path()).map_err(|e| ctx.io(format!("stat {}", de.path().display()), e))?;
        let nanos = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
        out.push(format!("{r} {} {nanos} {:o}\n", m.len(), m.mode()));
        if m.file_type().is_dir() {
            scan(ctx, &de.path(), &r, out)?;
        }
    }
    Ok(())
}

/// Copies the directory into the staging tree at `dest`, after checking it still has the pinned revision.
pub(crate) async fn apply(ctx: Ctx, dir: PathBuf, pinned: String, dest: String, w: Arc<TreeWriter>) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let now = resolve(&ctx, &dir)?;
        if now != pinned {
            return Err(ctx.changed(&pinned, &now));
        }
        copy_dir(&ctx, &dir, &dest, &w)
    })
    .await
    .map_err(|e| Error::Plan(format!("local copy task failed: {e}")))?
}

fn copy_dir(ctx: &Ctx, dir: &Path, dest: &str, w: &TreeWriter) -> Result<()> {
    w.ensure_dir(ctx, dest)?;
    let mut items: Vec<_> = fs::read_dir(dir)
        .map_err(|e| ctx.io(format!("read {}", dir.display()), e))?
        .collect::<io::Result<_>>()
        .map_err(|e| ctx.io(format!("read {}", dir.display()), e))?;
    items.sort_by_key(|d| d.file_name());
    for de in items {
        let name = de
            .file_name()
            .into_string()
            .map_err(|n| ctx.invalid(format!("name {n:?} in {} is not UTF-8", dir.display())))?;
        let rel = paths::join2(dest, &name);
        let p = de.path();
        let m = fs::symlink_metadata(&p).map_err(|e| ctx.io(format!("stat {}", p.display()), e))?;
        let ft = m.file_type();
        if ft.is_dir() {
            copy_dir(ctx, &p, &rel, w)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(&p).map_err(|e| ctx.io(format!("read link {}", p.display()), e))?;
            let t = t.to_str().ok_or_else(|| ctx.invalid(format!("link target of {} is not UTF-8", p.display())))?;
            w.symlink(ctx, &rel, t)?;
        } else if ft.is_file() {
            let mut f = fs::File::open(&p).map_err(|e| ctx.io(format!("open {}", p.display()), e))?;
            w.write_reader(ctx, &rel, m.permissions().mode() & 0o111 != 0, &mut f)?;
        } else {
            return Err(ctx.hostile(format!(
                "{} is a device, fifo or socket; only files, directories and symlinks are layered",
                p.display()
            )));
        }
    }
    Ok(())
}
