//! The artifacts tree's digest, shown to the game: when the pod mounts the artifacts volume
//! (`GAMEZONE_ARTIFACTS_DIR`), the sidecar follows its `current` link, which the init-container
//! swaps atomically to `.trees/<tree>`, and adds [`DIGEST_ANNOTATION`] to the server that
//! GetGameServer and WatchGameServer return; a swap is one more WatchGameServer message. Shown
//! only, never written: the API server's object does not change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gamezone_api::artifacts::{CURRENT, TREES};

use super::writer::Sdk;

/// The annotation holding the digest of the tree `current` points at (`sha256:…`).
pub const DIGEST_ANNOTATION: &str = "gamezone.dev/artifacts-digest";

/// How often `current` is read.
const POLL: Duration = Duration::from_secs(1);

/// The tree `current` points at, by its name under `.trees/`.
fn current_tree(dir: &Path) -> Option<String> {
    let target = std::fs::read_link(dir.join(CURRENT)).ok()?;
    Some(target.strip_prefix(TREES).ok()?.to_str()?.to_string())
}

/// The digest of the tree `current` points at, once the state file describes that tree (the
/// init-container writes it right after the swap).
pub fn digest(dir: &Path) -> Option<String> {
    let tree = current_tree(dir)?;
    let state = gamezone_api::artifacts::read(dir)?;
    (state.tree == tree).then_some(state.tree_digest)
}

/// Shows the digest of `dir`'s current tree on the server, following every swap, until stopped.
pub async fn follow(sdk: Arc<Sdk>, dir: PathBuf) {
    // The link is read every poll (one syscall); the state file only until it matches the link.
    let mut shown: Option<String> = None;
    loop {
        let tree = current_tree(&dir);
        if tree.is_some()
            && tree != shown
            && let Some(d) = digest(&dir)
        {
            tracing::info!(dir = %dir.display(), tree = ?tree, digest = %d, "artifacts tree in place");
            sdk.set_local_annotation(DIGEST_ANNOTATION, &d);
            shown = tree;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{GameServer, GameServerSpec};

    fn swap(dir: &Path, tree: &str, digest: &str) {
        std::fs::create_dir_all(dir.join(TREES).join(tree)).unwrap();
        let tmp = dir.join(".current-tmp");
        std::os::unix::fs::symlink(Path::new(TREES).join(tree), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(CURRENT)).unwrap();
        let state = serde_json::json!({"layers": [], "revisions": [], "tree": tree, "treeDigest": digest,
                                       "files": 0, "bytes": 0, "appliedAt": "2026-12-01T00:00:00Z"});
        std::fs::write(dir.join(gamezone_api::artifacts::STATE_FILE), state.to_string()).unwrap();
    }

    fn shown(gs: &GameServer) -> Option<&str> {
        gs.metadata.annotations.as_ref()?.get(DIGEST_ANNOTATION).map(String::as_str)
    }

    #[test]
    fn the_digest_is_the_state_s_only_when_it_describes_the_linked_tree() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(digest(dir.path()), None, "no tree yet");
        swap(dir.path(), "aaaa-1", "sha256:aaaa");
        assert_eq!(digest(dir.path()).as_deref(), Some("sha256:aaaa"));
        // Swapped, state not yet written.
        std::fs::create_dir_all(dir.path().join(TREES).join("bbbb-2")).unwrap();
        std::fs::remove_file(dir.path().join(CURRENT)).unwrap();
        std::os::unix::fs::symlink(Path::new(TREES).join("bbbb-2"), dir.path().join(CURRENT)).unwrap();
        assert_eq!(digest(dir.path()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_swap_is_a_new_watch_message_with_the_new_digest_and_no_write() {
        let dir = tempfile::tempdir().unwrap();
        let sdk = Sdk::new(GameServer::new("z1-game-1", GameServerSpec::default()));
        let mut watch = sdk.subscribe();
        tokio::spawn(follow(sdk.clone(), dir.path().to_path_buf()));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(shown(&sdk.server()), None, "nothing mounted yet: nothing shown");
        watch.borrow_and_update();

        swap(dir.path(), "aaaa-1", "sha256:aaaa");
        watch.changed().await.unwrap();
        assert_eq!(shown(&watch.borrow_and_update()), Some("sha256:aaaa"));
        swap(dir.path(), "bbbb-2", "sha256:bbbb");
        watch.changed().await.unwrap();
        assert_eq!(shown(&watch.borrow_and_update()), Some("sha256:bbbb"));
        // The annotation is shown, never wanted: nothing for the writer to send.
        assert!(sdk.wanted().annotations.is_empty());
        // An object read from the API server later keeps showing it.
        sdk.observe(GameServer::new("z1-game-1", GameServerSpec { id: 2, ..Default::default() }));
        assert_eq!(shown(&sdk.server()), Some("sha256:bbbb"));
    }
}
