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
    pub torsensor: Torsensor,
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
    /// A gateway flow summary: its first packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Timestamp>,
    /// ... its last packet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Timestamp>,
    /// ... `end - start` in nanoseconds (ECS).
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// A gateway flow summary: bytes this end sent (from the IP header
    /// on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// ... packets this end sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
}

impl Endpoint {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Endpoint {
            ip,
            port,
            bytes: None,
            packets: None,
        }
    }
}

/// ECS `observer.*`: the router a gateway flow went through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observer {
    /// `router`.
    #[serde(rename = "type")]
    pub kind: String,
    pub hostname: String,
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
    /// `inside` or `outside`: the side the interface faces.
    pub zone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceName {
    pub name: String,
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
    /// Gateway mode: a forwarded flow to or from a listed address, and
    /// its summary when it ends.
    Gateway,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Connection => "connection",
            Signal::Exec => "exec",
            Signal::Listen => "listen",
            Signal::Gateway => "gateway",
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
    pub gateway: Option<GatewayDetails>,
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
