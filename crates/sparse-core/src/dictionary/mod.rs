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
//!   AuxK dead-latent loss, sparse decoding and a learned unit-norm dictionary.
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
