//! TopK and BatchTopK sparse autoencoders with a **learned** unit-norm
//! dictionary `D (n_latents × dim)` and the auxiliary dead-latent loss AuxK
//! (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"; Bussmann
//! et al. 2024, "BatchTopK sparse autoencoders"), as SAELens trains them.
//!
//! Forward, as SAELens does (`apply_b_dec_to_input = true`): the decoder bias
//! is subtracted before encoding,
//!
//! ```text
//! pre = (X − b_dec)·W_enc + b_enc                      (n × N)
//! Z   = pre on the selected entries, 0 elsewhere       (selected entries are > 0)
//! X̂   = Z·D + b_dec
//! L   = mean_{n·M}((X − X̂)²) + aux_k_coefficient · AuxK
//! ```
//!
//! - **TopK** ([`TopKSelection::PerSample`], SAELens `topk`) selects, per
//!   sample, the `k` largest pre-activations and drops the non-positive ones
//!   (ReLU after the top-k, as `torch.topk` then ReLU): exactly `k` non-zeros
//!   unless fewer than `k` pre-activations are positive. Inference is the same.
//! - **BatchTopK** ([`TopKSelection::Batch`], SAELens `batchtopk`) selects the
//!   `n·k` largest pre-activations over the whole batch (again dropping the
//!   non-positive ones), so samples share a budget of `k` on average. Each
//!   training step also moves the inference threshold
//!   `θ ← (1 − r)·θ + r·min(selected values)` (`r = topk_threshold_lr`,
//!   `θ₀ = 0`, as SAELens); inference is then the JumpReLU
//!   `Z = pre·[pre > θ]` (strict, with `θ ≥ 0`), which is how SAELens exports
//!   a BatchTopK SAE (`jumprelu` with `threshold` = θ broadcast).
//!
//! Gradients are straight-through the selection: a selected entry has
//! `∂z/∂pre = 1`, every other entry 0, so only selected latents receive
//! encoder gradient and only their atoms receive decoder gradient. Decoding
//! and every backward product are therefore sparse × dense (cost ∝ `k`, not
//! `N`); only the encoder product `(X − b_dec)·W_enc` is dense.
//!
//! **AuxK.** A latent is *dead* when it has not been selected for more than
//! `dead_feature_window` training steps (SAELens' `n_forward_passes_since_fired
//! > dead_feature_window`). With `d` dead latents, `a = min(aux_k, d)` and
//! scale `s = min(d / aux_k, 1)` (SAELens), each sample selects its `a`
//! largest pre-activations **among the dead latents** (raw values, no ReLU, as
//! SAELens' `_calculate_topk_aux_acts`; OpenAI's reference applies a ReLU)
//! and reconstructs the detached residual `e = X − X̂` with them:
//! `AuxK = s · mean_{n·M}((e − Z_aux·D)²)` (no `b_dec`: OpenAI adds it to both
//! sides, which cancels). The residual is a constant for the gradient, so AuxK
//! only moves the dead latents' encoder columns, their atoms and, through
//! `pre`, `b_dec`. Normalisation is the crate's `mean_{n·M}`, the same as the
//! main term (SAELens sums over `dim`, for both terms alike).
//!
//! Parameters start as the learned-D [`super::Autoencoder`] SAE with the same
//! seed: `W_enc` from `U(−1/√M, 1/√M)` (stream 0), `D` standard normal with
//! unit rows (stream 1, the very same dictionary); `b_enc` and `b_dec` start
//! at zero (SAELens). One step is one Adam update of `W_enc`, `b_enc`,
//! `b_dec` and of `D` through [`UnitNormAdam`] (tangent projection when
//! configured, then renormalisation), so atoms have unit norm at every
//! forward pass.

use super::autoencoder::{Autoencoder, AutoencoderConfig};
use super::unit_norm::UnitNormAdam;
use crate::encoders::sae::{
    check_batch, check_loss, check_training_batch, ensure_rows, validate_common, LayerGrads,
    LinearReluLayer,
};
use crate::error::{Error, Result};
use crate::linalg::{dot_f64_by_lanes, gemm_into, Op};
use crate::matrix::Matrix;
use crate::optim::{Adam, AdamConfig, ADAM_FLOPS_PER_PARAM};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;

/// Which pre-activations a TopK-style SAE keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TopKSelection {
    /// The `k` largest per sample (SAELens `topk`).
    PerSample,
    /// The `n·k` largest over the batch in training, a learned threshold at
    /// inference (SAELens `batchtopk`).
    Batch,
}

impl TopKSelection {
    /// SAELens' training architecture name: `topk` or `batchtopk`.
    pub fn architecture(self) -> &'static str {
        match self {
            TopKSelection::PerSample => "topk",
            TopKSelection::Batch => "batchtopk",
        }
    }

    /// The architecture an SAELens inference file records: `topk`, or
    /// `jumprelu` for BatchTopK (its threshold broadcast to every latent).
    pub fn saelens_inference_architecture(self) -> &'static str {
        match self {
            TopKSelection::PerSample => "topk",
            TopKSelection::Batch => "jumprelu",
        }
    }
}

/// Hyperparameters of a [`TopKSae`]; with the seed they fix every number of a run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopKConfig {
    /// Number of latents `N` (rows of the dictionary).
    pub n_latents: usize,
    /// Data dimension `M`.
    pub dim: usize,
    /// Per-sample or batch selection.
    pub selection: TopKSelection,
    /// Non-zeros per sample (BatchTopK: on average), `1 ≤ k ≤ N` (SAELens `k`).
    pub k: usize,
    /// Dead latents each sample uses in the AuxK loss (SAELens / OpenAI:
    /// `dim / 2`); 0 disables AuxK. At most `N`.
    pub aux_k: usize,
    /// Weight of the AuxK loss (SAELens `aux_loss_coefficient`, default 1);
    /// 0 disables AuxK.
    pub aux_k_coefficient: f32,
    /// A latent not selected for more than this many steps is dead (SAELens
    /// `dead_feature_window`, default 1000).
    pub dead_feature_window: usize,
    /// Rate `r ∈ (0, 1]` of BatchTopK's threshold average (SAELens
    /// `topk_threshold_lr`, default 0.01); unused by TopK.
    pub topk_threshold_lr: f32,
    /// Adam hyperparameters, shared by every parameter tensor.
    pub adam: AdamConfig,
    /// Project `∂L/∂D` to the tangent space of the unit spheres before the
    /// step (SAELens / OpenAI practice); the atoms are renormalised either way.
    pub project_decoder_gradient: bool,
    /// Seed of the initialisation.
    pub seed: u64,
}

impl TopKConfig {
    /// A TopK SAE with SAELens' defaults: `aux_k = max(dim / 2, 1)`,
    /// `aux_k_coefficient = 1`, `dead_feature_window = 1000`, projected
    /// decoder gradient; Adam lr 1e-3 (the crate's learned-D default).
    pub fn topk(n_latents: usize, dim: usize, k: usize, seed: u64) -> Self {
        TopKConfig {
            n_latents,
            dim,
            selection: TopKSelection::PerSample,
            k,
            aux_k: (dim / 2).clamp(1, n_latents.max(1)),
            aux_k_coefficient: 1.0,
            dead_feature_window: 1000,
            topk_threshold_lr: 0.01,
            adam: AdamConfig::with_lr(1e-3),
            project_decoder_gradient: true,
            seed,
        }
    }

    /// A BatchTopK SAE, otherwise as [`Self::topk`] (`topk_threshold_lr = 0.01`).
    pub fn batch_topk(n_latents: usize, dim: usize, k: usize, seed: u64) -> Self {
        TopKConfig {
            selection: TopKSelection::Batch,
            ..Self::topk(n_latents, dim, k, seed)
        }
    }

    /// Checks sizes (≥ 1), `1 ≤ k ≤ N`, `aux_k ≤ N`, a finite non-negative
    /// AuxK weight, `topk_threshold_lr ∈ (0, 1]` and the Adam hyperparameters.
    pub fn validate(&self) -> Result<()> {
        validate_common(self.n_latents, self.dim, 0.0, &self.adam)?;
        if self.k == 0 || self.k > self.n_latents {
            return Err(Error::invalid(
                "k",
                self.k,
                "must be between 1 and the number of latents",
            ));
        }
        if self.aux_k > self.n_latents {
            return Err(Error::invalid(
                "aux_k",
                self.aux_k,
                "must be at most the number of latents (0 disables AuxK)",
            ));
        }
        if !(self.aux_k_coefficient.is_finite() && self.aux_k_coefficient >= 0.0) {
            return Err(Error::invalid(
                "aux_k_coefficient",
                self.aux_k_coefficient,
                "must be finite and non-negative",
            ));
        }
        if !(self.topk_threshold_lr > 0.0 && self.topk_threshold_lr <= 1.0) {
            return Err(Error::invalid(
                "topk_threshold_lr",
                self.topk_threshold_lr,
                "must be in (0, 1]",
            ));
        }
        Ok(())
    }

    /// Whether AuxK can be active (`aux_k ≥ 1` and a positive weight).
    fn uses_aux(&self) -> bool {
        self.aux_k > 0 && self.aux_k_coefficient > 0.0
    }
}

/// Gradients of the TopK loss with respect to every parameter tensor.
#[derive(Clone, Debug)]
pub struct TopKGradients {
    /// `∂L/∂W_enc (M × N)`: non-zero only in the columns of selected latents.
    pub w_enc: Matrix,
    /// `∂L/∂b_enc (N)`.
    pub b_enc: Vec<f32>,
    /// `∂L/∂D (N × M)`, **before** the tangent projection.
    pub dictionary: Matrix,
    /// `∂L/∂b_dec (M) = Σ_rows ∂L/∂X̂ − W_enc·∂L/∂b_enc` (it enters the decoder
    /// and, subtracted, the encoder input).
    pub decoder_bias: Vec<f32>,
}

/// Sparse codes in compressed-row form: the entries of sample `i` are
/// `start[i]..start[i + 1]`, latents ascending.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct SparseCodes {
    pub(super) start: Vec<usize>,
    pub(super) latent: Vec<usize>,
    pub(super) value: Vec<f32>,
}

impl SparseCodes {
    pub(super) fn clear(&mut self) {
        self.start.clear();
        self.start.push(0);
        self.latent.clear();
        self.value.clear();
    }

    /// Closes the current sample.
    pub(super) fn end_row(&mut self) {
        self.start.push(self.latent.len());
    }

    pub(super) fn push(&mut self, latent: usize, value: f32) {
        self.latent.push(latent);
        self.value.push(value);
    }

    pub(super) fn rows(&self) -> usize {
        self.start.len() - 1
    }

    pub(super) fn row(&self, i: usize) -> Range<usize> {
        self.start[i]..self.start[i + 1]
    }

    /// The positive entries of `z (n × N)`, row by row, unless there are more
    /// than `max_entries`: then `false`, with `self` holding a partial list.
    /// One pass that stops early on dense codes.
    pub(super) fn fill_from_positive(&mut self, z: &Matrix, max_entries: usize) -> bool {
        self.clear();
        for i in 0..z.rows() {
            for (j, &v) in z.row(i).iter().enumerate() {
                if v > 0.0 {
                    self.push(j, v);
                }
            }
            if self.latent.len() > max_entries {
                return false;
            }
            self.end_row();
        }
        true
    }

    pub(super) fn to_dense(&self, n_latents: usize) -> Matrix {
        let mut z = Matrix::zeros(self.rows(), n_latents);
        for i in 0..self.rows() {
            for e in self.row(i) {
                z.set(i, self.latent[e], self.value[e]);
            }
        }
        z
    }
}

/// Keeps in `candidates` (indices into `values`) the `k` with the largest
/// values, ties to the lower index, sorted ascending. The order is total, so
/// the selected set is deterministic. Expected cost linear in the candidates.
fn keep_largest(values: &[f32], candidates: &mut Vec<usize>, k: usize) {
    if k == 0 {
        candidates.clear();
        return;
    }
    if k < candidates.len() {
        candidates.select_nth_unstable_by(k - 1, |&a, &b| {
            values[b].total_cmp(&values[a]).then(a.cmp(&b))
        });
        candidates.truncate(k);
    }
    candidates.sort_unstable();
}

/// Sort key of a positive value at `index`: larger keys are larger values,
/// then lower indices (the order of [`keep_largest`]). The bits of a positive
/// `f32` order as the values do, so no float comparison is needed.
fn positive_key(value: f32, index: usize) -> u64 {
    ((value.to_bits() as u64) << 32) | (u32::MAX - index as u32) as u64
}

/// The `k` largest entries of `row` that are `> 0` (ties to the lower index),
/// written to `out` in ascending latent order, the rest of `out` filled with
/// `(u32::MAX, 0)`. One pass with a min-heap of the `k` best keys: a block of
/// 16 values is only looked at one by one when one of them beats the current
/// k-th largest, which after the first few blocks is rare (expected
/// `O(N + k·log(N/k)·log k)`).
fn top_k_positive(
    row: &[f32],
    k: usize,
    heap: &mut BinaryHeap<Reverse<u64>>,
    out: &mut [(u32, f32)],
) {
    heap.clear();
    // Values not above `floor` cannot enter: 0 until the heap is full, then
    // the k-th largest (an equal value later in the row has a higher index, so it loses).
    let mut floor = 0.0f32;
    const BLOCK: usize = 16;
    for (b, block) in row.chunks(BLOCK).enumerate() {
        if !block.iter().fold(false, |any, &v| any | (v > floor)) {
            continue;
        }
        for (o, &v) in block.iter().enumerate() {
            if v <= floor {
                continue;
            }
            let key = positive_key(v, b * BLOCK + o);
            if heap.len() < k {
                heap.push(Reverse(key));
                if heap.len() == k {
                    floor = f32::from_bits((heap.peek().expect("k ≥ 1").0 >> 32) as u32);
                }
            } else {
                let mut least = heap.peek_mut().expect("k ≥ 1");
                if key > least.0 {
                    *least = Reverse(key);
                    drop(least);
                    floor = f32::from_bits((heap.peek().expect("k ≥ 1").0 >> 32) as u32);
                }
            }
        }
    }
    let found = heap.len();
    for (slot, Reverse(key)) in out.iter_mut().zip(heap.drain()) {
        let index = u32::MAX - key as u32;
        *slot = (index, f32::from_bits((key >> 32) as u32));
    }
    out[..found].sort_unstable_by_key(|&(j, _)| j);
    out[found..].iter_mut().for_each(|s| *s = (u32::MAX, 0.0));
}

/// TopK: per row of `pre (n × N)`, the `k` largest entries that are `> 0`
/// (ties to the lower index). Rows are independent: on large batches they are
/// split over the threads into `picked (n × k)`, then gathered in row order,
/// so the codes do not depend on the thread count.
fn select_per_sample(
    pre: &Matrix,
    k: usize,
    codes: &mut SparseCodes,
    picked: &mut Vec<(u32, f32)>,
) {
    codes.clear();
    let (n, nl) = pre.shape();
    if k == 0 || nl == 0 {
        (0..n).for_each(|_| codes.end_row());
        return;
    }
    picked.clear();
    picked.resize(n * k, (u32::MAX, 0.0));
    if n * nl >= PARALLEL_SELECTION {
        let rows = pre.as_slice().par_chunks(nl).zip(picked.par_chunks_mut(k));
        rows.for_each_init(
            || BinaryHeap::with_capacity(k),
            |heap, (row, out)| top_k_positive(row, k, heap, out),
        );
    } else {
        let mut heap = BinaryHeap::with_capacity(k);
        let rows = pre.as_slice().chunks(nl).zip(picked.chunks_mut(k));
        rows.for_each(|(row, out)| top_k_positive(row, k, &mut heap, out));
    }
    for row in picked.chunks(k) {
        for &(j, v) in row.iter().take_while(|&&(j, _)| j != u32::MAX) {
            codes.push(j as usize, v);
        }
        codes.end_row();
    }
}

/// Pre-activations (`n·N`) from which the per-sample selection splits rows
/// over the threads.
const PARALLEL_SELECTION: usize = 1 << 18;

/// BatchTopK: the `n·k` largest entries of `pre (n × N)` that are `> 0`.
pub(super) fn select_batch(pre: &Matrix, k: usize, codes: &mut SparseCodes, cand: &mut Vec<usize>) {
    codes.clear();
    let (n, nl) = pre.shape();
    let values = pre.as_slice();
    cand.clear();
    cand.extend(0..n * nl);
    keep_largest(values, cand, n * k);
    let mut next = cand.iter().peekable();
    for i in 0..n {
        while let Some(&&f) = next.peek() {
            if f >= (i + 1) * nl {
                break;
            }
            if values[f] > 0.0 {
                codes.push(f - i * nl, values[f]);
            }
            next.next();
        }
        codes.end_row();
    }
}

/// JumpReLU selection: entries of `pre` with `pre > θ_j` and `pre > 0`
/// (`threshold(j)` = θ_j; BatchTopK inference uses one θ for all latents).
pub(super) fn select_above(
    pre: &Matrix,
    threshold: impl Fn(usize) -> f32,
    codes: &mut SparseCodes,
) {
    codes.clear();
    for i in 0..pre.rows() {
        for (j, &v) in pre.row(i).iter().enumerate() {
            if v > threshold(j) && v > 0.0 {
                codes.push(j, v);
            }
        }
        codes.end_row();
    }
}

/// AuxK: per row, the `a` largest raw pre-activations among the `dead` latents.
pub(super) fn select_dead(
    pre: &Matrix,
    dead: &[usize],
    a: usize,
    codes: &mut SparseCodes,
    cand: &mut Vec<usize>,
) {
    codes.clear();
    for i in 0..pre.rows() {
        let row = pre.row(i);
        cand.clear();
        cand.extend_from_slice(dead);
        keep_largest(row, cand, a);
        for &j in cand.iter() {
            codes.push(j, row[j]);
        }
        codes.end_row();
    }
}

/// `out_i += Σ_e value_e · D_{latent_e}` over the entries of each sample:
/// a sparse × dense product, `2·M` FLOPs per entry.
pub(super) fn add_sparse_times_dense(codes: &SparseCodes, d: &Matrix, out: &mut Matrix) {
    let m = out.cols();
    let row = |(i, row): (usize, &mut [f32])| {
        for e in codes.row(i) {
            let v = codes.value[e];
            row.iter_mut()
                .zip(d.row(codes.latent[e]))
                .for_each(|(o, &a)| *o += v * a);
        }
    };
    // Rows are independent: parallel on large batches, same numbers either way.
    if codes.latent.len() * m >= SPARSE_BACKWARD_LARGE {
        out.as_mut_slice()
            .par_chunks_mut(m)
            .enumerate()
            .for_each(row);
    } else {
        out.as_mut_slice().chunks_mut(m).enumerate().for_each(row);
    }
}

/// `grads_e = ⟨g_i, D_j⟩` for each entry `e = (i, j)`: `∂L/∂value` of a
/// sparse decode with output gradient `g (n × M)`. `2·M` FLOPs per entry.
pub(super) fn code_gradients(codes: &SparseCodes, d: &Matrix, g: &Matrix, grads: &mut Vec<f32>) {
    let dot =
        |e: usize, i: usize| -> f32 { dot_f64_by_lanes(g.row(i), d.row(codes.latent[e])) as f32 };
    grads.clear();
    grads.resize(codes.latent.len(), 0.0);
    // Entries are independent: parallel over samples on large batches.
    if codes.latent.len() * g.cols() >= SPARSE_BACKWARD_LARGE {
        let mut by_row: Vec<&mut [f32]> = Vec::with_capacity(codes.rows());
        let mut rest: &mut [f32] = grads;
        for i in 0..codes.rows() {
            let (head, tail) = rest.split_at_mut(codes.row(i).len());
            by_row.push(head);
            rest = tail;
        }
        by_row.into_par_iter().enumerate().for_each(|(i, out)| {
            for (o, e) in out.iter_mut().zip(codes.row(i)) {
                *o = dot(e, i);
            }
        });
    } else {
        for i in 0..codes.rows() {
            for e in codes.row(i) {
                grads[e] = dot(e, i);
            }
        }
    }
}

/// Backward of [`add_sparse_times_dense`] for output gradient `g (n × M)`:
/// [`code_gradients`] (written), then `d_dict_j += value_e·g_i`
/// (accumulated). `4·M` FLOPs per entry.
pub(super) fn sparse_decode_backward(
    codes: &SparseCodes,
    d: &Matrix,
    g: &Matrix,
    grads: &mut Vec<f32>,
    d_dict: &mut Matrix,
) {
    code_gradients(codes, d, g, grads);
    add_codes_transposed_times(codes, g, d_dict);
}

/// `d_dict_j += value_e·g_i` for every entry `e = (i, j)`: `Zᵀ·g` for sparse
/// `Z`, accumulated (the dictionary gradient of a sparse decode). `2·M` FLOPs per entry.
/// Each atom sums its entries in sample order; large problems split the atoms
/// into ranges, one per thread, each scanning every entry for its own, so the
/// numbers do not depend on the split.
pub(super) fn add_codes_transposed_times(codes: &SparseCodes, g: &Matrix, d_dict: &mut Matrix) {
    let m = d_dict.cols();
    let add_range = |first: usize, atoms: &mut [f32]| {
        let end = first + atoms.len() / m.max(1);
        for i in 0..codes.rows() {
            let gi = g.row(i);
            for e in codes.row(i) {
                let j = codes.latent[e];
                if (first..end).contains(&j) {
                    let v = codes.value[e];
                    atoms[(j - first) * m..(j - first + 1) * m]
                        .iter_mut()
                        .zip(gi)
                        .for_each(|(o, &a)| *o += v * a);
                }
            }
        }
    };
    let threads = rayon::current_num_threads();
    if codes.latent.len() * m < SPARSE_BACKWARD_LARGE || threads <= 1 || m == 0 {
        add_range(0, d_dict.as_mut_slice());
        return;
    }
    let per_range = d_dict.rows().div_ceil(threads);
    d_dict
        .as_mut_slice()
        .par_chunks_mut(per_range * m)
        .enumerate()
        .for_each(|(r, atoms)| add_range(r * per_range, atoms));
}

/// Buffers of [`sparse_encoder_backward`]'s large-problem path, kept by the
/// caller so that steps do not allocate: the entries grouped by latent, and
/// the gradient transposed (`N × M`, one contiguous row per latent).
#[derive(Clone, Debug, Default)]
pub(super) struct EncoderBackwardScratch {
    /// Entries of latent `j`: `by_latent[start[j]..start[j + 1]]`, in sample order.
    start: Vec<usize>,
    by_latent: Vec<(u32, f32)>,
    transposed: Vec<f32>,
}

/// Straight-through backward to the encoder for sparse `∂L/∂pre` entries:
/// `dW[:, j] += input_iᵀ·δ_e`, `db_j += δ_e`. `2·M + 1` FLOPs per entry.
pub(super) fn sparse_encoder_backward(
    codes: &SparseCodes,
    deltas: &[f32],
    input: &Matrix,
    grads: &mut LayerGrads,
    scratch: &mut EncoderBackwardScratch,
) {
    let nl = grads.dw.cols();
    let dim = input.cols();
    for (&j, &delta) in codes.latent.iter().zip(deltas) {
        grads.db[j] += delta;
    }
    if codes.latent.len() * dim < SPARSE_BACKWARD_LARGE {
        // Small problems: straight into W_enc's layout (column j strides N floats).
        let dw = grads.dw.as_mut_slice();
        for i in 0..codes.rows() {
            for e in codes.row(i) {
                let (j, delta) = (codes.latent[e], deltas[e]);
                for (m, &xv) in input.row(i).iter().enumerate() {
                    dw[m * nl + j] += xv * delta;
                }
            }
        }
        return;
    }
    // Large problems: per latent, sum `δ·x_i` over its samples into a
    // contiguous row (vectorised, latents in parallel), then add the
    // transpose into ∂W_enc tile by tile. Both orders are fixed: deterministic.
    let s = scratch;
    s.start.clear();
    s.start.resize(nl + 1, 0);
    for &j in &codes.latent {
        s.start[j + 1] += 1;
    }
    for j in 0..nl {
        s.start[j + 1] += s.start[j];
    }
    s.by_latent.clear();
    s.by_latent.resize(codes.latent.len(), (0, 0.0));
    let mut fill = s.start.clone();
    for i in 0..codes.rows() {
        for e in codes.row(i) {
            let j = codes.latent[e];
            s.by_latent[fill[j]] = (i as u32, deltas[e]);
            fill[j] += 1;
        }
    }
    s.transposed.resize(nl * dim, 0.0);
    let (start, by_latent) = (&s.start, &s.by_latent);
    s.transposed
        .par_chunks_mut(dim)
        .enumerate()
        .for_each(|(j, row)| {
            row.iter_mut().for_each(|v| *v = 0.0);
            for &(i, delta) in &by_latent[start[j]..start[j + 1]] {
                row.iter_mut()
                    .zip(input.row(i as usize))
                    .for_each(|(r, &xv)| *r += xv * delta);
            }
        });
    const TILE: usize = 32;
    let transposed = &s.transposed;
    grads
        .dw
        .as_mut_slice()
        .par_chunks_mut(nl * TILE)
        .enumerate()
        .for_each(|(tile, rows)| {
            let m0 = tile * TILE;
            for j0 in (0..nl).step_by(TILE) {
                if start[(j0 + TILE).min(nl)] == start[j0] {
                    continue; // no entry in these latents
                }
                for (dm, dw_m) in rows.chunks_mut(nl).enumerate() {
                    let m = m0 + dm;
                    for j in j0..(j0 + TILE).min(nl) {
                        dw_m[j] += transposed[j * dim + m];
                    }
                }
            }
        });
}

/// Multiply-adds of the sparse encoder backward from which it takes the
/// grouped, parallel path (below: one thread, W_enc's layout directly).
const SPARSE_BACKWARD_LARGE: usize = 1 << 20;

/// The SAELens encoder input and pre-activations, written into buffers of
/// the batch's size: `centred = X − b_dec`, `pre = centred·W_enc + b_enc`.
/// FLOPs per sample: `M + 2MN + N`.
pub(super) fn pre_activations(
    x: &Matrix,
    b_dec: &[f32],
    encoder: &LinearReluLayer,
    centred: &mut Matrix,
    pre: &mut Matrix,
) {
    for i in 0..x.rows() {
        let row = centred.row_mut(i);
        for ((c, &xv), &b) in row.iter_mut().zip(x.row(i)).zip(b_dec) {
            *c = xv - b;
        }
    }
    gemm_into(
        pre.view_mut(),
        false,
        centred.view(),
        Op::N,
        encoder.w.view(),
        Op::N,
        1.0,
    );
    for i in 0..x.rows() {
        pre.row_mut(i)
            .iter_mut()
            .zip(&encoder.b)
            .for_each(|(v, &b)| *v += b);
    }
}

/// `∂L/∂b_dec = Σ_rows ∂L/∂X̂ − W_enc·∂L/∂b_enc`: `b_dec` enters the decoder
/// and, subtracted, the encoder input. FLOPs: `n·M` (column sums) `+ 2MN + M`.
pub(super) fn decoder_bias_gradient(
    output_grad: &Matrix,
    encoder: &LinearReluLayer,
    d_b_enc: &[f32],
    out: &mut [f32],
) {
    // Column sums 64 columns at a time, row by row (contiguous reads, each
    // column summed in row order), in a stack buffer: no allocation per step.
    const COLS: usize = 64;
    for c0 in (0..out.len()).step_by(COLS) {
        let width = COLS.min(out.len() - c0);
        let mut direct = [0.0f64; COLS];
        for r in output_grad.rows_iter() {
            direct
                .iter_mut()
                .zip(&r[c0..c0 + width])
                .for_each(|(s, &g)| *s += g as f64);
        }
        for (dm, s) in out[c0..c0 + width].iter_mut().enumerate() {
            let through_encoder = dot_f64_by_lanes(encoder.w.row(c0 + dm), d_b_enc);
            *s = (direct[dm] - through_encoder) as f32;
        }
    }
}

/// Initial `(encoder, dictionary)`: the learned-D [`Autoencoder`] SAE's
/// `W_enc` and `D` for this seed, `b_enc = 0`.
pub(super) fn initial_parameters(
    n_latents: usize,
    dim: usize,
    adam: AdamConfig,
    seed: u64,
) -> Result<(LinearReluLayer, Matrix)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut encoder = LinearReluLayer::init(&mut rng, dim, n_latents, true, adam);
    encoder.b.iter_mut().for_each(|b| *b = 0.0);
    let dictionary = Autoencoder::new(AutoencoderConfig::paper_sae(n_latents, dim, seed))?
        .dictionary()
        .clone();
    Ok((encoder, dictionary))
}

/// A TopK or BatchTopK SAE with a learned unit-norm dictionary and AuxK.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopKSae {
    config: TopKConfig,
    /// `W_enc (M × N)` and `b_enc (N)` with their Adam state. Its ReLU
    /// forward is not used: the selection needs the raw pre-activations.
    encoder: LinearReluLayer,
    dictionary: Matrix,
    b_dec: Vec<f32>,
    dict_opt: UnitNormAdam,
    b_dec_adam: Adam,
    /// Training steps since each latent was last selected.
    steps_since_fired: Vec<usize>,
    /// BatchTopK's inference threshold θ (0 for TopK).
    threshold: f32,
    /// Scratch buffers: not part of the model's state, so not serialised.
    #[serde(skip)]
    work: Work,
}

/// Buffers of one training step, sized for the last batch so that steps on
/// batches of the same size reallocate nothing but the sparse lists' growth.
#[derive(Clone, Debug)]
struct Work {
    /// `X − b_dec (n × M)`.
    centred: Matrix,
    /// Pre-activations `(n × N)`.
    pre: Matrix,
    /// Selected codes, and `∂L/∂pre` at each of them.
    codes: SparseCodes,
    code_grads: Vec<f32>,
    /// AuxK codes (dead latents), and `∂L/∂pre` at each of them.
    aux: SparseCodes,
    aux_grads: Vec<f32>,
    /// AuxK weight of this step, `aux_k_coefficient · s` (0 when inactive).
    aux_weight: f64,
    /// `X̂ − X`, then `∂L/∂X̂` (`n × M`).
    residual: Matrix,
    /// `Z_aux·D − e`, then `∂AuxK/∂(Z_aux·D)` (`n × M`).
    aux_residual: Matrix,
    /// Index scratch for the selections, and the dead latents.
    cand: Vec<usize>,
    /// The per-sample selection's `(latent, value)` slots, `k` per sample.
    picked: Vec<(u32, f32)>,
    dead: Vec<usize>,
    /// Encoder gradients.
    grads: LayerGrads,
    /// `∂L/∂D (N × M)`.
    d_dict: Matrix,
    /// `∂L/∂b_dec (M)`.
    d_b_dec: Vec<f32>,
    /// Buffers of the encoder's sparse backward.
    encoder_scratch: EncoderBackwardScratch,
}

impl Default for Work {
    /// Empty buffers, without allocating: the placeholder while `train_step`
    /// lends the real ones out.
    fn default() -> Self {
        Self::new(0, 0, 0)
    }
}

impl Work {
    fn new(n: usize, n_latents: usize, dim: usize) -> Self {
        Work {
            centred: Matrix::zeros(n, dim),
            pre: Matrix::zeros(n, n_latents),
            codes: SparseCodes::default(),
            code_grads: Vec::new(),
            aux: SparseCodes::default(),
            aux_grads: Vec::new(),
            aux_weight: 0.0,
            residual: Matrix::zeros(n, dim),
            aux_residual: Matrix::zeros(n, dim),
            cand: Vec::new(),
            picked: Vec::new(),
            dead: Vec::new(),
            grads: LayerGrads::new(dim, n_latents),
            d_dict: Matrix::zeros(n_latents, dim),
            d_b_dec: vec![0.0; dim],
            encoder_scratch: EncoderBackwardScratch::default(),
        }
    }

    fn ensure_batch(&mut self, n: usize) {
        for m in [
            &mut self.centred,
            &mut self.pre,
            &mut self.residual,
            &mut self.aux_residual,
        ] {
            ensure_rows(m, n);
        }
    }
}

impl TopKSae {
    /// A freshly initialised SAE (see the module documentation): the encoder
    /// weight and the dictionary are those of the learned-D
    /// [`Autoencoder`] SAE with the same seed; both biases start at zero.
    pub fn new(config: TopKConfig) -> Result<Self> {
        config.validate()?;
        let (nl, m) = (config.n_latents, config.dim);
        let (encoder, dictionary) = initial_parameters(nl, m, config.adam, config.seed)?;
        Ok(TopKSae {
            dict_opt: UnitNormAdam::new(nl, m, config.adam, config.project_decoder_gradient),
            b_dec_adam: Adam::new(m, config.adam),
            b_dec: vec![0.0; m],
            steps_since_fired: vec![0; nl],
            threshold: 0.0,
            work: Work::new(0, nl, m),
            config,
            encoder,
            dictionary,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TopKConfig {
        &self.config
    }

    /// The learned dictionary `D (N × M)`, atoms as unit-norm rows (SAELens `W_dec`).
    pub fn dictionary(&self) -> &Matrix {
        &self.dictionary
    }

    /// `W_enc (M × N)`, SAELens orientation.
    pub fn w_enc(&self) -> &Matrix {
        &self.encoder.w
    }

    /// `b_enc (N)`.
    pub fn b_enc(&self) -> &[f32] {
        &self.encoder.b
    }

    /// `b_dec (M)`.
    pub fn decoder_bias(&self) -> &[f32] {
        &self.b_dec
    }

    /// Sets the learning rate of every Adam state for the following steps
    /// (learning-rate schedules); the configuration keeps the initial one.
    pub fn set_lr(&mut self, lr: f32) {
        self.encoder.set_lr(lr);
        self.dict_opt.set_lr(lr);
        self.b_dec_adam.config.lr = lr;
    }

    /// Sets `b_dec (M)` (e.g. to the geometric median of the data); fails on a wrong length.
    pub fn set_decoder_bias(&mut self, b_dec: &[f32]) -> Result<()> {
        if b_dec.len() != self.config.dim {
            return Err(Error::invalid(
                "b_dec",
                b_dec.len(),
                "needs one value per dimension",
            ));
        }
        self.b_dec.copy_from_slice(b_dec);
        Ok(())
    }

    /// The latents selected at the last [`Self::train_step`], one entry per
    /// selected (sample, latent) pair; empty before the first step of this process.
    pub fn last_selected_latents(&self) -> &[usize] {
        &self.work.codes.latent
    }

    /// BatchTopK's inference threshold θ (SAELens `topk_threshold`, exported
    /// as the JumpReLU `threshold` of every latent); `None` for TopK.
    pub fn inference_threshold(&self) -> Option<f32> {
        (self.config.selection == TopKSelection::Batch).then_some(self.threshold)
    }

    /// The latents AuxK treats as dead at the next step: not selected for
    /// more than `dead_feature_window` steps.
    pub fn dead_latents(&self) -> Vec<usize> {
        let window = self.config.dead_feature_window;
        (0..self.config.n_latents)
            .filter(|&j| self.steps_since_fired[j] > window)
            .collect()
    }

    /// Number of trained parameters: `MN + N` (encoder) `+ NM` (dictionary) `+ M` (`b_dec`).
    pub fn n_params(&self) -> usize {
        self.encoder.n_params() + self.dictionary.as_slice().len() + self.config.dim
    }

    /// Inference codes `Z (n × N)` of `x (n × M)`: the per-sample top-k for
    /// TopK; `pre·[pre > θ]` for BatchTopK (independent of the batch).
    pub fn encode(&self, x: &Matrix) -> Result<Matrix> {
        check_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let mut work = Work::new(x.rows(), self.config.n_latents, self.config.dim);
        self.pre_activations(x, &mut work);
        match self.config.selection {
            TopKSelection::PerSample => {
                select_per_sample(&work.pre, self.config.k, &mut work.codes, &mut work.picked)
            }
            TopKSelection::Batch => select_above(&work.pre, |_| self.threshold, &mut work.codes),
        }
        Ok(work.codes.to_dense(self.config.n_latents))
    }

    /// The codes the training loss uses on the batch `x`: as [`Self::encode`]
    /// for TopK; the batch's `n·k` largest positive pre-activations for BatchTopK.
    pub fn encode_training(&self, x: &Matrix) -> Result<Matrix> {
        check_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let mut work = Work::new(x.rows(), self.config.n_latents, self.config.dim);
        self.pre_activations(x, &mut work);
        self.select(&mut work);
        Ok(work.codes.to_dense(self.config.n_latents))
    }

    /// `X̂ = Z·D + b_dec` for dense codes `z (n × N)`.
    pub fn decode(&self, z: &Matrix) -> Result<Matrix> {
        super::decode(z, &self.dictionary, &self.b_dec)
    }

    /// The training loss on `x (n × M)` (AuxK included, with the current dead
    /// latents), without gradients and without changing any state.
    pub fn loss(&self, x: &Matrix) -> Result<f64> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let mut work = Work::new(x.rows(), self.config.n_latents, self.config.dim);
        Ok(self.forward_loss(x, &mut work))
    }

    /// The loss with the gradient of every parameter tensor (dictionary
    /// gradient before projection). Allocates its own buffers.
    pub fn loss_and_gradients(&self, x: &Matrix) -> Result<(f64, TopKGradients)> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let mut work = Work::new(x.rows(), self.config.n_latents, self.config.dim);
        let loss = self.forward_backward(x, &mut work);
        Ok((
            loss,
            TopKGradients {
                w_enc: work.grads.dw,
                b_enc: work.grads.db,
                dictionary: work.d_dict,
                decoder_bias: work.d_b_dec,
            },
        ))
    }

    /// One Adam step on the batch `x (n × M)`: `W_enc`, `b_enc`, `b_dec` and
    /// the dictionary (projected when configured, then renormalised); then the
    /// dead-latent counters and, for BatchTopK, the threshold average. Returns
    /// the loss before the step. Fails, leaving every parameter and state
    /// untouched, on bad input or a non-finite loss.
    pub fn train_step(&mut self, x: &Matrix) -> Result<f32> {
        check_training_batch(x, &self.dictionary, self.config.n_latents, self.config.dim)?;
        let mut work = std::mem::take(&mut self.work);
        if work.d_dict.rows() != self.config.n_latents {
            // A deserialised model starts without buffers.
            work = Work::new(x.rows(), self.config.n_latents, self.config.dim);
        }
        let loss = self.forward_backward(x, &mut work);
        if let Err(e) = check_loss(loss) {
            self.work = work;
            return Err(e);
        }
        self.encoder.step(&work.grads);
        self.dict_opt.step(&mut self.dictionary, &mut work.d_dict);
        self.b_dec_adam.step(&mut self.b_dec, &work.d_b_dec);
        self.steps_since_fired.iter_mut().for_each(|s| *s += 1);
        for &j in &work.codes.latent {
            self.steps_since_fired[j] = 0;
        }
        if self.config.selection == TopKSelection::Batch {
            if let Some(min) = work.codes.value.iter().copied().reduce(f32::min) {
                let r = self.config.topk_threshold_lr;
                self.threshold = (1.0 - r) * self.threshold + r * min;
            }
        }
        self.work = work;
        Ok(loss as f32)
    }

    /// `centred = X − b_dec`, `pre = centred·W_enc + b_enc`.
    fn pre_activations(&self, x: &Matrix, work: &mut Work) {
        work.ensure_batch(x.rows());
        pre_activations(
            x,
            &self.b_dec,
            &self.encoder,
            &mut work.centred,
            &mut work.pre,
        );
    }

    /// The training selection of `work.pre` into `work.codes`.
    fn select(&self, work: &mut Work) {
        match self.config.selection {
            TopKSelection::PerSample => {
                select_per_sample(&work.pre, self.config.k, &mut work.codes, &mut work.picked)
            }
            TopKSelection::Batch => {
                select_batch(&work.pre, self.config.k, &mut work.codes, &mut work.cand)
            }
        }
    }

    /// Forward and loss: leaves `residual = X̂ − X` and, when AuxK is active,
    /// `aux_residual = Z_aux·D − e` and `aux_weight`.
    fn forward_loss(&self, x: &Matrix, work: &mut Work) -> f64 {
        self.pre_activations(x, work);
        self.select(work);
        let (n, m) = x.shape();
        for i in 0..n {
            let row = work.residual.row_mut(i);
            for ((r, &xv), &b) in row.iter_mut().zip(x.row(i)).zip(&self.b_dec) {
                *r = b - xv;
            }
        }
        add_sparse_times_dense(&work.codes, &self.dictionary, &mut work.residual);
        let count = (n * m) as f64;
        let mse = work.residual.norm_sq() / count;

        work.dead.clear();
        work.aux_weight = 0.0;
        if !self.config.uses_aux() {
            return mse;
        }
        let window = self.config.dead_feature_window;
        work.dead
            .extend((0..self.config.n_latents).filter(|&j| self.steps_since_fired[j] > window));
        if work.dead.is_empty() {
            return mse;
        }
        let a = self.config.aux_k.min(work.dead.len());
        let scale = (work.dead.len() as f64 / self.config.aux_k as f64).min(1.0);
        work.aux_weight = self.config.aux_k_coefficient as f64 * scale;
        let dead = std::mem::take(&mut work.dead);
        select_dead(&work.pre, &dead, a, &mut work.aux, &mut work.cand);
        work.dead = dead;
        // Z_aux·D − e with e = X − X̂ = −residual: Z_aux·D + residual.
        work.aux_residual
            .as_mut_slice()
            .copy_from_slice(work.residual.as_slice());
        add_sparse_times_dense(&work.aux, &self.dictionary, &mut work.aux_residual);
        mse + work.aux_weight * work.aux_residual.norm_sq() / count
    }

    /// Forward, loss and backward: leaves every gradient in `work`.
    fn forward_backward(&self, x: &Matrix, work: &mut Work) -> f64 {
        let loss = self.forward_loss(x, work);
        let count = (x.rows() * self.config.dim) as f64;
        let scale = (2.0 / count) as f32;
        work.residual
            .as_mut_slice()
            .iter_mut()
            .for_each(|r| *r *= scale);
        work.d_dict.as_mut_slice().iter_mut().for_each(|v| *v = 0.0);
        sparse_decode_backward(
            &work.codes,
            &self.dictionary,
            &work.residual,
            &mut work.code_grads,
            &mut work.d_dict,
        );
        work.grads
            .dw
            .as_mut_slice()
            .iter_mut()
            .for_each(|v| *v = 0.0);
        work.grads.db.iter_mut().for_each(|v| *v = 0.0);
        sparse_encoder_backward(
            &work.codes,
            &work.code_grads,
            &work.centred,
            &mut work.grads,
            &mut work.encoder_scratch,
        );
        if work.aux_weight > 0.0 {
            let aux_scale = (2.0 * work.aux_weight / count) as f32;
            work.aux_residual
                .as_mut_slice()
                .iter_mut()
                .for_each(|r| *r *= aux_scale);
            sparse_decode_backward(
                &work.aux,
                &self.dictionary,
                &work.aux_residual,
                &mut work.aux_grads,
                &mut work.d_dict,
            );
            sparse_encoder_backward(
                &work.aux,
                &work.aux_grads,
                &work.centred,
                &mut work.grads,
                &mut work.encoder_scratch,
            );
        }
        decoder_bias_gradient(
            &work.residual,
            &self.encoder,
            &work.grads.db,
            &mut work.d_b_dec,
        );
        loss
    }

    /// FLOPs of inference on `n` samples: `n·(M + 2MN + 2N)`: centring
    /// `X − b_dec`, the dense encoder product, `+ b_enc`, and one comparison
    /// per latent (TopK: linear-time selection, charged `N`; BatchTopK: the
    /// threshold test). Decoding is not counted (crate convention).
    pub fn encode_flops(&self, n: usize) -> f64 {
        let (m, nl) = (self.config.dim as f64, self.config.n_latents as f64);
        n as f64 * (m + 2.0 * m * nl + 2.0 * nl)
    }

    /// FLOPs of one [`Self::train_step`] on `n` samples, with `k` codes per
    /// sample (an upper bound: exact when every sample has `k` positive
    /// pre-activations; BatchTopK keeps `n·k` in all) and `a = min(aux_k, d)`
    /// AuxK codes per sample for the `d` latents dead **now**
    /// ([`Self::dead_latents`]; `a = 0` when AuxK is off or none is dead):
    ///
    /// ```text
    /// n · [ M + 2MN + 2N                      centre, encoder product, + b_enc, selection
    ///     [BatchTopK] + k                     min of the selected values (threshold average)
    ///       + M + 2kM + 3M                    − X + b_dec, sparse decode, squared error
    ///       + M + 4kM + (2M + 1)k             ∂L/∂X̂; ∂z and ∂D (sparse); ∂W_enc, ∂b_enc (sparse)
    ///       + M                               Σ_rows ∂L/∂X̂ for ∂b_dec
    ///     [a>0] + N + M + 2aM + 3M + M        dead mask, copy, aux decode, error, scale
    ///     [a>0] + 4aM + (2M + 1)a ]           aux backward (same as the main one)
    /// + 2MN + M                               ∂b_dec −= W_enc·∂b_enc, once per step
    /// + 12(MN + N) + 12M                      Adam on W_enc, b_enc, b_dec
    /// + [p] 6NM + 12NM + 3NM                  projection, Adam on D, renormalisation
    /// ```
    ///
    /// TopK at M = 8, N = 16, k = 3, projected, no dead latent: `539n + 4776`
    /// (a dense decode and backward would add `6(N − k)M = 624` per sample).
    pub fn train_step_flops(&self, n: usize) -> f64 {
        let (m, nl, k) = (
            self.config.dim as f64,
            self.config.n_latents as f64,
            self.config.k as f64,
        );
        let mut per_sample = m + 2.0 * m * nl + 2.0 * nl;
        if self.config.selection == TopKSelection::Batch {
            per_sample += k;
        }
        per_sample += 4.0 * m + 2.0 * k * m;
        per_sample += m + 4.0 * k * m + (2.0 * m + 1.0) * k + m;
        let d = self.dead_latents().len();
        if self.config.uses_aux() && d > 0 {
            let a = self.config.aux_k.min(d) as f64;
            per_sample += nl + 5.0 * m + 2.0 * a * m + 4.0 * a * m + (2.0 * m + 1.0) * a;
        }
        let per_step = 2.0 * m * nl
            + m
            + self.encoder.update_flops()
            + ADAM_FLOPS_PER_PARAM * m
            + self
                .dict_opt
                .step_flops(self.config.n_latents, self.config.dim);
        n as f64 * per_sample + per_step
    }
}

#[cfg(test)]
mod tests {
    use super::super::unit_norm::max_atom_norm_error;
    use super::*;

    #[test]
    fn grouped_parallel_encoder_and_dictionary_backward_equal_the_direct_loops_bit_for_bit() {
        use rand::seq::SliceRandom;
        use rand::Rng;
        let (n, nl, m, k) = (1024, 512, 64, 16);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let input = Matrix::from_fn(n, m, |_, _| rng.gen_range(-1.0..1.0));
        let mut codes = SparseCodes::default();
        codes.clear();
        let mut deltas = Vec::new();
        for _ in 0..n {
            let mut latents: Vec<usize> = (0..nl).collect();
            let (chosen, _) = latents.partial_shuffle(&mut rng, k);
            chosen.sort_unstable();
            for &j in chosen.iter() {
                codes.push(j, rng.gen_range(0.1f32..2.0));
                deltas.push(rng.gen_range(-1.0f32..1.0));
            }
            codes.end_row();
        }
        assert!(codes.latent.len() * m >= SPARSE_BACKWARD_LARGE);
        let mut grads = LayerGrads::new(m, nl);
        sparse_encoder_backward(
            &codes,
            &deltas,
            &input,
            &mut grads,
            &mut EncoderBackwardScratch::default(),
        );
        // The direct loop, in W_enc's layout.
        let mut dw = vec![0.0f32; m * nl];
        let mut db = vec![0.0f32; nl];
        for i in 0..n {
            for e in codes.row(i) {
                let (j, d) = (codes.latent[e], deltas[e]);
                for mm in 0..m {
                    dw[mm * nl + j] += input.get(i, mm) * d;
                }
                db[j] += d;
            }
        }
        assert_eq!(grads.dw.as_slice(), &dw[..]);
        assert_eq!(grads.db, db);
        // The dictionary gradient split into atom ranges (three, so uneven)
        // against one loop over the entries in sample order.
        let mut d_dict = Matrix::zeros(nl, m);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        pool.install(|| add_codes_transposed_times(&codes, &input, &mut d_dict));
        let mut direct = Matrix::zeros(nl, m);
        for i in 0..n {
            for e in codes.row(i) {
                let (j, v) = (codes.latent[e], codes.value[e]);
                for mm in 0..m {
                    let sum = direct.get(j, mm) + v * input.get(i, mm);
                    direct.set(j, mm, sum);
                }
            }
        }
        assert_eq!(d_dict, direct);
    }
    use crate::data::SyntheticConfig;
    use crate::encoders::sae::testing::{check_gradient, random_problem};
    use crate::metrics::dictionary_mcc;
    use rand::Rng;

    fn small(selection: TopKSelection, k: usize) -> TopKConfig {
        TopKConfig {
            selection,
            aux_k: 0,
            ..TopKConfig::topk(6, 4, k, 3)
        }
    }

    /// The model's `pre`, checked against the definition `(X − b_dec)·W_enc + b_enc`.
    fn pre(sae: &TopKSae, x: &Matrix) -> Matrix {
        let (nl, m) = (sae.config.n_latents, sae.config.dim);
        let want = Matrix::from_fn(x.rows(), nl, |i, j| {
            sae.b_enc()[j]
                + (0..m)
                    .map(|c| (x.get(i, c) - sae.b_dec[c]) * sae.w_enc().get(c, j))
                    .sum::<f32>()
        });
        let mut work = Work::new(x.rows(), nl, m);
        sae.pre_activations(x, &mut work);
        assert!(work.pre.max_abs_diff(&want) < 1e-4);
        work.pre
    }

    fn perturbed(mut sae: TopKSae) -> TopKSae {
        sae.b_dec = (0..sae.config.dim).map(|c| 0.1 * c as f32 - 0.15).collect();
        sae.encoder
            .b
            .iter_mut()
            .enumerate()
            .for_each(|(j, b)| *b = 0.05 * j as f32 - 0.1);
        sae
    }

    /// Brute force of the per-sample selection: sort every index by value
    /// (descending, ties to the lower index), keep `k`, drop the non-positive.
    fn brute_force_top_k(row: &[f32], k: usize) -> Vec<(usize, f32)> {
        let mut order: Vec<usize> = (0..row.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let mut kept: Vec<(usize, f32)> = order[..k.min(row.len())]
            .iter()
            .filter(|&&j| row[j] > 0.0)
            .map(|&j| (j, row[j]))
            .collect();
        kept.sort_by_key(|&(j, _)| j);
        kept
    }

    fn selected_rows(pre: &Matrix, k: usize) -> Vec<Vec<(usize, f32)>> {
        let (mut codes, mut picked) = (SparseCodes::default(), Vec::new());
        select_per_sample(pre, k, &mut codes, &mut picked);
        assert_eq!(codes.rows(), pre.rows());
        (0..pre.rows())
            .map(|i| {
                codes
                    .row(i)
                    .map(|e| (codes.latent[e], codes.value[e]))
                    .collect()
            })
            .collect()
    }

    proptest::proptest! {
        /// Values from a small set, so ties (and zeros, negatives, −0) are common.
        #[test]
        fn per_sample_selection_equals_a_full_sort(
            levels in proptest::collection::vec(0usize..7, 1..400),
            cols in 1usize..40,
            k in 1usize..12,
        ) {
            const LEVEL: [f32; 7] = [-1.0, -0.0, 0.0, 0.25, 0.5, 1.0, 3.0];
            let rows = levels.len().div_ceil(cols);
            let pre = Matrix::from_fn(rows, cols, |i, j| {
                LEVEL[levels.get(i * cols + j).copied().unwrap_or(0)]
            });
            let k = k.min(cols);
            for (i, got) in selected_rows(&pre, k).into_iter().enumerate() {
                proptest::prop_assert_eq!(got, brute_force_top_k(pre.row(i), k), "row {}", i);
            }
        }
    }

    #[test]
    fn per_sample_selection_on_a_batch_split_over_threads_equals_a_full_sort() {
        // Past PARALLEL_SELECTION, with ties from rounding to a coarse grid.
        let (rows, cols, k) = (40, 8192, 32);
        assert!(rows * cols >= PARALLEL_SELECTION);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let pre = Matrix::from_fn(rows, cols, |_, _| {
            (rng.sample::<f32, _>(rand_distr::StandardNormal) * 64.0).round() / 16.0
        });
        for (i, got) in selected_rows(&pre, k).into_iter().enumerate() {
            assert_eq!(got, brute_force_top_k(pre.row(i), k), "row {i}");
        }
    }

    #[test]
    fn topk_keeps_the_k_largest_positive_pre_activations() {
        let (x, _) = random_problem(50, 8, 16, 1);
        let sae = perturbed(TopKSae::new(TopKConfig::topk(16, 8, 4, 0)).unwrap());
        // Latents 0..13 can never be positive: rows of the last kind have at
        // most 3 positive pre-activations.
        let few = {
            let mut s = sae.clone();
            s.encoder.b.iter_mut().take(13).for_each(|b| *b = -100.0);
            s
        };
        let mut short_rows = 0;
        for s in [&sae, &few] {
            let z = s.encode(&x).unwrap();
            assert_eq!(z, s.encode_training(&x).unwrap());
            let p = pre(s, &x);
            for i in 0..x.rows() {
                let positive = p.row(i).iter().filter(|&&v| v > 0.0).count();
                let kept: Vec<usize> = (0..16).filter(|&j| z.get(i, j) != 0.0).collect();
                assert_eq!(kept.len(), positive.min(4), "row {i}");
                short_rows += usize::from(kept.len() < 4);
                let smallest_kept = kept.iter().map(|&j| p.get(i, j)).fold(f32::MAX, f32::min);
                for j in 0..16 {
                    if kept.contains(&j) {
                        assert!((z.get(i, j) - p.get(i, j)).abs() < 1e-5);
                    } else {
                        assert!(p.get(i, j) <= smallest_kept + 1e-5 || kept.len() < 4);
                        assert!(p.get(i, j) <= 1e-5 || kept.len() == 4);
                    }
                }
            }
        }
        assert!(
            short_rows >= 50,
            "only {short_rows} rows with < k positives"
        );
    }

    #[test]
    fn batch_topk_keeps_n_k_over_the_batch_and_its_threshold_converges() {
        let data = SyntheticConfig::paper(16, 8, 3, 4)
            .generate(256, 0, 0)
            .unwrap();
        let x = &data.train.x;
        let cfg = TopKConfig {
            topk_threshold_lr: 0.05,
            adam: AdamConfig::with_lr(1e-9),
            ..TopKConfig::batch_topk(16, 8, 3, 1)
        };
        let mut sae = TopKSae::new(cfg).unwrap();
        assert_eq!(sae.inference_threshold(), Some(0.0));
        let z = sae.encode_training(x).unwrap();
        let nnz = z.as_slice().iter().filter(|&&v| v != 0.0).count();
        assert_eq!(nnz, 256 * 3);
        // Per-sample counts vary: the budget is shared.
        let per_row: Vec<usize> = z
            .rows_iter()
            .map(|r| r.iter().filter(|&&v| v != 0.0).count())
            .collect();
        assert!(per_row.iter().min() != per_row.iter().max());
        // The kept entries are the n·k largest of the batch.
        let p = pre(&sae, x);
        let min_kept = z
            .as_slice()
            .iter()
            .filter(|&&v| v != 0.0)
            .fold(f32::MAX, |a, &b| a.min(b));
        let above = p.as_slice().iter().filter(|&&v| v >= min_kept).count();
        assert_eq!(above, 256 * 3);
        // With frozen weights θ is a geometric average towards min_kept.
        for _ in 0..300 {
            sae.train_step(x).unwrap();
        }
        let theta = sae.inference_threshold().unwrap();
        eprintln!("BatchTopK threshold {theta:.6} vs smallest kept {min_kept:.6}");
        assert!(
            (theta - min_kept).abs() < 1e-3 * min_kept.max(1e-3),
            "{theta} vs {min_kept}"
        );
        // Inference at θ (strict >) keeps the batch selection minus its minimum.
        let zi = sae.encode(x).unwrap();
        let nnz_inf = zi.as_slice().iter().filter(|&&v| v != 0.0).count();
        assert!((256 * 3 - 2..=256 * 3).contains(&nnz_inf), "{nnz_inf}");
    }

    /// Tensor `which`: 0 = W_enc, 1 = b_enc, 2 = D, 3 = b_dec.
    fn param(sae: &mut TopKSae, which: usize) -> &mut [f32] {
        match which {
            0 => sae.encoder.w.as_mut_slice(),
            1 => &mut sae.encoder.b,
            2 => sae.dictionary.as_mut_slice(),
            _ => &mut sae.b_dec,
        }
    }

    fn gradient_check(selection: TopKSelection) {
        let (x, _) = random_problem(7, 4, 6, 11);
        let mut sae = perturbed(TopKSae::new(small(selection, 2)).unwrap());
        let (loss, g) = sae.loss_and_gradients(&x).unwrap();
        assert!((loss - sae.loss(&x).unwrap()).abs() < 1e-12);
        let mut eval = |which: usize, i: usize, delta: f32| {
            let old = param(&mut sae, which)[i];
            param(&mut sae, which)[i] = old + delta;
            let shift = (param(&mut sae, which)[i] - old) as f64;
            let z = sae.encode_training(&x).unwrap();
            let pattern = z.as_slice().iter().map(|&v| v != 0.0).collect();
            let out = (shift, sae.loss(&x).unwrap(), pattern);
            param(&mut sae, which)[i] = old;
            out
        };
        // Straight-through: only selected latents get encoder gradient.
        let z =
            TopKSae::encode_training(&perturbed(TopKSae::new(small(selection, 2)).unwrap()), &x)
                .unwrap();
        for j in 0..6 {
            if (0..7).all(|i| z.get(i, j) == 0.0) {
                assert!((0..4).all(|m| g.w_enc.get(m, j) == 0.0) && g.b_enc[j] == 0.0);
                assert!(g.dictionary.row(j).iter().all(|&v| v == 0.0));
            }
        }
        let n = check_gradient("dW_enc", g.w_enc.as_slice(), |i, h| eval(0, i, h));
        check_gradient("db_enc", &g.b_enc, |i, h| eval(1, i, h));
        check_gradient("dD", g.dictionary.as_slice(), |i, h| eval(2, i, h));
        check_gradient("db_dec", &g.decoder_bias, |i, h| eval(3, i, h));
        assert!(n > 0);
    }

    #[test]
    fn topk_gradients_match_finite_differences() {
        gradient_check(TopKSelection::PerSample);
    }

    #[test]
    fn batch_topk_gradients_match_finite_differences() {
        gradient_check(TopKSelection::Batch);
    }

    #[test]
    fn auxk_gives_a_dead_latent_gradient_and_revives_it() {
        let data = SyntheticConfig::paper(16, 8, 3, 5)
            .generate(256, 0, 0)
            .unwrap();
        let x = &data.train.x;
        let cfg = TopKConfig {
            aux_k: 4,
            dead_feature_window: 2,
            adam: AdamConfig::with_lr(1e-2),
            ..TopKConfig::topk(16, 8, 3, 2)
        };
        let kill = |cfg: TopKConfig| {
            let mut sae = TopKSae::new(cfg).unwrap();
            sae.encoder.b[5] = -2.0;
            sae
        };
        let mut with_aux = kill(cfg);
        let mut without = kill(TopKConfig {
            aux_k_coefficient: 0.0,
            ..cfg
        });
        for sae in [&mut with_aux, &mut without] {
            assert!(sae.encode(x).unwrap().rows_iter().all(|r| r[5] == 0.0));
            for _ in 0..3 {
                sae.train_step(x).unwrap();
            }
            assert!(sae.dead_latents().contains(&5));
        }
        let (_, g) = without.loss_and_gradients(x).unwrap();
        assert_eq!(g.b_enc[5], 0.0);
        assert!(g.dictionary.row(5).iter().all(|&v| v == 0.0));
        let (_, g) = with_aux.loss_and_gradients(x).unwrap();
        let col: f32 = (0..8).map(|m| g.w_enc.get(m, 5).abs()).sum();
        eprintln!(
            "AuxK: dead latent 5 gets |dW_enc[:,5]|₁ = {col:e}, db_enc = {:e}",
            g.b_enc[5]
        );
        assert!(g.b_enc[5] != 0.0 && col > 0.0);
        assert!(g.dictionary.row(5).iter().any(|&v| v != 0.0));
        // Training on revives it; without AuxK it stays dead.
        let mut revived_at = None;
        for step in 0..600 {
            with_aux.train_step(x).unwrap();
            without.train_step(x).unwrap();
            if revived_at.is_none() && with_aux.steps_since_fired[5] == 0 {
                revived_at = Some(step);
            }
        }
        eprintln!("AuxK: latent 5 revived after {revived_at:?} more steps");
        assert!(revived_at.is_some());
        assert!(without.encode(x).unwrap().rows_iter().all(|r| r[5] == 0.0));
        assert!(max_atom_norm_error(with_aux.dictionary()) < 1e-5);
    }

    fn train_on_paper_data(cfg: TopKConfig, steps: usize) -> (f32, f32, f64, f64, TopKSae) {
        let data = SyntheticConfig::paper(16, 8, 3, 20240926)
            .generate(1024, 0, 0)
            .unwrap();
        let mut sae = TopKSae::new(cfg).unwrap();
        let mcc0 = dictionary_mcc(&data.dictionary, sae.dictionary()).unwrap();
        let first = sae.train_step(&data.train.x).unwrap();
        let mut last = first;
        for _ in 1..steps {
            last = sae.train_step(&data.train.x).unwrap();
            assert!(max_atom_norm_error(sae.dictionary()) < 1e-5);
        }
        let mcc = dictionary_mcc(&data.dictionary, sae.dictionary()).unwrap();
        (first, last, mcc0, mcc, sae)
    }

    #[test]
    fn topk_training_lowers_the_loss_and_aligns_the_dictionary() {
        let cfg = TopKConfig {
            adam: AdamConfig::with_lr(1e-2),
            dead_feature_window: 50,
            ..TopKConfig::topk(16, 8, 3, 0)
        };
        let (first, last, mcc0, mcc, _) = train_on_paper_data(cfg, 1500);
        eprintln!("TopK: loss {first:.4} -> {last:.5}, dict MCC {mcc0:.3} -> {mcc:.3}");
        assert!(last < 0.2 * first, "loss {first} -> {last}");
        assert!(mcc > mcc0 + 0.1, "dict MCC {mcc0} -> {mcc}");
    }

    #[test]
    fn batch_topk_training_lowers_the_loss_and_aligns_the_dictionary() {
        let cfg = TopKConfig {
            adam: AdamConfig::with_lr(1e-2),
            dead_feature_window: 50,
            ..TopKConfig::batch_topk(16, 8, 3, 0)
        };
        let (first, last, mcc0, mcc, sae) = train_on_paper_data(cfg, 1500);
        eprintln!(
            "BatchTopK: loss {first:.4} -> {last:.5}, dict MCC {mcc0:.3} -> {mcc:.3}, θ = {:.4}",
            sae.inference_threshold().unwrap()
        );
        assert!(last < 0.2 * first, "loss {first} -> {last}");
        assert!(mcc > mcc0 + 0.1, "dict MCC {mcc0} -> {mcc}");
        assert!(sae.inference_threshold().unwrap() > 0.0);
    }

    #[test]
    fn training_is_deterministic_in_the_seed() {
        let (x, _) = random_problem(64, 8, 16, 5);
        let train = |seed, selection| {
            let mut sae = TopKSae::new(TopKConfig {
                selection,
                dead_feature_window: 3,
                ..TopKConfig::topk(16, 8, 3, seed)
            })
            .unwrap();
            for _ in 0..20 {
                sae.train_step(&x).unwrap();
            }
            sae
        };
        for sel in [TopKSelection::PerSample, TopKSelection::Batch] {
            let a = train(7, sel);
            let b = train(7, sel);
            assert_eq!(a.dictionary(), b.dictionary());
            assert_eq!(a.w_enc(), b.w_enc());
            assert_eq!(a.b_enc(), b.b_enc());
            assert_eq!(a.decoder_bias(), b.decoder_bias());
            assert_eq!(a.inference_threshold(), b.inference_threshold());
            assert_ne!(train(8, sel).dictionary(), a.dictionary());
        }
        // Same seed: the learned-D SAE's initial dictionary and encoder weight.
        let ae = Autoencoder::new(AutoencoderConfig::paper_sae(16, 8, 7)).unwrap();
        let fresh = TopKSae::new(TopKConfig::topk(16, 8, 3, 7)).unwrap();
        assert_eq!(fresh.dictionary(), ae.dictionary());
        assert_eq!(fresh.w_enc(), ae.encoder_weight(0));
    }

    #[test]
    fn bad_inputs_and_parameters_fail_without_moving_parameters() {
        let (x, _) = random_problem(5, 4, 6, 1);
        for k in [0, 7] {
            let e = TopKSae::new(small(TopKSelection::PerSample, k)).unwrap_err();
            assert!(
                matches!(&e, Error::InvalidParameter { name, .. } if name == "k"),
                "{e}"
            );
        }
        let base = small(TopKSelection::Batch, 2);
        for bad in [
            TopKConfig { aux_k: 7, ..base },
            TopKConfig {
                aux_k_coefficient: -1.0,
                ..base
            },
            TopKConfig {
                aux_k_coefficient: f32::NAN,
                ..base
            },
            TopKConfig {
                topk_threshold_lr: 0.0,
                ..base
            },
            TopKConfig {
                topk_threshold_lr: f32::NAN,
                ..base
            },
            TopKConfig {
                n_latents: 0,
                ..base
            },
            TopKConfig { dim: 0, ..base },
            TopKConfig {
                adam: AdamConfig::with_lr(-1.0),
                ..base
            },
        ] {
            assert!(TopKSae::new(bad).is_err(), "{bad:?}");
        }
        let mut sae = TopKSae::new(base).unwrap();
        let before = (sae.dictionary().clone(), sae.w_enc().clone());
        let mut nan = x.clone();
        nan.set(1, 2, f32::NAN);
        assert!(matches!(
            sae.train_step(&nan),
            Err(Error::NonFinite { row: 1, col: 2, .. })
        ));
        assert!(sae.train_step(&Matrix::zeros(0, 4)).is_err());
        assert!(sae.train_step(&Matrix::zeros(3, 5)).is_err());
        assert!(sae.encode(&Matrix::zeros(3, 5)).is_err());
        assert!(sae.encode_training(&nan).is_err());
        assert!(sae.loss(&Matrix::zeros(0, 4)).is_err());
        assert!(sae.decode(&Matrix::zeros(2, 5)).is_err());
        assert_eq!((sae.dictionary().clone(), sae.w_enc().clone()), before);
        assert_eq!(sae.inference_threshold(), Some(0.0));
        // An empty batch encodes to nothing rather than failing.
        assert_eq!(sae.encode(&Matrix::zeros(0, 4)).unwrap().shape(), (0, 6));
        // A diverged step is refused.
        sae.dictionary.set(0, 0, f32::INFINITY);
        assert!(sae.train_step(&x).is_err());
    }

    #[test]
    fn flop_counts_match_the_documented_formula() {
        let sae = TopKSae::new(TopKConfig::topk(16, 8, 3, 0)).unwrap();
        assert_eq!(sae.n_params(), 16 * 8 * 2 + 16 + 8);
        assert_eq!(sae.train_step_flops(1024), 539.0 * 1024.0 + 4776.0);
        assert_eq!(sae.encode_flops(10), 10.0 * (8.0 + 256.0 + 32.0));
        let batch = TopKSae::new(TopKConfig::batch_topk(16, 8, 3, 0)).unwrap();
        assert_eq!(batch.train_step_flops(1), 542.0 + 4776.0);
        // With dead latents the AuxK terms appear: a = min(aux_k = 4, d).
        let mut dead = TopKSae::new(TopKConfig {
            dead_feature_window: 0,
            ..TopKConfig::topk(16, 8, 3, 0)
        })
        .unwrap();
        dead.steps_since_fired.iter_mut().for_each(|s| *s = 1);
        let (m, nl, a) = (8.0, 16.0, 4.0);
        let aux = nl + 5.0 * m + 6.0 * a * m + (2.0 * m + 1.0) * a;
        assert_eq!(dead.train_step_flops(2), 2.0 * (539.0 + aux) + 4776.0);
        // Sparse decode: cheaper than the dense learned-D SAE step at k < N.
        let ae = Autoencoder::new(AutoencoderConfig {
            encoder_bias: true,
            decoder_bias: true,
            project_decoder_gradient: true,
            ..AutoencoderConfig::paper_sae(16, 8, 0)
        })
        .unwrap();
        assert!(sae.train_step_flops(1024) < ae.train_step_flops(1024));
    }
}
