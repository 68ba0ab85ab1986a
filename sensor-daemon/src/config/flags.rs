//! Command-line flags and environment variables that override the file,
//! merged here (and only here) into one validated [`Config`]. `torsensor`'s
//! subcommands flatten these into their arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{Config, ConfigError, SensorConfig, parse_listen};
use crate::kernel::InboundChoice;
use crate::sink::OutputConfig;
use crate::time::parse_duration;

/// Where the configuration comes from; flags override the file.
#[derive(Args, Clone)]
pub struct ConfigFlags {
    /// TOML configuration file (see README, "Configuration").
    #[arg(long, env = "TORSENSOR_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// A feed location (https URL, loopback http URL, or path); repeatable,
    /// added to the file's [[feed]] tables. Default (no feed anywhere): the
    /// embedded snapshot.
    #[arg(long = "feed", value_name = "LOCATION")]
    feeds: Vec<String>,
    /// State directory (feed cache, status.json). Default: /var/lib/torsensor.
    #[arg(long, env = "TORSENSOR_STATE_DIR", value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Keep loopback/private/documentation entries (labs and tests).
    #[arg(long, env = "TORSENSOR_ALLOW_RESERVED")]
    allow_reserved: bool,
    /// The operator's rule files. Default: /etc/torsensor/rules.d.
    #[arg(long, env = "TORSENSOR_RULES_DIR", value_name = "DIR")]
    rules_dir: Option<PathBuf>,
    /// A local Tor SOCKS port to watch (TORSENSOR-004), e.g.
    /// 127.0.0.1:9050; repeatable, added to tor_socks_ports.
    #[arg(long = "tor-socks-port", value_name = "IP:PORT")]
    tor_socks_ports: Vec<std::net::SocketAddr>,
    /// Gateway mode on this inside interface (repeatable): added to
    /// [gateway] interfaces, and turns gateway mode on.
    #[arg(long = "gateway-interface", value_name = "NAME")]
    gateway_interfaces: Vec<String>,
    /// Receive NetFlow v5/v9 and IPFIX on this address (repeatable,
    /// `udp://0.0.0.0:2055`): a [[collector]] with every default.
    #[arg(long = "collector", value_name = "udp://IP:PORT")]
    collectors: Vec<String>,
}

#[derive(Args, Clone)]
pub struct RunFlags {
    #[command(flatten)]
    pub config: ConfigFlags,
    /// Report every TCP connection, not only feed matches (debugging, benchmarks).
    #[arg(long, env = "TORSENSOR_AUDIT_ALL")]
    audit_all: bool,
    /// Kernel-to-daemon ring buffer size in bytes (power of two). Default: 4 MiB.
    #[arg(long, env = "TORSENSOR_RING_BUFFER_BYTES")]
    ring_buffer_bytes: Option<u32>,
    /// Forward kernel-side debug logs to stderr.
    #[arg(long, env = "TORSENSOR_KERNEL_LOG")]
    kernel_log: bool,
    /// Write final counters (JSON) to this file at exit.
    #[arg(long, value_name = "PATH")]
    stats_file: Option<PathBuf>,
    /// Seconds between checks of the kernel loss counters and feed ages. Default: 5.
    #[arg(long)]
    health_interval_secs: Option<u64>,
    /// Where alerts go, repeatable: stdout, file:PATH, syslog+udp://H:P,
    /// syslog+tcp://H:P, syslog:///dev/log, https://..., hec+https://...,
    /// bulk+https://H:P/INDEX, with ",format=ocsf" etc. (README, "Outputs").
    /// Default: stdout in ECS. Tokens come from token_file/token_env only.
    #[arg(long = "output", value_name = "DEST[,key=value...]", value_parser = OutputParser)]
    outputs: Vec<OutputConfig>,
    /// Aggregation window (e.g. 60s; 0s turns aggregation off). Default: 60s.
    #[arg(long, env = "TORSENSOR_AGGREGATION_WINDOW", value_parser = parse_duration)]
    aggregation_window: Option<Duration>,
    /// How long an inbound hit waits for a process to use the accepted
    /// connection before it is sent without one (100ms..60s). Default: 5s.
    #[arg(long, env = "TORSENSOR_INBOUND_WAIT", value_parser = parse_duration)]
    inbound_wait: Option<Duration>,
    /// Which hooks name an inbound connection's process: auto, sock-length,
    /// fentry, kprobe, rcv-space or close-only (`torsensor hooks` shows what
    /// this kernel offers). Default: auto.
    #[arg(long, env = "TORSENSOR_INBOUND_HOOKS", value_name = "PLAN")]
    inbound_hooks: Option<InboundChoice>,
    /// The metrics and health endpoint: IP:PORT, or "off". Default:
    /// 127.0.0.1:9477.
    #[arg(long, env = "TORSENSOR_METRICS_LISTEN", value_name = "ADDR", value_parser = parse_listen_flag)]
    metrics_listen: Option<Listen>,
    /// `host.name` in alerts (default: the kernel's host name).
    #[arg(long, env = "TORSENSOR_HOST_NAME", value_name = "NAME")]
    host_name: Option<String>,
    /// Run the self-test once after arming; not ready until it passed,
    /// exit 1 if it fails (a DaemonSet's startup check).
    #[arg(long, env = "TORSENSOR_SELFTEST")]
    selftest: bool,
}

/// Parses `--output` without clap's "invalid value '<the raw value>'"
/// prefix: the value may hold a secret given by mistake (`token=...`, a
/// password in the URL), and the library's error shows it redacted.
#[derive(Clone)]
pub struct OutputParser;

impl clap::builder::TypedValueParser for OutputParser {
    type Value = OutputConfig;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Self::Value, clap::Error> {
        use clap::error::ErrorKind;
        let text = value.to_str().ok_or_else(|| {
            clap::Error::raw(ErrorKind::InvalidUtf8, "--output is not valid UTF-8\n").with_cmd(cmd)
        })?;
        text.parse().map_err(|e| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("{e}\n")).with_cmd(cmd)
        })
    }
}

/// `--metrics-listen`: an address, or off.
#[derive(Debug, Clone, Copy)]
struct Listen(Option<SocketAddr>);

fn parse_listen_flag(text: &str) -> Result<Listen, String> {
    parse_listen(text).map(Listen)
}

impl ConfigFlags {
    /// The file (if any) with these flags applied, not yet validated.
    pub fn read(&self) -> Result<SensorConfig, ConfigError> {
        let mut cfg = match &self.config {
            Some(path) => SensorConfig::from_file(path)?,
            None => SensorConfig::default(),
        };
        cfg.add_feed_locations(&self.feeds);
        if let Some(dir) = &self.state_dir {
            cfg.state_dir = dir.clone();
        }
        if let Some(dir) = &self.rules_dir {
            cfg.rules_dir = dir.clone();
        }
        cfg.tor_socks_ports.extend(&self.tor_socks_ports);
        if !self.gateway_interfaces.is_empty() {
            cfg.gateway.enabled = true;
            cfg.gateway
                .interfaces
                .extend(self.gateway_interfaces.iter().cloned());
        }
        cfg.collectors.extend(
            self.collectors
                .iter()
                .map(|l| crate::hunt::collect::CollectorConfig::new(l)),
        );
        cfg.allow_reserved |= self.allow_reserved;
        Ok(cfg)
    }

    /// The file with these flags applied, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        self.read()?.validated()
    }
}

impl RunFlags {
    /// The file, these flags and the environment, validated.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = self.config.read()?;
        cfg.audit_all |= self.audit_all;
        cfg.selftest |= self.selftest;
        if let Some(name) = self.host_name.as_ref().filter(|n| !n.trim().is_empty()) {
            cfg.host_name = Some(name.trim().to_owned());
        }
        cfg.kernel_log |= self.kernel_log;
        if let Some(rb) = self.ring_buffer_bytes {
            cfg.ring_buffer_bytes = rb;
        }
        if let Some(path) = &self.stats_file {
            cfg.stats_file = Some(path.clone());
        }
        if let Some(secs) = self.health_interval_secs {
            cfg.health_interval = Duration::from_secs(secs);
        }
        if let Some(window) = self.aggregation_window {
            cfg.aggregation_window = window;
        }
        if let Some(wait) = self.inbound_wait {
            cfg.inbound_wait = wait;
        }
        if let Some(plan) = self.inbound_hooks {
            cfg.inbound_hooks = plan;
        }
        if let Some(Listen(listen)) = self.metrics_listen {
            cfg.metrics.listen = listen;
        }
        cfg.outputs.extend(self.outputs.iter().cloned());
        cfg.validated()
    }
}
