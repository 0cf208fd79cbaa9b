//! `sparse-infer export` and the SAELens side of `encode`: trained
//! checkpoints out to SAELens folders (or a plain `.npy` dictionary), and
//! SAELens folders in, either encoded with their own encoder or used as the
//! dictionary of a per-sample solver.

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use sparse_core::io::{read_npy, write_npy, NpyDtype};
use sparse_core::saelens::{SaeLens, CFG_FILE};
use sparse_core::{metrics, Matrix};
use std::path::{Path, PathBuf};

/// Output format of `export`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// A SAELens-loadable folder: cfg.json + sae_weights.safetensors.
    Saelens,
    /// dictionary.npy (N × M, f32) and b_dec.npy (1 × M), for `encode --dictionary` and `metrics`.
    Npy,
}

/// Arguments of `export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint folder written by `train`.
    #[arg(long, required_unless_present = "saelens", conflicts_with = "saelens")]
    pub model: Option<PathBuf>,
    /// A SAELens folder (cfg.json + sae_weights.safetensors) to convert instead of a checkpoint.
    #[arg(long)]
    pub saelens: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,
    /// Output folder (created).
    #[arg(long)]
    pub out: PathBuf,
    /// The hook the SAE reads (e.g. blocks.8.hook_resid_pre), recorded as metadata.hook_name.
    #[arg(long)]
    pub hook_name: Option<String>,
}

/// Whether `path` is a SAELens folder (a folder holding `cfg.json`).
pub fn is_saelens_folder(path: &Path) -> bool {
    path.is_dir() && path.join(CFG_FILE).is_file()
}

/// Runs `export`; prints a JSON summary.
pub fn export(a: ExportArgs) -> Result<()> {
    let (mut sae, source, method): (Option<SaeLens>, &Path, String) = match (&a.model, &a.saelens) {
        (Some(model), _) => {
            let ckpt = sparse_core::checkpoint::load(model)?;
            let sae = match a.format {
                ExportFormat::Saelens => Some(
                    SaeLens::from_model(&ckpt.model)
                        .with_context(|| format!("exporting {}", model.display()))?,
                ),
                ExportFormat::Npy => None,
            };
            if a.format == ExportFormat::Npy {
                let d = ckpt.model.dictionary();
                std::fs::create_dir_all(&a.out)
                    .with_context(|| format!("creating {}", a.out.display()))?;
                write_npy(&a.out.join("dictionary.npy"), d, NpyDtype::F32)?;
                // Models without a decoder bias (sparse coding, the paper's SAE) have b_dec = 0.
                let b_dec = SaeLens::from_model(&ckpt.model)
                    .map(|s| s.b_dec)
                    .unwrap_or_else(|_| vec![0.0; d.cols()]);
                write_npy(
                    &a.out.join("b_dec.npy"),
                    &Matrix::from_vec(1, d.cols(), b_dec)?,
                    NpyDtype::F32,
                )?;
                println!(
                    "{}",
                    serde_json::json!({
                        "format": "npy", "model": model, "method": ckpt.method, "out": a.out,
                        "files": {"dictionary.npy": [d.rows(), d.cols()], "b_dec.npy": [1, d.cols()]},
                    })
                );
                return Ok(());
            }
            (sae, model.as_path(), ckpt.method)
        }
        (None, Some(dir)) => (Some(SaeLens::import(dir)?), dir.as_path(), "saelens".into()),
        (None, None) => bail!("--model or --saelens is required"),
    };
    let sae = sae.as_mut().expect("set for both sources");
    if let Some(h) = &a.hook_name {
        sae.set_hook_name(h);
    }
    match a.format {
        ExportFormat::Saelens => sae.export(&a.out)?,
        ExportFormat::Npy => {
            std::fs::create_dir_all(&a.out)
                .with_context(|| format!("creating {}", a.out.display()))?;
            write_npy(&a.out.join("dictionary.npy"), &sae.w_dec, NpyDtype::F32)?;
            write_npy(
                &a.out.join("b_dec.npy"),
                &Matrix::from_vec(1, sae.d_in(), sae.b_dec.clone())?,
                NpyDtype::F32,
            )?;
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "format": format!("{:?}", a.format).to_lowercase(), "source": source, "method": method,
            "out": a.out, "architecture": sae.architecture.name(), "d_in": sae.d_in(),
            "d_sae": sae.d_sae(), "apply_b_dec_to_input": sae.apply_b_dec_to_input,
            "hook_name": sae.hook_name(),
        })
    );
    Ok(())
}

fn read_data(path: &Path, d_in: usize, sae_dir: &Path) -> Result<Matrix> {
    let x = read_npy(path)?;
    x.check_finite(&format!("data ({})", path.display()))?;
    if x.cols() != d_in {
        bail!(
            "{}: expected shape (n, {d_in}) to match d_in of the SAE {}, found ({}, {})",
            path.display(),
            sae_dir.display(),
            x.rows(),
            x.cols()
        );
    }
    Ok(x)
}

/// `encode --saelens DIR`: the SAE's own encoder (SAELens' inference math);
/// with `recon`, also writes `X̂ = decode(encode(X))`.
pub fn encode_with_saelens(
    dir: &Path,
    input: &Path,
    out: &Path,
    recon: Option<&Path>,
) -> Result<()> {
    let sae = SaeLens::import(dir)?;
    let x = read_data(input, sae.d_in(), dir)?;
    let codes = sae.encode(&x)?;
    write_npy(out, &codes, NpyDtype::F32)?;
    let mut summary = serde_json::json!({
        "saelens": dir, "architecture": sae.architecture.name(), "out": out,
        "shape": [codes.rows(), codes.cols()], "l0": metrics::l0(&codes).mean_count,
    });
    if let Some(r) = recon {
        let x_hat = sae.decode(&codes)?;
        write_npy(r, &x_hat, NpyDtype::F32)?;
        summary["reconstruction"] = serde_json::json!(r);
        summary["mse"] = metrics::mse(&x, &x_hat)?.into();
        summary["explained_variance"] = metrics::explained_variance(&x, &x_hat)?.into();
    }
    println!("{summary}");
    Ok(())
}

/// The dictionary of a SAELens folder for a per-sample solver: `W_dec`, and
/// the data with `b_dec` subtracted (so that the solver fits `X − b_dec ≈ Z·W_dec`).
pub fn saelens_dictionary(dir: &Path, input: &Path) -> Result<(Matrix, Matrix)> {
    let sae = SaeLens::import(dir)?;
    let mut x = read_data(input, sae.d_in(), dir)?;
    for i in 0..x.rows() {
        x.row_mut(i)
            .iter_mut()
            .zip(&sae.b_dec)
            .for_each(|(v, b)| *v -= b);
    }
    Ok((sae.w_dec, x))
}
