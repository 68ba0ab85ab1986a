//! One output's configuration: the `[[output]]` TOML table and the
//! `--output` flag value are the same struct, parsed by the same code.
//!
//! Destinations (`to`, or the part of `--output` before the first comma):
//!
//! | `to` | sink |
//! |---|---|
//! | `stdout` | JSON lines on standard output |
//! | `file:/var/log/torsensor/alerts.json` | JSON lines appended to a file (reopened on SIGHUP) |
//! | `syslog+udp://HOST:PORT` | RFC 5424, one message per datagram |
//! | `syslog+tcp://HOST:PORT` | RFC 5424 with octet counting (RFC 6587) |
//! | `syslog:///dev/log` | RFC 5424 to a local unix datagram socket (any path) |
//! | `https://HOST[:PORT]/PATH` (or `http://`) | generic JSON lines, one POST per batch |
//! | `hec+https://HOST[:PORT][/PATH]` | Splunk HEC; PATH defaults to `/services/collector/event` |
//! | `bulk+https://HOST[:PORT]/INDEX` | Elasticsearch/OpenSearch `_bulk` into INDEX |
//!
//! Options follow as `,key=value` pairs, with the same names as the TOML keys:
//! `--output 'hec+https://splunk:8088,format=ocsf,token_file=/etc/torsensor/hec.token'`.
//! Tokens never come from the command line or the URL: only `token_file` or
//! `token_env` (the name of an environment variable).
//! A destination containing a comma (a file path, say) needs `[[output]]`.
//!
//! Files: this one owns [`OutputConfig`] as the TOML table (its keys and
//! their defaults); `destination.rs` parses `to`, `flag.rs` the `--output`
//! value, `validate.rs` checks the whole (and reads the token and CA
//! bundle). May use `crate::alert` (the schema names) and `crate::redact`
//! (errors never show a secret), nothing else of the daemon.

mod destination;
mod flag;
mod validate;

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::SinkError;
use crate::alert::Schema;
use crate::time::deserialize_duration;
pub use destination::{Destination, HttpKind};
pub(crate) use validate::read_ca_file;

/// Default bounded in-memory queue per sink (alerts).
pub const DEFAULT_QUEUE_SIZE: usize = 10_000;
/// Default spool limit per remote sink: 256 MiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 << 20;
/// Default spool segment size: 8 MiB (the unit of fsync and of dropping).
pub const DEFAULT_SPOOL_SEGMENT_BYTES: u64 = 8 << 20;

/// One `[[output]]` table in the TOML config, or one `--output` flag value.
///
/// Every field except `to` has a default, given in its doc comment.
#[derive(Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Where alerts go (see the module docs for the syntax). Required.
    pub to: String,
    /// Name in logs, metrics and the spool directory (`<state>/spool/<name>/`).
    /// Default: derived from `to` (for example `hec-127.0.0.1-8088`), so it
    /// stays the same across restarts as long as `to` does.
    #[serde(default)]
    pub name: Option<String>,
    /// Alert schema: `ecs`, `ocsf` or `falco`. Default: `ecs`.
    #[serde(default)]
    pub format: Schema,
    /// Alerts held in memory before a remote sink spills to its spool (a
    /// local sink drops and counts). Default: 10,000.
    #[serde(default = "d_queue_size")]
    pub queue_size: usize,
    /// On-disk spool limit in bytes for remote sinks (HTTP, syslog); when
    /// full the oldest spooled alerts are dropped and counted. Default: 256 MiB.
    #[serde(default = "d_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// Spool segment size in bytes: a segment is fsynced when it is closed,
    /// and dropped whole when the spool is full. Default: 8 MiB, at most a
    /// quarter of `spool_max_bytes` (it is lowered to that when larger).
    #[serde(default = "d_spool_segment_bytes")]
    pub spool_segment_bytes: u64,
    /// Remote outputs (HTTP, syslog): every alert is appended to the spool
    /// and fsynced before it counts as accepted, and delivered from there,
    /// so a crash, `kill -9` or power loss loses only what is still in the
    /// memory queue (not yet taken by the output's task). fsyncs are
    /// batched: one per append, however many alerts the queue held (group
    /// commit). `false`: alerts are delivered from memory and spooled only
    /// when the receiver fails or falls behind, and a crash loses the batch
    /// in delivery and the queue. Default: true for remote outputs (its
    /// cost is measured by `cargo xtask bench`, section 5); local outputs
    /// have no spool and refuse `durable = true`.
    #[serde(default)]
    pub durable: Option<bool>,
    /// Most alerts in one request / write. Default: 500.
    #[serde(default = "d_batch_max_events")]
    pub batch_max_events: usize,
    /// Most bytes in one request body. Default: 1 MiB (Splunk HEC's
    /// historical `max_content_length`).
    #[serde(default = "d_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// How long a batch waits for more alerts before it is sent (durations
    /// are written like `"200ms"`, `"15s"`, `"1m"`). Default: 200 ms.
    #[serde(default = "d_linger", deserialize_with = "deserialize_duration")]
    pub linger: Duration,
    /// TCP (and TLS) connect timeout. Default: 5 s.
    #[serde(
        default = "d_connect_timeout",
        deserialize_with = "deserialize_duration"
    )]
    pub connect_timeout: Duration,
    /// Whole-request timeout (connect, send, answer). Default: 15 s.
    #[serde(default = "d_timeout", deserialize_with = "deserialize_duration")]
    pub timeout: Duration,
    /// First retry delay; doubles per failure, with +-50 % jitter. Default: 500 ms.
    #[serde(default = "d_retry_initial", deserialize_with = "deserialize_duration")]
    pub retry_initial: Duration,
    /// Retry delay cap (also caps a receiver's `Retry-After`). Default: 60 s.
    #[serde(default = "d_retry_max", deserialize_with = "deserialize_duration")]
    pub retry_max: Duration,
    /// File holding the token (HEC token, Elasticsearch API key, or bearer
    /// token for generic HTTP); surrounding whitespace is ignored. Default: none.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the token. Default: none.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Extra PEM CA bundle trusted besides the system roots; it must hold
    /// at least one certificate. Default: none.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` to a non-loopback host (alerts and token in clear text).
    /// Default: false.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Syslog facility name (`kern` .. `local7`). Default: `authpriv`:
    /// alerts carry user and process details, and Debian's rsyslog routes
    /// authpriv to the root/adm-only `auth.log` rather than to `syslog`.
    #[serde(default = "d_facility")]
    pub facility: String,
    /// Largest syslog UDP / unix datagram; larger alerts are skipped and
    /// counted (a truncated JSON body is useless). Default: 8,192 (rsyslog's
    /// default `maxMessageSize`).
    #[serde(default = "d_datagram_max_bytes")]
    pub datagram_max_bytes: usize,
    /// Compress HTTP request bodies (`Content-Encoding: gzip`; Splunk HEC
    /// and Elasticsearch accept it). Default: false.
    #[serde(default)]
    pub gzip: bool,
    /// HEC `source`. Default: the application name (`torsensor`).
    #[serde(default)]
    pub hec_source: Option<String>,
    /// HEC `sourcetype`. Default: `_json`.
    #[serde(default = "d_hec_sourcetype")]
    pub hec_sourcetype: String,
    /// HEC `index`. Default: none (the token's default index).
    #[serde(default)]
    pub hec_index: Option<String>,
}

fn d_queue_size() -> usize {
    DEFAULT_QUEUE_SIZE
}
fn d_spool_max_bytes() -> u64 {
    DEFAULT_SPOOL_MAX_BYTES
}
fn d_spool_segment_bytes() -> u64 {
    DEFAULT_SPOOL_SEGMENT_BYTES
}
fn d_batch_max_events() -> usize {
    500
}
fn d_batch_max_bytes() -> usize {
    1 << 20
}
fn d_linger() -> Duration {
    Duration::from_millis(200)
}
fn d_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn d_timeout() -> Duration {
    Duration::from_secs(15)
}
fn d_retry_initial() -> Duration {
    Duration::from_millis(500)
}
fn d_retry_max() -> Duration {
    Duration::from_secs(60)
}

fn d_facility() -> String {
    "authpriv".to_owned()
}
fn d_datagram_max_bytes() -> usize {
    8192
}
fn d_hec_sourcetype() -> String {
    "_json".to_owned()
}

impl OutputConfig {
    /// A config for `to` with every default.
    pub fn new(to: &str) -> OutputConfig {
        let mut t = toml::Table::new();
        t.insert("to".into(), toml::Value::String(to.to_owned()));
        t.try_into().expect("defaults deserialize")
    }

    fn err(&self, field: &'static str, reason: impl Into<String>) -> SinkError {
        SinkError::Config {
            output: crate::redact::url(&self.to),
            field,
            reason: reason.into(),
        }
    }

    /// Whether alerts are on disk before they count as accepted (`durable`,
    /// default true for remote outputs).
    pub fn is_durable(&self, dest: &Destination) -> bool {
        dest.is_remote() && self.durable.unwrap_or(true)
    }

    pub(crate) fn facility_code(&self) -> u8 {
        facility_code(&self.facility).unwrap_or(10)
    }
}

/// RFC 5424 facility numbers.
pub fn facility_code(name: &str) -> Option<u8> {
    const NAMES: [&str; 24] = [
        "kern",
        "user",
        "mail",
        "daemon",
        "auth",
        "syslog",
        "lpr",
        "news",
        "uucp",
        "cron",
        "authpriv",
        "ftp",
        "ntp",
        "security",
        "console",
        "solaris-cron",
        "local0",
        "local1",
        "local2",
        "local3",
        "local4",
        "local5",
        "local6",
        "local7",
    ];
    NAMES
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name))
        .map(|i| i as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_destinations() {
        let d = |s: &str| s.parse::<OutputConfig>().unwrap().destination().unwrap();
        assert_eq!(d("stdout"), Destination::Stdout);
        assert_eq!(
            d("file:/var/log/a.json"),
            Destination::File("/var/log/a.json".into())
        );
        assert_eq!(
            d("syslog+udp://127.0.0.1:514"),
            Destination::SyslogUdp("127.0.0.1:514".into())
        );
        assert_eq!(
            d("syslog+tcp://[::1]:601"),
            Destination::SyslogTcp("[::1]:601".into())
        );
        assert_eq!(
            d("syslog:///dev/log"),
            Destination::SyslogUnix("/dev/log".into())
        );
        let Destination::Http { kind, url, index } = d("hec+https://splunk.example:8088") else {
            panic!()
        };
        assert_eq!(
            (kind, url.as_str(), index),
            (
                HttpKind::Hec,
                "https://splunk.example:8088/services/collector/event",
                None
            )
        );
        let Destination::Http { kind, url, index } =
            d("bulk+https://es.example:9200/torsensor-alerts")
        else {
            panic!()
        };
        assert_eq!(
            (kind, url.as_str(), index.as_deref()),
            (
                HttpKind::Bulk,
                "https://es.example:9200/_bulk",
                Some("torsensor-alerts")
            )
        );
        let Destination::Http { kind, url, .. } = d("http://127.0.0.1:8080/ingest") else {
            panic!()
        };
        assert_eq!(
            (kind, url.as_str()),
            (HttpKind::Lines, "http://127.0.0.1:8080/ingest")
        );
    }

    #[test]
    fn flag_options() {
        let c: OutputConfig =
            "syslog+tcp://127.0.0.1:601,format=ocsf,queue_size=5,facility=local3,name=siem"
                .parse()
                .unwrap();
        assert_eq!(c.format, Schema::Ocsf);
        assert_eq!(c.queue_size, 5);
        assert_eq!(c.facility_code(), 19);
        assert_eq!(c.sink_name(), "siem");
        assert_eq!(c.spool_max_bytes, DEFAULT_SPOOL_MAX_BYTES);
        c.validate().unwrap();
        let e = "stdout,format=xml"
            .parse::<OutputConfig>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("xml") && e.contains("ecs"), "{e}");
        let e = "stdout,colour=red"
            .parse::<OutputConfig>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("colour"), "{e}");
        let e = "hec+https://s:8088,token=abc"
            .parse::<OutputConfig>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_file"), "{e}");
    }

    #[test]
    fn toml_outputs() {
        #[derive(Deserialize)]
        struct Doc {
            output: Vec<OutputConfig>,
        }
        let doc: Doc = toml::from_str(
            r#"
            [[output]]
            to = "stdout"
            [[output]]
            to = "bulk+https://es:9200/alerts"
            format = "falco"
            batch_max_events = 100
            timeout = "30s"
            linger = "50ms"
            allow_insecure_http = false
            "#,
        )
        .unwrap();
        assert_eq!(doc.output.len(), 2);
        assert_eq!(doc.output[0], OutputConfig::new("stdout"));
        assert_eq!(doc.output[1].format, Schema::Falco);
        assert_eq!(doc.output[1].batch_max_events, 100);
        assert_eq!(doc.output[1].timeout, Duration::from_secs(30));
        assert_eq!(doc.output[1].linger, Duration::from_millis(50));
        assert_eq!(doc.output[0].retry_max, Duration::from_secs(60));
        assert_eq!(doc.output[1].sink_name(), "bulk-es-9200-alerts");
        let bad = toml::from_str::<Doc>("[[output]]\nto = \"stdout\"\nqueue = 5\n")
            .err()
            .unwrap()
            .to_string();
        assert!(bad.contains("queue"), "{bad}");
    }

    #[test]
    fn validation_names_the_field() {
        let check = |s: &str, field: &str| {
            let e = s
                .parse::<OutputConfig>()
                .and_then(|c| c.validate())
                .unwrap_err()
                .to_string();
            assert!(e.contains(field), "{s}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        };
        check("file:relative.json", "absolute path");
        check("ftp://x", "unknown scheme");
        check("nowhere", "unknown destination");
        check("http://10.0.0.1/x", "allow_insecure_http");
        check("https://user:pw@example.com/x", "credentials");
        check("https://example.com/x?token=abc", "token_file");
        check("hec+https://splunk:8088", "token_file");
        check(
            "hec+https://splunk:8088,token_env=TORSENSOR_TEST_UNSET_VAR",
            "TORSENSOR_TEST_UNSET_VAR",
        );
        check(
            "hec+https://splunk:8088,token_file=/nonexistent/tok",
            "/nonexistent/tok",
        );
        check("bulk+https://es:9200", "index");
        check("bulk+https://es:9200/Upper", "index name");
        check("syslog+udp://127.0.0.1", "HOST:PORT");
        check("syslog+udp://127.0.0.1:514,facility=bogus", "facility");
        check("stdout,queue_size=0", "queue_size");
        check("stdout,batch_max_events=0", "batch_max_events");
        check("stdout,retry_initial=2m", "retry_initial");
        check("stdout,timeout=15", "no unit");
        check("stdout,linger=soon", "not a duration");
        check("stdout,name=../x", "name");
        check("syslog+udp://127.0.0.1:514,token_env=HOME", "only HTTP");
        check(
            "syslog+udp://127.0.0.1:514,datagram_max_bytes=100",
            "datagram_max_bytes",
        );
        check("stdout,gzip=true", "gzip");
        // Loopback over plain http is fine, and so is an explicit opt-in.
        "http://127.0.0.1:9/x"
            .parse::<OutputConfig>()
            .unwrap()
            .validate()
            .unwrap();
        "http://[::1]:9/x"
            .parse::<OutputConfig>()
            .unwrap()
            .validate()
            .unwrap();
        "http://10.0.0.1/x,allow_insecure_http=true"
            .parse::<OutputConfig>()
            .unwrap()
            .validate()
            .unwrap();
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("torsensor-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, content) in [("empty.pem", ""), ("text.pem", "not a certificate\n")] {
            let ca = dir.join(name);
            std::fs::write(&ca, content).unwrap();
            let e = format!("https://siem.example/x,ca_file={}", ca.display())
                .parse::<OutputConfig>()
                .unwrap()
                .validate()
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(
                    "ca_file: {} holds no PEM certificate",
                    ca.display()
                )),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_from_file_and_env() {
        let dir = std::env::temp_dir().join(format!("torsensor-sinkcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tok");
        std::fs::write(&f, "  s3cret\n").unwrap();
        let c: OutputConfig = format!("hec+https://s:8088,token_file={}", f.display())
            .parse()
            .unwrap();
        c.validate().unwrap();
        assert_eq!(c.token().unwrap().as_deref(), Some("s3cret"));
        std::fs::write(&f, "\n").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("empty"));
        // PATH is always set in the test environment.
        std::fs::remove_dir_all(&dir).unwrap();
        let c: OutputConfig = "https://example.com/x,token_env=PATH".parse().unwrap();
        assert!(c.token().unwrap().is_some());
    }

    #[test]
    fn clap_takes_repeated_output_flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[arg(long = "output")]
            output: Vec<OutputConfig>,
        }
        let cli = Cli::try_parse_from([
            "t",
            "--output",
            "stdout",
            "--output",
            "syslog+udp://127.0.0.1:514,format=falco",
        ])
        .unwrap();
        assert_eq!(cli.output.len(), 2);
        assert_eq!(cli.output[1].format, Schema::Falco);
        let err = Cli::try_parse_from(["t", "--output", "hec+https://s:8088,token=x"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("token_file"), "{err}");
    }

    #[test]
    fn derived_names_are_stable_and_safe() {
        assert_eq!(
            OutputConfig::new("syslog+tcp://127.0.0.1:601").sink_name(),
            "syslog-tcp-127.0.0.1-601"
        );
        assert_eq!(
            OutputConfig::new("hec+https://splunk:8088").sink_name(),
            "hec-splunk-8088"
        );
        assert_eq!(
            OutputConfig::new("file:/var/log/a.json").sink_name(),
            "file-var-log-a.json"
        );
        assert_eq!(
            OutputConfig::new("syslog:///dev/log").sink_name(),
            "syslog-unix-dev-log"
        );
    }
}
