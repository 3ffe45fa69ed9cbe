//! The sidecar's GameServer in the API server: read and watched by name, written as merge
//! patches with field manager [`super::FIELD_MANAGER`] and a resourceVersion precondition.

use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::Value;

use super::writer::{Backend, Part, Sdk, WRITE_EVERY};
use super::{Error, FIELD_MANAGER, Result};
use crate::api::GameServer;

/// One GameServer in the API server.
#[derive(Clone)]
pub struct Kube {
    api: Api<GameServer>,
    name: String,
}

impl Kube {
    /// The GameServer `namespace/name`.
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Kube { api: Api::namespaced(client, namespace), name: name.into() }
    }
}

fn conflict(e: kube::Error) -> Error {
    match e {
        kube::Error::Api(ref s) if s.code == 409 => Error::Conflict,
        e => Error::Kube(e),
    }
}

impl Backend for Kube {
    async fn get(&self) -> Result<GameServer> {
        Ok(self.api.get(&self.name).await?)
    }

    async fn patch(&self, _resource_version: &str, part: Part, body: Value) -> Result<GameServer> {
        // The body carries metadata.resourceVersion: the API server refuses it with 409 when
        // the object moved on.
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let patch = Patch::Merge(&body);
        match part {
            Part::Metadata => self.api.patch(&self.name, &params, &patch).await,
            Part::Status => self.api.patch_status(&self.name, &params, &patch).await,
        }
        .map_err(conflict)
    }
}

/// Watches the one GameServer (by name: the sidecar may read no other) and writes what the
/// process asks for, until the watch ends.
pub async fn run(sdk: Arc<Sdk>, backend: Kube) -> anyhow::Result<()> {
    let watch =
        watcher(backend.api.clone(), watcher::Config::default().fields(&format!("metadata.name={}", backend.name)))
            .default_backoff()
            .applied_objects()
            .for_each(|event| {
                match event {
                    Ok(gs) => sdk.observe(gs),
                    Err(e) => tracing::warn!(error = %e, "GameServer watch failed; retrying"),
                }
                futures::future::ready(())
            });
    tokio::select! {
        () = watch => {}
        () = sdk.clone().write_loop(backend, WRITE_EVERY) => {}
    }
    Ok(())
}
