//! What the caches keep of each object: the operator holds every pod and node of its scope in
//! memory, so each keeps only the fields a reconcile reads. An object is never written back
//! from a cache (writes are server-side applies of what the operator builds), so what is
//! dropped here is not lost.

use std::borrow::Cow;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStatus, Node, Pod, PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Deserializer};

use crate::api::GameServer;
use crate::ports::passthrough::passthrough_ports;
use crate::server::mounted_wrong_said;
use crate::zone::INIT_CONTAINER;

/// Any object: managedFields, which nothing here reads, are most of a small object.
pub fn object<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
}

/// A pod as the server controller reads it: its metadata, node, phase, addresses and
/// conditions, and, on a pod marked for the platform's Passthrough port assignment, its
/// containers' names and ports (where the assigned port shows). Not the env, mounts, probes,
/// volumes or init containers its GameServer's template holds anyway, nor its containers'
/// statuses (but for one line when its node mounted the tree image wrong): a decoded Container
/// or ContainerStatus is kilobytes even when nearly empty, and the operator holds every pod of
/// its scope.
pub fn pod(pod: &mut Pod) {
    object(pod);
    let assigned_ports = passthrough_ports(pod).is_ok_and(|p| !p.is_empty());
    if let Some(spec) = pod.spec.take() {
        let PodSpec { containers, node_name, .. } = spec;
        let containers = if assigned_ports {
            containers.into_iter().map(|c| Container { name: c.name, ports: c.ports, ..Default::default() }).collect()
        } else {
            Vec::new()
        };
        pod.spec = Some(PodSpec { containers, node_name, ..Default::default() });
    }
    if let Some(status) = pod.status.take() {
        // Of the containers' statuses, only what a wrong tree image mount said, as one line.
        let init_container_statuses = mounted_wrong_said(&status).map(|said| {
            let terminated = ContainerStateTerminated { exit_code: 1, message: Some(said), ..Default::default() };
            let state = ContainerState { terminated: Some(terminated), ..Default::default() };
            vec![ContainerStatus { name: INIT_CONTAINER.into(), state: Some(state), ..Default::default() }]
        });
        let PodStatus { phase, message, reason, pod_ip, host_ip, conditions, .. } = status;
        pod.status = Some(PodStatus {
            phase,
            message,
            reason,
            pod_ip,
            host_ip,
            conditions,
            init_container_statuses,
            ..Default::default()
        });
    }
}

/// What a controller is told of a change: the object's name, namespace and owners, which is all
/// a trigger reads (the reconcile reads the object from the store). Each watch event goes to
/// every controller that hears of its kind, and a whole copy of a GameServer is some 15 KB.
pub fn trigger_meta(meta: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        owner_references: meta.owner_references.clone(),
        ..Default::default()
    }
}

/// A GameServer as the store keeps it: whole but for its pod template, which is kept as the JSON
/// it encodes to and decoded when a reconcile reads the server ([`StoredServer::server`]). A
/// decoded template is kilobytes even for one container, since every optional field of a
/// PodSpec, Container and Volume is held inline, and its JSON a small part of that; the store
/// holds every server of the operator's scope, and a reconcile reads only a few at a time.
#[derive(Clone, Debug)]
pub struct StoredServer {
    /// The server, its `spec.template` left empty.
    rest: GameServer,
    /// Its `spec.template`, as JSON.
    template: Box<str>,
}

impl StoredServer {
    /// The server but for its `spec.template` (left empty), without a copy.
    pub fn without_template(&self) -> &GameServer {
        &self.rest
    }

    /// The server as the API server sent it (but for managedFields).
    pub fn server(&self) -> GameServer {
        let mut gs = self.rest.clone();
        gs.spec.template = serde_json::from_str(&self.template).expect("a template encoded here decodes");
        gs
    }

    /// The node its pod runs on, as its status says.
    pub fn node(&self) -> Option<&str> {
        self.rest.status.as_ref()?.node_name.as_deref()
    }

    /// What a controller is told of a change to `self` (see [`trigger_meta`]).
    pub fn trigger(&self) -> Self {
        let rest = GameServer { metadata: trigger_meta(&self.rest.metadata), spec: Default::default(), status: None };
        StoredServer { rest, template: "{}".into() }
    }
}

impl From<GameServer> for StoredServer {
    fn from(mut gs: GameServer) -> Self {
        object(&mut gs);
        let template = std::mem::take(&mut gs.spec.template);
        let template = serde_json::to_string(&template).expect("a pod template encodes to JSON");
        StoredServer { rest: gs, template: template.into_boxed_str() }
    }
}

/// A watch event's object is decoded whole, then its template encoded: the whole copy lives only
/// as long as the event.
impl<'de> Deserialize<'de> for StoredServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        GameServer::deserialize(d).map(Self::from)
    }
}

impl Resource for StoredServer {
    type DynamicType = ();
    type Scope = <GameServer as Resource>::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        GameServer::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        GameServer::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        GameServer::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        GameServer::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.rest.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.rest.metadata
    }
}

/// A node as the port allocator reads it: whether it is usable and its addresses; not the
/// images it holds (a real node's list is long) or its volumes.
pub fn node(node: &mut Node) {
    object(node);
    if let Some(status) = node.status.as_mut() {
        status.images = None;
        status.volumes_attached = None;
        status.volumes_in_use = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full_pod(marked: bool) -> Pod {
        let (labels, annotations) = if marked {
            (
                json!({"gamezone.dev/port": "autopilot-passthrough"}),
                json!({"gamezone.dev/template-hash": "abc",
                    "gamezone.dev/passthrough-ports": r#"[{"name":"client","container":"game","index":0}]"#}),
            )
        } else {
            (json!({}), json!({"gamezone.dev/template-hash": "abc"}))
        };
        serde_json::from_value(json!({
            "metadata": {"name": "z-game-1", "namespace": "n", "uid": "u1", "labels": labels, "annotations": annotations,
                "ownerReferences": [{"apiVersion": "gamezone.dev/v1alpha1", "kind": "GameServer", "name": "z-game-1", "uid": "g1", "controller": true}],
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {"nodeName": "real-1",
                "initContainers": [{"name": "artifacts", "env": [{"name": "GAMEZONE_LAYERS", "value": "[...]"}]}],
                "containers": [{"name": "game", "image": "g:1", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "client", "containerPort": 7777, "hostPort": 7001, "protocol": "UDP"}]}],
                "volumes": [{"name": "artifacts", "emptyDir": {}}]},
            "status": {"phase": "Failed", "message": "OOMKilled", "reason": "Evicted", "podIP": "10.244.1.5", "hostIP": "10.245.0.2",
                "podIPs": [{"ip": "10.244.1.5"}], "qosClass": "BestEffort",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"},
                    {"type": "Ready", "status": "False", "message": "containers not ready"}],
                "containerStatuses": [{"name": "game", "image": "g:1", "imageID": "", "ready": false, "restartCount": 3}]}
        }))
        .unwrap()
    }

    #[test]
    fn a_slim_pod_keeps_what_the_server_controller_reads() {
        let mut p = full_pod(false);
        let before = p.clone();
        pod(&mut p);
        assert!(p.metadata.managed_fields.as_ref().is_none_or(|m| m.is_empty()));
        let mut meta = before.metadata.clone();
        meta.managed_fields = p.metadata.managed_fields.clone();
        assert_eq!(p.metadata, meta, "metadata stays whole but for managedFields");
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("real-1"));
        assert!(spec.init_containers.is_none() && spec.volumes.is_none() && spec.containers.is_empty());
        let (status, was) = (p.status.unwrap(), before.status.unwrap());
        assert_eq!(
            (&status.phase, &status.message, &status.reason, &status.pod_ip, &status.host_ip, &status.conditions),
            (&was.phase, &was.message, &was.reason, &was.pod_ip, &was.host_ip, &was.conditions)
        );
        assert!(status.container_statuses.is_none() && status.pod_ips.is_none() && status.qos_class.is_none());
    }

    #[test]
    fn a_slim_pod_keeps_one_line_of_what_a_wrong_tree_image_mount_said() {
        let mut p = full_pod(false);
        let said =
            r#"{"level":"ERROR","error":"image volume mounted wrong: 0 files, not the pinned one","transient":false}"#;
        p.status.as_mut().unwrap().init_container_statuses = Some(vec![
            serde_json::from_value(serde_json::json!({
            "name": INIT_CONTAINER, "image": "i", "imageID": "", "ready": false, "restartCount": 2,
            "lastState": {"terminated": {"exitCode": 1, "message": said}}}))
            .unwrap(),
        ]);
        let full = crate::server::mounted_wrong(&p).expect("said on the full pod");
        pod(&mut p);
        assert_eq!(crate::server::mounted_wrong(&p).as_deref(), Some(full.as_str()), "and on the slim one");
        assert!(full.ends_with("mounted wrong: 0 files, not the pinned one"), "{full}");
        let kept = p.status.unwrap().init_container_statuses.unwrap();
        assert_eq!((kept.len(), kept[0].image.as_str(), kept[0].last_state.is_none()), (1, "", true));
    }

    #[test]
    fn a_slim_pod_marked_for_passthrough_keeps_its_containers_ports() {
        let mut p = full_pod(true);
        let before = p.clone();
        pod(&mut p);
        let spec = p.spec.as_ref().unwrap();
        let game = &spec.containers[0];
        assert_eq!((game.name.as_str(), game.env.as_ref(), game.image.as_ref()), ("game", None, None));
        assert_eq!(game.ports, before.spec.as_ref().unwrap().containers[0].ports, "ports stay whole");
        assert_eq!(passthrough_ports(&p), passthrough_ports(&before));
        assert_eq!(
            crate::ports::passthrough::final_ports(&p),
            crate::ports::passthrough::final_ports(&before),
            "the assigned port reads the same"
        );
        assert_eq!(crate::ports::passthrough::final_ports(&p).get("client"), Some(&7777));
    }

    /// Servers of a zone with every kind of part a template can have: artifact layers (an init
    /// container and volumes), a database, ports, the SDK sidecar, and a status.
    fn servers() -> Vec<GameServer> {
        let zone = gamezone_api::fixture::zone("z")
            .namespace("n")
            .uid("u-1")
            .spec("zoneId", json!(7))
            .services(json!([
                {"type": "game", "id": 1, "endId": 2, "ports": [{"name": "client", "containerPort": 7777}],
                 "ready": "Sdk", "deletableGates": ["players"]},
                {"type": "db", "id": 1, "image": "svc:2"}]))
            .spec("mysql", json!({"host": "m", "user": "u", "database": "d", "passwordSecretRef": {"name": "s", "key": "k"}}))
            .spec("artifacts", json!([
                {"path": "/app/artifacts", "s3": {"endpoint": "http://s3", "bucket": "b", "secretRef": {"name": "c"}}},
                {"path": "/app/artifacts/config/", "subPath": "config", "git": {"url": "https://g/x.git", "branch": "main"}}]))
            .build();
        let pins = ["a".to_string(), "b".to_string()];
        let mut servers = crate::zone::game_servers(&zone, &pins, None, &Default::default()).unwrap();
        let game = servers[0].spec.template.spec.as_ref().unwrap();
        assert!(game.init_containers.as_ref().is_some_and(|c| c.len() >= 2), "artifacts and the SDK sidecar");
        for gs in &mut servers {
            gs.metadata.resource_version = Some("9".into());
            gs.status = Some(crate::api::GameServerStatus { pod_name: gs.metadata.name.clone(), ..Default::default() });
        }
        servers
    }

    #[test]
    fn a_stored_server_reads_back_whole_but_for_managed_fields() {
        for gs in servers() {
            assert!(gs.spec.template.spec.as_ref().is_some_and(|p| !p.containers.is_empty()));
            let mut sent = serde_json::to_value(&gs).unwrap();
            sent["metadata"]["managedFields"] = json!([{"manager": "gamezone", "operation": "Apply"}]);
            // As a watch event's object arrives (text), and as a test builds one (a value).
            let stored: StoredServer = serde_json::from_str(&sent.to_string()).unwrap();
            let parts = |g: GameServer| (g.metadata, g.spec, g.status);
            let mut want = gs.clone();
            want.metadata.managed_fields = Some(Vec::new());
            assert_eq!(parts(stored.server()), parts(want.clone()));
            assert_eq!(parts(serde_json::from_value::<StoredServer>(sent).unwrap().server()), parts(want));
            assert_eq!(stored.rest.spec.template, Default::default(), "the store holds the template as JSON only");
            assert_eq!((stored.name_any(), stored.resource_version()), (gs.name_any(), gs.resource_version()));
        }
    }

    #[test]
    fn a_stored_servers_trigger_names_it_only() {
        let stored = StoredServer::from(servers().remove(0));
        let trigger = stored.trigger();
        assert_eq!(trigger.meta(), &trigger_meta(stored.meta()));
        let told = trigger.server();
        assert_eq!((told.spec, told.status), (Default::default(), None));
    }

    #[test]
    fn a_slim_node_keeps_its_addresses_and_conditions() {
        let mut n: Node = serde_json::from_value(json!({
            "metadata": {"name": "real-1", "labels": {"gamezone.dev/node-kind": "real"}},
            "spec": {"taints": [{"key": "gamezone.dev/node-kind", "value": "real", "effect": "NoSchedule"}]},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.245.0.2"}],
                "conditions": [{"type": "Ready", "status": "True"}],
                "images": [{"names": ["g:1"], "sizeBytes": 1}]}
        }))
        .unwrap();
        let before = n.clone();
        node(&mut n);
        let (status, was) = (n.status.unwrap(), before.status.unwrap());
        assert_eq!((status.addresses, status.conditions), (was.addresses, was.conditions));
        assert_eq!(status.images, None);
        assert_eq!((n.spec, n.metadata.labels), (before.spec, before.metadata.labels));
    }
}
