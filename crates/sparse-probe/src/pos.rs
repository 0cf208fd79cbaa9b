//! Brown part-of-speech tags → coarse classes, and tagged words → token labels.
//!
//! **Coarse classes.** A Brown tag is lower-cased, a foreign-word prefix `fw-`
//! is dropped, and the tag is cut at its first `-` (title/headline suffixes such
//! as `-tl`, `-hl`, `-nc`) or `+` (contractions like `pps+bez` keep their first
//! part); a tag with no letter is punctuation. Then, by prefix:
//!
//! | class | Brown tags |
//! |---|---|
//! | noun | `nn…`, `np…`, `nr…` (common, proper, adverbial nouns) |
//! | verb | `vb…`, `be…`, `hv…`, `do…`, `md…` (incl. *be*/*have*/*do* forms and modals) |
//! | adj | `jj…` |
//! | adv | `rb…`, `wrb`, `ql…`, `rp`, `*` (adverbs, wh-adverbs, qualifiers, particles, the negator *not*) |
//! | det | `at`, `ap`, `abn`, `abx`, `dt…`, `wdt` |
//! | prep | `in` |
//! | pron | `pp…`, `wp…`, `pn…`, `ex` |
//! | conj | `cc`, `cs` |
//! | num | `cd…`, `od…` |
//! | punct | no letters (`.`, `,`, `` ` ` ``, `--`, …) |
//! | other | everything else (`to`, `*`, `uh`, `nil`, …) |
//!
//! **Token labels.** A token takes the class of the tagged word whose byte span
//! covers the token's first non-whitespace byte (byte-level BPE tokens usually
//! start with the space before a word). Tokens that are only whitespace, or whose
//! first such byte lies in no word, get no label and are left out of probing.

use serde::Serialize;
use sparse_lm::corpus::TaggedWord;

/// A coarse part-of-speech class (see the module doc for the mapping).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Coarse {
    /// Nouns.
    Noun,
    /// Verbs, auxiliaries and modals.
    Verb,
    /// Adjectives.
    Adj,
    /// Adverbs, qualifiers and particles.
    Adv,
    /// Determiners and articles.
    Det,
    /// Prepositions.
    Prep,
    /// Pronouns.
    Pron,
    /// Conjunctions.
    Conj,
    /// Cardinal and ordinal numbers.
    Num,
    /// Punctuation.
    Punct,
    /// Anything else.
    Other,
}

impl Coarse {
    /// Every class, in a fixed order.
    pub const ALL: [Coarse; 11] = [
        Coarse::Noun,
        Coarse::Verb,
        Coarse::Adj,
        Coarse::Adv,
        Coarse::Det,
        Coarse::Prep,
        Coarse::Pron,
        Coarse::Conj,
        Coarse::Num,
        Coarse::Punct,
        Coarse::Other,
    ];

    /// The class's name (`noun`, `verb`, …).
    pub fn name(self) -> &'static str {
        match self {
            Coarse::Noun => "noun",
            Coarse::Verb => "verb",
            Coarse::Adj => "adj",
            Coarse::Adv => "adv",
            Coarse::Det => "det",
            Coarse::Prep => "prep",
            Coarse::Pron => "pron",
            Coarse::Conj => "conj",
            Coarse::Num => "num",
            Coarse::Punct => "punct",
            Coarse::Other => "other",
        }
    }

    /// The class named `name`, if any.
    pub fn from_name(name: &str) -> Option<Coarse> {
        Coarse::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// The coarse class of a Brown tag (see the module doc).
pub fn coarse_tag(tag: &str) -> Coarse {
    let t = tag.to_ascii_lowercase();
    if t == "*" {
        return Coarse::Adv; // Brown's negator (*not*, *n't*)
    }
    if !t.bytes().any(|b| b.is_ascii_alphabetic()) {
        return Coarse::Punct;
    }
    let t = t.strip_prefix("fw-").unwrap_or(&t);
    let base = t.split(['-', '+']).next().unwrap_or("");
    let starts = |p: &str| base.starts_with(p);
    if starts("nn") || starts("np") || starts("nr") {
        Coarse::Noun
    } else if starts("vb") || starts("be") || starts("hv") || starts("do") || starts("md") {
        Coarse::Verb
    } else if starts("jj") {
        Coarse::Adj
    } else if starts("rb") || base == "wrb" || starts("ql") || base == "rp" {
        Coarse::Adv
    } else if matches!(base, "at" | "ap" | "abn" | "abx" | "wdt") || starts("dt") {
        Coarse::Det
    } else if base == "in" {
        Coarse::Prep
    } else if starts("pp") || starts("wp") || starts("pn") || base == "ex" {
        Coarse::Pron
    } else if matches!(base, "cc" | "cs") {
        Coarse::Conj
    } else if starts("cd") || starts("od") {
        Coarse::Num
    } else {
        Coarse::Other
    }
}

/// The label of each token, given its byte span `(start, end)` in `text` and
/// the document's tagged words (sorted by start, non-overlapping, as the
/// corpus reader makes them). See the module doc for the rule.
pub fn token_labels(
    text: &str,
    words: &[TaggedWord],
    spans: &[(usize, usize)],
) -> Vec<Option<Coarse>> {
    let bytes = text.as_bytes();
    spans
        .iter()
        .map(|&(start, end)| {
            let end = end.min(bytes.len());
            let first = (start..end).find(|&b| !bytes[b].is_ascii_whitespace())?;
            // The last word starting at or before `first`; it covers `first` if it ends after it.
            let i = words.partition_point(|w| w.start <= first);
            let w = words.get(i.checked_sub(1)?)?;
            (first < w.end).then(|| coarse_tag(&w.tag))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brown_tags_map_to_the_documented_classes() {
        let cases = [
            ("nn", Coarse::Noun),
            ("nns-tl", Coarse::Noun),
            ("np$", Coarse::Noun),
            ("vbd", Coarse::Verb),
            ("bez", Coarse::Verb),
            ("md*", Coarse::Verb),
            ("hvd", Coarse::Verb),
            ("jj-tl", Coarse::Adj),
            ("rbr", Coarse::Adv),
            ("ql", Coarse::Adv),
            ("at", Coarse::Det),
            ("dti", Coarse::Det),
            ("wdt", Coarse::Det),
            ("in-tl", Coarse::Prep),
            ("pps+bez", Coarse::Pron),
            ("ppss", Coarse::Pron),
            ("cs", Coarse::Conj),
            ("cd", Coarse::Num),
            ("od", Coarse::Num),
            (".", Coarse::Punct),
            ("``", Coarse::Punct),
            ("--", Coarse::Punct),
            ("to", Coarse::Other),
            ("*", Coarse::Adv),
            ("fw-nn", Coarse::Noun),
            ("NN-HL", Coarse::Noun),
        ];
        for (tag, want) in cases {
            assert_eq!(coarse_tag(tag), want, "{tag}");
        }
    }

    #[test]
    fn a_token_takes_the_tag_of_the_word_under_its_first_non_space_byte() {
        // "The jury's  verdict." words: The/at jury's/nn$ verdict/nn ./.
        let text = "The jury's  verdict.";
        let w = |s, e, t: &str| TaggedWord {
            start: s,
            end: e,
            tag: t.into(),
        };
        let words = vec![
            w(0, 3, "at"),
            w(4, 10, "nn$"),
            w(12, 19, "nn"),
            w(19, 20, "."),
        ];
        // Tokens: "The", " jury", "'s", " ", " verdict", "."
        let spans = [(0, 3), (3, 8), (8, 10), (10, 11), (11, 19), (19, 20)];
        let got = token_labels(text, &words, &spans);
        assert_eq!(
            got,
            vec![
                Some(Coarse::Det),
                Some(Coarse::Noun),
                Some(Coarse::Noun),
                None,
                Some(Coarse::Noun),
                Some(Coarse::Punct)
            ]
        );
    }
}
