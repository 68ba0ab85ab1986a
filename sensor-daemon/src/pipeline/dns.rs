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

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant, UNIX_EPOCH};

    use sensor_common::{AF_INET, DnsEvent, dns};

    use super::*;
    use crate::alert::SensorIdentity;
    use crate::alert::aggregate::Aggregator;
    use crate::alert::rules::Rules;
    use crate::feed::FeedSet;
    use crate::kernel::event::BootClock;
    use crate::pipeline::KernelOnly;

    fn pipeline() -> Pipeline<KernelOnly> {
        Pipeline::new(
            FeedSet::default(),
            Rules::builtin().unwrap(),
            SensorIdentity::local(),
            BootClock::at(UNIX_EPOCH),
            KernelOnly,
            Aggregator::new(Duration::ZERO, 100),
        )
    }

    /// A query for `name` from process `comm` (pid 77) to 127.0.0.53:53.
    fn event(name: &str, comm: &str) -> DnsEvent {
        let mut ev = DnsEvent::ZERO;
        ev.family = AF_INET;
        ev.server_addr[..4].copy_from_slice(&[127, 0, 0, 53]);
        ev.server_port = 53;
        ev.transport = 17;
        ev.qtype = 1;
        ev.tgid = 77;
        ev.pid = 77;
        ev.comm[..comm.len()].copy_from_slice(comm.as_bytes());
        let mut at = 0;
        for label in name.split('.') {
            ev.qname[at] = label.len() as u8;
            ev.qname[at + 1..at + 1 + label.len()].copy_from_slice(label.as_bytes());
            at += 1 + label.len();
        }
        ev.qname_len = at as u16 + 1;
        ev
    }

    fn now() -> Now {
        Now {
            wall: UNIX_EPOCH + Duration::from_secs(10),
            mono: Instant::now(),
        }
    }

    #[test]
    fn onion_leaks_and_tor_project_lookups_take_their_rules() {
        let mut p = pipeline();
        let onion = p.handle_dns(&event("abc.onion", "curl"), now()).unwrap();
        assert_eq!(onion.len(), 1);
        let a = &onion[0];
        assert_eq!(a.rule.as_ref().unwrap().id, "TORSENSOR-007");
        assert_eq!(a.event.severity, Some(73));
        assert_eq!(a.dns.as_ref().unwrap().question.name, "abc.onion");
        let d = a.torsensor.dns.as_ref().unwrap();
        assert!(!d.via_resolver && d.local_server);
        assert_eq!(a.process.as_ref().unwrap().name, "curl");
        let project = p
            .handle_dns(&event("WWW.TorProject.ORG", "curl"), now())
            .unwrap();
        assert_eq!(project[0].rule.as_ref().unwrap().id, "TORSENSOR-008");
        assert_eq!(project[0].event.severity, Some(47));
        assert_eq!(
            project[0].dns.as_ref().unwrap().question.name,
            "www.torproject.org"
        );
    }

    #[test]
    fn a_resolver_is_flagged_and_a_hash_collision_is_counted_not_alerted() {
        let mut p = pipeline();
        let fwd = p
            .handle_dns(&event("bridges.torproject.org", "dnsmasq"), now())
            .unwrap();
        let d = fwd[0].torsensor.dns.as_ref().unwrap();
        assert!(d.via_resolver);
        assert_eq!(d.resolver.as_deref(), Some("dnsmasq"));
        assert_eq!(d.category, "bridges");
        // What the kernel sends only on a hash collision: a name that is
        // not watched after all.
        let none = p
            .handle_dns(&event("onion.example.com", "curl"), now())
            .unwrap();
        assert!(none.is_empty());
        assert_eq!(p.rule_counts().dns_unconfirmed, 1);
        // No process known: the socket's uid, no process fields.
        let mut ev = event("x.onion", "");
        ev.flags = dns::FLAG_NO_PROCESS;
        ev.tgid = 0;
        ev.uid = 1000;
        let a = &p.handle_dns(&ev, now()).unwrap()[0];
        assert!(a.process.is_none() && a.torsensor.process_unknown);
        assert_eq!(a.user.as_ref().unwrap().id, 1000);
    }
}
