//! Checking and repairing the spool's segments when it is opened (the
//! `spool` module docs, "Damage"): each segment is parsed whole, its
//! sequence numbers are placed by their neighbours, the alerts lost are
//! counted once in `dropped_spool` and named in one warning, and a damaged
//! segment is rewritten atomically with only its good records.
//!
//! Part of [`Spool`]'s opening; may use the codec in `format`, the spool
//! directory (`crate::statedir`) and the sink's counters.

use std::fmt::Write as _;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::format::{Header, Parsed, encode_line, parse_at};
use super::{Spool, name_of, read_all};

/// One segment as checked and settled at open.
pub(super) struct Checked {
    pub(super) first_seq: u64,
    pub(super) path: PathBuf,
    /// The newest segment (the one appended to last).
    pub(super) newest: bool,
    /// Sequence number and end offset of the line of every record kept.
    pub(super) records: Vec<(u64, u64)>,
    /// File size.
    pub(super) bytes: u64,
}

/// A good record found in a segment.
pub(super) struct Found {
    pub(super) seq: u64,
    /// The JSON bytes in the file.
    pub(super) json: Range<usize>,
}

/// What checking one segment found.
pub(super) struct Check {
    pub(super) header: Option<Header>,
    /// Good records, numbers repaired, strictly increasing.
    pub(super) records: Vec<Found>,
    /// Byte ranges that do not parse (offset, length).
    pub(super) bad: Vec<(usize, usize)>,
    /// Newline-separated pieces in `bad` after the last good record.
    pub(super) bad_tail_pieces: u64,
    /// Records recovered from joined lines.
    pub(super) joined: u64,
    /// Sequence numbers renumbered, and records dropped as duplicates or
    /// out of order.
    pub(super) repaired: u64,
    pub(super) dropped: u64,
    /// The last line has no newline (a torn write that ended on a whole
    /// record): rewritten so the next append starts a line.
    pub(super) unterminated: bool,
}

impl Check {
    pub(super) fn damaged(&self) -> bool {
        !self.bad.is_empty()
            || self.joined > 0
            || self.repaired > 0
            || self.dropped > 0
            || self.unterminated
    }
}

/// Parses a segment's bytes, and checks the sequence numbers against
/// `first_seq` (from the file name), their neighbours and `end` (the last
/// sequence number, from the next segment's header, when known).
pub(super) fn check_segment(data: &[u8], first_seq: u64, end: Option<u64>) -> Check {
    let mut c = Check {
        header: None,
        records: Vec::new(),
        bad: Vec::new(),
        bad_tail_pieces: 0,
        joined: 0,
        repaired: 0,
        dropped: 0,
        unterminated: false,
    };
    let mut pos = 0;
    while pos < data.len() {
        match parse_at(&data[pos..]) {
            Some((parsed, len)) => {
                let joined = data[pos + len - 1] != b'\n' && pos + len < data.len();
                c.unterminated = data[pos + len - 1] != b'\n' && pos + len == data.len();
                match parsed {
                    Parsed::Header(h) if pos == 0 => c.header = Some(h),
                    Parsed::Header(_) => c.bad.push((pos, len)),
                    Parsed::Record { seq, json, .. } => {
                        if joined {
                            c.joined += 1;
                        }
                        c.records.push(Found {
                            seq,
                            json: pos + json.start..pos + json.end,
                        });
                        c.bad_tail_pieces = 0;
                    }
                }
                pos += len;
            }
            None => {
                let next = data[pos..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(data.len(), |i| pos + i + 1);
                match c.bad.last_mut() {
                    Some((o, l)) if *o + *l == pos => *l += next - pos,
                    _ => c.bad.push((pos, next - pos)),
                }
                c.bad_tail_pieces += 1;
                pos = next;
            }
        }
    }
    // Sequence numbers: consecutive from the file name's on. One that is
    // not the expected one is judged by its neighbours.
    let found = std::mem::take(&mut c.records);
    let mut expected = first_seq;
    let mut out: Vec<Found> = Vec::with_capacity(found.len());
    let mut it = found.into_iter().peekable();
    while let Some(mut rec) = it.next() {
        let s = rec.seq;
        let next = it.peek().map(|f| f.seq).or(end.map(|e| e + 1));
        if s == expected || (s > expected && next.is_none_or(|n| n > s)) {
            // In place, or after a gap (records missing before it).
        } else if next.is_none_or(|n| n > expected) {
            // Its neighbours say it is `expected`: an overwritten number.
            rec.seq = expected;
            c.repaired += 1;
        } else {
            // A duplicate or out-of-order number its neighbours do not
            // place: dropped (the gap it leaves is counted as lost).
            c.dropped += 1;
            continue;
        }
        expected = rec.seq + 1;
        out.push(rec);
    }
    c.records = out;
    c
}

/// Sequence numbers in `from..to` above `cursor` (not yet delivered).
fn undelivered(from: u64, to: u64, cursor: u64) -> u64 {
    to.saturating_sub(from.max(cursor + 1))
}

impl Spool {
    /// Checks and settles every segment (`names`: first sequence number
    /// and path, oldest first), newest first: each segment's header says
    /// where the one before it ended. Returns them oldest first.
    pub(super) fn check_all(&self, names: Vec<(u64, PathBuf)>) -> io::Result<Vec<Checked>> {
        let count = names.len();
        let mut end_of_prev: Option<Header> = None;
        let mut checked = Vec::with_capacity(count);
        for (i, (first_seq, path)) in names.into_iter().enumerate().rev() {
            let data = read_all(self.dir.open_read(name_of(&path))?)?;
            let end = end_of_prev
                .filter(|h| h.prev_first == first_seq)
                .map(|h| h.prev_last);
            let check = check_segment(&data, first_seq, end);
            end_of_prev = check.header;
            let (records, bytes) = self.settle(&path, first_seq, end, &data, check)?;
            checked.push(Checked {
                first_seq,
                path,
                newest: i + 1 == count,
                records,
                bytes,
            });
        }
        checked.reverse();
        Ok(checked)
    }

    /// Counts, logs and repairs what checking a segment found; returns its
    /// records (sequence number, end offset of the line) and file size.
    fn settle(
        &self,
        path: &Path,
        first_seq: u64,
        end: Option<u64>,
        data: &[u8],
        check: Check,
    ) -> io::Result<(Vec<(u64, u64)>, u64)> {
        let (lost, missing_end) = lost_records(&check, first_seq, end, self.cursor);
        if !check.damaged() && lost == 0 {
            // Intact (in either format): indexed as it is.
            return Ok((intact_records(&check, data), data.len() as u64));
        }
        let name = name_of(path).to_string_lossy().into_owned();
        let (records, bytes) = self.rewrite(path, &name, data, &check)?;
        let offsets = damage_offsets(&check, missing_end > 0 && end.is_some(), data.len());
        self.counters
            .dropped_spool
            .fetch_add(lost, Ordering::Relaxed);
        tracing::warn!(
            sink = %self.counters.name,
            file = %path.display(),
            lost,
            repaired = check.repaired,
            joined = check.joined,
            kept = records.len(),
            "spool segment {name} is damaged: {lost} alerts lost (counted in dropped_spool), at offsets {offsets}; {} sequence numbers repaired, {} duplicate or out-of-order records dropped, {} records split from joined lines; rewritten with the {} good records",
            check.repaired,
            check.dropped,
            check.joined,
            records.len()
        );
        Ok((records, bytes))
    }

    /// Rewrites a damaged segment with only the good records, in the
    /// current format (removes it when none is left); returns its records
    /// and file size as [`Spool::settle`] does.
    fn rewrite(
        &self,
        path: &Path,
        name: &str,
        data: &[u8],
        check: &Check,
    ) -> io::Result<(Vec<(u64, u64)>, u64)> {
        let mut out = Vec::with_capacity(data.len());
        if let Some(h) = check.header {
            encode_line(
                &mut out,
                "#",
                &serde_json::to_vec(&h).map_err(io::Error::other)?,
            );
        }
        let mut records = Vec::with_capacity(check.records.len());
        for r in &check.records {
            encode_line(&mut out, &r.seq.to_string(), &data[r.json.clone()]);
            records.push((r.seq, out.len() as u64));
        }
        if records.is_empty() {
            self.dir.remove(name_of(path))?;
        } else {
            self.dir
                .write_atomic(name, &out, 0o600, true)
                .map_err(io::Error::other)?;
        }
        Ok((records, out.len() as u64))
    }
}

/// Alerts lost from a segment: every sequence number of it (consecutive
/// from the file name's to `end`) without a good record, unless delivered
/// (at or below `cursor`). Returns them all, and those missing at its end.
fn lost_records(check: &Check, first_seq: u64, end: Option<u64>, cursor: u64) -> (u64, u64) {
    let mut lost = 0;
    let mut expected = first_seq;
    for r in &check.records {
        lost += undelivered(expected, r.seq, cursor);
        expected = r.seq + 1;
    }
    let missing_end = match end {
        Some(e) if e + 1 > expected => undelivered(expected, e + 1, cursor),
        Some(_) => 0,
        // The newest segment: each unreadable piece after the last good
        // record was (at least) one record.
        None => undelivered(expected, expected + check.bad_tail_pieces, cursor),
    };
    (lost + missing_end, missing_end)
}

/// The records of an intact segment, as [`Spool::settle`] returns them.
fn intact_records(check: &Check, data: &[u8]) -> Vec<(u64, u64)> {
    let mut pos = match check.header {
        Some(_) => data.iter().position(|&b| b == b'\n').map_or(0, |p| p + 1),
        None => 0,
    };
    check
        .records
        .iter()
        .map(|r| {
            pos = r.json.end + 1;
            (r.seq, pos as u64)
        })
        .collect()
}

/// Where a damaged segment is damaged, for the warning (`cut_short`:
/// records are missing at its end; `len`: its size).
fn damage_offsets(check: &Check, cut_short: bool, len: usize) -> String {
    let mut offsets = String::new();
    for (o, l) in check.bad.iter().take(8) {
        let _ = write!(
            offsets,
            "{}{o} ({l} bytes unreadable)",
            if offsets.is_empty() { "" } else { ", " }
        );
    }
    if check.bad.len() > 8 {
        let _ = write!(offsets, " and {} more", check.bad.len() - 8);
    }
    if cut_short {
        let _ = write!(
            offsets,
            "{}{} (end of file: records missing)",
            if offsets.is_empty() { "" } else { ", " },
            len
        );
    }
    if offsets.is_empty() {
        offsets.push_str("none unreadable");
    }
    offsets
}
