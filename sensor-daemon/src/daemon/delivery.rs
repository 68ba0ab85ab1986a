//! The alert path of a running daemon: ring-buffer records through the
//! [`Pipeline`] (events to alerts, no I/O) to the outputs ([`Sinks`]), with
//! the run's counters ([`RunStats`]).

use std::collections::BTreeMap;

use aya::maps::{MapData, RingBuf};
use sensor_common::ConnEvent;

use super::selftest::Run;
use crate::alert::Alert;
use crate::kernel::KernelCounters;
use crate::kernel::dns::decode_dns;
use crate::kernel::event::decode;
use crate::kernel::local::decode_exec;
use crate::net::Direction;
use crate::pipeline::{Now, Pipeline};
use crate::sink::{AlertMeta, SinkStats, Sinks};

/// Records handled before the loop yields to the output tasks.
pub(super) const DRAIN_CHUNK: usize = 256;

/// What happened during a run, written to `stats_file` at exit.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunStats {
    pub kernel: KernelCounters,
    /// Alerts handed to the outputs (first alerts, summaries, events);
    /// what each output delivered or dropped is in `outputs`.
    pub alerts_written: u64,
    /// Connections those alerts stand for (the sum of `torsensor.count`).
    pub connections_reported: u64,
    /// Aggregated summaries among the alerts written.
    pub summaries_written: u64,
    /// Connections those summaries stand for (repeats not alerted one by one).
    pub summarized_connections: u64,
    /// Hits still pending in the kernel at shutdown, reported as incomplete.
    pub incomplete_reported: u64,
    /// Inbound hits no process used within `inbound_wait`, reported
    /// without a process.
    pub inbound_unattributed: u64,
    /// Ring-buffer records that could not be decoded.
    pub decode_errors: u64,
    /// Gateway flows summarised (ended, idle, or open at shutdown).
    #[serde(default)]
    pub gateway_flows_summarized: u64,
    /// Per output: delivered, failed attempts, dropped, spooled.
    pub outputs: Vec<SinkStats>,
}

/// The pipeline and the outputs it feeds.
pub(super) struct Delivery {
    pub pipeline: Pipeline,
    pub sinks: Sinks,
    pub stats: RunStats,
    /// Alerts sent per (direction, rule id) (metrics); the direction of
    /// an alert that is not about a connection is its signal (`exec`,
    /// `listen`).
    pub by_rule: BTreeMap<(String, String), u64>,
    /// A self-test under way: its canary's alerts are marked as seen.
    pub selftest: Option<Run>,
}

impl Delivery {
    /// One kernel event (`incomplete`: still pending at shutdown or stale).
    pub fn handle(&mut self, ev: &ConnEvent, incomplete: bool) {
        match self.pipeline.handle(ev, incomplete, Now::current()) {
            Ok(alerts) => {
                for alert in &alerts {
                    self.write(alert);
                }
            }
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::warn!("dropped an undecodable kernel event: {e}");
            }
        }
    }

    /// Writes the summaries of aggregation windows that have ended (or all
    /// of them, at shutdown).
    pub fn write_summaries(&mut self, all: bool) {
        let alerts = if all {
            self.pipeline.flush()
        } else {
            self.pipeline.due(std::time::Instant::now())
        };
        for alert in &alerts {
            self.write(alert);
        }
    }

    /// Hands one alert to every output (never blocks: each output has its
    /// own queue and task).
    pub(super) fn write(&mut self, alert: &Alert) {
        let meta = AlertMeta {
            time: alert.timestamp.0,
            severity: alert.event.severity.map_or(0, |s| s.min(100)),
            rule_id: alert
                .rule
                .as_ref()
                .map(|r| r.id.clone())
                .unwrap_or_default(),
            host: alert.host.name.clone(),
        };
        self.sinks.send(&meta, &|schema| schema.render(alert));
        if let Some(run) = &mut self.selftest
            && [alert.source, alert.destination]
                .iter()
                .flatten()
                .any(|e| e.ip == run.canary)
        {
            let own = alert
                .process
                .as_ref()
                .is_some_and(|p| p.pid == std::process::id());
            match alert.direction() {
                Some(Direction::Egress) => run.egress = Some(own),
                Some(Direction::Ingress) => run.ingress = Some(own),
                None => {}
            }
        }
        let label = match alert.direction() {
            Some(d) => d.to_string(),
            None => alert.signal().to_string(),
        };
        let key = (label, meta.rule_id);
        *self.by_rule.entry(key).or_default() += 1;
        self.stats.alerts_written += 1;
        self.stats.connections_reported += alert.torsensor.count.unwrap_or(1);
        if alert.torsensor.summary {
            self.stats.summaries_written += 1;
            self.stats.summarized_connections += alert.torsensor.count.unwrap_or(1);
        }
    }

    /// Handles up to `max` records of `ring`, each decoded (`decode`, the
    /// record then released) and turned into alerts (`handle`); a record
    /// that fails either is counted and logged (`what`: which ring). True
    /// if more may be left.
    fn drain_records<T, E: std::fmt::Display>(
        &mut self,
        ring: &mut RingBuf<MapData>,
        max: usize,
        what: &str,
        decode: impl Fn(&[u8]) -> Result<T, E>,
        mut handle: impl FnMut(&mut Self, T) -> Result<Vec<Alert>, E>,
    ) -> bool {
        for _ in 0..max {
            let Some(item) = ring.next() else {
                return false;
            };
            let decoded = decode(&item);
            drop(item);
            match decoded.and_then(|record| handle(self, record)) {
                Ok(alerts) => {
                    for alert in &alerts {
                        self.write(alert);
                    }
                }
                Err(e) => {
                    self.stats.decode_errors += 1;
                    tracing::warn!("dropped a kernel {what}record: {e}");
                }
            }
        }
        true
    }

    /// Handles up to `max` ring-buffer records; true if more may be left.
    pub fn drain_some(&mut self, ring: &mut RingBuf<MapData>, max: usize) -> bool {
        self.drain_records(ring, max, "", decode, |d, ev| {
            d.handle(&ev, false);
            Ok(Vec::new())
        })
    }

    /// Handles up to `max` records of the exec ring buffer (program
    /// starts); true if more may be left.
    pub fn drain_exec_some(&mut self, ring: &mut RingBuf<MapData>, max: usize) -> bool {
        self.drain_records(ring, max, "exec ", decode_exec, |d, ev| {
            d.pipeline.handle_exec(&ev, Now::current())
        })
    }

    /// Handles up to `max` records of the DNS ring buffer; true if more
    /// may be left.
    pub fn drain_dns_some(&mut self, ring: &mut RingBuf<MapData>, max: usize) -> bool {
        self.drain_records(ring, max, "DNS ", decode_dns, |d, ev| {
            d.pipeline.handle_dns(&ev, Now::current())
        })
    }

    /// [`Delivery::drain`] for the DNS ring buffer.
    pub async fn drain_dns(&mut self, ring: &mut RingBuf<MapData>) {
        while self.drain_dns_some(ring, DRAIN_CHUNK) {
            tokio::task::yield_now().await;
        }
    }
    /// Handles up to `max` records of the gateway ring buffer (hits); true
    /// if more may be left.
    pub fn drain_gateway_some(
        &mut self,
        ring: &mut RingBuf<MapData>,
        gw: &super::GatewayRun,
        max: usize,
    ) -> bool {
        self.drain_records(
            ring,
            max,
            "gateway ",
            |bytes| gw.decoder.hit(bytes, &gw.clock),
            |d, hit| Ok(d.pipeline.handle_gateway(&hit, Now::current())),
        )
    }

    /// A gateway flow's summary.
    pub fn handle_flow_end(&mut self, summary: &crate::kernel::gateway::FlowSummary) {
        self.stats.gateway_flows_summarized += 1;
        for alert in self.pipeline.handle_flow_end(summary, Now::current()) {
            self.write(&alert);
        }
    }

    /// Handles every record in the ring buffer, in chunks, letting the
    /// output tasks (same thread) run between chunks so that their queues
    /// drain as fast as alerts arrive.
    pub async fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while self.drain_some(ring, DRAIN_CHUNK) {
            tokio::task::yield_now().await;
        }
    }

    /// [`Delivery::drain`] for the exec ring buffer.
    pub async fn drain_exec(&mut self, ring: &mut RingBuf<MapData>) {
        while self.drain_exec_some(ring, DRAIN_CHUNK) {
            tokio::task::yield_now().await;
        }
    }
}
