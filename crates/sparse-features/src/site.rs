//! The static feature browser: `index.html`, `app.js` and `style.css`
//! (embedded in the binary, no external resources) plus data files:
//!
//! - `data/index.json`: one compact row per feature for the table and the
//!   search (`columns` names the fields), the encoders and run metadata;
//! - `data/{encoder}/{index}.json`: each encoder's [`FeatureRecord`], loaded
//!   only when its feature is opened, so the index stays small with
//!   thousands of features.
//!
//! URL parameters: `?q=TEXT` filters the table (token or text, case-
//! insensitive), `#feature=N` opens feature `N` (all encoders side by side),
//! `#page=P` shows page `P` of the table.

use crate::record::FeatureRecord;
use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The page.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");
/// The script.
pub const APP_JS: &str = include_str!("../assets/app.js");
/// The style sheet.
pub const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Run metadata shown on the page.
#[derive(Clone, Debug, Default)]
pub struct SiteMeta {
    /// Checkpoint folder.
    pub model: String,
    /// Store folder.
    pub store: String,
    /// Hook point of the store.
    pub hook: String,
    /// Split scanned.
    pub split: String,
    /// Latents of the checkpoint.
    pub n_latents: usize,
    /// Extra facts (e.g. FISTA's λ), shown as key: value.
    pub notes: Vec<(String, String)>,
}

/// The text around an example's maximum (`radius` tokens each side).
fn snippet(e: &crate::ActivationExample, radius: usize) -> String {
    let lo = e.max_position.saturating_sub(radius);
    let hi = (e.max_position + radius + 1).min(e.tokens.len());
    e.tokens[lo..hi].concat()
}

/// The index row of a feature: `[index, density, max, top tokens, snippet]`
/// for the first encoder, then `density, max` of each further encoder.
fn index_row(per_encoder: &[&FeatureRecord]) -> Value {
    let r = per_encoder[0];
    let mut top_tokens: Vec<&str> = Vec::new();
    for e in &r.top_examples {
        let t = e.tokens.get(e.max_position).map_or("", |s| s.as_str());
        if !top_tokens.contains(&t) {
            top_tokens.push(t);
        }
    }
    top_tokens.truncate(5);
    let mut row = vec![
        json!(r.index),
        json!(r.density),
        json!(r.max_activation),
        json!(top_tokens),
        json!(r
            .top_examples
            .first()
            .map(|e| snippet(e, 6))
            .unwrap_or_default()),
    ];
    for o in &per_encoder[1..] {
        row.push(json!(o.density));
        row.push(json!(o.max_activation));
    }
    Value::Array(row)
}

/// The pages' files as `(relative path, bytes)` for the records of each
/// encoder (every encoder must hold the same features in the same order).
pub fn site_files(
    encoders: &[(String, Vec<FeatureRecord>)],
    meta: &SiteMeta,
) -> Result<Vec<(String, Vec<u8>)>> {
    let Some((_, first)) = encoders.first() else {
        bail!("no encoder to show");
    };
    for (name, recs) in encoders {
        if recs.len() != first.len() || recs.iter().zip(first).any(|(a, b)| a.index != b.index) {
            bail!("encoder {name} holds other features than {}", encoders[0].0);
        }
    }
    let mut columns = vec![
        "index".to_string(),
        format!("density_{}", encoders[0].0),
        format!("max_{}", encoders[0].0),
        "top_tokens".to_string(),
        "snippet".to_string(),
    ];
    for (name, _) in &encoders[1..] {
        columns.push(format!("density_{name}"));
        columns.push(format!("max_{name}"));
    }
    let rows: Vec<Value> = (0..first.len())
        .map(|k| index_row(&encoders.iter().map(|(_, r)| &r[k]).collect::<Vec<_>>()))
        .collect();
    let index = json!({
        "model": meta.model,
        "store": meta.store,
        "hook": meta.hook,
        "split": meta.split,
        "n_latents": meta.n_latents,
        "tokens_seen": first.first().map_or(0, |r| r.tokens_seen),
        "encoders": encoders.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "notes": meta.notes.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
        "columns": columns,
        "features": rows,
    });
    let mut files = vec![
        ("index.html".to_string(), INDEX_HTML.as_bytes().to_vec()),
        ("app.js".to_string(), APP_JS.as_bytes().to_vec()),
        ("style.css".to_string(), STYLE_CSS.as_bytes().to_vec()),
        ("data/index.json".to_string(), serde_json::to_vec(&index)?),
    ];
    for (name, recs) in encoders {
        for r in recs {
            files.push((
                format!("data/{name}/{}.json", r.index),
                serde_json::to_vec(r)?,
            ));
        }
    }
    Ok(files)
}

/// Writes [`site_files`] under `dir`.
pub fn write_site(
    dir: &Path,
    encoders: &[(String, Vec<FeatureRecord>)],
    meta: &SiteMeta,
) -> Result<usize> {
    let files = site_files(encoders, meta)?;
    for (rel, bytes) in &files {
        let p = dir.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(files.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ActivationExample, Histogram};

    fn record(index: usize, encoder: &str) -> FeatureRecord {
        let tokens: Vec<String> = (0..127)
            .map(|i| format!(" tok{}", (i * 7 + index) % 50))
            .collect();
        let ex = ActivationExample {
            context: index as u64,
            token_ids: (0..127).collect(),
            activations: (0..127)
                .map(|i| if i % 9 == 0 { 1.0 } else { 0.0 })
                .collect(),
            tokens,
            max_position: 9,
            max_activation: 1.0,
        };
        FeatureRecord {
            index,
            encoder: encoder.into(),
            tokens_seen: 1000,
            density: 0.01,
            max_activation: 1.0,
            top_examples: vec![ex.clone(); 2],
            quantile_examples: vec![vec![ex]],
            histogram: Histogram {
                edges: vec![0.0, 0.5, 1.0],
                counts: vec![3, 7],
            },
            top_logits: vec![],
            bottom_logits: vec![],
        }
    }

    #[test]
    fn the_index_stays_small_with_thousands_of_features() {
        let n = 4608;
        let enc = vec![
            (
                "sae".to_string(),
                (0..n).map(|i| record(i, "sae")).collect(),
            ),
            (
                "fista".to_string(),
                (0..n).map(|i| record(i, "fista")).collect(),
            ),
        ];
        let files = site_files(&enc, &SiteMeta::default()).unwrap();
        assert_eq!(files.len(), 4 + 2 * n);
        let index = &files.iter().find(|f| f.0 == "data/index.json").unwrap().1;
        // The page loads this file only: about 100 bytes per feature.
        assert!(index.len() < 160 * n, "index.json is {} bytes", index.len());
        let v: Value = serde_json::from_slice(index).unwrap();
        assert_eq!(v["features"].as_array().unwrap().len(), n);
        assert_eq!(v["features"][5][3], serde_json::json!([" tok18"]));
        assert!(files.iter().any(|f| f.0 == "data/fista/4607.json"));
    }

    #[test]
    fn encoders_must_hold_the_same_features() {
        let enc = vec![
            ("sae".to_string(), vec![record(0, "sae")]),
            ("fista".to_string(), vec![record(1, "fista")]),
        ];
        let e = site_files(&enc, &SiteMeta::default()).unwrap_err();
        assert!(e.to_string().contains("encoder fista holds other features"));
    }
}
