//! The streaming trainer: one pass of [`ShuffledBatches`] over the train
//! split drives every model of the run (each gets the same batch, so the
//! reading cost is shared), with periodic atomic checkpoints and exact resume.

use crate::models::{self, BDecInit, ModelSpec};
use crate::normalize;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sparse_core::checkpoint::{self, Checkpoint, Model};
use sparse_core::{Error, Matrix, Result};
use sparse_store::{ActivationStore, BatchOptions, ShuffledBatches, Split, Splits, MANIFEST_FILE};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How activations are normalised before training.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// One scalar so that the mean `‖s·x‖²` is `d_model` (see [`crate::normalize`]).
    ExpectedAverageOnlyIn,
    /// Raw activations (`s = 1`).
    None,
}

/// A training run: the store, the output folder, the batch stream and the
/// models. Field names follow SAELens where it has the option
/// (`train_batch_size_tokens`, `training_tokens`, `d_in`,
/// `normalize_activations`, `dead_feature_window` are accepted).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The activation store folder.
    pub store: PathBuf,
    /// Output folder: `out/<model name>/` checkpoints and `out/metrics.jsonl`.
    pub out: PathBuf,
    /// Expected `d_model` of the store (checked when given).
    #[serde(default, alias = "d_in")]
    pub d_model: Option<usize>,
    /// Training steps (batches); give this or `training_tokens`.
    #[serde(default)]
    pub steps: Option<u64>,
    /// Training tokens, rounded up to whole batches.
    #[serde(default)]
    pub training_tokens: Option<u64>,
    /// Rows per batch (default 4096).
    #[serde(default = "default_batch", alias = "train_batch_size_tokens")]
    pub batch_size: usize,
    /// Seed of the batch order and of the normalisation sample.
    #[serde(default)]
    pub seed: u64,
    /// Steps between checkpoints (default 1000); the last step always writes one.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// Steps between log lines (default 100); the last step always logs.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Rows of the shuffle buffer (default 65536).
    #[serde(default = "default_buffer")]
    pub shuffle_buffer_rows: usize,
    /// Activation normalisation (default `expected_average_only_in`).
    #[serde(default = "default_normalization")]
    pub normalize_activations: Normalization,
    /// Rows of the sample estimating the scale and the geometric median (default 16384).
    #[serde(default = "default_norm_rows")]
    pub norm_estimation_rows: usize,
    /// A latent that has not fired in this many training tokens is dead
    /// (default 1000 batches, SAELens' 1000 forward passes).
    #[serde(default)]
    pub dead_feature_window: Option<u64>,
    /// Fraction of documents held out for validation (default 0.05).
    #[serde(default = "default_fraction")]
    pub validation: f64,
    /// Fraction of documents held out for test (default 0.05).
    #[serde(default = "default_fraction")]
    pub test: f64,
    /// The models.
    pub model: Vec<ModelSpec>,
}

fn default_batch() -> usize {
    4096
}
fn default_checkpoint_every() -> u64 {
    1000
}
fn default_log_every() -> u64 {
    100
}
fn default_buffer() -> usize {
    1 << 16
}
fn default_normalization() -> Normalization {
    Normalization::ExpectedAverageOnlyIn
}
fn default_norm_rows() -> usize {
    16384
}
fn default_fraction() -> f64 {
    0.05
}

impl RunConfig {
    /// The partition of the store.
    pub fn splits(&self) -> Result<Splits> {
        Splits::new(self.validation, self.test)
    }

    /// Total steps, from `steps` or `training_tokens`.
    pub fn total_steps(&self) -> Result<u64> {
        match (self.steps, self.training_tokens) {
            (Some(s), None) if s > 0 => Ok(s),
            (None, Some(t)) if t > 0 => Ok(t.div_ceil(self.batch_size as u64)),
            (Some(_), Some(_)) => Err(Error::invalid(
                "steps",
                "and training_tokens",
                "give one of the two, not both",
            )),
            _ => Err(Error::invalid(
                "steps",
                "missing or 0",
                "give `steps` or `training_tokens` (at least 1)",
            )),
        }
    }

    /// The dead-latent window in tokens.
    pub fn dead_window_tokens(&self) -> u64 {
        self.dead_feature_window
            .unwrap_or(1000 * self.batch_size as u64)
    }

    /// Checks every option (models included) without touching the store.
    pub fn validate(&self) -> Result<()> {
        self.total_steps()?;
        self.splits()?;
        for (name, v) in [
            ("batch_size", self.batch_size as u64),
            ("checkpoint_every", self.checkpoint_every),
            ("log_every", self.log_every),
            ("shuffle_buffer_rows", self.shuffle_buffer_rows as u64),
            ("norm_estimation_rows", self.norm_estimation_rows as u64),
            ("dead_feature_window", self.dead_window_tokens()),
        ] {
            if v == 0 {
                return Err(Error::invalid(name, 0, "must be at least 1"));
            }
        }
        if self.model.is_empty() {
            return Err(Error::invalid(
                "model",
                "none",
                "give at least one [[model]]",
            ));
        }
        for (i, m) in self.model.iter().enumerate() {
            m.validate()?;
            if self.model[..i].iter().any(|o| o.name == m.name) {
                return Err(Error::invalid(
                    "model name",
                    &m.name,
                    "is used twice: each model needs its own name",
                ));
            }
        }
        Ok(())
    }

    /// What fixes the batches and the models' data: everything but the
    /// step counts, the output cadence and the paths.
    fn identity(&self) -> Value {
        serde_json::json!({
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle_buffer_rows": self.shuffle_buffer_rows,
            "normalize_activations": self.normalize_activations,
            "norm_estimation_rows": self.norm_estimation_rows,
            "dead_feature_window": self.dead_window_tokens(),
            "validation": self.validation,
            "test": self.test,
        })
    }
}

/// The trainer's part of a checkpoint (`state.json`'s `config`): what
/// [`crate::eval`] needs to encode raw activations, and what resuming needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRun {
    /// Always `"sparse-train"`.
    pub trainer: String,
    /// The run options that fix the trajectory.
    pub identity: Value,
    /// The model's options.
    pub model: ModelSpec,
    /// The scale `s` applied to raw activations (1 without normalisation).
    pub scale: f32,
    /// The partition of the store the run trained on.
    pub splits: Splits,
    /// `d_model`.
    pub d_model: usize,
    /// Total steps of the run that wrote it.
    pub total_steps: u64,
    /// Tokens trained on.
    pub tokens: u64,
    /// Per latent, training tokens since it last fired.
    pub tokens_since_fired: Vec<u64>,
}

/// The trainer's name in [`StoredRun::trainer`].
pub const TRAINER: &str = "sparse-train";
/// The log file in the output folder.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One line of `metrics.jsonl`: one model at one step, measured on that
/// step's batch (normalised activations) after the step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Model name.
    pub model: String,
    /// Steps taken.
    pub step: u64,
    /// Tokens trained on.
    pub tokens: u64,
    /// The loss `train_step` reported (before the step).
    pub loss: f64,
    /// Per-element MSE of the batch after the step.
    pub mse: f64,
    /// Explained variance of the batch about its mean.
    pub explained_variance: f64,
    /// Mean non-zero latents per token.
    pub l0: f64,
    /// Fraction of latents that did not fire in the last `dead_feature_window` tokens.
    pub dead_fraction: f64,
    /// Learning rate of the step (`None` for sparse coding).
    pub lr: Option<f32>,
    /// L1 weight of the step, crate scale (sae, mlp).
    pub l1_coefficient: Option<f32>,
}

/// What the progress callback sees after each step.
#[derive(Clone, Debug)]
pub struct Progress<'a> {
    /// Steps done (of the slowest model).
    pub step: u64,
    /// Total steps.
    pub total: u64,
    /// Log lines written at this step (empty between log steps).
    pub logged: &'a [LogRecord],
}

/// The outcome for one model.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelSummary {
    /// Model name.
    pub name: String,
    /// Method.
    pub method: String,
    /// Its checkpoint folder.
    pub checkpoint: PathBuf,
    /// Steps taken in total.
    pub steps: u64,
    /// Tokens trained on.
    pub tokens: u64,
    /// Step the run resumed this model from (0 for a fresh one).
    pub resumed_from: u64,
    /// Loss of the last step.
    pub final_loss: Option<f64>,
    /// Normalisation scale.
    pub scale: f32,
    /// The last log line.
    pub last_log: Option<LogRecord>,
}

/// The outcome of a run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunSummary {
    /// The store trained from.
    pub store: PathBuf,
    /// `d_model`.
    pub d_model: usize,
    /// Rows of the train split.
    pub train_rows: u64,
    /// Total steps.
    pub steps: u64,
    /// Rows per batch.
    pub batch_size: usize,
    /// The log file.
    pub metrics: PathBuf,
    /// Per model.
    pub models: Vec<ModelSummary>,
}

struct Slot {
    spec: ModelSpec,
    dir: PathBuf,
    ckpt: Checkpoint,
    run: StoredRun,
    resumed_from: u64,
    last_log: Option<LogRecord>,
    fired: Vec<bool>,
}

/// Trains every model of `cfg` to `cfg`'s total steps, resuming from the
/// checkpoints in `cfg.out` where they exist. See [`train_until`].
pub fn train(cfg: &RunConfig, progress: &mut dyn FnMut(&Progress)) -> Result<RunSummary> {
    train_until(cfg, None, progress)
}

/// As [`train`], but returns after step `stop_after` (if given) without
/// writing anything more, as a run killed at that moment would: for tests
/// of resuming.
///
/// Resume is exact: each model's checkpoint holds its full state and step;
/// the batch stream is skipped to the earliest model's step and each batch
/// trains the models whose step it is, so models checkpointed at different
/// steps (a kill between two saves) catch up on the very batches they missed.
pub fn train_until(
    cfg: &RunConfig,
    stop_after: Option<u64>,
    progress: &mut dyn FnMut(&Progress),
) -> Result<RunSummary> {
    cfg.validate()?;
    let total = cfg.total_steps()?;
    let splits = cfg.splits()?;
    let store = ActivationStore::open(&cfg.store)?;
    let d = store.d_model();
    if let Some(want) = cfg.d_model {
        if want != d {
            return Err(Error::invalid(
                "d_model",
                want,
                &format!(
                    "differs from the store's d_model {d} ({})",
                    cfg.store.join(MANIFEST_FILE).display()
                ),
            ));
        }
    }
    let store_hash = checkpoint::sha256_file(&cfg.store.join(MANIFEST_FILE))?;
    let batch_opts = BatchOptions {
        batch_size: cfg.batch_size,
        buffer_rows: cfg.shuffle_buffer_rows,
        seed: cfg.seed,
        epochs: None,
        split: Split::Train,
        splits,
        drop_last: true,
    };
    // Fails early on an empty split or a batch larger than the split.
    let mut stream = ShuffledBatches::new(&store, batch_opts)?;
    let train_rows = stream.rows_per_epoch();
    let window = cfg.dead_window_tokens();
    let window_steps = window.div_ceil(cfg.batch_size as u64) as usize;
    let identity = cfg.identity();

    // Load what exists; build the rest.
    let mut slots: Vec<Slot> = Vec::new();
    let mut fresh: Vec<usize> = Vec::new();
    for spec in &cfg.model {
        let dir = cfg.out.join(&spec.name);
        if checkpoint::exists(&dir) {
            let ckpt = checkpoint::load(&dir)?;
            let run: StoredRun = serde_json::from_value(ckpt.config.clone()).map_err(|e| {
                Error::invalid(
                    "checkpoint",
                    dir.display(),
                    &format!("is not a sparse-train checkpoint ({e})"),
                )
            })?;
            let mismatch = |what: &str| {
                Error::invalid(
                    "checkpoint",
                    dir.display(),
                    &format!(
                        "was trained with other {what}: use another `out` or delete it to start over"
                    ),
                )
            };
            if run.model != *spec {
                return Err(mismatch("model options"));
            }
            if run.identity != identity || run.d_model != d {
                return Err(mismatch("run options (batch, seed, normalisation, splits)"));
            }
            if ckpt.data_sha256 != store_hash {
                return Err(mismatch("store content (manifest SHA-256 differs)"));
            }
            if ckpt.step > total {
                return Err(Error::invalid(
                    "steps",
                    total,
                    &format!("{} is already at step {}", dir.display(), ckpt.step),
                ));
            }
            let n = ckpt.model.dictionary().rows();
            slots.push(Slot {
                spec: spec.clone(),
                dir,
                resumed_from: ckpt.step,
                run: StoredRun {
                    total_steps: total,
                    ..run
                },
                ckpt,
                last_log: None,
                fired: vec![false; n],
            });
        } else {
            checkpoint::check_writable(&dir)?;
            let model = spec.build(d, window_steps)?;
            let n = model.dictionary().rows();
            fresh.push(slots.len());
            slots.push(Slot {
                spec: spec.clone(),
                dir,
                resumed_from: 0,
                run: StoredRun {
                    trainer: TRAINER.into(),
                    identity: identity.clone(),
                    model: spec.clone(),
                    scale: 1.0,
                    splits,
                    d_model: d,
                    total_steps: total,
                    tokens: 0,
                    tokens_since_fired: vec![0; n],
                },
                ckpt: Checkpoint {
                    method: spec.method.name().into(),
                    config: Value::Null,
                    step: 0,
                    data_sha256: store_hash.clone(),
                    last_loss: None,
                    model,
                },
                last_log: None,
                fired: vec![false; n],
            });
        }
    }
    if !fresh.is_empty() {
        // Models resumed next to fresh ones: the scale is the run's, stored.
        let resumed_scale = slots
            .iter()
            .enumerate()
            .find(|(i, _)| !fresh.contains(i))
            .map(|(_, s)| s.run.scale);
        let mut sample = None;
        let scale = match (cfg.normalize_activations, resumed_scale) {
            (_, Some(s)) => s,
            (Normalization::None, None) => 1.0,
            (Normalization::ExpectedAverageOnlyIn, None) => {
                let x = normalize::sample_train_rows(
                    &store,
                    splits,
                    cfg.seed,
                    cfg.norm_estimation_rows,
                )?;
                let s = normalize::expected_norm_scale(&x)?;
                sample = Some(x);
                s
            }
        };
        let needs_median = fresh
            .iter()
            .any(|&i| slots[i].spec.b_dec_init() == BDecInit::GeometricMedian);
        let median = if needs_median {
            let mut x = match sample {
                Some(x) => x,
                None => normalize::sample_train_rows(
                    &store,
                    splits,
                    cfg.seed,
                    cfg.norm_estimation_rows,
                )?,
            };
            scale_in_place(&mut x, scale);
            Some(normalize::geometric_median(&x, 100, 1e-12)?)
        } else {
            None
        };
        for &i in &fresh {
            let slot = &mut slots[i];
            slot.run.scale = scale;
            if slot.spec.b_dec_init() == BDecInit::GeometricMedian {
                models::set_decoder_bias(
                    &mut slot.ckpt.model,
                    median.as_deref().expect("computed"),
                )?;
            }
        }
    }

    let metrics_path = cfg.out.join(METRICS_FILE);
    let mut log = open_log(&metrics_path, &slots)?;
    let start = slots
        .iter()
        .map(|s| s.ckpt.step)
        .min()
        .expect("at least one model");
    stream.skip_batches(start)?;
    let scale = slots[0].run.scale;
    let mut logged = Vec::new();
    for t in start..total {
        if stop_after.is_some_and(|s| t >= s) {
            break;
        }
        let mut x = stream
            .next()
            .ok_or_else(|| Error::invalid("store", cfg.store.display(), "ran out of batches"))??;
        scale_in_place(&mut x, scale);
        logged.clear();
        for slot in slots.iter_mut().filter(|s| s.ckpt.step == t) {
            models::apply_schedule(&mut slot.ckpt.model, &slot.spec, d, total, t);
            let loss = slot.ckpt.model.train_step(&x).map_err(|e| {
                Error::invalid(
                    &format!("model {}", slot.spec.name),
                    format!("step {}", t + 1),
                    &format!("training failed: {e}; lower `lr` or check the activations"),
                )
            })?;
            slot.fired.iter_mut().for_each(|f| *f = false);
            models::mark_fired(&slot.ckpt.model, &x, &mut slot.fired)?;
            let rows = x.rows() as u64;
            for (c, &f) in slot.run.tokens_since_fired.iter_mut().zip(&slot.fired) {
                *c = if f { 0 } else { c.saturating_add(rows) };
            }
            slot.ckpt.step = t + 1;
            slot.ckpt.last_loss = Some(loss as f64);
            slot.run.tokens += rows;
            if slot.ckpt.step.is_multiple_of(cfg.log_every) || slot.ckpt.step == total {
                let rec = log_record(slot, &x, loss, window, d, total, t)?;
                writeln!(log, "{}", serde_json::to_string(&rec).expect("serialises"))
                    .and_then(|()| log.flush())
                    .map_err(|source| Error::Io {
                        path: metrics_path.clone(),
                        source,
                    })?;
                slot.last_log = Some(rec.clone());
                logged.push(rec);
            }
            if slot.ckpt.step.is_multiple_of(cfg.checkpoint_every) || slot.ckpt.step == total {
                slot.ckpt.config = serde_json::to_value(&slot.run).expect("serialises");
                checkpoint::save(&slot.dir, &slot.ckpt)?;
            }
        }
        progress(&Progress {
            step: t + 1,
            total,
            logged: &logged,
        });
    }
    Ok(RunSummary {
        store: cfg.store.clone(),
        d_model: d,
        train_rows,
        steps: total,
        batch_size: cfg.batch_size,
        metrics: metrics_path,
        models: slots
            .into_iter()
            .map(|s| ModelSummary {
                name: s.spec.name.clone(),
                method: s.spec.method.name().into(),
                checkpoint: s.dir,
                steps: s.ckpt.step,
                tokens: s.run.tokens,
                resumed_from: s.resumed_from,
                final_loss: s.ckpt.last_loss,
                scale: s.run.scale,
                last_log: s.last_log,
            })
            .collect(),
    })
}

fn scale_in_place(x: &mut Matrix, s: f32) {
    if s != 1.0 {
        x.as_mut_slice().iter_mut().for_each(|v| *v *= s);
    }
}

fn log_record(
    slot: &Slot,
    x: &Matrix,
    loss: f32,
    window: u64,
    d: usize,
    total: u64,
    t: u64,
) -> Result<LogRecord> {
    let model = &slot.ckpt.model;
    let z = model.encode(x)?;
    let x_hat = models::decode(model, &z)?;
    let mse = sparse_core::metrics::mse(x, &x_hat)?;
    let ev = sparse_core::metrics::explained_variance(x, &x_hat)?;
    let l0 = sparse_core::metrics::l0(&z).mean_count;
    let n = slot.run.tokens_since_fired.len().max(1) as f64;
    let dead = slot
        .run
        .tokens_since_fired
        .iter()
        .filter(|&&c| c >= window)
        .count() as f64
        / n;
    let l1 = match model {
        Model::Autoencoder(_) => Some(crate::schedule::warm_up_at(
            slot.spec.base_lambda(d),
            slot.spec.l1_warm_up_steps,
            t,
        )),
        _ => None,
    };
    Ok(LogRecord {
        model: slot.spec.name.clone(),
        step: slot.ckpt.step,
        tokens: slot.run.tokens,
        loss: loss as f64,
        mse,
        explained_variance: ev,
        l0,
        dead_fraction: dead,
        lr: models::lr_of(&slot.spec, total, t),
        l1_coefficient: l1,
    })
}

/// Opens `metrics.jsonl` for appending after dropping the lines past each
/// model's checkpoint (they will be written again), rewritten atomically.
fn open_log(path: &Path, slots: &[Slot]) -> Result<std::fs::File> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let kept: String = match std::fs::read_to_string(path) {
        Ok(text) => text
            .lines()
            .filter(|line| {
                let Ok(rec) = serde_json::from_str::<LogRecord>(line) else {
                    return false; // a torn last line
                };
                slots
                    .iter()
                    .any(|s| s.spec.name == rec.model && rec.step <= s.ckpt.step)
            })
            .map(|l| format!("{l}\n"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(e)),
    };
    sparse_core::io::write_atomic(path, kept.as_bytes())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io)
}
