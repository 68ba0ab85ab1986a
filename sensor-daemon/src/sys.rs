//! The few file-system calls that std does not offer: everything relative
//! to a directory file descriptor (`openat` family), never following a
//! symbolic link in the last component. Each wrapper is safe to call; the
//! `unsafe` is only the FFI call itself.
//!
//! Used by [`crate::statedir`], which holds the policy (who may own what).

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
