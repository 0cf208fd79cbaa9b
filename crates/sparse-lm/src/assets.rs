//! Where the offline model and text corpora live (fetched by
//! `scripts/fetch-assets`, which uses the same rules): `$SPARSE_INFER_ASSETS`
//! if set, else `${XDG_CACHE_HOME:-~/.cache}/sparse-infer`. These functions only
//! compute paths; they neither check existence nor print.

use std::path::PathBuf;

/// File name of the default model under `<root>/models/`.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// sha256 of the default model file as pinned by `scripts/fetch-assets`.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// The corpora `scripts/fetch-assets` installs under `<root>/text/`.
pub const TEXT_CORPORA: [&str; 4] = ["sotu", "moby-dick", "brown", "nlp-corpus"];

/// Non-empty value of an environment variable.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The asset root: `$SPARSE_INFER_ASSETS`, else `$XDG_CACHE_HOME/sparse-infer`,
/// else `$HOME/.cache/sparse-infer` (empty variables count as unset, as in the
/// shell's `${VAR:-default}`). Falls back to a relative `.cache/sparse-infer`
/// only when even `$HOME` is unset.
pub fn asset_root() -> PathBuf {
    if let Some(root) = env_path("SPARSE_INFER_ASSETS") {
        return root;
    }
    let cache = env_path("XDG_CACHE_HOME").unwrap_or_else(|| {
        env_path("HOME")
            .map(|h| h.join(".cache"))
            .unwrap_or_else(|| PathBuf::from(".cache"))
    });
    cache.join("sparse-infer")
}

/// `<root>/models`.
pub fn models_dir() -> PathBuf {
    asset_root().join("models")
}

/// Path of the default model, `<root>/models/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn default_model_path() -> PathBuf {
    models_dir().join(DEFAULT_MODEL_FILE)
}

/// Directory of a text corpus, `<root>/text/<name>` (see [`TEXT_CORPORA`]).
pub fn text_dir(name: &str) -> PathBuf {
    asset_root().join("text").join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_hang_off_the_root() {
        // Only checks structure relative to whatever root the environment gives,
        // so it does not race with other tests over environment variables.
        let root = asset_root();
        assert_eq!(
            default_model_path(),
            root.join("models").join(DEFAULT_MODEL_FILE)
        );
        assert_eq!(text_dir("sotu"), root.join("text").join("sotu"));
        assert!(
            root.ends_with("sparse-infer") || std::env::var_os("SPARSE_INFER_ASSETS").is_some()
        );
    }
}
