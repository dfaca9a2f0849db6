//! Memory-linear causal attention, the model's one attention entry point on every backend.
//!
//! Long-context training (20K-60K-token inputs) cannot keep the `L x L` attention scores for the
//! backward pass, which is what burn 0.21's `Autodiff` does with `attention` (it decomposes it
//! into tracked tensor ops). [`ModelBackend::causal_attention`] instead:
//!
//! - runs the forward by blocks of query positions through burn's fused `attention` op (cubecl's
//!   flash kernel on GPU; burn's decomposed fallback on `ndarray`), so at most `block x L`
//!   scores exist at a time;
//! - under `Autodiff`, registers one node whose saved state is only `q`, `k`, `v` and the output
//!   (all linear in `L`), and whose backward recomputes each block's probabilities from its
//!   scores and accumulates `dq`, `dk`, `dv` block by block (FlashAttention's backward with a
//!   query block seeing its whole key row, so no running rescale is needed).
//!
//! These blockwise tensor-op versions are the defaults of [`ModelBackend`]; burn-flex replaces
//! both with host kernels of its own (`super::flex`).
//!
//! Grouped-query attention runs without repeating keys and values: the `groups` query heads that
//! share a KV head are stacked along the query axis (group-major), `[batch, kv_heads, groups *
//! q_len, head_dim]`. Padding is given per key (`key_valid`); a query always sees itself, so a
//! padding query never has an empty row.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::{AttentionModuleOptions, BoolTensor, FloatTensor};
use burn::tensor::{Bool, DType, Int, Tensor, TensorPrimitive};

use super::backend::{float, ModelBackend};

/// Most attention scores (per batch row and KV head) one block may hold: 4M f32 = 16 MB.
pub(super) const BLOCK_SCORES: usize = 1 << 22;
/// Fewest query positions per block, so short prompts over long caches still batch rows.
const MIN_BLOCK: usize = 32;

/// Shape of one attention call, checked once and shared by the forward and backward passes.
#[derive(Clone, Copy, Debug)]
struct Dims {
    block_scores: usize,
    batch: usize,
    kv_heads: usize,
    groups: usize,
    q_len: usize,
    k_len: usize,
    head_dim: usize,
}

impl Dims {
    fn new<B: Backend>(
        q: &Tensor<B, 4>,
        k: &Tensor<B, 4>,
        v: &Tensor<B, 4>,
        key_valid: &Tensor<B, 2, Bool>,
        groups: usize,
        block_scores: usize,
    ) -> Self {
        let [batch, kv_heads, rows, head_dim] = q.dims();
        let k_len = k.dims()[2];
        assert!(
            groups > 0 && rows % groups == 0,
            "attention: {rows} query rows are not {groups} groups"
        );
        assert_eq!(
            k.dims(),
            [batch, kv_heads, k_len, head_dim],
            "attention: key shape"
        );
        assert_eq!(v.dims(), k.dims(), "attention: value shape");
        assert_eq!(
            key_valid.dims(),
            [batch, k_len],
            "attention: key_valid shape"
        );
        let q_len = rows / groups;
        assert!(
            q_len <= k_len,
            "attention: {q_len} queries over {k_len} keys"
        );
        Self {
            block_scores,
            batch,
            kv_heads,
            groups,
            q_len,
            k_len,
            head_dim,
        }
    }

    /// Query positions per block: as many as keep `groups * block * k_len` scores in budget.
    fn block(&self) -> usize {
        (self.block_scores / (self.groups * self.k_len).max(1))
            .max(MIN_BLOCK)
            .min(self.q_len)
            .max(1)
    }

    /// The query blocks `(first, end)` in positions `0..q_len`.
    fn blocks(&self) -> Vec<(usize, usize)> {
        let step = self.block();
        (0..self.q_len)
            .step_by(step)
            .map(|s| (s, (s + step).min(self.q_len)))
            .collect()
    }

    /// Keys visible to query positions before `end`: causality cuts the rest.
    fn key_end(&self, end: usize) -> usize {
        self.k_len - self.q_len + end
    }

    /// Rows of query positions `first..end` of every group, `[batch, kv_heads, groups * n, dim]`.
    fn rows<B: Backend>(&self, x: &Tensor<B, 4>, first: usize, end: usize) -> Tensor<B, 4> {
        if first == 0 && end == self.q_len {
            return x.clone();
        }
        let Self {
            batch: b,
            kv_heads: h,
            groups: g,
            q_len: t,
            head_dim: d,
            ..
        } = *self;
        x.clone()
            .reshape([b, h, g, t, d])
            .slice([0..b, 0..h, 0..g, first..end, 0..d])
            .reshape([b, h, g * (end - first), d])
    }

    /// Inverse of [`Self::rows`] over consecutive blocks covering `0..q_len`.
    fn assemble<B: Backend>(&self, parts: Vec<Tensor<B, 4>>) -> Tensor<B, 4> {
        if parts.len() == 1 {
            return parts.into_iter().next().expect("one part");
        }
        let Self {
            batch: b,
            kv_heads: h,
            groups: g,
            head_dim: d,
            ..
        } = *self;
        let parts = parts
            .into_iter()
            .map(|p| {
                let n = p.dims()[2] / g;
                p.reshape([b, h, g, n, d])
            })
            .collect();
        Tensor::cat(parts, 3).reshape([b, h, g * self.q_len, d])
    }

    /// True where query positions `first..end` may not see keys `0..key_end(end)`,
    /// `[batch, kv_heads, groups * (end - first), key_end]`.
    fn blocked<B: Backend>(
        &self,
        key_valid: &Tensor<B, 2, Bool>,
        first: usize,
        end: usize,
    ) -> Tensor<B, 4, Bool> {
        let (b, n, kend) = (self.batch, end - first, self.key_end(end));
        let device = key_valid.device();
        let offset = (self.k_len - self.q_len + first) as i64;
        let rows = Tensor::<B, 1, Int>::arange(offset..offset + n as i64, &device)
            .reshape([1, 1, n, 1])
            .expand([b, 1, n, kend]);
        let cols = Tensor::<B, 1, Int>::arange(0..kend as i64, &device)
            .reshape([1, 1, 1, kend])
            .expand([b, 1, n, kend]);
        let future = cols.clone().greater(rows.clone());
        let diagonal = cols.equal(rows);
        let padding = key_valid
            .clone()
            .slice([0..b, 0..kend])
            .bool_not()
            .reshape([b, 1, 1, kend])
            .expand([b, 1, n, kend]);
        let blocked = future.bool_or(padding.bool_and(diagonal.bool_not()));
        let g = self.groups;
        let blocked = if g == 1 {
            blocked
        } else {
            blocked
                .unsqueeze_dim::<5>(1)
                .expand([b, g, 1, n, kend])
                .reshape([b, 1, g * n, kend])
        };
        blocked.expand([b, self.kv_heads, g * n, kend])
    }

    /// Keys or values `0..kend`.
    fn keys<B: Backend>(&self, x: &Tensor<B, 4>, kend: usize) -> Tensor<B, 4> {
        if kend == self.k_len {
            return x.clone();
        }
        let (b, h, d) = (self.batch, self.kv_heads, self.head_dim);
        x.clone().slice([0..b, 0..h, 0..kend, 0..d])
    }

    /// `acc + part` where `part` covers keys `0..kend` of `acc`'s `k_len`.
    fn add_keys<B: Backend>(&self, acc: Tensor<B, 4>, part: Tensor<B, 4>) -> Tensor<B, 4> {
        let kend = part.dims()[2];
        if kend == self.k_len {
            return acc + part;
        }
        let range = [0..self.batch, 0..self.kv_heads, 0..kend, 0..self.head_dim];
        let sum = acc.clone().slice(range.clone()) + part;
        acc.slice_assign(range, sum)
    }

    fn scale(&self) -> f64 {
        1.0 / (self.head_dim as f64).sqrt()
    }
}

/// The forward by query blocks through burn's fused `attention` (no graph: used on inner
/// backends, and as the forward of the autodiff node); a block holds at most `block_scores`
/// scores per batch row and KV head (but at least 32 query positions).
pub fn blockwise_forward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    groups: usize,
    block_scores: usize,
) -> Tensor<B, 4> {
    let dims = Dims::new(&q, &k, &v, &key_valid, groups, block_scores);
    let parts = dims
        .blocks()
        .into_iter()
        .map(|(first, end)| {
            let kend = dims.key_end(end);
            attention(
                dims.rows(&q, first, end),
                dims.keys(&k, kend),
                dims.keys(&v, kend),
                Some(dims.blocked(&key_valid, first, end)),
                None,
                AttentionModuleOptions::default(),
            )
        })
        .collect();
    dims.assemble(parts)
}

/// Gradients `(dq, dk, dv)` of [`blockwise_forward`] given its output `out` and the output's
/// gradient `d_out`, recomputing each block's probabilities; at most one block of scores lives at
/// a time.
#[allow(clippy::too_many_arguments)]
pub fn blockwise_backward<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    groups: usize,
    block_scores: usize,
    out: Tensor<B, 4>,
    d_out: Tensor<B, 4>,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let dims = Dims::new(&q, &k, &v, &key_valid, groups, block_scores);
    let scale = dims.scale();
    let mut dk = Tensor::<B, 4>::zeros(k.dims(), &k.device());
    let mut dv = Tensor::<B, 4>::zeros(v.dims(), &v.device());
    let mut dq_parts = Vec::new();
    for (first, end) in dims.blocks() {
        let kend = dims.key_end(end);
        let (qb, ob, dob) = (
            dims.rows(&q, first, end),
            dims.rows(&out, first, end),
            dims.rows(&d_out, first, end),
        );
        let (kb, vb) = (dims.keys(&k, kend), dims.keys(&v, kend));
        let scores = qb
            .clone()
            .matmul(kb.clone().transpose())
            .mul_scalar(scale)
            .mask_fill(dims.blocked(&key_valid, first, end), f32::NEG_INFINITY);
        let p = softmax(scores, 3);
        let dv_block = p.clone().transpose().matmul(dob.clone());
        let dp = dob.clone().matmul(vb.transpose());
        // D_i = Σ_j P_ij dP_ij = dO_i · O_i, the softmax Jacobian's diagonal correction.
        let delta = (dob * ob).sum_dim(3);
        let ds = p.mul(dp.sub(delta)).mul_scalar(scale);
        dq_parts.push(ds.clone().matmul(kb));
        let dk_block = ds.transpose().matmul(qb);
        dk = dims.add_keys(dk, dk_block);
        dv = dims.add_keys(dv, dv_block);
    }
    (dims.assemble(dq_parts), dk, dv)
}

/// The attention written out with tracked tensor ops and the full score matrix: the reference
/// the blockwise kernel is tested against (and what burn's `Autodiff` would run on its own).
pub fn naive_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
    groups: usize,
) -> Tensor<B, 4> {
    let dims = Dims::new(&q, &k, &v, &key_valid, groups, usize::MAX);
    let scores = q
        .matmul(k.transpose())
        .mul_scalar(dims.scale())
        .mask_fill(dims.blocked(&key_valid, 0, dims.q_len), f32::NEG_INFINITY);
    softmax(scores, 3).matmul(v)
}

/// [`ModelBackend::decode_attention`] in tensor ops: `softmax(q kᵀ / √d)` over the valid keys,
/// times `v`. One query per row keeps the scores at `[batch, kv_heads, groups, k_len]`.
pub fn padded_decode_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_valid: Tensor<B, 2, Bool>,
) -> Tensor<B, 4> {
    let [b, h, g, d] = q.dims();
    let k_len = k.dims()[2];
    assert_eq!(k.dims(), [b, h, k_len, d], "decode attention: key shape");
    assert_eq!(key_valid.dims(), [b, k_len], "decode attention: key_valid");
    let dtype = q.dtype();
    let scores = q
        .matmul(k.transpose())
        .cast(DType::F32)
        .mul_scalar(1.0 / (d as f64).sqrt());
    let hidden = key_valid
        .bool_not()
        .reshape([b, 1, 1, k_len])
        .expand([b, h, g, k_len]);
    let probs = softmax(scores.mask_fill(hidden, f32::NEG_INFINITY), 3);
    probs.cast(dtype).matmul(v)
}

/// The autodiff node of [`ModelBackend::causal_attention`]: saves `q`, `k`, `v` and the output.
#[derive(Debug)]
struct CausalAttentionBackward;

type AttentionState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    BoolTensor<B>,
    usize,
    Option<usize>,
    Option<FloatTensor<B>>,
);

impl<B: ModelBackend> Backward<B, 3> for CausalAttentionBackward {
    type State = AttentionState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let d_out = grads.consume::<B>(&ops.node);
        let (q, k, v, out, key_valid, groups, block_scores, lse) = ops.state;
        let (q, k, v, key_valid) = (
            float(q),
            float(k),
            float(v),
            Tensor::from_primitive(key_valid),
        );
        let (out, d_out) = (float(out), float(d_out));
        let dtype = q.dtype();
        let f32 = |x: Tensor<B, 4>| x.cast(DType::F32);
        let (q, k, v, out, d_out) = (f32(q), f32(k), f32(v), f32(out), f32(d_out));
        let (dq, dk, dv) = match block_scores {
            None => {
                let lse = lse.map(float::<B, 3>);
                B::causal_attention_backward(q, k, v, key_valid, groups, out, d_out, lse)
            }
            Some(n) => blockwise_backward::<B>(q, k, v, key_valid, groups, n, out, d_out),
        };
        let (dq, dk, dv) = (dq.cast(dtype), dk.cast(dtype), dv.cast(dtype));
        for (parent, grad) in ops.parents.into_iter().zip([dq, dk, dv]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// [`ModelBackend::causal_attention`] under `Autodiff`: one graph node over the inner backend's
/// kernels (`block_scores` `None`) or over [`blockwise_forward`] / [`blockwise_backward`] with
/// blocks of `block_scores` scores.
pub(super) fn tracked_attention<B: ModelBackend, C: CheckpointStrategy>(
    q: Tensor<Autodiff<B, C>, 4>,
    k: Tensor<Autodiff<B, C>, 4>,
    v: Tensor<Autodiff<B, C>, 4>,
    key_valid: Tensor<Autodiff<B, C>, 2, Bool>,
    groups: usize,
    block_scores: Option<usize>,
) -> Tensor<Autodiff<B, C>, 4> {
    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let key_valid = key_valid.into_primitive();
    // The kernels run in f32 whatever the inputs' dtype (bf16 under mixed precision).
    let f32 = |x: &FloatTensor<B>| float::<B, 4>(x.clone()).cast(DType::F32);
    let dtype = float::<B, 4>(q.primitive.clone()).dtype();
    let inputs = (
        f32(&q.primitive),
        f32(&k.primitive),
        f32(&v.primitive),
        Tensor::from_primitive(key_valid.clone()),
    );
    let (out, lse) = match block_scores {
        None => B::causal_attention_lse(inputs.0, inputs.1, inputs.2, inputs.3, groups),
        Some(n) => (
            blockwise_forward(inputs.0, inputs.1, inputs.2, inputs.3, groups, n),
            None,
        ),
    };
    let out = out.cast(dtype).into_primitive().tensor();
    let lse = lse.map(|l| l.into_primitive().tensor());
    let node = match CausalAttentionBackward
        .prepare::<C>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (
                q.primitive,
                k.primitive,
                v.primitive,
                out.clone(),
                key_valid,
                groups,
                block_scores,
                lse,
            ),
            out,
        ),
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::autodiff::checkpoint::strategy::{BalancedCheckpointing, NoCheckpointing};
    use burn::tensor::{Distribution, ElementConversion, TensorData, Tolerance};

    /// Random q, k, v and a key mask with left padding on row 0 and right padding on row 1.
    fn inputs<B: Backend>(
        q_len: usize,
        k_len: usize,
        groups: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 2, Bool>) {
        let device = Default::default();
        let (b, h, d) = (2, 2, 8);
        let rand =
            |n| Tensor::<B, 4>::random([b, h, n, d], Distribution::Normal(0.0, 1.0), &device);
        let valid: Vec<bool> = (0..b * k_len)
            .map(|i| {
                let (row, col) = (i / k_len, i % k_len);
                if row == 0 {
                    col >= 3
                } else {
                    col + 2 < k_len
                }
            })
            .collect();
        let key_valid = Tensor::from_data(TensorData::new(valid, [b, k_len]), &device);
        (rand(groups * q_len), rand(k_len), rand(k_len), key_valid)
    }

    /// Output and `(dq, dk, dv)` of a weighted sum of the attention, naive or blockwise with
    /// blocks of `block_scores`.
    fn run<B: ModelBackend, C: CheckpointStrategy>(
        inputs: &(Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 2, Bool>),
        weights: &Tensor<B, 4>,
        groups: usize,
        block_scores: Option<Option<usize>>,
    ) -> [Tensor<B, 4>; 4] {
        let track =
            |x: &Tensor<B, 4>| Tensor::<Autodiff<B, C>, 4>::from_inner(x.clone()).require_grad();
        let (q, k, v) = (track(&inputs.0), track(&inputs.1), track(&inputs.2));
        let valid = Tensor::<Autodiff<B, C>, 2, Bool>::from_inner(inputs.3.clone());
        let out = match block_scores {
            None => naive_attention(q.clone(), k.clone(), v.clone(), valid, groups),
            Some(n) => tracked_attention(q.clone(), k.clone(), v.clone(), valid, groups, n),
        };
        let grads = (out.clone() * Tensor::from_inner(weights.clone()))
            .sum()
            .backward();
        [
            out.inner(),
            q.grad(&grads).expect("dq"),
            k.grad(&grads).expect("dk"),
            v.grad(&grads).expect("dv"),
        ]
    }

    /// Blockwise output and gradients equal the naive attention's within 1e-4, with padding,
    /// grouped queries, queries over a longer cache, one block and several.
    fn check_against_naive<B: ModelBackend, C: CheckpointStrategy>() {
        for (q_len, k_len, groups) in [(70, 70, 2), (40, 75, 3), (1, 9, 1), (33, 33, 1)] {
            let inputs = inputs::<B>(q_len, k_len, groups);
            let weights = Tensor::<B, 4>::random(
                inputs.0.dims(),
                Distribution::Normal(0.0, 1.0),
                &Default::default(),
            );
            let reference = run::<B, C>(&inputs, &weights, groups, None);
            for block_scores in [None, Some(BLOCK_SCORES), Some(1)] {
                let blockwise = run::<B, C>(&inputs, &weights, groups, Some(block_scores));
                for (name, (got, want)) in ["out", "dq", "dk", "dv"]
                    .iter()
                    .zip(blockwise.into_iter().zip(reference.clone()))
                {
                    let diff = (got - want).abs().max().into_scalar().elem::<f32>();
                    assert!(
                        diff <= 1e-4,
                        "{name}: max difference {diff} (q_len {q_len}, k_len {k_len}, groups \
                         {groups}, block_scores {block_scores:?})"
                    );
                }
            }
            let forward = blockwise_forward(
                inputs.0.clone(),
                inputs.1.clone(),
                inputs.2.clone(),
                inputs.3.clone(),
                groups,
                1,
            );
            forward.into_data().assert_approx_eq::<f32>(
                &reference[0].clone().into_data(),
                Tolerance::absolute(1e-4),
            );
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn blockwise_matches_naive_on_flex() {
        check_against_naive::<burn::backend::Flex, NoCheckpointing>();
        check_against_naive::<burn::backend::Flex, BalancedCheckpointing>();
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn blockwise_matches_naive_on_ndarray() {
        check_against_naive::<burn::backend::NdArray, NoCheckpointing>();
    }

    #[cfg(feature = "flex")]
    #[test]
    fn blocks_cover_all_queries_within_budget() {
        let (q, k, v, valid) = inputs::<burn::backend::Flex>(70, 70, 2);
        let dims = Dims::new(&q, &k, &v, &valid, 2, 1);
        let blocks = dims.blocks();
        assert_eq!(blocks, vec![(0, 32), (32, 64), (64, 70)]);
        let long = Dims {
            q_len: 16384,
            k_len: 16384,
            block_scores: BLOCK_SCORES,
            ..dims
        };
        assert!(long.groups * long.block() * long.k_len <= BLOCK_SCORES);
        assert_eq!(long.blocks().len(), 16384 / long.block());
    }
}
