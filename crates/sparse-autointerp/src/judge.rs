//! A judge answers the explainer's and the scorers' prompts.

use crate::prompts::Message;
use anyhow::Result;

/// A scorer's answer to one example.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Verdict {
    /// The judge said yes (an unreadable answer counts as no).
    pub yes: bool,
    /// P(yes) when the judge exposes it (local models: from the logits).
    pub p_yes: Option<f64>,
    /// Whether the answer could be read as yes or no.
    pub parsed: bool,
}

/// Something that answers chat prompts: an OpenAI-compatible endpoint
/// ([`crate::client::HttpJudge`]) or a local GGUF model ([`crate::local::LocalJudge`]).
pub trait Judge: Sync {
    /// A short name for results (`model@endpoint`, `local:FILE`).
    fn name(&self) -> String;
    /// The explainer's free-text reply to `messages`.
    fn explain(&self, messages: &[Message]) -> Result<String>;
    /// A scorer's yes/no answer to `messages`.
    fn verdict(&self, messages: &[Message]) -> Result<Verdict>;
}
