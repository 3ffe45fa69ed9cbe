//! Host port allocation (pure, no Kubernetes client).
//!
//! A host port is a slot that can be handed out at most once per node, so at most N times over
//! N nodes. The allocator does not pick nodes: it hands a port out while fewer than N servers
//! hold it and leaves the rest to the scheduler, which places each pod on a node where its host
//! ports are free. Once a pod is scheduled, [`PortAllocator::bind`] records its node so the
//! per-node port tables can reject two servers holding one port on one node, and so a node
//! leaving can tell which servers it took along.
//!
//! * [`PortRequest`] / [`Allocation`]: what a server asks for and what it gets, per port policy
//!   ([`PortPolicy`]) and [`PortProtocol`] (`TcpUdp` costs one host port for both).
//! * [`PortRanges`]: the validated `--port-range` flag.
//! * [`PortAllocator`]: the per-node tables and the counts. Allocate, release, bind and node
//!   joins cost O(1) per port plus hashing, never a scan over ports × nodes; a node leaving costs
//!   O(servers on it), plus one pass over servers only if some port ends up over-committed;
//!   `usage()` is O(ports) for metric scrapes.
//! * [`pod_ports`], [`port_env`]: what the Pod spec needs.
//! * [`passthrough`]: Passthrough ports the platform assigns (GKE Autopilot): the marks on a pod,
//!   the webhook's JSONPatch and the final ports read back for status.

mod allocator;
pub mod passthrough;
mod pod;
mod pool;
mod range;
pub mod spec;
mod types;

#[cfg(test)]
mod proptests;

pub use allocator::{NodeRemoval, OverCommit, PortAllocator, RestoreReport};
pub use pod::{PORT_ENV_PREFIX, PodPort, WireProtocol, pod_ports, port_env, port_env_name};
pub use range::{PortRange, PortRanges, RangeError, parse_port_ranges};
pub use types::{Allocation, PortPolicy, PortProtocol, PortRequest};

use serde::{Deserialize, Serialize};

/// Count of host port slots (port × node); wide enough for 65,535 ports × any node count.
pub type SlotCount = u64;

/// Slot totals: `used` counts every server holding a port (it can exceed `capacity` after nodes
/// leave), `free` counts how many more times ports can still be handed out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slots {
    /// Ports × nodes.
    pub capacity: SlotCount,
    /// Sum over ports of the servers holding them.
    pub used: SlotCount,
    /// Sum over ports of `nodes - holders`, counting only ports with room left.
    pub free: SlotCount,
}

/// Usage of one configured range, for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeUsage {
    /// The range.
    pub range: PortRange,
    /// Number of ports in the range.
    pub ports: u32,
    /// Slot totals of the range.
    pub slots: Slots,
    /// Ports held on every node (no slot left).
    pub full_ports: u32,
}

/// Allocator-wide usage, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Nodes that count as capacity.
    pub nodes: u32,
    /// Servers holding an allocation.
    pub servers: u32,
    /// Per configured range.
    pub ranges: Vec<RangeUsage>,
    /// Host port uses outside every range (Static ports, or leftovers of a changed `--port-range`).
    pub outside_ranges_used: SlotCount,
}

/// Why a port operation failed. Every message names the server or port and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// The request (or restored allocation) contradicts itself.
    #[error("server {server}: port {port:?}: {reason}")]
    Invalid {
        /// Server key.
        server: String,
        /// Port name.
        port: String,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A Dynamic or Passthrough port was asked for but no range is configured.
    #[error(
        "server {server}: port {port:?} has portPolicy {policy}, which picks a host port from \
         --port-range, but no range is configured; set --port-range (e.g. 7000-7999) or use \
         portPolicy Static or None"
    )]
    NoPortRange {
        /// Server key.
        server: String,
        /// Port name.
        port: String,
        /// Its policy.
        policy: PortPolicy,
    },
    /// No node is known, so no host port has a slot.
    #[error(
        "no Ready, schedulable node is known that could run server {server} (none has joined, or \
         none matches its pod's nodeSelector, required node affinity and tolerations), so its \
         {requested} host port(s) can't be handed out; it gets them once such a node joins"
    )]
    NoNodes {
        /// Server key.
        server: String,
        /// Host ports it asked for.
        requested: usize,
    },
    /// Not enough ports in the ranges have a free slot.
    #[error("{}", exhausted_message(.ranges, *.ports, *.requested, *.available, *.nodes))]
    Exhausted {
        /// The configured ranges, as `--port-range` spells them.
        ranges: String,
        /// Number of ports in the ranges.
        ports: u32,
        /// Ports the server needs from the ranges.
        requested: usize,
        /// Ports that still have a free slot (and that the server may use).
        available: u32,
        /// Nodes the server can run on.
        nodes: u32,
    },
    /// A Static host port is held on every node already.
    #[error(
        "static host port {port} is already held by {holders} server(s) and {nodes} node(s) can take \
         it, so no node has it free; delete a server that uses it, add nodes (or widen the nodes its \
         servers may run on), or pick another hostPort"
    )]
    StaticPortTaken {
        /// The host port.
        port: u16,
        /// Servers holding it.
        holders: u32,
        /// Nodes that can take it: every node, or fewer when it or a holder of the port can run
        /// on fewer.
        nodes: u32,
    },
    /// The server's namespace holds its share of host ports already.
    #[error(
        "server {server} needs {requested} host port(s), and namespace {namespace} holds {held} of the \
         {limit} one namespace may hold (--host-ports-per-namespace), so that one team cannot take \
         every node's ports; scale a zone of the namespace down, or ask the operator's admin for more"
    )]
    NamespaceShare {
        /// Server key.
        server: String,
        /// Its namespace.
        namespace: String,
        /// Host ports it asks for.
        requested: usize,
        /// Host ports the namespace holds.
        held: usize,
        /// The most one namespace may hold.
        limit: usize,
    },
    /// The server already holds a different port list.
    #[error(
        "server {server} already holds host ports for a different port list; ports can't change \
         while a server lives: release it (delete the server) and create it again"
    )]
    AlreadyAllocated {
        /// Server key.
        server: String,
    },
    /// No allocation is known for the server.
    #[error("server {server} holds no ports; allocate or restore it first")]
    UnknownServer {
        /// Server key.
        server: String,
    },
    /// The node is not known.
    #[error("node {node} is not known to the port allocator; report it with node_added first")]
    UnknownNode {
        /// Node name.
        node: String,
    },
    /// Another server already holds one of the host ports on that node.
    #[error(
        "host port {port} on node {node} is already held by server {holder}, so server {server} \
         can't run there too; re-allocate server {server} (delete its pod so it gets new ports)"
    )]
    PortClash {
        /// Server that was to be bound.
        server: String,
        /// Node name.
        node: String,
        /// The clashing host port.
        port: u16,
        /// Server that already holds the port there.
        holder: String,
    },
}

fn exhausted_message(ranges: &str, ports: u32, requested: usize, available: u32, nodes: u32) -> String {
    let what = if available == 0 {
        format!("all {ports} ports in {ranges} are in use on every one of the {nodes} node(s) it can run on")
    } else {
        format!(
            "a server needs {requested} host ports from {ranges} but only {available} of its {ports} \
             ports are still free on some of the {nodes} node(s) it can run on"
        )
    };
    format!("{what}; free servers, add nodes, or widen --port-range")
}

/// Result alias for port operations.
pub type Result<T, E = AllocError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausted_message_says_what_to_do() {
        let e = AllocError::Exhausted { ranges: "7000-7999".into(), ports: 1000, requested: 1, available: 0, nodes: 3 };
        assert_eq!(
            e.to_string(),
            "all 1000 ports in 7000-7999 are in use on every one of the 3 node(s) it can run on; free \
             servers, add nodes, or widen --port-range"
        );
        let e = AllocError::Exhausted { ranges: "7000-7001".into(), ports: 2, requested: 2, available: 1, nodes: 1 };
        assert!(e.to_string().contains("needs 2 host ports from 7000-7001 but only 1 of its 2"), "{e}");
    }
}
