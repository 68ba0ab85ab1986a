//! DNS lookups for Tor in the run loop: attaching the DNS programs at
//! start (before the capabilities are dropped: cgroup programs need
//! CAP_NET_ADMIN). Optional: a kernel or cgroup that refuses them leaves
//! every other signal running; the reason is logged once and shown in
//! `torsensor_dns_hook` and the health verdict.

use crate::config::Config;
use crate::dns::DnsWatch;
use crate::enrich::container;
use crate::kernel::Probes;

/// What `[dns]` came to at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DnsHook {
    /// `[dns] enabled = false`.
    Off,
    /// Attached to this cgroup.
    Attached(String),
    /// Enabled, but the programs could not be attached.
    Failed(String),
}

impl DnsHook {
    /// Attaches the programs if `[dns]` is enabled, and says so.
    pub fn arm(cfg: &Config, probes: &mut Probes, watch: &DnsWatch) -> DnsHook {
        if !cfg.dns.enabled {
            return DnsHook::Off;
        }
        let Some(root) = cfg
            .dns
            .cgroup
            .clone()
            .or_else(container::host_cgroup2_mount)
        else {
            let why = "no cgroup v2 hierarchy is mounted (the DNS programs attach to one)";
            tracing::warn!(
                "DNS lookups are not watched (rules TORSENSOR-007/-008 cannot fire): {why}"
            );
            return DnsHook::Failed(why.into());
        };
        match probes.attach_dns(&root, watch, &cfg.dns.ports) {
            Ok(()) => {
                let at = root.display().to_string();
                tracing::info!(
                    "DNS hooks on cgroup {at}: connect4, connect6, sendmsg4, sendmsg6, egress; {} watched names from {}, ports {:?}",
                    watch.names.len(),
                    watch.origin,
                    cfg.dns.ports
                );
                DnsHook::Attached(at)
            }
            Err(why) => {
                tracing::warn!(
                    "DNS lookups are not watched (rules TORSENSOR-007/-008 cannot fire): {why}"
                );
                DnsHook::Failed(why)
            }
        }
    }

    /// Why DNS is not watched although enabled.
    pub fn failure(&self) -> Option<&str> {
        match self {
            DnsHook::Failed(why) => Some(why),
            _ => None,
        }
    }

    /// `off`, `attached` or `failed` (the metric's label).
    pub fn state(&self) -> &'static str {
        match self {
            DnsHook::Off => "off",
            DnsHook::Attached(_) => "attached",
            DnsHook::Failed(_) => "failed",
        }
    }
}
