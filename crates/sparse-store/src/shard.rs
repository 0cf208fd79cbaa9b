//! One shard file: encoding (deterministic bytes), strict header validation
//! against what the manifest says, and decoding into a [`Shard`].

use crate::spec::{StoreDtype, StoreSpec, FORMAT_VERSION, SHARD_FORMAT};
use safetensors::Dtype;
use serde_json::{json, Map, Value};
use sparse_core::{Error, Matrix, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// Headers longer than this are refused before allocating (ours are < 1 KiB).
const MAX_HEADER_LEN: u64 = 1 << 20;

/// A shard read into memory: activations as `f32` plus the context records.
#[derive(Clone, Debug, PartialEq)]
pub struct Shard {
    /// Position of the shard in the store.
    pub index: usize,
    /// Global index of the shard's first context.
    pub first_context: u64,
    /// Tokens per context (`spec.context_len`).
    pub context_len: usize,
    /// First kept position (`spec.first_position`).
    pub first_position: usize,
    /// `(contexts · rows_per_context) × d_model`; row `r` is context
    /// `r / rows_per_context` at position `first_position + r % rows_per_context`.
    pub activations: Matrix,
    /// `contexts × context_len` token ids, row-major (every position, kept or not).
    pub tokens: Vec<u32>,
    /// Per context: index of the corpus document the context starts in.
    pub doc_index: Vec<u32>,
    /// Per context: token offset of the context's first token within that document.
    pub doc_offset: Vec<u64>,
}

impl Shard {
    /// Contexts in the shard.
    pub fn contexts(&self) -> usize {
        self.doc_index.len()
    }

    /// Activation rows per context (`context_len − first_position`).
    pub fn rows_per_context(&self) -> usize {
        self.context_len - self.first_position
    }

    /// Global index of the shard's first activation row.
    pub fn first_row(&self) -> u64 {
        self.first_context * self.rows_per_context() as u64
    }

    /// The `context_len` tokens of local context `c` (panics if `c ≥ contexts()`).
    pub fn context_tokens(&self, c: usize) -> &[u32] {
        &self.tokens[c * self.context_len..(c + 1) * self.context_len]
    }

    /// The `rows_per_context × d_model` activations of local context `c` (panics if `c ≥ contexts()`).
    pub fn context_activations(&self, c: usize) -> Matrix {
        let k = self.rows_per_context();
        self.activations.select_rows(c * k..(c + 1) * k)
    }
}

/// What a shard must hold, from the manifest.
pub(crate) struct Expect<'a> {
    pub spec: &'a StoreSpec,
    pub index: usize,
    pub first_context: u64,
    pub contexts: u64,
}

/// Byte offsets, from the start of the file, of each tensor's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub activations: u64,
    pub tokens: u64,
    pub doc_index: u64,
    pub doc_offset: u64,
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The safetensors `__metadata__` of a shard: every value a string, as the format requires.
fn shard_metadata(e: &Expect<'_>) -> Vec<(&'static str, String)> {
    vec![
        ("format", SHARD_FORMAT.to_string()),
        ("format_version", FORMAT_VERSION.to_string()),
        ("hook", e.spec.hook.clone()),
        ("d_model", e.spec.d_model.to_string()),
        ("context_len", e.spec.context_len.to_string()),
        ("first_position", e.spec.first_position.to_string()),
        ("dtype", e.spec.dtype.name().to_string()),
        ("shard_index", e.index.to_string()),
        ("first_context", e.first_context.to_string()),
    ]
}

/// The four tensors, in file order, with their dtype and shape.
fn tensor_table(e: &Expect<'_>) -> [(&'static str, Dtype, Vec<usize>); 4] {
    let c = e.contexts as usize;
    let rows = c * e.spec.rows_per_context();
    // Widest element first, so every tensor starts aligned to its element size.
    [
        ("doc_offset", Dtype::U64, vec![c]),
        ("doc_index", Dtype::U32, vec![c]),
        ("tokens", Dtype::U32, vec![c, e.spec.context_len]),
        (
            "activations",
            e.spec.dtype.safetensors(),
            vec![rows, e.spec.d_model],
        ),
    ]
}

/// The bytes of a shard file. The header is written here rather than by
/// `safetensors::serialize` because that one orders the metadata through a
/// `HashMap`, and identical content must give identical bytes (and SHA-256)
/// whether or not the harvest was interrupted.
pub(crate) fn encode(
    e: &Expect<'_>,
    doc_offset: &[u64],
    doc_index: &[u32],
    tokens: &[u32],
    activations: &[u8],
) -> Vec<u8> {
    let table = tensor_table(e);
    let sizes = [
        doc_offset.len() * 8,
        doc_index.len() * 4,
        tokens.len() * 4,
        activations.len(),
    ];
    let mut header = Map::new();
    let meta: Map<String, Value> = shard_metadata(e)
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
    header.insert("__metadata__".into(), Value::Object(meta));
    let mut offset = 0usize;
    for ((name, dtype, shape), size) in table.iter().zip(sizes) {
        debug_assert_eq!(size, shape.iter().product::<usize>() * dtype.size());
        header.insert(
            name.to_string(),
            json!({"dtype": format!("{dtype:?}"), "shape": shape, "data_offsets": [offset, offset + size]}),
        );
        offset += size;
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    // Pad with spaces to a multiple of 8, as safetensors does, so tensors stay aligned.
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + header.len() + offset);
    out.extend((header.len() as u64).to_le_bytes());
    out.extend(&header);
    doc_offset.iter().for_each(|v| out.extend(v.to_le_bytes()));
    doc_index.iter().for_each(|v| out.extend(v.to_le_bytes()));
    tokens.iter().for_each(|v| out.extend(v.to_le_bytes()));
    out.extend(activations);
    out
}

/// Reads the header from `r` (positioned at the start of a file of
/// `file_len` bytes) and checks it against `e`: the four tensors with the
/// right dtypes and shapes, contiguous, ending exactly at the end of the
/// file, and metadata naming the same hook, sizes and first context.
pub(crate) fn read_layout(
    path: &Path,
    r: &mut impl Read,
    file_len: u64,
    e: &Expect<'_>,
) -> Result<Layout> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if file_len < 8 {
        return Err(format_err(
            path,
            format!("{file_len} bytes is too short for a safetensors file (truncated?)"),
        ));
    }
    let mut len8 = [0u8; 8];
    r.read_exact(&mut len8).map_err(io_err)?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER_LEN || 8 + n > file_len {
        return Err(format_err(
            path,
            format!(
                "safetensors header length {n} does not fit the file of {file_len} bytes (truncated or not a shard)"
            ),
        ));
    }
    let mut header = vec![0u8; n as usize];
    r.read_exact(&mut header).map_err(io_err)?;
    let meta: safetensors::tensor::Metadata = serde_json::from_slice(&header)
        .map_err(|err| format_err(path, format!("not a valid safetensors header: {err}")))?;
    let tensors = meta.tensors();
    let mut infos: Vec<_> = tensors.iter().collect();
    infos.sort_by_key(|(_, info)| info.data_offsets);
    let mut pos = 0u64;
    for (name, info) in &infos {
        let (s, end) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        if s != pos || end < s {
            return Err(format_err(
                path,
                format!(
                    "tensor {name} occupies data bytes {s}..{end}, expected it to start at {pos} (tensors must be contiguous)"
                ),
            ));
        }
        let need = info
            .shape
            .iter()
            .try_fold(info.dtype.size() as u64, |a, &d| a.checked_mul(d as u64));
        if need != Some(end - s) {
            return Err(format_err(
                path,
                format!(
                    "tensor {name}: {:?} {:?} needs {} bytes, the header gives it {}",
                    info.dtype,
                    info.shape,
                    need.map_or("too many".to_string(), |b| b.to_string()),
                    end - s
                ),
            ));
        }
        pos = end;
    }
    if pos.checked_add(8 + n) != Some(file_len) {
        return Err(format_err(
            path,
            format!(
                "header describes {pos} bytes of tensor data, the file holds {} (truncated or extended)",
                file_len - 8 - n
            ),
        ));
    }
    let table = tensor_table(e);
    if let Some((name, _)) = infos
        .iter()
        .find(|(name, _)| !table.iter().any(|(t, _, _)| t == name))
    {
        return Err(format_err(
            path,
            format!(
                "unexpected tensor {name} (a shard holds exactly activations, tokens, doc_index, doc_offset)"
            ),
        ));
    }
    let mut starts = HashMap::new();
    for (name, dtype, shape) in &table {
        let why = if *name == "activations" {
            format!(
                "{} contexts × {} kept positions from manifest.json, d_model {}",
                e.contexts,
                e.spec.rows_per_context(),
                e.spec.d_model
            )
        } else {
            format!("{} contexts from manifest.json", e.contexts)
        };
        let info = tensors.get(*name).ok_or_else(|| {
            format_err(
                path,
                format!("missing tensor {name} (expected {dtype:?} {shape:?}: {why})"),
            )
        })?;
        if info.dtype != *dtype || info.shape != *shape {
            return Err(Error::shape(
                format!("{}: tensor {name}", path.display()),
                format!("{dtype:?} {shape:?} ({why})"),
                format!("{:?} {:?}", info.dtype, info.shape),
            ));
        }
        starts.insert(*name, 8 + n + info.data_offsets.0 as u64);
    }
    let found = meta.metadata().clone().unwrap_or_default();
    for (key, want) in shard_metadata(e) {
        match found.get(key) {
            Some(v) if *v == want => {}
            Some(v) => {
                return Err(format_err(
                    path,
                    format!(
                        "metadata {key} is {v:?}, expected {want:?} (from manifest.json; is this shard from another store or out of place?)"
                    ),
                ))
            }
            None => {
                return Err(format_err(
                    path,
                    format!("metadata key {key} is missing (expected {want:?})"),
                ))
            }
        }
    }
    Ok(Layout {
        activations: starts["activations"],
        tokens: starts["tokens"],
        doc_index: starts["doc_index"],
        doc_offset: starts["doc_offset"],
    })
}

/// Little-endian `u32`s.
pub(crate) fn u32s(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Little-endian `u64`s.
pub(crate) fn u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Validates and decodes a whole shard file held in `bytes`.
pub(crate) fn decode(path: &Path, bytes: &[u8], e: &Expect<'_>) -> Result<Shard> {
    let layout = read_layout(path, &mut &bytes[..], bytes.len() as u64, e)?;
    let c = e.contexts as usize;
    let spec = e.spec;
    let rows = c * spec.rows_per_context();
    let slice = |start: u64, len: usize| &bytes[start as usize..start as usize + len];
    let mut acts = Matrix::zeros(rows, spec.d_model);
    let dtype: StoreDtype = spec.dtype;
    dtype.decode(
        slice(layout.activations, rows * spec.d_model * dtype.size()),
        acts.as_mut_slice(),
    );
    // The writer refuses non-finite values, so one here means corruption.
    acts.check_finite(&format!("{}: activations", path.display()))?;
    Ok(Shard {
        index: e.index,
        first_context: e.first_context,
        context_len: spec.context_len,
        first_position: spec.first_position,
        activations: acts,
        tokens: u32s(slice(layout.tokens, c * spec.context_len * 4)),
        doc_index: u32s(slice(layout.doc_index, c * 4)),
        doc_offset: u64s(slice(layout.doc_offset, c * 8)),
    })
}
