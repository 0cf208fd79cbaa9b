//! The unembedding `W_U` of a GGUF language model, read without loading the
//! rest of the model: `output.weight` when the file has one, else the tied
//! token embedding `token_embd.weight` (SmolLM2). Used to read a dictionary
//! atom's direct effect on the logits ("top and bottom logits").

use crate::error::Result;
use crate::gguf;
use std::path::Path;

/// The unembedding as a row-major `vocab × d_model` `f32` matrix: row `t`
/// is token `t`'s output direction, so the logit effect of a residual
/// direction `d` on token `t` is `d · row(t)`.
#[derive(Clone, Debug)]
pub struct Unembedding {
    /// Vocabulary size (rows).
    pub vocab_size: usize,
    /// Residual width (columns).
    pub d_model: usize,
    /// Whether the matrix is the tied token embedding (no `output.weight`).
    pub tied: bool,
    /// `vocab_size · d_model` values, row-major.
    pub weights: Vec<f32>,
}

impl Unembedding {
    /// Reads `output.weight` (else `token_embd.weight`) of the GGUF file at
    /// `path`, dequantised to f32.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let mut f = gguf::open(path.as_ref())?;
        let tied = !f.has_tensor("output.weight");
        let name = if tied {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let dims: Vec<usize> = match f.content.tensor_infos.get(name) {
            Some(info) => info.shape.dims().to_vec(),
            None => vec![0, 0],
        };
        let (vocab_size, d_model) = (dims[0], dims.get(1).copied().unwrap_or(0));
        let weights = f.vec_f32(name, &[vocab_size, d_model])?;
        Ok(Unembedding {
            vocab_size,
            d_model,
            tied,
            weights,
        })
    }

    /// `direction · row(t)` for every token `t` (`direction.len()` must be `d_model`).
    pub fn logits_of(&self, direction: &[f32]) -> Vec<f32> {
        assert_eq!(direction.len(), self.d_model, "direction width");
        self.weights
            .chunks_exact(self.d_model.max(1))
            .map(|row| row.iter().zip(direction).map(|(a, b)| a * b).sum())
            .collect()
    }
}
