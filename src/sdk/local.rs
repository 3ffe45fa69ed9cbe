//! Local development without a cluster: the GameServer lives in memory, loaded from a file
//! (or a default one), and edits of the file are pushed to watchers as they are saved.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::writer::{Memory, Sdk, WRITE_EVERY};
use super::{Error, Result};
use crate::api::{GameServer, GameServerSpec, GameServerStatus, PortStatus, ServerState};

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

/// Writes what the process asks for into memory and follows edits of `file`, until stopped.
pub async fn run(sdk: Arc<Sdk>, memory: Arc<Memory>, file: Option<PathBuf>) -> anyhow::Result<()> {
    let writes = sdk.clone().write_loop(memory.clone(), WRITE_EVERY);
    let follow = async {
        let Some(path) = file else { return std::future::pending().await };
        let mut seen = (modified(&path), std::fs::read(&path).ok());
        loop {
            tokio::time::sleep(POLL).await;
            let now = (modified(&path), std::fs::read(&path).ok());
            if now == seen {
                continue;
            }
            seen = now;
            match load(Some(&path)) {
                Ok(gs) => {
                    tracing::info!(file = %path.display(), "GameServer file changed");
                    // The file is the truth for everything but what the process set, which the
                    // writer puts back.
                    sdk.observe(memory.replace(&gs));
                }
                Err(e) => tracing::warn!(error = %e, "GameServer file changed but could not be read; keeping the last"),
            }
        }
    };
    tokio::select! {
        () = writes => {}
        () = follow => {}
    }
    Ok(())
}
