//! The spool's on-disk codec: segment file names, and the lines a segment
//! holds, `SEQ<TAB>CRC<TAB>JSON<LF>` records and the `#<TAB>CRC<TAB>{...}`
//! header (the layout is in the `spool` module docs). Encoding and parsing
//! one line only: no file I/O, no judgement of the sequence (`repair` does
//! that).
//!
//! May use the sink's [`Entry`] (the JSON of a record) and nothing else.

use std::fmt::Write as _;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::sink::Entry;

/// The file name of the segment whose first record is `first_seq`.
pub(super) fn seg_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The highest sequence number a record or the cursor can hold: numbering
/// starts at 1 and never gets near it, so a larger number is damage (and
/// `+ 1` on it could overflow).
pub(super) const MAX_SEQ: u64 = 1 << 62;

/// The sequence number at the start of a record line (no other check).
pub(super) fn parse_seq(line: &[u8]) -> Option<u64> {
    let tab = line.iter().position(|&b| b == b'\t')?;
    let seq: u64 = std::str::from_utf8(&line[..tab]).ok()?.parse().ok()?;
    (seq <= MAX_SEQ).then_some(seq)
}

/// The first line of a segment: where the previous segment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Header {
    pub(super) prev_first: u64,
    pub(super) prev_last: u64,
}

/// Appends one line `KEY<TAB>CRC<TAB>JSON<LF>`.
pub(super) fn encode_line(buf: &mut Vec<u8>, key: &str, json: &[u8]) {
    buf.extend_from_slice(key.as_bytes());
    buf.push(b'\t');
    let _ = write!(HexOut(buf), "{:08x}", crc32fast::hash(json));
    buf.push(b'\t');
    buf.extend_from_slice(json);
    buf.push(b'\n');
}

struct HexOut<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for HexOut<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// One line (or the first of several joined lines) that checks.
pub(super) enum Parsed {
    Header(Header),
    Record {
        seq: u64,
        /// The JSON bytes, relative to the start of the parse.
        json: Range<usize>,
        entry: Entry,
    },
}

/// Parses the record or header starting at `data[0]`. Returns it and the
/// length it takes, including its newline; a record directly followed by
/// another one (a lost newline) ends where its JSON ends. `None` when it
/// does not parse or its CRC does not match.
pub(super) fn parse_at(data: &[u8]) -> Option<(Parsed, usize)> {
    let tab = data.iter().take(21).position(|&b| b == b'\t')?;
    let key = &data[..tab];
    let header = key == b"#";
    let seq = if header {
        0
    } else if !key.is_empty() && key.iter().all(u8::is_ascii_digit) {
        std::str::from_utf8(key)
            .ok()?
            .parse()
            .ok()
            .filter(|&seq| seq <= MAX_SEQ)?
    } else {
        return None;
    };
    let mut j = tab + 1;
    let mut crc = None;
    if data.len() > j + 8
        && data[j + 8] == b'\t'
        && data[j..j + 8].iter().all(u8::is_ascii_hexdigit)
    {
        crc = Some(u32::from_str_radix(std::str::from_utf8(&data[j..j + 8]).ok()?, 16).ok()?);
        j += 9;
    } else if header {
        return None;
    }
    // The JSON starts right after the tab (no whitespace: it never spans lines).
    if data.get(j) != Some(&b'{') {
        return None;
    }
    let (parsed, len) = if header {
        let mut it = serde_json::Deserializer::from_slice(&data[j..]).into_iter::<Header>();
        let h = it.next()?.ok()?;
        (Parsed::Header(h), it.byte_offset())
    } else {
        let mut it = serde_json::Deserializer::from_slice(&data[j..]).into_iter::<Entry>();
        let entry = it.next()?.ok()?;
        let len = it.byte_offset();
        (
            Parsed::Record {
                seq,
                json: j..j + len,
                entry,
            },
            len,
        )
    };
    let end = j + len;
    if crc.is_some_and(|c| c != crc32fast::hash(&data[j..end])) {
        return None;
    }
    Some((parsed, end + usize::from(data.get(end) == Some(&b'\n'))))
}
