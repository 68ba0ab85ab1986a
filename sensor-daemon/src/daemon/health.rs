//! Health events of a running daemon: one log line (`health: ...`) per
//! kind of loss that grew, per feed that went stale or fresh again, and
//! the hook plan once at start.

use std::time::SystemTime;

use crate::feed::format_age;
use crate::feed::manager::FeedManager;
use crate::kernel::{HookPlan, KernelCounters};

/// Logs a health event for every kind of kernel-side loss that grew since
/// `last`.
pub(super) fn report_losses(now: &KernelCounters, last: &KernelCounters) {
    let kinds = [
        (
            now.ringbuf_full,
            last.ringbuf_full,
            "events lost because the kernel ring buffer was full; raise --ring-buffer-bytes",
        ),
        (
            now.pending_full,
            last.pending_full,
            "hits lost because the pending-connection map was full",
        ),
        (
            now.exec_ringbuf_full,
            last.exec_ringbuf_full,
            "program starts lost because the exec ring buffer was full",
        ),
        (
            now.dns_ringbuf_full,
            last.dns_ringbuf_full,
            "DNS queries lost because the DNS ring buffer was full",
        ),
        (
            now.gw_ringbuf_full,
            last.gw_ringbuf_full,
            "gateway hits lost because the gateway ring buffer was full",
        ),
        (
            now.gw_flows_full,
            last.gw_flows_full,
            "gateway flows not tracked (no summary will follow) because the flow table was full; raise [gateway] max_flows",
        ),
    ];
    for (total, before, what) in kinds {
        let lost = total.saturating_sub(before);
        if lost > 0 {
            tracing::warn!(lost, total_lost = total, "health: {lost} {what}");
        }
    }
}

/// Logs each feed that became stale, or fresh again, since the last call.
pub(super) fn report_stale(manager: &mut FeedManager) {
    for (name, age, stale) in manager.stale_changes(SystemTime::now()) {
        let age = format_age(age);
        if stale {
            tracing::warn!("health: feed {name} is stale: {age} old");
        } else {
            tracing::info!("health: feed {name} is fresh again ({age} old)");
        }
    }
}

/// The hook plan line, once: a warning when the plan is degraded.
pub(super) fn log_plan(plan: Option<&HookPlan>) {
    match plan {
        Some(plan) if plan.degraded.is_some() => tracing::warn!("hook plan: {plan}"),
        Some(plan) => tracing::info!("hook plan: {plan}"),
        None => {}
    }
}
