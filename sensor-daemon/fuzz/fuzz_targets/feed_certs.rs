//! Directory authority key certificates (`/tor/keys/all`, a tor's
//! `cached-certs`): parsed and their own signatures checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sensor_daemon_fuzz::certs(data));
