//! Encoders: everything that turns data `X (n × dim)` into codes
//! `Z (n × n_latents)` given a dictionary `D (n_latents × dim)`.
//!
//! Every encoder implements [`Encoder`] and reports the FLOPs it spent.
//! Encoders with weights that learn to encode (amortised inference) also
//! implement [`Trainable`]; per-sample solvers have nothing to train.
//! One file per family; a new encoder is a new file.

use crate::error::Result;
use crate::matrix::Matrix;

/// Codes produced by an encoder, with the work it took.
#[derive(Clone, Debug)]
pub struct Encoding {
    /// `Z (n × n_latents)`.
    pub codes: Matrix,
    /// FLOPs spent producing `codes` (see [`crate::flops`] for the conventions).
    pub flops: f64,
    /// Iterations run (1 for single-pass encoders).
    pub iterations: usize,
}

/// Turns data into codes against a dictionary.
pub trait Encoder {
    /// A short, stable name for tables (e.g. `"fista"`, `"sae"`, `"mlp-256"`).
    fn name(&self) -> String;

    /// Codes for `x (n × dim)` under `dictionary (n_latents × dim)`.
    /// Fails on shape mismatch or non-finite input, never panics.
    fn encode(&self, x: &Matrix, dictionary: &Matrix) -> Result<Encoding>;
}

/// An amortised encoder trained against a fixed dictionary.
pub trait Trainable: Encoder {
    /// One optimisation step on the batch `x (n × dim)`; returns the loss before the step.
    fn train_step(&mut self, x: &Matrix, dictionary: &Matrix) -> Result<f32>;

    /// FLOPs of one [`Trainable::train_step`] on `n_samples` samples.
    fn train_step_flops(&self, n_samples: usize) -> f64;
}

/// Validates the common inputs of `encode`: `x` is `(n × dim)` and finite,
/// `dictionary` is `(n_latents × dim)` and finite, with matching `dim`.
pub fn check_inputs(x: &Matrix, dictionary: &Matrix) -> Result<()> {
    if dictionary.rows() == 0 || dictionary.cols() == 0 {
        return Err(crate::error::Error::shape(
            "dictionary",
            "(n_latents ≥ 1, dim ≥ 1)",
            format!("({}, {})", dictionary.rows(), dictionary.cols()),
        ));
    }
    x.expect_shape("data", None, Some(dictionary.cols()))?;
    x.check_finite("data")?;
    dictionary.check_finite("dictionary")
}

/// What an iterative solver reports to its monitor after each iteration.
#[derive(Debug)]
pub struct SolverProgress<'a> {
    /// Iterations completed so far (1-based).
    pub iteration: usize,
    /// Current codes `Z (n × n_latents)`.
    pub codes: &'a Matrix,
    /// FLOPs spent so far, setup included.
    pub flops: f64,
}

/// A callback that sees each iteration of a solver and returns `false` to stop it early.
pub type Monitor<'m> = &'m mut dyn FnMut(&SolverProgress<'_>) -> bool;

pub mod exp_adam;
pub mod fista;
pub mod ito;
pub mod lista;
pub mod mlp;
pub mod pursuit;
pub mod sae;
