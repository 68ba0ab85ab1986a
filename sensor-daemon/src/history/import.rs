//! Reading CollecTor data into a [`Builder`]: single documents
//! (`@type tordnsel 1.0`, `@type network-status-consensus-3 1.0`,
//! `@type network-status-microdesc-consensus-3 1.0`, or the same without
//! CollecTor's annotation, as tor and check.torproject.org serve them),
//! directories of them, and archives (`.tar.xz` as CollecTor's monthly
//! `exit-list-YYYY-MM.tar.xz` and `consensuses-YYYY-MM.tar.xz`, or plain
//! `.tar`), streamed member by member: nothing is unpacked to disk and at
//! most one member ([`MAX_DOCUMENT_BYTES`]) is in memory.
//!
//! Untrusted bytes: a bad document (or member, or archive) is one error
//! line naming it (and the line, for a consensus), the rest of the import
//! goes on.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::index::Builder;
use crate::feed::parse::{FeedFormat, ParseError, parse};

/// Documents larger than this are refused (a full consensus is about
/// 3 MB; an exit list under 1 MB).
pub const MAX_DOCUMENT_BYTES: u64 = 64 << 20;
/// At most this many error lines are kept (all are counted).
const KEEP_ERRORS: usize = 50;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub consensuses: usize,
    pub exit_lists: usize,
    /// Documents already in the index (same SHA-256): nothing changed.
    pub duplicates: usize,
    /// Records added: (address, relay) pairs and exit addresses.
    pub records: usize,
    /// Documents of other CollecTor types (`@type server-descriptor`,
    /// `microdescriptor`, votes...: an archive may mix them), skipped.
    pub skipped: usize,
    /// Documents with some bad records (kept without them).
    pub with_bad_records: usize,
    /// The first error lines (file, member, line: reason).
    pub errors: Vec<String>,
    pub error_count: usize,
}

impl ImportReport {
    fn error(&mut self, line: String) {
        tracing::warn!("{line}");
        self.error_count += 1;
        if self.errors.len() < KEEP_ERRORS {
            self.errors.push(line);
        }
    }

    pub fn documents(&self) -> usize {
        self.consensuses + self.exit_lists
    }
}

/// What a document is, from CollecTor's `@type` annotation.
fn annotated_format(annotation: &str) -> Result<FeedFormat, String> {
    let kind = annotation.split_whitespace().nth(1).unwrap_or("");
    match kind {
        "tordnsel" => Ok(FeedFormat::Tordnsel),
        "network-status-consensus-3" | "network-status-microdesc-consensus-3" => {
            Ok(FeedFormat::Consensus)
        }
        _ => Err(format!(
            "{annotation:?}: not a consensus or an exit list, skipped"
        )),
    }
}

/// Imports documents into a builder, counting into a report; optional
/// progress (bytes of input read).
pub struct Importer<'a> {
    pub builder: &'a mut Builder,
    pub report: ImportReport,
    progress: Option<indicatif::ProgressBar>,
}

impl<'a> Importer<'a> {
    pub fn new(builder: &'a mut Builder, progress: Option<indicatif::ProgressBar>) -> Self {
        Importer {
            builder,
            report: ImportReport::default(),
            progress,
        }
    }

    fn advance(&self, n: u64) {
        if let Some(p) = &self.progress {
            p.inc(n);
        }
    }

    /// One document's bytes; `name` says where it came from in errors.
    pub fn document(&mut self, name: &str, bytes: &[u8]) {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if self.builder.seen(&digest) {
            self.report.duplicates += 1;
            return;
        }
        let Ok(text) = std::str::from_utf8(bytes) else {
            let offset = std::str::from_utf8(bytes)
                .err()
                .map_or(0, |e| e.valid_up_to());
            self.report.error(format!(
                "{name}: not text (byte {offset} is not valid UTF-8)"
            ));
            return;
        };
        // CollecTor's annotations (`@type ...`) come first.
        let mut body = text.trim_start_matches('\u{feff}');
        let mut skipped_lines = 0;
        let mut format = None;
        while body.starts_with('@') {
            let (line, rest) = body.split_once('\n').unwrap_or((body, ""));
            if line.starts_with("@type ") {
                match annotated_format(line.trim_end()) {
                    Ok(f) => format = Some(f),
                    Err(e) => {
                        tracing::debug!("{name}: {e}");
                        self.report.skipped += 1;
                        return;
                    }
                }
            }
            body = rest;
            skipped_lines += 1;
        }
        // History keeps what the documents say: reserved addresses too
        // (a private test network's consensus is history as well). Without
        // an annotation the parser tells the format (and refuses HTML
        // pages, empty bodies...).
        let feed = match parse(body.as_bytes(), format, true) {
            Ok(f) => f,
            Err(ParseError::Consensus { line, reason }) => {
                let line = line + skipped_lines;
                return self.report.error(format!("{name}: line {line}: {reason}"));
            }
            Err(e) => return self.report.error(format!("{name}: {e}")),
        };
        let format = match feed.format {
            Some(f @ (FeedFormat::Consensus | FeedFormat::Tordnsel)) => f,
            other => {
                let what = other.map_or("an unknown".to_owned(), |f| format!("a {f}"));
                return self.report.error(format!(
                    "{name}: {what} document, not a consensus or an exit list (it has no times), skipped"
                ));
            }
        };
        if feed.report.bad_count > 0 {
            self.report.with_bad_records += 1;
            let first = &feed.report.bad[0];
            tracing::warn!(
                "{name}: {} bad records skipped; first at line {}: {} ({:?})",
                feed.report.bad_count,
                match &first.at {
                    crate::feed::parse::Location::Line(n) => n + skipped_lines,
                    crate::feed::parse::Location::Json(_) => 0,
                },
                first.reason,
                first.text
            );
        }
        let added = match format {
            FeedFormat::Consensus => {
                if feed.consensus.is_none() {
                    return self.report.error(format!("{name}: not a consensus"));
                }
                self.report.consensuses += 1;
                self.builder.add_consensus(&feed, digest)
            }
            _ => {
                self.report.exit_lists += 1;
                self.builder.add_exit_list(&feed, digest)
            }
        };
        self.report.records += added.records;
    }

    /// A file, an archive, or a directory (its files and archives in name
    /// order, recursively).
    pub fn path(&mut self, path: &Path) {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => return self.report.error(format!("{}: {e}", path.display())),
        };
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
                Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
                Err(e) => return self.report.error(format!("{}: {e}", path.display())),
            };
            entries.sort();
            for entry in entries {
                self.path(&entry);
            }
            return;
        }
        let name = path.display().to_string();
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return self.report.error(format!("{name}: {e}")),
        };
        self.reader(&name, file, meta.len());
    }

    /// A body read from anywhere (a file, a download): an archive if it
    /// starts like one, else one document.
    pub fn reader(&mut self, name: &str, reader: impl Read, len: u64) {
        let mut reader = BufReader::with_capacity(1 << 16, reader);
        let head = match io::BufRead::fill_buf(&mut reader) {
            Ok(h) => h,
            Err(e) => return self.report.error(format!("{name}: {e}")),
        };
        let xz = head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]);
        let tar = head.len() > 262 && &head[257..262] == b"ustar";
        if xz || tar {
            let counted = Counted {
                inner: reader,
                progress: self.progress.clone(),
            };
            if xz {
                self.archive(name, liblzma::read::XzDecoder::new_multi_decoder(counted));
            } else {
                self.archive(name, counted);
            }
            return;
        }
        if len > MAX_DOCUMENT_BYTES {
            return self.report.error(format!(
                "{name}: {len} bytes, more than a document may have ({MAX_DOCUMENT_BYTES}); not an archive either"
            ));
        }
        let mut bytes = Vec::new();
        if let Err(e) = reader.take(MAX_DOCUMENT_BYTES + 1).read_to_end(&mut bytes) {
            return self.report.error(format!("{name}: {e}"));
        }
        self.advance(len);
        if bytes.len() as u64 > MAX_DOCUMENT_BYTES {
            return self
                .report
                .error(format!("{name}: more than {MAX_DOCUMENT_BYTES} bytes"));
        }
        self.document(name, &bytes);
    }

    /// A tar stream: each regular member is a document.
    fn archive(&mut self, name: &str, reader: impl Read) {
        let mut archive = tar::Archive::new(reader);
        let entries = match archive.entries() {
            Ok(e) => e,
            Err(e) => return self.report.error(format!("{name}: {e}")),
        };
        let mut previous = String::from("(none yet)");
        for entry in entries {
            let mut entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    // The stream cannot be trusted past this point.
                    return self.report.error(format!(
                        "{name}: after member {previous}: {e}; the rest of this archive is skipped"
                    ));
                }
            };
            let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            previous.clone_from(&member);
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let size = entry.size();
            if size > MAX_DOCUMENT_BYTES {
                self.report.error(format!(
                    "{name}: member {member}: {size} bytes, more than a document may have ({MAX_DOCUMENT_BYTES}), skipped"
                ));
                continue;
            }
            let mut bytes = Vec::with_capacity(size as usize);
            if let Err(e) = entry.read_to_end(&mut bytes) {
                return self.report.error(format!(
                    "{name}: member {member}: {e}; the rest of this archive is skipped"
                ));
            }
            self.document(&format!("{name}: member {member}"), &bytes);
        }
    }
}

/// Counts compressed bytes read into the progress bar.
struct Counted<R> {
    inner: R,
    progress: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(p) = &self.progress {
            p.inc(n as u64);
        }
        Ok(n)
    }
}

/// Total bytes under the given paths (the progress bar's length).
pub fn total_bytes(paths: &[PathBuf]) -> u64 {
    fn walk(p: &Path) -> u64 {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => std::fs::read_dir(p)
                .map(|rd| rd.filter_map(Result::ok).map(|e| walk(&e.path())).sum())
                .unwrap_or(0),
            Ok(m) => m.len(),
            Err(_) => 0,
        }
    }
    paths.iter().map(|p| walk(p)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::index::{Role, Window, time};

    fn data(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/data/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    fn at(text: &str) -> std::time::SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn a_real_exit_list_with_collector_header_is_a_hit_then_not() {
        let mut b = Builder::new();
        let mut imp = Importer::new(&mut b, None);
        let doc = data("history/2024-03-12-14-30-00");
        imp.document("exit-list", &doc);
        assert_eq!(imp.report.exit_lists, 1, "{:?}", imp.report);
        assert_eq!(imp.report.error_count, 0);
        // Twice: nothing changes.
        imp.document("exit-list again", &doc);
        assert_eq!(imp.report.duplicates, 1);
        let index = b.finish();
        let s = index.summary();
        assert_eq!(s.ipv4, 1174);
        assert_eq!(s.exit_lists, 1);
        let ip = "23.137.251.61".parse().unwrap();
        let w = Window::default();
        let hits = index.lookup(ip, at("2024-03-12T12:00:00Z"), &w);
        assert_eq!(hits.len(), 12, "12 fingerprints share it");
        assert!(hits.iter().all(|h| h.role == Role::Exit));
        // Its newest test is 2024-03-12 14:27:20. An event up to two days
        // after it matches (the scan is within two days before), or up to
        // one day before; a month later, or 1.5 days before, it does not.
        let hits = index.lookup(ip, at("2024-03-14T12:00:00Z"), &w);
        assert_eq!(hits.len(), 12);
        assert_eq!(time(hits[0].last_seen), at("2024-03-12T14:27:20Z"));
        assert_eq!(hits[0].distance, 163_960, "1 day 21:32:40 after");
        assert!(!index.lookup(ip, at("2024-03-11T16:00:00Z"), &w).is_empty());
        assert!(index.lookup(ip, at("2024-03-11T12:00:00Z"), &w).is_empty());
        assert!(index.lookup(ip, at("2024-04-12T12:00:00Z"), &w).is_empty());
    }

    #[test]
    fn bad_documents_are_one_line_each_and_the_rest_is_kept() {
        let mut b = Builder::new();
        let mut imp = Importer::new(&mut b, None);
        imp.document("a.html", b"<html><title>oops</title></html>");
        imp.document("bin", &[0x31, 0xff]);
        imp.document("desc", b"@type server-descriptor 1.0\nrouter x\n");
        imp.document(
            "vote",
            b"@type network-status-consensus-3 1.0\nnetwork-status-version 3\nvote-status vote\n",
        );
        imp.document("bulk", b"1.2.3.4\n");
        imp.document("ok", &data("history/2024-03-12-14-30-00"));
        let r = &imp.report;
        assert_eq!(r.exit_lists, 1);
        assert_eq!(r.error_count, 4, "{:?}", r.errors);
        assert_eq!(r.skipped, 1, "the server descriptor");
        assert!(
            r.errors[0].starts_with("a.html: an HTML page"),
            "{}",
            r.errors[0]
        );
        assert!(r.errors[1].contains("byte 1 is not valid UTF-8"));
        // The line number counts the annotation.
        assert_eq!(
            r.errors[2],
            "vote: line 3: \"vote-status vote\": a vote, not a consensus"
        );
        assert!(r.errors[3].contains("a plain document"), "{}", r.errors[3]);
    }

    #[test]
    fn real_signed_consensuses_full_and_microdesc() {
        let mut b = Builder::new();
        let mut imp = Importer::new(&mut b, None);
        imp.document("full", &data("consensus/arti-testdata2/cached-consensus"));
        imp.document(
            "md",
            &data("consensus/arti-testdata2/cached-microdesc-consensus"),
        );
        imp.document("lab", &data("consensus/lab/cached-microdesc-consensus"));
        assert_eq!(imp.report.consensuses, 3, "{:?}", imp.report.errors);
        let index = b.finish();
        let s = index.summary();
        assert!(s.relays > 0 && s.relay_intervals > 0, "{s:?}");
        assert_eq!(s.exit_intervals, 0);
    }
}
