//! A client for OpenAI-compatible chat-completions servers (vLLM, SGLang, llama.cpp, hosted APIs),
//! shared by the HTTP judge and the evaluation of served models: a connection pool, a bound on
//! requests in flight common to every caller, and retries with exponential backoff (honouring
//! `Retry-After`) when the server is busy or unreachable, and optionally a circuit breaker
//! ([`Breaker`]) that makes calls fail at once while the server is down.

mod breaker;

pub use breaker::{Breaker, BreakerConfig, Permit};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};

/// Path appended to a base URL such as `http://127.0.0.1:8000/v1`.
const CHAT_COMPLETIONS: &str = "/chat/completions";

/// Most characters of a server reply quoted in a failure detail.
const SNIPPET_CHARS: usize = 200;

/// Where a server is and how hard to try; `options` names the command-line flags in errors.
#[derive(Clone)]
pub struct ChatClientConfig {
    /// OpenAI-compatible base URL (`http://host:port/v1`) or the full `.../chat/completions` URL.
    pub url: String,
    /// Bearer token for servers that require one (`Authorization: Bearer KEY`).
    pub api_key: Option<String>,
    /// Most requests in flight at once, across every thread sharing the client.
    pub concurrency: usize,
    /// Limit on one request, from connecting to reading the whole reply.
    pub timeout: Duration,
    /// Retries after a 429, a 5xx or a transport error (so up to `max_retries + 1` attempts).
    pub max_retries: u32,
    /// Wait before the first retry; doubled before each further retry.
    pub initial_backoff: Duration,
    /// Cap on the wait between retries, also applied to a server's `Retry-After`.
    pub max_backoff: Duration,
    /// Circuit breaker over every attempt of the client; `None`: each request retries on its own.
    pub breaker: Option<BreakerConfig>,
}

impl std::fmt::Debug for ChatClientConfig {
    /// Like a derived `Debug`, but never prints the API key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClientConfig")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("concurrency", &self.concurrency)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .field("initial_backoff", &self.initial_backoff)
            .field("max_backoff", &self.max_backoff)
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// The command-line flags a [`ChatClientConfig`] came from, so that errors name them.
#[derive(Debug, Clone, Copy)]
pub struct OptionNames {
    /// The URL flag (`--judge-url`, `--endpoint`).
    pub url: &'static str,
    /// The concurrency flag.
    pub concurrency: &'static str,
    /// The timeout flag.
    pub timeout: &'static str,
}

impl ChatClientConfig {
    /// Checks the settings, naming the flag of the first bad one.
    fn validate(&self, names: OptionNames) -> Result<()> {
        let rest = self
            .url
            .strip_prefix("http://")
            .or_else(|| self.url.strip_prefix("https://"));
        match rest {
            None => {
                return Err(Error::Invalid(format!(
                    "{}: `{}` must start with http:// or https://",
                    names.url, self.url
                )))
            }
            Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                return Err(Error::Invalid(format!(
                    "{}: `{}` names no host",
                    names.url, self.url
                )))
            }
            Some(_) => {}
        }
        if self.concurrency == 0 {
            return Err(Error::Invalid(format!(
                "{}: must be at least 1",
                names.concurrency
            )));
        }
        if self.timeout.is_zero() {
            return Err(Error::Invalid(format!(
                "{}: must be longer than zero",
                names.timeout
            )));
        }
        Ok(())
    }
}

/// The chat-completions endpoint for a configured URL: a base URL gets `/chat/completions`
/// appended, a URL that already ends with it is kept; a trailing slash is dropped either way.
pub fn endpoint_url(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with(CHAT_COMPLETIONS) {
        url.to_string()
    } else {
        format!("{url}{CHAT_COMPLETIONS}")
    }
}

/// The useful part of a chat-completions reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatReply {
    /// `choices[0].message.content`.
    pub content: String,
    /// `choices[0].finish_reason` (`stop`, `length`, ...), when the server sent one.
    pub finish_reason: Option<String>,
    /// `usage.completion_tokens`, when the server sent it.
    pub completion_tokens: Option<usize>,
}

/// What one HTTP attempt came to.
enum Attempt {
    /// The parsed reply.
    Reply(ChatReply),
    /// A failure worth another try (429, 5xx, transport error), with the server's `Retry-After`.
    Retry(String, Option<Duration>),
    /// A failure that another try would repeat (other 4xx, malformed 200 reply).
    Fail(String),
}

/// A chat-completions client; one value is meant to be shared by every worker, so that its
/// connection pool and its bound on requests in flight are common to all callers.
pub struct ChatClient {
    config: ChatClientConfig,
    endpoint: String,
    agent: ureq::Agent,
    slots: Slots,
    breaker: Option<Breaker>,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatClient")
            .field("endpoint", &self.endpoint)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ChatClient {
    /// A client for `config` after checking it; connects lazily, so an unreachable server shows
    /// up as failed requests, not here.
    pub fn new(config: ChatClientConfig, names: OptionNames) -> Result<Self> {
        config.validate(names)?;
        let endpoint = endpoint_url(&config.url);
        if let Err(e) = endpoint.parse::<ureq::http::Uri>() {
            return Err(Error::Invalid(format!(
                "{}: `{}` is not a valid URL: {e}",
                names.url, config.url
            )));
        }
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .max_idle_connections(config.concurrency.max(10))
            .max_idle_connections_per_host(config.concurrency)
            .build();
        Ok(Self {
            breaker: config.breaker.map(|b| Breaker::new(endpoint.clone(), b)),
            endpoint,
            agent: ureq::Agent::new_with_config(agent_config),
            slots: Slots::new(config.concurrency),
            config,
        })
    }

    /// The settings this client runs with.
    pub fn config(&self) -> &ChatClientConfig {
        &self.config
    }

    /// The URL every request is POSTed to (`.../chat/completions`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The client's circuit breaker, when it has one.
    pub fn breaker(&self) -> Option<&Breaker> {
        self.breaker.as_ref()
    }

    /// POSTs `body`, retrying as configured; `label` names the request in logs. The error is the
    /// reason the request was given up (HTTP status and reply start, transport error, or the open
    /// circuit that refused it without sending).
    pub fn complete(&self, label: &str, body: &Value) -> std::result::Result<ChatReply, String> {
        self.complete_within(label, body, self.config.max_retries.saturating_add(1))
    }

    /// POSTs `body` once, without retries (a health check); errors as [`ChatClient::complete`].
    pub fn complete_once(
        &self,
        label: &str,
        body: &Value,
    ) -> std::result::Result<ChatReply, String> {
        self.complete_within(label, body, 1)
    }

    /// POSTs `body` in at most `attempts` attempts, waiting out the backoff between them; stops
    /// at once when the circuit breaker refuses an attempt or opens after one.
    fn complete_within(
        &self,
        label: &str,
        body: &Value,
        attempts: u32,
    ) -> std::result::Result<ChatReply, String> {
        let mut backoff = self.config.initial_backoff.min(self.config.max_backoff);
        let mut attempt = 1;
        loop {
            match self.attempt_guarded(body) {
                Err(refused) => return Err(refused),
                Ok(Attempt::Reply(reply)) => return Ok(reply),
                Ok(Attempt::Fail(reason)) => {
                    return Err(format!("{reason} (attempt {attempt}, not retried)"))
                }
                Ok(Attempt::Retry(reason, retry_after)) => {
                    if attempt >= attempts {
                        return Err(format!("{reason} (gave up after {attempt} attempts)"));
                    }
                    if let Some(open) = self
                        .breaker
                        .as_ref()
                        .and_then(|b| b.refused(Instant::now()))
                    {
                        return Err(format!("{reason} (attempt {attempt}, not retried: {open})"));
                    }
                    let wait = retry_after.unwrap_or(backoff).min(self.config.max_backoff);
                    log::debug!(
                        "{label}: {reason}; retry {attempt} of {} in {wait:?}",
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
        }
    }

    /// One attempt through the circuit breaker: refused without sending while it is open, else
    /// sent and its outcome reported (a retryable failure counts against the server, any reply
    /// that shows it is up, a 4xx included, for it).
    fn attempt_guarded(&self, body: &Value) -> std::result::Result<Attempt, String> {
        let Some(breaker) = &self.breaker else {
            return Ok(self.attempt(body));
        };
        let permit = breaker.admit(Instant::now())?;
        let outcome = self.attempt(body);
        match &outcome {
            Attempt::Retry(reason, _) => permit.failure(Instant::now(), reason),
            Attempt::Reply(_) | Attempt::Fail(_) => permit.success(Instant::now()),
        }
        Ok(outcome)
    }

    /// Runs `work(i, &items[i])` for every item on up to `concurrency` scoped threads, each
    /// taking the next item; `result[i]` answers `items[i]`. An item whose thread panicked gets
    /// `lost(i)`.
    pub fn run_all<T: Sync, R: Send>(
        &self,
        items: &[T],
        work: impl Fn(usize, &T) -> R + Sync,
        lost: impl Fn(usize) -> R,
    ) -> Vec<R> {
        let workers = self.config.concurrency.min(items.len());
        if workers <= 1 {
            return items.iter().enumerate().map(|(i, t)| work(i, t)).collect();
        }
        let next = AtomicUsize::new(0);
        let run = || {
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                done.push((i, work(i, item)));
            }
            done
        };
        let mut results: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .filter_map(|w| {
                    std::thread::Builder::new()
                        .name(format!("chat-http-{w}"))
                        .spawn_scoped(s, run)
                        .map_err(|e| log::warn!("could not start HTTP worker thread {w}: {e}"))
                        .ok()
                })
                .collect();
            let mut finished = Vec::new();
            if handles.is_empty() {
                finished.push(run());
            }
            finished.extend(handles.into_iter().filter_map(|h| h.join().ok()));
            for (i, r) in finished.into_iter().flatten() {
                results[i] = Some(r);
            }
        });
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| r.unwrap_or_else(|| lost(i)))
            .collect()
    }

    /// One POST, holding one of the client's request slots until the reply is read.
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
                Ok(text) => match parse_reply(&text) {
                    Ok(reply) => Attempt::Reply(reply),
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

/// The reply of a chat-completions response body, or why there is none.
pub fn parse_reply(text: &str) -> std::result::Result<ChatReply, String> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("reply is not JSON ({e}): {}", snippet(text)))?;
    let content = value
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!(
                "reply has no string choices[0].message.content: {}",
                snippet(text)
            )
        })?;
    Ok(ChatReply {
        content: content.to_string(),
        finish_reason: value
            .pointer("/choices/0/finish_reason")
            .and_then(Value::as_str)
            .map(str::to_string),
        completion_tokens: value
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64)
            .map(|n| n as usize),
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

/// A counting semaphore: the client's request slots, shared by every thread that calls it.
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
    fn replies_and_retry_after_are_parsed() {
        let ok = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"x [[YES]]"},"finish_reason":"stop"}],"usage":{"completion_tokens":7}}"#;
        let reply = parse_reply(ok).unwrap();
        assert_eq!(reply.content, "x [[YES]]");
        assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
        assert_eq!(reply.completion_tokens, Some(7));
        let bare = parse_reply(r#"{"choices":[{"message":{"content":"a"}}]}"#).unwrap();
        assert_eq!((bare.finish_reason, bare.completion_tokens), (None, None));
        assert!(parse_reply("<html>busy</html>")
            .unwrap_err()
            .contains("not JSON"));
        assert!(parse_reply(r#"{"choices":[]}"#)
            .unwrap_err()
            .contains("choices[0].message.content"));
        assert!(parse_reply(r#"{"choices":[{"message":{"content":null}}]}"#).is_err());
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        assert_eq!(parse_retry_after("-1"), None);
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(snippet(&"é".repeat(300)).chars().count(), SNIPPET_CHARS + 1);
    }

    #[test]
    fn config_errors_name_the_flags() {
        let names = OptionNames {
            url: "--endpoint",
            concurrency: "--endpoint-concurrency",
            timeout: "--endpoint-timeout",
        };
        let config = |url: &str| ChatClientConfig {
            url: url.into(),
            api_key: None,
            concurrency: 4,
            timeout: Duration::from_secs(1),
            max_retries: 0,
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            breaker: None,
        };
        let err = |c| ChatClient::new(c, names).unwrap_err().to_string();
        assert!(err(config("localhost:8000")).starts_with("--endpoint:"));
        assert!(err(ChatClientConfig {
            concurrency: 0,
            ..config("http://h/v1")
        })
        .starts_with("--endpoint-concurrency:"));
        let client = ChatClient::new(config("http://h:1/v1/"), names).unwrap();
        assert_eq!(client.endpoint(), "http://h:1/v1/chat/completions");
        let doubled = client.run_all(&[1, 2, 3, 4, 5], |i, x| (i, x * 2), |_| (0, 0));
        assert_eq!(doubled, vec![(0, 2), (1, 4), (2, 6), (3, 8), (4, 10)]);
    }
}
