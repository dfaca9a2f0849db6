//! Warm-up of the rollout engine's shapes: under bucketed shapes, one pass of every prefill
//! (prompt columns x prompt batch), row copy and decoding (batch x attended keys) shape a stage
//! can produce, so that a JIT backend compiles and autotunes them before the first real step.

use std::collections::BTreeSet;

use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::engine::Engine;
use super::{prefill, PaddedBatch};
use crate::error::Result;
use crate::model::{KvCache, ModelBackend};

/// What a stage's engine calls can look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutShapes {
    /// Token counts of the stage's prompts (any order; repeats are fine).
    pub prompt_lens: Vec<usize>,
    /// Most prompts in one engine call.
    pub prompts_per_call: usize,
    /// Samples per prompt.
    pub samples_per_prompt: usize,
    /// New tokens per sample at most.
    pub max_new_tokens: usize,
}

impl<B: ModelBackend> Engine<'_, B> {
    /// Runs every bucketed shape that calls described by `shapes` can produce, once; returns
    /// the number of forward passes (0 under exact shapes: nothing to warm up).
    pub fn warm_up(&self, shapes: &RolloutShapes) -> Result<usize> {
        let buckets = &self.options().shapes;
        if !buckets.is_bucketed() || shapes.prompt_lens.is_empty() {
            return Ok(0);
        }
        let columns: BTreeSet<usize> = shapes
            .prompt_lens
            .iter()
            .map(|&l| self.prompt_columns(l.max(1)))
            .collect();
        let prompt_rows = buckets.batch_buckets(shapes.prompts_per_call.max(1));
        let samples = shapes.samples_per_prompt.max(1);
        let mut passes = 0;
        for &cols in &columns {
            let capacity = self.cache_capacity(cols, shapes.max_new_tokens);
            for &rows in &prompt_rows {
                // Prefill, then the copy of prompt rows (cache and last logits) to the samples'.
                let to = buckets.batch(rows * samples);
                let (cache, p) = self.warm_prefill(rows, cols, capacity, to)?;
                passes += p;
                let index: Vec<usize> = (0..to).map(|i| i % rows).collect();
                cache.select_rows(&index).batch_size();
            }
        }
        let first = *columns.first().expect("non-empty");
        let last = *columns.last().expect("non-empty");
        let capacity = self.cache_capacity(last, shapes.max_new_tokens);
        let keys: BTreeSet<usize> = (first + 1..last + shapes.max_new_tokens)
            .map(|end| buckets.seq(end).min(capacity))
            .collect();
        let decode_rows = buckets.batch_buckets(shapes.prompts_per_call.max(1) * samples);
        passes += self.warm_decode(&decode_rows, &keys, capacity)?;
        Ok(passes)
    }

    /// One prefill of `rows` prompts of `cols` columns into a cache of `capacity`, its last
    /// logits copied to `samples` rows; returns the cache and the forward passes run.
    fn warm_prefill(
        &self,
        rows: usize,
        cols: usize,
        capacity: usize,
        samples: usize,
    ) -> Result<(KvCache<B>, usize)> {
        let model = self.model();
        let pad = self.options().pad_token_id;
        let batch = PaddedBatch::left_padded(&vec![vec![pad; cols]; rows], pad);
        let mut cache = KvCache::new(model.config(), rows, capacity, self.device())
            .with_shapes(self.options().shapes.clone());
        let chunk = self.options().prefill_chunk.max(1);
        let last = prefill(model, &batch, &mut cache, chunk, self.device())?;
        // The rows' copy of the last logits to the samples, and the host transfer.
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![0i64; samples], [samples]),
            self.device(),
        );
        last.select(0, index).into_data();
        Ok((cache, cols.div_ceil(chunk)))
    }

    /// One decoding step for every batch bucket in `rows` (largest first, each cache cut from
    /// the previous one as finished samples leave) and attended key length in `keys`.
    fn warm_decode(
        &self,
        rows: &[usize],
        keys: &BTreeSet<usize>,
        capacity: usize,
    ) -> Result<usize> {
        let model = self.model();
        let device = self.device();
        let mut passes = 0;
        let mut cache: Option<KvCache<B>> = None;
        for &n in rows.iter().rev() {
            let mut c = match cache.take() {
                Some(c) => c.select_rows(&(0..n).collect::<Vec<_>>()),
                // A real decode's cache is the prompts' cache copied to the samples' rows.
                None => KvCache::new(model.config(), n, capacity, device)
                    .with_shapes(self.options().shapes.clone())
                    .select_rows(&(0..n).collect::<Vec<_>>()),
            };
            // Finished samples leave by any smaller bucket, not only the next one.
            for &m in rows.iter().filter(|&&m| m < n) {
                c.clone()
                    .select_rows(&(0..m).collect::<Vec<_>>())
                    .batch_size();
            }
            for &k in keys {
                // `k - 1` cached positions: this step attends over `k` keys.
                c.len = k - 1;
                let ids =
                    Tensor::<B, 2, Int>::from_data(TensorData::new(vec![0i64; n], [n, 1]), device);
                let pos = ids.clone();
                let mask =
                    Tensor::<B, 2, Bool>::from_data(TensorData::new(vec![true; n], [n, 1]), device);
                let hidden = model.forward_hidden(ids, mask, pos, Some(&mut c))?;
                model.logits(hidden).squeeze_dim::<2>(1).into_data();
                passes += 1;
            }
            cache = Some(c);
        }
        Ok(passes)
    }
}
