//! torsensor kernel programs.
//!
//! Why tracepoints: they are a stable ABI and the only tracing hook this
//! project can rely on (kprobes and fentry are often unavailable; see the
//! README). Everything here is deliberately small; decisions live in the daemon.
//!
//! Outbound (`connect`):
//!   `sock:inet_sock_set_state` CLOSE -> SYN_SENT runs inside `connect()` in the
//!   caller's context: match the peer, and for a hit remember the process in
//!   `PENDING_OUT` keyed by the socket address. The local port is still 0 there,
//!   so the event is sent at the socket's next transition (SYN_SENT ->
//!   ESTABLISHED, or -> CLOSE when the attempt fails), which has the real port.
//! Inbound (`accept`):
//!   SYN_RECV -> ESTABLISHED runs in softirq context (the current task is
//!   whoever was running), so it only records a hit in `PENDING_IN` keyed by the
//!   new socket. `sys_exit_accept{,4}` runs in the accepting process: it follows
//!   the returned fd to its `struct sock` (offsets read from the kernel's BTF by
//!   the daemon) and, if that socket is pending, sends the event with the
//!   process that accepted it. This works whether or not the caller asked for
//!   the peer address (`accept(fd, NULL, NULL)`).
#![no_std]
#![no_main]
// Atomic add on a map value (BPF_ATOMIC): `core::sync::atomic` has no
// read-modify-write for the bpf target, the intrinsic does. This crate is
// built with a pinned nightly anyway.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_get_current_task, bpf_ktime_get_boot_ns},
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use sensor_common::{
    AF_INET, AF_INET6, ConnEvent, DIR_EGRESS, DIR_INGRESS, FLAG_AUDIT, FLAG_CONNECT_FAILED,
    FLAG_NO_PROCESS, FLAG_V4_MAPPED, KernelOffsets, MatchInfo, OrPortKey, counter,
};

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

/// 1: send every connection, matched or not (debugging, benchmarks).
#[unsafe(no_mangle)]
static AUDIT_ALL: Global<u32> = Global::new(0);
/// 1: the accept-side programs are attached and `KOFFSETS` is valid, so
/// inbound hits wait for `accept()`; 0: inbound hits are sent at once with
/// `FLAG_NO_PROCESS`.
#[unsafe(no_mangle)]
static ACCEPT_PROBE: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static KOFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdt_fd: 0,
    fdt_max_fds: 0,
    file_private_data: 0,
    socket_sk: 0,
});

// The Tor sets, twice: the daemon rewrites the inactive copy, then flips
// `ACTIVE_SET`, so a refresh takes effect all at once and an address listed
// before and after it is never missing (see `TorMaps` in the daemon).
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
/// Outbound hits waiting for their local port, keyed by `struct sock *`.
#[map]
static PENDING_OUT: LruHashMap<u64, ConnEvent> = LruHashMap::with_max_entries(16384, 0);
/// Inbound hits waiting for `accept()`, keyed by `struct sock *`.
#[map]
static PENDING_IN: LruHashMap<u64, ConnEvent> = LruHashMap::with_max_entries(16384, 0);

/// Upper bound of the entries in `PENDING_IN` (LRU evictions are not
/// subtracted). While it is 0, which is the normal case, `accept()` exits
/// skip the fd walk entirely.
#[map]
static INBOUND_PENDING: Array<u64> = Array::with_max_entries(1, 0);

/// Atomically adds `delta` (two's complement for a decrement).
#[inline(always)]
fn inbound_pending_add(delta: u64) {
    if let Some(slot) = INBOUND_PENDING.get_ptr_mut(0) {
        // SAFETY: a valid, aligned map value; BPF_ATOMIC add.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                slot, delta,
            )
        };
    }
}

#[inline(always)]
fn inbound_pending() -> u64 {
    INBOUND_PENDING
        .get(0)
        .map(|v| unsafe { core::ptr::read_volatile(v) })
        .unwrap_or(0)
}

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

// Field offsets of `sock:inet_sock_set_state` (stable tracepoint ABI; the
// daemon checks them against the live `format` file before loading).
const SS_SKADDR: usize = 8;
const SS_OLDSTATE: usize = 16;
const SS_NEWSTATE: usize = 20;
const SS_SPORT: usize = 24;
const SS_DPORT: usize = 26;
const SS_FAMILY: usize = 28;
const SS_PROTOCOL: usize = 30;
const SS_SADDR: usize = 32;
const SS_DADDR: usize = 36;
const SS_SADDR_V6: usize = 40;
const SS_DADDR_V6: usize = 56;
// `syscalls:sys_exit_accept{,4}`: `long ret`.
const SYS_EXIT_RET: usize = 16;

/// Reads a tracepoint field straight from the context (no helper call; the
/// verifier checks the bounds). Every offset used here is naturally aligned.
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// An IPv4 address field (4 bytes, network order), read as one aligned word.
#[inline(always)]
fn field_v4(ctx: &TracePointContext, offset: usize) -> [u8; 4] {
    field::<u32>(ctx, offset).to_ne_bytes()
}

/// An IPv6 address field, read as two aligned 8-byte words: the verifier only
/// accepts context loads at a constant offset from the context pointer.
#[inline(always)]
fn field_v6(ctx: &TracePointContext, offset: usize) -> [u8; 16] {
    let lo = field::<u64>(ctx, offset).to_ne_bytes();
    let hi = field::<u64>(ctx, offset + 8).to_ne_bytes();
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&lo);
    out[8..].copy_from_slice(&hi);
    out
}

#[inline(always)]
fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer can race with this one.
        unsafe { *slot += 1 };
    }
}

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn sock_state(ctx: TracePointContext) -> u32 {
    let _ = try_sock_state(&ctx);
    0
}

fn try_sock_state(ctx: &TracePointContext) -> Result<(), i32> {
    let protocol: u16 = field(ctx, SS_PROTOCOL);
    if protocol != IPPROTO_TCP {
        return Ok(());
    }
    let old: i32 = field(ctx, SS_OLDSTATE);
    let new: i32 = field(ctx, SS_NEWSTATE);
    match (old, new) {
        (TCP_CLOSE, TCP_SYN_SENT) => on_connect(ctx),
        (TCP_SYN_SENT, _) => on_connect_done(ctx, new),
        (TCP_SYN_RECV, TCP_ESTABLISHED) => on_inbound(ctx),
        _ => Ok(()),
    }
}

/// Fills family, addresses and ports from `inet_sock_set_state`. For the
/// socket that reports, "s" is local and "d" is the peer, in both directions.
#[inline(always)]
fn read_endpoints(ctx: &TracePointContext, ev: &mut ConnEvent) -> Result<(), i32> {
    let family: u16 = field(ctx, SS_FAMILY);
    ev.family = family;
    ev.local_port = field(ctx, SS_SPORT);
    ev.remote_port = field(ctx, SS_DPORT);
    if family == AF_INET {
        let s = field_v4(ctx, SS_SADDR);
        let d = field_v4(ctx, SS_DADDR);
        ev.local_addr[..4].copy_from_slice(&s);
        ev.remote_addr[..4].copy_from_slice(&d);
        Ok(())
    } else if family == AF_INET6 {
        ev.local_addr = field_v6(ctx, SS_SADDR_V6);
        ev.remote_addr = field_v6(ctx, SS_DADDR_V6);
        Ok(())
    } else {
        Err(0)
    }
}

/// Matches the peer against the active set. A `::ffff:a.b.c.d` peer is
/// matched as IPv4. Exit entries match in both directions on any port; a
/// relay's OR address only matches outbound on one of its ORPorts.
#[inline(always)]
fn lookup(ev: &mut ConnEvent) -> Option<MatchInfo> {
    let set = ACTIVE_SET.get(0).copied().unwrap_or(0);
    if set == 0 {
        match_in(&TOR_V4_0, &TOR_V6_0, &OR_PORTS_0, ev)
    } else {
        match_in(&TOR_V4_1, &TOR_V6_1, &OR_PORTS_1, ev)
    }
}

#[inline(always)]
fn match_in(
    v4: &LpmTrie<[u8; 4], MatchInfo>,
    v6: &LpmTrie<[u8; 16], MatchInfo>,
    or_ports: &HashMap<OrPortKey, u32>,
    ev: &mut ConnEvent,
) -> Option<MatchInfo> {
    let a = ev.remote_addr;
    let mapped =
        ev.family == AF_INET6 && a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff;
    let (listed, key) = if ev.family == AF_INET {
        let v4a = [a[0], a[1], a[2], a[3]];
        (
            v4.get(Key::new(32, v4a)),
            OrPortKey::v4(v4a, ev.remote_port),
        )
    } else if mapped {
        ev.flags |= FLAG_V4_MAPPED;
        let v4a = [a[12], a[13], a[14], a[15]];
        (
            v4.get(Key::new(32, v4a)),
            OrPortKey::v4(v4a, ev.remote_port),
        )
    } else {
        (v6.get(Key::new(128, a)), OrPortKey::v6(a, ev.remote_port))
    };
    let listed = *listed?;
    let mut hit = MatchInfo {
        exit_feeds: listed.exit_feeds,
        relay_feeds: 0,
    };
    if ev.direction == DIR_EGRESS && listed.relay_feeds != 0 {
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

/// Decides whether a connection is reported: a feed match, or audit mode.
#[inline(always)]
fn classify(ev: &mut ConnEvent, hit_counter: u32) -> bool {
    match lookup(ev) {
        Some(m) => {
            ev.matched = m;
            count(hit_counter);
            true
        }
        None if AUDIT_ALL.load() != 0 => {
            ev.flags |= FLAG_AUDIT;
            true
        }
        None => false,
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

/// Sends `ev` to the daemon; a full ring buffer is counted, never silent.
#[inline(always)]
fn emit(ctx: &TracePointContext, ev: &ConnEvent) {
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

/// Counts a new connection and returns its event if it is to be reported
/// (a feed match, or audit mode), stamped with direction and time.
#[inline(always)]
fn new_connection(
    ctx: &TracePointContext,
    seen: u32,
    hit: u32,
    direction: u8,
) -> Result<Option<ConnEvent>, i32> {
    count(seen);
    let mut ev = ConnEvent::ZERO;
    ev.direction = direction;
    read_endpoints(ctx, &mut ev)?;
    if !classify(&mut ev, hit) {
        return Ok(None);
    }
    ev.ts_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    Ok(Some(ev))
}

fn on_connect(ctx: &TracePointContext) -> Result<(), i32> {
    let Some(mut ev) =
        new_connection(ctx, counter::CONNECT_SEEN, counter::CONNECT_HIT, DIR_EGRESS)?
    else {
        return Ok(());
    };
    fill_process(&mut ev);
    let sk: u64 = field(ctx, SS_SKADDR);
    if PENDING_OUT.insert(sk, ev, 0).is_err() {
        count(counter::PENDING_FULL);
    }
    Ok(())
}

fn on_connect_done(ctx: &TracePointContext, new_state: i32) -> Result<(), i32> {
    let sk: u64 = field(ctx, SS_SKADDR);
    let Some(pending) = PENDING_OUT.get_ptr(sk) else {
        return Ok(());
    };
    let mut ev = unsafe { *pending };
    let _ = PENDING_OUT.remove(sk);
    // Now the local address and port are final.
    ev.local_port = field(ctx, SS_SPORT);
    if ev.family == AF_INET {
        let s = field_v4(ctx, SS_SADDR);
        ev.local_addr[..4].copy_from_slice(&s);
    } else {
        ev.local_addr = field_v6(ctx, SS_SADDR_V6);
    }
    if new_state != TCP_ESTABLISHED {
        ev.flags |= FLAG_CONNECT_FAILED;
    }
    emit(ctx, &ev);
    Ok(())
}

fn on_inbound(ctx: &TracePointContext) -> Result<(), i32> {
    let Some(mut ev) = new_connection(
        ctx,
        counter::INBOUND_SEEN,
        counter::INBOUND_HIT,
        DIR_INGRESS,
    )?
    else {
        return Ok(());
    };
    if ACCEPT_PROBE.load() == 0 {
        ev.flags |= FLAG_NO_PROCESS;
        emit(ctx, &ev);
        return Ok(());
    }
    let sk: u64 = field(ctx, SS_SKADDR);
    inbound_pending_add(1);
    if PENDING_IN.insert(sk, ev, 0).is_err() {
        count(counter::PENDING_FULL);
    }
    Ok(())
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = try_accept_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_accept")]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    let _ = try_accept_exit(&ctx);
    0
}

/// Reads a kernel pointer stored at `base + offset`.
#[inline(always)]
fn read_ptr(base: u64, offset: u32) -> Result<u64, i32> {
    unsafe { bpf_probe_read_kernel((base + offset as u64) as *const u64) }
}

fn try_accept_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let ret: i64 = field(ctx, SYS_EXIT_RET);
    if ret < 0 {
        return Ok(());
    }
    count(counter::ACCEPT_SEEN);
    if inbound_pending() == 0 {
        return Ok(());
    }
    let off = KOFFSETS.load();
    // current->files->fdt->fd[ret]->private_data (struct socket)->sk
    let task = unsafe { bpf_get_current_task() };
    let files = read_ptr(task, off.task_files)?;
    let fdt = read_ptr(files, off.files_fdt)?;
    let max_fds: u32 =
        unsafe { bpf_probe_read_kernel((fdt + off.fdt_max_fds as u64) as *const u32)? };
    if ret as u64 >= max_fds as u64 {
        return Ok(());
    }
    let fd_array = read_ptr(fdt, off.fdt_fd)?;
    let file = read_ptr(fd_array + (ret as u64) * 8, 0)?;
    let socket = read_ptr(file, off.file_private_data)?;
    let sk = read_ptr(socket, off.socket_sk)?;
    let Some(pending) = PENDING_IN.get_ptr(sk) else {
        return Ok(());
    };
    let mut ev = unsafe { *pending };
    if PENDING_IN.remove(sk).is_ok() {
        inbound_pending_add(u64::MAX); // -1
    }
    fill_process(&mut ev);
    emit(ctx, &ev);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
