//! Opt-in blocking: the rules with `action = "block"`, compiled into the
//! kernel's `BLOCK_RULES` table (`sensor_common::BlockRule`).
//!
//! Decisions stay here, in userspace; the kernel only walks the compiled
//! table at `connect()` and at an inbound SYN, where there is no `/proc`,
//! no executable path and no command line. So a block rule, and each of
//! its exceptions, may only use what the kernel can check there:
//! `direction`, `role` and `feed` (the feed bitmasks of the match),
//! `user` (uid), `process` (the exact command name, 15 bytes at most;
//! outbound only), `cgroup` (a cgroup v2 directory and everything below
//! it) and `container_id` (the cgroups of the running containers with that
//! id prefix). A rule file that asks for more is refused when it is loaded
//! ([`check_rule`]), with the key named. Names are resolved when the table
//! is compiled ([`compile`]): users through the passwd file, cgroup paths
//! to cgroup ids under the hierarchy the programs are attached to.

use std::path::Path;
use std::time::SystemTime;

use sensor_common::{BlockMatch, BlockRule, COMM_LEN, DIR_EGRESS, DIR_INGRESS, block};
use serde::{Deserialize, Serialize};

use super::conditions::{RawWhen, RuleRole};
use super::{Action, Rule, Rules};
use crate::alert::model::Signal;
use crate::enrich::container;
use crate::feed::FeedSet;
use crate::net::Direction;

/// `[blocking] mode`: what rules with `action = "block"` do.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BlockMode {
    /// Nothing is attached; block rules alert like `action = "alert"`.
    #[default]
    Off,
    /// The programs are attached and count what they would refuse; the
    /// hits a block rule decides are alerted as "would block".
    DryRun,
    /// The kernel refuses: outbound connects fail, inbound SYNs are dropped.
    Enforce,
}

impl BlockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            BlockMode::Off => "off",
            BlockMode::DryRun => "dry-run",
            BlockMode::Enforce => "enforce",
        }
    }

    /// The value of `BLOCK_MODE[block::MODE]`.
    pub fn kernel(self) -> u32 {
        match self {
            BlockMode::Off => block::OFF,
            BlockMode::DryRun => block::DRY_RUN,
            BlockMode::Enforce => block::ENFORCE,
        }
    }
}

/// `[blocking] errno`: what a refused `connect()` returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum BlockErrno {
    /// "Operation not permitted", the cgroup hook's own answer.
    #[default]
    #[serde(rename = "EPERM")]
    Eperm,
    /// "Connection refused", as if nothing listened (Linux 5.18+).
    #[serde(rename = "ECONNREFUSED")]
    Econnrefused,
}

impl BlockErrno {
    /// The value of `BLOCK_MODE[block::ERRNO]` (0: the hook's default).
    pub fn kernel(self) -> u32 {
        match self {
            BlockErrno::Eperm => 0,
            BlockErrno::Econnrefused => libc::ECONNREFUSED as u32,
        }
    }
}

/// The keys a block rule or exception may use (see the module comment).
const KERNEL_KEYS: &str =
    "direction, role, feed, user, process (exact name), cgroup and container_id";

/// Refuses a block rule that asks for what the kernel cannot check. Run
/// when a rule file is loaded.
pub fn check_rule(rule: &Rule) -> Result<(), String> {
    if rule.action != Action::Block {
        return Ok(());
    }
    check_when(&rule.when.raw, true).map_err(|key| {
        format!(
            "rule {} (action block): `{key}` cannot be checked in the kernel at connect time; a block rule may use {KERNEL_KEYS}",
            rule.id
        )
    })?;
    for e in &rule.except {
        check_when(&e.when.raw, false).map_err(|key| {
            format!(
                "rule {} (action block): the exception at {} uses `{key}`, which the kernel cannot check; an exception of a block rule may use user, process (exact name), cgroup and container_id",
                rule.id, e.at
            )
        })?;
    }
    if rule.direction() == Some(Direction::Ingress) && rule.when.raw.process.is_some() {
        return Err(format!(
            "rule {} (action block): `process` cannot be checked for inbound blocking (no process runs when the SYN arrives); use user or cgroup (the listener's)",
            rule.id
        ));
    }
    for name in rule
        .when
        .raw
        .process
        .iter()
        .chain(
            rule.except
                .iter()
                .filter_map(|e| e.when.raw.process.as_ref()),
        )
        .flatten()
    {
        if name.is_empty() || name.len() >= COMM_LEN || name.contains(['*', '?', '[', '{']) {
            return Err(format!(
                "rule {} (action block): process {name:?} must be an exact command name of 1 to 15 bytes (the kernel compares the task's name, no globs)",
                rule.id
            ));
        }
    }
    Ok(())
}

/// The first key given that the kernel cannot check.
fn check_when(w: &RawWhen, rule_level: bool) -> Result<(), &'static str> {
    let unsupported = [
        // Only connections can be refused (a program start or a listener
        // is not blocked).
        (
            "event other than connection",
            w.event.is_some_and(|e| e != Signal::Connection),
        ),
        ("direction", !rule_level && w.direction.is_some()),
        ("role", !rule_level && w.role.is_some()),
        ("feed", !rule_level && w.feed.is_some()),
        ("confidence", w.confidence.is_some()),
        ("peer", w.peer.is_some()),
        ("local_port", w.local_port.is_some()),
        ("peer_port", w.peer_port.is_some()),
        ("executable", w.executable.is_some()),
        ("command_line", w.command_line.is_some()),
        ("command_line_regex", w.command_line_regex.is_some()),
        ("parent", w.parent.is_some()),
        (
            "container_id and cgroup together",
            w.container_id.is_some() && w.cgroup.is_some(),
        ),
        ("pod_namespace", w.pod_namespace.is_some()),
        ("pod_name", w.pod_name.is_some()),
    ];
    match unsupported.iter().find(|(_, given)| *given) {
        Some((key, _)) => Err(key),
        None => Ok(()),
    }
}

/// Most cgroup directories a `container_id` lookup walks.
const MAX_WALK: usize = 20_000;

/// Where names are resolved: the passwd file (user names) and the cgroup
/// v2 hierarchy the programs are attached to (cgroup paths).
pub struct Resolver<'a> {
    pub passwd: &'a Path,
    pub cgroup_root: &'a Path,
}

impl Resolver<'_> {
    fn uid(&self, user: &str) -> Result<u32, String> {
        if let Ok(uid) = user.parse::<u32>() {
            return Ok(uid);
        }
        let text = std::fs::read_to_string(self.passwd)
            .map_err(|e| format!("cannot read {}: {e}", self.passwd.display()))?;
        text.lines()
            .find_map(|line| {
                let mut f = line.split(':');
                (f.next() == Some(user))
                    .then(|| f.nth(1).and_then(|uid| uid.parse().ok()))
                    .flatten()
            })
            .ok_or_else(|| format!("user {user:?} is not in {}", self.passwd.display()))
    }

    /// The cgroup id and depth of `path` (`/system.slice/x.service`).
    fn cgroup(&self, path: &str) -> Result<(u64, u32), String> {
        use std::os::unix::fs::MetadataExt;
        let rel = path.trim_matches('/');
        let dir = self.cgroup_root.join(rel);
        let meta = std::fs::metadata(&dir).map_err(|e| {
            format!(
                "cgroup {path:?}: {} is not a cgroup directory ({e})",
                dir.display()
            )
        })?;
        if !meta.is_dir() {
            return Err(format!(
                "cgroup {path:?}: {} is not a directory",
                dir.display()
            ));
        }
        let level = rel.split('/').filter(|c| !c.is_empty()).count() as u32;
        // On cgroup v2 a cgroup's id is its directory's inode number.
        Ok((meta.ino(), level))
    }

    /// Every combination of the users, names and cgroups `when` lists.
    fn matches(&self, w: &RawWhen) -> Result<Vec<BlockMatch>, String> {
        let one = |v: Option<&Vec<String>>| -> Vec<Option<String>> {
            match v {
                Some(list) => list.iter().cloned().map(Some).collect(),
                None => vec![None],
            }
        };
        let mut out = Vec::new();
        // A container is its cgroup: each running one whose id starts with
        // a listed prefix (none running: the entry matches nothing yet; the
        // daemon recompiles every health tick, so it applies once it runs).
        let cgroups: Vec<Option<String>> = match &w.container_id {
            Some(ids) => ids
                .iter()
                .flat_map(|id| container::container_cgroups(self.cgroup_root, id, MAX_WALK))
                .map(Some)
                .collect(),
            None => one(w.cgroup.as_ref()),
        };
        for user in one(w.user.as_ref()) {
            for process in one(w.process.as_ref()) {
                for cgroup in &cgroups {
                    let mut m = BlockMatch::ANY;
                    if let Some(u) = &user {
                        m.uid = self.uid(u)?;
                    }
                    if let Some(p) = &process {
                        m.comm[..p.len()].copy_from_slice(p.as_bytes());
                    }
                    if let Some(c) = cgroup {
                        (m.cgroup_id, m.cgroup_level) = self.cgroup(c)?;
                    }
                    out.push(m);
                }
            }
        }
        Ok(out)
    }
}

/// The feed masks a rule's role and feed names select; without the feeds
/// (`rules check`), every feed bit.
fn masks(when: &RawWhen, feeds: Option<&FeedSet>) -> Result<(u32, u32), String> {
    let Some(feeds) = feeds else {
        return Ok((u32::MAX, u32::MAX));
    };
    if let Some(names) = &when.feed
        && let Some(unknown) = names
            .iter()
            .find(|n| !feeds.feeds().iter().any(|f| &f.name == *n))
    {
        return Err(format!("feed {unknown:?} is not armed"));
    }
    let (mut exit, mut relay) = (0u32, 0u32);
    for (i, feed) in feeds.feeds().iter().enumerate() {
        let bit = 1u32 << i;
        if when.feed.as_ref().is_some_and(|n| !n.contains(&feed.name)) {
            continue;
        }
        let socks = feed.data.socks_ports;
        match when.role {
            None => {
                exit |= bit;
                relay |= bit;
            }
            Some(RuleRole::Exit) if !socks => exit |= bit,
            Some(RuleRole::Relay) if !socks => relay |= bit,
            Some(RuleRole::Socks) if socks => relay |= bit,
            Some(_) => {}
        }
    }
    Ok((exit, relay))
}

/// The kernel's table for the enabled block rules, in the order they are
/// tried, with the exceptions in force at `now`. An error names the rule.
/// Without `feeds` (`torsensor rules check`), feed names are not checked.
pub fn compile(
    rules: &Rules,
    feeds: Option<&FeedSet>,
    resolver: &Resolver<'_>,
    now: SystemTime,
) -> Result<Vec<BlockRule>, String> {
    let mut table = Vec::new();
    for rule in rules
        .list
        .iter()
        .filter(|r| r.enabled && r.action == Action::Block)
    {
        let fail = |m: String| format!("rule {} (action block): {m}", rule.id);
        let (exit_feeds, relay_feeds) = masks(&rule.when.raw, feeds).map_err(fail)?;
        let mut except = Vec::new();
        for e in rule
            .except
            .iter()
            .filter(|e| e.expires.is_none_or(|t| now < t))
        {
            except.extend(resolver.matches(&e.when.raw).map_err(fail)?);
        }
        if except.len() > block::MAX_EXCEPT {
            return Err(fail(format!(
                "its exceptions expand to {} kernel entries, more than {}",
                except.len(),
                block::MAX_EXCEPT
            )));
        }
        let directions: &[u8] = match rule.direction() {
            Some(Direction::Egress) => &[DIR_EGRESS],
            Some(Direction::Ingress) => &[DIR_INGRESS],
            None => &[DIR_EGRESS, DIR_INGRESS],
        };
        for &direction in directions {
            for scope in resolver.matches(&rule.when.raw).map_err(fail)? {
                let mut entry = BlockRule::NONE;
                entry.exit_feeds = exit_feeds;
                entry.relay_feeds = relay_feeds;
                entry.direction = direction;
                entry.scope = scope;
                entry.except_count = except.len() as u8;
                entry.except[..except.len()].copy_from_slice(&except);
                table.push(entry);
            }
        }
    }
    if table.len() > block::MAX_RULES as usize {
        return Err(format!(
            "the block rules expand to {} kernel entries, more than {}",
            table.len(),
            block::MAX_RULES
        ));
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Feed, Origin, parse::parse};
    use std::sync::Arc;

    fn feed_set(feeds: &[(&str, &str)]) -> FeedSet {
        let feed = |(name, text): &(&str, &str)| {
            Arc::new(Feed {
                name: (*name).into(),
                location: format!("/lab/{name}"),
                origin: Origin::Network,
                fetched: None,
                data: parse(text.as_bytes(), None, true).unwrap(),
            })
        };
        FeedSet::new(feeds.iter().map(feed).collect()).unwrap()
    }

    fn rules(text: &str) -> Result<Rules, String> {
        let mut r = Rules::builtin().unwrap();
        r.add_file("b.toml", text, false)
            .map_err(|e| e.to_string())?;
        Ok(r)
    }

    fn resolver(dir: &Path) -> Resolver<'_> {
        Resolver {
            passwd: Path::new("/etc/passwd"),
            cgroup_root: dir,
        }
    }

    #[test]
    fn a_block_rule_compiles_to_masks_scope_and_exceptions() {
        let dir = std::env::temp_dir().join(format!("ts-block-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        let r = rules(
            "[[rule]]\nid = \"B-1\"\nname = \"b\"\ndescription = \"d\"\nseverity = 73\npriority = \"Warning\"\naction = \"block\"\n\
             when = { direction = \"egress\", role = \"relay\", cgroup = [\"/a/b\"] }\n\
             [[rule.except]]\nreason = \"relay\"\nwhen = { user = [\"root\", \"7\"], process = [\"tor\"] }\n",
        )
        .unwrap();
        let feeds = feed_set(&[("one", "192.0.2.1\n"), ("two", "198.51.100.0/24\n")]);
        let table = compile(&r, Some(&feeds), &resolver(&dir), SystemTime::now()).unwrap();
        assert_eq!(table.len(), 1);
        let e = &table[0];
        assert_eq!(
            (e.direction, e.exit_feeds, e.relay_feeds),
            (DIR_EGRESS, 0, 0b11)
        );
        assert_eq!(e.scope.cgroup_level, 2);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            e.scope.cgroup_id,
            std::fs::metadata(dir.join("a/b")).unwrap().ino()
        );
        assert_eq!(e.except_count, 2);
        assert_eq!(e.except[0].uid, 0);
        assert_eq!(e.except[1].uid, 7);
        assert_eq!(&e.except[0].comm[..4], b"tor\0");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_direction_means_both_and_expired_exceptions_are_left_out() {
        let r = rules(
            "[[rule]]\nid = \"B-2\"\nname = \"b\"\ndescription = \"d\"\nseverity = 73\npriority = \"Warning\"\naction = \"block\"\n\
             when = { feed = [\"two\"] }\n\
             [[rule.except]]\nreason = \"old\"\nexpires = \"2020-01-01\"\nwhen = { user = [\"0\"] }\n",
        )
        .unwrap();
        let feeds = feed_set(&[("one", "192.0.2.1\n"), ("two", "198.51.100.0/24\n")]);
        let table = compile(
            &r,
            Some(&feeds),
            &resolver(Path::new("/")),
            SystemTime::now(),
        )
        .unwrap();
        let dirs: Vec<u8> = table.iter().map(|e| e.direction).collect();
        assert_eq!(dirs, [DIR_EGRESS, DIR_INGRESS]);
        assert!(
            table
                .iter()
                .all(|e| e.exit_feeds == 0b10 && e.except_count == 0)
        );
    }

    #[test]
    fn a_container_id_scopes_to_the_running_containers_cgroup() {
        let dir = std::env::temp_dir().join(format!("ts-block-c-{}", std::process::id()));
        let id = "0123456789abcdef".repeat(4);
        let scope = format!("system.slice/docker-{id}.scope");
        std::fs::create_dir_all(dir.join(&scope).join("nested")).unwrap();
        let text = |prefix: &str| {
            format!(
                "[[rule]]\nid = \"B-5\"\nname = \"b\"\ndescription = \"d\"\nseverity = 73\npriority = \"Warning\"\naction = \"block\"\nwhen = {{ direction = \"egress\", container_id = [\"{prefix}\"] }}\n"
            )
        };
        let feeds = feed_set(&[("one", "192.0.2.1\n")]);
        let r = rules(&text(&id[..12])).unwrap();
        let table = compile(&r, Some(&feeds), &resolver(&dir), SystemTime::now()).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            table.len(),
            1,
            "the container's own cgroup, not the nested one"
        );
        assert_eq!(
            table[0].scope.cgroup_id,
            std::fs::metadata(dir.join(&scope)).unwrap().ino()
        );
        assert_eq!(table[0].scope.cgroup_level, 2);
        // Not running: nothing to scope to yet, so nothing is blocked.
        let r = rules(&text("fedcba9876543210")).unwrap();
        let table = compile(&r, Some(&feeds), &resolver(&dir), SystemTime::now()).unwrap();
        assert!(table.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn what_the_kernel_cannot_check_is_refused_with_the_key() {
        let cases = [
            (
                "when = { direction = \"egress\", executable = [\"/usr/bin/*\"] }",
                "`executable` cannot be checked in the kernel",
            ),
            (
                "when = { direction = \"egress\", process = [\"cur*\"] }",
                "must be an exact command name",
            ),
            (
                "when = { event = \"exec\" }",
                "`event other than connection` cannot be checked",
            ),
            (
                "when = { direction = \"ingress\", process = [\"nginx\"] }",
                "`process` cannot be checked for inbound blocking",
            ),
            (
                "when = { direction = \"egress\" }\n[[rule.except]]\nreason = \"r\"\nwhen = { command_line = [\"x\"] }",
                "uses `command_line`, which the kernel cannot check",
            ),
        ];
        for (when, want) in cases {
            let text = format!(
                "[[rule]]\nid = \"B-3\"\nname = \"b\"\ndescription = \"d\"\nseverity = 73\npriority = \"Warning\"\naction = \"block\"\n{when}\n"
            );
            let err = rules(&text).unwrap_err();
            assert!(err.contains("b.toml:1:1: rule B-3 (action block)"), "{err}");
            assert!(err.contains(want), "{when}: {err}");
        }
    }

    #[test]
    fn unknown_names_fail_the_compile_with_the_rule_named() {
        let feeds = feed_set(&[("one", "192.0.2.1\n")]);
        for (when, want) in [
            ("when = { feed = [\"nope\"] }", "feed \"nope\" is not armed"),
            (
                "when = { user = [\"no-such-user-here\"] }",
                "user \"no-such-user-here\" is not in /etc/passwd",
            ),
            (
                "when = { cgroup = [\"/no/such\"] }",
                "is not a cgroup directory",
            ),
        ] {
            let text = format!(
                "[[rule]]\nid = \"B-4\"\nname = \"b\"\ndescription = \"d\"\nseverity = 73\npriority = \"Warning\"\naction = \"block\"\n{when}\n"
            );
            let r = rules(&text).unwrap();
            let err = compile(
                &r,
                Some(&feeds),
                &resolver(Path::new("/")),
                SystemTime::now(),
            )
            .unwrap_err();
            assert!(err.starts_with("rule B-4 (action block): "), "{err}");
            assert!(err.contains(want), "{err}");
        }
    }
}
