//! The key/value cache: an explicit value that decoding passes through the model, never hidden
//! module state, so several caches (one per request group) can live side by side.

use burn::tensor::{backend::Backend, Bool, Int, Tensor, TensorData};

use super::config::Qwen2Config;
use crate::error::{Error, Result};
use crate::shapes::Shapes;

/// Keys and values of one decoder layer, `[batch, kv_heads, capacity, head_dim]` each.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// Cached keys (after RoPE).
    pub k: Tensor<B, 4>,
    /// Cached values.
    pub v: Tensor<B, 4>,
}

/// One layer's part of a forward with the cache: its keys/values, the position this step's
/// tokens are written at, and whether attention runs over padded keys (see
/// [`KvCache::attended_keys`]).
pub(crate) struct CacheStep<B: Backend> {
    pub kv: LayerKv<B>,
    pub start: usize,
    pub padded: bool,
}

/// A preallocated KV cache for a batch: positions `0..len` are filled. Each step writes its
/// keys and values in place (`slice_assign` on a tensor the cache owns alone).
#[derive(Debug, Clone)]
pub struct KvCache<B: Backend> {
    pub(crate) layers: Vec<LayerKv<B>>,
    /// `[batch, capacity]`: true where the cached key is a real (non-padding) token.
    pub(crate) key_valid: Tensor<B, 2, Bool>,
    pub(crate) len: usize,
    capacity: usize,
    /// Under bucketed shapes, decoding attends over `shapes.seq(len)` keys (the unwritten ones
    /// masked) so the key length takes a few values instead of one per token.
    shapes: Shapes,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `batch` sequences of up to `capacity` tokens (prompt + new tokens).
    pub fn new(config: &Qwen2Config, batch: usize, capacity: usize, device: &B::Device) -> Self {
        let shape = [batch, config.num_key_value_heads, capacity, config.head_dim];
        let layers = (0..config.num_hidden_layers)
            .map(|_| LayerKv {
                k: Tensor::zeros(shape, device),
                v: Tensor::zeros(shape, device),
            })
            .collect();
        Self {
            layers,
            key_valid: Tensor::<B, 2>::zeros([batch, capacity], device).bool(),
            len: 0,
            capacity,
            shapes: Shapes::exact(),
        }
    }

    /// The same cache, decoding over key lengths bucketed by `shapes` (see
    /// [`Self::attended_keys`]); its capacity should be a bucket (`shapes.seq(..)`) so the
    /// last steps' padded key lengths fit.
    pub fn with_shapes(mut self, shapes: Shapes) -> Self {
        self.shapes = shapes;
        self
    }

    /// After `t` new tokens were recorded: how many keys attention covers, and whether they are
    /// padded past the queries (decoding, `t == 1`, under bucketed shapes: the model then uses
    /// [`crate::model::ModelBackend::decode_attention`]). Otherwise exactly the cached keys.
    pub(crate) fn attended_keys(&self, t: usize) -> (usize, bool) {
        let end = self.len + t;
        if t == 1 && self.shapes.is_bucketed() {
            (self.shapes.seq(end).min(self.capacity), true)
        } else {
            (end, false)
        }
    }

    /// Bytes a cache of this size takes in f32, to size requests before allocating.
    pub fn bytes_needed(config: &Qwen2Config, batch: usize, capacity: usize) -> usize {
        2 * config.num_hidden_layers
            * batch
            * config.num_key_value_heads
            * capacity
            * config.head_dim
            * 4
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing has been cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of positions.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Batch size the cache was made for.
    pub fn batch_size(&self) -> usize {
        self.key_valid.dims()[0]
    }

    /// A cache holding rows `rows` of this one, in that order (a row may repeat).
    ///
    /// Copies a prefilled prompt to the samples of its group (`[0, 0, 0, 1, 1, 1]`) and drops
    /// finished sequences from a decoding batch, so neither costs compute again.
    pub fn select_rows(self, rows: &[usize]) -> Self {
        let device = self.key_valid.device();
        let index = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
                [rows.len()],
            ),
            &device,
        );
        Self {
            layers: self
                .layers
                .into_iter()
                .map(|kv| LayerKv {
                    k: kv.k.select(0, index.clone()),
                    v: kv.v.select(0, index.clone()),
                })
                .collect(),
            key_valid: self.key_valid.int().select(0, index).bool(),
            len: self.len,
            capacity: self.capacity,
            shapes: self.shapes,
        }
    }

    /// Checks that `new_tokens` more positions fit.
    pub(crate) fn check_room(&self, new_tokens: usize) -> Result<()> {
        if self.len + new_tokens > self.capacity {
            return Err(Error::Invalid(format!(
                "KV cache full: {} cached + {new_tokens} new tokens exceed its capacity of {}",
                self.len, self.capacity
            )));
        }
        Ok(())
    }

    /// Records the validity of `t` new key positions, `[batch, t]`.
    pub(crate) fn push_valid(&mut self, valid: Tensor<B, 2, Bool>) {
        let [b, t] = valid.dims();
        let start = self.len;
        self.key_valid = self
            .key_valid
            .clone()
            .slice_assign([0..b, start..start + t], valid);
    }

    /// Validity of the keys `0..len`.
    pub(crate) fn valid_prefix(&self, len: usize) -> Tensor<B, 2, Bool> {
        let b = self.batch_size();
        self.key_valid.clone().slice([0..b, 0..len])
    }
}
