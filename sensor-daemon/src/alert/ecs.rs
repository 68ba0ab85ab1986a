//! ECS output: the alert as it serializes ([`Alert`] is shaped like ECS).

use serde_json::Value;

use super::model::Alert;

/// The ECS document of an alert, with sorted keys.
pub fn render(alert: &Alert) -> Value {
    // Every field is a string, number, bool, list or struct with string
    // keys: serialization cannot fail.
    serde_json::to_value(alert).expect("an Alert always serializes")
}
