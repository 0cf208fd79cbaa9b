//! The logistic regression and the whole k-sparse probe against scikit-learn
//! (run with `$SPARSE_INFER_PYTHON`, a Python with numpy and scikit-learn;
//! skipped with a message when that is unset).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparse_core::Matrix;
use sparse_probe::logreg::LogisticModel;
use sparse_probe::pos::Coarse;
use sparse_probe::probe::{
    balanced_set, design, probe_tasks, top_k_mean_diff, ProbeOptions, SparseCodes,
};
use std::path::PathBuf;
use std::process::Command;

fn python(test: &str) -> Option<PathBuf> {
    let Some(py) = std::env::var_os("SPARSE_INFER_PYTHON").filter(|p| !p.is_empty()) else {
        println!("skipping {test}: SPARSE_INFER_PYTHON is not set");
        return None;
    };
    let ok = Command::new(&py)
        .args(["-c", "import numpy, sklearn"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!("skipping {test}: {py:?} cannot import numpy and sklearn");
        return None;
    }
    Some(PathBuf::from(py))
}

/// scikit-learn's fit (tight tolerance, so both sides are at the optimum):
/// returns `[w…, b]` and the predictions on `xt`.
fn sklearn_fit(
    py: &PathBuf,
    x: &[f64],
    d: usize,
    y: &[bool],
    c: f64,
    xt: &[f64],
) -> (Vec<f64>, Vec<bool>) {
    let dir = tempfile::tempdir().unwrap();
    let input = serde_json::json!({"x": x, "d": d, "y": y, "c": c, "xt": xt});
    let path = dir.path().join("in.json");
    std::fs::write(&path, input.to_string()).unwrap();
    let script = r#"
import json, sys, numpy as np
from sklearn.linear_model import LogisticRegression
a = json.load(open(sys.argv[1]))
d = a["d"]
x = np.array(a["x"], dtype=np.float64).reshape(-1, d)
xt = np.array(a["xt"], dtype=np.float64).reshape(-1, d)
y = np.array(a["y"], dtype=int)
m = LogisticRegression(penalty="l2", C=a["c"], tol=1e-12, max_iter=100000).fit(x, y)
print(json.dumps({"w": list(m.coef_[0]) + [float(m.intercept_[0])], "p": [bool(v) for v in m.predict(xt)]}))
"#;
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let w = v["w"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_f64().unwrap())
        .collect();
    let p = v["p"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_bool().unwrap())
        .collect();
    (w, p)
}

#[test]
fn logistic_regression_matches_scikit_learn() {
    let Some(py) = python("logistic_regression_matches_scikit_learn") else {
        return;
    };
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for (d, n, c) in [(1, 50, 1.0), (2, 300, 1.0), (5, 400, 0.1), (5, 200, 10.0)] {
        // Sparse non-negative inputs like SAE codes, labels from a noisy linear rule.
        let x: Vec<f64> = (0..n * d)
            .map(|_| {
                if rng.gen::<f64>() < 0.4 {
                    rng.gen::<f64>() * 4.0
                } else {
                    0.0
                }
            })
            .collect();
        let y: Vec<bool> = x
            .chunks(d)
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(j, v)| v * (1.0 - 0.4 * j as f64))
                    .sum::<f64>()
                    + rng.gen::<f64>() * 2.0
                    > 1.8
            })
            .collect();
        let ours = LogisticModel::fit(&x, d, &y, c).unwrap();
        let (theirs, pred) = sklearn_fit(&py, &x, d, &y, c, &x);
        let mut mine = ours.weights.clone();
        mine.push(ours.intercept);
        for (a, b) in mine.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "d={d} n={n} C={c}: ours {mine:?} sklearn {theirs:?}"
            );
        }
        assert_eq!(ours.predict(&x), pred, "d={d}: predictions differ");
        println!("d={d} n={n} C={c}: coefficients agree, ours {mine:?}");
    }
}

#[test]
fn k_sparse_probe_accuracy_matches_scikit_learn_on_the_same_selection() {
    let Some(py) = python("k_sparse_probe_accuracy_matches_scikit_learn_on_the_same_selection")
    else {
        return;
    };
    // Codes where latents 2 and 6 carry a noisy noun signal.
    let classes = [Coarse::Noun, Coarse::Verb, Coarse::Det, Coarse::Prep];
    let make = |seed: u64, n: usize| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let labels: Vec<Option<Coarse>> =
            (0..n).map(|_| Some(classes[rng.gen_range(0..4)])).collect();
        let dense = Matrix::from_fn(n, 20, |i, j| {
            let noun = labels[i] == Some(Coarse::Noun);
            let p = match j {
                2 => {
                    if noun {
                        0.7
                    } else {
                        0.2
                    }
                }
                6 => {
                    if noun {
                        0.5
                    } else {
                        0.3
                    }
                }
                _ => 0.15,
            };
            if rng.gen::<f64>() < p {
                rng.gen::<f32>() * 2.0
            } else {
                0.0
            }
        });
        let mut codes = SparseCodes::new(20);
        codes.push_dense(&dense).unwrap();
        (codes, labels)
    };
    let (trc, trl) = make(1, 2000);
    let (tec, tel) = make(2, 1000);
    let opts = ProbeOptions {
        tasks: vec![Coarse::Noun],
        ks: vec![1, 2, 5],
        max_per_class: 400,
        c: 1.0,
        seed: 9,
    };
    let res = probe_tasks((&trc, &trl), (&tec, &tel), &opts).unwrap();
    let tr = balanced_set(&trl, Coarse::Noun, 400, 9);
    let te = balanced_set(&tel, Coarse::Noun, 400, 10);
    for r in &res {
        assert_eq!(r.latents, top_k_mean_diff(&trc, &tr, r.k));
        let (_, pred) = sklearn_fit(
            &py,
            &design(&trc, &tr, &r.latents),
            r.k,
            &tr.labels,
            1.0,
            &design(&tec, &te, &r.latents),
        );
        let acc = pred.iter().zip(&te.labels).filter(|(a, b)| a == b).count() as f64
            / te.labels.len() as f64;
        assert_eq!(r.test_accuracy, acc, "k={}", r.k);
        println!(
            "k={}: latents {:?}, test accuracy {acc:.4} (sklearn agrees)",
            r.k, r.latents
        );
    }
    assert_eq!(res[0].latents, vec![2]);
    assert!(res[0].test_accuracy > 0.6);
}
