//! Dictionary learning: learning `D (n_latents × dim)` itself, with atoms
//! (rows) kept at unit norm exactly, so that `X ≈ Z·D` is identifiable up to
//! permutation and the L1 penalty cannot be dodged by rescaling.
//!
//! - [`unit_norm`]: the constraint: atom renormalisation, tangent-space
//!   gradient projection, and [`UnitNormAdam`] (project, step, renormalise);
//! - [`autoencoder`]: SAE and MLP-encoder autoencoders whose decoder is
//!   learned jointly by Adam (the paper's unknown-D amortised models);
//! - [`sparse_coding`]: alternating minimisation, FISTA codes then a MOD or
//!   projected-Adam dictionary update, with dead-atom resampling;
//! - [`jumprelu`]: the JumpReLU SAE (learned thresholds, straight-through
//!   rectangle-kernel estimator, L0 penalty);
//! - [`topk`]: TopK and BatchTopK SAEs (SAELens `topk`, `batchtopk`) with the
//!   AuxK dead-latent loss, sparse decoding and a learned unit-norm dictionary;
//! - [`matryoshka`]: Matryoshka BatchTopK (nested prefixes of latents);
//! - [`mp_sae`]: the matching-pursuit SAE (MP encoder on the learned dictionary);
//! - [`joint_adam`]: the paper's sparse coding, joint Adam on exp-codes and D.
//!
//! Every model whose encoder is trained together with its dictionary
//! implements [`DictionaryLearner`], the common interface studies drive.
//!
//! Evaluate a learned dictionary with [`crate::metrics::dictionary_mcc`] and
//! [`crate::metrics::dictionary_cosine`] against the true one.

pub mod autoencoder;
pub mod joint_adam;
pub mod jumprelu;
pub mod matryoshka;
pub mod mp_sae;
pub mod sparse_coding;
pub mod topk;
pub mod unit_norm;

pub use autoencoder::{Autoencoder, AutoencoderConfig, AutoencoderGradients, EncoderKind};
pub use jumprelu::{JumpReluConfig, JumpReluGradients, JumpReluSae};
pub use sparse_coding::{DictionaryUpdate, SparseCoding, SparseCodingConfig};
pub use topk::{TopKConfig, TopKGradients, TopKSae, TopKSelection};
pub use unit_norm::{
    max_atom_norm_error, normalize_atoms, project_gradient_to_tangent, UnitNormAdam,
};

use crate::error::Result;
use crate::matrix::Matrix;

/// `X̂ = Z·D + b_dec` for codes `z (n × N)`, dictionary `d (N × M)` and decoder bias `b_dec (M)`;
/// fails on codes of the wrong width or with non-finite values.
pub fn decode(z: &Matrix, dictionary: &Matrix, b_dec: &[f32]) -> Result<Matrix> {
    z.expect_shape("codes", None, Some(dictionary.rows()))?;
    z.check_finite("codes")?;
    let mut out = Matrix::from_fn(z.rows(), dictionary.cols(), |_, j| b_dec[j]);
    crate::linalg::gemm_into(
        out.view_mut(),
        true,
        z.view(),
        crate::linalg::Op::N,
        dictionary.view(),
        crate::linalg::Op::N,
        1.0,
    );
    Ok(out)
}

/// A model that learns its own dictionary together with an encoder: the
/// common interface of the SAE zoo (studies and tools drive them through it).
pub trait DictionaryLearner {
    /// One optimisation step on the batch `x (n × dim)`; returns the loss before the step.
    fn train_step(&mut self, x: &Matrix) -> Result<f32>;
    /// Codes `Z (n × n_latents)` of `x (n × dim)` under the current model.
    fn encode(&self, x: &Matrix) -> Result<Matrix>;
    /// The current dictionary `D (n_latents × dim)`, unit-norm rows.
    fn dictionary(&self) -> &Matrix;
    /// FLOPs of [`DictionaryLearner::encode`] on `n` samples.
    fn encode_flops(&self, n: usize) -> f64;
    /// FLOPs of [`DictionaryLearner::train_step`] on `n` samples.
    fn train_step_flops(&self, n: usize) -> f64;
}

/// Forwards [`DictionaryLearner`] to the models' inherent methods of the same names.
macro_rules! dictionary_learner {
    ($($t:ty),*) => {$(
        impl DictionaryLearner for $t {
            fn train_step(&mut self, x: &Matrix) -> Result<f32> {
                <$t>::train_step(self, x)
            }
            fn encode(&self, x: &Matrix) -> Result<Matrix> {
                <$t>::encode(self, x)
            }
            fn dictionary(&self) -> &Matrix {
                <$t>::dictionary(self)
            }
            fn encode_flops(&self, n: usize) -> f64 {
                <$t>::encode_flops(self, n)
            }
            fn train_step_flops(&self, n: usize) -> f64 {
                <$t>::train_step_flops(self, n)
            }
        }
    )*};
}
dictionary_learner!(
    Autoencoder,
    TopKSae,
    JumpReluSae,
    matryoshka::MatryoshkaSae,
    mp_sae::MpSae
);
