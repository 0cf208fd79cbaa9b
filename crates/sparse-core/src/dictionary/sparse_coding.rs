//! Dictionary learning by alternating minimisation of the (non-negative)
//! lasso objective `F(Z, D) = (1/n)·Σ_i [½‖x_i − z_i·D‖² + λ‖z_i‖₁]`,
//! `z_i ≥ 0`, over codes and a dictionary with unit-norm atoms.
//!
//! Each [`SparseCoding::fit_step`]:
//! 1. **codes**: FISTA on the non-negative lasso under the current `D`,
//!    warm-started from the previous step's codes when the batch is the same
//!    (full-batch training), from zero otherwise;
//! 2. **dictionary**: either MOD, the method of optimal directions
//!    `D = (ZᵀZ + εI)⁻¹·ZᵀX` (the exact least-squares minimiser for fixed
//!    codes), then unit-norm rows, or a few projected Adam steps on
//!    `½‖X − ZD‖²/n` ([`DictionaryUpdate`]);
//! 3. **dead atoms**: atoms that no code in the batch uses get no signal from
//!    either update; each is re-initialised to the direction of a training
//!    sample's residual (seeded), so that it can capture what the others miss.
//!
//! Unlike the paper's SC (joint Adam on exp-parametrised codes and `D`,
//! paper-spec §2), codes are exactly sparse and each half-step is solved to
//! (near) optimality, which needs far fewer steps.

use super::unit_norm::{normalization_flops, normalize_atoms, UnitNormAdam};
use crate::encoders::fista::{Fista, FistaConfig};
use crate::encoders::{check_inputs, Encoding};
use crate::error::{Error, Result};
use crate::linalg::{cholesky_solve_in_place, gemm_into, matmul_new, Op};
use crate::matrix::Matrix;
use crate::optim::AdamConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// Ridge of MOD relative to the mean diagonal of `ZᵀZ`: small enough not to
/// bias used atoms, large enough that `ZᵀZ + εI` is positive definite when
/// some atom is unused (a zero row and column).
pub const MOD_RIDGE: f64 = 1e-6;

/// How the dictionary is updated once the codes are fixed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DictionaryUpdate {
    /// Method of optimal directions: `D = (ZᵀZ + εI)⁻¹ZᵀX` (ε = [`MOD_RIDGE`]
    /// × mean diagonal), then unit-norm rows; the codes kept for the next warm
    /// start are rescaled by the old row norms so that `Z·D` is unchanged.
    Mod,
    /// `steps` projected Adam steps (learning rate `lr`, PyTorch defaults
    /// otherwise) on `½‖X − ZD‖²/n`; the Adam state persists across fit steps.
    Adam {
        /// Learning rate.
        lr: f32,
        /// Adam steps per fit step (≥ 1).
        steps: usize,
    },
}

/// Settings of [`SparseCoding`]; with the seed they fix every number of a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseCodingConfig {
    /// Number of atoms `N`.
    pub n_latents: usize,
    /// Data dimension `M`.
    pub dim: usize,
    /// L1 weight on the lasso scale `½‖x − zD‖² + λ‖z‖₁` (see
    /// [`crate::encoders::exp_adam::lasso_lambda_from_paper`] for the paper's scale).
    pub lambda: f32,
    /// FISTA iterations per fit step (exactly this many: no early stop, so
    /// that steps cost the same and runs are reproducible).
    pub fista_iters: usize,
    /// Dictionary update rule.
    pub update: DictionaryUpdate,
    /// Seed of the initial dictionary and of dead-atom resampling.
    pub seed: u64,
}

impl SparseCodingConfig {
    /// λ = 0.1 (FISTA's default), 50 FISTA iterations per step, MOD.
    pub fn new(n_latents: usize, dim: usize, seed: u64) -> Self {
        SparseCodingConfig {
            n_latents,
            dim,
            lambda: 0.1,
            fista_iters: 50,
            update: DictionaryUpdate::Mod,
            seed,
        }
    }

    /// Checks sizes (≥ 1), λ (finite, ≥ 0), `fista_iters ≥ 1` and the Adam settings.
    pub fn validate(&self) -> Result<()> {
        if self.n_latents == 0 {
            return Err(Error::invalid("latents", 0, "must be at least 1"));
        }
        if self.dim == 0 {
            return Err(Error::invalid("dim", 0, "must be at least 1"));
        }
        self.fista_config().validate()?;
        if let DictionaryUpdate::Adam { lr, steps } = self.update {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(Error::invalid("lr", lr, "must be finite and positive"));
            }
            if steps == 0 {
                return Err(Error::invalid("steps", 0, "must be at least 1"));
            }
        }
        Ok(())
    }

    fn fista_config(&self) -> FistaConfig {
        FistaConfig {
            lambda: self.lambda,
            max_iter: self.fista_iters,
            tol: 0.0,
            nonnegative: true,
            accelerated: true,
        }
    }
}

/// An alternating-minimisation dictionary learner (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SparseCoding {
    config: SparseCodingConfig,
    fista: Fista,
    dictionary: Matrix,
    /// Resampling stream (stream 1 of the seed; stream 0 drew the dictionary).
    rng: ChaCha8Rng,
    /// Present with [`DictionaryUpdate::Adam`].
    adam: Option<UnitNormAdam>,
    /// The last batch's [`Matrix::fingerprint`] and its codes, for warm
    /// starts (a fingerprint, not the batch, keeps checkpoints small).
    last: Option<(String, Matrix)>,
    last_flops: f64,
    last_resampled: usize,
}

impl SparseCoding {
    /// A learner with a standard normal initial dictionary, rows scaled to
    /// unit norm, drawn from ChaCha8 stream 0 of `config.seed`.
    pub fn new(config: SparseCodingConfig) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut d = Matrix::from_fn(config.n_latents, config.dim, |_, _| {
            rng.sample::<f32, _>(StandardNormal)
        });
        normalize_atoms(&mut d);
        Self::with_dictionary(config, d)
    }

    /// A learner starting from `dictionary (N × M)`, finite (renormalised to
    /// unit-norm atoms), e.g. an SAE's learned decoder.
    pub fn with_dictionary(config: SparseCodingConfig, mut dictionary: Matrix) -> Result<Self> {
        config.validate()?;
        dictionary.expect_shape("dictionary", Some(config.n_latents), Some(config.dim))?;
        dictionary.check_finite("dictionary")?;
        normalize_atoms(&mut dictionary);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(1);
        let adam = match config.update {
            DictionaryUpdate::Mod => None,
            DictionaryUpdate::Adam { lr, .. } => Some(UnitNormAdam::new(
                config.n_latents,
                config.dim,
                AdamConfig::with_lr(lr),
                true,
            )),
        };
        Ok(SparseCoding {
            fista: Fista::new(config.fista_config())?,
            config,
            dictionary,
            rng,
            adam,
            last: None,
            last_flops: 0.0,
            last_resampled: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SparseCodingConfig {
        &self.config
    }

    /// The current dictionary `D (N × M)`, unit-norm atoms as rows.
    pub fn dictionary(&self) -> &Matrix {
        &self.dictionary
    }

    /// The codes of the last batch, consistent with [`Self::dictionary`]
    /// (rescaled after MOD); `None` before the first step.
    pub fn codes(&self) -> Option<&Matrix> {
        self.last.as_ref().map(|(_, z)| z)
    }

    /// FLOPs of the last [`Self::fit_step`] (0 before the first).
    pub fn last_step_flops(&self) -> f64 {
        self.last_flops
    }

    /// How many dead atoms the last [`Self::fit_step`] re-initialised.
    pub fn last_resampled(&self) -> usize {
        self.last_resampled
    }

    /// Codes of `x (n × M)` under the current dictionary: FISTA from zero
    /// with the training settings (call [`Fista::solve`] on
    /// [`Self::dictionary`] for other inference settings).
    pub fn encode(&self, x: &Matrix) -> Result<Encoding> {
        x.expect_shape("data", None, Some(self.config.dim))?;
        self.fista.solve(x, &self.dictionary, None, None)
    }

    /// One alternating step on the batch `x (n × M)`: codes, dictionary,
    /// dead atoms (module docs). Returns the objective `F(Z, D)` of the new
    /// codes under the dictionary **before** its update (as `train_step`
    /// returns the loss before the step). Fails on bad input, leaving the
    /// learner unchanged; fails with [`Error::Numerical`] if the codes or the
    /// dictionary become non-finite.
    ///
    /// FLOPs (n samples, N atoms, M = dim; recorded in [`Self::last_step_flops`]):
    /// ```text
    ///   FISTA, as it reports (Fista::solve: setup + iterations)
    /// + 2nNM + nM + 2nM + nN     residual R = X − ZD, ‖R‖², ‖Z‖₁ (objective)
    /// + nN                       which atoms are used
    /// + update_flops(n)          dictionary update (see there)
    /// + 3M per resampled atom    its normalisation
    /// ```
    pub fn fit_step(&mut self, x: &Matrix) -> Result<f32> {
        let (nl, m) = (self.config.n_latents, self.config.dim);
        x.expect_shape("data", None, Some(m))?;
        check_inputs(x, &self.dictionary)?;
        if x.rows() == 0 {
            return Err(Error::shape(
                "data",
                format!("(n ≥ 1, {m})"),
                format!("(0, {m})"),
            ));
        }
        let n = x.rows();
        let (nf, nlf, mf) = (n as f64, nl as f64, m as f64);

        // (a) Codes, warm-started on the same batch.
        let fingerprint = x.fingerprint();
        let init = match &self.last {
            Some((prev, z)) if *prev == fingerprint => Some(z),
            _ => None,
        };
        let enc = self.fista.solve(x, &self.dictionary, init, None)?;
        let mut flops = enc.flops;
        let mut z = enc.codes;

        // Residual R = X − Z·D and the objective.
        let mut resid = x.clone();
        gemm_into(
            resid.view_mut(),
            true,
            z.view(),
            Op::N,
            self.dictionary.view(),
            Op::N,
            -1.0,
        );
        let resid_sq: Vec<f64> = resid
            .rows_iter()
            .map(|r| r.iter().map(|&v| v as f64 * v as f64).sum())
            .collect();
        let l1: f64 = z.as_slice().iter().map(|&v| v as f64).sum();
        let objective = (0.5 * resid_sq.iter().sum::<f64>() + self.config.lambda as f64 * l1) / nf;
        flops += 2.0 * nf * nlf * mf + 3.0 * nf * mf + nf * nlf;
        if !objective.is_finite() {
            return Err(Error::Numerical {
                what: "sparse coding".to_string(),
                reason: format!("objective is {objective}; dictionary left unchanged"),
            });
        }
        let mut used = vec![false; nl];
        for row in z.rows_iter() {
            used.iter_mut().zip(row).for_each(|(u, &v)| *u |= v > 0.0);
        }
        flops += nf * nlf;

        // (b) Dictionary update.
        let mut d = self.dictionary.clone();
        let gram = matmul_new(&z, Op::T, &z, Op::N);
        let ztx = matmul_new(&z, Op::T, x, Op::N);
        match self.config.update {
            DictionaryUpdate::Mod => {
                mod_solve(&gram, &ztx, &mut d)?;
                // Keep Z·D unchanged for the next warm start: the row norms
                // move into the codes before the rows are normalised.
                let norms = d.row_norms();
                for i in 0..n {
                    for (v, &s) in z.row_mut(i).iter_mut().zip(&norms) {
                        *v = (*v as f64 * s) as f32;
                    }
                }
                normalize_atoms(&mut d);
            }
            DictionaryUpdate::Adam { steps, .. } => {
                let opt = self.adam.as_mut().expect("Adam update has its optimiser");
                let mut grad = Matrix::zeros(nl, m);
                let inv_n = (1.0 / nf) as f32;
                for _ in 0..steps {
                    // ∇ = (ZᵀZ·D − ZᵀX)/n.
                    grad.as_mut_slice().copy_from_slice(ztx.as_slice());
                    gemm_into(
                        grad.view_mut(),
                        true,
                        gram.view(),
                        Op::N,
                        d.view(),
                        Op::N,
                        -1.0,
                    );
                    grad.as_mut_slice().iter_mut().for_each(|g| *g *= -inv_n);
                    opt.step(&mut d, &mut grad);
                }
            }
        }
        flops += self.update_flops(n);

        // (c) Dead atoms: the direction of a sample's residual, drawn with
        // probability ∝ ‖r_i‖², since well-fitted samples carry no
        // information about what the dictionary lacks.
        let mut weights = resid_sq;
        let mut resampled = 0;
        for (j, _) in used.iter().enumerate().filter(|(_, &u)| !u) {
            let total: f64 = weights.iter().sum();
            let atom = d.row_mut(j);
            if total > 0.0 {
                let mut target = self.rng.gen::<f64>() * total;
                let mut pick = weights.iter().rposition(|&w| w > 0.0).unwrap_or(0);
                for (i, &w) in weights.iter().enumerate() {
                    if target < w {
                        pick = i;
                        break;
                    }
                    target -= w;
                }
                atom.copy_from_slice(resid.row(pick));
                weights[pick] = 0.0; // one sample per dead atom
            } else {
                // Every sample is fitted exactly: any direction will do.
                atom.iter_mut()
                    .for_each(|v| *v = self.rng.sample::<f32, _>(StandardNormal));
            }
            if let Some(opt) = self.adam.as_mut() {
                opt.reset_atom(j);
            }
            resampled += 1;
        }
        if resampled > 0 {
            normalize_atoms(&mut d);
            flops += 3.0 * mf * resampled as f64;
        }
        d.check_finite("learned dictionary")
            .map_err(|e| Error::Numerical {
                what: "sparse coding".to_string(),
                reason: format!("{e}; dictionary left unchanged"),
            })?;

        self.dictionary = d;
        self.last = Some((fingerprint, z));
        self.last_flops = flops;
        self.last_resampled = resampled;
        Ok(objective as f32)
    }

    /// FLOPs of the dictionary update on `n` samples (N atoms, M = dim):
    /// ```text
    /// 2nN² + 2nNM                             ZᵀZ, ZᵀX
    /// MOD:  + N + N³/3 + 2N²M                 ridge, Cholesky, 2 triangular solves per column
    ///       + nN + 3NM                        rescale codes, normalise atoms
    /// Adam: + steps·(2N²M + NM                gradient (ZᵀZ·D − ZᵀX)/n
    ///              + 6NM + 12NM + 3NM)        projection, Adam, normalisation
    /// ```
    pub fn update_flops(&self, n: usize) -> f64 {
        let (nf, nl, m) = (
            n as f64,
            self.config.n_latents as f64,
            self.config.dim as f64,
        );
        let products = 2.0 * nf * nl * nl + 2.0 * nf * nl * m;
        products
            + match (self.config.update, &self.adam) {
                (DictionaryUpdate::Adam { steps, .. }, Some(opt)) => {
                    let (nlu, mu) = (self.config.n_latents, self.config.dim);
                    steps as f64 * (2.0 * nl * nl * m + nl * m + opt.step_flops(nlu, mu))
                }
                _ => {
                    nl + nl * nl * nl / 3.0
                        + 2.0 * nl * nl * m
                        + nf * nl
                        + normalization_flops(self.config.n_latents, self.config.dim)
                }
            }
    }
}

/// `d ← (gram + εI)⁻¹·ztx` by Cholesky in f64 (ε = [`MOD_RIDGE`] × mean
/// diagonal, at least 1e-12 so that all-zero codes still give a definite system).
fn mod_solve(gram: &Matrix, ztx: &Matrix, d: &mut Matrix) -> Result<()> {
    let (k, m) = ztx.shape();
    let mut a: Vec<f64> = gram.as_slice().iter().map(|&v| v as f64).collect();
    let mean_diag = (0..k).map(|i| a[i * k + i]).sum::<f64>() / k as f64;
    let eps = (MOD_RIDGE * mean_diag).max(1e-12);
    (0..k).for_each(|i| a[i * k + i] += eps);
    let mut b: Vec<f64> = ztx.as_slice().iter().map(|&v| v as f64).collect();
    if !cholesky_solve_in_place(&mut a, k, &mut b, m) {
        return Err(Error::Numerical {
            what: "MOD dictionary update".to_string(),
            reason: "ZᵀZ + εI is not positive definite".to_string(),
        });
    }
    d.as_mut_slice()
        .iter_mut()
        .zip(&b)
        .for_each(|(v, &s)| *v = s as f32);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::unit_norm::max_atom_norm_error;
    use super::*;
    use crate::data::SyntheticConfig;
    use crate::metrics::{code_mcc, dictionary_cosine, dictionary_mcc};

    #[test]
    fn mod_update_is_the_least_squares_dictionary() {
        // With exact codes and no ridge to speak of, MOD recovers D from X = Z·D.
        let data = SyntheticConfig::paper(6, 5, 2, 3)
            .generate(200, 0, 0)
            .unwrap();
        let z = &data.train.z;
        let gram = matmul_new(z, Op::T, z, Op::N);
        let ztx = matmul_new(z, Op::T, &data.train.x, Op::N);
        let mut d = Matrix::zeros(6, 5);
        mod_solve(&gram, &ztx, &mut d).unwrap();
        assert!(d.max_abs_diff(&data.dictionary) < 1e-4);
    }

    /// Fits `steps` full-batch steps and returns the learner and objectives.
    fn fit(config: SparseCodingConfig, x: &Matrix, steps: usize) -> (SparseCoding, Vec<f32>) {
        let mut sc = SparseCoding::new(config).unwrap();
        let objs = (0..steps).map(|_| sc.fit_step(x).unwrap()).collect();
        (sc, objs)
    }

    #[test]
    fn mod_recovers_the_true_dictionary_on_an_easy_problem() {
        let data = SyntheticConfig::paper(16, 12, 2, 7)
            .generate(1024, 0, 1024)
            .unwrap();
        let config = SparseCodingConfig::new(16, 12, 0);
        let initial = SparseCoding::new(config).unwrap();
        let mcc0 = dictionary_mcc(&data.dictionary, initial.dictionary()).unwrap();
        let (sc, objs) = fit(config, &data.train.x, 60);
        let d = sc.dictionary();
        let mcc = dictionary_mcc(&data.dictionary, d).unwrap();
        let cos = dictionary_cosine(&data.dictionary, d).unwrap();
        let codes = sc.encode(&data.test.x).unwrap().codes;
        let cmcc = code_mcc(&data.test.z, &codes).unwrap();
        eprintln!(
            "MOD N16 M12 K2: objective {:.4} -> {:.4}, dict MCC {mcc0:.3} -> {mcc:.4}, \
             cosine {cos:.4}, test code MCC {cmcc:.4}, {:.3e} FLOPs/step",
            objs[0],
            objs[objs.len() - 1],
            sc.last_step_flops()
        );
        assert!(mcc > 0.95 && cos > 0.95, "dict MCC {mcc}, cosine {cos}");
        assert!(mcc > mcc0 + 0.3, "random init {mcc0} vs learned {mcc}");
        assert!(cmcc > 0.9, "code MCC {cmcc}");
        assert!(objs[objs.len() - 1] < 0.5 * objs[0]);
        assert!(max_atom_norm_error(d) < 1e-5);
    }

    #[test]
    fn paper_setting_with_mod_and_with_adam() {
        // N = 16, M = 8, K = 3 (paper-spec §7: the paper's SC reaches
        // dict MCC 0.837 after 40k joint Adam steps).
        let data = SyntheticConfig::paper(16, 8, 3, 20240926)
            .generate(1024, 0, 1024)
            .unwrap();
        let truth = &data.dictionary;
        let random = dictionary_mcc(
            truth,
            SparseCoding::new(SparseCodingConfig::new(16, 8, 0))
                .unwrap()
                .dictionary(),
        )
        .unwrap();
        for update in [
            DictionaryUpdate::Mod,
            DictionaryUpdate::Adam { lr: 0.01, steps: 5 },
        ] {
            let config = SparseCodingConfig {
                update,
                ..SparseCodingConfig::new(16, 8, 0)
            };
            let (sc, objs) = fit(config, &data.train.x, 100);
            let mcc = dictionary_mcc(truth, sc.dictionary()).unwrap();
            let codes = sc.encode(&data.test.x).unwrap().codes;
            let cmcc = code_mcc(&data.test.z, &codes).unwrap();
            eprintln!(
                "{update:?} N16 M8 K3: objective {:.4} -> {:.4}, dict MCC {random:.3} -> {mcc:.4}, \
                 test code MCC {cmcc:.4}",
                objs[0],
                objs[objs.len() - 1]
            );
            assert!(
                mcc > 0.95 && mcc > random + 0.2,
                "{update:?}: {random} -> {mcc}"
            );
            assert!(cmcc > 0.9, "{update:?}: code MCC {cmcc}");
            assert!(max_atom_norm_error(sc.dictionary()) < 1e-5);
        }
    }

    #[test]
    fn dead_atoms_are_resampled_from_residuals() {
        // λ so large that most codes are zero: unused atoms must be reset.
        let data = SyntheticConfig::paper(16, 8, 3, 1)
            .generate(256, 0, 0)
            .unwrap();
        let config = SparseCodingConfig {
            lambda: 1.5,
            ..SparseCodingConfig::new(16, 8, 4)
        };
        let mut sc = SparseCoding::new(config).unwrap();
        let mut total = 0;
        for _ in 0..5 {
            sc.fit_step(&data.train.x).unwrap();
            total += sc.last_resampled();
            assert!(max_atom_norm_error(sc.dictionary()) < 1e-5);
        }
        assert!(total > 0);
        // With codes of all zeros, every atom is dead and becomes a data direction.
        let zero_codes = SparseCodingConfig {
            lambda: 1e6,
            ..config
        };
        let mut sc = SparseCoding::new(zero_codes).unwrap();
        sc.fit_step(&data.train.x).unwrap();
        assert_eq!(sc.last_resampled(), 16);
        let d = sc.dictionary();
        for j in 0..16 {
            // Each atom is the direction of some training sample (residual = x).
            let best = (0..256)
                .map(|i| {
                    let x = data.train.x.row(i);
                    let nx = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
                    x.iter()
                        .zip(d.row(j))
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum::<f64>()
                        / nx
                })
                .fold(f64::MIN, f64::max);
            assert!(best > 1.0 - 1e-5, "atom {j}: {best}");
        }
    }

    #[test]
    fn fitting_is_deterministic_in_the_seed() {
        let data = SyntheticConfig::paper(12, 6, 2, 9)
            .generate(128, 0, 0)
            .unwrap();
        for update in [
            DictionaryUpdate::Mod,
            DictionaryUpdate::Adam { lr: 0.01, steps: 3 },
        ] {
            let run = |seed| {
                let config = SparseCodingConfig {
                    update,
                    fista_iters: 20,
                    ..SparseCodingConfig::new(12, 6, seed)
                };
                fit(config, &data.train.x, 10).0.dictionary().clone()
            };
            assert_eq!(run(3), run(3));
            assert_ne!(run(3), run(4));
        }
    }

    /// The mean lasso objective of `z` under `d` on `x`, in f64.
    fn objective(x: &Matrix, z: &Matrix, d: &Matrix, lambda: f32) -> f64 {
        let xh = matmul_new(z, Op::N, d, Op::N);
        let sq: f64 = x
            .as_slice()
            .iter()
            .zip(xh.as_slice())
            .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
            .sum();
        let l1: f64 = z.as_slice().iter().map(|&v| v as f64).sum();
        (0.5 * sq + lambda as f64 * l1) / x.rows() as f64
    }

    #[test]
    fn warm_start_only_on_the_same_batch() {
        let data = SyntheticConfig::paper(12, 6, 2, 9)
            .generate(64, 0, 0)
            .unwrap();
        let config = SparseCodingConfig {
            fista_iters: 3,
            ..SparseCodingConfig::new(12, 6, 1)
        };
        let x = &data.train.x;
        let mut sc = SparseCoding::new(config).unwrap();
        for _ in 0..3 {
            sc.fit_step(x).unwrap();
        }
        // The kept codes are consistent with the updated dictionary, so a
        // warm start beats a cold one at the same (small) iteration budget.
        let d = sc.dictionary().clone();
        let cold_fista = Fista::new(config.fista_config()).unwrap();
        let cold = cold_fista.solve(x, &d, None, None).unwrap().codes;
        let cold_obj = objective(x, &cold, &d, config.lambda);
        let kept_obj = objective(x, sc.codes().unwrap(), &d, config.lambda);
        let warm_obj = sc.clone().fit_step(x).unwrap() as f64;
        assert!(warm_obj < cold_obj, "warm {warm_obj} vs cold {cold_obj}");
        assert!(
            warm_obj <= kept_obj + 1e-6,
            "FISTA from the kept codes: {warm_obj} vs {kept_obj}"
        );
        // Another batch starts from zero: the same codes (up to the MOD
        // rescaling, so compare supports) as a cold solve.
        let other = x.select_rows(0..32);
        let mut fresh = sc.clone();
        fresh.fit_step(&other).unwrap();
        let want = cold_fista.solve(&other, &d, None, None).unwrap().codes;
        let support = |m: &Matrix| m.as_slice().iter().map(|&v| v > 0.0).collect::<Vec<_>>();
        assert_eq!(support(fresh.codes().unwrap()), support(&want));
    }

    #[test]
    fn bad_inputs_and_configs_are_errors() {
        let config = SparseCodingConfig::new(6, 4, 0);
        let mut sc = SparseCoding::new(config).unwrap();
        let before = sc.dictionary().clone();
        assert!(sc.fit_step(&Matrix::zeros(3, 5)).is_err());
        assert!(sc.fit_step(&Matrix::zeros(0, 4)).is_err());
        let mut nan = Matrix::zeros(3, 4);
        nan.set(1, 1, f32::NAN);
        assert!(matches!(sc.fit_step(&nan), Err(Error::NonFinite { .. })));
        assert_eq!(sc.dictionary(), &before);
        assert!(SparseCoding::new(SparseCodingConfig {
            lambda: -1.0,
            ..config
        })
        .is_err());
        assert!(SparseCoding::new(SparseCodingConfig {
            fista_iters: 0,
            ..config
        })
        .is_err());
        assert!(SparseCoding::new(SparseCodingConfig {
            n_latents: 0,
            ..config
        })
        .is_err());
        let bad_adam = DictionaryUpdate::Adam { lr: 0.0, steps: 1 };
        assert!(SparseCoding::new(SparseCodingConfig {
            update: bad_adam,
            ..config
        })
        .is_err());
        let no_steps = DictionaryUpdate::Adam { lr: 0.1, steps: 0 };
        assert!(SparseCoding::new(SparseCodingConfig {
            update: no_steps,
            ..config
        })
        .is_err());
        assert!(SparseCoding::with_dictionary(config, Matrix::zeros(4, 6)).is_err());
    }

    #[test]
    fn flop_counts_match_the_documented_formula() {
        let (n, nl, m) = (100.0, 16.0, 8.0);
        let sc = SparseCoding::new(SparseCodingConfig::new(16, 8, 0)).unwrap();
        let products = 2.0 * n * nl * nl + 2.0 * n * nl * m;
        let want = products + nl + nl * nl * nl / 3.0 + 2.0 * nl * nl * m + n * nl + 3.0 * nl * m;
        assert_eq!(sc.update_flops(100), want);
        let adam = SparseCoding::new(SparseCodingConfig {
            update: DictionaryUpdate::Adam { lr: 0.01, steps: 4 },
            ..SparseCodingConfig::new(16, 8, 0)
        })
        .unwrap();
        let want = products + 4.0 * (2.0 * nl * nl * m + nl * m + 21.0 * nl * m);
        assert_eq!(adam.update_flops(100), want);
        // A fit step adds FISTA's own count, the objective and the usage scan.
        let data = SyntheticConfig::paper(16, 8, 3, 0)
            .generate(100, 0, 0)
            .unwrap();
        let mut sc = sc;
        let fista = sc.encode(&data.train.x).unwrap().flops;
        sc.fit_step(&data.train.x).unwrap();
        let rest = 2.0 * n * nl * m + 3.0 * n * m + 2.0 * n * nl + sc.update_flops(100);
        let extra = sc.last_step_flops() - fista - rest;
        assert!((extra - 3.0 * m * sc.last_resampled() as f64).abs() < 1e-6 * sc.last_step_flops());
    }
}
