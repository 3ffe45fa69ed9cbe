//! Writing a tree in the staging directory: later entries replace earlier ones, directories
//! merge, nothing is ever written through a symlink, and caps stop archive bombs.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use crate::Result;
use crate::error::{Ctx, Error};
use crate::paths;
use crate::progress::Progress;

/// Caps on what a run may write, against archive bombs and runaway sources.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes written in total (all layers, including content later layers replace).
    pub max_bytes: u64,
    /// Files and symlinks written in total.
    pub max_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 64 << 30, max_files: 2_000_000 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    File { exec: bool },
    Dir,
    Symlink,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    kind: Kind,
    size: u64,
    sha256: [u8; 32],
}

impl Entry {
    fn line(&self, path: &str) -> String {
        format!("{path} {} {} {}\n", self.mode(), self.size, self.sha_hex())
    }

    /// The entry's line in the tree's shape: its digest line without a file's content hash (a
    /// symlink keeps its target's, which reading the link gives).
    fn shape_line(&self, path: &str) -> String {
        match self.kind {
            Kind::File { .. } => format!("{path} {} {}\n", self.mode(), self.size),
            _ => self.line(path),
        }
    }

    /// The git-style mode of the digest line: `100644`, `100755`, `120000` or `040000`.
    pub fn mode(&self) -> &'static str {
        match self.kind {
            Kind::File { exec: false } => "100644",
            Kind::File { exec: true } => "100755",
            Kind::Symlink => "120000",
            Kind::Dir => "040000",
        }
    }

    /// The content's sha256 in hex (of the target for a symlink), `-` for a directory.
    pub fn sha_hex(&self) -> String {
        if self.kind == Kind::Dir { "-".to_owned() } else { hex::encode(self.sha256) }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// A file (executable or not), a directory or a symlink.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// A regular file of `size` bytes whose content hashes to `sha256`.
    pub(crate) fn file(exec: bool, size: u64, sha256: [u8; 32]) -> Entry {
        Entry { kind: Kind::File { exec }, size, sha256 }
    }

    /// A directory.
    pub(crate) fn dir() -> Entry {
        Entry { kind: Kind::Dir, size: 0, sha256: [0; 32] }
    }

    /// A symlink to `target` (its size and hash are the target's).
    pub(crate) fn symlink(target: &str) -> Entry {
        Entry { kind: Kind::Symlink, size: target.len() as u64, sha256: Sha256::digest(target.as_bytes()).into() }
    }

    /// Rebuilds an entry from the parts of its digest line (the base index stores them).
    pub fn from_parts(mode: &str, size: u64, sha: &str) -> Option<Entry> {
        let kind = match mode {
            "100644" => Kind::File { exec: false },
            "100755" => Kind::File { exec: true },
            "120000" => Kind::Symlink,
            "040000" => return Some(Entry::dir()),
            _ => return None,
        };
        let sha256 = hex::decode(sha).ok()?.try_into().ok()?;
        Some(Entry { kind, size, sha256 })
    }
}

/// Writes entries below `root`, tracking every entry for the tree digest.
pub(crate) struct TreeWriter {
    root: PathBuf,
    limits: Limits,
    progress: Arc<dyn Progress>,
    entries: Mutex<BTreeMap<String, Entry>>,
    written_bytes: AtomicU64,
    written_files: AtomicU64,
}

/// What the finished tree holds.
#[derive(Clone, Debug)]
pub(crate) struct TreeStats {
    pub digest: String,
    pub files: u64,
    pub bytes: u64,
}

impl TreeWriter {
    pub fn new(root: PathBuf, limits: Limits, progress: Arc<dyn Progress>) -> Self {
        TreeWriter {
            root,
            limits,
            progress,
            entries: Mutex::new(BTreeMap::new()),
            written_bytes: AtomicU64::new(0),
            written_files: AtomicU64::new(0),
        }
    }

    /// Files and bytes written so far (including ones later replaced).
    pub fn written(&self) -> (u64, u64) {
        (self.written_files.load(Ordering::Relaxed), self.written_bytes.load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn abs(&self, rel: &str) -> PathBuf {
        if rel.is_empty() { self.root.clone() } else { self.root.join(rel) }
    }

    fn io_err(&self, ctx: &Ctx, what: &str, rel: &str, e: io::Error) -> Error {
        ctx.source(format!("cannot {what} `{rel}` in the staging tree {}: {e}", self.root.display()))
    }

    /// Makes `rel` and its parents directories; a file or symlink in the way is replaced.
    pub fn ensure_dir(&self, ctx: &Ctx, rel: &str) -> Result<()> {
        let mut entries = self.lock();
        self.ensure_dir_locked(ctx, rel, &mut entries)
    }

    fn ensure_dir_locked(&self, ctx: &Ctx, rel: &str, entries: &mut BTreeMap<String, Entry>) -> Result<()> {
        if rel.is_empty() {
            return Ok(());
        }
        let mut end = 0;
        loop {
            end = match rel[end..].find('/') {
                Some(i) => end + i,
                None => rel.len(),
            };
            let prefix = &rel[..end];
            let existing = entries.get(prefix).map(|e| e.kind);
            if existing != Some(Kind::Dir) {
                let p = self.abs(prefix);
                if existing.is_some() {
                    fs::remove_file(&p).map_err(|e| self.io_err(ctx, "replace", prefix, e))?;
                }
                fs::create_dir(&p).map_err(|e| self.io_err(ctx, "create directory", prefix, e))?;
                entries.insert(prefix.to_owned(), Entry::dir());
            }
            if end == rel.len() {
                return Ok(());
            }
            end += 1;
        }
    }

    /// Clears the way for a new file or symlink at `rel`: parents become directories, whatever
    /// is at `rel` (file, link or a whole directory) goes. Returns the absolute path.
    pub fn prepare(&self, ctx: &Ctx, rel: &str) -> Result<PathBuf> {
        if rel.is_empty() {
            return Err(ctx.invalid("a file cannot replace the tree root; set the layer's path to a file name"));
        }
        let mut entries = self.lock();
        if let Some((parent, _)) = rel.rsplit_once('/') {
            self.ensure_dir_locked(ctx, parent, &mut entries)?;
        }
        let p = self.abs(rel);
        match entries.get(rel).map(|e| e.kind) {
            Some(Kind::Dir) => {
                fs::remove_dir_all(&p).map_err(|e| self.io_err(ctx, "replace directory", rel, e))?;
                remove_below(&mut entries, rel);
                entries.remove(rel);
            }
            Some(_) => {
                fs::remove_file(&p).map_err(|e| self.io_err(ctx, "replace", rel, e))?;
                entries.remove(rel);
            }
            None => {}
        }
        Ok(p)
    }

    /// Counts bytes against the cap.
    pub fn add_bytes(&self, ctx: &Ctx, n: u64) -> Result<()> {
        let total = self.written_bytes.fetch_add(n, Ordering::Relaxed) + n;
        if total > self.limits.max_bytes {
            return Err(ctx.limit(format!(
                "the tree would exceed the size cap of {} bytes (possible archive bomb); raise --max-bytes if the content is expected",
                self.limits.max_bytes
            )));
        }
        self.progress.advanced(ctx.layer, 0, n);
        Ok(())
    }

    fn add_file(&self, ctx: &Ctx) -> Result<()> {
        let total = self.written_files.fetch_add(1, Ordering::Relaxed) + 1;
        if total > self.limits.max_files {
            return Err(ctx.limit(format!(
                "the tree would exceed the cap of {} files (possible archive bomb); raise --max-files if the content is expected",
                self.limits.max_files
            )));
        }
        self.progress.advanced(ctx.layer, 1, 0);
        Ok(())
    }

    /// Fails early when a source announces more than the caps allow.
    pub fn check_budget(&self, ctx: &Ctx, files: u64, bytes: u64) -> Result<()> {
        let (f, b) = self.written();
        if f + files > self.limits.max_files {
            return Err(ctx.limit(format!(
                "{files} files would exceed the cap of {} files; raise --max-files if the content is expected",
                self.limits.max_files
            )));
        }
        if b + bytes > self.limits.max_bytes {
            return Err(ctx.limit(format!(
                "{bytes} bytes would exceed the size cap of {} bytes; raise --max-bytes if the content is expected",
                self.limits.max_bytes
            )));
        }
        Ok(())
    }

    /// Records a file written at a path returned by [`prepare`](Self::prepare).
    pub fn record_file(&self, ctx: &Ctx, rel: &str, exec: bool, size: u64, sha256: [u8; 32]) -> Result<()> {
        self.add_file(ctx)?;
        self.lock().insert(rel.to_owned(), Entry { kind: Kind::File { exec }, size, sha256 });
        Ok(())
    }

    /// Writes a file from `r`, replacing whatever is at `rel`. Returns size and sha256.
    pub fn write_reader(&self, ctx: &Ctx, rel: &str, exec: bool, r: &mut dyn Read) -> Result<(u64, [u8; 32])> {
        let p = self.prepare(ctx, rel)?;
        let mut f = create_file(&p, exec).map_err(|e| self.io_err(ctx, "create", rel, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(ctx, rel, e)),
            };
            self.add_bytes(ctx, n as u64)?;
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(|e| self.io_err(ctx, "write", rel, e))?;
            size += n as u64;
        }
        let sha: [u8; 32] = hasher.finalize().into();
        self.record_file(ctx, rel, exec, size, sha)?;
        Ok((size, sha))
    }

    /// Creates a symlink after checking its target stays inside the tree.
    pub fn symlink(&self, ctx: &Ctx, rel: &str, target: &str) -> Result<()> {
        paths::check_link_target(rel, target).map_err(|m| ctx.hostile(m))?;
        let p = self.prepare(ctx, rel)?;
        std::os::unix::fs::symlink(target, &p).map_err(|e| self.io_err(ctx, "create symlink", rel, e))?;
        self.add_file(ctx)?;
        let sha: [u8; 32] = Sha256::digest(target.as_bytes()).into();
        self.lock().insert(rel.to_owned(), Entry { kind: Kind::Symlink, size: target.len() as u64, sha256: sha });
        Ok(())
    }

    /// Copies a file already written in this tree (tar hard links).
    pub fn copy_file(&self, ctx: &Ctx, rel: &str, from: &str) -> Result<()> {
        let Some(entry) = self.lock().get(from).cloned().filter(|e| matches!(e.kind, Kind::File { .. })) else {
            return Err(
                ctx.hostile(format!("hard link `{rel}` -> `{from}` does not point to a file written before it"))
            );
        };
        let p = self.prepare(ctx, rel)?;
        fs::copy(self.abs(from), &p).map_err(|e| self.io_err(ctx, "copy", rel, e))?;
        self.add_bytes(ctx, entry.size)?;
        self.add_file(ctx)?;
        self.lock().insert(rel.to_owned(), entry);
        Ok(())
    }

    /// Every entry of the tree as it stands, by path.
    pub fn entries(&self) -> BTreeMap<String, Entry> {
        self.lock().clone()
    }

    /// Fills an empty staging tree from a built tree: directories are created, files hard-linked
    /// (they share the base's inodes, so later entries must replace them, never write into them:
    /// [`prepare`](Self::prepare) unlinks first), symlinks recreated. Linked files cost no bytes
    /// and do not count against the caps. Returns the number of files linked.
    pub fn link_from(&self, ctx: &Ctx, base: &Path, entries: &BTreeMap<String, Entry>) -> Result<u64> {
        let mut mine = self.lock();
        let mut linked = 0;
        // A BTreeMap iterates parents before their children.
        for (rel, e) in entries {
            let (from, to) = (base.join(rel), self.abs(rel));
            match e.kind {
                Kind::Dir => fs::create_dir(&to).map_err(|err| self.io_err(ctx, "create directory", rel, err))?,
                Kind::Symlink => {
                    let t = fs::read_link(&from).map_err(|err| ctx.io(format!("read link {}", from.display()), err))?;
                    std::os::unix::fs::symlink(t, &to).map_err(|err| self.io_err(ctx, "create symlink", rel, err))?;
                }
                Kind::File { .. } => {
                    if let Err(err) = fs::hard_link(&from, &to) {
                        // Another file system or the link limit: a copy is a new inode too.
                        tracing::debug!(path = rel, error = %err, "hard link failed; copying");
                        fs::copy(&from, &to).map_err(|err| self.io_err(ctx, "copy", rel, err))?;
                    }
                    linked += 1;
                }
            }
            mine.insert(rel.clone(), e.clone());
        }
        Ok(linked)
    }

    /// The digest and totals of the tree as it stands.
    pub fn stats(&self) -> TreeStats {
        let entries = self.lock();
        TreeStats { digest: digest_entries(&entries), ..totals(&entries) }
    }
}

pub(crate) fn create_file(p: &Path, exec: bool) -> io::Result<fs::File> {
    let mode = if exec { 0o755 } else { 0o644 };
    let f = fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(p)?;
    // The umask may have removed bits; the tree's modes must not depend on it.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(f)
}

fn read_error(ctx: &Ctx, rel: &str, e: io::Error) -> Error {
    if crate::retry::io_is_transient(&e) {
        ctx.transient(format!("reading `{rel}`: {e}"))
    } else {
        ctx.source(format!("reading `{rel}`: {e}"))
    }
}

/// The tree digest of a set of entries.
pub(crate) fn digest_entries(entries: &BTreeMap<String, Entry>) -> String {
    sha256_of_lines(entries, Entry::line)
}

/// The tree shape of a set of entries: sha256 over sorted `path mode size` lines (a symlink's
/// with its target's hash), what a tree's metadata alone gives. Equal shapes with unequal
/// digests need a file rewritten at its own size; a runtime that mounts a tree empty, or
/// another version of it, shows in the shape.
pub(crate) fn shape_entries(entries: &BTreeMap<String, Entry>) -> String {
    sha256_of_lines(entries, Entry::shape_line)
}

fn sha256_of_lines(entries: &BTreeMap<String, Entry>, line: fn(&Entry, &str) -> String) -> String {
    let mut h = Sha256::new();
    for (path, e) in entries {
        h.update(line(e, path).as_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Removes every entry below the directory `dir` (not `dir` itself).
fn remove_below(entries: &mut BTreeMap<String, Entry>, dir: &str) {
    let below = format!("{dir}/");
    let doomed: Vec<String> =
        entries.range(below.clone()..).take_while(|(k, _)| k.starts_with(&below)).map(|(k, _)| k.clone()).collect();
    for k in doomed {
        entries.remove(&k);
    }
}

/// Lays `upper`'s entries over `tree` as an overlay mount of image layers (and [`TreeWriter`])
/// merges them: a directory over a directory merges, anything else replaces what was at its
/// path, a whole directory included.
pub(crate) fn overlay(tree: &mut BTreeMap<String, Entry>, upper: BTreeMap<String, Entry>) {
    for (path, e) in upper {
        match tree.get(&path).map(|old| old.kind) {
            Some(Kind::Dir) if e.kind == Kind::Dir => continue,
            Some(Kind::Dir) => remove_below(tree, &path),
            _ => {}
        }
        tree.insert(path, e);
    }
}

/// The digest of a tree on disk, computed the same way as for a tree being written:
/// sha256 over sorted `path mode size sha256` lines.
pub fn digest_dir(root: &Path) -> io::Result<String> {
    Ok(stats_dir(root)?.digest)
}

/// The shape of a tree on disk ([`shape_entries`]), from metadata alone.
pub fn shape_of_dir(root: &Path) -> io::Result<String> {
    Ok(shape_dir(root)?.digest)
}

/// The digest and totals of a tree on disk (every file read).
pub(crate) fn stats_dir(root: &Path) -> io::Result<TreeStats> {
    let entries = read_dir_entries(root, Reading::Content)?;
    Ok(TreeStats { digest: digest_entries(&entries), ..totals(&entries) })
}

/// The shape ([`shape_entries`]) and totals of a tree on disk: one `lstat` per entry (and a
/// `readlink` per symlink), no file read.
pub(crate) fn shape_dir(root: &Path) -> io::Result<TreeStats> {
    let entries = read_dir_entries(root, Reading::Metadata)?;
    Ok(TreeStats { digest: shape_entries(&entries), ..totals(&entries) })
}

fn totals(entries: &BTreeMap<String, Entry>) -> TreeStats {
    let files = entries.values().filter(|e| matches!(e.kind, Kind::File { .. }));
    let (files, bytes) = files.fold((0, 0), |(n, b), e| (n + 1, b + e.size));
    TreeStats { digest: String::new(), files, bytes }
}

/// What a walk of a tree on disk reads of each file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Its content, hashed.
    Content,
    /// Its metadata only (the content hash left zero).
    Metadata,
}

fn read_dir_entries(root: &Path, read: Reading) -> io::Result<BTreeMap<String, Entry>> {
    let mut entries = BTreeMap::new();
    walk(root, "", read, &mut entries)?;
    Ok(entries)
}

fn walk(dir: &Path, rel: &str, read: Reading, out: &mut BTreeMap<String, Entry>) -> io::Result<()> {
    for de in fs::read_dir(dir)? {
        let de = de?;
        let name = de.file_name().into_string().map_err(|n| io::Error::other(format!("non-UTF-8 name {n:?}")))?;
        let r = paths::join2(rel, &name);
        let m = fs::symlink_metadata(de.path())?;
        let ft = m.file_type();
        if ft.is_dir() {
            out.insert(r.clone(), Entry::dir());
            walk(&de.path(), &r, read, out)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(de.path())?;
            out.insert(r, Entry::symlink(&t.to_string_lossy()));
        } else {
            let mut sha256 = [0; 32];
            if read == Reading::Content {
                let mut h = Sha256::new();
                io::copy(&mut fs::File::open(de.path())?, &mut HashWriter(&mut h))?;
                sha256 = h.finalize().into();
            }
            let exec = m.permissions().mode() & 0o111 != 0;
            out.insert(r, Entry::file(exec, m.len(), sha256));
        }
    }
    Ok(())
}

struct HashWriter<'a>(&'a mut Sha256);
impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;

    fn writer(dir: &Path) -> TreeWriter {
        TreeWriter::new(dir.to_owned(), Limits::default(), Arc::new(NoProgress))
    }

    #[test]
    fn later_entries_replace_and_dirs_merge() {
        let t = tempfile::tempdir().unwrap();
        let w = writer(t.path());
        let ctx = Ctx::new(0, "test");
        w.write_reader(&ctx, "a/b", false, &mut &b"one"[..]).unwrap();
        w.write_reader(&ctx, "a/c", true, &mut &b"two"[..]).unwrap();
        // a file replaces a directory, then a directory replaces the file
        w.write_reader(&ctx, "a", false, &mut &b"file"[..]).unwrap();
        assert_eq!(fs::read(t.path().join("a")).unwrap(), b"file");
        w.write_reader(&ctx, "a/d", false, &mut &b"x"[..]).unwrap();
        assert!(t.path().join("a").is_dir());
        assert!(!t.path().join("a/b").exists());
        w.symlink(&ctx, "a/l", "d").unwrap();
        assert_eq!(w.stats().digest, digest_dir(t.path()).unwrap());
        assert_eq!(w.stats().files, 1);
    }

    #[test]
    fn a_tree_shape_is_its_metadata_read_without_its_files() {
        let t = tempfile::tempdir().unwrap();
        let w = writer(t.path());
        let ctx = Ctx::new(0, "test");
        w.write_reader(&ctx, "maps/a.bin", false, &mut &b"map one"[..]).unwrap();
        w.write_reader(&ctx, "bin/run", true, &mut &b"#!"[..]).unwrap();
        w.symlink(&ctx, "maps/latest", "a.bin").unwrap();
        let shape = shape_dir(t.path()).unwrap();
        assert_eq!(shape.digest, shape_entries(&w.entries()), "the writer's entries and the disk agree");
        assert_eq!((shape.files, shape.bytes), (2, 9));
        assert_ne!(shape.digest, digest_dir(t.path()).unwrap(), "a shape is not a digest");

        // Content rewritten at its own size keeps the shape (the digest moves); anything else
        // a wrong mount shows moves it: a size, a mode, a symlink's target, a missing file.
        fs::write(t.path().join("maps/a.bin"), "map two").unwrap();
        assert_eq!(shape_dir(t.path()).unwrap().digest, shape.digest);
        let moves = |change: &dyn Fn(&Path)| {
            let d = tempfile::tempdir().unwrap();
            fs::create_dir_all(d.path().join("maps")).unwrap();
            fs::create_dir_all(d.path().join("bin")).unwrap();
            fs::write(d.path().join("maps/a.bin"), "map one").unwrap();
            fs::write(d.path().join("bin/run"), "#!").unwrap();
            fs::set_permissions(d.path().join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
            std::os::unix::fs::symlink("a.bin", d.path().join("maps/latest")).unwrap();
            assert_eq!(shape_dir(d.path()).unwrap().digest, shape.digest, "the same tree elsewhere");
            change(d.path());
            shape_dir(d.path()).unwrap().digest != shape.digest
        };
        assert!(moves(&|d| fs::write(d.join("maps/a.bin"), "map one!").unwrap()));
        assert!(moves(&|d| fs::set_permissions(d.join("bin/run"), fs::Permissions::from_mode(0o644)).unwrap()));
        assert!(moves(&|d| {
            fs::remove_file(d.join("maps/latest")).unwrap();
            std::os::unix::fs::symlink("b.bin", d.join("maps/latest")).unwrap();
        }));
        assert!(moves(&|d| fs::remove_file(d.join("bin/run")).unwrap()));
        let empty = tempfile::tempdir().unwrap();
        assert_ne!(shape_dir(empty.path()).unwrap().digest, shape.digest, "an empty mount");
    }

    #[test]
    fn entries_laid_over_others_merge_as_the_writer_merges_them() {
        let ctx = Ctx::new(0, "test");
        let (one, two, both) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let lower = |w: &TreeWriter| {
            w.write_reader(&ctx, "a/b", false, &mut &b"one"[..]).unwrap();
            w.write_reader(&ctx, "c", false, &mut &b"file"[..]).unwrap();
            w.write_reader(&ctx, "d/e", true, &mut &b"kept"[..]).unwrap();
        };
        let upper = |w: &TreeWriter| {
            w.write_reader(&ctx, "a", false, &mut &b"a file now"[..]).unwrap();
            w.write_reader(&ctx, "c/x", false, &mut &b"a dir now"[..]).unwrap();
            w.write_reader(&ctx, "d/f", false, &mut &b"merged"[..]).unwrap();
        };
        let (w1, w2, w) = (writer(one.path()), writer(two.path()), writer(both.path()));
        lower(&w1);
        upper(&w2);
        lower(&w);
        upper(&w);
        let mut merged = w1.entries();
        overlay(&mut merged, w2.entries());
        assert_eq!(merged, w.entries());
        assert_eq!(digest_entries(&merged), digest_dir(both.path()).unwrap());
    }

    #[test]
    fn caps_stop_bombs() {
        let t = tempfile::tempdir().unwrap();
        let w = TreeWriter::new(t.path().to_owned(), Limits { max_bytes: 10, max_files: 2 }, Arc::new(NoProgress));
        let ctx = Ctx::new(0, "test");
        assert!(matches!(w.write_reader(&ctx, "big", false, &mut &[0u8; 11][..]), Err(Error::Limit { .. })));
        let t = tempfile::tempdir().unwrap();
        let w = TreeWriter::new(t.path().to_owned(), Limits { max_bytes: 10, max_files: 2 }, Arc::new(NoProgress));
        w.write_reader(&ctx, "1", false, &mut &b""[..]).unwrap();
        w.write_reader(&ctx, "2", false, &mut &b""[..]).unwrap();
        assert!(matches!(w.write_reader(&ctx, "3", false, &mut &b""[..]), Err(Error::Limit { .. })));
    }

    #[test]
    fn escaping_links_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let w = writer(t.path());
        let ctx = Ctx::new(0, "test");
        assert!(matches!(w.symlink(&ctx, "a/l", "../../x"), Err(Error::Hostile { .. })));
        assert!(matches!(w.copy_file(&ctx, "h", "missing"), Err(Error::Hostile { .. })));
    }
}
