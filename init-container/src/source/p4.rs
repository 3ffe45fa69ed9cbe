//! Perforce-export layers: a tarball (`.tar`, `.tar.gz`, `.tar.zst`) plus `<archive>.manifest.json`.
//! The archive is streamed (never held in memory): hashed as it arrives, unpacked as hostile
//! input, each file checked against the manifest, the archive checked against the pin at the end.

use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AmazonS3;
use object_store::path::Path as StorePath;
use object_store::{GetOptions, GetRange, ObjectStore as _, ObjectStoreExt as _};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::error::{Ctx, Error};
use crate::p4export::Manifest;
use crate::retry::{self, RetryPolicy};
use crate::source::{reqwest_error, store_error};
use crate::tree::TreeWriter;
use crate::{Result, paths};

/// Largest manifest accepted.
const MAX_MANIFEST: usize = 256 << 20;

/// Where the archive is.
pub(crate) enum Location {
    Http {
        url: String,
        basic: Option<(Zeroizing<String>, Zeroizing<String>)>,
        bearer: Option<Zeroizing<String>>,
        secret: Option<String>,
    },
    File(PathBuf),
    S3 {
        store: Arc<AmazonS3>,
        key: String,
        secret: Option<String>,
    },
}

/// One p4-export layer.
pub(crate) struct P4Layer {
    pub ctx: Ctx,
    pub location: Location,
    pub expected_sha256: Option<String>,
    pub policy: RetryPolicy,
    /// Which servers may be connected to.
    pub egress: crate::egress::Egress,
}

impl P4Layer {
    fn auth_hint(&self, secret: &Option<String>) -> String {
        match secret {
            Some(s) => format!("check Secret `{s}` keys `username`/`password` or `bearerToken`"),
            None => "the server wants credentials: set p4Export.secretRef".to_owned(),
        }
    }

    fn http_request(&self, url: &str, offset: u64) -> Result<reqwest::RequestBuilder> {
        let Location::Http { basic, bearer, .. } = &self.location else {
            unreachable!("http request for a non-http location")
        };
        let mut req = crate::source::http_client(&self.ctx, &self.egress)?.get(url);
        if let Some((u, p)) = basic {
            req = req.basic_auth(u.as_str(), Some(p.as_str()));
        } else if let Some(t) = bearer {
            req = req.bearer_auth(t.as_str());
        }
        if offset > 0 {
            req = req.header("Range", format!("bytes={offset}-"));
        }
        Ok(req)
    }

    async fn http_open(&self, url: &str, offset: u64, what: &str) -> Result<reqwest::Response> {
        let Location::Http { secret, .. } = &self.location else { unreachable!("http open for a non-http location") };
        let resp =
            self.http_request(url, offset)?.send().await.map_err(|e| reqwest_error(&self.ctx, "p4Export.url", &e))?;
        let s = resp.status().as_u16();
        match s {
            200 if offset == 0 => Ok(resp),
            206 if offset > 0 => Ok(resp),
            200 => Err(self
                .ctx
                .source(format!("{what}: the server cannot resume a download (no range support); run again"))),
            401 | 403 => Err(self.ctx.auth(self.auth_hint(secret))),
            404 => Err(self.ctx.not_found(format!("{what}: not found (HTTP 404); check p4Export.url"))),
            s if retry::status_is_transient(s) => Err(self.ctx.transient(format!("{what}: HTTP {s}"))),
            s => Err(self.ctx.source(format!("{what}: {}", crate::source::status_phrase(s, "p4Export.url")))),
        }
    }

    async fn manifest(&self) -> Result<Manifest> {
        let ctx = &self.ctx;
        let body: Vec<u8> = match &self.location {
            Location::Http { url, .. } => {
                let murl = manifest_url(url);
                retry::retry(&self.policy, "p4 manifest", || async {
                    let resp = self.http_open(&murl, 0, "manifest").await?;
                    if resp.content_length().is_some_and(|l| l as usize > MAX_MANIFEST) {
                        return Err(ctx.limit("the manifest is larger than 256 MiB"));
                    }
                    Ok(resp.bytes().await.map_err(|e| reqwest_error(ctx, "p4Export.url", &e))?.to_vec())
                })
                .await?
            }
            Location::File(p) => {
                let mp = PathBuf::from(format!("{}.manifest.json", p.display()));
                std::fs::read(&mp).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => {
                        ctx.not_found(format!("manifest {} not found; check p4Export.url", mp.display()))
                    }
                    _ => ctx.io(format!("read {}", mp.display()), e),
                })?
            }
            Location::S3 { store, key, secret } => {
                let mk = StorePath::from(format!("{key}.manifest.json").as_str());
                retry::retry(&self.policy, "p4 manifest", || async {
                    let r = store.get(&mk).await.map_err(|e| store_error(ctx, &e, secret.as_deref(), "manifest"))?;
                    if r.meta.size as usize > MAX_MANIFEST {
                        return Err(ctx.limit("the manifest is larger than 256 MiB"));
                    }
                    Ok(r.bytes().await.map_err(|e| store_error(ctx, &e, secret.as_deref(), "manifest"))?.to_vec())
                })
                .await?
            }
        };
        // serde's message quotes the values it refused: only the position is kept.
        let m: Manifest = serde_json::from_slice(&body).map_err(|e| {
            ctx.verification(format!(
                "the manifest is not a p4 export manifest (invalid at line {}, column {}); check p4Export.url",
                e.line(),
                e.column()
            ))
        })?;
        if !(m.archive_sha256.len() == 64 && m.archive_sha256.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(ctx.verification("the manifest's archiveSha256 is not 64 hex digits"));
        }
        if let Some(want) = &self.expected_sha256
            && !want.eq_ignore_ascii_case(&m.archive_sha256)
        {
            return Err(ctx.verification(format!(
                "the manifest names archive sha256 {} but p4Export.sha256 expects {want}; update p4Export.sha256 or the export",
                m.archive_sha256
            )));
        }
        Ok(m)
    }

    /// `<changelist>@sha256:<archive hex>` from the manifest.
    pub async fn resolve(&self) -> Result<String> {
        let m = self.manifest().await?;
        Ok(format!("{}@sha256:{}", m.changelist, m.archive_sha256.to_ascii_lowercase()))
    }

    /// Streams the archive into the staging tree at `dest`, taking only `sub_path`.
    pub async fn apply(self: Arc<Self>, pinned: &str, sub_path: &str, dest: &str, w: Arc<TreeWriter>) -> Result<()> {
        let ctx = &self.ctx;
        let m = self.manifest().await?;
        let now = format!("{}@sha256:{}", m.changelist, m.archive_sha256.to_ascii_lowercase());
        if now != pinned {
            return Err(ctx.changed(pinned, &now));
        }
        let (input, producer): (Box<dyn Read + Send>, _) = match &self.location {
            Location::File(p) => {
                let f = std::fs::File::open(p).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => {
                        ctx.not_found(format!("archive {} not found; check p4Export.url", p.display()))
                    }
                    _ => ctx.io(format!("open {}", p.display()), e),
                })?;
                (Box::new(f), None)
            }
            _ => {
                let (tx, rx) = mpsc::channel(16);
                let this = self.clone();
                (
                    Box::new(ChannelReader { rx, cur: Bytes::new() }),
                    Some(AbortOnDrop(tokio::spawn(async move { this.pump(tx).await }))),
                )
            }
        };
        let (ctx2, sub, dest, w2) = (ctx.clone(), sub_path.to_owned(), dest.to_owned(), w.clone());
        let sha = m.archive_sha256.to_ascii_lowercase();
        let extracted = tokio::task::spawn_blocking(move || extract(&ctx2, input, &m, &sha, &sub, &dest, &w2))
            .await
            .map_err(|e| Error::Plan(format!("unpack task failed: {e}")))?;
        if let Some(mut p) = producer {
            // The producer's error says what went wrong on the wire; prefer it.
            let fetched = (&mut p.0).await.map_err(|e| Error::Plan(format!("download task failed: {e}")))?;
            fetched?;
        }
        extracted
    }

    /// Sends the archive's bytes down `tx`, resuming with a range request after a transient
    /// failure (delays and limits from the retry policy).
    async fn pump(&self, tx: mpsc::Sender<io::Result<Bytes>>) -> Result<()> {
        let ctx = &self.ctx;
        let mut offset = 0u64;
        let mut resumes = 0u32;
        loop {
            let opened = retry::retry(&self.policy, "p4 archive", || self.open_stream(offset)).await;
            let mut stream = match opened {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                    return Err(e);
                }
            };
            let mut failure = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(b) => {
                        offset += b.len() as u64;
                        if tx.send(Ok(b)).await.is_err() {
                            return Ok(()); // the unpacker stopped; its error is reported
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let Some(e) = failure else { return Ok(()) };
            resumes += 1;
            if !e.is_transient() || resumes >= self.policy.attempts.max(1) {
                let e = e.with_attempts(resumes);
                let _ = tx.send(Err(io::Error::other(e.to_string()))).await;
                return Err(e);
            }
            let delay = self.policy.delay(resumes);
            tracing::warn!(layer = ctx.layer, offset, error = %e, delay_ms = delay.as_millis() as u64, "archive download interrupted; resuming");
            tokio::time::sleep(delay).await;
        }
    }

    async fn open_stream(&self, offset: u64) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        let ctx = self.ctx.clone();
        match &self.location {
            Location::Http { url, .. } => {
                let resp = self.http_open(url, offset, "archive").await?;
                Ok(resp.bytes_stream().map(move |r| r.map_err(|e| reqwest_error(&ctx, "p4Export.url", &e))).boxed())
            }
            Location::S3 { store, key, secret } => {
                let opts = GetOptions { range: (offset > 0).then_some(GetRange::Offset(offset)), ..Default::default() };
                let r = store
                    .get_opts(&StorePath::from(key.as_str()), opts)
                    .await
                    .map_err(|e| store_error(&ctx, &e, secret.as_deref(), "archive"))?;
                let secret = secret.clone();
                Ok(r.into_stream()
                    .map(move |c| c.map_err(|e| store_error(&ctx, &e, secret.as_deref(), "archive")))
                    .boxed())
            }
            Location::File(_) => Err(self.ctx.source("internal: file archives are read directly")),
        }
    }
}

/// The download task, stopped when `apply` is dropped (at the fetch deadline) so that it does
/// not go on downloading for nobody.
struct AbortOnDrop(tokio::task::JoinHandle<Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn manifest_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let p = format!("{}.manifest.json", u.path());
            u.set_path(&p);
            u.to_string()
        }
        Err(_) => format!("{url}.manifest.json"),
    }
}

/// Feeds bytes from the async download to the synchronous unpacker.
struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}

struct HashReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

struct HashSink(Sha256, u64);
impl io::Write for HashSink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        self.1 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn corrupt(ctx: &Ctx, e: io::Error) -> Error {
    if retry::io_is_transient(&e) {
        ctx.transient(format!("reading the archive: {e}"))
    } else {
        ctx.verification(format!("the archive cannot be read (corrupt or not a tar): {e}"))
    }
}

/// Where an archive path lands relative to the layer's subPath: `Some(rest)` inside, `None` outside.
fn within<'a>(sub: &str, path: &'a str) -> Option<&'a str> {
    if sub.is_empty() {
        Some(path)
    } else if path == sub {
        Some("")
    } else {
        path.strip_prefix(sub).and_then(|r| r.strip_prefix('/'))
    }
}

/// What an archive entry makes at its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    HardLink,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dir => "a directory",
            Kind::File => "a file",
            Kind::Symlink => "a symlink",
            Kind::HardLink => "a hard link",
        }
    }
}

/// The paths an archive's entries have claimed so far. Unpacking an entry whose path was
/// already taken, or that sits below a file (or above one as a file itself), would make the
/// tree lose an entry the manifest lists: such an archive is refused as hostile.
#[derive(Default)]
struct Claimed {
    /// Each entry's path, with what it makes there.
    entries: HashMap<String, Kind>,
    /// Each directory implied by an entry below it, with the first such entry.
    parents: HashMap<String, String>,
}

impl Claimed {
    /// Records that an entry makes `kind` at `path`; the error names both entries.
    fn claim(&mut self, path: &str, kind: Kind) -> std::result::Result<(), String> {
        let conflict = |earlier: &str, was: Kind| {
            Err(format!(
                "the archive has `{earlier}` as {} and then `{path}` as {}: each path may appear once, and nothing can be below a file; unpacking it would lose an entry, so the export is refused — produce it again",
                was.name(),
                kind.name()
            ))
        };
        if let Some(&was) = self.entries.get(path) {
            // The same directory twice changes nothing.
            return if was == Kind::Dir && kind == Kind::Dir { Ok(()) } else { conflict(path, was) };
        }
        if kind != Kind::Dir
            && let Some(below) = self.parents.get(path)
        {
            return Err(format!(
                "the archive has `{below}`, so `{path}` is a directory, and then `{path}` as {}: unpacking it would lose an entry, so the export is refused — produce it again",
                kind.name()
            ));
        }
        for (i, _) in path.match_indices('/') {
            let parent = &path[..i];
            if let Some(&was) = self.entries.get(parent)
                && was != Kind::Dir
            {
                return conflict(parent, was);
            }
            self.parents.entry(parent.to_owned()).or_insert_with(|| path.to_owned());
        }
        self.entries.insert(path.to_owned(), kind);
        Ok(())
    }
}

fn extract(
    ctx: &Ctx,
    input: Box<dyn Read + Send>,
    m: &Manifest,
    sha: &str,
    sub: &str,
    dest: &str,
    w: &TreeWriter,
) -> Result<()> {
    let mut files: HashMap<String, &crate::p4export::ManifestFile> = HashMap::with_capacity(m.files.len());
    for f in &m.files {
        let comps = paths::components(&f.path).map_err(|e| ctx.hostile(format!("manifest path: {e}")))?;
        if let Some(earlier) = files.insert(paths::join(&comps), f) {
            return Err(ctx.hostile(format!(
                "the manifest lists `{}` twice ({} #{} and {} #{}); produce the export again",
                f.path, earlier.depot_path, earlier.rev, f.depot_path, f.rev
            )));
        }
    }
    let mut claimed = Claimed::default();
    let mut seen = HashSet::with_capacity(files.len());
    let mut hr = HashReader { inner: input, hasher: Sha256::new() };
    {
        let mut buf = BufReader::with_capacity(256 * 1024, &mut hr);
        let magic = buf.fill_buf().map_err(|e| corrupt(ctx, e))?.to_vec();
        let dec: Box<dyn Read + '_> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(buf))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(
                ruzstd::decoding::StreamingDecoder::new(buf)
                    .map_err(|e| ctx.verification(format!("the archive is not valid zstd: {e}")))?,
            )
        } else {
            Box::new(buf)
        };
        let mut ar = tar::Archive::new(dec);
        for entry in ar.entries().map_err(|e| corrupt(ctx, e))? {
            let mut entry = entry.map_err(|e| corrupt(ctx, e))?;
            let raw = entry.path_bytes().into_owned();
            let raw = std::str::from_utf8(&raw).map_err(|_| ctx.hostile("an archive path is not UTF-8"))?;
            let comps = paths::components(raw).map_err(|e| ctx.hostile(format!("archive entry {e}")))?;
            let path = paths::join(&comps);
            let inside = within(sub, &path);
            let target = inside.map(|rest| paths::join2(dest, rest));
            let ty = entry.header().entry_type();
            let mode = entry.header().mode().unwrap_or(0o644);
            let kind = match ty {
                tar::EntryType::Regular | tar::EntryType::Continuous => Some(Kind::File),
                tar::EntryType::Directory => Some(Kind::Dir),
                tar::EntryType::Symlink => Some(Kind::Symlink),
                tar::EntryType::Link => Some(Kind::HardLink),
                _ => None,
            };
            if let Some(kind) = kind {
                claimed.claim(&path, kind).map_err(|e| ctx.hostile(e))?;
            }
            match ty {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let Some(mf) = files.get(path.as_str()) else {
                        return Err(ctx.verification(format!("`{path}` is in the archive but not in the manifest")));
                    };
                    let (size, digest) = match &target {
                        Some(t) => {
                            let (size, d) = w.write_reader(ctx, t, mode & 0o111 != 0, &mut entry)?;
                            (size, hex::encode(d))
                        }
                        None => {
                            let mut sink = HashSink(Sha256::new(), 0);
                            io::copy(&mut entry, &mut sink).map_err(|e| corrupt(ctx, e))?;
                            (sink.1, hex::encode(sink.0.finalize()))
                        }
                    };
                    if size != mf.size || !digest.eq_ignore_ascii_case(&mf.sha256) {
                        return Err(ctx.verification(format!(
                            "`{path}` ({} #{}) does not match the manifest: {size} bytes sha256 {digest}, manifest says {} bytes sha256 {}; the export was altered — produce it again",
                            mf.depot_path, mf.rev, mf.size, mf.sha256
                        )));
                    }
                    seen.insert(path);
                }
                tar::EntryType::Directory => {
                    if let Some(t) = &target {
                        w.ensure_dir(ctx, t)?;
                    }
                }
                tar::EntryType::Symlink => {
                    let link = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                    let link = std::str::from_utf8(&link)
                        .map_err(|_| ctx.hostile(format!("symlink `{path}` target is not UTF-8")))?;
                    paths::check_link_target(&path, link).map_err(|e| ctx.hostile(e))?;
                    if let Some(t) = &target {
                        w.symlink(ctx, t, link)?;
                    }
                }
                tar::EntryType::Link => {
                    let link = entry.link_name_bytes().map(|b| b.into_owned()).unwrap_or_default();
                    let link = std::str::from_utf8(&link)
                        .map_err(|_| ctx.hostile(format!("hard link `{path}` target is not UTF-8")))?;
                    let lcomps =
                        paths::components(link).map_err(|e| ctx.hostile(format!("hard link `{path}` target {e}")))?;
                    let lpath = paths::join(&lcomps);
                    let (Some(mf), Some(lf)) = (files.get(path.as_str()), files.get(lpath.as_str())) else {
                        return Err(ctx.verification(format!("hard link `{path}` -> `{lpath}` is not in the manifest")));
                    };
                    if mf.sha256 != lf.sha256 || !seen.contains(&lpath) {
                        return Err(
                            ctx.verification(format!("hard link `{path}` -> `{lpath}` does not match the manifest"))
                        );
                    }
                    if let Some(t) = &target {
                        let Some(from) = within(sub, &lpath) else {
                            return Err(ctx.hostile(format!("hard link `{path}` points outside subPath to `{lpath}`")));
                        };
                        w.copy_file(ctx, t, &paths::join2(dest, from))?;
                    }
                    seen.insert(path);
                }
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => {}
                other => {
                    return Err(ctx.hostile(format!(
                        "`{path}` is a {other:?} entry (device, fifo or other special file); only files, directories and links are allowed"
                    )));
                }
            }
        }
    }
    io::copy(&mut hr, &mut io::sink()).map_err(|e| corrupt(ctx, e))?;
    let got = hex::encode(hr.hasher.finalize());
    if got != sha {
        return Err(ctx.verification(format!(
            "archive sha256 is {got} but the pin says {sha}; the archive was replaced or corrupted — resolve again or fix the export"
        )));
    }
    if let Some(missing) = files.keys().find(|k| !seen.contains(*k)) {
        return Err(ctx.verification(format!("`{missing}` is in the manifest but missing from the archive")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_sub_path() {
        assert_eq!(within("", "a/b"), Some("a/b"));
        assert_eq!(within("a", "a/b"), Some("b"));
        assert_eq!(within("a", "a"), Some(""));
        assert_eq!(within("a", "ab/c"), None);
    }

    fn claims(entries: &[(&str, Kind)]) -> std::result::Result<(), String> {
        let mut c = Claimed::default();
        entries.iter().try_for_each(|(p, k)| c.claim(p, *k))
    }

    #[test]
    fn an_archive_path_is_claimed_once_and_nothing_goes_below_a_file() {
        use Kind::*;
        assert_eq!(claims(&[("a", Dir), ("a/x", File), ("a", Dir), ("a/b", Dir), ("a/b/y", Symlink)]), Ok(()));
        // Implied directories need no entry of their own, before or after.
        assert_eq!(claims(&[("a/b/x", File), ("a/b", Dir), ("a/c", HardLink)]), Ok(()));
        let cases: &[(&[(&str, Kind)], &str)] = &[
            (&[("x", File), ("x", File)], "`x` as a file and then `x` as a file"),
            (&[("x", File), ("x/y", File)], "`x` as a file and then `x/y` as a file"),
            (&[("x", Symlink), ("x/y/z", Dir)], "`x` as a symlink and then `x/y/z` as a directory"),
            (&[("x", Dir), ("x", File)], "`x` as a directory and then `x` as a file"),
            (&[("x", File), ("x", Dir)], "`x` as a file and then `x` as a directory"),
            (&[("x/y", File), ("x", File)], "the archive has `x/y`, so `x` is a directory, and then `x` as a file"),
            (
                &[("x/y/z", File), ("x/y", HardLink)],
                "has `x/y/z`, so `x/y` is a directory, and then `x/y` as a hard link",
            ),
        ];
        for (entries, want) in cases {
            let e = claims(entries).unwrap_err();
            assert!(e.contains(want), "{entries:?}: {e}");
        }
    }

    #[test]
    fn manifest_url_keeps_query() {
        assert_eq!(manifest_url("https://h/x.tar.gz?sig=1"), "https://h/x.tar.gz.manifest.json?sig=1");
        assert_eq!(manifest_url("/tmp/x.tar"), "/tmp/x.tar.manifest.json");
    }
}
