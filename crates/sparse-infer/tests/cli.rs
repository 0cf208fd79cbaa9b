//! End-to-end tests of the `sparse-infer` binary: the synth → encode → metrics
//! pipeline, the quick study, and one-line errors (never a panic) on bad input.

use serde_json::Value;
use std::path::Path;

mod common;
use common::{bin, fails_with, ok_json};

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).to_string_lossy().into_owned()
}

#[test]
fn synth_encode_metrics_pipeline_recovers_codes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let meta = ok_json(&[
        "synth",
        "--latents",
        "16",
        "--dim",
        "8",
        "--k",
        "3",
        "--samples",
        "300",
        "--seed",
        "5",
        "--out",
        &p(d, ""),
    ]);
    assert_eq!(meta["files"]["codes"], serde_json::json!([300, 16]));
    let z = sparse_core::io::read_npy(&d.join("codes.npy")).unwrap();
    assert_eq!(z.shape(), (300, 16));
    assert_eq!(
        sparse_core::io::read_npy(&d.join("data.npy"))
            .unwrap()
            .shape(),
        (300, 8)
    );
    assert_eq!(
        sparse_core::io::read_npy(&d.join("dictionary.npy"))
            .unwrap()
            .shape(),
        (16, 8)
    );

    let enc = ok_json(&[
        "encode",
        "--method",
        "fista",
        "--dictionary",
        &p(d, "dictionary.npy"),
        "--input",
        &p(d, "data.npy"),
        "--lambda",
        "0.003",
        "--out",
        &p(d, "fista.npy"),
    ]);
    assert!(enc["flops"].as_f64().unwrap() > 0.0);
    let m = ok_json(&[
        "metrics",
        "--true",
        &p(d, "codes.npy"),
        "--pred",
        &p(d, "fista.npy"),
        "--true-dictionary",
        &p(d, "dictionary.npy"),
        "--pred-dictionary",
        &p(d, "dictionary.npy"),
    ]);
    let mcc = m["code_mcc"].as_f64().unwrap();
    assert!(
        mcc > 0.85 && mcc <= 1.0,
        "FISTA with the true dictionary: MCC {mcc}"
    );
    assert!((m["dictionary_mcc"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    assert!((m["dictionary_cosine"].as_f64().unwrap() - 1.0).abs() < 1e-6);

    ok_json(&[
        "encode",
        "--method",
        "omp",
        "--k",
        "3",
        "--dictionary",
        &p(d, "dictionary.npy"),
        "--input",
        &p(d, "data.npy"),
        "--out",
        &p(d, "omp.npy"),
    ]);
    let m = ok_json(&[
        "metrics",
        "--true",
        &p(d, "codes.npy"),
        "--pred",
        &p(d, "omp.npy"),
    ]);
    assert!(m["code_mcc"].as_f64().unwrap() > 0.5);
    // Codes of random shape are uncorrelated with the truth: the metric can fail.
    let noise = sparse_core::Matrix::from_fn(300, 16, |i, j| {
        (((i * 7919 + j * 104_729) % 1000) as f32) / 1000.0
    });
    sparse_core::io::write_npy(&d.join("noise.npy"), &noise, sparse_core::io::NpyDtype::F32)
        .unwrap();
    let m = ok_json(&[
        "metrics",
        "--true",
        &p(d, "codes.npy"),
        "--pred",
        &p(d, "noise.npy"),
    ]);
    assert!(m["code_mcc"].as_f64().unwrap() < 0.3);
}

#[test]
fn bad_input_gives_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok_json(&[
        "synth",
        "--latents",
        "6",
        "--dim",
        "4",
        "--k",
        "2",
        "--samples",
        "20",
        "--out",
        &p(d, ""),
    ]);
    let dict = p(d, "dictionary.npy");
    let data = p(d, "data.npy");
    let out = p(d, "z.npy");

    // k > N when generating and when encoding.
    fails_with(
        &[
            "synth",
            "--latents",
            "4",
            "--dim",
            "2",
            "--k",
            "5",
            "--samples",
            "3",
            "--out",
            &p(d, "x"),
        ],
        &["k = 5"],
    );
    fails_with(
        &[
            "encode",
            "--method",
            "omp",
            "--k",
            "7",
            "--dictionary",
            &dict,
            "--input",
            &data,
            "--out",
            &out,
        ],
        &["k = 7", "6"],
    );
    // Negative λ.
    fails_with(
        &[
            "encode",
            "--method",
            "fista",
            "--lambda",
            "-0.1",
            "--dictionary",
            &dict,
            "--input",
            &data,
            "--out",
            &out,
        ],
        &["lambda", "-0.1"],
    );
    // Not an .npy file.
    std::fs::write(d.join("text.npy"), b"just some text").unwrap();
    fails_with(
        &[
            "encode",
            "--method",
            "fista",
            "--dictionary",
            &p(d, "text.npy"),
            "--input",
            &data,
            "--out",
            &out,
        ],
        &["text.npy", "not a .npy"],
    );
    // Truncated file.
    let bytes = std::fs::read(d.join("data.npy")).unwrap();
    std::fs::write(d.join("short.npy"), &bytes[..bytes.len() - 7]).unwrap();
    fails_with(
        &[
            "encode",
            "--method",
            "fista",
            "--dictionary",
            &dict,
            "--input",
            &p(d, "short.npy"),
            "--out",
            &out,
        ],
        &["short.npy", "truncated", "(20, 4)"],
    );
    // Shape mismatch between data and dictionary: names the file and both shapes.
    let wrong = sparse_core::Matrix::zeros(20, 5);
    sparse_core::io::write_npy(&d.join("wrong.npy"), &wrong, sparse_core::io::NpyDtype::F32)
        .unwrap();
    fails_with(
        &[
            "encode",
            "--method",
            "fista",
            "--dictionary",
            &dict,
            "--input",
            &p(d, "wrong.npy"),
            "--out",
            &out,
        ],
        &["wrong.npy", "(n, 4)", "(20, 5)"],
    );
    fails_with(
        &[
            "metrics",
            "--true",
            &p(d, "codes.npy"),
            "--pred",
            &p(d, "dictionary.npy"),
        ],
        &["dictionary.npy", "20", "(6, 4)"],
    );
    // NaN in the data names the location.
    let mut nan = sparse_core::Matrix::zeros(3, 4);
    nan.set(2, 1, f32::NAN);
    sparse_core::io::write_npy(&d.join("nan.npy"), &nan, sparse_core::io::NpyDtype::F32).unwrap();
    fails_with(
        &[
            "encode",
            "--method",
            "fista",
            "--dictionary",
            &dict,
            "--input",
            &p(d, "nan.npy"),
            "--out",
            &out,
        ],
        &["nan.npy", "row 2, column 1"],
    );
    // Missing file.
    fails_with(
        &["metrics", "--true", &p(d, "absent.npy"), "--pred", &out],
        &["absent.npy"],
    );
    // Nothing was written by the failed encodes.
    assert!(!d.join("z.npy").exists());
}

#[test]
fn quick_study_writes_json_table_and_figure_with_per_sample_inference_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("kd");
    let run = bin()
        .args([
            "reproduce",
            "known-dictionary",
            "--quick",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    for m in [
        "sae",
        "mlp-32",
        "fista",
        "ista",
        "exp-adam",
        "omp",
        "mp",
        "sae+fista",
        "sae+exp-adam",
    ] {
        assert!(
            table.contains(&format!("| {m} |")),
            "table lacks {m}:\n{table}"
        );
    }
    let svg = std::fs::read_to_string(out.join("mcc_vs_flops.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("fista"));
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let mcc = |m: &str| {
        json["summary"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["method"] == m)
            .unwrap()["test_mcc"][0]
            .as_f64()
            .unwrap()
    };
    // Even the quick configuration shows per-sample inference with the true
    // dictionary ahead of both amortised encoders (MLP vs SAE needs the full
    // 20k-step, 5-seed study: see README).
    for amortised in ["sae", "mlp-32"] {
        for per_sample in ["fista", "exp-adam"] {
            assert!(
                mcc(per_sample) > mcc(amortised) + 0.05,
                "{per_sample} {} vs {amortised} {}",
                mcc(per_sample),
                mcc(amortised)
            );
        }
    }
    assert_eq!(json["config"]["seeds"], 2);
    assert_eq!(json["runs"].as_array().unwrap().len(), 2 * 9);
}

#[test]
fn study_config_file_overrides_fields_and_rejects_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "seeds = 1\ntrain_steps = 50\nmlp_widths = [8]\nexp_adam_iter = 50\nfista_max_iter = 50\nn_train = 64\nn_val = 64\nn_test = 64\n").unwrap();
    let out = dir.path().join("o");
    let run = bin()
        .args([
            "reproduce",
            "known-dictionary",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let json: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["config"]["train_steps"], 50);
    assert_eq!(
        json["config"]["n_latents"], 16,
        "unset fields keep their defaults"
    );
    assert!(json["summary"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["method"] == "mlp-8"));
    std::fs::write(&cfg, "bogus = 1\n").unwrap();
    fails_with(
        &[
            "reproduce",
            "known-dictionary",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &["c.toml", "unknown field `bogus`"],
    );
}

#[test]
fn gap_reports_each_encoder_and_the_grid_writes_its_files() {
    let r = ok_json(&[
        "gap",
        "--latents",
        "12",
        "--dim",
        "8",
        "--k",
        "2",
        "--widths",
        "16",
        "--steps",
        "200",
        "--train-samples",
        "512",
        "--test-samples",
        "128",
    ]);
    let names: Vec<&str> = r["encoders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["encoder"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["linear-relu", "mlp-16", "omp", "fista", "fista+refit"]
    );
    assert!(r["mutual_coherence"].as_f64().unwrap() > 0.0);
    fails_with(
        &["gap", "--latents", "4", "--dim", "8", "--k", "5"],
        &["k = 5"],
    );

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g");
    let run = bin()
        .args([
            "reproduce",
            "amortisation-gap",
            "--quick",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let table = std::fs::read_to_string(out.join("table.md")).unwrap();
    assert!(table.contains("| 2 | 16 | 2 |"), "{table}");
    assert!(std::fs::read_to_string(out.join("gap_k2.svg"))
        .unwrap()
        .contains("linear-relu"));
}
