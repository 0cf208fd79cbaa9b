//! Inference-time optimisation (ITO): codes from an amortised encoder,
//! refined per sample by an iterative solver that starts **from those codes**.
//!
//! The reference implementation meant to warm-start but re-initialised the
//! codes at `exp(-10)` every time (paper-spec §2.4), so its "SAE+ITO" was a
//! cold start. Here the warm start is real: the solver's first iterate is the
//! amortised encoder's output.

use super::exp_adam::ExpAdam;
use super::fista::Fista;
use super::{Encoder, Encoding, Monitor};
use crate::error::Result;
use crate::matrix::Matrix;

/// An iterative solver that can start from given codes.
pub trait WarmStartSolver {
    /// Name for tables (e.g. `"fista"`).
    fn solver_name(&self) -> String;

    /// Solves from `init (n × n_latents)` (zeros / the solver's default when `None`).
    fn solve_from(
        &self,
        x: &Matrix,
        dictionary: &Matrix,
        init: Option<&Matrix>,
        monitor: Option<Monitor<'_>>,
    ) -> Result<Encoding>;
}

/// Solvers whose inherent `solve(x, dictionary, init, monitor)` is the warm start.
macro_rules! warm_start_solver {
    ($($t:ty),*) => {$(
        impl WarmStartSolver for $t {
            fn solver_name(&self) -> String {
                self.name()
            }
            fn solve_from(
                &self,
                x: &Matrix,
                dictionary: &Matrix,
                init: Option<&Matrix>,
                monitor: Option<Monitor<'_>>,
            ) -> Result<Encoding> {
                self.solve(x, dictionary, init, monitor)
            }
        }
    )*};
}
warm_start_solver!(Fista, ExpAdam);

/// An amortised encoder followed by a warm-started solver.
pub struct InferenceTimeOptimisation<'a> {
    /// Produces the starting codes.
    pub amortised: &'a dyn Encoder,
    /// Refines them.
    pub solver: &'a dyn WarmStartSolver,
}

impl InferenceTimeOptimisation<'_> {
    /// Encodes with the amortised encoder, then solves from its codes. The
    /// monitor sees the solver's iterations with FLOPs that include the
    /// amortised pass; the returned FLOPs are the sum of both.
    pub fn solve(
        &self,
        x: &Matrix,
        dictionary: &Matrix,
        monitor: Option<Monitor<'_>>,
    ) -> Result<Encoding> {
        let start = self.amortised.encode(x, dictionary)?;
        let offset = start.flops;
        let mut shifted;
        let monitor: Option<Monitor<'_>> = match monitor {
            Some(inner) => {
                shifted = move |p: &super::SolverProgress<'_>| {
                    inner(&super::SolverProgress {
                        iteration: p.iteration,
                        codes: p.codes,
                        flops: p.flops + offset,
                    })
                };
                Some(&mut shifted)
            }
            None => None,
        };
        let mut refined = self
            .solver
            .solve_from(x, dictionary, Some(&start.codes), monitor)?;
        refined.flops += offset;
        Ok(refined)
    }
}

impl Encoder for InferenceTimeOptimisation<'_> {
    fn name(&self) -> String {
        format!("{}+{}", self.amortised.name(), self.solver.solver_name())
    }
    fn encode(&self, x: &Matrix, dictionary: &Matrix) -> Result<Encoding> {
        self.solve(x, dictionary, None)
    }
}
