//! What the caches keep of each object: the operator holds every pod and node of its scope in
//! memory, so each keeps only the fields a reconcile reads. An object is never written back
//! from a cache (writes are server-side applies of what the operator builds), so what is
//! dropped here is not lost.

use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use kube::ResourceExt;

/// Any object: managedFields, which nothing here reads, are most of a small object.
pub fn object<K: ResourceExt>(obj: &mut K) {
    obj.managed_fields_mut().clear();
}

/// A pod as the server controller reads it: its metadata, node, status, and its containers'
/// names and ports (a Passthrough port the platform assigned); not the env, mounts, probes,
/// volumes or init containers its GameServer's template holds anyway.
pub fn pod(pod: &mut Pod) {
    object(pod);
    if let Some(spec) = pod.spec.take() {
        let PodSpec { containers, node_name, .. } = spec;
        let containers =
            containers.into_iter().map(|c| Container { name: c.name, ports: c.ports, ..Default::default() }).collect();
        pod.spec = Some(PodSpec { containers, node_name, ..Default::default() });
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

    #[test]
    fn a_slim_pod_keeps_what_the_server_controller_reads() {
        let mut p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "z-game-1", "namespace": "n", "uid": "u1",
                "annotations": {"gamezone.dev/template-hash": "abc"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {"nodeName": "real-1",
                "initContainers": [{"name": "artifacts", "env": [{"name": "GAMEZONE_LAYERS", "value": "[...]"}]}],
                "containers": [{"name": "game", "image": "g:1", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "client", "containerPort": 7777, "hostPort": 7001, "protocol": "UDP"}]}],
                "volumes": [{"name": "artifacts", "emptyDir": {}}]},
            "status": {"phase": "Running", "podIP": "10.244.1.5", "hostIP": "10.245.0.2",
                "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        let before = p.clone();
        pod(&mut p);
        assert!(p.metadata.managed_fields.is_none_or(|m| m.is_empty()));
        assert_eq!(
            (p.metadata.annotations, p.metadata.uid, p.status),
            (before.metadata.annotations, before.metadata.uid, before.status)
        );
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("real-1"));
        assert!(spec.init_containers.is_none() && spec.volumes.is_none());
        let game = &spec.containers[0];
        assert_eq!((game.name.as_str(), game.env.as_ref(), game.image.as_ref()), ("game", None, None));
        assert_eq!(game.ports, before.spec.unwrap().containers[0].ports, "ports stay whole");
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
