//! Plain lists (one address or CIDR per line, `#` comments), as fetched.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sensor_daemon::feed::FeedFormat;

fuzz_target!(|data: &[u8]| sensor_daemon_fuzz::feed(data, FeedFormat::Plain));
