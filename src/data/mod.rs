//! Datasets: SFT records (`{"prompt", "response"}` or `{"messages"}`), RL samples in longrl's JSONL
//! format (`id`, `data_source`, `task`, `document`, `question`, `answer`, `choices`, or a ready
//! `prompt`) or verl's parquet format (DocQA-RL-1.6K), the QwenLong-L1 prompt template, and a
//! deterministic, resumable sampler.

pub mod curriculum;
pub mod parquet;
pub mod prompt;
pub mod sampler;
pub mod synthetic;
pub mod task;
pub mod template;

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::JsonlReader;
use crate::tokenizer::Message;

pub use self::parquet::{load_verl_parquet, load_verl_parquet_with};
pub use prompt::{prepare_prompts, prompt_ids, PreparedPrompt};
pub use sampler::{EpochSampler, SamplerState};
pub use task::TaskKind;
pub use template::{question_from_prompt, render_prompt, PROMPT_TEMPLATE};

/// One SFT example: chat messages whose last message is the assistant's response.
#[derive(Debug, Clone, PartialEq)]
pub struct SftRecord {
    /// The conversation up to the response (rendered with the generation prompt).
    pub prompt: Vec<Message>,
    /// The response text (the loss covers its tokens and the end-of-turn token).
    pub response: String,
}

/// Reads SFT data: each line `{"prompt": str, "response": str}` (one user turn) or
/// `{"messages": [{role, content}, ...]}` ending with an assistant message.
pub fn load_sft(path: &Path) -> Result<Vec<SftRecord>> {
    let mut out = Vec::new();
    JsonlReader::new(path).for_each(|n, v: Value| {
        let bad = |m: &str| Error::input(path, n, m.to_string());
        if let Some(msgs) = v.get("messages") {
            let mut msgs: Vec<Message> = serde_json::from_value(msgs.clone()).map_err(|_| {
                bad("field \"messages\": expected a list of {\"role\": string, \"content\": string}")
            })?;
            match msgs.pop() {
                Some(last) if last.role == "assistant" && !msgs.is_empty() => out.push(SftRecord {
                    prompt: msgs,
                    response: last.content,
                }),
                _ => {
                    return Err(bad(
                        "field \"messages\": expected at least one message followed by a final \"assistant\" message",
                    ))
                }
            }
        } else {
            let prompt = v.get("prompt").and_then(Value::as_str);
            let response = v.get("response").and_then(Value::as_str);
            match (prompt, response) {
                (Some(p), Some(r)) => out.push(SftRecord {
                    prompt: vec![Message::new("user", p)],
                    response: r.to_string(),
                }),
                _ => return Err(bad(
                    "expected {\"prompt\": string, \"response\": string} or {\"messages\": [...]}",
                )),
            }
        }
        Ok(())
    })?;
    if out.is_empty() {
        return Err(Error::input(path, 0, "no examples in the file"));
    }
    Ok(out)
}

/// One RL sample in longrl's format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RlSample {
    /// Stable identifier (difficulty tracking, logs); the line number when absent.
    #[serde(default)]
    pub id: String,
    /// Source name, as verl's `data_source` (selects the verifier when `task` is absent).
    #[serde(default)]
    pub data_source: Option<String>,
    /// Explicit verifier: qa, docmath or multiple_choice.
    #[serde(default)]
    pub task: Option<String>,
    /// The document the question is about.
    #[serde(default)]
    pub document: Option<String>,
    /// The question.
    #[serde(default)]
    pub question: Option<String>,
    /// Options of a multiple-choice question, appended to the question as `(A) ...` lines.
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// A complete user prompt, used instead of document + question.
    #[serde(default)]
    pub prompt: Option<String>,
    /// The gold answer.
    pub answer: String,
}

impl RlSample {
    /// The verifier of this sample.
    pub fn task_kind(&self) -> Result<TaskKind> {
        TaskKind::resolve(self.task.as_deref(), self.data_source.as_deref())
    }

    /// The user message: `prompt` as given, or the recipe template over document and question.
    pub fn user_prompt(&self) -> Result<String> {
        if let Some(p) = &self.prompt {
            return Ok(p.clone());
        }
        match (&self.document, &self.question) {
            (Some(doc), Some(q)) => {
                let mut question = q.clone();
                if let Some(choices) = &self.choices {
                    for (letter, c) in ["A", "B", "C", "D", "E", "F", "G", "H"].iter().zip(choices)
                    {
                        question.push_str(&format!("\n({letter}) {c}"));
                    }
                }
                Ok(render_prompt(doc, &question))
            }
            _ => Err(Error::Invalid(
                "a sample needs \"prompt\", or \"document\" and \"question\"".into(),
            )),
        }
    }
}

/// Reads RL samples (longrl JSONL); ids default to `line-N`; every bad line is an error naming
/// the file, line and field.
pub fn load_rl(path: &Path) -> Result<Vec<RlSample>> {
    let mut out = Vec::new();
    JsonlReader::new(path).for_each(|n, v: Value| {
        let mut s: RlSample = serde_json::from_value(v).map_err(|e| {
            Error::input(
                path,
                n,
                format!(
                    "{e}; expected {{\"answer\", \"data_source\" or \"task\", \"document\" + \"question\" or \"prompt\", optional \"id\", \"choices\"}}"
                ),
            )
        })?;
        s.task_kind()
            .map_err(|e| Error::input(path, n, e.to_string()))?;
        s.user_prompt()
            .map_err(|e| Error::input(path, n, e.to_string()))?;
        if s.id.is_empty() {
            s.id = format!("line-{n}");
        }
        out.push(s);
        Ok(())
    })?;
    if out.is_empty() {
        return Err(Error::input(path, 0, "no samples in the file"));
    }
    Ok(out)
}

/// Reads RL samples in either format: verl parquet ([`load_verl_parquet`]) for a `.parquet` file
/// or a file that starts with parquet's `PAR1` magic, longrl JSONL ([`load_rl`]) otherwise.
pub fn load_rl_any(path: &Path) -> Result<Vec<RlSample>> {
    let parquet_extension = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if parquet_extension || starts_with_parquet_magic(path)? {
        load_verl_parquet(path)
    } else {
        load_rl(path)
    }
}

/// Whether the file's first bytes are parquet's magic number.
fn starts_with_parquet_magic(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = Vec::with_capacity(4);
    std::fs::File::open(path)
        .and_then(|f| f.take(4).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    Ok(head == b"PAR1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_jsonl_lines_name_the_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("rl.jsonl");
        let cases = [
            (
                "{\"task\": \"qa\", \"prompt\": \"q\"}\n",
                ":1:",
                "missing field `answer`",
            ),
            (
                "\n{\"task\": \"qa\", \"answer\": \"a\"}\n",
                ":2:",
                "\"prompt\", or \"document\" and \"question\"",
            ),
            (
                "{\"data_source\": \"trivia\", \"prompt\": \"q\", \"answer\": \"a\"}\n",
                ":1:",
                "unknown data_source",
            ),
            (
                "{\"task\": \"qa\", \"prompt\": \"q\", \"answer\": \"a\", \"extra\": 1}\n",
                ":1:",
                "unknown field `extra`",
            ),
            ("not json\n", ":1:", "not valid JSON"),
        ];
        for (text, line, msg) in cases {
            std::fs::write(&p, text).unwrap();
            let e = load_rl(&p).unwrap_err().to_string();
            assert!(
                e.contains(&format!("rl.jsonl{line}")) && e.contains(msg),
                "{e}"
            );
        }
        std::fs::write(&p, "{\"task\": \"qa\", \"document\": \"d\", \"question\": \"q\", \"choices\": [\"x\", \"y\"], \"answer\": \"a\"}\n").unwrap();
        let s = load_rl(&p).unwrap();
        assert_eq!(s[0].id, "line-1");
        assert!(s[0].user_prompt().unwrap().contains("q\n(A) x\n(B) y"));
        let sft = dir.path().join("sft.jsonl");
        std::fs::write(
            &sft,
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
        )
        .unwrap();
        let e = load_sft(&sft).unwrap_err().to_string();
        assert!(
            e.contains("sft.jsonl:1:") && e.contains("final \"assistant\" message"),
            "{e}"
        );
    }
}
