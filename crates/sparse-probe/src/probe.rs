//! k-sparse probing (SAEBench's protocol, at the token level).
//!
//! For each one-vs-rest task (a coarse tag against all other labelled tokens):
//!
//! 1. **Balanced sets** (as SAEBench's `prepare_probe_data`): positives are the
//!    tokens with the tag (at most `max_per_class`, a seeded random subset);
//!    negatives take `⌈n_pos / m⌉` seeded random tokens from each of the `m`
//!    other classes present, then a random `n_pos` of that pool (if the pool is
//!    smaller, the positives are cut to its size). Chance accuracy is 0.5. Train
//!    and test sets are built this way from their own splits.
//! 2. **Selection** on the train set only: latents ranked by
//!    `|mean(z | pos) − mean(z | neg)|`, largest first (ties: lower index first);
//!    the top `k` are kept.
//! 3. **Probe**: L2 logistic regression with C = 1 on those `k` raw code values
//!    (scikit-learn's default, as SAEBench; [`crate::logreg`]), fitted on train,
//!    accuracy reported on test.

use crate::logreg::LogisticModel;
use crate::pos::Coarse;
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use sparse_core::metrics::bootstrap::MeanCi;
use sparse_core::Matrix;

/// Codes of many tokens, stored sparsely (encoders fire on few latents).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SparseCodes {
    /// Number of latents (columns).
    pub n_latents: usize,
    /// Per token: `(latent, value)` of its non-zero codes, latents ascending.
    pub rows: Vec<Vec<(u32, f32)>>,
}

impl SparseCodes {
    /// Empty, with `n_latents` columns.
    pub fn new(n_latents: usize) -> Self {
        Self {
            n_latents,
            rows: Vec::new(),
        }
    }

    /// Appends the rows of a dense code matrix (columns must equal `n_latents`).
    pub fn push_dense(&mut self, codes: &Matrix) -> Result<()> {
        if codes.cols() != self.n_latents {
            bail!(
                "codes have {} latents, expected {}",
                codes.cols(),
                self.n_latents
            );
        }
        for r in codes.rows_iter() {
            self.rows.push(
                r.iter()
                    .enumerate()
                    .filter(|(_, v)| **v != 0.0)
                    .map(|(j, v)| (j as u32, *v))
                    .collect(),
            );
        }
        Ok(())
    }

    /// The value of latent `j` at token `i` (0 where it is not stored).
    pub fn get(&self, i: usize, j: usize) -> f32 {
        let r = &self.rows[i];
        r.binary_search_by_key(&(j as u32), |e| e.0)
            .map_or(0.0, |p| r[p].1)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no token is stored.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A balanced one-vs-rest set: token indices and their binary labels.
#[derive(Clone, Debug, PartialEq)]
pub struct BalancedSet {
    /// Token indices into the codes.
    pub tokens: Vec<usize>,
    /// `true` for the task's tag.
    pub labels: Vec<bool>,
}

/// The balanced set for `target` among `labels` (see the module doc), seeded.
pub fn balanced_set(
    labels: &[Option<Coarse>],
    target: Coarse,
    max_per_class: usize,
    seed: u64,
) -> BalancedSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: std::collections::BTreeMap<Coarse, Vec<usize>> = Default::default();
    for (i, l) in labels.iter().enumerate() {
        if let Some(c) = l {
            by_class.entry(*c).or_default().push(i);
        }
    }
    let mut pos = by_class.remove(&target).unwrap_or_default();
    pos.shuffle(&mut rng);
    pos.truncate(max_per_class);
    let m = by_class.len();
    let mut pool = Vec::new();
    if m > 0 {
        let per = pos.len().div_ceil(m);
        for (_, mut idx) in by_class {
            idx.shuffle(&mut rng);
            pool.extend(idx.into_iter().take(per));
        }
    }
    pool.shuffle(&mut rng);
    pool.truncate(pos.len());
    pos.truncate(pool.len());
    let mut tokens = pos.clone();
    tokens.extend(&pool);
    let mut labels: Vec<bool> = (0..tokens.len()).map(|i| i < pos.len()).collect();
    // Shuffle pairs so nothing downstream can depend on the order.
    let mut order: Vec<usize> = (0..tokens.len()).collect();
    order.shuffle(&mut rng);
    tokens = order.iter().map(|&i| tokens[i]).collect();
    labels = order.iter().map(|&i| labels[i]).collect();
    BalancedSet { tokens, labels }
}

/// The `k` latents with the largest `|mean(z | pos) − mean(z | neg)|` over the
/// set's tokens (ties: lower index first), largest first.
pub fn top_k_mean_diff(codes: &SparseCodes, set: &BalancedSet, k: usize) -> Vec<usize> {
    let (np, nn) =
        set.labels.iter().fold(
            (0usize, 0usize),
            |(p, n), &l| {
                if l {
                    (p + 1, n)
                } else {
                    (p, n + 1)
                }
            },
        );
    let mut sp = vec![0.0f64; codes.n_latents];
    let mut sn = vec![0.0f64; codes.n_latents];
    for (&t, &l) in set.tokens.iter().zip(&set.labels) {
        let acc = if l { &mut sp } else { &mut sn };
        for &(j, v) in &codes.rows[t] {
            acc[j as usize] += v as f64;
        }
    }
    let diff: Vec<f64> = (0..codes.n_latents)
        .map(|j| (sp[j] / np.max(1) as f64 - sn[j] / nn.max(1) as f64).abs())
        .collect();
    let mut idx: Vec<usize> = (0..codes.n_latents).collect();
    idx.sort_by(|&a, &b| diff[b].total_cmp(&diff[a]).then(a.cmp(&b)));
    idx.truncate(k);
    idx
}

/// Dense `rows × latents.len()` inputs of the set's tokens on `latents`.
pub fn design(codes: &SparseCodes, set: &BalancedSet, latents: &[usize]) -> Vec<f64> {
    set.tokens
        .iter()
        .flat_map(|&t| latents.iter().map(move |&j| codes.get(t, j) as f64))
        .collect()
}

/// One probe's result.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    /// The task's tag.
    pub task: Coarse,
    /// Latents used.
    pub k: usize,
    /// The selected latents, best first.
    pub latents: Vec<usize>,
    /// Balanced train tokens (half positive).
    pub train_tokens: usize,
    /// Balanced test tokens (half positive).
    pub test_tokens: usize,
    /// Accuracy on the train set.
    pub train_accuracy: f64,
    /// Accuracy on the held-out test set (chance 0.5).
    pub test_accuracy: f64,
}

/// The standard normal's 97.5th percentile (two-sided 95 % intervals).
const Z95: f64 = 1.959_963_984_540_054;

/// Mean test accuracy over `results` (one per task, same `k`) with a 95 %
/// interval for the test-sample noise: each task's accuracy is a binomial
/// proportion over its `test_tokens`, so the mean of `T` tasks has variance
/// `Σ p_t(1 − p_t)/n_t / T²` (normal approximation; the train sample and the
/// latent selection are held fixed). `n` of the result counts tasks.
pub fn mean_accuracy_ci95(results: &[&ProbeResult]) -> MeanCi {
    let t = results.len();
    if t == 0 {
        return MeanCi::empty();
    }
    let mean = results.iter().map(|r| r.test_accuracy).sum::<f64>() / t as f64;
    let var = results
        .iter()
        .map(|r| r.test_accuracy * (1.0 - r.test_accuracy) / r.test_tokens.max(1) as f64)
        .sum::<f64>()
        / (t * t) as f64;
    let half = Z95 * var.sqrt();
    MeanCi {
        n: t,
        mean,
        lo: mean - half,
        hi: mean + half,
    }
}

/// Settings of [`probe_tasks`].
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Tasks (one-vs-rest tags).
    pub tasks: Vec<Coarse>,
    /// Latent counts (SAEBench: 1, 2, 5).
    pub ks: Vec<usize>,
    /// Cap on positives per set.
    pub max_per_class: usize,
    /// Logistic regression's C.
    pub c: f64,
    /// Seed of the balanced sampling.
    pub seed: u64,
}

/// Runs every task × k on train codes/labels and test codes/labels.
pub fn probe_tasks(
    train: (&SparseCodes, &[Option<Coarse>]),
    test: (&SparseCodes, &[Option<Coarse>]),
    opts: &ProbeOptions,
) -> Result<Vec<ProbeResult>> {
    for (what, (c, l)) in [("train", train), ("test", test)] {
        if c.len() != l.len() {
            bail!("{what}: {} code rows but {} labels", c.len(), l.len());
        }
    }
    let mut out = Vec::new();
    for (t, &task) in opts.tasks.iter().enumerate() {
        let seed = opts.seed.wrapping_add(2 * t as u64);
        let tr = balanced_set(train.1, task, opts.max_per_class, seed);
        let te = balanced_set(test.1, task, opts.max_per_class, seed + 1);
        if tr.tokens.is_empty() || te.tokens.is_empty() {
            bail!(
                "task {}: no balanced set (train {} tokens, test {}): too few labelled tokens",
                task.name(),
                tr.tokens.len(),
                te.tokens.len()
            );
        }
        for &k in &opts.ks {
            let latents = top_k_mean_diff(train.0, &tr, k);
            let xtr = design(train.0, &tr, &latents);
            let model = LogisticModel::fit(&xtr, latents.len(), &tr.labels, opts.c)?;
            let xte = design(test.0, &te, &latents);
            out.push(ProbeResult {
                task,
                k,
                train_tokens: tr.tokens.len(),
                test_tokens: te.tokens.len(),
                train_accuracy: model.accuracy(&xtr, &tr.labels),
                test_accuracy: model.accuracy(&xte, &te.labels),
                latents,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_interval_is_the_binomial_normal_approximation() {
        let r = |test_accuracy: f64, test_tokens: usize| ProbeResult {
            task: Coarse::Noun,
            k: 1,
            latents: vec![0],
            train_tokens: 10,
            train_accuracy: 1.0,
            test_tokens,
            test_accuracy,
        };
        // Mean 0.7; variance (0.8·0.2/100 + 0.6·0.4/200)/4 = 0.0007.
        let (a, b) = (r(0.8, 100), r(0.6, 200));
        let ci = mean_accuracy_ci95(&[&a, &b]);
        let half = 1.959_963_984_540_054 * 0.0007f64.sqrt();
        assert_eq!(ci.n, 2);
        assert!((ci.mean - 0.7).abs() < 1e-12);
        assert!((ci.lo - (0.7 - half)).abs() < 1e-12 && (ci.hi - (0.7 + half)).abs() < 1e-12);
        // A perfect probe has no test-sample noise; no tasks, no interval.
        let p = r(1.0, 50);
        assert_eq!(
            (mean_accuracy_ci95(&[&p]).lo, mean_accuracy_ci95(&[&p]).hi),
            (1.0, 1.0)
        );
        assert!(mean_accuracy_ci95(&[]).mean.is_nan());
    }

    #[test]
    fn balanced_sets_are_balanced_and_draw_from_every_other_class() {
        let mut labels = vec![Some(Coarse::Noun); 30];
        labels.extend(vec![Some(Coarse::Verb); 50]);
        labels.extend(vec![Some(Coarse::Det); 4]);
        labels.extend(vec![None; 10]);
        let s = balanced_set(&labels, Coarse::Noun, 20, 7);
        let pos = s.labels.iter().filter(|&&l| l).count();
        // ⌈20/2⌉ = 10 per other class: all 4 dets and 10 verbs → a pool of 14, so
        // the 20 positives are cut to 14 to stay balanced.
        assert_eq!((pos, s.tokens.len()), (14, 28));
        let dets = s.tokens.iter().filter(|&&t| (80..84).contains(&t)).count();
        assert_eq!(dets, 4);
        assert!(
            s.tokens.iter().all(|&t| t < 84),
            "unlabelled tokens never enter"
        );
        for (&t, &l) in s.tokens.iter().zip(&s.labels) {
            assert_eq!(l, labels[t] == Some(Coarse::Noun));
        }
        assert_eq!(s, balanced_set(&labels, Coarse::Noun, 20, 7), "seeded");
    }

    #[test]
    fn mean_difference_selection_matches_brute_force() {
        // Pseudo-random sparse codes; brute force over the dense matrix.
        let (n, l) = (200, 37);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        use rand::Rng;
        let dense = Matrix::from_fn(n, l, |_, _| {
            if rng.gen::<f32>() < 0.2 {
                rng.gen::<f32>() * 3.0
            } else {
                0.0
            }
        });
        let mut codes = SparseCodes::new(l);
        codes.push_dense(&dense).unwrap();
        let labels: Vec<Option<Coarse>> = (0..n)
            .map(|i| {
                Some(if i % 3 == 0 {
                    Coarse::Noun
                } else {
                    Coarse::Verb
                })
            })
            .collect();
        let set = balanced_set(&labels, Coarse::Noun, 1000, 1);
        let mut brute: Vec<(f64, usize)> = (0..l)
            .map(|j| {
                let mean = |want: bool| {
                    let v: Vec<f64> = set
                        .tokens
                        .iter()
                        .zip(&set.labels)
                        .filter(|(_, &lab)| lab == want)
                        .map(|(&t, _)| dense.get(t, j) as f64)
                        .collect();
                    v.iter().sum::<f64>() / v.len() as f64
                };
                ((mean(true) - mean(false)).abs(), j)
            })
            .collect();
        brute.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for k in [1, 2, 5, 10] {
            let want: Vec<usize> = brute[..k].iter().map(|e| e.1).collect();
            assert_eq!(top_k_mean_diff(&codes, &set, k), want, "k={k}");
        }
    }

    #[test]
    fn a_latent_that_marks_the_tag_is_found_and_probes_perfectly() {
        // Latent 3 fires exactly on nouns; the rest is noise shared by all classes.
        let n = 400;
        let labels: Vec<Option<Coarse>> = (0..n)
            .map(|i| Some([Coarse::Noun, Coarse::Verb, Coarse::Det][i % 3]))
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        use rand::Rng;
        let dense = Matrix::from_fn(n, 8, |i, j| {
            if j == 3 {
                if i % 3 == 0 {
                    1.0 + rng.gen::<f32>()
                } else {
                    0.0
                }
            } else {
                rng.gen::<f32>()
            }
        });
        let mut codes = SparseCodes::new(8);
        codes.push_dense(&dense).unwrap();
        let opts = ProbeOptions {
            tasks: vec![Coarse::Noun],
            ks: vec![1, 2],
            max_per_class: 1000,
            c: 1.0,
            seed: 0,
        };
        let r = probe_tasks((&codes, &labels), (&codes, &labels), &opts).unwrap();
        assert_eq!(r[0].latents, vec![3]);
        assert_eq!(r[0].test_accuracy, 1.0);
        assert_eq!(r[0].train_tokens, 2 * 134);
        assert_eq!(r[1].latents[0], 3);
    }
}
