//! Rule verifiers of QwenLong-L1: the answer after the last `</think>`, then a per-task check
//! (QA sub-EM, DocMath numeric match, multiple-choice letter). By default every function
//! reproduces the public reference code exactly, quirks included; [`RuleOptions`] holds the
//! improvements, all off by default.
//!
//! One deviation is deliberate: where the reference crashes (or scores 0 whatever the response)
//! because a gold answer lacks the answer phrase, longrl reads the bare gold instead (see each
//! task's `parse_gold`). Gold answers that carry the phrase are parsed exactly as the reference does.

pub mod choice;
pub mod docmath;
mod pyexpr;
pub mod qa;

use serde::{Deserialize, Serialize};

pub use crate::data::TaskKind;

/// Trailing end-of-sequence texts removed from a response before extraction (verl's reward
/// manager removes the tokenizer's EOS; these are the EOS texts of the Qwen2 family).
pub const DEFAULT_EOS_SUFFIXES: [&str; 3] =
    ["<|im_end|>", "<|endoftext|>", "<｜end▁of▁sentence｜>"];

/// Options of the rule verifiers. The defaults reproduce the public code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleOptions {
    /// A response without `</think>` scores 0 (the reference). Off: the whole response is the answer
    /// (models without thinking tags).
    pub require_think: bool,
    /// Accept the answer phrases in any case ("The answer is", "the correct answer is (b)"); the
    /// reference's QA and multiple-choice phrases are case-sensitive.
    pub case_insensitive: bool,
    /// One of these at the end of a response is removed before extraction.
    pub eos_suffixes: Vec<String>,
    /// How a QA answer is compared with the gold (default: the reference's sub-EM).
    pub qa_match: QaMatch,
}

/// The QA comparison, after SQuAD normalisation of both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QaMatch {
    /// The reference's sub-EM: either contains the other. A policy can hack it: an answer that
    /// normalises to nothing (`(A)`, `the`) is in every gold, a single letter (`D)`) in every
    /// gold that has it; the tiny pipeline's RL learned both within a stage.
    #[default]
    SubEm,
    /// The gold must appear in the answer (no credit for fragments or empty answers).
    GoldInAnswer,
    /// The two must be equal (SQuAD exact match).
    Exact,
}

impl Default for RuleOptions {
    fn default() -> Self {
        Self {
            require_think: true,
            case_insensitive: false,
            eos_suffixes: DEFAULT_EOS_SUFFIXES.iter().map(|s| s.to_string()).collect(),
            qa_match: QaMatch::SubEm,
        }
    }
}

/// What a rule verifier found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleResult {
    /// 1 when the answer matches the gold, else 0.
    pub score: f64,
    /// The text after the last `</think>`, stripped (`None` without `</think>`).
    pub answer_text: Option<String>,
    /// The answer parsed from that text (what was compared), `None` when none was found.
    pub pred: Option<String>,
    /// The gold answer as parsed (what the judge is shown as Answer 2).
    pub gold: Option<String>,
}

impl RuleResult {
    fn zero(answer_text: Option<String>) -> Self {
        Self {
            score: 0.0,
            answer_text,
            pred: None,
            gold: None,
        }
    }
}

/// Python's `str.isspace`: Unicode white space plus the ASCII separators 0x1c-0x1f.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `str.strip()`.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// The answer part of a response: a trailing EOS text removed, then the text after the last
/// `</think>`, stripped. `None` when the response has no `</think>` and thinking is required.
pub fn extract_answer_text(response: &str, options: &RuleOptions) -> Option<String> {
    let mut response = response;
    if let Some(eos) = options
        .eos_suffixes
        .iter()
        .find(|e| !e.is_empty() && response.ends_with(e.as_str()))
    {
        response = &response[..response.len() - eos.len()];
    }
    match response.rfind("</think>") {
        Some(i) => Some(py_strip(&response[i + "</think>".len()..]).to_string()),
        None if options.require_think => None,
        None => Some(py_strip(response).to_string()),
    }
}

/// Scores one response against its gold answer with the verifier of `task`.
pub fn score(
    task: TaskKind,
    response: &str,
    ground_truth: &str,
    options: &RuleOptions,
) -> RuleResult {
    let answer_text = match extract_answer_text(response, options) {
        Some(t) if !t.is_empty() => t,
        other => return RuleResult::zero(other),
    };
    let ci = options.case_insensitive;
    let (pred, gold, score) = match task {
        TaskKind::Qa => {
            let pred = qa::parse_answer(&answer_text, ci);
            match pred {
                Some(p) if !p.is_empty() => {
                    let gold = qa::parse_gold(ground_truth, ci);
                    let s = if qa::matches(&p, &gold, options.qa_match) {
                        1.0
                    } else {
                        0.0
                    };
                    (Some(p), Some(gold), s)
                }
                p => (p, None, 0.0),
            }
        }
        TaskKind::DocMath => {
            let pred = docmath::parse_answer(&answer_text);
            match pred {
                Some(p) if !p.is_empty() => {
                    let gold = docmath::parse_gold(ground_truth);
                    let s = docmath::get_acc(&p, &gold);
                    (Some(p), Some(gold), s)
                }
                p => (p, None, 0.0),
            }
        }
        TaskKind::MultipleChoice => {
            let pred = choice::parse_answer(&answer_text, ci);
            let gold = choice::parse_gold(ground_truth, ci);
            let s = match (&pred, &gold) {
                (Some(p), Some(g)) if p.eq_ignore_ascii_case(g) => 1.0,
                _ => 0.0,
            };
            (pred, gold, s)
        }
    };
    RuleResult {
        score,
        answer_text: Some(answer_text),
        pred,
        gold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_text_follows_the_last_think() {
        let o = RuleOptions::default();
        assert_eq!(extract_answer_text("no tags", &o), None);
        assert_eq!(
            extract_answer_text("a</think>b</think>  c <|im_end|>", &o).as_deref(),
            Some("c")
        );
        let free = RuleOptions {
            require_think: false,
            ..o
        };
        assert_eq!(
            extract_answer_text(" plain ", &free).as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn qa_hacks_pass_sub_em_only() {
        let reference = RuleOptions {
            require_think: false,
            ..RuleOptions::default()
        };
        let with = |qa_match| RuleOptions {
            qa_match,
            ..reference.clone()
        };
        let (inside, exact) = (with(QaMatch::GoldInAnswer), with(QaMatch::Exact));
        let answer = |a: &str| format!("Therefore, the answer is {a}.");
        // Empty after normalisation, or a fragment of the gold: sub-EM credits both.
        for hack in ["(A)", "the", "!?", "D)", "Lar"] {
            let r = answer(hack);
            assert_eq!(
                score(TaskKind::Qa, &r, "Larodu", &reference).score,
                1.0,
                "{hack}"
            );
            assert_eq!(
                score(TaskKind::Qa, &r, "Larodu", &inside).score,
                0.0,
                "{hack}"
            );
            assert_eq!(
                score(TaskKind::Qa, &r, "Larodu", &exact).score,
                0.0,
                "{hack}"
            );
        }
        let longer = answer("the town of Larodu");
        assert_eq!(score(TaskKind::Qa, &longer, "Larodu", &inside).score, 1.0);
        assert_eq!(score(TaskKind::Qa, &longer, "Larodu", &exact).score, 0.0);
        assert_eq!(
            score(TaskKind::Qa, &answer("the LARODU"), "Larodu", &exact).score,
            1.0
        );
        // Multiple choice is untouched by the QA comparison.
        let mc = "The correct answer is (A).";
        assert_eq!(score(TaskKind::MultipleChoice, mc, "A", &exact).score, 1.0);
    }
}
