//! Evaluation of trained encoders on a language model.
//!
//! Three things, used by `sparse-infer evaluate` / `compare-encoders` and by
//! the interpretability tools:
//!
//! - [`heldout`]: the held-out contexts of an activation store (a context's
//!   split is its document's) and their activations and tokens;
//! - [`downstream`]: the downstream loss, a reconstruction spliced into the
//!   language model at the harvested hook;
//! - [`compare`]: the SAE's own encoder against per-sample inference (FISTA,
//!   OMP, MP, SAE + FISTA refinement) on its decoder, at matched L0;
//! - [`report`]: every model of a training run measured on the same tokens,
//!   with a table and Pareto figures.
//!
//! Conventions, shared by all:
//!
//! - the language model is the store's: an explicit file, else
//!   `sparse_lm::assets::default_model_path()` when its sha256 equals the store
//!   manifest's `model.sha256` (an explicit file with another sha256 is an error);
//! - held-out contexts are those of the chosen split, a context's split being
//!   its document's ([`sparse_store::Splits::of_document`]), in store order;
//! - the checkpoint's normalisation scale `s` is applied: the model codes
//!   `s·x`, its reconstruction is divided by `s`;
//! - splicing replaces the hook activation at positions
//!   `first_position..context_len` only; the positions before
//!   `first_position` (the attention sink, never stored nor trained on) keep
//!   their clean values. Zero-ablation zeros the same positions. Cross-entropies
//!   are means of the next-token NLL over the predictions made at positions
//!   `first_position..context_len − 1` (the earlier predictions are the same
//!   in all three runs);
//! - per-sample solvers code `s·x − b_dec` with the decoder `D` and decode
//!   `Z·D + b_dec` (as the SAE decodes its own codes).

pub mod compare;
pub mod downstream;
pub mod heldout;
pub mod report;

pub use compare::{compare, CompareOptions, Comparison, EncoderRow, Method};
pub use downstream::{resolve_lm, Baselines, ResolvedLm};
pub use heldout::{context_data, resolve_splits, split_contexts};
