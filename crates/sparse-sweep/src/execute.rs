//! Running runs: one spec through the study code, and a whole sweep in
//! parallel with results recorded in the store as they finish.

use crate::config::{DictionarySetting, MethodSpec, RunSpec};
use crate::store::{RunOutcome, Store};
use sparse_core::dictionary::autoencoder::{Autoencoder, AutoencoderConfig};
use sparse_core::dictionary::sparse_coding::DictionaryUpdate;
use sparse_core::dictionary::topk::{TopKConfig, TopKSae};
use sparse_core::optim::AdamConfig;
use sparse_study::known_dictionary::{self, KnownDictionaryConfig, KnownMethod};
use sparse_study::learned_dictionary::{self, LearnedDictionaryConfig};
use sparse_study::{NoProgress, Progress};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

/// Runs one spec with the studies' code (same training, selection on
/// validation and metrics as `reproduce`). Deterministic: the outcome depends
/// on the spec alone (apart from wall time).
pub fn run_one(spec: &RunSpec) -> anyhow::Result<RunOutcome> {
    let started = Instant::now();
    let d = &spec.data;
    let data = d.generate()?;
    let (code_mcc, dictionary_mcc, train_flops, inference_flops, mut json) = match d.dictionary {
        DictionarySetting::Known => {
            let mut config = KnownDictionaryConfig {
                n_latents: d.n_latents,
                dim: d.dim,
                k: d.k,
                n_train: d.samples,
                n_val: d.samples,
                n_test: d.samples,
                seeds: 1,
                base_seed: d.seed,
                eval_points: spec.eval_points,
                mlp_widths: Vec::new(),
                ..KnownDictionaryConfig::default()
            };
            let method = match spec.method {
                MethodSpec::Sae {
                    lambda,
                    lr,
                    steps,
                    bias,
                } => {
                    (config.lambda, config.lr, config.train_steps) =
                        (lambda as f32, lr as f32, steps);
                    KnownMethod::Sae { bias }
                }
                MethodSpec::Mlp {
                    width,
                    lambda,
                    lr,
                    steps,
                    bias,
                } => {
                    (config.lambda, config.mlp_lr, config.train_steps) =
                        (lambda as f32, lr as f32, steps);
                    KnownMethod::Mlp {
                        hidden: width,
                        bias,
                    }
                }
                MethodSpec::SparseCoding {
                    lambda,
                    fista_iters,
                    ..
                } => {
                    config.fista_max_iter = fista_iters;
                    config.exp_adam_iter = 1;
                    KnownMethod::Fista {
                        lambda: lambda as f32,
                    }
                }
                MethodSpec::Topk { .. } => {
                    anyhow::bail!("topk has no known-dictionary encoder")
                }
            };
            config.validate()?;
            let run = known_dictionary::run_method(&config, &data, d.seed, method, &NoProgress)?;
            (
                run.test.code_mcc,
                None,
                run.train_flops,
                run.inference_flops,
                serde_json::to_value(&run)?,
            )
        }
        DictionarySetting::Learned => {
            let mut config = LearnedDictionaryConfig {
                n_latents: d.n_latents,
                dim: d.dim,
                k: d.k,
                n_train: d.samples,
                n_val: d.samples,
                n_test: d.samples,
                seeds: 1,
                base_seed: d.seed,
                eval_points: spec.eval_points,
                mlp_widths: Vec::new(),
                joint_adam_steps: 0,
                ..LearnedDictionaryConfig::default()
            };
            let pair = (&data, d.seed);
            let model_seed = d.seed + 42;
            let run = match spec.method {
                MethodSpec::Sae {
                    lambda,
                    lr,
                    steps,
                    bias,
                } => {
                    config.autoencoder_steps = steps;
                    let model = Autoencoder::new(AutoencoderConfig {
                        lambda: lambda as f32,
                        adam: AdamConfig::with_lr(lr as f32),
                        encoder_bias: bias,
                        ..AutoencoderConfig::paper_sae(d.n_latents, d.dim, model_seed)
                    })?;
                    learned_dictionary::train_learner(&config, pair, "sae", model, &NoProgress)?.0
                }
                MethodSpec::Mlp {
                    width,
                    lambda,
                    lr,
                    steps,
                    bias,
                } => {
                    config.autoencoder_steps = steps;
                    let model = Autoencoder::new(AutoencoderConfig {
                        lambda: lambda as f32,
                        adam: AdamConfig::with_lr(lr as f32),
                        encoder_bias: bias,
                        ..AutoencoderConfig::paper_mlp(d.n_latents, d.dim, width, model_seed)
                    })?;
                    let name = format!("mlp-{width}");
                    learned_dictionary::train_learner(&config, pair, &name, model, &NoProgress)?.0
                }
                MethodSpec::Topk { k, lr, steps } => {
                    config.autoencoder_steps = steps;
                    let model = TopKSae::new(TopKConfig {
                        adam: AdamConfig::with_lr(lr as f32),
                        ..TopKConfig::topk(d.n_latents, d.dim, k, model_seed)
                    })?;
                    learned_dictionary::train_learner(&config, pair, "topk", model, &NoProgress)?.0
                }
                MethodSpec::SparseCoding {
                    lambda,
                    steps,
                    fista_iters,
                } => {
                    config.sparse_coding_steps = steps.unwrap_or(1);
                    config.sparse_coding_fista_iters = fista_iters;
                    learned_dictionary::run_sparse_coding(
                        &config,
                        pair,
                        ("sc-mod", DictionaryUpdate::Mod),
                        &[lambda as f32],
                        &NoProgress,
                    )?
                }
            };
            (
                run.code_mcc,
                Some(run.dictionary_mcc),
                run.train_flops,
                run.inference_flops,
                serde_json::to_value(&run)?,
            )
        }
    };
    // Wall time lives in its own column: the stored record is a pure function of the spec.
    if let Some(map) = json.as_object_mut() {
        map.remove("wall_seconds");
    }
    Ok(RunOutcome {
        code_mcc,
        dictionary_mcc,
        train_flops,
        inference_flops,
        result_json: serde_json::to_string(&json)?,
        wall_seconds: started.elapsed().as_secs_f64(),
    })
}

/// What [`run_sweep`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SweepSummary {
    /// Runs in this shard of the grid.
    pub total: usize,
    /// Runs found already done in the store (skipped).
    pub skipped: usize,
    /// Runs run and recorded now.
    pub completed: usize,
    /// Runs that failed: `(run label, error)`; not recorded, so a rerun retries them.
    pub failed: Vec<(String, String)>,
}

/// A short description of a run for progress and errors.
pub fn describe(spec: &RunSpec) -> String {
    let d = &spec.data;
    let method = serde_json::to_value(&spec.method)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    if k == "kind" {
                        v.as_str().unwrap_or("?").to_string()
                    } else {
                        format!("{k}={v}")
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    format!(
        "{}{} {method} N={} M={} K={} noise={} seed={}",
        d.preset.as_ref().map_or(String::new(), |p| format!("{p} ")),
        d.dictionary.as_str(),
        d.n_latents,
        d.dim,
        d.k,
        d.noise_std,
        d.seed
    )
}

/// Runs every spec not yet in `store` on `jobs` worker threads (each runs whole
/// runs, its nested linear algebra on `threads_per_job` threads so that the
/// machine is not oversubscribed) and records each as it finishes, one
/// transaction per run. Progress counts only the runs still to do.
pub fn run_sweep(
    sweep: &str,
    specs: Vec<RunSpec>,
    store: &mut Store,
    jobs: usize,
    threads_per_job: usize,
    progress: &dyn Progress,
) -> anyhow::Result<SweepSummary> {
    let done = store.done_keys()?;
    let total = specs.len();
    let todo: Vec<RunSpec> = specs
        .into_iter()
        .filter(|s| !done.contains(&s.key()))
        .collect();
    let mut summary = SweepSummary {
        total,
        skipped: total - todo.len(),
        ..SweepSummary::default()
    };
    progress.start(todo.len());
    if todo.is_empty() {
        return Ok(summary);
    }
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(usize, anyhow::Result<RunOutcome>)>();
    let jobs = jobs.clamp(1, todo.len());
    let mut store_error = None;
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            let tx = tx.clone();
            let (next, todo) = (&next, &todo);
            scope.spawn(move || {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads_per_job.max(1))
                    .build();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(spec) = todo.get(i) else { break };
                    let outcome = match &pool {
                        Ok(pool) => pool.install(|| run_one(spec)),
                        Err(e) => Err(anyhow::anyhow!("starting a thread pool: {e}")),
                    };
                    if tx.send((i, outcome)).is_err() {
                        break; // the writer stopped (store error): stop taking runs
                    }
                }
            });
        }
        drop(tx);
        // The writer: the only thread that touches the store.
        for (i, outcome) in rx {
            let spec = &todo[i];
            match outcome {
                Ok(outcome) => {
                    if let Err(e) = store.insert(sweep, spec, &outcome) {
                        store_error = Some(e);
                        // Make the workers stop after their current run.
                        next.store(todo.len(), Ordering::SeqCst);
                        break;
                    }
                    summary.completed += 1;
                }
                Err(e) => summary.failed.push((describe(spec), format!("{e:#}"))),
            }
            progress.finished(&describe(spec));
        }
    });
    if let Some(e) = store_error {
        return Err(e.context(format!("recording a run in {}", store.path().display())));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SweepConfig;

    /// Every method on both dictionary settings, with noise: valid metrics,
    /// a metric curve over training, and the same record when run twice.
    #[test]
    fn every_method_runs_deterministically_on_known_and_learned_dictionaries() {
        let specs = SweepConfig::from_toml(
            r#"
            name = "t"
            eval_points = 3
            [[data]]
            n_latents = [8]
            dim = [4]
            k = [2]
            samples = [48]
            noise_std = [0.05]
            seeds = [7]
            dictionary = ["known", "learned"]
            [[method]]
            kind = "sae"
            steps = [30]
            [[method]]
            kind = "mlp"
            width = [8]
            steps = [30]
            bias = [true]
            [[method]]
            kind = "topk"
            steps = [30]
            [[method]]
            kind = "sparse-coding"
            steps = [3]
            fista_iters = [10]
            "#,
        )
        .unwrap()
        .expand()
        .unwrap();
        // topk has no known-dictionary encoder: 3 known + 4 learned runs.
        assert_eq!(specs.len(), 7);
        for spec in &specs {
            let what = describe(spec);
            let a = run_one(spec).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert!((0.0..=1.0).contains(&a.code_mcc), "{what}: {a:?}");
            assert!(a.inference_flops > 0.0, "{what}");
            let record: serde_json::Value = serde_json::from_str(&a.result_json).unwrap();
            assert!(record.get("wall_seconds").is_none(), "{what}");
            assert!(
                record["curve_val"]
                    .as_array()
                    .is_some_and(|c| !c.is_empty()),
                "{what}: no metric curve"
            );
            match spec.data.dictionary {
                DictionarySetting::Known => assert_eq!(a.dictionary_mcc, None, "{what}"),
                DictionarySetting::Learned => {
                    assert!(a.dictionary_mcc.is_some_and(|d| d > 0.0), "{what}");
                    assert!(a.train_flops > 0.0, "{what}");
                }
            }
            let b = run_one(spec).unwrap();
            assert_eq!(
                (a.code_mcc, a.dictionary_mcc, a.train_flops, &a.result_json),
                (b.code_mcc, b.dictionary_mcc, b.train_flops, &b.result_json),
                "{what}: not deterministic"
            );
        }
    }

    /// A preset cell runs every learned-dictionary family on the realistic
    /// generator's data, deterministically, and differs from the paper cell
    /// of the same sizes.
    #[test]
    fn preset_cells_run_on_realistic_data() {
        let grid = |preset: &str| {
            format!(
                r#"
                name = "t"
                eval_points = 3
                [[data]]
                {preset}
                n_latents = [32]
                dim = [8]
                k = [2]
                samples = [64]
                seeds = [3]
                [[method]]
                kind = "sae"
                steps = [20]
                [[method]]
                kind = "topk"
                steps = [20]
                [[method]]
                kind = "sparse-coding"
                steps = [2]
                fista_iters = [10]
                "#
            )
        };
        let specs = SweepConfig::from_toml(&grid("preset = [\"ood-laptop\"]"))
            .unwrap()
            .expand()
            .unwrap();
        let paper = SweepConfig::from_toml(&grid("")).unwrap().expand().unwrap();
        assert_eq!((specs.len(), paper.len()), (3, 3));
        for spec in &specs {
            let what = describe(spec);
            assert!(what.starts_with("ood-laptop learned"), "{what}");
            let a = run_one(spec).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert!((0.0..=1.0).contains(&a.code_mcc), "{what}: {a:?}");
            assert!(a.dictionary_mcc.is_some_and(|d| d > 0.0), "{what}");
            assert_eq!(run_one(spec).unwrap().result_json, a.result_json, "{what}");
            let twin = paper
                .iter()
                .find(|p| p.method == spec.method)
                .expect("same method on paper data");
            assert_ne!(twin.key(), spec.key());
            assert_ne!(run_one(twin).unwrap().result_json, a.result_json, "{what}");
        }
    }
}
