//! Aggregation: a Tor client opens many connections, and one alert per
//! connection floods a SIEM. Alerts are grouped per (direction, process,
//! peer, service port) over a window: the first is emitted at once (count
//! 1); repeats inside the window are counted and emitted as one summary when
//! the window ends, or at shutdown. The counts add up to the connections.
//! DNS queries are grouped the same way, and by name as well.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use super::model::Alert;
use crate::net::Direction;
use crate::time::Timestamp;

/// What makes two alerts "the same".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub direction: Direction,
    /// Process id (0 when no process could be attributed).
    pub pid: u32,
    pub peer: IpAddr,
    /// The service port: the peer's port outbound, the local port inbound
    /// (the peer's port of an inbound connection is ephemeral).
    pub port: u16,
    /// A DNS query's name, hashed (0 for a connection): one process's
    /// queries to one server are grouped per name (its A and AAAA, its
    /// retries), a resolver forwarding many names is not.
    pub name: u64,
}

impl Key {
    /// The group of an alert; none for an alert that is not about a
    /// connection (a program start, a listener: each one is news).
    pub fn of(alert: &Alert) -> Option<Self> {
        // A gateway hit has its own flow summary; each one is news.
        if alert.signal() != super::model::Signal::Connection {
            return None;
        }
        Some(Key {
            direction: alert.direction()?,
            pid: alert.process.as_ref().map_or(0, |p| p.pid),
            peer: alert.peer()?.ip,
            // Outbound the peer is the destination, inbound the local end
            // is: the service port is the destination port either way.
            port: alert.destination?.port,
            name: alert.dns.as_ref().map_or(0, |d| {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                d.question.name.hash(&mut h);
                h.finish()
            }),
        })
    }
}

struct Group {
    opened: Instant,
    /// Repeats after the first alert.
    count: u64,
    first_seen: Option<SystemTime>,
    last_seen: Option<SystemTime>,
    /// The latest repeat, the base of the summary.
    latest: Option<Alert>,
}

/// Groups alerts; `window` zero turns aggregation off.
pub struct Aggregator {
    window: Duration,
    max_groups: usize,
    groups: HashMap<Key, Group>,
}

/// Marks `alert` as standing for `count` connections seen between the two
/// times.
fn stamp(alert: &mut Alert, count: u64, first: SystemTime, last: SystemTime, summary: bool) {
    let ts = &mut alert.torsensor;
    ts.count = Some(count);
    ts.first_seen = Some(Timestamp(first));
    ts.last_seen = Some(Timestamp(last));
    ts.summary = summary;
}

impl Aggregator {
    /// `max_groups` bounds memory: when that many groups are open, the
    /// oldest is closed (its summary emitted) to make room.
    pub fn new(window: Duration, max_groups: usize) -> Self {
        Aggregator {
            window,
            max_groups: max_groups.max(1),
            groups: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.window.is_zero()
    }

    /// Takes one alert (seen at its `@timestamp`, grouped by [`Key::of`]).
    /// Returns what to emit now: the alert itself if it opens a group
    /// (count 1), and a summary if the group table was full and the oldest
    /// group had to be closed.
    pub fn offer(&mut self, mut doc: Alert, now: Instant) -> Vec<Alert> {
        let key = Key::of(&doc);
        let at = doc.timestamp.0;
        let Some(key) = key.filter(|_| self.enabled()) else {
            stamp(&mut doc, 1, at, at, false);
            return vec![doc];
        };
        let mut out = Vec::new();
        if let Some(group) = self.groups.get_mut(&key)
            && now.duration_since(group.opened) < self.window
        {
            group.count += 1;
            group.first_seen.get_or_insert(at);
            group.last_seen = Some(at);
            group.latest = Some(doc);
            return out;
        }
        // A group past its window: close it before opening a new one.
        if let Some(old) = self.groups.remove(&key) {
            out.extend(summary(old));
        }
        if self.groups.len() >= self.max_groups
            && let Some(oldest) = self
                .groups
                .iter()
                .min_by_key(|(_, g)| g.opened)
                .map(|(k, _)| *k)
        {
            out.extend(self.groups.remove(&oldest).and_then(summary));
        }
        stamp(&mut doc, 1, at, at, false);
        out.push(doc);
        self.groups.insert(
            key,
            Group {
                opened: now,
                count: 0,
                first_seen: None,
                last_seen: None,
                latest: None,
            },
        );
        out
    }

    /// Summaries of the groups whose window has ended.
    pub fn due(&mut self, now: Instant) -> Vec<Alert> {
        let window = self.window;
        let ended: Vec<Key> = self
            .groups
            .iter()
            .filter(|(_, g)| now.duration_since(g.opened) >= window)
            .map(|(k, _)| *k)
            .collect();
        ended
            .into_iter()
            .filter_map(|k| self.groups.remove(&k).and_then(summary))
            .collect()
    }

    /// Every pending summary (shutdown).
    pub fn flush(&mut self) -> Vec<Alert> {
        self.groups
            .drain()
            .filter_map(|(_, g)| summary(g))
            .collect()
    }

    pub fn open_groups(&self) -> usize {
        self.groups.len()
    }
}

fn summary(group: Group) -> Option<Alert> {
    let mut doc = group.latest?;
    let first = group.first_seen?;
    let last = group.last_seen?;
    stamp(&mut doc, group.count, first, last, true);
    doc.timestamp = Timestamp(last);
    Some(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::test_support::connection_alert;

    /// An alert to 198.51.100.7:`port` from pid 7 at `at`; `n` goes in the
    /// source port (not part of the key), to tell alerts apart.
    fn doc(port: u16, n: u16, at: SystemTime) -> Alert {
        connection_alert(7, ("10.0.0.5", n), ("198.51.100.7", port), at)
    }

    fn count(docs: &[Alert]) -> u64 {
        docs.iter().map(|d| d.torsensor.count.unwrap()).sum()
    }

    #[test]
    fn the_key_is_the_service_port_and_the_peer() {
        let at = SystemTime::UNIX_EPOCH;
        let key = Key::of(&doc(9001, 41000, at)).unwrap();
        assert_eq!(key.port, 9001);
        assert_eq!(key.pid, 7);
        assert_eq!(key.peer, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(key.direction, Direction::Egress);
    }

    #[test]
    fn first_at_once_repeats_in_one_summary_counts_add_up() {
        let mut agg = Aggregator::new(Duration::from_secs(60), 100);
        let t0 = Instant::now();
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut out = agg.offer(doc(443, 0, at), t0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].torsensor.count, Some(1));
        for i in 1..=9 {
            let later = at + Duration::from_secs(i);
            assert!(
                agg.offer(doc(443, i as u16, later), t0 + Duration::from_secs(i))
                    .is_empty()
            );
        }
        // Another port is another group.
        out.extend(agg.offer(doc(9001, 100, at), t0));
        assert_eq!(out.len(), 2);
        assert!(agg.due(t0 + Duration::from_secs(30)).is_empty());
        let due = agg.due(t0 + Duration::from_secs(60));
        // 9001 had no repeat: nothing to summarise.
        assert_eq!(due.len(), 1);
        let s = &due[0];
        assert_eq!(
            s.source.unwrap().port,
            9,
            "the summary is the latest repeat"
        );
        assert_eq!(s.torsensor.count, Some(9));
        assert!(s.torsensor.summary);
        let text = |t: Option<Timestamp>| t.map(|t| t.to_string());
        assert_eq!(
            text(s.torsensor.first_seen).as_deref(),
            Some("2023-11-14T22:13:21.000000000Z")
        );
        assert_eq!(
            text(s.torsensor.last_seen).as_deref(),
            Some("2023-11-14T22:13:29.000000000Z")
        );
        assert_eq!(Some(s.timestamp), s.torsensor.last_seen);
        out.extend(due);
        assert_eq!(count(&out), 11);
        assert_eq!(agg.open_groups(), 0);
    }

    #[test]
    fn shutdown_flushes_and_a_full_table_closes_the_oldest() {
        let mut agg = Aggregator::new(Duration::from_secs(3600), 2);
        let t0 = Instant::now();
        let at = SystemTime::now();
        let mut out = Vec::new();
        for (port, ms) in [(1, 0), (1, 1), (1, 2), (2, 500), (2, 501)] {
            out.extend(agg.offer(doc(port, 0, at), t0 + Duration::from_millis(ms)));
        }
        // A third key: the oldest group (port 1) is closed to make room.
        out.extend(agg.offer(doc(3, 0, at), t0 + Duration::from_secs(1)));
        assert!(
            out.iter()
                .any(|d| d.torsensor.summary && d.torsensor.count == Some(2))
        );
        out.extend(agg.offer(doc(3, 0, at), t0 + Duration::from_secs(2)));
        out.extend(agg.flush());
        assert_eq!(count(&out), 7);
        assert_eq!(agg.open_groups(), 0);
    }

    #[test]
    fn a_zero_window_turns_it_off() {
        let mut agg = Aggregator::new(Duration::ZERO, 10);
        let t0 = Instant::now();
        for _ in 0..3 {
            let out = agg.offer(doc(1, 0, SystemTime::now()), t0);
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].torsensor.count, Some(1));
        }
        assert_eq!(agg.open_groups(), 0);
    }
}
