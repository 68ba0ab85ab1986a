//! Gateway mode in the run loop: attaching the TC programs at start (before
//! the capabilities are dropped), and the sweep that turns ended and idle
//! flows into summaries.

use std::time::Duration;

use crate::config::Config;
use crate::kernel::event::BootClock;
use crate::kernel::gateway::{FlowEnd, GatewayAttach, GatewayDecoder, flow_end};
use crate::kernel::{KernelError, Probes};

/// How often the flow table is swept.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A flow that saw its FINs or a RST is summarised once it has been quiet
/// this long (its last ACK counted).
const LINGER: Duration = Duration::from_millis(500);

/// Gateway mode as armed.
pub(crate) struct GatewayRun {
    pub attach: GatewayAttach,
    pub decoder: GatewayDecoder,
    pub clock: BootClock,
    idle: Duration,
}

impl GatewayRun {
    /// Attaches the programs to every configured interface, or (off)
    /// nothing. A failure stops the start.
    pub fn arm(cfg: &Config, probes: &mut Probes) -> Result<Option<Self>, KernelError> {
        let g = &cfg.gateway;
        if !g.enabled {
            return Ok(None);
        }
        let attach = probes.attach_gateway(&g.interfaces(), g.attach)?;
        tracing::info!(
            "gateway mode: {attach}; flows idle for {:?} are summarised, at most {} tracked",
            g.flow_idle_timeout,
            g.max_flows
        );
        Ok(Some(GatewayRun {
            decoder: GatewayDecoder {
                interfaces: attach.interfaces.clone(),
            },
            attach,
            clock: BootClock::now(),
            idle: g.flow_idle_timeout,
        }))
    }
}

impl super::Daemon {
    /// Summarises the flows that ended or went idle (`all`: every flow, at
    /// shutdown).
    pub(super) fn on_flow_sweep(&mut self, all: bool) {
        let Some(gw) = &self.gateway else {
            return;
        };
        let now = crate::sys::boot_time_ns();
        let idle = gw.idle;
        let flows = self
            .probes
            .sweep_flows(|f| flow_end(f, now, LINGER, idle).or(all.then_some(FlowEnd::Shutdown)));
        for (key, stats, end) in flows {
            match gw.decoder.flow(&key, &stats, end, &gw.clock) {
                Ok(summary) => self.delivery.handle_flow_end(&summary),
                Err(e) => {
                    self.delivery.stats.decode_errors += 1;
                    tracing::warn!("dropped a gateway flow entry: {e}");
                }
            }
        }
    }
}
