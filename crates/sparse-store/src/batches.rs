//! [`ShuffledBatches`]: seeded, memory-bounded shuffled mini-batches over one split.

use crate::reader::ActivationStore;
use crate::split::{Split, Splits};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sparse_core::{Error, Matrix, Result};

/// How [`ShuffledBatches`] draws its batches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchOptions {
    /// Rows per batch.
    pub batch_size: usize,
    /// Rows held in the shuffle buffer (≥ 1); larger mixes shards better.
    pub buffer_rows: usize,
    /// Seed of the shard order and of the shuffle.
    pub seed: u64,
    /// Passes over the split; `None` for an endless stream.
    pub epochs: Option<u64>,
    /// The split to draw from.
    pub split: Split,
    /// The partition that defines it.
    pub splits: Splits,
    /// Skip each epoch's last, short batch (those rows are then not seen that
    /// epoch); otherwise it is returned with fewer rows.
    pub drop_last: bool,
}

/// The shard currently feeding the buffer.
struct Pending {
    activations: Matrix,
    first_row: u64,
    /// Local rows of the split, in shuffled order.
    order: Vec<usize>,
    next: usize,
}

/// An iterator of `batch_size × d_model` `f32` batches over one split.
///
/// Each epoch `e` takes its randomness from one ChaCha8 stream (seed, `e`):
/// it visits the shards holding rows of the split in a shuffled order,
/// shuffles each shard's rows of the split, and passes them through a
/// shuffle buffer of `buffer_rows` rows (once the buffer is full, each new
/// row replaces a uniformly chosen one, which goes to the batch; at the end
/// of the epoch the buffer drains in random order). Hence every row of the
/// split comes out exactly once per epoch, batches never straddle epochs,
/// the same seed gives the same batches and memory stays at one shard plus
/// the buffer whatever the store size.
///
/// Iterating yields `Result<Matrix>`: reading a shard can fail (the error
/// names it), after which the iterator ends.
pub struct ShuffledBatches {
    store: ActivationStore,
    opts: BatchOptions,
    /// Rows of the split in each shard.
    shard_rows: Vec<u64>,
    rows_per_epoch: u64,
    epoch: u64,
    in_epoch: bool,
    done: bool,
    rng: ChaCha8Rng,
    shard_order: Vec<usize>,
    next_shard: usize,
    pending: Option<Pending>,
    buffer: Vec<f32>,
    buffer_ids: Vec<u64>,
    out: Vec<f32>,
    out_ids: Vec<u64>,
}

impl ShuffledBatches {
    /// Batches over `options.split` of `store` (which is cloned; cheap).
    /// Reads every shard's `doc_index` to count the split. Fails on a zero
    /// batch or buffer size, invalid fractions, an empty split, or
    /// `drop_last` with fewer rows than one batch (no batch would ever come).
    pub fn new(store: &ActivationStore, options: BatchOptions) -> Result<Self> {
        if options.batch_size == 0 {
            return Err(Error::invalid("batch_size", 0, "must be at least 1"));
        }
        if options.buffer_rows == 0 {
            return Err(Error::invalid("buffer_rows", 0, "must be at least 1"));
        }
        options.splits.validate()?;
        let k = store.rows_per_context() as u64;
        let shard_rows = (0..store.num_shards())
            .map(|i| {
                Ok(store
                    .shard_doc_index(i)?
                    .into_iter()
                    .filter(|&d| options.splits.of_document(d) == options.split)
                    .count() as u64
                    * k)
            })
            .collect::<Result<Vec<u64>>>()?;
        let rows_per_epoch: u64 = shard_rows.iter().sum();
        if rows_per_epoch == 0 {
            return Err(Error::invalid(
                "split",
                format!("{:?}", options.split),
                &format!(
                    "holds no rows in the store at {} ({} contexts, fractions validation {} test {})",
                    store.dir().display(),
                    store.contexts(),
                    options.splits.validation,
                    options.splits.test
                ),
            ));
        }
        if options.drop_last && rows_per_epoch < options.batch_size as u64 {
            return Err(Error::invalid(
                "batch_size",
                options.batch_size,
                &format!("with drop_last, must not exceed the {rows_per_epoch} rows of the split"),
            ));
        }
        let d = store.d_model();
        Ok(ShuffledBatches {
            store: store.clone(),
            opts: options,
            shard_rows,
            rows_per_epoch,
            epoch: 0,
            in_epoch: false,
            done: false,
            rng: ChaCha8Rng::seed_from_u64(options.seed),
            shard_order: Vec::new(),
            next_shard: 0,
            pending: None,
            buffer: Vec::with_capacity(options.buffer_rows.min(rows_per_epoch as usize) * d),
            buffer_ids: Vec::new(),
            out: Vec::with_capacity(options.batch_size * d),
            out_ids: Vec::with_capacity(options.batch_size),
        })
    }

    /// Rows of the split: the rows of one epoch.
    pub fn rows_per_epoch(&self) -> u64 {
        self.rows_per_epoch
    }

    /// Batches in one epoch (the last one short unless `drop_last`).
    pub fn batches_per_epoch(&self) -> u64 {
        let b = self.opts.batch_size as u64;
        if self.opts.drop_last {
            self.rows_per_epoch / b
        } else {
            self.rows_per_epoch.div_ceil(b)
        }
    }

    /// The epoch the next batch comes from (0-based).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The options.
    pub fn options(&self) -> &BatchOptions {
        &self.opts
    }

    /// Skips `n` batches, returning how many there were (fewer when the
    /// epochs run out): whole epochs are skipped without reading, the rest
    /// are drawn and discarded, so a resumed training run sees exactly the
    /// batches an uninterrupted one would from that step on.
    pub fn skip_batches(&mut self, n: u64) -> Result<u64> {
        let per_epoch = self.batches_per_epoch();
        let mut skipped = 0;
        while skipped < n && !self.done {
            if !self.in_epoch {
                let mut whole = (n - skipped) / per_epoch;
                if let Some(limit) = self.opts.epochs {
                    whole = whole.min(limit.saturating_sub(self.epoch));
                }
                self.epoch += whole;
                skipped += whole * per_epoch;
                if skipped == n {
                    break;
                }
            }
            match self.next_batch()? {
                Some(_) => skipped += 1,
                None => break,
            }
        }
        Ok(skipped)
    }

    /// The next batch with the global row index of each of its rows
    /// (see [`ActivationStore::locate_row`]); `None` after the last epoch.
    pub fn next_with_rows(&mut self) -> Option<Result<(Matrix, Vec<u64>)>> {
        match self.next_batch() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    fn start_epoch(&mut self) {
        self.rng = ChaCha8Rng::seed_from_u64(self.opts.seed);
        self.rng.set_stream(self.epoch);
        self.shard_order = (0..self.shard_rows.len())
            .filter(|&i| self.shard_rows[i] > 0)
            .collect();
        self.shard_order.shuffle(&mut self.rng);
        self.next_shard = 0;
        self.in_epoch = true;
    }

    fn load_shard(&mut self, i: usize) -> Result<()> {
        let shard = self.store.read_shard(i)?;
        let k = shard.rows_per_context();
        let mut order: Vec<usize> = (0..shard.contexts())
            .filter(|&c| self.opts.splits.of_document(shard.doc_index[c]) == self.opts.split)
            .flat_map(|c| c * k..(c + 1) * k)
            .collect();
        order.shuffle(&mut self.rng);
        self.pending = Some(Pending {
            first_row: shard.first_row(),
            activations: shard.activations,
            order,
            next: 0,
        });
        Ok(())
    }

    /// Moves buffer row `j` to the batch being built.
    fn emit(&mut self, j: usize) {
        let d = self.store.d_model();
        self.out.extend_from_slice(&self.buffer[j * d..(j + 1) * d]);
        self.out_ids.push(self.buffer_ids[j]);
    }

    /// Feeds one row of the pending shard into the buffer; `false` when the shard is spent.
    fn feed_one(&mut self) -> bool {
        let d = self.store.d_model();
        let Some(p) = self.pending.as_mut() else {
            return false;
        };
        let Some(&r) = p.order.get(p.next) else {
            self.pending = None;
            return false;
        };
        p.next += 1;
        let (id, src) = (p.first_row + r as u64, p.activations.row(r));
        if self.buffer_ids.len() < self.opts.buffer_rows {
            self.buffer.extend_from_slice(src);
            self.buffer_ids.push(id);
        } else {
            let j = self.rng.gen_range(0..self.buffer_ids.len());
            let slot = &mut self.buffer[j * d..(j + 1) * d];
            self.out.extend_from_slice(slot);
            self.out_ids.push(self.buffer_ids[j]);
            slot.copy_from_slice(src);
            self.buffer_ids[j] = id;
        }
        true
    }

    fn next_batch(&mut self) -> Result<Option<(Matrix, Vec<u64>)>> {
        let (b, d) = (self.opts.batch_size, self.store.d_model());
        loop {
            if self.done {
                return Ok(None);
            }
            if !self.in_epoch {
                if self.opts.epochs.is_some_and(|n| self.epoch >= n) {
                    self.done = true;
                    return Ok(None);
                }
                self.start_epoch();
            }
            while self.out_ids.len() < b {
                if self.feed_one() {
                    continue;
                }
                if self.next_shard < self.shard_order.len() {
                    let i = self.shard_order[self.next_shard];
                    self.next_shard += 1;
                    self.load_shard(i)?;
                    continue;
                }
                if !self.buffer_ids.is_empty() {
                    let j = self.rng.gen_range(0..self.buffer_ids.len());
                    self.emit(j);
                    let last = self.buffer_ids.len() - 1;
                    self.buffer.copy_within(last * d.., j * d);
                    self.buffer.truncate(last * d);
                    self.buffer_ids.swap_remove(j);
                    continue;
                }
                // Shards and buffer are spent: the epoch is over.
                self.in_epoch = false;
                self.epoch += 1;
                break;
            }
            if self.out_ids.len() == b || (!self.out_ids.is_empty() && !self.opts.drop_last) {
                let rows = self.out_ids.len();
                let x = Matrix::from_vec(rows, d, std::mem::take(&mut self.out))?;
                self.out.reserve(b * d);
                return Ok(Some((x, std::mem::take(&mut self.out_ids))));
            }
            self.out.clear();
            self.out_ids.clear();
        }
    }
}

impl Iterator for ShuffledBatches {
    type Item = Result<Matrix>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_with_rows().map(|r| r.map(|(x, _)| x))
    }
}
