//! `sparse-infer autointerp`: explain and score latents from feature records
//! with an OpenAI-compatible judge or a local GGUF model (`sparse-autointerp`).

use anyhow::{bail, Context, Result};
use sparse_autointerp::client::{HttpConfig, HttpJudge};
use sparse_autointerp::examples::ExampleOptions;
use sparse_autointerp::judge::Judge;
use sparse_autointerp::local::LocalJudge;
use sparse_autointerp::pipeline::{markdown, read_records, run, PipelineOptions};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `autointerp`.
#[derive(clap::Args, Debug)]
pub struct AutointerpArgs {
    /// A `dashboards` output folder (every encoder in it), or a folder of feature records (`<index>.json`, any encoders).
    #[arg(long)]
    records: PathBuf,
    /// Output folder: results.jsonl (resumable), summary.json, cache/.
    #[arg(long)]
    out: PathBuf,
    /// OpenAI-compatible base URL (e.g. http://localhost:8000/v1); omit with --local-gguf.
    #[arg(long)]
    endpoint: Option<String>,
    /// The judge model name sent to the endpoint.
    #[arg(long, default_value = "gpt-4o-mini")]
    judge: String,
    /// Environment variable with the API key ("" for servers without keys).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// Run a local GGUF chat model instead of an endpoint (default model: the fetched SmolLM2-135M-Instruct).
    #[arg(long, num_args = 0..=1)]
    local_gguf: Option<Option<PathBuf>>,
    /// Features scored per encoder.
    #[arg(long)]
    features: Option<usize>,
    /// Features in flight at once [default: 4 for an endpoint; for a local
    /// model the number of threads, as each of its passes over one prompt runs on one].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Retries on 429 / 5xx / timeouts.
    #[arg(long, default_value_t = 5)]
    retries: usize,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    /// Held-out positives per scorer.
    #[arg(long, default_value_t = 10)]
    score_positives: usize,
    /// Seed of negatives, fuzzing marks and the bootstrap.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the table as Markdown here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// `autointerp`: prints the summary JSON (and writes `--markdown`).
pub fn autointerp(a: AutointerpArgs) -> Result<()> {
    let records = read_records(&a.records)?;
    let judge: Box<dyn Judge> = match (&a.local_gguf, &a.endpoint) {
        (Some(_), Some(_)) => bail!("give either --endpoint or --local-gguf, not both"),
        (None, None) => bail!("no judge: give --endpoint URL or --local-gguf [FILE]"),
        (Some(p), None) => {
            let p = p
                .clone()
                .unwrap_or_else(sparse_lm::assets::default_model_path);
            Box::new(LocalJudge::load(&p)?)
        }
        (None, Some(url)) => {
            let mut cfg = HttpConfig::new(url, &a.judge);
            cfg.api_key_env = (!a.api_key_env.is_empty()).then(|| a.api_key_env.clone());
            cfg.cache_dir = Some(a.out.join("cache"));
            cfg.retries = a.retries;
            cfg.timeout = Duration::from_secs(a.timeout_s);
            Box::new(HttpJudge::new(cfg)?)
        }
    };
    let opts = PipelineOptions {
        examples: ExampleOptions {
            score_positives: a.score_positives,
            ..ExampleOptions::default()
        },
        max_features: a.features,
        concurrency: a.concurrency.unwrap_or(if a.local_gguf.is_some() {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            4
        }),
        seed: a.seed,
        resamples: 1000,
    };
    let summary = run(&records, judge.as_ref(), &a.out, &opts)
        .with_context(|| format!("autointerp into {}", a.out.display()))?;
    if let Some(want) = a.features {
        for (encoder, e) in &summary.encoders {
            if e.features < want {
                eprintln!(
                    "warning: encoder {encoder}: only {} of the {want} requested features have \
                     held-out examples in {}; record more latents (dashboards --features N)",
                    e.features,
                    a.records.display()
                );
            }
        }
    }
    if let Some(p) = &a.markdown {
        std::fs::write(p, markdown(&summary))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}
