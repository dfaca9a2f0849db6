//! Log-probabilities and entropies over the vocabulary by chunks of rows, with a backward that
//! recomputes each chunk's logits: the full `[rows, vocab]` logits never exist, in the forward or
//! in the graph (152K vocab x 16K tokens would be 10 GB of f32 per saved copy).
//!
//! What Liger's fused linear cross-entropy does for PyTorch trainers: under `Autodiff`, one graph
//! node saves the hidden states (linear in the length) and the weight (shared with the
//! parameter); its backward computes `d logits` chunk by chunk and folds them into `d hidden` and
//! `d weight` at once.
//!
//! For a row with tempered logits `z = h·W / T`, `p = softmax(z)`, target `t`:
//! `logp = z_t − lse(z)`, `H = lse(z) − Σ p z`, and
//! `∂/∂z = g_logp (onehot_t − p) − g_H p (z − Σ p z)`.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::{FloatTensor, IntTensor};
use burn::tensor::{DType, IndexingUpdateOp, Int, Tensor, TensorPrimitive};

use super::backend::{float, ModelBackend};

/// How the output projection is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadLayout {
    /// `[hidden, vocab]`: burn's `Linear` weight (an untied `lm_head`).
    HiddenVocab,
    /// `[vocab, hidden]`: the embedding matrix (tied word embeddings).
    VocabHidden,
}

/// `[rows, hidden]` -> logits `[rows, vocab]`, multiplying the weight as stored (a transposed
/// view of the whole weight would make CPU backends copy it per call).
fn project<B: Backend>(h: Tensor<B, 2>, w: &Tensor<B, 2>, layout: HeadLayout) -> Tensor<B, 2> {
    match layout {
        HeadLayout::HiddenVocab => h.matmul(w.clone()),
        HeadLayout::VocabHidden => w.clone().matmul(h.transpose()).transpose(),
    }
}

/// The row chunks `(first, end)` of `rows`.
fn chunks(rows: usize, chunk: usize) -> impl Iterator<Item = (usize, usize)> {
    let chunk = chunk.max(1);
    (0..rows)
        .step_by(chunk)
        .map(move |s| (s, (s + chunk).min(rows)))
}

/// `[n, 2]`: each row's log-prob of its target and entropy, from tempered f32 logits `z`
/// `[n, vocab]` (the tensor-op version of [`ModelBackend::head_chunk_stats`]).
pub fn chunk_stats_ops<B: Backend>(z: Tensor<B, 2>, targets: Tensor<B, 1, Int>) -> Tensor<B, 2> {
    let max = z.clone().max_dim(1);
    let e = (z.clone() - max.clone()).exp();
    let sum = e.clone().sum_dim(1);
    let lse = sum.clone().log() + max;
    let mean_logit = (e * z.clone()).sum_dim(1) / sum;
    let logp = z.gather(1, targets.unsqueeze_dim::<2>(1)) - lse.clone();
    Tensor::cat(vec![logp, lse - mean_logit], 1)
}

/// `∂/∂z` `[n, vocab]` of the rows' (log-prob, entropy) given their gradients `g` `[n, 2]`:
/// `g_logp (onehot_t − p) − g_H p (z − Σ p z)` (the tensor-op version of
/// [`ModelBackend::head_chunk_grad`]).
pub fn chunk_grad_ops<B: Backend>(
    z: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    g: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let [n, _] = z.dims();
    let max = z.clone().max_dim(1);
    let e = (z.clone() - max).exp();
    let p = e.clone() / e.sum_dim(1);
    let mean_logit = (p.clone() * z.clone()).sum_dim(1);
    let (g_logp, g_entropy) = (g.clone().slice([0..n, 0..1]), g.slice([0..n, 1..2]));
    let dz = (p * (g_entropy * (z - mean_logit) + g_logp.clone())).neg();
    dz.scatter(
        1,
        targets.unsqueeze_dim::<2>(1),
        g_logp,
        IndexingUpdateOp::Add,
    )
}

/// A chunk's tempered logits in f32: the projection runs in the weights' dtype (bf16 under
/// mixed precision), the softmax in f32.
fn tempered_logits<B: Backend>(
    h: Tensor<B, 2>,
    w: &Tensor<B, 2>,
    layout: HeadLayout,
    temperature: f32,
) -> Tensor<B, 2> {
    let z = project(h, w, layout).cast(DType::F32);
    if temperature != 1.0 {
        z.div_scalar(temperature)
    } else {
        z
    }
}

/// The forward without a graph: `[rows, 2]` (log-prob of the target, entropy) by chunks.
pub fn chunked_forward<B: ModelBackend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    layout: HeadLayout,
    targets: Tensor<B, 1, Int>,
    temperature: f32,
    chunk: usize,
) -> Tensor<B, 2> {
    let [rows, h] = hidden.dims();
    assert_eq!(targets.dims(), [rows], "head_logprobs: one target per row");
    let parts = chunks(rows, chunk)
        .map(|(s, e)| {
            let z = tempered_logits(
                hidden.clone().slice([s..e, 0..h]),
                &weight,
                layout,
                temperature,
            );
            B::head_chunk_stats(z, targets.clone().slice(s..e))
        })
        .collect();
    Tensor::cat(parts, 0)
}

/// Gradients `(d hidden, d weight)` of [`chunked_forward`] given the gradient `d_out` `[rows, 2]`
/// of its output, recomputing each chunk's logits.
pub fn chunked_backward<B: ModelBackend>(
    hidden: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    layout: HeadLayout,
    targets: Tensor<B, 1, Int>,
    temperature: f32,
    chunk: usize,
    d_out: Tensor<B, 2>,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [rows, h] = hidden.dims();
    // The first chunk's product starts the sum: a zero-filled `[vocab, hidden]` buffer would
    // be one more weight-sized allocation per call.
    let mut d_weight: Option<Tensor<B, 2>> = None;
    let mut d_hidden = Vec::new();
    for (s, e) in chunks(rows, chunk) {
        let hc = hidden.clone().slice([s..e, 0..h]);
        let z = tempered_logits(hc.clone(), &weight, layout, temperature);
        let dz = B::head_chunk_grad(
            z,
            targets.clone().slice(s..e),
            d_out.clone().slice([s..e, 0..2]),
        );
        let dz = if temperature != 1.0 {
            dz.div_scalar(temperature)
        } else {
            dz
        };
        let dz = dz.cast(weight.dtype());
        match layout {
            HeadLayout::HiddenVocab => {
                // z = h W: dh = dz Wᵀ = (W dzᵀ)ᵀ, dW = hᵀ dz.
                d_hidden.push(weight.clone().matmul(dz.clone().transpose()).transpose());
                let part = hc.transpose().matmul(dz);
                d_weight = Some(match d_weight {
                    Some(acc) => acc + part,
                    None => part,
                });
            }
            HeadLayout::VocabHidden => {
                // z = h Wᵀ: dh = dz W, dW = dzᵀ h.
                d_hidden.push(dz.clone().matmul(weight.clone()));
                let part = dz.transpose().matmul(hc);
                d_weight = Some(match d_weight {
                    Some(acc) => acc + part,
                    None => part,
                });
            }
        }
    }
    let d_weight = d_weight.unwrap_or_else(|| weight.zeros_like());
    (Tensor::cat(d_hidden, 0), d_weight)
}

/// The autodiff node of [`ModelBackend::head_logprobs`]: saves the hidden states and the weight.
#[derive(Debug)]
struct HeadBackward;

type HeadState<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    IntTensor<B>,
    HeadLayout,
    f32,
    usize,
);

impl<B: ModelBackend> Backward<B, 2> for HeadBackward {
    type State = HeadState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let d_out = grads.consume::<B>(&ops.node);
        let (hidden, weight, targets, layout, temperature, chunk) = ops.state;
        let (dh, dw) = chunked_backward::<B>(
            float(hidden),
            float(weight),
            layout,
            Tensor::from_primitive(targets),
            temperature,
            chunk,
            float(d_out),
        );
        for (parent, grad) in ops.parents.into_iter().zip([dh, dw]) {
            if let Some(node) = parent {
                grads.register::<B>(node.id, grad.into_primitive().tensor());
            }
        }
    }
}

/// [`ModelBackend::head_logprobs`] under `Autodiff`: the inner backend's forward, and one graph
/// node whose backward is [`chunked_backward`].
pub(super) fn tracked_head<B: ModelBackend, C: CheckpointStrategy>(
    hidden: Tensor<Autodiff<B, C>, 2>,
    weight: Tensor<Autodiff<B, C>, 2>,
    layout: HeadLayout,
    targets: Tensor<Autodiff<B, C>, 1, Int>,
    temperature: f32,
    chunk: usize,
) -> Tensor<Autodiff<B, C>, 2> {
    let (hidden, weight) = (
        hidden.into_primitive().tensor(),
        weight.into_primitive().tensor(),
    );
    let targets = targets.into_primitive();
    let out = B::head_logprobs(
        float(hidden.primitive.clone()),
        float(weight.primitive.clone()),
        layout,
        Tensor::from_primitive(targets.clone()),
        temperature,
        chunk,
    )
    .into_primitive()
    .tensor();
    let node = match HeadBackward
        .prepare::<C>([hidden.node.clone(), weight.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (
                hidden.primitive,
                weight.primitive,
                targets,
                layout,
                temperature,
                chunk,
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
    use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
    use burn::tensor::activation::log_softmax;
    use burn::tensor::{Distribution, ElementConversion, TensorData};

    /// Random hidden states, weight (in `layout`), output mix and targets.
    fn inputs<B: Backend>(layout: HeadLayout) -> [Tensor<B, 2>; 3] {
        let device = Default::default();
        let (rows, h, v) = (13, 8, 40);
        let wdims = match layout {
            HeadLayout::HiddenVocab => [h, v],
            HeadLayout::VocabHidden => [v, h],
        };
        let normal = Distribution::Normal(0.0, 1.0);
        [
            Tensor::random([rows, h], normal, &device),
            Tensor::random(wdims, normal, &device),
            Tensor::random([rows, 2], normal, &device),
        ]
    }

    /// Output and `(d hidden, d weight)` of a weighted sum of log-probs and entropies, through
    /// the chunked node (`chunk`) or through burn's own ops on the full logits.
    fn run<B: ModelBackend>(
        inputs: &[Tensor<B, 2>; 3],
        layout: HeadLayout,
        temperature: f32,
        chunk: Option<usize>,
    ) -> [Tensor<B, 2>; 3] {
        type Ad<B> = Autodiff<B, NoCheckpointing>;
        let [hidden, weight, mix] = inputs.clone();
        let rows = hidden.dims()[0];
        let vocab = weight.dims().into_iter().max().unwrap_or(1) as i64;
        let targets: Vec<i64> = (0..rows as i64).map(|i| (i * 7 + 3) % vocab).collect();
        let targets =
            Tensor::<B, 1, Int>::from_data(TensorData::new(targets, [rows]), &hidden.device());
        let hidden = Tensor::<Ad<B>, 2>::from_inner(hidden).require_grad();
        let weight = Tensor::<Ad<B>, 2>::from_inner(weight).require_grad();
        let targets_ad = Tensor::<Ad<B>, 1, Int>::from_inner(targets);
        let out = match chunk {
            Some(c) => tracked_head(
                hidden.clone(),
                weight.clone(),
                layout,
                targets_ad,
                temperature,
                c,
            ),
            None => {
                let z = project(hidden.clone(), &weight, layout).div_scalar(temperature);
                let logp = log_softmax(z, 1);
                let picked = logp.clone().gather(1, targets_ad.unsqueeze_dim::<2>(1));
                let entropy = (logp.clone().exp() * logp).sum_dim(1).neg();
                Tensor::cat(vec![picked, entropy], 1)
            }
        };
        let grads = (out.clone() * Tensor::from_inner(mix)).sum().backward();
        [
            out.inner(),
            hidden.grad(&grads).expect("d hidden"),
            weight.grad(&grads).expect("d weight"),
        ]
    }

    fn check<B: ModelBackend>() {
        for layout in [HeadLayout::HiddenVocab, HeadLayout::VocabHidden] {
            let inputs = inputs::<B>(layout);
            for temperature in [1.0, 0.7] {
                let reference = run::<B>(&inputs, layout, temperature, None);
                for chunk in [1, 4, 100] {
                    let got = run::<B>(&inputs, layout, temperature, Some(chunk));
                    for (name, (a, b)) in ["out", "d hidden", "d weight"]
                        .iter()
                        .zip(got.into_iter().zip(reference.clone()))
                    {
                        let diff = (a - b).abs().max().into_scalar().elem::<f32>();
                        assert!(
                            diff <= 1e-4,
                            "{name}: max difference {diff} ({layout:?}, T {temperature}, chunk {chunk})"
                        );
                    }
                }
            }
        }
    }

    #[cfg(feature = "flex")]
    #[test]
    fn chunked_head_matches_full_logits_on_flex() {
        check::<burn::backend::Flex>();
    }

    #[cfg(feature = "ndarray")]
    #[test]
    fn chunked_head_matches_full_logits_on_ndarray() {
        check::<burn::backend::NdArray>();
    }
}
