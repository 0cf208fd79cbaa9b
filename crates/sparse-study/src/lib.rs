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
pub mod synthetic_realism;

/// A study that `sparse-infer reproduce` can run: the configuration knows its
/// defaults (the paper's setting), a quick variant, and how to run itself.
pub trait Study: serde::de::DeserializeOwned + Default {
    /// What a run produces.
    type Report: StudyReport;
    /// The study's name on the command line and under `results/`.
    const NAME: &'static str;
    /// A configuration that runs in seconds (tests, smoke runs).
    fn quick_config() -> Self;
    /// Sets the number of seeds; an error where the study has no such notion.
    fn set_seeds(&mut self, seeds: usize) -> anyhow::Result<()>;
    /// Runs the study.
    fn run(&self, progress: &dyn Progress) -> anyhow::Result<Self::Report>;
}

/// The output of a [`Study`].
pub trait StudyReport {
    /// The Markdown report.
    fn markdown(&self) -> String;
    /// Writes `results.json`, `table.md` and the figures into `dir`.
    fn write(&self, dir: &std::path::Path) -> anyhow::Result<()>;
}

/// Implements [`Study`] and [`StudyReport`] from a study module's inherent items.
macro_rules! study {
    ($config:ty, $report:ty, $name:literal, $run:path, seeds: $seeds:expr) => {
        impl crate::Study for $config {
            type Report = $report;
            const NAME: &'static str = $name;
            fn quick_config() -> Self {
                <$config>::quick()
            }
            fn set_seeds(&mut self, seeds: usize) -> anyhow::Result<()> {
                let set: fn(&mut Self, usize) -> anyhow::Result<()> = $seeds;
                set(self, seeds)
            }
            fn run(&self, progress: &dyn crate::Progress) -> anyhow::Result<$report> {
                $run(self, progress)
            }
        }
        impl crate::StudyReport for $report {
            fn markdown(&self) -> String {
                <$report>::markdown(self)
            }
            fn write(&self, dir: &std::path::Path) -> anyhow::Result<()> {
                <$report>::write(self, dir)
            }
        }
    };
}
pub(crate) use study;

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
