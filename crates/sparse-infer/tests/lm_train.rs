//! `sparse-infer train --config` over an activation store and `evaluate`.

mod common;

use common::{fails_with, ok_json, s};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// d = 16, 32 true features, 3 active, offset 2: 240 contexts × 15 rows.
fn store(dir: &Path) -> PathBuf {
    let p = dir.join("store");
    sparse_train::testing::write_synthetic_store(&p, 16, 32, 3, 240, 16, 2.0, 7).unwrap();
    p
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const HEAD: &str = r#"
store = "store"
train_batch_size_tokens = 64
checkpoint_every = 20
log_every = 10
shuffle_buffer_rows = 256
norm_estimation_rows = 512
"#;

#[test]
fn train_then_evaluate_prints_json() {
    let tmp = tempfile::tempdir().unwrap();
    store(tmp.path());
    let cfg = write(
        tmp.path(),
        "lm.toml",
        &format!(
            r#"{HEAD}
out = "run"
d_in = 16
steps = 100

[[model]]
name = "relu"
architecture = "sae"
d_sae = 32
l1_coefficient = 0.02
lr = 3e-3
lr_warm_up_steps = 10
l1_warm_up_steps = 20

[[model]]
name = "topk"
architecture = "topk"
d_sae = 32
k = 3
lr = 3e-3
"#
        ),
    );
    let summary = ok_json(&["train", "--config", &s(&cfg)]);
    assert_eq!(summary["steps"], 100);
    assert_eq!(summary["models"].as_array().unwrap().len(), 2);
    let log = std::fs::read_to_string(tmp.path().join("run/metrics.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 20);
    for name in ["relu", "topk"] {
        let ckpt = tmp.path().join("run").join(name);
        let r = ok_json(&[
            "evaluate",
            "--model",
            &s(&ckpt),
            "--store",
            &s(&tmp.path().join("store")),
        ]);
        for key in [
            "explained_variance",
            "normalized_mse",
            "mse",
            "l0",
            "dead_fraction",
            "dense_fraction",
            "scale",
        ] {
            assert!(r[key].is_number(), "{name}: {key} in {r}");
        }
        assert!(r["density_histogram"]["counts"].is_array());
        assert_eq!(r["downstream"], Value::Null);
        assert_eq!(r["split"], "test");
        assert!(
            r["explained_variance"].as_f64().unwrap() > 0.0,
            "{name}: {r}"
        );
    }
}

#[test]
fn a_killed_run_resumes_bit_identically() {
    let tmp = tempfile::tempdir().unwrap();
    store(tmp.path());
    let body = |out: &str| {
        format!(
            "{HEAD}\nout = \"{out}\"\nsteps = 1500\n\n[model]\nname = \"t\"\nmethod = \"topk\"\nn_latents = 64\nk = 3\nlr = 1e-3\nlr_decay_steps = 500\n"
        )
    };
    let full = write(tmp.path(), "full.toml", &body("full"));
    ok_json(&["train", "--config", &s(&full)]);
    let killed = write(tmp.path(), "killed.toml", &body("killed"));
    let mut child = common::bin()
        .args(["train", "--config", &s(&killed)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = tmp.path().join("killed/t/state.json");
    let t0 = std::time::Instant::now();
    while !state.exists() && t0.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let was_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    let resumed = ok_json(&["train", "--config", &s(&killed)]);
    let from = resumed["models"][0]["resumed_from"].as_u64().unwrap();
    if was_running {
        assert!(from < 1500, "{resumed}");
    }
    let bytes = |d: &str, f: &str| std::fs::read(tmp.path().join(d).join("t").join(f)).unwrap();
    assert!(bytes("full", "model.safetensors") == bytes("killed", "model.safetensors"));
    assert!(bytes("full", "state.json") == bytes("killed", "state.json"));
    let lines =
        |d: &str| std::fs::read_to_string(tmp.path().join(d).join("metrics.jsonl")).unwrap();
    assert_eq!(lines("full"), lines("killed"));
}

#[test]
fn bad_configurations_fail_with_one_line_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    store(tmp.path());
    let model = "[[model]]\nname = \"a\"\nmethod = \"sae\"\nn_latents = 8\n";
    let cases: &[(&str, String, &[&str])] = &[
        (
            "missing.toml",
            format!("store = \"nowhere\"\nout = \"o\"\nsteps = 5\n{model}"),
            &["missing.toml", "nowhere", "not found"],
        ),
        (
            "dmodel.toml",
            format!("store = \"store\"\nout = \"o\"\nsteps = 5\nd_model = 576\n{model}"),
            &["dmodel.toml", "576", "16"],
        ),
        (
            "unknown.toml",
            format!("store = \"store\"\nout = \"o\"\nsteps = 5\n{model}learning_rate = 1.0\n"),
            &["unknown.toml", "learning_rate"],
        ),
        (
            "nok.toml",
            "store = \"store\"\nout = \"o\"\nsteps = 5\n[[model]]\nname = \"a\"\nmethod = \"topk\"\nn_latents = 8\n".into(),
            &["nok.toml", "`k`"],
        ),
        (
            "nosteps.toml",
            format!("store = \"store\"\nout = \"o\"\n{model}"),
            &["nosteps.toml", "training_tokens"],
        ),
    ];
    for (name, text, needles) in cases {
        let p = write(tmp.path(), name, text);
        fails_with(&["train", "--config", &s(&p)], needles);
    }
    fails_with(
        &[
            "evaluate",
            "--model",
            &s(&tmp.path().join("no-ckpt")),
            "--store",
            &s(&tmp.path().join("store")),
        ],
        &["no-ckpt"],
    );
}
