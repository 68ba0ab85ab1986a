//! Joining the two directions of a conversation that a flow exporter
//! reports as two one-way records (the hunt's captured exports and flow
//! logs, the live collector): the first record waits, bounded in number
//! and in time, for its other direction, whose counts are then added.

use std::collections::HashMap;
use std::hash::Hash;

use super::Flow;

/// What waits in a [`OneWayTable`]: something built around a flow.
pub trait HasFlow {
    fn flow_mut(&mut self) -> Option<&mut Flow>;
}

struct Pending<T> {
    item: T,
    last_seen_ns: u64,
}

/// One-way records waiting for their other direction, by key.
pub struct OneWayTable<K, T> {
    map: HashMap<K, Pending<T>>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy, T: HasFlow> OneWayTable<K, T> {
    /// At most `capacity` items wait at once.
    pub fn new(capacity: usize) -> Self {
        OneWayTable {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Adds `flow`'s counts and times to the item waiting under `key`
    /// (seen at `seen_ns`); false when nothing waits there.
    pub fn merge(&mut self, key: &K, flow: &Flow, seen_ns: u64) -> bool {
        let Some(p) = self.map.get_mut(key) else {
            return false;
        };
        if let Some(f) = p.item.flow_mut() {
            for d in 0..2 {
                f.bytes[d] += flow.bytes[d];
                f.packets[d] += flow.packets[d];
            }
            f.start_ns = f.start_ns.min(flow.start_ns);
            f.end_ns = f.end_ns.max(flow.end_ns);
        }
        p.last_seen_ns = p.last_seen_ns.max(seen_ns);
        true
    }

    /// Makes `item` wait under `key`. When the table is full, the item
    /// seen least recently is taken out and returned, to be judged as it
    /// is.
    pub fn insert(&mut self, key: K, item: T, seen_ns: u64) -> Option<T> {
        let evicted = if self.map.len() >= self.capacity {
            self.map
                .iter()
                .min_by_key(|(_, p)| p.last_seen_ns)
                .map(|(k, _)| *k)
                .and_then(|k| self.map.remove(&k))
                .map(|p| p.item)
        } else {
            None
        };
        self.map.insert(
            key,
            Pending {
                item,
                last_seen_ns: seen_ns,
            },
        );
        evicted
    }

    /// The item waiting under `key`.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut T> {
        self.map.get_mut(key).map(|p| &mut p.item)
    }

    /// Takes out the items not seen for `idle_ns` at `now_ns`.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> Vec<T> {
        self.expire_with(now_ns, |_| idle_ns)
    }

    /// Takes out the items not seen for their own `idle_ns(item)`.
    pub fn expire_with(&mut self, now_ns: u64, idle_ns: impl Fn(&T) -> u64) -> Vec<T> {
        let done: Vec<K> = self
            .map
            .iter()
            .filter(|(_, p)| now_ns.saturating_sub(p.last_seen_ns) >= idle_ns(&p.item))
            .map(|(k, _)| *k)
            .collect();
        done.iter()
            .filter_map(|k| self.map.remove(k))
            .map(|p| p.item)
            .collect()
    }

    /// Takes out every item.
    pub fn drain(&mut self) -> Vec<T> {
        self.map.drain().map(|(_, p)| p.item).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hunt::{FlowEnd, Initiator, Position};

    impl HasFlow for Flow {
        fn flow_mut(&mut self) -> Option<&mut Flow> {
            Some(self)
        }
    }

    fn flow(start: u64, end: u64, bytes: [u64; 2]) -> Flow {
        Flow {
            start_ns: start,
            end_ns: end,
            initiator: "192.0.2.1:40000".parse().unwrap(),
            responder: "198.51.100.1:443".parse().unwrap(),
            protocol: 6,
            bytes,
            packets: [1, 1],
            initiator_by: Initiator::Port,
            end: FlowEnd::Record,
            position: Position::default(),
        }
    }

    #[test]
    fn directions_merge_and_the_table_is_bounded_and_expires() {
        let mut t: OneWayTable<u32, Flow> = OneWayTable::new(2);
        assert!(!t.merge(&1, &flow(5, 6, [0, 9]), 10));
        assert!(t.insert(1, flow(10, 20, [100, 0]), 20).is_none());
        assert!(t.merge(&1, &flow(5, 30, [0, 7]), 30));
        assert!(t.insert(2, flow(10, 20, [1, 0]), 25).is_none());
        // Full: the least recently seen (2, at 25) goes out.
        let out = t.insert(3, flow(40, 41, [2, 0]), 41).unwrap();
        assert_eq!(out.bytes, [1, 0]);
        assert_eq!(t.len(), 2);
        // Quiet for 15 at 45: only key 1 (last seen 30).
        let done = t.expire(45, 15);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].bytes, [100, 7]);
        assert_eq!((done[0].start_ns, done[0].end_ns), (5, 30));
        assert_eq!(t.drain().len(), 1);
        assert!(t.is_empty());
    }
}
