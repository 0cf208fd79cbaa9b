//! A harder, more realistic synthetic data-generating process than the
//! paper's ([`crate::data`]): the SynthSAEBench generator of SAELens
//! (arXiv 2602.14687, `sae_lens/synthetic/`), re-implemented from its
//! definitions, plus compositional out-of-distribution (OOD) test codes
//! ("Stop Probing, Start Coding", arXiv 2603.28744).
//!
//! Every option is independent and seeded:
//! - [`FiringLaw`]: Zipfian firing probabilities, either SAELens' min–max
//!   rescaled power law or a power law scaled to a target mean L0;
//! - [`LowRankCorrelation`]: correlated firing through a low-rank Gaussian
//!   copula (a latent fires when its Gaussian exceeds `Φ⁻¹(1 − p)`);
//! - [`HierarchyConfig`]: forests of features where a child fires only with
//!   its parent and siblings are mutually exclusive;
//! - [`MagnitudeLaw`]: per-feature magnitude mean and standard deviation;
//! - [`Orthogonalization`]: superposition control (Adam on the off-diagonal
//!   Gram entries of the atoms);
//! - additive Gaussian noise, a decoder bias, and [`OodConfig`], which splits
//!   latents into groups that training codes never combine and OOD test codes
//!   always do.
//!
//! The random streams follow [`crate::data`]: the dictionary is stream 0, the
//! train/validation/test/OOD-test splits streams 1–4, and the model's own
//! parameters (correlation factor, magnitudes, groups) streams ≥ 16, so the
//! size of one split never changes another.

use crate::data::Split;
use crate::error::{Error, Result};
use crate::linalg::{gemm_into, Op};
use crate::matrix::Matrix;
use crate::optim::{Adam, AdamConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

/// Per-feature base firing probabilities, in decreasing order (feature 0 fires most).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FiringLaw {
    /// SAELens `zipfian_firing_probabilities` (`firing_probabilities.py`):
    /// `r^(−exponent)` for ranks `r = 1…N`, min–max rescaled onto `[min_prob, max_prob]`.
    Zipf {
        /// Power-law exponent (> 0).
        exponent: f64,
        /// Probability of the most frequent feature (≤ 1).
        max_prob: f64,
        /// Probability of the rarest feature (> 0, < `max_prob`).
        min_prob: f64,
    },
    /// `p_r = min(1, c · r^(−exponent))` with `c` chosen so that `Σ p_r = target_l0`.
    ZipfTargetL0 {
        /// Power-law exponent (≥ 0; 0 gives equal probabilities).
        exponent: f64,
        /// Expected number of active features per sample before the hierarchy.
        target_l0: f64,
    },
}

impl FiringLaw {
    /// The base probabilities of `n` features.
    pub fn probabilities(&self, n: usize) -> Result<Vec<f64>> {
        match *self {
            FiringLaw::Zipf {
                exponent,
                max_prob,
                min_prob,
            } => {
                if !(exponent.is_finite() && exponent > 0.0) {
                    return Err(Error::invalid("exponent", exponent, "must be positive"));
                }
                if !(min_prob > 0.0 && min_prob < max_prob && max_prob <= 1.0) {
                    return Err(Error::invalid(
                        "min_prob/max_prob",
                        format!("{min_prob}/{max_prob}"),
                        "need 0 < min_prob < max_prob ≤ 1",
                    ));
                }
                if n == 1 {
                    return Ok(vec![max_prob]);
                }
                let raw: Vec<f64> = (1..=n).map(|r| (r as f64).powf(-exponent)).collect();
                let (lo, hi) = (raw[n - 1], raw[0]);
                Ok(raw
                    .iter()
                    .map(|v| min_prob + (max_prob - min_prob) * (v - lo) / (hi - lo))
                    .collect())
            }
            FiringLaw::ZipfTargetL0 {
                exponent,
                target_l0,
            } => {
                if !(exponent.is_finite() && exponent >= 0.0) {
                    return Err(Error::invalid("exponent", exponent, "must be ≥ 0"));
                }
                if !(target_l0 > 0.0 && target_l0 < n as f64) {
                    return Err(Error::invalid(
                        "target_l0",
                        target_l0,
                        &format!("must be in (0, {n}) (the number of features)"),
                    ));
                }
                let raw: Vec<f64> = (1..=n).map(|r| (r as f64).powf(-exponent)).collect();
                let total = |c: f64| raw.iter().map(|v| (c * v).min(1.0)).sum::<f64>();
                // Σ min(1, c·r^−a) is continuous and increasing in c: bisect.
                let (mut lo, mut hi) = (0.0f64, 1.0f64);
                while total(hi) < target_l0 {
                    hi *= 2.0;
                }
                for _ in 0..200 {
                    let mid = 0.5 * (lo + hi);
                    if total(mid) < target_l0 {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                Ok(raw.iter().map(|v| (hi * v).min(1.0)).collect())
            }
        }
    }
}

/// A per-feature value (a magnitude mean or standard deviation), SAELens
/// `firing_magnitudes.py`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MagnitudeLaw {
    /// The same value for every feature.
    Constant {
        /// The value (≥ 0).
        value: f64,
    },
    /// Linear from `start` (feature 0, the most frequent) to `end` (the rarest).
    Linear {
        /// Value of feature 0.
        start: f64,
        /// Value of the last feature.
        end: f64,
    },
    /// `|N(mean, std²)|` drawn once per feature.
    FoldedNormal {
        /// Mean of the underlying normal.
        mean: f64,
        /// Standard deviation of the underlying normal (> 0).
        std: f64,
    },
}

impl MagnitudeLaw {
    fn validate(&self, name: &str) -> Result<()> {
        let ok = match *self {
            MagnitudeLaw::Constant { value } => value.is_finite() && value >= 0.0,
            MagnitudeLaw::Linear { start, end } => {
                start.is_finite() && end.is_finite() && start >= 0.0 && end >= 0.0
            }
            MagnitudeLaw::FoldedNormal { mean, std } => {
                mean.is_finite() && std.is_finite() && std > 0.0
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                name,
                format!("{self:?}"),
                "values must be finite and non-negative (std > 0)",
            ))
        }
    }

    fn values(&self, n: usize, rng: &mut impl Rng) -> Vec<f64> {
        match *self {
            MagnitudeLaw::Constant { value } => vec![value; n],
            MagnitudeLaw::Linear { start, end } => (0..n)
                .map(|i| {
                    if n == 1 {
                        start
                    } else {
                        start + (end - start) * i as f64 / (n - 1) as f64
                    }
                })
                .collect(),
            MagnitudeLaw::FoldedNormal { mean, std } => (0..n)
                .map(|_| (mean + std * rng.sample::<f64, _>(StandardNormal)).abs())
                .collect(),
        }
    }
}

/// Low-rank Gaussian copula, SAELens `generate_random_low_rank_correlation_matrix`
/// (`correlation.py`): the latent Gaussians have correlation `F·Fᵀ + diag(1 − ‖F_i‖²)`
/// with `F (N × rank)` i.i.d. `N(0, scale²)`, rescaled if needed so that every
/// diagonal term stays ≥ 0.01.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LowRankCorrelation {
    /// Rank of `F` (≥ 1).
    pub rank: usize,
    /// Standard deviation of the entries of `F` (≥ 0).
    pub scale: f64,
}

/// Feature forests, SAELens `HierarchyConfig` / `generate_hierarchy`
/// (`hierarchy/hierarchy.py`) and the modifier of `hierarchy/modifier.py`.
///
/// Trees are built breadth-first from feature 0: `roots` roots, each node
/// down to depth `depth` gets `branching` children; every parent's children
/// are mutually exclusive when `mutually_exclusive` (SAELens' portion 1.0).
/// A child is switched off when its parent is off; if several siblings of an
/// active parent fire, one chosen uniformly at random survives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HierarchyConfig {
    /// Number of trees.
    pub roots: usize,
    /// Children per non-leaf node (≥ 1).
    pub branching: usize,
    /// Depth of the trees (roots are depth 0; ≥ 1).
    pub depth: usize,
    /// Siblings are mutually exclusive.
    pub mutually_exclusive: bool,
    /// Raise the sampling probabilities of children so that their effective
    /// firing rates approximate the base law
    /// (`Hierarchy.compute_probability_correction_factors`).
    pub compensate_probabilities: bool,
    /// Multiply a child's magnitude by `parent value / parent mean magnitude`.
    pub scale_children_by_parent: bool,
}

/// Superposition control, SAELens `orthogonalize_embeddings`
/// (`feature_dictionary.py`): Adam on the unit atoms minimising
/// `Σ_{i≠j} (⟨d_i, d_j⟩ − target_cos)² + N Σ_i (‖d_i‖² − 1)²`, then renormalising.
/// More steps (or a larger learning rate) give more orthogonal atoms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Orthogonalization {
    /// Adam steps.
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// Target pairwise cosine.
    pub target_cos: f32,
}

/// Compositional OOD split: latents are partitioned into `groups` (whole
/// hierarchy trees stay together; other latents are assigned at random).
/// Training, validation and in-distribution test codes only use latents of
/// one group (drawn uniformly per sample); every OOD test code uses latents
/// of at least two groups, so it combines latents never seen together in training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OodConfig {
    /// Number of groups (≥ 2).
    pub groups: usize,
}

/// Everything that defines a realistic synthetic data set; with the seed it fixes every number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RealisticConfig {
    /// True features `N`.
    pub n_latents: usize,
    /// Observed dimension `M`.
    pub dim: usize,
    /// Base firing probabilities.
    pub firing: FiringLaw,
    /// Correlated firing (independent Bernoulli when absent).
    pub correlation: Option<LowRankCorrelation>,
    /// Feature hierarchy.
    pub hierarchy: Option<HierarchyConfig>,
    /// Mean magnitude of an active feature.
    pub magnitude_mean: MagnitudeLaw,
    /// Standard deviation of the magnitude of an active feature (values are clipped at 0).
    pub magnitude_std: MagnitudeLaw,
    /// Superposition control of the atoms (plain random unit atoms when absent).
    pub orthogonalization: Option<Orthogonalization>,
    /// Norm of a random decoder bias added to every sample (0 = none).
    pub bias_norm: f32,
    /// Standard deviation of additive Gaussian noise on `X`.
    pub noise_std: f32,
    /// Compositional OOD split.
    pub ood: Option<OodConfig>,
    /// Seed of every random stream.
    pub seed: u64,
}

/// Names of the presets accepted by [`RealisticConfig::preset`].
pub const PRESETS: [&str; 3] = ["synthsaebench-16k", "synthsaebench-laptop", "ood-laptop"];

impl RealisticConfig {
    /// SynthSAEBench-16k as published (SAELens `docs/synth_sae_bench.md`):
    /// 16,384 features in d=768, Zipf(0.5; 0.4…5e-4), 128 roots × 4 × depth 3
    /// with mutually exclusive children, compensated probabilities and
    /// children scaled by parents, rank-25 correlation of scale 0.1,
    /// orthogonalisation 100 steps at lr 3e-4, mean magnitudes linear 5→4,
    /// standard deviations folded-normal(0.5, 0.5), bias norm 1 (the
    /// `SyntheticModelConfig` default), seed 42.
    pub fn synthsaebench_16k() -> Self {
        RealisticConfig {
            n_latents: 16_384,
            dim: 768,
            firing: FiringLaw::Zipf {
                exponent: 0.5,
                max_prob: 0.4,
                min_prob: 5e-4,
            },
            correlation: Some(LowRankCorrelation {
                rank: 25,
                scale: 0.1,
            }),
            hierarchy: Some(HierarchyConfig {
                roots: 128,
                branching: 4,
                depth: 3,
                mutually_exclusive: true,
                compensate_probabilities: true,
                scale_children_by_parent: true,
            }),
            magnitude_mean: MagnitudeLaw::Linear {
                start: 5.0,
                end: 4.0,
            },
            magnitude_std: MagnitudeLaw::FoldedNormal {
                mean: 0.5,
                std: 0.5,
            },
            orthogonalization: Some(Orthogonalization {
                steps: 100,
                lr: 3e-4,
                target_cos: 0.0,
            }),
            bias_norm: 1.0,
            noise_std: 0.0,
            ood: None,
            seed: 42,
        }
    }

    /// SynthSAEBench-16k scaled to a laptop: 2,048 features in d=128 (16×
    /// superposition, 21× in the original), 16 roots × 4 × depth 3 (1,360
    /// hierarchical features, the same two-thirds share), Zipf exponent 0.5
    /// from 0.4 down to 2e-3 (true L0 ≈ 5, the original's L0/d ratio), the
    /// same correlation, magnitudes and orthogonalisation, no bias.
    pub fn synthsaebench_laptop() -> Self {
        RealisticConfig {
            n_latents: 2048,
            dim: 128,
            firing: FiringLaw::Zipf {
                exponent: 0.5,
                max_prob: 0.4,
                min_prob: 2e-3,
            },
            hierarchy: Some(HierarchyConfig {
                roots: 16,
                ..Self::synthsaebench_16k().hierarchy.expect("set above")
            }),
            bias_norm: 0.0,
            ..Self::synthsaebench_16k()
        }
    }

    /// The compositional-OOD preset: 512 features in d=64, Zipf exponent 0.5
    /// scaled to L0 = 8 before the split (≈ 4 after it), 8 roots × 4 × depth 2,
    /// SynthSAEBench correlation and magnitudes, two latent groups.
    pub fn ood_laptop() -> Self {
        RealisticConfig {
            n_latents: 512,
            dim: 64,
            firing: FiringLaw::ZipfTargetL0 {
                exponent: 0.5,
                target_l0: 8.0,
            },
            hierarchy: Some(HierarchyConfig {
                roots: 8,
                depth: 2,
                ..Self::synthsaebench_16k().hierarchy.expect("set above")
            }),
            bias_norm: 0.0,
            ood: Some(OodConfig { groups: 2 }),
            ..Self::synthsaebench_16k()
        }
    }

    /// The preset called `name` (one of [`PRESETS`]).
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "synthsaebench-16k" => Ok(Self::synthsaebench_16k()),
            "synthsaebench-laptop" => Ok(Self::synthsaebench_laptop()),
            "ood-laptop" => Ok(Self::ood_laptop()),
            _ => Err(Error::invalid(
                "preset",
                name,
                &format!("unknown; expected one of {}", PRESETS.join(", ")),
            )),
        }
    }

    /// Checks every option; the error names the offending parameter.
    pub fn validate(&self) -> Result<()> {
        if self.n_latents == 0 {
            return Err(Error::invalid("latents", 0, "must be at least 1"));
        }
        if self.dim == 0 {
            return Err(Error::invalid("dim", 0, "must be at least 1"));
        }
        self.firing.probabilities(self.n_latents)?;
        if let Some(c) = &self.correlation {
            if c.rank == 0 {
                return Err(Error::invalid("correlation.rank", 0, "must be at least 1"));
            }
            if !(c.scale.is_finite() && c.scale >= 0.0) {
                return Err(Error::invalid(
                    "correlation.scale",
                    c.scale,
                    "must be finite and ≥ 0",
                ));
            }
        }
        if let Some(h) = &self.hierarchy {
            if h.roots == 0 || h.branching == 0 || h.depth == 0 {
                return Err(Error::invalid(
                    "hierarchy",
                    format!("{}×{}×{}", h.roots, h.branching, h.depth),
                    "roots, branching and depth must be ≥ 1",
                ));
            }
        }
        self.magnitude_mean.validate("magnitude_mean")?;
        self.magnitude_std.validate("magnitude_std")?;
        if let Some(o) = &self.orthogonalization {
            if !(o.lr.is_finite() && o.lr > 0.0 && o.target_cos.abs() < 1.0) {
                return Err(Error::invalid(
                    "orthogonalization",
                    format!("lr {} target_cos {}", o.lr, o.target_cos),
                    "lr must be positive and |target_cos| < 1",
                ));
            }
        }
        for (name, v) in [("bias_norm", self.bias_norm), ("noise", self.noise_std)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(name, v, "must be finite and non-negative"));
            }
        }
        if let Some(o) = &self.ood {
            if o.groups < 2 || o.groups > self.n_latents {
                return Err(Error::invalid(
                    "ood.groups",
                    o.groups,
                    &format!(
                        "must be between 2 and the number of latents ({})",
                        self.n_latents
                    ),
                ));
            }
        }
        Ok(())
    }

    fn rng(&self, stream: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream);
        rng
    }
}

/// One hierarchy node's relations (indices are feature indices).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    /// `parent[i]`: the parent of feature `i`, if it is a non-root tree node.
    pub parent: Vec<Option<usize>>,
    /// `children[i]`: the children of feature `i`, in index order.
    pub children: Vec<Vec<usize>>,
    /// Root of the tree holding feature `i`, if any.
    pub root: Vec<Option<usize>>,
    /// Whether the children of each node are mutually exclusive.
    pub exclusive: Vec<bool>,
    /// Number of features in the forest (they are features `0..size`).
    pub size: usize,
}

impl Tree {
    /// The forest of `config` over `n` features: breadth-first numbering, as SAELens.
    fn build(n: usize, config: &HierarchyConfig) -> Tree {
        let mut parent = vec![None; n];
        let mut children = vec![Vec::new(); n];
        let mut root = vec![None; n];
        let mut next = 0usize;
        let mut level: Vec<usize> = Vec::new();
        while next < n && level.len() < config.roots {
            root[next] = Some(next);
            level.push(next);
            next += 1;
        }
        for _depth in 0..config.depth {
            let mut below = Vec::new();
            for &p in &level {
                for _ in 0..config.branching {
                    if next >= n {
                        break;
                    }
                    parent[next] = Some(p);
                    root[next] = root[p];
                    children[p].push(next);
                    below.push(next);
                    next += 1;
                }
            }
            level = below;
        }
        let exclusive = children
            .iter()
            .map(|c| config.mutually_exclusive && c.len() >= 2)
            .collect();
        Tree {
            parent,
            children,
            root,
            exclusive,
            size: next,
        }
    }
}

/// A built generator: the true dictionary and every per-feature parameter.
#[derive(Clone, Debug)]
pub struct RealisticModel {
    /// The configuration it was built from.
    pub config: RealisticConfig,
    /// `D (n_latents × dim)`, unit-norm atoms.
    pub dictionary: Matrix,
    /// Base firing probabilities (the target law).
    pub base_probabilities: Vec<f64>,
    /// Probabilities actually sampled before the hierarchy (compensated, ≤ 1).
    pub sampling_probabilities: Vec<f64>,
    /// Copula thresholds `Φ⁻¹(1 − q_i)`.
    thresholds: Vec<f64>,
    /// Correlation factor `F (N × rank)` row-major, and `sqrt(1 − ‖F_i‖²)`.
    factor: Option<(Vec<f64>, usize, Vec<f64>)>,
    /// The hierarchy, if any.
    pub tree: Option<Tree>,
    /// Mean magnitude per feature.
    pub magnitude_mean: Vec<f64>,
    /// Magnitude standard deviation per feature.
    pub magnitude_std: Vec<f64>,
    /// Decoder bias added to every sample.
    pub bias: Vec<f32>,
    /// OOD group of each feature (all 0 without an OOD split).
    pub group: Vec<usize>,
}

/// A generated realistic data set.
#[derive(Clone, Debug)]
pub struct RealisticData {
    /// `D (n_latents × dim)`.
    pub dictionary: Matrix,
    /// Training split.
    pub train: Split,
    /// Validation split (same law as training).
    pub val: Split,
    /// In-distribution test split.
    pub test: Split,
    /// Compositional OOD test split (when the config has an OOD split).
    pub test_ood: Option<Split>,
}

/// `Φ⁻¹(p)` for `p ∈ (0, 1)`: Acklam's rational approximation refined by one
/// Halley step against [`normal_cdf`] (so `Φ(Φ⁻¹(p))` matches `p` to ≈ 1e-7
/// relative). Out-of-range `p` maps to ±∞.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    let x = if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    };
    // One Halley step on Φ(x) − p.
    let e = normal_cdf(x) - p;
    let u = e * (2.0 * std::f64::consts::PI).sqrt() * (x * x / 2.0).exp();
    x - u / (1.0 + x * u / 2.0)
}

/// `Φ(x)`, the standard normal CDF, via Numerical Recipes' Chebyshev fit of
/// `erfc` (fractional error < 1.2e-7, ample for firing thresholds).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * erfc(-x / std::f64::consts::SQRT_2)
}

fn erfc(x: f64) -> f64 {
    // Numerical Recipes' Chebyshev fit, fractional error < 1.2e-7.
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// Adam on the atoms (rows) of `d` toward pairwise cosine `target`, SAELens
/// `orthogonalize_embeddings`; rows are renormalised at the end. The Gram
/// matrix is formed in row chunks so memory stays `O(chunk · N)`.
pub fn orthogonalize(d: &mut Matrix, config: &Orthogonalization) {
    let (n, m) = d.shape();
    d.normalize_rows();
    if config.steps == 0 || n < 2 {
        return;
    }
    let mut adam = Adam::new(n * m, AdamConfig::with_lr(config.lr));
    let chunk = 1024.min(n);
    let mut grad = Matrix::zeros(n, m);
    let mut g = Matrix::zeros(chunk, n);
    for _ in 0..config.steps {
        for start in (0..n).step_by(chunk) {
            let rows = chunk.min(n - start);
            let block = d.select_rows(start..start + rows);
            let mut gb = if rows == chunk {
                std::mem::replace(&mut g, Matrix::zeros(0, 0))
            } else {
                Matrix::zeros(rows, n)
            };
            gemm_into(
                gb.view_mut(),
                false,
                block.view(),
                Op::N,
                d.view(),
                Op::T,
                1.0,
            );
            // dL/dG, halved: off-diagonal (g − t), diagonal N (g − 1); dL/dD = 4·(that)·D.
            for r in 0..rows {
                let row = gb.row_mut(r);
                for (c, v) in row.iter_mut().enumerate() {
                    *v = if c == start + r {
                        n as f32 * (*v - 1.0)
                    } else {
                        *v - config.target_cos
                    };
                }
            }
            let mut out = Matrix::zeros(rows, m);
            gemm_into(
                out.view_mut(),
                false,
                gb.view(),
                Op::N,
                d.view(),
                Op::N,
                4.0,
            );
            for r in 0..rows {
                grad.row_mut(start + r).copy_from_slice(out.row(r));
            }
            if rows == chunk {
                g = gb;
            }
        }
        adam.step(d.as_mut_slice(), grad.as_slice());
    }
    d.normalize_rows();
}

impl RealisticModel {
    /// Builds the dictionary and every per-feature parameter of `config`.
    pub fn new(config: &RealisticConfig) -> Result<Self> {
        config.validate()?;
        let (n, dim) = (config.n_latents, config.dim);
        let mut rng = config.rng(0);
        let mut dictionary = Matrix::from_fn(n, dim, |_, _| rng.sample::<f32, _>(StandardNormal));
        dictionary.normalize_rows();
        if let Some(o) = &config.orthogonalization {
            orthogonalize(&mut dictionary, o);
        }
        let base = config.firing.probabilities(n)?;
        let tree = config.hierarchy.as_ref().map(|h| Tree::build(n, h));
        let mut sampling = base.clone();
        if let (Some(t), Some(h)) = (&tree, &config.hierarchy) {
            if h.compensate_probabilities {
                // `compute_probability_correction_factors`: 1/p(parent) for a
                // child, times (1 + Σ other siblings' p / p(parent)) under exclusion.
                for (i, s) in sampling.iter_mut().enumerate() {
                    if let Some(p) = t.parent[i] {
                        let pp = base[p];
                        let mut factor = 1.0 / pp;
                        if t.exclusive[p] {
                            let others: f64 = t.children[p]
                                .iter()
                                .filter(|&&c| c != i)
                                .map(|&c| base[c])
                                .sum();
                            factor *= 1.0 + others / pp;
                        }
                        *s = (*s * factor).min(1.0);
                    }
                }
            }
        }
        let thresholds = sampling
            .iter()
            .map(|&q| inverse_normal_cdf(1.0 - q))
            .collect();
        let factor = config.correlation.as_ref().map(|c| {
            let mut r = config.rng(16);
            let mut f: Vec<f64> = (0..n * c.rank)
                .map(|_| c.scale * r.sample::<f64, _>(StandardNormal))
                .collect();
            let sq = |f: &[f64]| -> Vec<f64> {
                f.chunks_exact(c.rank)
                    .map(|row| row.iter().map(|v| v * v).sum())
                    .collect()
            };
            let max = sq(&f).into_iter().fold(0.0, f64::max);
            // SAELens keeps every diagonal term ≥ 0.01 by shrinking F uniformly.
            if max > 0.99 {
                let s = (0.99 / max).sqrt();
                f.iter_mut().for_each(|v| *v *= s);
            }
            let diag = sq(&f).into_iter().map(|v| (1.0 - v).sqrt()).collect();
            (f, c.rank, diag)
        });
        let mut r = config.rng(17);
        let magnitude_mean = config.magnitude_mean.values(n, &mut r);
        let mut r = config.rng(18);
        let magnitude_std = config.magnitude_std.values(n, &mut r);
        let mut r = config.rng(19);
        let mut bias: Vec<f32> = (0..dim)
            .map(|_| r.sample::<f32, _>(StandardNormal))
            .collect();
        let norm = bias
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        bias.iter_mut().for_each(|v| *v *= config.bias_norm / norm);
        let mut group = vec![0usize; n];
        if let Some(o) = &config.ood {
            let mut r = config.rng(20);
            for (i, g) in group.iter_mut().enumerate() {
                *g = match tree.as_ref().and_then(|t| t.root[i]) {
                    // Whole trees stay in one group (roots are dealt round-robin).
                    Some(root) => root % o.groups,
                    None => r.gen_range(0..o.groups),
                };
            }
        }
        Ok(RealisticModel {
            config: config.clone(),
            dictionary,
            base_probabilities: base,
            sampling_probabilities: sampling,
            thresholds,
            factor,
            tree,
            magnitude_mean,
            magnitude_std,
            bias,
            group,
        })
    }

    /// One unrestricted code row into `row` (zeroed by the caller).
    fn sample_code(&self, rng: &mut ChaCha8Rng, row: &mut [f32], scratch: &mut Vec<f64>) {
        let n = row.len();
        // Which features fire: Bernoulli, or the Gaussian copula.
        match &self.factor {
            None => {
                for (i, v) in row.iter_mut().enumerate() {
                    if rng.gen::<f64>() < self.sampling_probabilities[i] {
                        *v = 1.0;
                    }
                }
            }
            Some((f, rank, diag)) => {
                scratch.clear();
                scratch.extend((0..*rank).map(|_| rng.sample::<f64, _>(StandardNormal)));
                for i in 0..n {
                    let shared: f64 = f[i * rank..(i + 1) * rank]
                        .iter()
                        .zip(scratch.iter())
                        .map(|(a, b)| a * b)
                        .sum();
                    let g = shared + diag[i] * rng.sample::<f64, _>(StandardNormal);
                    if g > self.thresholds[i] {
                        row[i] = 1.0;
                    }
                }
            }
        }
        // Magnitudes: mean + std·N(0,1), clipped at 0 (SAELens' ReLU).
        for (i, v) in row.iter_mut().enumerate() {
            if *v > 0.0 {
                let m = self.magnitude_mean[i]
                    + self.magnitude_std[i] * rng.sample::<f64, _>(StandardNormal);
                *v = m.max(0.0) as f32;
            }
        }
        // Hierarchy: parents are numbered before their children, so visiting
        // parents in index order finalises each node before its children.
        if let (Some(t), Some(h)) = (&self.tree, &self.config.hierarchy) {
            for p in 0..t.size {
                let kids = &t.children[p];
                if kids.is_empty() {
                    continue;
                }
                let pv = row[p];
                if pv <= 0.0 {
                    for &c in kids {
                        row[c] = 0.0;
                    }
                    continue;
                }
                if h.scale_children_by_parent && self.magnitude_mean[p] > 0.0 {
                    let s = pv as f64 / self.magnitude_mean[p];
                    for &c in kids {
                        row[c] = (row[c] as f64 * s) as f32;
                    }
                }
                if t.exclusive[p] {
                    let active = kids.iter().filter(|&&c| row[c] > 0.0).count();
                    if active > 1 {
                        let winner = rng.gen_range(0..active);
                        let mut j = 0;
                        for &c in kids {
                            if row[c] > 0.0 {
                                if j != winner {
                                    row[c] = 0.0;
                                }
                                j += 1;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Number of distinct OOD groups among the active latents of `row`.
    fn groups_in(&self, row: &[f32], seen: &mut [bool]) -> usize {
        seen.iter_mut().for_each(|s| *s = false);
        let mut count = 0;
        for (i, &v) in row.iter().enumerate() {
            if v > 0.0 && !seen[self.group[i]] {
                seen[self.group[i]] = true;
                count += 1;
            }
        }
        count
    }

    /// `n` codes from stream `stream`; `ood` selects the OOD law (codes spanning ≥ 2 groups).
    pub fn codes(&self, n: usize, stream: u64, ood: bool) -> Result<Matrix> {
        let nl = self.config.n_latents;
        let groups = self.config.ood.as_ref().map_or(1, |o| o.groups);
        if ood && groups < 2 {
            return Err(Error::invalid(
                "ood",
                "none",
                "an OOD test split needs an OOD config (ood.groups ≥ 2)",
            ));
        }
        let mut rng = self.config.rng(stream);
        let mut z = Matrix::zeros(n, nl);
        let mut scratch = Vec::new();
        let mut seen = vec![false; groups];
        // Rejection sampling for OOD codes; bounded so a law that almost never
        // spans two groups fails clearly instead of looping.
        let max_tries = 1000 * n.max(1);
        let mut tries = 0;
        for i in 0..n {
            let row = z.row_mut(i);
            loop {
                row.iter_mut().for_each(|v| *v = 0.0);
                self.sample_code(&mut rng, row, &mut scratch);
                if !ood {
                    if groups >= 2 {
                        let keep = rng.gen_range(0..groups);
                        for (j, v) in row.iter_mut().enumerate() {
                            if self.group[j] != keep {
                                *v = 0.0;
                            }
                        }
                    }
                    break;
                }
                tries += 1;
                if self.groups_in(row, &mut seen) >= 2 {
                    break;
                }
                if tries > max_tries {
                    return Err(Error::invalid(
                        "ood",
                        groups,
                        "fewer than 1 in 1000 codes span two groups; raise the L0 or use fewer groups",
                    ));
                }
            }
        }
        Ok(z)
    }

    /// A split of `n` samples from stream `stream` (≥ 1): `X = Z·D + bias + noise`.
    pub fn split(&self, n: usize, stream: u64, ood: bool) -> Result<Split> {
        if stream == 0 {
            return Err(Error::invalid("stream", 0, "stream 0 is the dictionary"));
        }
        let z = self.codes(n, stream, ood)?;
        let mut x = Matrix::from_fn(n, self.config.dim, |_, j| self.bias[j]);
        gemm_into(
            x.view_mut(),
            true,
            z.view(),
            Op::N,
            self.dictionary.view(),
            Op::N,
            1.0,
        );
        if self.config.noise_std > 0.0 {
            // Noise has its own stream so noiseless and noisy sets share codes.
            let mut rng = self.config.rng(stream + (1 << 32));
            for v in x.as_mut_slice() {
                *v += self.config.noise_std * rng.sample::<f32, _>(StandardNormal);
            }
        }
        Ok(Split { x, z })
    }

    /// Train / validation / in-distribution test splits (streams 1–3) and,
    /// with an OOD config, an OOD test split of `n_test` samples (stream 4).
    pub fn generate(&self, n_train: usize, n_val: usize, n_test: usize) -> Result<RealisticData> {
        Ok(RealisticData {
            dictionary: self.dictionary.clone(),
            train: self.split(n_train, 1, false)?,
            val: self.split(n_val, 2, false)?,
            test: self.split(n_test, 3, false)?,
            test_ood: match self.config.ood {
                Some(_) => Some(self.split(n_test, 4, true)?),
                None => None,
            },
        })
    }

    /// The latent correlation the copula imposes between features `i` and `j`
    /// (`(F·Fᵀ)_ij`; 0 without correlation).
    pub fn latent_correlation(&self, i: usize, j: usize) -> f64 {
        match &self.factor {
            None => 0.0,
            Some((f, rank, diag)) => {
                if i == j {
                    return 1.0;
                }
                let _ = diag;
                f[i * rank..(i + 1) * rank]
                    .iter()
                    .zip(&f[j * rank..(j + 1) * rank])
                    .map(|(a, b)| a * b)
                    .sum()
            }
        }
    }
}

#[cfg(test)]
mod tests;
