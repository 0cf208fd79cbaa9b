//! The linear-ReLU sparse-autoencoder encoder `Z = ReLU(X·W_enc + b_enc)`
//! (paper-spec §2.1), trained by full-batch Adam against a **frozen**
//! dictionary `D (n_latents × dim)` with `X̂ = Z·D`.
//!
//! This file also holds what every amortised encoder shares, written once and
//! used by [`super::mlp`] too: PyTorch-style initialisation, the linear-ReLU
//! layer with its hand-written backward pass and Adam state
//! (`LinearReluLayer`), the frozen-decoder loss and its gradient with
//! respect to the codes (`reconstruction_loss`, `relu_code_gradient`), input
//! validation and the per-sample FLOP counts of those pieces.
//!
//! Loss (the paper's `reconstruction_loss_with_l1`, accumulated in f64):
//! `L = mean_{n·dim}((X − Z·D)²) + λ · mean_{n·N}(|Z|)`.

use super::{check_inputs, Encoder, Encoding, Trainable};
use crate::error::{Error, Result};
use crate::linalg::{gemm_into, gemm_into_then, sum_f64_by_lanes, vectorised, Epilogue, Op};
use crate::matrix::Matrix;
use crate::optim::{Adam, AdamConfig, ADAM_FLOPS_PER_PARAM};
use rand::distributions::{Distribution, Uniform};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Hyperparameters of a [`Sae`]; with the seed they fix every number of a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaeConfig {
    /// Number of latents `N` (columns of `W_enc`, rows of the dictionary).
    pub n_latents: usize,
    /// Data dimension `M` (rows of `W_enc`).
    pub dim: usize,
    /// Weight `λ` of the L1 term (paper: 0.01).
    pub lambda: f32,
    /// Adam hyperparameters (paper: lr 1e-3, PyTorch defaults otherwise).
    pub adam: AdamConfig,
    /// Whether `b_enc` exists and is trained (paper: no bias).
    pub use_bias: bool,
    /// Seed of the weight initialisation.
    pub seed: u64,
}

impl SaeConfig {
    /// The paper's known-D setting: λ = 0.01, Adam lr 1e-3, no bias.
    pub fn paper(n_latents: usize, dim: usize, seed: u64) -> Self {
        SaeConfig {
            n_latents,
            dim,
            lambda: 0.01,
            adam: AdamConfig::with_lr(1e-3),
            use_bias: false,
            seed,
        }
    }

    /// Checks sizes (≥ 1), `λ` (finite, ≥ 0) and the Adam hyperparameters.
    pub fn validate(&self) -> Result<()> {
        validate_common(self.n_latents, self.dim, self.lambda, &self.adam)
    }
}

/// The linear-ReLU encoder, its Adam state and its preallocated work buffers.
#[derive(Clone, Debug)]
pub struct Sae {
    config: SaeConfig,
    layer: LinearReluLayer,
    work: SaeWork,
}

/// Buffers of one training step, sized for the last batch so that steps on
/// batches of the same size do not allocate.
#[derive(Clone, Debug)]
struct SaeWork {
    /// Codes `Z (n × N)`.
    z: Matrix,
    /// `X̂ − X`, then `∂L/∂X̂` (`n × M`).
    residual: Matrix,
    /// `∂L/∂(pre-activation)` (`n × N`).
    dz: Matrix,
    /// Parameter gradients.
    grads: LayerGrads,
}

impl SaeWork {
    fn new(n: usize, dim: usize, n_latents: usize) -> Self {
        SaeWork {
            z: Matrix::zeros(n, n_latents),
            residual: Matrix::zeros(n, dim),
            dz: Matrix::zeros(n, n_latents),
            grads: LayerGrads::new(dim, n_latents),
        }
    }

    fn ensure_batch(&mut self, n: usize) {
        ensure_rows(&mut self.z, n);
        ensure_rows(&mut self.residual, n);
        ensure_rows(&mut self.dz, n);
    }
}

impl Sae {
    /// A freshly initialised encoder: `W_enc` (and `b_enc` when used) drawn
    /// like PyTorch's `nn.Linear(dim, n_latents)`, i.e. `U(−1/√dim, 1/√dim)`,
    /// from a ChaCha8 stream seeded with `config.seed`.
    pub fn new(config: SaeConfig) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let layer = LinearReluLayer::init(
            &mut rng,
            config.dim,
            config.n_latents,
            config.use_bias,
            config.adam,
        );
        Ok(Self::with_layer(config, layer))
    }

    /// An encoder with given weights (e.g. from a checkpoint or an SAELens
    /// file) and fresh Adam state. `w_enc` must be `(dim × n_latents)` and
    /// `b_enc` of length `n_latents`, both finite; without `use_bias`, `b_enc`
    /// must be all zeros (it would otherwise be silently dropped).
    pub fn from_weights(config: SaeConfig, w_enc: Matrix, b_enc: Vec<f32>) -> Result<Self> {
        config.validate()?;
        let layer = LinearReluLayer::from_weights(
            ("w_enc", "b_enc"),
            w_enc,
            b_enc,
            (config.dim, config.n_latents),
            config.use_bias,
            config.adam,
        )?;
        Ok(Self::with_layer(config, layer))
    }

    fn with_layer(config: SaeConfig, layer: LinearReluLayer) -> Self {
        Sae {
            work: SaeWork::new(0, config.dim, config.n_latents),
            config,
            layer,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SaeConfig {
        &self.config
    }

    /// `W_enc (dim × n_latents)`, SAELens orientation (`Z = ReLU(X·W_enc + b_enc)`).
    pub fn w_enc(&self) -> &Matrix {
        &self.layer.w
    }

    /// `b_enc (n_latents)`; all zeros when the config has no bias.
    pub fn b_enc(&self) -> &[f32] {
        &self.layer.b
    }

    /// Number of trained parameters (`dim·N`, plus `N` with a bias).
    pub fn n_params(&self) -> usize {
        self.layer.n_params()
    }

    /// The loss on `x (n × dim)` under `dictionary (N × dim)`, without gradients.
    pub fn loss(&self, x: &Matrix, dictionary: &Matrix) -> Result<f64> {
        check_training_batch(x, dictionary, self.config.n_latents, self.config.dim)?;
        let mut z = Matrix::zeros(x.rows(), self.config.n_latents);
        let mut residual = Matrix::zeros(x.rows(), self.config.dim);
        self.layer.forward(x, &mut z);
        Ok(reconstruction_loss(
            x,
            &z,
            dictionary,
            self.config.lambda,
            &mut residual,
        ))
    }

    /// The loss with its gradients `(∂L/∂W_enc (dim × N), ∂L/∂b_enc (N))`;
    /// `∂L/∂b_enc` is all zeros without a bias. Allocates its own buffers
    /// (for tests and diagnostics); training uses the preallocated ones.
    pub fn loss_and_gradients(
        &self,
        x: &Matrix,
        dictionary: &Matrix,
    ) -> Result<(f64, Matrix, Vec<f32>)> {
        check_training_batch(x, dictionary, self.config.n_latents, self.config.dim)?;
        let mut work = SaeWork::new(x.rows(), self.config.dim, self.config.n_latents);
        let loss = forward_backward(&self.layer, self.config.lambda, x, dictionary, &mut work);
        Ok((loss, work.grads.dw, work.grads.db))
    }

    /// FLOPs of encoding `n` samples: `n · (2·dim·N + N)` (product, ReLU),
    /// `+ n·N` with a bias. The reference (paper-spec §4) also counts the
    /// decoder (`+ 2NM` per sample); we count producing the codes only.
    pub fn encode_flops(&self, n: usize) -> f64 {
        n as f64 * self.layer.forward_flops()
    }
}

/// Forward pass, loss and backward pass of the SAE on one batch: leaves the
/// parameter gradients in `work.grads` and returns the loss.
fn forward_backward(
    layer: &LinearReluLayer,
    lambda: f32,
    x: &Matrix,
    dictionary: &Matrix,
    work: &mut SaeWork,
) -> f64 {
    work.ensure_batch(x.rows());
    layer.forward(x, &mut work.z);
    let loss = reconstruction_loss(x, &work.z, dictionary, lambda, &mut work.residual);
    relu_code_gradient(
        &work.z,
        dictionary,
        lambda,
        &mut work.residual,
        &mut work.dz,
    );
    layer.weight_gradients(x, &work.dz, &mut work.grads);
    loss
}

impl Encoder for Sae {
    fn name(&self) -> String {
        "sae".to_string()
    }

    fn encode(&self, x: &Matrix, dictionary: &Matrix) -> Result<Encoding> {
        check_batch(x, dictionary, self.config.n_latents, self.config.dim)?;
        let mut codes = Matrix::zeros(x.rows(), self.config.n_latents);
        self.layer.forward(x, &mut codes);
        Ok(Encoding {
            codes,
            flops: self.encode_flops(x.rows()),
            iterations: 1,
        })
    }
}

impl Trainable for Sae {
    /// One full-batch Adam step on `W_enc` (and `b_enc`); the dictionary is
    /// not changed. Fails, leaving the weights untouched, on bad input or a
    /// non-finite loss.
    fn train_step(&mut self, x: &Matrix, dictionary: &Matrix) -> Result<f32> {
        check_training_batch(x, dictionary, self.config.n_latents, self.config.dim)?;
        let loss = forward_backward(
            &self.layer,
            self.config.lambda,
            x,
            dictionary,
            &mut self.work,
        );
        check_loss(loss)?;
        self.layer.step(&self.work.grads);
        Ok(loss as f32)
    }

    /// FLOPs of one step on `n` samples (M = dim, N = latents, `[b]` = with bias):
    ///
    /// ```text
    /// n · [ forward:  2MN + N (ReLU) [+ N bias]          encode
    ///               + 2NM + 3M + 2N                      decode, squared error, L1
    ///       backward: 2M + 2NM + N                       ∂L/∂X̂, ∂L/∂Z = ∂L/∂X̂·Dᵀ, L1 gradient
    ///               + N + 2MN [+ N]                      ReLU mask, ∂W = Xᵀ·δ [∂b] ]
    /// + 12 · (MN [+ N])                                  Adam, once per step
    /// = n · (8MN + 5M + 5N [+ 2N]) + 12·(MN [+ N])
    /// ```
    ///
    /// The reference (paper-spec §4, known D) counts `10MN + 5N` per sample
    /// and step: it charges the parameter update `2(MN + N)` once **per
    /// sample** (and for a bias the paper's SAE does not have) where Adam runs
    /// once per step, and leaves out the loss and `∂L/∂X̂` (`5M + 2N`).
    /// At M = 8, N = 16, n = 1024 that is 1360 per sample against our
    /// ≈ 1145.5 (1144 + 12·128/1024); see [`paper_sae_train_flops`].
    fn train_step_flops(&self, n_samples: usize) -> f64 {
        let (m, nl) = (self.config.dim, self.config.n_latents);
        let per_sample = self.layer.forward_flops()
            + head_forward_flops(m, nl)
            + head_backward_flops(m, nl)
            + self.layer.backward_params_flops();
        n_samples as f64 * per_sample + self.layer.update_flops()
    }
}

/// The reference's SAE training FLOPs (paper-spec §4, `calculate_flops.py`):
/// `(fwd + bwd) · n · T` with `fwd = 4MN + N [+ MN]`,
/// `bwd = N + (2NM + N) + 2NM + 2(MN + N) [+ 2NM]`, `[…]` when the decoder
/// is learned. Kept to reproduce its JSON numbers; [`Sae::train_step_flops`]
/// is our count.
pub fn paper_sae_train_flops(
    dim: usize,
    n_latents: usize,
    n: usize,
    steps: usize,
    learn_d: bool,
) -> f64 {
    let (m, nl) = (dim as f64, n_latents as f64);
    let l = if learn_d { 1.0 } else { 0.0 };
    let fwd = 2.0 * m * nl + nl + 2.0 * nl * m + l * m * nl;
    let bwd = nl + (2.0 * nl * m + nl) + 2.0 * nl * m + 2.0 * (m * nl + nl) + l * 2.0 * nl * m;
    (fwd + bwd) * n as f64 * steps as f64
}

/// The reference's SAE inference FLOPs (paper-spec §4): `n · (2MN + N + 2NM)`,
/// decoder included (ours, [`Sae::encode_flops`], stops at the codes).
pub fn paper_sae_inference_flops(dim: usize, n_latents: usize, n: usize) -> f64 {
    let (m, nl) = (dim as f64, n_latents as f64);
    n as f64 * (4.0 * m * nl + nl)
}

// ---------------------------------------------------------------------------
// Shared by the amortised encoders (this file and `mlp.rs`).
// ---------------------------------------------------------------------------

/// Checks the sizes, `λ` and Adam hyperparameters shared by the encoder configs.
pub(crate) fn validate_common(
    n_latents: usize,
    dim: usize,
    lambda: f32,
    adam: &AdamConfig,
) -> Result<()> {
    if n_latents == 0 {
        return Err(Error::invalid("latents", n_latents, "must be at least 1"));
    }
    if dim == 0 {
        return Err(Error::invalid("dim", dim, "must be at least 1"));
    }
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::invalid(
            "lambda",
            lambda,
            "must be finite and non-negative",
        ));
    }
    if !(adam.lr.is_finite() && adam.lr > 0.0) {
        return Err(Error::invalid("lr", adam.lr, "must be finite and positive"));
    }
    for (name, beta) in [("beta1", adam.beta1), ("beta2", adam.beta2)] {
        if !(0.0..1.0).contains(&beta) {
            return Err(Error::invalid(name, beta, "must be in [0, 1)"));
        }
    }
    if !(adam.eps.is_finite() && adam.eps >= 0.0) {
        return Err(Error::invalid(
            "eps",
            adam.eps,
            "must be finite and non-negative",
        ));
    }
    Ok(())
}

/// Validates `x (n × dim)` and `dictionary (n_latents × dim)`: shapes against
/// the model's, then finiteness.
pub(crate) fn check_batch(
    x: &Matrix,
    dictionary: &Matrix,
    n_latents: usize,
    dim: usize,
) -> Result<()> {
    dictionary.expect_shape("dictionary", Some(n_latents), Some(dim))?;
    x.expect_shape("data", None, Some(dim))?;
    check_inputs(x, dictionary)
}

/// [`check_batch`], plus at least one sample (a mean over none is undefined).
pub(crate) fn check_training_batch(
    x: &Matrix,
    dictionary: &Matrix,
    n_latents: usize,
    dim: usize,
) -> Result<()> {
    check_batch(x, dictionary, n_latents, dim)?;
    if x.rows() == 0 {
        return Err(Error::shape(
            "data",
            format!("(n ≥ 1, {dim})"),
            format!("(0, {dim})"),
        ));
    }
    Ok(())
}

/// Refuses a non-finite loss before the update, so that one diverged step
/// cannot poison the weights and the Adam moments.
pub(crate) fn check_loss(loss: f64) -> Result<()> {
    if loss.is_finite() {
        Ok(())
    } else {
        Err(Error::Numerical {
            what: "encoder training".to_string(),
            reason: format!("loss is {loss}; weights left unchanged"),
        })
    }
}

/// Reallocates `m` with `rows` rows (same columns) when the batch size changed.
pub(crate) fn ensure_rows(m: &mut Matrix, rows: usize) {
    if m.rows() != rows {
        *m = Matrix::zeros(rows, m.cols());
    }
}

/// `X̂ = Z·D`, leaves `residual ← X̂ − X` (`n × M`) and returns
/// `L = mean((X − X̂)²) + λ·mean(|Z|)`, accumulated in f64.
/// FLOPs per sample: `2NM` (decode) `+ 3M` (subtract, square, sum) `+ 2N` (abs, sum).
pub(crate) fn reconstruction_loss(
    x: &Matrix,
    z: &Matrix,
    dictionary: &Matrix,
    lambda: f32,
    residual: &mut Matrix,
) -> f64 {
    gemm_into(
        residual.view_mut(),
        false,
        z.view(),
        Op::N,
        dictionary.view(),
        Op::N,
        1.0,
    );
    vectorised(|| {
        for (r, &xv) in residual.as_mut_slice().iter_mut().zip(x.as_slice()) {
            *r -= xv;
        }
        let sq = residual.norm_sq();
        let l1 = sum_f64_by_lanes(z.as_slice(), f64::abs);
        sq / x.as_slice().len() as f64 + lambda as f64 * l1 / z.as_slice().len() as f64
    })
}

/// The loss's gradient with respect to the pre-activation of codes
/// `Z = ReLU(pre)`, from the residual left by [`reconstruction_loss`]:
/// `residual ← ∂L/∂X̂ = 2(X̂ − X)/(n·M)`, then
/// `dpre = ∂L/∂X̂ · Dᵀ + (λ/(n·N))·sign(Z)` (subgradient 0 at `Z = 0`, as
/// PyTorch), zeroed where `Z ≤ 0` — the ReLU's mask (the rule of
/// `linalg::Epilogue::ReluMask`) fused into the L1 pass.
/// FLOPs per sample: `2M + 2NM + N` (the mask counted with the layer's
/// backward, [`LinearReluLayer::backward_params_flops`]).
pub(crate) fn relu_code_gradient(
    z: &Matrix,
    dictionary: &Matrix,
    lambda: f32,
    residual: &mut Matrix,
    dpre: &mut Matrix,
) {
    let scale = (2.0 / residual.as_slice().len() as f64) as f32;
    let scaled = residual.as_mut_slice();
    vectorised(move || scaled.iter_mut().for_each(|r| *r *= scale));
    gemm_into(
        dpre.view_mut(),
        false,
        residual.view(),
        Op::N,
        dictionary.view(),
        Op::T,
        1.0,
    );
    let l1 = (lambda as f64 / z.as_slice().len() as f64) as f32;
    // Selects, not branches: half the codes are zero, in no predictable order.
    let (dpre, z) = (dpre.as_mut_slice(), z.as_slice());
    // `move`: a captured reference to `l1` would be reloaded every element.
    vectorised(move || {
        for (g, &v) in dpre.iter_mut().zip(z) {
            let step = if v > 0.0 { l1 } else { 0.0 };
            let with_l1 = *g + if v < 0.0 { -l1 } else { step };
            // A select of a new value: a plain store, not a masked one.
            *g = if v <= 0.0 { 0.0 } else { with_l1 };
        }
    })
}

/// Per-sample FLOPs of [`reconstruction_loss`]: decode, squared error, L1.
pub(crate) fn head_forward_flops(dim: usize, n_latents: usize) -> f64 {
    let (m, nl) = (dim as f64, n_latents as f64);
    2.0 * nl * m + 3.0 * m + 2.0 * nl
}

/// Per-sample FLOPs of [`relu_code_gradient`]: `∂L/∂X̂`, product with `Dᵀ`, L1 gradient.
pub(crate) fn head_backward_flops(dim: usize, n_latents: usize) -> f64 {
    let (m, nl) = (dim as f64, n_latents as f64);
    2.0 * m + 2.0 * nl * m + nl
}

/// Gradients of one [`LinearReluLayer`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LayerGrads {
    /// `∂L/∂W (fan_in × fan_out)`.
    pub(crate) dw: Matrix,
    /// `∂L/∂b (fan_out)`; zeros when the layer has no bias.
    pub(crate) db: Vec<f32>,
}

impl LayerGrads {
    pub(crate) fn new(fan_in: usize, fan_out: usize) -> Self {
        LayerGrads {
            dw: Matrix::zeros(fan_in, fan_out),
            db: vec![0.0; fan_out],
        }
    }
}

/// `out = ReLU(input · W + b)` with `W (fan_in × fan_out)` stored input-major
/// (SAELens orientation, so the forward product needs no transpose), its
/// backward pass and its Adam state. Both amortised encoders are stacks of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct LinearReluLayer {
    /// `W (fan_in × fan_out)`.
    pub(crate) w: Matrix,
    /// `b (fan_out)`; stays zero when `use_bias` is false.
    pub(crate) b: Vec<f32>,
    use_bias: bool,
    adam_w: Adam,
    /// `None` without a bias, so that no state or update exists for it.
    adam_b: Option<Adam>,
}

impl LinearReluLayer {
    /// PyTorch's `nn.Linear(fan_in, fan_out)` initialisation: weight
    /// (kaiming-uniform with a = √5) and bias both `U(−1/√fan_in, 1/√fan_in)`.
    /// Draws the weight row-major in our `(fan_in × fan_out)` layout, then the
    /// bias only when used (as PyTorch draws none with `bias=False`).
    pub(crate) fn init(
        rng: &mut ChaCha8Rng,
        fan_in: usize,
        fan_out: usize,
        use_bias: bool,
        adam: AdamConfig,
    ) -> Self {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let uniform = Uniform::new(-bound, bound);
        let w = Matrix::from_fn(fan_in, fan_out, |_, _| uniform.sample(rng));
        let b = if use_bias {
            (0..fan_out).map(|_| uniform.sample(rng)).collect()
        } else {
            vec![0.0; fan_out]
        };
        Self::assemble(w, b, use_bias, adam)
    }

    /// A layer with given weights; `names` name them in errors.
    pub(crate) fn from_weights(
        names: (&str, &str),
        w: Matrix,
        b: Vec<f32>,
        (fan_in, fan_out): (usize, usize),
        use_bias: bool,
        adam: AdamConfig,
    ) -> Result<Self> {
        let (w_name, b_name) = names;
        w.expect_shape(w_name, Some(fan_in), Some(fan_out))?;
        w.check_finite(w_name)?;
        if b.len() != fan_out {
            return Err(Error::shape(
                b_name,
                format!("({fan_out},)"),
                format!("({},)", b.len()),
            ));
        }
        if let Some(p) = b.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: b_name.to_string(),
                row: 0,
                col: p,
                value: b[p],
            });
        }
        if !use_bias && b.iter().any(|&v| v != 0.0) {
            return Err(Error::invalid(
                b_name,
                "non-zero values",
                "must be all zeros when the encoder has no bias (use_bias = false)",
            ));
        }
        Ok(Self::assemble(w, b, use_bias, adam))
    }

    fn assemble(w: Matrix, b: Vec<f32>, use_bias: bool, adam: AdamConfig) -> Self {
        LinearReluLayer {
            adam_w: Adam::new(w.as_slice().len(), adam),
            adam_b: use_bias.then(|| Adam::new(b.len(), adam)),
            w,
            b,
            use_bias,
        }
    }

    /// Sets the learning rate of the weight's and the bias's Adam (schedules).
    pub(crate) fn set_lr(&mut self, lr: f32) {
        self.adam_w.config.lr = lr;
        if let Some(a) = &mut self.adam_b {
            a.config.lr = lr;
        }
    }

    fn fan_in(&self) -> usize {
        self.w.rows()
    }

    fn fan_out(&self) -> usize {
        self.w.cols()
    }

    /// Whether the bias is trained (otherwise it stays zero).
    pub(crate) fn uses_bias(&self) -> bool {
        self.use_bias
    }

    /// Trained parameters: the weight, plus the bias when used.
    pub(crate) fn n_params(&self) -> usize {
        self.w.as_slice().len() + if self.use_bias { self.b.len() } else { 0 }
    }

    /// `out (n × fan_out) = ReLU(input (n × fan_in) · W + b)`.
    pub(crate) fn forward(&self, input: &Matrix, out: &mut Matrix) {
        let bias = self.use_bias.then_some(&self.b[..]);
        gemm_into_then(
            out.view_mut(),
            input.view(),
            Op::N,
            self.w.view(),
            Op::N,
            Epilogue::BiasRelu(bias),
        );
    }

    /// Backward to the parameters: masks `dout ← ∂L/∂(pre-activation)` in place
    /// (ReLU′ = 1 where `out > 0`, 0 elsewhere, PyTorch's choice at the kink),
    /// then [`Self::weight_gradients`].
    pub(crate) fn backward_params(
        &self,
        input: &Matrix,
        out: &Matrix,
        dout: &mut Matrix,
        grads: &mut LayerGrads,
    ) {
        Epilogue::ReluMask(out.view()).apply(dout.view_mut());
        self.weight_gradients(input, dout, grads);
    }

    /// `dW = inputᵀ · dpre` and `db = Σ_rows dpre` (when used), from
    /// `dpre = ∂L/∂(pre-activation)`, the ReLU's mask already applied.
    pub(crate) fn weight_gradients(&self, input: &Matrix, dpre: &Matrix, grads: &mut LayerGrads) {
        gemm_into(
            grads.dw.view_mut(),
            false,
            input.view(),
            Op::T,
            dpre.view(),
            Op::N,
            1.0,
        );
        if self.use_bias {
            vectorised(|| {
                grads.db.iter_mut().for_each(|v| *v = 0.0);
                for row in dpre.rows_iter() {
                    grads.db.iter_mut().zip(row).for_each(|(s, &g)| *s += g);
                }
            })
        }
    }

    /// Backward to the input, after [`Self::backward_params`] has masked
    /// `dpre`: `dinput (n × fan_in) = dpre · Wᵀ`.
    pub(crate) fn backward_input(&self, dpre: &Matrix, dinput: &mut Matrix) {
        gemm_into(
            dinput.view_mut(),
            false,
            dpre.view(),
            Op::N,
            self.w.view(),
            Op::T,
            1.0,
        );
    }

    /// Backward through this layer into the linear-ReLU layer below it, whose
    /// output `below` is this layer's input: `dpre_below = (dpre · Wᵀ)`
    /// masked where `below ≤ 0` — [`Self::backward_input`] and the lower
    /// layer's mask of [`Self::backward_params`] in one pass.
    pub(crate) fn backward_into_relu(
        &self,
        dpre: &Matrix,
        below: &Matrix,
        dpre_below: &mut Matrix,
    ) {
        gemm_into_then(
            dpre_below.view_mut(),
            dpre.view(),
            Op::N,
            self.w.view(),
            Op::T,
            Epilogue::ReluMask(below.view()),
        );
    }

    /// One Adam update of the weight (and the bias when used).
    pub(crate) fn step(&mut self, grads: &LayerGrads) {
        self.adam_w.step(self.w.as_mut_slice(), grads.dw.as_slice());
        if let Some(adam_b) = &mut self.adam_b {
            adam_b.step(&mut self.b, &grads.db);
        }
    }

    /// Per-sample FLOPs of [`Self::forward`]: `2·in·out` (product) `+ out`
    /// (ReLU) `[+ out]` (bias).
    pub(crate) fn forward_flops(&self) -> f64 {
        let (i, o) = (self.fan_in() as f64, self.fan_out() as f64);
        2.0 * i * o + o + if self.use_bias { o } else { 0.0 }
    }

    /// Per-sample FLOPs of [`Self::backward_params`]: `out` (ReLU mask)
    /// `+ 2·in·out` (dW) `[+ out]` (db).
    pub(crate) fn backward_params_flops(&self) -> f64 {
        let (i, o) = (self.fan_in() as f64, self.fan_out() as f64);
        o + 2.0 * i * o + if self.use_bias { o } else { 0.0 }
    }

    /// Per-sample FLOPs of [`Self::backward_input`]: `2·in·out`.
    pub(crate) fn backward_input_flops(&self) -> f64 {
        2.0 * self.fan_in() as f64 * self.fan_out() as f64
    }

    /// FLOPs of one [`Self::step`] (once per training step).
    pub(crate) fn update_flops(&self) -> f64 {
        ADAM_FLOPS_PER_PARAM * self.n_params() as f64
    }
}

/// Test helpers shared with `mlp.rs`: random problems, the finite-difference
/// check and a per-latent correlation.
#[cfg(test)]
pub(crate) mod testing {
    use crate::matrix::Matrix;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    /// Gaussian `x (n × dim)` and a unit-row Gaussian dictionary `(n_latents × dim)`.
    pub(crate) fn random_problem(
        n: usize,
        dim: usize,
        n_latents: usize,
        seed: u64,
    ) -> (Matrix, Matrix) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let x = Matrix::from_fn(n, dim, |_, _| rng.sample::<f32, _>(StandardNormal));
        let mut d = Matrix::from_fn(n_latents, dim, |_, _| rng.sample::<f32, _>(StandardNormal));
        d.normalize_rows();
        (x, d)
    }

    /// Central differences against `analytic`, one coordinate at a time.
    /// `eval(i, delta)` shifts parameter `i` by `delta`, returns
    /// `(actual shift, loss, ReLU activation pattern)` and restores it.
    /// The loss is piecewise quadratic in one coordinate (linear layers,
    /// squared error, L1 of non-negative codes), so central differences are
    /// exact up to rounding unless the ±h move crosses a ReLU kink: such
    /// coordinates are detected by a changed activation pattern and skipped
    /// explicitly. Returns how many coordinates were checked.
    pub(crate) fn check_gradient(
        what: &str,
        analytic: &[f32],
        mut eval: impl FnMut(usize, f32) -> (f64, f64, Vec<bool>),
    ) -> usize {
        const H: f32 = 1e-2;
        let mut checked = 0;
        for (i, &g) in analytic.iter().enumerate() {
            let (_, _, p0) = eval(i, 0.0);
            let (dp, lp, pp) = eval(i, H);
            let (dm, lm, pm) = eval(i, -H);
            if pp != p0 || pm != p0 {
                continue;
            }
            let fd = (lp - lm) / (dp - dm);
            let err = (fd - g as f64).abs();
            assert!(
                err <= 1e-3 * (g as f64).abs() + 1e-6,
                "{what}[{i}]: analytic {g:e}, finite difference {fd:e}"
            );
            checked += 1;
        }
        assert!(
            checked * 4 >= analytic.len() * 3,
            "{what}: only {checked} of {} coordinates away from a ReLU kink",
            analytic.len()
        );
        assert!(
            analytic.iter().any(|&g| g.abs() > 1e-4),
            "{what}: gradient is all ~0"
        );
        checked
    }

    /// Mean over latents of the Pearson correlation between column `j` of
    /// `z` and of `z_true` (a latent with zero variance counts 0). The
    /// dictionary is the true one, so latent `j` should learn true latent `j`.
    pub(crate) fn mean_matched_correlation(z: &Matrix, z_true: &Matrix) -> f64 {
        assert_eq!(z.shape(), z_true.shape());
        let (n, k) = z.shape();
        let centred_column = |m: &Matrix, j: usize| -> Vec<f64> {
            let mean = (0..n).map(|i| m.get(i, j) as f64).sum::<f64>() / n as f64;
            (0..n).map(|i| m.get(i, j) as f64 - mean).collect()
        };
        let mut total = 0.0;
        for j in 0..k {
            let (a, b) = (centred_column(z, j), centred_column(z_true, j));
            let cov: f64 = a.iter().zip(&b).map(|(p, q)| p * q).sum();
            let va: f64 = a.iter().map(|p| p * p).sum();
            let vb: f64 = b.iter().map(|q| q * q).sum();
            if va > 0.0 && vb > 0.0 {
                total += cov / (va * vb).sqrt();
            }
        }
        total / k as f64
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{check_gradient, mean_matched_correlation, random_problem};
    use super::*;
    use crate::data::SyntheticConfig;

    /// The gradient's rules, element by element, at codes that are zero of
    /// either sign, negative, NaN, denormal or positive: `∂L/∂X̂·Dᵀ` plus the
    /// L1 term where the code is positive, zero where it is `≤ 0`, and the
    /// product alone (no L1 step, no mask) where it is NaN.
    #[test]
    fn the_code_gradient_follows_the_relu_and_l1_rules_at_every_code() {
        let (n, dim, latents, lambda) = (5, 4, 6, 0.3f32);
        let (residual0, d) = random_problem(n, dim, latents, 11);
        let codes = [0.0, -0.0, 0.7, -0.3, f32::NAN, 1e-40];
        let z = Matrix::from_fn(n, latents, |i, j| codes[(i + j) % codes.len()]);
        let mut residual = residual0.clone();
        let mut dpre = Matrix::zeros(n, latents);
        relu_code_gradient(&z, &d, lambda, &mut residual, &mut dpre);
        let scale = (2.0 / (n * dim) as f64) as f32;
        let l1 = (lambda as f64 / (n * latents) as f64) as f32;
        for i in 0..n {
            assert_eq!(residual.get(i, 0), residual0.get(i, 0) * scale);
            for j in 0..latents {
                let product = (0..dim).fold(0.0f32, |s, c| {
                    (residual0.get(i, c) * scale).mul_add(d.get(j, c), s)
                });
                let v = z.get(i, j);
                let want = if v.is_nan() {
                    product
                } else if v > 0.0 {
                    product + l1
                } else {
                    0.0
                };
                let got = dpre.get(i, j);
                assert!(
                    (got - want).abs() <= 1e-6 * (1.0 + want.abs()) && (want != 0.0 || got == 0.0),
                    "code {v}: {got} vs {want}"
                );
            }
        }
    }

    fn small_config(use_bias: bool) -> SaeConfig {
        SaeConfig {
            use_bias,
            ..SaeConfig::paper(6, 4, 3)
        }
    }

    /// Which codes are positive (the ReLU pattern) for the FD kink check.
    fn pattern(sae: &Sae, x: &Matrix, d: &Matrix) -> Vec<bool> {
        let z = sae.encode(x, d).unwrap().codes;
        z.as_slice().iter().map(|&v| v > 0.0).collect()
    }

    fn gradient_check(use_bias: bool) {
        let (x, d) = random_problem(7, 4, 6, 11);
        let mut sae = Sae::new(small_config(use_bias)).unwrap();
        if use_bias {
            // Non-zero biases so that their gradient path is exercised.
            sae.layer.b = (0..6).map(|j| 0.1 * j as f32 - 0.2).collect();
        }
        let (loss, dw, db) = sae.loss_and_gradients(&x, &d).unwrap();
        assert!((loss - sae.loss(&x, &d).unwrap()).abs() < 1e-12);

        let mut eval = |which: u8, i: usize, delta: f32| {
            let p = if which == 0 {
                sae.layer.w.as_mut_slice()
            } else {
                &mut sae.layer.b[..]
            };
            let old = p[i];
            p[i] = old + delta;
            let shift = (p[i] - old) as f64;
            let out = (shift, sae.loss(&x, &d).unwrap(), pattern(&sae, &x, &d));
            let p = if which == 0 {
                sae.layer.w.as_mut_slice()
            } else {
                &mut sae.layer.b[..]
            };
            p[i] = old;
            out
        };
        check_gradient("dW_enc", dw.as_slice(), |i, h| eval(0, i, h));
        if use_bias {
            check_gradient("db_enc", &db, |i, h| eval(1, i, h));
        } else {
            assert!(db.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn gradients_match_finite_differences_without_bias() {
        gradient_check(false);
    }

    #[test]
    fn gradients_match_finite_differences_with_bias() {
        gradient_check(true);
    }

    #[test]
    fn init_is_pytorch_uniform_and_bias_free_by_default() {
        let sae = Sae::new(SaeConfig::paper(64, 16, 0)).unwrap();
        let bound = 1.0 / 4.0;
        let w = sae.w_enc().as_slice();
        assert_eq!(sae.w_enc().shape(), (16, 64));
        assert!(w.iter().all(|v| v.abs() <= bound));
        // Spread over the interval: U(−a, a) has max close to a and mean near 0.
        assert!(w.iter().fold(0.0f32, |m, v| m.max(v.abs())) > 0.9 * bound);
        assert!((w.iter().sum::<f32>() / w.len() as f32).abs() < 0.02);
        assert!(sae.b_enc().iter().all(|&b| b == 0.0));
        assert_eq!(sae.n_params(), 16 * 64);
    }

    #[test]
    fn training_on_the_paper_setting_lowers_the_loss_and_recovers_the_codes() {
        let data = SyntheticConfig::paper(16, 8, 3, 20240625)
            .generate(1024, 0, 512)
            .unwrap();
        let mut sae = Sae::new(SaeConfig::paper(16, 8, 1)).unwrap();
        let d = &data.dictionary;
        let corr_before =
            mean_matched_correlation(&sae.encode(&data.test.x, d).unwrap().codes, &data.test.z);
        let first = sae.train_step(&data.train.x, d).unwrap();
        let mut last = first;
        for _ in 1..1000 {
            last = sae.train_step(&data.train.x, d).unwrap();
        }
        let corr_after =
            mean_matched_correlation(&sae.encode(&data.test.x, d).unwrap().codes, &data.test.z);
        eprintln!("sae: loss {first} -> {last}, corr {corr_before:.3} -> {corr_after:.3}");
        assert!(last < 0.5 * first, "loss {first} -> {last}");
        assert!(
            corr_after > corr_before + 0.2 && corr_after > 0.5,
            "corr {corr_before} -> {corr_after}"
        );
    }

    #[test]
    fn training_is_deterministic_in_the_seed() {
        let (x, d) = random_problem(64, 8, 16, 5);
        let train = |seed| {
            let mut sae = Sae::new(SaeConfig::paper(16, 8, seed)).unwrap();
            for _ in 0..20 {
                sae.train_step(&x, &d).unwrap();
            }
            sae.w_enc().clone()
        };
        assert_eq!(train(7), train(7));
        assert_ne!(train(7), train(8));
    }

    #[test]
    fn work_buffers_follow_the_batch_size() {
        let (x, d) = random_problem(16, 4, 6, 2);
        let mut sae = Sae::new(small_config(true)).unwrap();
        sae.train_step(&x, &d).unwrap();
        let small = x.select_rows(0..5);
        let want = sae.loss(&small, &d).unwrap();
        assert!((sae.train_step(&small, &d).unwrap() as f64 - want).abs() < 1e-6);
        sae.train_step(&x, &d).unwrap();
    }

    #[test]
    fn bad_inputs_are_errors_naming_the_problem() {
        let (x, d) = random_problem(5, 4, 6, 1);
        let mut sae = Sae::new(small_config(false)).unwrap();
        let (bad_x, _) = random_problem(5, 3, 6, 1);
        let err = sae.encode(&bad_x, &d).unwrap_err().to_string();
        assert!(
            err.contains("data") && err.contains("(5, 3)") && err.contains("(n, 4)"),
            "{err}"
        );
        let (_, bad_d) = random_problem(5, 4, 7, 1);
        let err = sae.train_step(&x, &bad_d).unwrap_err().to_string();
        assert!(
            err.contains("dictionary") && err.contains("(7, 4)") && err.contains("(6, 4)"),
            "{err}"
        );
        let mut nan = x.clone();
        nan.set(2, 1, f32::NAN);
        let before = sae.w_enc().clone();
        assert!(matches!(
            sae.train_step(&nan, &d),
            Err(Error::NonFinite { row: 2, col: 1, .. })
        ));
        assert!(matches!(sae.encode(&nan, &d), Err(Error::NonFinite { .. })));
        assert_eq!(
            sae.w_enc(),
            &before,
            "a failed step must not move the weights"
        );
        assert!(sae.train_step(&Matrix::zeros(0, 4), &d).is_err());

        let err = Sae::new(SaeConfig {
            lambda: -0.1,
            ..small_config(false)
        })
        .unwrap_err();
        assert!(err.to_string().contains("lambda"), "{err}");
        assert!(Sae::new(SaeConfig {
            lambda: f32::NAN,
            ..small_config(false)
        })
        .is_err());
        assert!(Sae::new(SaeConfig {
            n_latents: 0,
            ..small_config(false)
        })
        .is_err());
        assert!(Sae::new(SaeConfig {
            dim: 0,
            ..small_config(false)
        })
        .is_err());
        let adam = AdamConfig::with_lr(0.0);
        assert!(Sae::new(SaeConfig {
            adam,
            ..small_config(false)
        })
        .is_err());
    }

    #[test]
    fn from_weights_checks_shapes_and_round_trips() {
        let trained = Sae::new(small_config(true)).unwrap();
        let cfg = *trained.config();
        let copy =
            Sae::from_weights(cfg, trained.w_enc().clone(), trained.b_enc().to_vec()).unwrap();
        let (x, d) = random_problem(5, 4, 6, 9);
        assert_eq!(
            copy.encode(&x, &d).unwrap().codes,
            trained.encode(&x, &d).unwrap().codes
        );

        let err = Sae::from_weights(cfg, Matrix::zeros(6, 4), vec![0.0; 6]).unwrap_err();
        assert!(
            err.to_string().contains("w_enc") && err.to_string().contains("(6, 4)"),
            "{err}"
        );
        let err = Sae::from_weights(cfg, Matrix::zeros(4, 6), vec![0.0; 5]).unwrap_err();
        assert!(err.to_string().contains("b_enc"), "{err}");
        let no_bias = small_config(false);
        assert!(Sae::from_weights(no_bias, Matrix::zeros(4, 6), vec![0.5; 6]).is_err());
        assert!(Sae::from_weights(no_bias, Matrix::zeros(4, 6), vec![0.0; 6]).is_ok());
        let mut w = Matrix::zeros(4, 6);
        w.set(0, 0, f32::INFINITY);
        assert!(Sae::from_weights(no_bias, w, vec![0.0; 6]).is_err());
    }

    #[test]
    fn flop_counts_match_the_documented_formula() {
        // M = 8, N = 16, n = 1024: encode n·(2MN + N) = 1024·272.
        let sae = Sae::new(SaeConfig::paper(16, 8, 0)).unwrap();
        let (x, d) = random_problem(1024, 8, 16, 0);
        assert_eq!(sae.encode(&x, &d).unwrap().flops, 278_528.0);
        // n·(8MN + 5M + 5N) + 12MN = 1024·1144 + 1536.
        assert_eq!(sae.train_step_flops(1024), 1_172_992.0);
        // With bias: encode adds n·N; the step adds n·2N and 12N.
        let biased = Sae::new(SaeConfig {
            use_bias: true,
            ..SaeConfig::paper(16, 8, 0)
        })
        .unwrap();
        assert_eq!(biased.encode_flops(1024), 1024.0 * 288.0);
        assert_eq!(
            biased.train_step_flops(1024),
            1024.0 * 1176.0 + 12.0 * 144.0
        );
        assert_eq!(sae.name(), "sae");
    }

    #[test]
    fn reference_formulas_reproduce_the_reference_json_values() {
        // paper-spec §4: 1744 per sample-step with learned D, 7.05e10 over T = 39,501.
        assert_eq!(paper_sae_train_flops(8, 16, 1, 1, true), 1744.0);
        let f = paper_sae_train_flops(8, 16, 1024, 39_501, true);
        assert!((f / 7.05e10 - 1.0).abs() < 0.01, "{f:e}");
        assert_eq!(paper_sae_train_flops(8, 16, 1, 1, false), 1360.0);
        // Test-set inference 5.4e5 (decoder included).
        assert_eq!(paper_sae_inference_flops(8, 16, 1024), 540_672.0);
    }
}
