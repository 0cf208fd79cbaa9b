//! The one error type of the language-model crate. Every failure that concerns a
//! file names the file, and says what was expected and what was found.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = LmError> = std::result::Result<T, E>;

/// Everything that can go wrong while loading or running a language model.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// A file could not be opened or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the GGUF magic (or is empty).
    #[error(
        "{path}: not a GGUF file: expected the magic bytes \"GGUF\" at the start, found {found}"
    )]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// What the file starts with, written for people (e.g. `"PK\x03\x04"`, `an empty file`).
        found: String,
    },
    /// The file is a GGUF file that ends before the data it declares.
    #[error("{path}: truncated GGUF file ({len} bytes): {reason}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// The file's length in bytes.
        len: u64,
        /// What was expected past the end.
        reason: String,
    },
    /// The file is a GGUF file but its header or metadata is malformed.
    #[error("{path}: malformed GGUF file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A metadata key the model needs is absent or has the wrong type.
    #[error("{path}: GGUF metadata key {key}: expected {expected}, found {found}")]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key (e.g. `llama.block_count`).
        key: String,
        /// What was expected (e.g. `an unsigned integer`).
        expected: String,
        /// What was found (e.g. `nothing`, `a string`).
        found: String,
    },
    /// A tensor the model needs is not in the file.
    #[error("{path}: missing tensor {name} (expected shape {expected})")]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name (e.g. `blk.3.attn_q.weight`).
        name: String,
        /// The shape the loader expected, written like `(576, 576)`.
        expected: String,
    },
    /// A tensor has the wrong shape for the architecture the metadata describes.
    #[error("{path}: tensor {name}: expected shape {expected}, found {found}")]
    TensorShape {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        name: String,
        /// The expected shape.
        expected: String,
        /// The shape in the file.
        found: String,
    },
    /// The file describes something this crate does not implement.
    #[error("{path}: unsupported {what}: expected {expected}, found {found}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is unsupported (e.g. `architecture`, `tokenizer model`).
        what: String,
        /// What is supported.
        expected: String,
        /// What the file has.
        found: String,
    },
    /// A hook name that does not parse, or names a layer the model does not have.
    #[error("invalid hook point {hook:?}: {reason}")]
    InvalidHook {
        /// The hook as given.
        hook: String,
        /// Why it is invalid, with the valid forms.
        reason: String,
    },
    /// An argument is inconsistent (token count vs batch × seq, a token id outside the vocabulary, ...).
    #[error("invalid input {what}: {reason}")]
    InvalidInput {
        /// Which argument.
        what: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The tokenizer could not be built, or failed to encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A splice callback (see `LanguageModel::token_nll_with_splice`) failed.
    #[error("splice callback failed: {0}")]
    Splice(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A tensor operation failed inside candle (a bug here, or out of memory).
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A corpus file could not be read, or the activation store refused a
    /// write or could not be read (sparse-core's errors, naming the file).
    #[error(transparent)]
    Data(#[from] sparse_core::Error),
}

impl LmError {
    /// Wraps any error returned by a splice callback, e.g.
    /// `sae.reconstruct(x).map_err(LmError::splice)`.
    pub fn splice(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        LmError::Splice(e.into())
    }

    /// Shorthand for [`LmError::InvalidInput`].
    pub fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Self {
        LmError::InvalidInput {
            what: what.into(),
            reason: reason.into(),
        }
    }
}
