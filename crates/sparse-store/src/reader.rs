//! [`ActivationStore`]: a validated, read-only view of a store folder.

use crate::shard::{self, Expect, Layout, Shard};
use crate::spec::{shard_file_name, Manifest, StoreSpec, FORMAT_VERSION, MANIFEST_FILE};
use crate::split::{Split, Splits};
use sparse_core::{Error, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// Where an activation row comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowLocation {
    /// Global context index.
    pub context: u64,
    /// Token position within the context (`first_position ≤ position < context_len`).
    pub position: usize,
    /// Shard holding the row.
    pub shard: usize,
    /// Row index within that shard.
    pub row_in_shard: usize,
}

/// Contexts and rows of each split of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SplitCounts {
    /// Contexts per split, indexed `[train, validation, test]`.
    pub contexts: [u64; 3],
    /// Activation rows per split, indexed `[train, validation, test]`.
    pub rows: [u64; 3],
}

impl SplitCounts {
    /// Contexts of `split`.
    pub fn contexts_of(&self, split: Split) -> u64 {
        self.contexts[split.index()]
    }

    /// Rows of `split`.
    pub fn rows_of(&self, split: Split) -> u64 {
        self.rows[split.index()]
    }
}

/// A store opened for reading. Opening checks the manifest and every listed
/// shard's size and safetensors header (tensor names, dtypes, shapes,
/// metadata) without reading the activations, so it is quick on a large
/// store; [`Self::verify_checksums`] re-hashes every byte. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ActivationStore {
    dir: PathBuf,
    manifest: Manifest,
    /// Global index of each shard's first context, plus the total at the end.
    context_starts: Vec<u64>,
    layouts: Vec<Layout>,
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl ActivationStore {
    /// Opens and validates the store in `dir` (see the type documentation).
    /// An incomplete store (a harvest still running or killed) opens too:
    /// [`Self::is_complete`] says so.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&manifest_path).map_err(|source| Error::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
            format_err(
                &manifest_path,
                format!("not a valid activation-store manifest: {e}"),
            )
        })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(format_err(
                &manifest_path,
                format!(
                    "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                    manifest.format_version
                ),
            ));
        }
        manifest
            .spec
            .validate()
            .map_err(|e| format_err(&manifest_path, format!("invalid spec: {e}")))?;
        let k = manifest.spec.rows_per_context() as u64;
        let mut context_starts = Vec::with_capacity(manifest.shards.len() + 1);
        let (mut contexts, mut rows) = (0u64, 0u64);
        for (i, entry) in manifest.shards.iter().enumerate() {
            let want = shard_file_name(i);
            if entry.file != want {
                return Err(format_err(
                    &manifest_path,
                    format!("shard {i} is listed as {:?}, expected {want:?}", entry.file),
                ));
            }
            // Bounding contexts by shard_contexts also bounds every size computed from them.
            let max = manifest.spec.shard_contexts as u64;
            if !(1..=max).contains(&entry.contexts) || entry.rows != entry.contexts * k {
                return Err(format_err(
                    &manifest_path,
                    format!(
                        "shard {} lists {} contexts and {} rows; expected 1 to {max} contexts (shard_contexts) and rows = contexts × {k}",
                        entry.file, entry.contexts, entry.rows
                    ),
                ));
            }
            context_starts.push(contexts);
            contexts += entry.contexts;
            rows += entry.rows;
        }
        context_starts.push(contexts);
        if (contexts, rows) != (manifest.contexts, manifest.rows) {
            return Err(format_err(
                &manifest_path,
                format!(
                    "totals say {} contexts and {} rows, the shard list sums to {contexts} contexts and {rows} rows",
                    manifest.contexts, manifest.rows
                ),
            ));
        }
        let mut store = ActivationStore {
            dir: dir.to_path_buf(),
            manifest,
            context_starts,
            layouts: Vec::new(),
        };
        for i in 0..store.num_shards() {
            let layout = store.read_header(i)?;
            store.layouts.push(layout);
        }
        Ok(store)
    }

    fn expect(&self, i: usize) -> Expect<'_> {
        Expect {
            spec: &self.manifest.spec,
            index: i,
            first_context: self.context_starts[i],
            contexts: self.manifest.shards[i].contexts,
        }
    }

    /// Opens shard `i` and checks that its size is the recorded one.
    fn open_shard(&self, i: usize) -> Result<std::fs::File> {
        let path = self.shard_path(i);
        let entry = &self.manifest.shards[i];
        let file = std::fs::File::open(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source: if source.kind() == std::io::ErrorKind::NotFound {
                std::io::Error::new(
                    source.kind(),
                    format!("listed in {MANIFEST_FILE} but missing"),
                )
            } else {
                source
            },
        })?;
        let len = file
            .metadata()
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?
            .len();
        if len != entry.bytes {
            return Err(format_err(
                &path,
                format!(
                    "expected {} bytes (as {MANIFEST_FILE} records), found {len} bytes: truncated or replaced",
                    entry.bytes
                ),
            ));
        }
        Ok(file)
    }

    fn read_header(&self, i: usize) -> Result<Layout> {
        let mut file = std::io::BufReader::new(self.open_shard(i)?);
        shard::read_layout(
            &self.shard_path(i),
            &mut file,
            self.manifest.shards[i].bytes,
            &self.expect(i),
        )
    }

    /// `len` bytes of shard `i` from byte `offset`.
    fn read_range(&self, i: usize, offset: u64, len: usize) -> Result<Vec<u8>> {
        let path = self.shard_path(i);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let mut file = self.open_shard(i)?;
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf).map_err(io)?;
        Ok(buf)
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed `manifest.json`.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// What the store holds.
    pub fn spec(&self) -> &StoreSpec {
        &self.manifest.spec
    }

    /// Whether the writer finished; `false` for a harvest still running or killed.
    pub fn is_complete(&self) -> bool {
        self.manifest.complete
    }

    /// Contexts in the store.
    pub fn contexts(&self) -> u64 {
        self.manifest.contexts
    }

    /// Activation rows in the store (`contexts × rows_per_context`).
    pub fn rows(&self) -> u64 {
        self.manifest.rows
    }

    /// Activation rows per context (`context_len − first_position`).
    pub fn rows_per_context(&self) -> usize {
        self.manifest.spec.rows_per_context()
    }

    /// Width of an activation row.
    pub fn d_model(&self) -> usize {
        self.manifest.spec.d_model
    }

    /// Number of shards.
    pub fn num_shards(&self) -> usize {
        self.manifest.shards.len()
    }

    /// Path of shard `i` (panics if `i ≥ num_shards()`).
    pub fn shard_path(&self, i: usize) -> PathBuf {
        self.dir.join(&self.manifest.shards[i].file)
    }

    /// Global context indices held by shard `i` (panics if `i ≥ num_shards()`).
    pub fn shard_context_range(&self, i: usize) -> std::ops::Range<u64> {
        self.context_starts[i]..self.context_starts[i + 1]
    }

    fn check_shard_index(&self, i: usize) -> Result<()> {
        if i >= self.num_shards() {
            return Err(Error::invalid(
                "shard",
                i,
                &format!(
                    "the store at {} has {} shards",
                    self.dir.display(),
                    self.num_shards()
                ),
            ));
        }
        Ok(())
    }

    /// Reads shard `i` whole, re-validating its header, with activations
    /// converted to `f32` (memory: the file plus the `f32` activations).
    pub fn read_shard(&self, i: usize) -> Result<Shard> {
        self.check_shard_index(i)?;
        let path = self.shard_path(i);
        let mut file = self.open_shard(i)?;
        let mut bytes = Vec::with_capacity(self.manifest.shards[i].bytes as usize);
        file.read_to_end(&mut bytes).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        shard::decode(&path, &bytes, &self.expect(i))
    }

    /// The shard holding global context `context`, and the context's index in it.
    fn locate_context(&self, context: u64) -> Result<(usize, usize)> {
        if context >= self.contexts() {
            return Err(Error::invalid(
                "context",
                context,
                &format!(
                    "the store at {} holds {} contexts",
                    self.dir.display(),
                    self.contexts()
                ),
            ));
        }
        let shard = self.context_starts.partition_point(|&s| s <= context) - 1;
        Ok((shard, (context - self.context_starts[shard]) as usize))
    }

    /// The `context_len` token ids of global context `context` (reads only them).
    pub fn context_tokens(&self, context: u64) -> Result<Vec<u32>> {
        let (s, c) = self.locate_context(context)?;
        let l = self.manifest.spec.context_len;
        let offset = self.layouts[s].tokens + (c * l * 4) as u64;
        Ok(shard::u32s(&self.read_range(s, offset, l * 4)?))
    }

    /// `(doc_index, doc_offset)` of global context `context`: the document
    /// it starts in and its first token's offset there.
    pub fn context_source(&self, context: u64) -> Result<(u32, u64)> {
        let (s, c) = self.locate_context(context)?;
        let d = self.read_range(s, self.layouts[s].doc_index + 4 * c as u64, 4)?;
        let o = self.read_range(s, self.layouts[s].doc_offset + 8 * c as u64, 8)?;
        Ok((shard::u32s(&d)[0], shard::u64s(&o)[0]))
    }

    /// The `doc_index` of every context of shard `i` (reads only them).
    pub fn shard_doc_index(&self, i: usize) -> Result<Vec<u32>> {
        self.check_shard_index(i)?;
        let n = self.manifest.shards[i].contexts as usize;
        Ok(shard::u32s(&self.read_range(
            i,
            self.layouts[i].doc_index,
            4 * n,
        )?))
    }

    /// Where global row `row` comes from: rows are stored context after
    /// context, `rows_per_context` each, in position order.
    pub fn locate_row(&self, row: u64) -> Result<RowLocation> {
        if row >= self.rows() {
            return Err(Error::invalid(
                "row",
                row,
                &format!(
                    "the store at {} holds {} rows",
                    self.dir.display(),
                    self.rows()
                ),
            ));
        }
        let k = self.rows_per_context() as u64;
        let context = row / k;
        let (shard, c) = self.locate_context(context)?;
        Ok(RowLocation {
            context,
            position: self.manifest.spec.first_position + (row % k) as usize,
            shard,
            row_in_shard: c * k as usize + (row % k) as usize,
        })
    }

    /// The global row of `context` at token `position`; an error for a
    /// position that is not stored (e.g. below `first_position`).
    pub fn row_of(&self, context: u64, position: usize) -> Result<u64> {
        let spec = &self.manifest.spec;
        if context >= self.contexts()
            || !(spec.first_position..spec.context_len).contains(&position)
        {
            return Err(Error::invalid(
                "context, position",
                format!("{context}, {position}"),
                &format!(
                    "the store holds contexts 0..{} at positions {}..{}",
                    self.contexts(),
                    spec.first_position,
                    spec.context_len
                ),
            ));
        }
        Ok(context * self.rows_per_context() as u64 + (position - spec.first_position) as u64)
    }

    /// Contexts and rows of each split (reads every shard's `doc_index`).
    pub fn split_counts(&self, splits: &Splits) -> Result<SplitCounts> {
        splits.validate()?;
        let k = self.rows_per_context() as u64;
        let mut counts = SplitCounts::default();
        for i in 0..self.num_shards() {
            for doc in self.shard_doc_index(i)? {
                let s = splits.of_document(doc).index();
                counts.contexts[s] += 1;
                counts.rows[s] += k;
            }
        }
        Ok(counts)
    }

    /// Re-hashes every shard and compares with the manifest's SHA-256
    /// (reads the whole store).
    pub fn verify_checksums(&self) -> Result<()> {
        for (i, entry) in self.manifest.shards.iter().enumerate() {
            let path = self.shard_path(i);
            let found = sparse_core::checkpoint::sha256_file(&path)?;
            if found != entry.sha256 {
                return Err(format_err(
                    &path,
                    format!(
                        "SHA-256 is {found}, {MANIFEST_FILE} records {}: the file changed after it was written",
                        entry.sha256
                    ),
                ));
            }
        }
        Ok(())
    }
}
