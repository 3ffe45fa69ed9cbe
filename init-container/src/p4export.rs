//! The p4-export format (`<archive>` + `<archive>.manifest.json`) and a generator that builds one
//! from a directory — used by tests, the benchmark, and `gamezone-init make-p4-export`.
//! `scripts/p4-export.sh` produces the same format from a Perforce workspace.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `<archive>.manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The changelist the export was taken at.
    pub changelist: u64,
    /// sha256 (hex) of the archive file as stored.
    pub archive_sha256: String,
    /// Every regular file in the archive.
    pub files: Vec<ManifestFile>,
}

/// One file of an export.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFile {
    /// Depot path, e.g. `//depot/game/config/a.ini`.
    pub depot_path: String,
    /// Depot revision of the file.
    pub rev: u64,
    /// Path inside the archive.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 (hex) of the content.
    pub sha256: String,
}

/// Archive compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain `.tar`.
    None,
    /// `.tar.gz`.
    Gzip,
    /// `.tar.zst`.
    Zstd,
}

impl Compression {
    /// Picks the compression from an archive name.
    pub fn from_name(name: &str) -> Compression {
        if name.ends_with(".gz") || name.ends_with(".tgz") {
            Compression::Gzip
        } else if name.ends_with(".zst") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Writes `out` (tar of `src`'s files, directories and symlinks) and `out.manifest.json`.
/// Depot paths are `<depot_root>/<path>`, all at revision `rev`.
pub fn write_export(src: &Path, out: &Path, changelist: u64, depot_root: &str, rev: u64) -> io::Result<Manifest> {
    let compression = Compression::from_name(&out.to_string_lossy());
    let mut files = Vec::new();
    let tar_path = out.with_extension("tar-tmp");
    {
        let mut b = tar::Builder::new(io::BufWriter::new(fs::File::create(&tar_path)?));
        b.follow_symlinks(false);
        add_dir(&mut b, src, "", depot_root, rev, &mut files)?;
        b.into_inner()?.flush()?;
    }
    match compression {
        Compression::None => fs::rename(&tar_path, out)?,
        Compression::Gzip => {
            let mut enc =
                flate2::write::GzEncoder::new(io::BufWriter::new(fs::File::create(out)?), flate2::Compression::fast());
            io::copy(&mut fs::File::open(&tar_path)?, &mut enc)?;
            enc.finish()?.flush()?;
            fs::remove_file(&tar_path)?;
        }
        Compression::Zstd => {
            let mut w = io::BufWriter::new(fs::File::create(out)?);
            ruzstd::encoding::compress(
                io::BufReader::new(fs::File::open(&tar_path)?),
                &mut w,
                ruzstd::encoding::CompressionLevel::Fastest,
            );
            w.flush()?;
            fs::remove_file(&tar_path)?;
        }
    }
    let manifest = Manifest { changelist, archive_sha256: sha256_file(out)?, files };
    fs::write(manifest_path(out), serde_json::to_vec_pretty(&manifest)?)?;
    Ok(manifest)
}

/// `<archive>.manifest.json`.
pub fn manifest_path(archive: &Path) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}.manifest.json", archive.display()))
}

/// sha256 (hex) of a file.
pub fn sha256_file(p: &Path) -> io::Result<String> {
    let mut f = fs::File::open(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn add_dir<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &str,
    depot_root: &str,
    rev: u64,
    files: &mut Vec<ManifestFile>,
) -> io::Result<()> {
    let mut items: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    items.sort_by_key(|d| d.file_name());
    for de in items {
        let name = de.file_name().to_string_lossy().into_owned();
        let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let m = fs::symlink_metadata(de.path())?;
        if m.is_dir() {
            b.append_dir(&r, de.path())?;
            add_dir(b, &de.path(), &r, depot_root, rev, files)?;
        } else if m.file_type().is_symlink() {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, &r, fs::read_link(de.path())?)?;
        } else if m.is_file() {
            let sha = sha256_file(&de.path())?;
            let mut h = tar::Header::new_gnu();
            h.set_size(m.len());
            h.set_mode(if m.permissions().mode() & 0o111 != 0 { 0o755 } else { 0o644 });
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, &r, fs::File::open(de.path())?)?;
            files.push(ManifestFile {
                depot_path: format!("{}/{r}", depot_root.trim_end_matches('/')),
                rev,
                path: r,
                size: m.len(),
                sha256: sha,
            });
        }
    }
    Ok(())
}
