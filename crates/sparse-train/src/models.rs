//! One model of a run ([`ModelSpec`], a `[[model]]` table of the
//! configuration) and what the trainer does to each kind: build it, set its
//! learning rate and L1 coefficient, initialise its decoder bias, read which
//! latents fired.
//!
//! **L1 scale.** Our ReLU SAE's loss is `mean_{n·M}((x − x̂)²) + λ·mean_{n·N}|z|`
//! (per element); SAELens' is `mean_n Σ_M (x − x̂)² + c·mean_n Σ_N |z|·‖d_j‖`.
//! Our dictionaries keep unit-norm atoms exactly (`‖d_j‖ = 1`), so SAELens'
//! decoder-norm-weighted L1 is the plain L1 here, and the two losses are
//! proportional (factor `M`) when `λ = c·N/M`; Adam is invariant to that
//! factor (up to `eps`). `l1_coefficient` is therefore taken on SAELens'
//! scale and converted; `lambda` is the crate's own scale.

use serde::{Deserialize, Serialize};
use sparse_core::checkpoint::Model;
use sparse_core::dictionary::autoencoder::{Autoencoder, AutoencoderConfig};
use sparse_core::dictionary::jumprelu::{JumpReluConfig, JumpReluSae};
use sparse_core::dictionary::sparse_coding::{SparseCoding, SparseCodingConfig};
use sparse_core::dictionary::topk::{TopKConfig, TopKSae};
use sparse_core::{Error, Matrix, Result};

/// The kinds of model the streaming trainer drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// ReLU SAE with L1 penalty (SAELens `standard`).
    Sae,
    /// Two-layer MLP encoder, L1 penalty.
    Mlp,
    /// TopK SAE with AuxK.
    Topk,
    /// BatchTopK SAE with AuxK.
    Batchtopk,
    /// JumpReLU SAE (constant learning rate, zero `b_dec` start: see [`ModelSpec`]).
    Jumprelu,
    /// FISTA codes + MOD dictionary update per batch (no learning rate).
    SparseCoding,
}

impl Method {
    /// The configuration name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Sae => "sae",
            Method::Mlp => "mlp",
            Method::Topk => "topk",
            Method::Batchtopk => "batchtopk",
            Method::Jumprelu => "jumprelu",
            Method::SparseCoding => "sparse-coding",
        }
    }
}

/// How `b_dec` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BDecInit {
    /// The geometric median of the (normalised) sample.
    GeometricMedian,
    /// Zeros.
    Zeros,
}

/// One model of a run. Options use SAELens' names where SAELens has the
/// option (`d_sae` and `architecture` are accepted for `n_latents` and
/// `method`); an option that does not apply to the method is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Name: the checkpoint folder `out/<name>` and the `model` field of the log.
    pub name: String,
    /// Kind of model.
    #[serde(alias = "architecture")]
    pub method: Method,
    /// Number of latents `N`.
    #[serde(alias = "d_sae")]
    pub n_latents: usize,
    /// Seed of the initialisation.
    #[serde(default)]
    pub seed: u64,
    /// Adam learning rate (default 3e-4, SAELens'; not sparse-coding).
    pub lr: Option<f32>,
    /// Linear learning-rate warm-up steps (SAELens `lr_warm_up_steps`).
    #[serde(default)]
    pub lr_warm_up_steps: u64,
    /// Linear decay to zero over the last steps (SAELens `lr_decay_steps`).
    #[serde(default)]
    pub lr_decay_steps: u64,
    /// L1 coefficient on SAELens' scale (sae, mlp; default 5; see the module docs).
    pub l1_coefficient: Option<f32>,
    /// L1 weight on the crate's scale (sae, mlp, sparse-coding); excludes `l1_coefficient`.
    pub lambda: Option<f32>,
    /// Linear L1 warm-up steps (sae, mlp; SAELens `l1_warm_up_steps`).
    #[serde(default)]
    pub l1_warm_up_steps: u64,
    /// Active latents (topk, batchtopk).
    pub k: Option<usize>,
    /// AuxK latents (topk, batchtopk; default `d_model / 2`).
    pub aux_k: Option<usize>,
    /// AuxK weight (topk, batchtopk; SAELens `aux_loss_coefficient`, default 1).
    #[serde(alias = "aux_loss_coefficient")]
    pub aux_k_coefficient: Option<f32>,
    /// Hidden width (mlp).
    pub hidden: Option<usize>,
    /// L0 penalty weight (jumprelu).
    pub l0_coefficient: Option<f32>,
    /// Initial threshold (jumprelu; SAELens `jumprelu_init_threshold`).
    #[serde(alias = "jumprelu_init_threshold")]
    pub threshold: Option<f32>,
    /// Straight-through bandwidth (jumprelu; SAELens `jumprelu_bandwidth`).
    #[serde(alias = "jumprelu_bandwidth")]
    pub bandwidth: Option<f32>,
    /// FISTA iterations per batch (sparse-coding).
    pub fista_iters: Option<usize>,
    /// `b_dec` start (SAELens `b_dec_init_method`): `geometric_median`
    /// (default for sae, mlp, topk, batchtopk) or `zeros` (the only one for
    /// jumprelu; sparse-coding has no `b_dec`).
    pub b_dec_init_method: Option<BDecInit>,
}

/// The options each method takes (besides name, method, n_latents, seed).
const APPLIES_TO: &[(&str, &[Method])] = {
    use Method::*;
    &[
        ("lr", &[Sae, Mlp, Topk, Batchtopk, Jumprelu]),
        ("lr_warm_up_steps", &[Sae, Mlp, Topk, Batchtopk]),
        ("lr_decay_steps", &[Sae, Mlp, Topk, Batchtopk]),
        ("l1_coefficient", &[Sae, Mlp]),
        ("lambda", &[Sae, Mlp, SparseCoding]),
        ("l1_warm_up_steps", &[Sae, Mlp]),
        ("k", &[Topk, Batchtopk]),
        ("aux_k", &[Topk, Batchtopk]),
        ("aux_k_coefficient", &[Topk, Batchtopk]),
        ("hidden", &[Mlp]),
        ("l0_coefficient", &[Jumprelu]),
        ("threshold", &[Jumprelu]),
        ("bandwidth", &[Jumprelu]),
        ("fista_iters", &[SparseCoding]),
        ("b_dec_init_method", &[Sae, Mlp, Topk, Batchtopk, Jumprelu]),
    ]
};

/// SAELens' default learning rate.
pub const DEFAULT_LR: f32 = 3e-4;
/// SAELens' default L1 coefficient (`l1_coefficient`).
pub const DEFAULT_L1_COEFFICIENT: f32 = 5.0;

impl ModelSpec {
    /// Fails on an option that does not apply, a missing required one, or
    /// inconsistent values; messages name the model.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, v: String, why: &str| {
            Err(Error::invalid(
                &format!("model {}: {field}", self.name),
                v,
                why,
            ))
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            return bad(
                "name",
                format!("{:?}", self.name),
                "must be non-empty, of letters, digits, '-', '_' or '.', not starting with '.'",
            );
        }
        let v = serde_json::to_value(self).expect("spec serialises");
        for (field, methods) in APPLIES_TO {
            let given = v
                .get(field)
                .is_some_and(|x| !x.is_null() && x != &serde_json::json!(0));
            if given && !methods.contains(&self.method) {
                let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
                return bad(
                    field,
                    v[field].to_string(),
                    &format!(
                        "does not apply to method {} (only to {})",
                        self.method.name(),
                        names.join(", ")
                    ),
                );
            }
        }
        if self.l1_coefficient.is_some() && self.lambda.is_some() {
            return bad(
                "lambda",
                "set".into(),
                "give either l1_coefficient (SAELens scale) or lambda, not both",
            );
        }
        if matches!(self.method, Method::Topk | Method::Batchtopk) && self.k.is_none() {
            return bad("k", "missing".into(), "method topk/batchtopk needs `k`");
        }
        if self.method == Method::Mlp && self.hidden.is_none() {
            return bad("hidden", "missing".into(), "method mlp needs `hidden`");
        }
        if self.method == Method::Jumprelu && self.b_dec_init() == BDecInit::GeometricMedian {
            return bad(
                "b_dec_init_method",
                "geometric_median".into(),
                "is not supported for jumprelu yet (use zeros)",
            );
        }
        Ok(())
    }

    /// The `b_dec` start this model uses.
    pub fn b_dec_init(&self) -> BDecInit {
        match self.method {
            Method::Jumprelu | Method::SparseCoding => {
                self.b_dec_init_method.unwrap_or(BDecInit::Zeros)
            }
            _ => self.b_dec_init_method.unwrap_or(BDecInit::GeometricMedian),
        }
    }

    /// The base learning rate.
    pub fn base_lr(&self) -> f32 {
        self.lr.unwrap_or(DEFAULT_LR)
    }

    /// λ on the crate's scale for dimension `dim` (sae, mlp).
    pub fn base_lambda(&self, dim: usize) -> f32 {
        match (self.lambda, self.l1_coefficient) {
            (Some(l), _) => l,
            (None, c) => c.unwrap_or(DEFAULT_L1_COEFFICIENT) * self.n_latents as f32 / dim as f32,
        }
    }

    /// A freshly initialised model for `dim`-dimensional activations,
    /// configured for LM activations: ReLU SAE and MLP with encoder and
    /// decoder biases and tangent-projected decoder gradients.
    pub fn build(&self, dim: usize, dead_window_steps: usize) -> Result<Model> {
        self.validate()?;
        let (n, seed) = (self.n_latents, self.seed);
        let lr = self.base_lr();
        Ok(match self.method {
            Method::Sae | Method::Mlp => {
                let mut c = match self.method {
                    Method::Mlp => {
                        AutoencoderConfig::paper_mlp(n, dim, self.hidden.unwrap_or(0), seed)
                    }
                    _ => AutoencoderConfig::paper_sae(n, dim, seed),
                };
                c.lambda = self.base_lambda(dim);
                c.adam.lr = lr;
                c.encoder_bias = true;
                c.decoder_bias = true;
                c.project_decoder_gradient = true;
                Model::Autoencoder(Box::new(Autoencoder::new(c)?))
            }
            Method::Topk | Method::Batchtopk => {
                let k = self.k.unwrap_or(0);
                let mut c = if self.method == Method::Topk {
                    TopKConfig::topk(n, dim, k, seed)
                } else {
                    TopKConfig::batch_topk(n, dim, k, seed)
                };
                c.adam.lr = lr;
                c.aux_k = self.aux_k.unwrap_or(c.aux_k);
                c.aux_k_coefficient = self.aux_k_coefficient.unwrap_or(c.aux_k_coefficient);
                c.dead_feature_window = dead_window_steps;
                Model::TopK(Box::new(TopKSae::new(c)?))
            }
            Method::Jumprelu => {
                let mut c = JumpReluConfig::new(n, dim, seed);
                c.adam.lr = lr;
                c.threshold = self.threshold.unwrap_or(c.threshold);
                c.bandwidth = self.bandwidth.unwrap_or(c.bandwidth);
                c.l0_coefficient = self.l0_coefficient.unwrap_or(c.l0_coefficient);
                Model::JumpRelu(Box::new(JumpReluSae::new(c)?))
            }
            Method::SparseCoding => {
                let mut c = SparseCodingConfig::new(n, dim, seed);
                c.lambda = self.lambda.unwrap_or(c.lambda);
                c.fista_iters = self.fista_iters.unwrap_or(c.fista_iters);
                Model::SparseCoding(Box::new(SparseCoding::new(c)?))
            }
        })
    }
}

/// Sets the learning rate and the L1 weight of step `t` (models without a
/// schedule are left alone).
pub(crate) fn apply_schedule(model: &mut Model, spec: &ModelSpec, dim: usize, total: u64, t: u64) {
    let lr = crate::schedule::lr_at(
        spec.base_lr(),
        spec.lr_warm_up_steps,
        spec.lr_decay_steps,
        total,
        t,
    );
    match model {
        Model::Autoencoder(m) => {
            m.set_lr(lr);
            m.set_lambda(crate::schedule::warm_up_at(
                spec.base_lambda(dim),
                spec.l1_warm_up_steps,
                t,
            ));
        }
        Model::TopK(m) => m.set_lr(lr),
        _ => {}
    }
}

/// The learning rate a model uses at step `t` (`None` without one).
pub(crate) fn lr_of(spec: &ModelSpec, total: u64, t: u64) -> Option<f32> {
    match spec.method {
        Method::SparseCoding => None,
        Method::Jumprelu => Some(spec.base_lr()),
        _ => Some(crate::schedule::lr_at(
            spec.base_lr(),
            spec.lr_warm_up_steps,
            spec.lr_decay_steps,
            total,
            t,
        )),
    }
}

/// Sets `b_dec` where the model has a settable one.
pub(crate) fn set_decoder_bias(model: &mut Model, b_dec: &[f32]) -> Result<()> {
    match model {
        Model::Autoencoder(m) => m.set_decoder_bias(b_dec),
        Model::TopK(m) => m.set_decoder_bias(b_dec),
        _ => Err(Error::invalid(
            "b_dec_init_method",
            "geometric_median",
            "this model has no settable decoder bias",
        )),
    }
}

/// `b_dec` of any checkpointable model (zeros where it has none).
pub fn decoder_bias(model: &Model) -> Vec<f32> {
    let dim = model.dictionary().cols();
    match model {
        Model::Autoencoder(m) => m.decoder_bias().to_vec(),
        Model::TopK(m) => m.decoder_bias().to_vec(),
        Model::JumpRelu(m) => m.decoder_bias().to_vec(),
        Model::Matryoshka(m) => m.decoder_bias().to_vec(),
        Model::MpSae(m) => m.decoder_bias().to_vec(),
        Model::SparseCoding(_) | Model::Lista(_) => vec![0.0; dim],
    }
}

/// `X̂ = Z·D + b_dec` of any checkpointable model.
pub fn decode(model: &Model, z: &Matrix) -> Result<Matrix> {
    sparse_core::dictionary::decode(z, model.dictionary(), &decoder_bias(model))
}

/// Marks in `fired` the latents that fired at the last training step of
/// `model` on `x` (the step's own codes where the model keeps them, else
/// the codes of `x` under the updated model).
pub(crate) fn mark_fired(model: &Model, x: &Matrix, fired: &mut [bool]) -> Result<()> {
    let mark_dense = |z: &Matrix, fired: &mut [bool]| {
        for row in z.rows_iter() {
            for (f, &v) in fired.iter_mut().zip(row) {
                *f |= v != 0.0;
            }
        }
    };
    match model {
        Model::Autoencoder(m) if m.last_codes().is_some() => {
            mark_dense(m.last_codes().expect("checked"), fired)
        }
        Model::TopK(m) => m
            .last_selected_latents()
            .iter()
            .for_each(|&j| fired[j] = true),
        Model::SparseCoding(m) if m.codes().is_some() => {
            mark_dense(m.codes().expect("checked"), fired)
        }
        other => mark_dense(&other.encode(x)?, fired),
    }
    Ok(())
}
