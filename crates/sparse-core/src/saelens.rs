//! The SAELens on-disk format (SAELens ≥ 6, as measured against SAELens
//! 6.54.12; the README's "SAELens files" section): a folder holding
//!
//! - `cfg.json`: `architecture`, `d_in`, `d_sae`, `dtype`, `device`,
//!   `apply_b_dec_to_input`, `normalize_activations`, `reshape_activations`,
//!   for `topk` also `k` and `rescale_acts_by_decoder_norm`, and `metadata`
//!   with `sae_lens_version` (a PEP 440 version ≥ 6.0.0, else SAELens takes
//!   its pre-6.0 path or refuses the file);
//! - `sae_weights.safetensors`: `W_enc [d_in, d_sae]`, `b_enc [d_sae]`,
//!   `W_dec [d_sae, d_in]`, `b_dec [d_in]`, plus `threshold [d_sae]` for
//!   `jumprelu`, all in the cfg dtype.
//!
//! [`SaeLens`] holds such a model. [`SaeLens::export`] writes exactly the key
//! and tensor set SAELens 6 writes (float32; `metadata.sae_lens_version` =
//! [`SAELENS_VERSION`], our own version under `metadata.sparse_infer_version`);
//! [`SaeLens::import`] reads a folder with the strictness of SAELens'
//! `load_from_disk` (missing or extra tensors, wrong shapes, unknown
//! architectures are errors naming the file) and converts float64, float16
//! and bfloat16 tensors to `f32`. [`SaeLens::encode`] and [`SaeLens::decode`]
//! are SAELens' inference math:
//!
//! ```text
//! h = (x − b_dec·apply_b_dec_to_input)·W_enc + b_enc
//! standard: relu(h)   jumprelu: relu(h)·[h > threshold]   topk: relu of the k largest h, 0 elsewhere
//! x̂ = a·W_dec + b_dec
//! ```
//!
//! (`topk` with `rescale_acts_by_decoder_norm` scales `h` by the norms of the
//! `W_dec` rows before the selection and divides them out again in `decode`.)
//! Of the run-time normalisations only those SAELens folds into the weights
//! before saving (`none`, `expected_average_only_in`, `covariance_whitening`:
//! the identity at inference) are accepted; `constant_norm_rescale` and
//! `layer_norm` are refused with an error.
//!
//! [`SaeLens::from_model`] converts a trained [`crate::checkpoint::Model`]:
//! the linear SAE is `standard` (with `apply_b_dec_to_input = false`, since
//! our SAE encodes `x` itself), TopK is `topk`, JumpReLU is `jumprelu`, and
//! BatchTopK (and Matryoshka BatchTopK) are written as SAELens ships them:
//! `jumprelu` with the inference threshold broadcast to every latent and
//! `metadata.training_architecture` naming the training architecture.

use crate::checkpoint::Model;
use crate::dictionary::autoencoder::{Autoencoder, EncoderKind};
use crate::dictionary::jumprelu::JumpReluSae;
use crate::dictionary::matryoshka::MatryoshkaSae;
use crate::dictionary::topk::{TopKSae, TopKSelection};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::linalg::{gemm_into, Op};
use crate::matrix::Matrix;
use serde_json::{json, Map, Value};
use std::path::Path;

/// Name of the configuration file of a SAELens folder.
pub const CFG_FILE: &str = "cfg.json";
/// Name of the weights file of a SAELens folder.
pub const WEIGHTS_FILE: &str = "sae_weights.safetensors";
/// The `metadata.sae_lens_version` written on export: the first SAELens
/// version of the format, so that every SAELens ≥ 6 takes its normal path.
pub const SAELENS_VERSION: &str = "6.0.0";

/// The inference architecture, as SAELens' `architecture` key names it.
#[derive(Clone, Debug, PartialEq)]
pub enum Architecture {
    /// `standard`: `relu(h)`.
    Standard,
    /// `topk`: the `k` largest pre-activations per sample, then ReLU.
    TopK {
        /// Latents kept per sample (SAELens `k`).
        k: usize,
        /// Scale pre-activations by the `W_dec` row norms before selecting
        /// (and divide them out when decoding).
        rescale_acts_by_decoder_norm: bool,
    },
    /// `jumprelu`: `relu(h)·[h > threshold]`, strict.
    JumpRelu {
        /// Per-latent thresholds (`threshold [d_sae]`).
        threshold: Vec<f32>,
    },
}

impl Architecture {
    /// SAELens' name: `standard`, `topk` or `jumprelu`.
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::Standard => "standard",
            Architecture::TopK { .. } => "topk",
            Architecture::JumpRelu { .. } => "jumprelu",
        }
    }
}

/// Run-time input normalisations that are the identity at inference because
/// SAELens folds them into the weights before saving.
const FOLDED_NORMALISATIONS: [&str; 3] =
    ["none", "expected_average_only_in", "covariance_whitening"];

/// An SAE in SAELens' terms: weights, architecture and the cfg fields that
/// change the inference math.
#[derive(Clone, Debug, PartialEq)]
pub struct SaeLens {
    /// Architecture (with `k` or the thresholds).
    pub architecture: Architecture,
    /// `W_enc [d_in, d_sae]`.
    pub w_enc: Matrix,
    /// `b_enc [d_sae]`.
    pub b_enc: Vec<f32>,
    /// `W_dec [d_sae, d_in]`: the dictionary, atoms as rows.
    pub w_dec: Matrix,
    /// `b_dec [d_in]`.
    pub b_dec: Vec<f32>,
    /// Whether `b_dec` is subtracted from the input before encoding.
    pub apply_b_dec_to_input: bool,
    /// `normalize_activations`: one of `none`, `expected_average_only_in`,
    /// `covariance_whitening` (all the identity at inference).
    pub normalize_activations: String,
    /// `metadata` (hook name, model name, training architecture, versions…),
    /// kept as read; [`SaeLens::export`] sets the two version keys.
    pub metadata: Map<String, Value>,
}

fn format_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl SaeLens {
    /// Input dimension `d_in`.
    pub fn d_in(&self) -> usize {
        self.w_enc.rows()
    }

    /// Number of latents `d_sae`.
    pub fn d_sae(&self) -> usize {
        self.w_enc.cols()
    }

    /// The dictionary `D (d_sae × d_in)` = `W_dec`.
    pub fn dictionary(&self) -> &Matrix {
        &self.w_dec
    }

    /// `metadata.hook_name`, where known.
    pub fn hook_name(&self) -> Option<&str> {
        self.metadata.get("hook_name").and_then(Value::as_str)
    }

    /// Sets `metadata.hook_name`.
    pub fn set_hook_name(&mut self, name: &str) {
        self.metadata
            .insert("hook_name".into(), Value::String(name.into()));
    }

    /// Checks that every tensor has the shape `d_in`/`d_sae` imply, that the
    /// values are finite, that `k` is in `1..=d_sae` and the normalisation is supported.
    pub fn validate(&self) -> Result<()> {
        let (d_in, d_sae) = self.w_enc.shape();
        if d_in == 0 || d_sae == 0 {
            return Err(Error::shape(
                "W_enc",
                "[d_in ≥ 1, d_sae ≥ 1]",
                format!("[{d_in}, {d_sae}]"),
            ));
        }
        self.w_dec
            .expect_shape("W_dec [d_sae, d_in]", Some(d_sae), Some(d_in))?;
        let vec_shape = |name: &str, v: &[f32], n: usize| -> Result<()> {
            if v.len() != n {
                return Err(Error::shape(
                    name,
                    format!("[{n}]"),
                    format!("[{}]", v.len()),
                ));
            }
            if let Some(p) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::NonFinite {
                    what: name.into(),
                    row: 0,
                    col: p,
                    value: v[p],
                });
            }
            Ok(())
        };
        vec_shape("b_enc", &self.b_enc, d_sae)?;
        vec_shape("b_dec", &self.b_dec, d_in)?;
        self.w_enc.check_finite("W_enc")?;
        self.w_dec.check_finite("W_dec")?;
        match &self.architecture {
            Architecture::Standard => {}
            Architecture::TopK { k, .. } => {
                if *k == 0 || *k > d_sae {
                    return Err(Error::invalid(
                        "k",
                        k,
                        &format!("must be between 1 and d_sae = {d_sae}"),
                    ));
                }
            }
            Architecture::JumpRelu { threshold } => vec_shape("threshold", threshold, d_sae)?,
        }
        if !FOLDED_NORMALISATIONS.contains(&self.normalize_activations.as_str()) {
            return Err(Error::invalid(
                "normalize_activations",
                &self.normalize_activations,
                "only none, expected_average_only_in and covariance_whitening (folded into the weights) are supported",
            ));
        }
        Ok(())
    }

    /// Norms of the `W_dec` rows (used by `topk` with `rescale_acts_by_decoder_norm`).
    fn decoder_norms(&self) -> Vec<f32> {
        self.w_dec
            .row_norms()
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }

    /// Pre-activations `h = (x − b_dec·apply_b_dec_to_input)·W_enc + b_enc` of `x (n × d_in)`.
    pub fn pre_activations(&self, x: &Matrix) -> Result<Matrix> {
        x.expect_shape("data", None, Some(self.d_in()))?;
        x.check_finite("data")?;
        let centred;
        let input = if self.apply_b_dec_to_input {
            let mut c = x.clone();
            for i in 0..c.rows() {
                c.row_mut(i)
                    .iter_mut()
                    .zip(&self.b_dec)
                    .for_each(|(v, b)| *v -= b);
            }
            centred = c;
            &centred
        } else {
            x
        };
        let mut h = Matrix::from_fn(x.rows(), self.d_sae(), |_, j| self.b_enc[j]);
        gemm_into(
            h.view_mut(),
            true,
            input.view(),
            Op::N,
            self.w_enc.view(),
            Op::N,
            1.0,
        );
        Ok(h)
    }

    /// Feature activations `(n × d_sae)` of `x (n × d_in)`, as SAELens' `encode`.
    pub fn encode(&self, x: &Matrix) -> Result<Matrix> {
        let mut h = self.pre_activations(x)?;
        match &self.architecture {
            Architecture::Standard => h.as_mut_slice().iter_mut().for_each(|v| *v = v.max(0.0)),
            Architecture::JumpRelu { threshold } => {
                for i in 0..h.rows() {
                    for (v, &t) in h.row_mut(i).iter_mut().zip(threshold) {
                        if !(*v > t && *v > 0.0) {
                            *v = 0.0;
                        }
                    }
                }
            }
            Architecture::TopK {
                k,
                rescale_acts_by_decoder_norm,
            } => {
                let norms = rescale_acts_by_decoder_norm.then(|| self.decoder_norms());
                let mut order: Vec<usize> = Vec::with_capacity(h.cols());
                for i in 0..h.rows() {
                    let row = h.row_mut(i);
                    if let Some(norms) = &norms {
                        row.iter_mut().zip(norms).for_each(|(v, n)| *v *= n);
                    }
                    order.clear();
                    order.extend(0..row.len());
                    // The k largest (ties: lower index first), then ReLU on them.
                    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                    let mut keep = vec![false; row.len()];
                    order[..*k].iter().for_each(|&j| keep[j] = true);
                    for (j, v) in row.iter_mut().enumerate() {
                        if !keep[j] || *v <= 0.0 {
                            *v = 0.0;
                        }
                    }
                }
            }
        }
        Ok(h)
    }

    /// `x̂ = a·W_dec + b_dec` for activations `a (n × d_sae)` (for `topk` with
    /// rescaling, `a` is first divided by the `W_dec` row norms), as SAELens' `decode`.
    pub fn decode(&self, acts: &Matrix) -> Result<Matrix> {
        acts.expect_shape("feature activations", None, Some(self.d_sae()))?;
        if let Architecture::TopK {
            rescale_acts_by_decoder_norm: true,
            ..
        } = self.architecture
        {
            let norms = self.decoder_norms();
            let mut a = acts.clone();
            for i in 0..a.rows() {
                a.row_mut(i)
                    .iter_mut()
                    .zip(&norms)
                    .for_each(|(v, n)| *v /= n);
            }
            return crate::dictionary::decode(&a, &self.w_dec, &self.b_dec);
        }
        crate::dictionary::decode(acts, &self.w_dec, &self.b_dec)
    }

    /// The `cfg.json` SAELens 6 writes for this model (see the module documentation).
    pub fn cfg_json(&self) -> Value {
        let mut cfg = Map::new();
        cfg.insert("architecture".into(), self.architecture.name().into());
        cfg.insert("d_in".into(), self.d_in().into());
        cfg.insert("d_sae".into(), self.d_sae().into());
        cfg.insert("dtype".into(), "float32".into());
        cfg.insert("device".into(), "cpu".into());
        cfg.insert(
            "apply_b_dec_to_input".into(),
            self.apply_b_dec_to_input.into(),
        );
        cfg.insert(
            "normalize_activations".into(),
            self.normalize_activations.clone().into(),
        );
        cfg.insert("reshape_activations".into(), "none".into());
        if let Architecture::TopK {
            k,
            rescale_acts_by_decoder_norm,
        } = &self.architecture
        {
            cfg.insert("k".into(), (*k).into());
            cfg.insert(
                "rescale_acts_by_decoder_norm".into(),
                (*rescale_acts_by_decoder_norm).into(),
            );
        }
        let mut metadata = self.metadata.clone();
        let version_ok = metadata
            .get("sae_lens_version")
            .and_then(Value::as_str)
            .and_then(|v| major_version(v).ok())
            .is_some_and(|major| major >= 6);
        if !version_ok {
            metadata.insert("sae_lens_version".into(), SAELENS_VERSION.into());
        }
        metadata.insert(
            "sparse_infer_version".into(),
            env!("CARGO_PKG_VERSION").into(),
        );
        cfg.insert("metadata".into(), Value::Object(metadata));
        Value::Object(cfg)
    }

    /// Writes `cfg.json` and `sae_weights.safetensors` (float32) into `dir`
    /// (created if missing), each file atomically.
    pub fn export(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let mut tensors: Vec<(&str, Vec<usize>, &[f32])> = vec![
            (
                "W_enc",
                vec![self.d_in(), self.d_sae()],
                self.w_enc.as_slice(),
            ),
            ("b_enc", vec![self.d_sae()], &self.b_enc),
            (
                "W_dec",
                vec![self.d_sae(), self.d_in()],
                self.w_dec.as_slice(),
            ),
            ("b_dec", vec![self.d_in()], &self.b_dec),
        ];
        if let Architecture::JumpRelu { threshold } = &self.architecture {
            tensors.push(("threshold", vec![self.d_sae()], threshold));
        }
        let blobs: Vec<(&str, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, s, v)| (n, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
            .collect();
        let views = blobs
            .iter()
            .map(|(name, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (name.to_string(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| format_err(&weights_path, format!("cannot build tensors: {e}")))?;
        let bytes = safetensors::serialize(views, &None)
            .map_err(|e| format_err(&weights_path, format!("cannot serialise: {e}")))?;
        write_atomic(&weights_path, &bytes)?;
        let cfg = serde_json::to_vec_pretty(&self.cfg_json())
            .map_err(|e| format_err(&dir.join(CFG_FILE), e.to_string()))?;
        write_atomic(&dir.join(CFG_FILE), &cfg)
    }

    /// Reads and validates the SAELens folder `dir` (see the module documentation).
    pub fn import(dir: &Path) -> Result<SaeLens> {
        let cfg_path = dir.join(CFG_FILE);
        let weights_path = dir.join(WEIGHTS_FILE);
        if !dir.exists() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such SAELens folder (expected one holding cfg.json and sae_weights.safetensors)",
                ),
            });
        }
        if !dir.is_dir() {
            return Err(format_err(dir, "not a folder (expected a SAELens folder holding cfg.json and sae_weights.safetensors)"));
        }
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| Error::Io {
                path: p.to_path_buf(),
                source,
            })
        };
        let cfg: Value = serde_json::from_slice(&read(&cfg_path)?)
            .map_err(|e| format_err(&cfg_path, format!("invalid JSON: {e}")))?;
        let cfg = parse_cfg(&cfg_path, cfg)?;
        let bytes = read(&weights_path)?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| {
            format_err(
                &weights_path,
                format!("not a valid safetensors file (truncated or corrupt?): {e:?}"),
            )
        })?;
        let mut expected = vec!["W_enc", "b_enc", "W_dec", "b_dec"];
        if cfg.architecture == "jumprelu" {
            expected.push("threshold");
        }
        let mut names: Vec<String> = st.names().into_iter().cloned().collect();
        names.sort();
        for name in &names {
            if name == "scaling_factor" {
                // SAELens drops an all-ones scaling factor; anything else changes the model.
                let v = read_tensor(&st, &weights_path, name, &[cfg.d_sae])?;
                if v.iter().any(|&s| s != 1.0) {
                    return Err(format_err(
                        &weights_path,
                        "tensor scaling_factor is not all ones; fold it into W_enc/b_enc/W_dec first",
                    ));
                }
            } else if !expected.contains(&name.as_str()) {
                return Err(format_err(
                    &weights_path,
                    format!(
                        "unexpected tensor {name} for architecture {} (expected exactly {expected:?})",
                        cfg.architecture
                    ),
                ));
            }
        }
        let (d_in, d_sae) = (cfg.d_in, cfg.d_sae);
        let w_enc = read_tensor(&st, &weights_path, "W_enc", &[d_in, d_sae])?;
        let b_enc = read_tensor(&st, &weights_path, "b_enc", &[d_sae])?;
        let w_dec = read_tensor(&st, &weights_path, "W_dec", &[d_sae, d_in])?;
        let b_dec = read_tensor(&st, &weights_path, "b_dec", &[d_in])?;
        let architecture = match cfg.architecture.as_str() {
            "standard" => Architecture::Standard,
            "topk" => Architecture::TopK {
                k: cfg.k.ok_or_else(|| {
                    format_err(
                        &cfg_path,
                        "architecture topk needs the key k (SAELens would silently use 100)",
                    )
                })?,
                rescale_acts_by_decoder_norm: cfg.rescale,
            },
            "jumprelu" => Architecture::JumpRelu {
                threshold: read_tensor(&st, &weights_path, "threshold", &[d_sae])?,
            },
            _ => unreachable!("parse_cfg accepts only the three architectures"),
        };
        let sae = SaeLens {
            architecture,
            w_enc: Matrix::from_vec(d_in, d_sae, w_enc)?,
            b_enc,
            w_dec: Matrix::from_vec(d_sae, d_in, w_dec)?,
            b_dec,
            apply_b_dec_to_input: cfg.apply_b_dec_to_input,
            normalize_activations: cfg.normalize_activations,
            metadata: cfg.metadata,
        };
        sae.validate().map_err(|e| match e {
            Error::NonFinite { .. } => format_err(&weights_path, e.to_string()),
            other => format_err(&cfg_path, other.to_string()),
        })?;
        Ok(sae)
    }

    /// Converts a trained model (see the module documentation for the
    /// mapping); models without a linear encoder (the MLP encoder, sparse
    /// coding) are errors that say so.
    #[allow(unreachable_patterns)]
    pub fn from_model(model: &Model) -> Result<SaeLens> {
        match model {
            Model::Autoencoder(m) => Self::from_autoencoder(m),
            Model::TopK(m) => Ok(Self::from_topk(m)),
            Model::SparseCoding(_) => Err(Error::invalid(
                "format",
                "saelens",
                "a sparse-coding model has no amortised encoder (its codes come from FISTA); export its dictionary with --format npy",
            )),
            Model::JumpRelu(m) => Ok(Self::from_jumprelu(m)),
            Model::Matryoshka(m) => Ok(Self::from_matryoshka(m)),
            Model::MpSae(_) => Err(Error::invalid(
                "format",
                "saelens",
                "a matching-pursuit SAE's file layout is not in the SAELens format we write; export its dictionary with --format npy",
            )),
            Model::Lista(_) => Err(Error::invalid(
                "format",
                "saelens",
                "LISTA has no SAELens architecture; export its dictionary with --format npy",
            )),
        }
    }

    /// A linear SAE (`standard`, `apply_b_dec_to_input = false`: our SAE encodes
    /// `x` itself); the MLP encoder has no SAELens architecture and is an error.
    pub fn from_autoencoder(m: &Autoencoder) -> Result<SaeLens> {
        if m.config().encoder != EncoderKind::Linear {
            return Err(Error::invalid(
                "format",
                "saelens",
                "an MLP encoder has no SAELens architecture (only linear-ReLU SAEs are `standard`); export its dictionary with --format npy",
            ));
        }
        Ok(SaeLens {
            architecture: Architecture::Standard,
            w_enc: m.encoder_weight(0).clone(),
            b_enc: m.encoder_bias(0).to_vec(),
            w_dec: m.dictionary().clone(),
            b_dec: m.decoder_bias().to_vec(),
            apply_b_dec_to_input: false,
            normalize_activations: "none".into(),
            metadata: Map::new(),
        })
    }

    /// A TopK SAE (`topk`), or a BatchTopK SAE written as SAELens ships it:
    /// `jumprelu` with its inference threshold broadcast to every latent.
    pub fn from_topk(m: &TopKSae) -> SaeLens {
        let c = m.config();
        let (architecture, metadata) = match m.inference_threshold() {
            None => (
                Architecture::TopK {
                    k: c.k,
                    rescale_acts_by_decoder_norm: false,
                },
                Map::new(),
            ),
            Some(theta) => (
                Architecture::JumpRelu {
                    threshold: vec![theta; c.n_latents],
                },
                training_metadata(TopKSelection::Batch.architecture(), c.k),
            ),
        };
        SaeLens {
            architecture,
            w_enc: m.w_enc().clone(),
            b_enc: m.b_enc().to_vec(),
            w_dec: m.dictionary().clone(),
            b_dec: m.decoder_bias().to_vec(),
            apply_b_dec_to_input: true,
            normalize_activations: "none".into(),
            metadata,
        }
    }

    /// A JumpReLU SAE (`jumprelu` with its per-latent thresholds).
    pub fn from_jumprelu(m: &JumpReluSae) -> SaeLens {
        SaeLens {
            architecture: Architecture::JumpRelu {
                threshold: m.threshold(),
            },
            w_enc: m.w_enc().clone(),
            b_enc: m.b_enc().to_vec(),
            w_dec: m.dictionary().clone(),
            b_dec: m.decoder_bias().to_vec(),
            apply_b_dec_to_input: true,
            normalize_activations: "none".into(),
            metadata: Map::new(),
        }
    }

    /// A Matryoshka BatchTopK SAE: `jumprelu` with its inference threshold
    /// broadcast, `metadata.training_architecture = "matryoshka_batchtopk"`.
    pub fn from_matryoshka(m: &MatryoshkaSae) -> SaeLens {
        let c = m.config();
        let mut metadata = training_metadata("matryoshka_batchtopk", c.sae.k);
        if let Some(Value::Object(d)) = metadata.get_mut("training_architecture_details") {
            d.insert("matryoshka_widths".into(), json!(c.widths));
        }
        SaeLens {
            architecture: Architecture::JumpRelu {
                threshold: vec![m.inference_threshold(); c.sae.n_latents],
            },
            w_enc: m.w_enc().clone(),
            b_enc: m.b_enc().to_vec(),
            w_dec: m.dictionary().clone(),
            b_dec: m.decoder_bias().to_vec(),
            apply_b_dec_to_input: true,
            normalize_activations: "none".into(),
            metadata,
        }
    }
}

/// `metadata.training_architecture` and `training_architecture_details.k`.
fn training_metadata(architecture: &str, k: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("training_architecture".into(), architecture.into());
    m.insert("training_architecture_details".into(), json!({ "k": k }));
    m
}

/// The major version of a PEP 440 version string (`6.54.12`, `6.0.0rc0`,
/// `1!2.0.post1`, `v5.1+local`); `Err` for anything `packaging.Version` refuses.
fn major_version(v: &str) -> std::result::Result<u64, ()> {
    let s = v.trim().to_ascii_lowercase();
    let s = s.strip_prefix('v').unwrap_or(&s);
    let s = match s.split_once('!') {
        Some((epoch, rest)) if !epoch.is_empty() && epoch.bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        Some(_) => return Err(()),
        None => s,
    };
    let (public, local) = s.split_once('+').unwrap_or((s, ""));
    if s.contains('+')
        && (local.is_empty()
            || !local
                .split(['.', '-', '_'])
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric())))
    {
        return Err(());
    }
    // Release segment N(.N)*, then pre/post/dev parts: letters and digits
    // separated by '.', '-' or '_', each part a known word optionally with a number.
    let release_len = public
        .char_indices()
        .find(|&(i, c)| {
            !(c.is_ascii_digit()
                || (c == '.' && public[i + 1..].starts_with(|d: char| d.is_ascii_digit())))
        })
        .map_or(public.len(), |(i, _)| i);
    let (release, rest) = public.split_at(release_len);
    if release.is_empty() || release.starts_with('.') {
        return Err(());
    }
    const WORDS: [&str; 11] = [
        "alpha", "beta", "preview", "pre", "rc", "a", "b", "c", "post", "rev", "dev",
    ];
    let mut rest = rest.trim_start_matches(['.', '-', '_']);
    while !rest.is_empty() {
        let word = WORDS.iter().find(|w| rest.starts_with(*w)).ok_or(())?;
        rest = rest[word.len()..].trim_start_matches(['.', '-', '_']);
        rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        rest = rest.trim_start_matches(['.', '-', '_']);
    }
    release
        .split('.')
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|_| ())
}

/// The fields of `cfg.json` that [`SaeLens::import`] uses.
struct Cfg {
    architecture: String,
    d_in: usize,
    d_sae: usize,
    k: Option<usize>,
    rescale: bool,
    apply_b_dec_to_input: bool,
    normalize_activations: String,
    metadata: Map<String, Value>,
}

/// Validates `cfg.json` and applies SAELens' pre-6.0 conversion where the
/// file has no `sae_lens_version` ≥ 6.
fn parse_cfg(path: &Path, cfg: Value) -> Result<Cfg> {
    let Value::Object(mut cfg) = cfg else {
        return Err(format_err(path, "expected a JSON object"));
    };
    let mut metadata = match cfg.remove("metadata") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(other) => {
            return Err(format_err(
                path,
                format!("metadata must be an object, found {other}"),
            ))
        }
    };
    let version = metadata
        .get("sae_lens_version")
        .or_else(|| cfg.get("sae_lens_version"))
        .cloned();
    let legacy = match &version {
        None => true,
        Some(Value::String(v)) => {
            let major = major_version(v).map_err(|_| {
                format_err(
                    path,
                    format!("sae_lens_version {v:?} is not a PEP 440 version (SAELens refuses it)"),
                )
            })?;
            major < 6
        }
        Some(other) => {
            return Err(format_err(
                path,
                format!("sae_lens_version must be a string, found {other}"),
            ))
        }
    };
    if legacy {
        // SAELens' pre-6.0 converter.
        if let Some(h) = cfg.remove("hook_point") {
            cfg.entry("hook_name").or_insert(h);
        }
        cfg.entry("architecture").or_insert("standard".into());
        if cfg.get("activation_fn").and_then(Value::as_str) == Some("topk") {
            if let Some(k) = cfg
                .get("activation_fn_kwargs")
                .and_then(|a| a.get("k"))
                .cloned()
            {
                cfg.insert("architecture".into(), "topk".into());
                cfg.entry("k").or_insert(k);
            }
        }
    }
    // SAELens 6 keeps the hook name in metadata; older files at the top level.
    if let Some(h) = cfg.get("hook_name").cloned() {
        metadata.entry("hook_name").or_insert(h);
    }
    let architecture = match cfg.get("architecture") {
        Some(Value::String(a)) => a.clone(),
        Some(other) => {
            return Err(format_err(
                path,
                format!("architecture must be a string, found {other}"),
            ))
        }
        None => {
            return Err(format_err(
                path,
                "missing key architecture (SAELens requires it)",
            ))
        }
    };
    if !["standard", "topk", "jumprelu"].contains(&architecture.as_str()) {
        let hint = match architecture.as_str() {
            "batchtopk" | "matryoshka_batchtopk" => {
                " (a training checkpoint: SAELens itself refuses it; save it with save_inference_model, which writes jumprelu)"
            }
            _ => "",
        };
        return Err(format_err(
            path,
            format!(
                "architecture {architecture:?} is not supported (supported: standard, topk, jumprelu){hint}"
            ),
        ));
    }
    let size = |key: &str| -> Result<usize> {
        match cfg.get(key) {
            Some(v) => v
                .as_u64()
                .filter(|&n| n >= 1)
                .map(|n| n as usize)
                .ok_or_else(|| {
                    format_err(path, format!("{key} must be a positive integer, found {v}"))
                }),
            None => Err(format_err(
                path,
                format!("missing key {key} (SAELens requires it)"),
            )),
        }
    };
    let d_in = size("d_in")?;
    let d_sae = size("d_sae")?;
    match cfg.get("dtype") {
        Some(Value::String(d)) => {
            let d = d.strip_prefix("torch.").unwrap_or(d);
            if !["float32", "float64", "float16", "bfloat16"].contains(&d) {
                return Err(format_err(
                    path,
                    format!("dtype {d:?} is not one of float32, float64, float16, bfloat16"),
                ));
            }
        }
        Some(other) => {
            return Err(format_err(
                path,
                format!("dtype must be a string, found {other}"),
            ))
        }
        None => return Err(format_err(path, "missing key dtype (SAELens requires it)")),
    }
    let boolean = |key: &str, default: bool| -> Result<bool> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(format_err(
                path,
                format!("{key} must be true or false, found {other}"),
            )),
        }
    };
    let apply_b_dec_to_input = boolean("apply_b_dec_to_input", true)?;
    let rescale = boolean("rescale_acts_by_decoder_norm", false)?;
    let string = |key: &str| -> Result<String> {
        match cfg.get(key) {
            None | Some(Value::Null) => Ok("none".into()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format_err(
                path,
                format!("{key} must be a string, found {other}"),
            )),
        }
    };
    let normalize_activations = string("normalize_activations")?;
    if !FOLDED_NORMALISATIONS.contains(&normalize_activations.as_str()) {
        return Err(format_err(
            path,
            format!(
                "normalize_activations {normalize_activations:?} is applied at run time and is not supported (supported: none, expected_average_only_in, covariance_whitening, which SAELens folds into the weights)"
            ),
        ));
    }
    let reshape = string("reshape_activations")?;
    if reshape != "none" {
        return Err(format_err(
            path,
            format!("reshape_activations {reshape:?} is not supported (only none)"),
        ));
    }
    let k = if architecture == "topk" {
        match cfg.get("k") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|&k| k >= 1 && k as usize <= d_sae)
                    .ok_or_else(|| {
                        format_err(
                            path,
                            format!(
                                "k must be an integer between 1 and d_sae = {d_sae}, found {v}"
                            ),
                        )
                    })? as usize,
            ),
        }
    } else {
        None
    };
    Ok(Cfg {
        architecture,
        d_in,
        d_sae,
        k,
        rescale,
        apply_b_dec_to_input,
        normalize_activations,
        metadata,
    })
}

/// Reads tensor `name` of `shape` as `f32` (from f32, f64, f16 or bf16).
fn read_tensor(
    st: &safetensors::SafeTensors<'_>,
    path: &Path,
    name: &str,
    shape: &[usize],
) -> Result<Vec<f32>> {
    let t = st.tensor(name).map_err(|_| {
        format_err(
            path,
            format!("missing tensor {name} (expected shape {shape:?})"),
        )
    })?;
    if t.shape() != shape {
        return Err(Error::shape(
            format!("{}: tensor {name}", path.display()),
            format!("{shape:?} (from cfg.json's d_in/d_sae)"),
            format!("{:?}", t.shape()),
        ));
    }
    let data = t.data();
    use safetensors::Dtype;
    let values: Vec<f32> = match t.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(format_err(
                path,
                format!("tensor {name} has dtype {other:?}; expected F32, F64, F16 or BF16"),
            ))
        }
    };
    if let Some(p) = values.iter().position(|v| !v.is_finite()) {
        return Err(format_err(
            path,
            format!(
                "tensor {name} holds a non-finite value ({}) at flat index {p}",
                values[p]
            ),
        ));
    }
    Ok(values)
}

#[cfg(test)]
mod version_tests {
    use super::major_version;

    #[test]
    fn pep440_versions_parse_and_others_are_refused() {
        for (v, major) in [
            ("6.54.12", 6),
            ("6.0.0", 6),
            ("6.0.0rc0", 6),
            ("6.0.0-rc.0", 6),
            ("5.1", 5),
            ("v7", 7),
            ("1!6.2.post1", 6),
            ("6.1.dev3+g12.ab", 6),
            ("0.1.0", 0),
        ] {
            assert_eq!(major_version(v), Ok(major), "{v}");
        }
        for v in ["6.x", "sparse-infer 0.1", "", ".6", "6.0+", "x6", "6..1"] {
            assert_eq!(major_version(v), Err(()), "{v}");
        }
    }
}

#[cfg(test)]
mod tests;
