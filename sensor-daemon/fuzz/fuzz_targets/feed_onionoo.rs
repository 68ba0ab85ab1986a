//! Onionoo details documents (JSON), as fetched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::feed::Format;

fuzz_target!(|data: &[u8]| sensor_daemon_fuzz::feed(data, Format::Onionoo));
