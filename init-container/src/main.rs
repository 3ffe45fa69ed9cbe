//! `gamezone-init`: resolve, apply or watch a layer plan. Parsing and telemetry only; the work is
//! in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use gamezone_init::apply::{ApplyOptions, apply};
use gamezone_init::creds::DirCredentials;
use gamezone_init::egress::Egress;
use gamezone_init::hook::SwapHook;
use gamezone_init::oci::{self, Registry};
use gamezone_init::progress::{BarProgress, LogProgress, Progress};
use gamezone_init::retry::RetryPolicy;
use gamezone_init::watch::WatchOptions;
use gamezone_init::{Error, Limits, plan, resolve};

#[derive(Parser)]
#[command(
    name = "gamezone-init",
    version,
    about = "Layers git, S3 and p4-export artifacts into a directory, atomically"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct PlanArgs {
    /// Plan file (JSON or YAML list of layers); wins over --plan-json.
    #[arg(long)]
    plan: Option<PathBuf>,
    /// Plan as JSON text.
    #[arg(long, env = "GAMEZONE_LAYERS", hide_env_values = true)]
    plan_json: Option<String>,
    /// Directory with mounted Secrets: <dir>/<secret>/<key>.
    #[arg(long, env = "GAMEZONE_SECRETS_DIR", default_value = "/var/run/secrets/gamezone")]
    secrets_dir: PathBuf,
    /// Attempts for transient network failures (1 = no retry).
    #[arg(long, env = "GAMEZONE_RETRIES", default_value_t = 5)]
    retries: u32,
    /// Total time one layer may take to resolve, retries included.
    #[arg(long, env = "GAMEZONE_RESOLVE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    resolve_timeout: Duration,
    /// Total time one layer's fetch may take, retries included.
    #[arg(long, env = "GAMEZONE_FETCH_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    fetch_timeout: Duration,
    #[command(flatten)]
    egress: EgressArgs,
}

/// The egress policy (what `Egress::to_args` writes).
#[derive(Args)]
struct EgressArgs {
    /// Also allow these addresses: a CIDR, an IP or a host name (repeatable, comma-separated).
    /// Loopback, link-local/metadata, unspecified, multicast and broadcast addresses are refused otherwise.
    #[arg(long = "allow-egress", env = "GAMEZONE_ALLOW_EGRESS", value_delimiter = ',')]
    allow: Vec<String>,
    /// Never connect to this ip:port, whatever --allow-egress says (repeatable).
    #[arg(long = "deny-egress", value_delimiter = ',')]
    deny: Vec<std::net::SocketAddr>,
    /// Read file:// URLs, plain paths and `local` layers (local development only).
    #[arg(long, env = "GAMEZONE_ALLOW_LOCAL_SOURCES")]
    allow_local_sources: bool,
}

#[derive(Args)]
struct TreeArgs {
    /// Destination root: holds `current`, `.trees/` and `.gamezone-state.json`.
    #[arg(long, env = "GAMEZONE_ROOT")]
    root: PathBuf,
    /// Cap on bytes written (archive bombs).
    #[arg(long, env = "GAMEZONE_MAX_BYTES")]
    max_bytes: Option<u64>,
    /// Cap on files written.
    #[arg(long, env = "GAMEZONE_MAX_FILES")]
    max_files: Option<u64>,
    /// Directory of live edits, layered on top of the plan's layers.
    #[arg(long, env = "GAMEZONE_EDITS_DIR")]
    edits: Option<PathBuf>,
}

/// The registry of packed layers (`gamezone-init pack`).
#[derive(Args)]
struct RegistryArgs {
    /// Repository of packed layers, `host[:port]/path`: `pack` pushes there, `apply` copies
    /// every layer from there and never from its origin.
    #[arg(long = "registry", env = "GAMEZONE_REGISTRY")]
    repository: Option<String>,
    /// Speak plain HTTP to the registry (one on loopback or in the cluster without TLS).
    #[arg(long, env = "GAMEZONE_REGISTRY_PLAIN_HTTP")]
    registry_plain_http: bool,
    /// Docker config JSON with the registry's credentials (a dockerconfigjson Secret's
    /// `.dockerconfigjson`); anonymous without.
    #[arg(long, env = "GAMEZONE_REGISTRY_AUTH")]
    registry_auth: Option<PathBuf>,
}

impl RegistryArgs {
    fn registry(&self) -> anyhow::Result<Option<Registry>> {
        let Some(repository) = &self.repository else { return Ok(None) };
        let o = oci::RegistryOptions::with_docker_config(
            repository,
            self.registry_plain_http,
            self.registry_auth.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("--registry-auth {e}"))?;
        Ok(Some(Registry::new(&o)?))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Print the exact revision of every layer as JSON.
    Resolve(PlanArgs),
    /// Build the tree for pinned revisions (resolving first when none are given) and swap it in.
    Apply {
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        tree: TreeArgs,
        /// Pinned revisions: the JSON `resolve` prints, or a list of strings (`@FILE` reads a file).
        #[arg(long, env = "GAMEZONE_REVISIONS")]
        revisions: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Fetch each layer at its pin from its origin once and push it to the registry as one OCI
    /// layer; layers the registry holds already are not fetched. Prints what it did as JSON.
    Pack {
        #[command(flatten)]
        plan: PlanArgs,
        /// Work directory: each layer is built and written as a tar here (twice its size).
        #[arg(long, env = "GAMEZONE_ROOT")]
        root: PathBuf,
        /// Pinned revisions, as `apply` takes them (required: a pack is of pins).
        #[arg(long, env = "GAMEZONE_REVISIONS")]
        revisions: String,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Also write `{"layers": [{digest, size}, …], "tree": {image, treeDigest}}` (the layers in
        /// plan order) as one JSON line to this file (a pod's termination message: the operator
        /// records it in the zone's status).
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Check the tree an `image` volume mounted at --image against the pinned tree (its shape
    /// from metadata with --tree-shape, else its digest with every file read), then make it
    /// the current tree of --root with a state file, as `apply` would. A wrong or empty mount
    /// fails with "image volume mounted wrong".
    Mount {
        #[command(flatten)]
        plan: PlanArgs,
        /// The artifacts volume: `current` and the state file go here.
        #[arg(long, env = "GAMEZONE_ROOT")]
        root: PathBuf,
        /// Where the image volume is mounted.
        #[arg(long)]
        image: PathBuf,
        /// The digest of the pinned tree (`treeDigest` of `pack --report`).
        #[arg(long)]
        tree_digest: String,
        /// The shape of the pinned tree (`treeShape` of `pack --report`): checked instead of
        /// reading every file.
        #[arg(long)]
        tree_shape: Option<String>,
        /// Pinned revisions, as `apply` takes them (recorded in the state file).
        #[arg(long, env = "GAMEZONE_REVISIONS")]
        revisions: String,
    },
    /// Resolve and apply on an interval; local sources are applied as soon as they change.
    Watch {
        #[command(flatten)]
        plan: PlanArgs,
        #[command(flatten)]
        tree: TreeArgs,
        /// Time between resolves, e.g. 30s, 5m.
        #[arg(long, env = "GAMEZONE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// How long the edits directory must stay unchanged before its edits are applied.
        #[arg(long, env = "GAMEZONE_EDITS_QUIET", default_value = "2s", value_parser = humantime::parse_duration)]
        edits_quiet: Duration,
        /// How often the edits directory is scanned (inotify does not see writers on other hosts).
        #[arg(long, env = "GAMEZONE_EDITS_POLL", default_value = "1s", value_parser = humantime::parse_duration)]
        edits_poll: Duration,
        /// Command run with `sh -c` after each swap (sees GAMEZONE_TREE, GAMEZONE_TREE_DIGEST,
        /// GAMEZONE_CURRENT, GAMEZONE_EDITS_REVISION).
        #[arg(long, env = "GAMEZONE_ON_SWAP_EXEC")]
        on_swap_exec: Option<String>,
        /// Signal sent after each swap to the pid in --on-swap-pid-file (HUP, USR1, ...).
        #[arg(long, env = "GAMEZONE_ON_SWAP_SIGNAL", requires = "on_swap_pid_file", value_parser = gamezone_init::hook::parse_signal)]
        on_swap_signal: Option<rustix::process::Signal>,
        /// File holding the pid of the process to signal.
        #[arg(long, env = "GAMEZONE_ON_SWAP_PID_FILE", requires = "on_swap_signal")]
        on_swap_pid_file: Option<PathBuf>,
        /// How long the swap command may run before it is killed.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        on_swap_timeout: Duration,
        /// Pinned revisions to keep (as `apply` takes them): never resolve, only apply edits.
        #[arg(long, env = "GAMEZONE_REVISIONS")]
        revisions: Option<String>,
        /// Copy the edits status to this file after each round (e.g. on the edits volume).
        #[arg(long, env = "GAMEZONE_EDITS_REPORT")]
        edits_report: Option<PathBuf>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Write a p4-export-format archive and manifest from a directory (for tests and development).
    MakeP4Export {
        /// Directory to export.
        #[arg(long)]
        from: PathBuf,
        /// Archive to write (.tar, .tar.gz or .tar.zst); the manifest goes beside it.
        #[arg(long)]
        out: PathBuf,
        /// Changelist recorded in the manifest.
        #[arg(long, default_value_t = 1)]
        changelist: u64,
        /// Depot path prefix recorded in the manifest.
        #[arg(long, default_value = "//depot")]
        depot_root: String,
    },
}

fn layers(p: &PlanArgs) -> anyhow::Result<Vec<plan::Layer>> {
    let text = match (&p.plan, &p.plan_json) {
        (Some(f), _) => std::fs::read_to_string(f).with_context(|| format!("read plan {}", f.display()))?,
        (None, Some(j)) => j.clone(),
        (None, None) => {
            anyhow::bail!("no plan: pass --plan FILE, --plan-json JSON or set GAMEZONE_LAYERS")
        }
    };
    Ok(plan::parse_layers(&text)?)
}

fn options(
    p: &PlanArgs,
    t: &TreeArgs,
    layers: Vec<plan::Layer>,
    revisions: Vec<String>,
    tty: bool,
) -> anyhow::Result<ApplyOptions> {
    let mut o = ApplyOptions::new(layers, revisions, &t.root, Arc::new(DirCredentials::new(&p.secrets_dir)));
    o.progress =
        if tty { Arc::new(BarProgress::default()) as Arc<dyn Progress> } else { Arc::new(LogProgress::default()) };
    let d = Limits::default();
    o.limits = Limits { max_bytes: t.max_bytes.unwrap_or(d.max_bytes), max_files: t.max_files.unwrap_or(d.max_files) };
    o.retry = p.retry_policy();
    o.edits = t.edits.clone();
    o.egress = p.egress()?;
    o.resolve_deadline = p.resolve_timeout;
    o.fetch_deadline = p.fetch_timeout;
    Ok(o)
}

impl PlanArgs {
    /// Retries of transient failures as `--retries` asks.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy { attempts: self.retries.max(1), ..RetryPolicy::default() }
    }

    /// The egress policy as the flags ask.
    fn egress(&self) -> anyhow::Result<Egress> {
        let e = &self.egress;
        Ok(Egress::strict()
            .allow(&e.allow)
            .map_err(anyhow::Error::msg)?
            .deny(&e.deny)
            .allow_local_sources(e.allow_local_sources))
    }
}

/// `--revisions`: JSON text, or `@FILE` holding it.
fn revisions_arg(r: &str) -> anyhow::Result<Vec<String>> {
    Ok(match r.strip_prefix('@') {
        Some(file) => {
            resolve::parse_revisions(&std::fs::read_to_string(file).with_context(|| format!("read {file}"))?)?
        }
        None => resolve::parse_revisions(r)?,
    })
}

async fn run(cli: Cli, tty: bool) -> anyhow::Result<()> {
    match cli.command {
        Command::Resolve(p) => {
            let layers = layers(&p)?;
            let o = resolve::Options { retry: p.retry_policy(), egress: p.egress()?, deadline: p.resolve_timeout };
            let revs = resolve::resolve_opts(&layers, &DirCredentials::new(&p.secrets_dir), &o).await?;
            println!("{}", serde_json::to_string(&revs)?);
        }
        Command::Apply { plan, tree, revisions, registry } => {
            let layers = layers(&plan)?;
            let revisions = match revisions.filter(|r| !r.trim().is_empty()) {
                Some(r) => revisions_arg(&r)?,
                // Not pinned: `apply` resolves each layer and reuses what it fetched to do so.
                None => vec![String::new(); layers.len()],
            };
            let mut o = options(&plan, &tree, layers, revisions, tty)?;
            o.registry = registry.registry()?;
            let s = apply(o).await?;
            tracing::info!(
                unchanged = s.unchanged,
                layers = s.layers,
                files = s.files,
                bytes = s.bytes,
                elapsed_ms = s.elapsed_ms,
                tree_digest = %s.tree_digest,
                tree = %s.tree.display(),
                written_bytes = s.written_bytes,
                linked_files = s.linked_files,
                edits_revision = s.edits_revision.as_deref(),
                refused = s.refused.as_ref().map(|r| r.path.as_str()),
                "summary"
            );
        }
        Command::Watch {
            plan,
            tree,
            interval,
            edits_quiet,
            edits_poll,
            on_swap_exec,
            on_swap_signal,
            on_swap_pid_file,
            on_swap_timeout,
            revisions,
            edits_report,
            registry,
        } => {
            let layers = layers(&plan)?;
            let pinned = revisions.filter(|r| !r.trim().is_empty()).map(|r| revisions_arg(&r)).transpose()?;
            let mut opts = options(&plan, &tree, layers, Vec::new(), tty)?;
            opts.registry = registry.registry()?;
            let w = WatchOptions {
                pinned,
                report: edits_report,
                interval,
                quiet: edits_quiet,
                poll: edits_poll,
                hook: SwapHook {
                    exec: on_swap_exec,
                    signal: on_swap_signal,
                    pid_file: on_swap_pid_file,
                    timeout: on_swap_timeout,
                },
            };
            gamezone_init::watch::watch(opts, w, shutdown()).await?;
        }
        Command::Pack { plan, root, revisions, registry, report } => {
            let Some(registry) = registry.registry()? else {
                anyhow::bail!("pack needs --registry host[:port]/path (or GAMEZONE_REGISTRY)");
            };
            let layers = layers(&plan)?;
            let tree = TreeArgs { root, max_bytes: None, max_files: None, edits: None };
            let o = options(&plan, &tree, layers, revisions_arg(&revisions)?, tty)?;
            let packed = oci::pack(&o, &registry).await?;
            println!("{}", serde_json::to_string(&packed)?);
            if let Some(file) = report {
                let layers: Vec<_> =
                    packed.layers.iter().map(|p| serde_json::json!({"digest": p.digest, "size": p.size})).collect();
                let report = serde_json::json!({"layers": layers, "tree": packed.tree});
                std::fs::write(&file, report.to_string())
                    .with_context(|| format!("write --report {}", file.display()))?;
            }
        }
        Command::Mount { plan, root, image, tree_digest, tree_shape, revisions } => {
            let pinned =
                gamezone_init::mounted::Pinned { tree_digest: &tree_digest, tree_shape: tree_shape.as_deref() };
            let state =
                gamezone_init::mounted::adopt(&root, &image, pinned, &layers(&plan)?, revisions_arg(&revisions)?)?;
            println!("{}", serde_json::to_string(&state)?);
        }
        Command::MakeP4Export { from, out, changelist, depot_root } => {
            let m = gamezone_init::p4export::write_export(&from, &out, changelist, &depot_root, 1)
                .with_context(|| format!("export {} to {}", from.display(), out.display()))?;
            println!(
                "{}",
                serde_json::json!({"changelist": m.changelist, "archiveSha256": m.archive_sha256, "files": m.files.len()})
            );
        }
    }
    Ok(())
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let tty = std::io::stderr().is_terminal();
    gamezone_telemetry::init(gamezone_telemetry::LogFormat::Auto);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli, tty)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let transient = e.downcast_ref::<Error>().is_some_and(Error::is_transient);
            let layer = e.downcast_ref::<Error>().and_then(Error::layer);
            tracing::error!(error = %format!("{e:#}"), layer, transient, "failed");
            // 75 = EX_TEMPFAIL: worth running again as is.
            if transient { ExitCode::from(75) } else { ExitCode::FAILURE }
        }
    }
}
