//! torsensor: reports connections between this host and the Tor network.
//!
//! Data flows one way: kernel event ([`kernel`], [`event`]) -> match details
//! ([`feed`]) and enrichment ([`enrich`], [`container`]) -> alert ([`alert`],
//! [`rules`]), all driven by the [`pipeline`] without I/O of its own ->
//! outputs ([`sink`]), run by [`sensor`].

pub mod alert;
pub mod bench;
pub mod community_id;
pub mod config;
pub mod container;
pub mod enrich;
pub mod event;
pub mod feed;
pub mod kernel;
pub mod pipeline;
pub mod privileges;
pub mod redact;
pub mod rules;
pub mod sensor;
pub mod sink;
pub mod statedir;
pub mod sys;
pub mod time;
