//! The hunt's text readers: Zeek conn.log (TSV and JSON), nfdump CSV and
//! JSON, access logs (combined/common and JSON). The bytes go through
//! content detection, then through every reader regardless.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sensor_daemon::hunt::access_log::{self, JsonFields};
use sensor_daemon::hunt::{Flow, Records, Request, detect, flows};

#[derive(Default)]
struct Count(u64);

impl Records for Count {
    fn flow(&mut self, _: Flow) {
        self.0 += 1;
    }
    fn request(&mut self, r: Request) {
        assert!(r.position.record >= 1);
        self.0 += 1;
    }
    fn bad(&mut self, _: u64, why: &str) {
        assert!(!why.contains('\n'), "one line: {why:?}");
    }
    fn may_match(&self, _: IpAddr) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = detect(data);
    let mut out = Count::default();
    let _ = flows::zeek_tsv(data, &mut out, &mut |_| {});
    let _ = flows::zeek_json(data, &mut out, &mut |_| {});
    let _ = flows::nfdump_csv(data, &mut out, &mut |_| {});
    let _ = flows::nfdump_json(data, &mut out, &mut |_| {});
    let _ = access_log::read(data, None, true, &mut out, &mut |_| {});
    let _ = access_log::read(
        data,
        Some(&JsonFields::default()),
        true,
        &mut out,
        &mut |_| {},
    );
});
