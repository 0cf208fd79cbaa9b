//! ShuffledBatches and splits: every row of a split exactly once per epoch,
//! with its own activations; determinism and seed sensitivity; skipping
//! batches to resume; splits disjoint and independent of the shard size.

mod common;

use common::{spec, value, write_store};
use proptest::prelude::*;
use sparse_core::Matrix;
use sparse_store::{ActivationStore, BatchOptions, ShuffledBatches, Split, Splits, StoreDtype};
use std::collections::BTreeSet;

/// Rows per context in the common spec.
const K: u64 = 7;

fn options(
    split: Split,
    splits: Splits,
    batch_size: usize,
    buffer_rows: usize,
    seed: u64,
) -> BatchOptions {
    BatchOptions {
        batch_size,
        buffer_rows,
        seed,
        epochs: Some(1),
        split,
        splits,
        drop_last: false,
    }
}

/// The global rows of `split` in a store of `n` contexts of the common harvest.
fn split_rows(n: u64, splits: &Splits, split: Split) -> Vec<u64> {
    (0..n)
        .filter(|c| splits.of_document((c / 3) as u32) == split)
        .flat_map(|c| c * K..(c + 1) * K)
        .collect()
}

fn all(it: ShuffledBatches) -> Vec<(Matrix, Vec<u64>)> {
    let mut it = it;
    std::iter::from_fn(|| it.next_with_rows().map(|r| r.unwrap())).collect()
}

/// Every row of a batch holds the activations of the row id it is reported as.
fn check_rows(x: &Matrix, ids: &[u64]) {
    assert_eq!(x.rows(), ids.len());
    for (r, &id) in ids.iter().enumerate() {
        let want: Vec<f32> = (0..x.cols()).map(|j| value(id, j)).collect();
        assert_eq!(x.row(r), &want[..], "row id {id}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn every_row_of_the_split_once_per_epoch(
        n in 1u64..40,
        shard_contexts in 1usize..9,
        buffer_rows in 1usize..120,
        batch_size in 1usize..60,
        seed in any::<u64>(),
        epochs in 1u64..4,
        held_out in prop::bool::ANY,
        drop_last in prop::bool::ANY,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = write_store(dir.path(), spec(StoreDtype::F32, shard_contexts), n);
        let splits = if held_out { Splits::new(0.25, 0.25).unwrap() } else { Splits::ALL_TRAIN };
        let want = split_rows(n, &splits, Split::Train);
        let mut opts = options(Split::Train, splits, batch_size, buffer_rows, seed);
        opts.epochs = Some(epochs);
        opts.drop_last = drop_last;
        let it = match ShuffledBatches::new(&store, opts) {
            Ok(it) => it,
            Err(e) => {
                // Only an empty split, or drop_last with less than a batch, is refused.
                prop_assert!(want.is_empty() || (drop_last && want.len() < batch_size), "{e}");
                return Ok(());
            }
        };
        prop_assert_eq!(it.rows_per_epoch(), want.len() as u64);
        let per_epoch = it.batches_per_epoch() as usize;
        let batches = all(it);
        prop_assert_eq!(batches.len(), per_epoch * epochs as usize);
        for epoch in batches.chunks(per_epoch) {
            let mut ids: Vec<u64> = Vec::new();
            for (i, (x, b)) in epoch.iter().enumerate() {
                check_rows(x, b);
                if i + 1 < per_epoch || drop_last {
                    prop_assert_eq!(b.len(), batch_size);
                }
                ids.extend(b);
            }
            let distinct: BTreeSet<u64> = ids.iter().copied().collect();
            prop_assert_eq!(distinct.len(), ids.len(), "a row repeated within an epoch");
            if drop_last {
                prop_assert_eq!(ids.len(), want.len() / batch_size * batch_size);
                prop_assert!(distinct.iter().all(|r| want.binary_search(r).is_ok()));
            } else {
                prop_assert_eq!(distinct.into_iter().collect::<Vec<_>>(), want.clone());
            }
        }
    }
}

#[test]
fn same_seed_same_batches_other_seed_or_epoch_other_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), spec(StoreDtype::F32, 4), 30);
    let run = |seed: u64, epochs: u64| {
        let mut o = options(Split::Train, Splits::ALL_TRAIN, 16, 50, seed);
        o.epochs = Some(epochs);
        all(ShuffledBatches::new(&store, o).unwrap())
    };
    let a = run(7, 2);
    assert_eq!(a, run(7, 2));
    let ids = |v: &[(Matrix, Vec<u64>)]| v.iter().flat_map(|(_, b)| b.clone()).collect::<Vec<_>>();
    let b = run(8, 2);
    assert_ne!(ids(&a), ids(&b), "another seed must shuffle differently");
    let half = a.len() / 2;
    assert_ne!(
        ids(&a[..half]),
        ids(&a[half..]),
        "each epoch must reshuffle"
    );
    // The order is far from the stored one: few rows keep their neighbour.
    let first = ids(&a[..half]);
    let adjacent = first.windows(2).filter(|w| w[1] == w[0] + 1).count();
    assert!(
        adjacent < first.len() / 10,
        "{adjacent} of {} rows still adjacent",
        first.len()
    );
}

#[test]
fn endless_stream_and_skipping_replays_the_same_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), spec(StoreDtype::F32, 3), 11);
    let mut o = options(Split::Train, Splits::ALL_TRAIN, 10, 13, 3);
    o.epochs = None;
    let mut it = ShuffledBatches::new(&store, o).unwrap();
    let per_epoch = it.batches_per_epoch();
    assert_eq!((it.rows_per_epoch(), per_epoch), (77, 8));
    let seq: Vec<(Matrix, Vec<u64>)> = (0..3 * per_epoch + 3)
        .map(|_| it.next_with_rows().unwrap().unwrap())
        .collect();
    assert_eq!(it.epoch(), 3);
    for skip in [0, 1, 7, 8, 9, 16, 20, 3 * per_epoch + 2] {
        let mut fresh = ShuffledBatches::new(&store, o).unwrap();
        assert_eq!(fresh.skip_batches(skip).unwrap(), skip);
        assert_eq!(
            fresh.next_with_rows().unwrap().unwrap(),
            seq[skip as usize],
            "after skipping {skip}"
        );
    }
    // With a fixed number of epochs, skipping stops at the end.
    o.epochs = Some(2);
    let mut two = ShuffledBatches::new(&store, o).unwrap();
    assert_eq!(two.skip_batches(100).unwrap(), 2 * per_epoch);
    assert!(two.next().is_none());
    // Iterator form: the same matrices.
    let mut plain = ShuffledBatches::new(&store, o).unwrap();
    assert_eq!(plain.next().unwrap().unwrap(), seq[0].0);
}

#[test]
fn splits_are_disjoint_complete_and_independent_of_shard_size() {
    let splits = Splits::new(0.2, 0.2).unwrap();
    let mut per_store = Vec::new();
    for shard_contexts in [4, 7, 64] {
        let dir = tempfile::tempdir().unwrap();
        let store = write_store(dir.path(), spec(StoreDtype::F32, shard_contexts), 90);
        let counts = store.split_counts(&splits).unwrap();
        let mut sets = Vec::new();
        for split in Split::ALL {
            let it = ShuffledBatches::new(&store, options(split, splits, 32, 100, 1)).unwrap();
            assert_eq!(it.rows_per_epoch(), counts.rows_of(split));
            assert_eq!(counts.rows_of(split), counts.contexts_of(split) * K);
            let ids: BTreeSet<u64> = all(it).into_iter().flat_map(|(_, b)| b).collect();
            assert_eq!(
                ids.iter().copied().collect::<Vec<_>>(),
                split_rows(90, &splits, split)
            );
            // Whole contexts and whole documents stay together.
            for &r in &ids {
                let doc = store.context_source(r / K).unwrap().0;
                assert_eq!(splits.of_document(doc), split);
            }
            sets.push(ids);
        }
        assert!(
            sets.iter().all(|s| !s.is_empty()),
            "30 documents should fill every split"
        );
        assert!(
            sets[0].is_disjoint(&sets[1])
                && sets[0].is_disjoint(&sets[2])
                && sets[1].is_disjoint(&sets[2])
        );
        assert_eq!(sets.iter().map(|s| s.len()).sum::<usize>(), 90 * K as usize);
        per_store.push(sets);
    }
    assert_eq!(per_store[0], per_store[1]);
    assert_eq!(per_store[0], per_store[2]);
}

#[test]
fn bad_options_and_unreadable_shards_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), spec(StoreDtype::F32, 4), 3);
    let ok = options(Split::Train, Splits::ALL_TRAIN, 4, 8, 0);
    let e = |o: BatchOptions| ShuffledBatches::new(&store, o).err().unwrap().to_string();
    assert!(e(BatchOptions {
        batch_size: 0,
        ..ok
    })
    .contains("batch_size"));
    assert!(e(BatchOptions {
        buffer_rows: 0,
        ..ok
    })
    .contains("buffer_rows"));
    let msg = e(BatchOptions {
        split: Split::Test,
        ..ok
    });
    assert!(
        msg.contains("holds no rows") && msg.contains(&dir.path().display().to_string()),
        "{msg}"
    );
    let msg = e(BatchOptions {
        batch_size: 22,
        drop_last: true,
        ..ok
    });
    assert!(msg.contains("21 rows"), "{msg}");
    assert!(e(BatchOptions {
        splits: Splits {
            validation: 2.0,
            test: 0.0
        },
        ..ok
    })
    .contains("validation"));

    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), spec(StoreDtype::F32, 2), 6);
    let mut it = ShuffledBatches::new(
        &store,
        options(Split::Train, Splits::ALL_TRAIN, 100, 1000, 0),
    )
    .unwrap();
    for i in 0..store.num_shards() {
        std::fs::remove_file(store.shard_path(i)).unwrap();
    }
    let err = it.next().unwrap().unwrap_err().to_string();
    assert!(
        err.contains("shard-0000") && err.contains("missing"),
        "{err}"
    );
    assert!(it.next().is_none());
    assert!(ActivationStore::open(dir.path()).is_err());
}
