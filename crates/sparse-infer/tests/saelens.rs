//! `sparse-infer export` and `encode --saelens` / `encode --dictionary SAELENS_DIR`:
//! a trained checkpoint goes out as a SAELens folder, comes back in and
//! encodes exactly as the checkpoint does; bad folders give one-line errors.

use sparse_core::io::read_npy;
use std::path::{Path, PathBuf};

mod common;
use common::{fails_with, ok_json, s, synth};

/// Synthetic data and a trained checkpoint of `method`; returns (data.npy, checkpoint).
fn trained(dir: &Path, method: &str, extra: &str) -> (PathBuf, PathBuf) {
    let data = synth(dir);
    let ckpt = dir.join(format!("ckpt-{method}"));
    let cfg = dir.join(format!("{method}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "method = \"{method}\"\ndata = {:?}\nn_latents = 16\nsteps = 40\nout = {:?}\nseed = 1\n{extra}",
            s(&data),
            s(&ckpt)
        ),
    )
    .unwrap();
    ok_json(&["train", "--config", &s(&cfg)]);
    (data, ckpt)
}

#[test]
fn exported_checkpoints_encode_in_saelens_form_exactly_as_in_ours() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    for (method, extra, arch) in [
        ("topk", "k = 3\nlr = 0.003\n", "topk"),
        ("sae", "lr = 0.003\n", "standard"),
        ("batchtopk", "k = 3\nlr = 0.003\n", "jumprelu"),
        (
            "jumprelu",
            "threshold = 0.05\nbandwidth = 0.05\nl0_coefficient = 0.01\nlr = 0.003\n",
            "jumprelu",
        ),
        (
            "matryoshka",
            "k = 3\nwidths = [4, 16]\nlr = 0.003\n",
            "jumprelu",
        ),
    ] {
        let (data, ckpt) = trained(dir, method, extra);
        let out = dir.join(format!("sae-{method}"));
        let summary = ok_json(&[
            "export",
            "--model",
            &s(&ckpt),
            "--format",
            "saelens",
            "--out",
            &s(&out),
            "--hook-name",
            "blocks.3.hook_resid_post",
        ]);
        assert_eq!(summary["architecture"], arch);
        let cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("cfg.json")).unwrap()).unwrap();
        assert_eq!(cfg["architecture"], arch);
        assert_eq!(cfg["metadata"]["hook_name"], "blocks.3.hook_resid_post");
        assert_eq!(cfg["metadata"]["sae_lens_version"], "6.0.0");
        assert!(out.join("sae_weights.safetensors").is_file());

        let ours = dir.join(format!("z-ours-{method}.npy"));
        let theirs = dir.join(format!("z-saelens-{method}.npy"));
        let recon = dir.join(format!("xhat-{method}.npy"));
        ok_json(&[
            "encode",
            "--model",
            &s(&ckpt),
            "--input",
            &s(&data),
            "--out",
            &s(&ours),
        ]);
        let j = ok_json(&[
            "encode",
            "--saelens",
            &s(&out),
            "--input",
            &s(&data),
            "--out",
            &s(&theirs),
            "--reconstruction",
            &s(&recon),
        ]);
        assert!(j["explained_variance"].as_f64().unwrap() > 0.0, "{j}");
        let (a, b) = (read_npy(&ours).unwrap(), read_npy(&theirs).unwrap());
        assert_eq!(a.shape(), (128, 16));
        assert!(
            a.max_abs_diff(&b) < 1e-5,
            "{method}: {}",
            a.max_abs_diff(&b)
        );
        assert_eq!(read_npy(&recon).unwrap().shape(), (128, 8));

        // Its decoder as the dictionary of FISTA (b_dec subtracted from the data).
        let zf = dir.join(format!("z-fista-{method}.npy"));
        let j = ok_json(&[
            "encode",
            "--method",
            "fista",
            "--dictionary",
            &s(&out),
            "--input",
            &s(&data),
            "--out",
            &s(&zf),
            "--lambda",
            "0.05",
        ]);
        assert_eq!(j["shape"], serde_json::json!([128, 16]));

        // The same as .npy files, and back from the SAELens folder.
        let npy = dir.join(format!("npy-{method}"));
        ok_json(&[
            "export",
            "--model",
            &s(&ckpt),
            "--format",
            "npy",
            "--out",
            &s(&npy),
        ]);
        let npy2 = dir.join(format!("npy2-{method}"));
        ok_json(&[
            "export",
            "--saelens",
            &s(&out),
            "--format",
            "npy",
            "--out",
            &s(&npy2),
        ]);
        let d1 = read_npy(&npy.join("dictionary.npy")).unwrap();
        assert_eq!(d1, read_npy(&npy2.join("dictionary.npy")).unwrap());
        assert_eq!(
            read_npy(&npy.join("b_dec.npy")).unwrap(),
            read_npy(&npy2.join("b_dec.npy")).unwrap()
        );
    }
}

#[test]
fn unexportable_models_and_bad_folders_fail_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (data, ckpt) = trained(dir, "sparse-coding", "lambda = 0.05\nfista_iters = 5\n");
    fails_with(
        &[
            "export",
            "--model",
            &s(&ckpt),
            "--format",
            "saelens",
            "--out",
            &s(&dir.join("x")),
        ],
        &[
            "sparse-coding model has no amortised encoder",
            "--format npy",
        ],
    );
    // The dictionary still exports as .npy.
    ok_json(&[
        "export",
        "--model",
        &s(&ckpt),
        "--format",
        "npy",
        "--out",
        &s(&dir.join("npy")),
    ]);

    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("cfg.json"),
        r#"{"architecture": "gated", "d_in": 8, "d_sae": 16, "dtype": "float32", "metadata": {"sae_lens_version": "6.54.12"}}"#,
    )
    .unwrap();
    let z = s(&dir.join("z.npy"));
    fails_with(
        &[
            "encode",
            "--saelens",
            &s(&bad),
            "--input",
            &s(&data),
            "--out",
            &z,
        ],
        &["cfg.json", "architecture \"gated\" is not supported"],
    );
    std::fs::write(
        bad.join("cfg.json"),
        r#"{"architecture": "standard", "d_in": 8, "d_sae": 16, "dtype": "float32", "metadata": {"sae_lens_version": "6.54.12"}}"#,
    )
    .unwrap();
    fails_with(
        &[
            "encode",
            "--saelens",
            &s(&bad),
            "--input",
            &s(&data),
            "--out",
            &z,
        ],
        &["sae_weights.safetensors"],
    );
    fails_with(
        &[
            "encode",
            "--method",
            "fista",
            "--dictionary",
            &s(&bad),
            "--input",
            &s(&data),
            "--out",
            &z,
        ],
        &["sae_weights.safetensors"],
    );
    // Data of the wrong width.
    let sae_dir = dir.join("sae");
    let (_, topk) = trained(dir, "topk", "k = 3\n");
    ok_json(&[
        "export",
        "--model",
        &s(&topk),
        "--format",
        "saelens",
        "--out",
        &s(&sae_dir),
    ]);
    let wide = dir.join("wide");
    ok_json(&[
        "synth",
        "--latents",
        "16",
        "--dim",
        "9",
        "--k",
        "2",
        "--samples",
        "4",
        "--out",
        &s(&wide),
    ]);
    fails_with(
        &[
            "encode",
            "--saelens",
            &s(&sae_dir),
            "--input",
            &s(&wide.join("data.npy")),
            "--out",
            &z,
        ],
        &["expected shape (n, 8)", "found (4, 9)"],
    );
}
