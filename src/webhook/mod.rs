//! The passthrough admission webhook (feature gate `AutopilotPassthroughPort`): on platforms that
//! assign host ports themselves (GKE Autopilot), Passthrough ports get a placeholder, the
//! platform's webhook assigns the host port, and ours, ordered after it, copies that host port
//! into the container port and the `GAMEZONE_PORT_*` env var.
//!
//! * [`gates`]: the `--feature-gates` flag (pure).
//! * [`crate::ports::passthrough`] (in the core): the marks on a pod, the JSONPatch and the
//!   final ports for status.
//! * [`tls`]: the self-signed CA and serving certificate, and when to renew them.
//! * [`server`]: the HTTPS server; [`manager`]: the Secret and the MutatingWebhookConfiguration.

pub mod gates;
pub mod manager;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde_json::{Value, json};

pub use gates::FeatureGates;

/// Name of the MutatingWebhookConfiguration and of its one webhook. The API server calls
/// mutating webhooks in name order, so `zzz-` puts ours after the platform's.
pub const CONFIG_NAME: &str = "zzz-gamezone-passthrough.gamezone.dev";
/// Path the webhook serves.
pub const PATH: &str = "/mutate-pods-passthrough";

/// Where the API server reaches the webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Service in the cluster (the usual case).
    Service {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its port.
        port: u16,
    },
    /// A URL, for an operator running outside the cluster (local runs, tests).
    Url(String),
}

impl Endpoint {
    /// Names the serving certificate must carry.
    pub fn sans(&self) -> Vec<String> {
        let mut sans = match self {
            Endpoint::Service { namespace, name, .. } => vec![
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}.svc.cluster.local"),
                format!("{name}.{namespace}"),
                name.clone(),
            ],
            Endpoint::Url(url) => url_host(url).into_iter().collect(),
        };
        sans.sort();
        sans
    }

    /// The webhook's `clientConfig`, without caBundle.
    pub fn client_config(&self) -> Value {
        match self {
            Endpoint::Service { namespace, name, port } => {
                json!({"service": {"namespace": namespace, "name": name, "port": port, "path": PATH}})
            }
            Endpoint::Url(url) => json!({"url": url}),
        }
    }
}

/// Host of an `https://host[:port]/path` URL (brackets of an IPv6 address removed).
fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split('/').next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_string())
}

/// How the webhook runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address the HTTPS server listens on.
    pub addr: SocketAddr,
    /// Where the API server reaches it.
    pub endpoint: Endpoint,
    /// Namespace of the TLS Secret (the operator's own).
    pub secret_namespace: String,
    /// Name of the TLS Secret.
    pub secret_name: String,
    /// How long a new serving certificate is valid.
    pub cert_validity: Duration,
    /// Renew the certificate this long before it expires.
    pub renew_before: Duration,
    /// How often the certificate and the configuration are checked.
    pub check_every: Duration,
    /// Only pods in this namespace are sent (the operator's `--namespace`), else all.
    pub watch_namespace: Option<String>,
}

impl Config {
    #[cfg(test)]
    fn for_tests(endpoint: Endpoint) -> Config {
        Config {
            addr: ([127, 0, 0, 1], 0).into(),
            endpoint,
            secret_namespace: "gamezone-system".into(),
            secret_name: "gamezone-webhook-tls".into(),
            cert_validity: Duration::from_secs(3600),
            renew_before: Duration::from_secs(60),
            check_every: Duration::from_secs(60),
            watch_namespace: None,
        }
    }
}

/// What can go wrong running the webhook.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address can't be bound.
    #[error("webhook: cannot listen on {addr}: {source}; pick another --webhook-addr")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TLS setup or the stored certificate is unusable.
    #[error("webhook TLS: {0}; delete the webhook Secret to have a new certificate made")]
    Tls(String),
    /// Making a certificate failed.
    #[error("webhook certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

/// Starts the server, serving the certificate in `slot`, and the certificate/configuration
/// manager; `leader` says whether this replica may write the Secret and the configuration. The
/// handle ends only if serving stops.
pub async fn start(
    client: kube::Client,
    cfg: Config,
    leader: Arc<AtomicBool>,
    slot: Arc<tls::CertSlot>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let server = server::serve(cfg.addr, slot.clone()).await?;
    tokio::spawn(manager::run(client, Arc::new(cfg), slot, leader));
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_names_follow_the_endpoint() {
        assert_eq!(Endpoint::Url("https://127.0.0.1:9443/x".into()).sans(), vec!["127.0.0.1"]);
        assert_eq!(Endpoint::Url("https://[::1]:9443/x".into()).sans(), vec!["::1"]);
        assert_eq!(Endpoint::Url("https://wh.example/x".into()).sans(), vec!["wh.example"]);
        let svc = Endpoint::Service { namespace: "gz".into(), name: "wh".into(), port: 443 };
        assert_eq!(svc.sans(), vec!["wh", "wh.gz", "wh.gz.svc", "wh.gz.svc.cluster.local"]);
        assert_eq!(svc.client_config()["service"]["path"], PATH);
    }
}
