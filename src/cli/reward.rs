//! `longrl reward`: the hybrid reward of every line of a JSONL file, one JSON line out per line in.

use crate::model::ModelBackend;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use serde::Deserialize;
use serde_json::{json, Value};

use super::judge::JudgeArgs;
use crate::data::TaskKind;
use crate::device::{BackendFn, DeviceSpec};
use crate::error::{Error, Result};
use crate::io::JsonlReader;
use crate::reward::{
    HybridConfig, HybridReward, Judge, OverlongConfig, RewardItem, RewardStats, RuleOptions,
};

/// Arguments of `longrl reward`.
#[derive(Debug, Args)]
pub struct RewardArgs {
    /// JSONL file: each line `{"data_source" | "task", "response", "ground_truth", "prompt"?,
    /// "question"?, "response_length"?}`.
    #[arg(long)]
    pub input: PathBuf,
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
}

/// One input line.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewardLine {
    #[serde(default)]
    data_source: Option<String>,
    #[serde(default)]
    task: Option<String>,
    response: String,
    ground_truth: Value,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    question: Option<String>,
    #[serde(default)]
    response_length: Option<usize>,
}

/// A parsed line, ready to reward.
struct Parsed {
    task: TaskKind,
    line: RewardLine,
    gold: String,
}

const EXPECTED: &str =
    "an object with \"response\" (string), \"ground_truth\" (string or number), \
     \"data_source\" or \"task\" (string), and optional \"prompt\", \"question\" (strings), \
     \"response_length\" (tokens)";

fn read_lines(path: &Path, needs_length: bool) -> Result<Vec<Parsed>> {
    let mut out = Vec::new();
    JsonlReader::new(path)
        .on_bad_line(|e| format!("{e}; expected {EXPECTED}"))
        .for_each(|n, parsed: RewardLine| {
            let gold = match &parsed.ground_truth {
                Value::String(s) => s.clone(),
                Value::Number(x) => x.to_string(),
                Value::Bool(b) => if *b { "True" } else { "False" }.to_string(),
                other => {
                    return Err(Error::input(
                        path,
                        n,
                        format!("field \"ground_truth\": expected a string or number, got {other}"),
                    ))
                }
            };
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
            });
            Ok(())
        })?;
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
    let lines = read_lines(&args.input, overlong.is_some())?;
    if let Some(j) = &judge {
        log::info!("judge: {}", j.describe());
    }
    let reward = HybridReward::new(
        HybridConfig {
            rule: RuleOptions {
                require_think: !args.no_think,
                case_insensitive: args.case_insensitive,
                ..RuleOptions::default()
            },
            overlong,
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
                prompt: p.line.prompt.as_deref(),
                response_tokens: p.line.response_length,
                response_ids: &[],
            })
            .collect();
        let (outputs, stats) = reward.score_batch(&items);
        total.add(&stats);
        for o in outputs {
            let mut line = json!({
                "score": o.score,
                "acc": o.acc,
                "pred": o.pred,
                "rule": o.rule,
                "judge": o.judge,
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
            "warning: {} judge calls failed and were scored 0",
            total.judge_failures
        );
    }
    Ok(())
}
