//! The artifacts volume as a pod sees it: the `current` tree and the state file beside it,
//! which gamezone-init writes and the SDK sidecar reads to show the game what it runs.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::layer::Layer;

/// The symlink in the destination root that points at the live tree.
pub const CURRENT: &str = "current";
/// Directory in the destination root that holds built trees and staging directories.
pub const TREES: &str = ".trees";

/// Name of the state file in the destination root.
pub const STATE_FILE: &str = ".gamezone-state.json";

/// A layer as recorded in the state file: where it went and from where, never credentials.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerSummary {
    /// Destination path inside the tree.
    pub path: String,
    /// Folder of the source taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
    /// Source kind and location.
    pub source: String,
    /// Branch, tag or commit followed, for git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl LayerSummary {
    /// Summarizes each layer of a plan.
    pub fn of(layers: &[Layer]) -> Vec<LayerSummary> {
        layers
            .iter()
            .map(|l| LayerSummary {
                path: l.path.clone(),
                sub_path: l.sub_path.clone(),
                source: l.describe(),
                reference: l.reference(),
            })
            .collect()
    }
}

/// What the destination's `current` tree was built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// The layers, in order.
    pub layers: Vec<LayerSummary>,
    /// The pinned revision of each layer.
    pub revisions: Vec<String>,
    /// Directory name of the tree under `.trees/`.
    pub tree: String,
    /// sha256 over sorted `path mode size sha256` lines of the tree.
    pub tree_digest: String,
    /// Regular files in the tree.
    pub files: u64,
    /// Bytes of regular files in the tree.
    pub bytes: u64,
    /// When the tree was swapped in (RFC 3339).
    pub applied_at: String,
    /// With an edits layer: the tree of the pinned layers alone, under `.trees/`, that the
    /// current tree was built on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_tree: Option<String>,
    /// With an edits layer: which edits the current tree holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edits: Option<EditsState>,
}

/// The edits layer a tree was built with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EditsState {
    /// The edits directory.
    pub dir: String,
    /// Digest of the edits applied (names, sizes, mtimes, modes); empty when they were refused
    /// and the tree holds the pinned layers only.
    pub revision: String,
}

/// How `gamezone-init mount` starts its message when an `image` volume holds another tree than
/// the pinned one: the operator reads it in the init container's termination message and gives
/// that server a pod that copies the tree from the registry instead.
pub const MOUNTED_WRONG: &str = "image volume mounted wrong:";

/// A zone version's artifacts tree packed as one OCI image: its layers in order, later over
/// earlier, as an overlay mount of image layers merges them. Pods mount it as an `image` volume.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TreeImage {
    /// `repository@sha256:…`: the image pods mount.
    pub image: String,
    /// The digest of the tree the layers make together (`sha256:…` over sorted
    /// `path mode size sha256` lines).
    pub tree_digest: String,
    /// The shape of that tree (`sha256:…` over sorted `path mode size` lines, a symlink's with
    /// its target's hash): what a pod checks its mount against before the game starts, from
    /// metadata alone. The runtime checked the layers' content against their digests when it
    /// pulled them; the shape shows a runtime that mounts the tree empty or mounts another
    /// one. Without it (a tree packed before shapes), pods read every file for the digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tree_shape: Option<String>,
    /// Nodes that hold it before the rollout to it replaced a pod there (pre-warmed): the nodes
    /// that ran the zone's servers when it was packed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warm_nodes: Vec<String>,
}

/// Reads the state file; `None` when absent or unreadable (then the tree is rebuilt).
pub fn read(root: &Path) -> Option<State> {
    let text = std::fs::read(root.join(STATE_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}
