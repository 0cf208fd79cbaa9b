//! Automated interpretability of encoder latents (issue 12, part 2).
//!
//! Input: [`sparse_features::record::FeatureRecord`]s (top and quantile
//! activating contexts per latent). Per feature, an **explainer** reads some
//! examples with the activating tokens marked `<<tok>>` and writes a short
//! explanation; two **scorers** then test it on *held-out* examples only:
//!
//! - **detection**: does the feature fire anywhere in this (unmarked) text?
//!   Held-out positives against as many negatives drawn from several other
//!   features' contexts (balanced);
//! - **fuzzing**: are the marked tokens the ones the explanation describes?
//!   Held-out positives with their true marks against the same kind of
//!   examples with the marks moved to non-activating tokens.
//!
//! Judges: any OpenAI-compatible chat endpoint ([`client`]: key from an
//! environment variable, on-disk cache, retries with backoff) or a local GGUF
//! chat model through `sparse_lm` ([`local`]; SmolLM2-135M-Instruct is the
//! offline default: weak, but it runs anywhere). [`pipeline`] runs features on
//! a fixed pool of threads, appends results to a JSONL file (a rerun resumes)
//! and summarises accuracy, balanced accuracy, F1 and AUROC per encoder with
//! seeded bootstrap 95% intervals over features ([`score`]).

pub mod client;
pub mod examples;
pub mod judge;
pub mod local;
pub mod pipeline;
pub mod prompts;
pub mod score;
