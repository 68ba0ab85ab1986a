//! `--output DESTINATION[,key=value...]` flag values.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use sensor_daemon::sink::OutputConfig;

fuzz_target!(|data: &[u8]| {
    // Command-line arguments reach clap as UTF-8 strings.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut output = match text.parse::<OutputConfig>() {
        Ok(output) => output,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let _ = output.destination();
    let name = output.sink_name();
    assert!(
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            || output.name.as_deref() == Some(name.as_str()),
        "a derived sink name is safe as a directory name: {name:?}"
    );
    if output.token_file.is_some() {
        output.token_file = Some(PathBuf::from(sensor_daemon_fuzz::NO_FILE));
    }
    if output.ca_file.is_some() {
        output.ca_file = Some(PathBuf::from(sensor_daemon_fuzz::NO_FILE));
    }
    if let Err(e) = output.validate() {
        let _ = e.to_string();
    }
});
