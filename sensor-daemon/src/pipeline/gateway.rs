//! The pipeline for gateway mode: a hit (the flow's SYN, from `GW_EVENTS`)
//! and a flow summary (from the daemon's sweep of `GW_FLOWS`), to alerts
//! through the same rules as every signal (`when.event = "gateway"`).

use std::time::SystemTime;

use super::{Now, Pipeline, ProcessSource};
use crate::alert::Alert;
use crate::alert::gateway::make_gateway;
use crate::alert::model::Signal;
use crate::kernel::gateway::{FlowSummary, GatewayHit};

impl<S: ProcessSource> Pipeline<S> {
    /// The alert for a hit, or (with `summary`) for its flow's end, before
    /// the rules.
    pub fn gateway_alert(
        &mut self,
        hit: &GatewayHit,
        summary: Option<&FlowSummary>,
        created: SystemTime,
    ) -> Alert {
        // The flow as a connection of the inside host, without a process.
        let mut alert = self.processless_alert(
            (hit.time, hit.direction),
            (hit.inside, hit.outside),
            hit.matched,
            Signal::Gateway,
            created,
        );
        make_gateway(&mut alert, hit, summary);
        alert
    }

    /// What to send for a gateway hit.
    pub fn handle_gateway(&mut self, hit: &GatewayHit, now: Now) -> Vec<Alert> {
        let alert = self.gateway_alert(hit, None, now.wall);
        self.decide(alert, now)
    }

    /// What to send for a flow's summary: decided by the rules as its hit
    /// was (an excepted or logged hit's summary is excepted or logged too).
    pub fn handle_flow_end(&mut self, summary: &FlowSummary, now: Now) -> Vec<Alert> {
        let alert = self.gateway_alert(&summary.hit, Some(summary), now.wall);
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
    use crate::kernel::event::BootClock;
    use crate::kernel::gateway::{FlowEnd, Side, TcHook};
    use crate::net::Direction;
    use crate::pipeline::KernelOnly;
    use sensor_common::MatchInfo;

    fn pipeline(rules: Rules) -> Pipeline<KernelOnly> {
        Pipeline::new(
            FeedSet::default(),
            rules,
            SensorIdentity::local(),
            BootClock::at(UNIX_EPOCH),
            KernelOnly,
            // Aggregation on: gateway alerts must pass through it untouched.
            Aggregator::new(Duration::from_secs(60), 100),
        )
    }

    fn hit(direction: Direction) -> GatewayHit {
        let (inside, outside) = match direction {
            Direction::Egress => ("192.0.2.2:40000", "198.51.100.9:9001"),
            Direction::Ingress => ("192.0.2.2:443", "198.51.100.9:50000"),
        };
        GatewayHit {
            time: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            inside: inside.parse().unwrap(),
            outside: outside.parse().unwrap(),
            direction,
            interface: "eth1".into(),
            side: Side::Inside,
            hook: TcHook::Ingress,
            matched: MatchInfo {
                exit_feeds: 1,
                relay_feeds: 0,
            },
            tracked: true,
        }
    }

    fn summary(direction: Direction) -> FlowSummary {
        let h = hit(direction);
        FlowSummary {
            last: h.time + Duration::from_millis(2500),
            hit: h,
            bytes_out: 1000,
            packets_out: 10,
            bytes_in: 5000,
            packets_in: 7,
            end: FlowEnd::Fin,
        }
    }

    #[test]
    fn hits_and_summaries_take_the_gateway_rules_and_the_initiator_is_the_source() {
        let mut p = pipeline(Rules::builtin().unwrap());
        let now = Now::current();
        for _ in 0..2 {
            // Twice: the second is not held back as a repeat.
            let out = p.handle_gateway(&hit(Direction::Egress), now);
            assert_eq!(out.len(), 1);
            let a = &out[0];
            assert_eq!(a.rule.as_ref().unwrap().id, "TORSENSOR-009");
            let doc = crate::alert::ecs::render(a);
            assert_eq!(doc["network"]["direction"], "outbound");
            assert_eq!(doc["source"]["ip"], "192.0.2.2");
            assert_eq!(doc["torsensor"]["signal"], "gateway");
            assert!(doc.get("process").is_none());
        }
        let out = p.handle_flow_end(&summary(Direction::Ingress), now);
        assert_eq!(out.len(), 1);
        let doc = crate::alert::ecs::render(&out[0]);
        assert_eq!(doc["rule"]["id"], "TORSENSOR-010");
        assert_eq!(doc["network"]["direction"], "inbound");
        // Inbound: the outside host opened the flow, and what it sent is
        // what came in from outside.
        assert_eq!(doc["source"]["ip"], "198.51.100.9");
        assert_eq!(doc["source"]["bytes"], 5000);
        assert_eq!(doc["source"]["packets"], 7);
        assert_eq!(doc["destination"]["bytes"], 1000);
        assert_eq!(doc["network"]["bytes"], 6000);
        assert_eq!(doc["event"]["duration"], 2_500_000_000u64);
        assert_eq!(doc["torsensor"]["gateway"]["end"], "fin");
        assert_eq!(
            doc["event"]["type"],
            serde_json::json!(["connection", "end"])
        );
    }

    #[test]
    fn an_exception_holds_for_the_hit_and_its_summary() {
        let mut rules = Rules::builtin().unwrap();
        rules
            .add_file(
                "/etc/torsensor/rules.d/10-gw.toml",
                "[[rule]]\nid = \"TORSENSOR-009\"\n[[rule.except]]\nreason = \"our lab relay\"\nwhen = { peer = [\"198.51.100.9\"] }\n",
                false,
            )
            .unwrap();
        let mut p = pipeline(rules);
        let now = Now::current();
        assert!(p.handle_gateway(&hit(Direction::Egress), now).is_empty());
        assert!(
            p.handle_flow_end(&summary(Direction::Egress), now)
                .is_empty()
        );
        // Inbound is another rule.
        assert_eq!(p.handle_gateway(&hit(Direction::Ingress), now).len(), 1);
    }
}
