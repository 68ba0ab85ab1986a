//! The TOML configuration file (`--config`), parsed and validated as at
//! start-up and on SIGHUP.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use sensor_daemon::config::SensorConfig;

fuzz_target!(|data: &[u8]| {
    // `from_file` reads the file as UTF-8 text and hands it to `from_toml`.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut config = match SensorConfig::from_toml(Path::new("fuzz.toml"), text) {
        Ok(config) => config,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    for output in &mut config.outputs {
        if output.token_file.is_some() {
            output.token_file = Some(PathBuf::from(sensor_daemon_fuzz::NO_FILE));
        }
        if output.ca_file.is_some() {
            output.ca_file = Some(PathBuf::from(sensor_daemon_fuzz::NO_FILE));
        }
    }
    if let Err(e) = config.validate() {
        let _ = e.to_string();
    }
    for feed in &config.feeds {
        let _ = feed.location();
    }
    for output in config.outputs_or_stdout() {
        let _ = output.destination();
        let _ = output.sink_name();
    }
});
