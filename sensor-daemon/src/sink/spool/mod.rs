//! The on-disk spool of one remote sink: `<state_dir>/spool/<sink>/`.
//!
//! Layout: segment files `<first-seq, 20 digits>.seg`, each holding records
//! as lines `SEQ<TAB>CRC<TAB>JSON<LF>` in sequence order, where CRC is the
//! CRC-32 (IEEE, 8 lowercase hex digits) of the JSON bytes; segments written
//! by earlier versions (`SEQ<TAB>JSON<LF>`, no CRC) are still read. Every
//! segment but the first one written in a run starts with a header line
//! `#<TAB>CRC<TAB>{"prev_first":F,"prev_last":L}<LF>`: the previous
//! segment's first and last sequence numbers when this one was started, so
//! that records cut off the end of that segment can be counted. Sequence
//! numbers are strictly increasing, and consecutive within a segment.
//! `cursor` holds the last sequence number the receiver acknowledged; `lock`
//! is held (flock) while a daemon uses the directory, so two daemons never
//! share a spool.
//!
//! Order: records are appended in sequence order and read from the oldest
//! segment on; a record leaves the spool only when the receiver acknowledged
//! it (the cursor moves past it, and a segment whose records are all
//! acknowledged is deleted). After a restart, records at or below the cursor
//! are skipped, so an acknowledged alert is not sent again.
//!
//! Damage: every segment is checked once when the spool is opened. A line
//! that does not parse, or whose CRC does not match, is damaged; two records
//! on one line (a lost newline) are both kept; a record whose sequence
//! number is not the next one but whose payload checks is renumbered when
//! its neighbours agree on its place (a duplicate or out-of-order number
//! never survives). The number of records lost is known from the gaps in
//! the sequence (consecutive within a segment, and the next segment's
//! header says where this one ended); each is counted once in
//! `dropped_spool`, a damaged segment is named in one warning (file, byte
//! offsets, alerts lost, numbers repaired) and rewritten atomically with
//! only its good records. A record torn at the end of the newest segment
//! counts as one alert lost; whole records cut off the end of the newest
//! segment leave no trace and cannot be counted. An old-format record with
//! a flipped byte that still parses cannot be told from a good one.
//!
//! Durability: every append is one `write(2)` of whole lines, so a daemon
//! crash or kill loses nothing that was spooled; a segment is fsynced when
//! it is closed (rotation) and on shutdown, and the cursor is replaced
//! atomically (write + rename) on every acknowledgement. Durable sinks
//! (`durable = true`) also call [`Spool::commit`] after every append (one
//! fsync per append, however many records it holds: group commit), so what
//! is appended survives a power loss as well. Otherwise a power loss can
//! lose the unsynced tail of the newest segment (at most one segment). A
//! power loss can also roll the cursor back (the receiver then sees some
//! alerts twice).
//!
//! Bound: when the unacknowledged bytes exceed `max_bytes`, whole segments
//! are dropped, oldest first, and their records counted as dropped. The
//! batch being delivered is never dropped under it (the next-oldest segment
//! goes instead), so delivered and dropped counts never overlap.
//!
//! Files: this one owns [`Spool`] (open, append, read, acknowledge, bound,
//! sync); `format.rs` encodes and parses lines; `repair.rs` checks and
//! repairs segments at open; `fuzz.rs` is the fuzz target's way in. The
//! spool is synchronous file I/O (the remote sink calls it on tokio's
//! blocking pool); it may use the sink's [`Entry`] and counters and
//! `crate::statedir`, nothing else.

mod format;
#[cfg(feature = "fuzzing")]
mod fuzz;
mod repair;

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Entry;
use super::stats::SinkCounters;
use crate::statedir::Dir;
use format::{Header, MAX_SEQ, Parsed, encode_line, parse_at, parse_seq, seg_name};
use repair::Checked;

#[cfg(feature = "fuzzing")]
pub use fuzz::replay_for_fuzzing;

struct Segment {
    first_seq: u64,
    last_seq: u64,
    path: PathBuf,
    /// File size.
    bytes: u64,
    /// Records in the file.
    events: u64,
}

pub(crate) struct Spool {
    /// The spool directory, checked (see `statedir`): every file in it is
    /// opened relative to it and never through a link.
    dir: Dir,
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    segments: VecDeque<Segment>,
    /// Append handle of the newest segment.
    writer: Option<File>,
    /// A segment file was created since the last directory fsync.
    dir_dirty: bool,
    /// Last acknowledged sequence number.
    cursor: u64,
    /// Bytes and records of `segments[0]` already acknowledged.
    head_offset: u64,
    head_acked: u64,
    /// Records with a sequence number up to this one are being delivered.
    protect_through: Option<u64>,
    next_seq: u64,
    counters: Arc<SinkCounters>,
}

/// The file name of a segment path (segments are always in the spool dir).
fn name_of(path: &Path) -> &OsStr {
    path.file_name().expect("segment paths end in a file name")
}

/// `O_WRONLY | O_CREAT | O_APPEND`.
const APPEND: i32 = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND;

fn read_all(mut f: File) -> io::Result<Vec<u8>> {
    let mut data = Vec::new();
    io::Read::read_to_end(&mut f, &mut data)?;
    Ok(data)
}

/// Takes the spool's `lock` (flock): two daemons never share a spool.
fn lock(dir: &Dir) -> io::Result<File> {
    let lock = dir.open_file(OsStr::new("lock"), libc::O_WRONLY | libc::O_CREAT, 0o600)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "the spool is locked by another running torsensor",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The last acknowledged sequence number (0: none, or not one that can be).
fn read_cursor(dir: &Dir) -> io::Result<u64> {
    match dir
        .open_read(OsStr::new("cursor"))
        .and_then(io::read_to_string)
    {
        Ok(s) => Ok(s.trim().parse().ok().filter(|&c| c <= MAX_SEQ).unwrap_or(0)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// The segment files (first sequence number from the name, and path),
/// oldest first.
fn segment_files(dir: &Dir) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    for ent in std::fs::read_dir(dir.path())? {
        let ent = ent?;
        let name = ent.file_name();
        let name = name.to_string_lossy();
        if let Some(first) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|&n| n <= MAX_SEQ)
        {
            names.push((first, ent.path()));
        }
    }
    names.sort();
    Ok(names)
}

impl Spool {
    /// Opens (creating, mode 0700) and locks the spool directory and
    /// indexes its segments. The directory is checked like the state
    /// directory (owner, mode, not a link); the sinks open it through the
    /// state directory with [`Spool::open_in`].
    #[cfg(test)]
    pub(crate) fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        counters: Arc<SinkCounters>,
    ) -> io::Result<Spool> {
        let dir = Dir::open(dir, crate::statedir::SPOOL_DIR_MODE).map_err(io::Error::other)?;
        Self::open_in(dir, max_bytes, segment_bytes, counters)
    }

    /// Locks an opened, checked spool directory, checks every segment
    /// (module docs, "Damage") and indexes them.
    pub(crate) fn open_in(
        dir: Dir,
        max_bytes: u64,
        segment_bytes: u64,
        counters: Arc<SinkCounters>,
    ) -> io::Result<Spool> {
        let lock = lock(&dir)?;
        let cursor = read_cursor(&dir)?;
        let names = segment_files(&dir)?;
        let mut spool = Spool {
            dir,
            _lock: lock,
            max_bytes,
            segment_bytes: segment_bytes.min(max_bytes / 4).max(1024),
            segments: VecDeque::new(),
            writer: None,
            dir_dirty: false,
            cursor,
            head_offset: 0,
            head_acked: 0,
            protect_through: None,
            next_seq: cursor + 1,
            counters,
        };
        let checked = spool.check_all(names)?;
        spool.index(checked)?;
        if spool.live_events() == 0 {
            // Everything was acknowledged: start clean.
            spool.clear()?;
        }
        spool.publish();
        Ok(spool)
    }

    /// Indexes the checked segments (oldest first), removing those that
    /// hold nothing to deliver.
    fn index(&mut self, checked: Vec<Checked>) -> io::Result<()> {
        let cursor = self.cursor;
        for c in checked {
            let records = c.records;
            let events = records.len() as u64;
            let acked = records.iter().filter(|r| r.0 <= cursor).count() as u64;
            let acked_bytes = records
                .iter()
                .rev()
                .find(|r| r.0 <= cursor)
                .map_or(0, |r| r.1);
            if events == 0 || (acked == events && !c.newest) {
                self.dir.remove(name_of(&c.path))?;
                continue;
            }
            let last_seq = records.last().map_or(c.first_seq, |r| r.0);
            self.next_seq = self.next_seq.max(last_seq.saturating_add(1));
            if self.segments.is_empty() {
                self.head_offset = acked_bytes;
                self.head_acked = acked;
            }
            self.segments.push_back(Segment {
                first_seq: c.first_seq,
                last_seq,
                path: c.path,
                bytes: c.bytes,
                events,
            });
        }
        Ok(())
    }

    pub(crate) fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    pub(crate) fn live_events(&self) -> u64 {
        self.segments.iter().map(|s| s.events).sum::<u64>() - self.head_acked
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum::<u64>() - self.head_offset
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.live_events() == 0
    }

    fn publish(&self) {
        self.counters
            .spooled_events
            .store(self.live_events(), Ordering::Relaxed);
        self.counters
            .spooled_bytes
            .store(self.live_bytes(), Ordering::Relaxed);
    }

    fn clear(&mut self) -> io::Result<()> {
        self.writer = None;
        for s in self.segments.drain(..) {
            self.dir.remove(name_of(&s.path))?;
        }
        self.head_offset = 0;
        self.head_acked = 0;
        Ok(())
    }

    pub(crate) fn protect(&mut self, through: Option<u64>) {
        self.protect_through = through;
    }

    fn rotate(&mut self, first_seq: u64) -> io::Result<()> {
        if let Some(w) = self.writer.take() {
            w.sync_data()?;
        }
        let name = seg_name(first_seq);
        let mut f = self.dir.open_file(OsStr::new(&name), APPEND, 0o600)?;
        self.dir_dirty = true;
        // Where the previous segment ends, so that records cut off its end
        // can be counted.
        let mut header = Vec::new();
        if let Some(prev) = self.segments.back() {
            let h = Header {
                prev_first: prev.first_seq,
                prev_last: prev.last_seq,
            };
            encode_line(
                &mut header,
                "#",
                &serde_json::to_vec(&h).map_err(io::Error::other)?,
            );
            if let Err(e) = f.write_all(&header) {
                let _ = f.set_len(0);
                drop(f);
                let _ = self.dir.remove(OsStr::new(&name));
                return Err(e);
            }
        }
        let path = self.dir.path().join(name);
        self.writer = Some(f);
        self.segments.push_back(Segment {
            first_seq,
            last_seq: first_seq,
            path,
            bytes: header.len() as u64,
            events: 0,
        });
        Ok(())
    }

    /// Appends records (in sequence order), then enforces the size bound.
    pub(crate) fn append(&mut self, records: &[(u64, Arc<Entry>)]) -> io::Result<()> {
        let mut buf = Vec::new();
        let mut json = Vec::new();
        let mut i = 0;
        while i < records.len() {
            let tail_full = self
                .segments
                .back()
                .is_none_or(|s| s.bytes >= self.segment_bytes)
                || self.writer.is_none();
            if tail_full {
                self.rotate(records[i].0)?;
            }
            buf.clear();
            let tail = self.segments.back_mut().expect("a tail segment");
            let room = self.segment_bytes.saturating_sub(tail.bytes);
            let mut events = 0;
            let mut last_seq = tail.last_seq;
            while i < records.len() {
                let (seq, entry) = &records[i];
                let before = buf.len();
                json.clear();
                serde_json::to_writer(&mut json, &**entry).map_err(io::Error::other)?;
                encode_line(&mut buf, &seq.to_string(), &json);
                if buf.len() as u64 > room && events > 0 {
                    buf.truncate(before);
                    break;
                }
                last_seq = *seq;
                events += 1;
                i += 1;
            }
            if let Err(e) = self.writer.as_mut().expect("writer").write_all(&buf) {
                // Undo a partial write so the file matches the index; the
                // next append starts a new segment.
                if let Some(w) = self.writer.take() {
                    let _ = w.set_len(tail.bytes);
                }
                self.publish();
                return Err(e);
            }
            tail.bytes += buf.len() as u64;
            tail.events += events;
            tail.last_seq = last_seq;
        }
        self.enforce_bound()?;
        self.publish();
        Ok(())
    }

    fn enforce_bound(&mut self) -> io::Result<()> {
        while self.live_bytes() > self.max_bytes {
            // Segments holding any record of the batch in delivery are kept.
            let victim = match self.protect_through {
                Some(p) => self
                    .segments
                    .iter()
                    .position(|s| s.first_seq > p)
                    .unwrap_or(self.segments.len()),
                None => 0,
            };
            if victim >= self.segments.len() {
                break;
            }
            if victim + 1 == self.segments.len() {
                // The victim is the segment being written: the next append
                // starts a new one (named after its first record).
                self.writer = None;
            }
            let seg = self.segments.remove(victim).expect("victim exists");
            let dropped = if victim == 0 {
                let d = seg.events - self.head_acked;
                self.head_offset = 0;
                self.head_acked = 0;
                d
            } else {
                seg.events
            };
            self.dir.remove(name_of(&seg.path))?;
            self.counters
                .dropped_spool
                .fetch_add(dropped, Ordering::Relaxed);
            self.counters.note_drop(&format!(
                "spool is full ({} bytes): dropped {dropped} oldest spooled alerts",
                self.max_bytes
            ));
            // Seen as acknowledged from now on (skipped after a restart too).
            if victim == 0 {
                self.cursor = self.cursor.max(seg.last_seq);
                self.write_cursor()?;
            }
            if self.segments.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// Reads up to `max_events` / `max_bytes` (at least one record) from the
    /// oldest unacknowledged record on, without removing anything.
    pub(crate) fn read_batch(
        &self,
        max_events: usize,
        max_bytes: usize,
    ) -> io::Result<Vec<(u64, Arc<Entry>)>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (i, seg) in self.segments.iter().enumerate() {
            let mut f = BufReader::new(self.dir.open_read(name_of(&seg.path))?);
            if i == 0 {
                f.seek(SeekFrom::Start(self.head_offset))?;
            }
            let mut line = Vec::new();
            let mut pos = if i == 0 { self.head_offset } else { 0 };
            while pos < seg.bytes {
                line.clear();
                let n = f.read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                pos += n as u64;
                let (seq, entry) = match parse_at(&line) {
                    Some((Parsed::Record { seq, entry, .. }, _)) => (seq, entry),
                    Some((Parsed::Header(_), _)) => continue,
                    None => {
                        // Checked when the spool was opened: damaged since.
                        tracing::warn!(file = %seg.path.display(), offset = pos - n as u64, "skipping an unreadable spool record");
                        continue;
                    }
                };
                if seq <= self.cursor {
                    continue;
                }
                if !out.is_empty()
                    && (out.len() >= max_events || bytes + entry.body.len() > max_bytes)
                {
                    return Ok(out);
                }
                bytes += entry.body.len();
                out.push((seq, Arc::new(entry)));
            }
        }
        Ok(out)
    }

    /// The receiver acknowledged every record up to `seq`.
    pub(crate) fn ack_through(&mut self, seq: u64) -> io::Result<()> {
        if seq <= self.cursor {
            return Ok(());
        }
        self.cursor = seq;
        while let Some(seg) = self.segments.front() {
            if seg.last_seq <= seq {
                // Whole segment acknowledged.
                let is_tail = self.segments.len() == 1;
                if is_tail {
                    self.writer = None;
                }
                let seg = self.segments.pop_front().expect("front");
                self.dir.remove(name_of(&seg.path))?;
                self.head_offset = 0;
                self.head_acked = 0;
                continue;
            }
            // Partly acknowledged: walk the acknowledged lines.
            let mut f = BufReader::new(self.dir.open_read(name_of(&seg.path))?);
            f.seek(SeekFrom::Start(self.head_offset))?;
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = f.read_until(b'\n', &mut line)?;
                if n == 0 || parse_seq(&line).is_some_and(|s| s > seq) {
                    break;
                }
                self.head_offset += n as u64;
                if !line.starts_with(b"#\t") {
                    self.head_acked += 1;
                }
            }
            break;
        }
        self.write_cursor()?;
        self.publish();
        Ok(())
    }

    fn write_cursor(&self) -> io::Result<()> {
        // Replaced through a new, unpredictably named file (never through
        // a name that could already exist); not fsynced, as before (see
        // the module docs: a power loss may roll the cursor back).
        let text = format!("{}\n", self.cursor);
        self.dir
            .write_atomic("cursor", text.as_bytes(), 0o600, false)
            .map_err(io::Error::other)
    }

    /// Durable sinks, after every append: fsyncs the newest segment, and
    /// the directory when a segment was created since the last commit.
    pub(crate) fn commit(&mut self) -> io::Result<()> {
        if let Some(w) = &self.writer {
            w.sync_data()?;
        }
        if self.dir_dirty {
            self.dir.sync()?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    /// fsyncs the newest segment and the directory (shutdown).
    pub(crate) fn sync(&mut self) -> io::Result<()> {
        if let Some(w) = &self.writer {
            w.sync_data()?;
        }
        self.dir.sync()
    }
}

#[cfg(test)]
mod tests {
    use super::repair::{Check, check_segment};
    use super::*;

    fn entry(n: u64) -> Arc<Entry> {
        Arc::new(Entry {
            id: format!("id{n}"),
            time_ns: n,
            severity: 50,
            rule_id: "r".into(),
            host: "h".into(),
            body: format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(100)),
        })
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("torsensor-spool-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn ns(batch: &[(u64, Arc<Entry>)]) -> Vec<u64> {
        batch.iter().map(|(_, e)| e.time_ns).collect()
    }

    #[test]
    fn order_ack_and_reopen() {
        let d = dir("order");
        let c = Arc::new(SinkCounters::default());
        let mut s = Spool::open(&d, 1 << 20, 1024, c.clone()).unwrap();
        let recs: Vec<_> = (0..30).map(|n| (s.next_seq(), entry(n))).collect();
        s.append(&recs[..10]).unwrap();
        s.append(&recs[10..]).unwrap();
        assert!(s.segments.len() > 2, "small segments rotate");
        assert_eq!(s.live_events(), 30);
        let b = s.read_batch(7, 1 << 20).unwrap();
        assert_eq!(ns(&b), (0..7).collect::<Vec<_>>());
        s.ack_through(b.last().unwrap().0).unwrap();
        assert_eq!(s.live_events(), 23);
        assert_eq!(c.spooled_events.load(Ordering::Relaxed), 23);
        drop(s);
        // Restart: the acknowledged records stay gone, order is kept, new
        // sequence numbers come after the old ones.
        let mut s = Spool::open(&d, 1 << 20, 1024, c.clone()).unwrap();
        assert_eq!(s.live_events(), 23);
        let b = s.read_batch(100, 1 << 20).unwrap();
        assert_eq!(ns(&b), (7..30).collect::<Vec<_>>());
        assert!(s.next_seq() > recs.last().unwrap().0);
        s.ack_through(b.last().unwrap().0).unwrap();
        assert!(s.is_empty());
        assert_eq!(
            std::fs::read_dir(&d)
                .unwrap()
                .filter(|e| e
                    .as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg"))
                .count(),
            0
        );
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn line(seq: u64, n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        encode_line(
            &mut out,
            &seq.to_string(),
            &serde_json::to_vec(&*entry(n)).unwrap(),
        );
        out
    }

    fn seqs(c: &Check) -> Vec<u64> {
        c.records.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn segment_check_recovers_joined_lines_and_places_numbers() {
        // Intact.
        let good: Vec<u8> = (10..15).flat_map(|s| line(s, s)).collect();
        let c = check_segment(&good, 10, None);
        assert_eq!(seqs(&c), [10, 11, 12, 13, 14]);
        assert!(!c.damaged());
        // Two lines joined: both kept.
        let mut joined = good.clone();
        let nl = line(10, 10).len() - 1;
        joined.remove(nl);
        let c = check_segment(&joined, 10, None);
        assert_eq!((seqs(&c), c.joined), (vec![10, 11, 12, 13, 14], 1));
        // An overwritten number (a duplicate, or far ahead) is put back in
        // its place; a flipped byte costs that record only.
        for wrong in [10, 99] {
            let mut data: Vec<u8> = [10, 11].iter().flat_map(|&s| line(s, s)).collect();
            data.extend(line(wrong, 12));
            data.extend((13..15).flat_map(|s| line(s, s)));
            let c = check_segment(&data, 10, None);
            assert_eq!(
                (seqs(&c), c.repaired),
                (vec![10, 11, 12, 13, 14], 1),
                "{wrong}"
            );
        }
        let mut flipped = good.clone();
        let at = line(10, 10).len() + 40;
        flipped[at] ^= 1;
        let c = check_segment(&flipped, 10, None);
        assert_eq!(seqs(&c), [10, 12, 13, 14]);
        assert_eq!(c.bad.len(), 1);
        // The last number overwritten: the next segment's header places it.
        let mut data: Vec<u8> = (10..14).flat_map(|s| line(s, s)).collect();
        data.extend(line(7, 14));
        let c = check_segment(&data, 10, Some(14));
        assert_eq!((seqs(&c), c.repaired), (vec![10, 11, 12, 13, 14], 1));
        // Garbage is not a record.
        assert!(parse_at(b"12\tnot json\n").is_none());
        assert!(parse_at(b"\t{}\n").is_none());
        assert!(parse_at(b"#\t00000000\t{\"prev_first\":1,\"prev_last\":2}\n").is_none());
    }

    #[test]
    fn old_format_segments_are_read() {
        let d = dir("v1");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        let mut data = Vec::new();
        for n in 0..5 {
            data.extend_from_slice(format!("{}\t", n + 1).as_bytes());
            serde_json::to_writer(&mut data, &*entry(n)).unwrap();
            data.push(b'\n');
        }
        std::fs::write(d.join(seg_name(1)), &data).unwrap();
        let c = Arc::new(SinkCounters::default());
        let mut s = Spool::open(&d, 1 << 20, 1 << 16, c.clone()).unwrap();
        assert_eq!(s.live_events(), 5);
        assert_eq!(
            std::fs::read(d.join(seg_name(1))).unwrap(),
            data,
            "left as it is"
        );
        let recs: Vec<_> = (5..7).map(|n| (s.next_seq(), entry(n))).collect();
        s.append(&recs).unwrap();
        let b = s.read_batch(100, 1 << 20).unwrap();
        assert_eq!(ns(&b), (0..7).collect::<Vec<_>>());
        assert_eq!(c.dropped_spool.load(Ordering::Relaxed), 0);
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Found by the `spool` fuzz target: a damaged record numbered
    /// u64::MAX overflowed `last_seq + 1` at start-up (and a cursor of
    /// u64::MAX would overflow `cursor + 1`).
    #[test]
    fn sequence_numbers_near_u64_max_are_damage() {
        let d = dir("maxseq");
        let c = Arc::new(SinkCounters::default());
        let mut s = Spool::open(&d, 1 << 20, 1 << 16, c.clone()).unwrap();
        let records: Vec<_> = (0..2).map(|n| (s.next_seq(), entry(n))).collect();
        s.append(&records).unwrap();
        let path = s.segments[0].path.clone();
        drop(s);
        let line = serde_json::to_string(&*entry(7)).unwrap();
        append_to(&path, format!("{}\t{line}\n", u64::MAX).as_bytes());
        let mut s = Spool::open(&d, 1 << 20, 1 << 16, c.clone()).unwrap();
        assert_eq!(ns(&s.read_batch(10, 1 << 20).unwrap()), vec![0, 1]);
        assert_eq!(s.next_seq(), 3);
        drop(s);
        // A cursor that cannot be one counts as none.
        std::fs::write(d.join("cursor"), format!("{}\n", u64::MAX)).unwrap();
        let mut s = Spool::open(&d, 1 << 20, 1 << 16, c).unwrap();
        assert_eq!(ns(&s.read_batch(10, 1 << 20).unwrap()), vec![0, 1]);
        assert_eq!(s.next_seq(), 3);
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Appends raw bytes to a segment file, as a crash or a hand would.
    fn append_to(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    #[test]
    fn torn_tail_and_lock() {
        let d = dir("torn");
        let c = Arc::new(SinkCounters::default());
        let mut s = Spool::open(&d, 1 << 20, 1 << 16, c.clone()).unwrap();
        let recs: Vec<_> = (0..3).map(|n| (s.next_seq(), entry(n))).collect();
        s.append(&recs).unwrap();
        assert!(
            Spool::open(&d, 1 << 20, 1 << 16, c.clone()).is_err(),
            "second user is refused"
        );
        let path = s.segments[0].path.clone();
        drop(s);
        append_to(&path, b"4\t{\"id\":\"x\",\"ti");
        let s = Spool::open(&d, 1 << 20, 1 << 16, c.clone()).unwrap();
        assert_eq!(ns(&s.read_batch(10, 1 << 20).unwrap()), vec![0, 1, 2]);
        assert_eq!(
            c.dropped_spool.load(Ordering::Relaxed),
            1,
            "the torn record is counted"
        );
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failed_write_leaves_a_consistent_spool() {
        let d = dir("enospc");
        let c = Arc::new(SinkCounters::default());
        let mut s = Spool::open(&d, 1 << 20, 1 << 16, c.clone()).unwrap();
        let first = s.next_seq();
        // The segment this append opens is a /dev/full device node (char
        // 1:7; a link to /dev/full would not be followed): the write fails
        // with ENOSPC. Making a device node needs root (CAP_MKNOD).
        let node = std::ffi::CString::new(
            d.join(seg_name(first))
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: a NUL-terminated path alive for the call.
        if unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 7)) } != 0 {
            eprintln!(
                "skipped failed_write_leaves_a_consistent_spool: cannot make a device node ({})",
                io::Error::last_os_error()
            );
            return;
        }
        let err = s.append(&[(first, entry(0))]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
        // The next append goes to a new segment; nothing garbled is read back.
        let recs: Vec<_> = (1..4).map(|n| (s.next_seq(), entry(n))).collect();
        s.append(&recs).unwrap();
        let b = s.read_batch(10, 1 << 20).unwrap();
        assert_eq!(ns(&b), vec![1, 2, 3]);
        s.ack_through(b.last().unwrap().0).unwrap();
        assert!(s.is_empty());
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn batch_in_delivery_is_not_dropped() {
        let d = dir("protect");
        let c = Arc::new(SinkCounters::default());
        let mut s = Spool::open(&d, 4096, 1024, c.clone()).unwrap();
        let first = s.next_seq();
        s.append(&[(first, entry(0))]).unwrap();
        s.protect(Some(first));
        for n in 1..100 {
            let seq = s.next_seq();
            s.append(&[(seq, entry(n))]).unwrap();
        }
        let left = ns(&s.read_batch(1000, 1 << 20).unwrap());
        assert_eq!(left[0], 0, "the record in delivery stays");
        // The head segment (record 0 and its neighbours) stays whole; the
        // next-oldest segments went instead, and the newest are kept.
        let gap = left
            .windows(2)
            .position(|w| w[1] != w[0] + 1)
            .expect("a dropped run");
        assert_eq!(left[..=gap], (0..=gap as u64).collect::<Vec<_>>()[..]);
        assert_eq!(*left.last().unwrap(), 99);
        assert!(s.live_bytes() <= 4096);
        assert_eq!(
            c.dropped_spool.load(Ordering::Relaxed) + left.len() as u64,
            100
        );
        // Delivered: the next trim drops from the head again.
        s.ack_through(first).unwrap();
        s.protect(None);
        assert!(s.live_bytes() <= 4096);
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn full_spool_drops_oldest_and_counts() {
        let d = dir("full");
        let c = Arc::new(SinkCounters::default());
        let mut s = Spool::open(&d, 4096, 1024, c.clone()).unwrap();
        for n in 0..200 {
            let seq = s.next_seq();
            s.append(&[(seq, entry(n))]).unwrap();
        }
        assert!(s.live_bytes() <= 4096);
        let dropped = c.dropped_spool.load(Ordering::Relaxed);
        let left = ns(&s.read_batch(1000, 1 << 20).unwrap());
        assert_eq!(dropped + left.len() as u64, 200);
        assert_eq!(*left.last().unwrap(), 199);
        assert_eq!(left, (200 - left.len() as u64..200).collect::<Vec<_>>());
        drop(s);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
