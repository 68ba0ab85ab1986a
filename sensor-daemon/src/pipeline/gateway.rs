//! The pipeline for gateway mode: a hit (the flow's SYN, from `GW_EVENTS`)
//! and a flow summary (from the daemon's sweep of `GW_FLOWS`), to alerts
//! through the same rules as every signal (`when.event = "gateway"`).

use std::time::SystemTime;

use super::{Now, Pipeline, ProcessSource};
use crate::alert::Alert;
use crate::alert::connection::{AlertInput, build};
use crate::alert::gateway::make_gateway;
use crate::alert::model::Signal;
use crate::kernel::event::Connection;
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
        let conn = Connection {
            time: hit.time,
            direction: hit.direction,
            local: hit.inside,
            remote: hit.outside,
            v4_mapped: false,
            failed: false,
            audit: false,
            incomplete: false,
            blocked: false,
            matched: hit.matched,
            process: None,
        };
        let matches = self.explain(&conn);
        let mut alert = build(&AlertInput {
            conn: &conn,
            process: None,
            container: None,
            rule: self.rules.for_signal(Signal::Gateway),
            matches: &matches,
            sensor: &self.sensor,
            created,
        });
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
