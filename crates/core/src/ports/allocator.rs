//! The allocator: use counts per port plus per-node tables of bound servers.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::pool::Pool;
use super::range::PortRanges;
use super::types::{Allocation, PortPolicy, PortRequest, check_allocations, check_requests};
use super::{AllocError, Result, Usage};

/// Dense index of a server; node tables store these instead of key strings.
type ServerId = u32;
/// Dense index of a node, so that a server's node is found without hashing its name.
type NodeId = u32;

#[derive(Debug, Clone)]
struct Server {
    key: Arc<str>,
    allocations: Vec<Allocation>,
    /// Host ports held, distinct.
    host_ports: Vec<u16>,
    /// Node the server's pod runs on, once known.
    node: Option<NodeId>,
    /// How many nodes its pod can run on, when fewer than all (its node selector, affinity or
    /// tolerations narrow it): none of its ports is held more often than that.
    reach: Option<u32>,
}

/// Host ports in use on one node, by the servers bound to it.
#[derive(Debug, Clone)]
struct NodeTable {
    name: Arc<str>,
    ports: IntMap<u16, ServerId>,
    servers: IntMap<ServerId, ()>,
}

/// Hasher for the integer keys we generate ourselves (ports, server ids): one multiply instead
/// of SipHash, which otherwise dominates updates of the per-node tables. No flooding risk: at
/// most 65,535 distinct ports and dense ids.
#[derive(Debug, Clone, Copy, Default)]
struct IntHasher(u64);

impl Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads consecutive keys over the high bits the table probes with.
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IntMap<K, V> = HashMap<K, V, BuildHasherDefault<IntHasher>>;

/// A slab: dense ids, reused after removal.
#[derive(Debug, Clone)]
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Self { items: Vec::new(), free: Vec::new() }
    }

    fn insert(&mut self, item: T) -> u32 {
        match self.free.pop() {
            Some(id) => {
                self.items[id as usize] = Some(item);
                id
            }
            None => {
                self.items.push(Some(item));
                (self.items.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, id: u32) -> T {
        let item = self.items[id as usize].take().expect("slab ids in indexes point at live entries");
        self.free.push(id);
        item
    }

    fn get(&self, id: u32) -> &T {
        self.items[id as usize].as_ref().expect("slab ids in indexes point at live entries")
    }

    fn get_mut(&mut self, id: u32) -> &mut T {
        self.items[id as usize].as_mut().expect("slab ids in indexes point at live entries")
    }

    /// Live entries in id order.
    fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items.iter().enumerate().filter_map(|(i, t)| t.as_ref().map(|t| (i as u32, t)))
    }
}

/// A server that holds ports more often than there are nodes, and which of its ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverCommit {
    /// Server key.
    pub server: String,
    /// Its host ports that are over-committed.
    pub ports: Vec<u16>,
}

/// What a node leaving did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRemoval {
    /// Servers that were bound to the node; they keep their ports but have no node now.
    pub unbound: Vec<String>,
    /// Servers to re-allocate so no port is held more often than there are nodes (see
    /// [`PortAllocator::node_removed`]).
    pub over_committed: Vec<OverCommit>,
}

/// What a `restore` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// Host ports of this server now held more often than there are nodes.
    pub over_committed_ports: Vec<u16>,
    /// The node given was not known, so the server was restored unbound; bind it once the node is added.
    pub unknown_node: Option<String>,
}

/// Hands out host ports so that no port is held by more servers than there are nodes, and no
/// two servers bound to one node hold the same port.
///
/// Dynamic and Passthrough ports come from the configured ranges, least-used port first, which
/// spreads servers over port numbers the way filling one node after another would and leaves
/// the scheduler the most nodes to choose from. Static ports are counted against the same limit
/// whether or not they lie in a range. A host port covers TCP and UDP alike.
#[derive(Debug, Clone)]
pub struct PortAllocator {
    pool: Pool,
    /// Use counts of host ports outside every range.
    outside: IntMap<u16, u32>,
    nodes: Slab<NodeTable>,
    node_ids: HashMap<Arc<str>, NodeId>,
    servers: Slab<Server>,
    by_key: HashMap<Arc<str>, ServerId>,
    /// For each host port held by a server of narrower reach, those reaches: the port is held
    /// no more often than the smallest, so every holder finds a node free of it whatever the
    /// scheduler did with the others. Empty while every server can run on every node.
    ceilings: IntMap<u16, Vec<u32>>,
}

impl PortAllocator {
    /// An allocator for `ranges` with no nodes and no servers yet.
    pub fn new(ranges: PortRanges) -> Self {
        Self {
            pool: Pool::new(ranges),
            outside: IntMap::default(),
            nodes: Slab::new(),
            node_ids: HashMap::new(),
            servers: Slab::new(),
            by_key: HashMap::new(),
            ceilings: IntMap::default(),
        }
    }

    /// The configured ranges.
    pub fn ranges(&self) -> &PortRanges {
        self.pool.ranges()
    }

    /// Nodes that count as capacity: each port can be held this many times.
    pub fn node_count(&self) -> u32 {
        self.node_ids.len() as u32
    }

    /// Names of the known nodes, in no particular order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.node_ids.keys().map(|k| &**k)
    }

    /// Number of servers holding an allocation.
    pub fn server_count(&self) -> usize {
        self.by_key.len()
    }

    /// How many servers hold host port `port`.
    pub fn uses(&self, port: u16) -> u32 {
        self.pool.uses(port).unwrap_or_else(|| self.outside.get(&port).copied().unwrap_or(0))
    }

    /// Every server holding an allocation, with how many host ports it holds.
    pub fn holdings(&self) -> impl Iterator<Item = (&str, usize)> {
        self.by_key.iter().map(|(key, &id)| (&**key, self.servers.get(id).host_ports.len()))
    }

    /// How many distinct host ports `server` holds (0 when it holds none).
    pub fn host_ports_held(&self, server: &str) -> usize {
        self.by_key.get(server).map_or(0, |&id| self.servers.get(id).host_ports.len())
    }

    /// The ports `server` holds.
    pub fn allocation(&self, server: &str) -> Option<&[Allocation]> {
        self.by_key.get(server).map(|&id| self.servers.get(id).allocations.as_slice())
    }

    /// The node `server` is bound to.
    pub fn node_of(&self, server: &str) -> Option<&str> {
        let node = self.servers.get(*self.by_key.get(server)?).node?;
        Some(&self.nodes.get(node).name)
    }

    /// The server bound to `node` that holds `port` there.
    pub fn holder(&self, node: &str, port: u16) -> Option<&str> {
        let table = self.nodes.get(*self.node_ids.get(node)?);
        Some(&self.servers.get(*table.ports.get(&port)?).key)
    }

    /// Servers bound to `node`, in no particular order; `None` if the node is not known.
    pub fn servers_on(&self, node: &str) -> Option<impl Iterator<Item = &str>> {
        let table = self.nodes.get(*self.node_ids.get(node)?);
        Some(table.servers.keys().map(|&id| &*self.servers.get(id).key))
    }

    fn add_use(&mut self, port: u16) {
        if !self.pool.add(port) {
            *self.outside.entry(port).or_default() += 1;
        }
    }

    fn remove_use(&mut self, port: u16) {
        if !self.pool.remove(port)
            && let Some(c) = self.outside.get_mut(&port)
        {
            *c -= 1;
            if *c == 0 {
                self.outside.remove(&port);
            }
        }
    }

    /// How many more servers may hold `port` beside those that do: `cap` (the nodes the new
    /// one can run on) or the smallest reach among its holders, whichever is less.
    fn limit(&self, port: u16, cap: u32) -> u32 {
        self.ceilings.get(&port).and_then(|c| c.iter().min()).map_or(cap, |&least| cap.min(least))
    }

    fn insert(
        &mut self,
        key: &str,
        allocations: Vec<Allocation>,
        host_ports: Vec<u16>,
        reach: Option<u32>,
    ) -> ServerId {
        for &p in &host_ports {
            self.add_use(p);
            if let Some(r) = reach {
                self.ceilings.entry(p).or_default().push(r);
            }
        }
        let key: Arc<str> = Arc::from(key);
        let id = self.servers.insert(Server { key: key.clone(), allocations, host_ports, node: None, reach });
        self.by_key.insert(key, id);
        id
    }

    /// Gives `server` a host port for every request, all or nothing.
    ///
    /// Idempotent: if `server` already holds ports matching `requests`, the same ports are
    /// returned, so a re-created pod keeps them. A different port list for a known server is
    /// [`AllocError::AlreadyAllocated`]. Exhaustion is an error the caller reports and retries;
    /// nothing is held on failure.
    pub fn allocate(&mut self, server: &str, requests: &[PortRequest]) -> Result<Vec<Allocation>> {
        self.allocate_within(server, requests, None)
    }

    /// [`Self::allocate`] for a server whose pod can run on only `reach` of the nodes (`None`:
    /// on all of them). Its host ports are held no more often than that, and no more often than
    /// the reach of any other server holding them, so that every holder of a port finds a node
    /// where it is free, in whatever order the scheduler places them.
    pub fn allocate_within(
        &mut self,
        server: &str,
        requests: &[PortRequest],
        reach: Option<u32>,
    ) -> Result<Vec<Allocation>> {
        if let Some(&id) = self.by_key.get(server) {
            let held = &self.servers.get(id).allocations;
            let same = held.len() == requests.len() && requests.iter().all(|r| held.iter().any(|a| a.satisfies(r)));
            return if same {
                Ok(held.clone())
            } else {
                Err(AllocError::AlreadyAllocated { server: server.to_owned() })
            };
        }
        let checked = check_requests(server, requests)?;
        // A reach past the known nodes is all of them.
        let reach = reach.filter(|&r| r < self.node_count());
        let cap = reach.unwrap_or(self.node_count());
        let requested = checked.statics.len() + checked.picks;
        if requested > 0 && cap == 0 {
            return Err(AllocError::NoNodes { server: server.to_owned(), requested });
        }
        for &port in &checked.statics {
            let (holders, nodes) = (self.uses(port), self.limit(port, cap));
            if holders >= nodes {
                return Err(AllocError::StaticPortTaken { port, holders, nodes });
            }
        }
        let picked = if checked.picks == 0 {
            Vec::new()
        } else if self.pool.len() == 0 {
            let r = requests.iter().find(|r| r.policy.picks_from_range()).expect("picks > 0");
            return Err(AllocError::NoPortRange { server: server.to_owned(), port: r.name.clone(), policy: r.policy });
        } else {
            let full = |port: u16| {
                checked.avoid.contains(&port) || (!self.ceilings.is_empty() && self.uses(port) >= self.limit(port, cap))
            };
            self.pool.pick(cap, checked.picks, full).map_err(|available| AllocError::Exhausted {
                ranges: self.pool.ranges().to_string(),
                ports: self.pool.len(),
                requested: checked.picks,
                available,
                nodes: cap,
            })?
        };

        let mut picked_iter = picked.iter().copied();
        let allocations: Vec<Allocation> = requests
            .iter()
            .map(|r| {
                let host_port = match r.policy {
                    PortPolicy::Static => r.host_port,
                    PortPolicy::Dynamic | PortPolicy::Passthrough => picked_iter.next(),
                    PortPolicy::None => None,
                };
                // check_requests guarantees one of the two for every policy.
                let container_port = r.container_port.or(host_port).unwrap_or_default();
                Allocation {
                    name: r.name.clone(),
                    container: r.container.clone(),
                    container_port,
                    host_port,
                    protocol: r.protocol,
                    policy: r.policy,
                }
            })
            .collect();
        let host_ports = checked.statics.into_iter().chain(picked).collect();
        self.insert(server, allocations.clone(), host_ports, reach);
        Ok(allocations)
    }

    /// Frees every port `server` holds; returns what it held, `None` if it held nothing.
    pub fn release(&mut self, server: &str) -> Option<Vec<Allocation>> {
        let id = self.by_key.remove(server)?;
        self.unbind_id(id);
        let s = self.servers.remove(id);
        for &p in &s.host_ports {
            self.remove_use(p);
            if let Some(r) = s.reach
                && let Some(reaches) = self.ceilings.get_mut(&p)
            {
                if let Some(i) = reaches.iter().position(|&x| x == r) {
                    reaches.swap_remove(i);
                }
                if reaches.is_empty() {
                    self.ceilings.remove(&p);
                }
            }
        }
        Some(s.allocations)
    }

    /// Records that `server`'s pod runs on `node` (moving it if it was bound elsewhere).
    ///
    /// Fails with [`AllocError::PortClash`] if another server bound to `node` holds one of its
    /// host ports: the scheduler would not do that, so the data is stale and one of the two
    /// should be re-allocated.
    pub fn bind(&mut self, server: &str, node: &str) -> Result<()> {
        let id = *self.by_key.get(server).ok_or_else(|| AllocError::UnknownServer { server: server.to_owned() })?;
        let node_id = *self.node_ids.get(node).ok_or_else(|| AllocError::UnknownNode { node: node.to_owned() })?;
        let s = self.servers.get(id);
        if s.node == Some(node_id) {
            return Ok(());
        }
        self.check_clash(server, node_id, &s.host_ports, Some(id))?;
        self.unbind_id(id);
        self.bind_id(id, node_id);
        Ok(())
    }

    /// Forgets which node `server` runs on (its pod is gone but the server keeps its ports);
    /// returns whether it was bound.
    pub fn unbind(&mut self, server: &str) -> bool {
        match self.by_key.get(server) {
            Some(&id) => self.unbind_id(id),
            None => false,
        }
    }

    /// Fails if a server other than `except` holds one of `ports` on `node`.
    fn check_clash(&self, server: &str, node: NodeId, ports: &[u16], except: Option<ServerId>) -> Result<()> {
        let table = self.nodes.get(node);
        for &port in ports {
            match table.ports.get(&port) {
                Some(&holder) if Some(holder) != except => {
                    return Err(AllocError::PortClash {
                        server: server.to_owned(),
                        node: table.name.to_string(),
                        port,
                        holder: self.servers.get(holder).key.to_string(),
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn bind_id(&mut self, id: ServerId, node: NodeId) {
        let s = self.servers.get_mut(id);
        let table = self.nodes.get_mut(node);
        for &p in &s.host_ports {
            table.ports.insert(p, id);
        }
        table.servers.insert(id, ());
        s.node = Some(node);
    }

    fn unbind_id(&mut self, id: ServerId) -> bool {
        let s = self.servers.get_mut(id);
        let Some(node) = s.node.take() else {
            return false;
        };
        let table = self.nodes.get_mut(node);
        for p in &s.host_ports {
            table.ports.remove(p);
        }
        table.servers.remove(&id);
        true
    }

    /// Adds a node that can run servers: every port gets one more slot. Returns false if it
    /// was already known.
    pub fn node_added(&mut self, node: &str) -> bool {
        if self.node_ids.contains_key(node) {
            return false;
        }
        let name: Arc<str> = Arc::from(node);
        let table = NodeTable { name: name.clone(), ports: IntMap::default(), servers: IntMap::default() };
        let id = self.nodes.insert(table);
        self.node_ids.insert(name, id);
        true
    }

    /// Removes a node: every port loses a slot and the servers bound to it become unbound.
    ///
    /// Nobody loses ports here: a server whose node left keeps its ports (if it gets a new pod
    /// elsewhere, the ports are still valid while they have room), because dropping allocations on
    /// a transient node flap would shuffle every server's ports. Instead, if a port is now held
    /// more often than there are nodes, the result names a small set of servers whose
    /// re-allocation (release + allocate) brings every port back within capacity: only unbound
    /// servers, preferring those that were on the removed node. Until the caller acts, those
    /// ports are simply not handed out again. Unknown nodes are ignored.
    pub fn node_removed(&mut self, node: &str) -> NodeRemoval {
        let Some(node_id) = self.node_ids.remove(node) else {
            return NodeRemoval::default();
        };
        let table = self.nodes.remove(node_id);
        let mut unbound: Vec<ServerId> = table.servers.into_keys().collect();
        unbound.sort_by(|a, b| self.servers.get(*a).key.cmp(&self.servers.get(*b).key));
        for &id in &unbound {
            self.servers.get_mut(id).node = None;
        }
        NodeRemoval {
            unbound: unbound.iter().map(|&id| self.servers.get(id).key.to_string()).collect(),
            over_committed: self.over_committed_preferring(&unbound),
        }
    }

    /// Servers to re-allocate so that no port is held more often than there are nodes; empty in
    /// the steady state. Only useful after nodes left or after `restore`.
    pub fn over_committed(&self) -> Vec<OverCommit> {
        self.over_committed_preferring(&[])
    }

    fn over_committed_preferring(&self, first: &[ServerId]) -> Vec<OverCommit> {
        let cap = self.node_count();
        let mut excess: HashMap<u16, u32> = self
            .pool
            .over(cap)
            .chain(self.outside.iter().map(|(&p, &c)| (p, c)).filter(|&(_, c)| c > cap))
            .map(|(p, c)| (p, c - cap))
            .collect();
        if excess.is_empty() {
            return Vec::new();
        }
        // Bound servers sit on distinct nodes per port, so at most `cap` holders of a port are
        // bound and the unbound ones alone always cover the excess.
        let preferred: HashSet<ServerId> = first.iter().copied().collect();
        let rest = self.servers.iter().map(|(id, _)| id).filter(|id| !preferred.contains(id));
        let mut out = Vec::new();
        for id in first.iter().copied().chain(rest) {
            let s = self.servers.get(id);
            if s.node.is_some() {
                continue;
            }
            let ports: Vec<u16> = s.host_ports.iter().copied().filter(|p| excess.contains_key(p)).collect();
            if ports.is_empty() {
                continue;
            }
            for p in &ports {
                let e = excess.get_mut(p).expect("filtered on excess");
                *e -= 1;
                if *e == 0 {
                    excess.remove(p);
                }
            }
            out.push(OverCommit { server: s.key.to_string(), ports });
            if excess.is_empty() {
                break;
            }
        }
        out
    }

    /// Rebuilds one server from what it already holds (at start, from existing GameServers).
    ///
    /// The ports are taken as they are, even past capacity, because they are in use out there:
    /// the report names such ports and [`Self::over_committed`] names servers to re-allocate;
    /// nothing more is handed out on a full port. With `node`, the server is bound; another
    /// server already bound there with one of its ports is [`AllocError::PortClash`] and nothing
    /// is restored (re-allocate this server). Add nodes before restoring servers bound to them;
    /// an unknown node restores the server unbound. Restoring the same allocations twice is a no-op.
    pub fn restore(&mut self, server: &str, allocations: Vec<Allocation>, node: Option<&str>) -> Result<RestoreReport> {
        self.restore_within(server, allocations, node, None)
    }

    /// [`Self::restore`] for a server whose pod can run on only `reach` of the nodes (see
    /// [`Self::allocate_within`]).
    pub fn restore_within(
        &mut self,
        server: &str,
        allocations: Vec<Allocation>,
        node: Option<&str>,
        reach: Option<u32>,
    ) -> Result<RestoreReport> {
        let mut report = RestoreReport::default();
        let node_id = match node {
            Some(n) => {
                let id = self.node_ids.get(n).copied();
                if id.is_none() {
                    report.unknown_node = Some(n.to_owned());
                }
                id
            }
            None => None,
        };
        let id = if let Some(&id) = self.by_key.get(server) {
            let s = self.servers.get(id);
            if s.allocations != allocations {
                return Err(AllocError::AlreadyAllocated { server: server.to_owned() });
            }
            if let Some(node_id) = node_id
                && s.node != Some(node_id)
            {
                self.check_clash(server, node_id, &s.host_ports, Some(id))?;
                self.unbind_id(id);
                self.bind_id(id, node_id);
            }
            id
        } else {
            let host_ports = check_allocations(server, &allocations)?;
            if let Some(node_id) = node_id {
                self.check_clash(server, node_id, &host_ports, None)?;
            }
            let id = self.insert(server, allocations, host_ports, reach);
            if let Some(node_id) = node_id {
                self.bind_id(id, node_id);
            }
            id
        };
        let cap = self.node_count();
        let s = self.servers.get(id);
        report.over_committed_ports = s.host_ports.iter().copied().filter(|&p| self.uses(p) > cap).collect();
        Ok(report)
    }

    /// Used and free slots per range, for metrics. O(ports in the ranges).
    pub fn usage(&self) -> Usage {
        Usage {
            nodes: self.node_count(),
            servers: self.by_key.len() as u32,
            ranges: self.pool.usage(self.node_count()),
            outside_ranges_used: self.outside.values().map(|&c| u64::from(c)).sum(),
        }
    }

    /// Panics if the internal indexes disagree; for tests.
    #[cfg(test)]
    pub(super) fn check_invariants(&self) {
        self.pool.check();
        let mut uses: HashMap<u16, u32> = HashMap::new();
        let mut live = 0;
        for (id, s) in self.servers.iter() {
            live += 1;
            assert_eq!(self.by_key.get(&s.key), Some(&id));
            for &p in &s.host_ports {
                *uses.entry(p).or_default() += 1;
            }
            if let Some(node) = s.node {
                let table = self.nodes.get(node);
                assert!(table.servers.contains_key(&id));
                for p in &s.host_ports {
                    assert_eq!(table.ports.get(p), Some(&id), "node {} port {p}", table.name);
                }
            }
        }
        assert_eq!(self.by_key.len(), live);
        // The ceilings are the reaches of each port's holders, no more and no less.
        let mut ceilings: HashMap<u16, Vec<u32>> = HashMap::new();
        for (_, s) in self.servers.iter() {
            for &p in s.host_ports.iter().filter(|_| s.reach.is_some()) {
                ceilings.entry(p).or_default().extend(s.reach);
            }
        }
        let mut kept: HashMap<u16, Vec<u32>> = self.ceilings.iter().map(|(&p, r)| (p, r.clone())).collect();
        for reaches in ceilings.values_mut().chain(kept.values_mut()) {
            reaches.sort_unstable();
        }
        assert_eq!(kept, ceilings, "ceilings");
        for (p, c) in &uses {
            assert_eq!(self.uses(*p), *c, "uses of {p}");
        }
        for (p, c) in &self.outside {
            assert_eq!(uses.get(p), Some(c));
        }
        assert_eq!(self.nodes.iter().count(), self.node_ids.len());
        for (node_id, table) in self.nodes.iter() {
            assert_eq!(self.node_ids.get(&table.name), Some(&node_id));
            for (p, id) in &table.ports {
                let s = self.servers.get(*id);
                assert_eq!(s.node, Some(node_id));
                assert!(s.host_ports.contains(p));
            }
            assert_eq!(table.servers.len(), self.servers.iter().filter(|(_, s)| s.node == Some(node_id)).count());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::PortProtocol;

    fn alloc(ranges: &str, nodes: &[&str]) -> PortAllocator {
        let mut a = PortAllocator::new(ranges.parse().unwrap());
        for n in nodes {
            a.node_added(n);
        }
        a
    }

    fn game(port: u16) -> PortRequest {
        PortRequest::dynamic("game", "server", port, PortProtocol::Udp)
    }

    fn host(allocs: &[Allocation]) -> Vec<u16> {
        allocs.iter().filter_map(|a| a.host_port).collect()
    }

    #[test]
    fn dynamic_picks_from_the_range_and_keeps_the_container_port() {
        let mut a = alloc("7000-7001", &["n1", "n2"]);
        let got = a.allocate("ns/a", &[game(7777)]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].container_port, 7777);
        let hp = got[0].host_port.unwrap();
        assert!((7000..=7001).contains(&hp));
        assert_eq!(a.uses(hp), 1);
        // Least-used first: the second server gets the other port, not a second slot of the first.
        let got2 = a.allocate("ns/b", &[game(7777)]).unwrap();
        assert_ne!(got2[0].host_port, Some(hp));
        a.check_invariants();
    }

    #[test]
    fn one_server_gets_distinct_ports_across_containers() {
        let mut a = alloc("7000-7009", &["n1"]);
        let reqs = [
            game(7777),
            PortRequest::dynamic("query", "server", 27015, PortProtocol::Tcp),
            PortRequest::passthrough("voice", "voice-sidecar", PortProtocol::TcpUdp),
        ];
        let got = a.allocate("ns/a", &reqs).unwrap();
        let mut ports = host(&got);
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 3);
        assert_eq!(got[2].container, "voice-sidecar");
        a.check_invariants();
    }

    #[test]
    fn static_uses_the_given_port_and_fails_naming_it_when_every_node_has_it() {
        let mut a = alloc("7000-7999", &["n1", "n2"]);
        let req = PortRequest::static_port("game", "server", 25565, PortProtocol::Tcp);
        for s in ["a", "b"] {
            let got = a.allocate(s, std::slice::from_ref(&req)).unwrap();
            assert_eq!((got[0].container_port, got[0].host_port), (25565, Some(25565)));
        }
        let err = a.allocate("c", &[req]).unwrap_err();
        assert_eq!(err, AllocError::StaticPortTaken { port: 25565, holders: 2, nodes: 2 });
        assert!(err.to_string().starts_with("static host port 25565 is already held by 2 server(s)"));
        assert_eq!(a.usage().outside_ranges_used, 2);

        // A static port inside the range takes a slot the dynamic side then can't use.
        let mut a = alloc("7000", &["n1"]);
        let mut req = PortRequest::static_port("game", "server", 7000, PortProtocol::Udp);
        req.container_port = Some(7777);
        let got = a.allocate("s", &[req]).unwrap();
        assert_eq!((got[0].container_port, got[0].host_port), (7777, Some(7000)));
        assert!(matches!(a.allocate("d", &[game(1)]), Err(AllocError::Exhausted { .. })));
        a.check_invariants();
    }

    #[test]
    fn passthrough_uses_one_number_for_container_and_host() {
        let mut a = alloc("7000-7002", &["n1"]);
        // The Dynamic container port 7000 is avoided so the passthrough port can't collide with it.
        let reqs = [
            PortRequest::passthrough("game", "server", PortProtocol::Udp),
            PortRequest::dynamic("admin", "server", 7000, PortProtocol::Udp),
        ];
        let got = a.allocate("s", &reqs).unwrap();
        assert_eq!(Some(got[0].container_port), got[0].host_port);
        assert_ne!(got[0].container_port, 7000);
    }

    #[test]
    fn none_has_no_host_port_and_needs_no_node_or_range() {
        let mut a = alloc("", &[]);
        let got = a.allocate("s", &[PortRequest::no_host_port("game", "server", 7777, PortProtocol::Tcp)]).unwrap();
        assert_eq!((got[0].container_port, got[0].host_port), (7777, None));
        assert!(a.usage().ranges.is_empty());
    }

    #[test]
    fn tcpudp_costs_one_host_port() {
        let mut a = alloc("7000", &["n1"]);
        let got = a.allocate("s", &[PortRequest::dynamic("g", "c", 7777, PortProtocol::TcpUdp)]).unwrap();
        assert_eq!(got[0].host_port, Some(7000));
        assert_eq!(a.uses(7000), 1);
        let err = a.allocate("t", &[PortRequest::dynamic("g", "c", 7777, PortProtocol::Tcp)]).unwrap_err();
        assert!(matches!(err, AllocError::Exhausted { available: 0, .. }));
    }

    #[test]
    fn multiple_ranges_are_one_pool_reported_per_range() {
        let mut a = alloc("9000,7000", &["n1"]);
        let p1 = host(&a.allocate("a", &[game(1)]).unwrap());
        let p2 = host(&a.allocate("b", &[game(1)]).unwrap());
        let mut all = [p1, p2].concat();
        all.sort();
        assert_eq!(all, vec![7000, 9000]);
        let err = a.allocate("c", &[game(1)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "all 2 ports in 7000,9000 are in use on every one of the 1 node(s) it can run on; free \
             servers, add nodes, or widen --port-range"
        );
        let u = a.usage();
        assert_eq!(u.ranges.len(), 2);
        assert!(u.ranges.iter().all(|r| r.slots.used == 1 && r.slots.free == 0 && r.full_ports == 1));
    }

    #[test]
    fn allocate_is_idempotent_per_server() {
        let mut a = alloc("7000-7999", &["n1"]);
        let reqs = [game(7777), PortRequest::static_port("q", "server", 8000, PortProtocol::Tcp)];
        let first = a.allocate("ns/a", &reqs).unwrap();
        let again = a.allocate("ns/a", &[reqs[1].clone(), reqs[0].clone()]).unwrap();
        assert_eq!(first, again);
        assert_eq!(a.usage().ranges[0].slots.used, 1);
        let err = a.allocate("ns/a", &[game(7778)]).unwrap_err();
        assert_eq!(err, AllocError::AlreadyAllocated { server: "ns/a".into() });
        // A restored server (no stored request) answers the same request with its ports too.
        let mut b = alloc("7000-7999", &["n1"]);
        b.restore("ns/a", first.clone(), Some("n1")).unwrap();
        assert_eq!(b.allocate("ns/a", &reqs).unwrap(), first);
    }

    #[test]
    fn a_port_is_held_no_more_often_than_its_narrowest_holder_can_run_on() {
        let mut a = alloc("7000-7000", &["n1", "n2", "n3"]);
        // One node can run `a`: nobody else may hold its port, or the two could meet there.
        assert_eq!(host(&a.allocate_within("a", &[game(1)], Some(1)).unwrap()), vec![7000]);
        assert!(matches!(a.allocate("b", &[game(1)]), Err(AllocError::Exhausted { available: 0, .. })));
        let fixed = PortRequest::static_port("f", "c", 7000, PortProtocol::Tcp);
        let err = a.allocate("b", std::slice::from_ref(&fixed)).unwrap_err();
        assert_eq!(err, AllocError::StaticPortTaken { port: 7000, holders: 1, nodes: 1 });
        assert!(err.to_string().contains("1 node(s) can take it"), "{err}");
        a.release("a");
        a.check_invariants();
        // Every node can run `b` and `c`; `d` can run on two, and two servers hold the port.
        a.allocate("b", &[game(1)]).unwrap();
        a.allocate("c", &[game(1)]).unwrap();
        assert!(a.allocate_within("d", &[game(1)], Some(2)).is_err());
        // A reach of every node or more is no narrowing.
        assert_eq!(host(&a.allocate_within("e", &[game(1)], Some(5)).unwrap()), vec![7000]);
        // A server no node can run gets nothing, and says why.
        let none = a.allocate_within("f", &[game(1)], Some(0)).unwrap_err();
        assert!(none.to_string().contains("nodeSelector"), "{none}");
        a.check_invariants();
    }

    #[test]
    fn release_frees_ports_and_node_entries() {
        let mut a = alloc("7000", &["n1"]);
        a.allocate("a", &[game(1)]).unwrap();
        a.bind("a", "n1").unwrap();
        assert_eq!(a.holder("n1", 7000), Some("a"));
        assert_eq!(a.release("a").unwrap().len(), 1);
        assert_eq!(a.release("a"), None);
        assert_eq!(a.holder("n1", 7000), None);
        assert_eq!(a.uses(7000), 0);
        assert_eq!(host(&a.allocate("b", &[game(1)]).unwrap()), vec![7000]);
        a.check_invariants();
    }

    #[test]
    fn exhaustion_is_an_error_and_recovers_when_ports_free_or_nodes_join() {
        let mut a = alloc("7000-7001", &["n1"]);
        a.allocate("a", &[game(1)]).unwrap();
        a.allocate("b", &[game(1)]).unwrap();
        let err = a.allocate("c", &[game(1)]).unwrap_err();
        assert_eq!(
            err,
            AllocError::Exhausted { ranges: "7000-7001".into(), ports: 2, requested: 1, available: 0, nodes: 1 }
        );
        // Nothing held after a failure, including a partial multi-port request.
        let partial = a.allocate("d", &[game(1), PortRequest::static_port("f", "c", 80, PortProtocol::Tcp)]);
        assert!(partial.is_err());
        assert_eq!(a.allocation("d"), None);
        assert_eq!(a.uses(80), 0);

        a.release("a");
        assert!(a.allocate("c", &[game(1)]).is_ok());
        assert!(a.allocate("e", &[game(1)]).is_err());
        a.node_added("n2");
        let both = a.allocate("e", &[game(1), PortRequest::dynamic("q", "server", 2, PortProtocol::Tcp)]).unwrap();
        assert_eq!(host(&both).len(), 2);
        a.check_invariants();
    }

    #[test]
    fn no_nodes_and_no_range_are_explained() {
        let mut a = alloc("7000", &[]);
        let err = a.allocate("ns/a", &[game(1)]).unwrap_err();
        assert_eq!(err, AllocError::NoNodes { server: "ns/a".into(), requested: 1 });
        assert!(err.to_string().contains("once such a node joins"));

        let mut a = alloc("", &["n1"]);
        let err = a.allocate("ns/a", &[game(1)]).unwrap_err();
        assert!(err.to_string().contains("set --port-range"), "{err}");
        assert!(a.allocate("ns/b", &[PortRequest::static_port("g", "c", 7000, PortProtocol::Udp)]).is_ok());
    }

    #[test]
    fn bind_enforces_one_holder_per_port_per_node() {
        let mut a = alloc("7000", &["n1", "n2"]);
        a.allocate("a", &[game(1)]).unwrap();
        a.allocate("b", &[game(1)]).unwrap();
        a.bind("a", "n1").unwrap();
        let err = a.bind("b", "n1").unwrap_err();
        assert_eq!(
            err,
            AllocError::PortClash { server: "b".into(), node: "n1".into(), port: 7000, holder: "a".into() }
        );
        a.bind("b", "n2").unwrap();
        assert_eq!(a.bind("a", "n3"), Err(AllocError::UnknownNode { node: "n3".into() }));
        assert_eq!(a.bind("zz", "n1"), Err(AllocError::UnknownServer { server: "zz".into() }));
        // Re-binding after the pod moved (n2 freed by b first).
        assert!(a.unbind("b"));
        a.bind("a", "n2").unwrap();
        assert_eq!(a.node_of("a"), Some("n2"));
        assert_eq!(a.holder("n1", 7000), None);
        a.check_invariants();
    }

    #[test]
    fn node_removal_unbinds_and_names_servers_to_reallocate() {
        let mut a = alloc("7000", &["n1", "n2", "n3"]);
        for s in ["a", "b", "c"] {
            a.allocate(s, &[game(1)]).unwrap();
        }
        a.bind("a", "n1").unwrap();
        a.bind("b", "n2").unwrap();
        // c is not scheduled yet. n2 leaves: b loses its node, 7000 is held 3 times on 2 nodes.
        let removal = a.node_removed("n2");
        assert_eq!(removal.unbound, vec!["b".to_owned()]);
        assert_eq!(removal.over_committed, vec![OverCommit { server: "b".into(), ports: vec![7000] }]);
        assert_eq!(a.allocation("b").map(<[_]>::len), Some(1), "ports are kept, not dropped");
        // Asked again without a node to prefer, any unbound holder will do; b comes first.
        assert_eq!(a.over_committed(), removal.over_committed);
        a.check_invariants();
        // The caller re-allocates b: there is no room for it until a node joins.
        a.release("b");
        assert!(a.over_committed().is_empty());
        assert!(matches!(a.allocate("b", &[game(1)]), Err(AllocError::Exhausted { .. })));
        assert!(a.node_added("n4"));
        assert!(!a.node_added("n4"));
        assert_eq!(host(&a.allocate("b", &[game(1)]).unwrap()), vec![7000]);
        assert_eq!(a.node_removed("nope"), NodeRemoval::default());
        a.check_invariants();
    }

    #[test]
    fn restore_rebuilds_and_flags_duplicates_and_overcommit() {
        let mut live = alloc("7000-7001", &["n1", "n2"]);
        let a1 = live.allocate("a", &[game(1)]).unwrap();
        let b1 = live.allocate("b", &[game(1)]).unwrap();

        let mut a = alloc("7000-7001", &["n1"]);
        assert!(a.restore("a", a1.clone(), Some("n1")).unwrap().over_committed_ports.is_empty());
        assert_eq!(a.restore("a", a1.clone(), Some("n1")), Ok(RestoreReport::default()));
        assert!(matches!(a.restore("a", b1.clone(), None), Err(AllocError::AlreadyAllocated { .. })));
        // Same host port as a, claimed on the same node: rejected, nothing restored.
        let err = a.restore("dup", a1.clone(), Some("n1")).unwrap_err();
        assert!(
            matches!(err, AllocError::PortClash { port, ref holder, .. } if Some(port) == a1[0].host_port && holder == "a")
        );
        assert_eq!(a.allocation("dup"), None);
        // Same port on no known node: kept (it's in use) but over capacity, and flagged.
        let r = a.restore("dup", a1.clone(), Some("gone")).unwrap();
        assert_eq!(r.unknown_node.as_deref(), Some("gone"));
        assert_eq!(r.over_committed_ports, host(&a1));
        assert_eq!(a.over_committed(), vec![OverCommit { server: "dup".into(), ports: host(&a1) }]);
        a.restore("b", b1.clone(), None).unwrap();
        // Nothing is handed out past capacity afterwards.
        assert!(matches!(a.allocate("c", &[game(1)]), Err(AllocError::Exhausted { .. })));
        let bad = Allocation { host_port: None, ..b1[0].clone() };
        assert!(matches!(a.restore("x", vec![bad], None), Err(AllocError::Invalid { .. })));
        a.check_invariants();
    }

    #[test]
    fn restore_keeps_ports_outside_a_changed_range() {
        let mut a = alloc("9000-9001", &["n1"]);
        let old = Allocation {
            name: "game".into(),
            container: "server".into(),
            container_port: 7777,
            host_port: Some(7000),
            protocol: PortProtocol::Udp,
            policy: PortPolicy::Dynamic,
        };
        a.restore("a", vec![old], Some("n1")).unwrap();
        assert_eq!(a.uses(7000), 1);
        assert_eq!(a.usage().outside_ranges_used, 1);
        a.release("a");
        assert_eq!(a.usage().outside_ranges_used, 0);
        a.check_invariants();
    }
}
