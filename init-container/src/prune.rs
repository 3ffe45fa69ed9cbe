//! Retention of a packed repository: the tree images and layers in use stay, the rest go.
//!
//! The operator never deletes from the registry on its own: the same pins are shared by
//! every zone, and a rollback to a version pruned here packs it again from its origins.
//! `gamezone registry prune` names what is in use (every zone's `status.treeImage` and packed
//! layers) and [`prune`] deletes the manifests of every other `t-` (tree) and `l-` (layer) tag.
//! Their blobs go when the registry's garbage collection next runs (CNCF Distribution:
//! `registry garbage-collect`; Harbor: its GC job), since no manifest refers to them any more.
//! Tags of other names are never touched.

use std::collections::BTreeSet;

use crate::Result;
use crate::oci::{Registry, Tagged};

/// What stays: tree images by manifest digest, layers by blob digest.
#[derive(Clone, Debug, Default)]
pub struct Keep {
    /// Manifest digests of tree images in use (`sha256:…`).
    pub trees: BTreeSet<String>,
    /// Blob digests of layers in use; the layers of every kept tree are added.
    pub layers: BTreeSet<String>,
}

/// The tags to delete: tree tags whose manifest is not kept, and layer tags whose layer is in
/// no kept tree and not kept itself.
pub fn plan(tagged: &[Tagged], keep: &Keep) -> Vec<Tagged> {
    let mut layers = keep.layers.clone();
    for t in tagged.iter().filter(|t| t.tag.starts_with("t-") && keep.trees.contains(&t.digest)) {
        layers.extend(t.layers.iter().cloned());
    }
    tagged
        .iter()
        .filter(|t| match t.tag.split_once('-').map(|(p, _)| p) {
            Some("t") => !keep.trees.contains(&t.digest),
            Some("l") => !t.layers.iter().any(|l| layers.contains(l)),
            _ => false,
        })
        .cloned()
        .collect()
}

/// What [`prune`] did.
#[derive(Clone, Debug, Default)]
pub struct Pruned {
    /// Tags looked at.
    pub tags: usize,
    /// Tags deleted (or that would be, on a dry run).
    pub deleted: Vec<Tagged>,
}

/// Deletes what [`plan`] names (nothing on a `dry_run`).
pub async fn prune(registry: &Registry, keep: &Keep, dry_run: bool) -> Result<Pruned> {
    let tagged = registry.tagged().await?;
    let deleted = plan(&tagged, keep);
    if !dry_run {
        for t in &deleted {
            registry.delete_manifest(&t.digest).await?;
            tracing::info!(tag = %t.tag, digest = %t.digest, "deleted");
        }
    }
    Ok(Pruned { tags: tagged.len(), deleted })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tagged(tag: &str, digest: &str, layers: &[&str]) -> Tagged {
        Tagged { tag: tag.into(), digest: digest.into(), layers: layers.iter().map(|l| l.to_string()).collect() }
    }

    #[test]
    fn the_trees_in_use_and_their_layers_stay_and_foreign_tags_are_never_touched() {
        let all = [
            tagged("t-new", "sha256:tn", &["sha256:assets", "sha256:config2"]),
            tagged("t-old", "sha256:to", &["sha256:assets", "sha256:config1"]),
            tagged("l-assets", "sha256:la", &["sha256:assets"]),
            tagged("l-config1", "sha256:lc1", &["sha256:config1"]),
            tagged("l-config2", "sha256:lc2", &["sha256:config2"]),
            tagged("l-copied", "sha256:lcp", &["sha256:copied"]),
            tagged("latest", "sha256:x", &["sha256:config1"]),
        ];
        let keep = Keep { trees: ["sha256:tn".to_string()].into(), layers: ["sha256:copied".to_string()].into() };
        let planned = plan(&all, &keep);
        let gone: Vec<&str> = planned.iter().map(|t| t.tag.as_str()).collect();
        assert_eq!(gone, ["t-old", "l-config1"]);
        let nothing = plan(&all, &Keep::default());
        assert_eq!(nothing.len(), 6, "with nothing in use every packed tag goes, never `latest`");
    }
}
