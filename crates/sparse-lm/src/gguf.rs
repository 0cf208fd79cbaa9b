//! Reading GGUF files defensively: the magic is checked before candle parses the
//! header, every tensor's extent is checked against the file length before any
//! data is read, and candle's errors are turned into [`LmError`]s that name the
//! file. Shared by the model loader and the tokenizer.

use crate::error::{LmError, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

/// A parsed GGUF header plus the reader its tensors come from.
pub(crate) struct GgufFile<R> {
    pub path: PathBuf,
    pub content: Content,
    pub reader: R,
}

/// Describes the first bytes of a non-GGUF file for an error message.
fn describe_start(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "an empty file (0 bytes)".to_string();
    }
    let shown: String = bytes
        .iter()
        .take(4)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    format!("\"{shown}\"")
}

/// Checks the magic of the first bytes of `path`.
pub(crate) fn check_magic(path: &Path, start: &[u8]) -> Result<()> {
    if start.len() >= 4 && &start[..4] == b"GGUF" {
        Ok(())
    } else {
        Err(LmError::NotGguf {
            path: path.to_path_buf(),
            found: describe_start(start),
        })
    }
}

/// The message of a candle error without the backtrace candle appends when
/// `RUST_BACKTRACE` is set: these messages are about the file, not the code.
fn message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => message(inner),
        other => other.to_string(),
    }
}

/// Turns a candle error raised while parsing `path` into a truncation or format error.
fn classify(path: &Path, len: u64, e: candle_core::Error) -> LmError {
    let reason = message(&e);
    // candle reports reads past the end either as an io UnexpectedEof or, since
    // 0.11, as a bounds check mentioning the bytes "remaining" in the file.
    let eof = matches!(&e, candle_core::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
        || reason.contains("failed to fill whole buffer")
        || reason.contains("remaining");
    if eof {
        LmError::Truncated {
            path: path.to_path_buf(),
            len,
            reason: format!("the header ends early ({reason})"),
        }
    } else {
        LmError::Format {
            path: path.to_path_buf(),
            reason,
        }
    }
}

/// Parses the header of a GGUF file held by `reader` (positioned at the start),
/// checking that every tensor lies inside the file.
pub(crate) fn parse<R: Read + Seek>(path: &Path, mut reader: R) -> Result<GgufFile<R>> {
    let io_err = |source| LmError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = reader.seek(std::io::SeekFrom::End(0)).map_err(io_err)?;
    reader.seek(std::io::SeekFrom::Start(0)).map_err(io_err)?;
    let mut start = [0u8; 4];
    let n = read_up_to(&mut reader, &mut start).map_err(io_err)?;
    check_magic(path, &start[..n])?;
    reader.seek(std::io::SeekFrom::Start(0)).map_err(io_err)?;
    let content = Content::read(&mut reader).map_err(|e| classify(path, len, e))?;
    // Check every tensor's extent now, so that a file cut in the middle of its data
    // is reported as such (naming the first tensor that does not fit) before any
    // work is done, rather than as a read failure deep in the loader.
    let mut worst: Option<(u64, &str)> = None;
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        let block = info.ggml_dtype.block_size();
        if elems % block != 0 {
            return Err(LmError::Format {
                path: path.to_path_buf(),
                reason: format!(
                    "tensor {name} has {elems} elements, not a multiple of the {:?} block size {block}",
                    info.ggml_dtype
                ),
            });
        }
        let bytes = (elems / block * info.ggml_dtype.type_size()) as u64;
        let end = content
            .tensor_data_offset
            .saturating_add(info.offset)
            .saturating_add(bytes);
        if end > len && worst.is_none_or(|(w, _)| end > w) {
            worst = Some((end, name));
        }
    }
    if let Some((end, name)) = worst {
        return Err(LmError::Truncated {
            path: path.to_path_buf(),
            len,
            reason: format!("expected at least {end} bytes to hold tensor {name}"),
        });
    }
    Ok(GgufFile {
        path: path.to_path_buf(),
        content,
        reader,
    })
}

/// Reads as many bytes as are available, up to `buf.len()`.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Opens and parses the header of a GGUF file (metadata and tensor index only).
pub(crate) fn open(path: &Path) -> Result<GgufFile<std::io::BufReader<std::fs::File>>> {
    let file = std::fs::File::open(path).map_err(|source| LmError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, std::io::BufReader::new(file))
}

/// Names a metadata value's type for error messages.
fn type_name(v: &Value) -> String {
    match v {
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(a) => format!("an array of {} values", a.len()),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::F32(x) => format!("the float {x}"),
        Value::F64(x) => format!("the float {x}"),
        other => format!("{other:?}"),
    }
}

/// Typed access to a GGUF file's metadata, with errors naming the file and key.
pub(crate) struct Meta<'a> {
    pub path: &'a Path,
    pub md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    fn err(&self, key: &str, expected: &str, found: Option<&Value>) -> LmError {
        LmError::Metadata {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.map_or_else(|| "nothing (key absent)".to_string(), type_name),
        }
    }

    /// The value of `key` if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.md.get(key)
    }

    /// An unsigned integer of any width.
    pub fn usize(&self, key: &str) -> Result<usize> {
        let v = self.md.get(key);
        let n = match v {
            Some(Value::U8(x)) => Some(*x as u64),
            Some(Value::U16(x)) => Some(*x as u64),
            Some(Value::U32(x)) => Some(*x as u64),
            Some(Value::U64(x)) => Some(*x),
            Some(Value::I8(x)) => u64::try_from(*x).ok(),
            Some(Value::I16(x)) => u64::try_from(*x).ok(),
            Some(Value::I32(x)) => u64::try_from(*x).ok(),
            Some(Value::I64(x)) => u64::try_from(*x).ok(),
            _ => None,
        };
        n.and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| self.err(key, "a non-negative integer", v))
    }

    /// An optional unsigned integer: absent is `None`, present but not an integer is an error.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.md.get(key) {
            None => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }

    /// A float (f32 or f64), or `default` when absent.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.md.get(key) {
            None => Ok(default),
            Some(Value::F32(x)) => Ok(*x as f64),
            Some(Value::F64(x)) => Ok(*x),
            v => Err(self.err(key, "a float", v)),
        }
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<&str> {
        match self.md.get(key) {
            Some(Value::String(s)) => Ok(s),
            v => Err(self.err(key, "a string", v)),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.md.get(key);
        let Some(Value::Array(items)) = v else {
            return Err(self.err(key, "an array of strings", v));
        };
        items
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.err(key, "an array of strings", v)),
            })
            .collect()
    }

    /// An optional array of integers (e.g. token types).
    pub fn opt_ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        let v = self.md.get(key);
        let Some(Value::Array(items)) = v else {
            return match v {
                None => Ok(None),
                _ => Err(self.err(key, "an array of integers", v)),
            };
        };
        items
            .iter()
            .map(|x| match x {
                Value::I32(i) => Ok(*i as i64),
                Value::U32(i) => Ok(*i as i64),
                Value::I8(i) => Ok(*i as i64),
                Value::U8(i) => Ok(*i as i64),
                Value::I64(i) => Ok(*i),
                _ => Err(self.err(key, "an array of integers", v)),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

impl<R: Read + Seek> GgufFile<R> {
    /// Typed metadata access.
    pub fn meta(&self) -> Meta<'_> {
        Meta {
            path: &self.path,
            md: &self.content.metadata,
        }
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Reads tensor `name`, checks that its shape (in candle's row-major order,
    /// i.e. GGUF's dimensions reversed) is `expected`, and dequantises it to
    /// f32, row-major.
    pub fn vec_f32(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        let shape_str = |dims: &[usize]| {
            let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        };
        let Some(info) = self.content.tensor_infos.get(name) else {
            return Err(LmError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape_str(expected),
            });
        };
        if info.shape.dims() != expected {
            return Err(LmError::TensorShape {
                path: self.path.clone(),
                name: name.to_string(),
                expected: shape_str(expected),
                found: shape_str(info.shape.dims()),
            });
        }
        let q: QTensor = self
            .content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| LmError::Format {
                path: self.path.clone(),
                reason: format!("tensor {name}: {}", message(&e)),
            })?;
        // Dequantise explicitly: plain f32 matmuls are ~10x faster on CPU than
        // candle's quantised kernels, and give exactly the stored weights (the
        // quantised path also rounds the activations to Q8).
        Ok(q.dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}
