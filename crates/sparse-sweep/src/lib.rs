//! # sparse-sweep
//!
//! Sweeps: one job — turn a grid of experiments into recorded, reportable
//! results. A sweep file ([`config`]) expands into runs with stable keys;
//! [`shard`] slices them deterministically for job arrays; [`execute`] runs
//! them in parallel with the studies' code; [`store`] keeps every finished run
//! in an embedded SQLite file (resumable, kill-safe, mergeable); [`report`]
//! turns a store into tables, figures and one HTML page.

#![warn(missing_docs)]

pub mod config;
pub mod execute;
pub mod report;
pub mod shard;
pub mod store;

pub use config::{RunSpec, SweepConfig};
pub use execute::{run_one, run_sweep, SweepSummary};
pub use shard::Shard;
pub use store::{Store, StoredRun};
