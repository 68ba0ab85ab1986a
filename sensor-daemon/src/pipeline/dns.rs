//! The pipeline for DNS lookups for Tor: a `DnsEvent` from its own ring
//! buffer, confirmed against the exact name ([`crate::dns::DnsWatch`]),
//! enriched like a connection (`/proc`, container), to an alert through
//! the same rules.

use std::time::SystemTime;

use sensor_common::DnsEvent;

use super::{Now, Pipeline, ProcessSource};
use crate::alert::Alert;
use crate::alert::dns::{DnsInput, build_dns};
use crate::alert::model::Signal;
use crate::dns::qtype_name;
use crate::kernel::dns::{DnsEventError, DnsQuery};

impl<S: ProcessSource> Pipeline<S> {
    /// The alert for a DNS event, before the rules; `None` when the name
    /// is not a watched one after all (the kernel matched a hash: counted
    /// in `dns_unconfirmed`).
    pub fn dns_alert(
        &mut self,
        ev: &DnsEvent,
        created: SystemTime,
    ) -> Result<Option<Alert>, DnsEventError> {
        let query = DnsQuery::from_event(ev, &self.clock)?;
        let Some(watched) = self.dns.matching(&query.name).cloned() else {
            self.counts.dns_unconfirmed += 1;
            tracing::debug!(
                name = %query.name,
                "DNS: the kernel's hash matched, the name is not a watched one: not alerted"
            );
            return Ok(None);
        };
        let process = query.process.as_ref().map(|p| self.source.process(p));
        let container = query
            .process
            .as_ref()
            .and_then(|p| self.source.container(p));
        let cgroup_path = match (&query.process, &container) {
            (Some(p), None) => self.source.cgroup_path(p),
            _ => None,
        };
        // The sender is a resolver by its process name (or, if it is
        // gone, the kernel's command name).
        let resolver = process
            .as_ref()
            .map(|p| p.name.clone())
            .or_else(|| query.process.as_ref().map(|p| p.comm.clone()))
            .filter(|name| self.dns.is_resolver(name));
        let names_file = self.dns.origin.clone();
        let mut alert = build_dns(DnsInput {
            time: query.time,
            name: &query.name,
            qtype: qtype_name(query.qtype),
            server: query.server,
            tcp: query.tcp,
            watched: &watched,
            names_file: &names_file,
            process: process.as_ref(),
            uid: query.uid,
            cgroup_id: query.cgroup_id,
            container: container.as_ref(),
            resolver: resolver.as_deref(),
            rule: self.rules.for_signal(Signal::Dns),
            sensor: &self.sensor,
            created,
        });
        alert.torsensor.cgroup_path = cgroup_path;
        Ok(Some(alert))
    }

    /// What to send for one DNS event: its alert, if confirmed and a rule
    /// takes it (through aggregation, like any alert).
    pub fn handle_dns(&mut self, ev: &DnsEvent, now: Now) -> Result<Vec<Alert>, DnsEventError> {
        Ok(match self.dns_alert(ev, now.wall)? {
            Some(alert) => self.decide(alert, now),
            None => Vec::new(),
        })
    }
}
