//! The amortisation-gap grid (issue: "The amortisation gap, stated, proved and
//! measured"; theory in `docs/theory.md`): for a grid of compression ratios
//! `N/M` and sparsities `K`, the held-out code error of the best supervised
//! linear-ReLU encoder and MLPs next to per-sample inference with the true
//! dictionary, with the dictionary's coherence and RIP estimate.

use crate::figure::{line_chart_svg, FigureSpec, Series};
use crate::Progress;
use anyhow::Context;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sparse_core::gap::{measure, GapConfig, GapReport};
use std::path::Path;

/// The grid and the effort per cell. Deserialises from partial TOML.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GapGridConfig {
    /// Observed dimension M, fixed across the grid.
    pub dim: usize,
    /// Numbers of latents N (so N/M = n_latents / dim).
    pub n_latents: Vec<usize>,
    /// Sparsities K (cells with K > N are skipped).
    pub ks: Vec<usize>,
    /// Seed of every cell.
    pub seed: u64,
    /// Training codes per cell.
    pub n_train: usize,
    /// Held-out codes per cell.
    pub n_test: usize,
    /// Supervised MLP widths.
    pub mlp_widths: Vec<usize>,
    /// Adam steps per supervised encoder.
    pub steps: usize,
}

impl Default for GapGridConfig {
    fn default() -> Self {
        GapGridConfig {
            dim: 8,
            n_latents: vec![4, 8, 16, 32, 64, 128],
            ks: vec![1, 2, 4, 8],
            seed: 0,
            n_train: 2048,
            n_test: 512,
            mlp_widths: vec![32, 256],
            steps: 1500,
        }
    }
}

impl GapGridConfig {
    /// A small grid for tests.
    pub fn quick() -> Self {
        GapGridConfig {
            n_latents: vec![4, 16],
            ks: vec![1, 2],
            n_train: 512,
            n_test: 128,
            mlp_widths: vec![32],
            steps: 300,
            ..Default::default()
        }
    }

    fn cells(&self) -> Vec<GapConfig> {
        let mut cells = Vec::new();
        for &k in &self.ks {
            for &n in self.n_latents.iter().filter(|&&n| k <= n) {
                cells.push(GapConfig {
                    n_train: self.n_train,
                    n_test: self.n_test,
                    mlp_widths: self.mlp_widths.clone(),
                    steps: self.steps,
                    rip_samples: 500,
                    ..GapConfig::new(n, self.dim, k, self.seed)
                });
            }
        }
        cells
    }
}

/// Every cell's report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GapGridReport {
    /// The grid.
    pub config: GapGridConfig,
    /// sparse-infer version.
    pub version: String,
    /// One report per (N, K) cell.
    pub cells: Vec<GapReport>,
}

/// Runs every cell (in parallel; each cell is deterministic).
pub fn run(config: &GapGridConfig, progress: &dyn Progress) -> anyhow::Result<GapGridReport> {
    let cells = config.cells();
    anyhow::ensure!(
        !cells.is_empty(),
        "the grid is empty (every K exceeds every N)"
    );
    progress.start(cells.len());
    let reports: Vec<anyhow::Result<GapReport>> = cells
        .par_iter()
        .map(|c| {
            let r = measure(c)
                .with_context(|| format!("cell N={}, M={}, K={}", c.n_latents, c.dim, c.k));
            progress.finished(&format!("N={} K={}", c.n_latents, c.k));
            r
        })
        .collect();
    Ok(GapGridReport {
        config: config.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        cells: reports.into_iter().collect::<anyhow::Result<_>>()?,
    })
}

/// `log10` of an error, floored at 1e-16 so that exact results stay plottable.
fn log_err(v: f64) -> f64 {
    v.max(1e-16).log10()
}

impl GapGridReport {
    fn encoder_names(&self) -> Vec<String> {
        self.cells
            .first()
            .map(|c| c.encoders.iter().map(|e| e.encoder.clone()).collect())
            .unwrap_or_default()
    }

    /// Markdown: one row per cell, held-out code MSE per encoder (exact-support rate in brackets).
    pub fn markdown(&self) -> String {
        let c = &self.config;
        let names = self.encoder_names();
        let mut s = format!(
            "# Amortisation gap\n\nM={} fixed; supervised encoders fitted directly to the true codes ({} training codes, {} full-batch Adam steps, lr 1e-3; the linear-ReLU encoder starts from the least-squares solution); errors on {} held-out codes; seed {}; sparse-infer {}.\n\nEach entry: held-out code MSE [exact-support rate]. *Guarantee*: mutual coherence μ < 1/(2K−1), under which OMP and ℓ1 recover every K-sparse code. δ̂₂ₖ is a sampled lower estimate of the RIP constant of order 2K.\n\n",
            c.dim, c.n_train, c.steps, c.n_test, c.seed, self.version
        );
        s.push_str("| N/M | N | K | μ | guarantee | δ̂₂ₖ |");
        for n in &names {
            s.push_str(&format!(" {n} |"));
        }
        s.push_str("\n|---|---|---|---|---|---|");
        s.push_str(&"---|".repeat(names.len()));
        s.push('\n');
        for r in &self.cells {
            let g = &r.config;
            s.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} | {:.2} |",
                g.n_latents as f64 / g.dim as f64,
                g.n_latents,
                g.k,
                r.mutual_coherence,
                if r.coherence_guarantee { "yes" } else { "no" },
                r.rip_estimate
            ));
            for e in &r.encoders {
                s.push_str(&format!(" {:.1e} [{:.2}] |", e.mse, e.exact_support_rate));
            }
            s.push('\n');
        }
        s
    }

    /// Writes `results.json`, `table.md` and one figure per K (`gap_k{K}.svg`): log10 code MSE vs N/M.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        sparse_core::io::write_atomic(
            &dir.join("results.json"),
            &serde_json::to_vec_pretty(self)?,
        )?;
        sparse_core::io::write_atomic(&dir.join("table.md"), self.markdown().as_bytes())?;
        for &k in &self.config.ks {
            let cells: Vec<&GapReport> = self.cells.iter().filter(|c| c.config.k == k).collect();
            if cells.len() < 2 {
                continue;
            }
            let ratio = |c: &GapReport| c.config.n_latents as f64 / c.config.dim as f64;
            let mut series: Vec<Series> = self
                .encoder_names()
                .into_iter()
                .map(|name| Series {
                    points: cells
                        .iter()
                        .filter_map(|c| c.get(&name).map(|e| (ratio(c), log_err(e.mse))))
                        .collect(),
                    label: name,
                })
                .collect();
            // Where coherence guarantees recovery: a marker line at the top of the plot.
            let guaranteed: Vec<(f64, f64)> = cells
                .iter()
                .filter(|c| c.coherence_guarantee)
                .map(|c| (ratio(c), 0.5))
                .collect();
            if guaranteed.len() >= 2 {
                series.push(Series {
                    label: "recovery guaranteed (μ < 1/(2K−1))".into(),
                    points: guaranteed,
                });
            }
            line_chart_svg(
                &dir.join(format!("gap_k{k}.svg")),
                &FigureSpec {
                    title: &format!("Amortisation gap, K={k}, M={}", self.config.dim),
                    x_label: "N/M (compression)",
                    y_label: "log10 held-out code MSE",
                    log_x: true,
                    y_range: (-16.0, 1.0),
                },
                &series,
            )?;
        }
        Ok(())
    }
}
crate::study!(GapGridConfig, GapGridReport, "amortisation-gap", run, seeds: |_, _| anyhow::bail!("--seeds does not apply to amortisation-gap (one seed per cell; set `seed` with --config)"));
