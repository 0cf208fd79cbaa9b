//! Agreement with an independent numpy forward pass (scripts/lm_reference.py,
//! run with `$SPARSE_INFER_PYTHON`; skipped with a message when that is unset
//! or lacks numpy/gguf). Error measure: per hook, max|rust − numpy| / max|numpy|
//! over the whole (batch·seq × d_model) buffer; the worst per-row version of the
//! same ratio is also checked, so position 0's outsized norm cannot hide errors
//! at other positions.

mod common;

use common::*;
use sparse_lm::testing::{TinyLlamaConfig, WeightDType};
use sparse_lm::{HookKind, HookPoint, LanguageModel};

fn compare(
    test: &str,
    model: &LanguageModel,
    toks: &[u32],
    seq: usize,
    hooks: &[HookPoint],
    with_nll: bool,
    tol: f64,
) -> Option<()> {
    let py = reference_python(test)?;
    let batch = toks.len() / seq;
    let dir = scratch(&format!("{test}-ref"));
    let names: Vec<String> = hooks.iter().map(|h| h.to_string()).collect();
    let out = run_reference(&py, &model.info().path, toks, seq, &names, with_nll, &dir);
    let ours = model.hook_activations(toks, batch, seq, hooks).unwrap();
    let d = model.info().d_model;
    for (name, a) in names.iter().zip(&ours) {
        let b = read_npy(&out.join(format!("{name}.npy")));
        let (e, re) = (rel_err(a, &b), row_rel_err(a, &b, d));
        println!("{test}: {name}: rel err {e:.2e}, worst row {re:.2e}");
        assert!(
            e <= tol,
            "{test}: {name}: relative error {e:.3e} > {tol:.0e}"
        );
        assert!(
            re <= tol,
            "{test}: {name}: worst per-row relative error {re:.3e} > {tol:.0e}"
        );
    }
    if with_nll {
        let a = model.token_nll(toks, batch, seq).unwrap();
        let b = read_npy(&out.join("nll.npy"));
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        println!("{test}: nll max abs diff {worst:.2e} nats");
        assert!(worst <= 1e-3, "{test}: NLL differs by {worst} nats");
    }
    Some(())
}

fn tiny(test: &str, cfg: TinyLlamaConfig) {
    let path = tiny_model(test, &cfg);
    let m = LanguageModel::load(&path).unwrap();
    let (batch, seq) = (2, 24);
    let toks = tokens(batch * seq, m.info().vocab_size, 11);
    let hooks: Vec<HookPoint> = (0..cfg.n_layers)
        .flat_map(|l| HookKind::ALL.map(|k| HookPoint::new(l, k)))
        .collect();
    compare(test, &m, &toks, seq, &hooks, true, 1e-4);
}

#[test]
fn tiny_f32_matches_numpy_reference() {
    tiny(
        "tiny_f32_reference",
        TinyLlamaConfig {
            tie_embeddings: false,
            ..TinyLlamaConfig::default()
        },
    );
}

#[test]
fn tiny_q4_1_matches_numpy_reference() {
    // More heads per KV head (3) and 4 layers: exercises the GQA grouping.
    tiny(
        "tiny_q4_1_reference",
        TinyLlamaConfig {
            weight_dtype: WeightDType::Q4_1,
            n_layers: 4,
            d_model: 96,
            n_heads: 6,
            n_kv_heads: 2,
            d_ff: 160,
            seed: 3,
            ..TinyLlamaConfig::default()
        },
    );
}

#[test]
fn real_model_matches_numpy_reference() {
    let test = "real_reference";
    let Some(path) = real_model(test) else { return };
    let m = LanguageModel::load(&path).unwrap();
    let tok = sparse_lm::LmTokenizer::from_gguf(&path).unwrap();
    let text = "The State of the Union is strong. In 1790, George Washington told Congress that \
                the United States must be ready for war in order to keep the peace.";
    let mut ids = tok.encode(text).unwrap();
    let seq = 16;
    ids.truncate(2 * seq);
    assert_eq!(ids.len(), 2 * seq);
    // Every hook of the first 3 blocks, a mid-layer residual, and the loss at full depth.
    let mut hooks: Vec<HookPoint> = (0..3)
        .flat_map(|l| HookKind::ALL.map(|k| HookPoint::new(l, k)))
        .collect();
    hooks.push(HookPoint::resid_post(15));
    compare(test, &m, &ids, seq, &hooks, true, 1e-3);
}
