//! LLM judges: a second opinion on answers the rule verifiers reject ("is Answer 1 equivalent to
//! Answer 2?"), as QwenLong-L1 asks Qwen2.5-1.5B-Instruct. Two implementations share the prompt and
//! the strict verdict parser: [`HttpJudge`] for any OpenAI-compatible chat-completions server and
//! [`LocalJudge`] for a Qwen2 checkpoint run by longrl itself.
//!
//! A judge never fails a batch: a call that cannot be answered becomes [`Verdict::Failed`]
//! (written out as `"error"`, counted); what follows (wait and stop, or score with the rule alone)
//! is the reward's [`JudgeFailure`] policy.

mod http;
mod local;
mod outage;

pub use http::{HttpJudge, HttpJudgeConfig};
pub use local::{LocalJudge, LocalJudgeConfig};
pub use outage::{check_judge, OutageNames, OutagePolicy, OutageWatch};

/// The question of a templated prompt, as the judge is shown it (the template is data's).
pub use crate::data::template::question_from_prompt;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// System prompt of the QwenLong-L1 judge (the public code's `GENERAL_ORM_PROMPT`, verbatim).
pub const JUDGE_SYSTEM_PROMPT: &str = "You are an expert in verifying if two answers are the same.
Your input is a problem and two answers, Answer 1 and Answer 2. You need to check if they are equivalent.
Your task is to determine if two answers are equivalent, without attempting to solve the original problem.
Compare the answers to verify they represent identical values or meaning, even when written in different forms or notations.

Your output must follow the following format:
1) Provide an explanation for why the answers are equivalent or not.
2) Then provide your final answer in the form of: [[YES]] or [[NO]]
";

/// One question for the judge: the problem, the model's answer and the gold answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JudgeQuery {
    /// The question the answers respond to (without the document).
    pub question: String,
    /// Answer 1: the policy's extracted answer.
    pub answer: String,
    /// Answer 2: the gold answer.
    pub gold: String,
}

impl JudgeQuery {
    /// The user message of the QwenLong-L1 judge (`ORM_USER_TEMPLATE`, verbatim).
    pub fn user_prompt(&self) -> String {
        format!(
            "\nProblem: {}\nAnswer 1: {}\nAnswer 2: {}\n",
            self.question, self.answer, self.gold
        )
    }
}

/// What the judge said about one query (written out as `yes`, `no`, `unparsed`, `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// `[[YES]]`: the answers are equivalent (score 1).
    Yes,
    /// `[[NO]]`: they are not (score 0).
    No,
    /// The reply held neither marker (score 0, counted).
    Unparsed,
    /// No reply: server down, timeout, retries exhausted, circuit open, generation error
    /// (counted; written out as `"error"`, with no judge score).
    #[serde(rename = "error", alias = "failed")]
    Failed,
}

impl Verdict {
    /// The name this verdict is written out under (`yes`, `no`, `unparsed`, `error`).
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Yes => "yes",
            Verdict::No => "no",
            Verdict::Unparsed => "unparsed",
            Verdict::Failed => "error",
        }
    }

    /// The judge's reward: 1 for `Yes`, 0 otherwise.
    pub fn score(self) -> f64 {
        if self == Verdict::Yes {
            1.0
        } else {
            0.0
        }
    }
}

/// A judge's answer to one query, with the reason when it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgeOutcome {
    /// The verdict.
    pub verdict: Verdict,
    /// Why the call failed (for `Failed`), or the unparsable reply (for `Unparsed`).
    pub detail: Option<String>,
}

impl JudgeOutcome {
    /// An outcome from a reply text, parsed with [`parse_verdict`].
    pub fn from_reply(reply: &str) -> Self {
        let verdict = parse_verdict(reply);
        let detail = (verdict == Verdict::Unparsed).then(|| reply.to_string());
        Self { verdict, detail }
    }

    /// A failed call.
    pub fn failed(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Failed,
            detail: Some(reason.into()),
        }
    }
}

/// Something that judges answer equivalence for a batch of queries at once.
///
/// Implementations run a batch concurrently (HTTP) or batched (local model) and return one outcome
/// per query, in order. They never return an error: failures are outcomes.
pub trait Judge: Send + Sync {
    /// Judges every query; `result[i]` answers `queries[i]`.
    fn judge(&self, queries: &[JudgeQuery]) -> Vec<JudgeOutcome>;
    /// A short description for logs (server URL and model, or checkpoint folder).
    fn describe(&self) -> String;
    /// How long until the judge takes queries again while it refuses them (an HTTP judge's open
    /// circuit breaker), so a caller waiting out an outage knows when to ask again; `None`: now.
    fn retry_in(&self) -> Option<Duration> {
        None
    }
    /// Sends one test query so that a dead judge is found before any work; `Err` says why it
    /// failed. The default (a judge with nothing to reach) passes.
    fn check(&self) -> std::result::Result<(), String> {
        Ok(())
    }
}

/// What the reward does when the judge cannot be reached (`[rl.reward] judge_failure`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum JudgeFailure {
    /// Ask the failed queries again, waiting out the outage up to a bound, then stop with an
    /// error (no update from a half-judged batch).
    #[default]
    Stop,
    /// Score the failed queries with the rule alone (counted in `judge_failures`), warning once
    /// per outage.
    #[value(name = "rule_only", alias = "rule-only")]
    RuleOnly,
}

/// Strict verdict parsing: the last `[[YES]]` or `[[NO]]` marker in the reply decides; a reply with
/// neither is `Unparsed`. (The public code's `"YES" in reply` would count "NO, not YES" as a yes.)
pub fn parse_verdict(reply: &str) -> Verdict {
    match (reply.rfind("[[YES]]"), reply.rfind("[[NO]]")) {
        (Some(y), Some(n)) => {
            if y > n {
                Verdict::Yes
            } else {
                Verdict::No
            }
        }
        (Some(_), None) => Verdict::Yes,
        (None, Some(_)) => Verdict::No,
        (None, None) => Verdict::Unparsed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_parsed_strictly() {
        assert_eq!(parse_verdict("same value. [[YES]]"), Verdict::Yes);
        assert_eq!(parse_verdict("different. [[NO]]"), Verdict::No);
        assert_eq!(parse_verdict("YES"), Verdict::Unparsed);
        assert_eq!(
            parse_verdict("NO, they are not. YES is wrong"),
            Verdict::Unparsed
        );
        assert_eq!(
            parse_verdict("[[YES]] ... on reflection [[NO]]"),
            Verdict::No
        );
        assert_eq!(
            parse_verdict("[[NO]] ... on reflection [[YES]]"),
            Verdict::Yes
        );
        assert_eq!(parse_verdict(""), Verdict::Unparsed);
    }

    #[test]
    fn a_failed_verdict_is_written_as_error() {
        assert_eq!(serde_json::to_value(Verdict::Failed).unwrap(), "error");
        assert_eq!(Verdict::Failed.name(), "error");
        assert_eq!(serde_json::to_value(Verdict::Unparsed).unwrap(), "unparsed");
        let old: Verdict = serde_json::from_str("\"failed\"").unwrap();
        assert_eq!(old, Verdict::Failed);
        let policy: JudgeFailure = serde_json::from_str("\"rule_only\"").unwrap();
        assert_eq!(policy, JudgeFailure::RuleOnly);
        assert_eq!(JudgeFailure::default(), JudgeFailure::Stop);
    }

    #[test]
    fn question_is_cut_from_the_template() {
        let prompt = "Please read the following text and answer the question below.\n\n<text>\nDOC\n</text>\n\nWho won?\n\nFormat your response as follows: \"Therefore, the answer is (insert answer here)\".";
        assert_eq!(question_from_prompt(prompt).as_deref(), Some("Who won?"));
        assert_eq!(question_from_prompt("no markers"), None);
    }

    #[test]
    fn user_prompt_matches_the_reference_template() {
        let q = JudgeQuery {
            question: "Q?".into(),
            answer: "a".into(),
            gold: "b".into(),
        };
        assert_eq!(q.user_prompt(), "\nProblem: Q?\nAnswer 1: a\nAnswer 2: b\n");
    }
}
