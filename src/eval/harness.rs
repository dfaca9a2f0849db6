//! `longrl eval`: the Table 4 harness. For each benchmark it prepares every item's prompt
//! (template + middle truncation), generates `n` answers with a [`Responder`] (a longrl model or
//! an OpenAI-compatible endpoint), scores them by rule and by the judge, and appends one JSON line
//! per answer to `OUT/<benchmark>.jsonl` as it goes. A rerun skips the answers already there (and
//! asks the judge again where it had failed), then writes `summary.json` and `summary.md`. A
//! judge that does not answer a test query is an error before any generation.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::io::{write_atomic, JsonlReader};
use crate::reward::judge::check_judge;
use crate::reward::{Judge, JudgeQuery, Verdict};
use crate::tokenizer::Tokenizer;

use super::benchmarks::{load_benchmark, BenchItem, Benchmark};
use super::protocol::{prepare_prompt, score_response, PreparedPrompt};

/// When the judge is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum JudgePolicy {
    /// On every answer with something to judge (the paper's protocol).
    Every,
    /// Only where the rule rejects the answer (the training reward's policy; same scores, fewer
    /// calls, as the score is the max of both).
    OnFailure,
    /// Never: rule scores only.
    Off,
}

/// One generation request: a user message and one seed per answer wanted.
#[derive(Debug, Clone)]
pub struct GenJob {
    /// The user message.
    pub prompt: String,
    /// One seed per answer.
    pub seeds: Vec<u64>,
}

/// One generated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct GenOutput {
    /// The answer text (special tokens removed).
    pub text: String,
    /// Tokens generated, when known.
    pub output_tokens: Option<usize>,
    /// Why generation stopped (`stop`, `length`, or the server's reason).
    pub finish_reason: String,
}

/// Something that answers prompts: a model run by longrl or a served model.
pub trait Responder {
    /// Answers every job; `result[i][j]` is the answer to `jobs[i]` with `jobs[i].seeds[j]`, or
    /// why it could not be produced (that answer is left for a rerun).
    #[allow(clippy::type_complexity)]
    fn respond(
        &mut self,
        jobs: &[GenJob],
    ) -> Result<Vec<Vec<std::result::Result<GenOutput, String>>>>;
    /// What answers (model folder, or endpoint and served model), for the summary.
    fn describe(&self) -> String;
}

/// Settings of an evaluation run.
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    /// Benchmarks to run, in order.
    pub benchmarks: Vec<Benchmark>,
    /// Folder holding `<name>.jsonl` per benchmark.
    pub data_dir: PathBuf,
    /// Output folder (per-answer JSONL, summaries).
    pub out: PathBuf,
    /// Answers per item.
    pub n: usize,
    /// Most tokens of a user message before middle truncation (0: no limit).
    pub max_input_tokens: usize,
    /// When the judge is asked.
    pub judge_policy: JudgePolicy,
    /// Only the first `limit` items of each benchmark (smoke runs).
    pub limit: Option<usize>,
    /// Items sent to the responder at once (and written out together).
    pub chunk: usize,
    /// Seed of the per-answer seeds.
    pub seed: u64,
    /// Settings that must match when a run is resumed (sampling, limits, model).
    pub fingerprint: BTreeMap<String, Value>,
    /// No progress bar.
    pub quiet: bool,
}

/// One scored answer: a line of `OUT/<benchmark>.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    /// The item's id in its file.
    pub id: String,
    /// Which answer of the item (0..n).
    pub sample: usize,
    /// The question.
    pub question: String,
    /// The gold answer.
    pub gold: String,
    /// The model's whole answer.
    pub response: String,
    /// The extracted answer (`None`: no "the answer is").
    pub prediction: Option<String>,
    /// Rule score (0 or 1).
    pub rule: f64,
    /// Judge score (0 or 1); `None` when the judge was not asked or its query failed.
    pub judge: Option<f64>,
    /// The judge's verdict (`yes`, `no`, `unparsed`, `error`) when asked (`failed` in files
    /// written before the failed verdict was named `error`).
    pub judge_verdict: Option<String>,
    /// `max(rule, judge)`.
    pub score: f64,
    /// Tokens of the user message before truncation (0 without a tokenizer).
    pub input_tokens: usize,
    /// Whether the user message was middle-truncated.
    pub truncated: bool,
    /// Tokens generated, when known.
    pub output_tokens: Option<usize>,
    /// Why generation stopped.
    pub finish_reason: String,
}

/// The Table 4 cell of one benchmark, with what explains it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchSummary {
    /// Mean score over items (each item's answers averaged first), in percent.
    pub accuracy: f64,
    /// Standard error of that mean over items, in percent.
    pub stderr: f64,
    /// Answers scored.
    pub n: usize,
    /// Items scored.
    pub items: usize,
    /// Mean rule score, in percent.
    pub rule_accuracy: f64,
    /// Answers the rule rejected and the judge accepted.
    pub judge_rescued: usize,
    /// Judge calls that failed (`error`: scored with the rule alone; a rerun asks again).
    pub judge_failures: usize,
    /// Answers whose prompt was middle-truncated.
    pub truncated: usize,
    /// Answers cut by the token limit (`finish_reason` = `length`).
    pub length_cut: usize,
    /// Mean tokens generated per answer, where known.
    pub mean_output_tokens: Option<f64>,
    /// QwenLong-L1-32B's accuracy in the paper's Table 4, in percent, for comparison.
    pub paper_qwenlong_l1_32b: f64,
}

/// `summary.json`: accuracy per benchmark and the unweighted average, as Table 4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// What answered.
    pub model: String,
    /// The judge, if any.
    pub judge: Option<String>,
    /// Per benchmark name.
    pub benchmarks: BTreeMap<String, BenchSummary>,
    /// Unweighted mean of the benchmark accuracies, in percent.
    pub average: f64,
    /// Standard error of that mean (the benchmarks' errors combined), in percent.
    pub average_stderr: f64,
    /// The settings the answers were generated with.
    pub settings: BTreeMap<String, Value>,
}

/// Scores of one benchmark's answers, per item, into its summary.
pub fn summarize_benchmark(benchmark: Benchmark, records: &[ItemRecord]) -> BenchSummary {
    let mut per_item: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for r in records {
        let e = per_item.entry(r.id.as_str()).or_default();
        e.0 += r.score;
        e.1 += 1;
    }
    let means: Vec<f64> = per_item.values().map(|(s, n)| s / *n as f64).collect();
    let k = means.len();
    let mean = if k == 0 {
        0.0
    } else {
        means.iter().sum::<f64>() / k as f64
    };
    let stderr = if k < 2 {
        0.0
    } else {
        let var = means.iter().map(|m| (m - mean).powi(2)).sum::<f64>() / (k - 1) as f64;
        (var / k as f64).sqrt()
    };
    let n = records.len();
    let known: Vec<usize> = records.iter().filter_map(|r| r.output_tokens).collect();
    BenchSummary {
        accuracy: 100.0 * mean,
        stderr: 100.0 * stderr,
        n,
        items: k,
        rule_accuracy: if n == 0 {
            0.0
        } else {
            100.0 * records.iter().map(|r| r.rule).sum::<f64>() / n as f64
        },
        judge_rescued: records
            .iter()
            .filter(|r| r.rule < 1.0 && r.judge == Some(1.0))
            .count(),
        judge_failures: records.iter().filter(|r| judge_failed(r)).count(),
        truncated: records.iter().filter(|r| r.truncated).count(),
        length_cut: records
            .iter()
            .filter(|r| r.finish_reason == "length")
            .count(),
        mean_output_tokens: (!known.is_empty())
            .then(|| known.iter().sum::<usize>() as f64 / known.len() as f64),
        paper_qwenlong_l1_32b: benchmark.paper_qwenlong_l1_32b(),
    }
}

/// The summary of several benchmarks: their cells and the unweighted average with its standard
/// error `sqrt(sum se_i^2) / B`.
pub fn summarize(
    model: String,
    judge: Option<String>,
    results: &[(Benchmark, BenchSummary)],
    settings: BTreeMap<String, Value>,
) -> Summary {
    let b = results.len().max(1) as f64;
    Summary {
        model,
        judge,
        average: results.iter().map(|(_, s)| s.accuracy).sum::<f64>() / b,
        average_stderr: results
            .iter()
            .map(|(_, s)| s.stderr.powi(2))
            .sum::<f64>()
            .sqrt()
            / b,
        benchmarks: results
            .iter()
            .map(|(bm, s)| (bm.name().to_string(), s.clone()))
            .collect(),
        settings,
    }
}

/// `summary.md`: a Table 4 row (with the paper's QwenLong-L1-32B row beneath when all seven were
/// run) and a table of what explains each cell.
pub fn summary_markdown(summary: &Summary, order: &[Benchmark]) -> String {
    let cells: Vec<(Benchmark, &BenchSummary)> = order
        .iter()
        .filter_map(|b| summary.benchmarks.get(b.name()).map(|s| (*b, s)))
        .collect();
    let mut md = String::from("# Evaluation (QwenLong-L1 Table 4 protocol)\n\n");
    md += &format!("Model: `{}`  \n", summary.model);
    md += &format!(
        "Judge: {}\n\n",
        summary
            .judge
            .as_deref()
            .map(|j| format!("`{j}`"))
            .unwrap_or_else(|| "none (rule scores only)".into())
    );
    md += "| Model |";
    for (b, _) in &cells {
        md += &format!(" {} |", b.title());
    }
    md += " Avg. |\n|---|";
    md += &"---:|".repeat(cells.len() + 1);
    md += "\n| this run |";
    for (_, s) in &cells {
        md += &format!(" {:.1} ± {:.1} |", s.accuracy, s.stderr);
    }
    md += &format!(
        " {:.1} ± {:.1} |\n",
        summary.average, summary.average_stderr
    );
    if cells.len() == Benchmark::ALL.len() {
        md += "| QwenLong-L1-32B (paper) |";
        for (b, _) in &cells {
            md += &format!(" {:.1} |", b.paper_qwenlong_l1_32b());
        }
        let paper = cells
            .iter()
            .map(|(b, _)| b.paper_qwenlong_l1_32b())
            .sum::<f64>()
            / cells.len() as f64;
        md += &format!(" {paper:.1} |\n");
    }
    md += "\nAccuracy in percent (± standard error over items); score = max(rule, judge).\n\n";
    md += "| Benchmark | items | answers | accuracy | rule only | judge rescued | judge failed | truncated | cut at limit | mean output tokens |\n";
    md += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (b, s) in &cells {
        md += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |\n",
            b.title(),
            s.items,
            s.n,
            s.accuracy,
            s.rule_accuracy,
            s.judge_rescued,
            s.judge_failures,
            s.truncated,
            s.length_cut,
            s.mean_output_tokens
                .map(|t| format!("{t:.0}"))
                .unwrap_or_else(|| "-".into())
        );
    }
    md += "\nSettings:";
    for (k, v) in &summary.settings {
        md += &format!(" {k} = {v};");
    }
    md.pop();
    md += "\n";
    md
}

/// Reads the answers already in `path`. A last line cut short by an interrupted write is dropped
/// (and cut from the file); any other bad line is an error naming the file and line.
pub fn read_records(path: &Path) -> Result<Vec<ItemRecord>> {
    let reader = JsonlReader::new(path).on_bad_line(|e| {
        format!("not an evaluation record ({e}); was this file written by longrl eval?")
    });
    let lines = match reader.lines() {
        Ok(lines) => lines,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut records = Vec::new();
    for line in lines {
        let line = line?;
        if line.is_blank() {
            continue;
        }
        match reader.parse::<ItemRecord>(&line) {
            Ok(r) => records.push(r),
            Err(_) if !line.complete => {
                log::warn!(
                    "{}:{}: dropping an incomplete last line (an interrupted write)",
                    path.display(),
                    line.number
                );
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(path, e))?;
                file.set_len(line.offset).map_err(|e| Error::io(path, e))?;
                break;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(records)
}

fn append_records(path: &Path, records: &[ItemRecord]) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    let mut buf = String::new();
    for r in records {
        buf += &serde_json::to_string(r).map_err(|e| Error::Invalid(e.to_string()))?;
        buf.push('\n');
    }
    file.write_all(buf.as_bytes())
        .and_then(|_| file.flush())
        .map_err(|e| Error::io(path, e))
}

fn write_records(path: &Path, records: &[ItemRecord]) -> Result<()> {
    let mut buf = String::new();
    for r in records {
        buf += &serde_json::to_string(r).map_err(|e| Error::Invalid(e.to_string()))?;
        buf.push('\n');
    }
    write_atomic(path, buf.as_bytes())
}

const CONFIG_FILE: &str = "eval_config.json";

/// Checks that `out` holds results of the same settings (or none), then records the settings.
fn check_fingerprint(out: &Path, fingerprint: &BTreeMap<String, Value>) -> Result<()> {
    let path = out.join(CONFIG_FILE);
    if path.exists() {
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let old: BTreeMap<String, Value> = serde_json::from_str(&text)
            .map_err(|e| Error::input(&path, 1, format!("not a settings object ({e})")))?;
        let changed: Vec<String> = fingerprint
            .iter()
            .filter(|(k, v)| old.get(*k).is_some_and(|o| o != *v))
            .map(|(k, v)| format!("{k} was {} and is now {v}", old[k]))
            .collect();
        if !changed.is_empty() {
            return Err(Error::Invalid(format!(
                "--out {}: it holds answers generated with other settings ({}); use another --out \
                 or remove it to start afresh",
                out.display(),
                changed.join("; ")
            )));
        }
    }
    let text =
        serde_json::to_string_pretty(fingerprint).map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomic(&path, text.as_bytes())
}

/// Asks the judge about `records[i]` for every `(i, answer)` in `asks`, filling in their judge
/// fields and scores.
fn judge_records(judge: &dyn Judge, records: &mut [ItemRecord], asks: &[(usize, String)]) {
    if asks.is_empty() {
        return;
    }
    let queries: Vec<JudgeQuery> = asks
        .iter()
        .map(|(i, answer)| JudgeQuery {
            question: records[*i].question.trim().to_string(),
            answer: answer.clone(),
            gold: records[*i].gold.clone(),
        })
        .collect();
    let outcomes = judge.judge(&queries);
    for ((i, _), outcome) in asks.iter().zip(outcomes) {
        let r = &mut records[*i];
        let failed = outcome.verdict == Verdict::Failed;
        r.judge = (!failed).then(|| outcome.verdict.score());
        r.judge_verdict = Some(outcome.verdict.name().into());
        r.score = r.rule.max(r.judge.unwrap_or(0.0));
    }
}

/// Whether the judge's query about `r` failed (`error`, or `failed` in older answer files).
fn judge_failed(r: &ItemRecord) -> bool {
    matches!(r.judge_verdict.as_deref(), Some("error" | "failed"))
}

/// The answer the judge is shown for a record, under `policy`; `None`: not asked.
fn judge_answer(policy: JudgePolicy, kind_answer: Option<String>, rule: f64) -> Option<String> {
    match policy {
        JudgePolicy::Off => None,
        JudgePolicy::OnFailure if rule >= 1.0 => None,
        _ => kind_answer,
    }
}

/// Runs the evaluation and writes `summary.json` / `summary.md` under `options.out`; returns the
/// summary.
pub fn run_eval(
    responder: &mut dyn Responder,
    tokenizer: Option<&Tokenizer>,
    judge: Option<Arc<dyn Judge>>,
    options: &HarnessOptions,
) -> Result<Summary> {
    std::fs::create_dir_all(&options.out).map_err(|e| Error::io(&options.out, e))?;
    check_fingerprint(&options.out, &options.fingerprint)?;
    let policy = if judge.is_some() {
        options.judge_policy
    } else {
        JudgePolicy::Off
    };
    if judge.is_none() && options.judge_policy != JudgePolicy::Off {
        log::warn!(
            "no judge configured (--judge-url / --judge-checkpoint): scoring by rule only, \
             which is below the paper's protocol"
        );
    }

    // Load every benchmark first, so that a bad file fails the run before any generation.
    let n = options.n.max(1);
    let plans = options
        .benchmarks
        .iter()
        .map(|&bench| BenchPlan::new(bench, options, n))
        .collect::<Result<Vec<_>>>()?;
    let judging = plans
        .iter()
        .any(|p| p.pending() > 0 || p.records.iter().any(judge_failed));
    // A dead judge is an error before any generation, not a whole run of `error` verdicts.
    if let (Some(judge), true) = (&judge, judging && policy != JudgePolicy::Off) {
        let without = "pass --judge-policy off to score by the rule alone";
        check_judge(judge.as_ref(), "--judge-url", without)?;
    }
    let bar = progress_bar(options.quiet, plans.iter().map(BenchPlan::pending).sum());

    let mut answering = Answering {
        responder,
        tokenizer,
        judge: judge.as_deref(),
        policy,
        options,
    };
    let mut results = Vec::new();
    for mut plan in plans {
        bar.set_message(plan.bench.name());
        answering.rejudge_failed(&mut plan)?;
        let mut failed = 0usize;
        for chunk in plan.todo.chunks(options.chunk.max(1)) {
            let fresh = answering.answer(plan.bench, &plan.items, chunk, &mut failed)?;
            append_records(&plan.out_path, &fresh)?;
            bar.inc(chunk.iter().map(|(_, s)| s.len() as u64).sum());
            plan.records.extend(fresh);
        }
        if failed > 0 {
            log::warn!(
                "{}: {failed} answers could not be generated; rerun the same command to complete them",
                plan.bench.name()
            );
        }
        results.push((plan.bench, plan.score(n)));
    }
    bar.finish_and_clear();
    let summary = summarize(
        answering.responder.describe(),
        judge.as_ref().map(|j| j.describe()),
        &results,
        options.fingerprint.clone(),
    );
    let json = serde_json::to_string_pretty(&summary).map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomic(&options.out.join("summary.json"), json.as_bytes())?;
    write_atomic(
        &options.out.join("summary.md"),
        summary_markdown(&summary, &options.benchmarks).as_bytes(),
    )?;
    Ok(summary)
}

/// One benchmark's work: its items, its answer file with the answers already there, and the
/// answers still to produce.
struct BenchPlan {
    bench: Benchmark,
    items: Vec<BenchItem>,
    out_path: PathBuf,
    records: Vec<ItemRecord>,
    /// Per item (by index) with missing answers, the sample numbers to produce.
    todo: Vec<(usize, Vec<usize>)>,
}

impl BenchPlan {
    /// Loads `bench` from `--data-dir` (cut to `--limit`) and the answers already in `--out`.
    fn new(bench: Benchmark, options: &HarnessOptions, n: usize) -> Result<Self> {
        let path = options.data_dir.join(format!("{}.jsonl", bench.name()));
        if !path.exists() {
            return Err(Error::Invalid(format!(
                "{}: no such file; --data-dir must hold {}.jsonl for --benchmarks {}",
                path.display(),
                bench.name(),
                bench.name()
            )));
        }
        let mut items = load_benchmark(bench, &path)?;
        if let Some(limit) = options.limit {
            items.truncate(limit);
        }
        let out_path = options.out.join(format!("{}.jsonl", bench.name()));
        let records = read_records(&out_path)?;
        let todo = pending(&items, &records, n);
        Ok(Self {
            bench,
            items,
            out_path,
            records,
            todo,
        })
    }

    /// Answers still to produce.
    fn pending(&self) -> usize {
        self.todo.iter().map(|(_, s)| s.len()).sum()
    }

    /// The benchmark's score over the answers of its (kept) items with sample numbers below `n`.
    fn score(self, n: usize) -> BenchSummary {
        let kept: HashSet<&str> = self.items.iter().map(|it| it.id.as_str()).collect();
        let scored: Vec<ItemRecord> = self
            .records
            .into_iter()
            .filter(|r| kept.contains(r.id.as_str()) && r.sample < n)
            .collect();
        let s = summarize_benchmark(self.bench, &scored);
        log::info!(
            "{}: {:.1}% ± {:.1} over {} items ({} answers)",
            self.bench.name(),
            s.accuracy,
            s.stderr,
            s.items,
            s.n
        );
        s
    }
}

/// The progress bar over every pending answer (hidden with `--quiet`).
fn progress_bar(quiet: bool, pending_total: usize) -> ProgressBar {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(pending_total as u64), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} {msg:>12} [{bar:30}] {pos}/{len} answers {per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar
}

/// What producing and scoring answers needs: the responder, the tokenizer that measures and
/// truncates prompts, the judge and when to ask it.
struct Answering<'a> {
    responder: &'a mut dyn Responder,
    tokenizer: Option<&'a Tokenizer>,
    judge: Option<&'a dyn Judge>,
    policy: JudgePolicy,
    options: &'a HarnessOptions,
}

impl Answering<'_> {
    /// Asks the judge again about the answers of `plan` it failed on before, rewriting the
    /// benchmark's answer file when any were asked.
    fn rejudge_failed(&self, plan: &mut BenchPlan) -> Result<()> {
        let Some(judge) = self.judge else {
            return Ok(());
        };
        let bench = plan.bench;
        let asks: Vec<(usize, String)> = plan
            .records
            .iter()
            .enumerate()
            .filter(|(_, r)| judge_failed(r))
            .filter_map(|(i, r)| {
                let v = score_response(bench.answer_kind(), &r.response, &r.gold);
                judge_answer(self.policy, v.judge_answer, v.score).map(|a| (i, a))
            })
            .collect();
        if !asks.is_empty() {
            log::info!(
                "{}: asking the judge again about {} answers it failed on",
                bench.name(),
                asks.len()
            );
            judge_records(judge, &mut plan.records, &asks);
            write_records(&plan.out_path, &plan.records)?;
        }
        Ok(())
    }

    /// Generates and scores the answers of one chunk of `(item index, sample numbers)`; answers
    /// the responder could not produce are logged and counted in `failed`.
    fn answer(
        &mut self,
        bench: Benchmark,
        items: &[BenchItem],
        chunk: &[(usize, Vec<usize>)],
        failed: &mut usize,
    ) -> Result<Vec<ItemRecord>> {
        let options = self.options;
        let prepared: Vec<PreparedPrompt> = chunk
            .iter()
            .map(|(i, _)| prepare_prompt(&items[*i], self.tokenizer, options.max_input_tokens))
            .collect::<Result<_>>()?;
        let jobs: Vec<GenJob> = chunk
            .iter()
            .zip(&prepared)
            .map(|((i, samples), p)| GenJob {
                prompt: p.text.clone(),
                seeds: samples
                    .iter()
                    .map(|&j| {
                        crate::generate::sample_seed(
                            options.seed ^ bench_salt(bench),
                            *i as u64,
                            j as u64,
                        )
                    })
                    .collect(),
            })
            .collect();
        let outputs = self.responder.respond(&jobs)?;
        let mut fresh = Vec::new();
        let mut asks = Vec::new();
        for (((i, samples), p), outs) in chunk.iter().zip(&prepared).zip(outputs) {
            let it = &items[*i];
            for (&j, out) in samples.iter().zip(outs) {
                let out = match out {
                    Ok(o) => o,
                    Err(why) => {
                        log::warn!(
                            "{} item {} answer {j}: {why}; left for a rerun",
                            bench.name(),
                            it.id
                        );
                        *failed += 1;
                        continue;
                    }
                };
                let v = score_response(bench.answer_kind(), &out.text, &it.gold);
                if let Some(a) = judge_answer(self.policy, v.judge_answer.clone(), v.score) {
                    asks.push((fresh.len(), a));
                }
                fresh.push(ItemRecord {
                    id: it.id.clone(),
                    sample: j,
                    question: it.question.clone(),
                    gold: it.gold.clone(),
                    response: out.text,
                    prediction: v.prediction,
                    rule: v.score,
                    judge: None,
                    judge_verdict: None,
                    score: v.score,
                    input_tokens: p.input_tokens,
                    truncated: p.truncated,
                    output_tokens: out.output_tokens,
                    finish_reason: out.finish_reason,
                });
            }
        }
        if let Some(j) = self.judge {
            judge_records(j, &mut fresh, &asks);
        }
        Ok(fresh)
    }
}

/// The answers still to produce: for each item (by index) with missing answers, the sample
/// numbers (0..n) that `records` lacks.
fn pending(items: &[BenchItem], records: &[ItemRecord], n: usize) -> Vec<(usize, Vec<usize>)> {
    let done: HashSet<(&str, usize)> = records.iter().map(|r| (r.id.as_str(), r.sample)).collect();
    items
        .iter()
        .enumerate()
        .filter_map(|(i, it)| {
            let samples: Vec<usize> = (0..n)
                .filter(|j| !done.contains(&(it.id.as_str(), *j)))
                .collect();
            (!samples.is_empty()).then_some((i, samples))
        })
        .collect()
}

/// A per-benchmark salt for the sampling seeds, so that item `i` of two benchmarks does not share
/// its random stream.
fn bench_salt(bench: Benchmark) -> u64 {
    bench.name().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, sample: usize, rule: f64, judge: Option<f64>) -> ItemRecord {
        ItemRecord {
            id: id.into(),
            sample,
            question: "q".into(),
            gold: "g".into(),
            response: "r".into(),
            prediction: None,
            rule,
            judge,
            judge_verdict: judge.map(|j| if j > 0.0 { "yes" } else { "no" }.into()),
            score: rule.max(judge.unwrap_or(0.0)),
            input_tokens: 10,
            truncated: id == "a",
            output_tokens: Some(4 + sample),
            finish_reason: if sample == 1 { "length" } else { "stop" }.into(),
        }
    }

    #[test]
    fn summary_arithmetic() {
        // Items: a = (1 + 0) / 2 = 0.5, b = (1 + 1) / 2 = 1, c = (0 + 0) / 2 = 0.
        let records = vec![
            rec("a", 0, 1.0, Some(1.0)),
            rec("a", 1, 0.0, Some(0.0)),
            rec("b", 0, 0.0, Some(1.0)),
            rec("b", 1, 1.0, None),
            rec("c", 0, 0.0, Some(0.0)),
            rec("c", 1, 0.0, None),
        ];
        let s = summarize_benchmark(Benchmark::Frames, &records);
        assert!((s.accuracy - 50.0).abs() < 1e-12);
        // Sample sd of (0.5, 1, 0) is 0.5; stderr = 0.5 / sqrt(3).
        assert!(
            (s.stderr - 100.0 * 0.5 / 3f64.sqrt()).abs() < 1e-9,
            "{}",
            s.stderr
        );
        assert_eq!((s.n, s.items), (6, 3));
        assert!((s.rule_accuracy - 100.0 * 2.0 / 6.0).abs() < 1e-9);
        assert_eq!(s.judge_rescued, 1);
        assert_eq!(s.truncated, 2);
        assert_eq!(s.length_cut, 3);
        assert_eq!(s.mean_output_tokens, Some(4.5));

        let one = summarize_benchmark(Benchmark::DocMath, &records[..1]);
        assert_eq!((one.accuracy, one.stderr), (100.0, 0.0));
        let empty = summarize_benchmark(Benchmark::DocMath, &[]);
        assert_eq!((empty.accuracy, empty.n), (0.0, 0));

        let all = summarize(
            "m".into(),
            None,
            &[(Benchmark::Frames, s.clone()), (Benchmark::DocMath, one)],
            BTreeMap::new(),
        );
        assert!((all.average - 75.0).abs() < 1e-12);
        assert!((all.average_stderr - s.stderr / 2.0).abs() < 1e-12);
        let md = summary_markdown(&all, &[Benchmark::DocMath, Benchmark::Frames]);
        assert!(
            md.contains("| this run | 100.0 ± 0.0 | 50.0 ± 28.9 | 75.0 ± 14.4 |"),
            "{md}"
        );
        assert!(!md.contains("(paper)"), "the paper row needs all seven");
    }

    #[test]
    fn judge_policy_decides_who_is_asked() {
        let a = || Some("x".to_string());
        assert_eq!(judge_answer(JudgePolicy::Every, a(), 1.0), a());
        assert_eq!(judge_answer(JudgePolicy::OnFailure, a(), 1.0), None);
        assert_eq!(judge_answer(JudgePolicy::OnFailure, a(), 0.0), a());
        assert_eq!(judge_answer(JudgePolicy::Off, a(), 0.0), None);
        assert_eq!(judge_answer(JudgePolicy::Every, None, 0.0), None);
    }

    #[test]
    fn torn_last_line_is_dropped_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames.jsonl");
        let good = serde_json::to_string(&rec("a", 0, 1.0, None)).unwrap();
        std::fs::write(&path, format!("{good}\n{}", &good[..good.len() / 2])).unwrap();
        let records = read_records(&path).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{good}\n"));
        std::fs::write(&path, format!("{{\"id\": 3}}\n{good}\n")).unwrap();
        let e = read_records(&path).unwrap_err().to_string();
        assert!(e.contains("frames.jsonl:1:"), "{e}");
        assert!(read_records(&dir.path().join("none.jsonl"))
            .unwrap()
            .is_empty());
    }
}
