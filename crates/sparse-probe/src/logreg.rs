//! L2-regularised binary logistic regression, solved exactly by Newton's method.
//!
//! The objective is scikit-learn's `LogisticRegression(penalty="l2", C)`:
//! `C·Σᵢ log(1 + exp(−ỹᵢ(xᵢ·w + b))) + ½‖w‖²` with `ỹ ∈ {−1, +1}` and the
//! intercept `b` not penalised. Probes here have at most a handful of inputs
//! (k ≤ 5 latents), so a dense Newton step on `k + 1` unknowns is cheap and
//! converges to machine precision, which is what lets the tests compare against
//! scikit-learn's solution coefficient by coefficient.

use anyhow::{bail, Result};
use sparse_core::linalg::solve_spd;

/// A fitted probe: `P(y = 1 | x) = σ(x·w + b)`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LogisticModel {
    /// Weights, one per input column.
    pub weights: Vec<f64>,
    /// Intercept (not penalised).
    pub intercept: f64,
    /// Newton iterations used.
    pub iterations: usize,
}

/// Numerically stable `log(1 + exp(−m))`.
fn log1p_exp_neg(m: f64) -> f64 {
    if m > 0.0 {
        (-m).exp().ln_1p()
    } else {
        -m + m.exp().ln_1p()
    }
}

fn sigmoid(t: f64) -> f64 {
    if t >= 0.0 {
        1.0 / (1.0 + (-t).exp())
    } else {
        let e = t.exp();
        e / (1.0 + e)
    }
}

impl LogisticModel {
    /// Fits on `x` (`n` rows of `d` values, row-major) and labels `y`.
    /// `c` is scikit-learn's inverse regularisation strength (its default is 1).
    pub fn fit(x: &[f64], d: usize, y: &[bool], c: f64) -> Result<Self> {
        let n = y.len();
        if x.len() != n * d {
            bail!(
                "logistic regression: {} values for {n} rows of {d} inputs",
                x.len()
            );
        }
        if n == 0 {
            bail!("logistic regression: no training rows");
        }
        if !(c > 0.0 && c.is_finite()) {
            bail!("logistic regression: C = {c} must be positive and finite");
        }
        let p = d + 1; // weights then intercept
        let mut theta = vec![0.0; p];
        let objective = |theta: &[f64]| -> f64 {
            let mut loss = 0.0;
            for i in 0..n {
                let row = &x[i * d..(i + 1) * d];
                let t: f64 = row.iter().zip(theta).map(|(a, w)| a * w).sum::<f64>() + theta[d];
                let s = if y[i] { 1.0 } else { -1.0 };
                loss += log1p_exp_neg(s * t);
            }
            c * loss + 0.5 * theta[..d].iter().map(|w| w * w).sum::<f64>()
        };
        let mut f = objective(&theta);
        for iter in 0..100 {
            let mut g = vec![0.0; p];
            let mut h = vec![0.0; p * p];
            for i in 0..n {
                let row = &x[i * d..(i + 1) * d];
                let t: f64 = row.iter().zip(&theta).map(|(a, w)| a * w).sum::<f64>() + theta[d];
                let pr = sigmoid(t);
                let r = c * (pr - if y[i] { 1.0 } else { 0.0 });
                let wgt = c * pr * (1.0 - pr);
                let xi = |j: usize| if j < d { row[j] } else { 1.0 };
                for a in 0..p {
                    g[a] += r * xi(a);
                    for b in 0..=a {
                        h[a * p + b] += wgt * xi(a) * xi(b);
                    }
                }
            }
            for a in 0..d {
                g[a] += theta[a];
                h[a * p + a] += 1.0;
            }
            // A tiny ridge on the intercept keeps separable data solvable (the
            // unpenalised intercept's curvature can vanish); it changes no step
            // of a well-posed problem measurably.
            h[d * p + d] += 1e-12;
            for a in 0..p {
                for b in a + 1..p {
                    h[a * p + b] = h[b * p + a];
                }
            }
            let gnorm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
            if gnorm < 1e-10 * (1.0 + c * n as f64).sqrt() {
                return Ok(Self {
                    weights: theta[..d].to_vec(),
                    intercept: theta[d],
                    iterations: iter,
                });
            }
            let Some(step) = solve_spd(&h, &g) else {
                bail!("logistic regression: singular Hessian at iteration {iter}");
            };
            // Backtracking keeps Newton monotone far from the optimum.
            let mut alpha = 1.0;
            loop {
                let cand: Vec<f64> = theta
                    .iter()
                    .zip(&step)
                    .map(|(t, s)| t - alpha * s)
                    .collect();
                let fc = objective(&cand);
                if fc <= f - 1e-4 * alpha * g.iter().zip(&step).map(|(a, b)| a * b).sum::<f64>()
                    || alpha < 1e-10
                {
                    theta = cand;
                    f = fc;
                    break;
                }
                alpha *= 0.5;
            }
        }
        Ok(Self {
            weights: theta[..d].to_vec(),
            intercept: theta[d],
            iterations: 100,
        })
    }

    /// `x·w + b` for one row.
    pub fn decision(&self, row: &[f64]) -> f64 {
        row.iter()
            .zip(&self.weights)
            .map(|(a, w)| a * w)
            .sum::<f64>()
            + self.intercept
    }

    /// Class predictions (`decision > 0`, scikit-learn's rule) for `n` rows of `x`.
    pub fn predict(&self, x: &[f64]) -> Vec<bool> {
        let d = self.weights.len();
        x.chunks(d.max(1)).map(|r| self.decision(r) > 0.0).collect()
    }

    /// Fraction of rows of `x` whose prediction equals `y`.
    pub fn accuracy(&self, x: &[f64], y: &[bool]) -> f64 {
        let pred = self.predict(x);
        if y.is_empty() {
            return f64::NAN;
        }
        pred.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gradient_vanishes_at_the_solution() {
        // 1-d, overlapping classes: the optimum is interior and the first-order
        // condition C·Σ(σ(t)−y)·x + w = 0, C·Σ(σ(t)−y) = 0 must hold.
        let x = [0.0, 1.0, 2.0, 3.0, 1.5, 2.5];
        let y = [false, false, true, true, true, false];
        let m = LogisticModel::fit(&x, 1, &y, 1.0).unwrap();
        let (mut gw, mut gb) = (m.weights[0], 0.0);
        for (xi, yi) in x.iter().zip(y) {
            let r = sigmoid(m.decision(&[*xi])) - if yi { 1.0 } else { 0.0 };
            gw += r * xi;
            gb += r;
        }
        assert!(gw.abs() < 1e-9 && gb.abs() < 1e-9, "{gw} {gb}");
        assert!(m.weights[0] > 0.0);
    }

    #[test]
    fn shape_errors_are_reported() {
        let e = LogisticModel::fit(&[1.0, 2.0, 3.0], 2, &[true, false], 1.0).unwrap_err();
        assert!(
            e.to_string().contains("3 values for 2 rows of 2 inputs"),
            "{e}"
        );
    }
}
