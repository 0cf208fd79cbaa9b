//! # sparse-store
//!
//! The activation store: language-model activations harvested at one hook
//! point (e.g. the residual stream of SmolLM2-135M after block 15, `d_model`
//! 576), kept on disk in shards for sparse-autoencoder training.
//!
//! - [`StoreWriter`] appends contexts (token ids, source document, the
//!   activations of the kept positions) and survives being killed at any
//!   instant: [`StoreWriter::resume`] continues with no context lost or
//!   repeated, at the cursor [`StoreWriter::contexts_written`].
//! - [`ActivationStore`] opens a store, validating the manifest against every
//!   shard, and reads shards, single contexts' tokens and row locations.
//! - [`Splits`] partitions the contexts into train / validation / test by
//!   document (see [`split`] for the rule and why).
//! - [`ShuffledBatches`] streams seeded, shuffled `f32` batches of one split
//!   in memory bounded by one shard plus a shuffle buffer.
//!
//! No printing: callers decide what to show. Errors are
//! [`sparse_core::Error`]s naming the file, and the expected and found
//! shape or size.
//!
//! ## On-disk format (version 1)
//!
//! A store is a folder:
//!
//! ```text
//! manifest.json
//! shard-00000.safetensors
//! shard-00001.safetensors
//! …
//! ```
//!
//! `manifest.json` ([`Manifest`]):
//!
//! ```json
//! {
//!   "format_version": 1,
//!   "created_by": "sparse-infer 0.1.0",
//!   "spec": {
//!     "model": {"name": "SmolLM2-135M", "file": "smollm2-135m.gguf", "sha256": "…"},
//!     "hook": "blocks.15.hook_resid_post",
//!     "d_model": 576,
//!     "dtype": "BF16",
//!     "context_len": 128,
//!     "first_position": 1,
//!     "shard_contexts": 256,
//!     "corpus": [{"path": "corpus/a.txt", "bytes": 123456, "sha256": "…"}],
//!     "extra": {"any": "harvest settings"}
//!   },
//!   "contexts": 600,
//!   "rows": 76200,
//!   "shards": [
//!     {"file": "shard-00000.safetensors", "contexts": 256, "rows": 32512, "bytes": …, "sha256": "…"},
//!     …
//!   ],
//!   "complete": true
//! }
//! ```
//!
//! `dtype` is `F32`, `F16` or `BF16`. With `k = context_len − first_position`
//! kept positions per context, every shard holds `rows = contexts · k`.
//! `complete` is `false` while a harvest runs or after it was killed; such a
//! store is readable (what exists is valid), just partial.
//!
//! Each shard is a safetensors file (little-endian, C order) holding exactly
//! these tensors, `c` being the shard's contexts:
//!
//! | tensor | dtype | shape | content |
//! |---|---|---|---|
//! | `activations` | `spec.dtype` | `[c·k, d_model]` | row `r`: context `r / k`, position `first_position + r % k` |
//! | `tokens` | `U32` | `[c, context_len]` | every token id of the context, kept positions or not |
//! | `doc_index` | `U32` | `[c]` | corpus document the context starts in (numbered across all corpus files) |
//! | `doc_offset` | `U64` | `[c]` | token offset of the context's first token within that document |
//!
//! and string metadata (`__metadata__`): `format` = `sparse-infer-activations`,
//! `format_version`, `hook`, `d_model`, `context_len`, `first_position`,
//! `dtype`, `shard_index`, `first_context`. Contexts are numbered globally in
//! harvest order: shard `i` holds contexts `first_context ..
//! first_context + c`, where `first_context` is the sum of the earlier
//! shards' contexts; global row `R` is context `R / k` at position
//! `first_position + R % k`. The activation at position `p` is the hook's
//! output at token `p` having seen `tokens[..=p]` of its context.
//!
//! Reading a store from Python (numpy + safetensors):
//!
//! ```python
//! import json, numpy as np
//! from safetensors.numpy import load_file
//! m = json.load(open(f"{store}/manifest.json"))
//! k = m["spec"]["context_len"] - m["spec"]["first_position"]
//! for s in m["shards"]:
//!     t = load_file(f"{store}/{s['file']}")   # F32 and F16 stores
//!     acts, tokens = t["activations"], t["tokens"]   # (c*k, d_model), (c, context_len)
//! ```
//!
//! numpy has no bfloat16, so `load_file` refuses a `BF16` shard; read it
//! with `safetensors.torch.load_file`, or widen the raw bits:
//!
//! ```python
//! import struct
//! raw = open(path, "rb").read(); n = struct.unpack("<Q", raw[:8])[0]
//! info = json.loads(raw[8:8 + n])["activations"]; a, b = info["data_offsets"]
//! bits = np.frombuffer(raw[8 + n + a:8 + n + b], "<u2").astype(np.uint32) << 16
//! acts = bits.view(np.float32).reshape(info["shape"])
//! ```
//!
//! ## Crash safety
//!
//! The writer keeps at most one shard in memory. A full shard is written
//! with [`sparse_core::io::write_atomic`] (temporary file, fsync, rename),
//! and only then the manifest listing it, also atomically: the manifest is
//! the commit point. A kill at any instant therefore leaves a manifest that
//! lists only complete shards; at worst a temporary file or one shard the
//! manifest does not list yet, both deleted by [`StoreWriter::resume`], and
//! the buffered contexts of the unfinished shard, which the harvester pushes
//! again from [`StoreWriter::contexts_written`]. Shard bytes are a function
//! of their content, so a resumed harvest produces byte-identical shards
//! (and SHA-256s) to an uninterrupted one. One writer per store at a time.

#![warn(missing_docs)]

pub mod batches;
pub mod reader;
pub mod shard;
pub mod spec;
pub mod split;
pub mod writer;

pub use batches::{BatchOptions, ShuffledBatches};
pub use reader::{ActivationStore, RowLocation, SplitCounts};
pub use shard::Shard;
pub use spec::{
    shard_file_name, spec_difference, CorpusFile, Manifest, ModelInfo, ShardEntry, StoreDtype,
    StoreSpec, FORMAT_VERSION, MANIFEST_FILE,
};
pub use split::{Split, Splits};
pub use writer::StoreWriter;
