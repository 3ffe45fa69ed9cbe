//! Names of the objects of a zone, in one place so every component agrees on them.

/// Name of a server and of its GameServer, Pod and per-instance Service.
pub fn server_name(zone: &str, type_: &str, id: i64) -> String {
    format!("{zone}-{type_}-{id}")
}

/// Name of the per-type Service.
pub fn type_service_name(zone: &str, type_: &str) -> String {
    format!("{zone}-{type_}")
}

/// Name of the headless Service that gives every server a DNS name
/// (`<instance>.<zone>.<namespace>.svc`).
pub fn headless_service_name(zone: &str) -> String {
    zone.to_string()
}

/// Name of the topology ConfigMap.
pub fn topology_name(zone: &str) -> String {
    format!("{zone}-topology")
}

/// Name of the zone-wide artifacts volume claim.
pub fn artifacts_claim_name(zone: &str) -> String {
    format!("{zone}-artifacts")
}

/// Name of the migration Job for one set of migration inputs.
pub fn migration_job_name(zone: &str, inputs_hash: &str) -> String {
    format!("{zone}-migrate-{}", &inputs_hash[..inputs_hash.len().min(10)])
}

/// Name of the pack Job for one set of layers and pins.
pub fn pack_job_name(zone: &str, inputs_hash: &str) -> String {
    format!("{zone}-pack-{}", &inputs_hash[..inputs_hash.len().min(10)])
}

/// Name of the pod that pre-warms a node (by the hash of its name) with a tree image.
pub fn warm_pod_name(zone: &str, node_hash: &str) -> String {
    format!("{zone}-warm-{}", &node_hash[..node_hash.len().min(10)])
}

/// Name of the zone's PodDisruptionBudget, which guards the servers that may hold players.
pub fn disruption_budget_name(zone: &str) -> String {
    format!("{zone}-players")
}

/// DNS name of a server through the zone's headless Service.
pub fn server_dns_name(zone: &str, namespace: &str, server: &str) -> String {
    format!("{server}.{}.{namespace}.svc", headless_service_name(zone))
}

/// Longest name the API server accepts for a Service (a DNS-1035 label).
pub const MAX_LABEL_LEN: usize = 63;
