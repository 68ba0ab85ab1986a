//! The hook plan: which kernel hooks serve which purpose on the running
//! kernel. Chosen once at start-up from what actually loads and attaches
//! (not from version numbers), best first, and reported in the log,
//! `status.json` and `torsensor hooks`.
//!
//! | purpose | hook | kernels |
//! |---|---|---|
//! | connects, accepts, shutdown, close | `tp_btf:inet_sock_set_state` | every kernel with BTF (required) |
//! | inbound: first read or write | `tp_btf:sock_send_length`, `sock_recv_length` | 6.4+ |
//! | inbound: first read or write | `fentry:tcp_sendmsg`, `tcp_recvmsg` | BPF trampolines (stock distribution kernels) |
//! | inbound: first read or write | `kprobe:tcp_sendmsg`, `tcp_recvmsg` | `CONFIG_KPROBES` |
//! | inbound: first read | `tp_btf:tcp_rcv_space_adjust` | every kernel with BTF |
//!
//! Without any of the inbound hooks the plan still works: shutdown and close
//! name the process, and a connection held open past `inbound_wait` is
//! reported without one. Syscall tracepoints are not used at all: enabling
//! any of them sends every syscall of every task through the slow path.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// A BTF tracepoint (`tp_btf`), by tracepoint name.
    Tracepoint(&'static str),
    /// `fentry` on a kernel function (a BPF trampoline).
    FEntry(&'static str),
    /// A kprobe on a kernel function's entry.
    KProbe(&'static str),
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hook::Tracepoint(name) => write!(f, "tp_btf:{name}"),
            Hook::FEntry(name) => write!(f, "fentry:{name}"),
            Hook::KProbe(name) => write!(f, "kprobe:{name}"),
        }
    }
}

/// The program every plan needs (and its hook): connects, accepts,
/// shutdown and close.
pub const STATE_PROGRAM: (&str, Hook) = ("sock_state", Hook::Tracepoint("inet_sock_set_state"));

/// How an inbound hit learns which process uses the accepted socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InboundHooks {
    /// `sock_send_length` / `sock_recv_length` BTF tracepoints (6.4+).
    SockLength,
    /// `fentry` on `tcp_sendmsg` / `tcp_recvmsg`.
    Fentry,
    /// kprobes on `tcp_sendmsg` / `tcp_recvmsg`.
    Kprobe,
    /// The `tcp_rcv_space_adjust` BTF tracepoint: reads only.
    RcvSpace,
    /// No hook of its own: shutdown and close only.
    CloseOnly,
}

impl InboundHooks {
    /// Every plan, in the order `auto` tries them: reads and writes before
    /// reads only, a stable tracepoint before a trampoline before a kprobe
    /// (cheapest and least fragile first).
    pub const BEST_FIRST: [InboundHooks; 5] = [
        InboundHooks::SockLength,
        InboundHooks::Fentry,
        InboundHooks::Kprobe,
        InboundHooks::RcvSpace,
        InboundHooks::CloseOnly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            InboundHooks::SockLength => "sock-length",
            InboundHooks::Fentry => "fentry",
            InboundHooks::Kprobe => "kprobe",
            InboundHooks::RcvSpace => "rcv-space",
            InboundHooks::CloseOnly => "close-only",
        }
    }

    /// The programs (by name in the eBPF object) and where they go.
    pub fn programs(self) -> &'static [(&'static str, Hook)] {
        match self {
            InboundHooks::SockLength => &[
                ("sock_send", Hook::Tracepoint("sock_send_length")),
                ("sock_recv", Hook::Tracepoint("sock_recv_length")),
            ],
            InboundHooks::Fentry => &[
                ("send_fentry", Hook::FEntry("tcp_sendmsg")),
                ("recv_fentry", Hook::FEntry("tcp_recvmsg")),
            ],
            InboundHooks::Kprobe => &[
                ("send_kprobe", Hook::KProbe("tcp_sendmsg")),
                ("recv_kprobe", Hook::KProbe("tcp_recvmsg")),
            ],
            InboundHooks::RcvSpace => &[("rcv_space", Hook::Tracepoint("tcp_rcv_space_adjust"))],
            InboundHooks::CloseOnly => &[],
        }
    }

    /// What this plan misses compared with the best one.
    pub fn degraded(self) -> Option<&'static str> {
        match self {
            InboundHooks::SockLength | InboundHooks::Fentry | InboundHooks::Kprobe => None,
            InboundHooks::RcvSpace => Some(
                "inbound: a process is named at its first read, shutdown or close, not at a write",
            ),
            InboundHooks::CloseOnly => Some(
                "inbound: a process is named only at shutdown or close; a connection kept open past inbound_wait is reported without one",
            ),
        }
    }

    /// Every program any plan may load, the state program first.
    pub fn all_programs() -> impl Iterator<Item = &'static str> {
        std::iter::once(STATE_PROGRAM.0).chain(
            Self::BEST_FIRST
                .into_iter()
                .flat_map(|p| p.programs().iter().map(|(name, _)| *name)),
        )
    }

    /// The names accepted by `--inbound-hooks` (besides `auto`).
    pub fn names() -> String {
        Self::BEST_FIRST.map(Self::name).join(", ")
    }
}

impl fmt::Display for InboundHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `auto` (None) or one plan by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboundChoice(pub Option<InboundHooks>);

impl FromStr for InboundChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(InboundChoice(None));
        }
        InboundHooks::BEST_FIRST
            .into_iter()
            .find(|h| h.name() == s)
            .map(|h| InboundChoice(Some(h)))
            .ok_or_else(|| {
                format!(
                    "{s:?} is not an inbound hook plan: auto, {}",
                    InboundHooks::names()
                )
            })
    }
}

impl<'de> Deserialize<'de> for InboundChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// A plan that was tried and could not be used, and the kernel's reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    pub plan: InboundHooks,
    pub reason: String,
}

/// What runs on this kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookPlan {
    /// `uname -r`.
    pub kernel: String,
    /// The hook that sees every connect and accept (and every shutdown and
    /// close, which also name an inbound connection's process).
    pub connections: String,
    /// How inbound hits are attributed to a process.
    pub inbound: InboundHooks,
    /// The hooks `inbound` attaches.
    pub inbound_hooks: Vec<String>,
    /// What is lost against the best plan, if anything.
    pub degraded: Option<String>,
    /// Better plans that could not be used here, and why.
    pub unavailable: Vec<Unavailable>,
}

impl HookPlan {
    pub fn new(inbound: InboundHooks, unavailable: Vec<Unavailable>) -> Self {
        HookPlan {
            kernel: kernel_release(),
            connections: STATE_PROGRAM.1.to_string(),
            inbound,
            inbound_hooks: inbound
                .programs()
                .iter()
                .map(|(_, hook)| hook.to_string())
                .collect(),
            degraded: inbound.degraded().map(str::to_owned),
            unavailable,
        }
    }
}

/// One line: what serves outbound, what serves inbound attribution, what is
/// degraded and why the better plans are not used.
impl fmt::Display for HookPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel {}: connections via {}; inbound attribution: {}",
            self.kernel, self.connections, self.inbound
        )?;
        if self.inbound_hooks.is_empty() {
            write!(f, " (shutdown/close only)")?;
        } else {
            write!(f, " ({} + shutdown/close)", self.inbound_hooks.join(", "))?;
        }
        match &self.degraded {
            Some(d) => write!(f, "; DEGRADED: {d}")?,
            None => write!(f, "; degraded: nothing")?,
        }
        for u in &self.unavailable {
            write!(f, "; {} unavailable: {}", u.plan, u.reason)?;
        }
        Ok(())
    }
}

/// The running kernel's release, as `uname -r` prints it.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plan_name_parses_back_and_auto_means_none() {
        for plan in InboundHooks::BEST_FIRST {
            assert_eq!(
                plan.name().parse::<InboundChoice>(),
                Ok(InboundChoice(Some(plan)))
            );
            let json = serde_json::to_string(&plan).unwrap();
            assert_eq!(json, format!("\"{}\"", plan.name()));
        }
        assert_eq!("auto".parse::<InboundChoice>(), Ok(InboundChoice(None)));
        let err = "syscalls".parse::<InboundChoice>().unwrap_err();
        assert!(
            err.contains("auto, sock-length, fentry, kprobe, rcv-space, close-only"),
            "{err}"
        );
    }

    #[test]
    fn plans_that_see_writes_are_preferred_and_only_the_others_are_degraded() {
        let degraded: Vec<_> = InboundHooks::BEST_FIRST
            .iter()
            .map(|p| p.degraded().is_some())
            .collect();
        assert_eq!(degraded, [false, false, false, true, true]);
        assert!(InboundHooks::CloseOnly.programs().is_empty());
        // Every program name is distinct (each is loaded at most once).
        let mut names: Vec<_> = InboundHooks::all_programs().collect();
        let all = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all);
    }

    #[test]
    fn the_plan_line_names_every_hook_and_every_reason() {
        let plan = HookPlan {
            kernel: "6.1.0-28-amd64".into(),
            ..HookPlan::new(
                InboundHooks::RcvSpace,
                vec![Unavailable {
                    plan: InboundHooks::SockLength,
                    reason: "tp_btf:sock_send_length: not in this kernel".into(),
                }],
            )
        };
        assert_eq!(
            plan.to_string(),
            "kernel 6.1.0-28-amd64: connections via tp_btf:inet_sock_set_state; inbound attribution: rcv-space (tp_btf:tcp_rcv_space_adjust + shutdown/close); DEGRADED: inbound: a process is named at its first read, shutdown or close, not at a write; sock-length unavailable: tp_btf:sock_send_length: not in this kernel"
        );
    }
}
