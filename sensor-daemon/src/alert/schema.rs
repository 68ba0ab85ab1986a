//! The three schemas an alert is rendered in, and the one place that picks
//! the renderer for each.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::Alert;

/// The schema an output wants its alerts in (`format =` in an `[[output]]`
/// table, `format=` in `--output`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schema {
    /// Elastic Common Schema: the alert as it serializes.
    #[default]
    Ecs,
    /// OCSF Network Activity (class 4001; Process Activity, 1007, for a
    /// program start).
    Ocsf,
    /// Falco's JSON output (for falcosidekick).
    Falco,
}

impl Schema {
    /// The alert rendered in this schema (infallible).
    pub fn render(self, alert: &Alert) -> Value {
        match self {
            Schema::Ecs => super::ecs::render(alert),
            Schema::Ocsf => super::ocsf::render(alert),
            Schema::Falco => super::falco::render(alert),
        }
    }
}

impl std::fmt::Display for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Schema::Ecs => "ecs",
            Schema::Ocsf => "ocsf",
            Schema::Falco => "falco",
        })
    }
}
