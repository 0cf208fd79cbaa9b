use super::*;
use crate::data::SyntheticConfig;
use crate::dictionary::autoencoder::AutoencoderConfig;
use crate::dictionary::jumprelu::JumpReluConfig;
use crate::dictionary::topk::TopKConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;

fn data() -> Matrix {
    let c = SyntheticConfig::paper(16, 8, 3, 0);
    let d = c.dictionary().unwrap();
    c.split(&d, 64, 1).unwrap().x
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("si-saelens-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Trained models of every exportable kind (a few steps, so biases are non-zero).
fn sae_model() -> Autoencoder {
    let mut c = AutoencoderConfig::paper_sae(16, 8, 1);
    c.encoder_bias = true;
    c.decoder_bias = true;
    let mut m = Autoencoder::new(c).unwrap();
    let x = data();
    for _ in 0..20 {
        m.train_step(&x).unwrap();
    }
    m
}

fn topk_model(batch: bool) -> TopKSae {
    let c = if batch {
        TopKConfig::batch_topk(16, 8, 3, 2)
    } else {
        TopKConfig::topk(16, 8, 3, 2)
    };
    let mut m = TopKSae::new(c).unwrap();
    let x = data();
    for _ in 0..30 {
        m.train_step(&x).unwrap();
    }
    m
}

fn jumprelu_model() -> JumpReluSae {
    let mut m = JumpReluSae::new(JumpReluConfig::new(16, 8, 3)).unwrap();
    let x = data();
    for _ in 0..30 {
        m.train_step(&x).unwrap();
    }
    m
}

fn read_cfg(dir: &Path) -> Map<String, Value> {
    match serde_json::from_slice(&std::fs::read(dir.join(CFG_FILE)).unwrap()).unwrap() {
        Value::Object(m) => m,
        _ => panic!("cfg.json is not an object"),
    }
}

/// name → (dtype, shape) of the weights file.
fn tensor_table(dir: &Path) -> BTreeMap<String, (String, Vec<usize>)> {
    let bytes = std::fs::read(dir.join(WEIGHTS_FILE)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, (format!("{:?}", t.dtype()), t.shape().to_vec())))
        .collect()
}

fn keys(m: &Map<String, Value>) -> Vec<&str> {
    let mut k: Vec<&str> = m.keys().map(String::as_str).collect();
    k.sort();
    k
}

const STANDARD_KEYS: [&str; 9] = [
    "apply_b_dec_to_input",
    "architecture",
    "d_in",
    "d_sae",
    "device",
    "dtype",
    "metadata",
    "normalize_activations",
    "reshape_activations",
];

fn expect_tensors(dir: &Path, with_threshold: bool) {
    let mut want: BTreeMap<String, (String, Vec<usize>)> = [
        ("W_enc", vec![8, 16]),
        ("b_enc", vec![16]),
        ("W_dec", vec![16, 8]),
        ("b_dec", vec![8]),
    ]
    .into_iter()
    .map(|(n, s)| (n.to_string(), ("F32".to_string(), s)))
    .collect();
    if with_threshold {
        want.insert("threshold".into(), ("F32".into(), vec![16]));
    }
    assert_eq!(tensor_table(dir), want);
}

#[test]
fn standard_export_writes_exactly_saelens_keys_and_tensors() {
    let dir = tmp("standard");
    let mut s = SaeLens::from_autoencoder(&sae_model()).unwrap();
    s.set_hook_name("blocks.0.hook_resid_pre");
    s.export(&dir).unwrap();
    let cfg = read_cfg(&dir);
    assert_eq!(keys(&cfg), STANDARD_KEYS.to_vec());
    assert_eq!(cfg["architecture"], "standard");
    assert_eq!(cfg["d_in"], 8);
    assert_eq!(cfg["d_sae"], 16);
    assert_eq!(cfg["dtype"], "float32");
    assert_eq!(cfg["device"], "cpu");
    // Our SAE encodes x itself: the non-default false must be written.
    assert_eq!(cfg["apply_b_dec_to_input"], false);
    assert_eq!(cfg["normalize_activations"], "none");
    assert_eq!(cfg["reshape_activations"], "none");
    let md = cfg["metadata"].as_object().unwrap();
    assert_eq!(md["sae_lens_version"], SAELENS_VERSION);
    assert_eq!(md["sparse_infer_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(md["hook_name"], "blocks.0.hook_resid_pre");
    expect_tensors(&dir, false);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn topk_export_adds_k_and_rescale() {
    let dir = tmp("topk");
    SaeLens::from_topk(&topk_model(false)).export(&dir).unwrap();
    let cfg = read_cfg(&dir);
    let mut want = STANDARD_KEYS.to_vec();
    want.extend(["k", "rescale_acts_by_decoder_norm"]);
    want.sort();
    assert_eq!(keys(&cfg), want);
    assert_eq!(cfg["architecture"], "topk");
    assert_eq!(cfg["k"], 3);
    assert_eq!(cfg["rescale_acts_by_decoder_norm"], false);
    assert_eq!(cfg["apply_b_dec_to_input"], true);
    expect_tensors(&dir, false);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn batchtopk_is_written_as_jumprelu_with_broadcast_threshold() {
    let dir = tmp("batchtopk");
    let m = topk_model(true);
    let theta = m.inference_threshold().unwrap();
    assert!(theta > 0.0, "the threshold average moved: {theta}");
    SaeLens::from_topk(&m).export(&dir).unwrap();
    let cfg = read_cfg(&dir);
    assert_eq!(keys(&cfg), STANDARD_KEYS.to_vec());
    assert_eq!(cfg["architecture"], "jumprelu");
    let md = cfg["metadata"].as_object().unwrap();
    assert_eq!(md["training_architecture"], "batchtopk");
    assert_eq!(md["training_architecture_details"]["k"], 3);
    expect_tensors(&dir, true);
    let back = SaeLens::import(&dir).unwrap();
    assert_eq!(
        back.architecture,
        Architecture::JumpRelu {
            threshold: vec![theta; 16]
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn jumprelu_export_writes_thresholds() {
    let dir = tmp("jumprelu");
    let m = jumprelu_model();
    SaeLens::from_jumprelu(&m).export(&dir).unwrap();
    let cfg = read_cfg(&dir);
    assert_eq!(keys(&cfg), STANDARD_KEYS.to_vec());
    assert_eq!(cfg["architecture"], "jumprelu");
    expect_tensors(&dir, true);
    let back = SaeLens::import(&dir).unwrap();
    assert_eq!(
        back.architecture,
        Architecture::JumpRelu {
            threshold: m.threshold()
        }
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_import_round_trip_is_exact_and_stable() {
    let saes = [
        SaeLens::from_autoencoder(&sae_model()).unwrap(),
        SaeLens::from_topk(&topk_model(false)),
        SaeLens::from_topk(&topk_model(true)),
        SaeLens::from_jumprelu(&jumprelu_model()),
    ];
    for (i, s) in saes.iter().enumerate() {
        let dir = tmp(&format!("rt{i}"));
        s.export(&dir).unwrap();
        let back = SaeLens::import(&dir).unwrap();
        assert_eq!(back.architecture, s.architecture);
        assert_eq!(back.w_enc, s.w_enc);
        assert_eq!(back.b_enc, s.b_enc);
        assert_eq!(back.w_dec, s.w_dec);
        assert_eq!(back.b_dec, s.b_dec);
        assert_eq!(back.apply_b_dec_to_input, s.apply_b_dec_to_input);
        // Re-exporting what was imported writes the very same bytes.
        let dir2 = tmp(&format!("rt{i}b"));
        back.export(&dir2).unwrap();
        for f in [CFG_FILE, WEIGHTS_FILE] {
            assert_eq!(
                std::fs::read(dir.join(f)).unwrap(),
                std::fs::read(dir2.join(f)).unwrap(),
                "{f} of architecture {}",
                s.architecture.name()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&dir2).unwrap();
    }
}

#[test]
fn exported_models_encode_and_decode_as_the_models_themselves() {
    let x = data();
    let close = |a: &Matrix, b: &Matrix, what: &str| {
        let d = a.max_abs_diff(b);
        assert!(d < 1e-5, "{what}: max |Δ| = {d}");
    };
    let sae = sae_model();
    let s = SaeLens::from_autoencoder(&sae).unwrap();
    close(
        &s.encode(&x).unwrap(),
        &sae.encode(&x).unwrap(),
        "sae codes",
    );
    let z = s.encode(&x).unwrap();
    close(
        &s.decode(&z).unwrap(),
        &sae.decode(&z).unwrap(),
        "sae decode",
    );
    for batch in [false, true] {
        let m = topk_model(batch);
        let s = SaeLens::from_topk(&m);
        let z = s.encode(&x).unwrap();
        close(&z, &m.encode(&x).unwrap(), "topk codes");
        close(
            &s.decode(&z).unwrap(),
            &m.decode(&z).unwrap(),
            "topk decode",
        );
    }
    let m = jumprelu_model();
    let s = SaeLens::from_jumprelu(&m);
    close(
        &s.encode(&x).unwrap(),
        &m.encode(&x).unwrap(),
        "jumprelu codes",
    );
}

/// SAELens' inference math written out per sample in f64 (spec §2), independent of the module.
fn reference_encode(s: &SaeLens, x: &Matrix) -> Vec<Vec<f64>> {
    let (d_in, d_sae) = (s.d_in(), s.d_sae());
    let norms: Vec<f64> = (0..d_sae)
        .map(|j| {
            (0..d_in)
                .map(|i| (s.w_dec.get(j, i) as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect();
    x.rows_iter()
        .map(|row| {
            let sae_in: Vec<f64> = (0..d_in)
                .map(|i| {
                    row[i] as f64
                        - if s.apply_b_dec_to_input {
                            s.b_dec[i] as f64
                        } else {
                            0.0
                        }
                })
                .collect();
            let mut h: Vec<f64> = (0..d_sae)
                .map(|j| {
                    s.b_enc[j] as f64
                        + (0..d_in)
                            .map(|i| sae_in[i] * s.w_enc.get(i, j) as f64)
                            .sum::<f64>()
                })
                .collect();
            match &s.architecture {
                Architecture::Standard => h.iter().map(|v| v.max(0.0)).collect(),
                Architecture::JumpRelu { threshold } => h
                    .iter()
                    .zip(threshold)
                    .map(|(&v, &t)| if v > t as f64 { v.max(0.0) } else { 0.0 })
                    .collect(),
                Architecture::TopK {
                    k,
                    rescale_acts_by_decoder_norm,
                } => {
                    if *rescale_acts_by_decoder_norm {
                        h.iter_mut().zip(&norms).for_each(|(v, n)| *v *= n);
                    }
                    let mut sorted = h.clone();
                    sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
                    let kth = sorted[*k - 1];
                    h.iter()
                        .map(|&v| if v >= kth { v.max(0.0) } else { 0.0 })
                        .collect()
                }
            }
        })
        .collect()
}

fn reference_decode(s: &SaeLens, acts: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let rescale = matches!(
        s.architecture,
        Architecture::TopK {
            rescale_acts_by_decoder_norm: true,
            ..
        }
    );
    acts.iter()
        .map(|a| {
            (0..s.d_in())
                .map(|i| {
                    s.b_dec[i] as f64
                        + (0..s.d_sae())
                            .map(|j| {
                                let n = if rescale {
                                    (0..s.d_in())
                                        .map(|c| (s.w_dec.get(j, c) as f64).powi(2))
                                        .sum::<f64>()
                                        .sqrt()
                                } else {
                                    1.0
                                };
                                a[j] / n * s.w_dec.get(j, i) as f64
                            })
                            .sum::<f64>()
                })
                .collect()
        })
        .collect()
}

#[test]
fn imported_saes_follow_the_saelens_inference_math() {
    let x = data();
    let mut topk_rescaled = SaeLens::from_topk(&topk_model(false));
    // Non-unit decoder rows, so that the rescaling matters.
    for j in 0..16 {
        let f = 0.5 + j as f32 / 8.0;
        topk_rescaled
            .w_dec
            .row_mut(j)
            .iter_mut()
            .for_each(|v| *v *= f);
    }
    topk_rescaled.architecture = Architecture::TopK {
        k: 3,
        rescale_acts_by_decoder_norm: true,
    };
    let mut jump = SaeLens::from_jumprelu(&jumprelu_model());
    // A threshold equal to an activation: strict `>` drops it, the next f32 below keeps it.
    let h = jump.pre_activations(&x).unwrap();
    let (i0, j0) = (0..h.rows())
        .flat_map(|i| (0..h.cols()).map(move |j| (i, j)))
        .find(|&(i, j)| h.get(i, j) > 0.0)
        .expect("a positive pre-activation");
    let v = h.get(i0, j0);
    for (t, kept) in [(v, false), (f32::from_bits(v.to_bits() - 1), true)] {
        if let Architecture::JumpRelu { threshold } = &mut jump.architecture {
            threshold[j0] = t;
        }
        assert_eq!(
            jump.encode(&x).unwrap().get(i0, j0) != 0.0,
            kept,
            "threshold {t}, activation {v}"
        );
    }
    let mut standard_b = SaeLens::from_autoencoder(&sae_model()).unwrap();
    standard_b.apply_b_dec_to_input = true;
    let cases = [
        SaeLens::from_autoencoder(&sae_model()).unwrap(),
        standard_b,
        SaeLens::from_topk(&topk_model(false)),
        topk_rescaled,
        SaeLens::from_topk(&topk_model(true)),
        jump,
    ];
    for s in cases {
        let dir = tmp(&format!("math-{}", s.architecture.name()));
        s.export(&dir).unwrap();
        let s = SaeLens::import(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let want = reference_encode(&s, &x);
        let got = s.encode(&x).unwrap();
        let mut nonzero = 0;
        for (i, w) in want.iter().enumerate() {
            for (j, &v) in w.iter().enumerate() {
                assert!(
                    (got.get(i, j) as f64 - v).abs() < 1e-5,
                    "{} ({i},{j}): {} vs {v}",
                    s.architecture.name(),
                    got.get(i, j)
                );
                nonzero += usize::from(v != 0.0);
            }
        }
        assert!(nonzero > 0, "{}: all codes zero", s.architecture.name());
        let want_x = reference_decode(&s, &want);
        let got_x = s.decode(&got).unwrap();
        for (i, w) in want_x.iter().enumerate() {
            for (j, &v) in w.iter().enumerate() {
                assert!((got_x.get(i, j) as f64 - v).abs() < 1e-4);
            }
        }
    }
}

#[test]
fn sparse_coding_and_mlp_models_are_refused_with_a_reason() {
    let mlp = Autoencoder::new(AutoencoderConfig::paper_mlp(16, 8, 4, 0)).unwrap();
    let e = SaeLens::from_autoencoder(&mlp).unwrap_err().to_string();
    assert!(e.contains("MLP encoder"), "{e}");
    let sc =
        crate::dictionary::SparseCoding::new(crate::dictionary::SparseCodingConfig::new(16, 8, 0))
            .unwrap();
    let e = SaeLens::from_model(&Model::SparseCoding(Box::new(sc)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("--format npy"), "{e}");
}

// ---- import of folders written by others ----

/// Writes `cfg` and the tensors `(name, shape, dtype, values)` into a fresh folder.
fn write_folder(
    name: &str,
    cfg: Value,
    tensors: &[(&str, Vec<usize>, safetensors::Dtype, Vec<f64>)],
) -> PathBuf {
    use safetensors::Dtype;
    let dir = tmp(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(CFG_FILE), serde_json::to_vec(&cfg).unwrap()).unwrap();
    let blobs: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, d, v)| {
            let bytes: Vec<u8> = match d {
                Dtype::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
                Dtype::F64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                Dtype::F16 => v
                    .iter()
                    .flat_map(|x| half::f16::from_f64(*x).to_le_bytes())
                    .collect(),
                Dtype::BF16 => v
                    .iter()
                    .flat_map(|x| half::bf16::from_f64(*x).to_le_bytes())
                    .collect(),
                Dtype::I64 => v.iter().flat_map(|x| (*x as i64).to_le_bytes()).collect(),
                _ => unimplemented!(),
            };
            (n.to_string(), s.clone(), *d, bytes)
        })
        .collect();
    let views: Vec<_> = blobs
        .iter()
        .map(|(n, s, d, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(
        dir.join(WEIGHTS_FILE),
        safetensors::serialize(views, &None).unwrap(),
    )
    .unwrap();
    dir
}

fn good_cfg(architecture: &str) -> Value {
    json!({"architecture": architecture, "d_in": 3, "d_sae": 4, "dtype": "float32",
           "metadata": {"sae_lens_version": "6.54.12"}})
}

/// Exactly representable values (in f16 and bf16 too).
fn standard_tensors(
    dtype: safetensors::Dtype,
) -> Vec<(&'static str, Vec<usize>, safetensors::Dtype, Vec<f64>)> {
    let vals = |n: usize, off: f64| (0..n).map(|i| (i as f64 - off) * 0.25).collect::<Vec<_>>();
    vec![
        ("W_enc", vec![3, 4], dtype, vals(12, 6.0)),
        ("b_enc", vec![4], dtype, vals(4, 2.0)),
        ("W_dec", vec![4, 3], dtype, vals(12, 3.0)),
        ("b_dec", vec![3], dtype, vals(3, 1.0)),
    ]
}

#[test]
fn minimal_cfg_and_every_float_dtype_import_to_the_same_f32_values() {
    use safetensors::Dtype;
    let reference = {
        let dir = write_folder(
            "dt-f32",
            good_cfg("standard"),
            &standard_tensors(Dtype::F32),
        );
        let s = SaeLens::import(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        s
    };
    assert_eq!(reference.w_enc.get(0, 1), -1.25);
    assert!(reference.apply_b_dec_to_input, "default true");
    for (dtype, name) in [
        (Dtype::F64, "float64"),
        (Dtype::F16, "float16"),
        (Dtype::BF16, "torch.bfloat16"),
    ] {
        let mut cfg = good_cfg("standard");
        cfg["dtype"] = name.into();
        let dir = write_folder(&format!("dt-{name}"), cfg, &standard_tensors(dtype));
        let s = SaeLens::import(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.w_enc, reference.w_enc, "{name}");
        assert_eq!(s.b_dec, reference.b_dec, "{name}");
    }
}

#[test]
fn pre_6_configs_are_converted_like_saelens() {
    use safetensors::Dtype;
    let cfg = json!({"d_in": 3, "d_sae": 4, "dtype": "float32", "hook_point": "blocks.2.hook_resid_post",
                     "activation_fn": "topk", "activation_fn_kwargs": {"k": 2}, "model_name": "gpt2"});
    let dir = write_folder("legacy", cfg, &standard_tensors(Dtype::F32));
    let s = SaeLens::import(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        s.architecture,
        Architecture::TopK {
            k: 2,
            rescale_acts_by_decoder_norm: false
        }
    );
    assert_eq!(s.hook_name(), Some("blocks.2.hook_resid_post"));
    assert!(s.apply_b_dec_to_input);
    // Exporting it writes a SAELens 6 version.
    assert_eq!(
        s.cfg_json()["metadata"]["sae_lens_version"],
        SAELENS_VERSION
    );
}

/// Folder name, cfg.json, tensors, the file the error must name, a phrase it must hold.
type BadCase = (
    &'static str,
    Value,
    Vec<(&'static str, Vec<usize>, safetensors::Dtype, Vec<f64>)>,
    &'static str,
    &'static str,
);

#[test]
fn bad_folders_are_one_line_errors_naming_the_file() {
    use safetensors::Dtype;
    let t = standard_tensors(Dtype::F32);
    let mut cases: Vec<BadCase> = Vec::new();
    cases.push((
        "missing",
        good_cfg("standard"),
        t[..3].to_vec(),
        WEIGHTS_FILE,
        "missing tensor b_dec",
    ));
    let mut extra = t.clone();
    extra.push(("threshold", vec![4], Dtype::F32, vec![0.0; 4]));
    cases.push((
        "extra",
        good_cfg("standard"),
        extra,
        WEIGHTS_FILE,
        "unexpected tensor threshold",
    ));
    cases.push((
        "no-threshold",
        good_cfg("jumprelu"),
        t.clone(),
        WEIGHTS_FILE,
        "missing tensor threshold",
    ));
    let mut transposed = t.clone();
    transposed[2].1 = vec![3, 4];
    cases.push((
        "transposed",
        good_cfg("standard"),
        transposed,
        WEIGHTS_FILE,
        "tensor W_dec: expected shape [4, 3]",
    ));
    let mut ints = t.clone();
    ints[1].2 = Dtype::I64;
    cases.push(("int", good_cfg("standard"), ints, WEIGHTS_FILE, "dtype I64"));
    let mut nan = t.clone();
    nan[0].3[5] = f64::NAN;
    cases.push(("nan", good_cfg("standard"), nan, WEIGHTS_FILE, "non-finite"));
    cases.push((
        "gated",
        good_cfg("gated"),
        t.clone(),
        CFG_FILE,
        "architecture \"gated\" is not supported",
    ));
    cases.push((
        "btk",
        good_cfg("batchtopk"),
        t.clone(),
        CFG_FILE,
        "training checkpoint",
    ));
    cases.push((
        "no-k",
        good_cfg("topk"),
        t.clone(),
        CFG_FILE,
        "needs the key k",
    ));
    let mut big_k = good_cfg("topk");
    big_k["k"] = 5.into();
    cases.push((
        "big-k",
        big_k,
        t.clone(),
        CFG_FILE,
        "k must be an integer between 1 and d_sae = 4",
    ));
    let mut bad_version = good_cfg("standard");
    bad_version["metadata"]["sae_lens_version"] = "6.x".into();
    cases.push((
        "version",
        bad_version,
        t.clone(),
        CFG_FILE,
        "not a PEP 440 version",
    ));
    let mut ln = good_cfg("standard");
    ln["normalize_activations"] = "layer_norm".into();
    cases.push(("ln", ln, t.clone(), CFG_FILE, "layer_norm"));
    let mut no_dtype = good_cfg("standard");
    no_dtype.as_object_mut().unwrap().remove("dtype");
    cases.push((
        "no-dtype",
        no_dtype,
        t.clone(),
        CFG_FILE,
        "missing key dtype",
    ));
    let mut no_d_in = good_cfg("standard");
    no_d_in.as_object_mut().unwrap().remove("d_in");
    cases.push(("no-d_in", no_d_in, t.clone(), CFG_FILE, "missing key d_in"));
    let mut no_arch = good_cfg("standard");
    no_arch.as_object_mut().unwrap().remove("architecture");
    cases.push((
        "no-arch",
        no_arch,
        t.clone(),
        CFG_FILE,
        "missing key architecture",
    ));
    for (name, cfg, tensors, file, needle) in cases {
        let dir = write_folder(&format!("bad-{name}"), cfg, &tensors);
        let e = SaeLens::import(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(e.contains(needle), "{name}: {e}");
        assert!(e.contains(file), "{name}: {e} should name {file}");
        assert!(!e.contains('\n'), "{name}: {e}");
    }
    // A folder that does not exist, and a corrupt weights file.
    let e = SaeLens::import(Path::new("/nonexistent-si-saelens"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent-si-saelens"), "{e}");
    let dir = write_folder("corrupt", good_cfg("standard"), &t);
    std::fs::write(dir.join(WEIGHTS_FILE), b"\x10\x00\x00\x00\x00\x00\x00\x00{").unwrap();
    let e = SaeLens::import(&dir).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        e.contains(WEIGHTS_FILE) && e.contains("not a valid safetensors"),
        "{e}"
    );
}
