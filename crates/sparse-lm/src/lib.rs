//! # sparse-lm
//!
//! Language models for sparse-infer: the source of real activations for
//! sparse autoencoders. It loads a Llama-architecture GGUF file (SmolLM2-135M
//! by default, see [`assets`]) with its weights dequantised to f32, rebuilds
//! the tokenizer stored in the file's metadata, reads the residual stream at
//! TransformerLens-named [`HookPoint`]s, and measures next-token loss, also
//! with an activation spliced (an SAE's reconstruction, zero-ablation) for
//! "downstream loss".
//!
//! Everything runs on the CPU in f32, pure Rust (candle reads the GGUF file,
//! faer does the products). No printing:
//! callers decide what to show.
//!
//! Conventions: tokens are `batch × seq` row-major `u32`; activations are
//! row-major `(batch·seq) × d_model` `f32` buffers.
//!
//! Note on position 0: SmolLM2's residual stream at the first position is an
//! "attention sink" with a norm ~100× the others (about 24,000 against
//! 150–200 at block 15); harvesting for SAE training should drop it.

#![warn(missing_docs)]

pub mod assets;
pub mod contexts;
pub mod corpus;
pub mod error;
mod gguf;
pub mod harvest;
pub mod hooks;
pub mod model;
mod ops;
pub mod testing;
pub mod tokenizer;
pub mod unembed;

pub use error::{LmError, Result};
pub use hooks::{HookKind, HookPoint};
pub use model::{LanguageModel, ModelInfo};
pub use tokenizer::LmTokenizer;
pub use unembed::Unembedding;
