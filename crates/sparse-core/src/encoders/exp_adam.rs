//! The paper's per-sample inference (paper-spec §2.3, `optimize_codes`), kept
//! for faithfulness: codes `Z = exp(U)` with `U` free, optimised by full-batch
//! Adam on the paper's loss
//!
//! `L(U) = mean((X − Z·D)²) + λ·mean(|Z|)`,
//!
//! both means over all elements (`n·dim` and `n·N`). `U` starts at `init_log`
//! (−10), so every code starts at `e⁻¹⁰ ≈ 4.5e-5`.
//!
//! Its codes are **never exactly zero** until they leave f32's normal range
//! (below `e⁻⁸⁷ ≈ 1e-38`, where they are flushed to 0), so an L0 count needs a
//! threshold; proximal solvers such as
//! [`crate::encoders::fista::Fista`] give exact zeros.
//!
//! **λ scales.** Per sample, `L` is `(1/(n·M))·[‖x − zD‖² + λ·(M/N)·‖z‖₁]`, so
//! for `z ≥ 0` its minimiser is the non-negative lasso `½‖x − zD‖² + λ_lasso‖z‖₁`
//! with `λ_lasso = λ·M / (2N)` ([`lasso_lambda_from_paper`]). The paper's
//! λ = 0.01 at N = 16, M = 8 is `λ_lasso = 0.0025`.

use crate::encoders::{check_inputs, Encoder, Encoding, Monitor, SolverProgress};
use crate::error::{Error, Result};
use crate::linalg::{exp_f32, gemm_into, matmul_new, vectorised, Op};
use crate::matrix::Matrix;
use crate::optim::{flush_subnormal, Adam, AdamConfig, ADAM_FLOPS_PER_PARAM};

/// `ln(f32::MIN_POSITIVE)`: below it `exp` leaves the normal range.
const SUBNORMAL_EXPONENT: f32 = -87.336;

/// Settings of the exp-parametrised Adam solver; the defaults are the paper's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ExpAdamConfig {
    /// L1 weight on the paper's mean scale (see [`lasso_lambda_from_paper`]).
    pub lambda: f32,
    /// Adam learning rate (paper: 3e-3; its known-D study used 1e-3 for 20,000 iterations).
    pub lr: f32,
    /// Adam iterations, all run (paper: 10,000; 1,000 in its scaling study).
    pub max_iter: usize,
    /// Initial log-code `U₀`, also the floor applied to a warm start.
    pub init_log: f32,
}

impl Default for ExpAdamConfig {
    /// λ = 0.01, lr = 3e-3, 10,000 iterations, `init_log` = −10 (paper-spec §2.3).
    fn default() -> Self {
        ExpAdamConfig {
            lambda: 0.01,
            lr: 3e-3,
            max_iter: 10_000,
            init_log: -10.0,
        }
    }
}

impl ExpAdamConfig {
    /// Fails with [`Error::InvalidParameter`] for λ < 0 or non-finite, lr ≤ 0 or
    /// non-finite, `max_iter = 0`, or an `init_log` whose exponential is 0 or infinite in f32.
    pub fn validate(&self) -> Result<()> {
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
        if self.max_iter == 0 {
            return Err(Error::invalid("max_iter", self.max_iter, "must be ≥ 1"));
        }
        let floor = self.init_log.exp();
        if !(floor > 0.0 && floor.is_finite()) {
            return Err(Error::invalid(
                "init_log",
                self.init_log,
                "exp(init_log) must be a positive finite f32",
            ));
        }
        Ok(())
    }
}

/// The paper's solver: Adam on exp-parametrised codes.
#[derive(Clone, Debug)]
pub struct ExpAdam {
    /// Solver settings.
    pub config: ExpAdamConfig,
}

/// FLOPs per code per iteration outside the two products: scaling the
/// fit gradient (1), adding the L1 gradient (1), chaining through `exp`
/// (multiply by `z`, 1), the Adam update, and the new `exp` (1).
const ELEMENTWISE_FLOPS: f64 = 4.0 + ADAM_FLOPS_PER_PARAM;

/// Our FLOP count for [`ExpAdam::solve`] over `iterations` iterations on `n` samples:
/// `n·[w + T(4NM + M + 16N)]` with `w = 3N` for a warm start (`max`, `ln`, `exp`) and
/// `w = 0` otherwise (the constant start needs no arithmetic).
///
/// Per sample and iteration: `Z·D` with the residual fused into it (`2NM + M`),
/// `R·Dᵀ` (`2NM`), then `16N` (scale, L1 term, chain rule,
/// Adam's 12, `exp`). The loss value itself is not computed. Compare
/// [`paper_inference_flops`], the reference's `n·[(MN + N) + T(4MN + 2M + 11N)]`.
pub fn inference_flops(
    n: usize,
    dim: usize,
    n_latents: usize,
    iterations: usize,
    warm_start: bool,
) -> f64 {
    let (nf, m, nl) = (n as f64, dim as f64, n_latents as f64);
    let setup = if warm_start { 3.0 * nl } else { 0.0 };
    nf * (setup + iterations as f64 * (4.0 * nl * m + m + ELEMENTWISE_FLOPS * nl))
}

/// The reference code's inference FLOPs (paper-spec §4, `calculate_optimize_codes_flops`):
/// `n·[(MN + N) + T(4MN + 2M + 11N)]`; 7.21e9 for n = 1024, M = 8, N = 16, T = 10,000.
pub fn paper_inference_flops(n: usize, dim: usize, n_latents: usize, iterations: usize) -> f64 {
    let (nf, m, nl) = (n as f64, dim as f64, n_latents as f64);
    nf * ((m * nl + nl) + iterations as f64 * (4.0 * m * nl + 2.0 * m + 11.0 * nl))
}

/// The lasso λ (`½‖x − zD‖² + λ‖z‖₁` per sample, as in [`crate::encoders::fista`])
/// equivalent to the paper's mean-scale λ: `λ_paper · dim / (2 · n_latents)`.
pub fn lasso_lambda_from_paper(lambda_paper: f32, dim: usize, n_latents: usize) -> f32 {
    lambda_paper * dim as f32 / (2.0 * n_latents as f32)
}

/// The paper's mean-scale λ equivalent to a lasso λ: `λ_lasso · 2 · n_latents / dim`.
pub fn paper_lambda_from_lasso(lambda_lasso: f32, dim: usize, n_latents: usize) -> f32 {
    lambda_lasso * 2.0 * n_latents as f32 / dim as f32
}

/// The paper's loss `mean((X − Z·D)²) + λ·mean(|Z|)` in f64, for `x (n × dim)`,
/// `dictionary (N × dim)` and `codes (n × N)`. Fails on mismatched shapes.
pub fn paper_loss(x: &Matrix, dictionary: &Matrix, codes: &Matrix, lambda: f32) -> Result<f64> {
    check_inputs(x, dictionary)?;
    codes.expect_shape("codes", Some(x.rows()), Some(dictionary.rows()))?;
    if x.rows() == 0 {
        return Ok(0.0);
    }
    let recon = matmul_new(codes, Op::N, dictionary, Op::N);
    let sq: f64 = x
        .as_slice()
        .iter()
        .zip(recon.as_slice())
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum();
    let l1: f64 = codes.as_slice().iter().map(|&v| (v as f64).abs()).sum();
    Ok(sq / x.as_slice().len() as f64 + lambda as f64 * l1 / codes.as_slice().len() as f64)
}

impl ExpAdam {
    /// A solver with validated `config`.
    pub fn new(config: ExpAdamConfig) -> Result<Self> {
        config.validate()?;
        Ok(ExpAdam { config })
    }

    /// Runs `max_iter` Adam iterations on the codes of every row of `x (n × dim)`
    /// under `dictionary (N × dim)`; returns `Z = exp(U)`.
    ///
    /// `init (n × N)` warm-starts at `U₀ = ln(max(z₀, exp(init_log)))` (the fix for
    /// the reference's broken "SAE_ITO_init", paper-spec §2.4); otherwise `U₀ = init_log`.
    /// `monitor` sees every iteration with the cumulative FLOPs ([`inference_flops`])
    /// and may stop early. Fails on bad shapes or non-finite inputs, and with
    /// [`Error::Numerical`] if a code overflows.
    ///
    /// Adam runs over all `n·N` log-codes as one tensor, with gradients of the
    /// batch-mean loss, exactly as the reference does: with small gradients,
    /// Adam's `eps` (1e-8) makes the trajectory depend on `n`, as it does there.
    pub fn solve(
        &self,
        x: &Matrix,
        dictionary: &Matrix,
        init: Option<&Matrix>,
        monitor: Option<Monitor<'_>>,
    ) -> Result<Encoding> {
        check_inputs(x, dictionary)?;
        let (n, dim) = x.shape();
        let nl = dictionary.rows();
        if let Some(z0) = init {
            z0.expect_shape("init", Some(n), Some(nl))?;
            z0.check_finite("init")?;
        }
        let cfg = self.config;
        let mut monitor = monitor;
        if n == 0 {
            return Ok(Encoding {
                codes: Matrix::zeros(0, nl),
                flops: 0.0,
                iterations: 0,
            });
        }

        let floor = cfg.init_log.exp();
        let (mut u, mut z) = match init {
            Some(z0) => {
                let u: Vec<f32> = z0.as_slice().iter().map(|&v| v.max(floor).ln()).collect();
                let z = Matrix::from_vec(n, nl, u.iter().map(|&v| exp_f32(v)).collect())?;
                (u, z)
            }
            None => (
                vec![cfg.init_log; n * nl],
                Matrix::from_fn(n, nl, |_, _| floor),
            ),
        };
        let mut flops = inference_flops(n, dim, nl, 0, init.is_some());
        let per_iter = inference_flops(n, dim, nl, 1, false);

        // d mean((X − ZD)²) / dZ = (2/(nM))·(ZD − X)·Dᵀ; d λ·mean|Z| / dZ = λ/(nN) for Z > 0.
        let fit_scale = (2.0 / (n as f64 * dim as f64)) as f32;
        let l1_grad = (cfg.lambda as f64 / (n as f64 * nl as f64)) as f32;
        let mut neg_resid = Matrix::zeros(n, dim);
        let mut grad = Matrix::zeros(n, nl);
        let mut adam = Adam::new(n * nl, AdamConfig::with_lr(cfg.lr));

        let mut iterations = 0;
        for it in 1..=cfg.max_iter {
            neg_resid.as_mut_slice().copy_from_slice(x.as_slice());
            gemm_into(
                neg_resid.view_mut(),
                true,
                z.view(),
                Op::N,
                dictionary.view(),
                Op::N,
                -1.0,
            );
            gemm_into(
                grad.view_mut(),
                false,
                neg_resid.view(),
                Op::N,
                dictionary.view(),
                Op::T,
                -fit_scale,
            );
            // Chain rule through Z = exp(U): dL/dU = dL/dZ ⊙ Z.
            let (g_all, z_all) = (grad.as_mut_slice(), z.as_slice());
            vectorised(move || {
                for (g, &zv) in g_all.iter_mut().zip(z_all) {
                    *g = flush_subnormal((*g + l1_grad) * zv);
                }
            });
            adam.step(&mut u, grad.as_slice());
            let (z_all, u_all) = (z.as_mut_slice(), &u[..]);
            let finite = vectorised(move || {
                let mut finite = true;
                for (zv, &uv) in z_all.iter_mut().zip(u_all) {
                    // exp(u) for u < −87 is subnormal: flushed to 0, since subnormal
                    // operands slow every later product and are 0 at f32 precision.
                    *zv = if uv < SUBNORMAL_EXPONENT {
                        0.0
                    } else {
                        exp_f32(uv)
                    };
                    finite &= zv.is_finite();
                }
                finite
            });
            flops += per_iter;
            iterations = it;
            if !finite {
                return Err(Error::Numerical {
                    what: self.name(),
                    reason: format!(
                        "codes overflowed at iteration {it} (learning rate too large?)"
                    ),
                });
            }
            if let Some(m) = monitor.as_mut() {
                let progress = SolverProgress {
                    iteration: it,
                    codes: &z,
                    flops,
                };
                if !m(&progress) {
                    break;
                }
            }
        }
        Ok(Encoding {
            codes: z,
            flops,
            iterations,
        })
    }
}

impl Encoder for ExpAdam {
    /// `"exp-adam"`.
    fn name(&self) -> String {
        "exp-adam".to_string()
    }

    /// [`ExpAdam::solve`] from the constant start, without a monitor.
    fn encode(&self, x: &Matrix, dictionary: &Matrix) -> Result<Encoding> {
        self.solve(x, dictionary, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoders::fista::{Fista, FistaConfig};
    use rand::{seq::index::sample, Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    /// Unit-norm dictionary and noiseless data from `k`-sparse non-negative codes (paper-spec §1).
    fn problem(seed: u64, n: usize, nl: usize, dim: usize, k: usize) -> (Matrix, Matrix) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut d = Matrix::from_fn(nl, dim, |_, _| rng.sample::<f32, _>(StandardNormal));
        d.normalize_rows();
        let mut z = Matrix::zeros(n, nl);
        for i in 0..n {
            for j in sample(&mut rng, nl, k) {
                z.set(i, j, rng.sample::<f32, _>(StandardNormal).abs() + 0.3);
            }
        }
        (matmul_new(&z, Op::N, &d, Op::N), d)
    }

    fn lasso_objective(x: &Matrix, d: &Matrix, z: &Matrix, lambda: f64) -> f64 {
        let r = matmul_new(z, Op::N, d, Op::N);
        let sq: f64 = x
            .as_slice()
            .iter()
            .zip(r.as_slice())
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        0.5 * sq + lambda * z.as_slice().iter().map(|&v| (v as f64).abs()).sum::<f64>()
    }

    fn fista(lambda: f32) -> Fista {
        Fista::new(FistaConfig {
            lambda,
            max_iter: 20_000,
            tol: 1e-7,
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn loss_decreases_and_codes_stay_positive() {
        let (x, d) = problem(20, 8, 16, 8, 3);
        let solver = ExpAdam::new(ExpAdamConfig {
            max_iter: 2000,
            ..Default::default()
        })
        .unwrap();
        let start =
            paper_loss(&x, &d, &Matrix::from_fn(8, 16, |_, _| (-10f32).exp()), 0.01).unwrap();
        let mut losses = vec![start];
        let mut mon = |p: &SolverProgress<'_>| {
            if [10, 100, 500, 1000, 2000].contains(&p.iteration) {
                losses.push(paper_loss(&x, &d, p.codes, 0.01).unwrap());
            }
            true
        };
        let enc = solver.solve(&x, &d, None, Some(&mut mon)).unwrap();
        assert_eq!(enc.iterations, 2000);
        assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
        assert!(losses[5] < 0.05 * losses[0], "{losses:?}");
        assert!(
            enc.codes.as_slice().iter().all(|&v| v > 0.0),
            "exp codes are never zero"
        );
    }

    #[test]
    fn approaches_the_nonnegative_lasso_at_the_equivalent_lambda() {
        let (n, nl, dim) = (3, 4, 8);
        let (x, d) = problem(21, n, nl, dim, 2);
        let lambda_paper = 0.05;
        let lambda = lasso_lambda_from_paper(lambda_paper, dim, nl);
        assert!((paper_lambda_from_lasso(lambda, dim, nl) - lambda_paper).abs() < 1e-7);
        let reference = fista(lambda).encode(&x, &d).unwrap().codes;
        let adam = ExpAdam::new(ExpAdamConfig {
            lambda: lambda_paper,
            ..Default::default()
        })
        .unwrap()
        .encode(&x, &d)
        .unwrap()
        .codes;
        let diff = adam.max_abs_diff(&reference);
        assert!(diff < 5e-3, "max |z_adam − z_fista| = {diff}");
        let (fa, ff) = (
            lasso_objective(&x, &d, &adam, lambda as f64),
            lasso_objective(&x, &d, &reference, lambda as f64),
        );
        assert!(
            fa >= ff * (1.0 - 1e-6) && fa < ff * (1.0 + 1e-3),
            "exp-adam {fa} vs fista {ff}"
        );
    }

    #[test]
    fn paper_loss_is_the_lasso_objective_rescaled() {
        let (n, nl, dim) = (5, 6, 4);
        let (x, d) = problem(22, n, nl, dim, 2);
        let z = Matrix::from_fn(n, nl, |i, j| ((i * 7 + j * 3) % 5) as f32 * 0.2);
        let lambda_paper = 0.3;
        let lambda = lasso_lambda_from_paper(lambda_paper, dim, nl) as f64;
        let paper = paper_loss(&x, &d, &z, lambda_paper).unwrap();
        let lasso = lasso_objective(&x, &d, &z, lambda);
        assert!((paper * (n * dim) as f64 / 2.0 - lasso).abs() < 1e-5 * lasso);
    }

    #[test]
    fn warm_start_begins_at_the_given_codes() {
        let (n, nl, dim) = (4, 6, 8);
        let (x, d) = problem(23, n, nl, dim, 2);
        let lambda_paper = 0.05;
        let reference = fista(lasso_lambda_from_paper(lambda_paper, dim, nl))
            .encode(&x, &d)
            .unwrap()
            .codes;
        let short = ExpAdam::new(ExpAdamConfig {
            lambda: lambda_paper,
            max_iter: 50,
            ..Default::default()
        })
        .unwrap();
        let target = paper_loss(&x, &d, &reference, lambda_paper).unwrap();
        let warm = short.solve(&x, &d, Some(&reference), None).unwrap();
        let cold = short.encode(&x, &d).unwrap();
        let warm_loss = paper_loss(&x, &d, &warm.codes, lambda_paper).unwrap();
        let cold_loss = paper_loss(&x, &d, &cold.codes, lambda_paper).unwrap();
        assert!(
            warm_loss < target * 1.05,
            "warm {warm_loss} vs optimum {target}"
        );
        assert!(
            cold_loss > 10.0 * target,
            "cold {cold_loss} vs optimum {target}"
        );
        // Zeros of the warm start are floored at exp(init_log), never log(0).
        assert!(warm
            .codes
            .as_slice()
            .iter()
            .all(|&v| v > 0.0 && v.is_finite()));
    }

    #[test]
    fn flops_follow_the_formula_and_the_monitor_can_stop() {
        let (n, nl, dim) = (3usize, 5usize, 4usize);
        let (x, d) = problem(24, n, nl, dim, 2);
        let solver = ExpAdam::new(ExpAdamConfig::default()).unwrap();
        let mut seen = Vec::new();
        let mut mon = |p: &SolverProgress<'_>| {
            seen.push(p.flops);
            p.iteration < 7
        };
        let enc = solver.solve(&x, &d, None, Some(&mut mon)).unwrap();
        assert_eq!(enc.iterations, 7);
        assert!(seen.windows(2).all(|w| w[1] > w[0]));
        let per = (4 * nl * dim + dim + 16 * nl) as f64;
        assert_eq!(enc.flops, n as f64 * 7.0 * per);
        assert_eq!(enc.flops, inference_flops(n, dim, nl, 7, false));
        let warm = solver
            .solve(&x, &d, Some(&enc.codes), Some(&mut |p| p.iteration < 7))
            .unwrap();
        assert_eq!(warm.flops, enc.flops + 3.0 * (n * nl) as f64);
        // The reference's formula, checked against its reported value (paper-spec §4).
        let paper = paper_inference_flops(1024, 8, 16, 10_000);
        assert!((paper / 7.21e9 - 1.0).abs() < 1e-3, "{paper:e}");
    }

    #[test]
    fn overflow_is_reported_as_numerical_failure() {
        let (x, d) = problem(25, 2, 3, 4, 1);
        let solver = ExpAdam::new(ExpAdamConfig {
            lr: 100.0,
            ..Default::default()
        })
        .unwrap();
        let err = solver.encode(&x, &d).unwrap_err();
        assert!(matches!(err, Error::Numerical { .. }), "{err}");
    }

    #[test]
    fn rejects_bad_parameters_and_inputs() {
        let bad = |cfg: ExpAdamConfig| ExpAdam::new(cfg).is_err();
        assert!(bad(ExpAdamConfig {
            lambda: -1.0,
            ..Default::default()
        }));
        assert!(bad(ExpAdamConfig {
            lr: 0.0,
            ..Default::default()
        }));
        assert!(bad(ExpAdamConfig {
            lr: f32::INFINITY,
            ..Default::default()
        }));
        assert!(bad(ExpAdamConfig {
            max_iter: 0,
            ..Default::default()
        }));
        assert!(bad(ExpAdamConfig {
            init_log: -200.0,
            ..Default::default()
        }));
        assert!(bad(ExpAdamConfig {
            init_log: f32::NAN,
            ..Default::default()
        }));
        let s = ExpAdam::new(ExpAdamConfig::default()).unwrap();
        assert_eq!(s.name(), "exp-adam");
        let d = Matrix::identity(3);
        let mut x = Matrix::zeros(2, 3);
        assert!(s.solve(&x, &d, Some(&Matrix::zeros(3, 3)), None).is_err());
        assert!(s.encode(&x, &Matrix::identity(2)).is_err());
        x.set(0, 0, f32::NAN);
        assert!(matches!(s.encode(&x, &d), Err(Error::NonFinite { .. })));
    }
}
