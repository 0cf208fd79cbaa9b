//! `sparse-infer train --config FILE.toml`: training of a learned-dictionary
//! model (or LISTA against a given dictionary) on a `.npy` data set, full
//! batch or in seeded mini-batches, with atomic, resumable checkpoints (see
//! `sparse_core::checkpoint`).
//!
//! Rerunning the same command after an interruption resumes from the
//! checkpoint in `out` and ends with exactly the numbers of an uninterrupted
//! run; `steps` (and `checkpoint_every`) may be raised to train further.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sparse_core::checkpoint::{self, Checkpoint, ListaModel, Model};
use sparse_core::data::MiniBatches;
use sparse_core::dictionary::autoencoder::{Autoencoder, AutoencoderConfig};
use sparse_core::dictionary::jumprelu::{JumpReluConfig, JumpReluSae};
use sparse_core::dictionary::matryoshka::{MatryoshkaConfig, MatryoshkaSae};
use sparse_core::dictionary::mp_sae::{MpSae, MpSaeConfig};
use sparse_core::dictionary::sparse_coding::{SparseCoding, SparseCodingConfig};
use sparse_core::dictionary::topk::{TopKConfig, TopKSae};
use sparse_core::encoders::lista::{Lista, ListaConfig};
use sparse_core::io::read_npy;
use std::path::{Path, PathBuf};

/// The training method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainMethod {
    /// One linear-ReLU layer encoder (SAE) with a learned dictionary, L1 penalty.
    Sae,
    /// Two-layer MLP encoder of width `hidden`.
    Mlp,
    /// TopK SAE with `k` active latents per sample.
    Topk,
    /// BatchTopK SAE: `k · batch` active latents per batch.
    Batchtopk,
    /// JumpReLU SAE (learned thresholds, L0 penalty).
    Jumprelu,
    /// Matryoshka BatchTopK SAE with nested prefixes `widths`.
    Matryoshka,
    /// Matching-pursuit SAE (`k` greedy steps on the learned dictionary).
    MpSae,
    /// Alternating FISTA codes / MOD dictionary updates.
    SparseCoding,
    /// LISTA trained against the frozen dictionary `dictionary`.
    Lista,
}

impl TrainMethod {
    /// The name users write in the configuration.
    fn name(self) -> &'static str {
        match self {
            TrainMethod::Sae => "sae",
            TrainMethod::Mlp => "mlp",
            TrainMethod::Topk => "topk",
            TrainMethod::Batchtopk => "batchtopk",
            TrainMethod::Jumprelu => "jumprelu",
            TrainMethod::Matryoshka => "matryoshka",
            TrainMethod::MpSae => "mp-sae",
            TrainMethod::SparseCoding => "sparse-coding",
            TrainMethod::Lista => "lista",
        }
    }
}

/// The TOML training configuration. Relative paths are relative to the
/// folder of the configuration file. Optional fields apply to some methods
/// only (see [`APPLIES_TO`]); setting one for another method is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Method.
    pub method: TrainMethod,
    /// Data `X (n × M)` as `.npy`.
    pub data: PathBuf,
    /// Number of latents `N`.
    pub n_latents: usize,
    /// Total training steps (each on one batch).
    pub steps: u64,
    /// Steps between checkpoints (default: 100); the last step always writes one.
    #[serde(default = "default_every")]
    pub checkpoint_every: u64,
    /// Checkpoint folder.
    pub out: PathBuf,
    /// Seed of the initialisation, of resampling and of the batch order.
    #[serde(default)]
    pub seed: u64,
    /// Samples per step, drawn without replacement from a seeded shuffle of
    /// the data redone every epoch (the last incomplete batch of an epoch is
    /// skipped); absent: every step sees the full data set.
    pub batch_size: Option<usize>,
    /// Sparsity weight (sae, mlp: the paper's scale; sparse-coding, lista: lasso scale).
    pub lambda: Option<f32>,
    /// Adam learning rate.
    pub lr: Option<f32>,
    /// Active latents per sample (topk, batchtopk, matryoshka, mp-sae: required).
    pub k: Option<usize>,
    /// Hidden width (mlp, required).
    pub hidden: Option<usize>,
    /// FISTA iterations per step (sparse-coding).
    pub fista_iters: Option<usize>,
    /// Initial threshold θ of every latent (jumprelu; default 0.001 as SAELens).
    pub threshold: Option<f32>,
    /// Straight-through kernel bandwidth (jumprelu; default 0.001 as SAELens).
    pub bandwidth: Option<f32>,
    /// L0 penalty weight (jumprelu; default 1).
    pub l0_coefficient: Option<f32>,
    /// Target mean L0 of the data-driven threshold initialisation (jumprelu;
    /// default: none, every θ starts at `threshold`): the first step places
    /// each threshold so that every latent fires on `init_l0 / n_latents` of its batch.
    pub init_l0: Option<f32>,
    /// Nested prefix sizes ending at `n_latents` (matryoshka; default N/4, N/2, N).
    pub widths: Option<Vec<usize>>,
    /// The frozen dictionary `D (n_latents × M)` as `.npy` (lista, required).
    pub dictionary: Option<PathBuf>,
    /// Unrolled layers (lista; default 8).
    pub layers: Option<usize>,
}

/// The methods each optional field applies to.
const APPLIES_TO: &[(&str, &[TrainMethod])] = {
    use TrainMethod::*;
    &[
        ("lambda", &[Sae, Mlp, SparseCoding, Lista]),
        (
            "lr",
            &[
                Sae, Mlp, Topk, Batchtopk, Jumprelu, Matryoshka, MpSae, Lista,
            ],
        ),
        ("k", &[Topk, Batchtopk, Matryoshka, MpSae]),
        ("hidden", &[Mlp]),
        ("fista_iters", &[SparseCoding]),
        ("threshold", &[Jumprelu]),
        ("bandwidth", &[Jumprelu]),
        ("l0_coefficient", &[Jumprelu]),
        ("init_l0", &[Jumprelu]),
        ("widths", &[Matryoshka]),
        ("dictionary", &[Lista]),
        ("layers", &[Lista]),
    ]
};

fn default_every() -> u64 {
    100
}

impl TrainConfig {
    /// The fields that fix the trajectory: everything but `steps`,
    /// `checkpoint_every`, `out` and the data paths (the data's hash is checked instead).
    fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        if let Some(o) = v.as_object_mut() {
            for k in ["steps", "checkpoint_every", "out", "data", "dictionary"] {
                o.remove(k);
            }
        }
        v
    }

    /// Fails if an optional field is set for a method it does not apply to.
    fn check_applicable(&self) -> Result<()> {
        let v = serde_json::to_value(self)?;
        for (field, methods) in APPLIES_TO {
            let given = v.get(field).is_some_and(|x| !x.is_null());
            if given && !methods.contains(&self.method) {
                let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
                bail!(
                    "`{field}` does not apply to method {} (only to {})",
                    self.method.name(),
                    names.join(", ")
                );
            }
        }
        Ok(())
    }

    /// `k`, required by the methods that select a fixed number of latents.
    fn k(&self) -> Result<usize> {
        self.k
            .with_context(|| format!("method {} needs `k`", self.method.name()))
    }

    /// An upper estimate of the bytes training needs on `n_samples × dim`
    /// data beyond the data itself: weights, Adam's two moments and the
    /// gradients (4 copies of the parameters), a step's activations (a few
    /// `batch × width` buffers per layer), sparse coding's warm-start codes.
    /// `None` if the arithmetic overflows: such sizes cannot be allocated.
    pub fn memory_estimate(&self, n_samples: usize, dim: usize) -> Option<u64> {
        let (n, d) = (self.n_latents as u64, dim as u64);
        let b = self.batch_size.unwrap_or(n_samples) as u64;
        let hidden = self.hidden.unwrap_or(0) as u64;
        let layers = self.layers.unwrap_or(8) as u64;
        let m = |a: u64, b: u64| a.checked_mul(b);
        let sum = |xs: &[Option<u64>]| xs.iter().try_fold(0u64, |acc, x| acc.checked_add((*x)?));
        let nd = m(n, d)?;
        let params = match self.method {
            TrainMethod::Mlp => sum(&[m(d, hidden), m(hidden, n), Some(nd), Some(n + hidden + d)])?,
            TrainMethod::MpSae | TrainMethod::SparseCoding => sum(&[Some(nd), Some(d)])?,
            // W_e, S, θ and the frozen dictionary.
            TrainMethod::Lista => sum(&[Some(nd), m(n, n), m(layers, n), Some(nd)])?,
            _ => sum(&[m(nd, 2), Some(2 * n + 2 * d)])?,
        };
        let width = sum(&[Some(n), Some(d), Some(hidden)])?;
        let activations = match self.method {
            // The unrolled forward pass keeps every layer's codes and pre-activations.
            TrainMethod::Lista => m(m(b, n)?, m(layers, 2)?.checked_add(4)?)?,
            // FISTA's iterates plus the stored warm-start codes, and the Gram matrix.
            TrainMethod::SparseCoding => sum(&[m(m(b, n)?, 6), m(n, n), m(b, d)])?,
            _ => m(m(b, width)?, 6)?,
        };
        m(sum(&[m(params, 4), Some(activations)])?, 4)
    }

    /// Fails before any allocation if the model cannot fit: the size
    /// arithmetic overflows, or the estimate exceeds the memory the system
    /// reports available (Linux `MemAvailable`; not checked elsewhere).
    pub fn check_memory(&self, n_samples: usize, dim: usize) -> Result<()> {
        let sizes = format!(
            "n_latents = {}, dim = {dim}, batch = {}",
            self.n_latents,
            self.batch_size.unwrap_or(n_samples)
        );
        let need = self
            .memory_estimate(n_samples, dim)
            .with_context(|| format!("the model's size overflows ({sizes})"))?;
        if let Some(avail) = available_memory() {
            if need > avail {
                bail!(
                    "training needs about {:.1} GiB ({sizes}), more than the {:.1} GiB of memory available: lower `n_latents`{}",
                    need as f64 / GIB,
                    avail as f64 / GIB,
                    if self.method == TrainMethod::Mlp { ", `hidden`" } else { "" },
                );
            }
        }
        Ok(())
    }

    /// The message of a run stopped by a non-finite or exploding loss, with the likely fix.
    fn divergence_fix(&self) -> String {
        let now = |v: Option<f32>| v.map_or("its default".to_string(), |v| v.to_string());
        match self.method {
            TrainMethod::SparseCoding => format!(
                "check the data's scale or lower `lambda` (now {})",
                now(self.lambda)
            ),
            _ => format!(
                "lower `lr` (now {}), e.g. tenfold, or check the data's scale",
                now(self.lr)
            ),
        }
    }

    /// A freshly initialised model for data of dimension `dim`.
    pub fn build(&self, dim: usize) -> Result<Model> {
        self.check_applicable()?;
        let (n, seed) = (self.n_latents, self.seed);
        let with_lr = |adam: &mut sparse_core::optim::AdamConfig| {
            if let Some(lr) = self.lr {
                adam.lr = lr;
            }
        };
        Ok(match self.method {
            TrainMethod::Sae | TrainMethod::Mlp => {
                let mut c = if self.method == TrainMethod::Mlp {
                    let hidden = self.hidden.context("method mlp needs `hidden`")?;
                    AutoencoderConfig::paper_mlp(n, dim, hidden, seed)
                } else {
                    AutoencoderConfig::paper_sae(n, dim, seed)
                };
                if let Some(l) = self.lambda {
                    c.lambda = l;
                }
                with_lr(&mut c.adam);
                Model::Autoencoder(Box::new(Autoencoder::new(c)?))
            }
            TrainMethod::Topk | TrainMethod::Batchtopk => {
                let mut c = if self.method == TrainMethod::Topk {
                    TopKConfig::topk(n, dim, self.k()?, seed)
                } else {
                    TopKConfig::batch_topk(n, dim, self.k()?, seed)
                };
                with_lr(&mut c.adam);
                Model::TopK(Box::new(TopKSae::new(c)?))
            }
            TrainMethod::Jumprelu => {
                let mut c = JumpReluConfig::new(n, dim, seed);
                c.threshold = self.threshold.unwrap_or(c.threshold);
                c.bandwidth = self.bandwidth.unwrap_or(c.bandwidth);
                c.l0_coefficient = self.l0_coefficient.unwrap_or(c.l0_coefficient);
                c.init_l0 = self.init_l0;
                with_lr(&mut c.adam);
                Model::JumpRelu(Box::new(JumpReluSae::new(c)?))
            }
            TrainMethod::Matryoshka => {
                let widths = match &self.widths {
                    Some(w) => w.clone(),
                    None => {
                        let mut w = vec![(n / 4).max(1), (n / 2).max(1), n];
                        w.dedup();
                        w
                    }
                };
                let mut c = MatryoshkaConfig::new(n, dim, self.k()?, widths, seed);
                with_lr(&mut c.sae.adam);
                Model::Matryoshka(Box::new(MatryoshkaSae::new(c)?))
            }
            TrainMethod::MpSae => {
                let mut c = MpSaeConfig::new(n, dim, self.k()?, seed);
                with_lr(&mut c.adam);
                Model::MpSae(Box::new(MpSae::new(c)?))
            }
            TrainMethod::SparseCoding => {
                let mut c = SparseCodingConfig::new(n, dim, seed);
                c.lambda = self.lambda.unwrap_or(c.lambda);
                c.fista_iters = self.fista_iters.unwrap_or(c.fista_iters);
                Model::SparseCoding(Box::new(SparseCoding::new(c)?))
            }
            TrainMethod::Lista => {
                let path = self
                    .dictionary
                    .as_ref()
                    .context("method lista needs `dictionary` (the frozen D as .npy)")?;
                let dictionary = read_npy(path)?;
                dictionary.check_finite(&format!("dictionary ({})", path.display()))?;
                if dictionary.shape() != (n, dim) {
                    bail!(
                        "{}: dictionary has shape {:?}, expected (n_latents, dim) = ({n}, {dim})",
                        path.display(),
                        dictionary.shape()
                    );
                }
                let mut c = ListaConfig::default();
                c.layers = self.layers.unwrap_or(c.layers);
                c.lambda = self.lambda.unwrap_or(c.lambda);
                c.lr = self.lr.unwrap_or(c.lr);
                let lista = Lista::from_dictionary(&dictionary, c)?;
                Model::Lista(Box::new(ListaModel { lista, dictionary }))
            }
        })
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// `MemAvailable` of `/proc/meminfo` in bytes, where the system reports it.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Reads the configuration, resolving relative paths against its folder.
pub fn read_config(path: &Path) -> Result<TrainConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_config(&text, path)
}

/// Parses and checks the text of the configuration file `path` (named in
/// errors; relative paths are resolved against its folder).
pub fn parse_config(text: &str, path: &Path) -> Result<TrainConfig> {
    let mut c: TrainConfig = toml::from_str(text)
        .with_context(|| format!("{}: invalid training configuration", path.display()))?;
    let base = path.parent().unwrap_or(Path::new(""));
    if c.data.is_relative() {
        c.data = base.join(&c.data);
    }
    if c.out.is_relative() {
        c.out = base.join(&c.out);
    }
    if c.steps == 0 {
        bail!("{}: `steps` must be at least 1", path.display());
    }
    if c.checkpoint_every == 0 {
        bail!("{}: `checkpoint_every` must be at least 1", path.display());
    }
    if c.batch_size == Some(0) {
        bail!("{}: `batch_size` must be at least 1", path.display());
    }
    if let Some(d) = c.dictionary.as_mut() {
        if d.is_relative() {
            *d = base.join(&*d);
        }
    }
    c.check_applicable()
        .with_context(|| format!("{}: invalid training configuration", path.display()))?;
    Ok(c)
}

/// Trains per the configuration file; prints a JSON summary on stdout.
pub fn train(config_path: &Path, progress: indicatif::ProgressBar) -> Result<()> {
    if crate::lm_train::is_store_config(config_path) {
        return crate::lm_train::train(config_path, progress);
    }
    let cfg = read_config(config_path)?;
    let x = read_npy(&cfg.data)?;
    x.check_finite(&format!("data ({})", cfg.data.display()))?;
    let hash = checkpoint::sha256_file(&cfg.data)?;
    let mut ckpt = if checkpoint::exists(&cfg.out) {
        let c = checkpoint::load(&cfg.out)
            .with_context(|| format!("resuming from {}", cfg.out.display()))?;
        let stored: TrainConfig = serde_json::from_value(c.config.clone()).with_context(|| {
            format!(
                "{}: the stored configuration is not a training configuration",
                cfg.out.display()
            )
        })?;
        if stored.identity() != cfg.identity() {
            bail!(
                "{} holds a checkpoint of a different configuration ({}), not {}: use another `out` or delete it",
                cfg.out.display(),
                stored.identity(),
                cfg.identity()
            );
        }
        if c.data_sha256 != hash {
            bail!(
                "{} was trained on data with SHA-256 {}, but {} has {}: use another `out` or delete it",
                cfg.out.display(),
                c.data_sha256,
                cfg.data.display(),
                hash
            );
        }
        if c.step > cfg.steps {
            bail!(
                "{} is at step {}, past steps = {}",
                cfg.out.display(),
                c.step,
                cfg.steps
            );
        }
        Checkpoint {
            config: serde_json::to_value(&cfg)?,
            ..c
        }
    } else {
        cfg.check_memory(x.rows(), x.cols())?;
        Checkpoint {
            method: cfg.method.name().to_string(),
            config: serde_json::to_value(&cfg)?,
            step: 0,
            data_sha256: hash,
            last_loss: None,
            model: cfg.build(x.cols())?,
        }
    };
    let mut batches = match cfg.batch_size {
        Some(b) if b > x.rows() => bail!(
            "batch_size = {b} exceeds the {} samples of {}",
            x.rows(),
            cfg.data.display()
        ),
        Some(b) => Some(MiniBatches::new(cfg.seed, b, &x)?),
        None => None,
    };
    checkpoint::check_writable(&cfg.out)
        .with_context(|| format!("cannot write checkpoints to {}", cfg.out.display()))?;
    let resumed_from = ckpt.step;
    progress.set_length(cfg.steps);
    progress.set_position(ckpt.step);
    let mut watch = DivergenceWatch::default();
    let mut saved_step = resumed_from;
    while ckpt.step < cfg.steps {
        let batch = match batches.as_mut() {
            Some(b) => b.batch(&x, ckpt.step),
            None => &x,
        };
        let loss = match ckpt.model.train_step(batch) {
            Ok(loss) => loss,
            Err(e @ sparse_core::Error::Numerical { .. }) => {
                bail!(diverged(
                    &cfg,
                    &ckpt,
                    saved_step,
                    ckpt.step + 1,
                    &e.to_string()
                ))
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(why) = watch.check(f64::from(loss)) {
            // The model took the diverged step: it is not saved, so the last
            // checkpoint stays the last good state.
            bail!(diverged(&cfg, &ckpt, saved_step, ckpt.step + 1, &why));
        }
        ckpt.step += 1;
        ckpt.last_loss = Some(f64::from(loss));
        progress.set_position(ckpt.step);
        progress.set_message(format!("loss {loss:.6}"));
        if ckpt.step % cfg.checkpoint_every == 0 || ckpt.step == cfg.steps {
            checkpoint::save(&cfg.out, &ckpt).with_context(|| {
                format!(
                    "writing the checkpoint of step {} to {}",
                    ckpt.step,
                    cfg.out.display()
                )
            })?;
            saved_step = ckpt.step;
        }
    }
    progress.finish_and_clear();
    let d = ckpt.model.dictionary();
    println!(
        "{}",
        serde_json::json!({
            "method": ckpt.method, "out": cfg.out, "steps": ckpt.step, "resumed_from": resumed_from,
            "final_loss": ckpt.last_loss, "dictionary_shape": [d.rows(), d.cols()],
            "data_sha256": ckpt.data_sha256,
        })
    );
    Ok(())
}

/// How much a loss may grow over the run's lowest before the run counts as
/// diverged (it must also exceed the run's first loss; see [`DivergenceWatch`]).
pub const DIVERGENCE_FACTOR: f64 = 1e3;

/// Detects a diverging run from its losses: a non-finite loss, or a loss
/// above both [`DIVERGENCE_FACTOR`] × the lowest loss of this run and the
/// first loss of this run. An exploding weight norm shows as such a loss.
/// The second condition keeps healthy runs clear: a near-perfect fit whose
/// tiny loss bounces by orders of magnitude stays far below where it began.
#[derive(Default)]
pub struct DivergenceWatch {
    first: Option<f64>,
    lowest: Option<f64>,
}

impl DivergenceWatch {
    /// Records the loss of a step; returns why the run diverged, if it did.
    pub fn check(&mut self, loss: f64) -> Option<String> {
        if !loss.is_finite() {
            return Some(format!("loss is {loss}"));
        }
        let first = *self.first.get_or_insert(loss);
        let lowest = self.lowest.map_or(loss, |l| l.min(loss));
        self.lowest = Some(lowest);
        (loss > DIVERGENCE_FACTOR * lowest && loss > first).then(|| {
            format!(
                "loss {loss:.4e} is over {DIVERGENCE_FACTOR:e} times the run's lowest, {lowest:.4e}"
            )
        })
    }
}

/// The one-line message of a diverged run: where, the last finite loss,
/// which checkpoint is kept, and the likely fix.
fn diverged(cfg: &TrainConfig, ckpt: &Checkpoint, saved: u64, step: u64, why: &str) -> String {
    let last = ckpt.last_loss.map_or("none yet".to_string(), |l| {
        format!("{l:.4e} at step {}", ckpt.step)
    });
    let kept = if checkpoint::exists(&cfg.out) {
        format!(
            "kept the last good checkpoint, step {saved}, in {}",
            cfg.out.display()
        )
    } else {
        format!(
            "no checkpoint was written yet (the first is due at step {})",
            cfg.checkpoint_every.min(cfg.steps)
        )
    };
    format!(
        "training diverged at step {step}: {why}; last finite loss {last}; {kept}; likely fix: {}",
        cfg.divergence_fix()
    )
}
