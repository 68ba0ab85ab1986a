//! The hunt's capture reader (`torsensor hunt` on a PCAP or pcapng file):
//! the bytes as a capture file (packets decoded, flows assembled, NetFlow
//! and IPFIX exports on every UDP port read), and the bytes as one NetFlow
//! or IPFIX export datagram, read by the hunt and by the live collector
//! (`[[collector]]`: every record matched, joined and judged).
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use sensor_daemon::hunt::HuntSettings;
use sensor_daemon::hunt::collect::{Collector, CollectorConfig};
use sensor_daemon::hunt::netflow::Exports;
use sensor_daemon::hunt::packets::{PacketSettings, read};
use sensor_daemon::hunt::{Flow, FlowEnd, Position, Records, Request};

#[derive(Default)]
struct Count {
    flows: u64,
    bad: u64,
}

impl Records for Count {
    fn flow(&mut self, flow: Flow) {
        // A flow assembled from packets has at least one; an exported
        // record may say zero.
        assert!(flow.packets[0] + flow.packets[1] >= 1 || flow.end == FlowEnd::Record);
        self.flows += 1;
    }
    fn request(&mut self, _: Request) {}
    fn bad(&mut self, _: u64, why: &str) {
        assert!(!why.contains('\n'), "one line: {why:?}");
        self.bad += 1;
    }
    fn may_match(&self, _: IpAddr) -> bool {
        true
    }
}

fuzz_target!(|data: &[u8]| {
    let settings = PacketSettings {
        idle_timeout_ns: 1_000_000_000,
        max_flows: 64,
        netflow_ports: vec![2055, 4739, 9995, 9996],
    };
    let mut out = Count::default();
    let _ = read(data, &settings, &mut out, &mut |_| {});
    let mut exports = Exports::new();
    exports.packet(
        "192.0.2.1:2055".parse().unwrap(),
        data,
        Position::default(),
        &mut out,
    );
    let mut config = CollectorConfig::new("udp://127.0.0.1:2055");
    config.max_flows = 8;
    let mut collector = Collector::new(&[config], &HuntSettings::default());
    let now = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let any = |_: IpAddr, _: u16, _: sensor_daemon::net::Direction| {
        Some(sensor_common::MatchInfo {
            exit_feeds: 1,
            relay_feeds: 0,
        })
    };
    let exporter = "192.0.2.1:2055".parse().unwrap();
    // Twice: templates the first datagram carried read the second's data.
    let mut judged = collector.datagram(0, exporter, data, now, &any).len();
    judged += collector.datagram(0, exporter, data, now, &any).len();
    judged += collector.expire(now, true).len();
    let stats = &collector.stats()[0];
    assert_eq!(stats.datagrams, 2);
    assert_eq!(judged as u64, stats.substantial + stats.below_threshold);
    assert!(stats.matched + stats.unmatched + stats.other_protocol == stats.records);
});
