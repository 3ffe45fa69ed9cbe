//! What the caches keep of each object: the operator holds every pod and node of its scope in
//! memory, so each keeps only the fields a reconcile reads. An object is never written back
//! from a cache (writes are server-side applies of what the operator builds), so what is
//! dropped here is not lost.

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;

use crate::webhook::patch::passthrough_ports;

/// Any object: managedFields, which nothing here reads, are most of a small object.
pub fn object<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
}

/// A pod as the server controller reads it: its metadata, node, phase, addresses and
/// conditions, and, on a pod marked for the platform's Passthrough port assignment, its
/// containers' names and ports (where the assigned port shows). Not the env, mounts, probes,
/// volumes or init containers its GameServer's template holds anyway, nor its containers'
/// statuses: a decoded Container or ContainerStatus is kilobytes even when nearly empty, and
/// the operator holds every pod of its scope.
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
        let PodStatus { phase, message, reason, pod_ip, host_ip, conditions, .. } = status;
        pod.status = Some(PodStatus { phase, message, reason, pod_ip, host_ip, conditions, ..Default::default() });
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
            crate::webhook::patch::final_ports(&p),
            crate::webhook::patch::final_ports(&before),
            "the assigned port reads the same"
        );
        assert_eq!(crate::webhook::patch::final_ports(&p).get("client"), Some(&7777));
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
