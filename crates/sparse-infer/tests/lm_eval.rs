//! `evaluate --lm` (downstream loss) and `compare-encoders` on a tiny store
//! harvested by the test from a tiny random Llama GGUF, with SAEs trained by
//! `train --config` on it.

mod common;

use common::{fails_with, ok_json, s};
use serde_json::Value;
use sparse_lm::testing::{write_tiny_llama_gguf, TinyLlamaConfig};
use std::path::PathBuf;

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    gguf: PathBuf,
    store: PathBuf,
}

/// 40 one-file documents → tiny GGUF (d_model 64) harvest at blocks.1.hook_resid_post,
/// 16-token contexts from position 1; a ReLU and a TopK SAE (128 latents) and a
/// sparse-coding model trained on it, 25% of the documents for validation, 25% for test.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let (gguf, store) = common::tiny_lm_store(&root);
    let cfg = root.join("lm.toml");
    std::fs::write(
        &cfg,
        r#"
store = "store"
out = "run"
steps = 400
train_batch_size_tokens = 64
checkpoint_every = 200
log_every = 100
shuffle_buffer_rows = 512
norm_estimation_rows = 512
validation = 0.25
test = 0.25

[[model]]
name = "relu"
architecture = "sae"
d_sae = 128
l1_coefficient = 1.0
lr = 3e-3

[[model]]
name = "topk"
architecture = "topk"
d_sae = 128
k = 8
lr = 3e-3

[[model]]
name = "sc"
method = "sparse-coding"
n_latents = 16
fista_iters = 10
"#,
    )
    .unwrap();
    ok_json(&["train", "--config", &s(&cfg)]);
    Setup {
        _dir: dir,
        root,
        gguf,
        store,
    }
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn evaluate_compare_encoders_and_bad_input() {
    let t = setup();
    let relu = t.root.join("run/relu");
    let topk = t.root.join("run/topk");

    // evaluate with the LM: the downstream record is filled and consistent.
    let r = ok_json(&[
        "evaluate",
        "--model",
        &s(&relu),
        "--store",
        &s(&t.store),
        "--lm",
        &s(&t.gguf),
        "--contexts",
        "6",
    ]);
    let d = &r["downstream"];
    let (clean, spliced, zero) = (
        num(d, "ce_clean"),
        num(d, "ce_spliced"),
        num(d, "ce_zero_ablation"),
    );
    assert_eq!(r["downstream_contexts"], 6, "{r}");
    // (JSON keeps ~17 digits: compare to the last few ulps.)
    assert!(
        (num(d, "ce_increase") - (spliced - clean)).abs() < 1e-12,
        "{r}"
    );
    let recovered = (zero - spliced) / (zero - clean);
    assert!((num(d, "loss_recovered") - recovered).abs() < 1e-9, "{r}");
    assert!(r["downstream_note"].is_string());
    // --contexts 0 skips it.
    let r0 = ok_json(&[
        "evaluate",
        "--model",
        &s(&relu),
        "--store",
        &s(&t.store),
        "--lm",
        &s(&t.gguf),
        "--contexts",
        "0",
    ]);
    assert_eq!(r0["downstream"], Value::Null);

    // compare-encoders: every row, FISTA matched in L0 and at least as good as the SAE.
    let md = t.root.join("cmp.md");
    for (ckpt, strict) in [(&relu, true), (&topk, false)] {
        let c = ok_json(&[
            "compare-encoders",
            "--model",
            &s(ckpt),
            "--store",
            &s(&t.store),
            "--lm",
            &s(&t.gguf),
            "--tokens",
            "600",
            "--markdown",
            &s(&md),
        ]);
        eprintln!("{c}");
        let rows = c["encoders"].as_array().unwrap();
        let names: Vec<&str> = rows
            .iter()
            .map(|r| r["encoder"].as_str().unwrap())
            .collect();
        let k = c["pursuit_k"].as_u64().unwrap();
        assert_eq!(
            names,
            [
                "sae".to_string(),
                "fista".into(),
                format!("omp-k{k}"),
                format!("mp-k{k}"),
                "sae+fista".into()
            ],
            "{c}"
        );
        for row in rows {
            for key in [
                "l0",
                "normalized_mse",
                "explained_variance",
                "flops_per_token",
            ] {
                assert!(row[key].as_f64().unwrap().is_finite(), "{key}: {row}");
            }
            let d = &row["downstream"];
            assert!(num(d, "loss_recovered").is_finite(), "{row}");
            assert_eq!(num(d, "ce_clean"), num(&c, "ce_clean"));
        }
        assert!(num(&c, "tokens") >= 600.0);
        let (sae, fista) = (&rows[0], &rows[1]);
        let ratio = num(fista, "l0") / num(sae, "l0");
        assert!((0.5..=2.0).contains(&ratio), "L0 ratio {ratio}: {c}");
        if strict {
            assert!(
                num(fista, "normalized_mse") <= num(sae, "normalized_mse"),
                "FISTA {} vs SAE {}: {c}",
                num(fista, "normalized_mse"),
                num(sae, "normalized_mse")
            );
        }
        let table = std::fs::read_to_string(&md).unwrap();
        assert!(table.contains("| sae+fista |"), "{table}");
    }

    // Bad input: one line each.
    let other = t.root.join("other.gguf");
    write_tiny_llama_gguf(
        &other,
        &TinyLlamaConfig {
            seed: 9,
            ..TinyLlamaConfig::default()
        },
    )
    .unwrap();
    let (m, st) = (s(&relu), s(&t.store));
    for cmd in ["evaluate", "compare-encoders"] {
        fails_with(
            &[cmd, "--model", &m, "--store", &st, "--lm", &s(&other)],
            &["other.gguf", "sha256", "tiny.gguf"],
        );
    }
    fails_with(
        &[
            "compare-encoders",
            "--model",
            &s(&t.root.join("run/sc")),
            "--store",
            &st,
        ],
        &["run/sc", "not an SAE"],
    );
    let synth = t.root.join("synth");
    sparse_train::testing::write_synthetic_store(&synth, 16, 32, 3, 40, 16, 2.0, 7).unwrap();
    fails_with(
        &["compare-encoders", "--model", &m, "--store", &s(&synth)],
        &["synth", "16", "64"],
    );
}
