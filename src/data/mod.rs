//! Datasets: SFT records (`{"prompt", "response"}`, TRL's `{"prompt", "completion"}` or
//! `{"messages"}`), RL samples from JSONL or parquet with longrl's fields (`id`, `data_source`,
//! `task`, `document`, `question`, `choices`, `answer`, or a ready `prompt`) or verl's (`prompt` as
//! a message list, `reward_model.ground_truth`, `extra_info.index`), read by one row mapper
//! ([`record`]), the QwenLong-L1 prompt template, and a deterministic, resumable sampler. Fields
//! no loader knows are ignored with one warning per file, or are errors with
//! [`LoadOptions::strict`].

pub mod curriculum;
pub mod parquet;
pub mod prompt;
pub mod record;
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

pub use self::parquet::{load_parquet_rl, load_verl_parquet, load_verl_parquet_with};
pub use prompt::{prepare_prompts, prompt_ids, PreparedPrompt};
pub use record::{LoadOptions, UnknownFields};
pub use sampler::{EpochSampler, SamplerState, TaskBalancedSampler, TaskSamplerState};
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

/// Reads SFT data (see [`load_sft_with`]), ignoring unknown fields with one warning.
pub fn load_sft(path: &Path) -> Result<Vec<SftRecord>> {
    load_sft_with(path, LoadOptions::default())
}

/// Reads SFT data: each line `{"messages": [{role, content, ...}, ...]}` ending with an assistant
/// message, or a prompt and its response: `"prompt"` (a string, one user turn, or a message list)
/// with `"response"` or TRL's `"completion"` (a string, or a list with one assistant message).
/// Unknown fields are ignored with one warning, or are errors with `options.strict`; every bad
/// line is an error naming the file, line and field.
pub fn load_sft_with(path: &Path, options: LoadOptions) -> Result<Vec<SftRecord>> {
    let mut out = Vec::new();
    let mut unknown = UnknownFields::new(path, record::SFT_FIELDS, options);
    JsonlReader::new(path).for_each(|n, v: Value| {
        let bad = |m: String| Error::input(path, n, m);
        let row = record::as_row(&v).map_err(bad)?;
        unknown.check(row, n)?;
        out.push(sft_record(row).map_err(bad)?);
        Ok(())
    })?;
    if out.is_empty() {
        return Err(Error::input(path, 0, "no examples in the file"));
    }
    unknown.finish();
    Ok(out)
}

/// One SFT line as a record, or what is wrong with it.
fn sft_record(row: &serde_json::Map<String, Value>) -> std::result::Result<SftRecord, String> {
    const EXPECTED: &str = "expected {\"prompt\", \"response\" (or \"completion\")} or \
                            {\"messages\": [...]}";
    let chat = |v: &Value, name: &str| {
        serde_json::from_value::<Vec<Message>>(v.clone()).map_err(|_| {
            format!("field {name:?}: expected a list of {{\"role\": string, \"content\": string}}")
        })
    };
    if let Some(msgs) = row.get("messages").filter(|v| !v.is_null()) {
        let mut msgs = chat(msgs, "messages")?;
        return match msgs.pop() {
            Some(last) if last.role == "assistant" && !msgs.is_empty() => Ok(SftRecord {
                prompt: msgs,
                response: last.content,
            }),
            _ => Err(
                "field \"messages\": expected at least one message followed by a final \
                      \"assistant\" message"
                    .to_string(),
            ),
        };
    }
    let prompt = match row.get("prompt") {
        Some(Value::String(p)) => vec![Message::new("user", p.as_str())],
        Some(v @ Value::Array(_)) => chat(v, "prompt")?,
        _ => return Err(EXPECTED.to_string()),
    };
    if prompt.is_empty() {
        return Err("field \"prompt\" is an empty list".to_string());
    }
    let (name, response) = match (row.get("response"), row.get("completion")) {
        (Some(r), _) if !r.is_null() => ("response", r),
        (_, Some(c)) if !c.is_null() => ("completion", c),
        _ => return Err(EXPECTED.to_string()),
    };
    let response = match response {
        Value::String(r) => r.clone(),
        v @ Value::Array(_) => match chat(v, name)?.as_slice() {
            [m] if m.role == "assistant" => m.content.clone(),
            _ => {
                return Err(format!(
                    "field {name:?}: expected a string or a list with one \"assistant\" message"
                ))
            }
        },
        other => {
            return Err(format!(
                "field {name:?}: expected a string, found {}",
                record::kind(other)
            ))
        }
    };
    Ok(SftRecord { prompt, response })
}

/// One RL sample, with longrl's JSONL fields (how a synthetic sample is written). The loaders
/// read JSONL lines and parquet rows, verl's fields included, through [`record::rl_sample`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Reads RL samples from JSONL (see [`load_rl_with`]), ignoring unknown fields with one warning.
pub fn load_rl(path: &Path) -> Result<Vec<RlSample>> {
    load_rl_with(path, LoadOptions::default())
}

/// Reads RL samples from JSONL, one object a line with longrl's or verl's fields
/// ([`record::rl_sample`]); ids default to `line-N`. Unknown fields are ignored with one warning,
/// or are errors with `options.strict`; every bad line is an error naming the file, line and
/// field.
pub fn load_rl_with(path: &Path, options: LoadOptions) -> Result<Vec<RlSample>> {
    let mut out = Vec::new();
    let mut unknown = UnknownFields::new(path, record::RL_FIELDS, options);
    JsonlReader::new(path).for_each(|n, v: Value| {
        let bad = |m: String| Error::input(path, n, m);
        let row = record::as_row(&v).map_err(bad)?;
        unknown.check(row, n)?;
        out.push(record::rl_sample(row, || format!("line-{n}")).map_err(bad)?);
        Ok(())
    })?;
    if out.is_empty() {
        return Err(Error::input(path, 0, "no samples in the file"));
    }
    unknown.finish();
    Ok(out)
}

/// Reads RL samples in either container (see [`load_rl_any_with`]), ignoring unknown fields with
/// one warning.
pub fn load_rl_any(path: &Path) -> Result<Vec<RlSample>> {
    load_rl_any_with(path, LoadOptions::default())
}

/// Reads RL samples from parquet ([`load_parquet_rl`]) for a `.parquet` file or a file that
/// starts with parquet's `PAR1` magic, from JSONL ([`load_rl_with`]) otherwise; both read the
/// same fields the same way.
pub fn load_rl_any_with(path: &Path, options: LoadOptions) -> Result<Vec<RlSample>> {
    let parquet_extension = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if parquet_extension || starts_with_parquet_magic(path)? {
        load_parquet_rl(path, false, options).map(|(samples, _)| samples)
    } else {
        load_rl_with(path, options)
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

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn bad_jsonl_lines_name_the_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "{\"task\": \"qa\", \"prompt\": \"q\"}\n",
                ":1:",
                "missing field \"answer\"",
            ),
            (
                "\n{\"task\": \"qa\", \"answer\": \"a\"}\n",
                ":2:",
                "field \"prompt\" is missing or null",
            ),
            (
                "{\"data_source\": \"trivia\", \"prompt\": \"q\", \"answer\": \"a\"}\n",
                ":1:",
                "unknown data_source",
            ),
            (
                "{\"task\": \"qa\", \"prompt\": \"q\", \"answer\": \"a\", \"question\": 3}\n",
                ":1:",
                "field \"question\": expected a string, found an integer",
            ),
            ("[1, 2]\n", ":1:", "expected a JSON object, found a list"),
            ("not json\n", ":1:", "not valid JSON"),
        ];
        for (text, line, msg) in cases {
            let p = file(&dir, "rl.jsonl", text);
            let e = load_rl(&p).unwrap_err().to_string();
            assert!(
                e.contains(&format!("rl.jsonl{line}")) && e.contains(msg),
                "{e}"
            );
        }
        let p = file(&dir, "rl.jsonl", "{\"task\": \"qa\", \"document\": \"d\", \"question\": \"q\", \"choices\": [\"x\", \"y\"], \"answer\": \"a\"}\n");
        let s = load_rl(&p).unwrap();
        assert_eq!(s[0].id, "line-1");
        assert!(s[0].user_prompt().unwrap().contains("q\n(A) x\n(B) y"));
        let sft = file(
            &dir,
            "sft.jsonl",
            "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n",
        );
        let e = load_sft(&sft).unwrap_err().to_string();
        assert!(
            e.contains("sft.jsonl:1:") && e.contains("final \"assistant\" message"),
            "{e}"
        );
    }

    #[test]
    fn extra_fields_load_and_strict_rejects_them_with_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let text = "{\"task\": \"qa\", \"prompt\": \"q\", \"answer\": \"a\"}\n\
                    {\"task\": \"qa\", \"prompt\": \"q\", \"answer\": \"b\", \"source\": \"web\", \"extra_info\": {\"split\": \"train\"}}\n";
        let p = file(&dir, "rl.jsonl", text);
        let samples = load_rl(&p).unwrap();
        assert_eq!(samples.len(), 2);
        let e = load_rl_with(&p, LoadOptions { strict: true })
            .unwrap_err()
            .to_string();
        assert!(e.contains("rl.jsonl:2: unknown field \"source\""), "{e}");
        assert!(e.contains("answer") && e.contains("--strict"), "{e}");
        let clean = file(&dir, "clean.jsonl", "{\"task\": \"qa\", \"prompt\": \"q\", \"answer\": \"a\", \"extra_info\": {\"any\": 1}}\n");
        assert_eq!(
            load_rl_any_with(&clean, LoadOptions { strict: true })
                .unwrap()
                .len(),
            1
        );

        let sft = file(
            &dir,
            "sft.jsonl",
            "{\"prompt\": \"p\", \"response\": \"r\", \"source\": \"x\"}\n",
        );
        assert_eq!(load_sft(&sft).unwrap()[0].response, "r");
        let e = load_sft_with(&sft, LoadOptions { strict: true })
            .unwrap_err()
            .to_string();
        assert!(e.contains("sft.jsonl:1: unknown field \"source\""), "{e}");
    }

    #[test]
    fn verl_jsonl_rows_load_as_the_equivalent_longrl_rows() {
        let dir = tempfile::tempdir().unwrap();
        let longrl = file(
            &dir,
            "longrl.jsonl",
            "{\"id\": \"9\", \"data_source\": \"docmath_v1\", \"prompt\": \"What is 2+2?\", \"answer\": \"4\"}\n\
             {\"data_source\": \"musique_v1\", \"prompt\": \"Who?\", \"answer\": \"Ann\"}\n",
        );
        let verl = file(
            &dir,
            "verl.jsonl",
            "{\"data_source\": \"docmath_v1\", \"prompt\": [{\"role\": \"user\", \"content\": \"What is 2+2?\"}], \"ability\": \"doc-math\", \"reward_model\": {\"style\": \"rule\", \"ground_truth\": \"4\"}, \"extra_info\": {\"index\": 9, \"split\": \"train\"}}\n\
             {\"data_source\": \"musique_v1\", \"prompt\": [{\"role\": \"user\", \"content\": \"Who?\"}], \"reward_model\": {\"ground_truth\": \"Ann\"}}\n",
        );
        let strict = LoadOptions { strict: true };
        assert_eq!(
            load_rl_with(&verl, strict).unwrap(),
            load_rl_with(&longrl, strict).unwrap()
        );
        assert_eq!(load_rl(&verl).unwrap()[1].id, "line-2");
    }

    #[test]
    fn trl_prompt_completion_rows_are_sft_records() {
        let dir = tempfile::tempdir().unwrap();
        let p = file(
            &dir,
            "sft.jsonl",
            "{\"prompt\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"user\", \"content\": \"u\"}], \"completion\": [{\"role\": \"assistant\", \"content\": \"a\"}]}\n\
             {\"prompt\": \"u\", \"completion\": \"a\"}\n",
        );
        let records = load_sft(&p).unwrap();
        assert_eq!(records[0].prompt.len(), 2);
        assert_eq!(records[0].response, "a");
        assert_eq!(records[1].prompt, vec![Message::new("user", "u")]);
        let bad = file(
            &dir,
            "bad.jsonl",
            "{\"prompt\": \"u\", \"completion\": [{\"role\": \"user\", \"content\": \"a\"}]}\n",
        );
        let e = load_sft(&bad).unwrap_err().to_string();
        assert!(
            e.contains("bad.jsonl:1: field \"completion\"") && e.contains("\"assistant\""),
            "{e}"
        );
    }
}
