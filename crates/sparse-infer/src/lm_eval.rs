//! `sparse-infer evaluate` and `compare-encoders`: argument parsing and JSON
//! output around `sparse-eval` (held-out metrics, downstream loss, encoders
//! on one dictionary; the conventions are in that crate's doc).

use anyhow::{bail, Context, Result};
use sparse_core::checkpoint::Checkpoint;
use sparse_eval::{resolve_lm, resolve_splits, CompareOptions};
use sparse_store::{ActivationStore, Split, Splits};
use sparse_train::EvalOptions;
use std::path::PathBuf;

/// Arguments of `compare-encoders`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// SAE checkpoint folder (ReLU / TopK, written by `train`).
    #[arg(long)]
    model: PathBuf,
    /// Activation store folder.
    #[arg(long)]
    store: PathBuf,
    /// Split to evaluate on (FISTA's λ is chosen on the validation split).
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Held-out tokens (whole contexts, rounded up).
    #[arg(long, default_value_t = 4096)]
    tokens: u64,
    /// Validation tokens for choosing FISTA's λ (whole contexts, rounded up).
    #[arg(long, default_value_t = 1024)]
    validation_tokens: u64,
    /// FISTA iteration cap (tolerance 1e-4).
    #[arg(long, default_value_t = 300)]
    fista_iters: usize,
    /// Bisection steps for FISTA's λ.
    #[arg(long, default_value_t = 14)]
    lambda_steps: usize,
    /// Language model for the downstream loss (default: the fetched asset when its sha256 is the store's).
    #[arg(long)]
    lm: Option<PathBuf>,
    /// Contexts per language-model forward pass.
    #[arg(long, default_value_t = 8)]
    lm_batch: usize,
    /// Extra FISTA runs at these multiples of the matched λ (comma-separated), to trace its trade-off.
    #[arg(long, value_delimiter = ',')]
    fista_lambda_factors: Vec<f32>,
    /// Also write the table as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    #[command(flatten)]
    fractions: FractionsArg,
}

/// `compare-encoders`: prints one JSON object (and writes `--markdown`).
pub fn compare_encoders(a: CompareArgs) -> Result<()> {
    let ckpt = sparse_core::checkpoint::load(&a.model)
        .with_context(|| format!("loading the checkpoint {}", a.model.display()))?;
    let store = ActivationStore::open(&a.store)
        .with_context(|| format!("opening the store {}", a.store.display()))?;
    let lm = resolve_lm(&store, a.lm.as_deref())?;
    let opts = CompareOptions {
        split: a.split.into(),
        splits: a.fractions.splits(&ckpt)?,
        tokens: a.tokens,
        validation_tokens: a.validation_tokens,
        fista_iters: a.fista_iters,
        lambda_steps: a.lambda_steps,
        lm_batch: a.lm_batch,
        fista_lambda_factors: a.fista_lambda_factors.clone(),
    };
    let cmp = sparse_eval::compare(&ckpt, &store, lm.as_ref(), &opts).with_context(|| {
        format!(
            "comparing encoders on {} with {}",
            a.model.display(),
            a.store.display()
        )
    })?;
    let mut out = serde_json::to_value(&cmp)?;
    let obj = out.as_object_mut().expect("an object");
    obj.insert("model".into(), serde_json::json!(a.model));
    obj.insert("method".into(), serde_json::json!(ckpt.method));
    obj.insert("step".into(), serde_json::json!(ckpt.step));
    obj.insert("store".into(), serde_json::json!(a.store));
    obj.insert("split".into(), serde_json::json!(opts.split));
    obj.insert(
        "first_position".into(),
        serde_json::json!(store.spec().first_position),
    );
    obj.insert("lm".into(), serde_json::json!(lm.as_ref().map(|l| &l.path)));
    obj.insert("notes".into(), serde_json::json!("per-sample solvers code s·x − b_dec on the SAE's decoder and decode Z·D + b_dec, divided by s; FISTA is non-negative, λ bisected on the validation split to match the SAE's L0 there, k = round(that L0); sae+fista = FISTA warm-started at the SAE's codes (FLOPs include the SAE pass); splicing leaves positions < first_position (attention sink) untouched and CE averages the predictions at positions ≥ first_position"));
    if let Some(p) = &a.markdown {
        let text = format!(
            "Encoders on the dictionary of `{}` ({} held-out tokens of {}, split {:?}; FISTA λ = {:.4}, k = {})\n\n{}",
            a.model.display(),
            cmp.tokens,
            a.store.display(),
            opts.split,
            cmp.fista_lambda,
            cmp.pursuit_k,
            sparse_eval::compare::markdown(&cmp.encoders)
        );
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// Arguments of `evaluate`.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// Checkpoint folder (written by `train`).
    #[arg(long)]
    model: PathBuf,
    /// Activation store folder.
    #[arg(long)]
    store: PathBuf,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Rows per batch.
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
    /// Evaluate at most this many tokens.
    #[arg(long)]
    max_tokens: Option<u64>,
    #[command(flatten)]
    fractions: FractionsArg,
    /// Language model for the downstream loss (default: the fetched asset, when its sha256 is the store's; a file with another sha256 is an error).
    #[arg(long)]
    lm: Option<PathBuf>,
    /// Held-out contexts of the split for the downstream loss (0: skip it).
    #[arg(long, default_value_t = 32)]
    contexts: usize,
    /// Contexts per language-model forward pass.
    #[arg(long, default_value_t = 8)]
    lm_batch: usize,
}

/// `--fractions`, shared by every command that reads a store's held-out splits.
#[derive(clap::Args, Debug)]
pub struct FractionsArg {
    /// Held-out fractions `VALIDATION,TEST` (default: those the checkpoint was trained with, else 0.05,0.05).
    #[arg(long, value_delimiter = ',', num_args = 1..=2)]
    fractions: Option<Vec<f64>>,
}

impl FractionsArg {
    /// The splits: these fractions, else the checkpoint's (else 0.05 / 0.05).
    pub fn splits(&self, ckpt: &Checkpoint) -> Result<Splits> {
        resolve_splits(ckpt, self.fractions.as_deref())
    }

    /// The splits when `--fractions` was given, `None` when it was not.
    pub fn given(&self, ckpt: &Checkpoint) -> Result<Option<Splits>> {
        self.fractions
            .as_ref()
            .map(|_| self.splits(ckpt))
            .transpose()
    }
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    Validation,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Validation => Split::Validation,
            SplitArg::Test => Split::Test,
        }
    }
}

/// Prints the held-out metrics of a checkpoint as JSON.
pub fn evaluate(a: EvaluateArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let ckpt = sparse_core::checkpoint::load(&a.model)
        .with_context(|| format!("loading the checkpoint {}", a.model.display()))?;
    let store = ActivationStore::open(&a.store)
        .with_context(|| format!("opening the store {}", a.store.display()))?;
    let splits = a.fractions.given(&ckpt)?;
    let split: Split = a.split.into();
    let lm = if a.contexts > 0 {
        resolve_lm(&store, a.lm.as_deref())?
    } else {
        None
    };
    let opts = EvalOptions {
        split,
        splits,
        batch_size: a.batch_size,
        max_tokens: a.max_tokens,
    };
    let mut metrics = sparse_train::evaluate(&ckpt, &store, opts)
        .with_context(|| format!("evaluating {} on {}", a.model.display(), a.store.display()))?;
    let mut downstream_contexts = 0;
    if let Some(lm) = &lm {
        let splits = a.fractions.splits(&ckpt)?;
        let (d, n) = sparse_eval::downstream::evaluate_downstream(
            &ckpt, &store, lm, &splits, split, a.contexts, a.lm_batch,
        )
        .with_context(|| {
            format!(
                "downstream loss of {} with {}",
                a.model.display(),
                lm.path.display()
            )
        })?;
        metrics.downstream = Some(d);
        downstream_contexts = n;
    }
    let run = sparse_train::stored_run(&ckpt);
    let mut out = serde_json::to_value(&metrics)?;
    let obj = out.as_object_mut().expect("an object");
    obj.insert("model".into(), serde_json::json!(a.model));
    obj.insert("method".into(), serde_json::json!(ckpt.method));
    obj.insert("step".into(), serde_json::json!(ckpt.step));
    obj.insert("store".into(), serde_json::json!(a.store));
    obj.insert("split".into(), serde_json::json!(split));
    obj.insert(
        "scale".into(),
        serde_json::json!(run.as_ref().map_or(1.0, |r| r.scale)),
    );
    obj.insert("lm".into(), serde_json::json!(lm.as_ref().map(|l| &l.path)));
    obj.insert(
        "downstream_contexts".into(),
        serde_json::json!(downstream_contexts),
    );
    if lm.is_some() {
        obj.insert(
            "downstream_note".into(),
            serde_json::json!("hook activations at positions >= first_position replaced (the attention sink before it untouched); mean next-token CE over the predictions at positions >= first_position; zero-ablation zeros the same positions"),
        );
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// Arguments of `lm-report`.
#[derive(clap::Args, Debug)]
pub struct LmReportArgs {
    /// The training configuration of the run (its `store`, `out` and models).
    #[arg(long)]
    config: PathBuf,
    /// Output folder (default: `<out>/report` of the configuration).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Split to evaluate on.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Evaluation tokens shared by every point (whole contexts, rounded up).
    #[arg(long, default_value_t = 8192)]
    tokens: u64,
    /// Validation tokens for matching FISTA's L0 to each compared SAE.
    #[arg(long, default_value_t = 2048)]
    validation_tokens: u64,
    /// FISTA iteration cap.
    #[arg(long, default_value_t = 300)]
    fista_iters: usize,
    /// Bisection steps for FISTA's λ.
    #[arg(long, default_value_t = 14)]
    lambda_steps: usize,
    /// Models whose decoders get per-sample encoders (comma-separated; default: the first TopK and the first ReLU SAE).
    #[arg(long, value_delimiter = ',')]
    compare: Vec<String>,
    /// Extra FISTA runs at these multiples of the matched λ (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "0.5,2")]
    fista_lambda_factors: Vec<f32>,
    /// Held-out metrics on at most this many tokens of the split (default: all).
    #[arg(long)]
    split_max_tokens: Option<u64>,
    /// Language model for the downstream loss (default: the fetched asset when its sha256 is the store's).
    #[arg(long)]
    lm: Option<PathBuf>,
    /// Contexts per language-model forward pass.
    #[arg(long, default_value_t = 8)]
    lm_batch: usize,
}

/// `lm-report`: every model of a run measured on the same held-out tokens,
/// per-sample encoders on chosen decoders; writes report.json, report.md and
/// the Pareto figures, prints the Markdown.
pub fn lm_report(a: LmReportArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("reading {}", a.config.display()))?;
    let cfg = crate::lm_train::parse_config(&text, &a.config)?;
    let store = ActivationStore::open(&cfg.store)
        .with_context(|| format!("opening the store {}", cfg.store.display()))?;
    let lm = resolve_lm(&store, a.lm.as_deref())?;
    if lm.is_none() {
        eprintln!("no language model with the store's sha256 found (pass --lm): skipping the downstream loss");
    }
    let out = a.out.unwrap_or_else(|| cfg.out.join("report"));
    let opts = sparse_eval::report::ReportOptions {
        split: a.split.into(),
        tokens: a.tokens,
        validation_tokens: a.validation_tokens,
        fista_iters: a.fista_iters,
        lambda_steps: a.lambda_steps,
        lm_batch: a.lm_batch,
        compare: a.compare,
        fista_lambda_factors: a.fista_lambda_factors,
        split_max_tokens: a.split_max_tokens,
    };
    let start = std::time::Instant::now();
    let report = sparse_eval::report::run(&cfg, lm.as_ref(), &opts, &out, &mut |line| {
        eprintln!("[{:>6.0} s] {line}", start.elapsed().as_secs_f64())
    })
    .with_context(|| format!("the report of {}", a.config.display()))?;
    println!("{}", sparse_eval::report::markdown(&report));
    eprintln!("wrote {}/report.{{json,md}} and the figures", out.display());
    Ok(())
}
