//! The tree an `image` volume mounted: checked against the pinned tree before the game starts,
//! then made the artifacts volume's `current` tree.
//!
//! With the zone's tree packed as an image, the kubelet mounts it read-only where the game
//! reads its artifacts, and the node's containerd holds each layer once for every pod. A
//! runtime that does not implement image volumes may mount it empty without an error, so the
//! mounted tree is compared with what `pack` recorded; a wrong tree is [`Error::MountedWrong`],
//! never a game started on it. With the tree's shape recorded the check reads metadata only
//! (one `lstat` per entry): the runtime checked the layers' bytes against their digests when
//! it pulled them, and a pod of a 20 GB tree must not read 20 GB before it starts. Without it
//! (a tree packed before shapes were), every file is read for the digest. The artifacts volume
//! keeps its shape (`current`, `.trees/<tree>`, the state file), so the SDK sidecar shows the
//! digest as for a copied tree: `.trees/image-<digest>` is a symlink to the mount.

use std::fs;
use std::path::Path;

use gamezone_api::artifacts::{CURRENT, LayerSummary, State, TREES};

use crate::plan::Layer;
use crate::{Error, Result};

/// What a mounted tree is checked against: the pinned tree's digest, and its shape when `pack`
/// recorded one.
#[derive(Clone, Copy, Debug)]
pub struct Pinned<'a> {
    pub tree_digest: &'a str,
    pub tree_shape: Option<&'a str>,
}

/// Checks the tree mounted at `image` against `pinned` and makes it `root`'s current tree,
/// with a state file naming `layers` at `revisions`. Returns the state written.
pub fn adopt(root: &Path, image: &Path, pinned: Pinned, layers: &[Layer], revisions: Vec<String>) -> Result<State> {
    let (what, want, stats) = match pinned.tree_shape {
        Some(shape) => ("shape", shape, crate::tree::shape_dir(image)),
        None => ("digest", pinned.tree_digest, crate::tree::stats_dir(image)),
    };
    let stats = stats.map_err(|e| Error::MountedWrong {
        message: format!(
            "cannot read the image volume at {}: {e}; the operator copies the tree from the registry instead",
            image.display()
        ),
    })?;
    if stats.digest != want {
        return Err(Error::MountedWrong {
            message: format!(
                "the image volume at {} holds a tree of {} files ({} bytes, {what} {}), not the pinned one ({what} {want}); \
                 this node's container runtime may not implement image volumes (some mount them empty); \
                 the operator copies the tree from the registry instead",
                image.display(),
                stats.files,
                stats.bytes,
                stats.digest
            ),
        });
    }
    let tree_digest = pinned.tree_digest.to_owned();
    let id = format!("image-{}", tree_id(&tree_digest)?);
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
        tree_digest,
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

/// The first 16 hex digits of a `sha256:` digest: the tree's directory name under `.trees/`.
fn tree_id(digest: &str) -> Result<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|h| &h[..16])
        .ok_or_else(|| {
            Error::Plan(format!("--tree-digest {digest:?} is not a sha256 digest (sha256: and 64 hex digits)"))
        })
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
        let digest = crate::tree::digest_dir(image.path()).unwrap();
        let full = Pinned { tree_digest: &digest, tree_shape: None };

        // An empty mount (a runtime without image volumes) is refused, naming both digests.
        let none = tempfile::tempdir().unwrap();
        let e = adopt(root.path(), none.path(), full, &[], vec![]).unwrap_err();
        let said = e.to_string();
        assert!(said.starts_with(crate::error::MOUNTED_WRONG), "{said}");
        assert!(said.contains(&empty) && said.contains(&digest) && said.contains("0 files"), "{said}");
        assert!(fs::symlink_metadata(root.path().join(CURRENT)).is_err(), "no current tree on a refusal");

        let state = adopt(root.path(), image.path(), full, &[], vec![]).unwrap();
        assert_eq!((state.tree_digest.as_str(), state.files, state.bytes), (digest.as_str(), 1, 3));
        assert_eq!(fs::read_to_string(root.path().join(CURRENT).join("maps/a.txt")).unwrap(), "map");
        assert_eq!(crate::state::read(root.path()).unwrap(), state);
        // Again (a restarted pod): the same tree, in place.
        assert_eq!(adopt(root.path(), image.path(), full, &[], vec![]).unwrap().tree, state.tree);

        // Without its shape, a file rewritten at its own size is found by the full read.
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join("maps")).unwrap();
        fs::write(other.path().join("maps/a.txt"), "pam").unwrap();
        assert!(adopt(root.path(), other.path(), full, &[], vec![]).is_err());
    }

    #[test]
    fn with_its_shape_a_mounted_tree_is_checked_from_metadata() {
        let (root, image) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        fs::create_dir(image.path().join("maps")).unwrap();
        fs::write(image.path().join("maps/a.txt"), "map").unwrap();
        let digest = crate::tree::digest_dir(image.path()).unwrap();
        let shape = crate::tree::shape_dir(image.path()).unwrap().digest;
        let pinned = Pinned { tree_digest: &digest, tree_shape: Some(&shape) };

        // An empty mount is refused, naming both shapes.
        let none = tempfile::tempdir().unwrap();
        let said = adopt(root.path(), none.path(), pinned, &[], vec![]).unwrap_err().to_string();
        assert!(said.starts_with(crate::error::MOUNTED_WRONG), "{said}");
        let empty = crate::tree::shape_dir(none.path()).unwrap().digest;
        assert!(said.contains(&format!("shape {empty}")) && said.contains(&format!("shape {shape}")), "{said}");
        assert!(fs::symlink_metadata(root.path().join(CURRENT)).is_err(), "no current tree on a refusal");

        // The pinned tree: adopted with the digest pack recorded.
        let state = adopt(root.path(), image.path(), pinned, &[], vec![]).unwrap();
        assert_eq!((state.tree_digest.as_str(), state.files, state.bytes), (digest.as_str(), 1, 3));
        assert_eq!(state.tree, format!("image-{}", &digest[7..23]));
        assert_eq!(fs::read_to_string(root.path().join(CURRENT).join("maps/a.txt")).unwrap(), "map");

        // Another version of the tree (a file of another size) is refused.
        let other = tempfile::tempdir().unwrap();
        fs::create_dir(other.path().join("maps")).unwrap();
        fs::write(other.path().join("maps/a.txt"), "map v2").unwrap();
        assert!(adopt(root.path(), other.path(), pinned, &[], vec![]).is_err());

        // A recorded digest that is not one is refused before anything is written.
        let bad = Pinned { tree_digest: "sha256:zz", tree_shape: Some(&shape) };
        let fresh = tempfile::tempdir().unwrap();
        let said = adopt(fresh.path(), image.path(), bad, &[], vec![]).unwrap_err().to_string();
        assert!(said.contains("--tree-digest"), "{said}");
        assert!(fs::read_dir(fresh.path()).unwrap().next().is_none(), "nothing written");
    }
}
