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

mod collector;
mod dns;
mod gateway;
mod local;
pub mod replay;

use std::time::{Instant, SystemTime};

use sensor_common::{ConnEvent, FLAG_LISTEN};

use crate::alert::aggregate::Aggregator;
use crate::alert::model::{BlockDetails, BlockResult};
use crate::alert::rules::block::BlockMode;
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
    /// Its cgroup v2 path, when known (after [`ProcessSource::container`]).
    fn cgroup_path(&mut self, _p: &KernelProcess) -> Option<String> {
        None
    }
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

    fn cgroup_path(&mut self, p: &KernelProcess) -> Option<String> {
        self.containers.path_of(p.cgroup_id).map(str::to_owned)
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
    /// `[blocking] mode`: what a hit a block rule decides is reported as.
    block_mode: BlockMode,
    /// What the local signals watch (confirms exec hits, names ports).
    local: crate::local::LocalWatch,
    /// The watched DNS names (confirms DNS hits, names resolvers).
    dns: crate::dns::DnsWatch,
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
    /// DNS queries the kernel matched by hash whose name is not a watched
    /// one (a hash collision): not alerted.
    #[serde(default)]
    pub dns_unconfirmed: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuleCount {
    pub alerted: u64,
    pub logged: u64,
    /// Connections the kernel refused under this rule (`action = "block"`).
    #[serde(default)]
    pub blocked: u64,
    /// Hits this block rule would have refused (dry run).
    #[serde(default)]
    pub would_block: u64,
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
            block_mode: BlockMode::Off,
            local: crate::local::LocalWatch::shipped(),
            dns: crate::dns::DnsWatch::shipped(),
        }
    }

    /// Replaces the watched DNS names (`[dns] names`).
    pub fn set_dns(&mut self, dns: crate::dns::DnsWatch) {
        self.dns = dns;
    }

    /// Sets the blocking mode in force (start, reload).
    pub fn set_block_mode(&mut self, mode: BlockMode) {
        self.block_mode = mode;
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
        let cgroup_path = match (&conn.process, &container) {
            (Some(p), None) => self.source.cgroup_path(p),
            _ => None,
        };
        let matches = self.explain(&conn);
        let mut alert = build(&AlertInput {
            conn: &conn,
            process: process.as_ref(),
            container: container.as_ref(),
            rule: self.rules.for_match(conn.direction, &roles_of(&matches)),
            matches: &matches,
            sensor: &self.sensor,
            created,
        });
        alert.torsensor.cgroup_path = cgroup_path;
        Ok(alert)
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
        // A connection the kernel refused is always reported: blocking
        // without a trace would be worse than any duplicate.
        let blocked = alert.torsensor.block.is_some();
        match self.rules.decide(&alert, now.wall) {
            Decision::Rule(rule) => {
                let count = self.counts.rules.entry(rule.id.clone()).or_default();
                alert.apply_rule(rule);
                match rule.action {
                    Action::Log if !blocked => {
                        count.logged += 1;
                        tracing::info!(
                            rule = %rule.id,
                            "rule {} (action log): {}",
                            rule.id,
                            alert.summary()
                        );
                        return Vec::new();
                    }
                    Action::Block if !blocked && self.block_mode == BlockMode::Off => {
                        // Blocking off: the rule alerts like any other.
                        count.alerted += 1;
                    }
                    Action::Block => {
                        let result = if blocked {
                            count.blocked += 1;
                            BlockResult::Blocked
                        } else if self.block_mode == BlockMode::DryRun {
                            count.would_block += 1;
                            BlockResult::WouldBlock
                        } else {
                            count.alerted += 1;
                            BlockResult::NotBlocked
                        };
                        alert.torsensor.block = Some(BlockDetails {
                            mode: self.block_mode,
                            result,
                        });
                        if result == BlockResult::WouldBlock {
                            alert.event.action.push_str("-would-block");
                        }
                    }
                    _ => count.alerted += 1,
                }
                self.aggregator.offer(alert, now.mono)
            }
            Decision::Excepted(rule, i) if !blocked => {
                let count = self.counts.rules.entry(rule.id.clone()).or_default();
                *count.excepted.entry(rule.except[i].at.clone()).or_default() += 1;
                Vec::new()
            }
            Decision::Unmatched if !blocked => {
                self.counts.unmatched += 1;
                Vec::new()
            }
            // Refused by the kernel, yet no block rule holds for it in
            // userspace now (the rules changed since): reported as built.
            _ => self.aggregator.offer(alert, now.mono),
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

    /// The alert, before the rules, for a flow seen without a process (a
    /// router's: gateway mode, the collector): `local` is the inside or
    /// unlisted end, `remote` the listed one, `signal`'s first rule.
    fn processless_alert(
        &self,
        (time, direction): (std::time::SystemTime, crate::net::Direction),
        (local, remote): (std::net::SocketAddr, std::net::SocketAddr),
        matched: sensor_common::MatchInfo,
        signal: crate::alert::model::Signal,
        created: SystemTime,
    ) -> Alert {
        let conn = Connection {
            time,
            direction,
            local,
            remote,
            v4_mapped: false,
            failed: false,
            audit: false,
            incomplete: false,
            blocked: false,
            matched,
            process: None,
        };
        let matches = self.explain(&conn);
        build(&AlertInput {
            conn: &conn,
            process: None,
            container: None,
            rule: self.rules.for_signal(signal),
            matches: &matches,
            sensor: &self.sensor,
            created,
        })
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
