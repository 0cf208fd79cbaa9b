//! Held-out evaluation of a checkpoint on a split of a store, streamed
//! (memory: one shard, one batch and the accumulator), with the metric
//! definitions of [`sparse_core::metrics::held_out`]. A checkpoint written
//! by the trainer carries its normalisation scale `s`: the model encodes
//! `s·x` and its reconstruction is divided by `s`, so every metric refers to
//! the raw activations.

use crate::models;
use crate::trainer::{StoredRun, TRAINER};
use sparse_core::checkpoint::Checkpoint;
use sparse_core::metrics::held_out::{HeldOutAccumulator, HeldOutMetrics};
use sparse_core::{Error, Result};
use sparse_store::{ActivationStore, BatchOptions, ShuffledBatches, Split, Splits};

/// The trainer's record in a checkpoint, if it has one.
pub fn stored_run(ckpt: &Checkpoint) -> Option<StoredRun> {
    let run: StoredRun = serde_json::from_value(ckpt.config.clone()).ok()?;
    (run.trainer == TRAINER).then_some(run)
}

/// Options of [`evaluate`].
#[derive(Clone, Copy, Debug)]
pub struct EvalOptions {
    /// The split to evaluate.
    pub split: Split,
    /// The partition (default: the one stored in the checkpoint).
    pub splits: Option<Splits>,
    /// Rows per batch.
    pub batch_size: usize,
    /// Stop after this many tokens (all of the split when `None`).
    pub max_tokens: Option<u64>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            split: Split::Test,
            splits: None,
            batch_size: 4096,
            max_tokens: None,
        }
    }
}

/// Metrics of `ckpt`'s model on `opts.split` of `store`, in store order
/// (one epoch, no shuffling needed: the order does not change the metrics).
pub fn evaluate(
    ckpt: &Checkpoint,
    store: &ActivationStore,
    opts: EvalOptions,
) -> Result<HeldOutMetrics> {
    let run = stored_run(ckpt);
    let scale = run.as_ref().map_or(1.0, |r| r.scale);
    let splits = match (opts.splits, &run) {
        (Some(s), _) => s,
        (None, Some(r)) => r.splits,
        (None, None) => Splits::new(0.05, 0.05)?,
    };
    let model = &ckpt.model;
    let (n_latents, dim) = model.dictionary().shape();
    if dim != store.d_model() {
        return Err(Error::invalid(
            "store",
            store.dir().display(),
            &format!(
                "has d_model {}, the model was trained on {dim}",
                store.d_model()
            ),
        ));
    }
    let batches = ShuffledBatches::new(
        store,
        BatchOptions {
            batch_size: opts.batch_size,
            buffer_rows: 1,
            seed: 0,
            epochs: Some(1),
            split: opts.split,
            splits,
            drop_last: false,
        },
    )?;
    let mut acc = HeldOutAccumulator::new(dim, n_latents);
    for batch in batches {
        let raw = batch?;
        let raw = match opts.max_tokens {
            Some(m) if acc.tokens() + raw.rows() as u64 > m => {
                let keep = (m - acc.tokens()) as usize;
                raw.select_rows(0..keep)
            }
            _ => raw,
        };
        let mut x = raw.clone();
        x.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
        let z = model.encode(&x)?;
        let mut x_hat = models::decode(model, &z)?;
        x_hat.as_mut_slice().iter_mut().for_each(|v| *v /= scale);
        acc.update(&raw, &x_hat, &z)?;
        if opts.max_tokens.is_some_and(|m| acc.tokens() >= m) {
            break;
        }
    }
    acc.finish()
}
