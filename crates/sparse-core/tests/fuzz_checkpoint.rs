//! Fuzzing of checkpoint loading (`model.safetensors` + `state.json`):
//! byte mutations, truncations and extensions of real checkpoints of every
//! model kind, structure-aware mutations of `state.json`, and generated
//! safetensors headers (absurd shapes, offsets out of range or overlapping,
//! wrong dtypes, header length past the end). Every case must end in `Ok` or
//! an `Err`, never a panic, and stay under an allocation bound; a checkpoint
//! that loads must then encode and take a training step without panicking.
//!
//! Case counts are fixed and seeded (see `support::count_alloc::fuzz_config`);
//! `PROPTEST_CASES=100000 cargo test --release -p sparse-core --test
//! fuzz_checkpoint` runs a longer fuzz. The counts are quoted in
//! docs/reliability.md.

#[path = "support/count_alloc.rs"]
mod count_alloc;

use proptest::prelude::*;
use serde_json::Value;
use sparse_core::checkpoint::{self, Checkpoint, ListaModel, Model, MODEL_FILE, STATE_FILE};
use sparse_core::data::SyntheticConfig;
use sparse_core::dictionary::autoencoder::{Autoencoder, AutoencoderConfig};
use sparse_core::dictionary::jumprelu::{JumpReluConfig, JumpReluSae};
use sparse_core::dictionary::matryoshka::{MatryoshkaConfig, MatryoshkaSae};
use sparse_core::dictionary::mp_sae::{MpSae, MpSaeConfig};
use sparse_core::dictionary::sparse_coding::{SparseCoding, SparseCodingConfig};
use sparse_core::dictionary::topk::{TopKConfig, TopKSae};
use sparse_core::encoders::lista::{Lista, ListaConfig};
use sparse_core::Matrix;
use std::path::PathBuf;
use std::sync::OnceLock;

#[global_allocator]
static ALLOC: count_alloc::Counting = count_alloc::Counting;

/// Cases per strategy run in CI (quoted in docs/reliability.md).
const CASES: u32 = 192;
/// No single allocation may exceed this, and no case may hold more at once:
/// the fixtures are a few KiB, so a claim-driven allocation shows at once.
const ALLOC_BOUND: usize = 16 << 20;
const N: usize = 8;
const DIM: usize = 4;

/// A saved checkpoint: `(kind, state.json, model.safetensors)`.
type Fixture = (String, Vec<u8>, Vec<u8>);

/// One saved checkpoint per model kind.
fn fixtures() -> &'static [Fixture] {
    static F: OnceLock<Vec<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let synth = SyntheticConfig::paper(N, DIM, 2, 1);
        let d = synth.dictionary().unwrap();
        let x = synth.split(&d, 16, 1).unwrap().x;
        let models: Vec<(&str, Model)> = vec![
            (
                "sae",
                Model::Autoencoder(Box::new(
                    Autoencoder::new(AutoencoderConfig::paper_sae(N, DIM, 1)).unwrap(),
                )),
            ),
            (
                "mlp",
                Model::Autoencoder(Box::new(
                    Autoencoder::new(AutoencoderConfig::paper_mlp(N, DIM, 5, 1)).unwrap(),
                )),
            ),
            (
                "topk",
                Model::TopK(Box::new(
                    TopKSae::new(TopKConfig::batch_topk(N, DIM, 2, 1)).unwrap(),
                )),
            ),
            (
                "jumprelu",
                Model::JumpRelu(Box::new(
                    JumpReluSae::new(JumpReluConfig::new(N, DIM, 1)).unwrap(),
                )),
            ),
            (
                "matryoshka",
                Model::Matryoshka(Box::new(
                    MatryoshkaSae::new(MatryoshkaConfig::new(N, DIM, 2, vec![2, N], 1)).unwrap(),
                )),
            ),
            (
                "mp-sae",
                Model::MpSae(Box::new(
                    MpSae::new(MpSaeConfig::new(N, DIM, 2, 1)).unwrap(),
                )),
            ),
            (
                "sparse-coding",
                Model::SparseCoding(Box::new(
                    SparseCoding::new(SparseCodingConfig::new(N, DIM, 1)).unwrap(),
                )),
            ),
            (
                "lista",
                Model::Lista(Box::new(ListaModel {
                    lista: Lista::from_dictionary(&d, ListaConfig::default()).unwrap(),
                    dictionary: d.clone(),
                })),
            ),
        ];
        let root = tempdir("fixtures");
        models
            .into_iter()
            .map(|(kind, mut model)| {
                for _ in 0..2 {
                    model.train_step(&x).unwrap();
                }
                let dir = root.join(kind);
                let ckpt = Checkpoint {
                    method: kind.to_string(),
                    config: serde_json::json!({"method": kind}),
                    step: 2,
                    data_sha256: "0".repeat(64),
                    last_loss: Some(1.0),
                    model,
                };
                checkpoint::save(&dir, &ckpt).unwrap();
                let state = std::fs::read(dir.join(STATE_FILE)).unwrap();
                let weights = std::fs::read(dir.join(MODEL_FILE)).unwrap();
                (kind.to_string(), state, weights)
            })
            .collect()
    })
}

/// A fresh folder under the system temporary folder, unique per process and call.
fn tempdir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "si-fuzz-ckpt-{}-{tag}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Writes the two files, loads them, and if that succeeds encodes a batch
/// and takes a training step; all under the allocation bound. Returns
/// whether the load succeeded.
fn load_and_use(state: &[u8], weights: &[u8]) -> bool {
    let root = tempdir("case");
    let dir = root.join("ckpt");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join(STATE_FILE), state).unwrap();
    std::fs::write(dir.join(MODEL_FILE), weights).unwrap();
    let (loaded, peak) = count_alloc::bounded(ALLOC_BOUND, || match checkpoint::load(&dir) {
        Ok(mut c) => {
            let x = Matrix::from_fn(6, c.model.dictionary().cols(), |i, j| {
                ((i * 7 + j * 3) % 5) as f32 * 0.3 - 0.5
            });
            let _ = c.model.encode(&x);
            let _ = c.model.train_step(&x);
            true
        }
        Err(e) => {
            // The message names a file of the checkpoint.
            let msg = e.to_string();
            assert!(msg.contains("ckpt"), "error does not name the file: {msg}");
            false
        }
    });
    assert!(peak <= ALLOC_BOUND, "peak allocation {peak} bytes");
    std::fs::remove_dir_all(&root).unwrap();
    loaded
}

#[test]
fn every_fixture_loads_unchanged() {
    for (kind, state, weights) in fixtures() {
        assert!(load_and_use(state, weights), "{kind}");
    }
}

/// `(position, byte)` edits, then a cut or an extension.
fn mutations() -> impl Strategy<Value = (Vec<(usize, u8)>, i32)> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        -64i32..64,
    )
}

fn mutate(bytes: &[u8], edits: &[(usize, u8)], resize: i32) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for &(pos, byte) in edits {
        let i = pos % b.len();
        b[i] = byte;
    }
    if resize < 0 {
        b.truncate(b.len().saturating_sub(resize.unsigned_abs() as usize));
    } else {
        b.extend(std::iter::repeat_n(0xA5, resize as usize));
    }
    b
}

/// An extreme replacement for a JSON value: numbers at the edges of their
/// types, wrong types, huge arrays claimed by small text.
fn extreme() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::from(0)),
        Just(Value::from(1)),
        Just(Value::from(-1)),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1u64 << 40)),
        Just(Value::from(usize::MAX / 4 + 1)),
        Just(Value::from(1e300)),
        Just(Value::from(-1e-30)),
        Just(Value::Null),
        Just(Value::from("x")),
        Just(Value::Array(vec![])),
        Just(serde_json::json!([1, 2, 3])),
        Just(serde_json::json!({})),
        (0u64..64).prop_map(Value::from),
    ]
}

/// Every node of `v` as a JSON pointer.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, c) in o {
                pointers(
                    c,
                    format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        // Long arrays of numbers (weights, moments) are sampled at their ends only.
        Value::Array(a) => {
            let n = a.len();
            for i in (0..n).filter(|&i| i < 3 || i + 3 >= n) {
                pointers(&a[i], format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

/// A header entry: name, dtype, shape, data offsets.
type StTensor = (String, String, Vec<u64>, (u64, u64));

/// A safetensors file built from parts that may contradict each other.
#[derive(Debug, Clone)]
struct StFile {
    tensors: Vec<StTensor>,
    declared_len: Option<u64>,
    data_len: usize,
}

fn st_file() -> impl Strategy<Value = StFile> {
    let name = prop_oneof![
        Just("W_enc".to_string()),
        Just("b_enc".to_string()),
        Just("W_dec".to_string()),
        Just("b_dec".to_string()),
        Just("__metadata__".to_string()),
        "[a-z_]{1,6}",
    ];
    let dtype = prop_oneof![
        Just("F32"),
        Just("F32"),
        Just("F64"),
        Just("F16"),
        Just("I64"),
        Just("BOOL"),
        Just("U8"),
        Just("Q4"),
    ]
    .prop_map(str::to_string);
    let dim = prop_oneof![
        Just(0u64),
        Just(1),
        Just(4),
        Just(8),
        Just(u32::MAX as u64),
        Just(u64::MAX),
        Just(1 << 62),
        0u64..20,
    ];
    let offset = prop_oneof![Just(0u64), Just(u64::MAX), 0u64..600, Just(1 << 40)];
    let tensor = (
        name,
        dtype,
        prop::collection::vec(dim, 0..4),
        (offset.clone(), offset),
    );
    (
        prop::collection::vec(tensor, 0..5),
        prop_oneof![
            Just(None),
            Just(Some(u64::MAX)),
            Just(Some(1 << 40)),
            Just(Some(100_000_000)),
            (0u64..2000).prop_map(Some),
        ],
        0usize..600,
    )
        .prop_map(|(tensors, declared_len, data_len)| StFile {
            tensors,
            declared_len,
            data_len,
        })
}

impl StFile {
    fn bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        for (name, dtype, shape, (a, b)) in &self.tensors {
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [a, b]}),
            );
        }
        let text = serde_json::to_vec(&Value::Object(header)).unwrap();
        let mut out = self
            .declared_len
            .unwrap_or(text.len() as u64)
            .to_le_bytes()
            .to_vec();
        out.extend_from_slice(&text);
        out.extend(std::iter::repeat_n(0u8, self.data_len));
        out
    }
}

/// A well-formed safetensors header for `tensors` (name, shape) whose data
/// length is consistent except for `delta` bytes.
fn consistent_st(tensors: &[(String, Vec<u64>)], delta: i64) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut start = 0u64;
    for (name, shape) in tensors {
        let n: u64 = shape.iter().product::<u64>() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, start + n]}),
        );
        start += n;
    }
    let text = serde_json::to_vec(&Value::Object(header)).unwrap();
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    let len = (start as i64 + delta).clamp(0, 4096) as usize;
    out.extend(std::iter::repeat_n(0u8, len));
    out
}

proptest! {
    #![proptest_config(count_alloc::fuzz_config(CASES))]

    #[test]
    fn mutated_weights_never_panic(which in 0usize..8, (edits, resize) in mutations()) {
        let (_, state, weights) = &fixtures()[which];
        load_and_use(state, &mutate(weights, &edits, resize));
    }

    #[test]
    fn mutated_state_bytes_never_panic(which in 0usize..8, (edits, resize) in mutations()) {
        let (_, state, weights) = &fixtures()[which];
        load_and_use(&mutate(state, &edits, resize), weights);
    }

    /// Structure-aware: one node of a valid `state.json` replaced by an
    /// extreme value (hyperparameters, shapes, steps, RNG state, moments).
    #[test]
    fn mutated_state_values_never_panic(which in 0usize..8, pick in any::<usize>(), value in extreme()) {
        let (_, state, weights) = &fixtures()[which];
        let mut v: Value = serde_json::from_slice(state).unwrap();
        let mut all = Vec::new();
        pointers(&v, String::new(), &mut all);
        let ptr = &all[pick % all.len()];
        if let Some(node) = v.pointer_mut(ptr) {
            *node = value;
        }
        load_and_use(&serde_json::to_vec(&v).unwrap(), weights);
    }

    /// Generated safetensors files paired with a valid `state.json`.
    #[test]
    fn generated_safetensors_never_panic(which in 0usize..8, file in st_file()) {
        let (_, state, _) = &fixtures()[which];
        prop_assert!(!load_and_use(state, &file.bytes()));
    }

    /// Correct names and huge claimed shapes, with the matching shapes in
    /// `state.json`: rejected from the file size, before reading the data.
    #[test]
    fn huge_claimed_shapes_are_rejected(dim0 in prop_oneof![Just(1u64 << 31), Just(1u64 << 40), 1u64 << 20..1u64 << 34], delta in -8i64..8) {
        let (_, state, _) = &fixtures()[0]; // sae: W_enc, b_enc, W_dec, b_dec
        let mut v: Value = serde_json::from_slice(state).unwrap();
        let tensors = vec![
            ("W_enc".to_string(), vec![DIM as u64, dim0]),
            ("b_enc".to_string(), vec![dim0]),
            ("W_dec".to_string(), vec![dim0, DIM as u64]),
            ("b_dec".to_string(), vec![DIM as u64]),
        ];
        for (name, shape) in &tensors {
            v["tensors"][name] = serde_json::json!(shape);
        }
        prop_assert!(!load_and_use(&serde_json::to_vec(&v).unwrap(), &consistent_st(&tensors, delta)));
    }
}
