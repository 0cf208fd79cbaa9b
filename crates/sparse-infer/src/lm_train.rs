//! `sparse-infer train --config lm.toml` when the configuration names a
//! `store` (streaming training over an activation store, `sparse_train`),
//! (`sparse-infer evaluate` lives in `lm_eval`).
//!
//! ```toml
//! store = "stores/smollm2-l15"     # activation store (relative to this file)
//! out = "runs/l15"                  # out/<name>/ checkpoints, out/metrics.jsonl
//! d_model = 576                     # optional check against the store
//! training_tokens = 4_000_000       # or steps = …
//! train_batch_size_tokens = 4096
//! checkpoint_every = 200
//!
//! [[model]]
//! name = "relu"
//! architecture = "sae"
//! d_sae = 4608
//! l1_coefficient = 5.0
//! lr = 3e-4
//! lr_warm_up_steps = 100
//! lr_decay_steps = 200
//! l1_warm_up_steps = 200
//!
//! [[model]]
//! name = "topk32"
//! architecture = "topk"
//! d_sae = 4608
//! k = 32
//! ```
//!
//! A single `[model]` table is accepted for one model. Rerunning the same
//! command resumes from the checkpoints in `out` and ends bit-identical to
//! an uninterrupted run.

use anyhow::{bail, Context, Result};
use sparse_store::MANIFEST_FILE;
use sparse_train::RunConfig;
use std::path::Path;

/// Whether the training configuration at `path` names a `store` (read
/// errors are left to the caller's own reading).
pub fn is_store_config(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .is_some_and(|t| t.contains_key("store"))
}

/// Parses the text of the configuration file `path`: one `[model]` table
/// becomes a one-element list; `store` and `out` are resolved against the file's folder.
pub fn parse_config(text: &str, path: &Path) -> Result<RunConfig> {
    let invalid = || format!("{}: invalid training configuration", path.display());
    let mut table: toml::Table = toml::from_str(text).with_context(invalid)?;
    if let Some(toml::Value::Table(one)) = table.get("model").cloned() {
        table.insert(
            "model".into(),
            toml::Value::Array(vec![toml::Value::Table(one)]),
        );
    }
    let mut cfg: RunConfig = toml::Value::Table(table).try_into().with_context(invalid)?;
    let base = path.parent().unwrap_or(Path::new(""));
    for p in [&mut cfg.store, &mut cfg.out] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    cfg.validate().with_context(invalid)?;
    Ok(cfg)
}

/// Trains per the configuration file; prints the run summary as JSON on stdout.
pub fn train(config_path: &Path, progress: indicatif::ProgressBar) -> Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let cfg = parse_config(&text, config_path)?;
    if !cfg.store.join(MANIFEST_FILE).exists() {
        bail!(
            "{}: store {} not found (no {MANIFEST_FILE} there)",
            config_path.display(),
            cfg.store.display()
        );
    }
    progress.set_length(cfg.total_steps()?);
    let summary = sparse_train::train(&cfg, &mut |p| {
        progress.set_position(p.step);
        if let Some(r) = p.logged.first() {
            progress.set_message(format!(
                "{}: mse {:.4} l0 {:.1} dead {:.3}",
                r.model, r.mse, r.l0, r.dead_fraction
            ));
        }
    })
    .with_context(|| format!("{}", config_path.display()))?;
    progress.finish_and_clear();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
