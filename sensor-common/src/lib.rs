//! Types shared by the torsensor kernel programs (`sensor-ebpf`) and the daemon.
//!
//! Every type here crosses the kernel/user boundary byte for byte, so each is
//! `#[repr(C)]`, has no implicit padding (padding is an explicit field) and no
//! `bool`. The userspace side checks sizes and offsets in unit tests below.
#![no_std]

/// Length of a task's `comm` (the kernel's `TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// Socket address families, as the kernel reports them.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// `ConnEvent::direction`: this host opened the connection (`connect`).
pub const DIR_EGRESS: u8 = 1;
/// `ConnEvent::direction`: a peer opened the connection and a local process accepted it.
pub const DIR_INGRESS: u8 = 2;

/// `ConnEvent::flags`: the remote address was IPv4-mapped IPv6 (`::ffff:a.b.c.d`)
/// on a dual-stack socket and was matched as the IPv4 address.
pub const FLAG_V4_MAPPED: u8 = 1 << 0;
/// `ConnEvent::flags`: the outbound connection attempt failed (SYN_SENT -> CLOSE).
pub const FLAG_CONNECT_FAILED: u8 = 1 << 1;
/// `ConnEvent::flags`: sent because "audit all" is on, not because a feed matched.
pub const FLAG_AUDIT: u8 = 1 << 2;
/// `ConnEvent::flags`: no process could be attributed: an inbound connection
/// that ended, or that no process read, wrote or closed within the daemon's
/// wait, before one did; pid/uid/comm are zero.
pub const FLAG_NO_PROCESS: u8 = 1 << 3;
/// `ConnEvent::flags`: a blocking program refused this connection (an
/// outbound `connect()` that failed in the caller, or an inbound SYN that
/// was dropped); sent by the blocking programs, never by the tracepoints.
pub const FLAG_BLOCKED: u8 = 1 << 4;
// Bits 4 and 5 are opt-in blocking's.
/// `ConnEvent::flags`: not a connection but a socket that started to listen
/// (CLOSE -> LISTEN) on a watched port (`LISTEN_PORTS`); the local address
/// and port are the listening ones, the remote ones are zero, and the
/// process is the caller of `listen()`.
pub const FLAG_LISTEN: u8 = 1 << 6;

/// Maximum number of feeds a sensor can load at once (one bit each in
/// the [`MatchInfo`] masks).
pub const MAX_FEEDS: usize = 32;

/// What matched, as two feed bitmasks (bit `i`: feed number `i`).
///
/// As the value of an LPM-trie entry: `exit_feeds` lists the prefix as a Tor
/// exit address (or as an entry of a generic list): it matches in both
/// directions on any port. `relay_feeds` lists it as a relay's OR address,
/// which only counts for an outbound connection to one of that address's
/// ORPorts (the `OR_PORTS_*` hash maps say which).
/// In a [`ConnEvent`]: the feeds that matched this connection in each role.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MatchInfo {
    pub exit_feeds: u32,
    pub relay_feeds: u32,
}

impl MatchInfo {
    pub const NONE: Self = Self {
        exit_feeds: 0,
        relay_feeds: 0,
    };
}

/// Key of the `OR_PORTS_*` hash maps: a relay's OR address and ORPort.
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`) so that the two
/// families cannot collide. The value is the feed bitmask.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrPortKey {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub _pad: u16,
}

impl OrPortKey {
    /// The key for an IPv4 address (network order bytes).
    #[inline(always)]
    pub const fn v4(a: [u8; 4], port: u16) -> Self {
        OrPortKey {
            addr: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
            ],
            port,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub const fn v6(addr: [u8; 16], port: u16) -> Self {
        OrPortKey {
            addr,
            port,
            _pad: 0,
        }
    }
}

/// One reported connection, written by the kernel into the ring buffer.
///
/// Addresses are in network byte order; an IPv4 address occupies the first 4
/// bytes of its 16-byte field (the rest is zero). Ports are host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    /// `bpf_ktime_get_boot_ns()` when the connection was seen.
    pub ts_boot_ns: u64,
    /// cgroup v2 id of the process (0 if unknown).
    pub cgroup_id: u64,
    /// Process id (kernel tgid).
    pub tgid: u32,
    /// Thread id (kernel pid).
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// `AF_INET` or `AF_INET6`: the socket's family (a dual-stack socket with
    /// a mapped peer is `AF_INET6` with `FLAG_V4_MAPPED`).
    pub family: u16,
    /// `DIR_EGRESS` or `DIR_INGRESS`.
    pub direction: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// What matched (all zero for an audit-only event).
    pub matched: MatchInfo,
    /// Task name of the thread that connected or accepted.
    pub comm: [u8; COMM_LEN],
}

impl ConnEvent {
    pub const ZERO: Self = Self {
        ts_boot_ns: 0,
        cgroup_id: 0,
        tgid: 0,
        pid: 0,
        uid: 0,
        gid: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
        local_port: 0,
        remote_port: 0,
        family: 0,
        direction: 0,
        flags: 0,
        matched: MatchInfo::NONE,
        comm: [0; COMM_LEN],
    };
}

/// Indexes of the per-CPU counter array `COUNTERS`.
pub mod counter {
    /// Outbound TCP connection attempts seen (CLOSE -> SYN_SENT).
    pub const CONNECT_SEEN: u32 = 0;
    /// Inbound TCP connections established (SYN_RECV -> ESTABLISHED).
    pub const INBOUND_SEEN: u32 = 1;
    /// Outbound attempts whose peer matched a feed.
    pub const CONNECT_HIT: u32 = 2;
    /// Inbound connections whose peer matched a feed.
    pub const INBOUND_HIT: u32 = 3;
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 4;
    /// Events lost because the ring buffer was full (reservation failed).
    pub const RINGBUF_FULL: u32 = 5;
    /// Hits lost because the pending-connection map could not take them.
    pub const PENDING_FULL: u32 = 6;
    /// Inbound hits attributed in the kernel to the first process that
    /// read, wrote, shut down or closed the accepted connection.
    pub const INBOUND_ATTRIBUTED: u32 = 7;
    /// Outbound attempts to a relay's OR address on a port that is not one
    /// of its ORPorts (and not an exit address): not reported, only counted.
    pub const RELAY_OTHER_PORT: u32 = 8;
    /// Inbound hits whose connection ended before any process used it
    /// (reported without a process).
    pub const INBOUND_UNATTRIBUTED: u32 = 9;
    /// Outbound connects refused by a block rule (enforce mode).
    pub const CONNECT_BLOCKED: u32 = 10;
    /// Inbound SYNs dropped by a block rule (enforce mode); a client's
    /// retransmissions count again.
    pub const INBOUND_BLOCKED: u32 = 11;
    /// Connections (outbound connects, inbound SYNs) a block rule would
    /// have refused in dry-run mode.
    pub const WOULD_BLOCK: u32 = 12;
    /// Connections a block rule matched but one of its exceptions exempted.
    pub const BLOCK_EXCEPTED: u32 = 13;
    const _: () = assert!(BLOCK_EXCEPTED < EXEC_SEEN);
    /// Programs started (`sched_process_exec`).
    pub const EXEC_SEEN: u32 = 14;
    /// Programs started whose command name is a watched one (`EXEC_NAMES`).
    pub const EXEC_NAME_HIT: u32 = 15;
    /// Programs started with a `TOR_PT_*` variable in the part of their
    /// environment the kernel scanned.
    pub const EXEC_ENV_HIT: u32 = 16;
    /// Programs started without a match whose environment was larger than
    /// the scanned windows (its beginning and end): the middle was not
    /// scanned.
    pub const EXEC_ENV_PARTIAL: u32 = 17;
    /// Environments that could not be read (`bpf_probe_read_user` failed).
    pub const EXEC_ENV_UNREADABLE: u32 = 18;
    /// Exec events written to the `EXEC_EVENTS` ring buffer.
    pub const EXEC_SENT: u32 = 19;
    /// Exec events lost because `EXEC_EVENTS` was full.
    pub const EXEC_RINGBUF_FULL: u32 = 20;
    /// TCP sockets that started to listen (CLOSE -> LISTEN).
    pub const LISTEN_SEEN: u32 = 21;
    /// ... on a watched port (`LISTEN_PORTS`): sent as `FLAG_LISTEN` events.
    pub const LISTEN_HIT: u32 = 22;
    // DNS lookups for Tor (issue 17): one table, renumber here at a merge.
    /// Egress packets to a DNS port (`DNS_PORTS`) with data the egress
    /// program looked into (a TCP segment without data is not counted).
    pub const DNS_SEEN: u32 = DNS_BASE;
    /// ... whose question name has a watched suffix by its hash.
    pub const DNS_HIT: u32 = DNS_BASE + 1;
    /// DNS events written to the `DNS_EVENTS` ring buffer.
    pub const DNS_SENT: u32 = DNS_BASE + 2;
    /// DNS events lost because `DNS_EVENTS` was full.
    pub const DNS_RINGBUF_FULL: u32 = DNS_BASE + 3;
    /// Packets to a DNS port whose question could not be parsed: not a
    /// query, a compression pointer in the name, a name cut short by the
    /// end of the packet (or of a TCP segment), a TCP segment without the
    /// message's start. Not matched.
    pub const DNS_UNPARSED: u32 = DNS_BASE + 4;
    /// Hits whose socket was not in `DNS_SOCKS` (connected before the
    /// sensor started, or evicted): sent with the socket's uid and cgroup,
    /// without a process.
    pub const DNS_NO_PROCESS: u32 = DNS_BASE + 5;
    /// Sockets recorded by the sock_addr programs (`connect`, `sendmsg`
    /// to a DNS port).
    pub const DNS_SOCK_RECORDED: u32 = DNS_BASE + 6;
    const DNS_BASE: u32 = 23;
    const _: () = assert!(LISTEN_HIT < DNS_BASE);
    // Gateway mode (issue 17): one table, numbered from one base, so that
    // renumbering it after another block of counters is one change.
    /// First index of the gateway counters.
    pub const GATEWAY_BASE: u32 = DNS_BASE + 7;
    /// TCP packets the gateway programs looked at (every interface, both
    /// hooks).
    pub const GW_PACKETS: u32 = GATEWAY_BASE;
    /// New-connection SYNs (SYN without ACK) matched against the sets.
    pub const GW_SYN_SEEN: u32 = GATEWAY_BASE + 1;
    /// ... whose outside address (and ORPort) matched a feed.
    pub const GW_HIT: u32 = GATEWAY_BASE + 2;
    /// Gateway hits written to the `GW_EVENTS` ring buffer.
    pub const GW_EVENTS_SENT: u32 = GATEWAY_BASE + 3;
    /// Gateway hits lost because `GW_EVENTS` was full.
    pub const GW_RINGBUF_FULL: u32 = GATEWAY_BASE + 4;
    /// Hits whose flow could not be tracked because `GW_FLOWS` was full
    /// (the hit is still sent, without a later flow summary).
    pub const GW_FLOWS_FULL: u32 = GATEWAY_BASE + 5;
    /// Packets not parsed: IPv6 with extension headers before TCP, IPv4
    /// fragments after the first, truncated headers.
    pub const GW_UNPARSED: u32 = GATEWAY_BASE + 6;
    /// Packets counted into a tracked flow.
    pub const GW_FLOW_PACKETS: u32 = GATEWAY_BASE + 7;
    /// Number of counters (size of the array).
    pub const COUNT: u32 = GATEWAY_BASE + 8;
    const _: () = assert!(INBOUND_UNATTRIBUTED < COUNT);
    const _: () = assert!(DNS_SOCK_RECORDED < GATEWAY_BASE);
    const _: () = assert!(LISTEN_HIT < COUNT);
    const _: () = assert!(DNS_SOCK_RECORDED < COUNT);
    const _: () = assert!(GW_FLOW_PACKETS < COUNT);
}

/// Gateway mode (issue 17): TC programs on a router's interfaces match
/// forwarded TCP flows against the Tor sets and track the flows that hit.
pub mod gateway {
    /// `GatewayEvent::hook` / `FlowStats::hook`: seen entering the interface.
    pub const HOOK_INGRESS: u8 = 1;
    /// ... leaving it.
    pub const HOOK_EGRESS: u8 = 2;
    /// `GwIface::role`: the interface faces the inside hosts (attach here,
    /// before NAT, to see their real addresses).
    pub const ROLE_INSIDE: u8 = 1;
    /// ... faces the outside (the Internet side).
    pub const ROLE_OUTSIDE: u8 = 2;
    /// `GatewayEvent::flags`: `GW_FLOWS` was full, the flow is not tracked.
    pub const FLAG_NOT_TRACKED: u8 = 1 << 0;
    /// Slots of `GW_FLOW_COUNT` (the same scheme as `pending`): flows the
    /// programs inserted, flows the daemon removed.
    pub const COUNT_KERNEL: u32 = 0;
    pub const COUNT_SYNC: u32 = 1;
    pub const COUNT_SLOTS: u32 = 2;
}

/// Value of the kernel's `GW_IFACES` map (key: ifindex): what an attached
/// interface is.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GwIface {
    /// `gateway::ROLE_*`.
    pub role: u8,
    /// Bytes before the network header (14 on Ethernet, 0 on an L3 device).
    pub l3_offset: u8,
    pub _pad: [u8; 2],
}

/// Key of the kernel's `GW_FLOWS` map: one TCP flow, the same key in both
/// directions. Addresses network order (IPv4 in the first 4 bytes), ports
/// host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub inside_addr: [u8; 16],
    pub outside_addr: [u8; 16],
    pub inside_port: u16,
    pub outside_port: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    pub _pad: u16,
}

/// Value of `GW_FLOWS`: a tracked flow (one that hit), counted by the
/// programs, ended and reported by the daemon's sweep.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// `bpf_ktime_get_boot_ns()` at the SYN.
    pub first_ns: u64,
    /// ... at the last packet.
    pub last_ns: u64,
    /// Bytes (from the network header on) and packets (GSO segments
    /// counted one by one) from the inside host to the outside one.
    pub bytes_out: u64,
    pub packets_out: u64,
    /// ... from the outside host to the inside one.
    pub bytes_in: u64,
    pub packets_in: u64,
    pub matched: MatchInfo,
    /// Where the SYN was seen.
    pub ifindex: u32,
    /// `DIR_EGRESS`: the inside host opened the flow; `DIR_INGRESS`: the
    /// outside one did.
    pub direction: u8,
    /// `gateway::HOOK_*`.
    pub hook: u8,
    /// `gateway::ROLE_*` of the interface.
    pub role: u8,
    pub _pad: u8,
    // The end of the flow, one byte each so that the programs only ever
    // store a constant 1 (no read-modify-write race between CPUs).
    /// A FIN from the inside host was seen.
    pub fin_inside: u8,
    /// A FIN from the outside host was seen.
    pub fin_outside: u8,
    /// A RST from either side was seen.
    pub rst: u8,
    pub _pad2: [u8; 5],
}

/// A gateway hit, written to the `GW_EVENTS` ring buffer at the SYN.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayEvent {
    pub ts_boot_ns: u64,
    pub inside_addr: [u8; 16],
    pub outside_addr: [u8; 16],
    pub inside_port: u16,
    pub outside_port: u16,
    pub family: u16,
    /// `DIR_EGRESS` (inside host -> Tor relay) or `DIR_INGRESS` (Tor exit
    /// -> inside server).
    pub direction: u8,
    /// `gateway::HOOK_*`.
    pub hook: u8,
    pub ifindex: u32,
    /// `gateway::FLAG_*`.
    pub flags: u8,
    /// `gateway::ROLE_*` of the interface.
    pub role: u8,
    pub _pad: [u8; 2],
    pub matched: MatchInfo,
}

impl GatewayEvent {
    pub const ZERO: Self = Self {
        ts_boot_ns: 0,
        inside_addr: [0; 16],
        outside_addr: [0; 16],
        inside_port: 0,
        outside_port: 0,
        family: 0,
        direction: 0,
        hook: 0,
        ifindex: 0,
        flags: 0,
        role: 0,
        _pad: [0; 2],
        matched: MatchInfo::NONE,
    };
}

/// Why an [`ExecEvent`] was sent (`ExecEvent::reasons` bits).
pub mod exec {
    /// The new program's command name is in `EXEC_NAMES`.
    pub const BY_NAME: u8 = 1 << 0;
    /// Its environment has a variable that starts with the watched prefix
    /// (`TOR_PT_`).
    pub const BY_ENV: u8 = 1 << 1;

    /// `ExecEvent::flags`: the environment was larger than the two scanned
    /// windows; its middle was not scanned.
    pub const ENV_PARTIAL: u8 = 1 << 0;
    /// `ExecEvent::flags`: the environment could not be read.
    pub const ENV_UNREADABLE: u8 = 1 << 1;

    /// Bytes of the environment scanned from its beginning, and again from
    /// its end: an environment up to twice this is scanned whole.
    pub const ENV_WINDOW: usize = 1024;
    /// Longest environment variable prefix the kernel can look for (it
    /// compares 8 bytes: the NUL before the variable, then the prefix).
    pub const ENV_PREFIX_MAX: usize = 7;

    /// The 8-byte pattern and mask the kernel compares its shift register
    /// with for `prefix` (at most [`ENV_PREFIX_MAX`] bytes, no NUL): the
    /// last byte read is the lowest. `None` for an unusable prefix.
    pub fn env_pattern(prefix: &[u8]) -> Option<(u64, u64)> {
        if prefix.is_empty() || prefix.len() > ENV_PREFIX_MAX || prefix.contains(&0) {
            return None;
        }
        // NUL, then the prefix: (1 + len) bytes, the last in the low byte.
        let mut pattern = 0u64;
        for b in prefix {
            pattern = (pattern << 8) | *b as u64;
        }
        let bits = 8 * (prefix.len() as u32 + 1);
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        Some((pattern, mask))
    }
}

/// DNS lookups for Tor (issue 17): what the `cgroup_skb/egress` program
/// and the daemon share. The program walks the question name of a query
/// to a DNS port label by label, hashes each label (case-folded), and
/// looks the last 1..=`MAX_SUFFIX_LABELS` labels up in `DNS_SUFFIXES` by
/// [`dns::suffix_hash`]; the daemon fills that map from the names file
/// with the same functions and confirms every hit against the exact name.
pub mod dns {
    /// The question name's wire format is read into a buffer this large;
    /// a name is at most 255 bytes (RFC 1035), so every valid one fits.
    pub const NAME_BUF: usize = 256;
    /// Labels of the longest watched suffix (`bridges.torproject.org` has
    /// three).
    pub const MAX_SUFFIX_LABELS: usize = 4;
    /// `DNS_PORTS` bitmap words (one bit per port).
    pub const PORT_WORDS: u32 = 65536 / 64;
    /// Entries of `DNS_SUFFIXES`: the most watched names a names file may
    /// list.
    pub const MAX_NAMES: u32 = 1024;

    /// `DnsEvent::flags`: no process is known for the socket (see
    /// `counter::DNS_NO_PROCESS`); uid and cgroup are the socket's.
    pub const FLAG_NO_PROCESS: u8 = 1 << 0;

    /// FNV-1a 64.
    pub const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    pub const PRIME: u64 = 0x0000_0100_0000_01b3;

    /// One byte of a label into its hash: FNV-1a over the byte with bit
    /// 0x20 set, which folds ASCII upper case onto lower case (and a few
    /// punctuation pairs onto each other: a pre-filter, the daemon
    /// compares exactly).
    #[inline(always)]
    pub fn fold(h: u64, b: u8) -> u64 {
        (h ^ (b | 0x20) as u64).wrapping_mul(PRIME)
    }

    /// A label's hash (its bytes, without the length byte).
    pub fn label_hash(label: &[u8]) -> u64 {
        let mut h = OFFSET;
        for b in label {
            h = fold(h, *b);
        }
        h
    }

    /// One more label (left to right) into a suffix's hash.
    #[inline(always)]
    pub fn combine(acc: u64, label: u64) -> u64 {
        (acc ^ label).wrapping_mul(PRIME).rotate_left(29)
    }

    /// The key of a suffix of `k` labels in `DNS_SUFFIXES`, from their
    /// label hashes left to right (`com`, `example` -> `example.com`
    /// is `[h("example"), h("com")]`). The label count goes in first, so
    /// suffixes of different lengths cannot share a key by construction.
    pub fn suffix_hash(labels: &[u64]) -> u64 {
        let mut acc = OFFSET ^ labels.len() as u64;
        for l in labels {
            acc = combine(acc, *l);
        }
        acc
    }
}

/// Who a socket that talks to a DNS port belongs to: the caller of
/// `connect()` / `sendmsg()` (value of the `DNS_SOCKS` LRU map, keyed by
/// the socket cookie).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsProc {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; COMM_LEN],
}

/// A query for a watched name, written by the egress program into the
/// `DNS_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DnsEvent {
    pub ts_boot_ns: u64,
    /// The sender's cgroup v2 id (the socket's, without a process).
    pub cgroup_id: u64,
    /// The socket cookie.
    pub cookie: u64,
    pub tgid: u32,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The server the query goes to (network order; IPv4 in the first 4
    /// bytes).
    pub server_addr: [u8; 16],
    /// Host order.
    pub server_port: u16,
    /// The sender's port (host order).
    pub local_port: u16,
    /// `AF_INET` or `AF_INET6` (of the packet).
    pub family: u16,
    /// `IPPROTO_UDP` (17) or `IPPROTO_TCP` (6).
    pub transport: u8,
    /// `dns::FLAG_*`.
    pub flags: u8,
    /// The question's QTYPE (host order).
    pub qtype: u16,
    /// Bytes of `qname` in use: the wire-format name with its final 0.
    pub qname_len: u16,
    pub _pad: u32,
    /// The sender's command name (zero without a process).
    pub comm: [u8; COMM_LEN],
    /// The question name in wire format (length-prefixed labels).
    pub qname: [u8; dns::NAME_BUF],
}

impl DnsEvent {
    pub const ZERO: Self = Self {
        ts_boot_ns: 0,
        cgroup_id: 0,
        cookie: 0,
        tgid: 0,
        pid: 0,
        uid: 0,
        gid: 0,
        server_addr: [0; 16],
        server_port: 0,
        local_port: 0,
        family: 0,
        transport: 0,
        flags: 0,
        qtype: 0,
        qname_len: 0,
        _pad: 0,
        comm: [0; COMM_LEN],
        qname: [0; dns::NAME_BUF],
    };
}

/// Offsets in `struct task_struct` and `struct mm_struct` that the exec
/// program reads (global `EXEC_OFFSETS`, from the running kernel's BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecOffsets {
    /// `task_struct.mm`
    pub task_mm: u32,
    /// `task_struct.real_parent`
    pub task_real_parent: u32,
    /// `task_struct.tgid`
    pub task_tgid: u32,
    /// `mm_struct.env_start`
    pub mm_env_start: u32,
    /// `mm_struct.env_end`
    pub mm_env_end: u32,
    pub _pad: u32,
}

/// One program start worth a look, written by the exec program into the
/// `EXEC_EVENTS` ring buffer (a ring of its own, so that `ConnEvent`
/// records keep their one size).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    /// `bpf_ktime_get_boot_ns()` at the exec.
    pub ts_boot_ns: u64,
    pub cgroup_id: u64,
    /// Process id (kernel tgid).
    pub tgid: u32,
    /// Thread id (kernel pid).
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The parent's process id (`real_parent->tgid`).
    pub ppid: u32,
    /// Bytes of the environment (`env_end - env_start`).
    pub env_len: u32,
    /// `exec::BY_*` bits.
    pub reasons: u8,
    /// `exec::ENV_*` bits.
    pub flags: u8,
    pub _pad: [u8; 6],
    /// The new program's command name (the basename it was started by,
    /// truncated to 15 bytes).
    pub comm: [u8; COMM_LEN],
}

impl ExecEvent {
    pub const ZERO: Self = Self {
        ts_boot_ns: 0,
        cgroup_id: 0,
        tgid: 0,
        pid: 0,
        uid: 0,
        gid: 0,
        ppid: 0,
        env_len: 0,
        reasons: 0,
        flags: 0,
        _pad: [0; 6],
        comm: [0; COMM_LEN],
    };
}

/// Slots of the kernel's `PENDING_COUNT` array, the programs' fast path
/// that skips the hash lookup while a pending map is empty (the normal case).
///
/// For each pending map, `*_KERNEL` is what the programs inserted minus what
/// they removed (each adjusted right after its map operation), and `*_SYNC`
/// is the total the daemon removed (its sweep; only the daemon writes it, and
/// only ever upwards, right after the removals). So `KERNEL - SYNC` is never
/// below the number of entries in the map whose insert has been counted. A
/// program reads `SYNC` first, then `KERNEL`: `SYNC` can only have grown in
/// between, so a pending entry still makes the two differ. Equal slots mean
/// nothing is pending. (An earlier scheme let the daemon copy `KERNEL` into
/// `SYNC` when it saw the map empty; an insert landing between its check and
/// its write was then invisible to the programs, and its hit was lost.)
pub mod pending {
    pub const OUT_KERNEL: u32 = 0;
    pub const IN_KERNEL: u32 = 1;
    pub const OUT_SYNC: u32 = 2;
    pub const IN_SYNC: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// The pre-filter in front of the LPM tries: a bitmap (kernel map
/// `PREFILTER`, `WORDS` u64 words) with one bit per IPv4 /16 and one bit
/// per 16-bit fold of an IPv6 /32. A clear bit means no listed prefix can
/// contain the address, and the trie lookup is skipped; a set bit only
/// means "look it up". The daemon keeps it a superset of the active set.
pub mod prefilter {
    /// Bits per family.
    pub const BITS: usize = 1 << 16;
    /// Words of the whole map: IPv4 bits, then IPv6 bits.
    pub const WORDS: u32 = (2 * BITS / 64) as u32;

    /// Bit index of an IPv4 address: its /16.
    #[inline(always)]
    pub fn v4(a: &[u8; 4]) -> usize {
        (a[0] as usize) << 8 | a[1] as usize
    }

    /// Bit index of an IPv6 address: its /32, folded to 16 bits.
    #[inline(always)]
    pub fn v6(a: &[u8; 16]) -> usize {
        BITS + (((a[0] ^ a[2]) as usize) << 8 | (a[1] ^ a[3]) as usize)
    }
}

/// Opt-in blocking: the kernel side of the block rules (compiled by the
/// daemon from rules with `action = "block"`; see `alert/rules/block.rs`).
pub mod block {
    /// `BLOCK_MODE[MODE]`: what the blocking programs do with a match.
    pub const MODE: u32 = 0;
    /// `BLOCK_MODE[ERRNO]`: the errno a refused `connect()` returns
    /// (0: the hook's default, `EPERM`).
    pub const ERRNO: u32 = 1;
    /// Slots of `BLOCK_MODE`.
    pub const MODE_SLOTS: u32 = 2;
    /// Nothing is refused or counted (the programs may still be attached
    /// while a reload turns blocking off).
    pub const OFF: u32 = 0;
    /// Matches are counted (`WOULD_BLOCK`), nothing is refused.
    pub const DRY_RUN: u32 = 1;
    /// Matches are refused and reported.
    pub const ENFORCE: u32 = 2;
    /// Entries of `BLOCK_RULES`: a rule whose lists expand to more entries
    /// is refused when the rules are loaded.
    pub const MAX_RULES: u32 = 16;
    /// Exceptions per entry.
    pub const MAX_EXCEPT: usize = 8;
    /// `BlockMatch::uid` when the uid does not matter.
    pub const ANY_UID: u32 = u32::MAX;
}

/// Who a block rule (or one of its exceptions) applies to, in the terms
/// the kernel can check at `connect()` / SYN time. Every field given must
/// hold; an unused field is "any".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockMatch {
    /// The task's (outbound) or the listening socket's (inbound) uid, or
    /// [`block::ANY_UID`].
    pub uid: u32,
    /// Depth of `cgroup_id` in the cgroup v2 hierarchy (root: 0).
    pub cgroup_level: u32,
    /// Only tasks (sockets) in this cgroup or below it; 0: any.
    pub cgroup_id: u64,
    /// The task's command name, NUL-padded; all zero: any (outbound only:
    /// there is no task at SYN time).
    pub comm: [u8; COMM_LEN],
}

impl BlockMatch {
    pub const ANY: Self = Self {
        uid: block::ANY_UID,
        cgroup_level: 0,
        cgroup_id: 0,
        comm: [0; COMM_LEN],
    };
}

/// One entry of the kernel's `BLOCK_RULES` array. Entries are tried in
/// order; the first whose direction, feeds and scope hold decides: blocked,
/// unless one of its exceptions holds. A `direction` of 0 ends the list.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRule {
    /// Exit-address feeds (bit `i`: feed `i`) whose matches this blocks.
    pub exit_feeds: u32,
    /// Relay (OR address and ORPort) feeds whose matches this blocks.
    pub relay_feeds: u32,
    /// `DIR_EGRESS` or `DIR_INGRESS`; 0 ends the list.
    pub direction: u8,
    /// Entries of `except` in use.
    pub except_count: u8,
    pub _pad: [u8; 6],
    pub scope: BlockMatch,
    pub except: [BlockMatch; block::MAX_EXCEPT],
}

impl BlockRule {
    pub const NONE: Self = Self {
        exit_feeds: 0,
        relay_feeds: 0,
        direction: 0,
        except_count: 0,
        _pad: [0; 6],
        scope: BlockMatch::ANY,
        except: [BlockMatch::ANY; block::MAX_EXCEPT],
    };
}

/// Kernel-structure offsets the daemon reads from the running kernel's BTF
/// and passes to the programs (global `KOFFSETS`): the BTF tracepoint
/// receives a BTF-typed `struct sock *` and loads these fields directly
/// (the one past `struct sock` with `bpf_probe_read_kernel`), so one object
/// runs on any kernel layout without CO-RE. `struct sock` starts with
/// `struct sock_common`, and `struct inet_sock` with `struct sock`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// `sock_common.skc_daddr` (IPv4 peer, network order)
    pub skc_daddr: u32,
    /// `sock_common.skc_rcv_saddr` (IPv4 local, network order)
    pub skc_rcv_saddr: u32,
    /// `sock_common.skc_dport` (peer port, network order)
    pub skc_dport: u32,
    /// `sock_common.skc_num` (local port, host order)
    pub skc_num: u32,
    /// `sock_common.skc_family`
    pub skc_family: u32,
    /// `sock_common.skc_v6_daddr`
    pub skc_v6_daddr: u32,
    /// `sock_common.skc_v6_rcv_saddr`
    pub skc_v6_rcv_saddr: u32,
    /// `sock.sk_protocol` (u16)
    pub sk_protocol: u32,
    /// `inet_sock.inet_sport` (local port, network order): still set when a
    /// failed connect has already given `skc_num` back.
    pub inet_sport: u32,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, `#[repr(C)]`, no padding bytes (checked by the
    // layout tests), every bit pattern valid.
    unsafe impl aya::Pod for super::MatchInfo {}
    unsafe impl aya::Pod for super::ConnEvent {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::OrPortKey {}
    unsafe impl aya::Pod for super::BlockRule {}
    unsafe impl aya::Pod for super::ExecEvent {}
    unsafe impl aya::Pod for super::ExecOffsets {}
    unsafe impl aya::Pod for super::DnsProc {}
    unsafe impl aya::Pod for super::DnsEvent {}
    unsafe impl aya::Pod for super::GwIface {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::GatewayEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn prefilter_indexes_stay_in_their_half() {
        assert_eq!(prefilter::v4(&[0, 0, 9, 9]), 0);
        assert_eq!(prefilter::v4(&[255, 255, 1, 2]), prefilter::BITS - 1);
        assert_eq!(prefilter::v4(&[127, 66, 0, 1]), 127 * 256 + 66);
        let mut a = [0u8; 16];
        assert_eq!(prefilter::v6(&a), prefilter::BITS);
        a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(prefilter::v6(&a), prefilter::BITS + (0x2d << 8 | 0xb9));
        a.fill(0xff);
        assert!(prefilter::v6(&a) < 2 * prefilter::BITS);
        assert_eq!(prefilter::WORDS as usize * 64, 2 * prefilter::BITS);
    }

    #[test]
    fn conn_event_layout_has_no_hidden_padding() {
        assert_eq!(offset_of!(ConnEvent, ts_boot_ns), 0);
        assert_eq!(offset_of!(ConnEvent, cgroup_id), 8);
        assert_eq!(offset_of!(ConnEvent, tgid), 16);
        assert_eq!(offset_of!(ConnEvent, pid), 20);
        assert_eq!(offset_of!(ConnEvent, uid), 24);
        assert_eq!(offset_of!(ConnEvent, gid), 28);
        assert_eq!(offset_of!(ConnEvent, local_addr), 32);
        assert_eq!(offset_of!(ConnEvent, remote_addr), 48);
        assert_eq!(offset_of!(ConnEvent, local_port), 64);
        assert_eq!(offset_of!(ConnEvent, remote_port), 66);
        assert_eq!(offset_of!(ConnEvent, family), 68);
        assert_eq!(offset_of!(ConnEvent, direction), 70);
        assert_eq!(offset_of!(ConnEvent, flags), 71);
        assert_eq!(offset_of!(ConnEvent, matched), 72);
        assert_eq!(offset_of!(ConnEvent, comm), 80);
        assert_eq!(size_of::<ConnEvent>(), 96);
    }

    #[test]
    fn small_types_layout() {
        assert_eq!(size_of::<MatchInfo>(), 8);
        assert_eq!(offset_of!(MatchInfo, relay_feeds), 4);
        assert_eq!(size_of::<KernelOffsets>(), 36);
        assert_eq!(offset_of!(KernelOffsets, sk_protocol), 28);
        assert_eq!(offset_of!(KernelOffsets, inet_sport), 32);
        assert_eq!(size_of::<OrPortKey>(), 20);
        assert_eq!(offset_of!(OrPortKey, port), 16);
        assert_eq!(
            OrPortKey::v4([1, 2, 3, 4], 9001).addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 1, 2, 3, 4]
        );
    }

    #[test]
    fn block_rule_layout_has_no_hidden_padding() {
        assert_eq!(size_of::<BlockMatch>(), 32);
        assert_eq!(offset_of!(BlockMatch, cgroup_level), 4);
        assert_eq!(offset_of!(BlockMatch, cgroup_id), 8);
        assert_eq!(offset_of!(BlockMatch, comm), 16);
        assert_eq!(offset_of!(BlockRule, relay_feeds), 4);
        assert_eq!(offset_of!(BlockRule, direction), 8);
        assert_eq!(offset_of!(BlockRule, except_count), 9);
        assert_eq!(offset_of!(BlockRule, _pad), 10);
        assert_eq!(offset_of!(BlockRule, scope), 16);
        assert_eq!(offset_of!(BlockRule, except), 48);
        assert_eq!(size_of::<BlockRule>(), 48 + 32 * block::MAX_EXCEPT);
    }

    #[test]
    fn exec_types_layout() {
        assert_eq!(offset_of!(ExecEvent, tgid), 16);
        assert_eq!(offset_of!(ExecEvent, ppid), 32);
        assert_eq!(offset_of!(ExecEvent, env_len), 36);
        assert_eq!(offset_of!(ExecEvent, reasons), 40);
        assert_eq!(offset_of!(ExecEvent, flags), 41);
        assert_eq!(offset_of!(ExecEvent, comm), 48);
        assert_eq!(size_of::<ExecEvent>(), 64);
        assert_eq!(size_of::<ExecOffsets>(), 24);
    }

    #[test]
    fn dns_types_layout() {
        assert_eq!(size_of::<DnsProc>(), 40);
        assert_eq!(offset_of!(DnsProc, comm), 24);
        assert_eq!(offset_of!(DnsEvent, cookie), 16);
        assert_eq!(offset_of!(DnsEvent, tgid), 24);
        assert_eq!(offset_of!(DnsEvent, server_addr), 40);
        assert_eq!(offset_of!(DnsEvent, server_port), 56);
        assert_eq!(offset_of!(DnsEvent, local_port), 58);
        assert_eq!(offset_of!(DnsEvent, family), 60);
        assert_eq!(offset_of!(DnsEvent, transport), 62);
        assert_eq!(offset_of!(DnsEvent, flags), 63);
        assert_eq!(offset_of!(DnsEvent, qtype), 64);
        assert_eq!(offset_of!(DnsEvent, qname_len), 66);
        assert_eq!(offset_of!(DnsEvent, comm), 72);
        assert_eq!(offset_of!(DnsEvent, qname), 88);
        assert_eq!(size_of::<DnsEvent>(), 88 + dns::NAME_BUF);
    }

    #[test]
    fn dns_hashes_fold_case_and_count_labels() {
        let onion = dns::label_hash(b"onion");
        assert_eq!(onion, dns::label_hash(b"ONION"));
        assert_ne!(onion, dns::label_hash(b"onio"));
        let a = dns::suffix_hash(&[dns::label_hash(b"torproject"), dns::label_hash(b"org")]);
        let b = dns::suffix_hash(&[dns::label_hash(b"org"), dns::label_hash(b"torproject")]);
        assert_ne!(a, b, "order matters");
        assert_ne!(dns::suffix_hash(&[onion]), onion);
        // The kernel's unrolled form for two labels.
        let (l1, l0) = (dns::label_hash(b"torproject"), dns::label_hash(b"org"));
        assert_eq!(a, dns::combine(dns::combine(dns::OFFSET ^ 2, l1), l0));
    }

    #[test]
    fn env_pattern_is_nul_then_prefix() {
        let (p, m) = exec::env_pattern(b"TOR_PT_").unwrap();
        assert_eq!(p, u64::from_be_bytes(*b"\0TOR_PT_"));
        assert_eq!(m, u64::MAX);
        let (p, m) = exec::env_pattern(b"AB").unwrap();
        assert_eq!((p, m), (0x4142, 0xff_ffff));
        // The shift register after "..\0AB" holds 0x??..??004142.
        let reg = u64::from_be_bytes(*b"xyz=1\0AB");
        assert_eq!(reg & m, p);
        assert!(exec::env_pattern(b"").is_none());
        assert!(exec::env_pattern(b"TOR_PT_X").is_none());
        assert!(exec::env_pattern(b"A\0").is_none());
    }

    #[test]
    fn gateway_types_layout() {
        assert_eq!(size_of::<GwIface>(), 4);
        assert_eq!(offset_of!(FlowKey, outside_addr), 16);
        assert_eq!(offset_of!(FlowKey, inside_port), 32);
        assert_eq!(offset_of!(FlowKey, family), 36);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(offset_of!(FlowStats, bytes_out), 16);
        assert_eq!(offset_of!(FlowStats, packets_in), 40);
        assert_eq!(offset_of!(FlowStats, matched), 48);
        assert_eq!(offset_of!(FlowStats, ifindex), 56);
        assert_eq!(offset_of!(FlowStats, direction), 60);
        assert_eq!(offset_of!(FlowStats, fin_inside), 64);
        assert_eq!(offset_of!(FlowStats, rst), 66);
        assert_eq!(size_of::<FlowStats>(), 72);
        assert_eq!(offset_of!(GatewayEvent, inside_addr), 8);
        assert_eq!(offset_of!(GatewayEvent, inside_port), 40);
        assert_eq!(offset_of!(GatewayEvent, family), 44);
        assert_eq!(offset_of!(GatewayEvent, direction), 46);
        assert_eq!(offset_of!(GatewayEvent, ifindex), 48);
        assert_eq!(offset_of!(GatewayEvent, flags), 52);
        assert_eq!(offset_of!(GatewayEvent, matched), 56);
        assert_eq!(size_of::<GatewayEvent>(), 64);
    }

    #[test]
    fn feed_bits_fit_the_mask() {
        assert_eq!(MAX_FEEDS, u32::BITS as usize);
    }
}
