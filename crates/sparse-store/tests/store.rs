//! Writer and reader end to end: round trips, independent readers, every
//! error case by its message, and crash safety (kills at every context,
//! stray temporaries, a shard renamed into place but never committed).

mod common;

use common::{context, file_names, push, spec, value, write_store};
use serde_json::Value;
use sparse_store::{ActivationStore, Manifest, StoreDtype, StoreWriter, MANIFEST_FILE};
use std::collections::BTreeMap;
use std::path::Path;

fn read_manifest_json(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join(MANIFEST_FILE)).unwrap()).unwrap()
}

fn write_manifest_json(dir: &Path, v: &Value) {
    std::fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(v).unwrap(),
    )
    .unwrap();
}

/// Checks every shard, context and row of `store` against the synthetic
/// harvest, with activations within `tol(v)` of the pushed value `v`.
fn check_content(store: &ActivationStore, n: u64, tol: impl Fn(f32) -> f32) {
    let s = store.spec().clone();
    let k = s.rows_per_context() as u64;
    assert_eq!((store.contexts(), store.rows()), (n, n * k));
    let mut next = 0u64;
    for i in 0..store.num_shards() {
        let shard = store.read_shard(i).unwrap();
        assert_eq!(shard.first_context, next);
        assert_eq!(store.shard_context_range(i).start, next);
        for c in 0..shard.contexts() {
            let g = next + c as u64;
            let (t, d, o, a) = context(&s, g);
            assert_eq!(shard.context_tokens(c), &t[..]);
            assert_eq!((shard.doc_index[c], shard.doc_offset[c]), (d, o));
            let got = shard.context_activations(c);
            for (x, y) in got.as_slice().iter().zip(&a) {
                assert!((x - y).abs() <= tol(*y), "context {g}: {x} vs {y}");
            }
            assert_eq!(store.context_tokens(g).unwrap(), t);
            assert_eq!(store.context_source(g).unwrap(), (d, o));
        }
        next += shard.contexts() as u64;
    }
    assert_eq!(next, n);
}

#[test]
fn f32_round_trip_is_exact_and_rows_locate() {
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), spec(StoreDtype::F32, 4), 10);
    assert!(store.is_complete());
    assert_eq!(store.num_shards(), 3);
    check_content(&store, 10, |_| 0.0);
    store.verify_checksums().unwrap();
    // Row ↔ (context, position) for every row, across shard boundaries.
    for row in 0..store.rows() {
        let loc = store.locate_row(row).unwrap();
        assert_eq!(store.row_of(loc.context, loc.position).unwrap(), row);
        let shard = store.read_shard(loc.shard).unwrap();
        assert_eq!(shard.activations.row(loc.row_in_shard)[2], value(row, 2));
        assert_eq!(loc.context, row / 7);
        assert_eq!(loc.position, 1 + (row % 7) as usize);
    }
    let e = store.locate_row(70).unwrap_err().to_string();
    assert!(e.contains("70") && e.contains("holds 70 rows"), "{e}");
    assert!(store.row_of(0, 0).is_err(), "position 0 is not kept");
    assert!(store.context_tokens(10).is_err());
    assert!(store.read_shard(3).is_err());
}

#[test]
fn half_precisions_round_trip_within_their_precision() {
    for (dtype, rel) in [
        (StoreDtype::F16, 2f32.powi(-11)),
        (StoreDtype::BF16, 2f32.powi(-8)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = write_store(dir.path(), spec(dtype, 3), 7);
        assert_eq!(store.spec().dtype, dtype);
        check_content(&store, 7, |v| v.abs() * rel + 1e-7);
        // The files really are two bytes a value (headers differ by at most their padding).
        let f32_dir = tempfile::tempdir().unwrap();
        let f32_store = write_store(f32_dir.path(), spec(StoreDtype::F32, 3), 7);
        let saved =
            f32_store.manifest().shards[0].bytes as i64 - store.manifest().shards[0].bytes as i64;
        assert!((saved - 3 * 7 * 6 * 2).abs() <= 8, "{dtype:?}: {saved}");
    }
}

#[test]
fn manifest_and_shards_read_without_this_crate() {
    use safetensors::{Dtype, SafeTensors};
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), spec(StoreDtype::F32, 4), 6);
    let m = read_manifest_json(dir.path());
    assert_eq!(m["format_version"], 1);
    assert!(m["created_by"]
        .as_str()
        .unwrap()
        .starts_with("sparse-infer "));
    assert_eq!(m["spec"]["hook"], "blocks.1.hook_resid_post");
    assert_eq!(m["spec"]["dtype"], "F32");
    assert_eq!(m["spec"]["extra"]["tokenizer"], "toy");
    assert_eq!(
        (m["contexts"].as_u64(), m["rows"].as_u64()),
        (Some(6), Some(42))
    );
    assert_eq!(m["complete"], true);
    // The typed form round-trips through serde too.
    let typed: Manifest = serde_json::from_value(m.clone()).unwrap();
    assert_eq!(&typed, store.manifest());
    let mut first_context = 0u64;
    for (i, entry) in m["shards"].as_array().unwrap().iter().enumerate() {
        let file = entry["file"].as_str().unwrap();
        assert_eq!(file, format!("shard-{i:05}.safetensors"));
        let path = dir.path().join(file);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(entry["bytes"].as_u64(), Some(bytes.len() as u64));
        assert_eq!(
            entry["sha256"].as_str().unwrap(),
            sparse_core::checkpoint::sha256_file(&path).unwrap()
        );
        let c = entry["contexts"].as_u64().unwrap() as usize;
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<_> = st.names().into_iter().cloned().collect();
        names.sort();
        assert_eq!(names, ["activations", "doc_index", "doc_offset", "tokens"]);
        let acts = st.tensor("activations").unwrap();
        assert_eq!((acts.dtype(), acts.shape()), (Dtype::F32, &[c * 7, 6][..]));
        let row0: Vec<f32> = acts.data()[..24]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(
            row0,
            (0..6)
                .map(|j| value(first_context * 7, j))
                .collect::<Vec<_>>()
        );
        let tokens = st.tensor("tokens").unwrap();
        assert_eq!((tokens.dtype(), tokens.shape()), (Dtype::U32, &[c, 8][..]));
        assert_eq!(
            u32::from_le_bytes(tokens.data()[4..8].try_into().unwrap()),
            (first_context * 1000 + 1) as u32
        );
        let di = st.tensor("doc_index").unwrap();
        assert_eq!((di.dtype(), di.shape()), (Dtype::U32, &[c][..]));
        let off = st.tensor("doc_offset").unwrap();
        assert_eq!((off.dtype(), off.shape()), (Dtype::U64, &[c][..]));
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta: BTreeMap<_, _> = header.metadata().clone().unwrap().into_iter().collect();
        assert_eq!(meta["hook"], "blocks.1.hook_resid_post");
        assert_eq!(meta["d_model"], "6");
        assert_eq!(meta["first_position"], "1");
        assert_eq!(meta["first_context"], first_context.to_string());
        first_context += c as u64;
    }
}

#[test]
fn incomplete_and_empty_stores_open_and_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = StoreWriter::create(dir.path(), spec(StoreDtype::F32, 4)).unwrap();
    let empty = ActivationStore::open(dir.path()).unwrap();
    assert_eq!(
        (empty.contexts(), empty.num_shards(), empty.is_complete()),
        (0, 0, false)
    );
    push(&mut w, 0..9);
    assert_eq!(
        (
            w.contexts_written(),
            w.contexts_pushed(),
            w.shards_written()
        ),
        (8, 9, 2)
    );
    let partial = ActivationStore::open(dir.path()).unwrap();
    assert!(!partial.is_complete());
    check_content(&partial, 8, |_| 0.0);
    drop(w);
    assert_eq!(ActivationStore::open(dir.path()).unwrap().contexts(), 8);
}

// ---------------------------------------------------------------- errors

fn open_err(dir: &Path) -> String {
    ActivationStore::open(dir).unwrap_err().to_string()
}

#[test]
fn truncated_shard_is_named_with_expected_and_found_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), spec(StoreDtype::F32, 4), 10);
    let path = store.shard_path(1);
    let full = store.manifest().shards[1].bytes;
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("shard-00001.safetensors"), "{e}");
    assert!(e.contains(&format!("expected {full} bytes")), "{e}");
    assert!(e.contains(&format!("found {} bytes", full - 10)), "{e}");
    // Even with the manifest edited to the truncated size, the header gives it away.
    let mut m = read_manifest_json(dir.path());
    m["shards"][1]["bytes"] = (full - 10).into();
    write_manifest_json(dir.path(), &m);
    let e = open_err(dir.path());
    assert!(
        e.contains("shard-00001.safetensors") && e.contains("truncated"),
        "{e}"
    );
    // A read of an intact shard still works from the handle opened before.
    assert!(store.read_shard(0).is_ok());
    let e = store.read_shard(1).unwrap_err().to_string();
    assert!(e.contains("shard-00001.safetensors"), "{e}");
}

#[test]
fn missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), spec(StoreDtype::F32, 4), 10);
    std::fs::remove_file(dir.path().join("shard-00002.safetensors")).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("shard-00002.safetensors") && e.contains("listed in manifest.json but missing"),
        "{e}"
    );
}

#[test]
fn manifest_disagreeing_with_a_shard_names_shard_and_shapes() {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), spec(StoreDtype::F32, 4), 10);
    let mut m = read_manifest_json(dir.path());
    m["shards"][2]["contexts"] = 3.into();
    m["shards"][2]["rows"] = 21.into();
    m["contexts"] = 11.into();
    m["rows"] = 77.into();
    write_manifest_json(dir.path(), &m);
    let e = open_err(dir.path());
    assert!(e.contains("shard-00002.safetensors: tensor"), "{e}");
    assert!(
        e.contains("expected shape U64 [3] (3 contexts from manifest.json)"),
        "{e}"
    );
    assert!(e.contains("found U64 [2]"), "{e}");
    // More contexts than a shard may hold is refused before any shard is read.
    m["shards"][2]["contexts"] = 2.into();
    m["shards"][2]["rows"] = 14.into();
    m["shards"][0]["contexts"] = 5.into();
    m["shards"][0]["rows"] = 35.into();
    write_manifest_json(dir.path(), &m);
    let e = open_err(dir.path());
    assert!(
        e.contains("manifest.json") && e.contains("shard-00000.safetensors lists 5 contexts"),
        "{e}"
    );
    // Totals that disagree with the shard list.
    m["shards"][0]["contexts"] = 4.into();
    m["shards"][0]["rows"] = 28.into();
    m["contexts"] = 12.into();
    m["rows"] = 70.into();
    write_manifest_json(dir.path(), &m);
    let e = open_err(dir.path());
    assert!(
        e.contains("manifest.json")
            && e.contains("12 contexts")
            && e.contains("sums to 10 contexts"),
        "{e}"
    );
    // A shard's rows that are not contexts × kept positions.
    m["contexts"] = 10.into();
    m["shards"][2]["rows"] = 13.into();
    m["rows"] = 69.into();
    write_manifest_json(dir.path(), &m);
    let e = open_err(dir.path());
    assert!(
        e.contains("shard-00002.safetensors") && e.contains("13 rows"),
        "{e}"
    );
}

#[test]
fn shard_from_elsewhere_is_caught_by_its_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), spec(StoreDtype::F32, 4), 8);
    // Swap the two (same-sized) shards: each now claims the other's first context.
    let (a, b) = (store.shard_path(0), store.shard_path(1));
    let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, &y).unwrap();
    std::fs::write(&b, &x).unwrap();
    let mut m = read_manifest_json(dir.path());
    let s0 = m["shards"][0]["bytes"].clone();
    m["shards"][0]["bytes"] = m["shards"][1]["bytes"].clone();
    m["shards"][1]["bytes"] = s0;
    write_manifest_json(dir.path(), &m);
    let e = open_err(dir.path());
    assert!(
        e.contains("shard-00000.safetensors")
            && e.contains("metadata shard_index is \"1\", expected \"0\""),
        "{e}"
    );
}

#[test]
fn corrupt_or_missing_manifest_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("manifest.json"), "{e}");
    write_store(dir.path(), spec(StoreDtype::F32, 4), 5);
    let mut m = read_manifest_json(dir.path());
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        b"{\"format_version\": 1, \"spec\": ",
    )
    .unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("manifest.json") && e.contains("not a valid activation-store manifest"),
        "{e}"
    );
    m["format_version"] = 99.into();
    write_manifest_json(dir.path(), &m);
    let e = open_err(dir.path());
    assert!(e.contains("format_version 99 is not supported"), "{e}");
}

#[test]
fn checksum_verification_catches_a_changed_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = write_store(dir.path(), spec(StoreDtype::F32, 4), 8);
    let path = store.shard_path(1);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let store = ActivationStore::open(dir.path()).unwrap();
    let e = store.verify_checksums().unwrap_err().to_string();
    assert!(
        e.contains("shard-00001.safetensors") && e.contains("SHA-256"),
        "{e}"
    );
}

#[test]
fn bad_pushes_are_refused_and_leave_the_writer_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(StoreDtype::F32, 4);
    let mut w = StoreWriter::create(dir.path(), s.clone()).unwrap();
    push(&mut w, 0..2);
    let (t, d, o, mut a) = context(&s, 2);
    let e = w.push_context(&t, d, o, &a[..41]).unwrap_err().to_string();
    assert!(
        e.contains("context 2")
            && e.contains("expected shape 7 × 6 = 42 values")
            && e.contains("found 41 values"),
        "{e}"
    );
    let e = w.push_context(&t[..7], d, o, &a).unwrap_err().to_string();
    assert!(
        e.contains("tokens") && e.contains("8 values") && e.contains("found 7"),
        "{e}"
    );
    a[2 * 6 + 3] = f32::NAN;
    let e = w.push_context(&t, d, o, &a).unwrap_err().to_string();
    assert!(
        e.contains("NaN") && e.contains("row 2, column 3") && e.contains("context 2"),
        "{e}"
    );
    a[2 * 6 + 3] = f32::NEG_INFINITY;
    assert!(w.push_context(&t, d, o, &a).is_err());
    assert_eq!(w.contexts_pushed(), 2);
    push(&mut w, 2..6);
    check_content(&w.finish().unwrap(), 6, |_| 0.0);

    let dir = tempfile::tempdir().unwrap();
    let s = spec(StoreDtype::F16, 4);
    let mut w = StoreWriter::create(dir.path(), s.clone()).unwrap();
    let (t, d, o, mut a) = context(&s, 0);
    a[5] = 1e5;
    let e = w.push_context(&t, d, o, &a).unwrap_err().to_string();
    assert!(
        e.contains("overflows the storage dtype F16") && e.contains("row 0, column 5"),
        "{e}"
    );
    assert_eq!(w.contexts_pushed(), 0);
}

#[test]
fn resume_refuses_another_spec_naming_field_values_and_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(StoreDtype::F32, 4);
    let mut w = StoreWriter::create(dir.path(), s.clone()).unwrap();
    push(&mut w, 0..5);
    drop(w);
    let mut other = s.clone();
    other.hook = "blocks.2.hook_resid_post".into();
    let e = StoreWriter::resume(dir.path(), other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("manifest.json") && e.contains("`hook`"), "{e}");
    assert!(
        e.contains("\"blocks.1.hook_resid_post\"") && e.contains("\"blocks.2.hook_resid_post\""),
        "{e}"
    );
    let mut other = s.clone();
    other.corpus[0].sha256 = "22".repeat(32);
    let e = StoreWriter::resume(dir.path(), other)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`corpus[0].sha256`"), "{e}");
    let mut other = s.clone();
    other.shard_contexts = 8;
    let e = StoreWriter::resume(dir.path(), other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`shard_contexts`") && e.contains("holds 4") && e.contains("gives 8"),
        "{e}"
    );
    // Creating over it, or resuming what does not exist, are errors too.
    let e = StoreWriter::create(dir.path(), s.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("manifest.json") && e.contains("already exists"),
        "{e}"
    );
    let empty = tempfile::tempdir().unwrap();
    let e = StoreWriter::resume(empty.path(), s.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("manifest.json") && e.contains("no store to resume"),
        "{e}"
    );
    // A finished store is not resumed.
    let mut w = StoreWriter::resume(dir.path(), s.clone()).unwrap();
    push(&mut w, 4..6);
    w.finish().unwrap();
    let e = StoreWriter::resume(dir.path(), s).unwrap_err().to_string();
    assert!(e.contains("complete (6 contexts)"), "{e}");
}

// ---------------------------------------------------------------- crash safety

const N: u64 = 23;

/// Every file of `dir` and its bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    file_names(dir)
        .into_iter()
        .map(|n| {
            let b = std::fs::read(dir.join(&n)).unwrap();
            (n, b)
        })
        .collect()
}

fn reference() -> (tempfile::TempDir, BTreeMap<String, Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path(), spec(StoreDtype::BF16, 5), N);
    let snap = snapshot(dir.path());
    (dir, snap)
}

/// Resumes the store in `dir`, pushes the rest of the harvest and finishes.
fn resume_and_finish(dir: &Path) -> StoreWriter {
    let mut w = StoreWriter::open_for_append(dir, spec(StoreDtype::BF16, 5)).unwrap();
    let from = w.contexts_written();
    push(&mut w, from..N);
    w
}

#[test]
fn a_kill_after_any_context_resumes_to_the_uninterrupted_store() {
    let (_keep, want) = reference();
    for kill_at in 0..=N {
        let dir = tempfile::tempdir().unwrap();
        let mut w = StoreWriter::create(dir.path(), spec(StoreDtype::BF16, 5)).unwrap();
        push(&mut w, 0..kill_at);
        drop(w); // the kill: buffered contexts are lost
        let opened = ActivationStore::open(dir.path()).unwrap();
        assert_eq!(opened.contexts(), kill_at / 5 * 5);
        let w = resume_and_finish(dir.path());
        assert_eq!(w.contexts_pushed(), N);
        let store = w.finish().unwrap();
        store.verify_checksums().unwrap();
        assert_eq!(
            snapshot(dir.path()),
            want,
            "killed after {kill_at} contexts"
        );
    }
}

#[test]
fn stray_temporaries_and_an_uncommitted_shard_are_cleaned_on_resume() {
    let (_keep, want) = reference();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut w = StoreWriter::create(d, spec(StoreDtype::BF16, 5)).unwrap();
    push(&mut w, 0..10);
    let manifest_at_10 = std::fs::read(d.join(MANIFEST_FILE)).unwrap();
    push(&mut w, 10..17);
    drop(w);
    // Killed after renaming shard 2 into place but before the manifest named it.
    std::fs::write(d.join(MANIFEST_FILE), &manifest_at_10).unwrap();
    // And in the middle of writing shard 3 and a manifest.
    std::fs::write(d.join(".shard-00003.safetensors.tmp-4242"), b"half a shard").unwrap();
    std::fs::write(d.join(".manifest.json.tmp-4242"), b"{\"format").unwrap();
    std::fs::write(d.join("notes.txt"), b"not ours").unwrap();
    // Readers see the committed state only.
    assert_eq!(ActivationStore::open(d).unwrap().contexts(), 10);
    let w = resume_and_finish(d);
    let mut removed: Vec<String> = w
        .removed_on_resume()
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    removed.sort();
    assert_eq!(
        removed,
        [
            ".manifest.json.tmp-4242",
            ".shard-00003.safetensors.tmp-4242",
            "shard-00002.safetensors"
        ]
    );
    w.finish().unwrap();
    let mut got = snapshot(d);
    assert_eq!(got.remove("notes.txt").as_deref(), Some(&b"not ours"[..]));
    assert_eq!(got, want);
}

#[test]
fn kills_before_the_first_manifest_or_before_finish_resume() {
    let (_keep, want) = reference();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Killed while writing the very first manifest: only its temporary exists.
    std::fs::write(d.join(".manifest.json.tmp-77"), b"{").unwrap();
    let w = resume_and_finish(d);
    assert_eq!(w.removed_on_resume(), [d.join(".manifest.json.tmp-77")]);
    w.finish().unwrap();
    assert_eq!(snapshot(d), want);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Killed with every shard written but the last partial one still buffered.
    let mut w = StoreWriter::create(d, spec(StoreDtype::BF16, 5)).unwrap();
    push(&mut w, 0..N);
    assert_eq!(w.contexts_written(), 20);
    drop(w);
    let w = resume_and_finish(d);
    w.finish().unwrap();
    assert_eq!(snapshot(d), want);
}

// ---------------------------------------------------------------- Python

/// Reads shards with `safetensors.numpy.load_file` (and the BF16 recipe of
/// the crate documentation) when `$SPARSE_INFER_PYTHON` names a Python with
/// numpy and safetensors; skipped with a message otherwise.
#[test]
fn python_reads_the_shards() {
    let Some(python) = std::env::var_os("SPARSE_INFER_PYTHON") else {
        eprintln!("skipped: set SPARSE_INFER_PYTHON to a Python with numpy and safetensors");
        return;
    };
    let probe = std::process::Command::new(&python)
        .args(["-c", "import numpy, safetensors.numpy"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: {python:?} lacks numpy or safetensors");
        return;
    }
    const SCRIPT: &str = r#"
import json, struct, sys
import numpy as np
from safetensors.numpy import load_file
store = sys.argv[1]
m = json.load(open(f"{store}/manifest.json"))
out = []
for s in m["shards"]:
    path = f"{store}/{s['file']}"
    if m["spec"]["dtype"] == "BF16":
        raw = open(path, "rb").read(); n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n]); t = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]; data = raw[8 + n + a:8 + n + b]
            if info["dtype"] == "BF16":
                bits = np.frombuffer(data, "<u2").astype(np.uint32) << 16
                t[name] = bits.view(np.float32).reshape(info["shape"])
            else:
                dt = {"U32": "<u4", "U64": "<u8"}[info["dtype"]]
                t[name] = np.frombuffer(data, dt).reshape(info["shape"])
    else:
        t = load_file(path)
    out.append({
        "activations": t["activations"].astype(np.float32).tolist(),
        "tokens": t["tokens"].tolist(),
        "doc_index": t["doc_index"].tolist(),
        "doc_offset": t["doc_offset"].tolist(),
        "dtypes": [str(t[k].dtype) for k in ("activations", "tokens", "doc_index", "doc_offset")],
    })
print(json.dumps(out))
"#;
    for dtype in [StoreDtype::F32, StoreDtype::F16, StoreDtype::BF16] {
        let dir = tempfile::tempdir().unwrap();
        let store = write_store(dir.path(), spec(dtype, 4), 7);
        let out = std::process::Command::new(&python)
            .args(["-c", SCRIPT])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shards: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(shards.len(), store.num_shards());
        for (i, py) in shards.iter().enumerate() {
            let shard = store.read_shard(i).unwrap();
            let acts: Vec<f32> = py["activations"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_f64().unwrap() as f32)
                })
                .collect();
            assert_eq!(acts, shard.activations.as_slice(), "{dtype:?} shard {i}");
            let tokens: Vec<u32> = py["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| {
                    r.as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_u64().unwrap() as u32)
                })
                .collect();
            assert_eq!(tokens, shard.tokens);
            let di: Vec<u32> = serde_json::from_value(py["doc_index"].clone()).unwrap();
            let off: Vec<u64> = serde_json::from_value(py["doc_offset"].clone()).unwrap();
            assert_eq!(
                (di, off),
                (shard.doc_index.clone(), shard.doc_offset.clone())
            );
            if dtype != StoreDtype::BF16 {
                let want = if dtype == StoreDtype::F32 {
                    "float32"
                } else {
                    "float16"
                };
                assert_eq!(
                    py["dtypes"],
                    serde_json::json!([want, "uint32", "uint32", "uint64"])
                );
            }
        }
    }
}
