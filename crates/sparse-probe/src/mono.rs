//! Token-level monosemanticity of a latent's top activations.
//!
//! **Definition.** For latent `j`, let `T_n(j)` be the `n` tokens with the
//! largest positive code `z_ij` (ties: earlier token first); latents with fewer
//! than `n` positive codes are *not scored*. With a key `κ(i)` per token (its
//! token id, or its coarse POS tag with "no tag" a key of its own),
//!
//! `mono_κ(j) = max_v |{ i ∈ T_n(j) : κ(i) = v }| / n`,
//!
//! the share of the top-`n` activations taken by the most common key: 1 when a
//! latent's strongest activations all sit on one token (or one tag), `1/n` at
//! worst. The summary reports the mean over scored latents and their number; a
//! reference level is the same share for `n` tokens drawn from the corpus.

use serde::Serialize;
use std::collections::HashMap;
use std::hash::Hash;

use crate::probe::SparseCodes;

/// Per-latent shares and their mean.
#[derive(Clone, Debug, Serialize)]
pub struct Monosemanticity {
    /// `n`, the top activations considered per latent.
    pub top_n: usize,
    /// Latents with at least `n` positive codes.
    pub scored_latents: usize,
    /// Mean share over scored latents (NaN when none).
    pub mean: f64,
    /// `(latent, share)` of every scored latent, latents ascending.
    pub per_latent: Vec<(usize, f64)>,
}

/// [`Monosemanticity`] of `codes` with token keys `keys` (one per code row).
pub fn monosemanticity<K: Eq + Hash + Clone>(
    codes: &SparseCodes,
    keys: &[K],
    top_n: usize,
) -> anyhow::Result<Monosemanticity> {
    if keys.len() != codes.len() {
        anyhow::bail!(
            "monosemanticity: {} keys for {} code rows",
            keys.len(),
            codes.len()
        );
    }
    if top_n == 0 {
        anyhow::bail!("monosemanticity: top_n must be at least 1");
    }
    // Column lists (value, token) of positive codes.
    let mut cols: Vec<Vec<(f32, usize)>> = vec![Vec::new(); codes.n_latents];
    for (i, row) in codes.rows.iter().enumerate() {
        for &(j, v) in row {
            if v > 0.0 {
                cols[j as usize].push((v, i));
            }
        }
    }
    let mut per_latent = Vec::new();
    for (j, mut col) in cols.into_iter().enumerate() {
        if col.len() < top_n {
            continue;
        }
        col.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut counts: HashMap<&K, usize> = HashMap::new();
        for &(_, i) in &col[..top_n] {
            *counts.entry(&keys[i]).or_default() += 1;
        }
        let top = counts.values().copied().max().unwrap_or(0);
        per_latent.push((j, top as f64 / top_n as f64));
    }
    let mean = if per_latent.is_empty() {
        f64::NAN
    } else {
        per_latent.iter().map(|e| e.1).sum::<f64>() / per_latent.len() as f64
    };
    Ok(Monosemanticity {
        top_n,
        scored_latents: per_latent.len(),
        mean,
        per_latent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_the_definition() {
        // 6 tokens, 3 latents, top_n = 3.
        // latent 0: values on tokens 0..6 = 5,4,3,2,1,0.5 → top3 tokens 0,1,2 with keys a,a,b → 2/3
        // latent 1: only two positive codes → not scored
        // latent 2: ties at 1.0 on all six → earliest three: tokens 0,1,2 → 2/3; but
        //           with keys b on 3,4,5 the later tokens do not count.
        let keys = ["a", "a", "b", "b", "b", "b"];
        let rows = vec![
            vec![(0, 5.0), (1, 1.0), (2, 1.0)],
            vec![(0, 4.0), (1, 2.0), (2, 1.0)],
            vec![(0, 3.0), (2, 1.0)],
            vec![(0, 2.0), (2, 1.0)],
            vec![(0, 1.0), (1, -1.0), (2, 1.0)],
            vec![(0, 0.5), (2, 1.0)],
        ];
        let codes = SparseCodes { n_latents: 3, rows };
        let m = monosemanticity(&codes, &keys, 3).unwrap();
        assert_eq!(m.scored_latents, 2);
        assert_eq!(m.per_latent, vec![(0, 2.0 / 3.0), (2, 2.0 / 3.0)]);
        let m1 = monosemanticity(&codes, &keys, 1).unwrap();
        assert_eq!(m1.per_latent, vec![(0, 1.0), (1, 1.0), (2, 1.0)]);
        assert!((m.mean - 2.0 / 3.0).abs() < 1e-12);
    }
}
