//! TorDNSEL exit lists (`ExitNode` / `Published` / `LastStatus` /
//! `ExitAddress` records), as fetched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::feed::FeedFormat;

fuzz_target!(|data: &[u8]| sensor_daemon_fuzz::feed(data, FeedFormat::Tordnsel));
