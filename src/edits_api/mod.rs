//! Live edits of a test zone, beyond the objects `crate::zone` builds: what the edits API
//! reports ([`ShareReport`]), how the zone's status sums it up ([`summarize`]), the edits API
//! server the Samba pod runs ([`server`]) and the client `gamezone edits` and the operator use
//! through the API server's service proxy ([`client`]).

pub mod client;
pub mod save;
pub mod server;

use std::collections::BTreeSet;

use gamezone_init::edits_layer::EditsStatus;
use serde::{Deserialize, Serialize};

use crate::api::{RefusedEditStatus, ZoneEditsStatus};

/// What the edits API's `GET /status` answers: the share as it is, and each server's last
/// report (the sidecars copy their edits status to the claim's `.status/` folder).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShareReport {
    /// Regular files in the share.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Digest of the share as the sidecars compute it (`editsRevision` of a server that has it).
    pub revision: String,
    /// Newest modification time in the share (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change: Option<String>,
    /// The first entry every server refuses (a link, a device ...), found by the share's scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<gamezone_init::edits_layer::Refusal>,
    /// Each server's last report, by pod name.
    #[serde(default)]
    pub servers: Vec<ServerReport>,
}

/// One server's edits status, as its sidecar last wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerReport {
    /// The pod (the server's instance name).
    pub pod: String,
    /// Its status file.
    pub status: EditsStatus,
}

/// The zone's `status.edits` from a report, counting only the servers in `servers` (reports of
/// pods that are gone stay on the claim until their name comes back).
pub fn summarize(share: Option<String>, report: &ShareReport, servers: &BTreeSet<String>) -> ZoneEditsStatus {
    let live: Vec<&ServerReport> = report.servers.iter().filter(|s| servers.contains(&s.pod)).collect();
    let applied = live.iter().filter(|s| s.status.state == "applied" && s.status.edits_revision == report.revision);
    let changed = live.iter().map(|s| s.status.changes.len()).max().unwrap_or(0);
    let last_applied = live.iter().filter_map(|s| s.status.applied_at.clone()).max();
    let last_refused = match &report.refused {
        Some(r) => Some(RefusedEditStatus {
            path: r.path.clone(),
            reason: r.reason.clone(),
            at: live.iter().filter_map(|s| s.status.last_refused.as_ref().map(|l| l.at.clone())).max(),
        }),
        None => live
            .iter()
            .filter_map(|s| s.status.last_refused.as_ref())
            .max_by(|a, b| a.at.cmp(&b.at))
            .map(|l| RefusedEditStatus { path: l.path.clone(), reason: l.reason.clone(), at: Some(l.at.clone()) }),
    };
    ZoneEditsStatus {
        share,
        files: report.files as i32,
        changed: changed as i32,
        revision: Some(report.revision.clone()).filter(|r| !r.is_empty()),
        applied_servers: applied.count() as i32,
        last_applied,
        last_refused,
        message: None,
    }
}

/// What `gamezone edits status` prints: the share, then each server's changes against its
/// pinned tree, when they were applied, and the last refused edit.
pub fn describe(zone: &crate::api::GameZone, report: &ShareReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let share = crate::zone::share_path(zone).unwrap_or_default();
    let _ =
        writeln!(out, "share {share}: {} file(s), {} bytes, revision {}", report.files, report.bytes, report.revision);
    if let Some(at) = &report.last_change {
        let _ = writeln!(out, "last change in the share: {at}");
    }
    if let Some(r) = &report.refused {
        let _ = writeln!(out, "refused: {}: {}", r.path, r.reason);
    }
    for s in &report.servers {
        let st = &s.status;
        let current = if st.edits_revision == report.revision { "current" } else { "behind" };
        let at = st.applied_at.as_deref().unwrap_or("never");
        let _ = writeln!(out, "{}: {} ({current}), applied {at}, {} change(s)", s.pod, st.state, st.changes.len());
        for c in &st.changes {
            let _ = writeln!(out, "  {:?} {} ({} bytes)", c.change, c.path, c.size);
        }
        if let Some(r) = &st.last_refused {
            let _ = writeln!(out, "  last refused {} at {}: {}", r.path, r.at, r.reason);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gamezone_init::edits_layer::{Change, ChangeKind, RefusedEdit};

    fn server(pod: &str, state: &str, revision: &str, at: &str, changes: usize) -> ServerReport {
        let change = Change {
            path: "config/server.json".into(),
            change: ChangeKind::Modified,
            mode: "100644".into(),
            size: 3,
            sha256: "x".into(),
        };
        ServerReport {
            pod: pod.into(),
            status: EditsStatus {
                state: state.into(),
                edits_revision: revision.into(),
                applied_at: Some(at.into()),
                changes: vec![change; changes],
                ..Default::default()
            },
        }
    }

    #[test]
    fn counts_the_servers_on_the_shares_revision_and_ignores_gone_pods() {
        let report = ShareReport {
            files: 2,
            revision: "sha256:new".into(),
            servers: vec![
                server("z-game-1", "applied", "sha256:new", "2026-12-01T10:00:02Z", 2),
                server("z-game-2", "applied", "sha256:old", "2026-12-01T09:00:00Z", 1),
                server("z-game-9", "applied", "sha256:new", "2026-12-01T11:00:00Z", 5),
            ],
            ..Default::default()
        };
        let live: BTreeSet<String> = ["z-game-1".into(), "z-game-2".into()].into();
        let s = summarize(Some(r"\\h\edits".into()), &report, &live);
        assert_eq!((s.files, s.changed, s.applied_servers), (2, 2, 1));
        assert_eq!(s.last_applied.as_deref(), Some("2026-12-01T10:00:02Z"), "z-game-9 is gone");
        assert_eq!(s.revision.as_deref(), Some("sha256:new"));
        assert!(s.last_refused.is_none());
    }

    #[test]
    fn a_refused_edit_shows_with_why() {
        let mut refused = server("z-game-1", "refused", "sha256:old", "2026-12-01T10:00:00Z", 0);
        refused.status.last_refused = Some(RefusedEdit {
            path: "evil".into(),
            reason: "a symlink out of the tree".into(),
            at: "2026-12-01T10:00:05Z".into(),
            edits_revision: "sha256:new".into(),
        });
        let report = ShareReport { revision: "sha256:new".into(), servers: vec![refused], ..Default::default() };
        let s = summarize(None, &report, &["z-game-1".to_string()].into());
        let r = s.last_refused.unwrap();
        assert_eq!((r.path.as_str(), r.at.as_deref()), ("evil", Some("2026-12-01T10:00:05Z")));
        assert!(r.reason.contains("symlink"));
        assert_eq!(s.applied_servers, 0);
    }
}
