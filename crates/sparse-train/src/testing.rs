//! Tiny activation stores for tests, examples and benchmarks.

use sparse_core::data::SyntheticConfig;
use sparse_core::Result;
use sparse_store::{ActivationStore, CorpusFile, ModelInfo, StoreDtype, StoreSpec, StoreWriter};
use std::path::Path;

/// A store spec: `d_model` `d`, contexts of `context_len` tokens keeping
/// positions `1..`, `F32`, `shard_contexts` per shard.
pub fn spec(d: usize, context_len: usize, shard_contexts: usize) -> StoreSpec {
    StoreSpec {
        model: ModelInfo {
            name: "synthetic".into(),
            file: "none".into(),
            sha256: "00".repeat(32),
        },
        hook: "synthetic".into(),
        d_model: d,
        dtype: StoreDtype::F32,
        context_len,
        first_position: 1,
        shard_contexts,
        corpus: vec![CorpusFile {
            path: "synthetic".into(),
            bytes: 0,
            sha256: "00".repeat(32),
        }],
        extra: serde_json::json!({}),
    }
}

/// Writes a store in `dir` whose rows are `offset + Z·D` from the crate's
/// synthetic generator (`n_latents` true features, `k` active per row),
/// `contexts` contexts of `context_len` tokens, one document per context.
/// A learnable target for an SAE, with a mean far from zero.
#[allow(clippy::too_many_arguments)]
pub fn write_synthetic_store(
    dir: &Path,
    d: usize,
    n_latents: usize,
    k: usize,
    contexts: u64,
    context_len: usize,
    offset: f32,
    seed: u64,
) -> Result<ActivationStore> {
    let spec = spec(d, context_len, 16);
    let rows_per = spec.rows_per_context();
    let data = SyntheticConfig::paper(n_latents, d, k, seed)
        .generate(contexts as usize * rows_per, 0, 0)?
        .train
        .x;
    let mut w = StoreWriter::create(dir, spec)?;
    for c in 0..contexts {
        let tokens: Vec<u32> = (0..context_len as u32).collect();
        let start = c as usize * rows_per;
        let acts: Vec<f32> = data
            .select_rows(start..start + rows_per)
            .as_slice()
            .iter()
            .map(|v| v + offset)
            .collect();
        w.push_context(&tokens, c as u32, 0, &acts)?;
    }
    w.finish()
}
