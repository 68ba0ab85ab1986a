//! The pipeline for the live flow collector: the live Tor sets' answer for
//! a flow record's ends (the current sets, then the previous ones while a
//! switch settles), and a judged flow to alerts through the same rules as
//! every signal (`when.event = "flow"`).

use std::net::IpAddr;
use std::time::SystemTime;

use sensor_common::MatchInfo;

use super::{Now, Pipeline, ProcessSource};
use crate::alert::Alert;
use crate::alert::collector::make_flow;
use crate::alert::model::Signal;
use crate::hunt::collect::Collected;
use crate::hunt::hunter::time_of;
use crate::net::Direction;

impl<S: ProcessSource> Pipeline<S> {
    /// The kernel's rule, in userspace: a listed exit in either direction
    /// on any port, a relay's OR address reached on one of its ORPorts.
    pub fn classify(&self, ip: IpAddr, port: u16, direction: Direction) -> Option<MatchInfo> {
        self.feeds
            .classify(ip, port, direction)
            .or_else(|| self.previous.as_ref()?.classify(ip, port, direction))
    }

    /// The alert for a collected flow, before the rules.
    pub fn flow_alert(&mut self, c: &Collected, listener: &str, created: SystemTime) -> Alert {
        let mut alert = self.processless_alert(
            (time_of(c.flow.start_ns), c.direction),
            c.ends(),
            c.matched,
            Signal::Flow,
            created,
        );
        make_flow(&mut alert, c, listener);
        alert
    }

    /// What to send for a collected flow.
    pub fn handle_collected(&mut self, c: &Collected, listener: &str, now: Now) -> Vec<Alert> {
        let alert = self.flow_alert(c, listener, now.wall);
        self.decide(alert, now)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::alert::aggregate::Aggregator;
    use crate::alert::connection::SensorIdentity;
    use crate::alert::rules::Rules;
    use crate::feed::FeedSet;
    use crate::hunt::netflow::Export;
    use crate::hunt::{Flow, FlowEnd, Initiator, Position};
    use crate::kernel::event::BootClock;
    use crate::pipeline::KernelOnly;

    fn collected(direction: Direction) -> Collected {
        let (initiator, responder) = match direction {
            Direction::Egress => ("192.0.2.2:40000", "198.51.100.9:9001"),
            Direction::Ingress => ("198.51.100.9:50000", "192.0.2.2:443"),
        };
        let start = 1_700_000_000_000_000_000;
        Collected {
            listener: 0,
            flow: Flow {
                start_ns: start,
                end_ns: start + 2_500_000_000,
                initiator: initiator.parse().unwrap(),
                responder: responder.parse().unwrap(),
                protocol: 6,
                bytes: [3_000_000, 40_000],
                packets: [2100, 700],
                initiator_by: Initiator::Port,
                end: FlowEnd::Record,
                position: Position::default(),
            },
            export: Export {
                exporter: "10.0.0.1:61000".parse().unwrap(),
                version: 10,
                domain: 42,
                input_if: Some(3),
                output_if: None,
            },
            direction,
            matched: MatchInfo {
                exit_feeds: 1,
                relay_feeds: 0,
            },
            both_listed: false,
            records: 2,
            reasons: vec!["bytes"],
            received: UNIX_EPOCH + Duration::from_secs(1_700_000_010),
        }
    }

    #[test]
    fn a_collected_flow_is_a_flow_alert_in_every_schema() {
        let mut p = Pipeline::new(
            FeedSet::default(),
            Rules::builtin().unwrap(),
            SensorIdentity::local(),
            BootClock::at(UNIX_EPOCH),
            KernelOnly,
            Aggregator::new(Duration::from_secs(60), 100),
        );
        let now = Now::current();
        let out = p.handle_collected(&collected(Direction::Egress), "udp://0.0.0.0:4739", now);
        assert_eq!(out.len(), 1);
        let doc = crate::alert::ecs::render(&out[0]);
        assert_eq!(doc["rule"]["id"], "TORSENSOR-011");
        assert_eq!(doc["torsensor"]["signal"], "flow");
        assert_eq!(doc["network"]["direction"], "outbound");
        assert_eq!(doc["source"]["ip"], "192.0.2.2");
        assert_eq!(doc["source"]["bytes"], 3_000_000);
        assert_eq!(doc["destination"]["port"], 9001);
        assert_eq!(doc["destination"]["bytes"], 40_000);
        assert_eq!(doc["network"]["packets"], 2800);
        assert_eq!(doc["event"]["duration"], 2_500_000_000u64);
        assert_eq!(doc["observer"]["ip"], serde_json::json!(["10.0.0.1"]));
        assert_eq!(doc["observer"]["ingress"]["interface"]["id"], "3");
        assert!(doc["observer"].get("egress").is_none());
        assert!(doc["observer"].get("hostname").is_none());
        let c = &doc["torsensor"]["collector"];
        assert_eq!(c["protocol"], "ipfix");
        assert_eq!(c["observation_domain"], 42);
        assert_eq!(c["exporter"], "10.0.0.1:61000");
        assert_eq!(c["listener"], "udp://0.0.0.0:4739");
        assert!(doc.get("process").is_none());

        let ocsf = crate::alert::ocsf::render(&out[0]);
        assert_eq!(ocsf["activity_name"], "Traffic");
        assert_eq!(ocsf["type_uid"], 400106);
        assert_eq!(ocsf["traffic"]["bytes_out"], 3_000_000);
        let falco = crate::alert::falco::render(&out[0]);
        assert_eq!(falco["output_fields"]["evt.type"], "flow");
        let line = falco["output"].as_str().unwrap();
        assert!(line.contains("exporter=10.0.0.1:61000 (ipfix)"), "{line}");
        assert!(line.contains("bytes_out=3000000 bytes_in=40000"), "{line}");

        // From an exit: the other rule, the exit as the source.
        let out = p.handle_collected(&collected(Direction::Ingress), "udp://0.0.0.0:4739", now);
        let doc = crate::alert::ecs::render(&out[0]);
        assert_eq!(doc["rule"]["id"], "TORSENSOR-012");
        assert_eq!(doc["network"]["direction"], "inbound");
        assert_eq!(doc["source"]["ip"], "198.51.100.9");
        assert_eq!(doc["destination"]["port"], 443);
    }
}
