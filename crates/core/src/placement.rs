//! Which nodes a server's pod can run on, as the scheduler's filters would judge it from the
//! pod alone: its node selector, its required node affinity, and its tolerations of the nodes'
//! NoSchedule and NoExecute taints. The port allocator holds a server's host ports no more
//! often than that many nodes (see [`PortAllocator::allocate_within`](crate::ports::PortAllocator::allocate_within)).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Node, NodeCondition, NodeSelectorRequirement, NodeSelectorTerm, PodSpec, Taint, Toleration,
};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// Whether a node can run game servers (Ready and schedulable).
pub fn node_usable(node: &Node) -> bool {
    let schedulable = !node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    schedulable && node_ready(node)
}

/// Whether `node`'s kubelet says it is Ready.
pub fn node_ready(node: &Node) -> bool {
    ready_condition(node).is_some_and(|c| c.status == "True")
}

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == "Ready")
}

/// Since when `node` has not been Ready (its `Ready` condition False, or Unknown once the node
/// lifecycle controller stopped hearing its kubelet), if it is not; `None` for a Ready node and
/// for one whose kubelet never said (a node being registered).
pub fn not_ready_since(node: &Node) -> Option<Timestamp> {
    let ready = ready_condition(node)?;
    (ready.status != "True").then(|| ready.last_transition_time.as_ref().map(|t| t.0)).flatten()
}

/// Why `node` is given up on at `now`: not Ready for `grace` or longer. Its kubelet no longer
/// acts for it (a pod deleted there stays Terminating until it returns), and its servers move.
pub fn unreachable(node: &Node, now: Timestamp, grace: Duration) -> Option<String> {
    let since = not_ready_since(node)?;
    let gone = Duration::try_from(now.duration_since(since)).unwrap_or_default();
    // The time it went, not how long ago: a status that names it stays the same while it waits.
    (gone >= grace).then(|| format!("{} has not been Ready since {since}", node.name_any()))
}

/// Taints with which node-removing components mark a node they are about to take away.
pub const LEAVING_TAINTS: [(&str, &str); 3] = [
    ("ToBeDeletedByClusterAutoscaler", "the cluster autoscaler is removing it"),
    ("karpenter.sh/disrupted", "Karpenter is removing it"),
    ("DeletionCandidateOfClusterAutoscaler", "the cluster autoscaler may remove it soon"),
];

/// Why `node` is leaving (cordoned by `kubectl drain` or `kubectl cordon`, tainted by a node
/// autoscaler that is removing it, or [`unreachable`] at `now` after `not_ready_grace`), if it
/// is: its servers should move before it goes. A `DeletionCandidate` taint is only a
/// candidate's (PreferNoSchedule) and is not counted.
pub fn leaving(node: &Node, now: Timestamp, not_ready_grace: Duration) -> Option<String> {
    taken_away(node).or_else(|| unreachable(node, now, not_ready_grace))
}

/// Why `node` is being taken away by someone: cordoned, or an autoscaler's taint.
fn taken_away(node: &Node) -> Option<String> {
    let spec = node.spec.as_ref()?;
    if spec.unschedulable == Some(true) {
        return Some(format!("{} is cordoned", node.name_any()));
    }
    let taints = spec.taints.iter().flatten();
    let why = taints
        .filter(|t| t.effect != "PreferNoSchedule")
        .find_map(|t| LEAVING_TAINTS.iter().find(|(key, _)| *key == t.key).map(|(_, why)| *why))?;
    Some(format!("{}: {why}", node.name_any()))
}

/// How many of `nodes` can run `pod`, when that is fewer than every usable node; `None` when
/// every usable node can.
pub fn reach<'a>(pod: &PodSpec, nodes: impl IntoIterator<Item = &'a Node>) -> Option<u32> {
    let (mut usable, mut fit) = (0u32, 0u32);
    for node in nodes.into_iter().filter(|n| node_usable(n)) {
        usable += 1;
        fit += u32::from(can_run_on(pod, node));
    }
    (fit < usable).then_some(fit)
}

/// Whether `pod` may be placed on `node` for all its selector, affinity and tolerations say.
pub fn can_run_on(pod: &PodSpec, node: &Node) -> bool {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    let selected = pod.node_selector.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let required = pod
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    // The terms are ORed; an empty list of terms matches nothing, as the scheduler has it.
    let affine = required.is_none_or(|r| r.node_selector_terms.iter().any(|t| term_matches(t, labels, node)));
    let taints = node.spec.as_ref().and_then(|s| s.taints.as_deref()).unwrap_or_default();
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    let tolerated = taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|taint| tolerations.iter().any(|t| tolerates(t, taint)));
    selected && affine && tolerated
}

/// A term matches when all its requirements do; a term with none matches nothing.
fn term_matches(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, node: &Node) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    let name = node.name_any();
    exprs.iter().all(|r| requirement_matches(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| r.key == "metadata.name" && requirement_matches(r, Some(&name)))
}

fn requirement_matches(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |v: &str| v.parse::<i64>().ok();
    let compare = |pick: fn(i64, i64) -> bool| match (value.and_then(number), values.first().and_then(|v| number(v))) {
        (Some(have), Some(bound)) => pick(have, bound),
        _ => false,
    };
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|w| w == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compare(|have, bound| have > bound),
        "Lt" => compare(|have, bound| have < bound),
        _ => false,
    }
}

/// Whether `toleration` tolerates `taint`, by the rules of the core API: an empty key with
/// `Exists` tolerates every taint, an empty effect every effect.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or_default();
    let exists = toleration.operator.as_deref() == Some("Exists");
    let matches = if exists {
        key.is_empty() || key == taint.key
    } else {
        key == taint.key
            && toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default()
    };
    effect && matches
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value, taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    fn pod(spec: serde_json::Value) -> PodSpec {
        let mut spec = spec;
        spec["containers"] = json!([]);
        serde_json::from_value(spec).unwrap()
    }

    fn cluster() -> Vec<Node> {
        let mut down = node("down", json!({"pool": "game"}), json!([]));
        down.status = None;
        vec![
            node("g1", json!({"pool": "game", "size": "8"}), json!([])),
            node("g2", json!({"pool": "game", "size": "16"}), json!([])),
            node("gpu", json!({"pool": "gpu"}), json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}])),
            node("cp", json!({}), json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])),
            node("soft", json!({"pool": "game"}), json!([{"key": "spot", "effect": "PreferNoSchedule"}])),
            // Not Ready: counts neither way.
            down,
        ]
    }

    #[test]
    fn a_pod_reaches_the_usable_nodes_its_selector_affinity_and_tolerations_allow() {
        let nodes = cluster();
        // Untainted nodes, and the one whose taint only prefers: every node but the tainted two.
        assert_eq!(reach(&pod(json!({})), &nodes), Some(3));
        assert_eq!(reach(&pod(json!({"nodeSelector": {"pool": "game"}})), &nodes), Some(3));
        let anywhere = pod(json!({"tolerations": [{"operator": "Exists"}]}));
        assert_eq!(reach(&anywhere, &nodes), None, "every usable node");
        let gpu = pod(json!({"nodeSelector": {"pool": "gpu"},
                              "tolerations": [{"key": "gpu", "operator": "Equal", "value": "yes"}]}));
        assert_eq!(reach(&gpu, &nodes), Some(1));
        let wrong_value = pod(json!({"nodeSelector": {"pool": "gpu"},
                                      "tolerations": [{"key": "gpu", "value": "no", "effect": "NoSchedule"}]}));
        assert_eq!(reach(&wrong_value, &nodes), Some(0));
        let other_effect = pod(json!({"tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}]}));
        assert!(!can_run_on(&other_effect, &nodes[2]));
        let big = pod(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "size", "operator": "Gt", "values": ["10"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["soft"]}]}
        ]}}}}));
        assert_eq!(reach(&big, &nodes), Some(2), "g2 by its size, soft by its name");
        let not_game = pod(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "pool", "operator": "NotIn", "values": ["game"]}]}]}}}}));
        assert_eq!(reach(&not_game, &nodes), Some(0), "gpu and cp are tainted; the rest are game");
        let no_terms = pod(json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{}]}}}}));
        assert_eq!(reach(&no_terms, &nodes), Some(0), "an empty term matches nothing");
        assert_eq!(reach(&pod(json!({})), &nodes[..2]), None, "two untainted nodes");
    }

    #[test]
    fn a_cordoned_node_or_one_an_autoscaler_removes_is_leaving() {
        let leaving = |n: &Node| leaving(n, Timestamp::now(), Duration::from_secs(60));
        assert_eq!(leaving(&node("n1", json!({}), json!([]))), None);
        let mut cordoned = node("n1", json!({}), json!([]));
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_eq!(leaving(&cordoned).as_deref(), Some("n1 is cordoned"));
        let ca = node(
            "n2",
            json!({}),
            json!([{"key": "ToBeDeletedByClusterAutoscaler", "value": "1", "effect": "NoSchedule"}]),
        );
        assert_eq!(leaving(&ca).as_deref(), Some("n2: the cluster autoscaler is removing it"));
        let karpenter = node("n3", json!({}), json!([{"key": "karpenter.sh/disrupted", "effect": "NoSchedule"}]));
        assert!(leaving(&karpenter).unwrap().contains("Karpenter"));
        let candidate = node(
            "n4",
            json!({}),
            json!([{"key": "DeletionCandidateOfClusterAutoscaler", "effect": "PreferNoSchedule"}]),
        );
        assert_eq!(leaving(&candidate), None, "a candidate is not leaving yet");
        let other = node("n5", json!({}), json!([{"key": "dedicated", "value": "game", "effect": "NoSchedule"}]));
        assert_eq!(leaving(&other), None);
    }

    #[test]
    fn a_node_not_ready_past_its_grace_is_leaving() {
        let grace = Duration::from_secs(60);
        let at = |status: &str, since: &str| {
            let mut n = node("n1", json!({}), json!([]));
            n.status = Some(
                serde_json::from_value(
                    json!({"conditions": [{"type": "Ready", "status": status, "lastTransitionTime": since}]}),
                )
                .unwrap(),
            );
            n
        };
        let now: Timestamp = "2026-12-07T10:00:00Z".parse().unwrap();
        let unknown = at("Unknown", "2026-12-07T09:59:00Z");
        assert_eq!(not_ready_since(&unknown), Some("2026-12-07T09:59:00Z".parse().unwrap()));
        assert_eq!(leaving(&unknown, now, grace).as_deref(), Some("n1 has not been Ready since 2026-12-07T09:59:00Z"));
        assert_eq!(leaving(&unknown, now, Duration::from_secs(61)), None, "within its grace");
        let down = at("False", "2026-12-07T09:50:00Z");
        assert_eq!(unreachable(&down, now, grace).as_deref(), Some("n1 has not been Ready since 2026-12-07T09:50:00Z"));
        let ready = at("True", "2026-12-07T09:00:00Z");
        assert_eq!((not_ready_since(&ready), leaving(&ready, now, grace)), (None, None), "Ready for an hour");
        let mut registering = node("n2", json!({}), json!([]));
        registering.status = None;
        assert_eq!(leaving(&registering, now, grace), None, "no kubelet has spoken for it yet");
        let mut cordoned = at("Unknown", "2026-12-07T09:59:30Z");
        cordoned.spec.as_mut().unwrap().unschedulable = Some(true);
        assert_eq!(leaving(&cordoned, now, grace).as_deref(), Some("n1 is cordoned"), "the first reason");
    }
}
