//! DNS lookups for Tor (issue 17): which names are watched (a names file,
//! `rules/tor-dns.toml` compiled in, or `[dns] names`), the keys the
//! kernel's `DNS_SUFFIXES` table gets for them, and the exact decision on
//! what the kernel sent: the question name decoded from its wire format,
//! its longest watched suffix, whether the sender is a local resolver.
//!
//! The kernel matches by hash only ([`sensor_common::dns`]); every hit is
//! confirmed here against the name itself, so a hash collision costs one
//! record through the ring buffer, never an alert.
//!
//! Depends on nothing else of the daemon; the kernel loader, the pipeline
//! and the alert builder use it.

use std::collections::BTreeSet;
use std::path::Path;

use sensor_common::dns::{MAX_NAMES, MAX_SUFFIX_LABELS, label_hash, suffix_hash};
use serde::Deserialize;

/// The shipped names file.
pub const SHIPPED: &str = include_str!("../../../rules/tor-dns.toml");
/// What the shipped file is called in errors.
pub const SHIPPED_NAME: &str = "rules/tor-dns.toml";

/// A names file that cannot be used: one line, with the file and line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DnsNamesError {
    #[error("cannot read DNS names file {file}: {reason}")]
    Read { file: String, reason: String },
    #[error("DNS names file {file}, line {line}: {message}")]
    Bad {
        file: String,
        line: usize,
        message: String,
    },
}

/// A watched name (and everything under it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedName {
    /// Lower case, no trailing dot.
    pub suffix: String,
    pub category: String,
    pub what: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawName {
    suffix: toml::Spanned<String>,
    category: toml::Spanned<String>,
    what: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResolver {
    name: toml::Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    name: Vec<RawName>,
    #[serde(default)]
    resolver: Vec<RawResolver>,
}

/// What the DNS programs watch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsWatch {
    /// Longest suffix first (the first that matches decides).
    pub names: Vec<WatchedName>,
    /// Process names of local resolvers.
    pub resolvers: BTreeSet<String>,
    /// The file it came from (`rules/tor-dns.toml` or a path).
    pub origin: String,
}

/// 1-based line of byte `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())]
        .bytes()
        .filter(|b| *b == b'\n')
        .count()
        + 1
}

/// Why `suffix` cannot be watched, if it cannot.
fn check_suffix(suffix: &str) -> Result<(), String> {
    if suffix.is_empty() {
        return Err("suffix is empty".into());
    }
    let labels: Vec<&str> = suffix.split('.').collect();
    if labels.len() > MAX_SUFFIX_LABELS {
        return Err(format!(
            "suffix {suffix:?} has {} labels, the kernel matches at most {MAX_SUFFIX_LABELS}",
            labels.len()
        ));
    }
    for l in labels {
        if l.is_empty() || l.len() > 63 {
            return Err(format!(
                "suffix {suffix:?}: every label must be 1 to 63 bytes (no leading, trailing or double dot)"
            ));
        }
        if !l
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "suffix {suffix:?}: only letters, digits, '-' and '_' may be in a label"
            ));
        }
    }
    Ok(())
}

impl DnsWatch {
    /// Parses a names file; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<Self, DnsNamesError> {
        let bad = |at: usize, message: String| DnsNamesError::Bad {
            file: file.to_owned(),
            line: line_of(text, at),
            message,
        };
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            bad(at, e.message().trim().to_owned())
        })?;
        let mut names: Vec<WatchedName> = Vec::new();
        for n in raw.name {
            let at = n.suffix.span().start;
            let suffix = n
                .suffix
                .get_ref()
                .trim_end_matches('.')
                .to_ascii_lowercase();
            check_suffix(&suffix).map_err(|m| bad(at, m))?;
            if names.iter().any(|w| w.suffix == suffix) {
                return Err(bad(at, format!("suffix {suffix:?} is listed twice")));
            }
            let category = n.category.get_ref().clone();
            if category.is_empty()
                || !category
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(bad(
                    n.category.span().start,
                    format!("category {category:?} must be lower-case letters, digits and '-'"),
                ));
            }
            names.push(WatchedName {
                suffix,
                category,
                what: n.what,
            });
        }
        if names.is_empty() {
            return Err(bad(0, "no [[name]] is listed".into()));
        }
        if names.len() > MAX_NAMES as usize {
            return Err(bad(
                text.len(),
                format!(
                    "{} names listed, the kernel's table holds {MAX_NAMES}",
                    names.len()
                ),
            ));
        }
        let mut resolvers = BTreeSet::new();
        for r in raw.resolver {
            let name = r.name.get_ref();
            if name.is_empty() || name.len() > sensor_common::COMM_LEN - 1 || name.contains('/') {
                return Err(bad(
                    r.name.span().start,
                    format!("resolver {name:?} must be a process name of 1 to 15 bytes"),
                ));
            }
            resolvers.insert(name.clone());
        }
        // Longest first: the most specific entry decides.
        names.sort_by_key(|n| std::cmp::Reverse(n.suffix.split('.').count()));
        Ok(DnsWatch {
            names,
            resolvers,
            origin: file.to_owned(),
        })
    }

    /// `rules/tor-dns.toml` as compiled in (tested to parse).
    pub fn shipped() -> Self {
        Self::parse(SHIPPED_NAME, SHIPPED).expect("the shipped rules/tor-dns.toml parses (tested)")
    }

    /// The shipped list, or the file at `path`.
    pub fn load(path: Option<&Path>) -> Result<Self, DnsNamesError> {
        let Some(path) = path else {
            return Ok(Self::shipped());
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| DnsNamesError::Read {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        Self::parse(&file, &text)
    }

    /// The kernel's `DNS_SUFFIXES` keys, one per watched name.
    pub fn kernel_keys(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = self
            .names
            .iter()
            .map(|n| {
                let labels: Vec<u64> = n
                    .suffix
                    .split('.')
                    .map(|l| label_hash(l.as_bytes()))
                    .collect();
                suffix_hash(&labels)
            })
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// The watched entry `name` (lower case, no trailing dot) is, or is
    /// under: the longest such.
    pub fn matching(&self, name: &str) -> Option<&WatchedName> {
        self.names.iter().find(|w| {
            name == w.suffix
                || name
                    .strip_suffix(w.suffix.as_str())
                    .is_some_and(|rest| rest.ends_with('.'))
        })
    }

    /// Whether a process of this name is a local resolver.
    pub fn is_resolver(&self, process_name: &str) -> bool {
        self.resolvers.contains(process_name)
    }
}

/// A question name that cannot be shown as text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QnameError {
    #[error("question name without its final zero within {0} bytes")]
    Unterminated(usize),
    #[error("question name with a compression pointer or reserved label type")]
    Pointer,
}

/// The question name in `wire` (length-prefixed labels, final 0) as
/// lower-case dotted text without the trailing dot ("" for the root).
/// Bytes outside printable ASCII, a dot or a backslash inside a label are
/// written `\DDD` (RFC 4343's presentation format), so that no label can
/// pass for two.
pub fn decode_qname(wire: &[u8]) -> Result<String, QnameError> {
    let mut out = String::new();
    let mut i = 0;
    loop {
        let Some(&len) = wire.get(i) else {
            return Err(QnameError::Unterminated(wire.len()));
        };
        if len == 0 {
            return Ok(out);
        }
        if len > 63 {
            return Err(QnameError::Pointer);
        }
        let label = wire
            .get(i + 1..i + 1 + len as usize)
            .ok_or(QnameError::Unterminated(wire.len()))?;
        if !out.is_empty() {
            out.push('.');
        }
        for &b in label {
            match b {
                b'.' | b'\\' => out.push_str(&format!("\\{b:03}")),
                0x21..=0x7e => out.push(b.to_ascii_lowercase() as char),
                _ => out.push_str(&format!("\\{b:03}")),
            }
        }
        i += 1 + len as usize;
    }
}

/// The mnemonic of a QTYPE (ECS `dns.question.type`), or `TYPE<n>`
/// (RFC 3597) for one without.
pub fn qtype_name(qtype: u16) -> String {
    let name = match qtype {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        43 => "DS",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        255 => "ANY",
        other => return format!("TYPE{other}"),
    };
    name.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for l in name.split('.').filter(|l| !l.is_empty()) {
            out.push(l.len() as u8);
            out.extend_from_slice(l.as_bytes());
        }
        out.push(0);
        out
    }

    #[test]
    fn the_shipped_list_parses_longest_first() {
        let w = DnsWatch::shipped();
        assert_eq!(w.origin, "rules/tor-dns.toml");
        let suffixes: Vec<&str> = w.names.iter().map(|n| n.suffix.as_str()).collect();
        assert!(suffixes.contains(&"onion") && suffixes.contains(&"torproject.org"));
        assert_eq!(*suffixes.last().unwrap(), "onion");
        assert!(w.is_resolver("dnsmasq") && w.is_resolver("systemd-resolve"));
        assert!(!w.is_resolver("dig"));
        assert_eq!(w.kernel_keys().len(), w.names.len());
    }

    #[test]
    fn matching_is_by_label_and_the_longest_suffix_decides() {
        let w = DnsWatch::shipped();
        let cat = |n: &str| w.matching(n).map(|m| m.category.as_str());
        assert_eq!(cat("abcdefghijklmnop.onion"), Some("onion"));
        assert_eq!(cat("onion"), Some("onion"));
        assert_eq!(cat("notonion"), None);
        assert_eq!(cat("onion.example"), None);
        assert_eq!(cat("www.torproject.org"), Some("tor-project"));
        assert_eq!(cat("torproject.org"), Some("tor-project"));
        assert_eq!(cat("bridges.torproject.org"), Some("bridges"));
        assert_eq!(cat("x.bridges.torproject.org"), Some("bridges"));
        assert_eq!(cat("nottorproject.org"), None);
        assert_eq!(cat("snowflake-broker.torproject.net"), Some("snowflake"));
        assert_eq!(cat("example.com"), None);
    }

    #[test]
    fn kernel_keys_are_the_hashes_of_the_name_labels() {
        let w = DnsWatch::parse("t.toml", "[[name]]\nsuffix = \"Bridges.TorProject.org.\"\ncategory = \"bridges\"\nwhat = \"x\"\n").unwrap();
        assert_eq!(w.names[0].suffix, "bridges.torproject.org");
        let want = suffix_hash(&[
            label_hash(b"BRIDGES"),
            label_hash(b"torproject"),
            label_hash(b"ORG"),
        ]);
        assert_eq!(w.kernel_keys(), [want]);
    }

    #[test]
    fn bad_entries_name_the_file_and_line() {
        let err = |text: &str| DnsWatch::parse("names.toml", text).unwrap_err().to_string();
        let five = "[[name]]\ncategory = \"x\"\nwhat = \"w\"\nsuffix = \"a.b.c.d.e\"\n";
        assert_eq!(
            err(five),
            "DNS names file names.toml, line 4: suffix \"a.b.c.d.e\" has 5 labels, the kernel matches at most 4"
        );
        let dots = "[[name]]\nsuffix = \"a..b\"\ncategory = \"x\"\nwhat = \"w\"\n";
        assert!(err(dots).starts_with("DNS names file names.toml, line 2: suffix \"a..b\""));
        let chars = "[[name]]\nsuffix = \"a b\"\ncategory = \"x\"\nwhat = \"w\"\n";
        assert!(err(chars).contains("line 2"), "{}", err(chars));
        let twice = "[[name]]\nsuffix = \"onion\"\ncategory = \"x\"\nwhat = \"w\"\n[[name]]\nsuffix = \"ONION\"\ncategory = \"x\"\nwhat = \"w\"\n";
        assert_eq!(
            err(twice),
            "DNS names file names.toml, line 6: suffix \"onion\" is listed twice"
        );
        let unknown =
            "[[name]]\nsuffix = \"onion\"\ncategory = \"x\"\nwhat = \"w\"\nseverity = 3\n";
        assert!(err(unknown).starts_with("DNS names file names.toml, line 5: unknown field"));
        let category = "[[name]]\nsuffix = \"onion\"\ncategory = \"Bad Cat\"\nwhat = \"w\"\n";
        assert!(err(category).contains("line 3: category"));
        let resolver = "[[name]]\nsuffix = \"onion\"\ncategory = \"x\"\nwhat = \"w\"\n[[resolver]]\nname = \"a-very-long-resolver-name\"\n";
        assert!(err(resolver).contains("line 6: resolver"));
        assert!(err("").contains("no [[name]]"));
        let many: String = (0..=MAX_NAMES)
            .map(|i| {
                format!("[[name]]\nsuffix = \"n{i}.example\"\ncategory = \"x\"\nwhat = \"w\"\n")
            })
            .collect();
        assert!(err(&many).ends_with("1025 names listed, the kernel's table holds 1024"));
        let missing = DnsWatch::load(Some(Path::new("/nonexistent/names.toml"))).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read DNS names file /nonexistent/names.toml: ")
        );
    }

    #[test]
    fn qnames_decode_to_lower_case_text() {
        assert_eq!(
            decode_qname(&wire("WWW.TorProject.org")).unwrap(),
            "www.torproject.org"
        );
        assert_eq!(decode_qname(&[0]).unwrap(), "");
        // A dot inside a label cannot make "a.onion" out of one label.
        let mut dotted = vec![7];
        dotted.extend_from_slice(b"a.onion");
        dotted.push(0);
        assert_eq!(decode_qname(&dotted).unwrap(), "a\\046onion");
        assert_eq!(DnsWatch::shipped().matching("a\\046onion"), None);
        assert_eq!(
            decode_qname(&[3, b'a', b'b']),
            Err(QnameError::Unterminated(3))
        );
        assert_eq!(decode_qname(&[0xc0, 12]), Err(QnameError::Pointer));
        assert_eq!(qtype_name(28), "AAAA");
        assert_eq!(qtype_name(4242), "TYPE4242");
    }
}
