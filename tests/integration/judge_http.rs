//! The HTTP judge against a real chat-completions server on loopback (tiny_http, served from
//! several threads): verdicts and request contents, the judge-wide concurrency bound, retries on
//! 429/5xx, timeouts, malformed replies, an unreachable server and config validation; and a judge
//! outage (refused, 500, hanging, recovering): the circuit breaker, the `stop` / `rule_only`
//! policy, the health check at start, and an RL run whose judge dies.

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::server::{Reply, TestServer};
use crate::common::{model_dir, run_section};

use burn::backend::{Autodiff, Flex};
use longrl::config::ModelSection;
use longrl::openai::BreakerConfig;
use longrl::reward::judge::{
    HttpJudge, HttpJudgeConfig, Judge, JudgeFailure, JudgeQuery, OutagePolicy, Verdict,
    JUDGE_SYSTEM_PROMPT,
};
use longrl::reward::{
    HybridConfig, HybridReward, RewardItem, RewardOutput, RewardSection, RewardStats, Rewarder,
    TaskKind,
};
use longrl::rl::{self, RlConfig};
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
    // No failure is tested here: a generous timeout keeps a loaded machine from causing retries.
    config.timeout = Duration::from_secs(10);
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
    // Without the circuit breaker each query retries on its own (with it: see below).
    config.breaker = None;
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

// --- A judge outage: the circuit breaker, the failure policy and the health check at start. ---

/// Settings whose breaker opens after `failures` failed attempts for `cooldown`, with five retries
/// per query (so, without the breaker, 6 attempts per query).
fn breaker_config(url: &str, failures: u32, cooldown: Duration) -> HttpJudgeConfig {
    let mut config = fast_config(url);
    config.max_retries = 5;
    config.timeout = Duration::from_millis(200);
    config.breaker = Some(BreakerConfig { failures, cooldown });
    config
}

/// A port that refuses connections (bound, then let go).
fn refused_url() -> String {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    format!("http://127.0.0.1:{port}/v1")
}

/// A server that accepts connections and never answers; returns its URL and the count of
/// connections it accepted.
fn hanging_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    (url, accepted)
}

/// Items the rule scores 0 with a parsed answer, so each asks the judge one distinct query.
fn judged_items(answers: &[String]) -> Vec<RewardItem<'_>> {
    answers
        .iter()
        .map(|a| RewardItem {
            task: TaskKind::Qa,
            response: a,
            ground_truth: "the gold",
            question: Some("Which one?"),
            prompt: None,
            response_tokens: None,
            response_ids: &[],
        })
        .collect()
}

fn answers(n: usize, tag: &str) -> Vec<String> {
    (0..n)
        .map(|i| format!("<think>t</think>Therefore, the answer is {tag} {i}"))
        .collect()
}

fn hybrid(judge: HttpJudge, on_failure: JudgeFailure, max_outage: Duration) -> HybridReward {
    HybridReward::new(
        HybridConfig {
            outage: OutagePolicy {
                on_failure,
                max_outage,
                ..OutagePolicy::default()
            },
            ..HybridConfig::default()
        },
        Some(Arc::new(judge)),
    )
}

#[test]
fn the_breaker_opens_on_a_server_error_and_later_queries_fail_without_a_request() {
    let server = TestServer::start(4, |_, _| Reply::raw(500, "{\"error\":\"boom\"}"));
    let judge = HttpJudge::new(breaker_config(&server.url, 5, Duration::from_secs(60))).unwrap();
    let queries: Vec<JudgeQuery> = (0..32).map(query).collect();
    let outcomes = judge.judge(&queries);
    assert!(outcomes.iter().all(|o| o.verdict == Verdict::Failed));
    // The 5 failures that open it, and at most the other 3 attempts already in flight; without
    // the breaker: 32 queries x 6 attempts = 192.
    let requests = server.requests();
    assert!((5..=8).contains(&requests), "{requests} requests");
    let refused = outcomes
        .iter()
        .filter(|o| o.detail.as_deref().unwrap().contains("circuit open for"))
        .count();
    assert!(refused >= 32 - 8, "{refused} refused: {outcomes:?}");
    let detail = outcomes.iter().find_map(|o| o.detail.clone()).unwrap();
    assert!(detail.contains("HTTP 500"), "{detail}");
    assert!(judge
        .retry_in()
        .is_some_and(|d| d > Duration::from_secs(50)));

    // The next batch sends nothing while the circuit is open.
    assert!(judge
        .judge(&queries)
        .iter()
        .all(|o| o.verdict == Verdict::Failed));
    assert_eq!(server.requests(), requests);
}

#[test]
fn the_breaker_opens_on_refused_connections() {
    let judge = HttpJudge::new(breaker_config(&refused_url(), 3, Duration::from_secs(60))).unwrap();
    let queries: Vec<JudgeQuery> = (0..32).map(query).collect();
    let start = Instant::now();
    let outcomes = judge.judge(&queries);
    let refused = outcomes
        .iter()
        .filter(|o| o.detail.as_deref().unwrap().contains("circuit open for"))
        .count();
    assert!(refused >= 32 - 3 - 4, "{refused} refused: {outcomes:?}");
    assert!(outcomes.iter().all(|o| o.verdict == Verdict::Failed));
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn the_breaker_opens_after_one_round_of_timeouts_on_a_hanging_server() {
    let (url, accepted) = hanging_server();
    let mut config = breaker_config(&url, 5, Duration::from_secs(60));
    config.concurrency = 8;
    let judge = HttpJudge::new(config).unwrap();
    let queries: Vec<JudgeQuery> = (0..32).map(query).collect();
    let start = Instant::now();
    let outcomes = judge.judge(&queries);
    assert!(outcomes.iter().all(|o| o.verdict == Verdict::Failed));
    // One round of 8 timed-out attempts opens it; the retries and the other queries fail at once
    // (without the breaker: 32 x 6 = 192 connections, each waiting for its timeout).
    let connections = accepted.load(Ordering::SeqCst);
    assert!((5..=16).contains(&connections), "{connections} connections");
    let timeouts = outcomes
        .iter()
        .filter(|o| o.detail.as_deref().unwrap().contains("timeout"))
        .count();
    assert!(timeouts >= 5, "{outcomes:?}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_recovered_server_closes_the_breaker_and_stop_waits_out_the_outage() {
    // The first 5 requests fail (the breaker opens), then the server answers again.
    let server = flaky_server(5, 503, None);
    let config = breaker_config(&server.url, 5, Duration::from_millis(100));
    let reward = hybrid(
        HttpJudge::new(config).unwrap(),
        JudgeFailure::Stop,
        Duration::from_secs(60),
    );
    let texts = answers(12, "recovered");
    let (out, stats) = reward.score_batch(&judged_items(&texts)).unwrap();
    assert!(
        out.iter()
            .all(|o| o.verdict == Some(Verdict::Yes) && o.score == 1.0),
        "{out:?}"
    );
    assert_eq!((stats.judge_failures, stats.judge_calls), (0, 12));
    // The failures that opened it, the attempts in flight then, one probe, one answer per query.
    let requests = server.requests();
    assert!((5 + 12..=5 + 3 + 1 + 12).contains(&requests), "{requests}");
    // Closed: the next batch goes straight through.
    let texts = answers(4, "after");
    let (out, _) = reward.score_batch(&judged_items(&texts)).unwrap();
    assert!(out.iter().all(|o| o.verdict == Some(Verdict::Yes)));
    assert_eq!(server.requests(), requests + 4);
}

#[test]
fn stop_fails_the_batch_after_the_bounded_wait_naming_the_judge() {
    let server = TestServer::start(4, |_, _| Reply::raw(500, "down"));
    let config = breaker_config(&server.url, 5, Duration::from_millis(50));
    let endpoint = HttpJudge::new(config.clone())
        .unwrap()
        .endpoint()
        .to_string();
    let reward = hybrid(
        HttpJudge::new(config).unwrap(),
        JudgeFailure::Stop,
        Duration::from_millis(300),
    );
    let texts = answers(16, "x");
    let e = reward.score_batch(&judged_items(&texts)).unwrap_err();
    assert!(matches!(e, Error::Judge(_)), "{e}");
    let e = e.to_string();
    for part in [
        endpoint.as_str(),
        "has been failing for",
        "HTTP 500",
        "rl.reward.judge_max_outage_s",
        "judge_failure = \"rule_only\"",
    ] {
        assert!(e.contains(part), "{part}: {e}");
    }
    // The opening failures and attempts in flight, then about one probe per 50 ms cool-down.
    let requests = server.requests();
    assert!(requests <= 8 + 10, "{requests} requests");
}

#[test]
fn rule_only_scores_with_the_rule_counts_failures_and_writes_error() {
    let server = TestServer::start(4, |_, _| Reply::raw(502, "bad gateway"));
    let config = breaker_config(&server.url, 5, Duration::from_secs(60));
    let reward = hybrid(
        HttpJudge::new(config).unwrap(),
        JudgeFailure::RuleOnly,
        Duration::ZERO,
    );
    let texts = answers(16, "y");
    let (out, stats) = reward.score_batch(&judged_items(&texts)).unwrap();
    for o in &out {
        assert_eq!((o.score, o.rule, o.judge), (0.0, 0.0, None), "{o:?}");
        assert_eq!(o.verdict, Some(Verdict::Failed));
        let written = serde_json::to_value(o).unwrap();
        assert_eq!(written["verdict"], "error");
        assert!(written["judge"].is_null());
    }
    assert_eq!(stats.judge_failures, 16);
    let requests = server.requests();
    assert!((5..=8).contains(&requests), "{requests}");
    // While the circuit is open, a batch costs no request and no wait.
    let texts = answers(16, "z");
    let (_, stats) = reward.score_batch(&judged_items(&texts)).unwrap();
    assert_eq!(stats.judge_failures, 16);
    assert_eq!(server.requests(), requests);
}

/// `[rl.reward]` with a judge at `url`, a tiny outage bound and a fast breaker.
fn reward_section(url: &str, on_failure: JudgeFailure) -> RewardSection {
    RewardSection {
        judge_url: Some(url.into()),
        judge_model: Some("judge-model".into()),
        judge_failure: on_failure,
        judge_max_outage_s: 0.3,
        judge_breaker_failures: 2,
        judge_breaker_cooldown_s: 0.05,
        judge_timeout_s: 2.0,
        judge_retries: 1,
        ..RewardSection::default()
    }
}

#[test]
fn the_health_check_at_start_refuses_a_dead_judge_under_stop() {
    let url = refused_url();
    let e = reward_section(&url, JudgeFailure::Stop)
        .build::<Flex>(8, &Default::default())
        .err()
        .expect("a dead judge is refused at start")
        .to_string();
    assert!(e.starts_with("rl.reward.judge_url:"), "{e}");
    assert!(e.contains(&format!("{url}/chat/completions")), "{e}");
    assert!(e.contains("did not answer a test query"), "{e}");
    assert!(e.contains("rl.reward.judge_failure = \"rule_only\""), "{e}");
    // Under rule_only: a warning, and the reward is built.
    assert!(reward_section(&url, JudgeFailure::RuleOnly)
        .build::<Flex>(8, &Default::default())
        .is_ok());

    // One attempt, no retries; a server that answers passes.
    let server = TestServer::start(2, |_, _| Reply::raw(503, "loading"));
    let e = reward_section(&server.url, JudgeFailure::Stop)
        .build::<Flex>(8, &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("503"), "{e}");
    assert_eq!(server.requests(), 1);
    let server = TestServer::start(2, |_, _| Reply::completion("[[YES]]"));
    assert!(reward_section(&server.url, JudgeFailure::Stop)
        .build::<Flex>(8, &Default::default())
        .is_ok());
    assert_eq!(server.requests(), 1);

    // The settings are checked, naming the field.
    let mut bad = reward_section(&server.url, JudgeFailure::Stop);
    bad.judge_breaker_failures = 0;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.starts_with("rl.reward.judge_breaker_failures:"), "{e}");
    let mut bad = reward_section(&server.url, JudgeFailure::Stop);
    bad.judge_max_outage_s = -1.0;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.starts_with("rl.reward.judge_max_outage_s:"), "{e}");
    let parsed: RewardSection =
        toml::from_str("judge_failure = \"rule_only\"\njudge_breaker_cooldown_s = 5.0\n").unwrap();
    assert_eq!(parsed.judge_failure, JudgeFailure::RuleOnly);
    assert_eq!(parsed.judge_breaker_failures, 5);
    assert!(toml::from_str::<RewardSection>("judge_failure = \"ignore\"\n").is_err());
}

/// The hybrid reward with an HTTP judge asked about each response's token ids (the tiny model
/// writes no answer the rule could parse, so every response is judged); from call `dies_at` on,
/// the judge server answers 500.
struct JudgedIds {
    inner: Arc<dyn Rewarder>,
    calls: AtomicUsize,
    dies_at: usize,
    dead: Arc<AtomicBool>,
}

impl Rewarder for JudgedIds {
    fn reward(&self, items: &[RewardItem<'_>]) -> longrl::Result<(Vec<RewardOutput>, RewardStats)> {
        if self.calls.fetch_add(1, Ordering::SeqCst) >= self.dies_at {
            self.dead.store(true, Ordering::SeqCst);
        }
        let texts: Vec<String> = items
            .iter()
            .map(|it| {
                format!(
                    "<think>t</think>Therefore, the answer is {:?}",
                    it.response_ids
                )
            })
            .collect();
        let judged: Vec<RewardItem<'_>> = items
            .iter()
            .zip(&texts)
            .map(|(it, text)| RewardItem {
                task: TaskKind::Qa,
                response: text,
                ground_truth: "gold",
                question: Some("Which ids?"),
                prompt: None,
                response_tokens: None,
                response_ids: it.response_ids,
            })
            .collect();
        self.inner.reward(&judged)
    }
}

#[test]
fn an_rl_run_whose_judge_dies_stops_with_its_last_checkpoint_intact_and_resumes() {
    let dead = Arc::new(AtomicBool::new(false));
    let gone = dead.clone();
    let server = TestServer::start(4, move |_, number| {
        if gone.load(Ordering::SeqCst) {
            Reply::raw(500, "judge crashed")
        } else if number % 2 == 0 {
            Reply::completion("[[YES]]")
        } else {
            Reply::completion("[[NO]]")
        }
    });
    let data = tempfile::tempdir().unwrap();
    let prompts = data.path().join("prompts.jsonl");
    let lines: String = (0..4)
        .map(|i| {
            let line = serde_json::json!({"id": format!("p{i}"), "task": "qa", "prompt": format!("Question {i}: say something."), "answer": "gold"});
            format!("{line}\n")
        })
        .collect();
    std::fs::write(&prompts, lines).unwrap();
    let mut cfg = RlConfig {
        train_file: prompts,
        max_steps: 3,
        train_batch_size: 2,
        num_generations: 2,
        temperature: 1.0,
        top_p: 1.0,
        max_response_length: 6,
        dynamic_sampling: false,
        ppo_mini_batch_size: 2,
        micro_batch_tokens: 256,
        ..RlConfig::default()
    };
    cfg.reward = reward_section(&server.url, JudgeFailure::Stop);
    let out = tempfile::tempdir().unwrap();
    let run = run_section(out.path(), 3, 1);
    let model = ModelSection::new(model_dir("tiny-qwen2-chatml"));
    let train = |dies_at: usize, resume: bool| {
        let inner = cfg
            .reward
            .build::<Flex>(cfg.max_response_length, &Default::default());
        let rewarder = JudgedIds {
            inner: inner.unwrap(),
            calls: AtomicUsize::new(0),
            dies_at,
            dead: dead.clone(),
        };
        let rewarder: Arc<dyn Rewarder> = Arc::new(rewarder);
        rl::train::<Autodiff<Flex>>(
            &model,
            &run,
            &cfg,
            Some(rewarder),
            resume,
            Default::default(),
        )
    };

    // Step 1 is judged; the judge dies before step 2, whose update is never applied.
    let e = train(1, false).expect_err("the run stops").to_string();
    assert!(
        e.contains("has been failing for") && e.contains(&server.url),
        "{e}"
    );
    assert!(server.requests() > 2, "the judge was asked at step 1");
    let checkpoints = out.path().join("checkpoints");
    let latest = std::fs::read_to_string(checkpoints.join("latest")).unwrap();
    assert_eq!(latest.trim(), "step-00000001");
    assert!(!checkpoints.join("step-00000002").exists());
    assert!(!out.path().join("final").exists());
    let records = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 1, "{records}");

    // The judge is back: the run resumes from its checkpoint and finishes.
    dead.store(false, Ordering::SeqCst);
    let summary = train(usize::MAX, true).unwrap();
    assert!(summary.final_dir.join("config.json").exists());
    let records = std::fs::read_to_string(out.path().join("metrics.jsonl")).unwrap();
    assert_eq!(records.lines().count(), 3, "{records}");
}

#[test]
fn the_cli_refuses_a_dead_judge_at_start_or_writes_error_verdicts_under_rule_only() {
    let dir = tempfile::tempdir().unwrap();
    let url = refused_url();
    let longrl = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_longrl"))
            .args(args)
            .output()
            .unwrap()
    };

    // `longrl rl`: refused before any work, exit status non-zero.
    std::fs::write(
        dir.path().join("docs.jsonl"),
        "{\"id\": \"a\", \"data_source\": \"docmath_v1\", \"document\": \"Revenue was 12.\", \"question\": \"Revenue?\", \"answer\": \"12\"}\n",
    )
    .unwrap();
    let config = dir.path().join("rl.toml");
    let run_dir = dir.path().join("run");
    std::fs::write(
        &config,
        format!(
            "[model]\npath = {:?}\n\n[run]\nrun_dir = {:?}\nprogress = false\n\n[rl]\ntrain_file = \"docs.jsonl\"\nmax_steps = 1\ntrain_batch_size = 1\nnum_generations = 2\nmax_response_length = 4\nppo_mini_batch_size = 1\n\n[rl.reward]\njudge_url = {url:?}\njudge_model = \"judge-model\"\n",
            model_dir("tiny-qwen2-chatml"),
            run_dir,
        ),
    )
    .unwrap();
    let out = longrl(&[
        "--device",
        "flex",
        "rl",
        "--config",
        config.to_str().unwrap(),
    ]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(e.contains("did not answer a test query"), "{e}");
    assert!(e.contains("rl.reward.judge_failure = \"rule_only\""), "{e}");
    assert!(!run_dir.join("metrics.jsonl").exists());

    // `longrl reward`: refused under the default `stop`; under rule_only each judged line says
    // `"verdict": "error"`, `"judge": null` and scores with the rule.
    let input = dir.path().join("r.jsonl");
    std::fs::write(
        &input,
        "{\"task\": \"qa\", \"response\": \"<think>t</think>Therefore, the answer is Paris\", \"ground_truth\": \"Lyon\"}\n\
         {\"task\": \"qa\", \"response\": \"<think>t</think>Therefore, the answer is Lyon\", \"ground_truth\": \"Lyon\"}\n",
    )
    .unwrap();
    let input = input.to_str().unwrap();
    let judge = ["--judge-url", &url, "--judge-model", "judge-model"];
    let out = longrl(&[&["reward", "--input", input][..], &judge].concat());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{e}");
    assert!(
        e.contains("--judge-url:") && e.contains("--judge-failure rule_only"),
        "{e}"
    );
    let out = longrl(
        &[
            &["reward", "--input", input, "--judge-failure", "rule_only"][..],
            &judge,
        ]
        .concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["verdict"], "error", "{}", lines[0]);
    assert!(lines[0]["judge"].is_null());
    assert_eq!(lines[0]["score"], 0.0);
    assert_eq!(lines[1]["verdict"], Value::Null, "the rule was enough");
    assert_eq!(lines[1]["score"], 1.0);
}
