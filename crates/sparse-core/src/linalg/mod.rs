//! Dense products over [`Matrix`] through faer, with sequential execution for
//! small products (thread dispatch costs ~15 µs, far more than a tiny GEMM)
//! and a register-tiled kernel for small products with narrow outputs
//! (`small`), and the few decompositions the solvers need.

mod epilogue;
#[cfg(target_arch = "x86_64")]
mod packed;
mod small;
#[cfg(test)]
mod test_support;

use crate::matrix::Matrix;
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef, Par};

pub use epilogue::Epilogue;

/// Products with fewer multiply-adds than this run on one thread
/// (`../shared/docs/perf-notes.md`: rayon dispatch dominates below ~1e6).
pub const PARALLEL_THRESHOLD_MACS: usize = 1 << 20;

/// Whether a matrix enters a product as is or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Use the matrix as stored.
    N,
    /// Use its transpose (a free view, no copy).
    T,
}

fn apply(m: MatRef<'_, f32>, op: Op) -> MatRef<'_, f32> {
    match op {
        Op::N => m,
        Op::T => m.transpose(),
    }
}

/// The parallelism for a product with `macs` multiply-adds.
pub fn par_for(macs: usize) -> Par {
    if macs < PARALLEL_THRESHOLD_MACS || rayon::current_num_threads() <= 1 {
        Par::Seq
    } else {
        Par::rayon(0)
    }
}

/// `dst = alpha · op(a) · op(b) + beta · dst` with `beta ∈ {0, 1}` (`accumulate`).
///
/// Products below the parallel threshold with at most 64 output columns run
/// in this crate's register-tiled kernel (the synthetic studies' shapes, where
/// faer's packing and dispatch cost more than the arithmetic); on CPUs whose
/// full FMA width is 256 bits (AVX2 without AVX-512, or Zen 4's split
/// AVX-512), products at least 64 in every dimension run in the packed
/// kernel (`packed`, faster than faer's kernels there); the rest in faer.
///
/// Panics if shapes do not conform: callers validate user-facing shapes first.
pub fn gemm_into(
    dst: MatMut<'_, f32>,
    accumulate: bool,
    a: MatRef<'_, f32>,
    op_a: Op,
    b: MatRef<'_, f32>,
    op_b: Op,
    alpha: f32,
) {
    product(dst, accumulate, apply(a, op_a), apply(b, op_b), alpha, None);
}

/// `dst = op(a) · op(b)`, then `epilogue` on every value: fused into the
/// stores where the product runs in the small-product kernel (one pass over
/// `dst` fewer), a separate pass after the other kernels; the same bits
/// either way.
///
/// Panics if shapes do not conform, the epilogue's included.
pub fn gemm_into_then(
    dst: MatMut<'_, f32>,
    a: MatRef<'_, f32>,
    op_a: Op,
    b: MatRef<'_, f32>,
    op_b: Op,
    epilogue: Epilogue<'_>,
) {
    let (a, b) = (apply(a, op_a), apply(b, op_b));
    product(dst, false, a, b, 1.0, Some(epilogue));
}

/// The product behind [`gemm_into`] and [`gemm_into_then`]: chooses the kernel.
fn product(
    mut dst: MatMut<'_, f32>,
    accumulate: bool,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    alpha: f32,
    epilogue: Option<Epilogue<'_>>,
) {
    assert!(
        a.ncols() == b.nrows() && dst.nrows() == a.nrows() && dst.ncols() == b.ncols(),
        "gemm_into: ({}×{})·({}×{}) into {}×{}",
        a.nrows(),
        a.ncols(),
        b.nrows(),
        b.ncols(),
        dst.nrows(),
        dst.ncols()
    );
    if let Some(e) = &epilogue {
        e.check_shape(dst.nrows(), dst.ncols());
    }
    let macs = a.nrows() * a.ncols() * b.ncols();
    // The kernel reads a gate eight at a time: rows with unit stride only.
    let fusable = epilogue.filter(Epilogue::fits_small_kernel);
    if macs < PARALLEL_THRESHOLD_MACS
        && small::try_gemm(dst.as_mut(), accumulate, a, b, alpha, fusable)
    {
        if fusable.is_none() {
            if let Some(e) = epilogue {
                e.apply(dst);
            }
        }
        return;
    }
    let par = par_for(macs);
    #[cfg(target_arch = "x86_64")]
    let done = packed::try_gemm(
        dst.as_mut(),
        accumulate,
        a,
        b,
        alpha,
        matches!(par, Par::Rayon(_)),
    );
    #[cfg(not(target_arch = "x86_64"))]
    let done = false;
    if !done {
        let accum = if accumulate {
            Accum::Add
        } else {
            Accum::Replace
        };
        matmul(dst.as_mut(), accum, a, b, alpha, par);
    }
    if let Some(e) = epilogue {
        e.apply(dst);
    }
}

/// `op(a) · op(b)` as a new matrix.
pub fn matmul_new(a: &Matrix, op_a: Op, b: &Matrix, op_b: Op) -> Matrix {
    let (m, _) = shape_after(a, op_a);
    let (_, n) = shape_after(b, op_b);
    let mut out = Matrix::zeros(m, n);
    gemm_into(out.view_mut(), false, a.view(), op_a, b.view(), op_b, 1.0);
    out
}

/// `dst = op(a) · op(b)` (overwrites `dst`, whose shape must conform).
pub fn matmul_into(dst: &mut Matrix, a: &Matrix, op_a: Op, b: &Matrix, op_b: Op) {
    gemm_into(dst.view_mut(), false, a.view(), op_a, b.view(), op_b, 1.0);
}

fn shape_after(m: &Matrix, op: Op) -> (usize, usize) {
    match op {
        Op::N => (m.rows(), m.cols()),
        Op::T => (m.cols(), m.rows()),
    }
}

/// Gram matrix `d · dᵀ` (`rows × rows`) of a dictionary `d (n_latents × dim)`.
pub fn gram(d: &Matrix) -> Matrix {
    matmul_new(d, Op::N, d, Op::T)
}

/// Largest eigenvalue of the symmetric positive semi-definite `g`, by power
/// iteration in f64 to relative change 1e-10 (at most 10 000 iterations).
/// This is the Lipschitz constant `L` of the lasso gradient when `g = D·Dᵀ`.
pub fn largest_eigenvalue_psd(g: &Matrix) -> f64 {
    let n = g.rows();
    assert_eq!(n, g.cols(), "largest_eigenvalue_psd: matrix must be square");
    if n == 0 {
        return 0.0;
    }
    // A fixed, non-degenerate start vector keeps the result deterministic.
    let mut v: Vec<f64> = (0..n).map(|i| 1.0 + (i as f64) * 1e-3).collect();
    let mut lambda = 0.0f64;
    for _ in 0..10_000 {
        let mut w = vec![0.0f64; n];
        for (i, wi) in w.iter_mut().enumerate() {
            let row = g.row(i);
            *wi = row.iter().zip(&v).map(|(&a, &b)| a as f64 * b).sum();
        }
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        let next = w.iter().zip(&v).map(|(a, b)| a * b).sum::<f64>()
            / v.iter().map(|x| x * x).sum::<f64>();
        v = w.into_iter().map(|x| x / norm).collect();
        if (next - lambda).abs() <= 1e-10 * next.abs() {
            return next;
        }
        lambda = next;
    }
    lambda
}

/// Solves the symmetric positive definite system `a · x = b` in f64 by
/// Cholesky; returns `None` when `a` is not (numerically) positive definite
/// (see [`cholesky_factor_in_place`]). `a` is `n × n` row-major, `b` has
/// length `n`.
///
/// The substitutions sum each row's products first and divide by the pivot
/// (one rounding fewer than [`cholesky_solve_in_place`]'s running updates and
/// reciprocal): the amortisation gap's least-squares encoders solve normal
/// equations with a 1e-10 ridge, where that rounding shows.
pub fn solve_spd(a: &[f64], b: &[f64]) -> Option<Vec<f64>> {
    let n = b.len();
    assert_eq!(a.len(), n * n, "solve_spd: a must be n×n");
    let mut l = a.to_vec();
    if !cholesky_factor_in_place(&mut l, n) {
        return None;
    }
    let mut y = vec![0.0f64; n];
    for i in 0..n {
        let s: f64 = (0..i).map(|k| l[i * n + k] * y[k]).sum();
        y[i] = (b[i] - s) / l[i * n + i];
    }
    let mut x = vec![0.0f64; n];
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|k| l[k * n + i] * x[k]).sum();
        x[i] = (y[i] - s) / l[i * n + i];
    }
    Some(x)
}

/// Overwrites the lower triangle of the symmetric `a (k × k)`, row-major f64,
/// with its Cholesky factor `L` (`a = L·Lᵀ`). Returns `false` when `a` is not
/// numerically positive definite: a pivot not above `1e-12` times its
/// diagonal entry, or not finite (NaN included).
pub fn cholesky_factor_in_place(a: &mut [f64], k: usize) -> bool {
    assert_eq!(a.len(), k * k, "cholesky_factor_in_place: a must be k×k");
    for j in 0..k {
        let diagonal = a[j * k + j];
        let mut s = diagonal;
        for p in 0..j {
            s -= a[j * k + p] * a[j * k + p];
        }
        if !(s > 1e-12 * diagonal.abs().max(1e-300) && s.is_finite()) {
            return false;
        }
        let ljj = s.sqrt();
        a[j * k + j] = ljj;
        for i in j + 1..k {
            let mut s = a[i * k + j];
            for p in 0..j {
                s -= a[i * k + p] * a[j * k + p];
            }
            a[i * k + j] = s / ljj;
        }
    }
    true
}

/// Solves `A·X = B` in place for symmetric positive definite `A (k × k)` and
/// `B (k × m)`, both row-major f64, all `m` right-hand sides with one
/// factorisation: `a` becomes its Cholesky factor `L` (lower triangle), `b`
/// the solution. Returns `false` (leaving both partly overwritten) when `A`
/// is not numerically positive definite ([`cholesky_factor_in_place`]).
pub fn cholesky_solve_in_place(a: &mut [f64], k: usize, b: &mut [f64], m: usize) -> bool {
    assert_eq!(b.len(), k * m, "cholesky_solve_in_place: b must be k×m");
    if !cholesky_factor_in_place(a, k) {
        return false;
    }
    // L·Y = B, then Lᵀ·X = Y, all columns of B at once (rows are contiguous).
    for i in 0..k {
        for p in 0..i {
            let l = a[i * k + p];
            for c in 0..m {
                b[i * m + c] -= l * b[p * m + c];
            }
        }
        let inv = 1.0 / a[i * k + i];
        b[i * m..(i + 1) * m].iter_mut().for_each(|v| *v *= inv);
    }
    for i in (0..k).rev() {
        for p in i + 1..k {
            let l = a[p * k + i];
            for c in 0..m {
                b[i * m + c] -= l * b[p * m + c];
            }
        }
        let inv = 1.0 / a[i * k + i];
        b[i * m..(i + 1) * m].iter_mut().for_each(|v| *v *= inv);
    }
    true
}

/// Runs `f` compiled for AVX2 and FMA where the CPU has them (runtime
/// detection), as it is elsewhere: the loops `f` inlines (elementwise passes,
/// the f64-lane sums below) then vectorise eight floats wide instead of
/// baseline x86-64's four. The same operations in the same order run either
/// way (Rust never fuses a multiply and an add on its own), so the results
/// are the same bits. The small models' steps spent a quarter of their time
/// in such passes, exp-Adam's inference two thirds (`docs/benchmarks.md`).
///
/// Two traps, both measured: scalars captured by reference are reloaded for
/// every element and the loop stays scalar (capture by value, `move`); and an
/// in-place select that keeps the old value (`*g = if c { 0.0 } else { *g }`)
/// becomes AVX2 masked stores, microcoded on AMD (leave such loops outside).
#[inline(always)]
pub fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn wide<R>(f: impl FnOnce() -> R) -> R {
            f()
        }
        // SAFETY: the CPU has the features `wide` is compiled for.
        return unsafe { wide(f) };
    }
    f()
}

/// `Σ f(v)` over `values` in f64, in eight interleaved partial sums, so that
/// the loop vectorises and the add latency does not bound it (one chain would).
#[inline(always)]
pub fn sum_f64_by_lanes(values: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let chunks = values.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f(v as f64)).sum();
    let mut lanes = [0.0f64; 8];
    for eight in chunks {
        for (s, &v) in lanes.iter_mut().zip(eight) {
            *s += f(v as f64);
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// `⟨a, b⟩` over the common length, products and sums in f64, in eight
/// interleaved partial sums (as [`sum_f64_by_lanes`]).
#[inline(always)]
pub fn dot_f64_by_lanes(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f64 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(&x, &y)| x as f64 * y as f64)
        .sum();
    let mut lanes = [0.0f64; 8];
    for (x8, y8) in a8.zip(b8) {
        for ((s, &x), &y) in lanes.iter_mut().zip(x8).zip(y8) {
            *s += x as f64 * y as f64;
        }
    }
    lanes.iter().sum::<f64>() + tail
}

/// `e^x` in f32 to within 2 ulp, without calling libm.
///
/// glibc's `expf` is compiled for AVX while this crate's code is SSE: each
/// call from a hot loop pays an SSE/AVX transition stall (measured: ~20× the
/// cost of the arithmetic). This version is plain arithmetic, inlines and
/// vectorises (no libm call at all, not even `roundf`). Range reduction `x = k·ln2 + r` (Cody–Waite, two-part ln2),
/// then a degree-6 Taylor polynomial for `e^r` on `|r| ≤ ln2/2`.
#[inline]
pub fn exp_f32(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    if x > 88.72284 {
        return f32::INFINITY;
    }
    if x < -103.97208 {
        return 0.0;
    }
    // Round to nearest by adding and subtracting 1.5·2²³ (exact for |t| < 2²²;
    // here |t| < 151): `f32::round` is a libm call, with the same transition
    // stall as `expf`. Ties go to even instead of away from zero; either k
    // leaves |r| ≤ ln2/2.
    const ROUND: f32 = 12_582_912.0;
    let k = (x * std::f32::consts::LOG2_E + ROUND) - ROUND;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // Scale by 2^k in two steps so that k down to −150 (subnormal results) stays exact.
    let k = k as i32;
    let (k1, k2) = (k / 2, k - k / 2);
    p * f32::from_bits(((k1 + 127) as u32) << 23) * f32::from_bits(((k2 + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &Matrix, b: &Matrix) -> Matrix {
        Matrix::from_fn(a.rows(), b.cols(), |i, j| {
            (0..a.cols()).map(|k| a.get(i, k) * b.get(k, j)).sum()
        })
    }

    #[test]
    fn products_match_naive_in_every_transpose_combination() {
        let a = Matrix::from_fn(5, 3, |i, j| (i as f32) - 2.0 * j as f32 + 0.5);
        let b = Matrix::from_fn(3, 4, |i, j| (i * j) as f32 * 0.25 - 1.0);
        let want = naive(&a, &b);
        assert!(matmul_new(&a, Op::N, &b, Op::N).max_abs_diff(&want) < 1e-5);
        let at = a.transpose();
        let bt = b.transpose();
        assert!(matmul_new(&at, Op::T, &b, Op::N).max_abs_diff(&want) < 1e-5);
        assert!(matmul_new(&a, Op::N, &bt, Op::T).max_abs_diff(&want) < 1e-5);
        assert!(matmul_new(&at, Op::T, &bt, Op::T).max_abs_diff(&want) < 1e-5);
    }

    #[test]
    fn large_product_takes_the_parallel_path_and_agrees() {
        let a = Matrix::from_fn(128, 96, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
        let b = Matrix::from_fn(96, 128, |i, j| ((i * 5 + j) % 13) as f32 * 0.1);
        const { assert!(128 * 96 * 128 >= PARALLEL_THRESHOLD_MACS) };
        let got = matmul_new(&a, Op::N, &b, Op::N);
        assert!(got.max_abs_diff(&naive(&a, &b)) < 1e-3);
    }

    /// `gemm_into_then` is the product followed by the epilogue's pass,
    /// bit for bit, in each kernel: the small one (fused), the small one with
    /// a column-major gate (not fusable: a separate pass), and a product
    /// large enough for the packed kernel or faer.
    #[test]
    fn a_product_then_an_epilogue_is_the_product_and_the_pass() {
        for (m, k, n) in [(1024, 16, 32), (300, 200, 100)] {
            let (a, b) = (test_support::filled(m, k, 1), test_support::filled(k, n, 2));
            let gate = test_support::filled(m, n, 3);
            let gate_t = gate.transpose();
            let bias: Vec<f32> = (0..n).map(|j| 0.01 * j as f32 - 0.5).collect();
            for epilogue in [
                Epilogue::BiasRelu(Some(&bias)),
                Epilogue::ReluMask(gate.view()),
                Epilogue::ReluMask(gate_t.view().transpose()),
            ] {
                let mut then = Matrix::zeros(m, n);
                gemm_into_then(then.view_mut(), a.view(), Op::N, b.view(), Op::N, epilogue);
                let mut separate = matmul_new(&a, Op::N, &b, Op::N);
                epilogue.apply(separate.view_mut());
                assert_eq!(then.as_slice(), separate.as_slice(), "{m}×{k}×{n}");
                // The epilogue did something: ReLUs and masks zeroed values.
                let zeros = then.as_slice().iter().filter(|&&v| v == 0.0).count();
                assert!(zeros > m * n / 4 && zeros < m * n, "{zeros} zeros");
            }
        }
    }

    #[test]
    #[should_panic(expected = "bias length")]
    fn an_epilogue_of_the_wrong_width_is_refused() {
        let a = Matrix::zeros(4, 3);
        let mut dst = Matrix::zeros(4, 5);
        let bias = [0.0; 4];
        let (b, relu) = (Matrix::zeros(3, 5), Epilogue::BiasRelu(Some(&bias)));
        gemm_into_then(dst.view_mut(), a.view(), Op::N, b.view(), Op::N, relu);
    }

    #[test]
    fn vectorised_passes_give_the_bits_of_plain_ones() {
        // Elementwise arithmetic (Adam-like: products, sums, a square root, a
        // division, a select), `exp_f32`, and an f64-lane sum, over a length
        // that leaves a remainder after every vector width.
        let xs: Vec<f32> = (0..1027).map(|i| (i as f32 * 0.37).sin() * 30.0).collect();
        let pass = |xs: &[f32]| -> (Vec<u32>, u64) {
            let out = xs
                .iter()
                .map(|&x| {
                    let y = 0.9 * x + 0.1 * x * x;
                    let z = if x < -20.0 { 0.0 } else { exp_f32(x) };
                    (y / (y.abs().sqrt() + 1e-8) + z).to_bits()
                })
                .collect();
            (out, sum_f64_by_lanes(xs, |v| v * v).to_bits())
        };
        let plain = pass(&xs);
        let wide = vectorised(|| pass(&xs));
        assert_eq!(plain, wide);
    }

    #[test]
    fn exp_f32_matches_f64_exp_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -103.0f32;
        while x < 88.7 {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            if want > f32::MIN_POSITIVE as f64 {
                let ulp = (want as f32).abs() as f64 * f32::EPSILON as f64;
                worst = worst.max((got - want).abs() / ulp);
            } else {
                assert!(
                    (got - want).abs() <= 2.0 * 1.4e-45,
                    "x={x}: {got:e} vs {want:e}"
                );
            }
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn power_iteration_finds_the_top_eigenvalue() {
        // diag(3, 1) rotated by 30 degrees has eigenvalues 3 and 1.
        let (c, s) = (30f32.to_radians().cos(), 30f32.to_radians().sin());
        let q = Matrix::from_vec(2, 2, vec![c, -s, s, c]).unwrap();
        let d = Matrix::from_vec(2, 2, vec![3.0, 0.0, 0.0, 1.0]).unwrap();
        let g = matmul_new(&matmul_new(&q, Op::N, &d, Op::N), Op::N, &q, Op::T);
        assert!((largest_eigenvalue_psd(&g) - 3.0).abs() < 1e-5);
    }

    #[test]
    fn cholesky_solves_and_rejects_indefinite() {
        let a = [4.0, 2.0, 2.0, 3.0];
        let x = solve_spd(&a, &[2.0, 1.0]).unwrap();
        assert!((4.0 * x[0] + 2.0 * x[1] - 2.0).abs() < 1e-12);
        assert!((2.0 * x[0] + 3.0 * x[1] - 1.0).abs() < 1e-12);
        assert!(solve_spd(&[1.0, 2.0, 2.0, 1.0], &[1.0, 1.0]).is_none());
        // Singular to rounding, and NaN: rejected, not factored into garbage.
        assert!(solve_spd(&[1.0, 1.0, 1.0, 1.0 + 1e-15], &[1.0, 1.0]).is_none());
        assert!(solve_spd(&[f64::NAN, 0.0, 0.0, 1.0], &[1.0, 1.0]).is_none());
    }

    #[test]
    fn cholesky_solves_several_right_hand_sides() {
        // A = [[4, 2, 0], [2, 3, 1], [0, 1, 2]], B = A·X for a known X.
        let a0 = [4.0, 2.0, 0.0, 2.0, 3.0, 1.0, 0.0, 1.0, 2.0];
        let x = [1.0, -2.0, 0.5, 3.0, 0.0, 1.0];
        let mut b = vec![0.0; 6];
        for i in 0..3 {
            for c in 0..2 {
                b[i * 2 + c] = (0..3).map(|p| a0[i * 3 + p] * x[p * 2 + c]).sum();
            }
        }
        let mut a = a0.to_vec();
        assert!(cholesky_solve_in_place(&mut a, 3, &mut b, 2));
        for (got, want) in b.iter().zip(&x) {
            assert!((got - want).abs() < 1e-12, "{b:?}");
        }
        // Each column alone through `solve_spd` gives the same solution.
        for c in 0..2 {
            let column: Vec<f64> = (0..3)
                .map(|i| (0..3).map(|p| a0[i * 3 + p] * x[p * 2 + c]).sum())
                .collect();
            let alone = solve_spd(&a0, &column).unwrap();
            for i in 0..3 {
                assert!((alone[i] - b[i * 2 + c]).abs() < 1e-12);
            }
        }
        let mut indefinite = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_solve_in_place(
            &mut indefinite,
            2,
            &mut [1.0, 1.0],
            1
        ));
    }
}
