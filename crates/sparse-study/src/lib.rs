//! # sparse-study
//!
//! The experiments behind `sparse-infer reproduce`: each study generates its
//! data from a seed, runs every encoder, records every number (with seed and
//! configuration) and renders a Markdown table, a JSON file and SVG figures.
//! No printing: progress goes through a [`Progress`] callback.

#![warn(missing_docs)]

pub mod amortisation_gap;
pub mod curve;
pub mod figure;
pub mod known_dictionary;
pub mod learned_dictionary;

/// Receives progress from a running study: `(finished jobs, total jobs, what just finished)`.
pub trait Progress: Sync {
    /// Called once when the number of jobs is known.
    fn start(&self, total: usize);
    /// Called after each job.
    fn finished(&self, label: &str);
}

/// A [`Progress`] that ignores everything (tests, library use).
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _total: usize) {}
    fn finished(&self, _label: &str) {}
}

/// The f64 with the same shortest decimal form as `v` (0.01f32 → 0.01, not 0.009999999776…),
/// so that recorded hyperparameters read as they were given.
pub fn f64_of(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(v as f64)
}

/// Mean and sample standard deviation (0 for fewer than two values).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    #[test]
    fn mean_std_matches_hand_computation() {
        let (m, s) = super::mean_std(&[1.0, 2.0, 3.0, 6.0]);
        assert!((m - 3.0).abs() < 1e-12);
        // sample variance = (4 + 1 + 0 + 9) / 3
        assert!((s - (14.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(super::mean_std(&[5.0]), (5.0, 0.0));
    }
}
