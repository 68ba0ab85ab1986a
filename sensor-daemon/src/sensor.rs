//! The running sensor: load feeds, arm the kernel, turn events into alerts on
//! stdout, report losses, and shut down cleanly on SIGINT/SIGTERM.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use aya::maps::{MapData, RingBuf};
use sensor_common::ConnEvent;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use crate::alert::{AlertInput, SensorIdentity, ecs};
use crate::config::{ConfigError, SensorConfig};
use crate::enrich::ProcessCache;
use crate::event::{BootClock, Connection, decode};
use crate::feed::{Feed, FeedError, FeedSet};
use crate::kernel::{self, Counters, KernelError, LoadOptions, Probes};
use crate::rules::{RuleError, Rules};

#[derive(Debug, thiserror::Error)]
pub enum SensorError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error(transparent)]
    Rules(#[from] RuleError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Loads the given feed files, or the embedded snapshot when there are none.
/// Bad lines and reserved entries are logged; an unreadable or empty file is
/// an error naming the file.
pub fn load_feeds(paths: &[PathBuf], allow_reserved: bool) -> Result<FeedSet, FeedError> {
    let feeds = if paths.is_empty() {
        vec![Feed::embedded()]
    } else {
        paths
            .iter()
            .map(|p| Feed::load_file(p, allow_reserved))
            .collect::<Result<Vec<_>, _>>()?
    };
    for feed in &feeds {
        feed.log_problems();
    }
    let set = FeedSet::new(feeds)?;
    for info in set.feeds() {
        tracing::info!("feed loaded: {info}");
    }
    Ok(set)
}

/// What happened during a run, written to `stats_file` at exit.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RunStats {
    pub kernel: Counters,
    /// Alerts written to the output.
    pub alerts_written: u64,
    /// Hits still pending in the kernel at shutdown, reported as incomplete.
    pub incomplete_reported: u64,
    /// Ring-buffer records that could not be decoded.
    pub decode_errors: u64,
    /// Alerts that could not be written (output closed or failing).
    pub write_errors: u64,
}

/// Turns kernel events into alert lines.
struct Pipeline<W: Write> {
    feeds: FeedSet,
    rules: Rules,
    sensor: SensorIdentity,
    clock: BootClock,
    processes: ProcessCache,
    out: W,
    stats: RunStats,
}

impl<W: Write> Pipeline<W> {
    fn handle(&mut self, ev: &ConnEvent, incomplete: bool) {
        let mut conn = match Connection::from_event(ev, &self.clock) {
            Ok(c) => c,
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::warn!("dropped an undecodable kernel event: {e}");
                return;
            }
        };
        conn.incomplete = incomplete;
        let process = conn.process.as_ref().map(|p| self.processes.lookup(p));
        let listing = self.feeds.lookup(conn.remote.ip());
        let doc = ecs(&AlertInput {
            conn: &conn,
            process: process.as_ref(),
            rule: self.rules.for_direction(conn.direction),
            listing: listing.as_ref(),
            feeds: &self.feeds,
            sensor: &self.sensor,
        });
        let written = serde_json::to_writer(&mut self.out, &doc)
            .map_err(io::Error::from)
            .and_then(|()| self.out.write_all(b"\n"));
        match written {
            Ok(()) => self.stats.alerts_written += 1,
            Err(e) => {
                self.stats.write_errors += 1;
                if self.stats.write_errors == 1 {
                    tracing::error!(
                        "cannot write alerts to stdout: {e} (counting further failures)"
                    );
                }
            }
        }
    }

    fn drain(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
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
        if let Err(e) = self.out.flush() {
            self.stats.write_errors += 1;
            tracing::error!("cannot flush alerts: {e}");
        }
    }
}

/// Logs a health event for every kind of loss that grew since `last`.
fn report_losses(now: &Counters, last: &Counters) {
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

/// Runs the sensor until SIGINT or SIGTERM.
pub async fn run(cfg: SensorConfig) -> Result<RunStats, SensorError> {
    cfg.validate()?;
    let feeds = load_feeds(&cfg.feeds, cfg.allow_reserved)?;
    let rules = Rules::builtin()?;
    let io_err = |what| move |source| SensorError::Io { what, source };
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?;

    kernel::preflight()?;
    let mut probes = Probes::load(
        &LoadOptions {
            audit_all: cfg.audit_all,
            ring_buffer_bytes: cfg.ring_buffer_bytes,
            kernel_log: cfg.kernel_log,
        },
        &feeds,
    )?;
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

    tracing::info!(
        prefixes = feeds.len(),
        feeds = feeds.feeds().len(),
        accept_attribution = probes.accept_probe,
        audit_all = cfg.audit_all,
        "torsensor armed: watching TCP connect and accept"
    );

    let mut pipeline = Pipeline {
        feeds,
        rules,
        sensor: SensorIdentity::local(),
        clock: BootClock::now(),
        processes: ProcessCache::host(),
        out: BufWriter::with_capacity(64 << 10, io::stdout()),
        stats: RunStats::default(),
    };
    let mut health = tokio::time::interval(cfg.health_interval);
    let mut last = Counters::default();

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(io_err("polling the ring buffer"))?;
                pipeline.drain(guard.get_inner_mut());
                guard.clear_ready();
            }
            guard = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                let mut guard = guard.map_err(io_err("polling the kernel log"))?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = health.tick() => {
                if let Ok(now) = probes.counters() {
                    report_losses(&now, &last);
                    last = now;
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }

    tracing::info!("stopping: detaching probes and draining");
    // Detach first so that nothing new arrives, then take what is left: the
    // ring buffer, then hits still pending in the kernel.
    probes.detach();
    pipeline.drain(ring.get_mut());
    let pending = probes.pending();
    pipeline.stats.incomplete_reported = pending.len() as u64;
    for ev in &pending {
        pipeline.handle(ev, true);
    }
    let _ = pipeline.out.flush();
    let counters = probes.counters().unwrap_or_default();
    report_losses(&counters, &last);
    pipeline.stats.kernel = counters;
    drop(probes);
    let stats = pipeline.stats;
    tracing::info!(
        alerts = stats.alerts_written,
        incomplete = stats.incomplete_reported,
        lost_ringbuf = counters.ringbuf_full,
        lost_pending = counters.pending_full,
        "stopped"
    );
    if let Some(path) = &cfg.stats_file {
        let json = serde_json::to_vec_pretty(&stats).expect("stats serialize");
        std::fs::write(path, json).map_err(io_err("writing the stats file"))?;
    }
    Ok(stats)
}
