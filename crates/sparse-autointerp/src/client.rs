//! A judge behind any OpenAI-compatible `POST …/chat/completions` endpoint.
//!
//! - **Key**: read from an environment variable named by the caller (default
//!   `OPENAI_API_KEY`) and sent as `Authorization: Bearer …`; an unset variable
//!   is an error naming it (pass no variable for servers without keys).
//! - **Cache**: one JSON file per request under the cache folder, named by the
//!   SHA-256 of the canonical request body (model, messages, temperature,
//!   max_tokens: the same question is never paid for twice, across runs);
//!   written atomically (temporary file, then rename).
//! - **Retries**: HTTP 429 and 5xx, connection failures and timeouts are
//!   retried with exponential backoff (`backoff · 2^attempt`, capped at 30 s, or
//!   the server's `Retry-After` seconds when smaller than the cap); other
//!   statuses fail at once with the server's message.

use crate::judge::{Judge, Verdict};
use crate::prompts::{parse_yes_no, Message};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Connection settings of an [`HttpJudge`].
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Base URL (`http://host:port/v1`) or the full `…/chat/completions` URL.
    pub endpoint: String,
    /// The model name sent in each request.
    pub model: String,
    /// Environment variable holding the API key; `None` sends no key.
    pub api_key_env: Option<String>,
    /// Response cache folder; `None` disables caching.
    pub cache_dir: Option<PathBuf>,
    /// Retries after the first attempt.
    pub retries: usize,
    /// First backoff delay.
    pub backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Tokens the explainer may write.
    pub explain_max_tokens: usize,
}

impl HttpConfig {
    /// Defaults for `endpoint` and `model`: key from `OPENAI_API_KEY`, 5
    /// retries from 1 s, 120 s timeout, no cache.
    pub fn new(endpoint: &str, model: &str) -> Self {
        Self {
            endpoint: endpoint.into(),
            model: model.into(),
            api_key_env: Some("OPENAI_API_KEY".into()),
            cache_dir: None,
            retries: 5,
            backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(120),
            explain_max_tokens: 64,
        }
    }
}

/// The OpenAI-compatible judge.
pub struct HttpJudge {
    cfg: HttpConfig,
    url: String,
    key: Option<String>,
    agent: ureq::Agent,
    requests: AtomicUsize,
    cache_hits: AtomicUsize,
}

impl HttpJudge {
    /// Checks the URL and reads the key (errors name the variable or the URL).
    pub fn new(cfg: HttpConfig) -> Result<Self> {
        let base = cfg.endpoint.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "endpoint {:?}: expected an http:// or https:// URL",
                cfg.endpoint
            );
        }
        let url = if base.ends_with("/chat/completions") {
            base.to_string()
        } else {
            format!("{base}/chat/completions")
        };
        let key = match &cfg.api_key_env {
            None => None,
            Some(var) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|k| !k.is_empty())
                    .ok_or_else(|| {
                        anyhow!("the API key variable {var} is not set (needed for {url})")
                    })?,
            ),
        };
        let agent = ureq::AgentBuilder::new().timeout(cfg.timeout).build();
        Ok(Self {
            cfg,
            url,
            key,
            agent,
            requests: AtomicUsize::new(0),
            cache_hits: AtomicUsize::new(0),
        })
    }

    /// HTTP requests sent so far (retries included).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// Answers served from the cache so far.
    pub fn cache_hits(&self) -> usize {
        self.cache_hits.load(Ordering::Relaxed)
    }

    /// The assistant's reply to `messages` (greedy, `max_tokens`), from the cache if there.
    pub fn complete(&self, messages: &[Message], max_tokens: usize) -> Result<String> {
        // serde_json's maps are sorted, so the body text is canonical.
        let body = json!({
            "model": self.cfg.model,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": max_tokens,
        });
        let text = body.to_string();
        let cache_file = self.cfg.cache_dir.as_ref().map(|d| {
            let h = Sha256::digest(text.as_bytes());
            let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
            d.join(format!("{hex}.json"))
        });
        if let Some(f) = &cache_file {
            if let Ok(bytes) = std::fs::read(f) {
                if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                    if let Some(s) = v["reply"].as_str() {
                        self.cache_hits.fetch_add(1, Ordering::Relaxed);
                        return Ok(s.to_string());
                    }
                }
            }
        }
        let reply = self.post(&text)?;
        if let Some(f) = &cache_file {
            write_atomic(
                f,
                json!({"request": body, "reply": reply})
                    .to_string()
                    .as_bytes(),
            )?;
        }
        Ok(reply)
    }

    fn post(&self, body: &str) -> Result<String> {
        let attempts = self.cfg.retries + 1;
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                std::thread::sleep(self.delay(attempt - 1, &last));
            }
            self.requests.fetch_add(1, Ordering::Relaxed);
            let mut req = self
                .agent
                .post(&self.url)
                .set("Content-Type", "application/json");
            if let Some(k) = &self.key {
                req = req.set("Authorization", &format!("Bearer {k}"));
            }
            match req.send_string(body) {
                Ok(resp) => {
                    let text = resp
                        .into_string()
                        .with_context(|| format!("{}: reading the response", self.url))?;
                    let v: Value = serde_json::from_str(&text).with_context(|| {
                        format!("{}: the response is not JSON: {}", self.url, snippet(&text))
                    })?;
                    return v["choices"][0]["message"]["content"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| {
                            anyhow!(
                                "{}: no choices[0].message.content in the response {}",
                                self.url,
                                snippet(&v.to_string())
                            )
                        });
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let retry_after = resp
                        .header("Retry-After")
                        .and_then(|s| s.trim().parse::<u64>().ok());
                    let msg = resp.into_string().unwrap_or_default();
                    if code == 429 || code >= 500 {
                        last = format!(
                            "HTTP {code}{}",
                            retry_after
                                .map(|s| format!(" retry-after {s}"))
                                .unwrap_or_default()
                        );
                        continue;
                    }
                    bail!("{}: HTTP {code}: {}", self.url, snippet(&msg));
                }
                Err(ureq::Error::Transport(t)) => {
                    last = t.to_string();
                }
            }
        }
        bail!("{}: {last} (gave up after {attempts} attempts)", self.url)
    }

    /// Backoff before retry number `n` (0-based); honours a smaller Retry-After.
    fn delay(&self, n: usize, last: &str) -> Duration {
        let cap = Duration::from_secs(30);
        let exp = self.cfg.backoff.saturating_mul(1u32 << n.min(16)).min(cap);
        match last
            .split("retry-after ")
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(s) if Duration::from_secs(s) < cap => Duration::from_secs(s).max(self.cfg.backoff),
            _ => exp,
        }
    }
}

fn snippet(s: &str) -> String {
    let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one.chars().count() > 200 {
        format!("{}…", one.chars().take(200).collect::<String>())
    } else {
        one
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a reader
/// never sees half a file.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension(
        format!(
            "tmp{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )
        .replace(['(', ')'], ""),
    );
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

impl Judge for HttpJudge {
    fn name(&self) -> String {
        format!("{}@{}", self.cfg.model, self.url)
    }

    fn explain(&self, messages: &[Message]) -> Result<String> {
        self.complete(messages, self.cfg.explain_max_tokens)
    }

    fn verdict(&self, messages: &[Message]) -> Result<Verdict> {
        let reply = self.complete(messages, 3)?;
        let p = parse_yes_no(&reply);
        Ok(Verdict {
            yes: p == Some(true),
            p_yes: None,
            parsed: p.is_some(),
        })
    }
}
