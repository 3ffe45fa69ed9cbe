//! What a run of gamezone-init did: what `apply` returns, progress reports and hooks are told.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::state::State;

/// What a run did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// True when the pinned revisions were already in place and nothing was done.
    pub unchanged: bool,
    /// Layers in the plan.
    pub layers: usize,
    /// Regular files in the tree.
    pub files: u64,
    /// Bytes of regular files in the tree.
    pub bytes: u64,
    /// Wall time of the run in milliseconds.
    pub elapsed_ms: u64,
    /// sha256 over sorted `path mode size sha256` lines of the tree.
    pub tree_digest: String,
    /// The tree's directory.
    pub tree: PathBuf,
    /// Bytes this run wrote (fetched layers and copied edits; hard-linked files cost none).
    pub written_bytes: u64,
    /// Files hard-linked from the pinned layers' tree (with an edits layer).
    pub linked_files: u64,
    /// With an edits layer: the digest of the edits in the tree (empty when none are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edits_revision: Option<String>,
    /// With an edits layer: the digest of the edits directory as this run found it (applied or
    /// refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edits_scanned: Option<String>,
    /// With an edits layer: the edit that was refused, when the latest edits were not applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<Refusal>,
}

impl Summary {
    /// The summary of a run that left the tree `st` names in place (edits fields empty, nothing
    /// written), for `layers` layers, started at `started`.
    pub(crate) fn unchanged(st: &State, trees: &Path, layers: usize, started: Instant) -> Summary {
        Summary {
            unchanged: true,
            layers,
            files: st.files,
            bytes: st.bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
            tree_digest: st.tree_digest.clone(),
            tree: trees.join(&st.tree),
            written_bytes: 0,
            linked_files: 0,
            edits_revision: None,
            edits_scanned: None,
            refused: None,
        }
    }

    /// The summary of a run that built `tree` (`files` files, `bytes` bytes, digest
    /// `tree_digest`) for `layers` layers, started at `started`: nothing written or linked yet,
    /// no edits.
    pub(crate) fn built(
        layers: usize,
        tree: PathBuf,
        tree_digest: String,
        (files, bytes): (u64, u64),
        started: Instant,
    ) -> Summary {
        Summary {
            unchanged: false,
            layers,
            files,
            bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
            tree_digest,
            tree,
            written_bytes: 0,
            linked_files: 0,
            edits_revision: None,
            edits_scanned: None,
            refused: None,
        }
    }
}

/// An edit that is not applied, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// Path inside the edits directory.
    pub path: String,
    /// Why it was refused and what to do.
    pub reason: String,
}
