//! The state directory (`state_dir`: feed cache, `status.json`, spools) and
//! how files are written in it without being turned against the host.
//!
//! The sensor usually runs as root, so any file name in its state directory
//! that another user could plant a link at, or any directory another user
//! could write to, would let that user make the sensor overwrite or append
//! to a file of their choice. Hence:
//!
//! - every directory of the state (the state directory itself, `feeds/`,
//!   `spool/`, `spool/<output>/`) is opened without following a link, and
//!   refused, with one sentence naming it, if it is not owned by the
//!   sensor's effective user or is writable by group or others;
//! - directories are created 0750 (state, `feeds/`) or 0700 (`spool/...`)
//!   and files with explicit modes, set with `fchmod` so that the umask
//!   does not matter;
//! - files are opened relative to the directory's descriptor with
//!   `O_NOFOLLOW`, and replaced atomically through a temporary file with an
//!   unpredictable name created `O_EXCL` (an existing name, link or not, is
//!   never opened), then `renameat` over the final name.

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// Mode of the state directory and `feeds/` (group may read the status).
pub const STATE_DIR_MODE: u32 = 0o750;
/// Mode of `spool/` and each output's spool directory (alerts name users).
pub const SPOOL_DIR_MODE: u32 = 0o700;

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error(
        "{path} is a symbolic link: the sensor does not follow links in its state directory; point state_dir at the real directory"
    )]
    Symlink { path: PathBuf },
    #[error(
        "{path} belongs to uid {owner}, not to the sensor's user (uid {uid}): refusing to use it; chown it to uid {uid} or remove it"
    )]
    Owner { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "{path} is writable by group or others (mode {mode:04o}): refusing to use it; run chmod go-w on it"
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("{path} is not a directory")]
    NotDir { path: PathBuf },
    /// (`error` is in the message, not a separate source: one line.)
    #[error("cannot {what} {path}: {error}")]
    Io {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

/// An open directory of the state, checked: not a link, owned by the
/// sensor's user, not writable by group or others.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateDirError {
    let path = path.to_owned();
    move |error| StateDirError::Io { what, path, error }
}

/// Why opening a directory without following links failed.
/// (`O_NOFOLLOW | O_DIRECTORY` on a link fails with ELOOP or ENOTDIR.)
fn open_failed(path: &Path, e: io::Error) -> StateDirError {
    let is_link = || std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match e.raw_os_error() {
        Some(libc::ELOOP | libc::ENOTDIR) if is_link() => StateDirError::Symlink {
            path: path.to_owned(),
        },
        Some(libc::ENOTDIR) => StateDirError::NotDir {
            path: path.to_owned(),
        },
        _ => io_err("open", path)(e),
    }
}

impl Dir {
    /// Opens the state directory `path`, creating it (and missing parents)
    /// with `mode` if it does not exist, and checks it.
    pub fn open(path: &Path, mode: u32) -> Result<Dir, StateDirError> {
        let fd = match sys::open_dir(path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(io_err("create", parent))?;
                }
                let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(p) => p,
                    None => Path::new("."),
                };
                let name = path.file_name().ok_or_else(|| StateDirError::NotDir {
                    path: path.to_owned(),
                })?;
                let parent_fd = sys::open_dir(parent).map_err(|e| open_failed(parent, e))?;
                return Self::create_in(parent_fd.as_fd(), name, path.to_owned(), mode);
            }
            Err(e) => return Err(open_failed(path, e)),
        };
        Self::checked(fd, path.to_owned())
    }

    /// Opens (creating with `mode` if missing) and checks the directory
    /// `name` inside this one.
    pub fn subdir(&self, name: &str, mode: u32) -> Result<Dir, StateDirError> {
        let path = self.path.join(name);
        let flags = libc::O_RDONLY | libc::O_DIRECTORY;
        match sys::open_at(self.fd.as_fd(), OsStr::new(name), flags, 0) {
            Ok(fd) => Self::checked(fd, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Self::create_in(self.fd.as_fd(), OsStr::new(name), path, mode)
            }
            Err(e) => Err(open_failed(&path, e)),
        }
    }

    /// `mkdirat`, then open it, set the exact mode and check it. Someone
    /// else creating the name in between is caught by the check.
    fn create_in(
        parent: BorrowedFd<'_>,
        name: &OsStr,
        path: PathBuf,
        mode: u32,
    ) -> Result<Dir, StateDirError> {
        match sys::mkdir_at(parent, name, mode) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create", &path)(e)),
        }
        let fd = sys::open_at(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|e| open_failed(&path, e))?;
        let dir = Self::checked(fd, path)?;
        sys::fchmod(dir.fd.as_fd(), mode).map_err(io_err("set the mode of", &dir.path))?;
        Ok(dir)
    }

    fn checked(fd: OwnedFd, path: PathBuf) -> Result<Dir, StateDirError> {
        let st = sys::fstat(fd.as_fd()).map_err(io_err("inspect", &path))?;
        if !st.is_dir() {
            return Err(StateDirError::NotDir { path });
        }
        let uid = sys::geteuid();
        if st.uid != uid {
            return Err(StateDirError::Owner {
                path,
                owner: st.uid,
                uid,
            });
        }
        if st.perm() & 0o022 != 0 {
            return Err(StateDirError::Writable {
                path,
                mode: st.perm(),
            });
        }
        Ok(Dir { fd, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens an existing file for reading, not following a link.
    pub fn open_read(&self, name: &OsStr) -> io::Result<File> {
        sys::open_at(self.fd.as_fd(), name, libc::O_RDONLY, 0).map(File::from)
    }

    /// Opens a file with `flags` (`O_CREAT`, `O_APPEND`, ...), not following
    /// a link; a file it creates gets exactly `mode`.
    pub fn open_file(&self, name: &OsStr, flags: i32, mode: u32) -> io::Result<File> {
        let fd = match sys::open_at(self.fd.as_fd(), name, flags | libc::O_EXCL, mode) {
            Ok(fd) if flags & libc::O_CREAT != 0 => {
                sys::fchmod(fd.as_fd(), mode)?;
                fd
            }
            Ok(fd) => fd,
            Err(e) if flags & libc::O_CREAT != 0 && e.kind() == io::ErrorKind::AlreadyExists => {
                sys::open_at(self.fd.as_fd(), name, flags & !libc::O_CREAT, 0)?
            }
            Err(e) => return Err(e),
        };
        Ok(File::from(fd))
    }

    /// Removes a file (a link itself, never its target).
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        sys::unlink_at(self.fd.as_fd(), name)
    }

    /// fsyncs the directory (after a rename or an unlink).
    pub fn sync(&self) -> io::Result<()> {
        sys::fsync(self.fd.as_fd())
    }

    /// Replaces `name` with `bytes` so that readers see the old or the new
    /// content, never a mix: a new temporary file with an unpredictable
    /// name (`O_EXCL`, so nothing existing is ever opened), exact `mode`,
    /// written (and with `durable`, fsynced), renamed over `name`, and with
    /// `durable` the directory fsynced.
    pub fn write_atomic(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
        durable: bool,
    ) -> Result<(), StateDirError> {
        let path = self.path.join(name);
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL;
        let mut attempts = 0;
        let (tmp, fd) = loop {
            let tmp = format!(".{name}.{:016x}.tmp", unpredictable());
            match sys::open_at(self.fd.as_fd(), OsStr::new(&tmp), flags, mode) {
                Ok(fd) => break (tmp, fd),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => {
                    attempts += 1;
                }
                Err(e) => return Err(io_err("write", &path)(e)),
            }
        };
        let result = (|| {
            sys::fchmod(fd.as_fd(), mode)?;
            let mut file = File::from(fd);
            file.write_all(bytes)?;
            if durable {
                file.sync_all()?;
            }
            drop(file);
            sys::rename_at(self.fd.as_fd(), OsStr::new(&tmp), OsStr::new(name))
        })();
        if let Err(e) = result {
            let _ = sys::unlink_at(self.fd.as_fd(), OsStr::new(&tmp));
            return Err(io_err("write", &path)(e));
        }
        if durable {
            let _ = self.sync();
        }
        Ok(())
    }
}

/// 64 bits nobody can guess from outside the process: std's per-process
/// random hash keys over a counter and the time.
fn unpredictable() -> u64 {
    static KEYS: std::sync::OnceLock<RandomState> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Replaces a file outside the state directory (the `--stats-file`) the
/// same way: the directory is the operator's choice and is not checked, but
/// a link or file planted at the temporary name is never opened, a link at
/// the final name is replaced rather than followed, and the mode is exact.
pub fn write_file_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), StateDirError> {
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => p,
        None => Path::new("."),
    };
    let name = path
        .file_name()
        .and_then(OsStr::to_str)
        .ok_or_else(|| io_err("write", path)(io::Error::from_raw_os_error(libc::EINVAL)))?;
    // The operator's directory, links followed: not a state directory.
    let fd = File::open(parent)
        .map(OwnedFd::from)
        .map_err(io_err("open", parent))?;
    let dir = Dir {
        fd,
        path: parent.to_owned(),
    };
    dir.write_atomic(name, bytes, mode, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn temp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("torsensor-statedir-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn creates_with_exact_modes_and_replaces_atomically() {
        let root = temp("create");
        let state = root.join("a/state");
        let dir = Dir::open(&state, STATE_DIR_MODE).unwrap();
        assert_eq!(mode(&state), 0o750);
        let spool = dir.subdir("spool", SPOOL_DIR_MODE).unwrap();
        assert_eq!(mode(&state.join("spool")), 0o700);
        dir.write_atomic("status.json", b"{}", 0o644, true).unwrap();
        dir.write_atomic("status.json", b"{\"a\":1}", 0o644, false)
            .unwrap();
        assert_eq!(
            std::fs::read(state.join("status.json")).unwrap(),
            b"{\"a\":1}"
        );
        assert_eq!(mode(&state.join("status.json")), 0o644);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 2);
        let mut f = spool
            .open_file(
                OsStr::new("seg"),
                libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
                0o600,
            )
            .unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(mode(&state.join("spool/seg")), 0o600);
        // Opening it again appends to the same file.
        spool
            .open_file(
                OsStr::new("seg"),
                libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
                0o600,
            )
            .unwrap()
            .write_all(b"y")
            .unwrap();
        assert_eq!(std::fs::read(state.join("spool/seg")).unwrap(), b"xy");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn links_and_loose_directories_are_refused() {
        let root = temp("refuse");
        let state = root.join("state");
        Dir::open(&state, STATE_DIR_MODE).unwrap();
        // A link to a good directory is still a link.
        let link = root.join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let e = Dir::open(&link, STATE_DIR_MODE).unwrap_err();
        assert!(matches!(e, StateDirError::Symlink { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("{} is a symbolic link", link.display()))
        );
        // A link inside, where a subdirectory should be.
        std::os::unix::fs::symlink("/tmp", state.join("feeds")).unwrap();
        let dir = Dir::open(&state, STATE_DIR_MODE).unwrap();
        assert!(matches!(
            dir.subdir("feeds", STATE_DIR_MODE).unwrap_err(),
            StateDirError::Symlink { .. }
        ));
        // Writable by others.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = Dir::open(&state, STATE_DIR_MODE).unwrap_err();
        assert!(
            e.to_string()
                .contains("writable by group or others (mode 0777)"),
            "{e}"
        );
        // A file planted at the final name as a link is replaced, not followed.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o750)).unwrap();
        let victim = root.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, state.join("stats.json")).unwrap();
        write_file_atomic(&state.join("stats.json"), b"{}", 0o640).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(state.join("stats.json")).unwrap();
        assert!(meta.is_file());
        assert_eq!(meta.mode() & 0o7777, 0o640);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
