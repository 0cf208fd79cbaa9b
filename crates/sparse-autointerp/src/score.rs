//! Scores of one scorer on one feature, and bootstrap confidence intervals
//! of their mean over features.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// JSON has no NaN: serde_json writes it as `null`; this reads `null` back as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// Classification scores of a judge's answers against the truth.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Examples judged.
    pub n: usize,
    /// Of which truly positive.
    pub positives: usize,
    /// Fraction of answers equal to the truth.
    #[serde(deserialize_with = "null_as_nan")]
    pub accuracy: f64,
    /// Mean of the true-positive and true-negative rates (0.5 = chance).
    #[serde(deserialize_with = "null_as_nan")]
    pub balanced_accuracy: f64,
    /// F1 of the positive class (0 when nothing is predicted or true positive).
    pub f1: f64,
    /// Area under the ROC curve of the judge's probabilities (ties count ½);
    /// `None` when the judge gives only yes/no answers or one class is missing.
    pub auroc: Option<f64>,
}

/// Scores of predictions `pred` (with optional probabilities `prob`) against `truth`.
pub fn scores(truth: &[bool], pred: &[bool], prob: Option<&[f64]>) -> Scores {
    let n = truth.len();
    let (mut tp, mut tn, mut fp, mut fne) = (0usize, 0usize, 0usize, 0usize);
    for (&t, &p) in truth.iter().zip(pred) {
        match (t, p) {
            (true, true) => tp += 1,
            (false, false) => tn += 1,
            (false, true) => fp += 1,
            (true, false) => fne += 1,
        }
    }
    let ratio = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    let tpr = ratio(tp, tp + fne);
    let tnr = ratio(tn, tn + fp);
    let balanced_accuracy = match (tpr.is_nan(), tnr.is_nan()) {
        (false, false) => (tpr + tnr) / 2.0,
        (true, false) => tnr,
        (false, true) => tpr,
        (true, true) => f64::NAN,
    };
    let f1 = if 2 * tp + fp + fne == 0 {
        0.0
    } else {
        2.0 * tp as f64 / (2 * tp + fp + fne) as f64
    };
    Scores {
        n,
        positives: tp + fne,
        accuracy: ratio(tp + tn, n),
        balanced_accuracy,
        f1,
        auroc: prob.and_then(|p| auroc(truth, p)),
    }
}

/// AUROC by the Mann–Whitney count: P(score of a positive > score of a
/// negative) + ½ P(equal). `None` when either class is empty.
pub fn auroc(truth: &[bool], score: &[f64]) -> Option<f64> {
    let pos: Vec<f64> = truth
        .iter()
        .zip(score)
        .filter(|e| *e.0)
        .map(|e| *e.1)
        .collect();
    let neg: Vec<f64> = truth
        .iter()
        .zip(score)
        .filter(|e| !*e.0)
        .map(|e| *e.1)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for &p in &pos {
        for &q in &neg {
            wins += if p > q {
                1.0
            } else if p == q {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (pos.len() * neg.len()) as f64)
}

/// A mean with a percentile bootstrap confidence interval.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanCi {
    /// Values averaged (NaNs are left out).
    pub n: usize,
    /// Their mean.
    #[serde(deserialize_with = "null_as_nan")]
    pub mean: f64,
    /// Lower end of the interval.
    #[serde(deserialize_with = "null_as_nan")]
    pub lo: f64,
    /// Upper end.
    #[serde(deserialize_with = "null_as_nan")]
    pub hi: f64,
}

/// Mean of `values` (NaNs dropped) and its percentile bootstrap interval at
/// `level` (e.g. 0.95) from `resamples` seeded resamples with replacement.
/// Percentiles use the nearest-rank rule on the sorted resampled means.
pub fn bootstrap_mean_ci(values: &[f64], level: f64, resamples: usize, seed: u64) -> MeanCi {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len();
    if n == 0 {
        return MeanCi {
            n: 0,
            mean: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        };
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| (0..n).map(|_| v[rng.gen_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let alpha = (1.0 - level) / 2.0;
    let m = means.len();
    let rank = |q: f64| ((q * m as f64).ceil() as usize).clamp(1, m) - 1;
    MeanCi {
        n,
        mean,
        lo: means[rank(alpha)],
        hi: means[rank(1.0 - alpha)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_scores_by_hand() {
        // tp=2, fn=1, tn=3, fp=1 (7 examples)
        let truth = [true, true, true, false, false, false, false];
        let pred = [true, true, false, false, false, false, true];
        let s = scores(&truth, &pred, None);
        assert_eq!((s.n, s.positives), (7, 3));
        assert!((s.accuracy - 5.0 / 7.0).abs() < 1e-12);
        assert!((s.balanced_accuracy - (2.0 / 3.0 + 3.0 / 4.0) / 2.0).abs() < 1e-12);
        assert!((s.f1 - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(s.auroc, None);
    }

    #[test]
    fn auroc_counts_pairs_and_half_ties() {
        // positives 0.9, 0.4; negatives 0.4, 0.1: pairs (0.9>0.4, 0.9>0.1, 0.4=0.4, 0.4>0.1) → 3.5/4
        let a = auroc(&[true, false, true, false], &[0.9, 0.4, 0.4, 0.1]).unwrap();
        assert!((a - 0.875).abs() < 1e-12);
        assert_eq!(auroc(&[true, true], &[0.1, 0.2]), None);
    }

    #[test]
    fn bootstrap_of_two_points_has_the_known_interval() {
        // Resampling {0, 1} twice gives means 0, ½, 1 with probabilities ¼, ½, ¼:
        // the 2.5th percentile is 0 and the 97.5th is 1.
        let ci = bootstrap_mean_ci(&[0.0, 1.0], 0.95, 4000, 1);
        assert_eq!((ci.mean, ci.lo, ci.hi), (0.5, 0.0, 1.0));
        // A 40% interval (30th–70th percentiles) lies inside the ½ mass.
        let ci = bootstrap_mean_ci(&[0.0, 1.0], 0.4, 4000, 1);
        assert_eq!((ci.lo, ci.hi), (0.5, 0.5));
    }

    #[test]
    fn bootstrap_matches_the_normal_approximation_for_many_bernoullis() {
        // 400 values, 30% ones: the CI half-width ≈ 1.96·√(0.3·0.7/400) = 0.0449.
        let v: Vec<f64> = (0..400)
            .map(|i| if i % 10 < 3 { 1.0 } else { 0.0 })
            .collect();
        let ci = bootstrap_mean_ci(&v, 0.95, 4000, 7);
        assert!((ci.mean - 0.3).abs() < 1e-12);
        assert!((ci.hi - ci.lo - 2.0 * 0.0449).abs() < 0.008, "{ci:?}");
        assert!((0.5 * (ci.lo + ci.hi) - 0.3).abs() < 0.006, "{ci:?}");
        assert_eq!(ci, bootstrap_mean_ci(&v, 0.95, 4000, 7), "seeded");
        let c = bootstrap_mean_ci(&[0.7; 5], 0.95, 100, 0);
        assert_eq!((c.lo, c.hi), (0.7, 0.7));
    }
}
