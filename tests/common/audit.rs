//! The API server's audit log of writes (`cp.sh up` writes it to `DIR/audit.log`, beside the
//! kubeconfig): who wrote what, and when, as the API server saw it.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// One completed write.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Write {
    /// `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: String,
    /// The path asked for.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// Who, as authenticated.
    pub user: User,
    /// The client's `User-Agent`; the operator's is `gamezone/<version> (<identity>)`.
    #[serde(default)]
    pub user_agent: String,
    /// What was written.
    #[serde(default)]
    pub object_ref: ObjectRef,
    /// The answer; `code` 2xx when the write took effect.
    #[serde(default)]
    pub response_status: ResponseStatus,
    /// When the API server received the request (RFC 3339, microseconds); see [`Write::received`].
    pub request_received_timestamp: String,
}

/// The authenticated user of a request.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct User {
    /// e.g. `gamezone-admin` (the tests' client certificate).
    #[serde(default)]
    pub username: String,
}

/// The object of a request.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ObjectRef {
    /// e.g. `pods`, `leases`, `gamezones`.
    #[serde(default)]
    pub resource: String,
    /// e.g. `status`.
    #[serde(default)]
    pub subresource: String,
    /// Empty for cluster-scoped objects.
    #[serde(default)]
    pub namespace: String,
    /// Empty for a create by generateName or a collection.
    #[serde(default)]
    pub name: String,
}

/// The status the API server answered.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ResponseStatus {
    /// HTTP status code.
    #[serde(default)]
    pub code: u16,
}

impl Write {
    /// Whether the user agent contains `part`, e.g. `"(replica-a)"`.
    pub fn by_agent(&self, part: &str) -> bool {
        self.user_agent.contains(part)
    }

    /// When the API server received the request.
    pub fn received(&self) -> Timestamp {
        self.request_received_timestamp.parse().expect("the API server writes RFC 3339 timestamps")
    }

    /// Whether it was received at or after `t`.
    pub fn received_since(&self, t: SystemTime) -> bool {
        Timestamp::try_from(t).is_ok_and(|t| self.received() >= t)
    }

    /// Whether it took effect (a 2xx answer).
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.response_status.code)
    }

    /// One line for a failure message.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} {} by {} ({}) -> {}",
            self.request_received_timestamp,
            self.verb,
            self.request_uri,
            self.object_ref.name,
            self.user.username,
            self.user_agent,
            self.response_status.code
        )
    }
}

/// The audit log of the control plane behind `kubeconfig`.
pub fn log_path(kubeconfig: &Path) -> PathBuf {
    kubeconfig.parent().expect("the kubeconfig has a folder").join("audit.log")
}

/// Every write in the audit log of the control plane behind `kubeconfig`, oldest first. A
/// line being written as it is read is skipped; entries appear once the request completed.
pub fn writes(kubeconfig: &Path) -> Vec<Write> {
    let path = log_path(kubeconfig);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!("cannot read the audit log {}: {e} (a control plane started by cp.sh writes it)", path.display())
    });
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The writes in namespace `namespace` whose user agent contains `agent`.
pub fn writes_by(kubeconfig: &Path, namespace: &str, agent: &str) -> Vec<Write> {
    writes(kubeconfig).into_iter().filter(|w| w.object_ref.namespace == namespace && w.by_agent(agent)).collect()
}
