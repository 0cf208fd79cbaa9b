//! Documents → fixed-length token contexts, in a reproducible order.
//!
//! Contexts never span documents: each document is tokenised on its own and cut into
//! consecutive windows of `context` tokens; a document's last window, when shorter, is
//! dropped. So a context's tokens all come from one document (dashboards show it as one
//! passage), and the stream depends only on the file list and the tokenizer — a resumed
//! harvest skips the contexts it already stored and continues with the same ones.

use crate::corpus::read_document;
use sparse_core::Error;
use std::path::PathBuf;

/// One context: `context` token ids from one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    /// Token ids (length = the stream's context length).
    pub tokens: Vec<u32>,
    /// Index of the document in the input file list.
    pub doc_index: u32,
    /// Offset of the first token within its document, in tokens.
    pub doc_offset: u64,
}

/// Iterator over the contexts of a list of files, one document in memory at a time.
pub struct ContextStream<F> {
    files: Vec<PathBuf>,
    context: usize,
    tokenize: F,
    next_file: usize,
    current: Vec<u32>,
    current_doc: u32,
    next_offset: usize,
}

impl<F> ContextStream<F>
where
    F: FnMut(&str) -> Result<Vec<u32>, String>,
{
    /// Contexts of `context` tokens from `files` in order; `tokenize` turns a document's
    /// text into token ids (no special tokens added).
    pub fn new(files: Vec<PathBuf>, context: usize, tokenize: F) -> Self {
        Self {
            files,
            context,
            tokenize,
            next_file: 0,
            current: Vec::new(),
            current_doc: 0,
            next_offset: 0,
        }
    }
}

impl<F> Iterator for ContextStream<F>
where
    F: FnMut(&str) -> Result<Vec<u32>, String>,
{
    type Item = Result<Context, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.next_offset + self.context <= self.current.len() {
                let start = self.next_offset;
                self.next_offset += self.context;
                return Some(Ok(Context {
                    tokens: self.current[start..start + self.context].to_vec(),
                    doc_index: self.current_doc,
                    doc_offset: start as u64,
                }));
            }
            let path = self.files.get(self.next_file)?.clone();
            let doc_index = self.next_file as u32;
            self.next_file += 1;
            let doc = match read_document(&path) {
                Ok(doc) => doc,
                Err(e) => return Some(Err(e)),
            };
            match (self.tokenize)(&doc.text) {
                Ok(tokens) => {
                    self.current = tokens;
                    self.current_doc = doc_index;
                    self.next_offset = 0;
                }
                Err(reason) => {
                    return Some(Err(Error::Format {
                        path,
                        reason: format!("tokenizer failed: {reason}"),
                    }))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One token per byte: lets the test count tokens by hand.
    fn bytes(text: &str) -> Result<Vec<u32>, String> {
        Ok(text.bytes().map(u32::from).collect())
    }

    #[test]
    fn contexts_stay_inside_documents_and_drop_short_tails() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let b = dir.path().join("b.txt");
        let c = dir.path().join("c.txt");
        std::fs::write(&a, "abcdefghij").unwrap(); // 10 bytes: 2 contexts of 4, tail "ij" dropped
        std::fs::write(&b, "xy").unwrap(); // shorter than a context: none
        std::fs::write(&c, "1234").unwrap(); // exactly one
        let got: Vec<Context> = ContextStream::new(vec![a, b, c], 4, bytes)
            .collect::<Result<_, _>>()
            .unwrap();
        let expect = [(b"abcd", 0, 0), (b"efgh", 0, 4), (b"1234", 2, 0)];
        assert_eq!(got.len(), expect.len());
        for (ctx, (tokens, doc, offset)) in got.iter().zip(expect) {
            assert_eq!(ctx.tokens, tokens.map(u32::from));
            assert_eq!((ctx.doc_index, ctx.doc_offset), (doc, offset));
        }
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        std::fs::write(&a, "abcd").unwrap();
        let mut s = ContextStream::new(vec![a, dir.path().join("gone.txt")], 4, bytes);
        assert!(s.next().unwrap().is_ok());
        let err = s.next().unwrap().unwrap_err().to_string();
        assert!(err.contains("gone.txt"), "{err}");
    }
}
