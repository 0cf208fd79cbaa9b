//! `Unembedding::from_gguf` on tiny models written by the test: a tied model's
//! unembedding is its token embedding (read independently through the
//! model's `blocks.0.hook_resid_pre`), an untied one's is `output.weight`.

use sparse_lm::testing::{write_tiny_llama_gguf, TinyLlamaConfig};
use sparse_lm::{HookPoint, LanguageModel, Unembedding};

#[test]
fn the_unembedding_is_the_tied_embedding_or_the_output_matrix() {
    let dir = tempfile::tempdir().unwrap();
    for tie in [true, false] {
        let path = dir.path().join(format!("tiny-{tie}.gguf"));
        let cfg = TinyLlamaConfig {
            tie_embeddings: tie,
            ..TinyLlamaConfig::default()
        };
        write_tiny_llama_gguf(&path, &cfg).unwrap();
        let u = Unembedding::from_gguf(&path).unwrap();
        let model = LanguageModel::load(&path).unwrap();
        assert_eq!(u.tied, tie);
        assert_eq!(u.d_model, cfg.d_model);
        assert_eq!(u.vocab_size, model.info().vocab_size);
        assert_eq!(u.weights.len(), u.vocab_size * u.d_model);
        // The embedding rows of a few tokens, as the model reads them.
        let ids: Vec<u32> = vec![3, 40, 100, (u.vocab_size - 1) as u32];
        let emb = model
            .hook_activations(&ids, 1, ids.len(), &[HookPoint::resid_pre(0)])
            .unwrap()
            .remove(0);
        let d = u.d_model;
        let same = ids.iter().enumerate().all(|(k, &t)| {
            u.weights[t as usize * d..(t as usize + 1) * d] == emb[k * d..(k + 1) * d]
        });
        assert_eq!(same, tie, "tied = {tie}");
        // logits_of is the dot product with every row.
        let dir_vec: Vec<f32> = (0..d).map(|i| (i as f32 * 0.37).sin()).collect();
        let l = u.logits_of(&dir_vec);
        assert_eq!(l.len(), u.vocab_size);
        let t = 40;
        let want: f32 = (0..d).map(|i| u.weights[t * d + i] * dir_vec[i]).sum();
        assert!((l[t] - want).abs() <= 1e-5 * want.abs().max(1.0));
    }
}

#[test]
fn a_missing_file_is_an_error_naming_it() {
    let e = Unembedding::from_gguf("/nonexistent/model.gguf").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
}
