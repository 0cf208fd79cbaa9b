//! A Llama-architecture decoder loaded from GGUF, run without a KV cache on
//! plain f32 candle ops, with hooks into the residual stream.
//!
//! Written for this crate (not vendored): it follows the computation of
//! llama.cpp and of candle-transformers' `quantized_llama.rs` (MIT/Apache-2.0),
//! whose handling of GGUF conventions it reuses: Q and K weights are stored by
//! llama.cpp permuted so that rotary embedding rotates *adjacent* pairs of
//! dimensions (`rope_i`, not HF's rotate-half), and a missing `output.weight`
//! means the output projection is tied to the token embedding.
//!
//! Every weight is dequantised to f32 at load: on CPU plain f32 matmuls are
//! about 10× faster than candle's quantised kernels, and they use exactly the
//! stored weights (the quantised kernels also round the activations to Q8).
//!
//! Shapes: tokens are `batch × seq` row-major; every activation handed out is a
//! row-major `(batch·seq) × d_model` f32 buffer, row `b·seq + t` being position
//! `t` of sequence `b`.

use crate::error::{LmError, Result};
use crate::gguf::{self, GgufFile};
use crate::hooks::HookPoint;
use crate::ops;
use candle_core::{Device, Tensor, D};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

/// What a loaded model is, from its GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// The file it was loaded from.
    pub path: PathBuf,
    /// `general.name` (empty when absent).
    pub name: String,
    /// `general.architecture` (always `llama` here).
    pub architecture: String,
    /// Number of transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Number of query heads.
    pub n_heads: usize,
    /// Number of key/value heads (grouped-query attention when < `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head, `d_model / n_heads`.
    pub head_dim: usize,
    /// Hidden width of the MLP.
    pub d_ff: usize,
    /// Number of tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// Longest sequence the model was trained for; longer inputs are refused.
    pub context_length: usize,
    /// Rotary embedding base (`llama.rope.freq_base`, default 10000).
    pub rope_freq_base: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether the output projection is the token embedding (no `output.weight`).
    pub tied_embeddings: bool,
    /// `tokenizer.ggml.bos_token_id`, if present.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`, if present; greedy generation stops there.
    pub eos_token_id: Option<u32>,
    /// Lower-case hex sha256 of the whole file (computed at load: the file is
    /// read into memory once anyway, and hashing 98 MB takes ~0.1 s with SHA-NI).
    pub file_sha256: String,
}

/// One transformer block's weights, dequantised and laid out for `x · W`
/// (each weight is a transposed *view* of the stored `(out, in)` matrices).
/// Projections that read the same input are fused into one matmul: fewer,
/// wider matmuls pack their input once and use both cores better.
struct Block {
    attn_norm: Tensor,
    /// `[Q | K | V]` projection, `(d_model, (n_heads + 2·n_kv_heads)·head_dim)`;
    /// the Q part is pre-scaled by 1/√head_dim so attention needs no extra pass.
    w_qkv: Tensor,
    /// Output projection, `(n_heads·head_dim, d_model)`.
    wo: Tensor,
    ffn_norm: Tensor,
    /// `[gate | up]` projection, `(d_model, 2·d_ff)`.
    w_gate_up: Tensor,
    /// Down projection, `(d_ff, d_model)`.
    w_down: Tensor,
}

/// A Llama-architecture language model with dequantised f32 weights on the CPU.
pub struct LanguageModel {
    info: ModelInfo,
    /// `(vocab, d_model)`.
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    /// `(vocab, d_model)`; the same tensor as `embed` when tied.
    lm_head: Tensor,
}

/// Rows of logits computed at once when only the NLL is wanted: bounds memory
/// to `LOGIT_CHUNK × vocab` floats (25 MB for SmolLM2) whatever the batch.
const LOGIT_CHUNK: usize = 128;

impl LanguageModel {
    /// Loads a Llama-architecture GGUF file, dequantising every weight to f32.
    ///
    /// Errors name the file: not GGUF (bad magic, empty), truncated, malformed
    /// header, an architecture other than `llama`, missing metadata or tensors,
    /// tensors of the wrong shape.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // One read serves both the hash and the parse.
        let bytes = std::fs::read(path).map_err(|source| LmError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        gguf::check_magic(path, &bytes[..bytes.len().min(4)])?;
        let file_sha256 = hex(&Sha256::digest(&bytes));
        let file = gguf::parse(path, std::io::Cursor::new(bytes.as_slice()))?;
        Self::from_gguf(file, file_sha256)
    }

    fn from_gguf<R: Read + Seek>(mut f: GgufFile<R>, file_sha256: String) -> Result<Self> {
        let path = f.path.clone();
        let meta = f.meta();
        let architecture = meta.string("general.architecture")?.to_string();
        if architecture != "llama" {
            return Err(LmError::Unsupported {
                path,
                what: "architecture (general.architecture)".into(),
                expected: "\"llama\"".into(),
                found: format!("{architecture:?}"),
            });
        }
        let name = meta
            .string("general.name")
            .map(str::to_string)
            .unwrap_or_default();
        let n_layers = meta.usize("llama.block_count")?;
        let d_model = meta.usize("llama.embedding_length")?;
        let n_heads = meta.usize("llama.attention.head_count")?;
        let n_kv_heads = meta.usize("llama.attention.head_count_kv")?;
        let d_ff = meta.usize("llama.feed_forward_length")?;
        let context_length = meta.usize("llama.context_length")?;
        let rope_freq_base = meta.f64_or("llama.rope.freq_base", 10_000.0)?;
        let rms_norm_eps = meta.f64_or("llama.attention.layer_norm_rms_epsilon", 1e-5)?;
        let bos_token_id = meta
            .opt_usize("tokenizer.ggml.bos_token_id")?
            .map(|x| x as u32);
        let eos_token_id = meta
            .opt_usize("tokenizer.ggml.eos_token_id")?
            .map(|x| x as u32);
        let bad_geometry = |what: &str, found: String| LmError::Unsupported {
            path: path.clone(),
            what: what.to_string(),
            expected: concat!(
                "positive sizes, embedding_length divisible by head_count, ",
                "head_count by head_count_kv, and an even head width"
            )
            .into(),
            found,
        };
        let sizes = [n_layers, d_model, n_heads, n_kv_heads, d_ff, context_length];
        if sizes.contains(&0) {
            return Err(bad_geometry(
                "model geometry",
                format!(
                    "block_count {n_layers}, embedding_length {d_model}, head_count {n_heads}, \
                     head_count_kv {n_kv_heads}, feed_forward_length {d_ff}, \
                     context_length {context_length}"
                ),
            ));
        }
        if d_model % n_heads != 0 || n_heads % n_kv_heads != 0 || (d_model / n_heads) % 2 != 0 {
            return Err(bad_geometry(
                "model geometry",
                format!(
                    "embedding_length {d_model}, head_count {n_heads}, head_count_kv {n_kv_heads}"
                ),
            ));
        }
        let head_dim = d_model / n_heads;
        if let Some(rope_dim) = meta.opt_usize("llama.rope.dimension_count")? {
            if rope_dim != head_dim {
                return Err(LmError::Unsupported {
                    path,
                    what: "partial rotary embedding (llama.rope.dimension_count)".into(),
                    expected: format!("the head width {head_dim}"),
                    found: rope_dim.to_string(),
                });
            }
        }
        if f.has_tensor("rope_freqs.weight") {
            return Err(LmError::Unsupported {
                path,
                what: "rotary frequency scaling".into(),
                expected: "no rope_freqs.weight tensor (plain RoPE)".into(),
                found: "rope_freqs.weight".into(),
            });
        }

        // The vocabulary size is the embedding's row count; llama.vocab_size is optional.
        let vocab_size = match f.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims().first().copied().unwrap_or(0),
            None => meta.usize("llama.vocab_size")?,
        };
        let embed = f.tensor_f32("token_embd.weight", &[vocab_size, d_model])?;
        let final_norm = f.tensor_f32("output_norm.weight", &[d_model])?;
        let tied_embeddings = !f.has_tensor("output.weight");
        let lm_head = if tied_embeddings {
            embed.clone()
        } else {
            f.tensor_f32("output.weight", &[vocab_size, d_model])?
        };
        let q_width = n_heads * head_dim;
        let kv_width = n_kv_heads * head_dim;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let mut blocks = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let mut w =
                |suffix: &str, shape: &[usize]| f.tensor_f32(&format!("blk.{l}.{suffix}"), shape);
            let wq = (w("attn_q.weight", &[q_width, d_model])? * scale)?;
            let wk = w("attn_k.weight", &[kv_width, d_model])?;
            let wv = w("attn_v.weight", &[kv_width, d_model])?;
            let attn_norm = w("attn_norm.weight", &[d_model])?;
            let wo = w("attn_output.weight", &[d_model, q_width])?.t()?;
            let ffn_norm = w("ffn_norm.weight", &[d_model])?;
            let gate = w("ffn_gate.weight", &[d_ff, d_model])?;
            let up = w("ffn_up.weight", &[d_ff, d_model])?;
            let w_down = w("ffn_down.weight", &[d_model, d_ff])?.t()?;
            blocks.push(Block {
                attn_norm,
                w_qkv: Tensor::cat(&[wq, wk, wv], 0)?.t()?,
                wo,
                ffn_norm,
                w_gate_up: Tensor::cat(&[gate, up], 0)?.t()?,
                w_down,
            });
        }
        Ok(LanguageModel {
            info: ModelInfo {
                path,
                name,
                architecture,
                n_layers,
                d_model,
                n_heads,
                n_kv_heads,
                head_dim,
                d_ff,
                vocab_size,
                context_length,
                rope_freq_base,
                rms_norm_eps,
                tied_embeddings,
                bos_token_id,
                eos_token_id,
                file_sha256,
            },
            embed,
            blocks,
            final_norm,
            lm_head,
        })
    }

    /// The model's description.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Checks `tokens` against `batch × seq`, the vocabulary and the context length.
    fn check_tokens(&self, tokens: &[u32], batch: usize, seq: usize) -> Result<()> {
        if batch == 0 || seq == 0 {
            return Err(LmError::invalid(
                "batch × seq",
                format!("{batch} × {seq}: both must be positive"),
            ));
        }
        if tokens.len() != batch * seq {
            return Err(LmError::invalid(
                "tokens",
                format!(
                    "expected batch × seq = {batch} × {seq} = {} token ids, found {}",
                    batch * seq,
                    tokens.len()
                ),
            ));
        }
        if seq > self.info.context_length {
            return Err(LmError::invalid(
                "seq",
                format!(
                    "{seq} exceeds the model's context length {}",
                    self.info.context_length
                ),
            ));
        }
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= self.info.vocab_size)
        {
            return Err(LmError::invalid(
                "tokens",
                format!(
                    "token id {t} at index {i} is outside the vocabulary (size {})",
                    self.info.vocab_size
                ),
            ));
        }
        Ok(())
    }

    /// Runs the first `n_blocks` blocks and returns the residual stream after
    /// them, `(batch·seq, d_model)`. `visit` sees every hook point on the way
    /// (including `resid_pre(n_blocks)` when that block exists) and may return
    /// a tensor of the same shape to replace the activation.
    fn run(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        n_blocks: usize,
        visit: &mut dyn FnMut(HookPoint, &Tensor) -> Result<Option<Tensor>>,
    ) -> Result<Tensor> {
        self.check_tokens(tokens, batch, seq)?;
        let eps = self.info.rms_norm_eps as f32;
        let ids = Tensor::from_slice(tokens, tokens.len(), &Device::Cpu)?;
        // Per call rather than per model: microseconds for `seq` positions, and no
        // table sized by a context length read from the file.
        let (cos, sin) = rope_tables(seq, self.info.head_dim, self.info.rope_freq_base);
        let mut h = self.embed.index_select(&ids, 0)?;
        for (l, blk) in self.blocks.iter().enumerate().take(n_blocks) {
            if let Some(r) = visit(HookPoint::resid_pre(l), &h)? {
                h = r;
            }
            let x = candle_nn::ops::rms_norm(&h, &blk.attn_norm, eps)?;
            let mut a = self.attention(blk, &x, batch, seq, (&cos, &sin))?;
            if let Some(r) = visit(HookPoint::attn_out(l), &a)? {
                a = r;
            }
            let mid = (&h + &a)?;
            let x = candle_nn::ops::rms_norm(&mid, &blk.ffn_norm, eps)?;
            let mut m = x
                .matmul(&blk.w_gate_up)?
                .apply_op1_no_bwd(&ops::SwiGlu)?
                .matmul(&blk.w_down)?;
            if let Some(r) = visit(HookPoint::mlp_out(l), &m)? {
                m = r;
            }
            h = (mid + m)?;
            if let Some(r) = visit(HookPoint::resid_post(l), &h)? {
                h = r;
            }
        }
        if n_blocks < self.info.n_layers {
            if let Some(r) = visit(HookPoint::resid_pre(n_blocks), &h)? {
                h = r;
            }
        }
        Ok(h)
    }

    /// Causal self-attention of one block on normalised input `x`, `(batch·seq, d_model)`;
    /// `rope` holds the `(seq, head_dim / 2)` cos and sin tables.
    fn attention(
        &self,
        blk: &Block,
        x: &Tensor,
        batch: usize,
        seq: usize,
        rope: (&[f32], &[f32]),
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (self.info.n_heads, self.info.n_kv_heads, self.info.head_dim);
        let rep = nh / nkv;
        let qkv = x.matmul(&blk.w_qkv)?; // (batch·seq, (nh + 2·nkv)·hd)
        let split = |first, n, rope| {
            qkv.apply_op1_no_bwd(&ops::SplitHeads {
                batch,
                seq,
                head_dim: hd,
                first,
                n,
                rope,
            })
        };
        let q = split(0, nh, Some(rope))?; // (batch, nh, seq, hd)
        let k = split(nh, nkv, Some(rope))?; // (batch, nkv, seq, hd)
        let v = split(nh + nkv, nkv, None)?;
        // Grouped-query attention without copying K/V: query head h uses KV head
        // h / rep, so the `rep` query heads of one KV head are stacked along the
        // row axis, (batch, nkv, rep·seq, hd), and share one K and V.
        let q = q.reshape((batch, nkv, rep * seq, hd))?;
        let scores = q.matmul(&k.t()?)?; // (batch, nkv, rep·seq, seq); 1/√hd is folded into Q
        let p = scores.apply_op1_no_bwd(&ops::CausalSoftmax { seq })?;
        let y = p.matmul(&v)?; // (batch, nkv, rep·seq, hd) = (batch, nh, seq, hd)
        let y = y
            .reshape((batch, nh, seq, hd))?
            .transpose(1, 2)?
            .reshape((batch * seq, nh * hd))?;
        Ok(y.matmul(&blk.wo)?)
    }

    /// Activations at `hooks` for `tokens` (`batch × seq`, row-major): one
    /// row-major `(batch·seq) × d_model` buffer per hook, in the order given
    /// (duplicates allowed). Runs only the blocks the deepest hook needs and
    /// never computes logits.
    pub fn hook_activations(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        hooks: &[HookPoint],
    ) -> Result<Vec<Vec<f32>>> {
        for h in hooks {
            h.check(self.info.n_layers)?;
        }
        let n_blocks = hooks.iter().map(|h| h.blocks_needed()).max().unwrap_or(0);
        let mut out: Vec<Option<Vec<f32>>> = vec![None; hooks.len()];
        self.run(tokens, batch, seq, n_blocks, &mut |point, t| {
            for (slot, _) in out.iter_mut().zip(hooks).filter(|(_, h)| **h == point) {
                *slot = Some(t.flatten_all()?.to_vec1::<f32>()?);
            }
            Ok(None)
        })?;
        // Every requested point lies within the blocks run, so every slot is filled.
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    /// Final RMSNorm of the residual stream `h`, `(rows, d_model)`.
    fn final_normed(&self, h: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(
            h,
            &self.final_norm,
            self.info.rms_norm_eps as f32,
        )?)
    }

    /// Logits of `rows × d_model` normed activations, `(rows, vocab)`.
    fn logits_of(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.lm_head.t()?)?)
    }

    /// Next-token logits at every position: row-major `(batch·seq) × vocab_size`.
    /// Large (`batch·seq·vocab` floats); prefer [`token_nll`](Self::token_nll) for losses.
    pub fn logits(&self, tokens: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        let h = self.run(tokens, batch, seq, self.info.n_layers, &mut |_, _| Ok(None))?;
        let x = self.final_normed(&h)?;
        Ok(self.logits_of(&x)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Per-position next-token negative log-likelihood (nats) from the final
    /// residual `h`: `batch·(seq−1)` values, entry `b·(seq−1) + t` being
    /// `−log p(tokens[b, t+1] | tokens[b, ..=t])`.
    fn nll_from_residual(
        &self,
        h: &Tensor,
        tokens: &[u32],
        batch: usize,
        seq: usize,
    ) -> Result<Vec<f32>> {
        let x = self.final_normed(h)?;
        let vocab = self.info.vocab_size;
        let rows = batch * seq;
        let mut nll = Vec::with_capacity(batch * (seq - 1));
        let mut start = 0;
        while start < rows {
            let n = LOGIT_CHUNK.min(rows - start);
            let logits = self.logits_of(&x.narrow(0, start, n)?)?.to_vec2::<f32>()?;
            debug_assert!(logits.iter().all(|r| r.len() == vocab));
            let chunk: Vec<Option<f32>> = logits
                .par_iter()
                .enumerate()
                .map(|(i, row)| {
                    let r = start + i;
                    let (b, t) = (r / seq, r % seq);
                    (t + 1 < seq).then(|| {
                        let target = tokens[b * seq + t + 1] as usize;
                        // log-sum-exp: each exp in f32 (exact to rounding, and
                        // ~2× cheaper), the 49k-term sum in f64 so it loses no digits.
                        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let sum: f64 = row.iter().map(|&z| (z - max).exp() as f64).sum();
                        (max as f64 + sum.ln() - row[target] as f64) as f32
                    })
                })
                .collect();
            nll.extend(chunk.into_iter().flatten());
            start += n;
        }
        Ok(nll)
    }

    /// Per-position next-token NLL in nats: `batch·(seq−1)` values, entry
    /// `b·(seq−1) + t` being `−log p(tokens[b, t+1] | tokens[b, ..=t])`.
    pub fn token_nll(&self, tokens: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        let h = self.run(tokens, batch, seq, self.info.n_layers, &mut |_, _| Ok(None))?;
        self.nll_from_residual(&h, tokens, batch, seq)
    }

    /// Like [`token_nll`](Self::token_nll), but at `hook` hands the activation
    /// (row-major `(batch·seq) × d_model`) to `splice`, which may overwrite it
    /// in place (an SAE reconstruction, zeros for zero-ablation, ...); the
    /// forward pass then continues from the spliced values.
    pub fn token_nll_with_splice(
        &self,
        tokens: &[u32],
        batch: usize,
        seq: usize,
        hook: HookPoint,
        splice: &mut dyn FnMut(&mut [f32]) -> Result<()>,
    ) -> Result<Vec<f32>> {
        hook.check(self.info.n_layers)?;
        let h = self.run(tokens, batch, seq, self.info.n_layers, &mut |point, t| {
            if point != hook {
                return Ok(None);
            }
            let mut v = t.flatten_all()?.to_vec1::<f32>()?;
            splice(&mut v)?;
            Ok(Some(Tensor::from_vec(v, t.shape(), &Device::Cpu)?))
        })?;
        self.nll_from_residual(&h, tokens, batch, seq)
    }

    /// Greedy decoding: appends up to `max_new` argmax tokens to `prompt` and
    /// returns only the new ones, stopping after the end-of-sequence token
    /// (which is not returned). Recomputes the whole prefix per token (no KV
    /// cache): meant for checks and demos, not throughput.
    pub fn generate_greedy(&self, prompt: &[u32], max_new: usize) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(LmError::invalid("prompt", "at least one token is needed"));
        }
        if prompt.len() + max_new > self.info.context_length {
            return Err(LmError::invalid(
                "max_new",
                format!(
                    "prompt ({}) + max_new ({max_new}) exceeds the context length {}",
                    prompt.len(),
                    self.info.context_length
                ),
            ));
        }
        let mut seq = prompt.to_vec();
        let mut new = Vec::with_capacity(max_new);
        for _ in 0..max_new {
            let h = self.run(&seq, 1, seq.len(), self.info.n_layers, &mut |_, _| Ok(None))?;
            let last = h.narrow(0, seq.len() - 1, 1)?;
            let logits = self.logits_of(&self.final_normed(&last)?)?;
            let next = logits
                .flatten_all()?
                .argmax(D::Minus1)?
                .to_scalar::<u32>()?;
            if Some(next) == self.info.eos_token_id {
                break;
            }
            seq.push(next);
            new.push(next);
        }
        Ok(new)
    }
}

/// Rotary tables `cos, sin` of shape `(positions, head_dim / 2)`: angle
/// `t · base^(−2i/head_dim)` at row `t`, column `i`, computed in f64 so that late positions are exact
/// to f32 rounding.
fn rope_tables(positions: usize, head_dim: usize, base: f64) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv: Vec<f64> = (0..half)
        .map(|i| base.powf(-((2 * i) as f64) / head_dim as f64))
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for t in 0..positions {
        for &f in &inv {
            let a = t as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}

/// Lower-case hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
