//! # sparse-core
//!
//! The numeric core of sparse-infer: the [`Matrix`] type and `.npy` I/O, the
//! synthetic data generator, every encoder and sparse solver, the optimiser,
//! the metrics and the FLOP accounting. No printing, no CLI: callers decide
//! what to show.
//!
//! Conventions: data `X` is `(n_samples × dim)`, codes `Z` are
//! `(n_samples × n_latents)`, a dictionary `D` is `(n_latents × dim)` with
//! atoms as rows, so that `X ≈ Z · D`.

#![warn(missing_docs)]

pub mod assignment;
pub mod checkpoint;
pub mod data;
pub mod dictionary;
pub mod encoders;
pub mod error;
pub mod flops;
pub mod gap;
pub mod huge_pages;
pub mod io;
pub mod linalg;
pub mod matrix;
pub mod metrics;
pub mod optim;
pub mod realistic_data;
pub mod saelens;

pub use error::{Error, Result};
pub use matrix::Matrix;
