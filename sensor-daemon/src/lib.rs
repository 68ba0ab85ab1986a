//! torsensor: reports connections between this host and the Tor network.
//!
//! Data flows one way, and each module imports only from modules of a
//! lower layer (`tests/layers.rs` checks it):
//!
//! | layer | module | owns |
//! |---|---|---|
//! | 8 | [`daemon`] | the run loop: arming, signals, reload, feed switching, health, status file, privileges |
//! | 7 | [`config`] | the one validated configuration (file, flags, environment, defaults) |
//! | 6 | [`sink`] | outputs: local writers, remote delivery, spool, statistics |
//! | 6 | [`pipeline`] | kernel event to alerts, no I/O (replayable) |
//! | 5 | [`alert`] | the typed alert, rules, aggregation, ECS/OCSF/Falco renderers |
//! | 4 | [`hunt`] | the retrospective hunt: PCAP/pcapng, NetFlow/IPFIX, Zeek, nfdump and access logs matched against the history at their time |
//! | 4 | [`enrich`] | process details from `/proc`, container and pod from cgroups |
//! | 3 | [`kernel`] | eBPF programs and maps, hook plan, decoding ring-buffer events |
//! | 3 | [`history`] | Tor history: CollecTor archives and documents into a time-aware index, lookups at a time |
//! | 2 | [`feed`] | Tor lists: sources, formats, sets, cache, refresh |
//! | 1 | [`statedir`] | files in the state directory, never through a link |
//! | 0 | [`net`], [`time`], [`sys`], [`redact`], [`local`], [`dns`] | addresses, times, every libc call, secrets out of messages; the watched programs, environment prefix and ports of the local Tor signals; the watched DNS names |
//!
//! The binary (`main.rs`) is the command line on top; [`mod@bench`] holds
//! the benchmarks `cargo xtask bench` runs.

pub mod alert;
pub mod bench;
pub mod config;
pub mod daemon;
pub mod dns;
pub mod enrich;
pub mod feed;
pub mod history;
pub mod hunt;
pub mod kernel;
pub mod local;
pub mod net;
pub mod pipeline;
pub mod redact;
pub mod sink;
pub mod statedir;
pub mod sys;
pub mod time;
