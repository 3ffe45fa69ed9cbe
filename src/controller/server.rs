//! The server controller: GameServer → host ports → Pod → status (state, address, ports, node).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerPort, EnvVar, Pod};
use kube::api::{Api, DeleteParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::conditions;
use super::ports::{defer_passthrough, requests, server_key, status_of};
use super::{Context, apply, apply_status, key, requeue_after, scoped};
use crate::api::*;
use crate::ports::{AllocError, pod_ports, port_env};
use crate::webhook::patch::{final_ports, mark_pod};
use crate::zone::{TOPOLOGY_KEY, server_template_hash, topology_name};
use crate::{Error, Result};

const CONTROLLER: &str = "server";
/// Finalizer releasing a GameServer's host ports.
pub const SERVER_FINALIZER: &str = "gamezone.dev/ports";

/// Runs the server controller until shutdown.
pub async fn run(ctx: Arc<Context>) {
    let ns = &ctx.config.namespace;
    let client = &ctx.client;
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    Controller::new(scoped::<GameServer>(client, ns), watcher::Config::default())
        .owns(scoped::<Pod>(client, ns), owned)
        .with_config(kube::runtime::controller::Config::default().concurrency(ctx.config.concurrency))
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "server reconcile did not complete");
            }
        })
        .await;
}

fn error_policy(gs: Arc<GameServer>, err: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.error(CONTROLLER, err.reason());
    tracing::warn!(server = %key(gs.as_ref()), error = %err, "server reconcile failed");
    Action::requeue(requeue_after(err))
}

async fn reconcile(gs: Arc<GameServer>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start(CONTROLLER);
    let api: Api<GameServer> = Api::namespaced(ctx.client.clone(), &gs.namespace().unwrap_or_default());
    finalizer(&api, SERVER_FINALIZER, gs, |event| async {
        match event {
            Finalizer::Apply(gs) => reconcile_apply(&gs, &ctx).await,
            Finalizer::Cleanup(gs) => {
                let mut alloc = ctx.ports.lock().expect("allocator lock");
                alloc.release(&server_key(&gs));
                ctx.metrics.ports(&alloc.usage());
                Ok(Action::await_change())
            }
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(Box::new(other)),
    })
}

async fn reconcile_apply(gs: &GameServer, ctx: &Context) -> Result<Action> {
    let before = gs.status.clone().unwrap_or_default();
    let mut status = before.clone();
    status.observed_generation = gs.metadata.generation;
    let action = converge(gs, ctx, &mut status).await?;
    if status != before {
        // Routine steps (Creating, Scheduling, Starting) show in status; Events are kept for what a
        // person may look for, since each one is an API write.
        let noteworthy = matches!(
            status.state,
            Some(ServerState::Ready | ServerState::Unhealthy | ServerState::PortAllocation | ServerState::Updating)
        );
        if status.state != before.state && noteworthy {
            let warning = matches!(status.state, Some(ServerState::Unhealthy | ServerState::PortAllocation));
            let note = format!(
                "{:?}{}",
                status.state.unwrap_or(ServerState::Creating),
                status.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
            );
            ctx.event(gs, warning, &format!("{:?}", status.state.unwrap_or(ServerState::Creating)), note).await;
        }
        let api: Api<GameServer> = Api::namespaced(ctx.client.clone(), &gs.namespace().unwrap_or_default());
        apply_status(&api, &gs.name_any(), serde_json::to_value(&status)?).await?;
    }
    Ok(action)
}

async fn converge(gs: &GameServer, ctx: &Context, status: &mut GameServerStatus) -> Result<Action> {
    let generation = gs.metadata.generation;
    let name = gs.name_any();
    let ns = gs.namespace().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

    // 1. Host ports, before the pod exists, so the process can be told them.
    let key = server_key(gs);
    // With AutopilotPassthroughPort, the platform assigns Passthrough host ports at admission.
    let (wanted, deferred) =
        defer_passthrough(requests(&gs.spec.ports), ctx.config.feature_gates.autopilot_passthrough_port);
    let allocated = {
        let mut alloc = ctx.ports.lock().expect("allocator lock");
        let known = alloc.allocation(&key).is_some();
        let result = match alloc.allocate(&key, &wanted) {
            Err(AllocError::AlreadyAllocated { .. }) => {
                // The spec's ports changed: hand back the old ones and take new ones.
                alloc.release(&key);
                alloc.allocate(&key, &wanted)
            }
            other => other,
        };
        if !known {
            ctx.metrics.ports(&alloc.usage());
        }
        result
    };
    let allocations = match allocated {
        Ok(a) => a,
        Err(e) => {
            status.state = Some(ServerState::PortAllocation);
            status.message = Some(e.to_string());
            conditions::set(
                &mut status.conditions,
                "PortsAllocated",
                false,
                "PortsUnavailable",
                e.to_string(),
                generation,
            );
            conditions::set(&mut status.conditions, "Ready", false, "PortsUnavailable", e.to_string(), generation);
            return Ok(Action::requeue(Duration::from_secs(10)));
        }
    };
    let mut allocations = allocations;
    allocations.extend(deferred.iter().map(|(a, _)| a.clone()));
    allocations.sort_by_key(|a| gs.spec.ports.iter().position(|p| p.name == a.name));
    status.ports = status_of(&allocations);
    conditions::set(
        &mut status.conditions,
        "PortsAllocated",
        true,
        "Allocated",
        format!("{} port(s) allocated", allocations.len()),
        generation,
    );

    // 2. The pod, made from the current template.
    let hash = server_template_hash(&gs.spec);
    let live = pods.get_opt(&name).await?;
    let pod = match live {
        Some(p) if p.metadata.deletion_timestamp.is_some() => {
            status.state = Some(ServerState::Updating);
            status.message = Some("waiting for the old pod to go".into());
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Some(p) if p.annotations().get(TEMPLATE_HASH_ANNOTATION) != Some(&hash) => {
            pods.delete(&name, &DeleteParams::default()).await?;
            status.state = Some(ServerState::Updating);
            status.message = Some("replacing the pod with one from the new template".into());
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Some(p) if matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded")) => {
            let why = p.status.as_ref().and_then(|s| s.message.clone()).unwrap_or_else(|| "the process exited".into());
            pods.delete(&name, &DeleteParams::default()).await?;
            status.state = Some(ServerState::Unhealthy);
            status.message = Some(format!("pod ended ({why}); making a new one"));
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Some(p) => p,
        None => {
            // The zone's topology must list this instance's ports before its process starts, so
            // its peers can reach it from the first moment.
            if !gs.spec.ports.is_empty() && !topology_lists(ctx, gs, &status.ports).await? {
                status.state = Some(ServerState::Creating);
                status.message = Some("waiting for the zone's topology to list its ports".into());
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            let mut pod = build_pod(gs, &allocations, &hash)?;
            if !deferred.is_empty() {
                let deferred: Vec<_> = deferred.iter().map(|(_, d)| d.clone()).collect();
                let range = ctx.config.port_ranges.ranges().first().copied().ok_or_else(|| {
                    Error::invalid(
                        format!("GameServer {name}: ports"),
                        "a Passthrough port needs --port-range for the platform's host port assignment",
                    )
                })?;
                mark_pod(&mut pod, &deferred, range)
                    .map_err(|e| Error::invalid(format!("GameServer {name}: ports"), e))?;
            }
            let created = apply(&pods, &pod).await?;
            status.pod_name = Some(name.clone());
            created
        }
    };

    // 3. Status from the pod, whose Passthrough ports the platform may have assigned.
    let assigned = final_ports(&pod);
    for p in status.ports.iter_mut().filter(|p| p.policy == PortPolicy::Passthrough) {
        if let Some(&port) = assigned.get(&p.name) {
            (p.port, p.container_port, p.host_port) = (i32::from(port), i32::from(port), Some(i32::from(port)));
        }
    }
    let pod_status = pod.status.clone().unwrap_or_default();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    if let Some(n) = &node
        && let Err(e) = ctx.ports.lock().expect("allocator lock").bind(&key, n)
    {
        tracing::warn!(server = %key, node = %n, error = %e, "pod landed where its host port is held");
    }
    status.pod_name = Some(name.clone());
    status.node_name = node.clone();
    status.address = pod_status.pod_ip.clone();
    status.node_address = node.as_ref().and_then(|n| node_address(ctx, n)).or(pod_status.host_ip.clone());
    status.template_hash = Some(hash);
    let pod_conditions = pod_status.conditions.unwrap_or_default();
    let ready = pod_conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    let (state, message) = match (pod_status.phase.as_deref(), node.is_some(), ready) {
        (Some("Running"), _, true) => (ServerState::Ready, None),
        (_, false, _) => {
            let why = pod_conditions
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .and_then(|c| c.message.clone());
            (ServerState::Scheduling, why)
        }
        _ => (ServerState::Starting, None),
    };
    status.state = Some(state);
    status.message = message;
    conditions::set(
        &mut status.conditions,
        "Ready",
        state == ServerState::Ready,
        &format!("{state:?}"),
        status.message.clone().unwrap_or_else(|| format!("{state:?}")),
        generation,
    );
    Ok(if state == ServerState::Ready { Action::await_change() } else { Action::requeue(Duration::from_secs(15)) })
}

/// Whether the zone's topology ConfigMap lists `ports` for this instance.
async fn topology_lists(ctx: &Context, gs: &GameServer, ports: &[PortStatus]) -> Result<bool> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &gs.namespace().unwrap_or_default());
    let Some(cm) = api.get_opt(&topology_name(&gs.spec.zone)).await? else { return Ok(false) };
    let Some(doc) = cm.data.as_ref().and_then(|d| d.get(TOPOLOGY_KEY)) else { return Ok(false) };
    let doc: serde_json::Value = serde_json::from_str(doc)?;
    let listed = doc["instances"]
        .as_array()
        .and_then(|list| list.iter().find(|i| i["name"] == gs.name_any()))
        .and_then(|i| serde_json::from_value::<Vec<PortStatus>>(i["ports"].clone()).ok());
    Ok(listed.as_deref() == Some(ports))
}

fn node_address(ctx: &Context, node: &str) -> Option<String> {
    let node = ctx.nodes.get(&kube::runtime::reflector::ObjectRef::new(node))?;
    let addresses = node.status.as_ref()?.addresses.clone()?;
    addresses
        .iter()
        .find(|a| a.type_ == "ExternalIP")
        .or_else(|| addresses.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone())
}

/// The Pod of a GameServer: its template plus the allocated ports, their env vars and ownership.
pub fn build_pod(gs: &GameServer, allocations: &[crate::ports::Allocation], hash: &str) -> Result<Pod> {
    let template = gs.spec.template.clone();
    let mut metadata = template.metadata.unwrap_or_default();
    metadata.name = Some(gs.name_any());
    metadata.namespace = gs.namespace();
    metadata.owner_references = gs.controller_owner_ref(&()).map(|o| vec![o]);
    let labels = metadata.labels.get_or_insert_with(Default::default);
    labels.insert(SERVER_LABEL.into(), gs.name_any());
    labels.insert(MANAGED_BY_LABEL.into(), MANAGER.into());
    metadata.annotations.get_or_insert_with(Default::default).insert(TEMPLATE_HASH_ANNOTATION.into(), hash.to_string());
    let mut spec = template.spec.ok_or_else(|| {
        Error::invalid(format!("GameServer {}: spec.template.spec", gs.name_any()), "the pod template has no spec")
    })?;
    let env: Vec<EnvVar> = port_env(allocations)
        .into_iter()
        .map(|(name, value)| EnvVar { name, value: Some(value), ..Default::default() })
        .collect();
    for p in pod_ports(allocations) {
        let container = spec.containers.iter_mut().find(|c| c.name == p.container).ok_or_else(|| {
            Error::invalid(
                format!("GameServer {}: ports", gs.name_any()),
                format!("a port names container {:?}, which the pod does not have", p.container),
            )
        })?;
        container.ports.get_or_insert_with(Vec::new).push(ContainerPort {
            container_port: i32::from(p.container_port),
            host_port: p.host_port.map(i32::from),
            protocol: Some(p.protocol.as_str().into()),
            ..Default::default()
        });
    }
    for c in &mut spec.containers {
        c.env.get_or_insert_with(Vec::new).extend(env.iter().cloned());
    }
    Ok(Pod { metadata, spec: Some(spec), status: None })
}
