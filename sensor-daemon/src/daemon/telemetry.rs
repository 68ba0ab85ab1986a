//! What a running daemon shows its operators: one [`Snapshot`] of its
//! state, refreshed by the run loop every second, read by the HTTP
//! endpoint ([`super::endpoint`]) as Prometheus metrics (`/metrics`, through
//! the `prometheus-client` crate), as the verdicts of `/healthz` and
//! `/readyz`, and as JSON (`/status`, what `torsensor status` prints).
//!
//! Metric names are an API (README, "Metrics"): `torsensor_` prefix, base
//! units in the name, counters end in `_total`, no per-address or per-pid
//! labels. Kernel counters are totals kept by the kernel, so they are
//! exported as they are read (`ConstCounter`), never re-counted here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::feed::manager::FeedManager;
use crate::feed::{FeedCounts, FeedSet};
use crate::kernel::{HookPlan, KernelCounters};
use crate::sink::SinkStats;

/// A loop that has not refreshed the snapshot for this long is stuck:
/// `/healthz` fails (the kubelet, like systemd's watchdog, restarts it).
pub const LOOP_STALL: Duration = Duration::from_secs(15);

/// The daemon's state as of the loop's last refresh.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: String,
    pub pid: u32,
    /// Programs attached and the ring buffer read.
    pub armed: bool,
    /// No configured feed has content: only the embedded snapshot is armed.
    pub embedded_only: bool,
    /// `[metrics] ready_on_embedded`.
    pub ready_on_embedded: bool,
    /// Addresses and OR-port pairs in the kernel maps.
    pub prefixes: usize,
    pub or_ports: usize,
    pub hooks: Option<HookPlan>,
    /// Why program starts are not watched (the exec program could not be
    /// attached; rule TORSENSOR-005 cannot fire), if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_unwatched: Option<String>,
    /// `[dns]` at start: `off`, `attached` or `failed` ("" before).
    #[serde(default)]
    pub dns_hook: String,
    /// Why DNS lookups are not watched although `[dns]` is enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_unwatched: Option<String>,
    /// Gateway mode: how the TC programs are attached (`tcx`, `netlink`)
    /// and on how many interfaces; none when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<(String, usize)>,
    /// The live flow collector's listeners (none when not configured).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub collectors: Vec<super::collector::ListenerSnapshot>,
    /// Matching flow records waiting for their other direction.
    #[serde(default)]
    pub collector_waiting: usize,
    pub kernel: KernelCounters,
    pub alerts: Vec<AlertCount>,
    /// Aggregated summaries sent, and the connections they stand for.
    pub summaries: u64,
    pub summarized_connections: u64,
    /// Ring-buffer records that could not be decoded.
    pub decode_errors: u64,
    pub feeds: Vec<FeedHealth>,
    pub outputs: Vec<SinkStats>,
    /// `--selftest`: not ready until a self-test passed.
    pub selftest_required: bool,
    /// The last self-test of this run.
    pub selftest: Option<super::selftest::SelftestResult>,
    /// What the rules decided since start.
    pub rules: crate::pipeline::RuleCounts,
    /// Seconds since the loop last refreshed this (filled in when read).
    pub loop_age_seconds: f64,
}

/// Alerts sent for one (direction, rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertCount {
    pub direction: String,
    pub rule: String,
    pub count: u64,
}

/// One feed, as metrics need it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FeedHealth {
    pub name: String,
    pub origin: Option<String>,
    pub loaded: bool,
    pub stale: bool,
    pub counts: FeedCounts,
    /// Age of the content (its own publication time, else the fetch time).
    pub age_seconds: Option<f64>,
    pub last_success_unix: Option<f64>,
    pub last_failure_unix: Option<f64>,
    pub last_error: Option<String>,
    pub failures_by_reason: BTreeMap<String, u64>,
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The feeds as loaded: configured ones (loaded or not) and, while no
/// configured feed has content, the embedded snapshot.
pub fn feed_health(manager: &FeedManager, set: &FeedSet, now: SystemTime) -> Vec<FeedHealth> {
    let mut out = Vec::new();
    if manager.needs_embedded() {
        for feed in set.feeds() {
            out.push(FeedHealth {
                name: feed.name.clone(),
                origin: Some(feed.origin.to_string()),
                loaded: true,
                stale: true,
                counts: feed.counts(),
                age_seconds: feed.age(now).map(|a| a.as_secs_f64()),
                ..FeedHealth::default()
            });
        }
    }
    for state in &manager.states {
        let feed = state.current.as_deref();
        let age = feed.and_then(|f| f.age(now));
        out.push(FeedHealth {
            name: state.config.name.clone(),
            origin: feed.map(|f| f.origin.to_string()),
            loaded: feed.is_some(),
            stale: feed.is_some_and(|f| f.is_stale(now, state.config.stale_after)),
            counts: feed.map(|f| f.counts()).unwrap_or_default(),
            age_seconds: age.map(|a| a.as_secs_f64()),
            last_success_unix: state.last_success.map(unix),
            last_failure_unix: state.last_failure.map(unix),
            last_error: state.last_error.clone(),
            failures_by_reason: state
                .failures_by_reason
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
        });
    }
    out
}

impl Snapshot {
    /// `/healthz`: the loop is alive. `Err` says why not.
    pub fn healthy(&self) -> Result<(), String> {
        if self.loop_age_seconds > LOOP_STALL.as_secs_f64() {
            return Err(format!(
                "the event loop has not run for {:.0} s",
                self.loop_age_seconds
            ));
        }
        Ok(())
    }

    /// `/readyz`: programs attached and a feed armed (not only the embedded
    /// snapshot, if the configuration says so). `Err` says why not.
    pub fn ready(&self) -> Result<(), String> {
        self.healthy()?;
        if !self.armed {
            return Err("the programs are not attached yet".into());
        }
        if self.prefixes == 0 && self.or_ports == 0 {
            return Err("no feed entry is armed".into());
        }
        if self.selftest_required && !self.selftest.as_ref().is_some_and(|t| t.passed) {
            return Err("the start-up self-test has not passed (yet)".into());
        }
        if self.embedded_only && !self.ready_on_embedded {
            return Err(
                "only the embedded snapshot is armed (no configured feed has content yet; [metrics] ready_on_embedded = false)"
                    .into(),
            );
        }
        Ok(())
    }
}

/// How a running sensor is doing, for a person or a Nagios-style check
/// (`torsensor status`: exit 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok = 0,
    Warning = 1,
    Critical = 2,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        })
    }
}

impl Snapshot {
    /// The overall level and every reason for it: critical when not healthy
    /// or not ready; a warning for a stale feed, a degraded hook plan, lost
    /// events or alerts, failing outputs, or only the embedded snapshot.
    pub fn verdict(&self) -> (Level, Vec<String>) {
        let mut reasons = Vec::new();
        if let Err(why) = self.ready() {
            return (Level::Critical, vec![why]);
        }
        if self.embedded_only {
            reasons.push("only the embedded snapshot is armed".to_owned());
        }
        for f in self
            .feeds
            .iter()
            .filter(|f| f.stale && f.origin.as_deref() != Some("embedded"))
        {
            reasons.push(format!("feed {} is stale", f.name));
        }
        if let Some(t) = self.selftest.as_ref().filter(|t| !t.passed) {
            reasons.push(format!("the last self-test failed: {}", t.detail));
        }
        if let Some(why) = self.hooks.as_ref().and_then(|p| p.degraded.as_ref()) {
            reasons.push(format!("degraded hook plan: {why}"));
        }
        if let Some(why) = &self.exec_unwatched {
            reasons.push(format!("program starts are not watched: {why}"));
        }
        if let Some(why) = &self.dns_unwatched {
            reasons.push(format!("DNS lookups are not watched: {why}"));
        }
        let lost = self.kernel.ringbuf_full
            + self.kernel.pending_full
            + self.kernel.exec_ringbuf_full
            + self.kernel.dns_ringbuf_full
            + self.kernel.gw_ringbuf_full;
        if lost > 0 {
            reasons.push(format!("{lost} events lost in the kernel"));
        }
        for c in &self.collectors {
            let lost = c.dropped + c.kernel_dropped;
            if lost > 0 {
                reasons.push(format!("collector {} lost {lost} datagrams", c.listener));
            }
        }
        for o in &self.outputs {
            let dropped = o.dropped_queue + o.dropped_spool + o.dropped_undeliverable;
            if dropped > 0 {
                reasons.push(format!("output {} dropped {dropped} alerts", o.name));
            }
            if o.spooled_events > 0 {
                reasons.push(format!(
                    "output {} has {} alerts waiting in its spool",
                    o.name, o.spooled_events
                ));
            }
        }
        let level = if reasons.is_empty() {
            Level::Ok
        } else {
            Level::Warning
        };
        (level, reasons)
    }
}

/// The snapshot and when the loop last refreshed it, shared between the
/// loop (writer) and the endpoint (reader).
#[derive(Debug)]
pub struct Telemetry {
    state: Mutex<(Snapshot, Instant)>,
}

impl Telemetry {
    pub fn new(snapshot: Snapshot) -> Arc<Self> {
        Arc::new(Telemetry {
            state: Mutex::new((snapshot, Instant::now())),
        })
    }

    /// Replaces the snapshot (the loop, once a second and on changes).
    pub fn publish(&self, snapshot: Snapshot) {
        *self.state.lock().expect("telemetry lock") = (snapshot, Instant::now());
    }

    /// Marks the loop alive without a new snapshot.
    pub fn heartbeat(&self) {
        self.state.lock().expect("telemetry lock").1 = Instant::now();
    }

    /// The snapshot, with its age.
    pub fn read(&self) -> Snapshot {
        let guard = self.state.lock().expect("telemetry lock");
        let mut snapshot = guard.0.clone();
        snapshot.loop_age_seconds = guard.1.elapsed().as_secs_f64();
        snapshot
    }

    /// A registry whose only collector reads this snapshot at each scrape.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Scrape(Arc::clone(self))));
        registry
    }
}

#[derive(Debug)]
struct Scrape(Arc<Telemetry>);

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family: name, help, type, and a value per label set.
fn family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        if matches!(kind, MetricType::Info) {
            // `<name>_info{labels} 1`.
            metric.encode_info(labels)?;
            continue;
        }
        let family = metric.encode_family(labels)?;
        let whole = value.fract() == 0.0 && value.abs() < 9.0e15;
        match kind {
            MetricType::Counter if whole => ConstCounter::new(*value as u64).encode(family)?,
            MetricType::Counter => ConstCounter::new(*value).encode(family)?,
            _ if whole => ConstGauge::new(*value as i64).encode(family)?,
            _ => ConstGauge::new(*value).encode(family)?,
        }
    }
    Ok(())
}

fn one(value: f64) -> Vec<(Labels, f64)> {
    vec![(Vec::new(), value)]
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.read();
        encode_daemon(&mut encoder, &s)?;
        encode_kernel(&mut encoder, &s)?;
        encode_alerts(&mut encoder, &s)?;
        encode_feeds(&mut encoder, &s)?;
        encode_rules(&mut encoder, &s)?;
        encode_outputs(&mut encoder, &s)
    }
}

fn encode_rules(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::Counter;
    let mut decisions = Vec::new();
    let mut exceptions = Vec::new();
    for (rule, c) in &s.rules.rules {
        let decided = [
            ("alerted", c.alerted),
            ("logged", c.logged),
            ("blocked", c.blocked),
            ("would_block", c.would_block),
        ];
        for (decision, n) in decided {
            let labels = vec![("rule", rule.clone()), ("decision", decision.to_owned())];
            decisions.push((labels, n as f64));
        }
        let excepted: u64 = c.excepted.values().sum();
        let labels = vec![("rule", rule.clone()), ("decision", "excepted".to_owned())];
        decisions.push((labels, excepted as f64));
        for (at, n) in &c.excepted {
            exceptions.push((
                vec![("rule", rule.clone()), ("exception", at.clone())],
                *n as f64,
            ));
        }
    }
    let help = "Hits each rule decided, by decision: alerted, logged (action log), blocked and would_block (action block), excepted.";
    family(e, "torsensor_rule_decisions", help, Counter, &decisions)?;
    let help = "Hits an exception (allowlist entry) kept from alerting, by rule and where the exception is written (file:line).";
    family(
        e,
        "torsensor_rule_exception_hits",
        help,
        Counter,
        &exceptions,
    )?;
    let help = "Hits no enabled rule took (nothing alerted).";
    let unmatched = one(s.rules.unmatched as f64);
    family(e, "torsensor_rule_unmatched", help, Counter, &unmatched)
}

fn encode_daemon(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::{Gauge, Info};
    let build = vec![(vec![("version", s.version.clone())], 1.0)];
    family(
        e,
        "torsensor_build",
        "Version of this sensor.",
        Info,
        &build,
    )?;
    if let Some(plan) = &s.hooks {
        let labels = vec![
            ("kernel", plan.kernel.clone()),
            ("inbound", plan.inbound.to_string()),
            ("degraded", plan.degraded.is_some().to_string()),
        ];
        let help = "The hooks in use (torsensor hooks; README, Requirements).";
        family(e, "torsensor_hook_plan", help, Info, &[(labels, 1.0)])?;
    }
    let ready = flag(s.ready().is_ok());
    family(
        e,
        "torsensor_ready",
        "1 when /readyz answers ready.",
        Gauge,
        &one(ready),
    )?;
    let help = "Seconds since the event loop last refreshed these metrics.";
    let age = one(s.loop_age_seconds);
    family(e, "torsensor_loop_age_seconds", help, Gauge, &age)
}

fn encode_kernel(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let k = &s.kernel;
    let by_dir = |egress: u64, ingress: u64| {
        vec![
            (vec![("direction", "egress".to_owned())], egress as f64),
            (vec![("direction", "ingress".to_owned())], ingress as f64),
        ]
    };
    let help = "TCP connections the kernel programs saw (connect, accept).";
    let seen = by_dir(k.connect_seen, k.inbound_seen);
    family(e, "torsensor_connections_seen", help, Counter, &seen)?;
    let help = "Connections whose peer is in a feed (the kernel's matches).";
    let hits = by_dir(k.connect_hit, k.inbound_hit);
    family(e, "torsensor_hits", help, Counter, &hits)?;
    let help = "Events lost in the kernel: ring buffer full, pending-connection map full.";
    let lost = vec![
        (
            vec![("reason", "ringbuf_full".to_owned())],
            k.ringbuf_full as f64,
        ),
        (
            vec![("reason", "pending_full".to_owned())],
            k.pending_full as f64,
        ),
        (
            vec![("reason", "exec_ringbuf_full".to_owned())],
            k.exec_ringbuf_full as f64,
        ),
        (
            vec![("reason", "dns_ringbuf_full".to_owned())],
            k.dns_ringbuf_full as f64,
        ),
        (
            vec![("reason", "gateway_ringbuf_full".to_owned())],
            k.gw_ringbuf_full as f64,
        ),
    ];
    family(e, "torsensor_events_lost", help, Counter, &lost)?;
    let help = "Events the kernel sent through the ring buffer.";
    let sent = one(k.events_sent as f64);
    family(e, "torsensor_kernel_events_sent", help, Counter, &sent)?;
    let help =
        "Outbound connections to a relay address on a port that is not its ORPort (not alerted).";
    let other = one(k.relay_other_port as f64);
    family(e, "torsensor_relay_other_port", help, Counter, &other)?;
    let help = "Inbound hits sent without a process (never used, or closed first).";
    let unattributed = one(k.inbound_unattributed as f64);
    family(
        e,
        "torsensor_inbound_unattributed",
        help,
        Counter,
        &unattributed,
    )?;
    let help = "Connections the blocking programs judged: blocked (outbound connects refused, inbound SYNs dropped, each retransmission counted), would_block (dry run), excepted (a block rule's exception held).";
    let block = vec![
        (
            vec![
                ("direction", "egress".to_owned()),
                ("result", "blocked".to_owned()),
            ],
            k.connect_blocked as f64,
        ),
        (
            vec![
                ("direction", "ingress".to_owned()),
                ("result", "blocked".to_owned()),
            ],
            k.inbound_blocked as f64,
        ),
        (
            vec![
                ("direction", "any".to_owned()),
                ("result", "would_block".to_owned()),
            ],
            k.would_block as f64,
        ),
        (
            vec![
                ("direction", "any".to_owned()),
                ("result", "excepted".to_owned()),
            ],
            k.block_excepted as f64,
        ),
    ];
    family(e, "torsensor_kernel_block", help, Counter, &block)?;
    encode_local(e, s)?;
    encode_gateway(e, s)?;
    encode_collector(e, s)?;
    let help = "Entries in the kernel maps: addresses and prefixes, OR address+port pairs.";
    let maps = vec![
        (vec![("map", "prefixes".to_owned())], s.prefixes as f64),
        (vec![("map", "or_ports".to_owned())], s.or_ports as f64),
    ];
    family(e, "torsensor_kernel_map_entries", help, Gauge, &maps)
}

/// Gateway mode's kernel counters (README, "Gateway mode").
fn encode_gateway(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let k = &s.kernel;
    if let Some((mode, interfaces)) = &s.gateway {
        let help = "Gateway mode is on: how its TC programs are attached (tcx or netlink); the value is the number of interfaces.";
        let info = vec![(vec![("attach", mode.clone())], *interfaces as f64)];
        family(e, "torsensor_gateway_info", help, Gauge, &info)?;
    }
    let help = "Gateway mode: TCP packets the TC programs looked at, new-flow SYNs matched, hits, packets counted into tracked flows.";
    let packets = vec![
        (vec![("kind", "seen".to_owned())], k.gw_packets as f64),
        (vec![("kind", "syn".to_owned())], k.gw_syn_seen as f64),
        (vec![("kind", "hit".to_owned())], k.gw_hit as f64),
        (
            vec![("kind", "tracked".to_owned())],
            k.gw_flow_packets as f64,
        ),
    ];
    family(e, "torsensor_gateway_packets", help, Counter, &packets)?;
    let help = "Gateway mode losses: hits whose flow was not tracked (flow table full: no summary), packets not parsed (IPv6 extension headers, later IPv4 fragments).";
    let lost = vec![
        (
            vec![("reason", "flows_full".to_owned())],
            k.gw_flows_full as f64,
        ),
        (
            vec![("reason", "unparsed".to_owned())],
            k.gw_unparsed as f64,
        ),
    ];
    family(e, "torsensor_gateway_lost", help, Counter, &lost)
}

/// The live flow collector's counters, per listener (README, "Flow
/// collector").
fn encode_collector(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    if s.collectors.is_empty() {
        return Ok(());
    }
    let per = |f: &dyn Fn(&super::collector::ListenerSnapshot) -> Vec<(&'static str, u64)>,
               key: &'static str| {
        s.collectors
            .iter()
            .flat_map(|l| {
                f(l).into_iter().map(move |(v, n)| {
                    (
                        vec![("listener", l.listener.clone()), (key, v.to_owned())],
                        n as f64,
                    )
                })
            })
            .collect::<Vec<_>>()
    };
    let help = "Collector: datagrams received and read (accepted), from exporters not allowed (refused), dropped because the queue was full (dropped) or by the kernel, the socket's receive buffer full (kernel_dropped).";
    let datagrams = per(
        &|l| {
            vec![
                ("accepted", l.stats.datagrams),
                ("refused", l.refused),
                ("dropped", l.dropped),
                ("kernel_dropped", l.kernel_dropped),
            ]
        },
        "result",
    );
    family(
        e,
        "torsensor_collector_datagrams",
        help,
        Counter,
        &datagrams,
    )?;
    let help = "Collector: export packets with an error (malformed), data sets whose template the exporter had not sent (unknown_template: their records are not read).";
    let errors = per(
        &|l| {
            vec![
                ("malformed", l.stats.malformed),
                ("unknown_template", l.stats.unknown_templates),
            ]
        },
        "reason",
    );
    family(e, "torsensor_collector_errors", help, Counter, &errors)?;
    let help = "Collector: flow records read, by what they were: a listed end (matched), none (unmatched), not TCP or UDP (other_protocol).";
    let records = per(
        &|l| {
            vec![
                ("matched", l.stats.matched),
                ("unmatched", l.stats.unmatched),
                ("other_protocol", l.stats.other_protocol),
            ]
        },
        "result",
    );
    family(e, "torsensor_collector_records", help, Counter, &records)?;
    let help = "Collector: matching flows judged against the [hunt] thresholds (substantial, below_threshold), and those judged early because max_flows were waiting (evicted, also counted in the first two).";
    let flows = per(
        &|l| {
            vec![
                ("substantial", l.stats.substantial),
                ("below_threshold", l.stats.below_threshold),
                ("evicted", l.stats.evicted),
            ]
        },
        "result",
    );
    family(e, "torsensor_collector_flows", help, Counter, &flows)?;
    let help = "Collector: exporters (and observation domains) whose templates are remembered.";
    let exporters: Vec<(Labels, f64)> = s
        .collectors
        .iter()
        .map(|l| (vec![("listener", l.listener.clone())], l.exporters as f64))
        .collect();
    family(e, "torsensor_collector_exporters", help, Gauge, &exporters)?;
    let help = "Collector: matching flow records waiting for their other direction.";
    let waiting = one(s.collector_waiting as f64);
    family(e, "torsensor_collector_waiting", help, Gauge, &waiting)
}

/// The local Tor signals' kernel counters (program starts, listeners).
fn encode_local(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::Counter;
    let k = &s.kernel;
    let help = "Programs started (sched_process_exec), all of them; only hits reach the daemon.";
    let seen = one(k.exec_seen as f64);
    family(e, "torsensor_programs_started", help, Counter, &seen)?;
    let help = "Program starts the kernel sent: a watched name, or TOR_PT_* in the environment.";
    let hits = vec![
        (vec![("reason", "name".to_owned())], k.exec_name_hit as f64),
        (
            vec![("reason", "environment".to_owned())],
            k.exec_env_hit as f64,
        ),
    ];
    family(e, "torsensor_program_hits", help, Counter, &hits)?;
    let help = "Program starts without a TOR_PT_* match whose environment was scanned only in part (larger than 2 KiB: the middle was not), or could not be read.";
    let env = vec![
        (
            vec![("reason", "partial".to_owned())],
            k.exec_env_partial as f64,
        ),
        (
            vec![("reason", "unreadable".to_owned())],
            k.exec_env_unreadable as f64,
        ),
    ];
    family(
        e,
        "torsensor_program_environment_unscanned",
        help,
        Counter,
        &env,
    )?;
    let help = "TCP sockets that started to listen, and those on a watched Tor port.";
    let listen = vec![
        (vec![("kind", "seen".to_owned())], k.listen_seen as f64),
        (vec![("kind", "hit".to_owned())], k.listen_hit as f64),
    ];
    family(e, "torsensor_listens", help, Counter, &listen)?;
    encode_dns(e, s)
}

/// DNS lookups for Tor: the kernel's counters and whether it is on.
fn encode_dns(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let k = &s.kernel;
    let help = "Packets to a DNS port the kernel looked into (seen), whose name had a watched suffix by hash (hit), sent to the daemon (sent), whose question it could not parse (unparsed: a compression pointer, a name cut short, a TCP segment without the message start), sent without a process (no_process: the socket was not recorded).";
    let kinds = vec![
        (vec![("kind", "seen".to_owned())], k.dns_seen as f64),
        (vec![("kind", "hit".to_owned())], k.dns_hit as f64),
        (vec![("kind", "sent".to_owned())], k.dns_sent as f64),
        (vec![("kind", "unparsed".to_owned())], k.dns_unparsed as f64),
        (
            vec![("kind", "no_process".to_owned())],
            k.dns_no_process as f64,
        ),
    ];
    family(e, "torsensor_dns_queries", help, Counter, &kinds)?;
    let help = "Sockets the sock_addr programs recorded (connect or sendmsg to a DNS port).";
    let recorded = one(k.dns_sock_recorded as f64);
    family(
        e,
        "torsensor_dns_sockets_recorded",
        help,
        Counter,
        &recorded,
    )?;
    let help = "1 for the state of [dns] at start: off, attached, or failed (enabled, but the kernel or cgroup refused the programs).";
    let hook = vec![(vec![("state", s.dns_hook.clone())], 1.0)];
    family(e, "torsensor_dns_hook", help, Gauge, &hook)
}

fn encode_alerts(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::Counter;
    let alerts: Vec<(Labels, f64)> = s
        .alerts
        .iter()
        .map(|a| {
            let labels = vec![("direction", a.direction.clone()), ("rule", a.rule.clone())];
            (labels, a.count as f64)
        })
        .collect();
    let help = "Alerts sent to the outputs (first alerts and summaries), by direction and rule.";
    family(e, "torsensor_alerts", help, Counter, &alerts)?;
    let help = "Aggregated summaries among the alerts.";
    let summaries = one(s.summaries as f64);
    family(e, "torsensor_alert_summaries", help, Counter, &summaries)?;
    let help = "Repeated connections reported inside summaries instead of one alert each.";
    let repeats = one(s.summarized_connections as f64);
    family(
        e,
        "torsensor_aggregated_connections",
        help,
        Counter,
        &repeats,
    )?;
    let help = "Ring-buffer records that could not be decoded.";
    let errors = one(s.decode_errors as f64);
    family(e, "torsensor_decode_errors", help, Counter, &errors)
}

fn encode_feeds(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let feed = |f: &FeedHealth| vec![("feed", f.name.clone())];
    let mut entries = Vec::new();
    for f in &s.feeds {
        let c = &f.counts;
        for (role, family_, n) in [
            ("exit", "ipv4", c.exit_v4),
            ("exit", "ipv6", c.exit_v6),
            ("relay", "ipv4", c.relay_v4),
            ("relay", "ipv6", c.relay_v6),
        ] {
            let mut labels = feed(f);
            labels.push(("role", role.to_owned()));
            labels.push(("family", family_.to_owned()));
            entries.push((labels, n as f64));
        }
    }
    let help = "Addresses a feed lists, by role (exit, relay OR address) and family.";
    family(e, "torsensor_feed_entries", help, Gauge, &entries)?;
    let per_feed = |value: &dyn Fn(&FeedHealth) -> Option<f64>| -> Vec<(Labels, f64)> {
        s.feeds
            .iter()
            .filter_map(|f| value(f).map(|v| (feed(f), v)))
            .collect()
    };
    let help = "Relay OR address+port pairs a feed lists.";
    let or = per_feed(&|f| Some(f.counts.or_ports as f64));
    family(e, "torsensor_feed_or_ports", help, Gauge, &or)?;
    let help = "Age of a feed's content: from its own publication time, else the fetch time.";
    let age = per_feed(&|f| f.age_seconds);
    family(e, "torsensor_feed_age_seconds", help, Gauge, &age)?;
    let help = "1 if a feed is older than its stale_after or a consensus past its valid-until (the embedded snapshot always is).";
    let stale = per_feed(&|f| Some(flag(f.stale)));
    family(e, "torsensor_feed_stale", help, Gauge, &stale)?;
    let help = "When a refresh of the feed last succeeded (accepted or not modified).";
    let ok = per_feed(&|f| f.last_success_unix);
    let name = "torsensor_feed_last_success_timestamp_seconds";
    family(e, name, help, Gauge, &ok)?;
    let help = "When a refresh of the feed last failed or was rejected.";
    let failed = per_feed(&|f| f.last_failure_unix);
    let name = "torsensor_feed_last_failure_timestamp_seconds";
    family(e, name, help, Gauge, &failed)?;
    let mut failures = Vec::new();
    for f in &s.feeds {
        for (reason, n) in &f.failures_by_reason {
            let mut labels = feed(f);
            labels.push(("reason", reason.clone()));
            failures.push((labels, *n as f64));
        }
    }
    let help = "Failed or rejected feed refreshes, by reason.";
    family(
        e,
        "torsensor_feed_refresh_failures",
        help,
        Counter,
        &failures,
    )?;
    let help = "1 while only the embedded snapshot is armed (no configured feed has content).";
    let embedded = one(flag(s.embedded_only));
    family(e, "torsensor_feed_embedded_only", help, Gauge, &embedded)
}

fn encode_outputs(e: &mut DescriptorEncoder, s: &Snapshot) -> Result<(), std::fmt::Error> {
    use MetricType::{Counter, Gauge};
    let per = |value: &dyn Fn(&SinkStats) -> u64| -> Vec<(Labels, f64)> {
        s.outputs
            .iter()
            .map(|o| (vec![("output", o.name.clone())], value(o) as f64))
            .collect()
    };
    let help = "Alerts an output's receiver acknowledged (local outputs: written and flushed).";
    let delivered = per(&|o| o.delivered);
    family(e, "torsensor_output_delivered", help, Counter, &delivered)?;
    let help = "Failed delivery attempts (each retry counts).";
    let failed = per(&|o| o.failed);
    family(e, "torsensor_output_failed", help, Counter, &failed)?;
    let mut dropped = Vec::new();
    for o in &s.outputs {
        for (reason, n) in [
            ("queue_full", o.dropped_queue),
            ("spool_full", o.dropped_spool),
            ("undeliverable", o.dropped_undeliverable),
        ] {
            let labels = vec![("output", o.name.clone()), ("reason", reason.to_owned())];
            dropped.push((labels, n as f64));
        }
    }
    let help = "Alerts an output lost: memory queue full, spool full, refused for good.";
    family(e, "torsensor_output_dropped", help, Counter, &dropped)?;
    let help = "Alerts waiting in an output's memory queue.";
    let queued = per(&|o| o.queued);
    family(e, "torsensor_output_queue_depth", help, Gauge, &queued)?;
    let help = "Alerts waiting in an output's on-disk spool.";
    let spooled = per(&|o| o.spooled_events);
    family(e, "torsensor_output_spool_events", help, Gauge, &spooled)?;
    let help = "Size of an output's on-disk spool.";
    let bytes = per(&|o| o.spooled_bytes);
    family(e, "torsensor_output_spool_bytes", help, Gauge, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(snapshot: Snapshot) -> String {
        let telemetry = Telemetry::new(snapshot);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &telemetry.registry()).unwrap();
        out
    }

    #[test]
    fn names_follow_the_conventions_and_values_come_from_the_snapshot() {
        let snapshot = Snapshot {
            version: "0.1.0".into(),
            armed: true,
            prefixes: 3,
            kernel: KernelCounters {
                connect_seen: 7,
                ringbuf_full: 2,
                ..Default::default()
            },
            alerts: vec![AlertCount {
                direction: "egress".into(),
                rule: "tor-relay-outbound".into(),
                count: 4,
            }],
            feeds: vec![FeedHealth {
                name: "tor-exits".into(),
                loaded: true,
                counts: FeedCounts {
                    exit_v4: 1174,
                    ..Default::default()
                },
                failures_by_reason: BTreeMap::from([("timeout".to_owned(), 2)]),
                ..Default::default()
            }],
            rules: crate::pipeline::RuleCounts {
                rules: BTreeMap::from([(
                    "TORSENSOR-001".to_owned(),
                    crate::pipeline::RuleCount {
                        alerted: 4,
                        logged: 0,
                        blocked: 0,
                        would_block: 0,
                        excepted: BTreeMap::from([(
                            "/etc/torsensor/rules.d/a.toml:4".to_owned(),
                            3,
                        )]),
                    },
                )]),
                unmatched: 2,
                exec_unconfirmed: 0,
                dns_unconfirmed: 0,
            },
            outputs: vec![SinkStats {
                name: "siem".into(),
                dropped_queue: 5,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = text(snapshot);
        for line in [
            "torsensor_build_info{version=\"0.1.0\"} 1",
            "torsensor_connections_seen_total{direction=\"egress\"} 7",
            "torsensor_events_lost_total{reason=\"ringbuf_full\"} 2",
            "torsensor_alerts_total{direction=\"egress\",rule=\"tor-relay-outbound\"} 4",
            "torsensor_feed_entries{feed=\"tor-exits\",role=\"exit\",family=\"ipv4\"} 1174",
            "torsensor_feed_refresh_failures_total{feed=\"tor-exits\",reason=\"timeout\"} 2",
            "torsensor_output_dropped_total{output=\"siem\",reason=\"queue_full\"} 5",
            "torsensor_ready 1",
            "torsensor_rule_decisions_total{rule=\"TORSENSOR-001\",decision=\"excepted\"} 3",
            "torsensor_rule_exception_hits_total{rule=\"TORSENSOR-001\",exception=\"/etc/torsensor/rules.d/a.toml:4\"} 3",
            "torsensor_rule_unmatched_total 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("torsensor_"), "{line}");
        }
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            if line.ends_with(" counter") {
                // The encoder appends _total to counter samples.
                assert!(!line.contains("_total "), "{line}");
            }
        }
    }

    #[test]
    fn the_verdict_names_every_reason() {
        let mut s = Snapshot {
            armed: true,
            prefixes: 10,
            ..Default::default()
        };
        assert_eq!(s.verdict(), (Level::Ok, vec![]));
        s.kernel.ringbuf_full = 3;
        s.outputs.push(SinkStats {
            name: "siem".into(),
            spooled_events: 9,
            ..Default::default()
        });
        s.collectors
            .push(super::super::collector::ListenerSnapshot {
                listener: "udp://0.0.0.0:2055".into(),
                dropped: 2,
                kernel_dropped: 5,
                refused: 100,
                ..Default::default()
            });
        let (level, reasons) = s.verdict();
        assert_eq!(level, Level::Warning);
        assert_eq!(
            reasons,
            [
                "3 events lost in the kernel",
                "collector udp://0.0.0.0:2055 lost 7 datagrams",
                "output siem has 9 alerts waiting in its spool"
            ]
        );
        s.armed = false;
        assert_eq!(s.verdict().0, Level::Critical);
    }

    #[test]
    fn readiness_says_why_not() {
        let mut s = Snapshot {
            armed: true,
            prefixes: 10,
            ready_on_embedded: true,
            embedded_only: true,
            ..Default::default()
        };
        assert_eq!(s.ready(), Ok(()));
        s.ready_on_embedded = false;
        assert!(s.ready().unwrap_err().contains("embedded snapshot"));
        s.embedded_only = false;
        s.armed = false;
        assert!(s.ready().unwrap_err().contains("not attached"));
        s.armed = true;
        s.loop_age_seconds = 60.0;
        assert!(s.healthy().unwrap_err().contains("60 s"));
        assert!(s.ready().is_err());
    }
}
