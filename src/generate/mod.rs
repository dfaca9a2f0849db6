//! Rollouts: batched sampling with the KV cache ([`Engine`]), the token sampler, and the batching
//! helpers (left padding, position ids, chunked prefill) they share.

mod engine;
mod sampling;
mod warmup;

pub use engine::{Detokenizer, Engine, EngineOptions, GenerateRequest, Sample};
pub use sampling::{sample_row, sample_seed, seq_rng, SampleScratch, SamplingParams, SeqRng};
pub use warmup::RolloutShapes;

use crate::model::ModelBackend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::model::{KvCache, Qwen2Config, Qwen2ForCausalLM};
use crate::shapes::Shapes;
use crate::tokenizer::Tokenizer;
use std::path::Path;

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token was produced (it is included in the output ids).
    Stop,
    /// `max_new_tokens` were produced.
    Length,
}

/// Settings of a greedy decoding run.
#[derive(Debug, Clone)]
pub struct GreedyConfig {
    /// Most tokens generated per sequence.
    pub max_new_tokens: usize,
    /// Token ids that end a sequence (EOS, `<|im_end|>`, ...).
    pub stop_token_ids: Vec<u32>,
    /// Id fed at padding positions (never attended to).
    pub pad_token_id: u32,
    /// Prompt tokens prefilled per forward pass, bounding prefill memory for long prompts.
    pub prefill_chunk: usize,
    /// Shape buckets (exact by default; see [`crate::shapes`]).
    pub shapes: Shapes,
}

impl Default for GreedyConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            stop_token_ids: Vec::new(),
            pad_token_id: 0,
            prefill_chunk: 2048,
            shapes: Shapes::exact(),
        }
    }
}

/// One decoded sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// Generated token ids (prompt excluded).
    pub output_ids: Vec<u32>,
    /// Why decoding stopped.
    pub finish_reason: FinishReason,
}

/// A left-padded batch of prompts, ready for the model.
#[derive(Debug, Clone)]
pub struct PaddedBatch {
    /// `[batch * len]` token ids, row-major.
    pub ids: Vec<i64>,
    /// `[batch * len]` true for real tokens.
    pub mask: Vec<bool>,
    /// `[batch * len]` positions counted from each row's first real token.
    pub positions: Vec<i64>,
    /// Rows.
    pub batch: usize,
    /// Columns (the longest prompt).
    pub len: usize,
}

impl PaddedBatch {
    /// Left-pads `prompts` with `pad` to the longest one.
    pub fn left_padded(prompts: &[Vec<u32>], pad: u32) -> Self {
        let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let batch = prompts.len();
        let mut ids = Vec::with_capacity(batch * len);
        let mut mask = Vec::with_capacity(batch * len);
        let mut positions = Vec::with_capacity(batch * len);
        for p in prompts {
            let pad_len = len - p.len();
            ids.extend(std::iter::repeat_n(pad as i64, pad_len));
            ids.extend(p.iter().map(|&t| t as i64));
            mask.extend(std::iter::repeat_n(false, pad_len));
            mask.extend(std::iter::repeat_n(true, p.len()));
            positions.extend(std::iter::repeat_n(0, pad_len));
            positions.extend(0..p.len() as i64);
        }
        Self {
            ids,
            mask,
            positions,
            batch,
            len,
        }
    }

    /// This batch left-padded to `len` columns and `rows` rows (the extra rows all padding), for
    /// bucketed shapes; `len` and `rows` are at least the current ones.
    pub fn padded_to(self, len: usize, rows: usize, pad: u32) -> Self {
        assert!(
            len >= self.len && rows >= self.batch,
            "padding never shrinks a batch"
        );
        if len == self.len && rows == self.batch {
            return self;
        }
        let extra = len - self.len;
        let mut ids = Vec::with_capacity(rows * len);
        let mut mask = Vec::with_capacity(rows * len);
        let mut positions = Vec::with_capacity(rows * len);
        for r in 0..rows {
            ids.extend(std::iter::repeat_n(pad as i64, extra));
            mask.extend(std::iter::repeat_n(false, extra));
            positions.extend(std::iter::repeat_n(0, extra));
            let row = r * self.len..(r + 1) * self.len;
            if r < self.batch {
                ids.extend_from_slice(&self.ids[row.clone()]);
                mask.extend_from_slice(&self.mask[row.clone()]);
                positions.extend_from_slice(&self.positions[row]);
            } else {
                ids.extend(std::iter::repeat_n(pad as i64, self.len));
                mask.extend(std::iter::repeat_n(false, self.len));
                positions.extend(std::iter::repeat_n(0, self.len));
            }
        }
        Self {
            ids,
            mask,
            positions,
            batch: rows,
            len,
        }
    }

    /// Columns `start..end` as device tensors (ids, mask, positions), each `[batch, end - start]`.
    pub fn columns<B: ModelBackend>(
        &self,
        start: usize,
        end: usize,
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 2, Bool>, Tensor<B, 2, Int>) {
        let w = end - start;
        let take = |v: &[i64]| -> Vec<i64> {
            (0..self.batch)
                .flat_map(|r| v[r * self.len + start..r * self.len + end].to_vec())
                .collect()
        };
        let mask: Vec<bool> = (0..self.batch)
            .flat_map(|r| self.mask[r * self.len + start..r * self.len + end].to_vec())
            .collect();
        (
            int_tensor(take(&self.ids), [self.batch, w], device),
            Tensor::from_data(TensorData::new(mask, [self.batch, w]), device),
            int_tensor(take(&self.positions), [self.batch, w], device),
        )
    }
}

/// An int tensor from host values.
pub fn int_tensor<B: ModelBackend, const D: usize>(
    values: Vec<i64>,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Prefills `batch` into `cache` in chunks of `chunk` columns and returns the logits of the last
/// column, `[batch, vocab]`.
pub fn prefill<B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    batch: &PaddedBatch,
    cache: &mut KvCache<B>,
    chunk: usize,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    if batch.len == 0 {
        return Err(Error::Invalid(
            "empty prompt: at least one token is needed".into(),
        ));
    }
    let chunk = chunk.max(1);
    let mut start = 0;
    let mut last = None;
    while start < batch.len {
        let end = (start + chunk).min(batch.len);
        let (ids, mask, pos) = batch.columns::<B>(start, end, device);
        let hidden = model.forward_hidden(ids, mask, pos, Some(cache))?;
        last = Some(hidden);
        start = end;
    }
    let hidden = last.expect("at least one chunk");
    let [b, t, h] = hidden.dims();
    let hidden = hidden.slice([0..b, t - 1..t, 0..h]);
    Ok(model.logits(hidden).squeeze_dim::<2>(1))
}

/// Greedy (argmax) decoding of a batch of prompts with the KV cache (the engine at temperature 0).
///
/// Prompts are left-padded and prefilled together in chunks, then decoded one token per step;
/// a sequence that hits a stop token or `max_new_tokens` leaves the batch, and the run ends when
/// all have stopped. Results are in prompt order.
pub fn greedy<B: ModelBackend>(
    model: &Qwen2ForCausalLM<B>,
    prompts: &[Vec<u32>],
    cfg: &GreedyConfig,
    device: &B::Device,
) -> Result<Vec<Generation>> {
    let options = EngineOptions {
        pad_token_id: cfg.pad_token_id,
        prefill_chunk: cfg.prefill_chunk,
        max_cache_bytes: None,
        shapes: cfg.shapes.clone(),
        max_prompt_len: None,
    };
    let params = SamplingParams {
        stop_token_ids: cfg.stop_token_ids.clone(),
        ..SamplingParams::greedy(cfg.max_new_tokens)
    };
    let requests: Vec<GenerateRequest> = prompts
        .iter()
        .map(|p| GenerateRequest {
            prompt: p.clone(),
            seeds: vec![0],
        })
        .collect();
    let samples = Engine::new(model, device.clone(), options).generate(&requests, &params)?;
    Ok(samples
        .into_iter()
        .flatten()
        .map(|s| Generation {
            output_ids: s.output_ids,
            finish_reason: s.finish_reason,
        })
        .collect())
}

/// The id fed at padding positions: the tokenizer's pad token, else the first stop token, else 0
/// (padding is never attended to, so any id in the vocabulary works).
pub fn pad_token_id(tokenizer: Option<&Tokenizer>, stop: &[u32]) -> u32 {
    tokenizer
        .and_then(|t| t.pad_token_id)
        .or(stop.first().copied())
        .unwrap_or(0)
}

/// The token ids that end a generation for a model folder: `config.json`'s EOS ids, those of
/// `generation_config.json` (chat models list `<|im_end|>` there) and the tokenizer's EOS token.
pub fn stop_token_ids(
    dir: &Path,
    config: &Qwen2Config,
    tokenizer: Option<&Tokenizer>,
) -> Result<Vec<u32>> {
    let mut stop: Vec<u32> = config.eos_token_ids.clone();
    stop.extend(read_generation_eos(dir)?);
    if let Some(t) = tokenizer {
        stop.extend(t.eos_token_id);
    }
    stop.sort_unstable();
    stop.dedup();
    Ok(stop)
}

/// EOS ids listed in `generation_config.json`, if the folder has one.
fn read_generation_eos(dir: &Path) -> Result<Vec<u32>> {
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::config(&path, format!("not valid JSON: {e}")))?;
    Ok(match value.get("eos_token_id") {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    })
}
