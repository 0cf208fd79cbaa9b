//! Held-out contexts of an activation store: which contexts belong to a
//! split, and their stored activations and tokens.

use anyhow::{anyhow, bail, Result};
use sparse_core::checkpoint::Checkpoint;
use sparse_core::Matrix;
use sparse_store::{ActivationStore, Split, Splits};

/// Up to `max` global context indices of `split`, in store order.
pub fn split_contexts(
    store: &ActivationStore,
    splits: &Splits,
    split: Split,
    max: usize,
) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for i in 0..store.num_shards() {
        if out.len() >= max {
            break;
        }
        let first = store.shard_context_range(i).start;
        for (c, d) in store.shard_doc_index(i)?.into_iter().enumerate() {
            if splits.of_document(d) == split && out.len() < max {
                out.push(first + c as u64);
            }
        }
    }
    Ok(out)
}

/// The stored activations (`contexts.len()·rows_per_context × d_model`, in
/// the order given) and token ids of `contexts` (ascending).
pub fn context_data(store: &ActivationStore, contexts: &[u64]) -> Result<(Matrix, Vec<Vec<u32>>)> {
    let d = store.d_model();
    let mut rows = Vec::with_capacity(contexts.len() * store.rows_per_context() * d);
    let mut tokens = Vec::with_capacity(contexts.len());
    let mut cached: Option<sparse_store::Shard> = None;
    for &c in contexts {
        let s = (0..store.num_shards())
            .find(|&i| store.shard_context_range(i).contains(&c))
            .ok_or_else(|| anyhow!("context {c} is not in the store"))?;
        if cached.as_ref().is_none_or(|sh| sh.index != s) {
            cached = Some(store.read_shard(s)?);
        }
        let sh = cached.as_ref().expect("just read");
        let local = (c - sh.first_context) as usize;
        rows.extend_from_slice(sh.context_activations(local).as_slice());
        tokens.push(sh.context_tokens(local).to_vec());
    }
    let n = rows.len() / d.max(1);
    Ok((Matrix::from_vec(n, d, rows)?, tokens))
}

/// The partition: `fractions` (`[validation, test]`), else the checkpoint's, else 5%/5%.
pub fn resolve_splits(ckpt: &Checkpoint, fractions: Option<&[f64]>) -> Result<Splits> {
    Ok(match fractions {
        Some([v, t]) => Splits::new(*v, *t)?,
        Some(other) => bail!(
            "--fractions takes two values, VALIDATION,TEST (e.g. 0.05,0.05); got {} ({other:?})",
            other.len()
        ),
        None => match sparse_train::stored_run(ckpt) {
            Some(r) => r.splits,
            None => Splits::new(0.05, 0.05)?,
        },
    })
}

/// Whole contexts needed to hold at least `tokens` stored rows (at least one).
pub fn contexts_for_tokens(store: &ActivationStore, tokens: u64) -> usize {
    let rpc = store.rows_per_context().max(1) as u64;
    tokens.div_ceil(rpc).max(1) as usize
}
