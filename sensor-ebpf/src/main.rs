//! torsensor kernel programs.
//!
//! Why BTF tracepoints (`tp_btf`): tracepoints are a stable interface and
//! the only tracing hook this project can rely on (kprobes and fentry are
//! often unavailable; see the README), and the BTF flavour calls the program
//! directly with the tracepoint's arguments, without formatting a trace
//! record first: the cheapest hook there is. No syscall tracepoint is used:
//! enabling any of them sends every syscall of every task through the slow
//! path, a tax on the whole machine. Everything here is deliberately small;
//! decisions live in the daemon.
//!
//! Outbound (`connect`):
//!   `inet_sock_set_state` CLOSE -> SYN_SENT runs inside `connect()` in the
//!   caller's context: match the peer, and for a hit remember the process in
//!   `PENDING_OUT` keyed by the socket address. The local port is still 0 there,
//!   so the event is sent at the socket's next transition (SYN_SENT ->
//!   ESTABLISHED, or -> CLOSE when the attempt fails), which has the real port.
//! Inbound (`accept`):
//!   SYN_RECV -> ESTABLISHED runs in softirq context (the current task is
//!   whoever was running), so it only records a hit in `PENDING_IN` keyed by
//!   the new socket. The first time a process then uses that socket (a read
//!   or write: `sock_recv_length` / `sock_send_length`; a shutdown or close:
//!   ESTABLISHED -> FIN_WAIT1, CLOSE_WAIT -> LAST_ACK) runs in that process,
//!   which is the one that accepted it, or the child it handed it to: the
//!   event is sent with it. This needs nothing from `accept()` itself, so it
//!   works whether or not the caller asked for the peer address. A pending
//!   socket that reaches CLOSE first is sent without a process, and the
//!   daemon sends the ones nobody touches after a short wait.
//!
//! Which hook reports "a process used the socket" depends on the kernel; the
//! daemon loads one family at start-up (see `InboundHooks` in the daemon's
//! `kernel` module), best first:
//!   - `sock_send_length` / `sock_recv_length` (BTF tracepoints, Linux 6.4+);
//!   - `fentry` on `tcp_sendmsg` / `tcp_recvmsg` (BPF trampolines);
//!   - `kprobe` on the same two functions;
//!   - `tcp_rcv_space_adjust` (BTF tracepoint, every kernel with BTF), which
//!     runs in the reading task after it copied data: reads only;
//!   - none: shutdown and close (above) still name the process.
//!
//! All of them call `attribute`, which only needs the socket's address.
#![no_std]
#![no_main]
// Atomic add on a map value (BPF_ATOMIC): `core::sync::atomic` has no
// read-modify-write for the bpf target, the intrinsic does. This crate is
// built with a pinned nightly anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext, Global,
    bindings::__sk_buff,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_user_buf,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_current_task,
            bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_set_retval,
            bpf_skb_ancestor_cgroup_id, bpf_skb_cgroup_id, bpf_skb_load_bytes,
        },
    },
    macros::{btf_tracepoint, cgroup_skb, cgroup_sock_addr, classifier, fentry, kprobe, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        BtfTracePointContext, FEntryContext, ProbeContext, SkBuffContext, SockAddrContext,
        TcContext,
    },
};
use aya_log_ebpf::warn;
use sensor_common::{
    AF_INET, AF_INET6, BlockMatch, BlockRule, COMM_LEN, ConnEvent, DIR_EGRESS, DIR_INGRESS,
    DnsEvent, DnsProc, ExecEvent, ExecOffsets, FLAG_AUDIT, FLAG_BLOCKED, FLAG_CONNECT_FAILED,
    FLAG_LISTEN, FLAG_NO_PROCESS, FLAG_V4_MAPPED, FlowKey, FlowStats, GatewayEvent, GwIface,
    KernelOffsets, MatchInfo, OrPortKey, block, counter, dns, exec, gateway, pending, prefilter,
};

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// 1: send every connection, matched or not (debugging, benchmarks).
#[unsafe(no_mangle)]
static AUDIT_ALL: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static KOFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    sk_protocol: 0,
    inet_sport: 0,
});

// The Tor sets, twice: the daemon rewrites the inactive copy, then flips
// `ACTIVE_SET`, so a refresh takes effect all at once and an address listed
// before and after it is never missing (see `kernel/maps.rs` in the daemon).
// Sizes are set by the daemon at load time.
/// Listed IPv4 prefixes (set 0).
#[map]
static TOR_V4_0: LpmTrie<[u8; 4], MatchInfo> = LpmTrie::with_max_entries(1, 0);
/// Listed IPv6 prefixes (set 0).
#[map]
static TOR_V6_0: LpmTrie<[u8; 16], MatchInfo> = LpmTrie::with_max_entries(1, 0);
/// Relay OR address + ORPort -> relay feed bitmask (set 0).
#[map]
static OR_PORTS_0: HashMap<OrPortKey, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);
#[map]
static TOR_V4_1: LpmTrie<[u8; 4], MatchInfo> = LpmTrie::with_max_entries(1, 0);
#[map]
static TOR_V6_1: LpmTrie<[u8; 16], MatchInfo> = LpmTrie::with_max_entries(1, 0);
#[map]
static OR_PORTS_1: HashMap<OrPortKey, u32> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);
/// Pre-filter bitmap (see `sensor_common::prefilter`): one bit per IPv4 /16
/// and per folded IPv6 /32 that may hold a listed address. Most peers are
/// nowhere near a Tor address, and one array read rules them out before
/// the trie walk. One copy: the daemon keeps it a superset of both sets
/// around a flip.
#[map]
static PREFILTER: Array<u64> = Array::with_max_entries(prefilter::WORDS, 0);

/// Whether bit `index` of the pre-filter is set.
#[inline(always)]
fn may_be_listed(index: usize) -> bool {
    PREFILTER
        .get((index / 64) as u32)
        .is_some_and(|w| *w & (1u64 << (index % 64)) != 0)
}

/// Which set is in use (0 or 1), written only by the daemon.
#[map]
static ACTIVE_SET: Array<u32> = Array::with_max_entries(1, 0);

/// `BPF_F_NO_PREALLOC`: allocate hash entries on insert, not all up front.
const BPF_F_NO_PREALLOC: u32 = 1;

/// Hits (and, in audit mode, every connection) for the daemon.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
// The pending maps are plain (preallocated) hashes, not LRU ones: an LRU map
// would make room by silently evicting a hit, where a full plain map fails
// the insert, which is counted (`PENDING_FULL`). Every entry leaves: taken by
// a program at the socket's next step, or by the daemon's sweep.
/// Outbound hits waiting for their local port, keyed by `struct sock *`.
#[map]
static PENDING_OUT: HashMap<u64, ConnEvent> = HashMap::with_max_entries(16384, 0);
/// Inbound hits waiting for a process to use the socket, keyed by
/// `struct sock *`.
#[map]
static PENDING_IN: HashMap<u64, ConnEvent> = HashMap::with_max_entries(16384, 0);

/// Fast path for the pending maps (see `sensor_common::pending`): while a
/// map's kernel and sync slots are equal, nothing is pending in it and the
/// programs skip the hash lookup, which is the normal case.
#[map]
static PENDING_COUNT: Array<u64> = Array::with_max_entries(pending::COUNT, 0);

/// Atomically adds `delta` (two's complement for a decrement) to a slot.
#[inline(always)]
fn pending_add(slot: u32, delta: u64) {
    if let Some(p) = PENDING_COUNT.get_ptr_mut(slot) {
        // SAFETY: a valid, aligned map value; BPF_ATOMIC add.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                p, delta,
            )
        };
    }
}

#[inline(always)]
fn pending_slot(slot: u32) -> u64 {
    PENDING_COUNT
        .get(slot)
        .map(|v| unsafe { core::ptr::read_volatile(v) })
        .unwrap_or(0)
}

/// Whether the map with these slots may hold an entry. The sync slot is
/// read first (volatile reads keep their order): see
/// `sensor_common::pending` for why that order makes "equal" safe.
#[inline(always)]
fn may_be_pending(kernel: u32, sync: u32) -> bool {
    let synced = pending_slot(sync);
    pending_slot(kernel) != synced
}

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;
const TCP_LISTEN: i32 = 10;

/// Reads a `T` at `sk + offset` (a field of `struct sock`).
///
/// A direct load, not `bpf_probe_read_kernel`: the tracepoint's `sk` is a
/// BTF-typed pointer, and `offset` comes from `KOFFSETS` in the frozen,
/// read-only `.rodata` map, so the verifier knows it as a constant, checks
/// the access against the kernel's own `struct sock`, and the JIT makes the
/// load fault-safe. No helper call on the hot path.
#[inline(always)]
fn sk_field<T: Copy>(sk: u64, offset: u32) -> T {
    unsafe { core::ptr::read_volatile((sk + offset as u64) as *const T) }
}

/// A 16-byte address field, as two 8-byte loads (the widest the verifier
/// accepts from kernel memory).
#[inline(always)]
fn sk_field_v6(sk: u64, offset: u32) -> [u8; 16] {
    let lo: u64 = sk_field(sk, offset);
    let hi: u64 = sk_field(sk, offset + 8);
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo.to_ne_bytes());
    out[8..].copy_from_slice(&hi.to_ne_bytes());
    out
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer can race with this one.
        unsafe { *slot += 1 };
    }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn sock_state(ctx: BtfTracePointContext) -> u32 {
    // inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)
    let sk: u64 = ctx.arg(0);
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => on_connect(sk),
        (TCP_SYN_SENT, _) => on_connect_done(&ctx, sk, new),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => on_inbound(&ctx, sk),
        // listen(): rare; see "Local signs of Tor" below.
        (TCP_CLOSE, TCP_LISTEN) => on_listen(&ctx, sk),
        // A shutdown or close: only ever in the calling process.
        (TCP_ESTABLISHED, TCP_FIN_WAIT1) | (TCP_CLOSE_WAIT, TCP_LAST_ACK) => {
            attribute(ctx.as_ptr(), sk, true)
        }
        // An abort or a reset, possibly in softirq context: the socket is
        // gone before any process used it.
        (_, TCP_CLOSE) => attribute(ctx.as_ptr(), sk, false),
        _ => {}
    }
    0
}

/// Not part of the sensor: an empty program on the same tracepoint, which
/// `cargo xtask bench` attaches alone (`torsensor bench-floor`) to measure
/// what the hook itself costs, the floor under `sock_state`'s overhead.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn hook_floor(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// Not part of the sensor either: an empty program on the raw syscall-entry
/// tracepoint, which the bench adds to `hook_floor` to measure what the last
/// resort for inbound attribution (a syscall tracepoint) would cost before
/// doing anything.
#[btf_tracepoint(function = "sys_enter")]
pub fn syscall_floor(_ctx: BtfTracePointContext) -> u32 {
    0
}

/// `sock_send_length(struct sock *sk, int ret, int flags)` (Linux 6.4+):
/// every socket write, in the writing process.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send(ctx: BtfTracePointContext) -> u32 {
    attribute(ctx.as_ptr(), ctx.arg(0), true);
    0
}

/// `sock_recv_length(struct sock *sk, int ret, int flags)` (Linux 6.4+):
/// every socket read, in the reading process.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv(ctx: BtfTracePointContext) -> u32 {
    attribute(ctx.as_ptr(), ctx.arg(0), true);
    0
}

/// `tcp_sendmsg(struct sock *sk, ...)`: every TCP write (sendmsg, write,
/// io_uring), in the writing process; `sk` is the first argument on every
/// kernel since 4.x.
#[fentry(function = "tcp_sendmsg")]
pub fn send_fentry(ctx: FEntryContext) -> u32 {
    attribute(ctx.as_ptr(), ctx.arg(0), true);
    0
}

/// `tcp_recvmsg(struct sock *sk, ...)`: every TCP read, in the reading
/// process.
#[fentry(function = "tcp_recvmsg")]
pub fn recv_fentry(ctx: FEntryContext) -> u32 {
    attribute(ctx.as_ptr(), ctx.arg(0), true);
    0
}

/// The kprobe twin of `send_fentry` (the daemon attaches it to
/// `tcp_sendmsg`). Only the pointer's value is used, as a map key.
#[kprobe]
pub fn send_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        attribute(ctx.as_ptr(), sk, true);
    }
    0
}

/// The kprobe twin of `recv_fentry` (attached to `tcp_recvmsg`).
#[kprobe]
pub fn recv_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        attribute(ctx.as_ptr(), sk, true);
    }
    0
}

/// `tcp_rcv_space_adjust(struct sock *sk)`: called by `tcp_recvmsg` after it
/// copied data to the reader, so it runs in the reading process. On every
/// kernel with BTF; it sees reads only.
#[btf_tracepoint(function = "tcp_rcv_space_adjust")]
pub fn rcv_space(ctx: BtfTracePointContext) -> u32 {
    attribute(ctx.as_ptr(), ctx.arg(0), true);
    0
}

/// One field of `KOFFSETS`: a single load (`Global::load` would read the
/// whole struct, eight loads, for each use).
macro_rules! koff {
    ($field:ident) => {
        // SAFETY: `Global` is `repr(transparent)` over the value, which is
        // always initialised; a volatile read of one of its fields.
        unsafe {
            let offsets = (&raw const KOFFSETS).cast::<KernelOffsets>();
            core::ptr::read_volatile(&raw const (*offsets).$field)
        }
    };
}

/// Whether `sk` is a TCP socket (the state tracepoint also fires for SCTP).
#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    sk_field::<u16>(sk, koff!(sk_protocol)) == IPPROTO_TCP
}

/// The peer of a socket: all that matching needs. Read first, so that a
/// connection that is not reported (nearly all of them) costs a few loads;
/// the rest of the event is only filled in for a hit.
struct Peer {
    family: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    addr: [u8; 16],
    port: u16,
    /// The IPv4 address to match: the peer's, or the one inside a
    /// `::ffff:a.b.c.d` peer.
    v4: Option<[u8; 4]>,
}

impl Peer {
    /// An IPv4-mapped IPv6 peer, matched as IPv4.
    #[inline(always)]
    fn mapped(&self) -> bool {
        self.family == AF_INET6 && self.v4.is_some()
    }

    /// Its bit in the pre-filter.
    #[inline(always)]
    fn prefilter_index(&self) -> usize {
        match &self.v4 {
            Some(a) => prefilter::v4(a),
            None => prefilter::v6(&self.addr),
        }
    }
}

#[inline(always)]
fn read_peer(sk: u64) -> Option<Peer> {
    let family: u16 = sk_field(sk, koff!(skc_family));
    let port = u16::from_be(sk_field(sk, koff!(skc_dport)));
    if family == AF_INET {
        let d: u32 = sk_field(sk, koff!(skc_daddr));
        let v4 = d.to_ne_bytes();
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&v4);
        Some(Peer {
            family,
            addr,
            port,
            v4: Some(v4),
        })
    } else if family == AF_INET6 {
        let a = sk_field_v6(sk, koff!(skc_v6_daddr));
        let mapped = a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff;
        Some(Peer {
            family,
            addr: a,
            port,
            v4: mapped.then_some([a[12], a[13], a[14], a[15]]),
        })
    } else {
        None
    }
}

/// The hot part of a new connection: counts it and returns its peer if the
/// rest must look further (the pre-filter lets it through, or audit mode).
/// For an unlisted peer this is the whole cost.
#[inline(always)]
fn screen(sk: u64, seen: u32) -> Option<Peer> {
    if !is_tcp(sk) {
        return None;
    }
    count(seen);
    let peer = read_peer(sk)?;
    if may_be_listed(peer.prefilter_index()) || AUDIT_ALL.load() != 0 {
        Some(peer)
    } else {
        None
    }
}

/// Fills the local address and port from the socket.
#[inline(always)]
fn read_local(sk: u64, ev: &mut ConnEvent) {
    ev.local_port = sk_field(sk, koff!(skc_num));
    if ev.family == AF_INET {
        let s: u32 = sk_field(sk, koff!(skc_rcv_saddr));
        ev.local_addr[..4].copy_from_slice(&s.to_ne_bytes());
    } else {
        ev.local_addr = sk_field_v6(sk, koff!(skc_v6_rcv_saddr));
    }
}

/// Matches the peer against the active set (past the pre-filter). A
/// `::ffff:a.b.c.d` peer is matched as IPv4. Exit entries match in both
/// directions on any port; a relay's OR address only matches outbound on
/// one of its ORPorts.
#[inline(always)]
fn lookup(peer: &Peer, direction: u8) -> Option<MatchInfo> {
    let set = ACTIVE_SET.get(0).copied().unwrap_or(0);
    if set == 0 {
        match_in(&TOR_V4_0, &TOR_V6_0, &OR_PORTS_0, peer, direction)
    } else {
        match_in(&TOR_V4_1, &TOR_V6_1, &OR_PORTS_1, peer, direction)
    }
}

#[inline(always)]
fn match_in(
    v4: &LpmTrie<[u8; 4], MatchInfo>,
    v6: &LpmTrie<[u8; 16], MatchInfo>,
    or_ports: &HashMap<OrPortKey, u32>,
    peer: &Peer,
    direction: u8,
) -> Option<MatchInfo> {
    let (listed, key) = match peer.v4 {
        Some(a) => (v4.get(Key::new(32, a)), OrPortKey::v4(a, peer.port)),
        None => (
            v6.get(Key::new(128, peer.addr)),
            OrPortKey::v6(peer.addr, peer.port),
        ),
    };
    let listed = *listed?;
    let mut hit = MatchInfo {
        exit_feeds: listed.exit_feeds,
        relay_feeds: 0,
    };
    if direction == DIR_EGRESS && listed.relay_feeds != 0 {
        match unsafe { or_ports.get(key) } {
            Some(feeds) => hit.relay_feeds = *feeds,
            None if hit.exit_feeds == 0 => count(counter::RELAY_OTHER_PORT),
            None => {}
        }
    }
    if hit.exit_feeds == 0 && hit.relay_feeds == 0 {
        None
    } else {
        Some(hit)
    }
}

/// Records the current task (the caller of connect/accept) in `ev`.
#[inline(always)]
fn fill_process(ev: &mut ConnEvent) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.pid = pid_tgid as u32;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = bpf_get_current_comm().unwrap_or([0; 16]);
}

/// Any program's context, as the raw pointer the BPF-to-BPF calls below
/// pass along (a tracepoint's arguments or a kprobe's registers): all that
/// `emit` needs of it is the pointer, for the kernel log.
struct RawCtx(*mut c_void);

impl EbpfContext for RawCtx {
    fn as_ptr(&self) -> *mut c_void {
        self.0
    }
}

/// Sends `ev` to the daemon; a full ring buffer is counted, never silent.
#[inline(always)]
fn emit(ctx: &RawCtx, ev: &ConnEvent) {
    match EVENTS.reserve::<ConnEvent>(0) {
        Some(mut slot) => {
            slot.write(*ev);
            slot.submit(0);
            count(counter::EVENTS_SENT);
        }
        None => {
            count(counter::RINGBUF_FULL);
            warn!(ctx, "ring buffer full, event dropped (counted)");
        }
    }
}

/// The event of a screened connection if it is to be reported (a feed
/// match, or audit mode), stamped with direction and time.
#[inline(always)]
fn report(sk: u64, peer: &Peer, hit: u32, direction: u8) -> Option<ConnEvent> {
    let mut ev = ConnEvent::ZERO;
    match lookup(peer, direction) {
        Some(m) => {
            ev.matched = m;
            if peer.mapped() {
                ev.flags |= FLAG_V4_MAPPED;
            }
            count(hit);
        }
        None if AUDIT_ALL.load() != 0 => ev.flags |= FLAG_AUDIT,
        None => return None,
    }
    ev.direction = direction;
    ev.family = peer.family;
    ev.remote_addr = peer.addr;
    ev.remote_port = peer.port;
    read_local(sk, &mut ev);
    ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    Some(ev)
}

/// Keeps `ev` in a pending map until the socket's next step; counted in
/// `slot` so that the fast path knows something is pending.
#[inline(always)]
fn hold(map: &HashMap<u64, ConnEvent>, slot: u32, sk: u64, ev: &ConnEvent) {
    if map.insert(sk, *ev, 0).is_err() {
        count(counter::PENDING_FULL);
        return;
    }
    pending_add(slot, 1);
}

/// Takes the pending entry for `sk` out of `map`, if there is one and this
/// caller is the one that removed it (the daemon's sweep may race): the
/// event is then this caller's to send, exactly once.
#[inline(always)]
fn take(map: &HashMap<u64, ConnEvent>, slot: u32, sk: u64) -> Option<ConnEvent> {
    let ev = unsafe { *map.get_ptr(sk)? };
    map.remove(sk).ok()?;
    pending_add(slot, u64::MAX); // -1
    Some(ev)
}

// The hot paths below stay inline and short; whatever only runs for a
// possible hit or a pending socket is a separate BPF function
// (`inline(never)`, a BPF-to-BPF call), so that the code every state change
// runs is a few contiguous cache lines, not spread through the whole
// program. `ctx` crosses as the raw context pointer.

#[inline(always)]
fn on_connect(sk: u64) {
    if let Some(peer) = screen(sk, counter::CONNECT_SEEN) {
        connect_slow(sk, &peer);
    }
}

#[inline(never)]
fn connect_slow(sk: u64, peer: &Peer) -> u32 {
    if let Some(mut ev) = report(sk, peer, counter::CONNECT_HIT, DIR_EGRESS) {
        fill_process(&mut ev);
        hold(&PENDING_OUT, pending::OUT_KERNEL, sk, &ev);
    }
    0
}

#[inline(always)]
fn on_connect_done(ctx: &BtfTracePointContext, sk: u64, new_state: i32) {
    if may_be_pending(pending::OUT_KERNEL, pending::OUT_SYNC) {
        connect_done_slow(ctx.as_ptr(), sk, new_state);
    }
}

#[inline(never)]
fn connect_done_slow(ctx: *mut c_void, sk: u64, new_state: i32) -> u32 {
    let Some(mut ev) = take(&PENDING_OUT, pending::OUT_KERNEL, sk) else {
        return 0;
    };
    // Now the local address and port are final.
    read_local(sk, &mut ev);
    if new_state != TCP_ESTABLISHED {
        ev.flags |= FLAG_CONNECT_FAILED;
        if ev.local_port == 0 {
            // A failed attempt gave its port back (`inet_put_port` zeroes
            // `skc_num`) just before this transition; `inet_sport` keeps
            // it. It lies past `struct sock`, beyond what the BTF-typed
            // pointer may load directly, hence the helper (rare path).
            let at = (sk + koff!(inet_sport) as u64) as *const u16;
            // SAFETY: a read of kernel memory through the checked helper.
            if let Ok(port) = unsafe { bpf_probe_read_kernel(at) } {
                ev.local_port = u16::from_be(port);
            }
        }
    }
    emit(&RawCtx(ctx), &ev);
    0
}

#[inline(always)]
fn on_inbound(ctx: &BtfTracePointContext, sk: u64) {
    if let Some(peer) = screen(sk, counter::INBOUND_SEEN) {
        inbound_slow(ctx.as_ptr(), sk, &peer);
    }
}

#[inline(never)]
fn inbound_slow(ctx: *mut c_void, sk: u64, peer: &Peer) -> u32 {
    let Some(mut ev) = report(sk, peer, counter::INBOUND_HIT, DIR_INGRESS) else {
        return 0;
    };
    if ev.flags & FLAG_AUDIT != 0 {
        // Audit mode is for volume, not attribution: sent at once.
        ev.flags |= FLAG_NO_PROCESS;
        emit(&RawCtx(ctx), &ev);
        return 0;
    }
    hold(&PENDING_IN, pending::IN_KERNEL, sk, &ev);
    0
}

/// A process (`in_process`) or the stack is using `sk`: if it is an inbound
/// hit waiting for its process, send it now.
#[inline(always)]
fn attribute(ctx: *mut c_void, sk: u64, in_process: bool) {
    if may_be_pending(pending::IN_KERNEL, pending::IN_SYNC) {
        attribute_slow(ctx, sk, in_process);
    }
}

#[inline(never)]
fn attribute_slow(ctx: *mut c_void, sk: u64, in_process: bool) -> u32 {
    let Some(mut ev) = take(&PENDING_IN, pending::IN_KERNEL, sk) else {
        return 0;
    };
    if in_process {
        fill_process(&mut ev);
        count(counter::INBOUND_ATTRIBUTED);
    } else {
        ev.flags |= FLAG_NO_PROCESS;
        count(counter::INBOUND_UNATTRIBUTED);
    }
    emit(&RawCtx(ctx), &ev);
    0
}

// ---------------------------------------------------------------------------
// Opt-in blocking (off unless the daemon attaches these programs).
//
// The daemon compiles the rules with `action = "block"` into `BLOCK_RULES`
// (`sensor_common::BlockRule`) and the mode into `BLOCK_MODE`; the programs
// match the peer against the same gapless sets as the tracepoints, so a
// feed refresh never opens a gap in blocking either. Outbound: cgroup
// `connect4` / `connect6`, which run inside `connect()` before the SYN: a
// refused connect fails in the caller with `EPERM` (or the errno in
// `BLOCK_MODE`). Inbound: `cgroup_skb/ingress` drops the SYN of a new
// connection from a listed exit, so the connection never exists and the
// application never sees it (not even in `accept()`); every other packet
// (established flows, outbound connections' replies) goes through after a
// look at the TCP flags. Attached with `bpf_link` in "multi" mode at the
// cgroup v2 root (or the configured cgroup), so other programs there
// (systemd's IP firewall, Cilium) keep running.

/// `BLOCK_MODE[block::MODE]` and `BLOCK_MODE[block::ERRNO]`.
#[map]
static BLOCK_MODE: Array<u32> = Array::with_max_entries(block::MODE_SLOTS, 0);
/// The compiled block rules, in order; a `direction` of 0 ends the list.
#[map]
static BLOCK_RULES: Array<BlockRule> = Array::with_max_entries(block::MAX_RULES, 0);

/// Inbound SYNs already reported (peer, ports): a client retransmits its
/// SYN several times before it gives up; each drop is counted, the first
/// is reported. LRU: forgetting an entry only means one more report.
#[map]
static BLOCK_REPORTED: LruHashMap<OrPortKey, u16> = LruHashMap::with_max_entries(4096, 0);

const SOCK_STREAM: u32 = 1;
const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86dd;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// Who a connection belongs to, as a `BlockMatch` is checked against it.
trait Owner {
    fn uid(&self) -> u32;
    /// The cgroup id of the owner's ancestor at `level`.
    fn ancestor(&self, level: u32) -> u64;
    /// The command name, all zero when there is no task.
    fn comm(&self) -> [u8; 16];
}

/// The task calling `connect()`.
struct Caller {
    uid: u32,
    comm: [u8; 16],
}

impl Owner for Caller {
    #[inline(always)]
    fn uid(&self) -> u32 {
        self.uid
    }
    #[inline(always)]
    fn ancestor(&self, level: u32) -> u64 {
        unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) }
    }
    #[inline(always)]
    fn comm(&self) -> [u8; 16] {
        self.comm
    }
}

/// The socket a packet is delivered to (the listener, for a SYN).
struct Receiver {
    skb: *mut __sk_buff,
    uid: u32,
}

impl Owner for Receiver {
    #[inline(always)]
    fn uid(&self) -> u32 {
        self.uid
    }
    #[inline(always)]
    fn ancestor(&self, level: u32) -> u64 {
        unsafe { bpf_skb_ancestor_cgroup_id(self.skb, level as i32) }
    }
    #[inline(always)]
    fn comm(&self) -> [u8; 16] {
        [0; 16]
    }
}

#[inline(always)]
fn block_match(m: &BlockMatch, who: &impl Owner) -> bool {
    if m.uid != block::ANY_UID && m.uid != who.uid() {
        return false;
    }
    if m.cgroup_id != 0 && who.ancestor(m.cgroup_level) != m.cgroup_id {
        return false;
    }
    if m.comm[0] != 0 && m.comm != who.comm() {
        return false;
    }
    true
}

enum Verdict {
    /// No block rule holds.
    Pass,
    /// A block rule holds, and one of its exceptions.
    Excepted,
    Block,
}

/// The first block rule for `direction` whose feeds and scope hold decides.
#[inline(always)]
fn verdict(direction: u8, hit: &MatchInfo, who: &impl Owner) -> Verdict {
    for i in 0..block::MAX_RULES {
        let Some(r) = BLOCK_RULES.get(i) else {
            break;
        };
        if r.direction == 0 {
            break;
        }
        if r.direction != direction
            || (r.exit_feeds & hit.exit_feeds == 0 && r.relay_feeds & hit.relay_feeds == 0)
            || !block_match(&r.scope, who)
        {
            continue;
        }
        for j in 0..block::MAX_EXCEPT {
            if j >= r.except_count as usize {
                break;
            }
            if block_match(&r.except[j], who) {
                return Verdict::Excepted;
            }
        }
        return Verdict::Block;
    }
    Verdict::Pass
}

#[inline(always)]
fn block_mode() -> u32 {
    BLOCK_MODE.get(block::MODE).copied().unwrap_or(block::OFF)
}

/// Whether to refuse, per the verdict and the mode; counts it.
#[inline(always)]
fn enforce(v: Verdict, blocked: u32) -> bool {
    match v {
        Verdict::Pass => false,
        Verdict::Excepted => {
            count(counter::BLOCK_EXCEPTED);
            false
        }
        Verdict::Block if block_mode() == block::ENFORCE => {
            count(blocked);
            true
        }
        Verdict::Block => {
            count(counter::WOULD_BLOCK);
            false
        }
    }
}

/// `connect()` to an IPv4 peer. Returns 1 to let it go on, 0 to refuse.
#[cgroup_sock_addr(connect4)]
pub fn block_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context is the kernel's `bpf_sock_addr`; 4-byte loads.
    let (kind, ip, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.type_, sa.user_ip4, sa.user_port)
    };
    if kind != SOCK_STREAM || block_mode() == block::OFF {
        return 1;
    }
    let v4 = ip.to_ne_bytes();
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&v4);
    let peer = Peer {
        family: AF_INET,
        addr,
        port: u16::from_be(port as u16),
        v4: Some(v4),
    };
    connect_verdict(ctx.as_ptr(), &peer)
}

/// `connect()` to an IPv6 (or IPv4-mapped) peer.
#[cgroup_sock_addr(connect6)]
pub fn block_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above, each word a 4-byte load.
    let (kind, words, port) = unsafe {
        let sa = &*ctx.sock_addr;
        (
            sa.type_,
            [
                sa.user_ip6[0],
                sa.user_ip6[1],
                sa.user_ip6[2],
                sa.user_ip6[3],
            ],
            sa.user_port,
        )
    };
    if kind != SOCK_STREAM || block_mode() == block::OFF {
        return 1;
    }
    let mut a = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        a[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let mapped = a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff;
    let peer = Peer {
        family: AF_INET6,
        addr: a,
        port: u16::from_be(port as u16),
        v4: mapped.then_some([a[12], a[13], a[14], a[15]]),
    };
    connect_verdict(ctx.as_ptr(), &peer)
}

#[inline(never)]
fn connect_verdict(ctx: *mut c_void, peer: &Peer) -> i32 {
    if !may_be_listed(peer.prefilter_index()) {
        return 1;
    }
    let Some(hit) = lookup(peer, DIR_EGRESS) else {
        return 1;
    };
    let uid_gid = bpf_get_current_uid_gid();
    let who = Caller {
        uid: uid_gid as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if !enforce(verdict(DIR_EGRESS, &hit, &who), counter::CONNECT_BLOCKED) {
        return 1;
    }
    let mut ev = ConnEvent::ZERO;
    ev.direction = DIR_EGRESS;
    ev.flags = FLAG_BLOCKED;
    if peer.mapped() {
        ev.flags |= FLAG_V4_MAPPED;
    }
    ev.family = peer.family;
    ev.remote_addr = peer.addr;
    ev.remote_port = peer.port;
    ev.matched = hit;
    ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    fill_process(&mut ev);
    emit(&RawCtx(ctx), &ev);
    let errno = BLOCK_MODE.get(block::ERRNO).copied().unwrap_or(0);
    if errno != 0 {
        // SAFETY: the helper sets the syscall's return value for a
        // program that returns 0 (cgroup hooks, Linux 5.18+).
        unsafe { bpf_set_retval(-(errno as i32)) };
    }
    0
}

/// Every packet delivered to a socket in scope: drops the SYN of a new
/// inbound connection whose peer a block rule refuses. 1 lets it through.
#[cgroup_skb(ingress)]
pub fn block_ingress(ctx: SkBuffContext) -> i32 {
    if block_mode() == block::OFF {
        return 1;
    }
    let proto = u16::from_be(ctx.skb.protocol() as u16) as u32;
    if not_a_syn(ctx.skb.skb, proto) {
        return 1;
    }
    match syn_peer(&ctx) {
        Some((peer, dport, local)) => ingress_verdict(&ctx, &peer, dport, &local),
        None => 1,
    }
}

/// The fast path of every packet: whether it is certainly not a TCP SYN
/// without ACK, read straight from the packet's linear data (no helper
/// call). `false` when it cannot tell (headers beyond the linear part):
/// then `syn_peer` looks with `bpf_skb_load_bytes`.
#[inline(always)]
fn not_a_syn(skb: *mut __sk_buff, proto: u32) -> bool {
    // SAFETY: `data` / `data_end` of a cgroup_skb context are packet
    // pointers; every read below is bounds-checked against `end` first,
    // as the verifier requires.
    unsafe {
        let data = (*skb).data as usize;
        let end = (*skb).data_end as usize;
        let (l4, next) = if proto == ETH_P_IP {
            if data + 20 > end {
                return false;
            }
            let vihl = *(data as *const u8);
            (((vihl & 0x0f) as usize) * 4, *((data + 9) as *const u8))
        } else if proto == ETH_P_IPV6 {
            if data + 40 > end {
                return false;
            }
            (40, *((data + 6) as *const u8))
        } else {
            return true;
        };
        if next != IPPROTO_TCP as u8 {
            return true;
        }
        let at = data + l4 + 13;
        if at + 1 > end {
            return false;
        }
        let flags = *(at as *const u8);
        flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN
    }
}

/// The source, destination port and local address of a TCP SYN (without
/// ACK) from the network header on; `None` for any other packet. IPv6
/// extension headers are not walked (a SYN carrying them passes).
#[inline(always)]
fn syn_peer(ctx: &SkBuffContext) -> Option<(Peer, u16, [u8; 16])> {
    let proto = u16::from_be(ctx.skb.protocol() as u16) as u32;
    let (family, l4, next) = if proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0).ok()?;
        (
            AF_INET,
            ((vihl & 0x0f) as usize) * 4,
            ctx.load::<u8>(9).ok()?,
        )
    } else if proto == ETH_P_IPV6 {
        (AF_INET6, 40, ctx.load::<u8>(6).ok()?)
    } else {
        return None;
    };
    if next != IPPROTO_TCP as u8 || l4 < 20 {
        return None;
    }
    let flags: u8 = ctx.load(l4 + 13).ok()?;
    if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) != TCP_FLAG_SYN {
        return None;
    }
    let sport = u16::from_be(ctx.load::<u16>(l4).ok()?);
    let dport = u16::from_be(ctx.load::<u16>(l4 + 2).ok()?);
    let mut addr = [0u8; 16];
    let mut local = [0u8; 16];
    if family == AF_INET {
        let s: [u8; 4] = ctx.load(12).ok()?;
        let d: [u8; 4] = ctx.load(16).ok()?;
        addr[..4].copy_from_slice(&s);
        local[..4].copy_from_slice(&d);
        let peer = Peer {
            family,
            addr,
            port: sport,
            v4: Some(s),
        };
        return Some((peer, dport, local));
    }
    addr = ctx.load(8).ok()?;
    local = ctx.load(24).ok()?;
    let mapped = addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff;
    let peer = Peer {
        family,
        addr,
        port: sport,
        v4: mapped.then_some([addr[12], addr[13], addr[14], addr[15]]),
    };
    Some((peer, dport, local))
}

#[inline(never)]
fn ingress_verdict(ctx: &SkBuffContext, peer: &Peer, dport: u16, local: &[u8; 16]) -> i32 {
    if !may_be_listed(peer.prefilter_index()) {
        return 1;
    }
    let Some(hit) = lookup(peer, DIR_INGRESS) else {
        return 1;
    };
    let skb = ctx.skb.skb;
    let who = Receiver {
        skb,
        uid: ctx.skb.get_socket_uid(),
    };
    if !enforce(verdict(DIR_INGRESS, &hit, &who), counter::INBOUND_BLOCKED) {
        return 1;
    }
    // Reported once per (peer, source port, local port).
    let mut key = match peer.v4 {
        Some(a) => OrPortKey::v4(a, peer.port),
        None => OrPortKey::v6(peer.addr, peer.port),
    };
    key._pad = dport;
    if BLOCK_REPORTED.get_ptr(key).is_some() {
        return 0;
    }
    let _ = BLOCK_REPORTED.insert(key, 1, 0);
    let mut ev = ConnEvent::ZERO;
    ev.direction = DIR_INGRESS;
    ev.flags = FLAG_BLOCKED | FLAG_NO_PROCESS;
    ev.family = peer.family;
    ev.remote_addr = peer.addr;
    ev.remote_port = peer.port;
    ev.local_addr = *local;
    ev.local_port = dport;
    ev.matched = hit;
    ev.uid = who.uid;
    ev.cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
    ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    emit(&RawCtx(ctx.as_ptr()), &ev);
    0
}

// ---------------------------------------------------------------------------
// Local signs of Tor (issue 15): a Tor client or pluggable transport starts,
// a process listens on a Tor SOCKS or control port. Tor use that no list of
// the network shows. Kept apart from the connection code above.
// ---------------------------------------------------------------------------

/// Offsets in `task_struct` / `mm_struct` (from the daemon, read from BTF).
#[unsafe(no_mangle)]
static EXEC_OFFSETS: Global<ExecOffsets> = Global::new(ExecOffsets {
    task_mm: 0,
    task_real_parent: 0,
    task_tgid: 0,
    mm_env_start: 0,
    mm_env_end: 0,
    _pad: 0,
});
/// The environment prefix to look for, as the 8-byte pattern and mask of
/// `sensor_common::exec::env_pattern` (NUL, then `TOR_PT_`); a zero mask
/// turns the scan off.
#[unsafe(no_mangle)]
static ENV_PATTERN: Global<[u64; 2]> = Global::new([0, 0]);

/// Watched command names (`comm`, NUL-padded, 15 bytes at most), from the
/// daemon's `rules/tor-local.toml`. The value is unused.
#[map]
static EXEC_NAMES: HashMap<[u8; COMM_LEN], u8> = HashMap::with_max_entries(64, 0);
/// Watched listening ports (host order): Tor's SOCKS and control ports.
#[map]
static LISTEN_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);
/// Exec hits for the daemon (a ring of its own: `ExecEvent`s).
#[map]
static EXEC_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 16, 0);
/// Per-CPU scratch space for one window of an environment (plus room for
/// the loop's look-ahead, see `scan_window`).
#[map]
static ENV_SCRATCH: PerCpuArray<[u8; exec::ENV_WINDOW]> = PerCpuArray::with_max_entries(1, 0);

/// One field of `EXEC_OFFSETS`.
macro_rules! eoff {
    ($field:ident) => {
        // SAFETY: as `koff!`.
        unsafe {
            let offsets = (&raw const EXEC_OFFSETS).cast::<ExecOffsets>();
            core::ptr::read_volatile(&raw const (*offsets).$field) as u64
        }
    };
}

/// Reads a `T` at kernel address `at` (0 if it cannot be read).
#[inline(always)]
fn kread<T: Copy + Default>(at: u64) -> T {
    // SAFETY: a read of kernel memory through the checked helper.
    unsafe { bpf_probe_read_kernel(at as *const T) }.unwrap_or_default()
}

/// `sched_process_exec(struct task_struct *p, pid_t old_pid, struct
/// linux_binprm *bprm)`: runs once per successful execve, in the new
/// program (`current` is `p`, its `comm` and `mm` are the new ones).
///
/// What crosses to the daemon: only a start whose command name is watched
/// (one hash lookup) or whose environment has a `TOR_PT_*` variable. Tor
/// passes its pluggable transports their configuration in `TOR_PT_*`
/// variables, so that signal survives any renaming of the binary.
///
/// The environment scan (`scan_env`): the new program's environment lies
/// in its own stack, `mm->env_start .. env_end`; it is read into a per-CPU
/// buffer with `bpf_probe_read_user` and scanned with an 8-byte shift
/// register for "NUL, TOR_PT_" (the byte before `env_start` is the NUL that
/// ends the last argument, so the first variable counts too). Bounded, so
/// that it verifies on Linux 6.1 and costs a few microseconds at most:
/// `ENV_WINDOW` bytes from the beginning and `ENV_WINDOW` bytes from the
/// end, i.e. all of an environment up to 2 KiB, and for a larger one the
/// places where launchers put what they add (tor appends the `TOR_PT_*`
/// variables to its own environment; `env VAR=.. prog` and most shells
/// too). A larger environment's middle is not scanned: counted
/// (`EXEC_ENV_PARTIAL`), and the daemon's rule can still catch the
/// program by name. Every loop has a constant bound; the only
/// data-dependent branch in the scan leaves it at once (a match), so the
/// verifier walks each loop once and each branch it set aside ends in a
/// few instructions. (A `found |= ...` accumulator instead kept every set
/// aside branch alive through the rest of the loop: quadratic, and Linux
/// 6.1's verifier gave up with E2BIG.)
#[btf_tracepoint(function = "sched_process_exec")]
pub fn process_exec(ctx: BtfTracePointContext) -> u32 {
    count(counter::EXEC_SEEN);
    let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    // SAFETY: a lookup; the value is not used.
    let by_name = unsafe { EXEC_NAMES.get(comm) }.is_some();
    exec_slow(ctx.as_ptr(), &comm, by_name);
    0
}

#[inline(never)]
fn exec_slow(ctx: *mut c_void, comm: &[u8; COMM_LEN], by_name: bool) -> u32 {
    let pattern = ENV_PATTERN.load();
    let task = unsafe { bpf_get_current_task() };
    let mm: u64 = kread(task + eoff!(task_mm));
    let mut ev = ExecEvent::ZERO;
    if by_name {
        ev.reasons |= exec::BY_NAME;
        count(counter::EXEC_NAME_HIT);
    }
    if mm != 0 {
        let start: u64 = kread(mm + eoff!(mm_env_start));
        let end: u64 = kread(mm + eoff!(mm_env_end));
        let len = end.saturating_sub(start);
        ev.env_len = len.min(u32::MAX as u64) as u32;
        // Scanned for a name hit too: the daemon then knows both reasons
        // even if the process is gone before it reads /proc.
        if pattern[1] != 0 && start != 0 {
            match scan_env(start, len, pattern[0], pattern[1]) {
                Scan::Found(partial) => {
                    ev.reasons |= exec::BY_ENV;
                    if partial {
                        ev.flags |= exec::ENV_PARTIAL;
                    }
                    count(counter::EXEC_ENV_HIT);
                }
                Scan::NotFound(partial) => {
                    if partial {
                        count(counter::EXEC_ENV_PARTIAL);
                    }
                }
                Scan::Unreadable => {
                    count(counter::EXEC_ENV_UNREADABLE);
                }
            }
        }
    }
    if ev.reasons == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.pid = pid_tgid as u32;
    ev.uid = uid_gid as u32;
    ev.gid = (uid_gid >> 32) as u32;
    ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    ev.comm = *comm;
    let parent: u64 = kread(task + eoff!(task_real_parent));
    if parent != 0 {
        ev.ppid = kread::<u32>(parent + eoff!(task_tgid));
    }
    ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    match EXEC_EVENTS.reserve::<ExecEvent>(0) {
        Some(mut slot) => {
            slot.write(ev);
            slot.submit(0);
            count(counter::EXEC_SENT);
        }
        None => {
            count(counter::EXEC_RINGBUF_FULL);
            warn!(
                &RawCtx(ctx),
                "exec ring buffer full, event dropped (counted)"
            );
        }
    }
    0
}

enum Scan {
    /// The prefix was found; `true`: the environment's middle was not
    /// scanned.
    Found(bool),
    NotFound(bool),
    Unreadable,
}

/// Looks for the pattern in the environment at `start` (`len` bytes), in
/// its first and its last `ENV_WINDOW` bytes.
#[inline(always)]
fn scan_env(start: u64, len: u64, pattern: u64, mask: u64) -> Scan {
    const W: u64 = exec::ENV_WINDOW as u64;
    // From the NUL before the first variable.
    let base = start - 1;
    let total = len + 1;
    let first = total.min(W);
    match scan_window(base, first, pattern, mask) {
        Some(true) => return Scan::Found(total > 2 * W),
        Some(false) => {}
        None => return Scan::Unreadable,
    }
    if total <= W {
        return Scan::NotFound(false);
    }
    // The second window overlaps the first by 7 bytes, so that a match
    // across their boundary is inside it.
    let from = (W - 7).max(total - W);
    match scan_window(base + from, total - from, pattern, mask) {
        Some(true) => Scan::Found(total > 2 * W),
        Some(false) => Scan::NotFound(total > 2 * W),
        None => Scan::Unreadable,
    }
}

/// Reads `n` (at most `ENV_WINDOW`) bytes of user memory at `at` and
/// whether "NUL, prefix" occurs in them. `None`: not readable.
#[inline(never)]
fn scan_window(at: u64, n: u64, pattern: u64, mask: u64) -> Option<bool> {
    let buf = ENV_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is this program's alone while it runs.
    let buf = unsafe { &mut *buf };
    // Zero first: bytes past `n` are left from an earlier exec, and zeros
    // can never complete the pattern (its prefix has no NUL). Volatile
    // 8-byte stores: LLVM would make a plain loop a byte-wise memset call.
    let words = buf.as_mut_ptr().cast::<u64>();
    for i in 0..exec::ENV_WINDOW / 8 {
        // SAFETY: inside the buffer (ENV_WINDOW is a multiple of 8); map
        // values are 8-byte aligned.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    let n = (n as usize).min(exec::ENV_WINDOW);
    // SAFETY: a checked read of the current task's own memory.
    if unsafe { bpf_probe_read_user_buf(at as *const u8, &mut buf[..n]) }.is_err() {
        return None;
    }
    let mut reg = 0u64;
    for b in buf.iter() {
        reg = (reg << 8) | *b as u64;
        if reg & mask == pattern {
            return Some(true);
        }
    }
    Some(false)
}

/// CLOSE -> LISTEN, inside `listen()` (the caller's context): one lookup
/// of the socket's port in `LISTEN_PORTS`, only on this rare transition.
#[inline(always)]
fn on_listen(ctx: &BtfTracePointContext, sk: u64) {
    if !is_tcp(sk) {
        return;
    }
    count(counter::LISTEN_SEEN);
    // The port was bound already (`bind()`, or an autobind before the
    // state change is traced, which leaves 0 here: such a port is random,
    // never a watched one).
    let port: u16 = sk_field(sk, koff!(skc_num));
    // SAFETY: a lookup; the value is not used.
    if unsafe { LISTEN_PORTS.get(port) }.is_some() {
        listen_slow(ctx.as_ptr(), sk, port);
    }
}

#[inline(never)]
fn listen_slow(ctx: *mut c_void, sk: u64, port: u16) -> u32 {
    let mut ev = ConnEvent::ZERO;
    ev.family = sk_field(sk, koff!(skc_family));
    if ev.family != AF_INET && ev.family != AF_INET6 {
        return 0;
    }
    count(counter::LISTEN_HIT);
    read_local(sk, &mut ev);
    ev.local_port = port;
    ev.direction = DIR_INGRESS;
    ev.flags = FLAG_LISTEN;
    fill_process(&mut ev);
    ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    emit(&RawCtx(ctx), &ev);
    0
}

// ---------------------------------------------------------------------------
// DNS lookups for Tor (issue 17): queries for `.onion` names (a leak: RFC
// 7686) and for the Tor Project's and its transports' domains, sent by any
// process over UDP or TCP to a DNS port. No kprobe: two cgroup hooks on
// the cgroup v2 root, attached with bpf_link next to anything else there
// (opt-in blocking's `block_connect4/6` included).
//
// - `dns_connect4/6` and `dns_sendmsg4/6` (cgroup sock_addr) run in the
//   caller of `connect()` / `sendmsg()` to a DNS port and record the
//   socket's cookie -> process in `DNS_SOCKS` (LRU: the entry of a socket
//   long gone is what is evicted; a hit without an entry is counted and
//   sent with the socket's uid and cgroup only).
// - `dns_egress` (cgroup_skb/egress) looks at every packet leaving a
//   socket; one bitmap read rules out all but those to a DNS port. For
//   those it reads the question name (at most 255 bytes, RFC 1035) into a
//   per-CPU buffer and walks it label by label in one bounded loop,
//   hashing each label (case-folded) and keeping the last four label
//   hashes; then it looks the name's last 1..4 labels up in
//   `DNS_SUFFIXES`. Only a hit crosses to the daemon (the whole name, the
//   type, the server, the process), which confirms the exact suffix. A
//   compression pointer in a question (queries do not compress their
//   first name in practice) or a name cut short is counted
//   (`DNS_UNPARSED`), never guessed. Always returns 1: it never drops.

/// Watched suffix hashes (`sensor_common::dns::suffix_hash`); the value
/// is unused. Filled once by the daemon.
#[map]
static DNS_SUFFIXES: HashMap<u64, u8> = HashMap::with_max_entries(dns::MAX_NAMES, 0);
/// One bit per destination port that is a DNS port (53 unless configured).
#[map]
static DNS_PORTS: Array<u64> = Array::with_max_entries(dns::PORT_WORDS, 0);
/// Socket cookie -> the process that connected or sent to a DNS port.
#[map]
static DNS_SOCKS: LruHashMap<u64, DnsProc> = LruHashMap::with_max_entries(16384, 0);
/// DNS hits for the daemon: 1 MiB, about 2,900 events of backlog (a
/// flood of 75,000 watched queries a second on loopback overran a quarter
/// of that in `cargo xtask bench --dns-only`; every loss is counted).
#[map]
static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
/// Per-CPU space to build one event in (too large for the stack).
#[map]
static DNS_SCRATCH: PerCpuArray<DnsEvent> = PerCpuArray::with_max_entries(1, 0);

const IPPROTO_UDP: u8 = 17;

#[inline(always)]
fn is_dns_port(port: u16) -> bool {
    DNS_PORTS
        .get(port as u32 / 64)
        .is_some_and(|w| *w & (1u64 << (port % 64)) != 0)
}

/// Records the caller as the owner of the socket in `ctx` if `port`
/// (network order, as `user_port` holds it) is a DNS port.
#[inline(always)]
fn dns_record(ctx: &SockAddrContext, port_be: u32) -> i32 {
    if !is_dns_port(u16::from_be(port_be as u16)) {
        return 1;
    }
    // SAFETY: the helper takes the sock_addr context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let owner = DnsProc {
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        tgid: (pid_tgid >> 32) as u32,
        pid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
    };
    if DNS_SOCKS.insert(cookie, owner, 0).is_ok() {
        count(counter::DNS_SOCK_RECORDED);
    }
    1
}

#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u32 {
    // SAFETY: the kernel's `bpf_sock_addr`; a 4-byte load.
    unsafe { (*ctx.sock_addr).user_port }
}

#[cgroup_sock_addr(connect4)]
pub fn dns_connect4(ctx: SockAddrContext) -> i32 {
    dns_record(&ctx, user_port(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn dns_connect6(ctx: SockAddrContext) -> i32 {
    dns_record(&ctx, user_port(&ctx))
}

/// `sendmsg()` / `sendto()` with a destination on an unconnected UDP
/// socket (a connected one was recorded at `connect()`).
#[cgroup_sock_addr(sendmsg4)]
pub fn dns_sendmsg4(ctx: SockAddrContext) -> i32 {
    dns_record(&ctx, user_port(&ctx))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn dns_sendmsg6(ctx: SockAddrContext) -> i32 {
    dns_record(&ctx, user_port(&ctx))
}

/// Every packet leaving a socket: 1, always (never drops).
#[cgroup_skb(egress)]
pub fn dns_egress(ctx: SkBuffContext) -> i32 {
    let proto = u16::from_be(ctx.skb.protocol() as u16) as u32;
    if let Some(dport) = udp_tcp_dport(ctx.skb.skb, proto)
        && is_dns_port(dport)
    {
        dns_slow(&ctx, proto, dport);
    }
    1
}

/// The destination port of a UDP or TCP packet, read straight from the
/// linear data (no helper call); `None` for anything else, or when the
/// headers are not in the linear part (not the case for locally sent
/// packets: the stack builds their headers there).
#[inline(always)]
fn udp_tcp_dport(skb: *mut __sk_buff, proto: u32) -> Option<u16> {
    // SAFETY: packet pointers of a cgroup_skb context; every read is
    // bounds-checked against `end` first, as the verifier requires.
    unsafe {
        let data = (*skb).data as usize;
        let end = (*skb).data_end as usize;
        let (l4, next) = if proto == ETH_P_IP {
            if data + 20 > end {
                return None;
            }
            let vihl = *(data as *const u8);
            // A later fragment has no L4 header.
            let frag = u16::from_be(*((data + 6) as *const u16));
            if frag & 0x1fff != 0 {
                return None;
            }
            (((vihl & 0x0f) as usize) * 4, *((data + 9) as *const u8))
        } else if proto == ETH_P_IPV6 {
            if data + 40 > end {
                return None;
            }
            (40, *((data + 6) as *const u8))
        } else {
            return None;
        };
        if next != IPPROTO_UDP && next != IPPROTO_TCP as u8 {
            return None;
        }
        let at = data + l4 + 2;
        if at + 2 > end {
            return None;
        }
        Some(u16::from_be(*(at as *const u16)))
    }
}

#[inline(never)]
fn dns_slow(ctx: &SkBuffContext, proto: u32, dport: u16) -> u32 {
    let Some(ev) = DNS_SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the per-CPU slot is this program's alone while it runs.
    let ev = unsafe { &mut *ev };
    let msg = dns_message(ctx, proto, ev);
    if msg == NO_PAYLOAD {
        // A TCP segment without data (SYN, ACK, FIN): nothing to read.
        return 0;
    }
    count(counter::DNS_SEEN);
    if msg == NOT_A_QUERY {
        count(counter::DNS_UNPARSED);
        return 0;
    }
    ev.server_port = dport;
    // The question name's wire format, at most NAME_BUF bytes of it.
    let qoff = msg + 12;
    let len = ctx.skb.len() as usize;
    if len <= qoff {
        count(counter::DNS_UNPARSED);
        return 0;
    }
    // 1..=NAME_BUF, written so that the verifier sees both bounds (a
    // plain `min` leaves it a lower bound of 0, which the helper refuses).
    let avail = (((len - qoff - 1).min(dns::NAME_BUF - 1) as u32) & 0xff) as usize + 1;
    // SAFETY: `avail` is 1..=NAME_BUF, the buffer's size.
    let loaded = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            qoff as u32,
            ev.qname.as_mut_ptr() as *mut c_void,
            avail as u32,
        )
    };
    if loaded != 0 {
        count(counter::DNS_UNPARSED);
        return 0;
    }
    let walked = match_qname(&ev.qname, avail);
    if walked == QNAME_UNPARSED {
        count(counter::DNS_UNPARSED);
        return 0;
    }
    if walked & QNAME_HIT == 0 {
        return 0;
    }
    let end = (walked & 0xffff) as usize;
    count(counter::DNS_HIT);
    ev.qname_len = (end + 1) as u16;
    ev.qtype = ctx
        .load::<u16>(qoff + end + 1)
        .map(u16::from_be)
        .unwrap_or(0);
    let skb = ctx.skb.skb;
    // SAFETY: helpers of cgroup_skb programs on the context's skb.
    let cookie = unsafe { bpf_get_socket_cookie(skb as *mut c_void) };
    ev.cookie = cookie;
    ev.flags = 0;
    match unsafe { DNS_SOCKS.get(cookie) } {
        Some(owner) => {
            ev.cgroup_id = owner.cgroup_id;
            ev.tgid = owner.tgid;
            ev.pid = owner.pid;
            ev.uid = owner.uid;
            ev.gid = owner.gid;
            ev.comm = owner.comm;
        }
        None => {
            count(counter::DNS_NO_PROCESS);
            ev.flags = dns::FLAG_NO_PROCESS;
            ev.cgroup_id = unsafe { bpf_skb_cgroup_id(skb) };
            ev.tgid = 0;
            ev.pid = 0;
            ev.uid = ctx.skb.get_socket_uid();
            ev.gid = 0;
            ev.comm = [0; COMM_LEN];
        }
    }
    ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    if DNS_EVENTS.output::<DnsEvent>(&*ev, 0).is_ok() {
        count(counter::DNS_SENT);
    } else {
        count(counter::DNS_RINGBUF_FULL);
    }
    0
}

/// `dns_message`: a TCP segment without data.
const NO_PAYLOAD: usize = usize::MAX;
/// `dns_message`: data that is not the start of a query with a question.
const NOT_A_QUERY: usize = usize::MAX - 1;

/// Where the DNS message of a UDP datagram or TCP segment begins, for a
/// query with a question; fills the event's addresses and transport on
/// the way. `NO_PAYLOAD`, or `NOT_A_QUERY` (a response, no question, a
/// TCP segment that continues a message, headers that cannot be read).
#[inline(always)]
fn dns_message(ctx: &SkBuffContext, proto: u32, ev: &mut DnsEvent) -> usize {
    dns_message_at(ctx, proto, ev).unwrap_or(NOT_A_QUERY)
}

#[inline(always)]
fn dns_message_at(ctx: &SkBuffContext, proto: u32, ev: &mut DnsEvent) -> Option<usize> {
    let (l4, next) = if proto == ETH_P_IP {
        let vihl: u8 = ctx.load(0).ok()?;
        let d: [u8; 4] = ctx.load(16).ok()?;
        ev.family = AF_INET;
        ev.server_addr = [0; 16];
        ev.server_addr[..4].copy_from_slice(&d);
        (((vihl & 0x0f) as usize) * 4, ctx.load::<u8>(9).ok()?)
    } else {
        ev.family = AF_INET6;
        ev.server_addr = ctx.load(24).ok()?;
        (40, ctx.load::<u8>(6).ok()?)
    };
    ev.local_port = u16::from_be(ctx.load::<u16>(l4).ok()?);
    ev.transport = next;
    let msg = if next == IPPROTO_UDP {
        l4 + 8
    } else {
        let off: u8 = ctx.load(l4 + 12).ok()?;
        let data = l4 + ((off >> 4) as usize) * 4;
        if ctx.skb.len() as usize <= data {
            return Some(NO_PAYLOAD);
        }
        // A TCP message starts with its 2-byte length; a segment that
        // continues one is not looked at.
        data + 2
    };
    // The header: QR clear (a query), QDCOUNT at least 1.
    let flags: u8 = ctx.load(msg + 2).ok()?;
    let qdcount = u16::from_be(ctx.load::<u16>(msg + 4).ok()?);
    if flags & 0x80 != 0 || qdcount == 0 {
        return None;
    }
    Some(msg)
}

/// `match_qname`'s answer for a name it could not walk.
const QNAME_UNPARSED: u32 = u32::MAX;
/// `match_qname`'s bit for a watched suffix.
const QNAME_HIT: u32 = 1 << 31;

/// The walk's state between bytes (`WALK_*` slots), kept in map memory.
#[map]
static DNS_WALK: PerCpuArray<[u64; WALK_SLOTS]> = PerCpuArray::with_max_entries(1, 0);
/// Bytes left in the current label.
const WALK_LEFT: usize = 0;
/// The current label's hash so far.
const WALK_HASH: usize = 1;
/// The last four complete labels' hashes, the latest first.
const WALK_R0: usize = 2;
/// Complete labels so far.
const WALK_LABELS: usize = 6;
const WALK_SLOTS: usize = 8;

/// Walks the wire-format name in `buf` (`n` valid bytes): the offset of
/// its final 0 (low 16 bits), with `QNAME_HIT` if its last
/// 1..=MAX_SUFFIX_LABELS labels are a watched suffix. `QNAME_UNPARSED`:
/// no final 0 within the bytes (cut short or longer than a name may be),
/// or a compression pointer. (A plain integer: a BPF-to-BPF function
/// returning an `Option` of a tuple gives BTF the kernel refuses.)
///
/// One bounded loop over the bytes, whose index is the only value the
/// verifier must track. What the walk carries from byte to byte (the
/// bytes left in a label, the hashes) lives in a per-CPU map slot, read
/// and written with volatile accesses: a value loaded from map memory is
/// unknown to the verifier, so no branch on it is ever "known", nothing
/// of it becomes precise, and the paths of one iteration merge at the
/// next. Kept in registers instead, the label counter's small ranges
/// made every path distinct and the verifier ran for minutes.
#[inline(never)]
fn match_qname(buf: &[u8; dns::NAME_BUF], n: usize) -> u32 {
    let Some(w) = DNS_WALK.get_ptr_mut(0) else {
        return QNAME_UNPARSED;
    };
    let w = w.cast::<u64>();
    // SAFETY: slots of this CPU's map value (`WALK_SLOTS` u64s); only
    // this program uses them while it runs.
    let get = |slot: usize| unsafe { core::ptr::read_volatile(w.add(slot)) };
    let set = |slot: usize, v: u64| unsafe { core::ptr::write_volatile(w.add(slot), v) };
    for slot in 0..WALK_SLOTS {
        set(slot, 0);
    }
    let mut end = usize::MAX;
    for (i, b) in buf.iter().enumerate().take(dns::NAME_BUF - 1) {
        if i >= n {
            break;
        }
        let b = *b;
        let left = get(WALK_LEFT);
        if left != 0 {
            set(WALK_HASH, dns::fold(get(WALK_HASH), b));
            set(WALK_LEFT, left - 1);
            continue;
        }
        // A length byte: the label before it (if any) is complete.
        if i != 0 {
            set(WALK_R0 + 3, get(WALK_R0 + 2));
            set(WALK_R0 + 2, get(WALK_R0 + 1));
            set(WALK_R0 + 1, get(WALK_R0));
            set(WALK_R0, get(WALK_HASH));
            set(WALK_LABELS, get(WALK_LABELS) + 1);
        }
        if b == 0 {
            end = i;
            break;
        }
        if b > 63 {
            return QNAME_UNPARSED;
        }
        set(WALK_LEFT, b as u64);
        set(WALK_HASH, dns::OFFSET);
    }
    if end == usize::MAX {
        return QNAME_UNPARSED;
    }
    let (r0, r1, r2, r3) = (
        get(WALK_R0),
        get(WALK_R0 + 1),
        get(WALK_R0 + 2),
        get(WALK_R0 + 3),
    );
    let labels = get(WALK_LABELS);
    // `dns::suffix_hash` of the last 1, 2, 3, 4 labels, unrolled.
    let c = dns::combine;
    let o = dns::OFFSET;
    let keys = [
        c(o ^ 1, r0),
        c(c(o ^ 2, r1), r0),
        c(c(c(o ^ 3, r2), r1), r0),
        c(c(c(c(o ^ 4, r3), r2), r1), r0),
    ];
    for (k, key) in keys.iter().enumerate() {
        if k as u64 >= labels {
            break;
        }
        // SAFETY: a lookup; the value is not used.
        if unsafe { DNS_SUFFIXES.get(*key) }.is_some() {
            return end as u32 | QNAME_HIT;
        }
    }
    end as u32
}

// Gateway mode (issue 17): TC (clsact) programs on a router's interfaces.
// No process there: the flow is the whole story. Each interface the daemon
// attaches to has an entry in `GW_IFACES` (its role, inside or outside, and
// where its network header starts). On every TCP packet:
//   - a SYN without ACK (a new flow, in either direction) is matched against
//     the same gapless sets (and ORPort hash) as the socket programs: the
//     outside address, as an outbound peer (relay or exit, ORPort checked)
//     when the inside host opened the flow, as an inbound peer (exit) when
//     the outside one did. A hit is sent (`GW_EVENTS`) and its flow entered
//     in `GW_FLOWS`;
//   - any other packet of a tracked flow adds its bytes and packets to the
//     flow's counts (one way or the other) and marks a FIN or RST; while no
//     flow is tracked (`GW_FLOW_COUNT`, the `pending` scheme), the lookup is
//     skipped.
// The daemon's sweep reports a flow that ended (RST, or a FIN each way) or
// went idle, and removes it. `GW_FLOWS` is a plain hash: when full, a new
// hit is still sent but not tracked (counted), never an old flow evicted.
// The programs never drop or change a packet: they return TC_ACT_UNSPEC
// (TCX_NEXT under TCX, the same value), "no verdict", so that the next
// program or filter on the hook, or the default, decides.
// ---------------------------------------------------------------------------

/// Attached interfaces (ifindex -> role and network-header offset).
#[map]
static GW_IFACES: HashMap<u32, GwIface> = HashMap::with_max_entries(64, 0);
/// Tracked flows (those that hit). Size set by the daemon (`max_flows`).
#[map]
static GW_FLOWS: HashMap<FlowKey, FlowStats> = HashMap::with_max_entries(1, 0);
/// `gateway::COUNT_KERNEL` / `COUNT_SYNC` (see `sensor_common::pending`).
#[map]
static GW_FLOW_COUNT: Array<u64> = Array::with_max_entries(gateway::COUNT_SLOTS, 0);
/// Gateway hits for the daemon.
#[map]
static GW_EVENTS: RingBuf = RingBuf::with_byte_size(1 << 18, 0);

/// No verdict (`TC_ACT_UNSPEC`; `TCX_NEXT` has the same value).
const TC_ACT_UNSPEC: i32 = -1;
const TCP_FLAG_FIN: u8 = 0x01;
const TCP_FLAG_RST: u8 = 0x04;
const BPF_NOEXIST: u64 = 1;

/// Every packet entering an attached interface.
#[classifier]
pub fn gateway_ingress(ctx: TcContext) -> i32 {
    gateway_packet(&ctx, gateway::HOOK_INGRESS);
    TC_ACT_UNSPEC
}

/// Every packet leaving an attached interface.
#[classifier]
pub fn gateway_egress(ctx: TcContext) -> i32 {
    gateway_packet(&ctx, gateway::HOOK_EGRESS);
    TC_ACT_UNSPEC
}

/// A parsed TCP packet, as the flow sees it.
struct GwPacket {
    key: FlowKey,
    /// Sent by the inside host.
    from_inside: bool,
    flags: u8,
    /// From the network header on, as on the wire (a GSO packet's headers
    /// counted once per segment).
    bytes: u64,
    /// GSO segments (1 for a plain packet).
    segs: u64,
}

#[inline(always)]
fn gateway_packet(ctx: &TcContext, hook: u8) {
    let proto = u16::from_be(ctx.skb.protocol() as u16) as u32;
    if proto != ETH_P_IP && proto != ETH_P_IPV6 {
        return;
    }
    // SAFETY: the context is the kernel's `__sk_buff`; plain field loads.
    let (ifindex, len, gso_segs) = unsafe {
        let skb = &*ctx.skb.skb;
        (skb.ifindex, skb.len, skb.gso_segs)
    };
    // SAFETY: a lookup; the value is copied at once.
    let Some(iface) = (unsafe { GW_IFACES.get(ifindex) }).copied() else {
        return;
    };
    let Some(p) = gw_parse(ctx, proto, iface, hook, len, gso_segs) else {
        return;
    };
    count(counter::GW_PACKETS);
    if p.flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
        gw_syn(&p, hook, iface.role, ifindex);
    } else if gw_flows_may_exist() {
        gw_update(&p);
    }
}

/// What the flow needs of a TCP packet's headers.
struct TcpHeaders {
    family: u16,
    src: [u8; 16],
    dst: [u8; 16],
    /// Offset of the TCP header from the start of the packet.
    l4: usize,
    ports: [u8; 4],
    /// The TCP header's data offset byte and flags byte.
    off_flags: [u8; 2],
}

// What reading the headers found. Plain numbers, not an enum with the
// headers inside: returned from an out-of-line function, such an enum's
// unused bytes were stored from uninitialised registers, which the
// verifier refuses.
/// A TCP packet: the headers are filled in.
const H_TCP: u8 = 0;
/// Not TCP, or not parsed (counted where it is decided).
const H_OTHER: u8 = 1;
/// Not in reach: past the linear data (direct access), or past the packet
/// (helper).
const H_UNREADABLE: u8 = 2;

/// The headers through direct packet access: the common case, the
/// headers in the skb's linear data, without a helper call. Every read is
/// bounds-checked against `data_end` first, as the verifier requires (the
/// pattern `not_a_syn` uses, which Linux 6.1 accepts).
#[inline(always)]
fn headers_direct(skb: *mut __sk_buff, proto: u32, l3: usize, h: &mut TcpHeaders) -> u8 {
    let l3 = l3 & 0xff;
    // SAFETY: packet pointers of a TC context, each read checked against
    // `end` first; unaligned reads (packet data has no alignment).
    unsafe {
        let data = (*skb).data as usize;
        let end = (*skb).data_end as usize;
        let ip = data + l3;
        let ihl = if proto == ETH_P_IP {
            if ip + 20 > end {
                return H_UNREADABLE;
            }
            if *((ip + 9) as *const u8) != IPPROTO_TCP as u8 {
                return H_OTHER;
            }
            let vihl = *(ip as *const u8);
            let frag = u16::from_be(core::ptr::read_unaligned((ip + 6) as *const u16));
            let ihl = ((vihl & 0x0f) as usize) * 4;
            if frag & 0x1fff != 0 || ihl < 20 {
                // A later fragment has no TCP header.
                count(counter::GW_UNPARSED);
                return H_OTHER;
            }
            let s = core::ptr::read_unaligned((ip + 12) as *const [u8; 4]);
            let d = core::ptr::read_unaligned((ip + 16) as *const [u8; 4]);
            h.family = AF_INET;
            h.src[..4].copy_from_slice(&s);
            h.dst[..4].copy_from_slice(&d);
            ihl
        } else {
            if ip + 40 > end {
                return H_UNREADABLE;
            }
            let next = *((ip + 6) as *const u8);
            if next != IPPROTO_TCP as u8 {
                ipv6_not_tcp(next);
                return H_OTHER;
            }
            h.family = AF_INET6;
            h.src = core::ptr::read_unaligned((ip + 8) as *const [u8; 16]);
            h.dst = core::ptr::read_unaligned((ip + 24) as *const [u8; 16]);
            40
        };
        let tcp = ip + ihl;
        if tcp + 14 > end {
            return H_UNREADABLE;
        }
        h.ports = core::ptr::read_unaligned(tcp as *const [u8; 4]);
        h.off_flags = core::ptr::read_unaligned((tcp + 12) as *const [u8; 2]);
        h.l4 = l3 + ihl;
    }
    H_TCP
}

/// An IPv6 packet whose next header is not TCP: counted when TCP may be
/// behind an extension header (hop-by-hop, routing, fragment, destination
/// options), which is not walked.
#[inline(always)]
fn ipv6_not_tcp(next: u8) {
    if matches!(next, 0 | 43 | 44 | 60) {
        count(counter::GW_UNPARSED);
    }
}

/// The headers through `bpf_skb_load_bytes` (any offset, in the linear
/// data or not): the fallback when direct access cannot reach them. Out
/// of line: its stack is not on the path to `gw_syn`.
#[inline(never)]
fn headers_loaded(ctx: &TcContext, proto: u32, l3: usize, h: &mut TcpHeaders) -> u8 {
    headers_loaded_inner(ctx, proto, l3, h).unwrap_or(H_UNREADABLE)
}

#[inline(always)]
fn headers_loaded_inner(ctx: &TcContext, proto: u32, l3: usize, h: &mut TcpHeaders) -> Option<u8> {
    h.l4 = if proto == ETH_P_IP {
        let vihl: u8 = ctx.load(l3).ok()?;
        if ctx.load::<u8>(l3 + 9).ok()? != IPPROTO_TCP as u8 {
            return Some(H_OTHER);
        }
        let frag = u16::from_be(ctx.load::<u16>(l3 + 6).ok()?);
        let ihl = ((vihl & 0x0f) as usize) * 4;
        if frag & 0x1fff != 0 || ihl < 20 {
            count(counter::GW_UNPARSED);
            return Some(H_OTHER);
        }
        let s: [u8; 4] = ctx.load(l3 + 12).ok()?;
        let d: [u8; 4] = ctx.load(l3 + 16).ok()?;
        h.family = AF_INET;
        h.src[..4].copy_from_slice(&s);
        h.dst[..4].copy_from_slice(&d);
        l3 + ihl
    } else {
        let next: u8 = ctx.load(l3 + 6).ok()?;
        if next != IPPROTO_TCP as u8 {
            ipv6_not_tcp(next);
            return Some(H_OTHER);
        }
        h.family = AF_INET6;
        h.src = ctx.load(l3 + 8).ok()?;
        h.dst = ctx.load(l3 + 24).ok()?;
        l3 + 40
    };
    h.ports = ctx.load(h.l4).ok()?;
    h.off_flags = ctx.load(h.l4 + 12).ok()?;
    Some(H_TCP)
}

/// The flow key and what counts of a TCP packet; `None` for anything else.
/// Direct packet access first, the helper when the headers lie beyond the
/// linear data.
#[inline(always)]
fn gw_parse(
    ctx: &TcContext,
    proto: u32,
    iface: GwIface,
    hook: u8,
    len: u32,
    gso_segs: u32,
) -> Option<GwPacket> {
    let l3 = iface.l3_offset as usize;
    let mut h = TcpHeaders {
        family: AF_INET,
        src: [0; 16],
        dst: [0; 16],
        l4: 0,
        ports: [0; 4],
        off_flags: [0; 2],
    };
    let mut found = headers_direct(ctx.skb.skb, proto, l3, &mut h);
    if found == H_UNREADABLE {
        found = headers_loaded(ctx, proto, l3, &mut h);
        if found == H_UNREADABLE {
            // Truncated headers.
            count(counter::GW_UNPARSED);
            return None;
        }
    }
    if found != H_TCP {
        return None;
    }
    let TcpHeaders {
        family,
        src,
        dst,
        l4,
        ports,
        off_flags,
    } = h;
    let flags = off_flags[1];
    let headers = (l4 - l3) as u64 + ((off_flags[0] >> 4) as u64) * 4;
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let from_inside = (iface.role == gateway::ROLE_INSIDE) == (hook == gateway::HOOK_INGRESS);
    let key = if from_inside {
        FlowKey {
            inside_addr: src,
            outside_addr: dst,
            inside_port: sport,
            outside_port: dport,
            family,
            _pad: 0,
        }
    } else {
        FlowKey {
            inside_addr: dst,
            outside_addr: src,
            inside_port: dport,
            outside_port: sport,
            family,
            _pad: 0,
        }
    };
    // A GSO/GRO packet stands for `segs` packets on the wire, each with
    // its own IP and TCP headers; `len` has them once.
    let segs = if gso_segs > 1 { gso_segs as u64 } else { 1 };
    Some(GwPacket {
        key,
        from_inside,
        flags,
        bytes: len.saturating_sub(l3 as u32) as u64 + (segs - 1) * headers,
        segs,
    })
}

/// Atomically adds `delta` to `*p` (a map value shared between CPUs).
#[inline(always)]
fn xadd(p: *mut u64, delta: u64) {
    // SAFETY: a valid, aligned map value; BPF_ATOMIC add.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, delta,
        )
    };
}

/// Whether `GW_FLOWS` may hold an entry (see `may_be_pending`).
#[inline(always)]
fn gw_flows_may_exist() -> bool {
    let read = |slot: u32| {
        GW_FLOW_COUNT
            .get(slot)
            .map(|v| unsafe { core::ptr::read_volatile(v) })
            .unwrap_or(0)
    };
    let synced = read(gateway::COUNT_SYNC);
    read(gateway::COUNT_KERNEL) != synced
}

/// Adds a packet to its flow, if the flow is tracked.
#[inline(never)]
fn gw_update(p: &GwPacket) -> u32 {
    if let Some(f) = GW_FLOWS.get_ptr_mut(p.key) {
        add_to_flow(f, p);
    }
    0
}

/// Counts a packet into its tracked flow `f`.
#[inline(always)]
fn add_to_flow(f: *mut FlowStats, p: &GwPacket) {
    count(counter::GW_FLOW_PACKETS);
    // SAFETY: `f` points at the map value; counters are added atomically,
    // the time and the end marks are single stores of whole fields.
    unsafe {
        if p.from_inside {
            xadd(&raw mut (*f).bytes_out, p.bytes);
            xadd(&raw mut (*f).packets_out, p.segs);
        } else {
            xadd(&raw mut (*f).bytes_in, p.bytes);
            xadd(&raw mut (*f).packets_in, p.segs);
        }
        core::ptr::write_volatile(&raw mut (*f).last_ns, bpf_ktime_get_boot_ns());
        if p.flags & TCP_FLAG_RST != 0 {
            core::ptr::write_volatile(&raw mut (*f).rst, 1);
        }
        if p.flags & TCP_FLAG_FIN != 0 {
            if p.from_inside {
                core::ptr::write_volatile(&raw mut (*f).fin_inside, 1);
            } else {
                core::ptr::write_volatile(&raw mut (*f).fin_outside, 1);
            }
        }
    }
}

/// A new flow's SYN: match the outside end; for a hit, track the flow and
/// send the hit.
#[inline(never)]
fn gw_syn(p: &GwPacket, hook: u8, role: u8, ifindex: u32) -> u32 {
    count(counter::GW_SYN_SEEN);
    let k = &p.key;
    let v4 = if k.family == AF_INET {
        Some([
            k.outside_addr[0],
            k.outside_addr[1],
            k.outside_addr[2],
            k.outside_addr[3],
        ])
    } else {
        None
    };
    let peer = Peer {
        family: k.family,
        addr: k.outside_addr,
        port: k.outside_port,
        v4,
    };
    if !may_be_listed(peer.prefilter_index()) {
        return 0;
    }
    let direction = if p.from_inside {
        DIR_EGRESS
    } else {
        DIR_INGRESS
    };
    let Some(hit) = lookup(&peer, direction) else {
        return 0;
    };
    // A retransmitted SYN of a flow already tracked: only counted.
    if let Some(f) = GW_FLOWS.get_ptr_mut(k) {
        add_to_flow(f, p);
        return 0;
    }
    count(counter::GW_HIT);
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let mut flow = FlowStats {
        first_ns: now,
        last_ns: now,
        matched: hit,
        ifindex,
        direction,
        hook,
        role,
        ..FlowStats::default()
    };
    if p.from_inside {
        flow.bytes_out = p.bytes;
        flow.packets_out = p.segs;
    } else {
        flow.bytes_in = p.bytes;
        flow.packets_in = p.segs;
    }
    let mut flags = 0;
    if GW_FLOWS.insert(k, flow, BPF_NOEXIST).is_ok() {
        if let Some(slot) = GW_FLOW_COUNT.get_ptr_mut(gateway::COUNT_KERNEL) {
            xadd(slot, 1);
        }
    } else {
        count(counter::GW_FLOWS_FULL);
        flags |= gateway::FLAG_NOT_TRACKED;
    }
    // Written straight into the ring buffer, every field (the reserved
    // memory is not zeroed): a GatewayEvent on the stack as well would
    // take the call chain past the 512-byte stack Linux 6.1 allows. The
    // loss of a full ring is counted (and reported by the daemon's health
    // check); no kernel log here for the same reason.
    let Some(mut slot) = GW_EVENTS.reserve::<GatewayEvent>(0) else {
        count(counter::GW_RINGBUF_FULL);
        return 0;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` is the reserved entry, sized and aligned for the type.
    unsafe {
        (*ev).ts_boot_ns = now;
        (*ev).inside_addr = k.inside_addr;
        (*ev).outside_addr = k.outside_addr;
        (*ev).inside_port = k.inside_port;
        (*ev).outside_port = k.outside_port;
        (*ev).family = k.family;
        (*ev).direction = direction;
        (*ev).hook = hook;
        (*ev).ifindex = ifindex;
        (*ev).flags = flags;
        (*ev).role = role;
        (*ev)._pad = [0; 2];
        (*ev).matched = hit;
    }
    slot.submit(0);
    count(counter::GW_EVENTS_SENT);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
