//! `sparse-infer`: the command line. Parses arguments, calls the library
//! crates, prints results. No numerics live here.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use sparse_core::encoders::exp_adam::{ExpAdam, ExpAdamConfig};
use sparse_core::encoders::fista::{Fista, FistaConfig};
use sparse_core::encoders::pursuit::{MatchingPursuit, Omp};
use sparse_core::encoders::Encoder;
use sparse_core::io::{read_npy, write_npy, NpyDtype};
use sparse_core::metrics;
use sparse_study::amortisation_gap::GapGridConfig;
use sparse_study::known_dictionary::KnownDictionaryConfig;
use sparse_study::learned_dictionary::LearnedDictionaryConfig;
use sparse_study::synthetic_realism::SyntheticRealismConfig;
use sparse_study::StudyReport;
use std::path::{Path, PathBuf};

mod autointerp_cmd;
mod bench;
mod dashboards_cmd;
mod harvest_cmd;
mod lm_eval;
mod lm_train;
mod probe_cmd;
mod saelens_cmd;
mod synth_preset;
mod train;

/// Large matrices on huge pages, as numpy does (`sparse_core::huge_pages`).
#[global_allocator]
static ALLOCATOR: sparse_core::huge_pages::HugePageAlloc = sparse_core::huge_pages::HugePageAlloc;

/// Sparse inference and dictionary learning: synthetic data, encoders, metrics and studies.
#[derive(Parser, Debug)]
#[command(name = "sparse-infer", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate a synthetic data set X = Z·D with exactly-K-sparse half-normal codes.
    Synth(SynthArgs),
    /// Compare inferred codes (and optionally dictionaries) with the truth; prints one JSON object.
    Metrics(MetricsArgs),
    /// Encode data against a dictionary with a per-sample solver, or with a trained model (--model).
    Encode(EncodeArgs),
    /// Train a learned-dictionary model from a TOML configuration; resumes from the checkpoint in `out`.
    Train(TrainArgs),
    /// Run a study of the paper end to end (defaults reproduce it).
    Reproduce(ReproduceArgs),
    /// Measure the amortisation gap for one (N, M, K): best supervised encoders vs per-sample inference; prints JSON.
    Gap(GapArgs),
    /// Benchmark our hot paths against PyTorch, numpy and scikit-learn, side by side.
    Bench(bench::BenchArgs),
    /// Run one benchmark kernel (used by `bench` in its child processes).
    #[command(hide = true)]
    BenchKernel(bench::BenchKernelArgs),
    /// Run a sweep (grid of data × methods × seeds) into a SQLite store; resumes, skipping runs already done.
    Sweep(SweepArgs),
    /// Merge shard stores into one store (runs already present are kept; conflicting results are reported).
    Merge(MergeArgs),
    /// Write the report of a store: Markdown tables, figures (SVG and PNG) and one self-contained HTML page.
    Report(ReportArgs),
    /// Export a trained checkpoint (or convert a SAELens folder) as a SAELens folder or .npy dictionary.
    Export(saelens_cmd::ExportArgs),
    /// Run a language model over text and store its activations at one hook point (resumable).
    Harvest(harvest_cmd::HarvestArgs),
    /// k-sparse probing of part-of-speech tags and monosemanticity of encoders on a Brown store.
    Probe(probe_cmd::ProbeArgs),
    /// Explain latents and score the explanations (detection, fuzzing) with an LLM judge.
    Autointerp(autointerp_cmd::AutointerpArgs),
    /// Held-out metrics of a trained checkpoint on a split of an activation store; prints JSON.
    Evaluate(lm_eval::EvaluateArgs),
    /// An SAE's own encoder against per-sample inference (FISTA, OMP, MP, SAE+FISTA) on its decoder, on held-out tokens of a store; prints JSON.
    CompareEncoders(lm_eval::CompareArgs),
    /// Every model of an LM training run measured on the same held-out tokens, per-sample encoders on their decoders: table and Pareto figures.
    LmReport(lm_eval::LmReportArgs),
    /// A static feature browser of an SAE on a store (top contexts, quantile samples, histograms, logits; SAE vs FISTA codes side by side) plus Neuronpedia JSON and a delphi latent cache.
    Dashboards(dashboards_cmd::DashboardsArgs),
    /// Serve the feature browser over HTTP (127.0.0.1 by default), computed on start or from a dashboards folder.
    Serve(dashboards_cmd::ServeArgs),
}

#[derive(clap::Args, Debug)]
struct SweepArgs {
    /// The sweep file (TOML; see configs/sweeps/).
    config: PathBuf,
    /// Runs in parallel (default: the number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// The results store (default: results/sweeps/<name>.sqlite).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Run only shard I of N (0-based), e.g. 0/4; default: SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT when set, else all.
    #[arg(long)]
    shard: Option<String>,
}

#[derive(clap::Args, Debug)]
struct MergeArgs {
    /// The store to merge into (created if missing).
    #[arg(long)]
    into: PathBuf,
    /// Shard stores to merge.
    #[arg(required = true)]
    stores: Vec<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ReportArgs {
    /// The results store.
    #[arg(long)]
    store: PathBuf,
    /// Output folder for report.md, index.html and figures/.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct GapArgs {
    /// Number of latents N.
    #[arg(long)]
    latents: usize,
    /// Observed dimension M.
    #[arg(long)]
    dim: usize,
    /// Active latents K.
    #[arg(long)]
    k: usize,
    /// Seed of data, initialisation and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Supervised MLP hidden widths (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![32usize, 128, 512, 1024])]
    widths: Vec<usize>,
    /// Full-batch Adam steps per supervised encoder.
    #[arg(long, default_value_t = 3000)]
    steps: usize,
    /// Training codes for the supervised encoders.
    #[arg(long, default_value_t = 4096)]
    train_samples: usize,
    /// Held-out codes.
    #[arg(long, default_value_t = 1024)]
    test_samples: usize,
}

#[derive(clap::Args, Debug)]
struct SynthArgs {
    /// A realistic preset instead of the paper's generator (synthsaebench-16k,
    /// synthsaebench-laptop, ood-laptop): writes train/val/test (and test_ood) splits.
    #[arg(long, conflicts_with_all = ["latents", "dim", "k"])]
    preset: Option<String>,
    /// Number of latents N (dictionary atoms).
    #[arg(long, required_unless_present = "preset")]
    latents: Option<usize>,
    /// Observed dimension M.
    #[arg(long, required_unless_present = "preset")]
    dim: Option<usize>,
    /// Active latents per sample K (1 ≤ K ≤ N).
    #[arg(long, required_unless_present = "preset")]
    k: Option<usize>,
    /// Number of samples S (with --preset: training samples, default 10000).
    #[arg(long, required_unless_present = "preset")]
    samples: Option<usize>,
    /// With --preset: samples of the validation, test and OOD test splits each (default 2000).
    #[arg(long, requires = "preset")]
    eval_samples: Option<usize>,
    /// Seed of every random stream (default 0; with --preset: the preset's own).
    #[arg(long)]
    seed: Option<u64>,
    /// Standard deviation of additive Gaussian noise on X (default 0; with --preset: the preset's own).
    #[arg(long)]
    noise: Option<f32>,
    /// Output folder (created): data.npy (S×M), codes.npy (S×N), dictionary.npy (N×M), all f32;
    /// with --preset: dictionary.npy, bias.npy, config.json and one folder per split.
    #[arg(long)]
    out: PathBuf,
}

#[derive(clap::Args, Debug)]
struct MetricsArgs {
    /// True codes Z (n × N) as .npy.
    #[arg(long = "true")]
    true_codes: PathBuf,
    /// Inferred codes Ẑ (n × N') as .npy.
    #[arg(long = "pred")]
    pred_codes: PathBuf,
    /// True dictionary D (N × M).
    #[arg(long, requires = "pred_dictionary")]
    true_dictionary: Option<PathBuf>,
    /// Learned dictionary D̂ (N' × M).
    #[arg(long, requires = "true_dictionary")]
    pred_dictionary: Option<PathBuf>,
    /// Data X (n × M): with --pred-dictionary (or --true-dictionary), adds reconstruction MSE and explained variance.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Method {
    /// FISTA on the (non-negative) lasso.
    Fista,
    /// ISTA on the (non-negative) lasso.
    Ista,
    /// Orthogonal matching pursuit, k atoms.
    Omp,
    /// Matching pursuit, k steps.
    Mp,
    /// The paper's Adam on exp-parametrised codes.
    ExpAdam,
}

#[derive(clap::Args, Debug)]
struct TrainArgs {
    /// Training configuration (TOML): method, data, n_latents, steps, out, ...
    #[arg(long)]
    config: PathBuf,
}

#[derive(clap::Args, Debug)]
struct EncodeArgs {
    /// Encoding method (not with --model).
    #[arg(
        long,
        value_enum,
        required_unless_present_any = ["model", "saelens"],
        conflicts_with_all = ["model", "saelens"]
    )]
    method: Option<Method>,
    /// Dictionary D (N × M) as .npy, atoms as rows, or a SAELens folder: its W_dec, with b_dec subtracted from the data (not with --model).
    #[arg(
        long,
        required_unless_present_any = ["model", "saelens"],
        conflicts_with_all = ["model", "saelens"]
    )]
    dictionary: Option<PathBuf>,
    /// A SAELens folder (cfg.json + sae_weights.safetensors): encode with its own encoder, as SAELens does.
    #[arg(long, conflicts_with_all = ["model", "lambda", "k", "signed", "max_iter", "tol"])]
    saelens: Option<PathBuf>,
    /// With --saelens: also write the reconstruction X̂ = decode(encode(X)) (n × M) here.
    #[arg(long, requires = "saelens")]
    reconstruction: Option<PathBuf>,
    /// A checkpoint folder written by `train`: encode with its own encoder.
    #[arg(long, conflicts_with_all = ["lambda", "k", "signed", "max_iter", "tol"])]
    model: Option<PathBuf>,
    /// Data X (n × M) as .npy.
    #[arg(long)]
    input: PathBuf,
    /// Output codes Z (n × N), f32 .npy.
    #[arg(long)]
    out: PathBuf,
    /// Sparsity weight λ (fista/ista: ½‖x − zD‖² + λ‖z‖₁; exp-adam: the paper's mean loss).
    #[arg(long, allow_negative_numbers = true)]
    lambda: Option<f32>,
    /// Number of atoms for omp/mp.
    #[arg(long)]
    k: Option<usize>,
    /// Allow negative codes (default: z ≥ 0).
    #[arg(long)]
    signed: bool,
    /// Iteration cap for fista/ista/exp-adam.
    #[arg(long)]
    max_iter: Option<usize>,
    /// Stopping tolerance on the relative change of the codes (fista/ista).
    #[arg(long)]
    tol: Option<f32>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Study {
    /// Encoders paired with the frozen true dictionary (paper §7, "Known D").
    KnownDictionary,
    /// The amortisation gap over a grid of N/M and K (docs/theory.md).
    AmortisationGap,
    /// Every method learns its own dictionary (paper §7, "Unknown D").
    LearnedDictionary,
    /// The SAE zoo on SynthSAEBench-style data, in and out of distribution.
    SyntheticRealism,
}

#[derive(clap::Args, Debug)]
struct ReproduceArgs {
    /// One study alone; without it: the known- and learned-dictionary studies
    /// (2 seeds each), the reduced scaling sweep and the report (≈ 9 CPU-minutes; docs/results.md).
    #[arg(value_enum)]
    study: Option<Study>,
    /// Without a study: the paper-sized run (5 seeds per study, the full scaling grid).
    #[arg(long, conflicts_with_all = ["study", "quick", "seeds", "config"])]
    full: bool,
    /// Number of seeds (default: 5 for one study, as in the paper; 2 for the whole reproduction).
    #[arg(long)]
    seeds: Option<usize>,
    /// Runs in parallel in the scaling sweep (default: the number of cores).
    #[arg(long, conflicts_with = "study")]
    jobs: Option<usize>,
    /// Output folder (default: results/<study>, or results/reproduce without a study).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A reduced configuration that runs in seconds (smoke test).
    #[arg(long)]
    quick: bool,
    /// A TOML file overriding fields of the study's configuration (see results.json's "config" for the names).
    #[arg(long, requires = "study")]
    config: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {}{}", one_line_message(&e), storage_hint(&e));
        std::process::exit(1);
    }
}

/// The chain of causes on one line, outermost first; a cause whose text the
/// previous message already shows (e.g. an I/O error printed with its path) is skipped.
fn one_line_message(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    let joined = parts.join(": ");
    joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What to do about a failed write, for the errors whose system message
/// alone leaves it unclear (a full disk, a file-size limit, no permission).
fn storage_hint(e: &anyhow::Error) -> &'static str {
    use std::io::ErrorKind as K;
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    match kind {
        Some(K::StorageFull | K::FileTooLarge) => {
            " (the disk is full or a file-size limit was reached: free space or write elsewhere; earlier files are intact)"
        }
        Some(K::PermissionDenied | K::ReadOnlyFilesystem) => {
            " (no permission to write there: choose another output folder)"
        }
        _ => "",
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth(a) => synth(a),
        Command::Metrics(a) => metrics_cmd(a),
        Command::Encode(a) => encode(a),
        Command::Train(a) => train::train(&a.config, progress_bar()),
        Command::Reproduce(a) => reproduce(a),
        Command::Gap(a) => gap(a),
        Command::Bench(a) => bench::bench(a),
        Command::BenchKernel(a) => bench::bench_kernel(a),
        Command::Sweep(a) => sweep(a),
        Command::Merge(a) => merge(a),
        Command::Report(a) => report(a),
        Command::Export(a) => saelens_cmd::export(a),
        Command::Harvest(a) => harvest_cmd::harvest_cmd(a),
        Command::Probe(a) => probe_cmd::probe(a),
        Command::Autointerp(a) => autointerp_cmd::autointerp(a),
        Command::Evaluate(a) => lm_eval::evaluate(a),
        Command::CompareEncoders(a) => lm_eval::compare_encoders(a),
        Command::LmReport(a) => lm_eval::lm_report(a),
        Command::Dashboards(a) => dashboards_cmd::dashboards(a),
        Command::Serve(a) => dashboards_cmd::serve(a),
    }
}

fn load(path: &Path, what: &str) -> Result<sparse_core::Matrix> {
    let m = read_npy(path)?;
    m.check_finite(&format!("{what} ({})", path.display()))?;
    Ok(m)
}

fn synth(a: SynthArgs) -> Result<()> {
    if let Some(preset) = &a.preset {
        let req = synth_preset::PresetRequest {
            preset,
            seed: a.seed,
            noise: a.noise,
            n_train: a.samples.unwrap_or(synth_preset::DEFAULT_TRAIN),
            n_eval: a.eval_samples.unwrap_or(synth_preset::DEFAULT_EVAL),
        };
        return synth_preset::synth_preset(&req, &a.out);
    }
    let (Some(latents), Some(dim), Some(k), Some(samples)) = (a.latents, a.dim, a.k, a.samples)
    else {
        bail!("--latents, --dim, --k and --samples are required without --preset");
    };
    let mut config =
        sparse_core::data::SyntheticConfig::paper(latents, dim, k, a.seed.unwrap_or(0));
    config.noise_std = a.noise.unwrap_or(0.0);
    config.validate()?;
    let dictionary = config.dictionary()?;
    let split = config.split(&dictionary, samples, 1)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    write_npy(&a.out.join("data.npy"), &split.x, NpyDtype::F32)?;
    write_npy(&a.out.join("codes.npy"), &split.z, NpyDtype::F32)?;
    write_npy(&a.out.join("dictionary.npy"), &dictionary, NpyDtype::F32)?;
    println!(
        "{}",
        serde_json::json!({
            "out": a.out, "config": config, "samples": samples,
            "files": {"data": [samples, dim], "codes": [samples, latents], "dictionary": [latents, dim]},
        })
    );
    Ok(())
}

fn metrics_cmd(a: MetricsArgs) -> Result<()> {
    let z = load(&a.true_codes, "true codes")?;
    let zhat = load(&a.pred_codes, "predicted codes")?;
    if z.rows() != zhat.rows() {
        bail!(
            "{}: expected {} rows (one per sample, as in {}), found shape ({}, {})",
            a.pred_codes.display(),
            z.rows(),
            a.true_codes.display(),
            zhat.rows(),
            zhat.cols()
        );
    }
    let report = metrics::code_report(&z, &zhat)?;
    let mut out = serde_json::to_value(&report)?;
    if let (Some(td), Some(pd)) = (&a.true_dictionary, &a.pred_dictionary) {
        let d = load(td, "true dictionary")?;
        let dhat = load(pd, "predicted dictionary")?;
        out["dictionary_mcc"] = metrics::dictionary_mcc(&d, &dhat)?.into();
        out["dictionary_cosine"] = metrics::dictionary_cosine(&d, &dhat)?.into();
    }
    if let Some(xp) = &a.data {
        let dpath = a
            .pred_dictionary
            .as_ref()
            .or(a.true_dictionary.as_ref())
            .context("--data needs --pred-dictionary to reconstruct from the predicted codes")?;
        let x = load(xp, "data")?;
        let d = load(dpath, "dictionary")?;
        let rec = metrics::reconstruction_report(&x, &zhat, &d)?;
        out["mse"] = rec.mse.into();
        out["explained_variance"] = rec.explained_variance.into();
    }
    println!("{out}");
    Ok(())
}

fn encode_with_model(model: &Path, a: &EncodeArgs) -> Result<()> {
    let ckpt = sparse_core::checkpoint::load(model)?;
    let x = load(&a.input, "data")?;
    let d = ckpt.model.dictionary();
    if x.cols() != d.cols() {
        bail!(
            "{}: expected shape (n, {}) to match the model {} of dictionary shape ({}, {}), found ({}, {})",
            a.input.display(),
            d.cols(),
            model.display(),
            d.rows(),
            d.cols(),
            x.rows(),
            x.cols()
        );
    }
    let codes = ckpt.model.encode(&x)?;
    write_npy(&a.out, &codes, NpyDtype::F32)?;
    let l0 = metrics::l0(&codes);
    println!(
        "{}",
        serde_json::json!({
            "method": ckpt.method, "model": model, "step": ckpt.step, "out": a.out,
            "shape": [codes.rows(), codes.cols()], "l0": l0.mean_count,
        })
    );
    Ok(())
}

fn encode(a: EncodeArgs) -> Result<()> {
    if let Some(model) = &a.model {
        return encode_with_model(model, &a);
    }
    if let Some(dir) = &a.saelens {
        return saelens_cmd::encode_with_saelens(
            dir,
            &a.input,
            &a.out,
            a.reconstruction.as_deref(),
        );
    }
    let (Some(method), Some(dictionary)) = (a.method, a.dictionary.clone()) else {
        bail!("--method and --dictionary are required without --model");
    };
    let (d, x) = if saelens_cmd::is_saelens_folder(&dictionary) {
        saelens_cmd::saelens_dictionary(&dictionary, &a.input)?
    } else {
        (load(&dictionary, "dictionary")?, load(&a.input, "data")?)
    };
    if x.cols() != d.cols() {
        bail!(
            "{}: expected shape (n, {}) to match the dictionary {} of shape ({}, {}), found ({}, {})",
            a.input.display(),
            d.cols(),
            dictionary.display(),
            d.rows(),
            d.cols(),
            x.rows(),
            x.cols()
        );
    }
    let need_k = || a.k.context("--k is required for omp and mp");
    let encoder: Box<dyn Encoder> = match method {
        Method::Fista | Method::Ista => {
            let mut c = FistaConfig {
                nonnegative: !a.signed,
                accelerated: matches!(method, Method::Fista),
                ..FistaConfig::default()
            };
            if let Some(l) = a.lambda {
                c.lambda = l;
            }
            if let Some(m) = a.max_iter {
                c.max_iter = m;
            }
            if let Some(t) = a.tol {
                c.tol = t;
            }
            Box::new(Fista::new(c)?)
        }
        Method::Omp => Box::new(Omp::new(need_k()?, None, !a.signed)?),
        Method::Mp => Box::new(MatchingPursuit::new(need_k()?, !a.signed)?),
        Method::ExpAdam => {
            if a.signed {
                bail!("exp-adam codes are exp(u) > 0: --signed is not available for it");
            }
            let mut c = ExpAdamConfig::default();
            if let Some(l) = a.lambda {
                c.lambda = l;
            }
            if let Some(m) = a.max_iter {
                c.max_iter = m;
            }
            Box::new(ExpAdam::new(c)?)
        }
    };
    if let Some(k) = a.k {
        if k > d.rows() {
            bail!(
                "invalid parameter k = {k}: must not exceed the number of latents N = {} of {}",
                d.rows(),
                dictionary.display()
            );
        }
    }
    let enc = encoder.encode(&x, &d)?;
    write_npy(&a.out, &enc.codes, NpyDtype::F32)?;
    let l0 = metrics::l0(&enc.codes);
    println!(
        "{}",
        serde_json::json!({
            "method": encoder.name(), "out": a.out, "shape": [enc.codes.rows(), enc.codes.cols()],
            "iterations": enc.iterations, "flops": enc.flops, "l0": l0.mean_count,
        })
    );
    Ok(())
}

/// Shows study progress as a bar on stderr.
struct Bar(indicatif::ProgressBar);

impl sparse_study::Progress for Bar {
    fn start(&self, total: usize) {
        self.0.set_length(total as u64);
    }
    fn finished(&self, label: &str) {
        self.0.set_message(label.to_string());
        self.0.inc(1);
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} eta {eta} {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    )
}

fn reproduce(a: ReproduceArgs) -> Result<()> {
    match a.study {
        Some(Study::KnownDictionary) => reproduce_study::<KnownDictionaryConfig>(&a).map(drop),
        Some(Study::LearnedDictionary) => reproduce_study::<LearnedDictionaryConfig>(&a).map(drop),
        Some(Study::AmortisationGap) => reproduce_study::<GapGridConfig>(&a).map(drop),
        Some(Study::SyntheticRealism) => reproduce_study::<SyntheticRealismConfig>(&a).map(drop),
        None => reproduce_all(&a),
    }
}

/// Loads the study's configuration (file, quick or default), runs it with a
/// progress bar, writes its files into `out` (default results/<study>) and
/// prints its Markdown report, which it returns.
fn reproduce_study<S: sparse_study::Study>(a: &ReproduceArgs) -> Result<String> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join(S::NAME));
    let mut config: S = match &a.config {
        Some(path) => study_config(path)?,
        None if a.quick => S::quick_config(),
        None => S::default(),
    };
    if let Some(seeds) = a.seeds {
        config.set_seeds(seeds)?;
    }
    let bar = progress_bar();
    let report = config.run(&Bar(bar.clone()))?;
    bar.finish_and_clear();
    report.write(&out)?;
    let markdown = report.markdown();
    println!("{markdown}");
    println!(
        "Wrote results.json, table.md and figures (SVG) into {}",
        out.display()
    );
    Ok(markdown)
}

/// The scaling sweeps shipped with the binary (the same files as configs/sweeps/).
const SCALING_REDUCED: &str = include_str!("../../../configs/sweeps/scaling-reduced.toml");
const SCALING_FULL: &str = include_str!("../../../configs/sweeps/scaling.toml");
const SCALING_SMOKE: &str = include_str!("../../../configs/sweeps/smoke.toml");

/// The whole reproduction: both dictionary studies, the scaling sweep and the
/// report, under `out` (default results/reproduce).
fn reproduce_all(a: &ReproduceArgs) -> Result<()> {
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new("results").join("reproduce"));
    let seeds = a.seeds.or(if a.full || a.quick { None } else { Some(2) });
    let mut extra = Vec::new();
    for (study, title) in [
        (Study::KnownDictionary, "Known-dictionary study"),
        (Study::LearnedDictionary, "Learned-dictionary study"),
    ] {
        let args = ReproduceArgs {
            study: Some(study),
            full: false,
            seeds,
            jobs: None,
            out: Some(out.join(match study {
                Study::KnownDictionary => "known-dictionary",
                _ => "learned-dictionary",
            })),
            quick: a.quick,
            config: None,
        };
        let markdown = match study {
            Study::KnownDictionary => reproduce_study::<KnownDictionaryConfig>(&args)?,
            _ => reproduce_study::<LearnedDictionaryConfig>(&args)?,
        };
        extra.push((title.to_string(), markdown));
    }
    let (text, source) = if a.quick {
        (SCALING_SMOKE, "configs/sweeps/smoke.toml")
    } else if a.full {
        (SCALING_FULL, "configs/sweeps/scaling.toml")
    } else {
        (SCALING_REDUCED, "configs/sweeps/scaling-reduced.toml")
    };
    let config = sparse_sweep::SweepConfig::from_toml(text)
        .with_context(|| format!("{source}: invalid sweep config"))?;
    let store = out.join(format!("{}.sqlite", config.name));
    run_sweep_into(&config, &store, a.jobs, sparse_sweep::Shard::ALL)?;
    write_store_report(&store, &out.join("report"), &extra)
}

/// Reads a study configuration from TOML (missing fields keep their defaults).
fn study_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text)
        .with_context(|| format!("{}: invalid study configuration", path.display()))
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn sweep(a: SweepArgs) -> Result<()> {
    let config = sparse_sweep::SweepConfig::from_file(&a.config)?;
    let shard = match &a.shard {
        Some(text) => sparse_sweep::Shard::parse(text)?,
        None => sparse_sweep::Shard::from_slurm(|name| std::env::var(name).ok())?
            .unwrap_or(sparse_sweep::Shard::ALL),
    };
    if a.jobs == Some(0) {
        bail!("--jobs 0: at least one job is needed");
    }
    let store = a.store.clone().unwrap_or_else(|| {
        Path::new("results")
            .join("sweeps")
            .join(format!("{}.sqlite", config.name))
    });
    run_sweep_into(&config, &store, a.jobs, shard)
}

/// Runs `shard` of the sweep into `store` with a progress bar; prints a JSON summary.
/// Runs that fail are reported (and not recorded) after the others finish.
fn run_sweep_into(
    config: &sparse_sweep::SweepConfig,
    store_path: &Path,
    jobs: Option<usize>,
    shard: sparse_sweep::Shard,
) -> Result<()> {
    let specs = shard.select(config.expand()?);
    let mut store = sparse_sweep::Store::open(store_path, true)?;
    let cores = available_cores();
    let jobs = jobs.unwrap_or(cores).max(1);
    let bar = progress_bar();
    let summary = sparse_sweep::run_sweep(
        &config.name,
        specs,
        &mut store,
        jobs,
        (cores / jobs).max(1),
        &Bar(bar.clone()),
    )?;
    bar.finish_and_clear();
    println!(
        "{}",
        serde_json::json!({
            "sweep": config.name, "store": store_path, "shard": shard.to_string(),
            "runs": summary.total, "skipped": summary.skipped, "completed": summary.completed,
            "failed": summary.failed.len(),
        })
    );
    if let Some((run, error)) = summary.failed.first() {
        bail!(
            "{} of {} runs failed and were not recorded (rerun to retry them); first: {run}: {error}",
            summary.failed.len(),
            summary.total
        );
    }
    Ok(())
}

fn merge(a: MergeArgs) -> Result<()> {
    // Check every input before creating the output.
    for path in &a.stores {
        sparse_sweep::Store::open(path, false)?;
    }
    let mut into = sparse_sweep::Store::open(&a.into, true)?;
    let mut conflicts = Vec::new();
    let (mut inserted, mut identical) = (0, 0);
    for path in &a.stores {
        let s = into.merge_from(path)?;
        inserted += s.inserted;
        identical += s.identical;
        conflicts.extend(
            s.conflicts
                .into_iter()
                .map(|k| format!("{k} ({})", path.display())),
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "into": a.into, "inserted": inserted, "identical": identical,
            "conflicts": conflicts.len(), "runs": into.runs()?.len(),
        })
    );
    if !conflicts.is_empty() {
        bail!(
            "{} runs differ between stores (kept the first); first: {}",
            conflicts.len(),
            conflicts[0]
        );
    }
    Ok(())
}

fn report(a: ReportArgs) -> Result<()> {
    write_store_report(&a.store, &a.out, &[])
}

/// Writes the report of the store at `store` into `out`; prints a JSON summary.
fn write_store_report(store: &Path, out: &Path, extra: &[(String, String)]) -> Result<()> {
    let runs = sparse_sweep::Store::open(store, false)?.runs()?;
    let summary = sparse_sweep::report::write_report(&runs, out, extra)
        .with_context(|| format!("reporting {}", store.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "store": store, "out": out, "runs": summary.runs, "figures": summary.figures,
            "html": out.join("index.html"), "markdown": out.join("report.md"),
        })
    );
    Ok(())
}

fn gap(a: GapArgs) -> Result<()> {
    let config = sparse_core::gap::GapConfig {
        mlp_widths: a.widths,
        steps: a.steps,
        n_train: a.train_samples,
        n_test: a.test_samples,
        ..sparse_core::gap::GapConfig::new(a.latents, a.dim, a.k, a.seed)
    };
    let report = sparse_core::gap::measure(&config)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
