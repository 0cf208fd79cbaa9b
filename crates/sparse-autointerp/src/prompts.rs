//! The prompts of the explainer and the two scorers, and reading the answers.
//!
//! Scorers ask about **one example per prompt** and expect `Yes` or `No`: a
//! small local judge can be scored from the next-token logits of those two
//! words, and an API judge needs no list parsing (its calls are cached and run
//! concurrently, so the extra requests cost little time).

use crate::examples::Shown;
use serde::{Deserialize, Serialize};

/// One chat message (`system`, `user` or `assistant`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The speaker.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// System prompt of the explainer.
pub const EXPLAINER_SYSTEM: &str = "You explain what a neuron in a language model responds to. \
You see text excerpts in which the tokens where the neuron activates are marked like <<this>>. \
Reply with one short phrase (at most 12 words) saying what the marked tokens have in common, \
in the form: Explanation: <phrase>";

/// The explainer's last line, after the examples.
pub const EXPLAINER_QUESTION: &str =
    "What do the marked tokens have in common? Reply with: Explanation: <a short phrase>";

/// System prompt of the detection scorer.
pub const DETECTION_SYSTEM: &str = "A neuron in a language model is described by an explanation. \
Decide whether the neuron activates anywhere in the given text. Answer only Yes or No.";

/// System prompt of the fuzzing scorer.
pub const FUZZING_SYSTEM: &str = "A neuron in a language model is described by an explanation. \
Some tokens of the given text are marked like <<this>>. Decide whether the marked tokens are \
the ones the explanation describes. Answer only Yes or No.";

/// The explainer's messages for `examples` (activating tokens marked).
pub fn explainer(examples: &[Shown]) -> Vec<Message> {
    let mut user = String::from("Examples:\n");
    for (i, e) in examples.iter().enumerate() {
        user.push_str(&format!("{}. {}\n", i + 1, one_line(&e.marked(&e.active))));
    }
    // Restating the task after the examples helps small models answer rather than echo.
    user.push_str(EXPLAINER_QUESTION);
    vec![
        Message::new("system", EXPLAINER_SYSTEM),
        Message::new("user", user),
    ]
}

/// The detection scorer's messages for one unmarked example.
pub fn detection(explanation: &str, example: &Shown) -> Vec<Message> {
    vec![
        Message::new("system", DETECTION_SYSTEM),
        Message::new(
            "user",
            format!(
                "Explanation: {explanation}\nText: {}\nDoes the neuron activate on this text? Answer Yes or No.",
                one_line(&example.plain())
            ),
        ),
    ]
}

/// The fuzzing scorer's messages for one example marked with `marks`.
pub fn fuzzing(explanation: &str, example: &Shown, marks: &[bool]) -> Vec<Message> {
    vec![
        Message::new("system", FUZZING_SYSTEM),
        Message::new(
            "user",
            format!(
                "Explanation: {explanation}\nText: {}\nAre the marked tokens the ones the explanation describes? Answer Yes or No.",
                one_line(&example.marked(marks))
            ),
        ),
    ]
}

/// Newlines inside an example would break the numbered list.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The explanation in an explainer's reply: the text after `Explanation:` if
/// present, else the first non-empty line; trimmed, quotes removed.
pub fn parse_explanation(reply: &str) -> String {
    let body = match reply.find("Explanation:") {
        Some(p) => &reply[p + "Explanation:".len()..],
        None => reply,
    };
    body.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .trim_matches(|c| c == '"' || c == '\'' || c == '`')
        .trim()
        .to_string()
}

/// `Some(true)` for a reply starting with "yes", `Some(false)` for "no"
/// (case and leading punctuation ignored), else `None`.
pub fn parse_yes_no(reply: &str) -> Option<bool> {
    let w = reply
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .to_ascii_lowercase();
    if w.starts_with("yes") {
        Some(true)
    } else if w.starts_with("no") {
        Some(false)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_explanations_are_read_leniently() {
        assert_eq!(parse_yes_no(" Yes."), Some(true));
        assert_eq!(parse_yes_no("**no**"), Some(false));
        assert_eq!(parse_yes_no("Maybe"), None);
        assert_eq!(
            parse_explanation("Sure!\nExplanation: \"the word cat\"\n"),
            "the word cat"
        );
        assert_eq!(parse_explanation("\n  plural nouns \nmore"), "plural nouns");
    }

    #[test]
    fn marks_wrap_tokens_and_keep_their_leading_space() {
        let e = Shown {
            context: 0,
            tokens: vec!["The".into(), " cat".into(), " sat".into()],
            active: vec![false, true, false],
        };
        assert_eq!(e.marked(&e.active), "The <<cat>> sat");
        assert_eq!(e.plain(), "The cat sat");
        let m = explainer(&[e]);
        assert_eq!(
            m[1].content,
            format!("Examples:\n1. The <<cat>> sat\n{EXPLAINER_QUESTION}")
        );
    }
}
