//! ISTA and FISTA for the lasso, one problem per sample, solved as a batch.
//!
//! Each sample `x` (a row of `X`) gets the codes
//! `z = argmin ½‖x − z·D‖² + λ‖z‖₁`, by default under `z ≥ 0` (the
//! non-negative lasso, matching the half-normal codes of the synthetic data);
//! `nonnegative: false` solves the signed lasso.
//!
//! λ is on the **lasso scale** (sum over the sample's `dim` squared errors,
//! halved). The paper's loss (paper-spec §2) is `mean((X − ZD)²) + λ_paper·mean(|Z|)`;
//! per sample that is the lasso with `λ = λ_paper · dim / (2 · n_latents)`
//! (see [`crate::encoders::exp_adam::lasso_lambda_from_paper`]).
//!
//! The step is `1/L` with `L` the largest eigenvalue of `D·Dᵀ` (the Lipschitz
//! constant of the gradient); FISTA adds Beck–Teboulle momentum
//! `t₊ = (1 + √(1 + 4t²))/2`, `y = z₊ + (t − 1)/t₊ · (z₊ − z)` (paper-spec §9).

use crate::encoders::{check_inputs, Encoder, Encoding, Monitor, SolverProgress};
use crate::error::{Error, Result};
use crate::linalg::{dot_f64_by_lanes, gemm_into, matmul_new, vectorised, Op};
use crate::matrix::Matrix;
use rayon::prelude::*;

/// Lasso solver settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FistaConfig {
    /// L1 weight λ ≥ 0 on the lasso scale `½‖x − zD‖² + λ‖z‖₁`.
    pub lambda: f32,
    /// Iteration cap (≥ 1).
    pub max_iter: usize,
    /// Stop when `‖Z₊ − Z‖_F / ‖Z‖_F < tol` over the batch; `0` runs `max_iter` iterations.
    pub tol: f32,
    /// Constrain codes to `z ≥ 0` (prox `max(0, v − λ/L)`); otherwise soft-threshold.
    pub nonnegative: bool,
    /// FISTA momentum; `false` gives plain ISTA.
    pub accelerated: bool,
}

impl Default for FistaConfig {
    /// λ = 0.1 (the follow-up's default, paper-spec §9; for unit-norm atoms it
    /// keeps codes of size ≳ 0.1 while zeroing most others), 1000 iterations,
    /// tol 1e-6, non-negative, accelerated.
    fn default() -> Self {
        FistaConfig {
            lambda: 0.1,
            max_iter: 1000,
            tol: 1e-6,
            nonnegative: true,
            accelerated: true,
        }
    }
}

impl FistaConfig {
    /// Fails with [`Error::InvalidParameter`] for λ < 0 or non-finite, `max_iter = 0`,
    /// or `tol` negative or non-finite.
    pub fn validate(&self) -> Result<()> {
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(Error::invalid(
                "lambda",
                self.lambda,
                "must be finite and ≥ 0",
            ));
        }
        if self.max_iter == 0 {
            return Err(Error::invalid("max_iter", self.max_iter, "must be ≥ 1"));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(Error::invalid("tol", self.tol, "must be finite and ≥ 0"));
        }
        Ok(())
    }
}

/// How the gradient `(Z·D − X)·Dᵀ` is formed each iteration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GradientForm {
    /// [`GradientForm::Gram`] when `n_latents < 2·dim`, else [`GradientForm::Residual`]:
    /// whichever costs fewer FLOPs per iteration.
    #[default]
    Auto,
    /// `Z·G − C` with `G = D·Dᵀ` and `C = X·Dᵀ` precomputed: `2nN²` FLOPs per iteration.
    Gram,
    /// `(Z·D − X)·Dᵀ`, two products: `4nNM` FLOPs per iteration, no `N × N`
    /// matrix. On large problems (`nNM ≥` [`SPARSE_MIN_MACS`]) whose
    /// extrapolated codes are sparse (at most 1/[`SPARSE_DENSITY_INVERSE`]
    /// non-zero), `Z·D` is formed sparse × dense: `2·nnz·M` FLOPs instead of
    /// `2nNM`; and once Gap Safe screening (see [`Fista::solve`]) has proved
    /// all but 1/[`SCREEN_DENSITY_INVERSE`] of the (sample, atom) pairs zero
    /// at the solution, `R·Dᵀ` is formed for the remaining pairs only.
    Residual,
    /// [`GradientForm::Residual`] with both products always dense (a reference
    /// for tests and benchmarks).
    ResidualDense,
}

/// Multiply-adds `n·N·M` below which `Z·D` stays dense: small problems gain
/// nothing, and keeping them on one path keeps their FLOP counts simple.
pub const SPARSE_MIN_MACS: usize = 1 << 20;

/// `Z·D` goes sparse × dense when at most one code in this many is non-zero:
/// a sparse row update streams one atom (`M` floats) per non-zero, about
/// 16 times slower per FLOP than a cache-blocked GEMM.
pub const SPARSE_DENSITY_INVERSE: usize = 16;

/// Iterations between two Gap Safe screening checks (residual form, large
/// problems, before the active set is in use).
pub const SCREEN_EVERY: usize = 10;

/// `R·Dᵀ` is formed for the surviving pairs only once at most one
/// (sample, atom) pair in this many survives screening: a dot product per
/// pair, each gathering a residual row, runs at a fraction of the dense
/// product's rate per FLOP (formed pair by pair from 1/16 on, it was slower
/// than the dense product at 1024 × 768 × 16384).
pub const SCREEN_DENSITY_INVERSE: usize = 32;

/// An atom is screened only when its bound on `dⱼ·θ*` stays this far below
/// 1: the correlations come from f32 products, whose rounding (≈ 1e-5 of
/// `‖r‖·‖dⱼ‖` at `M` = 768) must not make an active atom look inactive.
const SCREEN_MARGIN: f64 = 1e-3;

/// ISTA / FISTA solver for the (non-negative) lasso.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Fista {
    /// Solver settings.
    pub config: FistaConfig,
    /// Gradient form; [`Fista::new`] sets [`GradientForm::Auto`].
    pub gradient: GradientForm,
}

/// Rows processed by one rayon task in the elementwise pass: about 16k values,
/// enough to amortise dispatch; fixed so that sums do not depend on thread count.
const BLOCK_VALUES: usize = 1 << 14;

/// Elementwise passes over fewer values than this stay on one thread.
const PARALLEL_MIN_VALUES: usize = 1 << 16;

/// Guards the relative-change denominator when `Z = 0`.
const TINY: f64 = 1e-30;

/// FLOPs per code per iteration of the fused update, without momentum:
/// gradient step `y + g/L` (2), prox (1, soft-threshold convention),
/// change `z₊ − z` (1), its square accumulated (2), `‖z₊‖²` accumulated (2).
const UPDATE_FLOPS: f64 = 8.0;

/// Extra FLOPs per code per iteration for FISTA's `y = z₊ + β(z₊ − z)` (one multiply-add).
const MOMENTUM_FLOPS: f64 = 2.0;

/// Per-step constants of the fused update.
#[derive(Clone, Copy)]
struct Step {
    inv_l: f32,
    threshold: f32,
    beta: f32,
    nonnegative: bool,
    accelerated: bool,
    /// Count the non-zeros of the new `y` (only the sparse `Y·D` path reads them).
    count_nonzeros: bool,
}

impl Fista {
    /// A solver with validated `config` and automatic gradient form.
    pub fn new(config: FistaConfig) -> Result<Self> {
        config.validate()?;
        Ok(Fista {
            config,
            gradient: GradientForm::Auto,
        })
    }

    /// The same solver with the gradient form forced to `gradient`.
    pub fn with_gradient(mut self, gradient: GradientForm) -> Self {
        self.gradient = gradient;
        self
    }

    /// Whether `solve` uses the Gram form for `n_latents` latents of dimension `dim`.
    pub fn uses_gram(&self, n_latents: usize, dim: usize) -> bool {
        match self.gradient {
            GradientForm::Gram => true,
            GradientForm::Residual | GradientForm::ResidualDense => false,
            // Per iteration: Gram 2nN² vs residual 4nNM FLOPs.
            GradientForm::Auto => n_latents < 2 * dim,
        }
    }

    /// Solves the lasso for every row of `x (n × dim)` under `dictionary (N × dim)`.
    ///
    /// `init (n × N)` warm-starts the codes (projected onto `z ≥ 0` when
    /// non-negative); otherwise they start at zero. `monitor` sees every
    /// iteration with the cumulative FLOPs (setup included) and stops the
    /// solver by returning `false`. Fails on bad shapes or non-finite inputs, and
    /// with [`Error::Numerical`] if the codes become non-finite.
    ///
    /// FLOPs (n samples, N latents, M = dim, `P` power iterations on a `k × k` matrix):
    /// - setup, Gram form: `2N²M` (G) + `2nNM` (C) + `P(2k² + 7k)` with `k = N`;
    /// - setup, residual form: `2k²·max(N, M)` (`D·Dᵀ` or `Dᵀ·D`, the smaller,
    ///   `k = min(N, M)`) + `P(2k² + 7k)`;
    /// - warm start: `2nN` (`‖Z₀‖²`), plus `nN` for the projection when non-negative;
    /// - per iteration: `2nN² + nN` (Gram: `Y·G` accumulated onto `C`) or
    ///   `4nNM + nM` (residual: `Y·D` accumulated onto `X`, then `R·Dᵀ`;
    ///   `2·nnz(Y)·M + 2nNM + nM` when `Y·D` is sparse × dense, and
    ///   `2·|A|·M` instead of `2nNM` for `R·Dᵀ` over the active pairs `A`
    ///   once screening has left few),
    ///   plus `8nN` for the update (gradient step 2, prox 1, change 1, its square 2,
    ///   `‖z₊‖²` 2) and `2nN` for FISTA momentum (one multiply-add);
    /// - per screening check (see below): `2·nnz(Z)·M + n(5M + N)` for the
    ///   residuals and spheres, plus `3nN` when it tests the atoms; or
    ///   `2·nnz·M + 5M + N` for each probed sample when the probe stops it.
    ///
    /// Scalar work (the momentum coefficient, the stopping test) is not counted.
    ///
    /// **Screening** (residual form on large problems, where `Y·D` may go
    /// sparse): every [`SCREEN_EVERY`] iterations while the codes are sparse,
    /// the Gap Safe rule (Fercoq, Gramfort & Salmon 2015) runs per sample
    /// on what the iteration has: the residual `r` of `Y` scaled to
    /// `θ = r / max(λ, maxⱼ dⱼ·r)` (`|dⱼ·r|` for the signed lasso) is dual
    /// feasible; the primal value of the new codes minus the dual value of
    /// `θ` bounds `‖θ − θ*‖ ≤ √(2·gap)/λ`; an atom with
    /// `dⱼ·θ + ‖dⱼ‖·√(2·gap)/λ < 1` (less a margin for f32 rounding) is zero in
    /// the solution. Once at most 1/[`SCREEN_DENSITY_INVERSE`] of the pairs
    /// remain, the screened codes are set to zero and stay there (their
    /// gradient entries are never formed), and `R·Dᵀ` is formed for the
    /// surviving pairs only, atom by atom. A check first probes one sample
    /// in [`SCREEN_PROBE_STRIDE`] and stops while any of them still has a
    /// sphere of radius 1 or more.
    /// The solution is the lasso's, as without screening; the iterates after
    /// the switch differ from the unscreened ones by the screened codes that
    /// had not yet reached zero.
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
        let cfg = self.config;
        let (nf, nlf, mf) = (n as f64, nl as f64, dim as f64);
        let mut monitor = monitor;

        let mut z = match init {
            Some(z0) => {
                z0.expect_shape("init", Some(n), Some(nl))?;
                z0.check_finite("init")?;
                z0.clone()
            }
            None => Matrix::zeros(n, nl),
        };
        if n == 0 {
            return Ok(Encoding {
                codes: z,
                flops: 0.0,
                iterations: 0,
            });
        }

        let mut flops = 0.0;
        let mut prev_norm_sq = 0.0f64;
        if init.is_some() {
            if cfg.nonnegative {
                z.as_mut_slice().iter_mut().for_each(|v| *v = v.max(0.0));
                flops += nf * nlf;
            }
            prev_norm_sq = z.norm_sq();
            flops += 2.0 * nf * nlf;
        }

        // Setup: the products of the chosen form and the Lipschitz constant.
        let gram_form = self.uses_gram(nl, dim);
        let (gram, lipschitz) = if gram_form {
            let g = matmul_new(dictionary, Op::N, dictionary, Op::T);
            let c = matmul_new(x, Op::N, dictionary, Op::T);
            flops += 2.0 * nlf * nlf * mf + 2.0 * nf * nlf * mf;
            let (l, pf) = lipschitz_constant(&g);
            flops += pf;
            (Some((g, c)), l)
        } else {
            // D·Dᵀ and Dᵀ·D share their non-zero eigenvalues: use the smaller.
            let small = if nl <= dim {
                matmul_new(dictionary, Op::N, dictionary, Op::T)
            } else {
                matmul_new(dictionary, Op::T, dictionary, Op::N)
            };
            let k = nl.min(dim) as f64;
            flops += 2.0 * k * k * nlf.max(mf);
            let (l, pf) = lipschitz_constant(&small);
            flops += pf;
            (None, l)
        };
        // D = 0 makes the smooth part constant; any positive L then gives the exact prox.
        let lipschitz = if lipschitz > 0.0 { lipschitz } else { 1.0 };
        let inv_l = (1.0 / lipschitz) as f32;

        let update_flops =
            nf * nlf * (UPDATE_FLOPS + if cfg.accelerated { MOMENTUM_FLOPS } else { 0.0 });
        let sparse_allowed = !gram_form
            && self.gradient != GradientForm::ResidualDense
            && n * nl * dim >= SPARSE_MIN_MACS;
        // Non-zeros of Y, known after each update (Y = Z₀ at the start).
        let mut y_nnz = if sparse_allowed {
            z.as_slice().iter().filter(|v| **v != 0.0).count()
        } else {
            0
        };

        // Buffers, all allocated before the loop.
        let mut y = z.clone();
        let mut neg_grad = Matrix::zeros(n, nl);
        let mut resid = if gram_form {
            Matrix::zeros(0, 0)
        } else {
            Matrix::zeros(n, dim)
        };
        // Screening: where `Y·D` may go sparse (residual form, large problems).
        let screening = sparse_allowed;
        let mut active: Option<ActiveSet> = None;
        // One correlation per active pair, atom by atom (sized at the switch).
        let mut active_values: Vec<f32> = Vec::new();
        let mut codes_resid = if screening {
            Matrix::zeros(n, dim)
        } else {
            Matrix::zeros(0, 0)
        };
        let atom_norms = if screening {
            dictionary.row_norms()
        } else {
            Vec::new()
        };
        let block_rows = (BLOCK_VALUES / nl).max(1);
        let mut partials = vec![(0.0f64, 0.0f64, 0usize); n.div_ceil(block_rows)];
        let parallel = n * nl >= PARALLEL_MIN_VALUES && rayon::current_num_threads() > 1;

        let mut t = 1.0f64;
        let mut iterations = 0;
        for it in 1..=cfg.max_iter {
            // neg_grad = −∇ = X·Dᵀ − Y·D·Dᵀ, with the subtraction fused into the GEMM.
            let mut iter_flops = update_flops;
            match &gram {
                Some((g, c)) => {
                    iter_flops += 2.0 * nf * nlf * nlf + nf * nlf;
                    neg_grad.as_mut_slice().copy_from_slice(c.as_slice());
                    gemm_into(
                        neg_grad.view_mut(),
                        true,
                        y.view(),
                        Op::N,
                        g.view(),
                        Op::N,
                        -1.0,
                    );
                }
                None => {
                    if sparse_allowed && y_nnz * SPARSE_DENSITY_INVERSE <= n * nl {
                        let _ = subtract_sparse_product(&mut resid, x, &y, dictionary, parallel);
                        iter_flops += 2.0 * y_nnz as f64 * mf;
                    } else {
                        resid.as_mut_slice().copy_from_slice(x.as_slice());
                        gemm_into(
                            resid.view_mut(),
                            true,
                            y.view(),
                            Op::N,
                            dictionary.view(),
                            Op::N,
                            -1.0,
                        );
                        iter_flops += 2.0 * nf * nlf * mf;
                    }
                    iter_flops += nf * mf;
                    if let Some(set) = &active {
                        let values = &mut active_values;
                        active_correlations(
                            &mut neg_grad,
                            &resid,
                            dictionary,
                            set,
                            values,
                            parallel,
                        );
                        iter_flops += 2.0 * set.len() as f64 * mf;
                    } else {
                        gemm_into(
                            neg_grad.view_mut(),
                            false,
                            resid.view(),
                            Op::N,
                            dictionary.view(),
                            Op::T,
                            1.0,
                        );
                        iter_flops += 2.0 * nf * nlf * mf;
                    }
                }
            }
            let t_next = if cfg.accelerated {
                0.5 * (1.0 + (1.0 + 4.0 * t * t).sqrt())
            } else {
                1.0
            };
            let step = Step {
                inv_l,
                threshold: cfg.lambda * inv_l,
                beta: ((t - 1.0) / t_next) as f32,
                nonnegative: cfg.nonnegative,
                accelerated: cfg.accelerated,
                count_nonzeros: sparse_allowed,
            };
            t = t_next;
            let (diff_sq, norm_sq, nnz) = update(
                &mut z,
                &mut y,
                &neg_grad,
                &mut partials,
                block_rows,
                parallel,
                step,
            );
            y_nnz = nnz;
            flops += iter_flops;
            iterations = it;
            if !(diff_sq.is_finite() && norm_sq.is_finite()) {
                return Err(Error::Numerical {
                    what: self.name(),
                    reason: format!("codes became non-finite at iteration {it}"),
                });
            }
            // A check needs sparse codes (their residual is then cheap) and
            // rarely screens anything while they are dense.
            if screening
                && active.is_none()
                && it % SCREEN_EVERY == 0
                && y_nnz * SPARSE_DENSITY_INVERSE <= n * nl
            {
                let problem = ScreenInputs {
                    x,
                    dictionary,
                    atom_norms: &atom_norms,
                    lambda: cfg.lambda as f64,
                    nonnegative: cfg.nonnegative,
                };
                let most = n * nl / SCREEN_DENSITY_INVERSE;
                let (set, check_flops) =
                    problem.screen(&z, &resid, &neg_grad, &mut codes_resid, parallel, most);
                active = set;
                flops += check_flops;
                if let Some(set) = &active {
                    restrict_to(set, &mut z, &mut y, &mut neg_grad);
                    active_values = vec![0.0; set.len()];
                }
            }
            let rel_change = diff_sq.sqrt() / prev_norm_sq.sqrt().max(TINY);
            prev_norm_sq = norm_sq;
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
            if rel_change < cfg.tol as f64 {
                break;
            }
        }
        Ok(Encoding {
            codes: z,
            flops,
            iterations,
        })
    }
}

/// One block of rows for [`update`]: codes, extrapolated point, negative gradient, and the
/// block's partial sums.
type Block<'a> = (
    (&'a mut [f32], &'a mut [f32]),
    (&'a [f32], &'a mut (f64, f64, usize)),
);

/// One fused pass over all codes: gradient step from `y`, prox into `z`,
/// momentum into `y`. Returns `(‖z₊ − z‖², ‖z₊‖², nnz(y))`, summed per fixed
/// block of rows and then in block order, so the result is the same on any thread count.
fn update(
    z: &mut Matrix,
    y: &mut Matrix,
    neg_grad: &Matrix,
    partials: &mut [(f64, f64, usize)],
    block_rows: usize,
    parallel: bool,
    step: Step,
) -> (f64, f64, usize) {
    let block = block_rows * z.cols();
    let work = |((zb, yb), (gb, out)): Block<'_>| {
        *out = update_block(zb, yb, gb, step);
    };
    let zs = z.as_mut_slice();
    let ys = y.as_mut_slice();
    let gs = neg_grad.as_slice();
    if parallel {
        zs.par_chunks_mut(block)
            .zip(ys.par_chunks_mut(block))
            .zip(gs.par_chunks(block).zip(partials.par_iter_mut()))
            .for_each(work);
    } else {
        zs.chunks_mut(block)
            .zip(ys.chunks_mut(block))
            .zip(gs.chunks(block).zip(partials.iter_mut()))
            .for_each(work);
    }
    partials
        .iter()
        .fold((0.0, 0.0, 0), |(a, b, c), &(d, e, f)| (a + d, b + e, c + f))
}

fn update_block(z: &mut [f32], y: &mut [f32], neg_grad: &[f32], s: Step) -> (f64, f64, usize) {
    let (mut diff_sq, mut norm_sq, mut nnz) = (0.0f64, 0.0f64, 0usize);
    for ((zj, yj), &gj) in z.iter_mut().zip(y.iter_mut()).zip(neg_grad) {
        let v = *yj + s.inv_l * gj;
        let new = if s.nonnegative {
            (v - s.threshold).max(0.0)
        } else {
            v.signum() * (v.abs() - s.threshold).max(0.0)
        };
        let d = new - *zj;
        *zj = new;
        *yj = if s.accelerated { new + s.beta * d } else { new };
        if s.count_nonzeros {
            nnz += usize::from(*yj != 0.0);
        }
        diff_sq += d as f64 * d as f64;
        norm_sq += new as f64 * new as f64;
    }
    (diff_sq, norm_sq, nnz)
}

/// `resid = X − Y·D` visiting only the non-zeros of `Y`: each adds a
/// multiple of one atom to its row of the residual (rows in parallel when
/// `parallel`). Returns the number of non-zeros visited.
fn subtract_sparse_product(
    resid: &mut Matrix,
    x: &Matrix,
    y: &Matrix,
    d: &Matrix,
    parallel: bool,
) -> usize {
    let m = x.cols();
    let row = |(i, r): (usize, &mut [f32])| subtract_sparse_row(r, x.row(i), y.row(i), d);
    if parallel {
        resid
            .as_mut_slice()
            .par_chunks_mut(m)
            .enumerate()
            .map(row)
            .sum()
    } else {
        resid
            .as_mut_slice()
            .chunks_mut(m)
            .enumerate()
            .map(row)
            .sum()
    }
}

/// One row of [`subtract_sparse_product`]: `r = x − y·D`; returns `nnz(y)`.
fn subtract_sparse_row(r: &mut [f32], x: &[f32], y: &[f32], d: &Matrix) -> usize {
    r.copy_from_slice(x);
    let mut nnz = 0;
    for (j, &v) in y.iter().enumerate() {
        if v != 0.0 {
            r.iter_mut().zip(d.row(j)).for_each(|(a, &b)| *a -= v * b);
            nnz += 1;
        }
    }
    nnz
}

/// A screening check first tries one sample in this many, and goes on to
/// all only if none of them still has a sphere of radius 1 or more (the
/// whole check costs about a sparse `Z·D`, too much to run while the
/// spheres are wide).
pub const SCREEN_PROBE_STRIDE: usize = 32;

/// The (sample, atom) pairs that screening could not rule out, by sample
/// (`atoms[offsets[i]..offsets[i + 1]]`, increasing) and by atom
/// (`samples[atom_offsets[j]..atom_offsets[j + 1]]`, increasing).
#[derive(Debug)]
struct ActiveSet {
    offsets: Vec<usize>,
    atoms: Vec<u32>,
    atom_offsets: Vec<usize>,
    samples: Vec<u32>,
}

impl ActiveSet {
    /// The set from each sample's atoms, in sample order.
    fn new(offsets: Vec<usize>, atoms: Vec<u32>, n_atoms: usize) -> Self {
        let mut atom_offsets = vec![0usize; n_atoms + 1];
        for &j in &atoms {
            atom_offsets[j as usize + 1] += 1;
        }
        for j in 0..n_atoms {
            atom_offsets[j + 1] += atom_offsets[j];
        }
        let mut next = atom_offsets.clone();
        let mut samples = vec![0u32; atoms.len()];
        for i in 0..offsets.len() - 1 {
            for &j in &atoms[offsets[i]..offsets[i + 1]] {
                samples[next[j as usize]] = i as u32;
                next[j as usize] += 1;
            }
        }
        ActiveSet {
            offsets,
            atoms,
            atom_offsets,
            samples,
        }
    }

    fn of(&self, i: usize) -> &[u32] {
        &self.atoms[self.offsets[i]..self.offsets[i + 1]]
    }

    fn samples_of(&self, j: usize) -> &[u32] {
        &self.samples[self.atom_offsets[j]..self.atom_offsets[j + 1]]
    }

    fn len(&self) -> usize {
        self.atoms.len()
    }
}

/// What a screening check reads besides the iterates.
struct ScreenInputs<'a> {
    x: &'a Matrix,
    dictionary: &'a Matrix,
    /// `‖dⱼ‖` per atom.
    atom_norms: &'a [f64],
    lambda: f64,
    nonnegative: bool,
}

impl ScreenInputs<'_> {
    /// The Gap Safe rule for every sample (see [`Fista::solve`]): `codes`
    /// are the primal point, `resid = X − Y·D` and `corr = resid·Dᵀ` give the
    /// dual one; `codes_resid` receives `X − codes·D` (scratch). The active
    /// set when at most `max_pairs` pairs survive, `None` otherwise (after a
    /// probe of a few samples when their spheres are still wide; counted
    /// before it is built, so a check that keeps most pairs allocates
    /// nothing), and the FLOPs it spent. The probe runs only when
    /// `max_pairs` is below all the pairs.
    /// Row by row, so the result does not depend on the thread count.
    fn screen(
        &self,
        codes: &Matrix,
        resid: &Matrix,
        corr: &Matrix,
        codes_resid: &mut Matrix,
        parallel: bool,
        max_pairs: usize,
    ) -> (Option<ActiveSet>, f64) {
        let (n, nl) = codes.shape();
        let (mf, nlf) = (self.x.cols() as f64, nl as f64);
        // FLOPs of a sample's residual (2·nnz·M) and sphere (5M + N), and of
        // the test over its atoms (3N).
        let (residual_flops, sphere_flops, test_flops) = (2.0 * mf, 5.0 * mf + nlf, 3.0 * nlf);
        let mut flops = 0.0;
        // The probe: one sample in SCREEN_PROBE_STRIDE, its residual and sphere.
        if max_pairs < n * nl {
            for i in (0..n).step_by(SCREEN_PROBE_STRIDE) {
                let r = codes_resid.row_mut(i);
                let nnz = subtract_sparse_row(r, self.x.row(i), codes.row(i), self.dictionary);
                flops += nnz as f64 * residual_flops + sphere_flops;
                if self.row_bound(i, codes, resid, corr, codes_resid).1 >= 1.0 {
                    return (None, flops);
                }
            }
        }
        let nnz = subtract_sparse_product(codes_resid, self.x, codes, self.dictionary, parallel);
        flops += nnz as f64 * residual_flops + n as f64 * sphere_flops;
        let codes_resid = &*codes_resid;
        let bound = |i: usize| self.row_bound(i, codes, resid, corr, codes_resid);
        let kept = |i: usize, (scale, radius): (f64, f64)| {
            corr.row(i)
                .iter()
                .zip(self.atom_norms)
                .enumerate()
                .filter(move |&(_, (&c, &norm))| {
                    self.magnitude(c) / scale + radius * norm >= 1.0 - SCREEN_MARGIN
                })
                .map(|(j, _)| j as u32)
        };
        let bounds: Vec<(f64, f64)> = if parallel {
            (0..n).into_par_iter().map(bound).collect()
        } else {
            (0..n).map(bound).collect()
        };
        // A sample whose sphere reaches 1 keeps every atom correlated with
        // its residual; with many such samples the set cannot be small, so
        // the count is not worth a pass over all pairs.
        let wide = bounds.iter().filter(|&&(_, radius)| radius >= 1.0).count();
        if wide * nl > max_pairs {
            return (None, flops);
        }
        flops += n as f64 * test_flops;
        let count = |(i, &b): (usize, &(f64, f64))| kept(i, b).count();
        let total: usize = if parallel {
            bounds.par_iter().enumerate().map(count).sum()
        } else {
            bounds.iter().enumerate().map(count).sum()
        };
        if total > max_pairs {
            return (None, flops);
        }
        let mut offsets = Vec::with_capacity(n + 1);
        let mut atoms = Vec::with_capacity(total);
        offsets.push(0);
        for (i, &b) in bounds.iter().enumerate() {
            atoms.extend(kept(i, b));
            offsets.push(atoms.len());
        }
        (Some(ActiveSet::new(offsets, atoms, nl)), flops)
    }

    /// `dⱼ·r` as the rule bounds it: signed for the non-negative lasso,
    /// its magnitude for the signed one.
    fn magnitude(&self, c: f32) -> f64 {
        if self.nonnegative {
            c as f64
        } else {
            (c as f64).abs()
        }
    }

    /// Sample `i`'s `(scale, radius)`: `θ = r_Y / scale` is dual feasible
    /// (every `dⱼ·θ` as bounded at most 1), and `θ*` lies within `radius` of it.
    fn row_bound(
        &self,
        i: usize,
        codes: &Matrix,
        resid: &Matrix,
        corr: &Matrix,
        codes_resid: &Matrix,
    ) -> (f64, f64) {
        let scale = corr
            .row(i)
            .iter()
            .fold(self.lambda, |m, &c| m.max(self.magnitude(c)));
        (
            scale,
            self.sphere_radius(i, scale, codes, resid, codes_resid),
        )
    }

    /// `√(2·gap)/λ` for sample `i`: the primal value of its codes minus the
    /// dual value at `θ = r_Y / scale`, both in f64.
    fn sphere_radius(
        &self,
        i: usize,
        scale: f64,
        codes: &Matrix,
        resid: &Matrix,
        codes_resid: &Matrix,
    ) -> f64 {
        let lambda = self.lambda;
        let l1: f64 = codes.row(i).iter().map(|&v| (v as f64).abs()).sum();
        let r = codes_resid.row(i);
        let primal = 0.5 * dot_f64_by_lanes(r, r) + lambda * l1;
        // Dual ½‖x‖² − ½‖x − λθ‖².
        let t = lambda / scale;
        let (x, ry) = (self.x.row(i), resid.row(i));
        let mut x_sq = 0.0f64;
        let mut shifted_sq = 0.0f64;
        for (&xv, &rv) in x.iter().zip(ry) {
            let (xv, rv) = (xv as f64, rv as f64);
            x_sq += xv * xv;
            shifted_sq += (xv - t * rv) * (xv - t * rv);
        }
        let dual = 0.5 * x_sq - 0.5 * shifted_sq;
        (2.0 * (primal - dual).max(0.0)).sqrt() / lambda
    }
}

/// Sets the codes, the extrapolated codes and the gradient to zero outside
/// the active set, where the solution is zero: with a zero gradient entry
/// the update keeps them there.
fn restrict_to(set: &ActiveSet, z: &mut Matrix, y: &mut Matrix, neg_grad: &mut Matrix) {
    let nl = z.cols();
    let mut keep = vec![false; nl];
    for i in 0..z.rows() {
        set.of(i).iter().for_each(|&j| keep[j as usize] = true);
        for m in [&mut *z, &mut *y, &mut *neg_grad] {
            m.row_mut(i)
                .iter_mut()
                .zip(&keep)
                .for_each(|(v, &k)| *v = if k { *v } else { 0.0 });
        }
        set.of(i).iter().for_each(|&j| keep[j as usize] = false);
    }
}

/// `neg_grad[i, j] = resid_i · dⱼ` for the active pairs only (the others
/// stay zero). Atom by atom (in parallel when `parallel`), so that each
/// atom is read once per call and the residual rows, which fit in cache,
/// are the ones gathered; the values go through `values` (one per pair,
/// atom-major) and are then written into their rows.
fn active_correlations(
    neg_grad: &mut Matrix,
    resid: &Matrix,
    d: &Matrix,
    set: &ActiveSet,
    values: &mut [f32],
    parallel: bool,
) {
    let per_atom = |(j, out): (usize, &mut [f32])| {
        let atom = d.row(j);
        vectorised(|| {
            for (o, &i) in out.iter_mut().zip(set.samples_of(j)) {
                *o = dot_f64_by_lanes(resid.row(i as usize), atom) as f32;
            }
        })
    };
    let mut rest = &mut *values;
    let mut slices = Vec::with_capacity(d.rows());
    for j in 0..d.rows() {
        let (head, tail) = rest.split_at_mut(set.atom_offsets[j + 1] - set.atom_offsets[j]);
        slices.push(head);
        rest = tail;
    }
    if parallel {
        slices.into_par_iter().enumerate().for_each(per_atom);
    } else {
        slices.into_iter().enumerate().for_each(per_atom);
    }
    let nl = neg_grad.cols();
    let g = neg_grad.as_mut_slice();
    for j in 0..nl {
        let range = set.atom_offsets[j]..set.atom_offsets[j + 1];
        for (&i, &v) in set.samples[range.clone()].iter().zip(&values[range]) {
            g[i as usize * nl + j] = v;
        }
    }
}

/// Largest eigenvalue of the PSD `g (k × k)` by power iteration, with its FLOPs.
///
/// The same algorithm as [`crate::linalg::largest_eigenvalue_psd`] (f64, fixed
/// start vector, relative change 1e-10, at most 10 000 iterations), repeated here
/// because FLOP accounting needs the iteration count, which that function does not return.
/// Each iteration costs `2k² + 7k` FLOPs: the product (`2k²`), `‖w‖` (`2k`),
/// the Rayleigh quotient's two dot products (`4k`) and the normalisation (`k`).
fn lipschitz_constant(g: &Matrix) -> (f64, f64) {
    let k = g.rows();
    if k == 0 {
        return (0.0, 0.0);
    }
    let kf = k as f64;
    let per_iter = 2.0 * kf * kf + 7.0 * kf;
    let mut v: Vec<f64> = (0..k).map(|i| 1.0 + (i as f64) * 1e-3).collect();
    let mut w = vec![0.0f64; k];
    let mut lambda = 0.0f64;
    let mut flops = 0.0;
    for _ in 0..10_000 {
        for (i, wi) in w.iter_mut().enumerate() {
            *wi = g.row(i).iter().zip(&v).map(|(&a, &b)| a as f64 * b).sum();
        }
        flops += per_iter;
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return (0.0, flops);
        }
        let next = w.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>()
            / v.iter().map(|x| x * x).sum::<f64>();
        v.iter_mut().zip(&w).for_each(|(vi, wi)| *vi = wi / norm);
        if (next - lambda).abs() <= 1e-10 * next.abs() {
            return (next, flops);
        }
        lambda = next;
    }
    (lambda, flops)
}

impl Encoder for Fista {
    /// `"fista"` or `"ista"`, with `"-signed"` for the signed lasso.
    fn name(&self) -> String {
        let base = if self.config.accelerated {
            "fista"
        } else {
            "ista"
        };
        if self.config.nonnegative {
            base.to_string()
        } else {
            format!("{base}-signed")
        }
    }

    /// [`Fista::solve`] from zero codes, without a monitor.
    fn encode(&self, x: &Matrix, dictionary: &Matrix) -> Result<Encoding> {
        self.solve(x, dictionary, None, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    /// A random dictionary with unit-norm rows.
    fn dictionary(rng: &mut ChaCha8Rng, nl: usize, dim: usize) -> Matrix {
        let mut d = Matrix::from_fn(nl, dim, |_, _| rng.sample::<f32, _>(StandardNormal));
        d.normalize_rows();
        d
    }

    /// `n` samples: 3-sparse half-normal codes times `d`, plus a little noise.
    fn data(rng: &mut ChaCha8Rng, n: usize, d: &Matrix) -> Matrix {
        let (nl, dim) = d.shape();
        let mut x = Matrix::zeros(n, dim);
        for i in 0..n {
            for _ in 0..3 {
                let j = rng.gen_range(0..nl);
                let a = rng.sample::<f32, _>(StandardNormal).abs() + 0.2;
                for m in 0..dim {
                    let v = x.get(i, m) + a * d.get(j, m);
                    x.set(i, m, v);
                }
            }
            for m in 0..dim {
                let v = x.get(i, m) + 0.05 * rng.sample::<f32, _>(StandardNormal);
                x.set(i, m, v);
            }
        }
        x
    }

    /// `g = (x − zD)·Dᵀ` in f64, per sample.
    fn neg_gradient(x: &Matrix, d: &Matrix, z: &Matrix) -> Vec<Vec<f64>> {
        (0..x.rows())
            .map(|i| {
                let r: Vec<f64> = (0..d.cols())
                    .map(|m| {
                        x.get(i, m) as f64
                            - (0..d.rows())
                                .map(|j| z.get(i, j) as f64 * d.get(j, m) as f64)
                                .sum::<f64>()
                    })
                    .collect();
                (0..d.rows())
                    .map(|j| (0..d.cols()).map(|m| r[m] * d.get(j, m) as f64).sum())
                    .collect()
            })
            .collect()
    }

    /// The lasso objective summed over samples, in f64.
    fn objective(x: &Matrix, d: &Matrix, z: &Matrix, lambda: f64) -> f64 {
        let mut f = 0.0;
        for i in 0..x.rows() {
            for m in 0..d.cols() {
                let r = x.get(i, m) as f64
                    - (0..d.rows())
                        .map(|j| z.get(i, j) as f64 * d.get(j, m) as f64)
                        .sum::<f64>();
                f += 0.5 * r * r;
            }
            f += lambda * z.row(i).iter().map(|&v| (v as f64).abs()).sum::<f64>();
        }
        f
    }

    /// Cyclic coordinate descent in f64, run to convergence: the independent reference.
    fn coordinate_descent(x: &Matrix, d: &Matrix, lambda: f64, nonnegative: bool) -> Matrix {
        let (nl, dim) = d.shape();
        let g: Vec<f64> = (0..nl * nl)
            .map(|p| {
                (0..dim)
                    .map(|m| d.get(p / nl, m) as f64 * d.get(p % nl, m) as f64)
                    .sum()
            })
            .collect();
        let mut out = Matrix::zeros(x.rows(), nl);
        for i in 0..x.rows() {
            let c: Vec<f64> = (0..nl)
                .map(|j| {
                    (0..dim)
                        .map(|m| x.get(i, m) as f64 * d.get(j, m) as f64)
                        .sum()
                })
                .collect();
            let mut z = vec![0.0f64; nl];
            for _ in 0..100_000 {
                let mut max_change = 0.0f64;
                for j in 0..nl {
                    // Partial residual correlation with z_j removed.
                    let rho = c[j] - (0..nl).map(|l| g[j * nl + l] * z[l]).sum::<f64>()
                        + g[j * nl + j] * z[j];
                    let new = if nonnegative {
                        ((rho - lambda) / g[j * nl + j]).max(0.0)
                    } else {
                        rho.signum() * (rho.abs() - lambda).max(0.0) / g[j * nl + j]
                    };
                    max_change = max_change.max((new - z[j]).abs());
                    z[j] = new;
                }
                if max_change < 1e-13 {
                    break;
                }
            }
            for (o, &v) in out.row_mut(i).iter_mut().zip(&z) {
                *o = v as f32;
            }
        }
        out
    }

    fn solver(lambda: f32, nonnegative: bool, accelerated: bool) -> Fista {
        Fista::new(FistaConfig {
            lambda,
            max_iter: 20_000,
            tol: 1e-7,
            nonnegative,
            accelerated,
        })
        .unwrap()
    }

    fn check_kkt(x: &Matrix, d: &Matrix, z: &Matrix, lambda: f64, nonnegative: bool) {
        let g = neg_gradient(x, d, z);
        let tol = 1e-3 * lambda.max(1.0);
        for (i, gi) in g.iter().enumerate() {
            for (j, &gj) in gi.iter().enumerate() {
                let zj = z.get(i, j) as f64;
                if zj == 0.0 {
                    let bound = if nonnegative { gj } else { gj.abs() };
                    assert!(
                        bound <= lambda + tol,
                        "sample {i} latent {j}: g = {gj}, z = 0"
                    );
                } else {
                    assert!(!nonnegative || zj > 0.0);
                    assert!(
                        (gj - lambda * zj.signum()).abs() <= tol,
                        "sample {i} latent {j}: g = {gj}, z = {zj}"
                    );
                }
            }
        }
    }

    #[test]
    fn kkt_conditions_hold_for_both_lassos_and_both_methods() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let d = dictionary(&mut rng, 20, 10);
        let x = data(&mut rng, 8, &d);
        for nonnegative in [true, false] {
            for accelerated in [true, false] {
                let enc = solver(0.1, nonnegative, accelerated)
                    .encode(&x, &d)
                    .unwrap();
                check_kkt(&x, &d, &enc.codes, 0.1, nonnegative);
                let nonzero = enc.codes.as_slice().iter().filter(|&&v| v != 0.0).count();
                assert!(nonzero > 0 && nonzero < 8 * 20, "{nonzero} non-zeros");
            }
        }
    }

    #[test]
    fn objective_matches_coordinate_descent() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let d = dictionary(&mut rng, 16, 8);
        let x = data(&mut rng, 6, &d);
        for nonnegative in [true, false] {
            let want = objective(&x, &d, &coordinate_descent(&x, &d, 0.05, nonnegative), 0.05);
            let got = objective(
                &x,
                &d,
                &solver(0.05, nonnegative, true)
                    .encode(&x, &d)
                    .unwrap()
                    .codes,
                0.05,
            );
            assert!(
                ((got - want) / want).abs() < 1e-4,
                "fista {got} vs cd {want}"
            );
        }
    }

    #[test]
    fn fista_needs_far_fewer_iterations_than_ista_when_ill_conditioned() {
        // Atoms clustered around a common direction make D·Dᵀ ill-conditioned.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let base: Vec<f32> = (0..12).map(|_| rng.sample(StandardNormal)).collect();
        let mut d = Matrix::from_fn(8, 12, |_, m| {
            base[m] + 0.15 * rng.sample::<f32, _>(StandardNormal)
        });
        d.normalize_rows();
        let x = data(&mut rng, 4, &d);
        let lambda = 0.01;
        let best = objective(&x, &d, &coordinate_descent(&x, &d, lambda, true), lambda);
        let target = best * (1.0 + 1e-4);
        let iterations_to_target = |accelerated: bool| {
            let mut reached = None;
            let mut mon = |p: &SolverProgress<'_>| {
                if objective(&x, &d, p.codes, lambda) <= target {
                    reached = Some(p.iteration);
                    return false;
                }
                true
            };
            let cfg = FistaConfig {
                lambda: lambda as f32,
                max_iter: 50_000,
                tol: 0.0,
                nonnegative: true,
                accelerated,
            };
            Fista::new(cfg)
                .unwrap()
                .solve(&x, &d, None, Some(&mut mon))
                .unwrap();
            reached.expect("target objective not reached")
        };
        let (fista, ista) = (iterations_to_target(true), iterations_to_target(false));
        assert!(fista * 5 < ista, "fista {fista} vs ista {ista} iterations");
    }

    #[test]
    fn gram_and_residual_forms_agree() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let d = dictionary(&mut rng, 24, 10);
        let x = data(&mut rng, 5, &d);
        for nonnegative in [true, false] {
            // N = 24 > 2M = 20: Auto picks the residual form, the cheaper per iteration.
            let s = solver(0.1, nonnegative, true);
            assert!(!s.uses_gram(24, 10));
            // Same iterates, up to rounding, over a fixed number of iterations.
            let fixed = Fista::new(FistaConfig {
                max_iter: 200,
                tol: 0.0,
                ..s.config
            })
            .unwrap();
            let gram = fixed
                .clone()
                .with_gradient(GradientForm::Gram)
                .encode(&x, &d)
                .unwrap();
            let resid = fixed
                .with_gradient(GradientForm::Residual)
                .encode(&x, &d)
                .unwrap();
            assert!(gram.codes.max_abs_diff(&resid.codes) < 1e-4);
            assert_eq!((gram.iterations, resid.iterations), (200, 200));
            // And the same optimum at convergence.
            let f = |form| {
                objective(
                    &x,
                    &d,
                    &s.clone().with_gradient(form).encode(&x, &d).unwrap().codes,
                    0.1,
                )
            };
            let (fg, fr) = (f(GradientForm::Gram), f(GradientForm::Residual));
            assert!(((fg - fr) / fr).abs() < 1e-5, "{fg} vs {fr}");
        }
    }

    #[test]
    fn warm_start_at_the_solution_stops_at_once() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let d = dictionary(&mut rng, 12, 8);
        let x = data(&mut rng, 6, &d);
        let s = solver(0.1, true, true);
        let cold = s.encode(&x, &d).unwrap();
        assert!(cold.iterations > 10);
        let warm_solver = Fista::new(FistaConfig {
            tol: 1e-5,
            ..s.config
        })
        .unwrap();
        let warm = warm_solver.solve(&x, &d, Some(&cold.codes), None).unwrap();
        assert!(warm.iterations <= 2, "{} iterations", warm.iterations);
        assert!(warm.codes.max_abs_diff(&cold.codes) < 1e-4);
        // A negative warm start is projected onto z ≥ 0 first.
        let neg = Matrix::from_fn(6, 12, |_, _| -1.0);
        let from_neg = s.solve(&x, &d, Some(&neg), None).unwrap();
        assert!(from_neg.codes.max_abs_diff(&cold.codes) < 1e-3);
    }

    #[test]
    fn monitor_sees_increasing_flops_and_can_stop() {
        let mut rng = ChaCha8Rng::seed_from_u64(6);
        let (n, nl, dim) = (4usize, 6usize, 8usize);
        let d = dictionary(&mut rng, nl, dim);
        let x = data(&mut rng, n, &d);
        let mut seen = Vec::new();
        let mut mon = |p: &SolverProgress<'_>| {
            seen.push((p.iteration, p.flops));
            p.iteration < 5
        };
        let s = solver(0.1, true, true);
        assert!(s.uses_gram(nl, dim));
        let enc = s.solve(&x, &d, None, Some(&mut mon)).unwrap();
        assert_eq!(enc.iterations, 5);
        assert_eq!(seen.len(), 5);
        assert_eq!(seen.last().unwrap().1, enc.flops);
        let (nf, nlf) = (n as f64, nl as f64);
        let per_iter = 2.0 * nf * nlf * nlf + nf * nlf + nf * nlf * (UPDATE_FLOPS + MOMENTUM_FLOPS);
        for (k, w) in seen.windows(2).enumerate() {
            assert_eq!(w[1].0, k + 2);
            assert_eq!(w[1].1 - w[0].1, per_iter);
        }
        // Setup includes G, C and at least one power iteration.
        let setup = seen[0].1 - per_iter;
        assert!(
            setup >= 2.0 * nlf * nlf * dim as f64 + 2.0 * nf * nlf * dim as f64 + 2.0 * nlf * nlf
        );
    }

    #[test]
    fn large_lambda_gives_zero_codes_in_one_iteration() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let d = dictionary(&mut rng, 6, 8);
        let x = data(&mut rng, 3, &d);
        let enc = solver(1e3, false, true).encode(&x, &d).unwrap();
        assert!(enc.codes.as_slice().iter().all(|&v| v == 0.0));
        assert_eq!(enc.iterations, 1);
    }

    #[test]
    fn large_batches_take_the_parallel_path_and_match_single_samples() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let d = dictionary(&mut rng, 64, 48);
        let x = data(&mut rng, 1100, &d);
        let s = Fista::new(FistaConfig {
            max_iter: 30,
            tol: 0.0,
            ..Default::default()
        })
        .unwrap();
        const { assert!(1100 * 64 >= PARALLEL_MIN_VALUES) };
        let batch = s.encode(&x, &d).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let sequential = pool.install(|| s.encode(&x, &d)).unwrap();
        assert!(batch.codes.max_abs_diff(&sequential.codes) < 1e-5);
        assert_eq!(batch.flops, sequential.flops);
    }

    #[test]
    fn sparse_products_match_dense_ones_at_a_fraction_of_the_flops() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let d = dictionary(&mut rng, 256, 32);
        let x = data(&mut rng, 512, &d);
        const { assert!(512 * 256 * 32 >= SPARSE_MIN_MACS) };
        for nonnegative in [true, false] {
            let cfg = FistaConfig {
                lambda: 0.1,
                max_iter: 200,
                tol: 0.0,
                nonnegative,
                accelerated: true,
            };
            let sparse = Fista::new(cfg).unwrap();
            assert!(!sparse.uses_gram(256, 32));
            let dense = Fista::new(cfg)
                .unwrap()
                .with_gradient(GradientForm::ResidualDense);
            let (a, b) = (
                sparse.encode(&x, &d).unwrap(),
                dense.encode(&x, &d).unwrap(),
            );
            assert!(a.codes.max_abs_diff(&b.codes) < 1e-4);
            let (fa, fb) = (
                objective(&x, &d, &a.codes, 0.1),
                objective(&x, &d, &b.codes, 0.1),
            );
            assert!((fa - fb).abs() <= 1e-5 * fb, "{fa} vs {fb}");
            // Y·D (half of the dense work) nearly vanishes once the codes are sparse.
            assert!(a.flops < 0.7 * b.flops, "{} vs {}", a.flops, b.flops);
        }
    }

    /// The rule keeps every atom of the exact solution (coordinate descent)
    /// from any codes, near or far from it, for both lassos; and near the
    /// solution it rules out most of the others (it is not vacuous).
    #[test]
    fn the_screening_rule_never_drops_an_atom_of_the_solution() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let d = dictionary(&mut rng, 40, 12);
        let x = data(&mut rng, 6, &d);
        let atom_norms = d.row_norms();
        for nonnegative in [true, false] {
            let exact = coordinate_descent(&x, &d, 0.2, nonnegative);
            let rule = ScreenInputs {
                x: &x,
                dictionary: &d,
                atom_norms: &atom_norms,
                lambda: 0.2,
                nonnegative,
            };
            let mut screened_near = 0;
            for iterations in [1, 5, 20, 100, 0] {
                // 0: the exact solution itself.
                let codes = if iterations == 0 {
                    exact.clone()
                } else {
                    let cfg = FistaConfig {
                        lambda: 0.2,
                        max_iter: iterations,
                        tol: 0.0,
                        nonnegative,
                        accelerated: true,
                    };
                    Fista::new(cfg).unwrap().encode(&x, &d).unwrap().codes
                };
                let mut resid = x.clone();
                gemm_into(
                    resid.view_mut(),
                    true,
                    codes.view(),
                    Op::N,
                    d.view(),
                    Op::N,
                    -1.0,
                );
                let corr = matmul_new(&resid, Op::N, &d, Op::T);
                let mut scratch = Matrix::zeros(6, 12);
                let (set, flops) =
                    rule.screen(&codes, &resid, &corr, &mut scratch, false, usize::MAX);
                let set = set.unwrap();
                let nnz = codes.as_slice().iter().filter(|&&v| v != 0.0).count();
                assert_eq!(flops, (2 * nnz * 12 + 6 * (5 * 12 + 40 + 3 * 40)) as f64);
                // The by-atom view holds the same pairs.
                for j in 0..40 {
                    let by_sample: Vec<u32> = (0..6u32)
                        .filter(|&i| set.of(i as usize).contains(&(j as u32)))
                        .collect();
                    assert_eq!(set.samples_of(j), &by_sample[..], "atom {j}");
                }
                for i in 0..6 {
                    for j in 0..40 {
                        if exact.get(i, j) != 0.0 {
                            assert!(
                                set.of(i).contains(&(j as u32)),
                                "nonneg={nonnegative} after {iterations}: atom {j} of sample {i} dropped"
                            );
                        }
                    }
                }
                if iterations == 0 {
                    screened_near = 6 * 40 - set.len();
                }
                // Over the caller's limit: no set (the solver keeps going dense).
                let over = set.len() - 1;
                let (none, _) = rule.screen(&codes, &resid, &corr, &mut scratch, false, over);
                assert!(none.is_none());
            }
            let inactive = exact.as_slice().iter().filter(|&&v| v == 0.0).count();
            assert!(
                screened_near * 2 > inactive,
                "at the solution only {screened_near} of {inactive} inactive pairs screened"
            );
        }
    }

    /// On a problem large enough for it, screening switches on (a fraction
    /// of the dense FLOPs: at most 16 of 512 atoms a sample left), and the
    /// codes solve the same lasso as without it.
    #[test]
    fn screening_keeps_the_solution_and_cuts_the_flops() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let d = dictionary(&mut rng, 512, 16);
        let x = data(&mut rng, 128, &d);
        const { assert!(128 * 512 * 16 >= SPARSE_MIN_MACS) };
        for nonnegative in [true, false] {
            let cfg = FistaConfig {
                lambda: 0.3,
                max_iter: 1500,
                tol: 0.0,
                nonnegative,
                accelerated: true,
            };
            let screened = Fista::new(cfg).unwrap().encode(&x, &d).unwrap();
            let dense = Fista::new(cfg)
                .unwrap()
                .with_gradient(GradientForm::ResidualDense)
                .encode(&x, &d)
                .unwrap();
            check_kkt(&x, &d, &screened.codes, 0.3, nonnegative);
            let (fs, fd) = (
                objective(&x, &d, &screened.codes, 0.3),
                objective(&x, &d, &dense.codes, 0.3),
            );
            assert!((fs - fd).abs() <= 1e-6 * fd, "{fs} vs {fd}");
            assert!(screened.codes.max_abs_diff(&dense.codes) < 1e-4);
            // Both products shrink: well below the sparse `Y·D` alone (0.5–0.7×).
            assert!(
                screened.flops < 0.3 * dense.flops,
                "nonneg={nonnegative}: {} vs {}",
                screened.flops,
                dense.flops
            );
        }
    }

    #[test]
    fn rejects_bad_parameters_and_inputs() {
        let bad = |cfg: FistaConfig| Fista::new(cfg).is_err();
        assert!(bad(FistaConfig {
            lambda: -0.1,
            ..Default::default()
        }));
        assert!(bad(FistaConfig {
            lambda: f32::NAN,
            ..Default::default()
        }));
        assert!(bad(FistaConfig {
            max_iter: 0,
            ..Default::default()
        }));
        assert!(bad(FistaConfig {
            tol: -1.0,
            ..Default::default()
        }));
        let s = Fista::new(FistaConfig::default()).unwrap();
        let d = Matrix::identity(3);
        let mut x = Matrix::zeros(2, 3);
        assert!(s.encode(&x, &Matrix::identity(4)).is_err());
        assert!(s.solve(&x, &d, Some(&Matrix::zeros(2, 2)), None).is_err());
        x.set(1, 2, f32::NAN);
        assert!(matches!(s.encode(&x, &d), Err(Error::NonFinite { .. })));
    }

    #[test]
    fn overflow_is_reported_as_numerical_failure() {
        // Finite inputs whose correlations overflow f32.
        let d = Matrix::from_fn(2, 4, |_, _| 1.0);
        let x = Matrix::from_fn(1, 4, |_, _| f32::MAX / 2.0);
        let err = Fista::new(FistaConfig::default())
            .unwrap()
            .encode(&x, &d)
            .unwrap_err();
        assert!(matches!(err, Error::Numerical { .. }), "{err}");
    }

    #[test]
    fn names_follow_the_configuration() {
        let name = |accelerated, nonnegative| {
            Fista::new(FistaConfig {
                accelerated,
                nonnegative,
                ..Default::default()
            })
            .unwrap()
            .name()
        };
        assert_eq!(name(true, true), "fista");
        assert_eq!(name(false, true), "ista");
        assert_eq!(name(true, false), "fista-signed");
        assert_eq!(name(false, false), "ista-signed");
    }
}
