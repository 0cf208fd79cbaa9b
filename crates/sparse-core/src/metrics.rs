//! Metrics: how well inferred codes and learned dictionaries recover the
//! ground truth (MCC, support F1), how sparse codes are (L0, dead latents),
//! and how well data is reconstructed (MSE, explained variance); SynthSAEBench's
//! per-latent F1, uniqueness, shrinkage and cosine MCC live in `synth_bench`
//! (re-exported here); held-out SAE evaluation on streamed activations
//! (normalised MSE, explained variance, L0, dead/dense latents, density
//! histogram) in [`held_out`].
//!
//! Conventions as in the rest of the crate: data `X` is `(n_samples × dim)`,
//! codes `Z` are `(n_samples × n_latents)`, a dictionary `D` is
//! `(n_latents × dim)` with atoms as rows. Inputs are `f32`; every sum is
//! accumulated in `f64`.
//!
//! Matching differs from the paper on purpose (paper-spec §3): the paper pairs
//! latents greedily when the counts differ and averages over `min(N, N')`
//! pairs, which lets a model score higher by dropping hard latents. Here the
//! matching is always the optimal one ([`linear_sum_assignment`]) and the mean
//! is over the *true* latents, so a true latent left unmatched counts as 0.

use crate::assignment::linear_sum_assignment;
use crate::error::{Error, Result};
use crate::linalg::{matmul_new, par_for, Op};
use crate::matrix::Matrix;
use faer::{linalg::matmul::matmul, Accum, MatMut, MatRef};
use serde::{Deserialize, Serialize};

pub mod bootstrap;
pub mod held_out;
mod synth_bench;
pub use synth_bench::{
    best_matching_features, code_mcc_pearson, dictionary_mcc_cosine, dictionary_mcc_pearson,
    feature_uniqueness, latent_classification, shrinkage, synth_bench_report, LatentClassification,
    SynthBenchReport,
};

/// A variable whose population variance (mean squared deviation, NumPy's
/// `var` with `ddof = 0`) is below this is treated as constant by
/// [`abs_correlation_matrix`]: its correlations are 0.
///
/// The threshold is absolute, as in the paper (paper-spec §3), so it is not
/// scale-invariant: a variable whose values are all of order 1e-6 or smaller
/// counts as constant. Exactly constant `f32` columns always have variance
/// exactly 0 here, whatever their scale.
pub const MIN_VARIANCE: f64 = 1e-12;

/// `(rows, cols)` as written in error messages.
fn shape_of(m: &Matrix) -> String {
    format!("({}, {})", m.rows(), m.cols())
}

/// Which axis of a matrix indexes the variables being compared.
#[derive(Clone, Copy)]
enum Variables {
    /// Columns are variables, rows are observations (codes).
    Columns,
    /// Rows are variables, columns are observations (dictionary atoms).
    Rows,
}

impl Variables {
    /// `(n_vars, n_obs)` of `m`.
    fn dims(self, m: &Matrix) -> (usize, usize) {
        match self {
            Variables::Columns => (m.cols(), m.rows()),
            Variables::Rows => (m.rows(), m.cols()),
        }
    }
}

/// The variables of `m` as unit-norm `f64` vectors stored one after another
/// (row-major `n_vars × n_obs`), optionally mean-centred first. Degenerate
/// variables (zero norm; with centring, population variance below
/// [`MIN_VARIANCE`]) become zero vectors, so their similarities are exactly 0.
fn unit_variables(m: &Matrix, vars: Variables, centre: bool) -> Vec<f64> {
    let (n_vars, n_obs) = vars.dims(m);
    let mut data = vec![0.0f64; n_vars * n_obs];
    match vars {
        Variables::Rows => {
            for (d, &s) in data.iter_mut().zip(m.as_slice()) {
                *d = s as f64;
            }
        }
        Variables::Columns => {
            for (obs, row) in m.rows_iter().enumerate() {
                for (var, &s) in row.iter().enumerate() {
                    data[var * n_obs + obs] = s as f64;
                }
            }
        }
    }
    if n_obs == 0 {
        return data;
    }
    for x in data.chunks_exact_mut(n_obs) {
        if centre {
            let mean = x.iter().sum::<f64>() / n_obs as f64;
            x.iter_mut().for_each(|v| *v -= mean);
        }
        let ss: f64 = x.iter().map(|v| v * v).sum();
        let degenerate = ss == 0.0 || (centre && ss / (n_obs as f64) < MIN_VARIANCE);
        let scale = if degenerate { 0.0 } else { 1.0 / ss.sqrt() };
        x.iter_mut().for_each(|v| *v *= scale);
    }
    data
}

/// `|⟨u_i, v_j⟩|` for all pairs of (unit-normalised) variables of `a` and
/// `b`, as a row-major `n_vars(a) × n_vars(b)` matrix, after checking that
/// both are finite and have the same number of observations.
fn abs_similarity(
    a: &Matrix,
    a_name: &str,
    b: &Matrix,
    b_name: &str,
    vars: Variables,
    centre: bool,
) -> Result<Vec<f64>> {
    a.check_finite(a_name)?;
    b.check_finite(b_name)?;
    let (na, n_obs) = vars.dims(a);
    let (nb, n_obs_b) = vars.dims(b);
    if n_obs != n_obs_b {
        let (axis, expected) = match vars {
            Variables::Columns => ("rows (samples)", format!("({n_obs}, _)")),
            Variables::Rows => ("columns (dim)", format!("(_, {n_obs})")),
        };
        return Err(Error::shape(
            format!(
                "{b_name} (needs as many {axis} as {a_name}, shape {})",
                shape_of(a)
            ),
            expected,
            shape_of(b),
        ));
    }
    let ua = unit_variables(a, vars, centre);
    let ub = unit_variables(b, vars, centre);
    let mut out = vec![0.0f64; na * nb];
    if n_obs > 0 && na > 0 && nb > 0 {
        // out = ua · ubᵀ as one f64 GEMM: the pairwise dot products dominate
        // the cost at thousands of latents.
        let ua = MatRef::from_row_major_slice(&ua, na, n_obs);
        let ub = MatRef::from_row_major_slice(&ub, nb, n_obs);
        let dst = MatMut::from_row_major_slice_mut(&mut out, na, nb);
        matmul(
            dst,
            Accum::Replace,
            ua,
            ub.transpose(),
            1.0,
            par_for(na * nb * n_obs),
        );
    }
    // Rounding can push |cos| of unit vectors a hair above 1.
    out.iter_mut().for_each(|v| *v = v.abs().min(1.0));
    Ok(out)
}

/// Absolute Pearson correlations between the columns of `a` and of `b`.
///
/// Columns are variables and rows are samples; `a` and `b` need the same
/// number of rows. Returns the `a.cols() × b.cols()` row-major matrix whose
/// entry `(i, j)` is `|corr(a[:, i], b[:, j])|` with
/// `corr(x, y) = Σ (x−x̄)(y−ȳ) / sqrt(Σ (x−x̄)² · Σ (y−ȳ)²)`. An entry is 0
/// when either column has population variance below [`MIN_VARIANCE`]
/// (absolute threshold); entries are never NaN and lie in `[0, 1]`.
pub fn abs_correlation_matrix(a: &Matrix, b: &Matrix) -> Result<Vec<f64>> {
    abs_similarity(a, "a", b, "b", Variables::Columns, true)
}

/// Absolute cosine similarities between the columns of `a` and of `b`.
///
/// Like [`abs_correlation_matrix`] but without mean-centring: entry `(i, j)`
/// is `|⟨a[:, i], b[:, j]⟩| / (‖a[:, i]‖ ‖b[:, j]‖)`, and 0 when either column
/// is exactly zero.
pub fn abs_cosine_matrix(a: &Matrix, b: &Matrix) -> Result<Vec<f64>> {
    abs_similarity(a, "a", b, "b", Variables::Columns, false)
}

/// An optimal one-to-one matching between true latents (rows of a similarity
/// matrix) and predicted latents (its columns).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Matching {
    /// `(true, predicted)` index pairs, sorted by true index; there are
    /// `min(n_true, n_predicted)` of them.
    pub pairs: Vec<(usize, usize)>,
    /// The similarity of each pair, in the order of `pairs`.
    pub scores: Vec<f64>,
    /// Sum of `scores` divided by the number of TRUE latents (unmatched true
    /// latents count as 0).
    pub mean: f64,
}

/// The one-to-one matching that maximises the total similarity.
///
/// `similarity` is `rows × cols` row-major with rows = true latents and
/// cols = predicted latents. `mean` is the sum of the matched scores divided
/// by `rows`, the number of true latents: when there are fewer predicted
/// latents than true ones, the unmatched true latents count as 0. (The
/// paper's greedy variant divides by `min(rows, cols)` instead, which rewards
/// dropping hard latents; this does not.) Extra predicted latents are simply
/// unmatched and do not lower the mean.
///
/// Errors: `rows == 0` (no true latents: the mean is undefined), a length
/// other than `rows * cols`, or a non-finite similarity.
pub fn match_columns(similarity: &[f64], rows: usize, cols: usize) -> Result<Matching> {
    if rows == 0 {
        return Err(Error::invalid(
            "rows",
            0,
            "need at least one true latent to match",
        ));
    }
    let pairs = linear_sum_assignment(similarity, rows, cols, true)?;
    let scores: Vec<f64> = pairs
        .iter()
        .map(|&(r, c)| similarity[r * cols + c])
        .collect();
    let mean = scores.iter().sum::<f64>() / rows as f64;
    Ok(Matching {
        pairs,
        scores,
        mean,
    })
}

/// The optimal matching between true and predicted code columns under
/// absolute Pearson correlation across samples (see [`code_mcc`]).
///
/// Both matrices are `(n_samples × n_latents)` with the same number of
/// samples (at least 2, as correlation needs them); the latent counts may
/// differ.
pub fn code_matching(true_codes: &Matrix, pred_codes: &Matrix) -> Result<Matching> {
    if true_codes.rows() < 2 {
        return Err(Error::invalid(
            "n_samples",
            true_codes.rows(),
            "correlation across samples needs at least 2 samples",
        ));
    }
    let sim = abs_similarity(
        true_codes,
        "true_codes",
        pred_codes,
        "pred_codes",
        Variables::Columns,
        true,
    )?;
    match_columns(&sim, true_codes.cols(), pred_codes.cols())
}

/// Code MCC, the paper's main recovery metric: the mean, over the TRUE
/// latents, of `|Pearson correlation|` across samples between each true code
/// column and its optimally matched predicted column (see [`match_columns`]
/// for why unmatched true latents count as 0, and
/// [`abs_correlation_matrix`] for constant columns). In `[0, 1]`; 1 means
/// every true latent is recovered up to scale, sign and permutation.
pub fn code_mcc(true_codes: &Matrix, pred_codes: &Matrix) -> Result<f64> {
    Ok(code_matching(true_codes, pred_codes)?.mean)
}

/// Dictionary MCC, the paper's Pearson variant on atoms.
///
/// Each atom (a row of length `dim`) is mean-centred over its `dim`
/// coordinates; the score is the mean, over the TRUE atoms, of `|Pearson
/// correlation|` between each true atom and its optimally matched predicted
/// atom. Both dictionaries are `(n_latents × dim)` with the same `dim ≥ 2`;
/// the atom counts may differ. Atoms with population variance below
/// [`MIN_VARIANCE`] correlate 0 with everything.
pub fn dictionary_mcc(true_dictionary: &Matrix, pred_dictionary: &Matrix) -> Result<f64> {
    dictionary_score(true_dictionary, pred_dictionary, true)
}

/// Dictionary cosine score (SynthSAEBench's definition): the mean, over the
/// TRUE atoms, of `|cosine similarity|` between each true atom and its
/// optimally matched predicted atom, with no mean-centring. Zero atoms score
/// 0. Same shape rules as [`dictionary_mcc`] (any `dim`).
pub fn dictionary_cosine(true_dictionary: &Matrix, pred_dictionary: &Matrix) -> Result<f64> {
    dictionary_score(true_dictionary, pred_dictionary, false)
}

fn dictionary_score(true_d: &Matrix, pred_d: &Matrix, centre: bool) -> Result<f64> {
    if centre && true_d.cols() < 2 {
        return Err(Error::invalid(
            "dim",
            true_d.cols(),
            "Pearson correlation between atoms needs at least 2 coordinates",
        ));
    }
    let sim = abs_similarity(
        true_d,
        "true_dictionary",
        pred_d,
        "pred_dictionary",
        Variables::Rows,
        centre,
    )?;
    Ok(match_columns(&sim, true_d.rows(), pred_d.rows())?.mean)
}

/// Sparsity of a code matrix.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct L0 {
    /// Mean number of non-zero entries per sample (0 for no samples).
    pub mean_count: f64,
    /// `mean_count / n_latents`: the fraction of non-zero entries, the
    /// paper's synthetic "L0" (0 for no latents).
    pub fraction: f64,
}

/// L0 of `codes (n_samples × n_latents)` counting exact non-zeros (`|v| > 0`).
/// Solvers with an exp parametrisation never reach exact zero; use
/// [`l0_with_threshold`] for them.
pub fn l0(codes: &Matrix) -> L0 {
    l0_with_threshold(codes, 0.0)
}

/// L0 of `codes` counting entries with `|v| > threshold` as non-zero.
/// NaN entries never count; inputs are not otherwise validated.
pub fn l0_with_threshold(codes: &Matrix, threshold: f32) -> L0 {
    let nnz = codes
        .as_slice()
        .iter()
        .filter(|v| v.abs() > threshold)
        .count();
    let mean_count = if codes.rows() == 0 {
        0.0
    } else {
        nnz as f64 / codes.rows() as f64
    };
    let fraction = if codes.cols() == 0 {
        0.0
    } else {
        mean_count / codes.cols() as f64
    };
    L0 {
        mean_count,
        fraction,
    }
}

/// Number of latents (columns of `codes`) that are exactly zero on every
/// sample. A matrix with no samples has all its latents dead.
pub fn dead_latents(codes: &Matrix) -> usize {
    dead_latents_with_threshold(codes, 0.0)
}

/// Number of latents with `|v| ≤ threshold` on every sample (for solvers
/// whose codes never reach exact zero).
pub fn dead_latents_with_threshold(codes: &Matrix, threshold: f32) -> usize {
    let mut alive = vec![false; codes.cols()];
    for row in codes.rows_iter() {
        for (a, v) in alive.iter_mut().zip(row) {
            // NaN counts as alive, like any non-zero value.
            *a |= v.abs() > threshold || v.is_nan();
        }
    }
    alive.iter().filter(|&&a| !a).count()
}

/// Mean squared error over all elements: `Σ (x − x̂)² / (n_samples · dim)`.
/// Shapes must match and be non-empty; values must be finite.
pub fn mse(x: &Matrix, x_hat: &Matrix) -> Result<f64> {
    let (sse, _) = residual_sums(x, x_hat)?;
    Ok(sse / x.as_slice().len() as f64)
}

/// Explained variance `1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²`, where `x̄` is the mean of
/// `x` over samples, per coordinate.
///
/// The denominator is the variance ABOUT THE MEAN, not about zero: measuring
/// it about zero inflates the score for data with a large mean (a known
/// SAELens bug). This equals `1 − ` the paper's normalised MSE
/// `MSE(x̂, x) / MSE(mean_batch(x), x)`. Can be negative. If `x` is constant
/// (zero denominator) it is 1 for a perfect reconstruction and 0 otherwise,
/// as scikit-learn's `r2_score` does.
pub fn explained_variance(x: &Matrix, x_hat: &Matrix) -> Result<f64> {
    let (sse, sst) = residual_sums(x, x_hat)?;
    Ok(explained_from_sums(sse, sst))
}

/// `1 − sse / sst`, with the constant-data convention of [`explained_variance`].
fn explained_from_sums(sse: f64, sst: f64) -> f64 {
    if sst == 0.0 {
        return if sse == 0.0 { 1.0 } else { 0.0 };
    }
    1.0 - sse / sst
}

/// `(Σ (x − x̂)², Σ (x − x̄)²)` after validating shapes and values.
fn residual_sums(x: &Matrix, x_hat: &Matrix) -> Result<(f64, f64)> {
    x_hat.expect_shape(
        &format!("x_hat (must match x, shape {})", shape_of(x)),
        Some(x.rows()),
        Some(x.cols()),
    )?;
    if x.rows() == 0 || x.cols() == 0 {
        return Err(Error::invalid("x", shape_of(x), "has no elements"));
    }
    x.check_finite("x")?;
    x_hat.check_finite("x_hat")?;
    // Two passes (mean first) for an accurate total variance.
    let mut mean = vec![0.0f64; x.cols()];
    for row in x.rows_iter() {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += v as f64;
        }
    }
    let n = x.rows() as f64;
    mean.iter_mut().for_each(|m| *m /= n);
    let (mut sse, mut sst) = (0.0f64, 0.0f64);
    for (row, row_hat) in x.rows_iter().zip(x_hat.rows_iter()) {
        for ((&v, &h), &m) in row.iter().zip(row_hat).zip(&mean) {
            let (v, h) = (v as f64, h as f64);
            sse += (v - h) * (v - h);
            sst += (v - m) * (v - m);
        }
    }
    Ok((sse, sst))
}

/// Support-recovery scores (micro-averaged; see [`support_scores`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SupportScores {
    /// `TP / (TP + FP)`, 0 when nothing is predicted non-zero.
    pub precision: f64,
    /// `TP / (TP + FN)`, 0 when nothing is truly non-zero.
    pub recall: f64,
    /// `2PR / (P + R)`, 0 when `P + R = 0`.
    pub f1: f64,
}

/// Support precision, recall and F1 of `pred_codes` against `true_codes`
/// under `matching` (true latent `t` ↔ predicted latent `p`), counting exact
/// non-zeros. See [`support_scores_with_threshold`].
pub fn support_scores(
    true_codes: &Matrix,
    pred_codes: &Matrix,
    matching: &Matching,
) -> Result<SupportScores> {
    support_scores_with_threshold(true_codes, pred_codes, matching, 0.0)
}

/// Support precision, recall and F1, with predicted entries counted as
/// non-zero when `|v| > threshold` (true entries: when `v ≠ 0`, since the
/// ground truth is exactly sparse).
///
/// For each matched pair `(t, p)` and each sample, TP = both non-zero,
/// FP = only the prediction non-zero, FN = only the truth non-zero; counts
/// are summed over all pairs and samples (micro-average). Non-zeros of
/// UNMATCHED predicted latents are false positives and those of unmatched
/// true latents false negatives, so precision = TP / (all predicted
/// non-zeros) and recall = TP / (all true non-zeros).
///
/// Errors: different sample counts, non-finite values, a negative or
/// non-finite threshold, or a matching whose indices are out of range or
/// repeated.
pub fn support_scores_with_threshold(
    true_codes: &Matrix,
    pred_codes: &Matrix,
    matching: &Matching,
    threshold: f32,
) -> Result<SupportScores> {
    if !(threshold.is_finite() && threshold >= 0.0) {
        return Err(Error::invalid(
            "threshold",
            threshold,
            "must be finite and non-negative",
        ));
    }
    true_codes.check_finite("true_codes")?;
    pred_codes.check_finite("pred_codes")?;
    pred_codes.expect_shape(
        &format!(
            "pred_codes (needs as many rows (samples) as true_codes, shape {})",
            shape_of(true_codes)
        ),
        Some(true_codes.rows()),
        None,
    )?;
    let mut t_used = vec![false; true_codes.cols()];
    let mut p_used = vec![false; pred_codes.cols()];
    for &(t, p) in &matching.pairs {
        if t >= t_used.len() || p >= p_used.len() || t_used[t] || p_used[p] {
            return Err(Error::invalid(
                "matching",
                format!("pair ({t}, {p})"),
                &format!(
                    "out of range or repeated for true_codes {} and pred_codes {}",
                    shape_of(true_codes),
                    shape_of(pred_codes)
                ),
            ));
        }
        t_used[t] = true;
        p_used[p] = true;
    }

    let mut tp = 0u64;
    for (t_row, p_row) in true_codes.rows_iter().zip(pred_codes.rows_iter()) {
        for &(t, p) in &matching.pairs {
            tp += u64::from(t_row[t] != 0.0 && p_row[p].abs() > threshold);
        }
    }
    let true_nnz = true_codes.as_slice().iter().filter(|&&v| v != 0.0).count() as u64;
    let pred_nnz = pred_codes
        .as_slice()
        .iter()
        .filter(|v| v.abs() > threshold)
        .count() as u64;
    let ratio = |num: u64, den: u64| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    let precision = ratio(tp, pred_nnz);
    let recall = ratio(tp, true_nnz);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    Ok(SupportScores {
        precision,
        recall,
        f1,
    })
}

/// Everything the code-recovery experiments report for one set of
/// predicted codes. L0 and dead latents describe the PREDICTED codes.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodeReport {
    /// [`code_mcc`].
    pub code_mcc: f64,
    /// Mean non-zeros per sample of the predicted codes ([`L0::mean_count`]).
    pub l0_count: f64,
    /// Fraction of non-zero predicted entries ([`L0::fraction`]).
    pub l0_fraction: f64,
    /// Support precision under the MCC matching ([`support_scores`]).
    pub support_precision: f64,
    /// Support recall under the MCC matching.
    pub support_recall: f64,
    /// Support F1 under the MCC matching.
    pub support_f1: f64,
    /// Predicted latents that are zero on every sample ([`dead_latents`]).
    pub dead_latents: usize,
    /// Number of samples.
    pub n_samples: usize,
    /// Number of PREDICTED latents.
    pub n_latents: usize,
}

/// [`CodeReport`] of `pred_codes` against `true_codes`, counting exact
/// non-zeros.
pub fn code_report(true_codes: &Matrix, pred_codes: &Matrix) -> Result<CodeReport> {
    code_report_with_threshold(true_codes, pred_codes, 0.0)
}

/// [`CodeReport`] with predicted entries counted as non-zero when
/// `|v| > threshold` (L0, support scores and dead latents alike; the MCC does
/// not threshold). The report does not record the threshold: callers that
/// use several should store it alongside.
pub fn code_report_with_threshold(
    true_codes: &Matrix,
    pred_codes: &Matrix,
    threshold: f32,
) -> Result<CodeReport> {
    let matching = code_matching(true_codes, pred_codes)?;
    let support = support_scores_with_threshold(true_codes, pred_codes, &matching, threshold)?;
    let l0 = l0_with_threshold(pred_codes, threshold);
    Ok(CodeReport {
        code_mcc: matching.mean,
        l0_count: l0.mean_count,
        l0_fraction: l0.fraction,
        support_precision: support.precision,
        support_recall: support.recall,
        support_f1: support.f1,
        dead_latents: dead_latents_with_threshold(pred_codes, threshold),
        n_samples: pred_codes.rows(),
        n_latents: pred_codes.cols(),
    })
}

/// Reconstruction quality of `x ≈ codes · dictionary`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconstructionReport {
    /// [`mse`] of the reconstruction.
    pub mse: f64,
    /// [`explained_variance`] of the reconstruction.
    pub explained_variance: f64,
}

/// MSE and explained variance of `x̂ = codes · dictionary` against `x`.
///
/// Shapes: `x (n_samples × dim)`, `codes (n_samples × n_latents)`,
/// `dictionary (n_latents × dim)`; a mismatch is an [`Error::Shape`] naming
/// the array and both shapes involved. The product is computed in `f32`
/// (faer), the statistics in `f64`.
pub fn reconstruction_report(
    x: &Matrix,
    codes: &Matrix,
    dictionary: &Matrix,
) -> Result<ReconstructionReport> {
    let d = shape_of(dictionary);
    codes.expect_shape(
        &format!("codes (one column per atom of dictionary {d})"),
        None,
        Some(dictionary.rows()),
    )?;
    x.expect_shape(
        &format!("x (one column per coordinate of dictionary {d})"),
        None,
        Some(dictionary.cols()),
    )?;
    x.expect_shape(
        &format!("x (one row per sample of codes {})", shape_of(codes)),
        Some(codes.rows()),
        None,
    )?;
    codes.check_finite("codes")?;
    dictionary.check_finite("dictionary")?;
    let x_hat = matmul_new(codes, Op::N, dictionary, Op::N);
    let (sse, sst) = residual_sums(x, &x_hat)?;
    Ok(ReconstructionReport {
        mse: sse / x.as_slice().len() as f64,
        explained_variance: explained_from_sums(sse, sst),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignment::tests::brute_force;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn m(rows: usize, cols: usize, data: &[f32]) -> Matrix {
        Matrix::from_vec(rows, cols, data.to_vec()).unwrap()
    }

    fn random(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Matrix {
        Matrix::from_fn(rows, cols, |_, _| rng.gen_range(-1.0..1.0))
    }

    /// Sparse non-negative codes: each entry non-zero with probability `p`.
    fn sparse_codes(rng: &mut ChaCha8Rng, rows: usize, cols: usize, p: f64) -> Matrix {
        Matrix::from_fn(rows, cols, |_, _| {
            if rng.gen_bool(p) {
                rng.gen_range(0.5..2.0)
            } else {
                0.0
            }
        })
    }

    /// Column `j` of `src` placed at column `perm[j]`, times `scale[j]`.
    fn permute_scale_columns(src: &Matrix, perm: &[usize], scale: &[f32]) -> Matrix {
        let mut out = Matrix::zeros(src.rows(), src.cols());
        for i in 0..src.rows() {
            for (j, (&p, &s)) in perm.iter().zip(scale).enumerate() {
                out.set(i, p, s * src.get(i, j));
            }
        }
        out
    }

    /// Textbook Pearson correlation of two columns, independent of the code under test.
    fn pearson(a: &Matrix, i: usize, b: &Matrix, j: usize) -> f64 {
        let n = a.rows() as f64;
        let ma = (0..a.rows()).map(|r| a.get(r, i) as f64).sum::<f64>() / n;
        let mb = (0..b.rows()).map(|r| b.get(r, j) as f64).sum::<f64>() / n;
        let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
        for r in 0..a.rows() {
            let (x, y) = (a.get(r, i) as f64 - ma, b.get(r, j) as f64 - mb);
            sab += x * y;
            saa += x * x;
            sbb += y * y;
        }
        sab / (saa * sbb).sqrt()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    // ---- similarity matrices -------------------------------------------

    #[test]
    fn correlation_matrix_hand_computed() {
        // corr([1,2,3], [1,3,2]) = 0.5; corr([1,2,3], [3,2,1]) = -1 → 1.
        let a = m(3, 1, &[1.0, 2.0, 3.0]);
        let b = m(3, 2, &[1.0, 3.0, 3.0, 2.0, 2.0, 1.0]);
        let c = abs_correlation_matrix(&a, &b).unwrap();
        assert_eq!(c.len(), 2);
        assert!(close(c[0], 0.5, 1e-12), "{c:?}");
        assert!(close(c[1], 1.0, 1e-12), "{c:?}");
        // Cosine of the same columns: |1+6+6| / (√14 · √14) and (3+4+3)/14.
        let k = abs_cosine_matrix(&a, &b).unwrap();
        assert!(close(k[0], 13.0 / 14.0, 1e-12), "{k:?}");
        assert!(close(k[1], 10.0 / 14.0, 1e-12), "{k:?}");
    }

    #[test]
    fn correlation_matrix_matches_textbook_formula() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let a = random(&mut rng, 40, 4);
        let b = random(&mut rng, 40, 5);
        let c = abs_correlation_matrix(&a, &b).unwrap();
        for i in 0..4 {
            for j in 0..5 {
                assert!(close(c[i * 5 + j], pearson(&a, i, &b, j).abs(), 1e-12));
            }
        }
    }

    #[test]
    fn degenerate_columns_give_zero_not_nan() {
        let a = m(3, 2, &[1.0, 0.0, 2.0, 0.0, 4.0, 0.0]);
        let b = m(3, 2, &[7.0, 1.0, 7.0, 2.0, 7.0, 4.0]);
        let c = abs_correlation_matrix(&a, &b).unwrap();
        // Constant column b[:,0] and zero column a[:,1] correlate 0 with everything.
        assert_eq!(c, vec![0.0, 1.0, 0.0, 0.0]);
        let k = abs_cosine_matrix(&a, &b).unwrap();
        // Cosine does not centre, so the constant column is not degenerate there.
        assert!(k[0] > 0.0 && k[1] > 0.999_999 && k[2] == 0.0 && k[3] == 0.0);
        // Tiny but genuine variance below the absolute threshold also counts as constant.
        let tiny = m(3, 1, &[0.0, 1e-7, 2e-7]);
        assert_eq!(abs_correlation_matrix(&a, &tiny).unwrap(), vec![0.0, 0.0]);
    }

    // ---- code MCC --------------------------------------------------------

    #[test]
    fn code_mcc_is_one_for_permutation_rescaling_and_sign_flips() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let z = sparse_codes(&mut rng, 200, 6, 0.3);
        let perm = [3, 0, 5, 1, 4, 2];
        let positive = permute_scale_columns(&z, &perm, &[2.0, 0.5, 3.0, 1.5, 0.1, 7.0]);
        assert!(close(code_mcc(&z, &positive).unwrap(), 1.0, 1e-6));
        let flipped = permute_scale_columns(&z, &perm, &[-2.0, 0.5, -3.0, 1.5, -0.1, 7.0]);
        assert!(close(code_mcc(&z, &flipped).unwrap(), 1.0, 1e-6));
        let matching = code_matching(&z, &flipped).unwrap();
        let expected: Vec<(usize, usize)> = perm.iter().copied().enumerate().collect();
        assert_eq!(matching.pairs, expected);
    }

    #[test]
    fn many_latents_take_the_parallel_product_and_still_match() {
        // 2000 × 64 × 64 multiply-adds is above the sequential threshold.
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let z = sparse_codes(&mut rng, 2000, 64, 0.1);
        let perm: Vec<usize> = (0..64).map(|j| (j * 37) % 64).collect();
        let z_hat = permute_scale_columns(&z, &perm, &[1.5; 64]);
        let matching = code_matching(&z, &z_hat).unwrap();
        let expected: Vec<(usize, usize)> = perm.iter().copied().enumerate().collect();
        assert_eq!(matching.pairs, expected);
        assert!(close(matching.mean, 1.0, 1e-6));
    }

    #[test]
    fn code_mcc_equals_best_matching_by_brute_force() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for &(n_true, n_pred) in &[(4, 4), (5, 5), (3, 6), (6, 3)] {
            for _ in 0..4 {
                let z = random(&mut rng, 30, n_true);
                // Noisy mixtures so correlations are spread out, not near 0.
                let z_hat = Matrix::from_fn(30, n_pred, |r, c| {
                    z.get(r, c % n_true) * rng.gen_range(-1.0..1.0) + rng.gen_range(-0.5..0.5)
                });
                let sim: Vec<f64> = (0..n_true)
                    .flat_map(|i| (0..n_pred).map(move |j| (i, j)))
                    .map(|(i, j)| pearson(&z, i, &z_hat, j).abs())
                    .collect();
                let best = brute_force(&sim, n_true, n_pred, true) / n_true as f64;
                let got = code_mcc(&z, &z_hat).unwrap();
                assert!(close(got, best, 1e-9), "{n_true}×{n_pred}: {got} vs {best}");
            }
        }
    }

    #[test]
    fn zero_variance_predicted_column_scores_zero() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let z = random(&mut rng, 50, 3);
        let mut z_hat = z.clone();
        for r in 0..50 {
            z_hat.set(r, 2, 5.0);
        }
        let matching = code_matching(&z, &z_hat).unwrap();
        assert_eq!(matching.pairs, vec![(0, 0), (1, 1), (2, 2)]);
        assert_eq!(matching.scores[2], 0.0);
        assert!(close(matching.mean, 2.0 / 3.0, 1e-9));
    }

    #[test]
    fn rectangular_code_mcc_divides_by_true_count() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let z = random(&mut rng, 100, 3);
        // More predicted latents: the true ones are all found, extras are ignored.
        let extra = Matrix::from_fn(100, 5, |r, c| match c {
            1 => z.get(r, 0),
            3 => -z.get(r, 1),
            4 => 2.0 * z.get(r, 2),
            _ => rng.gen_range(-1.0..1.0),
        });
        let matching = code_matching(&z, &extra).unwrap();
        assert_eq!(matching.pairs, vec![(0, 1), (1, 3), (2, 4)]);
        assert!(close(matching.mean, 1.0, 1e-6));
        // Fewer predicted latents: only 2 of 3 true latents can be matched.
        // Both are perfect, so the sum is 2; divided by the 3 TRUE latents → 2/3
        // (the paper's min(N, N') convention would report 1).
        let fewer = Matrix::from_fn(100, 2, |r, c| z.get(r, [2, 0][c]));
        let matching = code_matching(&z, &fewer).unwrap();
        assert_eq!(matching.pairs, vec![(0, 1), (2, 0)]);
        assert!(close(matching.scores.iter().sum::<f64>(), 2.0, 1e-6));
        assert!(close(matching.mean, 2.0 / 3.0, 1e-6));
    }

    #[test]
    fn match_columns_is_optimal_not_greedy() {
        // Greedy takes 0.9 then is left with 0.1 (mean 0.5); optimal takes 0.8 + 0.8.
        let sim = [0.9, 0.8, 0.8, 0.1];
        let matching = match_columns(&sim, 2, 2).unwrap();
        assert_eq!(matching.pairs, vec![(0, 1), (1, 0)]);
        assert!(close(matching.mean, 0.8, 1e-12));
        assert!(matching.mean > (0.9 + 0.1) / 2.0);
        assert!(match_columns(&[], 0, 3).is_err());
        assert_eq!(match_columns(&[], 2, 0).unwrap().mean, 0.0);
    }

    // ---- dictionary scores -----------------------------------------------

    #[test]
    fn dictionary_mcc_and_cosine_differ_when_centring_matters() {
        // Same atom up to an offset: Pearson 1, cosine (3+8+15)/(√14·√50) = 26/√700.
        let t = m(1, 3, &[1.0, 2.0, 3.0]);
        let p = m(1, 3, &[3.0, 4.0, 5.0]);
        assert!(close(dictionary_mcc(&t, &p).unwrap(), 1.0, 1e-9));
        assert!(close(
            dictionary_cosine(&t, &p).unwrap(),
            26.0 / 700f64.sqrt(),
            1e-9
        ));
    }

    #[test]
    fn dictionary_scores_are_one_for_permuted_sign_flipped_atoms() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let d = random(&mut rng, 6, 10);
        let order = [4, 2, 0, 5, 1, 3];
        let signs = [1.0, -1.0, -1.0, 1.0, -1.0, 1.0];
        let mut p = Matrix::zeros(6, 10);
        for (k, (&src, &s)) in order.iter().zip(&signs).enumerate() {
            for (dst, &v) in p.row_mut(k).iter_mut().zip(d.row(src)) {
                *dst = s * 3.0 * v;
            }
        }
        assert!(close(dictionary_mcc(&d, &p).unwrap(), 1.0, 1e-6));
        assert!(close(dictionary_cosine(&d, &p).unwrap(), 1.0, 1e-6));
        // A dictionary with fewer atoms: 4 of 6 atoms found → 4/6.
        let partial = p.select_rows(0..4);
        assert!(close(
            dictionary_cosine(&d, &partial).unwrap(),
            4.0 / 6.0,
            1e-6
        ));
    }

    // ---- sparsity ------------------------------------------------------------

    #[test]
    fn l0_hand_computed() {
        let z = m(2, 3, &[0.0, 1.0, 0.0, 2.0, 0.0, -3.0]);
        assert_eq!(
            l0(&z),
            L0 {
                mean_count: 1.5,
                fraction: 0.5
            }
        );
        let t = l0_with_threshold(&z, 1.5);
        assert_eq!(t.mean_count, 1.0);
        assert!(close(t.fraction, 1.0 / 3.0, 1e-12));
        let tiny = m(1, 2, &[1e-30, -0.0]);
        assert_eq!(l0(&tiny).mean_count, 1.0);
    }

    #[test]
    fn dead_latents_hand_computed() {
        let z = m(
            3,
            4,
            &[0.0, 1.0, -0.0, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0],
        );
        assert_eq!(dead_latents(&z), 2);
        assert_eq!(dead_latents_with_threshold(&z, 0.05), 3);
        assert_eq!(dead_latents(&Matrix::zeros(0, 5)), 5);
    }

    // ---- reconstruction ------------------------------------------------------

    #[test]
    fn mse_and_explained_variance_hand_computed() {
        // Coordinate 0: x = [1, 3], x̂ = [2, 2]; coordinate 1: x = [10, 10], x̂ = [10, 11].
        // SSE = 1 + 1 + 0 + 1 = 3; about the mean SST = 2 + 0 = 2 → EV = 1 − 3/2 = −0.5.
        // About zero it would be 1 − 3/210: the data's large mean hides the error.
        let x = m(2, 2, &[1.0, 10.0, 3.0, 10.0]);
        let x_hat = m(2, 2, &[2.0, 10.0, 2.0, 11.0]);
        assert!(close(mse(&x, &x_hat).unwrap(), 0.75, 1e-12));
        let ev = explained_variance(&x, &x_hat).unwrap();
        assert!(close(ev, -0.5, 1e-12), "{ev}");
        assert!(!close(ev, 1.0 - 3.0 / 210.0, 0.1));
        assert_eq!(explained_variance(&x, &x).unwrap(), 1.0);
        // Constant data: 1 when perfect, 0 otherwise.
        let c = m(2, 1, &[4.0, 4.0]);
        assert_eq!(explained_variance(&c, &c).unwrap(), 1.0);
        assert_eq!(explained_variance(&c, &m(2, 1, &[4.0, 5.0])).unwrap(), 0.0);
    }

    #[test]
    fn reconstruction_report_uses_codes_times_dictionary() {
        let codes = m(3, 2, &[1.0, 0.0, 0.0, 2.0, 1.0, 1.0]);
        let dict = m(2, 2, &[1.0, 2.0, -1.0, 0.5]);
        // codes · dict = [[1, 2], [-2, 1], [0, 2.5]].
        let x = m(3, 2, &[1.0, 2.0, -2.0, 1.0, 0.0, 2.5]);
        let r = reconstruction_report(&x, &codes, &dict).unwrap();
        assert_eq!(r.mse, 0.0);
        assert_eq!(r.explained_variance, 1.0);
        let shifted = m(3, 2, &[1.0, 2.0, -2.0, 1.0, 0.0, 3.5]);
        let r = reconstruction_report(&shifted, &codes, &dict).unwrap();
        assert!(close(r.mse, 1.0 / 6.0, 1e-12));
        let direct = explained_variance(&shifted, &x).unwrap();
        assert!(close(r.explained_variance, direct, 1e-12));
    }

    // ---- support scores ------------------------------------------------------

    fn support_fixture() -> (Matrix, Matrix, Matching) {
        #[rustfmt::skip]
        let t = m(4, 3, &[
            1.0, 0.0, 1.0,
            0.0, 1.0, 0.0,
            1.0, 1.0, 0.0,
            0.0, 0.0, 1.0,
        ]);
        #[rustfmt::skip]
        let p = m(4, 3, &[
            0.0, 1.0, 0.5,
            1.0, 0.0, 0.0,
            0.0, 0.0, 0.0,
            0.0, 1.0, 0.0,
        ]);
        let matching = Matching {
            pairs: vec![(0, 1), (1, 0)],
            scores: vec![1.0, 1.0],
            mean: 2.0 / 3.0,
        };
        (t, p, matching)
    }

    #[test]
    fn support_scores_hand_computed() {
        let (t, p, matching) = support_fixture();
        // (t0,p1): TP 1, FP 1, FN 1. (t1,p0): TP 1, FN 1. Unmatched t2: FN 2.
        // Unmatched p2: FP 1. Total TP 2, FP 2, FN 4.
        let s = support_scores(&t, &p, &matching).unwrap();
        assert!(close(s.precision, 0.5, 1e-12));
        assert!(close(s.recall, 1.0 / 3.0, 1e-12));
        assert!(close(s.f1, 0.4, 1e-12));
        // Threshold 0.6 drops p2's 0.5: FP 1 → P = 2/3, R = 1/3, F1 = 4/9.
        let s = support_scores_with_threshold(&t, &p, &matching, 0.6).unwrap();
        assert!(close(s.precision, 2.0 / 3.0, 1e-12));
        assert!(close(s.recall, 1.0 / 3.0, 1e-12));
        assert!(close(s.f1, 4.0 / 9.0, 1e-12));
        // Nothing predicted: all zero, no NaN.
        let none = support_scores(&t, &Matrix::zeros(4, 3), &matching).unwrap();
        assert_eq!((none.precision, none.recall, none.f1), (0.0, 0.0, 0.0));
    }

    #[test]
    fn support_scores_reject_inconsistent_matchings() {
        let (t, p, mut matching) = support_fixture();
        matching.pairs = vec![(0, 1), (1, 1)];
        assert!(support_scores(&t, &p, &matching).is_err());
        matching.pairs = vec![(0, 3)];
        let err = support_scores(&t, &p, &matching).unwrap_err().to_string();
        assert!(err.contains("(4, 3)"), "{err}");
        matching.pairs = vec![(0, 1)];
        assert!(support_scores_with_threshold(&t, &p, &matching, -1.0).is_err());
    }

    #[test]
    fn code_report_on_a_perfect_recovery() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let z = sparse_codes(&mut rng, 300, 4, 0.25);
        let mut z_hat = Matrix::zeros(300, 5); // last latent dead
        for r in 0..300 {
            for c in 0..4 {
                z_hat.set(r, [1, 2, 3, 0][c], 0.5 * z.get(r, c));
            }
        }
        let report = code_report(&z, &z_hat).unwrap();
        assert!(close(report.code_mcc, 1.0, 1e-6));
        assert_eq!(report.support_precision, 1.0);
        assert_eq!(report.support_recall, 1.0);
        assert_eq!(report.support_f1, 1.0);
        assert_eq!(report.dead_latents, 1);
        assert_eq!((report.n_samples, report.n_latents), (300, 5));
        assert_eq!(report.l0_count, l0(&z).mean_count);
        assert!(close(report.l0_fraction, l0(&z).mean_count / 5.0, 1e-12));
        let json = serde_json::to_string(&report).unwrap();
        let back: CodeReport = serde_json::from_str(&json).unwrap();
        // serde_json may round the last bit of a float; counts must survive exactly.
        assert!(close(back.code_mcc, report.code_mcc, 1e-12));
        assert!(close(back.l0_count, report.l0_count, 1e-12));
        assert_eq!(back.dead_latents, report.dead_latents);
        assert_eq!(back.n_latents, report.n_latents);
    }

    // ---- errors --------------------------------------------------------------

    #[test]
    fn shape_mismatches_name_both_shapes() {
        let a = Matrix::zeros(5, 3);
        let b = Matrix::zeros(4, 3);
        let c = Matrix::zeros(5, 2);
        let msgs = [
            code_mcc(&a, &b).unwrap_err().to_string(),
            abs_correlation_matrix(&a, &b).unwrap_err().to_string(),
            abs_cosine_matrix(&a, &b).unwrap_err().to_string(),
            support_scores(&a, &b, &match_columns(&[0.0; 9], 3, 3).unwrap())
                .unwrap_err()
                .to_string(),
        ];
        for msg in &msgs {
            assert!(msg.contains("(5, 3)") && msg.contains("(4, 3)"), "{msg}");
        }
        let msg = dictionary_mcc(&a, &c).unwrap_err().to_string();
        assert!(msg.contains("(5, 3)") && msg.contains("(5, 2)"), "{msg}");
        let msg = dictionary_cosine(&a, &c).unwrap_err().to_string();
        assert!(msg.contains("(5, 3)") && msg.contains("(5, 2)"), "{msg}");
        for msg in [
            mse(&a, &b).unwrap_err().to_string(),
            explained_variance(&a, &b).unwrap_err().to_string(),
        ] {
            assert!(msg.contains("(5, 3)") && msg.contains("(4, 3)"), "{msg}");
        }
    }

    #[test]
    fn reconstruction_shape_errors_name_the_array_and_both_shapes() {
        let x = Matrix::zeros(10, 8);
        let codes = Matrix::zeros(10, 16);
        let dict = Matrix::zeros(16, 8);
        assert!(reconstruction_report(&x, &codes, &dict).is_ok());
        let cases = [
            (
                &x,
                &Matrix::zeros(10, 12),
                &dict,
                "codes",
                "(10, 12)",
                "(16, 8)",
            ),
            (
                &Matrix::zeros(10, 7),
                &codes,
                &dict,
                "x",
                "(10, 7)",
                "(16, 8)",
            ),
            (
                &Matrix::zeros(9, 8),
                &codes,
                &dict,
                "x",
                "(9, 8)",
                "(10, 16)",
            ),
        ];
        for (x, codes, dict, name, found, other) in cases {
            let msg = reconstruction_report(x, codes, dict)
                .unwrap_err()
                .to_string();
            assert!(msg.starts_with(name), "{msg}");
            assert!(msg.contains(found) && msg.contains(other), "{msg}");
        }
    }

    #[test]
    fn non_finite_inputs_are_errors() {
        let good = Matrix::from_fn(4, 2, |r, c| (r * 2 + c) as f32);
        let mut bad = good.clone();
        bad.set(2, 1, f32::NAN);
        assert!(matches!(
            code_mcc(&good, &bad),
            Err(Error::NonFinite { row: 2, col: 1, .. })
        ));
        assert!(code_mcc(&bad, &good).is_err());
        assert!(dictionary_mcc(&good, &bad).is_err());
        assert!(dictionary_cosine(&bad, &good).is_err());
        assert!(mse(&good, &bad).is_err());
        assert!(explained_variance(&bad, &good).is_err());
        let matching = code_matching(&good, &good).unwrap();
        assert!(support_scores(&good, &bad, &matching).is_err());
        bad.set(2, 1, f32::INFINITY);
        assert!(abs_correlation_matrix(&good, &bad).is_err());
        assert!(match_columns(&[0.5, f64::NAN], 1, 2).is_err());
        let dict = Matrix::identity(2);
        assert!(reconstruction_report(&good, &bad, &dict).is_err());
        assert!(reconstruction_report(&bad, &good, &dict).is_err());
    }

    #[test]
    fn degenerate_sizes_are_errors() {
        let one = Matrix::zeros(1, 3);
        assert!(code_mcc(&one, &one).is_err()); // 1 sample
        assert!(code_mcc(&Matrix::zeros(5, 0), &Matrix::zeros(5, 2)).is_err()); // no true latents
        assert!(dictionary_mcc(&Matrix::zeros(3, 1), &Matrix::zeros(3, 1)).is_err()); // dim 1
        assert!(mse(&Matrix::zeros(0, 3), &Matrix::zeros(0, 3)).is_err());
    }
}
