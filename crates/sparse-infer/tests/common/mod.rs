//! Helpers shared by the command-line test files: run the binary, read its
//! JSON, and check that bad input fails cleanly.

#![allow(dead_code)] // each test file uses a different subset

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `sparse-infer` binary under test.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sparse-infer"))
}

/// Runs the binary with `args` and returns its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

/// Runs `args`, asserts success and parses the last line of stdout as JSON.
pub fn ok_json(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().unwrap()).expect("last line is JSON")
}

/// Asserts a clean failure: exit code 1, no panic, stderr is exactly one
/// `error:` line, and it contains every `needle`.
pub fn fails_with(args: &[&str], needles: &[&str]) {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line, got {stderr}");
    assert!(lines[0].starts_with("error:"), "{args:?}: {stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: {:?} lacks {n:?}", lines[0]);
    }
}

/// A path as the `&str` the binary's arguments want.
pub fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A small synthetic data set (N=16, M=8, K=2, 128 samples, seed 3) in
/// `dir/synth`; returns the path of its data.npy.
pub fn synth(dir: &Path) -> PathBuf {
    let out = dir.join("synth");
    ok_json(&[
        "synth",
        "--latents",
        "16",
        "--dim",
        "8",
        "--k",
        "2",
        "--samples",
        "128",
        "--seed",
        "3",
        "--out",
        &s(&out),
    ]);
    out.join("data.npy")
}

/// 40 one-file documents of 60 words from a 20-word vocabulary in `root/text`,
/// a tiny random Llama GGUF (`root/tiny.gguf`, d_model 64) and its harvest at
/// blocks.1.hook_resid_post into `root/store` (16-token contexts from position 1,
/// 32 contexts per shard); returns `(gguf, store)`.
pub fn tiny_lm_store(root: &Path) -> (PathBuf, PathBuf) {
    use sparse_lm::testing::{write_tiny_llama_gguf, TinyLlamaConfig};
    let gguf = root.join("tiny.gguf");
    write_tiny_llama_gguf(&gguf, &TinyLlamaConfig::default()).unwrap();
    let text = root.join("text");
    std::fs::create_dir_all(&text).unwrap();
    let words = [
        "sparse",
        "codes",
        "the",
        "dictionary",
        "of",
        "atoms",
        "quick",
        "fox",
        "model",
        "layer",
        "residual",
        "stream",
        "tokens",
        "12",
        "345",
        "!",
        "lazy",
        "dog",
        "jumps",
        "over",
    ];
    for doc in 0..40usize {
        let body: Vec<&str> = (0..60)
            .map(|i| words[(doc * 7 + i * (doc % 5 + 3) + i * i) % words.len()])
            .collect();
        std::fs::write(text.join(format!("d{doc:02}.txt")), body.join(" ")).unwrap();
    }
    let store = root.join("store");
    harvest_tiny(&gguf, &text, &store);
    (gguf, store)
}

/// Harvests all of `text` with the tiny GGUF `gguf` at blocks.1.hook_resid_post
/// into `store`: 16-token contexts from position 1, 32 contexts per shard.
pub fn harvest_tiny(gguf: &Path, text: &Path, store: &Path) {
    ok_json(&[
        "harvest",
        "--model",
        &s(gguf),
        "--text",
        &s(text),
        "--layer",
        "1",
        "--hook",
        "resid_post",
        "--context",
        "16",
        "--first-position",
        "1",
        "--tokens",
        "1000000",
        "--batch",
        "8",
        "--shard-contexts",
        "32",
        "--out",
        &s(store),
    ]);
}

/// A TopK SAE (64 latents, `k` active) trained by `train --config` on
/// `root/store` for 300 steps of 64 tokens, a quarter of the documents each
/// for validation and test; returns its checkpoint folder `root/run/topk`.
pub fn train_tiny_topk(root: &Path, k: usize) -> PathBuf {
    let cfg = root.join("lm.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
store = "store"
out = "run"
steps = 300
train_batch_size_tokens = 64
checkpoint_every = 300
log_every = 100
shuffle_buffer_rows = 512
norm_estimation_rows = 512
validation = 0.25
test = 0.25

[[model]]
name = "topk"
architecture = "topk"
d_sae = 64
k = {k}
lr = 3e-3
"#
        ),
    )
    .unwrap();
    ok_json(&["train", "--config", &s(&cfg)]);
    root.join("run").join("topk")
}
