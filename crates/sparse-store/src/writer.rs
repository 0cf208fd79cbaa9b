//! [`StoreWriter`]: appends contexts to a store, one shard at a time, so
//! that a kill at any instant leaves a store that opens and resumes.

use crate::reader::ActivationStore;
use crate::shard::{self, Expect};
use crate::spec::{
    parse_shard_file_name, shard_file_name, spec_difference, Manifest, ShardEntry, StoreSpec,
    FORMAT_VERSION, MANIFEST_FILE,
};
use sparse_core::io::write_atomic;
use sparse_core::{Error, Result};
use std::path::{Path, PathBuf};

/// Writes a store: buffers pushed contexts in memory (at most one shard),
/// writes each full shard atomically and only then the manifest (also
/// atomically). The manifest is the commit point: a shard not yet listed in
/// it does not exist for readers and is deleted by [`StoreWriter::resume`].
///
/// Memory: the buffered shard in the storage dtype, plus its encoded bytes
/// while it is being written.
///
/// Contexts still buffered when the writer is dropped without
/// [`StoreWriter::finish`] are lost by design: the manifest never claims them,
/// so a resumed harvest pushes them again.
#[derive(Debug)]
pub struct StoreWriter {
    dir: PathBuf,
    manifest: Manifest,
    tokens: Vec<u32>,
    doc_index: Vec<u32>,
    doc_offset: Vec<u64>,
    /// Buffered activations, already in the storage dtype.
    activations: Vec<u8>,
    removed: Vec<PathBuf>,
    /// Set when a shard or manifest write failed: the on-disk state is then
    /// whatever the last successful manifest says, and only a resume knows it.
    failed: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl StoreWriter {
    /// Starts a new store in `dir` (created if missing) and writes its empty
    /// manifest. Fails if `dir` already holds a manifest or shard files;
    /// deletes temporaries of a run killed before its first manifest.
    pub fn create(dir: &Path, spec: StoreSpec) -> Result<Self> {
        spec.validate()?;
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let manifest_path = dir.join(MANIFEST_FILE);
        if manifest_path.exists() {
            return Err(format_err(
                &manifest_path,
                "a store already exists here; resume it (StoreWriter::resume) or choose another folder",
            ));
        }
        for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
            let name = entry.map_err(io_err(dir))?.file_name();
            if parse_shard_file_name(&name.to_string_lossy()).is_some() {
                return Err(format_err(
                    &dir.join(&name),
                    format!(
                        "shard file without a {MANIFEST_FILE}; refusing to create a store over it (remove the folder's shards first)"
                    ),
                ));
            }
        }
        // A run killed while writing its very first manifest leaves only a temporary.
        let removed = clean_strays(dir, 0)?;
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            created_by: format!("sparse-infer {}", env!("CARGO_PKG_VERSION")),
            spec,
            contexts: 0,
            rows: 0,
            shards: Vec::new(),
            complete: false,
        };
        let writer = Self::with_manifest(dir, manifest, removed);
        writer.write_manifest()?;
        Ok(writer)
    }

    /// Reopens the incomplete store in `dir` to append to it. The store is
    /// validated as [`ActivationStore::open`] does; `spec` must equal the
    /// stored spec (the error names the first differing field, both values
    /// and the manifest). Temporary files of a killed run and shards the
    /// manifest does not list are deleted ([`Self::removed_on_resume`]).
    /// The harvester then skips [`Self::contexts_written`] contexts of its
    /// deterministic stream.
    pub fn resume(dir: &Path, spec: StoreSpec) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        if !manifest_path.exists() {
            return Err(Error::Io {
                path: manifest_path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no store to resume here (start one with StoreWriter::create)",
                ),
            });
        }
        let store = ActivationStore::open(dir)?;
        let manifest = store.manifest().clone();
        if let Some((field, stored, given)) = spec_difference(&manifest.spec, &spec) {
            return Err(format_err(
                &manifest_path,
                format!(
                    "cannot resume: spec field `{field}` differs: the store holds {stored}, the harvest gives {given}"
                ),
            ));
        }
        if manifest.complete {
            return Err(format_err(
                &manifest_path,
                format!(
                    "the store is complete ({} contexts); nothing to resume",
                    manifest.contexts
                ),
            ));
        }
        let removed = clean_strays(dir, manifest.shards.len())?;
        Ok(Self::with_manifest(dir, manifest, removed))
    }

    /// [`Self::resume`] if `dir` holds a manifest, else [`Self::create`].
    pub fn open_for_append(dir: &Path, spec: StoreSpec) -> Result<Self> {
        if dir.join(MANIFEST_FILE).exists() {
            Self::resume(dir, spec)
        } else {
            Self::create(dir, spec)
        }
    }

    fn with_manifest(dir: &Path, manifest: Manifest, removed: Vec<PathBuf>) -> Self {
        let spec = &manifest.spec;
        let n = spec.shard_contexts;
        StoreWriter {
            dir: dir.to_path_buf(),
            tokens: Vec::with_capacity(n * spec.context_len),
            doc_index: Vec::with_capacity(n),
            doc_offset: Vec::with_capacity(n),
            activations: Vec::with_capacity(
                n * spec.rows_per_context() * spec.d_model * spec.dtype.size(),
            ),
            manifest,
            removed,
            failed: false,
        }
    }

    /// The store's spec.
    pub fn spec(&self) -> &StoreSpec {
        &self.manifest.spec
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Contexts durably written (listed in the manifest): the resume cursor.
    pub fn contexts_written(&self) -> u64 {
        self.manifest.contexts
    }

    /// Contexts pushed so far, buffered ones included.
    pub fn contexts_pushed(&self) -> u64 {
        self.manifest.contexts + self.doc_index.len() as u64
    }

    /// Shards durably written.
    pub fn shards_written(&self) -> usize {
        self.manifest.shards.len()
    }

    /// Files deleted on opening: temporary files of a killed run and, on
    /// [`Self::resume`], shards the manifest does not list.
    pub fn removed_on_resume(&self) -> &[PathBuf] {
        &self.removed
    }

    /// Appends one context: its `context_len` token ids, the document it
    /// starts in and its token offset there, and the activations of the kept
    /// positions, `(context_len − first_position) × d_model` row-major.
    /// Wrong lengths, non-finite values and values the storage dtype cannot
    /// hold are errors that leave the writer unchanged. Writes a shard (and
    /// the manifest) when one is full.
    pub fn push_context(
        &mut self,
        tokens: &[u32],
        doc_index: u32,
        doc_token_offset: u64,
        activations: &[f32],
    ) -> Result<()> {
        self.check_usable()?;
        let spec = &self.manifest.spec;
        let context = self.contexts_pushed();
        let (k, d) = (spec.rows_per_context(), spec.d_model);
        if tokens.len() != spec.context_len {
            return Err(Error::shape(
                format!("push_context (context {context}) tokens"),
                format!("{} values (context_len)", spec.context_len),
                format!("{} values", tokens.len()),
            ));
        }
        if activations.len() != k * d {
            return Err(Error::shape(
                format!("push_context (context {context}) activations"),
                format!(
                    "{k} × {d} = {} values (positions {}..{} × d_model)",
                    k * d,
                    spec.first_position,
                    spec.context_len
                ),
                format!("{} values", activations.len()),
            ));
        }
        let what = || {
            format!(
                "push_context (context {context}) activations (row r is position {} + r)",
                spec.first_position
            )
        };
        if let Some(p) = activations.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: what(),
                row: p / d,
                col: p % d,
                value: activations[p],
            });
        }
        if let Err(p) = spec.dtype.encode(activations, &mut self.activations) {
            return Err(Error::invalid(
                "activations",
                activations[p],
                &format!(
                    "{} at row {}, column {}: overflows the storage dtype {} (store as BF16 or F32)",
                    what(),
                    p / d,
                    p % d,
                    spec.dtype.name()
                ),
            ));
        }
        self.tokens.extend_from_slice(tokens);
        self.doc_index.push(doc_index);
        self.doc_offset.push(doc_token_offset);
        if self.doc_index.len() == self.manifest.spec.shard_contexts {
            self.flush_shard()?;
        }
        Ok(())
    }

    /// Writes the buffered contexts as a (possibly partial) last shard, marks
    /// the manifest complete, and returns the store opened for reading.
    pub fn finish(mut self) -> Result<ActivationStore> {
        self.check_usable()?;
        if !self.doc_index.is_empty() {
            self.flush_shard()?;
        }
        self.manifest.complete = true;
        self.write_manifest()?;
        ActivationStore::open(&self.dir)
    }

    fn check_usable(&self) -> Result<()> {
        if self.failed {
            return Err(format_err(
                &self.dir,
                "an earlier write to this store failed; reopen it with StoreWriter::resume",
            ));
        }
        Ok(())
    }

    fn flush_shard(&mut self) -> Result<()> {
        self.failed = true;
        let index = self.manifest.shards.len();
        let contexts = self.doc_index.len() as u64;
        let spec = &self.manifest.spec;
        let bytes = shard::encode(
            &Expect {
                spec,
                index,
                first_context: self.manifest.contexts,
                contexts,
            },
            &self.doc_offset,
            &self.doc_index,
            &self.tokens,
            &self.activations,
        );
        let file = shard_file_name(index);
        // Order matters: the shard is complete on disk before the manifest names it.
        write_atomic(&self.dir.join(&file), &bytes)?;
        let rows = contexts * spec.rows_per_context() as u64;
        self.manifest.shards.push(ShardEntry {
            file,
            contexts,
            rows,
            bytes: bytes.len() as u64,
            sha256: shard::sha256_hex(&bytes),
        });
        drop(bytes);
        self.manifest.contexts += contexts;
        self.manifest.rows += rows;
        self.write_manifest()?;
        self.tokens.clear();
        self.doc_index.clear();
        self.doc_offset.clear();
        self.activations.clear();
        self.failed = false;
        Ok(())
    }

    fn write_manifest(&self) -> Result<()> {
        let path = self.dir.join(MANIFEST_FILE);
        let json = serde_json::to_vec_pretty(&self.manifest)
            .map_err(|e| format_err(&path, format!("cannot serialise the manifest: {e}")))?;
        write_atomic(&path, &json)
    }
}

/// Deletes what a killed writer can leave behind: `write_atomic` temporaries
/// (`.NAME.tmp-PID`) of the manifest or a shard, and shard files from index
/// `listed` on, which were renamed into place but never committed to the
/// manifest. Other files are left alone.
fn clean_strays(dir: &Path, listed: usize) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let mut names: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        names.push(
            entry
                .map_err(io_err(dir))?
                .file_name()
                .to_string_lossy()
                .into_owned(),
        );
    }
    names.sort();
    for name in names {
        let temp_of = name
            .strip_prefix('.')
            .and_then(|n| n.split_once(".tmp-"))
            .map(|(target, _)| target);
        let stray = match temp_of {
            Some(target) => target == MANIFEST_FILE || parse_shard_file_name(target).is_some(),
            None => parse_shard_file_name(&name).is_some_and(|i| i >= listed),
        };
        if stray {
            let path = dir.join(&name);
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            removed.push(path);
        }
    }
    Ok(removed)
}
