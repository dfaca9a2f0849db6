//! Rows of data files as practitioners have them: one JSON object per JSONL line or parquet row,
//! read the same way whatever the container. verl's fields (`prompt` as a list of chat messages,
//! `reward_model.ground_truth`, `ability`, `extra_info`) are read wherever longrl's own fields
//! are, and fields no loader knows (the extra columns verl and TRL datasets carry) are accepted:
//! their names are gathered over the whole file and logged once as a warning, unless
//! [`LoadOptions::strict`] makes the first of them an error naming the file, line and field.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::RlSample;
use crate::error::{Error, Result};
use crate::tokenizer::Message;

/// How a loader treats what it does not know in a data file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Unknown fields (parquet: columns) are errors naming the file, line and field, instead of
    /// being ignored with one warning per file (`--strict`, `strict = true` in a config).
    pub strict: bool,
}

/// The fields one kind of row accepts. Inside them, `reward_model` accepts `ground_truth` and
/// `style`, the messages of a prompt read as text `role` and `content`, and `extra_info` anything
/// (verl keeps free-form metadata there); SFT messages keep every field for the chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowFields {
    /// What a row is, in messages (`an RL sample`, `a reward line`, `an SFT example`).
    pub what: &'static str,
    /// The accepted top-level names.
    pub top: &'static [&'static str],
    /// Fields holding chat messages reduced to their text: other message fields are unknown.
    pub text_messages: &'static [&'static str],
}

/// An RL sample: longrl's fields and verl's.
pub const RL_FIELDS: RowFields = RowFields {
    what: "an RL sample",
    top: &[
        "id",
        "data_source",
        "task",
        "ability",
        "document",
        "question",
        "choices",
        "prompt",
        "answer",
        "reward_model",
        "extra_info",
    ],
    text_messages: &["prompt"],
};

/// An SFT example: `prompt` + `response` (or TRL's `completion`), or `messages`.
pub const SFT_FIELDS: RowFields = RowFields {
    what: "an SFT example",
    top: &["prompt", "response", "completion", "messages"],
    text_messages: &[],
};

/// A line of `longrl reward`'s input, with verl's fields.
pub const REWARD_FIELDS: RowFields = RowFields {
    what: "a reward line",
    top: &[
        "data_source",
        "task",
        "ability",
        "response",
        "ground_truth",
        "reward_model",
        "prompt",
        "question",
        "response_length",
        "extra_info",
    ],
    text_messages: &["prompt"],
};

/// Fields accepted inside `reward_model`.
const REWARD_MODEL_FIELDS: [&str; 2] = ["ground_truth", "style"];
/// Fields of a chat message read as text.
const MESSAGE_FIELDS: [&str; 2] = ["role", "content"];

impl RowFields {
    /// The accepted names, for messages.
    pub fn describe(&self) -> String {
        let mut inside = Vec::new();
        if self.top.contains(&"reward_model") {
            inside.push(format!("reward_model: {}", REWARD_MODEL_FIELDS.join(", ")));
        }
        for list in self.text_messages {
            inside.push(format!("{list} messages: {}", MESSAGE_FIELDS.join(", ")));
        }
        if self.top.contains(&"extra_info") {
            inside.push("extra_info: anything".to_string());
        }
        if inside.is_empty() {
            self.top.join(", ")
        } else {
            format!("{} ({})", self.top.join(", "), inside.join("; "))
        }
    }

    /// The names in `row` that this kind of row does not accept, sorted, nested ones written
    /// `parent.child` (`reward_model.score`, `prompt.name`).
    pub fn unknown(&self, row: &Map<String, Value>) -> Vec<String> {
        let mut out = BTreeSet::new();
        for (name, value) in row {
            if !self.top.contains(&name.as_str()) {
                out.insert(name.clone());
                continue;
            }
            if name == "reward_model" {
                if let Value::Object(rm) = value {
                    for k in rm.keys() {
                        if !REWARD_MODEL_FIELDS.contains(&k.as_str()) {
                            out.insert(format!("reward_model.{k}"));
                        }
                    }
                }
            } else if self.text_messages.contains(&name.as_str()) {
                if let Value::Array(messages) = value {
                    for k in messages
                        .iter()
                        .filter_map(Value::as_object)
                        .flat_map(Map::keys)
                    {
                        if !MESSAGE_FIELDS.contains(&k.as_str()) {
                            out.insert(format!("{name}.{k}"));
                        }
                    }
                }
            }
        }
        out.into_iter().collect()
    }
}

/// The unknown fields met while reading one file: in strict mode the first is an error; otherwise
/// they are gathered and [`finish`](Self::finish) logs them in one warning.
#[derive(Debug)]
pub struct UnknownFields {
    path: PathBuf,
    fields: RowFields,
    strict: bool,
    columns: bool,
    names: BTreeSet<String>,
    first_line: usize,
}

impl UnknownFields {
    /// A collector for the rows of `path`, which accept `fields`.
    pub fn new(path: &Path, fields: RowFields, options: LoadOptions) -> Self {
        Self {
            path: path.to_path_buf(),
            fields,
            strict: options.strict,
            columns: false,
            names: BTreeSet::new(),
            first_line: 0,
        }
    }

    /// Speaks of columns instead of fields (parquet, whose unknown names come from the schema).
    pub fn columns(mut self) -> Self {
        self.columns = true;
        self
    }

    /// Notes the unknown names of `row`, read at `line` (0: the file as a whole).
    pub fn check(&mut self, row: &Map<String, Value>, line: usize) -> Result<()> {
        for name in self.fields.unknown(row) {
            self.note(name, line)?;
        }
        Ok(())
    }

    /// Notes one unknown name met at `line`; in strict mode, the error naming it.
    pub fn note(&mut self, name: String, line: usize) -> Result<()> {
        let noun = if self.columns { "column" } else { "field" };
        if self.strict {
            return Err(Error::input(
                &self.path,
                line,
                format!(
                    "unknown {noun} {name:?}; {} has {}; strict mode (--strict) rejects unknown \
                     {noun}s, without it they are ignored with a warning",
                    self.fields.what,
                    self.fields.describe()
                ),
            ));
        }
        if self.names.is_empty() {
            self.first_line = line;
        }
        self.names.insert(name);
        Ok(())
    }

    /// The unknown names gathered so far, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.names.iter().map(String::as_str).collect()
    }

    /// The one warning for the file, if it had unknown names:
    /// `FILE: ignoring unknown fields a, b.c (first at line 3); --strict makes them errors`.
    pub fn warning(&self) -> Option<String> {
        if self.names.is_empty() {
            return None;
        }
        let noun = if self.columns { "columns" } else { "fields" };
        let at = if self.first_line > 0 {
            format!(" (first at line {})", self.first_line)
        } else {
            String::new()
        };
        Some(format!(
            "{}: ignoring unknown {noun} {}{at}; --strict makes them errors",
            self.path.display(),
            self.names().join(", ")
        ))
    }

    /// Logs [`warning`](Self::warning) with `log::warn!`, once.
    pub fn finish(self) {
        if let Some(w) = self.warning() {
            log::warn!("{w}");
        }
    }
}

/// A JSON value's kind, for messages (`found an integer`).
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object (struct)",
    }
}

/// The row as an object, or an error saying what the line holds instead.
pub fn as_row(value: &Value) -> Result<&Map<String, Value>, String> {
    value
        .as_object()
        .ok_or_else(|| format!("expected a JSON object, found {}", kind(value)))
}

/// An optional string field: absent or null gives `None`.
fn string(row: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match row.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "field {name:?}: expected a string, found {}",
            kind(other)
        )),
    }
}

/// A gold answer written as a string, a number or a boolean (`True`/`False`, as Python prints it).
fn answer_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(x) => Some(x.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_string()),
        _ => None,
    }
}

/// The gold answer of a row: its own field `own` (`answer` for RL samples, `ground_truth` for
/// reward lines), else verl's `reward_model.ground_truth`; both present must agree.
pub fn gold_answer(row: &Map<String, Value>, own: &str) -> Result<String, String> {
    const EXPECTED: &str = "a string or number";
    let own_value = match row.get(own) {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            answer_text(v)
                .ok_or_else(|| format!("field {own:?}: expected {EXPECTED}, found {}", kind(v)))?,
        ),
    };
    let verl = match row.get("reward_model") {
        None | Some(Value::Null) => None,
        Some(Value::Object(rm)) => match rm.get("ground_truth") {
            None | Some(Value::Null) if own_value.is_some() => None,
            None | Some(Value::Null) => {
                return Err(format!(
                    "field \"reward_model.ground_truth\" is missing or null; expected the gold \
                     answer as {EXPECTED}"
                ))
            }
            Some(v) => Some(answer_text(v).ok_or_else(|| {
                format!(
                    "field \"reward_model.ground_truth\": expected {EXPECTED}, found {}",
                    kind(v)
                )
            })?),
        },
        Some(other) => {
            return Err(format!(
                "field \"reward_model\": expected an object (struct) with \"ground_truth\", \
                 found {}",
                kind(other)
            ))
        }
    };
    match (own_value, verl) {
        (Some(a), Some(g)) if a != g => Err(format!(
            "fields {own:?} ({a:?}) and \"reward_model.ground_truth\" ({g:?}) disagree; give one"
        )),
        (Some(a), _) => Ok(a),
        (None, Some(g)) => Ok(g),
        (None, None) => Err(format!(
            "missing field {own:?} (or verl's \"reward_model\": {{\"ground_truth\"}}); expected \
             the gold answer as {EXPECTED}"
        )),
    }
}

/// A list of `{"role", "content"}` chat messages in field `name`.
pub fn messages(value: &Value, name: &str) -> Result<Vec<Message>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "field {name:?}: expected a list of {{\"role\": string, \"content\": string}} \
             messages, found {}",
            kind(value)
        ));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, m) in items.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(format!(
                "field {name:?}, message {}: expected {{\"role\": string, \"content\": string}}, \
                 found {}",
                i + 1,
                kind(m)
            ));
        };
        let text = |key: &str| match m.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) => Err(format!(
                "field \"{name}.{key}\" (message {}) is missing or null; expected a string",
                i + 1
            )),
            Some(other) => Err(format!(
                "field \"{name}.{key}\" (message {}): expected a string, found {}",
                i + 1,
                kind(other)
            )),
        };
        out.push(Message::new(text("role")?, text("content")?));
    }
    Ok(out)
}

/// The user prompt of field `prompt`: a string as given, or verl's list holding one user message
/// (its content). A system message or several turns are errors: RL prompts are a single user
/// turn, as in the QwenLong-L1 recipe. Absent or null gives `None`.
pub fn prompt_text(row: &Map<String, Value>) -> Result<Option<String>, String> {
    const EXPECTED: &str = "a string or a list with one {\"role\": \"user\", \"content\": string} \
                            message";
    let value = match row.get("prompt") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => return Ok(Some(s.clone())),
        Some(v @ Value::Array(_)) => v,
        Some(other) => {
            return Err(format!(
                "field \"prompt\": expected {EXPECTED}, found {}",
                kind(other)
            ))
        }
    };
    let turns = messages(value, "prompt")?;
    let roles: Vec<&str> = turns.iter().map(|m| m.role.as_str()).collect();
    if roles.contains(&"system") {
        return Err(format!(
            "field \"prompt\" has a system message (roles: {}); RL samples hold a single user \
             prompt, as in the QwenLong-L1 recipe: fold the system text into the user message",
            roles.join(", ")
        ));
    }
    match turns.as_slice() {
        [] => Err(format!(
            "field \"prompt\" is an empty list; expected {EXPECTED}"
        )),
        [m] if m.role == "user" && m.content.trim().is_empty() => {
            Err("field \"prompt\": the user message is empty".to_string())
        }
        [m] if m.role == "user" => Ok(Some(m.content.clone())),
        _ => Err(format!(
            "field \"prompt\" has {} messages (roles: {}); expected {EXPECTED}",
            turns.len(),
            roles.join(", ")
        )),
    }
}

/// An id written as a string or an integer (a whole float too, as pandas writes integers with
/// nulls); empty gives `None`.
fn id_text(v: &Value, name: &str) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.fract() == 0.0 && x.abs() < 9.0e15 => Ok(Some((x as i64).to_string())),
            _ => Err(format!(
                "field {name:?}: expected an integer or a string, found a number"
            )),
        },
        other => Err(format!(
            "field {name:?}: expected an integer or a string, found {}",
            kind(other)
        )),
    }
}

/// The row's id: `id`, else verl's `extra_info.index`.
fn row_id(row: &Map<String, Value>) -> Result<Option<String>, String> {
    if let Some(id) = row
        .get("id")
        .map(|v| id_text(v, "id"))
        .transpose()?
        .flatten()
    {
        return Ok(Some(id));
    }
    match row.get("extra_info") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(info)) => match info.get("index") {
            None => Ok(None),
            Some(v) => id_text(v, "extra_info.index"),
        },
        Some(other) => Err(format!(
            "field \"extra_info\": expected an object (struct), found {}",
            kind(other)
        )),
    }
}

/// One row of RL data (a JSONL line or a parquet row) as a sample, or what is wrong with it.
///
/// longrl's fields and verl's are read the same way in both containers: the prompt is `prompt`
/// (a string, or verl's list with one user message), else `document` + `question` (+ `choices`);
/// the answer is `answer`, else `reward_model.ground_truth`; the verifier is `task`, else
/// `data_source`; the id is `id`, else `extra_info.index`, else `default_id`. `ability`,
/// `reward_model.style` and the rest of `extra_info` are read by no one.
pub fn rl_sample(
    row: &Map<String, Value>,
    default_id: impl FnOnce() -> String,
) -> Result<RlSample, String> {
    let choices = match row.get("choices") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<Vec<String>>>()
                .ok_or("field \"choices\": expected a list of strings")?,
        ),
        Some(other) => {
            return Err(format!(
                "field \"choices\": expected a list of strings, found {}",
                kind(other)
            ))
        }
    };
    let sample = RlSample {
        id: row_id(row)?.unwrap_or_else(default_id),
        data_source: string(row, "data_source")?,
        task: string(row, "task")?,
        document: string(row, "document")?,
        question: string(row, "question")?,
        choices,
        prompt: prompt_text(row)?,
        answer: gold_answer(row, "answer")?,
    };
    if sample.prompt.is_none() {
        match (&sample.document, &sample.question) {
            (Some(_), Some(_)) => {}
            (Some(_), None) => {
                return Err(
                    "field \"question\" is missing: a sample with \"document\" needs \
                            \"question\" (or a ready \"prompt\")"
                        .into(),
                )
            }
            (None, Some(_)) => {
                return Err(
                    "field \"document\" is missing: a sample with \"question\" needs \
                            \"document\" (or a ready \"prompt\")"
                        .into(),
                )
            }
            (None, None) => {
                return Err(
                    "field \"prompt\" is missing or null; expected a string, a list \
                            with one {\"role\": \"user\", \"content\": string} message (verl), \
                            or \"document\" and \"question\""
                        .into(),
                )
            }
        }
    }
    sample.task_kind().map_err(|e| e.to_string())?;
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn unknown_names_are_sorted_with_nested_ones_and_extra_info_free() {
        let r = row(json!({
            "prompt": [{"role": "user", "content": "q", "name": "x"}],
            "reward_model": {"ground_truth": "a", "style": "rule", "score": 1},
            "extra_info": {"index": 3, "split": "train", "anything": [1]},
            "foo": 1, "ability": "doc-qa", "bar": null, "data_source": "musique"
        }));
        assert_eq!(
            RL_FIELDS.unknown(&r),
            ["bar", "foo", "prompt.name", "reward_model.score"]
        );
        assert!(REWARD_FIELDS.unknown(&r).contains(&"foo".to_string()));
        assert_eq!(
            SFT_FIELDS.unknown(&row(json!({"messages": [{"role": "user", "content": "x",
                "tool_calls": []}], "source": "s"}))),
            ["source"],
            "SFT messages keep their fields for the chat template"
        );
    }

    #[test]
    fn one_warning_lists_the_names_and_strict_names_file_line_and_field() {
        let path = Path::new("data/train.jsonl");
        let mut u = UnknownFields::new(path, RL_FIELDS, LoadOptions::default());
        assert_eq!(u.warning(), None);
        u.check(&row(json!({"answer": "a", "foo": 1})), 3).unwrap();
        u.check(&row(json!({"extra_info": {"split": "x"}, "foo": 2})), 4)
            .unwrap();
        u.check(&row(json!({"reward_model": {"x": 1}, "bar": 2})), 9)
            .unwrap();
        assert_eq!(
            u.warning().unwrap(),
            "data/train.jsonl: ignoring unknown fields bar, foo, reward_model.x (first at line \
             3); --strict makes them errors"
        );
        let mut strict = UnknownFields::new(path, RL_FIELDS, LoadOptions { strict: true });
        strict.check(&row(json!({"answer": "a"})), 1).unwrap();
        let e = strict
            .check(&row(json!({"answer": "a", "foo": 1})), 2)
            .unwrap_err();
        assert!(matches!(e, Error::Input { line: 2, .. }));
        let e = e.to_string();
        assert!(
            e.starts_with("data/train.jsonl:2: unknown field \"foo\"; an RL sample has id, "),
            "{e}"
        );
        assert!(e.contains("--strict"), "{e}");
        let mut parquet =
            UnknownFields::new(Path::new("t.parquet"), RL_FIELDS, Default::default()).columns();
        parquet.note("foo".into(), 0).unwrap();
        assert_eq!(
            parquet.warning().unwrap(),
            "t.parquet: ignoring unknown columns foo; --strict makes them errors"
        );
    }

    #[test]
    fn verl_rows_map_to_the_same_sample_as_longrl_rows() {
        let longrl = rl_sample(
            &row(json!({"id": "7", "data_source": "musique_v1", "prompt": "Q?", "answer": "A"})),
            || "line-1".into(),
        )
        .unwrap();
        let verl = rl_sample(
            &row(json!({"data_source": "musique_v1", "ability": "doc-qa",
                "prompt": [{"role": "user", "content": "Q?"}],
                "reward_model": {"style": "rule", "ground_truth": "A"},
                "extra_info": {"index": 7, "split": "train"}})),
            || "line-1".into(),
        )
        .unwrap();
        assert_eq!(verl, longrl);
        let numeric = rl_sample(
            &row(json!({"task": "docmath", "prompt": "Q", "answer": 12.5,
                "reward_model": {"ground_truth": "12.5"}})),
            || "row-3".into(),
        )
        .unwrap();
        assert_eq!(
            (numeric.answer.as_str(), numeric.id.as_str()),
            ("12.5", "row-3")
        );
        let bad = |v: Value| rl_sample(&row(v), String::new).unwrap_err();
        let e = bad(json!({"task": "qa", "prompt": "q", "answer": "a",
            "reward_model": {"ground_truth": "b"}}));
        assert!(e.contains("disagree"), "{e}");
        let e = bad(
            json!({"task": "qa", "prompt": [{"role": "system", "content": "s"},
            {"role": "user", "content": "q"}], "answer": "a"}),
        );
        assert!(e.contains("system message"), "{e}");
        let e = bad(json!({"task": "qa", "prompt": 7, "answer": "a"}));
        assert!(e.contains("found an integer"), "{e}");
        let e = bad(json!({"task": "qa", "document": "d", "answer": "a"}));
        assert!(e.contains("\"question\" is missing"), "{e}");
        let e = bad(json!({"task": "qa", "prompt": "q", "reward_model": {"style": "rule"}}));
        assert!(
            e.contains("\"reward_model.ground_truth\" is missing or null"),
            "{e}"
        );
        let e = bad(json!({"task": "qa", "prompt": "q", "answer": "a", "id": [1]}));
        assert!(
            e.contains("field \"id\": expected an integer or a string"),
            "{e}"
        );
    }
}
