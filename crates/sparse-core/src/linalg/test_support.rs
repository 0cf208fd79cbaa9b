//! Test helpers shared by the product kernels' tests: deterministic
//! operands, either of which can enter as a transposed (column-major) view,
//! and an f64 reference to check a result against.

use crate::matrix::Matrix;
use faer::MatRef;

/// Values where elementwise rules could differ: zeros of both signs, NaN,
/// infinities and a denormal.
pub(super) const SPECIAL: [f32; 8] = [
    0.0,
    -0.0,
    1.5,
    -2.0,
    f32::NAN,
    f32::INFINITY,
    f32::NEG_INFINITY,
    1e-40,
];

/// A deterministic `rows × cols` matrix with entries in `[-1, 1]`.
pub(super) fn filled(rows: usize, cols: usize, seed: u64) -> Matrix {
    Matrix::from_fn(rows, cols, |i, j| {
        let h = (i as u64 * 7919 + j as u64 * 104_729 + seed * 15_485_863) % 2003;
        h as f32 / 1001.0 - 1.0
    })
}

/// `a (m × k)`, `b (k × n)` and a starting output `c0 (m × n)`, with copies
/// of `a` and `b` stored transposed.
pub(super) struct Problem {
    a: Matrix,
    b: Matrix,
    /// The output's contents before the product (kept when accumulating).
    pub(super) c0: Matrix,
    a_stored_transposed: Matrix,
    b_stored_transposed: Matrix,
}

impl Problem {
    /// The operands of an `m × k · k × n` product.
    pub(super) fn new(m: usize, k: usize, n: usize) -> Self {
        let (a, b) = (filled(m, k, 1), filled(k, n, 2));
        Problem {
            a_stored_transposed: a.transpose(),
            b_stored_transposed: b.transpose(),
            a,
            b,
            c0: filled(m, n, 3),
        }
    }

    /// `a`, row-major or (`transposed`) as the transpose of its transpose.
    pub(super) fn a_view(&self, transposed: bool) -> MatRef<'_, f32> {
        if transposed {
            self.a_stored_transposed.view().transpose()
        } else {
            self.a.view()
        }
    }

    /// `b`, like [`Self::a_view`].
    pub(super) fn b_view(&self, transposed: bool) -> MatRef<'_, f32> {
        if transposed {
            self.b_stored_transposed.view().transpose()
        } else {
            self.b.view()
        }
    }

    /// Panics unless `got ≈ alpha·a·b (+ c0 when accumulate)`, computed in
    /// f64, within `1e-5·(k + 1)` relative.
    pub(super) fn assert_result(&self, got: &Matrix, alpha: f32, accumulate: bool, what: &str) {
        let (m, k, n) = (self.a.rows(), self.a.cols(), self.b.cols());
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|kk| self.a.get(i, kk) as f64 * self.b.get(kk, j) as f64)
                    .sum();
                let start = if accumulate {
                    self.c0.get(i, j) as f64
                } else {
                    0.0
                };
                let want = alpha as f64 * s + start;
                let g = got.get(i, j) as f64;
                assert!(
                    (g - want).abs() <= 1e-5 * (k as f64 + 1.0) * (1.0 + want.abs()),
                    "{m}×{k}×{n} {what} acc={accumulate} ({i},{j}): {g} vs {want}"
                );
            }
        }
    }
}
