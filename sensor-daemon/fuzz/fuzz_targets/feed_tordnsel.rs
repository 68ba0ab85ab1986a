//! TorDNSEL exit lists (`ExitNode` / `Published` / `LastStatus` /
//! `ExitAddress` records), as fetched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::feed::Format;

fuzz_target!(|data: &[u8]| sensor_daemon_fuzz::feed(data, Format::Tordnsel));
