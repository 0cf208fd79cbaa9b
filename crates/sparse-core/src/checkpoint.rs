//! Checkpoints of learned-dictionary models: a folder holding
//!
//! - `model.safetensors`: the weights, `f32`, named like SAELens where a name
//!   exists (`W_enc (M × N)`, `b_enc (N)`, `W_dec (N × M)` = the dictionary,
//!   `b_dec (M)`; the MLP encoder's two layers are `W_enc_0`, `b_enc_0`,
//!   `W_enc_1`, `b_enc_1`);
//! - `state.json`: the method, the caller's training configuration, the step,
//!   the SHA-256 of the data file, the last loss, the shape of every tensor
//!   and the model's full state (hyperparameters, optimiser moments and step
//!   counts, RNG streams, dead-latent counters, warm-start codes) with the
//!   weights left out: they are read back from `model.safetensors`. Numbers
//!   pass through `f64` JSON numbers, which hold every `f32` exactly, so a
//!   reloaded model continues bit-identically.
//!
//! [`save`] is atomic: it writes a sibling folder `.NAME.tmp`, fsyncs every
//! file and the folder, moves the previous checkpoint aside to `.NAME.old`,
//! renames the new folder into place, then deletes the old one. A crash
//! leaves either the old checkpoint or the new one complete; if it struck
//! between the two renames, [`load`] puts `.NAME.old` back.

use crate::dictionary::autoencoder::Autoencoder;
use crate::dictionary::jumprelu::JumpReluSae;
use crate::dictionary::matryoshka::MatryoshkaSae;
use crate::dictionary::mp_sae::MpSae;
use crate::dictionary::sparse_coding::SparseCoding;
use crate::dictionary::topk::TopKSae;
use crate::dictionary::DictionaryLearner;
use crate::encoders::lista::Lista;
use crate::encoders::{Encoder, Trainable};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Weights file of a checkpoint folder.
pub const MODEL_FILE: &str = "model.safetensors";
/// State file of a checkpoint folder.
pub const STATE_FILE: &str = "state.json";
/// Version of the `state.json` layout (2: scratch buffers are no longer stored).
pub const FORMAT_VERSION: u32 = 2;

/// A LISTA encoder trained against a frozen dictionary, kept together with
/// that dictionary so that the checkpoint encodes on its own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListaModel {
    /// The trained encoder.
    pub lista: Lista,
    /// The frozen dictionary `D (N × M)` it was trained against.
    pub dictionary: Matrix,
}

/// A trainable model with a learned (or, for LISTA, frozen) dictionary.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// SAE or MLP encoder ([`Autoencoder`]).
    Autoencoder(Box<Autoencoder>),
    /// TopK / BatchTopK SAE ([`TopKSae`]).
    TopK(Box<TopKSae>),
    /// JumpReLU SAE ([`JumpReluSae`]).
    JumpRelu(Box<JumpReluSae>),
    /// Matryoshka BatchTopK SAE ([`MatryoshkaSae`]).
    Matryoshka(Box<MatryoshkaSae>),
    /// Matching-pursuit SAE ([`MpSae`]).
    MpSae(Box<MpSae>),
    /// Alternating sparse coding ([`SparseCoding`]).
    SparseCoding(Box<SparseCoding>),
    /// LISTA with its frozen dictionary ([`ListaModel`]).
    Lista(Box<ListaModel>),
}

impl Model {
    /// The models that implement [`DictionaryLearner`].
    fn learner(&self) -> Option<&dyn DictionaryLearner> {
        Some(match self {
            Model::Autoencoder(m) => m.as_ref(),
            Model::TopK(m) => m.as_ref(),
            Model::JumpRelu(m) => m.as_ref(),
            Model::Matryoshka(m) => m.as_ref(),
            Model::MpSae(m) => m.as_ref(),
            Model::SparseCoding(_) | Model::Lista(_) => return None,
        })
    }

    /// One training step on the batch `x`; returns the loss the model reports for it.
    pub fn train_step(&mut self, x: &Matrix) -> Result<f32> {
        match self {
            Model::Autoencoder(m) => m.train_step(x),
            Model::TopK(m) => m.train_step(x),
            Model::JumpRelu(m) => m.train_step(x),
            Model::Matryoshka(m) => m.train_step(x),
            Model::MpSae(m) => m.train_step(x),
            Model::SparseCoding(m) => m.fit_step(x),
            Model::Lista(m) => m.lista.train_step(x, &m.dictionary),
        }
    }

    /// Codes `Z (n × N)` of `x (n × M)`.
    pub fn encode(&self, x: &Matrix) -> Result<Matrix> {
        match self {
            Model::SparseCoding(m) => Ok(m.encode(x)?.codes),
            Model::Lista(m) => Ok(m.lista.encode(x, &m.dictionary)?.codes),
            other => other.learner().expect("a learner").encode(x),
        }
    }

    /// The dictionary `D (N × M)`.
    pub fn dictionary(&self) -> &Matrix {
        match self {
            Model::SparseCoding(m) => m.dictionary(),
            Model::Lista(m) => &m.dictionary,
            other => other.learner().expect("a learner").dictionary(),
        }
    }

    /// FLOPs of one training step on `n` samples.
    pub fn train_step_flops(&self, n: usize) -> f64 {
        match self {
            Model::SparseCoding(m) => m.last_step_flops(),
            Model::Lista(m) => m.lista.train_step_flops(n),
            other => other.learner().expect("a learner").train_step_flops(n),
        }
    }
}

/// The weights of a serialised model: `(safetensors name, JSON pointer)`
/// pairs, read off the serialised form itself so that saving (from a full
/// model) and loading (from one whose weights are `null`) use the same map.
/// Returns the variant's name too.
fn tensor_layout(model: &Value) -> std::result::Result<(String, Vec<(String, String)>), String> {
    let kind = model
        .as_object()
        .filter(|o| o.len() == 1)
        .and_then(|o| o.keys().next().cloned())
        .ok_or("the model state is not a single-variant object")?;
    let at = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(name, rel)| (name.to_string(), format!("/{kind}{rel}")))
            .collect()
    };
    let encoder_and_decoder = [
        ("W_enc", "/encoder/w"),
        ("b_enc", "/encoder/b"),
        ("W_dec", "/dictionary"),
        ("b_dec", "/b_dec"),
    ];
    let layout = match kind.as_str() {
        "autoencoder" => {
            let n_layers = model
                .pointer("/autoencoder/layers")
                .and_then(Value::as_array)
                .map(Vec::len)
                .ok_or("the autoencoder state has no layers")?;
            let mut v = Vec::new();
            for i in 0..n_layers {
                // One layer keeps SAELens' names; an MLP numbers them.
                let suffix = if n_layers == 1 {
                    String::new()
                } else {
                    format!("_{i}")
                };
                v.push((format!("W_enc{suffix}"), format!("/{kind}/layers/{i}/w")));
                v.push((format!("b_enc{suffix}"), format!("/{kind}/layers/{i}/b")));
            }
            v.extend(at(&[("W_dec", "/dictionary"), ("b_dec", "/b_dec")]));
            v
        }
        "top_k" | "matryoshka" => at(&encoder_and_decoder),
        "jump_relu" => {
            let mut v = at(&encoder_and_decoder);
            v.extend(at(&[("log_threshold", "/log_threshold")]));
            v
        }
        "mp_sae" => at(&[("W_dec", "/dictionary"), ("b_dec", "/b_dec")]),
        "sparse_coding" => at(&[("W_dec", "/dictionary")]),
        "lista" => at(&[
            ("W_enc", "/lista/w_e"),
            ("S", "/lista/s"),
            ("theta", "/lista/theta"),
            ("W_dec", "/dictionary"),
        ]),
        other => return Err(format!("unknown model kind `{other}`")),
    };
    Ok((kind, layout))
}

/// Everything a checkpoint holds.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The training method as the user named it (e.g. "sae", "topk").
    pub method: String,
    /// The caller's training configuration, stored verbatim.
    pub config: Value,
    /// Training steps taken.
    pub step: u64,
    /// Lowercase hex SHA-256 of the data file trained on.
    pub data_sha256: String,
    /// Loss of the last step taken (`None` before the first).
    pub last_loss: Option<f64>,
    /// The model with its full training state.
    pub model: Model,
}

/// The `state.json` layout.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    format: u32,
    method: String,
    config: Value,
    step: u64,
    data_sha256: String,
    last_loss: Option<f64>,
    /// Shape of every tensor of `model.safetensors`.
    tensors: BTreeMap<String, Vec<usize>>,
    /// The serialised model with the weights' values replaced by `null`.
    model: Value,
}

/// Lowercase hex SHA-256 of a file's bytes, read in chunks.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// `(parent, .NAME.tmp, .NAME.old)` of a checkpoint folder.
fn siblings(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let name = dir
        .file_name()
        .ok_or_else(|| format_err(dir, "not a folder name a checkpoint can be written to"))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = parent.join(format!(".{name}.tmp"));
    let old = parent.join(format!(".{name}.old"));
    Ok((parent, tmp, old))
}

/// Takes the flat `f32` values and shape of a tensor node (a [`Matrix`] or a
/// vector) out of `node`, leaving `null` in place of the values.
fn take_tensor(node: &mut Value) -> Option<(Vec<usize>, Vec<f32>)> {
    let (shape, data) = match node {
        Value::Object(obj) => {
            let rows = obj.get("rows")?.as_u64()? as usize;
            let cols = obj.get("cols")?.as_u64()? as usize;
            (vec![rows, cols], obj.get_mut("data")?)
        }
        Value::Array(a) => (vec![a.len()], node),
        _ => return None,
    };
    let values = data
        .as_array()?
        .iter()
        .map(|v| v.as_f64().map(|x| x as f32))
        .collect::<Option<Vec<f32>>>()?;
    *data = Value::Null;
    Some((shape, values))
}

/// Puts the values back where [`take_tensor`] left `null`.
fn put_tensor(node: &mut Value, values: Vec<f32>) -> Option<()> {
    let data = match node {
        Value::Object(obj) => obj.get_mut("data")?,
        other => other,
    };
    *data = Value::Array(values.into_iter().map(Value::from).collect());
    Some(())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let run = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    run().map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn sync_dir(dir: &Path) {
    // Not every platform lets a folder be opened; the data files are synced regardless.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `ckpt` into the folder `dir` atomically (see the module documentation).
pub fn save(dir: &Path, ckpt: &Checkpoint) -> Result<()> {
    let (parent, tmp, old) = siblings(dir)?;
    std::fs::create_dir_all(&parent).map_err(|source| Error::Io {
        path: parent.clone(),
        source,
    })?;
    let mut model = serde_json::to_value(&ckpt.model)
        .map_err(|e| format_err(dir, format!("cannot serialise the model: {e}")))?;
    let mut tensors = BTreeMap::new();
    let mut blobs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let (_, layout) = tensor_layout(&model).map_err(|e| format_err(dir, e))?;
    for (name, ptr) in layout {
        let (shape, values) = model
            .pointer_mut(&ptr)
            .and_then(take_tensor)
            .ok_or_else(|| format_err(dir, format!("model has no tensor at {ptr} for {name}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.insert(name.clone(), shape.clone());
        blobs.push((name, shape, bytes));
    }
    let views = blobs
        .iter()
        .map(|(name, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format_err(dir, format!("cannot build tensors: {e}")))?;
    let st_bytes = safetensors::serialize(views, &None)
        .map_err(|e| format_err(dir, format!("cannot serialise the tensors: {e}")))?;
    let state = State {
        format: FORMAT_VERSION,
        method: ckpt.method.clone(),
        config: ckpt.config.clone(),
        step: ckpt.step,
        data_sha256: ckpt.data_sha256.clone(),
        last_loss: ckpt.last_loss,
        tensors,
        model,
    };
    let state_bytes = serde_json::to_vec(&state)
        .map_err(|e| format_err(dir, format!("cannot serialise the state: {e}")))?;

    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir(&tmp).map_err(io(&tmp))?;
    let written = write_synced(&tmp.join(MODEL_FILE), &st_bytes)
        .and_then(|()| write_synced(&tmp.join(STATE_FILE), &state_bytes));
    if let Err(e) = written {
        // A full disk or a size limit: leave no partial folder behind; the
        // previous checkpoint has not been touched.
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    sync_dir(&tmp);
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    sync_dir(&parent);
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// Fails early, with the error [`save`] would give, if a checkpoint cannot
/// be written to `dir` (no permission, read-only file system): a long run
/// learns it before its first step, not at its first checkpoint.
pub fn check_writable(dir: &Path) -> Result<()> {
    let (parent, tmp, _) = siblings(dir)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    if !tmp.exists() {
        std::fs::create_dir(&tmp).map_err(io(&tmp))?;
        std::fs::remove_dir(&tmp).map_err(io(&tmp))?;
    }
    Ok(())
}

/// Whether `dir` holds a checkpoint (or a checkpoint interrupted between its two renames).
pub fn exists(dir: &Path) -> bool {
    dir.join(STATE_FILE).exists()
        || siblings(dir)
            .map(|(_, _, old)| !dir.exists() && old.join(STATE_FILE).exists())
            .unwrap_or(false)
}

/// Reads and validates the checkpoint in `dir`: missing files, invalid or
/// truncated files and tensors whose shape disagrees with `state.json` are
/// errors naming the file (and both shapes).
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let (_, _, old) = siblings(dir)?;
    if !dir.exists() && old.exists() {
        // Interrupted between moving the previous checkpoint aside and renaming the new one in.
        std::fs::rename(&old, dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let state_path = dir.join(STATE_FILE);
    let model_path = dir.join(MODEL_FILE);
    let read = |p: &Path| {
        std::fs::read(p).map_err(|source| Error::Io {
            path: p.to_path_buf(),
            source,
        })
    };
    let state_bytes = read(&state_path)?;
    let mut state: State = serde_json::from_slice(&state_bytes)
        .map_err(|e| format_err(&state_path, format!("invalid checkpoint state: {e}")))?;
    if state.format != FORMAT_VERSION {
        return Err(format_err(
            &state_path,
            format!(
                "checkpoint format {} is not supported (expected {FORMAT_VERSION})",
                state.format
            ),
        ));
    }
    check_weights_file_size(&model_path, &state.tensors)?;
    let st_bytes = read(&model_path)?;
    let st = safetensors::SafeTensors::deserialize(&st_bytes).map_err(|e| {
        format_err(
            &model_path,
            format!("not a valid safetensors file (truncated or corrupt?): {e:?}"),
        )
    })?;
    let (_, layout) = tensor_layout(&state.model).map_err(|e| format_err(&state_path, e))?;
    // The tensors listed must be exactly those the model has places for.
    let expected: Vec<&String> = layout.iter().map(|(n, _)| n).collect();
    if expected.len() != state.tensors.len()
        || expected.iter().any(|n| !state.tensors.contains_key(*n))
    {
        return Err(format_err(
            &state_path,
            format!(
                "lists tensors {:?}, but the model has {expected:?}",
                state.tensors.keys().collect::<Vec<_>>()
            ),
        ));
    }
    let names_in_file = st.names().len();
    if names_in_file != state.tensors.len() {
        return Err(format_err(
            &model_path,
            format!(
                "holds {names_in_file} tensors, {} lists {}",
                state_path.display(),
                state.tensors.len()
            ),
        ));
    }
    for (name, ptr) in &layout {
        let shape = &state.tensors[name];
        let t = st.tensor(name).map_err(|_| {
            format_err(
                &model_path,
                format!("missing tensor {name} listed in {}", state_path.display()),
            )
        })?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(format_err(
                &model_path,
                format!("tensor {name} has dtype {:?}, expected F32", t.dtype()),
            ));
        }
        if t.shape() != shape.as_slice() {
            return Err(Error::shape(
                format!("{}: tensor {name}", model_path.display()),
                format!("{shape:?} (as in {})", state_path.display()),
                format!("{:?}", t.shape()),
            ));
        }
        let values: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(format_err(
                &model_path,
                format!(
                    "tensor {name} holds a non-finite value ({}) at flat index {i}",
                    values[i]
                ),
            ));
        }
        let node = state.model.pointer_mut(ptr).ok_or_else(|| {
            format_err(
                &state_path,
                format!("the model has no place for tensor {name}"),
            )
        })?;
        // The model's own record of the shape must agree too.
        let model_shape = match &*node {
            Value::Object(o) => vec![
                o.get("rows").and_then(Value::as_u64).unwrap_or(0) as usize,
                o.get("cols").and_then(Value::as_u64).unwrap_or(0) as usize,
            ],
            _ => vec![values.len()],
        };
        if model_shape != *shape {
            return Err(Error::shape(
                format!("{}: tensor {name}", state_path.display()),
                format!("{model_shape:?} (the model's)"),
                format!("{shape:?} (listed)"),
            ));
        }
        put_tensor(node, values)
            .ok_or_else(|| format_err(&state_path, format!("malformed entry for {name}")))?;
    }
    check_structure(&state.model).map_err(|e| format_err(&state_path, e))?;
    let model: Model = serde_json::from_value(state.model)
        .map_err(|e| format_err(&state_path, format!("invalid model state: {e}")))?;
    Ok(Checkpoint {
        method: state.method,
        config: state.config,
        step: state.step,
        data_sha256: state.data_sha256,
        last_loss: state.last_loss,
        model,
    })
}

/// Largest safetensors header accepted: ours take ~100 bytes per tensor.
const MAX_WEIGHTS_HEADER: u64 = 1 << 20;

/// Rejects a `model.safetensors` whose size disagrees with the tensors
/// `state.json` lists, before the file is read: a hostile or damaged pair
/// never makes [`load`] read (allocate) more than the listed weights need.
fn check_weights_file_size(path: &Path, tensors: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    let need = tensors
        .iter()
        .try_fold(0u64, |acc, (_, shape)| {
            shape
                .iter()
                .try_fold(4u64, |a, &d| a.checked_mul(d as u64))
                .and_then(|b| acc.checked_add(b))
        })
        .ok_or_else(|| format_err(path, "the tensor shapes listed in state.json overflow"))?;
    let len = std::fs::metadata(path)
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if len < need.saturating_add(8) {
        return Err(format_err(
            path,
            format!("truncated: the tensors listed in state.json need {need} bytes of data, the file holds {len} bytes"),
        ));
    }
    if len > need.saturating_add(8 + MAX_WEIGHTS_HEADER) {
        return Err(format_err(
            path,
            format!("holds {len} bytes, far more than the {need} bytes of data of the tensors listed in state.json"),
        ));
    }
    Ok(())
}

/// The hyperparameters of a serialised model (where its constructor takes them from).
fn config_node<'a>(model: &'a Value, kind: &str) -> Option<&'a Value> {
    match kind {
        "lista" => model.pointer("/lista/lista/config"),
        _ => model.pointer(&format!("/{kind}/config")),
    }
}

/// Checks that a serialised model (weights restored) has exactly the
/// structure of a fresh model built from its own hyperparameters: every
/// matrix shape, vector length (weights, optimiser moments, counters) and
/// optional part. Deserialisation checks types only, and the models assume
/// their parts agree, so without this a consistent-looking but edited
/// `state.json` could panic later in training or encoding. The sizes in the
/// hyperparameters are first checked against the dictionary read from
/// `model.safetensors`, so building the reference allocates no more than
/// the checkpoint itself holds.
fn check_structure(model: &Value) -> std::result::Result<(), String> {
    use crate::dictionary::autoencoder::AutoencoderConfig;
    use crate::dictionary::jumprelu::JumpReluConfig;
    use crate::dictionary::matryoshka::MatryoshkaConfig;
    use crate::dictionary::mp_sae::MpSaeConfig;
    use crate::dictionary::sparse_coding::SparseCodingConfig;
    use crate::dictionary::topk::TopKConfig;
    use crate::encoders::lista::ListaConfig;

    let (kind, _) = tensor_layout(model)?;
    let dictionary: Matrix = model
        .pointer(&format!("/{kind}/dictionary"))
        .cloned()
        .and_then(|d| serde_json::from_value(d).ok())
        .ok_or("the model has no valid dictionary")?;
    let (n, dim) = dictionary.shape();
    let cfg = config_node(model, &kind).ok_or("the model has no hyperparameters (`config`)")?;
    // Where the sizes live: the config itself, Matryoshka's inner SAE config, or LISTA's fields.
    let sizes = match kind.as_str() {
        "lista" => model.pointer("/lista/lista"),
        "matryoshka" => cfg.get("sae"),
        _ => Some(cfg),
    }
    .ok_or("the model's hyperparameters lack their sizes")?;
    for (field, want) in [("n_latents", n), ("dim", dim)] {
        let found = sizes.get(field).and_then(Value::as_u64);
        if found != Some(want as u64) {
            return Err(format!(
                "{field} = {} in the model's hyperparameters, but the dictionary W_dec has shape [{n}, {dim}]",
                found.map_or("missing".to_string(), |v| v.to_string())
            ));
        }
    }
    // Sizes the dictionary does not fix, against the tensors that carry them.
    let rows_of = |ptr: &str| {
        model
            .pointer(ptr)
            .and_then(|m| m.get("rows"))
            .and_then(Value::as_u64)
    };
    let cols_of = |ptr: &str| {
        model
            .pointer(ptr)
            .and_then(|m| m.get("cols"))
            .and_then(Value::as_u64)
    };
    if let Some(hidden) = cfg.pointer("/encoder/hidden").and_then(Value::as_u64) {
        if cols_of("/autoencoder/layers/0/w") != Some(hidden) {
            return Err(format!(
                "hidden = {hidden} disagrees with the shape of W_enc_0"
            ));
        }
    }
    if kind == "lista" {
        let layers = cfg.get("layers").and_then(Value::as_u64);
        if layers.is_none() || rows_of("/lista/lista/theta") != layers {
            return Err(format!(
                "layers = {layers:?} disagrees with the shape of theta"
            ));
        }
    }
    let de = |what: &str| format!("invalid hyperparameters of the {what} model");
    let reference = match kind.as_str() {
        "autoencoder" => Model::Autoencoder(Box::new(
            Autoencoder::new(
                AutoencoderConfig::deserialize(cfg).map_err(|e| format!("{}: {e}", de(&kind)))?,
            )
            .map_err(|e| e.to_string())?,
        )),
        "top_k" => Model::TopK(Box::new(
            TopKSae::new(TopKConfig::deserialize(cfg).map_err(|e| format!("{}: {e}", de(&kind)))?)
                .map_err(|e| e.to_string())?,
        )),
        "jump_relu" => Model::JumpRelu(Box::new(
            JumpReluSae::new(
                JumpReluConfig::deserialize(cfg).map_err(|e| format!("{}: {e}", de(&kind)))?,
            )
            .map_err(|e| e.to_string())?,
        )),
        "matryoshka" => Model::Matryoshka(Box::new(
            MatryoshkaSae::new(
                MatryoshkaConfig::deserialize(cfg).map_err(|e| format!("{}: {e}", de(&kind)))?,
            )
            .map_err(|e| e.to_string())?,
        )),
        "mp_sae" => Model::MpSae(Box::new(
            MpSae::new(MpSaeConfig::deserialize(cfg).map_err(|e| format!("{}: {e}", de(&kind)))?)
                .map_err(|e| e.to_string())?,
        )),
        "sparse_coding" => Model::SparseCoding(Box::new(
            SparseCoding::new(
                SparseCodingConfig::deserialize(cfg).map_err(|e| format!("{}: {e}", de(&kind)))?,
            )
            .map_err(|e| e.to_string())?,
        )),
        "lista" => {
            let c = ListaConfig::deserialize(cfg).map_err(|e| format!("{}: {e}", de(&kind)))?;
            Model::Lista(Box::new(ListaModel {
                lista: Lista::from_dictionary(&dictionary, c).map_err(|e| e.to_string())?,
                dictionary,
            }))
        }
        other => return Err(format!("unknown model kind `{other}`")),
    };
    let reference = serde_json::to_value(&reference).map_err(|e| e.to_string())?;
    same_structure(&reference, model, "")?;
    // Sparse coding's warm-start codes depend on the batch, not the config:
    // only their width is fixed.
    if let Some(last) = model
        .pointer("/sparse_coding/last")
        .filter(|v| !v.is_null())
    {
        if last.pointer("/1/cols").and_then(Value::as_u64) != Some(n as u64) {
            return Err(format!(
                "the warm-start codes at /sparse_coding/last are not {n} wide"
            ));
        }
    }
    Ok(())
}

/// Whether `a` is a serialised [`Matrix`].
fn matrix_shape(v: &Value) -> Option<(u64, u64)> {
    Some((v.get("rows")?.as_u64()?, v.get("cols")?.as_u64()?))
}

/// Compares the shapes of `loaded` with those of `reference` (see
/// [`check_structure`]); scalar values may differ, their types are checked
/// when the model is deserialised.
fn same_structure(reference: &Value, loaded: &Value, at: &str) -> std::result::Result<(), String> {
    let where_ = || {
        if at.is_empty() {
            "/".to_string()
        } else {
            at.to_string()
        }
    };
    match (reference, loaded) {
        (Value::Object(r), Value::Object(l)) => {
            if let (Some(rs), Some(ls)) = (matrix_shape(reference), matrix_shape(loaded)) {
                if rs != ls {
                    return Err(format!(
                        "the model state at {} has shape {ls:?}, its hyperparameters give {rs:?}",
                        where_()
                    ));
                }
            }
            for (k, rv) in r {
                if at == "/sparse_coding" && k == "last" {
                    continue;
                }
                if let Some(lv) = l.get(k) {
                    same_structure(rv, lv, &format!("{at}/{k}"))?;
                }
            }
            Ok(())
        }
        (Value::Array(r), Value::Array(l)) => {
            if r.len() != l.len() {
                return Err(format!(
                    "the model state at {} has {} entries, its hyperparameters give {}",
                    where_(),
                    l.len(),
                    r.len()
                ));
            }
            r.iter()
                .zip(l)
                .enumerate()
                .try_for_each(|(i, (rv, lv))| same_structure(rv, lv, &format!("{at}/{i}")))
        }
        (Value::Null, Value::Null) => Ok(()),
        (Value::Null, _) | (_, Value::Null) => Err(format!(
            "the model state at {} is {}, its hyperparameters say it is {}",
            where_(),
            if loaded.is_null() {
                "absent"
            } else {
                "present"
            },
            if loaded.is_null() {
                "present"
            } else {
                "absent"
            },
        )),
        _ => Ok(()),
    }
}
