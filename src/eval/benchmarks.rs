//! The seven long-document QA benchmarks of QwenLong-L1's Table 4 and loaders for their public
//! file formats: DocMath (`question`, `paragraphs`, `ground_truth`), Frames (`Prompt`, `Answer`,
//! `wiki_items`) and LongBench v1 (`input`, `context`, `answers`) for 2WikiMultihopQA, HotpotQA,
//! MuSiQue, NarrativeQA and Qasper. The document of each item is assembled as the reference
//! evaluation scripts do.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::JsonlReader;

/// One of the Table 4 benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Benchmark {
    /// DocMath-Eval (numeric reasoning over financial reports; 200 test items).
    DocMath,
    /// Frames (multi-hop questions over Wikipedia articles).
    Frames,
    /// LongBench v1 2WikiMultihopQA.
    TwoWikiMqa,
    /// LongBench v1 HotpotQA.
    HotpotQa,
    /// LongBench v1 MuSiQue.
    Musique,
    /// LongBench v1 NarrativeQA.
    NarrativeQa,
    /// LongBench v1 Qasper.
    Qasper,
}

/// How a benchmark's answers are verified by rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerKind {
    /// The first number after "the answer is", compared with DocMath's numeric rules.
    Numeric,
    /// The text after the last "the answer is", sub-exact-match against the gold.
    Text,
}

/// The public file format a benchmark is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// DocMath-Eval jsonl: `question`, `paragraphs` (strings), `ground_truth`.
    DocMath,
    /// Frames `test.jsonl`: `Prompt`, `Answer`, `wiki_items` (`title`, `text`).
    Frames,
    /// LongBench v1 jsonl: `input`, `context`, `answers` (strings), `_id`.
    LongBench,
}

impl Benchmark {
    /// All seven, in Table 4's column order.
    pub const ALL: [Benchmark; 7] = [
        Benchmark::DocMath,
        Benchmark::Frames,
        Benchmark::TwoWikiMqa,
        Benchmark::HotpotQa,
        Benchmark::Musique,
        Benchmark::NarrativeQa,
        Benchmark::Qasper,
    ];

    /// The name used on the command line and as the data file stem (`<name>.jsonl`).
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::DocMath => "docmath",
            Benchmark::Frames => "frames",
            Benchmark::TwoWikiMqa => "2wikimqa",
            Benchmark::HotpotQa => "hotpotqa",
            Benchmark::Musique => "musique",
            Benchmark::NarrativeQa => "narrativeqa",
            Benchmark::Qasper => "qasper",
        }
    }

    /// The column title in Table 4.
    pub fn title(self) -> &'static str {
        match self {
            Benchmark::DocMath => "DocMath",
            Benchmark::Frames => "Frames",
            Benchmark::TwoWikiMqa => "2WikiMQA",
            Benchmark::HotpotQa => "HotpotQA",
            Benchmark::Musique => "MuSiQue",
            Benchmark::NarrativeQa => "NarrativeQA",
            Benchmark::Qasper => "Qasper",
        }
    }

    /// The file format of the benchmark's public release.
    pub fn format(self) -> Format {
        match self {
            Benchmark::DocMath => Format::DocMath,
            Benchmark::Frames => Format::Frames,
            _ => Format::LongBench,
        }
    }

    /// How answers are verified by rule.
    pub fn answer_kind(self) -> AnswerKind {
        match self {
            Benchmark::DocMath => AnswerKind::Numeric,
            _ => AnswerKind::Text,
        }
    }

    /// QwenLong-L1-32B (DAPO)'s accuracy in Table 4 of the paper, in percent.
    pub fn paper_qwenlong_l1_32b(self) -> f64 {
        match self {
            Benchmark::DocMath => 67.5,
            Benchmark::Frames => 70.1,
            Benchmark::TwoWikiMqa => 90.5,
            Benchmark::HotpotQa => 83.0,
            Benchmark::Musique => 69.0,
            Benchmark::NarrativeQa => 56.0,
            Benchmark::Qasper => 58.5,
        }
    }

    /// Parses a comma-separated list of names (`all` for the seven); duplicates are dropped.
    pub fn parse_list(list: &str) -> Result<Vec<Benchmark>> {
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let found: Vec<Benchmark> = if name == "all" {
                Benchmark::ALL.to_vec()
            } else {
                vec![name.parse()?]
            };
            for b in found {
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
        if out.is_empty() {
            return Err(Error::Invalid(
                "--benchmarks: name at least one benchmark".into(),
            ));
        }
        Ok(out)
    }
}

impl std::str::FromStr for Benchmark {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Benchmark::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<&str> = Benchmark::ALL.iter().map(|b| b.name()).collect();
                Error::Invalid(format!(
                    "--benchmarks: unknown benchmark `{s}`; expected one of {} or all",
                    names.join(", ")
                ))
            })
    }
}

impl std::fmt::Display for Benchmark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One benchmark question with its document.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchItem {
    /// The item's id in its file (`_id`, `question_id`, `id`), or its line number.
    pub id: String,
    /// The document the question is about, assembled as the reference scripts do.
    pub document: String,
    /// The question.
    pub question: String,
    /// The gold answer scored against (LongBench: the first of `answers`, as the reference).
    pub gold: String,
    /// 1-based line of the item in its file.
    pub line: usize,
}

impl Format {
    /// The fields a line of this format needs, for error messages.
    fn expected(self) -> &'static str {
        match self {
            Format::DocMath => {
                "a DocMath line has \"question\" (string), \"paragraphs\" (strings) and \"ground_truth\""
            }
            Format::Frames => {
                "a Frames line has \"Prompt\" (string), \"Answer\" and \"wiki_items\" ({\"title\", \"text\"} objects)"
            }
            Format::LongBench => {
                "a LongBench line has \"input\" (string), \"context\" (string) and \"answers\" (strings)"
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One line of a benchmark file being read: its object, where it is, and its format, so that every
/// error names the file, the line and what the format expects.
struct Line<'a> {
    obj: &'a Value,
    path: &'a Path,
    line: usize,
    format: Format,
}

impl<'a> Line<'a> {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::input(self.path, self.line, message)
    }

    fn field(&self, name: &str) -> Result<&'a Value> {
        self.obj.get(name).ok_or_else(|| {
            self.error(format!(
                "missing field \"{name}\"; {}",
                self.format.expected()
            ))
        })
    }

    fn string(&self, name: &str) -> Result<String> {
        match self.field(name)? {
            Value::String(s) => Ok(s.clone()),
            other => Err(self.error(format!(
                "field \"{name}\": expected a string, got {}",
                kind(other)
            ))),
        }
    }

    /// The array in field `name`, described as `what` when it is not one.
    fn array(&self, name: &str, what: &str) -> Result<&'a Vec<Value>> {
        match self.field(name)? {
            Value::Array(items) => Ok(items),
            other => Err(self.error(format!(
                "field \"{name}\": expected an array of {what}, got {}",
                kind(other)
            ))),
        }
    }

    /// A gold answer as the reference prints it with `str()`: strings as they are, numbers as JSON
    /// writes them, booleans as `True` / `False`.
    fn gold_text(&self, v: &Value, name: &str) -> Result<String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(if *b { "True" } else { "False" }.into()),
            other => Err(self.error(format!(
                "field \"{name}\": expected a string, number or boolean, got {}",
                kind(other)
            ))),
        }
    }

    /// The item's id: the first of `keys` present, else its line number.
    fn id(&self, keys: &[&str]) -> String {
        keys.iter()
            .find_map(|k| match self.obj.get(*k) {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            })
            .unwrap_or_else(|| format!("line-{}", self.line))
    }

    fn parse(&self) -> Result<BenchItem> {
        match self.format {
            Format::DocMath => self.docmath(),
            Format::Frames => self.frames(),
            Format::LongBench => self.longbench(),
        }
    }

    fn docmath(&self) -> Result<BenchItem> {
        let question = self.string("question")?;
        let paragraphs = self
            .array("paragraphs", "strings")?
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                Value::String(s) => Ok(s.as_str()),
                other => Err(self.error(format!(
                    "field \"paragraphs\"[{i}]: expected a string, got {}",
                    kind(other)
                ))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BenchItem {
            id: self.id(&["question_id", "id", "_id"]),
            document: paragraphs.join("\n"),
            question,
            gold: self.gold_text(self.field("ground_truth")?, "ground_truth")?,
            line: self.line,
        })
    }

    fn frames(&self) -> Result<BenchItem> {
        let question = self.string("Prompt")?;
        let gold = self.gold_text(self.field("Answer")?, "Answer")?;
        let docs = self
            .array("wiki_items", "{\"title\", \"text\"} objects")?
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let get = |k: &str| match w.get(k) {
                    Some(Value::String(s)) => Ok(s.as_str()),
                    _ => Err(self.error(format!(
                        "field \"wiki_items\"[{i}]: expected an object with string \"title\" and \"text\""
                    ))),
                };
                Ok(format!("{}\n{}", get("title")?, get("text")?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BenchItem {
            id: self.id(&["id", "_id", "Unnamed: 0"]),
            document: docs.join("\n"),
            question,
            gold,
            line: self.line,
        })
    }

    fn longbench(&self) -> Result<BenchItem> {
        let question = self.string("input")?;
        let document = self.string("context")?;
        let answers = self.array("answers", "strings")?;
        let first = answers.first().ok_or_else(|| {
            self.error("field \"answers\": empty; at least one gold answer is needed")
        })?;
        Ok(BenchItem {
            id: self.id(&["_id", "id"]),
            document,
            question,
            gold: self.gold_text(first, "answers[0]")?,
            line: self.line,
        })
    }
}

/// Reads a benchmark file in its public format. Blank lines are skipped; a bad line is an error
/// naming the file, the line and the field; ids must be unique in the file.
pub fn load_benchmark(benchmark: Benchmark, path: &Path) -> Result<Vec<BenchItem>> {
    let mut items = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    JsonlReader::new(path)
        .on_bad_line(|e| format!("not a JSON object: {e}"))
        .for_each(|n, value: Value| {
            if !value.is_object() {
                return Err(Error::input(
                    path,
                    n,
                    format!("expected a JSON object, got {}", kind(&value)),
                ));
            }
            let item = Line {
                obj: &value,
                path,
                line: n,
                format: benchmark.format(),
            }
            .parse()?;
            if let Some(first) = seen.insert(item.id.clone(), n) {
                return Err(Error::input(
                    path,
                    n,
                    format!("duplicate id \"{}\" (first on line {first})", item.id),
                ));
            }
            items.push(item);
            Ok(())
        })?;
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_lists_parse() {
        for b in Benchmark::ALL {
            assert_eq!(b.name().parse::<Benchmark>().unwrap(), b);
        }
        assert_eq!(
            Benchmark::parse_list("frames, docmath,frames").unwrap(),
            vec![Benchmark::Frames, Benchmark::DocMath]
        );
        assert_eq!(Benchmark::parse_list("all").unwrap().len(), 7);
        let e = Benchmark::parse_list("docmath,hotpot")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown benchmark `hotpot`"), "{e}");
        assert!(Benchmark::parse_list(" , ").is_err());
        let avg: f64 = Benchmark::ALL
            .iter()
            .map(|b| b.paper_qwenlong_l1_32b())
            .sum::<f64>()
            / 7.0;
        assert!((avg - 70.7).abs() < 0.05, "{avg}");
    }
}
