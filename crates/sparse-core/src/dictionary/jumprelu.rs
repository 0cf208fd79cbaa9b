//! The JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping ahead: improving
//! reconstruction fidelity with JumpReLU sparse autoencoders"; SAELens
//! `jumprelu`) with a learned unit-norm dictionary `D (n_latents × dim)`.
//!
//! ```text
//! pre = (X − b_dec)·W_enc + b_enc            (as SAELens, apply_b_dec_to_input)
//! Z   = pre · H(pre − θ)                      θ = exp(log_θ) > 0, per latent
//! X̂   = Z·D + b_dec
//! L   = mean_{n·M}((X − X̂)²) + l0_coefficient · mean_n(Σ_j H(pre_ij − θ_j))
//! ```
//!
//! `H` is the Heaviside step (strict: `pre > θ`, as SAELens). The threshold
//! is trained through straight-through estimators with the rectangle kernel
//! `K(u) = 1{|u| < 1/2}` of bandwidth `ε`:
//! `∂Z_ij/∂θ_j = −(θ_j/ε)·K((pre_ij − θ_j)/ε)` and
//! `∂H(pre_ij − θ_j)/∂θ_j = −(1/ε)·K((pre_ij − θ_j)/ε)`; the L0 term gives
//! `pre` no gradient, and `∂Z/∂pre = H(pre − θ)` exactly, so encoder and
//! dictionary gradients flow through the active latents only. Adam updates
//! `log θ` (`∂/∂log θ = θ·∂/∂θ`). Decoding and the backward products are
//! sparse × dense, as in [`super::topk`], whose pieces this file reuses.

use super::topk::{
    add_sparse_times_dense, code_gradients, decoder_bias_gradient, initial_parameters,
    pre_activations, select_above, sparse_decode_backward, sparse_encoder_backward,
    EncoderBackwardScratch, SparseCodes,
};
use super::unit_norm::UnitNormAdam;
use crate::encoders::sae::{
    check_batch, check_loss, check_training_batch, validate_common, LayerGrads, LinearReluLayer,
};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::optim::{Adam, AdamConfig, ADAM_FLOPS_PER_PARAM};
use serde::{Deserialize, Serialize};

/// Hyperparameters of a [`JumpReluSae`]; with the seed they fix every number of a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct JumpReluConfig {
    /// Number of latents `N`.
    pub n_latents: usize,
    /// Data dimension `M`.
    pub dim: usize,
    /// Initial threshold θ of every latent, `> 0` (SAELens `jumprelu_init_threshold`, 0.001).
    pub threshold: f32,
    /// Kernel bandwidth `ε > 0` of the straight-through estimators (SAELens `jumprelu_bandwidth`, 0.001).
    pub bandwidth: f32,
    /// Weight of the L0 penalty, `≥ 0` (SAELens `l0_coefficient`).
    pub l0_coefficient: f32,
    /// Adam hyperparameters, shared by every parameter tensor (`log θ` included).
    pub adam: AdamConfig,
    /// Project `∂L/∂D` to the tangent space before the step.
    pub project_decoder_gradient: bool,
    /// Seed of the initialisation.
    pub seed: u64,
    /// Data-driven threshold initialisation: when set, the first training
    /// step first calls [`JumpReluSae::init_thresholds_from_data`] on its
    /// batch with this target, so training starts at a mean L0 of about
    /// `init_l0` whatever the scale of the pre-activations; `threshold` then
    /// only matters before that step. `None` (the default, as SAELens) keeps
    /// every θ at `threshold`.
    #[serde(default)]
    pub init_l0: Option<f32>,
}

impl JumpReluConfig {
    /// SAELens' defaults (`threshold = bandwidth = 0.001`), `l0_coefficient`
    /// 1, projected decoder gradient, Adam lr 1e-3.
    pub fn new(n_latents: usize, dim: usize, seed: u64) -> Self {
        JumpReluConfig {
            n_latents,
            dim,
            threshold: 0.001,
            bandwidth: 0.001,
            l0_coefficient: 1.0,
            adam: AdamConfig::with_lr(1e-3),
            project_decoder_gradient: true,
            seed,
            init_l0: None,
        }
    }

    /// Checks sizes (≥ 1), `threshold` and `bandwidth` finite and `> 0`,
    /// `l0_coefficient` finite and `≥ 0`, `init_l0` (if set) in `(0, N)`,
    /// and the Adam hyperparameters.
    pub fn validate(&self) -> Result<()> {
        validate_common(self.n_latents, self.dim, 0.0, &self.adam)?;
        for (name, v) in [("threshold", self.threshold), ("bandwidth", self.bandwidth)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::invalid(name, v, "must be finite and positive"));
            }
        }
        if !(self.l0_coefficient.is_finite() && self.l0_coefficient >= 0.0) {
            return Err(Error::invalid(
                "l0_coefficient",
                self.l0_coefficient,
                "must be finite and non-negative",
            ));
        }
        if let Some(l0) = self.init_l0 {
            check_target_l0(l0 as f64, self.n_latents)?;
        }
        Ok(())
    }
}

/// A target mean L0 must be finite and in `(0, n_latents)`.
fn check_target_l0(l0: f64, n_latents: usize) -> Result<()> {
    if !(l0.is_finite() && l0 > 0.0 && l0 < n_latents as f64) {
        return Err(Error::invalid(
            "init_l0",
            l0,
            &format!("must be in (0, {n_latents}), the number of latents"),
        ));
    }
    Ok(())
}

/// Gradients of the JumpReLU loss (threshold: the straight-through estimate).
#[derive(Clone, Debug)]
pub struct JumpReluGradients {
    /// `∂L/∂W_enc (M × N)`.
    pub w_enc: Matrix,
    /// `∂L/∂b_enc (N)`.
    pub b_enc: Vec<f32>,
    /// `∂L/∂D (N × M)`, before the tangent projection.
    pub dictionary: Matrix,
    /// `∂L/∂b_dec (M)`.
    pub decoder_bias: Vec<f32>,
    /// Pseudo-gradient `∂L/∂log θ (N)`.
    pub log_threshold: Vec<f32>,
}

/// A JumpReLU SAE with a learned unit-norm dictionary.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JumpReluSae {
    config: JumpReluConfig,
    encoder: LinearReluLayer,
    dictionary: Matrix,
    b_dec: Vec<f32>,
    log_threshold: Vec<f32>,
    dict_opt: UnitNormAdam,
    b_dec_adam: Adam,
    threshold_adam: Adam,
    /// Mean active latents per sample at the last training step (`N` before any).
    last_l0: f64,
    /// Whether the thresholds were set from data (`config.init_l0`) already.
    #[serde(default)]
    thresholds_from_data: bool,
}

/// One forward/backward's buffers (allocated per call: batches are small next
/// to the dense encoder product).
struct Pass {
    centred: Matrix,
    pre: Matrix,
    codes: SparseCodes,
    /// Entries with `|pre − θ| < ε/2` (value = pre): where θ gets gradient.
    near: SparseCodes,
    residual: Matrix,
    grads: LayerGrads,
    d_dict: Matrix,
    d_b_dec: Vec<f32>,
    d_log_threshold: Vec<f32>,
}

impl JumpReluSae {
    /// A fresh SAE: `W_enc` and `D` as the learned-D autoencoder with this
    /// seed, zero biases, every θ at `config.threshold`.
    pub fn new(config: JumpReluConfig) -> Result<Self> {
        config.validate()?;
        let (nl, m) = (config.n_latents, config.dim);
        let (encoder, dictionary) = initial_parameters(nl, m, config.adam, config.seed)?;
        Ok(JumpReluSae {
            dict_opt: UnitNormAdam::new(nl, m, config.adam, config.project_decoder_gradient),
            b_dec_adam: Adam::new(m, config.adam),
            threshold_adam: Adam::new(nl, config.adam),
            log_threshold: vec![config.threshold.ln(); nl],
            b_dec: vec![0.0; m],
            last_l0: nl as f64,
            thresholds_from_data: false,
            config,
            encoder,
            dictionary,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &JumpReluConfig {
        &self.config
    }

    /// The learned dictionary `D (N × M)`, unit-norm rows.
    pub fn dictionary(&self) -> &Matrix {
        &self.dictionary
    }

    /// `W_enc (M × N)`.
    pub fn w_enc(&self) -> &Matrix {
        &self.encoder.w
    }

    /// `b_enc (N)`.
    pub fn b_enc(&self) -> &[f32] {
        &self.encoder.b
    }

    /// `b_dec (M)`.
    pub fn decoder_bias(&self) -> &[f32] {
        &self.b_dec
    }

    /// The thresholds θ (N), SAELens' `threshold` tensor.
    pub fn threshold(&self) -> Vec<f32> {
        self.log_threshold.iter().map(|t| t.exp()).collect()
    }

    /// Codes `Z (n × N) = pre·H(pre − θ)` of `x (n × M)`.
    pub fn encode(&self, x: &Matrix) -> Result<Matrix> {
        check_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        Ok(self.forward(x).codes.to_dense(self.config.n_latents))
    }

    /// The loss on `x (n × M)`, without gradients.
    pub fn loss(&self, x: &Matrix) -> Result<f64> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let mut pass = self.forward(x);
        Ok(self.loss_of(x, &mut pass))
    }

    /// The loss with every gradient (threshold: straight-through estimate).
    pub fn loss_and_gradients(&self, x: &Matrix) -> Result<(f64, JumpReluGradients)> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let (loss, p) = self.forward_backward(x);
        Ok((
            loss,
            JumpReluGradients {
                w_enc: p.grads.dw,
                b_enc: p.grads.db,
                dictionary: p.d_dict,
                decoder_bias: p.d_b_dec,
                log_threshold: p.d_log_threshold,
            },
        ))
    }

    /// Places every threshold from data: θ_j becomes the pre-activation of
    /// latent `j` that `round(n·target_l0/N)` of the `n` rows of `x` exceed,
    /// so that every latent fires on a fraction `target_l0/N` of `x` and the
    /// mean L0 on `x` is about `target_l0`. A quantile that is not positive
    /// (the latent is rarely positive on `x`) becomes 1e-3 × the root mean
    /// square pre-activation, since θ must stay positive.
    ///
    /// Why: θ is learned in log space by Adam, which moves `log θ` by about
    /// `lr` per step, so a θ started orders of magnitude away from the scale
    /// of the pre-activations (SAELens' 0.001–0.01) needs thousands of steps
    /// before the L0 penalty can act; DeepMind and SAELens make up for it
    /// with billions of training tokens. Starting at the operating point
    /// (as Anthropic's JumpReLU recipe does by setting `b_enc` so that each
    /// latent fires on a fixed fraction of the data) leaves the L0 penalty to
    /// trade sparsity for reconstruction from the first step. Fails, changing
    /// nothing, on bad input or a target outside `(0, N)`.
    pub fn init_thresholds_from_data(&mut self, x: &Matrix, target_l0: f64) -> Result<()> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        check_target_l0(target_l0, self.config.n_latents)?;
        let pre = self.forward(x).pre;
        let n = pre.rows();
        let rms = (pre.norm_sq() / pre.as_slice().len() as f64).sqrt() as f32;
        let floor = if rms > 0.0 {
            1e-3 * rms
        } else {
            self.config.threshold
        };
        let above =
            ((n as f64 * target_l0 / self.config.n_latents as f64).round() as usize).min(n - 1);
        let mut column = vec![0.0f32; n];
        for (j, log_t) in self.log_threshold.iter_mut().enumerate() {
            for (i, c) in column.iter_mut().enumerate() {
                *c = pre.get(i, j);
            }
            // Descending order: `above` values sit strictly before index `above`.
            let (_, &mut q, _) = column.select_nth_unstable_by(above, |a, b| b.total_cmp(a));
            *log_t = q.max(floor).ln();
        }
        self.thresholds_from_data = true;
        Ok(())
    }

    /// One Adam step of `W_enc`, `b_enc`, `b_dec`, `log θ` and `D` (projected
    /// when configured, renormalised). Returns the loss before the step;
    /// fails, changing nothing, on bad input or a non-finite loss. With
    /// `config.init_l0`, the first step first sets the thresholds from its
    /// batch ([`Self::init_thresholds_from_data`]).
    pub fn train_step(&mut self, x: &Matrix) -> Result<f32> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        if let (Some(l0), false) = (self.config.init_l0, self.thresholds_from_data) {
            self.init_thresholds_from_data(x, l0 as f64)?;
        }
        let (loss, mut p) = self.forward_backward(x);
        check_loss(loss)?;
        self.encoder.step(&p.grads);
        self.dict_opt.step(&mut self.dictionary, &mut p.d_dict);
        self.b_dec_adam.step(&mut self.b_dec, &p.d_b_dec);
        self.threshold_adam
            .step(&mut self.log_threshold, &p.d_log_threshold);
        self.last_l0 = p.codes.latent.len() as f64 / x.rows() as f64;
        Ok(loss as f32)
    }

    fn forward(&self, x: &Matrix) -> Pass {
        let (n, nl, m) = (x.rows(), self.config.n_latents, self.config.dim);
        let mut p = Pass {
            centred: Matrix::zeros(n, m),
            pre: Matrix::zeros(n, nl),
            codes: SparseCodes::default(),
            near: SparseCodes::default(),
            residual: Matrix::zeros(n, m),
            grads: LayerGrads::new(m, nl),
            d_dict: Matrix::zeros(nl, m),
            d_b_dec: vec![0.0; m],
            d_log_threshold: vec![0.0; nl],
        };
        pre_activations(x, &self.b_dec, &self.encoder, &mut p.centred, &mut p.pre);
        let theta = self.threshold();
        select_above(&p.pre, |j| theta[j], &mut p.codes);
        p
    }

    /// Leaves `residual = X̂ − X`; returns MSE + L0 penalty.
    fn loss_of(&self, x: &Matrix, p: &mut Pass) -> f64 {
        for i in 0..x.rows() {
            let row = p.residual.row_mut(i);
            for ((r, &xv), &b) in row.iter_mut().zip(x.row(i)).zip(&self.b_dec) {
                *r = b - xv;
            }
        }
        add_sparse_times_dense(&p.codes, &self.dictionary, &mut p.residual);
        let mse = p.residual.norm_sq() / p.residual.as_slice().len() as f64;
        let l0 = p.codes.latent.len() as f64 / x.rows() as f64;
        mse + self.config.l0_coefficient as f64 * l0
    }

    fn forward_backward(&self, x: &Matrix) -> (f64, Pass) {
        let mut p = self.forward(x);
        let loss = self.loss_of(x, &mut p);
        let (n, nl) = (x.rows(), self.config.n_latents);
        let scale = (2.0 / p.residual.as_slice().len() as f64) as f32;
        p.residual
            .as_mut_slice()
            .iter_mut()
            .for_each(|r| *r *= scale);
        let mut code_grads = Vec::new();
        sparse_decode_backward(
            &p.codes,
            &self.dictionary,
            &p.residual,
            &mut code_grads,
            &mut p.d_dict,
        );
        sparse_encoder_backward(
            &p.codes,
            &code_grads,
            &p.centred,
            &mut p.grads,
            &mut EncoderBackwardScratch::default(),
        );
        decoder_bias_gradient(&p.residual, &self.encoder, &p.grads.db, &mut p.d_b_dec);
        // Threshold: entries inside the kernel window, active or not.
        let theta = self.threshold();
        let eps = self.config.bandwidth;
        p.near.clear();
        for i in 0..n {
            for (j, &v) in p.pre.row(i).iter().enumerate() {
                if ((v - theta[j]) / eps).abs() < 0.5 {
                    p.near.push(j, v);
                }
            }
            p.near.end_row();
        }
        let mut near_grads = Vec::new();
        code_gradients(&p.near, &self.dictionary, &p.residual, &mut near_grads);
        let l0 = self.config.l0_coefficient as f64 / n as f64;
        let mut d_theta = vec![0.0f64; nl];
        for (&j, &g) in p.near.latent.iter().zip(&near_grads) {
            d_theta[j] -= (theta[j] as f64 * g as f64 + l0) / eps as f64;
        }
        for j in 0..nl {
            p.d_log_threshold[j] = (theta[j] as f64 * d_theta[j]) as f32;
        }
        (loss, p)
    }

    /// Mean active latents per sample at the last training step (`N` before any).
    pub fn last_l0(&self) -> f64 {
        self.last_l0
    }

    /// FLOPs of encoding `n` samples: `n·(M + 2MN + 2N)` (centre, product,
    /// `+ b_enc`, threshold test); `θ = exp(log θ)` is not counted.
    pub fn encode_flops(&self, n: usize) -> f64 {
        let (m, nl) = (self.config.dim as f64, self.config.n_latents as f64);
        n as f64 * (m + 2.0 * m * nl + 2.0 * nl)
    }

    /// FLOPs of one step on `n` samples with `ℓ` = [`Self::last_l0`] active
    /// latents per sample (data dependent; `N` before the first step) and
    /// `w` kernel-window entries per sample, counted as `ℓ` (an estimate):
    ///
    /// ```text
    /// n · [ M + 2MN + 2N                 centre, encoder, + b_enc, threshold test
    ///     + M + 2ℓM + 3M + ℓ             − X + b_dec, sparse decode, squared error, L0
    ///     + M + 4ℓM + (2M + 1)ℓ + M      ∂L/∂X̂, sparse ∂z and ∂D, sparse ∂W_enc/∂b_enc, Σ ∂L/∂X̂
    ///     + N + w(2M + 3) ]              kernel window test, θ pseudo-gradient
    /// + 2MN + M + N                      ∂b_dec −= W_enc·∂b_enc; ∂log θ = θ·∂θ
    /// + 12(MN + 2N + M)                  Adam on W_enc, b_enc, log θ, b_dec
    /// + [p] 6NM + 12NM + 3NM             projection, Adam on D, renormalisation
    /// ```
    pub fn train_step_flops(&self, n: usize) -> f64 {
        let (m, nl, l) = (
            self.config.dim as f64,
            self.config.n_latents as f64,
            self.last_l0,
        );
        let per_sample = (m + 2.0 * m * nl + 2.0 * nl)
            + (5.0 * m + 2.0 * l * m + l)
            + (2.0 * m + 4.0 * l * m + (2.0 * m + 1.0) * l)
            + (nl + l * (2.0 * m + 3.0));
        let per_step = 2.0 * m * nl
            + m
            + nl
            + ADAM_FLOPS_PER_PARAM * (m * nl + 2.0 * nl + m)
            + self
                .dict_opt
                .step_flops(self.config.n_latents, self.config.dim);
        n as f64 * per_sample + per_step
    }
}

#[cfg(test)]
mod tests {
    use super::super::unit_norm::max_atom_norm_error;
    use super::*;
    use crate::data::SyntheticConfig;
    use crate::encoders::sae::testing::{check_gradient, random_problem};
    use crate::metrics::dictionary_mcc;

    fn param(sae: &mut JumpReluSae, which: usize) -> &mut [f32] {
        match which {
            0 => sae.encoder.w.as_mut_slice(),
            1 => &mut sae.encoder.b,
            2 => sae.dictionary.as_mut_slice(),
            _ => &mut sae.b_dec,
        }
    }

    #[test]
    fn gradients_match_finite_differences_and_the_threshold_estimator() {
        let (x, _) = random_problem(7, 4, 6, 11);
        let cfg = JumpReluConfig {
            threshold: 0.2,
            bandwidth: 0.5,
            l0_coefficient: 0.1,
            ..JumpReluConfig::new(6, 4, 3)
        };
        let mut sae = JumpReluSae::new(cfg).unwrap();
        sae.b_dec = vec![0.1, -0.2, 0.05, 0.0];
        let (loss, g) = sae.loss_and_gradients(&x).unwrap();
        assert!((loss - sae.loss(&x).unwrap()).abs() < 1e-12);
        let mut eval = |which: usize, i: usize, delta: f32| {
            let old = param(&mut sae, which)[i];
            param(&mut sae, which)[i] = old + delta;
            let shift = (param(&mut sae, which)[i] - old) as f64;
            let z = sae.encode(&x).unwrap();
            let out = (
                shift,
                sae.loss(&x).unwrap(),
                z.as_slice().iter().map(|&v| v != 0.0).collect(),
            );
            param(&mut sae, which)[i] = old;
            out
        };
        check_gradient("dW_enc", g.w_enc.as_slice(), |i, h| eval(0, i, h));
        check_gradient("dD", g.dictionary.as_slice(), |i, h| eval(2, i, h));
        check_gradient("db_dec", &g.decoder_bias, |i, h| eval(3, i, h));
        // θ: the rectangle-kernel estimator, recomputed densely.
        let z = sae.encode(&x).unwrap();
        let xh = sae.decode_for_test(&z);
        let theta = sae.threshold();
        let pre = sae.forward(&x).pre;
        for (j, &t) in theta.iter().enumerate() {
            let mut d = 0.0f64;
            for i in 0..7 {
                if ((pre.get(i, j) - t) / 0.5).abs() < 0.5 {
                    let dz: f64 = (0..4)
                        .map(|m| {
                            2.0 / 28.0
                                * (xh.get(i, m) - x.get(i, m)) as f64
                                * sae.dictionary.get(j, m) as f64
                        })
                        .sum();
                    d -= (t as f64 * dz + 0.1 / 7.0) / 0.5;
                }
            }
            let want = t as f64 * d;
            assert!((g.log_threshold[j] as f64 - want).abs() < 1e-5, "θ{j}");
        }
        assert!(g.log_threshold.iter().any(|&v| v != 0.0));
    }

    impl JumpReluSae {
        fn decode_for_test(&self, z: &Matrix) -> Matrix {
            Matrix::from_fn(z.rows(), self.config.dim, |i, m| {
                self.b_dec[m]
                    + (0..self.config.n_latents)
                        .map(|j| z.get(i, j) * self.dictionary.get(j, m))
                        .sum::<f32>()
            })
        }
    }

    #[test]
    fn training_lowers_the_loss_sparsifies_and_aligns_the_dictionary() {
        let data = SyntheticConfig::paper(16, 8, 3, 20240926)
            .generate(1024, 0, 0)
            .unwrap();
        let cfg = JumpReluConfig {
            threshold: 0.05,
            bandwidth: 0.05,
            l0_coefficient: 0.01,
            adam: AdamConfig::with_lr(1e-2),
            ..JumpReluConfig::new(16, 8, 0)
        };
        let mut sae = JumpReluSae::new(cfg).unwrap();
        let mcc0 = dictionary_mcc(&data.dictionary, sae.dictionary()).unwrap();
        let first = sae.train_step(&data.train.x).unwrap();
        let l0_first = sae.last_l0();
        let mut last = first;
        for _ in 1..1500 {
            last = sae.train_step(&data.train.x).unwrap();
            assert!(max_atom_norm_error(sae.dictionary()) < 1e-5);
        }
        let mcc = dictionary_mcc(&data.dictionary, sae.dictionary()).unwrap();
        eprintln!(
            "JumpReLU: loss {first:.4} -> {last:.5}, L0 {l0_first:.2} -> {:.2}, dict MCC {mcc0:.3} -> {mcc:.3}, θ mean {:.4}",
            sae.last_l0(),
            sae.threshold().iter().sum::<f32>() / 16.0
        );
        assert!(last < 0.5 * first, "loss {first} -> {last}");
        assert!(sae.last_l0() < l0_first);
        assert!(mcc > mcc0 + 0.05, "dict MCC {mcc0} -> {mcc}");
    }

    /// Trains on 1024 samples of the paper's generator (N = 64, M = 16,
    /// K = 3), width 64, mini-batches of 128, lr 1e-3, 400 steps; returns the
    /// mean L0 on held-out data and the model.
    fn l0_after_training(init_l0: Option<f32>, l0_coefficient: f32) -> (f64, JumpReluSae) {
        let data = SyntheticConfig::paper(64, 16, 3, 11)
            .generate(1024, 512, 0)
            .unwrap();
        let mut sae = JumpReluSae::new(JumpReluConfig {
            threshold: 0.05,
            bandwidth: 0.05,
            l0_coefficient,
            init_l0,
            ..JumpReluConfig::new(64, 16, 5)
        })
        .unwrap();
        let mut batches = crate::data::MiniBatches::new(5, 128, &data.train.x).unwrap();
        for step in 0..400 {
            sae.train_step(batches.batch(&data.train.x, step)).unwrap();
        }
        let l0 = crate::metrics::l0(&sae.encode(&data.val.x).unwrap()).mean_count;
        (l0, sae)
    }

    #[test]
    fn data_driven_thresholds_reach_the_target_l0_where_a_fixed_start_does_not() {
        // The old start (every θ at 0.05, far below the pre-activations'
        // scale) is still dense after 400 steps: Adam moves log θ by ≈ lr per step.
        let (dense, _) = l0_after_training(None, 0.01);
        // Started at L0 = K, the penalty holds it there.
        let (sparse, sae) = l0_after_training(Some(3.0), 0.01);
        eprintln!("held-out L0 after 400 steps: fixed θ₀ {dense:.2}, data-driven {sparse:.2}");
        assert!(dense > 10.0, "fixed start L0 {dense}");
        assert!((1.5..=6.0).contains(&sparse), "data-driven L0 {sparse}");
        assert!(sae.thresholds_from_data);
        // A larger penalty gives a sparser model from the same start.
        let (sparser, _) = l0_after_training(Some(3.0), 1.0);
        assert!(sparser < sparse, "L0 {sparser} at λ=1 vs {sparse} at 0.01");
    }

    #[test]
    fn threshold_initialisation_hits_the_target_exactly_on_its_batch() {
        let (x, _) = random_problem(200, 4, 10, 3);
        let mut sae = JumpReluSae::new(JumpReluConfig::new(10, 4, 1)).unwrap();
        sae.init_thresholds_from_data(&x, 2.0).unwrap();
        // 200 · 2/10 = 40 rows above θ_j for every latent (continuous data: no ties).
        let z = sae.encode(&x).unwrap();
        for j in 0..10 {
            let active = (0..200).filter(|&i| z.get(i, j) > 0.0).count();
            assert_eq!(active, 40, "latent {j}");
        }
        assert!(sae.threshold().iter().all(|&t| t > 0.0));
        for bad in [0.0, -1.0, 10.0, f64::NAN] {
            assert!(sae.init_thresholds_from_data(&x, bad).is_err(), "{bad}");
        }
        assert!(sae
            .init_thresholds_from_data(&Matrix::zeros(3, 5), 2.0)
            .is_err());
        let bad = JumpReluConfig {
            init_l0: Some(10.0),
            ..JumpReluConfig::new(10, 4, 1)
        };
        assert!(JumpReluSae::new(bad).is_err());
        // Only the first step initialises: a later batch does not reset θ.
        let mut lazy = JumpReluSae::new(JumpReluConfig {
            init_l0: Some(2.0),
            ..JumpReluConfig::new(10, 4, 1)
        })
        .unwrap();
        lazy.train_step(&x).unwrap();
        let after_first = lazy.threshold();
        lazy.train_step(&x).unwrap();
        let moved = lazy
            .threshold()
            .iter()
            .zip(&after_first)
            .map(|(a, b)| (a / b).ln().abs())
            .fold(0.0f32, f32::max);
        assert!(moved < 2e-3, "θ moved by a factor e^{moved} in one step");
    }

    #[test]
    fn bad_parameters_and_inputs_fail_and_training_is_deterministic() {
        let base = JumpReluConfig::new(6, 4, 1);
        for bad in [
            JumpReluConfig {
                threshold: 0.0,
                ..base
            },
            JumpReluConfig {
                bandwidth: -1.0,
                ..base
            },
            JumpReluConfig {
                bandwidth: f32::NAN,
                ..base
            },
            JumpReluConfig {
                l0_coefficient: -0.1,
                ..base
            },
            JumpReluConfig {
                n_latents: 0,
                ..base
            },
        ] {
            assert!(JumpReluSae::new(bad).is_err(), "{bad:?}");
        }
        let (x, _) = random_problem(20, 4, 6, 2);
        let mut sae = JumpReluSae::new(base).unwrap();
        let mut nan = x.clone();
        nan.set(0, 1, f32::NAN);
        assert!(sae.train_step(&nan).is_err());
        assert!(sae.train_step(&Matrix::zeros(0, 4)).is_err());
        assert!(sae.encode(&Matrix::zeros(2, 3)).is_err());
        let run = || {
            let mut s = JumpReluSae::new(base).unwrap();
            for _ in 0..10 {
                s.train_step(&x).unwrap();
            }
            (s.dictionary().clone(), s.threshold())
        };
        assert_eq!(run(), run());
        sae.train_step(&x).unwrap();
        assert!(sae.train_step_flops(10) > 0.0 && sae.encode_flops(1) == 4.0 + 48.0 + 12.0);
    }
}
