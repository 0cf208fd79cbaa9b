//! Per-latent statistics accumulated in one streaming pass, in memory bounded
//! by the number of latents recorded (not by the tokens scanned).
//!
//! For every recorded latent, [`LatentStats`] keeps:
//!
//! - the number of tokens where it fires (activation `> 0`; every encoder of
//!   the workspace — ReLU, TopK, non-negative FISTA — gives non-negative
//!   codes) and its largest activation;
//! - a min-heap of the `top_k` contexts with the largest maximum activation
//!   (ties: the earlier context wins), each with its sparse activations;
//! - a reservoir (Algorithm R, seeded ChaCha8 shared by all latents and
//!   driven in scan order, so a run is reproducible) of `reservoir` contexts
//!   drawn uniformly from those where it fires; quantile samples are drawn
//!   from equal-count bins of the reservoir sorted by maximum, so when the
//!   reservoir holds every firing context the bins are exact quantiles;
//! - a [`DoublingHistogram`] of its non-zero activations.

use crate::record::Histogram;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Equal-width histogram of positive values with bins fixed by a **doubling
/// scheme**: the bin width is a power of two `w`, and when a value reaches
/// `bins·w` neighbouring bins are merged in pairs and `w` doubles. Bin `i`
/// holds the values in `[i·w, (i+1)·w)`; dividing by a power of two is exact
/// in floating point, so after any number of merges the counts are exactly
/// those of a direct count with the final width (tested). The final width is
/// the smallest power of two (≥ the initial `2^-20`) with every value below
/// `bins·w`, so the values use more than half of the bins (trailing empty
/// bins are dropped by [`DoublingHistogram::finish`]). One pass, no first
/// pass for the range, and memory `bins` counts.
#[derive(Clone, Debug)]
pub struct DoublingHistogram {
    width: f32,
    counts: Vec<u64>,
}

impl DoublingHistogram {
    /// An empty histogram of `bins` bins (even, at least 2).
    pub fn new(bins: usize) -> Self {
        let bins = bins.max(2).next_multiple_of(2);
        DoublingHistogram {
            width: (2.0f32).powi(-20),
            counts: vec![0; bins],
        }
    }

    /// Counts `v` if it is positive and finite.
    pub fn add(&mut self, v: f32) {
        if !(v > 0.0 && v.is_finite()) {
            return;
        }
        let n = self.counts.len();
        while v >= self.width * n as f32 {
            for i in 0..n / 2 {
                self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
            }
            self.counts[n / 2..].iter_mut().for_each(|c| *c = 0);
            self.width *= 2.0;
        }
        let i = ((v / self.width) as usize).min(n - 1);
        self.counts[i] += 1;
    }

    /// The bins up to the last non-empty one (one bin of the initial width when empty).
    pub fn finish(&self) -> Histogram {
        let used = self
            .counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(1, |i| i + 1);
        Histogram {
            edges: (0..=used).map(|i| i as f32 * self.width).collect(),
            counts: self.counts[..used].to_vec(),
        }
    }
}

/// One context as remembered for a latent: its maximum and the positions
/// where the latent fires.
#[derive(Clone, Debug)]
pub struct ContextHit {
    /// Global context index in the store.
    pub context: u64,
    /// Largest activation in the context.
    pub max: f32,
    /// Position (row within the context) of the first largest activation.
    pub max_position: usize,
    /// `(position, activation)` of every firing position, ascending.
    pub nonzero: Vec<(u32, f32)>,
}

impl ContextHit {
    /// The dense activations over `len` positions.
    pub fn dense(&self, len: usize) -> Vec<f32> {
        let mut v = vec![0.0; len];
        for &(p, a) in &self.nonzero {
            v[p as usize] = a;
        }
        v
    }

    /// Larger maximum first; on equal maxima the earlier context first.
    fn rank(&self, other: &Self) -> Ordering {
        self.max
            .total_cmp(&other.max)
            .then(other.context.cmp(&self.context))
    }
}

struct Ranked(ContextHit);
impl PartialEq for Ranked {
    fn eq(&self, o: &Self) -> bool {
        self.0.rank(&o.0) == Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ranked {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.rank(&o.0)
    }
}

/// Sizes of what is kept per latent.
#[derive(Clone, Debug)]
pub struct StatsOptions {
    /// Top-activating contexts kept.
    pub top_k: usize,
    /// Quantile bins of the firing contexts' maxima.
    pub quantiles: usize,
    /// Samples shown per quantile bin.
    pub per_quantile: usize,
    /// Reservoir of firing contexts the quantile samples are drawn from.
    pub reservoir: usize,
    /// Histogram bins (even).
    pub hist_bins: usize,
    /// Seed of the reservoir and sample draws.
    pub seed: u64,
}

impl Default for StatsOptions {
    fn default() -> Self {
        StatsOptions {
            top_k: 10,
            quantiles: 5,
            per_quantile: 3,
            reservoir: 200,
            hist_bins: 40,
            seed: 0,
        }
    }
}

/// What one latent accumulated.
pub struct LatentAcc {
    /// Tokens where it fired.
    pub firing: u64,
    /// Largest activation seen (0 if it never fired).
    pub max: f32,
    /// Firing contexts seen (the reservoir's population).
    pub firing_contexts: u64,
    top: BinaryHeap<Reverse<Ranked>>,
    reservoir: Vec<ContextHit>,
    hist: DoublingHistogram,
}

/// The finished statistics of one latent.
#[derive(Clone, Debug)]
pub struct LatentSummary {
    /// Latent index.
    pub latent: usize,
    /// Tokens where it fired.
    pub firing: u64,
    /// Largest activation.
    pub max: f32,
    /// Top contexts, largest maximum first.
    pub top: Vec<ContextHit>,
    /// Quantile samples, lowest bin first; each bin's samples by descending maximum.
    pub quantiles: Vec<Vec<ContextHit>>,
    /// Histogram of the non-zero activations.
    pub histogram: Histogram,
}

/// The streaming accumulator for a set of latents.
pub struct LatentStats {
    latents: Vec<usize>,
    opts: StatsOptions,
    rng: ChaCha8Rng,
    /// Tokens (rows) scanned.
    pub tokens_seen: u64,
    acc: Vec<LatentAcc>,
}

impl LatentStats {
    /// An accumulator for `latents` (indices into the code vectors).
    pub fn new(latents: Vec<usize>, opts: StatsOptions) -> Self {
        let acc = latents
            .iter()
            .map(|_| LatentAcc {
                firing: 0,
                max: 0.0,
                firing_contexts: 0,
                top: BinaryHeap::new(),
                reservoir: Vec::new(),
                hist: DoublingHistogram::new(opts.hist_bins),
            })
            .collect();
        LatentStats {
            latents,
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            opts,
            tokens_seen: 0,
            acc,
        }
    }

    /// The recorded latents.
    pub fn latents(&self) -> &[usize] {
        &self.latents
    }

    /// Adds one context: `codes` are its rows (positions), each a full code
    /// vector (`row_len` values), concatenated row-major.
    pub fn observe(&mut self, context: u64, codes: &[f32], row_len: usize) {
        let rows = codes.len() / row_len.max(1);
        self.tokens_seen += rows as u64;
        for (slot, &j) in self.latents.iter().enumerate() {
            let mut nonzero = Vec::new();
            let (mut max, mut max_position) = (0.0f32, 0usize);
            for p in 0..rows {
                let v = codes[p * row_len + j];
                if v > 0.0 {
                    nonzero.push((p as u32, v));
                    if v > max {
                        max = v;
                        max_position = p;
                    }
                }
            }
            if nonzero.is_empty() {
                continue;
            }
            let a = &mut self.acc[slot];
            a.firing += nonzero.len() as u64;
            a.max = a.max.max(max);
            nonzero.iter().for_each(|&(_, v)| a.hist.add(v));
            let hit = ContextHit {
                context,
                max,
                max_position,
                nonzero,
            };
            // Reservoir (Algorithm R) over firing contexts.
            a.firing_contexts += 1;
            if a.reservoir.len() < self.opts.reservoir {
                a.reservoir.push(hit.clone());
            } else if self.opts.reservoir > 0 {
                let r = self.rng.gen_range(0..a.firing_contexts);
                if (r as usize) < self.opts.reservoir {
                    a.reservoir[r as usize] = hit.clone();
                }
            }
            // Top-k: a min-heap of the k best.
            if self.opts.top_k == 0 {
                continue;
            }
            if a.top.len() < self.opts.top_k {
                a.top.push(Reverse(Ranked(hit)));
            } else if let Some(Reverse(worst)) = a.top.peek() {
                if hit.rank(&worst.0) == Ordering::Greater {
                    a.top.pop();
                    a.top.push(Reverse(Ranked(hit)));
                }
            }
        }
    }

    /// The per-latent summaries, in the order of [`LatentStats::latents`].
    pub fn finish(mut self) -> Vec<LatentSummary> {
        let opts = self.opts.clone();
        let mut out = Vec::with_capacity(self.latents.len());
        for (slot, a) in self.acc.into_iter().enumerate() {
            let mut top: Vec<ContextHit> = a.top.into_iter().map(|Reverse(r)| r.0).collect();
            top.sort_by(|x, y| y.rank(x));
            let mut res = a.reservoir;
            res.sort_by(|x, y| x.max.total_cmp(&y.max).then(x.context.cmp(&y.context)));
            let mut quantiles = Vec::new();
            if !res.is_empty() {
                let q = opts.quantiles.max(1);
                for b in 0..q {
                    let (lo, hi) = (b * res.len() / q, (b + 1) * res.len() / q);
                    let n = opts.per_quantile.min(hi - lo);
                    let mut picked: Vec<usize> =
                        sample(&mut self.rng, hi - lo, n).into_iter().collect();
                    picked.sort_unstable_by(|x, y| y.cmp(x));
                    quantiles.push(picked.into_iter().map(|i| res[lo + i].clone()).collect());
                }
            }
            out.push(LatentSummary {
                latent: self.latents[slot],
                firing: a.firing,
                max: a.max,
                top,
                quantiles,
                histogram: a.hist.finish(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sparse random codes: `contexts × rows × n` with about 10% non-zero
    /// values drawn from several magnitudes (some repeated, to exercise ties).
    fn codes(contexts: usize, rows: usize, n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..contexts)
            .map(|_| {
                (0..rows * n)
                    .map(|_| {
                        if rng.gen::<f32>() < 0.1 {
                            match rng.gen_range(0..4) {
                                0 => 1.5,
                                1 => rng.gen::<f32>() * 0.01,
                                _ => rng.gen::<f32>() * 7.0,
                            }
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn statistics_equal_a_brute_force_computation() {
        let (contexts, rows, n) = (60, 9, 12);
        let data = codes(contexts, rows, n, 7);
        let latents = vec![0, 3, 5, 11];
        let opts = StatsOptions {
            top_k: 7,
            quantiles: 4,
            per_quantile: 2,
            reservoir: 1000,
            hist_bins: 16,
            seed: 1,
        };
        let mut st = LatentStats::new(latents.clone(), opts.clone());
        for (c, z) in data.iter().enumerate() {
            st.observe(100 + c as u64, z, n);
        }
        assert_eq!(st.tokens_seen, (contexts * rows) as u64);
        let out = st.finish();
        for (s, &j) in out.iter().zip(&latents) {
            assert_eq!(s.latent, j);
            // Every activation of latent j, and each context's maximum.
            let vals: Vec<f32> = data
                .iter()
                .flat_map(|z| (0..rows).map(move |p| z[p * n + j]))
                .filter(|&v| v > 0.0)
                .collect();
            assert_eq!(s.firing, vals.len() as u64);
            assert_eq!(s.max, vals.iter().copied().fold(0.0, f32::max));
            let mut maxima: Vec<(f32, u64, usize)> = data
                .iter()
                .enumerate()
                .filter_map(|(c, z)| {
                    let col: Vec<f32> = (0..rows).map(|p| z[p * n + j]).collect();
                    let m = col.iter().copied().fold(0.0, f32::max);
                    let pos = col.iter().position(|&v| v == m).unwrap();
                    (m > 0.0).then_some((m, 100 + c as u64, pos))
                })
                .collect();
            // Top-k = a full sort (max descending, earlier context first on ties).
            let mut sorted = maxima.clone();
            sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let want: Vec<(f32, u64, usize)> = sorted.into_iter().take(opts.top_k).collect();
            let got: Vec<(f32, u64, usize)> = s
                .top
                .iter()
                .map(|h| (h.max, h.context, h.max_position))
                .collect();
            assert_eq!(got, want, "top-k of latent {j}");
            for h in &s.top {
                let z = &data[(h.context - 100) as usize];
                let col: Vec<f32> = (0..rows).map(|p| z[p * n + j]).collect();
                assert_eq!(h.dense(rows), col, "activations of context {}", h.context);
            }
            // Histogram = a direct count with its own edges.
            let hist = &s.histogram;
            assert_eq!(hist.edges.len(), hist.counts.len() + 1);
            let w = hist.edges[1] - hist.edges[0];
            assert_eq!(w.log2().fract(), 0.0, "power-of-two width");
            let mut direct = vec![0u64; hist.counts.len()];
            for &v in &vals {
                direct[(v / w) as usize] += 1;
            }
            assert_eq!(hist.counts, direct, "histogram of latent {j}");
            assert!(*hist.edges.last().unwrap() > s.max);
            assert!(
                hist.counts.len() * 2 > opts.hist_bins,
                "uses over half the bins"
            );
            assert_eq!(hist.counts.iter().sum::<u64>(), vals.len() as u64);
            // Quantiles: the reservoir holds every firing context, so bin q's
            // samples lie between the exact q/Q and (q+1)/Q order statistics.
            maxima.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            assert_eq!(s.quantiles.len(), opts.quantiles);
            for (q, bin) in s.quantiles.iter().enumerate() {
                let (lo, hi) = (
                    q * maxima.len() / opts.quantiles,
                    (q + 1) * maxima.len() / opts.quantiles,
                );
                let members: Vec<u64> = maxima[lo..hi].iter().map(|m| m.1).collect();
                assert_eq!(bin.len(), opts.per_quantile.min(hi - lo));
                for h in bin {
                    assert!(members.contains(&h.context), "quantile {q} of latent {j}");
                }
            }
        }
    }

    #[test]
    fn the_reservoir_is_seeded_and_bounded() {
        let data = codes(300, 4, 3, 9);
        let run = |seed| {
            let mut st = LatentStats::new(
                vec![1],
                StatsOptions {
                    reservoir: 10,
                    seed,
                    ..StatsOptions::default()
                },
            );
            for (c, z) in data.iter().enumerate() {
                st.observe(c as u64, z, 3);
            }
            let s = st.finish().remove(0);
            s.quantiles
                .iter()
                .flatten()
                .map(|h| h.context)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(4), run(4));
        assert_ne!(run(4), run(5));
        assert!(run(4).len() <= 10);
    }

    #[test]
    fn an_empty_histogram_has_one_empty_bin() {
        let h = DoublingHistogram::new(8).finish();
        assert_eq!(h.counts, vec![0]);
        assert_eq!(h.edges.len(), 2);
    }
}
