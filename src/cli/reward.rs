//! `longrl reward`: the hybrid reward of every line of a JSONL file, one JSON line out per line in.

use crate::model::ModelBackend;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};

use super::judge::JudgeArgs;
use crate::data::record::{self, REWARD_FIELDS};
use crate::data::{LoadOptions, TaskKind, UnknownFields};
use crate::device::{BackendFn, DeviceSpec};
use crate::error::{Error, Result};
use crate::io::JsonlReader;
use crate::reward::judge::{JudgeFailure, OutageNames, OutagePolicy};
use crate::reward::{
    HybridConfig, HybridReward, Judge, OverlongConfig, RewardItem, RewardStats, RuleOptions,
};

/// Arguments of `longrl reward`.
#[derive(Debug, Args)]
pub struct RewardArgs {
    /// JSONL file: each line `{"data_source" | "task", "response", "ground_truth", "prompt"?,
    /// "question"?, "response_length"?}`; verl's `reward_model.ground_truth` stands for
    /// `ground_truth` and `prompt` may be a message list. Other fields are ignored with one warning.
    #[arg(long)]
    pub input: PathBuf,
    /// Unknown fields in the input are errors naming the line and field (default: ignored, with
    /// one warning listing them).
    #[arg(long)]
    pub strict: bool,
    /// The LLM judge.
    #[command(flatten)]
    pub judge: JudgeArgs,
    /// Score a response without `</think>` on its whole text (models without thinking tags).
    #[arg(long)]
    pub no_think: bool,
    /// Accept "The answer is" / "the correct answer is (b)" in any case (the reference does not).
    #[arg(long)]
    pub case_insensitive: bool,
    /// Overlong shaping: the response limit L_max in tokens (needs `response_length` per line).
    #[arg(long, requires = "overlong_buffer")]
    pub max_response_length: Option<usize>,
    /// Overlong shaping: the buffer L_cache before the limit.
    #[arg(long, requires = "max_response_length")]
    pub overlong_buffer: Option<usize>,
    /// Overlong shaping: the penalty at the limit.
    #[arg(long, default_value_t = 1.0)]
    pub overlong_penalty: f64,
    /// Lines rewarded together (the judge's concurrency applies within a batch).
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// While the judge is down: `stop` (refuse to start when it fails a test query; later ask the
    /// failed queries again for up to --judge-max-outage, then fail) or `rule_only` (score them
    /// with the rule alone, written out as `"verdict": "error"`, `"judge": null`).
    #[arg(long, value_enum, default_value_t = JudgeFailure::Stop)]
    pub judge_failure: JudgeFailure,
    /// Under `--judge-failure stop`: the longest judge outage waited out, in seconds.
    #[arg(long, default_value_t = 300.0)]
    pub judge_max_outage: f64,
}

/// One input line's typed fields (the gold answer and the prompt are read by the shared row
/// helpers of [`crate::data::record`], which know verl's forms).
#[derive(Debug, Deserialize)]
struct RewardLine {
    #[serde(default)]
    data_source: Option<String>,
    #[serde(default)]
    task: Option<String>,
    response: String,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    response_length: Option<usize>,
}

/// A parsed line, ready to reward.
#[derive(Debug)]
struct Parsed {
    task: TaskKind,
    line: RewardLine,
    gold: String,
    prompt: Option<String>,
}

const EXPECTED: &str =
    "an object with \"response\" (string), \"ground_truth\" (string or number; or verl's \
     \"reward_model\": {\"ground_truth\"}), \"data_source\" or \"task\" (string), and optional \
     \"prompt\" (string or message list), \"question\" (string), \"response_length\" (tokens)";

/// Reads the reward input; unknown fields are ignored with one warning, or with `strict` the first
/// is an error naming the line and field.
fn read_lines(path: &Path, needs_length: bool, strict: bool) -> Result<Vec<Parsed>> {
    let mut out = Vec::new();
    let mut unknown = UnknownFields::new(path, REWARD_FIELDS, LoadOptions { strict });
    JsonlReader::new(path)
        .on_bad_line(|e| format!("{e}; expected {EXPECTED}"))
        .for_each(|n, value: Value| {
            let bad = |m: String| Error::input(path, n, m);
            let row =
                record::as_row(&value).map_err(|m| bad(format!("{m}; expected {EXPECTED}")))?;
            unknown.check(row, n)?;
            let parsed: RewardLine = serde_json::from_value(value.clone())
                .map_err(|e| bad(format!("{e}; expected {EXPECTED}")))?;
            let gold = record::gold_answer(row, "ground_truth").map_err(bad)?;
            let prompt = record::prompt_text(row).map_err(bad)?;
            let task = TaskKind::resolve(parsed.task.as_deref(), parsed.data_source.as_deref())
                .map_err(|e| Error::input(path, n, e.to_string()))?;
            if needs_length && parsed.response_length.is_none() {
                return Err(Error::input(
                    path,
                    n,
                    "field \"response_length\" is missing: overlong shaping \
                     (--max-response-length) needs each response's length in tokens",
                ));
            }
            out.push(Parsed {
                task,
                line: parsed,
                gold,
                prompt,
            });
            Ok(())
        })?;
    unknown.finish();
    Ok(out)
}

/// Runs `longrl reward` on `device` (used only by a local judge).
pub fn run(args: RewardArgs, device: DeviceSpec) -> Result<()> {
    match &args.judge.judge_checkpoint {
        Some(_) => device.run(LocalJudgeTask(args))?,
        None => {
            let judge = args.judge.http()?;
            reward_file(&args, judge)
        }
    }
}

struct LocalJudgeTask(RewardArgs);

impl BackendFn for LocalJudgeTask {
    type Output = Result<()>;

    fn call<B: ModelBackend>(self, device: B::Device) -> Result<()> {
        let judge = self.0.judge.build::<B>(&device)?;
        reward_file(&self.0, judge)
    }
}

fn reward_file(args: &RewardArgs, judge: Option<Arc<dyn Judge>>) -> Result<()> {
    let overlong = match (args.max_response_length, args.overlong_buffer) {
        (Some(max_response_length), Some(buffer_length)) => {
            let c = OverlongConfig {
                max_response_length,
                buffer_length,
                penalty_factor: args.overlong_penalty,
            };
            c.validate()?;
            Some(c)
        }
        _ => None,
    };
    let outage =
        OutagePolicy::from_settings(args.judge_failure, args.judge_max_outage, OutageNames::CLI)?;
    let lines = read_lines(&args.input, overlong.is_some(), args.strict)?;
    if let Some(j) = &judge {
        log::info!("judge: {}", j.describe());
        outage.check(j.as_ref())?;
    }
    let reward = HybridReward::new(
        HybridConfig {
            rule: RuleOptions {
                require_think: !args.no_think,
                case_insensitive: args.case_insensitive,
                ..RuleOptions::default()
            },
            overlong,
            outage,
        },
        judge,
    );
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut total = RewardStats::default();
    for batch in lines.chunks(args.batch_size.max(1)) {
        let items: Vec<RewardItem<'_>> = batch
            .iter()
            .map(|p| RewardItem {
                task: p.task,
                response: &p.line.response,
                ground_truth: &p.gold,
                question: p.line.question.as_deref(),
                prompt: p.prompt.as_deref(),
                response_tokens: p.line.response_length,
                response_ids: &[],
            })
            .collect();
        let (outputs, stats) = reward.score_batch(&items)?;
        total.add(&stats);
        for o in outputs {
            let mut line = json!({
                "score": o.score,
                "acc": o.acc,
                "pred": o.pred,
                "rule": o.rule,
                "judge": o.judge,
                "verdict": o.verdict,
            });
            if overlong.is_some() {
                line["overlong"] = json!(o.overlong);
                line["reward"] = json!(o.reward);
            }
            writeln!(out, "{line}").map_err(|e| Error::io("<stdout>", e))?;
        }
    }
    log::info!(
        "{} responses, {} correct; judge: {} calls, {} cache hits, {} flips, {} failures, {} unparsed",
        total.items,
        total.correct,
        total.judge_calls,
        total.judge_cache_hits,
        total.judge_flips,
        total.judge_failures,
        total.judge_unparsed
    );
    if total.judge_failures > 0 {
        eprintln!(
            "warning: {} judge calls failed and were scored with the rule alone (\"verdict\": \"error\")",
            total.judge_failures
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_fields_are_accepted_verl_fields_read_and_strict_names_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(
            &path,
            "{\"task\": \"qa\", \"response\": \"a\", \"ground_truth\": \"x\", \"model\": \"m\"}\n\
             {\"data_source\": \"docmath_v1\", \"response\": \"r\", \"reward_model\": {\"ground_truth\": 12.5, \"style\": \"rule\"}, \"prompt\": [{\"role\": \"user\", \"content\": \"P\"}], \"extra_info\": {\"index\": 1}}\n",
        )
        .unwrap();
        let lines = read_lines(&path, false, false).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].gold, "12.5");
        assert_eq!(lines[1].task, TaskKind::DocMath);
        assert_eq!(lines[1].prompt.as_deref(), Some("P"));
        let e = read_lines(&path, false, true).unwrap_err().to_string();
        assert!(e.contains("in.jsonl:1: unknown field \"model\""), "{e}");
        std::fs::write(&path, "{\"task\": \"qa\", \"response\": \"a\"}\n").unwrap();
        let e = read_lines(&path, false, false).unwrap_err().to_string();
        assert!(
            e.contains("in.jsonl:1: missing field \"ground_truth\""),
            "{e}"
        );
    }
}
