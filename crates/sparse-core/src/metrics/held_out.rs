//! Held-out evaluation of an SAE on language-model activations, accumulated
//! batch by batch ([`HeldOutAccumulator`]): memory is `O(dim + n_latents)`
//! whatever the number of tokens. Definitions, pinned by the tests below
//! (`x` a token's activation, `x̂` its reconstruction, `z` its code, `n`
//! tokens, `M = dim`, `N = n_latents`, sums in `f64`):
//!
//! - `mse = Σ_tokens ‖x − x̂‖² / (n·M)`: per element, as [`super::mse`]
//!   (a mean, so it does not grow with the number of tokens: SAELens #711);
//! - `normalized_mse = Σ‖x − x̂‖² / Σ‖x − x̄‖²`, `x̄` the mean activation of
//!   the evaluated tokens: the mean over tokens of `‖x − x̂‖²` over the mean
//!   over tokens of `‖x − x̄‖²` (sparsify's FVU, the paper's normalised MSE);
//! - `explained_variance = 1 − normalized_mse`, **about the mean** (as
//!   [`super::explained_variance`]; SAELens #659/#665 measured it about 0);
//! - `l0`: mean number of latents with `z ≠ 0` per token; `l1`: mean `Σ|z|`;
//! - firing frequency of a latent: the fraction of tokens on which `z ≠ 0`;
//!   `dead_fraction`: latents that never fire on the evaluated tokens;
//!   `dense_fraction`: latents firing on more than [`DENSE_THRESHOLD`] (10%)
//!   of them;
//! - [`DensityHistogram`]: the live latents' `log10(frequency)` in bins of
//!   width [`DensityHistogram::BIN_WIDTH`] from [`DensityHistogram::LOW`] to 0
//!   (dead latents counted apart, SAELens' `sparsity` histogram).
//!
//! The total variance is merged across batches with Chan et al.'s pairwise
//! update of per-coordinate means and squared deviations, so the result
//! depends on the batching only through rounding.

use super::explained_from_sums;
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use serde::{Deserialize, Serialize};

/// A latent firing on more than this fraction of tokens is dense.
pub const DENSE_THRESHOLD: f64 = 0.1;

/// Counts of live latents by `log10` firing frequency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DensityHistogram {
    /// Bin edges in `log10(frequency)`, ascending, `LOW ..= 0`.
    pub log10_edges: Vec<f64>,
    /// Live latents per bin `[edge_i, edge_{i+1})` (the last bin includes 0,
    /// the first everything below `LOW`).
    pub counts: Vec<u64>,
    /// Latents that never fired (`log10` frequency `−∞`).
    pub dead: u64,
}

impl DensityHistogram {
    /// Lowest edge.
    pub const LOW: f64 = -8.0;
    /// Bin width in decades.
    pub const BIN_WIDTH: f64 = 0.5;

    /// The histogram of firing `frequencies` (each in `[0, 1]`).
    pub fn from_frequencies(frequencies: &[f64]) -> Self {
        let bins = (-Self::LOW / Self::BIN_WIDTH).round() as usize;
        let log10_edges = (0..=bins)
            .map(|i| Self::LOW + i as f64 * Self::BIN_WIDTH)
            .collect();
        let mut counts = vec![0u64; bins];
        let mut dead = 0;
        for &f in frequencies {
            if f <= 0.0 {
                dead += 1;
                continue;
            }
            let b = ((f.log10() - Self::LOW) / Self::BIN_WIDTH).floor();
            counts[(b.max(0.0) as usize).min(bins - 1)] += 1;
        }
        DensityHistogram {
            log10_edges,
            counts,
            dead,
        }
    }
}

/// The downstream loss of a reconstruction spliced into the language model,
/// filled by the caller that owns the model (not computed here).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DownstreamLoss {
    /// Mean next-token cross-entropy of the clean model (nats).
    pub ce_clean: f64,
    /// With the hook's activation replaced by the reconstruction.
    pub ce_spliced: f64,
    /// With the hook's activation replaced by zeros.
    pub ce_zero_ablation: f64,
    /// `ce_spliced − ce_clean`.
    pub ce_increase: f64,
    /// `(ce_zero_ablation − ce_spliced) / (ce_zero_ablation − ce_clean)`.
    pub loss_recovered: f64,
}

impl DownstreamLoss {
    /// The record of three mean cross-entropies: `ce_increase = spliced − clean`,
    /// `loss_recovered = (zero − spliced) / (zero − clean)` (NaN, serialised
    /// as `null`, when zero-ablation costs nothing).
    pub fn from_losses(ce_clean: f64, ce_spliced: f64, ce_zero_ablation: f64) -> Self {
        DownstreamLoss {
            ce_clean,
            ce_spliced,
            ce_zero_ablation,
            ce_increase: ce_spliced - ce_clean,
            loss_recovered: (ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean),
        }
    }
}

/// Held-out metrics (definitions in the module documentation).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldOutMetrics {
    /// Tokens evaluated.
    pub tokens: u64,
    /// Mean squared error per element.
    pub mse: f64,
    /// `Σ‖x − x̂‖² / Σ‖x − x̄‖²`.
    pub normalized_mse: f64,
    /// `1 − normalized_mse` (about the mean).
    pub explained_variance: f64,
    /// Mean non-zero latents per token.
    pub l0: f64,
    /// Mean `Σ|z|` per token.
    pub l1: f64,
    /// Fraction of latents that never fire.
    pub dead_fraction: f64,
    /// Fraction of latents firing on more than `dense_threshold` of the tokens.
    pub dense_fraction: f64,
    /// [`DENSE_THRESHOLD`].
    pub dense_threshold: f64,
    /// Firing frequencies, binned.
    pub density_histogram: DensityHistogram,
    /// Spliced-LM loss, when the caller has a language model (`None` here).
    pub downstream: Option<DownstreamLoss>,
}

/// Streaming accumulator of [`HeldOutMetrics`] over batches.
#[derive(Clone, Debug)]
pub struct HeldOutAccumulator {
    dim: usize,
    tokens: u64,
    sse: f64,
    nnz: u64,
    l1: f64,
    /// Per-coordinate mean and sum of squared deviations of `x` so far.
    mean: Vec<f64>,
    m2: Vec<f64>,
    fires: Vec<u64>,
}

impl HeldOutAccumulator {
    /// An empty accumulator for `dim`-dimensional data and `n_latents` latents.
    pub fn new(dim: usize, n_latents: usize) -> Self {
        HeldOutAccumulator {
            dim,
            tokens: 0,
            sse: 0.0,
            nnz: 0,
            l1: 0.0,
            mean: vec![0.0; dim],
            m2: vec![0.0; dim],
            fires: vec![0; n_latents],
        }
    }

    /// Adds a batch: activations `x (n × M)`, reconstructions `x_hat (n × M)`,
    /// codes `z (n × N)`, all finite.
    pub fn update(&mut self, x: &Matrix, x_hat: &Matrix, z: &Matrix) -> Result<()> {
        let n = x.rows();
        x.expect_shape("x", None, Some(self.dim))?;
        x_hat.expect_shape("x_hat", Some(n), Some(self.dim))?;
        z.expect_shape("codes", Some(n), Some(self.fires.len()))?;
        x.check_finite("x")?;
        x_hat.check_finite("x_hat")?;
        z.check_finite("codes")?;
        if n == 0 {
            return Ok(());
        }
        let mut bmean = vec![0.0f64; self.dim];
        for row in x.rows_iter() {
            bmean.iter_mut().zip(row).for_each(|(m, &v)| *m += v as f64);
        }
        bmean.iter_mut().for_each(|m| *m /= n as f64);
        let mut bm2 = vec![0.0f64; self.dim];
        for (row, hat) in x.rows_iter().zip(x_hat.rows_iter()) {
            for ((&v, &h), (m, s)) in row.iter().zip(hat).zip(bmean.iter().zip(bm2.iter_mut())) {
                let (v, h) = (v as f64, h as f64);
                self.sse += (v - h) * (v - h);
                *s += (v - m) * (v - m);
            }
        }
        for row in z.rows_iter() {
            for (f, &v) in self.fires.iter_mut().zip(row) {
                if v != 0.0 {
                    *f += 1;
                    self.nnz += 1;
                    self.l1 += v.abs() as f64;
                }
            }
        }
        // Chan et al.: merge (tokens, mean, m2) with the batch's (n, bmean, bm2).
        let (na, nb) = (self.tokens as f64, n as f64);
        let total = na + nb;
        for j in 0..self.dim {
            let delta = bmean[j] - self.mean[j];
            self.mean[j] += delta * nb / total;
            self.m2[j] += bm2[j] + delta * delta * na * nb / total;
        }
        self.tokens += n as u64;
        Ok(())
    }

    /// Tokens added so far.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The metrics of every batch added; fails if none had a token.
    pub fn finish(&self) -> Result<HeldOutMetrics> {
        if self.tokens == 0 {
            return Err(Error::invalid("tokens", 0, "no token was evaluated"));
        }
        let n = self.tokens as f64;
        let sst: f64 = self.m2.iter().sum();
        let explained_variance = explained_from_sums(self.sse, sst);
        let nl = self.fires.len().max(1) as f64;
        let freqs: Vec<f64> = self.fires.iter().map(|&f| f as f64 / n).collect();
        Ok(HeldOutMetrics {
            tokens: self.tokens,
            mse: self.sse / (n * self.dim as f64),
            normalized_mse: 1.0 - explained_variance,
            explained_variance,
            l0: self.nnz as f64 / n,
            l1: self.l1 / n,
            dead_fraction: self.fires.iter().filter(|&&f| f == 0).count() as f64 / nl,
            dense_fraction: freqs.iter().filter(|&&f| f > DENSE_THRESHOLD).count() as f64 / nl,
            dense_threshold: DENSE_THRESHOLD,
            density_histogram: DensityHistogram::from_frequencies(&freqs),
            downstream: None,
        })
    }
}

/// [`HeldOutMetrics`] of one in-memory batch.
pub fn held_out_metrics(x: &Matrix, x_hat: &Matrix, z: &Matrix) -> Result<HeldOutMetrics> {
    let mut acc = HeldOutAccumulator::new(x.cols(), z.cols());
    acc.update(x, x_hat, z)?;
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rows: usize, cols: usize, v: &[f32]) -> Matrix {
        Matrix::from_vec(rows, cols, v.to_vec()).unwrap()
    }

    #[test]
    fn downstream_loss_formula_hand_computed() {
        // clean 2, spliced 2.5, zero-ablation 4: increase 0.5, recovered 1.5/2.
        let d = DownstreamLoss::from_losses(2.0, 2.5, 4.0);
        assert_eq!(d.ce_increase, 0.5);
        assert_eq!(d.loss_recovered, 0.75);
        assert_eq!(
            DownstreamLoss::from_losses(2.0, 2.0, 4.0).loss_recovered,
            1.0
        );
        assert_eq!(
            DownstreamLoss::from_losses(2.0, 4.0, 4.0).loss_recovered,
            0.0
        );
        // Worse than zero-ablation: negative.
        assert_eq!(
            DownstreamLoss::from_losses(2.0, 5.0, 4.0).loss_recovered,
            -0.5
        );
    }

    #[test]
    fn hand_computed_case() {
        // x: (1,2), (3,4); mean (2,3); Σ‖x − x̄‖² = 1+1+1+1 = 4.
        // x̂: (1,2), (3,2): Σ‖x − x̂‖² = 4 → mse = 4/4 = 1, nmse = 1, EV = 0.
        let x = m(2, 2, &[1.0, 2.0, 3.0, 4.0]);
        let xh = m(2, 2, &[1.0, 2.0, 3.0, 2.0]);
        // z: latent 0 fires on both tokens, latent 1 on one, latent 2 never.
        let z = m(2, 3, &[1.0, -2.0, 0.0, 0.5, 0.0, 0.0]);
        let r = held_out_metrics(&x, &xh, &z).unwrap();
        assert_eq!(r.tokens, 2);
        assert!((r.mse - 1.0).abs() < 1e-12);
        assert!((r.normalized_mse - 1.0).abs() < 1e-12);
        assert!(r.explained_variance.abs() < 1e-12);
        assert!((r.l0 - 1.5).abs() < 1e-12);
        assert!((r.l1 - 1.75).abs() < 1e-12);
        assert!((r.dead_fraction - 1.0 / 3.0).abs() < 1e-12);
        // Frequencies 1 and 0.5 are both > 10%.
        assert!((r.dense_fraction - 2.0 / 3.0).abs() < 1e-12);
        let h = &r.density_histogram;
        assert_eq!(h.dead, 1);
        assert_eq!(h.counts.iter().sum::<u64>(), 2);
        // log10(1) = 0 → last bin; log10(0.5) = −0.301 → bin [−0.5, 0), also the last.
        assert_eq!(*h.counts.last().unwrap(), 2);
        assert_eq!(h.log10_edges.len(), h.counts.len() + 1);
        assert!(r.downstream.is_none());
    }

    #[test]
    fn explained_variance_is_about_the_mean() {
        // A constant offset of 100 on every coordinate: about 0 the variance
        // would be ~10⁴ per element and EV ≈ 1; about the mean it is the
        // variance of the ±1 signal, and a reconstruction that only gets the
        // mean right explains nothing.
        let x = m(4, 1, &[101.0, 99.0, 101.0, 99.0]);
        let mean_only = m(4, 1, &[100.0; 4]);
        let z = m(4, 1, &[1.0; 4]);
        let r = held_out_metrics(&x, &mean_only, &z).unwrap();
        assert!(
            r.explained_variance.abs() < 1e-12,
            "{}",
            r.explained_variance
        );
        // Half the residual: EV = 1 − (4·0.25)/4 = 0.75.
        let half = m(4, 1, &[100.5, 99.5, 100.5, 99.5]);
        let r = held_out_metrics(&x, &half, &z).unwrap();
        assert!((r.explained_variance - 0.75).abs() < 1e-12);
        assert!((r.mse - 0.25).abs() < 1e-12);
    }

    #[test]
    fn duplicating_the_eval_set_changes_nothing() {
        let x = m(3, 2, &[1.0, -1.0, 2.0, 0.5, -3.0, 4.0]);
        let xh = m(3, 2, &[0.5, -1.0, 2.5, 0.0, -2.0, 3.0]);
        let z = m(3, 2, &[0.0, 1.0, 2.0, 0.0, 0.0, 3.0]);
        let once = held_out_metrics(&x, &xh, &z).unwrap();
        let dup = |a: &Matrix| {
            let mut v = a.as_slice().to_vec();
            v.extend_from_slice(a.as_slice());
            Matrix::from_vec(2 * a.rows(), a.cols(), v).unwrap()
        };
        let twice = held_out_metrics(&dup(&x), &dup(&xh), &dup(&z)).unwrap();
        assert_eq!(twice.tokens, 6);
        for (a, b) in [
            (once.mse, twice.mse),
            (once.explained_variance, twice.explained_variance),
            (once.normalized_mse, twice.normalized_mse),
            (once.l0, twice.l0),
            (once.dead_fraction, twice.dead_fraction),
        ] {
            assert!((a - b).abs() < 1e-12, "{a} vs {b}");
        }
        // And it agrees with the in-memory metrics of the crate.
        assert!((once.mse - crate::metrics::mse(&x, &xh).unwrap()).abs() < 1e-12);
        let ev = crate::metrics::explained_variance(&x, &xh).unwrap();
        assert!((once.explained_variance - ev).abs() < 1e-12);
    }

    #[test]
    fn batching_does_not_change_the_result() {
        let (n, d, nl) = (97, 5, 7);
        let x = Matrix::from_fn(n, d, |i, j| {
            ((i * 7 + j * 3) as f32 * 0.37).sin() * 3.0 + 10.0
        });
        let xh = Matrix::from_fn(n, d, |i, j| {
            x.get(i, j) + ((i + j) as f32 * 0.9).cos() * 0.4
        });
        let z = Matrix::from_fn(n, nl, |i, j| if (i * j) % 5 == 0 { 1.0 } else { 0.0 });
        let whole = held_out_metrics(&x, &xh, &z).unwrap();
        for b in [1, 10, 32, 96] {
            let mut acc = HeldOutAccumulator::new(d, nl);
            let mut s = 0;
            while s < n {
                let e = (s + b).min(n);
                acc.update(
                    &x.select_rows(s..e),
                    &xh.select_rows(s..e),
                    &z.select_rows(s..e),
                )
                .unwrap();
                s = e;
            }
            let r = acc.finish().unwrap();
            assert!((r.explained_variance - whole.explained_variance).abs() < 1e-10);
            assert!((r.mse - whole.mse).abs() < 1e-12);
            assert_eq!(r.l0, whole.l0);
            assert_eq!(r.density_histogram, whole.density_histogram);
        }
    }

    #[test]
    fn histogram_bins_and_errors() {
        let h = DensityHistogram::from_frequencies(&[0.0, 1e-9, 1e-3, 0.02, 1.0]);
        assert_eq!(h.dead, 1);
        assert_eq!(h.counts[0], 1); // below 1e-8: clamped into the first bin
                                    // 1e-3 → log −3 → bin (−3 + 8)/0.5 = 10; 0.02 → −1.70 → bin 12.
        assert_eq!(h.counts[10], 1);
        assert_eq!(h.counts[12], 1);
        assert_eq!(h.counts[15], 1);
        assert!(HeldOutAccumulator::new(2, 2).finish().is_err());
        let mut acc = HeldOutAccumulator::new(2, 2);
        assert!(acc
            .update(
                &Matrix::zeros(1, 3),
                &Matrix::zeros(1, 3),
                &Matrix::zeros(1, 2)
            )
            .is_err());
    }
}
