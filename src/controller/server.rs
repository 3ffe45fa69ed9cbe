//! The server controller: GameServer → host ports → Pod → status (state, address, ports, node).
//! What it decides at each step (the pod, what a pod tells, which step) is the core's
//! [`server`](crate::server); here are the requests.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::ObjectRef;

use super::key::ObjectKey;
use super::queue::{Change, Requeue};
use super::slim::StoredServer;
use super::{Context, Triggers};
use crate::api::*;
use crate::conditions::{self, server_types};
use crate::ports::passthrough::{Deferred, final_ports, mark_pod};
use crate::ports::spec::{defer_passthrough, holder, listed_in, requests};
use crate::ports::{AllocError, Allocation};
use crate::server::*;
use crate::zone::{server_template_hash, topology_name};
use crate::{Error, Result};

const CONTROLLER: &str = "server";
/// When a step the routine write budget held back is tried again.
const ROUTINE_RETRY: Duration = Duration::from_secs(2);
/// Finalizer releasing a GameServer's host ports.
pub const SERVER_FINALIZER: &str = "gamezone.dev/ports";

/// Runs the server controller until shutdown, fed by the shared GameServer and Pod watches: a
/// pod's change reconciles the GameServer that owns it. Servers are taken in the order they
/// came due (see [`queue`](super::queue)), so a zone's servers, made together, get their pods
/// together and the zone's endpoints and status are written once for them.
pub async fn run(ctx: Arc<Context>, servers: Triggers<StoredServer>, pods: Triggers<Pod>, moves: super::Moves) {
    let servers = servers.filter_map(|change| futures::future::ready(change.ok().map(|gs| ObjectRef::from_obj(&gs))));
    // A pod gone, or newly Ready, is a change its server waits on: it runs at once.
    let (live_pods, live_servers) = (ctx.cache.pods.clone(), ctx.cache.servers.clone());
    let owners = pods.filter_map(move |change| {
        let change = change.ok().and_then(|pod| {
            let server: ObjectRef<StoredServer> = super::controller_of(&pod)?;
            let live = live_pods.get(&ObjectRef::from_obj(&pod));
            let state = live_servers.get(&server).and_then(|s| s.without_template().status.as_ref()?.state);
            Some(Change { awaited: awaited_change(live.as_deref(), state), obj: server })
        });
        futures::future::ready(change)
    });
    // A new server's pod is made once its zone's topology lists its ports.
    let listed = ctx.ports.listings().map(|rx| {
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|key: ObjectKey| ObjectRef::new(key.name()).within(key.namespace()))
    });
    // A new pod's first steps (scheduled, started, ready) come in quick succession; one
    // reconcile after they settle writes one status instead of one per step.
    super::queue::run(
        ctx.cache.servers.clone(),
        futures::stream::select_all([
            servers.map(Change::from).boxed(),
            owners.boxed(),
            futures::stream::iter(listed).flatten().map(Change::from).boxed(),
            // Servers on a node that started or stopped leaving: pods to move.
            moves.map(|key| Change::from(ObjectRef::new(key.name()).within(key.namespace()))).boxed(),
        ]),
        super::queue_settings(&ctx, CONTROLLER),
        |stored| reconcile(Arc::new(stored.server()), ctx.clone()),
    )
    .await;
}

async fn reconcile(gs: Arc<GameServer>, ctx: Arc<Context>) -> Result<Requeue> {
    let ctx = ctx.as_ref();
    let _timer = ctx.metrics.start(CONTROLLER);
    let api: Api<GameServer> = Api::namespaced(ctx.client.clone(), &gs.namespace().unwrap_or_default());
    super::finalized(&api, SERVER_FINALIZER, gs, |event| async move {
        match event {
            Finalizer::Apply(gs) => apply(&gs, ctx).await,
            Finalizer::Cleanup(gs) => {
                ctx.ports.release(&ObjectKey::of(gs.as_ref()), &ctx.metrics);
                ctx.writer.forget_server(&gs);
                Ok(None)
            }
        }
    })
    .await
}

/// Converges the server and writes its status when it is worth writing.
async fn apply(gs: &GameServer, ctx: &Context) -> Result<Requeue> {
    let before = ctx.writer.server_base(gs);
    let mut status = before.clone();
    status.observed_generation = gs.metadata.generation;
    let (requeue, write) = match converge(gs, ctx, &mut status).await {
        Ok(next) => next,
        // Refused for good until someone changes something: say so where the zone and a person
        // look, and back off, rather than only in this process's log.
        Err(e) if e.is_refusal() => {
            report_refusal(&mut status, &e, gs.metadata.generation);
            (Some(REFUSED_RETRY), true)
        }
        Err(e) => return Err(e),
    };
    if write && status != before {
        if let Some((warning, reason, note)) = noteworthy(&before, &status) {
            ctx.event(gs, warning, &reason, note).await;
        }
        tracing::debug!(server = %ObjectKey::of(gs), from = ?before.state, to = ?status.state, "writing status");
        ctx.writer.server_status(gs, &status).await?;
    }
    Ok(requeue)
}

/// How soon a server whose pod was refused is tried again (an edit of its zone comes sooner).
const REFUSED_RETRY: Duration = Duration::from_secs(60);

/// Reports a refusal: the server stays `Creating`, and its message and `Ready` say why (the
/// zone's `ServersReady` shows it); a refusal is an Event once, as a state change would be.
fn report_refusal(status: &mut GameServerStatus, e: &Error, generation: Option<i64>) {
    let reason = match e {
        Error::Kube(_) => "PodRefused",
        e => e.reason(),
    };
    let message = crate::conditions::bounded(&format!("the pod cannot be made: {e}"));
    status.state = Some(ServerState::Creating);
    status.message = Some(message.clone());
    conditions::set(&mut status.conditions, server_types::READY, false, reason, message, generation);
}

/// Holds host ports for `gs`'s spec: the allocations in spec order, with the Passthrough ports
/// the platform assigns (`AutopilotPassthroughPort`) as placeholders. The zone controller calls
/// this too, to list the ports in the topology once the server exists; both get the same ports.
pub(super) fn ensure_ports(
    ctx: &Context,
    gs: &GameServer,
) -> std::result::Result<(Vec<Allocation>, Vec<Deferred>), AllocError> {
    let (wanted, deferred) =
        defer_passthrough(requests(&gs.spec.ports), ctx.config.feature_gates.autopilot_passthrough_port);
    // Held no more often than there are nodes its pod can run on (asked of the node watch only
    // when new ports are held).
    let reach = || {
        let pod = gs.spec.template.spec.as_ref()?;
        crate::placement::reach(pod, ctx.cache.nodes.state().iter().map(|n| n.as_ref()))
    };
    let result = ctx.ports.hold(&ObjectKey::of(gs), &wanted, ctx.config.host_ports_per_namespace, reach);
    if !matches!(result, Ok((_, false))) {
        ctx.metrics.ports(&ctx.ports.allocator().usage());
    }
    let (mut allocations, _) = result?;
    allocations.extend(deferred.iter().map(|(a, _)| a.clone()));
    in_spec_order(gs, &mut allocations);
    Ok((allocations, deferred.into_iter().map(|(_, d)| d).collect()))
}

/// The steps of a server: host ports, the pod, status from the pod. Returns what to do next and
/// whether the status is worth writing now (not right after making a pod: its own events
/// follow at once).
async fn converge(gs: &GameServer, ctx: &Context, status: &mut GameServerStatus) -> Result<(Requeue, bool)> {
    let generation = gs.metadata.generation;
    let (name, ns) = (gs.name_any(), gs.namespace().unwrap_or_default());

    // Host ports, before the pod exists, so the process can be told them.
    let (allocations, deferred) = match ensure_ports(ctx, gs) {
        Ok(a) => a,
        Err(e) => {
            report_step(status, ServerState::PortAllocation, e.to_string());
            let why = e.to_string();
            conditions::set(
                &mut status.conditions,
                server_types::PORTS_ALLOCATED,
                false,
                "PortsUnavailable",
                why.clone(),
                generation,
            );
            conditions::set(&mut status.conditions, server_types::READY, false, "PortsUnavailable", why, generation);
            return Ok((Some(Duration::from_secs(10)), true));
        }
    };
    report_ports(status, &allocations, generation);

    // The pod, made from the current template. The shared watch's copy may lag behind this
    // process's own writes; every step below is safe to repeat.
    let hash = server_template_hash(&gs.spec);
    // The watch sees only pods labelled as the operator's; one of them held by another object
    // is not this server's (creating it then reports the conflict).
    let live = ctx
        .cache
        .pods
        .get(&ObjectRef::new(&name).within(&ns))
        .filter(|p| crate::controller::ownership::controlled_by(&p.metadata, &gs.metadata));
    let on = live.as_ref().and_then(|p| p.spec.as_ref()?.node_name.clone());
    let node = on.and_then(|n| ctx.cache.nodes.get(&ObjectRef::new(&n)));
    let (now, grace) = (Timestamp::now(), ctx.config.node_not_ready_grace);
    let leaving = node.as_ref().and_then(|n| crate::placement::leaving(n, now, grace));
    // A pod on a node given up on goes at once: no kubelet there would confirm its deletion.
    let unreachable = node.as_ref().and_then(|n| crate::placement::unreachable(n, now, grace));
    let delete_pod = async || match unreachable {
        Some(_) => ctx.writer.delete_at_once::<Pod>(&ns, &name).await,
        None => ctx.writer.delete::<Pod>(&ns, &name).await,
    };
    let pod = match pod_step(live.as_deref(), &hash, gs, status.sdk.as_ref(), leaving.as_deref()) {
        PodStep::WaitGone => {
            if let Some(why) = &unreachable {
                delete_pod().await?;
                report_step(status, ServerState::Updating, format!("removing the old pod at once: {why}"));
            } else {
                report_step(status, ServerState::Updating, "waiting for the old pod to go");
            }
            return Ok((Some(Duration::from_secs(1)), true));
        }
        PodStep::Replace => {
            delete_pod().await?;
            report_step(status, ServerState::Updating, "replacing the pod with one from the new template");
            return Ok((Some(Duration::from_secs(1)), true));
        }
        PodStep::CopyTree(why) => {
            // The zone reads this and gives the server a template that copies the tree; its
            // pod then replaces this one.
            status.tree_copied.get_or_insert_with(|| why.clone());
            report_step(
                status,
                ServerState::Starting,
                format!("{why}; a pod that copies the tree from the registry follows"),
            );
            return Ok((Some(Duration::from_secs(5)), true));
        }
        PodStep::Recreate(state, why) => {
            delete_pod().await?;
            if matches!(state, ServerState::Unhealthy | ServerState::Shutdown) {
                ctx.metrics.server_restarted(gs, state);
            }
            report_step(status, state, why);
            return Ok((Some(Duration::from_secs(1)), true));
        }
        PodStep::Create => {
            // The zone's topology must list this instance's ports before its process starts, so
            // its peers can reach it from the first moment. The zone lists a server's ports once
            // the server exists, and the listing wakes it: a new one waits without a word.
            if !gs.spec.ports.is_empty() && !ctx.ports.lists(&ObjectKey::of(gs), &status.ports) {
                if just_made(gs, Timestamp::now()) {
                    return Ok((Some(LISTING_WAIT), false));
                }
                if !ports_listed(ctx, gs, &status.ports).await? {
                    report_step(status, ServerState::Creating, "waiting for the zone's topology to list its ports");
                    return Ok((Some(Duration::from_millis(500)), true));
                }
            }
            let created = create_pod(ctx, gs, &allocations, &deferred, &hash).await?;
            if created.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none() {
                // Its scheduling and start come as events of the pod; report from there.
                return Ok((Some(Duration::from_secs(15)), false));
            }
            Arc::new(created)
        }
        PodStep::Observe => live.expect("observed pods exist"),
    };

    // Status from the pod, whose Passthrough ports the platform may have assigned.
    let assigned = final_ports(&pod);
    for p in status.ports.iter_mut().filter(|p| p.policy == PortPolicy::Passthrough) {
        if let Some(&port) = assigned.get(&p.name) {
            (p.port, p.container_port, p.host_port) = (i32::from(port), i32::from(port), Some(i32::from(port)));
        }
    }
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if let Some(n) = node {
        match ctx.ports.allocator().bind(&holder(&ObjectKey::of(gs)), n) {
            Ok(_) => {}
            // A cordoned or NotReady node is out of the port tables until it is usable again;
            // its pods' ports count again then.
            Err(AllocError::UnknownNode { .. }) => {}
            Err(e) => {
                tracing::warn!(server = %ObjectKey::of(gs), node = %n, error = %e, "pod landed where its host port is held")
            }
        }
    }
    // The pod's node, read once from the store: its address and whether it is Ready.
    let on = node.and_then(|n| ctx.cache.nodes.get(&ObjectRef::new(n)));
    let node_ready = on.as_deref().is_none_or(crate::placement::node_ready);
    let (state, message) = observe_pod(status, &pod, on.as_deref().and_then(node_address), node_ready, hash);
    let now = Timestamp::now();
    let (state, message) = gated(gs, status, state, message, now);
    if let Some(left) = quiet_left(state, message.as_deref(), &pod, now) {
        return Ok((Some(left), false));
    }
    // Within the routine write budget: many pods queued at once show their steps in turn.
    if matches!(state, ServerState::Scheduling | ServerState::Starting)
        && message.is_none()
        && status.state != Some(state)
        && !ctx.writer.routine_write()
    {
        return Ok((Some(ROUTINE_RETRY), false));
    }
    let was = status.state;
    report_state(status, state, message, generation);
    if state == ServerState::Ready
        && !matches!(was, Some(ServerState::Ready | ServerState::Draining))
        && let Some(created) = &pod.metadata.creation_timestamp
    {
        ctx.metrics.server_ready(gs, now.duration_since(created.0).as_secs_f64().max(0.0));
    }
    // The cluster may evict the pod exactly when the operator would delete the server.
    let evictable = evictable(&gs.spec, status, now);
    let marks = pod_marks(gs, evictable);
    if marks_differ(&pod, &marks) {
        ctx.writer.patch_metadata::<Pod>(&ns, &name, &marks).await?;
    }
    let review = if evictable { None } else { evictable_again_in(&gs.spec, status, now) };
    let next = if state == ServerState::Ready { review } else { Some(Duration::from_secs(15)) };
    Ok((next, true))
}

/// Creates the server's pod, marked for the platform's port assignment when it has deferred
/// Passthrough ports.
async fn create_pod(
    ctx: &Context,
    gs: &GameServer,
    allocations: &[Allocation],
    deferred: &[Deferred],
    hash: &str,
) -> Result<Pod> {
    let name = gs.name_any();
    let mut pod = build_pod(gs, allocations, hash)?;
    if !deferred.is_empty() {
        let range = ctx.config.port_ranges.ranges().first().copied().ok_or_else(|| {
            Error::invalid(
                format!("GameServer {name}: ports"),
                "a Passthrough port needs --port-range for the platform's host port assignment",
            )
        })?;
        mark_pod(&mut pod, deferred, range).map_err(|e| Error::invalid(format!("GameServer {name}: ports"), e))?;
    }
    // A POST, not an apply: the operator never changes a pod once made (a new template replaces
    // it), so nothing needs its fields owned for a later apply, and a server-side apply of a new
    // object costs the API server a read and a merge more (a quarter more API server CPU and a
    // third more etcd CPU per pod on the local control plane).
    ctx.writer.create_once(&pod).await
}

/// How long a new server waits for its listing before it reads the topology itself and says
/// that it waits (the listing's wake-up normally comes first).
const LISTING_WAIT: Duration = Duration::from_secs(5);

/// Whether `gs` was made so recently that its zone has yet to list its ports.
fn just_made(gs: &GameServer, now: Timestamp) -> bool {
    gs.metadata
        .creation_timestamp
        .as_ref()
        .is_none_or(|t| now.as_second() - t.0.as_second() < LISTING_WAIT.as_secs() as i64)
}

/// Whether the zone's topology lists `ports` for this server: known in memory when this process
/// wrote the topology, read from the ConfigMap otherwise (after a restart, or a zone handled
/// elsewhere).
async fn ports_listed(ctx: &Context, gs: &GameServer, ports: &[PortStatus]) -> Result<bool> {
    let key = ObjectKey::of(gs);
    if ctx.ports.lists(&key, ports) {
        return Ok(true);
    }
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), key.namespace());
    let Some(cm) = api.get_opt(&topology_name(&gs.spec.zone)).await? else { return Ok(false) };
    ctx.ports.list(listed_in(&cm));
    Ok(ctx.ports.lists(&key, ports))
}

fn node_address(node: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    let addresses = node.status.as_ref()?.addresses.clone()?;
    addresses
        .iter()
        .find(|a| a.type_ == "ExternalIP")
        .or_else(|| addresses.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone())
}
