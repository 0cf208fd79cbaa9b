//! A judge that runs a local GGUF chat model through `sparse_lm`.
//!
//! Prompts use the ChatML format of SmolLM2-Instruct, which the loader checks
//! against the file's `tokenizer.chat_template`: each message is
//! `<|im_start|>{role}\n{content}<|im_end|>\n`, and the reply follows
//! `<|im_start|>assistant\n`. The control tokens are inserted by id (the
//! text tokenizer would split them into pieces).
//!
//! - **Verdicts** need no generation: one forward pass over the prompt, and
//!   `P(yes) = softmax(logit("Yes"), logit("No"))[0]` at the last position;
//!   the answer is yes when that exceeds ½ (so AUROC is available).
//! - **Explanations**: the reply pre-filled with `Explanation:`, then greedy decoding of at most `explain_max_new` tokens
//!   (keys and values are cached: the prompt is run once, then one position
//!   per new token).

use crate::judge::{Judge, Verdict};
use crate::prompts::Message;
use anyhow::{anyhow, bail, Context, Result};
use sparse_lm::{LanguageModel, LmTokenizer};
use std::path::{Path, PathBuf};

/// The local judge.
pub struct LocalJudge {
    path: PathBuf,
    model: LanguageModel,
    tok: LmTokenizer,
    im_start: u32,
    im_end: u32,
    yes: u32,
    no: u32,
    /// Tokens the explainer may generate.
    pub explain_max_new: usize,
}

/// `tokenizer.chat_template` of a GGUF file, if it has one.
pub fn chat_template(path: &Path) -> Result<Option<String>> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut f)
        .map_err(|e| anyhow!("{}: not a readable GGUF file: {e}", path.display()))?;
    Ok(match content.metadata.get("tokenizer.chat_template") {
        Some(candle_core::quantized::gguf_file::Value::String(s)) => Some(s.clone()),
        _ => None,
    })
}

impl LocalJudge {
    /// Loads the model and tokenizer; errors when the file's chat template is
    /// missing or not ChatML, or the vocabulary lacks the control tokens.
    pub fn load(path: &Path) -> Result<Self> {
        let template = chat_template(path)?.ok_or_else(|| {
            anyhow!(
                "{}: no tokenizer.chat_template; the local judge needs a ChatML chat model",
                path.display()
            )
        })?;
        if !(template.contains("<|im_start|>") && template.contains("<|im_end|>")) {
            bail!(
                "{}: the chat template is not ChatML (<|im_start|> … <|im_end|>)",
                path.display()
            );
        }
        let tok = LmTokenizer::from_gguf(path)
            .with_context(|| format!("tokenizer of {}", path.display()))?;
        let id = |t: &str| {
            tok.inner()
                .token_to_id(t)
                .ok_or_else(|| anyhow!("{}: the vocabulary has no {t} token", path.display()))
        };
        let (im_start, im_end) = (id("<|im_start|>")?, id("<|im_end|>")?);
        let first = |w: &str| -> Result<u32> {
            tok.encode(w)?
                .first()
                .copied()
                .ok_or_else(|| anyhow!("{}: {w:?} encodes to no token", path.display()))
        };
        let (yes, no) = (first("Yes")?, first("No")?);
        let model =
            LanguageModel::load(path).with_context(|| format!("loading {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            model,
            tok,
            im_start,
            im_end,
            yes,
            no,
            explain_max_new: 16,
        })
    }

    /// Token ids of `messages` in ChatML, ending with the assistant header.
    pub fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for m in messages {
            ids.push(self.im_start);
            ids.extend(self.tok.encode(&format!("{}\n{}", m.role, m.content))?);
            ids.push(self.im_end);
            ids.extend(self.tok.encode("\n")?);
        }
        ids.push(self.im_start);
        ids.extend(self.tok.encode("assistant\n")?);
        let max = self.model.info().context_length;
        if ids.len() >= max {
            bail!("prompt of {} tokens exceeds the model's context of {max}; shorten the example window", ids.len());
        }
        Ok(ids)
    }
}

impl Judge for LocalJudge {
    fn name(&self) -> String {
        format!(
            "local:{}",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("model")
        )
    }

    fn explain(&self, messages: &[Message]) -> Result<String> {
        let ids = self.prompt_ids(messages)?;
        let max_new = self
            .explain_max_new
            .min(self.model.info().context_length - ids.len());
        let mut out = self.model.generate_greedy(&ids, max_new)?;
        if let Some(p) = out.iter().position(|&t| t == self.im_end) {
            out.truncate(p);
        }
        Ok(self.tok.decode(&out)?)
    }

    fn verdict(&self, messages: &[Message]) -> Result<Verdict> {
        let ids = self.prompt_ids(messages)?;
        let last = self.model.last_logits(&ids)?;
        let (ly, ln) = (
            last[self.yes as usize] as f64,
            last[self.no as usize] as f64,
        );
        let p = 1.0 / (1.0 + (ln - ly).exp());
        Ok(Verdict {
            yes: p > 0.5,
            p_yes: Some(p),
            parsed: true,
        })
    }
}
