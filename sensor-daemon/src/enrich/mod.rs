//! Enrichment: what the kernel could not give, read from the host when an
//! alert is built.
//!
//! Owns the process details from `/proc` ([`process`]: executable, command
//! line, parent, user, with a short-lived cache) and container and pod
//! attribution from cgroup v2 paths ([`container`]), named from the
//! kubelet's log directories ([`kubelet`]). Reads files, never the
//! kernel's maps; may use [`crate::kernel::event`] (what the kernel
//! captured) and nothing above it.

pub mod container;
pub mod kubelet;
pub mod process;

pub use container::{ContainerCache, ContainerInfo};
pub use process::{ProcessCache, ProcessInfo};
