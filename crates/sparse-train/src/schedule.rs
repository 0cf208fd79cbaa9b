//! Learning-rate and sparsity-coefficient schedules, as SAELens
//! (`sae_lens/training/optim.py`, `constant` scheduler): a linear warm-up
//! over the first `lr_warm_up_steps` steps, constant, then a linear decay to
//! zero over the last `lr_decay_steps`; the L1 coefficient ramps linearly
//! over the first `l1_warm_up_steps`.

/// The learning rate of step `t` (0-based) of a run of `total` steps:
///
/// ```text
/// warm-up   t < W:          lr · (t + 1) / W                 (1/W at t = 0, lr at t = W − 1)
/// decay     t ≥ total − D:  lr · (1 − (t − (total − D)) / D)  (lr, …, lr/D)
/// ```
///
/// (SAELens: `LinearLR(start_factor = 1/W, end_factor = 1, total_iters = W − 1)`,
/// then `LinearLR(1, 0, total_iters = D)` for the last `D` steps; the two are
/// multiplied where they overlap.)
pub fn lr_at(lr: f32, warm_up: u64, decay: u64, total: u64, t: u64) -> f32 {
    let mut f = 1.0f64;
    if warm_up > 0 && t < warm_up {
        f *= (t + 1) as f64 / warm_up as f64;
    }
    if decay > 0 {
        let start = total.saturating_sub(decay);
        if t >= start {
            f *= 1.0 - (t - start) as f64 / decay as f64;
        }
    }
    (lr as f64 * f) as f32
}

/// The sparsity coefficient at step `t`: `coefficient · min(1, (t + 1) / W)`
/// (SAELens `l1_warm_up_steps`).
pub fn warm_up_at(coefficient: f32, warm_up: u64, t: u64) -> f32 {
    if warm_up == 0 {
        return coefficient;
    }
    (coefficient as f64 * ((t + 1) as f64 / warm_up as f64).min(1.0)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_and_decay_match_saelens() {
        // W = 4, D = 5, total 20.
        let lr = |t| lr_at(1.0, 4, 5, 20, t);
        assert_eq!([lr(0), lr(1), lr(2), lr(3)], [0.25, 0.5, 0.75, 1.0]);
        assert_eq!(lr(10), 1.0);
        assert_eq!(lr(14), 1.0);
        assert_eq!([lr(15), lr(16), lr(19)], [1.0, 0.8, 0.2]);
        assert_eq!(lr_at(3e-4, 0, 0, 10, 7), 3e-4);
        assert_eq!(warm_up_at(2.0, 4, 0), 0.5);
        assert_eq!(warm_up_at(2.0, 4, 3), 2.0);
        assert_eq!(warm_up_at(2.0, 4, 100), 2.0);
        assert_eq!(warm_up_at(2.0, 0, 0), 2.0);
    }
}
