//! Command-line interface of the `gamezone` binary.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kube::ResourceExt;

use crate::api::GameZone;
use crate::controller;
use crate::controller::leader::{self, LeaseConfig};
use crate::webhook::{self, FeatureGates};
use crate::zone::{self, BuildConfig};
use gamezone_telemetry::LogFormat;

/// GameZone: one object in, a running game zone out.
#[derive(Debug, Parser)]
#[command(name = "gamezone", version)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "auto", env = "GAMEZONE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
    /// Print, offline, every object a GameZone file would create.
    Render(RenderArgs),
    /// Run the SDK sidecar of a game server pod (Agones and Carrier clients work unchanged).
    Sdk(gamezone_sdk::cli::SdkArgs),
    /// Live edits of a test zone: status, reset, save to git (and `serve`, the share's process).
    #[command(subcommand)]
    Edits(EditsCommand),
    /// Draw a zone for a person at a terminal: servers by type, version and state, what each
    /// waits for, the artifact pins, recent Events; `-w` follows it live.
    Status(StatusArgs),
    /// The artifact registry: `prune` deletes the packed trees and layers no zone uses.
    #[command(subcommand)]
    Registry(RegistryCommand),
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The zone.
    zone: String,
    /// Its namespace; the kubeconfig's when empty.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Follow the zone live, redrawing every second, until Ctrl-C or the zone is deleted.
    #[arg(long, short = 'w')]
    watch: bool,
    /// Kubeconfig to use; $KUBECONFIG or in-cluster config when empty.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum RegistryCommand {
    /// Delete every packed tree image (`t-` tag) and layer (`l-` tag) that no GameZone of the
    /// cluster uses now (its `status.treeImage` and packed layers); their blobs go at the
    /// registry's next garbage collection. Other tags are never touched. A version pruned here
    /// is packed again from its origins if a zone goes back to it.
    Prune(PruneArgs),
}

#[derive(Debug, clap::Args)]
struct PruneArgs {
    /// The artifact registry's repository, `host[:port]/path`, as the operator's flag names it.
    #[arg(long, env = "GAMEZONE_ARTIFACT_REGISTRY")]
    artifact_registry: String,
    /// Speak plain HTTP to it.
    #[arg(long, env = "GAMEZONE_ARTIFACT_REGISTRY_PLAIN_HTTP")]
    artifact_registry_plain_http: bool,
    /// Docker config JSON with credentials that may delete (a dockerconfigjson Secret's
    /// `.dockerconfigjson`); anonymous without.
    #[arg(long)]
    registry_auth: Option<PathBuf>,
    /// Print what would go; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Kubeconfig to use; $KUBECONFIG or in-cluster config when empty.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum EditsCommand {
    /// Files changed against the pinned tree, per server, when, and the last refused edit.
    Status(EditsTarget),
    /// Drop every edit: the servers go back to the pinned tree.
    Reset(EditsTarget),
    /// Commit the edits (a tree of exactly them) to a git branch and push it.
    Save {
        #[command(flatten)]
        target: EditsTarget,
        /// Repository to push to (git's own credentials apply: helpers, ssh keys).
        #[arg(long)]
        git_url: String,
        /// Branch to push; the commit goes on top of it when it exists.
        #[arg(long)]
        branch: String,
        /// Commit message.
        #[arg(long, short = 'm')]
        message: Option<String>,
    },
    /// Run a zone's edits share: smbd and the edits API (the Samba pod's command).
    #[command(hide = true)]
    Serve {
        /// The edits claim's mount.
        #[arg(long, default_value = crate::zone::SERVER_ROOT)]
        root: PathBuf,
        /// The share's Secret, mounted (`username`, `password`).
        #[arg(long, default_value = crate::zone::SECRET_MOUNT)]
        secret_dir: PathBuf,
        /// smbd's state.
        #[arg(long, default_value = "/var/lib/gamezone-smb")]
        state_dir: PathBuf,
        /// SMB port.
        #[arg(long, default_value_t = 445)]
        smb_port: u16,
        /// Edits API port.
        #[arg(long, default_value_t = 8080)]
        api_port: u16,
        /// smbd.
        #[arg(long, default_value = "/usr/sbin/smbd")]
        smbd: PathBuf,
        /// smbpasswd.
        #[arg(long, default_value = "/usr/bin/smbpasswd")]
        smbpasswd: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct EditsTarget {
    /// The zone.
    zone: String,
    /// Its namespace; the kubeconfig's when empty.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Kubeconfig to use; $KUBECONFIG or in-cluster config when empty.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Kubeconfig to use; in-cluster config or $KUBECONFIG when empty.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Watch only this namespace; all when empty.
    #[arg(long, env = "GAMEZONE_NAMESPACE")]
    namespace: Option<String>,
    #[command(flatten)]
    build: BuildArgs,
    #[command(flatten)]
    fetch: FetchArgs,
    #[command(flatten)]
    tenancy: TenancyArgs,
    /// Reconciles at once per controller.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "GAMEZONE_HTTP_ADDR")]
    http_addr: SocketAddr,
    /// Host port ranges for the Dynamic and Passthrough policies, e.g. `7000-7999,9000-9099`.
    #[arg(long, default_value = "7000-7999", env = "GAMEZONE_PORT_RANGE")]
    port_range: String,
    /// Hold a Lease so that only one replica acts.
    #[arg(long, env = "GAMEZONE_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "gamezone-system")]
    lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "gamezone-operator")]
    lease_name: String,
    /// Seconds a Lease stays valid without renewal: how long followers wait before taking over.
    #[arg(long, default_value_t = 15, env = "GAMEZONE_LEASE_DURATION")]
    lease_duration: u64,
    /// Seconds the leader may go without renewing before it stops writing and exits; shorter
    /// than --lease-duration. Default: two thirds of it.
    #[arg(long, env = "GAMEZONE_LEASE_RENEW_DEADLINE")]
    lease_renew_deadline: Option<u64>,
    /// Seconds between attempts to take or renew the Lease; shorter than --lease-renew-deadline.
    /// Default: a fifth of the renew deadline.
    #[arg(long, env = "GAMEZONE_LEASE_RETRY_PERIOD")]
    lease_retry_period: Option<u64>,
    /// This replica's name in the Lease and in its user agent (`gamezone/<version> (<identity>)`).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Feature gates, `Name=true|false` separated by commas, e.g. `AutopilotPassthroughPort=true`.
    #[arg(long, default_value = "", env = "GAMEZONE_FEATURE_GATES")]
    feature_gates: String,
    /// Seconds a node may be not Ready (its kubelet unheard) before the servers on it are drained
    /// and moved as from a cordoned node; pods deleted there are then removed at once, since no
    /// kubelet confirms it. The node lifecycle controller first waits its own grace (about 50 s).
    #[arg(long, default_value_t = 60, env = "GAMEZONE_NODE_NOT_READY_GRACE")]
    node_not_ready_grace: u64,
    /// Serve the zone metrics (servers by zone, type, state and version; drains; migrations ...)
    /// at /metrics beside the controller's own; `false` leaves only the latter.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "GAMEZONE_ZONE_METRICS")]
    zone_metrics: bool,
    #[command(flatten)]
    webhook: WebhookArgs,
}

/// The passthrough webhook (served with `--feature-gates AutopilotPassthroughPort=true`).
#[derive(Debug, clap::Args)]
struct WebhookArgs {
    /// Address the webhook's HTTPS server listens on.
    #[arg(long, default_value = "0.0.0.0:9443", env = "GAMEZONE_WEBHOOK_ADDR")]
    webhook_addr: SocketAddr,
    /// Namespace of the Service in front of the webhook.
    #[arg(long, env = "POD_NAMESPACE", default_value = "gamezone-system")]
    webhook_service_namespace: String,
    /// Name of the Service in front of the webhook.
    #[arg(long, default_value = "gamezone-webhook")]
    webhook_service_name: String,
    /// Port of that Service.
    #[arg(long, default_value_t = 443)]
    webhook_service_port: u16,
    /// Reach the webhook at this https:// URL instead of the Service (an operator run outside the
    /// cluster), e.g. `https://127.0.0.1:9443/mutate-pods-passthrough`.
    #[arg(long, env = "GAMEZONE_WEBHOOK_URL")]
    webhook_url: Option<String>,
    /// Namespace of the webhook's TLS Secret (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "gamezone-system")]
    webhook_secret_namespace: String,
    /// Name of the webhook's TLS Secret, made and rotated by the leader.
    #[arg(long, default_value = "gamezone-webhook-tls")]
    webhook_secret_name: String,
    /// Seconds a new webhook certificate is valid.
    #[arg(long, default_value_t = 365 * 24 * 3600)]
    webhook_cert_validity: u64,
    /// Renew the webhook certificate this many seconds before it expires.
    #[arg(long, default_value_t = 30 * 24 * 3600)]
    webhook_cert_renew_before: u64,
    /// Seconds between checks of the webhook certificate and configuration.
    #[arg(long, default_value_t = 300)]
    webhook_check_interval: u64,
}

#[derive(Debug, clap::Args)]
struct BuildArgs {
    /// Image with the gamezone-init binary, run as the init-container of every pod with artifacts.
    #[arg(long, env = "GAMEZONE_INIT_IMAGE", default_value = "ghcr.io/gamezone-dev/gamezone:0.1.0")]
    init_image: String,
    /// Image of zones' edits shares (Debian's smbd and `gamezone edits serve`).
    #[arg(long, env = "GAMEZONE_SAMBA_IMAGE", default_value = zone::DEFAULT_SAMBA_IMAGE)]
    samba_image: String,
    /// An OCI repository, `host[:port]/path`, where a pack Job per zone version puts each
    /// artifact layer pin once, and from which every pod copies it (never from the origins);
    /// without it, every pod fetches from the origins.
    #[arg(long, env = "GAMEZONE_ARTIFACT_REGISTRY")]
    artifact_registry: Option<String>,
    /// Speak plain HTTP to the artifact registry (one in the cluster without TLS).
    #[arg(long, env = "GAMEZONE_ARTIFACT_REGISTRY_PLAIN_HTTP", requires = "artifact_registry")]
    artifact_registry_plain_http: bool,
    /// A `kubernetes.io/dockerconfigjson` Secret with the artifact registry's credentials, by
    /// name, in each zone's namespace: pack Jobs push with it, pods pull with it (and name it in
    /// their imagePullSecrets to mount the tree image). Anonymous without.
    #[arg(long, env = "GAMEZONE_ARTIFACT_REGISTRY_SECRET", requires = "artifact_registry")]
    artifact_registry_secret: Option<String>,
    /// How pods get a packed tree: `image` mounts it as an `image` volume (each layer held once
    /// per node by its container runtime; Kubernetes 1.35+ with containerd 2.1+ or CRI-O 1.31+),
    /// `copy` copies it from the registry into each pod, `auto` is `image` on an API server of
    /// 1.35 or later. Zones with live edits or sharedArtifacts always copy.
    #[arg(long, env = "GAMEZONE_ARTIFACT_MOUNT", value_enum, default_value_t = ArtifactMount::Auto)]
    artifact_mount: ArtifactMount,
}

/// `--artifact-mount`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ArtifactMount {
    Auto,
    Image,
    Copy,
}

/// Whether the API server's version has `image` volumes on by default (1.35 and later); an
/// unreadable version says no (pods then copy, which works everywhere).
async fn image_volumes_by_default(client: &kube::Client) -> bool {
    match client.apiserver_version().await {
        Ok(v) => {
            let minor: u32 = v.minor.trim_end_matches('+').parse().unwrap_or(0);
            let on = v.major == "1" && minor >= 35;
            tracing::info!(
                version = %v.git_version,
                "--artifact-mount auto: {}",
                if on { "pods mount packed trees as image volumes" } else { "pods copy packed trees (image volumes need 1.35+)" }
            );
            on
        }
        Err(e) => {
            tracing::warn!(error = %e, "--artifact-mount auto: cannot read the API server's version; pods copy packed trees");
            false
        }
    }
}

impl BuildArgs {
    /// What the zones' objects are built with; `init_args` are the pods' egress flags.
    fn config(&self, init_args: Vec<String>) -> anyhow::Result<BuildConfig> {
        let registry = match &self.artifact_registry {
            Some(given) => {
                let repository = gamezone_init::oci::check_repository(given)
                    .map_err(|why| anyhow::anyhow!("--artifact-registry {why}"))?;
                Some(zone::ArtifactRegistry {
                    repository,
                    plain_http: self.artifact_registry_plain_http,
                    image_volumes: self.artifact_mount != ArtifactMount::Copy,
                    secret: self.artifact_registry_secret.clone(),
                })
            }
            None => None,
        };
        Ok(BuildConfig {
            init_image: self.init_image.clone(),
            samba_image: self.samba_image.clone(),
            init_args,
            registry,
        })
    }
}

/// Where zones' artifact layers may be fetched from: their URLs are written by whoever may
/// create a GameZone, so by default the operator and the pods' init containers refuse loopback,
/// link-local (the clouds' metadata service), unspecified and multicast addresses, the cluster's
/// API server, and local paths.
#[derive(Debug, clap::Args)]
struct FetchArgs {
    /// Also allow these addresses or hosts: CIDRs (`10.0.0.0/8`), single IPs, host names;
    /// repeated or separated by commas. The API server's address stays refused.
    #[arg(long, env = "GAMEZONE_ALLOW_EGRESS", value_delimiter = ',')]
    allow_egress: Vec<String>,
    /// Allow `file://` URLs and plain paths as layer sources (local development only: they read
    /// the operator's and the nodes' own file systems).
    #[arg(long, env = "GAMEZONE_ALLOW_LOCAL_SOURCES")]
    allow_local_sources: bool,
    /// Seconds a zone's artifacts may take to resolve, whatever their servers do.
    #[arg(long, default_value_t = 60, env = "GAMEZONE_RESOLVE_TIMEOUT")]
    resolve_timeout: u64,
    /// The shortest `artifactsInterval` (seconds) a zone gets: a shorter one is stretched to it.
    #[arg(long, default_value_t = 30, env = "GAMEZONE_MIN_ARTIFACTS_INTERVAL")]
    min_artifacts_interval: u64,
}

/// What zones' authors may ask of the nodes: they are untrusted, and the operator makes their pods.
#[derive(Debug, clap::Args)]
struct TenancyArgs {
    /// Host ports a Static port may take; by default none below 1024, none of the node daemons'
    /// (10250-10259) and none of the NodePort range.
    #[arg(long, default_value = zone::tenancy::DEFAULT_STATIC_PORTS, env = "GAMEZONE_STATIC_PORTS")]
    static_ports: String,
    /// Let zones' pods tolerate control-plane taints and select control-plane nodes.
    #[arg(long, env = "GAMEZONE_ALLOW_CONTROL_PLANE")]
    allow_control_plane: bool,
    /// The most host ports the servers of one namespace may hold at once, so that one team cannot
    /// take every node's ports; no limit when empty.
    #[arg(long, env = "GAMEZONE_HOST_PORTS_PER_NAMESPACE")]
    host_ports_per_namespace: Option<usize>,
    /// Seconds a deleted zone's servers may drain (deletable gates, matches under way) before
    /// they are deleted anyway, so a gate no one opens cannot keep a zone for ever.
    #[arg(long, default_value_t = 3600, env = "GAMEZONE_DELETION_DRAIN_LIMIT")]
    deletion_drain_limit: u64,
}

impl FetchArgs {
    /// The fetch options, refusing the API server behind `cluster` whatever is allowed.
    fn options(&self, cluster: &http::Uri) -> anyhow::Result<gamezone_init::resolve::Options> {
        let egress = gamezone_init::egress::Egress::strict()
            .allow(&self.allow_egress)
            .map_err(|e| anyhow::anyhow!("--allow-egress: {e}"))?
            .deny(&api_server_addresses(cluster))
            .allow_local_sources(self.allow_local_sources);
        let deadline = Duration::from_secs(self.resolve_timeout.max(1));
        Ok(gamezone_init::resolve::Options { egress, deadline, ..Default::default() })
    }
}

/// The addresses of the cluster's API server: the client's URL and, in a pod, the
/// `kubernetes` Service's.
fn api_server_addresses(cluster: &http::Uri) -> Vec<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut found = Vec::new();
    if let Some(host) = cluster.host() {
        let port = cluster.port_u16().unwrap_or(443);
        found.extend((host.trim_matches(['[', ']']), port).to_socket_addrs().into_iter().flatten());
    }
    if let (Ok(host), Ok(port)) = (std::env::var("KUBERNETES_SERVICE_HOST"), std::env::var("KUBERNETES_SERVICE_PORT"))
        && let Ok(port) = port.parse::<u16>()
    {
        found.extend((host.as_str(), port).to_socket_addrs().into_iter().flatten());
    }
    found
}

#[derive(Debug, clap::Args)]
struct RenderArgs {
    /// The GameZone file (YAML or JSON); `-` for standard input.
    #[arg(short = 'f', long)]
    file: PathBuf,
    /// Pinned revisions, one per artifact layer: a JSON list of strings, or what
    /// `gamezone-init resolve` prints; unpinned (resolved by each init-container) when empty.
    #[arg(long)]
    revisions: Option<String>,
    /// Host port ranges the pods' Dynamic and Passthrough ports are taken from, as `run` takes them.
    #[arg(long, default_value = "7000-7999")]
    port_range: String,
    #[command(flatten)]
    build: BuildArgs,
}

impl Cli {
    /// The runtime for the chosen command: one thread for the SDK sidecar, which runs in every
    /// game pod and serves one process (fewer stacks and allocator arenas), and for the operator,
    /// whose work is mostly waiting on the API server: with a thread per core, waking idle
    /// threads for each watch event and parking them again was about 30% of its CPU while zones
    /// came up. All cores for the rest.
    pub fn runtime(&self) -> std::io::Result<tokio::runtime::Runtime> {
        match self.command {
            Command::Sdk(_) | Command::Run(_) => one_thread(),
            _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        }
    }

    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Crd => {
                print!("{}", crate::api::crds_yaml());
                Ok(())
            }
            Command::Render(args) => {
                print!("{}", render(&args)?);
                Ok(())
            }
            Command::Run(args) => run(*args).await,
            Command::Sdk(args) => gamezone_sdk::cli::run(args).await,
            Command::Edits(cmd) => edits(cmd).await,
            Command::Registry(RegistryCommand::Prune(args)) => prune(args).await,
            Command::Status(args) => status(args).await,
        }
    }
}

/// A runtime on the calling thread (blocking work still goes to tokio's blocking pool).
fn one_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

async fn run(mut args: RunArgs) -> anyhow::Result<()> {
    // An empty --namespace (or GAMEZONE_NAMESPACE) is every namespace, as its help says.
    args.namespace = args.namespace.filter(|ns| !ns.is_empty());
    // Flags first, so a bad one is reported before any connection is tried.
    let feature_gates: FeatureGates =
        args.feature_gates.parse().map_err(|e| anyhow::anyhow!("--feature-gates {:?}: {e}", args.feature_gates))?;
    let identity = args.identity.clone().unwrap_or_else(|| format!("gamezone-{}", std::process::id()));
    let lease = if args.leader_elect { Some(lease_config(&args, &identity)?) } else { None };
    let w = args.webhook;
    if let Some(url) = &w.webhook_url {
        anyhow::ensure!(url.starts_with("https://"), "--webhook-url {url:?} must start with https://");
    }
    let webhook = webhook::Config {
        addr: w.webhook_addr,
        endpoint: match w.webhook_url {
            Some(url) => webhook::Endpoint::Url(url),
            None => webhook::Endpoint::Service {
                namespace: w.webhook_service_namespace,
                name: w.webhook_service_name,
                port: w.webhook_service_port,
            },
        },
        secret_namespace: w.webhook_secret_namespace,
        secret_name: w.webhook_secret_name,
        cert_validity: Duration::from_secs(w.webhook_cert_validity),
        renew_before: Duration::from_secs(w.webhook_cert_renew_before),
        check_every: Duration::from_secs(w.webhook_check_interval.max(1)),
        watch_namespace: args.namespace.clone(),
    };
    let mut config = gamezone_sdk::cli::kube_config(args.kubeconfig.as_deref()).await?;
    let port_ranges =
        args.port_range.parse().map_err(|e| anyhow::anyhow!("--port-range {:?}: {e}", args.port_range))?;
    // The API server's audit log then tells replicas apart.
    let agent = format!("gamezone/{} ({identity})", env!("CARGO_PKG_VERSION"));
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_str(&agent)
            .with_context(|| format!("--identity {identity:?} is not valid in a header"))?,
    ));
    let fetch = args.fetch.options(&config.cluster_url)?;
    let client = leader::client(config, lease.as_ref().map(|l| &l.fence))?;
    let mut build = args.build.config(fetch.egress.to_args())?;
    if let Some(registry) = build.registry.as_mut().filter(|_| args.build.artifact_mount == ArtifactMount::Auto) {
        registry.image_volumes = image_volumes_by_default(&client).await;
    }
    controller::run(
        client,
        controller::Config {
            build,
            fetch,
            tenancy: zone::tenancy::Tenancy {
                static_ports: args
                    .tenancy
                    .static_ports
                    .parse()
                    .map_err(|e| anyhow::anyhow!("--static-ports {:?}: {e}", args.tenancy.static_ports))?,
                control_plane: args.tenancy.allow_control_plane,
            },
            host_ports_per_namespace: args.tenancy.host_ports_per_namespace,
            deletion_drain_limit: Duration::from_secs(args.tenancy.deletion_drain_limit),
            min_artifacts_interval: Duration::from_secs(args.fetch.min_artifacts_interval),
            node_not_ready_grace: Duration::from_secs(args.node_not_ready_grace),
            zone_metrics: args.zone_metrics,
            namespace: args.namespace,
            concurrency: args.concurrency,
            http_addr: args.http_addr,
            port_ranges,
            leader_election: lease,
            feature_gates,
            webhook: Some(webhook),
        },
    )
    .await
}

/// What the zones use of the artifact registry `repository`: their tree images (manifest
/// digests) and packed layers (blob digests).
fn registry_in_use(zones: &[GameZone], repository: &str) -> gamezone_init::prune::Keep {
    let mut keep = gamezone_init::prune::Keep::default();
    for status in zones.iter().filter_map(|z| z.status.as_ref()) {
        if let Some(digest) = status.tree_image.as_ref().and_then(|t| t.image.strip_prefix(&format!("{repository}@"))) {
            keep.trees.insert(digest.to_owned());
        }
        keep.layers.extend(status.artifacts.iter().filter_map(|a| Some(a.packed.as_ref()?.digest.clone())));
    }
    keep
}

async fn prune(args: PruneArgs) -> anyhow::Result<()> {
    let repository = gamezone_init::oci::check_repository(&args.artifact_registry)
        .map_err(|why| anyhow::anyhow!("--artifact-registry {why}"))?;
    let options = gamezone_init::oci::RegistryOptions::with_docker_config(
        &repository,
        args.artifact_registry_plain_http,
        args.registry_auth.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("--registry-auth {e}"))?;
    let registry = gamezone_init::oci::Registry::new(&options)?;
    let config = gamezone_sdk::cli::kube_config(args.kubeconfig.as_deref()).await?;
    let client = kube::Client::try_from(config)?;
    let zones = kube::Api::<GameZone>::all(client)
        .list(&Default::default())
        .await
        .context("list the GameZones of every namespace (what they use stays)")?
        .items;
    let keep = registry_in_use(&zones, &repository);
    eprintln!(
        "{} zone(s) use {} tree image(s) and {} layer(s) of {repository}",
        zones.len(),
        keep.trees.len(),
        keep.layers.len()
    );
    let pruned = gamezone_init::prune::prune(&registry, &keep, args.dry_run).await?;
    for t in &pruned.deleted {
        println!("{} {}:{} ({})", if args.dry_run { "would delete" } else { "deleted" }, repository, t.tag, t.digest);
    }
    eprintln!(
        "{} of {} tag(s) {}; their blobs go at the registry's next garbage collection \
         (CNCF Distribution: `registry garbage-collect CONFIG`)",
        pruned.deleted.len(),
        pruned.tags,
        if args.dry_run { "would be deleted" } else { "deleted" }
    );
    Ok(())
}

async fn edits(cmd: EditsCommand) -> anyhow::Result<()> {
    use crate::edits_api::client::EditsApi;
    let target = match &cmd {
        EditsCommand::Serve { root, secret_dir, state_dir, smb_port, api_port, smbd, smbpasswd } => {
            return crate::edits_api::server::serve(crate::edits_api::server::ServeConfig {
                root: root.clone(),
                secret_dir: secret_dir.clone(),
                state_dir: state_dir.clone(),
                smb_port: *smb_port,
                api_port: *api_port,
                smbd: smbd.clone(),
                smbpasswd: smbpasswd.clone(),
            })
            .await;
        }
        EditsCommand::Status(t) | EditsCommand::Reset(t) | EditsCommand::Save { target: t, .. } => t,
    };
    let config = gamezone_sdk::cli::kube_config(target.kubeconfig.as_deref()).await?;
    let ns = target.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)?;
    let zone = kube::Api::<GameZone>::namespaced(client.clone(), &ns)
        .get(&target.zone)
        .await
        .with_context(|| format!("zone {ns}/{}", target.zone))?;
    let api = EditsApi::of(client.clone(), &zone).await?;
    match cmd {
        EditsCommand::Status(_) => {
            let report = api.status().await.context("edits API (is the zone's edits pod running?)")?;
            print!("{}", crate::edits_api::describe(&zone, &report));
        }
        EditsCommand::Reset(_) => {
            let n = api.reset().await?;
            println!("removed {n} edit(s) from the share; the servers go back to the pinned tree once it is quiet");
        }
        EditsCommand::Save { git_url, branch, message, .. } => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut last = std::time::Instant::now();
            let tar = api
                .tar(|n| {
                    if last.elapsed() >= Duration::from_millis(if tty { 100 } else { 2000 }) {
                        last = std::time::Instant::now();
                        if tty {
                            eprint!("\rreceived {} KiB of edits", n / 1024);
                        } else {
                            eprintln!("received {n} bytes of edits");
                        }
                    }
                })
                .await?;
            if tty {
                eprintln!("\rreceived {} KiB of edits", tar.len() / 1024);
            }
            let work = tempfile::tempdir()?;
            let message = message.unwrap_or_else(|| format!("Live edits of zone {ns}/{}", target_zone(&zone)));
            let commit = crate::edits_api::save::save(&tar, &git_url, &branch, &message, work.path())?;
            println!("{commit}");
            eprintln!("pushed the edits as {commit} to {git_url} branch {branch}");
        }
        EditsCommand::Serve { .. } => unreachable!("handled above"),
    }
    Ok(())
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let config = gamezone_sdk::cli::kube_config(args.kubeconfig.as_deref()).await?;
    let namespace = args.namespace.unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config)?;
    let target = crate::status_view::Target { namespace, zone: args.zone };
    if args.watch {
        crate::status_view::follow(&client, &target).await
    } else {
        crate::status_view::print_once(&client, &target).await
    }
}

fn target_zone(zone: &GameZone) -> String {
    zone.name_any()
}

/// `--revisions`: a JSON list of revision strings, or `gamezone-init resolve`'s output.
fn parse_revisions(json: &str) -> anyhow::Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Resolved {
        revision: String,
    }
    if let Ok(list) = serde_json::from_str::<Vec<String>>(json) {
        return Ok(list);
    }
    let resolved: Vec<Resolved> = serde_json::from_str(json).context(
        "--revisions must be a JSON list of revision strings, e.g. [\"<commit>\"], or what `gamezone-init resolve` prints",
    )?;
    Ok(resolved.into_iter().map(|r| r.revision).collect())
}

/// The Lease settings from the flags, checked (retry period < renew deadline < duration).
fn lease_config(args: &RunArgs, identity: &str) -> anyhow::Result<LeaseConfig> {
    let duration = Duration::from_secs(args.lease_duration);
    let renew_deadline = args.lease_renew_deadline.map_or(duration * 2 / 3, Duration::from_secs);
    let retry_period = args.lease_retry_period.map_or(renew_deadline / 5, Duration::from_secs);
    leader::check_timing(duration, renew_deadline, retry_period).map_err(|e| {
        let flags = match e {
            leader::TimingError::RenewDeadline { .. } => "--lease-renew-deadline and --lease-duration",
            _ => "--lease-retry-period and --lease-renew-deadline",
        };
        anyhow::anyhow!("{flags}: {e}; e.g. --lease-duration 15 --lease-renew-deadline 10 --lease-retry-period 2")
    })?;
    Ok(LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.to_string(),
        duration,
        renew_deadline,
        retry_period,
        fence: leader::Fence::new(&args.lease_namespace, &args.lease_name, renew_deadline),
    })
}

fn render(args: &RenderArgs) -> anyhow::Result<String> {
    let text = if args.file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?
    };
    let mut zone: GameZone =
        serde_yaml::from_str(&text).with_context(|| format!("{} is not a GameZone", args.file.display()))?;
    if zone.namespace().is_none() {
        zone.metadata.namespace = Some("default".into());
    }
    let pins: Vec<String> = match &args.revisions {
        Some(json) => parse_revisions(json)?,
        None => vec![String::new(); zone.spec.artifacts.len()],
    };
    if pins.len() != zone.spec.artifacts.len() {
        anyhow::bail!(
            "--revisions has {} revision(s) but spec.artifacts has {} layer(s): give one per layer, in order",
            pins.len(),
            zone.spec.artifacts.len()
        );
    }
    let ranges = args.port_range.parse().map_err(|e| anyhow::anyhow!("--port-range {:?}: {e}", args.port_range))?;
    let cfg = args.build.config(Vec::new())?;
    zone::validate(&zone)?;
    // The tree image is known once packed: shown by name, so the pods read as they will.
    let tree = cfg.registry.as_ref().map(|r| gamezone_api::artifacts::TreeImage {
        image: format!("{}@<digest of the packed tree>", r.repository),
        tree_digest: "<digest of the packed tree>".into(),
        tree_shape: Some("<shape of the packed tree>".into()),
        ..Default::default()
    });
    let children = zone::children(&zone, &pins, tree.as_ref(), &cfg)?;
    let pods = gamezone_core::server::pods_on_an_empty_cluster(&children.servers, ranges)?;
    let mut docs: Vec<serde_json::Value> = Vec::new();
    // In the order a person reads them: who the pods run as, what they mount, what runs first.
    if let Some((account, role, binding)) = &children.sidecar_identity {
        docs.extend([serde_json::to_value(account)?, serde_json::to_value(role)?, serde_json::to_value(binding)?]);
    }
    if let Some(claim) = &children.artifacts_claim {
        docs.push(serde_json::to_value(claim)?);
    }
    if let Some((claim, deployment)) = &children.edits {
        docs.extend([serde_json::to_value(claim)?, serde_json::to_value(deployment)?]);
    }
    if let Some(job) = &children.pack {
        docs.push(serde_json::to_value(job)?);
    }
    if let Some(job) = &children.migration {
        docs.push(serde_json::to_value(job)?);
    }
    for gs in &children.servers {
        docs.push(serde_json::to_value(gs)?);
    }
    for svc in &children.services {
        docs.push(serde_json::to_value(svc)?);
    }
    docs.push(serde_json::to_value(&children.disruption_budget)?);
    let listed = children.servers.iter().zip(&pods).map(|(gs, (_, ports))| (gs.name_any(), ports.clone())).collect();
    docs.push(serde_json::to_value(zone::topology(&zone, &listed))?);
    for (pod, _) in pods {
        docs.push(serde_json::to_value(pod)?);
    }
    let mut out = String::new();
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease_from(flags: &[&str]) -> anyhow::Result<LeaseConfig> {
        let cli = Cli::try_parse_from(["gamezone", "run", "--leader-elect"].iter().chain(flags)).expect("flags parse");
        let Command::Run(args) = cli.command else { panic!("not run") };
        lease_config(&args, "replica-a")
    }

    #[test]
    fn lease_timing_defaults_follow_the_duration_and_bad_timings_name_the_flags() {
        let l = lease_from(&[]).unwrap();
        assert_eq!(
            (l.duration, l.renew_deadline, l.retry_period),
            (Duration::from_secs(15), Duration::from_secs(10), Duration::from_secs(2))
        );
        let l =
            lease_from(&["--lease-duration", "6", "--lease-renew-deadline", "4", "--lease-retry-period", "1"]).unwrap();
        assert_eq!((l.renew_deadline, l.retry_period), (Duration::from_secs(4), Duration::from_secs(1)));
        let e = lease_from(&["--lease-duration", "10", "--lease-renew-deadline", "10"]).unwrap_err().to_string();
        assert!(e.starts_with("--lease-renew-deadline and --lease-duration: "), "{e}");
        let e = lease_from(&["--lease-renew-deadline", "5", "--lease-retry-period", "5"]).unwrap_err().to_string();
        assert!(e.starts_with("--lease-retry-period and --lease-renew-deadline: "), "{e}");
    }
}
