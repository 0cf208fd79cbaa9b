//! `sparse-infer train --config FILE.toml`: full-batch training of a
//! learned-dictionary model on a `.npy` data set, with atomic, resumable
//! checkpoints (see `sparse_core::checkpoint`).
//!
//! Rerunning the same command after an interruption resumes from the
//! checkpoint in `out` and ends with exactly the numbers of an uninterrupted
//! run; `steps` (and `checkpoint_every`) may be raised to train further.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sparse_core::checkpoint::{self, Checkpoint, Model};
use sparse_core::dictionary::autoencoder::{Autoencoder, AutoencoderConfig};
use sparse_core::dictionary::sparse_coding::{SparseCoding, SparseCodingConfig};
use sparse_core::dictionary::topk::{TopKConfig, TopKSae};
use sparse_core::io::read_npy;
use std::path::{Path, PathBuf};

/// The training method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainMethod {
    /// One linear-ReLU layer encoder (SAE) with a learned dictionary.
    Sae,
    /// Two-layer MLP encoder of width `hidden`.
    Mlp,
    /// TopK SAE with `k` active latents per sample.
    Topk,
    /// Alternating FISTA codes / MOD dictionary updates.
    SparseCoding,
}

impl TrainMethod {
    fn name(self) -> &'static str {
        match self {
            TrainMethod::Sae => "sae",
            TrainMethod::Mlp => "mlp",
            TrainMethod::Topk => "topk",
            TrainMethod::SparseCoding => "sparse-coding",
        }
    }
}

/// The TOML training configuration. Relative paths are relative to the
/// folder of the configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Method.
    pub method: TrainMethod,
    /// Data `X (n × M)` as `.npy`.
    pub data: PathBuf,
    /// Number of latents `N`.
    pub n_latents: usize,
    /// Total training steps (full batch).
    pub steps: u64,
    /// Steps between checkpoints (default: 100); the last step always writes one.
    #[serde(default = "default_every")]
    pub checkpoint_every: u64,
    /// Checkpoint folder.
    pub out: PathBuf,
    /// Seed of the initialisation (and of resampling).
    #[serde(default)]
    pub seed: u64,
    /// Sparsity weight (sae, mlp: paper scale; sparse-coding: lasso scale).
    pub lambda: Option<f32>,
    /// Adam learning rate (sae, mlp, topk).
    pub lr: Option<f32>,
    /// Active latents per sample (topk, required).
    pub k: Option<usize>,
    /// Hidden width (mlp, required).
    pub hidden: Option<usize>,
    /// FISTA iterations per step (sparse-coding).
    pub fista_iters: Option<usize>,
}

fn default_every() -> u64 {
    100
}

impl TrainConfig {
    /// The fields that fix the trajectory: everything but `steps`,
    /// `checkpoint_every`, `out` and the data path (the data's hash is checked instead).
    fn identity(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("config serialises");
        if let Some(o) = v.as_object_mut() {
            for k in ["steps", "checkpoint_every", "out", "data"] {
                o.remove(k);
            }
        }
        v
    }

    fn build(&self, dim: usize) -> Result<Model> {
        let m = self.method.name();
        let not_for = |field: &str, given: bool| -> Result<()> {
            if given {
                bail!("`{field}` does not apply to method {m}");
            }
            Ok(())
        };
        Ok(match self.method {
            TrainMethod::Sae | TrainMethod::Mlp => {
                not_for("k", self.k.is_some())?;
                not_for("fista_iters", self.fista_iters.is_some())?;
                let mut c = if self.method == TrainMethod::Mlp {
                    let hidden = self.hidden.context("method mlp needs `hidden`")?;
                    AutoencoderConfig::paper_mlp(self.n_latents, dim, hidden, self.seed)
                } else {
                    not_for("hidden", self.hidden.is_some())?;
                    AutoencoderConfig::paper_sae(self.n_latents, dim, self.seed)
                };
                if let Some(l) = self.lambda {
                    c.lambda = l;
                }
                if let Some(lr) = self.lr {
                    c.adam.lr = lr;
                }
                Model::Autoencoder(Box::new(Autoencoder::new(c)?))
            }
            TrainMethod::Topk => {
                not_for("lambda", self.lambda.is_some())?;
                not_for("hidden", self.hidden.is_some())?;
                not_for("fista_iters", self.fista_iters.is_some())?;
                let k = self.k.context("method topk needs `k`")?;
                let mut c = TopKConfig::topk(self.n_latents, dim, k, self.seed);
                if let Some(lr) = self.lr {
                    c.adam.lr = lr;
                }
                Model::TopK(Box::new(TopKSae::new(c)?))
            }
            TrainMethod::SparseCoding => {
                not_for("lr", self.lr.is_some())?;
                not_for("k", self.k.is_some())?;
                not_for("hidden", self.hidden.is_some())?;
                let mut c = SparseCodingConfig::new(self.n_latents, dim, self.seed);
                if let Some(l) = self.lambda {
                    c.lambda = l;
                }
                if let Some(i) = self.fista_iters {
                    c.fista_iters = i;
                }
                Model::SparseCoding(Box::new(SparseCoding::new(c)?))
            }
        })
    }
}

/// Reads the configuration, resolving relative paths against its folder.
pub fn read_config(path: &Path) -> Result<TrainConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut c: TrainConfig = toml::from_str(&text)
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
    Ok(c)
}

/// Trains per the configuration file; prints a JSON summary on stdout.
pub fn train(config_path: &Path, progress: indicatif::ProgressBar) -> Result<()> {
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
        Checkpoint {
            method: cfg.method.name().to_string(),
            config: serde_json::to_value(&cfg)?,
            step: 0,
            data_sha256: hash,
            last_loss: None,
            model: cfg.build(x.cols())?,
        }
    };
    let resumed_from = ckpt.step;
    progress.set_length(cfg.steps);
    progress.set_position(ckpt.step);
    while ckpt.step < cfg.steps {
        let loss = ckpt.model.train_step(&x)?;
        ckpt.step += 1;
        ckpt.last_loss = Some(f64::from(loss));
        progress.set_position(ckpt.step);
        progress.set_message(format!("loss {loss:.6}"));
        if ckpt.step % cfg.checkpoint_every == 0 || ckpt.step == cfg.steps {
            checkpoint::save(&cfg.out, &ckpt)?;
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
