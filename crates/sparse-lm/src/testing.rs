//! Test support: writes tiny random-weight Llama GGUF files, so that tests of
//! this crate (and of crates that use it) need neither the 98 MB model nor a
//! network. The files follow the same conventions as llama.cpp's (tensor
//! names, metadata keys, tied embeddings, a byte-level BPE in the metadata), so
//! the loader, the tokenizer and the Python reference all read them as they
//! read the real model.

use crate::error::{LmError, Result};
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use std::path::Path;

/// How the block weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDType {
    /// Plain f32 everywhere.
    F32,
    /// Block matrices in Q4_1 and the embedding (and untied output) in Q8_0,
    /// as in the SmolLM2 file; norms stay f32. `d_model` and `d_ff` must be
    /// multiples of 32 (the quantisation block).
    Q4_1,
}

/// Shape and seed of a tiny Llama model.
#[derive(Clone, Debug)]
pub struct TinyLlamaConfig {
    /// Number of blocks.
    pub n_layers: usize,
    /// Residual width; a multiple of `n_heads`.
    pub d_model: usize,
    /// Query heads; `d_model / n_heads` must be even.
    pub n_heads: usize,
    /// Key/value heads; divides `n_heads`.
    pub n_kv_heads: usize,
    /// MLP hidden width.
    pub d_ff: usize,
    /// Context length written to the metadata.
    pub context_length: usize,
    /// Rotary base (`llama.rope.freq_base`).
    pub rope_freq_base: f32,
    /// Seed of the weights.
    pub seed: u64,
    /// Storage type of the weights.
    pub weight_dtype: WeightDType,
    /// Omit `output.weight`, so the output projection is the embedding (as in SmolLM2).
    pub tie_embeddings: bool,
}

impl Default for TinyLlamaConfig {
    fn default() -> Self {
        TinyLlamaConfig {
            n_layers: 3,
            d_model: 64,
            n_heads: 4,
            n_kv_heads: 2,
            d_ff: 128,
            context_length: 64,
            rope_freq_base: 10_000.0,
            seed: 0,
            weight_dtype: WeightDType::F32,
            tie_embeddings: true,
        }
    }
}

/// Special tokens of the tiny vocabulary, ids 0, 1, 2 (as in SmolLM2).
pub const TINY_SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// BOS id of the tiny vocabulary (`<|im_start|>`).
pub const TINY_BOS: u32 = 1;
/// EOS id of the tiny vocabulary (`<|im_end|>`).
pub const TINY_EOS: u32 = 2;

/// Merges of the tiny vocabulary, in priority order.
const TINY_MERGES: [(&str, &str); 8] = [
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("Ġ", "a"),
    ("e", "r"),
    ("o", "n"),
    ("Ġ", "s"),
];

/// GPT-2's byte-to-unicode map: printable bytes map to themselves, the others
/// to code points from 256 up, so every byte is a visible character.
pub fn gpt2_byte_to_char(b: u8) -> char {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable(b) {
        char::from(b)
    } else {
        let n = (0..b).filter(|&x| !printable(x)).count() as u32;
        char::from_u32(256 + n).expect("256..=323 are valid code points")
    }
}

/// The tiny vocabulary: 3 special tokens, the 256 byte tokens (in byte order,
/// GPT-2 alphabet), then one token per merge. Returns (tokens, merges as `"a b"`).
pub fn tiny_vocab() -> (Vec<String>, Vec<String>) {
    let mut tokens: Vec<String> = TINY_SPECIAL_TOKENS.iter().map(|s| s.to_string()).collect();
    tokens.extend((0..=255u8).map(|b| gpt2_byte_to_char(b).to_string()));
    let mut merges = Vec::new();
    for (a, b) in TINY_MERGES {
        tokens.push(format!("{a}{b}"));
        merges.push(format!("{a} {b}"));
    }
    (tokens, merges)
}

/// Writes a tiny Llama GGUF with random weights to `path`.
///
/// Weights are Gaussian with standard deviation 1/√fan_in (embeddings 1, norm
/// gains 1 ± 0.2) so activations stay O(1) and every sub-layer contributes.
pub fn write_tiny_llama_gguf(path: impl AsRef<Path>, cfg: &TinyLlamaConfig) -> Result<()> {
    let path = path.as_ref();
    let bad = |reason: String| LmError::invalid("TinyLlamaConfig", reason);
    if cfg.n_layers == 0 || cfg.n_heads == 0 || cfg.n_kv_heads == 0 || cfg.d_ff == 0 {
        return Err(bad(format!("all sizes must be positive: {cfg:?}")));
    }
    if !cfg.d_model.is_multiple_of(cfg.n_heads) || !(cfg.d_model / cfg.n_heads).is_multiple_of(2) {
        return Err(bad(format!(
            "d_model {} must be n_heads {} × an even head width",
            cfg.d_model, cfg.n_heads
        )));
    }
    if !cfg.n_heads.is_multiple_of(cfg.n_kv_heads) {
        return Err(bad(format!(
            "n_kv_heads {} must divide n_heads {}",
            cfg.n_kv_heads, cfg.n_heads
        )));
    }
    if cfg.weight_dtype == WeightDType::Q4_1
        && (!cfg.d_model.is_multiple_of(32) || !cfg.d_ff.is_multiple_of(32))
    {
        return Err(bad(format!(
            "Q4_1 needs d_model {} and d_ff {} to be multiples of 32",
            cfg.d_model, cfg.d_ff
        )));
    }
    let (tokens, merges) = tiny_vocab();
    let vocab = tokens.len();
    let (d, hd) = (cfg.d_model, cfg.d_model / cfg.n_heads);
    let (matrix_dtype, embed_dtype) = match cfg.weight_dtype {
        WeightDType::F32 => (GgmlDType::F32, GgmlDType::F32),
        WeightDType::Q4_1 => (GgmlDType::Q4_1, GgmlDType::Q8_0),
    };

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |name: String,
                   rows: usize,
                   cols: usize,
                   std: f32,
                   mean: f32,
                   dtype: GgmlDType|
     -> Result<()> {
        let normal = Normal::new(mean, std).expect("std is positive");
        let data: Vec<f32> = (0..rows * cols).map(|_| normal.sample(&mut rng)).collect();
        let t = if rows == 1 {
            Tensor::from_vec(data, cols, &Device::Cpu)?
        } else {
            Tensor::from_vec(data, (rows, cols), &Device::Cpu)?
        };
        tensors.push((name, QTensor::quantize(&t, dtype)?));
        Ok(())
    };
    let inv_sqrt = |n: usize| 1.0 / (n as f32).sqrt();
    add("token_embd.weight".into(), vocab, d, 1.0, 0.0, embed_dtype)?;
    for l in 0..cfg.n_layers {
        let p = format!("blk.{l}");
        add(
            format!("{p}.attn_norm.weight"),
            1,
            d,
            0.2,
            1.0,
            GgmlDType::F32,
        )?;
        add(
            format!("{p}.attn_q.weight"),
            cfg.n_heads * hd,
            d,
            inv_sqrt(d),
            0.0,
            matrix_dtype,
        )?;
        add(
            format!("{p}.attn_k.weight"),
            cfg.n_kv_heads * hd,
            d,
            inv_sqrt(d),
            0.0,
            matrix_dtype,
        )?;
        add(
            format!("{p}.attn_v.weight"),
            cfg.n_kv_heads * hd,
            d,
            inv_sqrt(d),
            0.0,
            matrix_dtype,
        )?;
        add(
            format!("{p}.attn_output.weight"),
            d,
            cfg.n_heads * hd,
            inv_sqrt(d),
            0.0,
            matrix_dtype,
        )?;
        add(
            format!("{p}.ffn_norm.weight"),
            1,
            d,
            0.2,
            1.0,
            GgmlDType::F32,
        )?;
        add(
            format!("{p}.ffn_gate.weight"),
            cfg.d_ff,
            d,
            inv_sqrt(d),
            0.0,
            matrix_dtype,
        )?;
        add(
            format!("{p}.ffn_up.weight"),
            cfg.d_ff,
            d,
            inv_sqrt(d),
            0.0,
            matrix_dtype,
        )?;
        add(
            format!("{p}.ffn_down.weight"),
            d,
            cfg.d_ff,
            inv_sqrt(cfg.d_ff),
            0.0,
            matrix_dtype,
        )?;
    }
    add("output_norm.weight".into(), 1, d, 0.2, 1.0, GgmlDType::F32)?;
    if !cfg.tie_embeddings {
        add(
            "output.weight".into(),
            vocab,
            d,
            inv_sqrt(d),
            0.0,
            embed_dtype,
        )?;
    }

    let u32v = |x: usize| Value::U32(x as u32);
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let token_types = Value::Array(
        (0..vocab)
            .map(|i| Value::I32(if i < TINY_SPECIAL_TOKENS.len() { 3 } else { 1 }))
            .collect(),
    );
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("tiny-llama-test".into())),
        ("llama.block_count", u32v(cfg.n_layers)),
        ("llama.context_length", u32v(cfg.context_length)),
        ("llama.embedding_length", u32v(d)),
        ("llama.feed_forward_length", u32v(cfg.d_ff)),
        ("llama.attention.head_count", u32v(cfg.n_heads)),
        ("llama.attention.head_count_kv", u32v(cfg.n_kv_heads)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_freq_base)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.dimension_count", u32v(hd)),
        ("llama.vocab_size", u32v(vocab)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", token_types),
        ("tokenizer.ggml.merges", strings(&merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(TINY_BOS)),
        ("tokenizer.ggml.eos_token_id", Value::U32(TINY_EOS)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ];
    let md_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();

    let io_err = |source| LmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io_err)?;
    let mut w = std::io::BufWriter::new(file);
    gguf_file::write(&mut w, &md_refs, &t_refs)?;
    std::io::Write::flush(&mut w).map_err(io_err)?;
    Ok(())
}
