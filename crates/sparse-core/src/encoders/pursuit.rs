//! Greedy k-sparse pursuits: matching pursuit (MP) and orthogonal matching
//! pursuit (OMP), per sample, in the Gram form of sklearn's `orthogonal_mp_gram`.
//!
//! Both work on the correlations `α = D·r` of the residual `r` with every atom
//! rather than on `r` itself: with `G = D·Dᵀ` and `c = D·x`, taking `β` of atom `j`
//! updates `α ← α − β·G_j`, so a step costs `O(N)` instead of `O(NM)`.
//! `G` and `C = X·Dᵀ` are either precomputed once for the batch
//! ([`Products::Precomputed`]) or computed per sample for the atoms actually
//! selected ([`Products::OnTheFly`]); the greedy steps are the same.
//!
//! Atoms need not have unit norm: the atom chosen is the one with the largest
//! **normalised** correlation `|⟨r, d_j⟩| / ‖d_j‖` (largest positive one when
//! non-negative), which is the one that most reduces `‖r‖`, and equals the plain
//! correlation for unit-norm atoms. Atoms of norm zero are never chosen.
//!
//! Samples are independent; large batches run on rayon with a workspace per
//! task, and give the same codes as a sequential run.

use crate::encoders::{check_inputs, Encoder, Encoding};
use crate::error::{Error, Result};
use crate::linalg::{matmul_new, Op};
use crate::matrix::Matrix;
use rayon::prelude::*;

/// Where the products `G = D·Dᵀ` and `C = X·Dᵀ` come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Products {
    /// [`Products::Precomputed`] when `N ≤ n·k`, else [`Products::OnTheFly`]: precomputing
    /// costs `2N²M + 2nNM` FLOPs against at most `2nNM(k + 1)` on the fly.
    #[default]
    Auto,
    /// `G (N × N)` and `C (n × N)` by two GEMMs before the greedy steps.
    Precomputed,
    /// Per sample, `D·x` and the row `D·d_j` of each newly selected atom (`2NM` each), in f64.
    OnTheFly,
}

/// Matching pursuit: `k` greedy steps per sample, each adding to the codes the
/// projection of the residual on the best atom (an atom may be chosen again,
/// and its coefficient then accumulates).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct MatchingPursuit {
    /// Number of greedy steps (≥ 1, ≤ the number of latents).
    pub k: usize,
    /// Choose only atoms positively correlated with the residual, so codes stay ≥ 0.
    pub nonnegative: bool,
    /// Product strategy; [`MatchingPursuit::new`] sets [`Products::Auto`].
    pub products: Products,
}

/// Orthogonal matching pursuit: up to `k` atoms per sample, the codes being
/// the least-squares fit of the sample on the atoms selected so far.
///
/// With `nonnegative`, only positively correlated atoms are added, and if the
/// least-squares refit after adding an atom has a negative coefficient, that
/// atom is dropped and the sample stops there (the previous fit, which is
/// non-negative, is kept). This is simpler than a full non-negative least
/// squares per step, and may stop before `k` atoms.
#[derive(Clone, Debug)]
pub struct Omp {
    /// Maximum number of atoms per sample (≥ 1, ≤ the number of latents).
    pub k: usize,
    /// Also stop a sample once its residual norm `‖x − z·D‖` is ≤ `tol`.
    pub tol: Option<f32>,
    /// Non-negative codes (see the type's documentation).
    pub nonnegative: bool,
    /// Product strategy; [`Omp::new`] sets [`Products::Auto`].
    pub products: Products,
}

/// Greedy work (`n·k·N`) below which a batch stays on one thread.
const PARALLEL_MIN_WORK: usize = 1 << 15;

/// An atom whose component orthogonal to the current support has squared
/// norm below this fraction of its own (an angle under ~0.2°) is treated as
/// linearly dependent on the support: at `f32` precision its fit is noise.
const DEPENDENT: f64 = 1e-5;

/// Marks an atom not (yet) in a sample's selection.
const UNSELECTED: usize = usize::MAX;

fn check_k(k: usize) -> Result<()> {
    if k == 0 {
        return Err(Error::invalid("k", k, "must be ≥ 1"));
    }
    Ok(())
}

fn check_k_fits(k: usize, dictionary: &Matrix) -> Result<()> {
    if k > dictionary.rows() {
        return Err(Error::invalid(
            "k",
            k,
            "must not exceed the number of latents (N)",
        ));
    }
    Ok(())
}

impl MatchingPursuit {
    /// Fails with [`Error::InvalidParameter`] when `k = 0`.
    pub fn new(k: usize, nonnegative: bool) -> Result<Self> {
        check_k(k)?;
        Ok(MatchingPursuit {
            k,
            nonnegative,
            products: Products::Auto,
        })
    }

    /// The same pursuit with the product strategy forced to `products`.
    pub fn with_products(mut self, products: Products) -> Self {
        self.products = products;
        self
    }

    /// One sample; returns its FLOPs and greedy steps.
    ///
    /// Per step: `2N` (score and compare every atom), `2` (coefficient and its
    /// accumulation), `2N` (update `α`), plus `2NM` on the fly the first time an atom is chosen.
    fn sample(
        &self,
        p: &Prepared<'_>,
        ws: &mut Workspace,
        i: usize,
        z: &mut [f32],
    ) -> (f64, usize) {
        let nl = p.n_latents();
        ws.reset();
        let mut flops = p.correlations(i, &mut ws.alpha);
        let mut steps = 0;
        for _ in 0..self.k {
            let (j, score) = best_atom(&ws.alpha, &p.inv_norm, self.nonnegative, None);
            flops += 2.0 * nl as f64;
            // `best_atom` returns 0 when no atom qualifies (residual orthogonal to all,
            // or no positive correlation when non-negative).
            if score <= 0.0 {
                break;
            }
            let slot = match ws.slot_of[j] {
                UNSELECTED => {
                    let s = ws.atoms.len();
                    flops += p.gram_row(j, &mut ws.rows[s * nl..(s + 1) * nl]);
                    ws.atoms.push(j);
                    ws.slot_of[j] = s;
                    ws.coef[s] = 0.0;
                    s
                }
                s => s,
            };
            let beta = ws.alpha[j] * p.inv_sq[j];
            ws.coef[slot] += beta;
            let row = &ws.rows[slot * nl..(slot + 1) * nl];
            ws.alpha
                .iter_mut()
                .zip(row)
                .for_each(|(a, &g)| *a -= beta * g);
            flops += 2.0 + 2.0 * nl as f64;
            steps += 1;
        }
        ws.write_codes(z);
        (flops, steps)
    }
}

impl Omp {
    /// Fails with [`Error::InvalidParameter`] when `k = 0` or `tol` is negative or non-finite.
    pub fn new(k: usize, tol: Option<f32>, nonnegative: bool) -> Result<Self> {
        check_k(k)?;
        if let Some(t) = tol {
            if !(t.is_finite() && t >= 0.0) {
                return Err(Error::invalid("tol", t, "must be finite and ≥ 0"));
            }
        }
        Ok(Omp {
            k,
            tol,
            nonnegative,
            products: Products::Auto,
        })
    }

    /// The same pursuit with the product strategy forced to `products`.
    pub fn with_products(mut self, products: Products) -> Self {
        self.products = products;
        self
    }

    /// One sample; returns its FLOPs and the number of atoms kept.
    ///
    /// With `s` atoms selected before a step and `m = s + 1`, the step costs:
    /// `2N` (score and compare), `2NM` on the fly (the new atom's Gram row),
    /// `s² + 2s + 2` (append a row to the Cholesky factor of `G_SS`),
    /// `2m²` (two triangular solves for the coefficients), `m` when non-negative
    /// (sign check), `2mN` (update `α = c − G_Sᵀγ`), `2m` with `tol` (residual
    /// norm `‖x‖² − γᵀc_S`). With `tol`, `‖x‖²` costs `2M` per sample once.
    /// A step that stops early counts only what it computed.
    fn sample(
        &self,
        p: &Prepared<'_>,
        ws: &mut Workspace,
        i: usize,
        z: &mut [f32],
    ) -> (f64, usize) {
        let nl = p.n_latents();
        let k = ws.coef.len();
        ws.reset();
        let mut flops = p.correlations(i, &mut ws.c0);
        ws.alpha.copy_from_slice(&ws.c0);
        let tol_sq = self.tol.map(|t| (t as f64) * (t as f64));
        let x_sq = if tol_sq.is_some() {
            flops += 2.0 * p.x.cols() as f64;
            p.x.row(i).iter().map(|&v| v as f64 * v as f64).sum::<f64>()
        } else {
            0.0
        };
        let mut steps = 0;
        if tol_sq.is_some_and(|t| x_sq <= t) {
            ws.write_codes(z);
            return (flops, 0);
        }
        for s in 0..self.k {
            let m = s + 1;
            let (j, score) = best_atom(&ws.alpha, &p.inv_norm, self.nonnegative, Some(&ws.slot_of));
            flops += 2.0 * nl as f64;
            // `best_atom` returns 0 when no atom qualifies (residual orthogonal to all,
            // or no positive correlation when non-negative).
            if score <= 0.0 {
                break;
            }
            flops += p.gram_row(j, &mut ws.rows[s * nl..(s + 1) * nl]);
            // Append to the Cholesky factor: L w = G_{S,j}, then the new diagonal.
            let new_row = &ws.rows[s * nl..(s + 1) * nl];
            for t in 0..s {
                let lt = &ws.chol[t * k..t * k + t];
                let acc: f64 = lt
                    .iter()
                    .zip(&ws.chol[s * k..s * k + t])
                    .map(|(a, b)| a * b)
                    .sum();
                ws.chol[s * k + t] = (new_row[ws.atoms[t]] - acc) / ws.chol[t * k + t];
            }
            let w_sq: f64 = ws.chol[s * k..s * k + s].iter().map(|w| w * w).sum();
            let g_jj = new_row[j];
            let d_sq = g_jj - w_sq;
            flops += (s * s + 2 * s + 2) as f64;
            if d_sq.is_nan() || d_sq <= DEPENDENT * g_jj {
                break;
            }
            ws.chol[s * k + s] = d_sq.sqrt();
            ws.c_s[s] = ws.c0[j];
            // L Lᵀ γ = c_S, into `cand` so that a rejected step keeps the old fit.
            for r in 0..m {
                let acc: f64 = (0..r).map(|u| ws.chol[r * k + u] * ws.tmp[u]).sum();
                ws.tmp[r] = (ws.c_s[r] - acc) / ws.chol[r * k + r];
            }
            for r in (0..m).rev() {
                let acc: f64 = (r + 1..m).map(|u| ws.chol[u * k + r] * ws.cand[u]).sum();
                ws.cand[r] = (ws.tmp[r] - acc) / ws.chol[r * k + r];
            }
            flops += (2 * m * m) as f64;
            if self.nonnegative {
                flops += m as f64;
                if ws.cand[..m].iter().any(|&g| g < 0.0) {
                    break;
                }
            }
            ws.atoms.push(j);
            ws.slot_of[j] = s;
            ws.coef[..m].copy_from_slice(&ws.cand[..m]);
            ws.alpha.copy_from_slice(&ws.c0);
            for (t, &g) in ws.coef[..m].iter().enumerate() {
                let row = &ws.rows[t * nl..(t + 1) * nl];
                ws.alpha.iter_mut().zip(row).for_each(|(a, &r)| *a -= g * r);
            }
            flops += (2 * m * nl) as f64;
            steps = m;
            if let Some(t) = tol_sq {
                let fit: f64 = ws.coef[..m]
                    .iter()
                    .zip(&ws.c_s[..m])
                    .map(|(g, c)| g * c)
                    .sum();
                flops += (2 * m) as f64;
                if x_sq - fit <= t {
                    break;
                }
            }
        }
        ws.write_codes(z);
        (flops, steps)
    }
}

/// The atom with the largest normalised correlation (signed when `nonnegative`),
/// skipping atoms marked in `exclude`; ties go to the lowest index.
fn best_atom(
    alpha: &[f64],
    inv_norm: &[f64],
    nonnegative: bool,
    exclude: Option<&[usize]>,
) -> (usize, f64) {
    let mut best = (0, 0.0f64);
    for (j, (&a, &w)) in alpha.iter().zip(inv_norm).enumerate() {
        if exclude.is_some_and(|e| e[j] != UNSELECTED) {
            continue;
        }
        let score = if nonnegative { a } else { a.abs() } * w;
        if score > best.1 {
            best = (j, score);
        }
    }
    best
}

/// Batch-wide inputs of the greedy steps.
struct Prepared<'a> {
    x: &'a Matrix,
    d: &'a Matrix,
    /// `G = D·Dᵀ` and `C = X·Dᵀ` when precomputed.
    products: Option<(Matrix, Matrix)>,
    /// `1/‖d_j‖` and `1/‖d_j‖²` (0 for atoms of norm 0).
    inv_norm: Vec<f64>,
    inv_sq: Vec<f64>,
    /// FLOPs of the above: `2N²M + 2nNM + 2N` precomputed (norms from `G`'s
    /// diagonal), `2NM + 2N` on the fly.
    setup_flops: f64,
}

impl<'a> Prepared<'a> {
    fn new(x: &'a Matrix, d: &'a Matrix, precompute: bool) -> Self {
        let (n, dim) = x.shape();
        let nl = d.rows();
        let (nf, nlf, mf) = (n as f64, nl as f64, dim as f64);
        let (products, norm_sq, mut setup_flops): (_, Vec<f64>, f64) = if precompute {
            let g = matmul_new(d, Op::N, d, Op::T);
            let c = matmul_new(x, Op::N, d, Op::T);
            let diag = (0..nl).map(|j| g.get(j, j) as f64).collect();
            (
                Some((g, c)),
                diag,
                2.0 * nlf * nlf * mf + 2.0 * nf * nlf * mf,
            )
        } else {
            let sq = d
                .rows_iter()
                .map(|r| r.iter().map(|&v| v as f64 * v as f64).sum())
                .collect();
            (None, sq, 2.0 * nlf * mf)
        };
        let inv_sq: Vec<f64> = norm_sq
            .iter()
            .map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 })
            .collect();
        let inv_norm = inv_sq.iter().map(|s| s.sqrt()).collect();
        setup_flops += 2.0 * nlf;
        Prepared {
            x,
            d,
            products,
            inv_norm,
            inv_sq,
            setup_flops,
        }
    }

    fn n_latents(&self) -> usize {
        self.d.rows()
    }

    /// `out = D·x_i`; returns its FLOPs (0 when precomputed).
    fn correlations(&self, i: usize, out: &mut [f64]) -> f64 {
        match &self.products {
            Some((_, c)) => {
                out.iter_mut()
                    .zip(c.row(i))
                    .for_each(|(o, &v)| *o = v as f64);
                0.0
            }
            None => self.matvec(self.x.row(i), out),
        }
    }

    /// `out = D·d_atom` (row `atom` of `G`); returns its FLOPs (0 when precomputed).
    fn gram_row(&self, atom: usize, out: &mut [f64]) -> f64 {
        match &self.products {
            Some((g, _)) => {
                out.iter_mut()
                    .zip(g.row(atom))
                    .for_each(|(o, &v)| *o = v as f64);
                0.0
            }
            None => self.matvec(self.d.row(atom), out),
        }
    }

    fn matvec(&self, v: &[f32], out: &mut [f64]) -> f64 {
        for (o, row) in out.iter_mut().zip(self.d.rows_iter()) {
            *o = row.iter().zip(v).map(|(&a, &b)| a as f64 * b as f64).sum();
        }
        2.0 * (self.d.rows() * self.d.cols()) as f64
    }
}

/// Per-sample scratch, allocated once per thread and reset per sample.
struct Workspace {
    /// Correlations of the residual with every atom (`N`).
    alpha: Vec<f64>,
    /// Correlations of the sample with every atom (`N`, OMP).
    c0: Vec<f64>,
    /// Slot of each atom in the selection, or [`UNSELECTED`] (`N`).
    slot_of: Vec<usize>,
    /// Selected atoms in order (≤ `k`).
    atoms: Vec<usize>,
    /// Gram rows of the selected atoms (`k × N`).
    rows: Vec<f64>,
    /// Coefficient of each selected atom (`k`).
    coef: Vec<f64>,
    /// OMP: Cholesky factor of `G_SS` (`k × k`, lower), `c_S`, solve scratch and candidate fit.
    chol: Vec<f64>,
    c_s: Vec<f64>,
    tmp: Vec<f64>,
    cand: Vec<f64>,
}

impl Workspace {
    fn new(k: usize, nl: usize) -> Self {
        Workspace {
            alpha: vec![0.0; nl],
            c0: vec![0.0; nl],
            slot_of: vec![UNSELECTED; nl],
            atoms: Vec::with_capacity(k),
            rows: vec![0.0; k * nl],
            coef: vec![0.0; k],
            chol: vec![0.0; k * k],
            c_s: vec![0.0; k],
            tmp: vec![0.0; k],
            cand: vec![0.0; k],
        }
    }

    fn reset(&mut self) {
        for &a in &self.atoms {
            self.slot_of[a] = UNSELECTED;
        }
        self.atoms.clear();
    }

    fn write_codes(&self, z: &mut [f32]) {
        z.fill(0.0);
        for (&a, &c) in self.atoms.iter().zip(&self.coef) {
            z[a] = c as f32;
        }
    }
}

/// Validates, prepares the products and runs `sample` over every row of `x`,
/// in parallel when the batch is large. `iterations` is the largest number of
/// greedy steps any sample took.
fn run_batch<F>(x: &Matrix, d: &Matrix, k: usize, products: Products, sample: F) -> Result<Encoding>
where
    F: Fn(&Prepared<'_>, &mut Workspace, usize, &mut [f32]) -> (f64, usize) + Sync,
{
    check_inputs(x, d)?;
    check_k_fits(k, d)?;
    let (n, nl) = (x.rows(), d.rows());
    let mut codes = Matrix::zeros(n, nl);
    if n == 0 {
        return Ok(Encoding {
            codes,
            flops: 0.0,
            iterations: 0,
        });
    }
    let precompute = match products {
        Products::Precomputed => true,
        Products::OnTheFly => false,
        Products::Auto => nl <= n.saturating_mul(k),
    };
    let prepared = Prepared::new(x, d, precompute);
    let run = |ws: &mut Workspace, (i, z): (usize, &mut [f32])| sample(&prepared, ws, i, z);
    let combine = |a: (f64, usize), b: (f64, usize)| (a.0 + b.0, a.1.max(b.1));
    let parallel = n > 1 && n * k * nl >= PARALLEL_MIN_WORK && rayon::current_num_threads() > 1;
    // FLOP counts are integers far below 2⁵³, so their sum is exact in any order.
    let (flops, iterations) = if parallel {
        codes
            .as_mut_slice()
            .par_chunks_mut(nl)
            .enumerate()
            .map_init(|| Workspace::new(k, nl), run)
            .reduce(|| (0.0, 0), combine)
    } else {
        let mut ws = Workspace::new(k, nl);
        codes
            .as_mut_slice()
            .chunks_mut(nl)
            .enumerate()
            .map(|item| run(&mut ws, item))
            .fold((0.0, 0), combine)
    };
    Ok(Encoding {
        codes,
        flops: prepared.setup_flops + flops,
        iterations,
    })
}

impl Encoder for MatchingPursuit {
    /// `"mp"`, or `"mp-signed"` when codes may be negative.
    fn name(&self) -> String {
        if self.nonnegative { "mp" } else { "mp-signed" }.to_string()
    }

    /// `k` matching-pursuit steps per sample. Fails when `k` exceeds the number of latents.
    ///
    /// FLOPs: setup (`2N²M + 2nNM + 2N` precomputed, `2NM + 2N` on the fly), then per
    /// sample `2NM` on the fly for `D·x`, and the per-step cost of the steps taken
    /// (`4N + 2`, plus `2NM` on the fly per distinct atom).
    fn encode(&self, x: &Matrix, dictionary: &Matrix) -> Result<Encoding> {
        run_batch(x, dictionary, self.k, self.products, |p, ws, i, z| {
            self.sample(p, ws, i, z)
        })
    }
}

impl Encoder for Omp {
    /// `"omp"`, or `"omp-signed"` when codes may be negative.
    fn name(&self) -> String {
        if self.nonnegative {
            "omp"
        } else {
            "omp-signed"
        }
        .to_string()
    }

    /// Up to `k` OMP steps per sample. Fails when `k` exceeds the number of latents.
    ///
    /// FLOPs: setup as for [`MatchingPursuit`], then per sample `2NM` on the fly for
    /// `D·x`, `2M` with `tol`, and per step `2N + s² + 2s + 2 + 2m² + 2mN`
    /// (`+ m` non-negative, `+ 2m` with `tol`, `+ 2NM` on the fly), `s` atoms before the step, `m = s + 1`.
    fn encode(&self, x: &Matrix, dictionary: &Matrix) -> Result<Encoding> {
        run_batch(x, dictionary, self.k, self.products, |p, ws, i, z| {
            self.sample(p, ws, i, z)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{seq::index::sample, Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn gaussian(rng: &mut ChaCha8Rng, rows: usize, cols: usize) -> Matrix {
        Matrix::from_fn(rows, cols, |_, _| rng.sample::<f32, _>(StandardNormal))
    }

    fn unit_dictionary(rng: &mut ChaCha8Rng, nl: usize, dim: usize) -> Matrix {
        let mut d = gaussian(rng, nl, dim);
        d.normalize_rows();
        d
    }

    /// Orthonormal rows by Gram–Schmidt on a Gaussian matrix (`nl ≤ dim`).
    fn orthonormal(rng: &mut ChaCha8Rng, nl: usize, dim: usize) -> Matrix {
        let mut d = gaussian(rng, nl, dim);
        for i in 0..nl {
            for j in 0..i {
                let dot: f32 = d.row(i).iter().zip(d.row(j)).map(|(a, b)| a * b).sum();
                for m in 0..dim {
                    let v = d.get(i, m) - dot * d.get(j, m);
                    d.set(i, m, v);
                }
            }
            let norm = d.row(i).iter().map(|v| v * v).sum::<f32>().sqrt();
            d.row_mut(i).iter_mut().for_each(|v| *v /= norm);
        }
        d
    }

    /// `n` exactly `k`-sparse codes with magnitudes in [0.5, 2), signed unless `nonnegative`.
    fn sparse_codes(
        rng: &mut ChaCha8Rng,
        n: usize,
        nl: usize,
        k: usize,
        nonnegative: bool,
    ) -> Matrix {
        let mut z = Matrix::zeros(n, nl);
        for i in 0..n {
            for j in sample(rng, nl, k) {
                let sign = if nonnegative || rng.gen_bool(0.5) {
                    1.0
                } else {
                    -1.0
                };
                z.set(i, j, sign * rng.gen_range(0.5..2.0));
            }
        }
        z
    }

    fn decode(z: &Matrix, d: &Matrix) -> Matrix {
        matmul_new(z, Op::N, d, Op::N)
    }

    /// Unit-norm atoms near an orthonormal set: non-orthogonal, with small coherence.
    fn incoherent(rng: &mut ChaCha8Rng, nl: usize, dim: usize) -> Matrix {
        let q = orthonormal(rng, nl, dim);
        let mut d = Matrix::from_fn(nl, dim, |j, m| {
            q.get(j, m) + 0.05 * rng.sample::<f32, _>(StandardNormal)
        });
        d.normalize_rows();
        d
    }

    fn coherence(d: &Matrix) -> f32 {
        let mut mu = 0.0f32;
        for i in 0..d.rows() {
            for j in 0..i {
                let dot: f32 = d.row(i).iter().zip(d.row(j)).map(|(a, b)| a * b).sum();
                mu = mu.max(dot.abs());
            }
        }
        mu
    }

    fn both_products() -> [Products; 2] {
        [Products::Precomputed, Products::OnTheFly]
    }

    #[test]
    fn omp_recovers_sparse_codes_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let (nl, dim, k) = (6, 12, 2);
        let d = incoherent(&mut rng, nl, dim);
        assert!(coherence(&d) > 0.01);
        // Below 1/(2K − 1), OMP provably selects a true atom at every step (Tropp 2004).
        assert!(coherence(&d) < 1.0 / 3.0, "coherence {}", coherence(&d));
        for nonnegative in [true, false] {
            let z = sparse_codes(&mut rng, 40, nl, k, nonnegative);
            let x = decode(&z, &d);
            for products in both_products() {
                let omp = Omp::new(k, None, nonnegative)
                    .unwrap()
                    .with_products(products);
                let enc = omp.encode(&x, &d).unwrap();
                assert!(enc.codes.max_abs_diff(&z) < 1e-4, "{products:?}");
                assert_eq!(enc.iterations, k);
                let support_ok = (0..40)
                    .all(|i| (0..nl).all(|j| (z.get(i, j) != 0.0) == (enc.codes.get(i, j) != 0.0)));
                assert!(support_ok);
            }
        }
    }

    #[test]
    fn omp_handles_atoms_of_any_norm() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (nl, dim) = (6, 12);
        let unit = incoherent(&mut rng, nl, dim);
        let scales = [0.1f32, 3.0, 0.5, 10.0, 1.0, 0.02];
        let d = Matrix::from_fn(nl, dim, |j, m| scales[j] * unit.get(j, m));
        let z_unit = sparse_codes(&mut rng, 20, nl, 2, true);
        let x = decode(&z_unit, &unit);
        // The same data in the scaled dictionary has codes z_j / scale_j.
        let want = Matrix::from_fn(20, nl, |i, j| z_unit.get(i, j) / scales[j]);
        for products in both_products() {
            let enc = Omp::new(2, None, true)
                .unwrap()
                .with_products(products)
                .encode(&x, &d)
                .unwrap();
            let rel = (0..20 * nl)
                .map(|p| {
                    (enc.codes.as_slice()[p] - want.as_slice()[p]).abs()
                        / want.as_slice()[p].abs().max(1.0)
                })
                .fold(0.0f32, f32::max);
            assert!(rel < 1e-4, "{products:?}: {rel}");
        }
    }

    #[test]
    fn mp_recovers_codes_on_orthogonal_dictionaries_of_any_norm() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let (nl, dim) = (6, 12);
        let q = orthonormal(&mut rng, nl, dim);
        for scaled in [false, true] {
            let d = if scaled {
                Matrix::from_fn(nl, dim, |j, m| (0.5 + j as f32) * q.get(j, m))
            } else {
                q.clone()
            };
            for nonnegative in [true, false] {
                let z = sparse_codes(&mut rng, 30, nl, 2, nonnegative);
                let x = decode(&z, &d);
                for products in both_products() {
                    let mp = MatchingPursuit::new(2, nonnegative)
                        .unwrap()
                        .with_products(products);
                    let enc = mp.encode(&x, &d).unwrap();
                    assert!(
                        enc.codes.max_abs_diff(&z) < 1e-4,
                        "scaled {scaled}, {products:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn mp_reselects_atoms_and_reduces_the_residual_every_step() {
        // Two non-orthogonal atoms in the plane: MP zig-zags between them.
        let d = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.8, 0.6]).unwrap();
        let x = Matrix::from_vec(1, 2, vec![0.3, 1.0]).unwrap();
        let mut last = f64::INFINITY;
        for k in 1..=2 {
            let z = MatchingPursuit::new(k, false)
                .unwrap()
                .encode(&x, &d)
                .unwrap();
            let r = decode(&z.codes, &d);
            let res = ((r.get(0, 0) - 0.3) as f64).powi(2) + ((r.get(0, 1) - 1.0) as f64).powi(2);
            assert!(res < last);
            last = res;
        }
        // More steps than non-zero atoms: coefficients accumulate on the same two atoms.
        let d4 = Matrix::from_vec(4, 2, vec![1.0, 0.0, 0.8, 0.6, 0.0, 0.0, 0.0, 0.0]).unwrap();
        let z = MatchingPursuit::new(4, false)
            .unwrap()
            .encode(&x, &d4)
            .unwrap();
        assert_eq!(z.iterations, 4);
        assert_eq!(
            (z.codes.get(0, 2), z.codes.get(0, 3)),
            (0.0, 0.0),
            "zero atoms are never chosen"
        );
        let r = decode(&z.codes, &d4);
        let res = ((r.get(0, 0) - 0.3) as f64).powi(2) + ((r.get(0, 1) - 1.0) as f64).powi(2);
        assert!(res < last);
    }

    #[test]
    fn precomputed_and_on_the_fly_products_agree() {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let d = unit_dictionary(&mut rng, 16, 8);
        let x = gaussian(&mut rng, 10, 8);
        for nonnegative in [true, false] {
            let mp = MatchingPursuit::new(5, nonnegative).unwrap();
            let omp = Omp::new(5, Some(1e-3), nonnegative).unwrap();
            for (mp_or_omp, name) in [(true, "mp"), (false, "omp")] {
                let run = |p| {
                    if mp_or_omp {
                        mp.clone().with_products(p).encode(&x, &d).unwrap()
                    } else {
                        omp.clone().with_products(p).encode(&x, &d).unwrap()
                    }
                };
                let (a, b) = (run(Products::Precomputed), run(Products::OnTheFly));
                assert!(a.codes.max_abs_diff(&b.codes) < 1e-4, "{name}");
                assert_eq!(a.iterations, b.iterations, "{name}");
                assert!(a.flops != b.flops);
            }
        }
    }

    #[test]
    fn mp_flops_follow_the_documented_formula() {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let (n, nl, dim, k) = (5usize, 6usize, 12usize, 3usize);
        let d = orthonormal(&mut rng, nl, dim);
        let x = decode(&sparse_codes(&mut rng, n, nl, 3, true), &d);
        let (nf, nlf, mf, kf) = (n as f64, nl as f64, dim as f64, k as f64);
        let pre = MatchingPursuit::new(k, true)
            .unwrap()
            .with_products(Products::Precomputed);
        let enc = pre.encode(&x, &d).unwrap();
        assert_eq!(enc.iterations, k);
        let setup = 2.0 * nlf * nlf * mf + 2.0 * nf * nlf * mf + 2.0 * nlf;
        assert_eq!(enc.flops, setup + nf * kf * (4.0 * nlf + 2.0));
        // On the fly: D·x per sample and one Gram row per distinct atom (3 here).
        let fly = pre
            .with_products(Products::OnTheFly)
            .encode(&x, &d)
            .unwrap();
        let setup = 2.0 * nlf * mf + 2.0 * nlf;
        assert_eq!(
            fly.flops,
            setup + nf * (2.0 * nlf * mf * (1.0 + kf) + kf * (4.0 * nlf + 2.0))
        );
    }

    #[test]
    fn omp_tol_stops_once_the_residual_is_small() {
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        let d = unit_dictionary(&mut rng, 10, 20);
        let z = sparse_codes(&mut rng, 8, 10, 2, true);
        let x = decode(&z, &d);
        let with_tol = Omp::new(6, Some(1e-3), true)
            .unwrap()
            .encode(&x, &d)
            .unwrap();
        assert_eq!(with_tol.iterations, 2);
        assert!(with_tol.codes.max_abs_diff(&z) < 1e-4);
        let huge_tol = Omp::new(6, Some(1e6), true)
            .unwrap()
            .encode(&x, &d)
            .unwrap();
        assert_eq!(huge_tol.iterations, 0);
        assert!(huge_tol.codes.as_slice().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn nonnegative_omp_keeps_a_nonnegative_least_squares_fit() {
        let mut rng = ChaCha8Rng::seed_from_u64(16);
        let d = unit_dictionary(&mut rng, 24, 10);
        let x = gaussian(&mut rng, 30, 10);
        let enc = Omp::new(6, None, true).unwrap().encode(&x, &d).unwrap();
        assert!(enc.codes.as_slice().iter().all(|&v| v >= 0.0));
        let r = decode(&enc.codes, &d);
        for i in 0..30 {
            let support: Vec<usize> = (0..24).filter(|&j| enc.codes.get(i, j) > 0.0).collect();
            assert!(!support.is_empty() && support.len() <= 6);
            // Least squares on the support: the residual is orthogonal to its atoms.
            for &j in &support {
                let dot: f64 = (0..10)
                    .map(|m| (x.get(i, m) - r.get(i, m)) as f64 * d.get(j, m) as f64)
                    .sum();
                assert!(dot.abs() < 1e-4, "sample {i}, atom {j}: {dot}");
            }
        }
        // Signed OMP always fits k atoms here (k < M), non-negative OMP sometimes stops early.
        let signed = Omp::new(6, None, false).unwrap().encode(&x, &d).unwrap();
        assert_eq!(signed.iterations, 6);
        assert!(signed.codes.as_slice().iter().any(|&v| v < 0.0));
    }

    #[test]
    fn omp_stops_at_linearly_dependent_atoms() {
        // Three atoms in the plane: the third is a combination of the first two.
        let d = Matrix::from_vec(3, 2, vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8]).unwrap();
        let x = Matrix::from_vec(1, 2, vec![0.5, 2.0]).unwrap();
        let enc = Omp::new(3, None, false).unwrap().encode(&x, &d).unwrap();
        assert!(enc.iterations <= 2);
        let r = decode(&enc.codes, &d);
        assert!((r.get(0, 0) - 0.5).abs() < 1e-5 && (r.get(0, 1) - 2.0).abs() < 1e-5);
    }

    #[test]
    fn parallel_batches_match_a_sequential_run_exactly() {
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        let d = unit_dictionary(&mut rng, 32, 16);
        let x = gaussian(&mut rng, 400, 16);
        const { assert!(400 * 4 * 32 >= PARALLEL_MIN_WORK) };
        let encoders: [Box<dyn Encoder + Sync>; 2] = [
            Box::new(MatchingPursuit::new(4, true).unwrap()),
            Box::new(Omp::new(4, None, false).unwrap()),
        ];
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        for e in &encoders {
            let a = e.encode(&x, &d).unwrap();
            let b = pool.install(|| e.encode(&x, &d)).unwrap();
            assert_eq!(a.codes, b.codes, "{}", e.name());
            assert_eq!((a.flops, a.iterations), (b.flops, b.iterations));
        }
    }

    #[test]
    fn rejects_bad_parameters_and_inputs() {
        assert!(MatchingPursuit::new(0, true).is_err());
        assert!(Omp::new(0, None, true).is_err());
        assert!(Omp::new(2, Some(-1.0), true).is_err());
        assert!(Omp::new(2, Some(f32::NAN), true).is_err());
        let d = Matrix::identity(3);
        let x = Matrix::zeros(2, 3);
        for e in [
            Box::new(MatchingPursuit::new(4, true).unwrap()) as Box<dyn Encoder>,
            Box::new(Omp::new(4, None, true).unwrap()),
        ] {
            let err = e.encode(&x, &d).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidParameter { name, .. } if name == "k"),
                "{err}"
            );
        }
        let omp = Omp::new(2, None, true).unwrap();
        assert!(omp.encode(&Matrix::zeros(2, 4), &d).is_err());
        let mut bad = Matrix::zeros(2, 3);
        bad.set(0, 1, f32::NAN);
        assert!(matches!(omp.encode(&bad, &d), Err(Error::NonFinite { .. })));
        // An empty batch is fine.
        assert_eq!(
            omp.encode(&Matrix::zeros(0, 3), &d).unwrap().codes.shape(),
            (0, 3)
        );
    }

    #[test]
    fn names() {
        assert_eq!(MatchingPursuit::new(1, true).unwrap().name(), "mp");
        assert_eq!(MatchingPursuit::new(1, false).unwrap().name(), "mp-signed");
        assert_eq!(Omp::new(1, None, true).unwrap().name(), "omp");
        assert_eq!(Omp::new(1, None, false).unwrap().name(), "omp-signed");
    }
}
