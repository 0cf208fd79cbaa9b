//! The benchmark run: inputs, interleaved rounds of child processes, medians,
//! ratios, and the report (`results.json`, `table.md`).

use crate::{median, Case, Measurement};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to run and where.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// The cases, in order.
    pub cases: Vec<Case>,
    /// Interleaved rounds (each runs every implementation of every case once).
    pub rounds: usize,
    /// Timed repetitions per process.
    pub reps: usize,
    /// Python interpreter with numpy / scikit-learn / torch (`scripts/bench-setup`);
    /// `None` runs ours only.
    pub python: Option<PathBuf>,
    /// `bench/reference.py`.
    pub reference_script: PathBuf,
    /// Our binary, which runs `bench-kernel` in the child processes.
    pub exe: PathBuf,
    /// Output folder.
    pub out: PathBuf,
}

/// One implementation's numbers on one case, over the rounds.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Case name.
    pub case: String,
    /// Implementation.
    pub implementation: String,
    /// Median over rounds of each round's median time, seconds.
    pub median_s: f64,
    /// Each round's median time, seconds.
    pub round_medians_s: Vec<f64>,
    /// Largest peak resident memory seen, bytes.
    pub peak_rss_bytes: Option<f64>,
    /// Peak resident memory / the case's analytic footprint.
    pub memory_ratio: Option<f64>,
    /// GFLOP/s where the case has one FLOP count.
    pub gflops: Option<f64>,
    /// The comparison number of the last round (objective, loss, MCC).
    pub check: Option<f64>,
    /// This implementation's median time / ours (> 1: ours is faster); 1 for ours.
    pub ours_faster_by: f64,
    /// What the process reported about itself (versions, threads).
    pub info: serde_json::Value,
}

/// Everything a run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// CPU model, cores.
    pub machine: serde_json::Value,
    /// Measured f32 FMA peak, GFLOP/s, all cores: the best of
    /// [`Report::fma_peak_readings`].
    pub fma_peak_gflops: f64,
    /// The peak as read before each round (best of five quarter-second runs
    /// each). A busy host reads low, so the best reading is the machine's
    /// peak: one reading alone once gave 116 GFLOP/s on a machine whose GEMM
    /// then ran at 143.
    pub fma_peak_readings: Vec<f64>,
    /// Rounds and repetitions.
    pub rounds: usize,
    /// Timed repetitions per process.
    pub reps: usize,
    /// Per case and implementation.
    pub summaries: Vec<Summary>,
    /// Failures of reference processes (missing package, crash), verbatim.
    pub failures: Vec<String>,
}

fn machine_info() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string());
    let (_, simd) = crate::peak::vector_width();
    serde_json::json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "simd": simd,
    })
}

/// Runs one child process and parses the JSON object on its last stdout line.
fn run_child(mut cmd: Command, what: &str) -> Result<Measurement> {
    let out = cmd.output().with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        bail!(
            "{what} failed ({}): {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .with_context(|| format!("{what} printed no JSON result"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: unreadable result {line}"))
}

fn child(opts: &BenchOptions, case: &Case, implementation: &str, dir: &Path) -> Result<Command> {
    let case_json = serde_json::to_string(case)?;
    let reps = case.reps(opts.reps).to_string();
    let dir = dir.display().to_string();
    Ok(if implementation == "sparse-infer" {
        let mut c = Command::new(&opts.exe);
        c.args([
            "bench-kernel",
            "--case-json",
            &case_json,
            "--dir",
            &dir,
            "--reps",
            &reps,
        ]);
        c
    } else {
        let python = opts.python.as_ref().context("no Python interpreter")?;
        let mut c = Command::new(python);
        c.arg(&opts.reference_script).args([
            "--impl",
            implementation,
            "--case-json",
            &case_json,
            "--dir",
            &dir,
            "--reps",
            &reps,
        ]);
        if implementation != "torch" {
            // The environment pins OpenBLAS to its AVX2 kernel, halving numpy's
            // GEMM on this AVX-512 CPU: let it pick its best kernel, for this command only.
            c.env_remove("OPENBLAS_CORETYPE")
                .env_remove("OPENBLAS_L2_SIZE");
        }
        c
    })
}

/// Runs the benchmark; `progress` hears one line per process started.
pub fn run(opts: &BenchOptions, mut progress: impl FnMut(&str)) -> Result<Report> {
    if opts.rounds == 0 || opts.reps == 0 {
        bail!("rounds and reps must be at least 1");
    }
    let inputs = opts.out.join("inputs");
    for case in &opts.cases {
        progress(&format!("writing inputs of {}", case.name()));
        crate::kernels::write_inputs(case, &inputs.join(case.name()))?;
    }
    let mut fma_peak_readings = Vec::with_capacity(opts.rounds);

    let mut all: Vec<Measurement> = Vec::new();
    let mut failures = Vec::new();
    for round in 0..opts.rounds {
        progress(&format!("measuring the FMA peak (round {})", round + 1));
        fma_peak_readings.push(crate::peak::measured_peak_gflops(5));
        for case in &opts.cases {
            let mut impls: Vec<&str> = vec!["sparse-infer"];
            if opts.python.is_some() {
                impls.extend(case.references());
            }
            // Rotate the order each round so no implementation always runs first.
            let len = impls.len();
            impls.rotate_left(round % len);
            for implementation in impls {
                let what = format!("{} / {implementation} (round {})", case.name(), round + 1);
                progress(&what);
                let dir = inputs.join(case.name());
                match child(opts, case, implementation, &dir).and_then(|c| run_child(c, &what)) {
                    Ok(mut m) => {
                        // The harness names cases and implementations, whatever the child says.
                        m.case = case.name();
                        m.implementation = implementation.to_string();
                        all.push(m)
                    }
                    Err(e) if implementation == "sparse-infer" => return Err(e),
                    Err(e) => failures.push(format!("{e:#}")),
                }
            }
        }
    }

    let mut summaries = Vec::new();
    for case in &opts.cases {
        let name = case.name();
        let mut implementations: Vec<String> = Vec::new();
        for m in all.iter().filter(|m| m.case == name) {
            if !implementations.contains(&m.implementation) {
                implementations.push(m.implementation.clone());
            }
        }
        let mut ours_s = f64::NAN;
        let mut case_summaries = Vec::new();
        for implementation in implementations {
            let runs: Vec<&Measurement> = all
                .iter()
                .filter(|m| m.case == name && m.implementation == implementation)
                .collect();
            let round_medians_s: Vec<f64> = runs.iter().map(|m| median(&m.times_s)).collect();
            let median_s = median(&round_medians_s);
            let peak_rss_bytes = runs
                .iter()
                .filter_map(|m| m.peak_rss_bytes)
                .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
            if implementation == "sparse-infer" {
                ours_s = median_s;
            }
            case_summaries.push(Summary {
                case: name.clone(),
                implementation,
                median_s,
                round_medians_s,
                peak_rss_bytes,
                memory_ratio: peak_rss_bytes
                    .zip(case.analytic_footprint())
                    .map(|(p, a)| p / a),
                gflops: case.flops().map(|f| f / median_s / 1e9),
                check: runs.last().and_then(|m| m.check),
                ours_faster_by: f64::NAN,
                info: runs.last().map(|m| m.info.clone()).unwrap_or_default(),
            });
        }
        for s in &mut case_summaries {
            s.ours_faster_by = s.median_s / ours_s;
        }
        summaries.extend(case_summaries);
    }
    let report = Report {
        machine: machine_info(),
        fma_peak_gflops: fma_peak_readings.iter().copied().fold(0.0, f64::max),
        fma_peak_readings,
        rounds: opts.rounds,
        reps: opts.reps,
        summaries,
        failures,
    };
    write_report(&report, &opts.out)?;
    Ok(report)
}

/// How our kernels' cost grows along one axis (latents, batch or k), from a
/// base shape: one child process per point, `reps` timed repetitions.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingSeries {
    /// Kernel ("sae-step", "topk-step", "fista").
    pub kernel: String,
    /// Axis ("latents", "batch", "k").
    pub axis: String,
    /// `(axis value, median seconds)`.
    pub points: Vec<(f64, f64)>,
}

/// The scaling grid: per axis, the cases for each kernel, from a base shape
/// of batch 1024, d 768, 4096 latents, k 32 (FISTA: 20 iterations). `small`
/// shrinks every size by 8 (a smoke test).
pub fn scaling_cases(small: bool) -> Vec<(String, String, f64, Case)> {
    let s = if small { 8 } else { 1 };
    let (batch, dim, latents, k, iterations) = (1024 / s, 768 / s, 4096 / s, 32 / s.min(4), 20);
    let mut out = Vec::new();
    let kernels = |b: usize, n: usize, k: usize| {
        vec![
            (
                "sae-step",
                Case::SaeStep {
                    batch: b,
                    dim,
                    latents: n,
                    l0: None,
                },
            ),
            (
                "topk-step",
                Case::TopkStep {
                    batch: b,
                    dim,
                    latents: n,
                    k,
                },
            ),
            (
                "fista",
                Case::Fista {
                    batch: b,
                    dim,
                    latents: n,
                    iterations,
                },
            ),
        ]
    };
    for n in [1024, 2048, 4096, 8192, 16384] {
        for (name, c) in kernels(batch, n / s, k) {
            out.push((name.to_string(), "latents".to_string(), (n / s) as f64, c));
        }
    }
    for b in [256, 512, 1024, 2048, 4096] {
        for (name, c) in kernels(b / s, latents, k) {
            out.push((name.to_string(), "batch".to_string(), (b / s) as f64, c));
        }
    }
    for kk in [8, 16, 32, 64, 128] {
        let kk = (kk / s.min(4)).max(1);
        out.push((
            "topk-step".to_string(),
            "k".to_string(),
            kk as f64,
            Case::TopkStep {
                batch,
                dim,
                latents,
                k: kk,
            },
        ));
    }
    out
}

/// Runs [`scaling_cases`] with our kernels; writes `scaling.json` and one
/// SVG figure per axis (time per step against the axis, log–log).
pub fn scaling(
    opts: &BenchOptions,
    small: bool,
    mut progress: impl FnMut(&str),
) -> Result<Vec<ScalingSeries>> {
    let mut series: Vec<ScalingSeries> = Vec::new();
    for (kernel, axis, value, case) in scaling_cases(small) {
        let dir = opts.out.join("inputs").join(case.name());
        progress(&format!("scaling {kernel} over {axis}: {}", case.name()));
        crate::kernels::write_inputs(&case, &dir)?;
        let m = run_child(child(opts, &case, "sparse-infer", &dir)?, &case.name())?;
        let t = median(&m.times_s);
        match series
            .iter_mut()
            .find(|s| s.kernel == kernel && s.axis == axis)
        {
            Some(s) => s.points.push((value, t)),
            None => series.push(ScalingSeries {
                kernel,
                axis,
                points: vec![(value, t)],
            }),
        }
        // Inputs of the scaling grid are large and used once.
        let _ = std::fs::remove_dir_all(&dir);
    }
    sparse_core::io::write_atomic(
        &opts.out.join("scaling.json"),
        serde_json::to_string_pretty(&series)?.as_bytes(),
    )?;
    for axis in ["latents", "batch", "k"] {
        let lines: Vec<sparse_study::figure::Series> = series
            .iter()
            .filter(|s| s.axis == axis)
            .map(|s| sparse_study::figure::Series {
                label: s.kernel.clone(),
                points: s.points.iter().map(|&(x, t)| (x, t.log10())).collect(),
            })
            .collect();
        let ys: Vec<f64> = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .collect();
        let (lo, hi) = ys
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &y| (a.min(y), b.max(y)));
        let title = format!("Cost of one call against {axis} (others at the base shape)");
        sparse_study::figure::line_chart_svg(
            &opts.out.join(format!("scaling_{axis}.svg")),
            &sparse_study::figure::FigureSpec {
                title: &title,
                x_label: axis,
                y_label: "log10 seconds per call",
                log_x: true,
                y_range: (lo.floor(), hi.ceil()),
            },
            &lines,
        )?;
    }
    Ok(series)
}

fn fmt_opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map(f).unwrap_or_else(|| "–".to_string())
}

/// The Markdown table of a report.
pub fn table(report: &Report) -> String {
    let mut s = format!(
        "Machine: {} ({} cores, {}); measured FMA peak {:.0} GFLOP/s (best of {} readings, one before each round). Medians of {} interleaved rounds × {} repetitions, each implementation in its own process.\n\n",
        report.machine["cpu"].as_str().unwrap_or("?"),
        report.machine["cores"],
        report.machine["simd"].as_str().unwrap_or("?"),
        report.fma_peak_gflops,
        report.fma_peak_readings.len(),
        report.rounds,
        report.reps,
    );
    s.push_str("| case | implementation | median | ours faster by | GFLOP/s (% of peak) | peak RSS | RSS / analytic | check |\n|---|---|---|---|---|---|---|---|\n");
    for r in &report.summaries {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.case,
            r.implementation,
            fmt_time(r.median_s),
            if r.implementation == "sparse-infer" {
                "–".to_string()
            } else {
                format!("{:.2}×", r.ours_faster_by)
            },
            fmt_opt(r.gflops, |g| format!(
                "{g:.0} ({:.0} %)",
                100.0 * g / report.fma_peak_gflops
            )),
            fmt_opt(r.peak_rss_bytes, |b| format!(
                "{:.0} MiB",
                b / (1u64 << 20) as f64
            )),
            fmt_opt(r.memory_ratio, |m| format!("{m:.2}")),
            fmt_opt(r.check, |c| format!("{c:.6}")),
        ));
    }
    if !report.failures.is_empty() {
        s.push_str("\nReference failures:\n\n");
        for f in &report.failures {
            s.push_str(&format!("- {f}\n"));
        }
    }
    s
}

fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.2} s")
    } else if s >= 1e-3 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn write_report(report: &Report, out: &Path) -> Result<()> {
    use sparse_core::io::write_atomic;
    write_atomic(
        &out.join("results.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    write_atomic(&out.join("table.md"), table(report).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formatting_picks_the_unit() {
        assert_eq!(fmt_time(2.5), "2.50 s");
        assert_eq!(fmt_time(0.0123), "12.30 ms");
        assert_eq!(fmt_time(4.2e-6), "4.2 µs");
    }
}
