//! A Llama-architecture decoder loaded from GGUF, run on plain f32 buffers
//! (faer products, the kernels of [`ops`]), with hooks into the residual
//! stream; greedy generation caches keys and values. candle is used only to parse and dequantise the file.
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
//! Not candle's tensor ops for the forward: its CPU matmul splits these
//! skinny products poorly across threads (two threads gave 327 tokens per
//! CPU-second against 470 on one) and its element-wise ops run on one thread.
//! Independent groups of contexts on sequential kernels keep every core busy.
//!
//! Shapes: tokens are `batch × seq` row-major; every activation handed out is a
//! row-major `(batch·seq) × d_model` f32 buffer, row `b·seq + t` being position
//! `t` of sequence `b`.

use crate::error::{LmError, Result};
use crate::gguf::{self, GgufFile};
use crate::hooks::{HookKind, HookPoint};
use crate::ops;
use faer::{MatMut, MatRef};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use sparse_core::linalg::{exp_f32, gemm_into, Op};
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

/// One transformer block's weights, dequantised, each matrix row-major
/// `(out, in)` as GGUF stores it (the products use its transpose as a view,
/// no copy). Projections that read the same input are fused into one matmul:
/// fewer, wider products pack their input once.
struct Block {
    attn_norm: Vec<f32>,
    /// `[Q; K; V]` projection, `((n_heads + 2·n_kv_heads)·head_dim, d_model)`;
    /// the Q part is pre-scaled by 1/√head_dim so attention needs no extra pass.
    w_qkv: Vec<f32>,
    /// Output projection, `(d_model, n_heads·head_dim)`.
    wo: Vec<f32>,
    ffn_norm: Vec<f32>,
    /// `[gate; up]` projection, `(2·d_ff, d_model)`.
    w_gate_up: Vec<f32>,
    /// Down projection, `(d_model, d_ff)`.
    w_down: Vec<f32>,
}

/// A Llama-architecture language model with dequantised f32 weights on the CPU.
pub struct LanguageModel {
    info: ModelInfo,
    /// `(vocab, d_model)`, row-major.
    embed: Vec<f32>,
    blocks: Vec<Block>,
    final_norm: Vec<f32>,
    /// `(vocab, d_model)`; `None` when tied to `embed`.
    lm_head: Option<Vec<f32>>,
}

/// Work buffers of one group of contexts, sized once per forward pass and
/// reused by every block (a block then allocates nothing).
struct Scratch {
    /// Contexts in the group.
    contexts: usize,
    /// Normalised input of a sub-layer, `(rows, d_model)`.
    x: Vec<f32>,
    /// Fused QKV projection, `(rows, (n_heads + 2·n_kv_heads)·head_dim)`.
    qkv: Vec<f32>,
    /// One context's heads, head-major `(heads, seq, head_dim)`.
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// One KV head's scores, `(rep·seq, seq)`.
    scores: Vec<f32>,
    /// One KV head's attention output, `(rep·seq, head_dim)`.
    y: Vec<f32>,
    /// Attention output before its projection, `(rows, n_heads·head_dim)`.
    att: Vec<f32>,
    /// Fused gate/up projection, `(rows, 2·d_ff)`.
    gate_up: Vec<f32>,
    /// SwiGLU output, `(rows, d_ff)`.
    act: Vec<f32>,
}

impl Scratch {
    fn new(info: &ModelInfo, contexts: usize, seq: usize) -> Self {
        let rows = contexts * seq;
        let (nh, nkv, hd) = (info.n_heads, info.n_kv_heads, info.head_dim);
        Scratch {
            contexts,
            x: vec![0.0; rows * info.d_model],
            qkv: vec![0.0; rows * (nh + 2 * nkv) * hd],
            q: vec![0.0; nh * seq * hd],
            k: vec![0.0; nkv * seq * hd],
            v: vec![0.0; nkv * seq * hd],
            scores: vec![0.0; (nh / nkv) * seq * seq],
            y: vec![0.0; (nh / nkv) * seq * hd],
            att: vec![0.0; rows * nh * hd],
            gate_up: vec![0.0; rows * 2 * info.d_ff],
            act: vec![0.0; rows * info.d_ff],
        }
    }
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
        let embed = f.vec_f32("token_embd.weight", &[vocab_size, d_model])?;
        let final_norm = f.vec_f32("output_norm.weight", &[d_model])?;
        let tied_embeddings = !f.has_tensor("output.weight");
        let lm_head = if tied_embeddings {
            None
        } else {
            Some(f.vec_f32("output.weight", &[vocab_size, d_model])?)
        };
        let q_width = n_heads * head_dim;
        let kv_width = n_kv_heads * head_dim;
        let scale = (1.0 / (head_dim as f64).sqrt()) as f32;
        let mut blocks = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let mut w =
                |suffix: &str, shape: &[usize]| f.vec_f32(&format!("blk.{l}.{suffix}"), shape);
            let mut w_qkv = w("attn_q.weight", &[q_width, d_model])?;
            w_qkv.iter_mut().for_each(|x| *x *= scale);
            w_qkv.extend(w("attn_k.weight", &[kv_width, d_model])?);
            w_qkv.extend(w("attn_v.weight", &[kv_width, d_model])?);
            let attn_norm = w("attn_norm.weight", &[d_model])?;
            let wo = w("attn_output.weight", &[d_model, q_width])?;
            let ffn_norm = w("ffn_norm.weight", &[d_model])?;
            let mut w_gate_up = w("ffn_gate.weight", &[d_ff, d_model])?;
            w_gate_up.extend(w("ffn_up.weight", &[d_ff, d_model])?);
            let w_down = w("ffn_down.weight", &[d_model, d_ff])?;
            blocks.push(Block {
                attn_norm,
                w_qkv,
                wo,
                ffn_norm,
                w_gate_up,
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
    /// them, `(batch·seq, d_model)`, and a copy of the activation at each of
    /// `capture` (in that order). `splice`, if given, may overwrite the whole
    /// batch's activation at its hook point in place; the pass continues from
    /// the result.
    ///
    /// The contexts are independent, so the batch is cut into one group per
    /// rayon thread and each group runs on sequential kernels ([`ops`]) with
    /// no synchronisation: the groups meet only at the splice point and at
    /// the end. Every kernel is deterministic, so a given batch and thread
    /// count always give the same bits.
    fn run(
        &self,
        (tokens, batch, seq): (&[u32], usize, usize),
        n_blocks: usize,
        capture: &[HookPoint],
        mut splice: Option<(HookPoint, Splice<'_>)>,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        self.check_tokens(tokens, batch, seq)?;
        let d = self.info.d_model;
        // Per call rather than per model: microseconds for `seq` positions, and no
        // table sized by a context length read from the file.
        let (cos, sin) = rope_tables(seq, self.info.head_dim, self.info.rope_freq_base);
        let mut h = Vec::with_capacity(tokens.len() * d);
        for &t in tokens {
            h.extend_from_slice(&self.embed[t as usize * d..][..d]);
        }
        let mut sub = vec![0f32; h.len()];
        let mut captured = vec![vec![0f32; h.len()]; capture.len()];

        let per_group = batch.div_ceil(rayon::current_num_threads().clamp(1, batch));
        let mut groups = Group::split(&self.info, seq, per_group, &mut h, &mut sub, &mut captured);
        let last = if n_blocks < self.info.n_layers {
            stage_of(HookPoint::resid_pre(n_blocks))
        } else {
            stage_of(HookPoint::resid_post(n_blocks - 1))
        };
        let rope = (cos.as_slice(), sin.as_slice());
        let advance = |groups: &mut [Group], from: Option<usize>, to: usize| {
            groups
                .par_iter_mut()
                .for_each(|g| self.advance(g, from, to, seq, rope, capture));
        };
        let mut at = None;
        if let Some((point, f)) = splice.as_mut() {
            let stage = stage_of(*point);
            if stage <= last {
                advance(&mut groups, None, stage);
                drop(groups);
                f(match point.kind {
                    HookKind::AttnOut | HookKind::MlpOut => &mut sub,
                    HookKind::ResidPre | HookKind::ResidPost => &mut h,
                })?;
                groups = Group::split(&self.info, seq, per_group, &mut h, &mut sub, &mut captured);
                at = Some(stage);
            }
        }
        advance(&mut groups, at, last);
        drop(groups);
        Ok((h, captured))
    }

    /// Moves one group from stage `from` (`None`: before stage 0, the embedding
    /// just looked up) to stage `to`, copying the activation of every stage
    /// reached that `capture` names into the group's capture buffers. Stage
    /// `4·l + i` is block `l`'s `HookKind::ALL[i]`.
    fn advance(
        &self,
        g: &mut Group,
        from: Option<usize>,
        to: usize,
        seq: usize,
        rope: (&[f32], &[f32]),
        capture: &[HookPoint],
    ) {
        let first = from.map_or(0, |f| f + 1);
        for stage in first..=to {
            let (l, i) = (stage / 4, stage % 4);
            match HookKind::ALL[i] {
                // The stream entering block l is what left block l − 1.
                HookKind::ResidPre => {}
                HookKind::AttnOut => {
                    self.attention(&self.blocks[l], &mut g.scratch, g.h, g.sub, seq, rope)
                }
                HookKind::MlpOut => {
                    add_assign(g.h, g.sub);
                    self.mlp(&self.blocks[l], &mut g.scratch, g.h, g.sub);
                }
                HookKind::ResidPost => add_assign(g.h, g.sub),
            }
            let point = HookPoint::new(l, HookKind::ALL[i]);
            let shown: &[f32] = match HookKind::ALL[i] {
                HookKind::AttnOut | HookKind::MlpOut => g.sub,
                _ => g.h,
            };
            for (dst, _) in g
                .captured
                .iter_mut()
                .zip(capture)
                .filter(|(_, c)| **c == point)
            {
                dst.copy_from_slice(shown);
            }
        }
    }

    /// Attention sub-layer (RMSNorm, causal self-attention, output projection)
    /// of one group's residual rows `h` into `out`, both `(contexts·seq, d_model)`;
    /// `rope` holds the `(seq, head_dim / 2)` cos and sin tables.
    fn attention(
        &self,
        blk: &Block,
        s: &mut Scratch,
        h: &[f32],
        out: &mut [f32],
        seq: usize,
        rope: (&[f32], &[f32]),
    ) {
        let (nh, nkv, hd) = (self.info.n_heads, self.info.n_kv_heads, self.info.head_dim);
        let (rows, width) = (s.contexts * seq, (nh + 2 * nkv) * hd);
        ops::rms_norm(h, &blk.attn_norm, self.info.rms_norm_eps as f32, &mut s.x);
        ops::matmul_wt(&s.x, rows, &blk.w_qkv, width, &mut s.qkv);
        for (qkv, att) in s
            .qkv
            .chunks_exact(seq * width)
            .zip(s.att.chunks_exact_mut(seq * nh * hd))
        {
            ops::split_heads(qkv, width, hd, 0, Some(rope), &mut s.q);
            ops::split_heads(qkv, width, hd, nh, Some(rope), &mut s.k);
            ops::split_heads(qkv, width, hd, nh + nkv, None, &mut s.v);
            ops::causal_attention(
                (&s.q, &s.k, &s.v),
                (seq, hd, nh / nkv),
                &mut s.scores,
                &mut s.y,
                att,
            );
        }
        ops::matmul_wt(&s.att, rows, &blk.wo, self.info.d_model, out);
    }

    /// MLP sub-layer (RMSNorm, SwiGLU, down projection) of one group's residual
    /// rows `h` into `out`, both `(contexts·seq, d_model)`.
    fn mlp(&self, blk: &Block, s: &mut Scratch, h: &[f32], out: &mut [f32]) {
        let rows = h.len() / self.info.d_model;
        ops::rms_norm(h, &blk.ffn_norm, self.info.rms_norm_eps as f32, &mut s.x);
        ops::matmul_wt(
            &s.x,
            rows,
            &blk.w_gate_up,
            2 * self.info.d_ff,
            &mut s.gate_up,
        );
        ops::swiglu(&s.gate_up, self.info.d_ff, &mut s.act);
        ops::matmul_wt(&s.act, rows, &blk.w_down, self.info.d_model, out);
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
        let (_, captured) = self.run((tokens, batch, seq), n_blocks, hooks, None)?;
        Ok(captured)
    }

    /// Final RMSNorm of the residual stream `h`, `(rows, d_model)`.
    fn final_normed(&self, h: &[f32]) -> Vec<f32> {
        let mut x = vec![0f32; h.len()];
        ops::rms_norm(h, &self.final_norm, self.info.rms_norm_eps as f32, &mut x);
        x
    }

    /// Logits of `rows × d_model` normed activations `x`, row-major `(rows, vocab)`.
    /// One wide product (vocab 49k): `gemm_into` parallelises it.
    fn logits_of(&self, x: &[f32]) -> Vec<f32> {
        let (d, vocab) = (self.info.d_model, self.info.vocab_size);
        let rows = x.len() / d;
        let head = self.lm_head.as_deref().unwrap_or(&self.embed);
        let mut out = vec![0f32; rows * vocab];
        gemm_into(
            MatMut::from_row_major_slice_mut(&mut out, rows, vocab),
            false,
            MatRef::from_row_major_slice(x, rows, d),
            Op::N,
            MatRef::from_row_major_slice(head, vocab, d),
            Op::T,
            1.0,
        );
        out
    }

    /// Next-token logits after the last token of one sequence (`vocab_size`
    /// values): the forward pass over `tokens`, but the unembedding of the
    /// last position only (at every position it would cost a quarter of the
    /// pass again for a 300-token prompt).
    pub fn last_logits(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(LmError::invalid("tokens", "at least one token is needed"));
        }
        let d = self.info.d_model;
        let (h, _) = self.run((tokens, 1, tokens.len()), self.info.n_layers, &[], None)?;
        Ok(self.logits_of(&self.final_normed(&h[h.len() - d..])))
    }

    /// Next-token logits at every position: row-major `(batch·seq) × vocab_size`.
    /// Large (`batch·seq·vocab` floats); prefer [`token_nll`](Self::token_nll) for losses.
    pub fn logits(&self, tokens: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        let (h, _) = self.run((tokens, batch, seq), self.info.n_layers, &[], None)?;
        Ok(self.logits_of(&self.final_normed(&h)))
    }

    /// Per-position next-token negative log-likelihood (nats) from the final
    /// residual `h`: `batch·(seq−1)` values, entry `b·(seq−1) + t` being
    /// `−log p(tokens[b, t+1] | tokens[b, ..=t])`.
    fn nll_from_residual(&self, h: &[f32], tokens: &[u32], batch: usize, seq: usize) -> Vec<f32> {
        let x = self.final_normed(h);
        let (d, vocab) = (self.info.d_model, self.info.vocab_size);
        let rows = batch * seq;
        let mut nll = Vec::with_capacity(batch * (seq - 1));
        let mut start = 0;
        while start < rows {
            let n = LOGIT_CHUNK.min(rows - start);
            let logits = self.logits_of(&x[start * d..(start + n) * d]);
            let chunk: Vec<Option<f32>> = logits
                .par_chunks(vocab)
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
        nll
    }

    /// Per-position next-token NLL in nats: `batch·(seq−1)` values, entry
    /// `b·(seq−1) + t` being `−log p(tokens[b, t+1] | tokens[b, ..=t])`.
    pub fn token_nll(&self, tokens: &[u32], batch: usize, seq: usize) -> Result<Vec<f32>> {
        let (h, _) = self.run((tokens, batch, seq), self.info.n_layers, &[], None)?;
        Ok(self.nll_from_residual(&h, tokens, batch, seq))
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
        let (h, _) = self.run(
            (tokens, batch, seq),
            self.info.n_layers,
            &[],
            Some((hook, splice)),
        )?;
        Ok(self.nll_from_residual(&h, tokens, batch, seq))
    }

    /// Greedy decoding: appends up to `max_new` argmax tokens to `prompt` and
    /// returns only the new ones, stopping after the end-of-sequence token
    /// (which is not returned). Keys and values are cached, so each new token
    /// costs one position's pass (the prompt is run once), not the whole prefix.
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
        self.check_tokens(prompt, 1, prompt.len())?;
        let mut new = Vec::with_capacity(max_new);
        if max_new == 0 {
            return Ok(new);
        }
        let capacity = prompt.len() + max_new;
        let (cos, sin) = rope_tables(capacity, self.info.head_dim, self.info.rope_freq_base);
        let mut cache = KvCache::new(&self.info, capacity);
        let mut last = self.extend_cached(prompt, &mut cache, (&cos, &sin));
        loop {
            let logits = self.logits_of(&self.final_normed(&last));
            // The first maximum, as an argmax conventionally returns.
            let next = logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &z)| {
                    if z > best.1 {
                        (i, z)
                    } else {
                        best
                    }
                })
                .0 as u32;
            if Some(next) == self.info.eos_token_id {
                break;
            }
            new.push(next);
            if new.len() == max_new {
                break;
            }
            last = self.extend_cached(&[next], &mut cache, (&cos, &sin));
        }
        Ok(new)
    }

    /// Runs `tokens` at positions `cache.len ..` of one sequence through every
    /// block, attending to the cached positions before them, appends their keys
    /// and values to `cache`, and returns the residual stream of the last one
    /// (`d_model` values). `rope` holds the tables of every position up to the
    /// cache's capacity. The first call (an empty cache) uses the same batched
    /// causal attention as [`Self::run`]; later ones score each new query
    /// against the cached keys directly.
    fn extend_cached(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        rope: (&[f32], &[f32]),
    ) -> Vec<f32> {
        let info = &self.info;
        let (d, nh, nkv, hd) = (info.d_model, info.n_heads, info.n_kv_heads, info.head_dim);
        let (n, p, cap) = (tokens.len(), cache.len, cache.capacity);
        let (width, rep, half) = ((nh + 2 * nkv) * hd, nh / nkv, hd / 2);
        let eps = info.rms_norm_eps as f32;
        let rope = (&rope.0[p * half..], &rope.1[p * half..]);
        let mut h = Vec::with_capacity(n * d);
        for &t in tokens {
            h.extend_from_slice(&self.embed[t as usize * d..][..d]);
        }
        let mut s = Scratch::new(info, 1, n);
        let mut sub = vec![0f32; n * d];
        let mut scores = vec![0f32; p + n];
        for (l, blk) in self.blocks.iter().enumerate() {
            ops::rms_norm(&h, &blk.attn_norm, eps, &mut s.x);
            ops::matmul_wt(&s.x, n, &blk.w_qkv, width, &mut s.qkv);
            ops::split_heads(&s.qkv, width, hd, 0, Some(rope), &mut s.q);
            ops::split_heads(&s.qkv, width, hd, nh, Some(rope), &mut s.k);
            ops::split_heads(&s.qkv, width, hd, nh + nkv, None, &mut s.v);
            let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
            for g in 0..nkv {
                let at = (g * cap + p) * hd;
                kc[at..at + n * hd].copy_from_slice(&s.k[g * n * hd..][..n * hd]);
                vc[at..at + n * hd].copy_from_slice(&s.v[g * n * hd..][..n * hd]);
            }
            if p == 0 {
                ops::causal_attention(
                    (&s.q, &s.k, &s.v),
                    (n, hd, rep),
                    &mut s.scores,
                    &mut s.y,
                    &mut s.att,
                );
            } else {
                for head in 0..nh {
                    let g = head / rep;
                    let keys = &kc[g * cap * hd..][..(p + n) * hd];
                    let values = &vc[g * cap * hd..][..(p + n) * hd];
                    for t in 0..n {
                        let q = &s.q[(head * n + t) * hd..][..hd];
                        let live = &mut scores[..p + t + 1];
                        for (sc, k) in live.iter_mut().zip(keys.chunks_exact(hd)) {
                            *sc = q.iter().zip(k).map(|(a, b)| a * b).sum();
                        }
                        let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                        let mut sum = 0f32;
                        for v in live.iter_mut() {
                            *v = exp_f32(*v - max);
                            sum += *v;
                        }
                        let out = &mut s.att[(t * nh + head) * hd..][..hd];
                        out.fill(0.0);
                        for (&w, v) in live.iter().zip(values.chunks_exact(hd)) {
                            let w = w / sum;
                            out.iter_mut().zip(v).for_each(|(o, x)| *o += w * x);
                        }
                    }
                }
            }
            ops::matmul_wt(&s.att, n, &blk.wo, d, &mut sub);
            add_assign(&mut h, &sub);
            self.mlp(blk, &mut s, &h, &mut sub);
            add_assign(&mut h, &sub);
        }
        cache.len += n;
        h.split_off((n - 1) * d)
    }
}

/// Keys (rotated) and values of every layer for the positions decoded so far:
/// per layer, head-major `(n_kv_heads, capacity, head_dim)`.
struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Positions the buffers hold.
    capacity: usize,
    /// Positions filled.
    len: usize,
}

impl KvCache {
    fn new(info: &ModelInfo, capacity: usize) -> Self {
        let size = info.n_kv_heads * capacity * info.head_dim;
        KvCache {
            k: vec![vec![0.0; size]; info.n_layers],
            v: vec![vec![0.0; size]; info.n_layers],
            capacity,
            len: 0,
        }
    }
}

/// A caller's in-place edit of the whole batch's activation at one hook point.
type Splice<'a> = &'a mut dyn FnMut(&mut [f32]) -> Result<()>;

/// One group of contexts in a forward pass: its rows of the residual stream
/// and of the current sub-layer output, its work space, and its rows of each
/// capture buffer.
struct Group<'a> {
    h: &'a mut [f32],
    sub: &'a mut [f32],
    scratch: Scratch,
    captured: Vec<&'a mut [f32]>,
}

impl<'a> Group<'a> {
    /// Cuts the batch's buffers into groups of `per_group` contexts of `seq` tokens.
    fn split(
        info: &ModelInfo,
        seq: usize,
        per_group: usize,
        h: &'a mut [f32],
        sub: &'a mut [f32],
        captured: &'a mut [Vec<f32>],
    ) -> Vec<Group<'a>> {
        let chunk = per_group * seq * info.d_model;
        let mut groups: Vec<Group> = h
            .chunks_mut(chunk)
            .zip(sub.chunks_mut(chunk))
            .map(|(h, sub)| Group {
                scratch: Scratch::new(info, h.len() / (seq * info.d_model), seq),
                h,
                sub,
                captured: Vec::with_capacity(captured.len()),
            })
            .collect();
        for buf in captured {
            for (g, c) in groups.iter_mut().zip(buf.chunks_mut(chunk)) {
                g.captured.push(c);
            }
        }
        groups
    }
}

/// The stage of hook point `p` in execution order (see `LanguageModel::advance`).
fn stage_of(p: HookPoint) -> usize {
    4 * p.layer + HookKind::ALL.iter().position(|k| *k == p.kind).unwrap_or(0)
}

/// `h += a`, element-wise (the residual connection).
fn add_assign(h: &mut [f32], a: &[f32]) {
    h.iter_mut().zip(a).for_each(|(x, y)| *x += y);
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
