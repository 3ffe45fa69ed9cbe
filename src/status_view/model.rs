//! What `gamezone status` shows, as plain data taken from the objects `kubectl` would read: the
//! zone, its GameServers and the Events about them. No client here: the drawing and its tests
//! work on this alone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{GameServer, GameZone, ServerState, TYPE_LABEL, VERSION_LABEL};
use crate::zone::image_version;

/// One zone at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The zone's namespace.
    pub namespace: String,
    /// The zone's name.
    pub zone: String,
    /// `status.phase`, when written.
    pub phase: Option<String>,
    /// `metadata.generation` and `status.observedGeneration`.
    pub generation: Option<i64>,
    /// The generation the status describes.
    pub observed_generation: Option<i64>,
    /// `status.readyServers` / `status.desiredServers`.
    pub ready: i32,
    /// Servers wanted.
    pub desired: i32,
    /// The conditions worth a line: Ready, ServersReady and every other one that is not True.
    pub conditions: Vec<ConditionLine>,
    /// Each server of the zone, ordered by type then id.
    pub servers: Vec<Server>,
    /// The version each service type is rolling to (from the spec), by type.
    pub wanted_versions: BTreeMap<String, String>,
    /// `status.artifactRevision`.
    pub artifact_revision: Option<String>,
    /// `status.artifacts`.
    pub pins: Vec<Pin>,
    /// `status.treeImage.image`.
    pub tree_image: Option<String>,
    /// Events about the zone and its servers, newest last.
    pub events: Vec<EventLine>,
    /// The zone is being deleted.
    pub deleting: bool,
}

/// One condition of the zone.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConditionLine {
    /// `Ready`, `ServersReady` …
    pub type_: String,
    /// `True`, `False`, `Unknown`.
    pub status: String,
    /// CamelCase reason.
    pub reason: String,
    /// What a person reads.
    pub message: String,
}

/// One service instance (GameServer).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Server {
    /// `<zone>-<type>-<id>`.
    pub name: String,
    /// Service type.
    pub type_: String,
    /// Instance id.
    pub id: i64,
    /// The game image's version it runs or is moving to.
    pub version: String,
    /// `status.state`; `None` before the operator wrote one.
    pub state: Option<ServerState>,
    /// `status.message`: what it waits for.
    pub message: Option<String>,
    /// Being deleted.
    pub deleting: bool,
}

/// How a server counts in the bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Group {
    /// Ready for players.
    Ready,
    /// On its way to Ready: ports, pod, scheduling, containers, gates, a new template.
    Starting,
    /// Leaving: drained for players, shut down by the game, or deleted.
    Draining,
    /// Its pod failed; it is replaced.
    Unhealthy,
}

impl Group {
    /// Every group, in the order the bars draw them.
    pub const ALL: [Group; 4] = [Group::Ready, Group::Starting, Group::Draining, Group::Unhealthy];

    /// The word for it.
    pub fn word(self) -> &'static str {
        match self {
            Group::Ready => "ready",
            Group::Starting => "starting",
            Group::Draining => "draining",
            Group::Unhealthy => "unhealthy",
        }
    }
}

impl Server {
    /// The group this server counts in.
    pub fn group(&self) -> Group {
        if self.deleting {
            return Group::Draining;
        }
        match self.state {
            Some(ServerState::Ready) => Group::Ready,
            Some(ServerState::Draining | ServerState::Shutdown) => Group::Draining,
            Some(ServerState::Unhealthy) => Group::Unhealthy,
            Some(
                ServerState::PortAllocation
                | ServerState::Creating
                | ServerState::Scheduling
                | ServerState::Starting
                | ServerState::RequestReady
                | ServerState::Updating,
            )
            | None => Group::Starting,
        }
    }

    /// Its state as a word: `status.state`, `Deleting`, or `Pending` before the first status.
    pub fn state_word(&self) -> String {
        match (self.deleting, self.state) {
            (true, _) => "Deleting".into(),
            (false, Some(s)) => format!("{s:?}"),
            (false, None) => "Pending".into(),
        }
    }
}

/// One pinned artifact layer.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pin {
    /// Index in `spec.artifacts`.
    pub layer: i32,
    /// Its source, without credentials.
    pub source: String,
    /// The exact revision.
    pub revision: String,
    /// Packed into the artifact registry.
    pub packed: bool,
}

/// One Event.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventLine {
    /// When it last happened.
    pub time: Option<Timestamp>,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// CamelCase reason.
    pub reason: String,
    /// `GameZone/zone1`, `GameServer/zone1-game-1`.
    pub object: String,
    /// Its message.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
}

impl Snapshot {
    /// The snapshot of `zone`, its `servers` and the `events` about them (in any order; the
    /// newest `keep_events` are kept).
    pub fn new(zone: &GameZone, servers: &[GameServer], events: &[Event], keep_events: usize) -> Snapshot {
        let status = zone.status.clone().unwrap_or_default();
        let mut conditions: Vec<ConditionLine> = status
            .conditions
            .iter()
            .filter(|c| c.type_ == "Ready" || c.type_ == "ServersReady" || c.status != "True")
            .map(|c| ConditionLine {
                type_: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect();
        // Ready first, ServersReady next, then the rest as written.
        conditions.sort_by_key(|c| match c.type_.as_str() {
            "Ready" => 0,
            "ServersReady" => 1,
            _ => 2,
        });
        let mut servers: Vec<Server> = servers.iter().map(server).collect();
        servers.sort_by(|a, b| (&a.type_, a.id, &a.name).cmp(&(&b.type_, b.id, &b.name)));
        let wanted_versions = zone
            .spec
            .services
            .iter()
            .filter_map(|s| {
                let image = s.image.as_ref().or(zone.spec.default_image.as_ref())?;
                Some((s.type_.clone(), image_version(image)))
            })
            .collect();
        let mut events: Vec<EventLine> = events.iter().map(event).collect();
        events.sort_by_key(|e| e.time);
        let drop = events.len().saturating_sub(keep_events);
        events.drain(..drop);
        Snapshot {
            namespace: zone.namespace().unwrap_or_default(),
            zone: zone.name_any(),
            phase: status.phase.map(|p| format!("{p:?}")),
            generation: zone.metadata.generation,
            observed_generation: status.observed_generation,
            ready: status.ready_servers,
            desired: status.desired_servers,
            conditions,
            servers,
            wanted_versions,
            artifact_revision: status.artifact_revision,
            pins: status
                .artifacts
                .iter()
                .map(|a| Pin {
                    layer: a.layer,
                    source: a.source.clone(),
                    revision: a.revision.clone(),
                    packed: a.packed.is_some(),
                })
                .collect(),
            tree_image: status.tree_image.map(|t| t.image),
            events,
            deleting: zone.metadata.deletion_timestamp.is_some(),
        }
    }
}

fn server(gs: &GameServer) -> Server {
    let status = gs.status.clone().unwrap_or_default();
    let version = gs.labels().get(VERSION_LABEL).cloned().unwrap_or_else(|| {
        let containers = gs.spec.template.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
        // The game's container; a template from elsewhere may name it otherwise.
        let game = containers.iter().find(|c| c.name == crate::zone::SERVER_CONTAINER).or(containers.first());
        game.and_then(|c| c.image.as_deref()).map_or_else(|| "unknown".into(), image_version)
    });
    Server {
        name: gs.name_any(),
        type_: gs.labels().get(TYPE_LABEL).cloned().unwrap_or_else(|| gs.spec.type_.clone()),
        id: gs.spec.id,
        version,
        state: status.state,
        message: status.message.filter(|m| !m.is_empty()),
        deleting: gs.metadata.deletion_timestamp.is_some(),
    }
}

fn event(e: &Event) -> EventLine {
    // Events written through events.k8s.io carry `eventTime` and a series; core ones
    // `lastTimestamp`.
    let time = e
        .series
        .as_ref()
        .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
        .or(e.last_timestamp.as_ref().map(|Time(t)| *t))
        .or(e.event_time.as_ref().map(|t| t.0))
        .or(e.first_timestamp.as_ref().map(|Time(t)| *t))
        .or(e.metadata.creation_timestamp.as_ref().map(|Time(t)| *t));
    let count = e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1);
    EventLine {
        time,
        type_: e.type_.clone().unwrap_or_else(|| "Normal".into()),
        reason: e.reason.clone().unwrap_or_default(),
        object: format!(
            "{}/{}",
            e.involved_object.kind.as_deref().unwrap_or("?"),
            e.involved_object.name.as_deref().unwrap_or("?")
        ),
        message: e.message.clone().unwrap_or_default().replace('\n', " "),
        count: count.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EventSeries, ObjectReference};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use serde_json::json;

    fn gs(name: &str, id: i64, image: &str, labels: serde_json::Value, status: serde_json::Value) -> GameServer {
        serde_json::from_value(json!({
            "apiVersion": "gamezone.dev/v1alpha1", "kind": "GameServer",
            "metadata": {"name": name, "namespace": "ns", "labels": labels},
            "spec": {"zone": "zone1", "type": "game", "id": id, "template": {"spec": {"containers": [
                {"name": "gamezone-sdk", "image": "gamezone:dev"},
                {"name": "server", "image": image},
            ]}}},
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_server_takes_the_version_label_else_its_game_containers_image() {
        let labelled = gs("zone1-game-1", 1, "svc:1", json!({VERSION_LABEL: "1.0-hotfix"}), json!({}));
        let unlabelled = gs("zone1-game-2", 2, "svc:2", json!({}), json!({"state": "Ready"}));
        let zone = gamezone_api::fixture::zone("zone1").build();
        let snap = Snapshot::new(&zone, &[unlabelled, labelled], &[], 8);
        let got: Vec<_> = snap.servers.iter().map(|s| (s.name.as_str(), s.version.as_str(), s.group())).collect();
        assert_eq!(got, [("zone1-game-1", "1.0-hotfix", Group::Starting), ("zone1-game-2", "2", Group::Ready)]);
    }

    #[test]
    fn conditions_keep_ready_and_servers_ready_first_and_whatever_is_not_true() {
        let mut zone = gamezone_api::fixture::zone("zone1").build();
        zone.status = Some(
            serde_json::from_value(json!({"conditions": [
                {"type": "ArtifactsReady", "status": "True", "reason": "Pinned", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Migrated", "status": "False", "reason": "JobFailed", "message": "job failed", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "ServersReady", "status": "True", "reason": "AllReady", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                {"type": "Ready", "status": "False", "reason": "Degraded", "message": "migration failed", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            ]}))
            .unwrap(),
        );
        let snap = Snapshot::new(&zone, &[], &[], 8);
        let types: Vec<_> = snap.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "ServersReady", "Migrated"]);
    }

    #[test]
    fn events_keep_the_newest_by_their_last_time_whichever_api_wrote_them() {
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        let core = |name: &str, time: &str| Event {
            metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
            involved_object: ObjectReference {
                kind: Some("GameZone".into()),
                name: Some("zone1".into()),
                ..Default::default()
            },
            reason: Some(name.into()),
            last_timestamp: Some(Time(at(time))),
            ..Default::default()
        };
        let mut series = core("series", "2026-01-01T00:00:00Z");
        series.last_timestamp = None;
        series.event_time = Some(MicroTime(at("2026-01-01T00:00:01Z")));
        series.series =
            Some(EventSeries { count: Some(4), last_observed_time: Some(MicroTime(at("2026-01-01T00:00:09Z"))) });
        let events = [core("new", "2026-01-01T00:00:05Z"), series, core("old", "2026-01-01T00:00:02Z")];
        let snap = Snapshot::new(&gamezone_api::fixture::zone("zone1").build(), &[], &events, 2);
        let kept: Vec<_> = snap.events.iter().map(|e| (e.reason.as_str(), e.count)).collect();
        assert_eq!(kept, [("new", 1), ("series", 4)]);
        assert_eq!(snap.events[0].object, "GameZone/zone1");
    }
}
