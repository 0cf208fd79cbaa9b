//! The unit-norm constraint on atoms (rows of `D (n_latents × dim)`).
//!
//! Learned dictionaries are kept on the product of unit spheres: the L1
//! penalty is otherwise defeated by shrinking codes and growing atoms. The
//! paper (paper-spec §2) renormalises the decoder at every forward pass; SAE
//! practice also removes from each atom's gradient its radial component
//! before the optimiser step, so that the step moves along the sphere and
//! the renormalisation afterwards only corrects a second-order drift.
//! [`UnitNormAdam`] packages that recipe: project, Adam step, renormalise.

use crate::linalg::dot_f64_by_lanes;
use crate::matrix::Matrix;
use crate::optim::{Adam, AdamConfig, ADAM_FLOPS_PER_PARAM};
use rayon::prelude::*;

/// Scales every atom (row) of `d` to unit Euclidean norm, in f64.
///
/// A row of norm zero (or non-finite norm) has no direction to keep; it is
/// replaced by the basis vector `e_{i mod dim}` so that the invariant "every
/// atom has unit norm" holds after every call whatever the input, and
/// deterministically. Learners that care (e.g. [`super::SparseCoding`])
/// resample such atoms from the data instead.
///
/// FLOPs: `3·N·M` (square-and-sum `2M`, scale `M` per atom), the count used
/// by [`crate::flops::sparse_coding_train_flops`].
pub fn normalize_atoms(d: &mut Matrix) {
    let dim = d.cols();
    if dim == 0 {
        return;
    }
    let normalize = |(i, row): (usize, &mut [f32])| {
        let norm = dot_f64_by_lanes(row, row).sqrt();
        if norm > 0.0 && norm.is_finite() {
            row.iter_mut().for_each(|v| *v = (*v as f64 / norm) as f32);
        } else {
            row.iter_mut().for_each(|v| *v = 0.0);
            row[i % dim] = 1.0;
        }
    };
    // Rows are independent: the same numbers on any number of threads.
    if d.as_slice().len() >= PARALLEL_ROWS {
        d.as_mut_slice()
            .par_chunks_mut(dim)
            .enumerate()
            .for_each(normalize);
    } else {
        d.as_mut_slice()
            .chunks_mut(dim)
            .enumerate()
            .for_each(normalize);
    }
}

/// Dictionary entries (`N·M`) from which the row-wise passes of this module
/// split the rows over the threads.
const PARALLEL_ROWS: usize = 1 << 18;

/// Removes from each row of `grad` its component along the matching atom of
/// `d`: `g_i ← g_i − (⟨g_i, d_i⟩ / ‖d_i‖²)·d_i` (f64 dot products), so that
/// `⟨g_i, d_i⟩ = 0` up to rounding. Dividing by `‖d_i‖²` keeps the result a
/// true projection even for an atom that has drifted off the sphere; a zero
/// atom leaves its gradient unchanged.
///
/// FLOPs: `6·N·M` (`⟨g, d⟩` and `‖d‖²` `2M` each, multiply-subtract `2M`).
/// Panics if the shapes differ (callers own both matrices).
pub fn project_gradient_to_tangent(d: &Matrix, grad: &mut Matrix) {
    assert_eq!(
        d.shape(),
        grad.shape(),
        "project_gradient_to_tangent: shapes differ"
    );
    let dim = d.cols().max(1);
    let project = |(atom, g): (&[f32], &mut [f32])| {
        let norm_sq = dot_f64_by_lanes(atom, atom);
        if norm_sq > 0.0 {
            let c = dot_f64_by_lanes(atom, g) / norm_sq;
            for (gv, &a) in g.iter_mut().zip(atom) {
                *gv = (*gv as f64 - c * a as f64) as f32;
            }
        }
    };
    let atoms = d.as_slice();
    if atoms.len() >= PARALLEL_ROWS {
        atoms
            .par_chunks(dim)
            .zip(grad.as_mut_slice().par_chunks_mut(dim))
            .for_each(project);
    } else {
        atoms
            .chunks(dim)
            .zip(grad.as_mut_slice().chunks_mut(dim))
            .for_each(project);
    }
}

/// Largest `|‖d_i‖ − 1|` over the atoms, in f64: how far `d` is from the
/// constraint (0 for no atoms).
pub fn max_atom_norm_error(d: &Matrix) -> f64 {
    d.row_norms()
        .into_iter()
        .map(|n| (n - 1.0).abs())
        .fold(0.0, f64::max)
}

/// FLOPs of [`project_gradient_to_tangent`] on `n_latents × dim`.
pub fn projection_flops(n_latents: usize, dim: usize) -> f64 {
    6.0 * n_latents as f64 * dim as f64
}

/// FLOPs of [`normalize_atoms`] on `n_latents × dim`.
pub fn normalization_flops(n_latents: usize, dim: usize) -> f64 {
    3.0 * n_latents as f64 * dim as f64
}

/// Adam on a dictionary kept at unit-norm atoms: each [`UnitNormAdam::step`]
/// projects the gradient to the tangent space (optional), takes one Adam
/// step and renormalises the atoms.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct UnitNormAdam {
    adam: Adam,
    project: bool,
    cols: usize,
}

impl UnitNormAdam {
    /// Fresh Adam state for a `n_latents × dim` dictionary. `project: false`
    /// reproduces the paper (plain gradient, renormalise afterwards).
    pub fn new(n_latents: usize, dim: usize, config: AdamConfig, project: bool) -> Self {
        UnitNormAdam {
            adam: Adam::new(n_latents * dim, config),
            project,
            cols: dim,
        }
    }

    /// Sets the learning rate of the following steps (schedules).
    pub fn set_lr(&mut self, lr: f32) {
        self.adam.config.lr = lr;
    }

    /// Whether gradients are projected to the tangent space before the step.
    pub fn projects(&self) -> bool {
        self.project
    }

    /// One update of `d` from `grad` (same shape as `d`; projected in place
    /// when enabled). Leaves every atom at unit norm.
    pub fn step(&mut self, d: &mut Matrix, grad: &mut Matrix) {
        if self.project {
            project_gradient_to_tangent(d, grad);
        }
        self.adam.step(d.as_mut_slice(), grad.as_slice());
        normalize_atoms(d);
    }

    /// Clears the Adam moments of atom `i`, for an atom that was just
    /// re-initialised: its old moments describe another direction.
    pub fn reset_atom(&mut self, i: usize) {
        for j in i * self.cols..(i + 1) * self.cols {
            self.adam.reset_entry(j);
        }
    }

    /// FLOPs of one [`UnitNormAdam::step`]: `[6NM]` projection, `12NM` Adam,
    /// `3NM` renormalisation.
    pub fn step_flops(&self, n_latents: usize, dim: usize) -> f64 {
        let p = if self.project {
            projection_flops(n_latents, dim)
        } else {
            0.0
        };
        p + ADAM_FLOPS_PER_PARAM * (n_latents * dim) as f64 + normalization_flops(n_latents, dim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn randn(rng: &mut ChaCha8Rng, r: usize, c: usize, scale: f32) -> Matrix {
        Matrix::from_fn(r, c, |_, _| scale * rng.sample::<f32, _>(StandardNormal))
    }

    #[test]
    fn normalize_gives_unit_rows_and_a_basis_vector_for_zero_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut d = randn(&mut rng, 7, 5, 30.0);
        d.row_mut(2).iter_mut().for_each(|v| *v = 0.0);
        d.row_mut(6).iter_mut().for_each(|v| *v = 0.0);
        let before = d.clone();
        normalize_atoms(&mut d);
        assert!(max_atom_norm_error(&d) < 1e-6);
        assert_eq!(d.row(2), &[0.0, 0.0, 1.0, 0.0, 0.0]);
        assert_eq!(d.row(6), &[0.0, 1.0, 0.0, 0.0, 0.0]);
        // Directions are kept.
        let cos: f64 = d
            .row(0)
            .iter()
            .zip(before.row(0))
            .map(|(&a, &b)| a as f64 * b as f64)
            .sum::<f64>()
            / before.row_norms()[0];
        assert!((cos - 1.0).abs() < 1e-6);
    }

    #[test]
    fn projected_gradient_is_orthogonal_to_each_atom() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut d = randn(&mut rng, 16, 8, 1.0);
        // One atom off the sphere: the projection must still be exact.
        d.row_mut(3).iter_mut().for_each(|v| *v *= 3.0);
        let mut g = randn(&mut rng, 16, 8, 5.0);
        let g0 = g.clone();
        project_gradient_to_tangent(&d, &mut g);
        for i in 0..16 {
            let dot: f64 = d
                .row(i)
                .iter()
                .zip(g.row(i))
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum();
            let scale = d.row_norms()[i] * g0.row_norms()[i];
            assert!(dot.abs() < 1e-6 * scale, "atom {i}: {dot:e}");
        }
        // Projecting twice changes nothing more (a projection is idempotent).
        let once = g.clone();
        project_gradient_to_tangent(&d, &mut g);
        assert!(g.max_abs_diff(&once) < 1e-5);
    }

    #[test]
    fn atoms_stay_unit_norm_through_many_adam_updates() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut d = randn(&mut rng, 32, 12, 1.0);
        normalize_atoms(&mut d);
        for project in [true, false] {
            let mut opt = UnitNormAdam::new(32, 12, AdamConfig::with_lr(0.05), project);
            assert_eq!(opt.projects(), project);
            for step in 0..2000 {
                let mut g = randn(&mut rng, 32, 12, 1.0 + step as f32 * 0.01);
                opt.step(&mut d, &mut g);
                if step == 500 {
                    opt.reset_atom(5);
                }
                assert!(max_atom_norm_error(&d) < 1e-5, "step {step}");
            }
            d.check_finite("d").unwrap();
        }
    }

    #[test]
    fn tangent_steps_drift_less_than_plain_steps() {
        // Why project: a radial gradient component would otherwise be a wasted
        // step that the renormalisation undoes.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut d = randn(&mut rng, 8, 6, 1.0);
        normalize_atoms(&mut d);
        let mut g = d.clone(); // purely radial
        let before = d.clone();
        UnitNormAdam::new(8, 6, AdamConfig::with_lr(0.1), true).step(&mut d, &mut g);
        assert!(d.max_abs_diff(&before) < 1e-5);
    }

    #[test]
    fn flop_counts() {
        assert_eq!(projection_flops(16, 8), 768.0);
        assert_eq!(normalization_flops(16, 8), 384.0);
        let opt = UnitNormAdam::new(16, 8, AdamConfig::default(), true);
        assert_eq!(opt.step_flops(16, 8), 21.0 * 128.0);
    }
}
