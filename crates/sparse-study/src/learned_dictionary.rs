//! The learned-dictionary study (paper-spec §7, "Unknown D"): the true
//! dictionary is hidden and every method learns its own. Reported per method:
//! code MCC on held-out data, dictionary MCC (the paper's Pearson variant and
//! plain cosine), reconstruction (MSE and explained variance) next to them so
//! that an encoder that reconstructs well with wrong features cannot hide, and
//! training and inference FLOPs.
//!
//! Model selection uses validation only: each run is evaluated at log-spaced
//! steps, and the reported test numbers are those of the step with the best
//! validation code MCC (sparse coding's λ is also chosen on validation).

use crate::curve::CurvePoint;
use crate::figure::{line_chart_svg, FigureSpec, Series};
use crate::{f64_of, mean_std, Progress};
use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sparse_core::data::{SyntheticConfig, SyntheticData};
use sparse_core::dictionary::autoencoder::{Autoencoder, AutoencoderConfig};
use sparse_core::dictionary::joint_adam::{JointAdam, JointAdamConfig};
use sparse_core::dictionary::jumprelu::{JumpReluConfig, JumpReluSae};
use sparse_core::dictionary::matryoshka::{MatryoshkaConfig, MatryoshkaSae};
use sparse_core::dictionary::mp_sae::{MpSae, MpSaeConfig};
use sparse_core::dictionary::sparse_coding::{DictionaryUpdate, SparseCoding, SparseCodingConfig};
use sparse_core::dictionary::topk::{TopKConfig, TopKSae};
use sparse_core::dictionary::DictionaryLearner;
use sparse_core::encoders::fista::{Fista, FistaConfig};
use sparse_core::metrics::{code_mcc, dictionary_cosine, dictionary_mcc, reconstruction_report};
use sparse_core::optim::AdamConfig;
use sparse_core::Matrix;
use std::path::Path;
use std::time::Instant;

/// Everything that defines the study. Deserialises from partial TOML.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LearnedDictionaryConfig {
    /// True features `N` (and learned atoms).
    pub n_latents: usize,
    /// Observed dimension `M`.
    pub dim: usize,
    /// Active features per sample `K`.
    pub k: usize,
    /// Training samples (full batch).
    pub n_train: usize,
    /// Validation samples.
    pub n_val: usize,
    /// Test samples.
    pub n_test: usize,
    /// Seeds; seed `i` uses data seed `base_seed + i`, model seed `+ 42`.
    pub seeds: usize,
    /// First data seed (the reference's unknown-D seed is 20240926).
    pub base_seed: u64,
    /// Full-batch Adam steps of the autoencoders (paper: 40,000).
    pub autoencoder_steps: usize,
    /// λ of the paper's loss for the autoencoders.
    pub lambda: f32,
    /// Adam learning rate of the autoencoders.
    pub lr: f32,
    /// MLP encoder widths.
    pub mlp_widths: Vec<usize>,
    /// k of the TopK and BatchTopK SAEs (the true K by default).
    pub topk_k: usize,
    /// L0 penalty weights of the JumpReLU SAE, chosen on validation code MCC
    /// (bandwidth 0.05; thresholds initialised from the data so that the L0
    /// starts at `topk_k`, see [`JumpReluSae::init_thresholds_from_data`]).
    pub jumprelu_l0_coefficients: Vec<f32>,
    /// Alternating steps of sparse coding.
    pub sparse_coding_steps: usize,
    /// FISTA iterations per sparse-coding step.
    pub sparse_coding_fista_iters: usize,
    /// Lasso λ grid for sparse coding, chosen on validation.
    pub sparse_coding_lambdas: Vec<f32>,
    /// Steps of the paper's joint Adam on exp-parametrised codes and dictionary
    /// (paper: 40,000; 0 leaves the method out). Evaluated once, at the end,
    /// with the paper's test-time inference (10,000 Adam steps per split).
    pub joint_adam_steps: usize,
    /// Number of log-spaced evaluation points per run.
    pub eval_points: usize,
}

impl Default for LearnedDictionaryConfig {
    fn default() -> Self {
        LearnedDictionaryConfig {
            n_latents: 16,
            dim: 8,
            k: 3,
            n_train: 1024,
            n_val: 1024,
            n_test: 1024,
            seeds: 5,
            base_seed: 20_240_926,
            autoencoder_steps: 40_000,
            lambda: 0.01,
            lr: 1e-3,
            mlp_widths: vec![32],
            topk_k: 3,
            jumprelu_l0_coefficients: vec![0.01, 0.03, 0.1],
            sparse_coding_steps: 200,
            sparse_coding_fista_iters: 50,
            sparse_coding_lambdas: vec![0.01, 0.03, 0.1],
            joint_adam_steps: 40_000,
            eval_points: 30,
        }
    }
}

impl LearnedDictionaryConfig {
    /// A configuration that runs in seconds (tests, smoke runs).
    pub fn quick() -> Self {
        LearnedDictionaryConfig {
            n_train: 512,
            n_val: 256,
            n_test: 256,
            seeds: 2,
            autoencoder_steps: 2_000,
            sparse_coding_steps: 40,
            sparse_coding_lambdas: vec![0.03, 0.1],
            joint_adam_steps: 500,
            eval_points: 12,
            ..Default::default()
        }
    }

    /// Checks sizes and grids.
    pub fn validate(&self) -> anyhow::Result<()> {
        SyntheticConfig::paper(self.n_latents, self.dim, self.k, self.base_seed).validate()?;
        anyhow::ensure!(
            self.seeds >= 1 && self.eval_points >= 2,
            "seeds ≥ 1 and eval_points ≥ 2 required"
        );
        anyhow::ensure!(
            self.autoencoder_steps >= 1 && self.sparse_coding_steps >= 1,
            "step counts must be ≥ 1"
        );
        anyhow::ensure!(
            !self.sparse_coding_lambdas.is_empty() && !self.jumprelu_l0_coefficients.is_empty(),
            "sparse_coding_lambdas and jumprelu_l0_coefficients must not be empty"
        );
        anyhow::ensure!(
            self.n_train >= 2 && self.n_val >= 2 && self.n_test >= 2,
            "every split needs ≥ 2 samples"
        );
        Ok(())
    }
}

/// One method on one seed, at the step chosen on validation.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LearnedRun {
    /// Method name.
    pub method: String,
    /// Data seed.
    pub seed: u64,
    /// Step (or alternating step) chosen on validation.
    pub selected_step: usize,
    /// Hyperparameter chosen on validation (sparse coding's λ, the JumpReLU's L0 weight), if any.
    pub selected_lambda: Option<f64>,
    /// Test code MCC.
    pub code_mcc: f64,
    /// Dictionary MCC, Pearson on atoms (the paper's).
    pub dictionary_mcc: f64,
    /// Dictionary MCC, plain |cosine| (SynthSAEBench's).
    pub dictionary_cosine: f64,
    /// Test reconstruction MSE with the method's own dictionary.
    pub reconstruction_mse: f64,
    /// Test explained variance (about the mean).
    pub explained_variance: f64,
    /// Training FLOPs up to the selected step.
    pub train_flops: f64,
    /// Inference FLOPs on the test split.
    pub inference_flops: f64,
    /// Validation code MCC along training.
    pub curve_val: Vec<CurvePoint>,
    /// Wall-clock seconds.
    pub wall_seconds: f64,
}

/// The paper's unknown-D numbers (code MCC, dictionary MCC), paper-spec §7.
fn paper_numbers(method: &str) -> Option<(f64, f64)> {
    match method {
        "sae" => Some((0.566, 0.745)),
        "sae+fista" => Some((0.583, 0.745)),
        "mlp-32" => Some((0.623, 0.791)),
        "mlp-256" => Some((0.643, 0.851)),
        "sc-mod" | "sc-adam" | "sc-joint-adam" => Some((0.691, 0.837)),
        _ => None,
    }
}

/// The whole study's output.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LearnedDictionaryReport {
    /// Configuration.
    pub config: LearnedDictionaryConfig,
    /// sparse-infer version.
    pub version: String,
    /// Every method on every seed.
    pub runs: Vec<LearnedRun>,
    /// Total wall-clock seconds.
    pub wall_seconds: f64,
}

/// What one evaluation of a learner yields on a split.
struct Snapshot {
    code_mcc: f64,
    codes: Matrix,
    inference_flops: f64,
}

/// The evaluation steps: log-spaced in `[1, last]`.
fn eval_steps(last: usize, points: usize) -> Vec<usize> {
    let mut steps: Vec<usize> = (0..points)
        .map(|i| ((last as f64).powf(i as f64 / (points - 1) as f64)).round() as usize)
        .collect();
    steps.dedup();
    steps
}

/// Runs the study; seeds in parallel, each deterministic.
pub fn run(
    config: &LearnedDictionaryConfig,
    progress: &dyn Progress,
) -> anyhow::Result<LearnedDictionaryReport> {
    config.validate()?;
    let started = Instant::now();
    // sae, the MLPs, topk, batchtopk, jumprelu, matryoshka, mp-sae, sae+fista, sc-mod, sc-adam, sc-joint-adam.
    let methods =
        1 + config.mlp_widths.len() + 5 + 1 + 2 + usize::from(config.joint_adam_steps > 0);
    progress.start(config.seeds * methods);
    let per_seed: Vec<anyhow::Result<Vec<LearnedRun>>> = (0..config.seeds)
        .into_par_iter()
        .map(|i| run_seed(config, i, progress))
        .collect();
    let mut runs = Vec::new();
    for r in per_seed {
        runs.extend(r?);
    }
    Ok(LearnedDictionaryReport {
        config: config.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        runs,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

fn evaluate(
    split: &sparse_core::data::Split,
    encode: &dyn Fn(&Matrix) -> anyhow::Result<(Matrix, f64)>,
) -> anyhow::Result<Snapshot> {
    let (codes, inference_flops) = encode(&split.x)?;
    Ok(Snapshot {
        code_mcc: code_mcc(&split.z, &codes)?,
        codes,
        inference_flops,
    })
}

/// Fills the test-side numbers of a run from the selected model's dictionary and test codes.
fn finish(
    run: &mut LearnedRun,
    data: &SyntheticData,
    dictionary: &Matrix,
    test: &Snapshot,
) -> anyhow::Result<()> {
    run.code_mcc = test.code_mcc;
    run.dictionary_mcc = dictionary_mcc(&data.dictionary, dictionary)?;
    run.dictionary_cosine = dictionary_cosine(&data.dictionary, dictionary)?;
    let rec = reconstruction_report(&data.test.x, &test.codes, dictionary)?;
    run.reconstruction_mse = rec.mse;
    run.explained_variance = rec.explained_variance;
    run.inference_flops = test.inference_flops;
    Ok(())
}

fn blank(method: &str, seed: u64) -> LearnedRun {
    LearnedRun {
        method: method.into(),
        seed,
        selected_step: 0,
        selected_lambda: None,
        code_mcc: f64::NAN,
        dictionary_mcc: f64::NAN,
        dictionary_cosine: f64::NAN,
        reconstruction_mse: f64::NAN,
        explained_variance: f64::NAN,
        train_flops: 0.0,
        inference_flops: 0.0,
        curve_val: Vec::new(),
        wall_seconds: 0.0,
    }
}

/// Trains `model` full batch for `config.autoencoder_steps` steps on `data`
/// (generated from `seed`), evaluating on validation at `config.eval_points`
/// log-spaced steps; returns the run (test numbers of the best validation step)
/// and that model. The study runs every autoencoder through it; so does a sweep.
pub fn train_learner<L: DictionaryLearner + Clone>(
    config: &LearnedDictionaryConfig,
    (data, seed): (&SyntheticData, u64),
    name: &str,
    mut model: L,
    progress: &dyn Progress,
) -> anyhow::Result<(LearnedRun, L)> {
    let started = Instant::now();
    let mut run = blank(name, seed);
    let checkpoints = eval_steps(config.autoencoder_steps, config.eval_points);
    let (mut flops, mut next) = (0.0, 0);
    let mut best: Option<(f64, usize, f64, L)> = None;
    for step in 1..=config.autoencoder_steps {
        flops += model.train_step_flops(config.n_train);
        let loss = model.train_step(&data.train.x)?;
        anyhow::ensure!(
            loss.is_finite(),
            "{name} (seed {seed}): loss became {loss} at step {step}"
        );
        if checkpoints.get(next) == Some(&step) {
            next += 1;
            let val = evaluate(&data.val, &|x| {
                Ok((model.encode(x)?, model.encode_flops(x.rows())))
            })?;
            run.curve_val.push(CurvePoint {
                step,
                flops: flops + val.inference_flops,
                mcc: val.code_mcc,
            });
            if best.as_ref().is_none_or(|b| val.code_mcc > b.0) {
                best = Some((val.code_mcc, step, flops, model.clone()));
            }
        }
    }
    let (_, step, train_flops, chosen) = best.context("no evaluation step")?;
    run.selected_step = step;
    run.train_flops = train_flops;
    let test = evaluate(&data.test, &|x| {
        Ok((chosen.encode(x)?, chosen.encode_flops(x.rows())))
    })?;
    finish(&mut run, data, chosen.dictionary(), &test)?;
    run.wall_seconds = started.elapsed().as_secs_f64();
    progress.finished(&format!("{name} (seed {seed})"));
    Ok((run, chosen))
}

/// Sparse coding by alternating minimisation (`config.sparse_coding_steps`
/// steps of `config.sparse_coding_fista_iters` FISTA iterations and a
/// dictionary `update`) for every λ in `lambdas`; λ and the step are chosen on
/// validation, and the run reports the test numbers of that choice.
pub fn run_sparse_coding(
    config: &LearnedDictionaryConfig,
    (data, seed): (&SyntheticData, u64),
    (name, update): (&str, DictionaryUpdate),
    lambdas: &[f32],
    progress: &dyn Progress,
) -> anyhow::Result<LearnedRun> {
    let started = Instant::now();
    let mut best_run: Option<(f64, LearnedRun, SparseCoding)> = None;
    for &lambda in lambdas {
        let mut sc = SparseCoding::new(SparseCodingConfig {
            lambda,
            fista_iters: config.sparse_coding_fista_iters,
            update,
            ..SparseCodingConfig::new(config.n_latents, config.dim, seed + 42)
        })?;
        let mut run = blank(name, seed);
        run.selected_lambda = Some(f64_of(lambda));
        let checkpoints = eval_steps(config.sparse_coding_steps, config.eval_points);
        let (mut flops, mut next) = (0.0, 0);
        let mut best: Option<(f64, usize, f64, SparseCoding)> = None;
        for step in 1..=config.sparse_coding_steps {
            sc.fit_step(&data.train.x)?;
            flops += sc.last_step_flops();
            if checkpoints.get(next) == Some(&step) {
                next += 1;
                let enc = |x: &Matrix| {
                    sc.encode(x)
                        .map(|e| (e.codes, e.flops))
                        .map_err(anyhow::Error::from)
                };
                let val = evaluate(&data.val, &enc)?;
                run.curve_val.push(CurvePoint {
                    step,
                    flops: flops + val.inference_flops,
                    mcc: val.code_mcc,
                });
                if best.as_ref().is_none_or(|b| val.code_mcc > b.0) {
                    best = Some((val.code_mcc, step, flops, sc.clone()));
                }
            }
        }
        let (val_mcc, step, train_flops, chosen) = best.context("no evaluation step")?;
        run.selected_step = step;
        run.train_flops = train_flops;
        if best_run.as_ref().is_none_or(|b| val_mcc > b.0) {
            best_run = Some((val_mcc, run, chosen));
        }
    }
    let (_, mut run, chosen) = best_run.context("no λ evaluated")?;
    let enc = |x: &Matrix| {
        chosen
            .encode(x)
            .map(|e| (e.codes, e.flops))
            .map_err(anyhow::Error::from)
    };
    let test = evaluate(&data.test, &enc)?;
    finish(&mut run, data, chosen.dictionary(), &test)?;
    run.wall_seconds = started.elapsed().as_secs_f64();
    progress.finished(&format!("{name} (seed {seed})"));
    Ok(run)
}

fn run_seed(
    config: &LearnedDictionaryConfig,
    index: usize,
    progress: &dyn Progress,
) -> anyhow::Result<Vec<LearnedRun>> {
    let seed = config.base_seed + index as u64;
    let data = SyntheticConfig::paper(config.n_latents, config.dim, config.k, seed).generate(
        config.n_train,
        config.n_val,
        config.n_test,
    )?;
    let model_seed = seed + 42;
    let mut runs = Vec::new();
    let adam = AdamConfig::with_lr(config.lr);

    // Autoencoders: train, keep the model at the best validation step.
    let sae_config = AutoencoderConfig {
        lambda: config.lambda,
        adam,
        ..AutoencoderConfig::paper_sae(config.n_latents, config.dim, model_seed)
    };
    let (sae_run, sae) = train_learner(
        config,
        (&data, seed),
        "sae",
        Autoencoder::new(sae_config)?,
        progress,
    )?;
    runs.push(sae_run);
    for &h in &config.mlp_widths {
        let mlp_config = AutoencoderConfig {
            lambda: config.lambda,
            adam,
            ..AutoencoderConfig::paper_mlp(config.n_latents, config.dim, h, model_seed)
        };
        runs.push(
            train_learner(
                config,
                (&data, seed),
                &format!("mlp-{h}"),
                Autoencoder::new(mlp_config)?,
                progress,
            )?
            .0,
        );
    }
    let k = config.topk_k;
    let topk = TopKConfig {
        adam,
        ..TopKConfig::topk(config.n_latents, config.dim, k, model_seed)
    };
    runs.push(train_learner(config, (&data, seed), "topk", TopKSae::new(topk)?, progress)?.0);
    let batch = TopKConfig {
        adam,
        ..TopKConfig::batch_topk(config.n_latents, config.dim, k, model_seed)
    };
    runs.push(
        train_learner(
            config,
            (&data, seed),
            "batchtopk",
            TopKSae::new(batch)?,
            progress,
        )?
        .0,
    );
    // JumpReLU: one run per L0 weight, the weight (and step) of best validation code MCC kept.
    let mut jump_best: Option<(f64, LearnedRun)> = None;
    for &l0_coefficient in &config.jumprelu_l0_coefficients {
        let jump = JumpReluConfig {
            threshold: 0.05,
            bandwidth: 0.05,
            l0_coefficient,
            adam,
            init_l0: Some(k as f32),
            ..JumpReluConfig::new(config.n_latents, config.dim, model_seed)
        };
        let (mut run, _) = train_learner(
            config,
            (&data, seed),
            "jumprelu",
            JumpReluSae::new(jump)?,
            &crate::NoProgress,
        )?;
        let val = run
            .curve_val
            .iter()
            .map(|p| p.mcc)
            .fold(f64::NEG_INFINITY, f64::max);
        run.selected_lambda = Some(f64_of(l0_coefficient));
        if jump_best.as_ref().is_none_or(|b| val > b.0) {
            jump_best = Some((val, run));
        }
    }
    runs.push(jump_best.context("empty jumprelu_l0_coefficients")?.1);
    progress.finished(&format!("jumprelu (seed {seed})"));
    // Matryoshka BatchTopK with nested prefixes of a quarter, a half and all latents.
    let n = config.n_latents;
    let mut widths = vec![(n / 4).max(1), (n / 2).max(1), n];
    widths.dedup();
    let mut matryoshka = MatryoshkaConfig::new(n, config.dim, k, widths, model_seed);
    matryoshka.sae.adam = adam;
    runs.push(
        train_learner(
            config,
            (&data, seed),
            "matryoshka",
            MatryoshkaSae::new(matryoshka)?,
            progress,
        )?
        .0,
    );
    let mp = MpSaeConfig {
        adam,
        ..MpSaeConfig::new(n, config.dim, k, model_seed)
    };
    runs.push(train_learner(config, (&data, seed), "mp-sae", MpSae::new(mp)?, progress)?.0);
    let best_sae = Some(sae);

    // SAE + FISTA on the SAE's own learned decoder, warm-started from its codes.
    if let Some(sae) = &best_sae {
        let started = Instant::now();
        let sae_run = runs
            .iter()
            .find(|r| r.method == "sae")
            .expect("sae ran")
            .clone();
        let mut run = blank("sae+fista", seed);
        let mut best = (f64::NEG_INFINITY, config.sparse_coding_lambdas[0]);
        let fista = |lambda: f32| {
            Fista::new(FistaConfig {
                lambda,
                max_iter: 1000,
                tol: 1e-6,
                nonnegative: true,
                accelerated: true,
            })
        };
        let ito = |lambda: f32, x: &Matrix| -> anyhow::Result<(Matrix, f64)> {
            let start = sae.encode(x)?;
            let enc = fista(lambda)?.solve(x, sae.dictionary(), Some(&start), None)?;
            Ok((enc.codes, enc.flops + sae.encode_flops(x.rows())))
        };
        for &lambda in &config.sparse_coding_lambdas {
            let val = evaluate(&data.val, &|x| ito(lambda, x))?;
            if val.code_mcc > best.0 {
                best = (val.code_mcc, lambda);
            }
        }
        run.selected_step = sae_run.selected_step;
        run.selected_lambda = Some(f64_of(best.1));
        run.train_flops = sae_run.train_flops;
        let test = evaluate(&data.test, &|x| ito(best.1, x))?;
        finish(&mut run, &data, sae.dictionary(), &test)?;
        run.wall_seconds = started.elapsed().as_secs_f64();
        progress.finished(&format!("sae+fista (seed {seed})"));
        runs.push(run);
    }

    // Sparse coding by alternating minimisation; λ and the step chosen on validation.
    for (name, update) in [
        ("sc-mod", DictionaryUpdate::Mod),
        ("sc-adam", DictionaryUpdate::Adam { lr: 0.01, steps: 5 }),
    ] {
        runs.push(run_sparse_coding(
            config,
            (&data, seed),
            (name, update),
            &config.sparse_coding_lambdas,
            progress,
        )?);
    }
    // The paper's sparse coding: joint Adam on exp(U) and D; evaluated at the end (no selection).
    if config.joint_adam_steps > 0 {
        let started = Instant::now();
        let mut joint = JointAdam::new(
            JointAdamConfig {
                lambda: config.lambda,
                ..JointAdamConfig::paper(config.n_latents, config.dim, model_seed)
            },
            config.n_train,
        )?;
        for step in 1..=config.joint_adam_steps {
            let loss = joint.train_step(&data.train.x)?;
            anyhow::ensure!(
                loss.is_finite(),
                "sc-joint-adam (seed {seed}): loss became {loss} at step {step}"
            );
        }
        let mut run = blank("sc-joint-adam", seed);
        run.selected_step = config.joint_adam_steps;
        run.train_flops = joint.train_step_flops() * config.joint_adam_steps as f64;
        let enc = |x: &Matrix| {
            joint
                .encode(x)
                .map(|e| (e.codes, e.flops))
                .map_err(anyhow::Error::from)
        };
        let val = evaluate(&data.val, &enc)?;
        run.curve_val.push(CurvePoint {
            step: config.joint_adam_steps,
            flops: run.train_flops + val.inference_flops,
            mcc: val.code_mcc,
        });
        let test = evaluate(&data.test, &enc)?;
        finish(&mut run, &data, joint.dictionary(), &test)?;
        run.wall_seconds = started.elapsed().as_secs_f64();
        progress.finished(&format!("sc-joint-adam (seed {seed})"));
        runs.push(run);
    }
    Ok(runs)
}

impl LearnedDictionaryReport {
    fn methods(&self) -> Vec<String> {
        let mut m: Vec<String> = Vec::new();
        for r in &self.runs {
            if !m.contains(&r.method) {
                m.push(r.method.clone());
            }
        }
        m
    }

    /// Mean ± std of `f` over the seeds of `method`.
    fn stat(&self, method: &str, f: impl Fn(&LearnedRun) -> f64) -> (f64, f64) {
        let v: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.method == method)
            .map(f)
            .collect();
        mean_std(&v)
    }

    /// The Markdown table with the paper's numbers beside ours.
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let mut s = format!(
            "# Learned-dictionary study\n\nN={}, M={}, K={}; {} train / {} validation / {} test samples; {} seeds (data seeds {}…{}, model seed + 42); autoencoders: {} full-batch Adam steps (lr {}, λ={} in the paper's loss); sparse coding: {} alternating steps of FISTA ({} iterations) + dictionary update, λ from {:?} chosen on validation; JumpReLU: thresholds started at L0 = {} from the data, L0 weight from {:?} chosen on validation. Test numbers at the step with the best validation code MCC. sparse-infer {}; wall time {:.0} s.\n\n",
            c.n_latents, c.dim, c.k, c.n_train, c.n_val, c.n_test, c.seeds, c.base_seed, c.base_seed + c.seeds as u64 - 1,
            c.autoencoder_steps, c.lr, c.lambda, c.sparse_coding_steps, c.sparse_coding_fista_iters, c.sparse_coding_lambdas, c.topk_k, c.jumprelu_l0_coefficients, self.version, self.wall_seconds
        );
        s.push_str("| method | code MCC | dict. MCC (Pearson) | dict. cosine | paper code / dict MCC | recon. MSE | explained var. | train FLOPs | inference FLOPs |\n|---|---|---|---|---|---|---|---|---|\n");
        let pm = |(m, sd): (f64, f64)| format!("{m:.3} ± {sd:.3}");
        for m in self.methods() {
            s.push_str(&format!(
                "| {m} | {} | {} | {} | {} | {:.2e} | {:.3} | {:.2e} | {:.2e} |\n",
                pm(self.stat(&m, |r| r.code_mcc)),
                pm(self.stat(&m, |r| r.dictionary_mcc)),
                pm(self.stat(&m, |r| r.dictionary_cosine)),
                paper_numbers(&m).map_or("–".into(), |(a, b)| format!("{a:.3} / {b:.3}")),
                self.stat(&m, |r| r.reconstruction_mse).0,
                self.stat(&m, |r| r.explained_variance).0,
                self.stat(&m, |r| r.train_flops).0,
                self.stat(&m, |r| r.inference_flops).0,
            ));
        }
        s
    }

    /// Writes `results.json`, `table.md` and three figures into `dir`: code MCC vs
    /// total FLOPs, dictionary MCC vs training FLOPs, validation MCC along training.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        sparse_core::io::write_atomic(
            &dir.join("results.json"),
            &serde_json::to_vec_pretty(self)?,
        )?;
        sparse_core::io::write_atomic(&dir.join("table.md"), self.markdown().as_bytes())?;
        let series: Vec<Series> = self
            .methods()
            .into_iter()
            .filter_map(|m| {
                let curves: Vec<&[CurvePoint]> = self
                    .runs
                    .iter()
                    .filter(|r| r.method == m && !r.curve_val.is_empty())
                    .map(|r| r.curve_val.as_slice())
                    .collect();
                let points = crate::curve::mean_curve(&curves, 60);
                (points.len() >= 2).then_some(Series { label: m, points })
            })
            .collect();
        // One marker per method: mean over seeds.
        let scatter =
            |y: &dyn Fn(&LearnedRun) -> f64, x: &dyn Fn(&LearnedRun) -> f64| -> Vec<Series> {
                self.methods()
                    .into_iter()
                    .map(|m| Series {
                        points: vec![(self.stat(&m, x).0, self.stat(&m, y).0)],
                        label: m,
                    })
                    .collect()
            };
        line_chart_svg(
            &dir.join("code_mcc_vs_total_flops.svg"),
            &FigureSpec {
                title: "Learned dictionary: test code MCC vs total FLOPs",
                x_label: "training + test inference FLOPs",
                y_label: "code MCC (test)",
                log_x: true,
                y_range: (0.0, 1.0),
            },
            &scatter(&|r| r.code_mcc, &|r| r.train_flops + r.inference_flops),
        )?;
        line_chart_svg(
            &dir.join("dictionary_mcc_vs_train_flops.svg"),
            &FigureSpec {
                title: "Learned dictionary: dictionary MCC vs training FLOPs",
                x_label: "training FLOPs",
                y_label: "dictionary MCC (Pearson)",
                log_x: true,
                y_range: (0.0, 1.0),
            },
            &scatter(&|r| r.dictionary_mcc, &|r| r.train_flops),
        )?;
        line_chart_svg(
            &dir.join("val_mcc_vs_train_flops.svg"),
            &FigureSpec {
                title: "Learned dictionary: validation code MCC vs training FLOPs",
                x_label: "training FLOPs (+ validation inference)",
                y_label: "code MCC (validation)",
                log_x: true,
                y_range: (0.0, 1.0),
            },
            &series,
        )
    }
}

crate::study!(LearnedDictionaryConfig, LearnedDictionaryReport, "learned-dictionary", run, seeds: |c, s| { c.seeds = s; Ok(()) });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quick_study_learns_dictionaries_and_selects_on_validation() {
        let mut config = LearnedDictionaryConfig::quick();
        config.seeds = 1;
        let report = run(&config, &crate::NoProgress).unwrap();
        let get = |m: &str| report.runs.iter().find(|r| r.method == m).unwrap();
        for m in [
            "sae",
            "mlp-32",
            "topk",
            "batchtopk",
            "jumprelu",
            "matryoshka",
            "mp-sae",
            "sae+fista",
            "sc-mod",
            "sc-adam",
            "sc-joint-adam",
        ] {
            let r = get(m);
            assert!(
                r.code_mcc.is_finite() && r.dictionary_mcc.is_finite(),
                "{m}: {r:?}"
            );
            assert!(r.train_flops > 0.0 && r.inference_flops > 0.0, "{m}");
        }
        // Sparse coding recovers the dictionary far better than chance (a random
        // 16×8 dictionary scores ≈ 0.6 on this metric) and than the SAE.
        assert!(get("sc-mod").dictionary_mcc > 0.85, "{:?}", get("sc-mod"));
        assert!(get("sc-mod").dictionary_mcc > get("sae").dictionary_mcc + 0.1);
        assert!(get("sc-mod").code_mcc > get("sae").code_mcc);
        // Validation selection picked an evaluated step.
        let sae = get("sae");
        assert!(sae.curve_val.iter().any(|p| p.step == sae.selected_step));
        assert!(report.markdown().contains("| sc-mod |"));
    }
}
