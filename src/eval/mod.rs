//! Evaluation. [`evaluate`] is the pipeline's held-out check: generate for every item with the
//! rollout engine, reward with the same verifiers as training, and report accuracy overall, per
//! task family and per length bucket. [`harness`] is `longrl eval`, the seven long-document QA
//! benchmarks of QwenLong-L1's Table 4 ([`benchmarks`], [`protocol`]) for a longrl model or a
//! served one ([`responder`]).

pub mod benchmarks;
pub mod harness;
pub mod protocol;
pub mod responder;

use crate::model::ModelBackend;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::TaskKind;
use crate::error::Result;
use crate::generate::{sample_seed, Engine, EngineOptions, GenerateRequest, SamplingParams};
use crate::model::Qwen2ForCausalLM;
use crate::reward::{RewardItem, Rewarder, Verdict};
use crate::tokenizer::Tokenizer;

/// Generation settings of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalOptions {
    /// Sampling temperature (0: greedy).
    pub temperature: f32,
    /// Nucleus mass.
    pub top_p: f32,
    /// Most new tokens per answer.
    pub max_new_tokens: usize,
    /// Samples per item (accuracy averages them).
    pub n: usize,
    /// Seed of the sampling streams.
    pub seed: u64,
    /// Items decoded together.
    pub batch_size: usize,
    /// Prompt columns prefilled per forward pass.
    pub prefill_chunk: usize,
    /// The pipeline's length buckets: ascending upper edges in prompt tokens (default, empty: the
    /// stages' `max_input_tokens`), so runs with different stages report the same buckets.
    pub length_buckets: Vec<usize>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.95,
            max_new_tokens: 10000,
            n: 1,
            seed: 0,
            batch_size: 16,
            prefill_chunk: 2048,
            length_buckets: Vec::new(),
        }
    }
}

/// One item to evaluate.
#[derive(Debug, Clone)]
pub struct EvalItem {
    /// The sample's id (reported with its prediction).
    pub id: String,
    /// Prompt ids (chat template with generation prompt).
    pub prompt_ids: Vec<u32>,
    /// The user prompt text (the judge's question is cut from it).
    pub prompt_text: String,
    /// Verifier.
    pub task: TaskKind,
    /// Gold answer.
    pub answer: String,
    /// The length bucket this item is reported under (e.g. `<=1024`).
    pub bucket: String,
}

/// Correct count and total of a slice of the evaluation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// Mean score (accuracy).
    pub accuracy: f64,
    /// Samples scored.
    pub n: usize,
}

/// The result of an evaluation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Mean score over all samples.
    pub accuracy: f64,
    /// Samples scored.
    pub n: usize,
    /// Per task family.
    pub by_task: BTreeMap<String, Tally>,
    /// Per length bucket.
    pub by_bucket: BTreeMap<String, Tally>,
    /// Every answer with its score, in item order (written per phase by the pipeline).
    #[serde(skip)]
    pub predictions: Vec<Prediction>,
}

/// One evaluated answer: which item, what the model said, how it scored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The item's id.
    pub id: String,
    /// Its task family.
    pub task: String,
    /// Its length bucket.
    pub bucket: String,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// The gold answer.
    pub answer: String,
    /// The model's answer.
    pub response: String,
    /// Its score.
    pub score: f64,
    /// The judge's verdict when it was asked (`error`: its query failed and the rule alone
    /// scored the answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
}

fn tally(map: &mut BTreeMap<String, (f64, usize)>, key: &str, score: f64) {
    let e = map.entry(key.to_string()).or_default();
    e.0 += score;
    e.1 += 1;
}

fn finish(map: BTreeMap<String, (f64, usize)>) -> BTreeMap<String, Tally> {
    map.into_iter()
        .map(|(k, (s, n))| {
            (
                k,
                Tally {
                    accuracy: s / n.max(1) as f64,
                    n,
                },
            )
        })
        .collect()
}

/// Evaluates `model` on `items`; `stop` ends an answer, `pad` fills padding.
#[allow(clippy::too_many_arguments)]
pub fn evaluate<B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    tokenizer: &Tokenizer,
    items: &[EvalItem],
    rewarder: &dyn Rewarder,
    options: &EvalOptions,
    stop: &[u32],
    pad: u32,
    device: &B::Device,
) -> Result<EvalReport> {
    let engine = Engine::new(
        model,
        device.clone(),
        EngineOptions {
            pad_token_id: pad,
            prefill_chunk: options.prefill_chunk,
            max_cache_bytes: None,
            shapes: crate::shapes::Shapes::auto::<B>(),
            max_prompt_len: None,
        },
    )
    .with_detokenizer(Box::new(|ids: &[u32]| tokenizer.decode(ids, true)));
    let params = SamplingParams {
        temperature: options.temperature,
        top_p: if options.temperature == 0.0 {
            1.0
        } else {
            options.top_p
        },
        top_k: 0,
        max_new_tokens: options.max_new_tokens,
        stop_token_ids: stop.to_vec(),
        stop_strings: Vec::new(),
    };
    let (mut all, mut by_task, mut by_bucket) = ((0.0, 0usize), BTreeMap::new(), BTreeMap::new());
    let mut predictions = Vec::with_capacity(items.len());
    for (b, chunk) in items.chunks(options.batch_size.max(1)).enumerate() {
        let first = b * options.batch_size.max(1);
        let requests: Vec<GenerateRequest> = chunk
            .iter()
            .enumerate()
            .map(|(k, it)| GenerateRequest {
                prompt: it.prompt_ids.clone(),
                seeds: (0..options.n.max(1) as u64)
                    .map(|j| sample_seed(options.seed, (first + k) as u64, j))
                    .collect(),
            })
            .collect();
        let results = engine.generate(&requests, &params)?;
        let mut reward_items = Vec::new();
        let mut owners = Vec::new();
        for (it, samples) in chunk.iter().zip(&results) {
            for s in samples {
                reward_items.push(RewardItem {
                    task: it.task,
                    response: s.text.as_deref().unwrap_or(""),
                    ground_truth: &it.answer,
                    question: None,
                    prompt: Some(&it.prompt_text),
                    response_tokens: Some(s.output_ids.len()),
                    response_ids: &s.output_ids,
                });
                owners.push(it);
            }
        }
        let (outputs, _) = rewarder.reward(&reward_items)?;
        for ((o, it), r) in outputs.iter().zip(owners).zip(&reward_items) {
            all.0 += o.score;
            all.1 += 1;
            tally(&mut by_task, it.task.name(), o.score);
            tally(&mut by_bucket, &it.bucket, o.score);
            predictions.push(Prediction {
                id: it.id.clone(),
                task: it.task.name().to_string(),
                bucket: it.bucket.clone(),
                prompt_tokens: it.prompt_ids.len(),
                answer: it.answer.clone(),
                response: r.response.to_string(),
                score: o.score,
                verdict: o.verdict,
            });
        }
    }
    Ok(EvalReport {
        accuracy: all.0 / all.1.max(1) as f64,
        n: all.1,
        by_task: finish(by_task),
        by_bucket: finish(by_bucket),
        predictions,
    })
}
