//! The sidecar's command line: `gamezone-sdk`, and the same flags as `gamezone sdk`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use gamezone_telemetry::LogFormat;

/// `gamezone-sdk`: the SDK sidecar in a binary of its own, what game pods run; the same flags as
/// `gamezone sdk`. Every game pod maps it, so it holds only the sidecar, not the operator.
#[derive(Debug, Parser)]
#[command(name = "gamezone-sdk", version)]
pub struct SdkCli {
    /// Log format.
    #[arg(long, value_enum, default_value = "auto", env = "GAMEZONE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(flatten)]
    pub sdk: SdkArgs,
}

impl SdkCli {
    /// The sidecar's runtime: one thread (it serves one process; fewer stacks and arenas).
    pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    }

    /// Serves the SDK until the pod ends.
    pub async fn run(self) -> anyhow::Result<()> {
        run(self.sdk).await
    }
}

#[derive(Debug, clap::Args)]
pub struct SdkArgs {
    /// gRPC port, on loopback.
    #[arg(long, default_value_t = crate::GRPC_PORT, env = "GAMEZONE_SDK_GRPC_PORT")]
    grpc_port: u16,
    /// REST port, on loopback.
    #[arg(long, default_value_t = crate::HTTP_PORT, env = "GAMEZONE_SDK_HTTP_PORT")]
    http_port: u16,
    /// Serve without a cluster: the GameServer lives in memory (from --file), every call is logged.
    #[arg(long)]
    local: bool,
    /// With --local: a GameServer YAML or JSON file, watched for edits; a default server when absent.
    #[arg(short = 'f', long, requires = "local")]
    file: Option<PathBuf>,
    /// With --local: a WebhookConfiguration YAML or JSON file, watched for edits; its webhooks
    /// (by `url`) are polled and set the server's gates as in a cluster.
    #[arg(long, requires = "local")]
    webhooks: Option<PathBuf>,
    /// Kubeconfig to use outside a cluster; in-cluster config when empty.
    #[arg(long, conflicts_with = "local")]
    kubeconfig: Option<PathBuf>,
    /// The GameServer this sidecar serves (the pod's server, from the downward API).
    #[arg(long, env = "GAMEZONE_SERVER", required_unless_present = "local")]
    server: Option<String>,
    /// Its namespace.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    namespace: String,
    /// UID of the pod this sidecar runs in (downward API), written with what the game says so
    /// the operator never takes a replaced pod's words for its successor's.
    #[arg(long, env = "GAMEZONE_POD_UID", conflicts_with = "local")]
    pod_uid: Option<String>,
    /// The artifacts volume, read-only: the digest of its current tree is shown to the game.
    #[arg(long, env = "GAMEZONE_ARTIFACTS_DIR")]
    artifacts_dir: Option<PathBuf>,
}

/// Serves the SDK for `args` until the pod ends: the `gamezone sdk` command and `gamezone-sdk`.
pub async fn run(args: SdkArgs) -> anyhow::Result<()> {
    let mode = if args.local {
        crate::Mode::Local { file: args.file, webhooks: args.webhooks }
    } else {
        let name = args.server.context("--server (GAMEZONE_SERVER) names the GameServer to serve")?;
        let mut config = kube_config(args.kubeconfig.as_deref()).await?;
        let agent = format!("gamezone-sdk/{} ({}/{name})", env!("CARGO_PKG_VERSION"), args.namespace);
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_str(&agent)
                .with_context(|| format!("--server {name:?} is not valid in a header"))?,
        ));
        crate::Mode::Cluster {
            client: kube::Client::try_from(config)?,
            namespace: args.namespace,
            name,
            pod_uid: args.pod_uid,
        }
    };
    crate::run(crate::Config {
        mode,
        grpc_port: args.grpc_port,
        http_port: args.http_port,
        artifacts_dir: args.artifacts_dir,
    })
    .await
}

/// The client configuration: from `path`, else `$KUBECONFIG` or the pod's own.
pub async fn kube_config(path: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    Ok(match path {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or run in a cluster")?,
    })
}
