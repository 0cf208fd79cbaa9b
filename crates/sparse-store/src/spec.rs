//! What a store holds ([`StoreSpec`]) and its table of contents ([`Manifest`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sparse_core::{Error, Result};

/// Version of the on-disk layout written by this crate (see the crate documentation).
pub const FORMAT_VERSION: u32 = 1;
/// Name of the manifest file inside a store folder.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Value of the `format` key of every shard's safetensors metadata.
pub const SHARD_FORMAT: &str = "sparse-infer-activations";

/// File name of shard `index`: `shard-00000.safetensors`, `shard-00001.safetensors`, …
pub fn shard_file_name(index: usize) -> String {
    format!("shard-{index:05}.safetensors")
}

/// The index encoded in a shard file name, or `None` for any other name.
pub(crate) fn parse_shard_file_name(name: &str) -> Option<usize> {
    let digits = name.strip_prefix("shard-")?.strip_suffix(".safetensors")?;
    if digits.len() < 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How activations are stored on disk; they are always handed out as `f32`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreDtype {
    /// IEEE single precision: exact.
    #[default]
    F32,
    /// IEEE half precision: about 3 significant digits, magnitudes up to 65504.
    F16,
    /// bfloat16: about 2 significant digits, the range of `f32`.
    BF16,
}

impl StoreDtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            StoreDtype::F32 => 4,
            StoreDtype::F16 | StoreDtype::BF16 => 2,
        }
    }

    /// The safetensors dtype name (`F32`, `F16`, `BF16`), also the manifest spelling.
    pub fn name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "F32",
            StoreDtype::F16 => "F16",
            StoreDtype::BF16 => "BF16",
        }
    }

    pub(crate) fn safetensors(self) -> safetensors::Dtype {
        match self {
            StoreDtype::F32 => safetensors::Dtype::F32,
            StoreDtype::F16 => safetensors::Dtype::F16,
            StoreDtype::BF16 => safetensors::Dtype::BF16,
        }
    }

    /// Appends `values` in this dtype (little-endian) to `out`. A finite value
    /// that overflows the dtype (e.g. 1e5 in `F16`) is an error, returned as
    /// its index, and `out` is left as it was: storing it would silently turn
    /// it into infinity.
    pub(crate) fn encode(
        self,
        values: &[f32],
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), usize> {
        let start = out.len();
        out.reserve(values.len() * self.size());
        let bad = match self {
            StoreDtype::F32 => {
                values.iter().for_each(|v| out.extend(v.to_le_bytes()));
                None
            }
            StoreDtype::F16 => values.iter().position(|&v| {
                let h = half::f16::from_f32(v);
                out.extend(h.to_le_bytes());
                !h.is_finite()
            }),
            StoreDtype::BF16 => values.iter().position(|&v| {
                let h = half::bf16::from_f32(v);
                out.extend(h.to_le_bytes());
                !h.is_finite()
            }),
        };
        match bad {
            None => Ok(()),
            Some(i) => {
                out.truncate(start);
                Err(i)
            }
        }
    }

    /// Decodes little-endian `bytes` of this dtype into `out` (`bytes.len() == out.len() * size`).
    pub(crate) fn decode(self, bytes: &[u8], out: &mut [f32]) {
        debug_assert_eq!(bytes.len(), out.len() * self.size());
        match self {
            StoreDtype::F32 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            StoreDtype::F16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            StoreDtype::BF16 => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = half::bf16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        }
    }
}

/// The language model the activations come from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Human name, e.g. `SmolLM2-135M`.
    pub name: String,
    /// File the weights were read from (e.g. a GGUF file name).
    pub file: String,
    /// Lowercase hex SHA-256 of that file.
    pub sha256: String,
}

/// One text file of the corpus the contexts were cut from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusFile {
    /// Path as the harvester was given it.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
}

/// Everything that fixes what a store holds. A resumed harvest must present
/// the identical spec: anything else would mix two different data sets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoreSpec {
    /// The model.
    pub model: ModelInfo,
    /// Hook point, e.g. `blocks.15.hook_resid_post`.
    pub hook: String,
    /// Width of an activation vector.
    pub d_model: usize,
    /// Storage dtype (`F32` when absent from the JSON).
    #[serde(default)]
    pub dtype: StoreDtype,
    /// Tokens per context, e.g. 128.
    pub context_len: usize,
    /// First kept position; positions `first_position..context_len` are stored
    /// (1 skips the attention-sink position 0).
    pub first_position: usize,
    /// Contexts per shard (the last shard may hold fewer).
    pub shard_contexts: usize,
    /// The corpus files, in the order the harvester reads them.
    pub corpus: Vec<CorpusFile>,
    /// Free-form harvest settings (tokeniser, batch size, …); `null` when absent.
    #[serde(default)]
    pub extra: Value,
}

impl StoreSpec {
    /// Activation rows per context: `context_len − first_position`.
    pub fn rows_per_context(&self) -> usize {
        self.context_len.saturating_sub(self.first_position)
    }

    /// Checks sizes: `d_model ≥ 1`, `first_position < context_len`,
    /// `shard_contexts ≥ 1`, a non-empty hook, and a shard size that fits in memory.
    pub fn validate(&self) -> Result<()> {
        if self.hook.trim().is_empty() {
            return Err(Error::invalid("hook", "\"\"", "must name the hook point"));
        }
        if self.d_model == 0 {
            return Err(Error::invalid("d_model", 0, "must be at least 1"));
        }
        if self.first_position >= self.context_len {
            return Err(Error::invalid(
                "first_position",
                self.first_position,
                &format!(
                    "must be below context_len ({}) so that every context keeps a position",
                    self.context_len
                ),
            ));
        }
        if self.shard_contexts == 0 {
            return Err(Error::invalid("shard_contexts", 0, "must be at least 1"));
        }
        let shard_bytes = self
            .shard_contexts
            .checked_mul(self.rows_per_context())
            .and_then(|r| r.checked_mul(self.d_model))
            .and_then(|v| v.checked_mul(self.dtype.size()))
            .filter(|&b| b <= isize::MAX as usize / 2);
        if shard_bytes.is_none() {
            return Err(Error::invalid(
                "shard_contexts",
                self.shard_contexts,
                "a shard of this many contexts does not fit in memory",
            ));
        }
        Ok(())
    }
}

/// One shard as the manifest records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// File name inside the store folder.
    pub file: String,
    /// Contexts in the shard.
    pub contexts: u64,
    /// Activation rows: `contexts × rows_per_context`.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the file.
    pub sha256: String,
}

/// The content of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format_version: u32,
    /// `sparse-infer <version>` of the build that created the store.
    pub created_by: String,
    /// What the store holds.
    pub spec: StoreSpec,
    /// Contexts in all shards.
    pub contexts: u64,
    /// Activation rows in all shards.
    pub rows: u64,
    /// The shards, in context order.
    pub shards: Vec<ShardEntry>,
    /// Whether the writer finished; an incomplete store is readable but partial.
    pub complete: bool,
}

/// The first field where `given` differs from `stored`, as
/// `(path, stored value, given value)`, values as compact JSON.
pub fn spec_difference(stored: &StoreSpec, given: &StoreSpec) -> Option<(String, String, String)> {
    let a = serde_json::to_value(stored).expect("a spec serialises");
    let b = serde_json::to_value(given).expect("a spec serialises");
    first_difference("", &a, &b)
}

fn first_difference(path: &str, a: &Value, b: &Value) -> Option<(String, String, String)> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| {
                let child = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                first_difference(
                    &child,
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                )
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(&format!("{path}[{i}]"), p, q)),
        _ if a == b => None,
        _ => Some((path.to_string(), short_json(a), short_json(b))),
    }
}

/// Compact JSON, cut to a readable length (an `extra` blob can be large).
fn short_json(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() <= 200 {
        s
    } else {
        format!("{}…", s.chars().take(200).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> StoreSpec {
        StoreSpec {
            model: ModelInfo {
                name: "m".into(),
                file: "m.gguf".into(),
                sha256: "ab".into(),
            },
            hook: "blocks.0.hook_resid_post".into(),
            d_model: 4,
            dtype: StoreDtype::F32,
            context_len: 8,
            first_position: 1,
            shard_contexts: 3,
            corpus: vec![CorpusFile {
                path: "a.txt".into(),
                bytes: 10,
                sha256: "cd".into(),
            }],
            extra: serde_json::json!({"batch": 4}),
        }
    }

    #[test]
    fn difference_names_the_nested_field() {
        let a = spec();
        assert_eq!(spec_difference(&a, &a), None);
        let mut b = a.clone();
        b.corpus[0].sha256 = "ef".into();
        assert_eq!(
            spec_difference(&a, &b),
            Some(("corpus[0].sha256".into(), "\"cd\"".into(), "\"ef\"".into()))
        );
        let mut c = a.clone();
        c.extra = serde_json::json!({"batch": 8});
        assert_eq!(spec_difference(&a, &c).unwrap().0, "extra.batch");
        let mut d = a.clone();
        d.dtype = StoreDtype::BF16;
        assert_eq!(
            spec_difference(&a, &d),
            Some(("dtype".into(), "\"F32\"".into(), "\"BF16\"".into()))
        );
    }

    #[test]
    fn dtype_and_extra_default_when_absent() {
        let mut v = serde_json::to_value(spec()).unwrap();
        v.as_object_mut().unwrap().remove("dtype");
        v.as_object_mut().unwrap().remove("extra");
        let s: StoreSpec = serde_json::from_value(v).unwrap();
        assert_eq!(s.dtype, StoreDtype::F32);
        assert_eq!(s.extra, Value::Null);
    }

    #[test]
    fn validation_rejects_impossible_sizes() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.first_position = 8;
        let e = s.validate().unwrap_err().to_string();
        assert!(e.contains("first_position = 8") && e.contains("(8)"), "{e}");
        let mut s = spec();
        s.d_model = 0;
        assert!(s.validate().is_err());
        let mut s = spec();
        s.shard_contexts = usize::MAX;
        assert!(s.validate().is_err());
    }

    #[test]
    fn half_precision_overflow_is_reported_not_stored_as_infinity() {
        let mut out = vec![7u8];
        assert_eq!(StoreDtype::F16.encode(&[1.0, 1e5, 2.0], &mut out), Err(1));
        assert_eq!(out, vec![7u8]);
        assert!(StoreDtype::BF16.encode(&[1e5], &mut out).is_ok());
        let mut back = [0.0f32];
        StoreDtype::BF16.decode(&out[1..], &mut back);
        assert!((back[0] - 1e5).abs() / 1e5 < 1.0 / 128.0);
    }

    #[test]
    fn shard_names_round_trip() {
        assert_eq!(shard_file_name(3), "shard-00003.safetensors");
        assert_eq!(parse_shard_file_name("shard-00003.safetensors"), Some(3));
        assert_eq!(
            parse_shard_file_name("shard-123456.safetensors"),
            Some(123456)
        );
        assert_eq!(parse_shard_file_name("shard-3.safetensors"), None);
        assert_eq!(
            parse_shard_file_name(".shard-00003.safetensors.tmp-1"),
            None
        );
    }
}
