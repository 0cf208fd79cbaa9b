//! Our side of every case: the inputs every implementation reads
//! ([`write_inputs`]) and the timed runs of sparse-infer's own code
//! ([`run_kernel`], executed in a child process by the harness).

use crate::{Case, Measurement};
use anyhow::{Context, Result};
use sparse_core::data::SyntheticConfig;
use sparse_core::dictionary::autoencoder::{Autoencoder, AutoencoderConfig};
use sparse_core::dictionary::topk::{TopKConfig, TopKSae};
use sparse_core::encoders::exp_adam::{ExpAdam, ExpAdamConfig};
use sparse_core::encoders::fista::{Fista, FistaConfig};
use sparse_core::encoders::mlp::{Mlp, MlpConfig};
use sparse_core::encoders::pursuit::Omp;
use sparse_core::encoders::sae::{Sae, SaeConfig};
use sparse_core::encoders::{Encoder, Trainable};
use sparse_core::io::{read_npy, write_npy, NpyDtype};
use sparse_core::linalg::{gemm_into, Op};
use sparse_core::matrix::Matrix;
use sparse_core::metrics::code_mcc;
use std::path::Path;
use std::time::Instant;

/// Seed of every generated input.
pub const INPUT_SEED: u64 = 20261126;

/// Active latents of the sparse data behind the solver cases (FISTA, lasso).
const DATA_K: usize = 32;

fn save(dir: &Path, name: &str, m: &Matrix) -> Result<()> {
    write_npy(&dir.join(name), m, NpyDtype::F32)
        .with_context(|| format!("writing bench input {}", dir.join(name).display()))
}

/// Writes the case's inputs into `dir` as `.npy`: `a`/`b` (GEMM), `x`
/// (SAE steps), `x` and `d` (solvers), or the paper data's
/// `d`, `x_train`, `x_test`, `z_test` (known-dictionary study).
pub fn write_inputs(case: &Case, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let synthetic = |latents: usize, dim: usize, k: usize, n: usize| -> Result<(Matrix, Matrix)> {
        let cfg = SyntheticConfig::paper(latents, dim, k.min(latents), INPUT_SEED);
        let d = cfg.dictionary()?;
        let split = cfg.split(&d, n, 1)?;
        Ok((split.x, d))
    };
    match *case {
        Case::Gemm { m, k, n } => {
            // Any values will do (GEMM time does not depend on them): two random dictionaries.
            let a = SyntheticConfig::paper(m, k, 1, INPUT_SEED).dictionary()?;
            let b = SyntheticConfig::paper(k, n, 1, INPUT_SEED + 1).dictionary()?;
            save(dir, "a.npy", &a)?;
            save(dir, "b.npy", &b)?;
        }
        Case::SaeStep {
            batch,
            dim,
            latents,
            l0,
        } => {
            let (x, d) = synthetic(latents, dim, DATA_K, batch)?;
            save(dir, "x.npy", &x)?;
            let params = sae_step_parameters(&x, &d, l0)?;
            for (name, m) in ["w_enc.npy", "b_enc.npy", "w_dec.npy", "b_dec.npy"]
                .into_iter()
                .zip(&params)
            {
                save(dir, name, m)?;
            }
        }
        Case::TopkStep {
            batch,
            dim,
            latents,
            ..
        } => {
            let (x, _) = synthetic(latents, dim, DATA_K, batch)?;
            save(dir, "x.npy", &x)?;
        }
        Case::Fista {
            batch,
            dim,
            latents,
            ..
        }
        | Case::Lasso {
            batch,
            dim,
            latents,
            ..
        } => {
            let (x, d) = synthetic(latents, dim, DATA_K, batch)?;
            save(dir, "x.npy", &x)?;
            save(dir, "d.npy", &d)?;
        }
        Case::Omp {
            batch,
            dim,
            latents,
            k,
        } => {
            let (x, d) = synthetic(latents, dim, k, batch)?;
            save(dir, "x.npy", &x)?;
            save(dir, "d.npy", &d)?;
        }
        Case::KnownDictionary { .. } => {
            let data = SyntheticConfig::paper(16, 8, 3, INPUT_SEED).generate(1024, 1024, 1024)?;
            save(dir, "d.npy", &data.dictionary)?;
            save(dir, "x_train.npy", &data.train.x)?;
            save(dir, "x_test.npy", &data.test.x)?;
            save(dir, "z_test.npy", &data.test.z)?;
        }
    }
    Ok(())
}

/// The SAE step's starting parameters `[W_enc (d × N), b_enc (1 × N),
/// W_dec (N × d), b_dec (1 × d)]` for data `x` drawn from the dictionary `d`.
/// Without `l0`: a tied initialisation (`W_dec` random unit rows, `W_enc` its
/// transpose, zero biases), about half the codes positive. With `l0`: a
/// trained-like state, `W_dec = d`, `W_enc = dᵀ` and `b_enc = −θ` with θ the
/// `l0·n`-th largest pre-activation of the batch, so that samples have `l0`
/// positive codes on average.
fn sae_step_parameters(x: &Matrix, d: &Matrix, l0: Option<usize>) -> Result<[Matrix; 4]> {
    let (latents, dim) = d.shape();
    let b_dec = Matrix::zeros(1, dim);
    let Some(l0) = l0 else {
        let w_dec = SyntheticConfig::paper(latents, dim, 1, INPUT_SEED + 2).dictionary()?;
        return Ok([w_dec.transpose(), Matrix::zeros(1, latents), w_dec, b_dec]);
    };
    let w_enc = d.transpose();
    let mut pre = Matrix::zeros(x.rows(), latents);
    gemm_into(
        pre.view_mut(),
        false,
        x.view(),
        Op::N,
        w_enc.view(),
        Op::N,
        1.0,
    );
    let mut values = pre.as_slice().to_vec();
    let rank = (l0 * x.rows()).clamp(1, values.len());
    let (_, &mut theta, _) = values.select_nth_unstable_by(rank - 1, |a, b| b.total_cmp(a));
    Ok([
        w_enc,
        Matrix::from_fn(1, latents, |_, _| -theta),
        d.clone(),
        b_dec,
    ])
}

/// Times one closure `reps` times after `warmup` untimed calls.
fn time_reps(warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        f()?;
    }
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// Peak resident memory of this process (`VmHWM`, Linux), bytes.
pub fn peak_rss_bytes() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Mean lasso objective `½‖x − zD‖² + λ‖z‖₁` over the samples, in f64.
fn lasso_objective(x: &Matrix, d: &Matrix, z: &Matrix, lambda: f32) -> f64 {
    let mut resid = x.clone();
    gemm_into(
        resid.view_mut(),
        true,
        z.view(),
        Op::N,
        d.view(),
        Op::N,
        -1.0,
    );
    let l1: f64 = z.as_slice().iter().map(|v| v.abs() as f64).sum();
    (0.5 * resid.norm_sq() + lambda as f64 * l1) / x.rows() as f64
}

/// Runs our implementation of `case` on the inputs in `dir`: `reps` timed
/// repetitions after a warm-up (a shortened one for the long solver cases).
pub fn run_kernel(case: &Case, dir: &Path, reps: usize) -> Result<Measurement> {
    let load =
        |name: &str| read_npy(&dir.join(name)).with_context(|| format!("bench input {name}"));
    let mut check = None;
    let times = match *case {
        Case::Gemm { .. } => {
            let (a, b) = (load("a.npy")?, load("b.npy")?);
            let mut c = Matrix::zeros(a.rows(), b.cols());
            time_reps(1, reps, || {
                gemm_into(c.view_mut(), false, a.view(), Op::N, b.view(), Op::N, 1.0);
                Ok(())
            })?
        }
        Case::SaeStep { latents, dim, .. } => {
            let x = load("x.npy")?;
            let config = AutoencoderConfig {
                encoder_bias: true,
                decoder_bias: true,
                project_decoder_gradient: true,
                adam: sparse_core::optim::AdamConfig::with_lr(1e-4),
                ..AutoencoderConfig::paper_sae(latents, dim, 0)
            };
            let (w_enc, b_enc) = (load("w_enc.npy")?, load("b_enc.npy")?);
            let (w_dec, b_dec) = (load("w_dec.npy")?, load("b_dec.npy")?);
            let mut sae = Autoencoder::from_parameters(
                config,
                vec![(w_enc, b_enc.as_slice().to_vec())],
                w_dec,
                b_dec.as_slice().to_vec(),
            )?;
            let mut loss = 0.0;
            let t = time_reps(1, reps, || {
                loss = sae.train_step(&x)?;
                Ok(())
            })?;
            check = Some(loss as f64);
            t
        }
        Case::TopkStep {
            latents, dim, k, ..
        } => {
            let x = load("x.npy")?;
            let mut cfg = TopKConfig::topk(latents, dim, k, 0);
            cfg.adam.lr = 1e-4;
            let mut sae = TopKSae::new(cfg)?;
            let mut loss = 0.0;
            let t = time_reps(1, reps, || {
                loss = sae.train_step(&x)?;
                Ok(())
            })?;
            check = Some(loss as f64);
            t
        }
        Case::Fista { iterations, .. } => {
            let (x, d) = (load("x.npy")?, load("d.npy")?);
            let config = |max_iter| FistaConfig {
                lambda: 0.1,
                max_iter,
                tol: 0.0,
                nonnegative: true,
                accelerated: true,
            };
            // Warm-up: two iterations (page faults, thread pool), not a full solve.
            Fista::new(config(2))?.solve(&x, &d, None, None)?;
            let fista = Fista::new(config(iterations))?;
            let mut z = None;
            let t = time_reps(0, reps, || {
                z = Some(fista.solve(&x, &d, None, None)?.codes);
                Ok(())
            })?;
            check = z.map(|z| lasso_objective(&x, &d, &z, 0.1));
            t
        }
        Case::Omp { k, .. } => {
            let (x, d) = (load("x.npy")?, load("d.npy")?);
            let omp = Omp::new(k, None, false)?;
            let mut z = None;
            let t = time_reps(1, reps, || {
                z = Some(omp.encode(&x, &d)?.codes);
                Ok(())
            })?;
            // Mean squared residual norm per sample.
            check = z.map(|z| 2.0 * lasso_objective(&x, &d, &z, 0.0));
            t
        }
        Case::Lasso { lambda, .. } => {
            let (x, d) = (load("x.npy")?, load("d.npy")?);
            let fista = Fista::new(FistaConfig {
                lambda,
                nonnegative: false,
                ..FistaConfig::default()
            })?;
            let mut z = None;
            let t = time_reps(1, reps, || {
                z = Some(fista.solve(&x, &d, None, None)?.codes);
                Ok(())
            })?;
            check = z.map(|z| lasso_objective(&x, &d, &z, lambda));
            t
        }
        Case::KnownDictionary {
            steps,
            inference_steps,
        } => {
            let (d, x_train) = (load("d.npy")?, load("x_train.npy")?);
            let (x_test, z_test) = (load("x_test.npy")?, load("z_test.npy")?);
            let mut mcc = 0.0;
            // The pieces are independent: run side by side, as the study
            // (`sparse_study::known_dictionary`) runs a seed's methods.
            let t = time_reps(0, reps, || {
                let sae = || -> Result<Matrix> {
                    let mut sae = Sae::new(SaeConfig::paper(16, 8, 0))?;
                    for _ in 0..steps {
                        sae.train_step(&x_train, &d)?;
                    }
                    Ok(sae.encode(&x_test, &d)?.codes)
                };
                let mlp = || -> Result<()> {
                    let mut mlp = Mlp::new(MlpConfig::paper(16, 8, 32, 0))?;
                    for _ in 0..steps {
                        mlp.train_step(&x_train, &d)?;
                    }
                    mlp.encode(&x_test, &d)?;
                    Ok(())
                };
                let exp_adam = || -> Result<()> {
                    ExpAdam::new(ExpAdamConfig {
                        max_iter: inference_steps,
                        ..ExpAdamConfig::default()
                    })?
                    .encode(&x_test, &d)?;
                    Ok(())
                };
                // The MLP takes about as long as the other two together.
                let (mlp_done, (z_sae, exp_done)) = rayon::join(mlp, || (sae(), exp_adam()));
                mlp_done?;
                exp_done?;
                mcc = code_mcc(&z_test, &z_sae?)?;
                Ok(())
            })?;
            check = Some(mcc);
            t
        }
    };
    Ok(Measurement {
        case: case.name(),
        implementation: "sparse-infer".to_string(),
        times_s: times,
        peak_rss_bytes: peak_rss_bytes(),
        check,
        info: serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "threads": rayon::current_num_threads(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_quick_case_runs_on_its_inputs() {
        let tmp = tempfile::tempdir().unwrap();
        for case in crate::quick_cases() {
            let dir = tmp.path().join(case.name());
            write_inputs(&case, &dir).unwrap();
            let m = run_kernel(&case, &dir, 2).unwrap();
            assert_eq!(m.times_s.len(), 2, "{}", m.case);
            assert!(m.times_s.iter().all(|t| *t > 0.0));
            assert!(m.peak_rss_bytes.unwrap() > 0.0);
            if let Some(c) = m.check {
                assert!(c.is_finite(), "{}: {c}", m.case);
            }
        }
    }

    #[test]
    fn lasso_objective_matches_a_hand_computed_case() {
        // x = (1, 2), D = I, z = (1, 0): ½‖(0, 2)‖² + 0.5·1 = 2.5.
        let x = Matrix::from_vec(1, 2, vec![1.0, 2.0]).unwrap();
        let d = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let z = Matrix::from_vec(1, 2, vec![1.0, 0.0]).unwrap();
        assert!((lasso_objective(&x, &d, &z, 0.5) - 2.5).abs() < 1e-12);
    }
}
