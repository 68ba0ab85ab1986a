//! Tor history (issue 16): when an address was a Tor relay or was seen
//! exiting, from CollecTor's archives and single documents, queried at a
//! time rather than now.
//!
//! - [`import`] reads documents (single files, directories of them,
//!   CollecTor's monthly `.tar.xz` archives streamed member by member, and
//!   downloaded bodies) with the feed parsers of [`crate::feed::parse`];
//! - [`index`] keeps, per address, sorted and merged intervals per role,
//!   their details (fingerprint, nickname, ORPorts, flags) deduplicated in
//!   a table, and the digests of the documents already imported; it is
//!   stored in one versioned binary file written atomically, and queried
//!   by binary search.
//!
//! Semantics, after ExoneraTor's: a relay interval is the union of the
//! `valid-after`..`fresh-until` spans of the consensuses that list the
//! address (consecutive ones merged); an exit interval is the union of the
//! exit lists' test times of the address, merged when less than
//! [`index::EXIT_MERGE_GAP`] apart. A query at time T matches a relay
//! interval that comes within a day of T on either side and an exit
//! interval from two days before T to one day after ([`index::Window`],
//! a setting); each hit says how far T is from its interval.
//!
//! Layer 3: above [`crate::feed`] (its parsers) and [`crate::statedir`]
//! (the index file), below everything that alerts.

pub mod import;
pub mod index;

pub use import::{ImportReport, Importer};
pub use index::{Builder, Hit, Index, IndexError, Role, Window};

/// Name of the index file in the history directory.
pub const INDEX_FILE: &str = "index.tshist";
/// Mode of the history directory (as the state directory).
pub const HISTORY_DIR_MODE: u32 = 0o750;
/// Mode of the index file.
pub const INDEX_FILE_MODE: u32 = 0o640;
/// Default history directory: `history/` under the default state directory.
pub const DEFAULT_HISTORY_DIR: &str = "/var/lib/torsensor/history";

use std::ffi::OsStr;
use std::io;
use std::path::{Path, PathBuf};

use crate::statedir::{Dir, StateDirError};

/// Why the history directory or its index could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Dir(#[from] StateDirError),
    #[error("{path}: {error}; move it away to start a new index")]
    Index { path: PathBuf, error: IndexError },
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("no history index at {path}: run `torsensor history import` first")]
    Missing { path: PathBuf },
}

/// Opens (creating it 0750 if missing) and checks the history directory,
/// as the state directory is checked: not a link, ours, not writable by
/// others.
pub fn open_dir(path: &Path) -> Result<Dir, HistoryError> {
    Ok(Dir::open(path, HISTORY_DIR_MODE)?)
}

/// The index in `dir`, if there is one (read without following a link,
/// with memory bounded by its size).
pub fn load(dir: &Dir) -> Result<Option<Index>, HistoryError> {
    let path = dir.path().join(INDEX_FILE);
    let file = match dir.open_read(OsStr::new(INDEX_FILE)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(HistoryError::Read { path, error }),
    };
    let len = file
        .metadata()
        .map_err(|error| HistoryError::Read {
            path: path.clone(),
            error,
        })?
        .len();
    Index::read(file, len)
        .map(Some)
        .map_err(|error| HistoryError::Index { path, error })
}

/// An existing history directory's index (for queries: nothing is
/// created).
pub fn load_existing(path: &Path) -> Result<Index, HistoryError> {
    let missing = || HistoryError::Missing {
        path: path.to_owned(),
    };
    if std::fs::symlink_metadata(path).is_err() {
        return Err(missing());
    }
    load(&open_dir(path)?)?.ok_or_else(missing)
}

/// Replaces the index in `dir` atomically (temporary file, fsync, rename).
pub fn save(dir: &Dir, index: &Index) -> Result<u64, HistoryError> {
    let bytes = index.to_bytes();
    dir.write_atomic(INDEX_FILE, &bytes, INDEX_FILE_MODE, true)?;
    Ok(bytes.len() as u64)
}
