//! `sparse-infer bench`: our hot paths against PyTorch, numpy and
//! scikit-learn, side by side (see the `sparse_bench` crate), and the hidden
//! `bench-kernel` that runs one of our kernels in a child process.

use anyhow::{Context, Result};
use sparse_bench::harness::{self, BenchOptions};
use sparse_bench::Case;
use std::path::PathBuf;

/// Arguments of `sparse-infer bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Python with numpy, scikit-learn and torch (`scripts/bench-setup` prints it);
    /// without it only our implementations run.
    #[arg(long)]
    python: Option<PathBuf>,
    /// The reference implementations.
    #[arg(long, default_value = "bench/reference.py")]
    reference: PathBuf,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Timed repetitions per process and round.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Small sizes of every case (seconds; a smoke test).
    #[arg(long)]
    quick: bool,
    /// Only the cases whose names start with one of these (comma-separated, e.g. `fista,omp`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Instead of the comparison: how our kernels' cost grows with the
    /// number of latents, the batch and k (`scaling.json`, `scaling_*.svg`).
    #[arg(long)]
    scaling: bool,
    /// Output folder: inputs/, results.json, table.md.
    #[arg(long, default_value = "results/bench")]
    out: PathBuf,
}

/// Arguments of the hidden `sparse-infer bench-kernel`.
#[derive(clap::Args, Debug)]
pub struct BenchKernelArgs {
    /// The case, as the JSON the harness writes.
    #[arg(long)]
    case_json: String,
    /// Folder of the case's inputs.
    #[arg(long)]
    dir: PathBuf,
    /// Timed repetitions.
    #[arg(long)]
    reps: usize,
}

/// Runs the benchmark and prints the table.
pub fn bench(a: BenchArgs) -> Result<()> {
    let mut cases = if a.quick {
        sparse_bench::quick_cases()
    } else {
        sparse_bench::default_cases()
    };
    if !a.only.is_empty() {
        cases.retain(|c| a.only.iter().any(|p| c.name().starts_with(p.as_str())));
        anyhow::ensure!(!cases.is_empty(), "--only {:?} matches no case", a.only);
    }
    if a.python.is_some() && !a.reference.exists() {
        anyhow::bail!("{}: reference implementations not found (run from the repository root or pass --reference)", a.reference.display());
    }
    let opts = BenchOptions {
        cases,
        rounds: a.rounds,
        reps: a.reps,
        python: a.python,
        reference_script: a.reference,
        exe: std::env::current_exe().context("locating the sparse-infer binary")?,
        out: a.out,
    };
    if a.scaling {
        let series = harness::scaling(&opts, a.quick, |line| eprintln!("bench: {line}"))?;
        println!("{}", serde_json::to_string_pretty(&series)?);
        return Ok(());
    }
    let report = harness::run(&opts, |line| eprintln!("bench: {line}"))?;
    println!("{}", harness::table(&report));
    Ok(())
}

/// Runs one of our kernels and prints its measurement as one JSON line.
pub fn bench_kernel(a: BenchKernelArgs) -> Result<()> {
    let case: Case = serde_json::from_str(&a.case_json).context("invalid --case-json")?;
    let m = sparse_bench::kernels::run_kernel(&case, &a.dir, a.reps)?;
    println!("{}", serde_json::to_string(&m)?);
    Ok(())
}
