//! `sparse-infer train` and `encode --model`: resumed runs end bit-identical
//! to uninterrupted ones, a killed run never leaves a partial checkpoint,
//! damaged checkpoints give one-line errors.

use serde_json::Value;
use sparse_core::checkpoint;
use sparse_core::io::read_npy;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{bin, fails_with, ok_json, run, s, synth};

/// Every trainable case: (name, method, method-specific lines). `DICT` stands
/// for the synthetic data's true dictionary (LISTA's frozen one).
const CASES: &[(&str, &str, &str)] = &[
    ("sae", "sae", "lambda = 0.02\nlr = 0.003\n"),
    ("mlp", "mlp", "hidden = 12\nlr = 0.003\n"),
    ("topk", "topk", "k = 3\nlr = 0.003\n"),
    ("batchtopk", "batchtopk", "k = 3\nlr = 0.003\n"),
    (
        "jumprelu",
        "jumprelu",
        "threshold = 0.05\nbandwidth = 0.05\nl0_coefficient = 0.01\nlr = 0.003\n",
    ),
    (
        "matryoshka",
        "matryoshka",
        "k = 3\nwidths = [4, 16]\nlr = 0.003\n",
    ),
    ("mp-sae", "mp-sae", "k = 3\nlr = 0.003\n"),
    (
        "sparse-coding",
        "sparse-coding",
        "lambda = 0.05\nfista_iters = 10\n",
    ),
    (
        "lista",
        "lista",
        "dictionary = DICT\nlayers = 4\nlambda = 0.05\n",
    ),
    (
        "sae-minibatch",
        "sae",
        "lambda = 0.02\nlr = 0.003\nbatch_size = 48\n",
    ),
    (
        "sparse-coding-minibatch",
        "sparse-coding",
        "lambda = 0.05\nfista_iters = 10\nbatch_size = 32\n",
    ),
];

/// Writes a config for the case `case` (see [`CASES`]) and returns its path.
fn config(
    dir: &Path,
    name: &str,
    case: &str,
    data: &Path,
    out: &Path,
    steps: u64,
    every: u64,
) -> PathBuf {
    let (_, method, extra) = CASES.iter().find(|c| c.0 == case).expect("known case");
    let dictionary = format!("{:?}", s(&data.with_file_name("dictionary.npy")));
    let text = format!(
        "method = \"{method}\"\ndata = {:?}\nn_latents = 16\nsteps = {steps}\ncheckpoint_every = {every}\nout = {:?}\nseed = 7\n{}",
        s(data),
        s(out),
        extra.replace("DICT", &dictionary)
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn train(cfg: &Path) -> Value {
    ok_json(&["train", "--config", &s(cfg)])
}

/// The model's full state as JSON (weights, optimiser moments, RNG, counters).
fn full_state(dir: &Path) -> (Value, u64) {
    let c = checkpoint::load(dir).unwrap();
    (serde_json::to_value(&c.model).unwrap(), c.step)
}

#[test]
fn resumed_training_is_bit_identical_to_uninterrupted_for_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    for &(method, _, _) in CASES {
        let full = tmp.path().join(format!("{method}-full"));
        let split = tmp.path().join(format!("{method}-split"));
        let a = train(&config(tmp.path(), "a.toml", method, &data, &full, 200, 50));
        assert_eq!(a["steps"], 200);
        assert_eq!(a["resumed_from"], 0);
        assert_eq!(a["dictionary_shape"], serde_json::json!([16, 8]));
        assert!(a["final_loss"].as_f64().unwrap().is_finite());
        let b1 = train(&config(
            tmp.path(),
            "b.toml",
            method,
            &data,
            &split,
            120,
            50,
        ));
        assert_eq!(b1["steps"], 120);
        let b2 = train(&config(
            tmp.path(),
            "b.toml",
            method,
            &data,
            &split,
            200,
            50,
        ));
        assert_eq!(b2["resumed_from"], 120, "{method}");
        assert_eq!(a["final_loss"], b2["final_loss"], "{method}");
        assert_eq!(
            std::fs::read(full.join("model.safetensors")).unwrap(),
            std::fs::read(split.join("model.safetensors")).unwrap(),
            "{method}: weights differ"
        );
        assert_eq!(
            full_state(&full),
            full_state(&split),
            "{method}: state differs"
        );
        // Rerunning a finished run changes nothing.
        let again = train(&config(
            tmp.path(),
            "b.toml",
            method,
            &data,
            &split,
            200,
            50,
        ));
        assert_eq!(again["resumed_from"], 200);
        assert_eq!(again["final_loss"], a["final_loss"]);
        assert_state_is_parameters_and_optimiser_only(&full, method);
    }
}

/// `state.json` holds the training state (optimiser moments, counters,
/// RNG), never scratch buffers: it has at most two numbers (Adam's moments)
/// per weight, plus sparse coding's warm-start codes (n × N), plus a little.
fn assert_state_is_parameters_and_optimiser_only(dir: &Path, case: &str) {
    fn count_numbers(v: &Value) -> usize {
        match v {
            Value::Number(_) => 1,
            Value::Array(a) => a.iter().map(count_numbers).sum(),
            Value::Object(o) => o.values().map(count_numbers).sum(),
            _ => 0,
        }
    }
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let weights: usize = state["tensors"]
        .as_object()
        .unwrap()
        .values()
        .map(|shape| {
            shape
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .product::<usize>()
        })
        .sum();
    let warm_start = if case.starts_with("sparse-coding") {
        128 * 16
    } else {
        0
    };
    let numbers = count_numbers(&state["model"]);
    assert!(
        numbers <= 2 * weights + warm_start + 300,
        "{case}: state.json holds {numbers} numbers for {weights} weights"
    );
}

/// Methods killed (one per kind of trajectory: full batch, seeded
/// mini-batches, alternating minimisation) and kills per method, at seeded
/// random moments; docs/reliability.md quotes the counts.
const KILLED: &[&str] = &["sae", "sae-minibatch", "sparse-coding-minibatch"];
const KILLS_PER_METHOD: usize = 3;

#[test]
fn sigkill_never_leaves_a_partial_checkpoint_and_the_resume_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    // xorshift64: the kill moments are random but the same in every CI run.
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut delay = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        10 + rng % 400
    };
    for &case in KILLED {
        let out = tmp.path().join(format!("killed-{case}"));
        let long = config(tmp.path(), "long.toml", case, &data, &out, 100_000_000, 1);
        for _ in 0..KILLS_PER_METHOD {
            let mut child = bin()
                .args(["train", "--config", &s(&long)])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let start = Instant::now();
            while !out.join("state.json").exists() && start.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(delay()));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            // Whatever the moment of the kill, a complete checkpoint loads.
            let (_, step) = full_state(&out);
            assert!(step >= 1);
            let names: Vec<String> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names.len(), 2, "{case}: {names:?}");
        }
        let (_, step) = full_state(&out);
        let target = step + 25;
        let resumed = train(&config(tmp.path(), "r.toml", case, &data, &out, target, 1));
        assert_eq!(resumed["resumed_from"], step);
        let fresh_out = tmp.path().join(format!("fresh-{case}"));
        let fresh = train(&config(
            tmp.path(),
            "f.toml",
            case,
            &data,
            &fresh_out,
            target,
            1000,
        ));
        assert_eq!(fresh["final_loss"], resumed["final_loss"], "{case}");
        assert_eq!(
            std::fs::read(out.join("model.safetensors")).unwrap(),
            std::fs::read(fresh_out.join("model.safetensors")).unwrap(),
            "{case}"
        );
        assert_eq!(full_state(&out), full_state(&fresh_out), "{case}");
        // The finished run left no temporary or set-aside folder behind.
        let stray: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(stray.is_empty(), "{case}: {stray:?}");
    }
}

#[test]
fn damaged_or_mismatched_checkpoints_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    let x = s(&data);
    let z = s(&tmp.path().join("z.npy"));
    let fresh = |name: &str| {
        let out = tmp.path().join(name);
        train(&config(
            tmp.path(),
            &format!("{name}.toml"),
            "topk",
            &data,
            &out,
            20,
            10,
        ));
        out
    };

    // Truncated weights.
    let out = fresh("trunc");
    let st = out.join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(
        &["encode", "--model", &s(&out), "--input", &x, "--out", &z],
        &["model.safetensors", "truncated"],
    );
    let cfg = config(tmp.path(), "trunc.toml", "topk", &data, &out, 40, 10);
    fails_with(
        &["train", "--config", &s(&cfg)],
        &["model.safetensors", "resuming"],
    );

    // Missing state.json.
    let out = fresh("nostate");
    std::fs::remove_file(out.join("state.json")).unwrap();
    fails_with(
        &["encode", "--model", &s(&out), "--input", &x, "--out", &z],
        &["state.json"],
    );

    // A shape in state.json that disagrees with the weights.
    let out = fresh("shape");
    let sp = out.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&sp).unwrap()).unwrap();
    state["tensors"]["W_dec"] = serde_json::json!([16, 9]);
    std::fs::write(&sp, serde_json::to_vec(&state).unwrap()).unwrap();
    fails_with(
        &["encode", "--model", &s(&out), "--input", &x, "--out", &z],
        &["model.safetensors", "W_dec", "[16, 9]", "[16, 8]"],
    );

    // Garbage state.json.
    let out = fresh("garbage");
    std::fs::write(out.join("state.json"), b"{not json").unwrap();
    fails_with(
        &["encode", "--model", &s(&out), "--input", &x, "--out", &z],
        &["state.json"],
    );

    // A different configuration or different data in the same `out` is refused.
    let out = fresh("other");
    let cfg = config(tmp.path(), "other2.toml", "topk", &data, &out, 40, 10);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("seed = 7", "seed = 8");
    std::fs::write(&cfg, text).unwrap();
    fails_with(
        &["train", "--config", &s(&cfg)],
        &["different configuration"],
    );
    let other_data = tmp.path().join("other.npy");
    let mut d = std::fs::read(&data).unwrap();
    let last = d.len() - 1;
    d[last] ^= 1;
    std::fs::write(&other_data, d).unwrap();
    let cfg = config(tmp.path(), "other3.toml", "topk", &other_data, &out, 40, 10);
    fails_with(&["train", "--config", &s(&cfg)], &["SHA-256"]);

    // Options of another method, missing required options, impossible batches.
    let bad = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        std::fs::write(
            &p,
            format!("data = {x:?}\nn_latents = 16\nsteps = 1\nout = \"o\"\n{text}"),
        )
        .unwrap();
        p
    };
    let cfg = bad("k-for-sae.toml", "method = \"sae\"\nk = 3\n");
    fails_with(
        &["train", "--config", &s(&cfg)],
        &["k-for-sae.toml", "`k` does not apply to method sae", "topk"],
    );
    let cfg = bad("lista-no-d.toml", "method = \"lista\"\n");
    fails_with(
        &["train", "--config", &s(&cfg)],
        &["lista needs `dictionary`"],
    );
    let wrong_d = tmp.path().join("wrong-d.npy");
    sparse_core::io::write_npy(
        &wrong_d,
        &sparse_core::matrix::Matrix::zeros(15, 8),
        sparse_core::io::NpyDtype::F32,
    )
    .unwrap();
    let cfg = bad(
        "lista-wrong-d.toml",
        &format!("method = \"lista\"\ndictionary = {:?}\n", s(&wrong_d)),
    );
    fails_with(
        &["train", "--config", &s(&cfg)],
        &["wrong-d.npy", "(15, 8)", "(16, 8)"],
    );
    let cfg = bad(
        "big-batch.toml",
        "method = \"topk\"\nk = 2\nbatch_size = 129\n",
    );
    fails_with(
        &["train", "--config", &s(&cfg)],
        &["batch_size = 129", "128 samples", "data.npy"],
    );
    let cfg = bad("no-k.toml", "method = \"mp-sae\"\n");
    fails_with(&["train", "--config", &s(&cfg)], &["mp-sae needs `k`"]);

    // Unknown configuration fields.
    let cfg = tmp.path().join("unknown.toml");
    std::fs::write(&cfg, format!("method = \"sae\"\ndata = {x:?}\nn_latents = 4\nsteps = 1\nout = \"o\"\nlearning_rate = 1.0\n")).unwrap();
    fails_with(
        &["train", "--config", &s(&cfg)],
        &["unknown field", "learning_rate"],
    );
}

#[test]
fn encode_with_model_equals_the_models_own_encode() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path());
    let x = read_npy(&data).unwrap();
    for &(method, name, _) in CASES {
        let out = tmp.path().join(method);
        train(&config(tmp.path(), "c.toml", method, &data, &out, 30, 10));
        let zpath = tmp.path().join(format!("{method}-z.npy"));
        let r = ok_json(&[
            "encode",
            "--model",
            &s(&out),
            "--input",
            &s(&data),
            "--out",
            &s(&zpath),
        ]);
        assert_eq!(r["shape"], serde_json::json!([128, 16]));
        let z = read_npy(&zpath).unwrap();
        let c = checkpoint::load(&out).unwrap();
        assert_eq!(c.method, name);
        assert_eq!(z, c.model.encode(&x).unwrap(), "{method}");
    }
    // --model excludes the per-sample solver's options.
    let out = tmp.path().join("sae");
    let z = s(&tmp.path().join("z.npy"));
    let r = run(&[
        "encode",
        "--model",
        &s(&out),
        "--method",
        "fista",
        "--input",
        &s(&data),
        "--out",
        &z,
    ]);
    assert!(!r.status.success());
}
