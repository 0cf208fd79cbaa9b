//! Adam (Kingma & Ba), with PyTorch's defaults and update rule, applied to one
//! flat parameter tensor at a time.

use crate::linalg::vectorised;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Adam hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator offset.
    pub eps: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

impl AdamConfig {
    /// The default betas and eps with learning rate `lr`.
    pub fn with_lr(lr: f32) -> Self {
        AdamConfig {
            lr,
            ..Default::default()
        }
    }
}

/// FLOPs of one Adam update per parameter: two moment updates (3 + 4),
/// bias corrections folded into the step size, sqrt, add, divide, multiply-subtract (5).
pub const ADAM_FLOPS_PER_PARAM: f64 = 12.0;

/// Adam state for one parameter tensor of fixed length.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Adam {
    /// Hyperparameters.
    pub config: AdamConfig,
    step: u64,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    /// Fresh state for a tensor of `len` parameters.
    pub fn new(len: usize, config: AdamConfig) -> Self {
        Adam {
            config,
            step: 0,
            m: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// Number of updates taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// Clears the moments of parameter `i` (e.g. when a latent is resampled).
    pub fn reset_entry(&mut self, i: usize) {
        self.m[i] = 0.0;
        self.v[i] = 0.0;
    }

    /// One update `params -= lr · m̂ / (sqrt(v̂) + eps)`; `grads` has the length of `params`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32]) {
        assert_eq!(params.len(), self.m.len(), "Adam: parameter length changed");
        assert_eq!(grads.len(), self.m.len(), "Adam: gradient length differs");
        self.step += 1;
        let AdamConfig {
            lr,
            beta1,
            beta2,
            eps,
        } = self.config;
        let t = self.step as i32;
        let bc1 = 1.0 - (beta1 as f64).powi(t);
        let bc2 = 1.0 - (beta2 as f64).powi(t);
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        // `move`: scalars captured by reference would be reloaded every element.
        let update = move |(((p, g), m), v): ParamChunks<'_>| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                *m = flush_subnormal(beta1 * *m + (1.0 - beta1) * g);
                *v = flush_subnormal(beta2 * *v + (1.0 - beta2) * g * g);
                *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
            }
        };
        // Elementwise, so splitting over threads changes no number.
        if params.len() >= PARALLEL_ADAM {
            params
                .par_chunks_mut(ADAM_CHUNK)
                .zip(grads.par_chunks(ADAM_CHUNK))
                .zip(self.m.par_chunks_mut(ADAM_CHUNK))
                .zip(self.v.par_chunks_mut(ADAM_CHUNK))
                .for_each(|chunks| vectorised(|| update(chunks)));
        } else {
            vectorised(|| update((((params, grads), &mut self.m[..]), &mut self.v[..])));
        }
    }
}

/// One piece of an Adam update: `((parameters, gradients), m), v`.
type ParamChunks<'a> = (((&'a mut [f32], &'a [f32]), &'a mut [f32]), &'a mut [f32]);

/// Parameters from which [`Adam::step`] splits the update over the threads.
const PARALLEL_ADAM: usize = 1 << 18;

/// Parameters per parallel piece of [`Adam::step`].
const ADAM_CHUNK: usize = 1 << 15;

/// `v`, or 0 when `v` is subnormal. Moments that decay into the subnormal
/// range (parameters whose gradient has vanished) would otherwise make every
/// later update ~30× slower; next to `eps` they change nothing.
#[inline]
pub fn flush_subnormal(v: f32) -> f32 {
    if v.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_step_moves_each_parameter_by_lr_against_the_gradient_sign() {
        // With bias correction, Adam's first step is lr·g/(|g| + eps).
        let mut p = vec![1.0f32, -2.0, 0.5];
        let mut adam = Adam::new(3, AdamConfig::with_lr(0.1));
        adam.step(&mut p, &[3.0, -0.01, 0.0]);
        assert!((p[0] - 0.9).abs() < 1e-6);
        assert!((p[1] + 1.9).abs() < 1e-4);
        assert_eq!(p[2], 0.5);
    }

    #[test]
    fn vanishing_gradients_leave_no_subnormal_state() {
        let mut p = vec![1.0f32];
        let mut adam = Adam::new(1, AdamConfig::default());
        adam.step(&mut p, &[1e-20]);
        for _ in 0..2000 {
            adam.step(&mut p, &[0.0]);
        }
        assert!(
            adam.m[0] == 0.0 && adam.v[0] == 0.0,
            "{:e} {:e}",
            adam.m[0],
            adam.v[0]
        );
        assert_eq!(flush_subnormal(1e-39), 0.0);
        assert_eq!(flush_subnormal(-2e-38), -2e-38);
    }

    #[test]
    fn minimises_a_quadratic() {
        let mut p = vec![5.0f32, -3.0];
        let mut adam = Adam::new(2, AdamConfig::with_lr(0.05));
        for _ in 0..2000 {
            let g = [2.0 * (p[0] - 1.0), 2.0 * (p[1] + 2.0)];
            adam.step(&mut p, &g);
        }
        assert!(
            (p[0] - 1.0).abs() < 1e-3 && (p[1] + 2.0).abs() < 1e-3,
            "{p:?}"
        );
    }
}
