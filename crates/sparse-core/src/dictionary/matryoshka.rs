//! Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning multi-level
//! features with Matryoshka sparse autoencoders"; Nabeshima 2024), SAELens
//! `matryoshka_batchtopk` with `matryoshka_widths`.
//!
//! The latent index set is cut into nested prefixes `0..m_1 ⊂ 0..m_2 ⊂ … ⊂
//! 0..m_P` with `m_1 < m_2 < … < m_P = N` (the *widths*). Codes are the
//! BatchTopK codes of [`super::topk`] (the batch's `n·k` largest positive
//! pre-activations, straight-through), and every prefix must reconstruct on
//! its own:
//!
//! ```text
//! pre  = (X − b_dec)·W_enc + b_enc,   Z = BatchTopK(pre)
//! X̂_p  = Z[:, 0..m_p]·D[0..m_p] + b_dec                 (p = 1..P)
//! L    = Σ_p mean_{n·M}((X − X̂_p)²) + aux_k_coefficient · AuxK
//! ```
//!
//! so the first latents are pushed to carry the coarse, most useful
//! directions. AuxK is [`super::topk`]'s, on the residual of the full width
//! `X − X̂_P` (as SAELens). With one prefix (`widths = [N]`) the model, its
//! loss, gradients, training trajectory and FLOP count are exactly those of
//! a BatchTopK [`super::TopKSae`] with the same [`TopKConfig`].
//!
//! **Gradients** (hand-written): with `g_p = 2(X̂_p − X)/(n·M)` and the suffix
//! sums `G_p = Σ_{q ≥ p} g_q`, a selected latent `j` of group `p`
//! (`m_{p−1} ≤ j < m_p`) appears in the prefixes `p..P`, so its decoder
//! output gradient is `G_p`: `∂L/∂z_ij = ⟨G_p,i, D_j⟩`, `∂L/∂D_j += z_ij·G_p,i`,
//! then straight-through to `W_enc`, `b_enc` as TopK; `∂L/∂b_dec = Σ_rows G_1
//! − W_enc·∂L/∂b_enc`. Every product is sparse (cost ∝ `k`), per group, with
//! the sparse decode / backward kernels of [`super::topk`]; the optimiser is
//! the same [`UnitNormAdam`] (atoms unit-norm at every forward pass) and the
//! threshold average, dead-latent counters and inference (`pre·[pre > θ]`)
//! are BatchTopK's.

use super::topk::{
    add_sparse_times_dense, decoder_bias_gradient, initial_parameters, pre_activations,
    select_above, select_batch, select_dead, sparse_decode_backward, sparse_encoder_backward,
    EncoderBackwardScratch, SparseCodes, TopKConfig, TopKGradients, TopKSelection,
};
use super::unit_norm::UnitNormAdam;
use crate::encoders::sae::{
    check_batch, check_loss, check_training_batch, LayerGrads, LinearReluLayer,
};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::optim::{Adam, ADAM_FLOPS_PER_PARAM};
use serde::{Deserialize, Serialize};

/// Cumulative prefix boundaries (`widths`) from group sizes:
/// `[s_1, s_2, …] → [s_1, s_1 + s_2, …]`.
pub fn widths_from_group_sizes(group_sizes: &[usize]) -> Vec<usize> {
    group_sizes
        .iter()
        .scan(0usize, |acc, &s| {
            *acc += s;
            Some(*acc)
        })
        .collect()
}

/// Hyperparameters of a [`MatryoshkaSae`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MatryoshkaConfig {
    /// The BatchTopK SAE underneath (its `selection` must be
    /// [`TopKSelection::Batch`]): sizes, `k`, AuxK, threshold rate, Adam, seed.
    pub sae: TopKConfig,
    /// Prefix boundaries `m_1 < m_2 < … < m_P = N` (SAELens `matryoshka_widths`).
    pub widths: Vec<usize>,
}

impl MatryoshkaConfig {
    /// A Matryoshka BatchTopK SAE with [`TopKConfig::batch_topk`]'s defaults.
    pub fn new(n_latents: usize, dim: usize, k: usize, widths: Vec<usize>, seed: u64) -> Self {
        MatryoshkaConfig {
            sae: TopKConfig::batch_topk(n_latents, dim, k, seed),
            widths,
        }
    }

    /// As [`Self::new`], the prefixes given as group sizes (which must sum to `N`).
    pub fn from_group_sizes(dim: usize, k: usize, group_sizes: &[usize], seed: u64) -> Self {
        let widths = widths_from_group_sizes(group_sizes);
        let n_latents = widths.last().copied().unwrap_or(0);
        Self::new(n_latents, dim, k, widths, seed)
    }

    /// [`TopKConfig::validate`], BatchTopK selection, and widths that are
    /// non-empty, strictly increasing, ≥ 1 and end at `N`.
    pub fn validate(&self) -> Result<()> {
        self.sae.validate()?;
        if self.sae.selection != TopKSelection::Batch {
            return Err(Error::invalid(
                "selection",
                self.sae.selection.architecture(),
                "a Matryoshka SAE uses BatchTopK selection",
            ));
        }
        let w = &self.widths;
        let ok = !w.is_empty()
            && w[0] >= 1
            && w.windows(2).all(|p| p[0] < p[1])
            && *w.last().unwrap() == self.sae.n_latents;
        if !ok {
            return Err(Error::invalid(
                "widths",
                format!("{w:?}"),
                "must be non-empty, strictly increasing from ≥ 1, and end at the number of latents",
            ));
        }
        Ok(())
    }
}

/// One forward pass: everything the loss and the backward need.
struct Pass {
    centred: Matrix,
    pre: Matrix,
    /// All selected codes, and the same split by group (`m_{p−1} ≤ j < m_p`).
    codes: SparseCodes,
    groups: Vec<SparseCodes>,
    /// `X̂_p − X` per prefix, then the output gradients `G_p`.
    residuals: Vec<Matrix>,
    /// Reconstruction MSE of each prefix.
    prefix_mse: Vec<f64>,
    aux: SparseCodes,
    aux_residual: Matrix,
    aux_weight: f64,
}

/// A Matryoshka BatchTopK SAE with a learned unit-norm dictionary and AuxK.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MatryoshkaSae {
    config: MatryoshkaConfig,
    encoder: LinearReluLayer,
    dictionary: Matrix,
    b_dec: Vec<f32>,
    dict_opt: UnitNormAdam,
    b_dec_adam: Adam,
    steps_since_fired: Vec<usize>,
    threshold: f32,
}

impl MatryoshkaSae {
    /// A fresh SAE, initialised exactly as [`super::TopKSae::new`] with `config.sae`.
    pub fn new(config: MatryoshkaConfig) -> Result<Self> {
        config.validate()?;
        let c = config.sae;
        let (nl, m) = (c.n_latents, c.dim);
        let (encoder, dictionary) = initial_parameters(nl, m, c.adam, c.seed)?;
        Ok(MatryoshkaSae {
            dict_opt: UnitNormAdam::new(nl, m, c.adam, c.project_decoder_gradient),
            b_dec_adam: Adam::new(m, c.adam),
            b_dec: vec![0.0; m],
            steps_since_fired: vec![0; nl],
            threshold: 0.0,
            config,
            encoder,
            dictionary,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MatryoshkaConfig {
        &self.config
    }

    /// The learned dictionary `D (N × M)`, unit-norm rows (SAELens `W_dec`).
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

    /// The BatchTopK inference threshold θ (exported as a JumpReLU threshold).
    pub fn inference_threshold(&self) -> f32 {
        self.threshold
    }

    /// Latents not selected for more than `dead_feature_window` steps.
    pub fn dead_latents(&self) -> Vec<usize> {
        let window = self.config.sae.dead_feature_window;
        (0..self.config.sae.n_latents)
            .filter(|&j| self.steps_since_fired[j] > window)
            .collect()
    }

    /// Number of trained parameters: `2MN + N + M`.
    pub fn n_params(&self) -> usize {
        self.encoder.n_params() + self.dictionary.as_slice().len() + self.config.sae.dim
    }

    fn check(&self, x: &Matrix, training: bool) -> Result<()> {
        let (nl, m) = (self.config.sae.n_latents, self.config.sae.dim);
        if training {
            check_training_batch(x, &self.dictionary, nl, m)
        } else {
            check_batch(x, &self.dictionary, nl, m)
        }
    }

    fn pre(&self, x: &Matrix) -> (Matrix, Matrix) {
        let (nl, m) = (self.config.sae.n_latents, self.config.sae.dim);
        let mut centred = Matrix::zeros(x.rows(), m);
        let mut pre = Matrix::zeros(x.rows(), nl);
        pre_activations(x, &self.b_dec, &self.encoder, &mut centred, &mut pre);
        (centred, pre)
    }

    /// Inference codes `pre·[pre > θ]` (independent of the batch).
    pub fn encode(&self, x: &Matrix) -> Result<Matrix> {
        self.check(x, false)?;
        let (_, pre) = self.pre(x);
        let mut codes = SparseCodes::default();
        select_above(&pre, |_| self.threshold, &mut codes);
        Ok(codes.to_dense(self.config.sae.n_latents))
    }

    /// The training codes: the batch's `n·k` largest positive pre-activations.
    pub fn encode_training(&self, x: &Matrix) -> Result<Matrix> {
        self.check(x, false)?;
        let (_, pre) = self.pre(x);
        let mut codes = SparseCodes::default();
        select_batch(&pre, self.config.sae.k, &mut codes, &mut Vec::new());
        Ok(codes.to_dense(self.config.sae.n_latents))
    }

    /// `X̂ = Z·D + b_dec` for dense codes `z (n × N)` (zero the columns
    /// `≥ m_p` of `z` for the prefix-`p` reconstruction).
    pub fn decode(&self, z: &Matrix) -> Result<Matrix> {
        super::decode(z, &self.dictionary, &self.b_dec)
    }

    /// The training loss (AuxK included with the current dead latents).
    pub fn loss(&self, x: &Matrix) -> Result<f64> {
        self.check(x, true)?;
        Ok(self.forward(x).0)
    }

    /// The reconstruction MSE `mean_{n·M}((X − X̂_p)²)` of each prefix `p`
    /// with the training codes (their sum is the loss without AuxK).
    pub fn prefix_losses(&self, x: &Matrix) -> Result<Vec<f64>> {
        self.check(x, true)?;
        Ok(self.forward(x).1.prefix_mse)
    }

    /// The loss and the gradient of every parameter tensor (dictionary
    /// gradient before projection), in [`super::TopKSae`]'s layout.
    pub fn loss_and_gradients(&self, x: &Matrix) -> Result<(f64, TopKGradients)> {
        self.check(x, true)?;
        let (loss, mut pass) = self.forward(x);
        let (grads, d_dict, d_b_dec) = self.backward(x, &mut pass);
        Ok((
            loss,
            TopKGradients {
                w_enc: grads.dw,
                b_enc: grads.db,
                dictionary: d_dict,
                decoder_bias: d_b_dec,
            },
        ))
    }

    /// One Adam step (as [`super::TopKSae::train_step`]); returns the loss
    /// before the step. Fails, leaving everything untouched, on bad input or
    /// a non-finite loss.
    pub fn train_step(&mut self, x: &Matrix) -> Result<f32> {
        self.check(x, true)?;
        let (loss, mut pass) = self.forward(x);
        check_loss(loss)?;
        let (grads, mut d_dict, d_b_dec) = self.backward(x, &mut pass);
        self.encoder.step(&grads);
        self.dict_opt.step(&mut self.dictionary, &mut d_dict);
        self.b_dec_adam.step(&mut self.b_dec, &d_b_dec);
        self.steps_since_fired.iter_mut().for_each(|s| *s += 1);
        for &j in &pass.codes.latent {
            self.steps_since_fired[j] = 0;
        }
        if let Some(min) = pass.codes.value.iter().copied().reduce(f32::min) {
            let r = self.config.sae.topk_threshold_lr;
            self.threshold = (1.0 - r) * self.threshold + r * min;
        }
        Ok(loss as f32)
    }

    fn forward(&self, x: &Matrix) -> (f64, Pass) {
        let c = &self.config.sae;
        let (n, m) = x.shape();
        let (centred, pre) = self.pre(x);
        let mut codes = SparseCodes::default();
        select_batch(&pre, c.k, &mut codes, &mut Vec::new());
        let mut groups = Vec::with_capacity(self.config.widths.len());
        let mut lo = 0;
        for &hi in &self.config.widths {
            let mut g = SparseCodes::default();
            g.clear();
            for i in 0..n {
                for e in codes.row(i) {
                    let j = codes.latent[e];
                    if (lo..hi).contains(&j) {
                        g.push(j, codes.value[e]);
                    }
                }
                g.end_row();
            }
            groups.push(g);
            lo = hi;
        }
        let count = (n * m) as f64;
        let mut r = Matrix::zeros(n, m);
        for i in 0..n {
            let row = r.row_mut(i);
            for ((v, &xv), &b) in row.iter_mut().zip(x.row(i)).zip(&self.b_dec) {
                *v = b - xv;
            }
        }
        let mut residuals = Vec::with_capacity(groups.len());
        let mut prefix_mse = Vec::with_capacity(groups.len());
        for g in &groups {
            add_sparse_times_dense(g, &self.dictionary, &mut r);
            prefix_mse.push(r.norm_sq() / count);
            residuals.push(r.clone());
        }
        let mut loss = 0.0;
        for &l in &prefix_mse {
            loss += l;
        }
        let mut pass = Pass {
            centred,
            pre,
            codes,
            groups,
            residuals,
            prefix_mse,
            aux: SparseCodes::default(),
            aux_residual: Matrix::zeros(0, m),
            aux_weight: 0.0,
        };
        if !(c.aux_k > 0 && c.aux_k_coefficient > 0.0) {
            return (loss, pass);
        }
        let dead = self.dead_latents();
        if dead.is_empty() {
            return (loss, pass);
        }
        let a = c.aux_k.min(dead.len());
        let scale = (dead.len() as f64 / c.aux_k as f64).min(1.0);
        pass.aux_weight = c.aux_k_coefficient as f64 * scale;
        select_dead(&pass.pre, &dead, a, &mut pass.aux, &mut Vec::new());
        // Z_aux·D − e with e = X − X̂_P = −residual_P.
        pass.aux_residual = pass.residuals.last().unwrap().clone();
        add_sparse_times_dense(&pass.aux, &self.dictionary, &mut pass.aux_residual);
        loss += pass.aux_weight * pass.aux_residual.norm_sq() / count;
        (loss, pass)
    }

    /// Gradients `(encoder, ∂L/∂D, ∂L/∂b_dec)` from a forward pass.
    fn backward(&self, x: &Matrix, pass: &mut Pass) -> (LayerGrads, Matrix, Vec<f32>) {
        let (nl, m) = (self.config.sae.n_latents, self.config.sae.dim);
        let count = (x.rows() * m) as f64;
        let scale = (2.0 / count) as f32;
        for r in &mut pass.residuals {
            r.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
        }
        // Suffix sums G_p = Σ_{q ≥ p} g_q.
        for p in (0..pass.residuals.len().saturating_sub(1)).rev() {
            let (head, tail) = pass.residuals.split_at_mut(p + 1);
            head[p]
                .as_mut_slice()
                .iter_mut()
                .zip(tail[0].as_slice())
                .for_each(|(a, &b)| *a += b);
        }
        let mut d_dict = Matrix::zeros(nl, m);
        let mut grads = LayerGrads::new(m, nl);
        let mut scratch = EncoderBackwardScratch::default();
        let mut code_grads = Vec::new();
        for (g, out_grad) in pass.groups.iter().zip(&pass.residuals) {
            sparse_decode_backward(g, &self.dictionary, out_grad, &mut code_grads, &mut d_dict);
            sparse_encoder_backward(g, &code_grads, &pass.centred, &mut grads, &mut scratch);
        }
        if pass.aux_weight > 0.0 {
            let aux_scale = (2.0 * pass.aux_weight / count) as f32;
            pass.aux_residual
                .as_mut_slice()
                .iter_mut()
                .for_each(|r| *r *= aux_scale);
            sparse_decode_backward(
                &pass.aux,
                &self.dictionary,
                &pass.aux_residual,
                &mut code_grads,
                &mut d_dict,
            );
            sparse_encoder_backward(
                &pass.aux,
                &code_grads,
                &pass.centred,
                &mut grads,
                &mut scratch,
            );
        }
        let mut d_b_dec = vec![0.0; m];
        decoder_bias_gradient(&pass.residuals[0], &self.encoder, &grads.db, &mut d_b_dec);
        (grads, d_dict, d_b_dec)
    }

    /// FLOPs of inference on `n` samples: `n·(M + 2MN + 2N)`, as BatchTopK.
    pub fn encode_flops(&self, n: usize) -> f64 {
        let (m, nl) = (self.config.sae.dim as f64, self.config.sae.n_latents as f64);
        n as f64 * (m + 2.0 * m * nl + 2.0 * nl)
    }

    /// FLOPs of one [`Self::train_step`] on `n` samples with `P` prefixes
    /// (`k` codes per sample on average, `a = min(aux_k, d)` AuxK codes for
    /// the `d` latents dead now):
    ///
    /// ```text
    /// n · [ M + 2MN + 2N + k                  centre, encoder, + b_enc, selection, threshold min
    ///       + M + 2kM + 3PM + (P − 1)M        − X + b_dec, sparse decode, P squared errors, copies
    ///       + PM + (P − 1)M                   scale each g_p, suffix sums G_p
    ///       + 4kM + (2M + 1)k + M             sparse backward (each code once), Σ_rows G_1
    ///     [a>0] + N + M + 2aM + 3M + M + 4aM + (2M + 1)a ]   AuxK, as TopK
    /// + 2MN + M + 12(MN + N) + 12M + [p] 6NM + 12NM + 3NM
    /// ```
    ///
    /// With `P = 1` this is [`super::TopKSae::train_step_flops`] of BatchTopK.
    pub fn train_step_flops(&self, n: usize) -> f64 {
        let c = &self.config.sae;
        let (m, nl, k) = (c.dim as f64, c.n_latents as f64, c.k as f64);
        let p = self.config.widths.len() as f64;
        let mut per_sample = m + 2.0 * m * nl + 2.0 * nl + k;
        per_sample += m + 2.0 * k * m + 3.0 * p * m + (p - 1.0) * m;
        per_sample += p * m + (p - 1.0) * m;
        per_sample += 4.0 * k * m + (2.0 * m + 1.0) * k + m;
        let d = self.dead_latents().len();
        if c.aux_k > 0 && c.aux_k_coefficient > 0.0 && d > 0 {
            let a = c.aux_k.min(d) as f64;
            per_sample += nl + 5.0 * m + 6.0 * a * m + (2.0 * m + 1.0) * a;
        }
        let per_step = 2.0 * m * nl
            + m
            + self.encoder.update_flops()
            + ADAM_FLOPS_PER_PARAM * m
            + self.dict_opt.step_flops(c.n_latents, c.dim);
        n as f64 * per_sample + per_step
    }
}

#[cfg(test)]
mod tests {
    use super::super::topk::TopKSae;
    use super::super::unit_norm::max_atom_norm_error;
    use super::*;
    use crate::data::SyntheticConfig;
    use crate::encoders::sae::testing::{check_gradient, random_problem};
    use crate::optim::AdamConfig;

    fn assert_same_grads(a: &TopKGradients, b: &TopKGradients) {
        assert_eq!(a.w_enc, b.w_enc);
        assert_eq!(a.b_enc, b.b_enc);
        assert_eq!(a.dictionary, b.dictionary);
        assert_eq!(a.decoder_bias, b.decoder_bias);
    }

    #[test]
    fn one_prefix_is_exactly_batch_topk() {
        let (x, _) = random_problem(64, 8, 16, 3);
        let sae_cfg = TopKConfig {
            aux_k: 4,
            dead_feature_window: 2,
            adam: AdamConfig::with_lr(1e-2),
            ..TopKConfig::batch_topk(16, 8, 3, 9)
        };
        let mut plain = TopKSae::new(sae_cfg).unwrap();
        let mut mat = MatryoshkaSae::new(MatryoshkaConfig {
            sae: sae_cfg,
            widths: vec![16],
        })
        .unwrap();
        let mut saw_dead = false;
        for _ in 0..30 {
            let (la, ga) = plain.loss_and_gradients(&x).unwrap();
            let (lb, gb) = mat.loss_and_gradients(&x).unwrap();
            assert_eq!(la, lb);
            assert_same_grads(&ga, &gb);
            assert_eq!(plain.train_step_flops(64), mat.train_step_flops(64));
            saw_dead |= !mat.dead_latents().is_empty();
            assert_eq!(plain.train_step(&x).unwrap(), mat.train_step(&x).unwrap());
        }
        assert!(saw_dead, "AuxK never exercised");
        assert_eq!(plain.dictionary(), mat.dictionary());
        assert_eq!(plain.w_enc(), mat.w_enc());
        assert_eq!(plain.decoder_bias(), mat.decoder_bias());
        assert_eq!(plain.inference_threshold(), Some(mat.inference_threshold()));
        assert_eq!(plain.encode(&x).unwrap(), mat.encode(&x).unwrap());
    }

    fn param(sae: &mut MatryoshkaSae, which: usize) -> &mut [f32] {
        match which {
            0 => sae.encoder.w.as_mut_slice(),
            1 => &mut sae.encoder.b,
            2 => sae.dictionary.as_mut_slice(),
            _ => &mut sae.b_dec,
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (x, _) = random_problem(7, 4, 6, 11);
        let cfg = MatryoshkaConfig {
            sae: TopKConfig {
                aux_k: 0,
                ..TopKConfig::batch_topk(6, 4, 2, 3)
            },
            widths: vec![2, 3, 6],
        };
        let mut sae = MatryoshkaSae::new(cfg).unwrap();
        sae.b_dec = vec![0.1, -0.05, 0.2, -0.15];
        sae.encoder
            .b
            .iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = 0.05 * j as f32 - 0.1);
        let (loss, g) = sae.loss_and_gradients(&x).unwrap();
        assert!((loss - sae.loss(&x).unwrap()).abs() < 1e-12);
        let total: f64 = sae.prefix_losses(&x).unwrap().iter().sum();
        assert!((loss - total).abs() < 1e-12);
        let mut eval = |which: usize, i: usize, delta: f32| {
            let old = param(&mut sae, which)[i];
            param(&mut sae, which)[i] = old + delta;
            let shift = (param(&mut sae, which)[i] - old) as f64;
            let z = sae.encode_training(&x).unwrap();
            let pattern = z.as_slice().iter().map(|&v| v != 0.0).collect();
            let out = (shift, sae.loss(&x).unwrap(), pattern);
            param(&mut sae, which)[i] = old;
            out
        };
        check_gradient("dW_enc", g.w_enc.as_slice(), |i, h| eval(0, i, h));
        check_gradient("db_enc", &g.b_enc, |i, h| eval(1, i, h));
        check_gradient("dD", g.dictionary.as_slice(), |i, h| eval(2, i, h));
        check_gradient("db_dec", &g.decoder_bias, |i, h| eval(3, i, h));
    }

    /// Prefix-`w` MSE of a plain BatchTopK SAE's training codes.
    fn plain_prefix_mse(sae: &TopKSae, x: &Matrix, w: usize) -> f64 {
        let mut z = sae.encode_training(x).unwrap();
        for i in 0..z.rows() {
            z.row_mut(i)[w..].iter_mut().for_each(|v| *v = 0.0);
        }
        let xh = sae.decode(&z).unwrap();
        let d: f64 = xh
            .as_slice()
            .iter()
            .zip(x.as_slice())
            .map(|(&a, &b)| ((a - b) as f64).powi(2))
            .sum();
        d / x.as_slice().len() as f64
    }

    #[test]
    fn training_lowers_the_loss_and_the_first_prefix_reconstructs_better() {
        let data = SyntheticConfig::paper(16, 8, 3, 20240926)
            .generate(1024, 0, 0)
            .unwrap();
        let x = &data.train.x;
        let sae_cfg = TopKConfig {
            adam: AdamConfig::with_lr(1e-2),
            dead_feature_window: 50,
            ..TopKConfig::batch_topk(16, 8, 3, 0)
        };
        let mut mat = MatryoshkaSae::new(MatryoshkaConfig {
            sae: sae_cfg,
            widths: widths_from_group_sizes(&[4, 12]),
        })
        .unwrap();
        let mut plain = TopKSae::new(sae_cfg).unwrap();
        let first = mat.train_step(x).unwrap();
        plain.train_step(x).unwrap();
        let mut last = first;
        for _ in 1..1500 {
            last = mat.train_step(x).unwrap();
            plain.train_step(x).unwrap();
            assert!(max_atom_norm_error(mat.dictionary()) < 1e-5);
        }
        let prefixes = mat.prefix_losses(x).unwrap();
        let plain_first = plain_prefix_mse(&plain, x, 4);
        let plain_full = plain_prefix_mse(&plain, x, 16);
        eprintln!(
            "Matryoshka [4, 16]: loss {first:.4} -> {last:.5}; prefix MSE {:.5} / {:.5}; \
             plain BatchTopK prefix MSE {plain_first:.5} / {plain_full:.5}; θ = {:.4}",
            prefixes[0],
            prefixes[1],
            mat.inference_threshold()
        );
        assert!(last < 0.5 * first, "loss {first} -> {last}");
        assert!(
            prefixes[0] < plain_first,
            "{} vs {plain_first}",
            prefixes[0]
        );
        assert!(prefixes[0] > prefixes[1]);
    }

    #[test]
    fn training_is_deterministic() {
        let (x, _) = random_problem(64, 8, 16, 5);
        let train = |seed| {
            let mut sae =
                MatryoshkaSae::new(MatryoshkaConfig::new(16, 8, 3, vec![4, 8, 16], seed)).unwrap();
            for _ in 0..20 {
                sae.train_step(&x).unwrap();
            }
            sae
        };
        let (a, b) = (train(7), train(7));
        assert_eq!(a.dictionary(), b.dictionary());
        assert_eq!(a.w_enc(), b.w_enc());
        assert_eq!(a.b_enc(), b.b_enc());
        assert_eq!(a.decoder_bias(), b.decoder_bias());
        assert_eq!(a.inference_threshold(), b.inference_threshold());
        assert_ne!(train(8).dictionary(), a.dictionary());
    }

    #[test]
    fn bad_config_and_inputs_are_errors() {
        for widths in [
            vec![],
            vec![0, 16],
            vec![4, 4, 16],
            vec![8, 4, 16],
            vec![4, 12],
        ] {
            let e = MatryoshkaSae::new(MatryoshkaConfig::new(16, 8, 3, widths, 0)).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidParameter { name, .. } if name == "widths"),
                "{e}"
            );
        }
        let per_sample = MatryoshkaConfig {
            sae: TopKConfig::topk(16, 8, 3, 0),
            widths: vec![16],
        };
        assert!(MatryoshkaSae::new(per_sample).is_err());
        assert!(MatryoshkaSae::new(MatryoshkaConfig::new(16, 8, 0, vec![16], 0)).is_err());
        let cfg = MatryoshkaConfig::from_group_sizes(8, 3, &[4, 4, 8], 0);
        assert_eq!(cfg.widths, vec![4, 8, 16]);
        assert_eq!(cfg.sae.n_latents, 16);
        let mut sae = MatryoshkaSae::new(cfg).unwrap();
        let before = sae.dictionary().clone();
        let mut nan = Matrix::zeros(3, 8);
        nan.set(1, 2, f32::NAN);
        assert!(sae.train_step(&nan).is_err());
        assert!(sae.train_step(&Matrix::zeros(0, 8)).is_err());
        assert!(sae.train_step(&Matrix::zeros(3, 5)).is_err());
        assert!(sae.prefix_losses(&Matrix::zeros(3, 5)).is_err());
        assert_eq!(sae.dictionary(), &before);
        assert_eq!(sae.n_params(), 2 * 16 * 8 + 16 + 8);
    }
}
