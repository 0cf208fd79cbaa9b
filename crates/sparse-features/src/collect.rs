//! The streaming pass over a split of an activation store: encode each
//! context's activations (with the SAE or FISTA on its decoder, through
//! [`sparse_eval::Method`]), feed [`LatentStats`], and turn the result into
//! [`FeatureRecord`]s with token text and logit effects.

use crate::record::{ActivationExample, FeatureRecord, LogitEntry};
use crate::stats::{ContextHit, LatentStats, LatentSummary, StatsOptions};
use anyhow::{bail, Context, Result};
use sparse_core::checkpoint::Checkpoint;
use sparse_core::linalg::{matmul_new, Op};
use sparse_core::Matrix;
use sparse_eval::Method;
use sparse_store::{ActivationStore, Split, Splits};
use std::collections::HashMap;

/// Settings of [`scan`].
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// The split scanned.
    pub split: Split,
    /// The store's train/validation/test partition.
    pub splits: Splits,
    /// Tokens scanned at most (whole contexts, in store order).
    pub tokens: u64,
    /// Contexts encoded per batch.
    pub batch_contexts: usize,
    /// What is kept per latent.
    pub stats: StatsOptions,
    /// Also keep every non-zero activation of the recorded latents (for the
    /// latent-activation cache export; memory grows with tokens × L0).
    pub keep_cache: bool,
}

/// One non-zero activation kept for the latent cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CachedActivation {
    /// Index into [`Scan::contexts`].
    pub context_slot: u32,
    /// Position within the whole context (`first_position` and up).
    pub position: u32,
    /// Latent index.
    pub latent: u32,
    /// Activation.
    pub value: f32,
}

/// The result of one pass with one encoder.
pub struct Scan {
    /// [`Method::name`] of the encoder.
    pub encoder: String,
    /// Global indices of the scanned contexts, in scan order.
    pub contexts: Vec<u64>,
    /// Tokens (rows) scanned.
    pub tokens_seen: u64,
    /// Per recorded latent, in the order asked.
    pub summaries: Vec<LatentSummary>,
    /// Every non-zero activation of the recorded latents, when asked for.
    pub cache: Vec<CachedActivation>,
}

/// Encodes up to `opts.tokens` tokens of `opts.split` of `store` with
/// `method` on the checkpoint's model and accumulates the statistics of
/// `latents`. Memory: one shard, one batch of codes, and what
/// [`LatentStats`] keeps.
pub fn scan(
    ckpt: &Checkpoint,
    store: &ActivationStore,
    method: &Method,
    latents: Vec<usize>,
    opts: &ScanOptions,
) -> Result<Scan> {
    let model = &ckpt.model;
    let (n_latents, dim) = model.dictionary().shape();
    if dim != store.d_model() {
        bail!(
            "the store {} has d_model {} but the checkpoint's dictionary has {dim}",
            store.dir().display(),
            store.d_model()
        );
    }
    if let Some(&bad) = latents.iter().find(|&&j| j >= n_latents) {
        bail!("feature {bad} is out of range: the checkpoint has {n_latents} latents");
    }
    let scale = sparse_train::stored_run(ckpt).map_or(1.0, |r| r.scale);
    let b_dec = sparse_train::models::decoder_bias(model);
    let rpc = store.rows_per_context();
    let first = store.spec().first_position as u32;
    let cache_latents: Vec<usize> = if opts.keep_cache {
        latents.clone()
    } else {
        Vec::new()
    };
    let mut stats = LatentStats::new(latents, opts.stats.clone());
    let mut contexts = Vec::new();
    let mut cache = Vec::new();
    let max_contexts = sparse_eval::heldout::contexts_for_tokens(store, opts.tokens);
    let batch = opts.batch_contexts.max(1);
    let mut flush =
        |ids: &mut Vec<u64>, rows: &mut Vec<f32>, stats: &mut LatentStats| -> Result<()> {
            if ids.is_empty() {
                return Ok(());
            }
            let mut xn = Matrix::from_vec(ids.len() * rpc, dim, std::mem::take(rows))?;
            xn.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
            let (z, _) = method
                .encode(model, &b_dec, &xn)
                .with_context(|| format!("encoding with {}", method.name()))?;
            let zs = z.as_slice();
            for (k, &c) in ids.iter().enumerate() {
                let codes = &zs[k * rpc * n_latents..(k + 1) * rpc * n_latents];
                stats.observe(c, codes, n_latents);
                let slot = contexts.len() as u32;
                contexts.push(c);
                for p in 0..rpc {
                    for &j in &cache_latents {
                        let v = codes[p * n_latents + j];
                        if v > 0.0 {
                            cache.push(CachedActivation {
                                context_slot: slot,
                                position: first + p as u32,
                                latent: j as u32,
                                value: v,
                            });
                        }
                    }
                }
            }
            ids.clear();
            Ok(())
        };
    let (mut ids, mut rows) = (Vec::new(), Vec::new());
    let mut taken = 0usize;
    'shards: for i in 0..store.num_shards() {
        if taken >= max_contexts {
            break;
        }
        let docs = store.shard_doc_index(i)?;
        if !docs
            .iter()
            .any(|&d| opts.splits.of_document(d) == opts.split)
        {
            continue;
        }
        let shard = store.read_shard(i)?;
        for (local, &d) in docs.iter().enumerate() {
            if opts.splits.of_document(d) != opts.split {
                continue;
            }
            if taken >= max_contexts {
                break 'shards;
            }
            taken += 1;
            ids.push(shard.first_context + local as u64);
            rows.extend_from_slice(shard.context_activations(local).as_slice());
            if ids.len() == batch {
                flush(&mut ids, &mut rows, &mut stats)?;
            }
        }
    }
    flush(&mut ids, &mut rows, &mut stats)?;
    if taken == 0 {
        bail!(
            "the {:?} split of the store {} holds no contexts",
            opts.split,
            store.dir().display()
        );
    }
    Ok(Scan {
        encoder: method.name(),
        contexts,
        tokens_seen: stats.tokens_seen,
        summaries: stats.finish(),
        cache,
    })
}

/// Token text, decoded one id at a time and cached.
pub struct TokenText<'a> {
    decode: Box<dyn Fn(u32) -> String + 'a>,
    cache: HashMap<u32, String>,
}

impl<'a> TokenText<'a> {
    /// Text of token ids given by `decode`.
    pub fn new(decode: impl Fn(u32) -> String + 'a) -> Self {
        TokenText {
            decode: Box::new(decode),
            cache: HashMap::new(),
        }
    }

    /// With a language model's tokenizer (an undecodable id shows as `<id>`).
    pub fn from_tokenizer(t: &'a sparse_lm::LmTokenizer) -> Self {
        TokenText::new(move |id| t.decode(&[id]).unwrap_or_else(|_| format!("<{id}>")))
    }

    /// The text of `id`.
    pub fn get(&mut self, id: u32) -> String {
        if let Some(s) = self.cache.get(&id) {
            return s.clone();
        }
        let s = (self.decode)(id);
        self.cache.insert(id, s.clone());
        s
    }
}

/// The top and bottom `n` logit effects `D[j] · W_U[t]` of each latent `j`
/// of `latents` (`dictionary`: `N × d`, atoms as rows; `unembed`: `vocab × d`).
pub fn logit_effects(
    dictionary: &Matrix,
    latents: &[usize],
    unembed: &Matrix,
    n: usize,
    text: &mut TokenText,
) -> Result<Vec<(Vec<LogitEntry>, Vec<LogitEntry>)>> {
    if dictionary.cols() != unembed.cols() {
        bail!(
            "the unembedding has width {} but the dictionary's atoms have {}",
            unembed.cols(),
            dictionary.cols()
        );
    }
    let mut out = Vec::with_capacity(latents.len());
    for chunk in latents.chunks(128) {
        let mut rows = Vec::with_capacity(chunk.len() * dictionary.cols());
        chunk
            .iter()
            .for_each(|&j| rows.extend_from_slice(dictionary.row(j)));
        let atoms = Matrix::from_vec(chunk.len(), dictionary.cols(), rows)?;
        let l = matmul_new(&atoms, Op::N, unembed, Op::T);
        for r in 0..chunk.len() {
            let row = l.row(r);
            // Largest first (ties: lower id), and the n best of each end only.
            let desc = |a: &usize, b: &usize| row[*b].total_cmp(&row[*a]).then(a.cmp(b));
            let asc = |a: &usize, b: &usize| row[*a].total_cmp(&row[*b]).then(a.cmp(b));
            let best = |cmp: &dyn Fn(&usize, &usize) -> std::cmp::Ordering| {
                let mut ids: Vec<usize> = (0..row.len()).collect();
                let k = n.min(ids.len());
                if k > 0 && k < ids.len() {
                    ids.select_nth_unstable_by(k - 1, cmp);
                }
                ids.truncate(k);
                ids.sort_by(cmp);
                ids
            };
            let entry = |t: usize, text: &mut TokenText| LogitEntry {
                token_id: t as u32,
                token: text.get(t as u32),
                value: row[t],
            };
            let top = best(&desc).into_iter().map(|t| entry(t, text)).collect();
            let bottom = best(&asc).into_iter().map(|t| entry(t, text)).collect();
            out.push((top, bottom));
        }
    }
    Ok(out)
}

/// The [`FeatureRecord`]s of a scan: token ids read back from the store
/// (positions `first_position..context_len`), text from `text`, logit
/// effects from `logits` (one pair per recorded latent, or none).
pub fn records(
    scan: &Scan,
    store: &ActivationStore,
    text: &mut TokenText,
    logits: Option<&[(Vec<LogitEntry>, Vec<LogitEntry>)]>,
) -> Result<Vec<FeatureRecord>> {
    let first = store.spec().first_position;
    let rpc = store.rows_per_context();
    let mut tokens: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut example = |h: &ContextHit, text: &mut TokenText| -> Result<ActivationExample> {
        let ids = match tokens.entry(h.context) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
            std::collections::hash_map::Entry::Vacant(e) => e
                .insert(store.context_tokens(h.context)?[first..].to_vec())
                .clone(),
        };
        Ok(ActivationExample {
            context: h.context,
            tokens: ids.iter().map(|&t| text.get(t)).collect(),
            token_ids: ids,
            activations: h.dense(rpc),
            max_position: h.max_position,
            max_activation: h.max,
        })
    };
    let mut out = Vec::with_capacity(scan.summaries.len());
    for (k, s) in scan.summaries.iter().enumerate() {
        let top_examples = s
            .top
            .iter()
            .map(|h| example(h, text))
            .collect::<Result<Vec<_>>>()?;
        let quantile_examples = s
            .quantiles
            .iter()
            .map(|bin| bin.iter().map(|h| example(h, text)).collect())
            .collect::<Result<Vec<_>>>()?;
        let (top_logits, bottom_logits) = logits.map(|l| l[k].clone()).unwrap_or_default();
        out.push(FeatureRecord {
            index: s.latent,
            encoder: scan.encoder.clone(),
            tokens_seen: scan.tokens_seen,
            density: s.firing as f64 / scan.tokens_seen.max(1) as f64,
            max_activation: s.max,
            top_examples,
            quantile_examples,
            histogram: s.histogram.clone(),
            top_logits,
            bottom_logits,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logit_effects_are_the_extremes_of_the_atom_times_the_unembedding() {
        // 3 atoms of width 4, a vocabulary of 50.
        let d = Matrix::from_vec(
            3,
            4,
            vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5],
        )
        .unwrap();
        let vocab = 50;
        let w: Vec<f32> = (0..vocab * 4)
            .map(|i| (((i * 37) % 101) as f32 - 50.0) / 10.0)
            .collect();
        let w_u = Matrix::from_vec(vocab, 4, w.clone()).unwrap();
        let mut text = TokenText::new(|id| format!("t{id}"));
        let out = logit_effects(&d, &[0, 2], &w_u, 5, &mut text).unwrap();
        assert_eq!(out.len(), 2);
        for (k, &j) in [0usize, 2].iter().enumerate() {
            // A full sort of every token's effect.
            let mut all: Vec<(f32, u32)> = (0..vocab)
                .map(|t| ((0..4).map(|c| d.row(j)[c] * w[t * 4 + c]).sum(), t as u32))
                .collect();
            all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let (top, bottom) = &out[k];
            let got: Vec<f32> = top.iter().map(|e| e.value).collect();
            let want: Vec<f32> = all.iter().take(5).map(|e| e.0).collect();
            assert_eq!(got, want, "top of atom {j}");
            assert_eq!(top[0].token, format!("t{}", top[0].token_id));
            let low: Vec<f32> = bottom.iter().map(|e| e.value).collect();
            let want_low: Vec<f32> = all.iter().rev().take(5).map(|e| e.0).collect();
            assert_eq!(low, want_low, "bottom of atom {j}");
        }
        let bad = Matrix::from_vec(1, 3, vec![0.0; 3]).unwrap();
        assert!(logit_effects(&bad, &[0], &w_u, 5, &mut text).is_err());
    }
}
