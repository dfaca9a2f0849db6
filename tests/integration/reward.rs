//! Rewards: the rule-verifier table (`tests/data/reward_rules.jsonl`, whose expectations
//! `scripts/check_reward_rules.py` checks against the QwenLong-L1 reference code), the rule options,
//! the hybrid's judge policy, cache and counters with a scripted judge, and the local judge end to
//! end on the tiny model.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::backend::Flex;
use common::{model_dir, root};
use longrl::reward::judge::{LocalJudge, LocalJudgeConfig, OutagePolicy};
use longrl::reward::rule::{self, RuleOptions, TaskKind};
use longrl::reward::{
    HybridConfig, HybridReward, Judge, JudgeFailure, JudgeOutcome, JudgeQuery, OverlongConfig,
    RewardItem, Verdict,
};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Case {
    id: String,
    data_source: String,
    response: String,
    ground_truth: String,
    score: f64,
    pred: Option<String>,
    note: String,
}

fn cases() -> Vec<Case> {
    let path = root().join("tests/data/reward_rules.jsonl");
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), i + 1))
        })
        .collect()
}

#[test]
fn rule_table_matches_the_reference() {
    let cases = cases();
    let mut per_task = std::collections::HashMap::new();
    let mut failures = Vec::new();
    for c in &cases {
        let task = TaskKind::from_data_source(&c.data_source).unwrap();
        *per_task.entry(task).or_insert(0) += 1;
        let r = rule::score(task, &c.response, &c.ground_truth, &RuleOptions::default());
        if r.score != c.score || r.pred != c.pred {
            failures.push(format!(
                "{} ({}): got score {} pred {:?}, expected score {} pred {:?}",
                c.id, c.note, r.score, r.pred, c.score, c.pred
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 150, "only {} cases", cases.len());
    for task in [TaskKind::Qa, TaskKind::DocMath, TaskKind::MultipleChoice] {
        assert!(
            per_task.get(&task).copied().unwrap_or(0) >= 30,
            "{task}: {per_task:?}"
        );
        for s in [0.0, 1.0] {
            assert!(
                cases
                    .iter()
                    .any(|c| c.score == s
                        && TaskKind::from_data_source(&c.data_source).unwrap() == task),
                "{task} has no case scoring {s}"
            );
        }
    }
}

#[test]
fn options_relax_the_reference() {
    let strict = RuleOptions::default();
    let lenient = RuleOptions {
        require_think: false,
        case_insensitive: true,
        ..RuleOptions::default()
    };
    let qa = "<think>x</think>The answer is Paris.";
    assert_eq!(rule::score(TaskKind::Qa, qa, "Paris", &strict).score, 0.0);
    assert_eq!(rule::score(TaskKind::Qa, qa, "Paris", &lenient).score, 1.0);
    let mc = "<think>x</think>the correct answer is (c)";
    assert_eq!(
        rule::score(TaskKind::MultipleChoice, mc, "C", &strict).score,
        0.0
    );
    assert_eq!(
        rule::score(TaskKind::MultipleChoice, mc, "C", &lenient).score,
        1.0
    );
    let no_think = "Therefore, the answer is 42.";
    assert_eq!(
        rule::score(TaskKind::DocMath, no_think, "42", &strict).score,
        0.0
    );
    let r = rule::score(TaskKind::DocMath, no_think, "42", &lenient);
    assert_eq!((r.score, r.pred.as_deref()), (1.0, Some("42")));
    let no_eos = RuleOptions {
        eos_suffixes: vec![],
        ..RuleOptions::default()
    };
    let with_eos = "<think>x</think>Therefore, the answer is 7<|im_end|>";
    assert_eq!(
        rule::score(TaskKind::DocMath, with_eos, "7", &strict).score,
        1.0
    );
    assert_eq!(
        rule::extract_answer_text(with_eos, &no_eos).as_deref(),
        Some("Therefore, the answer is 7<|im_end|>")
    );
    assert_eq!(
        rule::score(TaskKind::Qa, with_eos, "7", &strict)
            .pred
            .as_deref(),
        Some("7")
    );
}

/// A judge that answers from a script and records what it was asked.
struct Scripted {
    reply: fn(&JudgeQuery) -> JudgeOutcome,
    asked: Mutex<Vec<JudgeQuery>>,
    calls: AtomicUsize,
}

impl Scripted {
    fn new(reply: fn(&JudgeQuery) -> JudgeOutcome) -> Arc<Self> {
        Arc::new(Self {
            reply,
            asked: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
        })
    }
}

impl Judge for Scripted {
    fn judge(&self, queries: &[JudgeQuery]) -> Vec<JudgeOutcome> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.asked.lock().unwrap().extend(queries.iter().cloned());
        queries.iter().map(self.reply).collect()
    }

    fn describe(&self) -> String {
        "scripted".into()
    }
}

const PROMPT: &str = "Please read the following text and answer the question below.\n\n<text>\nThe tower is 330 m tall.\n</text>\n\nHow tall is the tower?\n\nFormat your response as follows: \"Therefore, the answer is (insert answer here)\".";

fn item<'a>(task: TaskKind, response: &'a str, gold: &'a str) -> RewardItem<'a> {
    RewardItem {
        task,
        response,
        ground_truth: gold,
        question: None,
        prompt: Some(PROMPT),
        response_tokens: None,
        response_ids: &[],
    }
}

#[test]
fn judge_is_asked_only_when_the_rule_fails_and_never_for_choices() {
    let judge = Scripted::new(|q| {
        JudgeOutcome::from_reply(if q.answer.contains("330") {
            "same height [[YES]]"
        } else {
            "[[NO]]"
        })
    });
    let reward = HybridReward::new(HybridConfig::default(), Some(judge.clone()));
    let items = [
        // Rule already 1: no judge.
        item(
            TaskKind::DocMath,
            "<think>t</think>Therefore, the answer is 330.",
            "330",
        ),
        // Rule 0, judge yes: flipped.
        item(
            TaskKind::Qa,
            "<think>t</think>Therefore, the answer is 330 metres",
            "1,083 feet",
        ),
        // Rule 0, judge no.
        item(
            TaskKind::Qa,
            "<think>t</think>Therefore, the answer is 300 metres",
            "1,083 feet",
        ),
        // Multiple choice: never judged.
        item(
            TaskKind::MultipleChoice,
            "<think>t</think>The correct answer is (A)",
            "B",
        ),
        // Nothing parsed: never judged.
        item(TaskKind::Qa, "<think>t</think>I do not know", "1,083 feet"),
        // Same query as the second item: deduplicated.
        item(
            TaskKind::Qa,
            "<think>u</think>Therefore, the answer is 330 metres",
            "1,083 feet",
        ),
    ];
    let (out, stats) = reward.score_batch(&items).unwrap();
    let scores: Vec<f64> = out.iter().map(|o| o.score).collect();
    assert_eq!(scores, [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    let judged: Vec<Option<f64>> = out.iter().map(|o| o.judge).collect();
    assert_eq!(judged, [None, Some(1.0), Some(0.0), None, None, Some(1.0)]);
    assert!(out[1].acc && !out[2].acc && out[0].acc);
    assert_eq!(
        (out[1].rule, out[1].pred.as_deref()),
        (0.0, Some("330 metres"))
    );
    let asked = judge.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[0].question, "How tall is the tower?");
    assert_eq!(asked[0].answer, "330 metres");
    assert_eq!(asked[0].gold, "1,083 feet");
    assert_eq!(stats.judge_calls, 2);
    assert_eq!(stats.judge_cache_hits, 1);
    assert_eq!(stats.judge_flips, 2);
    assert_eq!(stats.correct, 3);

    // A second batch with the same queries is answered from the cache.
    let (again, stats2) = reward.score_batch(&items[1..3]).unwrap();
    assert_eq!(again[0].score, 1.0);
    assert_eq!((stats2.judge_calls, stats2.judge_cache_hits), (0, 2));
    assert_eq!(judge.calls.load(Ordering::SeqCst), 1);
}

#[test]
fn judge_failures_under_rule_only_score_the_rule_alone_are_counted_and_not_cached() {
    let judge = Scripted::new(|q| {
        if q.answer.starts_with("down") {
            JudgeOutcome::failed("connection refused")
        } else {
            JudgeOutcome::from_reply("YES, they match")
        }
    });
    let rule_only = HybridConfig {
        outage: OutagePolicy {
            on_failure: JudgeFailure::RuleOnly,
            ..OutagePolicy::default()
        },
        ..HybridConfig::default()
    };
    let reward = HybridReward::new(rule_only, Some(judge.clone()));
    let items = [
        item(
            TaskKind::Qa,
            "<think>t</think>Therefore, the answer is down",
            "up",
        ),
        item(
            TaskKind::Qa,
            "<think>t</think>Therefore, the answer is sideways",
            "up",
        ),
    ];
    let (out, stats) = reward.score_batch(&items).unwrap();
    assert_eq!(
        (out[0].score, out[0].judge, out[0].verdict),
        (0.0, None, Some(Verdict::Failed))
    );
    assert_eq!(
        (out[1].score, out[1].judge, out[1].verdict),
        (0.0, Some(0.0), Some(Verdict::Unparsed))
    );
    let written = serde_json::to_value(&out[0]).unwrap();
    assert_eq!(written["verdict"], "error", "{written}");
    assert!(written["judge"].is_null(), "{written}");
    assert_eq!((stats.judge_failures, stats.judge_unparsed), (1, 1));
    let (_, stats2) = reward.score_batch(&items).unwrap();
    assert_eq!((stats2.judge_calls, stats2.judge_cache_hits), (1, 1));

    // Under `stop` (the default) the same failure is an error once the outage outlasts the
    // bound (zero here: after the first round), naming the judge.
    let stop = HybridConfig {
        outage: OutagePolicy {
            max_outage: std::time::Duration::ZERO,
            ..OutagePolicy::default()
        },
        ..HybridConfig::default()
    };
    let reward = HybridReward::new(stop, Some(judge.clone()));
    let e = reward.score_batch(&items).unwrap_err();
    assert!(matches!(e, longrl::Error::Judge(_)), "{e}");
    let e = e.to_string();
    assert!(e.contains("scripted has been failing"), "{e}");
    assert!(e.contains("connection refused"), "{e}");
}

#[test]
fn overlong_shaping_is_added_to_the_correctness() {
    let reward = HybridReward::new(
        HybridConfig {
            overlong: Some(OverlongConfig {
                max_response_length: 100,
                buffer_length: 20,
                penalty_factor: 1.0,
            }),
            ..HybridConfig::default()
        },
        None,
    );
    let mut a = item(
        TaskKind::DocMath,
        "<think>t</think>Therefore, the answer is 5.",
        "5",
    );
    a.response_tokens = Some(90);
    let mut b = a;
    b.response_tokens = Some(50);
    let (out, stats) = reward.score_batch(&[a, b]).unwrap();
    assert_eq!(
        (out[0].score, out[0].overlong, out[0].reward),
        (1.0, -0.5, 0.5)
    );
    assert!(out[0].acc, "acc is on correctness, before shaping");
    assert_eq!((out[1].overlong, out[1].reward), (0.0, 1.0));
    assert_eq!(stats.overlong_penalised, 1);
}

#[test]
fn local_judge_runs_end_to_end_on_the_tiny_model() {
    let judge = LocalJudge::<Flex>::load(
        model_dir("tiny-qwen2-chatml"),
        Default::default(),
        LocalJudgeConfig {
            max_new_tokens: 8,
            batch_size: 2,
            prefill_chunk: 64,
        },
    )
    .unwrap();
    let queries: Vec<JudgeQuery> = (0..3)
        .map(|i| JudgeQuery {
            question: format!("What is {i} + 1?"),
            answer: format!("{}", i + 1),
            gold: "1".into(),
        })
        .collect();
    let first = judge.judge(&queries);
    assert_eq!(first.len(), 3);
    // A random tiny model writes no marker: every reply is unparsed, none failed.
    for o in &first {
        assert_ne!(o.verdict, Verdict::Failed, "{o:?}");
    }
    // Greedy: the same queries give the same verdicts, batched differently or not.
    assert_eq!(judge.judge(&queries[1..2])[0], first[1]);
    assert!(judge.describe().contains("tiny-qwen2-chatml"));

    let reward = HybridReward::new(HybridConfig::default(), Some(Arc::new(judge)));
    let (out, stats) = reward
        .score_batch(&[item(
            TaskKind::Qa,
            "<think>t</think>Therefore, the answer is 3",
            "4",
        )])
        .unwrap();
    assert_eq!(stats.judge_calls, 1);
    assert!(out[0].judge.is_some());
}
