//! Text corpora on disk → documents: plain text, POS-tagged Brown files and JSON
//! arrays of sentences (the formats `scripts/fetch-assets` installs).
//!
//! One file is one document. Brown files keep their tags (word byte spans in the
//! reconstructed text + the tag), which sparse probing on part-of-speech needs.

use std::path::{Path, PathBuf};

/// How a corpus file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorpusFormat {
    /// UTF-8 text; the whole file is one document.
    PlainText,
    /// Brown corpus: whitespace-separated `word/tag` tokens, sentences on lines.
    BrownTagged,
    /// A JSON array of strings (e.g. `nlp-corpus`), joined with newlines.
    JsonSentences,
}

/// A word of a tagged corpus: its byte span in [`Document::text`] and its tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedWord {
    /// Byte offset of the word's first byte in the document text.
    pub start: usize,
    /// Byte offset one past the word's last byte.
    pub end: usize,
    /// The tag as written in the corpus (e.g. `nn-tl`, `vbd`, `.`).
    pub tag: String,
}

/// One document: its source file, text, and the tagged words where the corpus has tags.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file it came from.
    pub source: PathBuf,
    /// The text, as fed to the tokenizer.
    pub text: String,
    /// Word spans and tags (Brown files only).
    pub words: Option<Vec<TaggedWord>>,
}

// Errors are sparse-core's: `Io` (a file or folder that cannot be read) and
// `Format` (read, but not in the expected format), both naming the file.
use sparse_core::{Error, Result};

/// Expands folders into their files (sorted by name, hidden files skipped, not
/// recursive) and keeps files as given, so the document order is reproducible.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|source| Error::Io {
            path: input.clone(),
            source,
        })?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|source| Error::Io {
                    path: input.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && !p
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with('.'))
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(Error::Format {
                    path: input.clone(),
                    reason: "folder holds no files".into(),
                });
            }
            files.extend(entries);
        } else {
            files.push(input.clone());
        }
    }
    Ok(files)
}

/// Guesses a file's format: `.json` → JSON sentences; `.txt` → plain text; a name
/// like Brown's (`ca01` … `cr09`) → Brown tagged; anything else → plain text.
pub fn detect_format(path: &Path) -> CorpusFormat {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => CorpusFormat::JsonSentences,
        Some(_) => CorpusFormat::PlainText,
        None => {
            let b = name.as_bytes();
            let brown = b.len() == 4
                && b[0] == b'c'
                && (b'a'..=b'r').contains(&b[1])
                && b[2].is_ascii_digit()
                && b[3].is_ascii_digit();
            if brown {
                CorpusFormat::BrownTagged
            } else {
                CorpusFormat::PlainText
            }
        }
    }
}

/// Reads one document in the format [`detect_format`] gives.
pub fn read_document(path: &Path) -> Result<Document> {
    read_document_as(path, detect_format(path))
}

/// Reads one document in the given format.
pub fn read_document_as(path: &Path, format: CorpusFormat) -> Result<Document> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let raw = String::from_utf8(bytes).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        reason: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    let (text, words) = match format {
        CorpusFormat::PlainText => (raw, None),
        CorpusFormat::JsonSentences => {
            let sentences: Vec<String> = serde_json::from_str(&raw).map_err(|e| Error::Format {
                path: path.to_path_buf(),
                reason: format!("expected a JSON array of strings: {e}"),
            })?;
            (sentences.join("\n"), None)
        }
        CorpusFormat::BrownTagged => {
            let (text, words) = parse_brown(&raw).map_err(|reason| Error::Format {
                path: path.to_path_buf(),
                reason,
            })?;
            (text, Some(words))
        }
    };
    Ok(Document {
        source: path.to_path_buf(),
        text,
        words,
    })
}

/// Brown's `word/tag` tokens → text with one space between words and one newline
/// between sentences, plus each word's span and tag. Brown's quote tokens `` and ''
/// become `"` so the text reads like ordinary prose.
fn parse_brown(raw: &str) -> std::result::Result<(String, Vec<TaggedWord>), String> {
    let mut text = String::with_capacity(raw.len() / 2);
    let mut words = Vec::new();
    for (line_no, line) in raw.lines().enumerate() {
        let mut first_in_line = true;
        for token in line.split_whitespace() {
            let Some((word, tag)) = token.rsplit_once('/') else {
                return Err(format!(
                    "line {}: expected word/tag, found {token:?}",
                    line_no + 1
                ));
            };
            if word.is_empty() || tag.is_empty() {
                return Err(format!(
                    "line {}: expected word/tag, found {token:?}",
                    line_no + 1
                ));
            }
            let word = match word {
                "``" | "''" => "\"",
                w => w,
            };
            if first_in_line {
                if !text.is_empty() {
                    text.push('\n');
                }
                first_in_line = false;
            } else {
                text.push(' ');
            }
            let start = text.len();
            text.push_str(word);
            words.push(TaggedWord {
                start,
                end: text.len(),
                tag: tag.to_string(),
            });
        }
    }
    if words.is_empty() {
        return Err("no word/tag tokens found".into());
    }
    Ok((text, words))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }

    #[test]
    fn brown_words_and_tags_line_up_with_the_text() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "ca01",
            "\n\n\tThe/at Fulton/np-tl jury/nn ``/`` said/vbd ''/'' ./.\n\n\tIt/pps ran/vbd ./.\n",
        );
        assert_eq!(detect_format(&p), CorpusFormat::BrownTagged);
        let doc = read_document(&p).unwrap();
        assert_eq!(doc.text, "The Fulton jury \" said \" .\nIt ran .");
        let words = doc.words.unwrap();
        assert_eq!(words.len(), 10);
        let spelled: Vec<(&str, &str)> = words
            .iter()
            .map(|w| (&doc.text[w.start..w.end], w.tag.as_str()))
            .collect();
        assert_eq!(spelled[1], ("Fulton", "np-tl"));
        assert_eq!(spelled[3], ("\"", "``"));
        assert_eq!(spelled[7], ("It", "pps"));
        assert_eq!(spelled[9], (".", "."));
    }

    #[test]
    fn a_brown_token_without_a_tag_is_an_error_naming_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "cb02", "The/at\nbroken token/nn\n");
        let err = read_document(&p).unwrap_err().to_string();
        assert!(
            err.contains("cb02") && err.contains("line 2") && err.contains("broken"),
            "{err}"
        );
    }

    #[test]
    fn json_sentences_are_joined_and_bad_json_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "doc-0.json", r#"["One.", "Two two."]"#);
        assert_eq!(read_document(&p).unwrap().text, "One.\nTwo two.");
        let bad = write(dir.path(), "doc-1.json", r#"{"not": "an array"}"#);
        let err = read_document(&bad).unwrap_err().to_string();
        assert!(
            err.contains("doc-1.json") && err.contains("JSON array"),
            "{err}"
        );
    }

    #[test]
    fn folders_expand_sorted_and_non_utf8_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.txt", "bee");
        write(dir.path(), "a.txt", "ay");
        write(dir.path(), ".hidden", "x");
        let files = expand_inputs(&[dir.path().to_path_buf()]).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
        assert_eq!(read_document(&files[0]).unwrap().text, "ay");
        let bin = dir.path().join("bin.txt");
        std::fs::write(&bin, [b'o', b'k', 0xff, 0xfe]).unwrap();
        let err = read_document(&bin).unwrap_err().to_string();
        assert!(err.contains("bin.txt") && err.contains("UTF-8"), "{err}");
        let missing = expand_inputs(&[dir.path().join("nope")])
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
    }
}
