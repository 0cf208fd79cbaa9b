//! Downstream loss of an SAE spliced into its language model (`evaluate
//! --lm`), and `compare-encoders`: the SAE's own encoder against per-sample
//! inference (FISTA, OMP, MP, SAE + FISTA refinement) on its decoder.
//!
//! Conventions, shared by both commands:
//!
//! - the language model is the store's: `--lm FILE`, else
//!   `sparse_lm::assets::default_model_path()` when its sha256 equals the store
//!   manifest's `model.sha256` (a `--lm` file with another sha256 is an error);
//! - held-out contexts are those of the chosen split, a context's split being
//!   its document's ([`Splits::of_document`]), in store order;
//! - the checkpoint's normalisation scale `s` is applied: the model codes
//!   `s·x`, its reconstruction is divided by `s`;
//! - splicing replaces the hook activation at positions
//!   `first_position..context_len` only; the positions before
//!   `first_position` (the attention sink, never stored nor trained on) keep
//!   their clean values. Zero-ablation zeros the same positions. Cross-entropies
//!   are means of the next-token NLL over the predictions made at positions
//!   `first_position..context_len − 1` (the earlier predictions are the same
//!   in all three runs);
//! - per-sample solvers code `s·x − b_dec` with the decoder `D` and decode
//!   `Z·D + b_dec` (as the SAE decodes its own codes).

use anyhow::{anyhow, bail, Context, Result};
use sparse_core::checkpoint::{Checkpoint, Model};
use sparse_core::encoders::fista::{Fista, FistaConfig};
use sparse_core::encoders::pursuit::{MatchingPursuit, Omp};
use sparse_core::encoders::Encoder;
use sparse_core::metrics::held_out::{DownstreamLoss, HeldOutAccumulator, HeldOutMetrics};
use sparse_core::{linalg, Matrix};
use sparse_lm::{HookPoint, LanguageModel, LmError};
use sparse_store::{ActivationStore, Split, Splits};
use sparse_train::EvalOptions;
use std::path::{Path, PathBuf};

/// What [`resolve_lm`] found.
pub struct ResolvedLm {
    pub model: LanguageModel,
    pub path: PathBuf,
    pub hook: HookPoint,
}

/// The store's language model: `lm` (its sha256 must be the store's), else the
/// default asset when present with the store's sha256, else `None`.
pub fn resolve_lm(store: &ActivationStore, lm: Option<&Path>) -> Result<Option<ResolvedLm>> {
    let want = &store.spec().model;
    let path = match lm {
        Some(p) => {
            let got = sparse_core::checkpoint::sha256_file(p)
                .with_context(|| format!("--lm {}", p.display()))?;
            if got != want.sha256 {
                bail!(
                    "--lm {}: sha256 {got} differs from the store's model {} (sha256 {})",
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

/// Up to `max` global context indices of `split`, in store order.
pub fn split_contexts(
    store: &ActivationStore,
    splits: &Splits,
    split: Split,
    max: usize,
) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for i in 0..store.num_shards() {
        if out.len() >= max {
            break;
        }
        let first = store.shard_context_range(i).start;
        for (c, d) in store.shard_doc_index(i)?.into_iter().enumerate() {
            if splits.of_document(d) == split && out.len() < max {
                out.push(first + c as u64);
            }
        }
    }
    Ok(out)
}

/// The stored activations (`contexts.len()·rows_per_context × d_model`, in
/// the order given) and token ids of `contexts` (ascending).
pub fn context_data(store: &ActivationStore, contexts: &[u64]) -> Result<(Matrix, Vec<Vec<u32>>)> {
    let d = store.d_model();
    let mut rows = Vec::with_capacity(contexts.len() * store.rows_per_context() * d);
    let mut tokens = Vec::with_capacity(contexts.len());
    let mut cached: Option<sparse_store::Shard> = None;
    for &c in contexts {
        let s = (0..store.num_shards())
            .find(|&i| store.shard_context_range(i).contains(&c))
            .ok_or_else(|| anyhow!("context {c} is not in the store"))?;
        if cached.as_ref().is_none_or(|sh| sh.index != s) {
            cached = Some(store.read_shard(s)?);
        }
        let sh = cached.as_ref().expect("just read");
        let local = (c - sh.first_context) as usize;
        rows.extend_from_slice(sh.context_activations(local).as_slice());
        tokens.push(sh.context_tokens(local).to_vec());
    }
    let n = rows.len() / d.max(1);
    Ok((Matrix::from_vec(n, d, rows)?, tokens))
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
    pub clean: f64,
    pub zero: f64,
}

impl Baselines {
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

/// The checkpoint's model if it is a ReLU (or MLP-encoder) or TopK SAE.
pub fn require_sae(ckpt: &Checkpoint, path: &Path) -> Result<()> {
    match ckpt.model {
        Model::Autoencoder(_) | Model::TopK(_) => Ok(()),
        _ => bail!(
            "{}: a {} checkpoint, not an SAE (sae, topk or batchtopk)",
            path.display(),
            ckpt.method
        ),
    }
}

/// FLOPs of the SAE's encoder on `n` samples.
fn sae_encode_flops(model: &Model, n: usize) -> f64 {
    match model {
        Model::Autoencoder(m) => m.encode_flops(n),
        Model::TopK(m) => m.encode_flops(n),
        _ => f64::NAN,
    }
}

/// One encoder of the comparison, on the SAE's dictionary.
pub enum Method {
    /// The SAE's own encoder.
    Sae,
    /// Per-sample FISTA (non-negative lasso) from zero.
    Fista(Fista),
    /// Orthogonal matching pursuit, `k` atoms, non-negative.
    Omp(Omp),
    /// Matching pursuit, `k` steps, non-negative.
    Mp(MatchingPursuit),
    /// FISTA warm-started at the SAE's codes.
    SaeFista(Fista),
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Method::Sae => "sae".into(),
            Method::Fista(_) => "fista".into(),
            Method::Omp(o) => format!("omp-k{}", o.k),
            Method::Mp(m) => format!("mp-k{}", m.k),
            Method::SaeFista(_) => "sae+fista".into(),
        }
    }

    /// Codes of normalised activations `xn (n × M)` and their FLOPs.
    pub fn encode(&self, model: &Model, b_dec: &[f32], xn: &Matrix) -> Result<(Matrix, f64)> {
        let d = model.dictionary();
        let centred = || {
            let mut c = xn.clone();
            for row in 0..c.rows() {
                c.row_mut(row)
                    .iter_mut()
                    .zip(b_dec)
                    .for_each(|(v, b)| *v -= b);
            }
            c
        };
        Ok(match self {
            Method::Sae => (model.encode(xn)?, sae_encode_flops(model, xn.rows())),
            Method::Fista(f) => {
                let e = f.encode(&centred(), d)?;
                (e.codes, e.flops)
            }
            Method::Omp(o) => {
                let e = o.encode(&centred(), d)?;
                (e.codes, e.flops)
            }
            Method::Mp(m) => {
                let e = m.encode(&centred(), d)?;
                (e.codes, e.flops)
            }
            Method::SaeFista(f) => {
                let z0 = model.encode(xn)?;
                let e = f.solve(&centred(), d, Some(&z0), None)?;
                (e.codes, e.flops + sae_encode_flops(model, xn.rows()))
            }
        })
    }

    /// Codes and reconstruction (raw scale) of raw activations `x`.
    pub fn reconstruct(
        &self,
        model: &Model,
        b_dec: &[f32],
        scale: f32,
        x: &Matrix,
    ) -> Result<(Matrix, Matrix, f64)> {
        let mut xn = x.clone();
        xn.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
        let (z, flops) = self.encode(model, b_dec, &xn)?;
        let mut x_hat = sparse_train::models::decode(model, &z)?;
        x_hat.as_mut_slice().iter_mut().for_each(|v| *v /= scale);
        Ok((z, x_hat, flops))
    }
}

fn l0(z: &Matrix) -> f64 {
    sparse_core::metrics::l0(z).mean_count
}

/// λ of a non-negative FISTA whose mean L0 on `xc` (centred, normalised
/// rows) is within 5% of `target`: geometric bisection on
/// `[λ_max·1e−5, λ_max]`, `λ_max = max_{i,j} ⟨x_i, d_j⟩` (above it every code is 0).
pub fn fista_lambda_for_l0(
    xc: &Matrix,
    dictionary: &Matrix,
    target: f64,
    max_iter: usize,
    steps: usize,
) -> Result<(f32, f64)> {
    let dots = linalg::matmul_new(xc, linalg::Op::N, dictionary, linalg::Op::T);
    let lambda_max = dots
        .as_slice()
        .iter()
        .copied()
        .fold(0.0f32, f32::max)
        .max(1e-12);
    let (mut lo, mut hi) = ((lambda_max as f64) * 1e-5, lambda_max as f64);
    let mut best = (lambda_max, 0.0f64, f64::INFINITY);
    for _ in 0..steps {
        let lam = (lo * hi).sqrt();
        let f = Fista::new(FistaConfig {
            lambda: lam as f32,
            max_iter,
            tol: 1e-4,
            ..FistaConfig::default()
        })?;
        let got = l0(&f.encode(xc, dictionary)?.codes);
        let err = (got - target).abs();
        if err < best.2 {
            best = (lam as f32, got, err);
        }
        if err <= 0.05 * target {
            break;
        }
        if got > target {
            lo = lam;
        } else {
            hi = lam;
        }
    }
    Ok((best.0, best.1))
}

/// A row of the comparison.
#[derive(serde::Serialize)]
pub struct EncoderRow {
    pub encoder: String,
    pub l0: f64,
    pub mse: f64,
    pub normalized_mse: f64,
    pub explained_variance: f64,
    pub flops_per_token: f64,
    pub downstream: Option<DownstreamLoss>,
}

/// Held-out metrics of `method` on the raw activations `x` (codes in batches of `batch_rows`).
pub fn metrics_of(
    method: &Method,
    model: &Model,
    b_dec: &[f32],
    scale: f32,
    x: &Matrix,
    batch_rows: usize,
) -> Result<(HeldOutMetrics, f64)> {
    let (n_latents, dim) = model.dictionary().shape();
    let mut acc = HeldOutAccumulator::new(dim, n_latents);
    let mut flops = 0.0;
    let mut start = 0;
    while start < x.rows() {
        let end = (start + batch_rows).min(x.rows());
        let raw = x.select_rows(start..end);
        let (z, x_hat, f) = method.reconstruct(model, b_dec, scale, &raw)?;
        acc.update(&raw, &x_hat, &z)?;
        flops += f;
        start = end;
    }
    Ok((acc.finish()?, flops / x.rows().max(1) as f64))
}

/// Markdown table of the rows.
pub fn markdown(rows: &[EncoderRow]) -> String {
    let mut s = String::from(
        "| encoder | L0 | normalised MSE | explained variance | CE increase | loss recovered | FLOPs/token |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (ce, rec) = match &r.downstream {
            Some(d) => (
                format!("{:.4}", d.ce_increase),
                format!("{:.4}", d.loss_recovered),
            ),
            None => ("–".into(), "–".into()),
        };
        s.push_str(&format!(
            "| {} | {:.2} | {:.4} | {:.4} | {ce} | {rec} | {:.3e} |\n",
            r.encoder, r.l0, r.normalized_mse, r.explained_variance, r.flops_per_token
        ));
    }
    s
}

/// Arguments of `compare-encoders`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// SAE checkpoint folder (ReLU / TopK, written by `train`).
    #[arg(long)]
    model: PathBuf,
    /// Activation store folder.
    #[arg(long)]
    store: PathBuf,
    /// Split to evaluate on (FISTA's λ is chosen on the validation split).
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Held-out tokens (whole contexts, rounded up).
    #[arg(long, default_value_t = 4096)]
    tokens: u64,
    /// Validation tokens for choosing FISTA's λ (whole contexts, rounded up).
    #[arg(long, default_value_t = 1024)]
    validation_tokens: u64,
    /// FISTA iteration cap (tolerance 1e-4).
    #[arg(long, default_value_t = 300)]
    fista_iters: usize,
    /// Bisection steps for FISTA's λ.
    #[arg(long, default_value_t = 14)]
    lambda_steps: usize,
    /// Language model for the downstream loss (default: the fetched asset when its sha256 is the store's).
    #[arg(long)]
    lm: Option<PathBuf>,
    /// Contexts per language-model forward pass.
    #[arg(long, default_value_t = 8)]
    lm_batch: usize,
    /// Also write the table as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Held-out fractions `VALIDATION,TEST` (default: those the checkpoint was trained with, else 0.05,0.05).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    fractions: Option<Vec<f64>>,
}

/// The partition: `fractions`, else the checkpoint's, else 5%/5%.
pub fn resolve_splits(ckpt: &Checkpoint, fractions: Option<&[f64]>) -> Result<Splits> {
    Ok(match fractions {
        Some([v, t]) => Splits::new(*v, *t)?,
        _ => match sparse_train::stored_run(ckpt) {
            Some(r) => r.splits,
            None => Splits::new(0.05, 0.05)?,
        },
    })
}

fn contexts_for(store: &ActivationStore, tokens: u64) -> usize {
    let rpc = store.rows_per_context().max(1) as u64;
    tokens.div_ceil(rpc).max(1) as usize
}

/// `compare-encoders`: prints one JSON object (and writes `--markdown`).
pub fn compare_encoders(a: CompareArgs) -> Result<()> {
    let ckpt = sparse_core::checkpoint::load(&a.model)
        .with_context(|| format!("loading the checkpoint {}", a.model.display()))?;
    require_sae(&ckpt, &a.model)?;
    let store = ActivationStore::open(&a.store)
        .with_context(|| format!("opening the store {}", a.store.display()))?;
    let model = &ckpt.model;
    let (n_latents, dim) = model.dictionary().shape();
    if dim != store.d_model() {
        bail!(
            "{}: d_model {} differs from the checkpoint's {dim} ({})",
            a.store.display(),
            store.d_model(),
            a.model.display()
        );
    }
    let split: Split = a.split.into();
    if split == Split::Validation {
        bail!("--split validation: FISTA's λ is chosen on the validation split; evaluate on test or train");
    }
    let lm = resolve_lm(&store, a.lm.as_deref())?;
    let splits = resolve_splits(&ckpt, a.fractions.as_deref())?;
    let scale = sparse_train::stored_run(&ckpt).map_or(1.0, |r| r.scale);
    let b_dec = sparse_train::models::decoder_bias(model);
    let first = store.spec().first_position;

    // Validation sample: SAE L0 → FISTA's λ and the pursuit k.
    let vids = split_contexts(
        &store,
        &splits,
        Split::Validation,
        contexts_for(&store, a.validation_tokens),
    )?;
    if vids.is_empty() {
        bail!(
            "{}: the validation split holds no contexts (needed to choose FISTA's λ); try --fractions",
            a.store.display()
        );
    }
    let (xv, _) = context_data(&store, &vids)?;
    let mut xvn = xv.clone();
    xvn.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
    let sae_l0_val = l0(&model.encode(&xvn)?);
    let mut xvc = xvn;
    for r in 0..xvc.rows() {
        xvc.row_mut(r)
            .iter_mut()
            .zip(&b_dec)
            .for_each(|(v, b)| *v -= b);
    }
    let target = sae_l0_val.max(1.0);
    let (lambda, fista_l0_val) = fista_lambda_for_l0(
        &xvc,
        model.dictionary(),
        target,
        a.fista_iters,
        a.lambda_steps,
    )?;
    let k = (sae_l0_val.round() as usize).clamp(1, n_latents);
    let fista = || {
        Fista::new(FistaConfig {
            lambda,
            max_iter: a.fista_iters,
            tol: 1e-4,
            ..FistaConfig::default()
        })
    };
    let methods = vec![
        Method::Sae,
        Method::Fista(fista()?),
        Method::Omp(Omp::new(k, None, true)?),
        Method::Mp(MatchingPursuit::new(k, true)?),
        Method::SaeFista(fista()?),
    ];

    // Evaluation tokens.
    let ids = split_contexts(&store, &splits, split, contexts_for(&store, a.tokens))?;
    if ids.is_empty() {
        bail!(
            "{}: the {split:?} split holds no contexts",
            a.store.display()
        );
    }
    let (x, tokens) = context_data(&store, &ids)?;
    let base = match &lm {
        Some(lm) => Some(Baselines::new(lm, &tokens, first, a.lm_batch)?),
        None => None,
    };
    let mut rows = Vec::new();
    for m in &methods {
        let (metrics, flops) = metrics_of(m, model, &b_dec, scale, &x, 1024)
            .with_context(|| format!("encoder {}", m.name()))?;
        let downstream = match (&lm, &base) {
            (Some(lm), Some(base)) => Some(base.downstream(
                lm,
                &tokens,
                first,
                a.lm_batch,
                &mut |x: &Matrix| -> Result<Matrix> {
                    Ok(m.reconstruct(model, &b_dec, scale, x)?.1)
                },
            )?),
            _ => None,
        };
        rows.push(EncoderRow {
            encoder: m.name(),
            l0: metrics.l0,
            mse: metrics.mse,
            normalized_mse: metrics.normalized_mse,
            explained_variance: metrics.explained_variance,
            flops_per_token: flops,
            downstream,
        });
    }
    let out = serde_json::json!({
        "model": a.model,
        "method": ckpt.method,
        "step": ckpt.step,
        "store": a.store,
        "split": split,
        "contexts": ids.len(),
        "tokens": x.rows(),
        "scale": scale,
        "first_position": first,
        "lm": lm.as_ref().map(|l| &l.path),
        "ce_clean": base.as_ref().map(|b| b.clean),
        "ce_zero_ablation": base.as_ref().map(|b| b.zero),
        "validation_tokens": xv.rows(),
        "sae_validation_l0": sae_l0_val,
        "fista_lambda": lambda,
        "fista_validation_l0": fista_l0_val,
        "pursuit_k": k,
        "encoders": rows,
        "notes": "per-sample solvers code s·x − b_dec on the SAE's decoder and decode Z·D + b_dec, divided by s; FISTA is non-negative, λ bisected on the validation split to match the SAE's L0 there, k = round(that L0); sae+fista = FISTA warm-started at the SAE's codes (FLOPs include the SAE pass); splicing leaves positions < first_position (attention sink) untouched and CE averages the predictions at positions ≥ first_position",
    });
    if let Some(p) = &a.markdown {
        let text = format!(
            "Encoders on the dictionary of `{}` ({} held-out tokens of {}, split {:?}; FISTA λ = {lambda:.4}, k = {k})\n\n{}",
            a.model.display(),
            x.rows(),
            a.store.display(),
            split,
            markdown(&rows)
        );
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The downstream loss of `ckpt` on `contexts` held-out contexts of `split`
/// (`None` when no language model is available).
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
    let scale = sparse_train::stored_run(ckpt).map_or(1.0, |r| r.scale);
    let model = &ckpt.model;
    let base = Baselines::new(lm, &tokens, first, lm_batch)?;
    let d = base.downstream(
        lm,
        &tokens,
        first,
        lm_batch,
        &mut |x: &Matrix| -> Result<Matrix> {
            let mut xn = x.clone();
            xn.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
            let z = model.encode(&xn)?;
            let mut x_hat = sparse_train::models::decode(model, &z)?;
            x_hat.as_mut_slice().iter_mut().for_each(|v| *v /= scale);
            Ok(x_hat)
        },
    )?;
    Ok((d, ids.len()))
}

/// Arguments of `evaluate`.
#[derive(clap::Args, Debug)]
pub struct EvaluateArgs {
    /// Checkpoint folder (written by `train`).
    #[arg(long)]
    model: PathBuf,
    /// Activation store folder.
    #[arg(long)]
    store: PathBuf,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value_t = SplitArg::Test)]
    split: SplitArg,
    /// Rows per batch.
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
    /// Evaluate at most this many tokens.
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Held-out fractions `VALIDATION,TEST` (default: those the checkpoint was trained with, else 0.05,0.05).
    #[arg(long, value_delimiter = ',', num_args = 2)]
    fractions: Option<Vec<f64>>,
    /// Language model for the downstream loss (default: the fetched asset, when its sha256 is the store's; a file with another sha256 is an error).
    #[arg(long)]
    lm: Option<PathBuf>,
    /// Held-out contexts of the split for the downstream loss (0: skip it).
    #[arg(long, default_value_t = 32)]
    contexts: usize,
    /// Contexts per language-model forward pass.
    #[arg(long, default_value_t = 8)]
    lm_batch: usize,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum SplitArg {
    Train,
    Validation,
    Test,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Validation => Split::Validation,
            SplitArg::Test => Split::Test,
        }
    }
}

/// Prints the held-out metrics of a checkpoint as JSON.
pub fn evaluate(a: EvaluateArgs) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let ckpt = sparse_core::checkpoint::load(&a.model)
        .with_context(|| format!("loading the checkpoint {}", a.model.display()))?;
    let store = ActivationStore::open(&a.store)
        .with_context(|| format!("opening the store {}", a.store.display()))?;
    let splits = match a.fractions.as_deref() {
        Some([v, t]) => Some(Splits::new(*v, *t)?),
        _ => None,
    };
    let split: Split = a.split.into();
    let lm = if a.contexts > 0 {
        resolve_lm(&store, a.lm.as_deref())?
    } else {
        None
    };
    let opts = EvalOptions {
        split,
        splits,
        batch_size: a.batch_size,
        max_tokens: a.max_tokens,
    };
    let mut metrics = sparse_train::evaluate(&ckpt, &store, opts)
        .with_context(|| format!("evaluating {} on {}", a.model.display(), a.store.display()))?;
    let mut downstream_contexts = 0;
    if let Some(lm) = &lm {
        let splits = resolve_splits(&ckpt, a.fractions.as_deref())?;
        let (d, n) = evaluate_downstream(&ckpt, &store, lm, &splits, split, a.contexts, a.lm_batch)
            .with_context(|| {
                format!(
                    "downstream loss of {} with {}",
                    a.model.display(),
                    lm.path.display()
                )
            })?;
        metrics.downstream = Some(d);
        downstream_contexts = n;
    }
    let run = sparse_train::stored_run(&ckpt);
    let mut out = serde_json::to_value(&metrics)?;
    let obj = out.as_object_mut().expect("an object");
    obj.insert("model".into(), serde_json::json!(a.model));
    obj.insert("method".into(), serde_json::json!(ckpt.method));
    obj.insert("step".into(), serde_json::json!(ckpt.step));
    obj.insert("store".into(), serde_json::json!(a.store));
    obj.insert("split".into(), serde_json::json!(split));
    obj.insert(
        "scale".into(),
        serde_json::json!(run.as_ref().map_or(1.0, |r| r.scale)),
    );
    obj.insert("lm".into(), serde_json::json!(lm.as_ref().map(|l| &l.path)));
    obj.insert(
        "downstream_contexts".into(),
        serde_json::json!(downstream_contexts),
    );
    if lm.is_some() {
        obj.insert(
            "downstream_note".into(),
            serde_json::json!("hook activations at positions >= first_position replaced (the attention sink before it untouched); mean next-token CE over the predictions at positions >= first_position; zero-ablation zeros the same positions"),
        );
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
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
