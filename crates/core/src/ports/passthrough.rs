//! What the passthrough webhook changes in a Pod, computed without any Kubernetes client: the
//! marks the server controller puts on a pod, the JSONPatch that copies platform-assigned host
//! ports into container ports, and the final ports read back for status.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ports::{PortRange, port_env_name};

/// Label that makes a pod match the webhook's objectSelector.
pub const PORT_LABEL: &str = "gamezone.dev/port";
/// Value of [`PORT_LABEL`] on pods whose Passthrough ports the platform assigns.
pub const AUTOPILOT_PASSTHROUGH: &str = "autopilot-passthrough";
/// Annotation listing the passthrough container ports (JSON list of [`PassthroughPort`]).
pub const PASSTHROUGH_PORTS_ANNOTATION: &str = "gamezone.dev/passthrough-ports";
/// GKE Autopilot's request for host ports from a range, e.g. `{"min":7000,"max":8000}`.
pub const HOST_PORT_ASSIGNMENT_ANNOTATION: &str = "autopilot.gke.io/host-port-assignment";

/// First placeholder port; the n-th passthrough port of a pod gets `PLACEHOLDER_BASE + n`, so
/// placeholders never clash within a pod and are plainly not real game ports.
pub const PLACEHOLDER_BASE: u16 = 1;

/// One passthrough `containerPort` entry of a pod (a TCPUDP port has two, on the same name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassthroughPort {
    /// The GameServer port name (also names the `GAMEZONE_PORT_*` env var).
    pub name: String,
    /// Container holding the entry.
    pub container: String,
    /// Index of the entry in that container's `ports`.
    pub index: usize,
}

/// A passthrough port the operator leaves to the platform: its placeholder number in the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// Port name.
    pub name: String,
    /// Container listening on it.
    pub container: String,
    /// Placeholder containerPort and hostPort until the platform assigns the host port.
    pub placeholder: u16,
}

/// Marks a pod built with placeholder ports for `deferred` so the platform assigns their host
/// ports and the operator's webhook then copies them: label, passthrough list, platform request.
/// Errors name a port whose placeholder entry the pod lacks (a bug, not a user error).
pub fn mark_pod(pod: &mut Pod, deferred: &[Deferred], range: PortRange) -> Result<(), String> {
    if deferred.is_empty() {
        return Ok(());
    }
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let mut entries = Vec::new();
    for d in deferred {
        let container = spec
            .containers
            .iter()
            .find(|c| c.name == d.container)
            .ok_or_else(|| format!("port {:?}: no container {:?}", d.name, d.container))?;
        let before = entries.len();
        for (index, p) in container.ports.iter().flatten().enumerate() {
            let ph = i32::from(d.placeholder);
            if p.container_port == ph && p.host_port == Some(ph) {
                entries.push(PassthroughPort { name: d.name.clone(), container: d.container.clone(), index });
            }
        }
        if entries.len() == before {
            return Err(format!(
                "port {:?}: no placeholder entry {} in container {:?}",
                d.name, d.placeholder, d.container
            ));
        }
    }
    let meta = &mut pod.metadata;
    meta.labels.get_or_insert_with(Default::default).insert(PORT_LABEL.into(), AUTOPILOT_PASSTHROUGH.into());
    let annotations = meta.annotations.get_or_insert_with(Default::default);
    annotations.insert(PASSTHROUGH_PORTS_ANNOTATION.into(), serde_json::to_string(&entries).expect("plain data"));
    annotations.insert(HOST_PORT_ASSIGNMENT_ANNOTATION.into(), json!({"min": range.min, "max": range.max}).to_string());
    Ok(())
}

/// The passthrough entries a pod's annotation lists; none for unmarked pods.
pub fn passthrough_ports(pod: &Pod) -> Result<Vec<PassthroughPort>, String> {
    let labelled =
        pod.metadata.labels.as_ref().and_then(|l| l.get(PORT_LABEL)).map(String::as_str) == Some(AUTOPILOT_PASSTHROUGH);
    let listed = pod.metadata.annotations.as_ref().and_then(|a| a.get(PASSTHROUGH_PORTS_ANNOTATION));
    match (labelled, listed) {
        (true, Some(json)) => serde_json::from_str(json)
            .map_err(|e| format!("annotation {PASSTHROUGH_PORTS_ANNOTATION} is not a list of ports: {e}")),
        _ => Ok(Vec::new()),
    }
}

/// JSONPatch operations that set each passthrough entry's containerPort to its hostPort, and
/// the port's `GAMEZONE_PORT_*` env var in every container to that number. Empty when nothing
/// changes: an unmarked pod, or host ports nobody reassigned (placeholders stay as they are).
pub fn passthrough_patch(pod: &Pod) -> Result<Vec<Value>, String> {
    let entries = passthrough_ports(pod)?;
    let Some(spec) = pod.spec.as_ref() else { return Ok(Vec::new()) };
    let mut ops = Vec::new();
    let mut env: BTreeMap<String, i32> = BTreeMap::new();
    for e in &entries {
        let Some((ci, c)) = spec.containers.iter().enumerate().find(|(_, c)| c.name == e.container) else {
            return Err(format!("port {:?}: the pod has no container {:?}", e.name, e.container));
        };
        let Some(p) = c.ports.as_ref().and_then(|ps| ps.get(e.index)) else {
            return Err(format!("port {:?}: container {:?} has no port at index {}", e.name, e.container, e.index));
        };
        let Some(host) = p.host_port else { continue };
        // The first entry of a name (TCP before UDP) is what the process is told.
        env.entry(e.name.clone()).or_insert(host);
        if p.container_port != host {
            ops.push(json!({"op": "replace", "path": format!("/spec/containers/{ci}/ports/{}/containerPort", e.index), "value": host}));
        }
    }
    for (name, port) in env {
        let var = port_env_name(&name);
        let value = port.to_string();
        for (ci, c) in spec.containers.iter().enumerate() {
            for (ei, v) in c.env.iter().flatten().enumerate() {
                if v.name == var && v.value_from.is_none() && v.value.as_deref() != Some(value.as_str()) {
                    ops.push(json!({"op": "replace", "path": format!("/spec/containers/{ci}/env/{ei}/value"), "value": value}));
                }
            }
        }
    }
    Ok(ops)
}

/// Final port of each passthrough port name of a created pod (its first entry's containerPort).
pub fn final_ports(pod: &Pod) -> BTreeMap<String, u16> {
    let mut out = BTreeMap::new();
    let Ok(entries) = passthrough_ports(pod) else { return out };
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice()).unwrap_or_default();
    for e in entries {
        let port = containers
            .iter()
            .find(|c| c.name == e.container)
            .and_then(|c| c.ports.as_ref()?.get(e.index))
            .and_then(|p| u16::try_from(p.container_port).ok());
        if let Some(port) = port {
            out.entry(e.name).or_insert(port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ports: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [
                {"name": "sidecar", "env": [{"name": "GAMEZONE_PORT_GAME", "value": "1"}]},
                {"name": "server", "ports": ports,
                 "env": [{"name": "OTHER", "value": "x"}, {"name": "GAMEZONE_PORT_GAME", "value": "1"}]}
            ]}
        }))
        .unwrap()
    }

    fn marked(ports: Value) -> Pod {
        let mut p = pod(ports);
        let d = Deferred { name: "game".into(), container: "server".into(), placeholder: 1 };
        mark_pod(&mut p, &[d], PortRange::new(7000, 7999).unwrap()).unwrap();
        p
    }

    #[test]
    fn mark_pod_lists_every_placeholder_entry_and_asks_for_the_range() {
        let p = marked(json!([
            {"containerPort": 8080},
            {"containerPort": 1, "hostPort": 1, "protocol": "TCP"},
            {"containerPort": 1, "hostPort": 1, "protocol": "UDP"}
        ]));
        let a = p.metadata.annotations.as_ref().unwrap();
        assert_eq!(a[HOST_PORT_ASSIGNMENT_ANNOTATION], r#"{"max":7999,"min":7000}"#);
        assert_eq!(
            a[PASSTHROUGH_PORTS_ANNOTATION],
            r#"[{"name":"game","container":"server","index":1},{"name":"game","container":"server","index":2}]"#
        );
        assert_eq!(p.metadata.labels.as_ref().unwrap()[PORT_LABEL], AUTOPILOT_PASSTHROUGH);
        let missing = Deferred { name: "x".into(), container: "server".into(), placeholder: 9 };
        assert!(mark_pod(&mut pod(json!([])), &[missing], PortRange::new(1, 2).unwrap()).is_err());
    }

    #[test]
    fn patch_copies_the_assigned_host_port_and_tells_every_container() {
        let mut p = marked(json!([{"containerPort": 8080}, {"containerPort": 1, "hostPort": 1, "protocol": "UDP"}]));
        // What the platform's webhook does.
        p.spec.as_mut().unwrap().containers[1].ports.as_mut().unwrap()[1].host_port = Some(7042);
        let ops = passthrough_patch(&p).unwrap();
        assert_eq!(
            ops,
            vec![
                json!({"op": "replace", "path": "/spec/containers/1/ports/1/containerPort", "value": 7042}),
                json!({"op": "replace", "path": "/spec/containers/0/env/0/value", "value": "7042"}),
                json!({"op": "replace", "path": "/spec/containers/1/env/1/value", "value": "7042"}),
            ]
        );
    }

    #[test]
    fn patch_is_empty_when_nothing_was_reassigned_or_already_copied() {
        // No platform webhook ran: the placeholder stays, the pod is admitted unchanged.
        let p = marked(json!([{"containerPort": 1, "hostPort": 1}]));
        assert_eq!(passthrough_patch(&p).unwrap(), Vec::<Value>::new());
        // Reinvoked after our own patch: nothing left to do.
        let mut done = marked(json!([{"containerPort": 1, "hostPort": 1}]));
        let c = &mut done.spec.as_mut().unwrap().containers;
        let port = &mut c[1].ports.as_mut().unwrap()[0];
        (port.container_port, port.host_port) = (7001, Some(7001));
        for container in c.iter_mut() {
            for e in container.env.iter_mut().flatten().filter(|e| e.name == "GAMEZONE_PORT_GAME") {
                e.value = Some("7001".into());
            }
        }
        assert_eq!(passthrough_patch(&done).unwrap(), Vec::<Value>::new());
        assert_eq!(final_ports(&done), BTreeMap::from([("game".to_string(), 7001)]));
    }

    #[test]
    fn unmarked_pods_are_left_alone_and_bad_annotations_are_errors() {
        let mut p = pod(json!([{"containerPort": 1, "hostPort": 7042}]));
        assert!(passthrough_patch(&p).unwrap().is_empty());
        // Annotated but not labelled: not ours.
        p.metadata.annotations = Some([(PASSTHROUGH_PORTS_ANNOTATION.to_string(), "[]".to_string())].into());
        assert!(passthrough_patch(&p).unwrap().is_empty());
        p.metadata.labels = Some([(PORT_LABEL.to_string(), AUTOPILOT_PASSTHROUGH.to_string())].into());
        p.metadata.annotations = Some([(PASSTHROUGH_PORTS_ANNOTATION.to_string(), "nope".to_string())].into());
        assert!(passthrough_patch(&p).unwrap_err().contains(PASSTHROUGH_PORTS_ANNOTATION));
        let wrong = r#"[{"name":"game","container":"server","index":5}]"#;
        p.metadata.annotations = Some([(PASSTHROUGH_PORTS_ANNOTATION.to_string(), wrong.to_string())].into());
        assert!(passthrough_patch(&p).unwrap_err().contains("index 5"));
    }
}
