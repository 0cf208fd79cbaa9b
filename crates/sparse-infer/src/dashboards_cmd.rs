//! `sparse-infer dashboards` (the static feature browser and the exports)
//! and `sparse-infer serve` (the same pages over HTTP, localhost by default).
//! The numerics are in `sparse-features`; this file parses, resolves files
//! and writes.

use crate::lm_eval::{FractionsArg, SplitArg};
use anyhow::{anyhow, bail, Context, Result};
use sparse_eval::compare::{matched_fista, require_sae};
use sparse_eval::heldout::contexts_for_tokens;
use sparse_eval::{context_data, resolve_lm, split_contexts, Method};
use sparse_features::export::{write_delphi_cache, write_neuronpedia};
use sparse_features::site::{write_site, SiteMeta};
use sparse_features::{
    logit_effects, records, scan, FeatureRecord, ScanOptions, StatsOptions, TokenText,
};
use sparse_store::{ActivationStore, Split};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};

/// What to compute the pages from (shared by `dashboards` and `serve`).
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// SAE checkpoint folder (ReLU / TopK, written by `train`).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Activation store folder.
    #[arg(long)]
    store: Option<PathBuf>,
    /// Show the first N latents (default 256).
    #[arg(long, conflicts_with_all = ["all", "latents"])]
    features: Option<usize>,
    /// Show every latent.
    #[arg(long)]
    all: bool,
    /// Show these latents (comma-separated indices).
    #[arg(long, value_delimiter = ',')]
    latents: Option<Vec<usize>>,
    /// Encoders, side by side: `sae` (the checkpoint's own) and `fista` (on its decoder, λ matched to the SAE's L0 on validation).
    #[arg(long, value_delimiter = ',', default_value = "sae,fista")]
    encoders: Vec<String>,
    /// Split scanned.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Tokens scanned (whole contexts, rounded up).
    #[arg(long, default_value_t = 16384)]
    tokens: u64,
    /// Validation tokens for choosing FISTA's λ.
    #[arg(long, default_value_t = 1024)]
    validation_tokens: u64,
    /// FISTA iteration cap.
    #[arg(long, default_value_t = 300)]
    fista_iters: usize,
    /// Bisection steps for FISTA's λ.
    #[arg(long, default_value_t = 14)]
    lambda_steps: usize,
    /// Top-activating contexts per feature.
    #[arg(long, default_value_t = 10)]
    top_k: usize,
    /// Quantile bins of the firing contexts' maxima.
    #[arg(long, default_value_t = 5)]
    quantiles: usize,
    /// Samples per quantile bin.
    #[arg(long, default_value_t = 3)]
    per_quantile: usize,
    /// Seed of the quantile sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Language model (tokenizer and unembedding; default: the fetched asset when its sha256 is the store's).
    #[arg(long)]
    lm: Option<PathBuf>,
    #[command(flatten)]
    fractions: FractionsArg,
    /// Skip the exports (Neuronpedia JSON, delphi cache) under OUT/exports.
    #[arg(long)]
    no_exports: bool,
    /// Latent ranges of the delphi cache (delphi's n_splits).
    #[arg(long, default_value_t = 5)]
    delphi_splits: usize,
}

/// Arguments of `dashboards`.
#[derive(clap::Args, Debug)]
pub struct DashboardsArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Output folder (index.html, data/, exports/).
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `serve`.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    build: BuildArgs,
    /// Serve this folder written by `dashboards` instead of computing the pages.
    #[arg(long, conflicts_with_all = ["model", "store"])]
    dir: Option<PathBuf>,
    /// Where computed pages are written (default: a folder under the system's temp dir).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Port (0: any free port; the URL is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    bind: String,
}

/// `dashboards`: writes the site and prints a JSON summary.
pub fn dashboards(a: DashboardsArgs) -> Result<()> {
    let summary = build(&a.build, &a.out)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

fn build(a: &BuildArgs, out: &Path) -> Result<serde_json::Value> {
    let model_dir = a
        .model
        .as_ref()
        .ok_or_else(|| anyhow!("--model CHECKPOINT is required (or serve --dir DIR)"))?;
    let store_dir = a
        .store
        .as_ref()
        .ok_or_else(|| anyhow!("--store STORE is required (or serve --dir DIR)"))?;
    let ckpt = sparse_core::checkpoint::load(model_dir)
        .with_context(|| format!("loading the checkpoint {}", model_dir.display()))?;
    require_sae(&ckpt).with_context(|| format!("{}", model_dir.display()))?;
    let store = ActivationStore::open(store_dir)
        .with_context(|| format!("opening the store {}", store_dir.display()))?;
    let (n_latents, dim) = ckpt.model.dictionary().shape();
    if dim != store.d_model() {
        bail!(
            "the store {} has d_model {} but the checkpoint {} has {dim}",
            store_dir.display(),
            store.d_model(),
            model_dir.display()
        );
    }
    let latents: Vec<usize> = match (&a.latents, a.all, a.features) {
        (Some(l), _, _) => l.clone(),
        (None, true, _) => (0..n_latents).collect(),
        (None, false, n) => (0..n.unwrap_or(256).min(n_latents)).collect(),
    };
    if let Some(&bad) = latents.iter().find(|&&j| j >= n_latents) {
        bail!(
            "feature {bad} is out of range: the checkpoint {} has {n_latents} latents",
            model_dir.display()
        );
    }
    if latents.is_empty() {
        bail!("no features to show (--features 0)");
    }
    let lm = resolve_lm(&store, a.lm.as_deref())?.ok_or_else(|| {
        anyhow!(
            "no language model for the token text and logits: pass --lm FILE (the store's model {}, sha256 {})",
            store.spec().model.file,
            store.spec().model.sha256
        )
    })?;
    let tokenizer = sparse_lm::LmTokenizer::from_gguf(&lm.path)
        .with_context(|| format!("the tokenizer of {}", lm.path.display()))?;
    let unembed = sparse_lm::Unembedding::from_gguf(&lm.path)
        .with_context(|| format!("the unembedding of {}", lm.path.display()))?;
    let w_u = sparse_core::Matrix::from_vec(unembed.vocab_size, unembed.d_model, unembed.weights)?;
    let mut text = TokenText::from_tokenizer(&tokenizer);
    let logits = logit_effects(ckpt.model.dictionary(), &latents, &w_u, 10, &mut text)?;
    drop(w_u);

    let splits = a.fractions.splits(&ckpt)?;
    let split: Split = a.split.into();
    let opts = ScanOptions {
        split,
        splits,
        tokens: a.tokens,
        batch_contexts: 32,
        stats: StatsOptions {
            top_k: a.top_k,
            quantiles: a.quantiles,
            per_quantile: a.per_quantile,
            seed: a.seed,
            ..StatsOptions::default()
        },
        keep_cache: !a.no_exports,
    };
    let mut notes = Vec::new();
    let mut per_encoder: Vec<(String, Vec<FeatureRecord>)> = Vec::new();
    let mut summary = serde_json::Map::new();
    let model_name = store.spec().model.name.clone();
    let hook = store.spec().hook.clone();
    let mut exported = 0usize;
    for name in &a.encoders {
        let method = match name.as_str() {
            "sae" => Method::Sae,
            "fista" => {
                if split == Split::Validation {
                    bail!("--split validation: FISTA's λ is chosen on the validation split; use test or train");
                }
                let vids = split_contexts(
                    &store,
                    &splits,
                    Split::Validation,
                    contexts_for_tokens(&store, a.validation_tokens),
                )?;
                if vids.is_empty() {
                    bail!(
                        "the validation split of {} holds no contexts (needed to choose FISTA's λ)",
                        store_dir.display()
                    );
                }
                let (xv, _) = context_data(&store, &vids)?;
                let m = matched_fista(&ckpt, &xv, a.fista_iters, a.lambda_steps)?;
                notes.push(("FISTA λ".to_string(), format!("{:.4}", m.lambda)));
                summary.insert("fista_lambda".into(), serde_json::json!(m.lambda));
                summary.insert("sae_validation_l0".into(), serde_json::json!(m.sae_l0));
                summary.insert("fista_validation_l0".into(), serde_json::json!(m.fista_l0));
                Method::Fista(m.fista)
            }
            other => bail!("unknown encoder {other:?} in --encoders (known: sae, fista)"),
        };
        let s = scan(&ckpt, &store, &method, latents.clone(), &opts)
            .with_context(|| format!("scanning {} with {name}", store_dir.display()))?;
        let recs = records(&s, &store, &mut text, Some(&logits))?;
        if !a.no_exports {
            let ex = out.join("exports");
            write_neuronpedia(
                &ex.join("neuronpedia").join(name),
                &recs,
                &model_name,
                &hook,
            )?;
            exported += recs.len();
            write_delphi_cache(
                &ex.join("delphi").join(name),
                &s,
                &store,
                n_latents,
                a.delphi_splits,
                &model_name,
            )?;
        }
        summary.insert(
            format!("tokens_seen_{name}"),
            serde_json::json!(s.tokens_seen),
        );
        per_encoder.push((name.clone(), recs));
    }
    if per_encoder.is_empty() {
        bail!("--encoders is empty (known: sae, fista)");
    }
    let meta = SiteMeta {
        model: model_dir.display().to_string(),
        store: store_dir.display().to_string(),
        hook,
        split: format!("{split:?}").to_lowercase(),
        n_latents,
        notes,
    };
    let files = write_site(out, &per_encoder, &meta)?;
    summary.insert("out".into(), serde_json::json!(out));
    summary.insert("features".into(), serde_json::json!(latents.len()));
    summary.insert("encoders".into(), serde_json::json!(a.encoders));
    summary.insert("site_files".into(), serde_json::json!(files));
    summary.insert("neuronpedia_files".into(), serde_json::json!(exported));
    summary.insert("lm".into(), serde_json::json!(lm.path));
    Ok(serde_json::Value::Object(summary))
}

/// `serve`: computes the pages (or takes `--dir`) and serves them until killed.
pub fn serve(a: ServeArgs) -> Result<()> {
    if a.bind != "127.0.0.1" && a.bind != "localhost" && a.bind != "::1" {
        eprintln!(
            "warning: listening on {}: other machines can read these pages",
            a.bind
        );
    }
    // Bind first: a port in use fails before any computation.
    let listener = TcpListener::bind((a.bind.as_str(), a.port))
        .with_context(|| format!("cannot listen on {}:{}", a.bind, a.port))?;
    let dir = match &a.dir {
        Some(d) => {
            if !d.join("index.html").is_file() || !d.join("data/index.json").is_file() {
                bail!(
                    "{} is not a dashboards folder (no index.html and data/index.json)",
                    d.display()
                );
            }
            d.clone()
        }
        None => {
            let out = a.out.clone().unwrap_or_else(|| {
                std::env::temp_dir().join(format!("sparse-infer-serve-{}", std::process::id()))
            });
            build(&a.build, &out)?;
            out
        }
    };
    let addr = listener.local_addr()?;
    println!(
        "{}",
        serde_json::json!({"url": format!("http://{addr}/"), "dir": dir})
    );
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let dir = dir.clone();
        std::thread::spawn(move || {
            let _ = respond(stream, &dir);
        });
    }
    Ok(())
}

fn content_type(p: &Path) -> &'static str {
    match p.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "application/octet-stream",
    }
}

/// `%XX` escapes decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers one GET request with a file under `dir` (404 outside it or absent).
fn respond(mut stream: TcpStream, dir: &Path) -> std::io::Result<()> {
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = percent_decode(target.split(['?', '#']).next().unwrap_or("/"));
    let rel = Path::new(path.trim_start_matches('/'));
    let safe = rel.components().all(|c| matches!(c, Component::Normal(_)));
    let mut file = dir.join(rel);
    if file.is_dir() {
        file = file.join("index.html");
    }
    let (status, ctype, body) = if method != "GET" && method != "HEAD" {
        (
            "405 Method Not Allowed",
            "text/plain",
            b"GET only\n".to_vec(),
        )
    } else if !safe {
        ("404 Not Found", "text/plain", b"not found\n".to_vec())
    } else {
        match std::fs::read(&file) {
            Ok(b) => ("200 OK", content_type(&file), b),
            Err(_) => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
        }
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        stream.write_all(&body)?;
    }
    stream.flush()
}
