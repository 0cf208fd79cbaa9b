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
use crate::dictionary::sparse_coding::SparseCoding;
use crate::dictionary::topk::TopKSae;
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
/// Version of the `state.json` layout.
pub const FORMAT_VERSION: u32 = 1;

/// A trainable model with a learned dictionary.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// SAE or MLP encoder ([`Autoencoder`]).
    Autoencoder(Box<Autoencoder>),
    /// TopK / BatchTopK SAE ([`TopKSae`]).
    TopK(Box<TopKSae>),
    /// Alternating sparse coding ([`SparseCoding`]).
    SparseCoding(Box<SparseCoding>),
}

impl Model {
    /// One training step on the batch `x` (the full data set for full-batch
    /// training); returns the loss the model reports for it.
    pub fn train_step(&mut self, x: &Matrix) -> Result<f32> {
        match self {
            Model::Autoencoder(m) => m.train_step(x),
            Model::TopK(m) => m.train_step(x),
            Model::SparseCoding(m) => m.fit_step(x),
        }
    }

    /// Codes `Z (n × N)` of `x (n × M)`.
    pub fn encode(&self, x: &Matrix) -> Result<Matrix> {
        match self {
            Model::Autoencoder(m) => m.encode(x),
            Model::TopK(m) => m.encode(x),
            Model::SparseCoding(m) => Ok(m.encode(x)?.codes),
        }
    }

    /// The dictionary `D (N × M)`.
    pub fn dictionary(&self) -> &Matrix {
        match self {
            Model::Autoencoder(m) => m.dictionary(),
            Model::TopK(m) => m.dictionary(),
            Model::SparseCoding(m) => m.dictionary(),
        }
    }

    /// Safetensors names and JSON pointers (into the serialised model) of the weights.
    fn tensor_pointers(&self) -> Vec<(String, String)> {
        let p = |name: &str, ptr: &str| (name.to_string(), ptr.to_string());
        match self {
            Model::Autoencoder(m) => {
                let n_layers =
                    if m.config().encoder == crate::dictionary::autoencoder::EncoderKind::Linear {
                        1
                    } else {
                        2
                    };
                let mut v = Vec::new();
                for i in 0..n_layers {
                    let suffix = if n_layers == 1 {
                        String::new()
                    } else {
                        format!("_{i}")
                    };
                    v.push(p(
                        &format!("W_enc{suffix}"),
                        &format!("/autoencoder/layers/{i}/w"),
                    ));
                    v.push(p(
                        &format!("b_enc{suffix}"),
                        &format!("/autoencoder/layers/{i}/b"),
                    ));
                }
                v.push(p("W_dec", "/autoencoder/dictionary"));
                v.push(p("b_dec", "/autoencoder/b_dec"));
                v
            }
            Model::TopK(_) => vec![
                p("W_enc", "/top_k/encoder/w"),
                p("b_enc", "/top_k/encoder/b"),
                p("W_dec", "/top_k/dictionary"),
                p("b_dec", "/top_k/b_dec"),
            ],
            Model::SparseCoding(_) => vec![p("W_dec", "/sparse_coding/dictionary")],
        }
    }
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
    for (name, ptr) in ckpt.model.tensor_pointers() {
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
    write_synced(&tmp.join(MODEL_FILE), &st_bytes)?;
    write_synced(&tmp.join(STATE_FILE), &state_bytes)?;
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
    let st_bytes = read(&model_path)?;
    let st = safetensors::SafeTensors::deserialize(&st_bytes).map_err(|e| {
        format_err(
            &model_path,
            format!("not a valid safetensors file (truncated or corrupt?): {e:?}"),
        )
    })?;
    let kind = state
        .model
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .unwrap_or_default();
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
    for (name, shape) in &state.tensors {
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
        let node = tensor_node(&mut state.model, &kind, name).ok_or_else(|| {
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
    let model: Model = serde_json::from_value(state.model)
        .map_err(|e| format_err(&state_path, format!("invalid model state: {e}")))?;
    // The pointers the model declares must be exactly the tensors found.
    let expected: Vec<String> = model
        .tensor_pointers()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    if expected.len() != state.tensors.len()
        || expected.iter().any(|n| !state.tensors.contains_key(n))
    {
        return Err(format_err(
            &model_path,
            format!(
                "tensors {:?} do not match the model's {expected:?}",
                state.tensors.keys().collect::<Vec<_>>()
            ),
        ));
    }
    Ok(Checkpoint {
        method: state.method,
        config: state.config,
        step: state.step,
        data_sha256: state.data_sha256,
        last_loss: state.last_loss,
        model,
    })
}

/// The JSON node of tensor `name` in a serialised model of variant `kind`.
fn tensor_node<'a>(model: &'a mut Value, kind: &str, name: &str) -> Option<&'a mut Value> {
    let rel = match name {
        "W_enc" if kind == "autoencoder" => "/layers/0/w".to_string(),
        "b_enc" if kind == "autoencoder" => "/layers/0/b".to_string(),
        "W_enc" => "/encoder/w".to_string(),
        "b_enc" => "/encoder/b".to_string(),
        "W_dec" => "/dictionary".to_string(),
        "b_dec" => "/b_dec".to_string(),
        other => {
            let (base, i) = other.rsplit_once('_')?;
            let i: usize = i.parse().ok()?;
            match base {
                "W_enc" => format!("/layers/{i}/w"),
                "b_enc" => format!("/layers/{i}/b"),
                _ => return None,
            }
        }
    };
    model.pointer_mut(&format!("/{kind}{rel}"))
}
