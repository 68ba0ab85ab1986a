//! The alert as a type, shaped like the ECS document it serializes to.
//!
//! Every struct here is one ECS object (`event`, `network`, `process`...)
//! or, under [`Torsensor`], one of torsensor's own. A field ECS treats as
//! optional is an `Option` (or an empty list) and is left out when absent,
//! never written as `null`. Serialized through `serde_json::Value` (no
//! `preserve_order`), objects come out with sorted keys, whatever the field
//! order here.
//!
//! `Deserialize` reads back what `Serialize` wrote (and documents written by
//! earlier versions, which lack the fields added since: those are
//! `Option`s), so recorded alerts and golden files can be loaded as alerts.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::alert::rules::block::BlockMode;
use crate::enrich::container::{Qos, Runtime};
use crate::feed::{Origin, Role};
use crate::net::Direction;
use crate::time::{Timestamp, TimestampSecs};

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// Numbers that ECS types as `keyword` (`user.id`, `network.iana_number`)
/// are written as strings.
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// One alert (or, for `--audit-all`, one event).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// When the connection was seen (a summary: the last repeat).
    #[serde(rename = "@timestamp")]
    pub timestamp: Timestamp,
    pub ecs: Ecs,
    pub event: Event,
    /// A connection's or a listening socket's; none for a program start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Network>,
    /// The initiator of a connection: the local end outbound, the peer
    /// inbound. None for a program start or a listening socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Endpoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Endpoint>,
    /// A listening socket's address (ECS `server.*`: the side that waits
    /// for connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Endpoint>,
    /// Gateway mode: the router and the interface the flow was seen on
    /// (ECS `observer.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observer: Option<Observer>,
    pub host: Host,
    pub agent: Agent,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<Group>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<Orchestrator>,
    /// ECS `dns.*`: the query of a DNS alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// Alerts only (an audit event matched no rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    /// The rule's tags (alerts only; an empty list is written as `[]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Alerts only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threat: Option<Threat>,
    /// ECS `related.*`: not set for connections today (it would add fields
    /// to every alert); there for sources whose entities are not in the
    /// fields above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub related: Option<Related>,
    /// Where a hunt found the record (ECS `log.file.path`, and `log.offset`
    /// as Filebeat writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<Log>,
    /// A web server's requests (a hunt over access logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<Http>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<Url>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<UserAgent>,
    pub torsensor: Torsensor,
}

/// ECS `log.*`: the input a hunt read the record from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    pub file: LogFile,
    /// Byte offset of the record (a packet, a line) in the file.
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFile {
    pub path: String,
}

/// ECS `http.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http {
    pub request: HttpRequest,
    pub response: HttpResponse,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpResponse {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<HttpBody>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpBody {
    pub bytes: u64,
}

/// ECS `url.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Url {
    pub original: String,
}

/// ECS `user_agent.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAgent {
    pub original: String,
}

/// `ecs.version`: the ECS version the document follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ecs {
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Alert,
    Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventCategory {
    Network,
    Process,
    IntrusionDetection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Connection,
    Allowed,
    Denied,
    /// A program started, a socket started to listen, a gateway flow
    /// began.
    Start,
    /// A protocol message seen (a DNS query).
    Protocol,
    /// A gateway flow ended (its summary).
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    Failure,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub category: Vec<EventCategory>,
    #[serde(rename = "type")]
    pub types: Vec<EventType>,
    /// `tor-connection-outbound`, `tor-connection-inbound`,
    /// `tor-program-start`, `tor-port-listen`.
    pub action: String,
    pub outcome: Outcome,
    pub module: String,
    pub dataset: String,
    /// When the sensor built the alert.
    pub created: Timestamp,
    /// The rule's severity, 0-100 (alerts only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub severity: Option<u8>,
    /// A hunt's flow or requests, a gateway flow's summary: the first
    /// packet or request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    /// ... the last packet or request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    /// `end - start` in nanoseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }

    /// The IANA protocol number (`network.iana_number`).
    pub fn iana_number(self) -> u8 {
        match self {
            Transport::Tcp => 6,
            Transport::Udp => 17,
        }
    }
}

/// `network.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    Ipv4,
    Ipv6,
}

/// ECS `network.direction`: `egress` / `ingress` seen from this host (a
/// host sensor); `outbound` / `inbound` seen from the network perimeter (a
/// gateway: an inside host opened the flow, or an outside one did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkDirection {
    Egress,
    Ingress,
    Outbound,
    Inbound,
}

impl NetworkDirection {
    /// The direction as rules and aggregation see it: outbound is the
    /// inside host's egress.
    pub fn host_view(self) -> Direction {
        match self {
            NetworkDirection::Egress | NetworkDirection::Outbound => Direction::Egress,
            NetworkDirection::Ingress | NetworkDirection::Inbound => Direction::Ingress,
        }
    }

    /// The perimeter value for a gateway flow.
    pub fn perimeter(d: Direction) -> Self {
        match d {
            Direction::Egress => NetworkDirection::Outbound,
            Direction::Ingress => NetworkDirection::Inbound,
        }
    }
}

impl From<Direction> for NetworkDirection {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Egress => NetworkDirection::Egress,
            Direction::Ingress => NetworkDirection::Ingress,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// A connection's (none for a listening socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<NetworkDirection>,
    pub transport: Transport,
    #[serde(with = "as_text")]
    pub iana_number: u8,
    #[serde(rename = "type")]
    pub family: IpFamily,
    /// Community ID v1 of the flow (seed 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub community_id: Option<String>,
    /// A gateway flow summary: bytes both ways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// ... packets both ways.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// The application protocol (`dns`); none for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// ECS `dns.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// `query`.
    #[serde(rename = "type")]
    pub kind: String,
    pub question: DnsQuestion,
}

/// ECS `dns.question.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQuestion {
    /// Lower case, without the trailing dot.
    pub name: String,
    /// `A`, `AAAA`, ... (`TYPE<n>` without a mnemonic).
    #[serde(rename = "type")]
    pub kind: String,
    /// `IN` (the only class the kernel does not tell apart: not read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// 0 when not known (a web server's log names the client's address
    /// only): not written. No TCP or UDP endpoint has port 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u16,
    /// What this end sent, from the IP header on (ECS `source.bytes`): a
    /// hunt's flow, a gateway flow's summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// ... packets this end sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
}

impl Endpoint {
    /// An address and port, without counts.
    pub fn new(addr: std::net::SocketAddr) -> Self {
        Endpoint {
            ip: addr.ip(),
            port: addr.port(),
            bytes: None,
            packets: None,
        }
    }
    /// An address and port, without counts.
    pub fn at(ip: IpAddr, port: u16) -> Self {
        Endpoint::new(std::net::SocketAddr::new(ip, port))
    }
}

/// ECS `observer.*`: the router a gateway flow went through, or the
/// router or firewall that exported a flow record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observer {
    /// `router`.
    #[serde(rename = "type")]
    pub kind: String,
    /// This host (gateway mode); not known for an exporter.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// The exporter's address (flow records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<IpAddr>,
    /// The interface the flow's first packet entered by (seen at its
    /// ingress hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<ObserverInterface>,
    /// ... or left by (egress hook).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<ObserverInterface>,
}

/// ECS `observer.ingress` / `observer.egress`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObserverInterface {
    pub interface: InterfaceName,
    /// `inside` or `outside`: the side the interface faces (gateway mode;
    /// an exporter does not say).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceName {
    /// Gateway mode: the interface's name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// A flow record's SNMP ifIndex on its exporter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    /// From `/proc/<pid>/comm`, else the kernel's command name.
    pub name: String,
    pub thread: Thread,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    /// ECS `process.env_vars`, filtered: only the watched `TOR_PT_*`
    /// bindings of a program start, never the rest of the environment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_vars: Vec<String>,
}

/// The thread that connected or accepted; its name is the kernel's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thread {
    pub id: u32,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    pub pid: u32,
    /// The parent's command name (`/proc/<ppid>/comm`), when it could be
    /// read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    #[serde(with = "as_text")]
    pub id: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    #[serde(with = "as_text")]
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// The container's name in its pod (from the kubelet's log directories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<Runtime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orchestrator {
    /// `kubernetes`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The pod's namespace (from the kubelet's log directories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub resource: OrchestratorResource,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrchestratorResource {
    /// `pod`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The pod UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The pod's name (from the kubelet's log directories).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl OrchestratorResource {
    pub fn is_pod(&self) -> bool {
        self.kind == "pod"
    }
}

/// ECS `rule.*`: the detection rule that raised the alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub id: String,
    pub name: String,
    pub description: String,
    pub ruleset: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Threat {
    pub framework: String,
    pub tactic: IdsNames,
    pub technique: Technique,
    /// The first feed that matched (none for a signal without a feed: a
    /// program start, a listening socket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed: Option<FeedName>,
    pub enrichments: Vec<Enrichment>,
}

/// ATT&CK ids and names (ECS lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdsNames {
    pub id: Vec<String>,
    pub name: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Technique {
    pub id: Vec<String>,
    pub name: Vec<String>,
    pub subtechnique: IdsNames,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedName {
    pub name: String,
}

/// One feed match, as ECS `threat.enrichments[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enrichment {
    pub indicator: Indicator,
    pub matched: Matched,
    pub feed: FeedName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IndicatorType {
    #[serde(rename = "ipv4-addr")]
    Ipv4Addr,
    #[serde(rename = "ipv6-addr")]
    Ipv6Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indicator {
    pub ip: IpAddr,
    /// The relay's ORPort (relay matches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(rename = "type")]
    pub kind: IndicatorType,
    /// The feed's name.
    pub provider: String,
    pub description: String,
    /// When the address was last seen as an exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<TimestampSecs>,
    /// The feed's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<TimestampSecs>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matched {
    /// The value that matched (the peer's address).
    pub atomic: String,
    /// Where it is in this document (`destination.ip`, `source.ip`).
    pub field: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// ECS `related.*`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Related {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// How `process.*` was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attribution {
    /// No process: an inbound connection that ended, or that nobody used
    /// within `inbound_wait`.
    None,
    /// The caller of `connect()`.
    Connect,
    /// The first process that read, wrote, shut down or closed an accepted
    /// connection.
    FirstUse,
    /// The caller of `listen()`.
    Listen,
    /// The caller of `connect()` or `sendmsg()` to a DNS port.
    Sender,
}

/// What an alert is about (rules select it with `when.event`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Signal {
    /// A connection to or from a listed address (or a SOCKS port).
    #[default]
    Connection,
    /// A Tor client or pluggable transport started.
    Exec,
    /// A process listens on a Tor SOCKS or control port.
    Listen,
    /// A DNS query for an onion name or a Tor Project domain.
    Dns,
    /// Gateway mode: a forwarded flow to or from a listed address, and
    /// its summary when it ends.
    Gateway,
    /// A flow record a router or firewall exported to the collector
    /// (`[[collector]]`), to or from a listed address.
    Flow,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Connection => "connection",
            Signal::Exec => "exec",
            Signal::Listen => "listen",
            Signal::Dns => "dns",
            Signal::Gateway => "gateway",
            Signal::Flow => "flow",
        }
    }

    pub fn is_connection(&self) -> bool {
        *self == Signal::Connection
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a program start was reported (`torsensor.exec.reasons`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecReason {
    /// Its name is a Tor client's or pluggable transport's.
    Name,
    /// Its environment has `TOR_PT_*` variables (tor started it as a
    /// pluggable transport, or someone made it look so).
    Environment,
}

/// `torsensor.exec`: what the kernel and `/proc` said about a start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecDetails {
    pub reasons: Vec<ExecReason>,
    /// The watched name it matched (`tor`, `lyrebird`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// The kernel's command name (15 bytes at most).
    pub comm: String,
    /// Bytes of environment.
    pub env_bytes: u32,
    /// The environment was larger than the kernel scans (its middle was
    /// not looked at).
    #[serde(default, skip_serializing_if = "is_false")]
    pub env_partial: bool,
}

/// `torsensor.listen`: the watched port a process listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenDetails {
    /// What the port is (`tor SOCKS`, `tor control`, `Tor Browser SOCKS`,
    /// `configured`).
    pub port_use: String,
}

/// `torsensor.dns`: which watched name a query matched, and who sent it
/// for whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsDetails {
    /// The watched suffix it is or is under (`onion`, `torproject.org`).
    pub suffix: String,
    /// Its category in the names file (`onion`, `tor-project`...).
    pub category: String,
    pub what: String,
    /// The sender is a local resolver or cache (`resolver` names it):
    /// it forwards a query some other process asked it, which is not
    /// named here (its own query to the resolver, over loopback, is an
    /// alert of its own if it was sent over the network stack).
    #[serde(default, skip_serializing_if = "is_false")]
    pub via_resolver: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// The server is on this host (a loopback address): a local stub
    /// resolver (127.0.0.53, dnsmasq, unbound) that will ask upstream.
    #[serde(default, skip_serializing_if = "is_false")]
    pub local_server: bool,
    /// The names file (`rules/tor-dns.toml` or the configured one).
    pub names_file: String,
}

/// `torsensor.gateway`: where a gateway flow was seen, and (a summary) how
/// it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayDetails {
    pub interface: String,
    /// `inside` or `outside`: the side the interface faces.
    pub side: String,
    /// `ingress` or `egress`: the interface's hook that saw the SYN.
    pub hook: String,
    /// `hit` (the flow's SYN) or `end` (its summary).
    pub phase: String,
    /// The kernel tracks the flow: a summary will follow (false when the
    /// flow table was full).
    pub tracked: bool,
    /// How the flow ended (summaries): `fin`, `rst`, `idle`, `shutdown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<crate::kernel::gateway::FlowEnd>,
}

/// `torsensor.collector`: which listener received the flow record, from
/// which export, and how it was judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectorDetails {
    /// The listener (`udp://0.0.0.0:2055`).
    pub listener: String,
    /// The exporter's address and source port.
    pub exporter: String,
    /// `netflow5`, `netflow9` or `ipfix`.
    pub protocol: String,
    /// The IPFIX observation domain, the v9 source id, the v5 engine id.
    pub observation_domain: u32,
    /// One-way records joined into this flow (2: both directions).
    pub records: u32,
    /// How the flow's initiator was told (`port`: the lower port serves).
    pub initiator_by: String,
    /// The thresholds met (`bytes`, `duration`; `[hunt]`).
    pub substantial: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// Both ends are listed.
    #[serde(default, skip_serializing_if = "is_false")]
    pub both_listed: bool,
}

/// `torsensor.*`: what ECS has no field for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Torsensor {
    /// What the alert is about; left out for a connection.
    #[serde(default, skip_serializing_if = "Signal::is_connection")]
    pub signal: Signal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<ListenDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayDetails>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector: Option<CollectorDetails>,
    /// The feeds that matched, in feed order, each once.
    pub feeds: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tor: Option<TorDetails>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchDetails>,
    /// The socket was IPv6 and the peer IPv4-mapped.
    pub v4_mapped: bool,
    /// Sent by `--audit-all`, not by a feed match.
    pub audit: bool,
    /// Still in progress when the sensor stopped, or unanswered for long.
    #[serde(default, skip_serializing_if = "is_false")]
    pub incomplete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<Attribution>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// The process's cgroup v2 path when it runs in no container (a
    /// container's is `torsensor.container.cgroup_path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_path: Option<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub process_unknown: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerDetails>,
    /// Connections this alert stands for (set by aggregation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    /// The alert summarises repeats inside an aggregation window.
    #[serde(default, skip_serializing_if = "is_false")]
    pub summary: bool,
    /// What opt-in blocking did (hits a block rule decided, and every
    /// connection the kernel refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<BlockDetails>,
    /// What a retrospective hunt (`torsensor hunt`) found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hunt: Option<HuntDetails>,
}

/// `torsensor.hunt`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HuntDetails {
    /// What the input was: `pcap`, `pcapng`, `netflow` (export packets in
    /// a capture), `zeek`, `nfdump`, `access-log`.
    pub input: String,
    /// The record's number in its input (packet, line, flow), from 1.
    pub record: u64,
    /// Above the thresholds (`[hunt]`): alerts are only raised for these.
    pub substantial: bool,
    /// Which thresholds it passed (`bytes`, `duration`, `requests`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
    /// How the initiator was known: `syn` (the capture has the SYN),
    /// `record` (the flow record says), `port` (guessed: the lower port
    /// serves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    /// How a flow ended: `fin`, `rst`, `idle`, `end-of-input`, `record`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Both ends were listed at the time.
    #[serde(default, skip_serializing_if = "is_false")]
    pub both_listed: bool,
    /// Requests of one client in one window (access logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<RequestCounts>,
    /// `X-Forwarded-For` addresses of the first request (with
    /// `forwarded_for`), nearest proxy last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forwarded_for: Vec<IpAddr>,
}

/// `torsensor.hunt.requests`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub count: u64,
    pub bytes: u64,
    /// Requests per HTTP status.
    pub status: std::collections::BTreeMap<String, u64>,
}

/// `torsensor.tor.history`: the interval of the Tor history that matched
/// and how far the event was from it (0 inside; negative before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMatch {
    pub first_seen: TimestampSecs,
    pub last_seen: TimestampSecs,
    /// Seconds.
    pub distance: i64,
}

/// `torsensor.block`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockDetails {
    /// `[blocking] mode` when it happened.
    pub mode: BlockMode,
    pub result: BlockResult,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockResult {
    /// The kernel refused the connection (`event.type` has `denied`).
    Blocked,
    /// Dry run: a block rule holds, the connection went through.
    WouldBlock,
    /// Enforcing, but the connection went through: it began before
    /// blocking was armed or the rule changed, or blocking is off.
    NotBlocked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// A relay's OR address and ORPort matched.
    High,
    /// Only an exit (or generic list) entry matched.
    Medium,
}

/// `torsensor.tor`: roles, confidence, the relays behind the address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TorDetails {
    /// Strongest first.
    pub roles: Vec<Role>,
    pub confidence: Confidence,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub or_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_last_seen: Option<TimestampSecs>,
    /// Flags of the relays behind the address (`Exit`, `Guard`, `BadExit`,
    /// `Running`, `Valid`, ...), as a consensus or Onionoo gave them: the
    /// union, sorted. Empty (left out) when the feeds carry none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    /// All relays behind the address; at most 16 are listed.
    pub relay_count: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<RelayRef>,
    /// A hunt's match against the Tor history (at the event's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RelayRef {
    pub fingerprint: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nickname: Option<String>,
}

/// `torsensor.matches[]`: one feed and role that matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchDetails {
    pub name: String,
    pub role: Role,
    /// The listed prefix (exit) or the OR address (relay).
    pub prefix: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<TimestampSecs>,
    pub origin: Origin,
}

/// `torsensor.container`: what ECS `container.*` has no field for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDetails {
    pub cgroup_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qos: Option<Qos>,
}

impl Alert {
    /// An alert raised by a rule (an audit event is not one).
    pub fn is_alert(&self) -> bool {
        self.event.kind == EventKind::Alert
    }

    /// What the alert is about.
    pub fn signal(&self) -> Signal {
        self.torsensor.signal
    }

    /// A connection's direction (none for other signals).
    pub fn direction(&self) -> Option<Direction> {
        self.network
            .as_ref()
            .and_then(|n| n.direction)
            .map(NetworkDirection::host_view)
    }

    pub fn is_egress(&self) -> bool {
        self.direction() == Some(Direction::Egress)
    }

    /// The remote end of a connection: the destination outbound, the
    /// source inbound. None without a peer (a program start, a listener).
    pub fn peer(&self) -> Option<Endpoint> {
        match self.direction()? {
            Direction::Egress => self.destination,
            Direction::Ingress => self.source,
        }
    }

    /// The local end: of a connection, or the listening address.
    pub fn local(&self) -> Option<Endpoint> {
        match self.direction() {
            Some(Direction::Egress) => self.source,
            Some(Direction::Ingress) => self.destination,
            None => self.server,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::test_support::connection_alert;
    use std::time::UNIX_EPOCH;

    #[test]
    fn enum_names_are_the_ecs_values() {
        use crate::enrich::container::{Qos, Runtime};
        use serde_json::{Value, to_value};
        let text = |v: Value| v.as_str().unwrap().to_owned();
        for r in [
            Runtime::Containerd,
            Runtime::CriO,
            Runtime::Docker,
            Runtime::Podman,
        ] {
            assert_eq!(text(to_value(r).unwrap()), r.as_str());
        }
        for q in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
            assert_eq!(text(to_value(q).unwrap()), q.as_str());
        }
        for t in [Transport::Tcp, Transport::Udp] {
            assert_eq!(text(to_value(t).unwrap()), t.as_str());
        }
        let attribution = to_value(Attribution::FirstUse).unwrap();
        assert_eq!(text(attribution), "first-use");
    }

    #[test]
    fn an_alert_reads_back_what_it_wrote() {
        let mut alert = connection_alert(7, ("10.0.0.5", 1), ("198.51.100.7", 443), UNIX_EPOCH);
        alert.torsensor.count = Some(3);
        alert.torsensor.summary = true;
        let doc = crate::alert::ecs::render(&alert);
        assert_eq!(doc["user"]["id"], "1000");
        assert_eq!(doc["network"]["iana_number"], "6");
        let back: Alert = serde_json::from_value(doc).unwrap();
        assert_eq!(back, alert);
    }
}
