//! Sequential CPU kernels of one transformer block on plain row-major f32
//! buffers.
//!
//! Why sequential: the forward pass runs independent groups of contexts on
//! different threads (see `model.rs`), so every kernel here is single-threaded
//! and owns its core. On these skinny products (a few hundred rows, 576-wide)
//! a multi-threaded GEMM mostly waits on its own synchronisation, while two
//! sequential ones side by side each keep near single-thread speed.
//!
//! Each kernel does one pass over its input and writes its output once into
//! a caller-owned buffer, so a block allocates nothing.

use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};
use sparse_core::linalg::exp_f32;

/// `y = x · wᵀ` on one thread, for `x` `(rows, k)` and a weight `w` stored as
/// llama.cpp does, `(n, k)` (output-major), giving `y` `(rows, n)`; all row-major.
///
/// Not `sparse_core::linalg::gemm_into`: that one goes parallel above a size,
/// and here the parallelism is already across context groups.
pub(crate) fn matmul_wt(x: &[f32], rows: usize, w: &[f32], n: usize, y: &mut [f32]) {
    let k = w.len() / n;
    let a = MatRef::from_row_major_slice(&x[..rows * k], rows, k);
    let b = MatRef::from_row_major_slice(w, n, k).transpose();
    let dst = MatMut::from_row_major_slice_mut(&mut y[..rows * n], rows, n);
    matmul(dst, Accum::Replace, a, b, 1.0, Par::Seq);
}

/// RMSNorm of each `weight.len()`-wide row of `x` into `out`:
/// `x / sqrt(mean(x²) + eps) · weight`.
pub(crate) fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (dst, src) in out.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
        let ms = src.iter().map(|v| v * v).sum::<f32>() / d as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &w) in dst.iter_mut().zip(src).zip(weight) {
            *o = v * inv * w;
        }
    }
}

/// Copies heads `first .. first + n` of one context's fused projection
/// `(seq, width)` into head-major `(n, seq, head_dim)`, rotating adjacent pairs
/// `(2i, 2i+1)` of each head by the angle of its position when `rope` holds the
/// `(seq, head_dim/2)` cos and sin tables (llama.cpp's "normal" RoPE, which
/// GGUF's permuted Q/K weights expect).
pub(crate) fn split_heads(
    x: &[f32],
    width: usize,
    head_dim: usize,
    first: usize,
    rope: Option<(&[f32], &[f32])>,
    out: &mut [f32],
) {
    let seq = x.len() / width;
    let half = head_dim / 2;
    for (h, dst) in out.chunks_exact_mut(seq * head_dim).enumerate() {
        let col = (first + h) * head_dim;
        for (t, d) in dst.chunks_exact_mut(head_dim).enumerate() {
            let src = &x[t * width + col..][..head_dim];
            match rope {
                None => d.copy_from_slice(src),
                Some((cos, sin)) => {
                    let (c, s) = (&cos[t * half..][..half], &sin[t * half..][..half]);
                    for i in 0..half {
                        let (x0, x1) = (src[2 * i], src[2 * i + 1]);
                        d[2 * i] = x0 * c[i] - x1 * s[i];
                        d[2 * i + 1] = x0 * s[i] + x1 * c[i];
                    }
                }
            }
        }
    }
}

/// Causal attention of one context: head-major `q` `(n_heads, seq, head_dim)`,
/// `k` and `v` `(n_kv_heads, seq, head_dim)`, `rep = n_heads / n_kv_heads`
/// (grouped-query attention: query head `h` uses KV head `h / rep`). Writes
/// `out` `(seq, n_heads·head_dim)` row-major. `scores` (`rep·seq·seq` floats)
/// and `y` (`rep·seq·head_dim`) are work space. The 1/√head_dim scale is
/// already folded into `q`.
pub(crate) fn causal_attention(
    (q, k, v): (&[f32], &[f32], &[f32]),
    (seq, head_dim, rep): (usize, usize, usize),
    scores: &mut [f32],
    y: &mut [f32],
    out: &mut [f32],
) {
    let group = seq * head_dim;
    let width = q.len() / seq;
    let (scores, y) = (&mut scores[..rep * seq * seq], &mut y[..rep * group]);
    for (g, (kg, vg)) in k.chunks_exact(group).zip(v.chunks_exact(group)).enumerate() {
        // The `rep` query heads of this KV head are contiguous in `q` and share
        // K and V: one `(rep·seq, head_dim)·(head_dim, seq)` product scores
        // them all, one `(rep·seq, seq)·(seq, head_dim)` product mixes V.
        let qg =
            MatRef::from_row_major_slice(&q[g * rep * group..][..rep * group], rep * seq, head_dim);
        let kg = MatRef::from_row_major_slice(kg, seq, head_dim);
        let vg = MatRef::from_row_major_slice(vg, seq, head_dim);
        let dst = MatMut::from_row_major_slice_mut(scores, rep * seq, seq);
        matmul(dst, Accum::Replace, qg, kg.transpose(), 1.0, Par::Seq);
        causal_softmax(scores, seq);
        let p = MatRef::from_row_major_slice(scores, rep * seq, seq);
        let dst = MatMut::from_row_major_slice_mut(y, rep * seq, head_dim);
        matmul(dst, Accum::Replace, p, vg, 1.0, Par::Seq);
        // Scatter head rows into `out`'s columns. (A row-strided destination
        // straight in the matmul corrupted the heap with faer 0.24.4.)
        for (r, src) in y.chunks_exact(head_dim).enumerate() {
            let (head, t) = (g * rep + r / seq, r % seq);
            out[t * width + head * head_dim..][..head_dim].copy_from_slice(src);
        }
    }
}

/// In-place softmax of the `(rep·seq, seq)` scores of one KV head, whose rows
/// cycle through query positions `0..seq`: row `r` attends to keys
/// `0..=r % seq`; later keys are set to 0 (the causal mask).
pub(crate) fn causal_softmax(scores: &mut [f32], seq: usize) {
    for (r, row) in scores.chunks_exact_mut(seq).enumerate() {
        let n = r % seq + 1;
        let (live, masked) = row.split_at_mut(n);
        let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for v in live.iter_mut() {
            *v = exp_f32(*v - max);
            sum += *v;
        }
        let inv = 1.0 / sum;
        live.iter_mut().for_each(|v| *v *= inv);
        masked.fill(0.0);
    }
}

/// `silu(gate) · up` of a fused projection `(rows, 2·d_ff)` laid out
/// `[gate | up]`, into `out` `(rows, d_ff)`.
pub(crate) fn swiglu(x: &[f32], d_ff: usize, out: &mut [f32]) {
    for (dst, src) in out.chunks_exact_mut(d_ff).zip(x.chunks_exact(2 * d_ff)) {
        let (gate, up) = src.split_at(d_ff);
        for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
            *d = g / (1.0 + exp_f32(-g)) * u;
        }
    }
}
