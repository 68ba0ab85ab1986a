//! Text inputs, line by line, with bounded memory: a line longer than
//! [`MAX_LINE`] is a bad record (skipped to its end), never a reason to
//! buffer without limit. Times in the formats logs use.

use std::io::BufRead;

use super::Records;

/// Longest line read (bytes); longer ones are skipped and reported.
pub const MAX_LINE: usize = 1 << 20;

/// One line: its bytes (without the newline), offset and number.
pub struct Line<'a> {
    pub text: &'a str,
    pub offset: u64,
    pub number: u64,
}

/// Calls `f` with each line; a line that is too long or not UTF-8 goes to
/// `bad` with its offset. `progress` gets the bytes read now and then.
pub fn for_each_line(
    mut reader: impl BufRead,
    mut f: impl FnMut(Line<'_>),
    mut bad: impl FnMut(u64, &str),
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut offset: u64 = 0;
    let mut number: u64 = 0;
    let mut since_progress: u64 = 0;
    loop {
        buf.clear();
        let (n, too_long) = read_line_bounded(&mut reader, &mut buf)?;
        if n == 0 {
            break;
        }
        number += 1;
        let at = offset;
        offset += n as u64;
        since_progress += n as u64;
        if since_progress >= 4 << 20 {
            progress(offset);
            since_progress = 0;
        }
        if too_long {
            bad(
                at,
                &format!("line {number} is longer than {MAX_LINE} bytes"),
            );
            continue;
        }
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        match std::str::from_utf8(&buf) {
            Ok(text) => f(Line {
                text,
                offset: at,
                number,
            }),
            Err(_) => bad(at, &format!("line {number} is not UTF-8")),
        }
    }
    progress(offset);
    Ok(())
}

/// Reads `reader` line by line into `out`: `each` turns a line (not
/// blank) into records, and an `Err` from it is a bad record named by the
/// line's number; a line too long or not UTF-8 is one too.
pub fn records_by_line(
    reader: impl BufRead,
    out: &mut dyn Records,
    progress: &mut dyn FnMut(u64),
    mut each: impl FnMut(&Line<'_>, &mut dyn Records) -> Result<(), String>,
) -> std::io::Result<()> {
    let mut unreadable: Vec<(u64, String)> = Vec::new();
    for_each_line(
        reader,
        |line| {
            if line.text.trim().is_empty() {
                return;
            }
            if let Err(why) = each(&line, out) {
                out.bad(line.offset, &format!("line {}: {why}", line.number));
            }
        },
        |o, why| unreadable.push((o, why.to_owned())),
        progress,
    )?;
    for (o, why) in unreadable {
        out.bad(o, &why);
    }
    Ok(())
}

/// Reads to the next newline, keeping at most [`MAX_LINE`] bytes; returns
/// the bytes consumed and whether the line was cut.
fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
) -> std::io::Result<(usize, bool)> {
    let mut total = 0;
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok((total, too_long));
        }
        let (chunk, done) = match memchr_newline(available) {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let len = chunk.len();
        if buf.len() + len <= MAX_LINE {
            buf.extend_from_slice(chunk);
        } else {
            too_long = true;
        }
        reader.consume(len);
        total += len;
        if done {
            return Ok((total, too_long));
        }
    }
}

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Nanoseconds since 1970 of a civil UTC time, if in range.
pub fn civil_ns(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32, frac_ns: u64) -> Option<u64> {
    if !(1970..=9999).contains(&y)
        || !(1..=12).contains(&mo)
        || !(1..=31).contains(&d)
        || h > 23
        || mi > 59
        || s > 60
    {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s);
    u64::try_from(secs)
        .ok()
        .map(|s| s.saturating_mul(1_000_000_000).saturating_add(frac_ns))
}

/// `2025-03-01 12:00:00[.fff]`, `2025-03-01T12:00:00[.fff][Z|+hh:mm]`:
/// without a zone, UTC.
pub fn parse_iso(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Ok(st) = humantime::parse_rfc3339_weak(t) {
        return st
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_nanos() as u64);
    }
    if let Ok(st) = humantime::parse_rfc3339(t) {
        return st
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_nanos() as u64);
    }
    // With an offset other than Z: apply it.
    let b = t.as_bytes();
    if b.len() >= 25 && (b[b.len() - 6] == b'+' || b[b.len() - 6] == b'-') && b[b.len() - 3] == b':'
    {
        let (main, zone) = t.split_at(t.len() - 6);
        let base = parse_iso(main)?;
        let sign: i64 = if zone.starts_with('-') { 1 } else { -1 };
        let hh: i64 = zone[1..3].parse().ok()?;
        let mm: i64 = zone[4..6].parse().ok()?;
        let shift = sign * (hh * 3600 + mm * 60) * 1_000_000_000;
        return u64::try_from(base as i64 + shift).ok();
    }
    None
}

/// Epoch seconds as a decimal (`1733011200.123456`).
pub fn parse_epoch(text: &str) -> Option<u64> {
    let t = text.trim();
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let secs: u64 = int.parse().ok()?;
    let mut frac_ns: u64 = 0;
    if !frac.is_empty() {
        if !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let digits = &frac[..frac.len().min(9)];
        frac_ns = digits.parse::<u64>().ok()? * 10u64.pow(9 - digits.len() as u32);
    }
    secs.checked_mul(1_000_000_000)?.checked_add(frac_ns)
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// The common log format's time: `01/Mar/2025:12:00:00 +0100`.
pub fn parse_clf(text: &str) -> Option<u64> {
    let (dt, zone) = text.trim().split_once(' ')?;
    let mut parts = dt.splitn(3, '/');
    let d: u32 = parts.next()?.parse().ok()?;
    let mon = parts.next()?;
    let rest = parts.next()?;
    let mo = MONTHS.iter().position(|m| *m == mon)? as u32 + 1;
    let mut hms = rest.split(':');
    let y: i64 = hms.next()?.parse().ok()?;
    let h: u32 = hms.next()?.parse().ok()?;
    let mi: u32 = hms.next()?.parse().ok()?;
    let s: u32 = hms.next()?.parse().ok()?;
    let z = zone.as_bytes();
    if z.len() != 5 || !(z[0] == b'+' || z[0] == b'-') || !z[1..].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let zh: i64 = zone[1..3].parse().ok()?;
    let zm: i64 = zone[3..5].parse().ok()?;
    let offset = (zh * 3600 + zm * 60) * if z[0] == b'+' { 1 } else { -1 };
    let local = civil_ns(y, mo, d, h, mi, s, 0)? as i64;
    u64::try_from(local - offset * 1_000_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_of_logs() {
        // 2025-03-01T12:00:00Z = 1740830400.
        let t = 1_740_830_400u64 * 1_000_000_000;
        assert_eq!(parse_clf("01/Mar/2025:12:00:00 +0000"), Some(t));
        assert_eq!(parse_clf("01/Mar/2025:13:30:00 +0130"), Some(t));
        assert_eq!(parse_clf("01/Mar/2025:11:00:00 -0100"), Some(t));
        assert_eq!(parse_clf("01/Foo/2025:11:00:00 -0100"), None);
        // Found by the fuzzer: a zone that is not ASCII.
        assert_eq!(parse_clf("01/Mar/2025:11:00:00 -é0"), None);
        assert_eq!(parse_iso("2025-03-01T13:00:00+01:0é"), None);
        assert_eq!(parse_clf("01/Mar/99999999999999:11:00:00 +0000"), None);
        assert_eq!(parse_iso("2025-03-01 12:00:00"), Some(t));
        assert_eq!(parse_iso("2025-03-01T12:00:00.250Z"), Some(t + 250_000_000));
        assert_eq!(parse_iso("2025-03-01T13:00:00+01:00"), Some(t));
        assert_eq!(parse_epoch("1740830400.5"), Some(t + 500_000_000));
        assert_eq!(parse_epoch("1740830400"), Some(t));
        assert_eq!(parse_epoch("17408x"), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn long_lines_are_bad_records_not_memory() {
        let mut text = vec![b'a'; MAX_LINE + 10];
        text.extend_from_slice(b"\nok\n");
        let mut lines = Vec::new();
        let mut bad = Vec::new();
        for_each_line(
            &text[..],
            |l| lines.push((l.text.to_owned(), l.offset, l.number)),
            |o, why| bad.push((o, why.to_owned())),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(lines, vec![("ok".to_owned(), MAX_LINE as u64 + 11, 2)]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 0);
    }
}
