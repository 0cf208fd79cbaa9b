//! The streaming trainer end to end on tiny stores written by the tests.

use sparse_core::checkpoint;
use sparse_store::{ActivationStore, BatchOptions, ShuffledBatches, Split, Splits};
use sparse_train::testing::write_synthetic_store;
use sparse_train::{evaluate, stored_run, train, train_until, EvalOptions, ModelSpec, RunConfig};
use std::path::Path;

fn spec(toml_like: serde_json::Value) -> ModelSpec {
    serde_json::from_value(toml_like).unwrap()
}

fn sae(name: &str) -> ModelSpec {
    spec(serde_json::json!({
        "name": name, "method": "sae", "n_latents": 32, "lr": 3e-3,
        "l1_coefficient": 0.02, "l1_warm_up_steps": 20, "lr_warm_up_steps": 10, "lr_decay_steps": 20
    }))
}

fn topk(name: &str) -> ModelSpec {
    spec(serde_json::json!({
        "name": name, "method": "topk", "n_latents": 32, "k": 3, "lr": 3e-3,
        "lr_warm_up_steps": 10, "seed": 1
    }))
}

fn run(store: &Path, out: &Path, steps: u64, models: Vec<ModelSpec>) -> RunConfig {
    serde_json::from_value(serde_json::json!({
        "store": store, "out": out, "steps": steps, "batch_size": 64,
        "checkpoint_every": 10, "log_every": 5, "shuffle_buffer_rows": 256,
        "norm_estimation_rows": 512, "dead_feature_window": 640,
        "validation": 0.1, "test": 0.1, "model": models,
    }))
    .unwrap()
}

/// d = 16, 32 true features, 3 active, offset 5: 240 contexts × 15 rows.
fn store(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("store");
    write_synthetic_store(&p, 16, 32, 3, 240, 16, 2.0, 7).unwrap();
    p
}

fn files(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        std::fs::read(dir.join("state.json")).unwrap(),
    )
}

fn sorted_lines(p: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

#[test]
fn streaming_training_reduces_error_and_metrics_are_sane() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let out = tmp.path().join("out");
    let cfg = run(&st, &out, 300, vec![sae("sae"), topk("topk")]);
    let mut calls = 0;
    let summary = train(&cfg, &mut |p| {
        calls += 1;
        assert!(p.step <= p.total);
    })
    .unwrap();
    assert_eq!(calls, 300);
    let log: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 2 * 60);
    let store = ActivationStore::open(&st).unwrap();
    for m in &summary.models {
        assert_eq!(m.steps, 300);
        assert_eq!(m.tokens, 300 * 64);
        let lines: Vec<_> = log
            .iter()
            .filter(|r| r["model"] == m.name.as_str())
            .collect();
        let (first, last) = (lines[0], lines[lines.len() - 1]);
        let (m0, m1) = (
            first["mse"].as_f64().unwrap(),
            last["mse"].as_f64().unwrap(),
        );
        eprintln!("{}: mse {m0:.4} -> {m1:.4}, last {last}", m.name);
        assert!(m1 < 0.5 * m0, "{}: mse {m0} -> {m1}", m.name);
        let dead = last["dead_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&dead));
        let ckpt = checkpoint::load(&m.checkpoint).unwrap();
        let r = evaluate(&ckpt, &store, EvalOptions::default()).unwrap();
        eprintln!("{}: held-out {r:?}", m.name);
        assert!(r.explained_variance > 0.4, "{}: {r:?}", m.name);
        assert!((r.normalized_mse - (1.0 - r.explained_variance)).abs() < 1e-12);
        assert!(r.l0 > 0.5 && r.l0 <= 32.0);
        assert!((0.0..=1.0).contains(&r.dead_fraction) && (0.0..=1.0).contains(&r.dense_fraction));
        assert!(r.downstream.is_none());
        if m.name == "topk" {
            assert!(r.l0 <= 3.0 + 1e-9);
        }
        // The schedules reached the log: warm-up over, lr at its base or decaying.
        assert!(last["lr"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn several_models_in_one_pass_equal_separate_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let both = tmp.path().join("both");
    train(
        &run(&st, &both, 30, vec![sae("sae"), topk("topk")]),
        &mut |_| {},
    )
    .unwrap();
    for m in [sae("sae"), topk("topk")] {
        let alone = tmp.path().join(format!("alone-{}", m.name));
        train(&run(&st, &alone, 30, vec![m.clone()]), &mut |_| {}).unwrap();
        assert!(
            files(&both.join(&m.name)) == files(&alone.join(&m.name)),
            "{}",
            m.name
        );
    }
}

#[test]
fn killed_and_resumed_runs_end_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let models = || vec![sae("sae"), topk("topk")];
    let a = tmp.path().join("a");
    train(&run(&st, &a, 50, models()), &mut |_| {}).unwrap();

    let b = tmp.path().join("b");
    let cfg = run(&st, &b, 50, models());
    // Killed after step 25: the checkpoints are at step 20.
    train_until(&cfg, Some(25), &mut |_| {}).unwrap();
    assert_eq!(checkpoint::load(&b.join("sae")).unwrap().step, 20);
    let sae20 = tmp.path().join("sae20");
    copy_dir(&b.join("sae"), &sae20);
    // Resumed, killed again after step 35 (checkpoints at 30) ...
    let s = train_until(&cfg, Some(35), &mut |_| {}).unwrap();
    assert!(s.models.iter().all(|m| m.resumed_from == 20));
    // ... and as if the kill struck between the two models' saves at 30:
    // sae is back at 20, topk at 30. The resume catches sae up.
    std::fs::remove_dir_all(b.join("sae")).unwrap();
    copy_dir(&sae20, &b.join("sae"));
    let s = train(&cfg, &mut |_| {}).unwrap();
    assert_eq!(s.models[0].resumed_from, 20);
    assert_eq!(s.models[1].resumed_from, 30);
    for m in ["sae", "topk"] {
        assert!(files(&a.join(m)) == files(&b.join(m)), "{m}");
    }
    assert_eq!(
        sorted_lines(&a.join("metrics.jsonl")),
        sorted_lines(&b.join("metrics.jsonl"))
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn normalisation_scale_and_raw_space_evaluation() {
    // Every row has ‖x‖² = 10 (a permutation of (1, 3, 0, 0) with signs):
    // s = √(4 / 10) whatever the sample.
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("store");
    let spec = sparse_train::testing::spec(4, 9, 4);
    let mut w = sparse_store::StoreWriter::create(&st, spec).unwrap();
    for c in 0..40u32 {
        let acts: Vec<f32> = (0..8)
            .flat_map(|r| {
                let (i, sign) = (
                    (r + c as usize) % 4,
                    if (r + c as usize).is_multiple_of(3) {
                        -1.0
                    } else {
                        1.0
                    },
                );
                let mut v = [0.0f32; 4];
                v[i] = sign;
                v[(i + 1) % 4] = 3.0;
                v
            })
            .collect();
        w.push_context(&[0; 9], c, 0, &acts).unwrap();
    }
    let store = w.finish().unwrap();
    let out = tmp.path().join("out");
    let mut cfg = run(&st, &out, 3, vec![sae("sae")]);
    cfg.batch_size = 16;
    cfg.model[0].lr = Some(1e-9);
    train(&cfg, &mut |_| {}).unwrap();
    let ckpt = checkpoint::load(&out.join("sae")).unwrap();
    let run = stored_run(&ckpt).unwrap();
    assert!((run.scale - (0.4f32).sqrt()).abs() < 1e-6, "{}", run.scale);
    // b_dec started at the geometric median of the scaled sample and moved
    // by at most ~3 · lr since.
    let sample =
        sparse_train::normalize::sample_train_rows(&store, cfg.splits().unwrap(), 0, 512).unwrap();
    let mut scaled = sample.clone();
    scaled
        .as_mut_slice()
        .iter_mut()
        .for_each(|v| *v *= run.scale);
    let gm = sparse_train::normalize::geometric_median(&scaled, 100, 1e-12).unwrap();
    let b = sparse_train::models::decoder_bias(&ckpt.model);
    for (x, y) in gm.iter().zip(&b) {
        assert!((x - y).abs() < 1e-6, "{gm:?} vs {b:?}");
    }
    // Evaluation on raw activations: encode s·x, divide x̂ by s.
    let r = evaluate(&ckpt, &store, EvalOptions::default()).unwrap();
    let splits = run.splits;
    let all: Vec<sparse_core::Matrix> = ShuffledBatches::new(
        &store,
        BatchOptions {
            batch_size: 1000,
            buffer_rows: 1,
            seed: 0,
            epochs: Some(1),
            split: Split::Test,
            splits,
            drop_last: false,
        },
    )
    .unwrap()
    .map(|b| b.unwrap())
    .collect();
    assert_eq!(all.len(), 1);
    let x = &all[0];
    let mut xs = x.clone();
    xs.as_mut_slice().iter_mut().for_each(|v| *v *= run.scale);
    let z = ckpt.model.encode(&xs).unwrap();
    let mut xh = sparse_train::models::decode(&ckpt.model, &z).unwrap();
    xh.as_mut_slice().iter_mut().for_each(|v| *v /= run.scale);
    let want = sparse_core::metrics::mse(x, &xh).unwrap();
    assert!(
        (r.mse - want).abs() < 1e-9 * want.max(1.0),
        "{} vs {want}",
        r.mse
    );
    assert_eq!(r.tokens, x.rows() as u64);
    let _ = Splits::ALL_TRAIN;
}

#[test]
fn bad_configs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let st = store(tmp.path());
    let out = tmp.path().join("out");
    let err = |cfg: &RunConfig| train(cfg, &mut |_| {}).unwrap_err().to_string();
    let e = err(&run(&tmp.path().join("nope"), &out, 5, vec![sae("a")]));
    assert!(e.contains("nope"), "{e}");
    let mut c = run(&st, &out, 5, vec![sae("a")]);
    c.d_model = Some(576);
    let e = err(&c);
    assert!(e.contains("576") && e.contains("16"), "{e}");
    let mut bad = topk("t");
    bad.k = None;
    let e = err(&run(&st, &out, 5, vec![bad]));
    assert!(e.contains("`k`"), "{e}");
    let mut bad = topk("t");
    bad.l1_coefficient = Some(1.0);
    let e = err(&run(&st, &out, 5, vec![bad]));
    assert!(
        e.contains("l1_coefficient") && e.contains("does not apply"),
        "{e}"
    );
    let e = err(&run(&st, &out, 5, vec![sae("a"), topk("a")]));
    assert!(e.contains("twice"), "{e}");
    let mut c = run(&st, &out, 5, vec![sae("a")]);
    c.batch_size = 1 << 20;
    let e = err(&c);
    assert!(e.contains("batch_size"), "{e}");
    let mut c = run(&st, &out, 5, vec![sae("a")]);
    c.steps = None;
    assert!(err(&c).contains("training_tokens"));
    // A checkpoint of other options is not resumed silently.
    train(&run(&st, &out, 5, vec![sae("a")]), &mut |_| {}).unwrap();
    let mut other = sae("a");
    other.lr = Some(1e-2);
    let e = err(&run(&st, &out, 10, vec![other]));
    assert!(e.contains("model options"), "{e}");
}
