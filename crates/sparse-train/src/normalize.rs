//! Activation normalisation and the decoder-bias initialisation, both
//! estimated on a seeded sample of training rows.
//!
//! **Normalisation** (SAELens `normalize_activations =
//! "expected_average_only_in"`): every activation is multiplied by one
//! scalar `s` so that the sample mean of `‖s·x‖²` is `d_model`:
//! `s = √(d_model / mean ‖x‖²)`. SAELens estimates `s = √d_model / mean ‖x‖`
//! (mean of the norms rather than root mean square); the two differ by
//! `mean‖x‖ / √(mean‖x‖²) ≤ 1`, Jensen's gap, small when norms vary little.
//! The model trains on `s·x`; `s` is stored in each checkpoint (the
//! trainer's part of `state.json`, see [`crate::StoredRun`]) and
//! [`crate::eval`] encodes `s·x` and divides the reconstruction by `s`, so
//! metrics and codes refer to the raw activations. (Folding `s` into the
//! weights is exact for every model here: for a ReLU/TopK/JumpReLU encoder,
//! `z(s·x)/s` has biases and thresholds divided by `s` and the same unit-norm
//! dictionary; it is left to an SAELens export, so that checkpoints keep
//! training exactly where they stopped.)
//!
//! **Geometric median** (SAELens `b_dec_init_method = "geometric_median"`):
//! Weiszfeld's iteration from the mean, in `f64`.

use sparse_core::{Error, Matrix, Result};
use sparse_store::{ActivationStore, BatchOptions, ShuffledBatches, Split, Splits};

/// Offset of the sample's seed from the run's, so the sample and the
/// training batches are independent streams.
const SAMPLE_SEED_OFFSET: u64 = 0x5a3b_1e00_0000_0001;

/// Up to `rows` rows of the train split, seeded (a prefix of one shuffled
/// epoch, independent of the training batches of the same `seed`).
pub fn sample_train_rows(
    store: &ActivationStore,
    splits: Splits,
    seed: u64,
    rows: usize,
) -> Result<Matrix> {
    if rows == 0 {
        return Err(Error::invalid(
            "norm_estimation_rows",
            0,
            "must be at least 1",
        ));
    }
    let chunk = rows.min(4096);
    let mut it = ShuffledBatches::new(
        store,
        BatchOptions {
            batch_size: chunk,
            buffer_rows: rows.min(1 << 16),
            seed: seed ^ SAMPLE_SEED_OFFSET,
            epochs: Some(1),
            split: Split::Train,
            splits,
            drop_last: false,
        },
    )?;
    let d = store.d_model();
    let mut data = Vec::with_capacity(rows * d);
    while data.len() < rows * d {
        match it.next() {
            Some(b) => {
                let b = b?;
                let take = (rows * d - data.len()).min(b.as_slice().len());
                data.extend_from_slice(&b.as_slice()[..take]);
            }
            None => break,
        }
    }
    Matrix::from_vec(data.len() / d, d, data)
}

/// `s = √(d / mean ‖x‖²)` over the rows of `sample (n × d)`; fails on an
/// empty or all-zero sample.
pub fn expected_norm_scale(sample: &Matrix) -> Result<f32> {
    sample.check_finite("activation sample")?;
    let n = sample.rows();
    let mean_sq = sample.norm_sq() / n.max(1) as f64;
    if n == 0 || mean_sq <= 0.0 {
        return Err(Error::invalid(
            "activations",
            "all zero",
            "cannot be normalised to a fixed norm",
        ));
    }
    Ok((sample.cols() as f64 / mean_sq).sqrt() as f32)
}

/// The geometric median `argmin_m Σ_i ‖x_i − m‖` of the rows of
/// `points (n × d)` by Weiszfeld's iteration from the mean (weights
/// `1 / max(‖x_i − m‖, 1e-12)`), stopping after `max_iter` iterations or
/// when the objective improves by less than `rel_tol` relatively.
pub fn geometric_median(points: &Matrix, max_iter: usize, rel_tol: f64) -> Result<Vec<f32>> {
    points.check_finite("geometric-median sample")?;
    let (n, d) = points.shape();
    if n == 0 {
        return Err(Error::invalid("points", 0, "need at least one row"));
    }
    let mut m = vec![0.0f64; d];
    for row in points.rows_iter() {
        m.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
    }
    m.iter_mut().for_each(|a| *a /= n as f64);
    let dist = |m: &[f64], row: &[f32]| -> f64 {
        row.iter()
            .zip(m)
            .map(|(&v, &c)| (v as f64 - c) * (v as f64 - c))
            .sum::<f64>()
            .sqrt()
    };
    let mut obj: f64 = points.rows_iter().map(|r| dist(&m, r)).sum();
    for _ in 0..max_iter {
        let mut num = vec![0.0f64; d];
        let mut den = 0.0f64;
        for row in points.rows_iter() {
            let w = 1.0 / dist(&m, row).max(1e-12);
            den += w;
            num.iter_mut()
                .zip(row)
                .for_each(|(a, &v)| *a += w * v as f64);
        }
        let next: Vec<f64> = num.iter().map(|a| a / den).collect();
        let next_obj: f64 = points.rows_iter().map(|r| dist(&next, r)).sum();
        let improved = obj - next_obj;
        if next_obj <= obj {
            m = next;
            obj = next_obj;
        }
        if improved <= rel_tol * obj.max(f64::MIN_POSITIVE) {
            break;
        }
    }
    Ok(m.into_iter().map(|v| v as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objective(points: &Matrix, m: &[f64]) -> f64 {
        points
            .rows_iter()
            .map(|r| {
                r.iter()
                    .zip(m)
                    .map(|(&v, &c)| (v as f64 - c).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .sum()
    }

    #[test]
    fn one_dimensional_median() {
        let p = Matrix::from_vec(5, 1, vec![0.0, 1.0, 2.0, 10.0, 100.0]).unwrap();
        let m = geometric_median(&p, 1000, 1e-15).unwrap();
        assert!((m[0] - 2.0).abs() < 1e-3, "{m:?}");
    }

    #[test]
    fn matches_a_brute_force_grid_search_in_2d() {
        // Skewed points: the mean is far from the median.
        let v = [
            0.0, 0.0, 1.0, 0.2, 0.3, 1.1, 8.0, 9.0, 0.5, 0.4, -0.2, 0.9, 0.1, -0.3,
        ];
        let p = Matrix::from_vec(7, 2, v.to_vec()).unwrap();
        let m = geometric_median(&p, 500, 1e-14).unwrap();
        let mm = [m[0] as f64, m[1] as f64];
        // Brute force: a 2001² grid of step 1e-3 around the origin region.
        let mut best = (f64::INFINITY, [0.0, 0.0]);
        for i in 0..=2000 {
            for j in 0..=2000 {
                let c = [-0.5 + i as f64 * 1e-3, -0.5 + j as f64 * 1e-3];
                let o = objective(&p, &c);
                if o < best.0 {
                    best = (o, c);
                }
            }
        }
        assert!(objective(&p, &mm) <= best.0 + 1e-6, "{mm:?} vs {best:?}");
        assert!((mm[0] - best.1[0]).abs() < 2e-3 && (mm[1] - best.1[1]).abs() < 2e-3);
        // And it is not the mean.
        let mean_x = v.iter().step_by(2).map(|&a| a as f64).sum::<f64>() / 7.0;
        assert!((mm[0] - mean_x).abs() > 0.5);
    }

    #[test]
    fn scale_gives_the_expected_squared_norm() {
        // Rows (3, 4) and (0, 0): mean ‖x‖² = 12.5, d = 2 → s = √(2/12.5) = 0.4.
        let x = Matrix::from_vec(2, 2, vec![3.0, 4.0, 0.0, 0.0]).unwrap();
        assert!((expected_norm_scale(&x).unwrap() - 0.4).abs() < 1e-7);
        assert!(expected_norm_scale(&Matrix::zeros(3, 2)).is_err());
    }
}
