//! Use counts of the ports in the configured ranges, kept sorted by count.
//!
//! Ports are "slots" `0..P` numbered across the ranges. `order` is a permutation of the slots
//! sorted by use count, and `start[c]` is the first position in `order` whose count is `>= c`.
//! Moving a slot up or down one count is a single swap with the edge of its bucket, so every
//! update is O(1), the least-used port is `order[0]`, and "ports with a free slot on `n` nodes"
//! is the prefix `order[..start[n]]` whatever `n` is — a node joining or leaving costs nothing here.

use super::range::PortRanges;
use super::{RangeUsage, SlotCount, Slots};

#[derive(Debug, Clone)]
pub(super) struct Pool {
    ranges: PortRanges,
    /// First slot of each range.
    offsets: Vec<u32>,
    /// Slots sorted by use count.
    order: Vec<u32>,
    /// Position of each slot in `order`.
    pos: Vec<u32>,
    /// Use count of each slot.
    uses: Vec<u32>,
    /// `start[c]`: first position in `order` with count `>= c`; positions past the end mean `len`.
    start: Vec<u32>,
}

impl Pool {
    pub(super) fn new(ranges: PortRanges) -> Self {
        let mut offsets = Vec::with_capacity(ranges.ranges().len());
        let mut total = 0;
        for r in ranges.ranges() {
            offsets.push(total);
            total += r.len();
        }
        Self {
            ranges,
            offsets,
            order: (0..total).collect(),
            pos: (0..total).collect(),
            uses: vec![0; total as usize],
            start: vec![0],
        }
    }

    pub(super) fn ranges(&self) -> &PortRanges {
        &self.ranges
    }

    /// Number of ports in all ranges.
    pub(super) fn len(&self) -> u32 {
        self.order.len() as u32
    }

    fn slot(&self, port: u16) -> Option<u32> {
        let i = self.ranges.range_of(port)?;
        Some(self.offsets[i] + u32::from(port - self.ranges.ranges()[i].min))
    }

    fn port(&self, slot: u32) -> u16 {
        let i = self.offsets.partition_point(|&o| o <= slot) - 1;
        // Fits: slot - offset < range length, so the sum stays within the range's max.
        self.ranges.ranges()[i].min + (slot - self.offsets[i]) as u16
    }

    /// Position in `order` where counts `>= c` start.
    fn bound(&self, c: u32) -> u32 {
        self.start.get(c as usize).copied().unwrap_or(self.len())
    }

    /// Use count of `port`, `None` if it is outside the ranges.
    pub(super) fn uses(&self, port: u16) -> Option<u32> {
        self.slot(port).map(|s| self.uses[s as usize])
    }

    fn swap(&mut self, a: u32, b: u32) {
        self.order.swap(a as usize, b as usize);
        self.pos[self.order[a as usize] as usize] = a;
        self.pos[self.order[b as usize] as usize] = b;
    }

    /// Counts one more use of `port`; returns false if it is outside the ranges.
    pub(super) fn add(&mut self, port: u16) -> bool {
        let Some(slot) = self.slot(port) else {
            return false;
        };
        let c = self.uses[slot as usize];
        let next = c as usize + 1;
        if self.start.len() <= next {
            self.start.resize(next + 1, self.len());
        }
        // Move the slot to the last place of bucket `c`, then shrink bucket `c` by one.
        let last = self.start[next] - 1;
        self.swap(self.pos[slot as usize], last);
        self.start[next] = last;
        self.uses[slot as usize] = c + 1;
        true
    }

    /// Counts one use of `port` less; returns false if it is outside the ranges.
    pub(super) fn remove(&mut self, port: u16) -> bool {
        let Some(slot) = self.slot(port) else {
            return false;
        };
        let c = self.uses[slot as usize];
        debug_assert!(c > 0, "port {port} released more often than allocated");
        if c == 0 {
            return true;
        }
        let first = self.start[c as usize];
        self.swap(self.pos[slot as usize], first);
        self.start[c as usize] = first + 1;
        self.uses[slot as usize] = c - 1;
        // Drop trailing empty buckets so `start` stays as short as the highest count.
        while self.start.len() > 1 && self.start[self.start.len() - 1] == self.len() {
            self.start.pop();
        }
        true
    }

    /// Picks `n` distinct ports used fewer than `cap` times, least used first, skipping those
    /// `skip` names. On shortage returns how many such ports there are.
    pub(super) fn pick(&self, cap: u32, n: usize, skip: impl Fn(u16) -> bool) -> Result<Vec<u16>, u32> {
        let mut picked = Vec::with_capacity(n);
        if n == 0 {
            return Ok(picked);
        }
        // The scan passes over only the skipped ports before it has `n`.
        for &slot in &self.order[..self.bound(cap) as usize] {
            let port = self.port(slot);
            if !skip(port) {
                picked.push(port);
                if picked.len() == n {
                    return Ok(picked);
                }
            }
        }
        Err(picked.len() as u32)
    }

    /// Ports used more than `cap` times.
    pub(super) fn over(&self, cap: u32) -> impl Iterator<Item = (u16, u32)> + '_ {
        let from = self.bound(cap.saturating_add(1)) as usize;
        self.order[from..].iter().map(|&s| (self.port(s), self.uses[s as usize]))
    }

    /// Used and free slots per range, with `nodes` slots per port. O(ports): it is meant for
    /// metric scrapes, not for the allocation path.
    pub(super) fn usage(&self, nodes: u32) -> Vec<RangeUsage> {
        self.ranges
            .ranges()
            .iter()
            .zip(&self.offsets)
            .map(|(range, &offset)| {
                let uses = &self.uses[offset as usize..(offset + range.len()) as usize];
                let mut u = RangeUsage { range: *range, ports: range.len(), slots: Slots::default(), full_ports: 0 };
                for &c in uses {
                    u.slots.used += SlotCount::from(c);
                    u.slots.free += SlotCount::from(nodes.saturating_sub(c));
                    if c >= nodes {
                        u.full_ports += 1;
                    }
                }
                u.slots.capacity = SlotCount::from(range.len()) * SlotCount::from(nodes);
                u
            })
            .collect()
    }

    /// Panics if the internal indexes disagree; for tests.
    #[cfg(test)]
    pub(super) fn check(&self) {
        let n = self.len();
        for (i, &s) in self.order.iter().enumerate() {
            assert_eq!(self.pos[s as usize], i as u32);
            if i > 0 {
                assert!(self.uses[self.order[i - 1] as usize] <= self.uses[s as usize], "order not sorted");
            }
        }
        for (c, &st) in self.start.iter().enumerate() {
            assert!(st <= n);
            let below = self.uses.iter().filter(|&&u| (u as usize) < c).count() as u32;
            assert_eq!(st, below, "start[{c}]");
        }
        let max = self.uses.iter().copied().max().unwrap_or(0);
        assert!(self.start.len() as u32 <= max + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(spec: &str) -> Pool {
        Pool::new(spec.parse().unwrap())
    }

    #[test]
    fn least_used_first_and_capacity_prefix() {
        let mut p = pool("100-102,200");
        assert_eq!(p.len(), 4);
        let none = |_: u16| false;
        let first = p.pick(1, 4, none).unwrap();
        assert_eq!(first.len(), 4);
        for port in &first {
            assert!(p.add(*port));
        }
        p.check();
        // Everything used once: nothing free at cap 1, everything free at cap 2.
        assert_eq!(p.pick(1, 1, none), Err(0));
        assert_eq!(p.pick(2, 4, none).unwrap().len(), 4);
        assert!(p.add(101));
        assert!(p.add(101));
        p.check();
        assert_eq!(p.uses(101), Some(3));
        assert_eq!(p.over(2).collect::<Vec<_>>(), vec![(101, 3)]);
        // 101 is now the most used: it comes last.
        assert_eq!(p.pick(4, 4, none).unwrap()[3], 101);
        assert!(!p.pick(3, 3, none).unwrap().contains(&101));
        assert!(p.remove(101));
        assert!(p.remove(101));
        assert!(p.remove(200));
        p.check();
        assert_eq!(p.pick(1, 1, none), Ok(vec![200]));
        assert_eq!(p.pick(1, 1, |port| port == 200), Err(0));
        assert!(!p.add(150));
        assert_eq!(p.uses(150), None);
    }

    #[test]
    fn usage_counts_slots_per_range() {
        let mut p = pool("100-101,200-202");
        p.add(100);
        p.add(100);
        p.add(100);
        p.add(201);
        let u = p.usage(2);
        assert_eq!((u[0].slots.used, u[0].slots.free, u[0].slots.capacity, u[0].full_ports), (3, 2, 4, 1));
        assert_eq!((u[1].slots.used, u[1].slots.free, u[1].slots.capacity, u[1].full_ports), (1, 5, 6, 0));
    }
}
