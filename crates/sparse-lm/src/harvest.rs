//! Harvesting: text files → tokens → fixed-length contexts → the activations of one
//! hook point → an activation store ([`sparse_store`]).
//!
//! The context stream ([`crate::contexts`]) depends only on the file list and the
//! tokenizer, and the store commits whole shards atomically, so a killed harvest
//! resumes by skipping the contexts the store already holds: no token is stored
//! twice or lost. Memory is bounded by one document, one batch of activations and
//! one shard.

use crate::contexts::{Context, ContextStream};
use crate::corpus::expand_inputs;
use crate::error::{LmError, Result};
use crate::hooks::HookPoint;
use crate::model::LanguageModel;
use crate::tokenizer::LmTokenizer;
use sparse_store::{
    spec_difference, ActivationStore, CorpusFile, ModelInfo, StoreDtype, StoreSpec, StoreWriter,
    MANIFEST_FILE,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to harvest and how.
#[derive(Clone, Debug)]
pub struct HarvestConfig {
    /// Where in the model to read activations.
    pub hook: HookPoint,
    /// Tokens per context (the model's sequence length per forward pass).
    pub context: usize,
    /// First position of each context that is stored (1 drops the attention sink at 0).
    pub first_position: usize,
    /// Contexts per forward pass.
    pub batch: usize,
    /// Stop once the store holds at least this many activation rows (stored tokens).
    pub max_rows: u64,
    /// Storage precision of the activations.
    pub dtype: StoreDtype,
    /// Contexts per shard file.
    pub shard_contexts: usize,
}

/// Where a harvest stands, reported after every batch.
#[derive(Clone, Debug)]
pub struct HarvestProgress {
    /// Activation rows in the store (committed or buffered).
    pub rows: u64,
    /// The target number of rows.
    pub max_rows: u64,
    /// Tokens run through the model by this process so far.
    pub model_tokens: u64,
    /// Seconds since this process started harvesting.
    pub seconds: f64,
}

/// The outcome of a harvest.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HarvestSummary {
    /// The store folder.
    pub store: PathBuf,
    /// Hook name (e.g. `blocks.15.hook_resid_post`).
    pub hook: String,
    /// Contexts in the store.
    pub contexts: u64,
    /// Activation rows in the store.
    pub rows: u64,
    /// Contexts the store already held when this process started (resume point).
    pub resumed_from_contexts: u64,
    /// True when the text ran out before `max_rows` was reached.
    pub text_exhausted: bool,
    /// Tokens run through the model by this process.
    pub model_tokens: u64,
    /// Wall seconds of this process's harvesting (model loading excluded).
    pub seconds: f64,
    /// `model_tokens / seconds`.
    pub model_tokens_per_second: f64,
}

impl HarvestConfig {
    fn validate(&self, model: &LanguageModel) -> Result<()> {
        let info = model.info();
        self.hook.check(info.n_layers)?;
        if self.context < 2 || self.context > info.context_length {
            return Err(LmError::invalid(
                "context",
                format!(
                    "{} tokens; must be between 2 and the model's context length {}",
                    self.context, info.context_length
                ),
            ));
        }
        if self.first_position >= self.context {
            return Err(LmError::invalid(
                "first_position",
                format!(
                    "{} must be smaller than the context length {}",
                    self.first_position, self.context
                ),
            ));
        }
        if self.batch == 0 || self.shard_contexts == 0 || self.max_rows == 0 {
            return Err(LmError::invalid(
                "batch / shard_contexts / tokens",
                "must all be at least 1",
            ));
        }
        Ok(())
    }
}

/// sha256 and size of each file, as the store's manifest records them.
fn describe_corpus(files: &[PathBuf]) -> Result<Vec<CorpusFile>> {
    files
        .iter()
        .map(|path| {
            let bytes = std::fs::metadata(path)
                .map_err(|source| LmError::Io {
                    path: path.clone(),
                    source,
                })?
                .len();
            Ok(CorpusFile {
                path: path.display().to_string(),
                bytes,
                sha256: sparse_core::checkpoint::sha256_file(path)?,
            })
        })
        .collect()
}

/// The store spec a harvest of `files` with `config` writes (and must match on resume).
pub fn store_spec(
    model: &LanguageModel,
    files: &[PathBuf],
    config: &HarvestConfig,
) -> Result<StoreSpec> {
    let info = model.info();
    Ok(StoreSpec {
        model: ModelInfo {
            name: info.name.clone(),
            file: info
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: info.file_sha256.clone(),
        },
        hook: config.hook.to_string(),
        d_model: info.d_model,
        dtype: config.dtype,
        context_len: config.context,
        first_position: config.first_position,
        shard_contexts: config.shard_contexts,
        corpus: describe_corpus(files)?,
        extra: serde_json::json!({
            "contexts": "within documents; a document's last partial context is dropped",
            "special_tokens_added": false,
        }),
    })
}

/// Harvests the activations at `config.hook` of the text in `inputs` (files or
/// folders, see [`expand_inputs`]) into the store at `dir`, creating it or resuming
/// it. A store that is already complete is returned as it is.
pub fn harvest(
    model: &LanguageModel,
    tokenizer: &LmTokenizer,
    inputs: &[PathBuf],
    dir: &Path,
    config: &HarvestConfig,
    on_progress: &mut dyn FnMut(&HarvestProgress),
) -> Result<HarvestSummary> {
    config.validate(model)?;
    let files = expand_inputs(inputs)?;
    let spec = store_spec(model, &files, config)?;
    let kept = spec.rows_per_context() as u64;
    let d_model = spec.d_model;
    let target_contexts = config.max_rows.div_ceil(kept);
    let started = Instant::now();

    if dir.join(MANIFEST_FILE).exists() {
        let store = ActivationStore::open(dir)?;
        if let Some((field, stored, given)) = spec_difference(store.spec(), &spec) {
            return Err(LmError::Data(sparse_core::Error::Format {
                path: dir.join(MANIFEST_FILE),
                reason: format!(
                    "the store was harvested with other settings: `{field}` is {stored} there, {given} now (choose another --out)"
                ),
            }));
        }
        if store.is_complete() {
            return Ok(summary(
                dir,
                &spec,
                &store,
                store.contexts(),
                false,
                0,
                started,
            ));
        }
    }
    let mut writer = StoreWriter::open_for_append(dir, spec.clone())?;
    let resumed_from = writer.contexts_written();
    let mut stream = ContextStream::new(files, config.context, |text: &str| {
        tokenizer.encode(text).map_err(|e| e.to_string())
    });
    // The stream is deterministic: skip what the store already holds.
    for _ in 0..resumed_from.min(target_contexts) {
        match stream.next() {
            Some(item) => {
                item?;
            }
            None => break,
        }
    }

    let mut pushed = resumed_from;
    let mut model_tokens = 0u64;
    let mut text_exhausted = false;
    let mut batch: Vec<Context> = Vec::with_capacity(config.batch);
    let mut tokens: Vec<u32> = Vec::with_capacity(config.batch * config.context);
    while pushed < target_contexts {
        batch.clear();
        // Batches start at multiples of `batch` from context 0, also after a resume, so
        // every context is computed in the same batch as in an uninterrupted run.
        let to_boundary = config.batch - (pushed % config.batch as u64) as usize;
        let want = ((target_contexts - pushed) as usize).min(to_boundary);
        while batch.len() < want {
            match stream.next() {
                Some(item) => batch.push(item?),
                None => {
                    text_exhausted = true;
                    break;
                }
            }
        }
        if batch.is_empty() {
            break;
        }
        tokens.clear();
        for c in &batch {
            tokens.extend_from_slice(&c.tokens);
        }
        let acts = model.hook_activations(&tokens, batch.len(), config.context, &[config.hook])?;
        let acts = &acts[0];
        for (i, c) in batch.iter().enumerate() {
            let from = (i * config.context + config.first_position) * d_model;
            let to = (i + 1) * config.context * d_model;
            writer.push_context(&c.tokens, c.doc_index, c.doc_offset, &acts[from..to])?;
        }
        pushed += batch.len() as u64;
        model_tokens += tokens.len() as u64;
        on_progress(&HarvestProgress {
            rows: pushed * kept,
            max_rows: target_contexts * kept,
            model_tokens,
            seconds: started.elapsed().as_secs_f64(),
        });
        if text_exhausted {
            break;
        }
    }
    let store = writer.finish()?;
    Ok(summary(
        dir,
        &spec,
        &store,
        resumed_from,
        text_exhausted,
        model_tokens,
        started,
    ))
}

fn summary(
    dir: &Path,
    spec: &StoreSpec,
    store: &ActivationStore,
    resumed_from_contexts: u64,
    text_exhausted: bool,
    model_tokens: u64,
    started: Instant,
) -> HarvestSummary {
    let seconds = started.elapsed().as_secs_f64();
    HarvestSummary {
        store: dir.to_path_buf(),
        hook: spec.hook.clone(),
        contexts: store.contexts(),
        rows: store.rows(),
        resumed_from_contexts,
        text_exhausted,
        model_tokens,
        seconds,
        model_tokens_per_second: if seconds > 0.0 {
            model_tokens as f64 / seconds
        } else {
            0.0
        },
    }
}
