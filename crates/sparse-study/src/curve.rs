//! MCC-versus-FLOPs curves: recording, averaging over seeds, and the FLOPs at
//! which a curve first reaches a level.

use serde::{Deserialize, Serialize};

/// One evaluation of a method during training or iterative inference.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Training step or solver iteration at which the point was taken.
    pub step: usize,
    /// Cumulative FLOPs: training so far plus inference on the evaluated split.
    pub flops: f64,
    /// Code MCC on the evaluated split.
    pub mcc: f64,
}

/// The smallest FLOPs at which `curve` (in increasing FLOPs) reaches `level`, if ever.
pub fn flops_to_reach(curve: &[CurvePoint], level: f64) -> Option<f64> {
    curve.iter().find(|p| p.mcc >= level).map(|p| p.flops)
}

/// The curve's value at `flops`: the last point at or below it (step function),
/// `None` before the first point.
pub fn value_at(curve: &[CurvePoint], flops: f64) -> Option<f64> {
    curve
        .iter()
        .take_while(|p| p.flops <= flops)
        .last()
        .map(|p| p.mcc)
}

/// `n` log-spaced FLOP values spanning `[lo, hi]`.
pub fn log_grid(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    assert!(
        lo > 0.0 && hi >= lo && n >= 2,
        "log_grid needs 0 < lo <= hi and n >= 2"
    );
    let (a, b) = (lo.ln(), hi.ln());
    // The ends are exact so that the last grid value reaches every curve's last point.
    (0..n)
        .map(|i| match i {
            0 => lo,
            i if i == n - 1 => hi,
            i => (a + (b - a) * i as f64 / (n - 1) as f64).exp(),
        })
        .collect()
}

/// Mean curve over seeds on a shared log grid: at each grid value, the mean of
/// the seeds' step-function values, kept only where every seed has a point.
pub fn mean_curve(curves: &[&[CurvePoint]], n_grid: usize) -> Vec<(f64, f64)> {
    let lo = curves
        .iter()
        .filter_map(|c| c.first().map(|p| p.flops))
        .fold(f64::NEG_INFINITY, f64::max);
    let hi = curves
        .iter()
        .filter_map(|c| c.last().map(|p| p.flops))
        .fold(f64::NEG_INFINITY, f64::max);
    if curves.is_empty() || !(lo.is_finite() && lo > 0.0 && hi >= lo) {
        return Vec::new();
    }
    log_grid(lo, hi, n_grid)
        .into_iter()
        .filter_map(|f| {
            let vals: Option<Vec<f64>> = curves.iter().map(|c| value_at(c, f)).collect();
            vals.map(|v| (f, v.iter().sum::<f64>() / v.len() as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(v: &[(f64, f64)]) -> Vec<CurvePoint> {
        v.iter()
            .enumerate()
            .map(|(i, &(flops, mcc))| CurvePoint {
                step: i,
                flops,
                mcc,
            })
            .collect()
    }

    #[test]
    fn reach_and_value_at_follow_the_step_function() {
        let c = pts(&[(10.0, 0.2), (100.0, 0.5), (1000.0, 0.9)]);
        assert_eq!(flops_to_reach(&c, 0.5), Some(100.0));
        assert_eq!(flops_to_reach(&c, 0.95), None);
        assert_eq!(value_at(&c, 5.0), None);
        assert_eq!(value_at(&c, 999.0), Some(0.5));
        assert_eq!(value_at(&c, 5000.0), Some(0.9));
    }

    #[test]
    fn mean_curve_averages_seeds_and_carries_the_last_value_forward() {
        let a = pts(&[(10.0, 0.2), (100.0, 0.4)]);
        let b = pts(&[(10.0, 0.6), (1000.0, 0.8)]);
        let m = mean_curve(&[&a, &b], 3);
        assert_eq!(m.len(), 3);
        assert!((m[0].1 - 0.4).abs() < 1e-12);
        assert!((m[1].0 - 100.0).abs() < 1e-9 && (m[1].1 - 0.5).abs() < 1e-12);
        assert!((m[2].1 - 0.6).abs() < 1e-12);
        let g = log_grid(1.0, 100.0, 3);
        assert!((g[1] - 10.0).abs() < 1e-9);
    }
}
