//! A judge behind any OpenAI-compatible chat-completions server (vLLM, SGLang, llama.cpp, a hosted
//! API): one request per query, many in flight at once, retried with exponential backoff when the
//! server is busy or unreachable, behind a circuit breaker that makes queries fail at once while
//! the server is down (the transport is [`crate::openai::ChatClient`]).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{Judge, JudgeOutcome, JudgeQuery, JUDGE_SYSTEM_PROMPT};
use crate::error::{Error, Result};
use crate::openai::{BreakerConfig, ChatClient, ChatClientConfig, OptionNames};

/// The flags an [`HttpJudgeConfig`] comes from, named in its errors.
const JUDGE_OPTIONS: OptionNames = OptionNames {
    url: "--judge-url",
    concurrency: "--judge-concurrency",
    timeout: "--judge-timeout",
};

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
    /// Circuit breaker over all the judge's attempts; `None`: every query retries on its own.
    pub breaker: Option<BreakerConfig>,
}

impl HttpJudgeConfig {
    /// Settings for `model` at `url` with the QwenLong-L1 defaults: 32 requests in flight, 120 s
    /// timeout, 5 retries with backoff doubling from 1 s up to 64 s, the server's token limit, and
    /// a circuit breaker that opens after 5 failed attempts in a row for 30 s.
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
            breaker: Some(BreakerConfig::default()),
        }
    }

    /// The transport settings of this judge.
    fn client_config(&self) -> ChatClientConfig {
        ChatClientConfig {
            url: self.url.clone(),
            api_key: self.api_key.clone(),
            concurrency: self.concurrency,
            timeout: self.timeout,
            max_retries: self.max_retries,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            breaker: self.breaker,
        }
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
            .field("breaker", &self.breaker)
            .finish()
    }
}

/// A judge that asks an OpenAI-compatible chat-completions server.
///
/// One value is meant to be shared (e.g. in an `Arc`) by every worker: its connection pool and its
/// bound on requests in flight are common to all callers of [`Judge::judge`].
pub struct HttpJudge {
    config: HttpJudgeConfig,
    client: ChatClient,
}

impl std::fmt::Debug for HttpJudge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpJudge")
            .field("endpoint", &self.client.endpoint())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl HttpJudge {
    /// A judge for `config` after checking it (URL scheme and host, model name, concurrency,
    /// timeout); connects lazily, so an unreachable server shows up as failed verdicts, not here.
    pub fn new(config: HttpJudgeConfig) -> Result<Self> {
        if config.model.trim().is_empty() {
            return Err(Error::Invalid(
                "--judge-model: the judge model name must not be empty".into(),
            ));
        }
        let client = ChatClient::new(config.client_config(), JUDGE_OPTIONS)?;
        Ok(Self { config, client })
    }

    /// The settings this judge runs with.
    pub fn config(&self) -> &HttpJudgeConfig {
        &self.config
    }

    /// The URL every request is POSTed to (`.../chat/completions`).
    pub fn endpoint(&self) -> &str {
        self.client.endpoint()
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

    /// Asks about one query, retrying as configured; never fails, a lost call is `Failed` (logged
    /// at debug level: the reward logs an outage once, the breaker its state changes).
    fn judge_one(&self, index: usize, query: &JudgeQuery) -> JudgeOutcome {
        match self
            .client
            .complete(&format!("judge query {index}"), &self.request_body(query))
        {
            Ok(reply) => JudgeOutcome::from_reply(&reply.content),
            Err(reason) => {
                log::debug!(
                    "judge query {index} failed at {}: {reason}",
                    self.client.endpoint()
                );
                JudgeOutcome::failed(reason)
            }
        }
    }
}

impl Judge for HttpJudge {
    /// Runs the batch on up to `concurrency` scoped threads, each taking the next unanswered query;
    /// the judge-wide slots keep the requests in flight within `concurrency` across all callers.
    fn judge(&self, queries: &[JudgeQuery]) -> Vec<JudgeOutcome> {
        self.client.run_all(
            queries,
            |i, q| self.judge_one(i, q),
            |i| {
                log::warn!("judge query {i} failed: its worker thread panicked");
                JudgeOutcome::failed("judge worker thread panicked")
            },
        )
    }

    fn describe(&self) -> String {
        format!(
            "HTTP judge {} at {}",
            self.config.model,
            self.client.endpoint()
        )
    }

    /// The breaker's remaining cool-down while its circuit is open.
    fn retry_in(&self) -> Option<Duration> {
        self.client.breaker()?.retry_in(Instant::now())
    }

    /// One query whose answers are equal, sent once without retries; any chat reply passes (its
    /// verdict does not matter), an error status, a transport error or a malformed reply fails.
    fn check(&self) -> std::result::Result<(), String> {
        let query = JudgeQuery {
            question: "What is 1 + 1?".into(),
            answer: "2".into(),
            gold: "2".into(),
        };
        self.client
            .complete_once("judge health check", &self.request_body(&query))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.breaker, Some(BreakerConfig::default()));
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
}
