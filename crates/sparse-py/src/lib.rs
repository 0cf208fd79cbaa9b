//! # sparse-py
//!
//! The Python extension module `sparse_infer._native`: numpy arrays in and
//! out of sparse-infer's Rust core. It exposes the per-sample solvers
//! (FISTA, ISTA, OMP, matching pursuit), the metrics (code and dictionary
//! MCC), the synthetic data generator, full-batch training of the
//! learned-dictionary models, and SAELens folders (read, write, encode with
//! SAELens' inference math). The pure-Python package around it
//! (`python/sparse_infer`) adds the scikit-learn-style estimators.
//!
//! Arrays: any array-like of real numbers is accepted and converted to
//! `float32` by numpy (no conversion when it already is `float32`); the core
//! works on an owned row-major `f32` matrix, so each input is copied once
//! into it. Results are handed to numpy without a copy. Every computation
//! runs with the GIL released. Errors of the core (shapes, parameters,
//! non-finite values, bad files) are raised as `ValueError` (`OSError` for
//! I/O, `FileNotFoundError` for a missing file) with the core's one-line
//! message; nothing panics into Python.

use numpy::ndarray::{Array1, Array2};
use numpy::{AllowTypeChange, IntoPyArray, PyArray1, PyArray2, PyArrayLike1, PyArrayLike2};
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use sparse_core::data::SyntheticConfig;
use sparse_core::dictionary::autoencoder::{Autoencoder, AutoencoderConfig};
use sparse_core::dictionary::jumprelu::{JumpReluConfig, JumpReluSae};
use sparse_core::dictionary::sparse_coding::{SparseCoding, SparseCodingConfig};
use sparse_core::dictionary::topk::{TopKConfig, TopKSae};
use sparse_core::encoders::fista::{Fista, FistaConfig};
use sparse_core::encoders::pursuit::{MatchingPursuit, Omp};
use sparse_core::encoders::Encoder;
use sparse_core::saelens::{Architecture, SaeLens};
use sparse_core::{metrics, Error, Matrix};
use std::path::PathBuf;

type Array2Like<'py> = PyArrayLike2<'py, f32, AllowTypeChange>;
type Array1Like<'py> = PyArrayLike1<'py, f32, AllowTypeChange>;

/// The core's error as a Python exception.
fn py_err(e: Error) -> PyErr {
    match e {
        Error::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            PyFileNotFoundError::new_err(e.to_string())
        }
        Error::Io { .. } => PyOSError::new_err(e.to_string()),
        other => PyValueError::new_err(other.to_string()),
    }
}

/// Copies a 2-D array into a row-major [`Matrix`] (one copy; none of the numpy side).
fn matrix(a: &Array2Like<'_>) -> Matrix {
    let view = a.as_array();
    let (rows, cols) = view.dim();
    let data = match view.as_slice() {
        Some(s) => s.to_vec(),
        None => view.iter().copied().collect(),
    };
    Matrix::from_vec(rows, cols, data).expect("shape of a numpy array matches its data")
}

fn vector(a: &Array1Like<'_>) -> Vec<f32> {
    a.as_array().iter().copied().collect()
}

/// Hands a [`Matrix`] to numpy without copying.
fn to_numpy<'py>(py: Python<'py>, m: Matrix) -> Bound<'py, PyArray2<f32>> {
    let (r, c) = m.shape();
    Array2::from_shape_vec((r, c), m.into_vec())
        .expect("a matrix's data fills its shape")
        .into_pyarray(py)
}

fn to_numpy1<'py>(py: Python<'py>, v: Vec<f32>) -> Bound<'py, PyArray1<f32>> {
    Array1::from_vec(v).into_pyarray(py)
}

fn solve(py: Python<'_>, encoder: &(dyn Encoder + Sync), x: Matrix, d: Matrix) -> PyResult<Matrix> {
    py.detach(|| encoder.encode(&x, &d).map(|e| e.codes))
        .map_err(py_err)
}

fn fista_like<'py>(
    py: Python<'py>,
    x: &Array2Like<'py>,
    dictionary: &Array2Like<'py>,
    config: FistaConfig,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let encoder = Fista::new(config).map_err(py_err)?;
    let codes = solve(py, &encoder, matrix(x), matrix(dictionary))?;
    Ok(to_numpy(py, codes))
}

/// FISTA on the lasso, one problem per row of `x`:
/// `argmin_z ½‖x − z·D‖² + lam·‖z‖₁` (with `z ≥ 0` when `nonnegative`).
#[pyfunction]
#[pyo3(signature = (x, dictionary, lam=0.1, *, max_iter=1000, tol=1e-6, nonnegative=true))]
fn fista<'py>(
    py: Python<'py>,
    x: Array2Like<'py>,
    dictionary: Array2Like<'py>,
    lam: f32,
    max_iter: usize,
    tol: f32,
    nonnegative: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let config = FistaConfig {
        lambda: lam,
        max_iter,
        tol,
        nonnegative,
        accelerated: true,
    };
    fista_like(py, &x, &dictionary, config)
}

/// ISTA (FISTA without momentum) on the same lasso.
#[pyfunction]
#[pyo3(signature = (x, dictionary, lam=0.1, *, max_iter=1000, tol=1e-6, nonnegative=true))]
fn ista<'py>(
    py: Python<'py>,
    x: Array2Like<'py>,
    dictionary: Array2Like<'py>,
    lam: f32,
    max_iter: usize,
    tol: f32,
    nonnegative: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let config = FistaConfig {
        lambda: lam,
        max_iter,
        tol,
        nonnegative,
        accelerated: false,
    };
    fista_like(py, &x, &dictionary, config)
}

/// Orthogonal matching pursuit: `k` atoms per row (stops early when the
/// residual norm falls below `tol`), least-squares coefficients on the support.
#[pyfunction]
#[pyo3(signature = (x, dictionary, k, *, tol=None, nonnegative=true))]
fn omp<'py>(
    py: Python<'py>,
    x: Array2Like<'py>,
    dictionary: Array2Like<'py>,
    k: usize,
    tol: Option<f32>,
    nonnegative: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let d = matrix(&dictionary);
    check_k(k, d.rows())?;
    let encoder = Omp::new(k, tol, nonnegative).map_err(py_err)?;
    let codes = solve(py, &encoder, matrix(&x), d)?;
    Ok(to_numpy(py, codes))
}

/// Matching pursuit: `k` greedy steps per row (an atom may be chosen again).
#[pyfunction]
#[pyo3(signature = (x, dictionary, k, *, nonnegative=true))]
fn matching_pursuit<'py>(
    py: Python<'py>,
    x: Array2Like<'py>,
    dictionary: Array2Like<'py>,
    k: usize,
    nonnegative: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let d = matrix(&dictionary);
    check_k(k, d.rows())?;
    let encoder = MatchingPursuit::new(k, nonnegative).map_err(py_err)?;
    let codes = solve(py, &encoder, matrix(&x), d)?;
    Ok(to_numpy(py, codes))
}

fn check_k(k: usize, n_latents: usize) -> PyResult<()> {
    if k == 0 || k > n_latents {
        return Err(py_err(Error::invalid(
            "k",
            k,
            &format!("must be between 1 and the number of atoms ({n_latents})"),
        )));
    }
    Ok(())
}

/// Code MCC: mean over true latents of |Pearson correlation| with the optimally matched predicted latent.
#[pyfunction]
fn mcc(py: Python<'_>, true_codes: Array2Like<'_>, pred_codes: Array2Like<'_>) -> PyResult<f64> {
    let (a, b) = (matrix(&true_codes), matrix(&pred_codes));
    if a.rows() != b.rows() {
        return Err(py_err(Error::shape(
            "pred_codes",
            format!(
                "({}, n_latents) (one row per sample of true_codes)",
                a.rows()
            ),
            format!("({}, {})", b.rows(), b.cols()),
        )));
    }
    py.detach(|| metrics::code_mcc(&a, &b)).map_err(py_err)
}

/// Dictionary MCC: mean over true atoms of |Pearson correlation| with the optimally matched predicted atom.
#[pyfunction]
fn dictionary_mcc(
    py: Python<'_>,
    true_dictionary: Array2Like<'_>,
    pred_dictionary: Array2Like<'_>,
) -> PyResult<f64> {
    let (a, b) = (matrix(&true_dictionary), matrix(&pred_dictionary));
    py.detach(|| metrics::dictionary_mcc(&a, &b))
        .map_err(py_err)
}

/// The paper's synthetic data: `(X, Z, D)` with exactly-`k`-sparse half-normal codes.
#[pyfunction]
#[pyo3(signature = (n_samples, n_latents, dim, k, *, seed=0, noise=0.0))]
#[allow(clippy::type_complexity)]
fn make_sparse_data<'py>(
    py: Python<'py>,
    n_samples: usize,
    n_latents: usize,
    dim: usize,
    k: usize,
    seed: u64,
    noise: f32,
) -> PyResult<(
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray2<f32>>,
    Bound<'py, PyArray2<f32>>,
)> {
    let mut config = SyntheticConfig::paper(n_latents, dim, k, seed);
    config.noise_std = noise;
    let (d, split) = py
        .detach(|| -> sparse_core::Result<_> {
            config.validate()?;
            let d = config.dictionary()?;
            let split = config.split(&d, n_samples, 1)?;
            Ok((d, split))
        })
        .map_err(py_err)?;
    Ok((
        to_numpy(py, split.x),
        to_numpy(py, split.z),
        to_numpy(py, d),
    ))
}

/// A SAELens model as a dict of numpy arrays and cfg fields (the layout
/// `load_saelens` returns and `sae_from_dict` reads).
fn sae_to_dict<'py>(py: Python<'py>, s: SaeLens) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("architecture", s.architecture.name())?;
    d.set_item("d_in", s.d_in())?;
    d.set_item("d_sae", s.d_sae())?;
    d.set_item("apply_b_dec_to_input", s.apply_b_dec_to_input)?;
    d.set_item("normalize_activations", &s.normalize_activations)?;
    d.set_item(
        "metadata_json",
        serde_json::Value::Object(s.metadata.clone()).to_string(),
    )?;
    match &s.architecture {
        Architecture::Standard => {}
        Architecture::TopK {
            k,
            rescale_acts_by_decoder_norm,
        } => {
            d.set_item("k", *k)?;
            d.set_item(
                "rescale_acts_by_decoder_norm",
                *rescale_acts_by_decoder_norm,
            )?;
        }
        Architecture::JumpRelu { threshold } => {
            d.set_item("threshold", to_numpy1(py, threshold.clone()))?;
        }
    }
    d.set_item("W_enc", to_numpy(py, s.w_enc))?;
    d.set_item("b_enc", to_numpy1(py, s.b_enc))?;
    d.set_item("W_dec", to_numpy(py, s.w_dec))?;
    d.set_item("b_dec", to_numpy1(py, s.b_dec))?;
    Ok(d)
}

/// Builds and validates a [`SaeLens`] from its parts.
#[allow(clippy::too_many_arguments)]
fn sae_from_parts(
    w_enc: &Array2Like<'_>,
    b_enc: &Array1Like<'_>,
    w_dec: &Array2Like<'_>,
    b_dec: &Array1Like<'_>,
    architecture: &str,
    k: Option<usize>,
    threshold: Option<&Array1Like<'_>>,
    apply_b_dec_to_input: bool,
    rescale_acts_by_decoder_norm: bool,
    normalize_activations: &str,
    metadata_json: &str,
) -> PyResult<SaeLens> {
    let architecture = match (architecture, k, threshold) {
        ("standard", None, None) => Architecture::Standard,
        ("topk", Some(k), None) => Architecture::TopK {
            k,
            rescale_acts_by_decoder_norm,
        },
        ("jumprelu", None, Some(t)) => Architecture::JumpRelu {
            threshold: vector(t),
        },
        (a @ ("standard" | "topk" | "jumprelu"), _, _) => {
            return Err(PyValueError::new_err(format!(
                "architecture {a:?} takes {}",
                match a {
                    "standard" => "neither k nor threshold",
                    "topk" => "k and no threshold",
                    _ => "threshold and no k",
                }
            )))
        }
        (other, _, _) => {
            return Err(PyValueError::new_err(format!(
                "architecture {other:?} is not supported (standard, topk, jumprelu)"
            )))
        }
    };
    let metadata = match serde_json::from_str(metadata_json) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => {
            return Err(PyValueError::new_err(format!(
                "metadata_json must be a JSON object, found {metadata_json:?}"
            )))
        }
    };
    let s = SaeLens {
        architecture,
        w_enc: matrix(w_enc),
        b_enc: vector(b_enc),
        w_dec: matrix(w_dec),
        b_dec: vector(b_dec),
        apply_b_dec_to_input,
        normalize_activations: normalize_activations.to_string(),
        metadata,
    };
    s.validate().map_err(py_err)?;
    Ok(s)
}

/// Reads a SAELens folder (cfg.json + sae_weights.safetensors) with strict validation.
#[pyfunction]
fn load_saelens(py: Python<'_>, path: PathBuf) -> PyResult<Bound<'_, PyDict>> {
    let s = py.detach(|| SaeLens::import(&path)).map_err(py_err)?;
    sae_to_dict(py, s)
}

/// Writes a SAELens folder (cfg.json + sae_weights.safetensors, float32).
#[pyfunction]
#[pyo3(signature = (path, w_enc, b_enc, w_dec, b_dec, architecture, *, k=None, threshold=None,
                    apply_b_dec_to_input=true, rescale_acts_by_decoder_norm=false,
                    normalize_activations="none", metadata_json="{}"))]
#[allow(clippy::too_many_arguments)]
fn save_saelens(
    py: Python<'_>,
    path: PathBuf,
    w_enc: Array2Like<'_>,
    b_enc: Array1Like<'_>,
    w_dec: Array2Like<'_>,
    b_dec: Array1Like<'_>,
    architecture: &str,
    k: Option<usize>,
    threshold: Option<Array1Like<'_>>,
    apply_b_dec_to_input: bool,
    rescale_acts_by_decoder_norm: bool,
    normalize_activations: &str,
    metadata_json: &str,
) -> PyResult<()> {
    let s = sae_from_parts(
        &w_enc,
        &b_enc,
        &w_dec,
        &b_dec,
        architecture,
        k,
        threshold.as_ref(),
        apply_b_dec_to_input,
        rescale_acts_by_decoder_norm,
        normalize_activations,
        metadata_json,
    )?;
    py.detach(|| s.export(&path)).map_err(py_err)
}

/// SAELens' encode: feature activations `(n × d_sae)` of `x (n × d_in)`.
#[pyfunction]
#[pyo3(signature = (x, w_enc, b_enc, w_dec, b_dec, architecture, *, k=None, threshold=None,
                    apply_b_dec_to_input=true, rescale_acts_by_decoder_norm=false))]
#[allow(clippy::too_many_arguments)]
fn sae_encode<'py>(
    py: Python<'py>,
    x: Array2Like<'py>,
    w_enc: Array2Like<'py>,
    b_enc: Array1Like<'py>,
    w_dec: Array2Like<'py>,
    b_dec: Array1Like<'py>,
    architecture: &str,
    k: Option<usize>,
    threshold: Option<Array1Like<'py>>,
    apply_b_dec_to_input: bool,
    rescale_acts_by_decoder_norm: bool,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let s = sae_from_parts(
        &w_enc,
        &b_enc,
        &w_dec,
        &b_dec,
        architecture,
        k,
        threshold.as_ref(),
        apply_b_dec_to_input,
        rescale_acts_by_decoder_norm,
        "none",
        "{}",
    )?;
    let x = matrix(&x);
    let codes = py.detach(|| s.encode(&x)).map_err(py_err)?;
    Ok(to_numpy(py, codes))
}

/// Trains a learned-dictionary SAE full-batch for `steps` Adam steps and
/// returns it in SAELens form (the dict `load_saelens` returns).
/// `architecture`: standard (ReLU SAE with L1 weight `l1` on the paper's
/// scale, encoder and decoder biases), topk, batchtopk (needs `k`) or jumprelu.
#[pyfunction]
#[pyo3(signature = (x, architecture, n_latents, *, steps, seed=0, l1=None, lr=None, k=None))]
#[allow(clippy::too_many_arguments)]
fn fit_sae<'py>(
    py: Python<'py>,
    x: Array2Like<'py>,
    architecture: &str,
    n_latents: usize,
    steps: usize,
    seed: u64,
    l1: Option<f32>,
    lr: Option<f32>,
    k: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let x = matrix(&x);
    let dim = x.cols();
    let not_for = |what: &str, given: bool| -> PyResult<()> {
        if given {
            return Err(PyValueError::new_err(format!(
                "{what} does not apply to architecture {architecture:?}"
            )));
        }
        Ok(())
    };
    let need_k =
        || k.ok_or_else(|| PyValueError::new_err(format!("architecture {architecture:?} needs k")));
    enum Kind {
        Standard(AutoencoderConfig),
        TopK(TopKConfig),
        JumpRelu(JumpReluConfig),
    }
    let kind = match architecture {
        "standard" => {
            not_for("k", k.is_some())?;
            let mut c = AutoencoderConfig::paper_sae(n_latents, dim, seed);
            c.encoder_bias = true;
            c.decoder_bias = true;
            if let Some(l) = l1 {
                c.lambda = l;
            }
            if let Some(lr) = lr {
                c.adam.lr = lr;
            }
            Kind::Standard(c)
        }
        "topk" | "batchtopk" => {
            not_for("l1", l1.is_some())?;
            let mut c = if architecture == "topk" {
                TopKConfig::topk(n_latents, dim, need_k()?, seed)
            } else {
                TopKConfig::batch_topk(n_latents, dim, need_k()?, seed)
            };
            if let Some(lr) = lr {
                c.adam.lr = lr;
            }
            Kind::TopK(c)
        }
        "jumprelu" => {
            not_for("k", k.is_some())?;
            let mut c = JumpReluConfig::new(n_latents, dim, seed);
            if let Some(l) = l1 {
                c.l0_coefficient = l;
            }
            if let Some(lr) = lr {
                c.adam.lr = lr;
            }
            Kind::JumpRelu(c)
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "architecture {other:?} is not supported (standard, topk, batchtopk, jumprelu)"
            )))
        }
    };
    let sae = py
        .detach(|| -> sparse_core::Result<SaeLens> {
            Ok(match kind {
                Kind::Standard(c) => {
                    let mut m = Autoencoder::new(c)?;
                    for _ in 0..steps {
                        m.train_step(&x)?;
                    }
                    SaeLens::from_autoencoder(&m)?
                }
                Kind::TopK(c) => {
                    let mut m = TopKSae::new(c)?;
                    for _ in 0..steps {
                        m.train_step(&x)?;
                    }
                    SaeLens::from_topk(&m)
                }
                Kind::JumpRelu(c) => {
                    let mut m = JumpReluSae::new(c)?;
                    for _ in 0..steps {
                        m.train_step(&x)?;
                    }
                    SaeLens::from_jumprelu(&m)
                }
            })
        })
        .map_err(py_err)?;
    sae_to_dict(py, sae)
}

/// Alternating sparse coding (FISTA codes, MOD dictionary update) for
/// `steps` steps; returns the dictionary `D (n_latents × dim)`, unit-norm rows.
#[pyfunction]
#[pyo3(signature = (x, n_latents, *, steps, seed=0, lam=0.1, fista_iters=50))]
fn fit_sparse_coding<'py>(
    py: Python<'py>,
    x: Array2Like<'py>,
    n_latents: usize,
    steps: usize,
    seed: u64,
    lam: f32,
    fista_iters: usize,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let x = matrix(&x);
    let mut c = SparseCodingConfig::new(n_latents, x.cols(), seed);
    c.lambda = lam;
    c.fista_iters = fista_iters;
    let d = py
        .detach(|| -> sparse_core::Result<Matrix> {
            let mut m = SparseCoding::new(c)?;
            for _ in 0..steps {
                m.fit_step(&x)?;
            }
            Ok(m.dictionary().clone())
        })
        .map_err(py_err)?;
    Ok(to_numpy(py, d))
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fista, m)?)?;
    m.add_function(wrap_pyfunction!(ista, m)?)?;
    m.add_function(wrap_pyfunction!(omp, m)?)?;
    m.add_function(wrap_pyfunction!(matching_pursuit, m)?)?;
    m.add_function(wrap_pyfunction!(mcc, m)?)?;
    m.add_function(wrap_pyfunction!(dictionary_mcc, m)?)?;
    m.add_function(wrap_pyfunction!(make_sparse_data, m)?)?;
    m.add_function(wrap_pyfunction!(load_saelens, m)?)?;
    m.add_function(wrap_pyfunction!(save_saelens, m)?)?;
    m.add_function(wrap_pyfunction!(sae_encode, m)?)?;
    m.add_function(wrap_pyfunction!(fit_sae, m)?)?;
    m.add_function(wrap_pyfunction!(fit_sparse_coding, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
