//! The real SmolLM2-135M model (skipped with a message when
//! `scripts/fetch-assets` has not been run): metadata, tokenizer, generation,
//! and the position-0 attention sink.

mod common;

use common::real_model;
use sparse_lm::{assets, HookPoint, LanguageModel, LmTokenizer};

#[test]
fn info_matches_the_pinned_file() {
    let Some(path) = real_model("info_matches_the_pinned_file") else {
        return;
    };
    let m = LanguageModel::load(&path).unwrap();
    let i = m.info();
    assert_eq!(i.architecture, "llama");
    assert_eq!(
        (i.n_layers, i.d_model, i.n_heads, i.n_kv_heads, i.d_ff),
        (30, 576, 9, 3, 1536)
    );
    assert_eq!((i.vocab_size, i.context_length), (49152, 8192));
    assert!(i.tied_embeddings);
    assert_eq!((i.bos_token_id, i.eos_token_id), (Some(1), Some(2)));
    assert_eq!(i.file_sha256, assets::DEFAULT_MODEL_SHA256);
}

#[test]
fn greedy_generation_knows_paris() {
    let Some(path) = real_model("greedy_generation_knows_paris") else {
        return;
    };
    let m = LanguageModel::load(&path).unwrap();
    let tok = LmTokenizer::from_gguf(&path).unwrap();
    let prompt = tok.encode("The capital of France is").unwrap();
    assert_eq!(prompt, vec![504, 3575, 282, 4649, 314]);
    let out = tok.decode(&m.generate_greedy(&prompt, 4).unwrap()).unwrap();
    assert!(out.contains("Paris"), "generated {out:?}");
}

/// Up to `n` chars from the start of each of the first `files` files of a corpus.
fn samples(corpus: &str, files: usize, n: usize) -> Vec<String> {
    let dir = assets::text_dir(corpus);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return vec![];
    };
    let mut paths: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|f| !f.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
        .iter()
        .take(files)
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.chars().take(n).collect())
        .collect()
}

#[test]
fn tokenizer_round_trips_the_corpora() {
    let Some(path) = real_model("tokenizer_round_trips_the_corpora") else {
        return;
    };
    let tok = LmTokenizer::from_gguf(&path).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    let mut checked = 0;
    for corpus in assets::TEXT_CORPORA {
        for text in samples(corpus, 3, 3000) {
            let ids = tok.encode(&text).unwrap();
            assert!(
                ids.len() > text.len() / 10,
                "{corpus}: {} tokens for {} chars",
                ids.len(),
                text.len()
            );
            assert_eq!(tok.decode(&ids).unwrap(), text, "{corpus}");
            checked += 1;
        }
    }
    for text in [
        "Numbers like 1790 and 3.14 split into digits.",
        "  leading spaces,\ttabs\n\nand ünïcödé ✓",
    ] {
        assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
    }
    // Digits are split one by one (SmolLM's pre-tokenizer).
    let ids = tok.encode("1790").unwrap();
    assert_eq!(ids.len(), 4, "{ids:?}");
    println!("round-tripped {checked} corpus samples");
}

#[test]
fn position_zero_is_an_attention_sink() {
    // Why harvesting drops position 0: its residual norm dwarfs all others.
    let Some(path) = real_model("position_zero_is_an_attention_sink") else {
        return;
    };
    let m = LanguageModel::load(&path).unwrap();
    let tok = LmTokenizer::from_gguf(&path).unwrap();
    let mut ids = tok
        .encode("Sparse autoencoders decompose the residual stream of a language model into many interpretable features.")
        .unwrap();
    ids.truncate(16);
    let d = m.info().d_model;
    let h = &m
        .hook_activations(&ids, 1, ids.len(), &[HookPoint::resid_post(15)])
        .unwrap()[0];
    let norms: Vec<f32> = h
        .chunks(d)
        .map(|r| r.iter().map(|x| x * x).sum::<f32>().sqrt())
        .collect();
    let rest_max = norms[1..].iter().copied().fold(0f32, f32::max);
    println!("blocks.15.hook_resid_post norms: {norms:?}");
    assert!(
        norms[0] > 20.0 * rest_max,
        "position 0 norm {} vs others ≤ {rest_max}",
        norms[0]
    );
}
