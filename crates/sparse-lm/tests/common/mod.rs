//! Helpers shared by the integration tests: scratch paths, tiny models, the
//! Python reference, the real model's location, error measures.
#![allow(dead_code)]

use sparse_lm::testing::{write_tiny_llama_gguf, TinyLlamaConfig};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh scratch directory under cargo's per-target temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("sparse-lm-tests")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a tiny model with `cfg` into a fresh scratch dir and returns its path.
pub fn tiny_model(name: &str, cfg: &TinyLlamaConfig) -> PathBuf {
    let path = scratch(name).join("tiny.gguf");
    write_tiny_llama_gguf(&path, cfg).unwrap();
    path
}

/// Deterministic pseudo-random token ids below `vocab`.
pub fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// The real model if present, else prints why the test is skipped.
pub fn real_model(test: &str) -> Option<PathBuf> {
    let p = sparse_lm::assets::default_model_path();
    if p.is_file() {
        Some(p)
    } else {
        println!(
            "skipping {test}: {} is absent (run scripts/fetch-assets)",
            p.display()
        );
        None
    }
}

/// `$SPARSE_INFER_PYTHON` if set and able to import numpy and gguf, else prints why not.
pub fn reference_python(test: &str) -> Option<PathBuf> {
    let Some(py) = std::env::var_os("SPARSE_INFER_PYTHON").filter(|p| !p.is_empty()) else {
        println!("skipping {test}: SPARSE_INFER_PYTHON is not set");
        return None;
    };
    let ok = Command::new(&py)
        .args(["-c", "import numpy, gguf"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        Some(PathBuf::from(py))
    } else {
        println!(
            "skipping {test}: {} cannot import numpy and gguf",
            Path::new(&py).display()
        );
        None
    }
}

/// Runs scripts/lm_reference.py on `tokens` (rows of `seq`); returns the output directory.
pub fn run_reference(
    py: &Path,
    gguf: &Path,
    tokens: &[u32],
    seq: usize,
    hooks: &[String],
    nll: bool,
    dir: &Path,
) -> PathBuf {
    let tok_file = dir.join("tokens.txt");
    let lines: Vec<String> = tokens
        .chunks(seq)
        .map(|r| {
            r.iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    std::fs::write(&tok_file, lines.join("\n") + "\n").unwrap();
    let out = dir.join("reference");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lm_reference.py");
    let mut cmd = Command::new(py);
    cmd.arg(&script)
        .arg(gguf)
        .arg(&tok_file)
        .arg(&out)
        .args(hooks);
    if nll {
        cmd.arg("--nll");
    }
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "reference failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Reads a reference `.npy` as a flat f32 vector.
pub fn read_npy(path: &Path) -> Vec<f32> {
    sparse_core::io::npy::read_npy(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .as_slice()
        .to_vec()
}

/// max|a − b| / max|b|: the error relative to the activation's scale.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    let den = b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max);
    num / den.max(f64::MIN_POSITIVE)
}

/// Worst per-row relative error: max over rows r of max|a_r − b_r| / max|b_r|.
/// Stricter than [`rel_err`] when one row (position 0's attention sink) dwarfs the others.
pub fn row_rel_err(a: &[f32], b: &[f32], d: usize) -> f64 {
    a.chunks(d)
        .zip(b.chunks(d))
        .map(|(x, y)| rel_err(x, y))
        .fold(0.0, f64::max)
}
