//! `sparse-infer synth --preset`: realistic (SynthSAEBench-style) data sets
//! written as .npy splits, deterministic per seed, with clear errors.

use sparse_core::io::read_npy;
use std::path::Path;

mod common;
use common::{fails_with, ok_json, run, s};

fn read(dir: &Path, name: &str) -> sparse_core::Matrix {
    read_npy(&dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn ood_preset_writes_every_split_consistent_with_its_dictionary() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ood");
    let args = |out: &Path, seed: &str| {
        vec![
            "synth".to_string(),
            "--preset".into(),
            "ood-laptop".into(),
            "--samples".into(),
            "300".into(),
            "--eval-samples".into(),
            "100".into(),
            "--seed".into(),
            seed.into(),
            "--out".into(),
            s(out),
        ]
    };
    let argv = args(&out, "5");
    let meta = ok_json(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(meta["config"]["seed"], 5);
    assert_eq!(meta["dictionary"], serde_json::json!([512, 64]));
    let d = read(&out, "dictionary.npy");
    let b = read(&out, "bias.npy");
    assert_eq!((d.shape(), b.shape()), ((512, 64), (1, 64)));
    for (split, n) in [
        ("train", 300),
        ("val", 100),
        ("test", 100),
        ("test_ood", 100),
    ] {
        let x = read(&out, &format!("{split}/data.npy"));
        let z = read(&out, &format!("{split}/codes.npy"));
        assert_eq!((x.shape(), z.shape()), ((n, 64), (n, 512)), "{split}");
        assert!(
            z.as_slice().iter().all(|&v| v >= 0.0),
            "{split}: negative code"
        );
        // X = Z·D + b exactly (the preset has no noise).
        for i in 0..n {
            for m in 0..64 {
                let want: f32 =
                    b.get(0, m) + (0..512).map(|j| z.get(i, j) * d.get(j, m)).sum::<f32>();
                assert!((x.get(i, m) - want).abs() < 1e-3, "{split} ({i}, {m})");
            }
        }
        let l0 = meta["splits"][split]["mean_l0"].as_f64().unwrap();
        assert!(l0 > 0.5, "{split}: mean L0 {l0}");
    }
    // Compositional OOD codes combine more latents than in-distribution ones.
    let l0 = |split: &str| meta["splits"][split]["mean_l0"].as_f64().unwrap();
    assert!(l0("test_ood") > l0("test"), "{meta}");
    // Deterministic per seed; another seed gives other data.
    let again = tmp.path().join("again");
    ok_json(
        &args(&again, "5")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let other = tmp.path().join("other");
    ok_json(
        &args(&other, "6")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let bytes = |dir: &Path| std::fs::read(dir.join("train/data.npy")).unwrap();
    assert_eq!(bytes(&out), bytes(&again));
    assert_ne!(bytes(&out), bytes(&other));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["preset"], "ood-laptop");
}

#[test]
fn preset_without_ood_takes_its_own_seed_and_writes_no_ood_split() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bench");
    let meta = ok_json(&[
        "synth",
        "--preset",
        "synthsaebench-laptop",
        "--samples",
        "50",
        "--eval-samples",
        "20",
        "--out",
        &s(&out),
    ]);
    assert_eq!(meta["config"]["seed"], 42, "the preset's own seed");
    assert_eq!(read(&out, "train/codes.npy").shape(), (50, 2048));
    assert_eq!(read(&out, "test/data.npy").shape(), (20, 128));
    assert!(!out.join("test_ood").exists());
}

#[test]
fn bad_preset_requests_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = s(&tmp.path().join("x"));
    fails_with(
        &["synth", "--preset", "synthsaebench-1m", "--out", &out],
        &[
            "synthsaebench-1m",
            "synthsaebench-16k",
            "synthsaebench-laptop",
            "ood-laptop",
        ],
    );
    fails_with(
        &[
            "synth",
            "--preset",
            "ood-laptop",
            "--samples",
            "0",
            "--out",
            &out,
        ],
        &["--samples"],
    );
    fails_with(
        &[
            "synth",
            "--preset",
            "ood-laptop",
            "--noise=-1",
            "--out",
            &out,
        ],
        &["noise"],
    );
    // A preset fixes N, M and K: giving them too is a usage error.
    let o = run(&[
        "synth",
        "--preset",
        "ood-laptop",
        "--latents",
        "8",
        "--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be used with"));
    // Without a preset, the paper generator's sizes are still required.
    let o = run(&["synth", "--latents", "8", "--out", &out]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--dim"));
    assert!(!tmp.path().join("x").join("train").exists());
}
