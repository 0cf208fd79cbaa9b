//! `sparse-infer harvest`: language-model activations at one hook point into an
//! activation store (sparse_lm::harvest does the work; this parses and prints).

use anyhow::{bail, Context, Result};
use sparse_lm::harvest::{harvest, HarvestConfig};
use sparse_lm::{assets, HookPoint, LanguageModel, LmTokenizer};
use sparse_store::StoreDtype;
use std::path::PathBuf;

/// Storage precision of harvested activations.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum DtypeArg {
    /// 32-bit floats (exact).
    F32,
    /// IEEE half precision (half the disk; refuses values beyond ±65504).
    F16,
    /// bfloat16 (half the disk, f32's range, 8 bits of mantissa).
    Bf16,
}

/// Arguments of `sparse-infer harvest`.
#[derive(clap::Args, Debug)]
pub struct HarvestArgs {
    /// The language model (a Llama-architecture GGUF); default: the SmolLM2-135M file that scripts/fetch-assets installs.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Text files or folders (plain .txt, .json sentence arrays, Brown word/tag files); default: the State of the Union and Moby-Dick corpora from scripts/fetch-assets.
    #[arg(long, num_args = 1..)]
    text: Vec<PathBuf>,
    /// Block of the hook (0-based); ignored when --hook is a full name like blocks.15.hook_resid_post.
    #[arg(long, default_value_t = 15)]
    layer: usize,
    /// Hook kind (resid_pre, resid_post, attn_out, mlp_out) or a full TransformerLens name.
    #[arg(long, default_value = "resid_post")]
    hook: String,
    /// Tokens per context.
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// Stop once the store holds this many activations (stored tokens).
    #[arg(long, default_value_t = 1_000_000)]
    tokens: u64,
    /// First stored position of each context (1 drops position 0, an attention sink ~100× the others' norm).
    #[arg(long, default_value_t = 1)]
    first_position: usize,
    /// Contexts per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Storage precision.
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// Contexts per shard file (each shard is committed atomically).
    #[arg(long, default_value_t = 256)]
    shard_contexts: usize,
    /// The store folder (created, or resumed if a harvest with the same settings was interrupted).
    #[arg(long)]
    out: PathBuf,
}

/// `blocks.{L}.hook_{kind}` from `--layer` and a short `--hook`, or the full name as given.
fn hook_name(layer: usize, hook: &str) -> String {
    if hook.starts_with("blocks.") {
        hook.to_string()
    } else {
        format!("blocks.{layer}.hook_{}", hook.trim_start_matches("hook_"))
    }
}

/// Runs `sparse-infer harvest`.
pub fn harvest_cmd(a: HarvestArgs) -> Result<()> {
    let model_path = a.model.clone().unwrap_or_else(assets::default_model_path);
    if !model_path.exists() {
        bail!(
            "{}: model file not found (run scripts/fetch-assets, or pass --model FILE.gguf)",
            model_path.display()
        );
    }
    let text = if a.text.is_empty() {
        let defaults: Vec<PathBuf> = ["sotu", "moby-dick"]
            .iter()
            .map(|n| assets::text_dir(n))
            .collect();
        if let Some(missing) = defaults.iter().find(|p| !p.exists()) {
            bail!(
                "{}: default text not found (run scripts/fetch-assets, or pass --text FILES)",
                missing.display()
            );
        }
        defaults
    } else {
        a.text.clone()
    };
    let model = LanguageModel::load(&model_path)?;
    let tokenizer = LmTokenizer::from_gguf(&model_path)?;
    let hook = HookPoint::parse_for(&hook_name(a.layer, &a.hook), model.info().n_layers)?;
    let config = HarvestConfig {
        hook,
        context: a.context,
        first_position: a.first_position,
        batch: a.batch,
        max_rows: a.tokens,
        dtype: match a.dtype {
            DtypeArg::F32 => StoreDtype::F32,
            DtypeArg::F16 => StoreDtype::F16,
            DtypeArg::Bf16 => StoreDtype::BF16,
        },
        shard_contexts: a.shard_contexts,
    };
    let bar = indicatif::ProgressBar::new(a.tokens).with_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} tokens, {msg}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    let summary = harvest(&model, &tokenizer, &text, &a.out, &config, &mut |p| {
        bar.set_length(p.max_rows);
        bar.set_position(p.rows);
        bar.set_message(format!(
            "{:.0} model tok/s",
            p.model_tokens as f64 / p.seconds.max(1e-9)
        ));
    })
    .with_context(|| format!("harvest into {}", a.out.display()))?;
    bar.finish_and_clear();
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
