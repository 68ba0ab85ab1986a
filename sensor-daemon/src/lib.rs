//! torsensor: reports connections between this host and the Tor network.
//!
//! Data flows one way, and each layer imports only from the layers below it:
//!
//! | layer | module | owns |
//! |---|---|---|
//! | binary | `main.rs` | the command line; errors become one line |
//! | 6 | [`daemon`] | the run loop: arming, signals, reload, feed switching, health, status file, privileges |
//! | 5 | [`config`] | the one validated configuration (file, flags, environment, defaults) |
//! | 4 | [`sink`] | outputs: local writers, remote delivery, spool, statistics |
//! | 3 | [`pipeline`] | kernel event to alerts, no I/O (replayable) |
//! | 2 | [`alert`] | the typed alert, rules, aggregation, ECS/OCSF/Falco renderers |
//! | 1 | [`enrich`] | process details from `/proc`, container and pod from cgroups |
//! | 1 | [`kernel`] | eBPF programs and maps, hook plan, decoding ring-buffer events |
//! | 1 | [`feed`] | Tor lists: sources, formats, sets, cache, refresh |
//! | 0 | [`net`], [`time`], [`sys`], [`statedir`], [`redact`] | shared leaves: addresses, times, libc calls, safe files, secrets |
//!
//! [`bench`] holds the benchmarks `cargo xtask bench` runs.

pub mod alert;
pub mod bench;
pub mod config;
pub mod daemon;
pub mod enrich;
pub mod feed;
pub mod kernel;
pub mod net;
pub mod pipeline;
pub mod redact;
pub mod sink;
pub mod statedir;
pub mod sys;
pub mod time;
