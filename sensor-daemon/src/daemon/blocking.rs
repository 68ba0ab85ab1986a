//! Opt-in blocking in the run loop: attaching at start (before the
//! capabilities are dropped), and keeping the kernel's table in step with
//! the rules (start, SIGHUP), the feeds (their bit numbers change when the
//! configuration's feeds do) and time (an exception that expires stops
//! exempting).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sensor_common::BlockRule;

use crate::alert::rules::block::{BlockMode, Resolver, compile};
use crate::alert::rules::{Action, Rules};
use crate::config::Config;
use crate::enrich::container;
use crate::feed::FeedSet;
use crate::kernel::{BlockAttach, KernelError, Probes};

/// Blocking as armed.
pub(super) struct Blocking {
    pub mode: BlockMode,
    errno: u32,
    /// Where the programs are attached (`None`: mode off, nothing attached).
    pub attach: Option<BlockAttach>,
    /// The cgroup v2 hierarchy's root, which rule paths start from.
    cgroup_root: PathBuf,
    /// What the kernel's table holds now.
    table: Vec<BlockRule>,
    /// The last compile error, said once until it changes.
    last_error: Option<String>,
}

fn block_rule_ids(rules: &Rules) -> Vec<&str> {
    rules
        .list
        .iter()
        .filter(|r| r.enabled && r.action == Action::Block)
        .map(|r| r.id.as_str())
        .collect()
}

impl Blocking {
    /// Attaches the programs and writes the table, or (mode off) says
    /// which block rules only alert. Any failure stops the start: a
    /// sensor asked to block that does not is worse than one that is down.
    pub fn arm(
        cfg: &Config,
        probes: &mut Probes,
        rules: &Rules,
        feeds: &FeedSet,
    ) -> Result<Self, KernelError> {
        let mode = cfg.blocking.mode;
        let mut blocking = Blocking {
            mode,
            errno: cfg.blocking.errno.kernel(),
            attach: None,
            cgroup_root: PathBuf::new(),
            table: Vec::new(),
            last_error: None,
        };
        if mode == BlockMode::Off {
            let ids = block_rule_ids(rules);
            if !ids.is_empty() {
                tracing::warn!(
                    "rules {} have action block, but [blocking] mode is off: they alert, nothing is blocked",
                    ids.join(", ")
                );
            }
            return Ok(blocking);
        }
        // Rule paths are cgroup v2 paths as /proc/PID/cgroup shows them,
        // from the hierarchy's root, wherever the programs are attached.
        let hierarchy = container::host_cgroup2_mount().ok_or_else(|| KernelError::Blocking {
            detail: "no cgroup v2 hierarchy is mounted (blocking needs one)".into(),
        })?;
        let root = cfg
            .blocking
            .cgroup
            .clone()
            .unwrap_or_else(|| hierarchy.clone());
        blocking.cgroup_root = hierarchy;
        blocking.table = blocking
            .compile(rules, feeds)
            .map_err(|detail| KernelError::Blocking { detail })?;
        let attach = probes.attach_blocking(&root)?;
        probes.set_blocking(mode.kernel(), blocking.errno, &blocking.table)?;
        tracing::info!(
            "blocking {}: {attach}; {} kernel entries from rules [{}]",
            mode.as_str(),
            blocking.table.len(),
            block_rule_ids(rules).join(", ")
        );
        blocking.attach = Some(attach);
        Ok(blocking)
    }

    fn compile(&self, rules: &Rules, feeds: &FeedSet) -> Result<Vec<BlockRule>, String> {
        let resolver = Resolver {
            passwd: Path::new("/etc/passwd"),
            cgroup_root: &self.cgroup_root,
        };
        compile(rules, Some(feeds), &resolver, SystemTime::now())
    }

    /// Whether `rules` compile against `feeds` (a reload checks new rules
    /// before taking them).
    pub fn check(&self, rules: &Rules, feeds: &FeedSet) -> Result<(), String> {
        if self.attach.is_none() {
            return Ok(());
        }
        self.compile(rules, feeds).map(drop)
    }

    /// Recompiles and rewrites the kernel's table if it changed (and the
    /// mode, which a reload may switch between dry-run and enforce). A
    /// failure keeps the table in force and is logged once.
    pub fn update(
        &mut self,
        probes: &mut Probes,
        rules: &Rules,
        feeds: &FeedSet,
        (mode, errno): (BlockMode, u32),
    ) {
        if self.attach.is_none() || mode == BlockMode::Off {
            return;
        }
        match self.compile(rules, feeds) {
            Ok(table) if table == self.table && mode == self.mode && errno == self.errno => {
                self.last_error = None;
            }
            Ok(table) => match probes.set_blocking(mode.kernel(), errno, &table) {
                Ok(()) => {
                    tracing::info!(
                        "blocking {}: {} kernel entries in force",
                        mode.as_str(),
                        table.len()
                    );
                    self.table = table;
                    self.mode = mode;
                    self.errno = errno;
                    self.last_error = None;
                }
                Err(e) => self.failed(e.to_string()),
            },
            Err(e) => self.failed(e),
        }
    }

    /// The mode and errno in force (what a health tick keeps).
    pub fn settings(&self) -> (BlockMode, u32) {
        (self.mode, self.errno)
    }

    fn failed(&mut self, e: String) {
        if self.last_error.as_deref() != Some(e.as_str()) {
            tracing::error!("blocking: keeping the kernel's table in force: {e}");
            self.last_error = Some(e);
        }
    }
}
