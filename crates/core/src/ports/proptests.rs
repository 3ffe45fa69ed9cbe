//! Property tests: random operation sequences against a plain reference model.
//!
//! The universe is tiny on purpose (4 range ports, 4 node names, 6 servers) so that sequences hit
//! exhaustion, clashes and over-commit often.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use proptest::prelude::*;

use super::{AllocError, Allocation, NodeRemoval, PortAllocator, PortPolicy, PortProtocol, PortRequest};

/// Two ranges with a hole at 7002, which only Static ports reach.
const RANGES: &str = "7000-7001,7003-7004";
const RANGE_PORTS: [u16; 4] = [7000, 7001, 7003, 7004];
const STATIC_PORTS: [u16; 3] = [7001, 7002, 8000];

#[derive(Debug, Clone)]
enum Req {
    Dynamic(PortProtocol),
    Static(usize, PortProtocol),
    Passthrough(PortProtocol),
    NoHost(PortProtocol),
}

#[derive(Debug, Clone)]
enum Op {
    /// A server, its ports, and how many nodes it can run on (`None`: all).
    Allocate(usize, Vec<Req>, Option<u32>),
    AllocateAgain(usize),
    Release(usize),
    Bind(usize, usize),
    Unbind(usize),
    NodeAdded(usize),
    NodeRemoved(usize),
    Restore(usize, Vec<u16>, Option<usize>),
    Rebuild,
}

fn protocol() -> impl Strategy<Value = PortProtocol> {
    prop_oneof![Just(PortProtocol::Tcp), Just(PortProtocol::Udp), Just(PortProtocol::TcpUdp)]
}

fn req() -> impl Strategy<Value = Req> {
    prop_oneof![
        3 => protocol().prop_map(Req::Dynamic),
        1 => (0..STATIC_PORTS.len(), protocol()).prop_map(|(i, p)| Req::Static(i, p)),
        2 => protocol().prop_map(Req::Passthrough),
        1 => protocol().prop_map(Req::NoHost),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let server = 0..6usize;
    let node = 0..4usize;
    prop_oneof![
        6 => (server.clone(), prop::collection::vec(req(), 1..4), prop::option::of(0u32..4))
            .prop_map(|(s, r, reach)| Op::Allocate(s, r, reach)),
        1 => server.clone().prop_map(Op::AllocateAgain),
        3 => server.clone().prop_map(Op::Release),
        4 => (server.clone(), node.clone()).prop_map(|(s, n)| Op::Bind(s, n)),
        1 => server.clone().prop_map(Op::Unbind),
        3 => node.clone().prop_map(Op::NodeAdded),
        2 => node.clone().prop_map(Op::NodeRemoved),
        2 => (server, prop::collection::vec(6999u16..7006, 0..3), prop::option::of(node))
            .prop_map(|(s, p, n)| Op::Restore(s, p, n)),
        1 => Just(Op::Rebuild),
    ]
}

fn server_key(i: usize) -> String {
    format!("ns/gs-{i}")
}

fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Turns generated specs into a valid request list (unique names and container ports).
fn requests(reqs: &[Req]) -> Vec<PortRequest> {
    let mut statics_seen = BTreeSet::new();
    reqs.iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let name = format!("p{i}");
            let cport = 100 + i as u16;
            Some(match *r {
                Req::Dynamic(p) => PortRequest::dynamic(&name, "c", cport, p),
                Req::Static(s, p) => {
                    let port = STATIC_PORTS[s];
                    if !statics_seen.insert(port) {
                        return None;
                    }
                    PortRequest::static_port(&name, "c", port, p)
                }
                Req::Passthrough(p) => PortRequest::passthrough(&name, "sidecar", p),
                Req::NoHost(p) => PortRequest::no_host_port(&name, "c", cport, p),
            })
        })
        .collect()
}

#[derive(Debug, Clone)]
struct ModelServer {
    host_ports: Vec<u16>,
    node: Option<String>,
    requests: Option<Vec<PortRequest>>,
    allocations: Vec<Allocation>,
    /// Nodes it can run on, when fewer than all at its allocation.
    reach: Option<u32>,
}

/// The obvious implementation: a list of servers, counts recomputed by scanning.
#[derive(Debug, Clone, Default)]
struct Model {
    nodes: BTreeSet<String>,
    servers: BTreeMap<String, ModelServer>,
}

impl Model {
    fn cap(&self) -> u32 {
        self.nodes.len() as u32
    }

    fn uses(&self, port: u16) -> u32 {
        self.servers.values().filter(|s| s.host_ports.contains(&port)).count() as u32
    }

    /// How many servers may hold `port` for a new server that can run on `cap` nodes: no more
    /// than the fewest nodes any holder can run on.
    fn limit(&self, port: u16, cap: u32) -> u32 {
        self.servers.values().filter(|s| s.host_ports.contains(&port)).filter_map(|s| s.reach).fold(cap, u32::min)
    }

    fn clash(&self, node: &str, ports: &[u16], except: &str) -> bool {
        self.servers.iter().any(|(k, s)| {
            k != except && s.node.as_deref() == Some(node) && s.host_ports.iter().any(|p| ports.contains(p))
        })
    }
}

fn check_against_model(a: &PortAllocator, m: &Model) {
    a.check_invariants();
    assert_eq!(a.server_count(), m.servers.len());
    assert_eq!(a.node_count(), m.cap());
    let all_ports = (6995u16..7010).chain([8000]);
    for p in all_ports {
        assert_eq!(a.uses(p), m.uses(p), "uses of port {p}");
    }
    for (k, s) in &m.servers {
        assert_eq!(a.allocation(k), Some(s.allocations.as_slice()), "allocation of {k}");
        assert_eq!(a.node_of(k), s.node.as_deref(), "node of {k}");
    }
    // No two servers on one node hold the same host port.
    let mut on_node: HashMap<(&str, u16), &str> = HashMap::new();
    for (k, s) in &m.servers {
        if let Some(n) = &s.node {
            for &p in &s.host_ports {
                if let Some(other) = on_node.insert((n, p), k) {
                    panic!("{k} and {other} both hold {p} on {n}");
                }
                assert_eq!(a.holder(n, p), Some(k.as_str()));
            }
        }
    }
    // Free counts match the model.
    let cap = m.cap();
    let usage = a.usage();
    for r in &usage.ranges {
        let ports: Vec<u16> = RANGE_PORTS.iter().copied().filter(|&p| r.range.contains(p)).collect();
        assert_eq!(r.ports as usize, ports.len());
        assert_eq!(r.slots.capacity, ports.len() as u64 * u64::from(cap));
        assert_eq!(r.slots.used, ports.iter().map(|&p| u64::from(m.uses(p))).sum::<u64>());
        assert_eq!(r.slots.free, ports.iter().map(|&p| u64::from(cap.saturating_sub(m.uses(p)))).sum::<u64>());
        assert_eq!(r.full_ports as usize, ports.iter().filter(|&&p| m.uses(p) >= cap).count());
    }
    let outside: u64 = [7002u16, 8000, 6999, 7005].iter().map(|&p| u64::from(m.uses(p))).sum();
    assert_eq!(usage.outside_ranges_used, outside);

    // Re-allocating the servers named as over-committed brings every port within capacity.
    let report = a.over_committed();
    let mut fixed = a.clone();
    for oc in &report {
        assert_eq!(a.node_of(&oc.server), None, "only unbound servers are named");
        fixed.release(&oc.server);
    }
    for p in (6995u16..7010).chain([8000]) {
        assert!(fixed.uses(p) <= cap, "port {p} still over capacity after re-allocating {report:?}");
    }
    if report.is_empty() {
        for p in (6995u16..7010).chain([8000]) {
            assert!(a.uses(p) <= cap, "port {p} over capacity but nobody reported");
        }
    }
}

fn apply(a: &mut PortAllocator, m: &mut Model, op: &Op) {
    let cap = m.cap();
    match op {
        Op::Allocate(s, reqs, reach) => {
            let key = server_key(*s);
            let reqs = requests(reqs);
            let result = a.allocate_within(&key, &reqs, *reach);
            let reach = reach.filter(|&r| r < cap);
            let cap = reach.unwrap_or(cap);
            if let Some(existing) = m.servers.get(&key) {
                match &existing.requests {
                    Some(r) if *r == reqs => assert_eq!(result.as_ref(), Ok(&existing.allocations)),
                    _ if existing.allocations.len() == reqs.len()
                        && reqs.iter().all(|r| existing.allocations.iter().any(|al| al.satisfies(r))) =>
                    {
                        assert_eq!(result.as_ref(), Ok(&existing.allocations))
                    }
                    _ => assert_eq!(result, Err(AllocError::AlreadyAllocated { server: key })),
                }
                return;
            }
            let statics: Vec<u16> =
                reqs.iter().filter(|r| r.policy == PortPolicy::Static).filter_map(|r| r.host_port).collect();
            let picks = reqs.iter().filter(|r| r.policy.picks_from_range()).count();
            let free: Vec<u16> =
                RANGE_PORTS.iter().copied().filter(|&p| !statics.contains(&p) && m.uses(p) < m.limit(p, cap)).collect();
            let feasible = (statics.len() + picks == 0 || cap > 0)
                && statics.iter().all(|&p| m.uses(p) < m.limit(p, cap))
                && free.len() >= picks;
            match result {
                Ok(allocs) => {
                    assert!(feasible, "allocated although the model says no: {allocs:?}");
                    let host_ports: Vec<u16> = allocs.iter().filter_map(|al| al.host_port).collect();
                    let distinct: BTreeSet<u16> = host_ports.iter().copied().collect();
                    assert_eq!(distinct.len(), host_ports.len(), "a server holds a port twice");
                    for (r, al) in reqs.iter().zip(&allocs) {
                        assert!(al.satisfies(r));
                        match r.policy {
                            PortPolicy::Dynamic | PortPolicy::Passthrough => {
                                assert!(free.contains(&al.host_port.unwrap()), "picked a full port");
                            }
                            PortPolicy::Static => assert_eq!(al.host_port, r.host_port),
                            PortPolicy::None => assert_eq!(al.host_port, None),
                        }
                        if r.policy == PortPolicy::Passthrough {
                            assert_eq!(al.host_port, Some(al.container_port));
                        }
                    }
                    let server =
                        ModelServer { host_ports, node: None, requests: Some(reqs), allocations: allocs, reach };
                    m.servers.insert(key, server);
                }
                Err(e) => assert!(!feasible, "model says feasible but got {e}"),
            }
        }
        Op::AllocateAgain(s) => {
            let key = server_key(*s);
            if let Some(ms) = m.servers.get(&key)
                && let Some(reqs) = &ms.requests
            {
                assert_eq!(a.allocate(&key, reqs).as_ref(), Ok(&ms.allocations));
            }
        }
        Op::Release(s) => {
            let key = server_key(*s);
            let got = a.release(&key);
            assert_eq!(got, m.servers.remove(&key).map(|ms| ms.allocations));
        }
        Op::Bind(s, n) => {
            let key = server_key(*s);
            let node = node_name(*n);
            let result = a.bind(&key, &node);
            let Some(ms) = m.servers.get(&key) else {
                assert!(matches!(result, Err(AllocError::UnknownServer { .. })));
                return;
            };
            if !m.nodes.contains(&node) {
                assert!(matches!(result, Err(AllocError::UnknownNode { .. })));
            } else if ms.node.as_deref() == Some(node.as_str()) {
                assert_eq!(result, Ok(()));
            } else if m.clash(&node, &ms.host_ports, &key) {
                assert!(matches!(result, Err(AllocError::PortClash { .. })), "{result:?}");
            } else {
                assert_eq!(result, Ok(()));
                m.servers.get_mut(&key).unwrap().node = Some(node);
            }
        }
        Op::Unbind(s) => {
            let key = server_key(*s);
            let was = m.servers.get_mut(&key).and_then(|ms| ms.node.take()).is_some();
            assert_eq!(a.unbind(&key), was);
        }
        Op::NodeAdded(n) => {
            let node = node_name(*n);
            assert_eq!(a.node_added(&node), m.nodes.insert(node));
        }
        Op::NodeRemoved(n) => {
            let node = node_name(*n);
            let removal = a.node_removed(&node);
            if !m.nodes.remove(&node) {
                assert_eq!(removal, NodeRemoval::default(), "unknown nodes are ignored");
                return;
            }
            let mut unbound = Vec::new();
            for (k, ms) in &mut m.servers {
                if ms.node.as_deref() == Some(node.as_str()) {
                    ms.node = None;
                    unbound.push(k.clone());
                }
            }
            assert_eq!(removal.unbound, unbound);
            // The removal report is as good as the general one (checked in check_against_model).
            let mut fixed = a.clone();
            for oc in &removal.over_committed {
                fixed.release(&oc.server);
            }
            for &p in &RANGE_PORTS {
                assert!(fixed.uses(p) <= m.cap());
            }
        }
        Op::Restore(s, ports, n) => {
            let key = server_key(*s);
            let mut seen = BTreeSet::new();
            let allocations: Vec<Allocation> = ports
                .iter()
                .filter(|p| seen.insert(**p))
                .enumerate()
                .map(|(i, &p)| Allocation {
                    name: format!("r{i}"),
                    container: "c".into(),
                    container_port: 200 + i as u16,
                    host_port: Some(p),
                    protocol: PortProtocol::Udp,
                    policy: PortPolicy::Dynamic,
                })
                .collect();
            let host_ports: Vec<u16> = seen.into_iter().collect();
            let node = n.map(node_name);
            let result = a.restore(&key, allocations.clone(), node.as_deref());
            if let Some(ms) = m.servers.get(&key)
                && ms.allocations != allocations
            {
                assert!(matches!(result, Err(AllocError::AlreadyAllocated { .. })));
                return;
            }
            let known = node.as_ref().filter(|n| m.nodes.contains(*n));
            if let Some(n) = known
                && m.clash(n, &host_ports, &key)
            {
                assert!(matches!(result, Err(AllocError::PortClash { .. })), "{result:?}");
                return;
            }
            let report = result.expect("restore accepted by the model");
            let entry = m.servers.entry(key).or_insert(ModelServer {
                host_ports,
                node: None,
                requests: None,
                allocations,
                reach: None,
            });
            if let Some(n) = known {
                entry.node = Some(n.clone());
            }
            assert_eq!(report.unknown_node.is_some(), node.is_some() && known.is_none());
            let over: Vec<u16> = entry.host_ports.clone().into_iter().filter(|&p| m.uses(p) > m.cap()).collect();
            let mut got = report.over_committed_ports;
            got.sort();
            assert_eq!(got, over);
        }
        Op::Rebuild => {
            // What a restart does: nodes first, then every server from what it holds.
            let mut fresh = PortAllocator::new(RANGES.parse().unwrap());
            for n in &m.nodes {
                fresh.node_added(n);
            }
            for (k, ms) in &m.servers {
                fresh
                    .restore_within(k, ms.allocations.clone(), ms.node.as_deref(), ms.reach)
                    .expect("consistent state restores");
            }
            assert_eq!(fresh.usage(), a.usage());
            *a = fresh;
            // Restored servers have no stored request; idempotency goes through `satisfies`.
            for ms in m.servers.values_mut() {
                if let Some(reqs) = &ms.requests {
                    assert!(reqs.iter().all(|r| ms.allocations.iter().any(|al| al.satisfies(r))));
                }
            }
        }
    }
}

proptest! {
    // No failure persistence: a regressions file would land outside this module's directory;
    // proptest prints the minimal failing sequence instead.
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_sequences_match_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut a = PortAllocator::new(RANGES.parse().unwrap());
        let mut m = Model::default();
        for op in &ops {
            apply(&mut a, &mut m, op);
            check_against_model(&a, &m);
        }
    }
}
