//! Live edits of a test zone: an edits volume shared over SMB, laid over the pinned artifacts
//! in every server pod.

use crate::layer::SecretRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Exposure;

/// Live edits for a test zone: an SMB share (`\\<host>\edits`) whose files are the topmost
/// layer over the pinned artifacts of every server. Production zones leave it out.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EditsSpec {
    /// Secret with keys `username` and `password`: the one login of the share.
    pub secret_ref: SecretRef,
    /// Storage class of the edits claim; it must support ReadWriteMany (SMB CSI, NFS, CephFS).
    /// The cluster's default class when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Size of the edits claim, e.g. `1Gi`; `1Gi` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(Mi|Gi|Ti)$"))]
    pub size: Option<String>,
    /// How testers reach the share (the Service `<zone>-edits`, port 445): ClusterIP when
    /// empty; NodePort or LoadBalancer with annotations and an external-dns `hostname`
    /// (`{zone}` and `{zoneId}` are replaced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Exposure>,
    /// Keep the edits claim (and the edits in it) when edits are turned off or the zone is
    /// deleted; it is then the user's to delete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_claim: bool,
    /// What each service type's game hears after a new tree is swapped in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub on_swap: Vec<SwapNotice>,
}

/// How the game of one service type hears of a swap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.exec) || has(self.signal)", "message": "set exec, signal, or both"},
    {"rule": "!has(self.signal) || has(self.pidFile)", "message": "signal needs pidFile: the file the game writes its pid to"}
]))]
pub struct SwapNotice {
    /// The service type (an entry of `spec.services`).
    #[serde(rename = "type")]
    pub type_: String,
    /// Command run with `sh -c` in the edits sidecar after each swap (git-sync's exec hook);
    /// it sees `GAMEZONE_TREE`, `GAMEZONE_TREE_DIGEST`, `GAMEZONE_CURRENT`. The sidecar runs
    /// the operator's image, which has no shell: use it with an init image that has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<String>,
    /// Signal sent to the game after each swap. The pod then shares its process namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<SwapSignal>,
    /// Where the game writes its pid, below `/run/gamezone` (a volume the game and the sidecar
    /// share), e.g. `/run/gamezone/game.pid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/run/gamezone/[A-Za-z0-9._-]+$"))]
    pub pid_file: Option<String>,
}

/// A signal the edits sidecar may send the game.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[allow(clippy::upper_case_acronyms)]
pub enum SwapSignal {
    /// Hang-up, the common "reload your configuration".
    HUP,
    /// User signal 1.
    USR1,
    /// User signal 2.
    USR2,
}

/// What the zone's edits share reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ZoneEditsStatus {
    /// Where testers map the share, e.g. `\\zone1-edits.example.com\edits`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<String>,
    /// Files in the share.
    #[serde(default)]
    pub files: i32,
    /// Paths the servers' trees differ in from the pinned tree.
    #[serde(default)]
    pub changed: i32,
    /// Digest of the edits in the share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Servers whose tree has the share's current edits.
    #[serde(default)]
    pub applied_servers: i32,
    /// When a server last swapped in edits (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied: Option<String>,
    /// The last edit refused, and why (a link out of the tree, a device ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refused: Option<RefusedEditStatus>,
    /// Why the share's state could not be read, when it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An edit the servers refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefusedEditStatus {
    /// Path inside the share.
    pub path: String,
    /// Why it was refused and what to do.
    pub reason: String,
    /// When (RFC 3339), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}
