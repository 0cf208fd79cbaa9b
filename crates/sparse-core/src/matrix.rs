//! [`Matrix`]: a dense, row-major `f32` matrix, the array type of the toolkit.
//!
//! Row-major matches `.npy` C order, so data `X (n_samples × dim)`, codes
//! `Z (n_samples × n_latents)` and dictionaries `D (n_latents × dim)` load and
//! save without copies. Products go through faer views ([`Matrix::view`]).

use crate::error::{Error, Result};
use crate::linalg::{dot_f64_by_lanes, sum_f64_by_lanes, vectorised};
use faer::{MatMut, MatRef};

/// A dense row-major `f32` matrix with explicit shape `rows × cols`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "MatrixRepr")]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

/// The serialised form of a [`Matrix`], checked on the way in.
#[derive(serde::Deserialize)]
struct MatrixRepr {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl TryFrom<MatrixRepr> for Matrix {
    type Error = Error;
    fn try_from(r: MatrixRepr) -> Result<Self> {
        Matrix::from_vec(r.rows, r.cols, r.data)
    }
}

impl Matrix {
    /// A `rows × cols` matrix of zeros.
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps row-major `data`; fails if `data.len() != rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(Error::shape(
                "matrix data",
                format!("{rows}×{cols} = {} values", rows.saturating_mul(cols)),
                format!("{} values", data.len()),
            ));
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Builds a matrix from `f(row, col)`.
    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f32) -> Self {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Matrix { rows, cols, data }
    }

    /// The identity matrix of size `n`.
    pub fn identity(n: usize) -> Self {
        Matrix::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// `(rows, cols)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// The row-major values.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The row-major values, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    /// Consumes the matrix, returning its row-major values.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Row `i` as a slice.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Row `i` as a mutable slice.
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        let c = self.cols;
        &mut self.data[i * c..(i + 1) * c]
    }

    /// Iterator over rows.
    pub fn rows_iter(&self) -> impl Iterator<Item = &[f32]> {
        // chunks_exact(0) panics; a matrix with no columns has rows of length 0.
        (0..self.rows).map(move |i| self.row(i))
    }

    /// Element `(i, j)`.
    pub fn get(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.cols + j]
    }

    /// Sets element `(i, j)`.
    pub fn set(&mut self, i: usize, j: usize, v: f32) {
        self.data[i * self.cols + j] = v;
    }

    /// A faer view (`rows × cols`) for products.
    pub fn view(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(&self.data, self.rows, self.cols)
    }

    /// A mutable faer view (`rows × cols`).
    pub fn view_mut(&mut self) -> MatMut<'_, f32> {
        MatMut::from_row_major_slice_mut(&mut self.data, self.rows, self.cols)
    }

    /// The transpose, as a new matrix.
    pub fn transpose(&self) -> Matrix {
        Matrix::from_fn(self.cols, self.rows, |i, j| self.get(j, i))
    }

    /// Rows `range` as a new matrix.
    pub fn select_rows(&self, range: std::ops::Range<usize>) -> Matrix {
        Matrix {
            rows: range.len(),
            cols: self.cols,
            data: self.data[range.start * self.cols..range.end * self.cols].to_vec(),
        }
    }

    /// Fails with [`Error::Shape`] unless the shape is `(rows, cols)`; `None` accepts any size on that axis.
    pub fn expect_shape(&self, what: &str, rows: Option<usize>, cols: Option<usize>) -> Result<()> {
        let ok = rows.is_none_or(|r| r == self.rows) && cols.is_none_or(|c| c == self.cols);
        if ok {
            return Ok(());
        }
        let show = |d: Option<usize>, name: &str| d.map_or(name.to_string(), |v| v.to_string());
        Err(Error::shape(
            what,
            format!("({}, {})", show(rows, "n"), show(cols, "m")),
            format!("({}, {})", self.rows, self.cols),
        ))
    }

    /// Lowercase hex SHA-256 of the shape and the entries' bits: equal
    /// fingerprints mean bit-identical matrices (for a negligible collision chance).
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update((self.rows as u64).to_le_bytes());
        hasher.update((self.cols as u64).to_le_bytes());
        for v in &self.data {
            hasher.update(v.to_bits().to_le_bytes());
        }
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Fails with [`Error::NonFinite`] at the first NaN or infinity.
    pub fn check_finite(&self, what: &str) -> Result<()> {
        // A branch-free pass first (it vectorises; solvers check their inputs
        // on every call), the position only when something is wrong.
        let all_finite = vectorised(|| {
            self.data
                .chunks(1024)
                .all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite()))
        });
        if all_finite {
            return Ok(());
        }
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(p) => Err(Error::NonFinite {
                what: what.to_string(),
                row: p / self.cols.max(1),
                col: p % self.cols.max(1),
                value: self.data[p],
            }),
        }
    }

    /// Frobenius norm squared, accumulated in f64 (eight partial sums).
    #[inline]
    pub fn norm_sq(&self) -> f64 {
        sum_f64_by_lanes(&self.data, |v| v * v)
    }

    /// Euclidean norm of each row, in f64.
    pub fn row_norms(&self) -> Vec<f64> {
        self.rows_iter()
            .map(|r| dot_f64_by_lanes(r, r).sqrt())
            .collect()
    }

    /// Scales every row to unit Euclidean norm; rows of norm zero are left as they are.
    pub fn normalize_rows(&mut self) {
        for i in 0..self.rows {
            let row = self.row_mut(i);
            let norm = dot_f64_by_lanes(row, row).sqrt();
            if norm > 0.0 {
                let inv = (1.0 / norm) as f32;
                row.iter_mut().for_each(|v| *v *= inv);
            }
        }
    }

    /// Largest absolute elementwise difference to `other` (same shape required).
    pub fn max_abs_diff(&self, other: &Matrix) -> f32 {
        assert_eq!(self.shape(), other.shape(), "max_abs_diff: shapes differ");
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
    }
}
