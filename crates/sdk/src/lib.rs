//! The SDK sidecar (`gamezone-sdk`, also `gamezone sdk`): the API a game process calls to say it is ready, alive,
//! allocated or done, and to label its server. Agones' and Carrier's clients work unchanged:
//! gRPC ([`grpc`]) and REST ([`http`]) speak their wire APIs, on the pod's loopback only.
//!
//! Calls change what the process wants ([`wanted`]); one writer per sidecar ([`writer`])
//! brings the GameServer in line, coalescing calls and rate-limited, writing only the
//! sidecar's own fields: labels and annotations prefixed [`keys::PREFIX`], `status.sdk`, and
//! the conditions the process set. Health pings ([`health`]) are judged in memory and written
//! only when the health changes. [`view`] maps our GameServer to the clients' messages.
//!
//! The GameServer lives in the API server ([`cluster`]) or, for local development, in memory
//! loaded from a file that is watched for edits ([`local`]).
//!
//! In a cluster, the sidecar also polls the gate webhooks of the server's WebhookConfiguration
//! ([`gates`] decides when, [`webhooks`] calls them) and sets the gates their answers name. When
//! the pod mounts the artifacts volume, the server it shows carries the current tree's digest
//! ([`artifacts`]).

pub mod artifacts;
pub mod cli;
pub mod cluster;
pub mod gates;
pub mod grpc;
pub mod health;
pub mod http;
pub mod keys;
pub mod local;
pub mod view;
pub mod wanted;
pub mod webhooks;
pub mod writer;

/// Code generated from `proto/` (see the operator's `tests/sdk/proto.rs`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    /// Agones' SDK service and messages.
    pub mod agones {
        include!("proto/agones.dev.sdk.rs");
    }
    /// Carrier's SDK service and messages.
    pub mod carrier {
        include!("proto/carrier.dev.sdk.rs");
    }
}

use gamezone_api as api;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use writer::{Backend, Sdk, WRITE_EVERY};

/// Field manager of every write the sidecar makes.
pub const FIELD_MANAGER: &str = "gamezone-sdk";
/// Agones' default gRPC port, and ours.
pub const GRPC_PORT: u16 = 9357;
/// Agones' default REST port, and ours.
pub const HTTP_PORT: u16 = 9358;

/// Result with the sidecar's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the sidecar.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object changed since it was read (HTTP 409); it is read again.
    #[error("the GameServer changed since it was read")]
    Conflict,
    /// The API server refused or failed a request.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// An object could not be (de)serialized.
    #[error("serialization: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The local file could not be read or is not a GameServer.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        message: String,
    },
}

/// Where the sidecar's GameServer is.
#[derive(Clone)]
pub enum Mode {
    /// In the API server: `namespace/name`, reached with `client`.
    Cluster {
        /// API client (in-cluster config or a kubeconfig).
        client: kube::Client,
        /// The server's namespace (`POD_NAMESPACE`).
        namespace: String,
        /// The server's name (`GAMEZONE_SERVER`).
        name: String,
        /// UID of the sidecar's pod (`GAMEZONE_POD_UID`).
        pod_uid: Option<String>,
    },
    /// In memory, from `file` (watched for edits) or a default server when `None`.
    Local {
        /// A GameServer YAML or JSON file.
        file: Option<PathBuf>,
        /// A WebhookConfiguration YAML or JSON file (watched for edits) whose webhooks are
        /// polled as in a cluster.
        webhooks: Option<PathBuf>,
    },
}

/// How the sidecar runs.
#[derive(Clone)]
pub struct Config {
    /// Where the GameServer is.
    pub mode: Mode,
    /// gRPC port on loopback.
    pub grpc_port: u16,
    /// REST port on loopback.
    pub http_port: u16,
    /// The artifacts volume (`GAMEZONE_ARTIFACTS_DIR`), when the pod mounts it.
    pub artifacts_dir: Option<PathBuf>,
}

/// Logs calls: each one at info level in local mode (what a developer wants to see), at
/// debug level in a cluster; health pings are counted, not logged one by one.
#[derive(Clone, Default)]
pub struct Calls {
    verbose: bool,
    pings: Arc<AtomicU64>,
}

impl Calls {
    /// Logs one call.
    pub fn log(&self, call: &str, detail: &str) {
        if self.verbose {
            tracing::info!(call, detail, "SDK call");
        } else {
            tracing::debug!(call, detail, "SDK call");
        }
    }

    /// Counts a health ping; in local mode, logs the first and every hundredth.
    pub fn ping(&self) {
        let n = self.pings.fetch_add(1, Ordering::Relaxed) + 1;
        if self.verbose && (n == 1 || n.is_multiple_of(100)) {
            tracing::info!(call = "Health", pings = n, "SDK call");
        }
    }
}

/// Runs the sidecar until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let grpc_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.grpc_port));
    let http_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, config.http_port));
    // Bind first: a port in use is reported before anything else happens.
    let grpc_listener =
        tokio::net::TcpListener::bind(grpc_addr).await.with_context(|| format!("gRPC port {grpc_addr}"))?;
    let http_listener =
        tokio::net::TcpListener::bind(http_addr).await.with_context(|| format!("REST port {http_addr}"))?;

    let (sdk, verbose, backend_task): (Arc<Sdk>, bool, futures::future::BoxFuture<'static, anyhow::Result<()>>) =
        match config.mode {
            Mode::Cluster { client, namespace, name, pod_uid } => {
                let backend = cluster::Kube::new(client.clone(), &namespace, &name);
                let server = backend.get().await.with_context(|| {
                    format!("reading GameServer {namespace}/{name} (GAMEZONE_SERVER, POD_NAMESPACE)")
                })?;
                let sdk = Sdk::new(server);
                if let Some(uid) = pod_uid {
                    sdk.serve_pod(uid);
                }
                let (configs, configs_rx) = tokio::sync::watch::channel(None);
                let follow = cluster::follow_webhooks(sdk.clone(), client, namespace, configs);
                let poll = webhooks::run(sdk.clone(), configs_rx);
                let run = cluster::run(sdk.clone(), backend);
                let task = Box::pin(async move {
                    tokio::select! {
                        r = run => r,
                        () = follow => Ok(()),
                        () = poll => Ok(()),
                    }
                });
                (sdk, false, task)
            }
            Mode::Local { file, webhooks } => {
                let server = local::load(file.as_deref())?;
                // Both files are read before the ports serve: a bad one is the first thing said.
                let webhooks = match webhooks {
                    Some(path) => {
                        let config = local::load_webhooks(&path)?;
                        Some((path, config))
                    }
                    None => None,
                };
                let memory = Arc::new(writer::Memory::new(&server));
                let sdk = Sdk::new(memory.get().await?);
                let task = Box::pin(local::run(sdk.clone(), memory, file, webhooks));
                (sdk, true, task)
            }
        };
    let services = grpc::Services { sdk: sdk.clone(), calls: Calls { verbose, ..Default::default() } };
    tracing::info!(grpc = %grpc_addr, http = %http_addr, server = ?sdk.server().metadata.name, "SDK server listening");
    let router = http::router(services.clone());
    let artifacts = async {
        match config.artifacts_dir {
            Some(dir) => artifacts::follow(sdk.clone(), dir).await,
            None => std::future::pending().await,
        }
    };
    let stop = shutdown_signal();
    let stop = futures::FutureExt::shared(stop);
    tokio::select! {
        r = grpc::serve(grpc_listener, services, stop.clone()) => r.context("gRPC server")?,
        r = axum::serve(http_listener, router).with_graceful_shutdown(stop.clone()) => r.context("REST server")?,
        r = backend_task => r?,
        // Health checking off returns at once; the sidecar serves on.
        () = async { sdk.clone().check_health().await; std::future::pending().await } => {}
        () = artifacts => {}
    }
    tracing::info!("SDK server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
}
