//! The server controller: GameServer → host ports → Pod → status (state, address, ports, node).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerPort, EnvVar, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::key::ObjectKey;
use super::ports::{defer_passthrough, holder, listed_in, requests, status_of};
use super::queue::Requeue;
use super::slim::StoredServer;
use super::{Context, Triggers, delete_if_present};
use crate::api::*;
use crate::conditions::{self, server_types};
use crate::ports::passthrough::{Deferred, final_ports, mark_pod};
use crate::ports::{AllocError, Allocation, pod_ports, port_env};
use crate::zone::{server_template_hash, topology_name};
use crate::{Error, Result};

const CONTROLLER: &str = "server";
/// How long a routine step of a new pod (scheduling, starting) lasts before it is reported.
const START_QUIET: Duration = Duration::from_secs(5);
/// When a step the routine write budget held back is tried again.
const ROUTINE_RETRY: Duration = Duration::from_secs(2);
/// Finalizer releasing a GameServer's host ports.
pub const SERVER_FINALIZER: &str = "gamezone.dev/ports";

/// Runs the server controller until shutdown, fed by the shared GameServer and Pod watches: a
/// pod's change reconciles the GameServer that owns it. Servers are taken in the order they
/// came due (see [`queue`](super::queue)), so a zone's servers, made together, get their pods
/// together and the zone's endpoints and status are written once for them.
pub async fn run(ctx: Arc<Context>, servers: Triggers<StoredServer>, pods: Triggers<Pod>) {
    let servers = servers.filter_map(|change| futures::future::ready(change.ok().map(|gs| ObjectRef::from_obj(&gs))));
    let owners =
        pods.filter_map(|change| futures::future::ready(change.ok().and_then(|pod| super::controller_of(&pod))));
    // A new server's pod is made once its zone's topology lists its ports.
    let listed = ctx.ports.listings().map(|rx| {
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
            .map(|key: ObjectKey| ObjectRef::new(key.name()).within(key.namespace()))
    });
    // A new pod's first steps (scheduled, started, ready) come in quick succession; one
    // reconcile after they settle writes one status instead of one per step.
    super::queue::run(
        ctx.cache.servers.clone(),
        futures::stream::select_all([servers.boxed(), owners.boxed(), futures::stream::iter(listed).flatten().boxed()]),
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

/// The Event a state change is worth, if any: routine steps (Creating, Scheduling, Starting,
/// Ready) show in status only, since each Event is an API write; what a person may look for
/// (a failure, a replacement) gets one.
fn noteworthy(before: &GameServerStatus, after: &GameServerStatus) -> Option<(bool, String, String)> {
    let state = after.state?;
    if after.state == before.state
        || !matches!(
            state,
            ServerState::Unhealthy | ServerState::PortAllocation | ServerState::Updating | ServerState::Shutdown
        )
    {
        return None;
    }
    let warning = matches!(state, ServerState::Unhealthy | ServerState::PortAllocation);
    let note = format!("{state:?}{}", after.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default());
    Some((warning, format!("{state:?}"), note))
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

/// Sorts `allocations` in the order of `gs`'s ports, as the pod lists them.
fn in_spec_order(gs: &GameServer, allocations: &mut [Allocation]) {
    allocations.sort_by_key(|a| gs.spec.ports.iter().position(|p| p.name == a.name));
}

/// The pod the server controller makes for `gs` (as created, with its uid) when none of its
/// ports takes a host port, so a benchmark's plain client creates exactly the pods the operator
/// does.
pub fn pod_without_host_ports(gs: &GameServer) -> Result<Pod> {
    build_pod(gs, &without_host_ports(gs)?, &server_template_hash(&gs.spec))
}

/// The status the server controller writes for `gs` once `pod` (from
/// [`pod_without_host_ports`]) is Ready, so a benchmark's plain client reports the same.
pub fn ready_status(gs: &GameServer, pod: &Pod) -> Result<GameServerStatus> {
    let generation = gs.metadata.generation;
    let mut status = GameServerStatus { observed_generation: generation, ..Default::default() };
    report_ports(&mut status, &without_host_ports(gs)?, generation);
    // Without the operator's store of nodes, the node's address is the pod's host IP.
    let (state, message) = observe_pod(&mut status, pod, None, server_template_hash(&gs.spec));
    report_state(&mut status, state, message, generation);
    Ok(status)
}

/// The pods the server controller would make for `servers` on an empty cluster, with the ports
/// a fresh allocator over `ranges` hands out, in order; and each server's ports as its zone's
/// topology would list them. What `gamezone render` prints.
pub fn pods_on_an_empty_cluster(
    servers: &[GameServer],
    ranges: crate::ports::PortRanges,
) -> Result<Vec<(Pod, Vec<PortStatus>)>> {
    let mut alloc = crate::ports::PortAllocator::new(ranges);
    alloc.node_added("node-1");
    servers
        .iter()
        .map(|gs| {
            let mut allocations = alloc
                .allocate(&holder(&ObjectKey::of(gs)), &requests(&gs.spec.ports))
                .map_err(|e| Error::invalid(format!("GameServer {}: ports", gs.name_any()), e.to_string()))?;
            in_spec_order(gs, &mut allocations);
            Ok((build_pod(gs, &allocations, &server_template_hash(&gs.spec))?, status_of(&allocations)))
        })
        .collect()
}

/// The ports of `gs` in spec order, when none of them takes a host port.
fn without_host_ports(gs: &GameServer) -> Result<Vec<Allocation>> {
    let mut alloc = crate::ports::PortAllocator::new(Default::default());
    let mut allocations = alloc
        .allocate(&holder(&ObjectKey::of(gs)), &requests(&gs.spec.ports))
        .map_err(|e| Error::invalid(format!("GameServer {}: ports", gs.name_any()), e.to_string()))?;
    in_spec_order(gs, &mut allocations);
    Ok(allocations)
}

/// Reports `allocations` as the server's ports.
fn report_ports(status: &mut GameServerStatus, allocations: &[Allocation], generation: Option<i64>) {
    status.ports = status_of(allocations);
    conditions::set(
        &mut status.conditions,
        server_types::PORTS_ALLOCATED,
        true,
        "Allocated",
        format!("{} port(s) allocated", allocations.len()),
        generation,
    );
}

/// Fills in what `pod` tells of the server (its name, node, addresses, template) and returns
/// the state the pod puts it in, with why when the pod cannot be scheduled.
fn observe_pod(
    status: &mut GameServerStatus,
    pod: &Pod,
    node_address: Option<String>,
    hash: String,
) -> (ServerState, Option<String>) {
    let pod_status = pod.status.as_ref();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    status.pod_name = pod.metadata.name.clone();
    status.pod_uid = pod.metadata.uid.clone();
    status.node_name = node.clone();
    status.address = pod_status.and_then(|s| s.pod_ip.clone());
    status.node_address = node_address.or_else(|| pod_status.and_then(|s| s.host_ip.clone()));
    status.template_hash = Some(hash);
    let pod_conditions = pod_status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let ready = pod_conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
    match (pod_status.and_then(|s| s.phase.as_deref()), node.is_some(), ready) {
        (Some("Running"), _, true) => (ServerState::Ready, None),
        (_, false, _) => {
            let why = pod_conditions
                .iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .and_then(|c| c.message.clone());
            (ServerState::Scheduling, why)
        }
        _ => (ServerState::Starting, None),
    }
}

/// The state once the game's side is heard: a drained server (`NotInService`) is `Draining`,
/// saying what it waits for; a Ready pod whose game has not called Ready through the SDK
/// (`ready: Sdk`) or whose readiness gates are not all True is `RequestReady`; a Ready one the
/// game allocated or reserved says so.
fn gated(
    gs: &GameServer,
    status: &GameServerStatus,
    state: ServerState,
    message: Option<String>,
    now: Timestamp,
) -> (ServerState, Option<String>) {
    if state != ServerState::Ready {
        return (state, message);
    }
    if let Some(constraint) = gs.spec.not_in_service() {
        let open: Vec<&str> = gs
            .spec
            .lifecycle
            .deletable_gates
            .iter()
            .filter(|g| !conditions::is_true(&status.conditions, g))
            .map(String::as_str)
            .collect();
        let why = constraint.message.as_deref().unwrap_or("no longer wanted");
        let mut waits =
            if open.is_empty() { String::new() } else { format!("; waiting for deletable gates {}", open.join(", ")) };
        if let Some(players) = status.holds_players(now) {
            waits.push_str(&format!("; {players}"));
        }
        return (ServerState::Draining, Some(format!("NotInService ({why}){waits}")));
    }
    let sdk_state = status.sdk_of_current_pod().and_then(|s| s.state);
    if gs.spec.lifecycle.ready == ReadyMode::Sdk
        && !matches!(sdk_state, Some(SdkState::RequestReady | SdkState::Allocated | SdkState::Reserved))
    {
        return (ServerState::RequestReady, Some("waiting for the game to call Ready through the SDK".into()));
    }
    let open: Vec<&str> = gs
        .spec
        .lifecycle
        .readiness_gates
        .iter()
        .filter(|g| !conditions::is_true(&status.conditions, g))
        .map(String::as_str)
        .collect();
    if !open.is_empty() {
        return (ServerState::RequestReady, Some(format!("waiting for readiness gates {}", open.join(", "))));
    }
    (state, message.or_else(|| status.holds_players(now)))
}

/// Sets the server's state and its Ready condition.
fn report_state(status: &mut GameServerStatus, state: ServerState, message: Option<String>, generation: Option<i64>) {
    status.state = Some(state);
    status.message = message;
    conditions::set(
        &mut status.conditions,
        server_types::READY,
        state == ServerState::Ready,
        &format!("{state:?}"),
        status.message.clone().unwrap_or_else(|| format!("{state:?}")),
        generation,
    );
}

/// What to do about the server's pod, given the one the watch shows.
#[derive(Debug, PartialEq, Eq)]
enum PodStep {
    /// None exists: make it (once the topology lists the server's ports).
    Create,
    /// The old one is going; wait for it.
    WaitGone,
    /// It was made from another template: delete it, a new one follows.
    Replace,
    /// Its process ended, or the game said through the SDK that it is done or unhealthy:
    /// delete it, a new one follows; with the state that shows meanwhile and why.
    Recreate(ServerState, String),
    /// It is the current one: report from it.
    Observe,
}

/// The pod step for `live` when the current template hashes to `hash`, and the game of `gs`
/// said what `sdk` holds.
fn pod_step(live: Option<&Pod>, hash: &str, gs: &GameServer, sdk: Option<&SdkStatus>) -> PodStep {
    let Some(pod) = live else { return PodStep::Create };
    if pod.metadata.deletion_timestamp.is_some() {
        return PodStep::WaitGone;
    }
    if pod.annotations().get(TEMPLATE_HASH_ANNOTATION).map(String::as_str) != Some(hash) {
        return PodStep::Replace;
    }
    let status = pod.status.as_ref();
    if matches!(status.and_then(|s| s.phase.as_deref()), Some("Failed" | "Succeeded")) {
        let why = status.and_then(|s| s.message.clone()).unwrap_or_else(|| "the process exited".into());
        return PodStep::Recreate(ServerState::Unhealthy, format!("pod ended ({why}); making a new one"));
    }
    match game_ended(gs, sdk, pod) {
        Some((state, why)) => PodStep::Recreate(state, why),
        None => PodStep::Observe,
    }
}

/// What the game's process said through the SDK that ends its pod: Shutdown, or Unhealthy
/// when health is checked. Only the pod's own process counts: a replaced pod's last words are
/// not its successor's.
fn game_ended(gs: &GameServer, sdk: Option<&SdkStatus>, pod: &Pod) -> Option<(ServerState, String)> {
    let sdk = sdk.filter(|s| s.said_by(pod.metadata.uid.as_deref()))?;
    if sdk.state == Some(SdkState::Shutdown) {
        return Some((ServerState::Shutdown, "the game called Shutdown through the SDK; making a new pod".into()));
    }
    let checked = gs.spec.lifecycle.health.is_some_and(|h| !h.disabled);
    if checked && sdk.health == Some(SdkHealth::Unhealthy) {
        let health = gs.spec.lifecycle.health.unwrap_or_default();
        let why = format!(
            "no health ping through the SDK for {} checks of {}s; making a new pod",
            health.failure_threshold, health.period_seconds
        );
        return Some((ServerState::Unhealthy, why));
    }
    None
}

/// How much longer a routine step (Scheduling, Starting) stays unreported: a step shows once
/// it has lasted [`START_QUIET`], so a pod that comes up quickly gets one status write, when
/// it is Ready. `None` when it is due now (Ready and failures always are).
fn quiet_left(state: ServerState, message: Option<&str>, pod: &Pod, now: Timestamp) -> Option<Duration> {
    if !matches!(state, ServerState::Scheduling | ServerState::Starting) || message.is_some() {
        return None;
    }
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let scheduled = conditions.iter().find(|c| c.type_ == "PodScheduled" && c.status == "True");
    let since = match (state, scheduled.and_then(|c| c.last_transition_time.as_ref())) {
        (ServerState::Starting, Some(t)) => Some(&t.0),
        _ => pod.metadata.creation_timestamp.as_ref().map(|t| &t.0),
    };
    let lasted = now.duration_since(*since?).unsigned_abs();
    START_QUIET.checked_sub(lasted).filter(|left| !left.is_zero())
}

/// Sets a state that is not the pod's own (ports, replacement) with why.
fn report_step(status: &mut GameServerStatus, state: ServerState, message: impl Into<String>) {
    status.state = Some(state);
    status.message = Some(message.into());
}

/// The steps of a server: host ports, the pod, status from the pod. Returns what to do next and
/// whether the status is worth writing now (not right after making a pod: its own events
/// follow at once).
async fn converge(gs: &GameServer, ctx: &Context, status: &mut GameServerStatus) -> Result<(Requeue, bool)> {
    let generation = gs.metadata.generation;
    let (name, ns) = (gs.name_any(), gs.namespace().unwrap_or_default());
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);

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
    let pod = match pod_step(live.as_deref(), &hash, gs, status.sdk.as_ref()) {
        PodStep::WaitGone => {
            report_step(status, ServerState::Updating, "waiting for the old pod to go");
            return Ok((Some(Duration::from_secs(1)), true));
        }
        PodStep::Replace => {
            delete_if_present(&pods, &name).await?;
            report_step(status, ServerState::Updating, "replacing the pod with one from the new template");
            return Ok((Some(Duration::from_secs(1)), true));
        }
        PodStep::Recreate(state, why) => {
            delete_if_present(&pods, &name).await?;
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
    if let Some(n) = node
        && let Err(e) = ctx.ports.allocator().bind(&holder(&ObjectKey::of(gs)), n)
    {
        tracing::warn!(server = %ObjectKey::of(gs), node = %n, error = %e, "pod landed where its host port is held");
    }
    let (state, message) = observe_pod(status, &pod, node.and_then(|n| node_address(ctx, n)), hash);
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
    report_state(status, state, message, generation);
    let next = if state == ServerState::Ready { None } else { Some(Duration::from_secs(15)) };
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

fn node_address(ctx: &Context, node: &str) -> Option<String> {
    let node = ctx.cache.nodes.get(&kube::runtime::reflector::ObjectRef::new(node))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn server() -> GameServer {
        let zone: GameZone = serde_json::from_value(serde_json::json!({
            "apiVersion": "gamezone.dev/v1alpha1", "kind": "GameZone",
            "metadata": {"name": "z1", "namespace": "ns", "uid": "u1"},
            "spec": {"zoneId": 1, "defaultImage": "svc:1",
                     "services": [{"type": "game", "id": 1, "ports": [{"name": "client", "containerPort": 7777}]}]}
        }))
        .unwrap();
        let mut gs = crate::zone::game_servers(&zone, &[], &Default::default()).unwrap().remove(0);
        gs.metadata.generation = Some(1);
        gs
    }

    fn scheduled(mut pod: Pod, ready: bool) -> Pod {
        pod.spec.as_mut().unwrap().node_name = Some("node-1".into());
        let condition = |type_: &str, status: &str| PodCondition {
            type_: type_.into(),
            status: status.into(),
            ..Default::default()
        };
        pod.status = Some(PodStatus {
            phase: Some(if ready { "Running" } else { "Pending" }.into()),
            pod_ip: ready.then(|| "10.244.1.5".into()),
            host_ip: Some("10.0.1.1".into()),
            conditions: Some(vec![
                condition("PodScheduled", "True"),
                condition("Ready", if ready { "True" } else { "False" }),
            ]),
            ..Default::default()
        });
        pod
    }

    #[test]
    fn a_ready_pod_makes_the_status_the_controller_writes() {
        let gs = server();
        let pod = scheduled(pod_without_host_ports(&gs).unwrap(), true);
        let status = ready_status(&gs, &pod).unwrap();
        assert_eq!(status.state, Some(ServerState::Ready));
        assert_eq!(status.message, None);
        assert_eq!(status.observed_generation, Some(1));
        assert_eq!(status.pod_name.as_deref(), Some("z1-game-1"));
        assert_eq!(status.node_name.as_deref(), Some("node-1"));
        assert_eq!(status.address.as_deref(), Some("10.244.1.5"));
        assert_eq!(status.node_address.as_deref(), Some("10.0.1.1"));
        assert_eq!(status.template_hash, Some(server_template_hash(&gs.spec)));
        assert_eq!(status.ports.len(), 1);
        assert_eq!((status.ports[0].name.as_str(), status.ports[0].port), ("client", 7777));
        let conditions: Vec<_> =
            status.conditions.iter().map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str())).collect();
        assert_eq!(conditions, [(server_types::PORTS_ALLOCATED, "True", "Allocated"), ("Ready", "True", "Ready")]);
    }

    #[test]
    fn a_pod_not_ready_is_starting_and_one_unscheduled_says_why() {
        let gs = server();
        let pod = scheduled(pod_without_host_ports(&gs).unwrap(), false);
        let mut status = GameServerStatus::default();
        assert_eq!(observe_pod(&mut status, &pod, None, "h".into()), (ServerState::Starting, None));
        assert_eq!(status.node_address.as_deref(), Some("10.0.1.1"), "the pod's host IP when the node has none");

        let mut pending = pod_without_host_ports(&gs).unwrap();
        pending.status = Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                message: Some("0/3 nodes are available".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let (state, why) = observe_pod(&mut GameServerStatus::default(), &pending, None, "h".into());
        assert_eq!((state, why.as_deref()), (ServerState::Scheduling, Some("0/3 nodes are available")));
    }

    #[test]
    fn the_pod_step_follows_the_live_pod() {
        let gs = server();
        let hash = server_template_hash(&gs.spec);
        let current = pod_without_host_ports(&gs).unwrap();
        assert_eq!(pod_step(None, &hash, &gs, None), PodStep::Create);
        assert_eq!(pod_step(Some(&current), &hash, &gs, None), PodStep::Observe);
        assert_eq!(pod_step(Some(&current), "another template", &gs, None), PodStep::Replace);
        let mut going = current.clone();
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
        assert_eq!(pod_step(Some(&going), &hash, &gs, None), PodStep::WaitGone);
        let mut ended = current.clone();
        ended.status =
            Some(PodStatus { phase: Some("Failed".into()), message: Some("OOMKilled".into()), ..Default::default() });
        assert_eq!(
            pod_step(Some(&ended), &hash, &gs, None),
            PodStep::Recreate(ServerState::Unhealthy, "pod ended (OOMKilled); making a new one".into())
        );
    }

    fn sdk(state: Option<SdkState>, health: Option<SdkHealth>, pod_uid: Option<&str>) -> SdkStatus {
        SdkStatus { pod_uid: pod_uid.map(Into::into), state, health, ..Default::default() }
    }

    #[test]
    fn the_game_ends_its_pod_by_shutdown_or_missed_pings_only_its_own() {
        let mut gs = server();
        let hash = server_template_hash(&gs.spec);
        let mut pod = pod_without_host_ports(&gs).unwrap();
        pod.metadata.uid = Some("pod-2".into());
        let step = |gs: &GameServer, s: SdkStatus| pod_step(Some(&pod), &hash, gs, Some(&s));
        let shutdown = step(&gs, sdk(Some(SdkState::Shutdown), None, Some("pod-2")));
        assert!(matches!(shutdown, PodStep::Recreate(ServerState::Shutdown, _)), "{shutdown:?}");
        assert_eq!(step(&gs, sdk(Some(SdkState::Shutdown), None, Some("pod-1"))), PodStep::Observe, "the old pod's");
        let unhealthy = sdk(None, Some(SdkHealth::Unhealthy), Some("pod-2"));
        assert_eq!(step(&gs, unhealthy.clone()), PodStep::Observe, "health is not checked for this type");
        gs.spec.lifecycle.health = Some(Health::default());
        let replaced = step(&gs, unhealthy.clone());
        assert!(matches!(&replaced, PodStep::Recreate(ServerState::Unhealthy, why) if why.contains("3 checks of 5s")));
        gs.spec.lifecycle.health = Some(Health { disabled: true, ..Health::default() });
        assert_eq!(step(&gs, unhealthy), PodStep::Observe, "health checking turned off");
    }

    #[test]
    fn with_ready_sdk_a_ready_pod_waits_for_the_game_and_an_allocated_one_says_so() {
        let mut gs = server();
        gs.spec.lifecycle.ready = ReadyMode::Sdk;
        let mut status = GameServerStatus { pod_uid: Some("pod-2".into()), ..Default::default() };
        let (state, why) = gated(&gs, &status, ServerState::Ready, None, Timestamp::now());
        assert_eq!(
            (state, why.as_deref()),
            (ServerState::RequestReady, Some("waiting for the game to call Ready through the SDK"))
        );
        status.sdk = Some(sdk(Some(SdkState::RequestReady), None, Some("pod-1")));
        assert_eq!(
            gated(&gs, &status, ServerState::Ready, None, Timestamp::now()).0,
            ServerState::RequestReady,
            "the old pod's call"
        );
        status.sdk = Some(sdk(Some(SdkState::RequestReady), None, Some("pod-2")));
        assert_eq!(gated(&gs, &status, ServerState::Ready, None, Timestamp::now()), (ServerState::Ready, None));
        status.sdk = Some(sdk(Some(SdkState::Allocated), None, Some("pod-2")));
        let (state, why) = gated(&gs, &status, ServerState::Ready, None, Timestamp::now());
        assert_eq!(state, ServerState::Ready);
        assert!(why.unwrap().contains("Allocated"));
        assert_eq!(gated(&gs, &status, ServerState::Starting, None, Timestamp::now()).0, ServerState::Starting);
    }

    #[test]
    fn routine_steps_stay_quiet_for_a_while_and_failures_show_at_once() {
        let gs = server();
        let mut pod = scheduled(pod_without_host_ports(&gs).unwrap(), false);
        let now = Timestamp::now();
        let created =
            |ago: u64| Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now - Duration::from_secs(ago)));
        pod.metadata.creation_timestamp = created(2);
        let left = quiet_left(ServerState::Scheduling, None, &pod, now).unwrap();
        assert!(left <= Duration::from_secs(3) && left > Duration::from_secs(2), "{left:?}");
        assert_eq!(quiet_left(ServerState::Scheduling, Some("0/3 nodes are available"), &pod, now), None);
        assert_eq!(quiet_left(ServerState::Ready, None, &pod, now), None);
        pod.metadata.creation_timestamp = created(10);
        assert_eq!(quiet_left(ServerState::Scheduling, None, &pod, now), None, "lasted long enough to show");
    }

    #[test]
    fn events_mark_what_a_person_looks_for() {
        let state = |s: ServerState, m: &str| GameServerStatus {
            state: Some(s),
            message: Some(m.into()),
            ..Default::default()
        };
        let starting = state(ServerState::Starting, "");
        assert_eq!(noteworthy(&starting, &state(ServerState::Ready, "")), None);
        let (warning, reason, note) = noteworthy(&starting, &state(ServerState::Unhealthy, "pod ended")).unwrap();
        assert_eq!((warning, reason.as_str(), note.as_str()), (true, "Unhealthy", "Unhealthy: pod ended"));
        let updating = state(ServerState::Updating, "replacing");
        assert!(!noteworthy(&starting, &updating).unwrap().0);
        assert_eq!(noteworthy(&updating, &updating), None, "once per change");
    }
}
