//! Fused CPU kernels for the forward pass, as candle custom ops.
//!
//! Why: with f32 weights the matmuls are ~60% of the time, and candle's
//! generic element-wise ops (silu, mul, mask add, softmax, transpose copies,
//! RoPE) each allocate and sweep their whole tensor — together ~35% of a block.
//! Each op here does one pass over its input and writes its output once:
//!
//! * [`SplitHeads`]: slices the heads out of the fused QKV projection into
//!   head-major `(batch, heads, seq, head_dim)` and applies rotary embedding on
//!   the way (replaces reshape + transpose + contiguous copy + `rope_i`);
//! * [`CausalSoftmax`]: softmax over the unmasked prefix of each score row,
//!   zeros above the diagonal (replaces mask add + softmax);
//! * [`SwiGlu`]: `silu(gate) · up` from the fused gate/up projection
//!   (replaces narrow + silu + mul).

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

/// The contiguous f32 data of an op's input.
fn contiguous_f32<'a>(op: &str, s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{op}: the input must be contiguous, found strides {:?}",
            l.stride()
        ),
    }
}

/// Extracts heads `first .. first + n` of a fused projection `(batch·seq, total_heads·head_dim)`
/// into `(batch, n, seq, head_dim)`, rotating adjacent pairs `(2i, 2i+1)` of
/// each head by the angle of its position when `rope` holds the `(seq, head_dim/2)`
/// cos and sin tables (llama.cpp's "normal" RoPE, which GGUF's permuted Q/K weights expect).
pub(crate) struct SplitHeads<'a> {
    pub batch: usize,
    pub seq: usize,
    pub head_dim: usize,
    pub first: usize,
    pub n: usize,
    pub rope: Option<(&'a [f32], &'a [f32])>,
}

impl CustomOp1 for SplitHeads<'_> {
    fn name(&self) -> &'static str {
        "split-heads-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let (rows, width) = l.shape().dims2()?;
        let (b, t, hd, n) = (self.batch, self.seq, self.head_dim, self.n);
        if rows != b * t || (self.first + n) * hd > width || hd % 2 != 0 {
            bail!(
                "split-heads: input ({rows}, {width}) does not hold heads {}..{} of width {hd} for {b}×{t} tokens",
                self.first,
                self.first + n
            )
        }
        if let Some((cos, sin)) = self.rope {
            if cos.len() < t * hd / 2 || sin.len() < t * hd / 2 {
                bail!("split-heads: rope tables shorter than {t} positions")
            }
        }
        let mut out = vec![0f32; b * n * t * hd];
        out.par_chunks_mut(t * hd)
            .enumerate()
            .for_each(|(bh, dst)| {
                let (bi, h) = (bh / n, bh % n);
                let col = (self.first + h) * hd;
                for (ti, d) in dst.chunks_exact_mut(hd).enumerate() {
                    let src = &x[(bi * t + ti) * width + col..][..hd];
                    match self.rope {
                        None => d.copy_from_slice(src),
                        Some((cos, sin)) => {
                            let (c, s) =
                                (&cos[ti * hd / 2..][..hd / 2], &sin[ti * hd / 2..][..hd / 2]);
                            for i in 0..hd / 2 {
                                let (x0, x1) = (src[2 * i], src[2 * i + 1]);
                                d[2 * i] = x0 * c[i] - x1 * s[i];
                                d[2 * i + 1] = x0 * s[i] + x1 * c[i];
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, n, t, hd))))
    }
}

/// Row-wise softmax of attention scores whose last dimension is the key
/// position and whose rows cycle through query positions `0..seq` (any
/// leading shape): row `r` attends to keys `0..=r % seq`; later keys get 0.
pub(crate) struct CausalSoftmax {
    pub seq: usize,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let t = self.seq;
        let dims = l.shape().dims();
        if dims.last() != Some(&t) || dims.len() < 2 || !dims[dims.len() - 2].is_multiple_of(t) {
            bail!("causal-softmax: expected (..., k·{t}, {t}) scores, found {dims:?}")
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(t)
            .zip(x.par_chunks(t))
            .enumerate()
            .for_each(|(r, (dst, src))| {
                let n = r % t + 1;
                let max = src[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (d, &v) in dst[..n].iter_mut().zip(&src[..n]) {
                    *d = (v - max).exp();
                    sum += *d;
                }
                let inv = 1.0 / sum;
                dst[..n].iter_mut().for_each(|d| *d *= inv);
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `silu(gate) · up` of a fused projection `(rows, 2·d_ff)` laid out `[gate | up]`,
/// giving `(rows, d_ff)`.
pub(crate) struct SwiGlu;

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(self.name(), s, l)?;
        let (rows, width) = l.shape().dims2()?;
        if width % 2 != 0 {
            bail!("swiglu: expected (rows, 2·d_ff), found ({rows}, {width})")
        }
        let f = width / 2;
        let mut out = vec![0f32; rows * f];
        out.par_chunks_mut(f)
            .zip(x.par_chunks(width))
            .for_each(|(dst, src)| {
                let (gate, up) = src.split_at(f);
                for ((d, &g), &u) in dst.iter_mut().zip(gate).zip(up) {
                    *d = g / (1.0 + (-g).exp()) * u;
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((rows, f))))
    }
}
