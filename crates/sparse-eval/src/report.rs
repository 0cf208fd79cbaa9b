//! The language-model study of a training run: every model of the run
//! evaluated on the same held-out tokens, per-sample encoders on chosen
//! decoders, one table and two Pareto figures.
//!
//! Every point of the figures is measured on the same tokens: the first
//! `tokens` (whole contexts) of the evaluation split, with the downstream
//! loss on those same contexts. Held-out metrics that need many tokens (dead
//! and dense fractions, the density histogram) are computed on the whole
//! split as well (`split_metrics`).
//!
//! Each model's result and each comparison is written to `out` as soon as it
//! is measured (atomically, keyed by the checkpoint step and the options), so
//! a rerun after a crash, or after training one more model, measures only
//! what is missing.

use crate::compare::{compare, metrics_of, CompareOptions, Comparison, EncoderRow, Method};
use crate::downstream::{Baselines, ResolvedLm};
use crate::heldout::{context_data, contexts_for_tokens, split_contexts};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sparse_core::checkpoint::{self, Checkpoint};
use sparse_core::metrics::held_out::HeldOutMetrics;
use sparse_core::Matrix;
use sparse_store::{ActivationStore, Split, MANIFEST_FILE};
use sparse_study::figure::{render_png, render_svg, FigureSpec, LineChart, Series};
use sparse_train::{EvalOptions, RunConfig};
use std::path::{Path, PathBuf};

/// Settings of [`run`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReportOptions {
    /// The split evaluated on (test by default; never validation, where
    /// FISTA's λ is chosen).
    pub split: Split,
    /// Evaluation tokens shared by every point (whole contexts, rounded up).
    pub tokens: u64,
    /// Validation tokens for matching FISTA's L0 to an SAE's.
    pub validation_tokens: u64,
    /// FISTA iteration cap.
    pub fista_iters: usize,
    /// Bisection steps for FISTA's λ.
    pub lambda_steps: usize,
    /// Contexts per language-model forward pass.
    pub lm_batch: usize,
    /// Models whose decoders get the per-sample encoders (empty: the first
    /// TopK and the first ReLU SAE of the run).
    pub compare: Vec<String>,
    /// Extra FISTA runs at these multiples of the matched λ.
    pub fista_lambda_factors: Vec<f32>,
    /// Held-out metrics on at most this many tokens of the split (all when `None`).
    pub split_max_tokens: Option<u64>,
}

impl Default for ReportOptions {
    fn default() -> Self {
        ReportOptions {
            split: Split::Test,
            tokens: 8192,
            validation_tokens: 2048,
            fista_iters: 300,
            lambda_steps: 14,
            lm_batch: 8,
            compare: Vec::new(),
            fista_lambda_factors: vec![0.5, 2.0],
            split_max_tokens: None,
        }
    }
}

/// One trained model, measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelResult {
    /// The model's name in the run configuration.
    pub name: String,
    /// Its architecture (`sae`, `topk`, `mlp`, …).
    pub method: String,
    /// Checkpoint step measured.
    pub step: u64,
    /// Training tokens seen.
    pub training_tokens: u64,
    /// Training FLOPs (steps × FLOPs of one step on a batch).
    pub training_flops: f64,
    /// Its options as trained.
    pub spec: serde_json::Value,
    /// Held-out metrics on the whole split (or `split_max_tokens`).
    pub split_metrics: HeldOutMetrics,
    /// The model's own encoder on the shared evaluation tokens, with the downstream loss.
    pub eval: EncoderRow,
}

/// Per-sample encoders on one model's decoder.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DictionaryComparison {
    /// The model whose decoder is used.
    pub dictionary: String,
    /// The comparison.
    pub comparison: Comparison,
}

/// Everything [`run`] measured, with what is needed to reproduce it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LmReport {
    /// The training configuration (seed, batch, splits, models).
    pub config: RunConfig,
    /// SHA-256 of the store's manifest (the data measured).
    pub store_manifest_sha256: String,
    /// The store's hook.
    pub hook: String,
    /// The language model used for the downstream loss.
    pub lm: Option<PathBuf>,
    /// The report's options.
    pub options: ReportOptions,
    /// Evaluation contexts and tokens shared by every point.
    pub eval_contexts: usize,
    /// Evaluation tokens (rows).
    pub eval_tokens: usize,
    /// Clean next-token loss on the evaluation contexts.
    pub ce_clean: Option<f64>,
    /// Loss with the hook zeroed.
    pub ce_zero_ablation: Option<f64>,
    /// The trained models, in configuration order.
    pub models: Vec<ModelResult>,
    /// Models of the configuration with no checkpoint yet (left out).
    pub untrained: Vec<String>,
    /// The per-sample comparisons.
    pub comparisons: Vec<DictionaryComparison>,
}

/// A cached piece: the options and checkpoint step it was measured with.
#[derive(Serialize, Deserialize)]
struct Cached<T> {
    key: serde_json::Value,
    value: T,
}

fn load_cached<T: for<'de> Deserialize<'de>>(path: &Path, key: &serde_json::Value) -> Option<T> {
    let text = std::fs::read_to_string(path).ok()?;
    let c: Cached<T> = serde_json::from_str(&text).ok()?;
    (c.key == *key).then_some(c.value)
}

fn save_cached<T: Serialize>(path: &Path, key: serde_json::Value, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(&Cached { key, value })?;
    sparse_core::io::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// The default per-sample targets: the first TopK and the first ReLU SAE.
fn default_compare(cfg: &RunConfig) -> Vec<String> {
    let mut out = Vec::new();
    for want in [sparse_train::Method::Topk, sparse_train::Method::Sae] {
        if let Some(m) = cfg.model.iter().find(|m| m.method == want) {
            out.push(m.name.clone());
        }
    }
    out
}

/// Measures every model of the run `cfg` (checkpoints in `cfg.out`) and
/// writes `report.json`, `report.md` and the figures into `out`; `log`
/// receives one line per step of the work.
pub fn run(
    cfg: &RunConfig,
    lm: Option<&ResolvedLm>,
    opts: &ReportOptions,
    out: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<LmReport> {
    if opts.split == Split::Validation {
        bail!("the report evaluates on test or train: FISTA's λ is chosen on validation");
    }
    let targets = if opts.compare.is_empty() {
        default_compare(cfg)
    } else {
        opts.compare.clone()
    };
    if let Some(name) = targets
        .iter()
        .find(|n| !cfg.model.iter().any(|m| &m.name == *n))
    {
        bail!("compare: no model named {name} in the run");
    }

    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let store = ActivationStore::open(&cfg.store)
        .with_context(|| format!("opening the store {}", cfg.store.display()))?;
    let store_sha = checkpoint::sha256_file(&cfg.store.join(MANIFEST_FILE))?;
    let splits = cfg.splits()?;
    let first = store.spec().first_position;

    let ids = split_contexts(
        &store,
        &splits,
        opts.split,
        contexts_for_tokens(&store, opts.tokens),
    )?;
    if ids.is_empty() {
        bail!(
            "{}: the {:?} split holds no contexts",
            cfg.store.display(),
            opts.split
        );
    }
    let (x, tokens) = context_data(&store, &ids)?;
    let base = match lm {
        Some(lm) => {
            log("clean and zero-ablated loss");
            Some(Baselines::new(lm, &tokens, first, opts.lm_batch)?)
        }
        None => None,
    };
    // A piece is reused when what it depends on is unchanged: a model's row
    // does not depend on the comparison options, a comparison not on which
    // other models are compared.
    let key_of = |ckpt: &Checkpoint, what: &str| {
        let mut o = serde_json::to_value(opts).expect("options serialise");
        let o = o.as_object_mut().expect("an object");
        o.remove("compare");
        if what == "model" {
            for k in [
                "validation_tokens",
                "fista_iters",
                "lambda_steps",
                "fista_lambda_factors",
            ] {
                o.remove(k);
            }
        } else {
            o.remove("split_max_tokens");
        }
        serde_json::json!({
            "what": what,
            "step": ckpt.step,
            "store": store_sha,
            "options": o,
            "lm": lm.map(|l| &l.path),
        })
    };

    let mut models = Vec::new();
    let mut untrained = Vec::new();
    for spec in &cfg.model {
        let dir = cfg.out.join(&spec.name);
        if !checkpoint::exists(&dir) {
            log(&format!(
                "{}: no checkpoint in {} yet, left out",
                spec.name,
                dir.display()
            ));
            untrained.push(spec.name.clone());
            continue;
        }
        let ckpt = checkpoint::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
        let path = out.join(format!("model-{}.json", spec.name));
        let key = key_of(&ckpt, "model");
        if let Some(r) = load_cached::<ModelResult>(&path, &key) {
            log(&format!("{}: measured before, reused", spec.name));
            models.push(r);
            continue;
        }
        log(&format!("{}: held-out metrics", spec.name));
        let split_metrics = sparse_train::evaluate(
            &ckpt,
            &store,
            EvalOptions {
                split: opts.split,
                splits: Some(splits),
                batch_size: cfg.batch_size,
                max_tokens: opts.split_max_tokens,
            },
        )?;
        let scale = sparse_train::stored_run(&ckpt).map_or(1.0, |r| r.scale);
        let b_dec = sparse_train::models::decoder_bias(&ckpt.model);
        let (metrics, flops) = metrics_of(&Method::Sae, &ckpt.model, &b_dec, scale, &x, 1024)?;
        let downstream = match (lm, &base) {
            (Some(lm), Some(base)) => {
                log(&format!("{}: downstream loss", spec.name));
                Some(
                    base.downstream(lm, &tokens, first, opts.lm_batch, &mut |x: &Matrix| {
                        Ok(Method::Sae.reconstruct(&ckpt.model, &b_dec, scale, x)?.1)
                    })?,
                )
            }
            _ => None,
        };
        let run = sparse_train::stored_run(&ckpt);
        let r = ModelResult {
            name: spec.name.clone(),
            method: spec.method.name().to_string(),
            step: ckpt.step,
            training_tokens: run.as_ref().map_or(0, |r| r.tokens),
            training_flops: ckpt.step as f64 * ckpt.model.train_step_flops(cfg.batch_size),
            spec: serde_json::to_value(spec)?,
            split_metrics,
            eval: EncoderRow {
                encoder: spec.name.clone(),
                l0: metrics.l0,
                mse: metrics.mse,
                normalized_mse: metrics.normalized_mse,
                explained_variance: metrics.explained_variance,
                flops_per_token: flops,
                downstream,
            },
        };
        save_cached(&path, key, &r)?;
        models.push(r);
    }

    let mut comparisons = Vec::new();
    for name in &targets {
        let dir = cfg.out.join(name);
        if untrained.contains(name) {
            continue;
        }
        let ckpt = checkpoint::load(&dir)?;
        let path = out.join(format!("compare-{name}.json"));
        let key = key_of(&ckpt, "compare");
        let comparison = match load_cached::<Comparison>(&path, &key) {
            Some(c) => {
                log(&format!("{name}: comparison measured before, reused"));
                c
            }
            None => {
                log(&format!("{name}: per-sample encoders on its decoder"));
                let c = compare(
                    &ckpt,
                    &store,
                    lm,
                    &CompareOptions {
                        split: opts.split,
                        splits,
                        tokens: opts.tokens,
                        validation_tokens: opts.validation_tokens,
                        fista_iters: opts.fista_iters,
                        lambda_steps: opts.lambda_steps,
                        lm_batch: opts.lm_batch,
                        fista_lambda_factors: opts.fista_lambda_factors.clone(),
                    },
                )
                .with_context(|| format!("comparing encoders on {}", dir.display()))?;
                save_cached(&path, key, &c)?;
                c
            }
        };
        comparisons.push(DictionaryComparison {
            dictionary: name.clone(),
            comparison,
        });
    }

    let report = LmReport {
        config: cfg.clone(),
        store_manifest_sha256: store_sha,
        hook: store.spec().hook.clone(),
        lm: lm.map(|l| l.path.clone()),
        options: opts.clone(),
        eval_contexts: ids.len(),
        eval_tokens: x.rows(),
        ce_clean: base.as_ref().map(|b| b.clean),
        ce_zero_ablation: base.as_ref().map(|b| b.zero),
        models,
        untrained,
        comparisons,
    };
    write_outputs(&report, out)?;
    Ok(report)
}

/// Writes `report.json`, `report.md` and the figures of `report` into `out`.
pub fn write_outputs(report: &LmReport, out: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    sparse_core::io::write_atomic(&out.join("report.json"), json.as_bytes())?;
    sparse_core::io::write_atomic(&out.join("report.md"), markdown(report).as_bytes())?;
    for fig in figures(report) {
        let chart = LineChart {
            spec: &fig.spec(),
            series: &fig.series,
            markers_from: fig.markers_from,
        };
        let svg = render_svg(&chart, (960, 640))?;
        sparse_core::io::write_atomic(&out.join(format!("{}.svg", fig.file)), svg.as_bytes())?;
        let png = render_png(&chart, (960, 640))?;
        sparse_core::io::write_atomic(&out.join(format!("{}.png", fig.file)), &png)?;
    }
    Ok(())
}

/// A figure's data before rendering.
pub struct Figure {
    /// File stem.
    pub file: &'static str,
    /// Title.
    pub title: &'static str,
    /// x-axis label.
    pub x_label: &'static str,
    /// y-axis label.
    pub y_label: &'static str,
    /// y range.
    pub y_range: (f64, f64),
    /// Lines (trained families, FISTA's λ sweep) then markers.
    pub series: Vec<Series>,
    /// Index of the first series drawn as markers.
    pub markers_from: usize,
}

impl Figure {
    fn spec(&self) -> FigureSpec<'_> {
        FigureSpec {
            title: self.title,
            x_label: self.x_label,
            y_label: self.y_label,
            log_x: true,
            y_range: self.y_range,
        }
    }
}

/// Legend name of an architecture.
fn family(method: &str) -> String {
    match method {
        "sae" => "ReLU SAE".into(),
        "topk" => "TopK SAE".into(),
        "batchtopk" => "BatchTopK SAE".into(),
        "mlp" => "MLP encoder".into(),
        "jumprelu" => "JumpReLU SAE".into(),
        other => other.into(),
    }
}

/// The two Pareto figures: L0 vs explained variance, and inference FLOPs
/// per token vs loss recovered (when the downstream loss was measured).
pub fn figures(report: &LmReport) -> Vec<Figure> {
    type Pick = fn(&EncoderRow) -> Option<(f64, f64)>;
    let l0_ev: Pick = |r| Some((r.l0.max(1e-3), r.explained_variance));
    let flops_lr: Pick = |r| Some((r.flops_per_token, r.downstream.as_ref()?.loss_recovered));
    let mut out = Vec::new();
    for (file, title, x_label, y_label, pick) in [
        (
            "pareto_l0_explained_variance",
            "Sparsity vs reconstruction (held-out tokens)",
            "L0 (active latents per token)",
            "explained variance",
            l0_ev,
        ),
        (
            "pareto_flops_loss_recovered",
            "Inference cost vs downstream loss recovered",
            "inference FLOPs per token",
            "loss recovered",
            flops_lr,
        ),
    ] {
        // Lines: one per trained family (sorted by x), one per FISTA sweep.
        let mut lines: Vec<Series> = Vec::new();
        for m in &report.models {
            let Some(p) = pick(&m.eval) else { continue };
            let label = family(&m.method);
            match lines.iter_mut().find(|s| s.label == label) {
                Some(s) => s.points.push(p),
                None => lines.push(Series {
                    label,
                    points: vec![p],
                }),
            }
        }
        let mut markers = Vec::new();
        for c in &report.comparisons {
            let mut fista = Vec::new();
            for r in &c.comparison.encoders {
                let Some(p) = pick(r) else { continue };
                if r.encoder == "sae" {
                    continue; // already a trained point
                }
                if r.encoder == "fista" || r.encoder.starts_with("fista-x") {
                    fista.push(p);
                } else {
                    markers.push(Series {
                        label: format!("{} on {}", r.encoder, c.dictionary),
                        points: vec![p],
                    });
                }
            }
            if !fista.is_empty() {
                lines.push(Series {
                    label: format!("FISTA on {}", c.dictionary),
                    points: fista,
                });
            }
        }
        for s in &mut lines {
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        if lines.iter().chain(&markers).all(|s| s.points.is_empty()) {
            continue;
        }
        let lo = lines
            .iter()
            .chain(&markers)
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(f64::INFINITY, f64::min);
        let y0 = ((lo - 0.05) * 20.0).floor() / 20.0;
        let markers_from = lines.len();
        lines.extend(markers);
        out.push(Figure {
            file,
            title,
            x_label,
            y_label,
            y_range: (y0.min(0.95), 1.0),
            series: lines,
            markers_from,
        });
    }
    out
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// The report as Markdown: the trained models, then each comparison.
pub fn markdown(r: &LmReport) -> String {
    let mut s = format!(
        "Store hook `{}` (manifest sha256 {}…), split {:?}: {} evaluation tokens in {} contexts \
         (clean CE {}, zero-ablation CE {}); seed {}, batch {}, fractions {}/{}.\n\n",
        r.hook,
        &r.store_manifest_sha256[..12.min(r.store_manifest_sha256.len())],
        r.options.split,
        r.eval_tokens,
        r.eval_contexts,
        opt(r.ce_clean, 4),
        opt(r.ce_zero_ablation, 4),
        r.config.seed,
        r.config.batch_size,
        r.config.validation,
        r.config.test,
    );
    s.push_str(
        "| model | architecture | L0 | explained variance | normalised MSE | CE increase | loss recovered | dead (split) | dense (split) | inference FLOPs/token | training FLOPs |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for m in &r.models {
        let d = m.eval.downstream.as_ref();
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.4} | {:.4} | {} | {} | {:.3} | {:.4} | {:.2e} | {:.2e} |\n",
            m.name,
            m.method,
            m.eval.l0,
            m.eval.explained_variance,
            m.eval.normalized_mse,
            opt(d.map(|d| d.ce_increase), 4),
            opt(d.map(|d| d.loss_recovered), 4),
            m.split_metrics.dead_fraction,
            m.split_metrics.dense_fraction,
            m.eval.flops_per_token,
            m.training_flops,
        ));
    }
    if !r.untrained.is_empty() {
        s.push_str(&format!(
            "\nNot trained yet (left out): {}.\n",
            r.untrained.join(", ")
        ));
    }
    for c in &r.comparisons {
        s.push_str(&format!(
            "\nPer-sample encoders on the decoder of `{}` (FISTA λ = {:.4} matched on {} validation tokens to L0 {:.1}; k = {}):\n\n{}",
            c.dictionary,
            c.comparison.fista_lambda,
            c.comparison.validation_tokens,
            c.comparison.sae_validation_l0,
            c.comparison.pursuit_k,
            crate::compare::markdown(&c.comparison.encoders)
        ));
    }
    s
}
