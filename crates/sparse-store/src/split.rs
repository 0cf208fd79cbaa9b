//! Train / validation / test partition of a store, by document.
//!
//! A context belongs to the split of the document it starts in
//! (`doc_index`), chosen by a fixed hash of that index: `u = h(doc) ∈ [0, 1)`
//! goes to test if `u < test`, to validation if `u < test + validation`,
//! else to train. Why this rule:
//!
//! - by document rather than by context: consecutive contexts of one
//!   document share topic, names and phrasing, so splitting them between
//!   train and test would leak; only a context that straddles a document
//!   boundary carries the next document's first tokens across;
//! - by hash rather than by contiguous block: a block at the end of the
//!   stream would be the last corpus file alone, a different distribution;
//!   the hash spreads every split over the whole corpus;
//! - a function of the document index alone: shard size, resuming, or a
//!   store grown by appending never moves a context to another split, and
//!   every reader agrees on the partition without storing it.
//!
//! Fractions are fractions of documents, hence of contexts only on average
//! (documents differ in length); [`crate::ActivationStore::split_counts`]
//! gives the realised counts. The hash has no seed on purpose: a test set
//! must not change with the training seed.

use serde::{Deserialize, Serialize};
use sparse_core::{Error, Result};

/// One part of the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Model fitting.
    Train,
    /// Model and hyperparameter selection.
    Validation,
    /// Reported numbers only.
    Test,
}

impl Split {
    /// All three, in the order `[train, validation, test]`.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// Position in [`Split::ALL`].
    pub fn index(self) -> usize {
        match self {
            Split::Train => 0,
            Split::Validation => 1,
            Split::Test => 2,
        }
    }
}

/// The fractions of documents held out; train gets the rest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    /// Fraction of documents in the validation split.
    pub validation: f64,
    /// Fraction of documents in the test split.
    pub test: f64,
}

impl Splits {
    /// Every context in train.
    pub const ALL_TRAIN: Splits = Splits {
        validation: 0.0,
        test: 0.0,
    };

    /// Checked constructor: both fractions in `[0, 1]`, their sum at most 1.
    pub fn new(validation: f64, test: f64) -> Result<Self> {
        let s = Splits { validation, test };
        s.validate()?;
        Ok(s)
    }

    /// Fails unless both fractions are in `[0, 1]` and sum to at most 1.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("validation", self.validation), ("test", self.test)] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::invalid(name, v, "must be a fraction in [0, 1]"));
            }
        }
        if self.validation + self.test > 1.0 {
            return Err(Error::invalid(
                "validation + test",
                self.validation + self.test,
                "the held-out fractions must sum to at most 1",
            ));
        }
        Ok(())
    }

    /// The split of every context that starts in document `doc_index`.
    pub fn of_document(&self, doc_index: u32) -> Split {
        let u = unit_hash(doc_index);
        if u < self.test {
            Split::Test
        } else if u < self.test + self.validation {
            Split::Validation
        } else {
            Split::Train
        }
    }
}

/// A fixed, well-mixed map of a document index to `[0, 1)`: SplitMix64's
/// finaliser of the index offset by a constant (so document 0 is not 0).
fn unit_hash(doc_index: u32) -> f64 {
    let mut z = (doc_index as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_met_on_many_documents_and_nested() {
        let s = Splits::new(0.1, 0.05).unwrap();
        let mut n = [0usize; 3];
        for d in 0..100_000 {
            n[s.of_document(d).index()] += 1;
        }
        // Binomial standard deviations are below 100 here.
        assert!((n[1] as f64 - 10_000.0).abs() < 400.0, "{n:?}");
        assert!((n[2] as f64 - 5_000.0).abs() < 300.0, "{n:?}");
        // Growing the test fraction only moves documents into test.
        let t = Splits::new(0.1, 0.06).unwrap();
        for d in 0..10_000 {
            if s.of_document(d) == Split::Test {
                assert_eq!(t.of_document(d), Split::Test);
            }
        }
        assert!((0..1000).all(|d| Splits::ALL_TRAIN.of_document(d) == Split::Train));
        assert!((0..1000).all(|d| Splits::new(0.0, 1.0).unwrap().of_document(d) == Split::Test));
    }

    #[test]
    fn bad_fractions_are_rejected() {
        assert!(Splits::new(-0.1, 0.0).is_err());
        assert!(Splits::new(0.0, f64::NAN).is_err());
        let e = Splits::new(0.6, 0.6).unwrap_err().to_string();
        assert!(e.contains("1.2"), "{e}");
    }
}
