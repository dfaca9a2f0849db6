//! The Table 4 protocol of QwenLong-L1's evaluation scripts: the prompt, middle truncation of long
//! inputs, answer extraction and the rule score of each benchmark, and what the judge is shown.
//! The item's score is `max(rule, judge)`.
//!
//! Two deliberate differences from the reference scripts: the judge's verdict is read strictly
//! (`[[YES]]` / `[[NO]]`, see [`crate::reward::judge::parse_verdict`]; the scripts count any "YES"
//! in the reply), and a QA answer without "the answer is" is not sent to the judge (the scripts
//! send the string "None", which a judge rejects).

use crate::data::render_prompt;
use crate::error::Result;
use crate::reward::rule::{docmath, qa};
use crate::tokenizer::Tokenizer;

use super::benchmarks::{AnswerKind, BenchItem};

/// Keeps the first `max / 2` and the last `max - max / 2` tokens of a sequence longer than `max`
/// (the reference's `ids[:max//2] + ids[-max//2:]`: for an odd `max` the tail gets the extra
/// token). Returns the ids and whether they were cut.
pub fn middle_truncate(ids: &[u32], max: usize) -> (Vec<u32>, bool) {
    if ids.len() <= max {
        return (ids.to_vec(), false);
    }
    let head = max / 2;
    let tail = max - head;
    let mut out = Vec::with_capacity(max);
    out.extend_from_slice(&ids[..head]);
    out.extend_from_slice(&ids[ids.len() - tail..]);
    (out, true)
}

/// A benchmark item's user message, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedPrompt {
    /// The user message (the recipe's template, middle-truncated when too long).
    pub text: String,
    /// Tokens of the full message before truncation.
    pub input_tokens: usize,
    /// Whether the message was cut to `max_input_tokens`.
    pub truncated: bool,
}

/// The user message of `item`: the QwenLong-L1 template with the document and question, then, when
/// it is longer than `max_input_tokens` (0: no limit), middle-truncated at the token level and
/// decoded without special tokens, as the reference does before sending it to the server.
pub fn prepare_prompt(
    item: &BenchItem,
    tokenizer: Option<&Tokenizer>,
    max_input_tokens: usize,
) -> Result<PreparedPrompt> {
    let text = render_prompt(item.document.trim(), item.question.trim());
    let Some(tokenizer) = tokenizer else {
        return Ok(PreparedPrompt {
            text,
            input_tokens: 0,
            truncated: false,
        });
    };
    let ids = tokenizer.encode(&text, true)?;
    let input_tokens = ids.len();
    if max_input_tokens == 0 || ids.len() <= max_input_tokens {
        return Ok(PreparedPrompt {
            text,
            input_tokens,
            truncated: false,
        });
    }
    let (kept, _) = middle_truncate(&ids, max_input_tokens);
    Ok(PreparedPrompt {
        text: tokenizer.decode(&kept, true)?,
        input_tokens,
        truncated: true,
    })
}

/// The rule verdict on one response, and the answer the judge is shown.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleVerdict {
    /// The extracted answer (`None` when the response has no "the answer is").
    pub prediction: Option<String>,
    /// 1 when the rule accepts the prediction, else 0.
    pub score: f64,
    /// Answer 1 of the judge query; `None`: nothing to judge (the judge scores 0 without a call).
    pub judge_answer: Option<String>,
}

const PHRASE: &str = "Therefore, the answer is";

/// Scores a response the way the reference evaluation does: the text after the last `</think>`
/// (the whole response when there is none or nothing follows it), the answer after "the answer
/// is", then sub-EM against the gold (text) or DocMath's numeric rules. The judge sees the
/// prediction; for DocMath, lacking one, the final text without "Therefore, the answer is" (as
/// `docmath_verify.py`).
pub fn score_response(kind: AnswerKind, response: &str, gold: &str) -> RuleVerdict {
    let response = response.trim();
    let final_text = response
        .rfind("</think>")
        .map(|i| response[i + "</think>".len()..].trim())
        .filter(|t| !t.is_empty());
    let text = final_text.unwrap_or(response);
    match kind {
        AnswerKind::Text => {
            let prediction = qa::parse_answer(text, false);
            let score = match &prediction {
                Some(p) if !p.is_empty() && qa::sub_em(p, gold) => 1.0,
                _ => 0.0,
            };
            RuleVerdict {
                judge_answer: prediction.clone().filter(|p| !p.is_empty()),
                prediction,
                score,
            }
        }
        AnswerKind::Numeric => {
            let prediction = docmath::parse_answer(text);
            let gold = docmath::parse_gold(&format!("{PHRASE} {gold}."));
            let score = match &prediction {
                Some(p) if !p.is_empty() => docmath::get_acc(p, &gold),
                _ => 0.0,
            };
            let judge_answer = match &prediction {
                Some(p) if !p.is_empty() => Some(p.clone()),
                _ => {
                    let rest = text.replace(PHRASE, "");
                    let rest = rest.trim().trim_end_matches('.').trim();
                    (!rest.is_empty()).then(|| rest.to_string())
                }
            };
            RuleVerdict {
                prediction,
                score,
                judge_answer,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn middle_truncation_keeps_head_and_tail() {
        let ids: Vec<u32> = (0..10).collect();
        assert_eq!(middle_truncate(&ids, 10), (ids.clone(), false));
        assert_eq!(middle_truncate(&ids, 20), (ids.clone(), false));
        assert_eq!(middle_truncate(&ids, 4), (vec![0, 1, 8, 9], true));
        // Python: ids[:7//2] + ids[-7//2:] = ids[:3] + ids[-4:].
        assert_eq!(middle_truncate(&ids, 7), (vec![0, 1, 2, 6, 7, 8, 9], true));
        assert_eq!(middle_truncate(&ids, 1), (vec![9], true));
    }

    #[test]
    fn text_answers_follow_the_reference() {
        let v = score_response(
            AnswerKind::Text,
            "<think>the answer is Rome</think>\n\nTherefore, the answer is **Paris**.",
            "Paris",
        );
        assert_eq!(v.prediction.as_deref(), Some("Paris"));
        assert_eq!(v.score, 1.0);
        assert_eq!(v.judge_answer.as_deref(), Some("Paris"));
        // No </think>: the whole response is read.
        let v = score_response(AnswerKind::Text, "so the answer is the Louvre", "Louvre");
        assert_eq!(v.score, 1.0);
        // Case-sensitive phrase, as the reference: nothing extracted, nothing to judge.
        let v = score_response(AnswerKind::Text, "</think>The answer is Paris", "Paris");
        assert_eq!((v.prediction, v.score, v.judge_answer), (None, 0.0, None));
        let v = score_response(AnswerKind::Text, "</think>the answer is Lyon.", "Paris");
        assert_eq!(v.score, 0.0);
        assert_eq!(v.judge_answer.as_deref(), Some("Lyon"));
    }

    #[test]
    fn numeric_answers_follow_the_reference() {
        let v = score_response(
            AnswerKind::Numeric,
            "<think>...</think>Therefore, the answer is $1,250.5 million.",
            "1250.5",
        );
        assert_eq!(v.prediction.as_deref(), Some("$1250.5"));
        assert_eq!(v.score, 1.0);
        let v = score_response(AnswerKind::Numeric, "</think>the answer is 12.5%", "0.125");
        assert_eq!(v.score, 1.0, "x100 scale rule");
        let v = score_response(
            AnswerKind::Numeric,
            "</think>Therefore, the answer is 7",
            "8",
        );
        assert_eq!(v.score, 0.0);
        // No number: the judge sees the final text without the phrase.
        let v = score_response(
            AnswerKind::Numeric,
            "</think>Therefore, the answer is twelve.",
            "12",
        );
        assert_eq!(v.prediction, None);
        assert_eq!(v.judge_answer.as_deref(), Some("twelve"));
    }
}
