//! The pipeline: one kernel event in, the alerts to send out.
//!
//! `ConnEvent` -> [`Connection`] -> process and container (a
//! [`ProcessSource`]) -> feed matches -> [`Alert`] -> aggregation. It does
//! no I/O of its own: the process source is injected ([`HostSource`] reads
//! the host's `/proc` and cgroups; tests and [`replay`] pass recorded
//! answers), and so is the time ([`Now`]). Rendering the alerts per output
//! format and sending them is the caller's job ([`crate::daemon`]).
//!
//! May use [`crate::alert`] and everything below it; nothing below may
//! import from here.

mod local;
pub mod replay;

use std::time::{Instant, SystemTime};

use sensor_common::{ConnEvent, FLAG_LISTEN};

use crate::alert::aggregate::Aggregator;
use crate::alert::rules::{Action, Decision, Rules};
use crate::alert::{Alert, AlertInput, SensorIdentity, build, roles_of};
use crate::enrich::container::{ContainerCache, ContainerInfo};
use crate::enrich::kubelet::KubeletLogs;
use crate::enrich::{ProcessCache, ProcessInfo};
use crate::feed::{FeedMatch, FeedSet};
use crate::kernel::event::{BootClock, Connection, EventError, KernelProcess};

/// Where the pipeline learns about the process the kernel saw.
pub trait ProcessSource {
    /// What is known of the process: at least the kernel's own fields
    /// ([`ProcessInfo::from_kernel`]).
    fn process(&mut self, p: &KernelProcess) -> ProcessInfo;
    /// Its container, if it runs in one.
    fn container(&mut self, p: &KernelProcess) -> Option<ContainerInfo>;
    /// Like [`ProcessSource::process`], for a process that has just
    /// started a new program: nothing cached from before the exec.
    fn started(&mut self, p: &KernelProcess) -> ProcessInfo {
        self.process(p)
    }
    /// The `NAME=value` bindings of its environment whose name starts
    /// with `prefix` (nothing else), if it can be read.
    fn environment(&mut self, _pid: u32, _prefix: &str) -> Option<Vec<String>> {
        None
    }
}

/// The host's `/proc` and cgroup2 hierarchy, through bounded caches.
pub struct HostSource {
    pub processes: ProcessCache,
    pub containers: ContainerCache,
    pub kubelet: KubeletLogs,
}

impl HostSource {
    /// This host's `/proc` and cgroups, and the kubelet's default log
    /// directories.
    pub fn new() -> Self {
        Self::with_kubelet(KubeletLogs::host())
    }

    pub fn with_kubelet(kubelet: KubeletLogs) -> Self {
        HostSource {
            processes: ProcessCache::host(),
            containers: ContainerCache::host(),
            kubelet,
        }
    }
}

impl Default for HostSource {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessSource for HostSource {
    fn process(&mut self, p: &KernelProcess) -> ProcessInfo {
        self.processes.lookup(p)
    }

    fn container(&mut self, p: &KernelProcess) -> Option<ContainerInfo> {
        let mut info = self.containers.lookup(p.tgid, p.cgroup_id)?;
        self.kubelet.annotate(&mut info);
        Some(info)
    }

    fn started(&mut self, p: &KernelProcess) -> ProcessInfo {
        self.processes.forget(p.tgid);
        self.processes.lookup(p)
    }

    fn environment(&mut self, pid: u32, prefix: &str) -> Option<Vec<String>> {
        crate::local::environ::read(std::path::Path::new("/proc"), pid, prefix)
    }
}

/// The kernel's fields only, no container: what a replay knows without a
/// recording of the processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelOnly;

impl ProcessSource for KernelOnly {
    fn process(&mut self, p: &KernelProcess) -> ProcessInfo {
        ProcessInfo::from_kernel(p)
    }

    fn container(&mut self, _: &KernelProcess) -> Option<ContainerInfo> {
        None
    }
}

/// When an event is handled: the wall clock (`event.created`) and the
/// monotonic clock (aggregation windows).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub wall: SystemTime,
    pub mono: Instant,
}

impl Now {
    pub fn current() -> Self {
        Now {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }
}

/// Turns kernel events into alerts.
pub struct Pipeline<S = HostSource> {
    feeds: FeedSet,
    /// The set before the last switch: an event the kernel matched just
    /// before a flip is explained with the set it matched against.
    previous: Option<FeedSet>,
    rules: Rules,
    sensor: SensorIdentity,
    clock: BootClock,
    source: S,
    aggregator: Aggregator,
    counts: RuleCounts,
    /// What the local signals watch (confirms exec hits, names ports).
    local: crate::local::LocalWatch,
}

/// What the rules decided, since start: per rule, hits alerted and logged,
/// and per exception (in the rule's order) hits excepted; hits no enabled
/// rule took.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleCounts {
    pub rules: std::collections::BTreeMap<String, RuleCount>,
    pub unmatched: u64,
    /// Program starts the kernel matched by their 15-byte command name
    /// whose whole name (or directory) is not a watched program's: not
    /// alerted.
    #[serde(default)]
    pub exec_unconfirmed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleCount {
    pub alerted: u64,
    pub logged: u64,
    /// Hits excepted, per exception (keyed by where it is written,
    /// `file:line`).
    pub excepted: std::collections::BTreeMap<String, u64>,
}

impl<S: ProcessSource> Pipeline<S> {
    pub fn new(
        feeds: FeedSet,
        rules: Rules,
        sensor: SensorIdentity,
        clock: BootClock,
        source: S,
        aggregator: Aggregator,
    ) -> Self {
        Pipeline {
            feeds,
            previous: None,
            rules,
            sensor,
            clock,
            source,
            aggregator,
            counts: RuleCounts::default(),
            local: crate::local::LocalWatch::shipped(),
        }
    }

    /// Replaces what the local signals watch (the configuration's ports).
    pub fn set_local(&mut self, local: crate::local::LocalWatch) {
        self.local = local;
    }

    /// The rules in force.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Replaces the rules (SIGHUP); counts of rules that remain are kept.
    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// What the rules decided since start.
    pub fn rule_counts(&self) -> &RuleCounts {
        &self.counts
    }

    /// The clock that turns the kernel's boot times into wall-clock times.
    pub fn clock(&self) -> BootClock {
        self.clock
    }

    /// The feed set in use.
    pub fn feeds(&self) -> &FeedSet {
        &self.feeds
    }

    /// Switches to `set` (after the kernel maps were switched); the set in
    /// use until now still explains events matched against it.
    pub fn switch_feeds(&mut self, set: FeedSet) {
        self.previous = Some(std::mem::replace(&mut self.feeds, set));
    }

    /// Whether repeats are aggregated (then [`Pipeline::due`] has work).
    pub fn aggregating(&self) -> bool {
        self.aggregator.enabled()
    }

    /// The alert for one event, before aggregation. `incomplete`: the
    /// connection was still pending (shutdown, or unanswered for long).
    pub fn alert(
        &mut self,
        ev: &ConnEvent,
        incomplete: bool,
        created: SystemTime,
    ) -> Result<Alert, EventError> {
        if ev.flags & FLAG_LISTEN != 0 {
            return self.listen_alert(ev, created);
        }
        let mut conn = Connection::from_event(ev, &self.clock)?;
        conn.incomplete = incomplete;
        let process = conn.process.as_ref().map(|p| self.source.process(p));
        let container = conn.process.as_ref().and_then(|p| self.source.container(p));
        let matches = self.explain(&conn);
        Ok(build(&AlertInput {
            conn: &conn,
            process: process.as_ref(),
            container: container.as_ref(),
            rule: self.rules.for_match(conn.direction, &roles_of(&matches)),
            matches: &matches,
            sensor: &self.sensor,
            created,
        }))
    }

    /// What to send for one event: its alert, unless aggregation holds it
    /// back as a repeat, and any summary it forces out. An audit event is
    /// sent as it is.
    pub fn handle(
        &mut self,
        ev: &ConnEvent,
        incomplete: bool,
        now: Now,
    ) -> Result<Vec<Alert>, EventError> {
        let alert = self.alert(ev, incomplete, now.wall)?;
        if alert.torsensor.audit {
            return Ok(vec![alert]);
        }
        Ok(self.decide(alert, now))
    }

    /// What the rules make of an alert: sent (through aggregation),
    /// logged, excepted or unmatched, and counted.
    fn decide(&mut self, mut alert: Alert, now: Now) -> Vec<Alert> {
        match self.rules.decide(&alert, now.wall) {
            Decision::Rule(rule) => {
                let count = self.counts.rules.entry(rule.id.clone()).or_default();
                alert.apply_rule(rule);
                match rule.action {
                    Action::Alert => {
                        count.alerted += 1;
                        self.aggregator.offer(alert, now.mono)
                    }
                    Action::Log => {
                        count.logged += 1;
                        tracing::info!(
                            rule = %rule.id,
                            "rule {} (action log): {}",
                            rule.id,
                            alert.summary()
                        );
                        Vec::new()
                    }
                }
            }
            Decision::Excepted(rule, i) => {
                let count = self.counts.rules.entry(rule.id.clone()).or_default();
                *count.excepted.entry(rule.except[i].at.clone()).or_default() += 1;
                Vec::new()
            }
            Decision::Unmatched => {
                self.counts.unmatched += 1;
                Vec::new()
            }
        }
    }

    /// Summaries of the aggregation windows that have ended.
    pub fn due(&mut self, now: Instant) -> Vec<Alert> {
        self.aggregator.due(now)
    }

    /// Every pending summary (shutdown).
    pub fn flush(&mut self) -> Vec<Alert> {
        self.aggregator.flush()
    }

    /// What matched, from the set the kernel used (current, or the one
    /// before the last switch).
    fn explain(&self, conn: &Connection) -> Vec<FeedMatch<'_>> {
        if conn.audit {
            return Vec::new();
        }
        let (ip, port) = (conn.remote.ip(), conn.remote.port());
        let current = self.feeds.explain(ip, port, conn.matched);
        if !current.is_empty() {
            return current;
        }
        match &self.previous {
            Some(previous) => previous.explain(ip, port, conn.matched),
            None => current,
        }
    }
}
