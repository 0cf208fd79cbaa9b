//! The model on tiny random-weight GGUF files written by the test: shapes, the
//! residual-stream identities, splicing, causality, and errors on bad files.

mod common;

use common::{tiny_model, tokens};
use sparse_lm::testing::{TinyLlamaConfig, WeightDType, TINY_BOS, TINY_EOS};
use sparse_lm::{HookKind, HookPoint, LanguageModel, LmError, LmTokenizer};

fn all_hooks(n_layers: usize) -> Vec<HookPoint> {
    (0..n_layers)
        .flat_map(|l| HookKind::ALL.map(|k| HookPoint::new(l, k)))
        .collect()
}

#[test]
fn loads_and_reports_info() {
    let cfg = TinyLlamaConfig::default();
    let path = tiny_model("info", &cfg);
    let m = LanguageModel::load(&path).unwrap();
    let i = m.info();
    assert_eq!(i.architecture, "llama");
    assert_eq!(i.name, "tiny-llama-test");
    assert_eq!(
        (i.n_layers, i.d_model, i.n_heads, i.n_kv_heads),
        (3, 64, 4, 2)
    );
    assert_eq!((i.head_dim, i.d_ff, i.context_length), (16, 128, 64));
    assert_eq!(i.vocab_size, sparse_lm::testing::tiny_vocab().0.len());
    assert!(i.tied_embeddings);
    assert_eq!(
        (i.bos_token_id, i.eos_token_id),
        (Some(TINY_BOS), Some(TINY_EOS))
    );
    assert_eq!(i.file_sha256.len(), 64);
    assert_eq!(i.path, path);
}

#[test]
fn hook_shapes_and_residual_identities() {
    let cfg = TinyLlamaConfig::default();
    let m = LanguageModel::load(tiny_model("identities", &cfg)).unwrap();
    let (batch, seq, d) = (2, 9, cfg.d_model);
    let toks = tokens(batch * seq, m.info().vocab_size, 1);
    let hooks = all_hooks(cfg.n_layers);
    let acts = m.hook_activations(&toks, batch, seq, &hooks).unwrap();
    assert_eq!(acts.len(), hooks.len());
    for a in &acts {
        assert_eq!(a.len(), batch * seq * d);
        assert!(a.iter().all(|x| x.is_finite()));
    }
    let get = |h: HookPoint| &acts[hooks.iter().position(|x| *x == h).unwrap()];
    for l in 0..cfg.n_layers {
        let (pre, post) = (get(HookPoint::resid_pre(l)), get(HookPoint::resid_post(l)));
        let (attn, mlp) = (get(HookPoint::attn_out(l)), get(HookPoint::mlp_out(l)));
        // Each sub-layer contributes something non-trivial.
        let rms = |v: &[f32]| (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!(
            rms(attn) > 0.05 && rms(mlp) > 0.05,
            "layer {l}: {} {}",
            rms(attn),
            rms(mlp)
        );
        if l + 1 < cfg.n_layers {
            assert_eq!(
                post,
                get(HookPoint::resid_pre(l + 1)),
                "resid_post({l}) != resid_pre({})",
                l + 1
            );
        }
        let scale = post.iter().fold(0f32, |m, x| m.max(x.abs()));
        for i in 0..post.len() {
            let sum = pre[i] + attn[i] + mlp[i];
            assert!(
                (post[i] - sum).abs() <= 1e-5 * scale,
                "layer {l} elem {i}: {} vs {sum}",
                post[i]
            );
        }
    }
    // Asking for one hook alone gives the same values as asking for all.
    let alone = m
        .hook_activations(&toks, batch, seq, &[HookPoint::mlp_out(1)])
        .unwrap();
    assert_eq!(&alone[0], get(HookPoint::mlp_out(1)));
}

#[test]
fn bad_hooks_and_inputs_are_errors() {
    let cfg = TinyLlamaConfig::default();
    let m = LanguageModel::load(tiny_model("badinputs", &cfg)).unwrap();
    let toks = tokens(8, m.info().vocab_size, 2);
    let e = m
        .hook_activations(&toks, 2, 4, &[HookPoint::resid_post(3)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer 3") && e.contains("3 layers"), "{e}");
    let e = m
        .hook_activations(&toks, 3, 4, &[HookPoint::resid_post(0)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("12") && e.contains("found 8"), "{e}");
    let mut bad = toks.clone();
    bad[5] = 100_000;
    let e = m.token_nll(&bad, 2, 4).unwrap_err().to_string();
    assert!(e.contains("100000") && e.contains("vocabulary"), "{e}");
    let long = tokens(65, m.info().vocab_size, 2);
    let e = m.token_nll(&long, 1, 65).unwrap_err().to_string();
    assert!(e.contains("context length 64"), "{e}");
}

#[test]
fn causal_later_tokens_do_not_change_earlier_positions() {
    let cfg = TinyLlamaConfig::default();
    let m = LanguageModel::load(tiny_model("causal", &cfg)).unwrap();
    let (seq, d) = (12, cfg.d_model);
    let a = tokens(seq, m.info().vocab_size, 3);
    let mut b = a.clone();
    b[8] = (b[8] + 1) % m.info().vocab_size as u32;
    let hooks = all_hooks(cfg.n_layers);
    let xa = m.hook_activations(&a, 1, seq, &hooks).unwrap();
    let xb = m.hook_activations(&b, 1, seq, &hooks).unwrap();
    for (h, (ya, yb)) in hooks.iter().zip(xa.iter().zip(&xb)) {
        assert_eq!(ya[..8 * d], yb[..8 * d], "{h}: positions before 8 changed");
        assert_ne!(
            ya[8 * d..],
            yb[8 * d..],
            "{h}: positions from 8 on did not change"
        );
    }
    // Sequences in one batch do not see each other.
    let both: Vec<u32> = a.iter().chain(&b).copied().collect();
    let xab = m.hook_activations(&both, 2, seq, &hooks).unwrap();
    for (x, (ya, yb)) in xab.iter().zip(xa.iter().zip(&xb)) {
        let tol = 1e-5 * ya.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(x[..seq * d]
            .iter()
            .zip(ya)
            .all(|(p, q)| (p - q).abs() <= tol));
        assert!(x[seq * d..]
            .iter()
            .zip(yb)
            .all(|(p, q)| (p - q).abs() <= tol));
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // The forward pass cuts the batch into one group of contexts per thread;
    // stores must not change bits with the machine, so neither may the grouping.
    let cfg = TinyLlamaConfig::default();
    let m = LanguageModel::load(tiny_model("threads", &cfg)).unwrap();
    let (batch, seq) = (5, 11);
    let toks = tokens(batch * seq, m.info().vocab_size, 4);
    let hooks = all_hooks(cfg.n_layers);
    let with_threads = |n: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap();
        pool.install(|| {
            let acts = m.hook_activations(&toks, batch, seq, &hooks).unwrap();
            let nll = m.token_nll(&toks, batch, seq).unwrap();
            (acts, nll)
        })
    };
    let one = with_threads(1);
    for n in [2, 3, 5] {
        assert!(with_threads(n) == one, "{n} threads differ from one");
    }
}

#[test]
fn splicing_itself_is_identity_and_zeros_change_the_loss() {
    let cfg = TinyLlamaConfig::default();
    let m = LanguageModel::load(tiny_model("splice", &cfg)).unwrap();
    let (batch, seq) = (2, 10);
    let toks = tokens(batch * seq, m.info().vocab_size, 4);
    let base = m.token_nll(&toks, batch, seq).unwrap();
    assert_eq!(base.len(), batch * (seq - 1));
    assert!(base.iter().all(|x| x.is_finite() && *x >= 0.0));
    for hook in all_hooks(cfg.n_layers) {
        let mut calls = 0;
        let same = m
            .token_nll_with_splice(&toks, batch, seq, hook, &mut |x| {
                calls += 1;
                assert_eq!(x.len(), batch * seq * cfg.d_model);
                Ok(())
            })
            .unwrap();
        assert_eq!(calls, 1, "{hook}");
        assert_eq!(
            same, base,
            "{hook}: splicing the activation with itself changed the NLL"
        );
        let zeroed = m
            .token_nll_with_splice(&toks, batch, seq, hook, &mut |x| {
                x.fill(0.0);
                Ok(())
            })
            .unwrap();
        let diff = zeroed
            .iter()
            .zip(&base)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            diff > 1e-3,
            "{hook}: zero-ablation did not change the NLL ({diff})"
        );
    }
    // A failing splice surfaces as an error, not a panic.
    let e = m
        .token_nll_with_splice(&toks, batch, seq, HookPoint::resid_post(0), &mut |_| {
            Err(LmError::splice("no SAE"))
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("no SAE"), "{e}");
}

#[test]
fn logits_match_token_nll() {
    let cfg = TinyLlamaConfig {
        tie_embeddings: false,
        ..TinyLlamaConfig::default()
    };
    let m = LanguageModel::load(tiny_model("logits", &cfg)).unwrap();
    assert!(!m.info().tied_embeddings);
    let (batch, seq, v) = (2, 6, m.info().vocab_size);
    let toks = tokens(batch * seq, v, 5);
    let logits = m.logits(&toks, batch, seq).unwrap();
    assert_eq!(logits.len(), batch * seq * v);
    let nll = m.token_nll(&toks, batch, seq).unwrap();
    for b in 0..batch {
        for t in 0..seq - 1 {
            let row = &logits[(b * seq + t) * v..(b * seq + t + 1) * v];
            let mx = row.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x)) as f64;
            let lse = mx + row.iter().map(|x| (*x as f64 - mx).exp()).sum::<f64>().ln();
            let want = lse - row[toks[b * seq + t + 1] as usize] as f64;
            assert!((nll[b * (seq - 1) + t] as f64 - want).abs() < 1e-4);
        }
    }
}

#[test]
fn greedy_generation_is_argmax_of_logits() {
    let cfg = TinyLlamaConfig::default();
    let m = LanguageModel::load(tiny_model("greedy", &cfg)).unwrap();
    let v = m.info().vocab_size;
    let prompt = tokens(5, v, 6);
    let out = m.generate_greedy(&prompt, 4).unwrap();
    assert!(out.len() <= 4);
    let mut seq = prompt.clone();
    for &next in &out {
        let logits = m.logits(&seq, 1, seq.len()).unwrap();
        let last = &logits[(seq.len() - 1) * v..];
        let only_last = m.last_logits(&seq).unwrap();
        let worst = last
            .iter()
            .zip(&only_last)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "last_logits differs from logits' last row by {worst}"
        );
        let argmax = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32;
        assert_eq!(next, argmax);
        seq.push(next);
    }
    assert!(
        m.last_logits(&[]).is_err(),
        "an empty sequence must be refused"
    );
    // A long generation (many cached steps) still follows the uncached argmax.
    let ctx = m.info().context_length;
    let short = tokens(3, v, 11);
    let out = m.generate_greedy(&short, ctx - 3).unwrap();
    assert!(
        out.len() > 8,
        "the test needs many cached steps: {} tokens",
        out.len()
    );
    let mut seq = short.clone();
    for &next in &out {
        let last = m.last_logits(&seq).unwrap();
        let argmax = (0..v).max_by(|&a, &b| last[a].total_cmp(&last[b])).unwrap() as u32;
        assert_eq!(next, argmax, "step {}", seq.len());
        seq.push(next);
    }
    assert!(m.generate_greedy(&short, 0).unwrap().is_empty());
    assert!(
        m.generate_greedy(&prompt, 60).is_err(),
        "exceeding the context must be refused"
    );
}

#[test]
fn q4_1_model_loads_and_runs() {
    let cfg = TinyLlamaConfig {
        weight_dtype: WeightDType::Q4_1,
        seed: 7,
        ..TinyLlamaConfig::default()
    };
    let m = LanguageModel::load(tiny_model("q41", &cfg)).unwrap();
    let toks = tokens(16, m.info().vocab_size, 7);
    let nll = m.token_nll(&toks, 2, 8).unwrap();
    assert!(nll.iter().all(|x| x.is_finite()));
}

#[test]
fn tiny_tokenizer_round_trips_and_knows_specials() {
    let path = tiny_model("tok", &TinyLlamaConfig::default());
    let t = LmTokenizer::from_gguf(&path).unwrap();
    assert_eq!(
        (t.bos_token_id(), t.eos_token_id()),
        (Some(TINY_BOS), Some(TINY_EOS))
    );
    for text in [
        "the theory in 2024: 3.14159",
        "Ünïcödé ✓ and tabs\tand\nnewlines",
        "<|im_start|>the end<|im_end|>",
        "",
    ] {
        let ids = t.encode(text).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), text);
    }
    // Merges apply; digits split one by one; specials are single tokens.
    let ids = t.encode(" the").unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(t.encode("2024").unwrap().len(), 4);
    assert_eq!(t.encode("<|im_end|>").unwrap(), vec![TINY_EOS]);
}

fn load_err(path: &std::path::Path) -> String {
    match LanguageModel::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_files_are_errors_naming_the_path() {
    let dir = common::scratch("badfiles");
    let good = tiny_model("badfiles-src", &TinyLlamaConfig::default());
    let bytes = std::fs::read(&good).unwrap();

    let not_gguf = dir.join("not-gguf.bin");
    std::fs::write(&not_gguf, b"PK\x03\x04 this is a zip, not a model").unwrap();
    let e = load_err(&not_gguf);
    assert!(
        e.contains(&not_gguf.display().to_string()) && e.contains("not a GGUF file"),
        "{e}"
    );
    assert!(e.contains("\"GGUF\"") && e.contains("PK"), "{e}");

    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = load_err(&empty);
    assert!(
        e.contains(&empty.display().to_string()) && e.contains("empty"),
        "{e}"
    );

    // Cut in the middle of the tensor data, and in the middle of the header.
    for (name, len) in [("cut-data.gguf", bytes.len() / 2), ("cut-header.gguf", 200)] {
        let cut = dir.join(name);
        std::fs::write(&cut, &bytes[..len]).unwrap();
        let e = load_err(&cut);
        assert!(
            e.contains(&cut.display().to_string()) && e.contains("truncated"),
            "{name}: {e}"
        );
        assert!(e.contains(&format!("({len} bytes)")), "{name}: {e}");
        let e = LmTokenizer::from_gguf(&cut).unwrap_err().to_string();
        assert!(
            e.contains(&cut.display().to_string()) && e.contains("truncated"),
            "{name}: {e}"
        );
    }
    // Every prefix length fails cleanly (no panic), at 1 KiB steps.
    for len in (0..bytes.len()).step_by(1024) {
        let cut = dir.join("cut.gguf");
        std::fs::write(&cut, &bytes[..len]).unwrap();
        assert!(
            LanguageModel::load(&cut).is_err(),
            "prefix of {len} bytes loaded"
        );
    }

    let missing = dir.join("does-not-exist.gguf");
    let e = load_err(&missing);
    assert!(e.contains(&missing.display().to_string()), "{e}");
}

#[test]
fn wrong_architecture_and_missing_tensor_are_named() {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    let dir = common::scratch("arch");
    // Re-write the tiny model's content with one change at a time.
    let src = tiny_model("arch-src", &TinyLlamaConfig::default());
    let mut f = std::fs::File::open(&src).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|k| {
            (
                k.clone(),
                content
                    .tensor(&mut f, k, &candle_core::Device::Cpu)
                    .unwrap(),
            )
        })
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let write = |name: &str, md: &[(String, Value)], ts: &[(&str, &QTensor)]| {
        let p = dir.join(name);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        let md: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut w, &md, ts).unwrap();
        drop(w);
        p
    };
    let all: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let md: Vec<(String, Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let with = |key: &str, value: &str| -> Vec<(String, Value)> {
        md.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    if k == key {
                        Value::String(value.into())
                    } else {
                        v.clone()
                    },
                )
            })
            .collect()
    };

    let p = write("gemma.gguf", &with("general.architecture", "gemma3"), &all);
    let e = load_err(&p);
    assert!(
        e.contains(&p.display().to_string()) && e.contains("\"llama\"") && e.contains("\"gemma3\""),
        "{e}"
    );

    let fewer: Vec<_> = all
        .iter()
        .filter(|(k, _)| *k != "blk.1.ffn_up.weight")
        .copied()
        .collect();
    let p = write("missing.gguf", &md, &fewer);
    let e = load_err(&p);
    assert!(
        e.contains(&p.display().to_string()) && e.contains("missing tensor blk.1.ffn_up.weight"),
        "{e}"
    );
    assert!(e.contains("(128, 64)"), "{e}");

    let z =
        candle_core::Tensor::zeros((16, 64), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    let z = QTensor::quantize(&z, GgmlDType::F32).unwrap();
    let wrong: Vec<_> = all
        .iter()
        .map(|&(k, t)| (k, if k == "blk.0.attn_k.weight" { &z } else { t }))
        .collect();
    let p = write("shape.gguf", &md, &wrong);
    let e = load_err(&p);
    assert!(
        e.contains("blk.0.attn_k.weight") && e.contains("expected shape (32, 64), found (16, 64)"),
        "{e}"
    );

    let p = write("spm.gguf", &with("tokenizer.ggml.model", "llama"), &all);
    let e = LmTokenizer::from_gguf(&p).unwrap_err().to_string();
    assert!(
        e.contains(&p.display().to_string())
            && e.contains("tokenizer model")
            && e.contains("\"gpt2\""),
        "{e}"
    );
}
