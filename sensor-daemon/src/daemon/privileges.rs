//! Least privilege: once the programs are attached, the daemon keeps only the
//! capabilities its running loop still uses, in every set (effective,
//! permitted, inheritable, ambient and the bounding set), and sets
//! `no_new_privs`, so that nothing it may later execute or be tricked into
//! can regain the rest.

use caps::{CapSet, Capability, CapsHashSet};

/// What the running daemon keeps, and why.
pub const KEPT: [(Capability, &str); 3] = [
    (
        Capability::CAP_BPF,
        "map updates on feed refresh and SIGHUP, counters, the pending-map sweep (kernels that disable unprivileged BPF check it on every bpf() call)",
    ),
    (
        Capability::CAP_SYS_PTRACE,
        "/proc/<pid>/exe of other users' processes (process.executable)",
    ),
    (
        Capability::CAP_DAC_READ_SEARCH,
        "/proc and cgroup files of other users' processes, and feed or output files readable only by their owner",
    ),
];

/// Kept besides [`KEPT`] when gateway mode attached netlink TC filters:
/// they are removed at exit with a netlink request that needs it (TCX links
/// and cgroup links go with their file descriptors and need nothing).
pub const KEPT_FOR_NETLINK_FILTERS: (Capability, &str) = (
    Capability::CAP_NET_ADMIN,
    "removing gateway mode's netlink TC filters at exit (attach = netlink)",
);

/// The capabilities enrichment needs for other users' processes.
const FOR_PROC: [Capability; 2] = [Capability::CAP_SYS_PTRACE, Capability::CAP_DAC_READ_SEARCH];

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("cannot drop capabilities ({set}): {source}")]
    Caps {
        set: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(#[source] std::io::Error),
}

/// What `drop_unneeded` left and took.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Capabilities still permitted.
    pub kept: Vec<String>,
    /// How many were removed from the bounding set.
    pub bounding_dropped: usize,
    /// Left in the bounding set beyond [`KEPT`] because this process may
    /// not change it (no `CAP_SETPCAP`: whoever started it chose the set).
    pub bounding_left: Vec<String>,
}

fn names(set: &CapsHashSet) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    v.sort();
    v
}

/// Drops every capability but [`KEPT`] from all five sets (the bounding set
/// first, while `CAP_SETPCAP` is still there), then sets `no_new_privs`.
pub fn drop_unneeded() -> Result<Dropped, PrivilegeError> {
    drop_all_but(&[])
}

/// [`drop_unneeded`], keeping `also` too.
pub fn drop_all_but(also: &[Capability]) -> Result<Dropped, PrivilegeError> {
    let err = |set| move |source| PrivilegeError::Caps { set, source };
    let keep: CapsHashSet = KEPT
        .iter()
        .map(|(c, _)| *c)
        .chain(also.iter().copied())
        .collect();
    let bounding = caps::read(None, CapSet::Bounding).map_err(err("bounding"))?;
    let extra: CapsHashSet = bounding.difference(&keep).copied().collect();
    let may_bound = caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)
        .map_err(err("effective"))?;
    let (mut bounding_dropped, mut bounding_left) = (0, Vec::new());
    if may_bound {
        for cap in &extra {
            caps::drop(None, CapSet::Bounding, *cap).map_err(err("bounding"))?;
            bounding_dropped += 1;
        }
    } else {
        bounding_left = names(&extra);
    }
    caps::clear(None, CapSet::Ambient).map_err(err("ambient"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(err("permitted"))?;
    let left: CapsHashSet = permitted.intersection(&keep).copied().collect();
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(err("inheritable"))?;
    caps::set(None, CapSet::Effective, &left).map_err(err("effective"))?;
    caps::set(None, CapSet::Permitted, &left).map_err(err("permitted"))?;
    crate::sys::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;
    Ok(Dropped {
        kept: names(&left),
        bounding_dropped,
        bounding_left,
    })
}

/// The capabilities enrichment of other users' processes needs but this
/// process does not have (checked once at start, before the drop).
pub fn missing_for_proc() -> Vec<String> {
    let effective = caps::read(None, CapSet::Effective).unwrap_or_default();
    FOR_PROC
        .iter()
        .filter(|c| !effective.contains(c))
        .map(|c| c.to_string())
        .collect()
}

/// Warns once when enrichment of other users' processes will be partial.
pub(super) fn warn_missing_for_proc() {
    let missing = missing_for_proc();
    if !missing.is_empty() {
        tracing::warn!(
            "without {}, process.executable (and other /proc details) stay empty for processes of other users",
            missing.join(" and ")
        );
    }
}

/// [`drop_unneeded`], and one line saying what was kept and dropped.
pub(super) fn drop_and_log(also: &[Capability]) -> Result<(), PrivilegeError> {
    let dropped = drop_all_but(also)?;
    tracing::info!(
        "privileges: kept {} (README, \"Security\"); {} dropped from the bounding set{}; no_new_privs set",
        dropped.kept.join(", "),
        dropped.bounding_dropped,
        if dropped.bounding_left.is_empty() {
            String::new()
        } else {
            format!(
                " ({} left there: no CAP_SETPCAP to change it)",
                dropped.bounding_left.join(", ")
            )
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_set_is_the_documented_three_and_never_admin() {
        let kept: Vec<_> = KEPT.iter().map(|(c, _)| *c).collect();
        assert!(!kept.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!kept.contains(&Capability::CAP_PERFMON));
        assert!(!kept.contains(&Capability::CAP_SETPCAP));
        for cap in FOR_PROC {
            assert!(kept.contains(&cap), "{cap}");
        }
        assert!(KEPT.iter().all(|(_, why)| !why.is_empty()));
    }
}
