//! What the server controller decides, with no client: the pod a GameServer gets, what a pod
//! tells of its server, the step to take about a pod, and which changes are worth an Event.
//! The controller (in the operator) makes the requests these decide.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerPort, EnvVar, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use crate::api::*;
use crate::conditions::{self, server_types};
use crate::key::ObjectKey;
use crate::ports::spec::{holder, requests, status_of};
use crate::ports::{Allocation, pod_ports, port_env};
use crate::zone::server_template_hash;
use crate::{Error, Result};

/// How long a routine step of a new pod (scheduling, starting) lasts before it is reported.
pub const START_QUIET: Duration = Duration::from_secs(5);

/// The Event a state change is worth, if any: routine steps (Creating, Scheduling, Starting,
/// Ready) show in status only, since each Event is an API write; what a person may look for
/// (a failure, a replacement) gets one.
pub fn noteworthy(before: &GameServerStatus, after: &GameServerStatus) -> Option<(bool, String, String)> {
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

/// Sorts `allocations` in the order of `gs`'s ports, as the pod lists them.
pub fn in_spec_order(gs: &GameServer, allocations: &mut [Allocation]) {
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
    let (state, message) = observe_pod(&mut status, pod, None, true, server_template_hash(&gs.spec));
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
pub fn report_ports(status: &mut GameServerStatus, allocations: &[Allocation], generation: Option<i64>) {
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
/// the state the pod puts it in, with why when the pod cannot be scheduled. While its node is
/// not Ready (`node_ready` false), a Running pod's readiness is no one's word: the node
/// lifecycle controller marks every pod there not Ready when it stops hearing the kubelet,
/// though the game may still be serving its players. A server that served keeps doing so then.
pub fn observe_pod(
    status: &mut GameServerStatus,
    pod: &Pod,
    node_address: Option<String>,
    node_ready: bool,
    hash: String,
) -> (ServerState, Option<String>) {
    let served = matches!(status.state, Some(ServerState::Ready | ServerState::RequestReady | ServerState::Draining));
    let pod_status = pod.status.as_ref();
    let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    status.pod_name = pod.metadata.name.clone();
    status.pod_uid = pod.metadata.uid.clone();
    status.node_name = node.clone();
    status.address = pod_status.and_then(|s| s.pod_ip.clone());
    status.node_address = node_address.or_else(|| pod_status.and_then(|s| s.host_ip.clone()));
    status.template_hash = Some(hash);
    let pod_conditions = pod_status.and_then(|s| s.conditions.as_deref()).unwrap_or_default();
    let ready = pod_ready(pod_conditions) || (served && !node_ready);
    match (pod_status.and_then(|s| s.phase.as_deref()), node.is_some(), ready) {
        (Some("Running"), _, true) => (ServerState::Ready, None),
        (_, false, _) => (ServerState::Scheduling, not_scheduled(pod_conditions).and_then(|c| c.message.clone())),
        _ => (ServerState::Starting, pod_stuck(pod)),
    }
}

/// The kubelet's word that the pod is Ready (its containers and its readiness gates).
fn pod_ready(conditions: &[k8s_openapi::api::core::v1::PodCondition]) -> bool {
    conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The scheduler's word that it found no node for the pod, if it said so.
fn not_scheduled(
    conditions: &[k8s_openapi::api::core::v1::PodCondition],
) -> Option<&k8s_openapi::api::core::v1::PodCondition> {
    conditions.iter().find(|c| c.type_ == "PodScheduled" && c.status == "False")
}

/// Why a pod is stuck before it runs, in the scheduler's or the kubelet's words: not scheduled,
/// or a container that cannot start (its image cannot be pulled, its config is wrong, it keeps
/// crashing). `None` while it is merely on its way (pulling, creating, initializing).
pub fn pod_stuck(pod: &Pod) -> Option<String> {
    /// Waiting reasons that need a person: what the kubelet retries without end.
    const STUCK: [&str; 8] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    ];
    let status = pod.status.as_ref()?;
    if let Some(c) = not_scheduled(status.conditions.as_deref().unwrap_or_default()) {
        return Some(format!(
            "not scheduled: {}",
            c.message.as_deref().or(c.reason.as_deref()).unwrap_or("no reason given")
        ));
    }
    let containers = [&status.init_container_statuses, &status.container_statuses];
    containers.into_iter().flatten().flatten().find_map(|c| {
        let waiting = c.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref().filter(|r| STUCK.contains(r))?;
        Some(match waiting.message.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => format!("container {} {reason}: {m}", c.name),
            None => format!("container {} {reason}", c.name),
        })
    })
}

/// The state once the game's side is heard: a drained server (`NotInService`) is `Draining`,
/// saying what it waits for; a Ready pod whose game has not called Ready through the SDK
/// (`ready: Sdk`) or whose readiness gates are not all True is `RequestReady`; a Ready one the
/// game allocated or reserved says so.
pub fn gated(
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
pub fn report_state(
    status: &mut GameServerStatus,
    state: ServerState,
    message: Option<String>,
    generation: Option<i64>,
) {
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
pub enum PodStep {
    /// None exists: make it (once the topology lists the server's ports).
    Create,
    /// The old one is going; wait for it.
    WaitGone,
    /// It was made from another template: delete it, a new one follows.
    Replace,
    /// Its node mounted the zone's tree image wrong (what its init container found): the server
    /// is to copy the tree instead, with why; the zone gives it a template that does, which
    /// replaces the pod.
    CopyTree(String),
    /// Its process ended, or the game said through the SDK that it is done or unhealthy:
    /// delete it, a new one follows; with the state that shows meanwhile and why.
    Recreate(ServerState, String),
    /// It is the current one: report from it.
    Observe,
}

/// The pod step for `live` when the current template hashes to `hash`, the game of `gs` said
/// what `sdk` holds, and the pod's node is `leaving` (why) or not. A pod on a leaving node goes
/// once [`move_off`](crate::zone::decide::move_off) says it may: its successor runs elsewhere.
pub fn pod_step(
    live: Option<&Pod>,
    hash: &str,
    gs: &GameServer,
    sdk: Option<&SdkStatus>,
    leaving: Option<&str>,
) -> PodStep {
    let Some(pod) = live else { return PodStep::Create };
    if pod.metadata.deletion_timestamp.is_some() {
        return PodStep::WaitGone;
    }
    if pod.annotations().get(TEMPLATE_HASH_ANNOTATION).map(String::as_str) != Some(hash) {
        return PodStep::Replace;
    }
    if let Some(why) = mounted_wrong(pod) {
        return PodStep::CopyTree(why);
    }
    if let Some(node) = leaving
        && crate::zone::decide::move_off(&gs.spec, gs.status.as_ref(), Timestamp::now())
            == crate::zone::decide::Move::Now
    {
        return PodStep::Recreate(ServerState::Updating, format!("moving off {node}"));
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

/// Why the pod's node mounted the zone's tree image wrong, from its artifacts init container's
/// last termination message (`gamezone-init mount`), naming the node.
pub fn mounted_wrong(pod: &Pod) -> Option<String> {
    let what = mounted_wrong_said(pod.status.as_ref()?)?;
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("its node");
    Some(crate::api::conditions::bounded(&format!("on {node}, {what}")))
}

/// What the artifacts init container said of a wrong tree image mount, from
/// [`MOUNTED_WRONG`](crate::api::artifacts::MOUNTED_WRONG) to the end of its line (a JSON log
/// line's closing quote and what follows cut).
pub fn mounted_wrong_said(status: &k8s_openapi::api::core::v1::PodStatus) -> Option<String> {
    let marker = crate::api::artifacts::MOUNTED_WRONG;
    let init = status.init_container_statuses.as_ref()?.iter().find(|c| c.name == crate::zone::INIT_CONTAINER)?;
    let ended = [init.state.as_ref(), init.last_state.as_ref()];
    let said = ended.into_iter().flatten().filter_map(|s| s.terminated.as_ref()?.message.as_deref());
    let line = said.flat_map(str::lines).find(|l| l.contains(marker))?;
    let what = &line[line.find(marker)?..];
    Some(what.split('"').next().unwrap_or(what).trim_end().to_owned())
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
pub fn quiet_left(state: ServerState, message: Option<&str>, pod: &Pod, now: Timestamp) -> Option<Duration> {
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

/// Whether a change to a server's pod is one the server waits on to take its next step, so it
/// runs at once rather than with the routine changes of a burst: its pod is gone (`pod` no
/// longer in the watch), so a new one may be made, or its pod has turned Ready while the server
/// is still on its way there (a rolling update waits on it to take out the next server). A
/// server past that (Ready, waiting for its readiness gates, draining) takes its pod's changes
/// as routine.
pub fn awaited_change(pod: Option<&Pod>, server_state: Option<ServerState>) -> bool {
    use ServerState::*;
    let Some(pod) = pod else { return true };
    let ready = pod_ready(pod.status.as_ref().and_then(|s| s.conditions.as_deref()).unwrap_or_default());
    let on_its_way =
        matches!(server_state, None | Some(PortAllocation | Creating | Scheduling | Starting | Updating | Unhealthy));
    ready && pod.metadata.deletion_timestamp.is_none() && on_its_way
}

/// Sets a state that is not the pod's own (ports, replacement) with why.
pub fn report_step(status: &mut GameServerStatus, state: ServerState, message: impl Into<String>) {
    status.state = Some(state);
    status.message = Some(message.into());
}

/// `base`, the status this process last wrote (or the watch's copy), with what others own in it
/// taken from `live`, the watch's copy: the game's gate conditions and the sidecar's
/// `status.sdk`. The operator never writes those, so its memo of its own last write, which it
/// builds on while the watch has not shown that write yet, may hold them stale: a gate the game
/// set a moment after that write would go unseen until the next change.
pub fn with_others_fields(mut base: GameServerStatus, live: Option<&GameServerStatus>) -> GameServerStatus {
    let Some(live) = live else { return base };
    let owned = |c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        server_types::OPERATOR_OWNED.contains(&c.type_.as_str())
    };
    base.conditions.retain(owned);
    base.conditions.extend(live.conditions.iter().filter(|c| !owned(c)).cloned());
    base.sdk = live.sdk.clone();
    base
}

/// Whether the cluster may evict the pod of a server of `spec` whose status is `status` now: its
/// type allows it always, or the operator would delete the server itself.
pub fn evictable(spec: &GameServerSpec, status: &GameServerStatus, now: Timestamp) -> bool {
    spec.lifecycle.eviction == Eviction::Always || crate::zone::decide::kept_by_players(spec, status, now).is_none()
}

/// When [`evictable`] may turn true without any event: a reservation ends, or a drain's
/// `drainTimeout` passes.
pub fn evictable_again_in(spec: &GameServerSpec, status: &GameServerStatus, now: Timestamp) -> Option<Duration> {
    let reserved = status.sdk_of_current_pod().and_then(|s| s.reserved_until.as_ref()).map(|t| t.0);
    let drained = spec.not_in_service().and_then(|c| c.time_added.as_ref()).map(|t| t.0);
    let timeout_ends = drained.zip(spec.lifecycle.drain_timeout).map(|(since, t)| since + t.duration());
    [reserved, timeout_ends]
        .into_iter()
        .flatten()
        .filter(|at| *at > now)
        .map(|at| Duration::try_from(at.duration_since(now)).unwrap_or_default())
        .min()
}

/// The labels and annotations that tell the cluster whether it may evict a pod: the label the
/// zone's PodDisruptionBudget selects (`false`: refused) and what the cluster autoscaler and
/// Karpenter read before they empty a node.
pub fn eviction_marks(evictable: bool) -> [(&'static str, &'static str, bool); 3] {
    let (yes, no) = if evictable { ("true", "false") } else { ("false", "true") };
    [(EVICTABLE_LABEL, yes, true), (SAFE_TO_EVICT_ANNOTATION, yes, false), (DO_NOT_DISRUPT_ANNOTATION, no, false)]
}

/// What the operator keeps on the pod of `gs` outside its template, so that a release adding
/// them restarts no pod: the eviction marks of `evictable` and the server's version labels.
pub fn pod_marks(gs: &GameServer, evictable: bool) -> ObjectMeta {
    let mut marks = ObjectMeta::default();
    mark_eviction(&mut marks, evictable);
    let labels = marks.labels.get_or_insert_with(Default::default);
    for key in VERSION_LABELS {
        if let Some(value) = gs.labels().get(key) {
            labels.insert(key.into(), value.clone());
        }
    }
    marks
}

/// Whether `pod` lacks any of `marks` or holds one with another value.
pub fn marks_differ(pod: &Pod, marks: &ObjectMeta) -> bool {
    let differ = |want: &Option<BTreeMap<String, String>>, have: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().any(|(k, v)| have.as_ref().and_then(|h| h.get(k)) != Some(v))
    };
    differ(&marks.labels, &pod.metadata.labels) || differ(&marks.annotations, &pod.metadata.annotations)
}

/// Sets the eviction marks of `evictable` on `meta`.
pub fn mark_eviction(meta: &mut ObjectMeta, evictable: bool) {
    for (key, value, label) in eviction_marks(evictable) {
        let marks = if label { &mut meta.labels } else { &mut meta.annotations };
        marks.get_or_insert_with(Default::default).insert(key.into(), value.into());
    }
}

/// The Pod of a GameServer: its template plus the allocated ports, their env vars and ownership.
/// A new pod holds no players: the cluster may evict it until its server says otherwise.
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
    let marks = pod_marks(gs, true);
    metadata.labels.get_or_insert_with(Default::default).extend(marks.labels.unwrap_or_default());
    metadata.annotations.get_or_insert_with(Default::default).extend(marks.annotations.unwrap_or_default());
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
    tolerate_node_loss(&mut spec);
    Ok(Pod { metadata, spec: Some(spec), status: None })
}

/// The taints the node lifecycle controller puts on a node it stops hearing from.
pub const NODE_LOSS_TAINTS: [&str; 2] = ["node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"];

/// Lets a server's pod stay on a node that went NotReady for as long as the operator keeps it
/// there: without this, the taint manager deletes it after 300 s (the tolerations the API server
/// adds by default), players or not, and the operator drains such a node by the gates itself
/// (`--node-not-ready-grace`). Outside the template, so an upgrade restarts no pod; tolerations
/// the template has for these taints are kept as they are.
fn tolerate_node_loss(spec: &mut k8s_openapi::api::core::v1::PodSpec) {
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for key in NODE_LOSS_TAINTS {
        if !tolerations.iter().any(|t| t.key.as_deref() == Some(key)) {
            tolerations.push(Toleration {
                key: Some(key.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                ..Default::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodStatus};

    fn server() -> GameServer {
        let zone = gamezone_api::fixture::zone("z1")
            .namespace("ns")
            .uid("u1")
            .game("ports", serde_json::json!([{"name": "client", "containerPort": 7777}]))
            .build();
        let mut gs = crate::zone::game_servers(&zone, &[], None, &Default::default()).unwrap().remove(0);
        gs.metadata.generation = Some(1);
        gs
    }

    #[test]
    fn a_pod_gone_or_newly_ready_is_awaited_other_changes_are_routine() {
        let gs = server();
        let pod = build_pod(&gs, &[], "h").unwrap();
        assert!(awaited_change(None, Some(ServerState::Updating)), "gone: the new pod may be made");
        let starting = scheduled(pod.clone(), false);
        assert!(!awaited_change(Some(&starting), Some(ServerState::Starting)), "a step on the way");
        let ready = scheduled(pod, true);
        assert!(awaited_change(Some(&ready), Some(ServerState::Starting)), "Ready, not yet said");
        assert!(!awaited_change(Some(&ready), Some(ServerState::Ready)), "already said");
        for past in [ServerState::RequestReady, ServerState::Draining, ServerState::Shutdown] {
            assert!(!awaited_change(Some(&ready), Some(past)), "{past:?}: past its start");
        }
        assert!(awaited_change(Some(&ready), Some(ServerState::Updating)), "a replacement");
        let mut leaving = ready.clone();
        leaving.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
        assert!(!awaited_change(Some(&leaving), None), "a pod on its way out");
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
        assert_eq!(observe_pod(&mut status, &pod, None, true, "h".into()), (ServerState::Starting, None));
        assert_eq!(status.node_address.as_deref(), Some("10.0.1.1"), "the pod's host IP when the node has none");
        // Its node not Ready: a pod that never served is still starting; one that served (the node
        // lifecycle controller marked it not Ready) is taken to serve still.
        let mut marked = pod.clone();
        marked.status.as_mut().unwrap().phase = Some("Running".into());
        assert_eq!(observe_pod(&mut status, &marked, None, false, "h".into()).0, ServerState::Starting);
        status.state = Some(ServerState::Draining);
        assert_eq!(observe_pod(&mut status, &marked, None, false, "h".into()).0, ServerState::Ready);
        assert_eq!(observe_pod(&mut status, &pod, None, false, "h".into()).0, ServerState::Starting, "not Running");
        let back = observe_pod(&mut status, &marked, None, true, "h".into()).0;
        assert_eq!(back, ServerState::Starting, "its node is back and says the pod is not Ready");

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
        let (state, why) = observe_pod(&mut GameServerStatus::default(), &pending, None, true, "h".into());
        assert_eq!((state, why.as_deref()), (ServerState::Scheduling, Some("0/3 nodes are available")));
    }

    #[test]
    fn a_stuck_pod_says_why_in_the_scheduler_s_or_the_kubelet_s_words_and_one_on_its_way_says_nothing() {
        let with = |status: serde_json::Value| Pod {
            status: Some(serde_json::from_value(status).unwrap()),
            ..Default::default()
        };
        let unscheduled = with(serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled",
            "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 node(s) had untolerated taint(s)."}]}));
        assert_eq!(
            pod_stuck(&unscheduled).as_deref(),
            Some("not scheduled: 0/1 nodes are available: 1 node(s) had untolerated taint(s).")
        );
        let waiting = |name: &str, reason: &str, message: &str| {
            with(serde_json::json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                "initContainerStatuses": [{"name": "sdk", "image": "i", "imageID": "", "ready": true,
                    "restartCount": 0, "state": {"running": {}}}],
                "containerStatuses": [{"name": name, "image": "i", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"waiting": {"reason": reason, "message": message}}}]}))
        };
        let pull = waiting("game", "ImagePullBackOff", "Back-off pulling image \"registry.local/game:v9\"");
        assert_eq!(
            pod_stuck(&pull).as_deref(),
            Some("container game ImagePullBackOff: Back-off pulling image \"registry.local/game:v9\"")
        );
        assert_eq!(
            pod_stuck(&waiting("game", "CrashLoopBackOff", "")).as_deref(),
            Some("container game CrashLoopBackOff")
        );
        for on_its_way in ["ContainerCreating", "PodInitializing"] {
            assert_eq!(pod_stuck(&waiting("game", on_its_way, "")), None, "{on_its_way}");
        }
        assert_eq!(pod_stuck(&Pod::default()), None, "no status yet");
    }

    #[test]
    fn a_pod_whose_node_mounted_the_tree_image_wrong_asks_for_a_copy_naming_the_node() {
        let gs = server();
        let hash = server_template_hash(&gs.spec);
        let mut pod = build_pod(&gs, &[], &hash).unwrap();
        pod.spec.as_mut().unwrap().node_name = Some("node-7".into());
        let said = "Error: image volume mounted wrong: the image volume at /app/artifacts holds a tree of 0 files";
        pod.status = Some(
            serde_json::from_value(serde_json::json!({"phase": "Pending", "initContainerStatuses": [{
            "name": crate::zone::INIT_CONTAINER, "image": "i", "imageID": "", "ready": false, "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "message": said}}}]}))
            .unwrap(),
        );
        let PodStep::CopyTree(why) = pod_step(Some(&pod), &hash, &gs, None, None) else { panic!("a copy asked for") };
        assert!(why.starts_with("on node-7, image volume mounted wrong: the image volume at /app/artifacts"), "{why}");
        // Any other failure of the init container is not that.
        pod.status = Some(
            serde_json::from_value(serde_json::json!({"phase": "Pending", "initContainerStatuses": [{
            "name": crate::zone::INIT_CONTAINER, "image": "i", "imageID": "", "ready": false, "restartCount": 1,
            "lastState": {"terminated": {"exitCode": 1, "message": "layer 0 (git x): not found"}}}]}))
            .unwrap(),
        );
        assert_eq!(pod_step(Some(&pod), &hash, &gs, None, None), PodStep::Observe);
    }

    #[test]
    fn the_pod_step_follows_the_live_pod() {
        let gs = server();
        let hash = server_template_hash(&gs.spec);
        let current = pod_without_host_ports(&gs).unwrap();
        assert_eq!(pod_step(None, &hash, &gs, None, None), PodStep::Create);
        assert_eq!(pod_step(Some(&current), &hash, &gs, None, None), PodStep::Observe);
        assert_eq!(pod_step(Some(&current), "another template", &gs, None, None), PodStep::Replace);
        let mut going = current.clone();
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
        assert_eq!(pod_step(Some(&going), &hash, &gs, None, None), PodStep::WaitGone);
        let mut ended = current.clone();
        ended.status =
            Some(PodStatus { phase: Some("Failed".into()), message: Some("OOMKilled".into()), ..Default::default() });
        assert_eq!(
            pod_step(Some(&ended), &hash, &gs, None, None),
            PodStep::Recreate(ServerState::Unhealthy, "pod ended (OOMKilled); making a new one".into())
        );
    }

    #[test]
    fn a_pod_on_a_leaving_node_goes_once_its_server_may_go() {
        let mut gs = server();
        gs.spec.lifecycle.deletable_gates = vec!["NoPlayers".into()];
        let hash = server_template_hash(&gs.spec);
        let pod = pod_without_host_ports(&gs).unwrap();
        let leaving = Some("node-1 is cordoned");
        assert_eq!(pod_step(Some(&pod), &hash, &gs, None, None), PodStep::Observe);
        let starting = GameServerStatus { state: Some(ServerState::Starting), ..Default::default() };
        gs.status = Some(starting);
        let moved = PodStep::Recreate(ServerState::Updating, "moving off node-1 is cordoned".into());
        assert_eq!(pod_step(Some(&pod), &hash, &gs, None, leaving), moved, "no one plays on it yet");
        gs.status.as_mut().unwrap().state = Some(ServerState::Ready);
        assert_eq!(pod_step(Some(&pod), &hash, &gs, None, leaving), PodStep::Observe, "not drained yet");
        gs.spec.constraints =
            vec![Constraint { type_: NOT_IN_SERVICE.into(), effective: Some(true), message: None, time_added: None }];
        assert_eq!(pod_step(Some(&pod), &hash, &gs, None, leaving), PodStep::Observe, "its gate is not True");
        conditions::set(&mut gs.status.as_mut().unwrap().conditions, "NoPlayers", true, "Game", "", None);
        assert_eq!(pod_step(Some(&pod), &hash, &gs, None, leaving), moved, "its players left");
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
        let step = |gs: &GameServer, s: SdkStatus| pod_step(Some(&pod), &hash, gs, Some(&s), None);
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

    #[test]
    fn the_cluster_may_evict_a_pod_exactly_when_the_operator_would_delete_its_server() {
        let mut gs = server();
        gs.spec.lifecycle.deletable_gates = vec!["NoPlayers".into()];
        let now = Timestamp::now();
        let mut status = GameServerStatus { state: Some(ServerState::Starting), ..Default::default() };
        assert!(evictable(&gs.spec, &status, now), "no one plays on a starting server");
        status.state = Some(ServerState::Ready);
        assert!(!evictable(&gs.spec, &status, now), "its gate is not True yet");
        conditions::set(&mut status.conditions, "NoPlayers", true, "Game", "", None);
        assert!(evictable(&gs.spec, &status, now), "its players left");
        // Allocated through the SDK by its current pod: kept, whatever the gate says.
        status.pod_uid = Some("pod-1".into());
        status.sdk =
            Some(SdkStatus { state: Some(SdkState::Allocated), pod_uid: Some("pod-1".into()), ..Default::default() });
        assert!(!evictable(&gs.spec, &status, now));
        assert_eq!(evictable_again_in(&gs.spec, &status, now), None, "until the game says otherwise");
        // Reserved for a minute: evictable again then.
        let until = now + Duration::from_secs(60);
        let sdk = status.sdk.as_mut().unwrap();
        (sdk.state, sdk.reserved_until) =
            (Some(SdkState::Reserved), Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(until)));
        assert!(!evictable(&gs.spec, &status, now));
        assert_eq!(evictable_again_in(&gs.spec, &status, now), Some(Duration::from_secs(60)));
        assert!(evictable(&gs.spec, &status, until));
        // A type whose servers may always go.
        gs.spec.lifecycle.eviction = Eviction::Always;
        assert!(evictable(&gs.spec, &status, now));
    }

    #[test]
    fn the_game_s_gates_and_sdk_words_come_from_the_live_copy_the_operator_s_own_from_its_memo() {
        let mut memo = GameServerStatus { state: Some(ServerState::Ready), ..Default::default() };
        conditions::set(&mut memo.conditions, server_types::READY, true, "Ready", "", None);
        conditions::set(&mut memo.conditions, "NoPlayers", false, "Game", "", None);
        // The watch has not shown the operator's write yet, but it shows the game's newer gate.
        let mut live = GameServerStatus { state: Some(ServerState::Starting), ..Default::default() };
        conditions::set(&mut live.conditions, server_types::READY, false, "Starting", "", None);
        conditions::set(&mut live.conditions, "NoPlayers", true, "Game", "", None);
        live.sdk = Some(SdkStatus { state: Some(SdkState::Allocated), ..Default::default() });
        let base = with_others_fields(memo.clone(), Some(&live));
        assert_eq!(base.state, Some(ServerState::Ready), "the operator's own fields from its memo");
        assert!(conditions::is_true(&base.conditions, server_types::READY));
        assert!(conditions::is_true(&base.conditions, "NoPlayers"), "the game's gate from the live copy");
        assert_eq!(base.conditions.len(), 2);
        assert_eq!(base.sdk, live.sdk);
        assert_eq!(with_others_fields(memo.clone(), None), memo);
    }

    #[test]
    fn a_new_pod_is_marked_evictable_with_its_version_and_marks_are_told_apart() {
        let mut gs = server();
        gs.labels_mut().insert(VERSION_LABEL.into(), "1.2.0".into());
        let mut pod = pod_without_host_ports(&gs).unwrap();
        let (evictable, held) = (pod_marks(&gs, true), pod_marks(&gs, false));
        assert!(!marks_differ(&pod, &evictable), "{:?} {:?}", pod.metadata.labels, pod.metadata.annotations);
        assert_eq!(pod.labels()[VERSION_LABEL], "1.2.0");
        assert!(!pod.labels().contains_key(ARTIFACTS_LABEL), "a zone without artifacts");
        assert!(marks_differ(&pod, &held));
        mark_eviction(&mut pod.metadata, false);
        assert!(!marks_differ(&pod, &held));
        // The node lifecycle controller's taints are tolerated for as long as the operator keeps the pod.
        let tolerated: Vec<_> =
            pod.spec.as_ref().unwrap().tolerations.iter().flatten().map(|t| t.key.clone()).collect();
        assert!(NODE_LOSS_TAINTS.iter().all(|k| tolerated.contains(&Some(k.to_string()))), "{tolerated:?}");
        assert!(pod.spec.as_ref().unwrap().tolerations.iter().flatten().all(|t| t.toleration_seconds.is_none()));
        // A pod made before the version labels (an operator upgrade) gets them outside its template.
        pod.labels_mut().remove(VERSION_LABEL);
        assert!(marks_differ(&pod, &held));
        assert_eq!(pod.labels()[EVICTABLE_LABEL], "false");
        assert_eq!(pod.annotations()[SAFE_TO_EVICT_ANNOTATION], "false");
        assert_eq!(pod.annotations()[DO_NOT_DISRUPT_ANNOTATION], "true");
        assert_eq!(pod.annotations()[TEMPLATE_HASH_ANNOTATION], server_template_hash(&gs.spec), "other marks stay");
    }
}
