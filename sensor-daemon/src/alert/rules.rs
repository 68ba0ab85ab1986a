//! Detection rules shipped with the product (`rules/*.toml`), compiled in.

use serde::Deserialize;

use crate::feed::Role;
use crate::net::Direction;

/// The built-in rule file.
pub const BUILTIN_RULES: &str = include_str!("../../../rules/tor.toml");

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rules file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("rules file {file}: no rule for direction {direction} and role {role}")]
    Missing {
        file: String,
        direction: Direction,
        role: &'static str,
    },
}

/// One rule, as written in the rules file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub description: String,
    pub direction: Direction,
    /// The role that matched: `relay` (OR address and ORPort) or `exit`.
    pub role: RuleRole,
    pub severity: u8,
    pub priority: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RuleRole {
    Exit,
    Relay,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rule: Vec<Rule>,
}

/// The rules in force: outbound to a relay's ORPort, outbound to an exit
/// address, inbound from an exit.
#[derive(Debug, Clone)]
pub struct Rules {
    pub egress_relay: Rule,
    pub egress_exit: Rule,
    pub ingress: Rule,
}

impl Rules {
    pub fn builtin() -> Result<Self, RuleError> {
        Self::parse("rules/tor.toml", BUILTIN_RULES)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, RuleError> {
        let parsed: RuleFile = toml::from_str(text).map_err(|e| RuleError::Parse {
            file: file.to_owned(),
            message: e.message().to_owned(),
        })?;
        let pick = |direction: Direction, role: RuleRole| {
            parsed
                .rule
                .iter()
                .find(|r| r.direction == direction && r.role == role)
                .cloned()
                .ok_or(RuleError::Missing {
                    file: file.to_owned(),
                    direction,
                    role: match role {
                        RuleRole::Exit => "exit",
                        RuleRole::Relay => "relay",
                    },
                })
        };
        Ok(Rules {
            egress_relay: pick(Direction::Egress, RuleRole::Relay)?,
            egress_exit: pick(Direction::Egress, RuleRole::Exit)?,
            ingress: pick(Direction::Ingress, RuleRole::Exit)?,
        })
    }

    /// The rule for a connection: a relay ORPort match outranks an exit
    /// match; audit-only events (no role) take the exit rule of their
    /// direction, and are not alerts anyway.
    pub fn for_match(&self, direction: Direction, roles: &[Role]) -> &Rule {
        match direction {
            Direction::Egress if roles.contains(&Role::Relay) => &self.egress_relay,
            Direction::Egress => &self.egress_exit,
            Direction::Ingress => &self.ingress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_parse_and_cover_both_directions() {
        let rules = Rules::builtin().unwrap();
        assert_eq!(rules.egress_relay.id, "TORSENSOR-001");
        assert_eq!(rules.ingress.id, "TORSENSOR-002");
        assert_eq!(rules.egress_exit.id, "TORSENSOR-003");
        assert!(rules.egress_relay.severity > rules.egress_exit.severity);
        assert_eq!(
            rules
                .for_match(Direction::Egress, &[Role::Exit, Role::Relay])
                .id,
            "TORSENSOR-001"
        );
    }

    #[test]
    fn a_bad_rule_file_names_the_file() {
        let err = Rules::parse("x.toml", "[[rule]]\nid = 1\n").unwrap_err();
        assert!(err.to_string().starts_with("rules file x.toml:"), "{err}");
        let err = Rules::parse("y.toml", "rule = []\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules file y.toml: no rule for direction egress and role relay"
        );
    }
}
