//! The autointerp pipeline end to end against a local OpenAI-compatible
//! server started by the test: the real HTTP client (ureq), cache, retries,
//! concurrency and resume, with answers derived from the prompts so every
//! score is known in advance.

use sparse_autointerp::client::{HttpConfig, HttpJudge};
use sparse_autointerp::examples::ExampleOptions;
use sparse_autointerp::pipeline::{read_results, run, PipelineOptions, RESULTS_FILE};
use sparse_features::record::{ActivationExample, FeatureRecord, Histogram};
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY_VAR: &str = "SPARSE_AUTOINTERP_STUB_KEY";
const KEY: &str = "sk-stub-123";
const WORDS: [&str; 5] = ["apple", "river", "stone", "cloud", "piano"];

/// A chat-completions server on 127.0.0.1:0 answering like a perfect judge
/// that takes the explanation "the word W" literally.
struct Stub {
    url: String,
    requests: Arc<AtomicUsize>,
    failures: Arc<Mutex<VecDeque<u16>>>,
}

fn marked_tokens(s: &str) -> Vec<String> {
    s.split("<<")
        .skip(1)
        .filter_map(|p| p.split(">>").next())
        .map(str::to_string)
        .collect()
}

fn answer(body: &serde_json::Value) -> String {
    let msgs = body["messages"].as_array().unwrap();
    let system = msgs[0]["content"].as_str().unwrap();
    let user = msgs[1]["content"].as_str().unwrap();
    if system.starts_with("You explain") {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for t in marked_tokens(user) {
            *counts.entry(t).or_default() += 1;
        }
        let best = counts
            .into_iter()
            .max_by_key(|(w, c)| (*c, w.clone()))
            .unwrap()
            .0;
        return format!("Here you go.\nExplanation: the word {best}");
    }
    let word = user
        .split("the word ")
        .nth(1)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string();
    let text = user.split("Text: ").nth(1).unwrap().lines().next().unwrap();
    let yes = if system.contains("marked") {
        let m = marked_tokens(text);
        !m.is_empty() && m.iter().all(|t| *t == word)
    } else {
        text.split_whitespace().any(|w| w == word)
    };
    if yes { "Yes." } else { "No" }.to_string()
}

impl Stub {
    fn start(failures: &[u16]) -> Stub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(
            failures.iter().copied().collect::<VecDeque<u16>>(),
        ));
        let (r, f) = (requests.clone(), failures.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert!(line.starts_with("POST /v1/chat/completions "), "{line}");
                let (mut len, mut auth) = (0usize, String::new());
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    if h.trim().is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    match k.to_ascii_lowercase().as_str() {
                        "content-length" => len = v.trim().parse().unwrap(),
                        "authorization" => auth = v.trim().to_string(),
                        _ => {}
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                r.fetch_add(1, Ordering::SeqCst);
                let (status, extra, payload) = if auth != format!("Bearer {KEY}") {
                    (
                        401,
                        "",
                        r#"{"error":{"message":"invalid api key"}}"#.to_string(),
                    )
                } else if let Some(code) = f.lock().unwrap().pop_front() {
                    (
                        code,
                        "Retry-After: 0\r\n",
                        r#"{"error":{"message":"try again"}}"#.to_string(),
                    )
                } else {
                    let req: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(req["model"], "stub-judge");
                    assert_eq!(req["temperature"], 0.0);
                    let reply = answer(&req);
                    let resp = serde_json::json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}]});
                    (200, "", resp.to_string())
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{payload}",
                    payload.len()
                );
            }
        });
        Stub {
            url,
            requests,
            failures,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// An example firing (5.0) on `words[active]`; the context number ends the
/// text so that no two prompts coincide (the cache would merge them).
fn example(context: u64, words: &[&str], active: usize) -> ActivationExample {
    let id = format!("n{context}");
    let words: Vec<&str> = words.iter().copied().chain([id.as_str()]).collect();
    let tokens: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_string()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    let activations: Vec<f32> = (0..tokens.len())
        .map(|i| if i == active { 5.0 } else { 0.0 })
        .collect();
    ActivationExample {
        context,
        token_ids: (0..tokens.len() as u32).collect(),
        tokens,
        activations,
        max_position: active,
        max_activation: 5.0,
    }
}

/// Five features, each firing on its own word. Feature 3's first held-out
/// example also contains "stone" (not where it fires): it is one of feature
/// 2's negatives, which the literal judge calls positive — feature 2's
/// detection has exactly one false positive among 4 + 4 examples.
fn records() -> Vec<FeatureRecord> {
    (0..5)
        .map(|f| {
            let w = WORDS[f];
            let ctx = |k: u64| 1000 * f as u64 + k;
            let top: Vec<ActivationExample> = (0..14)
                .map(|k| {
                    if f == 3 && k == 10 {
                        example(ctx(k), &["a", "stone", "and", "a", w, "here"], 4)
                    } else {
                        example(
                            ctx(k),
                            &["we", "saw", "the", w, "over", "there", "today"],
                            3,
                        )
                    }
                })
                .collect();
            let q = vec![vec![
                example(ctx(50), &["one", w, "again"], 1),
                example(ctx(51), &["that", w, "once"], 1),
            ]];
            FeatureRecord {
                index: f,
                encoder: "sae".into(),
                tokens_seen: 10_000,
                density: 0.01,
                max_activation: 5.0,
                top_examples: top,
                quantile_examples: q,
                histogram: Histogram {
                    edges: vec![0.0, 5.0],
                    counts: vec![100],
                },
                top_logits: vec![],
                bottom_logits: vec![],
            }
        })
        .collect()
}

fn options(max_features: Option<usize>) -> PipelineOptions {
    PipelineOptions {
        examples: ExampleOptions {
            explain_top: 10,
            explain_per_quantile: 1,
            score_positives: 4,
            negative_features: 4,
            ..ExampleOptions::default()
        },
        max_features,
        concurrency: 3,
        seed: 1,
        resamples: 500,
    }
}

fn judge(url: &str, cache: &std::path::Path) -> HttpJudge {
    std::env::set_var(KEY_VAR, KEY);
    let mut cfg = HttpConfig::new(url, "stub-judge");
    cfg.api_key_env = Some(KEY_VAR.into());
    cfg.cache_dir = Some(cache.to_path_buf());
    cfg.backoff = Duration::from_millis(5);
    cfg.retries = 3;
    HttpJudge::new(cfg).unwrap()
}

/// 1 explanation + 4 positives + 4 negatives + 4 fuzzing examples.
const PER_FEATURE: usize = 13;

#[test]
fn scores_are_the_known_ones_and_reruns_hit_the_cache_after_retries() {
    let stub = Stub::start(&[500, 429]);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let recs = records();

    let j = judge(&stub.url, &cache);
    let summary = run(&recs, &j, &dir.path().join("out1"), &options(None)).unwrap();
    // Every question once, plus the two failed attempts that were retried.
    assert_eq!(stub.requests(), 5 * PER_FEATURE + 2);
    assert_eq!(j.requests(), 5 * PER_FEATURE + 2);
    assert!(stub.failures.lock().unwrap().is_empty());

    let mut res = read_results(&dir.path().join("out1").join(RESULTS_FILE)).unwrap();
    res.sort_by_key(|r| r.index);
    assert_eq!(res.len(), 5);
    for r in &res {
        assert_eq!(r.explanation, format!("the word {}", WORDS[r.index]));
        assert_eq!((r.detection.n, r.detection.positives), (8, 4));
        assert_eq!((r.fuzzing.n, r.fuzzing.positives), (4, 2));
        assert_eq!(r.fuzzing.accuracy, 1.0, "feature {}", r.index);
        assert_eq!(r.unparsed, 0);
        assert_eq!(
            r.detection.auroc, None,
            "an API judge gives no probabilities"
        );
        if r.index == 2 {
            assert_eq!(r.detection.accuracy, 7.0 / 8.0);
            assert_eq!(r.detection.balanced_accuracy, 0.875);
            assert_eq!(r.detection.f1, 8.0 / 9.0);
        } else {
            assert_eq!(
                (r.detection.accuracy, r.detection.f1),
                (1.0, 1.0),
                "feature {}",
                r.index
            );
        }
    }
    let s = &summary.encoders["sae"];
    assert_eq!(s.features, 5);
    assert!((s.detection.accuracy.mean - 0.975).abs() < 1e-12);
    // Resampling five values of which one is 0.875: the upper end is 1, the lower below the mean.
    assert_eq!(s.detection.accuracy.hi, 1.0);
    assert!(s.detection.accuracy.lo < 0.975 && s.detection.accuracy.lo >= 0.875);
    assert_eq!((s.fuzzing.accuracy.mean, s.fuzzing.accuracy.lo), (1.0, 1.0));
    assert_eq!(s.detection.auroc.n, 0);

    // Same questions, fresh output folder: all answers come from the cache.
    let j2 = judge(&stub.url, &cache);
    let again = run(&recs, &j2, &dir.path().join("out2"), &options(None)).unwrap();
    assert_eq!(stub.requests(), 5 * PER_FEATURE + 2, "no new request");
    assert_eq!(j2.cache_hits(), 5 * PER_FEATURE);
    // (NaN ≠ NaN: compare the JSON, where a missing AUROC is null.)
    let json =
        |s: &sparse_autointerp::pipeline::Summary| serde_json::to_string(&s.encoders).unwrap();
    assert_eq!(json(&again), json(&summary));
}

#[test]
fn an_interrupted_run_resumes_without_redoing_finished_features() {
    let stub = Stub::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let recs = records();
    // "Interrupted" after two features; no cache, so any repeat would show as requests.
    let mut cfg = HttpConfig::new(&stub.url, "stub-judge");
    std::env::set_var(KEY_VAR, KEY);
    cfg.api_key_env = Some(KEY_VAR.into());
    let j = HttpJudge::new(cfg.clone()).unwrap();
    run(&recs, &j, &out, &options(Some(2))).unwrap();
    assert_eq!(stub.requests(), 2 * PER_FEATURE);
    // A run killed mid-write leaves a torn last line.
    let path = out.join(RESULTS_FILE);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(br#"{"encoder":"sae","index":4,"jud"#).unwrap();
    drop(f);

    let j = HttpJudge::new(cfg).unwrap();
    let s = run(&recs, &j, &out, &options(None)).unwrap();
    assert_eq!(
        stub.requests(),
        5 * PER_FEATURE,
        "only the three missing features were asked"
    );
    let res = read_results(&path).unwrap();
    let mut idx: Vec<usize> = res.iter().map(|r| r.index).collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2, 3, 4]);
    assert_eq!(s.encoders["sae"].features, 5);
    // Nothing left to do: a third run asks nothing.
    let j = HttpJudge::new({
        let mut c = HttpConfig::new(&stub.url, "stub-judge");
        c.api_key_env = Some(KEY_VAR.into());
        c
    })
    .unwrap();
    run(&recs, &j, &out, &options(None)).unwrap();
    assert_eq!(stub.requests(), 5 * PER_FEATURE);
}

#[test]
fn bad_endpoints_keys_and_statuses_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let recs = records();
    // Missing key variable.
    let mut cfg = HttpConfig::new("http://127.0.0.1:9/v1", "m");
    cfg.api_key_env = Some("SPARSE_AUTOINTERP_SURELY_UNSET_KEY".into());
    let e = HttpJudge::new(cfg).err().unwrap().to_string();
    assert!(
        e.contains("SPARSE_AUTOINTERP_SURELY_UNSET_KEY is not set"),
        "{e}"
    );
    // Not a URL.
    let e = HttpJudge::new(HttpConfig::new("localhost:8000", "m"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("http:// or https://"), "{e}");
    // Nothing listening: retried, then a message naming the URL.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = HttpConfig::new(&format!("http://127.0.0.1:{port}/v1"), "m");
    cfg.api_key_env = None;
    cfg.retries = 2;
    cfg.backoff = Duration::from_millis(1);
    let j = HttpJudge::new(cfg).unwrap();
    let e = run(&recs, &j, &dir.path().join("a"), &options(Some(1))).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains(&format!("127.0.0.1:{port}/v1/chat/completions"))
            && msg.contains("gave up after 3 attempts"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    assert_eq!(j.requests(), 3);
    // A wrong key is not retried: the server's 401 and its message.
    let stub = Stub::start(&[]);
    std::env::set_var("SPARSE_AUTOINTERP_WRONG_KEY", "sk-wrong");
    let mut cfg = HttpConfig::new(&stub.url, "stub-judge");
    cfg.api_key_env = Some("SPARSE_AUTOINTERP_WRONG_KEY".into());
    let j = HttpJudge::new(cfg).unwrap();
    let msg = format!(
        "{:#}",
        run(&recs, &j, &dir.path().join("b"), &options(Some(1))).unwrap_err()
    );
    assert!(
        msg.contains("HTTP 401") && msg.contains("invalid api key"),
        "{msg}"
    );
    assert_eq!(stub.requests(), 1);
    assert!(!dir.path().join("b").join("summary.json").exists());
}
