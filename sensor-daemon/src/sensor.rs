//! The running sensor: load feeds, arm the kernel, turn events into alerts on
//! stdout, report losses, and shut down cleanly on SIGINT/SIGTERM.

use std::io;
use std::path::Path;
use std::time::SystemTime;

use aya::maps::{MapData, RingBuf};
use sensor_common::ConnEvent;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::alert::aggregate::Aggregator;
use crate::alert::{Alert, SensorIdentity};
use crate::config::{ConfigError, SensorConfig};
use crate::event::{BootClock, decode};
use crate::feed::FeedSet;
use crate::feed::manager::{FeedManager, Status};
use crate::feed::refresh::{FetchDone, Refresher, Verdict};
use crate::feed::set::SetError;
use crate::kernel::{
    self, HookPlan, InboundChoice, KernelCounters, KernelError, LoadOptions, Probes,
};
use crate::pipeline::{HostSource, Now};
use crate::privileges::{self, PrivilegeError};
use crate::rules::{RuleError, Rules};
use crate::sink::{AlertMeta, SinkError, Sinks};
use crate::statedir::{Dir, STATE_DIR_MODE, StateDirError};

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
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Re-reads the configuration (file, flags, environment) on SIGHUP.
pub type Reload = Box<dyn Fn() -> Result<SensorConfig, ConfigError>>;

/// Loads what is available without the network (local files, the cache,
/// else the embedded snapshot) and logs where each feed came from and how
/// old it is.
pub fn load_offline(cfg: &SensorConfig) -> Result<(FeedManager, FeedSet), SensorError> {
    let manager = FeedManager::load_offline(cfg);
    // A local file is configuration: one that cannot be loaded is an error,
    // not a reason to fall back to the embedded snapshot.
    if let Some((name, reason)) = manager.file_error() {
        return Err(SensorError::FeedFile { name, reason });
    }
    let set = manager.feed_set()?;
    log_loaded(&manager, &set);
    Ok((manager, set))
}

fn log_loaded(manager: &FeedManager, set: &FeedSet) {
    let now = SystemTime::now();
    if manager.needs_embedded() && !manager.states.is_empty() {
        tracing::warn!(
            "no configured feed has content yet (no cache, no readable file): using the embedded snapshot until a refresh succeeds"
        );
    }
    for feed in set.feeds() {
        let age = feed
            .age(now)
            .map(crate::feed::format_age)
            .unwrap_or_else(|| "unknown".into());
        let from = match feed.origin {
            crate::feed::Origin::Embedded => "the embedded snapshot".to_owned(),
            origin => format!("{origin} {}", feed.location),
        };
        tracing::info!(
            "feed {} loaded from {from} (version {}, age {age}): {}",
            feed.name,
            feed.data
                .version
                .map(crate::time::rfc3339_secs)
                .unwrap_or_else(|| "none".into()),
            feed.counts()
        );
    }
    for state in manager.states.iter().filter(|s| s.current.is_none()) {
        tracing::warn!(
            "feed {} has no content yet ({}); it will be fetched",
            state.config.name,
            state.last_error.as_deref().unwrap_or("no cached copy")
        );
    }
}

/// `status.json`: the feeds (see [`Status`]) and the hooks in use.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StatusFile {
    #[serde(flatten)]
    pub feeds: Status,
    /// Absent in files written before the hook plan existed.
    pub hooks: Option<HookPlan>,
}

/// Writes `status.json` (mode 0644) in the state directory, checked again
/// first (read by `torsensor feed status`). Failures are logged, not fatal.
fn write_status(state_dir: &Path, feeds: Status, hooks: Option<&HookPlan>) {
    let status = StatusFile {
        feeds,
        hooks: hooks.cloned(),
    };
    let bytes = serde_json::to_vec_pretty(&status).expect("status serializes");
    let written = Dir::open(state_dir, STATE_DIR_MODE)
        .and_then(|dir| dir.write_atomic("status.json", &bytes, 0o644, true));
    if let Err(e) = written {
        tracing::warn!("cannot write the feed status: {e}");
    }
}

/// Checks (creating them if missing) the state directory and `feeds/`:
/// a start or a reload with a state directory that another user owns or
/// can write to is refused.
pub fn check_state_dir(state_dir: &Path) -> Result<(), StateDirError> {
    Dir::open(state_dir, STATE_DIR_MODE)?.subdir("feeds", STATE_DIR_MODE)?;
    Ok(())
}

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
    /// Hits still pending in the kernel at shutdown, reported as incomplete.
    pub incomplete_reported: u64,
    /// Inbound hits no process used within `inbound_wait`, reported
    /// without a process.
    pub inbound_unattributed: u64,
    /// Ring-buffer records that could not be decoded.
    pub decode_errors: u64,
    /// Per output: delivered, failed attempts, dropped, spooled.
    pub outputs: Vec<crate::sink::SinkStats>,
}

/// Records handled before the loop yields to the output tasks.
const DRAIN_CHUNK: usize = 256;

/// The [`crate::pipeline::Pipeline`] (events to alerts, no I/O) and the
/// outputs it feeds.
struct Pipeline {
    core: crate::pipeline::Pipeline,
    sinks: Sinks,
    stats: RunStats,
}

impl Pipeline {
    fn handle(&mut self, ev: &ConnEvent, incomplete: bool) {
        match self.core.handle(ev, incomplete, Now::current()) {
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
    fn write_summaries(&mut self, all: bool) {
        let alerts = if all {
            self.core.flush()
        } else {
            self.core.due(std::time::Instant::now())
        };
        for alert in &alerts {
            self.write(alert);
        }
    }

    /// Hands one alert to every output (never blocks: each output has its
    /// own queue and task).
    fn write(&mut self, alert: &Alert) {
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
        self.stats.alerts_written += 1;
        self.stats.connections_reported += alert.torsensor.count.unwrap_or(1);
        if alert.torsensor.summary {
            self.stats.summaries_written += 1;
        }
    }

    /// Handles up to `max` ring-buffer records; true if more may be left.
    fn drain_some(&mut self, ring: &mut RingBuf<MapData>, max: usize) -> bool {
        for _ in 0..max {
            let Some(item) = ring.next() else {
                return false;
            };
            match decode(&item) {
                Ok(ev) => {
                    drop(item);
                    self.handle(&ev, false);
                }
                Err(e) => {
                    self.stats.decode_errors += 1;
                    tracing::warn!("dropped a kernel record: {e}");
                }
            }
        }
        true
    }

    /// Handles every record in the ring buffer, in chunks, letting the
    /// output tasks (same thread) run between chunks so that their queues
    /// drain as fast as alerts arrive.
    async fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while self.drain_some(ring, DRAIN_CHUNK) {
            tokio::task::yield_now().await;
        }
    }
}

/// Logs a health event for every kind of loss that grew since `last`.
fn report_losses(now: &KernelCounters, last: &KernelCounters) {
    let ring = now.ringbuf_full - last.ringbuf_full;
    if ring > 0 {
        tracing::warn!(
            lost = ring,
            total_lost = now.ringbuf_full,
            "health: {ring} events lost because the kernel ring buffer was full; raise --ring-buffer-bytes"
        );
    }
    let pending = now.pending_full - last.pending_full;
    if pending > 0 {
        tracing::warn!(
            lost = pending,
            total_lost = now.pending_full,
            "health: {pending} hits lost because the pending-connection map was full"
        );
    }
}

/// The hook plan line, once: a warning when the plan is degraded.
fn log_plan(plan: Option<&HookPlan>) {
    match plan {
        Some(plan) if plan.degraded.is_some() => tracing::warn!("hook plan: {plan}"),
        Some(plan) => tracing::info!("hook plan: {plan}"),
        None => {}
    }
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
    let probes = Probes::load(&LoadOptions::of(&cfg), &FeedSet::default())?;
    Ok(probes.plan().cloned().expect("load chooses a plan"))
}

/// Runs the sensor until SIGINT or SIGTERM. SIGHUP reloads the
/// configuration through `reload` and refreshes every feed at once.
pub async fn run(cfg: SensorConfig, reload: Reload) -> Result<RunStats, SensorError> {
    cfg.validate()?;
    let rules = Rules::builtin()?;
    let io_err = |what| move |source| SensorError::Io { what, source };
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?;
    let mut sighup = signal(SignalKind::hangup()).map_err(io_err("installing SIGHUP handler"))?;

    // Privileges first (the most useful first error), then the state
    // directory, checked before anything is read from it.
    kernel::preflight()?;
    check_state_dir(&cfg.state_dir)?;
    let (mut manager, feeds) = load_offline(&cfg)?;
    // Outputs open their files, sockets and spools before the kernel is
    // touched: a path that cannot be used stops the start with nothing loaded.
    let sinks = Sinks::start(&cfg.outputs_or_stdout(), &cfg.state_dir, "torsensor")?;
    let missing = privileges::missing_for_proc();
    if !missing.is_empty() {
        tracing::warn!(
            "without {}, process.executable (and other /proc details) stay empty for processes of other users",
            missing.join(" and ")
        );
    }
    let mut probes = Probes::load(&LoadOptions::of(&cfg), &feeds)?;
    log_plan(probes.plan());
    let dropped = privileges::drop_unneeded()?;
    tracing::info!(
        "privileges: kept {} (README, \"Security\"); {} dropped from the bounding set{}; no_new_privs set",
        dropped.kept.join(", "),
        dropped.bounding_dropped,
        if dropped.bounding_left.is_empty() {
            String::new()
        } else {
            format!(
                " ({} left there: no CAP_SETPCAP to change it)",
                dropped.bounding_left.join(", ")
            )
        }
    );
    // SAFETY (both registrations): the ring buffer and the log reader own
    // their fds, and the AsyncFd owns them until the end of this function.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(probes.take_events()?, Interest::READABLE) }
            .map_err(|e| io_err("polling the ring buffer")(e.into()))?;
    let mut kernel_log = match probes.take_logger() {
        Some(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|e| io_err("polling the kernel log")(e.into()))?,
        ),
        None => None,
    };

    // status.json first: whoever waits for "armed" may read it at once.
    let mut state_dir = cfg.state_dir.clone();
    write_status(
        &state_dir,
        manager.status(&feeds, SystemTime::now()),
        probes.plan(),
    );
    tracing::info!(
        prefixes = feeds.len(),
        or_ports = feeds.or_ports().len(),
        feeds = feeds.feeds().len(),
        audit_all = cfg.audit_all,
        "torsensor armed: watching TCP connect and accept"
    );
    let mut refresher = Refresher::new();
    refresher.restart(&manager, false);

    let mut pipeline = Pipeline {
        core: crate::pipeline::Pipeline::new(
            feeds,
            rules,
            SensorIdentity::local(),
            BootClock::now(),
            HostSource::new(),
            Aggregator::new(cfg.aggregation_window, 10_000),
        ),
        sinks,
        stats: RunStats::default(),
    };
    let mut health = tokio::time::interval(cfg.health_interval);
    let mut summaries = tokio::time::interval(std::time::Duration::from_secs(1));
    // Inbound hits no process has used within `inbound_wait` are sent
    // without one; checked a few times per wait.
    let mut sweep =
        tokio::time::interval((cfg.inbound_wait / 4).max(std::time::Duration::from_millis(50)));
    let mut last = KernelCounters::default();
    // Output losses (queue, spool, refused) as health events too.
    let mut output_losses = crate::sink::LossReport::default();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(io_err("polling the ring buffer"))?;
                let more = pipeline.drain_some(guard.get_inner_mut(), DRAIN_CHUNK);
                if !more {
                    guard.clear_ready();
                }
                drop(guard);
                if more {
                    // Let the output tasks take what was just queued.
                    tokio::task::yield_now().await;
                }
            }
            guard = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                let mut guard = guard.map_err(io_err("polling the kernel log"))?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Some(done) = refresher.rx.recv() => {
                if done.generation == refresher.generation() {
                    // Events matched against the old set are read first.
                    pipeline.drain(ring.get_mut()).await;
                    on_fetch_done(done, &mut manager, &mut probes, &mut pipeline);
                    write_status(&state_dir, manager.status(pipeline.core.feeds(), SystemTime::now()), probes.plan());
                }
            }
            _ = sweep.tick() => {
                // A hit a program claimed is no longer in the map, so the
                // sweep cannot send it twice; no drain needed first.
                let swept = probes.sweep(cfg.inbound_wait);
                for ev in &swept.inbound {
                    pipeline.stats.inbound_unattributed += 1;
                    pipeline.handle(ev, false);
                }
                for ev in &swept.outbound_stale {
                    pipeline.stats.incomplete_reported += 1;
                    pipeline.handle(ev, true);
                }
            }
            _ = summaries.tick(), if pipeline.core.aggregating() => {
                pipeline.write_summaries(false);
            }
            _ = health.tick() => {
                if let Ok(now) = probes.counters() {
                    report_losses(&now, &last);
                    last = now;
                }
                output_losses.tick(&pipeline.sinks.stats());
                for (name, age, stale) in manager.stale_changes(SystemTime::now()) {
                    let age = crate::feed::format_age(age);
                    if stale {
                        tracing::warn!("health: feed {name} is stale: {age} old");
                    } else {
                        tracing::info!("health: feed {name} is fresh again ({age} old)");
                    }
                }
            }
            _ = sighup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration and refreshing every feed now");
                match reload().and_then(|c| c.validate().map(|()| c)) {
                    Ok(new_cfg) => {
                        let restart = cfg.restart_only_changes(&new_cfg);
                        if !restart.is_empty() {
                            tracing::warn!(
                                "SIGHUP: {} changed, which takes effect only after a restart; the running values stay",
                                restart.join(", ")
                            );
                        }
                        // Nothing changes (not even state_dir) unless the
                        // whole new configuration is applied.
                        let next = check_state_dir(&new_cfg.state_dir)
                            .map_err(|e| format!("state directory: {e}"))
                            .map(|()| manager.reload(&new_cfg));
                        let set = next.and_then(|next| match next.file_error() {
                            Some((name, reason)) => Err(format!("feed {name}: {reason}")),
                            None => next.feed_set().map(|set| (next, set)).map_err(|e| e.to_string()),
                        });
                        match set {
                            Ok((next, set)) => {
                                pipeline.drain(ring.get_mut()).await;
                                match probes.apply_feeds(&set) {
                                    Ok(_) => {
                                        manager = next;
                                        if new_cfg.state_dir != state_dir {
                                            tracing::info!("state_dir is now {}", new_cfg.state_dir.display());
                                            state_dir = new_cfg.state_dir.clone();
                                        }
                                        log_loaded(&manager, &set);
                                        pipeline.core.switch_feeds(set);
                                    }
                                    Err(e) => tracing::error!("SIGHUP: keeping the running feeds: {e}"),
                                }
                            }
                            Err(e) => tracing::error!("SIGHUP: keeping the running feeds: {e}"),
                        }
                    }
                    Err(e) => tracing::error!("SIGHUP: keeping the running configuration: {e}"),
                }
                refresher.restart(&manager, true);
                pipeline.sinks.reopen_files();
                write_status(&state_dir, manager.status(pipeline.core.feeds(), SystemTime::now()), probes.plan());
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    refresher.stop();
    tracing::info!("stopping: detaching probes and draining");
    // Detach first so that nothing new arrives, then take what is left: the
    // ring buffer, then hits still pending in the kernel.
    probes.detach();
    pipeline.drain(ring.get_mut()).await;
    let pending = probes.pending();
    pipeline.stats.incomplete_reported += pending.len() as u64;
    for ev in &pending {
        pipeline.handle(ev, true);
    }
    pipeline.write_summaries(true);
    let counters = probes.counters().unwrap_or_default();
    report_losses(&counters, &last);
    drop(probes);
    let Pipeline {
        sinks, mut stats, ..
    } = pipeline;
    stats.kernel = counters;
    // Local outputs are flushed; remote ones try to deliver, and what is
    // left goes to their spool for the next start.
    stats.outputs = sinks.shutdown(std::time::Duration::from_secs(3)).await;
    output_losses.tick(&stats.outputs);
    tracing::info!(
        alerts = stats.alerts_written,
        connections = stats.connections_reported,
        summaries = stats.summaries_written,
        incomplete = stats.incomplete_reported,
        lost_ringbuf = counters.ringbuf_full,
        lost_pending = counters.pending_full,
        "stopped"
    );
    if let Some(path) = &cfg.stats_file {
        let json = serde_json::to_vec_pretty(&stats).expect("stats serialize");
        crate::statedir::write_file_atomic(path, &json, 0o640)?;
    }
    Ok(stats)
}

/// Applies one finished fetch: validation in the manager, then (if the
/// content changed) a gapless switch of the kernel maps. Nothing already
/// loaded is lost on any failure.
fn on_fetch_done(
    done: FetchDone,
    manager: &mut FeedManager,
    probes: &mut Probes,
    pipeline: &mut Pipeline,
) {
    let FetchDone {
        index,
        outcome,
        reply,
        ..
    } = done;
    let name = manager.states[index].config.name.clone();
    let before = manager.states[index].clone();
    let accepted = match manager.offer(index, outcome) {
        Ok(None) => {
            tracing::info!("feed {name}: not modified");
            false
        }
        Ok(Some(accepted)) => {
            let set = manager.feed_set();
            let applied = set.map_err(|e| e.to_string()).and_then(|set| {
                probes
                    .apply_feeds(&set)
                    .map(|stats| (set, stats))
                    .map_err(|e| e.to_string())
            });
            match applied {
                Ok((set, stats)) => {
                    tracing::info!(
                        written = stats.written,
                        deleted = stats.deleted,
                        active_copy = stats.active,
                        "feed {name}: refreshed: {}",
                        accepted.counts
                    );
                    pipeline.core.switch_feeds(set);
                    true
                }
                Err(e) => {
                    tracing::error!(
                        "feed {name}: refresh not applied, keeping the current set: {e}"
                    );
                    manager.states[index] = before;
                    false
                }
            }
        }
        Err(e) => {
            tracing::warn!("feed {name}: refresh rejected, keeping the current content: {e}");
            false
        }
    };
    let next = manager.next_delay(index);
    tracing::debug!("feed {name}: next fetch in {next:?}");
    let _ = reply.send(Verdict { next, accepted });
}
