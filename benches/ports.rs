//! Port allocator benchmark: GameZone's allocator against a naive first-fit peer, same run.
//!
//! Workload (defaults; override with GZ_BENCH_SERVERS, GZ_BENCH_NODES, GZ_BENCH_PORTS):
//! 50,000 servers with two Dynamic ports each, 1,000 nodes, one range of 1,000 ports.
//! * allocate: every server from empty;
//! * churn: release and re-allocate 10% of the servers at full occupancy;
//! * rebuild: a fresh allocator restored from every server's ports and node, as at start.
//!
//! The naive peer is the straightforward design: one `HashSet<u16>` of used ports per node and a
//! first-fit scan over nodes, then ports, for each port asked for.

use std::collections::{HashMap, HashSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use gamezone::ports::{Allocation, PortAllocator, PortProtocol, PortRanges, PortRequest};

/// First-fit over per-node used-port sets.
struct Naive {
    min: u16,
    max: u16,
    nodes: Vec<HashSet<u16>>,
    node_index: HashMap<String, usize>,
    servers: HashMap<String, Vec<(usize, u16)>>,
}

impl Naive {
    fn new(min: u16, max: u16) -> Self {
        Self { min, max, nodes: Vec::new(), node_index: HashMap::new(), servers: HashMap::new() }
    }

    fn node_added(&mut self, name: &str) {
        self.node_index.insert(name.to_owned(), self.nodes.len());
        self.nodes.push(HashSet::new());
    }

    fn allocate(&mut self, server: &str, count: usize) -> Option<Vec<u16>> {
        if let Some(held) = self.servers.get(server) {
            return Some(held.iter().map(|&(_, p)| p).collect());
        }
        let mut held: Vec<(usize, u16)> = Vec::with_capacity(count);
        for _ in 0..count {
            let found = self.nodes.iter().enumerate().find_map(|(n, used)| {
                (self.min..=self.max).find(|p| !used.contains(p) && !held.iter().any(|&(_, h)| h == *p)).map(|p| (n, p))
            });
            match found {
                Some((n, p)) => {
                    self.nodes[n].insert(p);
                    held.push((n, p));
                }
                None => {
                    for (n, p) in held {
                        self.nodes[n].remove(&p);
                    }
                    return None;
                }
            }
        }
        let ports = held.iter().map(|&(_, p)| p).collect();
        self.servers.insert(server.to_owned(), held);
        Some(ports)
    }

    fn release(&mut self, server: &str) {
        if let Some(held) = self.servers.remove(server) {
            for (n, p) in held {
                self.nodes[n].remove(&p);
            }
        }
    }

    /// Rebuild one server on its known node; false on a duplicate port there.
    fn restore(&mut self, server: &str, ports: &[u16], node: &str) -> bool {
        let n = self.node_index[node];
        if ports.iter().any(|p| self.nodes[n].contains(p)) {
            return false;
        }
        for &p in ports {
            self.nodes[n].insert(p);
        }
        self.servers.insert(server.to_owned(), ports.iter().map(|&p| (n, p)).collect());
        true
    }
}

const REBUILD_RUNS: usize = 5;

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn row(what: &str, ours: Duration, naive: Duration, n: usize, unit: &str) {
    println!(
        "{what:<34} ours {:>10.1} ms {:>12.0} {unit}/s | naive {:>10.1} ms {:>12.0} {unit}/s | speed ours/naive {:>7.1}x",
        ours.as_secs_f64() * 1e3,
        rate(n, ours),
        naive.as_secs_f64() * 1e3,
        rate(n, naive),
        naive.as_secs_f64() / ours.as_secs_f64(),
    );
}

fn main() {
    let servers = env("GZ_BENCH_SERVERS", 50_000);
    let node_count = env("GZ_BENCH_NODES", 1_000);
    let port_count = env("GZ_BENCH_PORTS", 1_000) as u16;
    let (min, max) = (7000u16, 7000 + port_count - 1);
    let ranges: PortRanges = format!("{min}-{max}").parse().expect("valid range");
    let keys: Vec<String> = (0..servers).map(|i| format!("zone-{}/gs-{i}", i % 50)).collect();
    let nodes: Vec<String> = (0..node_count).map(|i| format!("node-{i:04}")).collect();
    let requests = [
        PortRequest::dynamic("game", "server", 7777, PortProtocol::Udp),
        PortRequest::dynamic("query", "server", 27015, PortProtocol::Tcp),
    ];
    println!(
        "ports benchmark: {servers} servers x {} ports, {node_count} nodes, range {min}-{max} ({port_count} ports)",
        requests.len()
    );

    // Allocate everything from empty.
    let mut ours = PortAllocator::new(ranges.clone());
    for n in &nodes {
        ours.node_added(n);
    }
    let t = Instant::now();
    for k in &keys {
        black_box(ours.allocate(k, &requests).expect("capacity suffices"));
    }
    let ours_alloc = t.elapsed();

    let mut naive = Naive::new(min, max);
    for n in &nodes {
        naive.node_added(n);
    }
    let t = Instant::now();
    for k in &keys {
        black_box(naive.allocate(k, requests.len()).expect("capacity suffices"));
    }
    let naive_alloc = t.elapsed();

    // Churn at full occupancy: every 10th server goes and comes back.
    let churn: Vec<&String> = keys.iter().step_by(10).collect();
    let t = Instant::now();
    for k in &churn {
        ours.release(k);
        black_box(ours.allocate(k, &requests).expect("capacity suffices"));
    }
    let ours_churn = t.elapsed();
    let t = Instant::now();
    for k in &churn {
        naive.release(k);
        black_box(naive.allocate(k, requests.len()).expect("capacity suffices"));
    }
    let naive_churn = t.elapsed();

    // Rebuild input: every server's ports and a node a scheduler could have picked (untimed).
    let mut used: Vec<HashSet<u16>> = vec![HashSet::new(); node_count];
    let mut snapshot: Vec<(String, Vec<Allocation>, String)> = Vec::with_capacity(servers);
    for (i, k) in keys.iter().enumerate() {
        let allocs = ours.allocation(k).expect("allocated").to_vec();
        let ports: Vec<u16> = allocs.iter().filter_map(|a| a.host_port).collect();
        let n = (0..node_count)
            .map(|j| (i + j) % node_count)
            .find(|&n| ports.iter().all(|p| !used[n].contains(p)))
            .expect("some node has both ports free");
        used[n].extend(&ports);
        snapshot.push((k.clone(), allocs, nodes[n].clone()));
    }
    let naive_input: Vec<(String, Vec<u16>, String)> = snapshot
        .iter()
        .map(|(k, a, n)| (k.clone(), a.iter().filter_map(|a| a.host_port).collect(), n.clone()))
        .collect();
    let usage_before = ours.usage();
    drop(ours);
    drop(naive);

    // Rebuilds are short, so run them several times, interleaved, and keep the medians.
    let mut ours_times = Vec::new();
    let mut naive_times = Vec::new();
    let mut rebuilt = None;
    for _ in 0..REBUILD_RUNS {
        let input = snapshot.clone();
        let t = Instant::now();
        let mut fresh = PortAllocator::new(ranges.clone());
        for n in &nodes {
            fresh.node_added(n);
        }
        for (k, allocs, n) in input {
            black_box(fresh.restore(&k, allocs, Some(&n)).expect("consistent snapshot"));
        }
        ours_times.push(t.elapsed());
        rebuilt = Some(fresh);

        let t = Instant::now();
        let mut naive = Naive::new(min, max);
        for n in &nodes {
            naive.node_added(n);
        }
        for (k, ports, n) in &naive_input {
            assert!(naive.restore(k, ports, n));
        }
        naive_times.push(t.elapsed());
        black_box(&naive);
    }
    let rebuilt = rebuilt.expect("at least one run");
    assert_eq!(rebuilt.usage(), usage_before, "rebuild reproduces the usage");
    assert!(rebuilt.over_committed().is_empty());
    let ours_rebuild = median(&mut ours_times);
    let naive_rebuild = median(&mut naive_times);

    let t = Instant::now();
    let usage = black_box(rebuilt.usage());
    let usage_time = t.elapsed();

    println!();
    row("allocate (from empty)", ours_alloc, naive_alloc, servers, "servers");
    row("churn (release+allocate at full)", ours_churn, naive_churn, churn.len(), "servers");
    row("rebuild (restore, nodes known)*", ours_rebuild, naive_rebuild, servers, "servers");
    println!("* median of {REBUILD_RUNS} runs each, interleaved; the other rows are single runs");
    let r = &usage.ranges[0];
    println!(
        "usage() for metrics: {:.3} ms; range {}: used {} / free {} of {} slots, {} full ports",
        usage_time.as_secs_f64() * 1e3,
        r.range,
        r.slots.used,
        r.slots.free,
        r.slots.capacity,
        r.full_ports
    );
}
