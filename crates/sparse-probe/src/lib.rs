//! Judge-free interpretability measures of an encoder's codes, so that
//! comparisons between encoders (SAE, TopK SAE, MLP encoder, FISTA codes on a
//! dictionary) never depend on one language-model judge.
//!
//! - [`probe`]: k-sparse probing of coarse part-of-speech tags on the Brown
//!   corpus, following SAEBench (latents chosen on train by mean difference,
//!   logistic regression on the top k ∈ {1, 2, 5}, balanced held-out accuracy).
//! - [`pos`]: Brown tags → coarse classes, tagged words → token labels.
//! - [`logreg`]: the L2 logistic regression (scikit-learn's objective, solved
//!   by Newton's method; tested against scikit-learn).
//! - [`mono`]: token-level monosemanticity of each latent's top activations.
//! - [`store`]: labelled codes of a Brown activation store, per encoder.

pub mod logreg;
pub mod mono;
pub mod pos;
pub mod probe;
pub mod store;
