//! Tor consensus documents (full and microdesc flavour), as fetched from a
//! directory mirror or read from a tor's DataDirectory, and the same bytes
//! as a DataDirectory's microdescriptors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::feed::FeedFormat;

fuzz_target!(|data: &[u8]| {
    sensor_daemon_fuzz::feed(data, FeedFormat::Consensus);
    sensor_daemon_fuzz::microdescs(data);
});
