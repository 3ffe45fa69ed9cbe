//! S3 layers via object_store: the revision is a digest of sorted `key etag` lines; the prefix is
//! listed folder by folder (bounded, in parallel), objects are downloaded in parallel (bounded),
//! streamed to disk, and checked against the listed ETag.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::FuturesUnordered;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::path::Path as StorePath;
use object_store::{ListResult, ObjectMeta};
use object_store::{ObjectStore as _, ObjectStoreExt as _};
use sha2::{Digest, Sha256};

use crate::error::Ctx;
use crate::retry::{self, RetryPolicy};
use crate::source::store_error;
use crate::tree::TreeWriter;
use crate::{Result, paths};

/// Downloads at once per layer. Many small objects make a download's time mostly waiting on
/// the server (s3s-fs takes ~40 ms per GET whatever the size, real stores their first-byte
/// latency), so more requests in flight go faster; each holds at most one write buffer.
pub(crate) const CONCURRENCY: usize = 32;

/// Bytes gathered before each write to an object's file.
const WRITE_BUFFER: usize = 256 * 1024;

/// Folders listed at once per layer.
const LIST_CONCURRENCY: usize = 16;

/// Longer folder names cannot be a path on disk (Linux PATH_MAX); a server that hands them out is
/// looping, so the listing stops there.
const MAX_FOLDER_LEN: usize = 4096;

/// One S3 layer, owned so its downloads can run as tasks.
pub(crate) struct S3Layer {
    pub ctx: Ctx,
    pub store: Arc<AmazonS3>,
    /// The folder taken (prefix joined with subPath), without slashes at the ends; empty for the bucket.
    pub prefix: String,
    pub secret: Option<String>,
    pub policy: RetryPolicy,
    /// The listing `resolve` made, which `apply` takes so that a run lists the prefix once.
    pub listed: Mutex<Option<Vec<ObjectMeta>>>,
}

impl S3Layer {
    /// Every object under the prefix. Listed folder by folder with delimiter `/`, up to
    /// [`LIST_CONCURRENCY`] folders at once: a flat listing is one page after another, and some
    /// stores (s3s-fs) walk the whole prefix again for every page.
    async fn list(&self) -> Result<Vec<ObjectMeta>> {
        let root = (!self.prefix.is_empty()).then(|| StorePath::from(self.prefix.as_str()));
        let mut objs = Vec::new();
        let mut waiting = Vec::new();
        let mut running = FuturesUnordered::new();
        running.push(self.list_folder(root));
        while let Some(listed) = running.next().await {
            let (folder, ListResult { common_prefixes, objects }) = listed?;
            objs.extend(objects);
            for sub in common_prefixes {
                self.check_subfolder(folder.as_ref(), &sub)?;
                waiting.push(sub);
            }
            while running.len() < LIST_CONCURRENCY
                && let Some(sub) = waiting.pop()
            {
                running.push(self.list_folder(Some(sub)));
            }
        }
        if objs.is_empty() {
            return Err(self.ctx.not_found(format!(
                "no objects under prefix `{}`; check s3.bucket, s3.prefix and subPath",
                self.prefix
            )));
        }
        Ok(objs)
    }

    /// One folder's objects and subfolders (all pages).
    async fn list_folder(&self, folder: Option<StorePath>) -> Result<(Option<StorePath>, ListResult)> {
        let listed = retry::retry(&self.policy, "s3 list", || async {
            self.store
                .list_with_delimiter(folder.as_ref())
                .await
                .map_err(|e| store_error(&self.ctx, &e, self.secret.as_deref(), "listing the prefix"))
        })
        .await?;
        Ok((folder, listed))
    }

    /// A subfolder must sit one level below the folder listed, or the descent would not end.
    fn check_subfolder(&self, folder: Option<&StorePath>, sub: &StorePath) -> Result<()> {
        let depth = folder.map_or(0, |f| f.parts().count());
        let below = folder.is_none_or(|f| sub.prefix_matches(f)) && sub.parts().count() == depth + 1;
        if !below || sub.as_ref().len() > MAX_FOLDER_LEN {
            let folder = folder.map_or("", |f| f.as_ref());
            return Err(self.ctx.hostile(format!(
                "the listing of folder `{folder}/` names `{sub}/` as its subfolder; the store is not listing by delimiter `/` as S3 does"
            )));
        }
        Ok(())
    }

    /// `sha256:` over sorted `key etag` lines of the objects under the prefix.
    pub async fn resolve(&self) -> Result<String> {
        let objs = self.list().await?;
        let revision = digest(&objs);
        *self.listed.lock().unwrap_or_else(|p| p.into_inner()) = Some(objs);
        Ok(revision)
    }

    /// Downloads the pinned listing into the staging tree at `dest`.
    pub async fn apply(self: Arc<Self>, pinned: &str, dest: &str, w: Arc<TreeWriter>) -> Result<()> {
        let ctx = &self.ctx;
        let listed = self.listed.lock().unwrap_or_else(|p| p.into_inner()).take();
        let objs = match listed {
            Some(objs) => objs,
            None => self.list().await?,
        };
        let now = digest(&objs);
        if now != pinned {
            return Err(ctx.changed(pinned, &now));
        }
        let mut items = Vec::with_capacity(objs.len());
        for o in objs {
            let key = o.location.as_ref().to_owned();
            let rest = if self.prefix.is_empty() {
                key.as_str()
            } else {
                key.strip_prefix(&format!("{}/", self.prefix)).unwrap_or("")
            };
            let comps = paths::strict_components(rest).map_err(|m| ctx.hostile(m))?;
            items.push((paths::join2(dest, &paths::join(&comps)), o));
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        // Folders are listed one by one, so a server that lists an object in two of them would
        // have it written twice at once.
        if let Some(w) = items.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(ctx.hostile(format!("key `{}` is listed twice", w[1].1.location)));
        }
        // A zero-byte object whose name is also a folder is a folder marker; any other
        // object that is also a folder is ambiguous.
        let mut files = Vec::with_capacity(items.len());
        for i in 0..items.len() {
            let (rel, o) = &items[i];
            let is_folder = items.get(i + 1).is_some_and(|(next, _)| next.starts_with(&format!("{rel}/")));
            if is_folder {
                if o.size != 0 {
                    return Err(ctx.hostile(format!("key `{}` is both an object and a folder", o.location)));
                }
                w.ensure_dir(ctx, rel)?;
            } else {
                files.push((rel.clone(), o.clone()));
            }
        }
        w.check_budget(ctx, files.len() as u64, files.iter().map(|(_, o)| o.size).sum())?;
        let mut jobs = Vec::with_capacity(files.len());
        for (rel, o) in files {
            let abs = w.prepare(ctx, &rel)?;
            jobs.push((rel, abs, o));
        }
        futures::stream::iter(jobs)
            .map(|(rel, abs, o)| {
                let (this, w, pinned) = (self.clone(), w.clone(), pinned.to_owned());
                async move {
                    let (size, sha) =
                        retry::retry(&this.policy, "s3 get", || this.download(&o, &abs, &w, &pinned)).await?;
                    w.record_file(&this.ctx, &rel, false, size, sha)
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn download(&self, o: &ObjectMeta, abs: &Path, w: &TreeWriter, pinned: &str) -> Result<(u64, [u8; 32])> {
        let ctx = &self.ctx;
        let what = format!("downloading `{}`", o.location);
        let r = self.store.get(&o.location).await.map_err(|e| store_error(ctx, &e, self.secret.as_deref(), &what))?;
        let same = match listed_etag(o) {
            Some(e) => r.meta.e_tag.as_deref() == Some(e),
            // No ETag listed: size and (second-precision, as in HTTP headers) mtime must match.
            None => r.meta.size == o.size && r.meta.last_modified.timestamp() == o.last_modified.timestamp(),
        };
        if !same {
            return Err(ctx.changed(pinned, &format!("object `{}` has a new ETag", o.location)));
        }
        let write_err = |e| ctx.io(format!("write {}", abs.display()), e);
        let mut f = ObjectFile::new(abs.to_path_buf(), o.size);
        let mut stream = r.into_stream();
        let mut h = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| store_error(ctx, &e, self.secret.as_deref(), &what))?;
            size += chunk.len() as u64;
            if size > o.size {
                return Err(ctx.verification(format!("`{}` is longer than the {} bytes listed", o.location, o.size)));
            }
            w.add_bytes(ctx, chunk.len() as u64)?;
            h.update(&chunk);
            f.write(&chunk).await.map_err(write_err)?;
        }
        f.finish().await.map_err(write_err)?;
        if size != o.size {
            return Err(ctx.transient(format!("`{}` ended after {size} of {} bytes", o.location, o.size)));
        }
        Ok((size, h.finalize().into()))
    }
}

/// An object's file, written from a blocking thread a buffer at a time. Every tokio file
/// operation is a hop to a blocking thread; this takes one hop per [`WRITE_BUFFER`] bytes, and
/// a single one (create, write, close) for a smaller object, instead of one per network chunk
/// (about 16 KiB) plus create and chmod.
struct ObjectFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    buf: Vec<u8>,
}

impl ObjectFile {
    fn new(path: PathBuf, size: u64) -> Self {
        let cap = usize::try_from(size).unwrap_or(usize::MAX).min(WRITE_BUFFER);
        ObjectFile { path, file: None, buf: Vec::with_capacity(cap) }
    }

    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        self.buf.extend_from_slice(chunk);
        if self.buf.len() >= WRITE_BUFFER {
            self.flush(false).await?;
        }
        Ok(())
    }

    /// Writes the rest and closes the file (creating it, for an empty object).
    async fn finish(mut self) -> std::io::Result<()> {
        self.flush(true).await
    }

    async fn flush(&mut self, last: bool) -> std::io::Result<()> {
        use std::io::Write as _;
        let (path, file, mut buf) = (self.path.clone(), self.file.take(), std::mem::take(&mut self.buf));
        let (file, buf) = tokio::task::spawn_blocking(move || {
            let mut f = match file {
                Some(f) => f,
                None => create_object_file(&path)?,
            };
            f.write_all(&buf)?;
            buf.clear();
            Ok::<_, std::io::Error>((if last { None } else { Some(f) }, buf))
        })
        .await
        .map_err(std::io::Error::other)??;
        (self.file, self.buf) = (file, buf);
        Ok(())
    }
}

/// Creates (or truncates, on a retry) an object's file, 0644 whatever the umask: S3 has no modes.
fn create_object_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    Ok(f)
}

/// The listed ETag, unless it is missing or empty: versitygw lists `<ETag></ETag>` for files put in
/// its directory by hand and then sends no ETag with the object.
fn listed_etag(o: &ObjectMeta) -> Option<&str> {
    o.e_tag.as_deref().filter(|e| !e.is_empty())
}

/// The ETag; stores that list none (s3s-fs) or an empty one get `size mtime` instead.
fn version(o: &ObjectMeta) -> String {
    match listed_etag(o) {
        Some(e) => e.to_owned(),
        None => format!("size={},mtime={}", o.size, o.last_modified.timestamp_nanos_opt().unwrap_or_default()),
    }
}

/// `sha256:` over sorted `key etag` lines.
pub(crate) fn digest(objs: &[ObjectMeta]) -> String {
    let mut lines: Vec<String> = objs.iter().map(|o| format!("{} {}\n", o.location.as_ref(), version(o))).collect();
    lines.sort();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(key: &str, e_tag: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            location: StorePath::from(key),
            last_modified: Default::default(),
            size: 3,
            e_tag: e_tag.map(Into::into),
            version: None,
        }
    }

    #[test]
    fn empty_etags_count_as_missing() {
        assert_eq!(version(&meta("a", Some("\"x\""))), "\"x\"");
        assert_eq!(version(&meta("a", Some(""))), "size=3,mtime=0");
        assert_eq!(version(&meta("a", Some(""))), version(&meta("a", None)));
        assert_ne!(digest(&[meta("a", Some("1"))]), digest(&[meta("b", Some("1"))]));
    }
}
