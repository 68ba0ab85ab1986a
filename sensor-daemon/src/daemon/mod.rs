//! The running daemon: load feeds, arm the kernel, turn events into alerts
//! for the outputs, refresh feeds, report health and losses, reload on
//! SIGHUP, and shut down cleanly on SIGINT/SIGTERM.
//!
//! Owns the run loop ([`run`]) and what only a running daemon does:
//! arming in the right order (privileges, state directory, feeds, outputs,
//! kernel, then dropping privileges: [`privileges`]), the alert path from
//! ring buffer to outputs ([`delivery`]), switching feed sets in one place
//! for refresh and SIGHUP ([`switch`]), health events ([`health`]), the
//! status file ([`status`]), the metrics and health endpoint
//! ([`telemetry`], [`endpoint`]), the self-test ([`selftest`]) and the
//! conversation with systemd ([`notify`]). Everything below it is a
//! library this module drives; nothing imports from here except the binary (`main.rs`).

mod blocking;
use blocking::Blocking;
mod delivery;
mod dns;
use dns::DnsHook;
mod collector;
pub mod endpoint;
mod gateway;
use collector::{CollectorRun, Datagram};
use gateway::GatewayRun;
mod health;
pub mod notify;
pub mod privileges;
pub mod selftest;
pub mod status;
mod switch;
pub mod telemetry;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aya::maps::{MapData, RingBuf};
use tokio::io::Interest;
use tokio::io::unix::{AsyncFd, AsyncFdReadyMutGuard};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::alert::SensorIdentity;
use crate::alert::aggregate::Aggregator;
use crate::alert::rules::block::BlockMode;
use crate::alert::rules::{RuleError, Rules};
use crate::config::{Config, ConfigError, SensorConfig};
use crate::enrich::kubelet::KubeletLogs;
use crate::feed::FeedSet;
use crate::feed::manager::FeedManager;
use crate::feed::refresh::{FetchDone, Refresher, Verdict};
use crate::feed::set::SetError;
use crate::kernel::event::BootClock;
use crate::kernel::{self, HookPlan, InboundChoice, KernelError, Probes};
use crate::pipeline::{HostSource, Pipeline};
use crate::sink::{LossReport, SinkError, Sinks};
use crate::statedir::StateDirError;
pub use delivery::RunStats;
use delivery::{DRAIN_CHUNK, Delivery};
use endpoint::Endpoint;
use notify::Notify;
use privileges::PrivilegeError;
use selftest::{Prober, SelftestResult};
pub use status::{StatusFile, check_state_dir, load_offline};
use telemetry::{AlertCount, Snapshot, Telemetry};

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Feed(#[from] SetError),
    #[error("feed {name}: {reason}")]
    FeedFile { name: String, reason: String },
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    DnsNames(#[from] crate::dns::DnsNamesError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error(
        "metrics endpoint {addr}: {source} (set [metrics] listen, --metrics-listen, or \"off\")"
    )]
    Endpoint {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("the start-up self-test failed: {0}")]
    Selftest(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Re-reads the configuration (file, flags, environment) on SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<Config, ConfigError>>;

fn io_err(what: &'static str) -> impl Fn(io::Error) -> SensorError {
    move |source| SensorError::Io { what, source }
}

/// Loads the programs with an empty feed set, chooses the hooks as `run`
/// would, and unloads everything again (`torsensor hooks`).
pub fn hook_plan(inbound: InboundChoice) -> Result<HookPlan, SensorError> {
    kernel::preflight()?;
    let cfg = SensorConfig {
        max_entries: 1,
        inbound_hooks: inbound,
        ..SensorConfig::default()
    };
    let probes = Probes::load(&cfg.load_options(), &FeedSet::default())?;
    Ok(probes.plan().cloned().expect("load chooses a plan"))
}

/// The signals the loop answers.
struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
    /// A self-test now.
    usr1: Signal,
    /// Reopen the `file:` outputs only (logrotate), without the feed
    /// refresh a SIGHUP brings: a fleet rotating at midnight must not
    /// fetch every feed at once.
    usr2: Signal,
}

impl Signals {
    fn install() -> Result<Self, SensorError> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?,
            term: signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?,
            hup: signal(SignalKind::hangup()).map_err(io_err("installing SIGHUP handler"))?,
            usr1: signal(SignalKind::user_defined1())
                .map_err(io_err("installing SIGUSR1 handler"))?,
            usr2: signal(SignalKind::user_defined2())
                .map_err(io_err("installing SIGUSR2 handler"))?,
        })
    }
}

/// The kernel's file descriptors the loop polls.
struct Polled {
    ring: AsyncFd<RingBuf<MapData>>,
    /// Program starts (`EXEC_EVENTS`).
    exec_ring: AsyncFd<RingBuf<MapData>>,
    /// DNS queries (`DNS_EVENTS`), when the DNS programs are attached.
    dns_ring: Option<AsyncFd<RingBuf<MapData>>>,
    /// Gateway hits (`GW_EVENTS`), in gateway mode.
    gw_ring: Option<AsyncFd<RingBuf<MapData>>>,
    /// Datagrams the collector's listeners received.
    collector_rx: Option<tokio::sync::mpsc::Receiver<Datagram>>,
    kernel_log: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
}

/// The state of a running daemon that the loop's handlers share.
struct Daemon {
    cfg: Config,
    reload: Reload,
    manager: FeedManager,
    probes: Probes,
    blocking: Blocking,
    /// `[dns]` as armed.
    dns: DnsHook,
    /// Gateway mode, when on.
    gateway: Option<GatewayRun>,
    /// The live flow collector, when `[[collector]]` is configured.
    collector: Option<CollectorRun>,
    delivery: Delivery,
    /// The state directory in force (a reload may move it).
    state_dir: PathBuf,
    /// Kernel loss counters at the last health tick.
    last: kernel::KernelCounters,
    /// Output losses (queue, spool, refused) as health events.
    output_losses: LossReport,
    /// What `/metrics`, `/healthz`, `/readyz` and `/status` show.
    telemetry: Arc<Telemetry>,
    /// The endpoint's address and task, unless `[metrics] listen = "off"`.
    endpoint: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    /// The self-test's connection thread, or why there is none.
    prober: Result<Prober, String>,
    /// The last self-test's outcome.
    last_selftest: Option<SelftestResult>,
    /// Messages to systemd (no-ops without `NOTIFY_SOCKET`).
    notify: Notify,
    /// When this run started (RFC 3339), for the rule counts.
    started: String,
    /// The rule counts last written to `status.json`.
    written_counts: crate::pipeline::RuleCounts,
}

/// Runs the sensor until SIGINT or SIGTERM. SIGHUP reloads the
/// configuration through `reload` and refreshes every feed at once.
pub async fn run(cfg: Config, reload: Reload) -> Result<RunStats, SensorError> {
    let mut signals = Signals::install()?;
    let (mut daemon, mut polled) = Daemon::arm(cfg, reload)?;
    let mut refresher = Refresher::new();
    refresher.restart(&daemon.manager, false);
    let mut health = tokio::time::interval(daemon.cfg.health_interval);
    let mut summaries = tokio::time::interval(Duration::from_secs(1));
    // Inbound hits no process has used within `inbound_wait` are sent
    // without one; checked a few times per wait.
    let mut sweep =
        tokio::time::interval((daemon.cfg.inbound_wait / 4).max(Duration::from_millis(50)));
    let mut publish = tokio::time::interval(Duration::from_secs(1));
    let mut selftest_tick = tokio::time::interval(Duration::from_millis(100));
    if let Err(detail) = daemon.ready_or_selftest(polled.ring.get_mut()).await {
        let gw_ring = polled.gw_ring.as_mut().map(|r| r.get_mut());
        daemon.shutdown(polled.ring.get_mut(), gw_ring).await?;
        return Err(SensorError::Selftest(detail));
    }
    let ring = &mut polled.ring;
    let exec_ring = &mut polled.exec_ring;
    let dns_ring = &mut polled.dns_ring;
    let gw_ring = &mut polled.gw_ring;
    let collector_rx = &mut polled.collector_rx;
    let log = &mut polled.kernel_log;
    // Gateway flows that ended or went idle are summarised once a second.
    let mut flow_sweep = tokio::time::interval(gateway::SWEEP_EVERY);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let guard = guard.map_err(io_err("polling the ring buffer"))?;
                if daemon.on_readable(guard) {
                    // Let the output tasks take what was just queued.
                    tokio::task::yield_now().await;
                }
            }
            guard = exec_ring.readable_mut() => {
                let mut guard = guard.map_err(io_err("polling the exec ring buffer"))?;
                if daemon.delivery.drain_exec_some(guard.get_inner_mut(), DRAIN_CHUNK) {
                    tokio::task::yield_now().await;
                } else {
                    guard.clear_ready();
                }
            }
            guard = async { dns_ring.as_mut().expect("guarded").readable_mut().await }, if dns_ring.is_some() => {
                let mut guard = guard.map_err(io_err("polling the DNS ring buffer"))?;
                if daemon.delivery.drain_dns_some(guard.get_inner_mut(), DRAIN_CHUNK) {
                    tokio::task::yield_now().await;
                } else {
                    guard.clear_ready();
                }
            }
            guard = async { gw_ring.as_mut().expect("guarded").readable_mut().await }, if gw_ring.is_some() => {
                let mut guard = guard.map_err(io_err("polling the gateway ring buffer"))?;
                let gw = daemon.gateway.as_ref().expect("a gateway ring means gateway mode");
                if daemon.delivery.drain_gateway_some(guard.get_inner_mut(), gw, DRAIN_CHUNK) {
                    tokio::task::yield_now().await;
                } else {
                    guard.clear_ready();
                }
            }
            _ = flow_sweep.tick(), if daemon.gateway.is_some() || daemon.collector.is_some() => {
                daemon.on_flow_sweep(false);
                daemon.on_collector_sweep(false);
            }
            Some(d) = async { collector_rx.as_mut().expect("guarded").recv().await }, if collector_rx.is_some() => {
                daemon.on_datagram(d);
            }
            guard = async { log.as_mut().expect("guarded").readable_mut().await }, if log.is_some() => {
                let mut guard = guard.map_err(io_err("polling the kernel log"))?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Some(done) = refresher.rx.recv() => {
                if done.generation == refresher.generation() {
                    daemon.on_fetch_done(done, ring.get_mut()).await;
                }
            }
            _ = sweep.tick() => daemon.on_sweep(),
            _ = summaries.tick(), if daemon.delivery.pipeline.aggregating() => {
                daemon.delivery.write_summaries(false);
            }
            _ = health.tick() => daemon.on_health(),
            _ = publish.tick() => daemon.publish(),
            _ = daemon.notify.tick() => {
                let status = daemon.status_line();
                daemon.notify.alive(status);
            }
            _ = selftest_tick.tick(), if daemon.delivery.selftest.is_some() => {
                if let Err(detail) = daemon.on_selftest_tick(ring.get_mut()).await {
                    daemon.shutdown(ring.get_mut(), gw_ring.as_mut().map(|r| r.get_mut())).await?;
                    return Err(SensorError::Selftest(detail));
                }
            }
            _ = signals.usr1.recv() => daemon.start_selftest(ring.get_mut()).await,
            _ = signals.usr2.recv() => {
                tracing::info!("SIGUSR2: reopening the output files");
                daemon.delivery.sinks.reopen_files();
            }
            _ = signals.hup.recv() => {
                daemon.on_sighup(ring.get_mut()).await;
                refresher.restart(&daemon.manager, true);
            }
            _ = signals.int.recv() => break,
            _ = signals.term.recv() => break,
        }
    }

    refresher.stop();
    // Datagrams already received are read before the collector's flows
    // are judged at shutdown.
    if let Some(rx) = collector_rx.as_mut() {
        while let Ok(d) = rx.try_recv() {
            daemon.on_datagram(d);
        }
    }
    daemon.delivery.drain_exec(exec_ring.get_mut()).await;
    if let Some(ring) = dns_ring.as_mut() {
        daemon.delivery.drain_dns(ring.get_mut()).await;
    }
    daemon
        .shutdown(ring.get_mut(), gw_ring.as_mut().map(|r| r.get_mut()))
        .await
}

impl Daemon {
    /// After arming: the start-up self-test (`--selftest`), else READY=1
    /// at once. An error when the self-test could not even start (no
    /// prober thread, canary refused).
    async fn ready_or_selftest(&mut self, ring: &mut RingBuf<MapData>) -> Result<(), String> {
        if !self.cfg.selftest {
            let status = self.status_line();
            self.notify.ready(status);
            return Ok(());
        }
        self.start_selftest(ring).await;
        match self.last_selftest.as_ref().filter(|t| !t.passed) {
            Some(failed) => Err(failed.detail.clone()),
            None => Ok(()),
        }
    }

    /// A running self-test's progress. With `--selftest`, the first one
    /// decides: passed, READY=1 (systemd); failed, an error (exit 1).
    async fn on_selftest_tick(&mut self, ring: &mut RingBuf<MapData>) -> Result<(), String> {
        let passed = self.poll_selftest(ring).await;
        let first = self.last_selftest.as_ref().is_some_and(|t| t.seq == 1);
        match passed {
            Some(true) if first && self.cfg.selftest => {
                let status = self.status_line();
                self.notify.ready(status);
                Ok(())
            }
            Some(false) if first && self.cfg.selftest => Err(self
                .last_selftest
                .as_ref()
                .map(|t| t.detail.clone())
                .unwrap_or_default()),
            _ => Ok(()),
        }
    }
}

/// One line: the rules in force, in the order they are tried.
fn log_rules(rules: &Rules) {
    let enabled: Vec<&str> = rules
        .list
        .iter()
        .filter(|r| r.enabled)
        .map(|r| r.id.as_str())
        .collect();
    let exceptions: usize = rules.list.iter().map(|r| r.except.len()).sum();
    tracing::info!(
        "rules: {} enabled ({}), {} exceptions, from {}",
        enabled.len(),
        enabled.join(", "),
        exceptions,
        rules.files.join(", ")
    );
}

impl Daemon {
    /// Privileges first (the most useful first error), then the state
    /// directory (checked before anything is read from it), the feeds, the
    /// outputs (a path that cannot be used stops the start with nothing
    /// loaded), the kernel, and last the capabilities no longer needed.
    fn arm(cfg: Config, reload: Reload) -> Result<(Daemon, Polled), SensorError> {
        let rules = Rules::load(Some(&cfg.rules_dir))?;
        log_rules(&rules);
        // The names file is checked even when [dns] is off, so that a bad
        // one is found before it is needed.
        let dns_watch = crate::dns::DnsWatch::load(cfg.dns.names.as_deref())?;
        kernel::preflight()?;
        check_state_dir(&cfg.state_dir)?;
        let (manager, feeds) = load_offline(&cfg)?;
        let sinks = Sinks::start(&cfg.outputs_or_stdout(), &cfg.state_dir, "torsensor")?;
        let endpoint = match cfg.metrics.listen {
            Some(addr) => Some(
                Endpoint::bind(addr).map_err(|source| SensorError::Endpoint { addr, source })?,
            ),
            None => None,
        };
        privileges::warn_missing_for_proc();
        // Before the capabilities are dropped: it may make a namespace.
        let prober = Prober::start().map_err(|e| e.to_string());
        let mut probes = Probes::load(&cfg.load_options(), &feeds)?;
        health::log_plan(probes.plan());
        // Attaching cgroup programs needs CAP_NET_ADMIN: before the drop.
        let blocking = Blocking::arm(&cfg, &mut probes, &rules, &feeds)?;
        let dns = DnsHook::arm(&cfg, &mut probes, &dns_watch);
        // TC programs too.
        let gateway = GatewayRun::arm(&cfg, &mut probes)?;
        // Listen addresses too (a port below 1024 needs the capability).
        let (collector, collector_rx) = match CollectorRun::arm(&cfg)? {
            Some((run, rx)) => (Some(run), Some(rx)),
            None => (None, None),
        };
        let netlink = gateway
            .as_ref()
            .is_some_and(|g| g.attach.mode == kernel::gateway::TcMode::Netlink);
        let also = if netlink {
            vec![privileges::KEPT_FOR_NETLINK_FILTERS.0]
        } else {
            Vec::new()
        };
        privileges::drop_and_log(&also)?;
        let mut polled = Polled::register(
            &mut probes,
            matches!(dns, DnsHook::Attached(_)),
            gateway.is_some(),
        )?;
        polled.collector_rx = collector_rx;
        let mut pipeline = Pipeline::new(
            feeds,
            rules,
            SensorIdentity {
                host_name: cfg.host_name.clone().unwrap_or_else(crate::sys::hostname),
                ..SensorIdentity::local()
            },
            BootClock::now(),
            HostSource::with_kubelet(KubeletLogs::new(
                &cfg.kubernetes.pod_logs,
                &cfg.kubernetes.container_logs,
            )),
            Aggregator::new(cfg.aggregation_window, cfg.aggregation_max_groups),
        );
        pipeline.set_block_mode(blocking.mode);
        pipeline.set_local(cfg.load_options().local);
        pipeline.set_dns(dns_watch);
        let telemetry = Telemetry::new(Snapshot::default());
        let endpoint = endpoint.map(|e| (e.addr, e.serve(Arc::clone(&telemetry))));
        let daemon = Daemon {
            telemetry,
            endpoint,
            prober,
            last_selftest: None,
            notify: Notify::from_env(),
            started: crate::time::rfc3339_secs(SystemTime::now()),
            written_counts: Default::default(),
            state_dir: cfg.state_dir.clone(),
            cfg,
            reload,
            manager,
            probes,
            blocking,
            dns,
            gateway,
            collector,
            delivery: Delivery {
                pipeline,
                sinks,
                stats: RunStats::default(),
                by_rule: Default::default(),
                selftest: None,
            },
            last: kernel::KernelCounters::default(),
            output_losses: LossReport::default(),
        };
        // status.json first: whoever waits for "armed" may read it at once.
        daemon.write_status();
        daemon.publish();
        if let Some((addr, _)) = &daemon.endpoint {
            tracing::info!(
                "metrics and health endpoint on http://{addr}/ (metrics, healthz, readyz, status)"
            );
        }
        let feeds = daemon.delivery.pipeline.feeds();
        tracing::info!(
            prefixes = feeds.len(),
            or_ports = feeds.or_ports().len(),
            feeds = feeds.feeds().len(),
            audit_all = daemon.cfg.audit_all,
            "torsensor armed: watching TCP connect and accept"
        );
        Ok((daemon, polled))
    }

    /// The one-line `STATUS=` for systemd.
    fn status_line(&self) -> String {
        let feeds = self.delivery.pipeline.feeds();
        notify::status_line(
            self.probes.plan(),
            feeds,
            self.delivery.stats.alerts_written,
        )
    }

    fn write_status(&self) {
        let feeds = self.delivery.pipeline.feeds();
        status::write_status(
            &self.state_dir,
            self.manager.status(feeds, SystemTime::now()),
            self.probes.plan(),
            self.endpoint.as_ref().map(|(addr, _)| *addr),
            self.last_selftest.as_ref(),
            status::RulesStatus {
                started: self.started.clone(),
                counts: self.delivery.pipeline.rule_counts().clone(),
            },
        );
    }

    /// Refreshes what the endpoint shows (every second, and at start).
    fn publish(&self) {
        let snapshot = self.snapshot();
        self.telemetry.publish(snapshot);
    }

    fn snapshot(&self) -> Snapshot {
        let feeds = self.delivery.pipeline.feeds();
        let stats = &self.delivery.stats;
        Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            armed: true,
            embedded_only: self.manager.needs_embedded(),
            ready_on_embedded: self.cfg.metrics.ready_on_embedded,
            prefixes: feeds.len(),
            or_ports: feeds.or_ports().len(),
            hooks: self.probes.plan().cloned(),
            exec_unwatched: self.probes.exec_hook().err().map(str::to_owned),
            dns_hook: self.dns.state().to_owned(),
            dns_unwatched: self.dns.failure().map(str::to_owned),
            gateway: self
                .gateway
                .as_ref()
                .map(|g| (g.attach.mode.as_str().to_owned(), g.attach.interfaces.len())),
            collectors: self
                .collector
                .as_ref()
                .map(CollectorRun::snapshot)
                .unwrap_or_default(),
            collector_waiting: self.collector.as_ref().map_or(0, CollectorRun::waiting),
            kernel: self.probes.counters().unwrap_or(self.last),
            alerts: self
                .delivery
                .by_rule
                .iter()
                .map(|((direction, rule), count)| AlertCount {
                    direction: direction.clone(),
                    rule: rule.clone(),
                    count: *count,
                })
                .collect(),
            summaries: stats.summaries_written,
            summarized_connections: stats.summarized_connections,
            decode_errors: stats.decode_errors,
            feeds: telemetry::feed_health(&self.manager, feeds, SystemTime::now()),
            outputs: self.delivery.sinks.stats(),
            rules: self.delivery.pipeline.rule_counts().clone(),
            selftest_required: self.cfg.selftest,
            selftest: self.last_selftest.clone(),
            loop_age_seconds: 0.0,
        }
    }

    /// Reads a chunk of the ring buffer; true if more may be left.
    fn on_readable(&mut self, mut guard: AsyncFdReadyMutGuard<'_, RingBuf<MapData>>) -> bool {
        let more = self.delivery.drain_some(guard.get_inner_mut(), DRAIN_CHUNK);
        if !more {
            guard.clear_ready();
        }
        more
    }

    /// Inbound hits no process used in time, and outbound hits whose
    /// connection never completed. A hit a program claimed is no longer in
    /// the map, so the sweep cannot send it twice; no drain needed first.
    fn on_sweep(&mut self) {
        let swept = self.probes.sweep(self.cfg.inbound_wait);
        for ev in &swept.inbound {
            self.delivery.stats.inbound_unattributed += 1;
            self.delivery.handle(ev, false);
        }
        for ev in &swept.outbound_stale {
            self.delivery.stats.incomplete_reported += 1;
            self.delivery.handle(ev, true);
        }
    }

    fn on_health(&mut self) {
        if let Ok(now) = self.probes.counters() {
            health::report_losses(&now, &self.last);
            self.last = now;
        }
        self.output_losses.tick(&self.delivery.sinks.stats());
        if let Some(c) = self.collector.as_mut() {
            c.report_losses();
        }
        health::report_stale(&mut self.manager);
        // Exceptions that expired stop exempting in the kernel too.
        let p = &self.delivery.pipeline;
        let settings = self.blocking.settings();
        self.blocking
            .update(&mut self.probes, p.rules(), p.feeds(), settings);
        // The rule counts in status.json, when they changed.
        if *self.delivery.pipeline.rule_counts() != self.written_counts {
            self.written_counts = self.delivery.pipeline.rule_counts().clone();
            self.write_status();
        }
    }

    /// Applies one finished fetch: validation in the manager, then (if the
    /// content changed) a gapless switch of the feed set. Nothing already
    /// loaded is lost on any failure.
    async fn on_fetch_done(&mut self, done: FetchDone, ring: &mut RingBuf<MapData>) {
        let FetchDone {
            index,
            outcome,
            reply,
            ..
        } = done;
        let name = self.manager.states[index].config.name.clone();
        let before = self.manager.states[index].clone();
        let accepted = match self.manager.offer(index, outcome) {
            Ok(None) => {
                // Local files and tordirs are looked at every few seconds.
                if self.manager.states[index]
                    .config
                    .location()
                    .is_ok_and(|l| l.is_local())
                {
                    tracing::debug!("feed {name}: not modified");
                } else {
                    tracing::info!("feed {name}: not modified");
                }
                false
            }
            Ok(Some(accepted)) => {
                let switched = match self.manager.feed_set() {
                    Ok(set) => {
                        let d = &mut self.delivery;
                        switch::switch_feeds(set, &mut self.probes, d, ring).await
                    }
                    Err(e) => Err(e.to_string()),
                };
                match switched {
                    Ok(stats) => {
                        tracing::info!(
                            written = stats.written,
                            deleted = stats.deleted,
                            active_copy = stats.active,
                            "feed {name}: refreshed: {}",
                            accepted.counts
                        );
                        let current = self.manager.states[index].current.as_ref();
                        if let Some(consensus) = current.and_then(|f| f.data.consensus.as_ref()) {
                            tracing::info!("feed {name}: {consensus}");
                        }
                        true
                    }
                    Err(e) => {
                        tracing::error!(
                            "feed {name}: refresh not applied, keeping the current set: {e}"
                        );
                        self.manager.states[index] = before;
                        false
                    }
                }
            }
            Err(e) => {
                // The same failure again (a tor that has not written its
                // consensus yet, a mirror that stays down) is said once.
                if before.last_error.as_deref() == Some(e.to_string().as_str()) {
                    tracing::debug!("feed {name}: refresh rejected again: {e}");
                } else {
                    tracing::warn!(
                        "feed {name}: refresh rejected, keeping the current content: {e}"
                    );
                }
                false
            }
        };
        let next = self.manager.next_delay(index);
        tracing::debug!("feed {name}: next fetch in {next:?}");
        let _ = reply.send(Verdict { next, accepted });
        self.write_status();
        let status = self.status_line();
        self.notify.status(status);
    }

    /// SIGHUP: the new configuration's feeds (and state directory) in full
    /// or not at all; keys that need a restart are named and kept; output
    /// files are reopened (logrotate). The caller refreshes every feed.
    async fn on_sighup(&mut self, ring: &mut RingBuf<MapData>) {
        tracing::info!("SIGHUP: reloading the configuration and refreshing every feed now");
        self.notify.reloading();
        match (self.reload)() {
            Ok(new_cfg) => self.apply_reload(new_cfg, ring).await,
            Err(e) => tracing::error!("SIGHUP: keeping the running configuration: {e}"),
        }
        self.delivery.sinks.reopen_files();
        self.write_status();
        let status = self.status_line();
        self.notify.ready(status);
    }

    async fn apply_reload(&mut self, new_cfg: Config, ring: &mut RingBuf<MapData>) {
        // The rules: all of them or none (a bad file keeps the running ones).
        let checked = Rules::load(Some(&new_cfg.rules_dir))
            .map_err(|e| e.to_string())
            .and_then(|rules| {
                let feeds = self.delivery.pipeline.feeds();
                self.blocking.check(&rules, feeds).map(|()| rules)
            });
        match checked {
            Ok(rules) => {
                log_rules(&rules);
                self.delivery.pipeline.set_rules(rules);
            }
            Err(e) => tracing::error!("SIGHUP: keeping the running rules: {e}"),
        }
        let restart = self.cfg.restart_only_changes(&new_cfg);
        if !restart.is_empty() {
            tracing::warn!(
                "SIGHUP: {} changed, which takes effect only after a restart; the running values stay",
                restart.join(", ")
            );
        }
        // Nothing changes (not even state_dir) unless the whole new
        // configuration is applied.
        let next = check_state_dir(&new_cfg.state_dir)
            .map_err(|e| format!("state directory: {e}"))
            .map(|()| self.manager.reload(new_cfg.feed_settings()));
        let set = next.and_then(|next| match next.file_error() {
            Some((name, reason)) => Err(format!("feed {name}: {reason}")),
            None => next
                .feed_set()
                .map(|set| (next, set))
                .map_err(|e| e.to_string()),
        });
        let applied = match set {
            Ok((next, set)) => {
                let d = &mut self.delivery;
                switch::switch_feeds(set, &mut self.probes, d, ring)
                    .await
                    .map(|_| next)
            }
            Err(e) => Err(e),
        };
        match applied {
            Ok(next) => {
                self.manager = next;
                if new_cfg.state_dir != self.state_dir {
                    tracing::info!("state_dir is now {}", new_cfg.state_dir.display());
                    self.state_dir = new_cfg.state_dir.clone();
                }
                status::log_loaded(&self.manager, self.delivery.pipeline.feeds());
            }
            Err(e) => tracing::error!("SIGHUP: keeping the running feeds: {e}"),
        }
        // New rules, feed numbers or mode: the kernel's table follows.
        let settings = match new_cfg.blocking.mode {
            BlockMode::Off => self.blocking.settings(),
            mode => (mode, new_cfg.blocking.errno.kernel()),
        };
        let p = &mut self.delivery.pipeline;
        self.blocking
            .update(&mut self.probes, p.rules(), p.feeds(), settings);
        p.set_block_mode(self.blocking.mode);
    }

    /// Detach first so that nothing new arrives, then take what is left:
    /// the ring buffer, hits still pending in the kernel, open aggregation
    /// windows; then the outputs deliver or spool within the deadline.
    async fn shutdown(
        mut self,
        ring: &mut RingBuf<MapData>,
        gw_ring: Option<&mut RingBuf<MapData>>,
    ) -> Result<RunStats, SensorError> {
        tracing::info!("stopping: detaching probes and draining");
        self.notify.stopping();
        if let Some((_, task)) = self.endpoint.take() {
            task.abort();
        }
        self.probes.detach();
        self.delivery.drain(ring).await;
        if let (Some(gw), Some(gw_ring)) = (&self.gateway, gw_ring) {
            while self.delivery.drain_gateway_some(gw_ring, gw, DRAIN_CHUNK) {
                tokio::task::yield_now().await;
            }
        }
        // Flows still open are summarised as they stand.
        self.on_flow_sweep(true);
        if let Some(c) = self.collector.as_mut() {
            c.stop();
            c.sweep(true, &mut self.delivery);
        }
        let pending = self.probes.pending();
        self.delivery.stats.incomplete_reported += pending.len() as u64;
        for ev in &pending {
            self.delivery.handle(ev, true);
        }
        self.delivery.write_summaries(true);
        let counters = self.probes.counters().unwrap_or_default();
        health::report_losses(&counters, &self.last);
        drop(self.probes);
        let Delivery {
            sinks, mut stats, ..
        } = self.delivery;
        stats.kernel = counters;
        // Local outputs are flushed; remote ones try to deliver, and what
        // is left goes to their spool for the next start.
        stats.outputs = sinks.shutdown(self.cfg.shutdown_deadline).await;
        self.output_losses.tick(&stats.outputs);
        tracing::info!(
            alerts = stats.alerts_written,
            connections = stats.connections_reported,
            summaries = stats.summaries_written,
            incomplete = stats.incomplete_reported,
            lost_ringbuf = counters.ringbuf_full,
            lost_pending = counters.pending_full,
            "stopped"
        );
        if let Some(path) = &self.cfg.stats_file {
            let json = serde_json::to_vec_pretty(&stats).expect("stats serialize");
            crate::statedir::write_file_atomic(path, &json, 0o640)?;
        }
        Ok(stats)
    }
}

impl Polled {
    fn register(probes: &mut Probes, dns: bool, gateway: bool) -> Result<Polled, SensorError> {
        // SAFETY (both registrations): the ring buffer and the log reader
        // own their fds, and the AsyncFd owns them until the end of the run.
        let ring =
            unsafe { AsyncFd::register_with_interest(probes.take_events()?, Interest::READABLE) }
                .map_err(|e| io_err("polling the ring buffer")(e.into()))?;
        let exec_ring = unsafe {
            AsyncFd::register_with_interest(probes.take_exec_events()?, Interest::READABLE)
        }
        .map_err(|e| io_err("polling the exec ring buffer")(e.into()))?;
        let dns_ring = if dns {
            Some(
                unsafe {
                    AsyncFd::register_with_interest(probes.take_dns_events()?, Interest::READABLE)
                }
                .map_err(|e| io_err("polling the DNS ring buffer")(e.into()))?,
            )
        } else {
            None
        };
        let kernel_log = match probes.take_logger() {
            Some(l) => Some(
                unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                    .map_err(|e| io_err("polling the kernel log")(e.into()))?,
            ),
            None => None,
        };
        let gw_ring = if gateway {
            Some(
                unsafe {
                    AsyncFd::register_with_interest(
                        probes.take_gateway_events()?,
                        Interest::READABLE,
                    )
                }
                .map_err(|e| io_err("polling the gateway ring buffer")(e.into()))?,
            )
        } else {
            None
        };
        Ok(Polled {
            ring,
            exec_ring,
            dns_ring,
            gw_ring,
            collector_rx: None,
            kernel_log,
        })
    }
}
