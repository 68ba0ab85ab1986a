//! Detection rules shipped with the product (`rules/*.toml`), compiled in.

use serde::Deserialize;

use crate::event::Direction;

/// The built-in rule file.
pub const BUILTIN_RULES: &str = include_str!("../../rules/tor.toml");

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rules file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("rules file {file}: no rule for direction {direction}")]
    Missing { file: String, direction: Direction },
}

/// One rule, as written in the rules file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    pub name: String,
    pub description: String,
    pub direction: Direction,
    pub severity: u8,
    pub priority: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    rule: Vec<Rule>,
}

/// The rules in force: one per direction.
#[derive(Debug, Clone)]
pub struct Rules {
    pub egress: Rule,
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
        let pick = |direction: Direction| {
            parsed
                .rule
                .iter()
                .find(|r| r.direction == direction)
                .cloned()
                .ok_or(RuleError::Missing {
                    file: file.to_owned(),
                    direction,
                })
        };
        Ok(Rules {
            egress: pick(Direction::Egress)?,
            ingress: pick(Direction::Ingress)?,
        })
    }

    pub fn for_direction(&self, direction: Direction) -> &Rule {
        match direction {
            Direction::Egress => &self.egress,
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
        assert_eq!(rules.egress.id, "TORSENSOR-001");
        assert_eq!(rules.ingress.id, "TORSENSOR-002");
        assert!(rules.egress.severity > rules.ingress.severity);
    }

    #[test]
    fn a_bad_rule_file_names_the_file() {
        let err = Rules::parse("x.toml", "[[rule]]\nid = 1\n").unwrap_err();
        assert!(err.to_string().starts_with("rules file x.toml:"), "{err}");
        let err = Rules::parse("y.toml", "rule = []\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "rules file y.toml: no rule for direction egress"
        );
    }
}
