//! The sensor's conversation with systemd (`sd_notify(3)`, through the
//! `sd-notify` crate), and nothing else: this module owns every message the
//! service manager gets.
//!
//! - `READY=1` once the programs are attached and a feed set is armed
//!   ([`Notify::ready`]), so `systemctl start` returns only then
//!   (`Type=notify`);
//! - `WATCHDOG=1` from the sensor's own event loop: [`Notify::tick`] is a
//!   branch of the `select!` that reads the ring buffer, so a loop that is
//!   stuck stops pinging and systemd's `WatchdogSec=` kills and restarts
//!   it. Pings go out at half of `WATCHDOG_USEC`, only when systemd enabled
//!   the watchdog for this very process (`WATCHDOG_PID`);
//! - `STATUS=`: hook plan, kernel entries, feed versions and alerts written
//!   (`systemctl status` shows it), sent on every tick when it changed and
//!   at once on a change the loop knows of ([`Notify::status`]);
//! - `RELOADING=1` with `MONOTONIC_USEC` when a SIGHUP starts, `READY=1`
//!   when it is done; `STOPPING=1` when shutdown starts.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd as `Type=notify`) all of
//! it is a no-op and the tick never fires.
//!
//! Also the **test-only fault switch** `TORSENSOR_TEST_HANG_AFTER_SECS=N`,
//! which exists only for the watchdog test (`cargo xtask systemd-test`): read
//! once at start, it makes the event loop block itself (a blocking sleep
//! inside the loop, ring-buffer events included, not just the pings) N
//! seconds after start, so that the watchdog must fire. Only whoever sets
//! the daemon's environment (root, for a unit) can turn it on, and the
//! daemon logs a warning at start when it is set.
//!
//! Owned by the daemon layer: it reads the hook plan and the feed set to
//! say what is armed, and is driven by the run loop only.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::feed::FeedSet;
use crate::kernel::HookPlan;

/// The hidden fault switch (see the module documentation).
pub const HANG_AFTER_ENV: &str = "TORSENSOR_TEST_HANG_AFTER_SECS";

/// How often `STATUS=` is refreshed when no watchdog asks for more.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// The notifier the run loop holds (see the module documentation).
pub struct Notify {
    /// `NOTIFY_SOCKET` is set.
    enabled: bool,
    /// The watchdog timeout, if systemd enabled it for this process.
    watchdog: Option<Duration>,
    ticker: Option<tokio::time::Interval>,
    last_status: String,
    hang_at: Option<Instant>,
    warned: bool,
}

impl Notify {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC`/`WATCHDOG_PID` and the fault
    /// switch, once. Call it inside the runtime (the tick is a tokio
    /// interval).
    pub fn from_env() -> Notify {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = sd_notify::watchdog_enabled().filter(|d| enabled && !d.is_zero());
        let hang_after = std::env::var(HANG_AFTER_ENV).ok().and_then(|v| {
            let secs = v.trim().parse::<u64>();
            if secs.is_err() {
                tracing::warn!("{HANG_AFTER_ENV}={v:?} is not a number of seconds: ignored");
            }
            secs.ok().map(Duration::from_secs)
        });
        if let Some(after) = hang_after {
            tracing::warn!(
                "{HANG_AFTER_ENV} is set: TEST FAULT, the event loop will hang after {after:?} (for the watchdog test only)"
            );
        }
        let period = tick_period(watchdog);
        let ticker = (enabled || hang_after.is_some()).then(|| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        if let Some(w) = watchdog {
            tracing::info!("systemd watchdog: {w:?}, pinging every {period:?} from the event loop");
        }
        Notify {
            enabled,
            watchdog,
            ticker,
            last_status: String::new(),
            hang_at: hang_after.map(|a| Instant::now() + a),
            warned: false,
        }
    }

    /// Completes at every tick; never when systemd is not listening. A
    /// branch of the run loop's `select!` (cancellation-safe).
    pub async fn tick(&mut self) {
        match &mut self.ticker {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// The loop is alive: `WATCHDOG=1` (when enabled) and `STATUS=` if it
    /// changed. This is where the test fault switch blocks the loop.
    pub fn alive(&mut self, status: String) {
        if self.hang_at.is_some_and(|at| Instant::now() >= at) {
            tracing::warn!("{HANG_AFTER_ENV}: TEST FAULT: the event loop hangs now");
            loop {
                // Blocks the whole (single-threaded) runtime on purpose.
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        if self.watchdog.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
        self.status(status);
    }

    /// `READY=1` with the status: armed (at start, or a SIGHUP is done).
    pub fn ready(&mut self, status: String) {
        if !self.enabled {
            return;
        }
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        self.last_status = status;
    }

    /// `RELOADING=1` and `MONOTONIC_USEC`: a SIGHUP is being handled.
    pub fn reloading(&mut self) {
        if !self.enabled {
            return;
        }
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[
                NotifyState::Reloading,
                now,
                NotifyState::Status("reloading the configuration and refreshing every feed"),
            ]),
            Err(e) => tracing::warn!("systemd notification: cannot read the monotonic clock: {e}"),
        }
    }

    /// `STATUS=` if it changed.
    pub fn status(&mut self, status: String) {
        if !self.enabled || status == self.last_status {
            return;
        }
        self.send(&[NotifyState::Status(&status)]);
        self.last_status = status;
    }

    /// `STOPPING=1`: shutdown has started.
    pub fn stopping(&mut self) {
        if self.enabled {
            self.send(&[
                NotifyState::Stopping,
                NotifyState::Status("stopping: detaching probes and draining"),
            ]);
        }
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if let Err(e) = sd_notify::notify(states) {
            // Once: a manager that went away would otherwise flood the log.
            if !self.warned {
                self.warned = true;
                tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
            }
        }
    }
}

/// Half the watchdog timeout (as `sd_watchdog_enabled(3)` advises), else
/// [`STATUS_EVERY`].
fn tick_period(watchdog: Option<Duration>) -> Duration {
    match watchdog {
        Some(w) => (w / 2).max(Duration::from_millis(10)),
        None => STATUS_EVERY,
    }
}

/// The one-line `STATUS=`: hook plan, kernel entries, each feed's version
/// and origin, alerts written so far.
pub fn status_line(plan: Option<&HookPlan>, feeds: &FeedSet, alerts: u64) -> String {
    let mut s = String::from("armed");
    if let Some(plan) = plan {
        let _ = write!(s, "; inbound hooks {}", plan.inbound);
        if plan.degraded.is_some() {
            s.push_str(" (DEGRADED)");
        }
    }
    let _ = write!(
        s,
        "; {} prefixes, {} OR ports; feeds",
        feeds.len(),
        feeds.or_ports().len()
    );
    for (i, feed) in feeds.feeds().iter().enumerate() {
        let version = feed
            .data
            .version
            .map(crate::time::rfc3339_secs)
            .unwrap_or_else(|| "none".into());
        let _ = write!(
            s,
            "{} {} {version} ({})",
            if i == 0 { "" } else { "," },
            feed.name,
            feed.origin
        );
    }
    let _ = write!(s, "; {alerts} alerts");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_pinged_at_half_its_timeout() {
        assert_eq!(
            tick_period(Some(Duration::from_secs(30))),
            Duration::from_secs(15)
        );
        assert_eq!(tick_period(None), STATUS_EVERY);
    }

    #[test]
    fn status_names_the_feeds_their_versions_and_the_alert_count() {
        let feeds = crate::feed::Feed::embedded()
            .into_iter()
            .map(std::sync::Arc::new);
        let set = FeedSet::new(feeds.collect()).unwrap();
        let line = status_line(None, &set, 7);
        assert!(line.starts_with("armed; "), "{line}");
        assert!(
            line.contains("embedded-tor-exits 2024-03-12T14:28:38Z (embedded)"),
            "{line}"
        );
        assert!(
            line.contains(", embedded-tor-relays 2024-03-12T11:00:00Z (embedded)"),
            "{line}"
        );
        assert!(line.ends_with("; 7 alerts"), "{line}");
    }
}
