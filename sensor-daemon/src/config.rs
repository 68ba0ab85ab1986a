//! The sensor's configuration: one struct, every default documented here once,
//! validated before anything touches the kernel.

use std::path::PathBuf;
use std::time::Duration;

use sensor_common::MAX_FEEDS;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error(
        "ring-buffer-bytes = {0}: must be a power of two between 4096 (one page) and 268435456 (256 MiB)"
    )]
    RingBufferSize(u32),
    #[error("{0} feeds given: at most {MAX_FEEDS} can be loaded at once")]
    TooManyFeeds(usize),
    #[error("health-interval must be at least 1 second")]
    HealthInterval,
}

/// Everything `torsensor run` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SensorConfig {
    /// Plain-list feed files. Default: none, which means the embedded
    /// snapshot of the Tor bulk exit list.
    pub feeds: Vec<PathBuf>,
    /// Keep feed entries in reserved ranges (loopback, private, documentation).
    /// Default: false (they are dropped with one warning).
    pub allow_reserved: bool,
    /// Report every TCP connection, not only feed matches. Default: false.
    pub audit_all: bool,
    /// Kernel-to-daemon ring buffer size. Default: 4 MiB (about 40,000
    /// events of backlog before a loss, which is counted and reported).
    pub ring_buffer_bytes: u32,
    /// Forward kernel-side debug logs (aya-log) to stderr. Default: false.
    pub kernel_log: bool,
    /// Write the final counters (JSON) here at exit. Default: none.
    pub stats_file: Option<PathBuf>,
    /// How often kernel counters are checked for losses. Default: 5 s.
    pub health_interval: Duration,
}

pub const DEFAULT_RING_BUFFER_BYTES: u32 = 4 << 20;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);

impl Default for SensorConfig {
    fn default() -> Self {
        SensorConfig {
            feeds: Vec::new(),
            allow_reserved: false,
            audit_all: false,
            ring_buffer_bytes: DEFAULT_RING_BUFFER_BYTES,
            kernel_log: false,
            stats_file: None,
            health_interval: DEFAULT_HEALTH_INTERVAL,
        }
    }
}

impl SensorConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SensorConfig::default().validate(), Ok(()));
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
        c.feeds = vec![PathBuf::from("x"); 33];
        assert_eq!(c.validate(), Err(ConfigError::TooManyFeeds(33)));
        c.feeds.clear();
        c.health_interval = Duration::from_millis(10);
        assert_eq!(c.validate(), Err(ConfigError::HealthInterval));
    }
}
