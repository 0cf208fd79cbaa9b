//! The per-feature record (serialised as one JSON object per feature).

use serde::{Deserialize, Serialize};

/// One context in which a latent was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActivationExample {
    /// Global context index in the activation store.
    pub context: u64,
    /// Token ids of the stored positions (`first_position..context_len`).
    pub token_ids: Vec<u32>,
    /// The same tokens as text, one string per token (decoded one by one).
    pub tokens: Vec<String>,
    /// The latent's activation at each of those positions (same length).
    pub activations: Vec<f32>,
    /// Position (index into `tokens`) of the largest activation.
    pub max_position: usize,
    /// The largest activation in the context.
    pub max_activation: f32,
}

/// Counts of a latent's non-zero activations in equal-width bins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    /// Bin edges (`counts.len() + 1` ascending values).
    pub edges: Vec<f32>,
    /// Non-zero activations per bin.
    pub counts: Vec<u64>,
}

/// A token and the decoder direction's logit effect on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogitEntry {
    /// Token id.
    pub token_id: u32,
    /// Token text.
    pub token: String,
    /// `d_i · W_U[:, token]` (decoder direction through the unembedding).
    pub value: f32,
}

/// Everything measured about one latent of one encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureRecord {
    /// Latent index.
    pub index: usize,
    /// The encoder that produced the codes (`sae`, `fista`, …).
    pub encoder: String,
    /// Tokens scanned.
    pub tokens_seen: u64,
    /// Fraction of scanned tokens where the latent is non-zero.
    pub density: f64,
    /// Largest activation seen.
    pub max_activation: f32,
    /// Contexts with the largest activations, largest first.
    pub top_examples: Vec<ActivationExample>,
    /// Samples from activation quantiles: `quantile_examples[q]` holds
    /// contexts whose maximum lies in the q-th of equal-count bins of the
    /// non-zero maxima, lowest bin first.
    pub quantile_examples: Vec<Vec<ActivationExample>>,
    /// Distribution of the non-zero activations.
    pub histogram: Histogram,
    /// Tokens the decoder direction promotes most, largest first.
    pub top_logits: Vec<LogitEntry>,
    /// Tokens it suppresses most, most negative first.
    pub bottom_logits: Vec<LogitEntry>,
}
