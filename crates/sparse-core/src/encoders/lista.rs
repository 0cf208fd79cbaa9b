//! LISTA (Gregor & LeCun, 2010): ISTA unrolled into `T` layers with learned weights,
//!
//! `z₀ = 0`, `z_{t+1} = max(0, z_t·S + x·W_e − θ_t)`, `t = 0 … T−1`,
//!
//! with `S (N × N)` and `W_e (dim × N)` **shared across layers** and a
//! **per-layer, per-latent** threshold `θ_t ∈ ℝᴺ` (`θ` is `T × N`). Sharing `S`
//! and `W_e` keeps the parameter count of one ISTA step (`N² + MN`) while the
//! per-layer thresholds let early layers threshold harder or softer than late
//! ones, the main freedom LISTA gains over a fixed-step ISTA.
//!
//! **Initialisation from ISTA.** [`Lista::from_dictionary`] sets
//! `W_e = Dᵀ/L`, `S = I − D·Dᵀ/L`, `θ_t = λ/L` (every entry), with `L` the largest
//! eigenvalue of `D·Dᵀ`: the untrained network is exactly `T` iterations of
//! non-negative ISTA from zero ([`crate::encoders::fista::Fista`] with
//! `accelerated: false`, `tol: 0`, `max_iter: T`) at lasso λ.
//!
//! **Training** is unsupervised against the frozen dictionary, full batch, by
//! Adam with hand-written backpropagation through the `T` layers, on the paper's loss
//!
//! `mean((X − Z_T·D)²) + λ_paper·mean(|Z_T|)`, `λ_paper = λ · 2N / M`
//!
//! ([`crate::encoders::exp_adam::paper_lambda_from_lasso`]): per sample this is
//! the lasso `½‖x − zD‖² + λ‖z‖₁` that the initial ISTA minimises, rescaled, so
//! training and initialisation pursue the same objective.

use crate::encoders::exp_adam::paper_lambda_from_lasso;
use crate::encoders::sae::{check_batch, check_loss, check_training_batch};
use crate::encoders::{Encoder, Encoding, Trainable};
use crate::error::{Error, Result};
use crate::linalg::{gemm_into, gram, largest_eigenvalue_psd, matmul_new, Op};
use crate::matrix::Matrix;
use crate::optim::{Adam, AdamConfig, ADAM_FLOPS_PER_PARAM};

/// LISTA settings.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ListaConfig {
    /// Number of unrolled layers `T` (≥ 1).
    pub layers: usize,
    /// L1 weight on the lasso scale `½‖x − zD‖² + λ‖z‖₁` (as in [`crate::encoders::fista`]).
    pub lambda: f32,
    /// Adam learning rate.
    pub lr: f32,
}

impl Default for ListaConfig {
    /// 8 layers, λ = 0.1 (the FISTA default), lr = 1e-3.
    fn default() -> Self {
        ListaConfig {
            layers: 8,
            lambda: 0.1,
            lr: 1e-3,
        }
    }
}

impl ListaConfig {
    /// Fails with [`Error::InvalidParameter`] for `layers = 0`, λ < 0 or non-finite,
    /// or lr ≤ 0 or non-finite.
    pub fn validate(&self) -> Result<()> {
        if self.layers == 0 {
            return Err(Error::invalid("layers", self.layers, "must be ≥ 1"));
        }
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(Error::invalid(
                "lambda",
                self.lambda,
                "must be finite and ≥ 0",
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("lr", self.lr, "must be finite and > 0"));
        }
        Ok(())
    }
}

/// Gradients of the training loss with respect to the LISTA weights.
#[derive(Clone, Debug)]
pub struct ListaGradients {
    /// `∂L/∂S (N × N)`.
    pub s: Matrix,
    /// `∂L/∂W_e (dim × N)`.
    pub w_e: Matrix,
    /// `∂L/∂θ (T × N)`.
    pub theta: Matrix,
}

/// A LISTA encoder: `T` unrolled, learned ISTA layers (see the module docs).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Lista {
    config: ListaConfig,
    n_latents: usize,
    dim: usize,
    s: Matrix,
    w_e: Matrix,
    theta: Matrix,
    adam_s: Adam,
    adam_w: Adam,
    adam_theta: Adam,
}

/// Forward pass state: `x·W_e` and the codes entering / leaving every layer.
struct Forward {
    /// `z_0 … z_T` (`z_0 = 0`), each `n × N`.
    z: Vec<Matrix>,
    /// Pre-activations `a_0 … a_{T−1}`, each `n × N`.
    a: Vec<Matrix>,
}

impl Lista {
    /// LISTA initialised from ISTA on `dictionary (N × dim)`: `W_e = Dᵀ/L`,
    /// `S = I − D·Dᵀ/L`, `θ_t = λ/L` with `L = λ_max(D·Dᵀ)`. Fails on an
    /// invalid config, an empty or non-finite dictionary, or `L = 0`.
    pub fn from_dictionary(dictionary: &Matrix, config: ListaConfig) -> Result<Self> {
        config.validate()?;
        let (nl, dim) = dictionary.shape();
        if nl == 0 || dim == 0 {
            return Err(Error::shape(
                "dictionary",
                "(n_latents ≥ 1, dim ≥ 1)",
                format!("({nl}, {dim})"),
            ));
        }
        dictionary.check_finite("dictionary")?;
        let g = gram(dictionary);
        let l = largest_eigenvalue_psd(&g);
        if !(l > 0.0 && l.is_finite()) {
            return Err(Error::invalid(
                "dictionary",
                format!("λ_max(D·Dᵀ) = {l}"),
                "must have a positive largest eigenvalue",
            ));
        }
        let inv_l = (1.0 / l) as f32;
        let s = Matrix::from_fn(nl, nl, |i, j| {
            (if i == j { 1.0 } else { 0.0 }) - g.get(i, j) * inv_l
        });
        let w_e = Matrix::from_fn(dim, nl, |i, j| dictionary.get(j, i) * inv_l);
        let theta = Matrix::from_fn(config.layers, nl, |_, _| config.lambda * inv_l);
        let adam = AdamConfig::with_lr(config.lr);
        Ok(Lista {
            config,
            n_latents: nl,
            dim,
            adam_s: Adam::new(nl * nl, adam),
            adam_w: Adam::new(dim * nl, adam),
            adam_theta: Adam::new(config.layers * nl, adam),
            s,
            w_e,
            theta,
        })
    }

    /// The settings.
    pub fn config(&self) -> &ListaConfig {
        &self.config
    }

    /// The shared lateral matrix `S (N × N)`.
    pub fn s(&self) -> &Matrix {
        &self.s
    }

    /// The shared input matrix `W_e (dim × N)`.
    pub fn w_e(&self) -> &Matrix {
        &self.w_e
    }

    /// The per-layer thresholds `θ (T × N)`.
    pub fn theta(&self) -> &Matrix {
        &self.theta
    }

    /// Number of trainable parameters: `N² + MN + TN`.
    pub fn n_params(&self) -> usize {
        let nl = self.n_latents;
        nl * nl + self.dim * nl + self.config.layers * nl
    }

    /// The training loss's `λ_paper = λ·2N/M`.
    pub fn paper_lambda(&self) -> f32 {
        paper_lambda_from_lasso(self.config.lambda, self.dim, self.n_latents)
    }

    fn forward(&self, x: &Matrix) -> Forward {
        let (n, nl, t_max) = (x.rows(), self.n_latents, self.config.layers);
        let b = matmul_new(x, Op::N, &self.w_e, Op::N);
        let mut z = Vec::with_capacity(t_max + 1);
        let mut a = Vec::with_capacity(t_max);
        z.push(Matrix::zeros(n, nl));
        for t in 0..t_max {
            let mut at = b.clone();
            let th = self.theta.row(t);
            for row in at.as_mut_slice().chunks_exact_mut(nl) {
                row.iter_mut().zip(th).for_each(|(v, &c)| *v -= c);
            }
            if t > 0 {
                gemm_into(
                    at.view_mut(),
                    true,
                    z[t].view(),
                    Op::N,
                    self.s.view(),
                    Op::N,
                    1.0,
                );
            }
            let zt = Matrix::from_vec(n, nl, at.as_slice().iter().map(|&v| v.max(0.0)).collect())
                .expect("shape is n × N");
            a.push(at);
            z.push(zt);
        }
        Forward { z, a }
    }

    /// The training loss `mean((X − Z_T·D)²) + λ_paper·mean(|Z_T|)` in f64.
    /// Fails on bad shapes, non-finite input or an empty batch.
    pub fn loss(&self, x: &Matrix, dictionary: &Matrix) -> Result<f64> {
        check_training_batch(x, dictionary, self.n_latents, self.dim)?;
        let fwd = self.forward(x);
        Ok(self.head(x, dictionary, &fwd.z[self.config.layers]).0)
    }

    /// Loss (f64) and `∂L/∂z_T` (`n × N`) for codes `z`.
    fn head(&self, x: &Matrix, dictionary: &Matrix, z: &Matrix) -> (f64, Matrix) {
        let (n, dim) = x.shape();
        let nl = self.n_latents;
        let mut resid = x.clone(); // X − Z·D
        gemm_into(
            resid.view_mut(),
            true,
            z.view(),
            Op::N,
            dictionary.view(),
            Op::N,
            -1.0,
        );
        let sq: f64 = resid.as_slice().iter().map(|&r| (r as f64).powi(2)).sum();
        let l1: f64 = z.as_slice().iter().map(|&v| (v as f64).abs()).sum();
        let lambda = self.paper_lambda() as f64;
        let loss = sq / (n * dim) as f64 + lambda * l1 / (n * nl) as f64;
        // ∂L/∂Z = −(2/(nM))·(X − ZD)·Dᵀ + λ/(nN)·sign(Z); Z ≥ 0, and where Z = 0 the
        // ReLU mask zeroes the gradient anyway, so the L1 term is added everywhere.
        let fit_scale = (-2.0 / (n as f64 * dim as f64)) as f32;
        let l1_grad = (lambda / (n as f64 * nl as f64)) as f32;
        let mut gz = Matrix::from_fn(n, nl, |_, _| l1_grad);
        gemm_into(
            gz.view_mut(),
            true,
            resid.view(),
            Op::N,
            dictionary.view(),
            Op::T,
            fit_scale,
        );
        (loss, gz)
    }

    /// The training loss (f64) and its gradients with respect to `S`, `W_e` and `θ`,
    /// by backpropagation through the `T` layers. Fails like [`Lista::loss`].
    pub fn loss_and_gradients(
        &self,
        x: &Matrix,
        dictionary: &Matrix,
    ) -> Result<(f64, ListaGradients)> {
        check_training_batch(x, dictionary, self.n_latents, self.dim)?;
        let (n, nl, t_max) = (x.rows(), self.n_latents, self.config.layers);
        let fwd = self.forward(x);
        let (loss, mut g) = self.head(x, dictionary, &fwd.z[t_max]);
        let mut grad_s = Matrix::zeros(nl, nl);
        let mut grad_theta = Matrix::zeros(t_max, nl);
        let mut grad_b = Matrix::zeros(n, nl);
        for t in (0..t_max).rev() {
            // δ_t = ∂L/∂a_t = ∂L/∂z_{t+1} ⊙ [a_t > 0].
            for (gv, &av) in g.as_mut_slice().iter_mut().zip(fwd.a[t].as_slice()) {
                if av <= 0.0 {
                    *gv = 0.0;
                }
            }
            let th = grad_theta.row_mut(t);
            for row in g.as_slice().chunks_exact(nl) {
                th.iter_mut().zip(row).for_each(|(a, &d)| *a -= d);
            }
            grad_b
                .as_mut_slice()
                .iter_mut()
                .zip(g.as_slice())
                .for_each(|(a, &d)| *a += d);
            if t > 0 {
                gemm_into(
                    grad_s.view_mut(),
                    true,
                    fwd.z[t].view(),
                    Op::T,
                    g.view(),
                    Op::N,
                    1.0,
                );
                g = matmul_new(&g, Op::N, &self.s, Op::T);
            }
        }
        let grad_w = matmul_new(x, Op::T, &grad_b, Op::N);
        Ok((
            loss,
            ListaGradients {
                s: grad_s,
                w_e: grad_w,
                theta: grad_theta,
            },
        ))
    }

    /// FLOPs of [`Encoder::encode`] on `n` samples (N latents, M = dim, T layers):
    /// `n·[2MN + 2N + (T − 1)(2N² + 3N)]`: `x·W_e` once, then per layer the
    /// threshold subtraction (N) and ReLU (N), and for layers after the first
    /// `z·S` accumulated onto the pre-activation (`2N² + N`).
    pub fn encode_flops(&self, n: usize) -> f64 {
        let (nf, m, nl) = (n as f64, self.dim as f64, self.n_latents as f64);
        let t = self.config.layers as f64;
        nf * (2.0 * m * nl + 2.0 * nl + (t - 1.0) * (2.0 * nl * nl + 3.0 * nl))
    }
}

impl Encoder for Lista {
    /// `"lista-{T}"`.
    fn name(&self) -> String {
        format!("lista-{}", self.config.layers)
    }

    /// `z_T` for every row of `x`; `dictionary` is only checked (shape `N × dim`,
    /// finite), since the weights already encode it.
    fn encode(&self, x: &Matrix, dictionary: &Matrix) -> Result<Encoding> {
        check_batch(x, dictionary, self.n_latents, self.dim)?;
        let mut fwd = self.forward(x);
        Ok(Encoding {
            codes: fwd.z.pop().expect("T ≥ 1 layers"),
            flops: self.encode_flops(x.rows()),
            iterations: self.config.layers,
        })
    }
}

impl Trainable for Lista {
    /// One full-batch Adam step on `S`, `W_e` and `θ` against the frozen
    /// `dictionary`; returns the loss before the step. Fails, leaving the
    /// weights untouched, on bad input or a non-finite loss.
    fn train_step(&mut self, x: &Matrix, dictionary: &Matrix) -> Result<f32> {
        let (loss, grads) = self.loss_and_gradients(x, dictionary)?;
        check_loss(loss)?;
        self.adam_s.step(self.s.as_mut_slice(), grads.s.as_slice());
        self.adam_w
            .step(self.w_e.as_mut_slice(), grads.w_e.as_slice());
        self.adam_theta
            .step(self.theta.as_mut_slice(), grads.theta.as_slice());
        Ok(loss as f32)
    }

    /// FLOPs of one step on `n` samples (M = dim, N = latents, T layers):
    ///
    /// ```text
    /// n · [ forward:  2MN + 2N + (T − 1)(2N² + 3N)        as encode_flops
    ///               + 2NM + 3M + 2N                       decode with residual, squared error, L1
    ///       backward: 2NM + N                             ∂L/∂Z = (scaled residual)·Dᵀ + λ
    ///               + T · 3N                              ReLU mask, ∂θ_t, ∂(x·W_e) accumulated
    ///               + (T − 1) · 4N²                       ∂S += z_tᵀ·δ_t, ∂z_t = δ_t·Sᵀ
    ///               + 2MN ]                               ∂W_e = Xᵀ·Σδ_t
    /// + 12 · (N² + MN + TN)                               Adam, once per step
    /// ```
    ///
    /// (the residual scale `−2/(nM)` is folded into the product's `alpha`).
    fn train_step_flops(&self, n_samples: usize) -> f64 {
        let (nf, m, nl) = (n_samples as f64, self.dim as f64, self.n_latents as f64);
        let t = self.config.layers as f64;
        let head = 2.0 * nl * m + 3.0 * m + 2.0 * nl + 2.0 * nl * m + nl;
        let backward = t * 3.0 * nl + (t - 1.0) * 4.0 * nl * nl + 2.0 * m * nl;
        self.encode_flops(n_samples)
            + nf * (head + backward)
            + ADAM_FLOPS_PER_PARAM * self.n_params() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::SyntheticConfig;
    use crate::encoders::fista::{Fista, FistaConfig};
    use crate::metrics::code_mcc;

    fn paper_data(n: usize, seed: u64) -> (Matrix, Matrix, Matrix) {
        let cfg = SyntheticConfig::paper(16, 8, 3, seed);
        let d = cfg.dictionary().unwrap();
        let split = cfg.split(&d, n, 1).unwrap();
        (split.x, split.z, d)
    }

    fn ista(lambda: f32, iters: usize) -> Fista {
        Fista::new(FistaConfig {
            lambda,
            max_iter: iters,
            tol: 0.0,
            nonnegative: true,
            accelerated: false,
        })
        .unwrap()
    }

    #[test]
    fn initial_weights_reproduce_ista() {
        let (x, _, d) = paper_data(200, 3);
        for (layers, lambda) in [(1, 0.1), (8, 0.1), (20, 0.05)] {
            let lista = Lista::from_dictionary(
                &d,
                ListaConfig {
                    layers,
                    lambda,
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(lista.name(), format!("lista-{layers}"));
            let got = lista.encode(&x, &d).unwrap();
            let want = ista(lambda, layers).encode(&x, &d).unwrap();
            assert_eq!(want.iterations, layers);
            let diff = got.codes.max_abs_diff(&want.codes);
            assert!(diff < 1e-5, "T={layers}: max diff {diff}");
            assert_eq!(got.iterations, layers);
        }
    }

    fn param_mut(l: &mut Lista, which: usize, i: usize) -> &mut f32 {
        match which {
            0 => &mut l.s.as_mut_slice()[i],
            1 => &mut l.w_e.as_mut_slice()[i],
            _ => &mut l.theta.as_mut_slice()[i],
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (x, _, d) = paper_data(32, 4);
        let mut lista = Lista::from_dictionary(
            &d,
            ListaConfig {
                layers: 4,
                lambda: 0.1,
                lr: 1e-2,
            },
        )
        .unwrap();
        // Move away from the ISTA point so that S, W_e and θ are generic.
        for _ in 0..20 {
            lista.train_step(&x, &d).unwrap();
        }
        let (_, grads) = lista.loss_and_gradients(&x, &d).unwrap();
        let masks = |l: &Lista| -> Vec<bool> {
            l.forward(&x)
                .a
                .iter()
                .flat_map(|a| a.as_slice().iter().map(|&v| v > 0.0).collect::<Vec<_>>())
                .collect()
        };
        let base_mask = masks(&lista);
        let eps = 1e-3f32;
        let (mut checked, mut skipped) = (0, 0);
        for which in 0..3 {
            let len = match which {
                0 => lista.s.as_slice().len(),
                1 => lista.w_e.as_slice().len(),
                _ => lista.theta.as_slice().len(),
            };
            for i in 0..len {
                let mut plus = lista.clone();
                let mut minus = lista.clone();
                *param_mut(&mut plus, which, i) += eps;
                *param_mut(&mut minus, which, i) -= eps;
                // Away from kinks: skip coordinates whose perturbation flips a ReLU.
                if masks(&plus) != base_mask || masks(&minus) != base_mask {
                    skipped += 1;
                    continue;
                }
                let analytic = match which {
                    0 => grads.s.as_slice()[i],
                    1 => grads.w_e.as_slice()[i],
                    _ => grads.theta.as_slice()[i],
                } as f64;
                let numeric =
                    (plus.loss(&x, &d).unwrap() - minus.loss(&x, &d).unwrap()) / (2.0 * eps as f64);
                assert!(
                    (numeric - analytic).abs() <= 2e-3 * analytic.abs() + 2e-5,
                    "param {which}[{i}]: numeric {numeric:e} vs analytic {analytic:e}"
                );
                checked += 1;
            }
        }
        assert!(
            checked > 5 * skipped,
            "checked {checked}, skipped {skipped}"
        );
    }

    #[test]
    fn training_lowers_the_loss_and_beats_ista_in_code_mcc() {
        let (x, z, d) = paper_data(512, 7);
        let (x_test, z_test) = {
            let cfg = SyntheticConfig::paper(16, 8, 3, 7);
            let s = cfg.split(&d, 512, 3).unwrap();
            (s.x, s.z)
        };
        let lambda = 0.1;
        let mut lista = Lista::from_dictionary(
            &d,
            ListaConfig {
                layers: 8,
                lambda,
                lr: 3e-3,
            },
        )
        .unwrap();
        let first = lista.loss(&x, &d).unwrap();
        let mut last = 0.0;
        for _ in 0..1500 {
            last = lista.train_step(&x, &d).unwrap();
        }
        let trained = lista.loss(&x, &d).unwrap();
        assert!(
            last.is_finite() && trained < 0.9 * first,
            "{first} → {trained}"
        );
        let mcc_lista = code_mcc(&z_test, &lista.encode(&x_test, &d).unwrap().codes).unwrap();
        let mcc_ista =
            code_mcc(&z_test, &ista(lambda, 8).encode(&x_test, &d).unwrap().codes).unwrap();
        let _ = z;
        eprintln!(
            "loss {first:.5} → {trained:.5}; test code MCC lista-8 {mcc_lista:.4} vs ista-8 {mcc_ista:.4}"
        );
        assert!(mcc_lista > mcc_ista + 0.01, "{mcc_lista} vs {mcc_ista}");
    }

    #[test]
    fn bad_input_is_an_error() {
        let (x, _, d) = paper_data(8, 5);
        for cfg in [
            ListaConfig {
                layers: 0,
                ..Default::default()
            },
            ListaConfig {
                lambda: -1.0,
                ..Default::default()
            },
            ListaConfig {
                lr: f32::NAN,
                ..Default::default()
            },
        ] {
            assert!(Lista::from_dictionary(&d, cfg).is_err());
        }
        assert!(Lista::from_dictionary(&Matrix::zeros(0, 8), ListaConfig::default()).is_err());
        assert!(Lista::from_dictionary(&Matrix::zeros(16, 8), ListaConfig::default()).is_err());
        let mut lista = Lista::from_dictionary(&d, ListaConfig::default()).unwrap();
        let before = lista.clone();
        assert!(lista.encode(&Matrix::zeros(3, 7), &d).is_err());
        assert!(lista.encode(&x, &Matrix::zeros(15, 8)).is_err());
        let mut bad = x.clone();
        bad.set(0, 0, f32::NAN);
        assert!(lista.encode(&bad, &d).is_err());
        assert!(lista.train_step(&bad, &d).is_err());
        assert!(lista.train_step(&Matrix::zeros(0, 8), &d).is_err());
        assert_eq!(lista.s, before.s);
        assert_eq!(
            lista.encode(&Matrix::zeros(0, 8), &d).unwrap().codes.rows(),
            0
        );
    }

    #[test]
    fn flop_counts() {
        let (d, m, nl, t, n) = (
            SyntheticConfig::paper(16, 8, 3, 0).dictionary().unwrap(),
            8.0,
            16.0,
            8.0,
            100,
        );
        let lista = Lista::from_dictionary(&d, ListaConfig::default()).unwrap();
        let nf = n as f64;
        let encode = nf * (2.0 * m * nl + 2.0 * nl + (t - 1.0) * (2.0 * nl * nl + 3.0 * nl));
        assert_eq!(lista.encode_flops(n), encode);
        let closed = nf
            * (8.0 * m * nl
                + 3.0 * m
                + 5.0 * nl
                + 3.0 * t * nl
                + (t - 1.0) * (6.0 * nl * nl + 3.0 * nl))
            + 12.0 * (nl * nl + m * nl + t * nl);
        assert_eq!(lista.train_step_flops(n), closed);
        assert_eq!(lista.n_params(), 16 * 16 + 8 * 16 + 8 * 16);
    }
}
