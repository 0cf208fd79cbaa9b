//! `sparse-infer synth --preset NAME`: writes a realistic (SynthSAEBench-style)
//! data set of [`sparse_core::realistic_data`] as `.npy` files.
//!
//! Layout of the output folder:
//!
//! ```text
//! dictionary.npy            D (N × M), unit-norm atoms, f32
//! bias.npy                  the decoder bias b (1 × M) added to every sample
//! train/data.npy            X (n_train × M) = Z·D + b (+ noise)
//! train/codes.npy           Z (n_train × N), non-negative
//! val/…, test/…             the same, n_eval samples each
//! test_ood/…                the compositional OOD test split (presets with one)
//! config.json               the generator configuration and split sizes
//! ```
//!
//! The values are the generator's own (not rescaled): `reproduce
//! synthetic-realism` divides them by one scalar before training.

use anyhow::{Context, Result};
use sparse_core::io::{write_npy, NpyDtype};
use sparse_core::realistic_data::{RealisticConfig, RealisticModel};
use sparse_core::Matrix;
use std::path::Path;

/// Default training samples of a preset data set.
pub const DEFAULT_TRAIN: usize = 10_000;
/// Default samples of each evaluation split (validation, test, OOD test).
pub const DEFAULT_EVAL: usize = 2_000;

/// What `synth --preset` writes: the preset, its overrides and the split sizes.
pub struct PresetRequest<'a> {
    /// Preset name (one of [`sparse_core::realistic_data::PRESETS`]).
    pub preset: &'a str,
    /// Seed (the preset's own when absent).
    pub seed: Option<u64>,
    /// Standard deviation of additive noise (the preset's own when absent).
    pub noise: Option<f32>,
    /// Training samples.
    pub n_train: usize,
    /// Validation, test and OOD-test samples each.
    pub n_eval: usize,
}

/// Generates the preset's splits into `out` and prints a JSON summary.
/// Fails, naming the valid presets, on an unknown name, and on sizes below 1.
pub fn synth_preset(req: &PresetRequest<'_>, out: &Path) -> Result<()> {
    let mut config = RealisticConfig::preset(req.preset)?;
    if let Some(seed) = req.seed {
        config.seed = seed;
    }
    if let Some(noise) = req.noise {
        config.noise_std = noise;
    }
    config.validate()?;
    anyhow::ensure!(
        req.n_train >= 1 && req.n_eval >= 1,
        "--samples and --eval-samples must be at least 1 (got {} and {})",
        req.n_train,
        req.n_eval
    );
    let model = RealisticModel::new(&config)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_npy(
        &out.join("dictionary.npy"),
        &model.dictionary,
        NpyDtype::F32,
    )?;
    let bias = Matrix::from_fn(1, config.dim, |_, j| model.bias[j]);
    write_npy(&out.join("bias.npy"), &bias, NpyDtype::F32)?;
    // Streams as `RealisticModel::generate`: train 1, validation 2, test 3, OOD test 4.
    let mut splits = vec![
        ("train", req.n_train, 1, false),
        ("val", req.n_eval, 2, false),
        ("test", req.n_eval, 3, false),
    ];
    if config.ood.is_some() {
        splits.push(("test_ood", req.n_eval, 4, true));
    }
    let mut files = serde_json::Map::new();
    for &(name, n, stream, ood) in &splits {
        let split = model.split(n, stream, ood)?;
        let dir = out.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        write_npy(&dir.join("data.npy"), &split.x, NpyDtype::F32)?;
        write_npy(&dir.join("codes.npy"), &split.z, NpyDtype::F32)?;
        let l0 = split.z.as_slice().iter().filter(|&&v| v > 0.0).count() as f64 / n as f64;
        files.insert(
            name.into(),
            serde_json::json!({
                "data": [n, config.dim], "codes": [n, config.n_latents], "mean_l0": l0,
            }),
        );
    }
    let summary = serde_json::json!({
        "out": out, "preset": req.preset, "config": config,
        "samples": {"train": req.n_train, "eval": req.n_eval},
        "dictionary": [config.n_latents, config.dim], "splits": files,
    });
    sparse_core::io::write_atomic(
        &out.join("config.json"),
        &serde_json::to_vec_pretty(&summary)?,
    )?;
    println!("{summary}");
    Ok(())
}
