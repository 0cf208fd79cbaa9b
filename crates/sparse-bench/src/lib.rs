//! Benchmarks of sparse-infer's hot paths against the implementations a user
//! would otherwise reach for — PyTorch on CPU, numpy, scikit-learn — run side
//! by side, on the same data, in the same invocation.
//!
//! `sparse-infer bench` ([`harness::run`]) writes every case's inputs once as
//! `.npy`, then runs interleaved rounds: in each round every implementation of
//! every case runs in **its own child process** (ours: `sparse-infer
//! bench-kernel`, [`kernels::run_kernel`]; the references: `bench/reference.py`),
//! which loads the inputs, warms up, times `reps` repetitions and reports the
//! times and its peak resident memory as one JSON line. The report takes the
//! median of each round, then the median over rounds, and the ratio
//! reference / ours (> 1: we are faster).
//!
//! The cases ([`Case`]) are the issue's: SAE training steps (ReLU-L1 and
//! TopK) at batch 4096 × d 768 × 16,384 latents, FISTA (100 iterations at the
//! same shape), OMP against scikit-learn's `orthogonal_mp_gram`, lasso against
//! scikit-learn's `sparse_encode(algorithm="lasso_cd")`, a large GEMM against
//! the machine's measured FMA peak ([`peak`]), and the known-dictionary study
//! against a PyTorch port of the paper's procedure.

pub mod harness;
pub mod kernels;
pub mod peak;

use serde::{Deserialize, Serialize};

/// One benchmark case and its sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "case")]
pub enum Case {
    /// `C = A·B` with `A (m × k)`, `B (k × n)`.
    Gemm {
        /// Rows of `A`.
        m: usize,
        /// Inner dimension.
        k: usize,
        /// Columns of `B`.
        n: usize,
    },
    /// One training step (forward, backward, Adam, unit-norm atoms) of a
    /// ReLU-L1 SAE with encoder and decoder biases on a batch `X (batch × dim)`,
    /// every implementation from the same parameters (written with the inputs):
    /// at initialisation (`l0` absent: tied random weights, about half the
    /// codes positive), or in a trained-like state with about `l0` positive
    /// codes per sample (the data's true dictionary, its transpose as encoder,
    /// the encoder bias at minus the batch's `l0·batch`-th largest pre-activation).
    SaeStep {
        /// Samples per step.
        batch: usize,
        /// Input dimension.
        dim: usize,
        /// Latents.
        latents: usize,
        /// Mean positive codes per sample of the trained-like state; absent: initialisation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        l0: Option<usize>,
    },
    /// One TopK SAE training step (ours decodes sparsely; the references decode densely).
    TopkStep {
        /// Samples per step.
        batch: usize,
        /// Input dimension.
        dim: usize,
        /// Latents.
        latents: usize,
        /// Active latents per sample.
        k: usize,
    },
    /// `iterations` of non-negative FISTA (λ = 0.1), no early stop.
    Fista {
        /// Samples.
        batch: usize,
        /// Input dimension.
        dim: usize,
        /// Latents.
        latents: usize,
        /// Iterations.
        iterations: usize,
    },
    /// Signed OMP with `k` atoms per sample, products `D·Dᵀ`, `X·Dᵀ` included in the time.
    Omp {
        /// Samples.
        batch: usize,
        /// Input dimension.
        dim: usize,
        /// Latents.
        latents: usize,
        /// Atoms per sample.
        k: usize,
    },
    /// Signed lasso `½‖x − zD‖² + λ‖z‖₁` per sample, solved to the solvers' default tolerances.
    Lasso {
        /// Samples.
        batch: usize,
        /// Input dimension.
        dim: usize,
        /// Latents.
        latents: usize,
        /// L1 weight.
        lambda: f32,
    },
    /// The known-dictionary study at the paper's size (N=16, M=8, K=3), one
    /// seed: SAE and MLP-32 trained with the frozen true dictionary for
    /// `steps` full-batch Adam steps, then exp-Adam per-sample inference.
    KnownDictionary {
        /// Training steps of each amortised encoder.
        steps: usize,
        /// Adam steps of the per-sample inference.
        inference_steps: usize,
    },
}

impl Case {
    /// Short stable name (file names, tables).
    pub fn name(&self) -> String {
        match self {
            Case::Gemm { m, k, n } => format!("gemm-{m}x{k}x{n}"),
            Case::SaeStep {
                batch,
                dim,
                latents,
                l0: None,
            } => format!("sae-step-{batch}x{dim}x{latents}"),
            Case::SaeStep {
                batch,
                dim,
                latents,
                l0: Some(l0),
            } => format!("sae-step-{batch}x{dim}x{latents}-l0-{l0}"),
            Case::TopkStep {
                batch,
                dim,
                latents,
                k,
            } => format!("topk-step-{batch}x{dim}x{latents}-k{k}"),
            Case::Fista {
                batch,
                dim,
                latents,
                iterations,
            } => format!("fista-{batch}x{dim}x{latents}-{iterations}it"),
            Case::Omp {
                batch,
                dim,
                latents,
                k,
            } => format!("omp-{batch}x{dim}x{latents}-k{k}"),
            Case::Lasso {
                batch,
                dim,
                latents,
                ..
            } => format!("lasso-{batch}x{dim}x{latents}"),
            Case::KnownDictionary { steps, .. } => format!("known-dictionary-{steps}steps"),
        }
    }

    /// The reference implementations that run this case (besides ours).
    pub fn references(&self) -> &'static [&'static str] {
        match self {
            Case::Gemm { .. } | Case::Fista { .. } => &["numpy", "torch"],
            Case::SaeStep { .. } | Case::TopkStep { .. } | Case::KnownDictionary { .. } => {
                &["torch"]
            }
            Case::Omp { .. } | Case::Lasso { .. } => &["sklearn"],
        }
    }

    /// Timed repetitions per process for this case: at most `requested`, and
    /// one for the cases that run for a minute or more (FISTA's 100
    /// iterations, the study), whose single runs already average thousands of steps.
    pub fn reps(&self, requested: usize) -> usize {
        match self {
            Case::Fista { .. } | Case::KnownDictionary { .. } => 1,
            _ => requested,
        }
    }

    /// Floating-point operations of one repetition, where a single count
    /// describes every implementation (GEMM; FISTA counted dense, `4·B·d·N`
    /// per iteration, so ours — which forms `Y·D` sparse once the codes are
    /// — reports a dense-equivalent rate); `None` otherwise.
    pub fn flops(&self) -> Option<f64> {
        match *self {
            Case::Gemm { m, k, n } => Some(2.0 * (m * k * n) as f64),
            Case::Fista {
                batch,
                dim,
                latents,
                iterations,
            } => Some(iterations as f64 * 4.0 * (batch * dim * latents) as f64),
            _ => None,
        }
    }

    /// The memory a tight implementation needs (bytes, `f32`): inputs,
    /// parameters, gradients and Adam moments, and one batch of activations
    /// and codes; the peak resident memory is reported against it.
    pub fn analytic_footprint(&self) -> Option<f64> {
        let f = 4.0;
        Some(match *self {
            Case::Gemm { m, k, n } => f * (m * k + k * n + m * n) as f64,
            Case::SaeStep {
                batch,
                dim,
                latents,
                ..
            } => {
                let params = (2 * dim * latents + latents + dim) as f64;
                // parameters, gradients, two Adam moments; X, X̂; Z and ∂Z.
                f * (4.0 * params + (2 * batch * dim) as f64 + (2 * batch * latents) as f64)
            }
            Case::TopkStep {
                batch,
                dim,
                latents,
                k,
            } => {
                let params = (2 * dim * latents + latents + dim) as f64;
                // as the SAE, but the dense pre-activations once and k codes per sample.
                f * (4.0 * params
                    + (2 * batch * dim) as f64
                    + (batch * latents) as f64
                    + 2.0 * (batch * k) as f64)
            }
            Case::Fista {
                batch,
                dim,
                latents,
                ..
            } => {
                // D, X, the residual; Z, its momentum copy and the gradient.
                f * ((latents * dim) as f64
                    + (2 * batch * dim) as f64
                    + 3.0 * (batch * latents) as f64)
            }
            _ => return None,
        })
    }
}

/// The default case list: the sizes the issue names.
pub fn default_cases() -> Vec<Case> {
    vec![
        Case::Gemm {
            m: 1024,
            k: 768,
            n: 16384,
        },
        Case::SaeStep {
            batch: 4096,
            dim: 768,
            latents: 16384,
            l0: None,
        },
        Case::SaeStep {
            batch: 4096,
            dim: 768,
            latents: 16384,
            l0: Some(64),
        },
        Case::TopkStep {
            batch: 4096,
            dim: 768,
            latents: 16384,
            k: 32,
        },
        Case::Fista {
            batch: 4096,
            dim: 768,
            latents: 16384,
            iterations: 100,
        },
        Case::Omp {
            batch: 1024,
            dim: 768,
            latents: 4096,
            k: 32,
        },
        Case::Lasso {
            batch: 256,
            dim: 768,
            latents: 4096,
            lambda: 0.1,
        },
        Case::KnownDictionary {
            steps: 10_000,
            inference_steps: 2_000,
        },
    ]
}

/// Small versions of every case: seconds in all (a smoke test of the harness).
pub fn quick_cases() -> Vec<Case> {
    vec![
        Case::Gemm {
            m: 128,
            k: 64,
            n: 256,
        },
        Case::SaeStep {
            batch: 128,
            dim: 32,
            latents: 128,
            l0: None,
        },
        // 65,536 codes, ~4 per sample: large and sparse enough for our sparse path.
        Case::SaeStep {
            batch: 256,
            dim: 32,
            latents: 256,
            l0: Some(4),
        },
        Case::TopkStep {
            batch: 128,
            dim: 32,
            latents: 128,
            k: 8,
        },
        Case::Fista {
            batch: 64,
            dim: 32,
            latents: 128,
            iterations: 20,
        },
        Case::Omp {
            batch: 64,
            dim: 32,
            latents: 128,
            k: 4,
        },
        Case::Lasso {
            batch: 32,
            dim: 32,
            latents: 128,
            lambda: 0.1,
        },
        Case::KnownDictionary {
            steps: 200,
            inference_steps: 100,
        },
    ]
}

/// What one implementation's child process reports for one case in one round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    /// Case name ([`Case::name`]).
    pub case: String,
    /// Implementation ("sparse-infer", "numpy", "torch", "sklearn").
    pub implementation: String,
    /// Wall time of each timed repetition, seconds.
    pub times_s: Vec<f64>,
    /// Peak resident memory of the process, bytes (`None` where unknown).
    pub peak_rss_bytes: Option<f64>,
    /// A number that lets results be compared across implementations
    /// (objective value, loss, MCC), where the case has one.
    pub check: Option<f64>,
    /// Library versions and settings the process ran with.
    pub info: serde_json::Value,
}

/// Median of `v` (`NaN` when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_lengths() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn case_names_are_distinct_and_round_trip_through_json() {
        let cases = default_cases();
        let mut names: Vec<String> = cases.iter().map(Case::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cases.len());
        for c in cases.iter().chain(&quick_cases()) {
            let back: Case = serde_json::from_str(&serde_json::to_string(c).unwrap()).unwrap();
            assert_eq!(&back, c);
        }
    }
}
