//! # sparse-train
//!
//! Training dictionary learners (SAEs and sparse coding) on activations
//! streamed from a [`sparse_store`] activation store, and their held-out
//! evaluation.
//!
//! - [`trainer`]: [`train`] drives one or several models ([`ModelSpec`]) from
//!   one pass of [`sparse_store::ShuffledBatches`] over the train split
//!   (every model gets the same batch; the reading is shared), with
//!   activation normalisation, geometric-median `b_dec`, SAELens-style
//!   learning-rate warm-up/decay and L1 warm-up, dead-latent tracking,
//!   periodic atomic checkpoints (`sparse_core::checkpoint`, one folder per
//!   model), exact resume (a resumed run ends bit-identical to an
//!   uninterrupted one) and a JSONL log. No printing: a progress callback.
//! - [`normalize`]: the normalisation scale and the geometric median.
//! - [`schedule`]: learning-rate and L1 schedules.
//! - [`models`]: per-model options and what the trainer does to each kind.
//! - [`eval`]: held-out metrics of a checkpoint on a split, streamed.
//!
//! ## Models
//!
//! | method | loss | schedule | `b_dec` start | dead latents |
//! |---|---|---|---|---|
//! | `sae` (ReLU, L1), `mlp` | MSE + λ·L1 | lr warm-up/decay, L1 warm-up | geometric median | tracked, reported (no resampling: SAELens v6 has none either) |
//! | `topk`, `batchtopk` | MSE + AuxK | lr warm-up/decay | geometric median | tracked; AuxK on the dead ones (window in steps = tokens / batch) |
//! | `jumprelu` | MSE + L0 | constant lr | zeros | tracked (one extra encode per step) |
//! | `sparse-coding` | lasso, FISTA + MOD | none | none | tracked; the learner resamples dead atoms |
//!
//! Our dictionaries keep unit-norm atoms exactly, so SAELens' decoder-norm-
//! weighted L1 (`standard` SAE) equals the plain L1 here; see [`models`] for
//! the `l1_coefficient` scale. Our ReLU SAE feeds `x` (not `x − b_dec`) to
//! the encoder; TopK/BatchTopK/JumpReLU subtract `b_dec` as SAELens does.
//!
//! ## Output
//!
//! `out/<name>/` per model: `model.safetensors` + `state.json`
//! (`sparse_core::checkpoint`, format 2); the trainer's record
//! ([`StoredRun`]: normalisation scale, splits, dead-latent counters, run
//! identity) is the checkpoint's `config`. `out/metrics.jsonl`: one
//! [`LogRecord`] per model every `log_every` steps:
//!
//! ```json
//! {"model":"topk32","step":100,"tokens":409600,"loss":0.21,"mse":0.19,"explained_variance":0.81,"l0":32.0,"dead_fraction":0.02,"lr":0.0003,"l1_coefficient":null}
//! ```
//!
//! `mse`, `explained_variance` and `l0` are measured on the step's batch
//! (normalised activations) after the step; `dead_fraction` counts latents
//! that did not fire in the last `dead_feature_window` **tokens** (SAELens
//! counts forward passes; at a fixed batch size they are the same window).

#![warn(missing_docs)]

pub mod eval;
pub mod models;
pub mod normalize;
pub mod schedule;
pub mod testing;
pub mod trainer;

pub use eval::{evaluate, stored_run, EvalOptions};
pub use models::{BDecInit, Method, ModelSpec};
pub use trainer::{
    train, train_until, LogRecord, ModelSummary, Normalization, Progress, RunConfig, RunSummary,
    StoredRun, METRICS_FILE,
};
