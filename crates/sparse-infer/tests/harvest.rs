//! `sparse-infer harvest` end to end on a tiny random Llama GGUF written by the test:
//! the store holds exactly the model's activations of the right contexts, a SIGKILLed
//! harvest resumes to the same bytes as an uninterrupted one, bad input fails cleanly.

mod common;

use common::{bin, fails_with, ok_json, s};
use sparse_lm::testing::{write_tiny_llama_gguf, TinyLlamaConfig};
use sparse_lm::{HookPoint, LanguageModel, LmTokenizer};
use sparse_store::ActivationStore;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Three documents of different lengths (one shorter than a context).
fn write_text(dir: &Path) -> Vec<PathBuf> {
    let docs = [
        (
            "a.txt",
            "The quick brown fox jumps over the lazy dog. ".repeat(12),
        ),
        ("b.txt", "tiny".to_string()),
        (
            "c.txt",
            "Sparse codes, dense dictionaries; 12345 numbers! ".repeat(9),
        ),
    ];
    let folder = dir.join("text");
    std::fs::create_dir_all(&folder).unwrap();
    docs.iter()
        .map(|(name, text)| {
            let p = folder.join(name);
            std::fs::write(&p, text).unwrap();
            p
        })
        .collect()
}

fn tiny_model(dir: &Path, cfg: &TinyLlamaConfig) -> PathBuf {
    let path = dir.join("tiny.gguf");
    write_tiny_llama_gguf(&path, cfg).unwrap();
    path
}

#[test]
fn harvest_stores_the_models_activations_of_consecutive_contexts_per_document() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), &TinyLlamaConfig::default());
    let text = write_text(dir.path());
    let out = dir.path().join("store");
    let (context, first) = (16usize, 2usize);
    let summary = ok_json(&[
        "harvest",
        "--model",
        &s(&model_path),
        "--text",
        &s(text[0].parent().unwrap()),
        "--layer",
        "1",
        "--hook",
        "mlp_out",
        "--context",
        &context.to_string(),
        "--first-position",
        &first.to_string(),
        "--tokens",
        "1000000",
        "--batch",
        "3",
        "--shard-contexts",
        "4",
        "--out",
        &s(&out),
    ]);
    assert_eq!(summary["hook"], "blocks.1.hook_mlp_out");
    assert_eq!(summary["text_exhausted"], true);

    // The expected contexts, counted independently: each document's tokens cut into
    // whole windows, documents in name order.
    let tokenizer = LmTokenizer::from_gguf(&model_path).unwrap();
    let mut expected: Vec<(u32, u64, Vec<u32>)> = Vec::new();
    for (doc, path) in text.iter().enumerate() {
        let ids = tokenizer
            .encode(&std::fs::read_to_string(path).unwrap())
            .unwrap();
        for (w, window) in ids.chunks_exact(context).enumerate() {
            expected.push((doc as u32, (w * context) as u64, window.to_vec()));
        }
    }
    assert!(expected.len() > 8, "the test needs several shards");
    assert!(
        expected.iter().all(|(doc, ..)| *doc != 1),
        "b.txt is shorter than a context"
    );

    let store = ActivationStore::open(&out).unwrap();
    assert!(store.is_complete());
    assert_eq!(store.contexts(), expected.len() as u64);
    assert_eq!(store.rows(), (expected.len() * (context - first)) as u64);
    assert_eq!(summary["rows"], store.rows());

    let model = LanguageModel::load(&model_path).unwrap();
    let d = model.info().d_model;
    let hook = HookPoint::mlp_out(1);
    let mut checked = 0;
    for shard_index in 0..store.num_shards() {
        let shard = store.read_shard(shard_index).unwrap();
        for c in 0..shard.contexts() {
            let global = shard.first_context as usize + c;
            let (doc, offset, tokens) = &expected[global];
            assert_eq!(shard.context_tokens(c), &tokens[..], "context {global}");
            assert_eq!(shard.doc_index[c], *doc);
            assert_eq!(shard.doc_offset[c], *offset);
            // The same context run alone: batching must not change the activations.
            let alone = &model.hook_activations(tokens, 1, context, &[hook]).unwrap()[0];
            let stored = shard.context_activations(c);
            for p in first..context {
                for j in 0..d {
                    let (a, b) = (stored.get(p - first, j), alone[p * d + j]);
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "context {global} position {p}: {a} vs {b}"
                    );
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, expected.len());
}

#[test]
fn a_killed_harvest_resumes_to_the_same_store_as_an_uninterrupted_one() {
    let dir = tempfile::tempdir().unwrap();
    // Wide enough that the harvest takes seconds, so the kill lands mid-way.
    let cfg = TinyLlamaConfig {
        n_layers: 4,
        d_model: 256,
        n_heads: 4,
        n_kv_heads: 2,
        d_ff: 1024,
        context_length: 64,
        ..TinyLlamaConfig::default()
    };
    let model_path = tiny_model(dir.path(), &cfg);
    let corpus = dir.path().join("long.txt");
    std::fs::write(
        &corpus,
        "Resumable harvests lose nothing and repeat nothing. ".repeat(4000),
    )
    .unwrap();
    let args = |out: &Path| -> Vec<String> {
        [
            "harvest",
            "--model",
            &s(&model_path),
            "--text",
            &s(&corpus),
            "--layer",
            "3",
            "--context",
            "64",
            "--tokens",
            "60000",
            "--batch",
            "4",
            "--shard-contexts",
            "10",
            "--out",
            &s(out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let whole = dir.path().join("whole");
    let whole_args = args(&whole);
    ok_json(&whole_args.iter().map(String::as_str).collect::<Vec<_>>());

    let killed = dir.path().join("killed");
    let mut child = bin()
        .args(args(&killed))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !killed.join("shard-00002.safetensors").exists() {
        assert!(Instant::now() < deadline, "the harvest wrote no shards");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the harvest ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let at_kill = ActivationStore::open(&killed).unwrap();
    assert!(!at_kill.is_complete(), "killed before the end");
    let stored_at_kill = at_kill.contexts();
    assert!(
        stored_at_kill >= 20,
        "two shards were committed: {stored_at_kill}"
    );

    let resumed_args = args(&killed);
    let resumed = ok_json(&resumed_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(resumed["resumed_from_contexts"], stored_at_kill);

    // Byte-identical: the manifests agree and every shard file is the same.
    let a = ActivationStore::open(&whole).unwrap();
    let b = ActivationStore::open(&killed).unwrap();
    assert_eq!(a.manifest().shards.len(), b.manifest().shards.len());
    assert_eq!(a.rows(), b.rows());
    for i in 0..a.num_shards() {
        assert_eq!(
            std::fs::read(a.shard_path(i)).unwrap(),
            std::fs::read(b.shard_path(i)).unwrap(),
            "shard {i}"
        );
    }
    // A second run on a complete store is a no-op that reports the store.
    let again = ok_json(&resumed_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(again["rows"], a.rows());
    assert_eq!(again["model_tokens"], 0);
}

#[test]
fn bad_harvest_input_fails_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path(), &TinyLlamaConfig::default());
    let text = write_text(dir.path());
    let out = dir.path().join("store");
    let not_gguf = dir.path().join("model.gguf");
    std::fs::write(&not_gguf, b"PK\x03\x04 definitely a zip").unwrap();
    let base = |model: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "harvest",
            "--model",
            &s(model),
            "--text",
            &s(&text[0]),
            "--out",
            &s(&out),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        v.extend(extra.iter().map(|a| a.to_string()));
        v
    };
    let check = |args: Vec<String>, needles: &[&str]| {
        fails_with(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            needles,
        )
    };
    check(
        base(&not_gguf, &["--layer", "1"]),
        &["model.gguf", "not a GGUF"],
    );
    check(
        base(&dir.path().join("absent.gguf"), &[]),
        &["absent.gguf", "fetch-assets"],
    );
    check(
        base(&model_path, &["--layer", "7"]),
        &["blocks.7.hook_resid_post", "3 layers"],
    );
    check(
        base(&model_path, &["--hook", "resid_middle"]),
        &["resid_middle"],
    );
    check(
        base(
            &model_path,
            &["--layer", "1", "--context", "16", "--first-position", "16"],
        ),
        &["first_position"],
    );
    check(
        base(&model_path, &["--layer", "1", "--context", "1000"]),
        &["context", "64"],
    );
    let mut missing_text = base(&model_path, &["--layer", "1", "--context", "16"]);
    missing_text[4] = s(&dir.path().join("nope.txt"));
    check(missing_text, &["nope.txt"]);

    // A store is never reused with other settings: the field is named.
    let with_layer = |layer: &'static str| {
        base(
            &model_path,
            &[
                "--context",
                "16",
                "--tokens",
                "30",
                "--shard-contexts",
                "1",
                "--layer",
                layer,
            ],
        )
    };
    ok_json(
        &with_layer("1")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    check(
        with_layer("2"),
        &["manifest.json", "hook", "blocks.2.hook_resid_post"],
    );
}
