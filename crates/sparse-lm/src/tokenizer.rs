//! The tokenizer stored in a GGUF file's metadata, rebuilt as a Hugging Face
//! `tokenizers` BPE.
//!
//! GGUF keeps a GPT-2-style byte-level BPE as `tokenizer.ggml.tokens` (id →
//! token string, bytes written in GPT-2's byte-to-unicode alphabet) and
//! `tokenizer.ggml.merges` (`"a b"` strings, in priority order). The
//! pre-tokenizer is not stored, only named by `tokenizer.ggml.pre`; for
//! SmolLM (`smollm`) it is, as in llama.cpp and SmolLM's `tokenizer.json`,
//! "split digits individually, then GPT-2 byte-level splitting". No BOS is
//! prepended (`tokenizer.ggml.add_bos_token = false` for SmolLM2).

use crate::error::{LmError, Result};
use crate::gguf::{self, Meta};
use std::path::Path;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper};

/// GGUF's token type for control tokens (`<|endoftext|>`, `<|im_start|>`, ...).
const TOKEN_TYPE_CONTROL: i64 = 3;

/// A byte-level BPE tokenizer built from GGUF metadata.
pub struct LmTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    vocab_size: usize,
}

impl std::fmt::Debug for LmTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmTokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl LmTokenizer {
    /// Reads the tokenizer from a GGUF file's metadata (the tensors are not read).
    ///
    /// Errors name the file: not GGUF, truncated, a tokenizer model other than
    /// `gpt2` (byte-level BPE), an unknown pre-tokenizer, missing tokens or merges.
    pub fn from_gguf(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = gguf::open(path)?;
        Self::from_meta(&file.meta())
    }

    fn from_meta(meta: &Meta<'_>) -> Result<Self> {
        let path = meta.path;
        let model = meta.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(LmError::Unsupported {
                path: path.to_path_buf(),
                what: "tokenizer model (tokenizer.ggml.model)".into(),
                expected: "\"gpt2\" (byte-level BPE)".into(),
                found: format!("{model:?}"),
            });
        }
        let pre = match meta.get("tokenizer.ggml.pre") {
            None => "default",
            Some(_) => meta.string("tokenizer.ggml.pre")?,
        };
        // Only pre-tokenizers whose splitting we reproduce exactly.
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "default" | "gpt2" | "gpt-2" => byte_level.into(),
            other => {
                return Err(LmError::Unsupported {
                    path: path.to_path_buf(),
                    what: "pre-tokenizer (tokenizer.ggml.pre)".into(),
                    expected: "\"smollm\", \"gpt2\" or \"default\"".into(),
                    found: format!("{other:?}"),
                })
            }
        };
        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let merges = meta.strings("tokenizer.ggml.merges")?;
        let types = meta.opt_ints("tokenizer.ggml.token_type")?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| LmError::Metadata {
                        path: path.to_path_buf(),
                        key: "tokenizer.ggml.merges".into(),
                        expected: "merges written as two tokens separated by one space".into(),
                        found: format!("{m:?}"),
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| LmError::Tokenizer(format!("{}: building BPE: {e}", path.display())))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        // Control tokens are matched whole in text (as in SmolLM's tokenizer.json),
        // so "<|im_start|>" encodes to its id rather than to its characters.
        if let Some(types) = types {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(ty, _)| **ty == TOKEN_TYPE_CONTROL)
                .map(|(_, t)| AddedToken::from(t.to_string(), true))
                .collect();
            inner.add_special_tokens(special).map_err(|e| {
                LmError::Tokenizer(format!("{}: adding special tokens: {e}", path.display()))
            })?;
        }
        let id = |key: &str| -> Result<Option<u32>> {
            match meta.opt_usize(key)? {
                Some(i) if i >= tokens.len() => Err(LmError::Metadata {
                    path: path.to_path_buf(),
                    key: key.into(),
                    expected: format!("a token id below the vocabulary size {}", tokens.len()),
                    found: i.to_string(),
                }),
                other => Ok(other.map(|i| i as u32)),
            }
        };
        Ok(LmTokenizer {
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            vocab_size: tokens.len(),
            inner,
        })
    }

    /// Token ids of `text`; no BOS or other special token is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| LmError::Tokenizer(format!("encoding: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens included, so that decode ∘ encode is the identity).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.vocab_size) {
            return Err(LmError::invalid(
                "token ids",
                format!("{bad} is outside the vocabulary (size {})", self.vocab_size),
            ));
        }
        self.inner
            .decode(ids, false)
            .map_err(|e| LmError::Tokenizer(format!("decoding: {e}")))
    }

    /// `tokenizer.ggml.bos_token_id`, if the file has one.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos
    }

    /// `tokenizer.ggml.eos_token_id`, if the file has one.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The underlying `tokenizers` tokenizer (for batch encoding, offsets, ...).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
