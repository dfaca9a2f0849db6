//! The rollout engine: batched sampling with the KV cache for many prompts at once, G samples per
//! prompt sharing one prefill.
//!
//! A call prefills every distinct prompt once (left-padded, in chunks of `prefill_chunk` columns so
//! long documents need bounded memory), copies each prompt's cache rows to its samples, then
//! decodes one token per step for all live sequences. A sequence that stops (stop token, stop
//! string or length) leaves the batch: its cache rows are dropped, so it costs no more compute.
//! Every sequence samples from its own random stream (seeded per sample), so its tokens do not
//! depend on which other sequences share its batch.

use crate::model::ModelBackend;
use std::collections::HashSet;

use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use rayon::prelude::*;

use super::sampling::{sample_row, seq_rng, SampleScratch, SamplingParams, SeqRng};
use super::{prefill, FinishReason, PaddedBatch};
use crate::error::{Error, Result};
use crate::model::{KvCache, Qwen2ForCausalLM};
use crate::shapes::Shapes;

/// One prompt and the seeds of its samples: `seeds.len()` samples are drawn (G for a GRPO group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateRequest {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<u32>,
    /// One seed per sample (see [`super::sample_seed`]).
    pub seeds: Vec<u64>,
}

/// One sampled continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Generated token ids (prompt excluded; a stop token is included).
    pub output_ids: Vec<u32>,
    /// `log_softmax(logits / temperature)` of each output token: the behaviour log-probs.
    pub logprobs: Vec<f32>,
    /// Why the sequence stopped.
    pub finish_reason: FinishReason,
    /// The decoded text (when the engine has a detokenizer), cut before a stop string.
    pub text: Option<String>,
}

/// Turns token ids into text (special tokens skipped), for stop strings and outputs.
pub type Detokenizer<'a> = Box<dyn Fn(&[u32]) -> Result<String> + 'a>;

/// Engine settings that do not change between calls.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Id fed at padding positions (never attended to).
    pub pad_token_id: u32,
    /// Prompt columns prefilled per forward pass.
    pub prefill_chunk: usize,
    /// Largest KV cache (bytes, f32) a call may allocate; `None` is unbounded.
    pub max_cache_bytes: Option<usize>,
    /// Shape buckets (see [`crate::shapes`]): under bucketed shapes, prompts are left-padded to a
    /// length bucket (to whole `prefill_chunk`s when longer than one), the batch to a batch
    /// bucket, the cache's capacity is a length bucket, decoding attends over bucketed key
    /// lengths, and finished sequences leave the batch only when a smaller batch bucket fits.
    pub shapes: Shapes,
    /// The longest prompt any call will see: under bucketed shapes every KV cache is then sized
    /// for it (its padded length plus `max_new_tokens`), so that the cache's shape is the same
    /// in every call with the same sampling limit. `None`: each call sizes its own.
    pub max_prompt_len: Option<usize>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            pad_token_id: 0,
            prefill_chunk: 2048,
            max_cache_bytes: None,
            shapes: Shapes::exact(),
            max_prompt_len: None,
        }
    }
}

/// Samples continuations from a model on one device.
pub struct Engine<'a, B: ModelBackend> {
    model: &'a Qwen2ForCausalLM<B>,
    device: B::Device,
    options: EngineOptions,
    detokenizer: Option<Detokenizer<'a>>,
}

/// Decoding state of one sequence.
struct Seq {
    request: usize,
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    rng: SeqRng,
    next_pos: i64,
    finished: Option<FinishReason>,
    stopped_by_string: bool,
}

/// The sequences of the live requests, one per seed, in request then seed order.
fn new_seqs(requests: &[GenerateRequest], live: &[usize]) -> Vec<Seq> {
    live.iter()
        .flat_map(|&r| {
            requests[r].seeds.iter().map(move |&seed| Seq {
                request: r,
                ids: Vec::new(),
                logprobs: Vec::new(),
                rng: seq_rng(seed),
                next_pos: requests[r].prompt.len() as i64,
                finished: None,
                stopped_by_string: false,
            })
        })
        .collect()
}

/// When a sequence stops: its stop token ids, and how many trailing tokens are decoded to look
/// for a stop string (the longest stop string's characters plus 8).
struct Stops {
    ids: HashSet<u32>,
    window: usize,
}

impl Stops {
    fn new(params: &SamplingParams) -> Self {
        Self {
            ids: params.stop_token_ids.iter().copied().collect(),
            window: params
                .stop_strings
                .iter()
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                + 8,
        }
    }
}

/// Samples the next token of every active sequence from the logits on the host, each from its
/// own sequence's random stream; keeps its buffers between steps.
struct HostSampler {
    vocab: usize,
    scratch: SampleScratch,
    /// Cache row of each sequence this step (`None`: finished).
    row_of: Vec<Option<usize>>,
}

impl HostSampler {
    fn new(vocab: usize, sequences: usize) -> Self {
        Self {
            vocab,
            scratch: SampleScratch::default(),
            row_of: vec![None; sequences],
        }
    }

    /// `(sequence, (token, log-prob))` for each row of `logits` that holds a live sequence
    /// (`rows[r]`; `None` rows are padding or finished), in row order.
    fn sample<B: ModelBackend>(
        &mut self,
        logits: Tensor<B, 2>,
        seqs: &mut [Seq],
        rows: &[Option<usize>],
        params: &SamplingParams,
    ) -> Result<Vec<(usize, (u32, f32))>> {
        let vocab = self.vocab;
        let data = logits.into_data();
        // f32 logits move to the host without a copy; other float types are converted.
        let host: Vec<f32> = if data.dtype == DType::F32 {
            data.into_vec()
                .map_err(|e| Error::Invalid(format!("logits: {e:?}")))?
        } else {
            data.iter::<f32>().collect()
        };
        debug_assert_eq!(host.len(), rows.len() * vocab);
        let live: Vec<(usize, usize)> = rows
            .iter()
            .enumerate()
            .filter_map(|(r, s)| s.map(|s| (r, s)))
            .collect();
        // Sample every row (in parallel when there are several: the device is idle meanwhile).
        if let [(r, s)] = live[..] {
            let row = &host[r * vocab..(r + 1) * vocab];
            let pick = sample_row(row, params, &mut seqs[s].rng, &mut self.scratch);
            return Ok(vec![(s, pick)]);
        }
        self.row_of.fill(None);
        for &(r, s) in &live {
            self.row_of[s] = Some(r);
        }
        let row_of = &self.row_of;
        let mut picked: Vec<(usize, usize, (u32, f32))> = seqs
            .par_iter_mut()
            .enumerate()
            .filter_map(|(s, seq)| row_of[s].map(|r| (r, s, seq)))
            .map_init(SampleScratch::default, |scratch, (r, s, seq)| {
                let row = &host[r * vocab..(r + 1) * vocab];
                (r, s, sample_row(row, params, &mut seq.rng, scratch))
            })
            .collect();
        picked.sort_unstable_by_key(|(r, _, _)| *r);
        Ok(picked.into_iter().map(|(_, s, p)| (s, p)).collect())
    }
}

impl<'a, B: ModelBackend> Engine<'a, B> {
    /// An engine for `model` on `device`.
    pub fn new(model: &'a Qwen2ForCausalLM<B>, device: B::Device, options: EngineOptions) -> Self {
        Self {
            model,
            device,
            options,
            detokenizer: None,
        }
    }

    /// The engine's settings.
    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// The model it samples from.
    pub(crate) fn model(&self) -> &Qwen2ForCausalLM<B> {
        self.model
    }

    /// The device it runs on.
    pub(crate) fn device(&self) -> &B::Device {
        &self.device
    }

    /// Adds a detokenizer: samples then carry text, and stop strings can be used.
    pub fn with_detokenizer(mut self, detokenizer: Detokenizer<'a>) -> Self {
        self.detokenizer = Some(detokenizer);
        self
    }

    /// Samples every request; the result holds, per request, its samples in seed order.
    pub fn generate(
        &self,
        requests: &[GenerateRequest],
        params: &SamplingParams,
    ) -> Result<Vec<Vec<Sample>>> {
        self.generate_with_progress(requests, params, &mut |_| {})
    }

    /// As [`Self::generate`], calling `progress(n)` after each decoding step that produced `n` tokens.
    pub fn generate_with_progress(
        &self,
        requests: &[GenerateRequest],
        params: &SamplingParams,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<Vec<Sample>>> {
        params.validate()?;
        self.validate(requests, params)?;
        let live: Vec<usize> = (0..requests.len())
            .filter(|&i| !requests[i].seeds.is_empty())
            .collect();
        let mut seqs = new_seqs(requests, &live);
        if seqs.is_empty() || params.max_new_tokens == 0 {
            seqs.iter_mut()
                .for_each(|s| s.finished = Some(FinishReason::Length));
            return self.finish(requests, seqs, params);
        }
        let (mut cache, mut logits) = self.prefill_samples(requests, &live, params)?;
        let stops = Stops::new(params);
        // `rows[r]` is the sequence in cache row r (`None`: padding, or finished).
        let mut rows: Vec<Option<usize>> = (0..cache.batch_size())
            .map(|r| (r < seqs.len()).then_some(r))
            .collect();
        let mut sampler = HostSampler::new(self.model.config().vocab_size, seqs.len());
        loop {
            let picks = sampler.sample(logits, &mut seqs, &rows, params)?;
            progress(picks.len());
            for (s, (tok, lp)) in picks {
                self.push_token(&mut seqs[s], tok, lp, &stops, params)?;
            }
            for slot in rows.iter_mut() {
                if slot.is_some_and(|s| seqs[s].finished.is_some()) {
                    *slot = None;
                }
            }
            let live_rows: Vec<usize> = (0..rows.len()).filter(|&r| rows[r].is_some()).collect();
            if live_rows.is_empty() {
                break;
            }
            // Finished rows leave the batch when a smaller batch (bucket) holds the rest.
            let target = self.options.shapes.batch(live_rows.len());
            if target < rows.len() {
                let mut keep = live_rows.clone();
                keep.resize(target, live_rows[0]);
                cache = cache.select_rows(&keep);
                rows = (0..target)
                    .map(|i| live_rows.get(i).and_then(|&r| rows[r]))
                    .collect();
            }
            logits = self.decode_step(&mut seqs, &rows, &mut cache)?;
        }
        self.finish(requests, seqs, params)
    }

    /// Prefills every live request's prompt once (left-padded), then copies its cache rows and
    /// last logits to each of its samples: the result has one row per sequence.
    fn prefill_samples(
        &self,
        requests: &[GenerateRequest],
        live: &[usize],
        params: &SamplingParams,
    ) -> Result<(KvCache<B>, Tensor<B, 2>)> {
        let prompts: Vec<Vec<u32>> = live.iter().map(|&r| requests[r].prompt.clone()).collect();
        let shapes = &self.options.shapes;
        let chunk = self.options.prefill_chunk.max(1);
        let batch = PaddedBatch::left_padded(&prompts, self.options.pad_token_id);
        // Whole chunks past the first, so every chunk has the same width.
        let len = self.prompt_columns(batch.len);
        let rows = shapes.batch(batch.batch);
        let batch = batch.padded_to(len, rows, self.options.pad_token_id);
        let capacity = self.cache_capacity(batch.len, params.max_new_tokens);
        let mut cache = KvCache::new(self.model.config(), batch.batch, capacity, &self.device)
            .with_shapes(shapes.clone());
        let last = prefill(self.model, &batch, &mut cache, chunk, &self.device)?;
        // Sequence i reads prompt row `rows[i]`: copy the prefilled rows to every sample (and
        // pad the batch to its bucket with copies of the first).
        let mut rows: Vec<usize> = live
            .iter()
            .enumerate()
            .flat_map(|(row, &r)| std::iter::repeat_n(row, requests[r].seeds.len()))
            .collect();
        rows.resize(shapes.batch(rows.len()), 0);
        if rows.len() == batch.batch && rows.iter().enumerate().all(|(i, &r)| i == r) {
            return Ok((cache, last));
        }
        Ok((cache.select_rows(&rows), last.select(0, self.index(&rows))))
    }

    /// Appends a sampled token (and its log-prob) to `seq` and marks it finished when the token
    /// is a stop token, the text now holds a stop string, or the length limit is reached.
    fn push_token(
        &self,
        seq: &mut Seq,
        tok: u32,
        lp: f32,
        stops: &Stops,
        params: &SamplingParams,
    ) -> Result<()> {
        seq.ids.push(tok);
        seq.logprobs.push(lp);
        if stops.ids.contains(&tok) {
            seq.finished = Some(FinishReason::Stop);
        } else if self.hits_stop_string(&seq.ids, params, stops.window)? {
            seq.finished = Some(FinishReason::Stop);
            seq.stopped_by_string = true;
        } else if seq.ids.len() >= params.max_new_tokens {
            seq.finished = Some(FinishReason::Length);
        }
        Ok(())
    }

    /// One decoding step: every live sequence's last token at its next position goes through
    /// the model (extending the cache); returns the next logits, one row per cache row (rows
    /// without a live sequence get the padding id, their logits unused).
    fn decode_step(
        &self,
        seqs: &mut [Seq],
        rows: &[Option<usize>],
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>> {
        let n = rows.len();
        let pad = self.options.pad_token_id as i64;
        let mut ids = Vec::with_capacity(n);
        let mut pos = Vec::with_capacity(n);
        for slot in rows {
            match slot {
                Some(s) => {
                    let seq = &mut seqs[*s];
                    ids.push(*seq.ids.last().expect("sampled") as i64);
                    pos.push(seq.next_pos);
                    seq.next_pos += 1;
                }
                None => {
                    ids.push(pad);
                    pos.push(0);
                }
            }
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [n, 1]), &self.device);
        let pos = Tensor::<B, 2, Int>::from_data(TensorData::new(pos, [n, 1]), &self.device);
        let mask =
            Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; n], [n, 1]), &self.device);
        let hidden = self.model.forward_hidden(ids, mask, pos, Some(cache))?;
        Ok(self.model.logits(hidden).squeeze_dim::<2>(1))
    }

    /// The columns a left-padded prompt batch of `len` columns is padded to: a length bucket,
    /// or whole prefill chunks when longer than one chunk (`len` itself when exact).
    pub(crate) fn prompt_columns(&self, len: usize) -> usize {
        let chunk = self.options.prefill_chunk.max(1);
        match (self.options.shapes.is_bucketed(), len > chunk) {
            (false, _) => len,
            (true, true) => len.div_ceil(chunk) * chunk,
            (true, false) => self.options.shapes.seq(len),
        }
    }

    /// The KV cache capacity for a prompt batch of `columns` (padded) and `new_tokens`: exact,
    /// or under bucketed shapes the same for every call of a stage (with `max_prompt_len`).
    pub(crate) fn cache_capacity(&self, columns: usize, new_tokens: usize) -> usize {
        if !self.options.shapes.is_bucketed() {
            return columns + new_tokens;
        }
        let columns = match self.options.max_prompt_len {
            Some(max) => columns.max(self.prompt_columns(max)),
            None => columns,
        };
        // Whole chunks: few distinct capacities even without `max_prompt_len`, and little
        // memory beyond what is used (decoding attends over `shapes.seq(len)` keys at most).
        let chunk = self.options.prefill_chunk.max(1);
        (columns + new_tokens).div_ceil(chunk) * chunk
    }

    fn index(&self, rows: &[usize]) -> Tensor<B, 1, Int> {
        let v: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        Tensor::from_data(TensorData::new(v, [rows.len()]), &self.device)
    }

    fn validate(&self, requests: &[GenerateRequest], params: &SamplingParams) -> Result<()> {
        let config = self.model.config();
        let vocab = config.vocab_size;
        for (i, r) in requests.iter().enumerate() {
            if r.prompt.is_empty() {
                return Err(Error::Invalid(format!(
                    "request {i}: empty prompt; at least one token is needed"
                )));
            }
            if let Some(bad) = r.prompt.iter().find(|&&t| t as usize >= vocab) {
                return Err(Error::Invalid(format!(
                    "request {i}: token id {bad} is out of range for the model's vocab_size {vocab}"
                )));
            }
        }
        if !params.stop_strings.is_empty() && self.detokenizer.is_none() {
            return Err(Error::Invalid(
                "stop strings need a tokenizer (the engine has no detokenizer)".into(),
            ));
        }
        if let Some(limit) = self.options.max_cache_bytes {
            let prompts = requests.iter().filter(|r| !r.seeds.is_empty()).count();
            let seqs: usize = requests.iter().map(|r| r.seeds.len()).sum();
            let longest = requests.iter().map(|r| r.prompt.len()).max().unwrap_or(0);
            let positions = longest + params.max_new_tokens;
            let need = KvCache::<B>::bytes_needed(config, prompts.max(seqs), positions);
            if need > limit {
                return Err(Error::Invalid(format!(
                    "the KV cache for {seqs} sequences x {positions} positions (longest prompt {longest} + \
                     max_new_tokens {}) needs {:.2} GiB, more than the limit of {:.2} GiB: lower the batch \
                     size, the number of samples or max_new_tokens, or raise the limit",
                    params.max_new_tokens,
                    need as f64 / (1u64 << 30) as f64,
                    limit as f64 / (1u64 << 30) as f64
                )));
            }
        }
        Ok(())
    }

    /// Whether the newest tokens complete a stop string (decoding only a tail window).
    fn hits_stop_string(
        &self,
        ids: &[u32],
        params: &SamplingParams,
        window: usize,
    ) -> Result<bool> {
        let Some(detok) = &self.detokenizer else {
            return Ok(false);
        };
        if params.stop_strings.is_empty() {
            return Ok(false);
        }
        let tail = detok(&ids[ids.len().saturating_sub(window)..])?;
        Ok(params
            .stop_strings
            .iter()
            .any(|s| tail.contains(s.as_str())))
    }

    fn finish(
        &self,
        requests: &[GenerateRequest],
        seqs: Vec<Seq>,
        params: &SamplingParams,
    ) -> Result<Vec<Vec<Sample>>> {
        let mut out: Vec<Vec<Sample>> = requests
            .iter()
            .map(|r| Vec::with_capacity(r.seeds.len()))
            .collect();
        for seq in seqs {
            let text = match &self.detokenizer {
                Some(detok) => {
                    let mut text = detok(&seq.ids)?;
                    if seq.stopped_by_string {
                        if let Some(cut) = params
                            .stop_strings
                            .iter()
                            .filter_map(|s| text.find(s.as_str()))
                            .min()
                        {
                            text.truncate(cut);
                        }
                    }
                    Some(text)
                }
                None => None,
            };
            out[seq.request].push(Sample {
                output_ids: seq.ids,
                logprobs: seq.logprobs,
                finish_reason: seq.finished.unwrap_or(FinishReason::Length),
                text,
            });
        }
        Ok(out)
    }
}
