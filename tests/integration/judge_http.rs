//! The HTTP judge against a real chat-completions server on loopback (tiny_http, served from
//! several threads): verdicts and request contents, the judge-wide concurrency bound, retries on
//! 429/5xx, timeouts, malformed replies, an unreachable server and config validation.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::server::{Reply, TestServer};

use longrl::reward::judge::{
    HttpJudge, HttpJudgeConfig, Judge, JudgeQuery, Verdict, JUDGE_SYSTEM_PROMPT,
};
use longrl::Error;
use serde_json::Value;

/// Fast-failing judge settings for a test server.
trait FastConfig {
    fn config(&self) -> HttpJudgeConfig;
}

impl FastConfig for TestServer {
    /// Fast-failing settings for this server: 10 ms backoff, 300 ms timeout.
    fn config(&self) -> HttpJudgeConfig {
        fast_config(&self.url)
    }
}

fn fast_config(url: &str) -> HttpJudgeConfig {
    let mut config = HttpJudgeConfig::new(url, "judge-model");
    config.concurrency = 4;
    config.timeout = Duration::from_millis(300);
    config.max_retries = 3;
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(40);
    config
}

fn query(i: usize) -> JudgeQuery {
    JudgeQuery {
        question: format!("Question {i}?"),
        answer: format!("answer {i}"),
        gold: format!("answer {i}"),
    }
}

/// The user message of a request.
fn user_content(body: &Value) -> &str {
    body["messages"][1]["content"].as_str().unwrap_or("")
}

/// The value after `label` on its own line of the user prompt.
fn field<'a>(prompt: &'a str, label: &str) -> &'a str {
    prompt
        .lines()
        .find_map(|line| line.strip_prefix(label))
        .unwrap_or("")
}

#[test]
fn verdicts_come_back_in_order_and_requests_follow_the_protocol() {
    let server = TestServer::start(8, |body, number| {
        let prompt = user_content(body);
        let (answer, gold) = (field(prompt, "Answer 1: "), field(prompt, "Answer 2: "));
        // Later requests answer sooner, so replies arrive out of order.
        let delay = Duration::from_millis(5 * (10 - number.min(10)) as u64);
        let reply = if answer == "unsure" {
            Reply::completion("I cannot tell.")
        } else if answer == gold {
            Reply::completion("Both say the same value. [[YES]]")
        } else {
            Reply::completion("They differ. [[NO]]")
        };
        reply.after(delay)
    });
    let queries: Vec<JudgeQuery> = (0..10)
        .map(|i| {
            let mut q = query(i);
            match i % 3 {
                0 => {}
                1 => q.gold = format!("other {i}"),
                _ => q.answer = "unsure".into(),
            }
            q
        })
        .collect();
    let mut config = server.config();
    config.api_key = Some("sk-test".into());
    config.max_tokens = Some(64);
    let judge = HttpJudge::new(config).unwrap();
    let outcomes = judge.judge(&queries);

    assert_eq!(outcomes.len(), queries.len());
    for (i, outcome) in outcomes.iter().enumerate() {
        let expected = [Verdict::Yes, Verdict::No, Verdict::Unparsed][i % 3];
        assert_eq!(outcome.verdict, expected, "query {i}: {outcome:?}");
    }
    assert_eq!(outcomes[2].detail.as_deref(), Some("I cannot tell."));
    assert_eq!(outcomes[0].detail, None);

    let seen = server.seen();
    assert_eq!(
        seen.len(),
        queries.len(),
        "one request per query, no retries"
    );
    let mut prompts: Vec<String> = seen.iter().map(|s| user_content(&s.body).into()).collect();
    let mut expected: Vec<String> = queries.iter().map(JudgeQuery::user_prompt).collect();
    prompts.sort();
    expected.sort();
    assert_eq!(prompts, expected);
    for s in &seen {
        assert_eq!(s.method, "POST");
        assert_eq!(s.path, "/v1/chat/completions");
        assert_eq!(s.authorization.as_deref(), Some("Bearer sk-test"));
        let b = &s.body;
        assert_eq!(b["model"], "judge-model");
        assert_eq!(b["temperature"].as_f64(), Some(0.0));
        assert_eq!(b["n"], 1);
        assert_eq!(b["max_tokens"], 64);
        let messages = b["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0]["role"], "system");
        assert_eq!(messages[0]["content"].as_str(), Some(JUDGE_SYSTEM_PROMPT));
        assert_eq!(messages[1]["role"], "user");
    }

    // Without a key or a token limit, neither is sent.
    let judge = HttpJudge::new(HttpJudgeConfig {
        url: format!("{}/", server.url),
        ..server.config()
    })
    .unwrap();
    assert_eq!(judge.judge(&[query(0)])[0].verdict, Verdict::Yes);
    let last = server.seen().pop().unwrap();
    assert_eq!(last.path, "/v1/chat/completions");
    assert_eq!(last.authorization, None);
    assert!(last.body.get("max_tokens").is_none(), "{}", last.body);
    assert!(judge.judge(&[]).is_empty());
}

#[test]
fn requests_in_flight_never_exceed_the_judge_wide_bound() {
    let server = TestServer::start(16, |_, _| {
        Reply::completion("[[YES]]").after(Duration::from_millis(100))
    });
    let mut config = server.config();
    config.concurrency = 3;
    config.timeout = Duration::from_secs(3);
    let judge = Arc::new(HttpJudge::new(config).unwrap());
    let queries: Vec<JudgeQuery> = (0..12).map(query).collect();

    let outcomes = judge.judge(&queries);
    assert!(outcomes.iter().all(|o| o.verdict == Verdict::Yes));
    assert_eq!(server.max_in_flight(), 3, "one batch, concurrency 3");

    server.reset_max_in_flight();
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let judge = judge.clone();
            let queries = queries.clone();
            thread::spawn(move || judge.judge(&queries))
        })
        .collect();
    for caller in callers {
        let outcomes = caller.join().unwrap();
        assert_eq!(outcomes.len(), 12);
        assert!(outcomes.iter().all(|o| o.verdict == Verdict::Yes));
    }
    assert_eq!(server.requests(), 36);
    let max = server.max_in_flight();
    assert!(
        max > 1 && max <= 3,
        "two callers sharing one judge: {max} requests in flight, bound 3"
    );
}

/// A server that answers `status` (with `retry_after` when given) to its first `failures`
/// requests and `[[YES]]` afterwards.
fn flaky_server(failures: usize, status: u16, retry_after: Option<&'static str>) -> TestServer {
    TestServer::start(2, move |_, number| {
        if number < failures {
            let reply = Reply::raw(status, "{\"error\":\"busy\"}");
            match retry_after {
                Some(seconds) => reply.header("Retry-After", seconds),
                None => reply,
            }
        } else {
            Reply::completion("[[YES]]")
        }
    })
}

#[test]
fn rate_limits_and_server_errors_are_retried() {
    // Retry-After: 0 is honoured over a 2 s backoff.
    let server = flaky_server(2, 429, Some("0"));
    let mut config = server.config();
    config.initial_backoff = Duration::from_secs(2);
    config.max_backoff = Duration::from_secs(2);
    let start = Instant::now();
    let outcome = &HttpJudge::new(config).unwrap().judge(&[query(0)])[0];
    assert_eq!(outcome.verdict, Verdict::Yes, "{outcome:?}");
    assert_eq!(server.requests(), 3);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );

    // Without Retry-After the (short) backoff applies.
    let server = flaky_server(3, 429, None);
    let outcome = &HttpJudge::new(server.config()).unwrap().judge(&[query(0)])[0];
    assert_eq!(outcome.verdict, Verdict::Yes, "{outcome:?}");
    assert_eq!(server.requests(), 4);

    // A long Retry-After is capped by max_backoff.
    let server = flaky_server(1, 429, Some("30"));
    let start = Instant::now();
    let outcome = &HttpJudge::new(server.config()).unwrap().judge(&[query(0)])[0];
    assert_eq!(outcome.verdict, Verdict::Yes, "{outcome:?}");
    assert_eq!(server.requests(), 2);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );

    let server = flaky_server(2, 503, None);
    let outcome = &HttpJudge::new(server.config()).unwrap().judge(&[query(0)])[0];
    assert_eq!(outcome.verdict, Verdict::Yes, "{outcome:?}");
    assert_eq!(server.requests(), 3);
}

#[test]
fn retries_run_out_and_client_errors_are_not_retried() {
    let server = flaky_server(usize::MAX, 503, None);
    let mut config = server.config();
    config.max_retries = 2;
    let outcome = &HttpJudge::new(config).unwrap().judge(&[query(0)])[0];
    assert_eq!(outcome.verdict, Verdict::Failed);
    let detail = outcome.detail.as_deref().unwrap();
    assert!(
        detail.contains("503") && detail.contains("3 attempts"),
        "{detail}"
    );
    assert_eq!(server.requests(), 3);

    let server = flaky_server(usize::MAX, 400, None);
    let outcome = &HttpJudge::new(server.config()).unwrap().judge(&[query(0)])[0];
    assert_eq!(outcome.verdict, Verdict::Failed);
    let detail = outcome.detail.as_deref().unwrap();
    assert!(detail.contains("400"), "{detail}");
    assert_eq!(server.requests(), 1, "a 400 is not retried");
}

#[test]
fn a_slow_server_times_out_and_is_retried() {
    let server = TestServer::start(4, |_, _| {
        Reply::completion("[[YES]]").after(Duration::from_millis(1000))
    });
    let mut config = server.config();
    config.timeout = Duration::from_millis(300);
    config.max_retries = 1;
    let start = Instant::now();
    let outcome = &HttpJudge::new(config).unwrap().judge(&[query(0)])[0];
    let elapsed = start.elapsed();
    assert_eq!(outcome.verdict, Verdict::Failed, "{outcome:?}");
    let detail = outcome.detail.as_deref().unwrap();
    assert!(detail.contains("timeout"), "{detail}");
    assert!(detail.contains("2 attempts"), "{detail}");
    assert_eq!(server.requests(), 2);
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
}

#[test]
fn malformed_replies_fail_without_retry() {
    let server = TestServer::start(2, |_, _| Reply::raw(200, "<html>not json</html>"));
    let outcome = &HttpJudge::new(server.config()).unwrap().judge(&[query(0)])[0];
    assert_eq!(outcome.verdict, Verdict::Failed);
    let detail = outcome.detail.as_deref().unwrap();
    assert!(detail.contains("not JSON"), "{detail}");
    assert_eq!(server.requests(), 1);

    let server = TestServer::start(2, |_, _| {
        Reply::raw(
            200,
            r#"{"id":"chatcmpl-test","object":"chat.completion","choices":[]}"#,
        )
    });
    let outcome = &HttpJudge::new(server.config()).unwrap().judge(&[query(0)])[0];
    assert_eq!(outcome.verdict, Verdict::Failed);
    let detail = outcome.detail.as_deref().unwrap();
    assert!(detail.contains("choices[0].message.content"), "{detail}");
    assert_eq!(server.requests(), 1);
}

#[test]
fn an_unreachable_server_fails_every_query_quickly() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut config = fast_config(&format!("http://127.0.0.1:{port}/v1"));
    config.max_retries = 2;
    let judge = HttpJudge::new(config).unwrap();
    let queries: Vec<JudgeQuery> = (0..6).map(query).collect();
    let start = Instant::now();
    let outcomes = judge.judge(&queries);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(outcomes.len(), queries.len());
    for outcome in &outcomes {
        assert_eq!(outcome.verdict, Verdict::Failed);
        let detail = outcome.detail.as_deref().unwrap();
        assert!(detail.contains("3 attempts"), "{detail}");
    }
}

#[test]
fn bad_settings_are_rejected() {
    let message = |config: HttpJudgeConfig| match HttpJudge::new(config) {
        Err(Error::Invalid(message)) => message,
        Err(other) => panic!("expected Error::Invalid, got {other}"),
        Ok(judge) => panic!("expected an error, got {}", judge.describe()),
    };
    let m = message(HttpJudgeConfig::new("localhost:8000/v1", "judge-model"));
    assert!(m.contains("--judge-url"), "{m}");
    let m = message(HttpJudgeConfig::new("http://127.0.0.1:8000/v1", ""));
    assert!(m.contains("--judge-model"), "{m}");
    let mut config = HttpJudgeConfig::new("http://127.0.0.1:8000/v1", "judge-model");
    config.concurrency = 0;
    let m = message(config);
    assert!(m.contains("--judge-concurrency"), "{m}");

    let judge = HttpJudge::new(HttpJudgeConfig::new(
        "http://127.0.0.1:8000/v1",
        "judge-model",
    ))
    .unwrap();
    assert_eq!(
        judge.describe(),
        "HTTP judge judge-model at http://127.0.0.1:8000/v1/chat/completions"
    );
}
