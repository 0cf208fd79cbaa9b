//! The local judge on the real SmolLM2-135M-Instruct (skipped with a message
//! when `scripts/fetch-assets` has not installed it).

use sparse_autointerp::examples::Shown;
use sparse_autointerp::judge::Judge;
use sparse_autointerp::local::{chat_template, LocalJudge};
use sparse_autointerp::prompts::{detection, explainer, Message};

fn model() -> Option<std::path::PathBuf> {
    let p = sparse_lm::assets::default_model_path();
    if p.exists() {
        Some(p)
    } else {
        println!(
            "skipping: {} is absent (run scripts/fetch-assets)",
            p.display()
        );
        None
    }
}

fn shown(words: &[&str], active: usize) -> Shown {
    Shown {
        context: 0,
        tokens: words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.to_string()
                } else {
                    format!(" {w}")
                }
            })
            .collect(),
        active: (0..words.len()).map(|i| i == active).collect(),
    }
}

#[test]
fn smollm2_speaks_chatml_and_its_verdicts_follow_the_text() {
    let Some(path) = model() else { return };
    let t = chat_template(&path).unwrap().unwrap();
    assert!(
        t.contains(
            "'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'"
        ),
        "{t}"
    );
    assert!(t.contains("<|im_start|>assistant\n"), "{t}");
    let judge = LocalJudge::load(&path).unwrap();
    // The prompt is the template's rendering, token for token.
    let ids = judge
        .prompt_ids(&[Message::new("system", "S"), Message::new("user", "hi")])
        .unwrap();
    let tok = sparse_lm::LmTokenizer::from_gguf(&path).unwrap();
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );

    let expl = "the word \"cat\" and other animals";
    let cat = judge
        .verdict(&detection(
            expl,
            &shown(&["The", "cat", "sat", "on", "the", "mat", "."], 1),
        ))
        .unwrap();
    let stock = judge
        .verdict(&detection(
            expl,
            &shown(
                &["Stock", "prices", "fell", "sharply", "on", "Monday", "."],
                1,
            ),
        ))
        .unwrap();
    let (pc, ps) = (cat.p_yes.unwrap(), stock.p_yes.unwrap());
    println!("P(yes): cat text {pc:.3}, stock text {ps:.3}");
    assert!(pc > 0.0 && pc < 1.0 && ps > 0.0 && ps < 1.0);
    assert!(
        pc > ps,
        "the cat text should look more like the explanation: {pc} vs {ps}"
    );

    let reply = judge
        .explain(&explainer(&[
            shown(&["I", "fed", "the", "dog", "today"], 3),
            shown(&["A", "dog", "barked", "loudly"], 1),
            shown(&["Her", "dog", "is", "old"], 1),
        ]))
        .unwrap();
    let e = sparse_autointerp::prompts::parse_explanation(&reply);
    println!("explanation: {reply:?} → {e:?}");
    assert!(!e.is_empty());

    // The whole pipeline on the local judge: two features, each firing on one word.
    let rec = |index: usize, word: &str| {
        let ex = |k: u64| {
            let tokens: Vec<String> = [
                "We",
                " saw",
                " a",
                &format!(" {word}"),
                " near",
                &format!(" house {k}"),
            ]
            .iter()
            .map(|t| t.to_string())
            .collect();
            let activations = vec![0.0, 0.0, 0.0, 3.0, 0.0, 0.0];
            sparse_features::record::ActivationExample {
                context: 100 * index as u64 + k,
                token_ids: vec![0; 6],
                tokens,
                activations,
                max_position: 3,
                max_activation: 3.0,
            }
        };
        sparse_features::record::FeatureRecord {
            index,
            encoder: "sae".into(),
            tokens_seen: 100,
            density: 0.1,
            max_activation: 3.0,
            top_examples: (0..5).map(ex).collect(),
            quantile_examples: vec![],
            histogram: sparse_features::record::Histogram {
                edges: vec![0.0, 3.0],
                counts: vec![5],
            },
            top_logits: vec![],
            bottom_logits: vec![],
        }
    };
    let records = vec![rec(0, "dog"), rec(1, "river")];
    let opts = sparse_autointerp::pipeline::PipelineOptions {
        examples: sparse_autointerp::examples::ExampleOptions {
            explain_top: 3,
            score_positives: 2,
            negative_features: 1,
            ..Default::default()
        },
        max_features: None,
        concurrency: 1,
        seed: 0,
        resamples: 200,
    };
    let dir = tempfile::tempdir().unwrap();
    let s = sparse_autointerp::pipeline::run(&records, &judge, dir.path(), &opts).unwrap();
    let res = sparse_autointerp::pipeline::read_results(&dir.path().join("results.jsonl")).unwrap();
    println!("{}", serde_json::to_string(&res).unwrap());
    assert_eq!(res.len(), 2);
    for r in &res {
        assert_eq!((r.detection.n, r.detection.positives), (4, 2));
        assert!(
            r.detection.auroc.is_some(),
            "the local judge gives probabilities"
        );
    }
    assert_eq!(s.encoders["sae"].detection.auroc.n, 2);
}
