//! Statistics of the sinks: the live counters every sink task writes
//! ([`SinkCounters`], with the rate limits on its warnings), the snapshot
//! the metrics endpoint reads ([`SinkStats`]), and the `health:` report of
//! lost alerts ([`LossReport`]).
//!
//! Owns no task and no I/O besides `tracing`; it may use `crate::alert`
//! (the [`Schema`] a sink renders) and nothing else of the daemon. Every
//! other file of `sink` counts through it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::alert::Schema;

/// Counters of one sink, as reported to the metrics endpoint and written
/// to `status.json` (read back by `torsensor status` without the daemon).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStats {
    pub name: String,
    /// `stdout`, `file`, `syslog-udp`, `syslog-tcp`, `syslog-unix`, `http`, `hec`, `bulk`.
    pub kind: String,
    /// The alert schema this output renders.
    pub schema: Schema,
    /// Alerts the receiver acknowledged (local: written and flushed).
    pub delivered: u64,
    /// Failed delivery attempts (each retry counts).
    pub failed: u64,
    /// Alerts dropped because the memory queue was full.
    pub dropped_queue: u64,
    /// Alerts dropped from a full spool (oldest first).
    pub dropped_spool: u64,
    /// Alerts refused for good (HTTP 400/413/422, `_bulk` item errors,
    /// oversize datagrams) or lost to a local write error.
    pub dropped_undeliverable: u64,
    /// Alerts in the memory queue now.
    pub queued: u64,
    /// Alerts and bytes in the spool now.
    pub spooled_events: u64,
    pub spooled_bytes: u64,
}

#[derive(Default)]
struct RateLimit {
    last: Option<Instant>,
    suppressed: u64,
}

/// Shared counters of one sink (the task writes, `stats` reads).
#[derive(Default)]
pub(crate) struct SinkCounters {
    pub(super) name: String,
    pub(super) delivered: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) dropped_queue: AtomicU64,
    pub(super) dropped_spool: AtomicU64,
    pub(super) dropped_undeliverable: AtomicU64,
    pub(super) spooled_events: AtomicU64,
    pub(super) spooled_bytes: AtomicU64,
    /// Rate limit of failure warnings (delivery, reading the spool, ...).
    fail_log: Mutex<RateLimit>,
    /// Rate limit of loss warnings: a separate one, so that a failure
    /// never hides a loss.
    loss_log: Mutex<RateLimit>,
}

/// At most one warning of each kind (failure, loss) per sink per this interval.
const LOG_EVERY: Duration = Duration::from_secs(10);

impl SinkCounters {
    pub(super) fn named(name: String) -> SinkCounters {
        SinkCounters {
            name,
            ..SinkCounters::default()
        }
    }
    fn warn_limited(&self, limit: &Mutex<RateLimit>, msg: &str) {
        let mut g = limit.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if g.last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            tracing::warn!(sink = %self.name, suppressed = g.suppressed, "{msg}");
            g.last = Some(now);
            g.suppressed = 0;
        } else {
            g.suppressed += 1;
        }
    }
    /// Alerts were lost (they are counted by the caller).
    pub(crate) fn note_drop(&self, msg: &str) {
        self.warn_limited(&self.loss_log, msg);
    }
    /// Something failed without losing alerts (yet).
    pub(super) fn warn_failure(&self, msg: &str) {
        self.warn_limited(&self.fail_log, msg);
    }
    pub(super) fn note_failure(&self, msg: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.warn_failure(&format!("delivery failed: {msg}"));
    }
}

pub(super) fn snapshot(
    name: &str,
    kind: &'static str,
    format: Schema,
    c: &SinkCounters,
    queued: u64,
) -> SinkStats {
    SinkStats {
        name: name.to_owned(),
        kind: kind.to_owned(),
        schema: format,
        delivered: c.delivered.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        dropped_queue: c.dropped_queue.load(Ordering::Relaxed),
        dropped_spool: c.dropped_spool.load(Ordering::Relaxed),
        dropped_undeliverable: c.dropped_undeliverable.load(Ordering::Relaxed),
        queued,
        spooled_events: c.spooled_events.load(Ordering::Relaxed),
        spooled_bytes: c.spooled_bytes.load(Ordering::Relaxed),
    }
}

/// Health events for lost alerts. The daemon's health tick (every
/// `health_interval`) calls [`LossReport::tick`] with
/// [`Sinks::stats`](super::Sinks::stats): every output whose losses grew
/// since the last tick gets one `health:` warning with what grew, by cause,
/// and its running total. Never rate limited (one line per output per tick
/// at most).
#[derive(Debug, Default)]
pub struct LossReport {
    last: Vec<SinkStats>,
}

impl LossReport {
    pub fn tick(&mut self, now: &[SinkStats]) {
        for s in now {
            let prev = self.last.iter().find(|p| p.name == s.name);
            let grew = |f: fn(&SinkStats) -> u64| f(s).saturating_sub(prev.map_or(0, f));
            let queue = grew(|x| x.dropped_queue);
            let spool = grew(|x| x.dropped_spool);
            let refused = grew(|x| x.dropped_undeliverable);
            let lost = queue + spool + refused;
            if lost > 0 {
                let total = s.dropped_queue + s.dropped_spool + s.dropped_undeliverable;
                tracing::warn!(
                    output = %s.name,
                    lost,
                    total_lost = total,
                    dropped_queue = queue,
                    dropped_spool = spool,
                    dropped_undeliverable = refused,
                    "health: output {} lost {lost} alerts since the last report (memory queue full: {queue}; spool full, unwritable or damaged: {spool}; refused by the receiver or unwritable: {refused}); {total} lost in total",
                    s.name
                );
            }
        }
        self.last = now.to_vec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_logs_are_rate_limited_but_all_counted() {
        let c = SinkCounters {
            name: "t".into(),
            ..SinkCounters::default()
        };
        for _ in 0..5 {
            c.note_failure("connection refused");
        }
        assert_eq!(c.failed.load(Ordering::Relaxed), 5);
        let g = c.fail_log.lock().unwrap();
        assert!(g.last.is_some());
        assert_eq!(g.suppressed, 4, "one warning, four suppressed");
        drop(g);
        // A loss right after is not hidden by the failures' limit.
        c.note_drop("cannot write the spool: 3 alerts lost");
        let g = c.loss_log.lock().unwrap();
        assert!(g.last.is_some());
        assert_eq!(g.suppressed, 0, "the loss was logged");
    }
}
