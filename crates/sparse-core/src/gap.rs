//! The amortisation gap measured (see `docs/theory.md`): with the true
//! dictionary, the best amortised encoders of each class are fitted
//! **directly to the true codes** (supervised), and their held-out code error
//! is compared with per-sample inference (OMP; FISTA with a least-squares
//! refit on its support), next to the dictionary's mutual coherence and a
//! sampled estimate of its restricted isometry constant.

use crate::data::SyntheticConfig;
use crate::encoders::fista::{Fista, FistaConfig};
use crate::encoders::pursuit::Omp;
use crate::encoders::sae::{LayerGrads, LinearReluLayer};
use crate::encoders::Encoder;
use crate::error::{Error, Result};
use crate::linalg::{gram, matmul_into, solve_spd, Op};
use crate::matrix::Matrix;
use crate::metrics::code_mcc;
use crate::optim::AdamConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A code entry counts as active above this value when comparing supports
/// (true codes are half-normal with scale 1, so active entries are O(1)).
pub const SUPPORT_THRESHOLD: f32 = 1e-3;

/// What `gap` measures, and how hard it tries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GapConfig {
    /// Latents N.
    pub n_latents: usize,
    /// Dimension M.
    pub dim: usize,
    /// Active latents K.
    pub k: usize,
    /// Seed of data, initialisation and sampling.
    pub seed: u64,
    /// Training codes for the supervised encoders.
    pub n_train: usize,
    /// Held-out codes on which every error is measured.
    pub n_test: usize,
    /// Hidden widths of the supervised MLP encoders.
    pub mlp_widths: Vec<usize>,
    /// Full-batch Adam steps for each supervised encoder.
    pub steps: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// Random supports of size 2K sampled for the RIP estimate.
    pub rip_samples: usize,
}

impl GapConfig {
    /// Defaults for one `(N, M, K)` cell.
    pub fn new(n_latents: usize, dim: usize, k: usize, seed: u64) -> Self {
        GapConfig {
            n_latents,
            dim,
            k,
            seed,
            n_train: 4096,
            n_test: 1024,
            mlp_widths: vec![32, 128, 512, 1024],
            steps: 3000,
            lr: 1e-3,
            rip_samples: 2000,
        }
    }

    fn validate(&self) -> Result<()> {
        SyntheticConfig::paper(self.n_latents, self.dim, self.k, self.seed).validate()?;
        if self.n_train < 2 || self.n_test < 2 {
            return Err(Error::invalid(
                "samples",
                self.n_train.min(self.n_test),
                "need at least 2 train and 2 test samples",
            ));
        }
        if self.steps == 0 || !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid(
                "steps/lr",
                format!("{}/{}", self.steps, self.lr),
                "need steps ≥ 1 and a positive learning rate",
            ));
        }
        if self.mlp_widths.contains(&0) {
            return Err(Error::invalid("mlp width", 0, "widths must be at least 1"));
        }
        Ok(())
    }
}

/// Held-out code error of one encoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CodeError {
    /// Encoder name.
    pub encoder: String,
    /// Mean squared error over all test code entries.
    pub mse: f64,
    /// Largest absolute error over all test code entries.
    pub max_abs_error: f64,
    /// Code MCC (Pearson, optimal matching).
    pub mcc: f64,
    /// Fraction of test samples whose support (entries > [`SUPPORT_THRESHOLD`]) equals the true one.
    pub exact_support_rate: f64,
    /// Training MSE (supervised encoders only).
    pub train_mse: Option<f64>,
}

/// The result of one `(N, M, K)` cell.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GapReport {
    /// Configuration, seed included.
    pub config: GapConfig,
    /// `max_{i≠j} |⟨d_i, d_j⟩|` over unit-norm atoms.
    pub mutual_coherence: f64,
    /// Largest `|eigenvalue − 1|` of `D_T·D_Tᵀ` over sampled supports `|T| = 2K`:
    /// a lower estimate of the RIP constant `δ_2K` (the true δ is a max over all supports).
    pub rip_estimate: f64,
    /// Whether coherence guarantees unique recovery by OMP and ℓ1 (`μ < 1/(2K−1)`).
    pub coherence_guarantee: bool,
    /// Whether the sampled RIP estimate is below the ℓ1 recovery bound `√2 − 1`
    /// (necessary for the guarantee, not sufficient, since it is a lower estimate).
    pub rip_estimate_below_bound: bool,
    /// One entry per encoder: supervised linear-ReLU, MLPs, then per-sample inference.
    pub encoders: Vec<CodeError>,
}

impl GapReport {
    /// The entry for `encoder`, if present.
    pub fn get(&self, encoder: &str) -> Option<&CodeError> {
        self.encoders.iter().find(|e| e.encoder == encoder)
    }
}

/// `max_{i≠j} |⟨d_i, d_j⟩| / (‖d_i‖‖d_j‖)`.
pub fn mutual_coherence(dictionary: &Matrix) -> f64 {
    let g = gram(dictionary);
    let norms: Vec<f64> = (0..g.rows()).map(|i| (g.get(i, i) as f64).sqrt()).collect();
    let mut mu = 0.0f64;
    for i in 0..g.rows() {
        for j in 0..i {
            let denom = norms[i] * norms[j];
            if denom > 0.0 {
                mu = mu.max((g.get(i, j) as f64).abs() / denom);
            }
        }
    }
    mu
}

/// Sampled lower estimate of the restricted isometry constant of order `order`:
/// the largest `|λ − 1|` over the eigenvalues of `D_T D_Tᵀ` for `samples`
/// random supports `T` of size `order` (all supports when there are fewer).
pub fn rip_estimate(dictionary: &Matrix, order: usize, samples: usize, seed: u64) -> Result<f64> {
    let n = dictionary.rows();
    let order = order.min(n);
    let g = gram(dictionary);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut delta = 0.0f64;
    let mut sub = faer::Mat::<f64>::zeros(order, order);
    for _ in 0..samples.max(1) {
        let t = rand::seq::index::sample(&mut rng, n, order).into_vec();
        for (a, &i) in t.iter().enumerate() {
            for (b, &j) in t.iter().enumerate() {
                sub[(a, b)] = g.get(i, j) as f64;
            }
        }
        let eig = sub
            .self_adjoint_eigenvalues(faer::Side::Lower)
            .map_err(|e| Error::Numerical {
                what: "RIP estimate".into(),
                reason: format!("{e:?}"),
            })?;
        for l in eig {
            delta = delta.max((l - 1.0).abs());
        }
    }
    Ok(delta)
}

/// A stack of linear-ReLU layers fitted to codes (the last ReLU included: codes are ≥ 0).
struct SupervisedNet {
    layers: Vec<LinearReluLayer>,
}

impl SupervisedNet {
    /// PyTorch-style initialisation, with biases, for layer sizes `sizes`.
    fn new(sizes: &[usize], rng: &mut ChaCha8Rng, lr: f32) -> Self {
        let layers = sizes
            .windows(2)
            .map(|w| LinearReluLayer::init(rng, w[0], w[1], true, AdamConfig::with_lr(lr)))
            .collect();
        SupervisedNet { layers }
    }

    /// An MLP of width `hidden ≥ 2·dim` that computes exactly the same function
    /// as the fitted linear-ReLU `layer`, so that training can only start from
    /// the best linear-ReLU encoder: `ReLU(x) − ReLU(−x) = x` lets hidden units
    /// `[I, −I]` carry `x` through, the second layer applies `[W; −W]` and `b`,
    /// and the remaining hidden units start random with zero outgoing weights.
    fn containing(
        layer: &LinearReluLayer,
        hidden: usize,
        rng: &mut ChaCha8Rng,
        lr: f32,
    ) -> Result<Self> {
        let (dim, n_latents) = (layer.w.rows(), layer.w.cols());
        let random = LinearReluLayer::init(rng, dim, hidden, true, AdamConfig::with_lr(lr));
        let mut w1 = random.w.clone();
        let mut b1 = random.b.clone();
        let mut w2 = Matrix::zeros(hidden, n_latents);
        for j in 0..dim {
            for i in 0..dim {
                let v = if i == j { 1.0 } else { 0.0 };
                w1.set(i, j, v);
                w1.set(i, dim + j, -v);
            }
            b1[j] = 0.0;
            b1[dim + j] = 0.0;
            for c in 0..n_latents {
                w2.set(j, c, layer.w.get(j, c));
                w2.set(dim + j, c, -layer.w.get(j, c));
            }
        }
        let adam = AdamConfig::with_lr(lr);
        Ok(SupervisedNet {
            layers: vec![
                LinearReluLayer::from_weights(("W1", "b1"), w1, b1, (dim, hidden), true, adam)?,
                LinearReluLayer::from_weights(
                    ("W2", "b2"),
                    w2,
                    layer.b.clone(),
                    (hidden, n_latents),
                    true,
                    adam,
                )?,
            ],
        })
    }

    /// Activations of every layer (`acts[0]` is the input copy).
    fn forward(&self, x: &Matrix) -> Vec<Matrix> {
        let mut acts = vec![x.clone()];
        for layer in &self.layers {
            let mut h = Matrix::zeros(x.rows(), layer.w.cols());
            layer.forward(acts.last().expect("input"), &mut h);
            acts.push(h);
        }
        acts
    }

    fn predict(&self, x: &Matrix) -> Matrix {
        self.forward(x).pop().expect("at least one layer")
    }

    /// One full-batch Adam step on `mean((ẑ − z)²)`.
    fn train_step(&mut self, x: &Matrix, z: &Matrix) {
        let acts = self.forward(x);
        let out = acts.last().expect("output");
        let scale = 2.0 / (out.rows() * out.cols()) as f32;
        let mut delta = Matrix::zeros(out.rows(), out.cols());
        for ((d, &o), &t) in delta
            .as_mut_slice()
            .iter_mut()
            .zip(out.as_slice())
            .zip(z.as_slice())
        {
            *d = scale * (o - t);
        }
        for l in (0..self.layers.len()).rev() {
            let layer = &self.layers[l];
            let mut grads = LayerGrads::new(layer.w.rows(), layer.w.cols());
            layer.backward_params(&acts[l], &acts[l + 1], &mut delta, &mut grads);
            if l > 0 {
                let mut prev = Matrix::zeros(acts[l].rows(), acts[l].cols());
                layer.backward_input(&delta, &mut prev);
                delta = prev;
            }
            self.layers[l].step(&grads);
        }
    }

    /// Trains for `steps` full-batch steps; returns the final training MSE.
    fn fit(&mut self, x: &Matrix, z: &Matrix, steps: usize) -> f64 {
        for _ in 0..steps {
            self.train_step(x, z);
        }
        mse(&self.predict(x), z)
    }
}

/// Least-squares affine fit `z ≈ x·W + b` (with a tiny ridge so that
/// rank-deficient data, e.g. `N < M`, still has a solution); the
/// starting point of the supervised linear-ReLU encoder.
fn least_squares_affine(x: &Matrix, z: &Matrix) -> Result<(Matrix, Vec<f32>)> {
    let (n, m) = x.shape();
    let p = m + 1;
    let mut a = vec![0.0f64; p * p];
    let mut rhs = vec![0.0f64; p * z.cols()];
    for s in 0..n {
        let xs = x.row(s);
        let feat = |j: usize| if j < m { xs[j] as f64 } else { 1.0 };
        for i in 0..p {
            for j in 0..p {
                a[i * p + j] += feat(i) * feat(j);
            }
            for (c, &zc) in z.row(s).iter().enumerate() {
                rhs[c * p + i] += feat(i) * zc as f64;
            }
        }
    }
    let ridge = 1e-10 * (0..p).map(|i| a[i * p + i]).sum::<f64>() / p as f64;
    for i in 0..p {
        a[i * p + i] += ridge;
    }
    let mut w = Matrix::zeros(m, z.cols());
    let mut b = vec![0.0f32; z.cols()];
    for c in 0..z.cols() {
        let sol = solve_spd(&a, &rhs[c * p..(c + 1) * p]).ok_or_else(|| Error::Numerical {
            what: "least-squares encoder".into(),
            reason: "normal equations are singular".into(),
        })?;
        for (j, &v) in sol[..m].iter().enumerate() {
            w.set(j, c, v as f32);
        }
        b[c] = sol[m] as f32;
    }
    Ok((w, b))
}

fn mse(a: &Matrix, b: &Matrix) -> f64 {
    let s: f64 = a
        .as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(&p, &q)| ((p - q) as f64).powi(2))
        .sum();
    s / a.as_slice().len().max(1) as f64
}

/// Least-squares refit of each sample on the support of `codes` (entries > [`SUPPORT_THRESHOLD`]):
/// removes the lasso's shrinkage bias, so an exactly identified support gives the exact code.
pub fn refit_on_support(x: &Matrix, dictionary: &Matrix, codes: &Matrix) -> Matrix {
    let g = gram(dictionary);
    let mut c = Matrix::zeros(x.rows(), dictionary.rows());
    matmul_into(&mut c, x, Op::N, dictionary, Op::T);
    let mut out = Matrix::zeros(codes.rows(), codes.cols());
    for s in 0..codes.rows() {
        let support: Vec<usize> = (0..codes.cols())
            .filter(|&j| codes.get(s, j) > SUPPORT_THRESHOLD)
            .collect();
        let k = support.len();
        let a: Vec<f64> = support
            .iter()
            .flat_map(|&i| support.iter().map(move |&j| (i, j)))
            .map(|(i, j)| g.get(i, j) as f64)
            .collect();
        let rhs: Vec<f64> = support.iter().map(|&j| c.get(s, j) as f64).collect();
        match (k > 0).then(|| solve_spd(&a, &rhs)).flatten() {
            Some(sol) => support
                .iter()
                .zip(sol)
                .for_each(|(&j, v)| out.set(s, j, v as f32)),
            // An ill-posed support keeps the solver's codes.
            None => support.iter().for_each(|&j| out.set(s, j, codes.get(s, j))),
        }
    }
    out
}

fn code_error(
    name: &str,
    pred: &Matrix,
    truth: &Matrix,
    train_mse: Option<f64>,
) -> Result<CodeError> {
    let max_abs_error = pred
        .as_slice()
        .iter()
        .zip(truth.as_slice())
        .map(|(&p, &t)| ((p - t) as f64).abs())
        .fold(0.0, f64::max);
    let exact = (0..truth.rows())
        .filter(|&s| {
            pred.row(s)
                .iter()
                .zip(truth.row(s))
                .all(|(&p, &t)| (p > SUPPORT_THRESHOLD) == (t > 0.0))
        })
        .count();
    Ok(CodeError {
        encoder: name.to_string(),
        mse: mse(pred, truth),
        max_abs_error,
        mcc: code_mcc(truth, pred)?,
        exact_support_rate: exact as f64 / truth.rows() as f64,
        train_mse,
    })
}

/// Measures the gap for one `(N, M, K)` cell.
pub fn measure(config: &GapConfig) -> Result<GapReport> {
    config.validate()?;
    let data_config = SyntheticConfig::paper(config.n_latents, config.dim, config.k, config.seed);
    let data = data_config.generate(config.n_train, 2, config.n_test)?;
    let (d, train, test) = (&data.dictionary, &data.train, &data.test);
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(42));
    let mut encoders = Vec::new();

    // Linear-ReLU with bias: least squares, then Adam through the ReLU.
    let (w, b) = least_squares_affine(&train.x, &train.z)?;
    let layer = LinearReluLayer::from_weights(
        ("W", "b"),
        w,
        b,
        (config.dim, config.n_latents),
        true,
        AdamConfig::with_lr(config.lr),
    )?;
    let mut linear = SupervisedNet {
        layers: vec![layer],
    };
    let train_mse = linear.fit(&train.x, &train.z, config.steps);
    encoders.push(code_error(
        "linear-relu",
        &linear.predict(&test.x),
        &test.z,
        Some(train_mse),
    )?);

    for &h in &config.mlp_widths {
        let mut mlp = if h >= 2 * config.dim {
            SupervisedNet::containing(&linear.layers[0], h, &mut rng, config.lr)?
        } else {
            SupervisedNet::new(&[config.dim, h, config.n_latents], &mut rng, config.lr)
        };
        let train_mse = mlp.fit(&train.x, &train.z, config.steps);
        encoders.push(code_error(
            &format!("mlp-{h}"),
            &mlp.predict(&test.x),
            &test.z,
            Some(train_mse),
        )?);
    }

    let omp = Omp::new(config.k, None, false)?.encode(&test.x, d)?;
    encoders.push(code_error("omp", &omp.codes, &test.z, None)?);
    let fista = Fista::new(FistaConfig {
        lambda: 1e-3,
        max_iter: 20_000,
        tol: 1e-9,
        nonnegative: true,
        accelerated: true,
    })?
    .encode(&test.x, d)?;
    encoders.push(code_error("fista", &fista.codes, &test.z, None)?);
    encoders.push(code_error(
        "fista+refit",
        &refit_on_support(&test.x, d, &fista.codes),
        &test.z,
        None,
    )?);

    let mutual_coherence = mutual_coherence(d);
    let rip_estimate = rip_estimate(d, 2 * config.k, config.rip_samples, config.seed)?;
    Ok(GapReport {
        config: config.clone(),
        mutual_coherence,
        rip_estimate,
        coherence_guarantee: mutual_coherence < 1.0 / (2.0 * config.k as f64 - 1.0),
        rip_estimate_below_bound: rip_estimate < std::f64::consts::SQRT_2 - 1.0,
        encoders,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(n: usize, m: usize, k: usize) -> GapConfig {
        GapConfig {
            n_train: 2048,
            n_test: 512,
            mlp_widths: vec![64, 256],
            steps: 1500,
            rip_samples: 200,
            ..GapConfig::new(n, m, k, 3)
        }
    }

    #[test]
    fn compressed_case_has_a_gap_that_per_sample_inference_does_not() {
        // N/M = 1.5, K = 2: ℓ1 recovers the held-out codes of this dictionary (a true
        // entry below SUPPORT_THRESHOLD, as half-normal values can be, counts as a miss).
        let r = measure(&small(24, 16, 2)).unwrap();
        let lin = r.get("linear-relu").unwrap();
        assert!(
            lin.mse > 1e-3 && lin.exact_support_rate < 0.5,
            "linear-ReLU should not be exact: {lin:?}"
        );
        let refit = r.get("fista+refit").unwrap();
        assert!(
            refit.mse < 1e-8 && refit.exact_support_rate > 0.99,
            "{refit:?}"
        );
        // OMP is greedy: exact on most codes, and far closer than the amortised encoders.
        let omp = r.get("omp").unwrap();
        assert!(
            omp.exact_support_rate > 0.95 && omp.mse < lin.mse / 2.0,
            "{omp:?}"
        );
        let (narrow, wide) = (r.get("mlp-64").unwrap(), r.get("mlp-256").unwrap());
        assert!(
            wide.mse < narrow.mse,
            "wider MLPs shrink the gap: {narrow:?} vs {wide:?}"
        );
        assert!(wide.mse < lin.mse);
        assert!(wide.mse > 1e-4, "but do not close it: {wide:?}");
    }

    #[test]
    fn gap_closes_when_not_compressed() {
        let r = measure(&small(6, 8, 2)).unwrap();
        let lin = r.get("linear-relu").unwrap();
        assert!(
            lin.mse < 1e-8 && lin.max_abs_error < 1e-3 && lin.exact_support_rate == 1.0,
            "{lin:?}"
        );
        assert!(r.get("fista+refit").unwrap().mse < 1e-8);
    }

    #[test]
    fn coherence_and_rip_on_known_dictionaries() {
        let eye = Matrix::identity(4);
        assert_eq!(mutual_coherence(&eye), 0.0);
        assert!(rip_estimate(&eye, 2, 10, 0).unwrap() < 1e-12);
        // Two atoms at 60°: coherence 1/2, Gram eigenvalues 1 ± 1/2.
        let d = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.5, 0.75f32.sqrt()]).unwrap();
        assert!((mutual_coherence(&d) - 0.5).abs() < 1e-6);
        assert!((rip_estimate(&d, 2, 5, 0).unwrap() - 0.5).abs() < 1e-6);
        // More atoms than dimensions: some 2K-support is rank deficient, δ ≥ 1.
        let wide = SyntheticConfig::paper(12, 3, 2, 0).dictionary().unwrap();
        assert!(rip_estimate(&wide, 4, 200, 0).unwrap() >= 1.0 - 1e-6);
    }

    #[test]
    fn refit_recovers_exact_codes_from_a_shrunk_estimate() {
        let cfg = SyntheticConfig::paper(10, 8, 2, 1);
        let d = cfg.dictionary().unwrap();
        let s = cfg.split(&d, 50, 1).unwrap();
        let mut shrunk = s.z.clone();
        shrunk.as_mut_slice().iter_mut().for_each(|v| *v *= 0.8);
        let fixed = refit_on_support(&s.x, &d, &shrunk);
        assert!(fixed.max_abs_diff(&s.z) < 1e-4);
    }

    #[test]
    fn impossible_cells_are_rejected() {
        assert!(measure(&GapConfig::new(4, 8, 5, 0)).is_err());
        let mut c = GapConfig::new(4, 8, 2, 0);
        c.mlp_widths = vec![0];
        assert!(measure(&c).is_err());
    }
}
