//! The known-dictionary study (paper-spec §7, "Known D"): every encoder is
//! paired with the frozen true dictionary, so differences in code MCC are
//! differences in *inference* alone.
//!
//! Per seed: generate data (train / validation / test), then
//! - train the amortised encoders (linear-ReLU SAE, MLPs) full batch with Adam
//!   and evaluate them at log-spaced steps on validation and test;
//! - run per-sample inference: FISTA and ISTA (λ chosen on validation), the
//!   paper's Adam-on-exp-codes solver, OMP and MP (k chosen on validation);
//! - run SAE + inference-time optimisation warm-started from the SAE codes,
//!   next to the cold start that the reference code actually ran.
//!
//! Every curve point records cumulative FLOPs (training so far + inference on
//! the evaluated split, which has the same size for validation and test).
//! Model selection uses validation only; test numbers are reported, never used to choose.

use crate::curve::{flops_to_reach, mean_curve, CurvePoint};
use crate::figure::{line_chart_svg, FigureSpec, Series};
use crate::{f64_of, mean_std, Progress};
use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sparse_core::data::{Split, SyntheticConfig, SyntheticData};
use sparse_core::encoders::exp_adam::{ExpAdam, ExpAdamConfig};
use sparse_core::encoders::fista::{Fista, FistaConfig};
use sparse_core::encoders::ito::{InferenceTimeOptimisation, WarmStartSolver};
use sparse_core::encoders::mlp::{Mlp, MlpConfig};
use sparse_core::encoders::pursuit::{MatchingPursuit, Omp};
use sparse_core::encoders::sae::{Sae, SaeConfig};
use sparse_core::encoders::{Encoder, Encoding, SolverProgress, Trainable};
use sparse_core::metrics::{code_mcc, code_report, reconstruction_report, CodeReport};
use sparse_core::optim::AdamConfig;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Everything that defines the study; with it every number can be reproduced.
/// Deserialises from partial TOML/JSON: missing fields take the defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KnownDictionaryConfig {
    /// True features `N`.
    pub n_latents: usize,
    /// Observed dimension `M`.
    pub dim: usize,
    /// Active features per sample `K`.
    pub k: usize,
    /// Training samples (full batch, as in the paper).
    pub n_train: usize,
    /// Validation samples (model selection).
    pub n_val: usize,
    /// Test samples (reported numbers).
    pub n_test: usize,
    /// Number of seeds; seed `i` uses data seed `base_seed + i` and model seed `base_seed + i + 42`.
    pub seeds: usize,
    /// First data seed (the reference's known-D seed is 20240625).
    pub base_seed: u64,
    /// Full-batch Adam steps for the amortised encoders.
    pub train_steps: usize,
    /// Number of log-spaced evaluation points along training and iterative inference.
    pub eval_points: usize,
    /// Sparsity weight λ of the paper's loss `mean((x-x̂)²) + λ·mean|z|` (SAE, MLP, exp-Adam).
    pub lambda: f32,
    /// Adam learning rate of the SAE.
    pub lr: f32,
    /// Adam learning rate of the MLP encoders.
    pub mlp_lr: f32,
    /// MLP hidden widths.
    pub mlp_widths: Vec<usize>,
    /// Lasso λ grid for FISTA/ISTA (objective `½‖x − zD‖² + λ‖z‖₁`), chosen on validation.
    pub fista_lambdas: Vec<f32>,
    /// FISTA/ISTA iteration cap.
    pub fista_max_iter: usize,
    /// FISTA/ISTA stopping tolerance on the relative change of the codes.
    pub fista_tol: f32,
    /// Iterations of the paper's Adam-on-exp-codes solver.
    pub exp_adam_iter: usize,
    /// Learning rate of that solver (the reference's known-D run used 1e-3).
    pub exp_adam_lr: f32,
    /// Sparsity levels for OMP and MP, chosen on validation.
    pub pursuit_ks: Vec<usize>,
}

impl Default for KnownDictionaryConfig {
    fn default() -> Self {
        KnownDictionaryConfig {
            n_latents: 16,
            dim: 8,
            k: 3,
            n_train: 1024,
            n_val: 1024,
            n_test: 1024,
            seeds: 5,
            base_seed: 20_240_625,
            train_steps: 20_000,
            eval_points: 60,
            lambda: 0.01,
            lr: 1e-3,
            mlp_lr: 1e-3,
            mlp_widths: vec![32, 256],
            fista_lambdas: vec![0.001, 0.003, 0.01, 0.03, 0.1],
            fista_max_iter: 5_000,
            fista_tol: 1e-7,
            exp_adam_iter: 20_000,
            exp_adam_lr: 1e-3,
            pursuit_ks: vec![1, 2, 3, 4, 5, 6],
        }
    }
}

impl KnownDictionaryConfig {
    /// A small configuration for tests and smoke runs (seconds, not minutes).
    pub fn quick() -> Self {
        KnownDictionaryConfig {
            n_train: 256,
            n_val: 256,
            n_test: 256,
            seeds: 2,
            train_steps: 1_500,
            eval_points: 20,
            mlp_widths: vec![32],
            fista_max_iter: 1_000,
            fista_tol: 1e-6,
            exp_adam_iter: 2_000,
            exp_adam_lr: 3e-3,
            ..Default::default()
        }
    }

    /// Checks the sizes and grids before anything runs.
    pub fn validate(&self) -> anyhow::Result<()> {
        SyntheticConfig::paper(self.n_latents, self.dim, self.k, self.base_seed).validate()?;
        anyhow::ensure!(self.seeds >= 1, "seeds must be at least 1");
        anyhow::ensure!(
            self.n_train >= 2 && self.n_val >= 2 && self.n_test >= 2,
            "every split needs at least 2 samples"
        );
        anyhow::ensure!(
            self.train_steps >= 1 && self.eval_points >= 2,
            "train_steps ≥ 1 and eval_points ≥ 2 required"
        );
        anyhow::ensure!(
            !self.fista_lambdas.is_empty() && !self.pursuit_ks.is_empty(),
            "the λ and k grids must not be empty"
        );
        anyhow::ensure!(
            self.lambda >= 0.0 && self.lr > 0.0 && self.exp_adam_lr > 0.0,
            "λ ≥ 0 and positive learning rates required"
        );
        Ok(())
    }

    fn fista_config(&self, lambda: f32, accelerated: bool) -> FistaConfig {
        FistaConfig {
            lambda,
            max_iter: self.fista_max_iter,
            tol: self.fista_tol,
            nonnegative: true,
            accelerated,
        }
    }

    fn data_config(&self, seed_index: usize) -> SyntheticConfig {
        SyntheticConfig::paper(
            self.n_latents,
            self.dim,
            self.k,
            self.base_seed + seed_index as u64,
        )
    }

    fn method_names(&self) -> Vec<String> {
        let mut names = vec!["sae".to_string()];
        names.extend(self.mlp_widths.iter().map(|h| format!("mlp-{h}")));
        names.extend(
            [
                "fista",
                "ista",
                "exp-adam",
                "omp",
                "mp",
                "sae+fista",
                "sae+exp-adam",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        names
    }
}

/// How a method produces codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// One trained pass (SAE, MLP).
    Amortised,
    /// Iterative or greedy per-sample inference with the true dictionary.
    PerSample,
    /// An amortised pass refined by a warm-started solver.
    AmortisedPlusIto,
}

/// Every number one method produced on one seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodRun {
    /// Method name (e.g. `"sae"`, `"mlp-256"`, `"fista"`).
    pub method: String,
    /// Its family.
    pub family: Family,
    /// Data seed (model seed = data seed + 42).
    pub seed: u64,
    /// Hyperparameters used, including those chosen on validation.
    pub hyperparameters: BTreeMap<String, f64>,
    /// Training FLOPs (0 for per-sample inference).
    pub train_flops: f64,
    /// Inference FLOPs on the test split.
    pub inference_flops: f64,
    /// Iterations of the final inference (1 for a single pass).
    pub iterations: usize,
    /// Code metrics of the final model / final iterate on the test split.
    pub test: CodeReport,
    /// Reconstruction MSE of the test split from the codes and the true dictionary.
    pub test_reconstruction_mse: f64,
    /// Code MCC of the final model on the validation split.
    pub val_mcc: f64,
    /// Amortised only: the evaluation step with the best validation MCC, and the test MCC there.
    pub selected_on_val: Option<(usize, f64)>,
    /// Code MCC on validation along training / iterations.
    pub curve_val: Vec<CurvePoint>,
    /// Code MCC on test along training / iterations.
    pub curve_test: Vec<CurvePoint>,
    /// Wall-clock seconds of this method on this seed.
    pub wall_seconds: f64,
}

/// One row of the summary table: a method over all seeds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SummaryRow {
    /// Method name.
    pub method: String,
    /// Family.
    pub family: Family,
    /// Mean and std over seeds of the final test code MCC.
    pub test_mcc: (f64, f64),
    /// Mean and std of the test MCC at the validation-selected step (amortised only).
    pub selected_test_mcc: Option<(f64, f64)>,
    /// Mean and std of support F1 on test.
    pub support_f1: (f64, f64),
    /// Mean L0 (non-zeros per sample) on test.
    pub l0: f64,
    /// Mean test reconstruction MSE with the true dictionary.
    pub reconstruction_mse: f64,
    /// Mean training FLOPs.
    pub train_flops: f64,
    /// Mean inference FLOPs on the test split.
    pub inference_flops: f64,
    /// Mean iterations of the final inference.
    pub iterations: f64,
    /// The paper's final MCC for this method, where it reports one.
    pub paper_mcc: Option<f64>,
}

/// Where a per-sample method's test curve first reaches an amortised method's final test MCC.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Overtake {
    /// The amortised method.
    pub amortised: String,
    /// Its mean final test MCC.
    pub amortised_mcc: f64,
    /// Its mean total FLOPs (training + test inference).
    pub amortised_total_flops: f64,
    /// The per-sample method.
    pub per_sample: String,
    /// Mean FLOPs at which the per-sample method first matches it, over the seeds where it does.
    pub per_sample_flops: Option<f64>,
    /// In how many seeds it does.
    pub seeds_reached: usize,
}

/// The whole study's output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnownDictionaryReport {
    /// The configuration that produced it.
    pub config: KnownDictionaryConfig,
    /// sparse-infer version.
    pub version: String,
    /// Every method on every seed.
    pub runs: Vec<MethodRun>,
    /// Aggregates per method.
    pub summary: Vec<SummaryRow>,
    /// Compute at which per-sample inference overtakes each amortised encoder.
    pub overtakes: Vec<Overtake>,
    /// Total wall-clock seconds.
    pub wall_seconds: f64,
}

/// The paper's final known-D MCCs (paper-spec §7).
fn paper_mcc(method: &str) -> Option<f64> {
    match method {
        "sae" => Some(0.609),
        "mlp-32" => Some(0.780),
        "mlp-256" => Some(0.818),
        "exp-adam" => Some(0.967),
        _ => None,
    }
}

/// Runs the study. Seeds run in parallel, and within a seed the amortised
/// encoders beside the per-sample solvers; the result does not depend on the
/// thread count.
pub fn run(
    config: &KnownDictionaryConfig,
    progress: &dyn Progress,
) -> anyhow::Result<KnownDictionaryReport> {
    config.validate()?;
    let started = Instant::now();
    let methods = config.method_names();
    progress.start(config.seeds * methods.len());
    let per_seed: Vec<anyhow::Result<Vec<MethodRun>>> = (0..config.seeds)
        .into_par_iter()
        .map(|i| run_seed(config, i, progress))
        .collect();
    let mut runs = Vec::new();
    for r in per_seed {
        runs.extend(r?);
    }
    let summary = summarise(&methods, &runs);
    let overtakes = overtakes(&runs, &summary);
    Ok(KnownDictionaryReport {
        config: config.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        runs,
        summary,
        overtakes,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The evaluation steps: 0, then `points - 1` log-spaced steps up to `last` (deduplicated).
fn eval_steps(last: usize, points: usize) -> Vec<usize> {
    let mut steps = vec![0usize];
    for i in 0..points.saturating_sub(1) {
        let t = (last as f64)
            .powf((i + 1) as f64 / (points - 1) as f64)
            .round() as usize;
        if t > *steps.last().unwrap() {
            steps.push(t.min(last));
        }
    }
    if *steps.last().unwrap() != last {
        steps.push(last);
    }
    steps
}

struct SeedContext<'a> {
    config: &'a KnownDictionaryConfig,
    data: &'a SyntheticData,
    seed: u64,
    progress: &'a dyn Progress,
}

/// One method of the study, run alone (the unit of a sweep).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KnownMethod {
    /// The linear-ReLU SAE encoder (learning rate `config.lr`), with or without an encoder bias.
    Sae {
        /// Whether the encoder has a trained bias.
        bias: bool,
    },
    /// An MLP encoder of the given hidden width (learning rate `config.mlp_lr`).
    Mlp {
        /// Hidden width `h`.
        hidden: usize,
        /// Whether the layers have trained biases.
        bias: bool,
    },
    /// Non-negative FISTA with the true dictionary at a fixed lasso λ.
    Fista {
        /// Lasso λ.
        lambda: f32,
    },
}

/// Runs one method on `data` (generated from `seed`) exactly as the study does
/// (steps, evaluation points, λ and tolerances from `config`); the model seed is `seed + 42`.
pub fn run_method(
    config: &KnownDictionaryConfig,
    data: &SyntheticData,
    seed: u64,
    method: KnownMethod,
    progress: &dyn Progress,
) -> anyhow::Result<MethodRun> {
    let ctx = SeedContext {
        config,
        data,
        seed,
        progress,
    };
    match method {
        KnownMethod::Sae { bias } => Ok(ctx.sae(bias)?.0),
        KnownMethod::Mlp { hidden, bias } => ctx.mlp(hidden, bias),
        KnownMethod::Fista { lambda } => {
            let fista = Fista::new(config.fista_config(lambda, true))?;
            ctx.per_sample_iterative("fista", &fista, lambda_hyper("lambda", lambda))
        }
    }
}

fn run_seed(
    config: &KnownDictionaryConfig,
    index: usize,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<MethodRun>> {
    let data_config = config.data_config(index);
    let data = data_config.generate(config.n_train, config.n_val, config.n_test)?;
    let ctx = SeedContext {
        config,
        data: &data,
        seed: data_config.seed,
        progress,
    };
    // The amortised encoders and the per-sample solvers are independent
    // until SAE + ITO: run them side by side (each is deterministic, so the
    // numbers do not depend on the thread count).
    let ((sae, mlp_runs), per_sample) = rayon::join(
        || {
            rayon::join(
                || ctx.sae(false),
                || {
                    (config.mlp_widths.iter())
                        .map(|&hidden| ctx.mlp(hidden, false))
                        .collect::<anyhow::Result<Vec<_>>>()
                },
            )
        },
        || ctx.per_sample_runs(),
    );
    let (sae_run, sae) = sae?;
    let PerSampleRuns {
        runs: per_sample_runs,
        lambda_star,
        fista,
        exp_adam,
        exp_hyper,
    } = per_sample?;
    let sae_train_flops = sae_run.train_flops;
    let mut runs = vec![sae_run];
    runs.extend(mlp_runs?);
    runs.extend(per_sample_runs);

    // SAE + ITO, warm-started from the trained SAE's codes.
    for (name, solver, mut hyper) in [
        (
            "sae+fista",
            &fista as &dyn WarmStartSolver,
            lambda_hyper("lambda", lambda_star),
        ),
        ("sae+exp-adam", &exp_adam as &dyn WarmStartSolver, exp_hyper),
    ] {
        hyper.insert("warm_start".into(), 1.0);
        let ito = InferenceTimeOptimisation {
            amortised: &sae,
            solver,
        };
        let mut run = ctx.per_sample_iterative(name, &ito, hyper)?;
        run.family = Family::AmortisedPlusIto;
        run.train_flops = sae_train_flops;
        run.curve_val
            .iter_mut()
            .chain(run.curve_test.iter_mut())
            .for_each(|p| p.flops += sae_train_flops);
        runs.push(run);
    }
    Ok(runs)
}

/// What the per-sample solvers of one seed leave for SAE + ITO.
struct PerSampleRuns {
    runs: Vec<MethodRun>,
    lambda_star: f32,
    fista: Fista,
    exp_adam: ExpAdam,
    exp_hyper: BTreeMap<String, f64>,
}

impl SeedContext<'_> {
    /// FISTA and ISTA (λ chosen on validation), exp-Adam, OMP and MP (k
    /// chosen on validation), in that order.
    fn per_sample_runs(&self) -> anyhow::Result<PerSampleRuns> {
        let mut runs = Vec::new();
        // FISTA: choose λ on validation, then trace the test curve.
        let mut best = (f64::NEG_INFINITY, self.config.fista_lambdas[0]);
        for &lambda in &self.config.fista_lambdas {
            let enc = Fista::new(self.config.fista_config(lambda, true))?
                .encode(&self.data.val.x, &self.data.dictionary)?;
            let mcc = code_mcc(&self.data.val.z, &enc.codes)?;
            if mcc > best.0 {
                best = (mcc, lambda);
            }
        }
        let lambda_star = best.1;
        let fista = Fista::new(self.config.fista_config(lambda_star, true))?;
        let ista = Fista::new(self.config.fista_config(lambda_star, false))?;
        runs.push(self.per_sample_iterative(
            "fista",
            &fista,
            lambda_hyper("lambda", lambda_star),
        )?);
        runs.push(self.per_sample_iterative("ista", &ista, lambda_hyper("lambda", lambda_star))?);

        let exp_adam = ExpAdam::new(ExpAdamConfig {
            lambda: self.config.lambda,
            lr: self.config.exp_adam_lr,
            max_iter: self.config.exp_adam_iter,
            ..ExpAdamConfig::default()
        })?;
        let mut exp_hyper = lambda_hyper("lambda", self.config.lambda);
        exp_hyper.insert("lr".into(), f64_of(self.config.exp_adam_lr));
        runs.push(self.per_sample_iterative("exp-adam", &exp_adam, exp_hyper.clone())?);

        // OMP and MP: choose k on validation.
        for (name, make) in [
            (
                "omp",
                &(|k| Ok(Box::new(Omp::new(k, None, false)?) as Box<dyn Encoder>))
                    as &dyn Fn(usize) -> anyhow::Result<Box<dyn Encoder>>,
            ),
            ("mp", &|k| {
                Ok(Box::new(MatchingPursuit::new(k, false)?) as Box<dyn Encoder>)
            }),
        ] {
            let mut best = (f64::NEG_INFINITY, self.config.pursuit_ks[0]);
            for &k in self
                .config
                .pursuit_ks
                .iter()
                .filter(|&&k| k <= self.config.n_latents)
            {
                let enc = make(k)?.encode(&self.data.val.x, &self.data.dictionary)?;
                let mcc = code_mcc(&self.data.val.z, &enc.codes)?;
                if mcc > best.0 {
                    best = (mcc, k);
                }
            }
            let encoder = make(best.1)?;
            runs.push(self.single_pass(
                name,
                encoder.as_ref(),
                0.0,
                lambda_hyper("k", best.1 as f32),
            )?);
        }
        Ok(PerSampleRuns {
            runs,
            lambda_star,
            fista,
            exp_adam,
            exp_hyper,
        })
    }
}

fn lambda_hyper(name: &str, value: f32) -> BTreeMap<String, f64> {
    BTreeMap::from([(name.to_string(), f64_of(value))])
}

/// Anything that can trace its iterations through a monitor.
trait Traceable {
    fn trace(
        &self,
        x: &sparse_core::Matrix,
        d: &sparse_core::Matrix,
        monitor: &mut dyn FnMut(&SolverProgress<'_>) -> bool,
    ) -> sparse_core::Result<Encoding>;
}

macro_rules! traceable_solver {
    ($($t:ty),*) => {$(
        impl Traceable for $t {
            fn trace(&self, x: &sparse_core::Matrix, d: &sparse_core::Matrix, monitor: &mut dyn FnMut(&SolverProgress<'_>) -> bool) -> sparse_core::Result<Encoding> {
                self.solve_from(x, d, None, Some(monitor))
            }
        }
    )*};
}
traceable_solver!(Fista, ExpAdam);

impl Traceable for InferenceTimeOptimisation<'_> {
    fn trace(
        &self,
        x: &sparse_core::Matrix,
        d: &sparse_core::Matrix,
        monitor: &mut dyn FnMut(&SolverProgress<'_>) -> bool,
    ) -> sparse_core::Result<Encoding> {
        self.solve(x, d, Some(monitor))
    }
}

impl SeedContext<'_> {
    /// Trains the SAE; returns its run and the trained model (for ITO).
    fn sae(&self, bias: bool) -> anyhow::Result<(MethodRun, Sae)> {
        let c = self.config;
        let mut sae = Sae::new(SaeConfig {
            n_latents: c.n_latents,
            dim: c.dim,
            lambda: c.lambda,
            adam: AdamConfig::with_lr(c.lr),
            use_bias: bias,
            seed: self.seed + 42,
        })?;
        let run = self.train_amortised("sae", &mut sae, c.lr)?;
        Ok((run, sae))
    }

    fn mlp(&self, hidden: usize, bias: bool) -> anyhow::Result<MethodRun> {
        let c = self.config;
        let mut mlp = Mlp::new(MlpConfig {
            n_latents: c.n_latents,
            dim: c.dim,
            hidden,
            lambda: c.lambda,
            adam: AdamConfig::with_lr(c.mlp_lr),
            use_bias: bias,
            seed: self.seed + 42,
        })?;
        self.train_amortised(&format!("mlp-{hidden}"), &mut mlp, c.mlp_lr)
    }

    fn finish(
        &self,
        mut run: MethodRun,
        codes_test: &sparse_core::Matrix,
        started: Instant,
    ) -> anyhow::Result<MethodRun> {
        run.test = code_report(&self.data.test.z, codes_test)?;
        run.test_reconstruction_mse =
            reconstruction_report(&self.data.test.x, codes_test, &self.data.dictionary)?.mse;
        run.wall_seconds = started.elapsed().as_secs_f64();
        self.progress
            .finished(&format!("{} (seed {})", run.method, run.seed));
        Ok(run)
    }

    fn blank(
        &self,
        method: &str,
        family: Family,
        hyperparameters: BTreeMap<String, f64>,
    ) -> MethodRun {
        MethodRun {
            method: method.to_string(),
            family,
            seed: self.seed,
            hyperparameters,
            train_flops: 0.0,
            inference_flops: 0.0,
            iterations: 1,
            test: CodeReport::default(),
            test_reconstruction_mse: f64::NAN,
            val_mcc: f64::NAN,
            selected_on_val: None,
            curve_val: Vec::new(),
            curve_test: Vec::new(),
            wall_seconds: 0.0,
        }
    }

    fn train_amortised<T: Trainable>(
        &self,
        name: &str,
        model: &mut T,
        lr: f32,
    ) -> anyhow::Result<MethodRun> {
        let started = Instant::now();
        let c = self.config;
        let mut hyper = lambda_hyper("lambda", c.lambda);
        hyper.insert("lr".into(), f64_of(lr));
        hyper.insert("steps".into(), c.train_steps as f64);
        let mut run = self.blank(name, Family::Amortised, hyper);
        let d = &self.data.dictionary;
        let step_flops = model.train_step_flops(c.n_train);
        let checkpoints = eval_steps(c.train_steps, c.eval_points);
        let mut next = 0;
        for step in 0..=c.train_steps {
            if checkpoints.get(next) == Some(&step) {
                next += 1;
                let trained = step_flops * step as f64;
                for (split, curve) in [
                    (&self.data.val, &mut run.curve_val),
                    (&self.data.test, &mut run.curve_test),
                ] {
                    let enc = model.encode(&split.x, d)?;
                    curve.push(CurvePoint {
                        step,
                        flops: trained + enc.flops,
                        mcc: code_mcc(&split.z, &enc.codes)?,
                    });
                }
            }
            if step < c.train_steps {
                let loss = model.train_step(&self.data.train.x, d)?;
                anyhow::ensure!(
                    loss.is_finite(),
                    "{name} (seed {}): loss became {loss} at step {step}; lower the learning rate",
                    self.seed
                );
            }
        }
        run.train_flops = step_flops * c.train_steps as f64;
        let best = run
            .curve_val
            .iter()
            .zip(&run.curve_test)
            .max_by(|a, b| a.0.mcc.total_cmp(&b.0.mcc))
            .map(|(v, t)| (v.step, t.mcc));
        run.selected_on_val = best;
        let test = model.encode(&self.data.test.x, d)?;
        run.inference_flops = test.flops;
        run.val_mcc = run.curve_val.last().map_or(f64::NAN, |p| p.mcc);
        self.finish(run, &test.codes, started)
    }

    fn per_sample_iterative(
        &self,
        name: &str,
        solver: &dyn Traceable,
        hyper: BTreeMap<String, f64>,
    ) -> anyhow::Result<MethodRun> {
        let started = Instant::now();
        let family = Family::PerSample;
        let mut run = self.blank(name, family, hyper);
        let d = &self.data.dictionary;
        let max_iter = self.config.fista_max_iter.max(self.config.exp_adam_iter);
        let record: std::collections::BTreeSet<usize> =
            eval_steps(max_iter, self.config.eval_points * 2)
                .into_iter()
                .collect();
        let trace = |split: &Split| -> anyhow::Result<(Encoding, Vec<CurvePoint>)> {
            let mut curve = Vec::new();
            let mut failure = None;
            let mut monitor = |p: &SolverProgress<'_>| {
                if record.contains(&p.iteration) {
                    match code_mcc(&split.z, p.codes) {
                        Ok(mcc) => curve.push(CurvePoint {
                            step: p.iteration,
                            flops: p.flops,
                            mcc,
                        }),
                        Err(e) => {
                            failure = Some(e);
                            return false;
                        }
                    }
                }
                true
            };
            let enc = solver.trace(&split.x, d, &mut monitor)?;
            if let Some(e) = failure {
                return Err(e.into());
            }
            // The final iterate is always on the curve, even between recorded iterations.
            if curve.last().map(|p| p.step) != Some(enc.iterations) {
                curve.push(CurvePoint {
                    step: enc.iterations,
                    flops: enc.flops,
                    mcc: code_mcc(&split.z, &enc.codes)?,
                });
            }
            Ok((enc, curve))
        };
        let (val, curve_val) =
            trace(&self.data.val).with_context(|| format!("{name} on validation"))?;
        let (test, curve_test) =
            trace(&self.data.test).with_context(|| format!("{name} on test"))?;
        run.val_mcc = code_mcc(&self.data.val.z, &val.codes)?;
        run.curve_val = curve_val;
        run.curve_test = curve_test;
        run.inference_flops = test.flops;
        run.iterations = test.iterations;
        self.finish(run, &test.codes, started)
    }

    fn single_pass(
        &self,
        name: &str,
        encoder: &dyn Encoder,
        train_flops: f64,
        hyper: BTreeMap<String, f64>,
    ) -> anyhow::Result<MethodRun> {
        let started = Instant::now();
        let mut run = self.blank(name, Family::PerSample, hyper);
        let d = &self.data.dictionary;
        let val = encoder.encode(&self.data.val.x, d)?;
        let test = encoder.encode(&self.data.test.x, d)?;
        run.val_mcc = code_mcc(&self.data.val.z, &val.codes)?;
        let point = |enc: &Encoding, mcc| CurvePoint {
            step: enc.iterations,
            flops: train_flops + enc.flops,
            mcc,
        };
        run.curve_val.push(point(&val, run.val_mcc));
        run.curve_test
            .push(point(&test, code_mcc(&self.data.test.z, &test.codes)?));
        run.inference_flops = test.flops;
        run.iterations = test.iterations;
        self.finish(run, &test.codes, started)
    }
}

fn summarise(methods: &[String], runs: &[MethodRun]) -> Vec<SummaryRow> {
    methods
        .iter()
        .filter_map(|m| {
            let rs: Vec<&MethodRun> = runs.iter().filter(|r| &r.method == m).collect();
            let first = rs.first()?;
            let col = |f: &dyn Fn(&MethodRun) -> f64| rs.iter().map(|r| f(r)).collect::<Vec<f64>>();
            let selected: Option<Vec<f64>> =
                rs.iter().map(|r| r.selected_on_val.map(|s| s.1)).collect();
            Some(SummaryRow {
                method: m.clone(),
                family: first.family,
                test_mcc: mean_std(&col(&|r| r.test.code_mcc)),
                selected_test_mcc: selected.map(|s| mean_std(&s)),
                support_f1: mean_std(&col(&|r| r.test.support_f1)),
                l0: mean_std(&col(&|r| r.test.l0_count)).0,
                reconstruction_mse: mean_std(&col(&|r| r.test_reconstruction_mse)).0,
                train_flops: mean_std(&col(&|r| r.train_flops)).0,
                inference_flops: mean_std(&col(&|r| r.inference_flops)).0,
                iterations: mean_std(&col(&|r| r.iterations as f64)).0,
                paper_mcc: paper_mcc(m),
            })
        })
        .collect()
}

fn overtakes(runs: &[MethodRun], summary: &[SummaryRow]) -> Vec<Overtake> {
    let mut out = Vec::new();
    for a in summary.iter().filter(|s| s.family == Family::Amortised) {
        for p in ["fista", "exp-adam", "sae+fista"] {
            let reached: Vec<f64> = runs
                .iter()
                .filter(|r| r.method == p)
                .filter_map(|r| {
                    // Compare within the seed: the amortised run on the same data.
                    let level = runs
                        .iter()
                        .find(|q| q.method == a.method && q.seed == r.seed)?
                        .test
                        .code_mcc;
                    flops_to_reach(&r.curve_test, level)
                })
                .collect();
            out.push(Overtake {
                amortised: a.method.clone(),
                amortised_mcc: a.test_mcc.0,
                amortised_total_flops: a.train_flops + a.inference_flops,
                per_sample: p.to_string(),
                per_sample_flops: (!reached.is_empty()).then(|| mean_std(&reached).0),
                seeds_reached: reached.len(),
            });
        }
    }
    out
}

fn sci(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else {
        format!("{v:.2e}")
    }
}

fn pm((m, s): (f64, f64)) -> String {
    format!("{m:.3} ± {s:.3}")
}

impl KnownDictionaryReport {
    /// The Markdown report: setup, the summary table with the paper's numbers, and the overtake table.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut s = String::new();
        s.push_str("# Known-dictionary study\n\n");
        s.push_str(&format!(
            "N={} latents, M={} dims, K={} active; {} train / {} validation / {} test samples; {} seeds (data seeds {}…{}, model seed = data seed + 42); {} full-batch Adam steps (lr {}), λ={} in the paper's loss `mean((x−x̂)²) + λ·mean|z|`. sparse-infer {}; wall time {:.0} s.\n\n",
            c.n_latents, c.dim, c.k, c.n_train, c.n_val, c.n_test, c.seeds, c.base_seed, c.base_seed + c.seeds as u64 - 1,
            c.train_steps, c.lr, c.lambda, self.version, self.wall_seconds
        ));
        s.push_str(&format!("Code MCC on the test split (mean ± std over seeds). *Selected* is the test MCC at the training step with the best validation MCC. FLOPs: training, and inference on the {}-sample test split (conventions in `sparse_core::flops`); *iterations* of the final inference (1 for one pass).\n\n", c.n_test));
        s.push_str("| method | family | hyperparameters (seed 0) | code MCC (final) | code MCC (selected on val) | paper | support F1 | L0 | recon. MSE | train FLOPs | inference FLOPs | iterations |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for r in &self.summary {
            let hyper = self
                .runs
                .iter()
                .find(|x| x.method == r.method)
                .map(|x| {
                    x.hyperparameters
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {:.3} | {:.2} | {:.2e} | {} | {} | {:.0} |\n",
                r.method,
                serde_json::to_value(r.family)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
                hyper,
                pm(r.test_mcc),
                r.selected_test_mcc.map_or("–".into(), pm),
                r.paper_mcc.map_or("–".into(), |p| format!("{p:.3}")),
                r.support_f1.0,
                r.l0,
                r.reconstruction_mse,
                sci(r.train_flops),
                sci(r.inference_flops),
                r.iterations,
            ));
        }
        s.push_str("\n## Warm start versus cold start\n\n");
        s.push_str("The reference code's \"SAE+ITO init\" re-initialised the codes at exp(−10), i.e. it ran the cold start. Here the solver starts from the SAE's codes. Iterations to come within 0.005 of the cold start's final test MCC (same seed; mean over the seeds that do):\n\n| solver | cold: final MCC | cold: iterations to level | warm (from SAE): final MCC | warm: iterations to level |\n|---|---|---|---|---|\n");
        for (cold, warm) in [("fista", "sae+fista"), ("exp-adam", "sae+exp-adam")] {
            let mut rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for c in self.runs.iter().filter(|r| r.method == cold) {
                let Some(w) = self
                    .runs
                    .iter()
                    .find(|r| r.method == warm && r.seed == c.seed)
                else {
                    continue;
                };
                let level = c.test.code_mcc - 0.005;
                let reach = |curve: &[CurvePoint]| {
                    curve.iter().find(|p| p.mcc >= level).map(|p| p.step as f64)
                };
                rows.0.push(c.test.code_mcc);
                rows.2.push(w.test.code_mcc);
                rows.1.extend(reach(&c.curve_test));
                rows.3.extend(reach(&w.curve_test));
            }
            let seeds = rows.0.len();
            let it = |v: &[f64]| {
                if v.is_empty() {
                    format!("never (0/{seeds} seeds)")
                } else {
                    format!("{:.0} ({}/{seeds} seeds)", mean_std(v).0, v.len())
                }
            };
            s.push_str(&format!(
                "| {cold} | {} | {} | {} | {} |\n",
                pm(mean_std(&rows.0)),
                it(&rows.1),
                pm(mean_std(&rows.2)),
                it(&rows.3)
            ));
        }
        s.push_str("\n## When per-sample inference overtakes each amortised encoder\n\n");
        s.push_str("FLOPs at which the per-sample method's test MCC first reaches the amortised encoder's final test MCC (same seed; mean over the seeds where it does), against the amortised encoder's total FLOPs (training + test inference).\n\n");
        s.push_str("| amortised | its MCC | its total FLOPs | per-sample method | FLOPs to match | seeds matched | compute ratio |\n|---|---|---|---|---|---|---|\n");
        for o in &self.overtakes {
            s.push_str(&format!(
                "| {} | {:.3} | {} | {} | {} | {}/{} | {} |\n",
                o.amortised,
                o.amortised_mcc,
                sci(o.amortised_total_flops),
                o.per_sample,
                o.per_sample_flops.map_or("never".into(), sci),
                o.seeds_reached,
                self.config.seeds,
                o.per_sample_flops.map_or("–".into(), |f| format!(
                    "{:.1e}×",
                    f / o.amortised_total_flops
                )),
            ));
        }
        s
    }

    /// Writes `results.json`, `table.md` and `mcc_vs_flops.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_vec_pretty(self)?;
        sparse_core::io::write_atomic(&dir.join("results.json"), &json)?;
        sparse_core::io::write_atomic(&dir.join("table.md"), self.markdown().as_bytes())?;
        let series: Vec<Series> = self
            .summary
            .iter()
            .map(|r| {
                let curves: Vec<&[CurvePoint]> = self
                    .runs
                    .iter()
                    .filter(|x| x.method == r.method)
                    .map(|x| x.curve_test.as_slice())
                    .collect();
                let points = match curves.as_slice() {
                    // Single-pass methods: the mean point.
                    [first, ..] if first.len() == 1 => {
                        let n = curves.len() as f64;
                        vec![(
                            curves.iter().map(|c| c[0].flops).sum::<f64>() / n,
                            curves.iter().map(|c| c[0].mcc).sum::<f64>() / n,
                        )]
                    }
                    _ => mean_curve(&curves, 80),
                };
                Series {
                    label: r.method.clone(),
                    points,
                }
            })
            .filter(|s| !s.points.is_empty())
            .collect();
        line_chart_svg(
            &dir.join("mcc_vs_flops.svg"),
            &FigureSpec {
                title: &format!(
                    "Known dictionary: code MCC vs FLOPs (N={}, M={}, K={})",
                    self.config.n_latents, self.config.dim, self.config.k
                ),
                x_label: "cumulative FLOPs (training + test inference)",
                y_label: "code MCC (test)",
                log_x: true,
                y_range: (0.0, 1.0),
            },
            &series,
        )
    }
}

crate::study!(KnownDictionaryConfig, KnownDictionaryReport, "known-dictionary", run, seeds: |c, s| { c.seeds = s; Ok(()) });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_two_threads_give_the_same_numbers() {
        let config = KnownDictionaryConfig {
            n_train: 64,
            n_val: 64,
            n_test: 64,
            seeds: 1,
            train_steps: 200,
            eval_points: 5,
            fista_max_iter: 200,
            exp_adam_iter: 200,
            ..KnownDictionaryConfig::quick()
        };
        let run_on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut report = pool.install(|| run(&config, &crate::NoProgress)).unwrap();
            report.wall_seconds = 0.0;
            report.runs.iter_mut().for_each(|r| r.wall_seconds = 0.0);
            serde_json::to_string(&report).unwrap()
        };
        let one = run_on(1);
        assert_eq!(one, run_on(2));
        for method in ["sae", "mlp-32", "fista", "exp-adam", "omp", "sae+fista"] {
            assert!(one.contains(&format!("\"{method}\"")), "{method} missing");
        }
    }

    #[test]
    fn eval_steps_are_increasing_and_cover_both_ends() {
        let s = eval_steps(20_000, 60);
        assert_eq!(s[0], 0);
        assert_eq!(*s.last().unwrap(), 20_000);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.len() > 40);
        assert_eq!(eval_steps(3, 60), vec![0, 1, 2, 3]);
    }
}
