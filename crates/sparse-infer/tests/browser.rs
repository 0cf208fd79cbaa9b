//! The feature browser end to end: a tiny model, store and TopK SAE →
//! `dashboards` → statistics checked against a brute-force encoding of the
//! whole split → `serve` → a real headless Chromium opens the index, a
//! search and a feature page: the DOM must hold the features and the
//! feature's examples (highlighted tokens), and the screenshots must not be
//! blank. Also checks the exports (Neuronpedia JSON, delphi cache; read by
//! Python's `safetensors.numpy` when `SPARSE_INFER_PYTHON` is set) and the
//! one-line errors. Skips the browser part, with a message, when
//! `/usr/bin/chromium` is absent. `SPARSE_INFER_SCREENSHOTS=DIR` copies the
//! screenshots there.

mod common;

use common::{bin, fails_with, ok_json, s};
use serde_json::Value;
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Kills the server when the test ends, also on failure.
struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `serve ARGS --port 0`; returns the server and its URL.
fn serve(args: &[&str]) -> (Server, String) {
    let mut child = bin()
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: Value = serde_json::from_str(&line).expect("serve prints its URL as JSON");
    (Server(child), v["url"].as_str().unwrap().to_string())
}

fn chromium(profile: &Path, extra: &[&str], url: &str) -> String {
    let out = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Takes a screenshot and asserts it is a real page: a 1280×900 PNG with
/// many distinct colours and no single colour covering almost everything.
fn screenshot(profile: &Path, url: &str, file: &Path) {
    chromium(
        profile,
        &[
            &format!("--screenshot={}", file.display()),
            "--window-size=1280,900",
        ],
        url,
    );
    let decoder = png::Decoder::new(std::fs::File::open(file).expect("screenshot written"));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 900), "{}", file.display());
    let px = info.color_type.samples();
    let mut counts = std::collections::HashMap::new();
    for p in buf[..info.buffer_size()].chunks(px) {
        *counts.entry(p[..3].to_vec()).or_insert(0usize) += 1;
    }
    let total = (info.width * info.height) as usize;
    let top = counts.values().max().copied().unwrap_or(0);
    assert!(
        counts.len() >= 16,
        "{}: only {} colours (blank page?)",
        file.display(),
        counts.len()
    );
    assert!(
        top * 100 < total * 97,
        "{}: one colour covers {top} of {total} pixels",
        file.display()
    );
    if let Some(dir) = std::env::var_os("SPARSE_INFER_SCREENSHOTS").filter(|d| !d.is_empty()) {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(file, Path::new(&dir).join(file.file_name().unwrap())).unwrap();
    }
}

/// `GET path` from `url`'s server: `(status line, body)`.
fn get(url: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut r = String::new();
    c.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

fn html_escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The SAE's codes of every test-split context of the store, encoded in one
/// batch: `(context, codes rows × N)` in store order.
fn brute_force_codes(ckpt_dir: &Path, store_dir: &Path) -> (Vec<(u64, Vec<f32>)>, usize) {
    let ckpt = sparse_core::checkpoint::load(ckpt_dir).unwrap();
    let store = sparse_store::ActivationStore::open(store_dir).unwrap();
    let run = sparse_train::stored_run(&ckpt).unwrap();
    let splits = sparse_eval::resolve_splits(&ckpt, None).unwrap();
    let ids = sparse_eval::split_contexts(&store, &splits, sparse_store::Split::Test, usize::MAX)
        .unwrap();
    let (mut x, _) = sparse_eval::context_data(&store, &ids).unwrap();
    x.as_mut_slice().iter_mut().for_each(|v| *v *= run.scale);
    let z = ckpt.model.encode(&x).unwrap();
    let n = z.cols();
    let rpc = store.rows_per_context();
    let per = ids
        .iter()
        .enumerate()
        .map(|(k, &c)| (c, z.as_slice()[k * rpc * n..(k + 1) * rpc * n].to_vec()))
        .collect();
    (per, n)
}

#[test]
fn dashboards_site_in_a_headless_browser_exports_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (gguf, store) = common::tiny_lm_store(root);
    let sae = common::train_tiny_topk(root, 6);
    let site = root.join("site");
    let summary = ok_json(&[
        "dashboards",
        "--model",
        &s(&sae),
        "--store",
        &s(&store),
        "--lm",
        &s(&gguf),
        "--out",
        &s(&site),
        "--all",
        "--tokens",
        "1000000",
        "--validation-tokens",
        "256",
        "--fista-iters",
        "100",
        "--lambda-steps",
        "8",
        "--top-k",
        "5",
        "--delphi-splits",
        "3",
    ]);
    assert_eq!(summary["features"], 64);
    assert!(summary["fista_lambda"].as_f64().unwrap() > 0.0);
    let index: Value =
        serde_json::from_slice(&std::fs::read(site.join("data/index.json")).unwrap()).unwrap();
    assert_eq!(index["encoders"], serde_json::json!(["sae", "fista"]));
    assert_eq!(index["features"].as_array().unwrap().len(), 64);

    // Statistics against brute force: every test context encoded at once.
    let (codes, n) = brute_force_codes(&sae, &store);
    let rpc = codes[0].1.len() / n;
    let records: Vec<sparse_features::FeatureRecord> = (0..64)
        .map(|j| {
            serde_json::from_slice(&std::fs::read(site.join(format!("data/sae/{j}.json"))).unwrap())
                .unwrap()
        })
        .collect();
    let tokens_seen = (codes.len() * rpc) as u64;
    for r in &records {
        let j = r.index;
        assert_eq!(r.tokens_seen, tokens_seen);
        let vals: Vec<f32> = codes
            .iter()
            .flat_map(|(_, z)| (0..rpc).map(move |p| z[p * n + j]))
            .filter(|&v| v > 0.0)
            .collect();
        let density = vals.len() as f64 / tokens_seen as f64;
        assert!(
            (r.density - density).abs() <= 2.0 / tokens_seen as f64,
            "density of {j}"
        );
        let max = vals.iter().copied().fold(0.0f32, f32::max);
        assert!(
            (r.max_activation - max).abs() <= 1e-4 * max.max(1.0),
            "max of {j}"
        );
        let mut maxima: Vec<(f32, u64)> = codes
            .iter()
            .map(|(c, z)| ((0..rpc).map(|p| z[p * n + j]).fold(0.0, f32::max), *c))
            .filter(|m| m.0 > 0.0)
            .collect();
        maxima.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        assert_eq!(
            r.top_examples.len(),
            maxima.len().min(5),
            "top-k size of {j}"
        );
        for (e, m) in r.top_examples.iter().zip(&maxima) {
            assert!(
                (e.max_activation - m.0).abs() <= 1e-4 * m.0.max(1.0),
                "top-k of {j}"
            );
            let (_, z) = codes.iter().find(|(c, _)| *c == e.context).unwrap();
            for p in 0..rpc {
                assert!(
                    (e.activations[p] - z[p * n + j]).abs() <= 1e-4,
                    "activations of {j}"
                );
            }
            assert_eq!(e.tokens.len(), rpc);
        }
        let h = &r.histogram;
        let w = h.edges[1] - h.edges[0];
        let mut direct = vec![0u64; h.counts.len()];
        vals.iter()
            .for_each(|&v| direct[((v / w) as usize).min(h.counts.len() - 1)] += 1);
        let off: u64 = h
            .counts
            .iter()
            .zip(&direct)
            .map(|(a, b)| a.abs_diff(*b))
            .sum();
        assert!(off <= 2, "histogram of {j}: {:?} vs {direct:?}", h.counts);
        assert_eq!(r.top_logits.len(), 10);
        assert!(r.top_logits[0].value >= r.top_logits[9].value);
        assert!(r.bottom_logits[0].value <= r.bottom_logits[9].value);
    }
    // The feature the browser opens: the strongest one.
    let feat = records
        .iter()
        .max_by(|a, b| a.max_activation.total_cmp(&b.max_activation))
        .unwrap();
    assert!(!feat.top_examples.is_empty());
    let fista: sparse_features::FeatureRecord = serde_json::from_slice(
        &std::fs::read(site.join(format!("data/fista/{}.json", feat.index))).unwrap(),
    )
    .unwrap();
    assert_eq!(fista.encoder, "fista");

    // Exports: Neuronpedia JSON mirrors the record.
    let np: Value = serde_json::from_slice(
        &std::fs::read(site.join(format!("exports/neuronpedia/sae/{}.json", feat.index))).unwrap(),
    )
    .unwrap();
    assert_eq!(np["index"], feat.index.to_string());
    assert_eq!(np["layer"], "blocks.1.hook_resid_post");
    assert_eq!(
        np["activations"][0]["tokens"],
        serde_json::json!(feat.top_examples[0].tokens)
    );
    assert_eq!(
        np["activations"][0]["maxValueTokenIndex"],
        feat.top_examples[0].max_position
    );
    assert_eq!(
        np["freq_hist_data_bar_heights"],
        serde_json::json!(feat.histogram.counts)
    );
    assert_eq!(
        np["freq_hist_data_bar_values"].as_array().unwrap().len(),
        feat.histogram.counts.len()
    );
    assert_eq!(np["pos_str"][0], feat.top_logits[0].token);
    assert_eq!(np["frac_nonzero"], feat.density);
    // delphi cache: the split holding the feature has its activations at the right places.
    let ranges = sparse_features::export::delphi_ranges(64, 3);
    let (start, end) = *ranges
        .iter()
        .find(|(a, b)| (*a..=*b).contains(&feat.index))
        .unwrap();
    let cache = site.join(format!(
        "exports/delphi/sae/blocks.1.hook_resid_post/{start}_{end}.safetensors"
    ));
    let bytes = std::fs::read(&cache).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let loc = st.tensor("locations").unwrap();
    let act = st.tensor("activations").unwrap();
    let tok = st.tensor("tokens").unwrap();
    assert_eq!(loc.dtype(), safetensors::Dtype::U16);
    assert_eq!(act.dtype(), safetensors::Dtype::F16);
    assert_eq!(tok.shape(), &[codes.len(), 16]);
    let loc: Vec<u16> = loc
        .data()
        .chunks(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let act: Vec<f32> = act
        .data()
        .chunks(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect();
    let config: Value =
        serde_json::from_slice(&std::fs::read(cache.with_file_name("config.json")).unwrap())
            .unwrap();
    let contexts: Vec<u64> = serde_json::from_value(config["store_contexts"].clone()).unwrap();
    let top = &feat.top_examples[0];
    let slot = contexts.iter().position(|&c| c == top.context).unwrap();
    let mut found = 0;
    for (k, l) in loc.chunks(3).enumerate() {
        if l[0] as usize == slot && l[2] as usize + start == feat.index {
            let p = l[1] as usize - 1; // first_position 1
            assert!((act[k] - top.activations[p]).abs() <= 2e-3 * top.max_activation.max(1.0));
            found += 1;
        }
    }
    let nonzero = top.activations.iter().filter(|&&v| v > 0.0).count();
    assert_eq!(found, nonzero, "cache entries of the top example");
    let total_cached: usize = ranges
        .iter()
        .map(|(a, b)| {
            let p = cache.with_file_name(format!("{a}_{b}.safetensors"));
            let b = std::fs::read(p).unwrap();
            safetensors::SafeTensors::deserialize(&b)
                .unwrap()
                .tensor("activations")
                .unwrap()
                .shape()[0]
        })
        .sum();
    let all_nonzero: usize = codes
        .iter()
        .map(|(_, z)| z.iter().filter(|&&v| v > 0.0).count())
        .sum();
    assert!(
        total_cached.abs_diff(all_nonzero) <= 2,
        "{total_cached} vs {all_nonzero}"
    );
    if let Some(py) = std::env::var_os("SPARSE_INFER_PYTHON").filter(|p| !p.is_empty()) {
        let out = Command::new(py)
            .args([
                "-c",
                "import sys; from safetensors.numpy import load_file; d = load_file(sys.argv[1]); \
                 print(d['locations'].shape[1], d['locations'].dtype, d['activations'].dtype, d['tokens'].shape[1])",
                &s(&cache),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "3 uint16 float16 16"
        );
    } else {
        eprintln!(
            "SPARSE_INFER_PYTHON unset: the delphi cache is not read back by Python safetensors"
        );
    }

    // Errors: one line each, naming the value or file.
    fails_with(
        &[
            "dashboards",
            "--model",
            &s(&sae),
            "--store",
            &s(&store),
            "--lm",
            &s(&gguf),
            "--out",
            &s(&root.join("x")),
            "--latents",
            "3,64",
        ],
        &["feature 64 is out of range", "64 latents"],
    );
    fails_with(
        &[
            "dashboards",
            "--model",
            &s(&root.join("nope")),
            "--store",
            &s(&store),
            "--out",
            &s(&root.join("x")),
        ],
        &["nope"],
    );
    fails_with(
        &[
            "dashboards",
            "--model",
            &s(&sae),
            "--store",
            &s(&store),
            "--lm",
            &s(&gguf),
            "--out",
            &s(&root.join("x")),
            "--encoders",
            "sae,omp",
        ],
        &["unknown encoder \"omp\""],
    );

    // A store whose d_model (64) is not the checkpoint's (8).
    let data = common::synth(root);
    let cfg = root.join("synth.toml");
    std::fs::write(
        &cfg,
        format!(
            "method = \"sae\"\ndata = \"{}\"\nn_latents = 16\nsteps = 5\ncheckpoint_every = 5\nout = \"small\"\nseed = 0\nlambda = 0.01\n",
            s(&data)
        ),
    )
    .unwrap();
    ok_json(&["train", "--config", &s(&cfg)]);
    fails_with(
        &[
            "dashboards",
            "--model",
            &s(&root.join("small")),
            "--store",
            &s(&store),
            "--lm",
            &s(&gguf),
            "--out",
            &s(&root.join("x")),
        ],
        &["d_model 64", "has 8"],
    );

    // serve computes the pages on start; only files under its folder are served.
    let served = root.join("served");
    let (server, url) = serve(&[
        "--model",
        &s(&sae),
        "--store",
        &s(&store),
        "--lm",
        &s(&gguf),
        "--features",
        "4",
        "--encoders",
        "sae",
        "--no-exports",
        "--out",
        &s(&served),
    ]);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let (status, body) = get(&url, "/data/index.json");
    assert!(status.contains("200"), "{status}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["features"].as_array().unwrap().len(), 4);
    assert_eq!(v["encoders"], serde_json::json!(["sae"]));
    assert!(get(&url, "/").1.contains("<script src=\"app.js\">"));
    assert!(get(&url, "/../lm.toml").0.contains("404"));
    assert!(get(&url, "/%2e%2e/lm.toml").0.contains("404"));
    assert!(get(&url, "/data/%C3%A9%").0.contains("404"));
    assert!(get(&url, "/app%2Ejs").1.contains("feature browser"));
    assert!(get(&url, "/data/sae/9.json").0.contains("404"));
    drop(server);

    // The browser.
    if !Path::new(CHROMIUM).exists() {
        eprintln!(
            "SKIPPED the headless-browser part: {CHROMIUM} not found (apt-get install chromium)"
        );
        return;
    }
    let (_server, url) = serve(&["--dir", &s(&site)]);
    let port = url
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    fails_with(
        &["serve", "--dir", &s(&site), "--port", &port],
        &["cannot listen", &port],
    );
    let profile = root.join("chromium-profile");

    // Index: every feature of the first page listed.
    let dom = chromium(&profile, &["--dump-dom"], &url);
    let rows = dom.matches("class=\"feature-row\"").count();
    assert_eq!(rows, 64, "index rows");
    assert!(dom.contains(&format!("href=\"#feature={}\"", feat.index)));

    // Search: the rows are exactly those whose top tokens or snippet match.
    let tok = &feat.top_examples[0].tokens[feat.top_examples[0].max_position];
    let q = tok.trim().to_string();
    let ql = q.to_lowercase();
    let want: HashSet<u64> = index["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r[0].as_u64().unwrap().to_string() == q
                || r[3].as_array().unwrap().iter().any(|t| {
                    let t = t.as_str().unwrap().to_lowercase();
                    t.trim() == ql.trim() || t.contains(&ql)
                })
                || r[4].as_str().unwrap().to_lowercase().contains(&ql)
        })
        .map(|r| r[0].as_u64().unwrap())
        .collect();
    assert!(want.contains(&(feat.index as u64)));
    let enc: String = q
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let search_url = format!("{url}?q={enc}");
    let dom = chromium(&profile, &["--dump-dom"], &search_url);
    let got: HashSet<u64> = dom
        .match_indices("class=\"feature-row\" data-feature=\"")
        .map(|(i, m)| {
            let rest = &dom[i + m.len()..];
            rest[..rest.find('"').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(got, want, "search {q:?}");

    // Feature page: both encoders side by side, every top example with its
    // tokens and one highlighted span per firing position.
    let feature_url = format!("{url}#feature={}", feat.index);
    let dom = chromium(&profile, &["--dump-dom"], &feature_url);
    assert!(
        dom.contains(&format!("Feature {}", feat.index)),
        "feature title"
    );
    assert!(dom.contains("data-encoder=\"sae\"") && dom.contains("data-encoder=\"fista\""));
    assert!(dom.contains("<svg class=\"hist\""));
    let sae_part = &dom
        [dom.find("data-encoder=\"sae\"").unwrap()..dom.find("data-encoder=\"fista\"").unwrap()];
    let top_part = &sae_part[..sae_part.find("class=\"quantiles\"").unwrap()];
    for e in &feat.top_examples {
        let start = top_part
            .find(&format!("data-context=\"{}\"", e.context))
            .unwrap_or_else(|| panic!("example context {} missing", e.context));
        let block = &top_part[start..];
        let block = &block[..block[1..]
            .find("class=\"example\"")
            .map_or(block.len(), |i| i + 1)];
        let hl = block.matches("class=\"tok hl\"").count();
        let firing = e.activations.iter().filter(|&&v| v > 0.0).count();
        assert_eq!(hl, firing, "highlighted tokens of context {}", e.context);
        let shown = block.matches("class=\"tok").count();
        assert_eq!(shown, e.tokens.len(), "tokens of context {}", e.context);
        assert!(block.contains(&html_escape(&e.tokens[e.max_position])));
    }
    for l in &feat.top_logits[..3] {
        let shown = l.token.replace(' ', "\u{2423}").replace('\n', "\u{21b5}");
        assert!(sae_part.contains(&format!("<code>{}</code>", html_escape(&shown))));
    }

    screenshot(&profile, &url, &root.join("browser-index.png"));
    screenshot(&profile, &search_url, &root.join("browser-search.png"));
    screenshot(&profile, &feature_url, &root.join("browser-feature.png"));
}
