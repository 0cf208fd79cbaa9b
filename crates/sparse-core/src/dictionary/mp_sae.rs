//! Matching-pursuit SAE (SAELens `matching_pursuit`; Costa et al. 2025,
//! "From flat to hierarchical: extracting sparse representations with
//! matching pursuit"): the encoder is `k` steps of matching pursuit on the
//! learned dictionary itself, the decoder is that dictionary.
//!
//! ```text
//! Z  = MP_k(X − b_dec; D)       k greedy, residual-based steps per sample
//! X̂  = Z·D + b_dec
//! L  = mean_{n·M}((X − X̂)²)
//! ```
//!
//! The pursuit is [`crate::encoders::pursuit::MatchingPursuit`] (an atom may be chosen
//! again, its coefficient accumulating, so a sample has **at most** `k`
//! non-zeros; non-negative by default, as SAELens' ReLU'd correlations).
//!
//! **Simplification (documented):** the codes are treated as constants in
//! the backward pass. The gradient flows only through the decode:
//! `∂L/∂D_j = Σ_i z_ij·g_i`, `∂L/∂b_dec = Σ_i g_i` with `g = 2(X̂ − X)/(n·M)`;
//! the dependence of `Z` on `D` and `b_dec` through the pursuit (its
//! coefficients `⟨r, d_j⟩` and its selections) is ignored. This is the
//! "dictionary update with codes fixed" step of alternating sparse coding,
//! taken by Adam on every batch. `D` is updated by [`UnitNormAdam`] (tangent
//! projection when configured, then renormalisation), so the atoms are unit
//! norm at every pursuit; `b_dec` by Adam. `D` starts as the learned-D
//! [`super::Autoencoder`] SAE's dictionary for the same seed (also
//! [`super::TopKSae`]'s); `b_dec` at zero.

use super::autoencoder::{Autoencoder, AutoencoderConfig};
use super::topk::{add_codes_transposed_times, add_sparse_times_dense, SparseCodes};
use super::unit_norm::UnitNormAdam;
use crate::encoders::pursuit::MatchingPursuit;
use crate::encoders::sae::{check_batch, check_loss, check_training_batch, validate_common};
use crate::encoders::{Encoder, Encoding};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::optim::{Adam, AdamConfig, ADAM_FLOPS_PER_PARAM};
use serde::{Deserialize, Serialize};

/// Hyperparameters of an [`MpSae`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MpSaeConfig {
    /// Number of latents `N` (rows of the dictionary).
    pub n_latents: usize,
    /// Data dimension `M`.
    pub dim: usize,
    /// Matching-pursuit steps per sample, `1 ≤ k ≤ N`.
    pub k: usize,
    /// Select only atoms positively correlated with the residual (codes ≥ 0).
    pub nonnegative: bool,
    /// Adam hyperparameters (dictionary and `b_dec`).
    pub adam: AdamConfig,
    /// Project `∂L/∂D` to the tangent space of the unit spheres before the step.
    pub project_decoder_gradient: bool,
    /// Seed of the initial dictionary.
    pub seed: u64,
}

impl MpSaeConfig {
    /// Non-negative MP, Adam lr 1e-3, projected decoder gradient.
    pub fn new(n_latents: usize, dim: usize, k: usize, seed: u64) -> Self {
        MpSaeConfig {
            n_latents,
            dim,
            k,
            nonnegative: true,
            adam: AdamConfig::with_lr(1e-3),
            project_decoder_gradient: true,
            seed,
        }
    }

    /// Sizes ≥ 1, `1 ≤ k ≤ N`, valid Adam hyperparameters.
    pub fn validate(&self) -> Result<()> {
        validate_common(self.n_latents, self.dim, 0.0, &self.adam)?;
        if self.k == 0 || self.k > self.n_latents {
            return Err(Error::invalid(
                "k",
                self.k,
                "must be between 1 and the number of latents",
            ));
        }
        Ok(())
    }
}

/// Gradients of the MP-SAE loss with the codes held constant.
#[derive(Clone, Debug)]
pub struct MpSaeGradients {
    /// `∂L/∂D (N × M)` before the tangent projection; non-zero only on selected atoms.
    pub dictionary: Matrix,
    /// `∂L/∂b_dec (M)` (decoder path only).
    pub decoder_bias: Vec<f32>,
}

/// A matching-pursuit SAE with a learned unit-norm dictionary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MpSae {
    config: MpSaeConfig,
    pursuit: MatchingPursuit,
    dictionary: Matrix,
    b_dec: Vec<f32>,
    dict_opt: UnitNormAdam,
    b_dec_adam: Adam,
}

impl MpSae {
    /// A fresh MP-SAE (see the module documentation for the initialisation).
    pub fn new(config: MpSaeConfig) -> Result<Self> {
        config.validate()?;
        let (nl, m) = (config.n_latents, config.dim);
        let dictionary = Autoencoder::new(AutoencoderConfig::paper_sae(nl, m, config.seed))?
            .dictionary()
            .clone();
        Ok(MpSae {
            pursuit: MatchingPursuit::new(config.k, config.nonnegative)?,
            dict_opt: UnitNormAdam::new(nl, m, config.adam, config.project_decoder_gradient),
            b_dec_adam: Adam::new(m, config.adam),
            b_dec: vec![0.0; m],
            dictionary,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MpSaeConfig {
        &self.config
    }

    /// The learned dictionary `D (N × M)`, unit-norm rows (SAELens `W_dec`).
    pub fn dictionary(&self) -> &Matrix {
        &self.dictionary
    }

    /// `b_dec (M)`.
    pub fn decoder_bias(&self) -> &[f32] {
        &self.b_dec
    }

    /// Number of trained parameters: `NM + M` (the encoder has none).
    pub fn n_params(&self) -> usize {
        self.dictionary.as_slice().len() + self.config.dim
    }

    /// Codes and pursuit FLOPs: `k` MP steps on `X − b_dec` (the centring,
    /// `n·M`, is not in `flops`).
    pub fn encode_with_flops(&self, x: &Matrix) -> Result<Encoding> {
        check_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let centred = Matrix::from_fn(x.rows(), self.config.dim, |i, j| {
            x.get(i, j) - self.b_dec[j]
        });
        self.pursuit.encode(&centred, &self.dictionary)
    }

    /// Codes `Z (n × N)`: at most `k` non-zeros per sample.
    pub fn encode(&self, x: &Matrix) -> Result<Matrix> {
        Ok(self.encode_with_flops(x)?.codes)
    }

    /// `X̂ = Z·D + b_dec` for dense codes `z (n × N)`.
    pub fn decode(&self, z: &Matrix) -> Result<Matrix> {
        super::decode(z, &self.dictionary, &self.b_dec)
    }

    /// The loss `mean((X − X̂)²)` on `x`.
    pub fn loss(&self, x: &Matrix) -> Result<f64> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        Ok(self.forward(x)?.0)
    }

    /// The loss and its gradients with the codes held constant.
    pub fn loss_and_gradients(&self, x: &Matrix) -> Result<(f64, MpSaeGradients)> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let (loss, codes, residual) = self.forward(x)?;
        Ok((loss, self.backward(&codes, residual)))
    }

    /// One Adam step of `D` (projected when configured, renormalised) and
    /// `b_dec`; returns the loss before the step. Fails, leaving everything
    /// untouched, on bad input or a non-finite loss.
    pub fn train_step(&mut self, x: &Matrix) -> Result<f32> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let (loss, codes, residual) = self.forward(x)?;
        check_loss(loss)?;
        let mut g = self.backward(&codes, residual);
        self.dict_opt.step(&mut self.dictionary, &mut g.dictionary);
        self.b_dec_adam.step(&mut self.b_dec, &g.decoder_bias);
        Ok(loss as f32)
    }

    /// Loss, sparse codes and the residual `X̂ − X`.
    fn forward(&self, x: &Matrix) -> Result<(f64, SparseCodes, Matrix)> {
        let z = self.encode_with_flops(x)?.codes;
        let (n, m) = x.shape();
        let mut codes = SparseCodes::default();
        codes.clear();
        for i in 0..n {
            for (j, &v) in z.row(i).iter().enumerate() {
                if v != 0.0 {
                    codes.push(j, v);
                }
            }
            codes.end_row();
        }
        let mut residual = Matrix::from_fn(n, m, |i, j| self.b_dec[j] - x.get(i, j));
        add_sparse_times_dense(&codes, &self.dictionary, &mut residual);
        Ok((residual.norm_sq() / (n * m) as f64, codes, residual))
    }

    /// Decoder-path gradients from the residual (consumed as `g`).
    fn backward(&self, codes: &SparseCodes, mut g: Matrix) -> MpSaeGradients {
        let (n, m) = g.shape();
        let scale = (2.0 / (n * m) as f64) as f32;
        g.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
        let mut d_dict = Matrix::zeros(self.config.n_latents, m);
        add_codes_transposed_times(codes, &g, &mut d_dict);
        let decoder_bias = (0..m)
            .map(|c| g.rows_iter().map(|r| r[c] as f64).sum::<f64>() as f32)
            .collect();
        MpSaeGradients {
            dictionary: d_dict,
            decoder_bias,
        }
    }

    /// FLOPs of [`Self::encode_with_flops`] on `n` samples when every sample
    /// takes all `k` steps (an upper bound otherwise; exact then for the
    /// precomputed products, which MP uses when `N ≤ n·k`):
    /// precomputed `2N²M + 2nNM + 2N + n·k·(4N + 2)`; on the fly
    /// `2NM + 2N + n·(2NM + k·(4N + 2 + 2NM))` (every step a new atom).
    pub fn encode_flops(&self, n: usize) -> f64 {
        let (m, nl, k) = (
            self.config.dim as f64,
            self.config.n_latents as f64,
            self.config.k as f64,
        );
        let nf = n as f64;
        if self.config.n_latents <= n.saturating_mul(self.config.k) {
            2.0 * nl * nl * m + 2.0 * nf * nl * m + 2.0 * nl + nf * k * (4.0 * nl + 2.0)
        } else {
            2.0 * nl * m + 2.0 * nl + nf * (2.0 * nl * m + k * (4.0 * nl + 2.0 + 2.0 * nl * m))
        }
    }

    /// FLOPs of one [`Self::train_step`] on `n` samples, at most `k` codes each:
    ///
    /// ```text
    /// n·M                              centre X − b_dec
    /// + encode_flops(n)                the pursuit
    /// + n·(M + 2kM + 3M)               b_dec − X, sparse decode, squared error
    /// + n·(M + 2kM + M)                scale g, ∂D (sparse), Σ_rows g for ∂b_dec
    /// + 12M + [p] 6NM + 12NM + 3NM     Adam on b_dec, projection, Adam on D, renormalisation
    /// ```
    pub fn train_step_flops(&self, n: usize) -> f64 {
        let (m, k) = (self.config.dim as f64, self.config.k as f64);
        let nf = n as f64;
        nf * m
            + self.encode_flops(n)
            + nf * (4.0 * m + 2.0 * k * m)
            + nf * (2.0 * m + 2.0 * k * m)
            + ADAM_FLOPS_PER_PARAM * m
            + self
                .dict_opt
                .step_flops(self.config.n_latents, self.config.dim)
    }
}

#[cfg(test)]
mod tests {
    use super::super::unit_norm::max_atom_norm_error;
    use super::*;
    use crate::data::SyntheticConfig;
    use crate::encoders::sae::testing::random_problem;

    #[test]
    fn at_most_k_selections_per_sample() {
        let (x, _) = random_problem(200, 8, 32, 1);
        for nonnegative in [true, false] {
            let sae = MpSae::new(MpSaeConfig {
                nonnegative,
                ..MpSaeConfig::new(32, 8, 4, 2)
            })
            .unwrap();
            let enc = sae.encode_with_flops(&x).unwrap();
            let mut exactly_k = 0;
            for r in enc.codes.rows_iter() {
                let nnz = r.iter().filter(|&&v| v != 0.0).count();
                assert!((1..=4).contains(&nnz));
                exactly_k += usize::from(nnz == 4);
                if nonnegative {
                    assert!(r.iter().all(|&v| v >= 0.0));
                }
            }
            assert!(exactly_k > 100, "{exactly_k}");
            assert!(enc.iterations <= 4);
            if !nonnegative {
                // Signed MP takes all k steps here: the FLOP formula is exact.
                assert_eq!(enc.flops, sae.encode_flops(200));
            }
            assert!(enc.flops <= sae.encode_flops(200));
        }
    }

    #[test]
    fn gradients_are_those_of_the_decode_with_codes_fixed() {
        let (x, _) = random_problem(6, 4, 5, 3);
        let mut sae = MpSae::new(MpSaeConfig::new(5, 4, 2, 1)).unwrap();
        sae.b_dec = vec![0.1, -0.2, 0.05, 0.0];
        let (loss, g) = sae.loss_and_gradients(&x).unwrap();
        let z = sae.encode(&x).unwrap();
        let fixed = |s: &MpSae| -> f64 {
            let xh = s.decode(&z).unwrap();
            xh.as_slice()
                .iter()
                .zip(x.as_slice())
                .map(|(&a, &b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / 24.0
        };
        // Sparse decode vs GEMM: equal up to f32 rounding.
        assert!((loss - fixed(&sae)).abs() < 1e-6 * loss.max(1.0), "{loss}");
        let h = 1e-2f32;
        let check = |which: usize, i: usize, analytic: f32| {
            let eval = |delta: f32| {
                let mut t = sae.clone();
                if which == 0 {
                    t.dictionary.as_mut_slice()[i] += delta;
                } else {
                    t.b_dec[i] += delta;
                }
                fixed(&t)
            };
            let fd = (eval(h) - eval(-h)) / (2.0 * h as f64);
            assert!(
                (fd - analytic as f64).abs() < 1e-3 * (analytic.abs() as f64) + 1e-4,
                "{which}[{i}]: {analytic} vs {fd}"
            );
        };
        for i in 0..20 {
            check(0, i, g.dictionary.as_slice()[i]);
        }
        for i in 0..4 {
            check(1, i, g.decoder_bias[i]);
        }
        // Unselected atoms get no gradient.
        for j in 0..5 {
            if z.rows_iter().all(|r| r[j] == 0.0) {
                assert!(g.dictionary.row(j).iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn training_lowers_the_loss_and_keeps_atoms_unit_norm() {
        let data = SyntheticConfig::paper(16, 8, 3, 20240926)
            .generate(1024, 0, 0)
            .unwrap();
        let x = &data.train.x;
        let mut sae = MpSae::new(MpSaeConfig {
            adam: AdamConfig::with_lr(1e-2),
            ..MpSaeConfig::new(16, 8, 3, 0)
        })
        .unwrap();
        let first = sae.train_step(x).unwrap();
        let mut last = first;
        for _ in 1..300 {
            last = sae.train_step(x).unwrap();
            assert!(max_atom_norm_error(sae.dictionary()) < 1e-5);
        }
        let mcc = crate::metrics::dictionary_mcc(&data.dictionary, sae.dictionary()).unwrap();
        eprintln!("MP-SAE (k = 3): loss {first:.4} -> {last:.5}, dict MCC {mcc:.3}");
        assert!(last < 0.5 * first, "loss {first} -> {last}");
    }

    #[test]
    fn training_is_deterministic_and_bad_inputs_fail() {
        let (x, _) = random_problem(64, 8, 16, 5);
        let train = |seed| {
            let mut sae = MpSae::new(MpSaeConfig::new(16, 8, 3, seed)).unwrap();
            for _ in 0..20 {
                sae.train_step(&x).unwrap();
            }
            sae
        };
        let (a, b) = (train(7), train(7));
        assert_eq!(a.dictionary(), b.dictionary());
        assert_eq!(a.decoder_bias(), b.decoder_bias());
        assert_ne!(train(8).dictionary(), a.dictionary());
        for k in [0, 17] {
            assert!(MpSae::new(MpSaeConfig::new(16, 8, k, 0)).is_err());
        }
        assert!(MpSae::new(MpSaeConfig::new(0, 8, 1, 0)).is_err());
        let mut sae = MpSae::new(MpSaeConfig::new(16, 8, 3, 0)).unwrap();
        let before = sae.dictionary().clone();
        let mut nan = x.clone();
        nan.set(0, 0, f32::NAN);
        assert!(sae.train_step(&nan).is_err());
        assert!(sae.train_step(&Matrix::zeros(0, 8)).is_err());
        assert!(sae.train_step(&Matrix::zeros(3, 5)).is_err());
        assert_eq!(sae.dictionary(), &before);
        assert_eq!(sae.n_params(), 16 * 8 + 8);
    }
}
