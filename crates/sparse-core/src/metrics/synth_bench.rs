//! SynthSAEBench's metrics (SAELens `sae_lens/synthetic/evals.py`) next to
//! the paper's, under names that say which is which:
//!
//! - [`dictionary_mcc_cosine`]: `mean_correlation_coefficient`, Hungarian-matched
//!   `|cos|` between decoder and true atoms, averaged over the matched PAIRS;
//! - [`code_mcc_pearson`] / [`dictionary_mcc_pearson`]: the paper's Pearson
//!   variants ([`super::code_mcc`], [`super::dictionary_mcc`]);
//! - [`feature_uniqueness`]: SAELens' function of the same name;
//! - [`latent_classification`]: `ClassificationMetricsCalculator`, each latent as a
//!   detector of its best-matching true feature (by decoder `|cos|`);
//! - [`shrinkage`]: `ShrinkageCalculator`, mean `‖x̂‖/‖x‖`;
//! - [`synth_bench_report`]: all of them with L0, dead latents and
//!   explained variance (about the mean, as `ExplainedVarianceCalculator`).
//!
//! "Fires" means `> 0`, SAELens' threshold, for true and predicted codes.

use super::{abs_similarity, dead_latents, explained_variance, match_columns, Variables};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use serde::{Deserialize, Serialize};

/// Code MCC by Pearson correlation across samples (the paper's), averaged
/// over the TRUE latents; the same function as [`super::code_mcc`].
pub fn code_mcc_pearson(true_codes: &Matrix, pred_codes: &Matrix) -> Result<f64> {
    super::code_mcc(true_codes, pred_codes)
}

/// Dictionary MCC by Pearson correlation between mean-centred atoms (the
/// paper's), averaged over the TRUE atoms; the same as [`super::dictionary_mcc`].
pub fn dictionary_mcc_pearson(true_dictionary: &Matrix, pred_dictionary: &Matrix) -> Result<f64> {
    super::dictionary_mcc(true_dictionary, pred_dictionary)
}

/// `|cos|` between every true atom (rows) and every predicted atom (columns), row-major.
fn atom_cosines(true_d: &Matrix, pred_d: &Matrix) -> Result<Vec<f64>> {
    abs_similarity(
        true_d,
        "true_dictionary",
        pred_d,
        "pred_dictionary",
        Variables::Rows,
        false,
    )
}

/// Dictionary MCC by cosine, SynthSAEBench's `mean_correlation_coefficient`:
/// the optimal one-to-one matching of atoms under `|cos|`, averaged over the
/// `min(n_true, n_pred)` matched pairs. With a narrower model than the truth
/// (SynthSAEBench's width 4,096 for 16,384 features) this scores how well the
/// learned atoms match SOME true atoms; [`super::dictionary_cosine`] divides by
/// the true atoms instead and so also penalises features the model never learned.
pub fn dictionary_mcc_cosine(true_dictionary: &Matrix, pred_dictionary: &Matrix) -> Result<f64> {
    if pred_dictionary.rows() == 0 {
        return Err(Error::invalid(
            "pred_dictionary",
            "0 atoms",
            "needs at least one atom",
        ));
    }
    let sim = atom_cosines(true_dictionary, pred_dictionary)?;
    let m = match_columns(&sim, true_dictionary.rows(), pred_dictionary.rows())?;
    Ok(m.scores.iter().sum::<f64>() / m.scores.len() as f64)
}

/// For each predicted atom, the true atom of largest `|cos|` (first on ties).
pub fn best_matching_features(
    true_dictionary: &Matrix,
    pred_dictionary: &Matrix,
) -> Result<Vec<usize>> {
    let sim = atom_cosines(true_dictionary, pred_dictionary)?;
    let (nt, np) = (true_dictionary.rows(), pred_dictionary.rows());
    Ok((0..np)
        .map(|j| {
            let mut best = 0;
            for i in 1..nt {
                if sim[i * np + j] > sim[best * np + j] {
                    best = i;
                }
            }
            best
        })
        .collect())
}

/// Feature uniqueness (SAELens `feature_uniqueness`): the number of distinct
/// true features that are some predicted atom's best match, divided by the
/// number of predicted atoms. 1 when every latent tracks a different feature.
pub fn feature_uniqueness(true_dictionary: &Matrix, pred_dictionary: &Matrix) -> Result<f64> {
    if pred_dictionary.rows() == 0 {
        return Ok(0.0);
    }
    let mut best = best_matching_features(true_dictionary, pred_dictionary)?;
    let n = best.len() as f64;
    best.sort_unstable();
    best.dedup();
    Ok(best.len() as f64 / n)
}

/// Latents as detectors of their best-matching true feature (means over latents).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatentClassification {
    /// Mean over latents of `TP / (TP + FP)` (0 where the latent never fires).
    pub precision: f64,
    /// Mean over latents of `TP / (TP + FN)` (0 where the feature never fires).
    pub recall: f64,
    /// Mean over latents of `2PR / (P + R)` (0 where `P + R = 0`).
    pub f1: f64,
    /// Mean over latents of `(TP + TN) / n_samples`.
    pub accuracy: f64,
    /// Per-latent F1, in latent order.
    pub f1_per_latent: Vec<f64>,
}

/// Per-latent precision, recall and F1 (SAELens `ClassificationMetricsCalculator`):
/// latent `j` is matched to its best true feature by decoder `|cos|`
/// ([`best_matching_features`]); a sample is a positive for the latent when
/// `pred_codes[s, j] > 0` and truly positive when that feature's code is `> 0`.
/// Scores are averaged over latents with no weighting.
pub fn latent_classification(
    true_codes: &Matrix,
    pred_codes: &Matrix,
    true_dictionary: &Matrix,
    pred_dictionary: &Matrix,
) -> Result<LatentClassification> {
    true_codes.expect_shape("true_codes", None, Some(true_dictionary.rows()))?;
    pred_codes.expect_shape(
        &format!(
            "pred_codes (one row per sample of true_codes, {} rows; one column per predicted atom)",
            true_codes.rows()
        ),
        Some(true_codes.rows()),
        Some(pred_dictionary.rows()),
    )?;
    let best = best_matching_features(true_dictionary, pred_dictionary)?;
    let np = best.len();
    let (mut tp, mut fp, mut fn_) = (vec![0u64; np], vec![0u64; np], vec![0u64; np]);
    for (t, p) in true_codes.rows_iter().zip(pred_codes.rows_iter()) {
        for j in 0..np {
            match (p[j] > 0.0, t[best[j]] > 0.0) {
                (true, true) => tp[j] += 1,
                (true, false) => fp[j] += 1,
                (false, true) => fn_[j] += 1,
                (false, false) => {}
            }
        }
    }
    let ratio = |a: u64, b: u64| {
        if a + b > 0 {
            a as f64 / (a + b) as f64
        } else {
            0.0
        }
    };
    let n = true_codes.rows().max(1) as f64;
    let (mut ps, mut rs, mut acc) = (0.0, 0.0, 0.0);
    let mut f1s = Vec::with_capacity(np);
    for j in 0..np {
        let (p, r) = (ratio(tp[j], fp[j]), ratio(tp[j], fn_[j]));
        ps += p;
        rs += r;
        f1s.push(if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        });
        acc += (n - (fp[j] + fn_[j]) as f64) / n;
    }
    let k = np.max(1) as f64;
    Ok(LatentClassification {
        precision: ps / k,
        recall: rs / k,
        f1: f1s.iter().sum::<f64>() / k,
        accuracy: acc / k,
        f1_per_latent: f1s,
    })
}

/// Shrinkage (SAELens `ShrinkageCalculator`): the mean over samples of
/// `‖x̂‖ / ‖x‖`, skipping samples with `‖x‖ ≤ 1e-6`; 0 if none remain. Below 1
/// means reconstructions are systematically too small (L1 shrinkage).
pub fn shrinkage(x: &Matrix, x_hat: &Matrix) -> Result<f64> {
    x_hat.expect_shape(
        &format!("x_hat (must match x, shape ({}, {}))", x.rows(), x.cols()),
        Some(x.rows()),
        Some(x.cols()),
    )?;
    let (mut total, mut count) = (0.0f64, 0usize);
    for (a, b) in x.rows_iter().zip(x_hat.rows_iter()) {
        let na = a.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        if na > 1e-6 {
            let nb = b.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
            total += nb / na;
            count += 1;
        }
    }
    Ok(if count == 0 {
        0.0
    } else {
        total / count as f64
    })
}

/// Every SynthSAEBench number plus the paper's code MCC for one model on one split.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SynthBenchReport {
    /// Mean active true features per sample.
    pub true_l0: f64,
    /// Mean active latents per sample (`> 0`).
    pub l0: f64,
    /// Latents that never fire on the split.
    pub dead_latents: usize,
    /// Mean `‖x̂‖/‖x‖`.
    pub shrinkage: f64,
    /// Explained variance about the mean.
    pub explained_variance: f64,
    /// [`dictionary_mcc_cosine`] (SynthSAEBench's "MCC").
    pub dictionary_mcc_cosine: f64,
    /// [`code_mcc_pearson`] (the paper's code MCC, over true latents).
    pub code_mcc_pearson: f64,
    /// [`feature_uniqueness`].
    pub uniqueness: f64,
    /// Mean per-latent precision.
    pub precision: f64,
    /// Mean per-latent recall.
    pub recall: f64,
    /// Mean per-latent F1.
    pub f1: f64,
}

/// All of [`SynthBenchReport`] for data `x`, reconstruction `x_hat`, true and
/// predicted codes and dictionaries.
pub fn synth_bench_report(
    x: &Matrix,
    x_hat: &Matrix,
    true_codes: &Matrix,
    pred_codes: &Matrix,
    true_dictionary: &Matrix,
    pred_dictionary: &Matrix,
) -> Result<SynthBenchReport> {
    let class = latent_classification(true_codes, pred_codes, true_dictionary, pred_dictionary)?;
    let count = |z: &Matrix| {
        z.as_slice().iter().filter(|&&v| v > 0.0).count() as f64 / z.rows().max(1) as f64
    };
    Ok(SynthBenchReport {
        true_l0: count(true_codes),
        l0: count(pred_codes),
        dead_latents: dead_latents(pred_codes),
        shrinkage: shrinkage(x, x_hat)?,
        explained_variance: explained_variance(x, x_hat)?,
        dictionary_mcc_cosine: dictionary_mcc_cosine(true_dictionary, pred_dictionary)?,
        code_mcc_pearson: code_mcc_pearson(true_codes, pred_codes)?,
        uniqueness: feature_uniqueness(true_dictionary, pred_dictionary)?,
        precision: class.precision,
        recall: class.recall,
        f1: class.f1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, cols: usize, v: &[f32]) -> Matrix {
        Matrix::from_vec(rows, cols, v.to_vec()).unwrap()
    }

    #[test]
    fn dictionary_mcc_cosine_averages_over_matched_pairs() {
        // True atoms e1, e2, e3; two predicted atoms: −e2 and (e1 + e3)/√2.
        let t = m(3, 3, &[1., 0., 0., 0., 1., 0., 0., 0., 1.]);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        let p = m(2, 3, &[0., -1., 0., s, 0., s]);
        // Best matching: −e2↔e2 (1), the mix ↔ e1 or e3 (1/√2): mean over 2 pairs.
        let want = (1.0 + s as f64) / 2.0;
        assert!((dictionary_mcc_cosine(&t, &p).unwrap() - want).abs() < 1e-6);
        // The true-atom average divides by 3 instead.
        let by_true = super::super::dictionary_cosine(&t, &p).unwrap();
        assert!((by_true - (1.0 + s as f64) / 3.0).abs() < 1e-6);
    }

    #[test]
    fn uniqueness_counts_distinct_best_matches() {
        let t = m(2, 2, &[1., 0., 0., 1.]);
        // Three latents: two near e1, one near e2 → 2 distinct / 3 latents.
        let p = m(3, 2, &[1., 0.1, 0.9, -0.2, 0.1, 1.]);
        assert!((feature_uniqueness(&t, &p).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(best_matching_features(&t, &p).unwrap(), vec![0, 0, 1]);
    }

    #[test]
    fn classification_matches_a_hand_count() {
        // Two true features, two latents: latent 0 ↔ feature 1, latent 1 ↔ feature 0.
        let t_d = m(2, 2, &[1., 0., 0., 1.]);
        let p_d = m(2, 2, &[0., 1., 1., 0.]);
        // Samples: true codes (f0, f1) and predicted codes (l0, l1).
        let tz = m(4, 2, &[1., 1., 0., 1., 1., 0., 0., 0.]);
        let pz = m(4, 2, &[1., 0., 0., 2., 0., 1., 3., 0.]);
        // Latent 0 vs f1: fires on s0 (f1 on: TP), s3 (f1 off: FP); f1 on at s1 (FN).
        //   P = 1/2, R = 1/2, F1 = 1/2, acc = (1 TP + 1 TN at s2) / 4.
        // Latent 1 vs f0: fires on s1 (f0 off: FP), s2 (f0 on: TP); f0 on at s0 (FN).
        //   P = 1/2, R = 1/2, F1 = 1/2, acc = 2/4.
        let c = latent_classification(&tz, &pz, &t_d, &p_d).unwrap();
        assert!((c.precision - 0.5).abs() < 1e-12);
        assert!((c.recall - 0.5).abs() < 1e-12);
        assert!((c.f1 - 0.5).abs() < 1e-12);
        assert!((c.accuracy - 0.5).abs() < 1e-12);
        // A perfect detector, and a never-firing latent (P = R = F1 = 0 by convention).
        let c = latent_classification(&tz, &m(4, 2, &[1., 1., 1., 0., 0., 1., 0., 0.]), &t_d, &p_d)
            .unwrap();
        assert_eq!(c.f1_per_latent, vec![1.0, 1.0]);
        let c = latent_classification(&tz, &m(4, 2, &[0.; 8]), &t_d, &p_d).unwrap();
        assert_eq!((c.precision, c.recall, c.f1), (0.0, 0.0, 0.0));
        assert!(latent_classification(&tz, &m(3, 2, &[0.; 6]), &t_d, &p_d)
            .unwrap_err()
            .to_string()
            .contains("pred_codes"));
    }

    #[test]
    fn shrinkage_is_the_mean_norm_ratio_skipping_zero_inputs() {
        let x = m(3, 2, &[3., 4., 0., 0., 1., 0.]);
        let xh = m(3, 2, &[0., 2.5, 5., 5., 0., 2.]);
        // Ratios 2.5/5 and 2/1; the zero input is skipped.
        assert!((shrinkage(&x, &xh).unwrap() - 1.25).abs() < 1e-12);
    }

    #[test]
    fn report_of_the_truth_is_perfect() {
        let d = m(3, 3, &[1., 0., 0., 0., 1., 0., 0., 0., 1.]);
        let z = m(4, 3, &[1., 0., 2., 0., 1., 0., 3., 1., 0., 0., 0., 1.]);
        let x = crate::linalg::matmul_new(&z, crate::linalg::Op::N, &d, crate::linalg::Op::N);
        let r = synth_bench_report(&x, &x, &z, &z, &d, &d).unwrap();
        assert_eq!(
            (r.f1, r.uniqueness, r.dictionary_mcc_cosine),
            (1.0, 1.0, 1.0)
        );
        assert!((r.code_mcc_pearson - 1.0).abs() < 1e-9);
        assert_eq!(
            (r.shrinkage, r.explained_variance, r.dead_latents),
            (1.0, 1.0, 0)
        );
        assert_eq!((r.l0, r.true_l0), (1.5, 1.5));
    }
}
