//! The QwenLong-L1 hybrid reward: the rule verifier first; the LLM judge only when the rule score is
//! below 1, an answer was parsed and the task is not multiple choice; correctness = max(rule,
//! judge); `acc` = (correctness == 1); overlong shaping added after.
//!
//! A batch's rule checks run in parallel; its judge queries are deduplicated, looked up in a cache
//! keyed on (question, answer, gold), and the rest sent to the judge in one concurrent call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use serde::Serialize;

use super::judge::{question_from_prompt, Judge, JudgeQuery, OutagePolicy, OutageWatch, Verdict};
use super::rule::{self, RuleOptions};
use super::shaping::OverlongConfig;
use crate::data::TaskKind;
use crate::error::Result;

/// One response to reward.
#[derive(Debug, Clone, Copy)]
pub struct RewardItem<'a> {
    /// Which verifier applies.
    pub task: TaskKind,
    /// The full response text (reasoning included).
    pub response: &'a str,
    /// The gold answer.
    pub ground_truth: &'a str,
    /// The question shown to the judge; when absent it is cut from `prompt`.
    pub question: Option<&'a str>,
    /// The prompt text (recipe template), from which the judge's question is cut.
    pub prompt: Option<&'a str>,
    /// Response length in tokens, for overlong shaping.
    pub response_tokens: Option<usize>,
    /// The response's token ids, when known (for token-level reward functions).
    pub response_ids: &'a [u32],
}

/// Anything that rewards a batch of responses: the hybrid reward, or a researcher's own function.
pub trait Rewarder: Send + Sync {
    /// One output per item, in order, and the batch's counters; an error (e.g. the judge down for
    /// longer than allowed) stops the RL step before any update.
    fn reward(&self, items: &[RewardItem<'_>]) -> Result<(Vec<RewardOutput>, RewardStats)>;
}

impl Rewarder for HybridReward {
    fn reward(&self, items: &[RewardItem<'_>]) -> Result<(Vec<RewardOutput>, RewardStats)> {
        self.score_batch(items)
    }
}

/// The reward of one response and how it was reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RewardOutput {
    /// Correctness: max(rule, judge).
    pub score: f64,
    /// `score == 1`, the accuracy dynamic sampling filters on.
    pub acc: bool,
    /// The parsed answer (`None` when none was found).
    pub pred: Option<String>,
    /// The rule verifier's score.
    pub rule: f64,
    /// The judge's score, when it was asked and answered (`None` for a failed query).
    pub judge: Option<f64>,
    /// The judge's verdict, when it was asked (`error` when the query failed).
    pub verdict: Option<Verdict>,
    /// Overlong penalty (0 when shaping is off or the response is short enough).
    pub overlong: f64,
    /// The training reward: `score + overlong`.
    pub reward: f64,
}

impl RewardOutput {
    /// The output of a reward function that gives one score (no judge, no shaping): `reward =
    /// rule = score`, with the accuracy the caller decides.
    pub fn from_score(score: f64, acc: bool) -> Self {
        Self {
            score,
            acc,
            pred: None,
            rule: score,
            judge: None,
            verdict: None,
            overlong: 0.0,
            reward: score,
        }
    }
}

/// Counters of one batch (or, summed with [`RewardStats::add`], of a run).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RewardStats {
    /// Responses rewarded.
    pub items: usize,
    /// Responses whose correctness is 1.
    pub correct: usize,
    /// Queries sent to the judge (after cache and deduplication).
    pub judge_calls: usize,
    /// Queries answered from the cache or by an identical query of the same batch.
    pub judge_cache_hits: usize,
    /// Responses the rule scored below 1 and the judge raised to 1.
    pub judge_flips: usize,
    /// Judge calls that failed (server down, timeout, retries exhausted, circuit open) and were
    /// scored with the rule alone (`judge_failure = "rule_only"`).
    pub judge_failures: usize,
    /// Judge replies without `[[YES]]`/`[[NO]]`: scored 0.
    pub judge_unparsed: usize,
    /// Responses that lost reward to overlong shaping.
    pub overlong_penalised: usize,
}

impl RewardStats {
    /// Adds another batch's counters.
    pub fn add(&mut self, other: &RewardStats) {
        self.items += other.items;
        self.correct += other.correct;
        self.judge_calls += other.judge_calls;
        self.judge_cache_hits += other.judge_cache_hits;
        self.judge_flips += other.judge_flips;
        self.judge_failures += other.judge_failures;
        self.judge_unparsed += other.judge_unparsed;
        self.overlong_penalised += other.overlong_penalised;
    }
}

/// Settings of the hybrid reward.
#[derive(Debug, Clone, Default)]
pub struct HybridConfig {
    /// Rule verifier options.
    pub rule: RuleOptions,
    /// Overlong shaping; `None` is off.
    pub overlong: Option<OverlongConfig>,
    /// What to do while the judge is down (default: stop after a 300 s outage).
    pub outage: OutagePolicy,
}

/// Most cached verdicts kept; the cache is emptied when it grows past this.
const CACHE_LIMIT: usize = 1 << 20;

/// The hybrid rewarder: rule verifiers, an optional judge and its verdict cache.
pub struct HybridReward {
    config: HybridConfig,
    judge: Option<Arc<dyn Judge>>,
    cache: Mutex<HashMap<JudgeQuery, Verdict>>,
    watch: OutageWatch,
}

impl HybridReward {
    /// A rewarder; `judge: None` scores with the rules alone.
    pub fn new(config: HybridConfig, judge: Option<Arc<dyn Judge>>) -> Self {
        Self {
            watch: OutageWatch::new(config.outage),
            config,
            judge,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The judge, if one is configured.
    pub fn judge(&self) -> Option<&Arc<dyn Judge>> {
        self.judge.as_ref()
    }

    /// Rewards a batch: one output per item, in order, and the batch's counters; an error when the
    /// judge is down longer than the outage policy allows.
    pub fn score_batch(
        &self,
        items: &[RewardItem<'_>],
    ) -> Result<(Vec<RewardOutput>, RewardStats)> {
        let rules: Vec<rule::RuleResult> = items
            .par_iter()
            .map(|it| rule::score(it.task, it.response, it.ground_truth, &self.config.rule))
            .collect();
        let mut stats = RewardStats {
            items: items.len(),
            ..RewardStats::default()
        };

        // Which items the judge sees, and the distinct queries among them.
        let mut asks: Vec<Option<usize>> = vec![None; items.len()];
        let mut queries: Vec<JudgeQuery> = Vec::new();
        let mut eligible_items = 0;
        if self.judge.is_some() {
            let mut index: HashMap<JudgeQuery, usize> = HashMap::new();
            for (i, (it, r)) in items.iter().zip(&rules).enumerate() {
                let eligible = it.task != TaskKind::MultipleChoice
                    && r.score < 1.0
                    && r.pred.as_deref().is_some_and(|p| !p.is_empty());
                if !eligible {
                    continue;
                }
                let question = match (it.question, it.prompt) {
                    (Some(q), _) => q.to_string(),
                    (None, Some(p)) => question_from_prompt(p).unwrap_or_else(|| p.to_string()),
                    (None, None) => String::new(),
                };
                let query = JudgeQuery {
                    question,
                    answer: r.pred.clone().unwrap_or_default(),
                    gold: r.gold.clone().unwrap_or_default(),
                };
                let k = *index.entry(query.clone()).or_insert_with(|| {
                    queries.push(query);
                    queries.len() - 1
                });
                asks[i] = Some(k);
                eligible_items += 1;
            }
        }
        stats.judge_cache_hits += eligible_items - queries.len();
        let verdicts = self.ask(&queries, &mut stats)?;

        let outputs = items
            .iter()
            .zip(rules)
            .zip(asks)
            .map(|((it, r), ask)| {
                let verdict = ask.map(|k| verdicts[k]);
                let judge = verdict
                    .filter(|&v| v != Verdict::Failed)
                    .map(Verdict::score);
                let score = r.score.max(judge.unwrap_or(0.0));
                if judge == Some(1.0) && r.score < 1.0 {
                    stats.judge_flips += 1;
                }
                let overlong = match (&self.config.overlong, it.response_tokens) {
                    (Some(c), Some(n)) => c.penalty(n),
                    _ => 0.0,
                };
                if overlong < 0.0 {
                    stats.overlong_penalised += 1;
                }
                let acc = score == 1.0;
                stats.correct += acc as usize;
                RewardOutput {
                    score,
                    acc,
                    pred: r.pred,
                    rule: r.score,
                    judge,
                    verdict,
                    overlong,
                    reward: score + overlong,
                }
            })
            .collect();
        Ok((outputs, stats))
    }

    /// Verdicts for distinct queries: cached ones from the cache, the rest from one judge call
    /// under the outage policy (failed ones are `Failed`, never cached).
    fn ask(&self, queries: &[JudgeQuery], stats: &mut RewardStats) -> Result<Vec<Verdict>> {
        let Some(judge) = &self.judge else {
            return Ok(Vec::new());
        };
        let mut verdicts: Vec<Option<Verdict>> = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            queries.iter().map(|q| cache.get(q).copied()).collect()
        };
        let missing: Vec<usize> = (0..queries.len())
            .filter(|&k| verdicts[k].is_none())
            .collect();
        stats.judge_cache_hits += queries.len() - missing.len();
        if !missing.is_empty() {
            let batch: Vec<JudgeQuery> = missing.iter().map(|&k| queries[k].clone()).collect();
            let outcomes = self.watch.judge(judge.as_ref(), &batch)?;
            stats.judge_calls += batch.len();
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() + batch.len() > CACHE_LIMIT {
                cache.clear();
            }
            for (j, &k) in missing.iter().enumerate() {
                let verdict = outcomes.get(j).map_or(Verdict::Failed, |o| o.verdict);
                match verdict {
                    Verdict::Failed => stats.judge_failures += 1,
                    Verdict::Unparsed => stats.judge_unparsed += 1,
                    _ => {}
                }
                if verdict != Verdict::Failed {
                    cache.insert(queries[k].clone(), verdict);
                }
                verdicts[k] = Some(verdict);
            }
        }
        Ok(verdicts
            .into_iter()
            .map(|v| v.unwrap_or(Verdict::Failed))
            .collect())
    }
}
