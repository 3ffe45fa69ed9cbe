//! `gamezone edits save`: the edits as one git commit whose tree is exactly the edits, on a
//! branch, so a tester's fix becomes a layer the team reviews and pins. Built with the `git`
//! command, so git's own credentials (credential helpers, ssh keys) apply.

use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

/// Unpacks `tar` into a fresh repository and pushes a commit of exactly its files to `branch`
/// of `url`, on top of the branch when it exists; returns the commit id.
pub fn save(tar: &[u8], url: &str, branch: &str, message: &str, work: &Path) -> anyhow::Result<String> {
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree)?;
    // The tar comes from our own server, but is unpacked as hostile input all the same.
    let mut archive = tar::Archive::new(tar);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        anyhow::ensure!(
            kind.is_file() || kind.is_dir(),
            "the edits tar holds a {kind:?}; only files and folders are saved"
        );
        anyhow::ensure!(entry.unpack_in(&tree)?, "the edits tar names a path outside the tree: {:?}", entry.path()?);
    }
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(&tree)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .output()
            .context("run git (install git to save edits)")?;
        anyhow::ensure!(
            out.status.success(),
            "git {}: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    git(&["init", "-q"])?;
    git(&["add", "-A"])?;
    let tree_id = git(&["write-tree"])?;
    let parent = git(&["fetch", "-q", "--depth", "1", url, &format!("refs/heads/{branch}")])
        .ok()
        .and_then(|_| git(&["rev-parse", "FETCH_HEAD"]).ok());
    let ident = ["-c", "user.name=gamezone edits", "-c", "user.email=edits@gamezone.dev"];
    let mut args: Vec<&str> = ident.to_vec();
    args.extend(["commit-tree", &tree_id, "-m", message]);
    if let Some(p) = &parent {
        args.extend(["-p", p]);
    }
    let commit = git(&args)?;
    git(&["push", "-q", url, &format!("{commit}:refs/heads/{branch}")])
        .with_context(|| format!("push to {url} branch {branch} (git's own credentials are used)"))?;
    Ok(commit)
}
