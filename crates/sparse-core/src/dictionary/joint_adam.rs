//! The paper's sparse coding with a learned dictionary, kept for faithfulness
//! (paper-spec §2.3): the training codes `Z = exp(U)` (one row per training
//! sample, `U` initialised at −10) **and** the dictionary `D` are optimised
//! **jointly** by Adam (lr 1e-3), full batch, on
//!
//! `L(U, D) = mean((X − exp(U)·D)²) + λ·mean(exp(U))`
//!
//! (both means over all elements; `exp(U) > 0`, so `|Z| = Z`). `D` starts as a
//! seeded standard normal (`ChaCha8Rng`) with unit-norm atoms and is
//! renormalised after every step (the reference renormalises before every
//! forward pass, which is the same sequence of dictionaries). Both gradients
//! are taken at the same point, then both tensors step: this is joint
//! descent, not alternating minimisation (for that see
//! [`crate::dictionary::sparse_coding`]).
//!
//! Test-time inference ([`JointAdam::encode`]) is the paper's `optimize_codes`:
//! [`ExpAdam`] on fresh codes against the learned, frozen `D`.

use crate::dictionary::unit_norm::{normalize_atoms, UnitNormAdam};
use crate::encoders::exp_adam::{ExpAdam, ExpAdamConfig};
use crate::encoders::{Encoder, Encoding};
use crate::error::{Error, Result};
use crate::flops::sparse_coding_train_flops;
use crate::linalg::{exp_f32, gemm_into, Op};
use crate::matrix::Matrix;
use crate::optim::{flush_subnormal, Adam, AdamConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// `ln(f32::MIN_POSITIVE)`: below it `exp` leaves the normal range (flushed to 0).
const SUBNORMAL_EXPONENT: f32 = -87.336;

/// Settings of joint exp-code / dictionary Adam; the defaults are the paper's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct JointAdamConfig {
    /// Number of atoms `N`.
    pub n_latents: usize,
    /// Data dimension `M`.
    pub dim: usize,
    /// L1 weight on the paper's mean scale (0.01).
    pub lambda: f32,
    /// Adam learning rate for codes and dictionary (1e-3).
    pub lr: f32,
    /// Initial log-code `U₀` (−10).
    pub init_log: f32,
    /// Seed of the dictionary initialisation.
    pub seed: u64,
    /// Test-time inference ([`ExpAdam`]; paper: λ 0.01, lr 3e-3, 10,000 iterations).
    pub inference: ExpAdamConfig,
}

impl JointAdamConfig {
    /// The paper's settings for `n_latents` atoms of dimension `dim`:
    /// λ = 0.01, lr = 1e-3, `U₀ = −10`, default [`ExpAdamConfig`] for inference.
    pub fn paper(n_latents: usize, dim: usize, seed: u64) -> Self {
        JointAdamConfig {
            n_latents,
            dim,
            lambda: 0.01,
            lr: 1e-3,
            init_log: -10.0,
            seed,
            inference: ExpAdamConfig::default(),
        }
    }

    /// Fails with [`Error::InvalidParameter`] for zero sizes, λ < 0 or non-finite,
    /// lr ≤ 0 or non-finite, an `init_log` whose exponential is 0 or infinite in
    /// f32, or an invalid inference config.
    pub fn validate(&self) -> Result<()> {
        if self.n_latents == 0 {
            return Err(Error::invalid("latents", self.n_latents, "must be ≥ 1"));
        }
        if self.dim == 0 {
            return Err(Error::invalid("dim", self.dim, "must be ≥ 1"));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(Error::invalid(
                "lambda",
                self.lambda,
                "must be finite and ≥ 0",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("lr", self.lr, "must be finite and > 0"));
        }
        let floor = self.init_log.exp();
        if !(floor > 0.0 && floor.is_finite()) {
            return Err(Error::invalid(
                "init_log",
                self.init_log,
                "exp(init_log) must be a positive finite f32",
            ));
        }
        self.inference.validate()
    }
}

/// Joint Adam on exp-parametrised training codes and a unit-norm dictionary.
#[derive(Clone, Debug)]
pub struct JointAdam {
    config: JointAdamConfig,
    n_samples: usize,
    u: Vec<f32>,
    z: Matrix,
    d: Matrix,
    adam_u: Adam,
    adam_d: UnitNormAdam,
    steps: usize,
}

impl JointAdam {
    /// Fresh state for `n_samples` training samples: `U = init_log`, `D` seeded
    /// standard normal with unit-norm atoms. Fails on an invalid config or `n_samples = 0`.
    pub fn new(config: JointAdamConfig, n_samples: usize) -> Result<Self> {
        config.validate()?;
        if n_samples == 0 {
            return Err(Error::invalid("n_samples", n_samples, "must be ≥ 1"));
        }
        let (nl, dim) = (config.n_latents, config.dim);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut d = Matrix::from_fn(nl, dim, |_, _| rng.sample::<f32, _>(StandardNormal));
        normalize_atoms(&mut d);
        let adam = AdamConfig::with_lr(config.lr);
        let floor = config.init_log.exp();
        Ok(JointAdam {
            n_samples,
            u: vec![config.init_log; n_samples * nl],
            z: Matrix::from_fn(n_samples, nl, |_, _| floor),
            d,
            adam_u: Adam::new(n_samples * nl, adam),
            adam_d: UnitNormAdam::new(nl, dim, adam, false),
            steps: 0,
            config,
        })
    }

    /// The settings.
    pub fn config(&self) -> &JointAdamConfig {
        &self.config
    }

    /// The learned dictionary `D (N × dim)`, unit-norm atoms.
    pub fn dictionary(&self) -> &Matrix {
        &self.d
    }

    /// The training codes `exp(U) (n_samples × N)`.
    pub fn codes(&self) -> &Matrix {
        &self.z
    }

    /// Steps taken so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One joint Adam step on the full batch `x (n_samples × dim)` (the same
    /// `x` every step); returns the loss before the step. Fails, leaving the
    /// state untouched, on a wrong shape, non-finite data or a non-finite
    /// loss, and with [`Error::Numerical`] if a code overflows.
    pub fn train_step(&mut self, x: &Matrix) -> Result<f32> {
        let (n, nl, dim) = (self.n_samples, self.config.n_latents, self.config.dim);
        x.expect_shape("data", Some(n), Some(dim))?;
        x.check_finite("data")?;
        // R = X − Z·D.
        let mut r = x.clone();
        gemm_into(
            r.view_mut(),
            true,
            self.z.view(),
            Op::N,
            self.d.view(),
            Op::N,
            -1.0,
        );
        let sq: f64 = r.as_slice().iter().map(|&v| (v as f64).powi(2)).sum();
        let l1: f64 = self.z.as_slice().iter().map(|&v| v as f64).sum();
        let loss = sq / (n * dim) as f64 + self.config.lambda as f64 * l1 / (n * nl) as f64;
        if !loss.is_finite() {
            return Err(Error::Numerical {
                what: "joint-adam sparse coding".to_string(),
                reason: format!("loss is {loss}; state left unchanged"),
            });
        }
        // ∂L/∂X̂ = −(2/(nM))·R; ∂L/∂Z = ∂L/∂X̂·Dᵀ + λ/(nN); ∂L/∂U = ∂L/∂Z ⊙ Z; ∂L/∂D = Zᵀ·∂L/∂X̂.
        let scale = (-2.0 / (n as f64 * dim as f64)) as f32;
        r.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
        let mut grad_u = Matrix::zeros(n, nl);
        gemm_into(
            grad_u.view_mut(),
            false,
            r.view(),
            Op::N,
            self.d.view(),
            Op::T,
            1.0,
        );
        let l1_grad = (self.config.lambda as f64 / (n as f64 * nl as f64)) as f32;
        for (g, &zv) in grad_u.as_mut_slice().iter_mut().zip(self.z.as_slice()) {
            *g = flush_subnormal((*g + l1_grad) * zv);
        }
        let mut grad_d = Matrix::zeros(nl, dim);
        gemm_into(
            grad_d.view_mut(),
            false,
            self.z.view(),
            Op::T,
            r.view(),
            Op::N,
            1.0,
        );
        let mut u = self.u.clone();
        let mut adam_u = self.adam_u.clone();
        adam_u.step(&mut u, grad_u.as_slice());
        let mut z = Matrix::zeros(n, nl);
        for (zv, &uv) in z.as_mut_slice().iter_mut().zip(&u) {
            *zv = if uv < SUBNORMAL_EXPONENT {
                0.0
            } else {
                exp_f32(uv)
            };
        }
        if let Err(e) = z.check_finite("codes") {
            return Err(Error::Numerical {
                what: "joint-adam sparse coding".to_string(),
                reason: format!("codes overflowed ({e}); state left unchanged"),
            });
        }
        self.u = u;
        self.z = z;
        self.adam_u = adam_u;
        self.adam_d.step(&mut self.d, &mut grad_d);
        self.steps += 1;
        Ok(loss as f32)
    }

    /// FLOPs of one [`JointAdam::train_step`]:
    /// [`sparse_coding_train_flops`]`(dim, N, n_samples, 1, true)`, i.e. per sample
    /// `exp` (N), decode with residual and squared loss (2NM + 3M), L1 (N),
    /// `∂L/∂X̂` scaling (M), `R·Dᵀ` (2NM), `+λ`, `⊙Z` (2N), Adam (12N), `Zᵀ·R` (2NM);
    /// once per step renormalisation (3NM) and Adam on `D` (12NM).
    pub fn train_step_flops(&self) -> f64 {
        sparse_coding_train_flops(
            self.config.dim,
            self.config.n_latents,
            self.n_samples,
            1,
            true,
        )
    }

    /// The paper's test-time inference: [`ExpAdam`] (`config.inference`) from
    /// fresh codes against the learned, frozen dictionary. Fails on bad input.
    pub fn encode(&self, x: &Matrix) -> Result<Encoding> {
        ExpAdam::new(self.config.inference)?.encode(x, &self.d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SyntheticConfig;
    use crate::dictionary::unit_norm::max_atom_norm_error;
    use crate::metrics::{code_mcc, dictionary_mcc};

    fn data(n: usize) -> (Matrix, Matrix, Matrix) {
        let cfg = SyntheticConfig::paper(16, 8, 3, 20240926);
        let d = cfg.dictionary().unwrap();
        let s = cfg.split(&d, n, 1).unwrap();
        (s.x, s.z, d)
    }

    #[test]
    fn loss_decreases_and_atoms_stay_unit_norm() {
        let (x, _, _) = data(128);
        let mut sc = JointAdam::new(JointAdamConfig::paper(16, 8, 1), 128).unwrap();
        assert!(max_atom_norm_error(sc.dictionary()) < 1e-5);
        let mut losses = vec![];
        for step in 1..=3000 {
            let l = sc.train_step(&x).unwrap();
            if [1, 100, 1000, 2000, 3000].contains(&step) {
                losses.push(l);
            }
            assert!(max_atom_norm_error(sc.dictionary()) < 1e-5, "step {step}");
        }
        assert_eq!(sc.steps(), 3000);
        assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
        assert!(sc.codes().as_slice().iter().all(|&v| v > 0.0));
    }

    #[test]
    fn dictionary_mcc_rises_on_paper_data() {
        let n = 256;
        let (x, z, d_true) = data(n);
        let mut sc = JointAdam::new(JointAdamConfig::paper(16, 8, 42), n).unwrap();
        let initial = dictionary_mcc(&d_true, sc.dictionary()).unwrap();
        let steps = 6000;
        for _ in 0..steps {
            sc.train_step(&x).unwrap();
        }
        let last = dictionary_mcc(&d_true, sc.dictionary()).unwrap();
        let train_code_mcc = code_mcc(&z, sc.codes()).unwrap();
        eprintln!(
            "dictionary MCC {initial:.4} → {last:.4} after {steps} steps (n = {n}); \
             training-code MCC {train_code_mcc:.4}"
        );
        assert!(last > initial + 0.1, "{initial} → {last}");
    }

    #[test]
    fn deterministic_and_validated() {
        let (x, _, _) = data(64);
        let run = || {
            let mut sc = JointAdam::new(JointAdamConfig::paper(16, 8, 7), 64).unwrap();
            for _ in 0..200 {
                sc.train_step(&x).unwrap();
            }
            sc
        };
        let (a, b) = (run(), run());
        assert_eq!(a.dictionary(), b.dictionary());
        assert_eq!(a.codes(), b.codes());
        let other = JointAdam::new(JointAdamConfig::paper(16, 8, 8), 64).unwrap();
        assert_ne!(other.dictionary(), a.dictionary());

        let mut bad_cfg = JointAdamConfig::paper(16, 8, 0);
        bad_cfg.lr = 0.0;
        assert!(JointAdam::new(bad_cfg, 64).is_err());
        assert!(JointAdam::new(JointAdamConfig::paper(0, 8, 0), 64).is_err());
        assert!(JointAdam::new(JointAdamConfig::paper(16, 8, 0), 0).is_err());
        let mut sc = JointAdam::new(JointAdamConfig::paper(16, 8, 0), 64).unwrap();
        assert!(sc.train_step(&Matrix::zeros(63, 8)).is_err());
        let mut nan = x.clone();
        nan.set(3, 2, f32::NAN);
        let before = sc.dictionary().clone();
        assert!(sc.train_step(&nan).is_err());
        assert_eq!(sc.dictionary(), &before);
        assert_eq!(sc.steps(), 0);
    }

    #[test]
    fn flops_match_the_shared_formula_and_encode_runs_exp_adam() {
        let (x, _, _) = data(32);
        let mut cfg = JointAdamConfig::paper(16, 8, 3);
        cfg.inference.max_iter = 50;
        let sc = JointAdam::new(cfg, 32).unwrap();
        let (m, nl, n) = (8.0, 16.0, 32.0);
        let per_sample = nl
            + 2.0 * nl * m
            + 3.0 * m
            + nl
            + m
            + 2.0 * nl * m
            + 2.0 * nl
            + 12.0 * nl
            + 2.0 * nl * m;
        let per_step = 3.0 * nl * m + 12.0 * nl * m;
        assert_eq!(sc.train_step_flops(), n * per_sample + per_step);
        let enc = sc.encode(&x).unwrap();
        let want = ExpAdam::new(cfg.inference)
            .unwrap()
            .encode(&x, sc.dictionary())
            .unwrap();
        assert_eq!(enc.codes, want.codes);
        assert_eq!(enc.iterations, 50);
        assert!(sc.encode(&Matrix::zeros(2, 7)).is_err());
    }
}
