use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::Autodiff;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bool, Int, Tensor, TensorPrimitive};

use super::adamw::{self, AdamWHyper};
use super::attention::{self, BLOCK_SCORES};
use super::head::{self, HeadLayout};
use super::recompute::{self, DecoderWeights};

/// A backend the Qwen2 model runs on: burn's [`Backend`] plus the memory-bounded kernels.
///
/// Implemented for every backend longrl compiles (`flex`, `ndarray`, `wgpu`, `cuda`) and for
/// `Autodiff` over any of them; a custom backend opts in with an empty `impl` (the defaults are
/// the blockwise forwards) or overrides a method with a kernel of its own.
pub trait ModelBackend: Backend {
    /// Whether the backend compiles kernels just in time per shape (cubecl: `wgpu`, `cuda`), so
    /// that shapes are worth bucketing ([`crate::shapes`]); the CPU backends run any shape as is.
    const JIT: bool = false;

    /// Causal grouped-query attention.
    ///
    /// - `q` `[batch, kv_heads, groups * q_len, head_dim]`: the `groups` query heads of each KV
    ///   head stacked group-major; the queries are the last `q_len` key positions.
    /// - `k`, `v` `[batch, kv_heads, k_len, head_dim]`, `k_len >= q_len`.
    /// - `key_valid` `[batch, k_len]`: true for real keys (padding keys are never attended to,
    ///   except by their own query).
    ///
    /// Returns `[batch, kv_heads, groups * q_len, head_dim]`, softmax(q kᵀ / √head_dim) v.
    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
        groups: usize,
    ) -> Tensor<Self, 4> {
        attention::blockwise_forward(q, k, v, key_valid, groups, BLOCK_SCORES)
    }

    /// [`Self::causal_attention`] and, when the kernel has it, each query row's log-sum-exp of
    /// scores `[batch, kv_heads, groups * q_len]`, which [`Self::causal_attention_backward`]
    /// can use instead of recomputing it.
    #[allow(clippy::type_complexity)]
    fn causal_attention_lse(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
        groups: usize,
    ) -> (Tensor<Self, 4>, Option<Tensor<Self, 3>>) {
        (Self::causal_attention(q, k, v, key_valid, groups), None)
    }

    /// Gradients `(dq, dk, dv)` of [`Self::causal_attention`] given its output `out`, the
    /// output's gradient `d_out` and, if [`Self::causal_attention_lse`] gave one, the rows'
    /// log-sum-exp (same arguments and shapes); the backward of its autodiff node.
    #[allow(clippy::too_many_arguments)]
    fn causal_attention_backward(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
        groups: usize,
        out: Tensor<Self, 4>,
        d_out: Tensor<Self, 4>,
        _lse: Option<Tensor<Self, 3>>,
    ) -> (Tensor<Self, 4>, Tensor<Self, 4>, Tensor<Self, 4>) {
        attention::blockwise_backward(q, k, v, key_valid, groups, BLOCK_SCORES, out, d_out)
    }

    /// Attention of one new query per row over a KV cache whose keys are padded past the
    /// query's own position (decoding under bucketed shapes): every key that `key_valid` marks
    /// is visible and no other, with no causal alignment of the query to the last key.
    ///
    /// - `q` `[batch, kv_heads, groups, head_dim]`; `k`, `v` `[batch, kv_heads, k_len,
    ///   head_dim]`; `key_valid` `[batch, k_len]` with at least one true per row.
    fn decode_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
    ) -> Tensor<Self, 4> {
        attention::padded_decode_attention(q, k, v, key_valid)
    }

    /// Log-probability of each target and entropy of each row's distribution
    /// `softmax(hidden · W / temperature)`, projecting at most `chunk` rows to the vocabulary at a
    /// time.
    ///
    /// - `hidden` `[rows, hidden]`, `targets` `[rows]`.
    /// - `weight`: the output projection in `layout`.
    ///
    /// Returns `[rows, 2]`: column 0 the log-probs, column 1 the entropies.
    fn head_logprobs(
        hidden: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        layout: HeadLayout,
        targets: Tensor<Self, 1, Int>,
        temperature: f32,
        chunk: usize,
    ) -> Tensor<Self, 2> {
        head::chunked_forward(hidden, weight, layout, targets, temperature, chunk)
    }

    /// `[n, 2]`: each row's log-prob of its target and entropy, from one chunk of tempered f32
    /// logits `z` `[n, vocab]` and `targets` `[n]` (the softmax part of
    /// [`Self::head_logprobs`]).
    fn head_chunk_stats(z: Tensor<Self, 2>, targets: Tensor<Self, 1, Int>) -> Tensor<Self, 2> {
        head::chunk_stats_ops(z, targets)
    }

    /// `∂/∂z` `[n, vocab]` of [`Self::head_chunk_stats`] given its output's gradient `g`
    /// `[n, 2]` (the softmax part of the head's backward).
    fn head_chunk_grad(
        z: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
        g: Tensor<Self, 2>,
    ) -> Tensor<Self, 2> {
        head::chunk_grad_ops(z, targets, g)
    }

    /// Rotary position embedding of `x` `[batch, heads, seq, head_dim]` with the tables `cos`,
    /// `sin` `[batch, 1, seq, head_dim]` (the model's `RopeParams::cos_sin`): `x cos + rot(x) sin`
    /// (HF's "rotate half"). The default is [`super::rope::apply_rotary`] in tensor ops.
    fn rotary(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>) -> Tensor<Self, 4> {
        super::rope::apply_rotary(x, cos, sin)
    }

    /// RMSNorm of each row of `x` `[rows, hidden]` with `weight` `[hidden]` (see
    /// [`super::norm`]).
    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        super::norm::rms_norm_ops(x, weight, eps)
    }

    /// `(dx, dweight)` of [`Self::rms_norm`] given the output's gradient `d`.
    fn rms_norm_backward(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 1>,
        eps: f64,
        d: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 1>) {
        super::norm::rms_norm_backward_ops(x, weight, eps, d)
    }

    /// The SwiGLU MLP's element-wise part `silu(gate) ∘ up`, `[rows, intermediate]` both (see
    /// [`super::swiglu`]).
    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        super::swiglu::swiglu_ops(gate, up)
    }

    /// `(d gate, d up)` of [`Self::swiglu`] given the output's gradient `d`.
    fn swiglu_backward(
        gate: Tensor<Self, 2>,
        up: Tensor<Self, 2>,
        d: Tensor<Self, 2>,
    ) -> (Tensor<Self, 2>, Tensor<Self, 2>) {
        super::swiglu::swiglu_backward_ops(gate, up, d)
    }

    /// `Σ x²` over all of `t`, as a one-element tensor: a gradient's part of the global norm
    /// that clipping measures (`crate::train::grad_norm`).
    fn sum_squares<const D: usize>(t: Tensor<Self, D>) -> Tensor<Self, 1> {
        t.square().sum()
    }

    /// One AdamW update of one parameter (`moments` the previous `(m, v)`, `None` on the first
    /// step); returns `(param, m, v)`. The training optimiser (`crate::train::FusedAdamW`)
    /// calls it on the inner backend; the default is burn's arithmetic in tensor ops
    /// ([`adamw::adamw_update_ops`]), which a backend may fuse into one pass.
    #[allow(clippy::type_complexity)]
    fn adamw_update<const D: usize>(
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<(Tensor<Self, D>, Tensor<Self, D>)>,
        hyper: &AdamWHyper,
    ) -> (Tensor<Self, D>, Tensor<Self, D>, Tensor<Self, D>) {
        adamw::adamw_update_ops(param, grad, moments, hyper)
    }

    /// A decoder layer whose activations are recomputed in the backward pass (see
    /// [`super::recompute`]); without a graph, the plain forward.
    ///
    /// `x` `[batch, seq, hidden]`, `cos`/`sin` the RoPE tables of the positions, `key_valid`
    /// `[batch, seq]`.
    fn checkpointed_layer(
        layer: &DecoderWeights<Self>,
        x: Tensor<Self, 3>,
        cos: Tensor<Self, 4>,
        sin: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
    ) -> Tensor<Self, 3> {
        layer.forward(x, cos, sin, &key_valid)
    }
}

/// An autodiff backend for training: its inner backend runs the model too (frozen reference
/// models, evaluation without a graph).
pub trait TrainBackend: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

impl<B> TrainBackend for B where B: AutodiffBackend<InnerBackend: ModelBackend> + ModelBackend {}

// burn-flex implements the trait with its own kernels, in `super::flex`.
#[cfg(feature = "ndarray")]
impl ModelBackend for burn::backend::NdArray {}
#[cfg(feature = "wgpu")]
impl ModelBackend for burn::backend::Wgpu {
    const JIT: bool = true;
}
#[cfg(feature = "cuda")]
impl ModelBackend for burn::backend::Cuda {
    const JIT: bool = true;
}

impl<B: ModelBackend, C: CheckpointStrategy> ModelBackend for Autodiff<B, C> {
    const JIT: bool = B::JIT;

    fn causal_attention(
        q: Tensor<Self, 4>,
        k: Tensor<Self, 4>,
        v: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
        groups: usize,
    ) -> Tensor<Self, 4> {
        attention::tracked_attention(q, k, v, key_valid, groups, None)
    }

    fn head_logprobs(
        hidden: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        layout: HeadLayout,
        targets: Tensor<Self, 1, Int>,
        temperature: f32,
        chunk: usize,
    ) -> Tensor<Self, 2> {
        head::tracked_head(hidden, weight, layout, targets, temperature, chunk)
    }

    fn checkpointed_layer(
        layer: &DecoderWeights<Self>,
        x: Tensor<Self, 3>,
        cos: Tensor<Self, 4>,
        sin: Tensor<Self, 4>,
        key_valid: Tensor<Self, 2, Bool>,
    ) -> Tensor<Self, 3> {
        recompute::checkpointed_layer(layer, x, cos, sin, key_valid)
    }

    fn rotary(x: Tensor<Self, 4>, cos: Tensor<Self, 4>, sin: Tensor<Self, 4>) -> Tensor<Self, 4> {
        super::rope::tracked_rotary(x, cos, sin)
    }

    fn swiglu(gate: Tensor<Self, 2>, up: Tensor<Self, 2>) -> Tensor<Self, 2> {
        super::swiglu::tracked_swiglu(gate, up)
    }

    fn rms_norm(x: Tensor<Self, 2>, weight: Tensor<Self, 1>, eps: f64) -> Tensor<Self, 2> {
        super::norm::tracked_rms_norm(x, weight, eps)
    }
}

/// A float primitive back as a tensor (autodiff nodes save and receive primitives).
pub(super) fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}
