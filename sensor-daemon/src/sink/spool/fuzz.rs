//! The `spool` fuzz target's way in (feature `fuzzing`): a spool opened,
//! delivered and appended to as a remote sink does, from outside the crate.
//!
//! May use the spool itself and `crate::statedir` (to open its directory).

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::Spool;
use crate::sink::Entry;
use crate::sink::stats::SinkCounters;
use crate::statedir::Dir;

/// What [`replay_for_fuzzing`] did.
#[derive(Debug)]
pub struct Replay {
    /// Sequence numbers read, in order.
    pub read: Vec<u64>,
    /// Whether reading stopped because nothing was left (not at the limit).
    pub drained: bool,
    /// Sequence number of the alert spooled at the end.
    pub appended: u64,
    /// The last acknowledged sequence number at the end.
    pub cursor: u64,
}

/// The `spool` fuzz target's way in (feature `fuzzing`): opens the spool
/// directory `dir` as a remote sink does at start-up (indexing whatever
/// segments and cursor it holds, cutting torn tails), delivers it as the
/// sink does (a batch of at most `batch_events`, then an acknowledgement of
/// its last record, at most `max_batches` times), and spools one new alert.
pub fn replay_for_fuzzing(
    dir: &Path,
    batch_events: usize,
    max_batches: usize,
) -> io::Result<Replay> {
    let dir = Dir::open(dir, crate::statedir::SPOOL_DIR_MODE).map_err(io::Error::other)?;
    let mut spool = Spool::open_in(dir, 1 << 20, 1 << 16, Arc::new(SinkCounters::default()))?;
    let mut read = Vec::new();
    let mut drained = false;
    for _ in 0..max_batches {
        let batch = spool.read_batch(batch_events.max(1), 1 << 16)?;
        let Some(&(last, _)) = batch.last() else {
            drained = true;
            break;
        };
        read.extend(batch.iter().map(|(seq, _)| *seq));
        spool.protect(Some(last));
        spool.ack_through(last)?;
        spool.protect(None);
    }
    let appended = spool.next_seq();
    let entry = Entry {
        id: "fuzz".into(),
        time_ns: 0,
        severity: 0,
        rule_id: "fuzz".into(),
        host: "fuzz".into(),
        body: "{}".into(),
    };
    spool.append(&[(appended, Arc::new(entry))])?;
    spool.sync()?;
    Ok(Replay {
        read,
        drained,
        appended,
        cursor: spool.cursor,
    })
}
