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
use crate::api::{GameServer, WebhookConfiguration, WebhookConfigurationSpec};

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

/// Follows the WebhookConfiguration the server names (`spec.webhookConfig`), by name, into
/// `configs`: `None` while it names none or the object is absent. Its webhooks are polled by
/// [`super::webhooks::run`].
pub async fn follow_webhooks(
    sdk: Arc<Sdk>,
    client: kube::Client,
    namespace: String,
    configs: tokio::sync::watch::Sender<Option<WebhookConfigurationSpec>>,
) {
    let api: Api<WebhookConfiguration> = Api::namespaced(client, &namespace);
    let mut servers = sdk.subscribe();
    loop {
        let name = sdk.server().spec.lifecycle.webhook_config.clone();
        let Some(name) = name else {
            configs.send_if_modified(|c| c.take().is_some());
            if servers.changed().await.is_err() {
                return;
            }
            continue;
        };
        let follow = watcher(api.clone(), watcher::Config::default().fields(&format!("metadata.name={name}")))
            .default_backoff()
            .for_each(|event| {
                match event {
                    Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                        configs.send_if_modified(|old| {
                            let new = Some(c.spec);
                            let changed = *old != new;
                            *old = new;
                            changed
                        });
                    }
                    Ok(watcher::Event::Delete(_)) => {
                        tracing::warn!(config = %name, "WebhookConfiguration deleted; its webhooks are no longer polled");
                        configs.send_if_modified(|c| c.take().is_some());
                    }
                    Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
                    Err(e) => tracing::warn!(config = %name, error = %e, "WebhookConfiguration watch failed; retrying"),
                }
                futures::future::ready(())
            });
        let renamed = async {
            loop {
                if servers.changed().await.is_err() {
                    return;
                }
                if sdk.server().spec.lifecycle.webhook_config.as_ref() != Some(&name) {
                    return;
                }
            }
        };
        tokio::select! {
            () = follow => return,
            () = renamed => {}
        }
    }
}
