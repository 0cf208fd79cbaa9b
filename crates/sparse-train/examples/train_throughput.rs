//! Training throughput (tokens/s) of the streaming trainer on a store of
//! random-ish activations: `cargo run --release -p sparse-train --example
//! train_throughput -- [d] [width] [batch] [steps] [contexts]` (defaults 576, 4608,
//! 4096, 20, 400). Builds the store in a temporary folder, then times a ReLU
//! SAE and a TopK (k = 32) SAE separately, each on the same batches.

use sparse_train::{train, RunConfig};
use std::time::Instant;

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let get = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (d, width, batch, steps, contexts) = (
        get(0, 576),
        get(1, 4608),
        get(2, 4096),
        get(3, 20),
        get(4, 400),
    );
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let t = Instant::now();
    // 129-token contexts (128 rows each), activations Z·D + 1 from 1024 true features, 32 active.
    sparse_train::testing::write_synthetic_store(&store, d, 1024, 32, contexts as u64, 129, 1.0, 1)
        .unwrap();
    eprintln!(
        "store: {} rows in {:.1} s",
        contexts * 128,
        t.elapsed().as_secs_f64()
    );
    for (name, model) in [
        (
            "relu",
            serde_json::json!({"name": "relu", "method": "sae", "n_latents": width}),
        ),
        (
            "topk32",
            serde_json::json!({"name": "topk32", "method": "topk", "n_latents": width, "k": 32}),
        ),
    ] {
        let out = tmp.path().join(name);
        let cfg: RunConfig = serde_json::from_value(serde_json::json!({
            "store": store, "out": out, "steps": steps + 1, "batch_size": batch,
            "checkpoint_every": 1_000_000, "log_every": 1_000_000, "validation": 0.0, "test": 0.05,
            "normalize_activations": "expected_average_only_in", "model": [model],
        }))
        .unwrap();
        // Time from the end of the first step (setup: normalisation sample,
        // geometric median) to the end of the last one (which also logs and
        // writes the one checkpoint; measured apart below).
        let mut first = None;
        let mut last = None;
        let t0 = Instant::now();
        train(&cfg, &mut |p| {
            if p.step == 1 {
                first = Some(Instant::now());
            }
            if p.step == p.total - 1 {
                last = Some(Instant::now());
            }
        })
        .unwrap();
        let end = Instant::now();
        let (f, l) = (first.unwrap(), last.unwrap());
        let tokens = ((steps - 1) * batch) as f64;
        println!(
            "{name}: d={d} width={width} batch={batch}: {:.0} tokens/s over {} steps ({:.3} s/step); setup+first step {:.1} s, last step+log+checkpoint {:.1} s, total {:.1} s",
            tokens / (l - f).as_secs_f64(),
            steps - 1,
            (l - f).as_secs_f64() / (steps - 1) as f64,
            (f - t0).as_secs_f64(),
            (end - l).as_secs_f64(),
            (end - t0).as_secs_f64(),
        );
    }
}
