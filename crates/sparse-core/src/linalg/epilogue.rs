//! Elementwise passes that follow a product in a linear-ReLU layer: the
//! forward's bias and ReLU, the backward's ReLU mask. [`super::gemm_into_then`]
//! fuses them into the small-product kernel's stores (one pass over the
//! output fewer; the synthetic study's MLP step spent a quarter of its time
//! in elementwise passes) and runs them here, as a separate pass, after
//! any other product. Both
//! ways apply the same rule to the same stored value, so they give the same
//! bits (tested in `small`).

use faer::{MatMut, MatRef};

/// What happens to each value `v` of a product before it is stored.
#[derive(Clone, Copy, Debug)]
pub enum Epilogue<'a> {
    /// `v ← max(v + b_j, 0)` (without the bias when `None`): a linear-ReLU
    /// layer's forward. The ReLU is `v > 0 ? v : 0`, so NaN and −0 become +0.
    BiasRelu(Option<&'a [f32]>),
    /// `v ← 0` where `gate ≤ 0`, kept where `gate > 0` or NaN: the backward
    /// mask of a ReLU whose output is `gate` (the product's shape). PyTorch's
    /// choice at the kink (gradient 0 at an output of 0).
    ReluMask(MatRef<'a, f32>),
}

impl Epilogue<'_> {
    /// Panics unless the epilogue fits an output of `rows × cols`.
    pub(super) fn check_shape(&self, rows: usize, cols: usize) {
        match self {
            Epilogue::BiasRelu(bias) => {
                if let Some(bias) = bias {
                    assert_eq!(bias.len(), cols, "Epilogue::BiasRelu: bias length");
                }
            }
            Epilogue::ReluMask(gate) => assert_eq!(
                (gate.nrows(), gate.ncols()),
                (rows, cols),
                "Epilogue::ReluMask: gate shape"
            ),
        }
    }

    /// Whether the small-product kernel can fuse it: a gate's rows must have
    /// unit stride (it is read eight values at a time).
    pub(super) fn fits_small_kernel(&self) -> bool {
        match self {
            Epilogue::BiasRelu(_) => true,
            Epilogue::ReluMask(gate) => gate.col_stride() == 1 || gate.ncols() <= 1,
        }
    }

    /// Applies the epilogue to `dst` as a pass of its own: over the whole
    /// output at once where it (and the gate) are one row-major run.
    pub fn apply(&self, mut dst: MatMut<'_, f32>) {
        let (rows, cols) = (dst.nrows(), dst.ncols());
        self.check_shape(rows, cols);
        if let Some(values) = row_major_run(dst.as_mut()) {
            match self {
                Epilogue::BiasRelu(bias) => return bias_relu_rows(values, cols, *bias),
                Epilogue::ReluMask(gate) => {
                    if let Some(gate) = row_major_run_ref(*gate) {
                        return zero_where_inactive(values, gate);
                    }
                }
            }
        }
        for i in 0..rows {
            for j in 0..cols {
                let v = dst.as_mut().get_mut(i, j);
                *v = match self {
                    Epilogue::BiasRelu(bias) => relu(*v + bias.map_or(0.0, |b| b[j])),
                    Epilogue::ReluMask(gate) => mask(*v, *gate.get(i, j)),
                };
            }
        }
    }
}

/// Whether the values of `m` are one row-major run without gaps: unit
/// column stride and rows `cols` apart (either moot for one column or row).
fn is_row_major_run(m: MatRef<'_, f32>) -> bool {
    let (rows, cols) = (m.nrows(), m.ncols());
    (m.col_stride() == 1 || cols <= 1) && (m.row_stride() == cols as isize || rows <= 1)
}

/// The values of `m` as one slice when [`is_row_major_run`].
fn row_major_run(m: MatMut<'_, f32>) -> Option<&mut [f32]> {
    let len = m.nrows() * m.ncols();
    // SAFETY: the `len` values are one contiguous run, borrowed mutably through `m`.
    is_row_major_run(m.as_ref())
        .then(|| unsafe { std::slice::from_raw_parts_mut(m.as_ptr_mut(), len) })
}

/// [`row_major_run`] for a shared view.
fn row_major_run_ref(m: MatRef<'_, f32>) -> Option<&[f32]> {
    let len = m.nrows() * m.ncols();
    // SAFETY: as in `row_major_run`, borrowed through `m`.
    is_row_major_run(m).then(|| unsafe { std::slice::from_raw_parts(m.as_ptr(), len) })
}

/// The ReLU of [`Epilogue::BiasRelu`]: `v > 0 ? v : 0`, what `max_ps(v, 0)`
/// computes. Written as `max`, which LLVM lowers to exactly that (the
/// constant is not NaN, and either zero may be returned for ±0); the select
/// written out becomes AVX2 masked stores of the zeros (the trap of
/// [`super::vectorised`]). The tests hold it to the select's bits.
#[inline(always)]
pub(super) fn relu(v: f32) -> f32 {
    v.max(0.0)
}

/// The rule of [`Epilogue::ReluMask`]: what `cmp_nle_uq(gate, 0) & v` computes.
#[inline(always)]
pub(super) fn mask(v: f32, gate: f32) -> f32 {
    if gate <= 0.0 {
        0.0
    } else {
        v
    }
}

/// `v ← relu(v + bias_j)` over row-major `values` with rows `cols` long, vectorised.
fn bias_relu_rows(values: &mut [f32], cols: usize, bias: Option<&[f32]>) {
    if cols == 0 {
        return;
    }
    super::vectorised(move || {
        for row in values.chunks_exact_mut(cols) {
            match bias {
                Some(bias) => row
                    .iter_mut()
                    .zip(bias)
                    .for_each(|(v, &b)| *v = relu(*v + b)),
                None => row.iter_mut().for_each(|v| *v = relu(*v)),
            }
        }
    })
}

/// `grad[i] ← mask(grad[i], gate[i])` in place.
///
/// With AVX2, eight at a time as a compare and an AND, written with
/// intrinsics: LLVM makes the in-place select (and the same AND written
/// with integers) AVX2 masked stores, microcoded on AMD (1.6× slower MLP
/// step), or leaves it four wide outside [`super::vectorised`].
fn zero_where_inactive(grad: &mut [f32], gate: &[f32]) {
    assert_eq!(grad.len(), gate.len(), "zero_where_inactive: lengths");
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        #[target_feature(enable = "avx2")]
        unsafe fn eight_wide(grad: &mut [f32], gate: &[f32]) -> usize {
            use std::arch::x86_64::*;
            let whole = grad.len() / 8 * 8;
            for i in (0..whole).step_by(8) {
                let (g, o) = (grad.as_mut_ptr().add(i), gate.as_ptr().add(i));
                let keep = _mm256_cmp_ps::<_CMP_NLE_UQ>(_mm256_loadu_ps(o), _mm256_setzero_ps());
                _mm256_storeu_ps(g, _mm256_and_ps(keep, _mm256_loadu_ps(g)));
            }
            whole
        }
        // SAFETY: the CPU has AVX2; both slices are `whole` long at least.
        done = unsafe { eight_wide(grad, gate) };
    }
    for (g, &a) in grad[done..].iter_mut().zip(&gate[done..]) {
        *g = mask(*g, a);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::SPECIAL;
    use super::*;
    use crate::matrix::Matrix;

    #[test]
    fn the_relu_mask_keeps_the_bits_of_the_scalar_rule() {
        // Every pair of specials, 64 pairs: eight vectors and no tail, then
        // a tail of 5 past them.
        let gate: Vec<f32> = (0..69).map(|i| SPECIAL[i % 8]).collect();
        let grad: Vec<f32> = (0..69).map(|i| SPECIAL[(i / 8 + i) % 8] - 0.25).collect();
        let mut masked = grad.clone();
        zero_where_inactive(&mut masked, &gate);
        for ((&m, &g), &a) in masked.iter().zip(&grad).zip(&gate) {
            let expected = if a <= 0.0 { 0.0 } else { g };
            assert_eq!(m.to_bits(), expected.to_bits(), "gate {a}, grad {g}");
        }
    }

    #[test]
    fn the_passes_follow_their_rules_in_every_layout() {
        let values = Matrix::from_fn(8, 9, |i, j| SPECIAL[(i * 9 + j) % 8] - 0.5 * j as f32);
        let gate = Matrix::from_fn(8, 9, |i, j| SPECIAL[(i + 3 * j) % 8]);
        let bias: Vec<f32> = (0..9).map(|j| 0.75 - 0.25 * j as f32).collect();
        let expect = |epilogue: &Epilogue, i: usize, j: usize| {
            let v = values.get(i, j);
            match epilogue {
                Epilogue::BiasRelu(b) => {
                    let s = v + b.map_or(0.0, |b| b[j]);
                    if s > 0.0 {
                        s
                    } else {
                        0.0
                    }
                }
                Epilogue::ReluMask(_) => {
                    if gate.get(i, j) <= 0.0 {
                        0.0
                    } else {
                        v
                    }
                }
            }
        };
        let gate_t = gate.transpose();
        for epilogue in [
            Epilogue::BiasRelu(None),
            Epilogue::BiasRelu(Some(&bias)),
            Epilogue::ReluMask(gate.view()),
            Epilogue::ReluMask(gate_t.view().transpose()),
        ] {
            // Row-major output, and a column-major one (strided rows).
            let mut row_major = values.clone();
            epilogue.apply(row_major.view_mut());
            let mut stored_t = values.transpose();
            epilogue.apply(stored_t.view_mut().transpose_mut());
            for i in 0..8 {
                for j in 0..9 {
                    let want = expect(&epilogue, i, j).to_bits();
                    assert_eq!(
                        row_major.get(i, j).to_bits(),
                        want,
                        "{epilogue:?} ({i},{j})"
                    );
                    assert_eq!(stored_t.get(j, i).to_bits(), want, "strided ({i},{j})");
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "gate shape")]
    fn a_gate_of_another_shape_is_refused() {
        let gate = Matrix::zeros(3, 4);
        Epilogue::ReluMask(gate.view()).apply(Matrix::zeros(4, 3).view_mut());
    }
}
