//! The downstream loss: a reconstruction of the hook activations spliced into
//! the language model, against the clean model and zero-ablation.

use crate::compare::Method;
use crate::heldout::split_contexts;
use anyhow::{bail, Context, Result};
use sparse_core::checkpoint::Checkpoint;
use sparse_core::metrics::held_out::DownstreamLoss;
use sparse_core::Matrix;
use sparse_lm::{HookPoint, LanguageModel, LmError};
use sparse_store::{ActivationStore, Split, Splits};
use std::path::{Path, PathBuf};

/// What [`resolve_lm`] found.
pub struct ResolvedLm {
    /// The loaded model.
    pub model: LanguageModel,
    /// Its file.
    pub path: PathBuf,
    /// The store's hook, parsed for this model.
    pub hook: HookPoint,
}

/// The store's language model: `lm` (its sha256 must be the store's), else the
/// default asset when present with the store's sha256, else `None`.
pub fn resolve_lm(store: &ActivationStore, lm: Option<&Path>) -> Result<Option<ResolvedLm>> {
    let want = &store.spec().model;
    let path = match lm {
        Some(p) => {
            let got = sparse_core::checkpoint::sha256_file(p)
                .with_context(|| format!("the language model {}", p.display()))?;
            if got != want.sha256 {
                bail!(
                    "{}: sha256 {got} differs from the store's model {} (sha256 {})",
                    p.display(),
                    want.file,
                    want.sha256
                );
            }
            p.to_path_buf()
        }
        None => {
            let p = sparse_lm::assets::default_model_path();
            if want.sha256.is_empty()
                || !p.is_file()
                || sparse_core::checkpoint::sha256_file(&p)? != want.sha256
            {
                return Ok(None);
            }
            p
        }
    };
    let model = LanguageModel::load(&path)
        .with_context(|| format!("loading the language model {}", path.display()))?;
    let info = model.info();
    let hook = HookPoint::parse_for(&store.spec().hook, info.n_layers)
        .with_context(|| format!("the store's hook {}", store.spec().hook))?;
    if info.d_model != store.d_model() {
        bail!(
            "{}: d_model {} differs from the store's {}",
            path.display(),
            info.d_model,
            store.d_model()
        );
    }
    Ok(Some(ResolvedLm { model, path, hook }))
}

/// A replacement of the hook activations (`n × d_model` in, same shape out).
pub type Reconstruct<'a> = &'a mut dyn FnMut(&Matrix) -> Result<Matrix>;

/// Mean next-token NLL of `contexts` (each `context_len` tokens) over the
/// predictions at positions `first..len − 1`, with the hook activation at
/// positions `first..` replaced by `splice(rows)` when given (rows: the
/// activations there, `n × d_model`, contexts in order).
pub fn mean_nll(
    lm: &ResolvedLm,
    contexts: &[Vec<u32>],
    first: usize,
    batch: usize,
    mut splice: Option<Reconstruct<'_>>,
) -> Result<f64> {
    let Some(seq) = contexts.first().map(Vec::len) else {
        bail!("no held-out contexts to compute the downstream loss on");
    };
    if first + 1 >= seq {
        bail!("first_position {first} leaves no prediction in contexts of {seq} tokens");
    }
    let d = lm.model.info().d_model;
    let (mut sum, mut count) = (0.0f64, 0u64);
    for chunk in contexts.chunks(batch.max(1)) {
        let b = chunk.len();
        let tokens: Vec<u32> = chunk.concat();
        let nll = match splice.as_mut() {
            None => lm.model.token_nll(&tokens, b, seq)?,
            Some(f) => {
                let mut call = |v: &mut [f32]| -> sparse_lm::Result<()> {
                    let k = seq - first;
                    let mut x = Vec::with_capacity(b * k * d);
                    for i in 0..b {
                        x.extend_from_slice(&v[(i * seq + first) * d..(i + 1) * seq * d]);
                    }
                    let x = Matrix::from_vec(b * k, d, x)
                        .map_err(|e| LmError::invalid("splice", e.to_string()))?;
                    let y = f(&x).map_err(|e| LmError::invalid("splice", format!("{e:#}")))?;
                    if y.shape() != x.shape() {
                        return Err(LmError::invalid(
                            "splice",
                            "reconstruction of the wrong shape",
                        ));
                    }
                    for i in 0..b {
                        v[(i * seq + first) * d..(i + 1) * seq * d]
                            .copy_from_slice(&y.as_slice()[i * k * d..(i + 1) * k * d]);
                    }
                    Ok(())
                };
                lm.model
                    .token_nll_with_splice(&tokens, b, seq, lm.hook, &mut call)?
            }
        };
        for i in 0..b {
            for &v in &nll[i * (seq - 1) + first..(i + 1) * (seq - 1)] {
                sum += v as f64;
                count += 1;
            }
        }
    }
    Ok(sum / count as f64)
}

/// Clean and zero-ablated mean NLL, computed once per set of contexts.
pub struct Baselines {
    /// Mean NLL of the clean model.
    pub clean: f64,
    /// Mean NLL with the hook activations zeroed.
    pub zero: f64,
}

impl Baselines {
    /// Runs the clean and the zero-ablated model on `contexts`.
    pub fn new(lm: &ResolvedLm, contexts: &[Vec<u32>], first: usize, batch: usize) -> Result<Self> {
        let clean = mean_nll(lm, contexts, first, batch, None)?;
        let mut zeros = |x: &Matrix| -> Result<Matrix> { Ok(Matrix::zeros(x.rows(), x.cols())) };
        let zero = mean_nll(lm, contexts, first, batch, Some(&mut zeros))?;
        Ok(Baselines { clean, zero })
    }

    /// The downstream loss of the reconstruction `recon`.
    pub fn downstream(
        &self,
        lm: &ResolvedLm,
        contexts: &[Vec<u32>],
        first: usize,
        batch: usize,
        recon: &mut dyn FnMut(&Matrix) -> Result<Matrix>,
    ) -> Result<DownstreamLoss> {
        let spliced = mean_nll(lm, contexts, first, batch, Some(recon))?;
        Ok(DownstreamLoss::from_losses(self.clean, spliced, self.zero))
    }
}

/// The checkpoint's reconstruction (raw scale) of raw activations: code
/// `s·x`, decode, divide by `s`.
pub fn sae_reconstruction(ckpt: &Checkpoint, x: &Matrix) -> Result<Matrix> {
    let scale = sparse_train::stored_run(ckpt).map_or(1.0, |r| r.scale);
    Ok(Method::Sae.reconstruct(&ckpt.model, &[], scale, x)?.1)
}

/// The downstream loss of `ckpt` on the first `contexts` held-out contexts of
/// `split`, and how many contexts that was.
pub fn evaluate_downstream(
    ckpt: &Checkpoint,
    store: &ActivationStore,
    lm: &ResolvedLm,
    splits: &Splits,
    split: Split,
    contexts: usize,
    lm_batch: usize,
) -> Result<(DownstreamLoss, usize)> {
    let ids = split_contexts(store, splits, split, contexts)?;
    let tokens = ids
        .iter()
        .map(|&c| store.context_tokens(c))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let first = store.spec().first_position;
    let base = Baselines::new(lm, &tokens, first, lm_batch)?;
    let d = base.downstream(lm, &tokens, first, lm_batch, &mut |x: &Matrix| {
        sae_reconstruction(ckpt, x)
    })?;
    Ok((d, ids.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparse_lm::testing::{write_tiny_llama_gguf, TinyLlamaConfig};

    fn tiny() -> (tempfile::TempDir, ResolvedLm, Vec<Vec<u32>>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tiny.gguf");
        write_tiny_llama_gguf(&p, &TinyLlamaConfig::default()).unwrap();
        let model = LanguageModel::load(&p).unwrap();
        let vocab = model.info().vocab_size as u64;
        let mut state = 12345u64;
        let contexts = (0..5)
            .map(|_| {
                (0..12)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        ((state >> 33) % vocab) as u32
                    })
                    .collect()
            })
            .collect();
        let lm = ResolvedLm {
            model,
            path: p,
            hook: HookPoint::resid_post(1),
        };
        (dir, lm, contexts)
    }

    #[test]
    fn identity_splice_recovers_all_and_zero_recovers_nothing() {
        let (_dir, lm, ctx) = tiny();
        let base = Baselines::new(&lm, &ctx, 1, 2).unwrap();
        // (A random model: zero-ablation may even lower its loss; only a difference is needed.)
        assert_ne!(base.zero, base.clean);
        let id = base
            .downstream(&lm, &ctx, 1, 2, &mut |x: &Matrix| -> Result<Matrix> {
                Ok(x.clone())
            })
            .unwrap();
        assert_eq!(id.ce_increase, 0.0);
        assert_eq!(id.loss_recovered, 1.0);
        assert_eq!(id.ce_spliced, base.clean);
        let zero = base
            .downstream(&lm, &ctx, 1, 2, &mut |x: &Matrix| -> Result<Matrix> {
                Ok(Matrix::zeros(x.rows(), x.cols()))
            })
            .unwrap();
        assert_eq!(zero.loss_recovered, 0.0);
        assert_eq!(zero.ce_spliced, zero.ce_zero_ablation);
        // A half-way reconstruction: the formula on the three measured means.
        let half = base
            .downstream(&lm, &ctx, 1, 3, &mut |x: &Matrix| -> Result<Matrix> {
                let mut y = x.clone();
                y.as_mut_slice().iter_mut().for_each(|v| *v *= 0.5);
                Ok(y)
            })
            .unwrap();
        let want =
            (half.ce_zero_ablation - half.ce_spliced) / (half.ce_zero_ablation - half.ce_clean);
        assert_eq!(half.loss_recovered, want);
        assert_eq!(half.ce_increase, half.ce_spliced - half.ce_clean);
    }

    #[test]
    fn positions_before_first_are_left_untouched_and_not_averaged() {
        let (_dir, lm, ctx) = tiny();
        // Mean over predictions at positions ≥ 3 of the clean per-token NLL.
        let tokens: Vec<u32> = ctx.concat();
        let nll = lm.model.token_nll(&tokens, ctx.len(), 12).unwrap();
        let mut want = 0.0f64;
        for i in 0..ctx.len() {
            for t in 3..11 {
                want += nll[i * 11 + t] as f64;
            }
        }
        want /= (ctx.len() * 8) as f64;
        let got = mean_nll(&lm, &ctx, 3, 5, None).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} {want}");
        // The splice sees exactly the rows from position 3 on.
        let mut seen = 0;
        let mut f = |x: &Matrix| -> Result<Matrix> {
            seen += x.rows();
            Ok(x.clone())
        };
        mean_nll(&lm, &ctx, 3, 5, Some(&mut f)).unwrap();
        assert_eq!(seen, ctx.len() * 9);
    }
}
