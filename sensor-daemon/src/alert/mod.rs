//! Alerts: what the sensor reports, as one type, and its output formats.
//!
//! Owns the alert model ([`model::Alert`], shaped like an ECS document),
//! how an alert is built from a connection ([`connection`]) or from a
//! local Tor signal, a program start or a listener ([`local`]), the additions
//! made to it from other sources (community id, container: [`additions`]),
//! aggregation of repeats ([`aggregate`]),
//! and the three renderers, each an infallible `&Alert -> Value`:
//!
//! - [`ecs::render`]: the alert as it serializes (ECS).
//! - [`ocsf::render`]: OCSF Network Activity (class 4001), or Process
//!   Activity (class 1007) for a program start.
//! - [`falco::render`]: Falco's JSON output.
//!
//! May use the layers below it: decoded events ([`crate::kernel::event`]), feed
//! matches ([`crate::feed`]), process and container details
//! ([`crate::enrich`], [`crate::enrich::container`]), rules ([`crate::alert::rules`]),
//! [`crate::alert::community_id`] and [`crate::time`]. Nothing here reads files,
//! the clock or the kernel: callers pass every input, including the time.
//! Nothing below may import from here.

pub mod additions;
pub mod aggregate;
pub mod collector;
pub mod community_id;
pub mod connection;
pub mod dns;
pub mod ecs;
pub mod falco;
pub mod gateway;
pub mod hunt;
pub mod local;
pub mod model;
pub mod ocsf;
pub mod rules;
pub mod schema;
#[cfg(test)]
pub(crate) mod test_support;

pub use connection::{AlertInput, SensorIdentity, build, roles_of};
pub use model::Alert;
pub use schema::Schema;
