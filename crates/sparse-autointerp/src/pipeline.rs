//! The whole run: per feature, explain then score; results appended to a
//! JSONL file as they finish (a rerun skips finished features), a summary
//! with bootstrap confidence intervals per encoder written atomically.

use crate::client::write_atomic;
use crate::examples::{feature_examples, ExampleOptions, Shown};
use crate::judge::Judge;
use crate::prompts;
use crate::score::{bootstrap_mean_ci, scores, MeanCi, Scores};
use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sparse_features::record::FeatureRecord;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

/// File of per-feature results in the output folder (append-only JSONL).
pub const RESULTS_FILE: &str = "results.jsonl";
/// File of the summary in the output folder.
pub const SUMMARY_FILE: &str = "summary.json";

/// Settings of [`run`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PipelineOptions {
    /// Example selection and display.
    pub examples: ExampleOptions,
    /// Features scored per encoder (the first ones, by index, that have
    /// held-out positives and negatives); `None` = all.
    pub max_features: Option<usize>,
    /// Worker threads (features in flight at once).
    pub concurrency: usize,
    /// Seed of negatives, fuzzing marks and the bootstrap.
    pub seed: u64,
    /// Bootstrap resamples.
    pub resamples: usize,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            examples: ExampleOptions::default(),
            max_features: None,
            concurrency: 4,
            seed: 0,
            resamples: 1000,
        }
    }
}

/// One feature's explanation and scores (one line of the results file).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureResult {
    /// The encoder of the record.
    pub encoder: String,
    /// Latent index.
    pub index: usize,
    /// The judge that produced it.
    pub judge: String,
    /// The explanation.
    pub explanation: String,
    /// Detection: held-out positives vs other features' contexts.
    pub detection: Scores,
    /// Fuzzing: correct vs wrong marks on held-out positives.
    pub fuzzing: Scores,
    /// Answers that were neither yes nor no (counted as no).
    pub unparsed: usize,
}

/// Mean and CI of each score over an encoder's features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScorerSummary {
    /// Accuracy.
    pub accuracy: MeanCi,
    /// Balanced accuracy.
    pub balanced_accuracy: MeanCi,
    /// F1 of the positive class.
    pub f1: MeanCi,
    /// AUROC (features where the judge gave probabilities).
    pub auroc: MeanCi,
}

/// Per-encoder summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EncoderSummary {
    /// Features scored.
    pub features: usize,
    /// Detection scores.
    pub detection: ScorerSummary,
    /// Fuzzing scores.
    pub fuzzing: ScorerSummary,
}

/// The summary file: per encoder, and how the run was set up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    /// The judge's name.
    pub judge: String,
    /// Confidence level of the intervals.
    pub ci_level: f64,
    /// The options of the run.
    pub options: PipelineOptions,
    /// Per encoder.
    pub encoders: BTreeMap<String, EncoderSummary>,
}

/// Reads `<index>.json` feature records, sorted by encoder then index, from
/// a folder of records, or from a `dashboards` output folder (every
/// encoder's records under `data/{encoder}/`, `data/index.json` skipped).
pub fn read_records(dir: &Path) -> Result<Vec<FeatureRecord>> {
    let data = dir.join("data");
    let folders: Vec<PathBuf> = if data.join("index.json").is_file() {
        let mut subs = Vec::new();
        for e in std::fs::read_dir(&data)
            .with_context(|| format!("reading the dashboards data folder {}", data.display()))?
        {
            let p = e?.path();
            if p.is_dir() {
                subs.push(p);
            }
        }
        subs
    } else {
        vec![dir.to_path_buf()]
    };
    let mut out = Vec::new();
    for folder in &folders {
        let entries = std::fs::read_dir(folder)
            .with_context(|| format!("reading the records folder {}", folder.display()))?;
        for e in entries {
            let p = e?.path();
            if p.extension().and_then(|s| s.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            let rec: FeatureRecord = serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a feature record", p.display()))?;
            out.push(rec);
        }
    }
    if out.is_empty() {
        bail!(
            "{}: no feature records (<index>.json, or a dashboards folder with data/<encoder>/<index>.json)",
            dir.display()
        );
    }
    out.sort_by(|a, b| (&a.encoder, a.index).cmp(&(&b.encoder, b.index)));
    Ok(out)
}

/// Results already in `path`; a torn last line (a killed run) is cut off.
pub fn read_results(path: &Path) -> Result<Vec<FeatureResult>> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(Vec::new());
    };
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    if keep < bytes.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.set_len(keep as u64)
            .with_context(|| format!("truncating {}", path.display()))?;
    }
    let text = std::str::from_utf8(&bytes[..keep])
        .with_context(|| format!("{}: not UTF-8", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {}: not a feature result", path.display(), i + 1))
        })
        .collect()
}

/// Explains and scores one feature.
pub fn score_feature(
    records: &[FeatureRecord],
    i: usize,
    judge: &dyn Judge,
    opts: &PipelineOptions,
) -> Result<FeatureResult> {
    let ex = feature_examples(records, i, &opts.examples, opts.seed);
    let reply = judge.explain(&prompts::explainer(&ex.explain))?;
    let explanation = prompts::parse_explanation(&reply);
    let mut unparsed = 0;
    let mut judge_all = |items: Vec<(Vec<prompts::Message>, bool)>| -> Result<Scores> {
        let (mut truth, mut pred, mut prob) = (Vec::new(), Vec::new(), Vec::new());
        let mut all_prob = true;
        for (msgs, t) in items {
            let v = judge.verdict(&msgs)?;
            unparsed += usize::from(!v.parsed);
            truth.push(t);
            pred.push(v.yes);
            match v.p_yes {
                Some(p) => prob.push(p),
                None => all_prob = false,
            }
        }
        Ok(scores(&truth, &pred, all_prob.then_some(&prob[..])))
    };
    let det: Vec<_> = ex
        .positives
        .iter()
        .map(|e| (prompts::detection(&explanation, e), true))
        .chain(
            ex.negatives
                .iter()
                .map(|e| (prompts::detection(&explanation, e), false)),
        )
        .collect();
    let detection = judge_all(det)?;
    // Fuzzing: a seeded half of the held-out positives keep their true marks.
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed ^ 0xF022 ^ (records[i].index as u64) << 8);
    let mut order: Vec<&Shown> = ex.positives.iter().collect();
    order.shuffle(&mut rng);
    let half = order.len().div_ceil(2);
    let mut fz = Vec::new();
    for (j, e) in order.into_iter().enumerate() {
        if j < half {
            fz.push((prompts::fuzzing(&explanation, e, &e.active), true));
        } else if let Some(m) = e.wrong_marks(&mut rng) {
            fz.push((prompts::fuzzing(&explanation, e, &m), false));
        }
    }
    let fuzzing = judge_all(fz)?;
    Ok(FeatureResult {
        encoder: records[i].encoder.clone(),
        index: records[i].index,
        judge: judge.name(),
        explanation,
        detection,
        fuzzing,
        unparsed,
    })
}

/// Runs the pipeline on `records` (any number of encoders; negatives come
/// from the same encoder's records) into `out_dir`, skipping features already
/// in its results file, and returns the summary of everything there.
pub fn run(
    records: &[FeatureRecord],
    judge: &dyn Judge,
    out_dir: &Path,
    opts: &PipelineOptions,
) -> Result<Summary> {
    if opts.concurrency == 0 {
        bail!("concurrency must be at least 1");
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let results_path = out_dir.join(RESULTS_FILE);
    let done: HashSet<(String, usize)> = read_results(&results_path)?
        .into_iter()
        .map(|r| (r.encoder, r.index))
        .collect();

    let mut by_encoder: BTreeMap<&str, Vec<FeatureRecord>> = BTreeMap::new();
    for r in records {
        by_encoder.entry(&r.encoder).or_default().push(r.clone());
    }
    // The work: (encoder's records, position) of the first max_features usable features.
    let mut todo: Vec<(&Vec<FeatureRecord>, usize)> = Vec::new();
    for recs in by_encoder.values_mut() {
        recs.sort_by_key(|r| r.index);
    }
    for recs in by_encoder.values() {
        let mut taken = 0;
        for i in 0..recs.len() {
            if opts.max_features.is_some_and(|m| taken >= m) {
                break;
            }
            let ex = feature_examples(recs, i, &opts.examples, opts.seed);
            if ex.positives.is_empty() || ex.negatives.is_empty() || ex.explain.is_empty() {
                continue;
            }
            taken += 1;
            if !done.contains(&(recs[i].encoder.clone(), recs[i].index)) {
                todo.push((recs, i));
            }
        }
    }

    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&results_path)
        .with_context(|| format!("opening {}", results_path.display()))?;
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = mpsc::channel::<Result<FeatureResult>>();
    let first_error = std::thread::scope(|s| -> Option<anyhow::Error> {
        for _ in 0..opts.concurrency.min(todo.len().max(1)) {
            let tx = tx.clone();
            let (todo, next, stop) = (&todo, &next, &stop);
            s.spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = next.fetch_add(1, Ordering::Relaxed);
                let Some(&(recs, i)) = todo.get(k) else { break };
                let r = score_feature(recs, i, judge, opts).with_context(|| {
                    format!("feature {} of encoder {}", recs[i].index, recs[i].encoder)
                });
                if tx.send(r).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut err = None;
        for r in rx {
            match r {
                // One write per line: a killed run leaves whole lines (or one torn last line, cut on resume).
                Ok(res) => {
                    let line = format!("{}\n", serde_json::to_string(&res).expect("serialisable"));
                    if let Err(e) = file.write_all(line.as_bytes()).and_then(|_| file.flush()) {
                        stop.store(true, Ordering::Relaxed);
                        err.get_or_insert(
                            anyhow::Error::from(e)
                                .context(format!("appending to {}", results_path.display())),
                        );
                    }
                }
                Err(e) => {
                    stop.store(true, Ordering::Relaxed);
                    err.get_or_insert(e);
                }
            }
        }
        err
    });
    if let Some(e) = first_error {
        return Err(e);
    }
    let summary = summarize(&read_results(&results_path)?, judge.name(), opts);
    write_atomic(
        &out_dir.join(SUMMARY_FILE),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    Ok(summary)
}

/// Means and 95% bootstrap intervals of every score, per encoder.
pub fn summarize(results: &[FeatureResult], judge: String, opts: &PipelineOptions) -> Summary {
    let level = 0.95;
    let mut groups: BTreeMap<String, Vec<&FeatureResult>> = BTreeMap::new();
    for r in results {
        groups.entry(r.encoder.clone()).or_default().push(r);
    }
    let ci =
        |v: Vec<f64>, salt: u64| bootstrap_mean_ci(&v, level, opts.resamples, opts.seed ^ salt);
    let scorer =
        |rs: &[&FeatureResult], f: fn(&FeatureResult) -> &Scores, salt: u64| ScorerSummary {
            accuracy: ci(rs.iter().map(|r| f(r).accuracy).collect(), salt),
            balanced_accuracy: ci(
                rs.iter().map(|r| f(r).balanced_accuracy).collect(),
                salt + 1,
            ),
            f1: ci(rs.iter().map(|r| f(r).f1).collect(), salt + 2),
            auroc: ci(
                rs.iter().map(|r| f(r).auroc.unwrap_or(f64::NAN)).collect(),
                salt + 3,
            ),
        };
    let encoders = groups
        .into_iter()
        .map(|(enc, rs)| {
            let s = EncoderSummary {
                features: rs.len(),
                detection: scorer(&rs, |r| &r.detection, 10),
                fuzzing: scorer(&rs, |r| &r.fuzzing, 20),
            };
            (enc, s)
        })
        .collect();
    Summary {
        judge,
        ci_level: level,
        options: opts.clone(),
        encoders,
    }
}

/// Markdown table of a summary: mean [95% CI] per encoder and score.
pub fn markdown(summary: &Summary) -> String {
    let f = |m: &MeanCi| {
        if m.n == 0 {
            "–".to_string()
        } else {
            format!("{:.3} [{:.3}, {:.3}]", m.mean, m.lo, m.hi)
        }
    };
    let mut s = String::from("| encoder | features | detection acc. | detection bal. acc. | detection AUROC | fuzzing acc. | fuzzing bal. acc. |\n|---|---|---|---|---|---|---|\n");
    for (enc, e) in &summary.encoders {
        s.push_str(&format!(
            "| {enc} | {} | {} | {} | {} | {} | {} |\n",
            e.features,
            f(&e.detection.accuracy),
            f(&e.detection.balanced_accuracy),
            f(&e.detection.auroc),
            f(&e.fuzzing.accuracy),
            f(&e.fuzzing.balanced_accuracy)
        ));
    }
    s
}

/// The results file of an output folder.
pub fn results_path(out_dir: &Path) -> PathBuf {
    out_dir.join(RESULTS_FILE)
}
