//! The encoder comparison on one dictionary: the SAE's own encoder against
//! per-sample inference on its decoder, on the same held-out tokens, at
//! matched L0 (FISTA's λ and the pursuits' k chosen on the validation split).

use crate::downstream::{Baselines, ResolvedLm};
use crate::heldout::{context_data, contexts_for_tokens, split_contexts};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sparse_core::checkpoint::{Checkpoint, Model};
use sparse_core::encoders::fista::{Fista, FistaConfig};
use sparse_core::encoders::pursuit::{MatchingPursuit, Omp};
use sparse_core::encoders::Encoder;
use sparse_core::metrics::held_out::{DownstreamLoss, HeldOutAccumulator, HeldOutMetrics};
use sparse_core::{linalg, Matrix};
use sparse_store::{ActivationStore, Split, Splits};

/// Ok when the checkpoint's model is a ReLU (or MLP-encoder) or TopK SAE.
pub fn require_sae(ckpt: &Checkpoint) -> Result<()> {
    match ckpt.model {
        Model::Autoencoder(_) | Model::TopK(_) => Ok(()),
        _ => bail!(
            "a {} checkpoint, not an SAE (sae, topk or batchtopk)",
            ckpt.method
        ),
    }
}

/// `xn` with `b_dec` subtracted from every row.
fn centred(xn: &Matrix, b_dec: &[f32]) -> Matrix {
    let mut c = xn.clone();
    for row in 0..c.rows() {
        c.row_mut(row)
            .iter_mut()
            .zip(b_dec)
            .for_each(|(v, b)| *v -= b);
    }
    c
}

/// FLOPs of the model's own encoder on `n` samples (`NaN` for the iterative
/// ones, whose cost [`Method::encode`] reads off the solve).
fn sae_encode_flops(model: &Model, n: usize) -> f64 {
    match model {
        Model::Autoencoder(m) => m.encode_flops(n),
        Model::TopK(m) => m.encode_flops(n),
        Model::JumpRelu(m) => m.encode_flops(n),
        _ => f64::NAN,
    }
}

/// One encoder of the comparison, on the SAE's dictionary.
pub enum Method {
    /// The model's own encoder (an SAE's forward pass; a sparse-coding model's FISTA).
    Sae,
    /// Per-sample FISTA (non-negative lasso) from zero.
    Fista(Fista),
    /// Orthogonal matching pursuit, `k` atoms, non-negative.
    Omp(Omp),
    /// Matching pursuit, `k` steps, non-negative.
    Mp(MatchingPursuit),
    /// FISTA warm-started at the SAE's codes.
    SaeFista(Fista),
}

impl Method {
    /// The encoder's name in tables (`sae`, `fista`, `omp-k32`, `mp-k32`, `sae+fista`).
    pub fn name(&self) -> String {
        match self {
            Method::Sae => "sae".into(),
            Method::Fista(_) => "fista".into(),
            Method::Omp(o) => format!("omp-k{}", o.k),
            Method::Mp(m) => format!("mp-k{}", m.k),
            Method::SaeFista(_) => "sae+fista".into(),
        }
    }

    /// Codes of normalised activations `xn (n × M)` and their FLOPs.
    pub fn encode(&self, model: &Model, b_dec: &[f32], xn: &Matrix) -> Result<(Matrix, f64)> {
        let d = model.dictionary();
        let centred = || centred(xn, b_dec);
        Ok(match self {
            Method::Sae => match model {
                Model::SparseCoding(m) => {
                    let e = m.encode(xn)?;
                    (e.codes, e.flops)
                }
                _ => (model.encode(xn)?, sae_encode_flops(model, xn.rows())),
            },
            Method::Fista(f) => {
                let e = f.encode(&centred(), d)?;
                (e.codes, e.flops)
            }
            Method::Omp(o) => {
                let e = o.encode(&centred(), d)?;
                (e.codes, e.flops)
            }
            Method::Mp(m) => {
                let e = m.encode(&centred(), d)?;
                (e.codes, e.flops)
            }
            Method::SaeFista(f) => {
                let z0 = model.encode(xn)?;
                let e = f.solve(&centred(), d, Some(&z0), None)?;
                (e.codes, e.flops + sae_encode_flops(model, xn.rows()))
            }
        })
    }

    /// Codes and reconstruction (raw scale) of raw activations `x`.
    pub fn reconstruct(
        &self,
        model: &Model,
        b_dec: &[f32],
        scale: f32,
        x: &Matrix,
    ) -> Result<(Matrix, Matrix, f64)> {
        let mut xn = x.clone();
        xn.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
        let (z, flops) = self.encode(model, b_dec, &xn)?;
        let mut x_hat = sparse_train::models::decode(model, &z)?;
        x_hat.as_mut_slice().iter_mut().for_each(|v| *v /= scale);
        Ok((z, x_hat, flops))
    }
}
fn l0(z: &Matrix) -> f64 {
    sparse_core::metrics::l0(z).mean_count
}

/// The FISTA every comparison uses: non-negative, tolerance 1e-4.
fn comparison_fista(lambda: f32, max_iter: usize) -> Result<Fista> {
    Ok(Fista::new(FistaConfig {
        lambda,
        max_iter,
        tol: 1e-4,
        ..FistaConfig::default()
    })?)
}

/// λ of a non-negative FISTA whose mean L0 on `xc` (centred, normalised
/// rows) is within 5% of `target`: geometric bisection on
/// `[λ_max·1e−5, λ_max]`, `λ_max = max_{i,j} ⟨x_i, d_j⟩` (above it every code is 0).
pub fn fista_lambda_for_l0(
    xc: &Matrix,
    dictionary: &Matrix,
    target: f64,
    max_iter: usize,
    steps: usize,
) -> Result<(f32, f64)> {
    let dots = linalg::matmul_new(xc, linalg::Op::N, dictionary, linalg::Op::T);
    let lambda_max = dots
        .as_slice()
        .iter()
        .copied()
        .fold(0.0f32, f32::max)
        .max(1e-12);
    let (mut lo, mut hi) = ((lambda_max as f64) * 1e-5, lambda_max as f64);
    let mut best = (lambda_max, 0.0f64, f64::INFINITY);
    for _ in 0..steps {
        let lam = (lo * hi).sqrt();
        let f = comparison_fista(lam as f32, max_iter)?;
        let got = l0(&f.encode(xc, dictionary)?.codes);
        let err = (got - target).abs();
        if err < best.2 {
            best = (lam as f32, got, err);
        }
        if err <= 0.05 * target {
            break;
        }
        if got > target {
            lo = lam;
        } else {
            hi = lam;
        }
    }
    Ok((best.0, best.1))
}

/// A row of the comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EncoderRow {
    /// [`Method::name`].
    pub encoder: String,
    /// Mean active latents per token.
    pub l0: f64,
    /// Mean squared error per element (raw scale).
    pub mse: f64,
    /// Squared error over squared norm.
    pub normalized_mse: f64,
    /// Explained variance, about the mean.
    pub explained_variance: f64,
    /// Inference FLOPs per token.
    pub flops_per_token: f64,
    /// Downstream loss, when a language model was given.
    pub downstream: Option<DownstreamLoss>,
}

/// Held-out metrics of `method` on the raw activations `x` (codes in batches of `batch_rows`).
pub fn metrics_of(
    method: &Method,
    model: &Model,
    b_dec: &[f32],
    scale: f32,
    x: &Matrix,
    batch_rows: usize,
) -> Result<(HeldOutMetrics, f64)> {
    let (n_latents, dim) = model.dictionary().shape();
    let mut acc = HeldOutAccumulator::new(dim, n_latents);
    let mut flops = 0.0;
    let mut start = 0;
    while start < x.rows() {
        let end = (start + batch_rows).min(x.rows());
        let raw = x.select_rows(start..end);
        let (z, x_hat, f) = method.reconstruct(model, b_dec, scale, &raw)?;
        acc.update(&raw, &x_hat, &z)?;
        flops += f;
        start = end;
    }
    Ok((acc.finish()?, flops / x.rows().max(1) as f64))
}

/// Markdown table of the rows.
pub fn markdown(rows: &[EncoderRow]) -> String {
    let mut s = String::from(
        "| encoder | L0 | normalised MSE | explained variance | CE increase | loss recovered | FLOPs/token |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (ce, rec) = match &r.downstream {
            Some(d) => (
                format!("{:.4}", d.ce_increase),
                format!("{:.4}", d.loss_recovered),
            ),
            None => ("–".into(), "–".into()),
        };
        s.push_str(&format!(
            "| {} | {:.2} | {:.4} | {:.4} | {ce} | {rec} | {:.3e} |\n",
            r.encoder, r.l0, r.normalized_mse, r.explained_variance, r.flops_per_token
        ));
    }
    s
}

/// Settings of [`compare`].
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// The split evaluated on (not validation: FISTA's λ is chosen there).
    pub split: Split,
    /// The train/validation/test partition of the store's documents.
    pub splits: Splits,
    /// Held-out tokens (whole contexts, rounded up).
    pub tokens: u64,
    /// Validation tokens for choosing FISTA's λ and the pursuits' k.
    pub validation_tokens: u64,
    /// FISTA iteration cap (tolerance 1e-4).
    pub fista_iters: usize,
    /// Bisection steps for FISTA's λ.
    pub lambda_steps: usize,
    /// Contexts per language-model forward pass.
    pub lm_batch: usize,
    /// Extra FISTA runs at these multiples of the matched λ (rows
    /// `fista-x{factor}`), to trace FISTA's L0 / reconstruction trade-off.
    pub fista_lambda_factors: Vec<f32>,
}

/// The result of [`compare`]: one row per encoder and how they were set up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Comparison {
    /// Held-out contexts evaluated.
    pub contexts: usize,
    /// Held-out tokens evaluated (rows).
    pub tokens: usize,
    /// The checkpoint's normalisation scale `s`.
    pub scale: f32,
    /// Mean clean next-token loss on those contexts (with a language model).
    pub ce_clean: Option<f64>,
    /// Mean loss with the hook activations zeroed.
    pub ce_zero_ablation: Option<f64>,
    /// Validation tokens used to match the L0.
    pub validation_tokens: usize,
    /// The SAE's mean L0 on the validation tokens (the target).
    pub sae_validation_l0: f64,
    /// FISTA's λ (normalised scale).
    pub fista_lambda: f32,
    /// FISTA's mean L0 on the validation tokens at that λ.
    pub fista_validation_l0: f64,
    /// The atoms per sample of OMP and MP: round(SAE validation L0).
    pub pursuit_k: usize,
    /// One row per encoder: sae, fista, omp-k, mp-k, sae+fista, then
    /// `fista-x{factor}` per extra λ.
    pub encoders: Vec<EncoderRow>,
}

/// Re-encodes held-out tokens of `store` with the SAE of `ckpt` and with
/// per-sample solvers on its decoder (see the crate doc for conventions);
/// the downstream loss of each when `lm` is given.
pub fn compare(
    ckpt: &Checkpoint,
    store: &ActivationStore,
    lm: Option<&ResolvedLm>,
    opts: &CompareOptions,
) -> Result<Comparison> {
    require_sae(ckpt)?;
    let model = &ckpt.model;
    let (n_latents, dim) = model.dictionary().shape();
    if dim != store.d_model() {
        bail!(
            "the store's d_model {} differs from the checkpoint's {dim}",
            store.d_model()
        );
    }
    if opts.split == Split::Validation {
        bail!("split validation: FISTA's λ is chosen on the validation split; evaluate on test or train");
    }
    let scale = sparse_train::stored_run(ckpt).map_or(1.0, |r| r.scale);
    let b_dec = sparse_train::models::decoder_bias(model);
    let first = store.spec().first_position;

    // Validation sample: SAE L0 → FISTA's λ and the pursuit k.
    let vids = split_contexts(
        store,
        &opts.splits,
        Split::Validation,
        contexts_for_tokens(store, opts.validation_tokens),
    )?;
    if vids.is_empty() {
        bail!("the validation split holds no contexts (needed to choose FISTA's λ); use other fractions");
    }
    let (xv, _) = context_data(store, &vids)?;
    let matched = matched_fista(ckpt, &xv, opts.fista_iters, opts.lambda_steps)?;
    let (sae_l0_val, lambda, fista_l0_val) = (matched.sae_l0, matched.lambda, matched.fista_l0);
    let k = (sae_l0_val.round() as usize).clamp(1, n_latents);
    let fista = |lambda: f32| comparison_fista(lambda, opts.fista_iters);
    let mut methods: Vec<(String, Method)> = [
        Method::Sae,
        Method::Fista(fista(lambda)?),
        Method::Omp(Omp::new(k, None, true)?),
        Method::Mp(MatchingPursuit::new(k, true)?),
        Method::SaeFista(fista(lambda)?),
    ]
    .into_iter()
    .map(|m| (m.name(), m))
    .collect();
    for &f in &opts.fista_lambda_factors {
        if !(f.is_finite() && f > 0.0) {
            bail!("FISTA λ factor {f}: must be positive and finite");
        }
        methods.push((format!("fista-x{f}"), Method::Fista(fista(lambda * f)?)));
    }

    let ids = split_contexts(
        store,
        &opts.splits,
        opts.split,
        contexts_for_tokens(store, opts.tokens),
    )?;
    if ids.is_empty() {
        bail!("the {:?} split holds no contexts", opts.split);
    }
    let (x, tokens) = context_data(store, &ids)?;
    let base = match lm {
        Some(lm) => Some(Baselines::new(lm, &tokens, first, opts.lm_batch)?),
        None => None,
    };
    let mut rows = Vec::new();
    for (name, m) in &methods {
        let (metrics, flops) = metrics_of(m, model, &b_dec, scale, &x, 1024)
            .with_context(|| format!("encoder {name}"))?;
        let downstream = match (lm, &base) {
            (Some(lm), Some(base)) => Some(base.downstream(
                lm,
                &tokens,
                first,
                opts.lm_batch,
                &mut |x: &Matrix| -> Result<Matrix> {
                    Ok(m.reconstruct(model, &b_dec, scale, x)?.1)
                },
            )?),
            _ => None,
        };
        rows.push(EncoderRow {
            encoder: name.clone(),
            l0: metrics.l0,
            mse: metrics.mse,
            normalized_mse: metrics.normalized_mse,
            explained_variance: metrics.explained_variance,
            flops_per_token: flops,
            downstream,
        });
    }
    Ok(Comparison {
        contexts: ids.len(),
        tokens: x.rows(),
        scale,
        ce_clean: base.as_ref().map(|b| b.clean),
        ce_zero_ablation: base.as_ref().map(|b| b.zero),
        validation_tokens: xv.rows(),
        sae_validation_l0: sae_l0_val,
        fista_lambda: lambda,
        fista_validation_l0: fista_l0_val,
        pursuit_k: k,
        encoders: rows,
    })
}

/// FISTA on an SAE's decoder with λ matched to the SAE's L0 (see [`matched_fista`]).
pub struct MatchedFista {
    /// The solver (non-negative, tolerance 1e-4).
    pub fista: Fista,
    /// Its λ (normalised scale).
    pub lambda: f32,
    /// The SAE's mean L0 on the validation rows (the target).
    pub sae_l0: f64,
    /// FISTA's mean L0 on the same rows at `lambda`.
    pub fista_l0: f64,
}

/// The FISTA of [`compare`]: λ bisected ([`fista_lambda_for_l0`]) so its
/// mean L0 on the raw validation activations `xv` matches the SAE's there
/// (`max_iter` iterations, `steps` bisection steps).
pub fn matched_fista(
    ckpt: &Checkpoint,
    xv: &Matrix,
    max_iter: usize,
    steps: usize,
) -> Result<MatchedFista> {
    require_sae(ckpt)?;
    let model = &ckpt.model;
    let scale = sparse_train::stored_run(ckpt).map_or(1.0, |r| r.scale);
    let b_dec = sparse_train::models::decoder_bias(model);
    let mut xvn = xv.clone();
    xvn.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
    let sae_l0 = l0(&model.encode(&xvn)?);
    let xvc = centred(&xvn, &b_dec);
    let (lambda, fista_l0) =
        fista_lambda_for_l0(&xvc, model.dictionary(), sae_l0.max(1.0), max_iter, steps)?;
    let fista = comparison_fista(lambda, max_iter)?;
    Ok(MatchedFista {
        fista,
        lambda,
        sae_l0,
        fista_l0,
    })
}
