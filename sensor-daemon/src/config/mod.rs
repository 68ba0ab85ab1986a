//! The sensor's configuration: one struct read from a TOML file, overridden
//! by flags and environment variables ([`flags`]), every default documented
//! here once, validated once into a [`Config`] before anything touches the
//! kernel or the network. The daemon only ever runs a [`Config`].
//!
//! Sits above the layers it configures: it holds their settings
//! ([`FeedConfig`], [`OutputConfig`], [`InboundChoice`]) and hands each
//! layer its part ([`SensorConfig::feed_settings`],
//! [`SensorConfig::load_options`]); none of them imports from here.
//!
//! ```toml
//! state_dir = "/var/lib/torsensor"
//!
//! [[feed]]
//! name = "tor-exits"
//! location = "https://check.torproject.org/exit-addresses"
//!
//! [[feed]]
//! name = "tor-relays"
//! location = "https://onionoo.torproject.org/details?type=relay&running=true&fields=fingerprint,nickname,or_addresses,exit_addresses,flags,last_seen"
//! refresh = "1h"
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::alert::rules::block::{BlockErrno, BlockMode};
use crate::feed::config::{FeedConfig, FeedConfigError, FeedSettings};
use crate::kernel::{InboundChoice, LoadOptions};
use crate::sink::OutputConfig;
use crate::time::deserialize_duration;
use sensor_common::MAX_FEEDS;

pub mod flags;

pub use flags::{ConfigFlags, RunFlags};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config file {path}, line {line}, column {column}: {message}")]
    Toml {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error(
        "ring_buffer_bytes = {0}: must be a power of two between 4096 (one page) and 268435456 (256 MiB)"
    )]
    RingBufferSize(u32),
    #[error("{0} feeds given: at most {MAX_FEEDS} can be loaded at once")]
    TooManyFeeds(usize),
    #[error("health_interval must be at least 1 second")]
    HealthInterval,
    #[error("inbound_wait must be between 100ms and 60s")]
    InboundWait,
    #[error("max_entries = {0}: must be between 1024 and 4194304")]
    MaxEntries(u32),
    #[error("aggregation_max_groups = {0}: must be between 100 and 1000000")]
    AggregationGroups(usize),
    #[error("blocking.cgroup = {0:?}: must be an absolute path (a cgroup v2 directory)")]
    BlockingCgroup(PathBuf),
    #[error("dns.ports = {0:?}: give 1 to 8 ports, none of them 0")]
    DnsPorts(Vec<u16>),
    #[error("dns.cgroup = {0:?}: must be an absolute path (a cgroup v2 directory)")]
    DnsCgroup(PathBuf),
    #[error("shutdown_deadline must be at most 60s")]
    ShutdownDeadline,
    /// A `[hunt]` value out of range (the message names the key).
    #[error("{0}")]
    Hunt(String),
    #[error("[gateway] {0}")]
    Gateway(String),
    /// A `[[collector]]` value (the message names the listener and key).
    #[error("{0}")]
    Collector(String),
    #[error("{0}")]
    Output(String),
    #[error(transparent)]
    Feed(#[from] FeedConfigError),
}

/// Everything the sensor needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SensorConfig {
    /// Where the last-known-good feeds (`feeds/`), `status.json` and the
    /// outputs' spools (`spool/`) live. Created 0750 if missing; it and every
    /// directory below it must be owned by the sensor's user, not writable
    /// by group or others and not a link (see `statedir`), else refused.
    /// Default: `/var/lib/torsensor` (systemd `StateDirectory=torsensor`).
    pub state_dir: PathBuf,
    /// Local Tor SOCKS ports (`["127.0.0.1:9050", "127.0.0.1:9150",
    /// "[::1]:9050", "[::1]:9150"]` for tor and Tor Browser): a connection
    /// to one of them is Tor use no list of the network shows (rule
    /// TORSENSOR-004, role `socks`), armed as the built-in feed
    /// `tor-socks-ports`. Default: none, because their addresses in the
    /// kernel's prefix trie cost every connection on loopback two more map
    /// lookups (README, Performance); also `--tor-socks-port`.
    pub tor_socks_ports: Vec<std::net::SocketAddr>,
    /// More TCP ports whose listeners are Tor's (rule TORSENSOR-006), on
    /// top of the shipped ones in `rules/tor-local.toml` (9050, 9051,
    /// 9150, 9151: tor's and Tor Browser's SOCKS and control ports), e.g.
    /// a `SocksPort` your torrc sets. Checked in the kernel only when a
    /// socket starts to listen. Default: none.
    pub tor_listen_ports: Vec<u16>,
    /// Look for `TOR_PT_*` variables in the environment of every program
    /// started (rule TORSENSOR-005: a pluggable transport, whatever its
    /// name). A bounded scan in the kernel, a few microseconds per exec;
    /// false leaves only the name check. Default: true.
    pub exec_environment_scan: bool,
    /// The operator's rule files (`*.toml`, read in name order after the
    /// shipped rules; see `alert/rules` and the README, "Tuning"). A
    /// directory that does not exist adds nothing. Default:
    /// `/etc/torsensor/rules.d`.
    pub rules_dir: PathBuf,
    /// Keep feed entries in reserved ranges (loopback, private,
    /// documentation). Default: false (dropped with one warning per feed).
    pub allow_reserved: bool,
    /// Report every TCP connection, not only feed matches. Default: false.
    pub audit_all: bool,
    /// `host.name` in alerts. Default: none, which means the kernel's host
    /// name; in a container that is the pod's or the container's, so the
    /// DaemonSet sets the node's (`TORSENSOR_HOST_NAME` from `spec.nodeName`).
    pub host_name: Option<String>,
    /// Kernel-to-daemon ring buffer size. Default: 4 MiB (about 40,000
    /// events of backlog before a loss, which is counted and reported).
    pub ring_buffer_bytes: u32,
    /// Forward kernel-side debug logs (aya-log) to stderr. Default: false.
    pub kernel_log: bool,
    /// Write the final counters (JSON) here at exit. Default: none.
    pub stats_file: Option<PathBuf>,
    /// How often kernel counters (losses) and feed ages are checked.
    /// Default: 5 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub health_interval: Duration,
    /// Alerts for the same (direction, process, peer, service port) within
    /// this window are summarised: the first at once, the repeats as one
    /// alert with `torsensor.count` when the window ends. "0s" turns
    /// aggregation off. Default: 60 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub aggregation_window: Duration,
    /// Most (direction, process, peer, port) groups aggregated at once:
    /// when that many are open, the oldest is closed early (its summary
    /// sent) to make room, so memory stays bounded and nothing is dropped.
    /// Between 100 and 1,000,000. Default: 10,000.
    pub aggregation_max_groups: usize,
    /// At shutdown, how long remote outputs keep delivering before what is
    /// left goes to their spool for the next start (local outputs are
    /// always flushed). At most 60 s; keep it under systemd's
    /// `TimeoutStopSec`. Default: 3 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub shutdown_deadline: Duration,
    /// How long an inbound hit waits for a process to read, write or close
    /// the accepted connection (which names that process in the alert)
    /// before it is sent without one: a connection never accepted, or
    /// accepted and left idle. Between 100ms and 60s. Default: 5 s.
    #[serde(deserialize_with = "deserialize_duration")]
    pub inbound_wait: Duration,
    /// Which hooks name the process of an inbound connection: `auto` (the
    /// best that loads on this kernel: sock-length, fentry, kprobe,
    /// rcv-space, close-only, in that order) or one of them by name, which
    /// then must work or the start fails. See README, "Requirements".
    /// Default: auto.
    pub inbound_hooks: InboundChoice,
    /// Capacity of each kernel map of Tor addresses (IPv4 prefixes, IPv6
    /// prefixes, OR address+port pairs), per copy. Default: 262,144 (the
    /// whole Tor network is about 10,000 addresses).
    pub max_entries: u32,
    /// Feeds (`[[feed]]` tables). Default: none, which means the embedded
    /// snapshot (Tor exit list and relay list of 2024-03-12), no network.
    #[serde(rename = "feed")]
    pub feeds: Vec<FeedConfig>,
    /// Run the self-test once after arming (a canary address through the
    /// kernel, the ring buffer and the pipeline; README, "Self-test"): the
    /// sensor is not ready until it passed, and exits if it fails. Also
    /// `--selftest` / `TORSENSOR_SELFTEST`. Default: false.
    pub selftest: bool,
    /// The metrics and health endpoint (`[metrics]`).
    pub metrics: MetricsConfig,
    /// Where pod and container names come from (`[kubernetes]`).
    pub kubernetes: KubernetesConfig,
    /// Opt-in blocking (`[blocking]`): what rules with `action = "block"`
    /// do. Off by default.
    pub blocking: BlockingConfig,
    /// DNS lookups for Tor (`[dns]`): queries for `.onion` names and Tor
    /// Project domains, with the process that sent them. Off by default.
    pub dns: DnsConfig,
    /// Gateway mode (`[gateway]`): watch the flows a router forwards.
    /// Off by default.
    pub gateway: GatewayConfig,
    /// Live flow collectors (`[[collector]]` tables or `--collector`):
    /// NetFlow v5/v9 and IPFIX received from routers and firewalls, each
    /// flow matched against the live Tor sets; see
    /// `hunt::collect::CollectorConfig` for every key. Default: none.
    #[serde(rename = "collector")]
    pub collectors: Vec<crate::hunt::collect::CollectorConfig>,
    /// Where alerts go (`[[output]]` tables or `--output`), each with its
    /// own format, queue and spool; see `sink::OutputConfig` for every key.
    /// Default: none, which means one `stdout` output in ECS.
    #[serde(rename = "output")]
    pub outputs: Vec<OutputConfig>,
    /// The retrospective hunt's thresholds and input settings (`[hunt]`;
    /// `torsensor hunt` only).
    pub hunt: crate::hunt::HuntSettings,
}

pub const DEFAULT_STATE_DIR: &str = "/var/lib/torsensor";
pub const DEFAULT_RULES_DIR: &str = "/etc/torsensor/rules.d";

pub const DEFAULT_RING_BUFFER_BYTES: u32 = 4 << 20;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_ENTRIES: u32 = 262_144;
pub const DEFAULT_AGGREGATION_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_INBOUND_WAIT: Duration = Duration::from_secs(5);
pub const DEFAULT_AGGREGATION_MAX_GROUPS: usize = 10_000;
pub const DEFAULT_SHUTDOWN_DEADLINE: Duration = Duration::from_secs(3);

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            rules_dir: PathBuf::from(DEFAULT_RULES_DIR),
            tor_socks_ports: Vec::new(),
            tor_listen_ports: Vec::new(),
            exec_environment_scan: true,
            allow_reserved: false,
            audit_all: false,
            host_name: None,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            kernel_log: false,
            stats_file: None,
            health_interval: DEFAULT_HEALTH_INTERVAL,
            aggregation_window: DEFAULT_AGGREGATION_WINDOW,
            aggregation_max_groups: DEFAULT_AGGREGATION_MAX_GROUPS,
            shutdown_deadline: DEFAULT_SHUTDOWN_DEADLINE,
            inbound_wait: DEFAULT_INBOUND_WAIT,
            inbound_hooks: InboundChoice::default(),
            max_entries: DEFAULT_MAX_ENTRIES,
            feeds: Vec::new(),
            selftest: false,
            metrics: MetricsConfig::default(),
            kubernetes: KubernetesConfig::default(),
            blocking: BlockingConfig::default(),
            dns: DnsConfig::default(),
            gateway: GatewayConfig::default(),
            collectors: Vec::new(),
            outputs: Vec::new(),
            hunt: crate::hunt::HuntSettings::default(),
        }
    }
}

/// Pod and container names without the Kubernetes API (`[kubernetes]`):
/// the kubelet's log directories name every pod and container on the node
/// (README, "Deploy on Kubernetes"). A DaemonSet mounts them read-only at
/// the same paths; off Kubernetes they do not exist and nothing is named.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesConfig {
    /// `<namespace>_<pod>_<uid>/` per pod. Default: `/var/log/pods`.
    pub pod_logs: PathBuf,
    /// `<pod>_<namespace>_<container>-<id>.log` per container. Default:
    /// `/var/log/containers`.
    pub container_logs: PathBuf,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            pod_logs: PathBuf::from("/var/log/pods"),
            container_logs: PathBuf::from("/var/log/containers"),
        }
    }
}

/// Opt-in blocking (`[blocking]`; README, "Blocking"). The rules decide
/// what is blocked (`action = "block"`); this decides whether and where.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BlockingConfig {
    /// `"off"`: nothing is attached, block rules alert like alert rules;
    /// `"dry-run"`: the programs are attached and count, hits a block rule
    /// decides are alerted as "would block" (`torsensor.block.result`);
    /// `"enforce"`: outbound connects fail, inbound SYNs are dropped, each
    /// reported as a denied connection. Default: off.
    pub mode: BlockMode,
    /// What a refused `connect()` returns: `"EPERM"` or `"ECONNREFUSED"`
    /// (Linux 5.18+). Default: EPERM.
    pub errno: BlockErrno,
    /// The cgroup v2 directory the programs attach to (a path in the
    /// cgroup v2 mount); they apply to every process in it and below.
    /// Block rules' `cgroup` paths are still written from the hierarchy's
    /// root, as `/proc/PID/cgroup` shows them. Default: the host's cgroup
    /// v2 mount (the whole host).
    pub cgroup: Option<PathBuf>,
}

/// DNS lookups for Tor (`[dns]`; README, "DNS lookups for Tor"): queries
/// for names in the names file (`.onion`, the Tor Project's and its
/// transports' domains), sent by any process over UDP or TCP, alerted
/// with the process (rules TORSENSOR-007, -008).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Attach the DNS programs (cgroup `connect4/6`, `sendmsg4/6` and
    /// `cgroup_skb/egress`, next to anything else there) at start; needs
    /// CAP_NET_ADMIN then. Every packet a local socket sends then passes
    /// a few instructions (one bitmap read rules out all but DNS ports).
    /// A kernel or cgroup that refuses them leaves the rest of the sensor
    /// running, said in the log and in `torsensor_dns_hook`. Default:
    /// false.
    pub enabled: bool,
    /// The names file (the format of `rules/tor-dns.toml`, which is
    /// compiled in). Read and checked at start; a bad entry stops the
    /// start with the file and line. Default: none (the shipped list).
    pub names: Option<PathBuf>,
    /// Destination ports whose packets are DNS (UDP and TCP), 1 to 8 of
    /// them. Default: [53].
    pub ports: Vec<u16>,
    /// The cgroup v2 directory the programs attach to (they see the
    /// processes in it and below). Default: the host's cgroup v2 mount
    /// (the whole host).
    pub cgroup: Option<PathBuf>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            enabled: false,
            names: None,
            ports: vec![53],
            cgroup: None,
        }
    }
}

/// Gateway mode (`[gateway]`; README, "Gateway mode"): TC programs on a
/// router's interfaces match the TCP flows it forwards against the Tor
/// sets, and report each hit and, when the flow ends, its summary.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Attach the gateway programs. Also `--gateway-interface`, which
    /// turns it on. Default: false.
    pub enabled: bool,
    /// Interfaces facing the inside hosts (the LAN side). Attach here,
    /// before NAT, so that alerts carry the inside hosts' real addresses.
    /// Each must exist when the sensor starts. Default: none.
    pub interfaces: Vec<String>,
    /// Interfaces facing the outside (the Internet side), optional: behind
    /// a masquerade, what leaves them carries the router's address, not
    /// the inside host's (README, "Gateway mode", NAT). Default: none.
    pub outside_interfaces: Vec<String>,
    /// How the programs attach: `"auto"` (TCX links on Linux 6.6+, netlink
    /// TC filters on a clsact qdisc before), `"tcx"` or `"netlink"`.
    /// Default: auto.
    pub attach: crate::kernel::gateway::TcMode,
    /// A tracked flow without a packet for this long is summarised and
    /// forgotten (`torsensor.gateway.end: idle`). Between 10s and 1d.
    /// Default: 5 min.
    #[serde(deserialize_with = "deserialize_duration")]
    pub flow_idle_timeout: Duration,
    /// Most flows tracked at once (the kernel's flow table, about 150
    /// bytes each, allocated at start). When full, a new hit is still
    /// reported, without a summary, and counted
    /// (`torsensor_gateway_lost_total{reason="flows_full"}`). Between 1024
    /// and 4194304. Default: 65536.
    pub max_flows: u32,
}

pub const DEFAULT_FLOW_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_GATEWAY_MAX_FLOWS: u32 = 65_536;

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            enabled: false,
            interfaces: Vec::new(),
            outside_interfaces: Vec::new(),
            attach: crate::kernel::gateway::TcMode::Auto,
            flow_idle_timeout: DEFAULT_FLOW_IDLE_TIMEOUT,
            max_flows: DEFAULT_GATEWAY_MAX_FLOWS,
        }
    }
}

impl GatewayConfig {
    /// The interfaces to attach to, with their side.
    pub fn interfaces(&self) -> Vec<crate::kernel::gateway::GatewayInterface> {
        use crate::kernel::gateway::{GatewayInterface, Side};
        let inside = self.interfaces.iter().map(|n| (n, Side::Inside));
        let outside = self.outside_interfaces.iter().map(|n| (n, Side::Outside));
        inside
            .chain(outside)
            .map(|(name, side)| GatewayInterface {
                name: name.clone(),
                side,
            })
            .collect()
    }

    /// Checks the values, and that each interface exists here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::Gateway(m));
        if !self.enabled {
            return Ok(());
        }
        if self.interfaces.is_empty() && self.outside_interfaces.is_empty() {
            return err(
                "enabled = true needs at least one interface (interfaces = [\"eth1\"])".into(),
            );
        }
        if !(Duration::from_secs(10)..=Duration::from_secs(86_400))
            .contains(&self.flow_idle_timeout)
        {
            return err("flow_idle_timeout must be between 10s and 1d".into());
        }
        if !(1024..=(4 << 20)).contains(&self.max_flows) {
            return err(format!(
                "max_flows = {}: must be between 1024 and 4194304",
                self.max_flows
            ));
        }
        let mut seen = BTreeSet::new();
        for i in self.interfaces() {
            if !seen.insert(i.name.clone()) {
                return err(format!("interface {:?} is listed twice", i.name));
            }
            if let Err(e) = crate::kernel::gateway::link_info(&i.name) {
                return err(e);
            }
        }
        if seen.len() > 64 {
            return err("at most 64 interfaces".into());
        }
        Ok(())
    }
}

/// The HTTP endpoint for Prometheus and probes (`[metrics]`): `/metrics`,
/// `/healthz`, `/readyz` and `/status` (JSON, read by `torsensor status`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on, or `"off"`. Default: `127.0.0.1:9477` (this
    /// host only; a DaemonSet sets `0.0.0.0:9477` for the kubelet's probes
    /// and the scraper). Port 0 takes a free port, written to
    /// `status.json`. Also `--metrics-listen` / `TORSENSOR_METRICS_LISTEN`.
    #[serde(deserialize_with = "deserialize_listen")]
    pub listen: Option<SocketAddr>,
    /// Whether `/readyz` says ready while only the embedded snapshot is
    /// armed (no configured feed has content yet). Default: true.
    pub ready_on_embedded: bool,
}

pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9477);

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some(DEFAULT_METRICS_LISTEN),
            ready_on_embedded: true,
        }
    }
}

/// `"off"`, or an `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_listen(text: &str) -> Result<Option<SocketAddr>, String> {
    if text == "off" {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("{text:?} is not \"off\" or an address like \"127.0.0.1:9477\""))
}

fn deserialize_listen<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    parse_listen(&text).map_err(serde::de::Error::custom)
}

impl SensorConfig {
    /// Reads a TOML config file (unknown keys are errors).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_toml(path, &text)
    }

    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let (line, column) = e
                .span()
                .map(|span| line_column(text, span.start))
                .unwrap_or((0, 0));
            ConfigError::Toml {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })
    }

    /// Adds `--feed` locations, renaming on a clash so every name is unique.
    pub fn add_feed_locations(&mut self, locations: &[String]) {
        for location in locations {
            let mut feed = FeedConfig::from_location(location);
            let base = feed.name.clone();
            let mut n = 2;
            while self.feeds.iter().any(|f| f.name == feed.name) {
                feed.name = format!("{base}-{n}");
                n += 1;
            }
            self.feeds.push(feed);
        }
    }

    /// The keys that differ between `self` (running) and `new` and that a
    /// reload (SIGHUP) does not apply: they shape the kernel programs, the
    /// outputs and the run loop, which are set up once. A reload applies
    /// `feed`, `allow_reserved`, `state_dir`, `rules_dir` (and re-reads
    /// the rules) and `tor_socks_ports`.
    pub fn restart_only_changes(&self, new: &SensorConfig) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut differs = |key, changed: bool| {
            if changed {
                keys.push(key);
            }
        };
        differs("output", self.outputs != new.outputs);
        differs("audit_all", self.audit_all != new.audit_all);
        differs("host_name", self.host_name != new.host_name);
        differs(
            "ring_buffer_bytes",
            self.ring_buffer_bytes != new.ring_buffer_bytes,
        );
        differs("kernel_log", self.kernel_log != new.kernel_log);
        differs("max_entries", self.max_entries != new.max_entries);
        differs("inbound_hooks", self.inbound_hooks != new.inbound_hooks);
        differs("inbound_wait", self.inbound_wait != new.inbound_wait);
        differs(
            "health_interval",
            self.health_interval != new.health_interval,
        );
        differs(
            "aggregation_window",
            self.aggregation_window != new.aggregation_window,
        );
        differs(
            "aggregation_max_groups",
            self.aggregation_max_groups != new.aggregation_max_groups,
        );
        differs(
            "shutdown_deadline",
            self.shutdown_deadline != new.shutdown_deadline,
        );
        differs("metrics", self.metrics != new.metrics);
        differs("kubernetes", self.kubernetes != new.kubernetes);
        // dry-run <-> enforce and the errno are applied; attaching and
        // detaching are not.
        differs(
            "blocking",
            (self.blocking.mode == BlockMode::Off) != (new.blocking.mode == BlockMode::Off)
                || self.blocking.cgroup != new.blocking.cgroup,
        );
        differs("stats_file", self.stats_file != new.stats_file);
        differs("dns", self.dns != new.dns);
        differs("gateway", self.gateway != new.gateway);
        differs("collector", self.collectors != new.collectors);
        differs(
            "tor_listen_ports",
            self.tor_listen_ports != new.tor_listen_ports,
        );
        differs(
            "exec_environment_scan",
            self.exec_environment_scan != new.exec_environment_scan,
        );
        keys
    }

    /// Checks every value; the only way to a [`Config`].
    pub fn validated(self) -> Result<Config, ConfigError> {
        self.validate()?;
        Ok(Config(self))
    }

    /// The feed layer's part: the feeds, the cache, reserved ranges.
    pub fn feed_settings(&self) -> FeedSettings<'_> {
        FeedSettings {
            feeds: &self.feeds,
            state_dir: &self.state_dir,
            allow_reserved: self.allow_reserved,
            socks_ports: &self.tor_socks_ports,
        }
    }

    /// The kernel layer's part: what the programs and maps are loaded with.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            audit_all: self.audit_all,
            ring_buffer_bytes: self.ring_buffer_bytes,
            kernel_log: self.kernel_log,
            max_entries: self.max_entries,
            inbound: self.inbound_hooks.0,
            local: crate::local::LocalWatch::shipped()
                .with_listen_ports(&self.tor_listen_ports)
                .with_environment_scan(self.exec_environment_scan),
            gateway_max_flows: if self.gateway.enabled {
                self.gateway.max_flows
            } else {
                1
            },
        }
    }

    /// The outputs in force: the configured ones, or stdout in ECS.
    pub fn outputs_or_stdout(&self) -> Vec<OutputConfig> {
        if self.outputs.is_empty() {
            vec![OutputConfig::new("stdout")]
        } else {
            self.outputs.clone()
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.hunt.validate().map_err(ConfigError::Hunt)?;
        let ports = &self.dns.ports;
        if ports.is_empty() || ports.len() > 8 || ports.contains(&0) {
            return Err(ConfigError::DnsPorts(ports.clone()));
        }
        if let Some(c) = &self.dns.cgroup
            && !c.is_absolute()
        {
            return Err(ConfigError::DnsCgroup(c.clone()));
        }
        if let Some(c) = &self.blocking.cgroup
            && !c.is_absolute()
        {
            return Err(ConfigError::BlockingCgroup(c.clone()));
        }
        let rb = self.ring_buffer_bytes;
        if !rb.is_power_of_two() || !(4096..=(256 << 20)).contains(&rb) {
            return Err(ConfigError::RingBufferSize(rb));
        }
        if self.feeds.len() > MAX_FEEDS {
            return Err(ConfigError::TooManyFeeds(self.feeds.len()));
        }
        if self.health_interval < Duration::from_secs(1) {
            return Err(ConfigError::HealthInterval);
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.inbound_wait) {
            return Err(ConfigError::InboundWait);
        }
        if !(1024..=(4 << 20)).contains(&self.max_entries) {
            return Err(ConfigError::MaxEntries(self.max_entries));
        }
        if !(100..=1_000_000).contains(&self.aggregation_max_groups) {
            return Err(ConfigError::AggregationGroups(self.aggregation_max_groups));
        }
        if self.shutdown_deadline > Duration::from_secs(60) {
            return Err(ConfigError::ShutdownDeadline);
        }
        self.gateway.validate()?;
        crate::hunt::collect::validate_all(&self.collectors).map_err(ConfigError::Collector)?;
        for output in &self.outputs {
            output
                .validate()
                .map_err(|e| ConfigError::Output(e.to_string()))?;
        }
        let mut names = BTreeSet::new();
        for feed in &self.feeds {
            feed.validate()?;
            if !names.insert(feed.name.as_str()) {
                return Err(ConfigError::Feed(FeedConfigError {
                    feed: feed.name.clone(),
                    field: "name",
                    reason: "is used by two feeds".into(),
                }));
            }
        }
        Ok(())
    }
}

/// A configuration that passed [`SensorConfig::validate`]: what the daemon
/// runs. Read-only (`Deref`); build one with [`SensorConfig::validated`] or
/// [`flags`].
#[derive(Debug, Clone, PartialEq)]
pub struct Config(SensorConfig);

impl std::ops::Deref for Config {
    type Target = SensorConfig;

    fn deref(&self) -> &SensorConfig {
        &self.0
    }
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::FeedFormat;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SensorConfig::default().validate(), Ok(()));
    }

    #[test]
    fn gateway_interfaces_are_checked_once() {
        let mut c = SensorConfig::default();
        c.gateway.interfaces = vec!["tsnope0".into()];
        assert_eq!(c.validate(), Ok(()), "off: not looked at");
        c.gateway.enabled = true;
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "[gateway] no network interface named \"tsnope0\" in this network namespace"
        );
        assert!(!e.contains('\n'));
        c.gateway.interfaces = vec!["lo".into()];
        assert_eq!(c.validate(), Ok(()));
        c.gateway.outside_interfaces = vec!["lo".into()];
        assert!(c.validate().unwrap_err().to_string().contains("twice"));
        c.gateway.outside_interfaces.clear();
        c.gateway.max_flows = 10;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_flows = 10")
        );
        c.gateway.max_flows = DEFAULT_GATEWAY_MAX_FLOWS;
        c.gateway.interfaces.clear();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("at least one")
        );
        let parsed = SensorConfig::from_toml(
            Path::new("t.toml"),
            "[gateway]\nenabled = true\ninterfaces = [\"lo\"]\nflow_idle_timeout = \"30s\"\nattach = \"netlink\"\n",
        )
        .unwrap();
        assert_eq!(parsed.gateway.flow_idle_timeout, Duration::from_secs(30));
        assert_eq!(
            parsed.gateway.attach,
            crate::kernel::gateway::TcMode::Netlink
        );
        assert_eq!(parsed.validate(), Ok(()));
    }

    #[test]
    fn bad_values_are_named() {
        let mut c = SensorConfig {
            ring_buffer_bytes: 5000,
            ..Default::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::RingBufferSize(5000)));
        c.ring_buffer_bytes = 1024;
        assert!(c.validate().unwrap_err().to_string().contains("4096"));
        c.ring_buffer_bytes = DEFAULT_RING_BUFFER_BYTES;
        c.add_feed_locations(&vec!["/x".to_owned(); 33]);
        assert_eq!(c.validate(), Err(ConfigError::TooManyFeeds(33)));
        c.feeds.clear();
        c.health_interval = Duration::from_millis(10);
        assert_eq!(c.validate(), Err(ConfigError::HealthInterval));
        c.health_interval = DEFAULT_HEALTH_INTERVAL;
        for bad in [Duration::from_millis(50), Duration::from_secs(61)] {
            c.inbound_wait = bad;
            assert_eq!(c.validate(), Err(ConfigError::InboundWait));
        }
        c.inbound_wait = Duration::from_millis(100);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn the_former_hard_coded_limits_are_validated_settings() {
        let c = SensorConfig::from_toml(
            Path::new("t.toml"),
            "aggregation_max_groups = 500\nshutdown_deadline = \"10s\"\n",
        )
        .unwrap();
        assert_eq!(c.aggregation_max_groups, 500);
        assert_eq!(c.shutdown_deadline, Duration::from_secs(10));
        let running = c.clone().validated().unwrap();
        let mut bad = c.clone();
        bad.aggregation_max_groups = 10;
        assert_eq!(bad.validate(), Err(ConfigError::AggregationGroups(10)));
        bad.aggregation_max_groups = 500;
        bad.shutdown_deadline = Duration::from_secs(61);
        assert_eq!(bad.validate(), Err(ConfigError::ShutdownDeadline));
        assert_eq!(
            running.restart_only_changes(&SensorConfig::default()),
            ["aggregation_max_groups", "shutdown_deadline"]
        );
        let err = SensorConfig::from_toml(Path::new("t.toml"), "shutdown_deadline = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("3 has no unit"), "{err}");
    }

    #[test]
    fn a_full_file_parses_with_defaults_filled_in() {
        let text = r#"
state_dir = "/tmp/ts"
allow_reserved = true

[[feed]]
name = "tor-exits"
location = "https://check.torproject.org/exit-addresses"
format = "tordnsel"
refresh = "30m"
jitter = "5m"

[[feed]]
name = "mirror"
location = "http://127.0.0.1:8080/details"
"#;
        let c = SensorConfig::from_toml(Path::new("t.toml"), text).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/ts"));
        assert!(c.allow_reserved);
        assert_eq!(c.feeds.len(), 2);
        assert_eq!(c.feeds[0].format, Some(FeedFormat::Tordnsel));
        assert_eq!(c.feeds[0].refresh, Duration::from_secs(1800));
        assert_eq!(c.feeds[1].format, None);
        assert_eq!(c.feeds[1].max_shrink, 0.5);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn file_errors_name_the_file_line_and_field() {
        let text =
            "state_dir = \"/tmp\"\n[[feed]]\nname = \"a\"\nlocation = \"/x\"\nrefresh = \"soon\"\n";
        let err = SensorConfig::from_toml(Path::new("/etc/t.toml"), text).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("config file /etc/t.toml, line 5"), "{msg}");
        assert!(msg.contains("\"soon\" is not a duration"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        let err = SensorConfig::from_toml(Path::new("t.toml"), "colour = 1\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");

        let mut c = SensorConfig::default();
        c.add_feed_locations(&["http://mirror.example/list".into()]);
        let err = c.validate().unwrap_err().to_string();
        assert!(err.starts_with("feed \"list\": location"), "{err}");
        c.feeds[0].location = "/x".into();
        c.feeds[0].refresh = Duration::from_secs(5);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("refresh must be at least 60s")
        );
    }

    #[test]
    fn the_dns_section_is_checked() {
        let c = SensorConfig::from_toml(
            Path::new("t.toml"),
            "[dns]\nenabled = true\nnames = \"/etc/torsensor/dns.toml\"\nports = [53, 5353]\n",
        )
        .unwrap();
        assert!(c.dns.enabled);
        assert_eq!(c.dns.ports, [53, 5353]);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(SensorConfig::default().dns.ports, [53]);
        assert!(!SensorConfig::default().dns.enabled);
        let mut bad = c.clone();
        bad.dns.ports = vec![];
        assert_eq!(bad.validate(), Err(ConfigError::DnsPorts(vec![])));
        bad.dns.ports = vec![0];
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .starts_with("dns.ports = [0]")
        );
        bad.dns.ports = vec![53];
        bad.dns.cgroup = Some("sys/fs/cgroup".into());
        assert_eq!(
            bad.validate(),
            Err(ConfigError::DnsCgroup("sys/fs/cgroup".into()))
        );
        let err = SensorConfig::from_toml(Path::new("t.toml"), "[dns]\nport = 53\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert_eq!(
            c.clone()
                .validated()
                .unwrap()
                .restart_only_changes(&SensorConfig::default()),
            ["dns"]
        );
    }

    #[test]
    fn the_shipped_example_config_is_valid() {
        let text = include_str!("../../../deploy/torsensor.toml");
        let c = SensorConfig::from_toml(Path::new("deploy/torsensor.toml"), text).unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.feeds.len(), 2);
        assert!(c.feeds.iter().all(|f| f.location.starts_with("https://")));
    }

    #[test]
    fn feed_names_from_locations_are_unique() {
        let mut c = SensorConfig::default();
        c.add_feed_locations(&[
            "https://check.torproject.org/exit-addresses".into(),
            "/srv/lists/exit-addresses".into(),
            "https://onionoo.torproject.org/details?type=relay".into(),
        ]);
        let names: Vec<&str> = c.feeds.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["exit-addresses", "exit-addresses-2", "details"]);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn a_reload_names_every_key_it_cannot_apply_and_no_other() {
        let running = SensorConfig::default();
        let mut new = running.clone();
        new.add_feed_locations(&["/tmp/x.txt".into()]);
        new.allow_reserved = true;
        new.state_dir = "/tmp/elsewhere".into();
        assert!(running.restart_only_changes(&new).is_empty());
        new.outputs.push(OutputConfig::new("stdout"));
        new.aggregation_window = Duration::from_secs(1);
        new.inbound_hooks = "close-only".parse().unwrap();
        assert_eq!(
            running.restart_only_changes(&new),
            ["output", "inbound_hooks", "aggregation_window"]
        );
    }
}
