//! Products with a narrow output (at most [`MAX_COLS`] columns) and fewer
//! multiply-adds than the parallel threshold: the shapes of the synthetic
//! studies (1024 × 8 · 8 × 16, 8 × 1024 · 1024 × 16, …), where a general GEMM
//! spends most of its time packing and dispatching (`docs/benchmarks.md`).
//!
//! Every output element is `Σ_k a[i,k]·b[k,j]` summed over `k` in order in
//! one f32 register lane, so the result does not depend on how the output is
//! tiled; it is computed with FMA where the CPU has it (runtime detection:
//! zmm tiles with AVX-512, ymm tiles with AVX2, the same bits either way)
//! and with a multiply and an add elsewhere. An [`Epilogue`] (bias + ReLU,
//! ReLU mask) runs in the tiles' stores.

use super::epilogue::{mask, relu, Epilogue};
use faer::{MatMut, MatRef};
use std::mem::MaybeUninit;

/// Widest output (columns of `b`) this kernel takes.
pub(super) const MAX_COLS: usize = 64;

/// Largest `k × n` right operand copied into a contiguous stack buffer when
/// its rows are not contiguous (`Dᵀ` views); 16 KiB, an L1 cache's worth.
const PACK_CAPACITY: usize = 4096;

/// Rows of `a` (and of the output) one tile holds in registers.
const TILE_ROWS: usize = 4;

/// A read-only strided operand.
#[derive(Clone, Copy)]
struct Strided {
    ptr: *const f32,
    row_stride: isize,
    col_stride: isize,
}

/// `dst = alpha · a · b (+ dst when accumulate)`, then the epilogue, when
/// the shapes suit this kernel (see [`applies`] and [`by_transpose`]);
/// returns `false`, touching nothing, otherwise. The caller has checked the
/// epilogue's shape and [`Epilogue::fits_small_kernel`].
pub(super) fn try_gemm(
    dst: MatMut<'_, f32>,
    accumulate: bool,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    epilogue: Option<Epilogue<'_>>,
) -> bool {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    debug_assert_eq!((b.nrows(), dst.nrows(), dst.ncols()), (k, m, n));
    debug_assert!(epilogue.is_none_or(|e| e.fits_small_kernel()));
    let finish = Finish::from(epilogue);
    if dst.col_stride() == 1 && by_transpose(m, k, n, a.row_stride()) {
        transposed(dst, accumulate, a, b, alpha, finish);
        return true;
    }
    if !applies(dst.col_stride(), b.col_stride(), k, n) {
        return false;
    }
    let a = Strided {
        ptr: a.as_ptr(),
        row_stride: a.row_stride(),
        col_stride: a.col_stride(),
    };
    let mut packed = MaybeUninit::<[f32; PACK_CAPACITY]>::uninit();
    let b = if b.col_stride() == 1 {
        Strided {
            ptr: b.as_ptr(),
            row_stride: b.row_stride(),
            col_stride: 1,
        }
    } else {
        // Row-major copy: `applies` checked that `k·n` fits.
        let buf = packed.as_mut_ptr() as *mut f32;
        for kk in 0..k {
            for j in 0..n {
                // SAFETY: kk < k, j < n index inside `b`; kk·n + j < k·n ≤ capacity.
                unsafe { buf.add(kk * n + j).write(*b.get_unchecked(kk, j)) };
            }
        }
        Strided {
            ptr: buf,
            row_stride: n as isize,
            col_stride: 1,
        }
    };
    let out = Output {
        ptr: dst.as_ptr_mut(),
        row_stride: dst.row_stride(),
        accumulate,
        alpha,
        finish,
    };
    // SAFETY: the pointers and strides describe `m × k`, `k × n` and `m × n`
    // matrices that live for this call (the gate too); `b`, `dst` and the
    // gate have unit column stride.
    unsafe { dispatch(m, k, n, a, b, out) };
    true
}

/// Whether an `m × k · k × n` product with `a`'s rows `a_row_stride` apart
/// runs faster as `(bᵀ · aᵀ)ᵀ`: an output at most 8 wide but 16–64 tall
/// over a deep, column-major `a` (the learned-dictionary study's
/// `∂D = Zᵀ·R`, 16 × 1024 × 8). Its 8-wide tiles load nine values per
/// eight FMAs; the transposed product's 16-wide tiles load six, from `a`'s
/// contiguous columns (one core, 32 × 1024 × 8: 7.9 → 5.1 µs).
fn by_transpose(m: usize, k: usize, n: usize, a_row_stride: isize) -> bool {
    n <= 8 && (16..=MAX_COLS).contains(&m) && k >= 64 && a_row_stride == 1
}

/// `dst = alpha · a · b (+ dst)` as `(bᵀ · aᵀ)ᵀ` (see [`by_transpose`]):
/// the product into a buffer, then written to `dst` as the tiles would have
/// (`alpha·s`, plus `dst` when accumulating, then the epilogue). Each output
/// is still summed over `k` in order in one lane, so the bits are those of
/// the direct product.
fn transposed(
    mut dst: MatMut<'_, f32>,
    accumulate: bool,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    finish: Finish,
) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let mut buf = [0.0f32; 8 * MAX_COLS];
    debug_assert!(n <= 8 && m <= MAX_COLS);
    let left = Strided {
        ptr: b.as_ptr(),
        row_stride: b.col_stride(),
        col_stride: b.row_stride(),
    };
    let right = Strided {
        ptr: a.as_ptr(),
        row_stride: a.col_stride(),
        col_stride: 1,
    };
    let out = Output {
        ptr: buf.as_mut_ptr(),
        row_stride: m as isize,
        accumulate: false,
        alpha: 1.0,
        finish: Finish::Store,
    };
    // SAFETY: `left` is `bᵀ (n × k)`, `right` is `aᵀ (k × m)` with unit
    // column stride (`by_transpose` checked `a`'s unit row stride), and
    // `buf` holds the `n × m` result (n ≤ 8, m ≤ MAX_COLS).
    unsafe { dispatch(n, k, m, left, right, out) };
    for i in 0..m {
        for (j, d) in dst.as_mut().row_mut(i).iter_mut().enumerate() {
            let s = buf[j * m + i];
            let value = if alpha == 1.0 { s } else { alpha * s };
            let value = if accumulate { value + *d } else { value };
            // SAFETY: (i, j) is inside the output, so inside the gate.
            *d = unsafe { finish.scalar(value, i, j) };
        }
    }
}

/// Whether the kernel takes a product: unit column stride of the output,
/// at most [`MAX_COLS`] output columns, and a right operand that is row-major
/// already or small enough to pack.
fn applies(dst_col_stride: isize, b_col_stride: isize, k: usize, n: usize) -> bool {
    dst_col_stride == 1 && n <= MAX_COLS && (b_col_stride == 1 || k * n <= PACK_CAPACITY)
}

/// Where the result goes and how.
#[derive(Clone, Copy)]
struct Output {
    ptr: *mut f32,
    row_stride: isize,
    accumulate: bool,
    alpha: f32,
    finish: Finish,
}

/// An [`Epilogue`] as the tiles apply it, by pointer.
#[derive(Clone, Copy)]
enum Finish {
    /// Store the value.
    Store,
    /// [`Epilogue::BiasRelu`]; a null `bias` for none.
    BiasRelu { bias: *const f32 },
    /// [`Epilogue::ReluMask`] with the gate's rows `row_stride` apart.
    ReluMask { gate: *const f32, row_stride: isize },
}

impl From<Option<Epilogue<'_>>> for Finish {
    fn from(epilogue: Option<Epilogue<'_>>) -> Self {
        match epilogue {
            None => Finish::Store,
            Some(Epilogue::BiasRelu(bias)) => Finish::BiasRelu {
                bias: bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
            },
            Some(Epilogue::ReluMask(gate)) => Finish::ReluMask {
                gate: gate.as_ptr(),
                row_stride: gate.row_stride(),
            },
        }
    }
}

impl Output {
    /// The output from column `j` on (its first `j` columns left out).
    ///
    /// # Safety
    /// `j` must be at most the output's width.
    unsafe fn skip_columns(self, j: usize) -> Output {
        let finish = match self.finish {
            Finish::Store => Finish::Store,
            Finish::BiasRelu { bias } if bias.is_null() => Finish::BiasRelu { bias },
            Finish::BiasRelu { bias } => Finish::BiasRelu { bias: bias.add(j) },
            Finish::ReluMask { gate, row_stride } => Finish::ReluMask {
                gate: gate.add(j),
                row_stride,
            },
        };
        Output {
            ptr: self.ptr.add(j),
            finish,
            ..self
        }
    }
}

impl Finish {
    /// The epilogue of output `(i, j)`, one value at a time.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the output (so inside the bias and the gate).
    #[inline(always)]
    unsafe fn scalar(self, value: f32, i: usize, j: usize) -> f32 {
        match self {
            Finish::Store => value,
            Finish::BiasRelu { bias } if bias.is_null() => relu(value),
            Finish::BiasRelu { bias } => relu(value + *bias.add(j)),
            Finish::ReluMask { gate, row_stride } => {
                mask(value, *gate.offset(i as isize * row_stride + j as isize))
            }
        }
    }
}

/// Runs the AVX-512 build where the CPU has AVX-512F, the AVX2 one where it
/// has AVX2 and FMA, the portable one elsewhere.
unsafe fn dispatch(m: usize, k: usize, n: usize, a: Strided, b: Strided, out: Output) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        if std::is_x86_feature_detected!("avx512f") {
            return product_avx512(m, k, n, a, b, out);
        }
        return product_avx2_fma(m, k, n, a, b, out);
    }
    product::<false>(m, k, n, a, b, out)
}

/// The AVX-512 build: strips of 32 columns in tiles of 12 rows, then of 16
/// columns in tiles of 16 rows (24 or 16 of the 32 zmm registers as
/// accumulators: a broadcast of `a` feeds two or one FMAs, a load of `b`
/// twelve or sixteen), shorter tiles at the bottom edge; the last `n mod 16`
/// columns through the AVX2 build. Each output is still one lane's FMA
/// chain over `k` in order: the bits of the AVX2 build.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn product_avx512(m: usize, k: usize, n: usize, a: Strided, b: Strided, out: Output) {
    let mut j = 0;
    while j + 32 <= n {
        rows_avx512::<12, 2>(m, j, k, a, b, out);
        j += 32;
    }
    if j + 16 <= n {
        rows_avx512::<16, 1>(m, j, k, a, b, out);
        j += 16;
    }
    if j < n {
        let b = Strided {
            ptr: b.ptr.add(j),
            ..b
        };
        product_avx2_fma(m, k, n - j, a, b, out.skip_columns(j));
    }
}

/// All `m` rows of the `16·V` columns at `j`: tiles of `H` rows, then of
/// 8, 4 and 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn rows_avx512<const H: usize, const V: usize>(
    m: usize,
    j: usize,
    k: usize,
    a: Strided,
    b: Strided,
    out: Output,
) {
    let mut i = 0;
    while i + H <= m {
        tile_avx512::<H, V>(i, j, k, a, b, out);
        i += H;
    }
    while i + 8 <= m {
        tile_avx512::<8, V>(i, j, k, a, b, out);
        i += 8;
    }
    while i + 4 <= m {
        tile_avx512::<4, V>(i, j, k, a, b, out);
        i += 4;
    }
    while i < m {
        tile_avx512::<1, V>(i, j, k, a, b, out);
        i += 1;
    }
}

/// `R` rows × `16·V` columns at `(i0, j0)`, accumulated over all of `k`;
/// the zmm twin of [`tile_avx2`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512<const R: usize, const V: usize>(
    i0: usize,
    j0: usize,
    k: usize,
    a: Strided,
    b: Strided,
    out: Output,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    let mut a_col = a.ptr.offset(i0 as isize * a.row_stride);
    let mut b_row = b.ptr.add(j0);
    for _ in 0..k {
        let b_k: [__m512; V] = std::array::from_fn(|v| _mm512_loadu_ps(b_row.add(16 * v)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let a_ik = _mm512_set1_ps(*a_col.offset(r as isize * a.row_stride));
            for (s, &b_kv) in acc_r.iter_mut().zip(&b_k) {
                *s = _mm512_fmadd_ps(a_ik, b_kv, *s);
            }
        }
        a_col = a_col.offset(a.col_stride);
        b_row = b_row.offset(b.row_stride);
    }
    // In passes with small bodies, so that LLVM unrolls each and keeps
    // `acc` in registers (one loop with the whole epilogue stays a loop, and
    // the accumulators go through the stack on every step of `k`).
    if out.alpha != 1.0 {
        let alpha = _mm512_set1_ps(out.alpha);
        acc.iter_mut()
            .flatten()
            .for_each(|s| *s = _mm512_mul_ps(alpha, *s));
    }
    let at = |r: usize, v: usize| (i0 + r) as isize * out.row_stride + (j0 + 16 * v) as isize;
    if out.accumulate {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            for (v, s) in acc_r.iter_mut().enumerate() {
                *s = _mm512_add_ps(*s, _mm512_loadu_ps(out.ptr.offset(at(r, v))));
            }
        }
    }
    // The rules of `relu` and `mask`, sixteen at a time.
    let zero = _mm512_setzero_ps();
    match out.finish {
        Finish::Store => {}
        Finish::BiasRelu { bias } => {
            for acc_r in acc.iter_mut() {
                for (v, s) in acc_r.iter_mut().enumerate() {
                    if !bias.is_null() {
                        *s = _mm512_add_ps(*s, _mm512_loadu_ps(bias.add(j0 + 16 * v)));
                    }
                    *s = _mm512_max_ps(*s, zero);
                }
            }
        }
        Finish::ReluMask { gate, row_stride } => {
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let gate_row = gate.offset((i0 + r) as isize * row_stride + j0 as isize);
                for (v, s) in acc_r.iter_mut().enumerate() {
                    let g = _mm512_loadu_ps(gate_row.add(16 * v));
                    *s = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_NLE_UQ>(g, zero), *s);
                }
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate() {
        for (v, &s) in acc_r.iter().enumerate() {
            _mm512_storeu_ps(out.ptr.offset(at(r, v)), s);
        }
    }
}

/// The AVX2 build: tiles of 6 rows × 16 columns or 8 rows × 8 columns held
/// in 12 or 8 ymm registers (enough independent FMA chains to hide the FMA
/// latency), smaller tiles at the bottom edge, the last `n mod 8` columns
/// through the portable tiles compiled with FMA. Written with intrinsics:
/// the portable tile's array spills to the stack or narrows to xmm.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn product_avx2_fma(m: usize, k: usize, n: usize, a: Strided, b: Strided, out: Output) {
    let (tall_16, tall_8) = (tall_rows(m, 6), tall_rows(m, 8));
    let mut j = 0;
    while j + 16 <= n {
        let mut i = 0;
        while i < tall_16 {
            tile_avx2::<6, 2>(i, j, k, a, b, out);
            i += 6;
        }
        rows_avx2::<2>(i, m, j, k, a, b, out);
        j += 16;
    }
    if j + 8 <= n {
        let mut i = 0;
        while i < tall_8 {
            tile_avx2::<8, 1>(i, j, k, a, b, out);
            i += 8;
        }
        rows_avx2::<1>(i, m, j, k, a, b, out);
        j += 8;
    }
    if j < n {
        for i in 0..m {
            columns_from::<1, true>(i, j, k, n, a, b, out);
        }
    }
}

/// How many of `m` rows to cover with tall tiles of `height` rows (12 or 8
/// accumulators, enough FMA chains to hide the latency), leaving the rest
/// to 4-row tiles and as few of the slow one-row tiles as can be: with
/// `m / height` tall tiles a 32-row `∂W = Xᵀ·δ` would leave 2 one-row
/// tiles (6 × 5 + 2), with 4 it leaves none (6 × 4 + 4 × 2).
fn tall_rows(m: usize, height: usize) -> usize {
    let most = m / height;
    (most.saturating_sub(3)..=most)
        .min_by_key(|&t| ((m - t * height) % 4, std::cmp::Reverse(t)))
        .map_or(0, |t| t * height)
}

/// Rows `i0..m` of the `8·V` columns at `j`: tiles of 4 rows, then of 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2<const V: usize>(
    i0: usize,
    m: usize,
    j: usize,
    k: usize,
    a: Strided,
    b: Strided,
    out: Output,
) {
    let mut i = i0;
    while i + 4 <= m {
        tile_avx2::<4, V>(i, j, k, a, b, out);
        i += 4;
    }
    while i < m {
        tile_avx2::<1, V>(i, j, k, a, b, out);
        i += 1;
    }
}

/// `R` rows × `8·V` columns at `(i0, j0)`, accumulated over all of `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2<const R: usize, const V: usize>(
    i0: usize,
    j0: usize,
    k: usize,
    a: Strided,
    b: Strided,
    out: Output,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    let mut a_col = a.ptr.offset(i0 as isize * a.row_stride);
    let mut b_row = b.ptr.add(j0);
    for _ in 0..k {
        let b_k: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(b_row.add(8 * v)));
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let a_ik = _mm256_broadcast_ss(&*a_col.offset(r as isize * a.row_stride));
            for (s, &b_kv) in acc_r.iter_mut().zip(&b_k) {
                *s = _mm256_fmadd_ps(a_ik, b_kv, *s);
            }
        }
        a_col = a_col.offset(a.col_stride);
        b_row = b_row.offset(b.row_stride);
    }
    // No multiply by an alpha of 1 (1·s is s): with a depth of 8 or 16 the
    // tile's own FMAs are few, and the multiplies compete for their ports.
    let alpha = (out.alpha != 1.0).then(|| _mm256_set1_ps(out.alpha));
    let zero = _mm256_setzero_ps();
    for (r, acc_r) in acc.iter().enumerate() {
        let i = i0 + r;
        let dst = out.ptr.offset(i as isize * out.row_stride + j0 as isize);
        for (v, &s) in acc_r.iter().enumerate() {
            let (d, j) = (dst.add(8 * v), j0 + 8 * v);
            let mut value = alpha.map_or(s, |alpha| _mm256_mul_ps(alpha, s));
            if out.accumulate {
                value = _mm256_add_ps(value, _mm256_loadu_ps(d));
            }
            // The rules of `relu` and `mask`, eight at a time.
            value = match out.finish {
                Finish::Store => value,
                Finish::BiasRelu { bias } => {
                    if !bias.is_null() {
                        value = _mm256_add_ps(value, _mm256_loadu_ps(bias.add(j)));
                    }
                    _mm256_max_ps(value, zero)
                }
                Finish::ReluMask { gate, row_stride } => {
                    let g = _mm256_loadu_ps(gate.offset(i as isize * row_stride + j as isize));
                    _mm256_and_ps(_mm256_cmp_ps::<_CMP_NLE_UQ>(g, zero), value)
                }
            };
            _mm256_storeu_ps(d, value);
        }
    }
}

/// The whole product, tile by tile: blocks of [`TILE_ROWS`] rows, then single
/// rows; within them blocks of 16, then 8, then 1 column.
#[inline(always)]
unsafe fn product<const FMA: bool>(
    m: usize,
    k: usize,
    n: usize,
    a: Strided,
    b: Strided,
    out: Output,
) {
    let mut i = 0;
    while i + TILE_ROWS <= m {
        row_block::<TILE_ROWS, FMA>(i, k, n, a, b, out);
        i += TILE_ROWS;
    }
    while i < m {
        row_block::<1, FMA>(i, k, n, a, b, out);
        i += 1;
    }
}

#[inline(always)]
unsafe fn row_block<const R: usize, const FMA: bool>(
    i0: usize,
    k: usize,
    n: usize,
    a: Strided,
    b: Strided,
    out: Output,
) {
    columns_from::<R, FMA>(i0, 0, k, n, a, b, out)
}

/// The columns `j0..n` of the rows `i0..i0 + R`.
#[inline(always)]
unsafe fn columns_from<const R: usize, const FMA: bool>(
    i0: usize,
    j0: usize,
    k: usize,
    n: usize,
    a: Strided,
    b: Strided,
    out: Output,
) {
    let mut j = j0;
    while j + 16 <= n {
        tile::<R, 16, FMA>(i0, j, k, a, b, out);
        j += 16;
    }
    while j + 8 <= n {
        tile::<R, 8, FMA>(i0, j, k, a, b, out);
        j += 8;
    }
    while j < n {
        tile::<R, 1, FMA>(i0, j, k, a, b, out);
        j += 1;
    }
}

/// `R × W` outputs at `(i0, j0)` in registers, accumulated over all of `k`.
#[inline(always)]
unsafe fn tile<const R: usize, const W: usize, const FMA: bool>(
    i0: usize,
    j0: usize,
    k: usize,
    a: Strided,
    b: Strided,
    out: Output,
) {
    let mut acc = [[0.0f32; W]; R];
    for kk in 0..k {
        let b_row = (b.ptr.offset(kk as isize * b.row_stride + j0 as isize) as *const [f32; W])
            .read_unaligned();
        for (r, acc_row) in acc.iter_mut().enumerate() {
            let a_ik = *a
                .ptr
                .offset((i0 + r) as isize * a.row_stride + kk as isize * a.col_stride);
            for (s, &b_kj) in acc_row.iter_mut().zip(&b_row) {
                *s = if FMA {
                    a_ik.mul_add(b_kj, *s)
                } else {
                    a_ik * b_kj + *s
                };
            }
        }
    }
    for (r, acc_row) in acc.iter().enumerate() {
        let dst = out
            .ptr
            .offset((i0 + r) as isize * out.row_stride + j0 as isize);
        for (c, &s) in acc_row.iter().enumerate() {
            let d = dst.add(c);
            let value = if out.accumulate {
                out.alpha * s + *d
            } else {
                out.alpha * s
            };
            *d = out.finish.scalar(value, i0 + r, j0 + c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{filled, Problem, SPECIAL};
    use super::*;
    use crate::matrix::Matrix;
    use proptest::prelude::*;

    /// Runs one product through the kernel, with either operand stored
    /// transposed, and checks it against the f64 reference.
    fn check(m: usize, k: usize, n: usize, a_t: bool, b_t: bool, acc: bool, alpha: f32) {
        let p = Problem::new(m, k, n);
        let (a_view, b_view) = (p.a_view(a_t), p.b_view(b_t));
        let mut c = p.c0.clone();
        let taken = try_gemm(c.view_mut(), acc, a_view, b_view, alpha, None);
        let routed = by_transpose(m, k, n, a_view.row_stride());
        assert_eq!(taken, routed || applies(1, b_view.col_stride(), k, n));
        if taken {
            p.assert_result(&c, alpha, acc, &format!("a_t={a_t} b_t={b_t}"));
        }
    }

    #[test]
    fn the_study_shapes_match_the_f64_reference() {
        // Encode, decode, ∂Z = G·Dᵀ, ∂W = Xᵀ·δ at N = 16, M = 8, hidden 32.
        for (m, k, n, a_t, b_t) in [
            (1024, 8, 16, false, false),
            (1024, 16, 8, false, false),
            (1024, 8, 16, false, true),
            (8, 1024, 16, true, false),
            (32, 1024, 16, true, false),
            (1024, 16, 32, false, true),
        ] {
            check(m, k, n, a_t, b_t, false, 1.0);
            check(m, k, n, a_t, b_t, true, -0.5);
        }
    }

    #[test]
    fn the_transposed_route_gives_the_bits_of_the_direct_one() {
        for (m, k, n) in [(32, 1024, 8), (16, 64, 3), (64, 100, 8)] {
            assert!(by_transpose(m, k, n, 1));
            let p = Problem::new(m, k, n);
            let a = p.a_view(true);
            for (b_t, accumulate, alpha) in [(false, false, 1.0), (true, true, -0.75)] {
                let mut routed = p.c0.clone();
                assert!(try_gemm(
                    routed.view_mut(),
                    accumulate,
                    a,
                    p.b_view(b_t),
                    alpha,
                    None
                ));
                let mut direct = p.c0.clone();
                let b = p.b_view(false);
                let out = Output {
                    ptr: direct.view_mut().as_ptr_mut(),
                    row_stride: n as isize,
                    accumulate,
                    alpha,
                    finish: Finish::Store,
                };
                let (sa, sb) = (
                    Strided {
                        ptr: a.as_ptr(),
                        row_stride: a.row_stride(),
                        col_stride: a.col_stride(),
                    },
                    Strided {
                        ptr: b.as_ptr(),
                        row_stride: b.row_stride(),
                        col_stride: 1,
                    },
                );
                // SAFETY: the strides describe `a`, `b` and `direct` exactly.
                unsafe { dispatch(m, k, n, sa, sb, out) };
                assert_eq!(
                    routed.as_slice(),
                    direct.as_slice(),
                    "{m}×{k}×{n}, b_t={b_t}"
                );
                p.assert_result(&routed, alpha, accumulate, "transposed route");
            }
        }
        // Not taken: a row-major `a`, a wide or a short output, a shallow `k`.
        assert!(!by_transpose(32, 1024, 8, 1024));
        assert!(!by_transpose(32, 1024, 9, 1));
        assert!(!by_transpose(8, 1024, 8, 1));
        assert!(!by_transpose(32, 16, 8, 1));
    }

    #[test]
    fn tall_tiles_leave_as_few_single_rows_as_can_be() {
        for (m, height, rows) in [
            (1024, 6, 1020),
            (32, 6, 24),
            (16, 6, 12),
            (8, 6, 0),
            (7, 6, 6),
            (5, 6, 0),
            (32, 8, 32),
            (1024, 8, 1024),
            (12, 8, 8),
        ] {
            assert_eq!(tall_rows(m, height), rows, "m = {m}, height {height}");
        }
    }

    #[test]
    fn tiling_does_not_change_a_bit() {
        // Every tile size against one-row products (one-row tiles only).
        for (m, k, n, a_t) in [
            (32, 1024, 8, true),
            (16, 1024, 32, true),
            (1030, 16, 24, false),
        ] {
            let p = Problem::new(m, k, n);
            let (a, b) = (p.a_view(a_t), p.b_view(false));
            let mut whole = Matrix::zeros(m, n);
            assert!(try_gemm(whole.view_mut(), false, a, b, 1.0, None));
            for i in 0..m {
                let mut row = Matrix::zeros(1, n);
                assert!(try_gemm(
                    row.view_mut(),
                    false,
                    a.subrows(i, 1),
                    b,
                    1.0,
                    None
                ));
                assert_eq!(row.as_slice(), whole.row(i), "row {i} of {m}×{k}×{n}");
            }
        }
    }

    /// Every epilogue fused into the stores gives the bits of the product
    /// followed by the epilogue's own pass: in the AVX2 tiles of each height,
    /// the portable tiles of the last `n mod 8` columns, the transposed
    /// route and the portable build; with a gate and a bias holding zeros
    /// of both signs, NaN and infinities, and with a negative alpha and
    /// accumulation (which can make −0).
    #[test]
    fn fused_epilogues_give_the_bits_of_a_separate_pass() {
        for (m, k, n, a_t) in [
            (1024, 8, 32, false),
            (1024, 16, 32, false),
            (37, 9, 27, false),
            (32, 1024, 8, true),
            (5, 3, 1, false),
        ] {
            let p = Problem::new(m, k, n);
            let (a, b) = (p.a_view(a_t), p.b_view(false));
            let gate = Matrix::from_fn(m, n, |i, j| SPECIAL[(i * 7 + j) % 8]);
            let bias: Vec<f32> = (0..n)
                .map(|j| {
                    if j % 5 == 4 {
                        SPECIAL[j % 8]
                    } else {
                        0.1 * j as f32 - 1.0
                    }
                })
                .collect();
            for epilogue in [
                Epilogue::BiasRelu(None),
                Epilogue::BiasRelu(Some(&bias)),
                Epilogue::ReluMask(gate.view()),
            ] {
                for (accumulate, alpha) in [(false, 1.0), (true, -0.5)] {
                    let what = format!("{m}×{k}×{n} {epilogue:?} acc={accumulate}");
                    let mut separate = p.c0.clone();
                    assert!(try_gemm(separate.view_mut(), accumulate, a, b, alpha, None));
                    epilogue.apply(separate.view_mut());
                    let mut fused = p.c0.clone();
                    assert!(try_gemm(
                        fused.view_mut(),
                        accumulate,
                        a,
                        b,
                        alpha,
                        Some(epilogue)
                    ));
                    let bits =
                        |c: &Matrix| c.as_slice().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&fused), bits(&separate), "{what}");
                    if a_t {
                        continue;
                    }
                    // The portable build, tile by tile, with the same rule.
                    let mut portable = p.c0.clone();
                    let out = Output {
                        ptr: portable.view_mut().as_ptr_mut(),
                        row_stride: n as isize,
                        accumulate,
                        alpha,
                        finish: Finish::from(Some(epilogue)),
                    };
                    let (sa, sb) = (
                        Strided {
                            ptr: a.as_ptr(),
                            row_stride: k as isize,
                            col_stride: 1,
                        },
                        Strided {
                            ptr: b.as_ptr(),
                            row_stride: n as isize,
                            col_stride: 1,
                        },
                    );
                    // SAFETY: the strides describe `a`, `b`, `portable` and the gate.
                    unsafe { product::<false>(m, k, n, sa, sb, out) };
                    let mut plain = p.c0.clone();
                    let out = Output {
                        ptr: plain.view_mut().as_ptr_mut(),
                        finish: Finish::Store,
                        ..out
                    };
                    // SAFETY: as above.
                    unsafe { product::<false>(m, k, n, sa, sb, out) };
                    epilogue.apply(plain.view_mut());
                    assert_eq!(bits(&portable), bits(&plain), "portable {what}");
                }
            }
        }
    }

    #[test]
    fn wide_outputs_and_strided_outputs_are_left_to_faer() {
        let a = filled(4, 3, 1);
        let b = filled(3, MAX_COLS + 1, 2);
        let mut c = Matrix::zeros(4, MAX_COLS + 1);
        assert!(!try_gemm(
            c.view_mut(),
            false,
            a.view(),
            b.view(),
            1.0,
            None
        ));
        assert!(c.as_slice().iter().all(|&v| v == 0.0));
        let b = filled(3, 4, 2);
        let mut ct = Matrix::zeros(4, 4);
        assert!(!try_gemm(
            ct.view_mut().transpose_mut(),
            false,
            a.view(),
            b.view(),
            1.0,
            None
        ));
        // A transposed right operand too large to pack.
        let big = filled(MAX_COLS, PACK_CAPACITY / MAX_COLS + 1, 4);
        let a = filled(2, PACK_CAPACITY / MAX_COLS + 1, 5);
        let mut c = Matrix::zeros(2, MAX_COLS);
        assert!(!try_gemm(
            c.view_mut(),
            false,
            a.view(),
            big.view().transpose(),
            1.0,
            None
        ));
    }

    /// A whole product in one build.
    type Build = unsafe fn(usize, usize, usize, Strided, Strided, Output);

    /// The builds this CPU can run that compute with FMA: the portable
    /// tiles (`mul_add`), AVX2 and AVX-512.
    fn fma_builds() -> Vec<(&'static str, Build)> {
        let mut builds: Vec<(&str, Build)> = vec![("portable", product::<true>)];
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            builds.push(("avx2", product_avx2_fma));
            if std::is_x86_feature_detected!("avx512f") {
                builds.push(("avx512", product_avx512));
            }
        }
        builds
    }

    /// Every FMA build gives the same bits (each output one FMA chain over
    /// `k` in order), with each epilogue, alpha and accumulation, over
    /// shapes that leave every kind of edge tile; and the dispatched one is
    /// one of them.
    #[test]
    fn every_fma_build_gives_the_same_bits() {
        let builds = fma_builds();
        if builds.len() < 3 {
            eprintln!("note: this CPU runs {} of the 3 FMA builds", builds.len());
        }
        for (m, k, n, a_t) in [
            (1024, 8, 32, false),
            (1024, 16, 8, false),
            (37, 9, 61, false),
            (29, 33, 48, true),
            (8, 1024, 32, true),
            (3, 5, 17, false),
        ] {
            let p = Problem::new(m, k, n);
            let (a, b) = (p.a_view(a_t), p.b_view(false));
            let gate = Matrix::from_fn(m, n, |i, j| SPECIAL[(i * 5 + j) % 8]);
            let bias: Vec<f32> = (0..n).map(|j| 0.05 * j as f32 - 1.0).collect();
            let (sa, sb) = (
                Strided {
                    ptr: a.as_ptr(),
                    row_stride: a.row_stride(),
                    col_stride: a.col_stride(),
                },
                Strided {
                    ptr: b.as_ptr(),
                    row_stride: n as isize,
                    col_stride: 1,
                },
            );
            for epilogue in [
                None,
                Some(Epilogue::BiasRelu(Some(&bias))),
                Some(Epilogue::ReluMask(gate.view())),
            ] {
                for (accumulate, alpha) in [(false, 1.0), (true, -0.5)] {
                    let results: Vec<(&str, Vec<u32>)> = builds
                        .iter()
                        .map(|&(name, build)| {
                            let mut c = p.c0.clone();
                            let out = Output {
                                ptr: c.view_mut().as_ptr_mut(),
                                row_stride: n as isize,
                                accumulate,
                                alpha,
                                finish: Finish::from(epilogue),
                            };
                            // SAFETY: the strides describe `a`, `b`, `c` and the gate.
                            unsafe { build(m, k, n, sa, sb, out) };
                            (name, c.as_slice().iter().map(|v| v.to_bits()).collect())
                        })
                        .collect();
                    let what = format!("{m}×{k}×{n} a_t={a_t} {epilogue:?} acc={accumulate}");
                    for (name, bits) in &results[1..] {
                        assert!(bits == &results[0].1, "{name} vs portable: {what}");
                    }
                    let mut dispatched = p.c0.clone();
                    assert!(try_gemm(
                        dispatched.view_mut(),
                        accumulate,
                        a,
                        b,
                        alpha,
                        epilogue
                    ));
                    let bits: Vec<u32> =
                        dispatched.as_slice().iter().map(|v| v.to_bits()).collect();
                    assert!(bits == results[0].1, "dispatched: {what}");
                }
            }
        }
    }

    #[test]
    fn the_portable_build_agrees_with_the_dispatched_one_to_rounding() {
        let (m, k, n) = (9, 37, 27);
        let p = Problem::new(m, k, n);
        let (a, b) = (p.a_view(false), p.b_view(false));
        let run = |fma: bool| {
            let mut c = Matrix::zeros(m, n);
            let out = Output {
                ptr: c.view_mut().as_ptr_mut(),
                row_stride: n as isize,
                accumulate: false,
                alpha: 1.0,
                finish: Finish::Store,
            };
            let sa = Strided {
                ptr: a.as_ptr(),
                row_stride: k as isize,
                col_stride: 1,
            };
            let sb = Strided {
                ptr: b.as_ptr(),
                row_stride: n as isize,
                col_stride: 1,
            };
            // SAFETY: the strides describe `a`, `b` and `c` exactly.
            unsafe {
                if fma {
                    dispatch(m, k, n, sa, sb, out)
                } else {
                    product::<false>(m, k, n, sa, sb, out)
                }
            }
            c
        };
        p.assert_result(&run(false), 1.0, false, "portable");
        p.assert_result(&run(true), 1.0, false, "dispatched");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_narrow_product_matches_the_reference(
            m in 1usize..40,
            k in 1usize..70,
            n in 1usize..(MAX_COLS + 3),
            a_t: bool,
            b_t: bool,
            acc: bool,
            alpha in -2.0f32..2.0,
        ) {
            check(m, k, n, a_t, b_t, acc, alpha);
        }
    }
}
