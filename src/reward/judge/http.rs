//! A judge behind any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp, a hosted
//! API): one request per query, many in flight at once, retried with exponential backoff when the
//! server is busy or unreachable.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};

use super::{Judge, JudgeOutcome, JudgeQuery, JUDGE_SYSTEM_PROMPT};
use crate::error::{Error, Result};

/// Path appended to a base URL such as `http://127.0.0.1:8000/v1`.
const CHAT_COMPLETIONS: &str = "/chat/completions";

/// Most characters of a server reply quoted in a failure detail.
const SNIPPET_CHARS: usize = 200;

/// Settings of an [`HttpJudge`]: where the server is, which model to ask, and how hard to try.
#[derive(Clone)]
pub struct HttpJudgeConfig {
    /// OpenAI-compatible base URL (`http://host:port/v1`) or the full `.../chat/completions` URL.
    pub url: String,
    /// Model name sent in every request (the server may serve several).
    pub model: String,
    /// Bearer token for servers that require one (`Authorization: Bearer KEY`).
    pub api_key: Option<String>,
    /// Most requests in flight at once, across every thread sharing the judge.
    pub concurrency: usize,
    /// Limit on one request, from connecting to reading the whole reply.
    pub timeout: Duration,
    /// Retries after a 429, a 5xx or a transport error (so up to `max_retries + 1` attempts).
    pub max_retries: u32,
    /// Wait before the first retry; doubled before each further retry.
    pub initial_backoff: Duration,
    /// Cap on the wait between retries, also applied to a server's `Retry-After`.
    pub max_backoff: Duration,
    /// Most tokens of a reply (`max_tokens`); `None` leaves the server's default.
    pub max_tokens: Option<u32>,
}

impl HttpJudgeConfig {
    /// Settings for `model` at `url` with the QwenLong-L1 defaults: 32 requests in flight, 120 s
    /// timeout, 5 retries with backoff doubling from 1 s up to 64 s, the server's token limit.
    pub fn new(url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: model.into(),
            api_key: None,
            concurrency: 32,
            timeout: Duration::from_secs(120),
            max_retries: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(64),
            max_tokens: None,
        }
    }

    /// Checks the settings, naming the command-line option of the first bad one.
    fn validate(&self) -> Result<()> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        match rest {
            None => {
                return Err(Error::Invalid(format!(
                    "--judge-url: `{}` must start with http:// or https://",
                    self.url
                )))
            }
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                return Err(Error::Invalid(format!(
                    "--judge-url: `{}` names no host",
                    self.url
                )))
            }
            Some(_) => {}
        }
        if self.model.trim().is_empty() {
            return Err(Error::Invalid(
                "--judge-model: the judge model name must not be empty".into(),
            ));
        }
        if self.concurrency == 0 {
            return Err(Error::Invalid(
                "--judge-concurrency: must be at least 1".into(),
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::Invalid(
                "--judge-timeout: must be longer than zero".into(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for HttpJudgeConfig {
    /// Like a derived `Debug`, but never prints the API key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpJudgeConfig")
            .field("url", &self.url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

/// The chat-completions endpoint for a configured URL: a base URL gets `/chat/completions`
/// appended, a URL that already ends with it is kept; a trailing slash is dropped either way.
fn endpoint_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with(CHAT_COMPLETIONS) {
        url.to_string()
    } else {
        format!("{url}{CHAT_COMPLETIONS}")
    }
}

/// A judge that asks an OpenAI-compatible chat-completions server.
///
/// One value is meant to be shared (e.g. in an `Arc`) by every worker: its connection pool and its
/// bound on requests in flight are common to all callers of [`Judge::judge`].
pub struct HttpJudge {
    config: HttpJudgeConfig,
    endpoint: String,
    agent: ureq::Agent,
    slots: Slots,
}

impl std::fmt::Debug for HttpJudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpJudge")
            .field("endpoint", &self.endpoint)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one HTTP attempt came to.
enum Attempt {
    /// The reply text (`choices[0].message.content`).
    Reply(String),
    /// A failure worth another try (429, 5xx, transport error), with the server's `Retry-After`.
    Retry(String, Option<Duration>),
    /// A failure that another try would repeat (other 4xx, malformed 200 reply).
    Fail(String),
}

impl HttpJudge {
    /// A judge for `config` after checking it (URL scheme and host, model name, concurrency,
    /// timeout); connects lazily, so an unreachable server shows up as failed verdicts, not here.
    pub fn new(config: HttpJudgeConfig) -> Result<Self> {
        config.validate()?;
        let endpoint = endpoint_url(&config.url);
        if let Err(e) = endpoint.parse::<ureq::http::Uri>() {
            return Err(Error::Invalid(format!(
                "--judge-url: `{}` is not a valid URL: {e}",
                config.url
            )));
        }
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .max_idle_connections(config.concurrency.max(10))
            .max_idle_connections_per_host(config.concurrency)
            .build();
        Ok(Self {
            endpoint,
            agent: ureq::Agent::new_with_config(agent_config),
            slots: Slots::new(config.concurrency),
            config,
        })
    }

    /// The settings this judge runs with.
    pub fn config(&self) -> &HttpJudgeConfig {
        &self.config
    }

    /// The URL every request is POSTed to (`.../chat/completions`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The chat-completions request for one query: the QwenLong-L1 prompts, greedy, one choice.
    fn request_body(&self, query: &JudgeQuery) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {"role": "user", "content": query.user_prompt()},
            ],
            "temperature": 0.0,
            "n": 1,
        });
        if let Some(max_tokens) = self.config.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        body
    }

    /// Asks about one query, retrying as configured; never fails, a lost call is `Failed`.
    fn judge_one(&self, index: usize, query: &JudgeQuery) -> JudgeOutcome {
        let body = self.request_body(query);
        let attempts = self.config.max_retries.saturating_add(1);
        let mut backoff = self.config.initial_backoff.min(self.config.max_backoff);
        let mut attempt = 1;
        let reason = loop {
            match self.attempt(&body) {
                Attempt::Reply(text) => return JudgeOutcome::from_reply(&text),
                Attempt::Fail(reason) => {
                    break format!("{reason} (attempt {attempt}, not retried)")
                }
                Attempt::Retry(reason, retry_after) => {
                    if attempt >= attempts {
                        break format!("{reason} (gave up after {attempt} attempts)");
                    }
                    let wait = retry_after.unwrap_or(backoff).min(self.config.max_backoff);
                    log::debug!(
                        "judge query {index}: {reason}; retry {attempt} of {} in {wait:?}",
                        self.config.max_retries
                    );
                    std::thread::sleep(wait);
                    backoff = backoff
                        .checked_mul(2)
                        .unwrap_or(self.config.max_backoff)
                        .min(self.config.max_backoff);
                    attempt += 1;
                }
            }
        };
        log::warn!("judge query {index} failed at {}: {reason}", self.endpoint);
        JudgeOutcome::failed(reason)
    }

    /// One POST, holding one of the judge's request slots until the reply is read.
    fn attempt(&self, body: &Value) -> Attempt {
        let _slot = self.slots.acquire();
        let mut request = self.agent.post(&self.endpoint);
        if let Some(key) = &self.config.api_key {
            request = request.header("Authorization", format!("Bearer {key}"));
        }
        let mut response = match request.send_json(body) {
            Ok(response) => response,
            Err(e) => return transport_failure(e),
        };
        let status = response.status();
        if status.is_success() {
            return match response.body_mut().read_to_string() {
                Ok(text) => match reply_content(&text) {
                    Ok(content) => Attempt::Reply(content),
                    Err(why) => Attempt::Fail(why),
                },
                Err(e) => transport_failure(e),
            };
        }
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let mut reason = format!("HTTP {status}");
        if !text.trim().is_empty() {
            reason = format!("{reason}: {}", snippet(&text));
        }
        if status.as_u16() == 429 || status.is_server_error() {
            Attempt::Retry(reason, retry_after)
        } else {
            Attempt::Fail(reason)
        }
    }
}

/// Classifies a ureq error: network trouble (refused, reset, timeout, cut reply) is worth a retry,
/// a bad URL or TLS setup is not.
fn transport_failure(error: ureq::Error) -> Attempt {
    use ureq::Error as E;
    let retry = matches!(
        error,
        E::Io(_)
            | E::Timeout(_)
            | E::ConnectionFailed
            | E::HostNotFound
            | E::Protocol(_)
            | E::BodyStalled
            | E::ConnectProxyFailed(_)
    );
    let reason = error.to_string();
    if retry {
        Attempt::Retry(reason, None)
    } else {
        Attempt::Fail(reason)
    }
}

/// The reply text of a chat-completions response body, or why there is none.
fn reply_content(text: &str) -> std::result::Result<String, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("reply is not JSON ({e}): {}", snippet(text)))?;
    value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| {
            format!(
                "reply has no string choices[0].message.content: {}",
                snippet(text)
            )
        })
}

/// A `Retry-After` value in seconds (integer or decimal); HTTP dates are ignored.
fn parse_retry_after(value: &str) -> Option<Duration> {
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(1e9)))
}

/// The start of a reply, for failure details.
fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(SNIPPET_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(empty body)".into(),
        None => text.to_string(),
    }
}

impl Judge for HttpJudge {
    /// Runs the batch on up to `concurrency` scoped threads, each taking the next unanswered query;
    /// the judge-wide slots keep the requests in flight within `concurrency` across all callers.
    fn judge(&self, queries: &[JudgeQuery]) -> Vec<JudgeOutcome> {
        let workers = self.config.concurrency.min(queries.len());
        if workers <= 1 {
            return queries
                .iter()
                .enumerate()
                .map(|(i, q)| self.judge_one(i, q))
                .collect();
        }
        let next = AtomicUsize::new(0);
        let work = || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(query) = queries.get(i) else { break };
                done.push((i, self.judge_one(i, query)));
            }
            done
        };
        let mut outcomes: Vec<Option<JudgeOutcome>> = vec![None; queries.len()];
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .filter_map(|w| {
                    std::thread::Builder::new()
                        .name(format!("judge-http-{w}"))
                        .spawn_scoped(s, work)
                        .map_err(|e| log::warn!("judge: could not start worker thread {w}: {e}"))
                        .ok()
                })
                .collect();
            let mut results = Vec::new();
            if handles.is_empty() {
                results.push(work());
            }
            results.extend(handles.into_iter().filter_map(|h| h.join().ok()));
            for (i, outcome) in results.into_iter().flatten() {
                outcomes[i] = Some(outcome);
            }
        });
        outcomes
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.unwrap_or_else(|| {
                    log::warn!("judge query {i} failed: its worker thread panicked");
                    JudgeOutcome::failed("judge worker thread panicked")
                })
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!("HTTP judge {} at {}", self.config.model, self.endpoint)
    }
}

/// A counting semaphore: the judge's request slots, shared by every thread that calls it.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

/// One held slot, given back when dropped.
struct Slot<'a>(&'a Slots);

impl Slots {
    fn new(count: usize) -> Self {
        Self {
            free: Mutex::new(count),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a free slot and takes it.
    fn acquire(&self) -> Slot<'_> {
        let mut free = self.lock();
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Slot(self)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.lock() += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_is_built_from_a_base_url() {
        assert_eq!(
            endpoint_url("http://127.0.0.1:8000/v1"),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("http://127.0.0.1:8000/v1/"),
            "http://127.0.0.1:8000/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("https://api.example.com/v1/chat/completions"),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("https://api.example.com/v1/chat/completions/"),
            "https://api.example.com/v1/chat/completions"
        );
        assert_eq!(
            endpoint_url("http://localhost:8000"),
            "http://localhost:8000/chat/completions"
        );
    }

    #[test]
    fn defaults_follow_the_reference_recipe() {
        let c = HttpJudgeConfig::new("http://h/v1", "m");
        assert_eq!(c.concurrency, 32);
        assert_eq!(c.timeout, Duration::from_secs(120));
        assert_eq!(c.max_retries, 5);
        assert_eq!(c.initial_backoff, Duration::from_secs(1));
        assert_eq!(c.max_backoff, Duration::from_secs(64));
        assert_eq!(c.max_tokens, None);
        assert_eq!(c.api_key, None);
    }

    fn invalid_message(config: HttpJudgeConfig) -> String {
        match HttpJudge::new(config) {
            Err(Error::Invalid(message)) => message,
            Err(other) => panic!("expected Error::Invalid, got {other}"),
            Ok(judge) => panic!("expected an error, got {}", judge.describe()),
        }
    }

    #[test]
    fn config_is_validated() {
        for url in [
            "127.0.0.1:8000/v1",
            "ftp://h/v1",
            "",
            "http://",
            "https:///v1",
        ] {
            let message = invalid_message(HttpJudgeConfig::new(url, "m"));
            assert!(message.starts_with("--judge-url:"), "{url}: {message}");
        }
        let message = invalid_message(HttpJudgeConfig::new("http://h/v1", " "));
        assert!(message.starts_with("--judge-model:"), "{message}");
        let mut c = HttpJudgeConfig::new("http://h/v1", "m");
        c.concurrency = 0;
        assert!(invalid_message(c).starts_with("--judge-concurrency:"));
        let mut c = HttpJudgeConfig::new("http://h/v1", "m");
        c.timeout = Duration::ZERO;
        assert!(invalid_message(c).starts_with("--judge-timeout:"));

        let judge = HttpJudge::new(HttpJudgeConfig::new("https://h:1/v1/", "qwen")).unwrap();
        assert_eq!(judge.endpoint(), "https://h:1/v1/chat/completions");
        assert_eq!(
            judge.describe(),
            "HTTP judge qwen at https://h:1/v1/chat/completions"
        );
    }

    #[test]
    fn debug_output_hides_the_api_key() {
        let mut c = HttpJudgeConfig::new("http://h/v1", "m");
        c.api_key = Some("sk-secret".into());
        let text = format!("{c:?}");
        assert!(!text.contains("sk-secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn request_body_carries_the_reference_prompts() {
        let mut c = HttpJudgeConfig::new("http://h/v1", "judge-model");
        let q = JudgeQuery {
            question: "Q?".into(),
            answer: "a".into(),
            gold: "b".into(),
        };
        let body = HttpJudge::new(c.clone()).unwrap().request_body(&q);
        assert_eq!(body["model"], "judge-model");
        assert_eq!(body["messages"][0]["role"], "system");
        assert_eq!(body["messages"][0]["content"], JUDGE_SYSTEM_PROMPT);
        assert_eq!(body["messages"][1]["role"], "user");
        assert_eq!(body["messages"][1]["content"], q.user_prompt());
        assert_eq!(body["temperature"], 0.0);
        assert_eq!(body["n"], 1);
        assert!(body.get("max_tokens").is_none());
        c.max_tokens = Some(256);
        let body = HttpJudge::new(c).unwrap().request_body(&q);
        assert_eq!(body["max_tokens"], 256);
    }

    #[test]
    fn replies_and_retry_after_are_parsed() {
        let ok =
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"x [[YES]]"}}]}"#;
        assert_eq!(reply_content(ok).unwrap(), "x [[YES]]");
        assert!(reply_content("<html>busy</html>")
            .unwrap_err()
            .contains("not JSON"));
        assert!(reply_content(r#"{"choices":[]}"#)
            .unwrap_err()
            .contains("choices[0].message.content"));
        assert!(reply_content(r#"{"choices":[{"message":{"content":null}}]}"#).is_err());
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(snippet(&"é".repeat(300)).chars().count(), SNIPPET_CHARS + 1);
    }
}
