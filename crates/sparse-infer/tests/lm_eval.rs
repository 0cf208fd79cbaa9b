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

#[test]
fn lm_report_measures_every_model_on_the_same_tokens_and_resumes() {
    let t = setup();
    let cfg = t.root.join("lm.toml");
    let out = t.root.join("report");
    let args = [
        "lm-report",
        "--config",
        &s(&cfg),
        "--out",
        &s(&out),
        "--lm",
        &s(&t.gguf),
        "--tokens",
        "300",
        "--validation-tokens",
        "200",
    ];
    let first = common::run(&args);
    let stderr = String::from_utf8_lossy(&first.stderr).to_string();
    assert!(first.status.success(), "{stderr}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let models = report["models"].as_array().unwrap();
    let names: Vec<&str> = models.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["relu", "topk", "sc"], "{report}");
    for m in models {
        let e = &m["eval"];
        assert!(num(e, "l0") > 0.0, "{m}");
        assert!(num(e, "flops_per_token") > 0.0, "{m}");
        assert!(num(&e["downstream"], "loss_recovered").is_finite(), "{m}");
        assert!(num(m, "training_flops") > 0.0, "{m}");
        assert!(num(&m["split_metrics"], "tokens") >= num(&report, "eval_tokens"));
    }
    // Default comparisons: the first TopK, then the first ReLU SAE; their `sae`
    // row is measured on the very tokens of the model's own row.
    let cmps = report["comparisons"].as_array().unwrap();
    let dicts: Vec<&str> = cmps
        .iter()
        .map(|c| c["dictionary"].as_str().unwrap())
        .collect();
    assert_eq!(dicts, ["topk", "relu"]);
    for c in cmps {
        let name = c["dictionary"].as_str().unwrap();
        let own = &models.iter().find(|m| m["name"] == name).unwrap()["eval"];
        let rows = c["comparison"]["encoders"].as_array().unwrap();
        let sae = &rows[0];
        assert_eq!(sae["encoder"], "sae");
        for key in ["l0", "explained_variance", "normalized_mse"] {
            assert_eq!(sae[key], own[key], "{key}: {c}");
        }
        assert_eq!(
            sae["downstream"]["ce_spliced"], own["downstream"]["ce_spliced"],
            "{c}"
        );
        // The λ sweep: halving λ gives at least as many active latents as doubling it.
        let l0_of = |n: &str| num(rows.iter().find(|r| r["encoder"] == n).unwrap(), "l0");
        assert!(l0_of("fista-x0.5") >= l0_of("fista-x2"), "{c}");
    }
    for f in [
        "report.md",
        "pareto_l0_explained_variance.svg",
        "pareto_l0_explained_variance.png",
        "pareto_flops_loss_recovered.svg",
        "pareto_flops_loss_recovered.png",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let svg = std::fs::read_to_string(out.join("pareto_l0_explained_variance.svg")).unwrap();
    for label in ["ReLU SAE", "TopK SAE", "FISTA on topk", "sae+fista on relu"] {
        assert!(svg.contains(label), "{label} missing from the figure");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("| topk | topk |") && md.contains("decoder of `relu`"),
        "{md}"
    );

    // A rerun measures nothing again and writes the same report.
    let second = common::run(&args);
    let stderr2 = String::from_utf8_lossy(&second.stderr).to_string();
    assert!(second.status.success(), "{stderr2}");
    assert_eq!(
        stderr2.matches("measured before, reused").count(),
        5,
        "{stderr2}"
    );
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(again, report);

    fails_with(
        &[
            "lm-report",
            "--config",
            &s(&cfg),
            "--out",
            &s(&out),
            "--lm",
            &s(&t.gguf),
            "--compare",
            "nosuch",
        ],
        &["no model named nosuch"],
    );
}
