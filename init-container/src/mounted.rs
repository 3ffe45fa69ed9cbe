//! The tree an `image` volume mounted: checked against the pinned tree's digest before the game
//! starts, then made the artifacts volume's `current` tree.
//!
//! With the zone's tree packed as an image, the kubelet mounts it read-only where the game
//! reads its artifacts, and the node's containerd holds each layer once for every pod. A
//! runtime that does not implement image volumes may mount it empty without an error, so the
//! tree is read in full and its digest compared with the one `pack` recorded; a wrong tree is
//! [`Error::MountedWrong`], never a game started on it. The artifacts volume keeps its shape
//! (`current`, `.trees/<tree>`, the state file), so the SDK sidecar shows the digest as for a
//! copied tree: `.trees/image-<digest>` is a symlink to the mount.

use std::fs;
use std::path::Path;

use gamezone_api::artifacts::{CURRENT, LayerSummary, State, TREES};

use crate::plan::Layer;
use crate::{Error, Result};

/// Checks the tree mounted at `image` against `tree_digest` and makes it `root`'s current
/// tree, with a state file naming `layers` at `revisions`. Returns the state written.
pub fn adopt(root: &Path, image: &Path, tree_digest: &str, layers: &[Layer], revisions: Vec<String>) -> Result<State> {
    let stats = crate::tree::stats_dir(image).map_err(|e| Error::MountedWrong {
        message: format!(
            "cannot read the image volume at {}: {e}; the operator copies the tree from the registry instead",
            image.display()
        ),
    })?;
    if stats.digest != tree_digest {
        return Err(Error::MountedWrong {
            message: format!(
                "the image volume at {} holds a tree of {} files ({} bytes, digest {}), not the pinned one ({tree_digest}); \
                 this node's container runtime may not implement image volumes (some mount them empty); \
                 the operator copies the tree from the registry instead",
                image.display(),
                stats.files,
                stats.bytes,
                stats.digest
            ),
        });
    }
    // Equal to a digest computed here: `sha256:` and 64 hex.
    let id = format!("image-{}", &stats.digest["sha256:".len()..][..16]);
    let trees = root.join(TREES);
    fs::create_dir_all(&trees).map_err(|e| Error::destination(&trees, "create trees directory", e))?;
    let link = trees.join(&id);
    if fs::read_link(&link).ok().as_deref() != Some(image) {
        let tmp = trees.join(format!(".{id}-{:08x}", fastrand::u32(..)));
        std::os::unix::fs::symlink(image, &tmp).map_err(|e| Error::destination(&tmp, "create symlink", e))?;
        fs::rename(&tmp, &link).map_err(|e| Error::destination(&link, "move symlink into place", e))?;
    }
    crate::apply::swap_current(root, &id)?;
    let state = State {
        layers: LayerSummary::of(layers),
        revisions,
        tree: id,
        tree_digest: stats.digest,
        files: stats.files,
        bytes: stats.bytes,
        applied_at: crate::apply::now_rfc3339(),
        base_tree: None,
        edits: None,
    };
    crate::state::write(root, &state)?;
    debug_assert_eq!(fs::read_link(root.join(CURRENT)).ok(), Some(Path::new(TREES).join(&state.tree)));
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mounted_tree_is_adopted_only_when_it_is_the_pinned_one() {
        let (root, image) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let empty = crate::tree::digest_dir(image.path()).unwrap();
        fs::create_dir(image.path().join("maps")).unwrap();
        fs::write(image.path().join("maps/a.txt"), "map").unwrap();
        let pinned = crate::tree::digest_dir(image.path()).unwrap();

        // An empty mount (a runtime without image volumes) is refused, naming both digests.
        let none = tempfile::tempdir().unwrap();
        let e = adopt(root.path(), none.path(), &pinned, &[], vec![]).unwrap_err();
        let said = e.to_string();
        assert!(said.starts_with(crate::error::MOUNTED_WRONG), "{said}");
        assert!(said.contains(&empty) && said.contains(&pinned) && said.contains("0 files"), "{said}");
        assert!(fs::symlink_metadata(root.path().join(CURRENT)).is_err(), "no current tree on a refusal");

        let state = adopt(root.path(), image.path(), &pinned, &[], vec![]).unwrap();
        assert_eq!((state.tree_digest.as_str(), state.files, state.bytes), (pinned.as_str(), 1, 3));
        assert_eq!(fs::read_to_string(root.path().join(CURRENT).join("maps/a.txt")).unwrap(), "map");
        assert_eq!(crate::state::read(root.path()).unwrap(), state);
        // Again (a restarted pod): the same tree, in place.
        assert_eq!(adopt(root.path(), image.path(), &pinned, &[], vec![]).unwrap().tree, state.tree);
    }
}
