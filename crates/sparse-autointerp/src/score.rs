//! Scores of one scorer on one feature, and bootstrap confidence intervals
//! of their mean over features.

use serde::{Deserialize, Serialize};

use sparse_core::metrics::bootstrap::null_as_nan;
pub use sparse_core::metrics::bootstrap::{bootstrap_mean_ci, MeanCi};

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
}
