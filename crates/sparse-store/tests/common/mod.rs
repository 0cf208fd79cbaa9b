//! A deterministic synthetic harvest shared by the integration tests: every
//! token, document and activation is a function of the global context index,
//! so a store's content can be checked without keeping a copy.

#![allow(dead_code)]

use sparse_store::{ActivationStore, CorpusFile, ModelInfo, StoreDtype, StoreSpec, StoreWriter};
use std::path::Path;

/// A small spec: `d_model` 6, contexts of 8 tokens keeping positions 1..8.
pub fn spec(dtype: StoreDtype, shard_contexts: usize) -> StoreSpec {
    StoreSpec {
        model: ModelInfo {
            name: "toy-lm".into(),
            file: "toy.gguf".into(),
            sha256: "00".repeat(32),
        },
        hook: "blocks.1.hook_resid_post".into(),
        d_model: 6,
        dtype,
        context_len: 8,
        first_position: 1,
        shard_contexts,
        corpus: vec![CorpusFile {
            path: "corpus/a.txt".into(),
            bytes: 1234,
            sha256: "11".repeat(32),
        }],
        extra: serde_json::json!({"batch_contexts": 4, "tokenizer": "toy"}),
    }
}

/// Activation `(global row, column)`: varied signs and magnitudes in (−3, 3).
pub fn value(row: u64, col: usize) -> f32 {
    ((row as f32) * 0.37 + col as f32 * 1.3).sin() * 3.0
}

/// Context `c` as the harvester would push it: tokens, document (three
/// contexts per document), offset in it, and the kept activations.
pub fn context(spec: &StoreSpec, c: u64) -> (Vec<u32>, u32, u64, Vec<f32>) {
    let tokens = (0..spec.context_len)
        .map(|p| (c * 1000 + p as u64) as u32)
        .collect();
    let k = spec.rows_per_context() as u64;
    let acts = (0..k)
        .flat_map(|r| (0..spec.d_model).map(move |j| value(c * k + r, j)))
        .collect();
    (
        tokens,
        (c / 3) as u32,
        (c % 3) * spec.context_len as u64,
        acts,
    )
}

/// Pushes contexts `range` into `w`.
pub fn push(w: &mut StoreWriter, range: std::ops::Range<u64>) {
    let spec = w.spec().clone();
    for c in range {
        let (t, d, o, a) = context(&spec, c);
        w.push_context(&t, d, o, &a).unwrap();
    }
}

/// A finished store of `n` contexts in `dir`.
pub fn write_store(dir: &Path, spec: StoreSpec, n: u64) -> ActivationStore {
    let mut w = StoreWriter::create(dir, spec).unwrap();
    push(&mut w, 0..n);
    w.finish().unwrap()
}

/// Names of the files in `dir`, sorted.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
