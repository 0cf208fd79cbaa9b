//! Exports other interpretability tools read.
//!
//! **Neuronpedia-style feature JSON** ([`neuronpedia_feature`]): the object
//! Neuronpedia's API returns for a feature (`GET /api/feature/{model}/{layer}/{index}`)
//! and SAE-Dashboard uploads, with the fields we can fill:
//! `modelId`, `layer` (the hook), `index` (a string), `maxActApprox`,
//! `frac_nonzero`, `pos_str`/`pos_values` and `neg_str`/`neg_values` (top and
//! bottom logit effects), `freq_hist_data_bar_values` (bin centres) and
//! `freq_hist_data_bar_heights` (counts; the two arrays are parallel, as
//! Neuronpedia requires), and `activations`: one object per example with
//! `tokens`, `values`, `maxValue`, `maxValueTokenIndex`, `minValue` (top
//! examples first, then the quantile samples, which also carry
//! `quantile` = their bin, lowest 0).
//!
//! **Latent-activation cache** ([`write_delphi_cache`]): the layout of
//! EleutherAI delphi's `LatentCache.save_splits` + `save_config`, which its
//! `LatentDataset` loads. For each hook point a folder `DIR/{hook}/` with
//! `config.json` and one safetensors file per latent range,
//! `{start}_{end}.safetensors` (`end` inclusive; ranges from
//! `linspace(0, width, n_splits + 1)` as delphi computes them) holding
//! `locations` (`[n, 3]`, uint16 when the latent offsets and batch indices
//! are below 2^16, else uint32): `[batch, position, latent − start]`,
//! `activations` (`[n]`, float16) and `tokens` (`[batches, context_len]`,
//! int64: every token of each cached context, position 0 included). `batch`
//! indexes the cached contexts in scan order; `position` is within the whole
//! context (≥ the store's `first_position`).

use crate::collect::{CachedActivation, Scan};
use crate::record::FeatureRecord;
use anyhow::{Context, Result};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use sparse_store::ActivationStore;
use std::path::{Path, PathBuf};

/// The Neuronpedia-style JSON of one record (see the module doc).
pub fn neuronpedia_feature(r: &FeatureRecord, model_id: &str, layer: &str) -> Value {
    let h = &r.histogram;
    let centres: Vec<f32> = h.edges.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let example = |e: &crate::ActivationExample, quantile: Option<usize>| {
        let mut v = json!({
            "tokens": e.tokens,
            "values": e.activations,
            "maxValue": e.max_activation,
            "maxValueTokenIndex": e.max_position,
            "minValue": e.activations.iter().copied().fold(f32::INFINITY, f32::min),
        });
        if let Some(q) = quantile {
            v["quantile"] = json!(q);
        }
        v
    };
    let mut activations: Vec<Value> = r.top_examples.iter().map(|e| example(e, None)).collect();
    for (q, bin) in r.quantile_examples.iter().enumerate() {
        activations.extend(bin.iter().map(|e| example(e, Some(q))));
    }
    json!({
        "modelId": model_id,
        "layer": layer,
        "index": r.index.to_string(),
        "encoder": r.encoder,
        "maxActApprox": r.max_activation,
        "frac_nonzero": r.density,
        "pos_str": r.top_logits.iter().map(|l| &l.token).collect::<Vec<_>>(),
        "pos_values": r.top_logits.iter().map(|l| l.value).collect::<Vec<_>>(),
        "neg_str": r.bottom_logits.iter().map(|l| &l.token).collect::<Vec<_>>(),
        "neg_values": r.bottom_logits.iter().map(|l| l.value).collect::<Vec<_>>(),
        "freq_hist_data_bar_values": centres,
        "freq_hist_data_bar_heights": h.counts,
        "activations": activations,
    })
}

/// Writes `dir/{index}.json` for every record (see [`neuronpedia_feature`]).
pub fn write_neuronpedia(
    dir: &Path,
    records: &[FeatureRecord],
    model_id: &str,
    layer: &str,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for r in records {
        let p = dir.join(format!("{}.json", r.index));
        let text = serde_json::to_string(&neuronpedia_feature(r, model_id, layer))?;
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// delphi's latent ranges: `[start, end]` (inclusive) of `n_splits` splits of `width`.
pub fn delphi_ranges(width: usize, n_splits: usize) -> Vec<(usize, usize)> {
    let n = n_splits.clamp(1, width.max(1));
    let b: Vec<usize> = (0..=n).map(|i| i * width / n).collect();
    b.windows(2).map(|w| (w[0], w[1] - 1)).collect()
}

/// Writes the scan's cache in delphi's layout under `dir/{hook}/` (see the
/// module doc); `width` is the encoder's number of latents. Returns the
/// files written.
pub fn write_delphi_cache(
    dir: &Path,
    scan: &Scan,
    store: &ActivationStore,
    width: usize,
    n_splits: usize,
    model_name: &str,
) -> Result<Vec<PathBuf>> {
    let hook = &store.spec().hook;
    let hook_dir = dir.join(hook);
    std::fs::create_dir_all(&hook_dir)
        .with_context(|| format!("creating {}", hook_dir.display()))?;
    let ctx_len = store.spec().context_len;
    let mut tokens: Vec<u8> = Vec::with_capacity(scan.contexts.len() * ctx_len * 8);
    for &c in &scan.contexts {
        for t in store.context_tokens(c)? {
            tokens.extend_from_slice(&(t as i64).to_le_bytes());
        }
    }
    let mut files = Vec::new();
    for (start, end) in delphi_ranges(width, n_splits) {
        let sel: Vec<&CachedActivation> = scan
            .cache
            .iter()
            .filter(|a| (start..=end).contains(&(a.latent as usize)))
            .collect();
        let small = sel
            .iter()
            .all(|a| (a.latent as usize - start) < 1 << 16 && a.context_slot < 1 << 16);
        let mut loc = Vec::new();
        for a in &sel {
            for v in [a.context_slot, a.position, a.latent - start as u32] {
                if small {
                    loc.extend_from_slice(&(v as u16).to_le_bytes());
                } else {
                    loc.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        let acts: Vec<u8> = sel
            .iter()
            .flat_map(|a| half::f16::from_f32(a.value).to_le_bytes())
            .collect();
        let path = hook_dir.join(format!("{start}_{end}.safetensors"));
        let views = vec![
            (
                "locations".to_string(),
                TensorView::new(
                    if small { Dtype::U16 } else { Dtype::U32 },
                    vec![sel.len(), 3],
                    &loc,
                )?,
            ),
            (
                "activations".to_string(),
                TensorView::new(Dtype::F16, vec![sel.len()], &acts)?,
            ),
            (
                "tokens".to_string(),
                TensorView::new(Dtype::I64, vec![scan.contexts.len(), ctx_len], &tokens)?,
            ),
        ];
        let bytes = safetensors::serialize(views, &None)?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        files.push(path);
    }
    let config = json!({
        "dataset_repo": store.dir(),
        "dataset_split": "sparse-infer store",
        "dataset_name": "",
        "dataset_column": "text",
        "batch_size": 1,
        "cache_ctx_len": ctx_len,
        "n_tokens": scan.contexts.len() * ctx_len,
        "n_splits": delphi_ranges(width, n_splits).len(),
        "model_name": model_name,
        "encoder": scan.encoder,
        "first_position": store.spec().first_position,
        "store_contexts": scan.contexts,
    });
    let p = hook_dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&config)?)
        .with_context(|| format!("writing {}", p.display()))?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delphi_ranges_cover_the_width_like_torch_linspace() {
        assert_eq!(
            delphi_ranges(10, 5),
            vec![(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
        );
        assert_eq!(delphi_ranges(7, 2), vec![(0, 2), (3, 6)]);
        assert_eq!(delphi_ranges(3, 9), vec![(0, 0), (1, 1), (2, 2)]);
    }
}
