//! What the daemon tells people and other processes about itself: the
//! feeds loaded at start (and after a reload), and `status.json` in the
//! state directory (read by `torsensor feed status`).

use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use super::SensorError;
use super::selftest::SelftestResult;
use crate::config::Config;
use crate::feed::manager::{FeedManager, Status};
use crate::feed::{FeedSet, Origin, format_age};
use crate::kernel::HookPlan;
use crate::statedir::{Dir, STATE_DIR_MODE, StateDirError};
use crate::time::rfc3339_secs;

/// Loads what is available without the network (local files, the cache,
/// else the embedded snapshot) and logs where each feed came from and how
/// old it is.
pub fn load_offline(cfg: &Config) -> Result<(FeedManager, FeedSet), SensorError> {
    let manager = FeedManager::load_offline(cfg.feed_settings());
    // A local file is configuration: one that cannot be loaded is an error,
    // not a reason to fall back to the embedded snapshot.
    if let Some((name, reason)) = manager.file_error() {
        return Err(SensorError::FeedFile { name, reason });
    }
    let set = manager.feed_set()?;
    log_loaded(&manager, &set);
    Ok((manager, set))
}

/// One line per loaded feed (origin, version, age, counts), and a warning
/// per configured feed still without content.
pub(super) fn log_loaded(manager: &FeedManager, set: &FeedSet) {
    let now = SystemTime::now();
    if manager.needs_embedded() && !manager.states.is_empty() {
        tracing::warn!(
            "no configured feed has content yet (no cache, no readable file): using the embedded snapshot until a refresh succeeds"
        );
    }
    for feed in set.feeds() {
        let age = feed
            .age(now)
            .map(format_age)
            .unwrap_or_else(|| "unknown".into());
        let from = match feed.origin {
            Origin::Embedded => "the embedded snapshot".to_owned(),
            origin => format!("{origin} {}", feed.location),
        };
        tracing::info!(
            "feed {} loaded from {from} (version {}, age {age}): {}",
            feed.name,
            feed.data
                .version
                .map(rfc3339_secs)
                .unwrap_or_else(|| "none".into()),
            feed.counts()
        );
        if let Some(consensus) = &feed.data.consensus {
            tracing::info!("feed {}: {consensus}", feed.name);
        }
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
    /// Where the metrics and health endpoint listens (absent: off, or a
    /// file written before it existed).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// The last self-test of this run, if any.
    #[serde(default)]
    pub selftest: Option<SelftestResult>,
    /// What the rules decided since `started` (read by `rules check`).
    #[serde(default)]
    pub rules: Option<RulesStatus>,
}

/// The rule counts of a running sensor, and since when.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RulesStatus {
    pub started: String,
    #[serde(flatten)]
    pub counts: crate::pipeline::RuleCounts,
}

/// Writes `status.json` (mode 0644) in the state directory, checked again
/// first (read by `torsensor feed status`). Failures are logged, not fatal.
pub(super) fn write_status(
    state_dir: &Path,
    feeds: Status,
    hooks: Option<&HookPlan>,
    metrics: Option<SocketAddr>,
    selftest: Option<&SelftestResult>,
    rules: RulesStatus,
) {
    let status = StatusFile {
        feeds,
        hooks: hooks.cloned(),
        metrics,
        selftest: selftest.cloned(),
        rules: Some(rules),
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
