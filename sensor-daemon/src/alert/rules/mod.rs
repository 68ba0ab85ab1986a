//! Detection rules: the shipped file (`rules/tor.toml`, compiled in) and an
//! operator directory (`rules_dir`, default `/etc/torsensor/rules.d/`),
//! and the decision for each hit.
//!
//! A rule file is TOML: `[[rule]]` tables with `id`, `name`,
//! `description`, `severity` (0-100), `priority` (Falco's names), `tags`,
//! `enabled` (default true), `action` (`alert`, the default, or `log`:
//! written to the sensor's log, not to the outputs) and `when = { ... }`
//! (see [`conditions`]); and `[[rule.except]]` tables, each with a
//! `reason`, an optional `expires` date and its own `when`.
//!
//! Files of the directory are read in name order. A rule whose `id` is
//! already known changes that rule: the keys it gives replace the known
//! ones, and its exceptions are added (so `enabled = false` disables a
//! shipped rule, `[[rule.except]]` allowlists under it). A new id is a new
//! rule, tried **before** the shipped ones, in file order: the first enabled
//! rule whose `when` holds decides; if one of its exceptions holds (and has
//! not expired), the hit is counted for that exception and not alerted.
//!
//! Evaluation is in userspace, on hits only, against the typed [`Alert`].

pub mod block;
pub mod conditions;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

pub use conditions::{RawWhen, RuleRole, When};

use crate::alert::model::{Alert, RuleRef, Signal};
use crate::feed::Role;
use crate::net::Direction;

/// The shipped rule file.
pub const BUILTIN_RULES: &str = include_str!("../../../../rules/tor.toml");
/// Where the shipped rules say they come from (`rule.ruleset`).
pub const BUILTIN_NAME: &str = "rules/tor.toml";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleError {
    /// A file that cannot be used: `file:line:column: message`.
    #[error("rules file {file}:{line}:{column}: {message}")]
    Parse {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("rules directory {dir}: {message}")]
    Dir { dir: String, message: String },
}

/// What a rule does with the hits it decides.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// An alert to the outputs.
    #[default]
    Alert,
    /// A line in the sensor's log only.
    Log,
    /// Refused in the kernel when `[blocking] mode = "enforce"` (and
    /// alerted as denied), alerted as "would block" in dry-run, alerted
    /// like `alert` when blocking is off. See [`block`].
    Block,
}

/// One exception (allowlist entry) of a rule.
#[derive(Debug, Clone)]
pub struct Exception {
    pub reason: String,
    /// Not applied from this time on.
    pub expires: Option<SystemTime>,
    pub when: When,
    /// Where it was written (`file:line`).
    pub at: String,
}

/// One rule in force.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub description: String,
    pub severity: u8,
    pub priority: String,
    pub tags: Vec<String>,
    pub enabled: bool,
    pub action: Action,
    pub when: When,
    pub except: Vec<Exception>,
    /// The file that defined it (`rules/tor.toml`, or a `rules.d` file).
    pub origin: String,
}

impl Rule {
    /// The direction it requires (`when.direction`).
    pub fn direction(&self) -> Option<Direction> {
        self.when.raw.direction
    }

    /// The signal it applies to (`when.event`, connections unless given).
    pub fn event(&self) -> Signal {
        self.when.event().unwrap_or_default()
    }

    /// `rule.*` of an alert it decided.
    pub fn reference(&self) -> RuleRef {
        RuleRef {
            id: self.id.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            ruleset: if self.origin == BUILTIN_NAME {
                "torsensor-builtin".into()
            } else {
                self.origin.clone()
            },
        }
    }
}

/// `[[rule]]` as written (every key optional: an override gives few).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: String,
    name: Option<String>,
    description: Option<String>,
    severity: Option<u8>,
    priority: Option<String>,
    tags: Option<Vec<String>>,
    enabled: Option<bool>,
    action: Option<String>,
    when: Option<RawWhen>,
    #[serde(default)]
    except: Vec<toml::Spanned<RawException>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawException {
    reason: String,
    expires: Option<String>,
    when: RawWhen,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

/// The decision for one hit.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'a> {
    /// Alert (or log, per the rule's action) under this rule.
    Rule(&'a Rule),
    /// The rule's exception number `.1` holds: counted, not alerted.
    Excepted(&'a Rule, usize),
    /// No enabled rule holds.
    Unmatched,
}

/// The rules in force, in the order they are tried.
#[derive(Debug, Clone)]
pub struct Rules {
    pub list: Vec<Rule>,
    /// The files read, in order.
    pub files: Vec<String>,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// `2027-01-31` (the end of that day, UTC) or an RFC 3339 time.
fn parse_expiry(text: &str) -> Option<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Some(t);
    }
    humantime::parse_rfc3339_weak(&format!("{text} 23:59:59")).ok()
}

impl Rules {
    /// The shipped rules only.
    pub fn builtin() -> Result<Self, RuleError> {
        let mut rules = Rules {
            list: Vec::new(),
            files: Vec::new(),
        };
        rules.add_file(BUILTIN_NAME, BUILTIN_RULES, true)?;
        Ok(rules)
    }

    /// One file parsed on its own (as the only file besides nothing).
    pub fn parse(file: &str, text: &str) -> Result<Self, RuleError> {
        let mut rules = Rules {
            list: Vec::new(),
            files: Vec::new(),
        };
        rules.add_file(file, text, true)?;
        Ok(rules)
    }

    /// The shipped rules, then every `*.toml` of `dir` in name order (a
    /// directory that does not exist adds nothing).
    pub fn load(dir: Option<&Path>) -> Result<Self, RuleError> {
        let mut rules = Self::builtin()?;
        if let Some(dir) = dir {
            for path in rule_files(dir)? {
                let text = std::fs::read_to_string(&path).map_err(|e| RuleError::Dir {
                    dir: dir.display().to_string(),
                    message: format!("{}: {e}", path.display()),
                })?;
                rules.add_file(&path.display().to_string(), &text, false)?;
            }
        }
        Ok(rules)
    }

    /// Adds a file's rules: new ids (before the shipped rules unless
    /// `shipped`), or changes to known ones. All of the file or nothing:
    /// on an error the rules are as they were.
    pub fn add_file(&mut self, file: &str, text: &str, shipped: bool) -> Result<(), RuleError> {
        let src = Source { file, text };
        let parsed: RuleFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            src.err(offset, e.message().to_owned())
        })?;
        let mut next = self.clone();
        next.files.push(file.to_owned());
        let mut new_rules: Vec<Rule> = Vec::new();
        for spanned in parsed.rule {
            let at = spanned.span().start;
            let raw = spanned.into_inner();
            let id = raw.id.clone();
            let except = src.exceptions(&id, &raw.except)?;
            let action = src.action(at, &id, raw.action.as_deref())?;
            let when = raw
                .when
                .clone()
                .map(When::compile_rule)
                .transpose()
                .map_err(|m| src.err(at, format!("rule {id}: {m}")))?;
            src.check_scalars(at, &raw)?;
            let rule = if let Some(known) = next.list.iter_mut().find(|r| r.id == id) {
                merge(known, raw, action, when, except);
                &*known
            } else if new_rules.iter().any(|r| r.id == id) {
                return Err(src.err(at, format!("rule {id} is defined twice in this file")));
            } else {
                new_rules.push(src.new_rule(at, raw, action, when, except)?);
                &new_rules[new_rules.len() - 1]
            };
            block::check_rule(rule).map_err(|m| src.err(at, m))?;
        }
        if shipped {
            next.list.extend(new_rules);
        } else {
            // Operator rules are tried before the shipped ones.
            let shipped_at = next
                .list
                .iter()
                .position(|r| r.origin == BUILTIN_NAME)
                .unwrap_or(next.list.len());
            next.list.splice(shipped_at..shipped_at, new_rules);
        }
        *self = next;
        Ok(())
    }

    /// The rule an alert is first built with, before [`Rules::decide`]:
    /// the first enabled rule whose direction and role fit (the shipped
    /// rules cover every case; an alert built with it is re-ruled).
    pub fn for_match(&self, direction: Direction, roles: &[Role]) -> &Rule {
        let fits = |r: &Rule| {
            r.event() == Signal::Connection
                && r.when.raw.direction.is_none_or(|d| d == direction)
                && r.when.raw.role.is_none_or(|role| {
                    roles.contains(&match role {
                        RuleRole::Exit => Role::Exit,
                        RuleRole::Relay => Role::Relay,
                        RuleRole::Socks => Role::Socks,
                    })
                })
        };
        self.list
            .iter()
            .filter(|r| r.origin == BUILTIN_NAME)
            .find(|r| fits(r))
            .or_else(|| {
                self.list
                    .iter()
                    .find(|r| r.when.raw.direction == Some(direction))
            })
            .or(self.list.first())
            .expect("the shipped rules are never empty (tested)")
    }

    /// The rule an alert about `signal` (a program start, a listener) is
    /// first built with: the first shipped rule for it (re-ruled by
    /// [`Rules::decide`] as any alert).
    pub fn for_signal(&self, signal: Signal) -> &Rule {
        self.list
            .iter()
            .filter(|r| r.origin == BUILTIN_NAME)
            .find(|r| r.event() == signal)
            .or_else(|| self.list.iter().find(|r| r.event() == signal))
            .or(self.list.first())
            .expect("the shipped rules are never empty (tested)")
    }

    /// The decision for an alert at `now` (exceptions past their expiry
    /// no longer apply).
    pub fn decide(&self, alert: &Alert, now: SystemTime) -> Decision<'_> {
        let Some(rule) = self
            .list
            .iter()
            .find(|r| r.enabled && r.when.matches(alert))
        else {
            return Decision::Unmatched;
        };
        let excepted = rule
            .except
            .iter()
            .position(|e| e.expires.is_none_or(|t| now < t) && e.when.matches(alert));
        match excepted {
            Some(i) => Decision::Excepted(rule, i),
            None => Decision::Rule(rule),
        }
    }

    pub fn get(&self, id: &str) -> Option<&Rule> {
        self.list.iter().find(|r| r.id == id)
    }

    /// Ids in the order they are tried.
    pub fn ids(&self) -> Vec<&str> {
        self.list.iter().map(|r| r.id.as_str()).collect()
    }
}

/// A rule file being read: errors name its line and column.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    fn err(&self, offset: usize, message: String) -> RuleError {
        let (line, column) = line_col(self.text, offset);
        RuleError::Parse {
            file: self.file.to_owned(),
            line,
            column,
            message,
        }
    }

    fn exceptions(
        &self,
        id: &str,
        raw: &[toml::Spanned<RawException>],
    ) -> Result<Vec<Exception>, RuleError> {
        raw.iter()
            .map(|e| {
                let at = e.span().start;
                let e = e.get_ref();
                let when = When::compile(e.when.clone())
                    .map_err(|m| self.err(at, format!("rule {id}, exception: {m}")))?;
                if when.is_empty() {
                    let why = "an empty `when` would except every hit";
                    return Err(self.err(at, format!("rule {id}, exception {:?}: {why}", e.reason)));
                }
                let expires = match &e.expires {
                    None => None,
                    Some(t) => Some(parse_expiry(t).ok_or_else(|| {
                        let why = "is not a date (2027-01-31) or an RFC 3339 time";
                        self.err(at, format!("rule {id}, exception: expires {t:?} {why}"))
                    })?),
                };
                Ok(Exception {
                    reason: e.reason.clone(),
                    expires,
                    when,
                    at: format!("{}:{}", self.file, line_col(self.text, at).0),
                })
            })
            .collect()
    }

    fn action(
        &self,
        at: usize,
        id: &str,
        action: Option<&str>,
    ) -> Result<Option<Action>, RuleError> {
        match action {
            None => Ok(None),
            Some("alert") => Ok(Some(Action::Alert)),
            Some("log") => Ok(Some(Action::Log)),
            Some("block") => Ok(Some(Action::Block)),
            Some(other) => Err(self.err(
                at,
                format!("rule {id}: action {other:?} is not alert, log or block"),
            )),
        }
    }

    fn check_scalars(&self, at: usize, raw: &RawRule) -> Result<(), RuleError> {
        let id = &raw.id;
        if let Some(s) = raw.severity
            && s > 100
        {
            return Err(self.err(at, format!("rule {id}: severity {s} is above 100")));
        }
        if let Some(p) = &raw.priority
            && crate::alert::falco::Priority::parse(p).is_none()
        {
            let why = "is not one of Falco's (Emergency .. Debug)";
            return Err(self.err(at, format!("rule {id}: priority {p:?} {why}")));
        }
        Ok(())
    }

    /// A rule with a new id: everything a rule needs must be there.
    fn new_rule(
        &self,
        at: usize,
        raw: RawRule,
        action: Option<Action>,
        when: Option<When>,
        except: Vec<Exception>,
    ) -> Result<Rule, RuleError> {
        let missing: Vec<&str> = [
            ("name", raw.name.is_none()),
            ("description", raw.description.is_none()),
            ("severity", raw.severity.is_none()),
            ("priority", raw.priority.is_none()),
            ("when", when.is_none()),
        ]
        .into_iter()
        .filter_map(|(k, m)| m.then_some(k))
        .collect();
        if !missing.is_empty() {
            let id = &raw.id;
            return Err(self.err(
                at,
                format!(
                    "rule {id} is new (no known rule has this id), so it needs {}",
                    missing.join(", ")
                ),
            ));
        }
        Ok(Rule {
            id: raw.id,
            name: raw.name.unwrap_or_default(),
            description: raw.description.unwrap_or_default(),
            severity: raw.severity.unwrap_or_default(),
            priority: raw.priority.unwrap_or_default(),
            tags: raw.tags.unwrap_or_default(),
            enabled: raw.enabled.unwrap_or(true),
            action: action.unwrap_or_default(),
            when: when.unwrap_or_default(),
            except,
            origin: self.file.to_owned(),
        })
    }
}

/// A known rule changed by a later file: the keys given replace, the
/// exceptions add.
fn merge(
    known: &mut Rule,
    raw: RawRule,
    action: Option<Action>,
    when: Option<When>,
    except: Vec<Exception>,
) {
    let RawRule {
        name,
        description,
        severity,
        priority,
        tags,
        enabled,
        ..
    } = raw;
    known.name = name.unwrap_or(std::mem::take(&mut known.name));
    known.description = description.unwrap_or(std::mem::take(&mut known.description));
    known.severity = severity.unwrap_or(known.severity);
    known.priority = priority.unwrap_or(std::mem::take(&mut known.priority));
    known.tags = tags.unwrap_or(std::mem::take(&mut known.tags));
    known.enabled = enabled.unwrap_or(known.enabled);
    known.action = action.unwrap_or(known.action);
    if let Some(when) = when {
        known.when = when;
    }
    known.except.extend(except);
}

/// The `*.toml` files of a rules directory, in name order. A directory
/// that does not exist has none; one that cannot be listed is an error.
fn rule_files(dir: &Path) -> Result<Vec<PathBuf>, RuleError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(RuleError::Dir {
                dir: dir.display().to_string(),
                message: e.to_string(),
            });
        }
    };
    let mut files: BTreeSet<PathBuf> = BTreeSet::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "toml") && path.is_file() {
            files.insert(path);
        }
    }
    Ok(files.into_iter().collect())
}

impl Alert {
    /// One line for a person: `egress 10.0.0.5:40000 -> 185.220.101.1:9001
    /// process curl`, `exec /usr/bin/tor process tor`, `listen
    /// 127.0.0.1:9050 process tor`.
    pub fn summary(&self) -> String {
        let process = self.process.as_ref();
        let name = process.map_or("-", |p| p.name.as_str());
        match (self.direction(), self.source, self.destination) {
            (Some(direction), Some(src), Some(dst)) => format!(
                "{direction} {}:{} -> {}:{} process {name}",
                src.ip, src.port, dst.ip, dst.port,
            ),
            _ => {
                let what = match (self.signal(), self.server) {
                    (Signal::Listen, Some(s)) => format!("{}:{}", s.ip, s.port),
                    (Signal::Dns, _) => {
                        let name = self.dns.as_ref().map_or("-", |d| d.question.name.as_str());
                        match self.destination {
                            Some(d) => format!("{name} -> {}:{}", d.ip, d.port),
                            None => name.to_owned(),
                        }
                    }
                    _ => process
                        .and_then(|p| p.executable.clone())
                        .unwrap_or_else(|| "-".into()),
                };
                format!("{} {what} process {name}", self.signal())
            }
        }
    }

    /// Puts `rule`'s identity, tags and severity on an alert that was
    /// built with another.
    pub fn apply_rule(&mut self, rule: &Rule) {
        if self.rule.is_none() {
            return;
        }
        self.rule = Some(rule.reference());
        self.tags = Some(rule.tags.clone());
        self.event.severity = Some(rule.severity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::model::{Confidence, TorDetails};
    use crate::alert::test_support::connection_alert;

    /// A hit: `direction`, the peer in `role`, from process `name` running
    /// `exe` as `user` (uid 1000).
    fn hit(direction: Direction, role: Role, name: &str, exe: &str, user: &str) -> Alert {
        let mut a = connection_alert(
            4242,
            ("10.0.0.5", 40000),
            ("185.220.101.1", 9001),
            SystemTime::UNIX_EPOCH,
        );
        a.network.as_mut().unwrap().direction = Some(direction.into());
        if direction == Direction::Ingress {
            std::mem::swap(&mut a.source, &mut a.destination);
        }
        a.torsensor.tor = Some(TorDetails {
            roles: vec![role],
            confidence: match role {
                Role::Relay | Role::Socks => Confidence::High,
                Role::Exit => Confidence::Medium,
            },
            or_port: None,
            exit_last_seen: None,
            flags: Vec::new(),
            relay_count: 0,
            relays: Vec::new(),
            history: None,
        });
        let p = a.process.as_mut().unwrap();
        p.name = name.into();
        p.executable = Some(exe.into());
        p.command_line = Some(format!("{exe} -f /etc/tor/torrc"));
        a.user.as_mut().unwrap().name = Some(user.into());
        a
    }

    fn decided(rules: &Rules, a: &Alert) -> String {
        match rules.decide(
            a,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        ) {
            Decision::Rule(r) => r.id.clone(),
            Decision::Excepted(r, i) => format!("{} excepted by {:?}", r.id, r.except[i].reason),
            Decision::Unmatched => "unmatched".into(),
        }
    }

    #[test]
    fn the_shipped_rules_cover_every_hit() {
        let rules = Rules::builtin().unwrap();
        assert_eq!(
            rules.ids(),
            [
                "TORSENSOR-001",
                "TORSENSOR-002",
                "TORSENSOR-003",
                "TORSENSOR-004",
                "TORSENSOR-005",
                "TORSENSOR-006",
                "TORSENSOR-007",
                "TORSENSOR-008",
                "TORSENSOR-009",
                "TORSENSOR-010",
                "TORSENSOR-011",
                "TORSENSOR-012"
            ]
        );
        let relay = hit(
            Direction::Egress,
            Role::Relay,
            "curl",
            "/usr/bin/curl",
            "alice",
        );
        assert_eq!(decided(&rules, &relay), "TORSENSOR-001");
        let exit = hit(
            Direction::Egress,
            Role::Exit,
            "curl",
            "/usr/bin/curl",
            "alice",
        );
        assert_eq!(decided(&rules, &exit), "TORSENSOR-003");
        let inbound = hit(
            Direction::Ingress,
            Role::Exit,
            "nginx",
            "/usr/sbin/nginx",
            "www-data",
        );
        assert_eq!(decided(&rules, &inbound), "TORSENSOR-002");
        assert_eq!(
            rules
                .for_match(Direction::Egress, &[Role::Exit, Role::Relay])
                .id,
            "TORSENSOR-001"
        );
        assert_eq!(
            rules.get("TORSENSOR-001").unwrap().reference().ruleset,
            "torsensor-builtin"
        );
    }

    /// A program start (`tor`, by name) and a listener on 127.0.0.1:9050,
    /// as the pipeline builds them.
    fn local_alerts() -> (Alert, Alert) {
        use crate::alert::connection::SensorIdentity;
        use crate::alert::local::{ExecInput, ListenInput, build_exec, build_listen};
        use crate::enrich::ProcessInfo;
        let rules = Rules::builtin().unwrap();
        let sensor = SensorIdentity {
            host_name: "h1".into(),
            version: "0.1.0",
        };
        let tor = ProcessInfo {
            pid: 4242,
            name: "tor".into(),
            executable: Some("/usr/bin/tor".into()),
            command_line: Some("/usr/bin/tor -f /etc/tor/torrc".into()),
            uid: 107,
            user_name: Some("debian-tor".into()),
            ..ProcessInfo::default()
        };
        let at = SystemTime::UNIX_EPOCH;
        let exec = build_exec(ExecInput {
            time: at,
            comm: "tor",
            process: &tor,
            container: None,
            by_name: true,
            by_env: false,
            program: Some("tor"),
            env_vars: Vec::new(),
            env_bytes: 100,
            env_partial: false,
            rule: rules.for_signal(Signal::Exec),
            sensor: &sensor,
            created: at,
        });
        let listen = build_listen(ListenInput {
            time: at,
            local: "127.0.0.1:9050".parse().unwrap(),
            process: Some(&tor),
            container: None,
            port_use: "tor SOCKS",
            rule: rules.for_signal(Signal::Listen),
            sensor: &sensor,
            created: at,
        });
        (exec, listen)
    }

    #[test]
    fn rules_select_the_signal_and_peer_conditions_need_a_peer() {
        let text = r#"
# Old-style rules (no event): connections only, as before.
[[rule]]
id = "ANY-TOR"
name = "n"
description = "d"
severity = 10
priority = "Notice"
when = { process = ["tor"] }

[[rule]]
id = "PEER"
name = "n"
description = "d"
severity = 10
priority = "Notice"
when = { event = "exec", peer = ["0.0.0.0/0", "::/0"] }

[[rule]]
id = "PORT"
name = "n"
description = "d"
severity = 10
priority = "Notice"
when = { event = "listen", local_port = [9150] }

[[rule]]
id = "TORSENSOR-005"
[[rule.except]]
reason = "the host's own relay"
when = { executable = ["/usr/bin/tor"], user = ["debian-tor"] }

[[rule]]
id = "TORSENSOR-006"
[[rule.except]]
reason = "tor's SOCKS port on loopback is expected here"
when = { local_port = [9050] }
"#;
        let (exec, listen) = local_alerts();
        let builtin = Rules::builtin().unwrap();
        assert_eq!(decided(&builtin, &exec), "TORSENSOR-005");
        assert_eq!(decided(&builtin, &listen), "TORSENSOR-006");
        let mut rules = Rules::builtin().unwrap();
        rules.add_file("x.toml", text, false).unwrap();
        // ANY-TOR has no `event`: not for a program start of tor; PEER's
        // peer condition does not hold without a peer; PORT wants 9150.
        assert_eq!(
            decided(&rules, &exec),
            "TORSENSOR-005 excepted by \"the host's own relay\""
        );
        assert_eq!(
            decided(&rules, &listen),
            "TORSENSOR-006 excepted by \"tor's SOCKS port on loopback is expected here\""
        );
        let checks = rules.get("ANY-TOR").unwrap().when.checks(&exec);
        assert_eq!(checks, [("event (connection unless given)", false)]);
        let checks = rules.get("PEER").unwrap().when.checks(&exec);
        assert_eq!(checks, [("event", true), ("peer", false)]);
        let mut other = listen.clone();
        other.server.as_mut().unwrap().port = 9150;
        assert_eq!(decided(&rules, &other), "PORT");
        // ANY-TOR still takes a connection of tor's.
        let conn = hit(
            Direction::Egress,
            Role::Relay,
            "tor",
            "/usr/bin/tor",
            "debian-tor",
        );
        assert_eq!(decided(&rules, &conn), "ANY-TOR");
        // The shipped connection rules never take a local signal.
        for id in [
            "TORSENSOR-001",
            "TORSENSOR-002",
            "TORSENSOR-003",
            "TORSENSOR-004",
        ] {
            let rule = builtin.get(id).unwrap();
            assert!(
                !rule.when.matches(&exec) && !rule.when.matches(&listen),
                "{id}"
            );
        }
        assert_eq!(exec.summary(), "exec /usr/bin/tor process tor");
        assert_eq!(listen.summary(), "listen 127.0.0.1:9050 process tor");
    }

    const TUNING: &str = r#"
# The host's own relay: not news.
[[rule]]
id = "TORSENSOR-001"
[[rule.except]]
reason = "our relay (ticket SEC-1234)"
expires = "2099-12-31"
when = { executable = ["/usr/bin/tor"], user = ["debian-tor"] }

[[rule.except]]
reason = "lab host, until the migration"
expires = "2020-01-01"
when = { process = ["curl"] }

# Exit addresses on other ports: too noisy here.
[[rule]]
id = "TORSENSOR-003"
enabled = false

# Anything in our build containers talking to Tor is worse than usual.
[[rule]]
id = "LOCAL-001"
name = "Build job talks to Tor"
description = "A CI job connected to the Tor network."
severity = 90
priority = "Critical"
tags = ["tor", "ci"]
when = { direction = "egress", process = ["cargo*", "rustc"], command_line_regex = "--target[= ]" }
"#;

    #[test]
    fn operator_files_except_disable_and_add() {
        let mut rules = Rules::builtin().unwrap();
        rules
            .add_file("/etc/torsensor/rules.d/10-local.toml", TUNING, false)
            .unwrap();
        // New rules are tried first.
        assert_eq!(
            rules.ids(),
            [
                "LOCAL-001",
                "TORSENSOR-001",
                "TORSENSOR-002",
                "TORSENSOR-003",
                "TORSENSOR-004",
                "TORSENSOR-005",
                "TORSENSOR-006",
                "TORSENSOR-007",
                "TORSENSOR-008",
                "TORSENSOR-009",
                "TORSENSOR-010",
                "TORSENSOR-011",
                "TORSENSOR-012"
            ]
        );
        let ours = hit(
            Direction::Egress,
            Role::Relay,
            "tor",
            "/usr/bin/tor",
            "debian-tor",
        );
        assert_eq!(
            decided(&rules, &ours),
            "TORSENSOR-001 excepted by \"our relay (ticket SEC-1234)\""
        );
        // The same binary as another user is not our relay.
        let other = hit(
            Direction::Egress,
            Role::Relay,
            "tor",
            "/usr/bin/tor",
            "mallory",
        );
        assert_eq!(decided(&rules, &other), "TORSENSOR-001");
        // An expired exception no longer applies.
        let curl = hit(
            Direction::Egress,
            Role::Relay,
            "curl",
            "/usr/bin/curl",
            "alice",
        );
        assert_eq!(decided(&rules, &curl), "TORSENSOR-001");
        // Disabled: an exit address on another port alerts nothing.
        let exit = hit(
            Direction::Egress,
            Role::Exit,
            "curl",
            "/usr/bin/curl",
            "alice",
        );
        assert_eq!(decided(&rules, &exit), "unmatched");
        // The operator's rule wins over the shipped one; its regex and glob.
        let mut build = hit(
            Direction::Egress,
            Role::Exit,
            "cargo-build",
            "/usr/bin/cargo",
            "ci",
        );
        build.process.as_mut().unwrap().command_line = Some("cargo build --target x86_64".into());
        assert_eq!(decided(&rules, &build), "LOCAL-001");
        build.process.as_mut().unwrap().command_line = Some("cargo build".into());
        assert_eq!(decided(&rules, &build), "unmatched");
        let rule = rules.get("LOCAL-001").unwrap();
        assert_eq!(
            rule.reference().ruleset,
            "/etc/torsensor/rules.d/10-local.toml"
        );
        let mut alert = hit(
            Direction::Egress,
            Role::Exit,
            "rustc",
            "/usr/bin/rustc",
            "ci",
        );
        alert.apply_rule(rule);
        assert_eq!(alert.event.severity, Some(90));
        assert_eq!(alert.rule.as_ref().unwrap().id, "LOCAL-001");
        assert_eq!(
            alert.tags.as_deref(),
            Some(&["tor".to_owned(), "ci".to_owned()][..])
        );
        assert_eq!(rule.except.len(), 0);
        assert_eq!(
            rules.get("TORSENSOR-001").unwrap().except[0].at,
            "/etc/torsensor/rules.d/10-local.toml:5"
        );
    }

    #[test]
    fn conditions_on_ports_peers_feeds_and_containers() {
        let text = r#"
[[rule]]
id = "X-1"
name = "n"
description = "d"
severity = 10
priority = "Notice"
when = { peer = ["185.220.101.0/24"], peer_port = [9001], local_port = [40000], confidence = "high", role = "relay" }
[[rule]]
id = "X-2"
name = "n"
description = "d"
severity = 10
priority = "Notice"
when = { container_id = ["0123456789ab"] }
"#;
        let mut rules = Rules::builtin().unwrap();
        rules.add_file("x.toml", text, false).unwrap();
        let relay = hit(
            Direction::Egress,
            Role::Relay,
            "curl",
            "/usr/bin/curl",
            "alice",
        );
        assert_eq!(decided(&rules, &relay), "X-1");
        let mut elsewhere = relay.clone();
        elsewhere.destination.as_mut().unwrap().port = 443;
        assert_eq!(decided(&rules, &elsewhere), "TORSENSOR-001");
        let mut boxed = hit(
            Direction::Egress,
            Role::Exit,
            "curl",
            "/usr/bin/curl",
            "alice",
        );
        boxed.container = Some(crate::alert::model::Container {
            id: "0123456789abcdef".repeat(4),
            name: None,
            runtime: None,
        });
        assert_eq!(decided(&rules, &boxed), "X-2");
    }

    #[test]
    fn bad_files_name_the_file_line_and_column_and_change_nothing() {
        let cases: [(&str, &str); 9] = [
            (
                "[[rule]]\nid = \"TORSENSOR-001\"\nenabeld = false\n",
                "x.toml:3:1: unknown field `enabeld`",
            ),
            (
                "[[rule]]\nid = \"TORSENSOR-001\"\n[[rule.except]]\nreason = \"r\"\nwhen = { procss = [\"tor\"] }\n",
                "x.toml:5:10: unknown field `procss`",
            ),
            (
                "[[rule]]\nid = \"TORSENSOR-001\"\n[[rule.except]]\nreason = \"r\"\nwhen = {}\n",
                "x.toml:3:1: rule TORSENSOR-001, exception \"r\": an empty `when` would except every hit",
            ),
            (
                "[[rule]]\nid = \"NEW-1\"\nname = \"n\"\n",
                "x.toml:1:1: rule NEW-1 is new (no known rule has this id), so it needs description, severity, priority, when",
            ),
            (
                "[[rule]]\nid = \"TORSENSOR-002\"\naction = \"drop\"\n",
                "x.toml:1:1: rule TORSENSOR-002: action \"drop\" is not alert, log or block",
            ),
            (
                "[[rule]]\nid = \"TORSENSOR-002\"\nwhen = { process = [\"[\"] }\n",
                "x.toml:1:1: rule TORSENSOR-002: process: \"[\" is not a glob",
            ),
            (
                "[[rule]]\nid = \"TORSENSOR-002\"\nwhen = { container_id = [\"abc\"] }\n",
                "container_id: \"abc\" is not a container id",
            ),
            (
                "[[rule]]\nid = \"TORSENSOR-002\"\n[[rule.except]]\nreason = \"r\"\nexpires = \"soon\"\nwhen = { user = [\"x\"] }\n",
                "x.toml:3:1: rule TORSENSOR-002, exception: expires \"soon\" is not a date",
            ),
            ("[[rule]\n", "x.toml:1:"),
        ];
        for (text, want) in cases {
            let mut rules = Rules::builtin().unwrap();
            let before = rules.ids().len();
            let err = rules
                .add_file("x.toml", text, false)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.starts_with("rules file x.toml:"), "{err}");
            assert_eq!(rules.ids().len(), before);
        }
    }

    #[test]
    fn a_file_with_one_bad_rule_applies_none_of_its_rules() {
        let mut rules = Rules::builtin().unwrap();
        let text = "[[rule]]\nid = \"TORSENSOR-002\"\nseverity = 99\n\n[[rule]]\nid = \"NEW-1\"\n";
        let err = rules.add_file("x.toml", text, false).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("rules file x.toml:5:1: rule NEW-1 is new"),
            "{err}"
        );
        assert_eq!(rules.get("TORSENSOR-002").unwrap().severity, 47);
        assert_eq!(rules.files, ["rules/tor.toml"]);
    }

    #[test]
    fn a_rules_directory_is_read_in_name_order() {
        let dir = std::env::temp_dir().join(format!("torsensor-rules-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("20-b.toml"),
            "[[rule]]\nid = \"TORSENSOR-002\"\nseverity = 60\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("10-a.toml"),
            "[[rule]]\nid = \"TORSENSOR-002\"\nseverity = 50\n",
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "not a rules file").unwrap();
        let rules = Rules::load(Some(&dir)).unwrap();
        assert_eq!(rules.get("TORSENSOR-002").unwrap().severity, 60);
        assert_eq!(rules.files.len(), 3);
        assert!(Rules::load(Some(&dir.join("missing"))).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
