//! Local development without a cluster: the GameServer lives in memory, loaded from a file
//! (or a default one), and edits of the file are pushed to watchers as they are saved. A
//! WebhookConfiguration file, when given, is polled as in a cluster, and followed the same way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::writer::{Memory, Sdk, WRITE_EVERY};
use super::{Error, Result};
use crate::api::{
    GameServer, GameServerSpec, GameServerStatus, PortStatus, ServerState, WebhookConfiguration,
    WebhookConfigurationSpec,
};

/// How often the file is checked for edits.
const POLL: Duration = Duration::from_millis(250);

/// The GameServer of `file`, or a default one (`local`, Ready at 127.0.0.1:7777).
pub fn load(file: Option<&Path>) -> Result<GameServer> {
    let Some(path) = file else { return Ok(default_server()) };
    let err = |message: String| Error::File { path: path.into(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let mut gs: GameServer = serde_yaml::from_str(&text)
        .map_err(|e| err(format!("is not a GameServer (apiVersion gamezone.dev/v1alpha1): {e}")))?;
    gs.metadata.namespace.get_or_insert_with(|| "default".into());
    gs.metadata.uid.get_or_insert_with(|| "local".into());
    Ok(gs)
}

/// The WebhookConfiguration of `path`. Its webhooks must name a `url`: without a cluster, a
/// `service` has no address.
pub fn load_webhooks(path: &Path) -> Result<WebhookConfigurationSpec> {
    let err = |message: String| Error::File { path: path.into(), message };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let config: WebhookConfiguration = serde_yaml::from_str(&text)
        .map_err(|e| err(format!("is not a WebhookConfiguration (apiVersion gamezone.dev/v1alpha1): {e}")))?;
    if let Some(w) = config.spec.webhooks.iter().find(|w| w.client_config.url.is_none()) {
        return Err(err(format!(
            "webhook {:?} names a service; without a cluster give it clientConfig.url (e.g. http://127.0.0.1:8000/ready)",
            w.name
        )));
    }
    Ok(config.spec)
}

fn default_server() -> GameServer {
    let mut gs = GameServer::new("local", GameServerSpec::default());
    gs.metadata.namespace = Some("default".into());
    gs.metadata.uid = Some("local".into());
    gs.status = Some(GameServerStatus {
        state: Some(ServerState::Ready),
        address: Some("127.0.0.1".into()),
        node_address: Some("127.0.0.1".into()),
        ports: vec![PortStatus { name: "default".into(), port: 7777, container_port: 7777, ..Default::default() }],
        ..Default::default()
    });
    gs
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Calls `changed` with what `load` makes of `path` each time the file changes, until
/// stopped; a file that cannot be read keeps the last (`what` names it in the warning).
async fn follow<T>(path: &Path, what: &str, load: impl Fn(&Path) -> Result<T>, mut changed: impl FnMut(T)) {
    let mut seen = (modified(path), std::fs::read(path).ok());
    loop {
        tokio::time::sleep(POLL).await;
        let now = (modified(path), std::fs::read(path).ok());
        if now == seen {
            continue;
        }
        seen = now;
        match load(path) {
            Ok(value) => {
                tracing::info!(file = %path.display(), "{what} file changed");
                changed(value);
            }
            Err(e) => tracing::warn!(error = %e, "{what} file changed but could not be read; keeping the last"),
        }
    }
}

/// Writes what the process asks for into memory, follows edits of `file`, and polls the
/// webhooks of the configuration `webhooks` names (its file, and what it held at start),
/// following its edits, until stopped.
pub async fn run(
    sdk: Arc<Sdk>,
    memory: Arc<Memory>,
    file: Option<PathBuf>,
    webhooks: Option<(PathBuf, WebhookConfigurationSpec)>,
) -> anyhow::Result<()> {
    let writes = sdk.clone().write_loop(memory.clone(), WRITE_EVERY);
    let server_file = async {
        let Some(path) = file else { return std::future::pending().await };
        // The file is the truth for everything but what the process set, which the writer
        // puts back.
        follow(&path, "GameServer", |p| load(Some(p)), |gs| sdk.observe(memory.replace(&gs))).await;
    };
    let gates = async {
        let Some((path, config)) = webhooks else { return std::future::pending().await };
        let (configs, configs_rx) = watch::channel(Some(config));
        let poll = super::webhooks::run(sdk.clone(), configs_rx);
        let file = follow(&path, "WebhookConfiguration", load_webhooks, |c| {
            configs.send_replace(Some(c));
        });
        tokio::select! {
            () = poll => {}
            () = file => {}
        }
    };
    tokio::select! {
        () = writes => {}
        () = server_file => {}
        () = gates => {}
    }
    Ok(())
}
