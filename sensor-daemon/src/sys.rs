//! Every libc call of the daemon, each behind a safe wrapper whose
//! `unsafe` block is only the FFI call itself, with a SAFETY comment (as
//! aya keeps its syscalls in `sys/`):
//!
//! - files relative to a directory descriptor (`openat` family), never
//!   following a symbolic link in the last component: used by
//!   [`crate::statedir`], which holds the policy (who may own what);
//! - clocks, host name, limits and process facts the rest of the crate
//!   needs ([`boot_time_ns`], [`hostname`], [`clock_ticks_per_second`],
//!   [`raise_memlock_limit`], [`release_free_heap`], [`set_no_new_privs`],
//!   [`process_exists`]);
//! - a private network namespace for the self-test's connection
//!   ([`enter_private_netns`]).
//!
//! A shared leaf: imports nothing from the crate.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

/// File metadata from `fstat`: what the state directory checks need.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub uid: u32,
    /// Permission bits and file type (`st_mode`).
    pub mode: u32,
    /// The inode (a socket's is what `/proc/net/udp` names it by).
    pub ino: u64,
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Permission bits only (`0o7777`).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

fn c_name(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Turns a `-1` return into the `errno` error.
fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Takes ownership of a descriptor a successful `open`/`openat` returned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` was just returned by a successful open call, so it is a
    // valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory by path, not following a link in the last component.
pub fn open_dir(path: &std::path::Path) -> io::Result<OwnedFd> {
    let path = c_name(path.as_os_str())?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `path` is a NUL-terminated string that lives across the call;
    // open does not keep the pointer.
    owned(unsafe { libc::open(path.as_ptr(), flags) })
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
pub fn open_at(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let name = c_name(name)?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: `dir` is a valid descriptor borrowed for the call, `name` a
    // NUL-terminated string that outlives it; the mode is passed as the
    // variadic argument openat expects (an unsigned int).
    owned(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode as libc::c_uint) })
}

/// `mkdirat(dir, name, mode)` (the mode is filtered by the umask).
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: valid borrowed descriptor and NUL-terminated name for the
    // duration of the call.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })?;
    Ok(())
}

/// `renameat(dir, from, dir, to)`: replaces `to` (a link there is replaced,
/// not followed).
pub fn rename_at(dir: BorrowedFd<'_>, from: &OsStr, to: &OsStr) -> io::Result<()> {
    let (from, to) = (c_name(from)?, c_name(to)?);
    let fd = dir.as_raw_fd();
    // SAFETY: valid borrowed descriptor, both names NUL-terminated and alive
    // for the call.
    check(unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) })?;
    Ok(())
}

/// `unlinkat(dir, name, 0)`: removes a file (a link itself, never its target).
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let name = c_name(name)?;
    // SAFETY: valid borrowed descriptor and NUL-terminated name for the call.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })?;
    Ok(())
}

/// `fstat(fd)`: owner and mode.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    // SAFETY: an all-zero `struct stat` is a valid value (plain integers).
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid borrowed descriptor; `st` is a writable stat buffer that
    // outlives the call.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(Stat {
        uid: st.st_uid,
        mode: st.st_mode,
        ino: st.st_ino,
    })
}

/// `fchmod(fd, mode)`: sets exact permission bits, whatever the umask was.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: valid borrowed descriptor; fchmod only reads its arguments.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) })?;
    Ok(())
}

/// `fsync(fd)` (for a directory: makes renames and unlinks in it durable).
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: valid borrowed descriptor; fsync only reads its argument.
    check(unsafe { libc::fsync(fd.as_raw_fd()) })?;
    Ok(())
}

/// The effective user id: the "sensor's user" that must own its state.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `CLOCK_BOOTTIME`: time since boot, suspend included (the clock of the
/// kernel's `bpf_ktime_get_boot_ns` and `ConnEvent::ts_boot_ns`).
pub fn boot_time_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_BOOTTIME exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This host's name (`"unknown"` if it cannot be read).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buffer and length are valid.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// Lifts `RLIMIT_MEMLOCK` (kernels before 5.11 charge BPF maps to it);
/// false if it could not be raised.
pub fn raise_memlock_limit() -> bool {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) == 0 }
}

/// Gives freed heap pages back to the system (glibc keeps them otherwise).
pub fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `prctl(PR_SET_NO_NEW_PRIVS)`: nothing this process executes can gain
/// privileges (setuid bits, file capabilities).
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets a socket's receive buffer to `bytes`: past `net.core.rmem_max`
/// with CAP_NET_ADMIN (`SO_RCVBUFFORCE`), else as far as that limit allows
/// (`SO_RCVBUF`). Returns the size the kernel reports (it doubles what it
/// is given, for its bookkeeping).
pub fn set_receive_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<usize> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    let set = |option: libc::c_int| {
        // SAFETY: valid borrowed descriptor; `value` is a c_int that
        // outlives the call, and its size is given.
        check(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
    };
    set(libc::SO_RCVBUFFORCE).or_else(|_| set(libc::SO_RCVBUF))?;
    let mut got: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: valid borrowed descriptor; `got` and `len` are writable and
    // outlive the call.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&mut got as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(usize::try_from(got).unwrap_or(0))
}

/// Restores the default action of SIGPIPE (Rust's runtime ignores it):
/// a command whose reader went away (`torsensor check ... | head`) ends
/// quietly, as other Unix tools do, instead of failing on a write. Not for
/// the daemon, whose outputs handle a closed pipe themselves.
pub fn default_sigpipe() {
    // SAFETY: installing SIG_DFL for SIGPIPE takes no pointers the kernel
    // keeps; nothing else in this process handles SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
}

/// Sends `signal` to process `pid`.
pub fn send_signal(pid: u32, signal: i32) -> io::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: kill takes no pointers.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// True if a process with this pid exists (`kill(pid, 0)`; a process of
/// another user counts as existing).
pub fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Moves the calling thread into a new network namespace, brings its `lo`
/// up and puts `addr`/32 on it (`lo:1`): connections made from this thread
/// afterwards never leave it. Needs `CAP_SYS_ADMIN` (unshare) and
/// `CAP_NET_ADMIN` (the interface) in the calling thread.
pub fn enter_private_netns(addr: std::net::Ipv4Addr) -> io::Result<()> {
    // SAFETY: unshare takes no pointers; it changes only this thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let ioctl = |request: libc::Ioctl, req: &mut libc::ifreq| -> io::Result<()> {
        // SAFETY: `req` is a valid, initialised ifreq for these requests.
        if unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    let named = |name: &str| {
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req
    };
    let mut lo = named("lo");
    ioctl(libc::SIOCGIFFLAGS, &mut lo)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { lo.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(libc::SIOCSIFFLAGS, &mut lo)?;
    let sockaddr = |ip: std::net::Ipv4Addr| {
        // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
        let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(ip).to_be();
        // SAFETY: sockaddr_in fits in (and is read as) a sockaddr.
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
    };
    let mut alias = named("lo:1");
    alias.ifr_ifru.ifru_addr = sockaddr(addr);
    ioctl(libc::SIOCSIFADDR, &mut alias)?;
    alias.ifr_ifru.ifru_netmask = sockaddr(std::net::Ipv4Addr::BROADCAST);
    ioctl(libc::SIOCSIFNETMASK, &mut alias)
}

/// A TCP connection to `to` from the local address `from` (port 0: any),
/// which std cannot do (it binds only listeners). Blocking.
pub fn connect_from(
    from: std::net::SocketAddr,
    to: std::net::SocketAddr,
) -> io::Result<std::net::TcpStream> {
    let storage = |sa: std::net::SocketAddr| -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match sa {
            std::net::SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                size_of::<libc::sockaddr_in>()
            }
            std::net::SocketAddr::V6(v6) => {
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    };
    let family = if from.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the result is checked before use.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let (local, local_len) = storage(from);
    // SAFETY: `local` is a valid sockaddr of `local_len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const local).cast(), local_len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (peer, peer_len) = storage(to);
    // SAFETY: `peer` is a valid sockaddr of `peer_len` bytes.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const peer).cast(), peer_len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(std::net::TcpStream::from(fd))
}
