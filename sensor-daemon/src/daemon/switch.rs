//! Switching the running feed set, in one place for both paths that change
//! it (a refresh that brought new content, and SIGHUP): events already
//! matched against the old set are read first, then the kernel maps switch
//! without a gap, then the pipeline describes hits with the new set.
//! Nothing is changed if the kernel refuses the new set.

use aya::maps::{MapData, RingBuf};

use super::delivery::Delivery;
use crate::feed::FeedSet;
use crate::kernel::{ApplyStats, Probes};

/// Makes `set` the running feed set; on error the old one stays everywhere.
pub(super) async fn switch_feeds(
    set: FeedSet,
    probes: &mut Probes,
    delivery: &mut Delivery,
    ring: &mut RingBuf<MapData>,
) -> Result<ApplyStats, String> {
    delivery.drain(ring).await;
    let stats = probes.apply_feeds(&set).map_err(|e| e.to_string())?;
    delivery.pipeline.switch_feeds(set);
    Ok(stats)
}
