//! The edits layer: a directory testers change live (an SMB share), applied as the topmost
//! layer over the pinned ones. What is pure lives here and is unit-tested: scanning the
//! directory (and refusing hostile entries), what changed against the pinned tree, when a burst
//! of writes is quiet enough to apply, and the status file the sidecar writes.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::paths;
use crate::state::LayerSummary;
pub use crate::summary::Refusal;
use crate::tree::Entry;

/// Name of the edits status file in the destination root.
pub const STATUS_FILE: &str = ".gamezone-edits.json";
/// Name of the base tree's index in the destination root: every entry of the pinned layers'
/// tree, so edits can be layered on it without hashing it again.
pub const BASE_INDEX: &str = ".gamezone-base.json";

/// What an entry of the edits directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EditKind {
    File { exec: bool },
    Dir,
    Symlink(String),
}

/// One entry of the edits directory as scanned (metadata only, contents are not read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EditEntry {
    pub path: String,
    pub kind: EditKind,
    pub size: u64,
    pub mtime_ns: i128,
    /// Identity of the file scanned: the copy must read this very inode.
    pub dev: u64,
    pub ino: u64,
}

/// The edits directory at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// `sha256:` over sorted `path size mtime-nanos mode` lines: any change shows up here.
    pub digest: String,
    pub(crate) entries: Vec<EditEntry>,
    /// The first hostile entry found (sorted by path); the snapshot is not applied then.
    pub refusal: Option<Refusal>,
}

/// Scans the edits directory. A missing directory is no edits (the volume may be empty).
/// Hostile entries (links out of the tree, devices, fifos, sockets, names that are not UTF-8)
/// do not fail the scan: the first one is reported in [`Snapshot::refusal`].
pub fn scan(dir: &Path) -> io::Result<Snapshot> {
    let mut lines = Vec::new();
    let mut entries = Vec::new();
    let mut refusals = Vec::new();
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => walk(dir, "", &mut lines, &mut entries, &mut refusals)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("edits path {} is not a directory; mount the edits volume there", dir.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    lines.sort();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
    }
    entries.sort_by(|a: &EditEntry, b| a.path.cmp(&b.path));
    refusals.sort_by(|a: &Refusal, b| a.path.cmp(&b.path));
    Ok(Snapshot {
        digest: format!("sha256:{}", hex::encode(h.finalize())),
        entries,
        refusal: refusals.into_iter().next(),
    })
}

fn walk(
    dir: &Path,
    rel: &str,
    lines: &mut Vec<String>,
    out: &mut Vec<EditEntry>,
    refused: &mut Vec<Refusal>,
) -> io::Result<()> {
    for de in fs::read_dir(dir)? {
        let de = de?;
        let m = match fs::symlink_metadata(de.path()) {
            Ok(m) => m,
            // Deleted between listing and stat: the next scan sees the directory as it is then.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let nanos = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
        let name = match de.file_name().into_string() {
            Ok(n) => n,
            Err(n) => {
                let shown = paths::join2(rel, &n.to_string_lossy());
                lines.push(format!("{shown} {} {nanos} {:o}\n", m.len(), m.mode()));
                refused.push(Refusal { path: shown, reason: "the name is not UTF-8; rename the file".into() });
                continue;
            }
        };
        let r = paths::join2(rel, &name);
        lines.push(format!("{r} {} {nanos} {:o}\n", m.len(), m.mode()));
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            EditKind::Dir
        } else if ft.is_file() {
            EditKind::File { exec: m.permissions().mode() & 0o111 != 0 }
        } else if ft.is_symlink() {
            let t = fs::read_link(de.path())?;
            match t.to_str() {
                Some(t) => match paths::check_link_target(&r, t) {
                    Ok(()) => EditKind::Symlink(t.to_owned()),
                    Err(m) => {
                        refused
                            .push(Refusal { path: r, reason: format!("{m}; only links inside the tree are applied") });
                        continue;
                    }
                },
                None => {
                    refused.push(Refusal { path: r, reason: "the link target is not UTF-8".into() });
                    continue;
                }
            }
        } else {
            refused.push(Refusal {
                path: r,
                reason: "a device, fifo or socket; only files, directories and symlinks are applied".into(),
            });
            continue;
        };
        let is_dir = kind == EditKind::Dir;
        out.push(EditEntry { path: r.clone(), kind, size: m.len(), mtime_ns: nanos, dev: m.dev(), ino: m.ino() });
        if is_dir {
            walk(&de.path(), &r, lines, out, refused)?;
        }
    }
    Ok(())
}

/// How a path of the tree differs from the pinned tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeKind {
    /// Not in the pinned tree.
    Added,
    /// In the pinned tree with other content, mode or kind.
    Modified,
    /// In the pinned tree, gone because an edit replaced a directory or file above it.
    Removed,
}

/// One path that differs from the pinned tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    /// Path inside the tree.
    pub path: String,
    /// Added, modified or removed.
    pub change: ChangeKind,
    /// `100644`, `100755`, `120000` (symlink) or `040000` (directory) of the edited entry (the
    /// pinned one's for a removed entry).
    pub mode: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the content (of the target for a symlink), `-` for a directory.
    pub sha256: String,
}

/// Every path whose entry differs between the pinned tree and the edited tree, sorted.
pub(crate) fn diff(base: &BTreeMap<String, Entry>, edited: &BTreeMap<String, Entry>) -> Vec<Change> {
    let change = |path: &str, change, e: &Entry| Change {
        path: path.to_owned(),
        change,
        mode: e.mode().to_owned(),
        size: e.size(),
        sha256: e.sha_hex(),
    };
    let mut out = Vec::new();
    for (p, e) in edited {
        match base.get(p) {
            None => out.push(change(p, ChangeKind::Added, e)),
            Some(b) if b != e => out.push(change(p, ChangeKind::Modified, e)),
            Some(_) => {}
        }
    }
    for (p, b) in base {
        if !edited.contains_key(p) {
            out.push(change(p, ChangeKind::Removed, b));
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// What the debouncer wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Apply the snapshot just observed.
    Apply,
    /// Look again after this long.
    Wait(Duration),
    /// Nothing new: look again at the next poll or change.
    Idle,
}

/// Decides when the edits directory is quiet: its digest unchanged for `quiet` and no file
/// known to be open for writing. A tester saving a big file in pieces keeps changing the
/// digest (size, mtime), so the batch waits until the last piece is written.
#[derive(Clone, Debug)]
pub struct Debounce {
    quiet: Duration,
    seen: Option<(String, Instant)>,
    applied: Option<String>,
}

impl Debounce {
    /// A debouncer that wants `quiet` without changes.
    pub fn new(quiet: Duration) -> Self {
        Debounce { quiet, seen: None, applied: None }
    }

    /// Takes one observation: the snapshot's digest at `now` and how many files are open for
    /// writing (as far as inotify tells; 0 when unknown).
    pub fn observe(&mut self, now: Instant, digest: &str, writers: usize) -> Decision {
        let since = match &self.seen {
            Some((d, t)) if d == digest => *t,
            _ => {
                self.seen = Some((digest.to_owned(), now));
                now
            }
        };
        if self.applied.as_deref() == Some(digest) {
            return Decision::Idle;
        }
        let quiet_for = now.saturating_duration_since(since);
        if writers > 0 || quiet_for < self.quiet {
            return Decision::Wait(self.quiet.saturating_sub(quiet_for).max(Duration::from_millis(50)));
        }
        Decision::Apply
    }

    /// Records that the snapshot with `digest` is done with (applied, or refused: it is not
    /// retried until the directory changes again).
    pub fn done(&mut self, digest: &str) {
        self.applied = Some(digest.to_owned());
    }

    /// Forgets the quiet period (the directory changed while it was being applied).
    pub fn restart(&mut self) {
        self.seen = None;
    }
}

/// The base tree's index, written beside the state file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BaseIndex {
    /// Directory name of the base tree under `.trees/`.
    pub tree: String,
    /// Its tree digest.
    pub tree_digest: String,
    /// The layers it was built from.
    pub layers: Vec<LayerSummary>,
    /// Their pinned revisions.
    pub revisions: Vec<String>,
    /// `[path, mode, size, sha256]` of every entry.
    pub entries: Vec<(String, String, u64, String)>,
}

impl BaseIndex {
    pub fn new(
        tree: &str,
        digest: &str,
        layers: &[LayerSummary],
        revisions: &[String],
        entries: &BTreeMap<String, Entry>,
    ) -> Self {
        BaseIndex {
            tree: tree.to_owned(),
            tree_digest: digest.to_owned(),
            layers: layers.to_vec(),
            revisions: revisions.to_vec(),
            entries: entries.iter().map(|(p, e)| (p.clone(), e.mode().to_owned(), e.size(), e.sha_hex())).collect(),
        }
    }

    /// The base tree built for these layers and revisions, if its index reads back whole and
    /// the tree is still there: its directory name and entries.
    pub fn read(
        root: &Path,
        layers: &[LayerSummary],
        revisions: &[String],
    ) -> Option<(String, BTreeMap<String, Entry>)> {
        let idx: BaseIndex = serde_json::from_slice(&fs::read(root.join(BASE_INDEX)).ok()?).ok()?;
        if idx.layers != layers
            || idx.revisions != revisions
            || !root.join(gamezone_api::artifacts::TREES).join(&idx.tree).is_dir()
        {
            return None;
        }
        let entries: Option<BTreeMap<String, Entry>> =
            idx.entries.into_iter().map(|(p, m, s, h)| Some((p, Entry::from_parts(&m, s, &h)?))).collect();
        Some((idx.tree, entries?))
    }
}

/// The edits status the sidecar (and `apply` with edits) writes in the destination root, for
/// tools that show, save or reset the edits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditsStatus {
    /// The edits directory.
    pub edits_dir: String,
    /// `applied` when the latest edits are in `current`, `refused` when they were not applied
    /// (see `lastRefused`; `current` keeps the last good tree).
    pub state: String,
    /// Digest of the edits in `current` (empty when none are).
    pub edits_revision: String,
    /// The tree `current` points at, and its digest.
    pub tree: String,
    /// sha256 over the tree's sorted `path mode size sha256` lines.
    pub tree_digest: String,
    /// The tree of the pinned layers alone, and its digest.
    pub base_tree: String,
    /// Digest of the pinned layers' tree.
    pub base_digest: String,
    /// Paths of `current` that differ from the pinned tree.
    pub changes: Vec<Change>,
    /// When edits were last swapped in (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// Batches of edits swapped in since the status was first written.
    pub batches: u64,
    /// Batches refused since the status was first written.
    pub refused_batches: u64,
    /// The last edit refused, why, and when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refused: Option<RefusedEdit>,
    /// Bytes copied for the last tree (edited files; the rest is hard-linked).
    pub copied_bytes: u64,
    /// Files hard-linked from the pinned tree into the last tree.
    pub linked_files: u64,
}

/// An edit that was not applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RefusedEdit {
    /// Path inside the edits directory.
    pub path: String,
    /// Why, and what to do.
    pub reason: String,
    /// When (RFC 3339).
    pub at: String,
    /// Digest of the edits directory that was refused.
    pub edits_revision: String,
}

/// Reads the edits status in `root`, if any.
pub fn read_status(root: &Path) -> Option<EditsStatus> {
    serde_json::from_slice(&fs::read(root.join(STATUS_FILE)).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sha: u8, size: u64) -> Entry {
        Entry::from_parts("100644", size, &hex::encode([sha; 32])).unwrap()
    }

    #[test]
    fn diff_names_added_modified_and_removed_paths() {
        let dir = Entry::from_parts("040000", 0, "-").unwrap();
        let base: BTreeMap<String, Entry> = [
            ("a".to_owned(), file(1, 1)),
            ("d".to_owned(), dir.clone()),
            ("d/x".to_owned(), file(2, 2)),
            ("same".to_owned(), file(3, 3)),
        ]
        .into();
        // `d` became a file, `a` changed, `new` appeared, `same` was written with the same bytes.
        let edited: BTreeMap<String, Entry> = [
            ("a".to_owned(), file(9, 1)),
            ("d".to_owned(), file(4, 4)),
            ("new".to_owned(), file(5, 5)),
            ("same".to_owned(), file(3, 3)),
        ]
        .into();
        let got: Vec<_> = diff(&base, &edited).into_iter().map(|c| (c.path, c.change, c.mode)).collect();
        assert_eq!(
            got,
            [
                ("a".into(), ChangeKind::Modified, "100644".into()),
                ("d".into(), ChangeKind::Modified, "100644".into()),
                ("d/x".into(), ChangeKind::Removed, "100644".into()),
                ("new".into(), ChangeKind::Added, "100644".into()),
            ]
        );
        let c = &diff(&base, &edited)[3];
        assert_eq!((c.size, c.sha256.as_str()), (5, hex::encode([5u8; 32]).as_str()));
        assert!(diff(&base, &base).is_empty());
    }

    #[test]
    fn scan_refuses_hostile_entries_and_names_the_first() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::create_dir_all(d.join("cfg")).unwrap();
        fs::write(d.join("cfg/game.ini"), "x").unwrap();
        std::os::unix::fs::symlink("game.ini", d.join("cfg/ok-link")).unwrap();
        let s = scan(d).unwrap();
        assert_eq!(s.refusal, None);
        let kinds: Vec<_> = s.entries.iter().map(|e| (e.path.as_str(), e.kind.clone())).collect();
        assert_eq!(
            kinds,
            [
                ("cfg", EditKind::Dir),
                ("cfg/game.ini", EditKind::File { exec: false }),
                ("cfg/ok-link", EditKind::Symlink("game.ini".into()))
            ]
        );

        std::os::unix::fs::symlink("../../etc/passwd", d.join("cfg/evil")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", d.join("zabs")).unwrap();
        let r = scan(d).unwrap().refusal.unwrap();
        assert_eq!(r.path, "cfg/evil");
        assert!(r.reason.contains("points outside the tree"), "{}", r.reason);
        fs::remove_file(d.join("cfg/evil")).unwrap();
        let r = scan(d).unwrap().refusal.unwrap();
        assert_eq!(r.path, "zabs");
        assert!(r.reason.contains("absolute"), "{}", r.reason);
        fs::remove_file(d.join("zabs")).unwrap();

        let fifo = d.join("cfg/pipe");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let r = scan(d).unwrap().refusal.unwrap();
        assert_eq!(r.path, "cfg/pipe");
        assert!(r.reason.contains("fifo"), "{}", r.reason);
        fs::remove_file(&fifo).unwrap();

        use std::os::unix::ffi::OsStrExt;
        fs::write(d.join(std::ffi::OsStr::from_bytes(b"bad\xff")), "x").unwrap();
        let r = scan(d).unwrap().refusal.unwrap();
        assert!(r.reason.contains("UTF-8"), "{}", r.reason);
    }

    #[test]
    fn scan_digest_follows_every_change_and_a_missing_dir_is_empty() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("edits");
        let empty = scan(&d).unwrap();
        assert!(empty.entries.is_empty() && empty.refusal.is_none());
        fs::create_dir(&d).unwrap();
        assert_eq!(scan(&d).unwrap().digest, empty.digest, "an empty directory is no edits either");
        fs::write(d.join("a"), "1").unwrap();
        let one = scan(&d).unwrap().digest;
        assert_ne!(one, empty.digest);
        fs::write(d.join("a"), "12").unwrap();
        let two = scan(&d).unwrap().digest;
        assert_ne!(two, one, "a file growing changes the digest");
        fs::set_permissions(d.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(scan(&d).unwrap().digest, two, "a mode change too");
        fs::write(t.path().join("f"), "").unwrap();
        assert!(scan(&t.path().join("f")).is_err(), "a file where the directory should be");
    }

    #[test]
    fn debounce_waits_for_quiet_and_for_writers() {
        let q = Duration::from_secs(2);
        let mut d = Debounce::new(q);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(d.observe(at(0), "a", 0), Decision::Wait(q));
        // A burst: each change restarts the quiet period.
        assert_eq!(d.observe(at(1500), "b", 0), Decision::Wait(q));
        assert_eq!(d.observe(at(3000), "b", 0), Decision::Wait(Duration::from_millis(500)));
        assert_eq!(d.observe(at(3500), "b", 1), Decision::Wait(Duration::from_millis(50)), "a writer holds it");
        assert_eq!(d.observe(at(3600), "b", 0), Decision::Apply);
        d.done("b");
        assert_eq!(d.observe(at(9000), "b", 0), Decision::Idle, "applied once");
        // Back to the applied content: nothing to do either.
        assert_eq!(d.observe(at(9100), "c", 0), Decision::Wait(q));
        assert_eq!(d.observe(at(9200), "b", 0), Decision::Idle);
        // Changed while applying: the quiet period starts over.
        assert_eq!(d.observe(at(10000), "c", 0), Decision::Wait(q));
        assert_eq!(d.observe(at(12000), "c", 0), Decision::Apply);
        d.restart();
        assert_eq!(d.observe(at(12100), "c", 0), Decision::Wait(q));
        assert_eq!(d.observe(at(14100), "c", 0), Decision::Apply);
    }
}
