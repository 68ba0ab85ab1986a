//! The `torsensor` subcommands that are more than a call into the library:
//! each prints for a person (or a monitoring system) and chooses its exit
//! code. Part of the binary, not of the library.

pub mod check;
pub mod history;
pub mod hunt;
pub mod rules;
pub mod running;
