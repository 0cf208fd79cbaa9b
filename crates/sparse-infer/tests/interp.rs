//! `probe`, `dashboards` → `autointerp` through the command line, on a tiny
//! POS-tagged (Brown-format) corpus harvested by the test from a tiny random
//! Llama GGUF, with a TopK SAE trained on it by `train --config`.

mod common;

use common::{fails_with, ok_json, run, s};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// 40 Brown-format documents (`ca01` … `cb20`: the corpus reader knows Brown by
/// its file names) of 12 sentences `the/at ADJ/jj NOUN/nn VERB/vbd ADV/rb
/// in/in the/at NOUN/nn ./.`, words drawn by a fixed rule: six coarse classes.
fn brown_corpus(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let adj = ["quick", "lazy", "red", "old", "small"];
    let noun = ["fox", "dog", "river", "stone", "model", "house", "tree"];
    let verb = ["jumped", "ran", "slept", "sang", "fell"];
    let adv = ["quickly", "slowly", "often", "never"];
    for doc in 0..40usize {
        let name = format!("c{}{:02}", if doc < 20 { 'a' } else { 'b' }, doc % 20 + 1);
        let mut text = String::new();
        for k in 0..12usize {
            let i = doc * 13 + k * 7;
            text.push_str(&format!(
                "\n\n\tThe/at {}/jj {}/nn {}/vbd {}/rb in/in the/at {}/nn ./.\n",
                adj[i % adj.len()],
                noun[(i / 3) % noun.len()],
                verb[(i / 2) % verb.len()],
                adv[(i + k) % adv.len()],
                noun[(i + 5) % noun.len()],
            ));
        }
        std::fs::write(dir.join(name), text).unwrap();
    }
}

/// The corpus, its harvest (16-token contexts from position 1) and a TopK
/// SAE (64 latents, k 4; a quarter of the documents each for validation and test).
fn setup(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use sparse_lm::testing::{write_tiny_llama_gguf, TinyLlamaConfig};
    let gguf = root.join("tiny.gguf");
    write_tiny_llama_gguf(&gguf, &TinyLlamaConfig::default()).unwrap();
    brown_corpus(&root.join("brown"));
    let store = root.join("store");
    common::harvest_tiny(&gguf, &root.join("brown"), &store);
    let topk = common::train_tiny_topk(root, 4);
    (gguf, store, topk)
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn probe_and_autointerp_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (gguf, store, topk) = setup(root);

    // --- probe: SAE and FISTA codes, k = 1, 2 ---
    let md = root.join("probe.md");
    let out = ok_json(&[
        "probe",
        "--model",
        &s(&topk),
        "--store",
        &s(&store),
        "--lm",
        &s(&gguf),
        "--encoders",
        "sae,fista",
        "--fractions",
        "0.25,0.25",
        "--ks",
        "1,2",
        "--train-tokens",
        "600",
        "--test-tokens",
        "400",
        "--top-n",
        "5",
        "--validation-tokens",
        "64",
        "--fista-iters",
        "50",
        "--markdown",
        &s(&md),
    ]);
    let encoders = out["encoders"].as_array().unwrap();
    assert_eq!(encoders.len(), 2, "{out}");
    assert_eq!(encoders[0]["encoder"], "topk/sae");
    assert_eq!(encoders[1]["encoder"], "topk/fista");
    for e in encoders {
        let tasks = e["tasks"].as_array().unwrap();
        assert_eq!(tasks.len(), 6 * 2, "six coarse classes × two k");
        for (k_num, k) in [(1u64, "1"), (2, "2")] {
            let of_k: Vec<&Value> = tasks
                .iter()
                .filter(|t| t["k"].as_u64() == Some(k_num))
                .collect();
            let (p, n): (Vec<f64>, Vec<f64>) = of_k
                .iter()
                .map(|t| (num(&t["test_accuracy"]), num(&t["test_tokens"])))
                .unzip();
            assert!(p.iter().all(|a| (0.0..=1.0).contains(a)));
            // The interval, recomputed from the per-task numbers.
            let t = p.len() as f64;
            let mean = p.iter().sum::<f64>() / t;
            let var: f64 = p
                .iter()
                .zip(&n)
                .map(|(a, m)| a * (1.0 - a) / m)
                .sum::<f64>()
                / (t * t);
            let ci = &e["test_accuracy_ci95_by_k"][k];
            assert!((num(&ci["mean"]) - mean).abs() < 1e-12, "{ci}");
            assert!((num(&e["mean_test_accuracy_by_k"][k]) - mean).abs() < 1e-12);
            assert!((num(&ci["hi"]) - mean - 1.959_963_984_540_054 * var.sqrt()).abs() < 1e-9);
            assert!((mean - num(&ci["lo"]) - 1.959_963_984_540_054 * var.sqrt()).abs() < 1e-9);
        }
        for what in ["token", "pos"] {
            let m = &e["monosemanticity"][what];
            let ci = &m["ci95"];
            if num(&m["scored_latents"]) > 0.0 {
                assert!(
                    num(&ci["lo"]) <= num(&m["mean"]) && num(&m["mean"]) <= num(&ci["hi"]),
                    "{m}"
                );
                assert!((0.0..=1.0).contains(&num(&m["mean"])));
            }
        }
    }
    let table = std::fs::read_to_string(&md).unwrap();
    assert_eq!(table.matches("| topk/").count(), 2, "{table}");
    assert!(table.contains('['), "intervals in the table: {table}");

    fails_with(
        &[
            "probe",
            "--model",
            &s(&topk),
            "--store",
            &s(&store),
            "--lm",
            &s(&gguf),
            "--fractions",
            "0.1",
        ],
        &["--fractions takes two values"],
    );
    // A store of plain text has no tags to probe.
    let plain = tempfile::tempdir().unwrap();
    let (_, plain_store) = common::tiny_lm_store(plain.path());
    fails_with(
        &[
            "probe",
            "--model",
            &s(&topk),
            "--store",
            &s(&plain_store),
            "--lm",
            &s(&gguf),
        ],
        &["not a POS-tagged (Brown) file"],
    );

    // --- dashboards → autointerp through an OpenAI-compatible stub that says
    // "Yes" to everything: on balanced held-out sets its balanced accuracy is
    // exactly ½ and its recall 1, whatever the features are. ---
    let dash = root.join("dash");
    ok_json(&[
        "dashboards",
        "--model",
        &s(&topk),
        "--store",
        &s(&store),
        "--lm",
        &s(&gguf),
        "--tokens",
        "400",
        "--validation-tokens",
        "64",
        "--fista-iters",
        "50",
        "--no-exports",
        "--out",
        &s(&dash),
    ]);
    let (url, requests) = always_yes_server();
    let ai = root.join("ai");
    let ai_md = root.join("ai.md");
    let args = [
        "autointerp",
        "--records",
        &s(&dash),
        "--endpoint",
        &url,
        "--judge",
        "stub",
        "--api-key-env",
        "",
        "--features",
        "3",
        "--score-positives",
        "2",
        "--out",
        &s(&ai),
        "--markdown",
        &s(&ai_md),
    ];
    let summary = ok_json(&args);
    for enc in ["sae", "fista"] {
        let e = &summary["encoders"][enc];
        assert_eq!(e["features"], 3, "{summary}");
        // Detection always has other features' contexts as negatives.
        let b = &e["detection"]["balanced_accuracy"];
        assert_eq!(num(&b["mean"]), 0.5, "{enc} detection: {b}");
        assert_eq!((num(&b["lo"]), num(&b["hi"])), (0.5, 0.5));
    }
    let results = std::fs::read_to_string(ai.join("results.jsonl")).unwrap();
    assert_eq!(results.lines().count(), 6, "3 features × 2 encoders");
    for line in results.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["explanation"], "the word x", "{r}");
        for scorer in ["detection", "fuzzing"] {
            let d = &r[scorer];
            let (pos, n) = (num(&d["positives"]), num(&d["n"]));
            assert!(pos > 0.0, "{r}");
            assert_eq!(num(&d["accuracy"]), pos / n, "{scorer}: {r}");
            // Fuzzing leaves out an example with no wrong marks to place
            // (`wrong_marks` is None); with no negative left, balanced
            // accuracy is the recall.
            let want = if pos < n { 0.5 } else { 1.0 };
            assert_eq!(num(&d["balanced_accuracy"]), want, "{scorer}: {r}");
        }
    }
    assert!(std::fs::read_to_string(&ai_md).unwrap().contains("fista"));
    // A rerun finds every feature done and asks nothing.
    let before = requests.load(Ordering::SeqCst);
    assert_eq!(ok_json(&args)["encoders"], summary["encoders"]);
    assert_eq!(
        requests.load(Ordering::SeqCst),
        before,
        "resumed run sent requests"
    );

    // Bad input: no judge, two judges, a folder without records.
    fails_with(
        &["autointerp", "--records", &s(&dash), "--out", &s(&ai)],
        &["no judge"],
    );
    // `--local-gguf` takes its file optionally (default: the fetched SmolLM2).
    fails_with(
        &[
            "autointerp",
            "--records",
            &s(&dash),
            "--out",
            &s(&ai),
            "--local-gguf",
            "--endpoint",
            &url,
        ],
        &["not both"],
    );
    let missing = root.join("missing.gguf");
    let bad = run(&[
        "autointerp",
        "--records",
        &s(&dash),
        "--out",
        &s(&ai),
        "--local-gguf",
        &s(&missing),
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("missing.gguf"));
    fails_with(
        &[
            "autointerp",
            "--records",
            &s(root),
            "--endpoint",
            &url,
            "--out",
            &s(&ai),
        ],
        &["no feature records"],
    );
}

/// A chat-completions server on 127.0.0.1 answering "Explanation: the word x"
/// to the explainer and "Yes" to every scorer question; counts requests.
fn always_yes_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut len = 0usize;
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap();
                    }
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            let req: Value = serde_json::from_slice(&body).unwrap();
            let system = req["messages"][0]["content"].as_str().unwrap_or("");
            let reply = if system.starts_with("You explain") {
                "Explanation: the word x"
            } else {
                "Yes"
            };
            let payload = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
                payload.len()
            );
        }
    });
    (url, count)
}
