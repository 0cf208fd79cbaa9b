//! A mean with a percentile bootstrap confidence interval, shared by the
//! auto-interpretability scores and the probing tables.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Reads JSON `null` back as NaN (serde_json writes NaN as `null`); for
/// `#[serde(deserialize_with = "null_as_nan")]` on `f64` fields.
pub fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A mean with a confidence interval: a percentile bootstrap's
/// ([`bootstrap_mean_ci`]) or another rule, named where the value is made.
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

impl MeanCi {
    /// The mean of no values: `n` 0, everything else NaN.
    pub fn empty() -> Self {
        MeanCi {
            n: 0,
            mean: f64::NAN,
            lo: f64::NAN,
            hi: f64::NAN,
        }
    }
}

/// Mean of `values` (NaNs dropped) and its percentile bootstrap interval at
/// `level` (e.g. 0.95) from `resamples` seeded resamples with replacement.
/// Percentiles use the nearest-rank rule on the sorted resampled means.
pub fn bootstrap_mean_ci(values: &[f64], level: f64, resamples: usize, seed: u64) -> MeanCi {
    let v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    let n = v.len();
    if n == 0 {
        return MeanCi::empty();
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
