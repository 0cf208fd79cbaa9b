//! Which examples explain a feature and which score it, and how they are shown.
//!
//! **Disjoint sets.** The explainer sees the first `explain_top` top examples
//! and the first `explain_per_quantile` examples of each quantile bin; the
//! scorers see only the *other* examples of the record (contexts already shown
//! to the explainer are removed by context index), at most `score_positives`,
//! taken alternately from the remaining top and quantile examples so that the
//! held-out set spans the activation range.
//!
//! **Negatives** for detection: `score_positives` contexts taken round-robin
//! from the held-out examples of up to `negative_features` other features
//! (seeded choice), skipping any context in which this feature appears in its
//! own record. (A record holds only the feature's strongest contexts, so a
//! negative may still carry a weak activation; the cross-feature draw is what
//! EleutherAI's *delphi* calls "random" negatives when no fresh contexts are at
//! hand.)
//!
//! **Display.** An example is cut to a window around its maximum
//! (`window_before` tokens before, `window_after` after) to keep prompts short,
//! and a token is *activating* when its activation is at least
//! `mark_fraction` × the example's maximum; marked tokens are written `<<tok>>`.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sparse_features::record::{ActivationExample, FeatureRecord};
use std::collections::HashSet;

/// How examples are chosen and shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExampleOptions {
    /// Top examples shown to the explainer.
    pub explain_top: usize,
    /// Examples per quantile bin shown to the explainer.
    pub explain_per_quantile: usize,
    /// Held-out positives per scorer (negatives: as many).
    pub score_positives: usize,
    /// Other features that negatives are drawn from.
    pub negative_features: usize,
    /// Tokens kept before the maximum.
    pub window_before: usize,
    /// Tokens kept after the maximum.
    pub window_after: usize,
    /// Activating = at least this fraction of the example's maximum.
    pub mark_fraction: f32,
}

impl Default for ExampleOptions {
    fn default() -> Self {
        Self {
            explain_top: 10,
            explain_per_quantile: 1,
            score_positives: 10,
            negative_features: 5,
            window_before: 24,
            window_after: 4,
            mark_fraction: 0.5,
        }
    }
}

/// An example as shown: tokens of the window and which are activating.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shown {
    /// Context index in the store (for bookkeeping).
    pub context: u64,
    /// Token strings of the window.
    pub tokens: Vec<String>,
    /// Activating tokens of the window.
    pub active: Vec<bool>,
}

impl Shown {
    /// The window of `ex` around its maximum, with activating tokens flagged.
    pub fn of(ex: &ActivationExample, opts: &ExampleOptions) -> Self {
        let n = ex.tokens.len();
        let m = ex.max_position.min(n.saturating_sub(1));
        let start = m.saturating_sub(opts.window_before);
        let end = (m + 1 + opts.window_after).min(n);
        let thr = opts.mark_fraction * ex.max_activation;
        let active = (start..end)
            .map(|i| {
                let a = ex.activations.get(i).copied().unwrap_or(0.0);
                a > 0.0 && a >= thr
            })
            .collect();
        Self {
            context: ex.context,
            tokens: ex.tokens[start..end].to_vec(),
            active,
        }
    }

    /// The text with no marks.
    pub fn plain(&self) -> String {
        self.tokens.concat()
    }

    /// The text with `marks[i]` tokens written `<<tok>>` (leading spaces kept outside).
    pub fn marked(&self, marks: &[bool]) -> String {
        let mut s = String::new();
        for (t, &m) in self.tokens.iter().zip(marks) {
            if m {
                let trimmed = t.trim_start();
                s.push_str(&t[..t.len() - trimmed.len()]);
                s.push_str("<<");
                s.push_str(trimmed);
                s.push_str(">>");
            } else {
                s.push_str(t);
            }
        }
        s
    }

    /// Marks on as many tokens as are activating, all on non-activating ones
    /// (seeded); `None` when the window has no room for that.
    pub fn wrong_marks(&self, rng: &mut impl Rng) -> Option<Vec<bool>> {
        let k = self.active.iter().filter(|&&a| a).count().max(1);
        let mut free: Vec<usize> = (0..self.tokens.len())
            .filter(|&i| !self.active[i] && !self.tokens[i].trim().is_empty())
            .collect();
        if free.len() < k {
            return None;
        }
        free.shuffle(rng);
        let mut marks = vec![false; self.tokens.len()];
        for &i in &free[..k] {
            marks[i] = true;
        }
        Some(marks)
    }
}

/// The examples of one feature: for the explainer, and held out for scoring.
#[derive(Clone, Debug)]
pub struct FeatureExamples {
    /// Shown to the explainer.
    pub explain: Vec<Shown>,
    /// Held-out positives.
    pub positives: Vec<Shown>,
    /// Negatives from other features.
    pub negatives: Vec<Shown>,
}

fn held_out<'a>(
    rec: &'a FeatureRecord,
    opts: &ExampleOptions,
) -> (Vec<&'a ActivationExample>, Vec<&'a ActivationExample>) {
    let mut explain: Vec<&ActivationExample> =
        rec.top_examples.iter().take(opts.explain_top).collect();
    for bin in &rec.quantile_examples {
        explain.extend(bin.iter().take(opts.explain_per_quantile));
    }
    let seen: HashSet<u64> = explain.iter().map(|e| e.context).collect();
    let rest_top = rec.top_examples.iter().skip(opts.explain_top);
    // Quantile leftovers, highest bin first, interleaved bin by bin.
    let bins: Vec<Vec<&ActivationExample>> = rec
        .quantile_examples
        .iter()
        .rev()
        .map(|b| b.iter().skip(opts.explain_per_quantile).collect())
        .collect();
    let mut rest_q = Vec::new();
    let longest = bins.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        rest_q.extend(bins.iter().filter_map(|b| b.get(i).copied()));
    }
    let mut out = Vec::new();
    let mut used = seen.clone();
    let (mut a, mut b) = (rest_top.into_iter(), rest_q.into_iter());
    loop {
        let (x, y) = (a.next(), b.next());
        if x.is_none() && y.is_none() {
            break;
        }
        for e in [x, y].into_iter().flatten() {
            if used.insert(e.context) {
                out.push(e);
            }
        }
    }
    (explain, out)
}

/// The explain / held-out / negative examples of `records[i]` (see the module doc),
/// seeded by `seed` and the feature's index.
pub fn feature_examples(
    records: &[FeatureRecord],
    i: usize,
    opts: &ExampleOptions,
    seed: u64,
) -> FeatureExamples {
    let rec = &records[i];
    let (explain, rest) = held_out(rec, opts);
    let positives: Vec<Shown> = rest
        .iter()
        .take(opts.score_positives)
        .map(|e| Shown::of(e, opts))
        .collect();
    let own: HashSet<u64> = rec
        .top_examples
        .iter()
        .chain(rec.quantile_examples.iter().flatten())
        .map(|e| e.context)
        .collect();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (rec.index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    // Only features with held-out examples can give negatives: drawing dead or
    // rare ones would leave a feature with fewer negatives than positives (or
    // none, and unscored) for reasons that have nothing to do with it.
    let mut others: Vec<usize> = (0..records.len())
        .filter(|&j| j != i && !held_out(&records[j], opts).1.is_empty())
        .collect();
    others.shuffle(&mut rng);
    others.truncate(opts.negative_features);
    let pools: Vec<Vec<&ActivationExample>> = others
        .iter()
        .map(|&j| held_out(&records[j], opts).1)
        .collect();
    let mut negatives = Vec::new();
    let mut taken: HashSet<u64> = HashSet::new();
    let longest = pools.iter().map(Vec::len).max().unwrap_or(0);
    'fill: for r in 0..longest {
        for p in &pools {
            if negatives.len() >= positives.len() {
                break 'fill;
            }
            if let Some(e) = p.get(r) {
                if !own.contains(&e.context) && taken.insert(e.context) {
                    negatives.push(Shown::of(e, opts));
                }
            }
        }
    }
    FeatureExamples {
        explain: explain.iter().map(|e| Shown::of(e, opts)).collect(),
        positives,
        negatives,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparse_features::record::Histogram;

    /// A feature firing once in each of `n` contexts (ids from `1000·index`).
    fn record(index: usize, n: usize) -> FeatureRecord {
        let example = |k: usize| ActivationExample {
            context: (1000 * index + k) as u64,
            token_ids: vec![1, 2, 3],
            tokens: vec!["a".into(), " b".into(), " c".into()],
            activations: vec![0.0, 2.0, 0.0],
            max_position: 1,
            max_activation: 2.0,
        };
        FeatureRecord {
            index,
            encoder: "sae".into(),
            tokens_seen: 1000,
            density: n as f64 / 1000.0,
            max_activation: 2.0,
            top_examples: (0..n).map(example).collect(),
            quantile_examples: vec![],
            histogram: Histogram {
                edges: vec![0.0, 2.0],
                counts: vec![n as u64],
            },
            top_logits: vec![],
            bottom_logits: vec![],
        }
    }

    #[test]
    fn negatives_come_only_from_features_with_held_out_examples() {
        // Feature 0 and three others are alive; 40 are dead or fire once
        // (explained, nothing held out). Five random others would almost
        // surely all be dead ones.
        let mut recs = vec![record(0, 14)];
        recs.extend((1..=40).map(|j| record(j, j % 2)));
        recs.extend((41..=43).map(|j| record(j, 14)));
        let opts = ExampleOptions {
            score_positives: 4,
            ..ExampleOptions::default()
        };
        for seed in 0..20 {
            let ex = feature_examples(&recs, 0, &opts, seed);
            assert_eq!(ex.positives.len(), 4);
            assert_eq!(ex.negatives.len(), 4, "seed {seed}: balanced");
            assert!(ex
                .negatives
                .iter()
                .all(|n| (41_000..44_000).contains(&n.context)));
        }
    }
}
