//! The report of a store: Markdown tables, figures (SVG and PNG) and one
//! self-contained HTML page (SVGs inlined) that shows everything.
//!
//! Runs are grouped into *configurations* (dictionary setting, data cell,
//! method with its hyperparameters) and averaged over seeds. Sections appear
//! only where the store has the data for them: MCC vs FLOPs per method;
//! scaling (sparse-coding advantage over the SAE across N/M and K); curves over
//! MLP width, λ, TopK k and noise; bias vs no bias; the compute-optimal frontier.

use crate::config::{DictionarySetting, MethodKind};
use crate::store::StoredRun;
use anyhow::Context;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde_json::Value;
use sparse_study::figure::{render_png, render_svg, Drawing, FigureSpec, LineChart, Series};
use sparse_study::mean_std;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The data cell of a configuration (no seed), ordered for tables.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Cell {
    /// Realistic preset of the data (`None`: the paper's generator).
    preset: Option<String>,
    dictionary: DictionarySetting,
    n_latents: usize,
    dim: usize,
    k: usize,
    samples: usize,
    /// Noise × 1e9, rounded (an orderable key).
    noise_nano: i64,
}

impl Cell {
    fn noise(&self) -> f64 {
        self.noise_nano as f64 / 1e9
    }
    fn describe(&self) -> String {
        format!(
            "{}N={} M={} K={} n={} noise={}",
            self.preset
                .as_ref()
                .map_or(String::new(), |p| format!("{p} ")),
            self.n_latents,
            self.dim,
            self.k,
            self.samples,
            self.noise()
        )
    }
    fn ratio(&self) -> f64 {
        self.n_latents as f64 / self.dim as f64
    }
}

/// One run seen by the report.
struct Item<'a> {
    run: &'a StoredRun,
    cell: Cell,
    kind: MethodKind,
    /// Hyperparameters (everything of the method but its kind).
    params: BTreeMap<String, Value>,
}

/// A configuration: the runs (seeds) of one method setting on one data cell.
struct Group {
    cell: Cell,
    kind: MethodKind,
    label: String,
    params: BTreeMap<String, Value>,
    code_mcc: Vec<f64>,
    dictionary_mcc: Vec<f64>,
    train_flops: Vec<f64>,
    inference_flops: Vec<f64>,
}

impl Group {
    fn mcc(&self) -> f64 {
        mean_std(&self.code_mcc).0
    }
    fn total_flops(&self) -> f64 {
        mean_std(&self.train_flops).0 + mean_std(&self.inference_flops).0
    }
}

fn short_kind(kind: MethodKind) -> &'static str {
    match kind {
        MethodKind::Sae => "sae",
        MethodKind::Mlp => "mlp",
        MethodKind::Topk => "topk",
        MethodKind::SparseCoding => "sc",
    }
}

/// `name=value` as it reads in a legend.
fn show_param(name: &str, value: &Value) -> String {
    match (name, value) {
        ("bias", Value::Bool(true)) => "bias".into(),
        ("bias", Value::Bool(false)) => "no bias".into(),
        ("lambda", v) => format!("λ={v}"),
        ("fista_iters", v) => format!("iters={v}"),
        (n, v) => format!("{n}={v}"),
    }
}

/// Labels name a method by its kind, its defining size (MLP width, TopK k)
/// and every hyperparameter that takes several values for that kind in the
/// store, leaving out `skip` (the parameter a curve runs over).
struct Labeller {
    varying: BTreeMap<MethodKind, BTreeSet<String>>,
}

impl Labeller {
    fn new(items: &[Item<'_>]) -> Self {
        let mut values: BTreeMap<(MethodKind, String), BTreeSet<String>> = BTreeMap::new();
        for it in items {
            for (k, v) in &it.params {
                values
                    .entry((it.kind, k.clone()))
                    .or_default()
                    .insert(v.to_string());
            }
        }
        let mut varying: BTreeMap<MethodKind, BTreeSet<String>> = BTreeMap::new();
        for ((kind, name), vals) in values {
            let defining = matches!(
                (kind, name.as_str()),
                (MethodKind::Mlp, "width") | (MethodKind::Topk, "k")
            );
            if vals.len() > 1 || defining {
                varying.entry(kind).or_default().insert(name);
            }
        }
        Labeller { varying }
    }

    fn label(&self, kind: MethodKind, params: &BTreeMap<String, Value>, skip: &str) -> String {
        let mut label = short_kind(kind).to_string();
        for name in self.varying.get(&kind).into_iter().flatten() {
            if name == skip {
                continue;
            }
            let Some(v) = params.get(name) else { continue };
            match (kind, name.as_str()) {
                (MethodKind::Mlp, "width") | (MethodKind::Topk, "k") => {
                    label.push_str(&format!("-{v}"))
                }
                _ => label.push_str(&format!(" {}", show_param(name, v))),
            }
        }
        label
    }
}

fn items(runs: &[StoredRun]) -> Vec<Item<'_>> {
    runs.iter()
        .map(|run| {
            let d = &run.spec.data;
            let mut params = match serde_json::to_value(&run.spec.method) {
                Ok(Value::Object(m)) => m.into_iter().collect::<BTreeMap<_, _>>(),
                _ => BTreeMap::new(),
            };
            params.remove("kind");
            Item {
                run,
                cell: Cell {
                    preset: d.preset.clone(),
                    dictionary: d.dictionary,
                    n_latents: d.n_latents,
                    dim: d.dim,
                    k: d.k,
                    samples: d.samples,
                    noise_nano: (d.noise_std * 1e9).round() as i64,
                },
                kind: run.spec.method.kind(),
                params,
            }
        })
        .collect()
}

fn groups(items: &[Item<'_>], labeller: &Labeller) -> Vec<Group> {
    let mut map: BTreeMap<(Cell, MethodKind, String), Group> = BTreeMap::new();
    for it in items {
        let label = labeller.label(it.kind, &it.params, "");
        let g = map
            .entry((it.cell.clone(), it.kind, label.clone()))
            .or_insert_with(|| Group {
                cell: it.cell.clone(),
                kind: it.kind,
                label,
                params: it.params.clone(),
                code_mcc: Vec::new(),
                dictionary_mcc: Vec::new(),
                train_flops: Vec::new(),
                inference_flops: Vec::new(),
            });
        let o = &it.run.outcome;
        g.code_mcc.push(o.code_mcc);
        if let Some(d) = o.dictionary_mcc {
            g.dictionary_mcc.push(d);
        }
        g.train_flops.push(o.train_flops);
        g.inference_flops.push(o.inference_flops);
    }
    map.into_values().collect()
}

/// A Markdown table.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut s = line(&self.header);
        s.push_str(&line(&vec!["---".to_string(); self.header.len()]));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }
}

fn pm(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let (m, s) = mean_std(values);
    format!("{m:.3} ± {s:.3}")
}

fn sci(v: f64) -> String {
    format!("{v:.2e}")
}

/// Accumulates the report: Markdown text and the figures it references.
struct Report<'a> {
    markdown: String,
    figures: Vec<(String, String, Vec<u8>)>,
    out: &'a Path,
}

impl Report<'_> {
    fn text(&mut self, s: &str) {
        self.markdown.push_str(s);
        self.markdown.push_str("\n\n");
    }

    fn table(&mut self, t: &Table) {
        if !t.rows.is_empty() {
            self.markdown.push_str(&t.markdown());
            self.markdown.push('\n');
        }
    }

    /// A [`LineChart`] figure captioned with its title.
    fn chart(
        &mut self,
        name: &str,
        spec: &FigureSpec<'_>,
        series: &[Series],
        markers_from: usize,
    ) -> anyhow::Result<()> {
        let chart = LineChart {
            spec,
            series,
            markers_from,
        };
        self.figure(name, spec.title, &chart)
    }

    /// Renders `drawing` as `figures/NAME.svg` and `.png` and references it.
    fn figure(&mut self, name: &str, caption: &str, drawing: &impl Drawing) -> anyhow::Result<()> {
        let size = (960, 640);
        let svg = render_svg(drawing, size).with_context(|| format!("figure {name}"))?;
        let png = render_png(drawing, size).with_context(|| format!("figure {name}"))?;
        let dir = self.out.join("figures");
        sparse_core::io::write_atomic(&dir.join(format!("{name}.svg")), svg.as_bytes())?;
        sparse_core::io::write_atomic(&dir.join(format!("{name}.png")), &png)?;
        self.markdown
            .push_str(&format!("![{caption}](figures/{name}.svg)\n\n"));
        self.figures.push((name.to_string(), svg, png));
        Ok(())
    }
}

/// A heatmap of values over categorical x and y, diverging colours around 0.
struct Heatmap {
    title: String,
    x_desc: String,
    y_desc: String,
    x_labels: Vec<String>,
    y_labels: Vec<String>,
    /// `values[y][x]`.
    values: Vec<Vec<Option<f64>>>,
}

impl Drawing for Heatmap {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE)?;
        let (nx, ny) = (self.x_labels.len(), self.y_labels.len());
        let scale = self
            .values
            .iter()
            .flatten()
            .flatten()
            .fold(1e-9f64, |m, v| m.max(v.abs()));
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(48)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..nx as f64, 0f64..ny as f64)?;
        // Ticks at cell centres (k + 0.5) carry the category's label; the others none.
        let label_at = |labels: &[String], v: f64| {
            let i = (v - 0.5).round();
            if (v - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        let xl = |v: &f64| label_at(&self.x_labels, *v);
        let yl = |v: &f64| label_at(&self.y_labels, *v);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(nx * 2 + 1)
            .y_labels(ny * 2 + 1)
            .x_label_formatter(&xl)
            .y_label_formatter(&yl)
            .x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .draw()?;
        for (y, row) in self.values.iter().enumerate() {
            for (x, v) in row.iter().enumerate() {
                let (x0, y0) = (x as f64, y as f64);
                let color = match v {
                    None => RGBColor(230, 230, 230),
                    Some(v) => {
                        let t = (v / scale).clamp(-1.0, 1.0);
                        let fade = |c: f64| (255.0 - (255.0 - c) * t.abs()) as u8;
                        if t >= 0.0 {
                            RGBColor(fade(200.0), fade(40.0), fade(40.0))
                        } else {
                            RGBColor(fade(40.0), fade(80.0), fade(200.0))
                        }
                    }
                };
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, y0), (x0 + 1.0, y0 + 1.0)],
                    color.filled(),
                )))?;
                if let Some(v) = v {
                    chart.draw_series(std::iter::once(Text::new(
                        format!("{v:+.2}"),
                        (x0 + 0.38, y0 + 0.55),
                        ("sans-serif", 18).into_font().color(&BLACK),
                    )))?;
                }
            }
        }
        Ok(())
    }
}

/// The paper's scaling numbers (best test code MCC over training, K = 3;
/// paper-spec §7 from `scaling_laws_K_3.json`): `(N, M) → (sparse coding, SAE)`.
fn paper_scaling(n: usize, m: usize, k: usize) -> Option<(f64, f64)> {
    match (n, m, k) {
        (16, 8, 3) => Some((0.73, 0.64)),
        (128, 8, 3) => Some((0.33, 0.21)),
        (64, 32, 3) => Some((0.92, 0.55)),
        (128, 32, 3) => Some((0.87, 0.42)),
        _ => None,
    }
}

/// What [`write_report`] wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportSummary {
    /// Runs read from the store.
    pub runs: usize,
    /// Figures written (each as SVG and PNG).
    pub figures: usize,
}

/// Writes `report.md`, `index.html` and `figures/*.{svg,png}` into `out` from
/// the stored runs; `extra` Markdown sections (e.g. the studies' tables) are
/// appended to both.
pub fn write_report(
    runs: &[StoredRun],
    out: &Path,
    extra: &[(String, String)],
) -> anyhow::Result<ReportSummary> {
    anyhow::ensure!(!runs.is_empty(), "the store has no runs to report");
    std::fs::create_dir_all(out.join("figures"))
        .with_context(|| format!("creating {}", out.display()))?;
    let items = items(runs);
    let labeller = Labeller::new(&items);
    let groups = groups(&items, &labeller);
    let mut r = Report {
        markdown: String::new(),
        figures: Vec::new(),
        out,
    };
    overview(&mut r, runs, &groups);
    mcc_vs_flops(&mut r, &groups)?;
    scaling(&mut r, &groups)?;
    curves(&mut r, &items, &labeller)?;
    bias(&mut r, &groups, &labeller);
    frontier(&mut r, &groups)?;
    configurations(&mut r, &groups);
    for (title, md) in extra {
        // A section that opens with its own heading keeps it (one level down, like all its headings).
        if !md.trim_start().starts_with('#') {
            r.text(&format!("## {title}"));
        }
        let body: String = md
            .lines()
            .map(|l| {
                if l.starts_with('#') {
                    format!("#{l}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        r.text(&body);
    }
    sparse_core::io::write_atomic(&out.join("report.md"), r.markdown.as_bytes())?;
    let html = html_page(&r.markdown, &r.figures);
    sparse_core::io::write_atomic(&out.join("index.html"), html.as_bytes())?;
    Ok(ReportSummary {
        runs: runs.len(),
        figures: r.figures.len(),
    })
}

fn overview(r: &mut Report<'_>, runs: &[StoredRun], groups: &[Group]) {
    let sweeps: BTreeSet<&str> = runs.iter().map(|x| x.sweep.as_str()).collect();
    let versions: BTreeSet<&str> = runs.iter().map(|x| x.version.as_str()).collect();
    let wall: f64 = runs.iter().map(|x| x.outcome.wall_seconds).sum();
    let cells: BTreeSet<&Cell> = groups.iter().map(|g| &g.cell).collect();
    r.text("# Sweep report");
    r.text(&format!(
        "{} runs ({} configurations × seeds) over {} data cells from sweep(s) {}; sparse-infer {}; {:.0} s of run time in total. \
         Every number is a test-split number of a model selected on the validation split (the step along training, \
         and for the learned dictionary nothing else); ± is the standard deviation over seeds.",
        runs.len(),
        groups.len(),
        cells.len(),
        sweeps.into_iter().collect::<Vec<_>>().join(", "),
        versions.into_iter().collect::<Vec<_>>().join(", "),
        wall
    ));
}

fn dictionaries(groups: &[Group]) -> BTreeSet<DictionarySetting> {
    groups.iter().map(|g| g.cell.dictionary).collect()
}

fn mcc_vs_flops(r: &mut Report<'_>, groups: &[Group]) -> anyhow::Result<()> {
    r.text("## Code MCC vs FLOPs per method");
    r.text("One marker per configuration and data cell (mean over seeds): training FLOPs to the selected step plus inference FLOPs on the test split.");
    for dict in dictionaries(groups) {
        let mut by_label: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for g in groups.iter().filter(|g| g.cell.dictionary == dict) {
            let x = g.total_flops();
            if x > 0.0 && g.mcc().is_finite() {
                by_label.entry(&g.label).or_default().push((x, g.mcc()));
            }
        }
        let series: Vec<Series> = by_label
            .into_iter()
            .map(|(label, mut points)| {
                points.sort_by(|a, b| a.0.total_cmp(&b.0));
                Series {
                    label: label.to_string(),
                    points,
                }
            })
            .collect();
        if series.is_empty() {
            continue;
        }
        let title = format!("{} dictionary: test code MCC vs total FLOPs", dict.as_str());
        let spec = FigureSpec {
            title: &title,
            x_label: "training + test inference FLOPs",
            y_label: "code MCC (test)",
            log_x: true,
            y_range: (0.0, 1.0),
        };
        r.chart(
            &format!("mcc_vs_flops_{}", dict.as_str()),
            &spec,
            &series,
            0,
        )?;
    }
    Ok(())
}

/// The best configuration of `kind` in `cell` by mean test code MCC.
fn best<'g>(groups: &'g [Group], cell: &Cell, kind: MethodKind) -> Option<&'g Group> {
    groups
        .iter()
        .filter(|g| &g.cell == cell && g.kind == kind)
        .max_by(|a, b| a.mcc().total_cmp(&b.mcc()))
}

fn scaling(r: &mut Report<'_>, groups: &[Group]) -> anyhow::Result<()> {
    // One section per dictionary setting and data generator (the paper's, or a preset).
    let generators: BTreeSet<Option<&str>> =
        groups.iter().map(|g| g.cell.preset.as_deref()).collect();
    for (dict, preset) in dictionaries(groups)
        .into_iter()
        .flat_map(|d| generators.iter().map(move |p| (d, *p)))
    {
        let (on_data, suffix) = match preset {
            Some(p) => (format!(", {p} data"), format!("_{p}")),
            None => (String::new(), String::new()),
        };
        let cells: BTreeSet<&Cell> = groups
            .iter()
            .filter(|g| g.cell.dictionary == dict && g.cell.preset.as_deref() == preset)
            .map(|g| &g.cell)
            .collect();
        let rows: Vec<(&Cell, &Group, &Group, Option<&Group>)> = cells
            .iter()
            .filter_map(|c| {
                Some((
                    *c,
                    best(groups, c, MethodKind::SparseCoding)?,
                    best(groups, c, MethodKind::Sae)?,
                    best(groups, c, MethodKind::Mlp),
                ))
            })
            .collect();
        let ratios: BTreeSet<u64> = rows.iter().map(|x| x.0.ratio().to_bits()).collect();
        if ratios.len() < 2 {
            continue;
        }
        r.text(&format!(
            "## Scaling: sparse-coding advantage over the SAE ({} dictionary{on_data})",
            dict.as_str()
        ));
        r.text("Advantage = test code MCC of sparse coding − that of the SAE, each at its best configuration in the cell (mean over seeds). \
                The paper's numbers (paper-spec §7, `scaling_laws_K_3.json`) are the *best test MCC over training*, which selects on test; ours select the step on validation.");
        let mut t = Table::new(&[
            "N",
            "M",
            "K",
            "N/M",
            "sparse coding",
            "SAE",
            "MLP",
            "advantage (SC − SAE)",
            "paper SC / SAE",
        ]);
        // advantage per (ratio, K) and per (ratio, M), to average.
        let mut by_ratio_k: BTreeMap<(u64, usize), Vec<f64>> = BTreeMap::new();
        let mut by_ratio_m: BTreeMap<(usize, u64), Vec<f64>> = BTreeMap::new();
        let mut by_ratio: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
        for (c, sc, sae, mlp) in &rows {
            let adv = sc.mcc() - sae.mcc();
            let rb = c.ratio().to_bits();
            by_ratio_k.entry((rb, c.k)).or_default().push(adv);
            by_ratio_m.entry((c.dim, rb)).or_default().push(adv);
            by_ratio.entry(rb).or_default().push(adv);
            t.rows.push(vec![
                c.n_latents.to_string(),
                c.dim.to_string(),
                c.k.to_string(),
                format!("{}", c.ratio()),
                format!("{} ({})", pm(&sc.code_mcc), sc.label),
                format!("{} ({})", pm(&sae.code_mcc), sae.label),
                mlp.map_or("–".into(), |g| {
                    format!("{} ({})", pm(&g.code_mcc), g.label)
                }),
                format!("{adv:+.3}"),
                // The paper's numbers are for its own generator only.
                paper_scaling(c.n_latents, c.dim, c.k)
                    .filter(|_| preset.is_none())
                    .map_or("–".into(), |(a, b)| {
                        format!("{a:.2} / {b:.2} ({:+.2})", a - b)
                    }),
            ]);
        }
        r.table(&t);
        let mut summary = Table::new(&["N/M", "mean advantage (SC − SAE)", "cells"]);
        for (rb, advs) in &by_ratio {
            summary.rows.push(vec![
                format!("{}", f64::from_bits(*rb)),
                format!("{:+.3}", mean_std(advs).0),
                advs.len().to_string(),
            ]);
        }
        r.table(&summary);
        let ratio_list: Vec<u64> = ratios.iter().copied().collect();
        let ks: Vec<usize> = rows
            .iter()
            .map(|x| x.0.k)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let heat = Heatmap {
            title: format!(
                "Sparse coding − SAE test code MCC ({} dictionary{on_data})",
                dict.as_str()
            ),
            x_desc: "N/M".into(),
            y_desc: "K".into(),
            x_labels: ratio_list
                .iter()
                .map(|b| format!("{}", f64::from_bits(*b)))
                .collect(),
            y_labels: ks.iter().map(|k| k.to_string()).collect(),
            values: ks
                .iter()
                .map(|k| {
                    ratio_list
                        .iter()
                        .map(|rb| by_ratio_k.get(&(*rb, *k)).map(|v| mean_std(v).0))
                        .collect()
                })
                .collect(),
        };
        r.figure(
            &format!("scaling_heatmap_{}{suffix}", dict.as_str()),
            "sparse-coding advantage over N/M and K",
            &heat,
        )?;
        let mut lines: BTreeMap<usize, Vec<(f64, f64)>> = BTreeMap::new();
        for ((m, rb), advs) in &by_ratio_m {
            lines
                .entry(*m)
                .or_default()
                .push((f64::from_bits(*rb), mean_std(advs).0));
        }
        let series: Vec<Series> = lines
            .into_iter()
            .map(|(m, points)| Series {
                label: format!("M={m}"),
                points,
            })
            .collect();
        let lo = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::min);
        let hi = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        let title = format!(
            "Sparse-coding advantage vs N/M ({} dictionary{on_data}, mean over K)",
            dict.as_str()
        );
        let spec = FigureSpec {
            title: &title,
            x_label: "N/M",
            y_label: "code MCC: sparse coding − SAE",
            log_x: true,
            y_range: (lo - 0.05, hi + 0.05),
        };
        r.chart(
            &format!("scaling_advantage_{}{suffix}", dict.as_str()),
            &spec,
            &series,
            usize::MAX,
        )?;
    }
    Ok(())
}

/// Curves of test code MCC over one hyperparameter (or the noise level).
fn curves(r: &mut Report<'_>, items: &[Item<'_>], labeller: &Labeller) -> anyhow::Result<()> {
    let specs: [(&str, &str, Option<MethodKind>, bool); 5] = [
        ("width", "MLP hidden width", Some(MethodKind::Mlp), true),
        ("lambda", "λ", None, true),
        ("k", "TopK k", Some(MethodKind::Topk), false),
        ("lr", "learning rate", None, true),
        ("noise_std", "noise standard deviation", None, false),
    ];
    let mut any = false;
    for (param, what, only, log_x) in specs {
        for dict in [DictionarySetting::Known, DictionarySetting::Learned] {
            // line key → x → MCCs over seeds.
            let mut lines: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
            for it in items.iter().filter(|it| it.cell.dictionary == dict) {
                if only.is_some_and(|k| k != it.kind) {
                    continue;
                }
                let (x, key) = if param == "noise_std" {
                    let mut cell = it.cell.clone();
                    cell.noise_nano = 0;
                    let desc = cell.describe().replace(" noise=0", "");
                    (
                        Some(it.cell.noise()),
                        format!("{} {desc}", labeller.label(it.kind, &it.params, "")),
                    )
                } else {
                    (
                        it.params.get(param).and_then(Value::as_f64),
                        format!(
                            "{} {}",
                            labeller.label(it.kind, &it.params, param),
                            it.cell.describe()
                        ),
                    )
                };
                let Some(x) = x else { continue };
                lines
                    .entry(key)
                    .or_default()
                    .entry(x.to_bits())
                    .or_default()
                    .push(it.run.outcome.code_mcc);
            }
            let mut series: Vec<Series> = lines
                .into_iter()
                .filter(|(_, pts)| pts.len() >= 2)
                .map(|(label, pts)| {
                    let mut points: Vec<(f64, f64)> = pts
                        .into_iter()
                        .map(|(x, v)| (f64::from_bits(x), mean_std(&v).0))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series { label, points }
                })
                .collect();
            if series.is_empty() {
                continue;
            }
            if !any {
                r.text("## Curves over hyperparameters");
                any = true;
            }
            let mut t = Table::new(&["configuration", what, "test code MCC (mean over seeds)"]);
            for s in &series {
                t.rows.push(vec![
                    s.label.clone(),
                    s.points
                        .iter()
                        .map(|p| format!("{}", p.0))
                        .collect::<Vec<_>>()
                        .join(", "),
                    s.points
                        .iter()
                        .map(|p| format!("{:.3}", p.1))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]);
            }
            r.text(&format!(
                "### Test code MCC vs {what} ({} dictionary)",
                dict.as_str()
            ));
            r.table(&t);
            let dropped = series.len().saturating_sub(10);
            series.truncate(10);
            if dropped > 0 {
                r.text(&format!("The figure shows the first 10 lines of the table ({dropped} more in the table)."));
            }
            let log = log_x && series.iter().flat_map(|s| &s.points).all(|p| p.0 > 0.0);
            let title = format!("Test code MCC vs {what} ({} dictionary)", dict.as_str());
            let spec = FigureSpec {
                title: &title,
                x_label: what,
                y_label: "code MCC (test)",
                log_x: log,
                y_range: (0.0, 1.0),
            };
            r.chart(
                &format!("curve_{param}_{}", dict.as_str()),
                &spec,
                &series,
                usize::MAX,
            )?;
        }
    }
    Ok(())
}

fn bias(r: &mut Report<'_>, groups: &[Group], labeller: &Labeller) {
    let mut pairs: BTreeMap<(Cell, String), [Option<&Group>; 2]> = BTreeMap::new();
    for g in groups {
        if let Some(Value::Bool(b)) = g.params.get("bias") {
            let key = (g.cell.clone(), labeller.label(g.kind, &g.params, "bias"));
            pairs.entry(key).or_default()[usize::from(*b)] = Some(g);
        }
    }
    let mut t = Table::new(&[
        "dictionary",
        "cell",
        "method",
        "no bias",
        "bias",
        "bias − no bias",
    ]);
    for ((cell, label), [without, with]) in &pairs {
        if let (Some(a), Some(b)) = (without, with) {
            t.rows.push(vec![
                cell.dictionary.as_str().into(),
                cell.describe(),
                label.clone(),
                pm(&a.code_mcc),
                pm(&b.code_mcc),
                format!("{:+.3}", b.mcc() - a.mcc()),
            ]);
        }
    }
    if !t.rows.is_empty() {
        r.text("## Bias vs no bias (test code MCC)");
        r.text("The paper found that biases do not help (SAE 0.567 → 0.563, sparse coding 0.669 → 0.623, MLP(64) 0.608 → 0.529; paper-spec §7).");
        r.table(&t);
    }
}

/// Configurations of one cell sorted by FLOPs; the frontier keeps those that beat every cheaper one.
fn frontier_of<'g>(groups: &[&'g Group]) -> Vec<&'g Group> {
    let mut sorted: Vec<&Group> = groups
        .iter()
        .copied()
        .filter(|g| g.total_flops() > 0.0 && g.mcc().is_finite())
        .collect();
    sorted.sort_by(|a, b| a.total_flops().total_cmp(&b.total_flops()));
    let mut best = f64::NEG_INFINITY;
    sorted
        .into_iter()
        .filter(|g| {
            let better = g.mcc() > best;
            if better {
                best = g.mcc();
            }
            better
        })
        .collect()
}

fn frontier(r: &mut Report<'_>, groups: &[Group]) -> anyhow::Result<()> {
    let mut cells: BTreeMap<&Cell, Vec<&Group>> = BTreeMap::new();
    for g in groups {
        cells.entry(&g.cell).or_default().push(g);
    }
    cells.retain(|_, gs| gs.len() >= 2);
    if cells.is_empty() {
        return Ok(());
    }
    r.text("## Compute-optimal frontier");
    r.text("For each data cell: the best mean test code MCC reachable within a FLOP budget (training + test inference) and the configuration that attains it. Read `budget → method MCC`: from that budget on, that configuration is the best.");
    let mut t = Table::new(&["dictionary", "cell", "frontier"]);
    for (cell, gs) in &cells {
        let f = frontier_of(gs);
        t.rows.push(vec![
            cell.dictionary.as_str().into(),
            cell.describe(),
            f.iter()
                .map(|g| format!("{} → {} {:.3}", sci(g.total_flops()), g.label, g.mcc()))
                .collect::<Vec<_>>()
                .join("; "),
        ]);
    }
    r.table(&t);
    // Figures for the cells with the most configurations (at most four).
    let mut ranked: Vec<(&&Cell, &Vec<&Group>)> = cells.iter().collect();
    ranked.sort_by_key(|(c, gs)| (std::cmp::Reverse(gs.len()), (**c).clone()));
    for (i, (cell, gs)) in ranked.into_iter().take(4).enumerate() {
        let f = frontier_of(gs);
        let mut series: Vec<Series> = Vec::new();
        let mut by_label: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
        for g in gs.iter().filter(|g| g.total_flops() > 0.0) {
            by_label
                .entry(&g.label)
                .or_default()
                .push((g.total_flops(), g.mcc()));
        }
        let mut frontier_line = Vec::new();
        for (j, g) in f.iter().enumerate() {
            if j > 0 {
                frontier_line.push((g.total_flops(), f[j - 1].mcc()));
            }
            frontier_line.push((g.total_flops(), g.mcc()));
        }
        let hi = gs.iter().map(|g| g.total_flops()).fold(0.0, f64::max);
        if let Some(last) = f.last() {
            frontier_line.push((hi, last.mcc()));
        }
        series.push(Series {
            label: "frontier".into(),
            points: frontier_line,
        });
        for (label, points) in by_label {
            series.push(Series {
                label: label.to_string(),
                points,
            });
        }
        let title = format!(
            "Frontier, {} dictionary, {}",
            cell.dictionary.as_str(),
            cell.describe()
        );
        let spec = FigureSpec {
            title: &title,
            x_label: "training + test inference FLOPs",
            y_label: "code MCC (test)",
            log_x: true,
            y_range: (0.0, 1.0),
        };
        // The frontier as a line, every configuration as a marker.
        r.chart(&format!("frontier_{i}"), &spec, &series, 1)?;
    }
    Ok(())
}

fn configurations(r: &mut Report<'_>, groups: &[Group]) {
    r.text("## Every configuration");
    let mut t = Table::new(&[
        "dictionary",
        "N",
        "M",
        "K",
        "samples",
        "noise",
        "method",
        "seeds",
        "code MCC",
        "dict. MCC",
        "train FLOPs",
        "inference FLOPs",
    ]);
    for g in groups {
        let c = &g.cell;
        t.rows.push(vec![
            match &c.preset {
                Some(p) => format!("{} ({p} data)", c.dictionary.as_str()),
                None => c.dictionary.as_str().into(),
            },
            c.n_latents.to_string(),
            c.dim.to_string(),
            c.k.to_string(),
            c.samples.to_string(),
            format!("{}", c.noise()),
            g.label.clone(),
            g.code_mcc.len().to_string(),
            pm(&g.code_mcc),
            pm(&g.dictionary_mcc),
            sci(mean_std(&g.train_flops).0),
            sci(mean_std(&g.inference_flops).0),
        ]);
    }
    r.table(&t);
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Inline Markdown: `code` spans and *emphasis*, HTML-escaped.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(s).split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("<code>{part}</code>"));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The Markdown this module writes, as one HTML page with the SVG figures inlined.
fn html_page(markdown: &str, figures: &[(String, String, Vec<u8>)]) -> String {
    let mut body = String::new();
    let lines: Vec<&str> = markdown.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim_end();
        if l.is_empty() {
            i += 1;
            continue;
        }
        if let Some(h) = l.strip_prefix('#') {
            let level = 1 + h.chars().take_while(|&c| c == '#').count();
            let text = h.trim_start_matches('#').trim();
            body.push_str(&format!("<h{level}>{}</h{level}>\n", inline(text)));
            i += 1;
        } else if l.starts_with('|') {
            body.push_str("<table>\n");
            let mut row = 0;
            while i < lines.len() && lines[i].starts_with('|') {
                let cells: Vec<&str> = lines[i].trim().trim_matches('|').split('|').collect();
                let is_rule = cells
                    .iter()
                    .all(|c| c.trim().chars().all(|ch| ch == '-' || ch == ':'));
                if !is_rule {
                    let tag = if row == 0 { "th" } else { "td" };
                    body.push_str("<tr>");
                    for c in cells {
                        body.push_str(&format!("<{tag}>{}</{tag}>", inline(c.trim())));
                    }
                    body.push_str("</tr>\n");
                    row += 1;
                }
                i += 1;
            }
            body.push_str("</table>\n");
        } else if let Some(rest) = l.strip_prefix("![") {
            let name = rest
                .rsplit_once("](figures/")
                .and_then(|(_, p)| p.strip_suffix(".svg)"))
                .unwrap_or("");
            match figures.iter().find(|f| f.0 == name) {
                Some((_, svg, _)) => body.push_str(&format!(
                    "<figure>{}<figcaption>{}</figcaption></figure>\n",
                    svg.trim_start_matches(|c| c != '<'),
                    inline(rest.split("](").next().unwrap_or(""))
                )),
                None => body.push_str(&format!("<p>{}</p>\n", inline(l))),
            }
            i += 1;
        } else if l.starts_with("- ") {
            body.push_str("<ul>\n");
            while i < lines.len() && lines[i].starts_with("- ") {
                body.push_str(&format!("<li>{}</li>\n", inline(&lines[i][2..])));
                i += 1;
            }
            body.push_str("</ul>\n");
        } else {
            let mut para = Vec::new();
            while i < lines.len() {
                let t = lines[i].trim_end();
                if t.is_empty()
                    || t.starts_with('#')
                    || t.starts_with('|')
                    || t.starts_with("![")
                    || t.starts_with("- ")
                {
                    break;
                }
                para.push(inline(t));
                i += 1;
            }
            body.push_str(&format!("<p>{}</p>\n", para.join(" ")));
        }
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>sparse-infer report</title>\n<style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0;font-size:0.9em}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}\
         th{{background:#f0f0f0}}figure{{margin:1em 0}}figure svg{{max-width:100%;height:auto}}figcaption{{color:#555}}\
         </style></head><body>\n{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SweepConfig;
    use crate::store::RunOutcome;

    /// Runs with made-up outcomes over a small scaling grid: the report must
    /// show every section and the advantage computed from them.
    #[test]
    fn report_has_every_section_and_a_self_contained_page() {
        let config = SweepConfig::from_toml(
            r#"
            name = "t"
            [[data]]
            n_latents = [8, 16, 32]
            dim = [8]
            k = [2, 3]
            seeds = [1, 2]
            [[method]]
            kind = "sae"
            steps = [10]
            bias = [false, true]
            [[method]]
            kind = "sparse-coding"
            steps = [5]
            lambda = [0.01, 0.1]
            [[method]]
            kind = "mlp"
            steps = [10]
            width = [16, 64]
            "#,
        )
        .unwrap();
        let runs: Vec<StoredRun> = config
            .expand()
            .unwrap()
            .into_iter()
            .map(|spec| {
                let ratio = spec.data.n_latents as f64 / spec.data.dim as f64;
                let mcc = match spec.method.kind() {
                    MethodKind::SparseCoding => 0.9,
                    _ => 0.9 - 0.1 * ratio,
                };
                StoredRun {
                    run_key: spec.key(),
                    sweep: "t".into(),
                    config_json: spec.canonical_json(),
                    outcome: RunOutcome {
                        code_mcc: mcc + spec.data.seed as f64 * 0.01,
                        dictionary_mcc: Some(0.8),
                        train_flops: 1e6 * ratio,
                        inference_flops: 1e3,
                        result_json: "{}".into(),
                        wall_seconds: 1.0,
                    },
                    spec,
                    version: "0".into(),
                    finished_unix: 0,
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let summary = write_report(
            &runs,
            dir.path(),
            &[
                (
                    "Extra".into(),
                    "# Extra study\n\n| a |\n|---|\n| 1 |".into(),
                ),
                ("Plain".into(), "text only".into()),
            ],
        )
        .unwrap();
        assert_eq!(summary.runs, runs.len());
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        for needle in [
            "## Code MCC vs FLOPs per method",
            "## Scaling",
            "Test code MCC vs MLP hidden width",
            "Test code MCC vs λ",
            "## Bias vs no bias",
            "## Compute-optimal frontier",
            "## Every configuration",
            "## Extra study",
            "## Plain\n\ntext only",
        ] {
            assert!(md.contains(needle), "{needle} missing");
        }
        // SC − SAE = 0.1·N/M here: the summary shows +0.100, +0.200, +0.400.
        for adv in ["| 1 | +0.100 |", "| 2 | +0.200 |", "| 4 | +0.400 |"] {
            assert!(md.contains(adv), "{adv} missing from\n{md}");
        }
        let html = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
        assert_eq!(html.matches("<svg").count(), summary.figures);
        assert!(!html.contains("src=\"figures/"), "self-contained");
        for entry in std::fs::read_dir(dir.path().join("figures")).unwrap() {
            let p = entry.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            match p.extension().unwrap().to_str().unwrap() {
                "png" => assert_eq!(&bytes[..4], b"\x89PNG"),
                _ => assert!(bytes.starts_with(b"<svg")),
            }
        }
        assert_eq!(
            std::fs::read_dir(dir.path().join("figures"))
                .unwrap()
                .count(),
            2 * summary.figures
        );
    }

    /// Preset cells get their own scaling section, without the paper's
    /// numbers (those are for the paper's generator), even where N, M and K
    /// equal a paper cell's.
    #[test]
    fn preset_cells_are_reported_apart_from_paper_cells() {
        let grid = |preset: &str| {
            format!(
                r#"
                name = "t"
                [[data]]
                {preset}
                n_latents = [16, 32]
                dim = [8]
                k = [3]
                seeds = [1]
                [[method]]
                kind = "sae"
                steps = [10]
                [[method]]
                kind = "sparse-coding"
                steps = [5]
                "#
            )
        };
        let mut specs = SweepConfig::from_toml(&grid("")).unwrap().expand().unwrap();
        specs.extend(
            SweepConfig::from_toml(&grid("preset = [\"ood-laptop\"]"))
                .unwrap()
                .expand()
                .unwrap(),
        );
        let runs: Vec<StoredRun> = specs
            .into_iter()
            .map(|spec| {
                // Paper cells: advantage 0.2; preset cells: 0.5.
                let mcc = match (spec.method.kind(), &spec.data.preset) {
                    (MethodKind::SparseCoding, _) => 0.9,
                    (_, None) => 0.7,
                    (_, Some(_)) => 0.4,
                };
                StoredRun {
                    run_key: spec.key(),
                    sweep: "t".into(),
                    config_json: spec.canonical_json(),
                    outcome: RunOutcome {
                        code_mcc: mcc,
                        dictionary_mcc: Some(0.8),
                        train_flops: 1e6,
                        inference_flops: 1e3,
                        result_json: "{}".into(),
                        wall_seconds: 1.0,
                    },
                    spec,
                    version: "0".into(),
                    finished_unix: 0,
                }
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        write_report(&runs, dir.path(), &[]).unwrap();
        let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
        let paper = md
            .find("## Scaling: sparse-coding advantage over the SAE (learned dictionary)")
            .expect("paper section");
        let preset = md
            .find("## Scaling: sparse-coding advantage over the SAE (learned dictionary, ood-laptop data)")
            .expect("preset section");
        let (first, second) = if paper < preset {
            (&md[paper..preset], &md[preset..])
        } else {
            (&md[paper..], &md[preset..paper])
        };
        // The paper's N=16, M=8, K=3 number appears in the paper section only.
        assert!(
            first.contains("0.73 / 0.64") && first.contains("+0.200"),
            "{first}"
        );
        assert!(
            !second.contains("0.73 / 0.64") && second.contains("+0.500"),
            "{second}"
        );
        assert!(dir
            .path()
            .join("figures/scaling_heatmap_learned_ood-laptop.svg")
            .exists());
        assert!(md.contains("ood-laptop N=16 M=8 K=3"));
        assert!(md.contains("| learned (ood-laptop data) | 16 | 8 | 3 |"));
    }
}
