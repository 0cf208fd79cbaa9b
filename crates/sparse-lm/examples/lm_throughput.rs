//! Throughput of `hook_activations` on real text: batch × seq tokens of State of
//! the Union addresses through the default model up to one hook, after a
//! warm-up, timed over a few distinct batches.
//!
//! ```text
//! cargo run --release -p sparse-lm --example lm_throughput -- [HOOK] [BATCH] [SEQ] [REPS]
//! ```
//! Defaults: `blocks.15.hook_resid_post 8 128 4`. Needs `scripts/fetch-assets`.

use sparse_lm::{assets, HookPoint, LanguageModel, LmTokenizer};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let hook: HookPoint = args
        .first()
        .map_or("blocks.15.hook_resid_post", String::as_str)
        .parse()?;
    let num = |i: usize, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args.get(i).map_or(Ok(default), |s| s.parse())?)
    };
    let (batch, seq, reps) = (num(1, 8)?, num(2, 128)?, num(3, 4)?);

    let path = assets::default_model_path();
    let t0 = Instant::now();
    let model = LanguageModel::load(&path)?;
    let load_s = t0.elapsed().as_secs_f64();
    let tok = LmTokenizer::from_gguf(&path)?;

    // Enough distinct text for (reps + 1) batches.
    let dir = assets::text_dir("sotu");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    let need = (reps + 1) * batch * seq;
    let mut ids = Vec::with_capacity(need);
    for f in files.iter().rev() {
        ids.extend(tok.encode(&std::fs::read_to_string(f)?)?);
        if ids.len() >= need {
            break;
        }
    }
    if ids.len() < need {
        return Err(format!("only {} tokens of text, need {need}", ids.len()).into());
    }
    let chunk = |i: usize| &ids[i * batch * seq..(i + 1) * batch * seq];

    model.hook_activations(chunk(0), batch, seq, &[hook])?; // warm-up
    let (t, cpu0) = (Instant::now(), cpu_seconds());
    for r in 1..=reps {
        let acts = model.hook_activations(chunk(r), batch, seq, &[hook])?;
        std::hint::black_box(acts);
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_seconds().map_or(f64::NAN, |c| c - cpu0.unwrap_or(0.0));
    let tokens = reps * batch * seq;
    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "{hook}: {batch}x{seq} x {reps} batches, {:.0} tok/s ({:.3} s/batch), {:.0} tok per CPU-second; load {load_s:.2} s; threads {}; loadavg {}",
        tokens as f64 / secs,
        secs / reps as f64,
        tokens as f64 / cpu,
        rayon::current_num_threads(),
        load_avg.trim()
    );
    Ok(())
}

/// User + system CPU time of this process (Linux), to compare runs on a shared machine.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
