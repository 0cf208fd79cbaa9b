//! The synthetic data-generating process of the study (paper-spec §1):
//! `X = Z · D (+ noise)`, with `D (n_latents × dim)` Gaussian with unit-norm
//! atoms (rows) and `Z (n × n_latents)` sparse non-negative codes.
//!
//! The support law, the magnitude law and the noise are separate,
//! serialisable choices ([`SupportModel`], [`MagnitudeModel`], `noise_std`) so
//! that Zipfian frequencies or correlated features are new enum variants, not
//! a rewrite. Every random stream is derived from one seed: the dictionary
//! and each split use their own ChaCha stream, so changing the size of one
//! split never changes another.

use crate::error::{Error, Result};
use crate::linalg::{matmul_into, Op};
use crate::matrix::Matrix;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Which latents are active in a sample.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SupportModel {
    /// Exactly `k` latents, chosen uniformly without replacement (the paper's law).
    ExactK {
        /// Active latents per sample.
        k: usize,
    },
}

/// The value of an active latent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MagnitudeModel {
    /// `|N(0, scale²)|`, the paper's half-normal law (scale 1).
    HalfNormal {
        /// Standard deviation of the underlying normal.
        scale: f32,
    },
}

/// Everything that defines a synthetic data set; with the seed it fixes every number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyntheticConfig {
    /// Number of true features `N`.
    pub n_latents: usize,
    /// Observed dimension `M`.
    pub dim: usize,
    /// Law of the active set.
    pub support: SupportModel,
    /// Law of active values.
    pub magnitude: MagnitudeModel,
    /// Standard deviation of additive Gaussian noise on `X` (0 = noiseless, as in the paper).
    pub noise_std: f32,
    /// Seed of every random stream.
    pub seed: u64,
}

impl SyntheticConfig {
    /// The paper's process: exactly-`k`-sparse half-normal codes, no noise.
    pub fn paper(n_latents: usize, dim: usize, k: usize, seed: u64) -> Self {
        SyntheticConfig {
            n_latents,
            dim,
            support: SupportModel::ExactK { k },
            magnitude: MagnitudeModel::HalfNormal { scale: 1.0 },
            noise_std: 0.0,
            seed,
        }
    }

    /// Checks the parameters (k ≤ N, positive sizes, finite non-negative noise).
    pub fn validate(&self) -> Result<()> {
        if self.n_latents == 0 {
            return Err(Error::invalid(
                "latents",
                self.n_latents,
                "must be at least 1",
            ));
        }
        if self.dim == 0 {
            return Err(Error::invalid("dim", self.dim, "must be at least 1"));
        }
        match self.support {
            SupportModel::ExactK { k } => {
                if k == 0 || k > self.n_latents {
                    return Err(Error::invalid(
                        "k",
                        k,
                        &format!(
                            "must be between 1 and the number of latents ({})",
                            self.n_latents
                        ),
                    ));
                }
            }
        }
        match self.magnitude {
            MagnitudeModel::HalfNormal { scale } => {
                if !(scale.is_finite() && scale > 0.0) {
                    return Err(Error::invalid(
                        "scale",
                        scale,
                        "must be finite and positive",
                    ));
                }
            }
        }
        if !(self.noise_std.is_finite() && self.noise_std >= 0.0) {
            return Err(Error::invalid(
                "noise",
                self.noise_std,
                "must be finite and non-negative",
            ));
        }
        Ok(())
    }

    fn rng(&self, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream);
        rng
    }

    /// The true dictionary `D (n_latents × dim)`: Gaussian rows scaled to unit norm.
    pub fn dictionary(&self) -> Result<Matrix> {
        self.validate()?;
        let mut rng = self.rng(0);
        let mut d = Matrix::from_fn(self.n_latents, self.dim, |_, _| {
            rng.sample::<f32, _>(StandardNormal)
        });
        d.normalize_rows();
        Ok(d)
    }

    /// `n` code rows `Z (n × n_latents)` from random stream `stream`.
    pub fn codes(&self, n: usize, stream: u64) -> Result<Matrix> {
        self.validate()?;
        let mut rng = self.rng(stream);
        let mut z = Matrix::zeros(n, self.n_latents);
        for i in 0..n {
            let row = z.row_mut(i);
            match self.support {
                SupportModel::ExactK { k } => {
                    for j in rand::seq::index::sample(&mut rng, self.n_latents, k) {
                        row[j] = self.magnitude.sample(&mut rng);
                    }
                }
            }
        }
        Ok(z)
    }

    /// A split of `n` samples drawn from stream `stream` (≥ 1; stream 0 is the dictionary).
    pub fn split(&self, dictionary: &Matrix, n: usize, stream: u64) -> Result<Split> {
        assert!(stream > 0, "stream 0 is reserved for the dictionary");
        dictionary.expect_shape("dictionary", Some(self.n_latents), Some(self.dim))?;
        let z = self.codes(n, stream)?;
        let mut x = Matrix::zeros(n, self.dim);
        matmul_into(&mut x, &z, Op::N, dictionary, Op::N);
        if self.noise_std > 0.0 {
            // Noise has its own stream so noiseless and noisy sets share codes.
            let mut rng = self.rng(stream + (1 << 32));
            for v in x.as_mut_slice() {
                *v += self.noise_std * rng.sample::<f32, _>(StandardNormal);
            }
        }
        Ok(Split { x, z })
    }

    /// The dictionary with train / validation / test splits of the given sizes.
    pub fn generate(&self, n_train: usize, n_val: usize, n_test: usize) -> Result<SyntheticData> {
        let dictionary = self.dictionary()?;
        Ok(SyntheticData {
            train: self.split(&dictionary, n_train, 1)?,
            val: self.split(&dictionary, n_val, 2)?,
            test: self.split(&dictionary, n_test, 3)?,
            dictionary,
        })
    }
}

impl MagnitudeModel {
    fn sample(&self, rng: &mut impl Rng) -> f32 {
        match *self {
            MagnitudeModel::HalfNormal { scale } => {
                let v: f32 = StandardNormal.sample(rng);
                (v * scale).abs()
            }
        }
    }
}

/// Observations with the codes that generated them.
#[derive(Clone, Debug)]
pub struct Split {
    /// `X (n × dim)`.
    pub x: Matrix,
    /// `Z (n × n_latents)`, the true codes.
    pub z: Matrix,
}

/// A generated data set: the true dictionary and three disjoint splits.
#[derive(Clone, Debug)]
pub struct SyntheticData {
    /// `D (n_latents × dim)`, unit-norm rows.
    pub dictionary: Matrix,
    /// Training split (model fitting).
    pub train: Split,
    /// Validation split (model and hyperparameter selection).
    pub val: Split,
    /// Test split (reported numbers only).
    pub test: Split,
}

/// Seeded mini-batches of a data set for step-indexed training: step `t`
/// belongs to epoch `t / (n / batch_size)`; each epoch visits the samples in
/// a fresh shuffle that depends only on the seed and the epoch (the last
/// incomplete batch of an epoch is skipped), so a run resumed at any step
/// draws exactly the batches an uninterrupted one would.
#[derive(Clone, Debug)]
pub struct MiniBatches {
    seed: u64,
    batch_size: usize,
    /// The epoch `order` belongs to.
    epoch: Option<u64>,
    order: Vec<usize>,
    /// The batch buffer, reused across steps.
    batch: Matrix,
}

impl MiniBatches {
    /// Batches of `batch_size` rows of `x`; fails unless `1 ≤ batch_size ≤ n`.
    pub fn new(seed: u64, batch_size: usize, x: &Matrix) -> Result<Self> {
        if batch_size == 0 || batch_size > x.rows() {
            return Err(Error::invalid(
                "batch_size",
                batch_size,
                &format!("must be between 1 and the number of samples ({})", x.rows()),
            ));
        }
        Ok(MiniBatches {
            seed,
            batch_size,
            epoch: None,
            order: Vec::new(),
            batch: Matrix::zeros(batch_size, x.cols()),
        })
    }

    /// The rows of `x` (the data set given to [`Self::new`]) that step `step` (0-based) trains on.
    pub fn batch(&mut self, x: &Matrix, step: u64) -> &Matrix {
        let per_epoch = (x.rows() / self.batch_size) as u64;
        let (epoch, pos) = (step / per_epoch, (step % per_epoch) as usize);
        if self.epoch != Some(epoch) {
            use rand::seq::SliceRandom;
            // A stream of its own: stream 0 of a seed initialises models.
            let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
            rng.set_stream((1 << 32) | epoch);
            self.order = (0..x.rows()).collect();
            self.order.shuffle(&mut rng);
            self.epoch = Some(epoch);
        }
        let rows = &self.order[pos * self.batch_size..(pos + 1) * self.batch_size];
        for (i, &r) in rows.iter().enumerate() {
            self.batch.row_mut(i).copy_from_slice(x.row(r));
        }
        &self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_exactly_k_sparse_nonnegative_and_x_is_z_times_d() {
        let cfg = SyntheticConfig::paper(16, 8, 3, 7);
        let data = cfg.generate(200, 50, 50).unwrap();
        for n in data.dictionary.row_norms() {
            assert!((n - 1.0).abs() < 1e-6);
        }
        for split in [&data.train, &data.val, &data.test] {
            for row in split.z.rows_iter() {
                assert_eq!(row.iter().filter(|&&v| v != 0.0).count(), 3);
                assert!(row.iter().all(|&v| v >= 0.0));
            }
            for i in 0..split.x.rows() {
                for j in 0..8 {
                    let want: f32 = (0..16)
                        .map(|l| split.z.get(i, l) * data.dictionary.get(l, j))
                        .sum();
                    assert!((split.x.get(i, j) - want).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data_and_splits_independent_of_sizes() {
        let a = SyntheticConfig::paper(16, 8, 3, 1)
            .generate(64, 8, 32)
            .unwrap();
        let b = SyntheticConfig::paper(16, 8, 3, 1)
            .generate(128, 8, 32)
            .unwrap();
        let c = SyntheticConfig::paper(16, 8, 3, 2)
            .generate(64, 8, 32)
            .unwrap();
        assert_eq!(a.dictionary, b.dictionary);
        assert_eq!(a.test.z, b.test.z);
        assert_eq!(a.train.z, b.train.z.select_rows(0..64));
        assert_ne!(a.dictionary, c.dictionary);
        assert_ne!(a.train.z, c.train.z);
        assert_ne!(a.train.z.select_rows(0..32), a.test.z);
    }

    #[test]
    fn support_is_uniform_and_magnitudes_half_normal() {
        let cfg = SyntheticConfig::paper(10, 5, 2, 3);
        let z = cfg.codes(20_000, 1).unwrap();
        let mut counts = [0usize; 10];
        let mut sum = 0.0f64;
        let mut n = 0usize;
        for row in z.rows_iter() {
            for (j, &v) in row.iter().enumerate() {
                if v != 0.0 {
                    counts[j] += 1;
                    sum += v as f64;
                    n += 1;
                }
            }
        }
        // Each latent fires with probability k/N = 0.2: 4000 ± 4·sqrt(20000·0.2·0.8).
        for c in counts {
            assert!((c as f64 - 4000.0).abs() < 4.0 * 56.6, "count {c}");
        }
        // E|N(0,1)| = sqrt(2/π) ≈ 0.7979; standard error ≈ 0.6/sqrt(40000).
        assert!((sum / n as f64 - (2.0 / std::f64::consts::PI).sqrt()).abs() < 0.012);
    }

    #[test]
    fn impossible_parameters_are_rejected() {
        let e = SyntheticConfig::paper(4, 2, 5, 0)
            .dictionary()
            .unwrap_err()
            .to_string();
        assert!(e.contains("k = 5") && e.contains("(4)"), "{e}");
        assert!(SyntheticConfig::paper(4, 0, 1, 0).validate().is_err());
        let mut c = SyntheticConfig::paper(4, 2, 1, 0);
        c.noise_std = f32::NAN;
        assert!(c.validate().is_err());
    }

    #[test]
    fn noise_changes_x_but_not_z() {
        let mut cfg = SyntheticConfig::paper(8, 4, 2, 5);
        let clean = cfg.generate(30, 1, 1).unwrap();
        cfg.noise_std = 0.1;
        let noisy = cfg.generate(30, 1, 1).unwrap();
        assert_eq!(clean.train.z, noisy.train.z);
        let diff = clean.train.x.max_abs_diff(&noisy.train.x);
        assert!(diff > 0.01 && diff < 1.0, "{diff}");
    }

    #[test]
    fn mini_batches_cover_each_epoch_once_and_replay_from_any_step() {
        let x = Matrix::from_fn(10, 2, |i, j| (i * 2 + j) as f32);
        let mut a = MiniBatches::new(5, 3, &x).unwrap();
        // 3 batches of 3 per epoch: 9 distinct rows, the 10th skipped.
        for epoch in 0..3u64 {
            let mut seen: Vec<usize> = Vec::new();
            for pos in 0..3 {
                let b = a.batch(&x, epoch * 3 + pos);
                assert_eq!(b.shape(), (3, 2));
                seen.extend(b.rows_iter().map(|r| r[0] as usize / 2));
            }
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), 9, "epoch {epoch}: a sample repeated");
        }
        // A fresh sampler jumping straight to step 7 sees what the first saw.
        let seq: Vec<Matrix> = (0..9).map(|t| a.batch(&x, t).clone()).collect();
        let mut b = MiniBatches::new(5, 3, &x).unwrap();
        assert_eq!(b.batch(&x, 7), &seq[7]);
        assert_eq!(b.batch(&x, 2), &seq[2]);
        // Epochs are shuffled differently; other seeds differ.
        assert_ne!(seq[0], seq[3]);
        assert_ne!(MiniBatches::new(6, 3, &x).unwrap().batch(&x, 0), &seq[0]);
        assert!(MiniBatches::new(5, 11, &x).is_err());
        assert!(MiniBatches::new(5, 0, &x).is_err());
    }
}
